//! The soak's experiments: a seeded mix of kinds, the request messages
//! each kind sends, and what a fault-free genesis answers to each.
//!
//! Every kind runs the same busybox TAP suite (`SUITE`) of three tests;
//! the patch decides what it does by the marker file it adds. So each
//! experiment is fast and its fault-free answer is known from its kind
//! alone: no reference run is needed, and a wrong reference cannot hide a
//! wrong answer.

use std::time::Duration;

use serde_json::{json, Value};

/// The suite of the soak's repo: three TAP tests; `broken` fails one,
/// `slow` sleeps past the request's timeout, `memhog` allocates past the
/// memory limit.
pub const SUITE: &str = "set -u
if [ -f slow ]; then sleep 60; fi
if [ -f memhog ]; then dd if=/dev/zero of=/dev/null bs=400M count=1; fi
echo 1..3
echo ok 1 - adds
echo ok 2 - subtracts
if [ -f broken ]; then echo not ok 3 - divides; else echo ok 3 - divides; fi
";

/// The timeout of a `Timeout` experiment's request: the suite sleeps longer.
const SHORT_TIMEOUT_MS: u64 = 2_000;
/// Every other request's (the risk level's limit is lower still).
const LONG_TIMEOUT_MS: u64 = 600_000;
/// The instance every soak request names (its `rejected` subject's token).
pub const INSTANCE: &str = "soak";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Pass,
    Regression,
    Timeout,
    Oom,
    PatchFails,
    /// A passing experiment whose request is sent twice.
    Duplicate,
    /// A passing experiment whose id is sent again with another change.
    Conflict,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Pass,
        Kind::Regression,
        Kind::Timeout,
        Kind::Oom,
        Kind::PatchFails,
        Kind::Duplicate,
        Kind::Conflict,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Pass => "pass",
            Kind::Regression => "regression",
            Kind::Timeout => "timeout",
            Kind::Oom => "oom",
            Kind::PatchFails => "patch_fails",
            Kind::Duplicate => "duplicate",
            Kind::Conflict => "conflict",
        }
    }

    /// Share of the mix, in percent (sums to 100).
    fn weight(self) -> u64 {
        match self {
            Kind::Pass => 40,
            Kind::Regression => 15,
            Kind::Timeout => 8,
            Kind::Oom => 8,
            Kind::PatchFails => 9,
            Kind::Duplicate => 10,
            Kind::Conflict => 10,
        }
    }
}

/// xorshift64*: the soak's only source of chance, so a seed replays it.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = self.below(i as u64 + 1) as usize;
            items.swap(i, j);
        }
    }
}

/// What a fault-free genesis answers to one request message.
#[derive(Debug, Clone, PartialEq)]
pub enum Expect {
    /// This projection (see [`project`]).
    Answer(String),
    /// One of a conflicting pair: refused, or (if it came first) answered
    /// with this projection; the pair must have exactly one of each.
    AnswerOrRejected(String),
}

/// One request message of the soak.
#[derive(Debug, Clone)]
pub struct Message {
    /// Its number: its reply subject is `soak.reply.N`.
    pub n: usize,
    pub experiment: usize,
    pub body: Value,
    pub expect: Expect,
    /// Sent this long after the experiment's first message.
    pub after: Duration,
}

/// One experiment: a distinct id, one or two messages.
#[derive(Debug, Clone)]
pub struct Experiment {
    pub id: String,
    pub kind: Kind,
    pub messages: Vec<Message>,
}

/// The seeded mix of `count` experiments.
pub fn plan(count: usize, seed: u64) -> Vec<Experiment> {
    let mut rng = Rng::new(seed);
    let mut next_message = 0;
    (0..count)
        .map(|i| {
            let kind = pick(&mut rng);
            let id = format!("soak-{seed}-{i:04}-{}", kind.name());
            let mut messages = Vec::new();
            let mut push = |body: Value, expect: Expect, after: Duration| {
                messages.push(Message {
                    n: next_message,
                    experiment: i,
                    body,
                    expect,
                    after,
                });
                next_message += 1;
            };
            let first = request_of(kind, &id, i);
            let expect = expected(kind);
            match kind {
                Kind::Duplicate => {
                    let later = Duration::from_millis(rng.below(4_000));
                    push(
                        first.clone(),
                        Expect::Answer(expect.clone()),
                        Duration::ZERO,
                    );
                    push(first, Expect::Answer(expect), later);
                }
                Kind::Conflict => {
                    let later = Duration::from_millis(rng.below(4_000));
                    let other = request_of(Kind::Regression, &id, i);
                    let other_expect = expected(Kind::Regression);
                    push(first, Expect::AnswerOrRejected(expect), Duration::ZERO);
                    push(other, Expect::AnswerOrRejected(other_expect), later);
                }
                _ => push(first, Expect::Answer(expect), Duration::ZERO),
            }
            Experiment { id, kind, messages }
        })
        .collect()
}

fn pick(rng: &mut Rng) -> Kind {
    let mut roll = rng.below(100);
    for kind in Kind::ALL {
        if roll < kind.weight() {
            return kind;
        }
        roll -= kind.weight();
    }
    Kind::Pass
}

/// The request of one kind: a patch adding the kind's marker (and a file
/// of the experiment's own, so every candidate commit differs).
fn request_of(kind: Kind, id: &str, i: usize) -> Value {
    let own = format!("notes/{i}.txt");
    let marker = match kind {
        Kind::Regression => Some("broken"),
        Kind::Timeout => Some("slow"),
        Kind::Oom => Some("memhog"),
        _ => None,
    };
    let (files, patch) = if kind == Kind::PatchFails {
        let patch = "diff --git a/README b/README\n--- a/README\n+++ b/README\n@@ -1 +1 @@\n-not what the file holds\n+x\n";
        (vec!["README".to_owned()], patch.to_owned())
    } else {
        let text = format!("experiment {i}\n");
        let mut changes = vec![(own.as_str(), text.as_str())];
        if let Some(marker) = marker {
            changes.push((marker, "x\n"));
        }
        let files = changes.iter().map(|(p, _)| (*p).to_owned()).collect();
        (files, adding(&changes))
    };
    let timeout_ms = if kind == Kind::Timeout {
        SHORT_TIMEOUT_MS
    } else {
        LONG_TIMEOUT_MS
    };
    json!({
        "experiment_id": id,
        "instance_id": INSTANCE,
        "experiment_type": "soak",
        "description": format!("soak {}", kind.name()),
        "risk_level": "high",
        "changes": {"files": files, "patch": patch},
        "timeout_ms": timeout_ms,
    })
}

/// A git diff that adds these one-line files (what `git diff` writes,
/// without the index line, which `git apply` and libgit2 do not need).
fn adding(files: &[(&str, &str)]) -> String {
    files
        .iter()
        .map(|(path, line)| {
            format!(
                "diff --git a/{path} b/{path}\nnew file mode 100644\n--- /dev/null\n+++ b/{path}\n@@ -0,0 +1 @@\n+{line}"
            )
        })
        .collect()
}

/// The projection of a fault-free answer to a request of `kind`.
fn expected(kind: Kind) -> String {
    match kind {
        Kind::Pass | Kind::Duplicate | Kind::Conflict => {
            "success merge tests=3 failures=0 regression=0.0000 success=1.0000 baseline=3/0 regressed=0".into()
        }
        Kind::Regression => {
            "success rollback tests=3 failures=1 regression=0.3333 success=0.6667 baseline=3/0 regressed=1".into()
        }
        Kind::Timeout => "failed timeout".into(),
        Kind::Oom => "failed oom".into(),
        Kind::PatchFails => "failed patch_failed".into(),
    }
}

/// The part of an answer a fault must not change: status, verdict, counts
/// and rates, or the kind of failure; a refusal as `rejected KIND`.
pub fn project(answer: &Value) -> String {
    let num = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
    match answer["status"].as_str() {
        Some("success") => {
            let m = &answer["metrics"];
            format!(
                "success {} tests={} failures={} regression={:.4} success={:.4} baseline={}/{} regressed={}",
                answer["recommendation"].as_str().unwrap_or("?"),
                m["test_count"],
                m["failures"],
                num(&m["regression"]),
                num(&m["success_rate"]),
                answer["baseline"]["test_count"],
                answer["baseline"]["failures"],
                answer["regressions"].as_array().map_or(0, Vec::len),
            )
        }
        Some("failed") => format!("failed {}", answer["error_kind"].as_str().unwrap_or("?")),
        // A refusal (contract §3) has no status.
        _ if answer.get("error_kind").is_some() => {
            format!("rejected {}", answer["error_kind"].as_str().unwrap_or("?"))
        }
        _ => format!("unreadable {answer}"),
    }
}
