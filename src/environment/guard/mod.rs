//! The install network guard: an environment's install runs as root with
//! network on, on inputs a candidate may control, so it must reach the
//! package registries and nothing of ours.
//!
//! Design, each part for a reason:
//! - **A network of genesis's own** (`network.rs`): `genesis-install`,
//!   bridge interface `gns-install`, made on demand and shared by every
//!   genesis process and home on the engine. The fixed interface name lets
//!   rules name the bridge before any install runs; the engine refuses a
//!   second network on one bridge name, so concurrent creators agree.
//! - **Rules on that bridge only** (`rules.rs`), in two chains of genesis's
//!   own: `GENESIS-INSTALL-FWD`, jumped to from Docker's `DOCKER-USER` for
//!   traffic forwarded from the bridge, and `GENESIS-INSTALL-IN`, jumped to
//!   from `INPUT` for traffic to the host itself (but for answers to
//!   connections the host opened). They refuse (REJECT, so a
//!   refused install fails at once rather than waiting out a timeout): any
//!   address of the host (INPUT), the bridge's other containers and ports
//!   the host publishes for containers (DNAT), and every private,
//!   link-local, CGNAT, loopback, multicast and reserved range. What is
//!   left is the public internet, plus the exceptions: the host's DNS
//!   servers on port 53 (Docker's embedded DNS forwards queries from the
//!   container's own namespace, so without this a registry name does not
//!   resolve when the host's resolver is private), the proxies named by
//!   `HTTP(S)_PROXY`/`ALL_PROXY` among `pass_env`, and `[environments]
//!   network_allow`. Other containers on other Docker networks are behind
//!   Docker's own isolation chains and private addresses besides.
//! - **Applied atomically, idempotently, touching nothing else.** Each
//!   install rewrites both chains in one `iptables-restore --noflush`
//!   transaction (a chain declared there is emptied and refilled at once,
//!   so no install ever sees half a rule set), with the `iptables` binary
//!   Docker itself runs; the jumps are inserted once, checked first. The
//!   machine's other rules are never read or changed, and nothing needs
//!   removing at exit: the rules only concern genesis's own bridge.
//!   Processes on one host serialise the check-and-insert with a lock that
//!   is an abstract unix socket (released by the kernel when a process
//!   dies; no file anywhere). Homes share the chains: each home's
//!   exceptions carry its label in a comment and every home keeps the
//!   others' lines, so one home's proxy is open to every home's installs
//!   on that engine (documented; they share the bridge).
//! - **No IPv6.** The network has none, and the install container turns it
//!   off in its own namespace (sysctl), so no link-local IPv6 path to the
//!   host exists that IPv4 rules would not see.
//! - **Never silently unguarded.** Without root, without iptables, without
//!   Docker's `DOCKER-USER` chain (an engine with `iptables: false`, or
//!   another backend) or with a remote engine (the rules would land on the
//!   wrong machine), an install fails `environment_failed`, naming the
//!   cause and `[environments] network_guard = false`, the opt-out.

use std::net::Ipv4Addr;
use std::time::Duration;

use bollard::Docker;

use crate::config::EnvironmentPolicy;
use crate::errors::{GenesisError, Result};

mod network;
pub mod rules;

pub use network::{InstallNetwork, BRIDGE, NETWORK};
use rules::{Exception, Iptables, FORWARD_CHAIN, INPUT_CHAIN};

/// Makes sure the install network and its rules are in place; returns the
/// network installs must join, or None when the guard is off.
pub async fn prepare(
    docker: &Docker,
    policy: &EnvironmentPolicy,
    home_label: &str,
    pass_env: &[(String, String)],
) -> Result<Option<InstallNetwork>> {
    if !policy.network_guard {
        tracing::warn!(
            "the install network guard is off ([environments] network_guard = false): \
             the install runs on Docker's default bridge and can reach the host"
        );
        return Ok(None);
    }
    apply(docker, policy, home_label, pass_env)
        .await
        .map(Some)
        .map_err(|cause| {
            GenesisError::EnvironmentFailed(format!(
                "the install network guard cannot be applied: {cause}. Installs never run \
                 unguarded: fix that, or set [environments] network_guard = false to run them \
                 on Docker's default bridge, where they can reach the host and its network"
            ))
        })
}

async fn apply(
    docker: &Docker,
    policy: &EnvironmentPolicy,
    home_label: &str,
    pass_env: &[(String, String)],
) -> std::result::Result<InstallNetwork, String> {
    let iptables = usable_iptables().await?;
    let exceptions = exceptions(policy, pass_env).await?;
    let _lock = HostLock::acquire(Duration::from_secs(60)).await?;
    let network = network::ensure(docker).await?;
    let mut listing = String::new();
    for chain in [FORWARD_CHAIN, INPUT_CHAIN] {
        listing.push_str(&iptables.run(&["-S", chain]).await.unwrap_or_default());
    }
    let kept = rules::other_homes_lines(&listing, home_label);
    let rules = rules::ruleset(&network.bridge, home_label, &exceptions, &kept);
    iptables
        .restore(&rules)
        .await
        .map_err(|e| format!("iptables-restore refused the rules: {e}"))?;
    iptables
        .ensure_jump("DOCKER-USER", &network.bridge, FORWARD_CHAIN)
        .await
        .map_err(|e| format!("adding the jump from DOCKER-USER: {e}"))?;
    iptables
        .ensure_jump("INPUT", &network.bridge, INPUT_CHAIN)
        .await
        .map_err(|e| format!("adding the jump from INPUT: {e}"))?;
    Ok(network)
}

/// The iptables binary, checked to reach Docker's rules: run as root on
/// the engine's own host, with `DOCKER-USER` present in its backend.
async fn usable_iptables() -> std::result::Result<Iptables, String> {
    if !crate::sandbox::engine_is_local() {
        return Err(format!(
            "the Docker engine is not on this host (DOCKER_HOST={}), so rules set here would \
             not see its containers' traffic",
            std::env::var("DOCKER_HOST").unwrap_or_default()
        ));
    }
    let Some(iptables) = Iptables::find() else {
        return Err(
            "no iptables and iptables-restore binaries on PATH or in /usr/sbin, /sbin \
                    (install the iptables package Docker uses)"
                .into(),
        );
    };
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    if let Err(e) = iptables.run(&["-S", "DOCKER-USER"]).await {
        let why = if !root {
            "genesis is not running as root, and iptables needs it".to_string()
        } else {
            format!(
                "{} has no DOCKER-USER chain ({}): the engine keeps no iptables rules with \
                 this binary (dockerd with iptables=false, or another backend: {})",
                iptables.binary.display(),
                e,
                iptables.version().await
            )
        };
        return Err(why);
    }
    Ok(iptables)
}

/// The destinations installs may reach besides public addresses.
async fn exceptions(
    policy: &EnvironmentPolicy,
    pass_env: &[(String, String)],
) -> std::result::Result<Vec<Exception>, String> {
    let mut out: Vec<Exception> = dns_servers().into_iter().map(Exception::dns).collect();
    for (name, value) in pass_env {
        let lower = name.to_ascii_lowercase();
        if !["http_proxy", "https_proxy", "all_proxy"].contains(&lower.as_str()) || value.is_empty()
        {
            continue;
        }
        let Some((host, port)) = proxy_target(value) else {
            return Err(format!(
                "{name} (in [environments] pass_env) names no proxy host genesis can read; \
                 expected e.g. http://proxy.example:3128"
            ));
        };
        let addrs = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| format!("the proxy host {host:?} of {name} does not resolve: {e}"))?;
        for addr in addrs {
            if let std::net::IpAddr::V4(v4) = addr.ip() {
                out.push(Exception::proxy(v4, port, name));
            }
        }
    }
    let allowed = crate::config::net_allow::parse_all(&policy.network_allow)
        .map_err(|e| format!("[environments] network_allow: {e}"))?;
    out.extend(allowed.into_iter().map(Exception::allowed));
    out.dedup();
    Ok(out)
}

/// The host and port of a proxy URL (`http://user:pass@host:3128/`,
/// `host:3128`); None when it has no host. Credentials are dropped here,
/// so no message can carry them.
pub fn proxy_target(value: &str) -> Option<(String, u16)> {
    let (scheme, rest) = match value.split_once("://") {
        Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
        None => ("http".to_string(), value),
    };
    let authority = rest.split('/').next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let default_port = match scheme.as_str() {
        "https" => 443,
        s if s.starts_with("socks") => 1080,
        _ => 80,
    };
    let (host, port) = match host_port.rsplit_once(':') {
        Some((host, port)) if !host.contains(']') || host.ends_with(']') => {
            (host, port.parse().ok()?)
        }
        _ => (host_port, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    (!host.is_empty()).then(|| (host.to_owned(), port))
}

/// The host's IPv4 DNS servers, as Docker's embedded DNS forwards to them:
/// `/etc/resolv.conf`, or systemd-resolved's upstream list when that file
/// only names the local stub. Loopback servers never leave the host's
/// namespace, so they need no exception.
pub fn dns_servers() -> Vec<Ipv4Addr> {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .map(|text| nameservers(&text))
            .unwrap_or_default()
    };
    let mut servers = read("/etc/resolv.conf");
    if servers.iter().all(Ipv4Addr::is_loopback) {
        servers.extend(read("/run/systemd/resolve/resolv.conf"));
    }
    servers.retain(|s| !s.is_loopback());
    servers.dedup();
    servers
}

fn nameservers(resolv_conf: &str) -> Vec<Ipv4Addr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse().ok())
        .collect()
}

/// One guard update at a time on this host: an abstract unix socket is
/// bound while held (the kernel releases it when the holder exits, however
/// it exits, and no file is written anywhere).
struct HostLock {
    _socket: std::os::unix::net::UnixListener,
}

impl HostLock {
    async fn acquire(limit: Duration) -> std::result::Result<HostLock, String> {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(b"genesis-install-guard")
            .map_err(|e| format!("the guard's lock: {e}"))?;
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            match std::os::unix::net::UnixListener::bind_addr(&addr) {
                Ok(socket) => return Ok(HostLock { _socket: socket }),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(format!(
                            "another genesis process held the guard's lock for over {} s",
                            limit.as_secs()
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(format!("the guard's lock: {e}")),
            }
        }
    }
}

/// `genesis doctor`'s line: (ok, what it found, the fix when not ok).
/// Reads only: it makes no network and changes no rule.
pub async fn doctor_line(
    docker: Option<&Docker>,
    policy: &EnvironmentPolicy,
) -> (bool, String, Option<String>) {
    if !policy.network_guard {
        return (
            true,
            "off ([environments] network_guard = false): installs use Docker's default bridge \
             and can reach the host"
                .into(),
            None,
        );
    }
    let fix = "run genesis as root on the engine's host with the iptables Docker uses, or set \
               [environments] network_guard = false";
    let iptables = match usable_iptables().await {
        Ok(i) => i,
        Err(cause) => {
            return (
                false,
                format!("cannot be applied, installs will fail: {cause}"),
                Some(fix.into()),
            )
        }
    };
    let version = iptables.version().await;
    let network = match docker {
        Some(docker) => network::inspect(docker).await,
        None => Ok(None),
    };
    match network {
        Err(e) => (false, e, Some(format!("docker network rm {NETWORK}"))),
        Ok(None) => (
            true,
            format!("on: network {NETWORK} (bridge {BRIDGE}) is made at the first install; rules via {version}"),
            None,
        ),
        Ok(Some(n)) => {
            let jumped = iptables
                .run(&["-C", "DOCKER-USER", "-i", &n.bridge, "-j", FORWARD_CHAIN])
                .await
                .is_ok()
                && iptables
                    .run(&["-C", "INPUT", "-i", &n.bridge, "-j", INPUT_CHAIN])
                    .await
                    .is_ok();
            let rules = if jumped {
                "rules in place"
            } else {
                "rules set at the next install"
            };
            (
                true,
                format!(
                    "on: network {NETWORK} (bridge {}, {}), {rules} ({FORWARD_CHAIN} from DOCKER-USER, {INPUT_CHAIN} from INPUT) via {version}",
                    n.bridge,
                    n.subnet.as_deref().unwrap_or("no IPv4 subnet")
                ),
                None,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls_give_host_and_port_and_never_credentials() {
        let t = |v: &str| proxy_target(v);
        assert_eq!(
            t("http://user:s3cret@proxy.lan:3128/"),
            Some(("proxy.lan".into(), 3128))
        );
        assert_eq!(t("https://proxy.lan"), Some(("proxy.lan".into(), 443)));
        assert_eq!(t("proxy.lan:8080"), Some(("proxy.lan".into(), 8080)));
        assert_eq!(t("socks5h://10.0.0.1"), Some(("10.0.0.1".into(), 1080)));
        assert_eq!(t("http://"), None);
        assert_eq!(t("http://proxy.lan:notaport"), None);
    }

    #[test]
    fn nameservers_are_read_from_resolv_conf() {
        let text =
            "# comment\nnameserver 10.255.255.53\nnameserver ::1\nsearch lan\nnameserver 1.1.1.1\n";
        assert_eq!(
            nameservers(text),
            vec![Ipv4Addr::new(10, 255, 255, 53), Ipv4Addr::new(1, 1, 1, 1)]
        );
    }
}
