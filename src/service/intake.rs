//! Intake: requests from core NATS (queue group) or a durable JetStream
//! consumer, as [`Incoming`] messages with what is needed to ack them.

use crate::contract::subjects::{self, REPLY_HEADER, TRACEPARENT};
use crate::errors::{GenesisError, Result};
use async_nats::jetstream;
use async_nats::HeaderMap;
use futures_util::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;

use super::*;

/// A request as it arrived, whichever way.
pub(super) struct Incoming {
    pub(super) body: bytes::Bytes,
    pub(super) headers: Option<HeaderMap>,
    pub(super) reply: Option<String>,
    /// The JetStream message to acknowledge, in JetStream mode.
    pub(super) jetstream: Option<jetstream::Message>,
}

impl Incoming {
    pub(super) fn traceparent(&self) -> Option<String> {
        self.headers
            .as_ref()
            .and_then(|h| h.get(TRACEPARENT))
            .map(|v| v.as_str().to_owned())
    }
}

pub(super) async fn intake_core(
    service: &Arc<Service>,
    queue_slots: &Arc<Semaphore>,
    tasks: &tokio_util::task::TaskTracker,
) -> Result<()> {
    let mut sub = service
        .client
        .queue_subscribe(subjects::REQUESTS, subjects::QUEUE_GROUP.into())
        .await
        .map_err(|e| GenesisError::Nats(format!("subscribing to {}: {e}", subjects::REQUESTS)))?;
    // Make sure the server registered the subscription before anyone relies on it.
    let _ = service.client.flush().await;
    tracing::info!(subject = subjects::REQUESTS, "genesis ready");
    while let Some(msg) = sub.next().await {
        let permit = queue_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| GenesisError::Internal("queue closed".into()))?;
        let incoming = Incoming {
            body: msg.payload,
            headers: msg.headers,
            reply: msg.reply.map(|r| r.to_string()),
            jetstream: None,
        };
        let service = service.clone();
        tasks.spawn(async move {
            service.handle(incoming).await;
            drop(permit);
        });
    }
    Ok(())
}

pub(super) async fn intake_jetstream(
    service: &Arc<Service>,
    queue_slots: &Arc<Semaphore>,
    tasks: &tokio_util::task::TaskTracker,
) -> Result<()> {
    let nats = &service.config.nats;
    let js = jetstream::new(service.client.clone());
    let stream = js
        .get_or_create_stream(jetstream::stream::Config {
            name: nats.stream.clone(),
            subjects: vec![subjects::REQUESTS.into()],
            ..Default::default()
        })
        .await
        .map_err(|e| GenesisError::Nats(format!("creating stream {}: {e}", nats.stream)))?;
    let consumer = stream
        .get_or_create_consumer(
            &nats.consumer,
            jetstream::consumer::pull::Config {
                durable_name: Some(nats.consumer.clone()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_millis(nats.ack_wait_ms),
                // Pull only what can be worked on; the rest waits in the stream.
                max_ack_pending: (service.config.max_concurrent + service.config.queue_capacity)
                    as i64,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| GenesisError::Nats(format!("creating consumer {}: {e}", nats.consumer)))?;
    // Short-lived pull requests: a request left by a process that died
    // still takes messages until it expires, so it must expire soon.
    let expires = Duration::from_millis(nats.pull_expires_ms.max(1000));
    let mut messages = consumer
        .stream()
        .expires(expires)
        .heartbeat(expires / 4)
        .messages()
        .await
        .map_err(|e| GenesisError::Nats(format!("pulling from {}: {e}", nats.consumer)))?;
    tracing::info!(stream = %nats.stream, consumer = %nats.consumer, "genesis ready");
    while let Some(item) = messages.next().await {
        let msg = match item {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "jetstream pull error; continuing");
                continue;
            }
        };
        let permit = queue_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| GenesisError::Internal("queue closed".into()))?;
        let headers = msg.headers.clone();
        let reply = headers
            .as_ref()
            .and_then(|h| h.get(REPLY_HEADER))
            .map(|v| v.as_str().to_owned());
        let incoming = Incoming {
            body: msg.payload.clone(),
            headers,
            reply,
            jetstream: Some(msg),
        };
        let service = service.clone();
        tasks.spawn(async move {
            service.handle(incoming).await;
            drop(permit);
        });
    }
    Ok(())
}

/// Whether JetStream delivered this message before (to a process that died).
pub(super) fn is_redelivery(incoming: &Incoming) -> bool {
    incoming
        .jetstream
        .as_ref()
        .and_then(|m| m.info().ok())
        .is_some_and(|info| info.delivered > 1)
}

pub(super) async fn ack(incoming: &Incoming, kind: jetstream::AckKind) {
    if let Some(msg) = &incoming.jetstream {
        // double_ack waits for the server's confirmation, so "acked" means acked.
        if let Err(e) = msg.double_ack_with(kind).await {
            tracing::warn!(error = %e, "could not acknowledge a request; it may be redelivered");
        }
    }
}
