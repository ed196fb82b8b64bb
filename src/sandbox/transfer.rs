//! Files out of a container: only regular files with plain relative paths,
//! never a link followed (a sandbox-made symlink must not become a host write).

use crate::errors::engine::classify;
use crate::errors::{GenesisError, Result};
use bollard::query_parameters::DownloadFromContainerOptions;
use futures_util::StreamExt;
use std::io::{Read, Write};
use std::path::{Component, Path};

use super::{Sandbox, ScratchDisk};

impl Sandbox {
    /// Downloads `/genesis/out` (after the container stopped) into `dest`,
    /// keeping only regular files, and returns them for report parsing.
    pub async fn download_out(&self, dest: &Path, cap: u64) -> Result<Vec<(String, Vec<u8>)>> {
        // A suite that reports on stdout leaves the directory empty: with a
        // disk, listing it (never following what is in it) spares the
        // archive round trip.
        if self.disk.as_ref().is_some_and(ScratchDisk::out_is_empty) {
            return extract_regular_files(&[], dest);
        }
        let mut stream = self.docker.download_from_container(
            &self.id,
            Some(DownloadFromContainerOptions {
                path: "/genesis/out".into(),
            }),
        );
        let mut raw = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) if classify(&e).is_absent() => return Ok(Vec::new()),
                Err(e) => {
                    return Err(GenesisError::docker(
                        format!("downloading /genesis/out of {}", self.name),
                        e,
                    ))
                }
            };
            if raw.len() as u64 + chunk.len() as u64 > cap {
                return Err(GenesisError::sandbox(
                    format!("downloading /genesis/out of {}", self.name),
                    format!("it holds more than the {cap} byte limit ([sandbox] out_cap_bytes)"),
                ));
            }
            raw.extend_from_slice(&chunk);
        }
        extract_regular_files(&raw, dest)
    }
}

/// Extracts only regular files with plain relative paths from a tar made by
/// the engine. Symlinks, hard links, devices and anything with `..` are
/// dropped without being followed or created; files are created with
/// `create_new` in directories made here, so nothing outside `dest` is touched.
pub fn extract_regular_files(raw: &[u8], dest: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    std::fs::create_dir_all(dest)
        .map_err(|e| GenesisError::io(format!("creating {}", dest.display()), e))?;
    let mut archive = tar::Archive::new(raw);
    let mut files = Vec::new();
    let entries = archive
        .entries()
        .map_err(|e| GenesisError::io("reading the /genesis/out archive", e))?;
    for entry in entries {
        let mut entry =
            entry.map_err(|e| GenesisError::io("reading the /genesis/out archive", e))?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let Ok(path) = entry.path().map(|p| p.into_owned()) else {
            continue;
        };
        // The archive's root is the `out/` directory itself.
        let Some(rel) = plain_relative(&path).and_then(|p| {
            let mut parts = p.components();
            parts.next();
            let rest = parts.as_path().to_path_buf();
            (!rest.as_os_str().is_empty()).then_some(rest)
        }) else {
            continue;
        };
        let mut content = Vec::new();
        entry
            .read_to_end(&mut content)
            .map_err(|e| GenesisError::io("reading a file of /genesis/out", e))?;
        if write_new_file(dest, &rel, &content).is_ok() {
            files.push((rel.to_string_lossy().into_owned(), content));
        }
    }
    files.sort();
    Ok(files)
}

fn plain_relative(path: &Path) -> Option<&Path> {
    path.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then_some(path)
}

fn write_new_file(dest: &Path, rel: &Path, content: &[u8]) -> std::io::Result<()> {
    let target = dest.join(rel);
    if let Some(parent) = target.parent() {
        // Directories only ever come from here; a pre-existing symlink in
        // the path would make create_dir_all or create_new fail, not follow.
        std::fs::create_dir_all(parent)?;
        if std::fs::symlink_metadata(parent)?.file_type().is_symlink() {
            return Err(std::io::Error::other("symlinked directory"));
        }
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&target)?;
    f.write_all(content)
}
