//! Snapshot layers (`[sandbox] layers`): a run whose workspace is a commit's
//! layer (plus, for a candidate, its delta) sees byte for byte, mode for
//! mode and time for time the tree an uploaded tarball gives; a second
//! experiment on a commit reuses the layer and moves only its delta; the
//! run's writes stay on its own disk.

use std::path::Path;

use genesis::store::Store;

use crate::support::*;

/// Lists the workspace (names, types and modes, sizes, mtimes, owners and
/// contents) into `/genesis/out/listing.txt`, then reports one passing test.
const LISTING_SUITE: &str = r#"find . -path ./.git -prune -o -print | sort | while read -r p; do
  stat -c '%n %F %a %s %Y %u:%g' "$p"
  if [ -f "$p" ] && [ ! -L "$p" ]; then md5sum "$p"; fi
  if [ -L "$p" ]; then echo "-> $(readlink "$p")"; fi
done > /genesis/out/listing.txt
echo scratch > written-by-the-run.txt
echo 1..1
echo ok 1 - listed
"#;

/// `repo` may be `{root}/app` (the home's own) or another home's repo.
fn config(layers: bool, repo: &str) -> String {
    format!(
        r#"
default_repo = "app"
[repos.app]
path = "{repo}"
image = "genesis/busybox:latest"
test_command = "sh run_tests.sh"
report = "tap"
[sandbox]
layers = {layers}
"#
    )
}

/// A repo with every kind of entry a delta has to handle.
fn repo(root: &Path) -> std::path::PathBuf {
    let repo = git_repo(
        &root.join("app"),
        &[
            ("run_tests.sh", LISTING_SUITE),
            ("keep.txt", "kept\n"),
            ("change.txt", "before\n"),
            ("gone.txt", "deleted by the patch\n"),
            ("lonely/only.txt", "its directory goes with it\n"),
            ("becomes_dir", "a file that becomes a directory\n"),
            ("sub/deep/x.txt", "deep\n"),
            ("tool.sh", "#!/bin/sh\necho tool\n"),
        ],
    );
    std::os::unix::fs::symlink("keep.txt", repo.join("link")).unwrap();
    let mut perms = std::fs::metadata(repo.join("tool.sh"))
        .unwrap()
        .permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(repo.join("tool.sh"), perms).unwrap();
    git(&repo, &["add", "-A"]);
    commit_all(&repo, "link and tool");
    repo
}

fn patch(repo: &Path) -> String {
    diff_for(
        repo,
        &[
            ("change.txt", Some("after\n")),
            ("gone.txt", None),
            ("lonely/only.txt", None),
            ("becomes_dir", None),
            ("becomes_dir/inner.txt", Some("now inside\n")),
            ("new/dir/file.txt", Some("brand new\n")),
            ("sub/deep/x.txt", Some("deeper\n")),
        ],
    )
}

const FILES: [&str; 7] = [
    "change.txt",
    "gone.txt",
    "lonely/only.txt",
    "becomes_dir",
    "becomes_dir/inner.txt",
    "new/dir/file.txt",
    "sub/deep/x.txt",
];

fn listing(home: &TestHome, id: &str, role: &str) -> String {
    let path = home
        .home()
        .join("sandboxes")
        .join(id)
        .join(role)
        .join("out/listing.txt");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn run(home: &TestHome, id: &str, patch: &str) -> serde_json::Value {
    let out = home.run_request(&request(id, "low", &FILES, patch));
    let r = result_json(&out);
    assert_eq!(
        r["status"],
        "success",
        "{r}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(r["metrics"]["test_count"], 1, "{r}");
    r
}

#[test]
fn a_layered_run_sees_exactly_the_tree_an_upload_gives() {
    ensure_image("busybox");
    let layered = TestHome::new(&config(true, "{root}/app"));
    let source = repo(layered.root());
    // One repo for both: the same commits, so the same files and times.
    let uploaded = TestHome::new(&config(false, &source.display().to_string()));
    let patch = patch(&source);

    run(&layered, "layered", &patch);
    run(&uploaded, "uploaded", &patch);

    for role in ["baseline", "candidate"] {
        let (l, u) = (
            listing(&layered, "layered", role),
            listing(&uploaded, "uploaded", role),
        );
        assert_eq!(l, u, "{role}: layered and uploaded workspaces differ");
    }
    let candidate = listing(&layered, "layered", "candidate");
    for absent in ["./gone.txt ", "./lonely ", "./becomes_dir regular"] {
        assert!(!candidate.contains(absent), "{absent} in\n{candidate}");
    }
    for present in [
        "./becomes_dir directory 755",
        "./becomes_dir/inner.txt regular file 644",
        "./new/dir/file.txt regular file 644",
        "./tool.sh regular file 755",
        "./link symbolic link",
        "-> keep.txt",
    ] {
        assert!(candidate.contains(present), "{present} not in\n{candidate}");
    }
    // Only the uploaded home packed tarballs; only the layered one has layers.
    assert_eq!(entries(&layered.home().join("snapshots")), 0);
    assert_eq!(entries(&layered.home().join("layers")), 1);
    assert_eq!(entries(&uploaded.home().join("layers")), 0);
    // Every run's disk and overlay are gone, and the layer is untouched.
    assert_eq!(entries(&layered.home().join("scratch")), 0);
    assert!(layered.containers_left().is_empty());
    let layer = only_entry(&layered.home().join("layers")).join("app");
    assert!(!layer.join("written-by-the-run.txt").exists());
    assert_eq!(
        std::fs::read_to_string(layer.join("change.txt")).unwrap(),
        "before\n"
    );
}

#[test]
fn a_second_experiment_on_a_commit_moves_only_its_delta() {
    ensure_image("busybox");
    let home = TestHome::new(&config(true, "{root}/app"));
    let repo = repo(home.root());
    // A tree of a few megabytes the delta must not carry.
    for i in 0..40 {
        std::fs::write(
            repo.join(format!("blob-{i}.bin")),
            vec![b'x' + (i % 3) as u8; 100_000],
        )
        .unwrap();
    }
    git(&repo, &["add", "-A"]);
    commit_all(&repo, "bulk");
    run(&home, "first", &patch(&repo));
    let second = diff_for(&repo, &[("change.txt", Some("second change\n"))]);
    let out = home.run_request(&request("second", "low", &["change.txt"], &second));
    assert_eq!(result_json(&out)["status"], "success");

    let store = Store::open(&home.home().join("genesis.redb")).unwrap();
    let created = |id: &str| -> Vec<_> {
        store
            .history(id)
            .unwrap()
            .into_iter()
            .filter(|h| h.operation == genesis::store::SandboxOperation::Create)
            .collect()
    };
    // The first experiment ran the baseline from the bare layer.
    let baseline = created("first");
    let baseline = baseline
        .iter()
        .find(|h| h.detail.contains("(baseline)"))
        .unwrap();
    assert!(baseline.detail.contains("snapshot layers"), "{baseline:?}");
    assert_eq!(baseline.size_bytes, 0);
    // The second's baseline is cached; its candidate carries one file.
    let second = created("second");
    assert_eq!(second.len(), 1, "{second:?}");
    assert!(second[0].detail.contains("(candidate)"), "{second:?}");
    assert!(second[0].detail.contains("snapshot layers"), "{second:?}");
    assert_eq!(second[0].size_bytes, "second change\n".len() as u64);
    assert_eq!(entries(&home.home().join("layers")), 1);
}

fn entries(dir: &Path) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.flatten().count())
}

fn only_entry(dir: &Path) -> std::path::PathBuf {
    let all: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
    assert_eq!(all.len(), 1);
    all[0].path()
}

#[test]
fn the_cleanup_job_removes_unused_layers_but_never_a_mounted_one() {
    ensure_image("busybox");
    let home = TestHome::new(&config(true, "{root}/app"));
    let repo = repo(home.root());
    run(&home, "only", &patch(&repo));
    let layer = only_entry(&home.home().join("layers"));

    let text = std::fs::read_to_string(&home.config).unwrap();
    let config = std::sync::Arc::new(
        genesis::config::Config::from_layers(
            home.home(),
            Some((home.config.clone(), text)),
            &genesis::config::Env::default(),
        )
        .unwrap(),
    );
    let store = Store::open(&config.store_path()).unwrap();
    let cleanup = |hours_later: i64| {
        let now = chrono::Utc::now() + chrono::Duration::hours(hours_later);
        block_on(genesis::maintenance::cleanup(&config, &store, now)).unwrap()
    };
    // Recently used: kept.
    assert!(cleanup(1).layers_removed.is_empty());
    assert!(layer.exists());

    // Unused past layer_keep_hours (72) but mounted, as by a running run: kept.
    let scratch = tempfile::tempdir().unwrap();
    let (upper, work, merged) = (
        scratch.path().join("upper"),
        scratch.path().join("work"),
        scratch.path().join("merged"),
    );
    for d in [&upper, &work, &merged] {
        std::fs::create_dir(d).unwrap();
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        layer.display(),
        upper.display(),
        work.display()
    );
    let mount = std::process::Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &options])
        .arg(&merged)
        .status()
        .unwrap();
    assert!(mount.success());
    let while_mounted = cleanup(100);
    let unmount = std::process::Command::new("umount")
        .arg(&merged)
        .status()
        .unwrap();
    assert!(unmount.success());
    assert!(while_mounted.layers_removed.is_empty(), "{while_mounted:?}");
    assert!(layer.exists());

    // Unused and unmounted: removed.
    let after = cleanup(100);
    assert_eq!(after.layers_removed.len(), 1, "{after:?}");
    assert!(!layer.exists());
}

/// Lists all of `/workspace` (every repo of the experiment).
/// (`/workspace` itself is left out: it is made for each run, so its time
/// is the run's.)
const WORKSPACE_LISTING: &str = r#"cd /workspace && find . -mindepth 1 -path '*/.git' -prune -o -print | sort | while read -r p; do
  stat -c '%n %F %a %s %Y %u:%g' "$p"
  if [ -f "$p" ] && [ ! -L "$p" ]; then md5sum "$p"; fi
done > /genesis/out/listing.txt
echo 1..1
echo ok 1 - listed
"#;

fn two_repo_config(layers: bool, app: &str, lib: &str) -> String {
    format!(
        r#"
default_repo = "app"
[repos.app]
path = "{app}"
image = "genesis/busybox:latest"
test_command = "sh run_tests.sh"
report = "tap"
[repos.lib]
path = "{lib}"
image = "genesis/busybox:latest"
test_command = "true"
report = "tap"
[sandbox]
layers = {layers}
"#
    )
}

#[test]
fn the_repos_of_a_multi_repo_experiment_are_layered_together() {
    ensure_image("busybox");
    let scratch = tempfile::tempdir().unwrap();
    let app = git_repo(
        &scratch.path().join("app"),
        &[
            ("run_tests.sh", WORKSPACE_LISTING),
            ("a.txt", "app before\n"),
        ],
    );
    let lib = git_repo(
        &scratch.path().join("lib"),
        &[("lib.txt", "lib before\n"), ("old.txt", "goes\n")],
    );
    let (app_path, lib_path) = (app.display().to_string(), lib.display().to_string());
    let app_patch = diff_for(&app, &[("a.txt", Some("app after\n"))]);
    let lib_patch = diff_for(&lib, &[("lib.txt", Some("lib after\n")), ("old.txt", None)]);
    let mut listings = Vec::new();
    for layers in [true, false] {
        let home = TestHome::new(&two_repo_config(layers, &app_path, &lib_path));
        let mut req = request("multi", "low", &["a.txt"], &app_patch);
        req["changes"]["patches"] = serde_json::json!({ "lib": lib_patch });
        let out = home.run_request(&req);
        let r = result_json(&out);
        assert_eq!(r["status"], "success", "layers {layers}: {r}");
        listings.push(listing(&home, "multi", "candidate"));
        assert_eq!(
            entries(&home.home().join("layers")),
            if layers { 2 } else { 0 }
        );
    }
    assert_eq!(listings[0], listings[1], "layered and uploaded differ");
    let candidate = &listings[0];
    assert!(
        candidate.contains("./lib/lib.txt regular file 644 10 "),
        "{candidate}"
    );
    assert!(!candidate.contains("./lib/old.txt"), "{candidate}");
    assert!(
        candidate.contains("./app/a.txt regular file 644 10 "),
        "{candidate}"
    );
}

/// One workspace entry as a tar holds it: (type, mode, mtime, content or
/// link target), by path below `workspace/`.
type TreeListing = std::collections::BTreeMap<String, (char, u32, u64, Vec<u8>)>;

/// The members of a tar (gzip'd or not) below `prefix`, pax headers left out.
fn tar_listing(bytes: &[u8], prefix: &str) -> TreeListing {
    use std::io::Read;
    let reader: Box<dyn Read> = if bytes.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::read::GzDecoder::new(bytes))
    } else {
        Box::new(bytes)
    };
    let mut archive = tar::Archive::new(reader);
    let mut out = TreeListing::new();
    for entry in archive.entries().unwrap() {
        let mut e = entry.unwrap();
        let kind = e.header().entry_type();
        let path = String::from_utf8(e.path_bytes().into_owned()).unwrap();
        let Some(rel) = path.strip_prefix(prefix) else {
            continue;
        };
        let rel = rel.trim_end_matches('/').to_owned();
        if rel.is_empty() || kind.is_pax_global_extensions() {
            continue;
        }
        let (tag, data) = if kind.is_dir() {
            ('d', Vec::new())
        } else if kind.is_symlink() {
            ('l', e.link_name_bytes().unwrap().into_owned())
        } else {
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            ('f', data)
        };
        let mode = e.header().mode().unwrap() & 0o7777;
        out.insert(rel, (tag, mode, e.header().mtime().unwrap(), data));
    }
    out
}

/// What `git archive` makes of each repo's candidate commit (the mirror's
/// `refs/genesis/ID`), with the modes a checkout under umask 022 has.
fn git_archive_of(home: &TestHome, id: &str, repos: &[&str]) -> TreeListing {
    let mut all = TreeListing::new();
    for repo in repos {
        let mirror = home.home().join("mirrors").join(format!("{repo}.git"));
        let out = std::process::Command::new("git")
            .args(["-c", "tar.umask=0022", "archive", "--format=tar"])
            .arg(format!("--prefix={repo}/"))
            .arg(format!("refs/genesis/{id}"))
            .current_dir(&mirror)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        all.extend(tar_listing(&out.stdout, ""));
    }
    all
}

/// Exports `id` with the command line and returns its workspace.
fn exported_workspace(home: &TestHome, id: &str, name: &str) -> (TreeListing, Vec<u8>) {
    let path = home.root().join(name);
    let out = home.run_args(&["sandbox", "export", id, "--output", path.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    let bytes = std::fs::read(&path).unwrap();
    (tar_listing(&bytes, &format!("{id}/workspace/")), bytes)
}

/// The first difference between two listings, said for a person.
fn first_difference(got: &TreeListing, want: &TreeListing) -> Option<String> {
    for (path, entry) in want {
        match got.get(path) {
            None => {
                return Some(format!(
                    "{path} is missing ({} entries instead of {})",
                    got.len(),
                    want.len()
                ))
            }
            Some(g) if g != entry => {
                return Some(format!(
                    "{path}: (type, mode, mtime) {:?} instead of {:?}, content equal: {}",
                    (g.0, format!("{:o}", g.1), g.2),
                    (entry.0, format!("{:o}", entry.1), entry.2),
                    g.3 == entry.3
                ))
            }
            Some(_) => {}
        }
    }
    got.keys()
        .find(|p| !want.contains_key(*p))
        .map(|p| format!("{p} is not in the candidate commit"))
}

#[test]
fn an_export_holds_the_workspace_as_tested_layered_or_not_live_or_archived() {
    ensure_image("busybox");
    let scratch = tempfile::tempdir().unwrap();
    let app = repo(scratch.path());
    let lib = git_repo(
        &scratch.path().join("lib"),
        &[("lib.txt", "lib before\n"), ("old/gone.txt", "goes\n")],
    );
    let (app_path, lib_path) = (app.display().to_string(), lib.display().to_string());
    let app_patch = patch(&app);
    let lib_patch = diff_for(
        &lib,
        &[("lib.txt", Some("lib after\n")), ("old/gone.txt", None)],
    );
    for layers in [true, false] {
        let mut config = two_repo_config(layers, &app_path, &lib_path);
        // Merged experiments are archived by the next cleanup.
        config.push_str("[cleanup]\narchive_after_hours = 0\n");
        let home = TestHome::new(&config);
        run(&home, "single", &app_patch);
        let mut multi = request("multi", "low", &FILES, &app_patch);
        multi["changes"]["patches"] = serde_json::json!({ "lib": lib_patch });
        let r = result_json(&home.run_request(&multi));
        assert_eq!(r["status"], "success", "{r}");

        let cases = [("single", &["app"][..]), ("multi", &["app", "lib"][..])];
        let mut live = Vec::new();
        for (id, repos) in cases {
            let want = git_archive_of(&home, id, repos);
            let (got, bytes) = exported_workspace(&home, id, &format!("{id}-live.tar.gz"));
            if let Some(why) = first_difference(&got, &want) {
                panic!("layers {layers}, {id}, live: the export's workspace differs from git archive: {why}");
            }
            live.push(bytes);
        }
        let cleanup = home.run_args(&["jobs", "run", "cleanup"]);
        assert!(cleanup.status.success(), "{cleanup:?}");
        for ((id, _), live) in cases.iter().zip(live) {
            let archive = home.home().join("archives").join(format!("{id}.tar.gz"));
            assert!(archive.exists(), "layers {layers}: {id} was not archived");
            let (_, bytes) = exported_workspace(&home, id, &format!("{id}-archived.tar.gz"));
            assert!(
                bytes == live,
                "layers {layers}, {id}: the archived export differs from the live one"
            );
            let report = genesis::maintenance::verify_archive(&archive).unwrap();
            assert!(report.is_ok(), "{report:?}");
        }
    }
}
