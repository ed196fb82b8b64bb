//! What a failed Docker engine call means to genesis, decided here and
//! nowhere else.
//!
//! Callers look at a failure for two reasons: to shrug off an expected
//! answer (removing a container that is gone already, killing one that has
//! stopped) and to know whether a retry in a fresh sandbox may cure it. Both
//! questions are answered by [`classify`], so a rule such as "a 404 for a
//! container under a run means it vanished" is written once.

use bollard::errors::Error as DockerError;

/// The meaning of one failed engine call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineFailure {
    /// 404 for a container or an exec: it was there and is gone (removed
    /// under the run, or the engine restarted). A fresh sandbox may work.
    Vanished,
    /// Any other 404: the image, network or volume named does not exist.
    NotFound,
    /// 409, or a create naming something that exists already: the object is
    /// already in the state asked for (stopped, created by another process).
    Conflict,
    /// The engine or the connection to it failed (5xx other than a runtime
    /// refusing the container, I/O, timeouts, broken streams).
    Transient,
    /// The engine refused the request for a reason a retry cannot change.
    Refused,
}

impl EngineFailure {
    /// Whether the named object does not exist (any 404).
    pub fn is_absent(self) -> bool {
        matches!(self, EngineFailure::Vanished | EngineFailure::NotFound)
    }

    /// Whether a retry in a fresh sandbox may cure it.
    pub fn is_transient(self) -> bool {
        matches!(self, EngineFailure::Vanished | EngineFailure::Transient)
    }
}

/// Classifies a failed engine call. The engine's messages are looked at only
/// where its status code alone is ambiguous (which 404, which 5xx).
pub fn classify(err: &DockerError) -> EngineFailure {
    match err {
        DockerError::DockerResponseServerError {
            status_code,
            message,
        } => classify_answer(*status_code, message),
        DockerError::IOError { .. }
        | DockerError::HyperResponseError { .. }
        | DockerError::RequestTimeoutError
        | DockerError::DockerStreamError { .. }
        | DockerError::HyperLegacyError { .. } => EngineFailure::Transient,
        _ => EngineFailure::Refused,
    }
}

fn classify_answer(status: u16, message: &str) -> EngineFailure {
    // Engine 20.10 answers a duplicate network with 409, 403 or 500
    // depending on which check trips first; the text is the same.
    let exists = message.contains("already exists") || message.contains("same bridge name");
    match status {
        404 if message.contains("No such container") || message.contains("No such exec") => {
            EngineFailure::Vanished
        }
        404 => EngineFailure::NotFound,
        409 => EngineFailure::Conflict,
        _ if exists => EngineFailure::Conflict,
        // A runtime (runc, runsc) refusing the container is the request's
        // fault, not the engine's: retrying gives the same answer.
        500.. if !message.contains("OCI runtime") => EngineFailure::Transient,
        _ => EngineFailure::Refused,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status_code: u16, message: &str) -> DockerError {
        DockerError::DockerResponseServerError {
            status_code,
            message: message.into(),
        }
    }

    #[test]
    fn answers_are_classified_by_status_then_text() {
        let cases = [
            (404, "No such container: abc", EngineFailure::Vanished),
            (404, "No such exec instance: abc", EngineFailure::Vanished),
            (404, "No such image: genesis/x", EngineFailure::NotFound),
            (409, "is not running", EngineFailure::Conflict),
            (
                403,
                "network with name genesis-install already exists",
                EngineFailure::Conflict,
            ),
            (
                500,
                "bridge with the same bridge name exists",
                EngineFailure::Conflict,
            ),
            (500, "driver failed", EngineFailure::Transient),
            (503, "", EngineFailure::Transient),
            (500, "OCI runtime create failed", EngineFailure::Refused),
            (400, "bad parameter", EngineFailure::Refused),
        ];
        for (status, message, expected) in cases {
            assert_eq!(
                classify(&answer(status, message)),
                expected,
                "{status} {message}"
            );
        }
        assert_eq!(
            classify(&DockerError::RequestTimeoutError),
            EngineFailure::Transient
        );
        assert!(EngineFailure::Vanished.is_absent() && EngineFailure::Vanished.is_transient());
        assert!(EngineFailure::NotFound.is_absent() && !EngineFailure::NotFound.is_transient());
    }
}
