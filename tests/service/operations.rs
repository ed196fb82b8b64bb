//! Operating `genesis serve` as the services around it are: a real
//! Prometheus (Debian's package) scrapes `/metrics` while experiments run
//! and answers queries for the counters and histograms; `/readyz` turns
//! unready, naming NATS, when the test's nats-server stops (and ready when
//! it is back); `metrics.record` follows each stored result, with the
//! request's traceparent.

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use futures_util::StreamExt;

use crate::support::nats::{free_port, NatsServer};
use crate::support::prometheus::{http_get, Prometheus};
use crate::support::*;

/// [`serve_config`] with the HTTP endpoints on `listen` and `nats_extra`
/// added to `[nats]`.
fn ops_config(listen: &str, nats_extra: &str) -> String {
    let base = serve_config(2, false).replacen("[nats]\n", &format!("[nats]\n{nats_extra}"), 1);
    format!("{base}\n[http]\nlisten = \"{listen}\"\ndisk_interval_ms = 1000\n")
}

async fn send(client: &async_nats::Client, req: &serde_json::Value, headers: HeaderMap) {
    client
        .publish_with_headers(
            "agent.events.experiment.request.test-instance",
            headers,
            req.to_string().into(),
        )
        .await
        .unwrap();
    client.flush().await.unwrap();
}

/// Waits for `n` results on the result subjects (`sub` sees every
/// experiment event; only completed and failed ones count).
async fn results(sub: &mut async_nats::Subscriber, n: usize) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    while out.len() < n {
        let msg = tokio::time::timeout(Duration::from_secs(120), sub.next())
            .await
            .unwrap_or_else(|_| panic!("{} of {n} results within 120 s", out.len()))
            .unwrap();
        let subject = msg.subject.as_str();
        if subject.contains(".completed.") || subject.contains(".failed.") {
            out.push(serde_json::from_slice(&msg.payload).unwrap());
        }
    }
    out
}

/// A suite that calls the run's LLM endpoint once (OpenAI chat), then
/// runs the TAP suite slowly enough to be scraped while it runs.
const LLM_CALLING_SUITE: &str = "wget -q -O /dev/null --header 'Content-Type: application/json' \
     --post-data '{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}' \
     http://127.0.0.1/v1/chat/completions; sleep 2; sh run_tests.sh";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_genesis_and_answers_for_its_counters_and_histograms() {
    let nats = NatsServer::start(false);
    let listen = format!("127.0.0.1:{}", free_port());
    let home = serve_home_with(&ops_config(&listen, ""));
    let _serve = ServeProcess::start(&home, &nats.url());
    let prometheus = Prometheus::start(std::slice::from_ref(&listen));
    let wait = Duration::from_secs(60);
    prometheus.wait_for("up{job=\"genesis\"}", |v| v == 1.0, wait);
    prometheus.wait_for("genesis_nats_connected", |v| v == 1.0, wait);

    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut answers = client
        .subscribe("agent.events.experiment.*.*")
        .await
        .unwrap();
    client.flush().await.unwrap();
    let mut calling = request("prom-llm", "low", &[], "");
    calling["test_command"] = LLM_CALLING_SUITE.into();
    let mut no_tests = request("prom-none", "low", &[], "");
    no_tests["test_command"] = "echo this is not TAP".into();
    for req in [sleepy_request("prom-sleepy", 2.0), calling, no_tests] {
        send(&client, &req, HeaderMap::new()).await;
    }
    let done = results(&mut answers, 3).await;
    let statuses: Vec<_> = done.iter().map(|r| r["status"].clone()).collect();
    assert_eq!(
        statuses.iter().filter(|s| *s == "success").count(),
        2,
        "{done:?}"
    );

    // Every stored result, by its labels.
    prometheus.wait_for("sum(genesis_experiments_total)", |v| v == 3.0, wait);
    let merged = "sum(genesis_experiments_total{status=\"success\",recommendation=\"merge\",risk_level=\"low\",error_kind=\"none\"})";
    assert_eq!(prometheus.value(merged), Some(2.0));
    let failed = prometheus.query("genesis_experiments_total{status=\"failed\"}");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0]["metric"]["recommendation"], "rollback");
    assert_ne!(failed[0]["metric"]["error_kind"], "none");

    // The duration histograms: one observation per experiment, and the
    // suites that slept two seconds put the candidate's median above 1 s.
    prometheus.wait_for(
        "sum(genesis_experiment_run_seconds_count)",
        |v| v == 3.0,
        wait,
    );
    prometheus.wait_for(
        "sum(genesis_experiment_queue_seconds_count)",
        |v| v == 3.0,
        wait,
    );
    prometheus.wait_for(
        "sum(genesis_suite_seconds_bucket{role=\"candidate\",le=\"+Inf\"})",
        |v| v >= 2.0,
        wait,
    );
    let median = prometheus.value(
        "histogram_quantile(0.5, sum by (le) (genesis_suite_seconds_bucket{role=\"candidate\"}))",
    );
    assert!(median.is_some_and(|m| m >= 1.0), "median {median:?}");

    // LLM calls: the candidate's (after) and the baseline's (before).
    for run in ["candidate", "baseline"] {
        let expr = format!("genesis_llm_calls_total{{run=\"{run}\",api=\"openai.chat\"}}");
        prometheus.wait_for(&expr, |v| v == 1.0, wait);
    }
    // Sandboxes were seen alive while the suites ran, and are all gone now.
    let peak = prometheus.value("max_over_time(genesis_sandboxes_alive{role=\"candidate\"}[10m])");
    assert!(peak.is_some_and(|p| p >= 1.0), "peak {peak:?}");
    prometheus.wait_for(
        "sum(genesis_sandboxes_alive)",
        |v| v == 0.0,
        Duration::from_secs(10),
    );
    prometheus.wait_for("genesis_home_disk_bytes", |v| v > 0.0, wait);
    assert_eq!(
        prometheus.value("genesis_jetstream_redeliveries_total"),
        Some(0.0)
    );
    assert!(home.containers_left().is_empty());
}

/// Polls `GET path` until `ok` holds for (status, body).
fn wait_for_http(
    addr: &str,
    path: &str,
    what: &str,
    ok: impl Fn(u16, &str) -> bool,
) -> (u16, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = http_get(addr, path);
        if let Some((status, body)) = &got {
            if ok(*status, body) {
                return (*status, body.clone());
            }
        }
        assert!(
            Instant::now() < deadline,
            "{path} not {what} within 60 s: {got:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn readyz_turns_unready_naming_nats_when_it_stops_and_ready_when_it_is_back() {
    let mut nats = NatsServer::start(false);
    let listen = format!("127.0.0.1:{}", free_port());
    let home = serve_home_with(&ops_config(&listen, ""));
    let _serve = ServeProcess::start(&home, &nats.url());

    let (_, body) = wait_for_http(&listen, "/readyz", "ready", |s, _| s == 200);
    assert_eq!(body, "ready\n");
    nats.stop();
    let (_, body) = wait_for_http(&listen, "/readyz", "unready", |s, _| s == 503);
    assert!(body.contains("nats: not connected to"), "{body}");
    assert!(
        !body.contains("store") && !body.contains("docker"),
        "only NATS is missing: {body}"
    );
    let (status, _) = http_get(&listen, "/healthz").unwrap();
    assert_eq!(status, 200, "the process is alive while NATS is away");
    let (_, metrics) = http_get(&listen, "/metrics").unwrap();
    assert!(metrics.contains("genesis_nats_connected 0"), "{metrics}");

    nats.launch();
    wait_for_http(&listen, "/readyz", "ready again", |s, _| s == 200);
    let (status, _) = http_get(&listen, "/nothing").unwrap();
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_record_follows_each_stored_result_with_its_traceparent() {
    let nats = NatsServer::start(false);
    let config = serve_config(2, false).replacen(
        "[nats]\n",
        "[nats]\nmetrics_subject = \"metrics.record\"\n",
        1,
    );
    let home = serve_home_with(&config);
    let _serve = ServeProcess::start(&home, &nats.url());
    let client = async_nats::connect(nats.url()).await.unwrap();
    let mut records = client.subscribe("metrics.record").await.unwrap();
    client.flush().await.unwrap();

    let trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut traced = HeaderMap::new();
    traced.insert("traceparent", trace);
    send(&client, &sleepy_request("rec-ok", 0.0), traced).await;
    let mut bad = request("rec-bad", "high", &[], "");
    bad["test_command"] = "echo this is not TAP".into();
    send(&client, &bad, HeaderMap::new()).await;

    let mut seen = std::collections::BTreeMap::new();
    while seen.len() < 2 {
        let msg = tokio::time::timeout(Duration::from_secs(120), records.next())
            .await
            .expect("a metrics.record message within 120 s")
            .unwrap();
        let doc: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
        let id = doc["experiment_id"].as_str().unwrap().to_owned();
        let header = msg
            .headers
            .as_ref()
            .and_then(|h| h.get("traceparent"))
            .map(|v| v.as_str().to_owned());
        assert!(
            seen.insert(id.clone(), (doc, header)).is_none(),
            "{id} recorded twice"
        );
    }
    let (ok, ok_trace) = &seen["rec-ok"];
    assert_eq!(ok["type"], "experiment");
    assert_eq!(ok["source"], "genesis");
    assert!(!ok["host"].as_str().unwrap().is_empty(), "{ok}");
    assert_eq!(ok["metrics"]["test_count"], 3);
    assert_eq!(ok["recommendation"], "merge");
    assert!(ok["timestamp"].as_str().unwrap().ends_with('Z'), "{ok}");
    assert_eq!(ok_trace.as_deref(), Some(trace));
    let (bad, bad_trace) = &seen["rec-bad"];
    assert_eq!(bad["metrics"], serde_json::Value::Null);
    assert_eq!(bad["recommendation"], "rollback");
    assert_eq!(*bad_trace, None);
}
