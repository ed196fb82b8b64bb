//! Keyed blobs beside the experiments: cached baseline runs, scheduled
//! jobs' state and analysis output.

use serde::de::DeserializeOwned;
use serde::Serialize;

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
}
