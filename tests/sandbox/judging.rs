//! Judging, end to end on the bundled example (a real pytest suite in the
//! python image, whose assistant asks a model through the official openai
//! SDK, installed into an environment): every number of a breaking change
//! checked against values worked out by hand, the benign change merged on
//! the LLM calls it saves, and one shared baseline run for several
//! experiments on one commit.

use std::sync::Arc;

use genesis::config::{Config, Env};
use genesis::contract::{ExperimentResult, Request};
use genesis::runner::{NoProgress, Runner};
use genesis::store::{Status, Store};

use crate::support::*;

const CONFIG: &str = r#"
default_repo = "calc"
[repos.calc]
path = "{root}/calc"
image = "genesis/python:bookworm"
install_command = "pip install -r requirements.txt"
install_inputs = ["requirements.txt"]
test_command = "python3 -m pytest -q -p no:cacheprovider --junitxml=/genesis/out/junit.xml"
report = "junit:/genesis/out/junit.xml"
llm_answers = "llm_answers.jsonl"
"#;

/// The bundled example repo, committed fresh in the test's temp dir.
fn calc_home() -> TestHome {
    ensure_image("python");
    let home = TestHome::new(CONFIG);
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/calc");
    git_copy(&src, &home.root().join("calc"));
    home
}

fn example_request(name: &str) -> serde_json::Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(format!("examples/requests/{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn a_breaking_patch_is_measured_exactly() {
    let home = calc_home();
    let out = home.run_request(&example_request("breaking"));
    let r = result_json(&out);
    assert_eq!(
        r["status"],
        "success",
        "{r}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let m = &r["metrics"];
    // 21 tests: 10 in test_ops (3 parametrized), 11 in test_assistant (10
    // questions, one rule); none skipped.
    assert_eq!(m["test_count"], 21, "{r}");
    // div(1, 0) now returns 0 instead of raising; mean([]) raises
    // ZeroDivisionError, not ValueError; the 6 questions that are not
    // arithmetic are now routed "other" instead of asking the model.
    assert_eq!(m["failures"], 8, "{r}");
    let regressions: Vec<&str> = r["regressions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(regressions.len(), 8, "{r}");
    assert!(regressions.contains(&"tests.test_ops::test_div_by_zero"));
    assert!(regressions.contains(&"tests.test_ops::test_mean_of_nothing"));
    assert!(regressions.contains(&"tests.test_assistant::test_route[Who wrote Hamlet?-literature]"));
    assert_eq!(m["success_rate"].as_f64().unwrap(), 13.0 / 21.0);
    // All 21 passed on the baseline; 8 of them fail now.
    assert_eq!(m["regression"].as_f64().unwrap(), 8.0 / 21.0);
    // The model is no longer asked at all: 10 calls observed, then none.
    assert_eq!(r["llm"]["source"], "observed");
    assert_eq!(r["llm"]["calls"]["before"], 10);
    assert_eq!(r["llm"]["calls"]["after"], 0);
    assert_eq!(m["llm_reduction"].as_f64().unwrap(), 1.0);
    assert_eq!(r["baseline"]["test_count"], 21);
    assert_eq!(r["baseline"]["failures"], 0);
    let base_ms = r["baseline"]["runtime_ms"].as_f64().unwrap();
    let cand_ms = m["runtime_ms"].as_f64().unwrap();
    assert!(
        (m["performance_delta"].as_f64().unwrap() - (cand_ms - base_ms) / base_ms).abs() < 1e-12
    );
    assert!(m["memory_peak_mb"].as_f64().unwrap() > 1.0, "{r}");
    assert_eq!(r["recommendation"], "rollback");
    let reasons = r["reasons"].as_array().unwrap();
    assert!(
        reasons[0]
            .as_str()
            .unwrap()
            .starts_with("rule 1 rollback: regression 0.381 > 0.05"),
        "{r}"
    );
    // `genesis show` tells the same story.
    let show = home.run_args(&["show", "example-breaking"]);
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(
        text.contains("verdict      rollback") && text.contains("tests.test_ops::test_div_by_zero"),
        "{text}"
    );
    assert!(home.containers_left().is_empty());
}

#[test]
fn a_benign_patch_merges() {
    let home = calc_home();
    let r = result_json(&home.run_request(&example_request("benign")));
    assert_eq!(r["status"], "success", "{r}");
    assert_eq!(r["metrics"]["test_count"], 21);
    assert_eq!(r["metrics"]["failures"], 0);
    assert_eq!(r["metrics"]["regression"], 0.0);
    // The call is guarded, not removed: still 1 call site, but the 4
    // arithmetic questions no longer reach the model: 10 calls, then 6.
    assert_eq!(r["analysis"]["llm_call_sites"]["before"], 1);
    assert_eq!(r["analysis"]["llm_call_sites"]["after"], 1);
    assert_eq!(r["llm"]["source"], "observed");
    assert_eq!(r["llm"]["calls"]["before"], 10);
    assert_eq!(r["llm"]["calls"]["after"], 6);
    assert_eq!(r["metrics"]["llm_reduction"], 0.4);
    assert_eq!(r["recommendation"], "merge");
    assert!(
        r["reasons"][0]
            .as_str()
            .unwrap()
            .starts_with("rule 2 merge: llm_reduction 0.4 > 0.3"),
        "{r}"
    );
}

#[test]
fn concurrent_experiments_on_one_commit_share_one_baseline_run() {
    let home = calc_home();
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
    let base = example_request("benign");
    let results = block_on(async move {
        let store = Store::open(&config.store_path()).unwrap();
        let runner = Arc::new(Runner::new(config, store).await.unwrap());
        let mut tasks = Vec::new();
        for i in 0..3 {
            let mut req = base.clone();
            req["experiment_id"] = format!("shared-baseline-{i}").into();
            let request = Request::parse(req.to_string().as_bytes()).unwrap();
            let runner = runner.clone();
            tasks.push(tokio::spawn(async move {
                runner.accept(&request, Status::Queued).await.unwrap();
                let result = runner.run(&request, &NoProgress).await;
                let history = runner.store.call({
                    let id = request.experiment_id.clone();
                    move |s| s.history(&id)
                });
                (result, history.await.unwrap())
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let mut baseline_runs = 0;
    for (result, history) in &results {
        assert!(matches!(result, ExperimentResult::Success(_)), "{result:?}");
        baseline_runs += history
            .iter()
            .filter(|h| {
                h.operation == genesis::store::SandboxOperation::Create
                    && h.detail.contains("(baseline)")
            })
            .count();
    }
    assert_eq!(
        baseline_runs, 1,
        "three experiments on one commit must share one baseline run"
    );
}
