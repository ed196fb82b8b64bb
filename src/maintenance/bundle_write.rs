//! Writing a bundle: members hashed as they are read, the MANIFEST of
//! their digests, and the deterministic .tar.gz itself (fixed order, times,
//! owners and gzip header, so the same sandbox always gives the same bytes).

use crate::contract::hex_digest;
use crate::errors::{GenesisError, Result};
use flate2::{Compression, GzBuilder};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;

use super::*;

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
pub(super) fn hash_reader(reader: impl Read) -> io::Result<(String, u64)> {
    let mut hashing = Hashing::new(reader);
    let mut buf = vec![0u8; CHUNK];
    while hashing.read(&mut buf)? > 0 {}
    let count = hashing.count;
    Ok((hashing.hex(), count))
}

pub(super) fn sha256_hex(bytes: &[u8]) -> String {
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

fn header(kind: tar::EntryType, mode: u32, size: u64, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
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
pub(super) fn write_bundle(id: &str, mut members: Members, dest: &Path) -> Result<BundleInfo> {
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
            mtime: 0,
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
    let mut root = header(tar::EntryType::Directory, DIR_MODE, 0, 0);
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
            let mut h = header(tar::EntryType::Directory, m.mode, 0, m.mtime);
            tar.append_data(&mut h, format!("{path}/"), io::empty())
        }
        Source::Link(target) => {
            let mut h = header(tar::EntryType::Symlink, m.mode, 0, m.mtime);
            tar.append_link(&mut h, &path, target)
        }
        Source::Bytes(bytes) => {
            let mut h = header(tar::EntryType::Regular, m.mode, bytes.len() as u64, m.mtime);
            tar.append_data(&mut h, &path, bytes.as_slice())
        }
        Source::File(file) => {
            let (want, size) = digests.get(&m.name).cloned().unwrap_or_default();
            append_file(tar, &path, m, file, &want, size)
        }
    }
    .map_err(|e| GenesisError::io(context(), e))
}

/// Appends a file, checking it still has the size and sha256 it was
/// listed with: a file that changed in between fails the bundle.
fn append_file<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    member: &Member,
    file: &Path,
    want: &str,
    size: u64,
) -> io::Result<()> {
    let mut reader = Hashing::new(open_nofollow(file)?.take(size));
    let mut h = header(tar::EntryType::Regular, member.mode, size, member.mtime);
    tar.append_data(&mut h, path, &mut reader)?;
    if reader.count != size || reader.hex() != want {
        return Err(io::Error::other(
            "the file changed while it was being packed; try again",
        ));
    }
    Ok(())
}
