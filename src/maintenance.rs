//! Sandbox maintenance: cleanup, archives, integrity checks and tarball export.
//!
//! Design:
//! - **One bundle format.** An export and an archive are the same thing: a
//!   deterministic `.tar.gz` whose members all sit under `ID/` and whose
//!   `ID/MANIFEST` lists the sha256 of every other member. It holds the
//!   sandbox directory (request, patches, result, each run's `test.log` and
//!   `out/` reports) plus `ID/workspace/`, the contents of the candidate
//!   snapshot the tests ran against. So an archive stays self-contained after
//!   the snapshot cache is gone, and exporting an archived sandbox is a
//!   verified copy of the archive: the same bytes as exporting it live.
//! - **Deterministic bytes.** Members are sorted by name (directories as
//!   `name/`, so a directory precedes its contents), headers carry mtime 0,
//!   uid/gid 0 and fixed modes (0644, 0755 when the owner-execute bit is set,
//!   0755 for directories), and gzip is written with a fixed header (mtime 0,
//!   no file name). The same inputs always give the same file.
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
//!   listed; it also rejects unsafe names, other member types, duplicates and
//!   anything after the end of the tar.
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

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use flate2::read::MultiGzDecoder;
use flate2::{Compression, GzBuilder};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::config::{CleanupPolicy, Config};
use crate::contract::{hex_digest, validate_experiment_id, ExperimentResult, Recommendation};
use crate::errors::{GenesisError, Result};
use crate::store::{ExperimentRecord, Status, Store};

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

/// `GENESIS_HOME/sandboxes`.
pub fn sandboxes_dir(home: &Path) -> PathBuf {
    home.join("sandboxes")
}

/// `GENESIS_HOME/archives`.
pub fn archives_dir(home: &Path) -> PathBuf {
    home.join("archives")
}

/// Where the archive of an experiment lives: `GENESIS_HOME/archives/ID.tar.gz`.
pub fn archive_path(config: &Config, id: &str) -> PathBuf {
    archives_dir(&config.home).join(format!("{id}.tar.gz"))
}

// ---------------------------------------------------------------------------
// Bundle members
// ---------------------------------------------------------------------------

/// Where a member's bytes come from.
#[derive(Debug, Clone)]
enum Source {
    Dir,
    /// A regular file, opened without following links when written.
    File(PathBuf),
    /// A symlink entry with this target (never resolved).
    Link(String),
    /// In-memory content (the MANIFEST).
    Bytes(Vec<u8>),
}

#[derive(Debug, Clone)]
struct Member {
    /// Path below `ID/`, `/`-separated, no trailing slash.
    name: String,
    source: Source,
    mode: u32,
}

impl Member {
    fn dir(name: String) -> Member {
        Member {
            name,
            source: Source::Dir,
            mode: DIR_MODE,
        }
    }

    /// Directories sort as `name/` so each precedes its own contents.
    fn sort_key(&self) -> String {
        match self.source {
            Source::Dir => format!("{}/", self.name),
            _ => self.name.clone(),
        }
    }
}

/// Members by name, so duplicates and file/directory clashes are caught.
type Members = BTreeMap<String, Member>;

/// A path component that is safe as a member name and as a MANIFEST line.
fn name_ok(part: &str) -> bool {
    !part.is_empty()
        && part != "."
        && part != ".."
        && !part.contains('/')
        && !part.chars().any(char::is_control)
}

/// 0755 when the owner may execute it, else 0644: the only mode bit that
/// matters to a test run, and the only one kept.
fn file_mode(mode: u32) -> u32 {
    if mode & 0o100 != 0 {
        EXEC_MODE
    } else {
        FILE_MODE
    }
}

/// Opens a regular file for reading without following a symlink, and
/// without blocking should it have been swapped for a FIFO.
fn open_nofollow(path: &Path) -> io::Result<fs::File> {
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    Ok(file)
}

/// Adds the regular files and directories under `dir` as members named
/// `prefix/...`; links and special files are skipped with a note.
fn walk_tree(dir: &Path, prefix: &str, out: &mut Members, notes: &mut Vec<String>) -> Result<()> {
    let entries =
        fs::read_dir(dir).map_err(|e| GenesisError::io(format!("reading {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| GenesisError::io(format!("reading {}", dir.display()), e))?;
        let path = entry.path();
        let Some(part) = entry.file_name().to_str().map(str::to_owned) else {
            notes.push(format!("skipped {}: name is not UTF-8", path.display()));
            continue;
        };
        if !name_ok(&part) {
            notes.push(format!("skipped {}: unusable name", path.display()));
            continue;
        }
        let name = if prefix.is_empty() {
            part
        } else {
            format!("{prefix}/{part}")
        };
        let meta = fs::symlink_metadata(&path)
            .map_err(|e| GenesisError::io(format!("inspecting {}", path.display()), e))?;
        let kind = meta.file_type();
        if kind.is_dir() {
            out.insert(name.clone(), Member::dir(name.clone()));
            walk_tree(&path, &name, out, notes)?;
        } else if kind.is_file() {
            let mode = file_mode(meta.mode());
            let source = Source::File(path);
            out.insert(name.clone(), Member { name, source, mode });
        } else {
            let what = if kind.is_symlink() {
                "symlink"
            } else {
                "special file"
            };
            notes.push(format!("skipped {what} {name}"));
        }
    }
    Ok(())
}

/// A private directory for spooled snapshot files, removed on drop.
struct Spool {
    path: PathBuf,
}

static SPOOL_SEQ: AtomicU64 = AtomicU64::new(0);

/// Prefix of spool directories in `GENESIS_HOME/tmp`.
const SPOOL_PREFIX: &str = "bundle-";

impl Spool {
    fn create(home: &Path) -> Result<Spool> {
        let seq = SPOOL_SEQ.fetch_add(1, Ordering::Relaxed);
        let path = home
            .join("tmp")
            .join(format!("{SPOOL_PREFIX}{}-{seq}", std::process::id()));
        // A leftover of a crashed process with the same pid.
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path)
            .map_err(|e| GenesisError::io(format!("creating {}", path.display()), e))?;
        Ok(Spool { path })
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// The relative path of a snapshot member, or None if it is unsafe.
/// `.` components (a leading `./`) are dropped; `..` or odd names refuse it.
fn snapshot_rel(raw: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(raw).ok()?;
    let mut parts = Vec::new();
    for part in text.split('/') {
        match part {
            "" | "." => continue,
            p if name_ok(p) => parts.push(p),
            _ => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

/// Copies a snapshot's regular files into `spool` and returns every usable
/// member (files, directories, symlinks) named `workspace/...`.
fn spool_snapshot(tarball: &Path, spool: &Path, notes: &mut Vec<String>) -> Result<Members> {
    let context = || format!("reading snapshot {}", tarball.display());
    let file = open_nofollow(tarball).map_err(|e| GenesisError::io(context(), e))?;
    let mut archive = tar::Archive::new(MultiGzDecoder::new(io::BufReader::new(file)));
    let mut out = Members::new();
    for entry in archive
        .entries()
        .map_err(|e| GenesisError::io(context(), e))?
    {
        let mut entry = entry.map_err(|e| GenesisError::io(context(), e))?;
        let raw = entry.path_bytes().into_owned();
        let Some(rel) = snapshot_rel(&raw) else {
            notes.push(format!(
                "workspace: skipped unsafe member {:?}",
                String::from_utf8_lossy(&raw)
            ));
            continue;
        };
        let name = format!("{WORKSPACE}/{rel}");
        if out.contains_key(&name) {
            notes.push(format!("workspace: skipped duplicate member {rel}"));
            continue;
        }
        let kind = entry.header().entry_type();
        let target = spool.join(&rel);
        if kind.is_dir() {
            fs::create_dir_all(&target)
                .map_err(|e| GenesisError::io(format!("spooling {rel}"), e))?;
            out.insert(name.clone(), Member::dir(name));
        } else if kind.is_file() {
            let mode = file_mode(entry.header().mode().unwrap_or(FILE_MODE));
            if let Err(e) = spool_file(&mut entry, &target) {
                notes.push(format!("workspace: skipped {rel}: {e}"));
                continue;
            }
            let source = Source::File(target);
            out.insert(name.clone(), Member { name, source, mode });
        } else if kind.is_symlink() {
            let link = entry.link_name_bytes().map(|l| l.into_owned());
            let Some(link) = link.and_then(|l| String::from_utf8(l).ok()) else {
                notes.push(format!(
                    "workspace: skipped symlink {rel}: unreadable target"
                ));
                continue;
            };
            let source = Source::Link(link);
            let mode = LINK_MODE;
            out.insert(name.clone(), Member { name, source, mode });
        } else {
            notes.push(format!(
                "workspace: skipped {rel}: not a file, directory or symlink"
            ));
        }
    }
    Ok(out)
}

/// Writes one snapshot file into the spool; `create_new` in directories made
/// here, so nothing outside the spool is written or followed.
fn spool_file(entry: &mut impl Read, target: &Path) -> io::Result<()> {
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent)?;
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(target)?;
    io::copy(entry, &mut file)?;
    Ok(())
}

/// Adds a directory member for every ancestor of every member, dropping
/// members whose ancestor is not a directory (a path below a symlink).
fn add_parents(members: &mut Members, notes: &mut Vec<String>) {
    let names: Vec<String> = members.keys().cloned().collect();
    for name in names {
        let mut ancestor = name.as_str();
        while let Some((parent, _)) = ancestor.rsplit_once('/') {
            match members.get(parent).map(|m| &m.source) {
                Some(Source::Dir) => {}
                Some(_) => {
                    notes.push(format!("skipped {name}: {parent} is not a directory"));
                    members.remove(&name);
                    break;
                }
                None => {
                    members.insert(parent.to_owned(), Member::dir(parent.to_owned()));
                }
            }
            ancestor = parent;
        }
    }
}

/// The candidate snapshot tarball named by `result.json`, or why there is none.
fn candidate_snapshot(home: &Path, sandbox: &Path) -> std::result::Result<PathBuf, String> {
    let mut text = String::new();
    open_nofollow(&sandbox.join("result.json"))
        .and_then(|mut f| f.read_to_string(&mut text))
        .map_err(|e| format!("no workspace: result.json unreadable ({e})"))?;
    let result: ExperimentResult = serde_json::from_str(&text)
        .map_err(|e| format!("no workspace: result.json is not a result ({e})"))?;
    let ExperimentResult::Success(completed) = result else {
        return Err("no workspace: the experiment failed before a candidate was judged".into());
    };
    let commit = completed.candidate.commit;
    // The commit becomes part of a file name: hex only.
    if commit.is_empty() || !commit.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(format!(
            "no workspace: candidate commit {commit:?} is not hex"
        ));
    }
    let dir = home.join("snapshots");
    let prefix = format!("{commit}-");
    let mut found: Vec<PathBuf> = fs::read_dir(&dir)
        .map_err(|e| format!("no workspace: {} unreadable ({e})", dir.display()))?
        .flatten()
        .filter(|e| {
            let name = e.file_name();
            let name = name.to_string_lossy();
            name.starts_with(&prefix) && name.ends_with(".tar.gz")
        })
        .map(|e| e.path())
        .filter(|p| fs::symlink_metadata(p).is_ok_and(|m| m.is_file()))
        .collect();
    // Several only if the owner or repo name changed; pick one deterministically.
    found.sort();
    found.into_iter().next().ok_or_else(|| {
        format!("no workspace: no snapshot of candidate commit {commit} in snapshots/")
    })
}

/// Everything a live sandbox's bundle holds, ready to write.
struct Plan {
    members: Members,
    notes: Vec<String>,
    /// Keeps the spooled workspace alive until the bundle is written.
    _spool: Option<Spool>,
}

fn plan_live(home: &Path, id: &str) -> Result<Plan> {
    let dir = sandboxes_dir(home).join(id);
    let meta = fs::symlink_metadata(&dir)
        .map_err(|e| GenesisError::io(format!("opening sandbox {}", dir.display()), e))?;
    if !meta.is_dir() {
        return Err(GenesisError::io(
            format!("opening sandbox {}", dir.display()),
            io::Error::other("not a directory (links are not followed)"),
        ));
    }
    let mut members = Members::new();
    let mut notes = Vec::new();
    walk_tree(&dir, "", &mut members, &mut notes)?;
    // These names belong to the bundle format, not to the sandbox.
    members.retain(|name, _| {
        let reserved =
            name == MANIFEST || name == WORKSPACE || name.starts_with(&format!("{WORKSPACE}/"));
        if reserved {
            notes.push(format!("skipped {name}: reserved name in a bundle"));
        }
        !reserved
    });
    let spool = match candidate_snapshot(home, &dir) {
        Ok(tarball) => {
            let spool = Spool::create(home)?;
            members.extend(spool_snapshot(&tarball, &spool.path, &mut notes)?);
            members
                .entry(WORKSPACE.into())
                .or_insert_with(|| Member::dir(WORKSPACE.into()));
            Some(spool)
        }
        Err(why) => {
            notes.push(why);
            None
        }
    };
    add_parents(&mut members, &mut notes);
    Ok(Plan {
        members,
        notes,
        _spool: spool,
    })
}

// ---------------------------------------------------------------------------
// Writing a bundle
// ---------------------------------------------------------------------------

/// Reads through, hashing and counting what passes.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    count: u64,
}

impl<R: Read> Hashing<R> {
    fn new(inner: R) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    fn hex(self) -> String {
        hex_digest(&self.hasher.finalize())
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// sha256 and length of everything a reader yields.
fn hash_reader(reader: impl Read) -> io::Result<(String, u64)> {
    let mut hashing = Hashing::new(reader);
    let mut buf = vec![0u8; CHUNK];
    while hashing.read(&mut buf)? > 0 {}
    let count = hashing.count;
    Ok((hashing.hex(), count))
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex_digest(&Sha256::digest(bytes))
}

/// MANIFEST text for `name -> sha256` pairs: `<hex>  <name>\n`, sorted.
pub fn render_manifest(digests: &BTreeMap<String, String>) -> String {
    digests
        .iter()
        .map(|(name, hex)| format!("{hex}  {name}\n"))
        .collect()
}

/// Parses MANIFEST text into `name -> sha256`, with a message for every bad
/// or repeated line.
pub fn parse_manifest(text: &str) -> (BTreeMap<String, String>, Vec<String>) {
    let mut entries = BTreeMap::new();
    let mut problems = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let parsed = line.split_once("  ").filter(|(hex, name)| {
            hex.len() == 64
                && hex
                    .chars()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
                && !name.is_empty()
        });
        match parsed {
            Some((hex, name)) => {
                if entries.insert(name.to_owned(), hex.to_owned()).is_some() {
                    problems.push(format!("MANIFEST lists {name} twice"));
                }
            }
            None => problems.push(format!("MANIFEST line {} is malformed", n + 1)),
        }
    }
    (entries, problems)
}

/// What a written bundle holds.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BundleInfo {
    /// Tar members, directories included.
    pub members: usize,
    /// Members listed in MANIFEST.
    pub listed: usize,
    /// Size of the `.tar.gz`.
    pub bytes: u64,
    /// sha256 of the `.tar.gz` itself.
    pub sha256: String,
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h
}

/// Hashes every file and link member: `name -> (sha256, size)`.
fn digest_members(members: &Members) -> Result<BTreeMap<String, (String, u64)>> {
    let mut out = BTreeMap::new();
    for m in members.values() {
        let digest = match &m.source {
            Source::Dir => continue,
            Source::Bytes(b) => (sha256_hex(b), b.len() as u64),
            Source::Link(target) => (sha256_hex(target.as_bytes()), 0),
            Source::File(path) => open_nofollow(path)
                .and_then(hash_reader)
                .map_err(|e| GenesisError::io(format!("reading {}", path.display()), e))?,
        };
        out.insert(m.name.clone(), digest);
    }
    Ok(out)
}

/// Writes the members (plus MANIFEST) as `ID/...` into a deterministic
/// `.tar.gz` at `dest`, synced to disk. A file that changes between hashing
/// and writing fails the bundle rather than producing a wrong MANIFEST.
fn write_bundle(id: &str, mut members: Members, dest: &Path) -> Result<BundleInfo> {
    let digests = digest_members(&members)?;
    let listed: BTreeMap<String, String> = digests
        .iter()
        .map(|(name, (hex, _))| (name.clone(), hex.clone()))
        .collect();
    let manifest = render_manifest(&listed).into_bytes();
    members.insert(
        MANIFEST.into(),
        Member {
            name: MANIFEST.into(),
            source: Source::Bytes(manifest),
            mode: FILE_MODE,
        },
    );
    let mut ordered: Vec<&Member> = members.values().collect();
    ordered.sort_by_key(|m| m.sort_key());

    let context = || format!("writing {}", dest.display());
    let file = fs::File::create(dest).map_err(|e| GenesisError::io(context(), e))?;
    let gz = GzBuilder::new()
        .mtime(0)
        .write(io::BufWriter::new(file), Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mut root = header(tar::EntryType::Directory, DIR_MODE, 0);
    tar.append_data(&mut root, format!("{id}/"), io::empty())
        .map_err(|e| GenesisError::io(context(), e))?;
    for m in &ordered {
        append_member(&mut tar, id, m, &digests)?;
    }
    let gz = tar
        .into_inner()
        .map_err(|e| GenesisError::io(context(), e))?;
    let mut buf = gz.finish().map_err(|e| GenesisError::io(context(), e))?;
    buf.flush().map_err(|e| GenesisError::io(context(), e))?;
    let file = buf
        .into_inner()
        .map_err(|e| GenesisError::io(context(), e.into_error()))?;
    file.sync_all()
        .map_err(|e| GenesisError::io(context(), e))?;
    drop(file);
    let (sha256, bytes) = open_nofollow(dest)
        .and_then(hash_reader)
        .map_err(|e| GenesisError::io(context(), e))?;
    Ok(BundleInfo {
        members: ordered.len() + 1,
        listed: listed.len(),
        bytes,
        sha256,
    })
}

fn append_member<W: Write>(
    tar: &mut tar::Builder<W>,
    id: &str,
    m: &Member,
    digests: &BTreeMap<String, (String, u64)>,
) -> Result<()> {
    let path = format!("{id}/{}", m.name);
    let context = || format!("adding {path} to the bundle");
    match &m.source {
        Source::Dir => {
            let mut h = header(tar::EntryType::Directory, m.mode, 0);
            tar.append_data(&mut h, format!("{path}/"), io::empty())
        }
        Source::Link(target) => {
            let mut h = header(tar::EntryType::Symlink, m.mode, 0);
            tar.append_link(&mut h, &path, target)
        }
        Source::Bytes(bytes) => {
            let mut h = header(tar::EntryType::Regular, m.mode, bytes.len() as u64);
            tar.append_data(&mut h, &path, bytes.as_slice())
        }
        Source::File(file) => {
            let (want, size) = digests.get(&m.name).cloned().unwrap_or_default();
            append_file(tar, &path, m.mode, file, &want, size)
        }
    }
    .map_err(|e| GenesisError::io(context(), e))
}

/// Appends a file, checking it still has the size and sha256 it was
/// listed with: a file that changed in between fails the bundle.
fn append_file<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    mode: u32,
    file: &Path,
    want: &str,
    size: u64,
) -> io::Result<()> {
    let mut reader = Hashing::new(open_nofollow(file)?.take(size));
    let mut h = header(tar::EntryType::Regular, mode, size);
    tar.append_data(&mut h, path, &mut reader)?;
    if reader.count != size || reader.hex() != want {
        return Err(io::Error::other(
            "the file changed while it was being packed; try again",
        ));
    }
    Ok(())
}

/// Writes the bundle of a live sandbox to `dest`; returns what it holds and
/// notes on anything left out.
fn bundle_live(home: &Path, id: &str, dest: &Path) -> Result<(BundleInfo, Vec<String>)> {
    let plan = plan_live(home, id)?;
    let info = write_bundle(id, plan.members, dest)?;
    Ok((info, plan.notes))
}

// ---------------------------------------------------------------------------
// Verification
// ---------------------------------------------------------------------------

/// The outcome of checking a bundle against its MANIFEST.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VerifyReport {
    pub path: PathBuf,
    /// The top-level directory every member sits in.
    pub experiment_id: Option<String>,
    /// Tar members read, directories included.
    pub members: usize,
    /// MANIFEST entries whose member is present with the listed sha256.
    pub files_checked: usize,
    /// Empty when the bundle is intact.
    pub problems: Vec<String>,
}

impl VerifyReport {
    fn new(path: &Path) -> Self {
        VerifyReport {
            path: path.to_path_buf(),
            experiment_id: None,
            members: 0,
            files_checked: 0,
            problems: Vec::new(),
        }
    }

    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }

    /// One line for logs and history rows.
    pub fn summary(&self) -> String {
        if self.is_ok() {
            return format!("ok: {} file(s) match MANIFEST", self.files_checked);
        }
        let shown: Vec<&str> = self
            .problems
            .iter()
            .take(SUMMARY_PROBLEMS)
            .map(String::as_str)
            .collect();
        let more = self.problems.len().saturating_sub(SUMMARY_PROBLEMS);
        let tail = if more > 0 {
            format!("; and {more} more")
        } else {
            String::new()
        };
        format!(
            "corrupt: {} problem(s): {}{tail}",
            self.problems.len(),
            shown.join("; ")
        )
    }
}

/// Checks every MANIFEST entry of a bundle, and that nothing unlisted is in
/// it. Problems with the content are in the report; an error means the file
/// could not be opened at all.
pub fn verify_archive(path: &Path) -> Result<VerifyReport> {
    let file = open_nofollow(path)
        .map_err(|e| GenesisError::io(format!("opening {}", path.display()), e))?;
    let mut report = VerifyReport::new(path);
    let mut seen = Seen::default();
    let mut archive = tar::Archive::new(MultiGzDecoder::new(io::BufReader::new(file)));
    if let Err(why) = read_members(&mut archive, &mut seen, &mut report) {
        report.problems.push(format!("unreadable: {why}"));
        return Ok(report);
    }
    // The tar's end marker is followed only by zero padding; anything else
    // (an appended member, a bad gzip trailer) is tampering or damage.
    match trailing_data(archive.into_inner()) {
        Ok(false) => {}
        Ok(true) => report
            .problems
            .push("data after the end of the tar archive".into()),
        Err(e) => report.problems.push(format!("unreadable: {e}")),
    }
    compare_with_manifest(&seen, &mut report);
    Ok(report)
}

/// What verification saw: `name -> sha256` (None for directories), and the
/// MANIFEST's text.
#[derive(Default)]
struct Seen {
    digests: BTreeMap<String, Option<String>>,
    manifest: Option<Vec<u8>>,
}

/// Splits a member path into its top directory and the rest, refusing
/// anything that is not plain relative components.
fn split_member(raw: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(raw).ok()?;
    let text = text.strip_suffix('/').unwrap_or(text);
    let mut parts = text.split('/');
    let top = parts.next()?;
    validate_experiment_id(top).ok()?;
    let rest: Vec<&str> = parts.collect();
    rest.iter()
        .all(|p| name_ok(p))
        .then(|| (top.to_owned(), rest.join("/")))
}

fn read_members<R: Read>(
    archive: &mut tar::Archive<R>,
    seen: &mut Seen,
    report: &mut VerifyReport,
) -> std::result::Result<(), String> {
    for entry in archive.entries().map_err(|e| e.to_string())? {
        let mut entry = entry.map_err(|e| e.to_string())?;
        report.members += 1;
        let raw = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&raw).into_owned();
        let Some((top, rel)) = split_member(&raw) else {
            report
                .problems
                .push(format!("unsafe member name {shown:?}"));
            continue;
        };
        match &report.experiment_id {
            None => report.experiment_id = Some(top),
            Some(root) if *root != top => {
                report
                    .problems
                    .push(format!("member {shown:?} is outside {root}/"));
                continue;
            }
            Some(_) => {}
        }
        let kind = entry.header().entry_type();
        let digest = if kind.is_dir() {
            None
        } else if kind.is_file() && rel == MANIFEST {
            let mut text = Vec::new();
            entry.read_to_end(&mut text).map_err(|e| e.to_string())?;
            if seen.manifest.replace(text).is_some() {
                report.problems.push("MANIFEST appears twice".into());
            }
            continue;
        } else if kind.is_file() {
            Some(hash_reader(&mut entry).map_err(|e| e.to_string())?.0)
        } else if kind.is_symlink() {
            let target = entry.link_name_bytes().unwrap_or_default();
            Some(sha256_hex(&target))
        } else {
            report.problems.push(format!(
                "member {shown:?} is not a file, directory or symlink"
            ));
            continue;
        };
        if rel.is_empty() {
            if digest.is_some() {
                report
                    .problems
                    .push(format!("member {shown:?} is not a directory"));
            }
            continue;
        }
        if seen.digests.insert(rel, digest).is_some() {
            report
                .problems
                .push(format!("member {shown:?} appears twice"));
        }
    }
    Ok(())
}

/// Whether anything but zero bytes follows; reading to the end also makes
/// the gzip decoder check its CRC.
fn trailing_data(mut rest: impl Read) -> io::Result<bool> {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = rest.read(&mut buf)?;
        if n == 0 {
            return Ok(false);
        }
        if buf[..n].iter().any(|b| *b != 0) {
            return Ok(true);
        }
    }
}

fn compare_with_manifest(seen: &Seen, report: &mut VerifyReport) {
    let Some(manifest) = &seen.manifest else {
        report.problems.push("no MANIFEST".into());
        return;
    };
    let Ok(text) = std::str::from_utf8(manifest) else {
        report.problems.push("MANIFEST is not UTF-8".into());
        return;
    };
    let (listed, problems) = parse_manifest(text);
    report.problems.extend(problems);
    for (name, want) in &listed {
        match seen.digests.get(name) {
            None => report
                .problems
                .push(format!("{name} is listed in MANIFEST but missing")),
            Some(None) => report
                .problems
                .push(format!("{name} is listed in MANIFEST but is a directory")),
            Some(Some(got)) if got != want => report
                .problems
                .push(format!("{name} does not match its sha256 in MANIFEST")),
            Some(Some(_)) => report.files_checked += 1,
        }
    }
    for (name, digest) in &seen.digests {
        if digest.is_some() && !listed.contains_key(name) {
            report
                .problems
                .push(format!("{name} is not listed in MANIFEST"));
        }
    }
}

/// Identity of a file's current content as far as the kernel tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(path: &Path) -> io::Result<Stamp> {
        let m = fs::symlink_metadata(path)?;
        Ok(Stamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }

    /// Whether the last change is old enough that a later one would show.
    fn settled(&self, now: SystemTime) -> bool {
        let Ok(since_epoch) = now.duration_since(SystemTime::UNIX_EPOCH) else {
            return false;
        };
        let now_ns = since_epoch.as_nanos() as i128;
        let ctime_ns = i128::from(self.ctime.0) * 1_000_000_000 + i128::from(self.ctime.1);
        now_ns - ctime_ns >= SETTLE.as_nanos() as i128
    }
}

static VERIFIED: LazyLock<Mutex<HashMap<PathBuf, (Stamp, VerifyReport)>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Verifies an archive unless this process already did so for exactly the
/// same file. Returns the report and whether it was computed now.
fn verify_cached(path: &Path) -> Result<(VerifyReport, bool)> {
    let stamp = |p: &Path| {
        Stamp::of(p).map_err(|e| GenesisError::io(format!("inspecting {}", p.display()), e))
    };
    let before = stamp(path)?;
    {
        let cache = VERIFIED.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((s, report)) = cache.get(path) {
            if *s == before {
                return Ok((report.clone(), false));
            }
        }
    }
    let report = verify_archive(path)?;
    let after = stamp(path)?;
    if before == after && after.settled(SystemTime::now()) {
        let mut cache = VERIFIED.lock().unwrap_or_else(|p| p.into_inner());
        cache.insert(path.to_path_buf(), (after, report.clone()));
    }
    Ok((report, true))
}

/// Drops cached reports of archives in `dir` that are gone (pruned, renamed).
fn forget_missing(dir: &Path, present: &[(String, PathBuf)]) {
    let mut cache = VERIFIED.lock().unwrap_or_else(|p| p.into_inner());
    cache.retain(|path, _| path.parent() != Some(dir) || present.iter().any(|(_, p)| p == path));
}

/// One archive and what its check found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ArchiveCheck {
    pub id: String,
    pub path: PathBuf,
    pub size_bytes: u64,
    pub report: VerifyReport,
    /// Verified just now rather than answered from the cache.
    pub fresh: bool,
}

/// Checks one archive file; a file that cannot be read counts as corrupt.
fn check_one(id: &str, path: &Path) -> Option<ArchiveCheck> {
    let size_bytes = fs::symlink_metadata(path).map(|m| m.len()).ok()?;
    let (mut report, fresh) = match verify_cached(path) {
        Ok(found) => found,
        // Pruned or replaced while we looked: not an archive any more.
        Err(GenesisError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
            return None
        }
        Err(e) => {
            let mut report = VerifyReport::new(path);
            report.problems.push(format!("cannot be read: {e}"));
            (report, true)
        }
    };
    if report.is_ok() && report.experiment_id.as_deref() != Some(id) {
        report.problems.push(format!(
            "holds {:?}, not experiment {id}",
            report.experiment_id.as_deref().unwrap_or("")
        ));
    }
    Some(ArchiveCheck {
        id: id.to_owned(),
        path: path.to_path_buf(),
        size_bytes,
        report,
        fresh,
    })
}

/// Archive files in `archives/`: `ID.tar.gz` with a valid id, by id.
fn archive_files(home: &Path) -> io::Result<Vec<(String, PathBuf)>> {
    let dir = archives_dir(home);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".tar.gz")) else {
            continue;
        };
        // Temporary files start with a dot, which no experiment id does.
        if validate_experiment_id(id).is_ok() {
            out.push((id.to_owned(), entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Checks every archive in `GENESIS_HOME/archives` (cached; see the module docs).
pub fn check_archives(config: &Config) -> Result<Vec<ArchiveCheck>> {
    check_all(&config.home, &HashMap::new())
}

/// Checks every archive, taking the reports in `known` (archives verified
/// a moment ago by the caller) as they are.
fn check_all(home: &Path, known: &HashMap<String, VerifyReport>) -> Result<Vec<ArchiveCheck>> {
    let files = archive_files(home)
        .map_err(|e| GenesisError::io(format!("listing {}", archives_dir(home).display()), e))?;
    forget_missing(&archives_dir(home), &files);
    Ok(files
        .iter()
        .filter_map(|(id, path)| match known.get(id) {
            Some(report) => Some(ArchiveCheck {
                id: id.clone(),
                path: path.clone(),
                size_bytes: fs::symlink_metadata(path).map(|m| m.len()).ok()?,
                report: report.clone(),
                fresh: false,
            }),
            None => check_one(id, path),
        })
        .collect())
}

/// The check of one experiment's archive, or None when it has none (for `show`).
pub fn check_archive(config: &Config, id: &str) -> Option<ArchiveCheck> {
    validate_experiment_id(id).ok()?;
    check_one(id, &archive_path(config, id))
}

/// Ids of archives that fail verification; they are kept for inspection at
/// [`archive_path`]. For `doctor`, `show` and the health document.
pub fn corrupt_archives(config: &Config) -> Vec<String> {
    match check_archives(config) {
        Ok(checks) => checks
            .into_iter()
            .filter(|c| !c.report.is_ok())
            .map(|c| c.id)
            .collect(),
        Err(e) => {
            tracing::warn!(error = %e, "could not check archives");
            Vec::new()
        }
    }
}

/// Writes a `verify` history row for every archive checked afresh.
pub fn record_checks(store: &Store, checks: &[ArchiveCheck]) -> Result<()> {
    for c in checks.iter().filter(|c| c.fresh) {
        store.add_history(
            &c.id,
            "verify",
            &c.path.display().to_string(),
            c.size_bytes,
            &c.report.summary(),
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Export
// ---------------------------------------------------------------------------

/// Where an export came from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum ExportSource {
    Live(PathBuf),
    Archive(PathBuf),
}

/// What `export_sandbox` wrote.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExportSummary {
    pub output: PathBuf,
    pub source: ExportSource,
    pub bundle: BundleInfo,
    /// What was left out of a live export and why (links, no workspace, ...).
    pub notes: Vec<String>,
}

/// A sibling temporary path for `dest`, renamed over it when complete.
fn temp_beside(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "export".into());
    let seq = SPOOL_SEQ.fetch_add(1, Ordering::Relaxed);
    dest.with_file_name(format!(".{name}.{}-{seq}.tmp", std::process::id()))
}

/// Removes the temporary file unless it was renamed into place.
struct TempFile(Option<PathBuf>);

impl TempFile {
    fn path(&self) -> &Path {
        self.0.as_deref().unwrap_or(Path::new(""))
    }

    /// Renames into place and syncs the directory so the name survives a crash.
    fn persist(mut self, dest: &Path) -> Result<()> {
        let tmp = self.0.take().unwrap_or_default();
        fs::rename(&tmp, dest).map_err(|e| {
            let _ = fs::remove_file(&tmp);
            GenesisError::io(format!("moving the bundle to {}", dest.display()), e)
        })?;
        if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
            let _ = fs::File::open(dir).and_then(|d| d.sync_all());
        }
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.0.take() {
            let _ = fs::remove_file(path);
        }
    }
}

/// Copies a file without following a link at `from`, synced to disk.
fn copy_nofollow(from: &Path, to: &Path) -> io::Result<()> {
    let mut src = open_nofollow(from)?;
    let mut dst = fs::File::create(to)?;
    io::copy(&mut src, &mut dst)?;
    dst.sync_all()
}

/// Result of the blocking half of an export.
enum Exported {
    Done(ExportSummary),
    /// The archive failed verification; nothing was written.
    Corrupt(VerifyReport),
}

fn export_blocking(
    home: &Path,
    id: &str,
    output: &Path,
) -> Result<(Exported, Option<VerifyReport>)> {
    let archive = archives_dir(home).join(format!("{id}.tar.gz"));
    let live = sandboxes_dir(home).join(id);
    let tmp = TempFile(Some(temp_beside(output)));
    let context = || format!("writing {}", output.display());
    // The archive wins: it is what cleanup verified and kept; a sandbox dir
    // beside it is at most a leftover of an interrupted archival.
    if fs::symlink_metadata(&archive).is_ok() {
        copy_nofollow(&archive, tmp.path()).map_err(|e| GenesisError::io(context(), e))?;
        let mut report = verify_archive(tmp.path())?;
        report.path = archive.clone();
        if report.is_ok() && report.experiment_id.as_deref() != Some(id) {
            report
                .problems
                .push(format!("does not hold experiment {id}"));
        }
        if !report.is_ok() {
            return Ok((Exported::Corrupt(report.clone()), Some(report)));
        }
        let (sha256, bytes) = open_nofollow(tmp.path())
            .and_then(hash_reader)
            .map_err(|e| GenesisError::io(context(), e))?;
        tmp.persist(output)?;
        let bundle = BundleInfo {
            members: report.members,
            listed: report.files_checked,
            bytes,
            sha256,
        };
        let summary = ExportSummary {
            output: output.to_path_buf(),
            source: ExportSource::Archive(archive),
            bundle,
            notes: Vec::new(),
        };
        return Ok((Exported::Done(summary), Some(report)));
    }
    if fs::symlink_metadata(&live).is_err() {
        return Err(GenesisError::InvalidRequest(format!(
            "experiment {id} has no sandbox to export: neither {} nor {} exists (see `genesis show {id}` for its history)",
            live.display(),
            archive.display()
        )));
    }
    let (bundle, notes) = bundle_live(home, id, tmp.path())?;
    // Check our own work before handing it out.
    let report = verify_archive(tmp.path())?;
    if !report.is_ok() {
        return Err(GenesisError::Internal(format!(
            "the export of {id} failed its own verification: {}",
            report.summary()
        )));
    }
    tmp.persist(output)?;
    let summary = ExportSummary {
        output: output.to_path_buf(),
        source: ExportSource::Live(live),
        bundle,
        notes,
    };
    Ok((Exported::Done(summary), None))
}

/// `genesis sandbox export ID --output FILE`: writes the bundle of a live or
/// archived sandbox (an archive is verified first and refused if corrupt).
pub async fn export_sandbox(
    config: &Config,
    store: &Store,
    id: &str,
    output: &Path,
) -> Result<ExportSummary> {
    // The id becomes a path component: refuse anything but the contract's ids.
    validate_experiment_id(id).map_err(GenesisError::InvalidRequest)?;
    let key = id.to_owned();
    if store.call(move |s| s.get(&key)).await?.is_none() {
        return Err(GenesisError::UnknownExperiment(id.to_owned()));
    }
    let (home, key, out) = (config.home.clone(), id.to_owned(), output.to_path_buf());
    let (exported, verified) =
        tokio::task::spawn_blocking(move || export_blocking(&home, &key, &out))
            .await
            .map_err(|e| GenesisError::Internal(format!("export task: {e}")))??;
    if let Some(report) = verified {
        let (key, path, summary) = (
            id.to_owned(),
            report.path.display().to_string(),
            report.summary(),
        );
        let size = fs::symlink_metadata(&report.path)
            .map(|m| m.len())
            .unwrap_or(0);
        store
            .call(move |s| s.add_history(&key, "verify", &path, size, &summary))
            .await?;
    }
    let summary = match exported {
        Exported::Done(summary) => summary,
        Exported::Corrupt(report) => {
            return Err(GenesisError::CorruptArchive {
                path: report.path.clone(),
                message: report.summary(),
            })
        }
    };
    let source = match &summary.source {
        ExportSource::Live(p) => format!("live sandbox {}", p.display()),
        ExportSource::Archive(p) => format!("archive {}", p.display()),
    };
    let detail = format!(
        "from {source}; {} members, {} listed in MANIFEST; sha256 {}",
        summary.bundle.members, summary.bundle.listed, summary.bundle.sha256
    );
    let (key, path, size) = (
        id.to_owned(),
        output.display().to_string(),
        summary.bundle.bytes,
    );
    store
        .call(move |s| s.add_history(&key, "export", &path, size, &detail))
        .await?;
    for note in &summary.notes {
        tracing::info!(experiment_id = %id, "export: {note}");
    }
    Ok(summary)
}

// ---------------------------------------------------------------------------
// Cleanup
// ---------------------------------------------------------------------------

/// What cleanup should do with a sandbox directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxAction {
    Keep,
    Delete,
    Archive,
}

/// Decides from the record alone. Queued and running experiments are never
/// touched; failed and rolled-back ones are deleted after
/// `delete_after_hours`; merged ones archived after `archive_after_hours`.
pub fn sandbox_action(
    record: &ExperimentRecord,
    now_ms: i64,
    policy: &CleanupPolicy,
) -> SandboxAction {
    let age_ms = now_ms.saturating_sub(record.updated_at);
    let older_than = |hours: u64| {
        let limit = i64::try_from(hours.saturating_mul(MS_PER_HOUR)).unwrap_or(i64::MAX);
        age_ms > limit
    };
    let recommendation = record.recommendation.as_deref();
    let kept = [
        Recommendation::Merge.as_str(),
        Recommendation::MergeWithAdaptations.as_str(),
    ];
    match record.status {
        Status::Queued | Status::Running => SandboxAction::Keep,
        Status::Failed if older_than(policy.delete_after_hours) => SandboxAction::Delete,
        Status::Completed if recommendation == Some(Recommendation::Rollback.as_str()) => {
            if older_than(policy.delete_after_hours) {
                SandboxAction::Delete
            } else {
                SandboxAction::Keep
            }
        }
        Status::Completed
            if recommendation.is_some_and(|r| kept.contains(&r))
                && older_than(policy.archive_after_hours) =>
        {
            SandboxAction::Archive
        }
        _ => SandboxAction::Keep,
    }
}

/// What a cleanup run did; printed by `genesis jobs run cleanup`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CleanupReport {
    /// Sandbox directories of failed and rolled-back experiments removed.
    pub deleted: Vec<String>,
    /// Sandboxes packed into archives (and their directories removed).
    pub archived: Vec<String>,
    /// Archives removed to stay under the disk budget, oldest first.
    pub pruned: Vec<String>,
    /// Orphan containers removed (container ids).
    pub containers_removed: Vec<String>,
    /// Archives failing verification; kept for inspection.
    pub corrupt_archives: Vec<String>,
    pub freed_bytes: u64,
    /// GENESIS_HOME's size after cleanup (apparent size of its files).
    pub disk_used_bytes: u64,
    pub disk_budget_bytes: u64,
    /// Things worth knowing that are not failures (Docker unreachable, ...).
    pub notes: Vec<String>,
    /// Steps that failed; the run as a whole counts as failed when non-empty.
    pub errors: Vec<String>,
}

impl CleanupReport {
    /// One line for logs and the job state.
    pub fn summary(&self) -> String {
        format!(
            "deleted {}, archived {}, pruned {}, containers removed {}, corrupt archives {}, freed {:.1} MB, home {:.1} of {:.0} MB{}",
            self.deleted.len(),
            self.archived.len(),
            self.pruned.len(),
            self.containers_removed.len(),
            self.corrupt_archives.len(),
            self.freed_bytes as f64 / BYTES_PER_MB as f64,
            self.disk_used_bytes as f64 / BYTES_PER_MB as f64,
            self.disk_budget_bytes as f64 / BYTES_PER_MB as f64,
            if self.errors.is_empty() {
                String::new()
            } else {
                format!(", {} error(s)", self.errors.len())
            }
        )
    }
}

/// Apparent size of every regular file under `path`, links not followed;
/// unreadable parts count as zero.
pub fn disk_usage_bytes(path: &Path) -> u64 {
    let mut total = 0u64;
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        let Ok(meta) = fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(entries) = fs::read_dir(&p) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        } else if meta.is_file() {
            total = total.saturating_add(meta.len());
        }
    }
    total
}

/// Cleans GENESIS_HOME as of `now` (the injected clock's time): sandboxes,
/// archives, the disk budget, stale temporary files, orphan containers.
pub async fn cleanup(
    config: &Arc<Config>,
    store: &Store,
    now: DateTime<Utc>,
) -> Result<CleanupReport> {
    let (cfg, st) = (config.clone(), store.clone());
    let mut report = tokio::task::spawn_blocking(move || {
        let mut files = Cleaner::new(&cfg, &st, now.timestamp_millis());
        files.run();
        files.report
    })
    .await
    .map_err(|e| GenesisError::Internal(format!("cleanup task: {e}")))?;
    reap_containers(config, store, &mut report).await;
    report.disk_used_bytes = disk_usage_bytes(&config.home);
    Ok(report)
}

/// The file-system half of cleanup (blocking).
struct Cleaner<'a> {
    config: &'a Config,
    store: &'a Store,
    now_ms: i64,
    report: CleanupReport,
    /// Archives verified during this run (already recorded in history).
    verified: HashMap<String, VerifyReport>,
}

impl<'a> Cleaner<'a> {
    fn new(config: &'a Config, store: &'a Store, now_ms: i64) -> Self {
        let report = CleanupReport {
            disk_budget_bytes: config.cleanup.disk_budget_mb.saturating_mul(BYTES_PER_MB),
            ..CleanupReport::default()
        };
        Cleaner {
            config,
            store,
            now_ms,
            report,
            verified: HashMap::new(),
        }
    }

    fn run(&mut self) {
        self.sandboxes();
        let checks = match check_all(&self.config.home, &self.verified) {
            Ok(checks) => checks,
            Err(e) => {
                self.report.errors.push(e.to_string());
                Vec::new()
            }
        };
        if let Err(e) = record_checks(self.store, &checks) {
            self.report
                .errors
                .push(format!("recording verify rows: {e}"));
        }
        self.report.corrupt_archives = checks
            .iter()
            .filter(|c| !c.report.is_ok())
            .map(|c| c.id.clone())
            .collect();
        self.budget(&checks);
        self.stale_temp();
    }

    fn history(&mut self, id: &str, op: &str, path: &Path, size: u64, detail: &str) {
        let path = path.display().to_string();
        if let Err(e) = self.store.add_history(id, op, &path, size, detail) {
            self.report
                .errors
                .push(format!("{id}: recording the {op} in sandbox_history: {e}"));
        }
    }

    /// Deletes or archives each sandbox directory its record says is due.
    fn sandboxes(&mut self) {
        let dir = sandboxes_dir(&self.config.home);
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return,
            Err(e) => {
                self.report
                    .errors
                    .push(format!("listing {}: {e}", dir.display()));
                return;
            }
        };
        let mut ids: Vec<String> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str().map(str::to_owned))
            .filter(|id| validate_experiment_id(id).is_ok())
            .collect();
        ids.sort();
        for id in ids {
            if let Err(e) = self.sandbox(&id) {
                self.report.errors.push(format!("{id}: {e}"));
            }
        }
    }

    fn sandbox(&mut self, id: &str) -> Result<()> {
        let path = sandboxes_dir(&self.config.home).join(id);
        let is_dir = fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
        if !is_dir {
            self.report.notes.push(format!(
                "{id}: sandbox entry is not a directory; left alone"
            ));
            return Ok(());
        }
        let Some(record) = self.store.get(id)? else {
            self.report.notes.push(format!(
                "{id}: sandbox has no record in the store; left alone"
            ));
            return Ok(());
        };
        match sandbox_action(&record, self.now_ms, &self.config.cleanup) {
            SandboxAction::Keep => Ok(()),
            SandboxAction::Delete => {
                let size = remove_tree(&path)?;
                self.report.freed_bytes += size;
                self.report.deleted.push(id.to_owned());
                let detail = format!(
                    "sandbox of a {} experiment removed after {} h",
                    record
                        .recommendation
                        .as_deref()
                        .unwrap_or(record.status.as_str()),
                    self.config.cleanup.delete_after_hours
                );
                self.history(id, "delete", &path, size, &detail);
                Ok(())
            }
            SandboxAction::Archive => self.archive(id, &path),
        }
    }

    /// Packs a sandbox into `archives/ID.tar.gz`, verifies the archive, and
    /// only then removes the directory.
    fn archive(&mut self, id: &str, dir: &Path) -> Result<()> {
        let home = &self.config.home;
        let dest = archives_dir(home).join(format!("{id}.tar.gz"));
        if fs::symlink_metadata(&dest).is_ok() {
            // An earlier run was interrupted after the rename: trust the
            // archive only if it verifies.
            let report = verify_archive(&dest)?;
            let size = fs::symlink_metadata(&dest).map(|m| m.len()).unwrap_or(0);
            self.history(id, "verify", &dest, size, &report.summary());
            let summary = report.summary();
            let ok = report.is_ok();
            self.verified.insert(id.to_owned(), report);
            if !ok {
                return Err(GenesisError::CorruptArchive {
                    path: dest,
                    message: format!("{summary}; sandbox kept"),
                });
            }
        } else {
            fs::create_dir_all(archives_dir(home)).map_err(|e| {
                GenesisError::io(format!("creating {}", archives_dir(home).display()), e)
            })?;
            let tmp = TempFile(Some(temp_beside(&dest)));
            let (info, notes) = bundle_live(home, id, tmp.path())?;
            let report = verify_archive(tmp.path())?;
            if !report.is_ok() {
                return Err(GenesisError::Internal(format!(
                    "the new archive of {id} failed verification ({}); sandbox kept",
                    report.summary()
                )));
            }
            tmp.persist(&dest)?;
            let mut detail = format!(
                "{} members, {} listed in MANIFEST; sha256 {}",
                info.members, info.listed, info.sha256
            );
            if !notes.is_empty() {
                detail.push_str(&format!("; {}", notes.join("; ")));
            }
            self.history(id, "archive", &dest, info.bytes, &detail);
            self.history(id, "verify", &dest, info.bytes, &report.summary());
            let mut report = report;
            report.path = dest.clone();
            self.verified.insert(id.to_owned(), report);
        }
        let size = remove_tree(dir)?;
        self.report.freed_bytes += size;
        self.report.archived.push(id.to_owned());
        let detail = format!("archived to {}", dest.display());
        self.history(id, "delete", dir, size, &detail);
        Ok(())
    }

    /// Prunes intact archives, oldest experiment first, while GENESIS_HOME
    /// is over budget. Corrupt archives and those of unfinished experiments stay.
    fn budget(&mut self, checks: &[ArchiveCheck]) {
        let budget = self.report.disk_budget_bytes;
        let mut used = disk_usage_bytes(&self.config.home);
        if used <= budget {
            return;
        }
        let mut candidates: Vec<(i64, &ArchiveCheck)> = Vec::new();
        for check in checks.iter().filter(|c| c.report.is_ok()) {
            match self.store.get(&check.id) {
                Ok(Some(r)) if !r.status.is_final() => continue,
                Ok(Some(r)) => candidates.push((r.updated_at, check)),
                // An archive without a record: its file time is all we know.
                Ok(None) => candidates.push((mtime_ms(&check.path), check)),
                Err(e) => self.report.errors.push(format!("{}: {e}", check.id)),
            }
        }
        candidates.sort_by(|a, b| (a.0, &a.1.id).cmp(&(b.0, &b.1.id)));
        for (_, check) in candidates {
            if used <= budget {
                break;
            }
            if let Err(e) = fs::remove_file(&check.path) {
                self.report.errors.push(format!(
                    "{}: pruning {}: {e}",
                    check.id,
                    check.path.display()
                ));
                continue;
            }
            used = used.saturating_sub(check.size_bytes);
            self.report.freed_bytes += check.size_bytes;
            self.report.pruned.push(check.id.clone());
            let detail = format!(
                "archive pruned: GENESIS_HOME over its {} MB budget",
                self.config.cleanup.disk_budget_mb
            );
            self.history(&check.id, "delete", &check.path, check.size_bytes, &detail);
        }
        if used > budget {
            self.report.notes.push(format!(
                "GENESIS_HOME still uses {:.1} MB of a {} MB budget; nothing else may be pruned (snapshots, mirrors and the store are not)",
                used as f64 / BYTES_PER_MB as f64,
                self.config.cleanup.disk_budget_mb
            ));
        }
    }

    /// Removes spool directories and half-written archives left by a crash,
    /// once they are older than `delete_after_hours`.
    fn stale_temp(&mut self) {
        let limit_ms = i64::try_from(
            self.config
                .cleanup
                .delete_after_hours
                .saturating_mul(MS_PER_HOUR),
        )
        .unwrap_or(i64::MAX);
        let home = &self.config.home;
        let spools = (home.join("tmp"), SPOOL_PREFIX, "");
        let archives = (archives_dir(home), ".", ".tmp");
        for (dir, prefix, suffix) in [spools, archives] {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let path = entry.path();
                let stale = name.starts_with(prefix)
                    && name.ends_with(suffix)
                    && self.now_ms.saturating_sub(mtime_ms(&path)) > limit_ms;
                if stale {
                    match remove_tree(&path) {
                        Ok(size) => self.report.freed_bytes += size,
                        Err(e) => self.report.errors.push(e.to_string()),
                    }
                }
            }
        }
    }
}

fn mtime_ms(path: &Path) -> i64 {
    fs::symlink_metadata(path)
        .map(|m| m.mtime().saturating_mul(1000) + m.mtime_nsec() / 1_000_000)
        .unwrap_or(0)
}

/// Removes a file or directory tree without following links; returns the
/// bytes it held.
fn remove_tree(path: &Path) -> Result<u64> {
    let size = disk_usage_bytes(path);
    let meta = fs::symlink_metadata(path)
        .map_err(|e| GenesisError::io(format!("inspecting {}", path.display()), e))?;
    // remove_dir_all does not follow links inside the tree; a link at the
    // top is removed as a link.
    let removed = if meta.is_dir() {
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    removed.map_err(|e| GenesisError::io(format!("removing {}", path.display()), e))?;
    Ok(size)
}

/// Removes containers labelled with this home whose experiment is not
/// running. Docker being unreachable is a note, not a failure.
async fn reap_containers(config: &Config, store: &Store, report: &mut CleanupReport) {
    let timeout = Duration::from_millis(config.sandbox.docker_timeout_ms);
    let docker = match tokio::time::timeout(timeout, crate::sandbox::connect()).await {
        Ok(Ok(docker)) => docker,
        Ok(Err(e)) => {
            report.notes.push(format!(
                "orphan containers not checked: Docker unreachable: {e}"
            ));
            return;
        }
        Err(_) => {
            report.notes.push(format!(
                "orphan containers not checked: Docker did not answer within {} ms",
                config.sandbox.docker_timeout_ms
            ));
            return;
        }
    };
    let label = crate::runner::home_label(&config.home);
    let listed = tokio::time::timeout(
        timeout,
        crate::sandbox::labelled_containers(&docker, Some(&label), None),
    )
    .await;
    let containers = match listed {
        Ok(Ok(list)) => list,
        Ok(Err(e)) => {
            report
                .notes
                .push(format!("orphan containers not checked: {e}"));
            return;
        }
        Err(_) => {
            report.notes.push(format!(
                "orphan containers not checked: listing took over {} ms",
                config.sandbox.docker_timeout_ms
            ));
            return;
        }
    };
    for (container, experiment) in containers {
        if let Err(e) = reap_one(&docker, store, &container, &experiment, report).await {
            report.errors.push(format!("container {container}: {e}"));
        }
    }
}

async fn reap_one(
    docker: &bollard::Docker,
    store: &Store,
    container: &str,
    experiment: &str,
    report: &mut CleanupReport,
) -> Result<()> {
    let key = experiment.to_owned();
    let status = store.call(move |s| s.get(&key)).await?.map(|r| r.status);
    if status == Some(Status::Running) {
        return Ok(());
    }
    crate::sandbox::remove_container(docker, container).await?;
    report.containers_removed.push(container.to_owned());
    let detail = format!(
        "orphan container {container} removed (experiment {})",
        status.map_or("unknown to the store", Status::as_str)
    );
    let key = experiment.to_owned();
    store
        .call(move |s| s.add_history(&key, "cleanup", "", 0, &detail))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(status: Status, recommendation: Option<&str>, updated_at: i64) -> ExperimentRecord {
        let request = crate::contract::Request::parse(
            br#"{"experiment_id":"e","instance_id":"i","experiment_type":"t","risk_level":"low","changes":{}}"#,
        )
        .unwrap();
        let mut r = ExperimentRecord::new(&request, status, "h:1", updated_at);
        r.recommendation = recommendation.map(str::to_owned);
        r
    }

    fn policy() -> CleanupPolicy {
        CleanupPolicy {
            delete_after_hours: 24,
            archive_after_hours: 72,
            disk_budget_mb: 1,
            analysis_days: 30,
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
