//! Environments (contract §2a), end to end against the real engine and the
//! real package registries: dependencies installed once per install-input
//! contents, as root with network on; suites run from the committed image
//! as the sandbox user with network off.
//!
//! The fixture projects live in `tests/fixtures/projects/` (see its README
//! for the commands each was verified with by hand).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::support::*;

/// A home whose repo `app` is a fresh git copy of fixture `project`, with
/// `repo_keys` (TOML lines) in its `[repos.app]` table and `extra` after it.
fn project_home(project: &str, image: &str, repo_keys: &str, extra: &str) -> TestHome {
    ensure_image(image);
    let tag = format!("genesis/{image}:bookworm");
    let home = TestHome::new(&format!(
        "default_repo = \"app\"\n[repos.app]\npath = \"{{root}}/app\"\nimage = \"{tag}\"\n{repo_keys}\n{extra}\n"
    ));
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/projects")
        .join(project);
    git_copy(&src, &home.root().join("app"));
    home
}

fn run(home: &TestHome, request: &Value) -> (Value, String) {
    let out = home.run_request(request);
    (
        result_json(&out),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_success(r: &Value, stderr: &str) {
    assert_eq!(r["status"], "success", "{r:#}\nstderr:\n{stderr}");
}

/// Environment records in the home: one per environment built.
fn environments_built(home: &TestHome) -> Vec<PathBuf> {
    let dir = home.home().join("environments");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    found.retain(|p| p.extension().is_some_and(|e| e == "json"));
    found.sort();
    found
}

fn remove_environment_images(home: &TestHome) {
    for record in environments_built(home) {
        let v: Value = serde_json::from_slice(&std::fs::read(record).unwrap()).unwrap();
        let _ = std::process::Command::new("docker")
            .args(["rmi", "-f", v["image"].as_str().unwrap()])
            .output();
    }
}

const PY_REPO: &str = r#"install_command = "pip install -r requirements.txt"
install_inputs = ["requirements.txt"]
test_command = "cat /sys/class/net/*/ifindex >/dev/null; ls /sys/class/net > /genesis/out/nets; python3 -m pytest -q -p no:cacheprovider --junitxml=/genesis/out/junit.xml"
report = "junit:/genesis/out/junit.xml""#;

#[test]
fn a_pypi_dependency_is_installed_once_and_reused_offline() {
    let home = project_home("py-dep", "python", PY_REPO, "");
    let repo = home.root().join("app");

    // First experiment: builds the environment (pip install from PyPI).
    let patch = diff_for(&repo, &[("dates/extra.py", Some("X = 1\n"))]);
    let (r, stderr) = run(
        &home,
        &request("env-py-1", "high", &["dates/extra.py"], &patch),
    );
    assert_success(&r, &stderr);
    assert_eq!(r["metrics"]["test_count"], 5, "{r:#}");
    assert_eq!(r["metrics"]["failures"], 0, "{r:#}");
    let env = &r["environment"];
    assert_eq!(env["reused"], false, "{r:#}");
    assert!(env["build_ms"].as_u64().unwrap() > 0, "{r:#}");
    assert!(
        env["image"]
            .as_str()
            .unwrap()
            .starts_with("genesis-env/app:"),
        "{r:#}"
    );
    assert!(stderr.contains("environment_building"), "{stderr}");
    assert_eq!(environments_built(&home).len(), 1);

    // The suite ran with network off: only loopback inside.
    let nets = home.home().join("sandboxes/env-py-1/candidate/out/nets");
    assert_eq!(std::fs::read_to_string(nets).unwrap().trim(), "lo");

    // Second experiment, another file changed: same inputs, no build.
    let patch = diff_for(&repo, &[("dates/other.py", Some("Y = 2\n"))]);
    let (r2, stderr2) = run(
        &home,
        &request("env-py-2", "high", &["dates/other.py"], &patch),
    );
    assert_success(&r2, &stderr2);
    assert_eq!(r2["environment"]["reused"], true, "{r2:#}");
    assert_eq!(r2["environment"]["build_ms"], 0, "{r2:#}");
    assert_eq!(r2["environment"]["key"], env["key"]);
    assert!(!stderr2.contains("environment_building"), "{stderr2}");
    assert_eq!(environments_built(&home).len(), 1, "no second build");

    // `env list` shows it; the patch that changes the manifest gets its own.
    let listed = home.run_args(&["env", "list", "--json"]);
    let list: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1, "{list:#}");
    assert_eq!(list[0]["repo"], "app");

    let patch = diff_for(
        &repo,
        &[("requirements.txt", Some("iso8601==2.1.0\nsix==1.16.0\n"))],
    );
    let (r3, stderr3) = run(
        &home,
        &request("env-py-3", "low", &["requirements.txt"], &patch),
    );
    assert_success(&r3, &stderr3);
    assert_eq!(r3["environment"]["reused"], false, "{r3:#}");
    assert_ne!(r3["environment"]["key"], env["key"]);
    // That one was private to env-py-3 and is gone with it.
    assert_eq!(environments_built(&home).len(), 1);
    assert!(home.containers_left().is_empty());
    remove_environment_images(&home);
}

#[test]
fn a_manifest_change_is_refused_where_install_changes_is_false() {
    let home = project_home(
        "py-dep",
        "python",
        PY_REPO,
        "[limits.high]\ncpus = 1.0\nmemory_mb = 512\npids = 256\ntimeout_ms = 600000\nnetwork = false\ninstall_changes = false\n",
    );
    let repo = home.root().join("app");
    let patch = diff_for(&repo, &[("requirements.txt", Some("iso8601==2.0.0\n"))]);
    let (r, stderr) = run(
        &home,
        &request("env-refused", "high", &["requirements.txt"], &patch),
    );
    assert_eq!(r["status"], "failed", "{r:#}\n{stderr}");
    assert_eq!(r["error_kind"], "environment_changed", "{r:#}");
    assert!(
        r["error"].as_str().unwrap().contains("requirements.txt"),
        "{r:#}"
    );
    remove_environment_images(&home);
}

#[test]
fn a_failing_install_fails_the_experiment_with_its_log() {
    let home = project_home(
        "py-dep",
        "python",
        r#"install_command = "echo resolving the dependencies; exit 3"
install_inputs = ["requirements.txt"]
test_command = "python3 -m pytest -q"
report = "pytest""#,
        "",
    );
    let repo = home.root().join("app");
    let patch = diff_for(&repo, &[("dates/extra.py", Some("X = 1\n"))]);
    let (r, stderr) = run(
        &home,
        &request("env-fails", "high", &["dates/extra.py"], &patch),
    );
    assert_eq!(r["status"], "failed", "{r:#}\n{stderr}");
    assert_eq!(r["error_kind"], "environment_failed", "{r:#}");
    let error = r["error"].as_str().unwrap();
    assert!(error.contains("exited with status 3"), "{error}");
    assert!(error.contains("resolving the dependencies"), "{error}");
    assert!(environments_built(&home).is_empty());
    assert!(home.containers_left().is_empty());
}

#[test]
fn a_crate_with_a_crates_io_dev_dependency_is_detected_fetched_and_tested_offline() {
    // No test_command, no report: detected from Cargo.toml.
    let home = project_home(
        "rust-dep",
        "rust",
        "install_command = \"cargo fetch\"\ninstall_inputs = [\"Cargo.toml\", \"Cargo.lock\"]",
        "",
    );
    let repo = home.root().join("app");

    // Built ahead with `genesis env build`, then reused by the experiment.
    let built = home.run_args(&["env", "build", "app"]);
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let env: Value = serde_json::from_slice(&built.stdout).unwrap();
    assert_eq!(env["reused"], false, "{env:#}");
    assert!(String::from_utf8_lossy(&built.stderr).contains("environment_building"));

    let patch = diff_for(&repo, &[("NOTES", Some("a change\n"))]);
    let (r, stderr) = run(&home, &request("env-rust", "high", &["NOTES"], &patch));
    assert_success(&r, &stderr);
    assert_eq!(r["framework"]["name"], "cargo", "{r:#}");
    assert_eq!(r["framework"]["detected"], true, "{r:#}");
    assert_eq!(r["framework"]["test_command"], "cargo test --offline 2>&1");
    assert_eq!(r["metrics"]["test_count"], 4, "{r:#}");
    assert_eq!(r["metrics"]["failures"], 0, "{r:#}");
    assert_eq!(r["environment"]["reused"], true, "{r:#}");
    assert_eq!(r["environment"]["key"], env["key"]);

    // `env prune --all` removes it: image and record.
    let pruned = home.run_args(&["env", "prune", "--all"]);
    assert!(
        pruned.status.success(),
        "{}",
        String::from_utf8_lossy(&pruned.stderr)
    );
    assert!(environments_built(&home).is_empty());
    let gone = std::process::Command::new("docker")
        .args(["image", "inspect", env["image"].as_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        !gone.status.success(),
        "the environment image is still there"
    );
}

#[test]
fn an_elixir_project_without_hex_deps_runs_mix_test() {
    let home = project_home(
        "elixir-plain",
        "elixir",
        r#"install_command = "mix deps.get"
install_inputs = ["mix.exs", "mix.lock"]
test_command = "EXUNIT_JUNIT=/genesis/out/junit.xml mix test"
report = "junit:/genesis/out/junit.xml""#,
        "",
    );
    let repo = home.root().join("app");
    let patch = diff_for(&repo, &[("NOTES", Some("a change\n"))]);
    let (r, stderr) = run(&home, &request("env-mix", "high", &["NOTES"], &patch));
    assert_success(&r, &stderr);
    // Four tests and the doctest of Calc.add.
    assert_eq!(r["metrics"]["test_count"], 5, "{r:#}");
    assert_eq!(r["metrics"]["failures"], 0, "{r:#}");
    remove_environment_images(&home);
}

/// The candidate's install runs the agent's code as root, so what it left in
/// its environment must never reach another experiment: the same patch
/// sent by two experiments builds twice, under two keys, and each private
/// environment is gone once its experiment is done. The baseline's stays.
#[test]
fn an_environment_built_from_a_candidates_inputs_is_private_to_its_experiment() {
    ensure_image("busybox");
    let home = TestHome::new(
        r#"default_repo = "app"
[repos.app]
path = "{root}/app"
image = "genesis/busybox:latest"
install_command = "sh install.sh"
install_inputs = ["install.sh"]
test_command = "sh run_tests.sh"
report = "tap"
"#,
    );
    let repo = git_repo(
        &home.root().join("app"),
        &[
            ("install.sh", "echo base > /etc/installed-by\n"),
            (
                "run_tests.sh",
                "echo 1..1; echo \"ok 1 - installed by $(cat /etc/installed-by)\"\n",
            ),
        ],
    );
    // What an agent's install could leave behind for the next experiment.
    let patch = diff_for(
        &repo,
        &[("install.sh", Some("echo candidate > /etc/installed-by\n"))],
    );
    let mut keys = Vec::new();
    for id in ["env-private-1", "env-private-2"] {
        let (r, stderr) = run(&home, &request(id, "high", &["install.sh"], &patch));
        assert_success(&r, &stderr);
        let env = &r["environment"];
        assert_eq!(env["reused"], false, "{id} reused another's: {r:#}");
        let image = env["image"].as_str().unwrap();
        let inspect = std::process::Command::new("docker")
            .args(["image", "inspect", image])
            .output()
            .unwrap();
        assert!(!inspect.status.success(), "{image} outlived {id}");
        keys.push(env["key"].as_str().unwrap().to_owned());
        // Only the baseline's environment is kept.
        assert_eq!(environments_built(&home).len(), 1, "after {id}");
    }
    assert_ne!(keys[0], keys[1]);
    assert!(home.containers_left().is_empty());
    remove_environment_images(&home);
}
