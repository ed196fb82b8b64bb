//! What a snapshot tells the later stages about a tree, read from git
//! objects without unpacking anything:
//! - the files that key the repo's environment (`install_inputs`), as
//!   (path, blob id) pairs: a blob id is the hash of the file's contents,
//!   so equal pairs mean equal contents;
//! - the test framework a repo without a configured `test_command` uses,
//!   from the files at its top level, and those files (names, manifests'
//!   texts) for a framework peer to judge;
//! - the contents before and after of the files a patch touches, for the
//!   analysis (LLM call sites, complexity) of the change.

use std::path::Path;

use git2::{ObjectType, Repository, Tree, TreeWalkMode, TreeWalkResult};

use crate::config::globs::InputGlobs;
use crate::contract::{DetectedBy, FrameworkRef};
use crate::errors::{GenesisError, Result};

/// Files of `tree` matching `globs`, as sorted (path, blob id) pairs.
pub fn matching_blobs(tree: &Tree, globs: &InputGlobs) -> Result<Vec<(String, String)>> {
    let mut found = Vec::new();
    if globs.is_empty() {
        return Ok(found);
    }
    tree.walk(TreeWalkMode::PreOrder, |dir, entry| {
        if entry.kind() == Some(ObjectType::Blob) {
            let path = format!("{dir}{}", String::from_utf8_lossy(entry.name_bytes()));
            if globs.matches(&path) {
                found.push((path, entry.id().to_string()));
            }
        }
        TreeWalkResult::Ok
    })
    .map_err(|e| GenesisError::git("listing the environment's input files", e))?;
    found.sort();
    Ok(found)
}

/// The suite a repo's top-level files imply, first match wins: `mix.exs`
/// (ExUnit), `Cargo.toml` (libtest), `package.json` with a real `test`
/// script, then the Python markers (pytest with a JUnit file).
pub fn detect_framework(repo: &Repository, tree: &Tree) -> Option<FrameworkRef> {
    let has = |name: &str| tree.get_name(name).is_some();
    let detected = |name: &str, test_command: &str, report: &str| FrameworkRef {
        name: name.into(),
        test_command: test_command.into(),
        report: report.into(),
        detected: true,
        detected_by: DetectedBy::Local,
    };
    if has("mix.exs") {
        return Some(detected("mix", "mix test --trace", "exunit"));
    }
    if has("Cargo.toml") {
        // stderr (cargo's `Running TARGET` lines) joins stdout at the source, so
        // the order that names each test's target survives the two pipes.
        return Some(detected("cargo", "cargo test --offline 2>&1", "libtest"));
    }
    if has("package.json") && package_has_test_script(repo, tree) {
        return Some(detected("npm", "npm test", "auto"));
    }
    let python = [
        "pyproject.toml",
        "setup.cfg",
        "setup.py",
        "pytest.ini",
        "tox.ini",
    ];
    let has_tests_dir = tree
        .get_name("tests")
        .is_some_and(|e| e.kind() == Some(ObjectType::Tree));
    if python.iter().any(|f| has(f)) || has_tests_dir {
        return Some(detected(
            "pytest",
            "python3 -m pytest -q --junitxml=/genesis/out/junit.xml",
            "junit:/genesis/out/junit.xml",
        ));
    }
    None
}

/// Top-level files whose text says how a repo is built and tested: what a
/// framework peer is sent besides the names (see [`top_level`]).
pub const MANIFESTS: &[&str] = &[
    "Cargo.toml",
    "package.json",
    "mix.exs",
    "pyproject.toml",
    "setup.cfg",
    "setup.py",
    "pytest.ini",
    "tox.ini",
    "requirements.txt",
    "go.mod",
    "Gemfile",
    "pom.xml",
    "build.gradle",
    "Makefile",
];

/// The names at the top level of `tree` (sorted), and the text of each
/// [`MANIFESTS`] file among them of at most `cap_bytes`.
pub fn top_level(
    repo: &Repository,
    tree: &Tree,
    cap_bytes: u64,
) -> (Vec<String>, std::collections::BTreeMap<String, String>) {
    let mut names: Vec<String> = tree
        .iter()
        .map(|e| String::from_utf8_lossy(e.name_bytes()).into_owned())
        .collect();
    names.sort();
    let manifests = MANIFESTS
        .iter()
        .filter_map(|name| Some((name.to_string(), blob_text(repo, tree, name, cap_bytes)?)))
        .collect();
    (names, manifests)
}

/// npm's placeholder script ("no test specified") is not a test suite.
fn package_has_test_script(repo: &Repository, tree: &Tree) -> bool {
    let Some(blob) = tree
        .get_name("package.json")
        .and_then(|e| e.to_object(repo).ok())
        .and_then(|o| o.into_blob().ok())
    else {
        return false;
    };
    #[derive(serde::Deserialize)]
    struct Package {
        #[serde(default)]
        scripts: std::collections::BTreeMap<String, String>,
    }
    serde_json::from_slice::<Package>(blob.content())
        .ok()
        .and_then(|p| p.scripts.get("test").cloned())
        .is_some_and(|script| !script.contains("no test specified"))
}

/// One file a patch touched: its text before and after (None when absent
/// on that side, a symlink, not UTF-8, or over the size cap).
#[derive(Debug, Clone, PartialEq)]
pub struct TouchedSource {
    pub path: String,
    pub before: Option<String>,
    pub after: Option<String>,
}

/// The texts of `paths` in the base and candidate trees.
pub fn touched_sources(
    repo: &Repository,
    base: &Tree,
    candidate: &Tree,
    paths: &[String],
    cap_bytes: u64,
) -> Vec<TouchedSource> {
    paths
        .iter()
        .map(|path| TouchedSource {
            path: path.clone(),
            before: blob_text(repo, base, path, cap_bytes),
            after: blob_text(repo, candidate, path, cap_bytes),
        })
        .collect()
}

pub(super) fn blob_text(
    repo: &Repository,
    tree: &Tree,
    path: &str,
    cap_bytes: u64,
) -> Option<String> {
    let entry = tree.get_path(Path::new(path)).ok()?;
    // Regular files only (mode 100644/100755): a symlink's blob is its target.
    if entry.kind() != Some(ObjectType::Blob) || entry.filemode() == 0o120000 {
        return None;
    }
    let blob = repo.find_blob(entry.id()).ok()?;
    if blob.size() as u64 > cap_bytes {
        return None;
    }
    String::from_utf8(blob.content().to_vec()).ok()
}
