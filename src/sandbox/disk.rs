//! The disk cap (`[limits.*] disk_mb`): every run writes into a file system
//! of its own, of exactly that size, and nowhere else.
//!
//! Why this mechanism: the engine's storage driver here is fuse-overlayfs,
//! which has no per-container quota (`--storage-opt size` needs overlay2 on
//! xfs with project quotas), and watching a container's upper directory
//! from outside caps nothing: a fast writer is gigabytes past the limit
//! before the next look. A file system of fixed size is a cap the kernel
//! enforces on every write: the writer gets `ENOSPC` at the limit, and the
//! host loses at most `disk_mb` (the image file is sparse, so an idle run
//! costs almost nothing).
//!
//! Shape of one run's disk, under `GENESIS_HOME/scratch/NAME/`:
//! - `disk.img`: a sparse file of `disk_mb`, formatted ext4 without a
//!   journal or reserved blocks (a throwaway file system needs neither);
//! - `mnt/`: where it is loop-mounted (`nosuid,nodev`), holding `workspace/`,
//!   `tmp/` and `out/`, bind-mounted at `/workspace`, `/tmp` (and
//!   `/var/tmp`) and `/genesis/out`. The container's root is read-only, so
//!   these are the only places a run can write.
//!
//! Files still go in and out through the engine's archive API (before start,
//! after stop), never by genesis touching the mount while a container could:
//! genesis only creates the three empty directories on a fresh file system
//! and checks its free space after the container stopped.
//!
//! A *layered* workspace (see `snapshot/layer.rs`) is an overlay mounted at
//! `NAME/workspace`: the commit's layers as read-only lower directories, and
//! `upper/` and `work/` on the disk, so what the run writes (and copy-ups of
//! what it changes) count against the cap, and the layer is shared by every
//! run of that commit. A candidate's delta is written through the overlay
//! right after mounting, before any container exists.
//!
//! Needs root and loop devices on the engine's host (a local engine);
//! `doctor` checks, and `disk_mb = 0` runs without the cap.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::errors::{GenesisError, Result};
use crate::snapshot::{Owner, TreeDelta};

use super::holders::unescape;

/// Where the run's directories appear inside the container.
pub const WORKSPACE: &str = "/workspace";
pub const OUT: &str = "/genesis/out";
pub const TMP_DIRS: [&str; 2] = ["/tmp", "/var/tmp"];

/// A workspace made of snapshot layers instead of uploads.
#[derive(Debug, Clone, Default)]
pub struct LayeredWorkspace {
    /// The repos' layer directories (each holds `NAME/`), merged as the
    /// overlay's lower directories.
    pub lowers: Vec<PathBuf>,
    /// The candidate's changes, applied before the container exists.
    pub deltas: Vec<TreeDelta>,
}

impl LayeredWorkspace {
    /// Bytes the deltas carry in (all a layered run receives).
    pub fn delta_bytes(&self) -> u64 {
        self.deltas.iter().map(TreeDelta::bytes).sum()
    }
}

/// One run's mounted file system; unmounted and deleted by
/// [`ScratchDisk::release`] (or on drop).
#[derive(Debug)]
pub struct ScratchDisk {
    root: PathBuf,
    size_mb: u64,
    /// Whether `/workspace` is the overlay at `root/workspace`.
    layered: bool,
    released: bool,
}

impl ScratchDisk {
    /// Makes, formats and mounts a disk of `size_mb` at `root` (which must
    /// not exist yet), with the run's directories owned by `owner`.
    pub fn create(
        root: &Path,
        size_mb: u64,
        owner: Owner,
        layered: Option<&LayeredWorkspace>,
    ) -> Result<ScratchDisk> {
        std::fs::create_dir_all(root.join("mnt"))
            .map_err(|e| GenesisError::io(format!("creating {}", root.display()), e))?;
        let disk = ScratchDisk {
            root: root.to_path_buf(),
            size_mb,
            layered: layered.is_some(),
            released: false,
        };
        let image = disk.image();
        let file = std::fs::File::create(&image)
            .map_err(|e| GenesisError::io(format!("creating {}", image.display()), e))?;
        file.set_len(size_mb.saturating_mul(1024 * 1024))
            .map_err(|e| GenesisError::io(format!("sizing {}", image.display()), e))?;
        drop(file);
        run_tool(
            Command::new("mkfs.ext4")
                .args(["-q", "-F", "-m", "0", "-O", "^has_journal"])
                .args(["-E", "nodiscard,lazy_itable_init=1"])
                .arg(&image),
            "formatting the run's disk",
        )?;
        run_tool(
            Command::new("mount")
                .args(["-o", "loop,nosuid,nodev", "-t", "ext4"])
                .arg(&image)
                .arg(disk.mount_point()),
            "mounting the run's disk",
        )?;
        disk.make_dirs(owner)?;
        if let Some(layers) = layered {
            disk.mount_layers(layers, owner)?;
        }
        Ok(disk)
    }

    /// Mounts the overlay of `layers` at `root/workspace` (upper and work
    /// directories on the disk) and applies the deltas through it.
    fn mount_layers(&self, layers: &LayeredWorkspace, owner: Owner) -> Result<()> {
        let mnt = self.mount_point();
        let (upper, work, merged) = (mnt.join("upper"), mnt.join("work"), self.workspace());
        for dir in [&upper, &work, &merged] {
            std::fs::create_dir(dir)
                .map_err(|e| GenesisError::io(format!("creating {}", dir.display()), e))?;
        }
        chown(&upper, owner)
            .map_err(|e| GenesisError::io(format!("preparing {}", upper.display()), e))?;
        let lowers = layers
            .lowers
            .iter()
            .map(|l| overlay_path(l))
            .collect::<Result<Vec<_>>>()?;
        // An overlay needs at least one lower: an empty one on the disk.
        let empty = mnt.join("empty");
        let lowers = if lowers.is_empty() {
            std::fs::create_dir(&empty)
                .map_err(|e| GenesisError::io(format!("creating {}", empty.display()), e))?;
            vec![overlay_path(&empty)?]
        } else {
            lowers
        };
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lowers.join(":"),
            overlay_path(&upper)?,
            overlay_path(&work)?
        );
        run_tool(
            Command::new("mount")
                .args(["-t", "overlay", "overlay", "-o"])
                .arg(options)
                .arg(&merged),
            "mounting the run's layered workspace",
        )?;
        for delta in &layers.deltas {
            delta.apply(&merged, owner)?;
        }
        Ok(())
    }

    fn workspace(&self) -> PathBuf {
        self.root.join("workspace")
    }

    fn image(&self) -> PathBuf {
        self.root.join("disk.img")
    }

    fn mount_point(&self) -> PathBuf {
        self.root.join("mnt")
    }

    pub fn size_mb(&self) -> u64 {
        self.size_mb
    }

    /// The run's directories on a fresh file system: nothing of a
    /// container's has been there yet.
    fn make_dirs(&self, owner: Owner) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let mnt = self.mount_point();
        let _ = std::fs::remove_dir_all(mnt.join("lost+found"));
        for (dir, mode) in [("workspace", 0o755), ("out", 0o755), ("tmp", 0o1777)] {
            let path = mnt.join(dir);
            std::fs::create_dir(&path)
                .and_then(|_| {
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                })
                .and_then(|_| chown(&path, owner))
                .map_err(|e| GenesisError::io(format!("preparing {}", path.display()), e))?;
        }
        Ok(())
    }

    /// `(host path, container path)` of each bind mount.
    pub fn binds(&self) -> Vec<(String, String)> {
        let mnt = self.mount_point();
        let host = |d: &str| mnt.join(d).display().to_string();
        let workspace = if self.layered {
            self.workspace().display().to_string()
        } else {
            host("workspace")
        };
        let mut binds = vec![
            (workspace, WORKSPACE.to_string()),
            (host("out"), OUT.to_string()),
        ];
        binds.extend(TMP_DIRS.iter().map(|t| (host("tmp"), t.to_string())));
        binds
    }

    /// Whether the file system is (all but) full: fewer free bytes than
    /// one percent of it (at least 1 MiB), or no free inodes. Read after the
    /// container stopped, to tell `disk_limit` from an ordinary failure.
    pub fn is_full(&self) -> bool {
        let Ok(stat) = nix_statvfs(&self.mount_point()) else {
            return false;
        };
        let slack = (self.size_mb * 1024 * 1024 / 100).max(1024 * 1024);
        stat.free_bytes < slack || stat.free_inodes == 0
    }

    /// Whether the run left `/genesis/out` empty. Reads only the directory's
    /// own entries (no entry is opened or followed); an unreadable
    /// directory counts as not empty, so the archive API decides.
    pub fn out_is_empty(&self) -> bool {
        std::fs::read_dir(self.mount_point().join("out"))
            .map(|mut entries| entries.next().is_none())
            .unwrap_or(false)
    }

    /// Unmounts and deletes the disk. Called after the container is removed.
    pub fn release(mut self) -> Result<()> {
        self.released = true;
        release_at(&self.root)
    }
}

impl Drop for ScratchDisk {
    fn drop(&mut self) {
        if !self.released {
            let _ = release_at(&self.root);
        }
    }
}

/// Unmounts (when mounted) and removes one run's disk directory: the
/// layered workspace first, then the disk under it.
fn release_at(root: &Path) -> Result<()> {
    let device = super::holders::device_of(&root.join("mnt"));
    for mount in [root.join("workspace"), root.join("mnt")] {
        if is_mount_point(&mount) {
            unmount(&mount)?;
        }
    }
    // A container the engine lost may still hold it (see `holders.rs`).
    if let Some(device) = device {
        super::holders::free(&device);
    }
    std::fs::remove_dir_all(root)
        .map_err(|e| GenesisError::io(format!("removing {}", root.display()), e))
}

fn unmount(mount: &Path) -> Result<()> {
    let plain = Command::new("umount").arg(mount).output();
    if !plain.map(|o| o.status.success()).unwrap_or(false) {
        // Busy (a container the engine has not let go of yet): detach
        // now, the kernel frees it when the last user goes.
        run_tool(
            Command::new("umount").arg("-l").arg(mount),
            "unmounting a run's disk",
        )?;
    }
    Ok(())
}

/// A path as an overlay mount option takes it: absolute, and without the
/// characters that separate its options.
fn overlay_path(path: &Path) -> Result<String> {
    let text = path.display().to_string();
    if !path.is_absolute() || text.contains([':', ',', '\\']) {
        return Err(GenesisError::sandbox(
            "mounting the run's layered workspace",
            format!(
                "{text} cannot be an overlay directory (it must be absolute, without ':', ',' \
                 or '\\'); move GENESIS_HOME or set [sandbox] layers = false"
            ),
        ));
    }
    Ok(text)
}

/// Whether some mounted overlay uses `layer` as a lower directory (a run
/// of this host has it in use, so the cleanup job must keep it).
pub fn layer_in_use(layer: &Path) -> bool {
    let wanted = layer.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|info| {
            info.lines()
                .filter(|l| l.contains(" - overlay "))
                .filter_map(|l| l.split("lowerdir=").nth(1))
                .filter_map(|rest| rest.split(',').next())
                .any(|lowers| lowers.split(':').any(|l| unescape(l) == wanted))
        })
        .unwrap_or(false)
}

/// Releases every disk under `scratch` (a dead process's leftovers; call
/// only when no run of this home is alive). Returns how many there were.
pub fn release_all(scratch: &Path) -> Result<usize> {
    let Ok(entries) = std::fs::read_dir(scratch) else {
        return Ok(0);
    };
    let mut released = 0;
    for entry in entries.flatten() {
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            release_at(&entry.path())?;
            released += 1;
        }
    }
    Ok(released)
}

/// Releases the disks another process of this home left for experiment
/// `id` (a run disk's directory is its container's name,
/// `genesis-ID-ROLE-PID-N`): for a process that took the experiment over
/// from a dead owner, once that owner's containers are gone. Its own
/// disks, and other experiments', are left alone.
pub fn release_left_by_others(scratch: &Path, id: &str) -> Result<usize> {
    let Ok(entries) = std::fs::read_dir(scratch) else {
        return Ok(0);
    };
    let prefix = format!("genesis-{id}-");
    let me = std::process::id().to_string();
    let mut released = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        // ROLE-PID-N: roles have no dash, so the PID is the middle field.
        let mut fields = rest.split('-');
        let (Some(_role), Some(pid), Some(_n), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if pid != me && entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            release_at(&entry.path())?;
            released += 1;
        }
    }
    Ok(released)
}

/// Whether `path` is a mount point, read from /proc/self/mountinfo (a
/// device comparison would miss a bind of the same file system).
fn is_mount_point(path: &Path) -> bool {
    let Ok(canonical) = path.canonicalize() else {
        return false;
    };
    let wanted = canonical.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|info| {
            info.lines()
                .filter_map(|l| l.split(' ').nth(4))
                .any(|mount| unescape(mount) == wanted)
        })
        .unwrap_or(false)
}

struct FsStat {
    free_bytes: u64,
    free_inodes: u64,
}

fn nix_statvfs(path: &Path) -> std::io::Result<FsStat> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is NUL-terminated and stat is a valid out-pointer.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(FsStat {
        free_bytes: stat.f_bavail as u64 * stat.f_frsize as u64,
        free_inodes: stat.f_favail as u64,
    })
}

fn chown(path: &Path, owner: Owner) -> std::io::Result<()> {
    let id = |n: u64| u32::try_from(n).map_err(|_| std::io::Error::other("uid/gid out of range"));
    std::os::unix::fs::chown(path, Some(id(owner.uid)?), Some(id(owner.gid)?))
}

/// Runs a host tool (mkfs, mount), naming it and its output on failure.
fn run_tool(command: &mut Command, what: &str) -> Result<()> {
    let program = command.get_program().to_string_lossy().into_owned();
    let output = command.output().map_err(|e| {
        GenesisError::sandbox(
            what,
            format!(
                "{program} could not be started ({e}); the disk cap ([limits.*] disk_mb) needs \
                 e2fsprogs and util-linux on the engine's host, or set disk_mb = 0"
            ),
        )
    })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    if stderr.contains("No space left on device") {
        // The disk image lives in GENESIS_HOME: a full home, which the
        // runner waits out in a service, not a broken sandbox.
        return Err(GenesisError::io(
            format!("{what} ({program}: {})", stderr.trim()),
            std::io::Error::from_raw_os_error(libc::ENOSPC),
        ));
    }
    Err(GenesisError::sandbox(
        what,
        format!(
            "{program} failed ({}): {}; the disk cap ([limits.*] disk_mb) needs root and loop \
             devices on the engine's host, or set disk_mb = 0",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape("/a\\040b\\134c"), "/a b\\c");
    }
}
