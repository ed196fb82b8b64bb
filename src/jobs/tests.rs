use super::*;
use crate::config::schedule::parse_schedule;
use crate::config::Env;
use crate::config::{Config, JobsPolicy};
use crate::contract::MetricsReport;
use crate::errors::GenesisError;
use crate::store::Store;
use chrono::{DateTime, TimeDelta, Utc};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

fn context(clock: Arc<FakeClock>) -> (tempfile::TempDir, JobContext) {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().to_path_buf();
    let config = Config::from_layers(home.clone(), None, &Env::default()).unwrap();
    let store = Store::open(&config.store_path()).unwrap();
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
        backoff: std::time::Duration::from_millis(1000),
        report_html: false,
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
        backoff: std::time::Duration::from_millis(1000),
        report_html: false,
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
    let report: MetricsReport = serde_json::from_str(outcome.document.as_deref().unwrap()).unwrap();
    assert_eq!(report.period.to, t("2024-03-05T12:00:00Z"));
    assert_eq!(report.period.from, t("2024-03-04T12:00:00Z"));
}
