//! One suite, every backend: a local directory always, and S3 on the server that
//! `DROVER_TEST_S3_ENDPOINT` names (moto on 127.0.0.1:5055 in CI); unset, the S3 half says so
//! and skips.

use std::io::{Read, Write};
use std::path::Path;

use bytes::Bytes;
use drover_storage::{Storage, StorageError, StorageSpec, validate_key};

/// A fresh bucket on the S3 server, made with a plain unsigned PUT (moto accepts it).
fn s3_spec(prefix: Option<&str>) -> Option<StorageSpec> {
    let Ok(endpoint) = std::env::var("DROVER_TEST_S3_ENDPOINT") else {
        eprintln!("DROVER_TEST_S3_ENDPOINT is unset: skipping the S3 half of the storage suite");
        return None;
    };
    let bucket = format!("drover-test-{}", uuid::Uuid::new_v4().simple());
    create_bucket(&endpoint, &bucket);
    Some(StorageSpec::S3 {
        bucket,
        prefix: prefix.map(str::to_string),
        endpoint_url: Some(endpoint),
        region: Some("us-east-1".into()),
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".into()),
    })
}

pub fn create_bucket(endpoint: &str, bucket: &str) {
    let host = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut stream =
        std::net::TcpStream::connect(host).unwrap_or_else(|e| panic!("DROVER_TEST_S3_ENDPOINT={endpoint} is set but unreachable: {e}"));
    write!(stream, "PUT /{bucket} HTTP/1.1\r\nHost: {host}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "creating bucket {bucket}: {answer}");
}

async fn backends() -> Vec<(String, Storage, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let local = Storage::open(&StorageSpec::Directory { path: dir.path().join("store") }).unwrap();
    let shared_dir = tempfile::tempdir().unwrap();
    let shared = Storage::open(&StorageSpec::SharedFs { path: shared_dir.path().join("mnt") }).unwrap();
    let mut out = vec![("directory".to_string(), local, Some(dir)), ("shared_fs".to_string(), shared, Some(shared_dir))];
    if let Some(spec) = s3_spec(Some("runs/a")) {
        out.push(("s3".to_string(), Storage::open(&spec).unwrap(), None));
    }
    out
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u64).wrapping_mul(2654435761).wrapping_add(u64::from(seed)) as u8).collect()
}

#[tokio::test]
async fn bytes_round_trip_head_list_and_delete() {
    for (name, s, _keep) in backends().await {
        s.check().await.unwrap_or_else(|e| panic!("{name}: {e}"));
        s.put_bytes("ckpt/a.txt", Bytes::from_static(b"hello")).await.unwrap();
        s.put_bytes("ckpt/sub/b.bin", Bytes::from(vec![7u8; 1000])).await.unwrap();
        s.put_bytes("other/c", Bytes::from_static(b"x")).await.unwrap();
        assert_eq!(&s.get_bytes("ckpt/a.txt").await.unwrap()[..], b"hello", "{name}");
        assert_eq!(s.head("ckpt/sub/b.bin").await.unwrap(), Some(1000), "{name}");
        assert_eq!(s.head("ckpt/none").await.unwrap(), None, "{name}");
        let listed: Vec<(String, u64)> = s.list("ckpt").await.unwrap().into_iter().map(|o| (o.key, o.size)).collect();
        assert_eq!(listed, vec![("a.txt".into(), 5), ("sub/b.bin".into(), 1000)], "{name}");
        assert_eq!(s.list("").await.unwrap().len(), 3, "{name}: the probe object is gone");
        assert!(matches!(s.get_bytes("ckpt/none").await, Err(StorageError::NotFound(_))), "{name}");
        // Deleting twice, or something never there, is not an error.
        s.delete("ckpt/a.txt").await.unwrap();
        s.delete("ckpt/a.txt").await.unwrap();
        assert_eq!(s.delete_prefix("ckpt").await.unwrap(), 1, "{name}");
        assert_eq!(s.delete_prefix("ckpt").await.unwrap(), 0, "{name}");
        assert!(s.list("ckpt").await.unwrap().is_empty(), "{name}");
        assert_eq!(s.list("other").await.unwrap().len(), 1, "{name}: other prefixes untouched");
    }
}

#[tokio::test]
async fn large_files_and_directories_stream_both_ways() {
    for (name, s, _keep) in backends().await {
        let work = tempfile::tempdir().unwrap();
        let src = work.path().join("src");
        std::fs::create_dir_all(src.join("nested/deeper")).unwrap();
        // 21 MiB: three multipart chunks on S3, the last one short.
        let big = pattern(21 << 20, 3);
        std::fs::write(src.join("weights.bin"), &big).unwrap();
        std::fs::write(src.join("nested/deeper/state.json"), b"{\"epoch\": 3}").unwrap();
        std::fs::write(src.join("empty"), b"").unwrap();
        let stored = s.put_dir("c1", &src).await.unwrap();
        assert_eq!(stored, vec![("empty".into(), 0), ("nested/deeper/state.json".into(), 12), ("weights.bin".into(), 21 << 20)], "{name}");
        let dst = work.path().join("dst");
        let got = s.get_dir("c1", &dst).await.unwrap();
        assert_eq!(got, stored, "{name}");
        assert!(std::fs::read(dst.join("weights.bin")).unwrap() == big, "{name}: the big file comes back byte for byte");
        assert_eq!(std::fs::read(dst.join("nested/deeper/state.json")).unwrap(), b"{\"epoch\": 3}");
        assert!(no_temporaries(&dst), "{name}: no temporary files are left");
    }
}

fn no_temporaries(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().flatten().all(|e| {
        let name = e.file_name().to_string_lossy().to_string();
        !name.starts_with(".drover-tmp-") && (!e.path().is_dir() || no_temporaries(&e.path()))
    })
}

#[tokio::test]
async fn hostile_keys_are_refused_before_anything_is_touched() {
    for bad in ["../etc/passwd", "/abs", "a//b", "a/./b", "a/../b", "a\\b", "", "x/.."] {
        assert!(validate_key(bad).is_err(), "{bad:?} must be refused");
    }
    validate_key("uuid/model/weights.safetensors").unwrap();
    for (name, s, _keep) in backends().await {
        assert!(matches!(s.put_bytes("../escape", Bytes::from_static(b"x")).await, Err(StorageError::InvalidKey { .. })), "{name}");
        assert!(matches!(s.get_bytes("a/../../b").await, Err(StorageError::InvalidKey { .. })), "{name}");
        assert!(s.list("").await.unwrap().is_empty(), "{name}: nothing was written");
    }
    // A directory with a symbolic link in it is not uploaded.
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(work.path().join("src")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", work.path().join("src/link")).unwrap();
    let s = Storage::open(&StorageSpec::Directory { path: work.path().join("store") }).unwrap();
    assert!(s.put_dir("c", &work.path().join("src")).await.is_err());
}

#[tokio::test]
async fn a_missing_bucket_is_a_clear_error_at_check_time() {
    let Ok(endpoint) = std::env::var("DROVER_TEST_S3_ENDPOINT") else {
        eprintln!("DROVER_TEST_S3_ENDPOINT is unset: skipping");
        return;
    };
    let spec = StorageSpec::S3 {
        bucket: "no-such-bucket-drover".into(),
        prefix: None,
        endpoint_url: Some(endpoint),
        region: None,
        access_key_id: Some("testing".into()),
        secret_access_key: Some("testing".into()),
    };
    let s = Storage::open(&spec).unwrap();
    let err = s.check().await.unwrap_err().to_string();
    assert!(err.contains("no-such-bucket-drover"), "{err}");
    assert!(err.contains("NoSuchBucket") || err.to_lowercase().contains("bucket"), "{err}");
    // An empty bucket name never gets that far.
    let empty = StorageSpec::S3 {
        bucket: " ".into(),
        prefix: None,
        endpoint_url: None,
        region: None,
        access_key_id: None,
        secret_access_key: None,
    };
    assert!(Storage::open(&empty).unwrap_err().to_string().contains("bucket name is empty"));
}

#[tokio::test]
async fn a_child_storage_sees_only_its_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let mut specs = vec![StorageSpec::Directory { path: dir.path().to_path_buf() }];
    specs.extend(s3_spec(None));
    for spec in specs {
        let parent = Storage::open(&spec).unwrap();
        let child = Storage::open(&spec.child("experiment-7")).unwrap();
        child.put_bytes("a/b", Bytes::from_static(b"1")).await.unwrap();
        assert_eq!(parent.list("experiment-7").await.unwrap()[0].key, "a/b", "{}", spec.describe());
        assert_eq!(child.list("").await.unwrap()[0].key, "a/b");
    }
}

/// What a caller's stream fails with, to check that it comes back out of `Aborted`.
#[derive(Debug)]
struct TooBig;

impl std::fmt::Display for TooBig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("too big")
    }
}

impl std::error::Error for TooBig {}

fn chunks_of(data: &[u8], size: usize) -> Vec<Result<Bytes, TooBig>> {
    data.chunks(size).map(|c| Ok(Bytes::copy_from_slice(c))).collect()
}

async fn read_all(s: &Storage, key: &str) -> (u64, Vec<u8>) {
    use futures_util::StreamExt;
    let (size, mut stream) = s.get_stream(key).await.unwrap();
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    (size, out)
}

#[tokio::test]
async fn streams_are_stored_whole_or_not_at_all() {
    use futures_util::stream;
    for (name, s, _keep) in backends().await {
        // Small (one PUT on S3) and 21 MiB (multipart), in uneven pieces.
        for (key, len) in [("p/small", 1000usize), ("p/big", 21 << 20), ("p/empty", 0)] {
            let data = pattern(len, 9);
            let size = s.put_stream(key, stream::iter(chunks_of(&data, 777_777))).await.unwrap();
            assert_eq!(size, len as u64, "{name} {key}");
            let (size, back) = read_all(&s, key).await;
            assert_eq!(size, len as u64, "{name} {key}");
            assert!(back == data, "{name} {key}: the bytes come back unchanged");
        }
        // A stream that fails midway, before and after the multipart threshold, leaves nothing.
        for (key, cut) in [("p/failed-small", 3usize), ("p/failed-big", 20)] {
            let mut parts = chunks_of(&pattern(cut << 20, 1), 1 << 20);
            parts.push(Err(TooBig));
            parts.extend(chunks_of(&pattern(1 << 20, 2), 1 << 20));
            let err = s.put_stream(key, stream::iter(parts)).await.unwrap_err();
            match &err {
                StorageError::Aborted { source, .. } => assert!(source.downcast_ref::<TooBig>().is_some(), "{name}: {err}"),
                other => panic!("{name}: {other}"),
            }
            assert_eq!(s.head(key).await.unwrap(), None, "{name} {key}");
        }
        let keys: Vec<String> = s.list("p").await.unwrap().into_iter().map(|o| o.key).collect();
        assert_eq!(keys, vec!["big", "empty", "small"], "{name}: no partial object is listed");
        assert!(matches!(s.get_stream("p/none").await, Err(StorageError::NotFound(_))), "{name}");
        assert!(matches!(s.put_stream("../p", stream::iter(chunks_of(b"x", 1))).await, Err(StorageError::InvalidKey { .. })));
    }
}

#[tokio::test]
async fn a_file_being_read_survives_its_deletion() {
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(&StorageSpec::Directory { path: dir.path().to_path_buf() }).unwrap();
    let data = pattern(3 << 20, 4);
    s.put_bytes("v/1", Bytes::from(data.clone())).await.unwrap();
    let (size, mut stream) = s.get_stream("v/1").await.unwrap();
    s.delete("v/1").await.unwrap();
    let mut back = Vec::new();
    use futures_util::StreamExt;
    while let Some(chunk) = stream.next().await {
        back.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(size, data.len() as u64);
    assert!(back == data);
}

#[test]
fn a_spec_prints_without_its_secret() {
    let spec = StorageSpec::S3 {
        bucket: "b".into(),
        prefix: Some("p".into()),
        endpoint_url: None,
        region: None,
        access_key_id: Some("AKIA-visible".into()),
        secret_access_key: Some("very-secret".into()),
    };
    let shown = format!("{spec:?}");
    assert!(shown.contains("s3://b/p") && !shown.contains("very-secret"), "{shown}");
}
