//! The `code.analysis.parse` exchange (contract §3): what genesis asks an
//! analysis peer about the touched files, and what the peer answers.

use serde::{Deserialize, Serialize};

/// `code.analysis.parse` request (contract §3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisRequest {
    pub experiment_id: String,
    pub files: Vec<AnalysisRequestFile>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisRequestFile {
    pub path: String,
    pub language: String,
    /// The file's text before the change; null when it did not exist.
    pub before: Option<String>,
    pub after: Option<String>,
}

/// `code.analysis.parse` reply (contract §3).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisReply {
    pub files: Vec<AnalysisReplyFile>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisReplyFile {
    pub path: String,
    pub llm_call_sites_before: u64,
    pub llm_call_sites_after: u64,
    pub complexity_before: u64,
    pub complexity_after: u64,
}
