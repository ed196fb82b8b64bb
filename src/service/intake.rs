//! Intake: requests from core NATS (queue group) or a durable JetStream
//! consumer, as [`Incoming`] messages with what is needed to ack them. In
//! JetStream mode one request is pulled per free queue slot; see the
//! `service` module doc for why.

use super::retry::{self, Backoff, Connected};
use crate::config::NatsConfig;
use crate::contract::subjects::{self, REPLY_HEADER, TRACEPARENT};
use crate::errors::{GenesisError, Result};
use async_nats::jetstream;
use async_nats::HeaderMap;
use futures_util::StreamExt;
use std::sync::Arc;
use tokio::sync::Semaphore;

use super::*;

/// A request as it arrived, whichever way.
pub(super) struct Incoming {
    pub(super) body: bytes::Bytes,
    pub(super) headers: Option<HeaderMap>,
    pub(super) reply: Option<String>,
    /// The JetStream message to acknowledge, in JetStream mode.
    pub(super) jetstream: Option<jetstream::Message>,
    /// A request resumed from the store: the stream sequence of the
    /// message it first came in (its redeliveries are not new requests).
    pub(super) resumed_seq: Option<u64>,
}

impl Incoming {
    /// The JetStream stream sequence of the message: the same for every
    /// delivery of it, to any consumer.
    pub(super) fn stream_seq(&self) -> Option<u64> {
        self.jetstream
            .as_ref()
            .and_then(|m| m.info().ok())
            .map(|info| info.stream_sequence)
            .or(self.resumed_seq)
    }

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
            resumed_seq: None,
        };
        let service = service.clone();
        tasks.spawn(async move {
            service.handle(incoming).await;
            drop(permit);
        });
    }
    Ok(())
}

/// Pulls requests from the durable consumer, one per free queue slot, for
/// as long as the service runs (see the module doc of `service`).
pub(super) async fn intake_jetstream(
    service: &Arc<Service>,
    queue_slots: &Arc<Semaphore>,
    tasks: &tokio_util::task::TaskTracker,
    mut connected: Connected,
) -> Result<()> {
    let nats = &service.config.nats;
    let mut consumer = request_consumer(service).await;
    tracing::info!(stream = %nats.stream, consumer = %nats.consumer, "genesis ready");
    loop {
        // Room first, then a request: nothing is held that cannot be worked on.
        let permit = queue_slots
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| GenesisError::Internal("queue closed".into()))?;
        let msg = next_request(service, &mut consumer, &mut connected).await;
        if msg.info().is_ok_and(|info| info.delivered > 1) {
            service.runner.telemetry.redelivered();
        }
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
            resumed_seq: None,
        };
        let service = service.clone();
        tasks.spawn(async move {
            service.handle(incoming).await;
            drop(permit);
        });
    }
}

/// The request stream and its durable consumer, created if missing; retried
/// while NATS or JetStream is not there yet (a server that just started
/// recovers its streams before it answers).
async fn request_consumer(service: &Service) -> jetstream::consumer::PullConsumer {
    let mut backoff = Backoff::new(&service.config.nats);
    loop {
        match try_request_consumer(service).await {
            Ok(consumer) => return consumer,
            Err(e) => {
                tracing::warn!(error = %e, "JetStream is not ready; retrying");
                backoff.wait().await;
            }
        }
    }
}

async fn try_request_consumer(service: &Service) -> Result<jetstream::consumer::PullConsumer> {
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
    stream
        .get_or_create_consumer(
            &nats.consumer,
            jetstream::consumer::pull::Config {
                durable_name: Some(nats.consumer.clone()),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: nats.ack_wait,
                // The store counts runs a process died in and answers the
                // experiment at this count; JetStream stops at the same.
                max_deliver: i64::from(nats.max_deliver),
                // Pull only what can be worked on; the rest waits in the stream.
                max_ack_pending: (service.config.max_concurrent + service.config.queue_capacity)
                    as i64,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| GenesisError::Nats(format!("creating consumer {}: {e}", nats.consumer)))
}

/// What one pull request gave.
enum Pulled {
    Request(Box<jetstream::Message>),
    /// It expired empty, or was given up when the connection came back.
    Nothing,
    /// It could not be sent or the server refused it (no consumer, no
    /// JetStream): the consumer is looked up (or created) again.
    Failed(String),
}

/// One request, however long it takes to come: an empty pull is renewed; a
/// failing one is retried after a pause, with the consumer created again if
/// it went away (deleted, or lost with a server that restarted without its
/// store).
async fn next_request(
    service: &Service,
    consumer: &mut jetstream::consumer::PullConsumer,
    connected: &mut Connected,
) -> jetstream::Message {
    let mut backoff = Backoff::new(&service.config.nats);
    loop {
        match pull_once(consumer, &service.config.nats, connected).await {
            Pulled::Request(msg) => return *msg,
            Pulled::Nothing => backoff.reset(),
            Pulled::Failed(e) => {
                tracing::warn!(error = %e, "cannot pull from JetStream; retrying");
                backoff.wait().await;
                *consumer = request_consumer(service).await;
            }
        }
    }
}

/// One pull request for one message. A pull still pending when the
/// connection drops is given up once it is back: the server that held it
/// may have restarted and forgotten it.
async fn pull_once(
    consumer: &jetstream::consumer::PullConsumer,
    nats: &NatsConfig,
    connected: &mut Connected,
) -> Pulled {
    // A pull sent on reconnect could be answered to an inbox already given up.
    retry::until_connected(connected).await;
    let pull = consumer
        .batch()
        .max_messages(1)
        .expires(nats.pull_expires)
        .messages()
        .await;
    let mut batch = match pull {
        Ok(batch) => batch,
        Err(e) => return Pulled::Failed(e.to_string()),
    };
    tokio::select! {
        item = batch.next() => match item {
            Some(Ok(msg)) => Pulled::Request(Box::new(msg)),
            Some(Err(e)) => Pulled::Failed(e.to_string()),
            None => Pulled::Nothing,
        },
        _ = retry::until_reconnected(connected) => {
            tracing::info!("NATS reconnected; renewing the pull");
            Pulled::Nothing
        }
    }
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
