//! Which images an experiment's runs start from: the repo's image, or the
//! environments of its baseline and candidate trees (contract §2a).

use crate::contract::{stage, EnvironmentRef, Request, Stage};
use crate::environment::EnvRequest;
use crate::errors::{GenesisError, Result};
use crate::snapshot::RepoInput;

use super::{Plan, Progress, Runner};

/// Names the install container of `genesis env build` (no experiment asked).
const ENV_BUILD_ID: &str = "env-build";

impl Runner {
    /// Resolves (building when needed) the baseline's and the candidate's
    /// environments and points the plan's images at them. A candidate that
    /// changes an install input gets its own environment when its risk
    /// level allows (`install_changes`), else the experiment fails with
    /// `environment_changed`.
    pub(super) async fn environments_for(
        &self,
        request: &Request,
        plan: &mut Plan,
        progress: &dyn Progress,
    ) -> Result<()> {
        if plan.repo.install_command.trim().is_empty() {
            return Ok(());
        }
        let id = &request.experiment_id;
        let primary = plan
            .prepared
            .iter()
            .find(|p| p.name == plan.primary)
            .ok_or_else(|| GenesisError::Internal("primary repo not prepared".into()))?;
        let say = |s: Stage, detail: &str| progress.stage(id, s, detail);
        let base = self
            .environments
            .ensure(
                &EnvRequest {
                    repo_name: &plan.primary,
                    repo: &plan.repo,
                    inputs: &primary.base_inputs,
                    snapshot: &primary.base,
                    experiment_id: id,
                    private: false,
                },
                &say,
            )
            .await?;
        let candidate = if primary.candidate_inputs == primary.base_inputs {
            base.clone()
        } else if !plan.limits.install_changes {
            let changed = changed_inputs(&primary.base_inputs, &primary.candidate_inputs);
            return Err(GenesisError::EnvironmentChanged(format!(
                "the patch changes {} (install_inputs of repo {:?}), and risk level {} does not \
                 allow a new environment ([limits.{}] install_changes = false)",
                changed.join(", "),
                plan.primary,
                request.risk_level,
                request.risk_level
            )));
        } else {
            progress.stage(
                id,
                stage::ENVIRONMENT_BUILDING,
                "the patch changes install inputs",
            );
            let private = self
                .environments
                .ensure(
                    &EnvRequest {
                        repo_name: &plan.primary,
                        repo: &plan.repo,
                        inputs: &primary.candidate_inputs,
                        snapshot: &primary.candidate,
                        experiment_id: id,
                        private: true,
                    },
                    &say,
                )
                .await?;
            plan.private_environment = Some(private.clone());
            private
        };
        self.telemetry.environment_ready(&base);
        if candidate != base {
            self.telemetry.environment_ready(&candidate);
        }
        plan.base_image = base.image.clone();
        plan.candidate_image = candidate.image.clone();
        plan.environment = Some(candidate);
        Ok(())
    }
}

impl Runner {
    /// Removes the candidate's private environment, if it had one: no
    /// other experiment may use it (see `environment` "Private environments").
    pub(super) async fn discard_private_environment(&self, plan: &Plan) {
        if let Some(env) = &plan.private_environment {
            self.environments.discard(&plan.primary, env).await;
        }
    }
}

/// Paths whose blob differs, or that exist on one side only.
fn changed_inputs(base: &[(String, String)], candidate: &[(String, String)]) -> Vec<String> {
    let mut changed: Vec<String> = base
        .iter()
        .filter(|b| !candidate.contains(b))
        .chain(candidate.iter().filter(|c| !base.contains(c)))
        .map(|(path, _)| path.clone())
        .collect();
    changed.sort();
    changed.dedup();
    changed
}

impl Runner {
    /// `genesis env build`: the environment of one repo at `reference`,
    /// built unless it exists.
    pub async fn build_environment(
        &self,
        repo_name: &str,
        reference: &str,
        progress: &dyn Progress,
    ) -> Result<EnvironmentRef> {
        let (name, repo) = self.config.repo(Some(repo_name))?;
        if repo.install_command.trim().is_empty() {
            return Err(GenesisError::InvalidRequest(format!(
                "repo {name:?} has no install_command, so it has no environment"
            )));
        }
        let globs = repo.install_inputs.clone();
        let snapshotter = self.snapshotter.clone();
        let analysis_cap_bytes = self.config.analysis.max_file_bytes;
        let (source, base_ref, task_name) = (repo.path.clone(), reference.to_owned(), name.clone());
        let prepared = tokio::task::spawn_blocking(move || {
            snapshotter.prepare(
                &RepoInput {
                    name: &task_name,
                    source: &source,
                    base_ref: &base_ref,
                    patch: None,
                    declared_files: None,
                    install_inputs: Some(&globs),
                    analysis_cap_bytes,
                    // An install uploads a tarball (it has no disk cap).
                    layered: false,
                    // No patch: nothing to bound.
                    patch_mb: 0,
                    // No patch, so neither the bound nor its level is read.
                    risk_level: crate::contract::RiskLevel::High,
                },
                ENV_BUILD_ID,
            )
        })
        .await
        .map_err(|e| GenesisError::Internal(format!("snapshot task: {e}")))??;
        let say = |s: Stage, detail: &str| progress.stage(ENV_BUILD_ID, s, detail);
        self.environments
            .ensure(
                &EnvRequest {
                    repo_name: &name,
                    repo,
                    inputs: &prepared.base_inputs,
                    snapshot: &prepared.base,
                    experiment_id: ENV_BUILD_ID,
                    private: false,
                },
                &say,
            )
            .await
    }
}
