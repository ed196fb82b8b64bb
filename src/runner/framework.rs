//! Which suite an experiment runs: configured, requested, or detected from
//! the snapshot (contract §2, "framework-aware experiments").

use crate::config::RepoConfig;
use crate::contract::{FrameworkRef, Request};
use crate::errors::{GenesisError, Result};

/// The suite to run: the request's command, else the repo's, else what the
/// snapshot's files imply. A configured report wins over a detected one.
pub(super) fn choose_framework(
    primary: &str,
    repo: &RepoConfig,
    request: &Request,
    detected: Option<FrameworkRef>,
) -> Result<FrameworkRef> {
    let configured = request
        .test_command
        .clone()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| Some(repo.test_command.clone()).filter(|c| !c.trim().is_empty()));
    match (configured, detected) {
        (Some(test_command), _) => Ok(FrameworkRef {
            name: "configured".into(),
            test_command,
            report: if repo.report.is_empty() {
                "auto".into()
            } else {
                repo.report.clone()
            },
            detected: false,
        }),
        (None, Some(mut found)) => {
            if !repo.report.is_empty() {
                found.report = repo.report.clone();
            }
            Ok(found)
        }
        (None, None) => Err(GenesisError::InvalidRequest(format!(
            "repo {primary:?} has no test_command, the request names none, and its files \
             show no known framework (mix.exs, Cargo.toml, package.json with a test script, \
             pyproject.toml/setup.cfg/setup.py/pytest.ini/tox.ini or a tests/ directory)"
        ))),
    }
}
