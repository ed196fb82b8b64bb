//! A request's id among several hosts (JetStream mode): claimed in the
//! shared registry before this host's store decides (see `registry.rs`),
//! and what a host does with a request whose id another home holds.
//! Also the delivery a resumed experiment answers to.

use std::sync::Arc;

use async_nats::jetstream;

use crate::contract::{ExperimentResult, Request};
use crate::store::Delivery;

use super::registry::Claim;
use super::*;

impl Service {
    /// Claims the request's id for this home. `Some(claimed_now)` when
    /// this home holds it and its store decides (`claimed_now`: the claim
    /// is new, to be released if the store cannot record the request);
    /// `None` when the request was dealt with here: refused (the id holds
    /// other content), acknowledged (a redelivery of the owner's message:
    /// the owner answers it) or answered with the owner's result (a
    /// duplicate). Without a registry (core mode) this home decides alone.
    pub(super) async fn claim(
        self: &Arc<Self>,
        request: &Request,
        incoming: &Incoming,
        trace: Option<&str>,
    ) -> Option<bool> {
        let Some(registry) = &self.registry else {
            return Some(false);
        };
        let reply = incoming.reply.as_deref();
        match registry.claim(request, incoming.stream_seq()).await {
            Claim::Mine { new } => Some(new),
            Claim::Conflict(refusal) => {
                tracing::warn!("refused: another host holds the id with other content");
                self.reject(&refusal, trace, reply).await;
                ack(incoming, jetstream::AckKind::Ack).await;
                None
            }
            Claim::Theirs { seq, .. } if seq.is_some() && seq == incoming.stream_seq() => {
                tracing::info!(
                    "a redelivery of a request another host holds and answers; acknowledging only"
                );
                ack(incoming, jetstream::AckKind::Ack).await;
                None
            }
            Claim::Theirs { result, .. } => {
                let result = match result {
                    Some(result) => *result,
                    None => self.await_their_result(registry, request, incoming).await,
                };
                tracing::info!("duplicate of another host's experiment; answering with its result");
                self.answer(&result, trace, reply, true).await;
                ack(incoming, jetstream::AckKind::Ack).await;
                None
            }
        }
    }

    /// Waits, keeping the message alive, for the owner's result.
    async fn await_their_result(
        &self,
        registry: &super::registry::Registry,
        request: &Request,
        incoming: &Incoming,
    ) -> ExperimentResult {
        tracing::info!("duplicate of an experiment another host runs; waiting for its result");
        let keepalive = self.keepalive(incoming);
        let result = registry.result_of(&request.experiment_id).await;
        if let Some(k) = keepalive {
            k.abort();
        }
        result
    }

    /// Gives up a claim made for a request this host could not record.
    pub(super) async fn release(&self, id: &str, claimed_now: bool) {
        if let (Some(registry), true) = (&self.registry, claimed_now) {
            registry.release(id).await;
        }
    }

    /// Puts this home's result where duplicates on other hosts wait for it.
    pub(super) async fn settle(
        &self,
        request: &Request,
        incoming: &Incoming,
        result: &ExperimentResult,
    ) {
        if let Some(registry) = &self.registry {
            registry
                .settle(request, incoming.stream_seq(), result)
                .await;
        }
    }

    /// A request the store could not record: in JetStream mode it is not
    /// acknowledged, so it is redelivered (to any host); a core-mode
    /// request has no second chance, so its sender is told why.
    pub(super) async fn unrecorded(
        &self,
        request: &Request,
        incoming: &Incoming,
        trace: Option<&str>,
        error: &crate::errors::GenesisError,
    ) {
        if self.config.nats.jetstream {
            return;
        }
        let result = ExperimentResult::failed(
            &self.config.host,
            &request.experiment_id,
            &request.instance_id,
            error.kind(),
            format!("{error}; the request was not recorded"),
        );
        self.answer(&result, trace, incoming.reply.as_deref(), true)
            .await;
    }

    /// Keeps how an accepted request's message reached this host (JetStream
    /// mode), so a process resuming it after a crash answers its reply
    /// subject with its trace, and knows its redeliveries.
    pub(super) async fn remember_delivery(
        &self,
        id: &str,
        incoming: &Incoming,
        trace: Option<&str>,
    ) {
        if incoming.jetstream.is_none() {
            return;
        }
        let delivery = Delivery {
            seq: incoming.stream_seq(),
            reply: incoming.reply.clone(),
            traceparent: trace.map(str::to_owned),
        };
        let key = id.to_owned();
        if let Err(e) = self
            .runner
            .store
            .call(move |s| s.put_delivery(&key, &delivery))
            .await
        {
            tracing::warn!(experiment_id = %id, error = %e, "could not keep the request's delivery; a resumed run would answer only its result subjects");
        }
    }
}
