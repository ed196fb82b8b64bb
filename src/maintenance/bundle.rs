//! Bundles: the deterministic .tar.gz of a sandbox (members, spooling
//! the snapshot, MANIFEST, writing). See the parent module for the format.

use crate::errors::{GenesisError, Result};
use crate::home::Home;
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::*;

/// Where a member's bytes come from.
#[derive(Debug, Clone)]
pub(super) enum Source {
    Dir,
    /// A regular file, opened without following links when written.
    File(PathBuf),
    /// A symlink entry with this target (never resolved).
    Link(String),
    /// In-memory content (the MANIFEST).
    Bytes(Vec<u8>),
}

#[derive(Debug, Clone)]
pub(super) struct Member {
    /// Path below `ID/`, `/`-separated, no trailing slash.
    pub(super) name: String,
    pub(super) source: Source,
    pub(super) mode: u32,
    /// 0 for the sandbox's own files; a workspace member keeps the time
    /// the run saw (its commit's).
    pub(super) mtime: u64,
}

impl Member {
    pub(super) fn dir(name: String) -> Member {
        Member {
            name,
            source: Source::Dir,
            mode: DIR_MODE,
            mtime: 0,
        }
    }

    /// Directories sort as `name/` so each precedes its own contents.
    pub(super) fn sort_key(&self) -> String {
        match self.source {
            Source::Dir => format!("{}/", self.name),
            _ => self.name.clone(),
        }
    }
}

/// Members by name, so duplicates and file/directory clashes are caught.
pub(super) type Members = BTreeMap<String, Member>;

/// A path component that is safe as a member name and as a MANIFEST line.
pub(super) fn name_ok(part: &str) -> bool {
    !part.is_empty()
        && part != "."
        && part != ".."
        && !part.contains('/')
        && !part.chars().any(char::is_control)
}

/// 0755 when the owner may execute it, else 0644: the only mode bit that
/// matters to a test run, and the only one kept.
pub(super) fn file_mode(mode: u32) -> u32 {
    if mode & 0o100 != 0 {
        EXEC_MODE
    } else {
        FILE_MODE
    }
}

/// Opens a regular file for reading without following a symlink, and
/// without blocking should it have been swapped for a FIFO.
pub(super) fn open_nofollow(path: &Path) -> io::Result<fs::File> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(file)
}

/// Adds the regular files and directories under `dir` as members named
/// `prefix/...`; links and special files are skipped with a note.
pub(super) fn walk_tree(
    dir: &Path,
    prefix: &str,
    out: &mut Members,
    notes: &mut Vec<String>,
) -> Result<()> {
    let entries =
        fs::read_dir(dir).map_err(|e| GenesisError::io(format!("reading {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| GenesisError::io(format!("reading {}", dir.display()), e))?;
        let path = entry.path();
        let Some(part) = entry.file_name().to_str().map(str::to_owned) else {
            notes.push(format!("skipped {}: name is not UTF-8", path.display()));
            continue;
        };
        if !name_ok(&part) {
            notes.push(format!("skipped {}: unusable name", path.display()));
            continue;
        }
        let name = if prefix.is_empty() {
            part
        } else {
            format!("{prefix}/{part}")
        };
        let meta = fs::symlink_metadata(&path)
            .map_err(|e| GenesisError::io(format!("inspecting {}", path.display()), e))?;
        let kind = meta.file_type();
        if kind.is_dir() {
            out.insert(name.clone(), Member::dir(name.clone()));
            walk_tree(&path, &name, out, notes)?;
        } else if kind.is_file() {
            let mode = file_mode(meta.mode());
            let source = Source::File(path);
            let member = Member {
                name: name.clone(),
                source,
                mode,
                mtime: 0,
            };
            out.insert(name, member);
        } else {
            let what = if kind.is_symlink() {
                "symlink"
            } else {
                "special file"
            };
            notes.push(format!("skipped {what} {name}"));
        }
    }
    Ok(())
}

/// A private directory for spooled snapshot files, removed on drop.
pub(super) struct Spool {
    pub(super) path: PathBuf,
}

pub(super) static SPOOL_SEQ: AtomicU64 = AtomicU64::new(0);

/// Prefix of spool directories in `GENESIS_HOME/tmp`.
pub(super) const SPOOL_PREFIX: &str = "bundle-";

impl Spool {
    fn create(home: &Path) -> Result<Spool> {
        let seq = SPOOL_SEQ.fetch_add(1, Ordering::Relaxed);
        let path = crate::home::Home::of(home)
            .tmp()
            .join(format!("{SPOOL_PREFIX}{}-{seq}", std::process::id()));
        // A leftover of a crashed process with the same pid.
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path)
            .map_err(|e| GenesisError::io(format!("creating {}", path.display()), e))?;
        Ok(Spool { path })
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// The relative path of a snapshot member, or None if it is unsafe.
/// `.` components (a leading `./`) are dropped; `..` or odd names refuse it.
pub(super) fn snapshot_rel(raw: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(raw).ok()?;
    let mut parts = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => continue,
            p if name_ok(p) => parts.push(p),
            _ => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Adds a directory member for every ancestor of every member, dropping
/// members whose ancestor is not a directory (a path below a symlink).
fn add_parents(members: &mut Members, notes: &mut Vec<String>) {
    let names: Vec<String> = members.keys().cloned().collect();
    for name in names {
        let mut ancestor = name.as_str();
        while let Some((parent, _)) = ancestor.rsplit_once('/') {
            match members.get(parent).map(|m| &m.source) {
                Some(Source::Dir) => {}
                Some(_) => {
                    notes.push(format!("skipped {name}: {parent} is not a directory"));
                    members.remove(&name);
                    break;
                }
                None => {
                    members.insert(parent.to_owned(), Member::dir(parent.to_owned()));
                }
            }
            ancestor = parent;
        }
    }
}

/// Everything a live sandbox's bundle holds, ready to write.
struct Plan {
    members: Members,
    notes: Vec<String>,
    /// Keeps the spooled workspace alive until the bundle is written.
    _spool: Option<Spool>,
}

fn plan_live(home: &Path, id: &str) -> Result<Plan> {
    let dir = Home::of(home).sandbox(id);
    let meta = fs::symlink_metadata(&dir)
        .map_err(|e| GenesisError::io(format!("opening sandbox {}", dir.display()), e))?;
    if !meta.is_dir() {
        return Err(GenesisError::io(
            format!("opening sandbox {}", dir.display()),
            io::Error::other("not a directory (links are not followed)"),
        ));
    }
    let mut members = Members::new();
    let mut notes = Vec::new();
    walk_tree(&dir, "", &mut members, &mut notes)?;
    // These names belong to the bundle format, not to the sandbox.
    members.retain(|name, _| {
        let reserved =
            name == MANIFEST || name == WORKSPACE || name.starts_with(&format!("{WORKSPACE}/"));
        if reserved {
            notes.push(format!("skipped {name}: reserved name in a bundle"));
        }
        !reserved
    });
    let spool = Spool::create(home)?;
    let spool = match workspace_members(home, &dir, &spool.path, &mut notes)? {
        Some(workspace) => {
            members.extend(workspace);
            members
                .entry(WORKSPACE.into())
                .or_insert_with(|| Member::dir(WORKSPACE.into()));
            Some(spool)
        }
        None => None,
    };
    add_parents(&mut members, &mut notes);
    Ok(Plan {
        members,
        notes,
        _spool: spool,
    })
}

/// Writes the bundle of a live sandbox to `dest`; returns what it holds and
/// notes on anything left out.
pub(super) fn bundle_live(home: &Path, id: &str, dest: &Path) -> Result<(BundleInfo, Vec<String>)> {
    let plan = plan_live(home, id)?;
    let info = write_bundle(id, plan.members, dest)?;
    Ok((info, plan.notes))
}
