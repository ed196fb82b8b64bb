//! `[analysis] nats_subject` (contract §3): a peer on a real nats-server
//! answers `code.analysis.parse`, and the result says `analyzer: "nats"`
//! with the peer's figures; with no responder genesis counts locally.

use std::sync::Arc;

use futures_util::StreamExt;
use genesis::config::{Config, Env};
use genesis::contract::{
    AnalysisReply, AnalysisReplyFile, AnalysisRequest, ExperimentResult, Request,
};
use genesis::runner::{NoProgress, Runner};
use genesis::store::{Status, Store};

use crate::support::nats::NatsServer;
use crate::support::*;

fn config(home: &TestHome, subject: &str) -> Arc<Config> {
    let text = format!(
        "{}\n[analysis]\nnats_subject = \"{subject}\"\ntimeout_ms = 3000\nmax_file_bytes = 1048576\n",
        std::fs::read_to_string(&home.config).unwrap()
    );
    Arc::new(
        Config::from_layers(
            home.home(),
            Some((home.config.clone(), text)),
            &Env::default(),
        )
        .unwrap(),
    )
}

/// A python repo with one LLM call in the file the patch rewrites.
fn home_with_repo() -> (TestHome, Request) {
    ensure_image("python");
    let home = TestHome::new(
        "default_repo = \"app\"\n[repos.app]\npath = \"{root}/app\"\nimage = \"genesis/python:bookworm\"\ntest_command = \"python3 -m pytest -q -p no:cacheprovider --junitxml=/genesis/out/junit.xml\"\nreport = \"junit:/genesis/out/junit.xml\"\n",
    );
    let repo = git_repo(
        &home.root().join("app"),
        &[
            ("agent.py", "def ask(llm, q):\n    return llm.complete(q)\n"),
            ("test_agent.py", "def test_ok():\n    assert True\n"),
        ],
    );
    let patch = diff_for(
        &repo,
        &[(
            "agent.py",
            Some("def ask(llm, q):\n    if not q:\n        return ''\n    return q\n"),
        )],
    );
    let request = Request::parse(
        request("peer-1", "high", &["agent.py"], &patch)
            .to_string()
            .as_bytes(),
    )
    .unwrap();
    (home, request)
}

fn run(config: Arc<Config>, request: &Request, nats: Option<String>) -> ExperimentResult {
    let request = request.clone();
    block_on(async move {
        let store = Store::open(&config.store_path()).unwrap();
        let runner = Runner::new(config, store).await.unwrap();
        if let Some(url) = nats {
            runner.set_analysis_peer(async_nats::connect(url).await.unwrap());
        }
        runner.accept(&request, Status::Queued).await.unwrap();
        runner.run(&request, &NoProgress).await
    })
}

#[test]
fn a_peer_answers_and_is_named_and_without_one_genesis_counts_locally() {
    let nats = NatsServer::start(false);
    let (home, request) = home_with_repo();

    // The peer: checks what it is sent and answers fixed figures.
    let url = nats.url();
    let (seen_tx, seen_rx) = std::sync::mpsc::channel::<AnalysisRequest>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let peer = std::thread::spawn(move || {
        block_on(async move {
            let client = async_nats::connect(url).await.unwrap();
            let mut sub = client.subscribe("code.analysis.parse").await.unwrap();
            client.flush().await.unwrap();
            ready_tx.send(()).unwrap();
            if let Some(msg) = sub.next().await {
                let asked: AnalysisRequest = serde_json::from_slice(&msg.payload).unwrap();
                let reply = AnalysisReply {
                    files: vec![AnalysisReplyFile {
                        path: "agent.py".into(),
                        llm_call_sites_before: 3,
                        llm_call_sites_after: 1,
                        complexity_before: 4,
                        complexity_after: 6,
                    }],
                };
                client
                    .publish(
                        msg.reply.unwrap(),
                        serde_json::to_vec(&reply).unwrap().into(),
                    )
                    .await
                    .unwrap();
                client.flush().await.unwrap();
                seen_tx.send(asked).unwrap();
            }
        })
    });
    ready_rx.recv().unwrap();

    let result = run(
        config(&home, "code.analysis.parse"),
        &request,
        Some(nats.url()),
    );
    let ExperimentResult::Success(done) = result else {
        panic!("{result:?}")
    };
    let asked = seen_rx.recv().unwrap();
    peer.join().unwrap();
    assert_eq!(asked.experiment_id, "peer-1");
    assert_eq!(asked.files.len(), 1);
    assert_eq!(asked.files[0].path, "agent.py");
    assert_eq!(asked.files[0].language, "python");
    assert!(asked.files[0]
        .before
        .as_deref()
        .unwrap()
        .contains("llm.complete"));
    let analysis = done.analysis.unwrap();
    assert_eq!(analysis.analyzer, "nats");
    assert_eq!(
        (
            analysis.llm_call_sites.before,
            analysis.llm_call_sites.after
        ),
        (3, 1)
    );
    assert_eq!(done.metrics.llm_reduction, 2.0 / 3.0);
    assert_eq!(done.metrics.complexity_change, Some(0.5));

    // No responder on the subject: counted locally, at once.
    let (home2, mut request2) = home_with_repo();
    request2.experiment_id = "peer-2".into();
    let result = run(
        config(&home2, "nobody.listens.here"),
        &request2,
        Some(nats.url()),
    );
    let ExperimentResult::Success(done) = result else {
        panic!("{result:?}")
    };
    let analysis = done.analysis.unwrap();
    assert_eq!(analysis.analyzer, "local");
    // One `llm.complete(` before, none after; complexity 1 -> 2.
    assert_eq!(
        (
            analysis.llm_call_sites.before,
            analysis.llm_call_sites.after
        ),
        (1, 0)
    );
    assert_eq!(
        (analysis.complexity.before, analysis.complexity.after),
        (1, 2)
    );
    assert_eq!(done.metrics.llm_reduction, 1.0);
    assert_eq!(done.metrics.complexity_change, Some(1.0));
}
