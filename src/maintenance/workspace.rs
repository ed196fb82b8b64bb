//! A bundle's `workspace/`: the tree each repo's candidate ran against,
//! rebuilt for the bundle whatever form the runs took it in.
//!
//! Design:
//! - **Which repos.** The sandbox's `workspace.json` (written when the
//!   experiment was planned, see `snapshot/record.rs`) names every repo of
//!   the workspace and its candidate commit, multi-repo experiments and
//!   failed runs (a timeout, an OOM) included. A sandbox written before
//!   the record existed falls back to the result's candidate (primary repo
//!   only, completed experiments only).
//! - **From the mirror.** Layered runs never write a candidate tarball (the
//!   candidate is its base's layer plus a delta), and a cached tarball may
//!   carry another repo name or owner. So each commit is packed from the
//!   repo's mirror, the one source of truth, into the bundle's private
//!   spool; only when the mirror cannot (it was removed) is a tarball of the
//!   commit in `snapshots/` used, and then only its members under `NAME/`.
//! - **As tested.** Members keep what the run saw: type, link target,
//!   executable bit and the commit's time as mtime. Owners are not kept
//!   (the bundle's members are all root's).
//! - **All or nothing.** A workspace the record names but that cannot be
//!   rebuilt is an error naming why, not a bundle that silently lacks it;
//!   `verify` checks that every repo the record names is in the bundle.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use flate2::read::MultiGzDecoder;

use crate::contract::ExperimentResult;
use crate::errors::{GenesisError, Result};
use crate::snapshot::{Owner, RecordedRepo, Snapshotter, WorkspaceRecord, WORKSPACE_RECORD};

use super::*;

/// The `workspace/...` members of a sandbox's bundle, spooled under
/// `spool`; `None` (with a note saying why) when the sandbox has no
/// workspace to hold (it failed before one was prepared).
pub(super) fn workspace_members(
    home: &Path,
    sandbox: &Path,
    spool: &Path,
    notes: &mut Vec<String>,
) -> Result<Option<Members>> {
    let repos = match tested_repos(sandbox)? {
        Ok(repos) => repos,
        Err(why) => {
            notes.push(why);
            return Ok(None);
        }
    };
    let mut members = Members::new();
    for (n, tested) in repos.iter().enumerate() {
        check_names(tested)?;
        let pack = spool.join(format!("pack-{n}.tar.gz"));
        let tree = spool.join("tree");
        let added = match from_mirror(home, tested, &pack) {
            Ok(()) => spool_snapshot(&pack, &tree, &tested.repo, &mut members, notes)?,
            Err(why) => {
                let added = from_cache(home, tested, &tree, &mut members, notes)?;
                if added > 0 {
                    notes.push(format!(
                        "workspace: repo {} taken from the snapshot cache ({why})",
                        tested.repo
                    ));
                } else {
                    return Err(unbuildable(sandbox, tested, &why));
                }
                added
            }
        };
        if added == 0 {
            return Err(unbuildable(sandbox, tested, "its tree is empty"));
        }
    }
    Ok(Some(members))
}

fn unbuildable(sandbox: &Path, tested: &RecordedRepo, why: &str) -> GenesisError {
    GenesisError::Internal(format!(
        "cannot rebuild the workspace of {} for its bundle: repo {} at commit {}: {why}; the sandbox is kept as it is",
        sandbox.display(),
        tested.repo,
        tested.commit
    ))
}

/// The repos the sandbox's workspace held, or (as `Err`) why it had none.
fn tested_repos(sandbox: &Path) -> Result<std::result::Result<Vec<RecordedRepo>, String>> {
    let path = sandbox.join(WORKSPACE_RECORD);
    if let Some(text) = read_small(&path)? {
        let record: WorkspaceRecord = serde_json::from_str(&text).map_err(|e| {
            GenesisError::Internal(format!("{} is not a workspace record: {e}", path.display()))
        })?;
        return Ok(Ok(record.repos));
    }
    // A sandbox from before the record: the result names the primary repo.
    let Some(text) = read_small(&sandbox.join("result.json"))? else {
        return Ok(Err(
            "no workspace: neither workspace.json nor result.json".into()
        ));
    };
    let result: ExperimentResult = match serde_json::from_str(&text) {
        Ok(r) => r,
        Err(e) => {
            return Ok(Err(format!(
                "no workspace: result.json is not a result ({e})"
            )))
        }
    };
    let ExperimentResult::Success(completed) = result else {
        return Ok(Err(
            "no workspace: the experiment failed before its workspace was prepared".into(),
        ));
    };
    Ok(Ok(vec![RecordedRepo {
        repo: completed.candidate.repo,
        base_commit: completed.candidate.base_commit,
        commit: completed.candidate.commit,
    }]))
}

/// A small file's text without following a link; `None` when absent.
fn read_small(path: &Path) -> Result<Option<String>> {
    let mut text = String::new();
    match open_nofollow(path).and_then(|f| f.take(RECORD_CAP).read_to_string(&mut text)) {
        Ok(_) => Ok(Some(text)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(GenesisError::io(format!("reading {}", path.display()), e)),
    }
}

/// A record or result is a few kilobytes; this bounds what a damaged one costs.
pub(super) const RECORD_CAP: u64 = 4 * 1024 * 1024;

/// The repo name becomes a member name and the commit part of a path.
fn check_names(tested: &RecordedRepo) -> Result<()> {
    let hex = tested.commit.len() == 40 && tested.commit.chars().all(|c| c.is_ascii_hexdigit());
    if !name_ok(&tested.repo) || !hex {
        return Err(GenesisError::Internal(format!(
            "the workspace record names repo {:?} at commit {:?}: not a plain name and a commit id",
            tested.repo, tested.commit
        )));
    }
    Ok(())
}

/// Packs the commit's tree from the repo's mirror into `dest`.
fn from_mirror(home: &Path, tested: &RecordedRepo, dest: &Path) -> std::result::Result<(), String> {
    // Headers' owners are not kept in a bundle: root's are as good as any.
    let snapshotter = Snapshotter::new(home, Owner { uid: 0, gid: 0 });
    snapshotter
        .pack_uncached(&tested.repo, &tested.commit, dest)
        .map_err(|e| format!("the mirror could not pack it: {e}"))
}

/// Spools the commit's members under `NAME/` from a tarball of it in
/// `snapshots/`; how many were added (0: none there).
fn from_cache(
    home: &Path,
    tested: &RecordedRepo,
    tree: &Path,
    members: &mut Members,
    notes: &mut Vec<String>,
) -> Result<usize> {
    let prefix = format!("{}-", tested.commit);
    let mut found: Vec<PathBuf> = match fs::read_dir(crate::home::Home::of(home).snapshots()) {
        Ok(entries) => entries
            .flatten()
            .filter(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with(&prefix) && name.ends_with(".tar.gz")
            })
            .map(|e| e.path())
            .filter(|p| fs::symlink_metadata(p).is_ok_and(|m| m.is_file()))
            .collect(),
        Err(_) => Vec::new(),
    };
    // Several only if the owner or repo name changed; try them in a fixed order.
    found.sort();
    for tarball in found {
        let added = spool_snapshot(&tarball, tree, &tested.repo, members, notes)?;
        if added > 0 {
            return Ok(added);
        }
    }
    Ok(0)
}

/// Copies a snapshot's members under `repo/` into the spool directory
/// `tree` and adds them (files, directories, symlinks) as `workspace/...`
/// with the tar's mode and mtime; returns how many.
fn spool_snapshot(
    tarball: &Path,
    tree: &Path,
    repo: &str,
    out: &mut Members,
    notes: &mut Vec<String>,
) -> Result<usize> {
    let context = || format!("reading snapshot {}", tarball.display());
    let file = open_nofollow(tarball).map_err(|e| GenesisError::io(context(), e))?;
    let mut archive = tar::Archive::new(MultiGzDecoder::new(io::BufReader::new(file)));
    let mut added = 0;
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
        if rel != repo && !rel.starts_with(&format!("{repo}/")) {
            continue;
        }
        let name = format!("{WORKSPACE}/{rel}");
        if out.contains_key(&name) {
            notes.push(format!("workspace: skipped duplicate member {rel}"));
            continue;
        }
        if let Some(member) = spooled_member(&mut entry, tree, &rel, name, notes)? {
            out.insert(member.name.clone(), member);
            added += 1;
        }
    }
    Ok(added)
}

/// One tar entry as a member (its file written into the spool), or None
/// with a note when it cannot be one.
fn spooled_member(
    entry: &mut tar::Entry<impl Read>,
    tree: &Path,
    rel: &str,
    name: String,
    notes: &mut Vec<String>,
) -> Result<Option<Member>> {
    let header = entry.header();
    let kind = header.entry_type();
    let mtime = header.mtime().unwrap_or(0);
    let target = tree.join(rel);
    let (source, mode) = if kind.is_dir() {
        fs::create_dir_all(&target).map_err(|e| GenesisError::io(format!("spooling {rel}"), e))?;
        (Source::Dir, DIR_MODE)
    } else if kind.is_file() {
        let mode = file_mode(header.mode().unwrap_or(FILE_MODE));
        if let Err(e) = spool_file(entry, &target) {
            notes.push(format!("workspace: skipped {rel}: {e}"));
            return Ok(None);
        }
        (Source::File(target), mode)
    } else if kind.is_symlink() {
        let link = entry.link_name_bytes().map(|l| l.into_owned());
        let Some(link) = link.and_then(|l| String::from_utf8(l).ok()) else {
            notes.push(format!(
                "workspace: skipped symlink {rel}: unreadable target"
            ));
            return Ok(None);
        };
        (Source::Link(link), LINK_MODE)
    } else {
        notes.push(format!(
            "workspace: skipped {rel}: not a file, directory or symlink"
        ));
        return Ok(None);
    };
    Ok(Some(Member {
        name,
        source,
        mode,
        mtime,
    }))
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

/// Problems with a bundle's workspace: every repo its `workspace.json`
/// names must be there as `workspace/NAME/`. `digests` maps member names
/// to their sha256 (None for directories); `record` is the record's text.
pub(super) fn workspace_problems(
    record: &[u8],
    digests: &std::collections::BTreeMap<String, Option<String>>,
) -> Vec<String> {
    let Ok(record) = serde_json::from_slice::<WorkspaceRecord>(record) else {
        return vec![format!("{WORKSPACE_RECORD} is not a workspace record")];
    };
    record
        .repos
        .iter()
        .filter(|r| !matches!(digests.get(&format!("{WORKSPACE}/{}", r.repo)), Some(None)))
        .map(|r| {
            format!(
                "{WORKSPACE_RECORD} names repo {} but the bundle has no {WORKSPACE}/{}/",
                r.repo, r.repo
            )
        })
        .collect()
}
