//! Time for the scheduler: the [`Clock`] trait, the real and the fake clock,
//! and the pure schedule arithmetic ([`next_due`], [`backoff_ms`], [`retry`]).

use crate::config::JobsPolicy;
use crate::errors::Result;
use chrono::{DateTime, TimeDelta, Utc};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tokio::sync::watch;

/// A future returned by [`Clock::sleep_until`].
pub type Sleep<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// Where the scheduler gets the time and waits for it.
pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
    /// Completes once [`Clock::now`] has reached `deadline`.
    fn sleep_until(&self, deadline: DateTime<Utc>) -> Sleep<'_>;
}

/// Wall-clock time; sleeps on tokio's timer. The scheduler re-reads the time
/// after every wake-up, so a wall clock that moved meanwhile is noticed.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep_until(&self, deadline: DateTime<Utc>) -> Sleep<'_> {
        let wait = (deadline - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        Box::pin(tokio::time::sleep(wait))
    }
}

/// A clock that moves only when told to; for tests and simulations.
/// Sleepers wake when [`FakeClock::set`] or [`FakeClock::advance`] reaches
/// their deadline, and [`FakeClock::wait_for_sleeper`] lets a test wait
/// until some task is asleep (and see until when).
#[derive(Debug)]
pub struct FakeClock {
    now: watch::Sender<DateTime<Utc>>,
    /// Deadlines of the sleeps in progress.
    sleepers: watch::Sender<Vec<DateTime<Utc>>>,
}

impl FakeClock {
    pub fn new(start: DateTime<Utc>) -> FakeClock {
        FakeClock {
            now: watch::Sender::new(start),
            sleepers: watch::Sender::new(Vec::new()),
        }
    }

    pub fn set(&self, t: DateTime<Utc>) {
        self.now.send_replace(t);
    }

    pub fn advance(&self, by: TimeDelta) {
        self.now.send_modify(|t| *t += by);
    }

    /// Deadlines of the sleeps in progress, earliest first.
    pub fn sleepers(&self) -> Vec<DateTime<Utc>> {
        let mut v = self.sleepers.borrow().clone();
        v.sort();
        v
    }

    /// Waits until a sleep with a deadline matching `pred` is in progress
    /// and returns that deadline.
    pub async fn wait_for_sleeper(&self, pred: impl Fn(DateTime<Utc>) -> bool) -> DateTime<Utc> {
        let mut rx = self.sleepers.subscribe();
        let found = rx
            .wait_for(|v| v.iter().any(|t| pred(*t)))
            .await
            .map(|v| v.iter().copied().filter(|t| pred(*t)).min());
        // The sender lives in `self`, so the channel cannot close here.
        found.ok().flatten().unwrap_or(DateTime::<Utc>::MAX_UTC)
    }
}

/// Removes a sleeper's deadline when its sleep ends or is dropped.
struct SleeperGuard<'a> {
    sleepers: &'a watch::Sender<Vec<DateTime<Utc>>>,
    deadline: DateTime<Utc>,
}

impl Drop for SleeperGuard<'_> {
    fn drop(&mut self) {
        self.sleepers.send_modify(|v| {
            if let Some(i) = v.iter().position(|t| *t == self.deadline) {
                v.remove(i);
            }
        });
    }
}

impl Clock for FakeClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.borrow()
    }

    fn sleep_until(&self, deadline: DateTime<Utc>) -> Sleep<'_> {
        Box::pin(async move {
            let mut rx = self.now.subscribe();
            self.sleepers.send_modify(|v| v.push(deadline));
            let _guard = SleeperGuard {
                sleepers: &self.sleepers,
                deadline,
            };
            let _ = rx.wait_for(|now| *now >= deadline).await;
        })
    }
}

/// What the schedule says to do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Run now; `missed` is the earliest instant not yet run.
    Now { missed: DateTime<Utc> },
    /// Sleep until this instant.
    At(DateTime<Utc>),
    /// The schedule has no instant left.
    Never,
}

/// The schedule's verdict, counting from `since` (when the job last ran,
/// or when the scheduler started if it never ran). A `since` in the future
/// (the clock was set back) counts from now instead, so a job is not
/// silenced until the clock catches up.
pub fn next_due(schedule: &cron::Schedule, since: DateTime<Utc>, now: DateTime<Utc>) -> Due {
    let since = since.min(now);
    match schedule.after(&since).next() {
        Some(t) if t <= now => Due::Now { missed: t },
        Some(t) => Due::At(t),
        None => Due::Never,
    }
}

/// Wait before attempt `failed + 1`, after `failed` failures (1-based):
/// `base`, then doubled each time, saturating instead of overflowing.
pub fn backoff_ms(base_ms: u64, failed: u32) -> u64 {
    let doublings = failed.saturating_sub(1);
    base_ms.saturating_mul(2u64.saturating_pow(doublings))
}

pub(super) fn later(t: DateTime<Utc>, ms: u64) -> DateTime<Utc> {
    i64::try_from(ms)
        .ok()
        .and_then(TimeDelta::try_milliseconds)
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

pub(super) fn days_before(t: DateTime<Utc>, days: u64) -> DateTime<Utc> {
    i64::try_from(days)
        .ok()
        .and_then(TimeDelta::try_days)
        .and_then(|d| t.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

pub(super) fn from_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Sleeps until `deadline`; false when shutdown came first.
pub(super) async fn sleep_unless_shutdown(
    clock: &dyn Clock,
    deadline: DateTime<Utc>,
    shutdown: Option<&mut watch::Receiver<bool>>,
) -> bool {
    let Some(rx) = shutdown else {
        clock.sleep_until(deadline).await;
        return true;
    };
    tokio::select! {
        _ = clock.sleep_until(deadline) => true,
        // A dropped sender means the service is gone: stop as well.
        _ = rx.wait_for(|stop| *stop) => false,
    }
}

/// Runs `attempt` until it succeeds or `max_attempts` attempts failed,
/// waiting [`backoff_ms`] between attempts. Returns the last result and the
/// number of attempts made.
pub async fn retry<T, F, Fut>(
    clock: &dyn Clock,
    policy: &JobsPolicy,
    mut shutdown: Option<watch::Receiver<bool>>,
    mut attempt: F,
) -> (Result<T>, u32)
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    // A policy of 0 attempts still means "try": the job was asked to run.
    let max = policy.max_attempts.max(1);
    let mut n = 1;
    loop {
        let error = match attempt(n).await {
            Ok(v) => return (Ok(v), n),
            Err(e) => e,
        };
        if n >= max {
            return (Err(error), n);
        }
        let wait = backoff_ms(policy.backoff.as_millis() as u64, n);
        tracing::warn!(attempt = n, of = max, retry_in_ms = wait, error = %error, "job attempt failed");
        let deadline = later(clock.now(), wait);
        if !sleep_unless_shutdown(clock, deadline, shutdown.as_mut()).await {
            return (Err(error), n);
        }
        n += 1;
    }
}
