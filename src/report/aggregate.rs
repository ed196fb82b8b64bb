//! Aggregates over stored experiments: the period [`Trend`] the analysis,
//! report and health jobs publish, and the same figures per UTC day for the
//! trends page. One read of the store feeds both, so the page and the
//! published documents can never disagree.
//!
//! (Moved here from `jobs/trends.rs` so that `jobs` can render the trends
//! page after its `report` run without an import circle; `jobs` re-exports
//! [`summarize`] and [`Trend`].)

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::contract::{GroupStats, Recommendation, RiskLevel, Totals};
use crate::errors::Result;
use crate::judgement::metrics::ratio;
use crate::store::{Status, Store};

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

/// One UTC day of a period.
#[derive(Debug, Clone, PartialEq)]
pub struct Day {
    pub date: NaiveDate,
    pub trend: Trend,
    /// Completed experiments with a regression above 0.
    pub regressed: u64,
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
    /// Sum of the observed reductions, and how many there were.
    observed_llm_reduction: f64,
    observed: u64,
}

/// The parts of a record (and its metrics) the aggregates use.
struct Row {
    experiment_type: String,
    risk_level: RiskLevel,
    status: Status,
    recommendation: Option<Recommendation>,
    /// (regression, llm_reduction) of a completed experiment.
    metrics: Option<(f64, f64)>,
    /// The reduction of the calls the runs made, when the result's
    /// `llm.source` is observed.
    observed_llm_reduction: Option<f64>,
    updated_at: i64,
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
        if let Some(reduction) = row.observed_llm_reduction {
            self.observed_llm_reduction += reduction;
            self.observed += 1;
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
            avg_observed_llm_reduction: ratio(self.observed_llm_reduction, self.observed as f64),
            observed_llm_experiments: self.observed,
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
            let observed_llm_reduction = metrics
                .and_then(|_| r.llm())
                .and_then(|llm| llm.observed_reduction());
            Ok(Row {
                observed_llm_reduction,
                experiment_type: r.experiment_type,
                risk_level: r.risk_level,
                status: r.status,
                recommendation: r.recommendation,
                metrics,
                updated_at: r.updated_at,
            })
        })
        .collect()
}

/// Aggregates rows, overall, by experiment type and by risk level. In
/// `totals`, recommendations count as stored: a failed experiment
/// recommends rollback.
fn aggregate<'a>(rows: impl IntoIterator<Item = &'a Row>, from_ms: i64, to_ms: i64) -> Trend {
    let mut overall = Acc::default();
    let mut by_type: BTreeMap<String, Acc> = BTreeMap::new();
    let mut by_risk: BTreeMap<String, Acc> = BTreeMap::new();
    let mut totals = Totals::default();
    for row in rows {
        overall.add(row);
        by_type
            .entry(row.experiment_type.clone())
            .or_default()
            .add(row);
        by_risk
            .entry(row.risk_level.as_str().to_owned())
            .or_default()
            .add(row);
        match row.recommendation {
            Some(Recommendation::Merge) => totals.merge += 1,
            Some(Recommendation::MergeWithAdaptations) => totals.merge_with_adaptations += 1,
            Some(Recommendation::Rollback) => totals.rollback += 1,
            None => {}
        }
    }
    totals.experiments = overall.count;
    totals.completed = overall.completed;
    totals.failed = overall.failed;
    let stats = |m: BTreeMap<String, Acc>| m.into_iter().map(|(k, a)| (k, a.stats())).collect();
    Trend {
        computed_at_ms: to_ms,
        from_ms,
        to_ms,
        totals,
        overall: overall.stats(),
        by_type: stats(by_type),
        by_risk_level: stats(by_risk),
    }
}

/// Aggregates the experiments updated in `[from, to)`, overall, by
/// experiment type and by risk level. In `totals`, recommendations count as
/// stored: a failed experiment recommends rollback.
pub fn summarize(store: &Store, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Trend> {
    let (from_ms, to_ms) = (from.timestamp_millis(), to.timestamp_millis());
    Ok(aggregate(&rows(store, from_ms, to_ms)?, from_ms, to_ms))
}

/// As [`summarize`] for the whole period, plus one [`Trend`] per UTC day
/// from `from`'s date to `to`'s (days without experiments included, so a
/// chart's axis has no holes), from one read of the store.
pub fn summarize_days(
    store: &Store,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<(Trend, Vec<Day>)> {
    let (from_ms, to_ms) = (from.timestamp_millis(), to.timestamp_millis());
    let rows = rows(store, from_ms, to_ms)?;
    let period = aggregate(&rows, from_ms, to_ms);
    let mut by_day: BTreeMap<NaiveDate, Vec<&Row>> = BTreeMap::new();
    for row in &rows {
        if let Some(t) = DateTime::from_timestamp_millis(row.updated_at) {
            by_day.entry(t.date_naive()).or_default().push(row);
        }
    }
    let mut days = Vec::new();
    let mut date = from.date_naive();
    while date <= to.date_naive() {
        let start = date.and_time(chrono::NaiveTime::MIN).and_utc();
        let day_from = start.timestamp_millis().max(from_ms);
        let day_to = (start + chrono::TimeDelta::days(1))
            .timestamp_millis()
            .min(to_ms);
        let rows = by_day.remove(&date).unwrap_or_default();
        let regressed = rows
            .iter()
            .filter(|r| r.metrics.is_some_and(|(regression, _)| regression > 0.0))
            .count() as u64;
        days.push(Day {
            date,
            trend: aggregate(rows, day_from, day_to),
            regressed,
        });
        let Some(next) = date.succ_opt() else { break };
        date = next;
    }
    Ok((period, days))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{Metrics, Request};
    use crate::store::{ExperimentRecord, MetricsRow};

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn add(store: &Store, id: &str, status: Status, rec: &str, regression: f64, at: &str) {
        add_with_llm(store, id, (status, rec, regression, at), None)
    }

    /// As [`add`], the result carrying `llm` when given.
    fn add_with_llm(
        store: &Store,
        id: &str,
        (status, rec, regression, at): (Status, &str, f64, &str),
        llm: Option<serde_json::Value>,
    ) {
        let body = serde_json::json!({
            "experiment_id": id, "instance_id": "i", "experiment_type": "refactor",
            "risk_level": "low", "changes": {}
        });
        let request = Request::parse(body.to_string().as_bytes()).unwrap();
        let at = t(at).timestamp_millis();
        let mut record = ExperimentRecord::new(&request, status, "test:1", at);
        record.recommendation = crate::contract::Named::from_name(rec);
        record.result_json =
            llm.map(|llm| serde_json::json!({"status": "success", "llm": llm}).to_string());
        let metrics = (status == Status::Completed).then(|| MetricsRow {
            experiment_id: id.into(),
            host: String::new(),
            metrics: Metrics {
                regression,
                ..Metrics::default()
            },
            baseline: Default::default(),
            regressions: vec![],
            flaky: vec![],
            inserted_at: at,
        });
        store.write_final(&record, metrics.as_ref(), None).unwrap();
    }

    #[test]
    fn days_cover_the_period_and_add_up_to_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        add(
            &store,
            "a",
            Status::Completed,
            "merge",
            0.0,
            "2024-03-01T10:00:00Z",
        );
        add(
            &store,
            "b",
            Status::Completed,
            "rollback",
            0.2,
            "2024-03-01T23:59:59Z",
        );
        add(
            &store,
            "c",
            Status::Failed,
            "rollback",
            0.0,
            "2024-03-03T00:00:00Z",
        );
        add(
            &store,
            "old",
            Status::Failed,
            "rollback",
            0.0,
            "2024-02-01T00:00:00Z",
        );
        let (period, days) =
            summarize_days(&store, t("2024-03-01T00:00:00Z"), t("2024-03-03T12:00:00Z")).unwrap();
        assert_eq!(
            period,
            summarize(&store, t("2024-03-01T00:00:00Z"), t("2024-03-03T12:00:00Z")).unwrap()
        );
        assert_eq!(period.totals.experiments, 3);
        let counts: Vec<_> = days
            .iter()
            .map(|d| (d.date.to_string(), d.trend.totals.experiments, d.regressed))
            .collect();
        assert_eq!(
            counts,
            [
                ("2024-03-01".into(), 2, 1),
                ("2024-03-02".into(), 0, 0),
                ("2024-03-03".into(), 1, 0)
            ]
        );
        assert_eq!(days[0].trend.totals.merge, 1);
        assert_eq!(days[2].trend.overall.success_rate, 0.0);
        assert_eq!(
            days[2].trend.to_ms,
            t("2024-03-03T12:00:00Z").timestamp_millis()
        );
    }

    fn llm(source: &str, before: u64, after: u64) -> serde_json::Value {
        let calls = serde_json::json!({"before": before, "after": after});
        serde_json::json!({"source": source, "calls": calls, "tokens": calls, "by_api": {}})
    }

    #[test]
    fn observed_reductions_are_averaged_apart() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let at = "2024-03-01T10:00:00Z";
        let done = (Status::Completed, "merge", 0.0, at);
        add_with_llm(&store, "half", done, Some(llm("observed", 4, 2)));
        add_with_llm(&store, "all", done, Some(llm("observed", 5, 0)));
        add_with_llm(&store, "static", done, Some(llm("static", 0, 3)));
        add_with_llm(&store, "old", done, None);
        let failed = (Status::Failed, "rollback", 0.0, at);
        add_with_llm(&store, "failed", failed, Some(llm("observed", 1, 0)));
        let trend =
            summarize(&store, t("2024-03-01T00:00:00Z"), t("2024-03-02T00:00:00Z")).unwrap();
        assert_eq!(trend.overall.observed_llm_experiments, 2);
        assert_eq!(trend.overall.avg_observed_llm_reduction, 0.75);
        assert_eq!(trend.by_type["refactor"].observed_llm_experiments, 2);
        assert_eq!(
            trend.overall.avg_llm_reduction, 0.0,
            "the metrics rows say 0"
        );
        let json = serde_json::to_value(&trend.overall).unwrap();
        assert_eq!(json["avg_observed_llm_reduction"], 0.75);
        let mut older = json.as_object().unwrap().clone();
        older.remove("avg_observed_llm_reduction");
        older.remove("observed_llm_experiments");
        let read: GroupStats = serde_json::from_value(older.into()).unwrap();
        assert_eq!(
            read.observed_llm_experiments, 0,
            "an older document still reads"
        );
    }
}
