//! The sandbox against a real Docker engine: limits and hardening seen from
//! inside, timeouts, OOM, fork bombs, output floods, bad inputs refused, the
//! source repository untouched, and no container left behind.

use std::time::{Duration, Instant};

use crate::support::*;

const CONFIG: &str = r#"
default_repo = "app"

[repos.app]
path = "{root}/app"
image = "genesis/busybox:latest"
test_command = "sh run_tests.sh"
report = "tap"

[repos.py]
path = "{root}/app"
image = "genesis/python:bookworm"
test_command = "true"
report = "tap"

[limits.high]
cpus = 1.0
memory_mb = 256
pids = 64
timeout_ms = 60000
network = false

[sandbox]
log_cap_bytes = 1048576
"#;

const TAP_SUITE: &str = "if [ -f flood ]; then head -c 2000000000 /dev/zero | tr '\\0' x; echo; fi\necho 1..3\necho ok 1 - adds\necho ok 2 - subtracts\nif [ -f broken ]; then echo not ok 3 - divides; else echo ok 3 - divides; fi\n";

fn home_with_repo() -> TestHome {
    ensure_image("busybox");
    let home = TestHome::new(CONFIG);
    git_repo(
        &home.root().join("app"),
        &[
            ("run_tests.sh", TAP_SUITE),
            ("src/lib.txt", "one\ntwo\nthree\n"),
            ("README", "app\n"),
        ],
    );
    home
}

fn run_with_command(
    home: &TestHome,
    id: &str,
    command: &str,
    timeout_ms: u64,
) -> (serde_json::Value, Duration) {
    let mut req = request(id, "high", &[], "");
    req["test_command"] = command.into();
    req["timeout_ms"] = timeout_ms.into();
    let started = Instant::now();
    let out = home.run_request(&req);
    (result_json(&out), started.elapsed())
}

#[test]
fn limits_and_hardening_are_visible_inside() {
    ensure_image("busybox");
    // With and without the disk cap (read-only root and a file system of
    // the run's own, or the writable layer and a tmpfs /tmp).
    for disk_mb in [0, 64] {
        let limits = probe_limits(disk_mb);
        let outcome = run_script_in_sandbox(
            "limits-probe",
            "genesis/busybox:latest",
            limits,
            PROBE_SCRIPT,
        );
        assert_eq!(outcome.exit_code, 0, "{}", outcome.log.text);
        let text = outcome.log.text;
        for want in PROBE_EXPECTED {
            assert!(
                text.contains(want),
                "disk_mb {disk_mb}: expected {want:?} in:\n{text}"
            );
        }
        let uid_line = text.lines().find(|l| l.starts_with("uid=")).unwrap();
        assert_ne!(uid_line, "uid=0", "tests must not run as root");
    }
}

#[test]
fn sleep_past_its_timeout_ends_as_timeout_quickly() {
    let home = home_with_repo();
    let (result, elapsed) = run_with_command(&home, "sleepy", "sleep 120", 2_000);
    assert_eq!(result["status"], "failed", "{result}");
    assert_eq!(result["error_kind"], "timeout", "{result}");
    // The baseline times out first (same command); 2 s limit + container overhead.
    assert!(elapsed < Duration::from_secs(20), "took {elapsed:?}");
    assert!(home.containers_left().is_empty());
}

/// A suite that dies before reporting anything is never a silent 100 %.
#[test]
fn a_crashed_suite_with_no_report_is_no_tests_with_the_log_tail() {
    let home = home_with_repo();
    let crash = "echo 'Segmentation fault (core dumped)' >&2; exit 139";
    let (result, _) = run_with_command(&home, "crashed", crash, 30_000);
    assert_eq!(result["status"], "failed", "{result}");
    assert_eq!(result["error_kind"], "no_tests", "{result}");
    let error = result["error"].as_str().unwrap();
    assert!(error.contains("status 139"), "{error}");
    assert!(error.contains("Segmentation fault"), "{error}");
    assert!(home.containers_left().is_empty());
}

#[test]
fn a_gigabyte_under_a_256mb_limit_ends_as_oom() {
    ensure_image("python");
    let home = home_with_repo();
    let mut req = request("hungry", "high", &[], "");
    req["repo"] = "py".into();
    req["test_command"] = "python3 -c 'b = bytearray(1024 * 1024 * 1024); print(len(b))'".into();
    let result = result_json(&home.run_request(&req));
    assert_eq!(result["status"], "failed", "{result}");
    assert_eq!(result["error_kind"], "oom", "{result}");
    assert!(home.containers_left().is_empty());
}

#[test]
fn a_fork_bomb_is_contained_and_the_host_stays_responsive() {
    let home = home_with_repo();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut worst = Duration::ZERO;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                std::process::Command::new("true").status().unwrap();
                worst = worst.max(t.elapsed());
                std::thread::sleep(Duration::from_millis(50));
            }
            worst
        })
    };
    let (result, elapsed) = run_with_command(&home, "bomb", "b() { b | b & }; b; sleep 30", 4_000);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let worst = watcher.join().unwrap();
    assert_eq!(result["status"], "failed", "{result}");
    assert_eq!(result["error_kind"], "timeout", "{result}");
    assert!(elapsed < Duration::from_secs(40), "took {elapsed:?}");
    assert!(
        worst < Duration::from_secs(2),
        "host process start took {worst:?} during the bomb"
    );
    assert!(home.containers_left().is_empty());
}

#[test]
fn a_two_gigabyte_output_flood_is_capped() {
    let home = home_with_repo();
    let repo = home.root().join("app");
    // The patch adds `flood`, so only the candidate prints 2 GB, then its TAP.
    let patch = diff_for(&repo, &[("flood", Some("yes\n"))]);
    let mut req = request("flood", "high", &["flood"], &patch);
    req["timeout_ms"] = 300_000.into();
    let out = home.run_request(&req);
    let result = result_json(&out);
    // The report is read from the kept tail: the run is still judged.
    assert_eq!(result["status"], "success", "{result}");
    assert_eq!(result["metrics"]["test_count"], 3, "{result}");
    let log = home.home().join("sandboxes/flood/candidate/test.log");
    let size = std::fs::metadata(&log).unwrap().len();
    assert!(size <= 1_048_576 + 200, "log is {size} bytes");
    let text = std::fs::read_to_string(&log).unwrap();
    let cut: u64 = text
        .split("[genesis: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .expect("cut marker");
    assert!(
        cut >= 2_000_000_000 - 1_048_576,
        "only {cut} bytes were cut"
    );
    assert!(text.trim_end().ends_with("ok 3 - divides"), "tail not kept");
    assert!(home.containers_left().is_empty());
}

#[test]
fn a_good_patch_runs_and_the_source_repo_is_untouched() {
    let home = home_with_repo();
    let repo = home.root().join("app");
    let patch = diff_for(&repo, &[("src/lib.txt", Some("one\n2\nthree\n"))]);
    // A repo owned by another user must still be readable (libgit2's ownership check).
    std::process::Command::new("chown")
        .args(["-R", "4242:4242"])
        .arg(&repo)
        .status()
        .unwrap();
    let before = tree_digest(&repo);
    let req = request("good-patch", "high", &["src/lib.txt"], &patch);
    let out = home.run_request(&req);
    let result = result_json(&out);
    assert_eq!(
        result["status"],
        "success",
        "{result}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(result["metrics"]["test_count"], 3);
    assert_eq!(result["metrics"]["failures"], 0);
    assert_eq!(before, tree_digest(&repo), "the source repository changed");
    // The candidate commit is fetchable from genesis's mirror.
    let mirror = home.home().join("mirrors/app.git");
    let commit = git(&mirror, &["rev-parse", "refs/genesis/good-patch"]);
    assert_eq!(commit.trim(), result["candidate"]["commit"]);
    assert_eq!(
        result["candidate"]["base_commit"],
        git(&repo, &["rev-parse", "HEAD"]).trim()
    );
    assert!(home.containers_left().is_empty());
}

/// Each bad input is refused before anything runs, with the right kind and
/// exit code, and nothing is written outside GENESIS_HOME.
#[test]
fn bad_inputs_are_refused_and_write_nothing_outside_home() {
    let home = home_with_repo();
    let repo = home.root().join("app");
    std::os::unix::fs::symlink("..", repo.join("up")).unwrap();
    git(&repo, &["add", "up"]);
    commit_all(&repo, "link");
    let outside = |home: &TestHome| {
        let mut d = tree_digest(home.root());
        d.retain(|k, _| !k.starts_with("home"));
        d
    };
    let before = outside(&home);
    let good = diff_for(&repo, &[("src/lib.txt", Some("one\n2\nthree\n"))]);
    let cases: Vec<(&str, serde_json::Value, &str, i32)> = vec![
        ("bad id", request("../escape", "high", &[], ""), "invalid_request", 2),
        (
            "dotdot path",
            request("dotdot", "high", &["../x.txt"], "diff --git a/../x.txt b/../x.txt\nnew file mode 100644\n--- /dev/null\n+++ b/../x.txt\n@@ -0,0 +1 @@\n+pwned\n"),
            "patch_failed",
            1,
        ),
        (
            "absolute path",
            request("absolute", "high", &["/tmp/x.txt"], "diff --git a//tmp/x.txt b//tmp/x.txt\nnew file mode 100644\n--- /dev/null\n+++ b//tmp/x.txt\n@@ -0,0 +1 @@\n+pwned\n"),
            "patch_failed",
            1,
        ),
        (
            "through a symlink",
            request("via-link", "high", &["up/x.txt"], "diff --git a/up/x.txt b/up/x.txt\nnew file mode 100644\n--- /dev/null\n+++ b/up/x.txt\n@@ -0,0 +1 @@\n+pwned\n"),
            "patch_failed",
            1,
        ),
        (
            "symlink out",
            request("link-out", "high", &["evil"], "diff --git a/evil b/evil\nnew file mode 120000\n--- /dev/null\n+++ b/evil\n@@ -0,0 +1 @@\n+/etc/passwd\n\\ No newline at end of file\n"),
            "patch_failed",
            1,
        ),
        (
            "does not apply",
            request("no-apply", "high", &["src/lib.txt"], "diff --git a/src/lib.txt b/src/lib.txt\n--- a/src/lib.txt\n+++ b/src/lib.txt\n@@ -1,3 +1,3 @@\n alpha\n-beta\n+BETA\n gamma\n"),
            "patch_failed",
            1,
        ),
        ("files disagree", request("files-disagree", "high", &["README"], &good), "invalid_request", 2),
        ("not json", serde_json::Value::String("{ nope".into()), "invalid_request", 2),
    ];
    for (name, req, kind, code) in cases {
        let body = match &req {
            serde_json::Value::String(raw) => raw.clone().into_bytes(),
            other => other.to_string().into_bytes(),
        };
        let out = home.run_stdin(&["run", "-"], &body);
        let result = result_json(&out);
        assert_eq!(result["status"], "failed", "{name}: {result}");
        assert_eq!(result["error_kind"], kind, "{name}: {result}");
        assert_eq!(out.status.code(), Some(code), "{name}: {result}");
        if name == "does not apply" {
            let error = result["error"].as_str().unwrap();
            assert!(
                error.contains("src/lib.txt") && error.contains("@@ -1,3 +1,3 @@"),
                "{error}"
            );
        }
    }
    assert_eq!(
        before,
        outside(&home),
        "something was written outside GENESIS_HOME"
    );
    assert!(home.containers_left().is_empty());
}
