//! `genesis jobs run NAME`: one job now, with a brief NATS connection when
//! one is reachable so the report and health documents are still published.

use crate::config::Config;
use crate::errors::{GenesisError, Result};
use std::sync::Arc;

use super::*;

async fn connect_briefly(config: &Config) -> Result<async_nats::Client> {
    use crate::nats_auth::BriefFailure;
    crate::nats_auth::connect_briefly(&config.nats, "genesis-jobs")
        .await
        .map_err(|failure| match failure {
            BriefFailure::Options(e) => e,
            BriefFailure::Connect(e) => {
                GenesisError::Nats(crate::nats_auth::describe(&config.nats.url, &e))
            }
            BriefFailure::NoAnswer(text) => GenesisError::Nats(text),
        })
}

/// `genesis jobs run NAME`: runs a job now. The job's document goes to
/// stdout; report and health are also published when NATS is reachable, and
/// stderr says whether they were. Exit 0 when the job ran, 1 when it was
/// skipped because another run holds its lock.
pub async fn run_now(config: Arc<Config>, name: &str) -> Result<i32> {
    let job = Job::parse(name).ok_or_else(|| {
        let known: Vec<&str> = Job::ALL.iter().map(|j| j.name()).collect();
        GenesisError::Usage(format!(
            "unknown job {name:?}; known jobs: {}",
            known.join(", ")
        ))
    })?;
    let store = crate::store::open_store(&config).await?;
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
