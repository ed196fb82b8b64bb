//! NATS and multi-host faults, against a real nats-server, a real Docker
//! engine and the real `genesis serve`:
//!
//! - the NATS server is killed (`kill -9`) while JetStream requests run, and
//!   started again on the same port and store: every request is answered
//!   exactly once;
//! - a `genesis serve` started before its NATS server exists waits, connects
//!   once the server is up, and answers (core and JetStream mode);
//! - the request consumer deleted while genesis serves is created again;
//! - two hosts (`[host] name` host-a and host-b, each with its own
//!   GENESIS_HOME) on one JetStream consumer: every request answered once,
//!   both hosts did some, and both hosts' SQL exports load into one
//!   PostgreSQL database without collisions.
//!
//! Answers are counted from a JetStream stream of the test's own
//! ([`capture_results`]): it keeps every answer on the server's disk, so
//! none is missed while the test's client reconnects, and its duplicate
//! window is too short to hide an answer published twice. A test is done
//! when its answers are in, the request consumer has nothing pending or
//! unacknowledged, and no host has an experiment queued or running, so no
//! redelivery and no late duplicate can still come.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use async_nats::jetstream;

use crate::support::nats::{
    capture_results, consumer_backlog, patient_client, stream_len, stream_messages,
    wait_for_jetstream, NatsServer,
};
use crate::support::pg::PgCluster;
use crate::support::*;

/// The test's stream of answers.
const RESULTS: &str = "TEST_RESULTS";

/// A client of the test's own, once JetStream answers, with the stream
/// that captures every answer (`RESULTS`) in place.
async fn capturing_client(url: &str) -> (async_nats::Client, jetstream::Context) {
    let client = patient_client(url).await;
    let js = jetstream::new(client.clone());
    wait_for_jetstream(&client, Duration::from_secs(30)).await;
    capture_results(&js, RESULTS).await;
    (client, js)
}
/// genesis's request stream and consumer (the defaults of `[nats]`).
const REQUESTS: &str = "GENESIS_REQUESTS";
const CONSUMER: &str = "genesis";

/// JetStream's ack wait in the NATS-kill test, and how long the server
/// stays dead there: longer, so in-flight requests are redelivered.
const ACK_WAIT_MS: u64 = 1000;
const OUTAGE: Duration = Duration::from_millis(3 * ACK_WAIT_MS);

/// How long the NATS server is absent when `genesis serve` starts first.
const NATS_LATE: Duration = Duration::from_secs(6);

/// Polls `condition` until it holds, or panics at the deadline.
async fn wait_until<F, Fut>(what: &str, timeout: Duration, condition: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !condition().await {
        assert!(Instant::now() < deadline, "no {what} within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A JetStream-mode config named `host`.
fn jetstream_config(max_concurrent: usize, host: &str) -> String {
    with_host(&serve_config(max_concurrent, true), host)
}

fn with_host(config: &str, host: &str) -> String {
    format!("{config}\n[host]\nname = \"{host}\"\n")
}

async fn publish_request(js: &jetstream::Context, request: &serde_json::Value) {
    js.publish(
        "agent.events.experiment.request.test-instance",
        request.to_string().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

/// Experiments a home holds in a status, through `genesis list` (the store
/// opens beside a running `serve`).
fn count_in_status(home: &TestHome, status: &str) -> usize {
    let out = home.run_args(&["list", "--json", "--status", status, "--limit", "100000"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .unwrap()
        .as_array()
        .unwrap()
        .len()
}

fn busy(home: &TestHome) -> usize {
    count_in_status(home, "queued") + count_in_status(home, "running")
}

/// Waits until `expected` answers are in, no request is pending or
/// unacknowledged (JetStream mode) and no home has work left; then returns
/// the answers per experiment id.
async fn settled_answers(
    js: &jetstream::Context,
    homes: &[&TestHome],
    expected: u64,
    jetstream_mode: bool,
    timeout: Duration,
) -> BTreeMap<String, Vec<serde_json::Value>> {
    let deadline = Instant::now() + timeout;
    loop {
        let answered = stream_len(js, RESULTS).await;
        let backlog = if jetstream_mode {
            consumer_backlog(js, REQUESTS, CONSUMER).await
        } else {
            (0, 0)
        };
        let working: usize = if answered >= expected && backlog == (0, 0) {
            homes.iter().map(|h| busy(h)).sum()
        } else {
            usize::MAX
        };
        if working == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not settled within {timeout:?}: {answered} of {expected} answers, backlog (pending, unacked) = {backlog:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut answers: BTreeMap<String, Vec<serde_json::Value>> = BTreeMap::new();
    for (subject, doc) in stream_messages(js, RESULTS).await {
        let id = subject.rsplit('.').next().unwrap_or_default().to_owned();
        answers.entry(id).or_default().push(doc);
    }
    answers
}

/// Each id in `ids` answered exactly once, successfully.
fn assert_each_answered_once(answers: &BTreeMap<String, Vec<serde_json::Value>>, ids: &[String]) {
    let counts: BTreeMap<&str, usize> =
        answers.iter().map(|(k, v)| (k.as_str(), v.len())).collect();
    let want: BTreeMap<&str, usize> = ids.iter().map(|id| (id.as_str(), 1)).collect();
    assert_eq!(counts, want, "answers per experiment");
    for (id, docs) in answers {
        assert_eq!(docs[0]["status"], "success", "{id}: {}", docs[0]);
    }
}

/// `kill -9` of nats-server while JetStream requests run, then the same
/// server (port, store) again: genesis reconnects, its pull consumer
/// resumes, and every request is answered exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_killed_mid_run_comes_back_and_every_request_is_answered_once() {
    let started = Instant::now();
    let mut nats = NatsServer::start(true);
    let (client, js) = capturing_client(&nats.url()).await;
    let config = serve_config_acking(2, true, ACK_WAIT_MS);
    let home = serve_home_with(&with_host(&config, "host-a"));
    let mut serve = ServeProcess::start(&home, &nats.url());
    let ids: Vec<String> = (0..6).map(|i| format!("nats-kill-{i}")).collect();
    for id in &ids {
        publish_request(&js, &sleepy_request(id, 2.0)).await;
    }
    // The first answers are in and later experiments run (their containers
    // exist) when the server dies.
    wait_until("2 answers", Duration::from_secs(60), || async {
        stream_len(&js, RESULTS).await >= 2
    })
    .await;
    wait_until("a running container", Duration::from_secs(60), || async {
        !home.containers_left().is_empty()
    })
    .await;
    let answered_before = stream_len(&js, RESULTS).await;
    nats.kill();
    // The outage outlasts the ack wait: when the server is back, JetStream
    // hands out again whatever it has not seen acknowledged (what genesis
    // runs, and what it acked just before the kill, if the killed server
    // had not written those acks yet), and genesis must answer none of it
    // twice. (The length of the fault, not a wait for anything.)
    tokio::time::sleep(OUTAGE).await;
    nats.launch();
    wait_for_jetstream(&client, Duration::from_secs(30)).await;
    let answers = settled_answers(&js, &[&home], 6, true, Duration::from_secs(120)).await;
    assert!(
        serve.is_running(),
        "genesis serve exited after the NATS restart"
    );
    assert_each_answered_once(&answers, &ids);
    assert!(home.containers_left().is_empty());
    eprintln!(
        "nats kill: {answered_before} of 6 answered before the kill, all 6 exactly once after; {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// `genesis serve` started while its NATS server does not exist yet: it
/// says it is waiting, connects when the server starts, and answers.
async fn serve_waits_for_nats(jetstream_mode: bool) {
    let started = Instant::now();
    let mut nats = NatsServer::reserve(true);
    let home = serve_home(1, jetstream_mode);
    let serve = ServeProcess::spawn(&home, &nats.url());
    serve.wait_for_line("waiting for NATS", Duration::from_secs(60));
    // The server stays away for longer than a JetStream request's timeout
    // (5 s): genesis must keep waiting, not give up setting up its stream.
    // (The length of the fault, not a wait for anything.)
    tokio::time::sleep(NATS_LATE).await;
    nats.launch();
    serve.wait_for_line("genesis ready", Duration::from_secs(60));
    let (client, js) = capturing_client(&nats.url()).await;
    let id = if jetstream_mode {
        "late-nats-js"
    } else {
        "late-nats-core"
    };
    let request = sleepy_request(id, 0.0);
    if jetstream_mode {
        publish_request(&js, &request).await;
    } else {
        client
            .publish(
                "agent.events.experiment.request.test-instance",
                request.to_string().into(),
            )
            .await
            .unwrap();
        client.flush().await.unwrap();
    }
    let answers = settled_answers(&js, &[&home], 1, jetstream_mode, Duration::from_secs(60)).await;
    assert_each_answered_once(&answers, &[id.to_owned()]);
    eprintln!(
        "serve before nats ({}): answered; {:.1} s",
        if jetstream_mode { "jetstream" } else { "core" },
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_started_before_nats_waits_then_answers_in_core_mode() {
    serve_waits_for_nats(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_started_before_nats_waits_then_answers_in_jetstream_mode() {
    serve_waits_for_nats(true).await;
}

/// The durable request consumer is deleted while genesis serves (an
/// operator's mistake, or a NATS server that came back without its store):
/// genesis creates it again and goes on answering, rather than stopping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_request_consumer_is_created_again() {
    let started = Instant::now();
    let nats = NatsServer::start(true);
    let (_client, js) = capturing_client(&nats.url()).await;
    let home = serve_home_with(&jetstream_config(1, "host-a"));
    let mut serve = ServeProcess::start(&home, &nats.url());
    publish_request(&js, &sleepy_request("before-delete", 0.0)).await;
    settled_answers(&js, &[&home], 1, true, Duration::from_secs(60)).await;
    let stream = js.get_stream(REQUESTS).await.unwrap();
    assert!(stream.delete_consumer(CONSUMER).await.unwrap().success);
    publish_request(&js, &sleepy_request("after-delete", 0.0)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while stream
        .get_consumer::<jetstream::consumer::pull::Config>(CONSUMER)
        .await
        .is_err()
    {
        assert!(
            serve.is_running(),
            "genesis serve stopped when its consumer went away"
        );
        assert!(
            Instant::now() < deadline,
            "the consumer was not created again"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answers = settled_answers(&js, &[&home], 2, true, Duration::from_secs(60)).await;
    assert!(serve.is_running(), "genesis serve stopped");
    assert_each_answered_once(&answers, &["after-delete".into(), "before-delete".into()]);
    eprintln!(
        "deleted consumer: created again, both answered; {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// The rows `genesis export` said it wrote: (experiments, metrics, history).
fn export_sql(home: &TestHome, path: &std::path::Path) -> (u64, u64, u64) {
    let out = home.run_args(&[
        "export",
        "--format",
        "sql",
        "--output",
        path.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let numbers: Vec<u64> = stderr
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    match numbers[..] {
        [records, metrics, history] => (records, metrics, history),
        _ => panic!("unexpected export summary: {stderr}"),
    }
}

/// Two hosts share one JetStream consumer: 20 requests, each answered once,
/// both hosts answered some, and both exports load into one database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_share_one_consumer_and_their_exports_load_into_one_database() {
    let started = Instant::now();
    let nats = NatsServer::start(true);
    let (_client, js) = capturing_client(&nats.url()).await;
    let a = serve_home_with(&jetstream_config(2, "host-a"));
    let b = serve_home_with(&jetstream_config(2, "host-b"));
    let serve_a = ServeProcess::start(&a, &nats.url());
    let serve_b = ServeProcess::start(&b, &nats.url());
    let ids: Vec<String> = (0..20).map(|i| format!("two-hosts-{i}")).collect();
    for id in &ids {
        publish_request(&js, &sleepy_request(id, 0.5)).await;
    }
    let answers = settled_answers(&js, &[&a, &b], 20, true, Duration::from_secs(180)).await;
    assert_each_answered_once(&answers, &ids);
    let mut by_host: BTreeMap<String, u64> = BTreeMap::new();
    for docs in answers.values() {
        *by_host
            .entry(docs[0]["host"].as_str().unwrap_or("").to_owned())
            .or_default() += 1;
    }
    let (na, nb) = (
        by_host.get("host-a").copied(),
        by_host.get("host-b").copied(),
    );
    assert!(
        na.unwrap_or(0) > 0 && nb.unwrap_or(0) > 0 && by_host.len() == 2,
        "both hosts should answer some: {by_host:?}"
    );
    drop((serve_a, serve_b));

    let dir = tempfile::tempdir().unwrap();
    let (file_a, file_b) = (dir.path().join("a.sql"), dir.path().join("b.sql"));
    let (rows_a, rows_b) = (export_sql(&a, &file_a), export_sql(&b, &file_b));
    assert_eq!(
        (rows_a.0, rows_b.0),
        (na.unwrap(), nb.unwrap()),
        "each host stored what it answered"
    );
    let pg = PgCluster::start();
    pg.exec("postgres", "CREATE DATABASE genesis");
    for file in [&file_a, &file_b, &file_a, &file_b] {
        let out = pg.load_file("genesis", file);
        assert!(
            out.status.success(),
            "psql -v ON_ERROR_STOP=1 -f {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let count = |sql: &str| pg.scalar("genesis", sql).parse::<u64>().unwrap();
    assert_eq!(count("SELECT count(*) FROM experiment_records"), 20);
    assert_eq!(
        count("SELECT count(*) FROM experiment_metrics"),
        rows_a.1 + rows_b.1
    );
    assert_eq!(
        count("SELECT count(*) FROM sandbox_history"),
        rows_a.2 + rows_b.2
    );
    assert_eq!(
        count("SELECT count(DISTINCT host) FROM sandbox_history"),
        2,
        "history rows of both hosts"
    );
    // Each store counts history ids from 1: only the host tells them apart.
    assert_eq!(
        count("SELECT count(*) FROM sandbox_history WHERE id = 1"),
        2
    );
    for (host, n) in [("host-a", na.unwrap()), ("host-b", nb.unwrap())] {
        let sql = format!("SELECT count(*) FROM experiment_records WHERE host = '{host}'");
        assert_eq!(count(&sql), n, "{host}'s records");
    }
    eprintln!(
        "two hosts: host-a answered {}, host-b {}; loaded {} history rows; {:.1} s",
        na.unwrap(),
        nb.unwrap(),
        rows_a.2 + rows_b.2,
        started.elapsed().as_secs_f64()
    );
}
