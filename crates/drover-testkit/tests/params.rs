//! The parameter database end to end: a real master on 127.0.0.1 port 0 (SQLite, parameter
//! storage in a directory, or on S3 when `DROVER_TEST_S3_ENDPOINT` is set), driven over REST and
//! through the SDK's blocking `ParamClient`.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use drover_api::rest::*;
use drover_sdk::SdkError;
use drover_sdk::params::{GetOptions, ParamClient, PushOptions, Query, Which};
use drover_storage::StorageSpec;
use serde_json::{Value, json};

/// Parameters above this are refused in these tests.
const LIMIT: u64 = 4 << 20;

struct Master {
    master: drover_master::RunningMaster,
    http: reqwest::Client,
    /// The parameter storage's directory, when it is one.
    params_dir: Option<std::path::PathBuf>,
    _dir: tempfile::TempDir,
}

impl Master {
    async fn start(storage: Option<StorageSpec>) -> Master {
        let dir = tempfile::tempdir().unwrap();
        let db = format!("sqlite://{}", dir.path().join("drover.db").display());
        let mut config = drover_master::MasterConfig::new(db, dir.path().join("checkpoints"));
        config.max_param_bytes = LIMIT;
        if let Some(spec) = storage {
            config.param_storage = spec;
        }
        let params_dir = match &config.param_storage {
            StorageSpec::Directory { path, .. } => Some(path.clone()),
            _ => None,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let master = drover_master::start(config, listener).await.unwrap();
        Master { master, http: reqwest::Client::builder().no_proxy().build().unwrap(), params_dir, _dir: dir }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.master.url())
    }

    /// A blocking SDK client; make and drop it only off the runtime (see [`blocking`]).
    fn client(url: &str) -> ParamClient {
        ParamClient::connect(url).unwrap()
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, Value) {
        let r = request.send().await.unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn get_json(&self, path: &str) -> (u16, Value) {
        self.send(self.http.get(self.url(path))).await
    }

    /// Exactly these bytes on the wire, for paths an HTTP client would normalise.
    fn raw(&self, request_line: &str) -> (u16, Value) {
        let mut stream = std::net::TcpStream::connect(self.master.addr).unwrap();
        write!(stream, "{request_line} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
        let mut answer = String::new();
        stream.read_to_string(&mut answer).unwrap();
        let status = answer.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
        (status, serde_json::from_str(body).unwrap_or(Value::String(body.into())))
    }

    /// Files in the parameter storage directory, temporaries included.
    fn stored_files(&self) -> Vec<String> {
        fn walk(dir: &std::path::Path, root: &std::path::Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    walk(&e.path(), root, out);
                } else {
                    out.push(e.path().strip_prefix(root).unwrap().display().to_string());
                }
            }
        }
        let mut out = Vec::new();
        if let Some(d) = &self.params_dir {
            walk(d, d, &mut out);
        }
        out.sort();
        out
    }

    async fn stop(self) {
        self.master.shutdown().await.unwrap();
    }
}

/// Runs blocking SDK code off the runtime's threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

fn field_of(body: &Value) -> Option<&str> {
    body["location"]["field"].as_str()
}

/// A payload that proves itself: the version in the first 8 bytes, then bytes that depend on
/// the version and their offset, then an FNV-1a checksum of all that. Any mix of two versions,
/// any cut or shift, fails `check_payload`.
fn payload(version: i64, len: usize) -> Vec<u8> {
    assert!(len >= 16);
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&version.to_le_bytes());
    for i in 8..len - 8 {
        out.push(filler(version, i));
    }
    let sum = fnv(&out);
    out.extend_from_slice(&sum.to_le_bytes());
    out
}

fn filler(version: i64, i: usize) -> u8 {
    ((version as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(i as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9) >> 56) as u8
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}

/// The version a payload says it is, if it is whole and of one version.
fn check_payload(bytes: &[u8]) -> Result<i64, String> {
    if bytes.len() < 16 {
        return Err(format!("{} bytes is too short", bytes.len()));
    }
    let version = i64::from_le_bytes(bytes[..8].try_into().unwrap());
    let (body, sum) = bytes.split_at(bytes.len() - 8);
    if fnv(body) != u64::from_le_bytes(sum.try_into().unwrap()) {
        return Err(format!("version {version}: checksum mismatch over {} bytes", bytes.len()));
    }
    if let Some(i) = (8..body.len()).find(|&i| body[i] != filler(version, i)) {
        return Err(format!("version {version}: byte {i} belongs to another version"));
    }
    Ok(version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_works_through_the_sdk_and_rest() {
    let m = Master::start(None).await;
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("weights.bin");
    std::fs::write(&file, payload(3, 300_000)).unwrap();
    let (url, file2, out) = (m.master.url(), file.clone(), work.path().join("out.bin"));
    blocking(move || {
        let c = Master::client(&url);
        // Push from bytes and from a file; versions need not arrive in order.
        let v1 = c
            .push_bytes("policy", 1, payload(1, 1000), &PushOptions::new().tag("first").metadata(json!({"win_rate": 0.5, "games": 4})))
            .unwrap();
        assert_eq!((v1.version, v1.size, v1.tags.clone()), (1, 1000, vec!["first".to_string()]));
        assert_eq!(v1.metadata, json!({"win_rate": 0.5, "games": 4}));
        let v3 = c
            .push_file("policy", 3, &file2, &PushOptions::new().metadata(json!({"win_rate": 0.9, "games": 30, "league": "main"})))
            .unwrap();
        assert_eq!(v3.size, 300_000);
        c.push_bytes(
            "policy",
            2,
            payload(2, 2000),
            &PushOptions::new().metadata(json!({"win_rate": 0.85, "games": 12, "eval": {"elo": 1300}})),
        )
        .unwrap();
        c.push_bytes("other", 10, payload(10, 64), &PushOptions::new()).unwrap();

        // Get by version, latest (the highest number), tag; to memory and to a file.
        let got = c.get("policy", &Which::Version(2), &GetOptions::now()).unwrap().unwrap();
        assert_eq!((got.version, check_payload(&got.bytes)), (2, Ok(2)));
        let latest = c.get("policy", &Which::Latest, &GetOptions::now()).unwrap().unwrap();
        assert_eq!(check_payload(&latest.bytes), Ok(3));
        assert_eq!(latest.sha256, v3.sha256);
        let first = c.get("policy", &Which::Tag("first".into()), &GetOptions::now()).unwrap().unwrap();
        assert_eq!(first.version, 1);
        let f = c.get_to_file("policy", &Which::Latest, &GetOptions::now(), &out).unwrap().unwrap();
        assert_eq!((f.version, f.size), (3, 300_000));
        assert_eq!(check_payload(&std::fs::read(&out).unwrap()), Ok(3));
        assert!(c.get("policy", &Which::Version(9), &GetOptions::now()).unwrap().is_none());
        assert!(c.get("nothing", &Which::Latest, &GetOptions::now()).unwrap().is_none());
        assert!(c.get("policy", &Which::Latest, &GetOptions::now().newer_than(3)).unwrap().is_none());
        let info = c.info("policy", &Which::Tag("first".into()), &GetOptions::now()).unwrap().unwrap();
        assert_eq!((info.version, info.tags.clone()), (1, vec!["first".to_string()]));

        // Tags move; listing shows where they point.
        c.tag("policy", "best", 2).unwrap();
        c.tag("policy", "best", 3).unwrap();
        c.tag("policy", "old", 1).unwrap();
        let tags: Vec<(String, i64)> = c.list_tags("policy").unwrap().into_iter().map(|t| (t.tag, t.version)).collect();
        assert_eq!(tags, vec![("best".into(), 3), ("first".into(), 1), ("old".into(), 1)]);
        c.untag("policy", "old").unwrap();
        assert!(matches!(c.untag("policy", "old"), Err(SdkError::Api { status: 404, .. })));
        assert!(matches!(c.tag("policy", "best", 99), Err(SdkError::Api { status: 404, .. })));
        assert_eq!(c.get("policy", &Which::Tag("best".into()), &GetOptions::now()).unwrap().unwrap().version, 3);

        // Versions, lowest first, with their tags.
        let versions = c.list_versions("policy").unwrap();
        assert_eq!(versions.iter().map(|v| v.version).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(versions[2].tags, vec!["best".to_string()]);

        // Metadata: merged, a null removes a key, or replaced.
        let v = c.update_metadata("policy", 1, json!({"games": 20, "win_rate": null, "league": "exploiter"}), false).unwrap();
        assert_eq!(v.metadata, json!({"games": 20, "league": "exploiter"}));
        let v = c.update_metadata("policy", 1, json!({"elo": 900}), true).unwrap();
        assert_eq!(v.metadata, json!({"elo": 900}));
        assert!(matches!(c.update_metadata("policy", 7, json!({}), false), Err(SdkError::Api { status: 404, .. })));

        // Queries: filter, sort, limit, sample.
        let picked = |q: Query| c.query("policy", &q).unwrap().into_iter().map(|v| v.version).collect::<Vec<_>>();
        assert_eq!(picked(Query::new().filter("win_rate > 0.8 and games >= 10").sort("-win_rate")), vec![3, 2]);
        assert_eq!(picked(Query::new().filter("not (league == \"main\" or eval.elo < 1200)")), vec![1, 2]);
        assert_eq!(picked(Query::new().filter("eval.elo >= 1300")), vec![2]);
        assert_eq!(picked(Query::new().sort("-version").limit(2)), vec![3, 2]);
        assert_eq!(picked(Query::new().filter("version >= 2 and size < 10000")), vec![2]);
        let s1 = c.sample("policy", &Query::new().filter("version >= 1").seed(5)).unwrap().unwrap().version;
        for _ in 0..3 {
            assert_eq!(c.sample("policy", &Query::new().filter("version >= 1").seed(5)).unwrap().unwrap().version, s1);
        }
        let drawn: std::collections::BTreeSet<i64> =
            (0..60).map(|seed| c.sample("policy", &Query::new().sort("-version").limit(2).seed(seed)).unwrap().unwrap().version).collect();
        assert_eq!(drawn.into_iter().collect::<Vec<_>>(), vec![2, 3], "a sample is one of the limited matches, each drawn");
        assert!(c.sample("policy", &Query::new().filter("games > 1000")).unwrap().is_none());

        // Names.
        let names: Vec<(String, i64, i64)> = c.list_names().unwrap().into_iter().map(|n| (n.name, n.versions, n.latest_version)).collect();
        assert_eq!(names, vec![("other".into(), 1, 10), ("policy".into(), 3, 3)]);

        // Collection keeps tagged versions and the newest untagged ones.
        for v in 4..=7 {
            c.push_bytes("policy", v, payload(v, 100), &PushOptions::new()).unwrap();
        }
        let gc = c.gc("policy", 2).unwrap();
        assert_eq!((gc.deleted.clone(), gc.kept.clone()), (vec![2, 4, 5], vec![1, 3, 6, 7]));
        assert_eq!(c.gc("policy", 2).unwrap().deleted, Vec::<i64>::new(), "a second collection finds nothing");
        assert!(c.get("policy", &Which::Version(4), &GetOptions::now()).unwrap().is_none());
        assert_eq!(c.get("policy", &Which::Tag("first".into()), &GetOptions::now()).unwrap().unwrap().version, 1);
        let gc = c.gc("policy", 0).unwrap();
        assert_eq!((gc.deleted, gc.kept), (vec![6, 7], vec![1, 3]));
        assert_eq!(c.get("policy", &Which::Latest, &GetOptions::now()).unwrap().unwrap().version, 3);
        assert_eq!(c.gc("nothing", 0).unwrap(), ParamGcResponse { deleted: vec![], kept: vec![] });
    })
    .await;
    // Collection removed the blobs too; no temporary file is left behind.
    let files = m.stored_files();
    assert_eq!(files.len(), 3, "versions 1 and 3 of policy and 10 of other: {files:?}");
    assert!(files.iter().all(|f| !f.contains(".drover-tmp")), "{files:?}");

    // The raw REST shapes: headers name the version that `latest` resolved to.
    let r = m.http.get(m.url("/api/v1/params/policy/versions/latest")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()[param_headers::VERSION], "3");
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert_eq!(r.headers()["content-length"], "300000");
    assert_eq!(check_payload(&r.bytes().await.unwrap()), Ok(3));
    let (status, info) = m.get_json("/api/v1/params/policy/versions/tag:best/info").await;
    assert_eq!((status, info["version"].as_i64()), (200, Some(3)));
    let (_, doc) = m.get_json("/api/v1/openapi.json").await;
    for path in
        ["/api/v1/params", "/api/v1/params/{name}/versions/{version}", "/api/v1/params/{name}/gc", "/api/v1/params/{name}/tags/{tag}"]
    {
        assert!(doc["paths"].get(path).is_some(), "{path} is documented");
    }
    assert!(doc["components"]["schemas"].get("ParamVersion").is_some());
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_naming_what_and_changes_nothing() {
    let m = Master::start(None).await;
    let url = m.master.url();
    blocking(move || {
        Master::client(&url).push_bytes("policy", 1, payload(1, 100), &PushOptions::new().tag("best").metadata(json!({"a": 1}))).unwrap()
    })
    .await;
    let before = m.stored_files();
    let put = |path: &str, body: Vec<u8>| m.http.put(m.url(path)).body(body);

    // Hostile names, as a client encodes them into one path segment.
    let long = "x".repeat(129);
    for name in ["..%2Fx", "a%00b", "a%0Ab", "a%20b", "%C3%A9", "a%2Fb", long.as_str()] {
        let (status, body) = m.send(put(&format!("/api/v1/params/{name}/versions/2"), vec![1, 2, 3])).await;
        assert_eq!((status, field_of(&body)), (400, Some("name")), "{name}: {body}");
        let (status, body) = m.get_json(&format!("/api/v1/params/{name}/versions/latest")).await;
        assert_eq!((status, field_of(&body)), (400, Some("name")), "{name}: {body}");
    }
    // An empty name and `..` segments (which HTTP clients normalise away), sent exactly as
    // written; a name that is not UTF-8.
    for line in [
        "PUT /api/v1/params//versions/2",
        "GET /api/v1/params//versions/latest",
        "GET /api/v1/params/../versions/1",
        "GET /api/v1/params/%2E%2E/versions/1",
        "GET /api/v1/params/%ff/tags",
    ] {
        let (status, body) = m.raw(line);
        assert_eq!((status, field_of(&body)), (400, Some("name")), "{line}: {body}");
    }
    let url = m.master.url();
    let sdk_errors = blocking(move || {
        let c = Master::client(&url);
        [
            c.push_bytes("../x", 2, vec![1], &PushOptions::new()).unwrap_err(),
            c.push_bytes("..", 2, vec![1], &PushOptions::new()).unwrap_err(),
            c.get("a\nb", &Which::Latest, &GetOptions::now()).unwrap_err(),
            c.tag("policy", "../best", 1).unwrap_err(),
            c.push_bytes("policy", 2, vec![1], &PushOptions::new().tag("bad tag")).unwrap_err(),
            c.query("policy", &Query::new().filter("win_rate > ")).unwrap_err(),
        ]
        .map(|e| e.to_string())
    })
    .await;
    assert!(sdk_errors[0].contains("HTTP 400") && sdk_errors[0].contains("(at name)"), "{}", sdk_errors[0]);
    assert!(sdk_errors[1].contains("invalid name"), "{}", sdk_errors[1]);
    assert!(sdk_errors[2].contains("HTTP 400") && sdk_errors[2].contains("(at name)"), "{}", sdk_errors[2]);
    assert!(sdk_errors[3].contains("(at tag)"), "{}", sdk_errors[3]);
    assert!(sdk_errors[4].contains("(at tags)"), "{}", sdk_errors[4]);
    assert!(
        sdk_errors[5].contains("at column 12: expected a value after `>`") && sdk_errors[5].contains("(at filter)"),
        "{}",
        sdk_errors[5]
    );

    // Versions, selectors, query parameters.
    for (path, field) in [
        ("/api/v1/params/policy/versions/-1", "version"),
        ("/api/v1/params/policy/versions/abc", "version"),
        ("/api/v1/params/policy/versions/1.5", "version"),
        ("/api/v1/params/policy/versions/tag:", "tag"),
        ("/api/v1/params/policy/versions/1?newer_than=0", "newer_than"),
        ("/api/v1/params/policy/versions/latest?wait_ms=soon", "wait_ms"),
        ("/api/v1/params/policy/versions/latest?wait=1", "wait"),
        ("/api/v1/params/policy/versions?limit=-3", "limit"),
        ("/api/v1/params/policy/versions?sample=maybe", "sample"),
    ] {
        let (status, body) = m.get_json(path).await;
        assert_eq!((status, field_of(&body)), (400, Some(field)), "{path}: {body}");
    }
    // A query that does not parse says where.
    let (status, body) = m.get_json("/api/v1/params/policy/versions?filter=win_rate%20%3E%20").await;
    assert_eq!(status, 400);
    assert_eq!(body["message"], "invalid filter: at column 12: expected a value after `>`");
    assert_eq!((body["location"]["field"].as_str(), body["location"]["column"].as_u64()), (Some("filter"), Some(12)));
    let (status, body) = m.get_json("/api/v1/params/policy/versions?sort=-a,,b").await;
    assert_eq!((status, field_of(&body), body["location"]["column"].as_u64()), (400, Some("sort"), Some(4)), "{body}");

    // Push refusals: each leaves storage and rows as they were.
    let (status, body) = m.send(put("/api/v1/params/policy/versions/1", payload(7, 100))).await;
    assert_eq!(status, 409, "an existing version: {body}");
    let (status, body) = m.send(put("/api/v1/params/policy/versions/2?metadata=%5B1%5D", vec![1])).await;
    assert_eq!((status, field_of(&body)), (400, Some("metadata")), "{body}");
    let (status, body) = m.send(put("/api/v1/params/policy/versions/2?metadata=%7B", vec![1])).await;
    assert_eq!((status, field_of(&body)), (400, Some("metadata")), "{body}");
    let (status, body) = m.send(put(&format!("/api/v1/params/policy/versions/2?sha256={}", "0".repeat(64)), vec![1, 2])).await;
    assert_eq!((status, field_of(&body)), (400, Some("sha256")), "a checksum that does not match: {body}");
    let (status, body) = m.send(put("/api/v1/params/policy/versions/2?sha256=xyz", vec![1, 2])).await;
    assert_eq!((status, field_of(&body)), (400, Some("sha256")), "{body}");
    let (status, body) = m.send(put("/api/v1/params/policy/versions/2?tag=best", vec![1, 2])).await;
    assert_eq!((status, field_of(&body)), (400, Some("tag")), "an unknown query parameter: {body}");
    // Too large, declared up front: refused before the body is read.
    let (status, body) = m.send(put("/api/v1/params/policy/versions/2", vec![0u8; LIMIT as usize + 1])).await;
    assert_eq!(status, 413, "{body}");
    // Too large without a declared length (chunked): refused once past the limit.
    let url = m.url("/api/v1/params/policy/versions/2");
    let chunked = blocking(move || {
        let body = reqwest::blocking::Body::new(std::io::Cursor::new(vec![0u8; LIMIT as usize + 100_000]));
        match reqwest::blocking::Client::new().put(url).body(body).send() {
            Ok(r) => Some(r.status().as_u16()),
            // The master may answer and close before the client has sent everything.
            Err(_) => None,
        }
    })
    .await;
    eprintln!("an oversized chunked push was answered with {chunked:?}");
    assert!(matches!(chunked, Some(413) | None), "{chunked:?}");
    // Exactly at the limit is fine.
    let (status, body) = m.send(put("/api/v1/params/big/versions/0", vec![7u8; LIMIT as usize])).await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = m.send(m.http.post(m.url("/api/v1/params/big/gc")).json(&json!({"keep_untagged": 0}))).await;
    assert_eq!((status, body["deleted"].clone()), (200, json!([0])));

    // Tags, metadata, gc bodies.
    let (status, _) = m.send(m.http.put(m.url("/api/v1/params/policy/tags/best")).json(&json!({"version": 5}))).await;
    assert_eq!(status, 404, "a tag can only point at a version that exists");
    let (status, body) = m.send(m.http.put(m.url("/api/v1/params/policy/tags/best")).json(&json!({"version": -1}))).await;
    assert_eq!((status, field_of(&body)), (400, Some("version")));
    let (status, body) = m.send(m.http.put(m.url("/api/v1/params/policy/tags/best")).body("{")).await;
    assert_eq!(status, 400, "{body}");
    let (status, _) = m.send(m.http.patch(m.url("/api/v1/params/policy/versions/1")).json(&json!({"metadata": [1]}))).await;
    assert_eq!(status, 400);
    let big = json!({"metadata": {"x": "y".repeat(70_000)}});
    let (status, body) = m.send(m.http.patch(m.url("/api/v1/params/policy/versions/1")).json(&big)).await;
    assert_eq!((status, field_of(&body)), (400, Some("metadata")), "{body}");
    let (status, _) = m.send(m.http.post(m.url("/api/v1/params/policy/gc")).json(&json!({"keep_untagged": -1}))).await;
    assert_eq!(status, 400);

    // Nothing changed.
    assert_eq!(m.stored_files(), before);
    let (_, versions) = m.get_json("/api/v1/params/policy/versions").await;
    assert_eq!(versions.as_array().unwrap().len(), 1);
    assert_eq!(versions[0]["metadata"], json!({"a": 1}));
    assert_eq!(versions[0]["tags"], json!(["best"]));
    let r = m.http.get(m.url("/api/v1/params/policy/versions/1")).send().await.unwrap();
    assert_eq!(check_payload(&r.bytes().await.unwrap()), Ok(1));
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_reader_wakes_on_the_push_not_the_timeout() {
    let m = Master::start(None).await;
    let url = m.master.url();
    // Nothing yet: a short wait ends in 404 after about its length.
    let started = Instant::now();
    let (status, _) = m.get_json("/api/v1/params/policy/versions/latest?wait_ms=300").await;
    assert_eq!(status, 404);
    assert!(started.elapsed() >= Duration::from_millis(290), "{:?}", started.elapsed());

    // A long wait for latest, one for a newer version, one for a tag: each wakes on its push.
    let waiter = |which: Which, options: GetOptions| {
        let url = url.clone();
        tokio::task::spawn_blocking(move || {
            let c = Master::client(&url);
            let t = Instant::now();
            let got = c.get("policy", &which, &options).unwrap();
            (got.map(|g| (g.version, check_payload(&g.bytes))), t.elapsed())
        })
    };
    let latest = waiter(Which::Latest, GetOptions::wait(Duration::from_secs(30)));
    let exact = waiter(Which::Version(2), GetOptions::wait(Duration::from_secs(30)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let pushed_at = Instant::now();
    let u = url.clone();
    blocking(move || Master::client(&u).push_bytes("policy", 1, payload(1, 5000), &PushOptions::new()).unwrap()).await;
    let (got, waited) = latest.await.unwrap();
    assert_eq!(got, Some((1, Ok(1))));
    assert!(waited < Duration::from_secs(10) && pushed_at.elapsed() < Duration::from_secs(5), "woken by the push: {waited:?}");
    assert!(!exact.is_finished(), "version 2 is not there yet");

    let newer = waiter(Which::Latest, GetOptions::wait(Duration::from_secs(30)).newer_than(1));
    let tagged = waiter(Which::Tag("best".into()), GetOptions::wait(Duration::from_secs(30)).newer_than(1));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let u = url.clone();
    blocking(move || Master::client(&u).push_bytes("policy", 2, payload(2, 5000), &PushOptions::new()).unwrap()).await;
    assert_eq!(newer.await.unwrap().0, Some((2, Ok(2))));
    assert_eq!(exact.await.unwrap().0, Some((2, Ok(2))));
    assert!(!tagged.is_finished(), "no tag yet");
    let u = url.clone();
    blocking(move || Master::client(&u).tag("policy", "best", 1).unwrap()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!tagged.is_finished(), "the tag points at version 1, not above it");
    let u = url.clone();
    blocking(move || Master::client(&u).tag("policy", "best", 2).unwrap()).await;
    let (got, waited) = tagged.await.unwrap();
    assert_eq!(got, Some((2, Ok(2))));
    assert!(waited < Duration::from_secs(10), "{waited:?}");

    // A wait in progress ends when the master shuts down, rather than holding it up.
    let u = url.clone();
    let pending = tokio::task::spawn_blocking(move || {
        Master::client(&u).get("policy", &Which::Version(50), &GetOptions::wait(Duration::from_secs(60)))
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopping = Instant::now();
    m.stop().await;
    assert!(stopping.elapsed() < Duration::from_secs(10), "{:?}", stopping.elapsed());
    let _ = pending.await.unwrap();
}

/// One writer pushes self-checking versions of `name` as fast as it can while `readers`
/// clients get `latest` in a loop: every answer must be one whole version, never older than
/// one the same reader saw before. Run once with versions served from the master's memory and
/// once streamed from storage on every read.
async fn readers_never_see_a_torn_version(m: &Master, versions: i64, readers: usize) {
    for (name, hot) in [("policy", true), ("streamed", false)] {
        m.master.master.params.set_hot_item_bytes(if hot { drover_master::params::HOT_ITEM_BYTES } else { 0 });
        readers_of(m, name, versions, readers).await;
    }
}

async fn readers_of(m: &Master, name: &'static str, versions: i64, readers: usize) {
    let done = Arc::new(AtomicBool::new(false));
    let reads = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    // Half the readers use the SDK (which also checks the SHA-256), half plain HTTP.
    for r in 0..readers {
        let (done, reads) = (done.clone(), reads.clone());
        if r % 2 == 0 {
            let url = m.master.url();
            tasks.push(tokio::task::spawn_blocking(move || {
                let c = Master::client(&url);
                let mut last = -1;
                loop {
                    let finished = done.load(Ordering::SeqCst);
                    if let Some(got) = c.get(name, &Which::Latest, &GetOptions::now()).unwrap() {
                        let v = check_payload(&got.bytes).unwrap_or_else(|e| panic!("reader {r}: {e}"));
                        assert_eq!(v, got.version, "reader {r}: the header and the bytes disagree");
                        assert!(v >= last, "reader {r}: version {v} after {last}");
                        last = v;
                        reads.fetch_add(1, Ordering::Relaxed);
                    }
                    if finished {
                        return last;
                    }
                }
            }));
        } else {
            let (http, url) = (m.http.clone(), m.url(&format!("/api/v1/params/{name}/versions/latest")));
            tasks.push(tokio::spawn(async move {
                let mut last = -1;
                loop {
                    let finished = done.load(Ordering::SeqCst);
                    let r2 = http.get(&url).send().await.unwrap();
                    if r2.status() == 200 {
                        let header: i64 = r2.headers()[param_headers::VERSION].to_str().unwrap().parse().unwrap();
                        let v = check_payload(&r2.bytes().await.unwrap()).unwrap_or_else(|e| panic!("reader {r}: {e}"));
                        assert_eq!(v, header, "reader {r}: the header and the bytes disagree");
                        assert!(v >= last, "reader {r}: version {v} after {last}");
                        last = v;
                        reads.fetch_add(1, Ordering::Relaxed);
                    } else {
                        assert_eq!(r2.status(), 404);
                    }
                    if finished {
                        return last;
                    }
                }
            }));
        }
    }
    let url = m.master.url();
    blocking(move || {
        let c = Master::client(&url);
        for v in 0..versions {
            // Sizes vary, so a mix of two versions cannot even have the right length by chance.
            let len = 20_000 + (v as usize * 7919) % 400_000;
            c.push_bytes(name, v, payload(v, len), &PushOptions::new()).unwrap();
        }
    })
    .await;
    done.store(true, Ordering::SeqCst);
    for t in tasks {
        assert_eq!(t.await.unwrap(), versions - 1, "after the writer stops, every reader sees the last version");
    }
    let reads = reads.load(Ordering::Relaxed);
    assert!(reads as i64 >= versions, "the readers did read while the writer pushed: {reads}");
    eprintln!("{name}: {readers} readers made {reads} whole reads while {versions} versions were pushed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_readers_never_see_a_torn_version() {
    let m = Master::start(None).await;
    readers_never_see_a_torn_version(&m, 40, 24).await;
    assert!(m.stored_files().iter().all(|f| !f.contains(".drover-tmp")));
    m.stop().await;
}

/// A fresh bucket on the S3 server, made with a plain unsigned PUT (moto accepts it).
fn s3_storage() -> Option<StorageSpec> {
    let Ok(endpoint) = std::env::var("DROVER_TEST_S3_ENDPOINT") else {
        eprintln!("notice: DROVER_TEST_S3_ENDPOINT is unset; skipping the parameter database on S3");
        return None;
    };
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let bucket = format!("drover-params-{}-{nanos}", std::process::id());
    let host = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut stream =
        std::net::TcpStream::connect(host).unwrap_or_else(|e| panic!("DROVER_TEST_S3_ENDPOINT={endpoint} is unreachable: {e}"));
    write!(stream, "PUT /{bucket} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "creating bucket {bucket}: {answer}");
    Some(StorageSpec::S3 {
        bucket,
        prefix: Some("params".into()),
        endpoint_url: Some(endpoint),
        region: Some("us-east-1".into()),
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".into()),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_readers_never_see_a_torn_version_on_s3() {
    let Some(spec) = s3_storage() else { return };
    let m = Master::start(Some(spec)).await;
    readers_never_see_a_torn_version(&m, 25, 20).await;
    // Collection deletes the objects on S3 as well.
    let url = m.master.url();
    let gc = blocking(move || Master::client(&url).gc("policy", 1).unwrap()).await;
    assert_eq!((gc.deleted.len(), gc.kept), (24, vec![24]));
    let storage = m.master.master.params.storage().clone();
    let left = storage.list("policy").await.unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(storage.list("streamed").await.unwrap().len(), 25, "the other name is untouched");
    m.stop().await;
}
