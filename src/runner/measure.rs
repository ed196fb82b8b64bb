//! Measuring a planned experiment: the baseline, the candidate and the
//! re-runs that tell flaky tests from regressions, judged into the result,
//! its metrics row and the tests' outcomes.

use std::collections::BTreeSet;

use crate::contract::{
    AnalysisSummary, CandidateRef, Completed, LlmSummary, LlmTally, Metrics, Request,
};
use crate::errors::{GenesisError, Result};
use crate::judgement::metrics::{judge, outcome_pairs, ChangeFigures, Judged, MeasuredRun};
use crate::results::TestReport;
use crate::sandbox::Role;
use crate::snapshot::PreparedRepo;
use crate::store::{MetricsRow, TestOutcomes};

use super::{now_ms, stage, Plan, Progress, Runner, SuiteRun};

/// The runs an experiment is judged on, their reports moved out of them
/// (judging borrows the reports; nothing else reads them from the runs).
struct Runs {
    baseline: SuiteRun,
    /// A baseline without a report is judged as one with no tests.
    base_report: TestReport,
    candidate: SuiteRun,
    cand_report: TestReport,
    /// New failures that passed on a re-run.
    flaky: BTreeSet<String>,
}

impl Runner {
    /// Runs the baseline, the candidate and the flaky checks of a planned
    /// experiment, then judges them.
    pub(super) async fn measure(
        &self,
        request: &Request,
        plan: &Plan,
        primary: &PreparedRepo,
        progress: &dyn Progress,
    ) -> Result<(Completed, MetricsRow, TestOutcomes)> {
        let id = &request.experiment_id;
        let runs = self.run_suites(request, plan, progress).await?;
        let (analysis, change) = self.analyze_change(id, plan).await;
        let llm = llm_summary(plan, &runs.baseline, &runs.candidate);
        let judged = runs.judge(&change, &llm);
        progress.stage(id, stage::METRICS, &metrics_line(&judged.metrics));
        let completed = self.completed(request, plan, primary, &judged, analysis, llm);
        let row = self.metrics_row(id, judged);
        Ok((completed, row, runs.outcomes()))
    }

    /// The baseline, the candidate and its re-runs. A candidate without a
    /// report fails the experiment: there is nothing to judge it on.
    async fn run_suites(
        &self,
        request: &Request,
        plan: &Plan,
        progress: &dyn Progress,
    ) -> Result<Runs> {
        let id = &request.experiment_id;
        let mut baseline = self.baseline(request, plan, progress).await?;
        let mut candidate = self
            .suite(id, Role::Candidate, plan, false, progress)
            .await?;
        let cand_report = candidate.report.take().ok_or_else(|| {
            GenesisError::NoTests(candidate.report_error.clone().unwrap_or_default())
        })?;
        progress.stage(
            id,
            stage::TESTS,
            &format!(
                "{} tests, {} failures in {} ms",
                cand_report.test_count(),
                cand_report.failures(),
                candidate.runtime_ms
            ),
        );
        let base_report = baseline.report.take().unwrap_or_else(|| TestReport {
            format: "none".into(),
            cases: Vec::new(),
        });
        let flaky = self
            .find_flaky(id, plan, &base_report, &cand_report, progress)
            .await?;
        Ok(Runs {
            baseline,
            base_report,
            candidate,
            cand_report,
            flaky,
        })
    }

    /// The result document: the judged figures, the verdict of the
    /// request's risk level, and what was run to reach it.
    fn completed(
        &self,
        request: &Request,
        plan: &Plan,
        primary: &PreparedRepo,
        judged: &Judged,
        analysis: AnalysisSummary,
        llm: LlmSummary,
    ) -> Completed {
        let thresholds = self.config.thresholds.for_risk(request.risk_level);
        let (recommendation, reasons) =
            crate::judgement::policy::verdict(&judged.metrics, &thresholds);
        Completed {
            experiment_id: request.experiment_id.clone(),
            instance_id: request.instance_id.clone(),
            metrics: judged.metrics.clone(),
            baseline: judged.baseline.clone(),
            regressions: judged.regressions.clone(),
            flaky: judged.flaky.clone(),
            recommendation,
            reasons,
            candidate: CandidateRef {
                repo: plan.primary.clone(),
                base_commit: primary.base.commit.clone(),
                commit: primary.candidate.commit.clone(),
            },
            environment: plan.environment.clone(),
            framework: Some(plan.framework.clone()),
            analysis: Some(analysis),
            llm: Some(llm),
            host: self.config.host.clone(),
            timestamp: chrono::Utc::now(),
        }
    }

    /// The row the trends and reports aggregate over.
    fn metrics_row(&self, id: &str, judged: Judged) -> MetricsRow {
        MetricsRow {
            experiment_id: id.to_owned(),
            host: self.config.host.clone(),
            metrics: judged.metrics,
            baseline: (&judged.baseline).into(),
            regressions: judged.regressions,
            flaky: judged.flaky,
            inserted_at: now_ms(),
        }
    }
}

impl Runs {
    fn judge(&self, change: &ChangeFigures, llm: &LlmSummary) -> Judged {
        let base_resources = self.baseline.resources();
        let cand_resources = self.candidate.resources();
        judge(
            &MeasuredRun {
                report: &self.base_report,
                runtime_ms: self.baseline.runtime_ms,
                resources: &base_resources,
                coverage_percent: self.baseline.coverage_percent,
            },
            &MeasuredRun {
                report: &self.cand_report,
                runtime_ms: self.candidate.runtime_ms,
                resources: &cand_resources,
                coverage_percent: self.candidate.coverage_percent,
            },
            change,
            llm.observed_reduction(),
            &self.flaky,
        )
    }

    fn outcomes(&self) -> TestOutcomes {
        TestOutcomes {
            baseline: outcome_pairs(&self.base_report),
            candidate: outcome_pairs(&self.cand_report),
        }
    }
}

/// The candidate's resources as the progress line shows them.
fn metrics_line(metrics: &Metrics) -> String {
    format!(
        "peak {:.1} MB, cpu {:.1}%, io {}",
        metrics.memory_peak_mb, metrics.cpu_usage_percent, metrics.io_operations
    )
}

/// The baseline's and the candidate's calls side by side; a repo without
/// an endpoint says so rather than showing zeros as if observed.
fn llm_summary(plan: &Plan, baseline: &SuiteRun, candidate: &SuiteRun) -> LlmSummary {
    let tally = |run: &SuiteRun| match (&plan.llm, &run.llm) {
        (_, Some(tally)) => tally.clone(),
        (None, None) => LlmTally {
            unavailable: Some("the repo's llm_stub is false".into()),
            ..LlmTally::default()
        },
        (Some(_), None) => LlmTally::default(),
    };
    LlmSummary::of(&tally(baseline), &tally(candidate))
}
