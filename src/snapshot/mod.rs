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

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use git2::{ObjectType, Oid, Repository, RepositoryOpenFlags, Tree};

use crate::config::globs::InputGlobs;
use crate::contract::hex_digest;
use crate::errors::{GenesisError, Result};

mod checks;
pub use checks::*;
mod patch_size;
pub use patch_size::check_patch_size;
mod inputs;
pub use inputs::*;
mod pack;
use pack::*;
mod candidate;
use candidate::candidate_commit;
mod layer;
pub use layer::{DeltaContent, DeltaEntry, TreeDelta};
mod record;
pub use record::{RecordedRepo, WorkspaceRecord, WORKSPACE_RECORD};

/// git's mode for a symbolic link.
const MODE_LINK: i32 = 0o120000;
/// git's mode for an executable file.
const MODE_EXEC: i32 = 0o100755;

/// Serializes mirror creation and ref writes within this process; libgit2
/// handles object writes safely, but two threads initialising one mirror would race.
static MIRROR_LOCK: Mutex<()> = Mutex::new(());

/// The sandbox user, parsed with the config (`[sandbox] user`).
pub use crate::config::Owner;

/// One tree, in the form its runs take it: a tarball to upload, a layer
/// to mount (see `layer.rs`), or neither (a layered candidate, which is its
/// base's layer plus [`PreparedRepo::delta`]).
#[derive(Debug, Clone, PartialEq)]
pub struct TreeSnapshot {
    pub commit: String,
    /// `GENESIS_HOME/snapshots/...tar.gz`, entries under `NAME/`.
    pub tarball: Option<PathBuf>,
    /// `GENESIS_HOME/layers/COMMIT-KEY`, holding `NAME/`.
    pub layer: Option<PathBuf>,
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
    /// The touched files' texts before and after, for the analysis.
    pub sources: Vec<TouchedSource>,
    /// `install_inputs` files of the base and candidate trees, as sorted
    /// (path, blob id) pairs; empty without an environment.
    pub base_inputs: Vec<(String, String)>,
    pub candidate_inputs: Vec<(String, String)>,
    /// The framework the base tree implies (used when no test command is configured).
    pub framework: Option<crate::contract::FrameworkRef>,
    /// Layered: what the candidate changes in the base's layer.
    pub delta: Option<TreeDelta>,
}

/// What to snapshot for one repo.
pub struct RepoInput<'a> {
    pub name: &'a str,
    pub source: &'a Path,
    pub base_ref: &'a str,
    pub patch: Option<&'a str>,
    /// `changes.files` when this is the repo it describes.
    pub declared_files: Option<&'a [String]>,
    /// The repo's `install_inputs`, when it has an environment.
    pub install_inputs: Option<&'a InputGlobs>,
    /// Touched files larger than this are left out of the analysis.
    pub analysis_cap_bytes: u64,
    /// Runs mount the base as a layer and apply the candidate as a delta,
    /// instead of uploading tarballs (needs the disk cap: see `layer.rs`).
    pub layered: bool,
    /// `[limits.*] patch_mb` of the request's risk level, and that level's
    /// name for the error: what the patch may write once applied.
    pub patch_mb: u64,
    pub risk_level: crate::contract::RiskLevel,
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

/// The base and the candidate commit of one repo, with their trees, read
/// through its mirror.
struct Trees<'r> {
    base: Oid,
    base_tree: Tree<'r>,
    candidate: Oid,
    candidate_tree: Tree<'r>,
}

/// A tree's `install_inputs` files as sorted (path, blob id) pairs.
type InputBlobs = Vec<(String, String)>;

impl Trees<'_> {
    /// The `install_inputs` files of both trees; none without an environment.
    fn install_inputs(&self, globs: Option<&InputGlobs>) -> Result<(InputBlobs, InputBlobs)> {
        Ok(match globs {
            Some(globs) => (
                matching_blobs(&self.base_tree, globs)?,
                matching_blobs(&self.candidate_tree, globs)?,
            ),
            None => (Vec::new(), Vec::new()),
        })
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
    pub fn prepare(&self, input: &RepoInput, experiment_id: &str) -> Result<PreparedRepo> {
        let source = open_source(input.source)?;
        let base_oid = resolve(&source, input.base_ref, input.source)?;
        let mirror = self.mirror(input.name, &source)?;
        let base_commit = mirror
            .find_commit(base_oid)
            .map_err(|e| GenesisError::git("reading the base commit through the mirror", e))?;
        let base_tree = base_commit
            .tree()
            .map_err(|e| GenesisError::git("reading the base tree", e))?;
        let (candidate_oid, touched) =
            candidate_commit(&mirror, &base_commit, &base_tree, input, experiment_id)?;
        let candidate_tree = mirror
            .find_commit(candidate_oid)
            .and_then(|c| c.tree())
            .map_err(|e| GenesisError::git("reading the candidate tree", e))?;
        check_candidate_symlinks(&mirror, &candidate_tree, &touched)?;
        let trees = Trees {
            base: base_oid,
            base_tree,
            candidate: candidate_oid,
            candidate_tree,
        };

        let sources = touched_sources(
            &mirror,
            &trees.base_tree,
            &trees.candidate_tree,
            &touched,
            input.analysis_cap_bytes,
        );
        let (base_inputs, candidate_inputs) = trees.install_inputs(input.install_inputs)?;
        let framework = detect_framework(&mirror, &trees.base_tree);
        let (base, candidate, delta) = if input.layered {
            self.layered_snapshots(&mirror, input.name, &trees)?
        } else {
            (
                self.pack(&mirror, input.name, trees.base)?,
                self.pack(&mirror, input.name, trees.candidate)?,
                None,
            )
        };

        Ok(PreparedRepo {
            name: input.name.to_owned(),
            base_inputs,
            candidate_inputs,
            framework,
            base,
            candidate,
            delta,
            touched,
            sources,
        })
    }

    /// The base as a layer (written once per commit) and the candidate as
    /// its delta on that layer, with no layer of its own: a candidate run
    /// receives only what the patch changed.
    fn layered_snapshots(
        &self,
        mirror: &Repository,
        name: &str,
        trees: &Trees,
    ) -> Result<(TreeSnapshot, TreeSnapshot, Option<TreeDelta>)> {
        let base = self.layer(mirror, name, trees.base)?;
        let mtime = commit_time(mirror, trees.candidate)?;
        let delta = layer::delta(mirror, &trees.base_tree, &trees.candidate_tree, name, mtime)?;
        let candidate = TreeSnapshot {
            commit: trees.candidate.to_string(),
            tarball: None,
            layer: None,
            submodules: submodules_of(mirror, &trees.candidate_tree)?,
        };
        Ok((base, candidate, Some(delta)))
    }

    /// The tarball of one commit of repo `name`, packed now unless it is
    /// cached: for what needs a tarball although the runs are layered (an
    /// environment's install, a sandbox bundle).
    pub fn tarball_of(&self, name: &str, commit: &str) -> Result<PathBuf> {
        let (mirror, oid) = self.mirror_commit(name, commit)?;
        self.tarball(&mirror, name, oid)
    }

    /// Packs one commit of repo `name` into `dest`, bypassing the cache (a
    /// bundle's copy of a layered candidate, which has no tarball).
    pub fn pack_uncached(&self, name: &str, commit: &str, dest: &Path) -> Result<()> {
        let (mirror, oid) = self.mirror_commit(name, commit)?;
        let commit = mirror
            .find_commit(oid)
            .map_err(|e| GenesisError::git("reading the commit to pack", e))?;
        let tree = commit
            .tree()
            .map_err(|e| GenesisError::git("reading the tree to pack", e))?;
        let mtime = u64::try_from(commit.time().seconds()).unwrap_or(0);
        write_tarball(&mirror, &tree, name, self.owner, mtime, dest)
    }

    /// The existing mirror of repo `name` and a commit id in it.
    /// The text of regular file `path` at `commit` of repo `name`, from
    /// the mirror; None when it is absent, not a regular file, not UTF-8
    /// or larger than `cap_bytes`.
    pub fn text_at(
        &self,
        name: &str,
        commit: &str,
        path: &str,
        cap_bytes: u64,
    ) -> Result<Option<String>> {
        let (mirror, oid) = self.mirror_commit(name, commit)?;
        let tree = mirror
            .find_commit(oid)
            .and_then(|c| c.tree())
            .map_err(|e| GenesisError::git("reading a tree to read a file from", e))?;
        Ok(inputs::blob_text(&mirror, &tree, path, cap_bytes))
    }

    /// The top-level names of one commit of repo `name` and its manifests'
    /// texts (see [`inputs::top_level`]). Blocking.
    pub fn top_level_at(
        &self,
        name: &str,
        commit: &str,
        cap_bytes: u64,
    ) -> Result<(Vec<String>, std::collections::BTreeMap<String, String>)> {
        let (mirror, oid) = self.mirror_commit(name, commit)?;
        let tree = mirror
            .find_commit(oid)
            .and_then(|c| c.tree())
            .map_err(|e| GenesisError::git("reading a tree to list its top level", e))?;
        Ok(inputs::top_level(&mirror, &tree, cap_bytes))
    }

    fn mirror_commit(&self, name: &str, commit: &str) -> Result<(Repository, Oid)> {
        let path = crate::home::Home::of(&self.home).mirror(name);
        let mirror = Repository::open_bare(&path)
            .map_err(|e| GenesisError::git(format!("opening mirror {}", path.display()), e))?;
        let oid = Oid::from_str(commit)
            .map_err(|e| GenesisError::git(format!("reading commit id {commit:?}"), e))?;
        Ok((mirror, oid))
    }

    /// Writes (once) the layer of a commit's tree and returns it.
    fn layer(&self, repo: &Repository, name: &str, commit: Oid) -> Result<TreeSnapshot> {
        let dir = layer::layer_dir(&self.home, name, self.owner, commit);
        let commit_obj = repo
            .find_commit(commit)
            .map_err(|e| GenesisError::git("reading the commit to lay out", e))?;
        let tree = commit_obj
            .tree()
            .map_err(|e| GenesisError::git("reading the tree to lay out", e))?;
        let mtime = commit_obj.time().seconds().max(0);
        layer::ensure_layer(repo, &tree, name, self.owner, mtime, &dir)?;
        Ok(TreeSnapshot {
            commit: commit.to_string(),
            tarball: None,
            layer: Some(dir),
            submodules: submodules_of(repo, &tree)?,
        })
    }

    /// Opens (creating if needed) the bare mirror that borrows the source's objects.
    fn mirror(&self, name: &str, source: &Repository) -> Result<Repository> {
        let _guard = MIRROR_LOCK.lock().unwrap_or_else(|p| p.into_inner());
        let path = crate::home::Home::of(&self.home).mirror(name);
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

    /// The tarball form of a commit's tree (written once, then cached).
    fn pack(&self, repo: &Repository, name: &str, commit: Oid) -> Result<TreeSnapshot> {
        let tree = repo
            .find_commit(commit)
            .and_then(|c| c.tree())
            .map_err(|e| GenesisError::git("reading tree to pack", e))?;
        Ok(TreeSnapshot {
            commit: commit.to_string(),
            tarball: Some(self.tarball(repo, name, commit)?),
            layer: None,
            submodules: submodules_of(repo, &tree)?,
        })
    }

    /// Writes (once) the tarball of a commit's tree and returns its path.
    fn tarball(&self, repo: &Repository, name: &str, commit: Oid) -> Result<PathBuf> {
        let dir = crate::home::Home::of(&self.home).snapshots();
        fs::create_dir_all(&dir).map_err(|e| GenesisError::io("creating snapshots dir", e))?;
        // The name goes into the tar's paths and the owner into its headers,
        // so both are part of the cache key.
        let key = cache_key(name, self.owner, None);
        let tarball = dir.join(format!("{commit}-{key}.tar.gz"));
        if tarball.exists() {
            // A use refreshes the mtime: the cleanup job's disk budget
            // removes the least recently used tarballs first, and none used
            // within `[cleanup] budget_grace_minutes`.
            let now = fs::FileTimes::new().set_modified(std::time::SystemTime::now());
            let _ = fs::File::open(&tarball).and_then(|f| f.set_times(now));
            return Ok(tarball);
        }
        let commit_obj = repo
            .find_commit(commit)
            .map_err(|e| GenesisError::git("reading commit to pack", e))?;
        let tree = commit_obj
            .tree()
            .map_err(|e| GenesisError::git("reading tree to pack", e))?;
        // Unique per writer: two experiments of one process (or two
        // processes sharing a home) may pack the same commit at once;
        // each writes its own file and the last rename wins harmlessly.
        static WRITERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let writer = WRITERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(
            ".{commit}-{key}.{}-{writer}.tmp",
            std::process::id()
        ));
        let mtime = u64::try_from(commit_obj.time().seconds()).unwrap_or(0);
        write_tarball(repo, &tree, name, self.owner, mtime, &tmp)?;
        fs::rename(&tmp, &tarball)
            .map_err(|e| GenesisError::io("moving snapshot into the cache", e))?;
        Ok(tarball)
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

/// 12 hex digits naming what, besides the commit, goes into a cached
/// snapshot's bytes: the repo name (its paths), the owner (its headers or
/// files) and, for layers, their layout version.
fn cache_key(name: &str, owner: Owner, layout: Option<&str>) -> String {
    let mut material = format!("{name}\0{}\0{}", owner.uid, owner.gid);
    if let Some(layout) = layout {
        material.push('\0');
        material.push_str(layout);
    }
    hex_digest(&<sha2::Sha256 as sha2::Digest>::digest(material.as_bytes()))[..12].to_owned()
}

/// The time every file of a commit's snapshot carries.
fn commit_time(repo: &Repository, commit: Oid) -> Result<i64> {
    repo.find_commit(commit)
        .map(|c| c.time().seconds().max(0))
        .map_err(|e| GenesisError::git("reading the commit's time", e))
}

fn submodules_of(repo: &Repository, tree: &Tree) -> Result<Vec<String>> {
    let mut submodules = Vec::new();
    collect_submodules(tree, "", &mut submodules, repo)?;
    Ok(submodules)
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
#[cfg(test)]
mod tests;
