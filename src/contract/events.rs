//! The service's own documents on NATS (contract §3): progress, refusals,
//! rollback events, health and the daily metrics report.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{timestamp, ErrorKind, Metrics, Reason, Stage};

/// `agent.events.experiment.progress.{id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    pub experiment_id: String,
    pub stage: Stage,
    #[serde(with = "timestamp")]
    pub timestamp: DateTime<Utc>,
}

/// `agent.events.experiment.rejected.{instance_id}` (§3): a request refused
/// before it ran because its id is already known with other content. It
/// goes to the sender's subject, never to the experiment's own, so nobody
/// can publish a failure or a rollback under another's experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejected {
    pub experiment_id: String,
    pub instance_id: String,
    pub error_kind: ErrorKind,
    pub error: String,
    #[serde(with = "timestamp")]
    pub timestamp: DateTime<Utc>,
}

/// `genesis.rollback.event`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollbackEvent {
    pub experiment_id: String,
    pub reasons: Vec<Reason>,
    pub metrics: Option<Metrics>,
}

/// `system.health.genesis`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Health {
    pub active_experiments: u64,
    pub queued: u64,
    pub success_rate_30d: f64,
    pub disk_used_mb: f64,
    /// Archives whose MANIFEST no longer matches; kept for inspection.
    #[serde(default)]
    pub corrupt_archives: Vec<String>,
    #[serde(with = "timestamp")]
    pub timestamp: DateTime<Utc>,
}

/// Aggregates over a group of experiments (one type, one risk level, or all).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct GroupStats {
    pub count: u64,
    pub completed: u64,
    pub failed: u64,
    pub success_rate: f64,
    pub avg_regression: f64,
    /// Over every completed experiment, whatever its `llm.source`.
    pub avg_llm_reduction: f64,
    /// Average `llm_reduction` of the completed experiments whose calls
    /// were observed (`llm.source` is `observed`): the measured share,
    /// apart from the static counts of call sites. 0 when there were none.
    #[serde(default)]
    pub avg_observed_llm_reduction: f64,
    /// How many completed experiments had observed calls.
    #[serde(default)]
    pub observed_llm_experiments: u64,
}

/// Counts by outcome over the report's period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Totals {
    pub experiments: u64,
    pub completed: u64,
    pub failed: u64,
    pub merge: u64,
    pub merge_with_adaptations: u64,
    pub rollback: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Period {
    #[serde(with = "timestamp")]
    pub from: DateTime<Utc>,
    #[serde(with = "timestamp")]
    pub to: DateTime<Utc>,
}

/// `system.metrics.genesis` (daily report).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsReport {
    pub totals: Totals,
    /// Share of completed experiments among all finished ones.
    pub success_rate: f64,
    pub avg_regression: f64,
    pub avg_llm_reduction: f64,
    /// As [`GroupStats::avg_observed_llm_reduction`], over all experiments.
    #[serde(default)]
    pub avg_observed_llm_reduction: f64,
    /// As [`GroupStats::observed_llm_experiments`], over all experiments.
    #[serde(default)]
    pub observed_llm_experiments: u64,
    pub by_type: BTreeMap<String, GroupStats>,
    pub by_risk_level: BTreeMap<String, GroupStats>,
    pub period: Period,
}
