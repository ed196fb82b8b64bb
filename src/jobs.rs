//! Scheduled jobs: cleanup, analysis, report and health, on cron schedules.
//!
//! Design:
//! - **Pure schedule logic.** [`next_due`] answers "run now, or sleep until
//!   when?" from the schedule, the instant the job last ran and the current
//!   time. Everything about firing instants, catch-up and double-firing is in
//!   that one function and tested with fixed times.
//! - **Injected clock.** The scheduler reads time and sleeps only through
//!   [`Clock`]. [`SystemClock`] is the real one; [`FakeClock`] is driven by
//!   tests, which can also wait until the scheduler is asleep and see its
//!   deadline, so no test synchronises with real sleeps.
//! - **One loop per job**, so a long cleanup never delays a health report and
//!   a job never overlaps itself in the scheduler: its loop awaits each run.
//!   A lock per job (`GENESIS_HOME/jobs/NAME.lock`, see `JobLock`) extends
//!   that to `run_job` callers and to `genesis jobs run` while `genesis serve`
//!   runs: the second run is skipped.
//! - **Catch-up.** Each run's start time is stored (`jobs` table, [`JobState`])
//!   and the next instant is computed from it. If the schedule had any instant
//!   between the last run and now (genesis was down, or a run overran), the
//!   job runs once at once and then counts from that run: missed instants are
//!   coalesced, never replayed one by one. A job that never ran waits for its
//!   next instant.
//! - **Retries.** A failed attempt is retried up to `jobs.max_attempts`
//!   attempts in all, waiting `jobs.backoff_ms` doubled after each failure
//!   ([`backoff_ms`]), through the clock. Shutdown cuts the waiting short but
//!   never an attempt in progress.
//! - **Documents.** `report` publishes a [`MetricsReport`] on
//!   `system.metrics.genesis`, `health` a [`Health`] on
//!   `system.health.genesis`; without a NATS client the document is still
//!   built and returned in the [`JobOutcome`] (the CLI prints it).
//!   `analysis` stores a [`Trend`] per day and as `analysis/latest`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::{Config, JobsPolicy};
use crate::contract::{GroupStats, Health, MetricsReport, Period, Recommendation, Totals};
use crate::errors::{GenesisError, Result};
use crate::maintenance;
use crate::metrics::ratio;
use crate::service::subjects;
use crate::store::{Status, Store};

/// How long `genesis jobs run` waits for NATS before printing the document
/// instead: a command line should answer promptly when no server runs.
/// (Not in the config: the service itself waits for NATS indefinitely.)
const CLI_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const BYTES_PER_MB: f64 = 1024.0 * 1024.0;
/// Key of the most recent analysis in the trends table.
pub const TREND_LATEST: &str = "analysis/latest";

/// Parses a 6-field cron expression (seconds first), with a message that
/// says what shape is expected.
pub fn parse_schedule(expr: &str) -> Result<cron::Schedule> {
    cron::Schedule::from_str(expr).map_err(|e| {
        GenesisError::InvalidRequest(format!(
            "{expr:?} is not a cron expression with a seconds field (sec min hour day month weekday, e.g. \"0 0 */6 * * *\"): {e}"
        ))
    })
}

/// The scheduled jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Job {
    Cleanup,
    Analysis,
    Report,
    Health,
}

impl Job {
    pub const ALL: [Job; 4] = [Job::Cleanup, Job::Analysis, Job::Report, Job::Health];

    pub fn name(self) -> &'static str {
        match self {
            Job::Cleanup => "cleanup",
            Job::Analysis => "analysis",
            Job::Report => "report",
            Job::Health => "health",
        }
    }

    pub fn parse(name: &str) -> Option<Job> {
        Job::ALL.into_iter().find(|j| j.name() == name)
    }

    /// The job's cron expression from `[schedule]`.
    pub fn schedule(self, config: &Config) -> &str {
        match self {
            Job::Cleanup => &config.schedule.cleanup,
            Job::Analysis => &config.schedule.analysis,
            Job::Report => &config.schedule.report,
            Job::Health => &config.schedule.health,
        }
    }

    /// Where the job publishes its document, if it does.
    pub fn subject(self) -> Option<&'static str> {
        match self {
            Job::Report => Some(subjects::METRICS),
            Job::Health => Some(subjects::HEALTH),
            Job::Cleanup | Job::Analysis => None,
        }
    }
}

impl fmt::Display for Job {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

// ---------------------------------------------------------------------------
// Time
// ---------------------------------------------------------------------------

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

fn later(t: DateTime<Utc>, ms: u64) -> DateTime<Utc> {
    i64::try_from(ms)
        .ok()
        .and_then(TimeDelta::try_milliseconds)
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(DateTime::<Utc>::MAX_UTC)
}

fn days_before(t: DateTime<Utc>, days: u64) -> DateTime<Utc> {
    i64::try_from(days)
        .ok()
        .and_then(TimeDelta::try_days)
        .and_then(|d| t.checked_sub_signed(d))
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn from_ms(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// Sleeps until `deadline`; false when shutdown came first.
async fn sleep_unless_shutdown(
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
        let wait = backoff_ms(policy.backoff_ms, n);
        tracing::warn!(attempt = n, of = max, retry_in_ms = wait, error = %error, "job attempt failed");
        let deadline = later(clock.now(), wait);
        if !sleep_unless_shutdown(clock, deadline, shutdown.as_mut()).await {
            return (Err(error), n);
        }
        n += 1;
    }
}

// ---------------------------------------------------------------------------
// Job runs
// ---------------------------------------------------------------------------

/// What the jobs need; cheap to clone.
#[derive(Clone)]
pub struct JobContext {
    pub config: Arc<Config>,
    pub store: Store,
    /// None: documents are built but not published (CLI without a server, tests).
    pub nats: Option<async_nats::Client>,
    pub clock: Arc<dyn Clock>,
}

/// A job's last run, stored by job name (bincode-friendly: plain fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobState {
    /// When the last run started (unix ms); the schedule counts from here.
    pub last_run_ms: i64,
    pub finished_ms: i64,
    pub ok: bool,
    pub attempts: u32,
    /// Runs ever made (each with its retries counts once).
    pub runs: u64,
    /// The outcome's summary, or the last error.
    pub summary: String,
}

/// One run of a job, with retries.
#[derive(Debug, Clone, PartialEq)]
pub struct JobOutcome {
    pub job: Job,
    pub started: DateTime<Utc>,
    pub finished: DateTime<Utc>,
    pub attempts: u32,
    pub summary: String,
    /// The JSON document the job produced (report, health, trend, cleanup report).
    pub document: Option<String>,
    /// The subject it went to; None when there was no NATS client.
    pub published_to: Option<String>,
    /// Set when the run did not happen, with the reason.
    pub skipped: Option<String>,
}

/// What one successful attempt produced.
struct Done {
    summary: String,
    document: Option<String>,
    published_to: Option<String>,
}

/// Stored state of every job, for `doctor` and `show`-like views.
pub fn job_states(store: &Store) -> Result<Vec<(Job, Option<JobState>)>> {
    Job::ALL
        .into_iter()
        .map(|job| Ok((job, store.job_state::<JobState>(job.name())?)))
        .collect()
}

/// Lock files held by this process. POSIX record locks do not exclude
/// within one process, so this set does.
static HELD_LOCKS: std::sync::Mutex<BTreeSet<PathBuf>> = std::sync::Mutex::new(BTreeSet::new());

/// An exclusive lock on `GENESIS_HOME/jobs/NAME.lock`, held for one run and
/// released when dropped or when the process dies.
///
/// A POSIX record lock (`fcntl F_SETLK`) rather than `flock`: an `flock`
/// belongs to the open file, which a child forked by another thread shares
/// until it execs, so a spawn elsewhere could keep a finished run's lock
/// held. Record locks belong to the process and are not inherited.
struct JobLock {
    path: PathBuf,
    _file: std::fs::File,
}

impl JobLock {
    fn try_acquire(home: &Path, job: Job) -> Result<Option<JobLock>> {
        let dir = home.join("jobs");
        let path = dir.join(format!("{}.lock", job.name()));
        let context = || format!("locking {}", path.display());
        let mut held = HELD_LOCKS.lock().unwrap_or_else(|p| p.into_inner());
        // Checked before opening: closing any descriptor of a file drops
        // this process's record locks on it.
        if held.contains(&path) {
            return Ok(None);
        }
        std::fs::create_dir_all(&dir).map_err(|e| GenesisError::io(context(), e))?;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| GenesisError::io(context(), e))?;
        if !record_lock(&file).map_err(|e| GenesisError::io(context(), e))? {
            return Ok(None);
        }
        held.insert(path.clone());
        Ok(Some(JobLock { path, _file: file }))
    }
}

impl Drop for JobLock {
    fn drop(&mut self) {
        let mut held = HELD_LOCKS.lock().unwrap_or_else(|p| p.into_inner());
        held.remove(&self.path);
    }
}

/// Takes a write lock on the whole file without waiting; false if another
/// process holds one.
fn record_lock(file: &std::fs::File) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    // SAFETY: an all-zero `flock` is a valid value of this plain C struct.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    // l_start = 0 and l_len = 0: the whole file.
    // SAFETY: the descriptor is open for writing for the duration of the
    // call and `lock` is a valid, initialised `flock`.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETLK, &lock) };
    if rc == 0 {
        return Ok(true);
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EAGAIN) => Ok(false),
        _ => Err(err),
    }
}

/// Runs a job once now, with retries; stores its state. An error means
/// every attempt failed (the state says so too).
pub async fn run_job(ctx: &JobContext, job: Job) -> Result<JobOutcome> {
    run_job_until(ctx, job, None).await
}

async fn run_job_until(
    ctx: &JobContext,
    job: Job,
    shutdown: Option<watch::Receiver<bool>>,
) -> Result<JobOutcome> {
    let started = ctx.clock.now();
    let Some(_lock) = JobLock::try_acquire(&ctx.config.home, job)? else {
        return Ok(JobOutcome {
            job,
            started,
            finished: started,
            attempts: 0,
            summary: String::new(),
            document: None,
            published_to: None,
            skipped: Some(format!("another {job} run is in progress")),
        });
    };
    let (result, attempts) = retry(ctx.clock.as_ref(), &ctx.config.jobs, shutdown, |n| {
        tracing::debug!(job = job.name(), attempt = n, "job attempt");
        execute(ctx, job)
    })
    .await;
    let finished = ctx.clock.now();
    let summary = match &result {
        Ok(done) => done.summary.clone(),
        Err(e) => e.to_string(),
    };
    save_state(
        ctx,
        job,
        started,
        finished,
        result.is_ok(),
        attempts,
        &summary,
    )
    .await;
    let done = result?;
    Ok(JobOutcome {
        job,
        started,
        finished,
        attempts,
        summary: done.summary,
        document: done.document,
        published_to: done.published_to,
        skipped: None,
    })
}

async fn save_state(
    ctx: &JobContext,
    job: Job,
    started: DateTime<Utc>,
    finished: DateTime<Utc>,
    ok: bool,
    attempts: u32,
    summary: &str,
) {
    let summary = summary.to_owned();
    let saved = ctx
        .store
        .call(move |s| {
            // An unreadable old state only loses the run count.
            let runs = s
                .job_state::<JobState>(job.name())
                .ok()
                .flatten()
                .map_or(0, |st| st.runs);
            let state = JobState {
                last_run_ms: started.timestamp_millis(),
                finished_ms: finished.timestamp_millis(),
                ok,
                attempts,
                runs: runs + 1,
                summary,
            };
            s.put_job_state(job.name(), &state)
        })
        .await;
    if let Err(e) = saved {
        tracing::warn!(job = job.name(), error = %e, "could not store the job's state");
    }
}

/// One attempt of a job.
async fn execute(ctx: &JobContext, job: Job) -> Result<Done> {
    match job {
        Job::Cleanup => cleanup(ctx).await,
        Job::Analysis => analysis(ctx).await,
        Job::Report => {
            let report = daily_report(ctx).await?;
            let doc = to_json(&report)?;
            let published_to = publish(ctx, subjects::METRICS, &doc).await?;
            let summary = format!(
                "{} experiment(s) in the last day, success rate {:.3}",
                report.totals.experiments, report.success_rate
            );
            Ok(Done {
                summary,
                document: Some(doc),
                published_to,
            })
        }
        Job::Health => {
            let health = health(ctx).await?;
            let doc = to_json(&health)?;
            let published_to = publish(ctx, subjects::HEALTH, &doc).await?;
            let summary = format!(
                "{} running, {} queued, {:.1} MB used, {} corrupt archive(s)",
                health.active_experiments,
                health.queued,
                health.disk_used_mb,
                health.corrupt_archives.len()
            );
            Ok(Done {
                summary,
                document: Some(doc),
                published_to,
            })
        }
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<String> {
    serde_json::to_string(value)
        .map_err(|e| GenesisError::Internal(format!("serializing a job document: {e}")))
}

async fn cleanup(ctx: &JobContext) -> Result<Done> {
    let report = maintenance::cleanup(&ctx.config, &ctx.store, ctx.clock.now()).await?;
    for note in &report.notes {
        tracing::info!(job = "cleanup", "{note}");
    }
    if let Some(first) = report.errors.first() {
        // Every step ran; the failed ones are worth another attempt.
        return Err(GenesisError::io(
            format!(
                "cleanup: {} step(s) failed ({})",
                report.errors.len(),
                report.summary()
            ),
            std::io::Error::other(first.clone()),
        ));
    }
    Ok(Done {
        summary: report.summary(),
        document: Some(to_json(&report)?),
        published_to: None,
    })
}

/// Sends a document; `Ok(None)` when there is no client to send it with.
async fn publish(ctx: &JobContext, subject: &str, document: &str) -> Result<Option<String>> {
    let Some(client) = &ctx.nats else {
        return Ok(None);
    };
    // How long a server may take to acknowledge anything, from the config.
    let wait = Duration::from_millis(ctx.config.nats.ack_wait_ms);
    let sent = async {
        client
            .publish(subject.to_owned(), document.to_owned().into())
            .await
            .map_err(|e| GenesisError::Nats(format!("publishing to {subject}: {e}")))?;
        client
            .flush()
            .await
            .map_err(|e| GenesisError::Nats(format!("flushing {subject}: {e}")))
    };
    match tokio::time::timeout(wait, sent).await {
        Ok(Ok(())) => Ok(Some(subject.to_owned())),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(GenesisError::Nats(format!(
            "{subject}: the server did not take the document within {} ms",
            ctx.config.nats.ack_wait_ms
        ))),
    }
}

// ---------------------------------------------------------------------------
// Analysis, report, health
// ---------------------------------------------------------------------------

/// Aggregates of the experiments updated in a period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trend {
    pub computed_at_ms: i64,
    pub from_ms: i64,
    pub to_ms: i64,
    pub totals: Totals,
    /// All experiments of the period as one group.
    pub overall: GroupStats,
    pub by_type: BTreeMap<String, GroupStats>,
    pub by_risk_level: BTreeMap<String, GroupStats>,
}

/// Running sums for one group.
#[derive(Debug, Default)]
struct Acc {
    count: u64,
    completed: u64,
    failed: u64,
    regression: f64,
    llm_reduction: f64,
    /// Completed experiments with metrics: the averages' denominator.
    measured: u64,
}

/// The parts of a record (and its metrics) the aggregates use.
struct Row {
    experiment_type: String,
    risk_level: String,
    status: Status,
    recommendation: Option<String>,
    /// (regression, llm_reduction) of a completed experiment.
    metrics: Option<(f64, f64)>,
}

impl Acc {
    fn add(&mut self, row: &Row) {
        self.count += 1;
        match row.status {
            Status::Completed => self.completed += 1,
            Status::Failed => self.failed += 1,
            Status::Queued | Status::Running => {}
        }
        if let Some((regression, llm)) = row.metrics {
            self.regression += regression;
            self.llm_reduction += llm;
            self.measured += 1;
        }
    }

    /// `success_rate` is completed / (completed + failed); 0 with neither.
    fn stats(&self) -> GroupStats {
        GroupStats {
            count: self.count,
            completed: self.completed,
            failed: self.failed,
            success_rate: ratio(self.completed as f64, (self.completed + self.failed) as f64),
            avg_regression: ratio(self.regression, self.measured as f64),
            avg_llm_reduction: ratio(self.llm_reduction, self.measured as f64),
        }
    }
}

/// Reads the experiments updated in `[from, to)` with their metrics.
fn rows(store: &Store, from_ms: i64, to_ms: i64) -> Result<Vec<Row>> {
    let mut records = Vec::new();
    store.for_each_record(Some(from_ms), |r| {
        if r.updated_at < to_ms {
            records.push(r);
        }
        Ok(())
    })?;
    records
        .into_iter()
        .map(|r| {
            let metrics = if r.status == Status::Completed {
                store
                    .metrics(&r.experiment_id)?
                    .map(|m| (m.metrics.regression, m.metrics.llm_reduction))
            } else {
                None
            };
            Ok(Row {
                experiment_type: r.experiment_type,
                risk_level: r.risk_level,
                status: r.status,
                recommendation: r.recommendation,
                metrics,
            })
        })
        .collect()
}

/// Aggregates the experiments updated in `[from, to)`, overall, by
/// experiment type and by risk level. In `totals`, recommendations count as
/// stored: a failed experiment recommends rollback.
pub fn summarize(store: &Store, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<Trend> {
    let (from_ms, to_ms) = (from.timestamp_millis(), to.timestamp_millis());
    let rows = rows(store, from_ms, to_ms)?;
    let mut overall = Acc::default();
    let mut by_type: BTreeMap<String, Acc> = BTreeMap::new();
    let mut by_risk: BTreeMap<String, Acc> = BTreeMap::new();
    let mut totals = Totals::default();
    for row in &rows {
        overall.add(row);
        by_type
            .entry(row.experiment_type.clone())
            .or_default()
            .add(row);
        by_risk.entry(row.risk_level.clone()).or_default().add(row);
        let rec = row.recommendation.as_deref();
        if rec == Some(Recommendation::Merge.as_str()) {
            totals.merge += 1;
        } else if rec == Some(Recommendation::MergeWithAdaptations.as_str()) {
            totals.merge_with_adaptations += 1;
        } else if rec == Some(Recommendation::Rollback.as_str()) {
            totals.rollback += 1;
        }
    }
    totals.experiments = overall.count;
    totals.completed = overall.completed;
    totals.failed = overall.failed;
    let stats = |m: BTreeMap<String, Acc>| m.into_iter().map(|(k, a)| (k, a.stats())).collect();
    Ok(Trend {
        computed_at_ms: to_ms,
        from_ms,
        to_ms,
        totals,
        overall: overall.stats(),
        by_type: stats(by_type),
        by_risk_level: stats(by_risk),
    })
}

/// `analysis`: aggregates over `cleanup.analysis_days`, stored as the day's
/// trend and as [`TREND_LATEST`].
async fn analysis(ctx: &JobContext) -> Result<Done> {
    let to = ctx.clock.now();
    let from = days_before(to, ctx.config.cleanup.analysis_days);
    let trend = ctx
        .store
        .call(move |s| {
            let trend = summarize(s, from, to)?;
            s.put_trend(&format!("analysis/{}", to.format("%Y-%m-%d")), &trend)?;
            s.put_trend(TREND_LATEST, &trend)?;
            Ok(trend)
        })
        .await?;
    let summary = format!(
        "{} experiment(s) over {} day(s) in {} type(s), success rate {:.3}",
        trend.totals.experiments,
        ctx.config.cleanup.analysis_days,
        trend.by_type.len(),
        trend.overall.success_rate
    );
    Ok(Done {
        summary,
        document: Some(to_json(&trend)?),
        published_to: None,
    })
}

/// The daily report: the last day up to now.
pub async fn daily_report(ctx: &JobContext) -> Result<MetricsReport> {
    let to = ctx.clock.now();
    let from = days_before(to, 1);
    let trend = ctx.store.call(move |s| summarize(s, from, to)).await?;
    Ok(MetricsReport {
        totals: trend.totals,
        success_rate: trend.overall.success_rate,
        avg_regression: trend.overall.avg_regression,
        avg_llm_reduction: trend.overall.avg_llm_reduction,
        by_type: trend.by_type,
        by_risk_level: trend.by_risk_level,
        period: Period { from, to },
    })
}

/// The health document. Archive checks are cached (see `maintenance`);
/// archives verified afresh get a `verify` history row.
pub async fn health(ctx: &JobContext) -> Result<Health> {
    let now = ctx.clock.now();
    let since = days_before(now, ctx.config.cleanup.analysis_days);
    let config = ctx.config.clone();
    ctx.store
        .call(move |s| {
            let active = s.ids_with_status(Status::Running)?.len() as u64;
            let queued = s.ids_with_status(Status::Queued)?.len() as u64;
            let success_rate_30d = summarize(s, since, now)?.overall.success_rate;
            let checks = maintenance::check_archives(&config)?;
            maintenance::record_checks(s, &checks)?;
            let corrupt_archives = checks
                .into_iter()
                .filter(|c| !c.report.is_ok())
                .map(|c| c.id)
                .collect();
            let disk_used_mb = maintenance::disk_usage_bytes(&config.home) as f64 / BYTES_PER_MB;
            Ok(Health {
                active_experiments: active,
                queued,
                success_rate_30d,
                disk_used_mb,
                corrupt_archives,
                timestamp: now,
            })
        })
        .await
}

// ---------------------------------------------------------------------------
// Scheduler
// ---------------------------------------------------------------------------

/// Runs every job on its schedule until `shutdown` turns true (or its
/// sender is dropped). A run in progress finishes first.
pub fn spawn_scheduler(
    ctx: JobContext,
    shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut loops = tokio::task::JoinSet::new();
        for job in Job::ALL {
            loops.spawn(job_loop(ctx.clone(), job, shutdown.clone()));
        }
        while let Some(done) = loops.join_next().await {
            if let Err(e) = done {
                tracing::error!(error = %e, "a job loop panicked");
            }
        }
    })
}

/// When the job last ran, from the store.
async fn stored_last_run(ctx: &JobContext, job: Job) -> Option<DateTime<Utc>> {
    match ctx
        .store
        .call(move |s| s.job_state::<JobState>(job.name()))
        .await
    {
        Ok(state) => state.map(|s| from_ms(s.last_run_ms)),
        Err(e) => {
            tracing::warn!(job = job.name(), error = %e, "job state unreadable; counting from now");
            None
        }
    }
}

/// One job's life in the service: sleep until due, run, repeat.
async fn job_loop(ctx: JobContext, job: Job, mut shutdown: watch::Receiver<bool>) {
    let schedule = match parse_schedule(job.schedule(&ctx.config)) {
        Ok(s) => s,
        Err(e) => {
            // Config validation parses every schedule, so this is unexpected.
            tracing::error!(job = job.name(), error = %e, "job not scheduled");
            return;
        }
    };
    let mut since = stored_last_run(&ctx, job)
        .await
        .unwrap_or_else(|| ctx.clock.now());
    loop {
        if *shutdown.borrow() {
            return;
        }
        let now = ctx.clock.now();
        match next_due(&schedule, since, now) {
            Due::Never => {
                tracing::info!(job = job.name(), "the schedule has no further instants");
                let _ = shutdown.wait_for(|stop| *stop).await;
                return;
            }
            Due::At(t) => {
                // Re-evaluate after waking: the clock decides, not the timer.
                if !sleep_unless_shutdown(ctx.clock.as_ref(), t, Some(&mut shutdown)).await {
                    return;
                }
            }
            Due::Now { missed } => {
                if missed < now {
                    tracing::info!(job = job.name(), %missed, "running a missed job once");
                }
                // Counting from the start of this run means instants missed
                // while it ran are caught up once, not replayed.
                since = now;
                log_outcome(job, run_job_until(&ctx, job, Some(shutdown.clone())).await);
            }
        }
    }
}

fn log_outcome(job: Job, outcome: Result<JobOutcome>) {
    match outcome {
        Ok(o) if o.skipped.is_some() => {
            tracing::info!(
                job = job.name(),
                reason = o.skipped.as_deref().unwrap_or(""),
                "job skipped"
            );
        }
        Ok(o) => {
            tracing::info!(
                job = job.name(),
                attempts = o.attempts,
                published_to = o.published_to.as_deref().unwrap_or("-"),
                "{}",
                o.summary
            );
        }
        Err(e) => tracing::error!(job = job.name(), error = %e, "job failed"),
    }
}

// ---------------------------------------------------------------------------
// Command line
// ---------------------------------------------------------------------------

async fn connect_briefly(config: &Config) -> Result<async_nats::Client> {
    let url = config.nats.url.clone();
    let connecting = async_nats::ConnectOptions::new()
        .name("genesis-jobs")
        .connection_timeout(CLI_CONNECT_TIMEOUT)
        .connect(url.as_str());
    match tokio::time::timeout(CLI_CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(GenesisError::Nats(format!("connecting to {url}: {e}"))),
        Err(_) => Err(GenesisError::Nats(format!(
            "no answer from {url} within {} s",
            CLI_CONNECT_TIMEOUT.as_secs()
        ))),
    }
}

/// `genesis jobs run NAME`: runs a job now. The job's document goes to
/// stdout; report and health are also published when NATS is reachable, and
/// stderr says whether they were. Exit 0 when the job ran, 1 when it was
/// skipped because another run holds its lock.
pub async fn run_now(config: Arc<Config>, name: &str) -> Result<i32> {
    let job = Job::parse(name).ok_or_else(|| {
        let known: Vec<&str> = Job::ALL.iter().map(|j| j.name()).collect();
        GenesisError::InvalidRequest(format!(
            "unknown job {name:?}; known jobs: {}",
            known.join(", ")
        ))
    })?;
    let store = crate::cli::open_store(&config).await?;
    let (nats, nats_error) = match job.subject() {
        Some(_) => match connect_briefly(&config).await {
            Ok(client) => (Some(client), None),
            Err(e) => (None, Some(e.to_string())),
        },
        None => (None, None),
    };
    let ctx = JobContext {
        config,
        store,
        nats,
        clock: Arc::new(SystemClock),
    };
    let outcome = run_job(&ctx, job).await?;
    if let Some(reason) = &outcome.skipped {
        eprintln!("genesis: {job} not run: {reason}");
        return Ok(1);
    }
    if let Some(doc) = &outcome.document {
        println!("{doc}");
    }
    match (job.subject(), &outcome.published_to) {
        (Some(subject), None) => eprintln!(
            "genesis: could not publish the {job} document to {subject} ({}); printed it on stdout instead",
            nats_error.as_deref().unwrap_or("no NATS connection")
        ),
        (Some(_), Some(subject)) => eprintln!("genesis: published the {job} document to {subject}"),
        (None, _) => {}
    }
    eprintln!("genesis: {job}: {}", outcome.summary);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Env;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn context(clock: Arc<FakeClock>) -> (tempfile::TempDir, JobContext) {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().to_path_buf();
        let config = Config::from_layers(home.clone(), None, &Env::default()).unwrap();
        let store = Store::open(&home.join("genesis.redb")).unwrap();
        let ctx = JobContext {
            config: Arc::new(config),
            store,
            nats: None,
            clock,
        };
        (dir, ctx)
    }

    #[test]
    fn schedules_fire_at_their_instants() {
        let cleanup = parse_schedule("0 0 */6 * * *").unwrap();
        let mut since = t("2024-03-01T05:00:00Z");
        let mut fired = Vec::new();
        for _ in 0..5 {
            let Due::At(at) = next_due(&cleanup, since, since) else {
                panic!("nothing due right after a run")
            };
            // Just before the instant: still waiting. At it: due.
            assert_eq!(
                next_due(&cleanup, since, at - TimeDelta::milliseconds(1)),
                Due::At(at)
            );
            assert_eq!(next_due(&cleanup, since, at), Due::Now { missed: at });
            fired.push(at);
            since = at;
        }
        let expected: Vec<_> = [
            "2024-03-01T06:00:00Z",
            "2024-03-01T12:00:00Z",
            "2024-03-01T18:00:00Z",
            "2024-03-02T00:00:00Z",
            "2024-03-02T06:00:00Z",
        ]
        .into_iter()
        .map(t)
        .collect();
        assert_eq!(fired, expected);

        let health = parse_schedule("0 */5 * * * *").unwrap();
        let since = t("2024-03-01T10:02:30Z");
        assert_eq!(
            next_due(&health, since, since),
            Due::At(t("2024-03-01T10:05:00Z"))
        );
    }

    #[test]
    fn a_gap_is_caught_up_once_and_nothing_fires_twice() {
        let daily = parse_schedule("0 0 0 * * *").unwrap();
        let last = t("2024-03-01T00:00:00Z");
        let now = t("2024-03-09T13:00:00Z");
        // Eight instants were missed: one run is due, counted from the first.
        assert_eq!(
            next_due(&daily, last, now),
            Due::Now {
                missed: t("2024-03-02T00:00:00Z")
            }
        );
        // Having run at `now`, the next is tomorrow's instant, not the backlog.
        assert_eq!(
            next_due(&daily, now, now),
            Due::At(t("2024-03-10T00:00:00Z"))
        );
        // A run exactly at an instant does not fire again at that instant.
        let instant = t("2024-03-10T00:00:00Z");
        assert_eq!(
            next_due(&daily, instant, instant),
            Due::At(t("2024-03-11T00:00:00Z"))
        );
        // A last run in the future (clock set back) counts from now.
        assert_eq!(
            next_due(&daily, t("2030-01-01T00:00:00Z"), now),
            Due::At(t("2024-03-10T00:00:00Z"))
        );
    }

    #[test]
    fn backoff_doubles_and_saturates() {
        assert_eq!(backoff_ms(1000, 1), 1000);
        assert_eq!(backoff_ms(1000, 2), 2000);
        assert_eq!(backoff_ms(1000, 3), 4000);
        assert_eq!(backoff_ms(0, 5), 0);
        assert_eq!(backoff_ms(1000, 200), u64::MAX);
        assert_eq!(
            later(t("2024-01-01T00:00:00Z"), u64::MAX),
            DateTime::<Utc>::MAX_UTC
        );
    }

    #[tokio::test]
    async fn retries_wait_the_backoff_on_the_clock() {
        let start = t("2024-03-01T00:00:00Z");
        let clock = Arc::new(FakeClock::new(start));
        let policy = JobsPolicy {
            max_attempts: 3,
            backoff_ms: 1000,
        };
        let calls = Arc::new(AtomicU32::new(0));
        let task = {
            let (clock, calls) = (clock.clone(), calls.clone());
            tokio::spawn(async move {
                retry(clock.as_ref(), &policy, None, |n| {
                    calls.fetch_add(1, Ordering::SeqCst);
                    async move {
                        if n < 3 {
                            Err(GenesisError::Nats(format!("attempt {n} fails")))
                        } else {
                            Ok(n)
                        }
                    }
                })
                .await
            })
        };
        let first = clock.wait_for_sleeper(|_| true).await;
        assert_eq!(first - start, TimeDelta::milliseconds(1000));
        clock.set(first);
        let second = clock.wait_for_sleeper(|d| d > first).await;
        assert_eq!(second - first, TimeDelta::milliseconds(2000));
        clock.set(second);
        let (result, attempts) = task.await.unwrap();
        assert_eq!((result.unwrap(), attempts), (3, 3));
        assert_eq!(calls.load(Ordering::SeqCst), 3);

        // Out of attempts: the last error, after max_attempts tries.
        let policy = JobsPolicy {
            max_attempts: 1,
            backoff_ms: 1000,
        };
        let (result, attempts) = retry(clock.as_ref(), &policy, None, |_| async {
            Err::<(), _>(GenesisError::Nats("down".into()))
        })
        .await;
        assert!(result.is_err());
        assert_eq!(attempts, 1);
    }

    async fn state(ctx: &JobContext, job: Job) -> JobState {
        ctx.store
            .call(move |s| s.job_state::<JobState>(job.name()))
            .await
            .unwrap()
            .expect("job state stored")
    }

    #[tokio::test]
    async fn the_loop_fires_on_schedule_and_catches_up_once_after_a_gap() {
        let clock = Arc::new(FakeClock::new(t("2024-03-01T22:00:00Z")));
        let (_dir, ctx) = context(clock.clone());
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(job_loop(ctx.clone(), Job::Analysis, shutdown));

        // Never ran: it waits for the next midnight rather than running now.
        let first = clock.wait_for_sleeper(|_| true).await;
        assert_eq!(first, t("2024-03-02T00:00:00Z"));
        clock.set(first);
        let next = clock.wait_for_sleeper(|d| d > first).await;
        assert_eq!(next, t("2024-03-03T00:00:00Z"));
        let s = state(&ctx, Job::Analysis).await;
        assert_eq!(
            (s.runs, s.last_run_ms, s.ok),
            (1, first.timestamp_millis(), true)
        );

        // A week passes unobserved: one run, then the next midnight.
        let late = t("2024-03-09T13:00:00Z");
        clock.set(late);
        let next = clock.wait_for_sleeper(|d| d > late).await;
        assert_eq!(next, t("2024-03-10T00:00:00Z"));
        let s = state(&ctx, Job::Analysis).await;
        assert_eq!((s.runs, s.last_run_ms), (2, late.timestamp_millis()));
        let trend: Trend = ctx.store.trend(TREND_LATEST).unwrap().unwrap();
        assert_eq!(trend.to_ms, late.timestamp_millis());

        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_run_missed_while_down_runs_once_at_start() {
        let clock = Arc::new(FakeClock::new(t("2024-03-05T12:00:00Z")));
        let (_dir, ctx) = context(clock.clone());
        let before = JobState {
            last_run_ms: t("2024-03-01T00:00:00Z").timestamp_millis(),
            finished_ms: t("2024-03-01T00:00:01Z").timestamp_millis(),
            ok: true,
            attempts: 1,
            runs: 7,
            summary: String::new(),
        };
        ctx.store.put_job_state("analysis", &before).unwrap();
        let (stop, shutdown) = watch::channel(false);
        let task = tokio::spawn(job_loop(ctx.clone(), Job::Analysis, shutdown));
        let next = clock.wait_for_sleeper(|_| true).await;
        assert_eq!(next, t("2024-03-06T00:00:00Z"));
        let s = state(&ctx, Job::Analysis).await;
        assert_eq!(
            (s.runs, s.last_run_ms),
            (8, t("2024-03-05T12:00:00Z").timestamp_millis())
        );
        stop.send(true).unwrap();
        task.await.unwrap();
    }

    #[tokio::test]
    async fn a_job_does_not_overlap_itself() {
        let clock = Arc::new(FakeClock::new(t("2024-03-05T12:00:00Z")));
        let (_dir, ctx) = context(clock);
        let held = JobLock::try_acquire(&ctx.config.home, Job::Cleanup)
            .unwrap()
            .unwrap();
        let outcome = run_job(&ctx, Job::Cleanup).await.unwrap();
        assert!(outcome.skipped.is_some(), "{outcome:?}");
        // Other jobs are not blocked by it.
        assert!(run_job(&ctx, Job::Analysis)
            .await
            .unwrap()
            .skipped
            .is_none());
        drop(held);
        let outcome = run_job(&ctx, Job::Report).await.unwrap();
        assert!(outcome.skipped.is_none());
        assert_eq!(outcome.published_to, None);
        let report: MetricsReport =
            serde_json::from_str(outcome.document.as_deref().unwrap()).unwrap();
        assert_eq!(report.period.to, t("2024-03-05T12:00:00Z"));
        assert_eq!(report.period.from, t("2024-03-04T12:00:00Z"));
    }
}
