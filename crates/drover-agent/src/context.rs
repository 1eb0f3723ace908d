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
//! **The cache.** [`ContextCache`] keeps unpacked contexts under `<work_root>/`[`CACHE_DIR_NAME`]:
//! the first task of an experiment downloads the tarball (streamed to a file and hashed) and
//! unpacks it into `experiment-<id>-<sha256>/`; tasks of the same experiment arriving meanwhile
//! wait for that one unpack (a per-experiment async lock) and every task then gets its own copy
//! of the tree (copies, not links: tasks may write to their files). A failed download or a
//! refused tarball is not remembered: the next task of the experiment tries again with its own
//! token. At most [`CACHED_CONTEXTS`] experiments stay unpacked; the least recently used one not
//! being copied goes first. The cache lives as long as the agent process: `run_agent` empties
//! the directory when it starts.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flate2::read::GzDecoder;
use sha2::{Digest, Sha256};
use tar::{Archive, EntryType};
use tokio::io::AsyncWriteExt;
use tokio::sync::RwLock;

/// Most entries (files, directories, links, metadata records) a context may have.
pub const MAX_CONTEXT_ENTRIES: usize = 100_000;
/// Most bytes the files of a context may add up to once unpacked. The master enforces its own
/// (configurable, smaller by default) bound when the context is uploaded; this one only keeps
/// the agent's disk safe from whatever arrives.
pub const MAX_CONTEXT_UNPACKED_BYTES: u64 = 4 << 30;
/// Largest context tarball the agent downloads (compressed).
pub const MAX_CONTEXT_DOWNLOAD_BYTES: u64 = 1 << 30;
/// The cache's directory under the work root. It cannot be an allocation id (those are UUIDs,
/// and the runner refuses this name).
pub const CACHE_DIR_NAME: &str = ".drover-contexts";
/// How many experiments' unpacked contexts are kept.
pub const CACHED_CONTEXTS: usize = 8;
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
    Status {
        url: String,
        status: reqwest::StatusCode,
    },
    #[error("the context at {url} is larger than {limit} bytes; refusing to download it")]
    DownloadTooLarge { url: String, limit: u64 },
    #[error("refusing context entry {path:?}: {reason}")]
    UnsafeEntry { path: String, reason: String },
    #[error("refusing the context: it has more than {limit} entries")]
    TooManyEntries { limit: usize },
    #[error(
        "refusing the context: its files add up to more than {limit} bytes (at entry {path:?})"
    )]
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
        ExtractLimits {
            max_entries: MAX_CONTEXT_ENTRIES,
            max_unpacked_bytes: MAX_CONTEXT_UNPACKED_BYTES,
        }
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
    let fetch_error = |source| ContextError::Fetch {
        url: url.clone(),
        source,
    };
    let too_large = || ContextError::DownloadTooLarge {
        url: url.clone(),
        limit: max_bytes,
    };
    let cache_error = |source| ContextError::Cache {
        path: destination.to_path_buf(),
        source,
    };
    // A context can be large, so there is no overall deadline, only on connecting and on
    // silence, which is what a vanished master looks like.
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(60))
        .build()
        .map_err(fetch_error)?;
    let mut response = client
        .get(&url)
        .bearer_auth(token)
        .send()
        .await
        .map_err(fetch_error)?;
    let status = response.status();
    if !status.is_success() {
        return Err(ContextError::Status { url, status });
    }
    if response
        .content_length()
        .is_some_and(|length| length > max_bytes)
    {
        return Err(too_large());
    }
    let mut file = tokio::fs::File::create(destination)
        .await
        .map_err(cache_error)?;
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
    Ok(Downloaded {
        bytes,
        sha256: hasher.finalize().into(),
    })
}

/// Extracts a gzip tarball into `destination` (which must exist) within the default
/// [`ExtractLimits`], refusing any entry that could write outside it. On error, entries before
/// the bad one may already be extracted; the caller discards the directory.
pub fn extract_context(tarball_gz: &[u8], destination: &Path) -> Result<(), ContextError> {
    extract_tar(
        GzDecoder::new(tarball_gz),
        destination,
        &ExtractLimits::default(),
    )
}

/// Walks the raw tar headers of a gzip'd tarball with constant memory (see
/// `drover_api::context`): a huge long-name or PAX header is refused before the tar reader,
/// which holds such a header whole, ever sees it.
fn check_raw_headers(tarball_gz: impl Read, limits: &ExtractLimits) -> Result<(), ContextError> {
    let max_bytes = limits
        .max_unpacked_bytes
        .saturating_add((limits.max_entries as u64 + 2) * 1024);
    drover_api::context::check_headers(GzDecoder::new(tarball_gz), limits.max_entries, max_bytes)
        .map_err(|e| ContextError::Invalid(e.0))
}

/// [`extract_context`] from any reader of gzip'd tar, within `limits`.
pub fn extract_context_from(
    tarball_gz: impl Read,
    destination: &Path,
    limits: &ExtractLimits,
) -> Result<(), ContextError> {
    extract_tar(GzDecoder::new(tarball_gz), destination, limits)
}

fn extract_tar(
    reader: impl Read,
    destination: &Path,
    limits: &ExtractLimits,
) -> Result<(), ContextError> {
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
            return Err(ContextError::TooManyEntries {
                limit: limits.max_entries,
            });
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
        let unsafe_entry = |reason: &str| ContextError::UnsafeEntry {
            path: raw_path.clone(),
            reason: reason.to_owned(),
        };
        let path = entry.path().map_err(ContextError::Corrupt)?.into_owned();
        let relative = checked_relative_path(&path).map_err(unsafe_entry)?;

        match entry_type {
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                // The logical size (for a sparse file, with its holes): what a copy of it takes.
                unpacked_bytes = unpacked_bytes.saturating_add(entry.size());
                if unpacked_bytes > limits.max_unpacked_bytes {
                    return Err(ContextError::TooLarge {
                        limit: limits.max_unpacked_bytes,
                        path: raw_path,
                    });
                }
            }
            EntryType::Directory => {}
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
            // Devices and fifos in a training context are a mistake at best; a fifo would
            // also block whoever reads it (the copy into each task's directory).
            EntryType::Fifo => return Err(unsafe_entry("fifos are not allowed in a context")),
            EntryType::Char => {
                return Err(unsafe_entry(
                    "character devices are not allowed in a context",
                ));
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
                return Err(ContextError::Write {
                    path: raw_path,
                    source,
                });
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

/// Copies the tree `source` into the existing directory `destination`: directories, regular
/// files (with their permissions; files hard-linked to each other in `source` are hard-linked
/// in the copy too, so a tarball of many links to one big file cannot multiply it) and symlinks
/// (as they are: they were checked to stay inside when unpacked).
pub fn copy_tree(source: &Path, destination: &Path) -> Result<(), ContextError> {
    copy_tree_unless(source, destination, &AtomicBool::new(false))
}

/// [`copy_tree`], stopping with an error as soon as `stop` is raised.
fn copy_tree_unless(
    source: &Path,
    destination: &Path,
    stop: &AtomicBool,
) -> Result<(), ContextError> {
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
                return Err(ContextError::Cache {
                    path: destination.to_path_buf(),
                    source: std::io::Error::other("copy cancelled"),
                });
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
                return Err(ContextError::Cache {
                    path: from,
                    source: std::io::Error::other("not a file, directory or symlink"),
                });
            }
        }
    }
    Ok(())
}

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

/// Experiment id and the path the context is served at.
type CacheKey = (i64, String);

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
        tokio::task::spawn_blocking(move || remove_abandoned(&parent, &own))
            .await
            .map_err(std::io::Error::other)?
    }

    /// Puts the context of `experiment_id` into `work_dir` (an existing, empty directory):
    /// downloads and unpacks it if this agent has not yet, then copies it.
    pub async fn populate(
        &self,
        experiment_id: i64,
        master_url: &str,
        context_path: &str,
        token: &str,
        work_dir: &Path,
    ) -> Result<(), ContextError> {
        let key = (experiment_id, context_path.to_owned());
        let entry = self.entry(&key);
        let guard = {
            let read = entry.dir.clone().read_owned().await;
            if read.is_some() {
                read
            } else {
                drop(read);
                let mut write = entry.dir.clone().write_owned().await;
                if write.is_none() {
                    let dir = self
                        .download_and_unpack(experiment_id, master_url, context_path, token)
                        .await?;
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
        let mut entries = self
            .entries
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        let entry = entries.entry(key.clone()).or_default().clone();
        entry.last_used.store(tick, Ordering::Relaxed);
        entry
    }

    async fn download_and_unpack(
        &self,
        experiment_id: i64,
        master_url: &str,
        context_path: &str,
        token: &str,
    ) -> Result<PathBuf, ContextError> {
        let cache_error = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ContextError::Cache { path, source }
        };
        tokio::fs::create_dir_all(&self.root)
            .await
            .map_err(cache_error(&self.root))?;
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        let tarball = TempFile(self.root.join(format!("download-{nonce}.tar.gz")));
        let downloaded = download_context(
            master_url,
            context_path,
            token,
            &tarball.0,
            MAX_CONTEXT_DOWNLOAD_BYTES,
        )
        .await?;
        let sha256: String = downloaded
            .sha256
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        let tree = self
            .root
            .join(format!("experiment-{experiment_id}-{sha256}"));
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
                .and_then(|file| {
                    extract_context_from(std::io::BufReader::new(file), &unpacking, &limits)
                })
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
            experiment_id,
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
            let entries = self
                .entries
                .lock()
                .unwrap_or_else(|poison| poison.into_inner());
            entries
                .iter()
                .filter(|(key, _)| *key != keep_key)
                .map(|(_, entry)| entry.clone())
                .collect()
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

#[cfg(test)]
mod tests {
    /// Agents sharing a work root keep their own cache directories: one starting clears only
    /// what agents that are gone left behind.
    #[tokio::test]
    async fn agents_sharing_a_work_root_keep_their_own_caches() {
        let work = tempfile::tempdir().unwrap();
        let a = ContextCache::new(work.path());
        a.clear().await.unwrap();
        std::fs::create_dir_all(a.root().join("experiment-1-abc")).unwrap();
        let b = ContextCache::new(work.path());
        b.clear().await.unwrap();
        assert!(a.root().join("experiment-1-abc").is_dir(), "a live agent's cache survives another's start");
        assert_ne!(a.root(), b.root());
        let a_root = a.root().to_path_buf();
        drop(a);
        let c = ContextCache::new(work.path());
        c.clear().await.unwrap();
        assert!(!a_root.exists(), "a gone agent's cache is removed");
        assert!(b.root().parent().unwrap().is_dir());
    }

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
        let result = extract_tar(
            &raw_tar(entries)[..],
            &root.path().join("work"),
            &ExtractLimits::default(),
        );
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
        assert!(extract_tar(&tarball[..], &work, &ExtractLimits::default()).is_err());
        assert!(!outside.join("file").exists());
    }

    #[test]
    fn refuses_fifo_and_device_entries_naming_them() {
        for (name, entry_type, what) in [
            ("pipe", EntryType::Fifo, "fifos"),
            ("null", EntryType::Char, "character devices"),
            ("sda", EntryType::Block, "block devices"),
        ] {
            let (root, result) = extract_raw(&[
                ("ok.txt", EntryType::Regular, None, b"x"),
                (name, entry_type, None, b""),
            ]);
            match result {
                Err(error @ ContextError::UnsafeEntry { .. }) => {
                    let message = error.to_string();
                    assert!(message.contains(name), "{message}");
                    assert!(message.contains(what), "{message}");
                }
                other => panic!("expected {name} to be refused, got {other:?}"),
            }
            assert!(!root.path().join("work").join(name).exists());
        }
    }

    #[test]
    fn refuses_too_many_entries() {
        let limits = ExtractLimits {
            max_entries: 3,
            ..ExtractLimits::default()
        };
        let root = tempfile::tempdir().expect("tempdir");
        let three = raw_tar(&[
            ("a", EntryType::Regular, None, b"a"),
            ("b", EntryType::Regular, None, b"b"),
            ("c", EntryType::Regular, None, b"c"),
        ]);
        extract_tar(&three[..], root.path(), &limits).expect("three entries are fine");
        let four = raw_tar(&[
            ("a", EntryType::Regular, None, b"a"),
            ("b", EntryType::Regular, None, b"b"),
            ("c", EntryType::Regular, None, b"c"),
            ("d", EntryType::Regular, None, b"d"),
        ]);
        let result = extract_tar(&four[..], root.path(), &limits);
        match result {
            Err(error @ ContextError::TooManyEntries { limit: 3 }) => {
                assert!(error.to_string().contains("more than 3 entries"), "{error}");
            }
            other => panic!("expected too many entries, got {other:?}"),
        }
        assert!(!root.path().join("d").exists());
    }

    #[test]
    fn refuses_the_default_entry_limit_plus_one() {
        // One header block repeated: empty-named pax global headers create nothing on disk, so
        // only the count matters.
        let one = raw_tar(&[("pax_global_header", EntryType::XGlobalHeader, None, b"")]);
        let header = &one[..512];
        let mut tarball = Vec::with_capacity((MAX_CONTEXT_ENTRIES + 3) * 512);
        for _ in 0..=MAX_CONTEXT_ENTRIES {
            tarball.extend_from_slice(header);
        }
        tarball.extend_from_slice(&[0u8; 1024]);
        let root = tempfile::tempdir().expect("tempdir");
        let result = extract_tar(&tarball[..], root.path(), &ExtractLimits::default());
        assert!(
            matches!(
                result,
                Err(ContextError::TooManyEntries {
                    limit: MAX_CONTEXT_ENTRIES
                })
            ),
            "{result:?}"
        );
        let exactly = &tarball[512..];
        extract_tar(exactly, root.path(), &ExtractLimits::default())
            .expect("exactly the limit is accepted");
    }

    #[test]
    fn refuses_contexts_unpacking_past_the_size_bound() {
        let limits = ExtractLimits {
            max_unpacked_bytes: 10,
            ..ExtractLimits::default()
        };
        let root = tempfile::tempdir().expect("tempdir");
        let fits = raw_tar(&[
            ("a", EntryType::Regular, None, b"12345"),
            ("b", EntryType::Regular, None, b"12345"),
        ]);
        extract_tar(&fits[..], root.path(), &limits).expect("10 bytes are fine");
        let over = raw_tar(&[
            ("a", EntryType::Regular, None, b"12345"),
            ("big", EntryType::Regular, None, b"123456"),
        ]);
        match extract_tar(&over[..], root.path(), &limits) {
            Err(error @ ContextError::TooLarge { limit: 10, .. }) => {
                assert!(error.to_string().contains("\"big\""), "{error}");
            }
            other => panic!("expected too large, got {other:?}"),
        }
    }

    #[test]
    fn long_entry_paths_are_cut_in_errors() {
        let long = "x".repeat(5000);
        assert!(quoted_path(long.as_bytes()).len() < 600);
        assert_eq!(quoted_path(b"short/path"), "short/path");
        // Cut on a character boundary.
        let wide = "é".repeat(1000);
        assert!(quoted_path(wide.as_bytes()).starts_with("éé"));
    }

    #[test]
    fn copy_tree_copies_files_links_and_shares_hard_links() {
        let root = tempfile::tempdir().expect("tempdir");
        let source = root.path().join("source");
        let copy = root.path().join("copy");
        std::fs::create_dir_all(source.join("d/e")).expect("mkdir");
        std::fs::create_dir(&copy).expect("mkdir");
        std::fs::write(source.join("d/e/file"), "data").expect("write");
        std::fs::hard_link(source.join("d/e/file"), source.join("twin")).expect("link");
        std::os::unix::fs::symlink("d/e/file", source.join("sym")).expect("symlink");
        std::fs::write(source.join("run.sh"), "#!/bin/sh\n").expect("write");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(
            source.join("run.sh"),
            std::fs::Permissions::from_mode(0o755),
        )
        .expect("chmod");

        copy_tree(&source, &copy).expect("copy");
        assert_eq!(
            std::fs::read_to_string(copy.join("d/e/file")).expect("read"),
            "data"
        );
        assert_eq!(
            std::fs::read_link(copy.join("sym")).expect("readlink"),
            Path::new("d/e/file")
        );
        let file = std::fs::metadata(copy.join("d/e/file")).expect("stat");
        let twin = std::fs::metadata(copy.join("twin")).expect("stat");
        assert_eq!(file.ino(), twin.ino(), "hard links stay links in the copy");
        assert_ne!(
            file.ino(),
            std::fs::metadata(source.join("d/e/file"))
                .expect("stat")
                .ino(),
            "but not to the source"
        );
        let mode = std::fs::metadata(copy.join("run.sh"))
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111, "executable bits kept");
        // Writing to the copy leaves the source alone.
        std::fs::write(copy.join("d/e/file"), "changed").expect("write");
        assert_eq!(
            std::fs::read_to_string(source.join("d/e/file")).expect("read"),
            "data"
        );
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
