//! Where checkpoints and parameters live: a local directory, a shared file system mounted at
//! the same path everywhere, or an S3 bucket, behind one [`Storage`] that speaks in keys
//! (`"{uuid}/model.safetensors"`), through `object_store`.
//!
//! Files are streamed both ways, never held whole in memory: to S3 in 8 MiB multipart chunks,
//! four in flight; on a file system by a kernel copy into a temporary name and a rename, so a
//! reader never sees half an object.
//!
//! Architecture invariant: storage knows keys and bytes, nothing of trials, checkpoints' rows
//! or policies. Deleting something already gone is not an error, so a retried clean-up
//! converges.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Multipart chunk size for object stores (S3's minimum part is 5 MiB).
const CHUNK: usize = 8 << 20;
/// Read size when streaming a file out of a file-system storage (object_store's own is 8 KiB,
/// a thousand blocking reads per 8 MB).
const READ_CHUNK: usize = 1 << 20;
/// Chunks in flight during a multipart upload.
const IN_FLIGHT: usize = 4;
/// Files uploaded at once to an object store by `put_dir`.
const FILES_IN_FLIGHT: usize = 3;

/// How to reach a storage; also what the master hands a trial (as JSON) so that its SDK can
/// save and restore checkpoints itself.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StorageSpec {
    /// A directory on this host.
    Directory { path: PathBuf },
    /// A shared file system, mounted at `path` on the master and on every agent.
    SharedFs { path: PathBuf },
    /// An S3 bucket (or an S3-compatible server at `endpoint_url`). Credentials not given here
    /// come from the environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, ...).
    S3 {
        bucket: String,
        #[serde(default)]
        prefix: Option<String>,
        #[serde(default)]
        endpoint_url: Option<String>,
        #[serde(default)]
        region: Option<String>,
        #[serde(default)]
        access_key_id: Option<String>,
        #[serde(default)]
        secret_access_key: Option<String>,
    },
}

/// Without credentials: a spec ends up in configs and logs printed with `{:?}`.
impl std::fmt::Debug for StorageSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StorageSpec({})", self.describe())
    }
}

impl StorageSpec {
    /// The same storage, one level down: every key gets `sub/` in front.
    pub fn child(&self, sub: &str) -> StorageSpec {
        match self {
            StorageSpec::Directory { path } => StorageSpec::Directory { path: path.join(sub) },
            StorageSpec::SharedFs { path } => StorageSpec::SharedFs { path: path.join(sub) },
            StorageSpec::S3 { prefix, .. } => {
                let mut s3 = self.clone();
                if let StorageSpec::S3 { prefix: p, .. } = &mut s3 {
                    *p = Some(match prefix.as_deref().map(|p| p.trim_matches('/')).filter(|p| !p.is_empty()) {
                        Some(p) => format!("{p}/{sub}"),
                        None => sub.to_string(),
                    });
                }
                s3
            }
        }
    }

    /// A short description for messages, without credentials.
    pub fn describe(&self) -> String {
        match self {
            StorageSpec::Directory { path } => format!("directory {}", path.display()),
            StorageSpec::SharedFs { path } => format!("shared_fs {}", path.display()),
            StorageSpec::S3 { bucket, prefix, endpoint_url, .. } => format!(
                "s3://{bucket}/{}{}",
                prefix.as_deref().unwrap_or(""),
                endpoint_url.as_deref().map(|e| format!(" at {e}")).unwrap_or_default()
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("invalid key `{key}`: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error("{0} not found")]
    NotFound(String),
    #[error("cannot open {what}: {message}")]
    Config { what: String, message: String },
    #[error("{action} {key} on {storage}: {source}")]
    Store {
        action: &'static str,
        key: String,
        storage: String,
        #[source]
        // Boxed: object_store's error is large, and every Result here would carry its size.
        source: Box<object_store::Error>,
    },
    #[error("the data for {key} stopped: {source}")]
    Aborted {
        key: String,
        /// The error of the stream that was being stored; callers downcast it to their own.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = StorageError> = std::result::Result<T, E>;

/// One stored object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    /// Its key, relative to the storage (or to the prefix it was listed under).
    pub key: String,
    pub size: u64,
}

/// A storage, opened.
#[derive(Clone)]
pub struct Storage {
    spec: StorageSpec,
    store: Arc<dyn ObjectStore>,
    /// For file-system storages: the root, for the kernel-copy fast path.
    root: Option<PathBuf>,
    /// For S3: the prefix every key goes under.
    prefix: Option<ObjectPath>,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Storage({})", self.spec.describe())
    }
}

/// Checks a key: relative, `/`-separated, no empty, `.` or `..` component, no NUL or
/// backslash. Every key from outside (a checkpoint's file list, a parameter name) goes
/// through here before it touches a path.
pub fn validate_key(key: &str) -> Result<()> {
    let bad = |reason| Err(StorageError::InvalidKey { key: key.to_string(), reason });
    if key.is_empty() {
        return bad("it is empty");
    }
    if key.starts_with('/') {
        return bad("it must be relative");
    }
    if key.contains(['\0', '\\']) {
        return bad("it contains a NUL or a backslash");
    }
    if key.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        return bad("it has an empty, `.` or `..` component");
    }
    Ok(())
}

impl Storage {
    /// Opens a storage. File-system roots are created; nothing is contacted yet (see
    /// [`Storage::check`]).
    pub fn open(spec: &StorageSpec) -> Result<Storage> {
        let config_err = |message: String| StorageError::Config { what: spec.describe(), message };
        match spec {
            StorageSpec::Directory { path } | StorageSpec::SharedFs { path } => {
                std::fs::create_dir_all(path).map_err(|source| StorageError::Io { action: "creating", path: path.clone(), source })?;
                let root = path.canonicalize().map_err(|source| StorageError::Io { action: "resolving", path: path.clone(), source })?;
                let store = LocalFileSystem::new_with_prefix(&root).map_err(|e| config_err(e.to_string()))?;
                Ok(Storage { spec: spec.clone(), store: Arc::new(store), root: Some(root), prefix: None })
            }
            StorageSpec::S3 { bucket, prefix, endpoint_url, region, access_key_id, secret_access_key } => {
                if bucket.trim().is_empty() {
                    return Err(config_err("the bucket name is empty".into()));
                }
                let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
                if let Some(endpoint) = endpoint_url {
                    builder = builder
                        .with_endpoint(endpoint)
                        .with_allow_http(endpoint.starts_with("http://"))
                        .with_virtual_hosted_style_request(false);
                }
                builder = builder.with_region(region.clone().unwrap_or_else(|| "us-east-1".into()));
                if let Some(key) = access_key_id {
                    builder = builder.with_access_key_id(key);
                }
                if let Some(secret) = secret_access_key {
                    builder = builder.with_secret_access_key(secret);
                }
                // A wrong endpoint or a missing bucket should fail in seconds, not after retries.
                builder = builder.with_retry(object_store::RetryConfig {
                    max_retries: 2,
                    retry_timeout: std::time::Duration::from_secs(10),
                    ..Default::default()
                });
                let store = builder.build().map_err(|e| config_err(e.to_string()))?;
                let prefix = prefix.as_deref().map(|p| p.trim_matches('/')).filter(|p| !p.is_empty()).map(ObjectPath::from);
                Ok(Storage { spec: spec.clone(), store: Arc::new(store), root: None, prefix })
            }
        }
    }

    pub fn spec(&self) -> &StorageSpec {
        &self.spec
    }

    /// The local path of `key`, for file-system storages.
    pub fn local_path(&self, key: &str) -> Option<PathBuf> {
        self.root.as_ref().map(|r| r.join(key))
    }

    fn path(&self, key: &str) -> Result<ObjectPath> {
        validate_key(key)?;
        Ok(match &self.prefix {
            Some(p) => key.split('/').fold(p.clone(), |path, part| path.join(part)),
            None => ObjectPath::from_iter(key.split('/')),
        })
    }

    fn store_err(&self, action: &'static str, key: &str) -> impl FnOnce(object_store::Error) -> StorageError {
        let (key, storage) = (key.to_string(), self.spec.describe());
        move |source| match source {
            object_store::Error::NotFound { .. } => StorageError::NotFound(key),
            source => StorageError::Store { action, key, storage, source: Box::new(source) },
        }
    }

    /// Proves the storage usable now: writes, reads back and deletes a probe object. This is
    /// how a missing bucket or bad credentials are found when an experiment is created, not
    /// hours later when its first checkpoint is saved.
    pub async fn check(&self) -> Result<()> {
        let key = format!(
            ".drover-probe-{}-{}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos())
        );
        let unusable = |message: String| StorageError::Config { what: self.spec.describe(), message };
        match self.put_bytes(&key, Bytes::from_static(b"drover")).await {
            Ok(()) => {}
            // S3 answers a write to a missing bucket with 404 NoSuchBucket.
            Err(StorageError::NotFound(_)) => {
                let bucket = match &self.spec {
                    StorageSpec::S3 { bucket, .. } => bucket.as_str(),
                    _ => "",
                };
                return Err(unusable(format!("the bucket `{bucket}` does not exist (NoSuchBucket)")));
            }
            Err(StorageError::Store { source, .. }) => return Err(unusable(format!("a probe object cannot be written: {source}"))),
            Err(e) => return Err(e),
        }
        let back = self.get_bytes(&key).await?;
        self.delete(&key).await?;
        if &back[..] != b"drover" {
            return Err(StorageError::Config { what: self.spec.describe(), message: "a probe object read back different bytes".into() });
        }
        Ok(())
    }

    pub async fn put_bytes(&self, key: &str, bytes: Bytes) -> Result<()> {
        let path = self.path(key)?;
        self.store.put(&path, PutPayload::from_bytes(bytes)).await.map_err(self.store_err("writing", key))?;
        Ok(())
    }

    pub async fn get_bytes(&self, key: &str) -> Result<Bytes> {
        let path = self.path(key)?;
        let got = self.store.get(&path).await.map_err(self.store_err("reading", key))?;
        got.bytes().await.map_err(self.store_err("reading", key))
    }

    /// Size of `key`, or `None` when there is no such object.
    pub async fn head(&self, key: &str) -> Result<Option<u64>> {
        let path = self.path(key)?;
        match self.store.head(&path).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.store_err("inspecting", key)(e)),
        }
    }

    /// Stores the local file `from` as `key`, streaming. Returns its size.
    pub async fn put_file(&self, key: &str, from: &Path) -> Result<u64> {
        let path = self.path(key)?;
        if let Some(target) = self.local_path(key) {
            // Same file system family: a kernel copy (copy_file_range) into a temporary name
            // beside the target, then a rename, is the `cp` floor and atomic for readers.
            let (from, target) = (from.to_path_buf(), target.clone());
            return tokio::task::spawn_blocking(move || copy_atomically(&from, &target)).await.map_err(|e| StorageError::Io {
                action: "copying",
                path: PathBuf::from(key),
                source: std::io::Error::other(e),
            })?;
        }
        let mut file =
            tokio::fs::File::open(from).await.map_err(|source| StorageError::Io { action: "opening", path: from.into(), source })?;
        let len = file.metadata().await.map_err(|source| StorageError::Io { action: "inspecting", path: from.into(), source })?.len();
        if len as usize <= CHUNK {
            let mut buf = Vec::with_capacity(len as usize);
            file.read_to_end(&mut buf).await.map_err(|source| StorageError::Io { action: "reading", path: from.into(), source })?;
            self.store.put(&path, PutPayload::from(buf)).await.map_err(self.store_err("writing", key))?;
            return Ok(len);
        }
        let upload = self.store.put_multipart(&path).await.map_err(self.store_err("starting an upload of", key))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, CHUNK);
        let mut buf = vec![0u8; 1 << 20];
        let mut sent = 0u64;
        loop {
            let n = match file.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(source) => {
                    let _ = writer.abort().await;
                    return Err(StorageError::Io { action: "reading", path: from.into(), source });
                }
            };
            if let Err(e) = writer.wait_for_capacity(IN_FLIGHT).await {
                let _ = writer.abort().await;
                return Err(self.store_err("uploading", key)(e));
            }
            writer.write(&buf[..n]);
            sent += n as u64;
        }
        writer.finish().await.map_err(self.store_err("finishing the upload of", key))?;
        Ok(sent)
    }

    /// Writes `key` to the local file `to` (through `to.partial` and a rename), streaming.
    pub async fn get_file(&self, key: &str, to: &Path) -> Result<u64> {
        let path = self.path(key)?;
        if let Some(source) = self.local_path(key) {
            let (source, to) = (source.clone(), to.to_path_buf());
            return tokio::task::spawn_blocking(move || {
                if !source.is_file() {
                    return Err(StorageError::NotFound(source.display().to_string()));
                }
                copy_atomically(&source, &to)
            })
            .await
            .map_err(|e| StorageError::Io {
                action: "copying",
                path: PathBuf::from(key),
                source: std::io::Error::other(e),
            })?;
        }
        let got = self.store.get(&path).await.map_err(self.store_err("reading", key))?;
        let partial = partial_name(to);
        if let Some(dir) = to.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(|source| StorageError::Io { action: "creating", path: dir.into(), source })?;
        }
        let io = |action, source| StorageError::Io { action, path: partial.clone(), source };
        let mut file = tokio::fs::File::create(&partial).await.map_err(|e| io("creating", e))?;
        let mut stream = got.into_stream();
        let mut written = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(self.store_err("reading", key))?;
            file.write_all(&chunk).await.map_err(|e| io("writing", e))?;
            written += chunk.len() as u64;
        }
        file.flush().await.map_err(|e| io("writing", e))?;
        drop(file);
        tokio::fs::rename(&partial, to).await.map_err(|e| io("renaming", e))?;
        Ok(written)
    }

    /// Stores what `data` yields as `key`, streaming, and returns its size. Readers see the
    /// whole object or none: on a file system it is written under a temporary name and renamed;
    /// on S3 it is a single PUT up to 8 MiB, else a multipart upload that is only visible once
    /// completed. When `data` yields an error, nothing is left under `key` (an upload in flight
    /// is aborted) and the error comes back inside [`StorageError::Aborted`].
    pub async fn put_stream<S, E>(&self, key: &str, data: S) -> Result<u64>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send + Unpin,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path = self.path(key)?;
        let mut data = data;
        let aborted = |e: E| StorageError::Aborted { key: key.to_string(), source: e.into() };
        if let Some(target) = self.local_path(key) {
            if let Some(dir) = target.parent() {
                tokio::fs::create_dir_all(dir).await.map_err(|source| StorageError::Io { action: "creating", path: dir.into(), source })?;
            }
            let partial = partial_name(&target);
            let result = async {
                let io = |action, source| StorageError::Io { action, path: partial.clone(), source };
                let mut file = tokio::fs::File::create(&partial).await.map_err(|e| io("creating", e))?;
                let mut written = 0u64;
                while let Some(chunk) = data.next().await {
                    let chunk = chunk.map_err(aborted)?;
                    file.write_all(&chunk).await.map_err(|e| io("writing", e))?;
                    written += chunk.len() as u64;
                }
                file.flush().await.map_err(|e| io("writing", e))?;
                drop(file);
                tokio::fs::rename(&partial, &target).await.map_err(|e| io("renaming", e))?;
                Ok(written)
            }
            .await;
            if result.is_err() {
                let _ = tokio::fs::remove_file(&partial).await;
            }
            return result;
        }
        // Small objects (the common case for metadata-sized blobs) go in one PUT.
        let mut first = Vec::new();
        while first.len() <= CHUNK {
            match data.next().await {
                Some(chunk) => first.extend_from_slice(&chunk.map_err(aborted)?),
                None => {
                    let len = first.len() as u64;
                    self.store.put(&path, PutPayload::from(first)).await.map_err(self.store_err("writing", key))?;
                    return Ok(len);
                }
            }
        }
        let upload = self.store.put_multipart(&path).await.map_err(self.store_err("starting an upload of", key))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, CHUNK);
        let mut sent = first.len() as u64;
        writer.write(&first);
        drop(first);
        while let Some(chunk) = data.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(aborted(e));
                }
            };
            if let Err(e) = writer.wait_for_capacity(IN_FLIGHT).await {
                let _ = writer.abort().await;
                return Err(self.store_err("uploading", key)(e));
            }
            writer.write(&chunk);
            sent += chunk.len() as u64;
        }
        writer.finish().await.map_err(self.store_err("finishing the upload of", key))?;
        Ok(sent)
    }

    /// Opens `key` for reading: its size and a stream of its bytes. The object is pinned when
    /// this returns (an open file; an S3 GET in flight), so deleting it meanwhile does not cut
    /// the stream short on a file system.
    pub async fn get_stream(&self, key: &str) -> Result<(u64, BoxStream<'static, Result<Bytes>>)> {
        let path = self.path(key)?;
        if let Some(source) = self.local_path(key) {
            let file = match tokio::fs::File::open(&source).await {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(StorageError::NotFound(key.to_string())),
                Err(e) => return Err(StorageError::Io { action: "opening", path: source, source: e }),
            };
            let meta = file.metadata().await.map_err(|e| StorageError::Io { action: "inspecting", path: source.clone(), source: e })?;
            if !meta.is_file() {
                return Err(StorageError::NotFound(key.to_string()));
            }
            let stream = futures_util::stream::try_unfold((file, source), |(mut file, source)| async move {
                let mut buf = vec![0u8; READ_CHUNK];
                let n = file.read(&mut buf).await.map_err(|e| StorageError::Io { action: "reading", path: source.clone(), source: e })?;
                if n == 0 {
                    return Ok(None);
                }
                buf.truncate(n);
                Ok(Some((Bytes::from(buf), (file, source))))
            });
            return Ok((meta.len(), stream.boxed()));
        }
        let got = self.store.get(&path).await.map_err(self.store_err("reading", key))?;
        let size = got.meta.size;
        let (key, storage) = (key.to_string(), self.spec.describe());
        let stream = got.into_stream().map(move |chunk| {
            chunk.map_err(|source| match source {
                object_store::Error::NotFound { .. } => StorageError::NotFound(key.clone()),
                source => StorageError::Store { action: "reading", key: key.clone(), storage: storage.clone(), source: Box::new(source) },
            })
        });
        Ok((size, stream.boxed()))
    }

    /// Every object under `prefix` (a key prefix ending at a `/` boundary; empty for all),
    /// with keys relative to it, sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<StoredObject>> {
        let base = if prefix.is_empty() { self.prefix.clone() } else { Some(self.path(prefix.trim_end_matches('/'))?) };
        let mut stream = self.store.list(base.as_ref());
        let strip = base.as_ref().map(|b| format!("{}/", b.as_ref())).unwrap_or_default();
        let mut out = Vec::new();
        while let Some(meta) = stream.next().await {
            let meta = match meta {
                Ok(m) => m,
                Err(object_store::Error::NotFound { .. }) => break,
                Err(e) => return Err(self.store_err("listing", prefix)(e)),
            };
            let full = meta.location.as_ref();
            let key = full.strip_prefix(&strip).unwrap_or(full).to_string();
            // LocalFileSystem's staging files of uploads in flight are not objects yet.
            if key.split('/').any(|c| c.starts_with(".drover-tmp-")) {
                continue;
            }
            out.push(StoredObject { key, size: meta.size });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// Deletes `key`; one already gone is fine.
    pub async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.store_err("deleting", key)(e)),
        }
    }

    /// Deletes everything under `prefix`; returns how many objects went. Nothing there is fine.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<usize> {
        validate_key(prefix.trim_end_matches('/'))?;
        let objects = self.list(prefix).await?;
        let base = prefix.trim_end_matches('/');
        for o in &objects {
            self.delete(&format!("{base}/{}", o.key)).await?;
        }
        if let Some(dir) = self.local_path(base) {
            // Empty directories are left by object deletes on a file system.
            match tokio::fs::remove_dir_all(&dir).await {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(StorageError::Io { action: "removing", path: dir, source }),
            }
        }
        Ok(objects.len())
    }

    /// Uploads every regular file under the local directory `dir` as `prefix/relative/path`,
    /// in name order. Returns (relative path, size) for each. Symbolic links are refused: a
    /// checkpoint holds its own bytes.
    pub async fn put_dir(&self, prefix: &str, dir: &Path) -> Result<Vec<(String, u64)>> {
        let mut files = Vec::new();
        walk(dir, dir, &mut files)?;
        // An object store answers each request after a round trip: a few files in flight keep
        // the connection busy. A file system copy is bound by the disk; one at a time.
        let in_flight = if self.root.is_some() { 1 } else { FILES_IN_FLIGHT };
        let base = prefix.trim_end_matches('/');
        let mut out: Vec<(String, u64)> = futures_util::stream::iter(files)
            .map(|rel| async move {
                let size = self.put_file(&format!("{base}/{rel}"), &dir.join(&rel)).await?;
                Ok::<_, StorageError>((rel, size))
            })
            .buffer_unordered(in_flight)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_>>()?;
        out.sort();
        Ok(out)
    }

    /// Downloads every object under `prefix` into the local directory `dir`.
    pub async fn get_dir(&self, prefix: &str, dir: &Path) -> Result<Vec<(String, u64)>> {
        let objects = self.list(prefix).await?;
        let mut out = Vec::with_capacity(objects.len());
        for o in objects {
            validate_key(&o.key)?;
            let size = self.get_file(&format!("{}/{}", prefix.trim_end_matches('/'), o.key), &dir.join(&o.key)).await?;
            out.push((o.key, size));
        }
        Ok(out)
    }
}

/// A hidden temporary name beside `path`, unique in this process; `list` skips such names.
fn partial_name(path: &Path) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".drover-tmp-{}-{n}-{name}", std::process::id()))
}

fn copy_atomically(from: &Path, to: &Path) -> Result<u64> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).map_err(|source| StorageError::Io { action: "creating", path: dir.into(), source })?;
    }
    let tmp = partial_name(to);
    let size = std::fs::copy(from, &tmp).map_err(|source| StorageError::Io { action: "copying", path: from.into(), source })?;
    std::fs::rename(&tmp, to).map_err(|source| {
        let _ = std::fs::remove_file(&tmp);
        StorageError::Io { action: "renaming", path: to.into(), source }
    })?;
    Ok(size)
}

/// Relative paths of the regular files under `dir`, sorted.
fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    let io = |action, source| StorageError::Io { action, path: dir.into(), source };
    let mut entries: Vec<_> =
        std::fs::read_dir(dir).map_err(|e| io("listing", e))?.collect::<Result<_, _>>().map_err(|e| io("listing", e))?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| io("inspecting", e))?;
        if kind.is_symlink() {
            return Err(StorageError::InvalidKey { key: path.display().to_string(), reason: "symbolic links are not stored" });
        }
        if kind.is_dir() {
            walk(root, &path, out)?;
        } else if kind.is_file() {
            let rel = path.strip_prefix(root).expect("walked from root").to_string_lossy().replace('\\', "/");
            validate_key(&rel)?;
            out.push(rel);
        }
    }
    Ok(())
}
