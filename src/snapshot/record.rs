//! The record of what a run's workspace held: each repo of the experiment
//! and the commit its candidate was, written beside the logs as
//! `workspace.json` in the sandbox directory.
//!
//! Why: with snapshot layers a candidate never exists as a tree of its
//! own (it is its base's layer plus a delta, and both are gone once the
//! run ends), and a multi-repo workspace has commits the result does not
//! name. The record lets a sandbox bundle rebuild the workspace as tested
//! from the mirrors, whatever form the runs took it in.

use serde::{Deserialize, Serialize};

use super::PreparedRepo;

/// File name of the record in a sandbox directory.
pub const WORKSPACE_RECORD: &str = "workspace.json";

/// The repos of one experiment's workspace, primary first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkspaceRecord {
    pub repos: Vec<RecordedRepo>,
}

/// One repo under `/workspace/NAME`: its base and candidate commits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedRepo {
    pub repo: String,
    pub base_commit: String,
    pub commit: String,
}

impl WorkspaceRecord {
    pub fn of(prepared: &[PreparedRepo]) -> WorkspaceRecord {
        WorkspaceRecord {
            repos: prepared
                .iter()
                .map(|p| RecordedRepo {
                    repo: p.name.clone(),
                    base_commit: p.base.commit.clone(),
                    commit: p.candidate.commit.clone(),
                })
                .collect(),
        }
    }
}
