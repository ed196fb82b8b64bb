//! Admission: whether a request runs, is answered from the store, waits
//! for a run in progress or is refused; and taking over the experiments a
//! dead process of this host left unfinished.

use crate::contract::{ExperimentResult, Request};
use crate::errors::Result;
use crate::sandbox;
use crate::store::{ExperimentRecord, Inserted, Status};

use super::{now_ms, Admission, Runner};

impl Runner {
    /// Records a request, or says why it must not run again.
    pub async fn accept(&self, request: &Request, status: Status) -> Result<Admission> {
        let record = ExperimentRecord::new(request, status, &self.instance, now_ms());
        let inserted = self.store.call(move |s| s.insert_new(&record)).await?;
        let existing = match inserted {
            Inserted::New => return Ok(Admission::New),
            Inserted::Existing(existing) => existing,
        };
        if existing.fingerprint != request.fingerprint() {
            return Ok(Admission::Conflict(Box::new(ExperimentResult::id_reused(
                &self.config.host,
                request,
            ))));
        }
        match existing.result() {
            Some(result) if existing.status.is_final() => Ok(Admission::Finished(Box::new(result))),
            // Left queued or running by a process of this host that is gone:
            // nobody will finish it, so this one takes it over.
            _ if owner_is_dead(&existing.owner, &self.instance) => {
                // Taken over: a redelivery that arrives while this process
                // runs it must see a live owner, not run it a second time,
                // so the owner changes in one compare-and-set transaction.
                let (id, from, to) = (
                    request.experiment_id.clone(),
                    existing.owner.clone(),
                    self.instance.clone(),
                );
                if !self
                    .store
                    .call(move |s| s.take_over(&id, &from, &to))
                    .await?
                {
                    return Ok(Admission::InFlight(existing));
                }
                self.taken_over
                    .lock()
                    .await
                    .insert(request.experiment_id.clone());
                Ok(Admission::New)
            }
            _ => Ok(Admission::InFlight(existing)),
        }
    }

    /// Removes every container left of an experiment this process took
    /// over (its own runs removed theirs already; what remains is the dead
    /// process's).
    pub(super) async fn sweep_if_taken_over(&self, id: &str) {
        if !self.taken_over.lock().await.remove(id) {
            return;
        }
        if let Ok(left) =
            sandbox::labelled_containers(&self.docker, Some(&self.home_label), Some(id)).await
        {
            for (container, _) in left {
                tracing::info!(experiment_id = id, container = %container, "removing a container the dead owner left");
                let _ = sandbox::remove_container(&self.docker, &container).await;
            }
        }
        // Their run disks are free once the containers are gone.
        let (scratch, experiment) = (self.scratch_dir(), id.to_owned());
        match tokio::task::spawn_blocking(move || {
            sandbox::release_left_by_others(&scratch, &experiment)
        })
        .await
        {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(
                experiment_id = id,
                disks = n,
                "released run disks the dead owner left"
            ),
            Ok(Err(e)) => {
                tracing::warn!(experiment_id = id, error = %e, "could not release a run disk the dead owner left")
            }
            Err(e) => tracing::warn!(error = %e, "disk release task failed"),
        }
    }
}

/// Whether `owner` (`host:pid`) names a process of this host (`me`, this
/// process's own `host:pid`) that no longer runs genesis. Another host's
/// processes cannot be checked from here, so they count as alive.
pub fn owner_is_dead(owner: &str, me: &str) -> bool {
    let (Some((host, pid)), Some((my_host, _))) = (owner.rsplit_once(':'), me.rsplit_once(':'))
    else {
        return false;
    };
    if host != my_host || owner == me {
        return false;
    }
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => !String::from_utf8_lossy(&cmdline).contains("genesis"),
        Err(_) => true,
    }
}

/// `host:pid` of this process, `host` being `[host] name`.
pub fn instance_name(host: &str) -> String {
    format!("{host}:{}", std::process::id())
}
