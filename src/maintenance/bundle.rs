//! Bundles: the deterministic .tar.gz of a sandbox (members, spooling
//! the snapshot, MANIFEST, writing). See the parent module for the format.

use crate::contract::ExperimentResult;
use crate::errors::{GenesisError, Result};
use crate::snapshot::Owner;
use flate2::read::MultiGzDecoder;
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
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
}

impl Member {
    fn dir(name: String) -> Member {
        Member {
            name,
            source: Source::Dir,
            mode: DIR_MODE,
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
fn file_mode(mode: u32) -> u32 {
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
            out.insert(name.clone(), Member { name, source, mode });
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
struct Spool {
    path: PathBuf,
}

pub(super) static SPOOL_SEQ: AtomicU64 = AtomicU64::new(0);

/// Prefix of spool directories in `GENESIS_HOME/tmp`.
pub(super) const SPOOL_PREFIX: &str = "bundle-";

impl Spool {
    fn create(home: &Path) -> Result<Spool> {
        let seq = SPOOL_SEQ.fetch_add(1, Ordering::Relaxed);
        let path = home
            .join("tmp")
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

/// Copies a snapshot's regular files into `spool` and returns every usable
/// member (files, directories, symlinks) named `workspace/...`.
fn spool_snapshot(tarball: &Path, spool: &Path, notes: &mut Vec<String>) -> Result<Members> {
    let context = || format!("reading snapshot {}", tarball.display());
    let file = open_nofollow(tarball).map_err(|e| GenesisError::io(context(), e))?;
    let mut archive = tar::Archive::new(MultiGzDecoder::new(io::BufReader::new(file)));
    let mut out = Members::new();
    for entry in archive
        .entries()
        .map_err(|e| GenesisError::io(context(), e))?
    {
        let mut entry = entry.map_err(|e| GenesisError::io(context(), e))?;
        let raw = entry.path_bytes().into_owned();
        let Some(rel) = snapshot_rel(&raw) else {
            notes.push(format!(
                "workspace: skipped unsafe member {:?}",
                String::from_utf8_lossy(&raw)
            ));
            continue;
        };
        let name = format!("{WORKSPACE}/{rel}");
        if out.contains_key(&name) {
            notes.push(format!("workspace: skipped duplicate member {rel}"));
            continue;
        }
        let kind = entry.header().entry_type();
        let target = spool.join(&rel);
        if kind.is_dir() {
            fs::create_dir_all(&target)
                .map_err(|e| GenesisError::io(format!("spooling {rel}"), e))?;
            out.insert(name.clone(), Member::dir(name));
        } else if kind.is_file() {
            let mode = file_mode(entry.header().mode().unwrap_or(FILE_MODE));
            if let Err(e) = spool_file(&mut entry, &target) {
                notes.push(format!("workspace: skipped {rel}: {e}"));
                continue;
            }
            let source = Source::File(target);
            out.insert(name.clone(), Member { name, source, mode });
        } else if kind.is_symlink() {
            let link = entry.link_name_bytes().map(|l| l.into_owned());
            let Some(link) = link.and_then(|l| String::from_utf8(l).ok()) else {
                notes.push(format!(
                    "workspace: skipped symlink {rel}: unreadable target"
                ));
                continue;
            };
            let source = Source::Link(link);
            let mode = LINK_MODE;
            out.insert(name.clone(), Member { name, source, mode });
        } else {
            notes.push(format!(
                "workspace: skipped {rel}: not a file, directory or symlink"
            ));
        }
    }
    Ok(out)
}

/// Writes one snapshot file into the spool; `create_new` in directories made
/// here, so nothing outside the spool is written or followed.
fn spool_file(entry: &mut impl Read, target: &Path) -> io::Result<()> {
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent)?;
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(target)?;
    io::copy(entry, &mut file)?;
    Ok(())
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

/// The candidate snapshot tarball named by `result.json` (packed into
/// `spool` from the repo's mirror when the runs were layered and left no
/// tarball), or why there is none.
fn candidate_snapshot(
    home: &Path,
    sandbox: &Path,
    spool: &Path,
) -> std::result::Result<PathBuf, String> {
    let mut text = String::new();
    open_nofollow(&sandbox.join("result.json"))
        .and_then(|mut f| f.read_to_string(&mut text))
        .map_err(|e| format!("no workspace: result.json unreadable ({e})"))?;
    let result: ExperimentResult = serde_json::from_str(&text)
        .map_err(|e| format!("no workspace: result.json is not a result ({e})"))?;
    let ExperimentResult::Success(completed) = result else {
        return Err("no workspace: the experiment failed before a candidate was judged".into());
    };
    let commit = completed.candidate.commit;
    // The commit becomes part of a file name: hex only.
    if commit.is_empty() || !commit.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "no workspace: candidate commit {commit:?} is not hex"
        ));
    }
    let dir = home.join("snapshots");
    let prefix = format!("{commit}-");
    let mut found: Vec<PathBuf> = fs::read_dir(&dir)
        .map_err(|e| format!("no workspace: {} unreadable ({e})", dir.display()))?
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with(&prefix) && name.ends_with(".tar.gz")
        })
        .map(|e| e.path())
        .filter(|p| fs::symlink_metadata(p).is_ok_and(|m| m.is_file()))
        .collect();
    // Several only if the owner or repo name changed; pick one deterministically.
    found.sort();
    if let Some(tarball) = found.into_iter().next() {
        return Ok(tarball);
    }
    let repo = completed.candidate.repo;
    if !name_ok(&repo) {
        return Err(format!(
            "no workspace: repo name {repo:?} is not a plain name"
        ));
    }
    // The bundle keeps modes, not owners: root's ownership is as good as any.
    let snapshotter = crate::snapshot::Snapshotter::new(home, Owner { uid: 0, gid: 0 });
    let dest = spool.join("candidate.tar.gz");
    snapshotter
        .pack_uncached(&repo, &commit, &dest)
        .map(|()| dest)
        .map_err(|e| {
            format!("no workspace: no snapshot of candidate commit {commit} in snapshots/, and packing it from the mirror failed: {e}")
        })
}

/// Everything a live sandbox's bundle holds, ready to write.
struct Plan {
    members: Members,
    notes: Vec<String>,
    /// Keeps the spooled workspace alive until the bundle is written.
    _spool: Option<Spool>,
}

fn plan_live(home: &Path, id: &str) -> Result<Plan> {
    let dir = sandboxes_dir(home).join(id);
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
    let spool = match candidate_snapshot(home, &dir, &spool.path) {
        Ok(tarball) => {
            members.extend(spool_snapshot(&tarball, &spool.path, &mut notes)?);
            members
                .entry(WORKSPACE.into())
                .or_insert_with(|| Member::dir(WORKSPACE.into()));
            Some(spool)
        }
        Err(why) => {
            notes.push(why);
            None
        }
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
