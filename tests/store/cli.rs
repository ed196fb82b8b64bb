//! The command line as a user meets it: help, config errors, list/show on a
//! fresh store, and `doctor` with and without a NATS server.

use crate::support::nats::{free_port, NatsServer};
use crate::support::*;

const CONFIG: &str = r#"
default_repo = "app"
[repos.app]
path = "{root}/app"
image = "genesis/busybox:latest"
test_command = "sh run_tests.sh"
report = "tap"
"#;

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn help_lists_every_command_with_a_description() {
    let out = std::process::Command::new(genesis_bin())
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = text(&out);
    for cmd in [
        "run", "serve", "list", "show", "export", "sandbox", "jobs", "images", "doctor",
    ] {
        let line = help
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{cmd} ")))
            .unwrap_or_else(|| panic!("{cmd} missing from --help:\n{help}"));
        assert!(
            line.split_whitespace().count() > 2,
            "{cmd} has no description: {line}"
        );
    }
    let bad = std::process::Command::new(genesis_bin())
        .arg("frobnicate")
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn a_bad_config_key_names_file_key_and_expectation() {
    let home = TestHome::new("[limits.high]\ncpus = \"many\"\n");
    let out = home.run_args(&["list"]);
    assert_eq!(out.status.code(), Some(2));
    let msg = text(&out);
    assert!(
        msg.contains("genesis.toml") && msg.contains("limits.high.cpus") && msg.contains("f64"),
        "{msg}"
    );
}

#[test]
fn list_and_show_on_a_fresh_store() {
    let home = TestHome::new(CONFIG);
    let out = home.run_args(&["list", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(),
        serde_json::json!([])
    );
    let out = home.run_args(&["show", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("nope"));
    let out = home.run_args(&["list", "--status", "bogus"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn doctor_is_all_green_with_nats_and_names_the_fix_without() {
    ensure_image("busybox");
    let home = TestHome::new(CONFIG);
    git_repo(&home.root().join("app"), &[("run_tests.sh", "echo 1..0\n")]);
    let nats = NatsServer::start(false);
    let out = home
        .command()
        .env("GENESIS_NATS_URL", nats.url())
        .arg("doctor")
        .output()
        .unwrap();
    let report = text(&out);
    assert!(out.status.success(), "{report}");
    assert!(!report.contains('✗'), "{report}");
    for check in ["docker", "nats", "home", "store", "image", "repo"] {
        assert!(
            report
                .lines()
                .any(|l| l.starts_with('✓') && l.contains(check)),
            "no ✓ {check}:\n{report}"
        );
    }
    assert!(
        report.contains("llm      http://127.0.0.1:80 in every run's sandbox"),
        "{report}"
    );
    drop(nats);

    let url = format!("nats://127.0.0.1:{}", free_port());
    let out = home
        .command()
        .env("GENESIS_NATS_URL", &url)
        .arg("doctor")
        .output()
        .unwrap();
    let report = text(&out);
    assert!(!out.status.success(), "{report}");
    let nats_line = report
        .lines()
        .position(|l| l.starts_with('✗') && l.contains("nats"))
        .expect("✗ nats line");
    let fix = report.lines().nth(nats_line + 1).unwrap_or("");
    assert!(
        fix.contains("fix:") && fix.contains("nats-server"),
        "{report}"
    );
}

/// A store written before rows were typed (schema 2: risk levels, verdicts,
/// error kinds, outcomes and sandbox operations as strings) opens, and
/// `export`, `list --json` and `show --json` print byte for byte what that
/// release printed from it; it then takes new rows beside the old ones.
#[test]
fn a_store_of_the_release_before_typed_rows_reads_back_byte_for_byte() {
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v2");
    let home = TestHome::new("");
    std::fs::create_dir_all(home.home()).unwrap();
    std::fs::copy(
        fixture.join("genesis.redb"),
        home.home().join("genesis.redb"),
    )
    .unwrap();
    let expect_same = |args: &[&str], golden: &str| {
        let out = home.run_args(args);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
        let want = std::fs::read(fixture.join(golden)).unwrap();
        assert!(
            out.stdout == want,
            "{args:?} differs from {golden}:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
    };
    expect_same(&["export", "--format", "sql"], "export.sql");
    expect_same(&["list", "--json"], "list.json");
    for id in ["v2-merge", "v2-rollback", "v2-failed"] {
        expect_same(&["show", id, "--json"], &format!("show-{id}.json"));
    }
    // New rows go in beside the old ones.
    let request = request("after-typed-rows", "low", &[], "");
    let out = home.run_request(&request);
    assert!(text(&out).contains("after-typed-rows"), "{}", text(&out));
    let listed = home.run_args(&["list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 4, "{list:#}");
}
