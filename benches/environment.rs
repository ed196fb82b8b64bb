//! Environments (contract §2a): how long building one takes, and what an
//! experiment that reuses one costs next to the same experiment without an
//! environment, side by side (baselines cached, python image, the bundled
//! calc example's arithmetic half).
//!
//! Run with `cargo bench --bench environment`. Needs the Docker engine, the
//! python image (`genesis images build python`) and PyPI through the host's
//! CA bundle (the build installs `iso8601` for the py-dep fixture).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use genesis::config::{Config, Env};
use genesis::contract::Request;
use genesis::runner::{NoProgress, Runner};
use genesis::store::{Status, Store};

const TEST: &str = "python3 -m pytest -q -p no:cacheprovider --junitxml=/genesis/out/junit.xml";

/// Runs a command in `dir`; it must succeed.
fn run(args: &[&str], dir: &Path) {
    assert!(std::process::Command::new(args[0])
        .args(&args[1..])
        .current_dir(dir)
        .status()
        .unwrap()
        .success());
}

const COMMIT: [&str; 6] = [
    "git",
    "-c",
    "user.name=b",
    "-c",
    "user.email=b@localhost",
    "commit",
];

fn git_copy(from: &Path, to: &Path) {
    run(
        &["cp", "-R", from.to_str().unwrap(), to.to_str().unwrap()],
        Path::new("/"),
    );
    run(&["git", "init", "-q", "-b", "main"], to);
    run(&["git", "add", "-A"], to);
    run(&[&COMMIT[..], &["-q", "-m", "init"]].concat(), to);
}

/// Removes the example's assistant and its tests, in a commit of its own.
fn drop_assistant(repo: &Path) {
    run(
        &[
            "git",
            "rm",
            "-q",
            "calc/assistant.py",
            "tests/test_assistant.py",
        ],
        repo,
    );
    run(&[&COMMIT[..], &["-q", "-m", "ops only"]].concat(), repo);
}

fn runner(rt: &tokio::runtime::Runtime, home: &Path, repo_keys: &str) -> Runner {
    let text = format!(
        "default_repo = \"app\"\n[repos.app]\npath = \"{}/app\"\nimage = \"genesis/python:bookworm\"\ntest_command = \"{TEST}\"\nreport = \"junit:/genesis/out/junit.xml\"\n{repo_keys}\n",
        home.parent().unwrap().display()
    );
    let config = Arc::new(
        Config::from_layers(
            home.to_path_buf(),
            Some((home.join("g.toml"), text)),
            &Env::default(),
        )
        .unwrap(),
    );
    let store = Store::open(&config.store_path()).unwrap();
    rt.block_on(Runner::new(config, store)).unwrap()
}

fn request(n: u64) -> Request {
    Request::parse(
        serde_json::json!({
            "experiment_id": format!("bench-{n}"), "instance_id": "bench", "experiment_type": "bench",
            "risk_level": "low", "changes": {"files": []}
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap()
}

fn run_one(rt: &tokio::runtime::Runtime, runner: &Runner, n: u64) {
    rt.block_on(async {
        let r = request(n);
        runner.accept(&r, Status::Queued).await.unwrap();
        let result = runner.run(&r, &NoProgress).await;
        assert!(result.is_success(), "{result:?}");
    })
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));

    // 1. Building an environment: pip install of one PyPI package, commit.
    let py = tempfile::tempdir().unwrap();
    git_copy(
        &root.join("tests/fixtures/projects/py-dep"),
        &py.path().join("app"),
    );
    let py_runner = runner(
        &rt,
        &py.path().join("home"),
        "install_command = \"pip install -r requirements.txt\"\ninstall_inputs = [\"requirements.txt\"]",
    );
    let started = Instant::now();
    let env = rt
        .block_on(py_runner.build_environment("app", "HEAD", &NoProgress))
        .unwrap();
    eprintln!(
        "environment build (py-dep: pip install iso8601, commit): {} ms wall, install+commit {} ms",
        started.elapsed().as_millis(),
        env.build_ms
    );
    let _ = std::process::Command::new("docker")
        .args(["rmi", "-f", &env.image])
        .output();

    // 2. The same experiment with and without an environment.
    let dir = tempfile::tempdir().unwrap();
    git_copy(&root.join("examples/calc"), &dir.path().join("app"));
    // Only the arithmetic half: the assistant's tests need the openai SDK,
    // which only an environment has.
    drop_assistant(&dir.path().join("app"));
    let plain = runner(&rt, &dir.path().join("home-plain"), "");
    let with_env = runner(
        &rt,
        &dir.path().join("home-env"),
        "install_command = \"true\"\ninstall_inputs = [\"tests/*.py\"]",
    );
    let counter = AtomicU64::new(0);
    // Warm both baseline caches (and build the environment once).
    run_one(&rt, &plain, u64::MAX);
    run_one(&rt, &with_env, u64::MAX);

    let mut group = c.benchmark_group("one experiment, baseline cached");
    group.sample_size(10);
    group.bench_function("without an environment", |b| {
        b.iter(|| run_one(&rt, &plain, counter.fetch_add(1, Ordering::Relaxed)))
    });
    group.bench_function("from a reused environment", |b| {
        b.iter(|| run_one(&rt, &with_env, counter.fetch_add(1, Ordering::Relaxed)))
    });
    group.finish();
    for record in std::fs::read_dir(dir.path().join("home-env/environments"))
        .unwrap()
        .flatten()
    {
        if let Ok(v) = serde_json::from_slice::<serde_json::Value>(
            &std::fs::read(record.path()).unwrap_or_default(),
        ) {
            let _ = std::process::Command::new("docker")
                .args(["rmi", "-f", v["image"].as_str().unwrap_or_default()])
                .output();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
