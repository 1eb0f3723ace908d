//! A client for the master's parameter database: named, versioned blobs (policy weights, say)
//! with tags and JSON metadata. A learner pushes versions; actors get the latest (or a tagged
//! one), waiting for a newer one when they have caught up; a league picks opponents with a
//! query. Blocking, like the rest of the SDK.
//!
//! Every download is checked against the SHA-256 the master recorded at push time, and every
//! push sends its SHA-256 for the master to check, so bytes are never half of one version and
//! half of another without an error saying so.
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use drover_sdk::params::{GetOptions, ParamClient, PushOptions, Query, Which};
//!
//! fn main() -> Result<(), drover_sdk::SdkError> {
//!     let params = ParamClient::connect("http://127.0.0.1:8080")?;
//!     // The learner.
//!     let meta = serde_json::json!({"win_rate": 0.83, "games": 40});
//!     params.push_bytes("policy", 7, b"weights...".to_vec(), &PushOptions::new().tag("candidate").metadata(meta))?;
//!     // An actor: the newest version above the one it has, waiting up to 30 s for it.
//!     if let Some(got) = params.get("policy", &Which::Latest, &GetOptions::wait(Duration::from_secs(30)).newer_than(6))? {
//!         println!("version {} has {} bytes", got.version, got.bytes.len());
//!     }
//!     // The league: one of the five best opponents that have played enough.
//!     let opponent = params.sample("policy", &Query::new().filter("games >= 10").sort("-win_rate").limit(5))?;
//!     println!("{:?}", opponent.map(|v| v.version));
//!     Ok(())
//! }
//! ```

use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use drover_api::rest::{ParamGcRequest, SetParamTagRequest, UpdateParamMetadataRequest, param_headers};
pub use drover_api::rest::{ParamGcResponse, ParamName, ParamTag, ParamVersion};
use reqwest::StatusCode;
use reqwest::blocking::{Client, RequestBuilder, Response};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::SdkError;
use crate::client::error_message;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// For calls that carry only JSON.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// What a waiting read may take beyond the wait asked for before it counts as lost.
const WAIT_MARGIN: Duration = Duration::from_secs(30);
/// The longest wait the master grants; asking for more waits this long.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// Which version to get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Which {
    /// The highest version number.
    Latest,
    Version(i64),
    /// The version a tag points at now.
    Tag(String),
}

impl Which {
    fn segment(&self) -> String {
        match self {
            Which::Latest => "latest".into(),
            Which::Version(v) => v.to_string(),
            Which::Tag(t) => format!("tag:{}", encode_segment(t)),
        }
    }
}

/// Tags and metadata of a push.
#[derive(Debug, Clone, Default)]
pub struct PushOptions {
    tags: Vec<String>,
    metadata: Map<String, Value>,
}

impl PushOptions {
    pub fn new() -> PushOptions {
        PushOptions::default()
    }

    /// Points `tag` at the new version (moving it from wherever it was).
    pub fn tag(mut self, tag: impl Into<String>) -> PushOptions {
        self.tags.push(tag.into());
        self
    }

    /// The version's metadata: a JSON object (anything else is ignored).
    pub fn metadata(mut self, metadata: Value) -> PushOptions {
        if let Value::Object(map) = metadata {
            self.metadata = map;
        }
        self
    }
}

/// How long a read may wait for its version to appear.
#[derive(Debug, Clone, Default)]
pub struct GetOptions {
    wait: Option<Duration>,
    newer_than: Option<i64>,
}

impl GetOptions {
    /// Answer at once.
    pub fn now() -> GetOptions {
        GetOptions::default()
    }

    /// Wait up to `wait` (at most [`MAX_WAIT`]) for the version to exist.
    pub fn wait(wait: Duration) -> GetOptions {
        GetOptions { wait: Some(wait.min(MAX_WAIT)), newer_than: None }
    }

    /// With [`Which::Latest`] or a tag: only a version above `version` will do.
    pub fn newer_than(mut self, version: i64) -> GetOptions {
        self.newer_than = Some(version);
        self
    }

    fn query(&self) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        if let Some(w) = self.wait {
            q.push(("wait_ms", w.as_millis().to_string()));
        }
        if let Some(n) = self.newer_than {
            q.push(("newer_than", n.to_string()));
        }
        q
    }
}

/// A query over the versions of one parameter: filter, then sort, then limit, then (for
/// [`ParamClient::sample`]) one drawn at random. See `drover_core::param_query` for the
/// language: `win_rate > 0.8 and not league == "main"`, sorts like `-win_rate,version`.
#[derive(Debug, Clone, Default)]
pub struct Query {
    filter: Option<String>,
    sort: Option<String>,
    limit: Option<usize>,
    seed: Option<u64>,
}

impl Query {
    pub fn new() -> Query {
        Query::default()
    }

    pub fn filter(mut self, filter: impl Into<String>) -> Query {
        self.filter = Some(filter.into());
        self
    }

    pub fn sort(mut self, sort: impl Into<String>) -> Query {
        self.sort = Some(sort.into());
        self
    }

    pub fn limit(mut self, limit: usize) -> Query {
        self.limit = Some(limit);
        self
    }

    /// Makes [`ParamClient::sample`] draw the same version every time for the same matches.
    pub fn seed(mut self, seed: u64) -> Query {
        self.seed = Some(seed);
        self
    }

    fn pairs(&self, sample: bool) -> Vec<(&'static str, String)> {
        let mut q = Vec::new();
        if let Some(f) = &self.filter {
            q.push(("filter", f.clone()));
        }
        if let Some(s) = &self.sort {
            q.push(("sort", s.clone()));
        }
        if let Some(l) = self.limit {
            q.push(("limit", l.to_string()));
        }
        if sample {
            q.push(("sample", "true".into()));
            if let Some(s) = self.seed {
                q.push(("seed", s.to_string()));
            }
        }
        q
    }
}

/// A version's bytes, as downloaded and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Fetched {
    pub version: i64,
    pub sha256: String,
    pub created_at: i64,
    pub bytes: Vec<u8>,
}

/// What a download to a file got.
#[derive(Debug, Clone, PartialEq)]
pub struct FetchedFile {
    pub version: i64,
    pub sha256: String,
    pub created_at: i64,
    pub size: u64,
}

/// The parameter database of one master.
#[derive(Clone)]
pub struct ParamClient {
    http: Client,
    /// `http://host:port`, without a trailing slash.
    base: String,
    transfer_timeout: Option<Duration>,
}

/// Percent-encodes a path segment: names are checked by the master, which must see exactly
/// what the caller wrote, `/` included, in one segment.
fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'~' | b'.') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The one check made here rather than by the master: a segment of `.` or `..` (however
/// encoded) is removed by URL normalisation before it is sent, so the master would never see it.
fn check_segment(field: &'static str, value: &str) -> Result<(), SdkError> {
    if value.is_empty() || value == "." || value == ".." {
        return Err(SdkError::InvalidArgument { field, message: format!("{field} `{value}` is not a valid name") });
    }
    Ok(())
}

fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// A writer that hashes what goes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl ParamClient {
    /// A client for the master at `master_url`; nothing is sent yet.
    pub fn connect(master_url: &str) -> Result<ParamClient, SdkError> {
        let base = master_url.trim_end_matches('/').to_string();
        let http = Client::builder()
            // Transfers of big versions take as long as they take; JSON calls set their own.
            .timeout(None)
            .connect_timeout(CONNECT_TIMEOUT)
            // The master is reached directly; a proxy set for downloads would capture these calls.
            .no_proxy()
            .build()
            .map_err(|source| SdkError::Transport { what: "creating the HTTP client", url: base.clone(), source })?;
        Ok(ParamClient { http, base, transfer_timeout: None })
    }

    /// Bounds every push and download (none by default), e.g. to notice a master that stalls.
    pub fn with_transfer_timeout(mut self, timeout: Option<Duration>) -> ParamClient {
        self.transfer_timeout = timeout;
        self
    }

    fn url(&self, name: &str, tail: &str) -> Result<String, SdkError> {
        check_segment("name", name)?;
        Ok(format!("{}/api/v1/params/{}{tail}", self.base, encode_segment(name)))
    }

    fn transfer(&self, request: RequestBuilder) -> RequestBuilder {
        match self.transfer_timeout {
            Some(t) => request.timeout(t),
            None => request,
        }
    }

    /// Pushes `bytes` as `version` of `name`. Versions are immutable: an existing one is refused
    /// with HTTP 409, one over the master's size limit with 413.
    pub fn push_bytes(&self, name: &str, version: i64, bytes: Vec<u8>, options: &PushOptions) -> Result<ParamVersion, SdkError> {
        let url = self.url(name, &format!("/versions/{version}"))?;
        let sha = sha256_hex(&bytes);
        let request = self.http.put(&url).query(&push_query(options, &sha)).body(bytes);
        self.call("pushing a parameter", &url, self.transfer(request))
    }

    /// Pushes the file at `path` as `version` of `name`, streaming it (it is read once to hash
    /// it and once to send it, never held whole in memory).
    pub fn push_file(&self, name: &str, version: i64, path: &Path, options: &PushOptions) -> Result<ParamVersion, SdkError> {
        let url = self.url(name, &format!("/versions/{version}"))?;
        let mut hashing = Hashing { inner: std::io::sink(), hasher: Sha256::new(), written: 0 };
        let mut file = File::open(path).map_err(SdkError::io("open", path))?;
        std::io::copy(&mut file, &mut hashing).map_err(SdkError::io("read", path))?;
        let sha = format!("{:x}", hashing.hasher.finalize());
        let file = File::open(path).map_err(SdkError::io("open", path))?;
        let len = file.metadata().map_err(SdkError::io("inspect", path))?.len();
        if len != hashing.written {
            return Err(SdkError::Io {
                action: "read",
                path: path.into(),
                source: std::io::Error::other("the file changed while it was being pushed"),
            });
        }
        let body = reqwest::blocking::Body::sized(file, len);
        let request = self.http.put(&url).query(&push_query(options, &sha)).body(body);
        self.call("pushing a parameter", &url, self.transfer(request))
    }

    /// The bytes of the version `which` names, or `None` when there is none (after waiting, with
    /// [`GetOptions::wait`]). The bytes are checked against the version's SHA-256.
    pub fn get(&self, name: &str, which: &Which, options: &GetOptions) -> Result<Option<Fetched>, SdkError> {
        let what = "getting a parameter";
        let (url, response) = match self.download(name, which, options)? {
            Some(r) => r,
            None => return Ok(None),
        };
        let (version, sha256, created_at) = version_headers(&response, what)?;
        let bytes = response.bytes().map_err(|source| SdkError::Transport { what, url: url.clone(), source })?.to_vec();
        let got = sha256_hex(&bytes);
        if got != sha256 {
            return Err(SdkError::BadResponse { what, message: format!("version {version}: the bytes hash to {got}, not {sha256}") });
        }
        Ok(Some(Fetched { version, sha256, created_at, bytes }))
    }

    /// Like [`ParamClient::get`], streaming the bytes into the file at `to` (through a temporary
    /// name beside it, renamed once complete and checked).
    pub fn get_to_file(&self, name: &str, which: &Which, options: &GetOptions, to: &Path) -> Result<Option<FetchedFile>, SdkError> {
        let what = "getting a parameter";
        let (url, mut response) = match self.download(name, which, options)? {
            Some(r) => r,
            None => return Ok(None),
        };
        let (version, sha256, created_at) = version_headers(&response, what)?;
        let partial = to.with_file_name(format!(
            ".{}.partial-{}",
            to.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
            uuid::Uuid::new_v4().simple()
        ));
        let result = (|| {
            let file = File::create(&partial).map_err(SdkError::io("create", &partial))?;
            let mut hashing = Hashing { inner: std::io::BufWriter::with_capacity(1 << 20, file), hasher: Sha256::new(), written: 0 };
            response.copy_to(&mut hashing).map_err(|source| SdkError::Transport { what, url: url.clone(), source })?;
            hashing.flush().map_err(SdkError::io("write", &partial))?;
            let got = format!("{:x}", hashing.hasher.finalize());
            if got != sha256 {
                return Err(SdkError::BadResponse { what, message: format!("version {version}: the bytes hash to {got}, not {sha256}") });
            }
            std::fs::rename(&partial, to).map_err(SdkError::io("rename", to))?;
            Ok(FetchedFile { version, sha256: sha256.clone(), created_at, size: hashing.written })
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        result.map(Some)
    }

    fn download(&self, name: &str, which: &Which, options: &GetOptions) -> Result<Option<(String, Response)>, SdkError> {
        let what = "getting a parameter";
        check_which(which)?;
        let url = self.url(name, &format!("/versions/{}", which.segment()))?;
        let mut request = self.transfer(self.http.get(&url).query(&options.query()));
        if self.transfer_timeout.is_none() {
            // Still bound the wait for the answer to start: the wait asked for, plus a margin.
            request = request.timeout(options.wait.unwrap_or_default() + WAIT_MARGIN + REQUEST_TIMEOUT);
        }
        let response = request.send().map_err(|source| SdkError::Transport { what, url: url.clone(), source })?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !status.is_success() {
            let body = response.bytes().map_err(|source| SdkError::Transport { what, url: url.clone(), source })?;
            return Err(SdkError::Api { what, status: status.as_u16(), message: error_message(&body) });
        }
        Ok(Some((url, response)))
    }

    /// The description of the version `which` names (size, SHA-256, metadata, tags), or `None`.
    pub fn info(&self, name: &str, which: &Which, options: &GetOptions) -> Result<Option<ParamVersion>, SdkError> {
        check_which(which)?;
        let url = self.url(name, &format!("/versions/{}/info", which.segment()))?;
        let request = self.http.get(&url).query(&options.query()).timeout(options.wait.unwrap_or_default() + WAIT_MARGIN + REQUEST_TIMEOUT);
        match self.call::<ParamVersion>("describing a parameter", &url, request) {
            Ok(v) => Ok(Some(v)),
            Err(SdkError::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every parameter name with a summary of its versions.
    pub fn list_names(&self) -> Result<Vec<ParamName>, SdkError> {
        let url = format!("{}/api/v1/params", self.base);
        self.call("listing parameters", &url, self.http.get(&url).timeout(REQUEST_TIMEOUT))
    }

    /// Every version of `name`, lowest first.
    pub fn list_versions(&self, name: &str) -> Result<Vec<ParamVersion>, SdkError> {
        self.query(name, &Query::new())
    }

    /// The versions of `name` that `query` picks, in its order.
    pub fn query(&self, name: &str, query: &Query) -> Result<Vec<ParamVersion>, SdkError> {
        let url = self.url(name, "/versions")?;
        self.call("querying parameters", &url, self.http.get(&url).query(&query.pairs(false)).timeout(REQUEST_TIMEOUT))
    }

    /// One of the versions `query` picks, drawn uniformly (after its limit), or `None`.
    pub fn sample(&self, name: &str, query: &Query) -> Result<Option<ParamVersion>, SdkError> {
        let url = self.url(name, "/versions")?;
        let mut picked: Vec<ParamVersion> =
            self.call("sampling parameters", &url, self.http.get(&url).query(&query.pairs(true)).timeout(REQUEST_TIMEOUT))?;
        Ok(picked.pop())
    }

    pub fn list_tags(&self, name: &str) -> Result<Vec<ParamTag>, SdkError> {
        let url = self.url(name, "/tags")?;
        self.call("listing parameter tags", &url, self.http.get(&url).timeout(REQUEST_TIMEOUT))
    }

    /// Points `tag` at `version`, moving it if it pointed elsewhere.
    pub fn tag(&self, name: &str, tag: &str, version: i64) -> Result<ParamTag, SdkError> {
        check_segment("tag", tag)?;
        let url = self.url(name, &format!("/tags/{}", encode_segment(tag)))?;
        let request = self.http.put(&url).json(&SetParamTagRequest { version }).timeout(REQUEST_TIMEOUT);
        self.call("tagging a parameter", &url, request)
    }

    /// Removes a tag (the version stays).
    pub fn untag(&self, name: &str, tag: &str) -> Result<(), SdkError> {
        check_segment("tag", tag)?;
        let what = "untagging a parameter";
        let url = self.url(name, &format!("/tags/{}", encode_segment(tag)))?;
        let response = self.http.delete(&url).timeout(REQUEST_TIMEOUT).send().map_err(|source| SdkError::Transport {
            what,
            url: url.clone(),
            source,
        })?;
        let status = response.status();
        if !status.is_success() {
            let body = response.bytes().map_err(|source| SdkError::Transport { what, url: url.clone(), source })?;
            return Err(SdkError::Api { what, status: status.as_u16(), message: error_message(&body) });
        }
        Ok(())
    }

    /// Merges `metadata` (a JSON object; a `null` value removes that key) into a version's
    /// metadata, or replaces it whole with `replace`.
    pub fn update_metadata(&self, name: &str, version: i64, metadata: Value, replace: bool) -> Result<ParamVersion, SdkError> {
        let Value::Object(metadata) = metadata else {
            return Err(SdkError::InvalidArgument { field: "metadata", message: "metadata must be a JSON object".into() });
        };
        let url = self.url(name, &format!("/versions/{version}"))?;
        let request = self.http.patch(&url).json(&UpdateParamMetadataRequest { metadata, replace }).timeout(REQUEST_TIMEOUT);
        self.call("updating parameter metadata", &url, request)
    }

    /// Deletes every untagged version of `name` but the `keep_untagged` highest.
    pub fn gc(&self, name: &str, keep_untagged: u64) -> Result<ParamGcResponse, SdkError> {
        let url = self.url(name, "/gc")?;
        let request = self.http.post(&url).json(&ParamGcRequest { keep_untagged }).timeout(REQUEST_TIMEOUT);
        self.call("collecting old parameter versions", &url, request)
    }

    fn call<T: DeserializeOwned>(&self, what: &'static str, url: &str, request: RequestBuilder) -> Result<T, SdkError> {
        crate::client::call_json(what, url, request)
    }
}

fn check_which(which: &Which) -> Result<(), SdkError> {
    match which {
        Which::Tag(t) => check_segment("tag", t),
        _ => Ok(()),
    }
}

fn push_query(options: &PushOptions, sha: &str) -> Vec<(&'static str, String)> {
    let mut q = vec![("sha256", sha.to_string())];
    if !options.tags.is_empty() {
        q.push(("tags", options.tags.join(",")));
    }
    if !options.metadata.is_empty() {
        q.push(("metadata", Value::Object(options.metadata.clone()).to_string()));
    }
    q
}

fn version_headers(response: &Response, what: &'static str) -> Result<(i64, String, i64), SdkError> {
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| SdkError::BadResponse { what, message: format!("the answer has no {name} header") })
    };
    let number = |name: &str| {
        header(name)?.parse::<i64>().map_err(|_| SdkError::BadResponse { what, message: format!("the {name} header is not a number") })
    };
    Ok((number(param_headers::VERSION)?, header(param_headers::SHA256)?, number(param_headers::CREATED_AT)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded_whole() {
        assert_eq!(encode_segment("policy.v2-a_b"), "policy.v2-a_b");
        assert_eq!(encode_segment("../x"), "..%2Fx");
        assert_eq!(encode_segment("a b\n"), "a%20b%0A");
        assert_eq!(Which::Tag("best/x".into()).segment(), "tag:best%2Fx");
        assert!(check_segment("name", "..").is_err() && check_segment("name", "").is_err());
        check_segment("name", "...").unwrap();
    }

    #[test]
    fn queries_carry_only_what_is_set() {
        let q = Query::new().filter("a > 1").sort("-a").limit(3).seed(9);
        assert_eq!(q.pairs(false).len(), 3);
        assert_eq!(q.pairs(true).into_iter().map(|(k, _)| k).collect::<Vec<_>>(), vec!["filter", "sort", "limit", "sample", "seed"]);
        assert!(GetOptions::now().query().is_empty());
        assert_eq!(
            GetOptions::wait(Duration::from_secs(600)).newer_than(4).query(),
            vec![("wait_ms", "60000".into()), ("newer_than", "4".into())]
        );
        let push = push_query(&PushOptions::new().tag("a").tag("b").metadata(serde_json::json!({"x": 1})), "00");
        assert_eq!(push, vec![("sha256", "00".into()), ("tags", "a,b".into()), ("metadata", "{\"x\":1}".into())]);
    }
}
