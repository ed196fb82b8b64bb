//! The documents of the integrations that run beside an experiment: the
//! `metrics.record` message genesis publishes after each stored result (the
//! shared metrics store), and the framework advice it asks a peer for
//! before it detects a repo's suite itself (`[framework] nats_subject`).

use std::collections::BTreeMap;

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

/// What genesis asks the framework peer about a repo at the base commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameworkQuery {
    /// The repo's name in genesis's config.
    pub repo: String,
    /// Names at the top level of the tree, sorted (directories too).
    pub files: Vec<String>,
    /// Text of the top-level manifests the tree has (`Cargo.toml`,
    /// `package.json`, `pyproject.toml`, …) up to `[framework]
    /// max_manifest_bytes` each.
    pub manifests: BTreeMap<String, String>,
}

/// The peer's answer: the suite to run, and optionally the image to run it in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameworkAdvice {
    pub test_command: String,
    /// A report spec, as `[repos.NAME] report` takes it (`tap`, `junit:PATH`, …).
    pub report: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}
