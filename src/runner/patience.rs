//! Host faults: what fails an experiment because of the host, not because
//! of the change, does not become its answer while the host can recover.
//!
//! - **An engine that does not answer** outside a run's own retries (the
//!   image looked up for the baseline's cache key or an environment's key,
//!   or a run whose retries ran out while the engine restarted): genesis
//!   waits for the engine (`[sandbox] engine_wait_ms`) and runs the
//!   experiment again, up to `[sandbox] infra_retries` times, in every mode.
//! - **A full GENESIS_HOME**: in the service ([`Runner::patient`]) the
//!   experiment waits for space and runs again, retried every `[sandbox]
//!   infra_backoff_ms`, doubling up to `[nats] retry_max_ms`, for at most
//!   `full_home_wait_ms`; so do recording the request and storing its
//!   result. Meanwhile its
//!   JetStream message is kept alive, so it is neither redelivered nor
//!   answered `failed` for a condition that passes. The command line fails
//!   at once: a person is waiting and can free space.
//!
//! Running the experiment again is safe: snapshots are written once and
//! renamed into place, the sandbox's files are written anew, a baseline is
//! cached only when it ran, and every run has a fresh container and disk.

use std::time::Duration;

use crate::contract::{stage, ExperimentResult, Request};
use crate::errors::{GenesisError, Result};
use crate::sandbox;
use crate::store::faults::home_full_or;
use crate::store::{MetricsRow, TestOutcomes};

use super::{Completed, Progress, Runner};

/// What kind of host fault an error is, if any.
enum HostFault {
    Engine,
    FullHome,
}

fn host_fault(e: &GenesisError) -> Option<HostFault> {
    match e {
        GenesisError::Infrastructure { .. } => Some(HostFault::Engine),
        GenesisError::HomeFull { .. } => Some(HostFault::FullHome),
        _ => None,
    }
}

/// Waits between tries on a full home, and says when to give up.
struct FullHomeWait {
    left: Duration,
    next: Duration,
    max: Duration,
}

impl FullHomeWait {
    fn new(runner: &Runner) -> FullHomeWait {
        let config = &runner.config;
        FullHomeWait {
            left: runner.full_home_patience.unwrap_or_default(),
            next: config.sandbox.infra_backoff.max(Duration::from_millis(1)),
            max: config.nats.retry_max.max(Duration::from_millis(1)),
        }
    }

    /// Sleeps before the next try; false when the patience is spent.
    async fn pause(&mut self) -> bool {
        if self.left.is_zero() {
            return false;
        }
        let nap = self.next.min(self.left);
        tokio::time::sleep(nap).await;
        self.left -= nap;
        self.next = (self.next * 2).min(self.max);
        true
    }
}

impl Runner {
    /// Waits up to `full_home_wait_ms` for space on a full home before an
    /// experiment or its result gives up (see the module doc). For services.
    pub fn patient(mut self) -> Runner {
        self.full_home_patience = Some(self.config.full_home_wait);
        self
    }

    /// The experiment's pipeline, run again after a host fault.
    pub(super) async fn pipeline_patiently(
        &self,
        request: &Request,
        progress: &dyn Progress,
    ) -> Result<(Completed, MetricsRow, TestOutcomes)> {
        let id = &request.experiment_id;
        let mut engine_tries = 0;
        let mut full = FullHomeWait::new(self);
        loop {
            let error = match self.pipeline(request, progress).await {
                Err(e) => home_full_or(e, &self.config.home),
                done => return done,
            };
            let fault = match host_fault(&error) {
                Some(HostFault::Engine) if engine_tries < self.config.sandbox.infra_retries => {
                    engine_tries += 1;
                    HostFault::Engine
                }
                Some(HostFault::FullHome) if !full.left.is_zero() => HostFault::FullHome,
                _ => return Err(error),
            };
            // Said before the wait, so an operator (or a test) sees it.
            tracing::warn!(experiment_id = %id, error = %error, "the host failed the experiment, not the change; waiting, then running it again");
            progress.stage(
                id,
                stage::SANDBOX,
                &format!("host fault, waiting to run again: {error}"),
            );
            match fault {
                HostFault::Engine => {
                    let wait = self.config.sandbox.engine_wait;
                    sandbox::wait_for_engine(&self.docker, wait).await?;
                }
                HostFault::FullHome => {
                    if !full.pause().await {
                        return Err(error);
                    }
                }
            }
        }
    }

    /// Records a request ([`Runner::accept`]), waiting for space on a full
    /// home (see the module doc).
    pub async fn accept_patiently(
        &self,
        request: &Request,
        status: crate::store::Status,
    ) -> Result<super::Admission> {
        let mut full = FullHomeWait::new(self);
        loop {
            let error = match self.accept(request, status).await {
                Err(e) => home_full_or(e, &self.config.home),
                done => return done,
            };
            if !matches!(host_fault(&error), Some(HostFault::FullHome)) || full.left.is_zero() {
                return Err(error);
            }
            tracing::warn!(experiment_id = %request.experiment_id, error = %error, "cannot record the request; waiting for space");
            if !full.pause().await {
                return Err(error);
            }
        }
    }

    /// Stores the result, waiting for space on a full home (see the module doc).
    pub(super) async fn finish_patiently(
        &self,
        request: &Request,
        result: &ExperimentResult,
        metrics: Option<MetricsRow>,
        outcomes: Option<TestOutcomes>,
    ) -> Result<()> {
        let mut full = FullHomeWait::new(self);
        loop {
            let stored = self
                .finish(request, result, metrics.clone(), outcomes.clone())
                .await;
            let error = match stored {
                Err(e) => home_full_or(e, &self.config.home),
                Ok(()) => return Ok(()),
            };
            if !matches!(host_fault(&error), Some(HostFault::FullHome)) || !full.pause().await {
                return Err(error);
            }
            tracing::warn!(experiment_id = %request.experiment_id, error = %error, "waiting for space to store the result");
        }
    }
}
