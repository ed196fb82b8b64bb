//! What the analysis, report and health jobs compute from the store:
//! per-day trends, the daily metrics report and the health document.

use crate::contract::{GroupStats, Health, MetricsReport, Period, Recommendation, Totals};
use crate::errors::Result;
use crate::judgement::metrics::ratio;
use crate::maintenance;
use crate::store::{Status, Store};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::*;

/// Aggregates of the experiments updated in a period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trend {
    pub computed_at_ms: i64,
    pub from_ms: i64,
    pub to_ms: i64,
    pub totals: Totals,
    /// All experiments of the period as one group.
    pub overall: GroupStats,
    pub by_type: BTreeMap<String, GroupStats>,
    pub by_risk_level: BTreeMap<String, GroupStats>,
}

/// Running sums for one group.
#[derive(Debug, Default)]
struct Acc {
    count: u64,
    completed: u64,
    failed: u64,
    regression: f64,
    llm_reduction: f64,
    /// Completed experiments with metrics: the averages' denominator.
    measured: u64,
}

/// The parts of a record (and its metrics) the aggregates use.
struct Row {
    experiment_type: String,
    risk_level: String,
    status: Status,
    recommendation: Option<String>,
    /// (regression, llm_reduction) of a completed experiment.
    metrics: Option<(f64, f64)>,
}

impl Acc {
    fn add(&mut self, row: &Row) {
        self.count += 1;
        match row.status {
            Status::Completed => self.completed += 1,
            Status::Failed => self.failed += 1,
            Status::Queued | Status::Running => {}
        }
        if let Some((regression, llm)) = row.metrics {
            self.regression += regression;
            self.llm_reduction += llm;
            self.measured += 1;
        }
    }

    /// `success_rate` is completed / (completed + failed); 0 with neither.
    fn stats(&self) -> GroupStats {
        GroupStats {
            count: self.count,
            completed: self.completed,
            failed: self.failed,
            success_rate: ratio(self.completed as f64, (self.completed + self.failed) as f64),
            avg_regression: ratio(self.regression, self.measured as f64),
            avg_llm_reduction: ratio(self.llm_reduction, self.measured as f64),
        }
    }
}

/// Reads the experiments updated in `[from, to)` with their metrics.
fn rows(store: &Store, from_ms: i64, to_ms: i64) -> Result<Vec<Row>> {
    let mut records = Vec::new();
    store.for_each_record(Some(from_ms), |r| {
        if r.updated_at < to_ms {
            records.push(r);
        }
        Ok(())
    })?;
    records
        .into_iter()
        .map(|r| {
            let metrics = if r.status == Status::Completed {
                store
                    .metrics(&r.experiment_id)?
                    .map(|m| (m.metrics.regression, m.metrics.llm_reduction))
            } else {
                None
            };
            Ok(Row {
                experiment_type: r.experiment_type,
                risk_level: r.risk_level,
                status: r.status,
                recommendation: r.recommendation,
                metrics,
            })
        })
        .collect()
}

/// Aggregates the experiments updated in `[from, to)`, overall, by
/// experiment type and by risk level. In `totals`, recommendations count as
/// stored: a failed experiment recommends rollback.
pub fn summarize(store: &Store, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Trend> {
    let (from_ms, to_ms) = (from.timestamp_millis(), to.timestamp_millis());
    let rows = rows(store, from_ms, to_ms)?;
    let mut overall = Acc::default();
    let mut by_type: BTreeMap<String, Acc> = BTreeMap::new();
    let mut by_risk: BTreeMap<String, Acc> = BTreeMap::new();
    let mut totals = Totals::default();
    for row in &rows {
        overall.add(row);
        by_type
            .entry(row.experiment_type.clone())
            .or_default()
            .add(row);
        by_risk.entry(row.risk_level.clone()).or_default().add(row);
        let rec = row.recommendation.as_deref();
        if rec == Some(Recommendation::Merge.as_str()) {
            totals.merge += 1;
        } else if rec == Some(Recommendation::MergeWithAdaptations.as_str()) {
            totals.merge_with_adaptations += 1;
        } else if rec == Some(Recommendation::Rollback.as_str()) {
            totals.rollback += 1;
        }
    }
    totals.experiments = overall.count;
    totals.completed = overall.completed;
    totals.failed = overall.failed;
    let stats = |m: BTreeMap<String, Acc>| m.into_iter().map(|(k, a)| (k, a.stats())).collect();
    Ok(Trend {
        computed_at_ms: to_ms,
        from_ms,
        to_ms,
        totals,
        overall: overall.stats(),
        by_type: stats(by_type),
        by_risk_level: stats(by_risk),
    })
}

/// `analysis`: aggregates over `cleanup.analysis_days`, stored as the day's
/// trend and as [`TREND_LATEST`].
pub(super) async fn analysis(ctx: &JobContext) -> Result<Done> {
    let to = ctx.clock.now();
    let from = days_before(to, ctx.config.cleanup.analysis_days);
    let trend = ctx
        .store
        .call(move |s| {
            let trend = summarize(s, from, to)?;
            s.put_trend(&format!("analysis/{}", to.format("%Y-%m-%d")), &trend)?;
            s.put_trend(TREND_LATEST, &trend)?;
            Ok(trend)
        })
        .await?;
    let summary = format!(
        "{} experiment(s) over {} day(s) in {} type(s), success rate {:.3}",
        trend.totals.experiments,
        ctx.config.cleanup.analysis_days,
        trend.by_type.len(),
        trend.overall.success_rate
    );
    Ok(Done {
        summary,
        document: Some(to_json(&trend)?),
        published_to: None,
    })
}

/// The daily report: the last day up to now.
pub async fn daily_report(ctx: &JobContext) -> Result<MetricsReport> {
    let to = ctx.clock.now();
    let from = days_before(to, 1);
    let trend = ctx.store.call(move |s| summarize(s, from, to)).await?;
    Ok(MetricsReport {
        totals: trend.totals,
        success_rate: trend.overall.success_rate,
        avg_regression: trend.overall.avg_regression,
        avg_llm_reduction: trend.overall.avg_llm_reduction,
        by_type: trend.by_type,
        by_risk_level: trend.by_risk_level,
        period: Period { from, to },
    })
}

/// The health document. Archive checks are cached (see `maintenance`);
/// archives verified afresh get a `verify` history row.
pub async fn health(ctx: &JobContext) -> Result<Health> {
    let now = ctx.clock.now();
    let since = days_before(now, ctx.config.cleanup.analysis_days);
    let config = ctx.config.clone();
    ctx.store
        .call(move |s| {
            let active = s.ids_with_status(Status::Running)?.len() as u64;
            let queued = s.ids_with_status(Status::Queued)?.len() as u64;
            let success_rate_30d = summarize(s, since, now)?.overall.success_rate;
            let checks = maintenance::check_archives(&config)?;
            maintenance::record_checks(s, &checks)?;
            let corrupt_archives = checks
                .into_iter()
                .filter(|c| !c.report.is_ok())
                .map(|c| c.id)
                .collect();
            let disk_used_mb = maintenance::disk_usage_bytes(&config.home) as f64 / BYTES_PER_MB;
            Ok(Health {
                active_experiments: active,
                queued,
                success_rate_30d,
                disk_used_mb,
                corrupt_archives,
                timestamp: now,
            })
        })
        .await
}
