//! A process killed with SIGKILL in the middle of a stream of committed
//! writes loses nothing that was committed: the parent reads "committed N"
//! lines from a child writer (this same test binary, re-executed), kills it
//! at a random-ish point, reopens the file and checks every record.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use genesis::contract::{Changes, Request, RiskLevel};
use genesis::store::{ExperimentRecord, Status, Store};

const CHILD_ENV: &str = "GENESIS_STORE_CRASH_CHILD";

fn request(n: u64) -> Request {
    Request {
        experiment_id: format!("crash-{n:06}"),
        instance_id: "crash-test".into(),
        experiment_type: "t".into(),
        description: format!("record {n} with some text \t\n and unicode ✓"),
        risk_level: RiskLevel::Low,
        estimated_impact: n as f64 / 7.0,
        changes: Changes {
            files: vec![format!("f{n}.rs")],
            description: String::new(),
            patch: Some("x".repeat((n % 50) as usize)),
            patches: Default::default(),
        },
        rollback_plan: String::new(),
        timeout_ms: Some(n),
        repo: None,
        base_ref: None,
        test_command: None,
    }
}

/// The child: writes records forever, announcing each commit on stdout.
#[test]
fn crash_writer_child() {
    let Ok(path) = std::env::var(CHILD_ENV) else {
        return; // Only does something when the parent starts it.
    };
    let store = Store::open(std::path::Path::new(&path)).unwrap();
    for n in 0.. {
        let rec = ExperimentRecord::new(&request(n), Status::Completed, "child", n as i64);
        store.insert_new(&rec).unwrap();
        store
            .add_history(
                &rec.experiment_id,
                genesis::store::SandboxOperation::Create,
                "/p",
                n,
                "",
            )
            .unwrap();
        println!("committed {n}");
    }
}

/// [`crash_writer_child`]'s name as the test binary knows it: its module
/// path without the crate (`store_crash::crash_writer_child` in `store`).
fn child_test_name() -> String {
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    if module.is_empty() {
        "crash_writer_child".into()
    } else {
        format!("{module}::crash_writer_child")
    }
}

#[test]
fn sigkill_mid_stream_loses_no_committed_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crash.redb");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            &child_test_name(),
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &path)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut last = None;
    // Kill at a point that depends on the clock, so runs differ.
    let target = 150
        + (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_micros() as u64
            % 200);
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(n) = line.strip_prefix("committed ") {
            let n: u64 = n.trim().parse().unwrap();
            last = Some(n);
            if n >= target {
                // SAFETY: kill(2) on the child we spawned.
                unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
                break;
            }
        }
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "the writer must have been killed");
    let last = last.expect("child committed something");

    let store = Store::open(&path).unwrap();
    for n in 0..=last {
        let mut want = ExperimentRecord::new(&request(n), Status::Completed, "child", n as i64);
        // The store names its host on every record it writes.
        want.host = store.host().to_owned();
        let got = store
            .get(&want.experiment_id)
            .unwrap()
            .unwrap_or_else(|| panic!("committed record {n} is missing"));
        assert_eq!(got, want, "record {n} changed");
        assert_eq!(store.history(&want.experiment_id).unwrap().len(), 1);
    }
    // Whatever came after the last announced commit is either whole or absent.
    let all = store.list(None, usize::MAX).unwrap();
    assert!(all.len() as u64 > last);
}
