//! The id registry hosts share in JetStream mode: a key-value bucket
//! (`[nats] registry`) in which the first host to take an experiment id
//! claims it.
//!
//! Why: each host keeps its own store, so on its own a host cannot tell a
//! duplicate or a reused id that another host accepted; it would run the
//! duplicate again, answer the reused id with the other content's
//! verdict instead of refusing it, and run a request its owner is still
//! resuming when JetStream redelivers the owner's message elsewhere.
//!
//! Shape:
//! - **Claim** before the host's own store is asked: an atomic create of
//!   the key (the id) with the request's fingerprint, the claiming home
//!   and the stream sequence of the message that brought it. A key that
//!   exists names the outcome: the same home (its store decides, as on
//!   one host), another fingerprint (refused, contract §4), or another
//!   home with this fingerprint (below).
//! - **Another home's experiment**: a redelivery of the owner's own
//!   message (same sequence) is only acknowledged; the owner answers it
//!   (its store keeps the request whole and a restart resumes it). Any
//!   other message is a duplicate: it waits (its message kept alive) for
//!   the result the owner puts into the entry when it finishes, and is
//!   answered with it.
//! - **Release**: a claim whose request the host then fails to record (a
//!   full home) is deleted again, so a redelivery can be claimed anew.
//!
//! Every call is retried through NATS outages, as publishing is. In core
//! mode there is no registry: hosts share nothing but the queue group.

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::contract::{ExperimentResult, Request};

use super::retry::Backoff;

/// One claimed id.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Entry {
    fingerprint: String,
    /// `[host] name` and home label of the claiming genesis.
    home: String,
    /// Stream sequence of the message it was claimed for (None: resumed
    /// without one).
    seq: Option<u64>,
    /// The result, once the owner stored it.
    result: Option<ExperimentResult>,
}

/// What a claim found.
pub(super) enum Claim {
    /// This home holds the id (`new`: claimed just now); its store decides.
    Mine { new: bool },
    /// The id is held with other content: refused with this.
    Conflict(Box<ExperimentResult>),
    /// Another home holds it with this content.
    Theirs {
        seq: Option<u64>,
        result: Option<Box<ExperimentResult>>,
    },
}

pub(super) struct Registry {
    kv: kv::Store,
    home: String,
    config: std::sync::Arc<Config>,
}

/// The stream behind a key-value bucket, as the client library would make
/// it (one value per key, rollups, direct gets). Made here because the
/// library's `create_key_value` first asks for the account's limits, and
/// cannot read the answer of nats-server 2.9 (Debian 12's).
fn bucket_stream(bucket: &str) -> jetstream::stream::Config {
    use jetstream::stream::{Config, DiscardPolicy, StorageType};
    Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        storage: StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: DiscardPolicy::New,
        num_replicas: 1,
        ..Default::default()
    }
}

impl Registry {
    /// The bucket, created if missing; waits for JetStream.
    pub(super) async fn open(
        client: &async_nats::Client,
        config: &std::sync::Arc<Config>,
        home_label: &str,
    ) -> Registry {
        let js = jetstream::new(client.clone());
        let bucket = config.nats.registry.clone();
        let mut backoff = Backoff::new(&config.nats);
        let kv = loop {
            let store = match js.get_key_value(&bucket).await {
                Ok(store) => Ok(store),
                Err(_) => match js.get_or_create_stream(bucket_stream(&bucket)).await {
                    Ok(_) => js.get_key_value(&bucket).await.map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                },
            };
            match store {
                Ok(store) => break store,
                Err(e) => {
                    tracing::warn!(bucket = %bucket, error = %e, "the id registry is not ready; retrying");
                    backoff.wait().await;
                }
            }
        };
        Registry {
            kv,
            home: format!("{}@{home_label}", config.host),
            config: config.clone(),
        }
    }

    /// Claims `request`'s id for this home, or says who holds it.
    pub(super) async fn claim(&self, request: &Request, seq: Option<u64>) -> Claim {
        let id = &request.experiment_id;
        let mine = Entry {
            fingerprint: request.fingerprint(),
            home: self.home.clone(),
            seq,
            result: None,
        };
        let value = bytes::Bytes::from(serde_json::to_vec(&mine).unwrap_or_default());
        let mut backoff = Backoff::new(&self.config.nats);
        loop {
            match self.kv.create(id, value.clone()).await {
                Ok(_) => return Claim::Mine { new: true },
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    if let Some(held) = self.entry(id).await {
                        return self.compare(request, &mine, held);
                    }
                    // Deleted in between (a released claim): try again.
                }
                Err(e) => {
                    tracing::warn!(experiment_id = %id, error = %e, "cannot claim the id in the registry; retrying");
                    backoff.wait().await;
                }
            }
        }
    }

    fn compare(&self, request: &Request, mine: &Entry, held: Entry) -> Claim {
        if held.fingerprint != mine.fingerprint {
            return Claim::Conflict(Box::new(ExperimentResult::id_reused(
                &self.config.host,
                request,
            )));
        }
        if held.home == self.home {
            return Claim::Mine { new: false };
        }
        Claim::Theirs {
            seq: held.seq,
            result: held.result.map(Box::new),
        }
    }

    /// The entry of `id`; None when it is absent or deleted. Retried
    /// through outages.
    async fn entry(&self, id: &str) -> Option<Entry> {
        let mut backoff = Backoff::new(&self.config.nats);
        loop {
            match self.kv.entry(id).await {
                Ok(Some(e)) if e.operation == kv::Operation::Put => {
                    return serde_json::from_slice(&e.value).ok()
                }
                Ok(_) => return None,
                Err(e) => {
                    tracing::warn!(experiment_id = %id, error = %e, "cannot read the registry; retrying");
                    backoff.wait().await;
                }
            }
        }
    }

    /// Gives up a claim made just now whose request this host could not
    /// record, so a redelivery can be claimed again (by any host).
    pub(super) async fn release(&self, id: &str) {
        if let Err(e) = self.kv.delete(id).await {
            tracing::warn!(experiment_id = %id, error = %e, "could not release the id's claim");
        }
    }

    /// Puts this home's result into its entry, for duplicates waiting on
    /// other hosts.
    pub(super) async fn settle(
        &self,
        request: &Request,
        seq: Option<u64>,
        result: &ExperimentResult,
    ) {
        let id = &request.experiment_id;
        let entry = Entry {
            fingerprint: request.fingerprint(),
            home: self.home.clone(),
            seq,
            result: Some(result.clone()),
        };
        let value = bytes::Bytes::from(serde_json::to_vec(&entry).unwrap_or_default());
        let mut backoff = Backoff::new(&self.config.nats);
        while let Err(e) = self.kv.put(id, value.clone()).await {
            tracing::warn!(experiment_id = %id, error = %e, "cannot store the result in the registry; retrying");
            backoff.wait().await;
        }
    }

    /// Waits until the owner of `id` put its result into the entry.
    pub(super) async fn result_of(&self, id: &str) -> ExperimentResult {
        let mut backoff = Backoff::new(&self.config.nats);
        loop {
            if let Some(result) = self.entry(id).await.and_then(|e| e.result) {
                return result;
            }
            // Watch from here; a restart of the server ends the watch, and
            // the entry is read again before the next one.
            match self.kv.watch(id).await {
                Ok(mut watch) => {
                    let limit = self.config.nats.ack_wait;
                    while let Ok(Some(Ok(change))) = tokio::time::timeout(limit, watch.next()).await
                    {
                        let entry: Option<Entry> = serde_json::from_slice(&change.value).ok();
                        if let Some(result) = entry.and_then(|e| e.result) {
                            return result;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(experiment_id = %id, error = %e, "cannot watch the registry; retrying");
                    backoff.wait().await;
                }
            }
        }
    }
}
