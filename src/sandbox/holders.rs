//! Run disks held by containers the engine lost.
//!
//! Why: a container's processes see the run's disk through bind mounts in
//! their own mount namespace. Removing the container ends them, and
//! unmounting the disk in genesis's namespace then frees its loop device.
//! But an engine killed while it created a container (the soak's engine
//! crash) can leave that container's `runc init` alive and unknown to the
//! restarted engine: nobody removes it, its namespace keeps the disk
//! mounted, the loop device stays attached, and with it GENESIS_HOME's
//! file system can never be released. Only a container of this home ever
//! has the disk mounted, so when the device outlives genesis's own
//! unmount, the processes of other mount namespaces that still mount it
//! are killed, and the kernel frees the device.

use std::path::Path;
use std::time::{Duration, Instant};

/// How long the kernel may take to detach a loop device after its last
/// unmount before someone else is taken to hold it (it is immediate in
/// practice; this only absorbs a container's namespace being torn down).
const SETTLE: Duration = Duration::from_millis(500);

/// `MAJ:MIN` of the file system mounted at `mount`, from our mountinfo.
pub(super) fn device_of(mount: &Path) -> Option<String> {
    let wanted = mount.canonicalize().ok()?.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .ok()?
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .find(|f| f.len() > 4 && unescape(f[4]) == wanted)
        .map(|f| f[2].to_owned())
}

/// Whether the loop device `majmin` is still attached after `settle`.
fn attached(majmin: &str, settle: Duration) -> bool {
    let backing = format!("/sys/dev/block/{majmin}/loop/backing_file");
    let deadline = Instant::now() + settle;
    while Path::new(&backing).exists() {
        if Instant::now() >= deadline {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// After genesis unmounted a run's disk: frees its loop device from the
/// processes of other mount namespaces that still mount it (see the
/// module doc). Returns the processes killed.
pub(super) fn free(majmin: &str) -> Vec<i32> {
    if !majmin.starts_with("7:") || !attached(majmin, SETTLE) {
        return Vec::new();
    }
    let ours = std::fs::read_link("/proc/self/ns/mnt").ok();
    let holders: Vec<i32> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).ok() != ours)
        .filter(|pid| mounts_device(*pid, majmin))
        .collect();
    for pid in &holders {
        // SAFETY: kill(2); the process mounts this home's run disk, so it
        // is a process of one of this home's containers.
        unsafe { libc::kill(*pid, libc::SIGKILL) };
    }
    if !holders.is_empty() {
        tracing::warn!(device = majmin, processes = ?holders, "killed processes of a container the engine lost, which held a run's disk");
        attached(majmin, SETTLE);
    }
    holders
}

fn mounts_device(pid: i32, majmin: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
        .map(|info| info.lines().any(|l| l.split(' ').nth(2) == Some(majmin)))
        .unwrap_or(false)
}

/// mountinfo writes space, tab, newline and backslash as octal escapes.
pub(super) fn unescape(field: &str) -> String {
    field
        .replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
}
