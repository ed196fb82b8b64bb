//! `metrics.record`: after each stored result, one experiment record for
//! the shared metrics store on `[nats] metrics_subject` (off when empty),
//! with the request's `traceparent`. Sent like an answer (retried until the
//! server has it, deduplicated by `Nats-Msg-Id`), because a record lost
//! there is an experiment missing from everyone's dashboards.

use crate::contract::{ExperimentResult, MetricsRecord};

use super::*;

impl Service {
    pub(super) async fn record_metrics(&self, result: &ExperimentResult, trace: Option<&str>) {
        let subject = &self.config.nats.metrics_subject;
        if subject.is_empty() || result.experiment_id().is_empty() {
            return;
        }
        let record = MetricsRecord::of(result);
        let Ok(body) = serde_json::to_vec(&record) else {
            return;
        };
        let msg_id = format!("{}:metrics", result.experiment_id());
        publish_until_sent(
            &self.client,
            &self.config.nats,
            subject.clone(),
            headers(trace, Some(&msg_id)),
            body.into(),
        )
        .await;
    }
}
