//! The candidate commit: the experiment's patch, checked against the
//! request and the base tree before anything is written, applied to the
//! base in the mirror (the source repository is only ever read).

use std::cell::RefCell;

use git2::{ApplyOptions, Diff, Oid, Repository, Tree};

use crate::errors::{GenesisError, Result};

use super::{
    check_declared, check_patch_size, check_path_shape, checked_paths, RepoInput, MIRROR_LOCK,
};

/// The candidate commit and the paths its patch touched. Without a patch
/// the candidate is the base itself, and a request that still declares
/// changed files is refused: it describes a change that is not there.
pub(super) fn candidate_commit(
    mirror: &Repository,
    base: &git2::Commit,
    base_tree: &Tree,
    input: &RepoInput,
    experiment_id: &str,
) -> Result<(Oid, Vec<String>)> {
    match input.patch.filter(|p| !p.trim().is_empty()) {
        Some(patch) => patched(mirror, base, base_tree, patch, input, experiment_id),
        None => {
            if let Some(declared) = input.declared_files.filter(|d| !d.is_empty()) {
                return Err(GenesisError::InvalidRequest(format!(
                    "changes.files lists {} but the request has no patch",
                    declared.join(", ")
                )));
            }
            Ok((base.id(), Vec::new()))
        }
    }
}

/// Checks the patch (its size, its paths, the declared files) and only
/// then applies it: a refused patch writes nothing into the mirror.
fn patched(
    mirror: &Repository,
    base: &git2::Commit,
    base_tree: &Tree,
    patch: &str,
    input: &RepoInput,
    experiment_id: &str,
) -> Result<(Oid, Vec<String>)> {
    // Before libgit2 parses (and later inflates) anything.
    check_patch_size(patch, input.patch_mb, input.risk_level)?;
    let diff = Diff::from_buffer(patch.as_bytes()).map_err(|e| {
        GenesisError::PatchFailed(format!(
            "the patch for repo {:?} is not a unified diff: {}",
            input.name,
            e.message()
        ))
    })?;
    for declared in input.declared_files.unwrap_or_default() {
        check_path_shape(declared)?;
    }
    let touched = checked_paths(&diff, base_tree, mirror)?;
    if let Some(declared) = input.declared_files {
        check_declared(declared, &touched)?;
    }
    let oid = apply(mirror, base, &diff, input.name, experiment_id)?;
    Ok((oid, touched))
}

/// Applies the diff to the base tree in the mirror and records the result as
/// a commit under `refs/genesis/ID`. The commit's author and time are fixed
/// (taken from the base), so the same patch on the same base gives the same
/// candidate commit, and so the same cached tarball.
fn apply(
    mirror: &Repository,
    base: &git2::Commit,
    diff: &Diff,
    repo_name: &str,
    experiment_id: &str,
) -> Result<Oid> {
    let base_tree = base
        .tree()
        .map_err(|e| GenesisError::git("reading base tree", e))?;
    let current_file = RefCell::new(String::new());
    let current_hunk = RefCell::new(String::new());
    let mut opts = ApplyOptions::new();
    opts.delta_callback(|delta| {
        if let Some(d) = delta {
            let path = d.new_file().path().or(d.old_file().path());
            *current_file.borrow_mut() = path.map(|p| p.display().to_string()).unwrap_or_default();
            current_hunk.borrow_mut().clear();
        }
        true
    });
    opts.hunk_callback(|hunk| {
        if let Some(h) = hunk {
            *current_hunk.borrow_mut() = String::from_utf8_lossy(h.header()).trim().to_owned();
        }
        true
    });
    let index = mirror.apply_to_tree(&base_tree, diff, Some(&mut opts));
    drop(opts);
    let mut index = index.map_err(|e| {
        let file = current_file.borrow();
        let hunk = current_hunk.borrow();
        let hunk = if hunk.is_empty() {
            "(file header)".to_owned()
        } else {
            hunk.clone()
        };
        GenesisError::PatchFailed(format!(
            "the patch does not apply to {repo_name}: file {file}, hunk {hunk}: {}",
            e.message()
        ))
    })?;
    let tree_oid = index
        .write_tree_to(mirror)
        .map_err(|e| GenesisError::git("writing the candidate tree", e))?;
    let tree = mirror
        .find_tree(tree_oid)
        .map_err(|e| GenesisError::git("reading the candidate tree", e))?;
    let when = base.time();
    let sig = git2::Signature::new(
        "genesis",
        "genesis@localhost",
        &git2::Time::new(when.seconds(), when.offset_minutes()),
    )
    .map_err(|e| GenesisError::git("making the candidate signature", e))?;
    let oid = mirror
        .commit(
            None,
            &sig,
            &sig,
            // No experiment id here: the same change on the same base is the
            // same commit, so its tarball is reused. The ref names the experiment.
            &format!("genesis candidate on {}", base.id()),
            &tree,
            &[base],
        )
        .map_err(|e| GenesisError::git("writing the candidate commit", e))?;
    let _guard = MIRROR_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    mirror
        .reference(
            &format!("refs/genesis/{experiment_id}"),
            oid,
            true,
            "genesis candidate",
        )
        .map_err(|e| GenesisError::git("writing refs/genesis ref", e))?;
    Ok(oid)
}
