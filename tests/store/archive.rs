//! Sandbox archives and exports, driven through the real pieces without
//! running experiments: a GENESIS_HOME with a store, records, sandbox
//! directories written by hand as the runner writes them, and a candidate
//! snapshot tarball in `snapshots/` (no mirror: the bundle's fallback; the
//! mirror path, layered or not, is `tests/sandbox/layers.rs`).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, TimeDelta, Utc};
use sha2::{Digest, Sha256};

use genesis::config::{Config, Env};
use genesis::contract::{
    hex_digest, BaselineSummary, CandidateRef, Completed, ErrorKind, ExperimentResult, Metrics,
    Recommendation, Request,
};
use genesis::errors::GenesisError;
use genesis::maintenance::{self, archive_path, CleanupReport, ExportSource};
use genesis::store::{ExperimentRecord, MetricsRow, Status, Store};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const MB: u64 = 1024 * 1024;

/// A GENESIS_HOME with a store and one candidate snapshot.
struct Fixture {
    dir: tempfile::TempDir,
    config: Arc<Config>,
    store: Store,
    now: DateTime<Utc>,
}

fn config(home: &Path, toml: &str) -> Arc<Config> {
    let file = home.parent().unwrap().join("genesis.toml");
    Arc::new(
        Config::from_layers(
            home.to_path_buf(),
            Some((file, toml.into())),
            &Env::default(),
        )
        .unwrap(),
    )
}

fn fixture(toml: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let store = Store::open(&home.join("genesis.redb")).unwrap();
    write_snapshot(&home);
    let now = DateTime::parse_from_rfc3339("2024-06-01T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc);
    Fixture {
        config: config(&home, toml),
        dir,
        store,
        now,
    }
}

impl Fixture {
    fn home(&self) -> &Path {
        &self.config.home
    }

    fn sandbox(&self, id: &str) -> PathBuf {
        self.home().join("sandboxes").join(id)
    }

    async fn cleanup(&self, config: &Arc<Config>) -> CleanupReport {
        maintenance::cleanup(config, &self.store, self.now)
            .await
            .unwrap()
    }

    fn operations(&self, id: &str) -> Vec<String> {
        self.store
            .history(id)
            .unwrap()
            .into_iter()
            .map(|h| h.operation.as_str().to_owned())
            .collect()
    }
}

/// The candidate snapshot, members deliberately out of order: a file in a
/// subdirectory first, an executable script, a symlink.
fn write_snapshot(home: &Path) {
    let dir = home.join("snapshots");
    std::fs::create_dir_all(&dir).unwrap();
    let file = std::fs::File::create(dir.join(format!("{COMMIT}-0123456789ab.tar.gz"))).unwrap();
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut add = |path: &str, kind: tar::EntryType, mode: u32, data: &[u8], link: Option<&str>| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        match link {
            Some(target) => tar.append_link(&mut h, path, target).unwrap(),
            None => tar.append_data(&mut h, path, data).unwrap(),
        }
    };
    add(
        "app/src/lib.rs",
        tar::EntryType::Regular,
        0o644,
        b"pub fn answer() -> u32 { 42 }\n",
        None,
    );
    add("app/", tar::EntryType::Directory, 0o755, b"", None);
    add(
        "app/README.md",
        tar::EntryType::Regular,
        0o644,
        b"# app\n",
        None,
    );
    add(
        "app/run.sh",
        tar::EntryType::Regular,
        0o755,
        b"#!/bin/sh\ncargo test\n",
        None,
    );
    add(
        "app/link",
        tar::EntryType::Symlink,
        0o777,
        b"",
        Some("README.md"),
    );
    tar.into_inner().unwrap().finish().unwrap();
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Merge,
    Adapt,
    Rollback,
    Failed,
    Running,
    Queued,
}

fn request(id: &str) -> Request {
    Request::parse(
        serde_json::json!({
            "experiment_id": id,
            "instance_id": "inst-1",
            "experiment_type": "refactor",
            "risk_level": "medium",
            "changes": {"files": ["src/lib.rs"], "patch": "--- a/src/lib.rs\n+++ b/src/lib.rs\n"}
        })
        .to_string()
        .as_bytes(),
    )
    .unwrap()
}

fn completed(id: &str, recommendation: Recommendation) -> Completed {
    Completed {
        experiment_id: id.into(),
        instance_id: "inst-1".into(),
        metrics: Metrics {
            success_rate: 1.0,
            regression: 0.01,
            llm_reduction: 0.4,
            test_count: 3,
            ..Metrics::default()
        },
        baseline: BaselineSummary {
            test_count: 3,
            failures: 0,
            runtime_ms: 10,
            code_coverage_percent: None,
        },
        regressions: vec![],
        flaky: vec![],
        recommendation,
        reasons: vec![genesis::contract::Reason::unruled("test")],
        candidate: CandidateRef {
            repo: "app".into(),
            base_commit: "f".repeat(40),
            commit: COMMIT.into(),
        },
        environment: None,
        framework: None,
        analysis: None,
        llm: None,
        host: "test-host".into(),
        timestamp: DateTime::from_timestamp_millis(0).unwrap(),
    }
}

/// Stores a record updated `age_hours` before the fixture's now, and writes
/// its sandbox directory as the runner does (plus `extra` files).
fn add(f: &Fixture, id: &str, kind: Kind, age_hours: i64, extra: &[(&str, Vec<u8>)]) {
    let req = request(id);
    let updated = (f.now - TimeDelta::hours(age_hours)).timestamp_millis();
    let status = match kind {
        Kind::Merge | Kind::Adapt | Kind::Rollback => Status::Completed,
        Kind::Failed => Status::Failed,
        Kind::Running => Status::Running,
        Kind::Queued => Status::Queued,
    };
    let mut rec = ExperimentRecord::new(&req, status, "test:1", updated);
    let result = match kind {
        Kind::Merge => Some(ExperimentResult::Success(completed(
            id,
            Recommendation::Merge,
        ))),
        Kind::Adapt => Some(ExperimentResult::Success(completed(
            id,
            Recommendation::MergeWithAdaptations,
        ))),
        Kind::Rollback => Some(ExperimentResult::Success(completed(
            id,
            Recommendation::Rollback,
        ))),
        Kind::Failed => Some(ExperimentResult::failed(
            "test-host",
            id,
            "inst-1",
            ErrorKind::Timeout,
            "ran too long",
        )),
        Kind::Running | Kind::Queued => None,
    };
    rec.recommendation = result.as_ref().map(|r| r.recommendation());
    rec.result_json = result.as_ref().map(ExperimentResult::to_json);
    let metrics = match &result {
        Some(ExperimentResult::Success(c)) => Some(MetricsRow {
            experiment_id: id.into(),
            host: String::new(),
            metrics: c.metrics.clone(),
            baseline: (&c.baseline).into(),
            regressions: vec![],
            flaky: vec![],
            inserted_at: updated,
        }),
        _ => None,
    };
    f.store.write_final(&rec, metrics.as_ref(), None).unwrap();

    let dir = f.sandbox(id);
    let write = |rel: &str, data: &[u8]| {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    };
    write(
        "request.json",
        serde_json::to_string_pretty(&req).unwrap().as_bytes(),
    );
    write(
        "patch.diff",
        b"--- a/src/lib.rs\n+++ b/src/lib.rs\n@@ -1 +1 @@\n-old\n+new\n",
    );
    write("patch-lib.diff", b"--- a/x\n+++ b/x\n");
    for run in ["baseline", "candidate"] {
        write(
            &format!("{run}/test.log"),
            format!("running {run}\nok\n").as_bytes(),
        );
        write(
            &format!("{run}/out/junit.xml"),
            format!("<testsuite name=\"{run}\"/>").as_bytes(),
        );
    }
    if let Some(r) = &result {
        write("result.json", r.to_json().as_bytes());
    }
    for (rel, data) in extra {
        write(rel, data);
    }
    // Links inside a sandbox are never followed or packed.
    std::os::unix::fs::symlink("/etc/passwd", dir.join("candidate/out/evil")).unwrap();
}

/// Incompressible bytes (xorshift), so archive sizes are predictable.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// One tar member as read back.
#[derive(Clone, Debug)]
struct Entry {
    name: String,
    kind: tar::EntryType,
    mode: u32,
    mtime: u64,
    uid: u64,
    data: Vec<u8>,
    link: Option<String>,
}

fn read_tarball(path: &Path) -> Vec<Entry> {
    let file = std::fs::File::open(path).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            Entry {
                name: String::from_utf8(e.path_bytes().into_owned()).unwrap(),
                kind: e.header().entry_type(),
                mode: e.header().mode().unwrap(),
                mtime: e.header().mtime().unwrap(),
                uid: e.header().uid().unwrap(),
                data,
                link: e.link_name().unwrap().map(|l| l.display().to_string()),
            }
        })
        .collect()
}

/// Rewrites a tarball with `edit` applied to its members, into a new file
/// renamed over the old one (as someone tampering would).
fn repack(path: &Path, edit: impl FnOnce(&mut Vec<Entry>)) {
    let mut entries = read_tarball(path);
    edit(&mut entries);
    let tmp = path.with_extension("tampered");
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&tmp).unwrap(),
        flate2::Compression::default(),
    );
    let mut tar = tar::Builder::new(gz);
    for e in &entries {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(e.kind);
        h.set_mode(e.mode);
        h.set_size(e.data.len() as u64);
        match &e.link {
            Some(l) => tar.append_link(&mut h, &e.name, l).unwrap(),
            None => tar.append_data(&mut h, &e.name, e.data.as_slice()).unwrap(),
        }
    }
    tar.into_inner().unwrap().finish().unwrap();
    std::fs::rename(tmp, path).unwrap();
}

fn sha256(bytes: &[u8]) -> String {
    hex_digest(&Sha256::digest(bytes))
}

#[tokio::test]
async fn an_export_holds_the_sandbox_and_workspace_and_every_sha256_checks() {
    let f = fixture("");
    add(&f, "exp-merge", Kind::Merge, 1, &[]);
    let out = f.dir.path().join("exp-merge.tar.gz");
    let summary = maintenance::export_sandbox(&f.config, &f.store, "exp-merge", &out)
        .await
        .unwrap();
    assert!(matches!(summary.source, ExportSource::Live(_)));
    assert!(
        summary.notes.iter().any(|n| n.contains("evil")),
        "{:?}",
        summary.notes
    );

    let entries = read_tarball(&out);
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "exp-merge/",
            "exp-merge/MANIFEST",
            "exp-merge/baseline/",
            "exp-merge/baseline/out/",
            "exp-merge/baseline/out/junit.xml",
            "exp-merge/baseline/test.log",
            "exp-merge/candidate/",
            "exp-merge/candidate/out/",
            "exp-merge/candidate/out/junit.xml",
            "exp-merge/candidate/test.log",
            "exp-merge/patch-lib.diff",
            "exp-merge/patch.diff",
            "exp-merge/request.json",
            "exp-merge/result.json",
            "exp-merge/workspace/",
            "exp-merge/workspace/app/",
            "exp-merge/workspace/app/README.md",
            "exp-merge/workspace/app/link",
            "exp-merge/workspace/app/run.sh",
            "exp-merge/workspace/app/src/",
            "exp-merge/workspace/app/src/lib.rs",
        ]
    );
    // Fixed metadata, but the workspace keeps the snapshot's times (as the
    // run saw them) and executable bit; `src/` is not in the snapshot's tar
    // (only its file is), so the bundle makes it with the fixed time.
    for e in &entries {
        let snapshot_time = e.name.starts_with("exp-merge/workspace/app")
            && e.name != "exp-merge/workspace/app/src/";
        let mtime = if snapshot_time { 1_700_000_000 } else { 0 };
        assert_eq!((e.mtime, e.uid), (mtime, 0), "{}", e.name);
    }
    let by_name: BTreeMap<&str, &Entry> = entries.iter().map(|e| (e.name.as_str(), e)).collect();
    assert_eq!(by_name["exp-merge/workspace/app/run.sh"].mode, 0o755);
    assert_eq!(by_name["exp-merge/result.json"].mode, 0o644);
    let link = by_name["exp-merge/workspace/app/link"];
    assert!(link.kind.is_symlink());
    assert_eq!(link.link.as_deref(), Some("README.md"));
    assert_eq!(
        by_name["exp-merge/workspace/app/src/lib.rs"].data,
        b"pub fn answer() -> u32 { 42 }\n"
    );
    // gzip header: no timestamp.
    let raw = std::fs::read(&out).unwrap();
    assert_eq!(&raw[4..8], &[0, 0, 0, 0]);

    // Every MANIFEST line checks, computed here independently, and every
    // non-directory member is listed.
    let manifest = String::from_utf8(by_name["exp-merge/MANIFEST"].data.clone()).unwrap();
    let listed: BTreeMap<String, String> = manifest
        .lines()
        .map(|l| {
            let (hex, name) = l.split_once("  ").unwrap();
            (format!("exp-merge/{name}"), hex.to_owned())
        })
        .collect();
    let mut checked = 0;
    for e in &entries {
        if e.kind.is_dir() || e.name == "exp-merge/MANIFEST" {
            continue;
        }
        let content = match &e.link {
            Some(target) => target.as_bytes().to_vec(),
            None => e.data.clone(),
        };
        assert_eq!(listed.get(&e.name), Some(&sha256(&content)), "{}", e.name);
        checked += 1;
    }
    assert_eq!(checked, listed.len());
    assert_eq!(checked, 12);
    let report = maintenance::verify_archive(&out).unwrap();
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.files_checked, 12);
    assert!(f.operations("exp-merge").contains(&"export".to_string()));
}

#[tokio::test]
async fn exports_are_byte_identical_live_twice_and_from_the_archive() {
    let f = fixture("");
    add(
        &f,
        "exp-twice",
        Kind::Adapt,
        100,
        &[("rerun/test.log", b"rerun\n".to_vec())],
    );
    let (a, b, c) = (
        f.dir.path().join("a.tgz"),
        f.dir.path().join("b.tgz"),
        f.dir.path().join("c.tgz"),
    );
    maintenance::export_sandbox(&f.config, &f.store, "exp-twice", &a)
        .await
        .unwrap();
    maintenance::export_sandbox(&f.config, &f.store, "exp-twice", &b)
        .await
        .unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());

    // 100 h old and merged: cleanup archives it and removes the directory.
    let report = f.cleanup(&f.config).await;
    assert_eq!(report.archived, ["exp-twice"], "{report:?}");
    assert!(!f.sandbox("exp-twice").exists());
    let archive = archive_path(&f.config, "exp-twice");
    assert_eq!(std::fs::read(&archive).unwrap(), std::fs::read(&a).unwrap());

    let summary = maintenance::export_sandbox(&f.config, &f.store, "exp-twice", &c)
        .await
        .unwrap();
    assert_eq!(summary.source, ExportSource::Archive(archive));
    assert_eq!(std::fs::read(&c).unwrap(), std::fs::read(&a).unwrap());
    let ops = f.operations("exp-twice");
    for op in ["export", "archive", "verify", "delete"] {
        assert!(ops.contains(&op.to_string()), "{op} missing from {ops:?}");
    }
}

#[tokio::test]
async fn cleanup_respects_ages_and_never_touches_unfinished_experiments() {
    let f = fixture("[cleanup]\ndelete_after_hours = 24\narchive_after_hours = 72\n");
    add(&f, "failed-old", Kind::Failed, 25, &[]);
    add(&f, "failed-young", Kind::Failed, 23, &[]);
    add(&f, "rollback-old", Kind::Rollback, 25, &[]);
    add(&f, "merge-young", Kind::Merge, 71, &[]);
    add(&f, "merge-old", Kind::Merge, 73, &[]);
    add(&f, "running-ancient", Kind::Running, 10_000, &[]);
    add(&f, "queued-ancient", Kind::Queued, 10_000, &[]);

    let report = f.cleanup(&f.config).await;
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(report.deleted, ["failed-old", "rollback-old"]);
    assert_eq!(report.archived, ["merge-old"]);
    assert!(report.freed_bytes > 0);
    for gone in ["failed-old", "rollback-old", "merge-old"] {
        assert!(!f.sandbox(gone).exists(), "{gone}");
    }
    for kept in [
        "failed-young",
        "merge-young",
        "running-ancient",
        "queued-ancient",
    ] {
        assert!(f.sandbox(kept).join("request.json").exists(), "{kept}");
        assert!(!archive_path(&f.config, kept).exists(), "{kept}");
    }
    let verified = maintenance::verify_archive(&archive_path(&f.config, "merge-old")).unwrap();
    assert!(verified.is_ok(), "{verified:?}");
    assert_eq!(f.operations("failed-old"), ["delete"]);
    assert_eq!(f.operations("merge-old"), ["archive", "verify", "delete"]);

    // A second run finds nothing more to do.
    let again = f.cleanup(&f.config).await;
    assert!(
        again.deleted.is_empty() && again.archived.is_empty() && again.pruned.is_empty(),
        "{again:?}"
    );
}

#[tokio::test]
async fn the_disk_budget_prunes_the_oldest_intact_archives_only() {
    let f = fixture("");
    // Four merged experiments, oldest first, each with 1.5 MB of noise.
    let blob = |seed| vec![("candidate/out/blob.bin", noise(3 * MB as usize / 2, seed))];
    add(&f, "arch-corrupt", Kind::Merge, 100, &blob(1));
    add(&f, "arch-1", Kind::Merge, 90, &blob(2));
    add(&f, "arch-2", Kind::Merge, 80, &blob(3));
    add(&f, "arch-3", Kind::Merge, 75, &blob(4));
    add(&f, "still-running", Kind::Running, 1_000, &blob(5));
    let first = f.cleanup(&f.config).await;
    assert_eq!(first.archived.len(), 4, "{first:?}");
    assert!(first.pruned.is_empty());

    // The oldest archive gets damaged: it is reported and must survive pruning.
    repack(&archive_path(&f.config, "arch-corrupt"), |entries| {
        let blob = entries
            .iter_mut()
            .find(|e| e.name.ends_with("blob.bin"))
            .unwrap();
        blob.data[1000] ^= 0xff;
    });

    // A budget that pruning the oldest intact archive satisfies.
    let used = maintenance::disk_usage_bytes(f.home());
    let oldest = std::fs::metadata(archive_path(&f.config, "arch-1"))
        .unwrap()
        .len();
    assert!(oldest > MB);
    let budget_mb = (used - oldest).div_ceil(MB);
    let tight = config(
        f.home(),
        &format!("[cleanup]\ndisk_budget_mb = {budget_mb}\n"),
    );
    let report = f.cleanup(&tight).await;
    assert_eq!(report.pruned, ["arch-1"], "{report:?}");
    assert_eq!(report.corrupt_archives, ["arch-corrupt"]);
    assert!(archive_path(&f.config, "arch-corrupt").exists());
    assert!(!archive_path(&f.config, "arch-1").exists());
    for kept in ["arch-2", "arch-3"] {
        assert!(archive_path(&f.config, kept).exists(), "{kept}");
    }
    assert!(f
        .sandbox("still-running")
        .join("candidate/out/blob.bin")
        .exists());
    assert!(f.operations("arch-1").ends_with(&["delete".to_string()]));
}

#[tokio::test]
async fn tampered_archives_are_detected_reported_refused_and_kept() {
    let f = fixture("");
    add(&f, "flipped", Kind::Merge, 100, &[]);
    add(&f, "grown", Kind::Merge, 100, &[]);
    add(&f, "shrunk", Kind::Merge, 100, &[]);
    add(&f, "intact", Kind::Merge, 100, &[]);
    assert_eq!(f.cleanup(&f.config).await.archived.len(), 4);
    assert!(maintenance::corrupt_archives(&f.config).is_empty());

    repack(&archive_path(&f.config, "flipped"), |entries| {
        let e = entries
            .iter_mut()
            .find(|e| e.name == "flipped/workspace/app/src/lib.rs")
            .unwrap();
        e.data[0] ^= 0x01;
    });
    repack(&archive_path(&f.config, "grown"), |entries| {
        let mut extra = entries
            .iter()
            .find(|e| e.name == "grown/patch.diff")
            .unwrap()
            .clone();
        extra.name = "grown/candidate/out/extra.xml".into();
        entries.push(extra);
    });
    repack(&archive_path(&f.config, "shrunk"), |entries| {
        entries.retain(|e| e.name != "shrunk/candidate/test.log");
    });

    let problems = |id: &str| {
        maintenance::verify_archive(&archive_path(&f.config, id))
            .unwrap()
            .problems
    };
    assert!(
        problems("flipped")
            .iter()
            .any(|p| p.contains("workspace/app/src/lib.rs does not match")),
        "{:?}",
        problems("flipped")
    );
    assert!(
        problems("grown")
            .iter()
            .any(|p| p.contains("candidate/out/extra.xml is not listed")),
        "{:?}",
        problems("grown")
    );
    assert!(
        problems("shrunk")
            .iter()
            .any(|p| p.contains("candidate/test.log is listed in MANIFEST but missing")),
        "{:?}",
        problems("shrunk")
    );
    assert_eq!(
        maintenance::corrupt_archives(&f.config),
        ["flipped", "grown", "shrunk"]
    );

    // Cleanup with the smallest budget prunes only the intact archive.
    let tiny = config(f.home(), "[cleanup]\ndisk_budget_mb = 0\n");
    let report = f.cleanup(&tiny).await;
    assert_eq!(report.corrupt_archives, ["flipped", "grown", "shrunk"]);
    assert_eq!(report.pruned, ["intact"]);
    for id in ["flipped", "grown", "shrunk"] {
        assert!(archive_path(&f.config, id).exists(), "{id} was deleted");
        let last_verify = f
            .store
            .history(id)
            .unwrap()
            .into_iter()
            .rfind(|h| h.operation == genesis::store::SandboxOperation::Verify)
            .unwrap();
        assert!(last_verify.detail.starts_with("corrupt"), "{last_verify:?}");
    }

    // Export refuses it and writes nothing.
    let out = f.dir.path().join("flipped.tar.gz");
    let err = maintenance::export_sandbox(&f.config, &f.store, "flipped", &out)
        .await
        .unwrap_err();
    assert!(matches!(err, GenesisError::CorruptArchive { .. }), "{err}");
    assert!(!out.exists());

    // The health document names them.
    let ctx = genesis::jobs::JobContext {
        config: f.config.clone(),
        store: f.store.clone(),
        nats: None,
        clock: Arc::new(genesis::jobs::FakeClock::new(f.now)),
    };
    let health = genesis::jobs::health(&ctx).await.unwrap();
    assert_eq!(health.corrupt_archives, ["flipped", "grown", "shrunk"]);
    assert!(health.disk_used_mb > 0.0);

    // So does `doctor`, with a fix.
    let checks = genesis::doctor::checks(&f.config).await;
    let archives = checks.iter().find(|c| c.name == "archives").unwrap();
    assert!(!archives.ok);
    assert!(
        archives.detail.contains("flipped, grown, shrunk"),
        "{}",
        archives.detail
    );
    assert!(archives.fix.is_some());
}

#[tokio::test]
async fn exports_of_unknown_failed_and_deleted_sandboxes() {
    let f = fixture("");
    let out = f.dir.path().join("x.tar.gz");
    let err = maintenance::export_sandbox(&f.config, &f.store, "nope", &out)
        .await
        .unwrap_err();
    assert!(matches!(err, GenesisError::UnknownExperiment(_)), "{err}");
    let err = maintenance::export_sandbox(&f.config, &f.store, "../etc", &out)
        .await
        .unwrap_err();
    assert!(matches!(err, GenesisError::InvalidRequest(_)), "{err}");

    // A failed experiment has no candidate: exported without a workspace.
    add(&f, "failed-1", Kind::Failed, 1, &[]);
    let summary = maintenance::export_sandbox(&f.config, &f.store, "failed-1", &out)
        .await
        .unwrap();
    assert!(
        summary.notes.iter().any(|n| n.contains("no workspace")),
        "{:?}",
        summary.notes
    );
    let names: Vec<String> = read_tarball(&out).into_iter().map(|e| e.name).collect();
    assert!(names.contains(&"failed-1/result.json".to_string()));
    assert!(!names.iter().any(|n| n.contains("workspace")));

    // Once cleanup deleted it, there is nothing to export.
    f.cleanup(&config(f.home(), "[cleanup]\ndelete_after_hours = 0\n"))
        .await;
    let err = maintenance::export_sandbox(&f.config, &f.store, "failed-1", &out)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no sandbox"), "{err}");
}

/// Removes test containers by id, whatever happens.
struct Containers(Vec<String>);

impl Drop for Containers {
    fn drop(&mut self) {
        for id in &self.0 {
            let _ = std::process::Command::new("docker")
                .args(["rm", "-f", id])
                .output();
        }
    }
}

fn labelled_container(experiment: &str, home_label: &str) -> String {
    let out = std::process::Command::new("docker")
        .args([
            "create",
            "--label",
            &format!("genesis.experiment={experiment}"),
        ])
        .args([
            "--label",
            &format!("genesis.home={home_label}"),
            "--label",
            "genesis.role=candidate",
        ])
        .args(["genesis/busybox:latest", "true"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[tokio::test]
async fn orphan_containers_of_this_home_are_reaped_unless_running() {
    crate::support::ensure_image("busybox");
    let f = fixture("");
    add(&f, "c-failed", Kind::Failed, 1, &[]);
    add(&f, "c-running", Kind::Running, 1, &[]);
    let label = genesis::sandbox::home_label(f.home());
    let containers = Containers(vec![
        labelled_container("c-failed", &label),
        labelled_container("c-running", &label),
        labelled_container("c-unknown", &label),
        labelled_container("c-failed", "another-home"),
    ]);
    let report = f.cleanup(&f.config).await;
    let mut removed = report.containers_removed.clone();
    removed.sort();
    let mut expected = vec![containers.0[0].clone(), containers.0[2].clone()];
    expected.sort();
    assert_eq!(removed, expected, "{report:?}");
    assert!(f.operations("c-failed").contains(&"cleanup".to_string()));
    let left = genesis::sandbox::labelled_containers(
        &genesis::sandbox::connect().await.unwrap(),
        Some(&label),
        None,
    )
    .await
    .unwrap();
    assert_eq!(left, [(containers.0[1].clone(), "c-running".to_string())]);
}

/// Sets a file's or directory's mtime (the budget's "last used").
fn set_mtime(path: &Path, at: DateTime<Utc>) {
    let time = std::time::SystemTime::UNIX_EPOCH
        + std::time::Duration::from_millis(at.timestamp_millis() as u64);
    std::fs::File::open(path)
        .unwrap()
        .set_times(std::fs::FileTimes::new().set_modified(time))
        .unwrap();
}

/// Over the budget, cleanup removes the cheapest losses first: idle
/// snapshot tarballs and layers, then finished sandboxes not yet due, and
/// only then intact archives. Caches used within the grace period,
/// unfinished experiments and records are never removed.
#[tokio::test]
async fn the_disk_budget_removes_caches_and_sandboxes_before_any_archive() {
    let mut f = fixture("");
    let blob = |seed| vec![("candidate/out/blob.bin", noise(3 * MB as usize / 2, seed))];
    add(&f, "old-merge", Kind::Merge, 100, &blob(1));
    assert_eq!(f.cleanup(&f.config).await.archived, ["old-merge"]);

    // From here the clock reads two hours after the files were written.
    f.now = Utc::now() + TimeDelta::hours(2);
    add(&f, "recent-rollback", Kind::Rollback, 2, &blob(2));
    add(&f, "recent-merge", Kind::Merge, 1, &blob(3));
    add(&f, "busy", Kind::Running, 5, &blob(4));
    let snapshots = f.home().join("snapshots");
    let idle_snapshot = snapshots.join(format!("{}-aaaaaaaaaaaa.tar.gz", "e".repeat(40)));
    std::fs::write(&idle_snapshot, noise(3 * MB as usize / 2, 5)).unwrap();
    // The fixture's candidate tarball was used five minutes ago: in grace.
    let fresh_snapshot = snapshots.join(format!("{COMMIT}-0123456789ab.tar.gz"));
    set_mtime(&fresh_snapshot, f.now - TimeDelta::minutes(5));
    let layer = f
        .home()
        .join("layers")
        .join(format!("{COMMIT}-bbbbbbbbbbbb"));
    std::fs::create_dir_all(layer.join("app")).unwrap();
    std::fs::write(layer.join("app/big.bin"), noise(3 * MB as usize / 2, 6)).unwrap();
    set_mtime(&layer, f.now - TimeDelta::hours(1));

    let budget_for = |freed: u64| {
        let left = maintenance::disk_usage_bytes(f.home()) - freed;
        config(
            f.home(),
            &format!("[cleanup]\ndisk_budget_mb = {}\n", left.div_ceil(MB)),
        )
    };
    let size = |p: &Path| maintenance::disk_usage_bytes(p);

    // Step 1: the two idle caches suffice; nothing else is touched.
    let caches = size(&idle_snapshot) + size(&layer);
    let report = f.cleanup(&budget_for(caches)).await;
    assert_eq!(
        report.layers_removed,
        [layer.file_name().unwrap().to_str().unwrap()]
    );
    assert_eq!(report.snapshots_removed.len(), 1, "{report:?}");
    assert!(!idle_snapshot.exists() && !layer.exists());
    assert!(
        fresh_snapshot.exists(),
        "a snapshot used in the grace period went"
    );
    assert!(
        report.deleted.is_empty() && report.archived.is_empty(),
        "{report:?}"
    );
    assert!(report.pruned.is_empty(), "{report:?}");

    // Step 2: deleting the older finished sandbox suffices.
    let report = f
        .cleanup(&budget_for(size(&f.sandbox("recent-rollback"))))
        .await;
    assert_eq!(report.deleted, ["recent-rollback"], "{report:?}");
    assert!(
        report.archived.is_empty() && report.pruned.is_empty(),
        "{report:?}"
    );

    // Step 3: nothing fits: the merged sandbox is archived early, then the
    // intact archive pruned; the running one and the fresh cache stay.
    let report = f
        .cleanup(&config(f.home(), "[cleanup]\ndisk_budget_mb = 0\n"))
        .await;
    assert_eq!(report.archived, ["recent-merge"], "{report:?}");
    assert_eq!(report.pruned, ["old-merge"], "{report:?}");
    assert!(f.sandbox("busy").join("candidate/out/blob.bin").exists());
    assert!(fresh_snapshot.exists());
    assert!(
        report.notes.iter().any(|n| n.contains("still uses")),
        "{report:?}"
    );
    for id in ["old-merge", "recent-rollback", "recent-merge", "busy"] {
        assert!(
            f.store.get(id).unwrap().is_some(),
            "the record of {id} is gone"
        );
    }
}
