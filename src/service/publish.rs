//! Publishing: results, progress and rollback events, with trace and
//! dedup headers, retried until the server takes them.

use super::retry::Backoff;
use crate::config::NatsConfig;
use crate::contract::subjects::{self, TRACEPARENT};
use crate::contract::Progress as ProgressDoc;
use crate::contract::{ExperimentResult, Reason, Recommendation, Rejected, RollbackEvent, Stage};
use crate::errors::Result;
use crate::runner::Progress;
use crate::store::{Status, Store};
use async_nats::{Client, HeaderMap};

use super::Service;

pub(super) fn headers(trace: Option<&str>, msg_id: Option<&str>) -> HeaderMap {
    let mut h = HeaderMap::new();
    if let Some(t) = trace {
        h.insert(TRACEPARENT, t);
    }
    if let Some(id) = msg_id {
        h.insert("Nats-Msg-Id", id);
    }
    h
}

/// Publishes and waits until the server has the message, retrying across
/// reconnects: an answer is never dropped because NATS was briefly away.
pub async fn publish_until_sent(
    client: &Client,
    nats: &NatsConfig,
    subject: String,
    headers: HeaderMap,
    body: bytes::Bytes,
) {
    let mut backoff = Backoff::new(nats);
    loop {
        let sent = client
            .publish_with_headers(subject.clone(), headers.clone(), body.clone())
            .await;
        if sent.is_ok() && client.flush().await.is_ok() {
            return;
        }
        tracing::warn!(%subject, "publish not confirmed; retrying after reconnect");
        backoff.wait().await;
    }
}

/// Progress to `progress.{id}` plus a log event named after the stage.
pub(super) struct NatsProgress {
    pub(super) client: Client,
    pub(super) traceparent: Option<String>,
}

impl Progress for NatsProgress {
    fn stage(&self, experiment_id: &str, stage: Stage, detail: &str) {
        tracing::info!(experiment_id, stage = stage.as_str(), detail, "{stage}");
        let doc = ProgressDoc {
            experiment_id: experiment_id.to_owned(),
            stage,
            timestamp: chrono::Utc::now(),
        };
        let body = serde_json::to_vec(&doc).unwrap_or_default();
        let client = self.client.clone();
        let subject = subjects::progress(experiment_id);
        let headers = headers(self.traceparent.as_deref(), None);
        // Progress is best effort and must not slow the experiment down.
        tokio::spawn(async move {
            let _ = client
                .publish_with_headers(subject, headers, body.into())
                .await;
        });
    }
}

/// Counts for the health document: what runs and what waits, from the store.
pub async fn active_and_queued(store: &Store) -> Result<(u64, u64)> {
    store
        .call(|s| {
            Ok((
                s.ids_with_status(Status::Running)?.len() as u64,
                s.ids_with_status(Status::Queued)?.len() as u64,
            ))
        })
        .await
}

impl Service {
    /// Answers a refused request on the sender's `rejected` subject (and its
    /// reply subject), never on the experiment's own subjects and never as
    /// a rollback event: the id belongs to someone else's experiment.
    pub(super) async fn reject(
        &self,
        result: &ExperimentResult,
        trace: Option<&str>,
        reply: Option<&str>,
    ) {
        let ExperimentResult::Failed(failed) = result else {
            return;
        };
        let doc = Rejected {
            experiment_id: failed.experiment_id.clone(),
            instance_id: failed.instance_id.clone(),
            error_kind: failed.error_kind,
            error: failed.error.clone(),
            timestamp: failed.timestamp,
        };
        let body = bytes::Bytes::from(serde_json::to_vec(&doc).unwrap_or_default());
        let mut targets = vec![subjects::rejected(&failed.instance_id)];
        targets.extend(reply.map(str::to_owned));
        for subject in targets {
            publish_until_sent(
                &self.client,
                &self.config.nats,
                subject,
                headers(trace, None),
                body.clone(),
            )
            .await;
        }
    }

    /// Publishes a result everywhere it belongs; retries until NATS has it.
    pub(super) async fn answer(
        &self,
        result: &ExperimentResult,
        trace: Option<&str>,
        reply: Option<&str>,
        subjects_ok: bool,
    ) {
        let id = result.experiment_id();
        let body = bytes::Bytes::from(result.to_json());
        let mut targets = Vec::new();
        if subjects_ok {
            let subject = match result {
                ExperimentResult::Success(_) => subjects::completed(id),
                ExperimentResult::Failed(_) => subjects::failed(id),
            };
            targets.push((subject, body.clone(), "result".to_owned()));
        }
        if let Some(reply) = reply {
            // Each requester's copy is its own message: two requests with
            // one id (a duplicate) must not share a Nats-Msg-Id, or a
            // stream that keeps the requesters' inboxes drops one copy.
            targets.push((reply.to_owned(), body.clone(), format!("reply:{reply}")));
        }
        if subjects_ok && result.recommendation() == Recommendation::Rollback {
            let event = RollbackEvent {
                experiment_id: id.to_owned(),
                reasons: match result {
                    ExperimentResult::Success(c) => c.reasons.clone(),
                    ExperimentResult::Failed(f) => vec![Reason::unruled(f.error.clone())],
                },
                metrics: match result {
                    ExperimentResult::Success(c) => Some(c.metrics.clone()),
                    ExperimentResult::Failed(_) => None,
                },
            };
            let json = serde_json::to_vec(&event).unwrap_or_default();
            targets.push((
                subjects::ROLLBACK.into(),
                json.into(),
                "rollback".to_owned(),
            ));
            tracing::info!(experiment_id = id, "rollback_initiated");
        }
        for (subject, body, kind) in targets {
            let headers = headers(trace, Some(&format!("{id}:{kind}")));
            publish_until_sent(&self.client, &self.config.nats, subject, headers, body).await;
        }
        tracing::info!(experiment_id = id, recommendation = %result.recommendation(), "metrics_reported");
    }
}
