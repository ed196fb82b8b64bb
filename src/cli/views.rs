//! `genesis list` and `genesis show`: the views of stored experiments, as
//! text for people and as JSON.

use crate::config::Config;
use crate::contract::ExperimentResult;
use crate::errors::{GenesisError, Result};
use crate::store::{open_store, ExperimentRecord, MetricsRow, SandboxEvent, Status, TestOutcomes};
use serde::Serialize;
use std::io::Write;

#[derive(Serialize)]
struct RecordView<'a> {
    experiment_id: &'a str,
    /// The host that ran it (`[host] name`).
    host: &'a str,
    instance_id: &'a str,
    experiment_type: &'a str,
    description: &'a str,
    risk_level: &'a str,
    status: &'a str,
    recommendation: Option<&'a str>,
    error: Option<&'a str>,
    error_kind: Option<&'a str>,
    inserted_at: String,
    updated_at: String,
}

impl<'a> From<&'a ExperimentRecord> for RecordView<'a> {
    fn from(r: &'a ExperimentRecord) -> Self {
        RecordView {
            experiment_id: &r.experiment_id,
            host: &r.host,
            instance_id: &r.instance_id,
            experiment_type: &r.experiment_type,
            description: &r.description,
            risk_level: &r.risk_level,
            status: r.status.as_str(),
            recommendation: r.recommendation.as_deref(),
            error: r.error.as_deref(),
            error_kind: r.error_kind.as_deref(),
            inserted_at: ms_to_rfc3339(r.inserted_at),
            updated_at: ms_to_rfc3339(r.updated_at),
        }
    }
}

pub fn ms_to_rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| crate::contract::timestamp::format(&t))
        .unwrap_or_default()
}

pub(super) async fn list(
    config: &Config,
    status: Option<&str>,
    json: bool,
    limit: usize,
) -> Result<i32> {
    let status = match status {
        None => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            GenesisError::InvalidRequest(format!(
                "--status {s:?}: expected queued, running, completed or failed"
            ))
        })?),
    };
    let store = open_store(config).await?;
    let records = store.call(move |s| s.list(status, limit)).await?;
    let mut out = std::io::stdout().lock();
    if json {
        let views: Vec<RecordView> = records.iter().map(RecordView::from).collect();
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&views).unwrap_or_default()
        );
        return Ok(0);
    }
    if records.is_empty() {
        let _ = writeln!(out, "no experiments");
        return Ok(0);
    }
    let _ = writeln!(
        out,
        "{:<28} {:<10} {:<23} {:<16} {:<7} UPDATED",
        "ID", "STATUS", "RECOMMENDATION", "TYPE", "RISK"
    );
    for r in &records {
        let _ = writeln!(
            out,
            "{:<28} {:<10} {:<23} {:<16} {:<7} {}",
            r.experiment_id,
            r.status.as_str(),
            r.recommendation.as_deref().unwrap_or("-"),
            r.experiment_type,
            r.risk_level,
            ms_to_rfc3339(r.updated_at)
        );
    }
    Ok(0)
}

#[derive(Serialize)]
struct ShowView<'a> {
    record: RecordView<'a>,
    result: Option<ExperimentResult>,
    metrics: Option<&'a crate::contract::Metrics>,
    outcomes: Option<&'a TestOutcomes>,
    history: Vec<HistoryView<'a>>,
    /// `ok`, `corrupt: WHY`, or absent when the sandbox is not archived.
    archive: Option<String>,
}

#[derive(Serialize)]
struct HistoryView<'a> {
    id: u64,
    operation: &'a str,
    path: &'a str,
    size_bytes: u64,
    detail: &'a str,
    inserted_at: String,
}

pub(super) async fn show(config: &Config, id: &str, json: bool) -> Result<i32> {
    let store = open_store(config).await?;
    let key = id.to_owned();
    type Shown = (
        Option<ExperimentRecord>,
        Option<MetricsRow>,
        Option<TestOutcomes>,
        Vec<SandboxEvent>,
    );
    let (record, metrics, outcomes, history): Shown = store
        .call(move |s| {
            Ok((
                s.get(&key)?,
                s.metrics(&key)?,
                s.outcomes(&key)?,
                s.history(&key)?,
            ))
        })
        .await?;
    let Some(record) = record else {
        eprintln!("genesis: no experiment with id {id:?}");
        return Ok(1);
    };
    let history_views: Vec<HistoryView> = history
        .iter()
        .map(|h| HistoryView {
            id: h.id,
            operation: &h.operation,
            path: &h.path,
            size_bytes: h.size_bytes,
            detail: &h.detail,
            inserted_at: ms_to_rfc3339(h.inserted_at),
        })
        .collect();
    let archive = archive_status(config, id).await;
    if json {
        let view = ShowView {
            record: RecordView::from(&record),
            result: record.result(),
            metrics: metrics.as_ref().map(|m| &m.metrics),
            outcomes: outcomes.as_ref(),
            history: history_views,
            archive,
        };
        println!(
            "{}",
            serde_json::to_string_pretty(&view).unwrap_or_default()
        );
        return Ok(0);
    }
    print!("{}", render_show(&record, metrics.as_ref(), &history_views));
    if let Some(archive) = archive {
        println!("archive      {archive}");
    }
    let page = crate::report::experiment_path(config, id);
    if page.is_file() {
        println!("report: {}", page.display());
    }
    Ok(0)
}

/// Verifies the experiment's archive, if it has one (off the runtime: it
/// reads and hashes the whole file).
async fn archive_status(config: &Config, id: &str) -> Option<String> {
    let (config, id) = (config.clone(), id.to_owned());
    let check =
        tokio::task::spawn_blocking(move || crate::maintenance::check_archive(&config, &id))
            .await
            .ok()??;
    Some(if check.report.is_ok() {
        format!("{} (verified)", check.path.display())
    } else {
        format!(
            "{} CORRUPT, kept for inspection: {}",
            check.path.display(),
            check.report.summary()
        )
    })
}

fn render_show(
    record: &ExperimentRecord,
    metrics: Option<&MetricsRow>,
    history: &[HistoryView],
) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let _ = writeln!(s, "experiment   {}", record.experiment_id);
    let _ = writeln!(s, "instance     {}", record.instance_id);
    let _ = writeln!(
        s,
        "type / risk  {} / {}",
        record.experiment_type, record.risk_level
    );
    let _ = writeln!(s, "description  {}", record.description);
    let _ = writeln!(s, "status       {}", record.status.as_str());
    let _ = writeln!(s, "updated      {}", ms_to_rfc3339(record.updated_at));
    if let Some(rec) = &record.recommendation {
        let _ = writeln!(s, "verdict      {rec}");
    }
    if let Some(e) = &record.error {
        let _ = writeln!(
            s,
            "error        [{}] {e}",
            record.error_kind.as_deref().unwrap_or("?")
        );
    }
    if let Some(ExperimentResult::Success(c)) = record.result() {
        for r in &c.reasons {
            let _ = writeln!(s, "  because    {r}");
        }
        let _ = writeln!(
            s,
            "candidate    {} {} (base {})",
            c.candidate.repo, c.candidate.commit, c.candidate.base_commit
        );
    }
    if let Some(m) = metrics {
        let x = &m.metrics;
        let _ = writeln!(s, "metrics");
        let _ = writeln!(
            s,
            "  tests        {} run, {} failed (baseline {} run, {} failed)",
            x.test_count, x.failures, m.baseline.test_count, m.baseline.failures
        );
        let _ = writeln!(
            s,
            "  success_rate {:.4}   regression {:.4}   llm_reduction {:.4}",
            x.success_rate, x.regression, x.llm_reduction
        );
        let _ = writeln!(
            s,
            "  runtime      {} ms (baseline {} ms, delta {:+.4})",
            x.runtime_ms, m.baseline.runtime_ms, x.performance_delta
        );
        let _ = writeln!(
            s,
            "  resources    peak {:.1} MB, cpu {:.1}%, io {}",
            x.memory_peak_mb, x.cpu_usage_percent, x.io_operations
        );
        if !m.regressions.is_empty() {
            let _ = writeln!(s, "regressed tests");
            for t in &m.regressions {
                let _ = writeln!(s, "  {t}");
            }
        }
        if !m.flaky.is_empty() {
            let _ = writeln!(s, "flaky tests (not counted)");
            for t in &m.flaky {
                let _ = writeln!(s, "  {t}");
            }
        }
    }
    if !history.is_empty() {
        let _ = writeln!(s, "sandbox history");
        for h in history {
            let _ = writeln!(
                s,
                "  {} {:<8} {} {}",
                h.inserted_at, h.operation, h.path, h.detail
            );
        }
    }
    s
}
