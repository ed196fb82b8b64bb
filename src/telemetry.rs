//! The service's own metrics, in one registry: what Prometheus scrapes on
//! `GET /metrics` (`[http] listen`, served by the service).
//!
//! Design:
//! - Every series is fed where the thing it counts happens, never by
//!   reading logs: the runner when a result is stored, a suite ends, an
//!   environment is ready, or a sandbox is created and removed; the service
//!   when a request waited for a run slot, JetStream redelivered, or the
//!   NATS connection went up or down. A state rather than an event (the
//!   disk use of the home) is measured by the HTTP server on its interval.
//! - One [`Telemetry`] per runner, no global registry: the CLI's runs and
//!   each test get their own, and nothing is shared by accident.
//! - Labels are closed sets (status, recommendation, risk level, error
//!   kind, run role, LLM API), so the number of series stays bounded
//!   however many experiments run; experiment ids never become labels.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use crate::config::HttpPolicy;
use crate::contract::{EnvironmentRef, ExperimentResult, RiskLevel};

/// The content type of [`Telemetry::encode`]'s text (OpenMetrics, which
/// Prometheus negotiates and parses).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExperimentLabels {
    status: String,
    recommendation: String,
    risk_level: String,
    /// `none` for a completed experiment.
    error_kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabel {
    /// `baseline`, `candidate` or `rerun`.
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EnvironmentLabel {
    /// `built` or `reused`.
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LlmLabels {
    /// `baseline` (the result's `before`) or `candidate` (`after`).
    run: String,
    /// `openai.chat`, `anthropic.messages`, … (contract §2b).
    api: String,
}

/// Makes each labelled histogram with the configured bucket bounds.
#[derive(Clone)]
struct Buckets(Arc<[f64]>);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

type Histograms<L> = Family<L, Histogram, Buckets>;

/// A labelled histogram family with these bucket bounds.
fn histograms<L: Clone + std::hash::Hash + Eq>(bounds: &[f64]) -> Histograms<L> {
    Family::new_with_constructor(Buckets(Arc::from(bounds)))
}

/// Every series genesis exports; cheap to update from any task.
pub struct Telemetry {
    registry: Registry,
    experiments: Family<ExperimentLabels, Counter>,
    run_seconds: Histograms<StatusLabel>,
    queue_seconds: Histogram,
    suite_seconds: Histograms<RoleLabel>,
    environments: Family<EnvironmentLabel, Counter>,
    llm_calls: Family<LlmLabels, Counter>,
    sandboxes_alive: Family<RoleLabel, Gauge>,
    home_disk_bytes: Gauge,
    redeliveries: Counter,
    nats_connected: Gauge,
}

impl Telemetry {
    /// A registry with every series, histograms bucketed as `[http]` says.
    pub fn new(http: &HttpPolicy) -> Telemetry {
        let telemetry = Telemetry {
            registry: Registry::default(),
            experiments: Family::default(),
            run_seconds: histograms(&http.run_seconds_buckets),
            queue_seconds: Histogram::new(http.queue_seconds_buckets.iter().copied()),
            suite_seconds: histograms(&http.suite_seconds_buckets),
            environments: Family::default(),
            llm_calls: Family::default(),
            sandboxes_alive: Family::default(),
            home_disk_bytes: Gauge::default(),
            redeliveries: Counter::default(),
            nats_connected: Gauge::default(),
        };
        telemetry.registered()
    }

    fn registered(mut self) -> Telemetry {
        let r = &mut self.registry;
        r.register(
            "genesis_experiments",
            "Experiments whose result was stored, by status, recommendation, risk level and error kind",
            self.experiments.clone(),
        );
        r.register(
            "genesis_experiment_run_seconds",
            "Time from the start of an experiment's run to its stored result",
            self.run_seconds.clone(),
        );
        r.register(
            "genesis_experiment_queue_seconds",
            "Time an accepted request waited for a run slot (max_concurrent)",
            self.queue_seconds.clone(),
        );
        r.register(
            "genesis_suite_seconds",
            "Wall time of one suite run in a sandbox, by role",
            self.suite_seconds.clone(),
        );
        r.register(
            "genesis_environments",
            "Environments an experiment ran from, built for it or reused",
            self.environments.clone(),
        );
        r.register(
            "genesis_llm_calls",
            "LLM calls observed at the runs' endpoints: the baseline's (before) and the candidate's (after), per API",
            self.llm_calls.clone(),
        );
        r.register(
            "genesis_sandboxes_alive",
            "Suite containers that exist now, by role",
            self.sandboxes_alive.clone(),
        );
        r.register(
            "genesis_home_disk_bytes",
            "Bytes of the files under GENESIS_HOME, measured every [http] disk_interval_ms",
            self.home_disk_bytes.clone(),
        );
        r.register(
            "genesis_jetstream_redeliveries",
            "Request messages JetStream delivered more than once",
            self.redeliveries.clone(),
        );
        r.register(
            "genesis_nats_connected",
            "1 while the NATS connection is up, 0 while it is down",
            self.nats_connected.clone(),
        );
        self
    }

    /// A result was stored: count it, and the LLM calls its runs made.
    pub fn experiment_stored(&self, risk: RiskLevel, result: &ExperimentResult) {
        let (status, error_kind) = match result {
            ExperimentResult::Success(_) => ("success", "none"),
            ExperimentResult::Failed(f) => ("failed", f.error_kind.as_str()),
        };
        self.experiments
            .get_or_create(&ExperimentLabels {
                status: status.into(),
                recommendation: result.recommendation().as_str().into(),
                risk_level: risk.to_string(),
                error_kind: error_kind.into(),
            })
            .inc();
        if let ExperimentResult::Success(done) = result {
            for (api, calls) in done.llm.iter().flat_map(|llm| &llm.by_api) {
                self.llm_called("baseline", api.as_str(), calls.before);
                self.llm_called("candidate", api.as_str(), calls.after);
            }
        }
    }

    fn llm_called(&self, run: &str, api: &str, calls: u64) {
        self.llm_calls
            .get_or_create(&LlmLabels {
                run: run.into(),
                api: api.into(),
            })
            .inc_by(calls);
    }

    /// An experiment's run ended (`status` of its result) after `elapsed`.
    pub fn run_finished(&self, status: &str, elapsed: Duration) {
        self.run_seconds
            .get_or_create(&StatusLabel {
                status: status.into(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// A request got its run slot after waiting `elapsed`.
    pub fn waited_for_slot(&self, elapsed: Duration) {
        self.queue_seconds.observe(elapsed.as_secs_f64());
    }

    /// A suite ran for `runtime_ms` (as measured for the result).
    pub fn suite_ran(&self, role: &str, runtime_ms: u64) {
        self.suite_seconds
            .get_or_create(&RoleLabel { role: role.into() })
            .observe(runtime_ms as f64 / 1000.0);
    }

    /// An experiment's run starts from this environment.
    pub fn environment_ready(&self, environment: &EnvironmentRef) {
        let outcome = if environment.reused {
            "reused"
        } else {
            "built"
        };
        self.environments
            .get_or_create(&EnvironmentLabel {
                outcome: outcome.into(),
            })
            .inc();
    }

    /// A suite container now exists; it counts as alive until the guard drops.
    pub fn sandbox_alive(&self, role: &str) -> SandboxAlive {
        let gauge = self
            .sandboxes_alive
            .get_or_create_owned(&RoleLabel { role: role.into() });
        gauge.inc();
        SandboxAlive(gauge)
    }

    pub fn home_disk_bytes(&self, bytes: u64) {
        self.home_disk_bytes
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    pub fn redelivered(&self) {
        self.redeliveries.inc();
    }

    pub fn nats_connected(&self, up: bool) {
        self.nats_connected.set(i64::from(up));
    }

    /// Every series in the text format (see [`CONTENT_TYPE`]).
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// Keeps one sandbox counted in `genesis_sandboxes_alive` while it lives.
pub struct SandboxAlive(Gauge);

impl Drop for SandboxAlive {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Env};
    use crate::contract::ErrorKind;

    fn telemetry() -> Telemetry {
        let config = Config::from_layers("/nonexistent".into(), None, &Env::default()).unwrap();
        Telemetry::new(&config.http)
    }

    #[test]
    fn a_stored_failure_is_counted_with_its_labels() {
        let t = telemetry();
        let failed = ExperimentResult::failed("h", "e1", "i", ErrorKind::Timeout, "too slow");
        t.experiment_stored(RiskLevel::High, &failed);
        t.run_finished("failed", Duration::from_millis(2500));
        let text = t.encode();
        assert!(
            text.contains(
                "genesis_experiments_total{status=\"failed\",recommendation=\"rollback\",risk_level=\"high\",error_kind=\"timeout\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("genesis_experiment_run_seconds_bucket{le=\"5.0\",status=\"failed\"} 1")
                || text.contains(
                    "genesis_experiment_run_seconds_bucket{status=\"failed\",le=\"5.0\"} 1"
                ),
            "{text}"
        );
    }

    #[test]
    fn a_sandbox_is_alive_until_its_guard_drops() {
        let t = telemetry();
        let alive = t.sandbox_alive("candidate");
        assert!(t
            .encode()
            .contains("genesis_sandboxes_alive{role=\"candidate\"} 1"));
        drop(alive);
        assert!(t
            .encode()
            .contains("genesis_sandboxes_alive{role=\"candidate\"} 0"));
    }
}
