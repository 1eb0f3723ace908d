//! Checkpoint files in the cluster's checkpoint storage, under `{uuid}/...`: a directory
//! shared by the master and the agents (`{root}/{uuid}/`), or an object store (S3).
//!
//! On a file system a checkpoint is first written to `{root}/{uuid}.partial/` and renamed when
//! complete, so a crash mid-copy never leaves a half checkpoint under a real uuid. On S3 the
//! files are streamed and registered with the master only once all are stored.
//!
//! Symbolic links, the same rule for every storage, all of it enforced by `drover-storage`:
//! - Saving copies a link inside the saved directory as what it points to (a file, or a
//!   directory walked in turn), as `cp -L` would; a link whose target leaves the directory or
//!   does not exist, a link cycle, a fifo, socket or device is refused, naming the file, and
//!   nothing is saved. A checkpoint thus never pulls in outside files, nor holds a link.
//! - Restoring never follows a link in storage (another trial may have planted one in a
//!   shared checkpoint directory): a file reached through one is an error, not the target's
//!   bytes. It never writes through a link already in the destination either: a link on the
//!   way to a file (`x -> /etc` when restoring `x/passwd`) is refused by name, and a link at
//!   a file's own name is replaced by the file, its target untouched.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::path::{Component, Path, PathBuf};

use drover_storage::{Storage, StorageError, StorageSpec};

use crate::SdkError;

pub(crate) fn new_uuid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A uuid becomes a directory name under the storage root and a URL path segment: it must not
/// be able to point anywhere else.
pub(crate) fn validate_uuid(uuid: &str) -> Result<(), SdkError> {
    let bad = uuid.is_empty()
        || uuid.starts_with('.')
        || uuid.contains("..")
        || uuid.chars().any(|c| c == '/' || c == '\\' || c.is_control() || c.is_whitespace());
    if bad { Err(SdkError::Checkpoint(format!("{uuid:?} is not a valid checkpoint uuid"))) } else { Ok(()) }
}

fn open_storage(spec: &StorageSpec) -> Result<Storage, SdkError> {
    Storage::open(spec).map_err(|e| SdkError::Checkpoint(e.to_string()))
}

fn directory(root: &Path) -> Result<Storage, SdkError> {
    open_storage(&StorageSpec::Directory { path: root.to_path_buf(), prefix: None })
}

/// Copies every file under `src` into `{root}/{uuid}/` (by the rule in the module docs) and
/// returns the relative paths with their sizes. On failure nothing is left under the uuid.
/// `fsync`: make the copy durable (contents and directory entries) before the rename.
pub(crate) fn write(src: &Path, root: &Path, uuid: &str, fsync: bool) -> Result<BTreeMap<String, u64>, SdkError> {
    validate_uuid(uuid)?;
    let src_real = fs::canonicalize(src).map_err(SdkError::io("read the checkpoint directory", src))?;
    if !src_real.is_dir() {
        return Err(SdkError::Checkpoint(format!("{} is not a directory", src.display())));
    }
    fs::create_dir_all(root).map_err(SdkError::io("create the checkpoint storage directory", root))?;
    let root_real = fs::canonicalize(root).map_err(SdkError::io("read the checkpoint storage directory", root))?;
    if root_real.starts_with(&src_real) {
        // Every save would copy all earlier checkpoints into the new one.
        return Err(SdkError::Checkpoint(format!(
            "the storage directory {} is inside the directory to save {}",
            root.display(),
            src.display()
        )));
    }
    let storage = directory(&root_real)?;
    let partial_key = format!("{uuid}.partial");
    let partial = root_real.join(&partial_key);
    // Made here, not by the copy: create_dir fails on anything already by that name (a link
    // included), so the copy starts from a directory of our own.
    fs::create_dir(&partial).map_err(SdkError::io("create", &partial))?;
    let copied = block_on(storage.put_dir(&partial_key, &src_real)).and_then(|stored| {
        let stored = stored.map_err(|e| SdkError::Checkpoint(format!("saving checkpoint {uuid}: {e}")))?;
        if fsync {
            sync_partial(&partial, &stored)?;
        }
        Ok(stored)
    });
    let resources = match copied {
        Ok(stored) => stored.into_iter().collect(),
        Err(err) => {
            let _ = block_on(storage.delete_prefix(&partial_key));
            return Err(err);
        }
    };
    let done = root_real.join(uuid);
    if let Err(err) = fs::rename(&partial, &done) {
        let _ = block_on(storage.delete_prefix(&partial_key));
        return Err(SdkError::io("rename the finished checkpoint to", done)(err));
    }
    if fsync {
        // Makes the rename itself durable.
        sync_dir(&root_real)?;
    }
    Ok(resources)
}

/// Durable before registered: the contents, synced together (the disk can write them in
/// parallel; one file at a time would wait for each in turn), then the directory entries.
fn sync_partial(partial: &Path, stored: &[(String, u64)]) -> Result<(), SdkError> {
    let copies: Vec<PathBuf> = stored.iter().map(|(relative, _)| partial.join(relative)).collect();
    sync_files(&copies)?;
    let mut dirs: Vec<PathBuf> = vec![partial.to_path_buf()];
    for copy in &copies {
        let mut dir = copy.parent();
        while let Some(d) = dir.filter(|d| *d != partial) {
            dirs.push(d.to_path_buf());
            dir = d.parent();
        }
    }
    dirs.sort();
    dirs.dedup();
    for dir in dirs.iter().rev() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// fdatasync on every file, a few at a time in parallel.
fn sync_files(files: &[PathBuf]) -> Result<(), SdkError> {
    const THREADS: usize = 4;
    if files.is_empty() {
        return Ok(());
    }
    let per_thread = files.len().div_ceil(THREADS);
    std::thread::scope(|scope| {
        let workers: Vec<_> = files
            .chunks(per_thread)
            .map(|chunk| {
                scope.spawn(move || -> Result<(), SdkError> {
                    for path in chunk {
                        File::open(path).and_then(|f| f.sync_data()).map_err(SdkError::io("sync", path))?;
                    }
                    Ok(())
                })
            })
            .collect();
        workers.into_iter().try_for_each(|w| w.join().unwrap_or_else(|_| Err(SdkError::Checkpoint("a sync thread panicked".into()))))
    })
}

fn sync_dir(dir: &Path) -> Result<(), SdkError> {
    File::open(dir).and_then(|handle| handle.sync_all()).map_err(SdkError::io("sync the directory", dir))
}

/// Copies the files of checkpoint `uuid`, as registered with the master, from `{root}/{uuid}/`
/// into `dest`, and checks that each has the registered size (a truncated copy in storage must
/// not load silently).
pub(crate) fn read(root: &Path, uuid: &str, resources: &BTreeMap<String, u64>, dest: &Path) -> Result<(), SdkError> {
    validate_uuid(uuid)?;
    let src = root.join(uuid);
    match fs::symlink_metadata(&src) {
        Ok(meta) if meta.is_dir() => {}
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(SdkError::Checkpoint(format!("checkpoint {uuid}: {}", StorageError::Link { key: uuid.to_string() })));
        }
        _ => return Err(SdkError::Checkpoint(format!("checkpoint {uuid} is not in storage at {}", src.display()))),
    }
    fetch(&directory(root)?, uuid, resources, dest)
}

/// Streams checkpoint `uuid` from an object store into `dest`, checking each file's size
/// against the registered list (and that nothing registered is missing).
pub(crate) fn download(spec: &StorageSpec, uuid: &str, resources: &BTreeMap<String, u64>, dest: &Path) -> Result<(), SdkError> {
    validate_uuid(uuid)?;
    fetch(&open_storage(spec)?, uuid, resources, dest)
}

/// Copies the registered files of `uuid` into `dest` without following a link in storage or in
/// `dest` (both enforced by [`Storage::get_file_into`]).
fn fetch(storage: &Storage, uuid: &str, resources: &BTreeMap<String, u64>, dest: &Path) -> Result<(), SdkError> {
    fs::create_dir_all(dest).map_err(SdkError::io("create", dest))?;
    block_on(async {
        for (relative, expected) in resources {
            check_relative(relative)?;
            let size = storage
                .get_file_into(&format!("{uuid}/{relative}"), dest, relative)
                .await
                .map_err(|e| SdkError::Checkpoint(format!("restoring {relative} of checkpoint {uuid}: {e}")))?;
            if size != *expected {
                return Err(SdkError::Checkpoint(format!(
                    "{relative} of checkpoint {uuid} has {size} bytes in storage, but {expected} were saved"
                )));
            }
        }
        Ok(())
    })?
}

/// A resource name from the master must stay below the destination directory.
fn check_relative(relative: &str) -> Result<(), SdkError> {
    let path = Path::new(relative);
    let ok = !relative.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)));
    if ok { Ok(()) } else { Err(SdkError::Checkpoint(format!("unsafe file name {relative:?} in checkpoint"))) }
}

/// Runs storage IO from this blocking SDK on a small runtime of its own.
fn block_on<T>(work: impl std::future::Future<Output = T>) -> Result<T, SdkError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| SdkError::Checkpoint(format!("cannot start an IO runtime: {e}")))?;
    Ok(runtime.block_on(work))
}

/// Streams every file under `src` to `{uuid}/...` in an object store (S3), by the rule in the
/// module docs, and returns the relative paths with their sizes.
pub(crate) fn upload(spec: &StorageSpec, src: &Path, uuid: &str) -> Result<BTreeMap<String, u64>, SdkError> {
    validate_uuid(uuid)?;
    let storage = open_storage(spec)?;
    let stored = block_on(storage.put_dir(uuid, src))?.map_err(|e| {
        let _ = block_on(storage.delete_prefix(uuid));
        SdkError::Checkpoint(format!("saving checkpoint {uuid}: {e}"))
    })?;
    Ok(stored.into_iter().collect())
}

pub(crate) fn remove_remote(spec: &StorageSpec, uuid: &str) {
    if validate_uuid(uuid).is_ok()
        && let Ok(storage) = Storage::open(spec)
    {
        let _ = block_on(storage.delete_prefix(uuid));
    }
}

/// Removes a saved checkpoint that the master refused to register: nothing refers to it.
/// Through the storage, so a link in it is removed itself, never followed.
pub(crate) fn remove(root: &Path, uuid: &str) {
    remove_remote(&StorageSpec::Directory { path: root.to_path_buf(), prefix: None }, uuid);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_file(path: &Path, contents: &[u8]) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, contents).unwrap();
    }

    #[test]
    fn uuids_cannot_leave_the_storage_root() {
        validate_uuid(&new_uuid()).unwrap();
        validate_uuid("3f1c2a8e-0000-4000-8000-000000000000").unwrap();
        for bad in ["", "..", "../x", "a/b", "a\\b", ".hidden", "x..y", "a b", "a\nb"] {
            assert!(validate_uuid(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn saves_a_tree_and_reads_it_back() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        write_file(&src.join("weights.bin"), &[7u8; 100_000]);
        write_file(&src.join("state.json"), b"{\"epoch\": 3}");
        write_file(&src.join("sub/deeper/notes.txt"), b"hello");
        fs::create_dir_all(src.join("empty")).unwrap();
        let root = tmp.path().join("storage");
        let uuid = new_uuid();

        let resources = write(&src, &root, &uuid, true).unwrap();
        let expected: BTreeMap<String, u64> =
            [("state.json".to_string(), 12), ("sub/deeper/notes.txt".to_string(), 5), ("weights.bin".to_string(), 100_000)].into();
        assert_eq!(resources, expected);
        assert!(root.join(&uuid).join("sub/deeper/notes.txt").is_file());
        assert!(!root.join(format!("{uuid}.partial")).exists());

        let dest = tmp.path().join("restored");
        read(&root, &uuid, &resources, &dest).unwrap();
        assert_eq!(fs::read(dest.join("weights.bin")).unwrap(), vec![7u8; 100_000]);
        assert_eq!(fs::read(dest.join("sub/deeper/notes.txt")).unwrap(), b"hello");
    }

    #[test]
    fn a_failed_save_leaves_nothing_behind() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        write_file(&src.join("a.txt"), b"a");
        let outside = tmp.path().join("secret.txt");
        write_file(&outside, b"secret");
        std::os::unix::fs::symlink(&outside, src.join("link")).unwrap();
        let root = tmp.path().join("storage");
        let uuid = new_uuid();

        let err = write(&src, &root, &uuid, true).unwrap_err().to_string();
        assert!(err.contains("`link`") && err.contains("outside the saved directory") && err.contains("secret.txt"), "{err}");
        assert_eq!(fs::read_dir(&root).unwrap().count(), 0, "no partial or final directory");

        // Likewise a link that leads nowhere.
        fs::remove_file(src.join("link")).unwrap();
        std::os::unix::fs::symlink("missing", src.join("dangling")).unwrap();
        let err = write(&src, &root, &uuid, true).unwrap_err().to_string();
        assert!(err.contains("`dangling`") && err.contains("does not exist"), "{err}");
        assert_eq!(fs::read_dir(&root).unwrap().count(), 0);
    }

    #[test]
    fn symlinks_inside_the_directory_are_followed() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        write_file(&src.join("real/model.bin"), b"weights");
        std::os::unix::fs::symlink(src.join("real/model.bin"), src.join("latest.bin")).unwrap();
        std::os::unix::fs::symlink("real", src.join("alias")).unwrap();
        let resources = write(&src, &tmp.path().join("storage"), &new_uuid(), false).unwrap();
        let names: Vec<&str> = resources.keys().map(String::as_str).collect();
        assert_eq!(names, ["alias/model.bin", "latest.bin", "real/model.bin"]);
        // Stored as plain copies: a saved checkpoint holds no link.
        let stored = tmp.path().join("storage").join(only_entry(&tmp.path().join("storage")));
        assert!(fs::symlink_metadata(stored.join("latest.bin")).unwrap().is_file());
        assert!(fs::symlink_metadata(stored.join("alias")).unwrap().is_dir());
    }

    /// The one checkpoint in `root`.
    fn only_entry(root: &Path) -> String {
        let names: Vec<String> = fs::read_dir(root).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert_eq!(names.len(), 1, "{names:?}");
        names[0].clone()
    }

    /// A decoy directory and file in the test's own tempdir, for links to point at.
    fn decoys(tmp: &Path) -> (PathBuf, PathBuf) {
        let dir = tmp.join("decoy-dir");
        write_file(&dir.join("notes.txt"), b"decoy");
        write_file(&dir.join("deeper/notes.txt"), b"decoy");
        let file = tmp.join("decoy-file");
        write_file(&file, b"0123456789");
        (dir, file)
    }

    fn assert_decoys_intact(dir: &Path, file: &Path) {
        assert_eq!(fs::read(dir.join("notes.txt")).unwrap(), b"decoy");
        assert_eq!(fs::read(dir.join("deeper/notes.txt")).unwrap(), b"decoy");
        assert_eq!(fs::read_dir(dir).unwrap().count(), 2, "nothing was added to the decoy directory");
        assert_eq!(fs::read(file).unwrap(), b"0123456789");
    }

    #[test]
    fn restore_never_follows_a_link_in_storage() {
        let tmp = tempfile::tempdir().unwrap();
        let (decoy_dir, decoy_file) = decoys(tmp.path());
        let src = tmp.path().join("src");
        write_file(&src.join("w.bin"), b"abcdefghij");
        write_file(&src.join("sub/deeper/notes.txt"), b"hello");
        let root = tmp.path().join("storage");
        let uuid = new_uuid();
        let resources = write(&src, &root, &uuid, false).unwrap();
        // Another trial swaps the files for links of the same sizes.
        fs::remove_file(root.join(&uuid).join("w.bin")).unwrap();
        std::os::unix::fs::symlink(&decoy_file, root.join(&uuid).join("w.bin")).unwrap();
        fs::remove_dir_all(root.join(&uuid).join("sub")).unwrap();
        std::os::unix::fs::symlink(&decoy_dir, root.join(&uuid).join("sub")).unwrap();
        for (name, only) in [("w.bin", "w.bin"), ("sub", "sub/deeper/notes.txt")] {
            let one: BTreeMap<String, u64> = resources.iter().filter(|(k, _)| *k == only).map(|(k, v)| (k.clone(), *v)).collect();
            let dest = tmp.path().join(format!("restored-{name}"));
            let err = read(&root, &uuid, &one, &dest).unwrap_err().to_string();
            assert!(err.contains(&format!("`{uuid}/{name}` is a symbolic link")), "{err}");
            assert_eq!(fs::read_dir(&dest).unwrap().count(), 0, "nothing of the decoy was copied");
        }
        // A checkpoint directory that is itself a link.
        let linked = new_uuid();
        std::os::unix::fs::symlink(&decoy_dir, root.join(&linked)).unwrap();
        let one = BTreeMap::from([("notes.txt".to_string(), 5)]);
        let err = read(&root, &linked, &one, &tmp.path().join("restored-linked")).unwrap_err().to_string();
        assert!(err.contains("is a symbolic link"), "{err}");
        // And removing it removes the links, not what they point to.
        remove(&root, &uuid);
        remove(&root, &linked);
        assert_eq!(fs::read_dir(&root).unwrap().count(), 0);
        assert_decoys_intact(&decoy_dir, &decoy_file);
    }

    #[test]
    fn restore_never_writes_through_a_link_in_the_destination() {
        let tmp = tempfile::tempdir().unwrap();
        let (decoy_dir, decoy_file) = decoys(tmp.path());
        let src = tmp.path().join("src");
        write_file(&src.join("w.bin"), b"abcdefghij");
        write_file(&src.join("sub/deeper/notes.txt"), b"hello");
        let root = tmp.path().join("storage");
        let uuid = new_uuid();
        let resources = write(&src, &root, &uuid, false).unwrap();

        // A link on the way to a file: refused, naming it.
        let dest = tmp.path().join("d1");
        fs::create_dir_all(&dest).unwrap();
        std::os::unix::fs::symlink(&decoy_dir, dest.join("sub")).unwrap();
        let err = read(&root, &uuid, &resources, &dest).unwrap_err().to_string();
        assert!(err.contains("/d1/sub`") && err.contains("symbolic link"), "{err}");
        assert_decoys_intact(&decoy_dir, &decoy_file);

        // A link at a file's own name: replaced by the file, its target untouched.
        let dest = tmp.path().join("d2");
        fs::create_dir_all(&dest).unwrap();
        std::os::unix::fs::symlink(&decoy_file, dest.join("w.bin")).unwrap();
        read(&root, &uuid, &resources, &dest).unwrap();
        assert!(fs::symlink_metadata(dest.join("w.bin")).unwrap().is_file());
        assert_eq!(fs::read(dest.join("w.bin")).unwrap(), b"abcdefghij");
        assert_eq!(fs::read(dest.join("sub/deeper/notes.txt")).unwrap(), b"hello");
        assert_decoys_intact(&decoy_dir, &decoy_file);
    }

    #[test]
    fn symlink_cycles_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        write_file(&src.join("sub/a.txt"), b"a");
        std::os::unix::fs::symlink("..", src.join("sub/up")).unwrap();
        let err = write(&src, &tmp.path().join("storage"), &new_uuid(), false).unwrap_err();
        assert!(err.to_string().contains("cycle"), "{err}");
    }

    #[test]
    fn storage_inside_the_saved_directory_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        write_file(&tmp.path().join("a.txt"), b"a");
        let err = write(tmp.path(), &tmp.path().join("storage"), &new_uuid(), false).unwrap_err();
        assert!(err.to_string().contains("is inside the directory to save"), "{err}");
    }

    #[test]
    fn restore_checks_sizes_and_names() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        write_file(&src.join("w.bin"), b"0123456789");
        let root = tmp.path().join("storage");
        let uuid = new_uuid();
        let mut resources = write(&src, &root, &uuid, true).unwrap();

        // Storage lost bytes since the save.
        fs::write(root.join(&uuid).join("w.bin"), b"01234").unwrap();
        let err = read(&root, &uuid, &resources, &tmp.path().join("d1")).unwrap_err();
        assert!(err.to_string().contains("has 5 bytes in storage, but 10 were saved"), "{err}");

        resources.insert("../escape".into(), 1);
        let err = read(&root, &uuid, &resources, &tmp.path().join("d2")).unwrap_err();
        assert!(err.to_string().contains("unsafe file name"), "{err}");

        let err = read(&root, &new_uuid(), &BTreeMap::new(), &tmp.path().join("d3")).unwrap_err();
        assert!(err.to_string().contains("is not in storage"), "{err}");
    }
}
