//! The external contract: every JSON document Genesis reads or writes on NATS
//! or the command line, as typed Rust values.
//!
//! Nothing else in the crate builds or picks apart JSON by hand: a request is
//! parsed here (with the size limit, the field path of any error and the id
//! rules of the contract), and every outgoing document is one of these types.
//! `docs/contract.md` summarises it for readers.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, Serializer};
use sha2::{Digest, Sha256};

/// Requests larger than this are refused before they are parsed.
pub const MAX_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// Longest experiment id the contract allows.
pub const MAX_ID_LEN: usize = 128;

/// Risk level of a change; it selects the resource profile and thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RiskLevel {
    Low,
    Medium,
    High,
}

impl RiskLevel {
    pub const ALL: [RiskLevel; 3] = [RiskLevel::Low, RiskLevel::Medium, RiskLevel::High];

    pub fn as_str(self) -> &'static str {
        match self {
            RiskLevel::Low => "low",
            RiskLevel::Medium => "medium",
            RiskLevel::High => "high",
        }
    }
}

impl fmt::Display for RiskLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The proposed change: which files it touches and the diffs that make it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Changes {
    /// Paths the patch touches, relative to the repo root. Checked against the patch.
    #[serde(default)]
    pub files: Vec<String>,
    #[serde(default)]
    pub description: String,
    /// Unified diff (git style) against `base_ref` of the request's repo.
    #[serde(default)]
    pub patch: Option<String>,
    /// Diffs for other repositories of the same experiment, by repo name.
    #[serde(default)]
    pub patches: BTreeMap<String, String>,
}

/// An experiment request (contract §4). Unknown fields are ignored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub experiment_id: String,
    pub instance_id: String,
    pub experiment_type: String,
    #[serde(default)]
    pub description: String,
    pub risk_level: RiskLevel,
    #[serde(default)]
    pub estimated_impact: f64,
    pub changes: Changes,
    #[serde(default)]
    pub rollback_plan: String,
    /// Upper bound for the whole experiment; the policy's timeout wins when smaller.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Repository name from the config; `default_repo` when absent.
    #[serde(default)]
    pub repo: Option<String>,
    /// Git revision to snapshot; `HEAD` when absent.
    #[serde(default)]
    pub base_ref: Option<String>,
    /// Overrides the repo's configured test command.
    #[serde(default)]
    pub test_command: Option<String>,
}

/// Why a request could not be accepted. `experiment_id` is kept when it was
/// readable and valid, so the failure can still be published on `failed.{id}`.
#[derive(Debug, Clone, PartialEq)]
pub struct InvalidRequest {
    pub experiment_id: Option<String>,
    pub instance_id: Option<String>,
    pub message: String,
}

impl fmt::Display for InvalidRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for InvalidRequest {}

/// Only the identifying fields, read when the full parse fails.
#[derive(Deserialize)]
struct Identity {
    #[serde(default)]
    experiment_id: Option<serde_json::Value>,
    #[serde(default)]
    instance_id: Option<serde_json::Value>,
}

impl Request {
    /// Parses and validates a request body: size, JSON shape (errors name the
    /// field path), and the experiment id rules.
    pub fn parse(body: &[u8]) -> Result<Request, InvalidRequest> {
        if body.len() > MAX_REQUEST_BYTES {
            return Err(InvalidRequest {
                experiment_id: None,
                instance_id: None,
                message: format!(
                    "request is {} bytes, over the {} byte limit",
                    body.len(),
                    MAX_REQUEST_BYTES
                ),
            });
        }
        let mut de = serde_json::Deserializer::from_slice(body);
        let parsed: Result<Request, _> = serde_path_to_error::deserialize(&mut de);
        let request = parsed.map_err(|err| {
            let (experiment_id, instance_id) = identity_of(body);
            let path = err.path().to_string();
            let inner = err.into_inner();
            // Broken JSON has no field to name (serde_path_to_error says
            // `?`): say it is not JSON, with serde's line and column.
            let message = if inner.is_syntax() || inner.is_eof() {
                format!("the request is not JSON: {inner}")
            } else if path.is_empty() || path == "." || path == "?" {
                format!("request is not valid: {inner}")
            } else {
                format!("request field `{path}` is not valid: {inner}")
            };
            InvalidRequest {
                experiment_id,
                instance_id,
                message,
            }
        })?;
        validate_experiment_id(&request.experiment_id).map_err(|message| InvalidRequest {
            experiment_id: None,
            instance_id: Some(request.instance_id.clone()),
            message,
        })?;
        Ok(request)
    }

    /// A digest of the request's meaning (after defaults), used to tell a
    /// harmless duplicate from a conflicting reuse of the same id.
    pub fn fingerprint(&self) -> String {
        let canonical = serde_json::to_vec(self).expect("a Request always serializes");
        hex_digest(&Sha256::digest(&canonical))
    }
}

/// Lowercase hex of a digest (sha2 0.11 digests do not implement `LowerHex`).
pub fn hex_digest(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Best-effort read of the id fields of a body that failed to parse.
fn identity_of(body: &[u8]) -> (Option<String>, Option<String>) {
    let Ok(identity) = serde_json::from_slice::<Identity>(body) else {
        return (None, None);
    };
    let id = identity
        .experiment_id
        .and_then(|v| v.as_str().map(str::to_owned))
        .filter(|id| validate_experiment_id(id).is_ok());
    let instance = identity
        .instance_id
        .and_then(|v| v.as_str().map(str::to_owned));
    (id, instance)
}

/// Contract §4: 1–128 characters of `[A-Za-z0-9_-]`. The id becomes a NATS
/// subject token and a directory name, so nothing else may pass.
pub fn validate_experiment_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(format!(
            "experiment_id must be 1 to {MAX_ID_LEN} characters, got {}",
            id.len()
        ));
    }
    if let Some(bad) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '_' || *c == '-'))
    {
        return Err(format!(
            "experiment_id may only contain A-Z a-z 0-9 _ -, found {bad:?}"
        ));
    }
    Ok(())
}

/// The verdict on an experiment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Recommendation {
    Merge,
    MergeWithAdaptations,
    Rollback,
}

impl Recommendation {
    pub fn as_str(self) -> &'static str {
        match self {
            Recommendation::Merge => "merge",
            Recommendation::MergeWithAdaptations => "merge_with_adaptations",
            Recommendation::Rollback => "rollback",
        }
    }
}

impl fmt::Display for Recommendation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why an experiment produced nothing to judge (contract §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    InvalidRequest,
    PatchFailed,
    Timeout,
    Oom,
    /// The run filled its `[limits.*] disk_mb` file system.
    DiskLimit,
    SandboxError,
    NoTests,
    /// The suite's report claims more tests, or longer ids, than genesis
    /// holds (`[limits] max_tests`, 4 KiB per id).
    BadReport,
    /// The install command of the repo's environment failed or timed out.
    EnvironmentFailed,
    /// The patch changes an `install_inputs` file and the risk level's
    /// `install_changes` is false.
    EnvironmentChanged,
    Internal,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::PatchFailed => "patch_failed",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Oom => "oom",
            ErrorKind::DiskLimit => "disk_limit",
            ErrorKind::SandboxError => "sandbox_error",
            ErrorKind::NoTests => "no_tests",
            ErrorKind::BadReport => "bad_report",
            ErrorKind::EnvironmentFailed => "environment_failed",
            ErrorKind::EnvironmentChanged => "environment_changed",
            ErrorKind::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The numbers behind a verdict (contract §5 defines each).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Metrics {
    pub success_rate: f64,
    pub llm_reduction: f64,
    pub regression: f64,
    pub runtime_ms: u64,
    pub test_count: u64,
    pub failures: u64,
    pub memory_peak_mb: f64,
    pub cpu_usage_percent: f64,
    pub io_operations: u64,
    pub performance_delta: f64,
    pub code_coverage_percent: Option<f64>,
    pub complexity_change: Option<f64>,
}

/// The unchanged snapshot's run, for comparison.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct BaselineSummary {
    pub test_count: u64,
    pub failures: u64,
    pub runtime_ms: u64,
    /// Line coverage of the baseline run, when a coverage report is configured.
    #[serde(default)]
    pub code_coverage_percent: Option<f64>,
}

/// Where a reviewer finds the tested change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateRef {
    pub repo: String,
    pub base_commit: String,
    pub commit: String,
}

/// The environment the candidate ran in (contract §2a).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvironmentRef {
    /// `genesis-env/NAME:KEY`.
    pub image: String,
    pub key: String,
    /// Whether it existed before this experiment (no install ran for it).
    pub reused: bool,
    /// How long its install took, when it was built (0 when reused).
    pub build_ms: u64,
}

/// A count before and after the change.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BeforeAfter {
    pub before: u64,
    pub after: u64,
}

/// The analysis of the files the change touches (contract §5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisSummary {
    /// `local`, or `nats` when a peer on `[analysis] nats_subject` answered.
    pub analyzer: String,
    pub llm_call_sites: BeforeAfter,
    pub complexity: BeforeAfter,
    /// Where the counted call sites are, per touched file and side, so a
    /// reader of a `static` `llm_reduction` can find them. Filled by the
    /// local analysis only (a peer's reply has counts, no lines); absent in
    /// results stored before it existed and for files without a site.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sites: Vec<CallSites>,
}

/// Which text of a touched file: the baseline's or the candidate's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Before,
    After,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Before => "before",
            Side::After => "after",
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The LLM call sites the analyzer found in one side of one touched file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallSites {
    /// As in the analysis request (prefixed by the repo's name when the
    /// experiment spans several repos).
    pub path: String,
    pub side: Side,
    /// 1-based line of each site's argument `(`, sorted, one per site.
    pub lines: Vec<u32>,
}

/// A judged experiment (`status: "success"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completed {
    pub experiment_id: String,
    pub instance_id: String,
    pub metrics: Metrics,
    pub baseline: BaselineSummary,
    /// Tests that passed on the baseline and fail or vanish in the candidate.
    pub regressions: Vec<String>,
    /// Tests that failed and then passed on a re-run; not counted as regressions.
    #[serde(default)]
    pub flaky: Vec<String>,
    pub recommendation: Recommendation,
    pub reasons: Vec<Reason>,
    pub candidate: CandidateRef,
    /// The candidate's environment; null for a repo without one.
    #[serde(default)]
    pub environment: Option<EnvironmentRef>,
    /// The test command and report actually used, and whether detected.
    #[serde(default)]
    pub framework: Option<FrameworkRef>,
    /// LLM call sites and complexity of the touched files, and who counted.
    #[serde(default)]
    pub analysis: Option<AnalysisSummary>,
    /// LLM calls observed at run time, baseline against candidate (§2b);
    /// None only in results stored before the endpoint existed.
    #[serde(default)]
    pub llm: Option<LlmSummary>,
    /// `[host] name` of the genesis that ran it (contract §5), so a result
    /// from a queue shared by several hosts can be traced to its machine.
    /// Empty only in results stored before hosts were recorded.
    #[serde(default)]
    pub host: String,
    #[serde(with = "timestamp")]
    pub timestamp: DateTime<Utc>,
}

/// An experiment with nothing to judge (`status: "failed"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failed {
    pub experiment_id: String,
    #[serde(default)]
    pub instance_id: String,
    pub error: String,
    pub error_kind: ErrorKind,
    /// Always `rollback`: nothing unproven is merged.
    pub recommendation: Recommendation,
    /// `[host] name` of the genesis that answered, as on a completed result.
    #[serde(default)]
    pub host: String,
    #[serde(with = "timestamp")]
    pub timestamp: DateTime<Utc>,
}

/// The final document of an experiment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
// One per experiment, moved a handful of times: boxing would only add noise.
#[allow(clippy::large_enum_variant)]
pub enum ExperimentResult {
    Success(Completed),
    Failed(Failed),
}

impl ExperimentResult {
    /// A failed result answered by `host` (`[host] name`).
    pub fn failed(
        host: &str,
        experiment_id: &str,
        instance_id: &str,
        kind: ErrorKind,
        error: impl Into<String>,
    ) -> Self {
        ExperimentResult::Failed(Failed {
            experiment_id: experiment_id.to_owned(),
            instance_id: instance_id.to_owned(),
            error: error.into(),
            error_kind: kind,
            recommendation: Recommendation::Rollback,
            host: host.to_owned(),
            timestamp: Utc::now(),
        })
    }

    /// The refusal of `request` because its `experiment_id` was used for a
    /// different request: answering it with the other request's result
    /// would mislead, and running it would answer one id twice. Told alike
    /// by the local store and by the hosts' shared id registry.
    pub fn id_reused(host: &str, request: &Request) -> Self {
        ExperimentResult::failed(
            host,
            &request.experiment_id,
            &request.instance_id,
            ErrorKind::InvalidRequest,
            format!(
                "experiment_id {:?} was already used for a different request; refusing to run or answer it with the other request's result",
                request.experiment_id
            ),
        )
    }

    /// The host that produced it; empty in results stored before hosts
    /// were recorded.
    pub fn host(&self) -> &str {
        match self {
            ExperimentResult::Success(c) => &c.host,
            ExperimentResult::Failed(f) => &f.host,
        }
    }

    /// Names `host` as the producer when the result names none (one stored
    /// before hosts were recorded, read back by the store that holds it).
    pub fn or_host(mut self, host: &str) -> Self {
        let slot = match &mut self {
            ExperimentResult::Success(c) => &mut c.host,
            ExperimentResult::Failed(f) => &mut f.host,
        };
        if slot.is_empty() {
            *slot = host.to_owned();
        }
        self
    }

    pub fn experiment_id(&self) -> &str {
        match self {
            ExperimentResult::Success(c) => &c.experiment_id,
            ExperimentResult::Failed(f) => &f.experiment_id,
        }
    }

    pub fn recommendation(&self) -> Recommendation {
        match self {
            ExperimentResult::Success(c) => c.recommendation,
            ExperimentResult::Failed(f) => f.recommendation,
        }
    }

    pub fn is_success(&self) -> bool {
        matches!(self, ExperimentResult::Success(_))
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("results always serialize")
    }
}

/// Timestamps are always RFC 3339 in UTC with an explicit `Z`.
pub mod timestamp {
    use super::*;

    pub fn format(t: &DateTime<Utc>) -> String {
        t.to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    pub fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(t))
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let text = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

mod analysis_peer;
pub use analysis_peer::*;
mod events;
pub use events::*;
mod framework;
pub use framework::*;
mod metrics_record;
pub use metrics_record::*;
mod llm;
pub use llm::*;
mod named;
pub use named::{by_name, Named};
mod reason;
pub use reason::Reason;
mod subjects_and_stages;
pub use subjects_and_stages::{stage, subjects, Stage};

#[cfg(test)]
mod tests;
