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
//! - **Documents.** `report` publishes a [`MetricsReport`](crate::contract::MetricsReport) on
//!   `system.metrics.genesis` (and, with `[jobs] report_html`, writes the
//!   trends page to `GENESIS_HOME/reports/trends.html`), `health` a
//!   [`Health`](crate::contract::Health) on
//!   `system.health.genesis`; without a NATS client the document is still
//!   built and returned in the [`JobOutcome`] (the CLI prints it).
//!   `analysis` stores a [`Trend`] per day and as `analysis/latest`.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::Config;
use crate::contract::subjects;
use crate::errors::{GenesisError, Result};
use crate::maintenance;
use crate::store::Store;

mod clock;
pub use clock::*;
mod trends;
pub use trends::*;
mod scheduler;
pub use scheduler::*;
mod run_now;
pub use run_now::*;

const BYTES_PER_MB: f64 = 1024.0 * 1024.0;
/// Key of the most recent analysis in the trends table.
pub const TREND_LATEST: &str = "analysis/latest";

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
    pub fn schedule(self, config: &Config) -> &cron::Schedule {
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
        let dir = crate::home::Home::of(home).jobs();
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
            let mut summary = format!(
                "{} experiment(s) in the last day, success rate {:.3}",
                report.totals.experiments, report.success_rate
            );
            if ctx.config.jobs.report_html {
                summary.push_str(&trends_page(ctx).await);
            }
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

/// Writes `GENESIS_HOME/reports/trends.html` over `cleanup.analysis_days`.
/// The published document is the run's product: a page that cannot be
/// written is logged and named in the summary, and does not fail the run.
async fn trends_page(ctx: &JobContext) -> String {
    let (config, now) = (ctx.config.clone(), ctx.clock.now());
    let written = ctx
        .store
        .call(move |s| {
            let html = crate::report::trends(s, &config, config.cleanup.analysis_days, now)?;
            let path = crate::report::trends_path(&config);
            crate::report::write(&path, &html)?;
            Ok(path)
        })
        .await;
    match written {
        Ok(path) => format!("; trends page {}", path.display()),
        Err(e) => {
            tracing::warn!(job = "report", error = %e, "could not write the trends page");
            format!("; trends page not written: {e}")
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
    let wait = ctx.config.nats.ack_wait;
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
            ctx.config.nats.ack_wait.as_millis()
        ))),
    }
}

#[cfg(test)]
mod tests;
