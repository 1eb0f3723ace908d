//! A master's data directory: one master at a time, and the cluster's join secret.
//!
//! Two masters on one directory corrupt each other: each takes the other's running trials for
//! its own to recover, kills them, and leaves experiments stuck. So a master holds an exclusive
//! lock on `DATA/master.lock` for as long as it runs (an OS file lock: it goes away with the
//! process, however that ends, so there is never a stale lock to clean up) and writes its pid and
//! URL in it, for the message the next one prints.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Name of the lock file in the data directory.
pub const LOCK_FILE: &str = "master.lock";
/// Name of the join-secret file in the data directory.
pub const JOIN_TOKEN_FILE: &str = "join-token";

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("the data directory {dir} is in use by another drover master (pid {pid}, {url}); stop it, or give this one another --data-dir")]
    InUse { dir: PathBuf, pid: String, url: String, holder_url: Option<String> },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the join token in {path} is empty or not text; delete the file to have a new one made")]
    BadToken { path: PathBuf },
}

impl DataDirError {
    /// The URL of the master holding the directory, when it wrote one.
    pub fn holder_url(&self) -> Option<&str> {
        match self {
            DataDirError::InUse { holder_url, .. } => holder_url.as_deref(),
            _ => None,
        }
    }
}

/// The lock of a data directory, held until dropped.
#[derive(Debug)]
pub struct DataDirLock {
    file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Takes the directory (creating it) or says who holds it.
    pub fn acquire(dir: &Path) -> Result<DataDirLock, DataDirError> {
        std::fs::create_dir_all(dir).map_err(|source| DataDirError::Io { action: "creating", path: dir.into(), source })?;
        let path = dir.join(LOCK_FILE);
        let io = |action, source| DataDirError::Io { action, path: path.clone(), source };
        let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(|e| io("opening", e))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let mut fields = text.lines();
                let pid = fields.next().filter(|p| !p.is_empty()).unwrap_or("unknown").to_string();
                let holder_url = fields.next().filter(|u| !u.is_empty()).map(str::to_string);
                let url = holder_url.clone().unwrap_or_else(|| "still starting".into());
                return Err(DataDirError::InUse { dir: dir.into(), pid, url, holder_url });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io("locking", e)),
        }
        let mut lock = DataDirLock { file, path };
        lock.record(None)?;
        Ok(lock)
    }

    /// Writes this process's pid and, once listening, its URL into the lock file.
    pub fn record(&mut self, url: Option<&str>) -> Result<(), DataDirError> {
        let text = format!("{}\n{}\n", std::process::id(), url.unwrap_or(""));
        let io = |action, source| DataDirError::Io { action, path: self.path.clone(), source };
        self.file.set_len(0).map_err(|e| io("writing", e))?;
        self.file.rewind().map_err(|e| io("writing", e))?;
        self.file.write_all(text.as_bytes()).map_err(|e| io("writing", e))?;
        self.file.flush().map_err(|e| io("writing", e))
    }
}

/// The cluster's join secret: the one in `DATA/join-token`, or a new random one written there
/// (readable by the owner only) on first start.
pub fn load_or_create_join_token(dir: &Path) -> Result<String, DataDirError> {
    let path = dir.join(JOIN_TOKEN_FILE);
    let io = |action, source| DataDirError::Io { action, path: path.clone(), source };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let token = text.trim();
            if token.is_empty() || token.chars().any(char::is_control) {
                return Err(DataDirError::BadToken { path });
            }
            return Ok(token.to_string());
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("reading", e)),
    }
    std::fs::create_dir_all(dir).map_err(|source| DataDirError::Io { action: "creating", path: dir.into(), source })?;
    let token = crate::secret::random_token();
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(&path) {
        Ok(mut file) => {
            file.write_all(format!("{token}\n").as_bytes()).map_err(|e| io("writing", e))?;
            Ok(token)
        }
        // Another process made it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create_join_token(dir),
        Err(e) => Err(io("creating", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_names_the_holder_and_first_release_frees_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = DataDirLock::acquire(dir.path()).unwrap();
        first.record(Some("http://127.0.0.1:1234")).unwrap();
        let err = DataDirLock::acquire(dir.path()).unwrap_err();
        let message = err.to_string();
        assert!(message.contains(&std::process::id().to_string()), "{message}");
        assert!(message.contains("http://127.0.0.1:1234"), "{message}");
        assert_eq!(err.holder_url(), Some("http://127.0.0.1:1234"));
        drop(first);
        DataDirLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn join_token_is_made_once_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create_join_token(dir.path()).unwrap();
        let b = load_or_create_join_token(dir.path()).unwrap();
        assert_eq!(a, b);
        assert!(a.len() >= 32);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(JOIN_TOKEN_FILE)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
