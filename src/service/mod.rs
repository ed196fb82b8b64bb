//! `genesis serve`: the NATS experiment service.
//!
//! Shape, and why:
//! - **Intake** subscribes to `agent.events.experiment.request.*` in queue
//!   group `genesis` (core mode) or pulls from a durable JetStream consumer
//!   (`[nats] jetstream = true`). Each message takes a *queue slot*
//!   (`max_concurrent + queue_capacity` of them): when all are taken, intake
//!   stops reading, so a burst backs up in NATS, not in memory.
//! - **Workers**: a task per message waits for one of `max_concurrent` *run
//!   slots*, so never more experiments (and so containers) run than allowed.
//! - **Answers** go to `completed.{id}` / `failed.{id}`, the request's reply
//!   subject, and `genesis.rollback.event` on rollback, each with the
//!   request's `traceparent` and a `Nats-Msg-Id`. Publishing is retried
//!   until the server has it (flush), so a NATS restart mid-run delays
//!   answers but loses none.
//! - **JetStream** messages are acknowledged only after the result is stored
//!   and published; a running experiment sends progress acks so it is not
//!   redelivered while alive. A redelivered or duplicate request is answered
//!   from the store (`Runner::accept`), never run twice.
//! - **Recovery** at start: this home's labelled containers are reaped;
//!   experiments left queued/running by a dead process end as `failed` /
//!   `internal` in core mode, and run again from the redelivered message in
//!   JetStream mode.
//! - **Shutdown** on SIGINT/SIGTERM: intake stops, in-flight experiments get
//!   `drain_timeout_ms` to finish, then are killed and marked.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::Client;
use tokio::sync::{watch, Mutex, Notify, Semaphore};
use tracing::Instrument;

use crate::config::Config;
use crate::contract::subjects::{self};
use crate::contract::{ErrorKind, ExperimentResult, Recommendation, Request, RollbackEvent};
use crate::errors::{GenesisError, Result};
use crate::runner::{Admission, Runner};
use crate::store::{Status, Store};

mod intake;
use intake::*;
mod publish;
pub use publish::*;

/// State shared by intake and workers.
struct Service {
    runner: Arc<Runner>,
    client: Client,
    config: Arc<Config>,
    run_slots: Arc<Semaphore>,
    /// Experiments running in this process, so a duplicate can wait for one.
    running: Mutex<HashMap<String, Arc<Notify>>>,
}

/// Runs the service until SIGINT/SIGTERM, then drains.
pub async fn serve(config: Arc<Config>) -> Result<()> {
    let store = crate::store::open_store(&config).await?;
    let runner = Arc::new(Runner::new(config.clone(), store.clone()).await?);
    let client = connect(&config).await?;
    runner.set_analysis_peer(client.clone());
    let service = Arc::new(Service {
        runner: runner.clone(),
        client: client.clone(),
        config: config.clone(),
        run_slots: Arc::new(Semaphore::new(config.max_concurrent)),
        running: Mutex::new(HashMap::new()),
    });
    service.recover().await?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let scheduler = start_jobs(&config, &store, &client, stop_rx.clone());
    let queue_slots = Arc::new(Semaphore::new(
        config.max_concurrent + config.queue_capacity,
    ));
    let tasks = tokio_util::task::TaskTracker::new();
    tracing::info!(url = %config.nats.url, jetstream = config.nats.jetstream, max_concurrent = config.max_concurrent, "genesis serving");

    let intake = async {
        if config.nats.jetstream {
            intake_jetstream(&service, &queue_slots, &tasks).await
        } else {
            intake_core(&service, &queue_slots, &tasks).await
        }
    };
    tokio::select! {
        result = intake => result?,
        _ = shutdown_signal() => tracing::info!("shutdown requested; draining"),
    }
    let _ = stop_tx.send(true);
    tasks.close();
    let drain = Duration::from_millis(config.drain_timeout_ms);
    if tokio::time::timeout(drain, tasks.wait()).await.is_err() {
        tracing::warn!(
            drain_ms = config.drain_timeout_ms,
            "drain time over; stopping what still runs"
        );
        service.abort_in_flight().await;
    }
    let _ = scheduler.await;
    let _ = client.flush().await;
    tracing::info!("genesis stopped");
    Ok(())
}

/// The scheduled jobs (cleanup, analysis, report, health) run beside intake
/// on the wall clock, publishing on this service's connection.
fn start_jobs(
    config: &Arc<Config>,
    store: &Store,
    client: &Client,
    stop: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let ctx = crate::jobs::JobContext {
        config: config.clone(),
        store: store.clone(),
        nats: Some(client.clone()),
        clock: Arc::new(crate::jobs::SystemClock),
    };
    crate::jobs::spawn_scheduler(ctx, stop)
}

async fn connect(config: &Config) -> Result<Client> {
    let url = config.nats.url.clone();
    async_nats::ConnectOptions::new()
        .name("genesis")
        .retry_on_initial_connect()
        .max_reconnects(None)
        .event_callback(|event| async move {
            tracing::info!(%event, "nats connection event");
        })
        .connect(url.as_str())
        .await
        .map_err(|e| GenesisError::Nats(format!("connecting to {url}: {e}")))
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

impl Service {
    /// One request, start to answer. Never panics the service: every path
    /// ends in an answer (or, for unusable junk, a log line).
    async fn handle(self: &Arc<Self>, incoming: Incoming) {
        let trace = incoming.traceparent();
        let request = match Request::parse(&incoming.body) {
            Ok(r) => r,
            Err(invalid) => {
                tracing::warn!(reason = %invalid, "rejected request");
                let id = invalid.experiment_id.clone().unwrap_or_default();
                let result = ExperimentResult::failed(
                    &self.config.host,
                    &id,
                    invalid.instance_id.as_deref().unwrap_or(""),
                    ErrorKind::InvalidRequest,
                    invalid.message.clone(),
                );
                self.answer(
                    &result,
                    trace.as_deref(),
                    incoming.reply.as_deref(),
                    !id.is_empty(),
                )
                .await;
                ack(&incoming, jetstream::AckKind::Ack).await;
                return;
            }
        };
        let span = tracing::info_span!("experiment", experiment_id = %request.experiment_id, instance_id = %request.instance_id);
        self.handle_request(&request, &incoming, trace.as_deref())
            .instrument(span)
            .await;
    }

    async fn handle_request(
        self: &Arc<Self>,
        request: &Request,
        incoming: &Incoming,
        trace: Option<&str>,
    ) {
        let admission = match self.runner.accept(request, Status::Queued).await {
            Ok(a) => a,
            Err(e) => {
                // The store is unusable: do not ack, so JetStream redelivers.
                tracing::error!(error = %e, "cannot record the request");
                return;
            }
        };
        let result = match admission {
            Admission::New => self.run_new(request, incoming, trace).await,
            Admission::Finished(result) => {
                if is_redelivery(incoming) && self.was_published(&request.experiment_id).await {
                    // Our own earlier delivery was answered; only its ack was lost.
                    tracing::info!("redelivery of an answered request; acknowledging only");
                    ack(incoming, jetstream::AckKind::Ack).await;
                    return;
                }
                tracing::info!("duplicate of a finished experiment; answering from the store");
                *result
            }
            Admission::InFlight(_) => match self.wait_for(&request.experiment_id).await {
                Some(result) => result,
                // Running in another live process: that process answers.
                None => {
                    ack(incoming, jetstream::AckKind::Ack).await;
                    return;
                }
            },
            Admission::Conflict(result) => *result,
        };
        self.answer(&result, trace, incoming.reply.as_deref(), true)
            .await;
        self.mark_published(&request.experiment_id).await;
        ack(incoming, jetstream::AckKind::Ack).await;
    }

    async fn was_published(&self, id: &str) -> bool {
        let key = id.to_owned();
        matches!(
            self.runner.store.call(move |s| s.get(&key)).await,
            Ok(Some(r)) if r.published_at.is_some()
        )
    }

    async fn mark_published(&self, id: &str) {
        let key = id.to_owned();
        let marked = self
            .runner
            .store
            .call(move |s| {
                if let Some(mut r) = s.get(&key)? {
                    if r.published_at.is_none() {
                        r.published_at = Some(crate::runner::now_ms());
                        s.put_record(&r)?;
                    }
                }
                Ok(())
            })
            .await;
        if let Err(e) = marked {
            tracing::warn!(error = %e, "could not record that the result was published");
        }
    }

    async fn run_new(
        self: &Arc<Self>,
        request: &Request,
        incoming: &Incoming,
        trace: Option<&str>,
    ) -> ExperimentResult {
        let done = Arc::new(Notify::new());
        self.running
            .lock()
            .await
            .insert(request.experiment_id.clone(), done.clone());
        let keepalive = incoming.jetstream.as_ref().map(|msg| {
            let msg = msg.clone();
            let every = Duration::from_millis(self.config.nats.progress_ack_ms);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let _ = msg.ack_with(jetstream::AckKind::Progress).await;
                }
            })
        });
        let _slot = self.run_slots.acquire().await;
        let progress = NatsProgress {
            client: self.client.clone(),
            traceparent: trace.map(str::to_owned),
        };
        let result = self.runner.run(request, &progress).await;
        if let Some(k) = keepalive {
            k.abort();
        }
        self.running.lock().await.remove(&request.experiment_id);
        done.notify_waiters();
        result
    }

    /// Waits for an experiment this process is running; `None` when it runs
    /// elsewhere (another process on the shared store).
    async fn wait_for(&self, id: &str) -> Option<ExperimentResult> {
        loop {
            let notify = self.running.lock().await.get(id).cloned();
            let Some(notify) = notify else {
                let key = id.to_owned();
                let record = self
                    .runner
                    .store
                    .call(move |s| s.get(&key))
                    .await
                    .ok()
                    .flatten()?;
                return record.result().filter(|_| record.status.is_final());
            };
            let notified = notify.notified();
            // Re-check after arming the notification, so a finish in between is not missed.
            if !self.running.lock().await.contains_key(id) {
                continue;
            }
            notified.await;
        }
    }

    /// Publishes a result everywhere it belongs; retries until NATS has it.
    async fn answer(
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
            targets.push((subject, body.clone(), "result"));
        }
        if let Some(reply) = reply {
            targets.push((reply.to_owned(), body.clone(), "reply"));
        }
        if subjects_ok && result.recommendation() == Recommendation::Rollback {
            let event = RollbackEvent {
                experiment_id: id.to_owned(),
                reasons: match result {
                    ExperimentResult::Success(c) => c.reasons.clone(),
                    ExperimentResult::Failed(f) => vec![f.error.clone()],
                },
                metrics: match result {
                    ExperimentResult::Success(c) => Some(c.metrics.clone()),
                    ExperimentResult::Failed(_) => None,
                },
            };
            let json = serde_json::to_vec(&event).unwrap_or_default();
            targets.push((subjects::ROLLBACK.into(), json.into(), "rollback"));
            tracing::info!(experiment_id = id, "rollback_initiated");
        }
        for (subject, body, kind) in targets {
            let headers = headers(trace, Some(&format!("{id}:{kind}")));
            publish_until_sent(&self.client, subject, headers, body).await;
        }
        tracing::info!(experiment_id = id, recommendation = %result.recommendation(), "metrics_reported");
    }

    /// At start: reap this home's containers; settle experiments a dead process left behind.
    async fn recover(&self) -> Result<()> {
        let containers = crate::sandbox::labelled_containers(
            &self.runner.docker,
            Some(&self.runner.home_label),
            None,
        )
        .await?;
        for (id, experiment) in containers {
            tracing::info!(container = %id, experiment_id = %experiment, "reaping a container left by a previous run");
            crate::sandbox::remove_container(&self.runner.docker, &id).await?;
            let (exp, path) = (
                experiment.clone(),
                self.runner.sandbox_dir(&experiment).display().to_string(),
            );
            let _ = self
                .runner
                .store
                .call(move |s| {
                    s.add_history(&exp, "cleanup", &path, 0, "container reaped at start")
                })
                .await;
        }
        if self.config.nats.jetstream {
            // The unacknowledged requests come back and run again.
            return Ok(());
        }
        let store = self.runner.store.clone();
        let stranded: Vec<String> = store
            .call(|s| {
                let mut ids = s.ids_with_status(Status::Running)?;
                ids.extend(s.ids_with_status(Status::Queued)?);
                Ok(ids)
            })
            .await?;
        for id in stranded {
            let key = id.clone();
            let Some(record) = store.call(move |s| s.get(&key)).await? else {
                continue;
            };
            let me = &self.runner.instance;
            if !crate::runner::owner_is_dead(&record.owner, me) && record.owner != *me {
                continue;
            }
            let request = record.request()?;
            let result = ExperimentResult::failed(
                &self.config.host,
                &id,
                &record.instance_id,
                ErrorKind::Internal,
                "interrupted by restart",
            );
            self.runner.finish(&request, &result, None, None).await?;
            self.answer(&result, None, None, true).await;
        }
        Ok(())
    }

    /// After the drain time: kill what still runs and record it.
    async fn abort_in_flight(&self) {
        let ids: Vec<String> = self.running.lock().await.keys().cloned().collect();
        for id in ids {
            if let Ok(containers) = crate::sandbox::labelled_containers(
                &self.runner.docker,
                Some(&self.runner.home_label),
                Some(&id),
            )
            .await
            {
                for (cid, _) in containers {
                    let _ = crate::sandbox::remove_container(&self.runner.docker, &cid).await;
                }
            }
            if self.config.nats.jetstream {
                continue; // Not acked: it runs again after restart.
            }
            let key = id.clone();
            if let Ok(Some(record)) = self.runner.store.call(move |s| s.get(&key)).await {
                if let Ok(request) = record.request() {
                    let result = ExperimentResult::failed(
                        &self.config.host,
                        &id,
                        &record.instance_id,
                        ErrorKind::Internal,
                        "interrupted by shutdown after the drain time",
                    );
                    let _ = self.runner.finish(&request, &result, None, None).await;
                    self.answer(&result, None, None, true).await;
                }
            }
        }
    }
}
