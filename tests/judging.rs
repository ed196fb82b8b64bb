//! Judging, end to end on a real pytest suite in the python image: every
//! number of a breaking change checked against values worked out by hand,
//! and one shared baseline run for several experiments on one commit.

mod support;

use std::sync::Arc;

use genesis::config::{Config, Env};
use genesis::contract::{ExperimentResult, Request};
use genesis::runner::{NoProgress, Runner};
use genesis::store::{Status, Store};
use support::*;

const CONFIG: &str = r#"
default_repo = "calc"
[repos.calc]
path = "{root}/calc"
image = "genesis/python:bookworm"
test_command = "python3 -m pytest -q -p no:cacheprovider --junitxml=/genesis/out/junit.xml"
report = "junit:/genesis/out/junit.xml"
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
    // 13 tests: 10 in test_ops (3 parametrized), 3 in test_assistant; none skipped.
    assert_eq!(m["test_count"], 13, "{r}");
    // div(1, 0) now returns 0 instead of raising; mean([]) raises ZeroDivisionError, not ValueError.
    assert_eq!(m["failures"], 2, "{r}");
    let regressions: Vec<&str> = r["regressions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(
        regressions,
        [
            "tests.test_ops::test_div_by_zero",
            "tests.test_ops::test_mean_of_nothing"
        ]
    );
    assert_eq!(m["success_rate"].as_f64().unwrap(), 11.0 / 13.0);
    // All 13 passed on the baseline; 2 of them fail now.
    assert_eq!(m["regression"].as_f64().unwrap(), 2.0 / 13.0);
    // llm.complete( appears twice before (classify, explain) and once after; the
    // comment "the model is no longer asked" and the prompt strings do not count.
    assert_eq!(m["llm_reduction"].as_f64().unwrap(), 0.5);
    assert_eq!(r["baseline"]["test_count"], 13);
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
            .starts_with("rule 1 rollback: regression 0.1538 > 0.05"),
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
    assert_eq!(r["metrics"]["test_count"], 13);
    assert_eq!(r["metrics"]["failures"], 0);
    assert_eq!(r["metrics"]["regression"], 0.0);
    // The call is guarded, not removed: still 2 call sites.
    assert_eq!(r["metrics"]["llm_reduction"], 0.0);
    assert_eq!(r["recommendation"], "merge");
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
            .filter(|h| h.operation == "create" && h.detail.contains("(baseline)"))
            .count();
    }
    assert_eq!(
        baseline_runs, 1,
        "three experiments on one commit must share one baseline run"
    );
}
