//! The soak: many experiments of mixed kinds through two `genesis serve`
//! hosts on one JetStream, while faults are dealt from a seeded schedule;
//! then every answer is checked against what a fault-free genesis says.
//!
//! Shape (see each module):
//! - `world`: nats-server (JetStream), a private Docker engine, two hosts
//!   (`host-a`, `host-b`) each with its home on a loop-mounted ext4;
//! - `workload`: the seeded mix (pass, regression, timeout, OOM, a patch
//!   that does not apply, a duplicate request, a conflicting id) and each
//!   message's fault-free answer;
//! - `faults`: kill -9 of a serve, NATS restart, engine restart, a full
//!   home, SIGTERM drain, one about every `GENESIS_SOAK_FAULT_SECONDS`;
//! - `drive`: sending (retried until JetStream has it) and the answer stream;
//! - `audit`: exactly once, equal answers, settled, `doctor`, PostgreSQL,
//!   nothing left behind.
//!
//! Run with `cargo bench --profile dev --bench soak` as root (loop mounts,
//! a second dockerd). `GENESIS_SOAK_REQUESTS` (default 500) experiments,
//! `GENESIS_SOAK_SEED` (default 1), `GENESIS_SOAK_FAULT_SECONDS` (15),
//! `GENESIS_SOAK_WINDOW` (experiments unanswered at a time, 8),
//! `GENESIS_SOAK_PACE_MS` (experiment i is sent not before i × this, 1440:
//! 500 experiments over 12 minutes, for about 48 faults),
//! `GENESIS_SOAK_STALL_SECONDS` (give up waiting after this long without
//! an answer, 180; SIGTERM gives up at once, and the soak still tears
//! everything down). Prints one
//! table; exits 1 if anything was lost, answered twice, answered
//! differently or left behind.

#[path = "../../tests/support/mod.rs"]
mod support;

mod audit;
mod drive;
mod faults;
mod workload;
mod world;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use workload::Kind;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; there is nothing to filter.
    let count = env_or("GENESIS_SOAK_REQUESTS", 500) as usize;
    let seed = env_or("GENESIS_SOAK_SEED", 1);
    let interval = Duration::from_secs(env_or("GENESIS_SOAK_FAULT_SECONDS", 15));
    let window = env_or("GENESIS_SOAK_WINDOW", 8) as usize;
    let pace = Duration::from_millis(env_or("GENESIS_SOAK_PACE_MS", 1440));
    let stall = Duration::from_secs(env_or("GENESIS_SOAK_STALL_SECONDS", 180));
    let plan = workload::plan(count, seed);
    eprintln!("soak: {count} experiments, seed {seed}, a fault about every {interval:?}");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    drive::catch_signals(&rt);
    let mut world = world::World::start();
    let (_client, js) = rt.block_on(drive::connect(&world.nats.url()));
    let stop = AtomicBool::new(false);
    let started = Instant::now();
    let (sent, record) = std::thread::scope(|scope| {
        let world = &mut world;
        let stop = &stop;
        let faults = scope.spawn(move || faults::run(world, seed, interval, stop, started));
        let sent = rt.block_on(drive::drive(&js, &plan, window, pace, stall, seed));
        stop.store(true, Ordering::Relaxed);
        // A fault that could not be dealt (an engine that did not come
        // back) ends the faults, not the soak: it still audits and tears down.
        let record = faults.join().unwrap_or_else(|_| {
            eprintln!("soak: the fault thread failed; see above");
            faults::Record::default()
        });
        (sent, record)
    });
    let answered = started.elapsed();
    eprintln!(
        "soak: answers in after {:.1} s; settling",
        answered.as_secs_f64()
    );
    let settled = rt.block_on(audit::settle(&js, &world, Duration::from_secs(300)));
    let verdict = rt.block_on(audit::answers(&js, &plan, &sent));
    let mut problems: Vec<String> = record
        .done
        .iter()
        .filter_map(|d| {
            d.note.as_ref().map(|n| {
                format!(
                    "{} ({}) at {:.0} s, {:.1} s: {n}",
                    d.fault.name(),
                    d.target,
                    d.at.as_secs_f64(),
                    d.took.as_secs_f64()
                )
            })
        })
        .collect();
    problems.extend(settled.err());
    for host in &mut world.hosts {
        match host.terminate() {
            Some(s) if s.success() => {}
            other => problems.push(format!("{} did not drain cleanly: {other:?}", host.name)),
        }
    }
    for host in &world.hosts {
        if let Some(out) = audit::doctor(host) {
            problems.push(format!("doctor on {}:\n{out}", host.name));
        }
    }
    let (records, unfinished) = audit::postgres(&world);
    let left = audit::leftovers(&mut world);
    let table = Table {
        plan: &plan,
        verdict: &verdict,
        record: &record,
        answered,
        records,
        unfinished,
        left: &left,
        problems: &problems,
    };
    println!("{}", table.render());
    let ok = verdict.lost.is_empty()
        && verdict.twice.is_empty()
        && verdict.differing.is_empty()
        && left.is_empty()
        && problems.is_empty()
        && records == count as u64
        && unfinished == 0;
    if !ok {
        for line in verdict
            .lost
            .iter()
            .map(|l| format!("lost: {l}"))
            .chain(verdict.twice.iter().map(|l| format!("twice: {l}")))
            .chain(verdict.differing.iter().map(|l| format!("differs: {l}")))
            .chain(left.iter().map(|l| format!("left: {l}")))
            .chain(problems.iter().cloned())
        {
            eprintln!("{line}");
        }
        // Keep the hosts' logs for a look; everything else goes.
        let keep = std::env::temp_dir().join(format!("genesis-soak-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&keep);
        for host in &world.hosts {
            let to = keep.join(format!("{}.log", host.name));
            let _ = std::fs::copy(&host.log, &to);
            eprintln!("{}'s log: {}", host.name, to.display());
        }
        drop(world);
        std::process::exit(1);
    }
}

/// The soak's one table.
struct Table<'a> {
    plan: &'a [workload::Experiment],
    verdict: &'a audit::Verdict,
    record: &'a faults::Record,
    answered: Duration,
    records: u64,
    unfinished: u64,
    left: &'a [String],
    problems: &'a [String],
}

impl Table<'_> {
    fn render(&self) -> String {
        let mut kinds: BTreeMap<Kind, usize> = BTreeMap::new();
        for e in self.plan {
            *kinds.entry(e.kind).or_default() += 1;
        }
        let kinds: Vec<String> = kinds
            .iter()
            .map(|(k, n)| format!("{} {n}", k.name()))
            .collect();
        let faults: Vec<String> = self
            .record
            .by_kind()
            .iter()
            .map(|(f, n)| format!("{} {n}", f.name()))
            .collect();
        let v = self.verdict;
        let pct = |p: usize| {
            v.latencies
                .get((v.latencies.len() * p / 100).min(v.latencies.len().saturating_sub(1)))
                .map_or(0.0, |d| d.as_secs_f64())
        };
        let rows = [
            (
                "date",
                chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
            ),
            ("machine", machine()),
            (
                "experiments",
                format!("{} ({})", self.plan.len(), kinds.join(", ")),
            ),
            ("requests (messages)", v.messages.to_string()),
            (
                "faults",
                format!("{} ({})", self.record.done.len(), faults.join(", ")),
            ),
            ("lost", v.lost.len().to_string()),
            ("answered twice", v.twice.len().to_string()),
            ("differing answers", v.differing.len().to_string()),
            (
                "wall time (all answered)",
                format!("{:.0} s", self.answered.as_secs_f64()),
            ),
            (
                "latency p50 / p99",
                format!("{:.1} s / {:.1} s", pct(50), pct(99)),
            ),
            (
                "left behind",
                format!("{} (containers, mounts, loop devices)", self.left.len()),
            ),
            (
                "postgres records",
                format!("{} ({} not final)", self.records, self.unfinished),
            ),
            (
                "doctor, drains",
                if self.problems.is_empty() {
                    "clean on both hosts".into()
                } else {
                    format!("{} problem(s)", self.problems.len())
                },
            ),
        ];
        let mut out = String::from("| soak | |\n|---|---|\n");
        for (name, value) in rows {
            out.push_str(&format!("| {name} | {value} |\n"));
        }
        out
    }
}

/// CPU model, cores and kernel, as the table's "machine".
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cpu}, {cores} cores, Linux {}", kernel.trim())
}
