//! The open database behind a [`Store`](super::Store), reopened after a
//! write that failed.
//!
//! Why: after an I/O error in a commit (a full disk, typically) redb
//! refuses every later operation of that handle with "Previous I/O error
//! occurred. Please close and re-open the database". A long-running `serve`
//! whose home filled up once would then record nothing more until it was
//! restarted, although the disk has room again. So any I/O error from
//! redb marks the handle; the next use drops it and opens the file again
//! (redb then recovers its last durable commit), once no transaction still
//! holds the old one. Until that succeeds, uses fail with a store error
//! that says so, and callers retry as they would on a full home.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use redb::{ConcurrencyMode, Database};

use crate::errors::{GenesisError, Result};

pub(super) struct Handle {
    db: RwLock<Option<Arc<Database>>>,
    /// An I/O error was seen: reopen before the next use.
    poisoned: AtomicBool,
    path: PathBuf,
    cache_bytes: usize,
}

/// Opens the file as every store does (multi-writer, bounded cache).
pub(super) fn open_database(
    path: &Path,
    cache_bytes: usize,
    check_every_page: bool,
) -> std::result::Result<Database, redb::DatabaseError> {
    Database::builder()
        .set_concurrency_mode(ConcurrencyMode::MultiWriter)
        .set_cache_size(cache_bytes)
        .set_check_integrity_on_open(check_every_page)
        .create(path)
}

impl Handle {
    pub(super) fn new(db: Database, path: &Path, cache_bytes: usize) -> Handle {
        Handle {
            db: RwLock::new(Some(Arc::new(db))),
            poisoned: AtomicBool::new(false),
            path: path.to_path_buf(),
            cache_bytes,
        }
    }

    /// The database, reopened first when an earlier error poisoned it.
    pub(super) fn get(&self) -> Result<Arc<Database>> {
        if self.poisoned.load(Ordering::Acquire) {
            self.reopen();
        }
        let slot = self.db.read().unwrap_or_else(|p| p.into_inner());
        slot.clone().ok_or_else(|| GenesisError::StoreReopening {
            path: self.path.clone(),
        })
    }

    /// Notes an error from redb: an I/O error poisons the handle.
    pub(super) fn saw(&self, e: &redb::Error) {
        if matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo) {
            self.poisoned.store(true, Ordering::Release);
        }
    }

    /// Drops the poisoned database and opens the file again, unless a
    /// transaction still uses it (then a later use tries again).
    fn reopen(&self) {
        let mut slot = self.db.write().unwrap_or_else(|p| p.into_inner());
        if !self.poisoned.load(Ordering::Acquire) {
            return;
        }
        if slot.as_ref().is_some_and(|db| Arc::strong_count(db) > 1) {
            return;
        }
        // redb opens a file once per process: the old handle goes first.
        *slot = None;
        match open_database(&self.path, self.cache_bytes, false) {
            Ok(db) => {
                tracing::info!(path = %self.path.display(), "store reopened after a failed write");
                *slot = Some(Arc::new(db));
                self.poisoned.store(false, Ordering::Release);
            }
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "cannot reopen the store yet");
            }
        }
    }
}
