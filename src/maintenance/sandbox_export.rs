//! `genesis sandbox export`: a verified tarball of a live or archived sandbox,
//! written beside the destination and renamed into place.

use crate::config::Config;
use crate::contract::validate_experiment_id;
use crate::errors::{GenesisError, Result};
use crate::home::Home;
use crate::store::{SandboxOperation, Store};
use serde::Serialize;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use super::*;

/// Where an export came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum ExportSource {
    Live(PathBuf),
    Archive(PathBuf),
}

/// What `export_sandbox` wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportSummary {
    pub output: PathBuf,
    pub source: ExportSource,
    pub bundle: BundleInfo,
    /// What was left out of a live export and why (links, no workspace, ...).
    pub notes: Vec<String>,
}

/// A sibling temporary path for `dest`, renamed over it when complete.
pub(super) fn temp_beside(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".into());
    let seq = SPOOL_SEQ.fetch_add(1, Ordering::Relaxed);
    dest.with_file_name(format!(".{name}.{}-{seq}.tmp", std::process::id()))
}

/// Removes the temporary file unless it was renamed into place.
pub(super) struct TempFile(pub(super) Option<PathBuf>);

impl TempFile {
    pub(super) fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }

    /// Renames into place and syncs the directory so the name survives a crash.
    pub(super) fn persist(mut self, dest: &Path) -> Result<()> {
        let tmp = self.0.take().unwrap_or_default();
        fs::rename(&tmp, dest).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            GenesisError::io(format!("moving the bundle to {}", dest.display()), e)
        })?;
        if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = fs::File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs::remove_file(path);
        }
    }
}

/// Copies a file without following a link at `from`, synced to disk.
fn copy_nofollow(from: &Path, to: &Path) -> io::Result<()> {
    let mut src = open_nofollow(from)?;
    let mut dst = fs::File::create(to)?;
    io::copy(&mut src, &mut dst)?;
    dst.sync_all()
}

/// Result of the blocking half of an export.
enum Exported {
    Done(ExportSummary),
    /// The archive failed verification; nothing was written.
    Corrupt(VerifyReport),
}

fn export_blocking(
    home: &Path,
    id: &str,
    output: &Path,
) -> Result<(Exported, Option<VerifyReport>)> {
    let home = Home::of(home);
    let (archive, live) = (home.archive(id), home.sandbox(id));
    let tmp = TempFile(Some(temp_beside(output)));
    let context = || format!("writing {}", output.display());
    // The archive wins: it is what cleanup verified and kept; a sandbox dir
    // beside it is at most a leftover of an interrupted archival.
    if fs::symlink_metadata(&archive).is_ok() {
        copy_nofollow(&archive, tmp.path()).map_err(|e| GenesisError::io(context(), e))?;
        let mut report = verify_archive(tmp.path())?;
        report.path = archive.clone();
        if report.is_ok() && report.experiment_id.as_deref() != Some(id) {
            report
                .problems
                .push(format!("does not hold experiment {id}"));
        }
        if !report.is_ok() {
            return Ok((Exported::Corrupt(report.clone()), Some(report)));
        }
        let (sha256, bytes) = open_nofollow(tmp.path())
            .and_then(hash_reader)
            .map_err(|e| GenesisError::io(context(), e))?;
        tmp.persist(output)?;
        let bundle = BundleInfo {
            members: report.members,
            listed: report.files_checked,
            bytes,
            sha256,
        };
        let summary = ExportSummary {
            output: output.to_path_buf(),
            source: ExportSource::Archive(archive),
            bundle,
            notes: Vec::new(),
        };
        return Ok((Exported::Done(summary), Some(report)));
    }
    if fs::symlink_metadata(&live).is_err() {
        return Err(GenesisError::Usage(format!(
            "experiment {id} has no sandbox to export: neither {} nor {} exists (see `genesis show {id}` for its history)",
            live.display(),
            archive.display()
        )));
    }
    let (bundle, notes) = bundle_live(&home, id, tmp.path())?;
    // Check our own work before handing it out.
    let report = verify_archive(tmp.path())?;
    if !report.is_ok() {
        return Err(GenesisError::Internal(format!(
            "the export of {id} failed its own verification: {}",
            report.summary()
        )));
    }
    tmp.persist(output)?;
    let summary = ExportSummary {
        output: output.to_path_buf(),
        source: ExportSource::Live(live),
        bundle,
        notes,
    };
    Ok((Exported::Done(summary), None))
}

/// `genesis sandbox export ID --output FILE`: writes the bundle of a live or
/// archived sandbox (an archive is verified first and refused if corrupt).
pub async fn export_sandbox(
    config: &Config,
    store: &Store,
    id: &str,
    output: &Path,
) -> Result<ExportSummary> {
    // The id becomes a path component: refuse anything but the contract's ids.
    validate_experiment_id(id).map_err(GenesisError::InvalidRequest)?;
    let key = id.to_owned();
    if store.call(move |s| s.get(&key)).await?.is_none() {
        return Err(GenesisError::UnknownExperiment(id.to_owned()));
    }
    let (home, key, out) = (config.home.clone(), id.to_owned(), output.to_path_buf());
    let (exported, verified) =
        tokio::task::spawn_blocking(move || export_blocking(&home, &key, &out))
            .await
            .map_err(|e| GenesisError::Internal(format!("export task: {e}")))??;
    if let Some(report) = verified {
        let (key, path, summary) = (
            id.to_owned(),
            report.path.display().to_string(),
            report.summary(),
        );
        let size = fs::symlink_metadata(&report.path)
            .map(|m| m.len())
            .unwrap_or(0);
        store
            .call(move |s| s.add_history(&key, SandboxOperation::Verify, &path, size, &summary))
            .await?;
    }
    let summary = match exported {
        Exported::Done(summary) => summary,
        Exported::Corrupt(report) => {
            return Err(GenesisError::CorruptArchive {
                path: report.path.clone(),
                message: report.summary(),
            })
        }
    };
    let source = match &summary.source {
        ExportSource::Live(p) => format!("live sandbox {}", p.display()),
        ExportSource::Archive(p) => format!("archive {}", p.display()),
    };
    let detail = format!(
        "from {source}; {} members, {} listed in MANIFEST; sha256 {}",
        summary.bundle.members, summary.bundle.listed, summary.bundle.sha256
    );
    let (key, path, size) = (
        id.to_owned(),
        output.display().to_string(),
        summary.bundle.bytes,
    );
    store
        .call(move |s| s.add_history(&key, SandboxOperation::Export, &path, size, &detail))
        .await?;
    for note in &summary.notes {
        tracing::info!(experiment_id = %id, "export: {note}");
    }
    Ok(summary)
}
