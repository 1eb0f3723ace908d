//! The creation-time check of an experiment's checkpoint storage, bounded: a path into the
//! kernel's pseudo file systems is refused before anything touches it (`/proc/self` made the
//! probe loop at 100% CPU), and the probe as a whole has a deadline, so a hung NFS mount or a
//! black-holed S3 endpoint answers an error instead of holding a request forever.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use drover_storage::{Storage, StorageSpec};

use crate::error::{Error, Result};

/// Trees that are not storage: the kernel's views of processes, devices and itself.
const PSEUDO_ROOTS: [&str; 3] = ["/proc", "/sys", "/dev"];

/// Refuses what must never be storage, then writes, reads back and deletes a probe object
/// within `timeout`.
pub async fn check_storage(spec: &StorageSpec, timeout: Duration) -> Result<()> {
    let probe = async {
        // Resolving and creating a path are blocking calls that a hung mount never returns
        // from: off the async workers, and under the same deadline.
        let opening = spec.clone();
        let storage = tokio::task::spawn_blocking(move || {
            if let StorageSpec::Directory { path, .. } | StorageSpec::SharedFs { path, .. } = &opening {
                refuse_pseudo_fs(path)?;
            }
            Storage::open(&opening).map_err(|e| Error::bad_field("checkpoint_storage", e.to_string()))
        })
        .await
        .map_err(|e| Error::internal(format!("opening the checkpoint storage: {e}")))??;
        storage.check().await.map_err(|e| Error::bad_field("checkpoint_storage", format!("{} is not usable: {e}", spec.describe())))
    };
    match tokio::time::timeout(timeout, probe).await {
        Ok(result) => result,
        Err(_) => {
            Err(Error::bad_field("checkpoint_storage", format!("{} did not answer a probe write within {timeout:?}", spec.describe())))
        }
    }
}

/// A path under `/proc`, `/sys` or `/dev`, as written or once links are resolved (as far as it
/// exists), is refused.
fn refuse_pseudo_fs(path: &Path) -> Result<()> {
    let refuse = |shown: &Path| {
        Err(Error::bad_field(
            "checkpoint_storage.path",
            format!("{} is in a kernel pseudo file system (/proc, /sys, /dev), not storage", shown.display()),
        ))
    };
    // A relative root (a `--data-dir` given as `./data`) is relative to the master's directory.
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let lexical = normalise(&absolute);
    if is_pseudo(&lexical) {
        return refuse(path);
    }
    // The longest existing ancestor, with its links resolved: `/tmp/x -> /proc/self` counts.
    let mut existing = lexical.as_path();
    loop {
        if let Ok(real) = existing.canonicalize() {
            if is_pseudo(&real) {
                return refuse(path);
            }
            break;
        }
        match existing.parent() {
            Some(parent) => existing = parent,
            None => break,
        }
    }
    Ok(())
}

/// `path` with `.` and `..` applied without touching the file system.
fn normalise(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(part) => out.push(part),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

fn is_pseudo(path: &Path) -> bool {
    PSEUDO_ROOTS.iter().any(|root| path.starts_with(root))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pseudo_file_systems_are_refused_however_named() {
        for bad in ["/proc/self", "/proc", "/sys/kernel", "/dev/shm/x", "/tmp/../proc/self", "/./dev"] {
            assert!(refuse_pseudo_fs(Path::new(bad)).is_err(), "{bad}");
        }
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/proc/self", dir.path().join("sneaky")).unwrap();
        assert!(refuse_pseudo_fs(&dir.path().join("sneaky").join("sub")).is_err());
        assert!(refuse_pseudo_fs(&dir.path().join("fine").join("sub")).is_ok());
        assert!(refuse_pseudo_fs(Path::new("relative/path")).is_ok());
    }
}
