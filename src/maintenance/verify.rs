//! Verifying bundles against their MANIFEST, with an in-process cache
//! keyed by the file's identity and ctime (see the parent module's doc).

use crate::config::Config;
use crate::contract::validate_experiment_id;
use crate::errors::{GenesisError, Result};
use crate::home::Home;
use crate::store::{SandboxOperation, Store};
use flate2::read::MultiGzDecoder;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{LazyLock, Mutex};
use std::time::SystemTime;

use super::*;
use crate::snapshot::WORKSPACE_RECORD;

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
    if let Some(record) = &seen.workspace_record {
        report
            .problems
            .extend(workspace_problems(record, &seen.digests));
    }
    Ok(report)
}

/// What verification saw: `name -> sha256` (None for directories), and the
/// MANIFEST's text.
#[derive(Default)]
struct Seen {
    digests: BTreeMap<String, Option<String>>,
    manifest: Option<Vec<u8>>,
    /// The workspace record's text, when the bundle holds one.
    workspace_record: Option<Vec<u8>>,
}

/// Splits a member path into its top directory and the rest, refusing
/// anything that is not plain relative components.
pub(super) fn split_member(raw: &[u8]) -> Option<(String, String)> {
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
        } else if kind.is_file() && rel == WORKSPACE_RECORD {
            let mut text = Vec::new();
            let mut bounded = (&mut entry).take(RECORD_CAP);
            bounded.read_to_end(&mut text).map_err(|e| e.to_string())?;
            let digest = sha256_hex(&text);
            seen.workspace_record = Some(text);
            Some(digest)
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
    let dir = Home::of(home).archives();
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
pub(super) fn check_all(
    home: &Path,
    known: &HashMap<String, VerifyReport>,
) -> Result<Vec<ArchiveCheck>> {
    let archives = Home::of(home).archives();
    let files = archive_files(home)
        .map_err(|e| GenesisError::io(format!("listing {}", archives.display()), e))?;
    forget_missing(&archives, &files);
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
            SandboxOperation::Verify,
            &c.path.display().to_string(),
            c.size_bytes,
            &c.report.summary(),
        )?;
    }
    Ok(())
}
