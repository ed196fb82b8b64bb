//! Sandbox maintenance: cleanup, archives, integrity checks and tarball export.
//!
//! Design:
//! - **One bundle format.** An export and an archive are the same thing: a
//!   deterministic `.tar.gz` whose members all sit under `ID/` and whose
//!   `ID/MANIFEST` lists the sha256 of every other member. It holds the
//!   sandbox directory (request, patches, result, each run's `test.log` and
//!   `out/` reports) plus `ID/workspace/NAME/`, every repo's candidate tree
//!   as the tests saw it, rebuilt from the mirrors (`workspace.rs`), layered
//!   runs or not. So an archive stays self-contained after layers and
//!   caches are gone, and exporting an archived sandbox is a verified copy
//!   of the archive: the same bytes as exporting it live.
//! - **Deterministic bytes.** Members are sorted by name (directories as
//!   `name/`, so a directory precedes its contents), headers carry uid/gid
//!   0, fixed modes (0644, 0755 when the owner-execute bit is set, 0755 for
//!   directories) and mtime 0, except the workspace's, which keep their
//!   commit's time (what the run saw); gzip is written with a fixed header
//!   (mtime 0, no file name). The same inputs always give the same file.
//! - **Never follow a link.** The sandbox tree is read with `symlink_metadata`
//!   and files are opened `O_NOFOLLOW | O_NONBLOCK`; links on disk are
//!   skipped. Snapshot members are copied from the tar, never through the file
//!   system, except regular files spooled into a private directory this code
//!   creates (so the workspace can be written in sorted order without holding
//!   it in memory); symlinks in a snapshot become symlink entries.
//! - **MANIFEST** lines are `<sha256 hex>  <path>`, paths relative to the
//!   MANIFEST's own directory. A regular file's digest is of its content (so
//!   `cd ID && sha256sum -c MANIFEST` agrees for files); a symlink's is of its
//!   target text, so retargeting one is detected too. Directories carry no
//!   content and are not listed. [`verify_archive`] requires every listed
//!   member to be present and match, and every non-directory member to be
//!   listed; it also rejects unsafe names, other member types, duplicates,
//!   anything after the end of the tar, and a `workspace.json` naming a
//!   repo whose `workspace/NAME/` is not there.
//! - **Trust.** An archive is verified before its sandbox directory is removed
//!   and before it is exported. A corrupt archive is reported (health,
//!   doctor, show) and kept for inspection: cleanup never deletes it.
//! - **Cached verification.** Health runs every few minutes, so archive checks
//!   are cached in-process by (device, inode, size, mtime, ctime). Any write
//!   changes ctime, which user space cannot set back; results are cached only
//!   for files whose ctime is a few seconds old, so a change within the
//!   file system's timestamp granularity is not mistaken for "unchanged"
//!   (git's "racily clean" rule).
//! - **Cleanup** decides from the store, by each record's `updated_at` and the
//!   injected clock: failed and rolled-back sandboxes are deleted after
//!   `delete_after_hours`, merged ones archived after `archive_after_hours`;
//!   queued and running experiments are never touched. Then the oldest
//!   intact archives are pruned while GENESIS_HOME exceeds `disk_budget_mb`,
//!   and containers labelled with this home whose experiment is not running
//!   are removed. A failure in one step or one sandbox does not stop the
//!   others; every operation leaves a `sandbox_history` row.

use std::path::PathBuf;
use std::time::Duration;

use crate::config::Config;

mod bundle;
use bundle::*;
mod bundle_write;
mod workspace;
pub use bundle_write::*;
use workspace::*;
mod verify;
pub use verify::*;
mod sandbox_export;
pub use sandbox_export::*;
mod cleanup;
pub use cleanup::*;

/// Name of the checksum list inside a bundle.
pub const MANIFEST: &str = "MANIFEST";
/// Directory of a bundle holding the candidate snapshot's files.
pub const WORKSPACE: &str = "workspace";

const FILE_MODE: u32 = 0o644;
const EXEC_MODE: u32 = 0o755;
const DIR_MODE: u32 = 0o755;
const LINK_MODE: u32 = 0o777;
const BYTES_PER_MB: u64 = 1024 * 1024;
const MS_PER_HOUR: u64 = 3_600_000;
/// Read buffer for hashing and copying.
const CHUNK: usize = 64 * 1024;
/// Verification results are cached only for files whose ctime is at least
/// this old: timestamps are coarser than the time a rewrite takes.
const SETTLE: Duration = Duration::from_secs(2);
/// How many problems a one-line summary names before "and N more".
const SUMMARY_PROBLEMS: usize = 3;

/// Where the archive of an experiment lives: `GENESIS_HOME/archives/ID.tar.gz`.
pub fn archive_path(config: &Config, id: &str) -> PathBuf {
    config.home.archive(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::fs;

    use std::path::Path;

    use crate::config::CleanupPolicy;

    use crate::store::{ExperimentRecord, Status};

    fn record(status: Status, recommendation: Option<&str>, updated_at: i64) -> ExperimentRecord {
        let request = crate::contract::Request::parse(
            br#"{"experiment_id":"e","instance_id":"i","experiment_type":"t","risk_level":"low","changes":{}}"#,
        )
        .unwrap();
        let mut r = ExperimentRecord::new(&request, status, "h:1", updated_at);
        r.recommendation =
            recommendation.map(|name| crate::contract::Named::from_name(name).expect("a verdict"));
        r
    }

    fn policy() -> CleanupPolicy {
        CleanupPolicy {
            delete_after_hours: 24,
            archive_after_hours: 72,
            disk_budget_mb: 1,
            analysis_days: 30,
            layer_keep_hours: 72,
            budget_grace_minutes: 30,
            min_free_mb: 1024,
        }
    }

    const H: i64 = MS_PER_HOUR as i64;

    #[test]
    fn manifest_round_trips_and_flags_bad_lines() {
        let mut digests = BTreeMap::new();
        digests.insert("result.json".to_owned(), sha256_hex(b"{}"));
        digests.insert("a dir/with  spaces.txt".to_owned(), sha256_hex(b"x"));
        let text = render_manifest(&digests);
        let (parsed, problems) = parse_manifest(&text);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(parsed, digests);

        let bad = format!("{text}nothex  x\n{}  result.json\n", sha256_hex(b"y"));
        let (_, problems) = parse_manifest(&bad);
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn ages_decide_delete_archive_keep() {
        let p = policy();
        let now = 1_000 * H;
        let old = now - 25 * H;
        let young = now - 23 * H;
        let ancient = now - 73 * H;
        let act = |s, r, t| sandbox_action(&record(s, r, t), now, &p);
        assert_eq!(
            act(Status::Failed, Some("rollback"), old),
            SandboxAction::Delete
        );
        assert_eq!(act(Status::Failed, None, young), SandboxAction::Keep);
        assert_eq!(
            act(Status::Completed, Some("rollback"), old),
            SandboxAction::Delete
        );
        assert_eq!(
            act(Status::Completed, Some("merge"), old),
            SandboxAction::Keep
        );
        assert_eq!(
            act(Status::Completed, Some("merge"), ancient),
            SandboxAction::Archive
        );
        assert_eq!(
            act(Status::Completed, Some("merge_with_adaptations"), ancient),
            SandboxAction::Archive
        );
        assert_eq!(act(Status::Running, None, ancient), SandboxAction::Keep);
        assert_eq!(act(Status::Queued, None, ancient), SandboxAction::Keep);
    }

    #[test]
    fn member_names_must_be_plain() {
        assert_eq!(
            snapshot_rel(b"./app/src/x.rs").as_deref(),
            Some("app/src/x.rs")
        );
        assert_eq!(snapshot_rel(b"app/"), Some("app".into()));
        assert_eq!(snapshot_rel(b"app/../etc/passwd"), None);
        assert_eq!(snapshot_rel(b"app/a\nb"), None);
        assert_eq!(
            split_member(b"exp-1/baseline/test.log"),
            Some(("exp-1".into(), "baseline/test.log".into()))
        );
        assert_eq!(
            split_member(b"exp-1/"),
            Some(("exp-1".into(), String::new()))
        );
        assert_eq!(split_member(b"/etc/passwd"), None);
        assert_eq!(split_member(b"exp-1/../x"), None);
    }

    #[test]
    fn a_bundle_verifies_and_is_reproducible() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(src.join("out")).unwrap();
        fs::write(src.join("result.json"), "{}").unwrap();
        fs::write(src.join("out/junit.xml"), "<x/>").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.join("evil")).unwrap();
        let build = |dest: &Path| {
            let mut members = Members::new();
            let mut notes = Vec::new();
            walk_tree(&src, "", &mut members, &mut notes).unwrap();
            assert_eq!(notes, ["skipped symlink evil"]);
            write_bundle("exp-1", members, dest).unwrap()
        };
        let (a, b) = (dir.path().join("a.tar.gz"), dir.path().join("b.tar.gz"));
        let info = build(&a);
        build(&b);
        assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
        assert_eq!(info.listed, 2);
        let report = verify_archive(&a).unwrap();
        assert!(report.is_ok(), "{report:?}");
        assert_eq!(report.experiment_id.as_deref(), Some("exp-1"));
        assert_eq!(report.files_checked, 2);
    }

    #[test]
    fn a_workspace_record_without_its_workspace_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let record = br#"{"repos":[{"repo":"app","base_commit":"a","commit":"b"}]}"#;
        let mut members = Members::new();
        members.insert(
            crate::snapshot::WORKSPACE_RECORD.into(),
            Member {
                name: crate::snapshot::WORKSPACE_RECORD.into(),
                source: Source::Bytes(record.to_vec()),
                mode: FILE_MODE,
                mtime: 0,
            },
        );
        let lacking = dir.path().join("lacking.tar.gz");
        write_bundle("exp-1", members.clone(), &lacking).unwrap();
        let report = verify_archive(&lacking).unwrap();
        assert_eq!(
            report.problems,
            ["workspace.json names repo app but the bundle has no workspace/app/"]
        );

        for name in [WORKSPACE, "workspace/app"] {
            members.insert(name.into(), Member::dir(name.into()));
        }
        let whole = dir.path().join("whole.tar.gz");
        write_bundle("exp-1", members, &whole).unwrap();
        let report = verify_archive(&whole).unwrap();
        assert!(report.is_ok(), "{report:?}");
    }

    #[tokio::test]
    async fn half_written_snapshot_tarballs_are_removed_once_stale() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().to_path_buf();
        let snapshots = crate::home::Home::of(&home).snapshots();
        fs::create_dir_all(&snapshots).unwrap();
        let half = snapshots.join(".0123abcd-0123456789ab.77-0.tmp");
        let whole = snapshots.join("0123abcd-0123456789ab.tar.gz");
        fs::write(&half, "half").unwrap();
        fs::write(&whole, "whole").unwrap();
        let config = std::sync::Arc::new(
            Config::from_layers(home.clone(), None, &crate::config::Env::default()).unwrap(),
        );
        let store = crate::store::Store::open(&config.store_path()).unwrap();
        let soon = chrono::Utc::now() + chrono::Duration::hours(1);
        cleanup(&config, &store, soon).await.unwrap();
        assert!(half.exists(), "removed before delete_after_hours");
        let later = chrono::Utc::now() + chrono::Duration::hours(25);
        cleanup(&config, &store, later).await.unwrap();
        assert!(!half.exists());
        assert!(whole.exists());
    }

    #[test]
    fn trailing_garbage_is_corruption() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("result.json"), "{}").unwrap();
        let mut members = Members::new();
        walk_tree(&src, "", &mut members, &mut Vec::new()).unwrap();
        let path = dir.path().join("a.tar.gz");
        write_bundle("exp-1", members, &path).unwrap();
        let mut bytes = fs::read(&path).unwrap();
        bytes.extend_from_slice(b"junk");
        fs::write(&path, bytes).unwrap();
        let report = verify_archive(&path).unwrap();
        assert!(!report.is_ok());
    }
}
