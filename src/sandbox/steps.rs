//! The steps around a suite that are not the suite: the prepare command
//! (an environment's workspace copied into the run's) and the size of a
//! container's writable layer (what an install's watchdog reads).
//!
//! The prepare command copies what an install left, and an install is not
//! trusted: it could leave a tree that takes hours to copy, or replace the
//! image's `cp` with something that never ends. So the copy runs under a
//! time limit of its own (the install's, `[environments] timeout_ms`), and
//! only the last few KB of its output are kept for the error.

use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::ExecConfig;
use bollard::query_parameters::InspectContainerOptions;
use futures_util::StreamExt;

use crate::errors::{GenesisError, Result};

use super::*;

/// Output of the prepare command kept for its error message.
const PREPARE_OUTPUT_KEPT: usize = 4096;

impl Sandbox {
    /// The spec's prepare step, before the suite, within its timeout: it
    /// must succeed; a full disk while preparing is
    /// the run's `disk_limit`. Past the limit the experiment fails
    /// `environment_failed` (the caller removes the container, and the
    /// copy with it).
    pub(super) async fn prepare(&self) -> Result<()> {
        let Some(step) = &self.spec.prepare else {
            return Ok(());
        };
        let limit = step.timeout;
        match tokio::time::timeout(limit, self.prepare_exec(&step.command)).await {
            Ok(done) => done,
            Err(_) => Err(GenesisError::EnvironmentFailed(format!(
                "copying the environment's workspace files (/genesis/workspace, what its install \
                 left) into the run's workspace in {} ran past {} ms, the install's time limit \
                 ([environments] timeout_ms), and was stopped",
                self.name,
                limit.as_millis()
            ))),
        }
    }

    async fn prepare_exec(&self, command: &str) -> Result<()> {
        let what = format!("preparing the workspace in {}", self.name);
        let config = ExecConfig {
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            cmd: Some(vec!["sh".into(), "-c".into(), command.to_owned()]),
            user: Some(self.spec.user.clone()),
            ..Default::default()
        };
        let created = self
            .docker
            .create_exec(&self.id, config)
            .await
            .map_err(|e| GenesisError::docker(&what, e))?;
        let mut output = String::new();
        if let StartExecResults::Attached {
            output: mut stream, ..
        } = self
            .docker
            .start_exec(&created.id, None::<StartExecOptions>)
            .await
            .map_err(|e| GenesisError::docker(&what, e))?
        {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| GenesisError::docker(&what, e))?;
                output.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
                if output.len() > 2 * PREPARE_OUTPUT_KEPT {
                    output = tail(&output, PREPARE_OUTPUT_KEPT).to_owned();
                }
            }
        }
        let code = self.exec_exit_code(&created.id).await?;
        if code == 0 {
            return Ok(());
        }
        if let Some(disk) = self.disk.as_ref().filter(|d| d.is_full()) {
            return Err(GenesisError::DiskLimit {
                limit_mb: disk.size_mb(),
            });
        }
        Err(GenesisError::sandbox(
            what,
            format!("exited with status {code}: {}", tail(&output, 2000)),
        ))
    }

    /// Bytes in the container's writable layer, as the engine measures
    /// them (`inspect --size`); None when the engine does not say.
    pub async fn layer_size(&self) -> Result<Option<u64>> {
        let what = format!("measuring the writable layer of {}", self.name);
        let inspect = async {
            self.docker
                .inspect_container(&self.id, Some(InspectContainerOptions { size: true }))
                .await
                .map_err(|e| GenesisError::docker(&what, e))
        };
        let info = within(self.spec.docker_timeout, &what, inspect).await?;
        Ok(info.size_rw.and_then(|s| u64::try_from(s).ok()))
    }
}
