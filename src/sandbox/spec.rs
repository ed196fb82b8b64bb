//! What a sandbox is made of: the [`SandboxSpec`] (limits, identity, command),
//! its builder, and the engine documents built from it (container create body,
//! the suite's exec). Every hardening setting is in [`container_config`].

use crate::config::Limits;
use crate::errors::Result;
use bollard::models::{
    ContainerCreateBody, ExecConfig, HostConfig, HostConfigLogConfig, Mount, MountType,
    ResourcesUlimits,
};
use bollard::Docker;
use std::collections::HashMap;
use std::time::Duration;

use super::*;

/// Exit status the wrapper script uses when the setup command fails, with
/// a marker line in the log so it is told apart from a failing suite.
pub const SETUP_FAILED_MARKER: &str = "genesis: setup command failed with exit status";

/// Runs the optional setup, then the test command, in the repo's directory.
/// With an LLM endpoint, the SDKs' API keys get a placeholder unless the
/// image or the command sets them (SDKs refuse to start without one).
const WRAPPER: &str = r#"cd "$GENESIS_WORKDIR" || exit 125
if [ -n "$GENESIS_LLM_URL" ]; then
  export OPENAI_API_KEY="${OPENAI_API_KEY:-genesis-placeholder}" ANTHROPIC_API_KEY="${ANTHROPIC_API_KEY:-genesis-placeholder}"
fi
if [ -n "$GENESIS_SETUP" ]; then
  sh -c "$GENESIS_SETUP"
  s=$?
  if [ "$s" -ne 0 ]; then echo "genesis: setup command failed with exit status $s" >&2; exit "$s"; fi
fi
exec sh -c "$GENESIS_TEST""#;

/// The container's own process: sleeps until the container is killed.
const IDLE: &str = "exec sleep 2147483647";

/// The exec that runs the suite, as the sandbox user; `llm_env` points
/// its SDKs at the run's LLM endpoint, when it has one.
pub fn exec_config(spec: &SandboxSpec, llm_env: &[String]) -> ExecConfig {
    ExecConfig {
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(false),
        cmd: Some(vec!["sh".into(), "-c".into(), WRAPPER.into()]),
        env: Some(
            [
                format!("GENESIS_WORKDIR=/workspace/{}", spec.repo),
                format!("GENESIS_SETUP={}", spec.setup_command),
                format!("GENESIS_TEST={}", spec.test_command),
                "HOME=/tmp".into(),
            ]
            .into_iter()
            .chain(llm_env.iter().cloned())
            .chain(spec.env.iter().cloned())
            .collect(),
        ),
        user: Some(spec.user.clone()),
        working_dir: Some("/".into()),
        privileged: Some(false),
        ..Default::default()
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
    /// After the container stopped, how long the suite's output stream may
    /// take to end before genesis closes it.
    pub stream_grace: Duration,
    /// Capabilities kept despite `CapDrop ALL`; empty for test runs. An
    /// environment's install keeps the few package managers need.
    pub cap_add: Vec<String>,
    /// Extra `KEY=VALUE` variables for the command (the install's `pass_env`).
    pub env: Vec<String>,
    /// OCI runtime (`[sandbox] runtime`): runc, or runsc for gVisor.
    pub runtime: Option<crate::config::Runtime>,
    /// The pids limit given to the engine: `limits.pids`, or more under a
    /// runtime whose own threads count too (`SandboxPolicy::host_pids_limit`).
    pub host_pids_limit: i64,
    /// The run's own file system (`[limits.*] disk_mb`), when capped.
    pub disk: Option<DiskRequest>,
    /// Run (as the sandbox user) after start and before the suite: an
    /// environment's untracked workspace files are copied into place.
    pub prepare: Option<PrepareStep>,
    /// The run's LLM endpoint (contract §2b); None for `llm_stub = false`
    /// and for installs.
    pub llm: Option<super::llm::LlmSetup>,
    /// The Docker network of a run with network on; None: the default
    /// bridge. Installs join the guarded one (`environment::guard`), and
    /// then also lose IPv6 in their namespace (see there).
    pub network: Option<String>,
}

/// A command run before the suite, with its own time limit: it copies what
/// an install left, so an install could otherwise make every run of its
/// environment hang.
#[derive(Debug, Clone)]
pub struct PrepareStep {
    pub command: String,
    pub timeout: Duration,
}

impl SandboxSpec {
    /// Whether the sandbox runs under gVisor, whose user-space kernel
    /// changes what limits and the LLM endpoint can do.
    pub fn under_gvisor(&self) -> bool {
        self.runtime
            .as_ref()
            .is_some_and(crate::config::Runtime::is_gvisor)
    }
}

/// Where and how large a run's own file system is (see `disk.rs`).
#[derive(Debug, Clone)]
pub struct DiskRequest {
    /// `GENESIS_HOME/scratch`: the disk goes in a directory named after
    /// the container.
    pub scratch: std::path::PathBuf,
    pub size_mb: u64,
    pub owner: crate::snapshot::Owner,
    /// The workspace as snapshot layers (and a delta) instead of uploads.
    pub layered: Option<super::disk::LayeredWorkspace>,
}

/// Builder in the style of rustwide's: limits and identity first, command
/// last. Every default is `[sandbox]`'s (`policies/default.toml`, then the
/// config), applied in one place, [`SandboxBuilder::from_policy`]; the
/// setters only add what differs per sandbox.
pub struct SandboxBuilder {
    spec: SandboxSpec,
}

impl SandboxBuilder {
    /// A sandbox of `policy` (`[sandbox]`): its user, `/tmp` size, engine
    /// timeout, sampling interval, stream grace and OCI runtime (with the
    /// pids limit the engine enforces under it), for `limits`.
    pub fn from_policy(
        policy: &crate::config::SandboxPolicy,
        experiment_id: &str,
        role: Role,
        image: &str,
        limits: Limits,
    ) -> Self {
        SandboxBuilder {
            spec: SandboxSpec {
                experiment_id: experiment_id.into(),
                role,
                image: image.into(),
                user: policy.user.to_string(),
                limits,
                tmp_mb: policy.tmp_mb,
                repo: String::new(),
                test_command: String::new(),
                setup_command: String::new(),
                home_label: String::new(),
                docker_timeout: policy.docker_timeout,
                // A floor, so a zero in the config cannot spin the sampler.
                stats_interval: policy.stats_interval.max(Duration::from_millis(10)),
                stream_grace: policy.stream_grace,
                cap_add: Vec::new(),
                env: Vec::new(),
                runtime: Some(policy.runtime.clone()),
                host_pids_limit: policy.host_pids_limit(limits.pids),
                disk: None,
                prepare: None,
                llm: None,
                network: None,
            },
        }
    }

    pub fn user(mut self, user: &str) -> Self {
        self.spec.user = user.into();
        self
    }

    pub fn home_label(mut self, label: &str) -> Self {
        self.spec.home_label = label.into();
        self
    }

    pub fn cap_add(mut self, caps: &[String]) -> Self {
        self.spec.cap_add = caps.to_vec();
        self
    }

    pub fn env(mut self, vars: Vec<String>) -> Self {
        self.spec.env = vars;
        self
    }

    /// Caps all the run's writes at `size_mb` (0 = no cap).
    pub fn disk(
        mut self,
        scratch: std::path::PathBuf,
        size_mb: u64,
        owner: crate::snapshot::Owner,
    ) -> Self {
        self.spec.disk = (size_mb > 0).then_some(DiskRequest {
            scratch,
            size_mb,
            owner,
            layered: None,
        });
        self
    }

    /// Mounts the workspace from snapshot layers (needs a disk: without
    /// one the layers are ignored and the caller uploads tarballs).
    pub fn layered(mut self, layered: Option<super::disk::LayeredWorkspace>) -> Self {
        if let Some(disk) = self.spec.disk.as_mut() {
            disk.layered = layered;
        }
        self
    }

    /// The prepare step, if the run has one.
    pub fn prepare(mut self, step: Option<PrepareStep>) -> Self {
        self.spec.prepare = step;
        self
    }

    /// Joins `network` instead of the default bridge (when network is on).
    pub fn network(mut self, network: Option<&str>) -> Self {
        self.spec.network = network.map(str::to_owned);
        self
    }

    /// Gives the run an LLM endpoint (None: none).
    pub fn llm(mut self, setup: Option<super::llm::LlmSetup>) -> Self {
        self.spec.llm = setup;
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

/// Under gVisor, `pids` is also the guest's `RLIMIT_NPROC`. Why: the
/// engine's pids limit counts the sandbox's host threads, and at that limit
/// the whole sandbox dies (ptrace platform: several host threads per guest
/// process); gVisor's own kernel enforces RLIMIT_NPROC per sandbox, so
/// forks fail at `pids` inside it and a fork bomb runs into its timeout as
/// under runc. Never under runc: there RLIMIT_NPROC counts every process
/// of the uid on the host, so concurrent runs would share one count.
fn guest_process_limit(spec: &SandboxSpec) -> Option<Vec<ResourcesUlimits>> {
    spec.under_gvisor().then(|| {
        vec![ResourcesUlimits {
            name: Some("nproc".into()),
            soft: Some(spec.limits.pids),
            hard: Some(spec.limits.pids),
        }]
    })
}

/// IPv6 off inside a container on a named network: the guard's rules are
/// IPv4, and a link-local IPv6 route to the host must not bypass them.
/// Not under runsc, whose own network stack takes no such sysctl.
fn no_ipv6(spec: &SandboxSpec) -> Option<HashMap<String, String>> {
    (spec.limits.network && spec.network.is_some() && !spec.under_gvisor()).then(|| {
        ["all", "default"]
            .into_iter()
            .map(|scope| {
                (
                    format!("net.ipv6.conf.{scope}.disable_ipv6"),
                    "1".to_string(),
                )
            })
            .collect()
    })
}

/// The container's create body: limits and hardening in one place. With a
/// disk the root file system is read-only and the disk's directories are
/// the only writable places; without, `/tmp` is a capped tmpfs.
pub fn container_config(spec: &SandboxSpec, disk: Option<&ScratchDisk>) -> ContainerCreateBody {
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
    let mounts = disk.map(|d| {
        d.binds()
            .into_iter()
            .map(|(source, target)| Mount {
                typ: Some(MountType::BIND),
                source: Some(source),
                target: Some(target),
                read_only: Some(false),
                ..Default::default()
            })
            .collect::<Vec<_>>()
    });
    let host = HostConfig {
        nano_cpus: Some((spec.limits.cpus * 1e9) as i64),
        memory: Some(mb(spec.limits.memory_mb)),
        // Equal to memory: no swap, so the memory limit is real.
        memory_swap: Some(mb(spec.limits.memory_mb)),
        pids_limit: Some(spec.host_pids_limit),
        network_mode: Some(match (&spec.network, spec.limits.network) {
            (_, false) => "none".into(),
            (Some(network), true) => network.clone(),
            (None, true) => "bridge".into(),
        }),
        sysctls: no_ipv6(spec),
        cap_drop: Some(vec!["ALL".into()]),
        cap_add: (!spec.cap_add.is_empty()).then(|| spec.cap_add.clone()),
        security_opt: Some(vec!["no-new-privileges".into()]),
        tmpfs: disk.is_none().then_some(tmpfs),
        mounts,
        readonly_rootfs: Some(disk.is_some()),
        runtime: spec.runtime.as_ref().map(|r| r.name().to_owned()),
        ulimits: guest_process_limit(spec),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Env};
    use crate::contract::RiskLevel;

    fn spec_under(runtime: &str) -> SandboxSpec {
        let config = Config::from_layers("/nonexistent".into(), None, &Env::default()).unwrap();
        let mut policy = config.sandbox.clone();
        policy.runtime = crate::config::Runtime::from(runtime);
        let limits = config.limits_for(RiskLevel::High);
        SandboxBuilder::from_policy(&policy, "e", Role::Candidate, "img", limits).spec()
    }

    #[test]
    fn an_install_on_a_named_network_joins_it_without_ipv6() {
        let mut spec = spec_under("runc");
        spec.limits.network = true;
        spec.network = Some("genesis-install".into());
        let host = container_config(&spec, None).host_config.unwrap();
        assert_eq!(host.network_mode.as_deref(), Some("genesis-install"));
        let sysctls = host.sysctls.unwrap();
        assert_eq!(sysctls["net.ipv6.conf.all.disable_ipv6"], "1");
        assert_eq!(sysctls["net.ipv6.conf.default.disable_ipv6"], "1");
        // Network off wins over a named network.
        spec.limits.network = false;
        let host = container_config(&spec, None).host_config.unwrap();
        assert_eq!(host.network_mode.as_deref(), Some("none"));
        assert_eq!(host.sysctls, None);
    }

    #[test]
    fn only_gvisor_gets_the_guest_process_limit() {
        let runsc = spec_under("runsc");
        let host = container_config(&runsc, None).host_config.unwrap();
        let nproc = host.ulimits.unwrap();
        assert_eq!(nproc.len(), 1);
        assert_eq!(nproc[0].name.as_deref(), Some("nproc"));
        assert_eq!(nproc[0].soft, Some(runsc.limits.pids));
        assert_eq!(nproc[0].hard, Some(runsc.limits.pids));
        // The engine's limit counts gVisor's host threads too.
        assert!(host.pids_limit.unwrap() > runsc.limits.pids);

        let runc = spec_under("runc");
        let host = container_config(&runc, None).host_config.unwrap();
        assert_eq!(host.ulimits, None);
        assert_eq!(host.pids_limit, Some(runc.limits.pids));
    }
}
