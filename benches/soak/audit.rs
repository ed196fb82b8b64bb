//! What the soak checks once the faults stopped: every request answered
//! exactly once and as a fault-free genesis would, nothing running or
//! pending, nothing left behind, `doctor` clean, and both homes' exports
//! in one PostgreSQL with one record per experiment.

use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use async_nats::jetstream;
use serde_json::Value;

use crate::drive::{all_answers, Sent, REPLY_PREFIX};
use crate::support::nats::consumer_backlog;
use crate::support::pg::PgCluster;
use crate::workload::{project, Expect, Experiment};
use crate::world::{loops_below, mounts_below, must, Host, World, ACK_WAIT_MS};

/// The answers, as checked against the plan.
#[derive(Debug, Default)]
pub struct Verdict {
    pub messages: usize,
    pub lost: Vec<String>,
    pub twice: Vec<String>,
    pub differing: Vec<String>,
    /// Reply latencies (first reply's server time − first send), sorted.
    pub latencies: Vec<Duration>,
}

/// Experiments a host holds queued or running (its store, read beside
/// the running serve).
fn busy(host: &Host) -> usize {
    ["queued", "running"]
        .iter()
        .map(|status| {
            let out = must(
                host.command()
                    .args(["list", "--json", "--limit", "1000000", "--status", status]),
                "genesis list",
            );
            serde_json::from_str::<Value>(&out)
                .ok()
                .and_then(|v| v.as_array().map(Vec::len))
                .unwrap_or(usize::MAX)
        })
        .sum()
}

/// Waits until no request is pending or unacknowledged and no host has
/// work left, then a quiet spell of two ack waits (a late redelivery or
/// duplicate would come in it), then checks once more.
pub async fn settle(js: &jetstream::Context, world: &World, limit: Duration) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    let quiet = Duration::from_millis(2 * ACK_WAIT_MS);
    let mut calm_since: Option<Instant> = None;
    loop {
        let backlog = consumer_backlog(js, "GENESIS_REQUESTS", "genesis").await;
        let working: usize = if backlog == (0, 0) {
            world.hosts.iter().map(busy).sum()
        } else {
            usize::MAX
        };
        if working == 0 {
            let since = *calm_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= quiet {
                return Ok(());
            }
        } else {
            calm_since = None;
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "not settled within {limit:?}: backlog (pending, unacked) {backlog:?}, working {working}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Compares every reply with the plan.
pub async fn answers(js: &jetstream::Context, plan: &[Experiment], sent: &Sent) -> Verdict {
    let mut replies: BTreeMap<usize, Vec<(Value, SystemTime)>> = BTreeMap::new();
    for (subject, body, at) in all_answers(js).await {
        if let Some(n) = subject
            .strip_prefix(REPLY_PREFIX)
            .and_then(|n| n.parse().ok())
        {
            replies.entry(n).or_default().push((body, at));
        }
    }
    let mut verdict = Verdict::default();
    for experiment in plan {
        let mut rejected = 0;
        let mut conflicting = false;
        for m in &experiment.messages {
            verdict.messages += 1;
            let got = replies.get(&m.n).map(Vec::as_slice).unwrap_or_default();
            let who = format!("{} message {}", experiment.id, m.n);
            match got.len() {
                0 => {
                    verdict.lost.push(who);
                    continue;
                }
                1 => {}
                n => verdict.twice.push(format!("{who}: {n} replies")),
            }
            let (answer, at) = &got[0];
            if let Some(sent) = sent.get(&m.n) {
                verdict
                    .latencies
                    .push(at.duration_since(*sent).unwrap_or_default());
            }
            let projected = project(answer);
            let fine = match &m.expect {
                Expect::Answer(want) => projected == *want,
                Expect::AnswerOrRejected(want) => {
                    conflicting = true;
                    let refused = projected == "rejected invalid_request";
                    rejected += usize::from(refused);
                    refused || projected == *want
                }
            };
            if !fine {
                verdict
                    .differing
                    .push(format!("{who}: {projected} (want {:?})", m.expect));
            }
        }
        if conflicting && rejected != 1 {
            verdict.differing.push(format!(
                "{}: {rejected} of 2 refused, want 1",
                experiment.id
            ));
        }
    }
    verdict.latencies.sort();
    verdict
}

/// `genesis doctor` on a host: None when every check passes, else its output.
pub fn doctor(host: &Host) -> Option<String> {
    let out = host.command().arg("doctor").output().unwrap();
    (!out.status.success()).then(|| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Loads both hosts' SQL exports (twice each) into one fresh database;
/// returns the number of experiment records and records that are not final.
pub fn postgres(world: &World) -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let pg = PgCluster::start();
    pg.exec("postgres", "CREATE DATABASE genesis");
    let files: Vec<_> = world
        .hosts
        .iter()
        .map(|host| {
            let file = dir.path().join(format!("{}.sql", host.name));
            must(
                host.command()
                    .args(["export", "--format", "sql", "--output"])
                    .arg(&file),
                "genesis export",
            );
            file
        })
        .collect();
    for file in files.iter().chain(&files) {
        let out = pg.load_file("genesis", file);
        assert!(
            out.status.success(),
            "loading {}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let count = |sql: &str| pg.scalar("genesis", sql).parse::<u64>().unwrap_or(u64::MAX);
    (
        count("SELECT count(*) FROM experiment_records"),
        count(
            "SELECT count(*) FROM experiment_records WHERE status NOT IN ('completed', 'failed')",
        ),
    )
}

/// Containers, mounts and loop devices left once the hosts stopped and
/// their homes were unmounted.
pub fn leftovers(world: &mut World) -> Vec<String> {
    let mut left = Vec::new();
    let containers = world.engine.docker(&["ps", "-aq"]);
    left.extend(containers.lines().map(|c| format!("container {c}")));
    for host in &mut world.hosts {
        host.disk.unmount();
        let root = host.home.root().to_path_buf();
        left.extend(
            mounts_below(&root)
                .into_iter()
                .map(|m| format!("mount {m}")),
        );
        left.extend(loops_below(&root).into_iter().map(|l| format!("loop {l}")));
    }
    left
}
