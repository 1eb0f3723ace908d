//! Checkpoint files in the shared storage directory: `{root}/{uuid}/...`.
//!
//! A checkpoint is first written to `{root}/{uuid}.partial/` and renamed when complete, so a
//! crash mid-copy never leaves a half checkpoint under a real uuid.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io;
use std::path::{Component, Path, PathBuf};

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

/// A file to copy: its path relative to the checkpoint (always with `/`), and where to read it.
struct SourceFile {
    relative: String,
    path: PathBuf,
}

/// Copies every file under `src` into `{root}/{uuid}/` and returns the relative paths with their
/// sizes. On failure nothing is left under the uuid.
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

    let mut files = Vec::new();
    collect(&src_real, &src_real, "", &mut vec![src_real.clone()], &mut files)?;

    let partial = root.join(format!("{uuid}.partial"));
    let result = copy_all(&files, &partial, fsync);
    let resources = match result {
        Ok(resources) => resources,
        Err(err) => {
            let _ = fs::remove_dir_all(&partial);
            return Err(err);
        }
    };
    let done = root.join(uuid);
    if let Err(err) = fs::rename(&partial, &done) {
        let _ = fs::remove_dir_all(&partial);
        return Err(SdkError::io("rename the finished checkpoint to", done)(err));
    }
    if fsync {
        // Makes the rename itself durable.
        sync_dir(root)?;
    }
    Ok(resources)
}

fn copy_all(files: &[SourceFile], partial: &Path, fsync: bool) -> Result<BTreeMap<String, u64>, SdkError> {
    fs::create_dir(partial).map_err(SdkError::io("create", partial))?;
    let mut resources = BTreeMap::new();
    let mut dirs = vec![partial.to_path_buf()];
    for file in files {
        let dest = partial.join(&file.relative);
        let parent = dest.parent().expect("a file under partial has a parent");
        if !parent.exists() {
            fs::create_dir_all(parent).map_err(SdkError::io("create", parent))?;
            let mut dir = parent;
            while dir != partial && !dirs.iter().any(|known| known == dir) {
                dirs.push(dir.to_path_buf());
                dir = dir.parent().expect("inside partial");
            }
        }
        let size = copy_file(&file.path, &dest, true)?;
        resources.insert(file.relative.clone(), size);
    }
    if fsync {
        // Durable before registered: the contents, synced together (the disk can write them
        // in parallel; one file at a time would wait for each in turn), then the entries.
        let copies: Vec<PathBuf> = files.iter().map(|f| partial.join(&f.relative)).collect();
        sync_files(&copies)?;
        for dir in &dirs {
            sync_dir(dir)?;
        }
    }
    Ok(resources)
}

/// Walks `dir` (a real, canonical path) and lists its regular files. Symlinks are followed when
/// they stay inside the checkpoint directory and refused when they lead out of it, which would
/// copy unrelated files (or a whole home directory) into storage.
fn collect(
    root: &Path,
    dir: &Path,
    prefix: &str,
    ancestors: &mut Vec<PathBuf>,
    out: &mut Vec<SourceFile>,
) -> Result<(), SdkError> {
    let mut entries = fs::read_dir(dir)
        .map_err(SdkError::io("list", dir))?
        .collect::<Result<Vec<_>, io::Error>>()
        .map_err(SdkError::io("list", dir))?;
    // Sorted so that the copy order (and any error) does not depend on the file system.
    entries.sort_by_key(|entry| entry.file_name());
    for entry in entries {
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            return Err(SdkError::Checkpoint(format!("{} has a name that is not UTF-8", path.display())));
        };
        let relative = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
        let meta = fs::symlink_metadata(&path).map_err(SdkError::io("read", &path))?;
        let (real, meta) = if meta.file_type().is_symlink() {
            let target = fs::canonicalize(&path).map_err(SdkError::io("follow the symlink", &path))?;
            if !target.starts_with(root) {
                return Err(SdkError::Checkpoint(format!(
                    "symlink {} points to {}, outside the checkpoint directory",
                    path.display(),
                    target.display()
                )));
            }
            let meta = fs::metadata(&target).map_err(SdkError::io("read", &target))?;
            (target, meta)
        } else {
            (path.clone(), meta)
        };
        if meta.is_file() {
            out.push(SourceFile { relative, path: real });
        } else if meta.is_dir() {
            if ancestors.contains(&real) {
                return Err(SdkError::Checkpoint(format!("symlink {} makes a cycle", path.display())));
            }
            ancestors.push(real.clone());
            collect(root, &real, &relative, ancestors, out)?;
            ancestors.pop();
        } else {
            return Err(SdkError::Checkpoint(format!(
                "{} is neither a file nor a directory (a socket or device?)",
                path.display()
            )));
        }
    }
    Ok(())
}

/// Streams `src` into `dest` (never the whole file in memory; the kernel copies) and returns
/// the bytes copied. `fresh`: the destination must not exist yet (a new checkpoint); otherwise
/// it is replaced. Not synced: the caller decides whether the copy must be durable.
fn copy_file(src: &Path, dest: &Path, fresh: bool) -> Result<u64, SdkError> {
    let mut reader = File::open(src).map_err(SdkError::io("open", src))?;
    let mut writer =
        if fresh { File::create_new(dest) } else { File::create(dest) }.map_err(SdkError::io("create", dest))?;
    io::copy(&mut reader, &mut writer).map_err(SdkError::io("copy into", dest))
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

/// Copies the files of checkpoint `uuid`, as registered with the master, into `dest`, and checks
/// that each has the registered size (a truncated copy in storage must not load silently).
pub(crate) fn read(root: &Path, uuid: &str, resources: &BTreeMap<String, u64>, dest: &Path) -> Result<(), SdkError> {
    validate_uuid(uuid)?;
    let src = root.join(uuid);
    if !src.is_dir() {
        return Err(SdkError::Checkpoint(format!("checkpoint {uuid} is not in storage at {}", src.display())));
    }
    fs::create_dir_all(dest).map_err(SdkError::io("create", dest))?;
    for (relative, expected) in resources {
        let relative_path = safe_relative(relative)?;
        let from = src.join(&relative_path);
        let to = dest.join(&relative_path);
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).map_err(SdkError::io("create", parent))?;
        }
        let size = copy_file(&from, &to, false)?;
        if size != *expected {
            return Err(SdkError::Checkpoint(format!(
                "{relative} of checkpoint {uuid} has {size} bytes in storage, but {expected} were saved"
            )));
        }
    }
    Ok(())
}

/// A resource name from the master must stay below the destination directory.
fn safe_relative(relative: &str) -> Result<PathBuf, SdkError> {
    let path = Path::new(relative);
    let ok = !relative.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)));
    if ok {
        Ok(path.to_path_buf())
    } else {
        Err(SdkError::Checkpoint(format!("unsafe file name {relative:?} in checkpoint")))
    }
}

/// Runs storage IO from this blocking SDK on a small runtime of its own.
fn block_on<T>(work: impl std::future::Future<Output = T>) -> Result<T, SdkError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| SdkError::Checkpoint(format!("cannot start an IO runtime: {e}")))?;
    Ok(runtime.block_on(work))
}

/// Streams every file under `src` to `{uuid}/...` in an object store (S3) and returns the
/// relative paths with their sizes.
pub(crate) fn upload(spec: &drover_storage::StorageSpec, src: &Path, uuid: &str) -> Result<BTreeMap<String, u64>, SdkError> {
    validate_uuid(uuid)?;
    let storage = drover_storage::Storage::open(spec).map_err(|e| SdkError::Checkpoint(e.to_string()))?;
    let stored = block_on(storage.put_dir(uuid, src))?.map_err(|e| {
        let _ = block_on(storage.delete_prefix(uuid));
        SdkError::Checkpoint(format!("saving checkpoint {uuid}: {e}"))
    })?;
    Ok(stored.into_iter().collect())
}

/// Streams checkpoint `uuid` from an object store into `dest`, checking each file's size
/// against the registered list (and that nothing registered is missing).
pub(crate) fn download(spec: &drover_storage::StorageSpec, uuid: &str, resources: &BTreeMap<String, u64>, dest: &Path) -> Result<(), SdkError> {
    validate_uuid(uuid)?;
    let storage = drover_storage::Storage::open(spec).map_err(|e| SdkError::Checkpoint(e.to_string()))?;
    fs::create_dir_all(dest).map_err(SdkError::io("create", dest))?;
    block_on(async {
        for (relative, expected) in resources {
            let to = dest.join(safe_relative(relative)?);
            let size = storage
                .get_file(&format!("{uuid}/{relative}"), &to)
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

pub(crate) fn remove_remote(spec: &drover_storage::StorageSpec, uuid: &str) {
    if validate_uuid(uuid).is_ok()
        && let Ok(storage) = drover_storage::Storage::open(spec)
    {
        let _ = block_on(storage.delete_prefix(uuid));
    }
}

/// Removes a saved checkpoint that the master refused to register: nothing refers to it.
pub(crate) fn remove(root: &Path, uuid: &str) {
    if validate_uuid(uuid).is_ok() {
        let _ = fs::remove_dir_all(root.join(uuid));
    }
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
        let expected: BTreeMap<String, u64> = [
            ("state.json".to_string(), 12),
            ("sub/deeper/notes.txt".to_string(), 5),
            ("weights.bin".to_string(), 100_000),
        ]
        .into();
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

        let err = write(&src, &root, &uuid, true).unwrap_err();
        assert!(err.to_string().contains("outside the checkpoint directory"), "{err}");
        assert_eq!(fs::read_dir(&root).unwrap().count(), 0, "no partial or final directory");
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
