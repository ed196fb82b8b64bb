//! Path checks on a patch before it is applied: shapes that leave the repo,
//! symlinks on the way, and the paths the request declared.

use crate::errors::{GenesisError, Result};
use git2::{Diff, Repository, Tree};
use std::collections::BTreeSet;
use std::path::{Component, Path};

use super::*;

pub(super) fn checked_paths(diff: &Diff, base: &Tree, repo: &Repository) -> Result<Vec<String>> {
    let mut touched = BTreeSet::new();
    for delta in diff.deltas() {
        for file in [delta.old_file(), delta.new_file()] {
            let Some(raw) = file.path_bytes() else {
                continue;
            };
            let path = std::str::from_utf8(raw).map_err(|_| {
                GenesisError::PatchFailed(format!(
                    "patch path {} is not UTF-8",
                    String::from_utf8_lossy(raw)
                ))
            })?;
            if path == "/dev/null" {
                continue;
            }
            check_path_shape(path)?;
            check_no_symlink_prefix(path, base, repo)?;
            touched.insert(path.to_owned());
        }
    }
    if touched.is_empty() {
        return Err(GenesisError::PatchFailed(
            "the patch touches no files".into(),
        ));
    }
    Ok(touched.into_iter().collect())
}

/// A path must be relative, plain, and outside `.git`.
pub fn check_path_shape(path: &str) -> Result<()> {
    let refuse = |why: &str| {
        Err(GenesisError::PatchFailed(format!(
            "patch path {path:?} {why}; refusing the whole change"
        )))
    };
    if path.is_empty() || path.starts_with('/') || path.contains('\\') || path.contains('\0') {
        return refuse("is absolute or malformed");
    }
    for component in Path::new(path).components() {
        match component {
            Component::Normal(c) if c == ".git" => return refuse("is inside .git"),
            Component::Normal(_) => {}
            _ => return refuse("leaves the repository (.. or absolute)"),
        }
    }
    if path.split('/').any(|c| c == "." || c.is_empty()) {
        return refuse("has an empty or '.' component");
    }
    Ok(())
}

/// Refuses a path whose parent directories include a symlink in the base
/// tree: writing through it could land anywhere.
fn check_no_symlink_prefix(path: &str, base: &Tree, _repo: &Repository) -> Result<()> {
    let parts: Vec<&str> = path.split('/').collect();
    for end in 1..parts.len() {
        let prefix = parts[..end].join("/");
        if let Ok(entry) = base.get_path(Path::new(&prefix)) {
            if entry.filemode() == MODE_LINK {
                return Err(GenesisError::PatchFailed(format!(
                    "patch path {path:?} goes through the symlink {prefix:?}; refusing the whole change"
                )));
            }
        }
    }
    Ok(())
}

/// Symlinks the patch creates must point inside the repo.
pub(super) fn check_candidate_symlinks(
    repo: &Repository,
    tree: &Tree,
    touched: &[String],
) -> Result<()> {
    for path in touched {
        let Ok(entry) = tree.get_path(Path::new(path)) else {
            continue;
        };
        if entry.filemode() != MODE_LINK {
            continue;
        }
        let blob = repo
            .find_blob(entry.id())
            .map_err(|e| GenesisError::git("reading a symlink target", e))?;
        let target = String::from_utf8_lossy(blob.content()).into_owned();
        if !symlink_stays_inside(path, &target) {
            return Err(GenesisError::PatchFailed(format!(
                "patch makes {path:?} a symlink to {target:?}, which leaves the repository"
            )));
        }
    }
    Ok(())
}

/// Whether `target`, read relative to the directory of `link`, stays within the repo root.
pub fn symlink_stays_inside(link: &str, target: &str) -> bool {
    if target.starts_with('/') {
        return false;
    }
    let mut depth: i64 = link.split('/').count() as i64 - 1;
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => depth += 1,
        }
    }
    true
}

pub(super) fn check_declared(declared: &[String], touched: &[String]) -> Result<()> {
    let declared: BTreeSet<&str> = declared.iter().map(String::as_str).collect();
    let touched: BTreeSet<&str> = touched.iter().map(String::as_str).collect();
    if declared == touched {
        return Ok(());
    }
    let missing: Vec<_> = touched.difference(&declared).copied().collect();
    let extra: Vec<_> = declared.difference(&touched).copied().collect();
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!(
            "the patch touches {} which changes.files does not list",
            missing.join(", ")
        ));
    }
    if !extra.is_empty() {
        parts.push(format!(
            "changes.files lists {} which the patch does not touch",
            extra.join(", ")
        ));
    }
    Err(GenesisError::InvalidRequest(format!(
        "changes.files disagrees with the patch: {}",
        parts.join("; ")
    )))
}
