//! Snapshots: a commit's tree as a deterministic tar.gz, and the candidate
//! tree made by applying the experiment's patch.
//!
//! The source repository is only ever read. Everything that writes git
//! objects (the patched tree, the candidate commit, the `refs/genesis/ID`
//! ref a reviewer fetches) happens in a bare *mirror* under
//! `GENESIS_HOME/mirrors/NAME.git` whose `objects/info/alternates` points at
//! the source's object database: the mirror sees every source object without
//! copying any, and the source never sees the mirror.
//!
//! Tarballs are built by walking the commit's tree (git2 has no archive API),
//! in tree order, with fixed timestamps and the sandbox user's ownership, so
//! the same commit always gives the same bytes. They are cached by commit id;
//! a second experiment on the same commit reuses the file. Symlinks stay
//! symlinks; submodules become empty directories and are listed, not followed.
//!
//! A patch is refused before anything runs when a path is absolute, has a
//! `..` or `.git` component, goes through a symlink, or disagrees with the
//! request's `changes.files`, and when a hunk does not apply (the error names
//! the file and the hunk).

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::sync::Mutex;

use flate2::write::GzEncoder;
use flate2::Compression;
use git2::{ApplyOptions, Diff, ObjectType, Oid, Repository, RepositoryOpenFlags, Tree};

use crate::contract::hex_digest;
use crate::errors::{GenesisError, Result};
use crate::llm_calls::LlmCounter;

/// git's mode for a symbolic link.
const MODE_LINK: i32 = 0o120000;
/// git's mode for an executable file.
const MODE_EXEC: i32 = 0o100755;

/// Serializes mirror creation and ref writes within this process; libgit2
/// handles object writes safely, but two threads initialising one mirror would race.
static MIRROR_LOCK: Mutex<()> = Mutex::new(());

/// Owner of every file in a snapshot: the sandbox user, so tests can write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u64,
    pub gid: u64,
}

impl Owner {
    /// Parses `uid:gid` (the `[sandbox] user` key).
    pub fn parse(text: &str) -> Result<Owner> {
        let bad = || GenesisError::Config {
            file: PathBuf::from("[sandbox] user"),
            message: format!("expected numeric uid:gid, got {text:?}"),
        };
        let (uid, gid) = text.split_once(':').ok_or_else(bad)?;
        Ok(Owner {
            uid: uid.parse().map_err(|_| bad())?,
            gid: gid.parse().map_err(|_| bad())?,
        })
    }
}

/// One tree ready to upload.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeSnapshot {
    pub commit: String,
    /// `GENESIS_HOME/snapshots/...tar.gz`, entries under `NAME/`.
    pub tarball: PathBuf,
    /// Submodule paths, recorded as empty directories.
    pub submodules: Vec<String>,
}

/// Baseline and candidate of one repo of an experiment.
#[derive(Debug, Clone, PartialEq)]
pub struct PreparedRepo {
    pub name: String,
    pub base: TreeSnapshot,
    pub candidate: TreeSnapshot,
    /// Paths the patch touched, sorted.
    pub touched: Vec<String>,
    /// LLM call sites in the base and candidate trees.
    pub llm_before: u64,
    pub llm_after: u64,
}

/// What to snapshot for one repo.
pub struct RepoInput<'a> {
    pub name: &'a str,
    pub source: &'a Path,
    pub base_ref: &'a str,
    pub patch: Option<&'a str>,
    /// `changes.files` when this is the repo it describes.
    pub declared_files: Option<&'a [String]>,
}

/// Turns off libgit2's "repository owned by another user" refusal: genesis
/// only reads source repos, and services often run as a different user
/// from the one that owns the checkout.
pub fn allow_foreign_owners() {
    // SAFETY: sets a process-global libgit2 option; called before any
    // repository is opened and never concurrently with itself.
    unsafe {
        let _ = git2::opts::set_verify_owner_validation(false);
    }
}

/// Snapshots and patches repos inside `GENESIS_HOME`.
#[derive(Debug, Clone)]
pub struct Snapshotter {
    home: PathBuf,
    owner: Owner,
}

impl Snapshotter {
    pub fn new(home: &Path, owner: Owner) -> Self {
        Snapshotter {
            home: home.to_path_buf(),
            owner,
        }
    }

    /// Resolves, patches and packs one repo. Blocking; call from a blocking task.
    pub fn prepare(
        &self,
        input: &RepoInput,
        experiment_id: &str,
        counter: &LlmCounter,
    ) -> Result<PreparedRepo> {
        let source = open_source(input.source)?;
        let base_oid = resolve(&source, input.base_ref, input.source)?;
        let mirror = self.mirror(input.name, &source)?;
        let base_commit = mirror
            .find_commit(base_oid)
            .map_err(|e| GenesisError::git("reading the base commit through the mirror", e))?;
        let base_tree = base_commit
            .tree()
            .map_err(|e| GenesisError::git("reading the base tree", e))?;

        let (candidate_oid, touched) = match input.patch.filter(|p| !p.trim().is_empty()) {
            Some(patch) => {
                let diff = Diff::from_buffer(patch.as_bytes()).map_err(|e| {
                    GenesisError::PatchFailed(format!(
                        "the patch for repo {:?} is not a unified diff: {}",
                        input.name,
                        e.message()
                    ))
                })?;
                for declared in input.declared_files.unwrap_or_default() {
                    check_path_shape(declared)?;
                }
                let touched = checked_paths(&diff, &base_tree, &mirror)?;
                if let Some(declared) = input.declared_files {
                    check_declared(declared, &touched)?;
                }
                let oid = apply(&mirror, &base_commit, &diff, input.name, experiment_id)?;
                (oid, touched)
            }
            None => {
                if let Some(declared) = input.declared_files.filter(|d| !d.is_empty()) {
                    return Err(GenesisError::InvalidRequest(format!(
                        "changes.files lists {} but the request has no patch",
                        declared.join(", ")
                    )));
                }
                (base_oid, Vec::new())
            }
        };
        let candidate_tree = mirror
            .find_commit(candidate_oid)
            .and_then(|c| c.tree())
            .map_err(|e| GenesisError::git("reading the candidate tree", e))?;
        check_candidate_symlinks(&mirror, &candidate_tree, &touched)?;

        let llm_before = count_llm(&mirror, &base_tree, counter)?;
        let llm_after = llm_before - count_paths(&mirror, &base_tree, &touched, counter)
            + count_paths(&mirror, &candidate_tree, &touched, counter);

        Ok(PreparedRepo {
            name: input.name.to_owned(),
            base: self.pack(&mirror, input.name, base_oid)?,
            candidate: self.pack(&mirror, input.name, candidate_oid)?,
            touched,
            llm_before,
            llm_after,
        })
    }

    /// Opens (creating if needed) the bare mirror that borrows the source's objects.
    fn mirror(&self, name: &str, source: &Repository) -> Result<Repository> {
        let _guard = MIRROR_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.home.join("mirrors").join(format!("{name}.git"));
        let mirror = if path.join("HEAD").exists() {
            Repository::open_bare(&path)
        } else {
            Repository::init_bare(&path)
        }
        .map_err(|e| GenesisError::git(format!("opening mirror {}", path.display()), e))?;
        let objects = source.path().join("objects");
        let alternates = path.join("objects/info/alternates");
        let wanted = format!("{}\n", objects.display());
        if fs::read_to_string(&alternates).ok().as_deref() != Some(wanted.as_str()) {
            fs::create_dir_all(path.join("objects/info"))
                .map_err(|e| GenesisError::io("creating the mirror's objects/info", e))?;
            fs::write(&alternates, wanted)
                .map_err(|e| GenesisError::io("writing the mirror's alternates", e))?;
            // Reopen so libgit2 picks up the alternates file.
            return Repository::open_bare(&path)
                .map_err(|e| GenesisError::git(format!("reopening mirror {}", path.display()), e));
        }
        Ok(mirror)
    }

    /// Writes (once) the tarball of a commit's tree and returns it.
    fn pack(&self, repo: &Repository, name: &str, commit: Oid) -> Result<TreeSnapshot> {
        let dir = self.home.join("snapshots");
        fs::create_dir_all(&dir).map_err(|e| GenesisError::io("creating snapshots dir", e))?;
        // The name goes into the tar's paths and the owner into its headers,
        // so both are part of the cache key.
        let key = hex_digest(&<sha2::Sha256 as sha2::Digest>::digest(
            format!("{name}\0{}\0{}", self.owner.uid, self.owner.gid).as_bytes(),
        ));
        let tarball = dir.join(format!("{commit}-{}.tar.gz", &key[..12]));
        let commit_obj = repo
            .find_commit(commit)
            .map_err(|e| GenesisError::git("reading commit to pack", e))?;
        let tree = commit_obj
            .tree()
            .map_err(|e| GenesisError::git("reading tree to pack", e))?;
        let mut submodules = Vec::new();
        collect_submodules(&tree, "", &mut submodules, repo)?;
        if !tarball.exists() {
            // Unique per writer: two experiments of one process (or two
            // processes sharing a home) may pack the same commit at once;
            // each writes its own file and the last rename wins harmlessly.
            static WRITERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let writer = WRITERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let tmp = dir.join(format!(
                ".{commit}-{}.{}-{writer}.tmp",
                &key[..12],
                std::process::id()
            ));
            let mtime = u64::try_from(commit_obj.time().seconds()).unwrap_or(0);
            write_tarball(repo, &tree, name, self.owner, mtime, &tmp)?;
            fs::rename(&tmp, &tarball)
                .map_err(|e| GenesisError::io("moving snapshot into the cache", e))?;
        }
        Ok(TreeSnapshot {
            commit: commit.to_string(),
            tarball,
            submodules,
        })
    }
}

fn open_source(path: &Path) -> Result<Repository> {
    Repository::open_ext(
        path,
        RepositoryOpenFlags::NO_SEARCH,
        std::iter::empty::<&str>(),
    )
    .map_err(|e| {
        GenesisError::InvalidRequest(format!(
            "{} is not a git repository genesis can read: {}",
            path.display(),
            e.message()
        ))
    })
}

fn resolve(repo: &Repository, base_ref: &str, path: &Path) -> Result<Oid> {
    repo.revparse_single(base_ref)
        .and_then(|o| o.peel_to_commit())
        .map(|c| c.id())
        .map_err(|e| {
            GenesisError::InvalidRequest(format!(
                "base_ref {base_ref:?} does not name a commit in {}: {}",
                path.display(),
                e.message()
            ))
        })
}

/// Every path the diff touches, checked to stay inside the repo.
fn checked_paths(diff: &Diff, base: &Tree, repo: &Repository) -> Result<Vec<String>> {
    let mut touched = BTreeSet::new();
    for delta in diff.deltas() {
        for file in [delta.old_file(), delta.new_file()] {
            let Some(raw) = file.path_bytes() else {
                continue;
            };
            let path = std::str::from_utf8(raw).map_err(|_| {
                GenesisError::PatchFailed(format!(
                    "patch path {} is not UTF-8",
                    String::from_utf8_lossy(raw)
                ))
            })?;
            if path == "/dev/null" {
                continue;
            }
            check_path_shape(path)?;
            check_no_symlink_prefix(path, base, repo)?;
            touched.insert(path.to_owned());
        }
    }
    if touched.is_empty() {
        return Err(GenesisError::PatchFailed(
            "the patch touches no files".into(),
        ));
    }
    Ok(touched.into_iter().collect())
}

/// A path must be relative, plain, and outside `.git`.
pub fn check_path_shape(path: &str) -> Result<()> {
    let refuse = |why: &str| {
        Err(GenesisError::PatchFailed(format!(
            "patch path {path:?} {why}; refusing the whole change"
        )))
    };
    if path.is_empty() || path.starts_with('/') || path.contains('\\') || path.contains('\0') {
        return refuse("is absolute or malformed");
    }
    for component in Path::new(path).components() {
        match component {
            Component::Normal(c) if c == ".git" => return refuse("is inside .git"),
            Component::Normal(_) => {}
            _ => return refuse("leaves the repository (.. or absolute)"),
        }
    }
    if path.split('/').any(|c| c == "." || c.is_empty()) {
        return refuse("has an empty or '.' component");
    }
    Ok(())
}

/// Refuses a path whose parent directories include a symlink in the base
/// tree: writing through it could land anywhere.
fn check_no_symlink_prefix(path: &str, base: &Tree, _repo: &Repository) -> Result<()> {
    let parts: Vec<&str> = path.split('/').collect();
    for end in 1..parts.len() {
        let prefix = parts[..end].join("/");
        if let Ok(entry) = base.get_path(Path::new(&prefix)) {
            if entry.filemode() == MODE_LINK {
                return Err(GenesisError::PatchFailed(format!(
                    "patch path {path:?} goes through the symlink {prefix:?}; refusing the whole change"
                )));
            }
        }
    }
    Ok(())
}

/// Symlinks the patch creates must point inside the repo.
fn check_candidate_symlinks(repo: &Repository, tree: &Tree, touched: &[String]) -> Result<()> {
    for path in touched {
        let Ok(entry) = tree.get_path(Path::new(path)) else {
            continue;
        };
        if entry.filemode() != MODE_LINK {
            continue;
        }
        let blob = repo
            .find_blob(entry.id())
            .map_err(|e| GenesisError::git("reading a symlink target", e))?;
        let target = String::from_utf8_lossy(blob.content()).into_owned();
        if !symlink_stays_inside(path, &target) {
            return Err(GenesisError::PatchFailed(format!(
                "patch makes {path:?} a symlink to {target:?}, which leaves the repository"
            )));
        }
    }
    Ok(())
}

/// Whether `target`, read relative to the directory of `link`, stays within the repo root.
pub fn symlink_stays_inside(link: &str, target: &str) -> bool {
    if target.starts_with('/') {
        return false;
    }
    let mut depth: i64 = link.split('/').count() as i64 - 1;
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => depth += 1,
        }
    }
    true
}

fn check_declared(declared: &[String], touched: &[String]) -> Result<()> {
    let declared: BTreeSet<&str> = declared.iter().map(String::as_str).collect();
    let touched: BTreeSet<&str> = touched.iter().map(String::as_str).collect();
    if declared == touched {
        return Ok(());
    }
    let missing: Vec<_> = touched.difference(&declared).copied().collect();
    let extra: Vec<_> = declared.difference(&touched).copied().collect();
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!(
            "the patch touches {} which changes.files does not list",
            missing.join(", ")
        ));
    }
    if !extra.is_empty() {
        parts.push(format!(
            "changes.files lists {} which the patch does not touch",
            extra.join(", ")
        ));
    }
    Err(GenesisError::InvalidRequest(format!(
        "changes.files disagrees with the patch: {}",
        parts.join("; ")
    )))
}

/// Applies the diff to the base tree in the mirror and records the result as
/// a commit under `refs/genesis/ID`. The commit's author and time are fixed
/// (taken from the base), so the same patch on the same base gives the same
/// candidate commit, and so the same cached tarball.
fn apply(
    mirror: &Repository,
    base: &git2::Commit,
    diff: &Diff,
    repo_name: &str,
    experiment_id: &str,
) -> Result<Oid> {
    let base_tree = base
        .tree()
        .map_err(|e| GenesisError::git("reading base tree", e))?;
    let current_file = RefCell::new(String::new());
    let current_hunk = RefCell::new(String::new());
    let mut opts = ApplyOptions::new();
    opts.delta_callback(|delta| {
        if let Some(d) = delta {
            let path = d.new_file().path().or(d.old_file().path());
            *current_file.borrow_mut() = path.map(|p| p.display().to_string()).unwrap_or_default();
            current_hunk.borrow_mut().clear();
        }
        true
    });
    opts.hunk_callback(|hunk| {
        if let Some(h) = hunk {
            *current_hunk.borrow_mut() = String::from_utf8_lossy(h.header()).trim().to_owned();
        }
        true
    });
    let index = mirror.apply_to_tree(&base_tree, diff, Some(&mut opts));
    drop(opts);
    let mut index = index.map_err(|e| {
        let file = current_file.borrow();
        let hunk = current_hunk.borrow();
        let hunk = if hunk.is_empty() {
            "(file header)".to_owned()
        } else {
            hunk.clone()
        };
        GenesisError::PatchFailed(format!(
            "the patch does not apply to {repo_name}: file {file}, hunk {hunk}: {}",
            e.message()
        ))
    })?;
    let tree_oid = index
        .write_tree_to(mirror)
        .map_err(|e| GenesisError::git("writing the candidate tree", e))?;
    let tree = mirror
        .find_tree(tree_oid)
        .map_err(|e| GenesisError::git("reading the candidate tree", e))?;
    let when = base.time();
    let sig = git2::Signature::new(
        "genesis",
        "genesis@localhost",
        &git2::Time::new(when.seconds(), when.offset_minutes()),
    )
    .map_err(|e| GenesisError::git("making the candidate signature", e))?;
    let oid = mirror
        .commit(
            None,
            &sig,
            &sig,
            // No experiment id here: the same change on the same base is the
            // same commit, so its tarball is reused. The ref names the experiment.
            &format!("genesis candidate on {}", base.id()),
            &tree,
            &[base],
        )
        .map_err(|e| GenesisError::git("writing the candidate commit", e))?;
    let _guard = MIRROR_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    mirror
        .reference(
            &format!("refs/genesis/{experiment_id}"),
            oid,
            true,
            "genesis candidate",
        )
        .map_err(|e| GenesisError::git("writing refs/genesis ref", e))?;
    Ok(oid)
}

fn collect_submodules(
    tree: &Tree,
    prefix: &str,
    out: &mut Vec<String>,
    repo: &Repository,
) -> Result<()> {
    for entry in tree.iter() {
        let name = String::from_utf8_lossy(entry.name_bytes());
        let path = format!("{prefix}{name}");
        match entry.kind() {
            Some(ObjectType::Commit) => out.push(path),
            Some(ObjectType::Tree) => {
                let sub = repo
                    .find_tree(entry.id())
                    .map_err(|e| GenesisError::git("reading a subtree", e))?;
                collect_submodules(&sub, &format!("{path}/"), out, repo)?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Writes the tree as `NAME/...` entries into a gzip'd tar at `dest`.
fn write_tarball(
    repo: &Repository,
    tree: &Tree,
    name: &str,
    owner: Owner,
    mtime: u64,
    dest: &Path,
) -> Result<()> {
    let file = fs::File::create(dest)
        .map_err(|e| GenesisError::io(format!("creating {}", dest.display()), e))?;
    let gz = GzEncoder::new(std::io::BufWriter::new(file), Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let packer = Packer { repo, owner, mtime };
    packer.dir(&mut tar, name)?;
    packer.tree(&mut tar, tree, name)?;
    let gz = tar
        .into_inner()
        .map_err(|e| GenesisError::io("finishing snapshot tar", e))?;
    let mut buf = gz
        .finish()
        .map_err(|e| GenesisError::io("finishing snapshot gzip", e))?;
    buf.flush()
        .map_err(|e| GenesisError::io("writing snapshot", e))?;
    buf.get_ref()
        .sync_all()
        .map_err(|e| GenesisError::io("syncing snapshot", e))
}

struct Packer<'r> {
    repo: &'r Repository,
    owner: Owner,
    mtime: u64,
}

type TarOut = tar::Builder<GzEncoder<std::io::BufWriter<fs::File>>>;

impl Packer<'_> {
    fn header(&self, kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(self.owner.uid);
        h.set_gid(self.owner.gid);
        h.set_mtime(self.mtime);
        h
    }

    fn dir(&self, tar: &mut TarOut, path: &str) -> Result<()> {
        let mut h = self.header(tar::EntryType::Directory, 0o755, 0);
        tar.append_data(&mut h, format!("{path}/"), std::io::empty())
            .map_err(|e| GenesisError::io("adding a directory to the snapshot", e))
    }

    fn tree(&self, tar: &mut TarOut, tree: &Tree, prefix: &str) -> Result<()> {
        for entry in tree.iter() {
            let name = String::from_utf8_lossy(entry.name_bytes());
            let path = format!("{prefix}/{name}");
            match entry.kind() {
                Some(ObjectType::Tree) => {
                    self.dir(tar, &path)?;
                    let sub = self
                        .repo
                        .find_tree(entry.id())
                        .map_err(|e| GenesisError::git("reading a subtree", e))?;
                    self.tree(tar, &sub, &path)?;
                }
                Some(ObjectType::Blob) => self.blob(tar, &path, entry.id(), entry.filemode())?,
                // A submodule: an empty directory, as a checkout without `submodule update`.
                Some(ObjectType::Commit) => self.dir(tar, &path)?,
                _ => {}
            }
        }
        Ok(())
    }

    fn blob(&self, tar: &mut TarOut, path: &str, id: Oid, mode: i32) -> Result<()> {
        let blob = self
            .repo
            .find_blob(id)
            .map_err(|e| GenesisError::git(format!("reading blob for {path}"), e))?;
        let content = blob.content();
        let result = if mode == MODE_LINK {
            let mut h = self.header(tar::EntryType::Symlink, 0o777, 0);
            let target = String::from_utf8_lossy(content).into_owned();
            tar.append_link(&mut h, path, target)
        } else {
            let perm = if mode == MODE_EXEC { 0o755 } else { 0o644 };
            let mut h = self.header(tar::EntryType::Regular, perm, content.len() as u64);
            tar.append_data(&mut h, path, content)
        };
        result.map_err(|e| GenesisError::io(format!("adding {path} to the snapshot"), e))
    }
}

/// LLM call sites in a whole tree.
fn count_llm(repo: &Repository, tree: &Tree, counter: &LlmCounter) -> Result<u64> {
    let mut total = 0u64;
    let mut failure = None;
    tree.walk(git2::TreeWalkMode::PreOrder, |dir, entry| {
        if entry.kind() != Some(ObjectType::Blob) || entry.filemode() == MODE_LINK {
            return git2::TreeWalkResult::Ok;
        }
        let path = format!("{dir}{}", String::from_utf8_lossy(entry.name_bytes()));
        match count_blob(repo, &path, entry.id(), counter) {
            Ok(n) => total += n,
            Err(e) => {
                failure = Some(e);
                return git2::TreeWalkResult::Abort;
            }
        }
        git2::TreeWalkResult::Ok
    })
    .ok();
    match failure {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

/// LLM call sites in some paths of a tree (missing paths count 0).
fn count_paths(repo: &Repository, tree: &Tree, paths: &[String], counter: &LlmCounter) -> u64 {
    paths
        .iter()
        .filter_map(|p| tree.get_path(Path::new(p)).ok().map(|e| (p, e)))
        .filter(|(_, e)| e.kind() == Some(ObjectType::Blob) && e.filemode() != MODE_LINK)
        .map(|(p, e)| count_blob(repo, p, e.id(), counter).unwrap_or(0))
        .sum()
}

fn count_blob(repo: &Repository, path: &str, id: Oid, counter: &LlmCounter) -> Result<u64> {
    let blob = repo
        .find_blob(id)
        .map_err(|e| GenesisError::git(format!("reading {path}"), e))?;
    let Ok(text) = std::str::from_utf8(blob.content()) else {
        return Ok(0);
    };
    Ok(counter.count_file(path, text).unwrap_or(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_shapes() {
        assert!(check_path_shape("src/lib.rs").is_ok());
        for bad in [
            "/etc/passwd",
            "../x",
            "a/../../b",
            ".git/config",
            "a//b",
            "./a",
            "",
        ] {
            assert!(check_path_shape(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn symlink_targets() {
        assert!(symlink_stays_inside("a/link", "../b"));
        assert!(symlink_stays_inside("link", "b/c"));
        assert!(!symlink_stays_inside("link", "../b"));
        assert!(!symlink_stays_inside("a/link", "../../b"));
        assert!(!symlink_stays_inside("a/link", "/etc"));
    }

    #[test]
    fn declared_files_must_match() {
        let t = vec!["a".to_string(), "b".to_string()];
        assert!(check_declared(&t, &t).is_ok());
        let err = check_declared(&["a".into(), "c".into()], &t)
            .unwrap_err()
            .to_string();
        assert!(err.contains("b") && err.contains("c"), "{err}");
    }

    #[test]
    fn owner_parses() {
        assert_eq!(Owner::parse("10:20").unwrap(), Owner { uid: 10, gid: 20 });
        assert!(Owner::parse("genesis").is_err());
    }
}
