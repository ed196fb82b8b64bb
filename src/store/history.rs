//! The sandbox history: one row per step of a sandbox's life (create,
//! cleanup, archive, export, verify, delete), indexed by experiment.

use super::*;

impl Store {
    /// Calls `f` for every sandbox history row, oldest first.
    pub fn for_each_history(&self, mut f: impl FnMut(SandboxEvent) -> Result<()>) -> Result<()> {
        let txn = self.db.get()?.begin_read().map_err(|e| self.err(e))?;
        let table = txn.open_table(HISTORY).map_err(|e| self.err(e))?;
        for entry in table.iter().map_err(|e| self.err(e))? {
            let (_, v) = entry.map_err(|e| self.err(e))?;
            f(self.read_row(v.value())?)?;
        }
        Ok(())
    }

    /// Appends a sandbox history row, stamped with this store's host, and
    /// returns its id.
    pub fn add_history(
        &self,
        experiment_id: &str,
        operation: SandboxOperation,
        path: &str,
        size_bytes: u64,
        detail: &str,
    ) -> Result<u64> {
        let txn = self.db.get()?.begin_write().map_err(|e| self.err(e))?;
        let id = {
            let mut meta = txn.open_table(META).map_err(|e| self.err(e))?;
            let id = meta
                .get("next_history_id")
                .map_err(|e| self.err(e))?
                .map(|v| v.value())
                .unwrap_or(1);
            meta.insert("next_history_id", id + 1)
                .map_err(|e| self.err(e))?;
            let event = SandboxEvent {
                id,
                host: self.host.to_string(),
                experiment_id: experiment_id.into(),
                operation,
                path: path.into(),
                size_bytes,
                detail: detail.into(),
                inserted_at: now_ms(),
            };
            let mut history = txn.open_table(HISTORY).map_err(|e| self.err(e))?;
            history
                .insert(id, encode(&event)?.as_slice())
                .map_err(|e| self.err(e))?;
            let mut index = txn
                .open_multimap_table(HISTORY_BY_EXPERIMENT)
                .map_err(|e| self.err(e))?;
            index.insert(experiment_id, id).map_err(|e| self.err(e))?;
            id
        };
        txn.commit().map_err(|e| self.err(e))?;
        Ok(id)
    }

    /// Sandbox history of one experiment, oldest first.
    pub fn history(&self, experiment_id: &str) -> Result<Vec<SandboxEvent>> {
        let txn = self.db.get()?.begin_read().map_err(|e| self.err(e))?;
        let index = txn
            .open_multimap_table(HISTORY_BY_EXPERIMENT)
            .map_err(|e| self.err(e))?;
        let history = txn.open_table(HISTORY).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for id in index.get(experiment_id).map_err(|e| self.err(e))? {
            let id = id.map_err(|e| self.err(e))?.value();
            if let Some(raw) = history.get(id).map_err(|e| self.err(e))? {
                out.push(self.read_row(raw.value())?);
            }
        }
        Ok(out)
    }
}
