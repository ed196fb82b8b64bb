//! One container's life: create, upload, start, exec the suite, collect
//! outputs and resources, kill, remove (also on drop).

use crate::errors::engine::{classify, EngineFailure};
use crate::errors::{GenesisError, Result};
use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::query_parameters::{
    CreateContainerOptions, KillContainerOptions, UploadToContainerOptions, WaitContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
use std::time::{Duration, Instant};

use super::*;

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunOutcome {
    pub exit_code: i64,
    pub timed_out: bool,
    pub oom_killed: bool,
    pub runtime_ms: u64,
    pub resources: Resources,
    pub log: LogSummary,
    /// The run's own file system was (all but) full when it stopped.
    pub disk_full: bool,
    /// What the run's LLM endpoint recorded; None without one (`llm_stub = false`).
    pub llm: Option<super::llm::LlmRecord>,
    /// Why a watchdog killed the run ([`Sandbox::run_watched`]).
    pub stopped_by: Option<String>,
}

impl RunOutcome {
    /// The contract's OOM rule: the engine says so, or SIGKILL (137) with
    /// memory at the limit. 137 alone only means something sent SIGKILL.
    pub fn is_oom(&self, limit_mb: u64) -> bool {
        let limit = limit_mb.saturating_mul(1024 * 1024);
        let near_limit = self.resources.memory_peak_bytes >= limit.saturating_sub(limit / 50);
        self.oom_killed || (self.exit_code == 137 && near_limit && !self.timed_out)
    }

    pub fn setup_failed(&self) -> bool {
        self.log.text.contains(SETUP_FAILED_MARKER)
    }
}

/// The stats sampler of a running suite: its stop signal and its task.
struct Sampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<StatsAccumulator>,
}

/// A created container. Removed on drop if [`Sandbox::remove`] was not called.
pub struct Sandbox {
    pub(super) docker: Docker,
    pub id: String,
    pub name: String,
    pub spec: SandboxSpec,
    /// The run's own file system, released after the container is removed
    /// (field order: dropped after `Drop::drop` removed the container).
    pub(super) disk: Option<ScratchDisk>,
    removed: bool,
}

static NAME_COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Sandbox {
    pub async fn create(docker: &Docker, spec: SandboxSpec) -> Result<Sandbox> {
        let n = NAME_COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!(
            "genesis-{}-{}-{}-{n}",
            spec.experiment_id,
            spec.role.as_str(),
            std::process::id()
        );
        let options = CreateContainerOptions {
            name: Some(name.clone()),
            ..Default::default()
        };
        let disk = match &spec.disk {
            Some(request) => Some(make_disk(request.scratch.join(&name), request).await?),
            None => None,
        };
        let limit = spec.docker_timeout;
        let create = docker.create_container(Some(options), container_config(&spec, disk.as_ref()));
        let created = match tokio::time::timeout(limit, create).await {
            Ok(Ok(created)) => created,
            Ok(Err(e)) => {
                return Err(GenesisError::image(
                    format!("creating a container from image {}", spec.image),
                    e,
                ))
            }
            Err(_) => {
                return Err(GenesisError::infrastructure(
                    format!("creating a container from {}", spec.image),
                    format!(
                        "no answer within {} ms ([sandbox] docker_timeout_ms)",
                        limit.as_millis()
                    ),
                ))
            }
        };
        Ok(Sandbox {
            docker: docker.clone(),
            id: created.id,
            name,
            spec,
            disk,
            removed: false,
        })
    }

    /// Uploads a tar (optionally gzip'd) and extracts it at `dest`.
    pub async fn upload(&self, dest: &str, archive: Vec<u8>) -> Result<()> {
        let options = UploadToContainerOptions {
            path: dest.into(),
            ..Default::default()
        };
        let what = format!("uploading into {dest} of {}", self.name);
        let upload = async {
            self.docker
                .upload_to_container(&self.id, Some(options), bollard::body_full(archive.into()))
                .await
                .map_err(|e| GenesisError::docker(&what, e))
        };
        within(self.spec.docker_timeout, &what, upload).await
    }

    /// Creates `/workspace` and `/genesis/out` owned by the sandbox user
    /// (a run with a disk has them already, as its bind mounts).
    pub async fn upload_skeleton(&self, owner: crate::snapshot::Owner) -> Result<()> {
        if self.disk.is_some() {
            return Ok(());
        }
        let mut tar = tar::Builder::new(Vec::new());
        for (dir, mode) in [
            ("workspace/", 0o755),
            ("genesis/", 0o755),
            ("genesis/out/", 0o755),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(mode);
            h.set_size(0);
            h.set_mtime(0);
            // /genesis itself stays root's; only out/ is the user's.
            let (uid, gid) = if dir == "genesis/" {
                (0, 0)
            } else {
                (owner.uid, owner.gid)
            };
            h.set_uid(uid);
            h.set_gid(gid);
            tar.append_data(&mut h, dir, std::io::empty())
                .map_err(|e| GenesisError::io("building the sandbox skeleton", e))?;
        }
        let bytes = tar
            .into_inner()
            .map_err(|e| GenesisError::io("building the sandbox skeleton", e))?;
        self.upload("/", bytes).await
    }

    /// Starts the container, runs the suite in it as an exec and waits for
    /// that, streaming output into `log`, killing everything at `timeout`.
    ///
    /// The container's own process only idles; the suite runs as an exec in
    /// the same cgroup. That keeps the cgroup alive after the suite ends, so
    /// one last read gets its cumulative counters (CPU time, I/O, and the
    /// kernel's memory high-water mark) exactly, even for a suite shorter
    /// than the engine's one-second sampling interval: from the cgroup files
    /// when the engine is local, else through the stats API.
    pub async fn run(&self, timeout: Duration, log: CappedLog) -> Result<RunOutcome> {
        self.run_watched(timeout, log, std::future::pending()).await
    }

    /// [`Sandbox::run`] with a watchdog: when `watch` resolves first, the
    /// container is killed as at the timeout and the outcome's
    /// `stopped_by` carries the watchdog's reason.
    pub async fn run_watched(
        &self,
        timeout: Duration,
        log: CappedLog,
        watch: impl std::future::Future<Output = String>,
    ) -> Result<RunOutcome> {
        let alive_since = Instant::now();
        self.docker
            .start_container(&self.id, None)
            .await
            .map_err(|e| GenesisError::docker(format!("starting {}", self.name), e))?;
        self.prepare().await?;
        let pid = self.local_init_pid().await;
        let cgroup = pid.and_then(|pid| locate_cgroup(pid, &self.id));
        let llm = super::llm::RunEndpoint::start(
            self.spec.llm.as_ref(),
            self.spec.under_gvisor(),
            &self.id,
            pid,
        );
        let kernel_peak = cgroup
            .as_ref()
            .and_then(read_cgroup)
            .is_some_and(|r| r.memory_peak_bytes.is_some());
        let sampler = self.start_sampler(kernel_peak).await;
        let exec = self.start_suite(&llm.suite_env()).await?;
        let started = Instant::now();
        let end = self.await_suite(exec.output, log, timeout, watch).await?;
        let runtime_ms = started.elapsed().as_millis() as u64;
        let exit_code = self.checked_exit_code(&exec.id, end.killed()).await?;
        let acc = self.final_stats(sampler, cgroup.as_ref()).await?;
        let llm = llm.finish().await;
        let alive = alive_since.elapsed();
        self.kill().await?;
        let oom_killed = self.inspect_oom().await?;
        Ok(RunOutcome {
            exit_code,
            timed_out: end.timed_out,
            oom_killed,
            runtime_ms,
            resources: acc.finish(alive),
            log: end.log,
            disk_full: self.disk_is_full(),
            llm,
            stopped_by: end.stopped_by,
        })
    }

    /// Pumps the suite's output into `log` until the suite ends, the
    /// timeout passes, the container stops or `watch` resolves, and kills
    /// the container for the timeout and the watchdog.
    async fn await_suite(
        &self,
        output: ExecOutput,
        log: CappedLog,
        timeout: Duration,
        watch: impl std::future::Future<Output = String>,
    ) -> Result<SuiteEnd> {
        let (stop_pump, pump_stopped) = tokio::sync::oneshot::channel();
        let mut log_task = tokio::spawn(pump_output(output, log, pump_stopped));
        // The output stream ends when the suite's process exits; if the
        // container stops first (killed at the timeout, or its sandbox
        // died), the stream gets `stream_grace` to end before it is closed.
        let mut stopped_by = None;
        let (finished, timed_out) = tokio::select! {
            pumped = &mut log_task => (Some(pumped), false),
            _ = tokio::time::sleep(timeout) => (None, true),
            _ = self.stopped() => (None, false),
            reason = watch => {
                stopped_by = Some(reason);
                (None, false)
            }
        };
        let killed = timed_out || stopped_by.is_some();
        let pumped = match finished {
            Some(pumped) => pumped,
            None => {
                if killed {
                    self.kill().await?;
                }
                match tokio::time::timeout(self.spec.stream_grace, &mut log_task).await {
                    Ok(pumped) => pumped,
                    Err(_) => {
                        let _ = stop_pump.send(());
                        log_task.await
                    }
                }
            }
        };
        let log = pumped.map_err(|e| GenesisError::Internal(format!("log pump: {e}")))??;
        Ok(SuiteEnd {
            log,
            timed_out,
            stopped_by,
        })
    }

    /// The suite exec's exit code, 137 for a suite genesis killed.
    async fn checked_exit_code(&self, exec_id: &str, killed: bool) -> Result<i64> {
        if killed {
            return Ok(137);
        }
        let exit_code = self.suite_exit_code(exec_id).await?;
        // Only a failing suite can owe its failure to the container
        // stopping under it; a passing one finished whatever came after.
        if exit_code != 0 {
            self.check_still_running().await?;
        }
        Ok(exit_code)
    }

    /// Samples the engine's stats while the suite runs, unless the
    /// kernel's own peak is readable (then the cgroup files at the end are
    /// exact and sampling would only cost time).
    async fn start_sampler(&self, kernel_peak: bool) -> Option<Sampler> {
        if kernel_peak || !needs_sampling(&self.docker).await {
            return None;
        }
        let (stop, stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(sample_stats(
            self.docker.clone(),
            self.id.clone(),
            self.spec.stats_interval,
            stopped,
        ));
        Some(Sampler { stop, task })
    }

    /// The suite exec's exit code.
    async fn suite_exit_code(&self, exec_id: &str) -> Result<i64> {
        match self.exec_exit_code(exec_id).await {
            Ok(code) => Ok(code),
            // The OOM killer took the whole sandbox (seen with runsc):
            // the engine forgets the exec, but the cause is known.
            Err(e) if e.is_infrastructure() && self.inspect_oom().await.unwrap_or(false) => Ok(137),
            Err(e) => Err(e),
        }
    }

    /// Stops the sampler and adds the final reading: the cgroup still
    /// exists (the idle process keeps it), so its files give the exact
    /// totals at once; the stats API is the fallback.
    async fn final_stats(
        &self,
        sampler: Option<Sampler>,
        cgroup: Option<&super::cgroup::CgroupFiles>,
    ) -> Result<StatsAccumulator> {
        let mut acc = match sampler {
            Some(Sampler { stop, task }) => {
                let _ = stop.send(());
                task.await
                    .map_err(|e| GenesisError::Internal(format!("stats task: {e}")))?
            }
            None => StatsAccumulator::default(),
        };
        match cgroup.and_then(read_cgroup) {
            Some(reading) => acc.add_cgroup(&reading),
            None => {
                if let Some(last) = stats_once(&self.docker, &self.id).await {
                    acc.add(&last);
                }
            }
        }
        Ok(acc)
    }

    /// Resolves when the container has stopped (never on a failed wait:
    /// a lost engine connection ends the output stream by itself).
    async fn stopped(&self) {
        let mut wait = self
            .docker
            .wait_container(&self.id, None::<WaitContainerOptions>);
        match wait.next().await {
            Some(Ok(_)) | Some(Err(DockerError::DockerContainerWaitError { .. })) => {}
            _ => std::future::pending::<()>().await,
        }
    }

    /// Whether the run's own file system is full (false without one).
    pub fn disk_is_full(&self) -> bool {
        self.disk.as_ref().is_some_and(ScratchDisk::is_full)
    }

    /// The PID of the container's own process on this host, when the
    /// engine runs here (its cgroup files and network namespace are then
    /// this host's to read and join).
    async fn local_init_pid(&self) -> Option<i64> {
        if !engine_is_local() {
            return None;
        }
        let info = self.docker.inspect_container(&self.id, None).await.ok()?;
        info.state.and_then(|s| s.pid).filter(|pid| *pid > 0)
    }

    /// Starts the wrapper (setup, then tests) as an attached exec.
    async fn start_suite(&self, llm_env: &[String]) -> Result<StartedExec> {
        let what = format!("starting the test command in {}", self.name);
        let created = self
            .docker
            .create_exec(&self.id, exec_config(&self.spec, llm_env))
            .await
            .map_err(|e| GenesisError::docker(&what, e))?;
        let started = self
            .docker
            .start_exec(&created.id, None::<StartExecOptions>)
            .await
            .map_err(|e| GenesisError::docker(&what, e))?;
        match started {
            StartExecResults::Attached { output, .. } => Ok(StartedExec {
                id: created.id,
                output,
            }),
            StartExecResults::Detached => Err(GenesisError::sandbox(what, "exec was detached")),
        }
    }

    pub(super) async fn exec_exit_code(&self, exec_id: &str) -> Result<i64> {
        let info = self.docker.inspect_exec(exec_id).await.map_err(|e| {
            GenesisError::docker(format!("reading the exit status in {}", self.name), e)
        })?;
        Ok(info.exit_code.unwrap_or(-1))
    }

    async fn kill(&self) -> Result<()> {
        match self
            .docker
            .kill_container(
                &self.id,
                Some(KillContainerOptions {
                    signal: "SIGKILL".into(),
                }),
            )
            .await
        {
            Ok(()) => Ok(()),
            // Already stopped between the timeout and the kill: fine.
            Err(e) if classify(&e) == EngineFailure::Conflict => Ok(()),
            Err(e) => Err(GenesisError::docker(format!("killing {}", self.name), e)),
        }?;
        // Wait until the engine reports it stopped, so stats and logs end.
        let mut wait = self
            .docker
            .wait_container(&self.id, None::<WaitContainerOptions>);
        let _ = wait.next().await;
        Ok(())
    }

    /// The container's own process only idles, so a container that stopped
    /// before genesis killed it was stopped from outside (an engine
    /// restart, someone's `docker kill`) or the kernel's OOM killer took the
    /// idle process: the suite's exit status then says nothing about the
    /// change, so it is an infrastructure failure (retried), not a result.
    async fn check_still_running(&self) -> Result<()> {
        let info = self
            .docker
            .inspect_container(&self.id, None)
            .await
            .map_err(|e| GenesisError::docker(format!("inspecting {}", self.name), e))?;
        let state = info.state.unwrap_or_default();
        if state.running.unwrap_or(false) || state.oom_killed.unwrap_or(false) {
            return Ok(());
        }
        Err(GenesisError::infrastructure(
            format!("running the suite in {}", self.name),
            format!(
                "the container stopped under the suite (exit {}, {})",
                state.exit_code.unwrap_or(-1),
                state
                    .error
                    .filter(|e| !e.is_empty())
                    .unwrap_or_else(|| "no engine error".into())
            ),
        ))
    }

    /// Whether the engine saw the kernel's OOM killer act in the container.
    async fn inspect_oom(&self) -> Result<bool> {
        let info = self
            .docker
            .inspect_container(&self.id, None)
            .await
            .map_err(|e| GenesisError::docker(format!("inspecting {}", self.name), e))?;
        Ok(info.state.and_then(|s| s.oom_killed).unwrap_or(false))
    }

    /// Commits the (stopped) container as image `repo:tag` with `labels`,
    /// returning the image id. Used for environments: the install's result
    /// becomes the image later runs start from.
    pub async fn commit(
        &self,
        repo: &str,
        tag: &str,
        labels: HashMap<String, String>,
    ) -> Result<String> {
        let options = bollard::query_parameters::CommitContainerOptionsBuilder::default()
            .container(&self.id)
            .repo(repo)
            .tag(tag)
            .pause(false)
            .build();
        let config = bollard::models::ContainerConfig {
            labels: Some(labels),
            ..Default::default()
        };
        let what = format!("committing {} as {repo}:{tag}", self.name);
        let commit = async {
            self.docker
                .commit_container(options, config)
                .await
                .map_err(|e| GenesisError::sandbox(&what, e))
        };
        let created = within(self.spec.docker_timeout, &what, commit).await?;
        Ok(created.id)
    }

    /// Removes the container and its anonymous volumes, then its disk.
    pub async fn remove(mut self) -> Result<()> {
        self.removed = true;
        let what = format!("removing {}", self.name);
        within(
            self.spec.docker_timeout,
            &what,
            remove_container(&self.docker, &self.id),
        )
        .await?;
        match self.disk.take() {
            Some(disk) => tokio::task::spawn_blocking(move || disk.release())
                .await
                .map_err(|e| GenesisError::Internal(format!("disk release task: {e}")))?,
            None => Ok(()),
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        if self.removed {
            return;
        }
        // Reached on a panic or a cancelled future. Removal needs async I/O,
        // so it runs on a short-lived runtime of its own, and we wait for it:
        // a leaked container is worse than a brief block.
        let id = self.id.clone();
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async {
                if let Ok(docker) = Docker::connect_with_defaults() {
                    let _ = remove_container(&docker, &id).await;
                }
            });
        })
        .join();
    }
}

/// Makes a run's disk off the async threads (mkfs and mount are processes).
async fn make_disk(root: std::path::PathBuf, request: &DiskRequest) -> Result<ScratchDisk> {
    let (size_mb, owner, layered) = (request.size_mb, request.owner, request.layered.clone());
    tokio::task::spawn_blocking(move || {
        ScratchDisk::create(&root, size_mb, owner, layered.as_ref())
    })
    .await
    .map_err(|e| GenesisError::Internal(format!("disk task: {e}")))?
}

/// The suite's exec: its id (for the exit status) and its output.
struct StartedExec {
    id: String,
    output: ExecOutput,
}

/// An attached exec's output, as the engine streams it.
type ExecOutput = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = std::result::Result<LogOutput, DockerError>> + Send>,
>;

/// How the suite's exec ended: its output, and why genesis killed it, if it did.
struct SuiteEnd {
    log: LogSummary,
    timed_out: bool,
    /// The watchdog's reason ([`Sandbox::run_watched`]).
    stopped_by: Option<String>,
}

impl SuiteEnd {
    fn killed(&self) -> bool {
        self.timed_out || self.stopped_by.is_some()
    }
}
