//! What the analysis, report and health jobs compute from the store:
//! per-day trends, the daily metrics report and the health document. The
//! aggregation itself ([`summarize`], [`Trend`]) lives in
//! [`crate::report`], which also draws it as the trends page.

use crate::contract::{Health, MetricsReport, Period};
use crate::errors::Result;
use crate::maintenance;
use crate::store::Status;

pub use crate::report::{summarize, Trend};

use super::*;

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
        avg_observed_llm_reduction: trend.overall.avg_observed_llm_reduction,
        observed_llm_experiments: trend.overall.observed_llm_experiments,
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
