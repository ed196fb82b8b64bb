//! Names of the contract (§3): the NATS subjects and headers, and the
//! progress stages reported on `progress.{id}`.

/// A stage reported on `progress.{id}` and in logs, named as the seed's
/// events (`snapshot_ready`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stage {
    Start,
    Snapshot,
    Changes,
    EnvironmentBuilding,
    EnvironmentReady,
    Sandbox,
    Baseline,
    Tests,
    Metrics,
    Complete,
    Failed,
    Timeout,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Start => "experiment_start",
            Stage::Snapshot => "snapshot_ready",
            Stage::Changes => "changes_applied",
            Stage::EnvironmentBuilding => "environment_building",
            Stage::EnvironmentReady => "environment_ready",
            Stage::Sandbox => "sandbox_created",
            Stage::Baseline => "baseline_completed",
            Stage::Tests => "tests_completed",
            Stage::Metrics => "metrics_measured",
            Stage::Complete => "experiment_complete",
            Stage::Failed => "experiment_failed",
            Stage::Timeout => "experiment_timeout",
        }
    }
}

impl super::Named for Stage {
    const ALL: &'static [Self] = &[
        Stage::Start,
        Stage::Snapshot,
        Stage::Changes,
        Stage::EnvironmentBuilding,
        Stage::EnvironmentReady,
        Stage::Sandbox,
        Stage::Baseline,
        Stage::Tests,
        Stage::Metrics,
        Stage::Complete,
        Stage::Failed,
        Stage::Timeout,
    ];
    fn as_str(self) -> &'static str {
        Stage::as_str(self)
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Stage {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        super::by_name::serialize(self, s)
    }
}

impl<'de> serde::Deserialize<'de> for Stage {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        super::by_name::deserialize(d)
    }
}

/// The stages by their short names, as the runner reports them.
pub mod stage {
    use super::Stage;

    pub const START: Stage = Stage::Start;
    pub const SNAPSHOT: Stage = Stage::Snapshot;
    pub const CHANGES: Stage = Stage::Changes;
    pub const ENVIRONMENT_BUILDING: Stage = Stage::EnvironmentBuilding;
    pub const ENVIRONMENT_READY: Stage = Stage::EnvironmentReady;
    pub const SANDBOX: Stage = Stage::Sandbox;
    pub const BASELINE: Stage = Stage::Baseline;
    pub const TESTS: Stage = Stage::Tests;
    pub const METRICS: Stage = Stage::Metrics;
    pub const COMPLETE: Stage = Stage::Complete;
    pub const FAILED: Stage = Stage::Failed;
    pub const TIMEOUT: Stage = Stage::Timeout;
}

/// Subjects of contract §3.
pub mod subjects {
    pub const REQUESTS: &str = "agent.events.experiment.request.*";
    pub const QUEUE_GROUP: &str = "genesis";
    pub const ROLLBACK: &str = "genesis.rollback.event";
    pub const HEALTH: &str = "system.health.genesis";
    pub const METRICS: &str = "system.metrics.genesis";

    pub fn completed(id: &str) -> String {
        format!("agent.events.experiment.completed.{id}")
    }
    pub fn failed(id: &str) -> String {
        format!("agent.events.experiment.failed.{id}")
    }
    pub fn progress(id: &str) -> String {
        format!("agent.events.experiment.progress.{id}")
    }
    /// Where a refused request is answered: the sender's instance. An
    /// instance id that is not one subject token (empty, dots, wildcards,
    /// spaces) is answered on `…rejected._`, never on a wildcard.
    pub fn rejected(instance_id: &str) -> String {
        let token_ok = !instance_id.is_empty()
            && instance_id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        let token = if token_ok { instance_id } else { "_" };
        format!("agent.events.experiment.rejected.{token}")
    }

    /// Header carrying W3C trace context, copied onto every message about an experiment.
    pub const TRACEPARENT: &str = "traceparent";
    /// In JetStream mode the NATS reply subject is the ack subject, so a
    /// requester that wants a direct answer names its inbox in this header.
    pub const REPLY_HEADER: &str = "Genesis-Reply-To";
}
