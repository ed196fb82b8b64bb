//! One experiment end to end (baseline cached) against a raw
//! `docker run --rm` of the same image and command, side by side; and the
//! same experiment with snapshot layers off (the snapshot uploaded as a
//! tarball), to see which path a small repo should take.
//!
//! Run with `cargo bench --bench run`. Needs the Docker engine and the
//! busybox test image (`genesis images build busybox`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use genesis::config::{Config, Env};
use genesis::contract::Request;
use genesis::runner::{NoProgress, Runner};
use genesis::store::{Status, Store};

const IMAGE: &str = "genesis/busybox:latest";
const SUITE: &str = "echo 1..3; echo ok 1 - a; echo ok 2 - b; echo ok 3 - c";

fn repo(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("run_tests.sh"), format!("{SUITE}\n")).unwrap();
    let git = |args: &[&str]| {
        let ok = std::process::Command::new("git")
            .args(args)
            .current_dir(dir)
            .status()
            .unwrap();
        assert!(ok.success());
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "-A"]);
    git(&[
        "-c",
        "user.name=b",
        "-c",
        "user.email=b@localhost",
        "commit",
        "-q",
        "-m",
        "init",
    ]);
}

/// A runner over the bench repo, with snapshot layers on or off (off: the
/// snapshot tarball is uploaded into each run, as before layers).
fn runner(rt: &tokio::runtime::Runtime, dir: &std::path::Path, layers: bool) -> Runner {
    let text = format!(
        "default_repo = \"app\"\n[repos.app]\npath = \"{}/app\"\nimage = \"{IMAGE}\"\ntest_command = \"sh run_tests.sh\"\nreport = \"tap\"\n[sandbox]\nlayers = {layers}\n",
        dir.display()
    );
    let home = dir.join(format!("home-{layers}"));
    let config = Arc::new(
        Config::from_layers(home, Some((dir.join("g.toml"), text)), &Env::default()).unwrap(),
    );
    let store = Store::open(&config.store_path()).unwrap();
    rt.block_on(Runner::new(config, store)).unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    repo(&dir.path().join("app"));
    let counter = AtomicU64::new(0);
    let request = |n: u64| {
        Request::parse(
            serde_json::json!({
                "experiment_id": format!("bench-{n}"), "instance_id": "bench", "experiment_type": "bench",
                "risk_level": "low", "changes": {"files": []}
            })
            .to_string()
            .as_bytes(),
        )
        .unwrap()
    };
    let run = |runner: &Runner, n: u64| {
        let r = request(n);
        rt.block_on(async {
            runner.accept(&r, Status::Queued).await.unwrap();
            assert!(runner.run(&r, &NoProgress).await.is_success());
        })
    };
    let layered = runner(&rt, dir.path(), true);
    let uploaded = runner(&rt, dir.path(), false);
    // Warm the baseline caches so each measured experiment runs one container, like docker run.
    run(&layered, u64::MAX);
    run(&uploaded, u64::MAX);

    let mut group = c.benchmark_group("one experiment");
    group.sample_size(10);
    group.bench_function("genesis run (baseline cached)", |b| {
        b.iter(|| run(&layered, counter.fetch_add(1, Ordering::Relaxed)))
    });
    group.bench_function("genesis run, layers off (baseline cached)", |b| {
        b.iter(|| run(&uploaded, counter.fetch_add(1, Ordering::Relaxed)))
    });
    group.bench_function("docker run --rm", |b| {
        b.iter(|| {
            let out = std::process::Command::new("docker")
                .args(["run", "--rm", "--network", "none", IMAGE, "sh", "-c", SUITE])
                .output()
                .unwrap();
            assert!(out.status.success());
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
