//! The policy sections of the configuration (`[analysis]`, `[framework]`,
//! `[http]`,
//! `[environments]`, `[thresholds]`, `[nats]`, `[judging]`, `[schedule]`,
//! `[jobs]`, `[sandbox]`, `[cleanup]`), as `policies/default.toml` and the
//! config file spell them. Every field's meaning is in the default policy
//! file's comments; the docs here say why a field exists.

use std::time::Duration;

use serde::Deserialize;

use super::*;

/// `[analysis]`: how the changed files are analysed (contract §3, §5).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AnalysisPolicy {
    /// Ask a peer on this NATS subject first (e.g. `code.analysis.parse`);
    /// empty: always analyse locally.
    pub nats_subject: String,
    /// How long to wait for the peer before analysing locally.
    #[serde(rename = "timeout_ms", with = "super::millis")]
    pub timeout: Duration,
    /// Touched files larger than this are not analysed.
    pub max_file_bytes: u64,
}

/// `[framework]`: which suite a repo without a configured test command
/// runs. A peer that knows the repo (the agents' pattern store) is asked
/// first; local detection from the snapshot's files is the fallback.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FrameworkPolicy {
    /// Ask a peer on this NATS subject (e.g. `genesis.framework.query`);
    /// empty: always detect locally.
    pub nats_subject: String,
    /// How long to wait for the peer before detecting locally.
    #[serde(rename = "timeout_ms", with = "super::millis")]
    pub timeout: Duration,
    /// Manifests larger than this are sent to the peer by name only.
    pub max_manifest_bytes: u64,
}

/// `[http]`: the endpoints supervisors and Prometheus use.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HttpPolicy {
    /// `HOST:PORT` of `/metrics`, `/healthz` and `/readyz`; empty: no server.
    pub listen: String,
    /// How long `/readyz` waits for the engine's ping.
    #[serde(rename = "ready_timeout_ms", with = "super::millis")]
    pub ready_timeout: Duration,
    /// A connection without a complete request head by then is closed.
    #[serde(rename = "header_timeout_ms", with = "super::millis")]
    pub header_timeout: Duration,
    /// How often the disk use of `GENESIS_HOME` is measured (a walk of it).
    #[serde(rename = "disk_interval_ms", with = "super::millis")]
    pub disk_interval: Duration,
    /// Upper bounds (seconds) of the duration histograms' buckets.
    pub run_seconds_buckets: Vec<f64>,
    pub queue_seconds_buckets: Vec<f64>,
    pub suite_seconds_buckets: Vec<f64>,
}

/// `[environments]`: how environments are built and kept (contract §2a).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentPolicy {
    /// Limits of the install container (network is always on there).
    pub cpus: f64,
    pub memory_mb: u64,
    pub pids: i64,
    /// The install command's own time limit.
    #[serde(rename = "timeout_ms", with = "super::millis")]
    pub timeout: Duration,
    /// Capabilities the install keeps (all others are dropped as in a test run).
    pub cap_add: Vec<String>,
    /// Host CA bundle copied into the install container, so a proxy that
    /// re-signs TLS is trusted. Empty: none is copied.
    pub ca_bundle: String,
    /// Host environment variables passed into the install (proxies, index
    /// URLs); only these, never the whole host environment.
    pub pass_env: Vec<String>,
    /// Environments unused this long are removed by the cleanup job.
    pub keep_days: u64,
    /// Upper bound on the images' total size; least recently used go first.
    pub disk_budget_mb: u64,
    /// Installs run on genesis's own network, whose rules let them reach
    /// public addresses only (`environment::guard`). False: Docker's
    /// default bridge, unguarded, for hosts where the rules cannot be set.
    pub network_guard: bool,
    /// Private or reserved addresses the guard lets installs reach anyway
    /// (a package mirror on the LAN): `ADDR`, `ADDR/PREFIX`, with an
    /// optional `:PORT` (see [`super::net_allow`]).
    pub network_allow: Vec<String>,
    /// What an install may write into the layer that becomes its image.
    /// No file system of the engine's caps a writable layer here, so a
    /// watchdog measures it (`environment::watch`); 0 = no cap.
    pub disk_mb: u64,
    /// How often the watchdog measures the layer: the cap can be overshot
    /// by what the install writes between two measurements.
    #[serde(rename = "disk_check_ms", with = "super::millis")]
    pub disk_check: Duration,
}

/// The recommendation rules' numbers (contract §5).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Thresholds {
    pub rollback_regression: f64,
    pub rollback_success_rate: f64,
    pub merge_llm_reduction: f64,
    pub merge_regression: f64,
    pub merge_success_rate: f64,
    pub adapt_success_rate: f64,
    pub adapt_regression: f64,
}

/// `[thresholds]`: the global numbers plus optional per-risk-level overrides.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ThresholdTable {
    pub rollback_regression: f64,
    pub rollback_success_rate: f64,
    pub merge_llm_reduction: f64,
    pub merge_regression: f64,
    pub merge_success_rate: f64,
    pub adapt_success_rate: f64,
    pub adapt_regression: f64,
    #[serde(default)]
    pub low: Option<ThresholdOverride>,
    #[serde(default)]
    pub medium: Option<ThresholdOverride>,
    #[serde(default)]
    pub high: Option<ThresholdOverride>,
}

/// Any subset of the thresholds, for one risk level.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ThresholdOverride {
    pub rollback_regression: Option<f64>,
    pub rollback_success_rate: Option<f64>,
    pub merge_llm_reduction: Option<f64>,
    pub merge_regression: Option<f64>,
    pub merge_success_rate: Option<f64>,
    pub adapt_success_rate: Option<f64>,
    pub adapt_regression: Option<f64>,
}

impl ThresholdTable {
    /// The effective thresholds for a risk level.
    pub fn for_risk(&self, risk: RiskLevel) -> Thresholds {
        let o = match risk {
            RiskLevel::Low => self.low,
            RiskLevel::Medium => self.medium,
            RiskLevel::High => self.high,
        }
        .unwrap_or_default();
        Thresholds {
            rollback_regression: o.rollback_regression.unwrap_or(self.rollback_regression),
            rollback_success_rate: o
                .rollback_success_rate
                .unwrap_or(self.rollback_success_rate),
            merge_llm_reduction: o.merge_llm_reduction.unwrap_or(self.merge_llm_reduction),
            merge_regression: o.merge_regression.unwrap_or(self.merge_regression),
            merge_success_rate: o.merge_success_rate.unwrap_or(self.merge_success_rate),
            adapt_success_rate: o.adapt_success_rate.unwrap_or(self.adapt_success_rate),
            adapt_regression: o.adapt_regression.unwrap_or(self.adapt_regression),
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct NatsConfig {
    pub url: String,
    pub jetstream: bool,
    pub stream: String,
    pub consumer: String,
    /// JetStream key-value bucket in which hosts sharing the consumer
    /// claim experiment ids, so a duplicate or a reused id is recognised
    /// whichever host it reaches (see `service/registry.rs`).
    pub registry: String,
    #[serde(rename = "ack_wait_ms", with = "super::millis")]
    pub ack_wait: Duration,
    #[serde(rename = "progress_ack_ms", with = "super::millis")]
    pub progress_ack: Duration,
    /// What must wait for NATS (publishing an answer, setting up and
    /// pulling from JetStream) is retried after this long, doubling up to
    /// `retry_max_ms`, for as long as NATS is away.
    #[serde(rename = "retry_min_ms", with = "super::millis")]
    pub retry_min: Duration,
    #[serde(rename = "retry_max_ms", with = "super::millis")]
    pub retry_max: Duration,
    /// How long one JetStream pull waits for a request before it is renewed.
    #[serde(rename = "pull_expires_ms", with = "super::millis")]
    pub pull_expires: Duration,
    /// How long a command line (`jobs run`, `doctor`) waits for NATS.
    #[serde(rename = "cli_connect_timeout_ms", with = "super::millis")]
    pub cli_connect_timeout: Duration,
    /// `metrics.record`: after each stored result, one experiment record on
    /// this subject for the shared metrics store; empty: none.
    pub metrics_subject: String,
    /// Runs of one experiment a process may die in (killed by the kernel,
    /// say) before it is answered failed/internal and never resumed again;
    /// JetStream's own delivery limit is set to the same.
    pub max_deliver: u32,
    /// Authentication: user + password, or token, or a `.creds` file, or an
    /// nkey seed file; at most one of them (checked at load, see
    /// `nats_keys`). Production servers require one, and without it anyone
    /// who reaches the server could submit experiments or forge results.
    pub user: String,
    /// Also `GENESIS_NATS_PASSWORD`, so the secret need not sit in the file.
    pub password: Secret,
    /// Also `GENESIS_NATS_TOKEN`.
    pub token: Secret,
    pub creds_file: String,
    pub nkey_seed_file: String,
    /// CA that signed the server's certificate (a `tls://` URL, or a server
    /// that requires TLS, is verified against it instead of the system's).
    pub tls_ca_file: String,
    /// Client certificate and key, for servers that verify clients.
    pub tls_cert_file: String,
    pub tls_key_file: String,
}

/// A credential from the config or the environment: compared and
/// deserialized as the string it is, but never shown by `Debug`, so a
/// config printed for debugging (or a panic message) cannot leak it.
#[derive(Clone, Default, Deserialize, PartialEq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that hands it to the client.
    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "\"<redacted>\""
        })
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Judging {
    pub reruns: u32,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Schedule {
    #[serde(with = "super::schedule")]
    pub cleanup: cron::Schedule,
    #[serde(with = "super::schedule")]
    pub analysis: cron::Schedule,
    #[serde(with = "super::schedule")]
    pub report: cron::Schedule,
    #[serde(with = "super::schedule")]
    pub health: cron::Schedule,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct JobsPolicy {
    pub max_attempts: u32,
    #[serde(rename = "backoff_ms", with = "super::millis")]
    pub backoff: Duration,
    /// After each `report` run, write `GENESIS_HOME/reports/trends.html`
    /// (the trends page of `genesis report --trends`).
    pub report_html: bool,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SandboxPolicy {
    /// `uid:gid` of the sandbox user.
    pub user: super::Owner,
    pub log_cap_bytes: u64,
    pub tmp_mb: u64,
    pub out_cap_bytes: u64,
    #[serde(rename = "docker_timeout_ms", with = "super::millis")]
    pub docker_timeout: Duration,
    #[serde(rename = "stats_interval_ms", with = "super::millis")]
    pub stats_interval: Duration,
    /// After a container stopped, how long its output stream may take to
    /// end before genesis closes it (an engine may keep it open).
    #[serde(rename = "stream_grace_ms", with = "super::millis")]
    pub stream_grace: Duration,
    /// The OCI runtime containers run under: `runc`, or `runsc` (gVisor)
    /// where the engine has it registered. Must be a runtime `docker info`
    /// lists; `doctor` checks.
    pub runtime: Runtime,
    /// How often a run that failed for the infrastructure's sake (engine
    /// unreachable, container gone, engine 5xx, archive error) is tried
    /// again before the experiment fails with `sandbox_error`.
    pub infra_retries: u32,
    /// Before each such retry: how long to wait for the engine to answer
    /// again, and the first back-off (doubled per retry).
    #[serde(rename = "engine_wait_ms", with = "super::millis")]
    pub engine_wait: Duration,
    #[serde(rename = "infra_backoff_ms", with = "super::millis")]
    pub infra_backoff: Duration,
    /// Under runsc every guest process is backed by host threads (about
    /// nine with Debian's ptrace platform) and the sandbox itself needs
    /// some (about fifty), all counted by the host's pids cgroup; the
    /// engine's pids limit is then `runsc_pids_base + pids ×
    /// runsc_pids_per_process`.
    pub runsc_pids_base: i64,
    pub runsc_pids_per_process: i64,
    /// With a disk cap, runs mount a commit's tree from a layer written once
    /// on the host (an overlay whose writes land on the run's disk) and a
    /// candidate receives only what its patch changed, instead of a
    /// tarball upload per run. `false` uploads tarballs as without a cap.
    pub layers: bool,
}

/// `[sandbox] runtime`: the OCI runtime containers run under, by the name
/// the engine registered it as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Runtime {
    /// The engine's standard runtime.
    Runc,
    /// gVisor: a user-space kernel per sandbox, with its own network stack
    /// and host threads that the pids cgroup counts.
    Runsc,
    /// Another runtime the engine has registered (`doctor` checks it is).
    Other(String),
}

impl Runtime {
    pub fn name(&self) -> &str {
        match self {
            Runtime::Runc => "runc",
            Runtime::Runsc => "runsc",
            Runtime::Other(name) => name,
        }
    }

    pub fn is_gvisor(&self) -> bool {
        matches!(self, Runtime::Runsc)
    }
}

impl From<&str> for Runtime {
    fn from(name: &str) -> Runtime {
        match name {
            "runc" => Runtime::Runc,
            "runsc" => Runtime::Runsc,
            other => Runtime::Other(other.to_owned()),
        }
    }
}

impl std::fmt::Display for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Runtime {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Runtime, D::Error> {
        let name = String::deserialize(d)?;
        if name.trim().is_empty() {
            return Err(serde::de::Error::custom(
                "expected the name of a runtime the engine has registered, e.g. \"runc\"",
            ));
        }
        Ok(Runtime::from(name.as_str()))
    }
}

impl SandboxPolicy {
    /// The pids limit the engine enforces for a profile's `pids` guest
    /// processes under the configured runtime.
    pub fn host_pids_limit(&self, pids: i64) -> i64 {
        if self.runtime.is_gvisor() {
            self.runsc_pids_base
                .saturating_add(pids.saturating_mul(self.runsc_pids_per_process))
        } else {
            pids
        }
    }
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct CleanupPolicy {
    pub delete_after_hours: u64,
    pub archive_after_hours: u64,
    pub disk_budget_mb: u64,
    pub analysis_days: u64,
    /// Snapshot layers unused this long are removed (unless mounted).
    pub layer_keep_hours: u64,
    /// Caches used this recently are never removed for the disk budget.
    pub budget_grace_minutes: u64,
    /// `doctor` fails its home check below this much free space.
    pub min_free_mb: u64,
}

/// `[llm]`: the LLM endpoint every test run gets (contract §2b). Every
/// bound here is per run, so a suite that floods its endpoint is cut off
/// at the same place whatever else runs on the host.
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LlmPolicy {
    /// Port the endpoint listens on at 127.0.0.1 inside each sandbox.
    pub port: u16,
    /// Calls recorded per run; later ones are answered 429 and counted
    /// as refused, never recorded.
    pub max_calls: u64,
    /// Largest request body one call may send.
    pub max_request_bytes: u64,
    /// Request bytes one run may send in all; past it calls are refused.
    pub max_run_bytes: u64,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// A connection that sends no complete request head for this long is closed.
    #[serde(rename = "header_timeout_ms", with = "super::millis")]
    pub header_timeout: Duration,
    /// Answer when no line of the repo's `llm_answers` matches.
    pub answer: String,
    /// Length of the deterministic embedding vectors (a request's
    /// `dimensions` wins when smaller).
    pub embedding_dimensions: usize,
    /// Largest `llm_answers` file read.
    pub max_answers_bytes: u64,
}
