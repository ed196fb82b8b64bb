//! The one place a NATS connection's options are built (credentials, TLS,
//! client name), for every client in genesis: `serve` (whose connection the
//! analysis and framework peers share), `jobs run` and `doctor`; and the one
//! place a connect error is sorted into "the server refused us" (stop and
//! say why) versus "the server is not there yet" (wait for it). Command
//! lines connect through [`connect_briefly`], which gives up after
//! `[nats] cli_connect_timeout_ms`.

use std::error::Error as _;
use std::path::PathBuf;

use async_nats::{ConnectError, ConnectErrorKind, ConnectOptions};

use crate::config::NatsConfig;
use crate::errors::{GenesisError, Result};

/// Options with `[nats]`'s credentials and TLS files applied. Files are
/// read here (not at connect time) so an unreadable one is an error that
/// names its key. Secrets go to the client only, never into a message.
pub fn connect_options(nats: &NatsConfig, name: &str) -> Result<ConnectOptions> {
    let mut options = ConnectOptions::new().name(name);
    if !nats.user.is_empty() {
        options = options.user_and_password(nats.user.clone(), nats.password.expose().into());
    }
    if !nats.token.is_empty() {
        options = options.token(nats.token.expose().into());
    }
    if !nats.creds_file.is_empty() {
        let creds = read_key_file("nats.creds_file", &nats.creds_file)?;
        options = options
            .credentials(&creds)
            .map_err(|e| key_error("nats.creds_file", &nats.creds_file, e))?;
    }
    if !nats.nkey_seed_file.is_empty() {
        let seed = read_key_file("nats.nkey_seed_file", &nats.nkey_seed_file)?;
        options = options.nkey(seed.trim().to_owned());
    }
    Ok(with_tls(options, nats))
}

/// TLS files, and TLS required whenever any is named: a client given a CA
/// must not quietly fall back to plaintext on a server that offers none.
fn with_tls(mut options: ConnectOptions, nats: &NatsConfig) -> ConnectOptions {
    if !nats.tls_ca_file.is_empty() {
        options = options.add_root_certificates(PathBuf::from(&nats.tls_ca_file));
    }
    if !nats.tls_cert_file.is_empty() {
        options = options.add_client_certificate(
            PathBuf::from(&nats.tls_cert_file),
            PathBuf::from(&nats.tls_key_file),
        );
    }
    let any_tls = [&nats.tls_ca_file, &nats.tls_cert_file, &nats.tls_key_file]
        .iter()
        .any(|f| !f.is_empty());
    options.require_tls(any_tls)
}

fn read_key_file(key: &str, path: &str) -> Result<String> {
    std::fs::read_to_string(path).map_err(|e| key_error(key, path, e))
}

/// Names the key and the file, never the file's contents.
fn key_error(key: &str, path: &str, e: impl std::fmt::Display) -> GenesisError {
    GenesisError::Nats(format!("[{key}] {path}: {e}"))
}

/// Why a server turned a connection down for good: retrying with the same
/// options cannot help, so `serve` stops instead of waiting forever.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The server answered `-ERR 'Authorization Violation'`: wrong or
    /// missing user/password, token, creds or nkey.
    Authorization,
    /// The client could not sign the server's nonce (an unusable nkey seed
    /// or creds file).
    Authentication,
    /// The TLS setup or handshake failed: the server's certificate is not
    /// trusted (wrong or missing `tls_ca_file`), names another host, the
    /// server wants a client certificate, or a TLS file is unusable.
    Tls,
}

impl Refusal {
    /// Sorts a connect error. Only the error's *kind* and *type* are looked
    /// at, never its text: async-nats already turns the server's
    /// `Authorization Violation` line into `ConnectErrorKind::
    /// AuthorizationViolation` (the only string match needed, and it is the
    /// library's), and TLS problems arrive either as `ConnectErrorKind::Tls`
    /// (configuration) or as an I/O error whose inner error is a
    /// `rustls::Error` (the handshake: async-nats converts the handshake's
    /// `io::Error` with `?`, so its kind says only "IO"). Everything else
    /// (refused, reset, timed out, DNS) means the server is not there yet.
    pub fn of(error: &ConnectError) -> Option<Refusal> {
        match error.kind() {
            ConnectErrorKind::AuthorizationViolation => Some(Refusal::Authorization),
            ConnectErrorKind::Authentication => Some(Refusal::Authentication),
            ConnectErrorKind::Tls => Some(Refusal::Tls),
            _ if caused_by_tls(error) => Some(Refusal::Tls),
            _ => None,
        }
    }

    /// What to change, for `doctor` and for `serve`'s last words.
    pub fn fix(self) -> &'static str {
        match self {
            Refusal::Authorization => "check [nats] user/password, token, creds_file or nkey_seed_file (or GENESIS_NATS_PASSWORD / GENESIS_NATS_TOKEN) against the server's authorization block",
            Refusal::Authentication => "check that [nats] creds_file / nkey_seed_file hold a valid nkey seed",
            Refusal::Tls => "set [nats] tls_ca_file to the CA that signed the server's certificate (and tls_cert_file/tls_key_file if the server verifies clients); the URL's host must match the certificate",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::Authorization => "authorization violation",
            Refusal::Authentication => "authentication failed",
            Refusal::Tls => "TLS handshake failed",
        })
    }
}

/// Whether a `rustls::Error` is somewhere in the error's causes, including
/// inside an `io::Error` (whose `source()` skips the error it wraps, so
/// `get_ref` is asked too).
fn caused_by_tls(error: &ConnectError) -> bool {
    let mut cause = error.source();
    while let Some(err) = cause {
        if is_rustls(err) {
            return true;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.get_ref().is_some_and(|inner| is_rustls(inner)) {
                return true;
            }
        }
        cause = err.source();
    }
    false
}

fn is_rustls(err: &(dyn std::error::Error + 'static)) -> bool {
    err.downcast_ref::<async_nats::rustls::Error>().is_some()
}

/// Why a command line's brief connect did not connect.
#[derive(Debug)]
pub enum BriefFailure {
    /// A `[nats]` file key could not be used; the error names it.
    Options(GenesisError),
    /// The server refused, or the connection failed (see [`Refusal::of`]).
    Connect(ConnectError),
    /// Nothing answered within `[nats] cli_connect_timeout_ms`; the text says so.
    NoAnswer(String),
}

/// Connects as `serve` would (same credentials and TLS), but gives up after
/// `[nats] cli_connect_timeout_ms`: a command line (`doctor`, `jobs run`)
/// should answer promptly when no server runs, where `serve` waits. The
/// limit is this one timeout, not also the client's own connection
/// timeout: two timers of one length would race to say which way it ended.
pub async fn connect_briefly(
    nats: &NatsConfig,
    name: &str,
) -> std::result::Result<async_nats::Client, BriefFailure> {
    let limit = nats.cli_connect_timeout;
    let connecting = connect_options(nats, name)
        .map_err(BriefFailure::Options)?
        .connect(nats.url.as_str());
    match tokio::time::timeout(limit, connecting).await {
        Ok(connected) => connected.map_err(BriefFailure::Connect),
        Err(_) => Err(BriefFailure::NoAnswer(format!(
            "no answer from {} within {} ms ([nats] cli_connect_timeout_ms)",
            nats.url,
            limit.as_millis()
        ))),
    }
}

/// A connect error in words: the refusal named first when it is one, the
/// library's own description after it (which never holds a credential).
pub fn describe(url: &str, error: &ConnectError) -> String {
    match Refusal::of(error) {
        Some(refusal) => format!("{url} refused the connection: {refusal} ({error})"),
        None => format!("cannot reach {url}: {error}"),
    }
}
