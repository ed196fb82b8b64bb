//! Waiting out a NATS outage: doubling pauses between attempts, bounded by
//! `[nats] retry_min_ms` and `retry_max_ms`, and the connection state as
//! something to await (so a wait ends when NATS is back, not on a timer);
//! and, at start, telling a server that refuses genesis from one not up yet.

use std::time::Duration;

use tokio::sync::watch;

use crate::config::NatsConfig;
use crate::errors::GenesisError;
use crate::nats_auth::Refusal;

/// Pauses between retries: `retry_min_ms`, doubled each time up to
/// `retry_max_ms`, back to the start after a success.
pub(super) struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub(super) fn new(nats: &NatsConfig) -> Backoff {
        let min = nats.retry_min.max(Duration::from_millis(1));
        let max = nats.retry_max.max(min);
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

/// Tries one-shot connections with the service's own options, on the
/// retry backoff, until one is refused (the error says why and how to fix
/// it) or succeeds (then never returns: the service's client connects
/// too). Needed because the reconnecting client reports a failed attempt
/// to its event callback only as its error kind's text, and a refused TLS
/// handshake's kind is plain "IO error", like a server that is not up; a
/// one-shot connect returns the whole error, which [`Refusal::of`] sorts
/// by kind and type.
pub(super) async fn first_refusal(nats: &NatsConfig) -> GenesisError {
    let mut backoff = Backoff::new(nats);
    loop {
        let options = match crate::nats_auth::connect_options(nats, "genesis-probe") {
            Ok(options) => options,
            Err(e) => return e,
        };
        match options.connect(nats.url.as_str()).await {
            Ok(_probe) => std::future::pending::<()>().await,
            Err(e) => match Refusal::of(&e) {
                Some(refusal) => {
                    let detail = crate::nats_auth::describe(&nats.url, &e);
                    return GenesisError::Nats(format!("{detail}; fix: {}", refusal.fix()));
                }
                None => tracing::debug!(error = %e, "NATS not reachable yet"),
            },
        }
        backoff.wait().await;
    }
}
