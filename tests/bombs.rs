//! What a suite or a request claims never decides how much genesis holds
//! (contract §4, §5): report bombs (a TAP plan of four billion tests, a
//! pytest summary claiming four billion failures, a JUnit file listing more
//! cases than `[limits] max_tests`) and a binary patch that inflates past
//! `[limits.*] patch_mb` each end in a clean answer, with genesis's peak
//! memory, read from the kernel when the process is reaped (`wait4`),
//! under 512 MB.

mod support;

use std::io::{Read, Write};
use std::process::Stdio;

use serde_json::Value;
use support::*;

const CONFIG: &str = r#"
default_repo = "tap"
[repos.tap]
path = "{root}/app"
image = "genesis/busybox:latest"
test_command = "sh run_tests.sh"
report = "tap"

[repos.pytest]
path = "{root}/app"
image = "genesis/busybox:latest"
test_command = "sh run_tests.sh"
report = "pytest"

[repos.junit]
path = "{root}/app"
image = "genesis/busybox:latest"
test_command = "sh run_tests.sh"
report = "junit:/genesis/out/junit.xml"
"#;

/// Peak memory genesis may reach on any bomb.
const CEILING_MB: f64 = 512.0;

/// Runs `genesis run -` on `request`; its result and its peak RSS in MB,
/// from the kernel's accounting when the process is reaped.
// Reaped with wait4 (for its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn run_measured(home: &TestHome, request: &Value) -> (Value, f64) {
    let mut child = home
        .command()
        .args(["run", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn genesis");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let err_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut out = Vec::new();
    stdout.read_to_end(&mut out).unwrap();
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value to be overwritten.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: reaps our own child; `child` is not waited on afterwards.
    let waited = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(waited, pid, "wait4 failed");
    let stderr = err_reader.join().unwrap();
    let result: Value = serde_json::from_slice(&out).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\n{stderr}",
            String::from_utf8_lossy(&out)
        )
    });
    // ru_maxrss is in KiB on Linux.
    (result, usage.ru_maxrss as f64 / 1024.0)
}

fn bomb(repo: &str, id: &str, suite: &str) -> (Value, f64) {
    ensure_image("busybox");
    let home = TestHome::new(CONFIG);
    git_repo(&home.root().join("app"), &[("run_tests.sh", suite)]);
    let mut req = request(id, "high", &[], "");
    req["repo"] = repo.into();
    let measured = run_measured(&home, &req);
    assert!(home.containers_left().is_empty());
    measured
}

fn assert_bad_report(result: &Value, peak_mb: f64, limit_words: &str) {
    eprintln!("peak {peak_mb:.1} MB: {}", result["error"]);
    assert_eq!(result["status"], "failed", "{result:#}");
    assert_eq!(result["error_kind"], "bad_report", "{result:#}");
    assert!(
        result["error"].as_str().unwrap().contains(limit_words),
        "{result:#}"
    );
    assert!(peak_mb < CEILING_MB, "genesis peaked at {peak_mb:.1} MB");
}

#[test]
fn a_tap_plan_of_four_billion_tests_is_bad_report_not_four_billion_entries() {
    let (r, peak) = bomb("tap", "bomb-tap", "echo 1..4000000000\necho ok 1 - a\n");
    assert_bad_report(&r, peak, "max_tests (100000)");
}

#[test]
fn a_pytest_summary_of_four_billion_failures_is_bad_report() {
    let (r, peak) = bomb(
        "pytest",
        "bomb-pytest",
        "echo '4000000000 failed, 1 passed in 0.01s'\n",
    );
    assert_bad_report(&r, peak, "max_tests (100000)");
}

#[test]
fn a_junit_file_listing_more_than_max_tests_is_bad_report() {
    let (r, peak) = bomb(
        "junit",
        "bomb-junit",
        "{ echo '<testsuite name=\"s\">'; yes '<testcase name=\"t\"/>' | head -n 150000; echo '</testsuite>'; } > /genesis/out/junit.xml\n",
    );
    assert_bad_report(&r, peak, "max_tests (100000)");
}

#[test]
fn a_test_id_over_four_kilobytes_is_bad_report() {
    let (r, peak) = bomb(
        "tap",
        "bomb-id",
        "echo 1..1\nprintf 'ok 1 - '; head -c 5000 /dev/zero | tr '\\0' x; echo\n",
    );
    assert_bad_report(&r, peak, "4096 byte limit");
}
