//! Sandboxes: one hardened Docker container per test run, driven through
//! the Docker API (bollard), never the CLI.
//!
//! Lifecycle, in order, each step for a reason:
//! 1. **create** with the risk level's limits (NanoCpus, Memory = MemorySwap so
//!    there is no swap, PidsLimit, no network), CapDrop ALL, no-new-privileges,
//!    a non-root user, the configured OCI runtime (runc or gVisor's runsc),
//!    the engine's own log capped at 1 MB (output is taken from the attach
//!    stream and capped here, so a flood cannot fill Docker's disk), and
//!    labels naming the experiment, role and genesis home so a restarted
//!    genesis can find and reap its containers. With a disk cap (`disk.rs`)
//!    the root is read-only and a file system of the run's own, of exactly
//!    `disk_mb`, is bind-mounted at `/workspace`, `/tmp`, `/var/tmp` and
//!    `/genesis/out`; without one, `/tmp` is a capped tmpfs.
//! 2. **upload** the skeleton (`/workspace`, `/genesis/out` owned by the
//!    sandbox user; a disk has them already) and the snapshot tarballs
//!    through the archive API *before* start: genesis never touches what a
//!    container wrote through the host, and an upload into a running
//!    container's tmpfs would silently miss it.
//! 3. **start, exec, wait**: the container's own process idles; the suite
//!    runs as an attached exec in the same cgroup, waited for with the
//!    effective timeout. Stats are read once after the suite, while the
//!    cgroup still exists, so the cumulative counters are exact however
//!    short the run (and sampled during it on cgroup v2, which keeps no
//!    memory high-water mark).
//! 4. **kill, inspect** for `OOMKilled`.
//! 5. **download** `/genesis/out` after the container stopped; only regular
//!    files with plain relative names are kept, symlinks and the like are
//!    dropped unread (a container-made symlink must never be followed).
//! 6. **remove**, always: on success, failure, timeout, error and panic (the
//!    `Drop` of [`Sandbox`] removes a container that was not removed), and
//!    then release its disk.
//!
//! Engine failures are classified where they happen
//! ([`GenesisError::docker`]): what a retry may cure is
//! `Infrastructure`, which the runner retries in a fresh sandbox; a
//! container that stopped under its suite (only genesis kills it) is
//! infrastructure too, so an engine restart never becomes a verdict.

use std::collections::HashMap;

use std::path::Path;
use std::time::Duration;

use bollard::query_parameters::{ListContainersOptions, RemoveContainerOptions};
use bollard::Docker;

use crate::errors::engine::classify;
use crate::errors::{GenesisError, Result};

mod cgroup;
pub use cgroup::engine_is_local;
use cgroup::names_container;
use cgroup::{locate as locate_cgroup, read as read_cgroup};
pub use cgroup::{CgroupFiles, CgroupReading};
mod disk;
mod holders;
pub use disk::{
    layer_in_use, release_all as release_scratch_disks, release_left_by_others, LayeredWorkspace,
    ScratchDisk,
};
mod spec;
pub use spec::*;
mod stats;
pub use stats::*;
mod log;
pub use log::*;
mod redact;
pub use redact::Redactor;
mod lifecycle;
pub use lifecycle::*;
mod steps;
mod transfer;
pub use transfer::*;
pub mod llm;

/// Label keys on every genesis container.
pub const LABEL_EXPERIMENT: &str = "genesis.experiment";
pub const LABEL_ROLE: &str = "genesis.role";
pub const LABEL_HOME: &str = "genesis.home";

/// Connects to the engine named by `DOCKER_HOST` (or the local socket) and
/// agrees on an API version both sides speak.
pub async fn connect() -> Result<Docker> {
    let docker = Docker::connect_with_defaults()
        .map_err(|e| GenesisError::sandbox("connecting to the Docker engine", e))?;
    docker
        .negotiate_version()
        .await
        .map_err(|e| GenesisError::sandbox("negotiating the Docker API version", e))
}

/// Which run of an experiment a container is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Baseline,
    Candidate,
    Rerun,
    /// Builds an environment (contract §2a).
    Install,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Baseline => "baseline",
            Role::Candidate => "candidate",
            Role::Rerun => "rerun",
            Role::Install => "install",
        }
    }
}

/// Bounds one engine call; the error says which call and how long it had.
pub(crate) async fn within<T>(
    limit: Duration,
    what: &str,
    fut: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(limit, fut).await.unwrap_or_else(|_| {
        Err(GenesisError::infrastructure(
            what.to_string(),
            format!(
                "no answer from the Docker engine within {} ms ([sandbox] docker_timeout_ms)",
                limit.as_millis()
            ),
        ))
    })
}

pub async fn remove_container(docker: &Docker, id: &str) -> Result<()> {
    let options = RemoveContainerOptions {
        force: true,
        v: true,
        ..Default::default()
    };
    match docker.remove_container(id, Some(options)).await {
        Ok(()) => Ok(()),
        Err(e) if classify(&e).is_absent() => Ok(()),
        Err(e) => Err(GenesisError::docker(format!("removing container {id}"), e)),
    }
}

/// Containers carrying genesis labels, optionally only one home's or one experiment's.
pub async fn labelled_containers(
    docker: &Docker,
    home_label: Option<&str>,
    experiment: Option<&str>,
) -> Result<Vec<(String, String)>> {
    let mut labels = vec![LABEL_EXPERIMENT.to_string()];
    if let Some(h) = home_label {
        labels.push(format!("{LABEL_HOME}={h}"));
    }
    if let Some(e) = experiment {
        labels.push(format!("{LABEL_EXPERIMENT}={e}"));
    }
    containers_with_labels(docker, labels).await
}

/// `(container id, experiment)` of every container, running or not, that
/// carries all of `labels` (`KEY` or `KEY=VALUE`).
async fn containers_with_labels(
    docker: &Docker,
    labels: Vec<String>,
) -> Result<Vec<(String, String)>> {
    let options = ListContainersOptions {
        all: true,
        filters: Some(HashMap::from([("label".to_string(), labels)])),
        ..Default::default()
    };
    let list = docker
        .list_containers(Some(options))
        .await
        .map_err(|e| GenesisError::sandbox("listing genesis containers", e))?;
    Ok(list
        .into_iter()
        .filter_map(|c| {
            let exp = c.labels.as_ref()?.get(LABEL_EXPERIMENT)?.clone();
            Some((c.id?, exp))
        })
        .collect())
}

/// Waits until the engine answers a ping again (after it restarted or its
/// socket went away), at most `limit`; the error says how long it waited.
pub async fn wait_for_engine(docker: &Docker, limit: Duration) -> Result<()> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let last_error = match docker.ping().await {
            Ok(_) => return Ok(()),
            Err(e) => e.to_string(),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(GenesisError::sandbox(
                "waiting for the Docker engine to come back",
                format!(
                    "no answer within {} ms ([sandbox] engine_wait_ms): {last_error}",
                    limit.as_millis()
                ),
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Removes what is left of one experiment's runs in `role` after an
/// infrastructure failure (best effort: the next cleanup reaps the rest).
pub async fn remove_runs_of(docker: &Docker, home_label: &str, experiment: &str, role: Role) {
    let labels = vec![
        format!("{LABEL_HOME}={home_label}"),
        format!("{LABEL_EXPERIMENT}={experiment}"),
        format!("{LABEL_ROLE}={}", role.as_str()),
    ];
    if let Ok(list) = containers_with_labels(docker, labels).await {
        for (id, _) in list {
            let _ = remove_container(docker, &id).await;
        }
    }
}

/// Label value for containers of one `GENESIS_HOME`.
pub fn home_label(home: &Path) -> String {
    let digest = <sha2::Sha256 as sha2::Digest>::digest(home.display().to_string().as_bytes());
    crate::contract::hex_digest(&digest)[..16].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::time::Duration;

    use bollard::models::ContainerStatsResponse;

    use bollard::models::{ContainerCpuStats, ContainerCpuUsage, ContainerMemoryStats};

    fn sample(total: u64, system: u64, mem: u64, max: Option<u64>) -> ContainerStatsResponse {
        ContainerStatsResponse {
            cpu_stats: Some(ContainerCpuStats {
                cpu_usage: Some(ContainerCpuUsage {
                    total_usage: Some(total),
                    ..Default::default()
                }),
                system_cpu_usage: Some(system),
                online_cpus: Some(2),
                ..Default::default()
            }),
            memory_stats: Some(ContainerMemoryStats {
                usage: Some(mem),
                max_usage: max,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn cpu_percent_is_delta_over_delta_times_cpus() {
        let mut acc = StatsAccumulator::default();
        acc.add(&sample(1_000, 10_000, 5, None));
        acc.add(&sample(3_000, 14_000, 9, None));
        let r = acc.finish(Duration::ZERO);
        // (2000 / 4000) * 2 * 100
        assert!((r.cpu_percent - 100.0).abs() < 1e-9);
        assert_eq!(r.memory_peak_bytes, 9);
    }

    #[test]
    fn one_reading_measures_cpu_over_the_containers_life() {
        let mut acc = StatsAccumulator::default();
        // 30 ms of CPU time in a container alive for 120 ms: 25 %.
        acc.add(&sample(30_000_000, 999_000_000_000, 5, Some(7)));
        let r = acc.finish(Duration::from_millis(120));
        assert!((r.cpu_percent - 25.0).abs() < 1e-9, "{}", r.cpu_percent);
        assert_eq!(r.memory_peak_bytes, 7);
        assert_eq!(
            StatsAccumulator::default()
                .finish(Duration::from_millis(5))
                .cpu_percent,
            0.0
        );
    }

    #[test]
    fn v1_max_usage_wins_over_samples() {
        let mut acc = StatsAccumulator::default();
        acc.add(&sample(0, 1, 5, Some(50)));
        acc.add(&sample(0, 2, 7, Some(50)));
        assert_eq!(acc.finish(Duration::ZERO).memory_peak_bytes, 50);
    }

    #[test]
    fn stdout_and_stderr_interleave_by_whole_lines() {
        let mut out = Vec::new();
        let mut joiner = log::LineJoiner::default();
        let mut push = |j: &mut log::LineJoiner, which, chunk: &str| {
            j.push(which, chunk.as_bytes(), |w| {
                out.push(String::from_utf8(w.to_vec()).unwrap());
                Ok(())
            })
            .unwrap()
        };
        push(&mut joiner, 0, "test a ... ");
        push(&mut joiner, 1, "     Running tests/b.rs\n");
        push(&mut joiner, 0, "ok\ntest b");
        push(&mut joiner, 0, " ... ok\n");
        joiner
            .finish(|w| {
                out.push(String::from_utf8(w.to_vec()).unwrap());
                Ok(())
            })
            .unwrap();
        assert_eq!(
            out.concat(),
            "     Running tests/b.rs\ntest a ... ok\ntest b ... ok\n"
        );
    }

    #[test]
    fn capped_log_keeps_head_and_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = CappedLog::create(&dir.path().join("log"), 10).unwrap();
        log.write(bytes::Bytes::from_static(b"abcdefghij")).unwrap();
        log.write(bytes::Bytes::from_static(b"klm")).unwrap();
        log.write(bytes::Bytes::from_static(b"nopqrst")).unwrap();
        let s = log.finish().unwrap();
        assert_eq!(s.total_bytes, 20);
        assert_eq!(s.cut_bytes, 10);
        assert!(s.text.starts_with("abcde"));
        assert!(s.text.ends_with("pqrst"));
        assert!(s.text.contains("10 bytes of output cut"));
    }

    #[test]
    fn oom_rule() {
        let mut o = RunOutcome {
            exit_code: 137,
            ..Default::default()
        };
        assert!(!o.is_oom(256), "137 alone is only SIGKILL");
        o.resources.memory_peak_bytes = 256 * 1024 * 1024;
        assert!(o.is_oom(256));
        o = RunOutcome {
            oom_killed: true,
            ..Default::default()
        };
        assert!(o.is_oom(256));
    }

    #[test]
    fn extraction_drops_links_and_escapes() {
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |path: &str, kind: tar::EntryType, data: &[u8], link: Option<&str>| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            match link {
                Some(l) => b.append_link(&mut h, path, l).unwrap(),
                None => b.append_data(&mut h, path, data).unwrap(),
            }
        };
        add("out/", tar::EntryType::Directory, b"", None);
        add("out/junit.xml", tar::EntryType::Regular, b"<x/>", None);
        add(
            "out/evil",
            tar::EntryType::Symlink,
            b"",
            Some("/etc/passwd"),
        );
        add("out/sub/r.txt", tar::EntryType::Regular, b"ok", None);
        add("out/evil/x", tar::EntryType::Regular, b"through link", None);
        let raw = b.into_inner().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let files = extract_regular_files(&raw, dir.path()).unwrap();
        let names: Vec<_> = files.iter().map(|(n, _)| n.as_str()).collect();
        // The symlink was never created, so `evil/x` became a plain directory and file.
        assert_eq!(names, ["evil/x", "junit.xml", "sub/r.txt"]);
        let evil = std::fs::symlink_metadata(dir.path().join("evil")).unwrap();
        assert!(evil.is_dir() && !evil.file_type().is_symlink());
    }
}
