//! The trends page: [`summarize_days`] over a period, drawn as charts with
//! the tables behind them.

use askama::Template;
use chrono::{DateTime, NaiveTime, TimeDelta, Utc};

use super::aggregate::{summarize_days, Day, Trend};
use super::svg::{self, num, Svg};
use super::{generated_at, pct};
use crate::config::Config;
use crate::contract::{GroupStats, Recommendation, RiskLevel};
use crate::errors::{GenesisError, Result};
use crate::store::Store;

/// Longest period a page covers (ten years of daily columns).
pub const MAX_DAYS: u64 = 3660;
/// Experiment types drawn in the chart, and listed in the table; the rest are counted.
const CHART_TYPES: usize = 20;
const TABLE_TYPES: usize = 100;

#[derive(Template)]
#[template(path = "trends.html", config = "src/report/askama.toml")]
pub(super) struct Page {
    generated: String,
    days: u64,
    from: String,
    to: String,
    totals: Vec<(&'static str, String)>,
    empty: bool,
    recommendations: Svg,
    success: Svg,
    regressions: Svg,
    risks_in_chart: Vec<(&'static str, String)>,
    by_type_chart: Svg,
    by_risk_chart: Svg,
    by_type: Vec<GroupRow>,
    more_types: usize,
    by_risk: Vec<GroupRow>,
    table: Vec<DayRow>,
}

struct GroupRow {
    name: String,
    count: u64,
    completed: u64,
    failed: u64,
    success_rate: String,
    avg_regression: String,
    avg_llm_reduction: String,
    /// Average over the experiments with observed calls, "—" with none.
    avg_observed_llm_reduction: String,
    observed_llm_experiments: u64,
}

struct DayRow {
    date: String,
    experiments: u64,
    completed: u64,
    failed: u64,
    success_rate: String,
    avg_regression: String,
    regressed: u64,
    merge: u64,
    adapt: u64,
    rollback: u64,
}

/// The page for the `days` UTC days ending with `now`'s (today included).
pub(super) fn build(
    store: &Store,
    _config: &Config,
    days: u64,
    now: DateTime<Utc>,
) -> Result<String> {
    let days = days.clamp(1, MAX_DAYS);
    let first = now.date_naive() - TimeDelta::days(days as i64 - 1);
    let from = first.and_time(NaiveTime::MIN).and_utc();
    let (period, daily) = summarize_days(store, from, now)?;
    let labels: Vec<String> = daily
        .iter()
        .map(|d| d.date.format("%m-%d").to_string())
        .collect();
    let page = Page {
        generated: generated_at(),
        days,
        from: first.to_string(),
        to: now.date_naive().to_string(),
        totals: totals_table(&period),
        empty: period.totals.experiments == 0,
        recommendations: recommendations_chart(&labels, &daily),
        success: success_chart(&labels, &daily, &period.by_risk_level),
        regressions: regressions_chart(&labels, &daily),
        risks_in_chart: risk_series(&period.by_risk_level)
            .into_iter()
            .map(|(class, name)| (class, name.to_owned()))
            .collect(),
        by_type_chart: group_chart("experiments by type", &period.by_type, CHART_TYPES),
        by_risk_chart: group_chart("experiments by risk level", &period.by_risk_level, 3),
        by_type: group_rows(&period.by_type, TABLE_TYPES),
        more_types: period.by_type.len().saturating_sub(TABLE_TYPES),
        by_risk: group_rows(&period.by_risk_level, usize::MAX),
        table: daily
            .iter()
            .rev()
            .filter(|d| d.trend.totals.experiments > 0)
            .map(day_row)
            .collect(),
    };
    page.render()
        .map_err(|e| GenesisError::Internal(format!("rendering the trends page: {e}")))
}

/// The period's figures above the charts.
fn totals_table(period: &Trend) -> Vec<(&'static str, String)> {
    let totals = &period.totals;
    let pending =
        totals.experiments - totals.merge - totals.merge_with_adaptations - totals.rollback;
    vec![
        ("experiments", totals.experiments.to_string()),
        ("completed", totals.completed.to_string()),
        ("failed", totals.failed.to_string()),
        ("success rate", pct(period.overall.success_rate)),
        ("avg regression", num(period.overall.avg_regression)),
        ("avg llm_reduction", num(period.overall.avg_llm_reduction)),
        (
            "avg observed llm_reduction",
            observed_average(&period.overall),
        ),
        (
            "with observed LLM calls",
            period.overall.observed_llm_experiments.to_string(),
        ),
        (Recommendation::Merge.as_str(), totals.merge.to_string()),
        (
            "merge with adaptations",
            totals.merge_with_adaptations.to_string(),
        ),
        (
            Recommendation::Rollback.as_str(),
            totals.rollback.to_string(),
        ),
        ("not finished", pending.to_string()),
    ]
}

fn regressions_chart(labels: &[String], daily: &[Day]) -> Svg {
    svg::stacked_columns(
        "experiments with a regression per day",
        labels,
        &daily
            .iter()
            .map(|d| {
                let tip = format!("{}: {} regressed", d.date, d.regressed);
                vec![(d.regressed as f64, "bar-bad", tip)]
            })
            .collect::<Vec<_>>(),
    )
}

fn recommendations_chart(labels: &[String], daily: &[Day]) -> Svg {
    let columns: Vec<_> = daily
        .iter()
        .map(|d| {
            let t = &d.trend.totals;
            let other = t.experiments - t.merge - t.merge_with_adaptations - t.rollback;
            let tip = |what: &str, n: u64| format!("{}: {n} {what}", d.date);
            vec![
                (
                    t.merge as f64,
                    "bar-good",
                    tip(Recommendation::Merge.as_str(), t.merge),
                ),
                (
                    t.merge_with_adaptations as f64,
                    "bar-warn",
                    tip(
                        Recommendation::MergeWithAdaptations.as_str(),
                        t.merge_with_adaptations,
                    ),
                ),
                (
                    t.rollback as f64,
                    "bar-bad",
                    tip(Recommendation::Rollback.as_str(), t.rollback),
                ),
                (other as f64, "bar-none", tip("not finished", other)),
            ]
        })
        .collect();
    svg::stacked_columns("experiments per day by recommendation", labels, &columns)
}

/// Risk levels present, in order, with their series class.
fn risk_series(
    by_risk: &std::collections::BTreeMap<String, GroupStats>,
) -> Vec<(&'static str, &'static str)> {
    RiskLevel::ALL
        .into_iter()
        .map(|risk| {
            let class = match risk {
                RiskLevel::Low => "s-low",
                RiskLevel::Medium => "s-medium",
                RiskLevel::High => "s-high",
            };
            (class, risk.as_str())
        })
        .filter(|(_, r)| by_risk.contains_key(*r))
        .collect()
}

/// Success rate per day, overall and per risk level; days where nothing
/// finished are gaps.
fn success_chart(
    labels: &[String],
    daily: &[Day],
    by_risk: &std::collections::BTreeMap<String, GroupStats>,
) -> Svg {
    let rate = |g: Option<&GroupStats>| {
        g.filter(|g| g.completed + g.failed > 0)
            .map(|g| g.success_rate)
    };
    let mut series = vec![(
        "s-all",
        "all".to_owned(),
        daily.iter().map(|d| rate(Some(&d.trend.overall))).collect(),
    )];
    for (class, risk) in risk_series(by_risk) {
        series.push((
            class,
            risk.to_owned(),
            daily
                .iter()
                .map(|d| rate(d.trend.by_risk_level.get(risk)))
                .collect(),
        ));
    }
    let axis = |v: f64| format!("{:.0} %", v * 100.0);
    svg::lines(
        "success rate per day, overall and by risk level",
        labels,
        1.0,
        (&axis, &pct),
        &series,
    )
}

fn group_chart(
    label: &str,
    groups: &std::collections::BTreeMap<String, GroupStats>,
    max: usize,
) -> Svg {
    let mut sorted: Vec<(&String, &GroupStats)> = groups.iter().collect();
    sorted.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
    let rows: Vec<_> = sorted
        .into_iter()
        .take(max)
        .map(|(name, g)| {
            let tip = format!(
                "{name}: {} experiments, success rate {}",
                g.count,
                pct(g.success_rate)
            );
            (name.clone(), g.count as f64, "bar", tip)
        })
        .collect();
    svg::hbars(label, &rows, "")
}

fn group_rows(
    groups: &std::collections::BTreeMap<String, GroupStats>,
    max: usize,
) -> Vec<GroupRow> {
    let mut sorted: Vec<(&String, &GroupStats)> = groups.iter().collect();
    sorted.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
    sorted
        .into_iter()
        .take(max)
        .map(|(name, g)| GroupRow {
            name: name.clone(),
            count: g.count,
            completed: g.completed,
            failed: g.failed,
            success_rate: pct(g.success_rate),
            avg_regression: num(g.avg_regression),
            avg_llm_reduction: num(g.avg_llm_reduction),
            avg_observed_llm_reduction: observed_average(g),
            observed_llm_experiments: g.observed_llm_experiments,
        })
        .collect()
}

/// The observed average, or "—" when no experiment had observed calls (a
/// 0 there would read as "no reduction").
fn observed_average(g: &GroupStats) -> String {
    if g.observed_llm_experiments > 0 {
        num(g.avg_observed_llm_reduction)
    } else {
        "—".into()
    }
}

fn day_row(d: &Day) -> DayRow {
    let t = &d.trend;
    DayRow {
        date: d.date.to_string(),
        experiments: t.totals.experiments,
        completed: t.totals.completed,
        failed: t.totals.failed,
        success_rate: if t.totals.completed + t.totals.failed > 0 {
            pct(t.overall.success_rate)
        } else {
            "—".into()
        },
        avg_regression: num(t.overall.avg_regression),
        regressed: d.regressed,
        merge: t.totals.merge,
        adapt: t.totals.merge_with_adaptations,
        rollback: t.totals.rollback,
    }
}
