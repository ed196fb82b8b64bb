//! The records the store keeps, one type per table row. Encoded with
//! bincode behind [`SCHEMA_VERSION`](super::SCHEMA_VERSION): bincode is not
//! self-describing, so changing a type's shape needs a version bump, and the
//! older shape stays here (module [`v1`]) so old stores remain readable.
//!
//! Every row names the host that wrote it (`[host] name`): the store stamps
//! its own host on rows that name none, both when writing them and when
//! reading rows written before hosts were recorded (schema version 1).

use crate::contract::{
    by_name, BaselineSummary, ErrorKind, ExperimentResult, LlmSummary, Metrics, Named,
    Recommendation, Request, RiskLevel,
};
use crate::errors::{GenesisError, Result};
use crate::results::Outcome;
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
    #[serde(with = "by_name")]
    pub risk_level: RiskLevel,
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
    #[serde(with = "by_name::option")]
    pub recommendation: Option<Recommendation>,
    pub error: Option<String>,
    #[serde(with = "by_name::option")]
    pub error_kind: Option<ErrorKind>,
    /// The published result document, exactly as sent.
    pub result_json: Option<String>,
    /// Which process runs it (`host:pid`); recovery uses it.
    pub owner: String,
    /// `[host] name` of the genesis that accepted it (contract §7: a column
    /// of every export table). Set by the store on write when empty.
    pub host: String,
    /// When the result was confirmed published (unix ms); a JetStream
    /// redelivery of a published experiment is acknowledged, not answered again.
    pub published_at: Option<i64>,
    /// Stream sequence of the JetStream message whose answer was published
    /// first: any later delivery of that message (a redelivery, or a replay
    /// to a consumer created again) is acknowledged, not answered again.
    pub request_seq: Option<u64>,
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
            risk_level: request.risk_level,
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
            host: String::new(),
            published_at: None,
            request_seq: None,
            inserted_at: now_ms,
            updated_at: now_ms,
        }
    }

    /// The final document; one stored before results carried a host names
    /// this record's.
    pub fn result(&self) -> Option<ExperimentResult> {
        self.result_json
            .as_deref()
            .and_then(|json| serde_json::from_str::<ExperimentResult>(json).ok())
            .map(|result| result.or_host(&self.host))
    }

    /// The result's `llm`, reading only that field of the stored document
    /// (the aggregates and the export read it for every record). None for
    /// a failed result, one stored before the endpoint, or no result yet.
    pub fn llm(&self) -> Option<LlmSummary> {
        /// The one field wanted; serde skips the rest without building it.
        #[derive(Deserialize)]
        struct LlmOnly {
            #[serde(default)]
            llm: Option<LlmSummary>,
        }
        let json = self.result_json.as_deref()?;
        serde_json::from_str::<LlmOnly>(json).ok()?.llm
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
    /// The host that ran the experiment; set by the store on write when empty.
    pub host: String,
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
    #[serde(with = "by_name::pairs")]
    pub baseline: Vec<(String, Outcome)>,
    /// (test id, outcome) of the candidate run.
    #[serde(with = "by_name::pairs")]
    pub candidate: Vec<(String, Outcome)>,
}

/// What happened to a sandbox (the `operation` of [`SandboxEvent`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SandboxOperation {
    /// A run's container was created.
    Create,
    /// A container was removed (after its run, or reaped).
    Cleanup,
    /// The sandbox was packed into an archive.
    Archive,
    /// The sandbox was exported (`genesis sandbox export`).
    Export,
    /// An archive or export was checked against its MANIFEST.
    Verify,
    /// A sandbox directory or an archive was removed.
    Delete,
}

impl Named for SandboxOperation {
    const ALL: &'static [Self] = &[
        SandboxOperation::Create,
        SandboxOperation::Cleanup,
        SandboxOperation::Archive,
        SandboxOperation::Export,
        SandboxOperation::Verify,
        SandboxOperation::Delete,
    ];
    fn as_str(self) -> &'static str {
        SandboxOperation::as_str(self)
    }
}

impl SandboxOperation {
    pub fn as_str(self) -> &'static str {
        match self {
            SandboxOperation::Create => "create",
            SandboxOperation::Cleanup => "cleanup",
            SandboxOperation::Archive => "archive",
            SandboxOperation::Export => "export",
            SandboxOperation::Verify => "verify",
            SandboxOperation::Delete => "delete",
        }
    }
}

impl std::fmt::Display for SandboxOperation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for SandboxOperation {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        by_name::serialize(self, s)
    }
}

impl<'de> Deserialize<'de> for SandboxOperation {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        by_name::deserialize(d)
    }
}

/// What happened to a sandbox on disk or in Docker (export table `sandbox_history`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SandboxEvent {
    /// Counted per store, so unique only together with `host`.
    pub id: u64,
    /// The host whose sandbox it was: the store's own.
    pub host: String,
    pub experiment_id: String,
    pub operation: SandboxOperation,
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

/// A row type whose shape changed at schema version 2 (it gained `host`):
/// how the store reads it whatever version wrote it, and where its host is.
pub trait Row: serde::de::DeserializeOwned + Serialize {
    /// The shape schema version 1 wrote.
    type V1: serde::de::DeserializeOwned + Into<Self>;
    /// The host the row names; empty when written before hosts were recorded.
    fn host_mut(&mut self) -> &mut String;
}

impl Row for ExperimentRecord {
    type V1 = v1::ExperimentRecord;
    fn host_mut(&mut self) -> &mut String {
        &mut self.host
    }
}

impl Row for MetricsRow {
    type V1 = v1::MetricsRow;
    fn host_mut(&mut self) -> &mut String {
        &mut self.host
    }
}

impl Row for SandboxEvent {
    type V1 = v1::SandboxEvent;
    fn host_mut(&mut self) -> &mut String {
        &mut self.host
    }
}

/// The rows as schema version 1 stored them: field for field the current
/// types without `host`. Never change these; they describe bytes on disk.
/// Their names were written from the enums, so each parses; a row that
/// somehow holds another is read with the most cautious value (risk
/// `high`, no recommendation or error kind, operation `cleanup`).
pub mod v1 {
    use serde::{Deserialize, Serialize};

    use super::{
        BaselineFigures, ErrorKind, Named, Recommendation, RiskLevel, SandboxOperation, Status,
    };
    use crate::contract::Metrics;

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct ExperimentRecord {
        pub experiment_id: String,
        pub instance_id: String,
        pub experiment_type: String,
        pub description: String,
        pub risk_level: String,
        pub estimated_impact: f64,
        pub changes_json: String,
        pub rollback_plan: String,
        pub timeout_ms: Option<u64>,
        pub request_json: String,
        pub fingerprint: String,
        pub status: Status,
        pub recommendation: Option<String>,
        pub error: Option<String>,
        pub error_kind: Option<String>,
        pub result_json: Option<String>,
        pub owner: String,
        pub published_at: Option<i64>,
        pub inserted_at: i64,
        pub updated_at: i64,
    }

    impl From<ExperimentRecord> for super::ExperimentRecord {
        fn from(r: ExperimentRecord) -> Self {
            super::ExperimentRecord {
                experiment_id: r.experiment_id,
                instance_id: r.instance_id,
                experiment_type: r.experiment_type,
                description: r.description,
                risk_level: RiskLevel::from_name(&r.risk_level).unwrap_or(RiskLevel::High),
                estimated_impact: r.estimated_impact,
                changes_json: r.changes_json,
                rollback_plan: r.rollback_plan,
                timeout_ms: r.timeout_ms,
                request_json: r.request_json,
                fingerprint: r.fingerprint,
                status: r.status,
                recommendation: r
                    .recommendation
                    .as_deref()
                    .and_then(Recommendation::from_name),
                error: r.error,
                error_kind: r.error_kind.as_deref().and_then(ErrorKind::from_name),
                result_json: r.result_json,
                owner: r.owner,
                host: String::new(),
                published_at: r.published_at,
                request_seq: None,
                inserted_at: r.inserted_at,
                updated_at: r.updated_at,
            }
        }
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct MetricsRow {
        pub experiment_id: String,
        pub metrics: Metrics,
        pub baseline: BaselineFigures,
        pub regressions: Vec<String>,
        pub flaky: Vec<String>,
        pub inserted_at: i64,
    }

    impl From<MetricsRow> for super::MetricsRow {
        fn from(m: MetricsRow) -> Self {
            super::MetricsRow {
                experiment_id: m.experiment_id,
                host: String::new(),
                metrics: m.metrics,
                baseline: m.baseline,
                regressions: m.regressions,
                flaky: m.flaky,
                inserted_at: m.inserted_at,
            }
        }
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    pub struct SandboxEvent {
        pub id: u64,
        pub experiment_id: String,
        pub operation: String,
        pub path: String,
        pub size_bytes: u64,
        pub detail: String,
        pub inserted_at: i64,
    }

    impl From<SandboxEvent> for super::SandboxEvent {
        fn from(e: SandboxEvent) -> Self {
            super::SandboxEvent {
                id: e.id,
                host: String::new(),
                experiment_id: e.experiment_id,
                operation: SandboxOperation::from_name(&e.operation)
                    .unwrap_or(SandboxOperation::Cleanup),
                path: e.path,
                size_bytes: e.size_bytes,
                detail: e.detail,
                inserted_at: e.inserted_at,
            }
        }
    }
}
