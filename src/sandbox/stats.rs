//! Resource figures of a run: the pure accumulator of stats readings and
//! the engine calls that take them.

use bollard::models::{ContainerStatsResponse, SystemInfoCgroupVersionEnum};
use bollard::query_parameters::StatsOptions;
use bollard::Docker;
use futures_util::StreamExt;
use std::time::Duration;

/// Resource use read from the Docker stats stream.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    pub memory_peak_bytes: u64,
    pub cpu_percent: f64,
    /// CPU time of everything in the container (ns), when read exactly.
    pub cpu_time_ns: u64,
    pub io_operations: u64,
    pub samples: u64,
}

/// Folds stats samples into [`Resources`]. Pure, so the arithmetic is tested
/// without an engine.
#[derive(Debug, Default)]
pub struct StatsAccumulator {
    first_cpu: Option<(u64, u64)>,
    last_cpu: Option<(u64, u64)>,
    online_cpus: u32,
    peak: u64,
    io_ops: u64,
    samples: u64,
    /// CPU time read from the cgroup files (exact, no system counter).
    cgroup_cpu_ns: Option<u64>,
}

impl StatsAccumulator {
    pub fn add(&mut self, s: &ContainerStatsResponse) {
        self.samples += 1;
        if let Some(mem) = &s.memory_stats {
            // cgroup v1 reports its own high-water mark; v2 only the current
            // usage, so the peak is the max of what was seen.
            let seen = mem.max_usage.unwrap_or(0).max(mem.usage.unwrap_or(0));
            self.peak = self.peak.max(seen);
        }
        if let Some(cpu) = &s.cpu_stats {
            let total = cpu.cpu_usage.as_ref().and_then(|u| u.total_usage);
            if let (Some(total), Some(system)) = (total, cpu.system_cpu_usage) {
                self.first_cpu.get_or_insert((total, system));
                self.last_cpu = Some((total, system));
            }
            if let Some(n) = cpu.online_cpus.filter(|n| *n > 0) {
                self.online_cpus = n;
            }
        }
        if let Some(blk) = &s.blkio_stats {
            let ops: u64 = blk
                .io_serviced_recursive
                .iter()
                .flatten()
                .filter(|e| {
                    e.op.as_deref()
                        .is_none_or(|op| op.eq_ignore_ascii_case("total"))
                })
                .filter_map(|e| e.value)
                .sum();
            // Counters are cumulative; keep the largest reading.
            self.io_ops = self.io_ops.max(ops);
        }
    }

    /// A reading of the cgroup files (see `cgroup.rs`): the same counters
    /// as the stats API, read directly.
    pub fn add_cgroup(&mut self, r: &super::cgroup::CgroupReading) {
        self.samples += 1;
        self.peak = self.peak.max(r.memory_peak_bytes.unwrap_or(0));
        self.io_ops = self.io_ops.max(r.io_operations);
        self.cgroup_cpu_ns = Some(r.cpu_usage_ns);
    }

    /// CPU % = Δtotal_usage / Δsystem_usage × online_cpus × 100, over the run.
    ///
    /// With a single reading (the usual case: one exact read when the suite
    /// ends, see [`super::Sandbox::run`]) the window is the container's whole life,
    /// `alive`: its CPU counter started at 0 with the container, and the
    /// host's `system_cpu_usage` grows by `alive × online_cpus` over that
    /// time, so the formula becomes total_usage / alive × 100.
    pub fn finish(&self, alive: Duration) -> Resources {
        let cpus = f64::from(self.online_cpus.max(1));
        let cpu_percent = match (self.first_cpu, self.last_cpu) {
            // The cgroup's counter started at 0 with the container: over
            // its life the formula is usage / alive × 100.
            _ if self.cgroup_cpu_ns.is_some() && !alive.is_zero() => {
                self.cgroup_cpu_ns.unwrap_or(0) as f64 / alive.as_nanos() as f64 * 100.0
            }
            (Some((t0, s0)), Some((t1, s1))) if s1 > s0 => {
                (t1.saturating_sub(t0)) as f64 / (s1 - s0) as f64 * cpus * 100.0
            }
            (_, Some((t1, _))) if !alive.is_zero() => t1 as f64 / alive.as_nanos() as f64 * 100.0,
            _ => 0.0,
        };
        let cpu_time_ns = self
            .cgroup_cpu_ns
            .or(self.last_cpu.map(|(total, _)| total))
            .unwrap_or(0);
        Resources {
            memory_peak_bytes: self.peak,
            cpu_percent,
            cpu_time_ns,
            io_operations: self.io_ops,
            samples: self.samples,
        }
    }
}

/// Whether the engine's cgroups lack a memory high-water mark (cgroup v2),
/// so the peak must be sampled during the run. Asked once per process.
pub(super) async fn needs_sampling(docker: &Docker) -> bool {
    static CGROUP_V2: tokio::sync::OnceCell<bool> = tokio::sync::OnceCell::const_new();
    *CGROUP_V2
        .get_or_init(|| async {
            docker
                .info()
                .await
                .is_ok_and(|info| info.cgroup_version == Some(SystemInfoCgroupVersionEnum::_2))
        })
        .await
}

/// Samples resource use every `every` until told to stop (cgroup v2 only).
pub(super) async fn sample_stats(
    docker: Docker,
    id: String,
    every: Duration,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> StatsAccumulator {
    let mut acc = StatsAccumulator::default();
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = ticks.tick() => match stats_once(&docker, &id).await {
                Some(s) => acc.add(&s),
                None => break,
            },
        }
    }
    acc
}

/// One stats reading, without the engine's wait for a previous sample;
/// `None` when the container has no cgroup any more.
pub(super) async fn stats_once(docker: &Docker, id: &str) -> Option<ContainerStatsResponse> {
    let mut stream = docker.stats(
        id,
        Some(StatsOptions {
            stream: false,
            one_shot: true,
        }),
    );
    match stream.next().await {
        Some(Ok(s)) if has_memory_figures(&s) => Some(s),
        _ => None,
    }
}

/// A stopped container reports samples without memory figures.
fn has_memory_figures(s: &ContainerStatsResponse) -> bool {
    s.memory_stats.as_ref().and_then(|m| m.usage).is_some()
}
