//! `metrics.record`: the message genesis publishes after each stored
//! result (`[nats] metrics_subject`), for the store the agents' own
//! metrics live in.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{timestamp, ExperimentResult, Metrics, Recommendation};

/// One experiment in the shared metrics store (`[nats] metrics_subject`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsRecord {
    /// Always `experiment`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Always `genesis`.
    pub source: String,
    pub experiment_id: String,
    pub host: String,
    /// The result's metrics; null for a failed experiment (nothing measured).
    pub metrics: Option<Metrics>,
    pub recommendation: Recommendation,
    /// When the result was decided.
    #[serde(with = "timestamp")]
    pub timestamp: DateTime<Utc>,
}

impl MetricsRecord {
    pub fn of(result: &ExperimentResult) -> MetricsRecord {
        let (metrics, timestamp) = match result {
            ExperimentResult::Success(c) => (Some(c.metrics.clone()), c.timestamp),
            ExperimentResult::Failed(f) => (None, f.timestamp),
        };
        MetricsRecord {
            kind: "experiment".into(),
            source: "genesis".into(),
            experiment_id: result.experiment_id().into(),
            host: result.host().into(),
            metrics,
            recommendation: result.recommendation(),
            timestamp,
        }
    }
}
