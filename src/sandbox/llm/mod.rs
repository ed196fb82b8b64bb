//! The LLM endpoint of every test run (contract §2b): genesis answers as
//! the OpenAI, Anthropic and Ollama APIs on `127.0.0.1:[llm] port` inside
//! the sandbox, with network still off, and records every call.
//!
//! Design, each part for a reason:
//! - **Where it listens.** Genesis binds a socket inside the sandbox's
//!   network namespace from the host side (`netns.rs`) once the container
//!   has started and before the suite's exec exists. Nothing enters the
//!   image, so it works in any image (`genesis/busybox` included), and
//!   the process that answers is genesis itself, in another PID namespace
//!   than the suite: the suite can neither kill it nor reach its record.
//!   The port is held for the container's whole life, so the suite cannot
//!   bind it first or beside it to impersonate the endpoint.
//! - **Where it cannot.** Under runsc the sandbox's loopback is gVisor's
//!   own network stack, which no host socket can join, and a remote
//!   engine's namespaces are on another machine: the run then has no
//!   endpoint and its tally says why ([`LlmTally::unavailable`]); the
//!   result falls back to the static count and carries the reason, never
//!   a silent 0.
//! - **The record.** Each call is recorded in genesis's memory as it
//!   arrives (API, model, streamed, prompt tokens as `o200k_base` counts
//!   them, answer bytes, when), one record per run, so one run's suite
//!   cannot change another's counts. Every bound is per run and comes from
//!   `[llm]`: calls past `max_calls` or `max_run_bytes` are refused and
//!   counted as refused, a body past `max_request_bytes` is refused unread,
//!   at most `max_connections` are served at once, and a connection that
//!   does not send its request head within `header_timeout_ms` is closed.
//! - **The answers** (`answers.rs`, `api.rs`) are deterministic: the same
//!   prompt gets the same bytes in the baseline and in the candidate.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::{Deserialize, Serialize};
use tokio::task::{JoinHandle, JoinSet};

use crate::config::LlmPolicy;
use crate::contract::{LlmApi, LlmTally};

pub mod answers;
pub mod api;
mod netns;

pub use answers::Answers;
use api::{Answer, Prompt, Reply};
pub use netns::bind_in_namespace_of;

/// What a run's endpoint needs: the policy's bounds and the answers.
#[derive(Debug, Clone)]
pub struct LlmSetup {
    pub policy: LlmPolicy,
    pub answers: Arc<Answers>,
}

/// One recorded call, as `llm.jsonl` of a run keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlmCall {
    /// 1-based, in the order the calls arrived.
    pub call: u64,
    /// Milliseconds since the endpoint started.
    pub at_ms: u64,
    pub api: LlmApi,
    pub model: String,
    pub streamed: bool,
    pub prompt_tokens: u64,
    pub answer_bytes: u64,
    pub status: u16,
}

/// A finished run's record: the tally and every call.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LlmRecord {
    pub tally: LlmTally,
    pub calls: Vec<LlmCall>,
}

impl LlmRecord {
    /// A run that asked for an endpoint and could not have one.
    pub fn unavailable(reason: String) -> LlmRecord {
        LlmRecord {
            tally: LlmTally {
                unavailable: Some(reason),
                ..LlmTally::default()
            },
            calls: Vec::new(),
        }
    }
}

/// Why a run cannot have an endpoint, if it cannot: the same words in a
/// result's `llm.unavailable` and in `genesis doctor`.
pub fn unavailable_reason(under_gvisor: bool, engine_is_local: bool) -> Option<&'static str> {
    if under_gvisor {
        return Some(
            "under runsc the sandbox's loopback is gVisor's own network stack, \
             which a socket of the host cannot join",
        );
    }
    (!engine_is_local).then_some(
        "the Docker engine is not on this host (DOCKER_HOST), so genesis cannot \
         listen inside its sandboxes",
    )
}

/// The `KEY=VALUE` variables that point a suite's SDKs at an endpoint on `port`.
pub fn suite_env(port: u16) -> Vec<String> {
    let url = format!("http://127.0.0.1:{port}");
    vec![
        format!("GENESIS_LLM_URL={url}"),
        format!("OPENAI_BASE_URL={url}/v1"),
        format!("OPENAI_API_BASE={url}/v1"),
        format!("ANTHROPIC_BASE_URL={url}"),
        format!("OLLAMA_HOST={url}"),
    ]
}

/// A run's endpoint as started: serving, or the reason it could not be,
/// or none asked for (`llm_stub = false`, an install).
pub struct RunEndpoint {
    serving: Option<(LlmEndpoint, u16)>,
    unavailable: Option<String>,
}

impl RunEndpoint {
    /// Starts the endpoint inside the network namespace of the container's
    /// process `pid` (None: not on this host), once the container runs
    /// and before the suite's exec exists.
    pub fn start(
        setup: Option<&LlmSetup>,
        under_gvisor: bool,
        container_id: &str,
        pid: Option<i64>,
    ) -> RunEndpoint {
        let Some(setup) = setup else {
            return RunEndpoint {
                serving: None,
                unavailable: None,
            };
        };
        match serve_in_sandbox(setup, under_gvisor, container_id, pid) {
            Ok(endpoint) => RunEndpoint {
                serving: Some((endpoint, setup.policy.port)),
                unavailable: None,
            },
            Err(reason) => RunEndpoint {
                serving: None,
                unavailable: Some(reason),
            },
        }
    }

    /// The variables that point the suite at the endpoint (none without one).
    pub fn suite_env(&self) -> Vec<String> {
        self.serving
            .as_ref()
            .map(|(_, port)| suite_env(*port))
            .unwrap_or_default()
    }

    /// Stops serving; the run's record, or None when no endpoint was asked for.
    pub async fn finish(self) -> Option<LlmRecord> {
        match (self.serving, self.unavailable) {
            (Some((endpoint, _)), _) => Some(endpoint.finish().await),
            (None, Some(reason)) => Some(LlmRecord::unavailable(reason)),
            (None, None) => None,
        }
    }
}

/// Binds and serves, or says why it cannot.
fn serve_in_sandbox(
    setup: &LlmSetup,
    under_gvisor: bool,
    container_id: &str,
    pid: Option<i64>,
) -> Result<LlmEndpoint, String> {
    if let Some(reason) = unavailable_reason(under_gvisor, pid.is_some()) {
        return Err(reason.into());
    }
    let pid = pid.ok_or("the container's process could not be found on this host")?;
    let port = setup.policy.port;
    let listener = bind_in_namespace_of(pid, port)
        .map_err(|e| format!("listening on 127.0.0.1:{port} in the sandbox failed: {e}"))?;
    // The PID must still have been this container's when its namespace
    // was joined: its cgroup names the container.
    if !super::names_container(pid, container_id) {
        return Err("the container's process went away before its endpoint started".into());
    }
    LlmEndpoint::serve(listener, setup.clone())
        .map_err(|e| format!("serving the LLM endpoint failed: {e}"))
}

/// What the calls of one run share.
struct Shared {
    setup: LlmSetup,
    started: Instant,
    /// Calls admitted so far (recorded or about to be).
    admitted: AtomicU64,
    record: Mutex<Recording>,
}

#[derive(Default)]
struct Recording {
    calls: Vec<LlmCall>,
    refused: u64,
    request_bytes: u64,
}

/// A serving endpoint; [`LlmEndpoint::finish`] stops it and hands over
/// the record. Dropped unfinished (an error path), it stops serving.
pub struct LlmEndpoint {
    shared: Arc<Shared>,
    /// Taken by `finish`; aborted by `Drop` if still here.
    accept: Option<JoinHandle<()>>,
}

impl LlmEndpoint {
    /// Serves on `listener` (bound in the sandbox, non-blocking).
    pub fn serve(listener: std::net::TcpListener, setup: LlmSetup) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let shared = Arc::new(Shared {
            setup,
            started: Instant::now(),
            admitted: AtomicU64::new(0),
            record: Mutex::new(Recording::default()),
        });
        let accept = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(LlmEndpoint {
            shared,
            accept: Some(accept),
        })
    }

    /// Stops serving (open connections are closed) and returns the record.
    pub async fn finish(mut self) -> LlmRecord {
        if let Some(accept) = self.accept.take() {
            accept.abort();
            let _ = accept.await;
        }
        let mut recording = std::mem::take(&mut *lock(&self.shared.record));
        recording.calls.sort_by_key(|c| c.call);
        let mut tally = LlmTally {
            refused: recording.refused,
            ..LlmTally::default()
        };
        for call in &recording.calls {
            *tally.by_api.entry(call.api).or_default() += 1;
            if call.api != LlmApi::Other {
                tally.calls += 1;
                tally.tokens += call.prompt_tokens;
            }
        }
        LlmRecord {
            tally,
            calls: recording.calls,
        }
    }
}

impl Drop for LlmEndpoint {
    fn drop(&mut self) {
        if let Some(accept) = &self.accept {
            accept.abort();
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Accepts up to `max_connections` at once; the connections live in a
/// set owned by this task, so aborting it closes them all.
async fn accept_loop(listener: tokio::net::TcpListener, shared: Arc<Shared>) {
    let policy = &shared.setup.policy;
    let slots = Arc::new(tokio::sync::Semaphore::new(policy.max_connections.max(1)));
    let header_timeout = policy.header_timeout;
    let mut connections = JoinSet::new();
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors and the like: pause instead of spinning.
                tracing::warn!(error = %e, "LLM endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let shared = shared.clone();
        connections.spawn(async move {
            let _permit = permit;
            let service = service_fn(move |request| handle(request, shared.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// One call: admitted within the run's bounds, read, answered, recorded.
async fn handle(
    request: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let api = LlmApi::from_path(request.uri().path());
    let policy = &shared.setup.policy;
    let body = match Limited::new(request.into_body(), policy.max_request_bytes as usize)
        .collect()
        .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Ok(respond(shared.refuse(
                "the request body is larger than [llm] max_request_bytes, or broke off",
            )))
        }
    };
    if !shared.take_bytes(body.len() as u64) {
        return Ok(respond(shared.refuse(
            "the run's LLM request bytes are spent ([llm] max_run_bytes)",
        )));
    }
    let Some(call) = shared.admit() else {
        return Ok(respond(
            shared.refuse("the run's LLM call budget is spent ([llm] max_calls)"),
        ));
    };
    let answering = shared.clone();
    let reply = tokio::task::spawn_blocking(move || answering.answer(call, api, &body))
        .await
        .unwrap_or_else(|_| Reply::error(500, "api_error", "the endpoint failed to answer"));
    Ok(respond(reply))
}

fn respond(reply: Reply) -> Response<Full<Bytes>> {
    Response::builder()
        .status(reply.status)
        .header("content-type", reply.content_type)
        .body(Full::new(Bytes::from(reply.body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

impl Shared {
    /// The call's 1-based number, or None past `max_calls`.
    fn admit(&self) -> Option<u64> {
        let n = self.admitted.fetch_add(1, Ordering::Relaxed) + 1;
        (n <= self.setup.policy.max_calls).then_some(n)
    }

    /// Counts a refused call and says why, with a status the SDKs do not
    /// retry (a retry would only be refused again).
    fn refuse(&self, why: &str) -> Reply {
        lock(&self.record).refused += 1;
        Reply::error(403, "permission_error", why)
    }

    /// Adds a body to the run's bytes; false once they pass `max_run_bytes`.
    fn take_bytes(&self, n: u64) -> bool {
        let mut record = lock(&self.record);
        record.request_bytes = record.request_bytes.saturating_add(n);
        record.request_bytes <= self.setup.policy.max_run_bytes
    }

    /// Answers a read call and records it (runs on the blocking pool:
    /// token counting is CPU work).
    fn answer(&self, call: u64, api: LlmApi, body: &[u8]) -> Reply {
        let at_ms = self.started.elapsed().as_millis() as u64;
        let parsed = match api {
            LlmApi::Other => Ok(Prompt::default()),
            _ => Prompt::parse(api, body),
        };
        let (prompt, reply, prompt_tokens) = match parsed {
            Ok(prompt) => {
                let prompt_tokens = count_tokens(&prompt.texts);
                let text = match api {
                    LlmApi::OpenAiEmbeddings | LlmApi::OllamaEmbed | LlmApi::OllamaEmbeddings => "",
                    _ => self.setup.answers.answer_for(&prompt.last_user),
                };
                let answer = Answer {
                    call,
                    text,
                    prompt_tokens,
                    answer_tokens: count_tokens(&[text]),
                    embedding_dimensions: self.setup.policy.embedding_dimensions.max(1),
                };
                let reply = api::reply(api, &prompt, &answer);
                (prompt, reply, prompt_tokens)
            }
            Err(message) => (
                Prompt::default(),
                Reply::error(400, "invalid_request_error", &message),
                0,
            ),
        };
        lock(&self.record).calls.push(LlmCall {
            call,
            at_ms,
            api,
            model: prompt.model,
            streamed: prompt.streamed,
            prompt_tokens,
            answer_bytes: reply.body.len() as u64,
            status: reply.status,
        });
        reply
    }
}

/// Tokens of the texts as `o200k_base` counts them (special-token text
/// in a prompt is ordinary text). The encoder loads on first use only,
/// so a run whose suite makes no call never pays for it.
pub fn count_tokens<S: AsRef<str>>(texts: &[S]) -> u64 {
    if texts.iter().all(|t| t.as_ref().is_empty()) {
        return 0;
    }
    let bpe = tiktoken_rs::o200k_base_singleton();
    texts
        .iter()
        .map(|t| bpe.encode_ordinary(t.as_ref()).len() as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_runc_on_a_local_engine_has_an_endpoint() {
        assert_eq!(unavailable_reason(false, true), None);
        assert!(unavailable_reason(true, true).unwrap().contains("gVisor"));
        assert!(unavailable_reason(false, false)
            .unwrap()
            .contains("DOCKER_HOST"));
    }

    #[test]
    fn the_suite_is_pointed_at_the_port() {
        let env = suite_env(8080);
        assert!(env.contains(&"OPENAI_BASE_URL=http://127.0.0.1:8080/v1".to_string()));
        assert!(env.contains(&"ANTHROPIC_BASE_URL=http://127.0.0.1:8080".to_string()));
        assert!(env.contains(&"OLLAMA_HOST=http://127.0.0.1:8080".to_string()));
    }
}
