//! Publishing: results, progress and rollback events, with trace and
//! dedup headers, retried until the server takes them.

use super::retry::Backoff;
use crate::config::NatsConfig;
use crate::contract::subjects::{self, TRACEPARENT};
use crate::contract::Progress as ProgressDoc;
use crate::contract::Stage;
use crate::errors::Result;
use crate::runner::Progress;
use crate::store::{Status, Store};
use async_nats::{Client, HeaderMap};

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
