//! Asking a peer on NATS (the analysis peer, the framework peer): one
//! request within a timeout, on the service's connection. Every way it
//! can fail (not configured, no connection, no responder, an error, the
//! timeout) is None with a warning, and the caller falls back to its own
//! local work.

use std::time::Duration;

use super::Runner;

/// Who is asked, for the warnings: `analysis` or `framework`, and what
/// genesis does instead.
pub(super) struct Peer<'a> {
    pub(super) name: &'a str,
    pub(super) subject: &'a str,
    pub(super) timeout: Duration,
    pub(super) fallback: &'a str,
}

impl Runner {
    /// The peer's reply payload, or None (then the caller works locally).
    pub(super) async fn ask(&self, peer: &Peer<'_>, payload: Vec<u8>) -> Option<bytes::Bytes> {
        if peer.subject.is_empty() {
            return None;
        }
        let client = self.analysis_peer.get()?;
        let request = client.request(peer.subject.to_owned(), payload.into());
        match tokio::time::timeout(peer.timeout, request).await {
            Ok(Ok(message)) => Some(message.payload),
            Ok(Err(e)) => {
                tracing::warn!(subject = peer.subject, error = %e, "{} peer failed; {}", peer.name, peer.fallback);
                None
            }
            Err(_) => {
                tracing::warn!(
                    subject = peer.subject,
                    timeout_ms = peer.timeout.as_millis(),
                    "{} peer timed out; {}",
                    peer.name,
                    peer.fallback
                );
                None
            }
        }
    }
}
