//! Tests of context extraction, copying and the cache.

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

fn extract_raw(entries: &[(&str, EntryType, Option<&str>, &[u8])]) -> (tempfile::TempDir, Result<(), ContextError>) {
    let root = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(root.path().join("work")).expect("mkdir");
    let result = extract_tar(&raw_tar(entries)[..], &root.path().join("work"), &ExtractLimits::default());
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
        ("data/link", EntryType::Symlink, Some("../src/train.py"), b""),
    ]);
    result.expect("extract");
    let work = root.path().join("work");
    assert_eq!(std::fs::read_to_string(work.join("src/train.py")).expect("read"), "print('hi')\n");
    assert_eq!(std::fs::read_to_string(work.join("data/link")).expect("read through link"), "print('hi')\n");
}

#[test]
fn skips_pax_global_headers() {
    // `git archive` starts with one, named `pax_global_header`; it is metadata, not a file.
    let (root, result) = extract_raw(&[
        ("pax_global_header", EntryType::XGlobalHeader, None, b"52 comment=0123456789abcdef0123456789abcdef01234567\n"),
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
    let (_root, result) = extract_raw(&[("a", EntryType::Symlink, Some("."), b""), ("b", EntryType::Symlink, Some("a/.."), b"")]);
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
    for (name, entry_type, what) in
        [("pipe", EntryType::Fifo, "fifos"), ("null", EntryType::Char, "character devices"), ("sda", EntryType::Block, "block devices")]
    {
        let (root, result) = extract_raw(&[("ok.txt", EntryType::Regular, None, b"x"), (name, entry_type, None, b"")]);
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
    let limits = ExtractLimits { max_entries: 3, ..ExtractLimits::default() };
    let root = tempfile::tempdir().expect("tempdir");
    let three =
        raw_tar(&[("a", EntryType::Regular, None, b"a"), ("b", EntryType::Regular, None, b"b"), ("c", EntryType::Regular, None, b"c")]);
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
    assert!(matches!(result, Err(ContextError::TooManyEntries { limit: MAX_CONTEXT_ENTRIES })), "{result:?}");
    let exactly = &tarball[512..];
    extract_tar(exactly, root.path(), &ExtractLimits::default()).expect("exactly the limit is accepted");
}

#[test]
fn refuses_contexts_unpacking_past_the_size_bound() {
    let limits = ExtractLimits { max_unpacked_bytes: 10, ..ExtractLimits::default() };
    let root = tempfile::tempdir().expect("tempdir");
    let fits = raw_tar(&[("a", EntryType::Regular, None, b"12345"), ("b", EntryType::Regular, None, b"12345")]);
    extract_tar(&fits[..], root.path(), &limits).expect("10 bytes are fine");
    let over = raw_tar(&[("a", EntryType::Regular, None, b"12345"), ("big", EntryType::Regular, None, b"123456")]);
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
    std::fs::set_permissions(source.join("run.sh"), std::fs::Permissions::from_mode(0o755)).expect("chmod");

    copy_tree(&source, &copy).expect("copy");
    assert_eq!(std::fs::read_to_string(copy.join("d/e/file")).expect("read"), "data");
    assert_eq!(std::fs::read_link(copy.join("sym")).expect("readlink"), Path::new("d/e/file"));
    let file = std::fs::metadata(copy.join("d/e/file")).expect("stat");
    let twin = std::fs::metadata(copy.join("twin")).expect("stat");
    assert_eq!(file.ino(), twin.ino(), "hard links stay links in the copy");
    assert_ne!(file.ino(), std::fs::metadata(source.join("d/e/file")).expect("stat").ino(), "but not to the source");
    let mode = std::fs::metadata(copy.join("run.sh")).expect("stat").permissions().mode();
    assert_eq!(mode & 0o111, 0o111, "executable bits kept");
    // Writing to the copy leaves the source alone.
    std::fs::write(copy.join("d/e/file"), "changed").expect("write");
    assert_eq!(std::fs::read_to_string(source.join("d/e/file")).expect("read"), "data");
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
    assert!(matches!(result, Err(ContextError::Corrupt(_))), "{result:?}");
}
