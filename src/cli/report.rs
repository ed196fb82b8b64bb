//! `genesis report`: writes an experiment's page or the trends page
//! (contract §9) and says where.

use std::path::Path;

use crate::config::Config;
use crate::errors::{GenesisError, Result};
use crate::store::open_store;

/// `id` given: that experiment's page (unknown id: exit 1); else the trends
/// over `days` (default `[cleanup] analysis_days`).
pub(super) async fn run(
    config: &Config,
    id: Option<&str>,
    days: Option<u64>,
    output: Option<&Path>,
) -> Result<i32> {
    if id.is_some() && days.is_some() {
        return Err(GenesisError::Usage(
            "--days goes with --trends, not with an experiment id".into(),
        ));
    }
    let store = open_store(config).await?;
    let (cfg, key) = (config.clone(), id.map(str::to_owned));
    let days = days.unwrap_or(config.cleanup.analysis_days);
    let now = chrono::Utc::now();
    let started = std::time::Instant::now();
    let html = store
        .call(move |s| match key {
            Some(id) => crate::report::experiment(s, &cfg, &id),
            None => crate::report::trends(s, &cfg, days, now),
        })
        .await?;
    let path = match (output, id) {
        (Some(p), _) => p.to_path_buf(),
        (None, Some(id)) => crate::report::experiment_path(config, id),
        (None, None) => crate::report::trends_path(config),
    };
    crate::report::write(&path, &html)?;
    eprintln!(
        "genesis: wrote {} ({} bytes in {} ms)",
        path.display(),
        html.len(),
        started.elapsed().as_millis()
    );
    println!("{}", path.display());
    Ok(0)
}
