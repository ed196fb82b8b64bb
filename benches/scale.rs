//! Throughput and large repos, each side by side with raw Docker in one run:
//!
//! 1. **50 experiments through `genesis serve` at `max_concurrent = 5`**
//!    (core NATS, baseline cached, busybox TAP suite) against 50 raw
//!    `docker run --rm --network none` of the same image and command, five
//!    at a time.
//! 2. **A generated repo of 30,000 files / 300 MB**: one candidate
//!    experiment (baseline cached, one-file patch) against a raw `docker
//!    run --rm` of an image that already holds the tree. Then, printed, not
//!    timed: the bytes the second experiment on that commit moved into its
//!    run (the store's sandbox history), and GENESIS_HOME's disk use after
//!    100 experiments on the commit against the size of one snapshot.
//!
//! Run with `cargo bench --profile dev --bench scale` (the dev profile
//! builds the dependencies at opt-level 1; the time is Docker's and the
//! kernel's, not ours). Needs the Docker engine, nats-server and the
//! busybox image (`genesis images build busybox`); takes about ten minutes.

#[path = "../tests/support/mod.rs"]
mod support;

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::StreamExt;
use genesis::config::{Config, Env};
use genesis::contract::Request;
use genesis::runner::{NoProgress, Runner};
use genesis::store::{Status, Store};
use support::nats::NatsServer;
use support::*;

const IMAGE: &str = "genesis/busybox:latest";
const BATCH: usize = 50;
const PARALLEL: usize = 5;
/// The large repo: DIRS directories of FILES_PER_DIR files of FILE_BYTES.
const DIRS: usize = 300;
const FILES_PER_DIR: usize = 100;
const FILE_BYTES: usize = 10_000;
const EXPERIMENTS_FOR_DISK: usize = 100;

fn throughput(c: &mut Criterion) {
    ensure_image("busybox");
    let nats = NatsServer::start(false);
    let home = serve_home(PARALLEL, false);
    let _serve = ServeProcess::start(&home, &nats.url());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let client = rt.block_on(async_nats::connect(nats.url())).unwrap();
    let batch = AtomicU64::new(0);
    let send_batch = |n: usize| {
        let b = batch.fetch_add(1, Ordering::Relaxed);
        rt.block_on(async {
            let mut answers = client
                .subscribe("agent.events.experiment.*.*")
                .await
                .unwrap();
            for i in 0..n {
                let r = request(&format!("b{b}-{i}"), "low", &[], "");
                client
                    .publish(
                        "agent.events.experiment.request.bench",
                        r.to_string().into(),
                    )
                    .await
                    .unwrap();
            }
            client.flush().await.unwrap();
            let mut done = 0;
            while done < n {
                let msg = answers.next().await.unwrap();
                let subject = msg.subject.as_str();
                assert!(!subject.contains(".failed."), "{subject}");
                if subject.contains(".completed.") {
                    done += 1;
                }
            }
        })
    };
    // The first experiment runs the baseline; the rest find it cached.
    send_batch(1);

    let mut group = c.benchmark_group("50 experiments at concurrency 5");
    group.sample_size(10);
    group.bench_function("genesis serve", |b| b.iter(|| send_batch(BATCH)));
    group.bench_function("docker run --rm, 5 at a time", |b| {
        b.iter(|| raw_runs(BATCH, PARALLEL, IMAGE, &format!("cd / && {TAP}")))
    });
    group.finish();

    // The machine drifts between criterion's groups (a batch of raw runs
    // took 5.6 s in one run and 8.5 s in the next), so the ratio is also
    // taken from rounds that alternate the two sides.
    let mut ratios = Vec::new();
    for round in 0..ROUNDS {
        let started = std::time::Instant::now();
        send_batch(BATCH);
        let genesis = started.elapsed().as_secs_f64();
        let started = std::time::Instant::now();
        raw_runs(BATCH, PARALLEL, IMAGE, &format!("cd / && {TAP}"));
        let raw = started.elapsed().as_secs_f64();
        eprintln!("round {round}: genesis serve {genesis:.2} s, docker run {raw:.2} s");
        ratios.push(genesis / raw);
    }
    ratios.sort_by(f64::total_cmp);
    eprintln!(
        "alternating rounds: median ratio {:.2} (from {:.2} to {:.2})",
        ratios[ratios.len() / 2],
        ratios[0],
        ratios[ratios.len() - 1]
    );
}

/// Alternating rounds of the throughput comparison.
const ROUNDS: usize = 5;

/// The TAP suite of the serve homes, inline for the raw runs.
const TAP: &str = "echo 1..3; echo ok 1 - adds; echo ok 2 - subtracts; echo ok 3 - divides";

fn raw_runs(n: usize, parallel: usize, image: &str, script: &str) {
    let next = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..parallel {
            scope.spawn(|| {
                while (next.fetch_add(1, Ordering::Relaxed) as usize) < n {
                    docker_run(image, script);
                }
            });
        }
    });
}

fn docker_run(image: &str, script: &str) {
    let out = std::process::Command::new("docker")
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            image,
            "sh",
            "-c",
            script,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn large_repo(c: &mut Criterion) {
    ensure_image("busybox");
    let dir = tempfile::tempdir().unwrap();
    let repo = dir.path().join("big");
    eprintln!(
        "generating {} files of {FILE_BYTES} bytes",
        DIRS * FILES_PER_DIR
    );
    let tree_bytes = generate(&repo);
    let image = image_with_tree(&repo);
    let text = format!(
        "default_repo = \"big\"\nmax_concurrent = {PARALLEL}\n[repos.big]\npath = \"{}\"\nimage = \"{IMAGE}\"\ntest_command = \"sh run_tests.sh\"\nreport = \"tap\"\n",
        repo.display()
    );
    let home = dir.path().join("home");
    let config = Arc::new(
        Config::from_layers(
            home.clone(),
            Some((dir.path().join("g.toml"), text)),
            &Env::default(),
        )
        .unwrap(),
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    let store = Store::open(&config.store_path()).unwrap();
    let runner = Arc::new(rt.block_on(Runner::new(config, store.clone())).unwrap());
    let counter = AtomicU64::new(0);
    // A one-line patch made by hand (a clone of the repo per patch would
    // cost more than the experiment).
    let experiment = |n: u64| {
        let patch = format!(
            "diff --git a/patched.txt b/patched.txt\n--- a/patched.txt\n+++ b/patched.txt\n@@ -1 +1 @@\n-0\n+{n}\n"
        );
        let r = request(&format!("big-{n}"), "low", &["patched.txt"], &patch);
        Request::parse(r.to_string().as_bytes()).unwrap()
    };
    let run = |runner: Arc<Runner>, r: Request| async move {
        runner.accept(&r, Status::Queued).await.unwrap();
        let result = runner.run(&r, &NoProgress).await;
        assert!(result.is_success(), "{result:?}");
    };
    // The first experiment writes the layer and runs the baseline.
    let first = std::time::Instant::now();
    rt.block_on(run(runner.clone(), experiment(u64::MAX)));
    eprintln!(
        "first experiment (layer written, baseline run): {:.2} s",
        first.elapsed().as_secs_f64()
    );

    let mut group = c.benchmark_group("30,000 files, 300 MB");
    group.sample_size(10);
    group.bench_function("genesis candidate (baseline cached)", |b| {
        b.iter(|| {
            let r = experiment(counter.fetch_add(1, Ordering::Relaxed));
            rt.block_on(run(runner.clone(), r))
        })
    });
    group.bench_function("docker run --rm of an image holding the tree", |b| {
        b.iter(|| docker_run(&image, "cd /workspace/big && sh run_tests.sh"))
    });
    group.finish();

    let moved = store
        .history("big-1")
        .unwrap()
        .into_iter()
        .filter(|h| h.operation == genesis::store::SandboxOperation::Create)
        .map(|h| h.size_bytes)
        .sum::<u64>();
    eprintln!("second experiment on the commit moved {moved} bytes into its runs");

    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        let limit = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
        for n in 0..EXPERIMENTS_FOR_DISK as u64 {
            let (runner, permit) = (runner.clone(), limit.clone().acquire_owned().await);
            let r = experiment(1_000_000 + n);
            tasks.spawn(async move {
                let _permit = permit;
                run(runner, r).await
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap();
        }
    });
    let used = allocated_bytes(&home);
    eprintln!(
        "after {} more experiments: GENESIS_HOME holds {:.1} MB on disk, one snapshot is {:.1} MB: {:.2}x",
        EXPERIMENTS_FOR_DISK,
        used as f64 / 1e6,
        tree_bytes as f64 / 1e6,
        used as f64 / tree_bytes as f64
    );
    let _ = std::process::Command::new("docker")
        .args(["rmi", "-f", &image])
        .output();
}

/// Writes the repo (text files of pseudo-random words, deterministic) and
/// commits it; returns the bytes of its files.
fn generate(repo: &Path) -> u64 {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut word = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut total = 0;
    for d in 0..DIRS {
        let sub = repo.join(format!("d{d}"));
        std::fs::create_dir_all(&sub).unwrap();
        for f in 0..FILES_PER_DIR {
            let mut text = String::with_capacity(FILE_BYTES);
            while text.len() < FILE_BYTES - 20 {
                let w = word();
                text.push_str(&format!("let v{} = {};\n", w % 9973, w >> 40));
            }
            total += text.len() as u64;
            std::fs::write(sub.join(format!("f{f}.txt")), text).unwrap();
        }
    }
    std::fs::write(repo.join("run_tests.sh"), TAP.replace("; ", "\n") + "\n").unwrap();
    std::fs::write(repo.join("patched.txt"), "0\n").unwrap();
    git(repo, &["init", "-q", "-b", "main"]);
    git(repo, &["add", "-A"]);
    commit_all(repo, "generated");
    total
}

/// busybox plus the tree at `/workspace/big`, committed as an image.
fn image_with_tree(repo: &Path) -> String {
    let docker = |args: &[&str]| docker_cli(None, args).trim().to_owned();
    let id = docker(&["create", IMAGE, "true"]);
    // The tree as `workspace/big/...`, streamed into the container's root.
    let tar = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -C '{}' --transform 's,^\\.,workspace/big,' -cf - . | docker cp - {id}:/",
            repo.display()
        ))
        .status()
        .unwrap();
    assert!(tar.success());
    let image = "genesis-bench/bigtree:latest";
    docker(&["commit", &id, image]);
    docker(&["rm", "-f", &id]);
    image.to_owned()
}

/// Blocks allocated under `path` (sparse files count what they hold),
/// links not followed.
fn allocated_bytes(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        total += meta.blocks() * 512;
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&p) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    total
}

fn config() -> Criterion {
    Criterion::default().warm_up_time(Duration::from_millis(1))
}

criterion_group! {
    name = benches;
    config = config();
    targets = throughput, large_repo
}
criterion_main!(benches);
