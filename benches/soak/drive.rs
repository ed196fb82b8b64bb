//! Sending the soak's requests and hearing their answers, through NATS
//! outages.
//!
//! - **Capture.** Every answer genesis publishes (`completed.*`,
//!   `failed.*`, `rejected.*`) and every reply (`soak.reply.N`, named per
//!   message in the `Genesis-Reply-To` header) lands in a JetStream stream
//!   of the soak's own, on the server's disk, so none is missed while the
//!   soak's client reconnects. Its duplicate window is the shortest the
//!   server takes (100 ms), so an answer published twice is counted twice.
//! - **Sending.** Requests are published to JetStream and retried until the
//!   server acknowledges them, each with a `Nats-Msg-Id` of its own, so a
//!   retry after a lost acknowledgement is not a second request.
//! - **Pace.** Experiment i is sent not before i × `pace` (so the soak
//!   lasts long enough for its faults), and at most `window` experiments
//!   are unanswered at a time; an experiment's later message (a duplicate,
//!   a conflict) is sent its planned delay after its first, answered or not.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream::{self, consumer, stream};
use async_nats::HeaderMap;
use futures_util::StreamExt;
use tokio::sync::{Notify, Semaphore};

use crate::support::nats::{patient_client, wait_for_jetstream};
use crate::workload::{Experiment, Message};

/// Set once SIGINT or SIGTERM arrived: the soak stops sending and
/// waiting, and still audits and tears everything down.
pub static INTERRUPTED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Replaces the default action of SIGINT and SIGTERM (ending the process
/// without tearing anything down) with setting [`INTERRUPTED`].
pub fn catch_signals(rt: &tokio::runtime::Runtime) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = rt
        .block_on(async { signal(SignalKind::terminate()) })
        .expect("SIGTERM handler");
    let mut int = rt
        .block_on(async { signal(SignalKind::interrupt()) })
        .expect("SIGINT handler");
    rt.spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        eprintln!("soak: interrupted; stopping, then auditing and tearing down");
        INTERRUPTED.store(true, std::sync::atomic::Ordering::Relaxed);
    });
}

fn interrupted() -> bool {
    INTERRUPTED.load(std::sync::atomic::Ordering::Relaxed)
}

/// The soak's stream of answers.
pub const ANSWERS: &str = "SOAK_ANSWERS";
/// Replies to message N arrive on `soak.reply.N`.
pub const REPLY_PREFIX: &str = "soak.reply.";
const REQUEST_SUBJECT: &str = "agent.events.experiment.request.soak";

/// When each message was first sent, by message number.
pub type Sent = BTreeMap<usize, SystemTime>;

/// Replies seen so far: message number -> server time of the first one.
#[derive(Default)]
struct Heard {
    first: Mutex<BTreeMap<usize, SystemTime>>,
    changed: Notify,
}

impl Heard {
    fn answered(&self, n: usize) -> bool {
        self.first.lock().unwrap().contains_key(&n)
    }
}

/// A client of the soak's own and its JetStream context, once JetStream
/// answers, with the answer stream in place.
pub async fn connect(url: &str) -> (async_nats::Client, jetstream::Context) {
    let client = patient_client(url).await;
    wait_for_jetstream(&client, Duration::from_secs(60)).await;
    let js = jetstream::new(client.clone());
    js.get_or_create_stream(stream::Config {
        name: ANSWERS.into(),
        subjects: vec![
            "agent.events.experiment.completed.*".into(),
            "agent.events.experiment.failed.*".into(),
            "agent.events.experiment.rejected.*".into(),
            format!("{REPLY_PREFIX}>"),
        ],
        duplicate_window: Duration::from_millis(100),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("creating the answer stream: {e}"));
    (client, js)
}

/// Sends every experiment's messages, experiment i not before i × `pace`
/// and at most `window` experiments unanswered at a time, and returns once
/// every message has a reply.
pub async fn drive(
    js: &jetstream::Context,
    experiments: &[Experiment],
    window: usize,
    pace: Duration,
    stall: Duration,
    seed: u64,
) -> Sent {
    let heard = Arc::new(Heard::default());
    let watcher = tokio::spawn(watch_replies(js.clone(), heard.clone()));
    let sent = Arc::new(Mutex::new(Sent::new()));
    let slots = Arc::new(Semaphore::new(window));
    let mut tasks = tokio::task::JoinSet::new();
    let total: usize = experiments.iter().map(|e| e.messages.len()).sum();
    let started = Instant::now();
    let origin = tokio::time::Instant::now();
    for (i, experiment) in experiments.iter().enumerate() {
        tokio::time::sleep_until(origin + pace * i as u32).await;
        let permit = loop {
            let wait = tokio::time::timeout(Duration::from_secs(1), slots.clone().acquire_owned());
            if let Ok(permit) = wait.await {
                break permit.ok();
            }
            if interrupted() {
                break None;
            }
        };
        let Some(permit) = permit else { break };
        let (js, mine, sent) = (js.clone(), heard.clone(), sent.clone());
        let messages = experiment.messages.clone();
        tasks.spawn(async move {
            send_experiment(&js, &messages, seed, &sent).await;
            while !messages.iter().all(|m| mine.answered(m.n)) {
                let changed = mine.changed.notified();
                if messages.iter().all(|m| mine.answered(m.n)) {
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_secs(1), changed).await;
            }
            drop(permit);
        });
        let done = heard.first.lock().unwrap().len();
        if experiment.messages[0].n % 50 == 0 {
            eprintln!(
                "soak: {:>6.1} s  sending experiment {} ({done} of {total} messages answered)",
                started.elapsed().as_secs_f64(),
                experiment.messages[0].experiment
            );
        }
    }
    wait_for_answers(&mut tasks, experiments, &heard, stall).await;
    tasks.abort_all();
    watcher.abort();
    Arc::try_unwrap(sent)
        .map(|m| m.into_inner().unwrap())
        .unwrap_or_else(|a| a.lock().unwrap().clone())
}

/// Waits for the experiments' answers; every 30 s says which messages
/// are still unanswered, and gives up once none came for `stall` (or once
/// interrupted), so the audit can name what was lost.
async fn wait_for_answers(
    tasks: &mut tokio::task::JoinSet<()>,
    experiments: &[Experiment],
    heard: &Heard,
    stall: Duration,
) {
    let mut last_count = usize::MAX;
    let mut last_progress = Instant::now();
    let mut ticks = 0u32;
    loop {
        let tick = tokio::time::sleep(Duration::from_secs(1));
        tokio::select! {
            next = tasks.join_next() => if next.is_none() { return },
            _ = tick => {
                ticks += 1;
                if interrupted() {
                    return;
                }
                if !ticks.is_multiple_of(30) {
                    continue;
                }
                let count = heard.first.lock().unwrap().len();
                if count != last_count {
                    last_count = count;
                    last_progress = Instant::now();
                }
                let missing: Vec<String> = experiments
                    .iter()
                    .flat_map(|e| e.messages.iter().map(move |m| (e, m)))
                    .filter(|(_, m)| !heard.answered(m.n))
                    .take(10)
                    .map(|(e, m)| format!("{} #{}", e.id, m.n))
                    .collect();
                eprintln!("soak: {count} answered; waiting for {}", missing.join(", "));
                if last_progress.elapsed() >= stall {
                    eprintln!("soak: no answer for {stall:?}; giving up on the rest");
                    return;
                }
            }
        }
    }
}

/// Publishes an experiment's messages at their planned offsets.
async fn send_experiment(
    js: &jetstream::Context,
    messages: &[Message],
    seed: u64,
    sent: &Mutex<Sent>,
) {
    let first = tokio::time::Instant::now();
    let mut later = tokio::task::JoinSet::new();
    for m in messages {
        let (js, m) = (js.clone(), m.clone());
        let at = first + m.after;
        let stamp = async move {
            tokio::time::sleep_until(at).await;
            let when = SystemTime::now();
            publish(&js, &m, seed).await;
            (m.n, when)
        };
        later.spawn(stamp);
    }
    while let Some(done) = later.join_next().await {
        if let Ok((n, when)) = done {
            sent.lock().unwrap().insert(n, when);
        }
    }
}

/// Publishes one request until JetStream acknowledges it.
async fn publish(js: &jetstream::Context, m: &Message, seed: u64) {
    let body = bytes::Bytes::from(m.body.to_string());
    loop {
        let mut headers = HeaderMap::new();
        headers.insert(
            "Genesis-Reply-To",
            format!("{REPLY_PREFIX}{}", m.n).as_str(),
        );
        headers.insert(
            "Nats-Msg-Id",
            format!("soak-{seed}-message-{}", m.n).as_str(),
        );
        let attempt = async {
            js.publish_with_headers(REQUEST_SUBJECT, headers, body.clone())
                .await
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(_)) => return,
            Ok(Err(_)) | Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

/// Follows `soak.reply.>` in the answer stream, from the start, through
/// server restarts (an ordered consumer is made again from the last
/// sequence seen), noting each message's first reply.
async fn watch_replies(js: jetstream::Context, heard: Arc<Heard>) {
    let mut next_seq = 1;
    loop {
        let Ok(stream) = js.get_stream(ANSWERS).await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let config = consumer::pull::OrderedConfig {
            filter_subject: format!("{REPLY_PREFIX}>"),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: next_seq,
            },
            ..Default::default()
        };
        let Ok(ordered) = stream.create_consumer(config).await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        let Ok(mut messages) = ordered.messages().await else {
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        while let Some(Ok(msg)) = messages.next().await {
            let Ok(info) = msg.info() else { continue };
            next_seq = info.stream_sequence + 1;
            let published = SystemTime::from(info.published);
            let n = msg
                .subject
                .strip_prefix(REPLY_PREFIX)
                .and_then(|n| n.parse::<usize>().ok());
            if let Some(n) = n {
                heard.first.lock().unwrap().entry(n).or_insert(published);
                heard.changed.notify_waiters();
            }
        }
    }
}

/// Every message of the answer stream, as (subject, body, server time).
pub async fn all_answers(js: &jetstream::Context) -> Vec<(String, serde_json::Value, SystemTime)> {
    let mut stream = js.get_stream(ANSWERS).await.unwrap();
    let total = stream.info().await.unwrap().state.messages as usize;
    let ordered = stream
        .create_consumer(consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut messages = ordered.messages().await.unwrap();
    let mut out = Vec::with_capacity(total);
    let mut seen = HashSet::new();
    while out.len() < total {
        let msg = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .expect("reading the answer stream")
            .expect("answer stream ended")
            .expect("answer stream message");
        let info = msg.info().unwrap();
        if !seen.insert(info.stream_sequence) {
            continue;
        }
        let published = SystemTime::from(info.published);
        let body = serde_json::from_slice(&msg.payload).unwrap_or(serde_json::Value::Null);
        out.push((msg.subject.to_string(), body, published));
    }
    out
}
