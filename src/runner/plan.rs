//! Planning an experiment: which repos, limits, command and report, and
//! each repo's snapshot and patch.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::globs::InputGlobs;
use crate::config::{Limits, RepoConfig};
use crate::contract::{EnvironmentRef, FrameworkRef, Request};
use crate::errors::{GenesisError, Result};
use crate::results::coverage::CoverageSpec;
use crate::results::ReportSpec;
use crate::sandbox::llm::{Answers, LlmSetup};
use crate::snapshot::{PreparedRepo, RepoInput, WorkspaceRecord, WORKSPACE_RECORD};

use super::framework::choose_framework;
use super::Runner;

/// One repo to snapshot and patch (owned, to move into a blocking task).
pub(super) struct RepoJob {
    pub(super) name: String,
    pub(super) path: PathBuf,
    pub(super) patch: Option<String>,
    /// `changes.files`, for the primary repo only.
    pub(super) declared_files: Option<Vec<String>>,
    /// The primary repo's `install_inputs`, when it has an environment.
    pub(super) install_inputs: Option<InputGlobs>,
}

/// Everything about one repo of an experiment that the runs need.
pub(super) struct Plan {
    pub(super) primary: String,
    pub(super) repo: RepoConfig,
    pub(super) prepared: Vec<PreparedRepo>,
    pub(super) limits: Limits,
    pub(super) timeout: Duration,
    pub(super) test_command: String,
    pub(super) report: ReportSpec,
    /// The command and report in force, and whether they were detected.
    pub(super) framework: FrameworkRef,
    /// Images the baseline and the candidate run in: the repo's image, or
    /// its environments once [`Runner::environments_for`] has them.
    pub(super) base_image: String,
    pub(super) candidate_image: String,
    /// The candidate's environment, for the result.
    pub(super) environment: Option<EnvironmentRef>,
    /// The candidate's own environment when its patch changed install
    /// inputs: private to this experiment, discarded after its runs.
    pub(super) private_environment: Option<EnvironmentRef>,
    /// Where each run's line coverage comes from, when configured.
    pub(super) coverage: Option<CoverageSpec>,
    /// Every run's LLM endpoint (contract §2b); None for `llm_stub = false`.
    pub(super) llm: Option<LlmSetup>,
}

impl Plan {
    /// Whether the runs start from environments (whose untracked workspace
    /// files are copied in before the suite).
    pub(super) fn uses_environment(&self) -> bool {
        self.environment.is_some()
    }
}

impl Runner {
    /// Resolves repos, limits and command, then snapshots and patches.
    pub(super) async fn plan(&self, request: &Request) -> Result<Plan> {
        let (primary, repo) = self.config.repo(request.repo.as_deref())?;
        let repo = repo.clone();
        let inputs = self.repo_jobs(request, &primary, &repo)?;
        let limits = self.config.limits_for(request.risk_level);
        // Layers need the run's own disk: the overlay's upper half lives there.
        let layered = self.config.sandbox.layers && limits.disk_mb > 0;
        let prepared = self
            .prepare_repos(inputs, request, layered, limits.patch_mb)
            .await?;
        self.save_patches(request, &prepared)?;
        // A request's timeout_ms wins when it is smaller (contract §2).
        let timeout = request.timeout_ms.map_or(limits.timeout, |t| {
            Duration::from_millis(t).min(limits.timeout)
        });
        let found = self
            .find_framework(&primary, &repo, request, prepared.first())
            .await;
        let (found, advised_image) = match found {
            Some(f) => (Some(f.framework), f.image),
            None => (None, None),
        };
        let framework = choose_framework(&primary, &repo, request, found)?;
        let image = advised_image.unwrap_or_else(|| repo.image.clone());
        // Parsed again, not carried: the chosen text is the config's (checked at load), the
        // peer's (checked on arrival) or detection's (a constant), all kept as text; the request
        // names none.
        let report = framework
            .report
            .parse::<ReportSpec>()
            .map_err(|e| GenesisError::Config {
                file: self.config.source.clone().unwrap_or_default(),
                message: e.to_string(),
            })?;
        let coverage = repo.coverage.clone();
        let llm = self.llm_setup(&primary, &repo, &prepared).await?;
        Ok(Plan {
            llm,
            coverage,
            primary,
            base_image: image.clone(),
            candidate_image: image,
            environment: None,
            private_environment: None,
            repo,
            prepared,
            limits,
            timeout,
            test_command: framework.test_command.clone(),
            report,
            framework,
        })
    }

    /// The repos to snapshot: the primary with `changes.patch` (and its
    /// install inputs), then each repo of `changes.patches`.
    fn repo_jobs(
        &self,
        request: &Request,
        primary: &str,
        repo: &RepoConfig,
    ) -> Result<Vec<RepoJob>> {
        let install_inputs = if repo.install_command.is_empty() {
            None
        } else {
            Some(repo.install_inputs.clone())
        };
        let mut jobs = vec![RepoJob {
            name: primary.to_owned(),
            path: repo.path.clone(),
            patch: request.changes.patch.clone(),
            declared_files: Some(request.changes.files.clone()),
            install_inputs,
        }];
        for (name, patch) in &request.changes.patches {
            if name == primary {
                return Err(GenesisError::InvalidRequest(format!(
                    "changes.patches names the primary repo {name:?}; put its diff in changes.patch"
                )));
            }
            let (_, other) = self.config.repo(Some(name))?;
            jobs.push(RepoJob {
                name: name.clone(),
                path: other.path.clone(),
                patch: Some(patch.clone()),
                declared_files: None,
                install_inputs: None,
            });
        }
        Ok(jobs)
    }

    /// Snapshots and patches every repo, off the async runtime (git work).
    async fn prepare_repos(
        &self,
        jobs: Vec<RepoJob>,
        request: &Request,
        layered: bool,
        patch_mb: u64,
    ) -> Result<Vec<PreparedRepo>> {
        let snapshotter = self.snapshotter.clone();
        let analysis_cap_bytes = self.config.analysis.max_file_bytes;
        let id = request.experiment_id.clone();
        let risk_level = request.risk_level;
        let base_ref = request.base_ref.clone().unwrap_or_else(|| "HEAD".into());
        tokio::task::spawn_blocking(move || {
            jobs.iter()
                .map(|job| {
                    snapshotter.prepare(
                        &RepoInput {
                            name: &job.name,
                            source: &job.path,
                            base_ref: &base_ref,
                            patch: job.patch.as_deref(),
                            declared_files: job.declared_files.as_deref(),
                            install_inputs: job.install_inputs.as_ref(),
                            analysis_cap_bytes,
                            layered,
                            patch_mb,
                            risk_level,
                        },
                        &id,
                    )
                })
                .collect::<Result<Vec<_>>>()
        })
        .await
        .map_err(|e| GenesisError::Internal(format!("snapshot task: {e}")))?
    }

    /// The endpoint's policy and answers: the repo's `llm_answers` as the
    /// base commit has it, so the baseline and the candidate are answered
    /// alike whatever the patch does to the file.
    async fn llm_setup(
        &self,
        primary: &str,
        repo: &RepoConfig,
        prepared: &[PreparedRepo],
    ) -> Result<Option<LlmSetup>> {
        if !repo.llm_stub {
            return Ok(None);
        }
        let policy = self.config.llm.clone();
        let answers = match (repo.llm_answers.as_str(), prepared.first()) {
            ("", _) | (_, None) => Answers::fixed(&policy.answer),
            (path, Some(base)) => {
                let snapshotter = self.snapshotter.clone();
                let (name, commit, path_owned) = (
                    primary.to_owned(),
                    base.base.commit.clone(),
                    path.to_owned(),
                );
                let cap = policy.max_answers_bytes;
                let text = tokio::task::spawn_blocking(move || {
                    snapshotter.text_at(&name, &commit, &path_owned, cap)
                })
                .await
                .map_err(|e| GenesisError::Internal(format!("answers task: {e}")))??;
                match text {
                    Some(text) => {
                        Answers::parse(&text, &policy.answer).map_err(|e| GenesisError::Config {
                            file: PathBuf::from(path),
                            message: format!("llm_answers of repo {primary:?}: {e}"),
                        })?
                    }
                    None => {
                        tracing::warn!(repo = primary, path, "llm_answers is not a readable text file of at most [llm] max_answers_bytes at the base commit; every prompt gets the fixed answer");
                        Answers::fixed(&policy.answer)
                    }
                }
            }
        };
        Ok(Some(LlmSetup {
            policy,
            answers: std::sync::Arc::new(answers),
        }))
    }

    /// Keeps the request, the patches and the workspace's commits beside
    /// the logs, for review and for the sandbox export.
    fn save_patches(&self, request: &Request, prepared: &[PreparedRepo]) -> Result<()> {
        let dir = self.sandbox_dir(&request.experiment_id);
        std::fs::create_dir_all(&dir)
            .map_err(|e| GenesisError::io(format!("creating {}", dir.display()), e))?;
        let write = |name: &str, text: &str| {
            std::fs::write(dir.join(name), text)
                .map_err(|e| GenesisError::io(format!("writing {name}"), e))
        };
        write(
            "request.json",
            &serde_json::to_string_pretty(request).unwrap_or_default(),
        )?;
        if let Some(p) = &request.changes.patch {
            write("patch.diff", p)?;
        }
        for (name, p) in &request.changes.patches {
            write(&format!("patch-{name}.diff"), p)?;
        }
        let record = WorkspaceRecord::of(prepared);
        write(
            WORKSPACE_RECORD,
            &serde_json::to_string_pretty(&record).unwrap_or_default(),
        )
    }
}
