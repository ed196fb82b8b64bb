//! The experiment page: what the store holds about one experiment, turned
//! into the values `templates/experiment.html` shows. The verdict, facts
//! and gauges are built here; tests, resources, environment, analysis and
//! the log tail in [`super::details`].

use askama::Template;

use super::details::{
    analysis, counts, environment, log_tail, resources, runtime_chart, test_lists, AnalysisRow,
    CountRow, LogTail, TestList,
};
use super::llm::{llm_view, reduction_definition, LlmView};
use super::svg::{self, gauge, num, Mark, Svg, Zone};
use super::{bytes, fmt_ms, generated_at, verdict_class};
use crate::config::{Config, Thresholds};
use crate::contract::{Completed, ErrorKind, ExperimentResult, LlmSource, Metrics};
use crate::errors::{GenesisError, Result};
use crate::store::{ExperimentRecord, MetricsRow, SandboxEvent, Store, TestOutcomes};

#[derive(Template)]
#[template(path = "experiment.html", config = "src/report/askama.toml")]
pub(super) struct Page {
    generated: String,
    id: String,
    status: &'static str,
    verdict: Option<String>,
    verdict_class: &'static str,
    facts: Vec<(&'static str, String)>,
    reasons: Vec<String>,
    rules: Vec<Rule>,
    risk: String,
    failure: Option<(String, String)>,
    gauges: Vec<GaugeView>,
    counts: Vec<CountRow>,
    tests: Vec<TestList>,
    resources: Vec<(&'static str, String, String)>,
    runtime: Option<Svg>,
    environment: Vec<(&'static str, String)>,
    analysis: Option<Vec<AnalysisRow>>,
    llm: Option<LlmView>,
    log: Option<LogTail>,
    history: Vec<HistoryRow>,
}

struct Rule {
    text: String,
    decided: bool,
}

struct GaugeView {
    name: &'static str,
    value: String,
    definition: &'static str,
    svg: Svg,
}

struct HistoryRow {
    at: String,
    operation: String,
    path: String,
    size: String,
    detail: String,
}

/// Everything the page reads from the store and the home.
pub(super) fn build(store: &Store, config: &Config, id: &str) -> Result<String> {
    let record = store
        .get(id)?
        .ok_or_else(|| GenesisError::UnknownExperiment(id.to_owned()))?;
    let metrics_row = store.metrics(id)?;
    let outcomes = store.outcomes(id)?;
    let history = store.history(id)?;
    let log = log_tail(&config.home.sandbox(id).join("candidate").join("test.log"));
    let page = page(
        &record,
        metrics_row.as_ref(),
        outcomes.as_ref(),
        &history,
        config,
        log,
    );
    page.render()
        .map_err(|e| GenesisError::Internal(format!("rendering the page of {id}: {e}")))
}

fn page(
    record: &ExperimentRecord,
    metrics_row: Option<&MetricsRow>,
    outcomes: Option<&TestOutcomes>,
    history: &[SandboxEvent],
    config: &Config,
    log: Option<LogTail>,
) -> Page {
    let result = record.result();
    let raw: Option<serde_json::Value> = record
        .result_json
        .as_deref()
        .and_then(|j| serde_json::from_str(j).ok());
    let completed = match &result {
        Some(ExperimentResult::Success(c)) => Some(c),
        _ => None,
    };
    let failure = failure(record, result.as_ref());
    let metrics = completed
        .map(|c| &c.metrics)
        .or(metrics_row.map(|m| &m.metrics));
    let thresholds = config.thresholds.for_risk(record.risk_level);
    let reasons = completed.map(|c| c.reasons.clone()).unwrap_or_default();
    let decided = reasons.first().map(|r| r.rule).filter(|&rule| rule > 0);
    let regressions = completed
        .map(|c| c.regressions.clone())
        .or(metrics_row.map(|m| m.regressions.clone()))
        .unwrap_or_default();
    let flaky = completed
        .map(|c| c.flaky.clone())
        .or(metrics_row.map(|m| m.flaky.clone()))
        .unwrap_or_default();
    let llm = completed.and_then(|c| c.llm.as_ref());
    let llm_source = llm.map(|l| l.source);
    Page {
        generated: generated_at(),
        id: record.experiment_id.clone(),
        status: record.status.as_str(),
        verdict: record.recommendation.map(|r| r.as_str().to_owned()),
        verdict_class: verdict_class(record.recommendation),
        facts: facts(
            record,
            completed,
            result.as_ref().map_or(record.host.as_str(), |r| r.host()),
        ),
        reasons: reasons.into_iter().map(|r| r.text).collect(),
        rules: rules(&thresholds, if failure.is_some() { None } else { decided }),
        risk: record.risk_level.as_str().to_owned(),
        failure,
        gauges: metrics
            .map(|m| gauges(m, &thresholds, llm_source))
            .unwrap_or_default(),
        counts: outcomes.map(counts).unwrap_or_default(),
        tests: test_lists(outcomes, &regressions, &flaky),
        resources: metrics
            .map(|m| resources(m, completed, metrics_row))
            .unwrap_or_default(),
        runtime: metrics.map(|m| runtime_chart(m, completed, metrics_row)),
        environment: completed.map(environment).unwrap_or_default(),
        analysis: raw.as_ref().and_then(analysis),
        llm: llm_view(llm, completed.and_then(|c| c.analysis.as_ref())),
        log,
        history: history.iter().map(history_row).collect(),
    }
}

/// (error kind, error) of a failed experiment, from its result or, before
/// one was stored, its record.
fn failure(
    record: &ExperimentRecord,
    result: Option<&ExperimentResult>,
) -> Option<(String, String)> {
    match result {
        Some(ExperimentResult::Failed(f)) => Some((f.error_kind.to_string(), f.error.clone())),
        _ => record.error.as_ref().map(|e| {
            let kind = record.error_kind.map_or("unknown", ErrorKind::as_str);
            (kind.to_owned(), e.clone())
        }),
    }
}

fn history_row(h: &SandboxEvent) -> HistoryRow {
    HistoryRow {
        at: fmt_ms(h.inserted_at),
        operation: h.operation.as_str().to_owned(),
        path: h.path.clone(),
        size: bytes(h.size_bytes),
        detail: h.detail.clone(),
    }
}

fn rules(t: &Thresholds, decided: Option<u8>) -> Vec<Rule> {
    [
        format!(
            "rollback if regression > {} or success_rate < {}",
            num(t.rollback_regression),
            num(t.rollback_success_rate)
        ),
        format!(
            "merge if (llm_reduction > {} and regression < {}) or success_rate > {}",
            num(t.merge_llm_reduction),
            num(t.merge_regression),
            num(t.merge_success_rate)
        ),
        format!(
            "merge_with_adaptations if success_rate > {} and regression < {}",
            num(t.adapt_success_rate),
            num(t.adapt_regression)
        ),
        "otherwise rollback".to_owned(),
    ]
    .into_iter()
    .zip(1u8..)
    .map(|(text, n)| Rule {
        text,
        decided: decided == Some(n),
    })
    .collect()
}

fn facts(r: &ExperimentRecord, c: Option<&Completed>, host: &str) -> Vec<(&'static str, String)> {
    let mut facts = vec![
        ("Instance", r.instance_id.clone()),
        ("Type", r.experiment_type.clone()),
        ("Risk level", r.risk_level.as_str().to_owned()),
        ("Description", r.description.clone()),
        ("Created", fmt_ms(r.inserted_at)),
        ("Updated", fmt_ms(r.updated_at)),
    ];
    if let Some(c) = c {
        facts.push(("Repository", c.candidate.repo.clone()));
        facts.push(("Base commit", c.candidate.base_commit.clone()));
        facts.push(("Candidate commit", c.candidate.commit.clone()));
    }
    facts.push(("Host", host.to_owned()));
    facts.retain(|(_, v)| !v.is_empty());
    facts
}

/// Marks at the same value share one tick.
fn marks(list: &[(&str, f64)]) -> Vec<Mark> {
    let mut out: Vec<Mark> = Vec::new();
    for (label, at) in list {
        match out.iter_mut().find(|m| m.at == *at) {
            Some(m) => m.label = format!("{} · {label}", m.label),
            None => out.push(Mark {
                at: *at,
                label: (*label).to_owned(),
            }),
        }
    }
    out
}

/// `llm_source` is the result's `llm.source` (None for a result stored
/// before the endpoint): it decides what `llm_reduction` is said to count.
fn gauges(m: &Metrics, t: &Thresholds, llm_source: Option<LlmSource>) -> Vec<GaugeView> {
    vec![
        GaugeView {
            name: "success_rate",
            value: num(m.success_rate),
            definition: "(test_count − failures) / test_count in the candidate",
            svg: success_gauge(m, t),
        },
        GaugeView {
            name: "regression",
            value: num(m.regression),
            definition:
                "share of baseline passes that fail, vanish or are skipped in the candidate",
            svg: regression_gauge(m, t),
        },
        GaugeView {
            name: "llm_reduction",
            value: num(m.llm_reduction),
            definition: reduction_definition(llm_source),
            svg: llm_gauge(m, t),
        },
    ]
}

fn zone(from: f64, to: f64, class: &'static str) -> Zone {
    Zone { from, to, class }
}

fn success_gauge(m: &Metrics, t: &Thresholds) -> Svg {
    gauge(
        "success_rate against its thresholds",
        m.success_rate,
        (0.0, 1.0),
        &[
            zone(0.0, t.rollback_success_rate, "bad"),
            zone(t.adapt_success_rate, t.merge_success_rate, "warn"),
            zone(t.merge_success_rate, 1.0, "good"),
        ],
        &marks(&[
            ("rollback <", t.rollback_success_rate),
            ("adapt >", t.adapt_success_rate),
            ("merge >", t.merge_success_rate),
        ]),
    )
}

/// The scale reaches twice the highest threshold (or the value, if
/// larger), so the zones stay readable.
fn regression_gauge(m: &Metrics, t: &Thresholds) -> Svg {
    let highest = t
        .rollback_regression
        .max(t.adapt_regression)
        .max(t.merge_regression);
    let hi = svg::nice_ceil((2.0 * highest).max(m.regression)).min(1.0);
    gauge(
        "regression against its thresholds",
        m.regression,
        (0.0, hi),
        &[
            zone(0.0, t.merge_regression, "good"),
            zone(t.merge_regression, t.adapt_regression, "warn"),
            zone(t.rollback_regression, hi, "bad"),
        ],
        &marks(&[
            ("merge <", t.merge_regression),
            ("adapt <", t.adapt_regression),
            ("rollback >", t.rollback_regression),
        ]),
    )
}

/// A negative reduction (more calls) widens the scale to −1.
fn llm_gauge(m: &Metrics, t: &Thresholds) -> Svg {
    let lo = if m.llm_reduction < 0.0 { -1.0 } else { 0.0 };
    gauge(
        "llm_reduction against its threshold",
        m.llm_reduction,
        (lo, 1.0),
        &[zone(t.merge_llm_reduction, 1.0, "good")],
        &marks(&[("merge >", t.merge_llm_reduction)]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_thresholds_share_a_tick() {
        let m = marks(&[("adapt <", 0.05), ("rollback >", 0.05), ("merge <", 0.03)]);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].label, "adapt < · rollback >");
    }
}
