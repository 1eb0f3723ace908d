//! The file-system side of [`crate::Storage`], and of writing into a local directory.
//!
//! Trials are untrusted and write into the same tree the master later reads, serves and
//! deletes, so a symbolic link in it (`etcdir -> /etc`) must never be followed: a listing
//! would show `/etc`'s files as the checkpoint's, a delete would empty `/etc`. Path-based
//! calls cannot promise that (checking a path and then using it races with an attacker
//! swapping a directory for a link in between), so everything here works from directory
//! descriptors: from the canonical root, each component is opened with
//! `openat(O_NOFOLLOW | O_DIRECTORY)`, files with `O_NOFOLLOW` and checked with `fstat`,
//! and removal is `unlinkat`, which removes a link itself. A link is always a link: listed as
//! one, refused when read, removed (never descended into) when a tree is deleted.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl, openat, renameat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};

use crate::{StorageError, StoredObject, TMP_PREFIX};

/// Deeper trees are refused rather than walked: every level holds a descriptor open, and no
/// real checkpoint is this deep.
const MAX_DEPTH: usize = 256;
/// How often an entry that changes kind under us (a directory swapped for a link) is looked
/// at again before giving up.
const RETRIES: usize = 8;

/// What a walk found where a directory was expected.
#[derive(Debug)]
pub(crate) enum Stop {
    /// Nothing by that name (or the root itself is missing).
    Missing,
    /// Component `i` (0-based) is a symbolic link.
    Link(usize),
    /// Component `i` is something other than a directory.
    NotDir(usize),
    /// A component could not be opened or created.
    Os(Errno),
}

/// What a name in a directory is, looked at without following it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    File(u64),
    Dir,
    Link,
    /// A fifo, socket or device: never read, never listed.
    Other,
}

fn kind_of(st: &FileStat) -> Kind {
    let format = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
    if format == SFlag::S_IFREG {
        Kind::File(st.st_size as u64)
    } else if format == SFlag::S_IFDIR {
        Kind::Dir
    } else if format == SFlag::S_IFLNK {
        Kind::Link
    } else {
        Kind::Other
    }
}

/// The kind of `name` in `dir`, or `None` when it does not exist.
fn kind_at<P: ?Sized + nix::NixPath>(dir: BorrowedFd<'_>, name: &P) -> Result<Option<Kind>, Errno> {
    match fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(kind_of(&st))),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// Opens the directory `name` in `dir` only if it is one: a link there fails (ELOOP or
/// ENOTDIR) instead of being followed.
fn open_dir_at<P: ?Sized + nix::NixPath>(dir: BorrowedFd<'_>, name: &P) -> Result<OwnedFd, Errno> {
    openat(dir, name, dir_flags(), Mode::empty())
}

/// Opens `root`, the canonical path the operator configured: trusted as given. Whatever lies
/// below it (an experiment's `storage_path` included) is a key prefix, walked without following.
/// With `create`, a root removed since the storage was opened is made again.
fn open_root(root: &Path, create: bool) -> Result<OwnedFd, Errno> {
    match nix::fcntl::open(root, dir_flags(), Mode::empty()) {
        Err(Errno::ENOENT) if create => {
            std::fs::create_dir_all(root).map_err(|e| e.raw_os_error().map_or(Errno::EIO, Errno::from_raw))?;
            nix::fcntl::open(root, dir_flags(), Mode::empty())
        }
        other => other,
    }
}

/// Why opening component `i` (`name` in `dir`) as a directory failed.
fn classify(dir: BorrowedFd<'_>, name: &str, i: usize, err: Errno) -> Stop {
    match err {
        Errno::ENOENT => Stop::Missing,
        // O_NOFOLLOW | O_DIRECTORY on a link fails with ELOOP or ENOTDIR depending on the
        // kernel; lstat tells which it was.
        Errno::ELOOP | Errno::ENOTDIR => match kind_at(dir, name) {
            Ok(Some(Kind::Link)) => Stop::Link(i),
            Ok(None) => Stop::Missing,
            Ok(Some(Kind::Dir)) => Stop::Os(err),
            Ok(Some(_)) => Stop::NotDir(i),
            Err(e) => Stop::Os(e),
        },
        e => Stop::Os(e),
    }
}

/// Opens the directory `parts` below `dir`, one component at a time, never following a link.
/// With `create`, missing directories are made; one made by someone else in between (a link
/// planted after our `mkdirat`) is then opened with the same checks as any other.
pub(crate) fn open_dirs(mut dir: OwnedFd, parts: &[&str], create: bool) -> Result<OwnedFd, Stop> {
    for (i, name) in parts.iter().enumerate() {
        dir = match open_dir_at(dir.as_fd(), *name) {
            Ok(next) => next,
            Err(Errno::ENOENT) if create => {
                match mkdirat(dir.as_fd(), *name, Mode::from_bits_truncate(0o777)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(Stop::Os(e)),
                }
                open_dir_at(dir.as_fd(), *name).map_err(|e| classify(dir.as_fd(), name, i, e))?
            }
            Err(e) => return Err(classify(dir.as_fd(), name, i, e)),
        };
    }
    Ok(dir)
}

/// A tree to work in: a storage's canonical root, or a local directory being restored into.
pub(crate) struct Tree<'a> {
    pub root: &'a Path,
    /// Whether a link met on the way is one in storage (an error the caller can match) or
    /// one in a destination directory (refused by name).
    pub in_storage: bool,
}

impl Tree<'_> {
    /// The error for a walk that stopped at `stop` on the way to `key` (split into `parts`).
    /// `missing` is what a missing component means for this operation.
    fn error(&self, stop: Stop, key: &str, parts: &[&str], action: &'static str, missing: impl FnOnce() -> StorageError) -> StorageError {
        let upto = |i: usize| parts[..=i.min(parts.len().saturating_sub(1))].join("/");
        match stop {
            Stop::Missing => missing(),
            Stop::Link(i) if self.in_storage => StorageError::Link { key: upto(i) },
            Stop::Link(i) => StorageError::Refused {
                path: self.root.join(upto(i)).display().to_string(),
                reason: "it is a symbolic link, and drover never writes through one".into(),
            },
            Stop::NotDir(i) => StorageError::Io {
                action,
                path: self.root.join(upto(i)),
                source: io::Error::new(io::ErrorKind::NotADirectory, "a file is where a directory was expected"),
            },
            Stop::Os(e) => StorageError::Io { action, path: self.root.join(key), source: e.into() },
        }
    }

    fn io(&self, action: &'static str, key: &str) -> impl FnOnce(Errno) -> StorageError {
        let path = self.root.join(key);
        move |e| StorageError::Io { action, path, source: e.into() }
    }

    /// Opens the directory holding `key`'s last component; returns it and that component.
    /// `missing` is the error for a directory on the way that does not exist.
    fn parent_of<'k>(
        &self,
        key: &'k str,
        create: bool,
        action: &'static str,
        missing: impl FnOnce() -> StorageError,
    ) -> Result<(OwnedFd, &'k str), StorageError> {
        let parts: Vec<&str> = key.split('/').collect();
        let (last, dirs) = parts.split_last().expect("split yields at least one part");
        let walked = open_root(self.root, create).map_err(|e| match e {
            Errno::ENOENT => Stop::Missing,
            e => Stop::Os(e),
        });
        let dir = walked.and_then(|root| open_dirs(root, dirs, create)).map_err(|stop| match stop {
            // When only looking, a file where a directory should be means no such key.
            Stop::NotDir(_) if !create => missing(),
            stop => self.error(stop, key, &parts, action, missing),
        })?;
        Ok((dir, last))
    }

    /// Like [`Tree::parent_of`] for an operation where a missing directory means there is
    /// nothing to do (`None`).
    fn existing_parent_of<'k>(&self, key: &'k str, action: &'static str) -> Result<Option<(OwnedFd, &'k str)>, StorageError> {
        match self.parent_of(key, false, action, || StorageError::NotFound(String::new())) {
            Ok(found) => Ok(Some(found)),
            Err(StorageError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Opens `key` for reading if it is a regular file reached without any link.
    pub fn open_file(&self, key: &str) -> Result<File, StorageError> {
        let not_found = || StorageError::NotFound(key.to_string());
        let (dir, name) = self.parent_of(key, false, "opening", not_found)?;
        // Looked at before opening, so a fifo or device is never opened at all.
        match kind_at(dir.as_fd(), name).map_err(self.io("inspecting", key))? {
            None | Some(Kind::Dir) => return Err(not_found()),
            Some(Kind::Link) => return Err(StorageError::Link { key: key.to_string() }),
            Some(Kind::Other) => return Err(not_regular(self.root.join(key))),
            Some(Kind::File(_)) => {}
        }
        // O_NONBLOCK: should the name become a fifo after the check, open returns at once
        // rather than waiting for a writer; fstat below then refuses it.
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
        let fd = match openat(dir.as_fd(), name, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Err(not_found()),
            Err(Errno::ELOOP) => return Err(StorageError::Link { key: key.to_string() }),
            Err(e) => return Err(self.io("opening", key)(e)),
        };
        match fstat(&fd).map(|st| kind_of(&st)).map_err(self.io("inspecting", key))? {
            Kind::File(_) => {}
            Kind::Dir => return Err(not_found()),
            _ => return Err(not_regular(self.root.join(key))),
        }
        fcntl(&fd, FcntlArg::F_SETFL(OFlag::empty())).map_err(self.io("opening", key))?;
        Ok(File::from(fd))
    }

    /// The size of `key`, `None` when there is no such regular file; a link is an error.
    pub fn head(&self, key: &str) -> Result<Option<u64>, StorageError> {
        let Some((dir, name)) = self.existing_parent_of(key, "inspecting")? else { return Ok(None) };
        match kind_at(dir.as_fd(), name).map_err(self.io("inspecting", key))? {
            Some(Kind::File(size)) => Ok(Some(size)),
            Some(Kind::Link) => Err(StorageError::Link { key: key.to_string() }),
            _ => Ok(None),
        }
    }

    /// Makes `key` a symbolic link to `target` (a relative path, stored as given), creating its
    /// directories by the same walk as a write, so no link on the way is followed. An existing
    /// entry at `key` is left alone (`false`).
    pub fn make_link(&self, key: &str, target: &str) -> Result<bool, StorageError> {
        let (dir, name) = self.parent_of(key, true, "linking", || StorageError::NotFound(key.to_string()))?;
        match nix::unistd::symlinkat(target, dir.as_fd(), name) {
            Ok(()) => Ok(true),
            Err(Errno::EEXIST) => Ok(false),
            Err(e) => Err(self.io("linking", key)(e)),
        }
    }

    /// Removes `key` where it stands: a link is removed itself, never what it points to.
    pub fn delete(&self, key: &str) -> Result<(), StorageError> {
        let Some((dir, name)) = self.existing_parent_of(key, "deleting")? else { return Ok(()) };
        match unlinkat(dir.as_fd(), name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(self.io("deleting", key)(e)),
        }
    }

    /// Removes `prefix` and everything under it; returns how many regular files went. A link
    /// anywhere in it is removed itself; a prefix that is itself a link loses the link only.
    pub fn delete_tree(&self, prefix: &str) -> Result<usize, StorageError> {
        let Some((dir, name)) = self.existing_parent_of(prefix, "deleting")? else { return Ok(0) };
        let name = CString::new(name).expect("validated keys hold no NUL");
        let mut removed = 0;
        // A file named like the prefix is not under it, and is left alone.
        if let Some(Kind::Dir | Kind::Link) = kind_at(dir.as_fd(), name.as_c_str()).map_err(self.io("inspecting", prefix))? {
            remove_entry(dir.as_fd(), &name, 0, None, &mut removed).map_err(|source| StorageError::Io {
                action: "deleting",
                path: self.root.join(prefix),
                source,
            })?;
        }
        Ok(removed)
    }

    /// The regular files under `prefix` (keys relative to it, sorted) and the links there
    /// (likewise). Temporary names of writes in flight are neither.
    pub fn walk(&self, prefix: &str) -> Result<(Vec<StoredObject>, Vec<String>), StorageError> {
        let mut files = Vec::new();
        let mut links = Vec::new();
        let root = match open_root(self.root, false) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) => return Ok((files, links)),
            Err(e) => return Err(self.io("listing", prefix)(e)),
        };
        let start = if prefix.is_empty() {
            root
        } else {
            let parts: Vec<&str> = prefix.split('/').collect();
            match open_dirs(root, &parts, false) {
                Ok(fd) => fd,
                Err(Stop::Missing | Stop::NotDir(_)) => return Ok((files, links)),
                Err(stop) => return Err(self.error(stop, prefix, &parts, "listing", || StorageError::NotFound(prefix.into()))),
            }
        };
        let mut dir = Dir::from_fd(start).map_err(self.io("listing", prefix))?;
        walk_dir(&mut dir, "", 0, &mut files, &mut links).map_err(|source| StorageError::Io {
            action: "listing",
            path: self.root.join(prefix),
            source,
        })?;
        files.sort_by(|a, b| a.key.cmp(&b.key));
        links.sort();
        Ok((files, links))
    }

    /// Starts writing `key`: its directories made without going through a link, and a fresh
    /// temporary file beside it. [`Staged::commit`] renames it into place.
    pub fn stage(&self, key: &str) -> Result<(Staged, File), StorageError> {
        let missing = || StorageError::Io {
            action: "creating",
            path: self.root.join(key),
            source: io::Error::new(io::ErrorKind::NotFound, "a directory vanished while being made"),
        };
        let (dir, name) = self.parent_of(key, true, "creating", missing)?;
        let tmp = temp_name(name);
        // O_EXCL: a name planted in between (a link) makes this fail rather than be followed.
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(dir.as_fd(), tmp.as_str(), flags, Mode::from_bits_truncate(0o666)).map_err(self.io("creating", key))?;
        let path = self.root.join(key);
        Ok((Staged { dir, tmp, name: name.to_string(), path }, File::from(fd)))
    }
}

impl Tree<'_> {
    /// Writes `key` whole or not at all: `fill` writes the staged file, which is then renamed
    /// into place, or removed if `fill` failed.
    pub fn write_with(&self, key: &str, fill: impl FnOnce(&mut File) -> Result<u64, StorageError>) -> Result<u64, StorageError> {
        let (staged, mut file) = self.stage(key)?;
        let result = fill(&mut file);
        drop(file);
        match result {
            Ok(written) => staged.commit().map(|()| written),
            Err(e) => {
                staged.abandon();
                Err(e)
            }
        }
    }
}

/// A file written under a temporary name, not yet visible under its own.
pub(crate) struct Staged {
    dir: OwnedFd,
    tmp: String,
    name: String,
    /// For messages.
    path: PathBuf,
}

impl Staged {
    /// Renames the temporary file to its name, in the directory opened when it was staged
    /// (so a link swapped in for a parent since cannot redirect it). A link already at the
    /// name is replaced, not written through.
    pub fn commit(self) -> Result<(), StorageError> {
        renameat(self.dir.as_fd(), self.tmp.as_str(), self.dir.as_fd(), self.name.as_str()).map_err(|e| {
            let _ = unlinkat(self.dir.as_fd(), self.tmp.as_str(), UnlinkatFlags::NoRemoveDir);
            StorageError::Io { action: "renaming", path: self.path.clone(), source: e.into() }
        })
    }

    /// Removes the temporary file of a write that failed.
    pub fn abandon(self) {
        let _ = unlinkat(self.dir.as_fd(), self.tmp.as_str(), UnlinkatFlags::NoRemoveDir);
    }
}

/// A hidden temporary name for `name`, unique in this process; listings skip such names.
/// The original name is cut so that the result stays within NAME_MAX (255 bytes).
pub(crate) fn temp_name(name: &str) -> String {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut end = name.len().min(160);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    format!("{TMP_PREFIX}{}-{n}-{}", std::process::id(), &name[..end])
}

fn not_regular(path: PathBuf) -> StorageError {
    StorageError::Io { action: "opening", path, source: io::Error::other("not a regular file (a fifo, socket or device)") }
}

fn changing() -> io::Error {
    io::Error::other("it kept changing kind while being deleted")
}

/// The names in `dir` other than `.` and `..`.
fn entries(dir: &mut Dir) -> io::Result<Vec<CString>> {
    let mut names = Vec::new();
    for entry in dir.iter() {
        let entry = entry?;
        let name = entry.file_name();
        if name != c"." && name != c".." {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

/// Passes over one directory while deleting it: each removes everything listed, so more than a
/// few means something keeps writing there. Deep trees moved up into the top directory are
/// deleted from there one level per pass, hence room for [`MAX_DEPTH`] of them.
const EMPTYING_PASSES: usize = MAX_DEPTH + 16;

fn too_deep() -> io::Error {
    io::Error::other(format!("the tree is deeper than {MAX_DEPTH} directories"))
}

/// Removes `name` in `parent` and, if it is a directory, all it holds, counting regular files.
/// A directory is emptied through a descriptor opened without following; anything else (a
/// link included) is unlinked where it stands. An entry that changes kind in between (a
/// directory swapped for a link) is looked at again.
///
/// `top` is the directory the deletion started from (`None` for that directory itself): a
/// directory deeper than [`MAX_DEPTH`] is moved up into it and deleted from there, so a
/// hostile tree of any depth still goes, with a bounded number of descriptors open.
fn remove_entry(parent: BorrowedFd<'_>, name: &CStr, depth: usize, top: Option<BorrowedFd<'_>>, removed: &mut usize) -> io::Result<()> {
    for _ in 0..RETRIES {
        match kind_at(parent, name)? {
            None => return Ok(()),
            Some(Kind::Dir) if depth >= MAX_DEPTH && top.is_some() => {
                let top = top.expect("checked");
                match renameat(parent, name, top, temp_name("deep").as_str()) {
                    Ok(()) | Err(Errno::ENOENT) => return Ok(()),
                    Err(e) => return Err(e.into()),
                }
            }
            Some(Kind::Dir) => {
                let fd = match open_dir_at(parent, name) {
                    Ok(fd) => fd,
                    Err(Errno::ENOENT) => return Ok(()),
                    Err(Errno::ELOOP | Errno::ENOTDIR) => continue,
                    Err(e) => return Err(e.into()),
                };
                let mut dir = Dir::from_fd(fd)?;
                // Until it is empty: a writer may add names while we delete, and deep
                // directories are moved up into the top one. Bounded: a writer that never stops
                // (a leftover trial process) must not hold a delete, and the master, forever.
                let mut passes = 0;
                loop {
                    let names = entries(&mut dir)?;
                    if names.is_empty() {
                        break;
                    }
                    passes += 1;
                    if passes > EMPTYING_PASSES {
                        return Err(io::Error::other("it kept filling up while being deleted: something is still writing there"));
                    }
                    for child in names {
                        let child_top = top.unwrap_or(dir.as_fd());
                        remove_entry(dir.as_fd(), &child, depth + 1, Some(child_top), removed)?;
                    }
                }
                drop(dir);
                match unlinkat(parent, name, UnlinkatFlags::RemoveDir) {
                    Ok(()) | Err(Errno::ENOENT) => return Ok(()),
                    // Something was added after we emptied it, or it was swapped meanwhile.
                    Err(Errno::ENOTEMPTY | Errno::EEXIST | Errno::ENOTDIR) => continue,
                    Err(e) => return Err(e.into()),
                }
            }
            Some(kind) => match unlinkat(parent, name, UnlinkatFlags::NoRemoveDir) {
                Ok(()) => {
                    if matches!(kind, Kind::File(_)) && !name.to_bytes().starts_with(TMP_PREFIX.as_bytes()) {
                        *removed += 1;
                    }
                    return Ok(());
                }
                Err(Errno::ENOENT) => return Ok(()),
                Err(Errno::EISDIR | Errno::EPERM) => continue,
                Err(e) => return Err(e.into()),
            },
        }
    }
    Err(changing())
}

/// Lists `dir` recursively into `files` and `links`, keys prefixed with `rel`.
fn walk_dir(dir: &mut Dir, rel: &str, depth: usize, files: &mut Vec<StoredObject>, links: &mut Vec<String>) -> io::Result<()> {
    if depth > MAX_DEPTH {
        return Err(too_deep());
    }
    for name in entries(dir)? {
        let Ok(text) = name.to_str() else {
            // Not a key drover could have written, nor one it could address.
            tracing::warn!(dir = rel, name = ?name, "skipping a name that is not UTF-8");
            continue;
        };
        if text.starts_with(TMP_PREFIX) {
            continue;
        }
        let key = if rel.is_empty() { text.to_string() } else { format!("{rel}/{text}") };
        match kind_at(dir.as_fd(), name.as_c_str())? {
            None | Some(Kind::Other) => {}
            Some(Kind::File(size)) => files.push(StoredObject { key, size }),
            Some(Kind::Link) => links.push(key),
            Some(Kind::Dir) => match open_dir_at(dir.as_fd(), name.as_c_str()) {
                Ok(fd) => walk_dir(&mut Dir::from_fd(fd)?, &key, depth + 1, files, links)?,
                Err(Errno::ENOENT) => {}
                // Swapped for a link since the lstat: report what is there now.
                Err(Errno::ELOOP | Errno::ENOTDIR) => {
                    if kind_at(dir.as_fd(), name.as_c_str())? == Some(Kind::Link) {
                        links.push(key);
                    }
                }
                Err(e) => return Err(e.into()),
            },
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree(root: &Path) -> Tree<'_> {
        Tree { root, in_storage: true }
    }

    #[test]
    fn a_delete_racing_a_writer_that_never_stops_still_returns() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("ck")).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (dir, stop) = (root.join("ck"), stop.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = std::fs::create_dir_all(&dir);
                    let _ = std::fs::write(dir.join(format!("f{i}")), b"x");
                    i += 1;
                }
            })
        };
        // Returns, one way or the other: done, or refused because the directory kept filling.
        match tree(&root).delete_tree("ck") {
            Ok(_) => {}
            Err(e) => assert!(e.to_string().contains("kept filling up") || e.to_string().contains("changing"), "{e}"),
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().unwrap();
        tree(&root).delete_tree("ck").unwrap();
        assert!(!root.join("ck").exists());
    }

    #[test]
    fn a_walk_stops_at_the_first_link_and_names_it() {
        let tmp = tempfile::tempdir().unwrap();
        let decoy = tmp.path().join("decoy");
        std::fs::create_dir_all(decoy.join("inner")).unwrap();
        std::fs::write(decoy.join("inner/f"), b"decoy").unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("a")).unwrap();
        symlink(&decoy, root.join("a/b")).unwrap();
        let fd = open_root(&root, false).unwrap();
        assert!(matches!(open_dirs(fd, &["a", "b", "inner"], false), Err(Stop::Link(1))));
        let fd = open_root(&root, false).unwrap();
        assert!(matches!(open_dirs(fd, &["a", "c"], false), Err(Stop::Missing)));
        // Creating does not go through it either.
        let fd = open_root(&root, false).unwrap();
        assert!(matches!(open_dirs(fd, &["a", "b", "new"], true), Err(Stop::Link(1))));
        assert!(!decoy.join("new").exists());
        match tree(&root).open_file("a/b/inner/f") {
            Err(StorageError::Link { key }) => assert_eq!(key, "a/b"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_file_where_a_directory_should_be_is_not_found_when_reading() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("f"), b"x").unwrap();
        assert!(matches!(tree(tmp.path()).open_file("f/g"), Err(StorageError::NotFound(_))));
        assert_eq!(tree(tmp.path()).head("f/g").unwrap(), None);
        assert!(tree(tmp.path()).stage("f/g").is_err());
    }

    #[test]
    fn fifos_are_neither_opened_nor_listed() {
        let tmp = tempfile::tempdir().unwrap();
        nix::unistd::mkfifo(&tmp.path().join("pipe"), Mode::from_bits_truncate(0o600)).unwrap();
        // Opening a fifo for reading would wait for a writer: this returns at once.
        assert!(matches!(tree(tmp.path()).open_file("pipe"), Err(StorageError::Io { .. })));
        let (files, links) = tree(tmp.path()).walk("").unwrap();
        assert!(files.is_empty() && links.is_empty());
        assert_eq!(tree(tmp.path()).delete_tree("pipe").unwrap(), 0);
    }

    #[test]
    fn temporary_names_fit_in_a_directory_entry() {
        let long = "é".repeat(127);
        let tmp = temp_name(&long);
        assert!(tmp.len() <= 255 && tmp.starts_with(TMP_PREFIX), "{}", tmp.len());
        assert!(temp_name("a").ends_with("-a"));
    }

    #[test]
    fn overly_deep_trees_are_not_listed_but_are_deleted() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        // Built with *at calls: the path would pass PATH_MAX.
        let mut dir = open_root(root, false).unwrap();
        for _ in 0..2 * MAX_DEPTH + 3 {
            mkdirat(dir.as_fd(), "d", Mode::from_bits_truncate(0o755)).unwrap();
            dir = open_dir_at(dir.as_fd(), "d").unwrap();
            let fd = openat(dir.as_fd(), "f", OFlag::O_WRONLY | OFlag::O_CREAT, Mode::from_bits_truncate(0o644)).unwrap();
            drop(fd);
        }
        let err = tree(root).walk("").unwrap_err();
        assert!(err.to_string().contains("deeper than"), "{err}");
        // The GC must still be able to get rid of it.
        assert_eq!(tree(root).delete_tree("d").unwrap(), 2 * MAX_DEPTH + 3);
        assert_eq!(std::fs::read_dir(root).unwrap().count(), 0);
    }
}
