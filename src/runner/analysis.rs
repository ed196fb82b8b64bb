//! The analysis of a change (contract §3, §5): the files each repo's patch
//! touches, before and after, in every language the analyzer knows. A peer
//! on `[analysis] nats_subject` is asked first when one is configured and
//! the service has a NATS connection; on an error, a timeout or no
//! responder, genesis counts locally. The result says which one answered.

use std::sync::Arc;
use std::time::Duration;

use crate::analysis::Analyzer;
use crate::contract::{
    AnalysisReply, AnalysisReplyFile, AnalysisRequest, AnalysisRequestFile, AnalysisSummary,
    BeforeAfter,
};
use crate::judgement::metrics::ChangeFigures;

use super::{Plan, Runner};

impl Runner {
    /// Counts LLM call sites and complexity of the touched files.
    pub(super) async fn analyze_change(
        &self,
        id: &str,
        plan: &Plan,
    ) -> (AnalysisSummary, ChangeFigures) {
        let request = self.analysis_request(id, plan);
        if let Some(figures) = self.ask_peer(&request).await {
            return (summary("nats", figures), figures);
        }
        let analyzer = self.analyzer.clone();
        let figures = tokio::task::spawn_blocking(move || analyze_locally(&analyzer, &request))
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "local analysis task failed; counting nothing");
                ChangeFigures::default()
            });
        (summary("local", figures), figures)
    }

    /// Every touched file whose language is known, with both texts.
    fn analysis_request(&self, id: &str, plan: &Plan) -> AnalysisRequest {
        let files = plan
            .prepared
            .iter()
            .flat_map(|repo| {
                repo.sources.iter().filter_map(move |source| {
                    let language = self.analyzer.language_for(&source.path)?;
                    Some(AnalysisRequestFile {
                        path: if plan.prepared.len() > 1 {
                            format!("{}/{}", repo.name, source.path)
                        } else {
                            source.path.clone()
                        },
                        language: language.name().into(),
                        before: source.before.clone(),
                        after: source.after.clone(),
                    })
                })
            })
            .collect();
        AnalysisRequest {
            experiment_id: id.into(),
            files,
        }
    }

    /// The peer's figures, or None (not configured, no connection, error,
    /// timeout, no responder, or an answer that is not the contract's).
    async fn ask_peer(&self, request: &AnalysisRequest) -> Option<ChangeFigures> {
        let subject = &self.config.analysis.nats_subject;
        if subject.is_empty() {
            return None;
        }
        let client = self.analysis_peer.get()?;
        let payload = serde_json::to_vec(request).ok()?;
        let timeout = Duration::from_millis(self.config.analysis.timeout_ms);
        let answer =
            tokio::time::timeout(timeout, client.request(subject.clone(), payload.into())).await;
        let message = match answer {
            Ok(Ok(message)) => message,
            Ok(Err(e)) => {
                tracing::warn!(subject, error = %e, "analysis peer failed; analysing locally");
                return None;
            }
            Err(_) => {
                tracing::warn!(
                    subject,
                    timeout_ms = timeout.as_millis() as u64,
                    "analysis peer timed out; analysing locally"
                );
                return None;
            }
        };
        match serde_json::from_slice::<AnalysisReply>(&message.payload) {
            Ok(reply) => Some(total(&reply)),
            Err(e) => {
                tracing::warn!(subject, error = %e, "analysis peer's reply is not the contract's; analysing locally");
                None
            }
        }
    }
}

fn summary(analyzer: &str, f: ChangeFigures) -> AnalysisSummary {
    AnalysisSummary {
        analyzer: analyzer.into(),
        llm_call_sites: BeforeAfter {
            before: f.llm_before,
            after: f.llm_after,
        },
        complexity: BeforeAfter {
            before: f.complexity_before,
            after: f.complexity_after,
        },
    }
}

/// Adds up a reply's per-file figures (the peer's or the local one).
fn total(reply: &AnalysisReply) -> ChangeFigures {
    reply
        .files
        .iter()
        .fold(ChangeFigures::default(), |f, file| ChangeFigures {
            llm_before: f.llm_before + file.llm_call_sites_before,
            llm_after: f.llm_after + file.llm_call_sites_after,
            complexity_before: f.complexity_before + file.complexity_before,
            complexity_after: f.complexity_after + file.complexity_after,
        })
}

/// Counts with the built-in analyzer, answering as a peer would; a side
/// that cannot be parsed counts 0.
fn analyze_locally(analyzer: &Arc<Analyzer>, request: &AnalysisRequest) -> ChangeFigures {
    let count = |path: &str, text: &Option<String>| -> (u64, u64) {
        text.as_deref()
            .and_then(|t| analyzer.analyze(path, t, None).ok())
            .map_or((0, 0), |a| (a.llm_call_sites.into(), a.complexity.into()))
    };
    let files = request
        .files
        .iter()
        .map(|file| {
            let (llm_before, complexity_before) = count(&file.path, &file.before);
            let (llm_after, complexity_after) = count(&file.path, &file.after);
            AnalysisReplyFile {
                path: file.path.clone(),
                llm_call_sites_before: llm_before,
                llm_call_sites_after: llm_after,
                complexity_before,
                complexity_after,
            }
        })
        .collect();
    total(&AnalysisReply { files })
}
