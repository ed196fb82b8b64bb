//! The runs of one experiment: the baseline (cached per commit and
//! command, single flight across concurrent experiments), the candidate's
//! suite, re-runs that tell flaky tests from regressions, and turning a
//! sandbox's outcome and report into a [`SuiteRun`].

use crate::contract::{hex_digest, stage, Request};
use crate::errors::{GenesisError, Result};
use crate::results::{parse_report, Bounds, ReportError, ReportInput, TestReport};
use crate::sandbox::{self, tail, CappedLog, PrepareStep, Role, RunOutcome, SandboxBuilder};
use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use super::*;

impl Runner {
    /// The baseline run: from the store's cache, from a concurrent
    /// experiment's run in progress, or run now.
    pub(super) async fn baseline(
        &self,
        request: &Request,
        plan: &Plan,
        progress: &dyn Progress,
    ) -> Result<SuiteRun> {
        let key = self.baseline_key(plan).await?;
        let cached_key = key.clone();
        if let Some(run) = self
            .store
            .call(move |s| s.baseline::<SuiteRun>(&cached_key))
            .await?
        {
            progress.stage(&request.experiment_id, stage::BASELINE, "cached");
            return Ok(run);
        }
        let slot = {
            let mut map = self.baselines.lock().await;
            map.entry(key.clone()).or_default().clone()
        };
        let id = &request.experiment_id;
        let run = slot
            .get_or_init(|| async {
                let run = self
                    .suite(id, Role::Baseline, plan, true, progress)
                    .await
                    .map_err(|e| (e.kind(), e.to_string()))?;
                let store_key = key.clone();
                let stored = run.clone();
                self.store
                    .call(move |s| s.put_baseline(&store_key, &stored))
                    .await
                    .map_err(|e| (e.kind(), e.to_string()))?;
                Ok(run)
            })
            .await
            .clone();
        // Failed baselines are not kept, so a later experiment tries again.
        if run.is_err() {
            self.baselines.lock().await.remove(&key);
        }
        let run = run.map_err(|(kind, message)| GenesisError::Baseline { kind, message })?;
        progress.stage(id, stage::BASELINE, &format!("{} ms", run.runtime_ms));
        Ok(run)
    }

    /// Everything that can change a baseline's outcome.
    async fn baseline_key(&self, plan: &Plan) -> Result<String> {
        // Bounded: an engine that died with its socket held open by a
        // survivor accepts the connection and never answers.
        let limit = self.config.sandbox.docker_timeout;
        let inspect = async {
            self.docker
                .inspect_image(&plan.base_image)
                .await
                .map_err(|e| {
                    GenesisError::image(format!("looking up image {}", plan.base_image), e)
                })
        };
        let image = sandbox::within(limit, "looking up the image", inspect).await?;
        let commits: Vec<_> = plan
            .prepared
            .iter()
            .map(|p| format!("{}={}", p.name, p.base.commit))
            .collect();
        /// Serialised as JSON (field order fixed, every value by its
        /// stable serde form), never by `Debug`, whose text may change.
        #[derive(serde::Serialize)]
        struct Material<'a> {
            shape: u32,
            commits: Vec<String>,
            image_id: String,
            setup_command: &'a str,
            test_command: &'a str,
            limits: &'a crate::config::Limits,
            report: String,
            user: &'a crate::config::Owner,
            /// The endpoint's policy and answers decide what the suite is told.
            llm: Option<(
                &'a crate::config::LlmPolicy,
                &'a crate::sandbox::llm::Answers,
            )>,
        }
        let material = Material {
            shape: super::SUITE_RUN_SHAPE,
            commits,
            image_id: image.id.unwrap_or_default(),
            setup_command: &plan.repo.setup_command,
            test_command: &plan.test_command,
            limits: &plan.limits,
            report: plan.report.to_string(),
            user: &self.config.sandbox.user,
            llm: plan.llm.as_ref().map(|l| (&l.policy, l.answers.as_ref())),
        };
        let json = serde_json::to_vec(&material)
            .map_err(|e| GenesisError::Internal(format!("encoding a baseline key: {e}")))?;
        Ok(hex_digest(&<sha2::Sha256 as sha2::Digest>::digest(&json)))
    }

    /// Re-runs the candidate to separate flaky failures from real ones.
    pub(super) async fn find_flaky(
        &self,
        id: &str,
        plan: &Plan,
        baseline: &TestReport,
        candidate: &TestReport,
        progress: &dyn Progress,
    ) -> Result<BTreeSet<String>> {
        let mut suspects: BTreeSet<String> =
            crate::judgement::metrics::regressed(baseline, candidate)
                .into_iter()
                .collect();
        let mut flaky = BTreeSet::new();
        for _ in 0..self.config.judging.reruns {
            if suspects.is_empty() {
                break;
            }
            let rerun = self.suite(id, Role::Rerun, plan, false, progress).await?;
            let Some(report) = rerun.report else { continue };
            let passed = crate::judgement::metrics::passed_ids(&report);
            let now_ok: Vec<String> = suspects
                .iter()
                .filter(|t| passed.contains(t.as_str()))
                .cloned()
                .collect();
            for t in now_ok {
                suspects.remove(&t);
                flaky.insert(t);
            }
        }
        Ok(flaky)
    }

    /// Runs the suite in a fresh sandbox and parses its report; a run the
    /// infrastructure failed (never one the suite failed) is run again in
    /// a fresh sandbox once the engine answers, up to `[sandbox]
    /// infra_retries` times, and only then fails with `sandbox_error`.
    pub(super) async fn suite(
        &self,
        id: &str,
        role: Role,
        plan: &Plan,
        use_base: bool,
        progress: &dyn Progress,
    ) -> Result<SuiteRun> {
        let policy = &self.config.sandbox;
        let mut backoff = policy.infra_backoff;
        let mut attempt = 0;
        loop {
            let error = match self.suite_once(id, role, plan, use_base, progress).await {
                Err(e) if e.is_infrastructure() && attempt < policy.infra_retries => e,
                done => return done,
            };
            attempt += 1;
            tracing::warn!(experiment_id = id, role = role.as_str(), attempt, error = %error, "infrastructure failure; retrying the run");
            progress.stage(
                id,
                stage::SANDBOX,
                &format!("{} retry {attempt}: {error}", role.as_str()),
            );
            let wait = policy.engine_wait;
            sandbox::wait_for_engine(&self.docker, wait).await?;
            sandbox::remove_runs_of(&self.docker, &self.home_label, id, role).await;
            tokio::time::sleep(backoff).await;
            backoff = backoff.saturating_mul(2);
        }
    }

    /// Runs the suite once in a fresh sandbox and parses its report.
    async fn suite_once(
        &self,
        id: &str,
        role: Role,
        plan: &Plan,
        use_base: bool,
        progress: &dyn Progress,
    ) -> Result<SuiteRun> {
        let dir = self.sandbox_dir(id).join(role.as_str());
        std::fs::create_dir_all(&dir)
            .map_err(|e| GenesisError::io(format!("creating {}", dir.display()), e))?;
        let layered = layered_workspace(plan, use_base);
        let (workspace_bytes, workspace) = workspace_size(plan, use_base, layered.as_ref());
        let sandbox = self
            .create_sandbox(id, role, plan, use_base, layered)
            .await?;
        let alive = self.telemetry.sandbox_alive(role.as_str());
        // The create row also says how the workspace came in and how many
        // bytes that moved (one store write per step, not two).
        self.history(
            id,
            SandboxOperation::Create,
            &dir,
            workspace_bytes,
            &format!(
                "container {} ({}); {workspace}",
                sandbox.name,
                role.as_str()
            ),
        )
        .await;
        progress.stage(
            id,
            stage::SANDBOX,
            &format!("{} {}", role.as_str(), &sandbox.id[..12]),
        );
        let outcome = self.drive(&sandbox, plan, use_base, &dir).await;
        let removed = sandbox.remove().await;
        self.history(
            id,
            SandboxOperation::Cleanup,
            &dir,
            0,
            &format!("container removed ({})", role.as_str()),
        )
        .await;
        drop(alive);
        removed?;
        let (run, out_files) = outcome?;
        let run = self.read_run(run, out_files, plan).await?;
        self.telemetry.suite_ran(role.as_str(), run.runtime_ms);
        Ok(run)
    }

    /// The run's container, created from the baseline's or the
    /// candidate's image with the plan's limits, workspace and command.
    async fn create_sandbox(
        &self,
        id: &str,
        role: Role,
        plan: &Plan,
        use_base: bool,
        layered: Option<sandbox::LayeredWorkspace>,
    ) -> Result<sandbox::Sandbox> {
        let image = if use_base {
            &plan.base_image
        } else {
            &plan.candidate_image
        };
        SandboxBuilder::from_policy(&self.config.sandbox, id, role, image, plan.limits)
            .home_label(&self.home_label)
            .disk(self.scratch_dir(), plan.limits.disk_mb, self.owner)
            .layered(layered)
            .prepare(plan.uses_environment().then(|| PrepareStep {
                command: ENV_WORKSPACE_COPY.to_string(),
                // The copy of what an install left is bounded as the install was.
                timeout: self.config.environments.timeout,
            }))
            .llm(plan.llm.clone())
            .command(&plan.primary, &plan.repo.setup_command, &plan.test_command)
            .create(&self.docker)
            .await
    }

    /// Turns a finished run and its `/genesis/out` files into a suite
    /// result. Reading reports is CPU work on what a suite wrote (up to
    /// the log and /genesis/out caps): never on the async runtime's threads.
    async fn read_run(
        &self,
        run: RunOutcome,
        out_files: Vec<(String, Vec<u8>)>,
        plan: &Plan,
    ) -> Result<SuiteRun> {
        let reading = Reading {
            report: plan.report.clone(),
            coverage: plan.coverage.clone(),
            limits: plan.limits,
            timeout: plan.timeout,
            bounds: Bounds::with_max_tests(self.config.max_tests),
        };
        tokio::task::spawn_blocking(move || interpret(run, &out_files, &reading))
            .await
            .map_err(|e| GenesisError::Internal(format!("report task: {e}")))?
    }

    /// Uploads, runs and collects; the caller removes the container whatever happens.
    async fn drive(
        &self,
        sandbox: &sandbox::Sandbox,
        plan: &Plan,
        use_base: bool,
        dir: &Path,
    ) -> Result<(RunOutcome, Vec<(String, Vec<u8>)>)> {
        sandbox.upload_skeleton(self.owner).await?;
        for repo in &plan.prepared {
            let tree = if use_base {
                &repo.base
            } else {
                &repo.candidate
            };
            // A layered tree is mounted, not uploaded.
            let Some(tarball) = &tree.tarball else {
                continue;
            };
            let bytes = tokio::fs::read(tarball)
                .await
                .map_err(|e| GenesisError::io(format!("reading {}", tarball.display()), e))?;
            sandbox.upload("/workspace", bytes).await?;
        }
        let log = CappedLog::create(&dir.join("test.log"), self.config.sandbox.log_cap_bytes)?;
        let run = sandbox.run(plan.timeout, log).await?;
        if let Some(record) = &run.llm {
            write_llm_calls(&dir.join("llm.jsonl"), &record.calls)?;
        }
        let out_dir = dir.join("out");
        let _ = std::fs::remove_dir_all(&out_dir);
        let files = sandbox
            .download_out(&out_dir, self.config.sandbox.out_cap_bytes)
            .await?;
        Ok((run, files))
    }
}

/// What turning a run into a [`SuiteRun`] needs from the plan (owned, to
/// move onto the blocking pool).
struct Reading {
    report: crate::results::ReportSpec,
    coverage: Option<crate::results::coverage::CoverageSpec>,
    limits: crate::config::Limits,
    timeout: Duration,
    bounds: Bounds,
}

/// Turns a finished container run into a suite result or the right failure.
fn interpret(run: RunOutcome, out_files: &[(String, Vec<u8>)], plan: &Reading) -> Result<SuiteRun> {
    if run.timed_out {
        return Err(GenesisError::Timeout {
            limit_ms: plan.timeout.as_millis() as u64,
        });
    }
    if run.is_oom(plan.limits.memory_mb) {
        return Err(GenesisError::Oom {
            limit_mb: plan.limits.memory_mb,
        });
    }
    if run.disk_full && run.exit_code != 0 {
        return Err(GenesisError::DiskLimit {
            limit_mb: plan.limits.disk_mb,
        });
    }
    if run.setup_failed() {
        return Err(GenesisError::sandbox(
            "setup command",
            format!(
                "failed with exit status {}; log tail:\n{}",
                run.exit_code,
                tail(&run.log.text, 2000)
            ),
        ));
    }
    let input = ReportInput {
        out_files,
        log: &run.log.text,
        bounds: plan.bounds,
    };
    let (report, report_error) = match parse_report(&plan.report, &input) {
        Ok(r) => (Some(r), None),
        Err(e @ ReportError::TooLarge { .. }) => {
            return Err(GenesisError::BadReport(describe_report_error(&e, &run)))
        }
        Err(e) => (None, Some(describe_report_error(&e, &run))),
    };
    Ok(SuiteRun {
        report,
        report_error,
        runtime_ms: run.runtime_ms,
        memory_peak_bytes: run.resources.memory_peak_bytes,
        cpu_percent: run.resources.cpu_percent,
        io_operations: run.resources.io_operations,
        exit_code: run.exit_code,
        coverage_percent: coverage_of(plan.coverage.as_ref(), out_files),
        llm: run.llm.map(|record| record.tally),
    })
}

/// The run's LLM calls, one JSON object a line, written by genesis from
/// its own record (never from anything the sandbox wrote), beside the
/// run's log, so archives and exports keep them.
fn write_llm_calls(path: &Path, calls: &[sandbox::llm::LlmCall]) -> Result<()> {
    let mut text = String::new();
    for call in calls {
        text.push_str(&serde_json::to_string(call).unwrap_or_default());
        text.push('\n');
    }
    std::fs::write(path, text)
        .map_err(|e| GenesisError::io(format!("writing {}", path.display()), e))
}

/// The run's workspace as snapshot layers, when every repo of the plan
/// has one: the bases' layers, plus the candidate's deltas unless this is
/// the baseline.
fn layered_workspace(plan: &Plan, use_base: bool) -> Option<sandbox::LayeredWorkspace> {
    let lowers = plan
        .prepared
        .iter()
        .map(|p| p.base.layer.clone())
        .collect::<Option<Vec<_>>>()?;
    let deltas = if use_base {
        Vec::new()
    } else {
        plan.prepared
            .iter()
            .map(|p| p.delta.clone())
            .collect::<Option<Vec<_>>>()?
    };
    Some(sandbox::LayeredWorkspace { lowers, deltas })
}

/// Bytes that reach the run's workspace, and how they come: the delta of a
/// layered run, or the tarballs an unlayered one uploads.
fn workspace_size(
    plan: &Plan,
    use_base: bool,
    layered: Option<&sandbox::LayeredWorkspace>,
) -> (u64, String) {
    if let Some(layers) = layered {
        let bytes = layers.delta_bytes();
        return (
            bytes,
            format!("workspace mounted from snapshot layers, delta of {bytes} bytes written"),
        );
    }
    let bytes = plan
        .prepared
        .iter()
        .filter_map(|p| {
            if use_base { &p.base } else { &p.candidate }
                .tarball
                .as_ref()
        })
        .filter_map(|t| std::fs::metadata(t).ok())
        .map(|m| m.len())
        .sum();
    (
        bytes,
        format!("snapshot tarballs of {bytes} bytes uploaded"),
    )
}

/// Copies an environment's untracked workspace files (node_modules,
/// deps/, a virtualenv: what the install left in `/workspace`, kept in the
/// image at `/genesis/workspace`) into the run's workspace, beside the
/// uploaded snapshot; with a disk cap they count against it.
const ENV_WORKSPACE_COPY: &str =
    "if [ -d /genesis/workspace ]; then cp -a /genesis/workspace/. /workspace/; fi";

/// The run's line coverage; a configured report that is missing or
/// unreadable gives None (and a warning), never a failed experiment.
fn coverage_of(
    spec: Option<&crate::results::coverage::CoverageSpec>,
    out_files: &[(String, Vec<u8>)],
) -> Option<f64> {
    let spec = spec?;
    let Some(bytes) = crate::results::coverage::find_report(spec, out_files) else {
        tracing::warn!(path = %spec.path, "the configured coverage report was not written");
        return None;
    };
    match crate::results::coverage::line_coverage(spec, bytes) {
        Ok(percent) => percent,
        Err(e) => {
            tracing::warn!(error = %e, "the coverage report could not be read");
            None
        }
    }
}

fn describe_report_error(e: &ReportError, run: &RunOutcome) -> String {
    format!(
        "{e} (test command exited with status {}); log tail:\n{}",
        run.exit_code,
        tail(&run.log.text, 2000)
    )
}
