//! The records the store keeps, one type per table row. Encoded with
//! bincode behind [`SCHEMA_VERSION`](super::SCHEMA_VERSION): bincode is not
//! self-describing, so changing a type's shape needs a version bump.

use crate::contract::{BaselineSummary, ExperimentResult, Metrics, Request};
use crate::errors::{GenesisError, Result};
use serde::{Deserialize, Serialize};

/// Lifecycle of an experiment in the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// Accepted, waiting for a worker.
    Queued,
    /// A worker is running it.
    Running,
    /// Judged: a result with a recommendation exists.
    Completed,
    /// Ended with nothing to judge.
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Completed => "completed",
            Status::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Status> {
        [
            Status::Queued,
            Status::Running,
            Status::Completed,
            Status::Failed,
        ]
        .into_iter()
        .find(|s| s.as_str() == text)
    }

    pub fn is_final(self) -> bool {
        matches!(self, Status::Completed | Status::Failed)
    }
}

/// One experiment: its request, where it stands, and its final document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentRecord {
    pub experiment_id: String,
    pub instance_id: String,
    pub experiment_type: String,
    pub description: String,
    pub risk_level: String,
    pub estimated_impact: f64,
    /// The request's `changes` object as JSON (exported as jsonb).
    pub changes_json: String,
    pub rollback_plan: String,
    pub timeout_ms: Option<u64>,
    /// The whole request as JSON, so a recovered experiment can run again.
    pub request_json: String,
    /// Digest of the request, to tell duplicates from conflicting reuse of an id.
    pub fingerprint: String,
    pub status: Status,
    pub recommendation: Option<String>,
    pub error: Option<String>,
    pub error_kind: Option<String>,
    /// The published result document, exactly as sent.
    pub result_json: Option<String>,
    /// Which process runs it (`host:pid`); recovery uses it.
    pub owner: String,
    /// When the result was confirmed published (unix ms); a JetStream
    /// redelivery of a published experiment is acknowledged, not answered again.
    pub published_at: Option<i64>,
    /// Unix milliseconds.
    pub inserted_at: i64,
    pub updated_at: i64,
}

impl ExperimentRecord {
    pub fn new(request: &Request, status: Status, owner: &str, now_ms: i64) -> Self {
        ExperimentRecord {
            experiment_id: request.experiment_id.clone(),
            instance_id: request.instance_id.clone(),
            experiment_type: request.experiment_type.clone(),
            description: request.description.clone(),
            risk_level: request.risk_level.as_str().into(),
            estimated_impact: request.estimated_impact,
            changes_json: serde_json::to_string(&request.changes).expect("changes serialize"),
            rollback_plan: request.rollback_plan.clone(),
            timeout_ms: request.timeout_ms,
            request_json: serde_json::to_string(request).expect("requests serialize"),
            fingerprint: request.fingerprint(),
            status,
            recommendation: None,
            error: None,
            error_kind: None,
            result_json: None,
            owner: owner.into(),
            published_at: None,
            inserted_at: now_ms,
            updated_at: now_ms,
        }
    }

    pub fn result(&self) -> Option<ExperimentResult> {
        self.result_json
            .as_deref()
            .and_then(|json| serde_json::from_str(json).ok())
    }

    pub fn request(&self) -> Result<Request> {
        Request::parse(self.request_json.as_bytes())
            .map_err(|e| GenesisError::Internal(format!("stored request unreadable: {e}")))
    }
}

/// The numbers of a completed experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricsRow {
    pub experiment_id: String,
    pub metrics: Metrics,
    pub baseline: BaselineFigures,
    pub regressions: Vec<String>,
    pub flaky: Vec<String>,
    pub inserted_at: i64,
}

/// The baseline's figures as stored (the shape of schema version 1; the
/// result document's `baseline` may carry more, e.g. its coverage).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct BaselineFigures {
    pub test_count: u64,
    pub failures: u64,
    pub runtime_ms: u64,
}

impl From<&BaselineSummary> for BaselineFigures {
    fn from(b: &BaselineSummary) -> Self {
        BaselineFigures {
            test_count: b.test_count,
            failures: b.failures,
            runtime_ms: b.runtime_ms,
        }
    }
}

/// Per-test outcomes of both runs, kept so `show` can explain a verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct TestOutcomes {
    /// (test id, outcome) of the baseline run.
    pub baseline: Vec<(String, String)>,
    /// (test id, outcome) of the candidate run.
    pub candidate: Vec<(String, String)>,
}

/// What happened to a sandbox on disk or in Docker (export table `sandbox_history`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxEvent {
    pub id: u64,
    pub experiment_id: String,
    /// create, cleanup, archive, export, verify, delete
    pub operation: String,
    pub path: String,
    pub size_bytes: u64,
    /// Free-form detail, e.g. the container id or why a verify failed.
    pub detail: String,
    pub inserted_at: i64,
}

/// What `insert_new` found.
#[derive(Debug, Clone, PartialEq)]
pub enum Inserted {
    /// The id was new; the record is stored.
    New,
    /// The id was known already; here is what the store holds.
    Existing(Box<ExperimentRecord>),
}
