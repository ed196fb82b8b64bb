//! Store faults, with the real `genesis` binary:
//!
//! - GENESIS_HOME on a small file system of its own (a 12 MiB tmpfs) that
//!   fills up: `genesis run` fails with an error naming the full disk and
//!   the home, never panics; once space is freed, everything committed
//!   before is still there and genesis runs again.
//! - The store itself fills its file system (4 MiB): the commit that does
//!   not fit fails with the same error, `genesis run` refuses, and after
//!   the file system grows every earlier commit reads back whole.
//! - The store file overwritten with garbage, and cut to half its length:
//!   `genesis doctor` names the file, says what is wrong and how to get
//!   going again, and exits non-zero; `genesis run`, `serve` and `list`
//!   refuse with the same message; nothing panics.
//! - 4 KiB of noise deep inside a store of 300 records, where opening
//!   never looks: `doctor` (which checks every page) names it, and reading
//!   the damaged rows names the file instead of a bare decoding error.

use std::path::Path;
use std::process::Output;

use genesis::contract::Request;
use genesis::store::{ExperimentRecord, Status, Store, DEFAULT_CACHE_BYTES};

use crate::support::nats::NatsServer;
use crate::support::tmpfs::{fill, Tmpfs};
use crate::support::*;

/// Size of the home's own file system: room for the store, a few
/// snapshots and sandboxes, and little else.
const HOME_FS: &str = "size=12m";
/// A file system the store alone fills, and the size it grows to after.
const STORE_FS: &str = "size=4m";
const ROOMY_FS: &str = "size=16m";
/// Patch size of the records that fill it: a few dozen commits.
const FILL_PATCH_BYTES: usize = 64 * 1024;

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn assert_no_panic(out: &Output) {
    let all = text(out);
    assert!(!all.contains("panicked"), "genesis panicked:\n{all}");
    assert_ne!(out.status.code(), Some(101), "exit 101 is a panic:\n{all}");
}

fn config() -> String {
    format!("{}\n[host]\nname = \"full-host\"\n", serve_config(1, false))
}

#[test]
fn a_full_home_fails_with_a_clear_error_and_keeps_what_was_stored() {
    let home = serve_home_with(&config());
    let _fs = Tmpfs::mount(&home.home(), HOME_FS);
    let before = home.run_request(&sleepy_request("before-full", 0.0));
    assert_eq!(before.status.code(), Some(0), "{}", text(&before));

    let filler = fill(&home.home());
    let full = home.run_request(&sleepy_request("while-full", 0.0));
    assert_no_panic(&full);
    assert_eq!(full.status.code(), Some(1), "{}", text(&full));
    let said = text(&full);
    let want = format!(
        "GENESIS_HOME {} is full (No space left on device)",
        home.home().display()
    );
    assert!(said.contains(&want), "expected {want:?} in:\n{said}");
    let listed = home.run_args(&["list", "--json"]);
    assert_no_panic(&listed);

    std::fs::remove_file(&filler).unwrap();
    let shown = home.run_args(&["show", "before-full", "--json"]);
    assert!(shown.status.success(), "{}", text(&shown));
    let view: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    assert_eq!(view["record"]["status"], "completed", "{view}");
    assert_eq!(view["record"]["host"], "full-host", "{view}");
    assert_eq!(view["result"]["status"], "success", "{view}");
    assert!(view["metrics"]["test_count"].as_u64() == Some(3), "{view}");
    let after = home.run_request(&sleepy_request("after-free", 0.0));
    assert_eq!(after.status.code(), Some(0), "{}", text(&after));
    assert!(home.containers_left().is_empty());
}

/// A record whose request carries `patch_bytes` of patch: a few of them
/// fill a small file system.
fn big_record(id: &str, patch_bytes: usize) -> ExperimentRecord {
    let body = serde_json::json!({
        "experiment_id": id, "instance_id": "i",
        "experiment_type": "t", "risk_level": "low",
        "changes": {"patch": "x".repeat(patch_bytes)}
    });
    let request = Request::parse(body.to_string().as_bytes()).unwrap();
    ExperimentRecord::new(&request, Status::Completed, "h:1", 1)
}

/// The store itself fills its file system: the commit that does not fit
/// fails with the home named, `genesis run` then refuses the same way, and
/// once there is room again every earlier commit is there, whole.
#[test]
fn a_store_that_fills_its_file_system_keeps_every_commit() {
    let home = serve_home_with(&config());
    let fs = Tmpfs::mount(&home.home(), STORE_FS);
    let path = home.home().join("genesis.redb");
    let full_text = format!(
        "GENESIS_HOME {} is full (No space left on device)",
        home.home().display()
    );
    let committed = {
        let store = Store::open_with(&path, DEFAULT_CACHE_BYTES, "full-host").unwrap();
        let mut n = 0;
        let err = loop {
            let record = big_record(&format!("fill-{n}"), FILL_PATCH_BYTES);
            match store.write_final(&record, None, None) {
                Ok(()) => n += 1,
                Err(e) => break e,
            }
            assert!(n < 10_000, "{STORE_FS} never filled up");
        };
        let said = err.to_string();
        assert!(said.contains(&full_text), "{said}");
        assert!(n > 0, "nothing fitted before the file system was full");
        n
    };
    let run = home.run_request(&sleepy_request("on-full-store", 0.0));
    assert_no_panic(&run);
    assert_eq!(run.status.code(), Some(1), "{}", text(&run));
    assert!(text(&run).contains(&full_text), "{}", text(&run));

    fs.resize(ROOMY_FS);
    let store = Store::open(&path).unwrap();
    for n in 0..committed {
        let id = format!("fill-{n}");
        let mut want = big_record(&id, FILL_PATCH_BYTES);
        want.host = "full-host".into();
        let got = store.get(&id).unwrap();
        assert_eq!(got.as_ref(), Some(&want), "committed record {id}");
    }
    eprintln!("store filled its file system after {committed} commits; all read back");
}

/// A store with `count` records and history rows, written and closed.
fn store_with_records(path: &Path, count: i64) {
    let store = Store::open(path).unwrap();
    for n in 0..count {
        let record = big_record(&format!("kept-{n:04}"), 3000);
        store.write_final(&record, None, None).unwrap();
        store
            .add_history(
                &record.experiment_id,
                genesis::store::SandboxOperation::Create,
                "/p",
                1,
                "",
            )
            .unwrap();
    }
}

/// Runs `genesis doctor` with a NATS server up, so the store is the only
/// thing that can be wrong; returns its report and the ✗ lines.
fn doctor(home: &TestHome, nats: &NatsServer) -> (Output, Vec<String>) {
    let out = home
        .command()
        .env("GENESIS_NATS_URL", nats.url())
        .arg("doctor")
        .output()
        .unwrap();
    assert_no_panic(&out);
    let failed = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('✗'))
        .map(str::to_owned)
        .collect();
    (out, failed)
}

/// Every way in refuses a damaged store with the same message: what the
/// file is, that it is damaged, and how to go on.
fn assert_refused_everywhere(home: &TestHome, nats: &NatsServer) {
    let store = home.home().join("genesis.redb");
    let named = format!("store {} is damaged", store.display());
    let fix = format!("mv {} {}.damaged", store.display(), store.display());

    let (doctor, failed) = doctor(home, nats);
    assert_eq!(doctor.status.code(), Some(1), "{}", text(&doctor));
    let report = String::from_utf8_lossy(&doctor.stdout);
    assert_eq!(failed.len(), 1, "only the store is wrong:\n{report}");
    assert!(
        failed[0].contains(&format!("{} is damaged", store.display())),
        "{report}"
    );
    assert!(
        report.contains(&format!("fix: Move it aside (`{fix}`")),
        "{report}"
    );
    assert!(
        report.contains("exports") && report.contains("archives"),
        "{report}"
    );

    let run = home.run_request(&sleepy_request("on-damaged", 0.0));
    let serve = home
        .command()
        .env("GENESIS_NATS_URL", nats.url())
        .arg("serve")
        .output()
        .unwrap();
    let list = home.run_args(&["list"]);
    for (what, out) in [("run", &run), ("serve", &serve), ("list", &list)] {
        assert_no_panic(out);
        assert_eq!(out.status.code(), Some(1), "{what}: {}", text(out));
        let said = text(out);
        assert!(
            said.contains(&named) && said.contains(&fix),
            "{what}: {said}"
        );
    }
}

#[test]
fn a_store_of_garbage_is_named_with_the_fix_and_refused() {
    let nats = NatsServer::start(false);
    let home = serve_home(1, false);
    let path = home.home().join("genesis.redb");
    store_with_records(&path, 40);
    // Deterministic noise, the size of a small store.
    let mut x: u32 = 0x9E37_79B9;
    let garbage: Vec<u8> = (0..256 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    std::fs::write(&path, garbage).unwrap();
    assert_refused_everywhere(&home, &nats);
}

#[test]
fn a_store_cut_to_half_is_named_with_the_fix_and_refused() {
    let nats = NatsServer::start(false);
    let home = serve_home(1, false);
    let path = home.home().join("genesis.redb");
    store_with_records(&path, 40);
    let len = std::fs::metadata(&path).unwrap().len();
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(len / 2).unwrap();
    drop(file);
    assert_refused_everywhere(&home, &nats);
}

/// Overwrites 4 KiB at `at` (a fraction of the length) with deterministic
/// noise.
fn scribble(path: &Path, at: f64) {
    let mut bytes = std::fs::read(path).unwrap();
    let start = (bytes.len() as f64 * at) as usize;
    let end = (start + 4096).min(bytes.len());
    let mut x: u32 = 0x2545_F491;
    for b in &mut bytes[start..end] {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    std::fs::write(path, bytes).unwrap();
}

/// Damage deep inside the file, in pages of rows that opening never reads:
/// `list --limit 1` still works, but `doctor` checks every page and names
/// the file, and reading the damaged rows (`export`) names it too instead
/// of failing with a bare decoding error.
#[test]
fn a_store_damaged_deep_inside_is_found_by_doctor() {
    let nats = NatsServer::start(false);
    let home = serve_home(1, false);
    let path = home.home().join("genesis.redb");
    store_with_records(&path, 300);
    scribble(&path, 0.3);
    let list = home.run_args(&["list", "--limit", "1"]);
    assert!(list.status.success(), "{}", text(&list));

    let (report, failed) = doctor(&home, &nats);
    assert_eq!(report.status.code(), Some(1), "{}", text(&report));
    assert_eq!(failed.len(), 1, "{}", text(&report));
    assert!(
        failed[0].contains(&format!("{} is damaged", path.display())),
        "{}",
        text(&report)
    );
    let export = home.run_args(&["export", "--format", "sql", "--output", "-"]);
    assert_no_panic(&export);
    assert_eq!(
        export.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&export.stderr)
    );
    let said = String::from_utf8_lossy(&export.stderr);
    assert!(
        said.contains(&format!("store {} is damaged", path.display())),
        "{said}"
    );
}
