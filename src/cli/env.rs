//! `genesis env build | list | prune`: environments by hand (contract §2a, §6).

use std::sync::Arc;

use crate::config::Config;
use crate::environment;
use crate::errors::Result;
use crate::runner::Runner;
use crate::store::open_store;

use super::StderrProgress;

/// Builds (or finds) the environment of `repo` at `reference`; prints its
/// JSON (`{image, key, reused, build_ms}`) on stdout, progress on stderr.
pub async fn build(config: Arc<Config>, repo: &str, reference: &str) -> Result<i32> {
    let store = open_store(&config).await?;
    let runner = Runner::new(config, store).await?;
    let progress = StderrProgress::new();
    let env = runner.build_environment(repo, reference, &progress).await?;
    drop(progress);
    println!("{}", serde_json::to_string_pretty(&env).unwrap_or_default());
    Ok(0)
}

/// Key, repo, size and last use of every environment.
pub async fn list(config: &Config, json: bool) -> Result<i32> {
    let docker = crate::sandbox::connect().await?;
    let infos = environment::list(&docker, &config.home).await?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&infos).unwrap_or_default()
        );
        return Ok(0);
    }
    if infos.is_empty() {
        println!("no environments");
        return Ok(0);
    }
    println!(
        "{:<32}  {:<16}  {:>9}  {:<25}  IMAGE",
        "KEY", "REPO", "SIZE", "LAST USED"
    );
    for info in &infos {
        let size = info.size_bytes.map_or("gone".to_string(), |b| {
            format!("{:.1} MB", b as f64 / 1048576.0)
        });
        println!(
            "{:<32}  {:<16}  {:>9}  {:<25}  {}",
            info.record.key,
            info.record.repo,
            size,
            super::views::ms_to_rfc3339(info.record.last_used_ms),
            info.record.image
        );
    }
    Ok(0)
}

/// Removes environments past `[environments] keep_days` or over the disk
/// budget; `all` removes every one not in use.
pub async fn prune(config: &Config, all: bool) -> Result<i32> {
    let docker = crate::sandbox::connect().await?;
    let policy = &config.environments;
    let report = environment::prune(
        &docker,
        &config.home,
        policy.keep_days,
        policy.disk_budget_mb,
        chrono::Utc::now().timestamp_millis(),
        all,
    )
    .await?;
    for (image, why) in &report.removed {
        println!("removed {image}: {why}");
    }
    for (image, why) in &report.kept {
        eprintln!("genesis: kept {image}: {why}");
    }
    println!(
        "{} removed ({:.1} MB freed), {} kept",
        report.removed.len(),
        report.freed_bytes as f64 / 1048576.0,
        report.remaining + report.kept.len()
    );
    Ok(0)
}
