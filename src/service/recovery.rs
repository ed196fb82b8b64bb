//! What a service does about work that is not its own to finish: at start,
//! the containers, disks and experiments a dead process of this home left
//! behind (reaped, released, failed or resumed); at shutdown after the drain
//! time, what still runs.

use std::sync::Arc;

use crate::contract::{ErrorKind, ExperimentResult};
use crate::errors::Result;
use crate::store::{Delivery, SandboxOperation, Status};

use super::*;

impl Service {
    /// At start: reap this home's containers and release their disks;
    /// settle experiments a dead process left behind: failed (core mode),
    /// or returned to be resumed (JetStream mode).
    pub(super) async fn recover(&self) -> Result<Vec<(String, Option<Delivery>)>> {
        let containers = crate::sandbox::labelled_containers(
            &self.runner.docker,
            Some(&self.runner.home_label),
            None,
        )
        .await?;
        for (id, experiment) in containers {
            tracing::info!(container = %id, experiment_id = %experiment, "reaping a container left by a previous run");
            crate::sandbox::remove_container(&self.runner.docker, &id).await?;
            let (exp, path) = (
                experiment.clone(),
                self.runner.sandbox_dir(&experiment).display().to_string(),
            );
            let _ = self
                .runner
                .store
                .call(move |s| {
                    s.add_history(
                        &exp,
                        SandboxOperation::Cleanup,
                        &path,
                        0,
                        "container reaped at start",
                    )
                })
                .await;
        }
        // With this home's containers gone, every run disk left mounted
        // belongs to a dead process.
        let scratch = self.runner.scratch_dir();
        match tokio::task::spawn_blocking(move || crate::sandbox::release_scratch_disks(&scratch))
            .await
        {
            Ok(Ok(0)) => {}
            Ok(Ok(n)) => tracing::info!(disks = n, "released run disks left by a previous run"),
            Ok(Err(e)) => tracing::warn!(error = %e, "could not release a run disk left behind"),
            Err(e) => tracing::warn!(error = %e, "disk release task failed"),
        }
        let store = self.runner.store.clone();
        let stranded: Vec<String> = store
            .call(|s| {
                let mut ids = s.ids_with_status(Status::Running)?;
                ids.extend(s.ids_with_status(Status::Queued)?);
                Ok(ids)
            })
            .await?;
        let mut resume = Vec::new();
        for id in stranded {
            let key = id.clone();
            let Some(record) = store.call(move |s| s.get(&key)).await? else {
                continue;
            };
            let me = &self.runner.instance;
            if !crate::runner::owner_is_dead(&record.owner, me) && record.owner != *me {
                continue;
            }
            if self.config.nats.jetstream {
                // Run again now, answering where the first delivery asked;
                // the redelivery, when it comes, is only acked.
                let key = id.clone();
                let delivery = store.call(move |s| s.delivery(&key)).await.ok().flatten();
                resume.push((record.request_json.clone(), delivery));
                continue;
            }
            let request = record.request()?;
            let result = ExperimentResult::failed(
                &self.config.host,
                &id,
                &record.instance_id,
                ErrorKind::Internal,
                "interrupted by restart",
            );
            self.runner.finish(&request, &result, None, None).await?;
            self.answer(&result, None, None, true).await;
            self.record_metrics(&result, None).await;
        }
        Ok(resume)
    }

    /// Runs an experiment a dead process of this home left running
    /// (JetStream mode; `request_json` as stored), answering it on its
    /// result subjects and where its message asked (reply subject, trace),
    /// as the first delivery's process would have.
    pub(super) async fn resume(self: &Arc<Self>, request_json: String, delivery: Option<Delivery>) {
        tracing::info!("resuming an experiment a previous process left running");
        let delivery = delivery.unwrap_or_default();
        let headers = delivery.traceparent.as_deref().map(|t| {
            let mut h = async_nats::HeaderMap::new();
            h.insert(crate::contract::subjects::TRACEPARENT, t);
            h
        });
        let incoming = Incoming {
            body: bytes::Bytes::from(request_json),
            headers,
            reply: delivery.reply,
            jetstream: None,
            resumed_seq: delivery.seq,
        };
        self.handle(incoming).await;
    }

    /// After the drain time: kill what still runs and record it.
    pub(super) async fn abort_in_flight(&self) {
        let ids: Vec<String> = self.running.lock().await.keys().cloned().collect();
        for id in ids {
            if let Ok(containers) = crate::sandbox::labelled_containers(
                &self.runner.docker,
                Some(&self.runner.home_label),
                Some(&id),
            )
            .await
            {
                for (cid, _) in containers {
                    let _ = crate::sandbox::remove_container(&self.runner.docker, &cid).await;
                }
            }
            if self.config.nats.jetstream {
                continue; // Not acked: it runs again after restart.
            }
            let key = id.clone();
            if let Ok(Some(record)) = self.runner.store.call(move |s| s.get(&key)).await {
                if let Ok(request) = record.request() {
                    let result = ExperimentResult::failed(
                        &self.config.host,
                        &id,
                        &record.instance_id,
                        ErrorKind::Internal,
                        "interrupted by shutdown after the drain time",
                    );
                    if self
                        .runner
                        .finish(&request, &result, None, None)
                        .await
                        .is_ok()
                    {
                        self.record_metrics(&result, None).await;
                    }
                    self.answer(&result, None, None, true).await;
                }
            }
        }
    }
}
