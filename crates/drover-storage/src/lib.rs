//! Where checkpoints and parameters live: a local directory, a shared file system mounted at
//! the same path everywhere, or an S3 bucket, behind one [`Storage`] that speaks in keys
//! (`"{uuid}/model.safetensors"`); S3 through `object_store`, file systems through `local`.
//!
//! Files are streamed both ways, never held whole in memory: to S3 in 8 MiB multipart chunks,
//! four in flight; on a file system by a kernel copy into a temporary name and a rename, so a
//! reader never sees half an object.
//!
//! Symbolic links: trials write into file-system storages, and the master lists, serves and
//! deletes what they wrote, so on a file system every operation treats a link as a link: it
//! is never read, listed, copied or deleted through (reading one is [`StorageError::Link`];
//! [`Storage::links`] names them; deleting a tree removes a link itself), and no directory is
//! created through one. [`Storage::put_dir`] stores what a link inside the saved directory
//! points to, as `cp -L` would, and refuses one that leads outside it, so a saved checkpoint
//! holds no link. The only links drover itself makes are for browsing ([`Storage::make_link`]:
//! a PBT member's folder pointing at its checkpoint), by the same no-follow walk, and nothing
//! reads or deletes through them.
//!
//! Architecture invariant: storage knows keys and bytes, nothing of trials, checkpoints' rows
//! or policies. Deleting something already gone is not an error, so a retried clean-up
//! converges.

mod credentials;
mod error;
mod local;
mod source;
mod spec;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use error::{Result, StorageError};
pub use spec::StorageSpec;

use credentials::check_s3_credentials;

/// Multipart chunk size for object stores (S3's minimum part is 5 MiB).
const CHUNK: usize = 8 << 20;
/// Read size when streaming a file out of a file-system storage (object_store's own is 8 KiB,
/// a thousand blocking reads per 8 MB).
const READ_CHUNK: usize = 1 << 20;
/// Chunks in flight during a multipart upload.
const IN_FLIGHT: usize = 4;
/// Files uploaded at once to an object store by `put_dir`.
const FILES_IN_FLIGHT: usize = 3;
/// Names of files being written start with this; listings skip them.
const TMP_PREFIX: &str = ".drover-tmp-";

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
    backend: Backend,
}

#[derive(Clone)]
enum Backend {
    /// A file system, from its canonical root, every key under `prefix`. Never through
    /// object_store: its file system follows symbolic links, which would let a trial's link
    /// list, serve or delete anything.
    Local { root: PathBuf, prefix: Option<String> },
    /// S3, with the prefix every key goes under.
    Object { store: Arc<dyn ObjectStore>, prefix: Option<ObjectPath> },
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Storage({})", self.spec.describe())
    }
}

/// `key` under a file-system storage's `prefix` (the prefix itself for an empty key).
fn under<'a>(prefix: &Option<String>, key: &'a str) -> std::borrow::Cow<'a, str> {
    match prefix {
        None => std::borrow::Cow::Borrowed(key),
        Some(p) if key.is_empty() => std::borrow::Cow::Owned(p.clone()),
        Some(p) => std::borrow::Cow::Owned(format!("{p}/{key}")),
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
            StorageSpec::Directory { path, prefix } | StorageSpec::SharedFs { path, prefix } => {
                let prefix = prefix.as_deref().map(|p| p.trim_matches('/')).filter(|p| !p.is_empty()).map(str::to_string);
                if let Some(p) = &prefix {
                    validate_key(p)?;
                }
                std::fs::create_dir_all(path).map_err(|source| StorageError::Io { action: "creating", path: path.clone(), source })?;
                let root = path.canonicalize().map_err(|source| StorageError::Io { action: "resolving", path: path.clone(), source })?;
                Ok(Storage { spec: spec.clone(), backend: Backend::Local { root, prefix } })
            }
            StorageSpec::S3 { bucket, prefix, endpoint_url, region, access_key_id, secret_access_key } => {
                if bucket.trim().is_empty() {
                    return Err(config_err("the bucket name is empty".into()));
                }
                if let Some(e) = endpoint_url
                    && !(e.starts_with("http://") || e.starts_with("https://"))
                {
                    return Err(config_err(format!("the endpoint `{e}` is not an http:// or https:// URL")));
                }
                check_s3_credentials(access_key_id.as_deref(), secret_access_key.as_deref(), &|name| std::env::var_os(name).is_some())
                    .map_err(config_err)?;
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
                Ok(Storage { spec: spec.clone(), backend: Backend::Object { store: Arc::new(store), prefix } })
            }
        }
    }

    pub fn spec(&self) -> &StorageSpec {
        &self.spec
    }

    /// The local path of `key`, for file-system storages. Only for messages and tests: a path
    /// may go through a link a trial made; every operation here walks without following.
    pub fn local_path(&self, key: &str) -> Option<PathBuf> {
        match &self.backend {
            Backend::Local { root, prefix } => Some(root.join(&*under(prefix, key))),
            Backend::Object { .. } => None,
        }
    }

    /// The object-store path of `key` under `prefix`.
    fn path(prefix: &Option<ObjectPath>, key: &str) -> Result<ObjectPath> {
        validate_key(key)?;
        Ok(match prefix {
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
        let (store, prefix) = match &self.backend {
            Backend::Local { root, prefix } => {
                return on_local(root, prefix, key, move |tree, key| {
                    tree.write_with(key, |file| {
                        file.write_all(&bytes).map_err(|source| StorageError::Io {
                            action: "writing",
                            path: tree.root.join(key),
                            source,
                        })?;
                        Ok(bytes.len() as u64)
                    })
                })
                .await
                .map(drop);
            }
            Backend::Object { store, prefix } => (store, prefix),
        };
        let path = Self::path(prefix, key)?;
        store.put(&path, PutPayload::from_bytes(bytes)).await.map_err(self.store_err("writing", key))?;
        Ok(())
    }

    pub async fn get_bytes(&self, key: &str) -> Result<Bytes> {
        let (store, prefix) = match &self.backend {
            Backend::Local { root, prefix } => {
                return on_local(root, prefix, key, |tree, key| {
                    let mut file = tree.open_file(key)?;
                    let mut out = Vec::new();
                    file.read_to_end(&mut out).map_err(|source| StorageError::Io {
                        action: "reading",
                        path: tree.root.join(key),
                        source,
                    })?;
                    Ok(Bytes::from(out))
                })
                .await;
            }
            Backend::Object { store, prefix } => (store, prefix),
        };
        let path = Self::path(prefix, key)?;
        let got = store.get(&path).await.map_err(self.store_err("reading", key))?;
        got.bytes().await.map_err(self.store_err("reading", key))
    }

    /// Size of `key`, or `None` when there is no such object. On a file system, a link at
    /// `key` or on the way to it is [`StorageError::Link`].
    pub async fn head(&self, key: &str) -> Result<Option<u64>> {
        let (store, prefix) = match &self.backend {
            Backend::Local { root, prefix } => return on_local(root, prefix, key, |tree, key| tree.head(key)).await,
            Backend::Object { store, prefix } => (store, prefix),
        };
        let path = Self::path(prefix, key)?;
        match store.head(&path).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.store_err("inspecting", key)(e)),
        }
    }

    /// Stores the local file `from` as `key`, streaming. Returns its size.
    pub async fn put_file(&self, key: &str, from: &Path) -> Result<u64> {
        let (store, prefix) = match &self.backend {
            Backend::Local { root, prefix } => {
                let from = from.to_path_buf();
                // A kernel copy (io::copy between files is copy_file_range) into a temporary
                // name beside the target, then a rename: the `cp` floor, atomic for readers.
                return on_local(root, prefix, key, move |tree, key| {
                    tree.write_with(key, |out| {
                        let io = |action, source| StorageError::Io { action, path: from.clone(), source };
                        let mut file = std::fs::File::open(&from).map_err(|e| io("opening", e))?;
                        std::io::copy(&mut file, out).map_err(|e| io("copying", e))
                    })
                })
                .await;
            }
            Backend::Object { store, prefix } => (store, prefix),
        };
        let path = Self::path(prefix, key)?;
        let mut file =
            tokio::fs::File::open(from).await.map_err(|source| StorageError::Io { action: "opening", path: from.into(), source })?;
        let len = file.metadata().await.map_err(|source| StorageError::Io { action: "inspecting", path: from.into(), source })?.len();
        if len <= CHUNK as u64 {
            let mut buf = Vec::with_capacity(len as usize);
            file.read_to_end(&mut buf).await.map_err(|source| StorageError::Io { action: "reading", path: from.into(), source })?;
            store.put(&path, PutPayload::from(buf)).await.map_err(self.store_err("writing", key))?;
            return Ok(len);
        }
        let upload = store.put_multipart(&path).await.map_err(self.store_err("starting an upload of", key))?;
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

    /// Writes `key` to the local file `to` (through a temporary name beside it and a rename),
    /// streaming. A link at `to` is replaced, not written through.
    pub async fn get_file(&self, key: &str, to: &Path) -> Result<u64> {
        let bad_target = |reason: &str| StorageError::Io {
            action: "writing",
            path: to.into(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, reason.to_string()),
        };
        let name = to.file_name().ok_or_else(|| bad_target("it has no file name"))?;
        let name = name.to_str().ok_or_else(|| bad_target("its name is not UTF-8"))?;
        let dir = to.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        self.fetch(key, dir, name).await
    }

    /// Writes `key` to `dir/relative` (a `/`-separated relative path, checked like a key),
    /// streaming, through a temporary name and a rename. The directories under `dir` are
    /// walked and made without following links: a link already there (`x -> /etc` when
    /// `relative` is `x/passwd`) is refused by name ([`StorageError::Refused`]) rather than
    /// written through; one at the file's own name is replaced. `dir` itself is the caller's
    /// and is resolved as given.
    pub async fn get_file_into(&self, key: &str, dir: &Path, relative: &str) -> Result<u64> {
        validate_key(relative)?;
        self.fetch(key, dir, relative).await
    }

    async fn fetch(&self, key: &str, dir: &Path, relative: &str) -> Result<u64> {
        validate_key(key)?;
        let io = |action, source| StorageError::Io { action, path: dir.into(), source };
        tokio::fs::create_dir_all(dir).await.map_err(|e| io("creating", e))?;
        let dest = tokio::fs::canonicalize(dir).await.map_err(|e| io("resolving", e))?;
        let (store, prefix) = match &self.backend {
            Backend::Local { root, prefix } => {
                let key = &*under(prefix, key);
                let (root, key, relative) = (root.clone(), key.to_string(), relative.to_string());
                return blocking(&key.clone(), move || {
                    let mut source = storage_tree(&root).open_file(&key)?;
                    local::Tree { root: &dest, in_storage: false }.write_with(&relative, |out| {
                        std::io::copy(&mut source, out).map_err(|source| StorageError::Io {
                            action: "copying",
                            path: root.join(&key),
                            source,
                        })
                    })
                })
                .await;
            }
            Backend::Object { store, prefix } => (store, prefix),
        };
        let path = Self::path(prefix, key)?;
        let got = store.get(&path).await.map_err(self.store_err("reading", key))?;
        let target = dest.join(relative);
        let stream = got.into_stream().map(|chunk| chunk.map_err(self.store_err("reading", key)));
        write_staged(&dest, false, relative, target, stream).await
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
        let mut data = data;
        let aborted = |e: E| StorageError::Aborted { key: key.to_string(), source: e.into() };
        let (store, prefix) = match &self.backend {
            Backend::Local { root, prefix } => {
                let key = &*under(prefix, key);
                validate_key(key)?;
                return write_staged(root, true, key, root.join(key), data.map(|chunk| chunk.map_err(aborted))).await;
            }
            Backend::Object { store, prefix } => (store, prefix),
        };
        let path = Self::path(prefix, key)?;
        // Small objects (the common case for metadata-sized blobs) go in one PUT.
        let mut first = Vec::new();
        while first.len() <= CHUNK {
            match data.next().await {
                Some(chunk) => first.extend_from_slice(&chunk.map_err(aborted)?),
                None => {
                    let len = first.len() as u64;
                    store.put(&path, PutPayload::from(first)).await.map_err(self.store_err("writing", key))?;
                    return Ok(len);
                }
            }
        }
        let upload = store.put_multipart(&path).await.map_err(self.store_err("starting an upload of", key))?;
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
    /// the stream short on a file system. On a file system, a link at `key` or on the way to
    /// it is [`StorageError::Link`].
    pub async fn get_stream(&self, key: &str) -> Result<(u64, BoxStream<'static, Result<Bytes>>)> {
        let (store, prefix) = match &self.backend {
            Backend::Local { root, prefix } => {
                let key = &*under(prefix, key);
                validate_key(key)?;
                let (root, owned) = (root.clone(), key.to_string());
                let source = root.join(key);
                let (file, size) = blocking(key, move || {
                    let file = storage_tree(&root).open_file(&owned)?;
                    let size =
                        file.metadata().map_err(|source| StorageError::Io { action: "inspecting", path: root.join(&owned), source })?.len();
                    Ok((file, size))
                })
                .await?;
                let file = tokio::fs::File::from_std(file);
                let stream = futures_util::stream::try_unfold((file, source), |(mut file, source)| async move {
                    let mut buf = vec![0u8; READ_CHUNK];
                    let n =
                        file.read(&mut buf).await.map_err(|e| StorageError::Io { action: "reading", path: source.clone(), source: e })?;
                    if n == 0 {
                        return Ok(None);
                    }
                    buf.truncate(n);
                    Ok(Some((Bytes::from(buf), (file, source))))
                });
                return Ok((size, stream.boxed()));
            }
            Backend::Object { store, prefix } => (store, prefix),
        };
        let path = Self::path(prefix, key)?;
        let got = store.get(&path).await.map_err(self.store_err("reading", key))?;
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
    /// with keys relative to it, sorted. On a file system these are the regular files:
    /// links are not listed (see [`Storage::links`]) nor walked into, and a prefix that goes
    /// through a link is [`StorageError::Link`].
    pub async fn list(&self, prefix: &str) -> Result<Vec<StoredObject>> {
        let (store, object_prefix) = match &self.backend {
            Backend::Local { root, prefix: base } => return Ok(self.walk_local(root, &under(base, prefix.trim_end_matches('/'))).await?.0),
            Backend::Object { store, prefix } => (store, prefix),
        };
        let base = if prefix.is_empty() { object_prefix.clone() } else { Some(Self::path(object_prefix, prefix.trim_end_matches('/'))?) };
        let mut stream = store.list(base.as_ref());
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
            if key.split('/').any(|c| c.starts_with(TMP_PREFIX)) {
                continue;
            }
            out.push(StoredObject { key, size: meta.size });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    /// The symbolic links under `prefix` (keys relative to it, sorted), which [`Storage::list`]
    /// leaves out and every read refuses: callers that take a checkpoint as a whole (a
    /// download, a check of what a trial saved) refuse it by name. Always empty on S3.
    pub async fn links(&self, prefix: &str) -> Result<Vec<String>> {
        match &self.backend {
            Backend::Local { root, prefix: base } => Ok(self.walk_local(root, &under(base, prefix.trim_end_matches('/'))).await?.1),
            Backend::Object { .. } => {
                if !prefix.is_empty() {
                    validate_key(prefix.trim_end_matches('/'))?;
                }
                Ok(Vec::new())
            }
        }
    }

    async fn walk_local(&self, root: &Path, prefix: &str) -> Result<(Vec<StoredObject>, Vec<String>)> {
        let prefix = prefix.trim_end_matches('/').to_string();
        if !prefix.is_empty() {
            validate_key(&prefix)?;
        }
        let root = root.to_path_buf();
        blocking(&prefix.clone(), move || storage_tree(&root).walk(&prefix)).await
    }

    /// Deletes `key`; one already gone is fine. On a file system a link at `key` is removed
    /// itself (never what it points to), and a key beyond a link is [`StorageError::Link`].
    pub async fn delete(&self, key: &str) -> Result<()> {
        let (store, prefix) = match &self.backend {
            Backend::Local { root, prefix } => return on_local(root, prefix, key, |tree, key| tree.delete(key)).await,
            Backend::Object { store, prefix } => (store, prefix),
        };
        let path = Self::path(prefix, key)?;
        match store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.store_err("deleting", key)(e)),
        }
    }

    /// On a file system, makes `key` a symbolic link to `target` (relative to the link's own
    /// directory, stored as given) without following any link on the way; `false` when
    /// something is already there or the storage is not a file system (object stores have no
    /// links). drover makes such links only for browsing (a PBT member's folder pointing at its
    /// checkpoint); it never reads or deletes through them.
    pub async fn make_link(&self, key: &str, target: &str) -> Result<bool> {
        let Backend::Local { root, prefix } = &self.backend else { return Ok(false) };
        let key = under(prefix, key).into_owned();
        validate_key(&key)?;
        let (root, target) = (root.clone(), target.to_string());
        blocking(&key.clone(), move || storage_tree(&root).make_link(&key, &target)).await
    }

    /// Deletes everything under `prefix`; returns how many objects went. Nothing there is fine.
    /// On a file system the whole directory goes, links in it included (each removed itself:
    /// nothing outside the directory is touched); a prefix that is a link loses the link.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<usize> {
        let base = prefix.trim_end_matches('/');
        validate_key(base)?;
        if let Backend::Local { root, prefix: storage_prefix } = &self.backend {
            let (root, base) = (root.clone(), under(storage_prefix, base).into_owned());
            return blocking(&base.clone(), move || storage_tree(&root).delete_tree(&base)).await;
        }
        let objects = self.list(prefix).await?;
        for o in &objects {
            self.delete(&format!("{base}/{}", o.key)).await?;
        }
        Ok(objects.len())
    }

    /// Uploads every file under the local directory `dir` as `prefix/relative/path`, in name
    /// order, as `cp -L` would copy it: a symbolic link whose target stays inside `dir` is
    /// stored as a copy of that file or directory; one leading outside `dir` or nowhere, a link
    /// cycle, a fifo, socket or device is refused by name ([`StorageError::Refused`]), before
    /// anything is stored. Returns (relative path, size) for each file.
    pub async fn put_dir(&self, prefix: &str, dir: &Path) -> Result<Vec<(String, u64)>> {
        let owned = dir.to_path_buf();
        let files = blocking(&dir.display().to_string(), move || source::collect(&owned)).await?;
        // An object store answers each request after a round trip: a few files in flight keep
        // the connection busy. A file system copy is bound by the disk; one at a time.
        let in_flight = if matches!(self.backend, Backend::Local { .. }) { 1 } else { FILES_IN_FLIGHT };
        let base = prefix.trim_end_matches('/');
        let mut out: Vec<(String, u64)> = futures_util::stream::iter(files)
            .map(|file| async move {
                let size = self.put_file(&format!("{base}/{}", file.relative), &file.path).await?;
                Ok::<_, StorageError>((file.relative, size))
            })
            .buffer_unordered(in_flight)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_>>()?;
        out.sort();
        Ok(out)
    }

    /// Downloads every object under `prefix` into the local directory `dir`, never writing
    /// through a link already in `dir` (see [`Storage::get_file_into`]). Links in storage are
    /// not objects and are not downloaded.
    pub async fn get_dir(&self, prefix: &str, dir: &Path) -> Result<Vec<(String, u64)>> {
        let objects = self.list(prefix).await?;
        let mut out = Vec::with_capacity(objects.len());
        for o in objects {
            let size = self.get_file_into(&format!("{}/{}", prefix.trim_end_matches('/'), o.key), dir, &o.key).await?;
            out.push((o.key, size));
        }
        Ok(out)
    }
}

fn storage_tree(root: &Path) -> local::Tree<'_> {
    local::Tree { root, in_storage: true }
}

/// Runs `op` on a file-system storage's tree for `key` (put under the storage's prefix and
/// validated), off the async threads.
async fn on_local<T: Send + 'static>(
    root: &Path,
    prefix: &Option<String>,
    key: &str,
    op: impl FnOnce(local::Tree<'_>, &str) -> Result<T> + Send + 'static,
) -> Result<T> {
    let key = under(prefix, key).into_owned();
    validate_key(&key)?;
    let root = root.to_path_buf();
    blocking(&key.clone(), move || op(storage_tree(&root), &key)).await
}

/// Runs file-system work off the async threads.
/// File-system operations of this process running at once. A walk of a deep tree holds a
/// descriptor per level (up to `local::MAX_DEPTH`), so a few concurrent requests on hostile
/// trees must not use up the process's descriptors.
const FS_OPERATIONS_AT_ONCE: usize = 32;

async fn blocking<T: Send + 'static>(what: &str, work: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    static PERMITS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(FS_OPERATIONS_AT_ONCE);
    let _permit = PERMITS.acquire().await.expect("the semaphore is never closed");
    tokio::task::spawn_blocking(work).await.map_err(|e| StorageError::Io {
        action: "working on",
        path: what.into(),
        source: std::io::Error::other(e),
    })?
}

/// Writes what `data` yields to `relative` under the local tree `root` (a storage's root, or
/// with `in_storage` false a download's destination), whole or not at all: into a staged
/// temporary file, renamed into place at the end, removed on any error.
async fn write_staged<S>(root: &Path, in_storage: bool, relative: &str, path: PathBuf, mut data: S) -> Result<u64>
where
    S: Stream<Item = Result<Bytes>> + Send + Unpin,
{
    let (owned_root, owned_relative) = (root.to_path_buf(), relative.to_string());
    let (staged, file) = blocking(relative, move || local::Tree { root: &owned_root, in_storage }.stage(&owned_relative)).await?;
    let mut file = tokio::fs::File::from_std(file);
    let written = async {
        let io = |action, source| StorageError::Io { action, path: path.clone(), source };
        let mut written = 0u64;
        while let Some(chunk) = data.next().await {
            let chunk = chunk?;
            file.write_all(&chunk).await.map_err(|e| io("writing", e))?;
            written += chunk.len() as u64;
        }
        file.flush().await.map_err(|e| io("writing", e))?;
        Ok(written)
    }
    .await;
    drop(file);
    match written {
        Ok(written) => blocking(relative, move || staged.commit()).await.map(|()| written),
        Err(e) => {
            let _ = tokio::task::spawn_blocking(move || staged.abandon()).await;
            Err(e)
        }
    }
}
