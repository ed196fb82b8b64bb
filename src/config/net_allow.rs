//! `[environments] network_allow`: the addresses an install may reach
//! although the install network's guard would refuse them (a package
//! mirror or proxy on a private address). Parsed here, at load, so a typo
//! stops the config check instead of an install.
//!
//! Syntax: `ADDR`, `ADDR/PREFIX`, either with an optional `:PORT`
//! (`10.1.2.3`, `10.1.0.0/16`, `10.1.2.3:3128`, `10.1.0.0/16:443`). IPv4
//! only: installs have no IPv6 (see the guard's design).

use std::fmt;
use std::net::Ipv4Addr;

/// One allowed destination: a network and, optionally, one TCP/UDP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowedDestination {
    pub addr: Ipv4Addr,
    pub prefix: u8,
    pub port: Option<u16>,
}

impl AllowedDestination {
    /// `ADDR/PREFIX` as iptables takes it (host bits cleared).
    pub fn cidr(&self) -> String {
        let mask = if self.prefix == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(self.prefix))
        };
        format!(
            "{}/{}",
            Ipv4Addr::from(u32::from(self.addr) & mask),
            self.prefix
        )
    }
}

impl fmt::Display for AllowedDestination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.cidr())?;
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

/// Parses one entry; the error says what was expected.
pub fn parse(entry: &str) -> Result<AllowedDestination, String> {
    let expected = || {
        format!(
            "{entry:?} is not an IPv4 address or ADDR/PREFIX, with an optional :PORT \
             (e.g. \"10.1.2.3:3128\", \"10.1.0.0/16\")"
        )
    };
    let (net, port) = match entry.rsplit_once(':') {
        Some((net, port)) => {
            let port: u16 = port.parse().map_err(|_| expected())?;
            if port == 0 {
                return Err(expected());
            }
            (net, Some(port))
        }
        None => (entry, None),
    };
    let (addr, prefix) = match net.split_once('/') {
        Some((addr, prefix)) => (addr, prefix.parse::<u8>().map_err(|_| expected())?),
        None => (net, 32),
    };
    if prefix > 32 {
        return Err(expected());
    }
    let addr: Ipv4Addr = addr.trim().parse().map_err(|_| expected())?;
    Ok(AllowedDestination { addr, prefix, port })
}

/// Parses every entry, naming the first bad one.
pub fn parse_all(entries: &[String]) -> Result<Vec<AllowedDestination>, String> {
    entries.iter().map(|e| parse(e)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_networks_and_ports_parse_and_junk_is_named() {
        let one = parse("10.1.2.3").unwrap();
        assert_eq!((one.cidr(), one.port), ("10.1.2.3/32".into(), None));
        let net = parse("10.1.2.3/16:443").unwrap();
        assert_eq!(net.cidr(), "10.1.0.0/16");
        assert_eq!(net.port, Some(443));
        assert_eq!(net.to_string(), "10.1.0.0/16:443");
        assert_eq!(parse("0.0.0.0/0").unwrap().cidr(), "0.0.0.0/0");
        for bad in [
            "",
            "proxy.lan",
            "10.1.2.3/33",
            "10.1.2.3:0",
            "10.1.2.3:http",
            "::1",
        ] {
            let error = parse(bad).unwrap_err();
            assert!(error.contains(&format!("{bad:?}")), "{error}");
        }
    }
}
