//! The cache of unpacked contexts: each experiment's tarball is downloaded and unpacked once
//! per agent process, and the tree is copied into each of its tasks' working directories.
//!
//! [`ContextCache`] keeps unpacked contexts under `<work_root>/`[`CACHE_DIR_NAME`]:
//! the first task of an experiment downloads the tarball (streamed to a file and hashed) and
//! unpacks it into `experiment-<id>-<sha256>/`; tasks of the same experiment arriving meanwhile
//! wait for that one unpack (a per-experiment async lock) and every task then gets its own copy
//! of the tree (copies, not links: tasks may write to their files). A failed download or a
//! refused tarball is not remembered: the next task of the experiment tries again with its own
//! token. At most [`CACHED_CONTEXTS`] experiments stay unpacked; the least recently used one not
//! being copied goes first. The cache lives as long as the agent process: `run_agent` empties
//! the directory when it starts.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::RwLock;

use super::{
    ContextError, ExtractLimits, MAX_CONTEXT_DOWNLOAD_BYTES, check_raw_headers, copy_tree_unless, download_context, extract_context_from,
};

/// The cache's directory under the work root. It cannot be an allocation id (those are UUIDs,
/// and the runner refuses this name).
pub const CACHE_DIR_NAME: &str = ".drover-contexts";
/// How many experiments' unpacked contexts are kept.
pub const CACHED_CONTEXTS: usize = 8;

/// Unpacked contexts, one per experiment; see the module doc.
pub struct ContextCache {
    /// This process's own directory under `<work_root>/.drover-contexts/`: agents sharing a
    /// work root (several on one host, the default `/tmp/drover-agent`) never touch each
    /// other's trees.
    root: PathBuf,
    /// Held (an OS lock on `<root>.lock`) while this process lives, so another agent's
    /// [`ContextCache::clear`] knows the directory is in use.
    lock: Mutex<Option<std::fs::File>>,
    limits: ExtractLimits,
    keep: usize,
    entries: Mutex<HashMap<CacheKey, Arc<CacheEntry>>>,
    clock: AtomicU64,
    unpacks: AtomicUsize,
}

/// The path the context is served at (one per experiment).
type CacheKey = String;

#[derive(Default)]
struct CacheEntry {
    /// The unpacked tree, once there is one. Written while downloading and unpacking (so the
    /// experiment's other tasks wait for that one unpack), read while copying (so eviction,
    /// which needs the write side, never removes a tree being copied).
    dir: Arc<RwLock<Option<PathBuf>>>,
    last_used: AtomicU64,
}

impl std::fmt::Debug for ContextCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContextCache")
            .field("root", &self.root)
            .field("limits", &self.limits)
            .field("keep", &self.keep)
            .field("unpacks", &self.unpacks.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// Raises a flag when dropped (also when the future holding it is cancelled).
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// Removes a file when dropped (also when the future that made it is cancelled).
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// `<dir>.lock`, beside the directory it guards.
fn lock_path_of(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".lock");
    dir.with_file_name(name)
}

/// Removes every entry of the shared cache directory `parent` but `own` whose lock is not held
/// by a live process (entries of an earlier layout have no lock and go too). Lock files stay:
/// removing one another process is about to lock would leave that process's lock invisible.
fn remove_abandoned(parent: &Path, own: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(parent)? {
        let path = entry?.path();
        if path == own || path.extension().is_some_and(|e| e == "lock") {
            continue;
        }
        let lock = lock_path_of(&path);
        let held = std::fs::OpenOptions::new()
            .write(true)
            .open(&lock)
            .is_ok_and(|f| matches!(f.try_lock(), Err(std::fs::TryLockError::WouldBlock)));
        if held {
            continue;
        }
        let removed = if path.symlink_metadata()?.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
        match removed {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

impl ContextCache {
    /// A cache in `<work_root>/`[`CACHE_DIR_NAME`], with the default limits.
    pub fn new(work_root: &Path) -> Self {
        Self::with_limits(work_root, ExtractLimits::default(), CACHED_CONTEXTS)
    }

    /// A cache with other extraction limits, keeping `keep` (at least one) unpacked contexts.
    pub fn with_limits(work_root: &Path, limits: ExtractLimits, keep: usize) -> Self {
        let own = format!("{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
        ContextCache {
            root: work_root.join(CACHE_DIR_NAME).join(own),
            lock: Mutex::new(None),
            limits,
            keep: keep.max(1),
            entries: Mutex::new(HashMap::new()),
            clock: AtomicU64::new(0),
            unpacks: AtomicUsize::new(0),
        }
    }

    /// The cache's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// How many tarballs this cache has downloaded and unpacked successfully.
    pub fn unpack_count(&self) -> usize {
        self.unpacks.load(Ordering::Relaxed)
    }

    /// Claims this process's cache directory and removes what agent processes that are gone
    /// left beside it (a directory whose lock nobody holds). Call before any task starts.
    pub async fn clear(&self) -> std::io::Result<()> {
        let parent = self.root.parent().expect("the cache root has a parent").to_path_buf();
        tokio::fs::create_dir_all(&parent).await?;
        let lock_path = lock_path_of(&self.root);
        let file = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path)?;
        // Blocking, not try: another agent's clear may hold it for an instant while checking.
        file.lock()?;
        *self.lock.lock().expect("lock poisoned") = Some(file);
        let own = self.root.clone();
        tokio::task::spawn_blocking(move || remove_abandoned(&parent, &own)).await.map_err(std::io::Error::other)?
    }

    /// Puts the context at `context_path` (one per experiment) into `work_dir` (an existing,
    /// empty directory): downloads and unpacks it if this agent has not yet, then copies it.
    pub async fn populate(&self, master_url: &str, context_path: &str, token: &str, work_dir: &Path) -> Result<(), ContextError> {
        let key: CacheKey = context_path.to_owned();
        let entry = self.entry(&key);
        let guard = {
            let read = entry.dir.clone().read_owned().await;
            if read.is_some() {
                read
            } else {
                drop(read);
                let mut write = entry.dir.clone().write_owned().await;
                if write.is_none() {
                    let dir = self.download_and_unpack(master_url, context_path, token).await?;
                    *write = Some(dir);
                    self.evict_except(&key);
                }
                write.downgrade()
            }
        };
        let tree = guard.clone().unwrap_or_default();
        let destination = work_dir.to_path_buf();
        let source = tree.clone();
        // A cancelled caller (the task was killed) stops the copy soon, and the copy then
        // removes what it wrote, so nothing is left in the work directory once it is done. The
        // read guard goes with the copy: the tree is not evicted while it is being read.
        let stop = Arc::new(AtomicBool::new(false));
        let _stop_on_drop = StopOnDrop(stop.clone());
        let copied = tokio::task::spawn_blocking(move || {
            let copied = copy_tree_unless(&source, &destination, &stop);
            if stop.load(Ordering::Relaxed) {
                let _ = std::fs::remove_dir_all(&destination);
            }
            drop(guard);
            copied
        })
        .await
        .map_err(|error| ContextError::Panicked(error.to_string()))?;
        if copied.is_err() && !tokio::fs::try_exists(&tree).await.unwrap_or(false) {
            // Someone removed the tree behind the cache's back: forget it, so the next task
            // unpacks again instead of failing the same way.
            let mut write = entry.dir.write().await;
            if write.as_ref() == Some(&tree) {
                *write = None;
            }
        }
        copied
    }

    fn entry(&self, key: &CacheKey) -> Arc<CacheEntry> {
        let tick = self.clock.fetch_add(1, Ordering::Relaxed) + 1;
        let mut entries = self.entries.lock().unwrap_or_else(|poison| poison.into_inner());
        let entry = entries.entry(key.clone()).or_default().clone();
        entry.last_used.store(tick, Ordering::Relaxed);
        entry
    }

    async fn download_and_unpack(&self, master_url: &str, context_path: &str, token: &str) -> Result<PathBuf, ContextError> {
        let cache_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ContextError::Cache { path, source }
        };
        tokio::fs::create_dir_all(&self.root).await.map_err(cache_error(&self.root))?;
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let tarball = TempFile(self.root.join(format!("download-{nonce}.tar.gz")));
        let downloaded = download_context(master_url, context_path, token, &tarball.0, MAX_CONTEXT_DOWNLOAD_BYTES).await?;
        let sha256: String = downloaded.sha256.iter().map(|byte| format!("{byte:02x}")).collect();
        // Named by the context's path as well as its bytes: two experiments with the same bytes
        // get a tree each, so evicting one never pulls the other's from under it.
        let key: String = {
            use sha2::Digest as _;
            sha2::Sha256::digest(context_path.as_bytes()).iter().take(8).map(|byte| format!("{byte:02x}")).collect()
        };
        let tree = self.root.join(format!("context-{key}-{sha256}"));
        let unpacking = self.root.join(format!("unpacking-{nonce}"));
        let tarball_path = tarball.0.clone();
        let limits = self.limits;
        // Decompressing and writing files blocks; keep it off the runtime's worker threads. If
        // the waiting task is cancelled, this still runs to its end and leaves either a complete
        // tree (renamed into place, found again by the next download of the same bytes) or
        // nothing.
        let unpacked = tokio::task::spawn_blocking(move || {
            if tree.is_dir() {
                return Ok(tree);
            }
            std::fs::create_dir(&unpacking).map_err(cache_error(&unpacking))?;
            let open = || std::fs::File::open(&tarball_path).map_err(cache_error(&tarball_path));
            let result = open()
                .and_then(|file| check_raw_headers(std::io::BufReader::new(file), &limits))
                .and_then(|()| open())
                .and_then(|file| extract_context_from(std::io::BufReader::new(file), &unpacking, &limits))
                .and_then(|()| std::fs::rename(&unpacking, &tree).map_err(cache_error(&tree)));
            if result.is_err() {
                let _ = std::fs::remove_dir_all(&unpacking);
            }
            result.map(|()| tree)
        })
        .await
        .map_err(|error| ContextError::Panicked(error.to_string()))??;
        drop(tarball);
        self.unpacks.fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            context_path,
            bytes = downloaded.bytes,
            tree = %unpacked.display(),
            "context downloaded and unpacked"
        );
        Ok(unpacked)
    }

    /// Removes the least recently used unpacked trees beyond the `keep` most recent, skipping
    /// any being unpacked or copied.
    fn evict_except(&self, keep_key: &CacheKey) {
        let mut others: Vec<Arc<CacheEntry>> = {
            let entries = self.entries.lock().unwrap_or_else(|poison| poison.into_inner());
            entries.iter().filter(|(key, _)| *key != keep_key).map(|(_, entry)| entry.clone()).collect()
        };
        others.sort_by_key(|entry| std::cmp::Reverse(entry.last_used.load(Ordering::Relaxed)));
        let mut kept = 1; // the one just unpacked
        for entry in others {
            match entry.dir.try_write() {
                Ok(mut dir) if dir.is_some() => {
                    if kept < self.keep {
                        kept += 1;
                    } else if let Some(tree) = dir.take() {
                        tracing::info!(tree = %tree.display(), "evicting an unpacked context");
                        tokio::task::spawn_blocking(move || {
                            if let Err(error) = std::fs::remove_dir_all(&tree) {
                                tracing::warn!(tree = %tree.display(), %error, "cannot remove an evicted context");
                            }
                        });
                    }
                }
                Ok(_) => {}          // nothing unpacked
                Err(_) => kept += 1, // in use: it stays
            }
        }
    }
}
