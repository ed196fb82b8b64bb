//! Every error Genesis reports, in one place.
//!
//! Each variant carries the context a person needs to act on it (which file,
//! which key, which container). Two mappings hang off this type: to the
//! contract's `error_kind` (what a failed experiment reports on NATS) and to a
//! process exit code (what the CLI returns).
//!
//! A variant caused by another library's error keeps that error as its
//! `#[source]` (the engine's, libgit2's, redb's, the OS's), so a caller can
//! still ask what it was; the message shows it after the context, as
//! `analysis::AnalysisError` does, so one line says everything. What the
//! engine's failures mean (gone, conflict, worth a retry) is decided in one
//! place, [`engine::classify`].

use std::path::PathBuf;

use bollard::errors::Error as DockerError;

use crate::contract::ErrorKind;

pub mod engine;

use engine::EngineFailure;

pub type Result<T, E = GenesisError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum GenesisError {
    /// The config file or a policy file is unreadable or has a bad key.
    #[error("config {file}: {message}")]
    Config { file: PathBuf, message: String },

    /// The request is malformed or refers to something that does not exist.
    #[error("{0}")]
    InvalidRequest(String),

    /// The command line is wrong (a missing or conflicting flag, an
    /// unreadable argument): the user's to fix before anything runs.
    #[error("{0}")]
    Usage(String),

    /// The change could not be applied to the snapshot.
    #[error("{0}")]
    PatchFailed(String),

    /// The experiment ran past its time limit and was killed.
    #[error("the test command ran past its {limit_ms} ms time limit and was killed")]
    Timeout { limit_ms: u64 },

    /// The container was killed by the kernel for using too much memory.
    #[error("the test command ran out of memory (limit {limit_mb} MB) and was killed")]
    Oom { limit_mb: u64 },

    /// The run filled its file system ([limits.*] disk_mb) and failed.
    #[error("the test command filled its {limit_mb} MB disk ([limits.*] disk_mb) and failed")]
    DiskLimit { limit_mb: u64 },

    /// The infrastructure failed under a run (engine unreachable or
    /// restarted, container gone, engine 5xx, archive error): retried
    /// (`[sandbox] infra_retries`), never judged as the suite's failure.
    #[error("sandbox infrastructure: {context}: {cause}")]
    Infrastructure {
        context: String,
        #[source]
        cause: SandboxCause,
    },

    /// Docker refused or failed an operation, or a sandbox step failed.
    #[error("sandbox: {context}: {cause}")]
    Sandbox {
        context: String,
        #[source]
        cause: SandboxCause,
    },

    /// The image a sandbox or environment needs is not in the engine.
    #[error("sandbox: {context}: {cause} (build it with `genesis images build`)")]
    MissingImage {
        context: String,
        #[source]
        cause: DockerError,
    },

    /// The environment's install failed or timed out; the message holds
    /// the install log's tail.
    #[error("{0}")]
    EnvironmentFailed(String),

    /// The candidate changes the environment's inputs and may not rebuild it.
    #[error("{0}")]
    EnvironmentChanged(String),

    /// The suite ran but no test report could be found or it held no tests.
    #[error("{0}")]
    NoTests(String),

    /// The suite's report claims more than genesis holds (`[limits]
    /// max_tests`, the 4 KiB test-id cap).
    #[error("{0}")]
    BadReport(String),

    /// The redb store failed.
    #[error("store {path}: {cause}")]
    Store {
        path: PathBuf,
        #[source]
        cause: Box<redb::Error>,
    },

    /// The store was written by a later genesis with a schema this one
    /// cannot read.
    #[error("store {path}: written by a newer genesis (schema {schema}, this one reads {reads})")]
    StoreTooNew {
        path: PathBuf,
        schema: u64,
        reads: u64,
    },

    /// A write failed (a full disk?) and the store has not been opened
    /// again yet; the next call retries.
    #[error("store {path}: a write failed earlier (a full disk?) and the store could not be opened again yet; retry")]
    StoreReopening { path: PathBuf },

    /// GENESIS_HOME's file system has no room left: nothing more can be
    /// written there, while what was committed before stays intact.
    #[error("GENESIS_HOME {home} is full (No space left on device) while {context}; free space on its file system (`genesis jobs run cleanup`, `genesis env prune`, or remove files) and run it again: everything stored before is intact")]
    HomeFull { home: PathBuf, context: String },

    /// The store file, or a row in it, is not readable any more
    /// (overwritten, cut short, scribbled on); `fix` says how to go on.
    #[error("store {path} is damaged: {problem}. {fix}")]
    StoreDamaged {
        path: PathBuf,
        problem: String,
        fix: String,
    },

    /// A file-system operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },

    /// A git operation failed.
    #[error("git: {context}: {cause}")]
    Git {
        context: String,
        #[source]
        cause: git2::Error,
    },

    /// NATS could not be reached or refused an operation.
    #[error("nats: {0}")]
    Nats(String),

    /// `show`, `sandbox export` and the like named an experiment the store does not hold.
    #[error("no experiment with id {0:?} in the store")]
    UnknownExperiment(String),

    /// An archive failed its integrity check.
    #[error("archive {path} failed verification: {message}")]
    CorruptArchive { path: PathBuf, message: String },

    /// The baseline run failed; `kind` is what it failed with.
    #[error("baseline run: {message}")]
    Baseline { kind: ErrorKind, message: String },

    /// Interrupted by shutdown or restart.
    #[error("{0}")]
    Interrupted(String),

    /// A bug or an impossible state; the message says where.
    #[error("internal error: {0}")]
    Internal(String),
}

impl GenesisError {
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        GenesisError::Io {
            context: context.into(),
            source,
        }
    }

    /// A sandbox step that failed: `cause` is the engine's error or
    /// genesis's own finding (a text).
    pub fn sandbox(context: impl Into<String>, cause: impl Into<SandboxCause>) -> Self {
        GenesisError::Sandbox {
            context: context.into(),
            cause: cause.into(),
        }
    }

    /// The infrastructure failed under a run (see [`GenesisError::Infrastructure`]).
    pub fn infrastructure(context: impl Into<String>, cause: impl Into<SandboxCause>) -> Self {
        GenesisError::Infrastructure {
            context: context.into(),
            cause: cause.into(),
        }
    }

    /// A failed engine call, classified by [`engine::classify`]: what a
    /// retry may cure (the engine or the connection to it failing, a
    /// container vanishing) is [`GenesisError::Infrastructure`]; what it
    /// cannot (a bad request, a missing image, a runtime refusing the
    /// container) stays `Sandbox`.
    pub fn docker(context: impl Into<String>, err: DockerError) -> Self {
        if engine::classify(&err).is_transient() {
            GenesisError::infrastructure(context, err)
        } else {
            GenesisError::sandbox(context, err)
        }
    }

    /// A failed call that needs `image` (`context` says which): a missing
    /// image is the user's to build; anything else (the engine away) is
    /// classified like any call.
    pub fn image(context: impl Into<String>, err: DockerError) -> Self {
        match engine::classify(&err) {
            EngineFailure::NotFound => GenesisError::MissingImage {
                context: context.into(),
                cause: err,
            },
            _ => GenesisError::docker(context, err),
        }
    }

    /// Whether a retry in a fresh sandbox may cure it.
    pub fn is_infrastructure(&self) -> bool {
        matches!(self, GenesisError::Infrastructure { .. })
    }

    pub fn git(context: impl Into<String>, cause: git2::Error) -> Self {
        GenesisError::Git {
            context: context.into(),
            cause,
        }
    }

    /// The contract's `error_kind` for a failed experiment.
    pub fn kind(&self) -> ErrorKind {
        match self {
            GenesisError::InvalidRequest(_) => ErrorKind::InvalidRequest,
            GenesisError::PatchFailed(_) => ErrorKind::PatchFailed,
            GenesisError::Timeout { .. } => ErrorKind::Timeout,
            GenesisError::Oom { .. } => ErrorKind::Oom,
            GenesisError::DiskLimit { .. } => ErrorKind::DiskLimit,
            GenesisError::Sandbox { .. }
            | GenesisError::Infrastructure { .. }
            | GenesisError::MissingImage { .. } => ErrorKind::SandboxError,
            GenesisError::NoTests(_) => ErrorKind::NoTests,
            GenesisError::BadReport(_) => ErrorKind::BadReport,
            GenesisError::EnvironmentFailed(_) => ErrorKind::EnvironmentFailed,
            GenesisError::EnvironmentChanged(_) => ErrorKind::EnvironmentChanged,
            GenesisError::Baseline { kind, .. } => *kind,
            GenesisError::Config { .. }
            | GenesisError::Usage(_)
            | GenesisError::Store { .. }
            | GenesisError::StoreTooNew { .. }
            | GenesisError::StoreReopening { .. }
            | GenesisError::HomeFull { .. }
            | GenesisError::StoreDamaged { .. }
            | GenesisError::Io { .. }
            | GenesisError::Git { .. }
            | GenesisError::Nats(_)
            | GenesisError::UnknownExperiment(_)
            | GenesisError::CorruptArchive { .. }
            | GenesisError::Interrupted(_)
            | GenesisError::Internal(_) => ErrorKind::Internal,
        }
    }

    /// Exit code for the CLI: 2 for problems with what the user typed or
    /// configured, 1 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self {
            GenesisError::Config { .. }
            | GenesisError::InvalidRequest(_)
            | GenesisError::Usage(_) => 2,
            _ => 1,
        }
    }
}

/// What made a sandbox step fail: the engine's own error, or what genesis
/// found (an exit status, a limit, a log tail), kept as text.
#[derive(Debug, thiserror::Error)]
pub enum SandboxCause {
    #[error(transparent)]
    Engine(#[from] DockerError),
    #[error("{0}")]
    Finding(String),
}

impl From<String> for SandboxCause {
    fn from(text: String) -> Self {
        SandboxCause::Finding(text)
    }
}

impl From<&str> for SandboxCause {
    fn from(text: &str) -> Self {
        SandboxCause::Finding(text.to_owned())
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn causes_are_kept_and_shown_after_the_context() {
        let engine = DockerError::DockerResponseServerError {
            status_code: 503,
            message: "engine restarting".into(),
        };
        let err = GenesisError::docker("starting the candidate", engine);
        assert!(err.is_infrastructure());
        let shown = err.to_string();
        assert!(
            shown.starts_with("sandbox infrastructure: starting the candidate: ")
                && shown.contains("engine restarting"),
            "{shown}"
        );
        let cause = err.source().expect("a source");
        assert!(cause.to_string().contains("engine restarting"));

        let err = GenesisError::git("reading the base tree", git2::Error::from_str("bad object"));
        let cause = err.source().and_then(|s| s.downcast_ref::<git2::Error>());
        assert_eq!(cause.map(git2::Error::message), Some("bad object"));
        assert_eq!(err.to_string(), "git: reading the base tree: bad object");

        let missing = DockerError::DockerResponseServerError {
            status_code: 404,
            message: "No such image: genesis/x".into(),
        };
        let err = GenesisError::image("looking up image genesis/x", missing);
        assert!(matches!(err, GenesisError::MissingImage { .. }));
        assert!(err
            .to_string()
            .ends_with("(build it with `genesis images build`)"));
        assert_eq!(err.kind(), ErrorKind::SandboxError);
    }

    #[test]
    fn usage_and_request_errors_exit_2_and_only_requests_reach_nats_as_theirs() {
        let usage = GenesisError::Usage("--days goes with --trends".into());
        let request = GenesisError::InvalidRequest("no repo".into());
        assert_eq!((usage.exit_code(), request.exit_code()), (2, 2));
        assert_eq!(usage.kind(), ErrorKind::Internal);
        assert_eq!(request.kind(), ErrorKind::InvalidRequest);
    }
}
