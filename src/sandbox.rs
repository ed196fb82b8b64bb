//! Sandboxes: one hardened Docker container per test run, driven through
//! the Docker API (bollard), never the CLI.
//!
//! Lifecycle, in order, each step for a reason:
//! 1. **create** with the risk level's limits (NanoCpus, Memory = MemorySwap so
//!    there is no swap, PidsLimit, no network), CapDrop ALL, no-new-privileges,
//!    a non-root user, a tmpfs `/tmp`, the engine's own log capped at 1 MB
//!    (output is taken from the attach stream and capped here, so a flood
//!    cannot fill Docker's disk), and labels naming the experiment, role and genesis home so a
//!    restarted genesis can find and reap its containers.
//! 2. **upload** the skeleton (`/workspace`, `/genesis/out` owned by the
//!    sandbox user) and the snapshot tarballs through the archive API *before*
//!    start: no host path is ever bind-mounted, and an upload into a running
//!    container's tmpfs would silently miss it.
//! 3. **start, exec, wait**: the container's own process idles; the suite
//!    runs as an attached exec in the same cgroup, waited for with the
//!    effective timeout. Stats are read once after the suite, while the
//!    cgroup still exists, so the cumulative counters are exact however
//!    short the run (and sampled during it on cgroup v2, which keeps no
//!    memory high-water mark).
//! 4. **kill, inspect** for `OOMKilled`.
//! 5. **download** `/genesis/out` after the container stopped; only regular
//!    files with plain relative names are kept, symlinks and the like are
//!    dropped unread (a container-made symlink must never be followed).
//! 6. **remove**, always: on success, failure, timeout, error and panic (the
//!    `Drop` of [`Sandbox`] removes a container that was not removed).

use std::collections::{HashMap, VecDeque};
use std::io::{Read, Write};

use std::path::{Component, Path, PathBuf};
use std::time::{Duration, Instant};

use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::{
    ContainerCreateBody, ContainerStatsResponse, ExecConfig, HostConfig, HostConfigLogConfig,
    SystemInfoCgroupVersionEnum,
};
use bollard::query_parameters::{
    CreateContainerOptions, DownloadFromContainerOptions, KillContainerOptions,
    ListContainersOptions, RemoveContainerOptions, StatsOptions, UploadToContainerOptions,
    WaitContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;

use crate::config::Limits;
use crate::errors::{GenesisError, Result};

/// Label keys on every genesis container.
pub const LABEL_EXPERIMENT: &str = "genesis.experiment";
pub const LABEL_ROLE: &str = "genesis.role";
pub const LABEL_HOME: &str = "genesis.home";

/// Exit status the wrapper script uses when the setup command fails, with
/// a marker line in the log so it is told apart from a failing suite.
pub const SETUP_FAILED_MARKER: &str = "genesis: setup command failed with exit status";

/// Runs the optional setup, then the test command, in the repo's directory.
const WRAPPER: &str = r#"cd "$GENESIS_WORKDIR" || exit 125
if [ -n "$GENESIS_SETUP" ]; then
  sh -c "$GENESIS_SETUP"
  s=$?
  if [ "$s" -ne 0 ]; then echo "genesis: setup command failed with exit status $s" >&2; exit "$s"; fi
fi
exec sh -c "$GENESIS_TEST""#;

/// The container's own process: sleeps until the container is killed.
const IDLE: &str = "exec sleep 2147483647";

/// The exec that runs the suite, as the sandbox user.
pub fn exec_config(spec: &SandboxSpec) -> ExecConfig {
    ExecConfig {
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(false),
        cmd: Some(vec!["sh".into(), "-c".into(), WRAPPER.into()]),
        env: Some(vec![
            format!("GENESIS_WORKDIR=/workspace/{}", spec.repo),
            format!("GENESIS_SETUP={}", spec.setup_command),
            format!("GENESIS_TEST={}", spec.test_command),
            "HOME=/tmp".into(),
        ]),
        user: Some(spec.user.clone()),
        working_dir: Some("/".into()),
        privileged: Some(false),
        ..Default::default()
    }
}

/// Connects to the engine named by `DOCKER_HOST` (or the local socket) and
/// agrees on an API version both sides speak.
pub async fn connect() -> Result<Docker> {
    let docker = Docker::connect_with_defaults()
        .map_err(|e| GenesisError::sandbox("connecting to the Docker engine", e))?;
    docker
        .negotiate_version()
        .await
        .map_err(|e| GenesisError::sandbox("negotiating the Docker API version", e))
}

/// Which run of an experiment a container is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Baseline,
    Candidate,
    Rerun,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Baseline => "baseline",
            Role::Candidate => "candidate",
            Role::Rerun => "rerun",
        }
    }
}

/// Everything needed to create one sandbox; built with [`SandboxBuilder`].
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    pub experiment_id: String,
    pub role: Role,
    pub image: String,
    /// `uid:gid` the tests run as.
    pub user: String,
    pub limits: Limits,
    pub tmp_mb: u64,
    /// Repo the command runs in (`/workspace/NAME`).
    pub repo: String,
    pub test_command: String,
    pub setup_command: String,
    /// Identifies the genesis home, so two services on one engine never reap
    /// each other's containers.
    pub home_label: String,
    /// Upper bound for one engine call (create, upload, inspect, download,
    /// remove): a wedged engine fails the experiment instead of hanging it.
    pub docker_timeout: Duration,
    /// How often resource use is sampled while the suite runs.
    pub stats_interval: Duration,
}

/// Builder in the style of rustwide's: limits and identity first, command last.
pub struct SandboxBuilder {
    spec: SandboxSpec,
}

impl SandboxBuilder {
    pub fn new(experiment_id: &str, role: Role, image: &str, limits: Limits) -> Self {
        SandboxBuilder {
            spec: SandboxSpec {
                experiment_id: experiment_id.into(),
                role,
                image: image.into(),
                user: "10001:10001".into(),
                limits,
                tmp_mb: 64,
                repo: String::new(),
                test_command: String::new(),
                setup_command: String::new(),
                home_label: String::new(),
                docker_timeout: Duration::from_secs(120),
                stats_interval: Duration::from_millis(500),
            },
        }
    }

    pub fn docker_timeout(mut self, timeout: Duration) -> Self {
        self.spec.docker_timeout = timeout;
        self
    }

    pub fn stats_interval(mut self, every: Duration) -> Self {
        self.spec.stats_interval = every.max(Duration::from_millis(10));
        self
    }

    pub fn user(mut self, user: &str) -> Self {
        self.spec.user = user.into();
        self
    }

    pub fn tmp_mb(mut self, mb: u64) -> Self {
        self.spec.tmp_mb = mb;
        self
    }

    pub fn home_label(mut self, label: &str) -> Self {
        self.spec.home_label = label.into();
        self
    }

    pub fn command(mut self, repo: &str, setup: &str, test: &str) -> Self {
        self.spec.repo = repo.into();
        self.spec.setup_command = setup.into();
        self.spec.test_command = test.into();
        self
    }

    pub fn spec(self) -> SandboxSpec {
        self.spec
    }

    pub async fn create(self, docker: &Docker) -> Result<Sandbox> {
        Sandbox::create(docker, self.spec).await
    }
}

/// The container's create body: limits and hardening in one place.
pub fn container_config(spec: &SandboxSpec) -> ContainerCreateBody {
    let mb = |m: u64| i64::try_from(m.saturating_mul(1024 * 1024)).unwrap_or(i64::MAX);
    let labels = HashMap::from([
        (LABEL_EXPERIMENT.to_string(), spec.experiment_id.clone()),
        (LABEL_ROLE.to_string(), spec.role.as_str().to_string()),
        (LABEL_HOME.to_string(), spec.home_label.clone()),
    ]);
    let tmpfs = HashMap::from([(
        "/tmp".to_string(),
        format!("rw,nosuid,nodev,size={}m,mode=1777", spec.tmp_mb),
    )]);
    let host = HostConfig {
        nano_cpus: Some((spec.limits.cpus * 1e9) as i64),
        memory: Some(mb(spec.limits.memory_mb)),
        // Equal to memory: no swap, so the memory limit is real.
        memory_swap: Some(mb(spec.limits.memory_mb)),
        pids_limit: Some(spec.limits.pids),
        network_mode: Some(
            if spec.limits.network {
                "bridge"
            } else {
                "none"
            }
            .into(),
        ),
        cap_drop: Some(vec!["ALL".into()]),
        security_opt: Some(vec!["no-new-privileges".into()]),
        tmpfs: Some(tmpfs),
        // Output reaches genesis through the attach stream; the engine's own
        // copy is kept tiny so a flood cannot fill its disk. (Not every
        // engine build has the "none" driver.)
        log_config: Some(HostConfigLogConfig {
            typ: Some("json-file".into()),
            config: Some(HashMap::from([
                ("max-size".to_string(), "1m".to_string()),
                ("max-file".to_string(), "1".to_string()),
            ])),
        }),
        auto_remove: Some(false),
        ..Default::default()
    };
    ContainerCreateBody {
        image: Some(spec.image.clone()),
        user: Some(spec.user.clone()),
        working_dir: Some("/".into()),
        // Idles until killed; the suite runs as an exec (see `Sandbox::run`).
        cmd: Some(vec!["sh".into(), "-c".into(), IDLE.into()]),
        env: Some(vec!["HOME=/tmp".into()]),
        network_disabled: Some(!spec.limits.network),
        attach_stdout: Some(false),
        attach_stderr: Some(false),
        tty: Some(false),
        labels: Some(labels),
        host_config: Some(host),
        ..Default::default()
    }
}

/// Resource use read from the Docker stats stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    pub memory_peak_bytes: u64,
    pub cpu_percent: f64,
    pub io_operations: u64,
    pub samples: u64,
}

/// Folds stats samples into [`Resources`]. Pure, so the arithmetic is tested
/// without an engine.
#[derive(Debug, Default)]
pub struct StatsAccumulator {
    first_cpu: Option<(u64, u64)>,
    last_cpu: Option<(u64, u64)>,
    online_cpus: u32,
    peak: u64,
    io_ops: u64,
    samples: u64,
}

impl StatsAccumulator {
    pub fn add(&mut self, s: &ContainerStatsResponse) {
        self.samples += 1;
        if let Some(mem) = &s.memory_stats {
            // cgroup v1 reports its own high-water mark; v2 only the current
            // usage, so the peak is the max of what was seen.
            let seen = mem.max_usage.unwrap_or(0).max(mem.usage.unwrap_or(0));
            self.peak = self.peak.max(seen);
        }
        if let Some(cpu) = &s.cpu_stats {
            let total = cpu.cpu_usage.as_ref().and_then(|u| u.total_usage);
            if let (Some(total), Some(system)) = (total, cpu.system_cpu_usage) {
                self.first_cpu.get_or_insert((total, system));
                self.last_cpu = Some((total, system));
            }
            if let Some(n) = cpu.online_cpus.filter(|n| *n > 0) {
                self.online_cpus = n;
            }
        }
        if let Some(blk) = &s.blkio_stats {
            let ops: u64 = blk
                .io_serviced_recursive
                .iter()
                .flatten()
                .filter(|e| {
                    e.op.as_deref()
                        .is_none_or(|op| op.eq_ignore_ascii_case("total"))
                })
                .filter_map(|e| e.value)
                .sum();
            // Counters are cumulative; keep the largest reading.
            self.io_ops = self.io_ops.max(ops);
        }
    }

    /// CPU % = Δtotal_usage / Δsystem_usage × online_cpus × 100, over the run.
    ///
    /// With a single reading (the usual case: one exact read when the suite
    /// ends, see [`Sandbox::run`]) the window is the container's whole life,
    /// `alive`: its CPU counter started at 0 with the container, and the
    /// host's `system_cpu_usage` grows by `alive × online_cpus` over that
    /// time, so the formula becomes total_usage / alive × 100.
    pub fn finish(&self, alive: Duration) -> Resources {
        let cpus = f64::from(self.online_cpus.max(1));
        let cpu_percent = match (self.first_cpu, self.last_cpu) {
            (Some((t0, s0)), Some((t1, s1))) if s1 > s0 => {
                (t1.saturating_sub(t0)) as f64 / (s1 - s0) as f64 * cpus * 100.0
            }
            (_, Some((t1, _))) if !alive.is_zero() => t1 as f64 / alive.as_nanos() as f64 * 100.0,
            _ => 0.0,
        };
        Resources {
            memory_peak_bytes: self.peak,
            cpu_percent,
            io_operations: self.io_ops,
            samples: self.samples,
        }
    }
}

/// Test output kept within a byte budget: the first half of the budget as it
/// arrives, the last half in a ring of chunks, and a line saying how much was cut.
/// Chunks are kept whole (cheap to push and pop); the oldest one is trimmed
/// when the tail is written out.
pub struct CappedLog {
    file: std::fs::File,
    path: PathBuf,
    head_cap: usize,
    head_written: usize,
    tail: VecDeque<bytes::Bytes>,
    tail_len: usize,
    tail_cap: usize,
    total: u64,
}

/// What was kept of a run's output.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LogSummary {
    pub path: PathBuf,
    pub total_bytes: u64,
    pub cut_bytes: u64,
    /// The kept text (head, cut marker, tail), for report parsing.
    pub text: String,
}

impl CappedLog {
    pub fn create(path: &Path, cap: u64) -> Result<CappedLog> {
        let file = std::fs::File::create(path)
            .map_err(|e| GenesisError::io(format!("creating {}", path.display()), e))?;
        let half = usize::try_from(cap / 2).unwrap_or(usize::MAX / 4);
        Ok(CappedLog {
            file,
            path: path.to_path_buf(),
            head_cap: half,
            head_written: 0,
            tail: VecDeque::new(),
            tail_len: 0,
            tail_cap: half,
            total: 0,
        })
    }

    pub fn write(&mut self, bytes: bytes::Bytes) -> Result<()> {
        self.total += bytes.len() as u64;
        let room = self.head_cap - self.head_written;
        let n = room.min(bytes.len());
        if n > 0 {
            self.file
                .write_all(&bytes[..n])
                .map_err(|e| GenesisError::io("writing the test log", e))?;
            self.head_written += n;
        }
        let rest = bytes.slice(n..);
        if rest.is_empty() {
            return Ok(());
        }
        self.tail_len += rest.len();
        self.tail.push_back(rest);
        // Drop whole chunks the tail no longer needs.
        while self
            .tail
            .front()
            .is_some_and(|f| self.tail_len - f.len() >= self.tail_cap)
        {
            let dropped = self.tail.pop_front().map_or(0, |f| f.len());
            self.tail_len -= dropped;
        }
        Ok(())
    }

    pub fn finish(mut self) -> Result<LogSummary> {
        let excess = self.tail_len.saturating_sub(self.tail_cap);
        let kept = self.head_written as u64 + (self.tail_len - excess) as u64;
        let cut = self.total - kept;
        let io = |e| GenesisError::io("writing the test log", e);
        if cut > 0 {
            let marker = format!(
                "\n[genesis: {cut} bytes of output cut here; first and last {} bytes kept]\n",
                self.head_cap
            );
            self.file.write_all(marker.as_bytes()).map_err(io)?;
        }
        let mut skip = excess;
        for chunk in &self.tail {
            let from = skip.min(chunk.len());
            skip -= from;
            self.file.write_all(&chunk[from..]).map_err(io)?;
        }
        self.file.flush().map_err(io)?;
        let raw = std::fs::read(&self.path)
            .map_err(|e| GenesisError::io("reading back the test log", e))?;
        Ok(LogSummary {
            path: self.path,
            total_bytes: self.total,
            cut_bytes: cut,
            text: String::from_utf8_lossy(&raw).into_owned(),
        })
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RunOutcome {
    pub exit_code: i64,
    pub timed_out: bool,
    pub oom_killed: bool,
    pub runtime_ms: u64,
    pub resources: Resources,
    pub log: LogSummary,
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

/// A created container. Removed on drop if [`Sandbox::remove`] was not called.
pub struct Sandbox {
    docker: Docker,
    pub id: String,
    pub name: String,
    pub spec: SandboxSpec,
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
        let limit = spec.docker_timeout;
        let create = docker.create_container(Some(options), container_config(&spec));
        let created = match tokio::time::timeout(limit, create).await {
            Ok(Ok(created)) => created,
            Ok(Err(
                e @ DockerError::DockerResponseServerError {
                    status_code: 404, ..
                },
            )) => {
                return Err(GenesisError::sandbox(
                    format!("creating a container from image {}", spec.image),
                    format!("{e} (build it with `genesis images build`)"),
                ))
            }
            Ok(Err(e)) => {
                return Err(GenesisError::sandbox(
                    format!("creating a container from {}", spec.image),
                    e,
                ))
            }
            Err(_) => {
                return Err(GenesisError::sandbox(
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
                .map_err(|e| GenesisError::sandbox(&what, e))
        };
        within(self.spec.docker_timeout, &what, upload).await
    }

    /// Creates `/workspace` and `/genesis/out` owned by the sandbox user.
    pub async fn upload_skeleton(&self, owner: crate::snapshot::Owner) -> Result<()> {
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
    /// one last stats read gets its cumulative counters (CPU time, I/O, and
    /// on cgroup v1 the kernel's memory high-water mark) exactly, even for a
    /// suite shorter than the engine's one-second sampling interval.
    pub async fn run(&self, timeout: Duration, log: CappedLog) -> Result<RunOutcome> {
        let alive_since = Instant::now();
        self.docker
            .start_container(&self.id, None)
            .await
            .map_err(|e| GenesisError::sandbox(format!("starting {}", self.name), e))?;
        let (stop_sampling, sampling_stopped) = tokio::sync::oneshot::channel();
        let sampler = if needs_sampling(&self.docker).await {
            Some(tokio::spawn(sample_stats(
                self.docker.clone(),
                self.id.clone(),
                self.spec.stats_interval,
                sampling_stopped,
            )))
        } else {
            None
        };

        let exec = self.start_suite().await?;
        let started = Instant::now();
        let mut log_task = tokio::spawn(pump_output(exec.output, log));
        // The output stream ends when the suite's process exits.
        let (pumped, timed_out) = match tokio::time::timeout(timeout, &mut log_task).await {
            Ok(pumped) => (pumped, false),
            Err(_) => {
                self.kill().await?;
                (log_task.await, true)
            }
        };
        let runtime_ms = started.elapsed().as_millis() as u64;
        let log = pumped.map_err(|e| GenesisError::Internal(format!("log pump: {e}")))??;
        let exit_code = if timed_out {
            137
        } else {
            self.exec_exit_code(&exec.id).await?
        };
        let _ = stop_sampling.send(());
        let mut acc = match sampler {
            Some(task) => task
                .await
                .map_err(|e| GenesisError::Internal(format!("stats task: {e}")))?,
            None => StatsAccumulator::default(),
        };
        if let Some(last) = stats_once(&self.docker, &self.id).await {
            acc.add(&last);
        }
        let alive = alive_since.elapsed();
        self.kill().await?;
        let oom_killed = self.inspect_oom().await?;
        Ok(RunOutcome {
            exit_code,
            timed_out,
            oom_killed,
            runtime_ms,
            resources: acc.finish(alive),
            log,
        })
    }

    /// Starts the wrapper (setup, then tests) as an attached exec.
    async fn start_suite(&self) -> Result<StartedExec> {
        let what = format!("starting the test command in {}", self.name);
        let created = self
            .docker
            .create_exec(&self.id, exec_config(&self.spec))
            .await
            .map_err(|e| GenesisError::sandbox(&what, e))?;
        let started = self
            .docker
            .start_exec(&created.id, None::<StartExecOptions>)
            .await
            .map_err(|e| GenesisError::sandbox(&what, e))?;
        match started {
            StartExecResults::Attached { output, .. } => Ok(StartedExec {
                id: created.id,
                output,
            }),
            StartExecResults::Detached => Err(GenesisError::sandbox(what, "exec was detached")),
        }
    }

    async fn exec_exit_code(&self, exec_id: &str) -> Result<i64> {
        let info = self.docker.inspect_exec(exec_id).await.map_err(|e| {
            GenesisError::sandbox(format!("reading the exit status in {}", self.name), e)
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
            Err(DockerError::DockerResponseServerError {
                status_code: 409, ..
            }) => Ok(()),
            Err(e) => Err(GenesisError::sandbox(format!("killing {}", self.name), e)),
        }?;
        // Wait until the engine reports it stopped, so stats and logs end.
        let mut wait = self
            .docker
            .wait_container(&self.id, None::<WaitContainerOptions>);
        let _ = wait.next().await;
        Ok(())
    }

    /// Whether the engine saw the kernel's OOM killer act in the container.
    async fn inspect_oom(&self) -> Result<bool> {
        let info = self
            .docker
            .inspect_container(&self.id, None)
            .await
            .map_err(|e| GenesisError::sandbox(format!("inspecting {}", self.name), e))?;
        Ok(info.state.and_then(|s| s.oom_killed).unwrap_or(false))
    }

    /// Downloads `/genesis/out` (after the container stopped) into `dest`,
    /// keeping only regular files, and returns them for report parsing.
    pub async fn download_out(&self, dest: &Path, cap: u64) -> Result<Vec<(String, Vec<u8>)>> {
        let mut stream = self.docker.download_from_container(
            &self.id,
            Some(DownloadFromContainerOptions {
                path: "/genesis/out".into(),
            }),
        );
        let mut raw = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(DockerError::DockerResponseServerError {
                    status_code: 404, ..
                }) => return Ok(Vec::new()),
                Err(e) => {
                    return Err(GenesisError::sandbox(
                        format!("downloading /genesis/out of {}", self.name),
                        e,
                    ))
                }
            };
            if raw.len() as u64 + chunk.len() as u64 > cap {
                return Err(GenesisError::sandbox(
                    format!("downloading /genesis/out of {}", self.name),
                    format!("it holds more than the {cap} byte limit ([sandbox] out_cap_bytes)"),
                ));
            }
            raw.extend_from_slice(&chunk);
        }
        extract_regular_files(&raw, dest)
    }

    /// Removes the container and its anonymous volumes.
    pub async fn remove(mut self) -> Result<()> {
        self.removed = true;
        let what = format!("removing {}", self.name);
        within(
            self.spec.docker_timeout,
            &what,
            remove_container(&self.docker, &self.id),
        )
        .await
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

/// Bounds one engine call; the error says which call and how long it had.
async fn within<T>(
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| {
        Err(GenesisError::sandbox(
            what,
            format!(
                "no answer from the Docker engine within {} ms ([sandbox] docker_timeout_ms)",
                limit.as_millis()
            ),
        ))
    })
}

pub async fn remove_container(docker: &Docker, id: &str) -> Result<()> {
    let options = RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    };
    match docker.remove_container(id, Some(options)).await {
        Ok(()) => Ok(()),
        Err(DockerError::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        Err(e) => Err(GenesisError::sandbox(format!("removing container {id}"), e)),
    }
}

/// Containers carrying genesis labels, optionally only one home's or one experiment's.
pub async fn labelled_containers(
    docker: &Docker,
    home_label: Option<&str>,
    experiment: Option<&str>,
) -> Result<Vec<(String, String)>> {
    let mut labels = vec![LABEL_EXPERIMENT.to_string()];
    if let Some(h) = home_label {
        labels.push(format!("{LABEL_HOME}={h}"));
    }
    if let Some(e) = experiment {
        labels.push(format!("{LABEL_EXPERIMENT}={e}"));
    }
    let options = ListContainersOptions {
        all: true,
        filters: Some(HashMap::from([("label".to_string(), labels)])),
        ..Default::default()
    };
    let list = docker
        .list_containers(Some(options))
        .await
        .map_err(|e| GenesisError::sandbox("listing genesis containers", e))?;
    Ok(list
        .into_iter()
        .filter_map(|c| {
            let exp = c.labels.as_ref()?.get(LABEL_EXPERIMENT)?.clone();
            Some((c.id?, exp))
        })
        .collect())
}

async fn pump_output(
    mut output: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = std::result::Result<LogOutput, DockerError>> + Send>,
    >,
    mut log: CappedLog,
) -> Result<LogSummary> {
    while let Some(item) = output.next().await {
        match item {
            Ok(
                LogOutput::StdOut { message }
                | LogOutput::StdErr { message }
                | LogOutput::Console { message },
            ) => log.write(message)?,
            Ok(LogOutput::StdIn { .. }) => {}
            // The stream breaks when the container is killed; what we have is the log.
            Err(_) => break,
        }
    }
    log.finish()
}

/// Whether the engine's cgroups lack a memory high-water mark (cgroup v2),
/// so the peak must be sampled during the run. Asked once per process.
async fn needs_sampling(docker: &Docker) -> bool {
    static CGROUP_V2: tokio::sync::OnceCell<bool> = tokio::sync::OnceCell::const_new();
    *CGROUP_V2
        .get_or_init(|| async {
            docker
                .info()
                .await
                .is_ok_and(|info| info.cgroup_version == Some(SystemInfoCgroupVersionEnum::_2))
        })
        .await
}

/// Samples resource use every `every` until told to stop (cgroup v2 only).
async fn sample_stats(
    docker: Docker,
    id: String,
    every: Duration,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> StatsAccumulator {
    let mut acc = StatsAccumulator::default();
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = ticks.tick() => match stats_once(&docker, &id).await {
                Some(s) => acc.add(&s),
                None => break,
            },
        }
    }
    acc
}

/// One stats reading, without the engine's wait for a previous sample;
/// `None` when the container has no cgroup any more.
async fn stats_once(docker: &Docker, id: &str) -> Option<ContainerStatsResponse> {
    let mut stream = docker.stats(
        id,
        Some(StatsOptions {
            stream: false,
            one_shot: true,
        }),
    );
    match stream.next().await {
        Some(Ok(s)) if has_memory_figures(&s) => Some(s),
        _ => None,
    }
}

/// A stopped container reports samples without memory figures.
fn has_memory_figures(s: &ContainerStatsResponse) -> bool {
    s.memory_stats.as_ref().and_then(|m| m.usage).is_some()
}

/// The suite's exec: its id (for the exit status) and its output.
struct StartedExec {
    id: String,
    output: std::pin::Pin<
        Box<dyn futures_util::Stream<Item = std::result::Result<LogOutput, DockerError>> + Send>,
    >,
}

/// Extracts only regular files with plain relative paths from a tar made by
/// the engine. Symlinks, hard links, devices and anything with `..` are
/// dropped without being followed or created; files are created with
/// `create_new` in directories made here, so nothing outside `dest` is touched.
pub fn extract_regular_files(raw: &[u8], dest: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    std::fs::create_dir_all(dest)
        .map_err(|e| GenesisError::io(format!("creating {}", dest.display()), e))?;
    let mut archive = tar::Archive::new(raw);
    let mut files = Vec::new();
    let entries = archive
        .entries()
        .map_err(|e| GenesisError::io("reading the /genesis/out archive", e))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| GenesisError::io("reading the /genesis/out archive", e))?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let Ok(path) = entry.path().map(|p| p.into_owned()) else {
            continue;
        };
        // The archive's root is the `out/` directory itself.
        let Some(rel) = plain_relative(&path).and_then(|p| {
            let mut parts = p.components();
            parts.next();
            let rest = parts.as_path().to_path_buf();
            (!rest.as_os_str().is_empty()).then_some(rest)
        }) else {
            continue;
        };
        let mut content = Vec::new();
        entry
            .read_to_end(&mut content)
            .map_err(|e| GenesisError::io("reading a file of /genesis/out", e))?;
        if write_new_file(dest, &rel, &content).is_ok() {
            files.push((rel.to_string_lossy().into_owned(), content));
        }
    }
    files.sort();
    Ok(files)
}

fn plain_relative(path: &Path) -> Option<&Path> {
    path.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then_some(path)
}

fn write_new_file(dest: &Path, rel: &Path, content: &[u8]) -> std::io::Result<()> {
    let target = dest.join(rel);
    if let Some(parent) = target.parent() {
        // Directories only ever come from here; a pre-existing symlink in
        // the path would make create_dir_all or create_new fail, not follow.
        std::fs::create_dir_all(parent)?;
        if std::fs::symlink_metadata(parent)?.file_type().is_symlink() {
            return Err(std::io::Error::other("symlinked directory"));
        }
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&target)?;
    f.write_all(content)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::{ContainerCpuStats, ContainerCpuUsage, ContainerMemoryStats};

    fn sample(total: u64, system: u64, mem: u64, max: Option<u64>) -> ContainerStatsResponse {
        ContainerStatsResponse {
            cpu_stats: Some(ContainerCpuStats {
                cpu_usage: Some(ContainerCpuUsage {
                    total_usage: Some(total),
                    ..Default::default()
                }),
                system_cpu_usage: Some(system),
                online_cpus: Some(2),
                ..Default::default()
            }),
            memory_stats: Some(ContainerMemoryStats {
                usage: Some(mem),
                max_usage: max,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn cpu_percent_is_delta_over_delta_times_cpus() {
        let mut acc = StatsAccumulator::default();
        acc.add(&sample(1_000, 10_000, 5, None));
        acc.add(&sample(3_000, 14_000, 9, None));
        let r = acc.finish(Duration::ZERO);
        // (2000 / 4000) * 2 * 100
        assert!((r.cpu_percent - 100.0).abs() < 1e-9);
        assert_eq!(r.memory_peak_bytes, 9);
    }

    #[test]
    fn one_reading_measures_cpu_over_the_containers_life() {
        let mut acc = StatsAccumulator::default();
        // 30 ms of CPU time in a container alive for 120 ms: 25 %.
        acc.add(&sample(30_000_000, 999_000_000_000, 5, Some(7)));
        let r = acc.finish(Duration::from_millis(120));
        assert!((r.cpu_percent - 25.0).abs() < 1e-9, "{}", r.cpu_percent);
        assert_eq!(r.memory_peak_bytes, 7);
        assert_eq!(
            StatsAccumulator::default()
                .finish(Duration::from_millis(5))
                .cpu_percent,
            0.0
        );
    }

    #[test]
    fn v1_max_usage_wins_over_samples() {
        let mut acc = StatsAccumulator::default();
        acc.add(&sample(0, 1, 5, Some(50)));
        acc.add(&sample(0, 2, 7, Some(50)));
        assert_eq!(acc.finish(Duration::ZERO).memory_peak_bytes, 50);
    }

    #[test]
    fn capped_log_keeps_head_and_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = CappedLog::create(&dir.path().join("log"), 10).unwrap();
        log.write(bytes::Bytes::from_static(b"abcdefghij")).unwrap();
        log.write(bytes::Bytes::from_static(b"klm")).unwrap();
        log.write(bytes::Bytes::from_static(b"nopqrst")).unwrap();
        let s = log.finish().unwrap();
        assert_eq!(s.total_bytes, 20);
        assert_eq!(s.cut_bytes, 10);
        assert!(s.text.starts_with("abcde"));
        assert!(s.text.ends_with("pqrst"));
        assert!(s.text.contains("10 bytes of output cut"));
    }

    #[test]
    fn oom_rule() {
        let mut o = RunOutcome {
            exit_code: 137,
            ..Default::default()
        };
        assert!(!o.is_oom(256), "137 alone is only SIGKILL");
        o.resources.memory_peak_bytes = 256 * 1024 * 1024;
        assert!(o.is_oom(256));
        o = RunOutcome {
            oom_killed: true,
            ..Default::default()
        };
        assert!(o.is_oom(256));
    }

    #[test]
    fn extraction_drops_links_and_escapes() {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |path: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            match link {
                Some(l) => b.append_link(&mut h, path, l).unwrap(),
                None => b.append_data(&mut h, path, data).unwrap(),
            }
        };
        add("out/", tar::EntryType::Directory, b"", None);
        add("out/junit.xml", tar::EntryType::Regular, b"<x/>", None);
        add(
            "out/evil",
            tar::EntryType::Symlink,
            b"",
            Some("/etc/passwd"),
        );
        add("out/sub/r.txt", tar::EntryType::Regular, b"ok", None);
        add("out/evil/x", tar::EntryType::Regular, b"through link", None);
        let raw = b.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let files = extract_regular_files(&raw, dir.path()).unwrap();
        let names: Vec<_> = files.iter().map(|(n, _)| n.as_str()).collect();
        // The symlink was never created, so `evil/x` became a plain directory and file.
        assert_eq!(names, ["evil/x", "junit.xml", "sub/r.txt"]);
        let evil = std::fs::symlink_metadata(dir.path().join("evil")).unwrap();
        assert!(evil.is_dir() && !evil.file_type().is_symlink());
    }
}
