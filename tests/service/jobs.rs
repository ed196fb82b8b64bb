//! Scheduled jobs through their real entry points: `genesis jobs run` as a
//! user runs it (with and without a NATS server), the scheduler on a fake
//! clock publishing to a real nats-server, and the cleanup job's ages
//! judged by the injected clock.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use futures_util::StreamExt;
use tokio::sync::watch;

use genesis::config::{Config, Env};
use genesis::contract::{Health, Metrics, MetricsReport, Request};
use genesis::jobs::{self, FakeClock, Job, JobContext, JobState};
use genesis::store::{ExperimentRecord, MetricsRow, Status, Store};

use crate::support::nats::NatsServer;
use crate::support::TestHome;

/// How long a test waits for a message that should arrive at once.
const ARRIVAL: Duration = Duration::from_secs(20);

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn request(id: &str, kind: &str, risk: &str) -> Request {
    let body = serde_json::json!({
        "experiment_id": id, "instance_id": "i", "experiment_type": kind,
        "risk_level": risk, "changes": {}
    });
    Request::parse(body.to_string().as_bytes()).unwrap()
}

/// Stores a finished experiment updated at `at`.
fn finished(store: &Store, id: &str, kind: &str, risk: &str, status: Status, rec: &str, at: i64) {
    let mut record = ExperimentRecord::new(&request(id, kind, risk), status, "test:1", at);
    record.recommendation = genesis::contract::Named::from_name(rec);
    let metrics = (status == Status::Completed).then(|| MetricsRow {
        experiment_id: id.into(),
        host: String::new(),
        metrics: Metrics {
            regression: 0.02,
            llm_reduction: 0.5,
            ..Metrics::default()
        },
        baseline: Default::default(),
        regressions: vec![],
        flaky: vec![],
        inserted_at: at,
    });
    store.write_final(&record, metrics.as_ref(), None).unwrap();
}

/// A home whose store holds a merge and a failure from the last hour, and
/// one running experiment.
fn home_with_history() -> TestHome {
    let home = TestHome::new("");
    let store = Store::open(&home.home().join("genesis.redb")).unwrap();
    let recent = (Utc::now() - TimeDelta::hours(1)).timestamp_millis();
    finished(
        &store,
        "ok-1",
        "refactor",
        "low",
        Status::Completed,
        "merge",
        recent,
    );
    finished(
        &store,
        "bad-1",
        "perf",
        "high",
        Status::Failed,
        "rollback",
        recent,
    );
    let running = ExperimentRecord::new(
        &request("run-1", "perf", "high"),
        Status::Running,
        "test:1",
        recent,
    );
    store.insert_new(&running).unwrap();
    home
}

fn text(out: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn check_report(report: &MetricsReport) {
    // The running experiment counts among the period's experiments, not
    // among the finished ones.
    assert_eq!(report.totals.experiments, 3, "{report:?}");
    assert_eq!((report.totals.completed, report.totals.failed), (1, 1));
    assert_eq!((report.totals.merge, report.totals.rollback), (1, 1));
    assert_eq!(report.success_rate, 0.5);
    assert!((report.avg_regression - 0.02).abs() < 1e-12);
    assert_eq!(report.by_type["refactor"].completed, 1);
    assert_eq!(report.by_type["perf"].failed, 1);
    assert_eq!(report.by_risk_level["high"].success_rate, 0.0);
    assert_eq!(report.period.to - report.period.from, TimeDelta::days(1));
}

#[test]
fn jobs_run_report_without_nats_prints_the_document_and_exits_0() {
    let home = home_with_history();
    let out = home
        .command()
        .env("GENESIS_NATS_URL", "nats://127.0.0.1:1")
        .args(["jobs", "run", "report"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stderr.contains("could not publish"), "{stderr}");
    assert!(stderr.contains("system.metrics.genesis"), "{stderr}");
    let report: MetricsReport = serde_json::from_str(stdout.trim()).unwrap();
    check_report(&report);

    let out = home
        .command()
        .env("GENESIS_NATS_URL", "nats://127.0.0.1:1")
        .args(["jobs", "run", "health"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let health: Health = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!((health.active_experiments, health.queued), (1, 0));
    assert_eq!(health.success_rate_30d, 0.5);
    assert!(health.disk_used_mb > 0.0);

    let store = Store::open(&home.home().join("genesis.redb")).unwrap();
    let state: JobState = store.job_state("report").unwrap().unwrap();
    assert!(state.ok && state.runs == 1, "{state:?}");
}

/// A server that accepts and then says nothing (no INFO) is waited for only
/// `[nats] cli_connect_timeout_ms`, by `jobs run` and `doctor` alike, and
/// both name the key.
#[test]
fn a_silent_nats_is_waited_for_only_the_cli_connect_timeout() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("nats://{}", listener.local_addr().unwrap());
    // Hold every connection open, silent, for the rest of the test process.
    std::thread::spawn(move || {
        let held: Vec<_> = listener.incoming().collect();
        drop(held);
    });
    let home = home_with_history();
    std::fs::write(&home.config, "[nats]\ncli_connect_timeout_ms = 300\n").unwrap();
    let expected = format!("no answer from {url} within 300 ms ([nats] cli_connect_timeout_ms)");

    let out = home
        .command()
        .env("GENESIS_NATS_URL", &url)
        .args(["jobs", "run", "health"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(stderr.contains(&expected), "{stderr}");

    let out = home
        .command()
        .env("GENESIS_NATS_URL", &url)
        .arg("doctor")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    let line = stdout
        .lines()
        .chain(stderr.lines())
        .find(|l| l.starts_with("✗ nats"))
        .unwrap_or_else(|| panic!("no failed nats line in {stdout}\n{stderr}"));
    assert!(line.contains(&expected), "{line}");
}

#[test]
fn an_unknown_job_is_a_usage_error() {
    let home = TestHome::new("");
    let out = home
        .command()
        .args(["jobs", "run", "frobnicate"])
        .output()
        .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cleanup, analysis, report, health"),
        "{stderr}"
    );
}

#[test]
fn jobs_run_cleanup_and_analysis_print_their_documents() {
    let home = home_with_history();
    for job in ["cleanup", "analysis"] {
        let out = home.command().args(["jobs", "run", job]).output().unwrap();
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(0), "{job}: {stdout}\n{stderr}");
        let doc: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert!(doc.is_object(), "{job}: {doc}");
    }
    let store = Store::open(&home.home().join("genesis.redb")).unwrap();
    let trend: jobs::Trend = store.trend(jobs::TREND_LATEST).unwrap().unwrap();
    assert_eq!(trend.totals.experiments, 3);
    assert_eq!(trend.by_type["perf"].count, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn report_and_health_reach_nats() {
    let server = NatsServer::start(false);
    let client = async_nats::connect(server.url()).await.unwrap();
    let mut metrics = client.subscribe("system.metrics.genesis").await.unwrap();
    let mut health = client.subscribe("system.health.genesis").await.unwrap();
    client.flush().await.unwrap();

    let home = home_with_history();
    let url = server.url();
    let out = tokio::task::spawn_blocking(move || {
        let report = home
            .command()
            .env("GENESIS_NATS_URL", &url)
            .args(["jobs", "run", "report"])
            .output();
        let health = home
            .command()
            .env("GENESIS_NATS_URL", &url)
            .args(["jobs", "run", "health"])
            .output();
        (report.unwrap(), health.unwrap())
    })
    .await
    .unwrap();
    for o in [&out.0, &out.1] {
        let (stdout, stderr) = text(o);
        assert_eq!(o.status.code(), Some(0), "{stdout}\n{stderr}");
        assert!(stderr.contains("published"), "{stderr}");
    }
    let msg = tokio::time::timeout(ARRIVAL, metrics.next())
        .await
        .unwrap()
        .unwrap();
    check_report(&serde_json::from_slice::<MetricsReport>(&msg.payload).unwrap());
    let msg = tokio::time::timeout(ARRIVAL, health.next())
        .await
        .unwrap()
        .unwrap();
    let doc: Health = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(doc.active_experiments, 1);
}

fn context(
    home: &std::path::Path,
    clock: Arc<FakeClock>,
    nats: Option<async_nats::Client>,
) -> JobContext {
    let config = Config::from_layers(home.to_path_buf(), None, &Env::default()).unwrap();
    JobContext {
        config: Arc::new(config),
        store: Store::open(&home.join("genesis.redb")).unwrap(),
        nats,
        clock,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_scheduler_publishes_health_at_its_instant() {
    let server = NatsServer::start(false);
    let client = async_nats::connect(server.url()).await.unwrap();
    let mut health = client.subscribe("system.health.genesis").await.unwrap();
    client.flush().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(FakeClock::new(t("2024-03-01T10:02:30Z")));
    let ctx = context(dir.path(), clock.clone(), Some(client.clone()));
    let (stop, shutdown) = watch::channel(false);
    let scheduler = jobs::spawn_scheduler(ctx.clone(), shutdown);

    // Every job asleep until its own next instant.
    for at in [
        "2024-03-01T10:05:00Z", // health, every 5 minutes
        "2024-03-01T12:00:00Z", // cleanup, every 6 hours
        "2024-03-02T00:00:00Z", // analysis, daily at midnight
        "2024-03-02T01:00:00Z", // report, daily at 01:00
    ] {
        let at = t(at);
        assert_eq!(clock.wait_for_sleeper(|d| d == at).await, at);
    }
    let due = t("2024-03-01T10:05:00Z");
    clock.set(due);
    let msg = tokio::time::timeout(ARRIVAL, health.next())
        .await
        .unwrap()
        .unwrap();
    let doc: Health = serde_json::from_slice(&msg.payload).unwrap();
    assert_eq!(doc.timestamp, due);
    // Then back to sleep until the next instant.
    let next = t("2024-03-01T10:10:00Z");
    assert_eq!(clock.wait_for_sleeper(|d| d == next).await, next);
    let state: JobState = ctx.store.job_state("health").unwrap().unwrap();
    assert_eq!((state.runs, state.last_run_ms), (1, due.timestamp_millis()));

    stop.send(true).unwrap();
    tokio::time::timeout(ARRIVAL, scheduler)
        .await
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cleanup_job_judges_ages_by_the_injected_clock() {
    let dir = tempfile::tempdir().unwrap();
    let start = t("2024-03-01T00:00:00Z");
    let clock = Arc::new(FakeClock::new(start));
    let ctx = context(dir.path(), clock.clone(), None);
    finished(
        &ctx.store,
        "old-fail",
        "perf",
        "high",
        Status::Failed,
        "rollback",
        start.timestamp_millis(),
    );
    let sandbox = dir.path().join("sandboxes/old-fail");
    std::fs::create_dir_all(sandbox.join("candidate")).unwrap();
    std::fs::write(sandbox.join("candidate/test.log"), "boom\n").unwrap();

    // delete_after_hours defaults to 24.
    clock.set(start + TimeDelta::hours(23));
    let outcome = jobs::run_job(&ctx, Job::Cleanup).await.unwrap();
    assert!(sandbox.exists(), "{outcome:?}");
    clock.set(start + TimeDelta::hours(25));
    let outcome = jobs::run_job(&ctx, Job::Cleanup).await.unwrap();
    assert!(!sandbox.exists(), "{outcome:?}");
    assert!(outcome.summary.contains("deleted 1"), "{}", outcome.summary);

    let state: JobState = ctx.store.job_state("cleanup").unwrap().unwrap();
    assert_eq!(state.runs, 2);
    assert_eq!(
        state.last_run_ms,
        (start + TimeDelta::hours(25)).timestamp_millis()
    );
    let ops: Vec<String> = ctx
        .store
        .history("old-fail")
        .unwrap()
        .into_iter()
        .map(|h| h.operation.as_str().to_owned())
        .collect();
    assert_eq!(ops, ["delete"]);
}

#[test]
fn jobs_run_skips_a_job_another_process_is_running() {
    use std::os::fd::AsRawFd;
    let home = TestHome::new("");
    let dir = home.home().join("jobs");
    std::fs::create_dir_all(&dir).unwrap();
    // Hold the cleanup lock as a running `genesis serve` would.
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join("cleanup.lock"))
        .unwrap();
    // SAFETY: a zeroed flock is valid; the descriptor is open for the call.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    assert_eq!(
        unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &lock) },
        0
    );

    let out = home
        .command()
        .args(["jobs", "run", "cleanup"])
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stdout}\n{stderr}");
    assert!(
        stderr.contains("another cleanup run is in progress"),
        "{stderr}"
    );
    // Other jobs are not affected, and once released cleanup runs again.
    let out = home
        .command()
        .args(["jobs", "run", "analysis"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    drop(file);
    let out = home
        .command()
        .args(["jobs", "run", "cleanup"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", text(&out).1);
}
