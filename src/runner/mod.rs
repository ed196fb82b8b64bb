//! Orchestration: one request in, one result out.
//!
//! `genesis run` and `genesis serve` both go through [`Runner`], so the CLI
//! exercises exactly the service's pipeline:
//!
//! 1. **accept**: validate the request and record it in the store; a known
//!    id with the same content is a duplicate (answered from the store), with
//!    other content a conflict (refused).
//! 2. **snapshot + patch** each repo (blocking git work on the blocking pool).
//! 3. **baseline**: the unchanged snapshot, same image/command/limits, cached
//!    in the store by (commits, image id, command, limits, report format). An
//!    in-process single-flight map makes concurrent experiments on one commit
//!    share one baseline run instead of starting their own.
//! 4. **candidate** run, optional re-runs of new failures to spot flaky tests.
//! 5. **judge** (metrics + policy) and **store** the result atomically.
//!
//! [`Runner::run`] never returns an error: every failure becomes a
//! `status: "failed"` result with an `error_kind`, stored like any other.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bollard::Docker;
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, OnceCell};

use crate::analysis::Analyzer;
use crate::config::Config;
use crate::contract::{Completed, ErrorKind, ExperimentResult, Request, Stage};
use crate::environment::Environments;
use crate::errors::{GenesisError, Result};
use crate::results::TestReport;
use crate::sandbox::{self, home_label, Resources};
use crate::snapshot::{Owner, Snapshotter};
use crate::store::{ExperimentRecord, MetricsRow, SandboxOperation, Status, Store, TestOutcomes};

mod admission;
pub use admission::{instance_name, owner_is_dead};
mod analysis;
mod environments;
mod framework;
mod measure;
mod patience;
mod peer;
mod plan;
use plan::Plan;
mod suites;

pub use crate::contract::stage;

/// Receives stage changes: stderr for the CLI, NATS for the service.
pub trait Progress: Send + Sync {
    fn stage(&self, experiment_id: &str, stage: Stage, detail: &str);
}

/// Discards progress.
pub struct NoProgress;
impl Progress for NoProgress {
    fn stage(&self, _: &str, _: Stage, _: &str) {}
}

/// What `accept` decided about a request.
#[derive(Debug)]
pub enum Admission {
    /// New: recorded as queued; run it.
    New,
    /// Seen before with the same content and finished: here is its result.
    Finished(Box<ExperimentResult>),
    /// Seen before with the same content and still queued or running.
    InFlight(Box<ExperimentRecord>),
    /// Same id, different content: refused.
    Conflict(Box<ExperimentResult>),
}

/// One run of a suite, as stored for reuse (baselines) and judging.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SuiteRun {
    pub report: Option<TestReport>,
    /// Why there is no report (no tests, unreadable report), with the log tail.
    pub report_error: Option<String>,
    pub runtime_ms: u64,
    pub memory_peak_bytes: u64,
    pub cpu_percent: f64,
    pub io_operations: u64,
    pub exit_code: i64,
    /// Line coverage from the repo's `coverage` report, when configured.
    pub coverage_percent: Option<f64>,
    /// What the run's LLM endpoint counted; None with `llm_stub = false`.
    pub llm: Option<crate::contract::LlmTally>,
}

/// Part of every baseline cache key: bump it when [`SuiteRun`] changes
/// shape, so runs stored in the older shape (bincode is not
/// self-describing) are never read back, just run again.
const SUITE_RUN_SHAPE: u32 = 3;

impl SuiteRun {
    fn resources(&self) -> Resources {
        Resources {
            memory_peak_bytes: self.memory_peak_bytes,
            cpu_percent: self.cpu_percent,
            io_operations: self.io_operations,
            ..Resources::default()
        }
    }
}

/// A baseline run shared by concurrent experiments; errors keep their kind.
type BaselineSlot = Arc<OnceCell<std::result::Result<SuiteRun, (ErrorKind, String)>>>;

/// Shared by every experiment of a process.
pub struct Runner {
    pub config: Arc<Config>,
    pub store: Store,
    pub docker: Docker,
    snapshotter: Snapshotter,
    /// Builds and hands out repo environments (single flight per key).
    pub environments: Environments,
    /// Counts LLM call sites and complexity of touched files (tree-sitter).
    analyzer: Arc<Analyzer>,
    /// A NATS connection for the peers of `[analysis] nats_subject` and
    /// `[framework] nats_subject`, set by the service.
    analysis_peer: std::sync::OnceLock<async_nats::Client>,
    /// The metrics `/metrics` exports, fed as experiments run.
    pub telemetry: Arc<crate::telemetry::Telemetry>,
    owner: Owner,
    /// Single-flight baseline runs by cache key.
    baselines: Mutex<HashMap<String, BaselineSlot>>,
    /// Label value that marks this home's containers.
    pub home_label: String,
    /// `host:pid`, written into records this process runs.
    pub instance: String,
    /// Experiments taken over from a dead process of this home: their
    /// containers are swept when they finish, because the dead process may
    /// have had a create call in flight that the engine completed after
    /// this process's start-up reap.
    taken_over: Mutex<std::collections::HashSet<String>>,
    /// How long a full home may stall an experiment (see `patience.rs`).
    full_home_patience: Option<std::time::Duration>,
}

/// `GENESIS_HOME/scratch`: the runs' disks (see `sandbox::ScratchDisk`).
pub fn scratch_dir(home: &std::path::Path) -> PathBuf {
    crate::home::Home::of(home).scratch()
}

impl Runner {
    pub async fn new(config: Arc<Config>, store: Store) -> Result<Runner> {
        let docker = sandbox::connect().await?;
        Self::with_docker(config, store, docker)
    }

    pub fn with_docker(config: Arc<Config>, store: Store, docker: Docker) -> Result<Runner> {
        crate::snapshot::allow_foreign_owners();
        let owner = config.sandbox.user;
        let analyzer = config.llm_analyzer.clone();
        Ok(Runner {
            snapshotter: Snapshotter::new(&config.home, owner),
            environments: Environments::new(
                docker.clone(),
                config.clone(),
                owner,
                home_label(&config.home),
            ),
            home_label: home_label(&config.home),
            instance: instance_name(&config.host),
            telemetry: Arc::new(crate::telemetry::Telemetry::new(&config.http)),
            config,
            store,
            docker,
            analyzer,
            analysis_peer: std::sync::OnceLock::new(),
            owner,
            baselines: Mutex::new(HashMap::new()),
            taken_over: Mutex::new(Default::default()),
            full_home_patience: None,
        })
    }

    /// Lets the analysis and the framework choice ask their peers on
    /// `[analysis] nats_subject` and `[framework] nats_subject` (the
    /// service sets its connection; the CLI has none and works locally).
    pub fn set_analysis_peer(&self, client: async_nats::Client) {
        let _ = self.analysis_peer.set(client);
    }

    /// Runs an accepted experiment to its result and stores it.
    pub async fn run(&self, request: &Request, progress: &dyn Progress) -> ExperimentResult {
        let id = request.experiment_id.clone();
        let started = std::time::Instant::now();
        progress.stage(&id, stage::START, &request.description);
        if let Some(result) = self.refuse_crash_loop(request).await {
            if let ExperimentResult::Failed(f) = &result {
                progress.stage(&id, stage::FAILED, &f.error);
            }
            // The dead processes' containers, if this one took it over.
            self.sweep_if_taken_over(&id).await;
            return result;
        }
        if let Err(e) = self.mark(&id, Status::Running).await {
            tracing::warn!(experiment_id = %id, error = %e, "could not mark experiment running");
        }
        let outcome = self.pipeline_patiently(request, progress).await;
        let (result, metrics, outcomes) = match outcome {
            Ok((completed, metrics, outcomes)) => (
                ExperimentResult::Success(completed),
                Some(metrics),
                Some(outcomes),
            ),
            Err(e) => {
                let stage_name = if matches!(e, GenesisError::Timeout { .. }) {
                    stage::TIMEOUT
                } else {
                    stage::FAILED
                };
                progress.stage(&id, stage_name, &e.to_string());
                (
                    ExperimentResult::failed(
                        &self.config.host,
                        &id,
                        &request.instance_id,
                        e.kind(),
                        e.to_string(),
                    ),
                    None,
                    None,
                )
            }
        };
        self.sweep_if_taken_over(&id).await;
        if let Err(e) = self
            .finish_patiently(request, &result, metrics, outcomes)
            .await
        {
            tracing::error!(experiment_id = %id, error = %e, "storing the result failed");
            progress.stage(&id, stage::FAILED, &e.to_string());
            let unstored = self.unstored(request, &result, &e);
            self.telemetry.run_finished("failed", started.elapsed());
            return unstored;
        }
        let status = if result.is_success() {
            "success"
        } else {
            "failed"
        };
        self.telemetry.run_finished(status, started.elapsed());
        if result.is_success() {
            progress.stage(&id, stage::COMPLETE, result.recommendation().as_str());
        }
        result
    }

    /// What a requester is told when the result could not be stored (a full
    /// home, a failing store): that, and how the experiment itself ended.
    /// A verdict nobody can look up again is not handed out as if it were.
    fn unstored(
        &self,
        request: &Request,
        result: &ExperimentResult,
        e: &GenesisError,
    ) -> ExperimentResult {
        let outcome = match result {
            ExperimentResult::Success(c) => {
                format!("the experiment itself ran to {}", c.recommendation)
            }
            ExperimentResult::Failed(f) => format!("the experiment itself failed: {}", f.error),
        };
        ExperimentResult::failed(
            &self.config.host,
            &request.experiment_id,
            &request.instance_id,
            e.kind(),
            format!("{e}; its result was not stored ({outcome})"),
        )
    }

    /// An experiment whose runs a process died in `[nats] max_deliver`
    /// times is answered failed/internal and not run again: whatever
    /// killed those processes (a report bomb, the kernel's OOM killer)
    /// would kill this one too. Stored like any other result.
    async fn refuse_crash_loop(&self, request: &Request) -> Option<ExperimentResult> {
        let id = request.experiment_id.clone();
        let limit = self.config.nats.max_deliver;
        let attempts = self.store.call(move |s| s.run_attempts(&id)).await.ok()?;
        if attempts < limit {
            return None;
        }
        let result = ExperimentResult::failed(
            &self.config.host,
            &request.experiment_id,
            &request.instance_id,
            ErrorKind::Internal,
            format!(
                "genesis died {attempts} times while running this experiment (killed each \
                 time, e.g. by the kernel's OOM killer); it is not run again ([nats] max_deliver = {limit})"
            ),
        );
        tracing::error!(experiment_id = %request.experiment_id, attempts, "refusing to run an experiment a process died in {attempts} times");
        if let Err(e) = self.finish(request, &result, None, None).await {
            return Some(self.unstored(request, &result, &e));
        }
        Some(result)
    }

    async fn mark(&self, id: &str, status: Status) -> Result<()> {
        let id = id.to_owned();
        let instance = self.instance.clone();
        self.store
            .call(move |s| {
                if status == Status::Running {
                    s.count_run_attempt(&id)?;
                }
                if let Some(mut rec) = s.get(&id)? {
                    rec.status = status;
                    rec.owner = instance;
                    rec.updated_at = now_ms();
                    s.put_record(&rec)?;
                }
                Ok(())
            })
            .await
    }

    /// Stores the final document (record, metrics, outcomes in one commit)
    /// and writes `result.json` into the sandbox directory.
    pub async fn finish(
        &self,
        request: &Request,
        result: &ExperimentResult,
        metrics: Option<MetricsRow>,
        outcomes: Option<TestOutcomes>,
    ) -> Result<()> {
        let dir = self.sandbox_dir(&request.experiment_id);
        let json = result.to_json();
        if std::fs::create_dir_all(&dir).is_ok() {
            let _ = std::fs::write(dir.join("result.json"), &json);
        }
        let risk_level = request.risk_level;
        let stored_result = result;
        let request = request.clone();
        let result = result.clone();
        let instance = self.instance.clone();
        self.store
            .call(move |s| {
                let mut rec = s.get(&request.experiment_id)?.unwrap_or_else(|| {
                    ExperimentRecord::new(&request, Status::Running, &instance, now_ms())
                });
                rec.status = if result.is_success() {
                    Status::Completed
                } else {
                    Status::Failed
                };
                rec.recommendation = Some(result.recommendation());
                if let ExperimentResult::Failed(f) = &result {
                    rec.error = Some(f.error.clone());
                    rec.error_kind = Some(f.error_kind);
                }
                rec.result_json = Some(json);
                rec.updated_at = now_ms();
                s.write_final(&rec, metrics.as_ref(), outcomes.as_ref())
            })
            .await?;
        self.telemetry.experiment_stored(risk_level, stored_result);
        Ok(())
    }

    /// `GENESIS_HOME/sandboxes/ID`: logs, reports, patch, result of one experiment.
    pub fn sandbox_dir(&self, id: &str) -> PathBuf {
        self.config.home.sandbox(id)
    }

    /// Where runs' own file systems are mounted (`[limits.*] disk_mb`).
    pub fn scratch_dir(&self) -> PathBuf {
        scratch_dir(&self.config.home)
    }

    async fn pipeline(
        &self,
        request: &Request,
        progress: &dyn Progress,
    ) -> Result<(Completed, MetricsRow, TestOutcomes)> {
        let id = &request.experiment_id;
        let mut plan = self.plan(request).await?;
        let primary = plan
            .prepared
            .iter()
            .find(|p| p.name == plan.primary)
            .ok_or_else(|| GenesisError::Internal("primary repo not prepared".into()))?
            .clone();
        progress.stage(
            id,
            stage::SNAPSHOT,
            &format!("{} at {}", plan.primary, &primary.base.commit[..12]),
        );
        progress.stage(
            id,
            stage::CHANGES,
            &format!(
                "{} file(s) changed; candidate {}",
                primary.touched.len(),
                &primary.candidate.commit[..12]
            ),
        );

        self.environments_for(request, &mut plan, progress).await?;
        let measured = self.measure(request, &plan, &primary, progress).await;
        self.discard_private_environment(&plan).await;
        measured
    }

    async fn history(&self, id: &str, op: SandboxOperation, path: &Path, size: u64, detail: &str) {
        let (id, path, detail) = (id.to_owned(), path.display().to_string(), detail.to_owned());
        if let Err(e) = self
            .store
            .call(move |s| s.add_history(&id, op, &path, size, &detail))
            .await
        {
            tracing::warn!(error = %e, "could not write sandbox history");
        }
    }
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
