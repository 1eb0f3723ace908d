//! An experiment's context: a gzip tarball the master serves, unpacked once per experiment on
//! this agent and copied into each task's working directory.
//!
//! The tarball comes over the network, so extraction trusts none of it: every entry must stay
//! inside the directory it is unpacked into. Entries with absolute paths or `..` components,
//! links pointing outside, fifos and character or block devices are refused with an error naming
//! the entry, instead of being skipped silently, so the user learns why their context did not
//! arrive. A tarball with more than [`MAX_CONTEXT_ENTRIES`] entries, or whose files add up to
//! more than [`MAX_CONTEXT_UNPACKED_BYTES`], is refused as a whole; the download itself stops at
//! [`MAX_CONTEXT_DOWNLOAD_BYTES`].
//!
//! **The cache.** [`ContextCache`] keeps each experiment's unpacked tree for the tasks that
//! follow and copies it into each task's directory; its module (`context/cache.rs`) says how.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use flate2::read::GzDecoder;
use sha2::{Digest, Sha256};
use tar::{Archive, EntryType};
use tokio::io::AsyncWriteExt;

mod cache;

pub use cache::{CACHE_DIR_NAME, CACHED_CONTEXTS, ContextCache};

/// Most entries (files, directories, links, metadata records) a context may have.
pub const MAX_CONTEXT_ENTRIES: usize = 100_000;
/// Most bytes the files of a context may add up to once unpacked. The master enforces its own
/// (configurable, smaller by default) bound when the context is uploaded; this one only keeps
/// the agent's disk safe from whatever arrives.
pub const MAX_CONTEXT_UNPACKED_BYTES: u64 = 4 << 30;
/// Largest context tarball the agent downloads (compressed).
pub const MAX_CONTEXT_DOWNLOAD_BYTES: u64 = 1 << 30;
/// Longest entry path quoted in an error (a pax header can make a path megabytes long).
const MAX_QUOTED_PATH: usize = 512;

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("cannot fetch the context from {url}: {source}")]
    Fetch {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("cannot fetch the context from {url}: the master answered {status}")]
    Status { url: String, status: reqwest::StatusCode },
    #[error("the context at {url} is larger than {limit} bytes; refusing to download it")]
    DownloadTooLarge { url: String, limit: u64 },
    #[error("refusing context entry {path:?}: {reason}")]
    UnsafeEntry { path: String, reason: String },
    #[error("refusing the context: it has more than {limit} entries")]
    TooManyEntries { limit: usize },
    #[error("refusing the context: its files add up to more than {limit} bytes (at entry {path:?})")]
    TooLarge { limit: u64, path: String },
    #[error("the context is not a valid gzip tarball: {0}")]
    Corrupt(#[source] std::io::Error),
    #[error("refusing the context: {0}")]
    Invalid(String),
    #[error("cannot extract context entry {path:?}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("context cache: cannot use {path}: {source}")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("context extraction failed: {0}")]
    Panicked(String),
}

/// Bounds on what one context may unpack to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtractLimits {
    pub max_entries: usize,
    pub max_unpacked_bytes: u64,
}

impl Default for ExtractLimits {
    fn default() -> Self {
        ExtractLimits { max_entries: MAX_CONTEXT_ENTRIES, max_unpacked_bytes: MAX_CONTEXT_UNPACKED_BYTES }
    }
}

/// A downloaded tarball: its size and SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    pub bytes: u64,
    pub sha256: [u8; 32],
}

/// Downloads the context tarball at `master_url + context_path`, authenticated with the task's
/// token, into the file `destination` (created or truncated), hashing it on the way. Stops with
/// an error past `max_bytes`.
pub async fn download_context(
    master_url: &str,
    context_path: &str,
    token: &str,
    destination: &Path,
    max_bytes: u64,
) -> Result<Downloaded, ContextError> {
    let url = format!("{}{}", master_url.trim_end_matches('/'), context_path);
    let fetch_error = |source| ContextError::Fetch { url: url.clone(), source };
    let too_large = || ContextError::DownloadTooLarge { url: url.clone(), limit: max_bytes };
    let cache_error = |source| ContextError::Cache { path: destination.to_path_buf(), source };
    // A context can be large, so there is no overall deadline, only on connecting and on
    // silence, which is what a vanished master looks like.
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        .build()
        .map_err(fetch_error)?;
    let mut response = client.get(&url).bearer_auth(token).send().await.map_err(fetch_error)?;
    let status = response.status();
    if !status.is_success() {
        return Err(ContextError::Status { url, status });
    }
    if response.content_length().is_some_and(|length| length > max_bytes) {
        return Err(too_large());
    }
    let mut file = tokio::fs::File::create(destination).await.map_err(cache_error)?;
    let mut hasher = Sha256::new();
    let mut bytes: u64 = 0;
    while let Some(chunk) = response.chunk().await.map_err(fetch_error)? {
        bytes += chunk.len() as u64;
        if bytes > max_bytes {
            return Err(too_large());
        }
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(cache_error)?;
    }
    file.flush().await.map_err(cache_error)?;
    Ok(Downloaded { bytes, sha256: hasher.finalize().into() })
}

/// Extracts a gzip tarball into `destination` (which must exist) within the default
/// [`ExtractLimits`], refusing any entry that could write outside it. On error, entries before
/// the bad one may already be extracted; the caller discards the directory.
pub fn extract_context(tarball_gz: &[u8], destination: &Path) -> Result<(), ContextError> {
    extract_tar(GzDecoder::new(tarball_gz), destination, &ExtractLimits::default())
}

/// Walks the raw tar headers of a gzip'd tarball with constant memory (see
/// `drover_api::context`): a huge long-name or PAX header is refused before the tar reader,
/// which holds such a header whole, ever sees it.
fn check_raw_headers(tarball_gz: impl Read, limits: &ExtractLimits) -> Result<(), ContextError> {
    let max_bytes = limits.max_unpacked_bytes.saturating_add((limits.max_entries as u64 + 2) * 1024);
    drover_api::context::check_headers(GzDecoder::new(tarball_gz), limits.max_entries, max_bytes).map_err(|e| ContextError::Invalid(e.0))
}

/// [`extract_context`] from any reader of gzip'd tar, within `limits`.
pub fn extract_context_from(tarball_gz: impl Read, destination: &Path, limits: &ExtractLimits) -> Result<(), ContextError> {
    extract_tar(GzDecoder::new(tarball_gz), destination, limits)
}

fn extract_tar(reader: impl Read, destination: &Path, limits: &ExtractLimits) -> Result<(), ContextError> {
    let mut archive = Archive::new(reader);
    // Ownership from another machine means nothing here, and the task runs as the agent user.
    archive.set_preserve_ownerships(false);
    archive.set_preserve_permissions(false);
    // Symlinks extracted so far, as archive-relative paths. A later link target may only use
    // `..` lexically, and `..` through a symlink resolves physically elsewhere (`a -> .` then
    // `b -> a/..` escapes), so resolving a target through a known symlink is refused.
    let mut symlinks: HashSet<PathBuf> = HashSet::new();
    let mut entries: usize = 0;
    let mut unpacked_bytes: u64 = 0;
    for entry in archive.entries().map_err(ContextError::Corrupt)? {
        let mut entry = entry.map_err(ContextError::Corrupt)?;
        entries += 1;
        if entries > limits.max_entries {
            return Err(ContextError::TooManyEntries { limit: limits.max_entries });
        }
        let entry_type = entry.header().entry_type();
        // Metadata records (e.g. the pax global header `git archive` writes) create no file.
        if entry_type.is_pax_global_extensions()
            || entry_type.is_pax_local_extensions()
            || entry_type.is_gnu_longname()
            || entry_type.is_gnu_longlink()
        {
            continue;
        }
        let raw_path = quoted_path(&entry.path_bytes());
        let unsafe_entry = |reason: &str| ContextError::UnsafeEntry { path: raw_path.clone(), reason: reason.to_owned() };
        let path = entry.path().map_err(ContextError::Corrupt)?.into_owned();
        let relative = checked_relative_path(&path).map_err(unsafe_entry)?;

        match entry_type {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                // The logical size (for a sparse file, with its holes): what a copy of it takes.
                unpacked_bytes = unpacked_bytes.saturating_add(entry.size());
                if unpacked_bytes > limits.max_unpacked_bytes {
                    return Err(ContextError::TooLarge { limit: limits.max_unpacked_bytes, path: raw_path });
                }
            }
            EntryType::Directory => {}
            EntryType::Symlink => {
                let target =
                    entry.link_name().map_err(ContextError::Corrupt)?.ok_or_else(|| unsafe_entry("symlink without a target"))?.into_owned();
                check_symlink_target(&relative, &target, &symlinks).map_err(|reason| unsafe_entry(&reason))?;
                symlinks.insert(relative.clone());
            }
            EntryType::Link => {
                // Hard link targets are archive paths, held to the same rule as entry paths.
                let target = entry
                    .link_name()
                    .map_err(ContextError::Corrupt)?
                    .ok_or_else(|| unsafe_entry("hard link without a target"))?
                    .into_owned();
                checked_relative_path(&target).map_err(|reason| unsafe_entry(&format!("hard link target {}", reason)))?;
            }
            // Devices and fifos in a training context are a mistake at best; a fifo would
            // also block whoever reads it (the copy into each task's directory).
            EntryType::Fifo => return Err(unsafe_entry("fifos are not allowed in a context")),
            EntryType::Char => {
                return Err(unsafe_entry("character devices are not allowed in a context"));
            }
            EntryType::Block => {
                return Err(unsafe_entry("block devices are not allowed in a context"));
            }
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
                return Err(ContextError::Write { path: raw_path, source });
            }
        }
    }
    Ok(())
}

/// An entry path for an error message, cut if very long.
fn quoted_path(bytes: &[u8]) -> String {
    let path = String::from_utf8_lossy(bytes);
    if path.len() <= MAX_QUOTED_PATH {
        return path.into_owned();
    }
    let mut end = MAX_QUOTED_PATH;
    while !path.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &path[..end], path.len())
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
fn check_symlink_target(link: &Path, target: &Path, symlinks: &HashSet<PathBuf>) -> Result<(), String> {
    let outside = || format!("symlink to {} points outside the working directory", target.display());
    let mut resolved: PathBuf = link.parent().map(Path::to_path_buf).unwrap_or_default();
    for component in target.components() {
        match component {
            Component::Normal(part) => resolved.push(part),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return Err(outside()),
            Component::ParentDir => {
                if symlinks.contains(&resolved) {
                    return Err(format!("symlink to {} goes through the symlink {} with `..`", target.display(), resolved.display()));
                }
                if !resolved.pop() {
                    return Err(outside());
                }
            }
        }
    }
    Ok(())
}

/// Copies the tree `source` into the existing directory `destination`: directories, regular
/// files (with their permissions; files hard-linked to each other in `source` are hard-linked
/// in the copy too, so a tarball of many links to one big file cannot multiply it) and symlinks
/// (as they are: they were checked to stay inside when unpacked).
pub fn copy_tree(source: &Path, destination: &Path) -> Result<(), ContextError> {
    copy_tree_unless(source, destination, &AtomicBool::new(false))
}

/// [`copy_tree`], stopping with an error as soon as `stop` is raised.
fn copy_tree_unless(source: &Path, destination: &Path, stop: &AtomicBool) -> Result<(), ContextError> {
    let error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ContextError::Cache { path, source }
    };
    let mut linked: HashMap<(u64, u64), PathBuf> = HashMap::new();
    // Iterative: a tarball can nest directories deeper than a thread's stack would recurse.
    let mut pending = vec![(source.to_path_buf(), destination.to_path_buf())];
    while let Some((from_dir, to_dir)) = pending.pop() {
        for entry in std::fs::read_dir(&from_dir).map_err(error(&from_dir))? {
            if stop.load(Ordering::Relaxed) {
                return Err(ContextError::Cache { path: destination.to_path_buf(), source: std::io::Error::other("copy cancelled") });
            }
            let entry = entry.map_err(error(&from_dir))?;
            let from = entry.path();
            let to = to_dir.join(entry.file_name());
            let metadata = std::fs::symlink_metadata(&from).map_err(error(&from))?;
            let file_type = metadata.file_type();
            if file_type.is_dir() {
                std::fs::create_dir(&to).map_err(error(&to))?;
                pending.push((from, to));
            } else if file_type.is_symlink() {
                let target = std::fs::read_link(&from).map_err(error(&from))?;
                std::os::unix::fs::symlink(target, &to).map_err(error(&to))?;
            } else if file_type.is_file() {
                if metadata.nlink() > 1 {
                    let inode = (metadata.dev(), metadata.ino());
                    if let Some(first) = linked.get(&inode) {
                        std::fs::hard_link(first, &to).map_err(error(&to))?;
                        continue;
                    }
                    linked.insert(inode, to.clone());
                }
                std::fs::copy(&from, &to).map_err(error(&to))?;
            } else {
                return Err(ContextError::Cache { path: from, source: std::io::Error::other("not a file, directory or symlink") });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
