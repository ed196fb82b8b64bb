//! Keyed blobs beside the experiments: cached baseline runs, scheduled
//! jobs' state, analysis output, the runs started per experiment and how
//! each request was delivered.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::*;

impl Store {
    /// A cached baseline run, by its cache key.
    pub fn baseline<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.get_from(BASELINES, key)
    }

    pub fn put_baseline<T: Serialize>(&self, key: &str, value: &T) -> Result<()> {
        self.put_into(BASELINES, key, value)
    }

    /// Scheduled-job state, by job name.
    pub fn job_state<T: DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        self.get_from(JOBS, name)
    }

    pub fn put_job_state<T: Serialize>(&self, name: &str, value: &T) -> Result<()> {
        self.put_into(JOBS, name, value)
    }

    /// Analysis output, by key.
    pub fn trend<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        self.get_from(TRENDS, key)
    }

    pub fn put_trend<T: Serialize>(&self, key: &str, value: &T) -> Result<()> {
        self.put_into(TRENDS, key, value)
    }

    /// How many times a run of this experiment was started. A process that
    /// dies mid-run (killed by the kernel) leaves the count behind, so the
    /// next one can tell a crash loop from a first try.
    pub fn run_attempts(&self, experiment_id: &str) -> Result<u32> {
        Ok(self.get_from(ATTEMPTS, experiment_id)?.unwrap_or(0))
    }

    /// Counts one more started run; returns the new count.
    pub fn count_run_attempt(&self, experiment_id: &str) -> Result<u32> {
        let attempts = self.run_attempts(experiment_id)?.saturating_add(1);
        self.put_into(ATTEMPTS, experiment_id, &attempts)?;
        Ok(attempts)
    }

    /// How a request reached this host, kept so that a process resuming
    /// it after a crash answers where the first one would have.
    pub fn delivery(&self, experiment_id: &str) -> Result<Option<Delivery>> {
        self.get_from(DELIVERIES, experiment_id)
    }

    pub fn put_delivery(&self, experiment_id: &str, delivery: &Delivery) -> Result<()> {
        self.put_into(DELIVERIES, experiment_id, delivery)
    }
}

/// The parts of a request's message that are not its body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// JetStream stream sequence of the message.
    pub seq: Option<u64>,
    /// Where the requester wants the answer too (`Genesis-Reply-To`).
    pub reply: Option<String>,
    pub traceparent: Option<String>,
}
