//! The LLM calls of an experiment (contract §2b, §5): what one run's
//! endpoint recorded ([`LlmTally`]) and what a result says of the
//! baseline's and the candidate's calls ([`LlmSummary`]).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::BeforeAfter;

/// The API a call was made to, as the endpoint routes it. Serialised as
/// the `by_api` keys of a result (`openai.chat`, `anthropic.messages`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LlmApi {
    #[serde(rename = "openai.chat")]
    OpenAiChat,
    #[serde(rename = "openai.completions")]
    OpenAiCompletions,
    #[serde(rename = "openai.responses")]
    OpenAiResponses,
    #[serde(rename = "openai.embeddings")]
    OpenAiEmbeddings,
    #[serde(rename = "anthropic.messages")]
    AnthropicMessages,
    #[serde(rename = "ollama.chat")]
    OllamaChat,
    #[serde(rename = "ollama.generate")]
    OllamaGenerate,
    #[serde(rename = "ollama.embed")]
    OllamaEmbed,
    #[serde(rename = "ollama.embeddings")]
    OllamaEmbeddings,
    /// A path the endpoint does not serve (answered 404, still recorded).
    #[serde(rename = "other")]
    Other,
}

impl LlmApi {
    pub const ALL: [LlmApi; 10] = [
        LlmApi::OpenAiChat,
        LlmApi::OpenAiCompletions,
        LlmApi::OpenAiResponses,
        LlmApi::OpenAiEmbeddings,
        LlmApi::AnthropicMessages,
        LlmApi::OllamaChat,
        LlmApi::OllamaGenerate,
        LlmApi::OllamaEmbed,
        LlmApi::OllamaEmbeddings,
        LlmApi::Other,
    ];

    /// Routes a request path (query string already removed).
    pub fn from_path(path: &str) -> LlmApi {
        match path.trim_end_matches('/') {
            "/v1/chat/completions" | "/chat/completions" => LlmApi::OpenAiChat,
            "/v1/completions" | "/completions" => LlmApi::OpenAiCompletions,
            "/v1/responses" | "/responses" => LlmApi::OpenAiResponses,
            "/v1/embeddings" | "/embeddings" => LlmApi::OpenAiEmbeddings,
            "/v1/messages" => LlmApi::AnthropicMessages,
            "/api/chat" => LlmApi::OllamaChat,
            "/api/generate" => LlmApi::OllamaGenerate,
            "/api/embed" => LlmApi::OllamaEmbed,
            "/api/embeddings" => LlmApi::OllamaEmbeddings,
            _ => LlmApi::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            LlmApi::OpenAiChat => "openai.chat",
            LlmApi::OpenAiCompletions => "openai.completions",
            LlmApi::OpenAiResponses => "openai.responses",
            LlmApi::OpenAiEmbeddings => "openai.embeddings",
            LlmApi::AnthropicMessages => "anthropic.messages",
            LlmApi::OllamaChat => "ollama.chat",
            LlmApi::OllamaGenerate => "ollama.generate",
            LlmApi::OllamaEmbed => "ollama.embed",
            LlmApi::OllamaEmbeddings => "ollama.embeddings",
            LlmApi::Other => "other",
        }
    }
}

impl fmt::Display for LlmApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one run's endpoint saw, counted by genesis outside the sandbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LlmTally {
    /// Calls to a model API (`other` paths are in `by_api` only).
    pub calls: u64,
    /// Prompt tokens of the recorded calls (`o200k_base`).
    pub tokens: u64,
    /// Calls past the run's bounds (`[llm] max_calls`, `max_run_bytes`,
    /// `max_request_bytes`): answered with an error, never recorded.
    pub refused: u64,
    pub by_api: BTreeMap<LlmApi, u64>,
    /// Why the run had no endpoint although the repo asked for one
    /// (a remote engine, runsc, a port held in the sandbox); None when it
    /// had one or the repo has `llm_stub = false`.
    pub unavailable: Option<String>,
}

/// Where a result's `llm_reduction` comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LlmSource {
    /// The calls the baseline and the candidate made to the endpoint.
    Observed,
    /// The LLM call sites of the touched files (the baseline made no call).
    Static,
}

impl LlmSource {
    /// The serialised name (`observed`, `static`), for views and exports.
    pub fn as_str(self) -> &'static str {
        match self {
            LlmSource::Observed => "observed",
            LlmSource::Static => "static",
        }
    }
}

impl fmt::Display for LlmSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A result's `llm` (contract §5): calls and prompt tokens, baseline
/// (`before`) against candidate (`after`), in all and per API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlmSummary {
    pub source: LlmSource,
    pub calls: BeforeAfter,
    pub tokens: BeforeAfter,
    pub by_api: BTreeMap<LlmApi, BeforeAfter>,
    /// Calls refused past a run's bounds (a flooding suite).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub refused: BeforeAfter,
    /// Why there was no endpoint to observe (then `source` is `static`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
}

fn is_zero(counts: &BeforeAfter) -> bool {
    counts.before == 0 && counts.after == 0
}

impl LlmSummary {
    /// Puts the baseline's and the candidate's tallies side by side; the
    /// source is `observed` only when the baseline made calls.
    pub fn of(before: &LlmTally, after: &LlmTally) -> LlmSummary {
        let pair = |b: u64, a: u64| BeforeAfter {
            before: b,
            after: a,
        };
        let by_api = LlmApi::ALL
            .iter()
            .filter_map(|api| {
                let b = before.by_api.get(api).copied().unwrap_or(0);
                let a = after.by_api.get(api).copied().unwrap_or(0);
                (b + a > 0).then_some((*api, pair(b, a)))
            })
            .collect();
        LlmSummary {
            source: if before.calls > 0 {
                LlmSource::Observed
            } else {
                LlmSource::Static
            },
            calls: pair(before.calls, after.calls),
            tokens: pair(before.tokens, after.tokens),
            by_api,
            refused: pair(before.refused, after.refused),
            unavailable: before.unavailable.clone().or(after.unavailable.clone()),
        }
    }

    /// `(before − after) / before` of the observed calls, when observed.
    pub fn observed_reduction(&self) -> Option<f64> {
        (self.source == LlmSource::Observed).then(|| {
            (self.calls.before as f64 - self.calls.after as f64) / self.calls.before as f64
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(calls: u64, api: LlmApi) -> LlmTally {
        LlmTally {
            calls,
            tokens: calls * 10,
            by_api: BTreeMap::from([(api, calls)]),
            ..Default::default()
        }
    }

    #[test]
    fn observed_only_when_the_baseline_called() {
        let s = LlmSummary::of(&tally(5, LlmApi::OpenAiChat), &tally(3, LlmApi::OpenAiChat));
        assert_eq!(s.source, LlmSource::Observed);
        assert_eq!(s.observed_reduction(), Some(0.4));
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["by_api"]["openai.chat"]["before"], 5);
        assert_eq!(json["tokens"]["after"], 30);
        assert!(json.get("refused").is_none());
        let none = LlmSummary::of(&LlmTally::default(), &tally(2, LlmApi::Other));
        assert_eq!(none.source, LlmSource::Static);
        assert_eq!(none.observed_reduction(), None);
    }

    #[test]
    fn paths_route_to_apis() {
        assert_eq!(
            LlmApi::from_path("/v1/chat/completions"),
            LlmApi::OpenAiChat
        );
        assert_eq!(LlmApi::from_path("/v1/messages"), LlmApi::AnthropicMessages);
        assert_eq!(LlmApi::from_path("/api/embed"), LlmApi::OllamaEmbed);
        assert_eq!(LlmApi::from_path("/v2/whatever"), LlmApi::Other);
        for source in [LlmSource::Observed, LlmSource::Static] {
            let json = serde_json::to_string(&source).unwrap();
            assert_eq!(json, format!("\"{source}\""));
        }
        for api in LlmApi::ALL {
            let json = serde_json::to_string(&api).unwrap();
            assert_eq!(json, format!("\"{}\"", api.as_str()));
        }
    }
}
