//! The numbers of contract §5, computed from the baseline's and candidate's
//! per-test outcomes. Pure functions; the contract defines each one
//! (summarised in `docs/contract.md`).
//!
//! Choices the contract leaves open, made here once:
//! - A test that passed on the baseline and is *skipped* in the candidate
//!   counts as vanished (a regression): skipping is a way to hide a failure.
//! - Tests reported flaky (failed, then passed on a re-run) are not
//!   regressions and are listed apart.
//! - Ratios with a zero denominator are 0.

use std::collections::{BTreeMap, BTreeSet};

use crate::contract::{BaselineSummary, Metrics};
use crate::results::{Outcome, TestReport};
use crate::sandbox::Resources;

/// One measured run, as the judge needs it.
#[derive(Debug, Clone)]
pub struct MeasuredRun<'a> {
    pub report: &'a TestReport,
    pub runtime_ms: u64,
    pub resources: &'a Resources,
    /// Line coverage from the run's coverage report, when one is configured.
    pub coverage_percent: Option<f64>,
}

/// Metrics plus the lists behind them.
#[derive(Debug, Clone, PartialEq)]
pub struct Judged {
    pub metrics: Metrics,
    pub baseline: BaselineSummary,
    pub regressions: Vec<String>,
    pub flaky: Vec<String>,
}

pub fn ratio(num: f64, den: f64) -> f64 {
    if den == 0.0 {
        0.0
    } else {
        num / den
    }
}

/// Ids of tests that passed in a report.
pub fn passed_ids(report: &TestReport) -> BTreeSet<&str> {
    report
        .cases
        .iter()
        .filter(|c| c.outcome == Outcome::Passed)
        .map(|c| c.id.as_str())
        .collect()
}

/// Tests that passed on the baseline and did not pass in the candidate.
pub fn regressed(baseline: &TestReport, candidate: &TestReport) -> Vec<String> {
    let now_passing = passed_ids(candidate);
    passed_ids(baseline)
        .into_iter()
        .filter(|id| !now_passing.contains(id))
        .map(str::to_owned)
        .collect()
}

/// Computes every metric of contract §5.
/// What the analysis found in the files the change touches (all repos).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChangeFigures {
    pub llm_before: u64,
    pub llm_after: u64,
    /// Sum of the cyclomatic complexity of every function, before and after.
    pub complexity_before: u64,
    pub complexity_after: u64,
}

/// `(after − before) / before`; None when the files had no function before
/// (contract §5: null when those files have no function).
pub fn complexity_change(before: u64, after: u64) -> Option<f64> {
    (before > 0).then(|| (after as f64 - before as f64) / before as f64)
}

/// `observed_llm_reduction` is the reduction of the calls the runs made
/// to the LLM endpoint, when the baseline made any; it wins over the
/// static count of call sites (contract §5).
pub fn judge(
    baseline: &MeasuredRun,
    candidate: &MeasuredRun,
    change: &ChangeFigures,
    observed_llm_reduction: Option<f64>,
    flaky: &BTreeSet<String>,
) -> Judged {
    let (llm_before, llm_after) = (change.llm_before, change.llm_after);
    let test_count = candidate.report.test_count() as u64;
    let failures = candidate.report.failures() as u64;
    let baseline_passed = passed_ids(baseline.report).len() as f64;
    let (flaky_hits, regressions): (Vec<String>, Vec<String>) =
        regressed(baseline.report, candidate.report)
            .into_iter()
            .partition(|id| flaky.contains(id));
    let metrics = Metrics {
        success_rate: ratio(
            test_count.saturating_sub(failures) as f64,
            test_count as f64,
        ),
        llm_reduction: observed_llm_reduction
            .unwrap_or_else(|| ratio(llm_before as f64 - llm_after as f64, llm_before as f64)),
        regression: ratio(regressions.len() as f64, baseline_passed),
        runtime_ms: candidate.runtime_ms,
        test_count,
        failures,
        memory_peak_mb: candidate.resources.memory_peak_bytes as f64 / (1024.0 * 1024.0),
        cpu_usage_percent: candidate.resources.cpu_percent,
        io_operations: candidate.resources.io_operations,
        performance_delta: ratio(
            candidate.runtime_ms as f64 - baseline.runtime_ms as f64,
            baseline.runtime_ms as f64,
        ),
        code_coverage_percent: candidate.coverage_percent,
        complexity_change: complexity_change(change.complexity_before, change.complexity_after),
    };
    Judged {
        metrics,
        baseline: BaselineSummary {
            test_count: baseline.report.test_count() as u64,
            failures: baseline.report.failures() as u64,
            runtime_ms: baseline.runtime_ms,
            code_coverage_percent: baseline.coverage_percent,
        },
        regressions,
        flaky: flaky_hits,
    }
}

/// (id, outcome) pairs for storage.
pub fn outcome_pairs(report: &TestReport) -> Vec<(String, Outcome)> {
    report
        .cases
        .iter()
        .map(|c| (c.id.clone(), c.outcome))
        .collect()
}

/// Counts of each outcome, for progress lines.
pub fn outcome_counts(report: &TestReport) -> BTreeMap<&'static str, usize> {
    let mut counts = BTreeMap::new();
    for (name, o) in [
        ("passed", Outcome::Passed),
        ("failed", Outcome::Failed),
        ("errored", Outcome::Errored),
        ("skipped", Outcome::Skipped),
    ] {
        counts.insert(name, report.count(o));
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::TestCase;

    fn report(cases: &[(&str, Outcome)]) -> TestReport {
        TestReport {
            format: "junit".into(),
            cases: cases
                .iter()
                .map(|(id, o)| TestCase {
                    id: (*id).into(),
                    outcome: *o,
                    duration_ms: None,
                    message: None,
                })
                .collect(),
        }
    }

    #[test]
    fn every_metric_by_hand() {
        use Outcome::*;
        let base = report(&[
            ("a", Passed),
            ("b", Passed),
            ("c", Passed),
            ("d", Failed),
            ("s", Skipped),
        ]);
        // b fails, c vanishes, d now passes, e is new and errors, s still skipped.
        let cand = report(&[
            ("a", Passed),
            ("b", Failed),
            ("d", Passed),
            ("e", Errored),
            ("s", Skipped),
        ]);
        let res = Resources {
            memory_peak_bytes: 3 * 1024 * 1024,
            cpu_percent: 50.0,
            io_operations: 7,
            samples: 2,
            ..Resources::default()
        };
        let j = judge(
            &MeasuredRun {
                report: &base,
                runtime_ms: 1000,
                resources: &Resources::default(),
                coverage_percent: None,
            },
            &MeasuredRun {
                report: &cand,
                runtime_ms: 1200,
                resources: &res,
                coverage_percent: None,
            },
            &ChangeFigures {
                llm_before: 10,
                llm_after: 6,
                complexity_before: 8,
                complexity_after: 10,
            },
            None,
            &BTreeSet::new(),
        );
        let m = &j.metrics;
        assert_eq!(m.test_count, 4);
        assert_eq!(m.failures, 2);
        assert_eq!(m.success_rate, 0.5);
        assert_eq!(j.regressions, ["b", "c"]);
        assert!((m.regression - 2.0 / 3.0).abs() < 1e-12);
        assert!((m.llm_reduction - 0.4).abs() < 1e-12);
        assert_eq!(m.complexity_change, Some(0.25));
        assert!((m.performance_delta - 0.2).abs() < 1e-12);
        assert_eq!(m.memory_peak_mb, 3.0);
        assert_eq!(
            j.baseline,
            BaselineSummary {
                test_count: 4,
                failures: 1,
                runtime_ms: 1000,
                code_coverage_percent: None
            }
        );
    }

    #[test]
    fn flaky_tests_are_not_regressions() {
        use Outcome::*;
        let base = report(&[("a", Passed), ("b", Passed)]);
        let cand = report(&[("a", Failed), ("b", Failed)]);
        let flaky = BTreeSet::from(["a".to_string()]);
        let r = Resources::default();
        let j = judge(
            &MeasuredRun {
                report: &base,
                runtime_ms: 0,
                resources: &r,
                coverage_percent: None,
            },
            &MeasuredRun {
                report: &cand,
                runtime_ms: 0,
                resources: &r,
                coverage_percent: None,
            },
            &ChangeFigures::default(),
            None,
            &flaky,
        );
        assert_eq!(j.metrics.complexity_change, None, "no function before");
        assert_eq!(j.regressions, ["b"]);
        assert_eq!(j.flaky, ["a"]);
        assert_eq!(j.metrics.regression, 0.5);
        assert_eq!(j.metrics.llm_reduction, 0.0);
        assert_eq!(j.metrics.performance_delta, 0.0);
    }

    #[test]
    fn observed_calls_win_over_the_static_count() {
        let base = report(&[("a", Outcome::Passed)]);
        let r = Resources::default();
        let run = MeasuredRun {
            report: &base,
            runtime_ms: 0,
            resources: &r,
            coverage_percent: None,
        };
        let sites = ChangeFigures {
            llm_before: 2,
            llm_after: 2,
            ..ChangeFigures::default()
        };
        let observed = judge(&run, &run, &sites, Some(0.4), &BTreeSet::new());
        assert_eq!(observed.metrics.llm_reduction, 0.4);
        let fallback = judge(&run, &run, &sites, None, &BTreeSet::new());
        assert_eq!(fallback.metrics.llm_reduction, 0.0);
    }
}
