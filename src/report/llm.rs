//! The experiment page's "LLM calls" section: the calls the baseline and
//! the candidate made to the sandbox's LLM endpoint, per API and in all,
//! and, when `llm_reduction` could not come from them (the baseline made no
//! call, or there was no endpoint), the static call sites it came from, by
//! file and line, so a reader can check the number against the code.

use crate::contract::{AnalysisSummary, BeforeAfter, LlmSource, LlmSummary, Side};

/// Site rows shown; the rest are counted.
const MAX_SITE_ROWS: usize = 200;

pub(super) struct LlmView {
    pub(super) source: &'static str,
    /// What the source means for `llm_reduction`.
    pub(super) about: &'static str,
    /// One row per API either run called.
    pub(super) apis: Vec<CountRow>,
    /// Calls and prompt tokens in all, and refused calls when any.
    pub(super) totals: Vec<CountRow>,
    /// Why there was no endpoint to observe.
    pub(super) unavailable: Option<String>,
    /// Present when the reduction is static or nothing could be observed.
    pub(super) sites: Option<SitesView>,
}

pub(super) struct CountRow {
    pub(super) name: String,
    pub(super) before: u64,
    pub(super) after: u64,
    /// `after − before`, signed.
    pub(super) change: String,
}

pub(super) struct SitesView {
    /// One row per call site: `path:line` and the run whose text has it.
    pub(super) rows: Vec<(String, &'static str)>,
    pub(super) total: usize,
    /// Set when there is nothing to list although sites were counted, or
    /// nothing was counted at all.
    pub(super) note: Option<String>,
}

impl SitesView {
    pub(super) fn more(&self) -> usize {
        self.total - self.rows.len()
    }
}

/// The section for a result's `llm` (None for a result stored before the
/// endpoint, or none at all); `analysis` supplies the static sites.
pub(super) fn llm_view(
    llm: Option<&LlmSummary>,
    analysis: Option<&AnalysisSummary>,
) -> Option<LlmView> {
    let llm = llm?;
    let show_sites = llm.source == LlmSource::Static || llm.unavailable.is_some();
    Some(LlmView {
        source: llm.source.as_str(),
        about: about(llm.source),
        apis: llm
            .by_api
            .iter()
            .map(|(api, counts)| count_row(api.as_str(), *counts))
            .collect(),
        totals: totals(llm),
        unavailable: llm.unavailable.clone(),
        sites: show_sites.then(|| sites_view(analysis)),
    })
}

/// The definition of `llm_reduction` for a result's source; a result
/// without `llm` was judged on call sites.
pub(super) fn reduction_definition(source: Option<LlmSource>) -> &'static str {
    match source {
        Some(LlmSource::Observed) => {
            "(LLM calls observed before − after) / before: the baseline's and the candidate's runs"
        }
        Some(LlmSource::Static) | None => {
            "(LLM call sites before − after) / before in the touched files"
        }
    }
}

fn about(source: LlmSource) -> &'static str {
    match source {
        LlmSource::Observed => "llm_reduction is the reduction of these calls.",
        LlmSource::Static => {
            "the baseline made no call, so llm_reduction counts the call sites of the touched files instead."
        }
    }
}

fn count_row(name: &str, counts: BeforeAfter) -> CountRow {
    let change = i128::from(counts.after) - i128::from(counts.before);
    CountRow {
        name: name.to_owned(),
        before: counts.before,
        after: counts.after,
        change: format!("{change:+}"),
    }
}

fn totals(llm: &LlmSummary) -> Vec<CountRow> {
    let mut rows = vec![
        count_row("calls", llm.calls),
        count_row("prompt tokens", llm.tokens),
    ];
    if llm.refused.before + llm.refused.after > 0 {
        rows.push(count_row("refused (past the run's bounds)", llm.refused));
    }
    rows
}

fn sites_view(analysis: Option<&AnalysisSummary>) -> SitesView {
    let Some(analysis) = analysis else {
        return SitesView {
            rows: Vec::new(),
            total: 0,
            note: Some("The result carries no analysis of the touched files.".into()),
        };
    };
    let all: Vec<(String, &'static str)> = analysis
        .sites
        .iter()
        .flat_map(|file| {
            let run = run_name(file.side);
            file.lines
                .iter()
                .map(move |line| (format!("{}:{line}", file.path), run))
        })
        .collect();
    let counted = analysis.llm_call_sites;
    let note = match (all.is_empty(), counted.before + counted.after) {
        (true, 0) => Some("No LLM call site in the touched files, before or after.".into()),
        (true, n) => Some(format!(
            "{n} call site(s) were counted ({} before, {} after) by the {} analyzer, which gives no lines.",
            counted.before, counted.after, analysis.analyzer
        )),
        (false, _) => None,
    };
    SitesView {
        total: all.len(),
        rows: all.into_iter().take(MAX_SITE_ROWS).collect(),
        note,
    }
}

fn run_name(side: Side) -> &'static str {
    match side {
        Side::Before => "baseline",
        Side::After => "candidate",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::contract::{CallSites, LlmApi};

    fn pair(before: u64, after: u64) -> BeforeAfter {
        BeforeAfter { before, after }
    }

    fn summary(source: LlmSource) -> LlmSummary {
        LlmSummary {
            source,
            calls: pair(4, 1),
            tokens: pair(400, 90),
            by_api: BTreeMap::from([(LlmApi::OpenAiChat, pair(4, 1))]),
            refused: pair(0, 0),
            unavailable: None,
        }
    }

    fn analysis(sites: Vec<CallSites>) -> AnalysisSummary {
        AnalysisSummary {
            analyzer: "nats".into(),
            llm_call_sites: pair(2, 1),
            complexity: pair(0, 0),
            sites,
        }
    }

    #[test]
    fn observed_calls_show_per_api_without_sites() {
        let view = llm_view(Some(&summary(LlmSource::Observed)), None).unwrap();
        assert_eq!(view.source, "observed");
        assert_eq!(view.apis[0].name, "openai.chat");
        assert_eq!(view.apis[0].change, "-3");
        assert_eq!(view.totals.len(), 2, "no refused row when none refused");
        assert!(view.sites.is_none());
        assert!(llm_view(None, None).is_none());
    }

    #[test]
    fn static_source_lists_sites_or_says_why_not() {
        let sites = vec![CallSites {
            path: "src/a.py".into(),
            side: Side::Before,
            lines: vec![3, 9],
        }];
        let llm = summary(LlmSource::Static);
        let view = llm_view(Some(&llm), Some(&analysis(sites))).unwrap();
        let listed = view.sites.unwrap();
        assert_eq!(
            listed.rows,
            [
                ("src/a.py:3".to_owned(), "baseline"),
                ("src/a.py:9".to_owned(), "baseline")
            ]
        );
        let peer = llm_view(Some(&llm), Some(&analysis(vec![]))).unwrap();
        let note = peer.sites.unwrap().note.unwrap();
        assert!(
            note.contains("by the nats analyzer, which gives no lines"),
            "{note}"
        );
    }

    #[test]
    fn the_definition_follows_the_source() {
        assert!(reduction_definition(Some(LlmSource::Observed)).contains("calls observed"));
        assert!(reduction_definition(Some(LlmSource::Static)).contains("call sites"));
        assert!(reduction_definition(None).contains("call sites"));
    }
}
