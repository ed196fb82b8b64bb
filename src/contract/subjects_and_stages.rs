//! Names of the contract (§3): the NATS subjects and headers, and the
//! progress stages reported on `progress.{id}`.

/// Stages reported on `progress.{id}` and in logs, named as the seed's events.
pub mod stage {
    pub const START: &str = "experiment_start";
    pub const SNAPSHOT: &str = "snapshot_ready";
    pub const CHANGES: &str = "changes_applied";
    pub const ENVIRONMENT_BUILDING: &str = "environment_building";
    pub const ENVIRONMENT_READY: &str = "environment_ready";
    pub const SANDBOX: &str = "sandbox_created";
    pub const BASELINE: &str = "baseline_completed";
    pub const TESTS: &str = "tests_completed";
    pub const METRICS: &str = "metrics_measured";
    pub const COMPLETE: &str = "experiment_complete";
    pub const FAILED: &str = "experiment_failed";
    pub const TIMEOUT: &str = "experiment_timeout";
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
