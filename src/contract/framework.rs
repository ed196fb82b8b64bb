//! The suite an experiment ran ([`FrameworkRef`], in every result) and the
//! exchange with a framework peer (`[framework] nats_subject`): what genesis
//! asks before it detects a repo's suite itself, and what the peer answers.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// How the suite was chosen when the repo's config names none: what the
/// snapshot contains (or a framework peer) decides the command and the
/// report format.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "FrameworkRefStored")]
pub struct FrameworkRef {
    /// `pytest`, `cargo`, `mix` or `npm`; `configured`; `peer`.
    pub name: String,
    pub test_command: String,
    pub report: String,
    /// Whether it was detected (true) or configured (false).
    pub detected: bool,
    /// Who chose it: `config`, `local` detection, or the framework `peer`.
    pub detected_by: DetectedBy,
}

/// Who chose an experiment's suite (`framework.detected_by`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectedBy {
    /// The request's or the repo's `test_command`.
    Config,
    /// The snapshot's top-level files.
    Local,
    /// The peer on `[framework] nats_subject`.
    Peer,
}

/// A [`FrameworkRef`] as stored: results from before `detected_by` existed
/// say only `detected`, which tells config from local.
#[derive(Deserialize)]
struct FrameworkRefStored {
    name: String,
    test_command: String,
    report: String,
    detected: bool,
    #[serde(default)]
    detected_by: Option<DetectedBy>,
}

impl From<FrameworkRefStored> for FrameworkRef {
    fn from(stored: FrameworkRefStored) -> FrameworkRef {
        let by_flag = if stored.detected {
            DetectedBy::Local
        } else {
            DetectedBy::Config
        };
        FrameworkRef {
            name: stored.name,
            test_command: stored.test_command,
            report: stored.report,
            detected: stored.detected,
            detected_by: stored.detected_by.unwrap_or(by_flag),
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
