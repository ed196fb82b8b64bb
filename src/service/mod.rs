//! `genesis serve`: the NATS experiment service.
//!
//! Shape, and why:
//! - **Connection**: genesis may start before its NATS server; it says it is
//!   waiting, connects when the server is up, and only then subscribes and
//!   recovers. The client reconnects forever; the connection's events are a
//!   watch ([`retry`]) that pulls and retries await.
//! - **Intake** subscribes to `agent.events.experiment.request.*` in queue
//!   group `genesis` (core mode) or pulls from a durable JetStream consumer
//!   (`[nats] jetstream = true`). Each message takes a *queue slot*
//!   (`max_concurrent + queue_capacity` of them): when all are taken, intake
//!   stops reading, so a burst backs up in NATS, not in memory. In JetStream
//!   mode a slot is taken *before* one request is pulled, so nothing is held
//!   that is not being worked on (and progress-acked), and hosts sharing the
//!   consumer take requests one by one. A pull lost with a restarting server
//!   is renewed as soon as the connection is back; a consumer that went away
//!   (deleted, or lost with the server's store) is created again: intake
//!   never ends while the service runs.
//! - **Workers**: a task per message waits for one of `max_concurrent` *run
//!   slots*, so never more experiments (and so containers) run than allowed.
//! - **Answers** go to `completed.{id}` / `failed.{id}`, the request's reply
//!   subject, and `genesis.rollback.event` on rollback, each with the
//!   request's `traceparent` and a `Nats-Msg-Id`. Publishing is retried
//!   until the server has it (flush), so a NATS restart mid-run delays
//!   answers but loses none.
//! - **JetStream** messages are acknowledged only after the result is stored
//!   and published; an experiment sends progress acks from delivery until
//!   its answer is out (publishing retries included), so it is not
//!   redelivered while alive. A duplicate request is answered from the
//!   store (`Runner::accept`), never run twice; a redelivery of a request
//!   this process is handling or has answered (its ack, or progress acks
//!   while NATS was away, came too late) is only acknowledged, so it is
//!   never answered twice.
//! - **Recovery** at start: this home's labelled containers are reaped;
//!   experiments left queued/running by a dead process end as `failed` /
//!   `internal` in core mode, and run again from the redelivered message in
//!   JetStream mode they are resumed at once from the store (which keeps
//!   each request whole), so no one waits out `ack_wait`; their
//!   redeliveries, when they come, find them running or answered and are
//!   only acknowledged. Run disks left mounted are released.
//!   The store keeps how each request was delivered (sequence, reply
//!   subject, trace), so a resumed run answers where the first would have.
//! - **Several hosts** (JetStream) claim ids in a shared key-value bucket
//!   before their own store decides (`registry.rs`, `claims.rs`): a
//!   reused id is refused and a duplicate answered with the owner's result
//!   whichever host it reaches, and the owner's redelivered message is left
//!   to the owner.
//! - **Host faults** (a full home, an engine away) are waited out, never
//!   answered (`runner/patience.rs`).
//! - **Shutdown** on SIGINT/SIGTERM: intake stops, in-flight experiments get
//!   `drain_timeout_ms` to finish, then are killed and marked.

use std::collections::HashMap;
use std::sync::Arc;

use async_nats::jetstream;
use async_nats::Client;
use tokio::sync::{watch, Mutex, Notify, Semaphore};
use tracing::Instrument;

use crate::config::{Config, NatsConfig};
use crate::contract::{ErrorKind, ExperimentResult, Request};
use crate::errors::{GenesisError, Result};
use crate::runner::{Admission, Runner};
use crate::store::{Status, Store};

mod http;
mod intake;
use intake::*;
mod metrics_record;
mod publish;
pub use publish::*;
mod claims;
mod recovery;
mod registry;
mod retry;
use retry::Connected;

/// An experiment from its first delivery to its answer (see
/// [`Service::begin_handling`]).
struct Handling {
    done: Arc<Notify>,
    /// Progress acks of its JetStream message, in JetStream mode.
    keepalive: Option<tokio::task::JoinHandle<()>>,
}

/// What the service knows of an experiment it is handling.
struct InHand {
    /// Notified once it is answered.
    done: Arc<Notify>,
    /// Stream sequence of its JetStream message (JetStream mode): another
    /// delivery of the same message is not another request.
    seq: Option<u64>,
}

/// State shared by intake and workers.
struct Service {
    runner: Arc<Runner>,
    client: Client,
    config: Arc<Config>,
    run_slots: Arc<Semaphore>,
    /// Experiments this process is handling (queued, running or being
    /// answered), so a duplicate or a redelivery can wait for one.
    running: Mutex<HashMap<String, InHand>>,
    /// The ids hosts sharing the consumer claim (JetStream mode).
    registry: Option<registry::Registry>,
    /// Told whenever an experiment enters `running`.
    registered: Notify,
}

/// Runs the service until SIGINT/SIGTERM, then drains.
pub async fn serve(config: Arc<Config>) -> Result<()> {
    let store = crate::store::open_store(&config).await?;
    let runner = Arc::new(Runner::new(config.clone(), store.clone()).await?.patient());
    let (client, connected) = connect(&config, &runner.telemetry).await?;
    let http = http::start(&runner, &client).await?;
    tokio::select! {
        waited = wait_for_nats(&client, connected.clone(), &config.nats) => waited?,
        _ = shutdown_signal() => {
            tracing::info!("shutdown requested before NATS was reachable");
            return Ok(());
        }
    }
    runner.set_analysis_peer(client.clone());
    let registry = if config.nats.jetstream {
        Some(registry::Registry::open(&client, &config, &runner.home_label).await)
    } else {
        None
    };
    let service = Arc::new(Service {
        runner: runner.clone(),
        client: client.clone(),
        config: config.clone(),
        run_slots: Arc::new(Semaphore::new(config.max_concurrent)),
        running: Mutex::new(HashMap::new()),
        registry,
        registered: Notify::new(),
    });
    let resume = service.recover().await?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let scheduler = start_jobs(&config, &store, &client, stop_rx.clone());
    let queue_slots = Arc::new(Semaphore::new(
        config.max_concurrent + config.queue_capacity,
    ));
    let tasks = tokio_util::task::TaskTracker::new();
    for (request, delivery) in resume {
        let service = service.clone();
        tasks.spawn(async move { service.resume(request, delivery).await });
    }
    tracing::info!(url = %config.nats.url, jetstream = config.nats.jetstream, max_concurrent = config.max_concurrent, "genesis serving");

    let intake = async {
        if config.nats.jetstream {
            intake_jetstream(&service, &queue_slots, &tasks, connected).await
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
    let drain = config.drain_timeout;
    if tokio::time::timeout(drain, tasks.wait()).await.is_err() {
        tracing::warn!(
            drain_ms = config.drain_timeout.as_millis(),
            "drain time over; stopping what still runs"
        );
        service.abort_in_flight().await;
    }
    let _ = scheduler.await;
    if let Some(http) = http {
        http.abort();
    }
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

/// A client that connects (and reconnects) for as long as it takes, and
/// the watch its connection events feed.
async fn connect(
    config: &Config,
    telemetry: &Arc<crate::telemetry::Telemetry>,
) -> Result<(Client, Connected)> {
    let url = config.nats.url.clone();
    let (tx, rx) = watch::channel(false);
    let tx = Arc::new(tx);
    let telemetry = telemetry.clone();
    telemetry.nats_connected(false);
    let client = crate::nats_auth::connect_options(&config.nats, "genesis")?
        .retry_on_initial_connect()
        .max_reconnects(None)
        .event_callback(move |event| {
            let tx = tx.clone();
            let telemetry = telemetry.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        tx.send_replace(true);
                        telemetry.nats_connected(true);
                    }
                    async_nats::Event::Disconnected => {
                        tx.send_replace(false);
                        telemetry.nats_connected(false);
                    }
                    _ => {}
                }
                tracing::info!(%event, "nats connection event");
            }
        })
        .connect(url.as_str())
        .await
        .map_err(|e| GenesisError::Nats(format!("connecting to {url}: {e}")))?;
    Ok((client, rx))
}

/// Returns once the client is connected; says so when it has to wait.
/// Fails, instead of waiting forever, when the server refuses genesis's
/// credentials or TLS: no retry with the same options can succeed.
async fn wait_for_nats(client: &Client, mut connected: Connected, nats: &NatsConfig) -> Result<()> {
    if client.connection_state() == async_nats::connection::State::Connected {
        return Ok(());
    }
    let url = &nats.url;
    tracing::warn!(
        %url,
        "waiting for NATS at {url}: not reachable yet; genesis connects as soon as it is"
    );
    tokio::select! {
        _ = retry::until_connected(&mut connected) => {}
        refused = retry::first_refusal(nats) => return Err(refused),
    }
    tracing::info!(%url, "connected to NATS");
    Ok(())
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
                if self.is_known(&id).await {
                    // Someone else's experiment: not its subjects to answer on.
                    self.reject(&result, trace.as_deref(), incoming.reply.as_deref())
                        .await;
                } else {
                    self.answer(
                        &result,
                        trace.as_deref(),
                        incoming.reply.as_deref(),
                        !id.is_empty(),
                    )
                    .await;
                }
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
        let id = &request.experiment_id;
        let Some(claimed_now) = self.claim(request, incoming, trace).await else {
            return;
        };
        // A full home is waited out with the message kept alive.
        let keepalive = self.keepalive(incoming);
        let accepted = self.runner.accept_patiently(request, Status::Queued).await;
        if let Some(k) = keepalive {
            k.abort();
        }
        let admission = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::error!(error = %e, "cannot record the request");
                self.release(id, claimed_now).await;
                self.unrecorded(request, incoming, trace, &e).await;
                return;
            }
        };
        if !matches!(admission, Admission::New) && self.already_handled(incoming, id).await {
            tracing::info!("redelivery of a request handled here; acknowledging only");
            ack(incoming, jetstream::AckKind::Ack).await;
            return;
        }
        let result = match admission {
            Admission::New => {
                let handling = self.begin_handling(id, incoming).await;
                self.remember_delivery(id, incoming, trace).await;
                let result = self.run_new(request, trace).await;
                self.settle(request, incoming, &result).await;
                self.answer(&result, trace, incoming.reply.as_deref(), true)
                    .await;
                self.record_metrics(&result, trace).await;
                self.mark_published(id, incoming.stream_seq()).await;
                self.end_handling(id, handling).await;
                ack(incoming, jetstream::AckKind::Ack).await;
                return;
            }
            Admission::Finished(result) => {
                tracing::info!("duplicate of a finished experiment; answering from the store");
                *result
            }
            Admission::InFlight(_) => match self.wait_for(id).await {
                // A redelivery of what this process runs (resumed, or past
                // ack_wait): the run answers; this delivery is only acked.
                Some(_) if is_redelivery(incoming) => {
                    ack(incoming, jetstream::AckKind::Ack).await;
                    return;
                }
                Some(result) => result,
                // Running in another live process: that process answers.
                None => {
                    ack(incoming, jetstream::AckKind::Ack).await;
                    return;
                }
            },
            Admission::Conflict(result) => {
                tracing::warn!("refused: the id is known with other content");
                self.reject(&result, trace, incoming.reply.as_deref()).await;
                ack(incoming, jetstream::AckKind::Ack).await;
                return;
            }
        };
        self.answer(&result, trace, incoming.reply.as_deref(), true)
            .await;
        self.mark_published(id, incoming.stream_seq()).await;
        ack(incoming, jetstream::AckKind::Ack).await;
    }

    /// Whether a JetStream message is another delivery of a request message
    /// this process is still handling or has answered: a redelivery (an ack,
    /// or progress acks while NATS was away, did not arrive in time) or a
    /// replay to a consumer created again. The first delivery answers; this
    /// one only waits for that and is acknowledged. A new message with the
    /// same request is a duplicate, and is answered.
    async fn already_handled(&self, incoming: &Incoming, id: &str) -> bool {
        let Some(seq) = incoming.stream_seq() else {
            return false;
        };
        let handling_it = self
            .running
            .lock()
            .await
            .get(id)
            .map(|in_hand| in_hand.seq == Some(seq));
        match handling_it {
            Some(true) => {
                self.wait_for(id).await;
                return true;
            }
            Some(false) => return false,
            None => {}
        }
        let key = id.to_owned();
        let Ok(Some(record)) = self.runner.store.call(move |s| s.get(&key)).await else {
            return false;
        };
        record.published_at.is_some()
            && match record.request_seq {
                Some(answered) => answered == seq,
                // Answered before sequences were kept: a redelivery is ours.
                None => is_redelivery(incoming),
            }
    }

    /// Marks an experiment as handled here until [`Service::end_handling`]:
    /// duplicates and redeliveries wait for it, and JetStream hears that it
    /// is alive (progress acks) until it is answered, publishing included.
    async fn begin_handling(&self, id: &str, incoming: &Incoming) -> Handling {
        let done = Arc::new(Notify::new());
        let in_hand = InHand {
            done: done.clone(),
            seq: incoming.stream_seq(),
        };
        self.running.lock().await.insert(id.to_owned(), in_hand);
        self.registered.notify_waiters();
        let keepalive = self.keepalive(incoming);
        Handling { done, keepalive }
    }

    /// Progress acks of a JetStream message until aborted, so it is not
    /// redelivered while this process works (or waits) on it.
    fn keepalive(&self, incoming: &Incoming) -> Option<tokio::task::JoinHandle<()>> {
        incoming.jetstream.as_ref().map(|msg| {
            let msg = msg.clone();
            let every = self.config.nats.progress_ack;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                loop {
                    tick.tick().await;
                    let _ = msg.ack_with(jetstream::AckKind::Progress).await;
                }
            })
        })
    }

    /// The experiment is answered: waiters go on, progress acks stop.
    async fn end_handling(&self, id: &str, handling: Handling) {
        if let Some(k) = handling.keepalive {
            k.abort();
        }
        self.running.lock().await.remove(id);
        handling.done.notify_waiters();
    }

    /// Records that the result is out, and for which JetStream message (the
    /// first answered), so another delivery of it is not answered again.
    async fn mark_published(&self, id: &str, seq: Option<u64>) {
        let key = id.to_owned();
        let marked = self
            .runner
            .store
            .call(move |s| {
                if let Some(mut r) = s.get(&key)? {
                    if r.published_at.is_none() {
                        r.published_at = Some(crate::runner::now_ms());
                        r.request_seq = seq;
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

    /// Runs an accepted experiment once a run slot is free.
    async fn run_new(&self, request: &Request, trace: Option<&str>) -> ExperimentResult {
        let queued = std::time::Instant::now();
        let _slot = self.run_slots.acquire().await;
        self.runner.telemetry.waited_for_slot(queued.elapsed());
        let progress = NatsProgress {
            client: self.client.clone(),
            traceparent: trace.map(str::to_owned),
        };
        self.runner.run(request, &progress).await
    }

    /// Waits for an experiment this process is running; `None` when it runs
    /// elsewhere (another process on the shared store).
    async fn wait_for(&self, id: &str) -> Option<ExperimentResult> {
        loop {
            let notify = self
                .running
                .lock()
                .await
                .get(id)
                .map(|in_hand| in_hand.done.clone());
            let Some(notify) = notify else {
                // Armed before the store is read: a run of this process
                // that is accepted but not yet in `running` announces itself.
                let registered = self.registered.notified();
                let key = id.to_owned();
                let record = self
                    .runner
                    .store
                    .call(move |s| s.get(&key))
                    .await
                    .ok()
                    .flatten()?;
                if record.status.is_final() || record.owner != self.runner.instance {
                    return record.result().filter(|_| record.status.is_final());
                }
                if !self.running.lock().await.contains_key(id) {
                    registered.await;
                }
                continue;
            };
            let notified = notify.notified();
            // Re-check after arming the notification, so a finish in between is not missed.
            if !self.running.lock().await.contains_key(id) {
                continue;
            }
            notified.await;
        }
    }

    /// Whether an experiment with this id is in the store.
    async fn is_known(&self, id: &str) -> bool {
        if id.is_empty() {
            return false;
        }
        let key = id.to_owned();
        matches!(
            self.runner.store.call(move |s| s.get(&key)).await,
            Ok(Some(_))
        )
    }
}
