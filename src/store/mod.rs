//! The embedded store: one redb file in `GENESIS_HOME`.
//!
//! Design:
//! - Tables mirror the export: `experiment_records`, `experiment_metrics`,
//!   `sandbox_history`, plus index tables (`records_by_time`,
//!   `records_by_status`, `history_by_experiment`) and service state
//!   (`baselines`, `test_outcomes`, `jobs`, `trends`, `meta`).
//! - Values are serde types encoded with bincode 2 behind a 4-byte schema
//!   version, so a later release can still read (and migrate) old rows. Types
//!   stored here must stay bincode-friendly: no `#[serde(tag)]`, `flatten` or
//!   `skip_serializing_if`; JSON documents are kept as strings. Version 2
//!   added `host` to records, metrics rows and history rows ([`Row`]); every
//!   other value has the same shape under both versions.
//! - A store belongs to one host (`[host] name`): it stamps that name on every
//!   row it writes that names none, and on version-1 rows as it reads them,
//!   so an old store exports with the configured host.
//! - redb is synchronous with a single writer. All methods here are blocking;
//!   async code calls them through [`Store::call`], which runs them on tokio's
//!   blocking pool. Every commit is durable (fsync) before it returns, which is
//!   what "nothing lost" rests on.
//! - The file is opened in redb's multi-writer mode so `genesis list`, `show`,
//!   `export` and `jobs run` work while `genesis serve` has it open.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use redb::{MultimapTableDefinition, ReadableDatabase, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::config::Config;
use crate::errors::{GenesisError, Result};

pub mod faults;
mod handle;
mod history;
mod keyed;
pub use keyed::Delivery;
mod records;
pub use records::*;

/// Version written in front of every value. Bump it when a stored type
/// changes shape, and teach [`decode`] to read the older version.
pub const SCHEMA_VERSION: u32 = 2;

/// The oldest version [`decode`] still reads.
const OLDEST_SCHEMA_VERSION: u32 = 1;

const RECORDS: TableDefinition<&str, &[u8]> = TableDefinition::new("experiment_records");
const METRICS: TableDefinition<&str, &[u8]> = TableDefinition::new("experiment_metrics");
const HISTORY: TableDefinition<u64, &[u8]> = TableDefinition::new("sandbox_history");
const BY_TIME: TableDefinition<(i64, &str), ()> = TableDefinition::new("records_by_time");
const BY_STATUS: MultimapTableDefinition<&str, &str> =
    MultimapTableDefinition::new("records_by_status");
const HISTORY_BY_EXPERIMENT: MultimapTableDefinition<&str, u64> =
    MultimapTableDefinition::new("history_by_experiment");
const OUTCOMES: TableDefinition<&str, &[u8]> = TableDefinition::new("test_outcomes");
const BASELINES: TableDefinition<&str, &[u8]> = TableDefinition::new("baselines");
const JOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("jobs");
const TRENDS: TableDefinition<&str, &[u8]> = TableDefinition::new("trends");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// Runs started per experiment (see `Store::count_run_attempt`).
const ATTEMPTS: TableDefinition<&str, &[u8]> = TableDefinition::new("run_attempts");
/// How each request reached this host (see `Store::delivery`).
const DELIVERIES: TableDefinition<&str, &[u8]> = TableDefinition::new("deliveries");

/// How much of the file an open verifies.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    /// What redb reads to open it (header, table roots): fast, for every command.
    Trust,
    /// The checksum of every page of the committed trees.
    EveryPage,
}

/// Handle to the store; cheap to clone, shared by all tasks.
#[derive(Clone)]
pub struct Store {
    db: Arc<handle::Handle>,
    path: PathBuf,
    /// `[host] name`, stamped on rows that name no host (see the module doc).
    host: Arc<str>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.path)
            .field("host", &self.host)
            .finish()
    }
}

/// Encodes a value behind the schema version.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let mut out = SCHEMA_VERSION.to_le_bytes().to_vec();
    let body = bincode::serde::encode_to_vec(value, bincode::config::standard())
        .map_err(|e| GenesisError::Internal(format!("encoding a stored value: {e}")))?;
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes a value written by [`encode`], refusing versions this build does
/// not know. For values whose shape no version changed; the rows that did
/// change go through [`decode_row`].
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    let (_, body) = split_version(bytes)?;
    decode_body(body)
}

/// Decodes a [`Row`] in whichever shape its version wrote; a version-1 row
/// comes back with an empty `host`.
pub fn decode_row<T: Row>(bytes: &[u8]) -> Result<T> {
    match split_version(bytes)? {
        (SCHEMA_VERSION, body) => decode_body(body),
        (_, body) => decode_body::<T::V1>(body).map(Into::into),
    }
}

fn split_version(bytes: &[u8]) -> Result<(u32, &[u8])> {
    let (version, body) = bytes
        .split_first_chunk::<4>()
        .ok_or_else(|| GenesisError::Internal("stored value shorter than its header".into()))?;
    let version = u32::from_le_bytes(*version);
    if !(OLDEST_SCHEMA_VERSION..=SCHEMA_VERSION).contains(&version) {
        return Err(GenesisError::Internal(format!(
            "stored value has schema version {version}; this genesis reads versions {OLDEST_SCHEMA_VERSION} to {SCHEMA_VERSION}"
        )));
    }
    Ok((version, body))
}

fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T> {
    bincode::serde::decode_from_slice(body, bincode::config::standard())
        .map(|(v, _)| v)
        .map_err(|e| GenesisError::Internal(format!("decoding a stored value: {e}")))
}

/// Page cache for stores opened without a config (tests, tools): the
/// service and CLI use `store_cache_mb` from the config instead.
pub const DEFAULT_CACHE_BYTES: usize = 32 * 1024 * 1024;

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Store {
    /// Opens (or creates) the store, creating every table so readers never
    /// meet a missing one. Its rows are this machine's (its hostname).
    pub fn open(path: &Path) -> Result<Store> {
        let host = crate::config::host::machine_hostname();
        Store::open_with(path, DEFAULT_CACHE_BYTES, &host)
    }

    /// As [`Store::open`], with redb's page cache bounded to `cache_bytes`
    /// (memory then stays flat however many rows a scan reads) and `host`
    /// as the host of its rows.
    ///
    /// A damaged file (garbage, cut short) is refused with
    /// [`GenesisError::StoreDamaged`], also when redb panics on it (see
    /// [`faults`]).
    pub fn open_with(path: &Path, cache_bytes: usize, host: &str) -> Result<Store> {
        Store::open_checked(path, cache_bytes, host, Check::Trust)
    }

    /// As [`Store::open_with`], after verifying the checksum of every page
    /// of the file (it reads the whole file): for `genesis doctor`, which
    /// must find damage that a plain open does not touch.
    pub fn open_verified(path: &Path, cache_bytes: usize, host: &str) -> Result<Store> {
        Store::open_checked(path, cache_bytes, host, Check::EveryPage)
    }

    fn open_checked(path: &Path, cache_bytes: usize, host: &str, check: Check) -> Result<Store> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                faults::home_full_or(
                    GenesisError::io(format!("creating {}", dir.display()), e),
                    dir,
                )
            })?;
        }
        faults::guarded(|| Store::open_unguarded(path, cache_bytes, host, check)).unwrap_or_else(
            |panic| {
                Err(faults::damaged(
                    path,
                    &format!("redb could not read it ({panic})"),
                ))
            },
        )
    }

    fn open_unguarded(path: &Path, cache_bytes: usize, host: &str, check: Check) -> Result<Store> {
        let db = handle::open_database(path, cache_bytes, check == Check::EveryPage)
            .map_err(|e| faults::store_error(path, e))?;
        let store = Store {
            db: Arc::new(handle::Handle::new(db, path, cache_bytes)),
            path: path.to_path_buf(),
            host: host.into(),
        };
        store.init_tables()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The host this store's rows belong to.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Decodes a row, naming this store's host when the row names none.
    /// A row that does not decode was damaged on disk (redb does not
    /// verify checksums on every read): it is reported as a damaged store,
    /// with the file and the fix.
    fn read_row<T: Row>(&self, bytes: &[u8]) -> Result<T> {
        let mut row: T = decode_row(bytes).map_err(|e| {
            faults::damaged(
                &self.path,
                &format!("a stored row cannot be read back ({e})"),
            )
        })?;
        self.stamp(&mut row);
        Ok(row)
    }

    /// Names this store's host on a row that names none.
    fn stamp<T: Row>(&self, row: &mut T) {
        let host = row.host_mut();
        if host.is_empty() {
            *host = self.host.to_string();
        }
    }

    /// A row as it is written: with a host.
    fn encode_row<T: Row + Clone>(&self, row: &T) -> Result<Vec<u8>> {
        let mut row = row.clone();
        self.stamp(&mut row);
        encode(&row)
    }

    /// Runs blocking store work on tokio's blocking pool.
    pub async fn call<F, R>(&self, f: F) -> Result<R>
    where
        F: FnOnce(&Store) -> Result<R> + Send + 'static,
        R: Send + 'static,
    {
        let store = self.clone();
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| GenesisError::Internal(format!("store task panicked: {e}")))?
    }

    fn err(&self, e: impl Into<redb::Error>) -> GenesisError {
        let e = e.into();
        self.db.saw(&e);
        faults::store_error(&self.path, e)
    }

    fn init_tables(&self) -> Result<()> {
        let txn = self.db.get()?.begin_write().map_err(|e| self.err(e))?;
        {
            txn.open_table(RECORDS).map_err(|e| self.err(e))?;
            txn.open_table(METRICS).map_err(|e| self.err(e))?;
            txn.open_table(HISTORY).map_err(|e| self.err(e))?;
            txn.open_table(BY_TIME).map_err(|e| self.err(e))?;
            txn.open_multimap_table(BY_STATUS)
                .map_err(|e| self.err(e))?;
            txn.open_multimap_table(HISTORY_BY_EXPERIMENT)
                .map_err(|e| self.err(e))?;
            txn.open_table(OUTCOMES).map_err(|e| self.err(e))?;
            txn.open_table(BASELINES).map_err(|e| self.err(e))?;
            txn.open_table(JOBS).map_err(|e| self.err(e))?;
            txn.open_table(TRENDS).map_err(|e| self.err(e))?;
            txn.open_table(ATTEMPTS).map_err(|e| self.err(e))?;
            txn.open_table(DELIVERIES).map_err(|e| self.err(e))?;
            let mut meta = txn.open_table(META).map_err(|e| self.err(e))?;
            let stored = meta
                .get("schema_version")
                .map_err(|e| self.err(e))?
                .map(|v| v.value());
            match stored {
                None => {
                    meta.insert("schema_version", u64::from(SCHEMA_VERSION))
                        .map_err(|e| self.err(e))?;
                }
                Some(v) if v > u64::from(SCHEMA_VERSION) => {
                    return Err(GenesisError::StoreTooNew {
                        path: self.path.clone(),
                        schema: v,
                        reads: u64::from(SCHEMA_VERSION),
                    })
                }
                // This genesis writes the current version from now on: an
                // older one must refuse the file rather than misread rows.
                Some(v) if v < u64::from(SCHEMA_VERSION) => {
                    meta.insert("schema_version", u64::from(SCHEMA_VERSION))
                        .map_err(|e| self.err(e))?;
                }
                Some(_) => {}
            }
        }
        txn.commit().map_err(|e| self.err(e))
    }

    /// The schema version recorded in the file.
    pub fn schema_version(&self) -> Result<u64> {
        let txn = self.db.get()?.begin_read().map_err(|e| self.err(e))?;
        let meta = txn.open_table(META).map_err(|e| self.err(e))?;
        let v = meta.get("schema_version").map_err(|e| self.err(e))?;
        Ok(v.map(|v| v.value()).unwrap_or(0))
    }

    /// Inserts a new experiment unless its id is known; atomic, so two
    /// deliveries of one request can never both start it.
    pub fn insert_new(&self, record: &ExperimentRecord) -> Result<Inserted> {
        let txn = self.db.get()?.begin_write().map_err(|e| self.err(e))?;
        let outcome = {
            let mut records = txn.open_table(RECORDS).map_err(|e| self.err(e))?;
            let existing = records
                .get(record.experiment_id.as_str())
                .map_err(|e| self.err(e))?
                .map(|v| self.read_row::<ExperimentRecord>(v.value()))
                .transpose()?;
            match existing {
                Some(existing) => Inserted::Existing(Box::new(existing)),
                None => {
                    records
                        .insert(
                            record.experiment_id.as_str(),
                            self.encode_row(record)?.as_slice(),
                        )
                        .map_err(|e| self.err(e))?;
                    let mut by_time = txn.open_table(BY_TIME).map_err(|e| self.err(e))?;
                    by_time
                        .insert((record.inserted_at, record.experiment_id.as_str()), ())
                        .map_err(|e| self.err(e))?;
                    let mut by_status = txn
                        .open_multimap_table(BY_STATUS)
                        .map_err(|e| self.err(e))?;
                    by_status
                        .insert(record.status.as_str(), record.experiment_id.as_str())
                        .map_err(|e| self.err(e))?;
                    Inserted::New
                }
            }
        };
        txn.commit().map_err(|e| self.err(e))?;
        Ok(outcome)
    }

    /// Hands an experiment from `from` (a dead owner) to `to`, in one write
    /// transaction: only if the record still names `from`, so of two
    /// takers that both saw the dead owner (a resumed run and the
    /// request's redelivery) exactly one wins. Returns whether this one did.
    pub fn take_over(&self, experiment_id: &str, from: &str, to: &str) -> Result<bool> {
        let txn = self.db.get()?.begin_write().map_err(|e| self.err(e))?;
        let current = {
            let records = txn.open_table(RECORDS).map_err(|e| self.err(e))?;
            let row = records.get(experiment_id).map_err(|e| self.err(e))?;
            row.map(|v| self.read_row::<ExperimentRecord>(v.value()))
                .transpose()?
        };
        let Some(mut record) = current.filter(|r| r.owner == from) else {
            return Ok(false);
        };
        record.owner = to.to_owned();
        self.write_in(&txn, &record, None, None)?;
        txn.commit().map_err(|e| self.err(e))?;
        Ok(true)
    }

    /// Writes a changed record, keeping the status index in step.
    pub fn put_record(&self, record: &ExperimentRecord) -> Result<()> {
        self.write_final(record, None, None)
    }

    /// Stores a record with, optionally, its metrics and per-test outcomes, in
    /// one transaction: a reader never sees a completed record without metrics.
    pub fn write_final(
        &self,
        record: &ExperimentRecord,
        metrics: Option<&MetricsRow>,
        outcomes: Option<&TestOutcomes>,
    ) -> Result<()> {
        let txn = self.db.get()?.begin_write().map_err(|e| self.err(e))?;
        self.write_in(&txn, record, metrics, outcomes)?;
        txn.commit().map_err(|e| self.err(e))
    }

    /// Stores many records (and their metrics) in one transaction: for
    /// imports and for building large stores in benchmarks, where one
    /// commit per record would be dominated by fsync.
    pub fn write_batch(&self, rows: &[(ExperimentRecord, Option<MetricsRow>)]) -> Result<()> {
        let txn = self.db.get()?.begin_write().map_err(|e| self.err(e))?;
        for (record, metrics) in rows {
            self.write_in(&txn, record, metrics.as_ref(), None)?;
        }
        txn.commit().map_err(|e| self.err(e))
    }

    fn write_in(
        &self,
        txn: &redb::WriteTransaction,
        record: &ExperimentRecord,
        metrics: Option<&MetricsRow>,
        outcomes: Option<&TestOutcomes>,
    ) -> Result<()> {
        let id = record.experiment_id.as_str();
        {
            let mut records = txn.open_table(RECORDS).map_err(|e| self.err(e))?;
            let old = records
                .get(id)
                .map_err(|e| self.err(e))?
                .map(|v| self.read_row::<ExperimentRecord>(v.value()))
                .transpose()?;
            let mut by_status = txn
                .open_multimap_table(BY_STATUS)
                .map_err(|e| self.err(e))?;
            match &old {
                Some(old) => {
                    by_status
                        .remove(old.status.as_str(), id)
                        .map_err(|e| self.err(e))?;
                }
                None => {
                    let mut by_time = txn.open_table(BY_TIME).map_err(|e| self.err(e))?;
                    by_time
                        .insert((record.inserted_at, id), ())
                        .map_err(|e| self.err(e))?;
                }
            }
            by_status
                .insert(record.status.as_str(), id)
                .map_err(|e| self.err(e))?;
            records
                .insert(id, self.encode_row(record)?.as_slice())
                .map_err(|e| self.err(e))?;
            if let Some(m) = metrics {
                let mut table = txn.open_table(METRICS).map_err(|e| self.err(e))?;
                table
                    .insert(id, self.encode_row(m)?.as_slice())
                    .map_err(|e| self.err(e))?;
            }
            if let Some(o) = outcomes {
                let mut table = txn.open_table(OUTCOMES).map_err(|e| self.err(e))?;
                table
                    .insert(id, encode(o)?.as_slice())
                    .map_err(|e| self.err(e))?;
            }
        }
        Ok(())
    }

    pub fn get(&self, id: &str) -> Result<Option<ExperimentRecord>> {
        self.get_row(RECORDS, id)
    }

    pub fn metrics(&self, id: &str) -> Result<Option<MetricsRow>> {
        self.get_row(METRICS, id)
    }

    pub fn outcomes(&self, id: &str) -> Result<Option<TestOutcomes>> {
        self.get_from(OUTCOMES, id)
    }

    fn get_from<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>> {
        let txn = self.db.get()?.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(table).map_err(|e| self.err(e))?;
        let value = table.get(key).map_err(|e| self.err(e))?;
        value.map(|v| decode(v.value())).transpose()
    }

    fn get_row<T: Row>(&self, table: TableDefinition<&str, &[u8]>, key: &str) -> Result<Option<T>> {
        let txn = self.db.get()?.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(table).map_err(|e| self.err(e))?;
        let value = table.get(key).map_err(|e| self.err(e))?;
        value.map(|v| self.read_row(v.value())).transpose()
    }

    fn put_into<T: Serialize>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
        value: &T,
    ) -> Result<()> {
        let txn = self.db.get()?.begin_write().map_err(|e| self.err(e))?;
        {
            let mut t = txn.open_table(table).map_err(|e| self.err(e))?;
            t.insert(key, encode(value)?.as_slice())
                .map_err(|e| self.err(e))?;
        }
        txn.commit().map_err(|e| self.err(e))
    }

    /// Experiments newest first, optionally only those in one status.
    pub fn list(&self, status: Option<Status>, limit: usize) -> Result<Vec<ExperimentRecord>> {
        let txn = self.db.get()?.begin_read().map_err(|e| self.err(e))?;
        let by_time = txn.open_table(BY_TIME).map_err(|e| self.err(e))?;
        let records = txn.open_table(RECORDS).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for entry in by_time.iter().map_err(|e| self.err(e))?.rev() {
            if out.len() >= limit {
                break;
            }
            let (key, _) = entry.map_err(|e| self.err(e))?;
            let (_, id) = key.value();
            let Some(raw) = records.get(id).map_err(|e| self.err(e))? else {
                continue;
            };
            let record: ExperimentRecord = self.read_row(raw.value())?;
            if status.is_none_or(|s| s == record.status) {
                out.push(record);
            }
        }
        Ok(out)
    }

    /// Ids of experiments in one status (from the status index).
    pub fn ids_with_status(&self, status: Status) -> Result<Vec<String>> {
        let txn = self.db.get()?.begin_read().map_err(|e| self.err(e))?;
        let by_status = txn
            .open_multimap_table(BY_STATUS)
            .map_err(|e| self.err(e))?;
        let mut ids = Vec::new();
        for id in by_status.get(status.as_str()).map_err(|e| self.err(e))? {
            ids.push(id.map_err(|e| self.err(e))?.value().to_owned());
        }
        Ok(ids)
    }

    /// Calls `f` for every record in insertion-time order, inside one read
    /// transaction (a consistent snapshot) without collecting them.
    pub fn for_each_record(
        &self,
        since_ms: Option<i64>,
        mut f: impl FnMut(ExperimentRecord) -> Result<()>,
    ) -> Result<()> {
        let txn = self.db.get()?.begin_read().map_err(|e| self.err(e))?;
        let by_time = txn.open_table(BY_TIME).map_err(|e| self.err(e))?;
        let records = txn.open_table(RECORDS).map_err(|e| self.err(e))?;
        for entry in by_time.iter().map_err(|e| self.err(e))? {
            let (key, _) = entry.map_err(|e| self.err(e))?;
            let (_, id) = key.value();
            let Some(raw) = records.get(id).map_err(|e| self.err(e))? else {
                continue;
            };
            let record: ExperimentRecord = self.read_row(raw.value())?;
            if since_ms.is_none_or(|s| record.updated_at >= s) {
                f(record)?;
            }
        }
        Ok(())
    }

    /// Calls `f` for every metrics row.
    pub fn for_each_metrics(&self, mut f: impl FnMut(MetricsRow) -> Result<()>) -> Result<()> {
        let txn = self.db.get()?.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(METRICS).map_err(|e| self.err(e))?;
        for entry in table.iter().map_err(|e| self.err(e))? {
            let (_, v) = entry.map_err(|e| self.err(e))?;
            f(self.read_row(v.value())?)?;
        }
        Ok(())
    }
}

/// Opens the store of a configured home (off the async runtime: redb is
/// synchronous), with the configured page cache and host.
pub async fn open_store(config: &Config) -> Result<Store> {
    open_store_checked(config, Check::Trust).await
}

/// As [`open_store`], verifying every page first (`genesis doctor`).
pub async fn open_store_verified(config: &Config) -> Result<Store> {
    open_store_checked(config, Check::EveryPage).await
}

async fn open_store_checked(config: &Config, check: Check) -> Result<Store> {
    let path = config.store_path();
    let cache =
        usize::try_from(config.store_cache_mb.saturating_mul(1024 * 1024)).unwrap_or(usize::MAX);
    let host = config.host.clone();
    tokio::task::spawn_blocking(move || Store::open_checked(&path, cache, &host, check))
        .await
        .map_err(|e| GenesisError::Internal(format!("store open task: {e}")))?
}

#[cfg(test)]
mod tests;
