//! Waiting out a NATS outage: doubling pauses between attempts, bounded by
//! `[nats] retry_min_ms` and `retry_max_ms`, and the connection state as
//! something to await (so a wait ends when NATS is back, not on a timer).

use std::time::Duration;

use tokio::sync::watch;

use crate::config::NatsConfig;

/// Pauses between retries: `retry_min_ms`, doubled each time up to
/// `retry_max_ms`, back to the start after a success.
pub(super) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(super) fn new(nats: &NatsConfig) -> Backoff {
        let min = Duration::from_millis(nats.retry_min_ms.max(1));
        let max = Duration::from_millis(nats.retry_max_ms).max(min);
        Backoff {
            min,
            max,
            next: min,
        }
    }

    pub(super) async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(self.max);
    }

    pub(super) fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Whether the client is connected, as the connection's events report it.
pub(super) type Connected = watch::Receiver<bool>;

/// Until the client is connected (at once when it is).
pub(super) async fn until_connected(connected: &mut Connected) {
    if connected.wait_for(|up| *up).await.is_err() {
        // The client is gone, and with it every event: nothing to wait for.
        std::future::pending::<()>().await;
    }
}

/// Until the connection has gone down and come back: whatever the client
/// had asked the server for before (a pending pull) is then gone.
pub(super) async fn until_reconnected(connected: &mut Connected) {
    if connected.wait_for(|up| !*up).await.is_err() {
        std::future::pending::<()>().await;
    }
    until_connected(connected).await;
}
