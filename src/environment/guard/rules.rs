//! The guard's iptables rules, as text for `iptables-restore --noflush`,
//! and the commands that apply them. Building the text is pure (unit
//! tested); applying it is one `iptables-restore` transaction plus, the
//! first time, one jump each from `DOCKER-USER` and `INPUT`.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::io::AsyncWriteExt;

use crate::config::net_allow::AllowedDestination;

/// The chain forwarded traffic from the install bridge goes through
/// (jumped to from Docker's `DOCKER-USER`, which Docker keeps first in
/// `FORWARD` and never flushes).
pub const FORWARD_CHAIN: &str = "GENESIS-INSTALL-FWD";
/// The chain traffic from the install bridge to the host itself goes
/// through (jumped to from `INPUT`).
pub const INPUT_CHAIN: &str = "GENESIS-INSTALL-IN";

/// Destinations refused to installs: every range that is not the public
/// internet. Documentation ranges (192.0.2/24, 198.51.100/24,
/// 203.0.113/24) and the benchmarking range stay open on purpose: they
/// are routed like public addresses, and a registry may sit there.
pub const REFUSED_RANGES: &[(&str, &str)] = &[
    ("0.0.0.0/8", "this network"),
    ("10.0.0.0/8", "private"),
    ("100.64.0.0/10", "carrier-grade NAT"),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private"),
    ("192.168.0.0/16", "private"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved and broadcast"),
];

/// One destination an install may reach despite the refusals: the host's
/// DNS servers, a configured proxy, a `network_allow` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exception {
    pub dest: AllowedDestination,
    /// `tcp` and/or `udp` (both when the port is open to either).
    pub protocols: &'static [&'static str],
    pub why: String,
    /// From this home's config (a proxy, `network_allow`), so tagged
    /// with the home; the DNS servers are the host's, the same for all.
    pub per_home: bool,
}

impl Exception {
    pub fn dns(server: Ipv4Addr) -> Exception {
        Exception {
            dest: host(server, Some(53)),
            protocols: &["udp", "tcp"],
            why: "DNS server of the host".into(),
            per_home: false,
        }
    }

    pub fn proxy(addr: Ipv4Addr, port: u16, variable: &str) -> Exception {
        Exception {
            dest: host(addr, Some(port)),
            protocols: &["tcp"],
            why: format!("proxy in {variable}"),
            per_home: true,
        }
    }

    pub fn allowed(dest: AllowedDestination) -> Exception {
        Exception {
            dest,
            protocols: &["tcp", "udp"],
            why: "[environments] network_allow".into(),
            per_home: true,
        }
    }
}

fn host(addr: Ipv4Addr, port: Option<u16>) -> AllowedDestination {
    AllowedDestination {
        addr,
        prefix: 32,
        port,
    }
}

/// The comment that marks the exceptions one genesis home wrote. Homes on
/// one engine share the bridge and its chains; each rewrites only its own
/// exceptions and keeps the others' (see the module doc of `guard`).
pub fn home_tag(home_label: &str) -> String {
    format!("genesis home={home_label}")
}

/// The `iptables-restore --noflush` input: both chains declared (which
/// creates or empties them in the same transaction that refills them),
/// `kept` (other homes' exception lines, verbatim from `iptables -S`),
/// this home's exceptions, then the refusals.
pub fn ruleset(
    bridge: &str,
    home_label: &str,
    exceptions: &[Exception],
    kept: &[String],
) -> String {
    let tag = home_tag(home_label);
    let mut out = format!("*filter\n:{FORWARD_CHAIN} - [0:0]\n:{INPUT_CHAIN} - [0:0]\n");
    let reject = "-j REJECT --reject-with icmp-port-unreachable";
    // Forwarded: never to another container of the bridge, never to a
    // port the host publishes for some container (DNAT), whatever the
    // exceptions say.
    out.push_str(&format!("-A {FORWARD_CHAIN} -o {bridge} {reject}\n"));
    out.push_str(&format!(
        "-A {FORWARD_CHAIN} -m conntrack --ctstate DNAT {reject}\n"
    ));
    // Answers to connections the host opened (to a container of the
    // bridge) come in here too; an install cannot open such a flow.
    out.push_str(&format!(
        "-A {INPUT_CHAIN} -m conntrack --ctstate RELATED,ESTABLISHED -j RETURN\n"
    ));
    for chain in [FORWARD_CHAIN, INPUT_CHAIN] {
        for line in kept {
            if let Some(rest) = line.strip_prefix(&format!("-A {chain} ")) {
                out.push_str(&format!("-A {chain} {rest}\n"));
            }
        }
        for exception in exceptions {
            for protocol in exception.protocols {
                let port = exception
                    .dest
                    .port
                    .map(|p| format!(" -m {protocol} --dport {p}"))
                    .unwrap_or_default();
                let who = if exception.per_home {
                    tag.as_str()
                } else {
                    "genesis"
                };
                out.push_str(&format!(
                    "-A {chain} -d {} -p {protocol}{port} -m comment --comment \"{who}: {}\" -j RETURN\n",
                    exception.dest.cidr(),
                    exception.why.replace('"', "'")
                ));
            }
        }
    }
    for (range, what) in REFUSED_RANGES {
        out.push_str(&format!(
            "-A {FORWARD_CHAIN} -d {range} -m comment --comment \"genesis: {what}\" {reject}\n"
        ));
    }
    // Whatever address of the host an install aims at (the bridge's
    // gateway, docker0, the uplink's), it arrives here: refused.
    out.push_str(&format!("-A {INPUT_CHAIN} {reject}\n"));
    out.push_str("COMMIT\n");
    out
}

/// Other homes' exception lines of the current chains (`iptables -S`
/// output), to be written back unchanged.
pub fn other_homes_lines(listing: &str, home_label: &str) -> Vec<String> {
    let mine = format!("\"{}:", home_tag(home_label));
    listing
        .lines()
        .filter(|l| l.contains("genesis home=") && !l.contains(&mine))
        .map(str::to_owned)
        .collect()
}

/// The `iptables` binary Docker itself runs: the one on `PATH` (as the
/// daemon finds it), else in the usual sbin directories (a service's
/// `PATH` often lacks them), with `iptables-restore` beside it.
#[derive(Debug, Clone)]
pub struct Iptables {
    pub binary: PathBuf,
    pub restore: PathBuf,
}

impl Iptables {
    pub fn find() -> Option<Iptables> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let dirs = std::env::split_paths(&path)
            .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"].map(PathBuf::from));
        for dir in dirs {
            let binary = dir.join("iptables");
            let restore = dir.join("iptables-restore");
            if is_executable(&binary) && is_executable(&restore) {
                return Some(Iptables { binary, restore });
            }
        }
        None
    }

    /// Runs `iptables ARGS` (waiting for the xtables lock, as Docker does);
    /// Ok(stdout) or Err(stderr).
    pub async fn run(&self, args: &[&str]) -> Result<String, String> {
        let out = tokio::process::Command::new(&self.binary)
            .arg("-w")
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| format!("running {}: {e}", self.binary.display()))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }

    /// Applies `rules` in one transaction, leaving every other chain alone.
    pub async fn restore(&self, rules: &str) -> Result<(), String> {
        let mut child = tokio::process::Command::new(&self.restore)
            .args(["-w", "--noflush"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("running {}: {e}", self.restore.display()))?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(rules.as_bytes())
                .await
                .map_err(|e| format!("writing to {}: {e}", self.restore.display()))?;
        }
        let out = child
            .wait_with_output()
            .await
            .map_err(|e| format!("waiting for {}: {e}", self.restore.display()))?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_owned())
        }
    }

    /// Makes `chain` jump to `target` for traffic in from `bridge`, as its
    /// first rule, unless it already does.
    pub async fn ensure_jump(&self, chain: &str, bridge: &str, target: &str) -> Result<(), String> {
        let rule = ["-i", bridge, "-j", target];
        let check: Vec<&str> = ["-C", chain].iter().chain(&rule).copied().collect();
        if self.run(&check).await.is_ok() {
            return Ok(());
        }
        let insert: Vec<&str> = ["-I", chain, "1"].iter().chain(&rule).copied().collect();
        self.run(&insert).await.map(|_| ())
    }

    /// `iptables v1.8.9 (nf_tables)`: which backend the rules go to.
    pub async fn version(&self) -> String {
        self.run(&["--version"])
            .await
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|e| e)
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ruleset_refuses_every_non_public_range_after_the_exceptions() {
        let exceptions = vec![
            Exception::dns(Ipv4Addr::new(10, 255, 255, 53)),
            Exception::proxy(Ipv4Addr::new(10, 0, 0, 7), 3128, "HTTPS_PROXY"),
        ];
        let kept = vec![
            "-A GENESIS-INSTALL-FWD -d 10.9.9.9/32 -p tcp -m comment --comment \"genesis home=other: x\" -j RETURN".to_string(),
        ];
        let rules = ruleset("gns-install", "mine", &exceptions, &kept);
        let lines: Vec<&str> = rules.lines().collect();
        assert_eq!(lines[0], "*filter");
        assert_eq!(lines[1], ":GENESIS-INSTALL-FWD - [0:0]");
        assert_eq!(*lines.last().unwrap(), "COMMIT");
        let position = |needle: &str| {
            lines
                .iter()
                .position(|l| l.contains(needle))
                .unwrap_or_else(|| panic!("no {needle:?} in\n{rules}"))
        };
        // Same bridge first, then exceptions, then the refused ranges.
        assert!(position("-o gns-install -j REJECT") < position("10.255.255.53/32"));
        assert!(position("--dport 3128") < position("-d 10.0.0.0/8"));
        assert!(position("home=other") < position("-d 10.0.0.0/8"));
        for (range, _) in REFUSED_RANGES {
            assert!(rules.contains(&format!("-d {range} ")), "{range}");
        }
        assert!(rules.contains(
            "-d 10.255.255.53/32 -p udp -m udp --dport 53 -m comment --comment \"genesis: DNS"
        ));
        assert!(rules.contains(
            "--dport 3128 -m comment --comment \"genesis home=mine: proxy in HTTPS_PROXY\""
        ));
        assert!(rules.contains("-d 10.255.255.53/32 -p tcp -m tcp --dport 53"));
        // The host: DNS allowed, everything else refused, last.
        let input: Vec<&&str> = lines
            .iter()
            .filter(|l| l.starts_with("-A GENESIS-INSTALL-IN"))
            .collect();
        assert_eq!(
            **input.last().unwrap(),
            "-A GENESIS-INSTALL-IN -j REJECT --reject-with icmp-port-unreachable"
        );
        assert!(input.iter().any(|l| l.contains("--dport 53")));
        // The public registry's range is not refused.
        assert!(!rules.contains("203.0.113"));
    }

    #[test]
    fn only_other_homes_exceptions_are_kept() {
        let listing = "-N GENESIS-INSTALL-FWD\n\
            -A GENESIS-INSTALL-FWD -o gns-install -j REJECT\n\
            -A GENESIS-INSTALL-FWD -d 10.1.1.1/32 -p tcp -m comment --comment \"genesis home=aaa: proxy in HTTPS_PROXY\" -j RETURN\n\
            -A GENESIS-INSTALL-FWD -d 10.2.2.2/32 -p tcp -m comment --comment \"genesis home=bbb: proxy in HTTPS_PROXY\" -j RETURN\n";
        let kept = other_homes_lines(listing, "aaa");
        assert_eq!(kept.len(), 1);
        assert!(kept[0].contains("10.2.2.2"));
        // Each line goes back into the chain it came from.
        let input = "-A GENESIS-INSTALL-IN -d 10.3.3.3/32 -p tcp -m comment --comment \"genesis home=bbb: x\" -j RETURN".to_string();
        let rules = ruleset("gns-install", "aaa", &[], &[kept[0].clone(), input]);
        assert!(rules.contains("-A GENESIS-INSTALL-FWD -d 10.2.2.2/32"));
        assert!(rules.contains("-A GENESIS-INSTALL-IN -d 10.3.3.3/32"));
    }
}
