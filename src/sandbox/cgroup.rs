//! Exact resource figures straight from the container's cgroup files, the
//! way cAdvisor reads them, when the engine runs on this host.
//!
//! Why: the stats API of Docker Engine 20.10 answers every read but the
//! first at its collector's next one-second tick, even with `one-shot`, so
//! one exact read at the end of a run cost up to a second. The kernel's
//! counters behind that API are files: read directly they are the same
//! numbers, at once. The engine stays the authority on *which* cgroup: the
//! container's init PID comes from `inspect`, its cgroup paths from
//! `/proc/PID/cgroup`, and a path that does not name the container's id is
//! not trusted (a PID of another namespace, a remote engine). Whenever the
//! files cannot be used, the caller falls back to the stats API.
//!
//! Files read (cgroupfs and systemd layouts alike, since the path comes
//! from `/proc`):
//! - cgroup v1: `memory.max_usage_in_bytes` (the kernel's high-water
//!   mark), `cpuacct.usage` (ns), `blkio.throttle.io_serviced` (`Total`).
//! - cgroup v2: `memory.peak` (kernels from 5.19; without it there is no
//!   peak here and the run samples through the stats API as before),
//!   `cpu.stat` `usage_usec`, `io.stat` `rios` + `wios`.

use std::path::{Path, PathBuf};

/// The mount point of the cgroup hierarchies.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Where one container's counters are.
#[derive(Debug, Clone, PartialEq)]
pub enum CgroupFiles {
    V1 {
        memory: PathBuf,
        cpuacct: PathBuf,
        blkio: PathBuf,
    },
    V2 {
        dir: PathBuf,
    },
}

/// One reading of the counters.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CgroupReading {
    /// The kernel's memory high-water mark; None where the kernel keeps none.
    pub memory_peak_bytes: Option<u64>,
    pub cpu_usage_ns: u64,
    pub io_operations: u64,
}

/// Whether the engine runs on this host: `DOCKER_HOST` unset or a unix
/// socket (a TCP or SSH engine's cgroups are on another machine).
pub fn engine_is_local() -> bool {
    std::env::var("DOCKER_HOST").map_or(true, |h| h.is_empty() || h.starts_with("unix://"))
}

/// The cgroup files of the process `pid`, if they exist here and belong to
/// the container `container_id`.
pub fn locate(pid: i64, container_id: &str) -> Option<CgroupFiles> {
    if pid <= 0 || container_id.len() < 12 {
        return None;
    }
    let table = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    locate_in(&table, container_id, Path::new(CGROUP_ROOT))
}

/// Whether process `pid`'s cgroup paths name the container (a PID that
/// was reused by another process would not).
pub fn names_container(pid: i64, container_id: &str) -> bool {
    container_id.len() >= 12
        && std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
            .is_ok_and(|table| table.contains(container_id))
}

/// [`locate`] on the text of `/proc/PID/cgroup` (pure, for tests).
pub fn locate_in(table: &str, container_id: &str, root: &Path) -> Option<CgroupFiles> {
    let mut v1 = std::collections::HashMap::new();
    let mut unified = None;
    for line in table.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        if !path.contains(container_id) {
            continue;
        }
        let rel = path.trim_start_matches('/');
        if controllers.is_empty() {
            unified = Some(root.join(rel));
        }
        for controller in controllers.split(',') {
            v1.insert(controller.to_owned(), root.join(controller).join(rel));
        }
    }
    let found = |c: &str| v1.get(c).filter(|p| p.is_dir()).cloned();
    if let (Some(memory), Some(cpuacct), Some(blkio)) =
        (found("memory"), found("cpuacct"), found("blkio"))
    {
        return Some(CgroupFiles::V1 {
            memory,
            cpuacct,
            blkio,
        });
    }
    unified
        .filter(|dir| dir.join("cpu.stat").is_file())
        .map(|dir| CgroupFiles::V2 { dir })
}

/// Reads the counters; None when a required file is gone or unreadable.
pub fn read(files: &CgroupFiles) -> Option<CgroupReading> {
    let text = |p: PathBuf| std::fs::read_to_string(p).ok();
    match files {
        CgroupFiles::V1 {
            memory,
            cpuacct,
            blkio,
        } => Some(CgroupReading {
            memory_peak_bytes: Some(number(&text(memory.join("memory.max_usage_in_bytes"))?)?),
            cpu_usage_ns: number(&text(cpuacct.join("cpuacct.usage"))?)?,
            io_operations: v1_io_total(
                &text(blkio.join("blkio.throttle.io_serviced")).unwrap_or_default(),
            ),
        }),
        CgroupFiles::V2 { dir } => Some(CgroupReading {
            memory_peak_bytes: text(dir.join("memory.peak")).and_then(|t| number(&t)),
            cpu_usage_ns: keyed(&text(dir.join("cpu.stat"))?, "usage_usec")?.saturating_mul(1000),
            io_operations: v2_io_total(&text(dir.join("io.stat")).unwrap_or_default()),
        }),
    }
}

fn number(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// `key value` lines (cpu.stat).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| number(v))
}

/// `blkio.throttle.io_serviced`: per-device lines, then `Total N`.
fn v1_io_total(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.strip_prefix("Total "))
        .filter_map(number)
        .sum()
}

/// `io.stat`: `MAJ:MIN rbytes=.. wbytes=.. rios=N wios=M ...` per device.
fn v2_io_total(text: &str) -> u64 {
    text.split_whitespace()
        .filter_map(|field| {
            field
                .strip_prefix("rios=")
                .or_else(|| field.strip_prefix("wios="))
        })
        .filter_map(number)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "a65c89c3eb30ed8b116c97557d3e99342c07a18efdf3441b96207de18ffd2e42";

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (path, text) in files {
            let p = dir.path().join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        dir
    }

    #[test]
    fn cgroup_v1_cgroupfs_layout_is_read_exactly() {
        let root = tree(&[
            (
                &format!("memory/docker/{ID}/memory.max_usage_in_bytes"),
                "3829760\n",
            ),
            (&format!("cpuacct/docker/{ID}/cpuacct.usage"), "34313965\n"),
            (
                &format!("blkio/docker/{ID}/blkio.throttle.io_serviced"),
                "8:0 Read 3\n8:0 Write 4\n8:0 Total 7\nTotal 7\n",
            ),
        ]);
        let table = format!(
            "12:blkio:/docker/{ID}\n4:memory:/docker/{ID}\n2:cpu,cpuacct:/docker/{ID}\n0::/docker/{ID}\n"
        );
        let files = locate_in(&table, ID, root.path()).unwrap();
        assert_eq!(
            read(&files).unwrap(),
            CgroupReading {
                memory_peak_bytes: Some(3_829_760),
                cpu_usage_ns: 34_313_965,
                io_operations: 7,
            }
        );
    }

    #[test]
    fn cgroup_v2_systemd_layout_is_read_and_a_missing_peak_is_none() {
        let scope = format!("system.slice/docker-{ID}.scope");
        let root = tree(&[
            (
                &format!("{scope}/cpu.stat"),
                "usage_usec 1500\nuser_usec 1000\n",
            ),
            (
                &format!("{scope}/io.stat"),
                "8:0 rbytes=4096 wbytes=0 rios=2 wios=5 dbytes=0 dios=0\n",
            ),
        ]);
        let table = format!("0::/{scope}\n");
        let files = locate_in(&table, ID, root.path()).unwrap();
        let reading = read(&files).unwrap();
        assert_eq!(reading.cpu_usage_ns, 1_500_000);
        assert_eq!(reading.io_operations, 7);
        assert_eq!(reading.memory_peak_bytes, None);
        std::fs::write(root.path().join(&scope).join("memory.peak"), "52428800\n").unwrap();
        assert_eq!(read(&files).unwrap().memory_peak_bytes, Some(52_428_800));
    }

    #[test]
    fn a_cgroup_of_another_container_or_none_is_not_trusted() {
        let root = tree(&[(
            &format!("memory/docker/{ID}/memory.max_usage_in_bytes"),
            "1\n",
        )]);
        let other = "b".repeat(64);
        assert_eq!(
            locate_in(&format!("4:memory:/docker/{other}\n"), ID, root.path()),
            None
        );
        assert_eq!(locate_in("", ID, root.path()), None);
        assert_eq!(locate(0, ID), None);
    }
}
