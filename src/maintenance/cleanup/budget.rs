//! The disk budget: what cleanup removes while GENESIS_HOME is over
//! `[cleanup] disk_budget_mb`, cheapest loss first, stopping as soon as it
//! fits.
//!
//! 1. Snapshot tarballs (`snapshots/`): a cache, packed again from the
//!    mirror when an experiment needs one.
//! 2. Snapshot layers (`layers/`) no overlay has mounted: also a cache.
//! 3. Sandboxes of finished experiments that are not yet due: merged ones
//!    are archived early (the archive holds the same, compressed, and is
//!    verified before the directory goes), the others deleted early as
//!    they would be after `delete_after_hours`.
//! 4. Intact archives of finished experiments, oldest first.
//!
//! Never removed: the store (no record is ever deleted by cleanup), the
//! mirrors, corrupt archives (kept for inspection), anything of a queued
//! or running experiment, and a cache file used within
//! `budget_grace_minutes`, which an experiment may be about to read.
//! Environment images live in the engine's storage, not in GENESIS_HOME;
//! they have their own budget and are pruned before this runs.

use std::fs;
use std::path::{Path, PathBuf};

use crate::store::{ExperimentRecord, SandboxOperation};

use super::super::*;
use super::{keeps_an_archive, mtime_ms, remove_tree, Cleaner};

/// What is over the budget and by how much, as the ladder works down.
struct Usage {
    used: u64,
    budget: u64,
}

impl Usage {
    fn over(&self) -> bool {
        self.used > self.budget
    }

    fn freed(&mut self, bytes: u64) {
        self.used = self.used.saturating_sub(bytes);
    }
}

impl Cleaner<'_> {
    /// Works down the ladder of the module doc until GENESIS_HOME fits.
    pub(super) fn budget(&mut self, checks: &[ArchiveCheck]) {
        let mut usage = Usage {
            used: disk_usage_bytes(&self.config.home),
            budget: self.report.disk_budget_bytes,
        };
        if !usage.over() {
            return;
        }
        let snapshots = self.config.home.snapshots();
        self.remove_idle_caches(&snapshots, &mut usage, false);
        let layers = self.config.home.layers();
        self.remove_idle_caches(&layers, &mut usage, true);
        self.finish_sandboxes_early(&mut usage);
        self.prune_archives(checks, &mut usage);
        if usage.over() {
            self.report.notes.push(format!(
                "GENESIS_HOME still uses {:.1} MB of a {} MB budget; nothing else may be removed (the store, the mirrors, corrupt archives, queued or running experiments and caches used in the last {} minutes are kept)",
                usage.used as f64 / BYTES_PER_MB as f64,
                self.config.cleanup.disk_budget_mb,
                self.config.cleanup.budget_grace_minutes
            ));
        }
    }

    /// Removes the entries of a cache directory not used within the grace
    /// period, least recently used first (a use refreshes the mtime).
    fn remove_idle_caches(&mut self, dir: &Path, usage: &mut Usage, layers: bool) {
        let grace_ms = i64::try_from(
            self.config
                .cleanup
                .budget_grace_minutes
                .saturating_mul(60_000),
        )
        .unwrap_or(i64::MAX);
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        let mut idle: Vec<(i64, PathBuf)> = entries
            .flatten()
            // Dot names are writers' temporary files; stale_temp owns them.
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| (mtime_ms(&e.path()), e.path()))
            .filter(|(mtime, _)| self.now_ms.saturating_sub(*mtime) > grace_ms)
            .collect();
        idle.sort();
        for (_, path) in idle {
            if !usage.over() {
                return;
            }
            if layers && crate::sandbox::layer_in_use(&path) {
                continue;
            }
            match remove_tree(&path) {
                Ok(size) => {
                    usage.freed(size);
                    self.report.freed_bytes += size;
                    let name = path.file_name().unwrap_or_default().to_string_lossy();
                    if layers {
                        self.report.layers_removed.push(name.into_owned());
                    } else {
                        self.report.snapshots_removed.push(name.into_owned());
                    }
                }
                Err(e) => self.report.errors.push(e.to_string()),
            }
        }
    }

    /// Archives (merged) or deletes (the rest) the sandboxes of finished
    /// experiments before they are due, oldest experiment first.
    fn finish_sandboxes_early(&mut self, usage: &mut Usage) {
        let dir = self.config.home.sandboxes();
        let Ok(entries) = fs::read_dir(&dir) else {
            return;
        };
        let mut finished: Vec<(i64, String, ExperimentRecord)> = Vec::new();
        for entry in entries.flatten() {
            let id = entry.file_name().to_string_lossy().into_owned();
            let is_dir = fs::symlink_metadata(entry.path()).is_ok_and(|m| m.is_dir());
            if !is_dir || crate::contract::validate_experiment_id(&id).is_err() {
                continue;
            }
            match self.store.get(&id) {
                Ok(Some(record)) if record.status.is_final() => {
                    finished.push((record.updated_at, id, record))
                }
                Ok(_) => {}
                Err(e) => self.report.errors.push(format!("{id}: {e}")),
            }
        }
        finished.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        for (_, id, record) in finished {
            if !usage.over() {
                return;
            }
            let path = dir.join(&id);
            let before = disk_usage_bytes(&path);
            let done = if keeps_an_archive(&record) {
                self.archive(&id, &path)
                    .map(|()| disk_usage_bytes(&self.config.home.archive(&id)))
            } else {
                let why = format!(
                    "early: GENESIS_HOME over its {} MB budget",
                    self.config.cleanup.disk_budget_mb
                );
                self.delete_sandbox(&id, &path, &record, &why).map(|()| 0)
            };
            match done {
                Ok(archive_bytes) => {
                    usage.freed(before);
                    usage.used = usage.used.saturating_add(archive_bytes);
                }
                Err(e) => self.report.errors.push(format!("{id}: {e}")),
            }
        }
    }

    /// Prunes intact archives, oldest experiment first. Corrupt archives
    /// and those of unfinished experiments stay.
    fn prune_archives(&mut self, checks: &[ArchiveCheck], usage: &mut Usage) {
        let mut candidates: Vec<(i64, &ArchiveCheck)> = Vec::new();
        for check in checks.iter().filter(|c| c.report.is_ok()) {
            match self.store.get(&check.id) {
                Ok(Some(r)) if !r.status.is_final() => continue,
                Ok(Some(r)) => candidates.push((r.updated_at, check)),
                // An archive without a record: its file time is all we know.
                Ok(None) => candidates.push((mtime_ms(&check.path), check)),
                Err(e) => self.report.errors.push(format!("{}: {e}", check.id)),
            }
        }
        candidates.sort_by(|a, b| (a.0, &a.1.id).cmp(&(b.0, &b.1.id)));
        for (_, check) in candidates {
            if !usage.over() {
                break;
            }
            if let Err(e) = fs::remove_file(&check.path) {
                self.report.errors.push(format!(
                    "{}: pruning {}: {e}",
                    check.id,
                    check.path.display()
                ));
                continue;
            }
            usage.freed(check.size_bytes);
            self.report.freed_bytes += check.size_bytes;
            self.report.pruned.push(check.id.clone());
            let detail = format!(
                "archive pruned: GENESIS_HOME over its {} MB budget",
                self.config.cleanup.disk_budget_mb
            );
            self.history(
                &check.id,
                SandboxOperation::Delete,
                &check.path,
                check.size_bytes,
                &detail,
            );
        }
    }
}
