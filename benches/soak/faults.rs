//! The fault schedule: from a seed, about every `interval` one fault, the
//! kinds dealt in shuffled rounds so each comes equally often:
//!
//! - `kill9`: `kill -9` of one host's `genesis serve`, started again at once;
//! - `nats`: `kill -9` of the nats-server, started again on the same port
//!   and JetStream store;
//! - `engine`: `kill -9` of the private dockerd and its containerd, and a
//!   fresh dockerd on the same roots;
//! - `disk_full`: one host's home file system filled to the last block,
//!   held a few seconds, then freed;
//! - `drain`: SIGTERM to one host (it drains and exits), started again.
//!
//! Faults run one at a time on the soak's own thread, until told to stop.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::workload::Rng;
use crate::world::World;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    Kill9,
    Nats,
    Engine,
    DiskFull,
    Drain,
}

impl Fault {
    pub const ALL: [Fault; 5] = [
        Fault::Kill9,
        Fault::Nats,
        Fault::Engine,
        Fault::DiskFull,
        Fault::Drain,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Kill9 => "kill -9 serve",
            Fault::Nats => "nats restart",
            Fault::Engine => "engine restart",
            Fault::DiskFull => "disk full",
            Fault::Drain => "SIGTERM drain",
        }
    }
}

/// One fault as it happened.
#[derive(Debug, Clone)]
pub struct Done {
    pub fault: Fault,
    pub target: String,
    pub at: Duration,
    pub took: Duration,
    /// Anything odd the fault saw (a drain that did not exit 0, ...).
    pub note: Option<String>,
}

/// What the fault thread did.
#[derive(Debug, Default)]
pub struct Record {
    pub done: Vec<Done>,
}

impl Record {
    pub fn by_kind(&self) -> BTreeMap<Fault, usize> {
        let mut out: BTreeMap<Fault, usize> = Fault::ALL.iter().map(|f| (*f, 0)).collect();
        for d in &self.done {
            *out.entry(d.fault).or_default() += 1;
        }
        out
    }
}

/// How long a filled disk stays full: a few seconds, seeded.
const FULL_MIN_MS: u64 = 3_000;
const FULL_SPREAD_MS: u64 = 5_000;

/// Deals faults every `interval` (± a quarter, seeded) until `stop`.
pub fn run(
    world: &mut World,
    seed: u64,
    interval: Duration,
    stop: &AtomicBool,
    started: Instant,
) -> Record {
    let mut rng = Rng::new(seed ^ 0xFA17);
    let mut record = Record::default();
    let mut deck: Vec<Fault> = Vec::new();
    let quarter = interval.as_millis() as u64 / 4;
    let mut next = Instant::now() + interval;
    loop {
        while Instant::now() < next {
            if stop.load(Ordering::Relaxed) {
                return record;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if deck.is_empty() {
            deck = Fault::ALL.to_vec();
            rng.shuffle(&mut deck);
        }
        let fault = deck.pop().unwrap_or(Fault::Kill9);
        let at = started.elapsed();
        let begun = Instant::now();
        let applied = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            apply(world, fault, &mut rng)
        }));
        let failed = applied.is_err();
        let (target, note) = applied.unwrap_or_else(|_| {
            (
                "?".into(),
                Some("the fault could not be dealt (see the panic above); no more faults".into()),
            )
        });
        let took = begun.elapsed();
        eprintln!(
            "soak: {:>6.1} s  {} ({target}) took {:.1} s{}",
            at.as_secs_f64(),
            fault.name(),
            took.as_secs_f64(),
            note.as_deref()
                .map(|n| format!(": {n}"))
                .unwrap_or_default()
        );
        record.done.push(Done {
            fault,
            target,
            at,
            took,
            note,
        });
        if failed {
            return record;
        }
        let jitter = rng.below(2 * quarter + 1);
        next = begun + interval - Duration::from_millis(quarter) + Duration::from_millis(jitter);
    }
}

/// Applies one fault; returns its target and a note on anything odd.
fn apply(world: &mut World, fault: Fault, rng: &mut Rng) -> (String, Option<String>) {
    let which = rng.below(world.hosts.len() as u64) as usize;
    match fault {
        Fault::Kill9 => {
            let host = &mut world.hosts[which];
            host.kill9();
            host.start();
            (host.name.clone(), None)
        }
        Fault::Nats => {
            world.nats.restart();
            ("nats-server".into(), None)
        }
        Fault::Engine => {
            world.engine.crash_and_restart();
            ("dockerd".into(), None)
        }
        Fault::DiskFull => {
            let host = &world.hosts[which];
            let filler = host.disk.fill();
            let hold = Duration::from_millis(FULL_MIN_MS + rng.below(FULL_SPREAD_MS));
            std::thread::sleep(hold);
            let freed = std::fs::remove_file(&filler);
            let note = freed.err().map(|e| format!("could not free: {e}"));
            (
                format!("{} for {:.1} s", host.name, hold.as_secs_f64()),
                note,
            )
        }
        Fault::Drain => {
            let host = &mut world.hosts[which];
            let status = host.terminate();
            let note = match status {
                Some(s) if s.success() => None,
                Some(s) => Some(format!("drain ended with {s}")),
                None => Some("did not exit within the drain time; killed".into()),
            };
            host.start();
            (host.name.clone(), note)
        }
    }
}
