//! `genesis export --format sql` of synthetic stores of 10k, 100k and 300k
//! experiments (each with its metrics row): wall time and the export
//! process's peak resident memory. Memory is bounded by the store's page
//! cache (`store_cache_mb`), not by the row count: rows stream from the redb
//! read transaction to the file.
//!
//! Run with `cargo bench --bench export`. The export runs as the real
//! `genesis` binary in a child process, so its peak RSS (from `wait4`) is
//! the export's alone, not this harness's.

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use genesis::contract::{Metrics, Request};
use genesis::store::{BaselineFigures, ExperimentRecord, MetricsRow, Status, Store};

const SIZES: [usize; 3] = [10_000, 100_000, 300_000];
/// Records per write transaction while building the store.
const BATCH: usize = 5_000;

fn synthetic(i: usize) -> (ExperimentRecord, Option<MetricsRow>) {
    let id = format!("exp-{i:07}");
    let experiment_type = ["refactor", "optimize", "fix"][i % 3];
    let risk_level = ["low", "medium", "high"][i % 3];
    let doc = serde_json::json!({
        "experiment_id": id,
        "instance_id": "bench-instance",
        "experiment_type": experiment_type,
        "description": format!("synthetic experiment {i}\twith a tab and a \\ backslash"),
        "risk_level": risk_level,
        "estimated_impact": (i % 100) as f64 / 100.0,
        "changes": {"files": ["src/lib.rs"], "patch": "--- a/src/lib.rs\n+++ b/src/lib.rs\n@@ -1 +1 @@\n-a\n+b\n"},
        "rollback_plan": "revert",
        "timeout_ms": 600000
    });
    let request = Request::parse(doc.to_string().as_bytes()).unwrap();
    let t = 1_764_000_000_000 + i as i64 * 1000;
    let mut record = ExperimentRecord::new(&request, Status::Completed, "bench:1", t);
    record.recommendation = Some(genesis::contract::Recommendation::Merge);
    let metrics = MetricsRow {
        experiment_id: id,
        host: String::new(),
        metrics: Metrics {
            success_rate: 0.95,
            llm_reduction: 0.38,
            regression: 0.02,
            runtime_ms: 41_250,
            test_count: 250,
            failures: 15,
            memory_peak_mb: 412.5,
            cpu_usage_percent: 87.0,
            io_operations: 1834,
            performance_delta: -0.04,
            code_coverage_percent: None,
            complexity_change: None,
        },
        baseline: BaselineFigures {
            test_count: 250,
            failures: 10,
            runtime_ms: 43_000,
        },
        regressions: vec!["tests::a".into()],
        flaky: vec![],
        inserted_at: t,
    };
    (record, Some(metrics))
}

fn build_store(home: &Path, n: usize) {
    std::fs::create_dir_all(home).unwrap();
    let store = Store::open(&home.join("genesis.redb")).unwrap();
    let mut start = 0;
    while start < n {
        let rows: Vec<_> = (start..(start + BATCH).min(n)).map(synthetic).collect();
        store.write_batch(&rows).unwrap();
        start += BATCH;
    }
}

/// Runs the binary, returning (wall seconds, peak RSS in MiB).
fn timed_export(home: &Path, out: &Path) -> (f64, f64) {
    let started = Instant::now();
    // Reaped below with wait4, which also returns its resource usage.
    #[allow(clippy::zombie_processes)]
    let child = Command::new(env!("CARGO_BIN_EXE_genesis"))
        .args(["export", "--format", "sql", "--output"])
        .arg(out)
        .env("GENESIS_HOME", home)
        .spawn()
        .unwrap();
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = child.id() as libc::pid_t;
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4 failed");
    let status = std::process::ExitStatus::from_raw(status);
    assert!(status.success(), "export failed: {status}");
    // ru_maxrss is in KiB on Linux.
    (
        started.elapsed().as_secs_f64(),
        usage.ru_maxrss as f64 / 1024.0,
    )
}

fn main() {
    // `cargo test --benches` runs benches with --test-ish flags; only the
    // real `cargo bench` (which passes --bench) should do the heavy work.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    println!("| experiments | store build s | export s | rows/s | file MiB | peak RSS MiB |");
    println!("|---|---|---|---|---|---|");
    for n in SIZES {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().join("home");
        let built = Instant::now();
        build_store(&home, n);
        let build_s = built.elapsed().as_secs_f64();
        let out = dir.path().join("export.sql");
        let (secs, rss) = timed_export(&home, &out);
        let size = std::fs::metadata(&out).unwrap().len() as f64 / (1024.0 * 1024.0);
        println!(
            "| {n} | {build_s:.1} | {secs:.2} | {:.0} | {size:.1} | {rss:.1} |",
            (2 * n) as f64 / secs
        );
    }
}
