//! Listing and pruning environments: `env list`, `env prune` and the
//! cleanup job. Unused for `keep_days` goes first, then the least recently
//! used until the environments' own layers fit in `disk_budget_mb`. An
//! image a container still uses is never forced out.

use std::path::Path;

use bollard::query_parameters::RemoveImageOptions;
use bollard::Docker;
use serde::Serialize;

use crate::errors::Result;

use super::{read_record, records_dir, EnvRecord};

/// One environment as `env list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct EnvInfo {
    #[serde(flatten)]
    pub record: EnvRecord,
    /// Bytes of its own layers (the image minus its base); None when the
    /// image is gone.
    pub size_bytes: Option<u64>,
}

/// What a prune did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PruneReport {
    /// (image, why) of each removed environment.
    pub removed: Vec<(String, String)>,
    /// (image, why not) of each that should have gone but could not.
    pub kept: Vec<(String, String)>,
    pub freed_bytes: u64,
    pub remaining: usize,
}

/// Every recorded environment, most recently used first.
pub async fn list(docker: &Docker, home: &Path) -> Result<Vec<EnvInfo>> {
    let dir = records_dir(home);
    let mut infos = Vec::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(infos);
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let Some(record) = read_record(&path) else {
            continue;
        };
        let size_bytes = own_size(docker, &record).await;
        infos.push(EnvInfo { record, size_bytes });
    }
    infos.sort_by_key(|i| std::cmp::Reverse(i.record.last_used_ms));
    Ok(infos)
}

async fn own_size(docker: &Docker, record: &EnvRecord) -> Option<u64> {
    let image = docker.inspect_image(&record.image).await.ok()?;
    let total = image.size.unwrap_or(0).max(0) as u64;
    let base = match docker.inspect_image(&record.base_image).await {
        Ok(b) => b.size.unwrap_or(0).max(0) as u64,
        Err(_) => 0,
    };
    Some(total.saturating_sub(base))
}

/// Removes environments unused for `keep_days`, then the least recently
/// used while the rest exceed `budget_mb`; `all` removes every one.
pub async fn prune(
    docker: &Docker,
    home: &Path,
    keep_days: u64,
    budget_mb: u64,
    now_ms: i64,
    all: bool,
) -> Result<PruneReport> {
    let mut infos = list(docker, home).await?;
    // Least recently used last, so popping takes it first.
    let cutoff = now_ms.saturating_sub((keep_days as i64).saturating_mul(86_400_000));
    let mut report = PruneReport::default();
    let mut total: u64 = infos.iter().filter_map(|i| i.size_bytes).sum();
    let budget = budget_mb.saturating_mul(1024 * 1024);
    while let Some(info) = infos.pop() {
        let why = if all {
            "prune --all".to_string()
        } else if info.size_bytes.is_none() {
            "image is gone".to_string()
        } else if info.record.last_used_ms < cutoff {
            format!("unused for more than {keep_days} days")
        } else if total > budget {
            format!("environments exceed {budget_mb} MB")
        } else {
            infos.push(info);
            break;
        };
        match remove(docker, home, &info).await {
            Ok(()) => {
                let size = info.size_bytes.unwrap_or(0);
                total = total.saturating_sub(size);
                report.freed_bytes += size;
                report.removed.push((info.record.image.clone(), why));
            }
            Err(e) => report.kept.push((info.record.image.clone(), e)),
        }
    }
    report.remaining = infos.len();
    Ok(report)
}

async fn remove(docker: &Docker, home: &Path, info: &EnvInfo) -> std::result::Result<(), String> {
    if info.size_bytes.is_some() {
        docker
            .remove_image(&info.record.image, None::<RemoveImageOptions>, None)
            .await
            .map_err(|e| format!("in use or not removable: {e}"))?;
    }
    let json = super::record_path(&records_dir(home), &info.record.repo, &info.record.key);
    let _ = std::fs::remove_file(json.with_extension("log"));
    std::fs::remove_file(&json).map_err(|e| format!("removing {}: {e}", json.display()))
}
