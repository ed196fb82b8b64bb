//! `[framework] nats_subject`: before detecting a repo's suite itself,
//! genesis asks a peer on a real nats-server with the repo's top-level
//! names and manifests. An answer is used (command, report and image) and
//! named `framework.detected_by: "peer"`; no responder or a peer that does
//! not answer within `timeout_ms` falls back to local detection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use genesis::config::{Config, Env};
use genesis::contract::{DetectedBy, ExperimentResult, FrameworkAdvice, FrameworkQuery, Request};
use genesis::runner::{NoProgress, Runner};
use genesis::store::{Status, Store};

use crate::support::nats::NatsServer;
use crate::support::*;

const SUBJECT: &str = "genesis.framework.query";

/// A repo with no configured command: pytest locally (one test in
/// `tests/`), and a TAP script the peer knows about (three tests).
fn home_with_repo(id: &str, subject: &str, timeout_ms: u64) -> (TestHome, Arc<Config>, Request) {
    ensure_image("python");
    ensure_image("busybox");
    let home = TestHome::new(&format!(
        "default_repo = \"app\"\n[repos.app]\npath = \"{{root}}/app\"\nimage = \"genesis/python:bookworm\"\n\
         [framework]\nnats_subject = \"{subject}\"\ntimeout_ms = {timeout_ms}\nmax_manifest_bytes = 65536\n"
    ));
    git_repo(
        &home.root().join("app"),
        &[
            ("pyproject.toml", "[project]\nname = \"app\"\n"),
            ("tests/test_app.py", "def test_ok():\n    assert True\n"),
            ("run_tests.sh", TAP_SUITE),
        ],
    );
    let config = Arc::new(
        Config::from_layers(
            home.home(),
            Some((
                home.config.clone(),
                std::fs::read_to_string(&home.config).unwrap(),
            )),
            &Env::default(),
        )
        .unwrap(),
    );
    let request = Request::parse(request(id, "high", &[], "").to_string().as_bytes()).unwrap();
    (home, config, request)
}

fn run(config: Arc<Config>, request: &Request, nats_url: String) -> ExperimentResult {
    let request = request.clone();
    block_on(async move {
        let store = Store::open(&config.store_path()).unwrap();
        let runner = Runner::new(config, store).await.unwrap();
        runner.set_analysis_peer(async_nats::connect(nats_url).await.unwrap());
        runner.accept(&request, Status::Queued).await.unwrap();
        runner.run(&request, &NoProgress).await
    })
}

/// A peer on `SUBJECT` that hands each query it receives to `seen` and
/// answers with `advice`, or stays silent when `advice` is None.
fn peer(url: String, advice: Option<FrameworkAdvice>) -> std::sync::mpsc::Receiver<FrameworkQuery> {
    let (seen_tx, seen_rx) = std::sync::mpsc::channel();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        block_on(async move {
            let client = async_nats::connect(url).await.unwrap();
            let mut sub = client.subscribe(SUBJECT).await.unwrap();
            client.flush().await.unwrap();
            ready_tx.send(()).unwrap();
            while let Some(msg) = sub.next().await {
                let asked: FrameworkQuery = serde_json::from_slice(&msg.payload).unwrap();
                if let (Some(advice), Some(reply)) = (&advice, msg.reply) {
                    let body = serde_json::to_vec(advice).unwrap();
                    client.publish(reply, body.into()).await.unwrap();
                    client.flush().await.unwrap();
                }
                if seen_tx.send(asked).is_err() {
                    return;
                }
            }
        })
    });
    ready_rx.recv().unwrap();
    seen_rx
}

fn completed(result: ExperimentResult) -> genesis::contract::Completed {
    match result {
        ExperimentResult::Success(done) => done,
        other => panic!("{other:?}"),
    }
}

#[test]
fn the_peers_advice_is_used_and_named() {
    let nats = NatsServer::start(false);
    let (_home, config, request) = home_with_repo("fw-peer", SUBJECT, 5000);
    // Only busybox has /bin/busybox: the suite passes only in the peer's image.
    let seen = peer(
        nats.url(),
        Some(FrameworkAdvice {
            test_command: "test -x /bin/busybox && sh run_tests.sh".into(),
            report: "tap".into(),
            image: Some("genesis/busybox:latest".into()),
        }),
    );
    let done = completed(run(config, &request, nats.url()));
    let asked = seen.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(asked.repo, "app");
    assert_eq!(asked.files, ["pyproject.toml", "run_tests.sh", "tests"]);
    assert_eq!(
        asked.manifests.keys().collect::<Vec<_>>(),
        ["pyproject.toml"]
    );
    assert!(asked.manifests["pyproject.toml"].contains("name = \"app\""));
    let framework = done.framework.unwrap();
    assert_eq!(framework.detected_by, DetectedBy::Peer);
    assert_eq!(framework.name, "peer");
    assert_eq!(framework.report, "tap");
    assert_eq!(done.metrics.test_count, 3);
}

#[test]
fn without_a_responder_genesis_detects_locally_at_once() {
    let nats = NatsServer::start(false);
    let (_home, config, request) = home_with_repo("fw-none", "nobody.listens.here", 5000);
    let done = completed(run(config, &request, nats.url()));
    let framework = done.framework.unwrap();
    assert_eq!(framework.detected_by, DetectedBy::Local);
    assert_eq!(framework.name, "pytest");
    assert_eq!(done.metrics.test_count, 1);
}

#[test]
fn a_peer_that_does_not_answer_in_time_is_given_up_for_local_detection() {
    let nats = NatsServer::start(false);
    let (_home, config, request) = home_with_repo("fw-slow", SUBJECT, 500);
    let seen = peer(nats.url(), None);
    let started = Instant::now();
    let done = completed(run(config, &request, nats.url()));
    let took = started.elapsed();
    seen.recv_timeout(Duration::from_secs(5))
        .expect("the peer was asked");
    let framework = done.framework.unwrap();
    assert_eq!(framework.detected_by, DetectedBy::Local);
    assert_eq!(done.metrics.test_count, 1);
    // The wait is bounded by timeout_ms, not by the experiment's own limit.
    assert!(took < Duration::from_secs(60), "{took:?}");
}
