//! An experiment's context: a gzip tarball the master serves, extracted into the task's working
//! directory.
//!
//! The tarball comes over the network, so extraction trusts none of it: every entry must stay
//! inside the working directory. Entries with absolute paths or `..` components, links pointing
//! outside, and device or fifo entries are refused with an error naming the entry, instead of
//! being skipped silently, so the user learns why their context did not arrive.

use std::collections::HashSet;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use flate2::read::GzDecoder;
use tar::{Archive, EntryType};

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("cannot fetch the context from {url}: {source}")]
    Fetch {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("cannot fetch the context from {url}: the master answered {status}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
    },
    #[error("refusing context entry {path:?}: {reason}")]
    UnsafeEntry { path: String, reason: String },
    #[error("the context is not a valid gzip tarball: {0}")]
    Corrupt(#[source] std::io::Error),
    #[error("cannot extract context entry {path:?}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Downloads the context tarball at `master_url + context_path`, authenticated with the task's
/// token.
pub async fn fetch_context(
    master_url: &str,
    context_path: &str,
    token: &str,
) -> Result<Vec<u8>, ContextError> {
    let url = format!("{}{}", master_url.trim_end_matches('/'), context_path);
    let fetch_error = |source| ContextError::Fetch {
        url: url.clone(),
        source,
    };
    // A context can be large, so there is no overall deadline, only on connecting and on
    // silence, which is what a vanished master looks like.
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        .build()
        .map_err(fetch_error)?;
    let response = client
        .get(&url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(fetch_error)?;
    let status = response.status();
    if !status.is_success() {
        return Err(ContextError::Status { url, status });
    }
    let body = response.bytes().await.map_err(fetch_error)?;
    Ok(body.to_vec())
}

/// Extracts a gzip tarball into `destination` (which must exist), refusing any entry that
/// could write outside it. On error, entries before the bad one may already be extracted; the
/// caller discards the directory (the task does not start).
pub fn extract_context(tarball_gz: &[u8], destination: &Path) -> Result<(), ContextError> {
    extract_tar(GzDecoder::new(tarball_gz), destination)
}

fn extract_tar(reader: impl Read, destination: &Path) -> Result<(), ContextError> {
    let mut archive = Archive::new(reader);
    // Ownership from another machine means nothing here, and the task runs as the agent user.
    archive.set_preserve_ownerships(false);
    archive.set_preserve_permissions(false);
    // Symlinks extracted so far, as archive-relative paths. A later link target may only use
    // `..` lexically, and `..` through a symlink resolves physically elsewhere (`a -> .` then
    // `b -> a/..` escapes), so resolving a target through a known symlink is refused.
    let mut symlinks: HashSet<PathBuf> = HashSet::new();
    for entry in archive.entries().map_err(ContextError::Corrupt)? {
        let mut entry = entry.map_err(ContextError::Corrupt)?;
        let entry_type = entry.header().entry_type();
        // Metadata records (e.g. the pax global header `git archive` writes) create no file.
        if entry_type.is_pax_global_extensions()
            || entry_type.is_pax_local_extensions()
            || entry_type.is_gnu_longname()
            || entry_type.is_gnu_longlink()
        {
            continue;
        }
        let raw_path = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let unsafe_entry = |reason: &str| ContextError::UnsafeEntry {
            path: raw_path.clone(),
            reason: reason.to_owned(),
        };
        let path = entry.path().map_err(ContextError::Corrupt)?.into_owned();
        let relative = checked_relative_path(&path).map_err(unsafe_entry)?;

        match entry_type {
            EntryType::Regular
            | EntryType::Continuous
            | EntryType::GNUSparse
            | EntryType::Directory => {}
            EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(ContextError::Corrupt)?
                    .ok_or_else(|| unsafe_entry("symlink without a target"))?
                    .into_owned();
                check_symlink_target(&relative, &target, &symlinks)
                    .map_err(|reason| unsafe_entry(&reason))?;
                symlinks.insert(relative.clone());
            }
            EntryType::Link => {
                // Hard link targets are archive paths, held to the same rule as entry paths.
                let target = entry
                    .link_name()
                    .map_err(ContextError::Corrupt)?
                    .ok_or_else(|| unsafe_entry("hard link without a target"))?
                    .into_owned();
                checked_relative_path(&target)
                    .map_err(|reason| unsafe_entry(&format!("hard link target {}", reason)))?;
            }
            // Devices and fifos in a training context are a mistake at best.
            other => {
                return Err(unsafe_entry(&format!("unsupported entry type {other:?}")));
            }
        }
        if relative.as_os_str().is_empty() {
            continue; // `./` itself: the destination already exists.
        }

        // unpack_in additionally canonicalises each entry's parent directory and refuses to
        // write through a symlink that leads outside `destination`. It returns Ok(false) for the
        // entries it skips, which our checks above have already refused.
        match entry.unpack_in(destination) {
            Ok(true) => {}
            Ok(false) => return Err(unsafe_entry("path leaves the working directory")),
            Err(source) => {
                return Err(ContextError::Write {
                    path: raw_path,
                    source,
                });
            }
        }
    }
    Ok(())
}

/// The entry path as a plain relative path, or why it is refused.
fn checked_relative_path(path: &Path) -> Result<PathBuf, &'static str> {
    let mut relative = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => relative.push(part),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return Err("absolute path"),
            Component::ParentDir => return Err("path contains a `..` component"),
        }
    }
    Ok(relative)
}

/// Checks that a symlink at archive path `link` pointing to `target` resolves inside the
/// extraction root.
fn check_symlink_target(
    link: &Path,
    target: &Path,
    symlinks: &HashSet<PathBuf>,
) -> Result<(), String> {
    let outside = || {
        format!(
            "symlink to {} points outside the working directory",
            target.display()
        )
    };
    let mut resolved: PathBuf = link.parent().map(Path::to_path_buf).unwrap_or_default();
    for component in target.components() {
        match component {
            Component::Normal(part) => resolved.push(part),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return Err(outside()),
            Component::ParentDir => {
                if symlinks.contains(&resolved) {
                    return Err(format!(
                        "symlink to {} goes through the symlink {} with `..`",
                        target.display(),
                        resolved.display()
                    ));
                }
                if !resolved.pop() {
                    return Err(outside());
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar archive whose entries bypass the `tar` builder's own path checks, so that hostile
    /// archives can be built. Each entry is (path, type, link target, data).
    fn raw_tar(entries: &[(&str, EntryType, Option<&str>, &[u8])]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, entry_type, link, data) in entries {
            let mut header = tar::Header::new_gnu();
            let name = &mut header.as_old_mut().name;
            name[..path.len()].copy_from_slice(path.as_bytes());
            if let Some(link) = link {
                let linkname = &mut header.as_old_mut().linkname;
                linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            header.set_entry_type(*entry_type);
            header.set_mode(0o755);
            header.set_size(data.len() as u64);
            header.set_cksum();
            builder.append(&header, *data).expect("append");
        }
        builder.into_inner().expect("finish")
    }

    fn extract_raw(
        entries: &[(&str, EntryType, Option<&str>, &[u8])],
    ) -> (tempfile::TempDir, Result<(), ContextError>) {
        let root = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir(root.path().join("work")).expect("mkdir");
        let result = extract_tar(&raw_tar(entries)[..], &root.path().join("work"));
        (root, result)
    }

    fn refusal_reason(result: Result<(), ContextError>) -> String {
        match result {
            Err(ContextError::UnsafeEntry { reason, .. }) => reason,
            other => panic!("expected an unsafe-entry refusal, got {other:?}"),
        }
    }

    #[test]
    fn extracts_files_directories_and_inner_symlinks() {
        let (root, result) = extract_raw(&[
            ("./", EntryType::Directory, None, b""),
            ("src/", EntryType::Directory, None, b""),
            ("src/train.py", EntryType::Regular, None, b"print('hi')\n"),
            (
                "data/link",
                EntryType::Symlink,
                Some("../src/train.py"),
                b"",
            ),
        ]);
        result.expect("extract");
        let work = root.path().join("work");
        assert_eq!(
            std::fs::read_to_string(work.join("src/train.py")).expect("read"),
            "print('hi')\n"
        );
        assert_eq!(
            std::fs::read_to_string(work.join("data/link")).expect("read through link"),
            "print('hi')\n"
        );
    }

    #[test]
    fn skips_pax_global_headers() {
        // `git archive` starts with one, named `pax_global_header`; it is metadata, not a file.
        let (root, result) = extract_raw(&[
            (
                "pax_global_header",
                EntryType::XGlobalHeader,
                None,
                b"52 comment=0123456789abcdef0123456789abcdef01234567\n",
            ),
            ("train.py", EntryType::Regular, None, b"x"),
        ]);
        result.expect("extract");
        let work = root.path().join("work");
        assert!(work.join("train.py").exists());
        assert!(!work.join("pax_global_header").exists());
    }

    #[test]
    fn refuses_parent_dir_entries() {
        let (root, result) = extract_raw(&[("../evil", EntryType::Regular, None, b"x")]);
        assert!(refusal_reason(result).contains(".."));
        assert!(!root.path().join("evil").exists());
    }

    #[test]
    fn refuses_absolute_paths() {
        let (_root, result) = extract_raw(&[("/tmp/drover-evil", EntryType::Regular, None, b"x")]);
        assert_eq!(refusal_reason(result), "absolute path");
    }

    #[test]
    fn refuses_symlinks_pointing_outside() {
        let (_root, result) = extract_raw(&[("up", EntryType::Symlink, Some("../.."), b"")]);
        assert!(refusal_reason(result).contains("outside"));
        let (_root, result) = extract_raw(&[("etc", EntryType::Symlink, Some("/etc"), b"")]);
        assert!(refusal_reason(result).contains("outside"));
    }

    #[test]
    fn refuses_dotdot_through_an_archive_symlink() {
        // Lexically `b -> a/..` stays at the root, but `a` is `.`, so physically `b` is the
        // parent of the working directory.
        let (_root, result) = extract_raw(&[
            ("a", EntryType::Symlink, Some("."), b""),
            ("b", EntryType::Symlink, Some("a/.."), b""),
        ]);
        assert!(refusal_reason(result).contains("through the symlink"));
    }

    #[test]
    fn refuses_writing_through_a_symlink_to_outside() {
        // Even if a link to outside already sat in the directory, files are not written
        // through it (unpack_in's canonicalisation check).
        let root = tempfile::tempdir().expect("tempdir");
        let work = root.path().join("work");
        let outside = root.path().join("outside");
        std::fs::create_dir(&work).expect("mkdir");
        std::fs::create_dir(&outside).expect("mkdir");
        std::os::unix::fs::symlink(&outside, work.join("out")).expect("symlink");
        let tarball = raw_tar(&[("out/file", EntryType::Regular, None, b"x")]);
        assert!(extract_tar(&tarball[..], &work).is_err());
        assert!(!outside.join("file").exists());
    }

    #[test]
    fn refuses_device_entries() {
        let (_root, result) = extract_raw(&[("null", EntryType::Char, None, b"")]);
        assert!(refusal_reason(result).contains("unsupported entry type"));
    }

    #[test]
    fn refuses_hard_links_leaving_the_root() {
        let (_root, result) = extract_raw(&[("h", EntryType::Link, Some("../../etc/passwd"), b"")]);
        assert!(refusal_reason(result).contains("hard link target"));
    }

    #[test]
    fn reports_garbage_as_corrupt() {
        let root = tempfile::tempdir().expect("tempdir");
        let result = extract_context(b"definitely not gzip", root.path());
        assert!(
            matches!(result, Err(ContextError::Corrupt(_))),
            "{result:?}"
        );
    }
}
