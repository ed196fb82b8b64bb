//! Which suite an experiment runs: configured, requested, advised by a
//! framework peer, or detected from the snapshot (contract §2,
//! "framework-aware experiments").
//!
//! Order: the request's `test_command`, else the repo's; without either,
//! the peer on `[framework] nats_subject` is asked (when one is configured
//! and the service has a NATS connection) with the repo's top-level names
//! and manifests; on an error, a timeout, no responder or an answer that is
//! not usable, the snapshot's files decide locally. The result's
//! `framework.detected_by` says which (`config`, `peer`, `local`).

use crate::config::RepoConfig;
use crate::contract::{DetectedBy, FrameworkAdvice, FrameworkQuery, FrameworkRef, Request};
use crate::errors::{GenesisError, Result};
use crate::results::ReportSpec;
use crate::snapshot::PreparedRepo;

use super::peer::Peer;
use super::Runner;

/// A framework chosen without config, and the image the peer named for it.
pub(super) struct Found {
    pub(super) framework: FrameworkRef,
    /// The peer's `image`, to run in instead of the repo's.
    pub(super) image: Option<String>,
}

/// The request's command, else the repo's; None when neither names one.
fn configured_command(repo: &RepoConfig, request: &Request) -> Option<String> {
    request
        .test_command
        .clone()
        .filter(|c| !c.trim().is_empty())
        .or_else(|| Some(repo.test_command.clone()).filter(|c| !c.trim().is_empty()))
}

/// The suite to run: the request's command, else the repo's, else what the
/// peer advised or the snapshot's files imply. A configured report wins
/// over a found one.
pub(super) fn choose_framework(
    primary: &str,
    repo: &RepoConfig,
    request: &Request,
    found: Option<FrameworkRef>,
) -> Result<FrameworkRef> {
    match (configured_command(repo, request), found) {
        (Some(test_command), _) => Ok(FrameworkRef {
            name: "configured".into(),
            test_command,
            report: if repo.report.is_empty() {
                "auto".into()
            } else {
                repo.report.clone()
            },
            detected: false,
            detected_by: DetectedBy::Config,
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

impl Runner {
    /// The framework when no command is configured: the peer's advice,
    /// else local detection (already made with the snapshot).
    pub(super) async fn find_framework(
        &self,
        primary: &str,
        repo: &RepoConfig,
        request: &Request,
        base: Option<&PreparedRepo>,
    ) -> Option<Found> {
        if configured_command(repo, request).is_some() {
            return None;
        }
        let base = base?;
        if let Some(advice) = self.ask_framework_peer(primary, base).await {
            return Some(Found {
                framework: FrameworkRef {
                    name: "peer".into(),
                    test_command: advice.test_command,
                    report: advice.report,
                    detected: true,
                    detected_by: DetectedBy::Peer,
                },
                image: advice.image.filter(|i| !i.trim().is_empty()),
            });
        }
        base.framework.clone().map(|framework| Found {
            framework,
            image: None,
        })
    }

    /// The peer's advice, or None (not configured, no connection, error,
    /// timeout, no responder, or an answer without a usable command and report).
    async fn ask_framework_peer(
        &self,
        primary: &str,
        base: &PreparedRepo,
    ) -> Option<FrameworkAdvice> {
        let policy = &self.config.framework;
        let peer = Peer {
            name: "framework",
            subject: &policy.nats_subject,
            timeout: policy.timeout,
            fallback: "detecting locally",
        };
        // Not configured: spare reading the manifests for nobody.
        if peer.subject.is_empty() {
            return None;
        }
        let query = self
            .framework_query(primary, base, policy.max_manifest_bytes)
            .await?;
        let payload = self.ask(&peer, serde_json::to_vec(&query).ok()?).await?;
        let subject = peer.subject;
        match usable_advice(&payload) {
            Ok(advice) => Some(advice),
            Err(why) => {
                tracing::warn!(subject, reason = %why, "framework peer's answer is not usable; detecting locally");
                None
            }
        }
    }

    /// What the peer is told: the base tree's top level and manifests.
    async fn framework_query(
        &self,
        primary: &str,
        base: &PreparedRepo,
        cap_bytes: u64,
    ) -> Option<FrameworkQuery> {
        let snapshotter = self.snapshotter.clone();
        let (name, commit) = (base.name.clone(), base.base.commit.clone());
        let listed = tokio::task::spawn_blocking(move || {
            snapshotter.top_level_at(&name, &commit, cap_bytes)
        })
        .await;
        match listed {
            Ok(Ok((files, manifests))) => Some(FrameworkQuery {
                repo: primary.into(),
                files,
                manifests,
            }),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot list the repo's top level for the framework peer");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "framework listing task failed");
                None
            }
        }
    }
}

/// A reply with a command and a report spec genesis can read.
fn usable_advice(payload: &[u8]) -> std::result::Result<FrameworkAdvice, String> {
    let advice: FrameworkAdvice = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
    if advice.test_command.trim().is_empty() {
        return Err("test_command is empty".into());
    }
    advice
        .report
        .parse::<ReportSpec>()
        .map_err(|e| format!("report {:?}: {e}", advice.report))?;
    Ok(advice)
}
