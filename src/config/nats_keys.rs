//! `[nats]` credentials and TLS files: the environment's secrets applied,
//! relative paths resolved, and everything that can be checked before a
//! connection is tried checked at load, with the key named, so a typo is
//! a config error rather than a refusal from the server much later.

use std::path::Path;

use super::{Env, NatsConfig, Secret};

/// `GENESIS_NATS_PASSWORD` / `GENESIS_NATS_TOKEN` win over the file, so a
/// secret can live in a service manager's credential store instead of the
/// config. An empty variable counts as unset.
pub(super) fn apply_env(nats: &mut NatsConfig, env: &Env) {
    if let Some(password) = env.nats_password.as_deref().filter(|p| !p.is_empty()) {
        nats.password = Secret::new(password);
    }
    if let Some(token) = env.nats_token.as_deref().filter(|t| !t.is_empty()) {
        nats.token = Secret::new(token);
    }
}

/// The file keys of `[nats]`, by name, for resolving and checking alike.
fn file_keys(nats: &mut NatsConfig) -> [(&'static str, &mut String); 5] {
    [
        ("nats.creds_file", &mut nats.creds_file),
        ("nats.nkey_seed_file", &mut nats.nkey_seed_file),
        ("nats.tls_ca_file", &mut nats.tls_ca_file),
        ("nats.tls_cert_file", &mut nats.tls_cert_file),
        ("nats.tls_key_file", &mut nats.tls_key_file),
    ]
}

/// Relative file names are relative to the config file (as repo paths
/// are), not to wherever genesis happens to be started.
pub(super) fn resolve_paths(nats: &mut NatsConfig, base_dir: &Path) {
    for (_, value) in file_keys(nats) {
        if !value.is_empty() && Path::new(value.as_str()).is_relative() {
            *value = base_dir.join(value.as_str()).display().to_string();
        }
    }
}

/// A bad key and why: (dotted key, message).
pub(super) type KeyError = (&'static str, String);

/// Refuses what would only fail at connect time: a named file that does not
/// exist, a user without a password (or the reverse), half a client
/// certificate, and two authentication methods at once (the server would
/// see only one of them, so the other is a mistake). Messages never carry
/// a secret's value.
pub(super) fn validate(nats: &NatsConfig) -> Result<(), KeyError> {
    let mut nats = nats.clone();
    for (key, value) in file_keys(&mut nats) {
        if !value.is_empty() && !Path::new(value.as_str()).is_file() {
            return Err((key, format!("no file at {value}")));
        }
    }
    if !nats.user.is_empty() && nats.password.is_empty() {
        return Err((
            "nats.password",
            "nats.user is set but no password (set it, or GENESIS_NATS_PASSWORD)".into(),
        ));
    }
    if nats.user.is_empty() && !nats.password.is_empty() {
        return Err(("nats.user", "a password is set but no user".into()));
    }
    if nats.tls_cert_file.is_empty() != nats.tls_key_file.is_empty() {
        let missing = if nats.tls_cert_file.is_empty() {
            "nats.tls_cert_file"
        } else {
            "nats.tls_key_file"
        };
        return Err((
            missing,
            "a client certificate needs both tls_cert_file and tls_key_file".into(),
        ));
    }
    let methods = auth_methods(&nats);
    if methods.len() > 1 {
        return Err((
            methods[1],
            format!(
                "only one authentication method may be set, found {} (password and token also come from GENESIS_NATS_PASSWORD / GENESIS_NATS_TOKEN)",
                methods.join(" and ")
            ),
        ));
    }
    Ok(())
}

/// The authentication methods configured, by key.
fn auth_methods(nats: &NatsConfig) -> Vec<&'static str> {
    [
        ("nats.user", !nats.user.is_empty()),
        ("nats.token", !nats.token.is_empty()),
        ("nats.creds_file", !nats.creds_file.is_empty()),
        ("nats.nkey_seed_file", !nats.nkey_seed_file.is_empty()),
    ]
    .into_iter()
    .filter_map(|(key, set)| set.then_some(key))
    .collect()
}
