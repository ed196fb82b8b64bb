//! The cleanup job: delete, archive, prune to the disk budget, reap
//! containers. Decides from the store and an injected clock; one failing
//! sandbox never stops the others.

use crate::config::{CleanupPolicy, Config};
use crate::contract::{validate_experiment_id, Recommendation};
use crate::errors::{GenesisError, Result};
use crate::store::{ExperimentRecord, SandboxOperation, Status, Store};
use chrono::{DateTime, Utc};
use serde::Serialize;
use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

use super::*;

mod budget;

/// What cleanup should do with a sandbox directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxAction {
    Keep,
    Delete,
    Archive,
}

/// Decides from the record alone. Queued and running experiments are never
/// touched; failed and rolled-back ones are deleted after
/// `delete_after_hours`; merged ones archived after `archive_after_hours`.
pub fn sandbox_action(
    record: &ExperimentRecord,
    now_ms: i64,
    policy: &CleanupPolicy,
) -> SandboxAction {
    let age_ms = now_ms.saturating_sub(record.updated_at);
    let older_than = |hours: u64| {
        let limit = i64::try_from(hours.saturating_mul(MS_PER_HOUR)).unwrap_or(i64::MAX);
        age_ms > limit
    };
    match record.status {
        Status::Queued | Status::Running => SandboxAction::Keep,
        Status::Failed if older_than(policy.delete_after_hours) => SandboxAction::Delete,
        Status::Completed if record.recommendation == Some(Recommendation::Rollback) => {
            if older_than(policy.delete_after_hours) {
                SandboxAction::Delete
            } else {
                SandboxAction::Keep
            }
        }
        Status::Completed if keeps_an_archive(record) && older_than(policy.archive_after_hours) => {
            SandboxAction::Archive
        }
        _ => SandboxAction::Keep,
    }
}

/// Merged experiments' sandboxes are archived (kept); the rest are not.
fn keeps_an_archive(record: &ExperimentRecord) -> bool {
    matches!(
        record.recommendation,
        Some(Recommendation::Merge | Recommendation::MergeWithAdaptations)
    )
}

/// What a cleanup run did; printed by `genesis jobs run cleanup`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CleanupReport {
    /// Sandbox directories of failed and rolled-back experiments removed.
    pub deleted: Vec<String>,
    /// Sandboxes packed into archives (and their directories removed).
    pub archived: Vec<String>,
    /// Archives removed to stay under the disk budget, oldest first.
    pub pruned: Vec<String>,
    /// Orphan containers removed (container ids).
    pub containers_removed: Vec<String>,
    /// Environment images removed (unused past keep_days, or over budget).
    pub environments_removed: Vec<String>,
    /// Snapshot layers removed (unused past layer_keep_hours, or over budget).
    pub layers_removed: Vec<String>,
    /// Snapshot tarballs removed (over budget).
    pub snapshots_removed: Vec<String>,
    /// Archives failing verification; kept for inspection.
    pub corrupt_archives: Vec<String>,
    pub freed_bytes: u64,
    /// GENESIS_HOME's size after cleanup (apparent size of its files).
    pub disk_used_bytes: u64,
    pub disk_budget_bytes: u64,
    /// Things worth knowing that are not failures (Docker unreachable, ...).
    pub notes: Vec<String>,
    /// Steps that failed; the run as a whole counts as failed when non-empty.
    pub errors: Vec<String>,
}

impl CleanupReport {
    /// One line for logs and the job state.
    pub fn summary(&self) -> String {
        format!(
            "deleted {}, archived {}, pruned {}, containers removed {}, environments removed {}, layers removed {}, snapshots removed {}, corrupt archives {}, freed {:.1} MB, home {:.1} of {:.0} MB{}",
            self.deleted.len(),
            self.archived.len(),
            self.pruned.len(),
            self.containers_removed.len(),
            self.environments_removed.len(),
            self.layers_removed.len(),
            self.snapshots_removed.len(),
            self.corrupt_archives.len(),
            self.freed_bytes as f64 / BYTES_PER_MB as f64,
            self.disk_used_bytes as f64 / BYTES_PER_MB as f64,
            self.disk_budget_bytes as f64 / BYTES_PER_MB as f64,
            if self.errors.is_empty() {
                String::new()
            } else {
                format!(", {} error(s)", self.errors.len())
            }
        )
    }
}

/// Apparent size of every regular file under `path`, links not followed;
/// unreadable parts count as zero.
pub fn disk_usage_bytes(path: &Path) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(entries) = fs::read_dir(&p) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        } else if meta.is_file() {
            total = total.saturating_add(meta.len());
        }
    }
    total
}

/// Cleans GENESIS_HOME as of `now` (the injected clock's time): sandboxes,
/// archives, the disk budget, stale temporary files, orphan containers.
pub async fn cleanup(
    config: &Arc<Config>,
    store: &Store,
    now: DateTime<Utc>,
) -> Result<CleanupReport> {
    // Containers and environments first: a reaped container releases the
    // layers it mounted, and environments go before any archive (see
    // `budget`).
    let mut early = CleanupReport::default();
    reap_containers(config, store, &mut early).await;
    prune_environments(config, now, &mut early).await;
    let (cfg, st) = (config.clone(), store.clone());
    let mut report = tokio::task::spawn_blocking(move || {
        let mut files = Cleaner::new(&cfg, &st, now.timestamp_millis());
        files.report.containers_removed = early.containers_removed;
        files.report.environments_removed = early.environments_removed;
        files.report.freed_bytes = early.freed_bytes;
        files.report.notes = early.notes;
        files.report.errors = early.errors;
        files.run();
        files.report
    })
    .await
    .map_err(|e| GenesisError::Internal(format!("cleanup task: {e}")))?;
    report.disk_used_bytes = disk_usage_bytes(&config.home);
    Ok(report)
}

/// The file-system half of cleanup (blocking).
struct Cleaner<'a> {
    config: &'a Config,
    store: &'a Store,
    now_ms: i64,
    report: CleanupReport,
    /// Archives verified during this run (already recorded in history).
    verified: HashMap<String, VerifyReport>,
}

impl<'a> Cleaner<'a> {
    fn new(config: &'a Config, store: &'a Store, now_ms: i64) -> Self {
        let report = CleanupReport {
            disk_budget_bytes: config.cleanup.disk_budget_mb.saturating_mul(BYTES_PER_MB),
            ..CleanupReport::default()
        };
        Cleaner {
            config,
            store,
            now_ms,
            report,
            verified: HashMap::new(),
        }
    }

    fn run(&mut self) {
        self.sandboxes();
        let checks = match check_all(&self.config.home, &self.verified) {
            Ok(checks) => checks,
            Err(e) => {
                self.report.errors.push(e.to_string());
                Vec::new()
            }
        };
        if let Err(e) = record_checks(self.store, &checks) {
            self.report
                .errors
                .push(format!("recording verify rows: {e}"));
        }
        self.report.corrupt_archives = checks
            .iter()
            .filter(|c| !c.report.is_ok())
            .map(|c| c.id.clone())
            .collect();
        self.budget(&checks);
        self.layers();
        self.stale_temp();
    }

    /// Removes snapshot layers no run used for `layer_keep_hours` (a
    /// layer's mtime is refreshed each time an experiment prepares from
    /// it) and none has mounted now.
    fn layers(&mut self) {
        let limit_ms = hours_in_ms(self.config.cleanup.layer_keep_hours);
        let Ok(entries) = fs::read_dir(self.config.home.layers()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let unused = !name.starts_with('.')
                && self.now_ms.saturating_sub(mtime_ms(&path)) > limit_ms
                && !crate::sandbox::layer_in_use(&path);
            if !unused {
                continue;
            }
            match remove_tree(&path) {
                Ok(size) => {
                    self.report.freed_bytes += size;
                    self.report.layers_removed.push(name);
                }
                Err(e) => self.report.errors.push(e.to_string()),
            }
        }
    }

    fn history(&mut self, id: &str, op: SandboxOperation, path: &Path, size: u64, detail: &str) {
        let path = path.display().to_string();
        if let Err(e) = self.store.add_history(id, op, &path, size, detail) {
            self.report
                .errors
                .push(format!("{id}: recording the {op} in sandbox_history: {e}"));
        }
    }

    /// Deletes or archives each sandbox directory its record says is due.
    fn sandboxes(&mut self) {
        let dir = self.config.home.sandboxes();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) => {
                self.report
                    .errors
                    .push(format!("listing {}: {e}", dir.display()));
                return;
            }
        };
        let mut ids: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter(|id| validate_experiment_id(id).is_ok())
            .collect();
        ids.sort();
        for id in ids {
            if let Err(e) = self.sandbox(&id) {
                self.report.errors.push(format!("{id}: {e}"));
            }
        }
    }

    fn sandbox(&mut self, id: &str) -> Result<()> {
        let path = self.config.home.sandbox(id);
        let is_dir = fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
        if !is_dir {
            self.report.notes.push(format!(
                "{id}: sandbox entry is not a directory; left alone"
            ));
            return Ok(());
        }
        let Some(record) = self.store.get(id)? else {
            self.report.notes.push(format!(
                "{id}: sandbox has no record in the store; left alone"
            ));
            return Ok(());
        };
        match sandbox_action(&record, self.now_ms, &self.config.cleanup) {
            SandboxAction::Keep => Ok(()),
            SandboxAction::Delete => {
                let why = format!("after {} h", self.config.cleanup.delete_after_hours);
                self.delete_sandbox(id, &path, &record, &why)
            }
            SandboxAction::Archive => self.archive(id, &path),
        }
    }

    /// Removes a finished experiment's sandbox directory (never its
    /// record) and says so in its history: `why` ends the sentence.
    fn delete_sandbox(
        &mut self,
        id: &str,
        path: &Path,
        record: &ExperimentRecord,
        why: &str,
    ) -> Result<()> {
        let size = remove_tree(path)?;
        self.report.freed_bytes += size;
        self.report.deleted.push(id.to_owned());
        let detail = format!(
            "sandbox of a {} experiment removed {why}",
            record
                .recommendation
                .map_or(record.status.as_str(), Recommendation::as_str),
        );
        self.history(id, SandboxOperation::Delete, path, size, &detail);
        Ok(())
    }

    /// Packs a sandbox into `archives/ID.tar.gz`, verifies the archive, and
    /// only then removes the directory.
    fn archive(&mut self, id: &str, dir: &Path) -> Result<()> {
        let home = &self.config.home;
        let dest = home.archive(id);
        if fs::symlink_metadata(&dest).is_ok() {
            // An earlier run was interrupted after the rename: trust the
            // archive only if it verifies.
            let report = verify_archive(&dest)?;
            let size = fs::symlink_metadata(&dest).map(|m| m.len()).unwrap_or(0);
            self.history(id, SandboxOperation::Verify, &dest, size, &report.summary());
            let summary = report.summary();
            let ok = report.is_ok();
            self.verified.insert(id.to_owned(), report);
            if !ok {
                return Err(GenesisError::CorruptArchive {
                    path: dest,
                    message: format!("{summary}; sandbox kept"),
                });
            }
        } else {
            fs::create_dir_all(home.archives()).map_err(|e| {
                GenesisError::io(format!("creating {}", home.archives().display()), e)
            })?;
            let tmp = TempFile(Some(temp_beside(&dest)));
            let (info, notes) = bundle_live(home, id, tmp.path())?;
            let report = verify_archive(tmp.path())?;
            if !report.is_ok() {
                return Err(GenesisError::Internal(format!(
                    "the new archive of {id} failed verification ({}); sandbox kept",
                    report.summary()
                )));
            }
            tmp.persist(&dest)?;
            let mut detail = format!(
                "{} members, {} listed in MANIFEST; sha256 {}",
                info.members, info.listed, info.sha256
            );
            if !notes.is_empty() {
                detail.push_str(&format!("; {}", notes.join("; ")));
            }
            self.history(id, SandboxOperation::Archive, &dest, info.bytes, &detail);
            self.history(
                id,
                SandboxOperation::Verify,
                &dest,
                info.bytes,
                &report.summary(),
            );
            let mut report = report;
            report.path = dest.clone();
            self.verified.insert(id.to_owned(), report);
        }
        let size = remove_tree(dir)?;
        self.report.freed_bytes += size;
        self.report.archived.push(id.to_owned());
        let detail = format!("archived to {}", dest.display());
        self.history(id, SandboxOperation::Delete, dir, size, &detail);
        Ok(())
    }

    /// Removes spool directories and half-written archives, layers and
    /// snapshot tarballs left by a crash, once they are older than
    /// `delete_after_hours`.
    fn stale_temp(&mut self) {
        let limit_ms = hours_in_ms(self.config.cleanup.delete_after_hours);
        let home = &self.config.home;
        let spools = (home.tmp(), SPOOL_PREFIX, "");
        let archives = (home.archives(), ".", ".tmp");
        let layers = (home.layers(), ".", ".tmp");
        // Tarballs are still packed for environments and non-layered runs.
        let snapshots = (home.snapshots(), ".", ".tmp");
        for (dir, prefix, suffix) in [spools, archives, layers, snapshots] {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let path = entry.path();
                let stale = name.starts_with(prefix)
                    && name.ends_with(suffix)
                    && self.now_ms.saturating_sub(mtime_ms(&path)) > limit_ms;
                if stale {
                    match remove_tree(&path) {
                        Ok(size) => self.report.freed_bytes += size,
                        Err(e) => self.report.errors.push(e.to_string()),
                    }
                }
            }
        }
    }
}

/// An age limit in hours as milliseconds (saturating: a huge one never expires).
fn hours_in_ms(hours: u64) -> i64 {
    i64::try_from(hours.saturating_mul(MS_PER_HOUR)).unwrap_or(i64::MAX)
}

fn mtime_ms(path: &Path) -> i64 {
    fs::symlink_metadata(path)
        .map(|m| m.mtime().saturating_mul(1000) + m.mtime_nsec() / 1_000_000)
        .unwrap_or(0)
}

/// Removes a file or directory tree without following links; returns the
/// bytes it held.
fn remove_tree(path: &Path) -> Result<u64> {
    let size = disk_usage_bytes(path);
    let meta = fs::symlink_metadata(path)
        .map_err(|e| GenesisError::io(format!("inspecting {}", path.display()), e))?;
    // remove_dir_all does not follow links inside the tree; a link at the
    // top is removed as a link.
    let removed = if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    removed.map_err(|e| GenesisError::io(format!("removing {}", path.display()), e))?;
    Ok(size)
}

/// Removes containers labelled with this home whose experiment is not
/// running. Docker being unreachable is a note, not a failure.
/// Environments unused for `[environments] keep_days`, then the least
/// recently used over its disk budget (see `environment::prune`).
async fn prune_environments(config: &Config, now: DateTime<Utc>, report: &mut CleanupReport) {
    let timeout = config.sandbox.docker_timeout;
    let Ok(Ok(docker)) = tokio::time::timeout(timeout, crate::sandbox::connect()).await else {
        report
            .notes
            .push("environments not checked: Docker unreachable".into());
        return;
    };
    let policy = &config.environments;
    match crate::environment::prune(
        &docker,
        &config.home,
        policy.keep_days,
        policy.disk_budget_mb,
        now.timestamp_millis(),
        false,
    )
    .await
    {
        Ok(pruned) => {
            report.freed_bytes += pruned.freed_bytes;
            report
                .environments_removed
                .extend(pruned.removed.into_iter().map(|(image, _)| image));
            report.notes.extend(
                pruned
                    .kept
                    .into_iter()
                    .map(|(image, why)| format!("environment {image} kept: {why}")),
            );
        }
        Err(e) => report.errors.push(format!("pruning environments: {e}")),
    }
}

async fn reap_containers(config: &Config, store: &Store, report: &mut CleanupReport) {
    let timeout = config.sandbox.docker_timeout;
    let docker = match tokio::time::timeout(timeout, crate::sandbox::connect()).await {
        Ok(Ok(docker)) => docker,
        Ok(Err(e)) => {
            report.notes.push(format!(
                "orphan containers not checked: Docker unreachable: {e}"
            ));
            return;
        }
        Err(_) => {
            report.notes.push(format!(
                "orphan containers not checked: Docker did not answer within {} ms",
                config.sandbox.docker_timeout.as_millis()
            ));
            return;
        }
    };
    let label = crate::sandbox::home_label(&config.home);
    let listed = tokio::time::timeout(
        timeout,
        crate::sandbox::labelled_containers(&docker, Some(&label), None),
    )
    .await;
    let containers = match listed {
        Ok(Ok(list)) => list,
        Ok(Err(e)) => {
            report
                .notes
                .push(format!("orphan containers not checked: {e}"));
            return;
        }
        Err(_) => {
            report.notes.push(format!(
                "orphan containers not checked: listing took over {} ms",
                config.sandbox.docker_timeout.as_millis()
            ));
            return;
        }
    };
    for (container, experiment) in containers {
        if let Err(e) = reap_one(&docker, store, &container, &experiment, report).await {
            report.errors.push(format!("container {container}: {e}"));
        }
    }
}

async fn reap_one(
    docker: &bollard::Docker,
    store: &Store,
    container: &str,
    experiment: &str,
    report: &mut CleanupReport,
) -> Result<()> {
    let key = experiment.to_owned();
    let status = store.call(move |s| s.get(&key)).await?.map(|r| r.status);
    if status == Some(Status::Running) {
        return Ok(());
    }
    crate::sandbox::remove_container(docker, container).await?;
    report.containers_removed.push(container.to_owned());
    let detail = format!(
        "orphan container {container} removed (experiment {})",
        status.map_or("unknown to the store", Status::as_str)
    );
    let key = experiment.to_owned();
    store
        .call(move |s| s.add_history(&key, SandboxOperation::Cleanup, "", 0, &detail))
        .await?;
    Ok(())
}
