//! One suite, every backend: a local directory always, and S3 on the server that
//! `DROVER_TEST_S3_ENDPOINT` names (moto on 127.0.0.1:5055 in CI); unset, the S3 half says so
//! and skips.

use std::io::{Read, Write};
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

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
    let local = Storage::open(&StorageSpec::Directory { path: dir.path().join("store"), prefix: None }).unwrap();
    let shared_dir = tempfile::tempdir().unwrap();
    let shared = Storage::open(&StorageSpec::SharedFs { path: shared_dir.path().join("mnt"), prefix: None }).unwrap();
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
        assert!(s.links("").await.unwrap().is_empty(), "{name}: drover itself never stores a link");
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
    // A directory with a symbolic link out of it is not uploaded.
    let work = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(work.path().join("src")).unwrap();
    std::fs::write(work.path().join("decoy"), b"decoy").unwrap();
    std::os::unix::fs::symlink(work.path().join("decoy"), work.path().join("src/link")).unwrap();
    let s = Storage::open(&StorageSpec::Directory { path: work.path().join("store"), prefix: None }).unwrap();
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
    let mut specs = vec![StorageSpec::Directory { path: dir.path().to_path_buf(), prefix: None }];
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
    let s = Storage::open(&StorageSpec::Directory { path: dir.path().to_path_buf(), prefix: None }).unwrap();
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

// Symbolic links a trial plants in a file-system storage. Each test points them at its own
// decoy directory and file in a tempdir (never at a system path) and checks that nothing
// reads, lists, writes or deletes through them.

/// A decoy directory with a few files, and a decoy file, outside every storage.
struct Decoy {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    file: PathBuf,
}

const DECOY_FILES: [(&str, &[u8]); 3] = [("f", b"decoy f"), ("passwd", b"decoy passwd"), ("nested/shadow", b"decoy shadow")];

impl Decoy {
    fn new() -> Decoy {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("decoy-dir");
        for (name, bytes) in DECOY_FILES {
            std::fs::create_dir_all(dir.join(name).parent().unwrap()).unwrap();
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        let file = tmp.path().join("decoy-file");
        std::fs::write(&file, b"decoy file").unwrap();
        Decoy { _tmp: tmp, dir, file }
    }

    /// Every decoy file is there with its bytes, and nothing was added.
    fn assert_intact(&self, context: &str) {
        for (name, bytes) in DECOY_FILES {
            assert_eq!(std::fs::read(self.dir.join(name)).unwrap_or_default(), bytes, "{context}: decoy {name}");
        }
        assert_eq!(std::fs::read(&self.file).unwrap(), b"decoy file", "{context}: decoy file");
        let mut names: Vec<String> = std::fs::read_dir(&self.dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["f", "nested", "passwd"], "{context}: nothing was created in the decoy directory");
    }
}

/// The file-system backends (links are a file-system matter).
async fn fs_backends() -> Vec<(String, Storage, Option<tempfile::TempDir>)> {
    backends().await.into_iter().filter(|(_, s, _)| s.local_path("").is_some()).collect()
}

/// A checkpoint `uuid` with two real files and the links a hostile trial would add:
/// `etcdir` and `sub` to the decoy directory, `evil` to the decoy file, and one deeper down.
async fn plant(s: &Storage, uuid: &str, decoy: &Decoy) {
    s.put_bytes(&format!("{uuid}/real.bin"), Bytes::from_static(b"real")).await.unwrap();
    s.put_bytes(&format!("{uuid}/deep/er/x"), Bytes::from_static(b"x")).await.unwrap();
    let dir = s.local_path(uuid).unwrap();
    symlink(&decoy.dir, dir.join("etcdir")).unwrap();
    symlink(&decoy.file, dir.join("evil")).unwrap();
    symlink(&decoy.dir, dir.join("sub")).unwrap();
    symlink(&decoy.dir, dir.join("deep/er/link")).unwrap();
}

fn is_link_error<T: std::fmt::Debug>(result: Result<T, StorageError>) -> bool {
    match result {
        Err(e @ StorageError::Link { .. }) => e.to_string().contains("is a symbolic link; drover never follows links in storage"),
        _ => false,
    }
}

#[tokio::test]
async fn delete_prefix_removes_links_themselves_and_nothing_they_point_to() {
    for (name, s, _keep) in fs_backends().await {
        let decoy = Decoy::new();
        plant(&s, "ck1", &decoy).await;
        assert_eq!(s.delete_prefix("ck1").await.unwrap(), 2, "{name}: the two real files, not the decoy's");
        assert!(std::fs::symlink_metadata(s.local_path("ck1").unwrap()).is_err(), "{name}: the checkpoint directory is gone");
        decoy.assert_intact(&name);
        // A checkpoint directory that is itself a link loses the link, not the target's files.
        symlink(&decoy.dir, s.local_path("ck2").unwrap()).unwrap();
        assert_eq!(s.delete_prefix("ck2").await.unwrap(), 0, "{name}");
        assert!(std::fs::symlink_metadata(s.local_path("ck2").unwrap()).is_err(), "{name}: the link is gone");
        // A prefix beyond a link is refused, not deleted through.
        symlink(&decoy.dir, s.local_path("ck3").unwrap()).unwrap();
        assert!(is_link_error(s.delete_prefix("ck3/nested").await), "{name}");
        decoy.assert_intact(&name);
    }
}

#[tokio::test]
async fn listing_shows_regular_files_only_and_links_names_the_links() {
    for (name, s, _keep) in fs_backends().await {
        let decoy = Decoy::new();
        plant(&s, "ck", &decoy).await;
        let keys: Vec<String> = s.list("ck").await.unwrap().into_iter().map(|o| o.key).collect();
        assert_eq!(keys, ["deep/er/x", "real.bin"], "{name}");
        let everything: Vec<String> = s.list("").await.unwrap().into_iter().map(|o| o.key).collect();
        assert_eq!(everything, ["ck/deep/er/x", "ck/real.bin"], "{name}");
        assert_eq!(s.links("ck").await.unwrap(), ["deep/er/link", "etcdir", "evil", "sub"], "{name}");
        assert!(is_link_error(s.list("ck/sub").await), "{name}: a prefix through a link");
        assert!(is_link_error(s.links("ck/etcdir/nested").await), "{name}");
        // get_dir downloads the files and none of what the links point to.
        let dst = tempfile::tempdir().unwrap();
        let got = s.get_dir("ck", dst.path()).await.unwrap();
        assert_eq!(got, vec![("deep/er/x".into(), 1), ("real.bin".into(), 4)], "{name}");
        decoy.assert_intact(&name);
    }
}

#[tokio::test]
async fn reading_through_a_link_is_a_link_error() {
    for (name, s, _keep) in fs_backends().await {
        let decoy = Decoy::new();
        plant(&s, "ck", &decoy).await;
        let out = tempfile::tempdir().unwrap();
        for key in ["ck/evil", "ck/sub/f", "ck/etcdir/passwd", "ck/etcdir/nested/shadow", "ck/deep/er/link/f"] {
            assert!(is_link_error(s.get_stream(key).await.map(|(size, _)| size)), "{name}: get_stream {key}");
            assert!(is_link_error(s.get_bytes(key).await), "{name}: get_bytes {key}");
            assert!(is_link_error(s.head(key).await), "{name}: head {key}");
            assert!(is_link_error(s.get_file(key, &out.path().join("copy")).await), "{name}: get_file {key}");
            assert!(is_link_error(s.get_file_into(key, out.path(), "a/copy").await), "{name}: get_file_into {key}");
        }
        match s.get_bytes("ck/sub/f").await {
            Err(StorageError::Link { key }) => assert_eq!(key, "ck/sub", "{name}: the error names the link"),
            other => panic!("{name}: {other:?}"),
        }
        assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 0, "{name}: nothing was copied out");
        // The real file next to them reads as usual.
        assert_eq!(&s.get_bytes("ck/real.bin").await.unwrap()[..], b"real", "{name}");
        decoy.assert_intact(&name);
    }
}

#[tokio::test]
async fn writing_and_deleting_never_go_through_a_link() {
    use futures_util::stream;
    for (name, s, _keep) in fs_backends().await {
        let decoy = Decoy::new();
        plant(&s, "ck", &decoy).await;
        let local = tempfile::tempdir().unwrap();
        std::fs::write(local.path().join("x"), b"new").unwrap();
        assert!(is_link_error(s.put_bytes("ck/sub/new", Bytes::from_static(b"new")).await), "{name}: put_bytes");
        assert!(is_link_error(s.put_bytes("ck/sub/made/new", Bytes::from_static(b"new")).await), "{name}: put_bytes, deeper");
        assert!(is_link_error(s.put_stream("ck/etcdir/passwd", stream::iter(chunks_of(b"new", 1))).await), "{name}: put_stream");
        assert!(is_link_error(s.put_file("ck/etcdir/nested/shadow", &local.path().join("x")).await), "{name}: put_file");
        assert!(is_link_error(s.put_dir("ck/sub", local.path()).await), "{name}: put_dir");
        assert!(is_link_error(s.delete("ck/sub/f").await), "{name}: delete beyond a link");
        decoy.assert_intact(&name);
        // At a link's own name, a delete removes the link and a write replaces it.
        s.delete("ck/evil").await.unwrap();
        assert!(std::fs::symlink_metadata(s.local_path("ck/evil").unwrap()).is_err(), "{name}");
        s.put_bytes("ck/etcdir", Bytes::from_static(b"now a file")).await.unwrap();
        assert_eq!(&s.get_bytes("ck/etcdir").await.unwrap()[..], b"now a file", "{name}");
        assert!(s.local_path("ck/etcdir").unwrap().symlink_metadata().unwrap().is_file(), "{name}");
        decoy.assert_intact(&name);
    }
}

/// Experiments sharing a root each get a prefix; one experiment's trial replacing another's
/// prefix directory by a link must not redirect that storage: the prefix is walked like a key.
#[tokio::test]
async fn a_storage_prefix_replaced_by_a_link_leads_nowhere() {
    let decoy = Decoy::new();
    let dir = tempfile::tempdir().unwrap();
    let spec = StorageSpec::Directory { path: dir.path().to_path_buf(), prefix: Some("exp-b".into()) };
    let b = Storage::open(&spec).unwrap();
    b.put_bytes("ck/state", Bytes::from_static(b"b's weights")).await.unwrap();
    assert!(dir.path().join("exp-b/ck/state").is_file(), "the prefix is a directory under the root");
    // Experiment A's trial, which can write into the shared root, swaps exp-b for a link.
    std::fs::rename(dir.path().join("exp-b"), dir.path().join("moved")).unwrap();
    std::os::unix::fs::symlink(&decoy.dir, dir.path().join("exp-b")).unwrap();
    let b = Storage::open(&spec).unwrap();
    assert!(is_link_error(b.get_bytes("f").await), "a read through the swapped prefix");
    assert!(is_link_error(b.put_bytes("new", Bytes::from_static(b"x")).await), "a write through the swapped prefix");
    assert!(is_link_error(b.list("").await.map(|_| ())), "a listing through the swapped prefix");
    let _ = b.delete_prefix("nested").await;
    decoy.assert_intact("operations through a swapped prefix");
    assert!(!decoy.dir.join("new").exists());
    // The child of a spec is a deeper prefix, not a deeper root.
    assert_eq!(spec.child("pbt"), StorageSpec::Directory { path: dir.path().to_path_buf(), prefix: Some("exp-b/pbt".into()) });
}

/// drover's own browsing links (a PBT member's folder to its checkpoint) are made by the same
/// walk: a planted link on the way is not followed.
#[tokio::test]
async fn links_drover_makes_are_made_without_following_any() {
    let decoy = Decoy::new();
    let dir = tempfile::tempdir().unwrap();
    let s = Storage::open(&StorageSpec::directory(dir.path())).unwrap();
    assert!(s.make_link("pbt/experiment-1/g000_w00/checkpoint", "../../../uuid").await.unwrap());
    assert_eq!(std::fs::read_link(dir.path().join("pbt/experiment-1/g000_w00/checkpoint")).unwrap(), PathBuf::from("../../../uuid"));
    assert!(!s.make_link("pbt/experiment-1/g000_w00/checkpoint", "elsewhere").await.unwrap(), "an existing entry is left alone");
    std::os::unix::fs::symlink(&decoy.dir, dir.path().join("pbt/experiment-2")).unwrap();
    assert!(is_link_error(s.make_link("pbt/experiment-2/g000_w00/checkpoint", "../../../uuid").await.map(|_| ())));
    assert!(!decoy.dir.join("g000_w00").exists());
    decoy.assert_intact("make_link");
}

#[tokio::test]
async fn put_dir_copies_links_inside_the_directory_and_refuses_others_by_name() {
    for (name, s, _keep) in backends().await {
        let decoy = Decoy::new();
        let work = tempfile::tempdir().unwrap();
        let src = work.path().join("src");
        std::fs::create_dir_all(src.join("real")).unwrap();
        std::fs::write(src.join("real/model.bin"), b"weights").unwrap();
        symlink("real/model.bin", src.join("latest.bin")).unwrap();
        symlink(src.join("real"), src.join("alias")).unwrap();
        let stored = s.put_dir("c", &src).await.unwrap();
        assert_eq!(stored, vec![("alias/model.bin".into(), 7), ("latest.bin".into(), 7), ("real/model.bin".into(), 7)], "{name}");
        assert_eq!(&s.get_bytes("c/latest.bin").await.unwrap()[..], b"weights", "{name}");
        if let Some(path) = s.local_path("c/latest.bin") {
            assert!(path.symlink_metadata().unwrap().is_file(), "{name}: stored as a plain file");
            assert!(s.links("c").await.unwrap().is_empty(), "{name}");
        }
        // A link out of the directory, or to nothing, is refused by its relative name, and
        // nothing of that directory is stored.
        for (link, target, why) in
            [("out", decoy.file.clone(), "outside the saved directory"), ("gone", src.join("missing"), "does not exist")]
        {
            let bad = work.path().join(format!("bad-{link}"));
            std::fs::create_dir_all(bad.join("sub")).unwrap();
            std::fs::write(bad.join("a"), b"a").unwrap();
            symlink(&target, bad.join("sub").join(link)).unwrap();
            let err = s.put_dir(&format!("bad-{link}"), &bad).await.unwrap_err();
            assert!(matches!(err, StorageError::Refused { .. }), "{name}: {err}");
            let text = err.to_string();
            assert!(
                text.contains(&format!("`sub/{link}`")) && text.contains(&target.display().to_string()) && text.contains(why),
                "{name}: {text}"
            );
            assert!(s.list(&format!("bad-{link}")).await.unwrap().is_empty(), "{name}");
        }
        decoy.assert_intact(&name);
    }
}

#[tokio::test]
async fn downloads_never_write_through_a_link_in_the_destination() {
    for (name, s, _keep) in backends().await {
        let decoy = Decoy::new();
        s.put_bytes("c/x/passwd", Bytes::from_static(b"from storage")).await.unwrap();
        s.put_bytes("c/weights.bin", Bytes::from_static(b"weights")).await.unwrap();
        // A link on the way to a file is refused by name.
        let dst = tempfile::tempdir().unwrap();
        symlink(&decoy.dir, dst.path().join("x")).unwrap();
        let err = s.get_dir("c", dst.path()).await.unwrap_err();
        assert!(matches!(err, StorageError::Refused { .. }) && err.to_string().contains("/x`"), "{name}: {err}");
        decoy.assert_intact(&name);
        // A link at a file's own name is replaced by the file, its target untouched.
        let dst = tempfile::tempdir().unwrap();
        symlink(&decoy.file, dst.path().join("weights.bin")).unwrap();
        s.get_file_into("c/weights.bin", dst.path(), "weights.bin").await.unwrap();
        assert!(dst.path().join("weights.bin").symlink_metadata().unwrap().is_file(), "{name}");
        assert_eq!(std::fs::read(dst.path().join("weights.bin")).unwrap(), b"weights", "{name}");
        s.get_file("c/weights.bin", &dst.path().join("w2")).await.unwrap();
        assert!(matches!(s.get_file_into("c/weights.bin", dst.path(), "../up").await, Err(StorageError::InvalidKey { .. })));
        decoy.assert_intact(&name);
    }
}

/// An attacker that keeps swapping `ck/sub` between a real directory and a link to the decoy
/// (an atomic exchange of the two names, as fast as it can) while the storage deletes, lists
/// and reads: whatever moment an operation looks, it never reaches the decoy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_directory_swapped_for_a_link_mid_operation_never_leads_out() {
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    use std::sync::atomic::{AtomicBool, Ordering};
    for (name, s, _keep) in fs_backends().await {
        let decoy = Decoy::new();
        let dir = s.local_path("ck").unwrap();
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let attacker = {
            let (dir, target, stop) = (dir.clone(), decoy.dir.clone(), stop.clone());
            std::thread::spawn(move || {
                let (sub, link) = (dir.join("sub"), dir.join("swap"));
                while !stop.load(Ordering::Relaxed) {
                    if renameat2(AT_FDCWD, &sub, AT_FDCWD, &link, RenameFlags::RENAME_EXCHANGE).is_err() {
                        // The storage deleted one of them: make both again. Errors are
                        // expected, the storage is deleting what this makes. `sub` may be
                        // the link just now (the storage deleted the real directory under
                        // `swap`): take the link away first, or these writes would go
                        // through it into the decoy. Only this thread makes links, so
                        // `sub` stays a real directory until the next exchange.
                        if std::fs::symlink_metadata(&sub).is_ok_and(|m| m.file_type().is_symlink()) {
                            let _ = std::fs::remove_file(&sub);
                        }
                        if std::fs::symlink_metadata(&link).is_ok_and(|m| !m.file_type().is_symlink()) {
                            let _ = std::fs::remove_dir_all(&link);
                        }
                        let _ = std::fs::create_dir_all(sub.join("nested"));
                        let _ = std::fs::write(sub.join("f"), b"real f");
                        let _ = std::fs::write(sub.join("nested/shadow"), b"real shadow");
                        let _ = symlink(&target, &link);
                    }
                }
            })
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_millis(1500);
        while std::time::Instant::now() < deadline {
            let _ = s.delete_prefix("ck").await;
            if let Ok(objects) = s.list("ck").await {
                assert!(objects.iter().all(|o| !o.key.ends_with("passwd")), "{name}: listed a decoy file");
            }
            for key in ["ck/sub/f", "ck/swap/f"] {
                if let Ok(bytes) = s.get_bytes(key).await {
                    // Possibly caught halfway through the attacker's own write of it.
                    assert!(b"real f".starts_with(&bytes), "{name}: read {bytes:?}, not the real file");
                }
            }
            let _ = s.put_bytes("ck/sub/nested/new", Bytes::from_static(b"new")).await;
        }
        stop.store(true, Ordering::Relaxed);
        attacker.join().unwrap();
        decoy.assert_intact(&name);
        s.delete_prefix("ck").await.unwrap();
        decoy.assert_intact(&name);
    }
}
