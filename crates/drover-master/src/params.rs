//! The parameter database: named, versioned blobs (policy weights, say) with tags and JSON
//! metadata, for the distributed-RL loop where one learner pushes while many actors get.
//!
//! The bytes live in the parameter storage (`MasterConfig::param_storage`) under a key unique
//! to each push, `{name}/{version}-{uuid}`; the rows live in the store. A push writes the
//! blob completely first and adds the row second, so whoever can see a row finds its whole
//! blob; versions are immutable, so what a row names never changes under a reader. Two pushes
//! of one version race only for the row: the loser's blob has its own key and is deleted.
//!
//! Readers that ask to wait (`wait_ms`) sleep on a per-name watch that a push or a tag move
//! bumps after its row is committed; they re-read the store only when woken.
//!
//! Tag moves, metadata merges and garbage collection take one lock, so that a collection never
//! deletes a version that a tag has just been pointed at, and two merges do not lose a key.
//!
//! Versions up to 32 MiB are kept whole in memory after their first read (256 MiB at most in
//! all): fifty actors reading `latest` then cost one storage read, not fifty.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use drover_api::rest::{ParamGcResponse, ParamName, ParamTag, ParamVersion};
use drover_core::SplitMix64;
use drover_core::param_query::ParamQuery;
use drover_storage::{Storage, StorageError};
use drover_store::{ParamVersionRow, Store, StoreError};
use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::config::MasterConfig;
use crate::error::{Error, Result};

/// Longest name or tag.
pub const MAX_NAME_LEN: usize = 128;
/// Largest metadata document, as JSON text.
pub const MAX_METADATA_BYTES: usize = 64 * 1024;
/// Longest wait a reader may ask for; it asks again after.
pub const MAX_WAIT_MS: u64 = 60_000;

/// Which version a reader wants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selector {
    Version(i64),
    Latest,
    Tag(String),
}

impl Selector {
    /// `latest`, `tag:NAME` or a version number.
    pub fn parse(raw: &str) -> Result<Selector> {
        if raw == "latest" {
            return Ok(Selector::Latest);
        }
        if let Some(tag) = raw.strip_prefix("tag:") {
            check_name("tag", tag)?;
            return Ok(Selector::Tag(tag.to_string()));
        }
        parse_version(raw)
            .map_err(|_| Error::bad_field("version", format!("`{}` is not a version number, `latest` or `tag:NAME`", shown(raw))))
            .map(Selector::Version)
    }

    fn describe(&self, name: &str) -> String {
        match self {
            Selector::Version(v) => format!("version {v} of parameter `{name}`"),
            Selector::Latest => format!("a version of parameter `{name}`"),
            Selector::Tag(t) => format!("tag `{t}` of parameter `{name}`"),
        }
    }
}

/// A value from a request, made safe to quote in a message.
fn shown(raw: &str) -> String {
    let mut s: String = raw.chars().take(MAX_NAME_LEN + 8).collect::<String>().escape_debug().to_string();
    if raw.chars().count() > MAX_NAME_LEN + 8 {
        s.push_str("...");
    }
    s
}

/// Names and tags: 1 to 128 ASCII letters, digits, `_`, `-` or `.`, not starting with `.`.
/// A name becomes a storage key component, so nothing that could climb out of it passes.
pub fn check_name(field: &str, raw: &str) -> Result<()> {
    let ok = !raw.is_empty()
        && raw.len() <= MAX_NAME_LEN
        && !raw.starts_with('.')
        && raw.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !ok {
        let what = if raw.is_empty() { "is empty".to_string() } else { format!("`{}` is not allowed", shown(raw)) };
        return Err(Error::bad_field(
            field,
            format!("{field} {what}: use 1 to {MAX_NAME_LEN} letters, digits, `_`, `-` or `.`, not starting with `.`"),
        ));
    }
    Ok(())
}

/// A version number in a path: a non-negative integer.
pub fn parse_version(raw: &str) -> Result<i64> {
    match raw.parse::<i64>() {
        Ok(v) if v >= 0 && raw.bytes().all(|b| b.is_ascii_digit()) => Ok(v),
        _ => Err(Error::bad_field("version", format!("`{}` is not a version number (0 or more)", shown(raw)))),
    }
}

/// Metadata from a request: a JSON object of bounded size.
pub fn parse_metadata(field: &str, raw: &str) -> Result<Map<String, Value>> {
    if raw.len() > MAX_METADATA_BYTES {
        return Err(Error::bad_field(field, format!("metadata is {} bytes; at most {MAX_METADATA_BYTES}", raw.len())));
    }
    match serde_json::from_str::<Value>(raw) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => {
            let kind = match other {
                Value::Array(_) => "an array",
                Value::String(_) => "a string",
                Value::Number(_) => "a number",
                Value::Bool(_) => "a boolean",
                _ => "null",
            };
            Err(Error::bad_field(field, format!("metadata must be a JSON object, not {kind}")))
        }
        Err(e) => Err(Error::bad_field(field, format!("metadata is not valid JSON: {e}"))),
    }
}

/// After refusing a push, at most this much of the rest of its body is read and dropped, for
/// at most [`DRAIN_TIME`], so that a client still sending (most do not wait for an early
/// answer) reads the refusal instead of a broken pipe. Bigger bodies get the broken pipe.
pub const DRAIN_BYTES: u64 = 64 << 20;
pub const DRAIN_TIME: Duration = Duration::from_secs(10);

/// Reads and drops what is left of a refused push's body, within the bounds above.
pub async fn drain<S, E>(body: &mut S)
where
    S: Stream<Item = std::result::Result<Bytes, E>> + Unpin,
{
    let mut left = DRAIN_BYTES;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while let Some(Ok(chunk)) = body.next().await {
            left = left.saturating_sub(chunk.len() as u64);
            if left == 0 {
                break;
            }
        }
    })
    .await;
}

/// Why a push's body stopped before the end; carried through `StorageError::Aborted`.
#[derive(Debug)]
enum BodyStop {
    TooLarge(u64),
    Read(String),
}

impl std::fmt::Display for BodyStop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyStop::TooLarge(limit) => write!(f, "the body is larger than {limit} bytes"),
            BodyStop::Read(e) => write!(f, "reading the body: {e}"),
        }
    }
}

impl std::error::Error for BodyStop {}

/// What a push carries besides its bytes.
#[derive(Debug, Default)]
pub struct PushOptions {
    pub tags: Vec<String>,
    pub metadata: Map<String, Value>,
    /// The SHA-256 the client computed; the push is refused when the bytes do not match it.
    pub sha256: Option<String>,
    /// The body's declared length, to refuse an oversized push before reading it.
    pub content_length: Option<u64>,
}

/// A version's bytes, opened for streaming.
pub struct Download {
    pub row: ParamVersionRow,
    pub body: BoxStream<'static, std::result::Result<Bytes, StorageError>>,
}

pub struct Params {
    store: Arc<dyn Store>,
    storage: Storage,
    max_bytes: u64,
    /// Per name with readers waiting: bumped after a push or a tag move is committed.
    waiters: std::sync::Mutex<HashMap<String, watch::Sender<u64>>>,
    /// Serialises tag moves, metadata merges and garbage collection.
    admin: tokio::sync::Mutex<()>,
    shutdown: CancellationToken,
    /// The bytes of recently read small versions.
    hot: std::sync::Mutex<HotBlobs>,
    /// Versions up to this size are kept in `hot`.
    hot_item_bytes: std::sync::atomic::AtomicU64,
}

/// Versions up to this size are served from memory after their first read; bigger ones are
/// streamed from storage every time.
pub const HOT_ITEM_BYTES: u64 = 32 << 20;
/// Memory the hot versions may take together, and how many there may be.
const HOT_TOTAL_BYTES: u64 = 256 << 20;
const HOT_ENTRIES: usize = 64;

/// Whole blobs of recently read versions, least recently used first. Many readers of `latest`
/// then cost one storage read per version (one S3 GET rather than one per reader) and no file
/// IO after it. Keyed by storage key, which names one immutable push: an entry can never hold
/// other bytes than its row's.
#[derive(Default)]
struct HotBlobs {
    entries: std::collections::VecDeque<(String, u64, Arc<tokio::sync::OnceCell<Bytes>>)>,
    total: u64,
}

impl HotBlobs {
    /// The entry of `key` (made empty if new), now the most recently used.
    fn cell(&mut self, key: &str, size: u64) -> Arc<tokio::sync::OnceCell<Bytes>> {
        if let Some(i) = self.entries.iter().position(|(k, _, _)| k == key) {
            let entry = self.entries.remove(i).expect("found");
            let cell = entry.2.clone();
            self.entries.push_back(entry);
            return cell;
        }
        let cell = Arc::new(tokio::sync::OnceCell::new());
        self.entries.push_back((key.to_string(), size, cell.clone()));
        self.total += size;
        // Readers still holding an evicted entry keep their bytes until they are done.
        while self.total > HOT_TOTAL_BYTES || self.entries.len() > HOT_ENTRIES {
            let Some((_, size, _)) = self.entries.pop_front() else { break };
            self.total -= size;
        }
        cell
    }

    fn forget(&mut self, key: &str) {
        if let Some(i) = self.entries.iter().position(|(k, _, _)| k == key) {
            let (_, size, _) = self.entries.remove(i).expect("found");
            self.total -= size;
        }
    }
}

fn storage_error(e: StorageError) -> Error {
    match e {
        StorageError::NotFound(what) => Error::not_found(format!("{what} is not in the parameter storage")),
        other => {
            tracing::error!("parameter storage: {other}");
            Error::internal(format!("parameter storage: {other}"))
        }
    }
}

impl Params {
    pub fn open(config: &MasterConfig, store: Arc<dyn Store>, shutdown: CancellationToken) -> Result<Params> {
        let storage = Storage::open(&config.param_storage)
            .map_err(|e| Error::internal(format!("cannot open the parameter storage {}: {e}", config.param_storage.describe())))?;
        Ok(Params {
            store,
            storage,
            max_bytes: config.max_param_bytes,
            waiters: Default::default(),
            admin: tokio::sync::Mutex::new(()),
            shutdown,
            hot: Default::default(),
            hot_item_bytes: HOT_ITEM_BYTES.into(),
        })
    }

    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Versions up to `bytes` are served from memory after their first read (default
    /// [`HOT_ITEM_BYTES`]; 0 streams every read from storage).
    pub fn set_hot_item_bytes(&self, bytes: u64) {
        self.hot_item_bytes.store(bytes.min(HOT_TOTAL_BYTES), std::sync::atomic::Ordering::Relaxed);
    }

    fn notify(&self, name: &str) {
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = waiters.get(name) {
            if tx.receiver_count() == 0 {
                waiters.remove(name);
            } else {
                tx.send_modify(|n| *n += 1);
            }
        }
    }

    fn subscribe(&self, name: &str) -> watch::Receiver<u64> {
        let mut waiters = self.waiters.lock().unwrap_or_else(|e| e.into_inner());
        waiters.entry(name.to_string()).or_insert_with(|| watch::channel(0).0).subscribe()
    }

    /// Stores `body` as version `version` of `name`. Refused (and nothing kept) when the
    /// version exists (409), the body is too large (413) or does not match `sha256` (400); the
    /// body may then be left partly read.
    pub async fn push<S, E>(&self, name: &str, version: i64, options: PushOptions, body: &mut S) -> Result<ParamVersion>
    where
        S: Stream<Item = std::result::Result<Bytes, E>> + Send + Unpin,
        E: std::fmt::Display,
    {
        let limit = self.max_bytes;
        if let Some(declared) = options.content_length
            && declared > limit
        {
            return Err(Error::too_large(format!("the body is {declared} bytes; parameters are at most {limit} bytes")));
        }
        // Cheap early answer; the insert below is what really decides.
        match self.store.get_param_version(name, version).await {
            Ok(_) => return Err(Error::conflict(format!("version {version} of parameter `{name}` already exists"))),
            Err(StoreError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let key = format!("{name}/{version}-{}", uuid::Uuid::new_v4().simple());
        let mut hasher = Sha256::new();
        let mut received = 0u64;
        let counted = body.map(|chunk| {
            let chunk = chunk.map_err(|e| BodyStop::Read(e.to_string()))?;
            received += chunk.len() as u64;
            if received > limit {
                return Err(BodyStop::TooLarge(limit));
            }
            hasher.update(&chunk);
            Ok(chunk)
        });
        let size = match self.storage.put_stream(&key, counted).await {
            Ok(size) => size,
            Err(StorageError::Aborted { source, .. }) => {
                return Err(match source.downcast_ref::<BodyStop>() {
                    Some(BodyStop::TooLarge(limit)) => {
                        Error::too_large(format!("the body is larger than {limit} bytes; nothing was stored"))
                    }
                    _ => Error::bad_request(format!("the upload stopped: {source}; nothing was stored")),
                });
            }
            Err(e) => return Err(storage_error(e)),
        };
        let sha256 = format!("{:x}", hasher.finalize());
        if let Some(expected) = &options.sha256
            && !expected.eq_ignore_ascii_case(&sha256)
        {
            self.discard(&key).await;
            return Err(Error::bad_field("sha256", format!("the body's SHA-256 is {sha256}, not {expected}; nothing was stored")));
        }
        let row = ParamVersionRow {
            name: name.to_string(),
            version,
            created_at: now_ms(),
            size: size as i64,
            sha256,
            metadata_json: Value::Object(options.metadata).to_string(),
            storage_key: key.clone(),
        };
        let mut tags = options.tags;
        tags.sort();
        tags.dedup();
        if let Err(e) = self.store.add_param_version(row.clone(), &tags).await {
            self.discard(&key).await;
            return Err(e.into());
        }
        self.notify(name);
        Ok(view(row, tags))
    }

    /// Deletes a blob no row will point at; failing that, it is only an orphan, so log it.
    async fn discard(&self, key: &str) {
        if let Err(e) = self.storage.delete(key).await {
            tracing::warn!("parameter storage: cannot delete the orphan {key}: {e}");
        }
    }

    async fn lookup(&self, name: &str, selector: &Selector) -> std::result::Result<ParamVersionRow, StoreError> {
        match selector {
            Selector::Version(v) => self.store.get_param_version(name, *v).await,
            Selector::Latest => self.store.latest_param_version(name).await,
            Selector::Tag(t) => self.store.param_version_by_tag(name, t).await,
        }
    }

    /// The row `selector` names now, or once it exists (and, with `newer_than`, is above that
    /// version) if that happens within `wait`.
    pub async fn resolve(&self, name: &str, selector: &Selector, newer_than: Option<i64>, wait: Duration) -> Result<ParamVersionRow> {
        let deadline = tokio::time::Instant::now() + wait;
        // Subscribed before the first look, so a push between the look and the wait still wakes us.
        let mut woken = (!wait.is_zero()).then(|| self.subscribe(name));
        loop {
            match self.lookup(name, selector).await {
                Ok(row) if newer_than.is_none_or(|n| row.version > n) => return Ok(row),
                Ok(_) | Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
            let Some(rx) = woken.as_mut() else { break };
            tokio::select! {
                changed = tokio::time::timeout_at(deadline, rx.changed()) => {
                    if !matches!(changed, Ok(Ok(()))) {
                        break;
                    }
                }
                _ = self.shutdown.cancelled() => break,
            }
        }
        let what = selector.describe(name);
        Err(Error::not_found(match newer_than {
            Some(n) => format!("{what} newer than version {n} not found"),
            None => format!("{what} not found"),
        }))
    }

    /// Opens the bytes of `row` for streaming.
    pub async fn download(&self, row: ParamVersionRow) -> Result<Download> {
        if row.size as u64 <= self.hot_item_bytes.load(std::sync::atomic::Ordering::Relaxed) {
            return self.download_hot(row).await;
        }
        let (size, body) = match self.storage.get_stream(&row.storage_key).await {
            Ok(opened) => opened,
            // A collection deleted it after the row was read.
            Err(StorageError::NotFound(_)) => {
                return Err(Error::not_found(format!("version {} of parameter `{}` was deleted", row.version, row.name)));
            }
            Err(e) => return Err(storage_error(e)),
        };
        if size != row.size as u64 {
            // Never serve bytes that are not the version's: a torn read is worse than an error.
            tracing::error!("parameter storage: {} holds {size} bytes, its row says {}", row.storage_key, row.size);
            return Err(Error::internal(format!(
                "version {} of parameter `{}` is stored with {size} bytes, not {}",
                row.version, row.name, row.size
            )));
        }
        Ok(Download { row, body })
    }

    /// A version small enough to keep whole: from memory, loading it from storage once however
    /// many readers ask at the same time.
    async fn download_hot(&self, row: ParamVersionRow) -> Result<Download> {
        let cell = self.hot.lock().unwrap_or_else(|e| e.into_inner()).cell(&row.storage_key, row.size as u64);
        let loaded = cell.get_or_try_init(|| self.storage.get_bytes(&row.storage_key)).await.cloned();
        let bytes = match loaded {
            Ok(bytes) if bytes.len() as u64 == row.size as u64 => bytes,
            Ok(bytes) => {
                self.hot.lock().unwrap_or_else(|e| e.into_inner()).forget(&row.storage_key);
                tracing::error!("parameter storage: {} holds {} bytes, its row says {}", row.storage_key, bytes.len(), row.size);
                return Err(Error::internal(format!(
                    "version {} of parameter `{}` is stored with {} bytes, not {}",
                    row.version,
                    row.name,
                    bytes.len(),
                    row.size
                )));
            }
            Err(e) => {
                self.hot.lock().unwrap_or_else(|e| e.into_inner()).forget(&row.storage_key);
                return Err(match e {
                    StorageError::NotFound(_) => {
                        Error::not_found(format!("version {} of parameter `{}` was deleted", row.version, row.name))
                    }
                    e => storage_error(e),
                });
            }
        };
        Ok(Download { row, body: futures_util::stream::once(async move { Ok(bytes) }).boxed() })
    }

    async fn tags_by_version(&self, name: &str) -> Result<HashMap<i64, Vec<String>>> {
        let mut by_version: HashMap<i64, Vec<String>> = HashMap::new();
        for t in self.store.list_param_tags(name).await? {
            by_version.entry(t.version).or_default().push(t.tag);
        }
        Ok(by_version)
    }

    /// The API view of one row, with its tags.
    pub async fn describe(&self, row: ParamVersionRow) -> Result<ParamVersion> {
        let mut tags = self.tags_by_version(&row.name).await?;
        let mine = tags.remove(&row.version).unwrap_or_default();
        Ok(view(row, mine))
    }

    pub async fn names(&self) -> Result<Vec<ParamName>> {
        Ok(self
            .store
            .list_param_names()
            .await?
            .into_iter()
            .map(|r| ParamName { name: r.name, versions: r.versions, latest_version: r.latest_version, updated_at: r.updated_at })
            .collect())
    }

    pub async fn tags(&self, name: &str) -> Result<Vec<ParamTag>> {
        Ok(self
            .store
            .list_param_tags(name)
            .await?
            .into_iter()
            .map(|t| ParamTag { name: t.name, tag: t.tag, version: t.version, updated_at: t.updated_at })
            .collect())
    }

    /// Versions of `name` that pass `query`, in its order. A version is seen by the query as
    /// its metadata with `version`, `created_at` and `size` set from the row (those names
    /// mean the row's fields even when the metadata has keys of the same names).
    pub async fn query(&self, name: &str, query: &ParamQuery, seed: u64) -> Result<Vec<ParamVersion>> {
        let rows = self.store.list_param_versions(name).await?;
        let mut tags = self.tags_by_version(name).await?;
        let docs: Vec<(Value, &ParamVersionRow)> = rows
            .iter()
            .map(|row| {
                let mut doc = match serde_json::from_str::<Value>(&row.metadata_json) {
                    Ok(Value::Object(map)) => map,
                    _ => Map::new(),
                };
                doc.insert("version".into(), row.version.into());
                doc.insert("created_at".into(), row.created_at.into());
                doc.insert("size".into(), row.size.into());
                (Value::Object(doc), row)
            })
            .collect();
        let mut rng = SplitMix64::new(seed);
        let picked = query.run(&docs, |(doc, _)| doc, &mut rng);
        Ok(picked.into_iter().map(|(_, row)| view((*row).clone(), tags.remove(&row.version).unwrap_or_default())).collect())
    }

    /// Points `tag` at `version` (moving it), and wakes readers waiting on `tag:...`.
    pub async fn set_tag(&self, name: &str, tag: &str, version: i64) -> Result<ParamTag> {
        let _admin = self.admin.lock().await;
        let at = now_ms();
        self.store.set_param_tag(name, tag, version, at).await?;
        self.notify(name);
        Ok(ParamTag { name: name.to_string(), tag: tag.to_string(), version, updated_at: at })
    }

    pub async fn delete_tag(&self, name: &str, tag: &str) -> Result<()> {
        let _admin = self.admin.lock().await;
        Ok(self.store.delete_param_tag(name, tag).await?)
    }

    /// Merges `metadata` into a version's (a `null` removes a key), or replaces it whole.
    pub async fn update_metadata(&self, name: &str, version: i64, metadata: Map<String, Value>, replace: bool) -> Result<ParamVersion> {
        let _admin = self.admin.lock().await;
        let row = self.store.get_param_version(name, version).await?;
        let mut merged = if replace {
            Map::new()
        } else {
            match serde_json::from_str::<Value>(&row.metadata_json) {
                Ok(Value::Object(map)) => map,
                _ => Map::new(),
            }
        };
        for (k, v) in metadata {
            if v.is_null() {
                merged.remove(&k);
            } else {
                merged.insert(k, v);
            }
        }
        let text = Value::Object(merged).to_string();
        if text.len() > MAX_METADATA_BYTES {
            return Err(Error::bad_field("metadata", format!("the merged metadata is {} bytes; at most {MAX_METADATA_BYTES}", text.len())));
        }
        self.store.update_param_metadata(name, version, &text).await?;
        self.describe(ParamVersionRow { metadata_json: text, ..row }).await
    }

    /// Deletes every untagged version of `name` but the `keep_untagged` highest: their blobs
    /// first (one already gone is fine), then their rows. When a blob cannot be deleted, the
    /// rows of those already deleted go and the error is returned; running it again finishes.
    pub async fn gc(&self, name: &str, keep_untagged: u64) -> Result<ParamGcResponse> {
        let _admin = self.admin.lock().await;
        let rows = self.store.list_param_versions(name).await?;
        let tagged: BTreeSet<i64> = self.store.list_param_tags(name).await?.into_iter().map(|t| t.version).collect();
        let mut untagged: Vec<&ParamVersionRow> = rows.iter().filter(|r| !tagged.contains(&r.version)).collect();
        untagged.sort_by_key(|r| std::cmp::Reverse(r.version));
        let doomed: Vec<&ParamVersionRow> = untagged.into_iter().skip(keep_untagged.min(usize::MAX as u64) as usize).collect();
        let mut deleted = Vec::with_capacity(doomed.len());
        for row in &doomed {
            self.hot.lock().unwrap_or_else(|e| e.into_inner()).forget(&row.storage_key);
            if let Err(e) = self.storage.delete(&row.storage_key).await {
                self.store.delete_param_versions(name, &deleted).await?;
                return Err(storage_error(e));
            }
            deleted.push(row.version);
        }
        self.store.delete_param_versions(name, &deleted).await?;
        deleted.sort_unstable();
        let kept = rows.iter().map(|r| r.version).filter(|v| deleted.binary_search(v).is_err()).collect();
        Ok(ParamGcResponse { deleted, kept })
    }
}

fn view(row: ParamVersionRow, tags: Vec<String>) -> ParamVersion {
    ParamVersion {
        name: row.name,
        version: row.version,
        created_at: row.created_at,
        size: row.size,
        sha256: row.sha256,
        metadata: serde_json::from_str(&row.metadata_json).unwrap_or_else(|_| Value::Object(Map::new())),
        tags,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_leave_their_directory_are_refused() {
        for bad in ["", "../x", "..", ".hidden", "a/b", "a\\b", "a\0b", "a\nb", "tab\t", "é", "a b", &"x".repeat(129)] {
            let e = check_name("name", bad).unwrap_err();
            assert_eq!(e.kind, crate::error::ErrorKind::BadRequest, "{bad:?}");
            assert_eq!(e.body.location.unwrap().field.as_deref(), Some("name"));
            assert!(!e.body.message.contains('\n') && !e.body.message.contains('\0'), "{}", e.body.message);
        }
        for good in ["policy", "league.main-v2", "a_b", "0", &"x".repeat(128)] {
            check_name("name", good).unwrap();
        }
    }

    #[test]
    fn selectors_and_versions_parse() {
        assert_eq!(Selector::parse("latest").unwrap(), Selector::Latest);
        assert_eq!(Selector::parse("tag:best").unwrap(), Selector::Tag("best".into()));
        assert_eq!(Selector::parse("42").unwrap(), Selector::Version(42));
        for bad in ["-1", "+3", "1.5", "tag:", "tag:../x", "newest", ""] {
            assert!(Selector::parse(bad).is_err(), "{bad}");
        }
        assert!(parse_version("9223372036854775808").is_err());
    }

    #[test]
    fn hot_blobs_keep_the_recently_used_within_bounds() {
        let mut hot = HotBlobs::default();
        let a = hot.cell("a", 100 << 20);
        hot.cell("b", 100 << 20);
        assert!(Arc::ptr_eq(&a, &hot.cell("a", 100 << 20)), "the same key shares one entry");
        // A third 100 MiB entry evicts the least recently used one, `b`.
        hot.cell("c", 100 << 20);
        let keys: Vec<&str> = hot.entries.iter().map(|(k, _, _)| k.as_str()).collect();
        assert_eq!((keys, hot.total), (vec!["a", "c"], 200 << 20));
        hot.forget("a");
        hot.forget("a");
        assert_eq!(hot.total, 100 << 20);
        for i in 0..100 {
            hot.cell(&format!("small-{i}"), 10);
        }
        assert_eq!(hot.entries.len(), HOT_ENTRIES);
        assert_eq!(hot.total, hot.entries.iter().map(|e| e.1).sum::<u64>());
    }

    #[test]
    fn metadata_must_be_a_small_object() {
        assert!(parse_metadata("metadata", "{\"a\": 1}").is_ok());
        assert!(parse_metadata("metadata", "[1]").unwrap_err().body.message.contains("object"));
        assert!(parse_metadata("metadata", "{").unwrap_err().body.message.contains("not valid JSON"));
        let big = format!("{{\"a\": \"{}\"}}", "x".repeat(MAX_METADATA_BYTES));
        assert!(parse_metadata("metadata", &big).is_err());
    }
}
