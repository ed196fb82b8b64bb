//! Snapshots on real git repositories: deterministic, cached by commit,
//! symlinks kept, submodules recorded and not followed, candidate commits
//! reproducible, and the source repository never written.

use genesis::snapshot::{Owner, RepoInput, Snapshotter, TouchedSource};

use crate::support::*;

fn entries(tarball: &std::path::Path) -> Vec<(String, tar::EntryType, Option<String>)> {
    let file = std::fs::File::open(tarball).unwrap();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let link = e.link_name().unwrap().map(|l| l.display().to_string());
            (
                e.path().unwrap().display().to_string(),
                e.header().entry_type(),
                link,
            )
        })
        .collect()
}

#[test]
fn snapshots_are_deterministic_cached_and_keep_links() {
    let dir = tempfile::tempdir().unwrap();
    let repo = git_repo(
        &dir.path().join("src-repo"),
        &[("a.py", "llm.complete('x')\n"), ("sub/b.txt", "b\n")],
    );
    std::os::unix::fs::symlink("sub/b.txt", repo.join("link")).unwrap();
    // A submodule entry (gitlink) pointing at some commit.
    let head = git(&repo, &["rev-parse", "HEAD"]);
    git(
        &repo,
        &[
            "update-index",
            "--add",
            "--cacheinfo",
            &format!("160000,{},vendored", head.trim()),
        ],
    );
    git(&repo, &["add", "link"]);
    commit_all(&repo, "more");
    let before = tree_digest(&repo);

    let home = dir.path().join("home");
    let snap = Snapshotter::new(
        &home,
        Owner {
            uid: 10001,
            gid: 10001,
        },
    );
    let patch = diff_for(&repo, &[("a.py", Some("print('no model')\n"))]);
    let files = vec!["a.py".to_string()];
    let input = RepoInput {
        name: "app",
        source: &repo,
        base_ref: "HEAD",
        patch: Some(&patch),
        declared_files: Some(&files),
        install_inputs: None,
        analysis_cap_bytes: 1 << 20,
        layered: false,
        patch_mb: 64,
        risk_level: genesis::contract::RiskLevel::High,
    };
    let first = snap.prepare(&input, "exp-1").unwrap();
    let bytes = std::fs::read(first.base.tarball.as_ref().unwrap()).unwrap();
    // A rewrite renames a new file into place (a new inode); a reuse only
    // refreshes the mtime (the disk budget's "last used").
    let inode = |path: &std::path::Path| {
        std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(path).unwrap())
    };
    let written = inode(first.base.tarball.as_ref().unwrap());
    let second = snap.prepare(&input, "exp-2").unwrap();
    assert_eq!(first.base, second.base);
    assert_eq!(
        first.candidate.commit, second.candidate.commit,
        "same patch, same base: same candidate"
    );
    assert_eq!(
        inode(second.base.tarball.as_ref().unwrap()),
        written,
        "cache reused"
    );
    assert_eq!(
        std::fs::read(second.base.tarball.as_ref().unwrap()).unwrap(),
        bytes
    );

    let listed = entries(first.base.tarball.as_ref().unwrap());
    let find = |p: &str| {
        listed
            .iter()
            .find(|(path, _, _)| path.trim_end_matches('/') == p)
            .cloned()
    };
    let (_, kind, target) = find("app/link").expect("symlink present");
    assert_eq!(kind, tar::EntryType::Symlink);
    assert_eq!(target.as_deref(), Some("sub/b.txt"));
    assert_eq!(
        find("app/vendored").expect("submodule dir").1,
        tar::EntryType::Directory
    );
    assert_eq!(first.base.submodules, ["vendored"]);
    assert!(
        !listed
            .iter()
            .any(|(p, _, _)| p.starts_with("app/vendored/") && p != "app/vendored/"),
        "submodule not followed"
    );
    assert_eq!(
        first.sources,
        [TouchedSource {
            path: "a.py".into(),
            before: Some("llm.complete('x')\n".into()),
            after: Some("print('no model')\n".into()),
        }]
    );
    assert_eq!(first.touched, ["a.py"]);
    assert_eq!(before, tree_digest(&repo), "the source repository changed");
}

#[test]
fn a_missing_ref_or_repo_is_an_invalid_request() {
    let dir = tempfile::tempdir().unwrap();
    let repo = git_repo(&dir.path().join("r"), &[("a", "a\n")]);
    let snap = Snapshotter::new(&dir.path().join("home"), Owner { uid: 1, gid: 1 });
    let mut input = RepoInput {
        name: "r",
        source: &repo,
        base_ref: "no-such-branch",
        patch: None,
        declared_files: None,
        install_inputs: None,
        analysis_cap_bytes: 1 << 20,
        layered: false,
        patch_mb: 64,
        risk_level: genesis::contract::RiskLevel::High,
    };
    let err = snap.prepare(&input, "e").unwrap_err();
    assert_eq!(err.kind(), genesis::contract::ErrorKind::InvalidRequest);
    assert!(err.to_string().contains("no-such-branch"));
    let not_a_repo = dir.path().join("plain");
    std::fs::create_dir_all(&not_a_repo).unwrap();
    input.source = &not_a_repo;
    input.base_ref = "HEAD";
    assert_eq!(
        snap.prepare(&input, "e").unwrap_err().kind(),
        genesis::contract::ErrorKind::InvalidRequest
    );
}
