//! `[server.admin_auth]`: the admin listener's bearer token and client networks.

use std::net::IpAddr;
use std::path::Path;

use filters::api_key::{digest, KeyDigest};

use super::file::AdminAuthFile;
use super::Errors;

/// Who may use the admin listener. Paths in `open_paths` skip both checks.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminAuth {
    /// The SHA-256 digest of the bearer token (only the digest is kept, and
    /// compared in constant time); `None`: no token needed.
    pub token: Option<KeyDigest>,
    /// Client networks allowed; empty: any.
    pub allow_networks: Vec<Network>,
    pub open_paths: Vec<String>,
}

impl std::fmt::Debug for AdminAuth {
    /// The token's digest stays out of logs and reports.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth")
            .field("token", &self.token.map(|_| "<redacted>"))
            .field("allow_networks", &self.allow_networks)
            .field("open_paths", &self.open_paths)
            .finish()
    }
}

impl AdminAuth {
    /// Whether a client at `client` may connect at all.
    pub fn allows(&self, client: IpAddr) -> bool {
        self.allow_networks.is_empty() || self.allow_networks.iter().any(|n| n.contains(client))
    }

    /// Whether `path` is answered without checks.
    pub fn is_open(&self, path: &str) -> bool {
        self.open_paths.iter().any(|p| p == path)
    }
}

/// An IP network, `address/prefix`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    /// `10.0.0.0/8`, `fd00::/8`, or one address (`127.0.0.1`: `/32`).
    pub fn parse(text: &str) -> Result<Network, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (text, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{text:?} is not an IP network (like \"10.0.0.0/8\")"))?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|&p| p <= bits)
                .ok_or_else(|| format!("{text:?}: the prefix length must be 0 to {bits}"))?,
        };
        Ok(Network { addr, prefix })
    }

    /// Whether `client` is in this network; an IPv4 client seen on an IPv6 socket
    /// (`::ffff:10.1.2.3`) counts as its IPv4 address.
    pub fn contains(&self, client: IpAddr) -> bool {
        let masked = |bits: u128, width: u32| {
            let shift = width - u32::from(self.prefix);
            bits.checked_shr(shift).unwrap_or(0)
        };
        match (self.addr, client.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u32::from(net).into(), 32) == masked(u32::from(ip).into(), 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(net), 128) == masked(u128::from(ip), 128)
            }
            _ => false,
        }
    }
}

pub(super) fn admin_auth(
    file: Option<AdminAuthFile>,
    base: &Path,
    errors: &mut Errors,
) -> Option<AdminAuth> {
    let file = file?;
    const PATH: &str = "server.admin_auth";
    if file.token_file.is_none() && file.allow_networks.is_empty() {
        errors.push(
            PATH,
            "set `token_file`, `allow_networks` or both (without the table the listener is open)",
        );
    }
    let token = file.token_file.as_deref().and_then(|name| {
        let at = format!("{PATH}.token_file");
        let text = super::filters::read_file(&at, name, base, errors)?;
        let token = text.trim_end_matches(['\n', '\r']);
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
            errors.push(
                &at,
                "the token must be one line of printable ASCII without spaces",
            );
            return None;
        }
        Some(digest(token.as_bytes()))
    });
    let allow_networks = file
        .allow_networks
        .iter()
        .enumerate()
        .filter_map(|(i, text)| {
            Network::parse(text)
                .map_err(|e| errors.push(&format!("{PATH}.allow_networks[{i}]"), e))
                .ok()
        })
        .collect();
    for (i, path) in file.open_paths.iter().enumerate() {
        if !path.starts_with('/') {
            errors.push(
                &format!("{PATH}.open_paths[{i}]"),
                format!("{path:?} must be a path starting with '/'"),
            );
        }
    }
    Some(AdminAuth {
        token,
        allow_networks,
        open_paths: file.open_paths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_contain_their_addresses_only() {
        let net = Network::parse("10.1.0.0/16").unwrap();
        assert!(net.contains("10.1.200.3".parse().unwrap()));
        assert!(!net.contains("10.2.0.1".parse().unwrap()));
        assert!(
            net.contains("::ffff:10.1.0.9".parse().unwrap()),
            "IPv4-mapped"
        );
        let one = Network::parse("127.0.0.1").unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()));
        assert!(!one.contains("127.0.0.2".parse().unwrap()));
        let any = Network::parse("0.0.0.0/0").unwrap();
        assert!(any.contains("192.0.2.1".parse().unwrap()));
        assert!(!any.contains("::1".parse().unwrap()));
        let v6 = Network::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        assert!(Network::parse("10.0.0.0/33").is_err());
        assert!(Network::parse("localhost").is_err());
    }
}
