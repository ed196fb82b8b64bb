//! Packing a tree into the snapshot tarball (files, links, submodules).

use crate::errors::{GenesisError, Result};
use flate2::write::GzEncoder;
use flate2::Compression;
use git2::{ObjectType, Oid, Repository, Tree};
use std::fs;
use std::io::Write;
use std::path::Path;

use super::*;

pub(super) fn write_tarball(
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
