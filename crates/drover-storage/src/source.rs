//! What [`crate::Storage::put_dir`] stores from a local directory, as `cp -L` would copy it.
//!
//! A link inside the saved directory whose target (resolved, canonical) stays inside it is
//! stored as a plain copy of what it points to (a file, or a directory walked in turn); a link
//! that leads out of the directory, or nowhere, is refused, as are fifos, sockets and devices:
//! a checkpoint holds its own bytes, never a home directory or `/etc` pulled in by a link, and
//! no link for anyone to follow later.

use std::fs;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use crate::{StorageError, validate_key};

/// Deeper trees are refused: a chain of links into sibling directories could otherwise make
/// the walk arbitrarily long.
const MAX_DEPTH: usize = 256;

/// One file to store: its key relative to the saved directory (with `/`) and the path to read,
/// which holds no link (links were resolved while walking).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SourceFile {
    pub relative: String,
    pub path: PathBuf,
}

fn refused(relative: &str, reason: String) -> StorageError {
    StorageError::Refused { path: relative.to_string(), reason }
}

/// The files under `dir`, sorted by relative path.
pub(crate) fn collect(dir: &Path) -> Result<Vec<SourceFile>, StorageError> {
    let root = dir.canonicalize().map_err(|source| StorageError::Io { action: "resolving", path: dir.into(), source })?;
    if !root.is_dir() {
        return Err(StorageError::Io {
            action: "listing",
            path: dir.into(),
            source: std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
        });
    }
    let mut out = Vec::new();
    walk(&root, &root, "", &mut vec![root.clone()], &mut out)?;
    out.sort_by(|a, b| a.relative.cmp(&b.relative));
    Ok(out)
}

/// Walks `dir` (a canonical path under `root`) whose entries are stored under `prefix`.
/// `ancestors` are the canonical directories being walked, to refuse a link back to one.
fn walk(root: &Path, dir: &Path, prefix: &str, ancestors: &mut Vec<PathBuf>, out: &mut Vec<SourceFile>) -> Result<(), StorageError> {
    let io = |action, path: &Path| {
        let path = path.to_path_buf();
        move |source| StorageError::Io { action, path, source }
    };
    if ancestors.len() > MAX_DEPTH {
        return Err(refused(prefix, format!("it is more than {MAX_DEPTH} directories deep")));
    }
    let mut entries: Vec<_> = fs::read_dir(dir).and_then(|d| d.collect::<Result<Vec<_>, _>>()).map_err(io("listing", dir))?;
    // Sorted so that the order of uploads (and which error comes first) is the same everywhere.
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            return Err(refused(&path.display().to_string(), "its name is not UTF-8".into()));
        };
        let relative = if prefix.is_empty() { name.to_string() } else { format!("{prefix}/{name}") };
        let kind = entry.file_type().map_err(io("inspecting", &path))?;
        let (real, kind) = if kind.is_symlink() {
            let target = fs::read_link(&path).map_err(io("reading the link", &path))?;
            let Ok(real) = fs::canonicalize(&path) else {
                return Err(refused(&relative, format!("it is a symbolic link to {}, which does not exist", target.display())));
            };
            if !real.starts_with(root) {
                return Err(refused(
                    &relative,
                    format!("it is a symbolic link to {} ({}), outside the saved directory", target.display(), real.display()),
                ));
            }
            let kind = fs::metadata(&real).map_err(io("inspecting", &real))?.file_type();
            if kind.is_dir() && ancestors.contains(&real) {
                return Err(refused(&relative, format!("it is a symbolic link to {} and makes a cycle", target.display())));
            }
            (real, kind)
        } else {
            (path, kind)
        };
        if kind.is_file() {
            validate_key(&relative)?;
            out.push(SourceFile { relative, path: real });
        } else if kind.is_dir() {
            ancestors.push(real.clone());
            walk(root, &real, &relative, ancestors, out)?;
            ancestors.pop();
        } else {
            let what = if kind.is_fifo() {
                "a fifo"
            } else if kind.is_socket() {
                "a socket"
            } else if kind.is_block_device() || kind.is_char_device() {
                "a device"
            } else {
                "neither a file nor a directory"
            };
            return Err(refused(&relative, format!("it is {what}; only files and directories are stored")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn keys(dir: &Path) -> Vec<String> {
        collect(dir).unwrap().into_iter().map(|f| f.relative).collect()
    }

    #[test]
    fn links_inside_are_copies_of_their_targets() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("real/deep")).unwrap();
        fs::write(src.join("real/deep/model.bin"), b"weights").unwrap();
        symlink("real/deep/model.bin", src.join("latest.bin")).unwrap();
        symlink("real", src.join("alias")).unwrap();
        assert_eq!(keys(&src), ["alias/deep/model.bin", "latest.bin", "real/deep/model.bin"]);
        let files = collect(&src).unwrap();
        let real = src.canonicalize().unwrap().join("real/deep/model.bin");
        assert!(files.iter().all(|f| f.path == real), "every copy reads the real file: {files:?}");
    }

    #[test]
    fn links_out_dangling_links_cycles_and_fifos_are_refused_by_name() {
        let tmp = tempfile::tempdir().unwrap();
        let decoy = tmp.path().join("decoy.txt");
        fs::write(&decoy, b"decoy").unwrap();
        type Make<'a> = Box<dyn Fn(&Path) + 'a>;
        let cases: [(&str, Make, &str); 4] = [
            ("out", Box::new(|src: &Path| symlink(&decoy, src.join("sub/out")).unwrap()), "outside the saved directory"),
            ("gone", Box::new(|src: &Path| symlink("nowhere", src.join("sub/gone")).unwrap()), "does not exist"),
            ("up", Box::new(|src: &Path| symlink("..", src.join("sub/up")).unwrap()), "cycle"),
            (
                "pipe",
                Box::new(|src: &Path| nix::unistd::mkfifo(&src.join("sub/pipe"), nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap()),
                "a fifo",
            ),
        ];
        for (name, make, why) in cases {
            let src = tmp.path().join(format!("src-{name}"));
            fs::create_dir_all(src.join("sub")).unwrap();
            fs::write(src.join("sub/a"), b"a").unwrap();
            make(&src);
            let err = collect(&src).unwrap_err().to_string();
            assert!(err.contains(&format!("`sub/{name}`")) && err.contains(why), "{name}: {err}");
        }
        assert!(collect(&tmp.path().join("src-out")).unwrap_err().to_string().contains(&decoy.display().to_string()));
    }
}
