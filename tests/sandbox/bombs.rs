//! What a suite or a request claims never decides how much genesis holds
//! (contract §4, §5): report bombs (a TAP plan of four billion tests, a
//! pytest summary claiming four billion failures, a JUnit file listing more
//! cases than `[limits] max_tests`) and a binary patch that inflates past
//! `[limits.*] patch_mb` each end in a clean answer, with genesis's peak
//! memory, read from the kernel when the process is reaped (`wait4`),
//! under 512 MB. And what kills genesis anyway cannot kill it forever: an
//! experiment a process died in `[nats] max_deliver` times is answered.

use std::io::{Read, Write};
use std::process::Stdio;

use serde_json::Value;

use crate::support::*;

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
    let mut child = spawn_run(home, request, Stdio::piped);
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

/// `genesis run -` with `request` on its stdin; stdout and stderr go to
/// `output` (piped or dropped).
fn spawn_run(home: &TestHome, request: &Value, output: fn() -> Stdio) -> std::process::Child {
    let mut child = home
        .command()
        .args(["run", "-"])
        .stdin(Stdio::piped())
        .stdout(output())
        .stderr(output())
        .spawn()
        .expect("spawn genesis");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.to_string().as_bytes())
        .unwrap();
    child
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

/// Git's base85 lines of `bytes` (at most 52 bytes a line), as `git diff
/// --binary` writes them.
fn git_base85(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 85] =
        b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz!#$%&()*+-;<=>?@^_`{|}~";
    let mut out = String::new();
    for chunk in bytes.chunks(52) {
        let n = chunk.len() as u8;
        out.push(if n <= 26 { b'A' + n - 1 } else { b'a' + n - 27 } as char);
        let mut padded = chunk.to_vec();
        padded.resize(chunk.len().div_ceil(4) * 4, 0);
        for word in padded.chunks(4) {
            let mut v = u64::from(u32::from_be_bytes(word.try_into().unwrap()));
            let mut group = [0u8; 5];
            for slot in group.iter_mut().rev() {
                *slot = ALPHABET[(v % 85) as usize];
                v /= 85;
            }
            out.push_str(std::str::from_utf8(&group).unwrap());
        }
        out.push('\n');
    }
    out
}

/// A git binary patch adding `name`: `size` zero bytes, compressed.
fn zero_bomb_patch(name: &str, size: usize) -> String {
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    let block = vec![0u8; 1 << 20];
    for _ in 0..size / block.len() {
        z.write_all(&block).unwrap();
    }
    let compressed = z.finish().unwrap();
    format!(
        "diff --git a/{name} b/{name}\nnew file mode 100644\nindex 0000000000000000000000000000000000000000..1111111111111111111111111111111111111111\nGIT binary patch\nliteral {size}\n{}\nliteral 0\nHcmV?d00001\n\n",
        git_base85(&compressed)
    )
}

#[test]
fn a_megabyte_binary_patch_of_a_gigabyte_of_zeros_is_refused_before_it_inflates() {
    ensure_image("busybox");
    let home = TestHome::new(CONFIG);
    git_repo(
        &home.root().join("app"),
        &[("run_tests.sh", "echo 1..1\necho ok 1\n")],
    );
    let patch = zero_bomb_patch("z.bin", 1 << 30);
    eprintln!("patch of {} bytes for 1 GiB of zeros", patch.len());
    assert!(patch.len() < 2 << 20);
    let (r, peak) = run_measured(&home, &request("bomb-patch", "high", &["z.bin"], &patch));
    eprintln!("peak {peak:.1} MB: {}", r["error"]);
    assert_eq!(r["status"], "failed", "{r:#}");
    assert_eq!(r["error_kind"], "invalid_request", "{r:#}");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("[limits.high] patch_mb (64)"),
        "{r:#}"
    );
    assert!(peak < CEILING_MB, "genesis peaked at {peak:.1} MB");
}

/// A `genesis run` of `request`, killed with SIGKILL (as the kernel's OOM
/// killer would) once it has started a container of its own.
fn run_and_kill(home: &TestHome, request: &Value) {
    let before = home.containers_left();
    let mut child = spawn_run(home, request, Stdio::null);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while home.containers_left().iter().all(|c| before.contains(c)) {
        assert!(std::time::Instant::now() < deadline, "no container started");
        assert!(
            child.try_wait().unwrap().is_none(),
            "genesis ended by itself"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn an_experiment_genesis_died_in_max_deliver_times_is_answered_and_never_run_again() {
    ensure_image("busybox");
    let home = TestHome::new(&format!("{CONFIG}\n[nats]\nmax_deliver = 2\n"));
    git_repo(
        &home.root().join("app"),
        &[("run_tests.sh", "sleep 60\necho 1..1\necho ok 1\n")],
    );
    let req = request("crash-loop", "high", &[], "");
    run_and_kill(&home, &req);
    run_and_kill(&home, &req);
    // The third process takes it over and answers at once, without a run.
    let started = std::time::Instant::now();
    let out = home.run_request(&req);
    let r = result_json(&out);
    assert_eq!(r["status"], "failed", "{r:#}");
    assert_eq!(r["error_kind"], "internal", "{r:#}");
    let error = r["error"].as_str().unwrap();
    assert!(
        error.contains("genesis died 2 times") && error.contains("max_deliver = 2"),
        "{error}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
    // Stored as the answer: asked again, it is the same result, and no
    // container of the killed runs is left.
    assert_eq!(result_json(&home.run_request(&req))["error"], r["error"]);
    assert!(home.containers_left().is_empty());
    // Nor any run disk of theirs: the process that took it over released them.
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let home_path = home.home().display().to_string();
    let left: Vec<&str> = mounts.lines().filter(|l| l.contains(&home_path)).collect();
    assert!(left.is_empty(), "mounts left: {left:#?}");
}
