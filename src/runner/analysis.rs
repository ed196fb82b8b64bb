//! The analysis of a change (contract §3, §5): the files each repo's patch
//! touches, before and after, in every language the analyzer knows. A peer
//! on `[analysis] nats_subject` is asked first when one is configured and
//! the service has a NATS connection; on an error, a timeout or no
//! responder, genesis counts locally. The result says which one answered.

use std::sync::Arc;

use crate::analysis::{Analyzer, FileAnalysis};
use crate::contract::{
    AnalysisReply, AnalysisReplyFile, AnalysisRequest, AnalysisRequestFile, AnalysisSummary,
    BeforeAfter, CallSites, Side,
};
use crate::judgement::metrics::ChangeFigures;

use super::peer::Peer;
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
            return (summary("nats", figures, Vec::new()), figures);
        }
        let analyzer = self.analyzer.clone();
        let (figures, sites) =
            tokio::task::spawn_blocking(move || analyze_locally(&analyzer, &request))
                .await
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "local analysis task failed; counting nothing");
                    (ChangeFigures::default(), Vec::new())
                });
        (summary("local", figures, sites), figures)
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
        let policy = &self.config.analysis;
        let peer = Peer {
            name: "analysis",
            subject: &policy.nats_subject,
            timeout: policy.timeout,
            fallback: "analysing locally",
        };
        let payload = self.ask(&peer, serde_json::to_vec(request).ok()?).await?;
        let subject = peer.subject;
        match serde_json::from_slice::<AnalysisReply>(&payload) {
            Ok(reply) => Some(total(&reply)),
            Err(e) => {
                tracing::warn!(subject, error = %e, "analysis peer's reply is not the contract's; analysing locally");
                None
            }
        }
    }
}

fn summary(analyzer: &str, f: ChangeFigures, sites: Vec<CallSites>) -> AnalysisSummary {
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
        sites,
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

/// Counts with the built-in analyzer, answering as a peer would (a side
/// that cannot be parsed counts 0), and keeps where each side's call sites
/// are, which a peer's reply cannot tell.
fn analyze_locally(
    analyzer: &Arc<Analyzer>,
    request: &AnalysisRequest,
) -> (ChangeFigures, Vec<CallSites>) {
    let analyze = |path: &str, text: &Option<String>| -> Option<FileAnalysis> {
        analyzer.analyze(path, text.as_deref()?, None).ok()
    };
    let mut sites = Vec::new();
    let files = request
        .files
        .iter()
        .map(|file| {
            let before = analyze(&file.path, &file.before);
            let after = analyze(&file.path, &file.after);
            sites.extend(call_sites(Side::Before, before.as_ref()));
            sites.extend(call_sites(Side::After, after.as_ref()));
            let (llm_before, complexity_before) = counts(before.as_ref());
            let (llm_after, complexity_after) = counts(after.as_ref());
            AnalysisReplyFile {
                path: file.path.clone(),
                llm_call_sites_before: llm_before,
                llm_call_sites_after: llm_after,
                complexity_before,
                complexity_after,
            }
        })
        .collect();
    (total(&AnalysisReply { files }), sites)
}

/// (LLM call sites, complexity) of one side; 0 for a side that is absent
/// or could not be parsed.
fn counts(side: Option<&FileAnalysis>) -> (u64, u64) {
    side.map_or((0, 0), |a| (a.llm_call_sites.into(), a.complexity.into()))
}

/// One side's call sites, or None when it has none (nothing to point at).
fn call_sites(side: Side, analysis: Option<&FileAnalysis>) -> Option<CallSites> {
    let analysis = analysis.filter(|a| !a.llm_call_lines.is_empty())?;
    Some(CallSites {
        path: analysis.path.clone(),
        side,
        lines: analysis.llm_call_lines.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::Shapes;

    fn file(path: &str, before: Option<&str>, after: Option<&str>) -> AnalysisRequestFile {
        AnalysisRequestFile {
            path: path.into(),
            language: "python".into(),
            before: before.map(str::to_owned),
            after: after.map(str::to_owned),
        }
    }

    #[test]
    fn local_analysis_keeps_each_sides_call_lines() {
        let analyzer = Arc::new(Analyzer::new(Shapes::builtin()).unwrap());
        let two = "def ask(llm, q):\n    a = llm.complete(q)\n\n    return llm.complete(a)\n";
        let one = "def ask(llm, q):\n    return llm.complete(q)\n";
        let request = AnalysisRequest {
            experiment_id: "e".into(),
            files: vec![
                file("agent.py", Some(two), Some(one)),
                file("new.py", None, Some(one)),
                file("plain.py", Some("x = 1\n"), Some("x = 2\n")),
            ],
        };
        let (figures, sites) = analyze_locally(&analyzer, &request);
        assert_eq!((figures.llm_before, figures.llm_after), (2, 2));
        let site = |path: &str, side, lines: &[u32]| CallSites {
            path: path.into(),
            side,
            lines: lines.to_vec(),
        };
        assert_eq!(
            sites,
            [
                site("agent.py", Side::Before, &[2, 4]),
                site("agent.py", Side::After, &[2]),
                site("new.py", Side::After, &[2]),
            ]
        );
        let summary = summary("local", figures, sites);
        let json = serde_json::to_value(&summary).unwrap();
        assert_eq!(json["sites"][0]["side"], "before");
        assert_eq!(json["sites"][0]["lines"], serde_json::json!([2, 4]));
        let peer = serde_json::to_value(super::summary("nats", figures, Vec::new())).unwrap();
        assert!(peer.get("sites").is_none(), "a peer's reply has no lines");
    }
}
