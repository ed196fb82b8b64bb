//! Trees as directories: a commit's unchanged tree written out once on the
//! host (a *layer*), and a candidate described as its difference from it
//! (a [`TreeDelta`]).
//!
//! Why: uploading a snapshot tarball into every fresh container costs time
//! in proportion to the repo, twice per experiment (baseline and
//! candidate). With layers the tree of a commit is written once, under
//! `GENESIS_HOME/layers/COMMIT-KEY/NAME/`, and each run's workspace is an
//! overlay whose lower directory is that layer and whose upper directory
//! lies on the run's own capped disk (`sandbox/disk.rs`): the run sees the
//! whole tree at once, its writes land on its disk, and the layer is never
//! written again. A candidate run receives only what its patch changed.
//!
//! Why a host directory and not an image layer: with the disk cap,
//! `/workspace` is a bind mount of the run's own file system, so a tree kept
//! in an image would have to be copied into it on every run; an overlay
//! lower directory is copy-on-write instead.
//!
//! Layers are written like tarballs: by walking the commit's tree, with the
//! commit's time as every mtime and the sandbox user as owner, so a layered
//! run sees the same files, modes, links and times as an uploaded one. A
//! layer is written into a temporary directory, flushed to disk and renamed
//! into place, so a half-written one is never used, even after a power loss.

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use git2::{Delta, FileMode, ObjectType, Oid, Repository, Tree};

use crate::errors::{GenesisError, Result};
use crate::home::Home;

use super::{check_path_shape, Owner, MODE_EXEC, MODE_LINK};

/// Bumped when the layout of a layer changes, so old ones are not misread.
const LAYER_LAYOUT: &str = "layer-1";

/// What a candidate changes in its base tree, applied to a fresh workspace
/// before its container starts.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TreeDelta {
    /// The repo, i.e. the directory under `/workspace` the paths are in.
    pub repo: String,
    /// Removed first: paths, then directories left empty that the candidate
    /// does not have (deepest first).
    pub deleted: Vec<String>,
    pub removed_dirs: Vec<String>,
    /// Then written, in order (a new directory comes before its files).
    pub entries: Vec<DeltaEntry>,
    /// The mtime every written entry gets (the candidate commit's time).
    pub mtime: i64,
}

/// One path the candidate adds or changes.
#[derive(Debug, Clone, PartialEq)]
pub struct DeltaEntry {
    pub path: String,
    pub content: DeltaContent,
}

#[derive(Debug, Clone, PartialEq)]
pub enum DeltaContent {
    File {
        bytes: Vec<u8>,
        executable: bool,
    },
    Link(Vec<u8>),
    /// A submodule: an empty directory, as in a snapshot.
    Submodule,
}

impl TreeDelta {
    /// Bytes of content the delta carries into a run.
    pub fn bytes(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| match &e.content {
                DeltaContent::File { bytes, .. } | DeltaContent::Link(bytes) => bytes.len() as u64,
                DeltaContent::Submodule => 0,
            })
            .sum()
    }

    /// Applies the delta under `workspace/REPO` on a workspace no container
    /// has touched yet. Never follows a symlink: every path was checked
    /// against the trees, and each component is checked again here.
    pub fn apply(&self, workspace: &Path, owner: Owner) -> Result<()> {
        let root = workspace.join(&self.repo);
        let io = |what: &str, path: &str, e: std::io::Error| {
            GenesisError::io(format!("{what} {path} in the candidate's workspace"), e)
        };
        for path in &self.deleted {
            let target = checked_target(&root, path, None)?;
            let meta = fs::symlink_metadata(&target).map_err(|e| io("reading", path, e))?;
            let removed = if meta.is_dir() {
                fs::remove_dir_all(&target)
            } else {
                fs::remove_file(&target)
            };
            removed.map_err(|e| io("removing", path, e))?;
        }
        for dir in &self.removed_dirs {
            let target = checked_target(&root, dir, None)?;
            match fs::remove_dir(&target) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io("removing directory", dir, e))
                }
                _ => {}
            }
        }
        for entry in &self.entries {
            let target = checked_target(&root, &entry.path, Some((owner, self.mtime)))?;
            if fs::symlink_metadata(&target).is_ok() {
                fs::remove_file(&target).map_err(|e| io("replacing", &entry.path, e))?;
            }
            write_entry(&target, &entry.content, owner, self.mtime)
                .map_err(|e| io("writing", &entry.path, e))?;
        }
        self.redate_parents(&root)
    }

    /// Gives every directory the delta wrote into or removed from the
    /// snapshot's mtime again, as an uploaded tarball would have it.
    fn redate_parents(&self, root: &Path) -> Result<()> {
        let touched = self
            .deleted
            .iter()
            .chain(&self.removed_dirs)
            .chain(self.entries.iter().map(|e| &e.path));
        let mut parents = std::collections::BTreeSet::new();
        for path in touched {
            let mut at = path.as_str();
            while let Some((parent, _)) = at.rsplit_once('/') {
                parents.insert(parent.to_owned());
                at = parent;
            }
            parents.insert(String::new());
        }
        for parent in parents {
            let dir = if parent.is_empty() {
                root.to_path_buf()
            } else {
                checked_target(root, &parent, None)?
            };
            if fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
                set_mtime(&dir, self.mtime)
                    .map_err(|e| GenesisError::io(format!("dating {}", dir.display()), e))?;
            }
        }
        Ok(())
    }
}

/// `root/path` after checking the path's shape and that no directory on the
/// way is a symlink; with `make_missing` (owner and mtime), the directories
/// on the way that do not exist yet are created.
fn checked_target(root: &Path, path: &str, make_missing: Option<(Owner, i64)>) -> Result<PathBuf> {
    check_path_shape(path)?;
    let mut at = root.to_path_buf();
    let parts: Vec<&str> = path.split('/').collect();
    for part in &parts[..parts.len() - 1] {
        at.push(part);
        match (fs::symlink_metadata(&at), make_missing) {
            (Ok(meta), _) if meta.file_type().is_symlink() => {
                return Err(GenesisError::PatchFailed(format!(
                    "candidate path {path:?} goes through a symlink; refusing the whole change"
                )))
            }
            (Err(_), Some((owner, mtime))) => make_dir(&at, owner, mtime)
                .map_err(|e| GenesisError::io(format!("creating {}", at.display()), e))?,
            _ => {}
        }
    }
    Ok(root.join(path))
}

/// Where a commit's layer lives: `GENESIS_HOME/layers/COMMIT-KEY`, the key
/// covering what else goes into the files (repo name, owner, layout).
pub(super) fn layer_dir(home: &Path, name: &str, owner: Owner, commit: Oid) -> PathBuf {
    let key = super::cache_key(name, owner, Some(LAYER_LAYOUT));
    Home::of(home).layers().join(format!("{commit}-{key}"))
}

/// Writes the layer of `tree` (as `NAME/...`) at `dest` unless it is there,
/// and marks it used (its mtime is what the cleanup job prunes by).
pub(super) fn ensure_layer(
    repo: &Repository,
    tree: &Tree,
    name: &str,
    owner: Owner,
    mtime: i64,
    dest: &Path,
) -> Result<()> {
    if dest.is_dir() {
        let now = fs::FileTimes::new().set_modified(std::time::SystemTime::now());
        let _ = fs::File::open(dest).and_then(|f| f.set_times(now));
        return Ok(());
    }
    let parent = dest.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent)
        .map_err(|e| GenesisError::io(format!("creating {}", parent.display()), e))?;
    // Unique per writer, like tarballs: concurrent writers of one commit
    // each write their own and the first rename wins.
    static WRITERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let writer = WRITERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let file_name = dest.file_name().unwrap_or_default().to_string_lossy();
    let tmp = parent.join(format!(".{file_name}.{}-{writer}.tmp", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    let written = fs::create_dir(&tmp)
        .map_err(|e| GenesisError::io(format!("creating {}", tmp.display()), e))
        // The layer's own directory keeps the time it was written (the
        // cleanup job reads it as last use); only `NAME/` is the snapshot's.
        .and_then(|_| LayerWriter { repo, owner, mtime }.tree(tree, &tmp.join(name), ""))
        .and_then(|_| sync_file_system(&tmp));
    let placed = written.and_then(|_| match fs::rename(&tmp, dest) {
        Ok(()) => Ok(()),
        // Another writer was first; its layer is the same.
        Err(_) if dest.is_dir() => Ok(()),
        Err(e) => Err(GenesisError::io(
            format!("moving the layer into {}", dest.display()),
            e,
        )),
    });
    if tmp.exists() {
        let _ = fs::remove_dir_all(&tmp);
    }
    placed
}

/// Flushes the file system holding `dir` (one `syncfs`), so a layer is on
/// disk before it is renamed into use: after a power loss a layer is
/// either whole or absent (and rebuilt), never a tree of empty files that
/// runs would take for the commit's.
fn sync_file_system(dir: &Path) -> Result<()> {
    use std::os::fd::AsRawFd;
    let io = |e| GenesisError::io(format!("syncing the layer at {}", dir.display()), e);
    let handle = fs::File::open(dir).map_err(io)?;
    // SAFETY: syncfs on a descriptor this function owns for the call.
    if unsafe { libc::syncfs(handle.as_raw_fd()) } != 0 {
        return Err(io(std::io::Error::last_os_error()));
    }
    Ok(())
}

struct LayerWriter<'r> {
    repo: &'r Repository,
    owner: Owner,
    mtime: i64,
}

impl LayerWriter<'_> {
    /// Writes `tree` into the (new) directory `dir`; `shown` names it in errors.
    fn tree(&self, tree: &Tree, dir: &Path, shown: &str) -> Result<()> {
        let io = |what: &str, e: std::io::Error| {
            GenesisError::io(format!("{what} {shown:?} in a snapshot layer"), e)
        };
        make_dir(dir, self.owner, self.mtime).map_err(|e| io("creating", e))?;
        for entry in tree.iter() {
            let name = entry_name(entry.name_bytes(), shown)?;
            let path = dir.join(name);
            let shown = format!("{shown}{}", String::from_utf8_lossy(entry.name_bytes()));
            match entry.kind() {
                Some(ObjectType::Tree) => {
                    let sub = self
                        .repo
                        .find_tree(entry.id())
                        .map_err(|e| GenesisError::git("reading a subtree", e))?;
                    self.tree(&sub, &path, &format!("{shown}/"))?;
                }
                Some(ObjectType::Blob) => {
                    let blob = self
                        .repo
                        .find_blob(entry.id())
                        .map_err(|e| GenesisError::git(format!("reading blob for {shown}"), e))?;
                    let content = blob_content(blob.content(), entry.filemode());
                    write_entry(&path, &content, self.owner, self.mtime)
                        .map_err(|e| io("writing", e))?;
                }
                Some(ObjectType::Commit) => {
                    write_entry(&path, &DeltaContent::Submodule, self.owner, self.mtime)
                        .map_err(|e| io("writing", e))?
                }
                _ => {}
            }
        }
        // Last: writing the entries changed the directory's mtime.
        set_mtime(dir, self.mtime).map_err(|e| io("dating", e))
    }
}

/// A tree entry's name as a single plain path component.
fn entry_name<'n>(raw: &'n [u8], shown: &str) -> Result<&'n OsStr> {
    if raw.is_empty() || raw == b"." || raw == b".." || raw.contains(&b'/') || raw.contains(&0) {
        return Err(GenesisError::PatchFailed(format!(
            "the tree has an entry {:?} under {shown:?} that is not a plain name",
            String::from_utf8_lossy(raw)
        )));
    }
    Ok(OsStr::from_bytes(raw))
}

fn blob_content(bytes: &[u8], mode: i32) -> DeltaContent {
    if mode == MODE_LINK {
        DeltaContent::Link(bytes.to_vec())
    } else {
        DeltaContent::File {
            bytes: bytes.to_vec(),
            executable: mode == MODE_EXEC,
        }
    }
}

/// Creates one file, link or submodule directory at a path that does not exist.
fn write_entry(
    path: &Path,
    content: &DeltaContent,
    owner: Owner,
    mtime: i64,
) -> std::io::Result<()> {
    match content {
        DeltaContent::File { bytes, executable } => {
            let mode = if *executable { 0o755 } else { 0o644 };
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .custom_flags(libc::O_NOFOLLOW)
                .open(path)?;
            file.write_all(bytes)?;
            // The umask may have narrowed the mode given to open.
            file.set_permissions(fs::Permissions::from_mode(mode))?;
            drop(file);
            lchown(path, owner)?;
        }
        DeltaContent::Link(target) => {
            std::os::unix::fs::symlink(OsStr::from_bytes(target), path)?;
            lchown(path, owner)?;
        }
        DeltaContent::Submodule => return make_dir(path, owner, mtime),
    }
    set_mtime(path, mtime)
}

fn make_dir(path: &Path, owner: Owner, mtime: i64) -> std::io::Result<()> {
    fs::create_dir(path)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    lchown(path, owner)?;
    set_mtime(path, mtime)
}

fn lchown(path: &Path, owner: Owner) -> std::io::Result<()> {
    let id = |n: u64| u32::try_from(n).map_err(|_| std::io::Error::other("uid/gid out of range"));
    std::os::unix::fs::lchown(path, Some(id(owner.uid)?), Some(id(owner.gid)?))
}

/// Sets access and modification time without following a symlink.
fn set_mtime(path: &Path, mtime: i64) -> std::io::Result<()> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let time = libc::timespec {
        tv_sec: mtime as libc::time_t,
        tv_nsec: 0,
    };
    let times = [time, time];
    // SAFETY: c_path is NUL-terminated and times points at two timespecs.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The difference between two trees of one repo, as a [`TreeDelta`].
pub(super) fn delta(
    repo: &Repository,
    base: &Tree,
    candidate: &Tree,
    name: &str,
    mtime: i64,
) -> Result<TreeDelta> {
    let diff = repo
        .diff_tree_to_tree(Some(base), Some(candidate), None)
        .map_err(|e| GenesisError::git("comparing the candidate's tree with its base", e))?;
    let mut out = TreeDelta {
        repo: name.to_owned(),
        mtime,
        ..TreeDelta::default()
    };
    for d in diff.deltas() {
        let path_of = |f: &git2::DiffFile| -> Result<String> {
            let raw = f.path_bytes().unwrap_or_default();
            std::str::from_utf8(raw).map(str::to_owned).map_err(|_| {
                GenesisError::PatchFailed(format!(
                    "candidate path {} is not UTF-8",
                    String::from_utf8_lossy(raw)
                ))
            })
        };
        if matches!(
            d.status(),
            Delta::Deleted | Delta::Modified | Delta::Typechange
        ) {
            // A changed file is written anew: removing it first also handles
            // a change of type and of mode.
            let old = path_of(&d.old_file())?;
            if d.status() == Delta::Deleted {
                out.removed_dirs
                    .extend(emptied_dirs(&old, candidate, &out.removed_dirs));
            }
            out.deleted.push(old);
        }
        if d.status() == Delta::Deleted {
            continue;
        }
        let new = d.new_file();
        let path = path_of(&new)?;
        let content = match new.mode() {
            FileMode::Commit => DeltaContent::Submodule,
            mode => {
                let blob = repo
                    .find_blob(new.id())
                    .map_err(|e| GenesisError::git(format!("reading blob for {path}"), e))?;
                blob_content(blob.content(), i32::from(mode))
            }
        };
        out.entries.push(DeltaEntry { path, content });
    }
    // Deepest first (a child's path is longer than its parent's); each is
    // listed once already (`emptied_dirs` skips those seen).
    out.removed_dirs.sort_by_key(|d| std::cmp::Reverse(d.len()));
    Ok(out)
}

/// Directories above a deleted path that the candidate tree does not have.
fn emptied_dirs(path: &str, candidate: &Tree, seen: &[String]) -> Vec<String> {
    let mut dirs = Vec::new();
    let mut at = path;
    while let Some((parent, _)) = at.rsplit_once('/') {
        let kept = candidate
            .get_path(Path::new(parent))
            .is_ok_and(|e| e.kind() == Some(ObjectType::Tree));
        if kept {
            break;
        }
        if !seen.iter().any(|d| d == parent) {
            dirs.push(parent.to_owned());
        }
        at = parent;
    }
    dirs
}
