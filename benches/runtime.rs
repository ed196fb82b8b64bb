//! What gVisor costs: one experiment (`genesis run` as a process, baseline
//! cached, busybox TAP suite of three tests, one-file patch) under runc and
//! under runsc, side by side on one engine.
//!
//! The machine's own engine is never reconfigured: the bench starts a
//! `dockerd` of its own with runsc registered (as the fault tests do) and
//! builds the busybox image on it.
//!
//! Run with `cargo bench --profile dev --bench runtime`. Needs dockerd,
//! runsc (`apt-get install -y runsc`), debootstrap's prerequisites for the
//! image, and root.

#[path = "../tests/support/mod.rs"]
mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use support::engine::PrivateEngine;
use support::*;

fn config(runtime: &str) -> String {
    format!(
        r#"
default_repo = "app"
[repos.app]
path = "{{root}}/app"
image = "genesis/busybox:latest"
test_command = "sh run_tests.sh"
report = "tap"
[sandbox]
runtime = "{runtime}"
"#
    )
}

/// `genesis run` of `req` against `engine`; panics unless it succeeded.
fn run_on(engine: &PrivateEngine, home: &TestHome, req: &serde_json::Value) {
    let result = engine.run(home, req);
    assert_eq!(result["status"], "success", "{result}");
}

fn bench(c: &mut Criterion) {
    assert!(
        PrivateEngine::has_runsc(),
        "runsc is not installed (apt-get install -y runsc)"
    );
    let engine = PrivateEngine::start();
    engine.build_image("busybox");
    let mut group = c.benchmark_group("one experiment (baseline cached)");
    group.sample_size(10);
    for runtime in ["runc", "runsc"] {
        let home = TestHome::new(&config(runtime));
        let repo = git_repo(&home.root().join("app"), &[("run_tests.sh", TAP_SUITE)]);
        let patch = diff_for(&repo, &[("marker", Some("x\n"))]);
        let counter = AtomicU64::new(0);
        let experiment = || {
            let n = counter.fetch_add(1, Ordering::Relaxed);
            request(&format!("{runtime}-{n}"), "low", &["marker"], &patch)
        };
        // The first runs the baseline too; the measured ones find it cached.
        run_on(&engine, &home, &experiment());
        group.bench_function(runtime, |b| {
            b.iter(|| run_on(&engine, &home, &experiment()))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(1));
    targets = bench
}
criterion_main!(benches);
