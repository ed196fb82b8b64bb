//! The scheduler: one loop per job, each sleeping through the clock until
//! its next instant, catching up once after downtime.

use crate::errors::Result;
use chrono::{DateTime, Utc};
use tokio::sync::watch;

use super::*;

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
pub(super) async fn job_loop(ctx: JobContext, job: Job, mut shutdown: watch::Receiver<bool>) {
    let schedule = job.schedule(&ctx.config).clone();
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
