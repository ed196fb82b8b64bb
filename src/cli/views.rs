//! `genesis list` and `genesis show`: the views of stored experiments, as
//! text for people and as JSON.

use crate::config::Config;
use crate::contract::{BeforeAfter, ErrorKind, ExperimentResult, LlmSummary, Recommendation};
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
            risk_level: r.risk_level.as_str(),
            status: r.status.as_str(),
            recommendation: r.recommendation.map(Recommendation::as_str),
            error: r.error.as_deref(),
            error_kind: r.error_kind.map(ErrorKind::as_str),
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
            GenesisError::Usage(format!(
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
            r.recommendation.map_or("-", Recommendation::as_str),
            r.experiment_type,
            r.risk_level.as_str(),
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
            operation: h.operation.as_str(),
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
            record.error_kind.map_or("?", ErrorKind::as_str)
        );
    }
    let completed = match record.result() {
        Some(ExperimentResult::Success(c)) => Some(c),
        _ => None,
    };
    if let Some(c) = &completed {
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
        s.push_str(&render_metrics(m));
    }
    if let Some(llm) = completed.as_ref().and_then(|c| c.llm.as_ref()) {
        s.push_str(&render_llm(llm));
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

/// The "metrics" block of `show`, with the regressed and flaky tests.
fn render_metrics(m: &MetricsRow) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
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
    for (title, tests) in [
        ("regressed tests", &m.regressions),
        ("flaky tests (not counted)", &m.flaky),
    ] {
        if !tests.is_empty() {
            let _ = writeln!(s, "{title}");
            for t in tests {
                let _ = writeln!(s, "  {t}");
            }
        }
    }
    s
}

/// The "LLM calls" block of `show`: what the runs' endpoint counted,
/// baseline → candidate, and whether `llm_reduction` came from it.
fn render_llm(llm: &LlmSummary) -> String {
    use std::fmt::Write as _;
    let arrow = |c: BeforeAfter| format!("{} → {}", c.before, c.after);
    let mut s = String::new();
    let _ = writeln!(s, "LLM calls    baseline → candidate");
    let _ = writeln!(s, "  source       {}", llm.source);
    let _ = writeln!(s, "  calls        {}", arrow(llm.calls));
    let _ = writeln!(s, "  tokens       {}", arrow(llm.tokens));
    for (api, counts) in &llm.by_api {
        let _ = writeln!(s, "  {:<20} {}", api.as_str(), arrow(*counts));
    }
    if llm.refused != BeforeAfter::default() {
        let _ = writeln!(s, "  refused      {}", arrow(llm.refused));
    }
    if let Some(why) = &llm.unavailable {
        let _ = writeln!(s, "  unavailable  {why}");
    }
    s
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::contract::{LlmApi, LlmSource, Request};
    use crate::store::Status;

    fn record(llm: Option<serde_json::Value>) -> ExperimentRecord {
        let request = Request::parse(
            br#"{"experiment_id":"e","instance_id":"i","experiment_type":"t","risk_level":"low","changes":{}}"#,
        )
        .unwrap();
        let mut r = ExperimentRecord::new(&request, Status::Completed, "h:1", 0);
        let mut result = serde_json::json!({
            "status": "success", "experiment_id": "e", "instance_id": "i",
            "metrics": crate::contract::Metrics::default(),
            "baseline": {"test_count": 1, "failures": 0, "runtime_ms": 1},
            "regressions": [], "recommendation": "merge", "reasons": [],
            "candidate": {"repo": "r", "base_commit": "a", "commit": "b"},
            "timestamp": "2026-12-01T00:00:00.000Z"
        });
        if let Some(llm) = llm {
            result["llm"] = llm;
        }
        r.result_json = Some(result.to_string());
        r
    }

    #[test]
    fn show_has_an_llm_block_when_the_result_has_llm() {
        let pair = |before, after| BeforeAfter { before, after };
        let llm = LlmSummary {
            source: LlmSource::Observed,
            calls: pair(5, 2),
            tokens: pair(1200, 480),
            by_api: BTreeMap::from([
                (LlmApi::OpenAiChat, pair(4, 2)),
                (LlmApi::AnthropicMessages, pair(1, 0)),
            ]),
            refused: pair(0, 3),
            unavailable: Some("runsc".into()),
        };
        let text = render_show(
            &record(Some(serde_json::to_value(&llm).unwrap())),
            None,
            &[],
        );
        for line in [
            "LLM calls    baseline → candidate",
            "  source       observed",
            "  calls        5 → 2",
            "  tokens       1200 → 480",
            "  openai.chat          4 → 2",
            "  anthropic.messages   1 → 0",
            "  refused      0 → 3",
            "  unavailable  runsc",
        ] {
            assert!(
                text.contains(&format!("{line}\n")),
                "{line:?} missing from\n{text}"
            );
        }
    }

    #[test]
    fn show_says_nothing_new_for_a_result_without_llm() {
        let text = render_show(&record(None), None, &[]);
        assert!(text.contains("candidate    r b (base a)"), "{text}");
        assert!(!text.contains("LLM"), "{text}");
        let quiet = LlmSummary {
            source: LlmSource::Static,
            calls: BeforeAfter::default(),
            tokens: BeforeAfter::default(),
            by_api: BTreeMap::new(),
            refused: BeforeAfter::default(),
            unavailable: None,
        };
        let block = render_llm(&quiet);
        assert!(block.contains("  source       static\n"), "{block}");
        assert!(
            !block.contains("refused") && !block.contains("unavailable"),
            "{block}"
        );
    }
}
