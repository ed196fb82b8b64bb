//! `[host] name`: which host a record, a result or an export row came from
//! (contract §2, §7).
//!
//! Several hosts may share one NATS queue and load their exports into one
//! PostgreSQL database; `sandbox_history` ids are counted per store, so only
//! (`host`, `id`) tells two hosts' rows apart. The name is resolved once, at
//! config load: the configured one, else the machine's hostname. This is the
//! one place genesis asks the machine for its name (the runner's `host:pid`
//! owner tag uses the same value).

use serde::Deserialize;

/// Longest host name accepted: a DNS name's limit.
pub const MAX_HOST_NAME_LEN: usize = 253;

/// Used when the machine will not say its name (no procfs, no /etc/hostname).
const UNKNOWN_HOST: &str = "localhost";

/// `[host]` as the config files spell it.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HostConfig {
    /// Stamped on every record, result and export row; empty means the
    /// machine's hostname, which suits one genesis per machine.
    pub name: String,
}

impl HostConfig {
    /// The configured name, or the machine's hostname when none is set.
    pub fn resolve(&self) -> String {
        match self.name.trim() {
            "" => machine_hostname(),
            name => name.to_owned(),
        }
    }
}

/// The kernel's hostname (`/proc/sys/kernel/hostname`), else
/// `/etc/hostname`, else `localhost`.
pub fn machine_hostname() -> String {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .map(|text| text.trim().to_owned())
        .find(|name| !name.is_empty())
        .unwrap_or_else(|| UNKNOWN_HOST.into())
}

/// A host name goes into SQL, CSV, NATS payloads and the `host:pid` owner
/// tag, so it is held to hostname characters: 1 to [`MAX_HOST_NAME_LEN`]
/// of `A-Z a-z 0-9 . - _`.
pub fn check_host_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_HOST_NAME_LEN {
        return Err(format!(
            "expected 1 to {MAX_HOST_NAME_LEN} characters, got {}",
            name.len()
        ));
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        Some(bad) => Err(format!(
            "{name:?} may only contain A-Z a-z 0-9 . - _, found {bad:?}"
        )),
        None => Ok(()),
    }
}
