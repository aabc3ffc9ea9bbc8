//! IP networks in CIDR notation (`10.0.0.0/8`, `2001:db8::/32`, or one address) and lists of
//! them: which peers are trusted proxies, which networks an account admits its agents from.
//!
//! An IPv4-mapped IPv6 address (`::ffff:10.1.2.3`, what a dual-stack socket reports for an
//! IPv4 client) is the IPv4 address it maps, so one rule covers both forms. A network with
//! bits set beyond its prefix (`10.1.2.3/8`) is refused rather than silently widened or
//! narrowed: it is almost always a typo for something else.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::Deserialize;

/// One network: an address and how many of its leading bits count.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Network {
    addr: IpAddr,
    prefix: u8,
}

/// Why a network does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NetworkError {
    #[error("{0:?} is not an IP address or network (like 10.0.0.0/8 or 2001:db8::/32)")]
    NotAnAddress(String),
    #[error("the prefix of {0:?} is longer than its address (at most /32 for IPv4, /128 for IPv6)")]
    PrefixTooLong(String),
    #[error("{0:?} has bits set beyond its prefix; did you mean {1}?")]
    HostBitsSet(String, String),
}

impl Network {
    /// Whether `ip` is in this network.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                mask32(u32::from(ip), self.prefix) == u32::from(net)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                mask128(u128::from(ip), self.prefix) == u128::from(net)
            }
            _ => false,
        }
    }
}

impl FromStr for Network {
    type Err = NetworkError;

    fn from_str(s: &str) -> Result<Network, NetworkError> {
        let not_an_address = || NetworkError::NotAnAddress(s.to_string());
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => {
                // Digits only: no sign, no spaces, no leading "+".
                if p.is_empty() || p.len() > 3 || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(not_an_address());
                }
                let prefix: u8 = p.parse().map_err(|_| not_an_address())?;
                (a, Some(prefix))
            }
            None => (s, None),
        };
        let raw = IpAddr::from_str(addr).map_err(|_| not_an_address())?;
        let (addr, prefix) = match (raw, canonical(raw)) {
            // `::ffff:10.0.0.0/104` is `10.0.0.0/8`.
            (IpAddr::V6(_), v4 @ IpAddr::V4(_)) if prefix.is_none_or(|p| p >= 96) => {
                (v4, prefix.map(|p| p - 96))
            }
            _ => (raw, prefix),
        };
        let width = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(width);
        if prefix > width {
            return Err(NetworkError::PrefixTooLong(s.to_string()));
        }
        let masked = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(mask32(u32::from(a), prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(mask128(u128::from(a), prefix))),
        };
        if masked != addr {
            return Err(NetworkError::HostBitsSet(
                s.to_string(),
                Network {
                    addr: masked,
                    prefix,
                }
                .to_string(),
            ));
        }
        Ok(Network { addr, prefix })
    }
}

impl fmt::Display for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl fmt::Debug for Network {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<'de> Deserialize<'de> for Network {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Network, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl serde::Serialize for Network {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// A list of networks; an address is in it when it is in any of them.
#[derive(Clone, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(transparent)]
pub struct Networks(Vec<Network>);

impl Networks {
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|n| n.contains(ip))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl fmt::Debug for Networks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.0).finish()
    }
}

impl FromIterator<Network> for Networks {
    fn from_iter<I: IntoIterator<Item = Network>>(iter: I) -> Self {
        Networks(iter.into_iter().collect())
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it maps; anything else as it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn mask32(bits: u32, prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p => bits & (u32::MAX << (32 - u32::from(p.min(32)))),
    }
}

fn mask128(bits: u128, prefix: u8) -> u128 {
    match prefix {
        0 => 0,
        p => bits & (u128::MAX << (128 - u32::from(p.min(128)))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn net(s: &str) -> Network {
        s.parse().unwrap()
    }

    #[test]
    fn networks_contain_their_addresses_only() {
        let n = net("10.1.0.0/16");
        assert!(n.contains(ip("10.1.0.0")));
        assert!(n.contains(ip("10.1.255.255")));
        assert!(!n.contains(ip("10.2.0.0")));
        assert!(!n.contains(ip("10.0.255.255")));
        let one = net("192.0.2.7");
        assert_eq!(one.to_string(), "192.0.2.7/32");
        assert!(one.contains(ip("192.0.2.7")));
        assert!(!one.contains(ip("192.0.2.8")));
        let v6 = net("2001:db8:1::/48");
        assert!(v6.contains(ip("2001:db8:1:ffff::1")));
        assert!(!v6.contains(ip("2001:db8:2::1")));
        assert!(net("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(!net("0.0.0.0/0").contains(ip("2001:db8::1")));
        assert!(net("::/0").contains(ip("2001:db8::1")));
    }

    #[test]
    fn mapped_ipv6_addresses_are_their_ipv4_address() {
        assert!(net("10.0.0.0/8").contains(ip("::ffff:10.9.8.7")));
        assert!(!net("10.0.0.0/8").contains(ip("::ffff:11.9.8.7")));
        assert_eq!(net("::ffff:10.0.0.0/104").to_string(), "10.0.0.0/8");
        assert!(net("::ffff:10.0.0.0/104").contains(ip("10.200.0.1")));
    }

    #[test]
    fn malformed_networks_are_refused_with_their_reason() {
        assert_eq!(
            "10.1.2.3/8".parse::<Network>(),
            Err(NetworkError::HostBitsSet(
                "10.1.2.3/8".into(),
                "10.0.0.0/8".into()
            ))
        );
        assert_eq!(
            "10.0.0.0/33".parse::<Network>(),
            Err(NetworkError::PrefixTooLong("10.0.0.0/33".into()))
        );
        for bad in [
            "",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/ 8",
            "host/8",
            "10.0.0/8",
        ] {
            assert_eq!(
                bad.parse::<Network>(),
                Err(NetworkError::NotAnAddress(bad.into())),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_list_admits_what_any_of_its_networks_holds() {
        let list: Networks = [net("10.0.0.0/8"), net("2001:db8::/32")]
            .into_iter()
            .collect();
        assert!(list.contains(ip("10.3.3.3")));
        assert!(list.contains(ip("2001:db8::5")));
        assert!(!list.contains(ip("127.0.0.1")));
        assert!(!Networks::default().contains(ip("127.0.0.1")));
    }
}
