//! What the soak (`benches/soak`, README "Soak") found, each as a test of
//! a few seconds against real components (nats-server with JetStream,
//! `genesis serve`, a Docker engine):
//!
//! - two requests with one id and content, answered at once, gave their
//!   requesters' inboxes copies with one `Nats-Msg-Id`, so a stream that
//!   keeps the inboxes dropped one;
//! - an experiment resumed after `kill -9` answered its result subjects
//!   but not the reply subject its message named;
//! - hosts with their own stores could not tell a reused id or a
//!   duplicate that reached the other host: the reused id was run and
//!   answered instead of refused, the duplicate run again, and the owner's
//!   redelivered message run again by the other host while the owner
//!   resumed it;
//! - an engine away while the image was looked up, and a full home while
//!   the change was applied, were answered `failed` although the
//!   experiment itself never ran;
//! - a container the engine lost in a crash (its `runc init` still alive)
//!   kept a run's disk mounted in its namespace, so the loop device, and
//!   the home's file system under it, were never released.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures_util::StreamExt;

use crate::support::engine::PrivateEngine;
use crate::support::nats::{consumer_backlog, patient_client, wait_for_jetstream, NatsServer};
use crate::support::tmpfs::{fill, Tmpfs};
use crate::support::*;

/// The test's stream of replies: every `inbox.>` message, kept.
const INBOXES: &str = "TEST_INBOXES";

/// A JetStream client and a stream keeping every reply on `inbox.>`. Its
/// duplicate window is long (10 s), as a requester's own stream might
/// have: copies with one `Nats-Msg-Id` within it are kept once.
async fn inbox_client(url: &str) -> jetstream::Context {
    let client = patient_client(url).await;
    wait_for_jetstream(&client, Duration::from_secs(30)).await;
    let js = jetstream::new(client);
    js.create_stream(jetstream::stream::Config {
        name: INBOXES.into(),
        subjects: vec!["inbox.>".into()],
        duplicate_window: Duration::from_secs(10),
        ..Default::default()
    })
    .await
    .unwrap();
    js
}

/// Publishes a request naming `inbox` for its answer.
async fn send(js: &jetstream::Context, request: &serde_json::Value, inbox: &str) {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Genesis-Reply-To", inbox);
    js.publish_with_headers(
        "agent.events.experiment.request.test-instance",
        headers,
        request.to_string().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

/// Every reply so far, as (inbox, body).
async fn replies(js: &jetstream::Context) -> Vec<(String, serde_json::Value)> {
    let mut stream = js.get_stream(INBOXES).await.unwrap();
    let total = stream.info().await.unwrap().state.messages as usize;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig::default())
        .await
        .unwrap();
    let mut messages = consumer.messages().await.unwrap();
    let mut out = Vec::new();
    while out.len() < total {
        let msg = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let body = serde_json::from_slice(&msg.payload).unwrap_or_default();
        out.push((msg.subject.to_string(), body));
    }
    out
}

/// Waits until `want` replies are in and the request consumer has nothing
/// pending or unacknowledged, then a second more (a late copy would come).
async fn settled_replies(js: &jetstream::Context, want: usize) -> Vec<(String, serde_json::Value)> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let got = replies(js).await;
        let backlog = consumer_backlog(js, "GENESIS_REQUESTS", "genesis").await;
        if got.len() >= want && backlog == (0, 0) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            return replies(js).await;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {want} replies, backlog {backlog:?}: {got:?}",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A JetStream home named `host`, acking every `ack_wait_ms`.
fn jetstream_home(host: &str, ack_wait_ms: u64) -> TestHome {
    let config = format!(
        "{}\n[host]\nname = \"{host}\"\n",
        serve_config_acking(2, true, ack_wait_ms)
    );
    serve_home_with(&config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_answered_with_its_original_reaches_both_inboxes() {
    let nats = NatsServer::start(true);
    let home = jetstream_home("host-a", 5000);
    let _serve = ServeProcess::start(&home, &nats.url());
    let js = inbox_client(&nats.url()).await;
    // The duplicate comes while the first runs: both are answered at once.
    let request = sleepy_request("twice", 1.0);
    send(&js, &request, "inbox.first").await;
    send(&js, &request, "inbox.second").await;
    let got = settled_replies(&js, 2).await;
    let inboxes: Vec<&str> = got.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(inboxes.len(), 2, "one reply per request: {got:?}");
    assert!(inboxes.contains(&"inbox.first") && inboxes.contains(&"inbox.second"));
    assert_eq!(
        got[0].1, got[1].1,
        "the duplicate is answered with the same result"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_resumed_after_kill_9_answers_its_inbox_once() {
    let nats = NatsServer::start(true);
    let home = jetstream_home("host-a", 2000);
    let serve = ServeProcess::start(&home, &nats.url());
    let js = inbox_client(&nats.url()).await;
    send(&js, &sleepy_request("resumed", 3.0), "inbox.resumed").await;
    serve.wait_for_line("sandbox_created", Duration::from_secs(60));
    serve.signal(libc::SIGKILL);
    drop(serve);
    let again = ServeProcess::start(&home, &nats.url());
    // Logged before "genesis ready", which `start` waited for.
    again.wait_for_count("resuming an experiment", 1, Duration::from_secs(30));
    let got = settled_replies(&js, 1).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].0, "inbox.resumed");
    assert_eq!(got[0].1["status"], "success", "{}", got[0].1);
}

/// How many experiments `home` holds (its own store).
fn stored(home: &TestHome) -> usize {
    let out = home.run_args(&["list", "--json"]);
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .unwrap()
        .as_array()
        .map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_id_at_another_host_is_refused_and_a_duplicate_gets_the_first_answer() {
    let nats = NatsServer::start(true);
    let js = inbox_client(&nats.url()).await;
    let (a, b) = (
        jetstream_home("host-a", 5000),
        jetstream_home("host-b", 5000),
    );
    let mut serve_a = ServeProcess::start(&a, &nats.url());
    let first = request("shared", "low", &[], "");
    send(&js, &first, "inbox.first").await;
    settled_replies(&js, 1).await;
    serve_a.signal(libc::SIGTERM);
    assert!(serve_a.wait().success());

    // Only host-b serves now.
    let _serve_b = ServeProcess::start(&b, &nats.url());
    let mut reused = first.clone();
    reused["test_command"] = "sh run_tests.sh && echo other".into();
    send(&js, &reused, "inbox.reused").await;
    send(&js, &first, "inbox.duplicate").await;
    let got = settled_replies(&js, 3).await;
    let reply = |inbox: &str| -> serde_json::Value {
        got.iter()
            .find(|(s, _)| s == inbox)
            .map(|(_, b)| b.clone())
            .unwrap_or_default()
    };
    assert_eq!(
        reply("inbox.reused")["error_kind"],
        "invalid_request",
        "{got:?}"
    );
    assert!(
        reply("inbox.reused").get("status").is_none(),
        "a refusal, not a result"
    );
    assert_eq!(reply("inbox.duplicate"), reply("inbox.first"), "{got:?}");
    assert_eq!(reply("inbox.duplicate")["host"], "host-a");
    assert_eq!(stored(&b), 0, "host-b ran nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivery_reaching_another_host_is_left_to_the_host_that_resumes_it() {
    let nats = NatsServer::start(true);
    let js = inbox_client(&nats.url()).await;
    let (a, b) = (
        jetstream_home("host-a", 1000),
        jetstream_home("host-b", 1000),
    );
    let serve_a = ServeProcess::start(&a, &nats.url());
    send(&js, &sleepy_request("held", 2.0), "inbox.held").await;
    serve_a.wait_for_line("sandbox_created", Duration::from_secs(60));
    serve_a.signal(libc::SIGKILL);
    drop(serve_a);
    // host-a is dead: its message is redelivered to host-b, which must
    // leave it to host-a (whose store holds it and resumes it).
    let serve_b = ServeProcess::start(&b, &nats.url());
    serve_b.wait_for_line("another host holds", Duration::from_secs(30));
    let _serve_a = ServeProcess::start(&a, &nats.url());
    let got = settled_replies(&js, 1).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].1["host"], "host-a", "{}", got[0].1);
    assert_eq!(stored(&b), 0, "host-b ran nothing");
}

/// A core-mode serve of `home` against the private engine.
fn serve_on(engine: &PrivateEngine, home: &TestHome, nats: &NatsServer) -> ServeProcess {
    let serve = ServeProcess::spawn_with_env(home, &nats.url(), &[("DOCKER_HOST", &engine.host())]);
    serve.wait_for_line("genesis ready", Duration::from_secs(60));
    serve
}

/// Sends `request` on core NATS (once subscribed to its answers); the
/// task ends with its answer.
async fn start_request(
    nats: &NatsServer,
    request: serde_json::Value,
) -> tokio::task::JoinHandle<serde_json::Value> {
    let client = async_nats::connect(nats.url()).await.unwrap();
    let id = request["experiment_id"].as_str().unwrap().to_owned();
    let mut answers = client
        .subscribe(format!("agent.events.experiment.*.{id}"))
        .await
        .unwrap();
    client.flush().await.unwrap();
    client
        .publish(
            "agent.events.experiment.request.test-instance",
            request.to_string().into(),
        )
        .await
        .unwrap();
    tokio::spawn(async move {
        let _client = client;
        loop {
            let msg = answers.next().await.expect("answers");
            if !msg.subject.as_str().contains(".progress.") {
                return serde_json::from_slice(&msg.payload).unwrap();
            }
        }
    })
}

/// The answer of a started request, within two minutes.
async fn answer(pending: tokio::task::JoinHandle<serde_json::Value>) -> serde_json::Value {
    tokio::time::timeout(Duration::from_secs(120), pending)
        .await
        .expect("an answer within two minutes")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_away_when_the_image_is_looked_up_delays_the_experiment() {
    let mut engine = PrivateEngine::start();
    engine.build_image("busybox");
    let nats = NatsServer::start(false);
    // An engine that died may leave its socket accepting and never answer.
    let home = serve_home_with(&format!(
        "{}\n[sandbox]\ndocker_timeout_ms = 3000\n",
        serve_config(1, false)
    ));
    let serve = serve_on(&engine, &home, &nats);
    engine.crash();
    let pending = start_request(&nats, request("engine-away", "low", &[], "")).await;
    serve.wait_for_line("waiting, then running it again", Duration::from_secs(60));
    engine.restart();
    let result = answer(pending).await;
    assert_eq!(result["status"], "success", "{result}");
    assert_eq!(result["metrics"]["test_count"], 3, "{result}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_home_delays_the_experiment_until_there_is_space() {
    let nats = NatsServer::start(false);
    let home = serve_home(1, false);
    let _fs = Tmpfs::mount(&home.home(), "size=64m");
    let serve = ServeProcess::start(&home, &nats.url());
    // A first experiment, so the home holds a store with room in it.
    let first = start_request(&nats, request("before", "low", &[], "")).await;
    assert_eq!(answer(first).await["status"], "success");
    let filler = fill(&home.home());
    let patch = diff_for(&home.root().join("app"), &[("new.txt", Some("x\n"))]);
    let pending = start_request(&nats, request("while-full", "low", &["new.txt"], &patch)).await;
    // Recording the request or running it finds the home full, and waits.
    serve.wait_for_line("is full (No space left on device)", Duration::from_secs(60));
    std::fs::remove_file(filler).unwrap();
    let result = answer(pending).await;
    assert_eq!(result["status"], "success", "{result}");
}

/// `MAJ:MIN` of what is mounted at `mount` (this process's namespace).
fn device_at(mount: &std::path::Path) -> String {
    let wanted = mount.canonicalize().unwrap().display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f[4] == wanted)
        .map(|f| f[2].to_owned())
        .expect("the disk is mounted")
}

#[test]
fn a_run_disk_held_by_a_container_the_engine_lost_is_freed() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("genesis-lost-candidate-1-1");
    let owner = genesis::snapshot::Owner {
        uid: 10001,
        gid: 10001,
    };
    let disk = genesis::sandbox::ScratchDisk::create(&root, 16, owner, None).unwrap();
    let device = device_at(&root.join("mnt"));
    // A process in a mount namespace of its own holds a copy of every
    // mount, the run's disk too, as a lost container's `runc init` does.
    let mut holder = std::process::Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sleep", "60"])
        .spawn()
        .unwrap();
    let ours = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    let theirs = format!("/proc/{}/ns/mnt", holder.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_link(&theirs).ok() == Some(ours.clone()) {
        assert!(Instant::now() < deadline, "unshare did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    disk.release().unwrap();
    let status = holder.wait().unwrap();
    assert_eq!(
        status.signal(),
        Some(libc::SIGKILL),
        "the holder lives on: {status}"
    );
    let backing = format!("/sys/dev/block/{device}/loop/backing_file");
    assert!(
        !std::path::Path::new(&backing).exists(),
        "{device} is still attached"
    );
}
