//! Whose request it is: the client address every per-source limit, every access list and every
//! audit line uses.
//!
//! The client is the connection's peer (as the PROXY protocol reported it, when the listener
//! takes it from a trusted proxy), unless that peer is one of `server.trusted_proxies`: then the
//! forwarding header the config names (`X-Forwarded-For`, or the standard `Forwarded`; one of
//! them, never both, so a client cannot slip a value past a proxy that rewrites only the other)
//! is read from the right, hop by hop, while the hops are trusted proxies too. The first hop
//! that is not is the client. A hop that does not parse (`unknown`, an obfuscated name) ends
//! the walk at the last address known, which a trusted proxy vouched for. From any other peer
//! the headers are not read at all: without trusted proxies, a forged header changes nothing.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use serde::Deserialize;

use crate::networks::{Networks, canonical};

/// Which header trusted proxies put the client's address in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForwardedHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (nginx, HAProxy, AWS ALB, most others).
    #[default]
    XForwardedFor,
    /// `Forwarded: for=client, for=proxy1` (RFC 7239).
    Forwarded,
}

/// The rule that finds a request's client address.
#[derive(Debug, Clone, Default)]
pub struct ClientAddress {
    trusted: Networks,
    header: ForwardedHeader,
}

impl ClientAddress {
    pub fn new(trusted: Networks, header: ForwardedHeader) -> ClientAddress {
        ClientAddress { trusted, header }
    }

    /// Whether `peer` is a trusted proxy.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        self.trusted.contains(peer)
    }

    /// The client of a request that came from `peer` with `headers`.
    pub fn of(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let peer = canonical(peer);
        if !self.trusts(peer) {
            return peer;
        }
        let hops = match self.header {
            ForwardedHeader::XForwardedFor => list_values(headers, "x-forwarded-for")
                .map(parse_hop)
                .collect::<Vec<_>>(),
            ForwardedHeader::Forwarded => list_values(headers, "forwarded")
                .map(forwarded_for)
                .collect::<Vec<_>>(),
        };
        let mut client = peer;
        for hop in hops.into_iter().rev() {
            let Some(ip) = hop else { break };
            client = ip;
            if !self.trusts(ip) {
                break;
            }
        }
        client
    }
}

/// The request's client address, as a handler argument (`None` only for a request that did
/// not come through the public listener).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<IpAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        Ok(ClientIp(
            parts.extensions.get::<crate::tls::Peer>().map(|p| p.client),
        ))
    }
}

/// The comma-separated items of every line of header `name`, in order. A line that is not
/// visible ASCII yields one item that parses as nothing.
fn list_values<'a>(headers: &'a HeaderMap, name: &str) -> impl Iterator<Item = &'a str> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("\u{0}").split(','))
        .map(str::trim)
}

/// One hop's address: `192.0.2.1`, `2001:db8::1`, `[2001:db8::1]`, or either with a port.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    if let Ok(sa) = hop.parse::<SocketAddr>() {
        return Some(canonical(sa.ip()));
    }
    let inner = hop.strip_prefix('[')?.strip_suffix(']')?;
    inner.parse::<IpAddr>().ok().map(canonical)
}

/// The `for=` address of one `Forwarded` element (`for=192.0.2.60;proto=https;by=...`).
fn forwarded_for(element: &str) -> Option<IpAddr> {
    let value = element.split(';').find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then_some(value.trim())
    })?;
    let value = match value.strip_prefix('"') {
        Some(quoted) => quoted.strip_suffix('"')?,
        None => value,
    };
    parse_hop(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(name: &str, lines: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                l.parse().unwrap(),
            );
        }
        h
    }

    fn rule(trusted: &[&str], header: ForwardedHeader) -> ClientAddress {
        ClientAddress::new(trusted.iter().map(|n| n.parse().unwrap()).collect(), header)
    }

    #[test]
    fn without_trusted_proxies_headers_are_not_read() {
        let r = ClientAddress::default();
        let h = headers("x-forwarded-for", &["198.51.100.1"]);
        assert_eq!(r.of(ip("203.0.113.5"), &h), ip("203.0.113.5"));
        let r = rule(&["10.0.0.0/8"], ForwardedHeader::XForwardedFor);
        assert_eq!(r.of(ip("203.0.113.5"), &h), ip("203.0.113.5"));
    }

    #[test]
    fn the_walk_stops_at_the_first_untrusted_hop_from_the_right() {
        let r = rule(&["10.0.0.0/8"], ForwardedHeader::XForwardedFor);
        // A client forged the first entry; the edge proxy appended the real one.
        let h = headers("x-forwarded-for", &["1.1.1.1, 198.51.100.7", "10.0.0.2"]);
        assert_eq!(r.of(ip("10.0.0.1"), &h), ip("198.51.100.7"));
        // All hops trusted: the leftmost is the client.
        let h = headers("x-forwarded-for", &["10.9.9.9, 10.0.0.2"]);
        assert_eq!(r.of(ip("10.0.0.1"), &h), ip("10.9.9.9"));
        // No header: the proxy itself.
        assert_eq!(r.of(ip("10.0.0.1"), &HeaderMap::new()), ip("10.0.0.1"));
        // Ports, brackets and mapped addresses.
        let h = headers("x-forwarded-for", &["[2001:db8::7]:4711"]);
        assert_eq!(r.of(ip("10.0.0.1"), &h), ip("2001:db8::7"));
        let h = headers("x-forwarded-for", &["198.51.100.9:1234"]);
        assert_eq!(r.of(ip("::ffff:10.0.0.1"), &h), ip("198.51.100.9"));
    }

    #[test]
    fn an_unreadable_hop_ends_the_walk_at_the_last_address_vouched_for() {
        let r = rule(&["10.0.0.0/8"], ForwardedHeader::XForwardedFor);
        let h = headers("x-forwarded-for", &["198.51.100.7, unknown, 10.0.0.3"]);
        assert_eq!(r.of(ip("10.0.0.1"), &h), ip("10.0.0.3"));
        let h = headers("x-forwarded-for", &["198.51.100.7, "]);
        assert_eq!(r.of(ip("10.0.0.1"), &h), ip("10.0.0.1"));
    }

    #[test]
    fn only_the_configured_header_is_believed() {
        let xff = rule(&["10.0.0.0/8"], ForwardedHeader::XForwardedFor);
        let fwd = rule(&["10.0.0.0/8"], ForwardedHeader::Forwarded);
        let mut h = headers(
            "forwarded",
            &["for=192.0.2.60;proto=https, for=\"[2001:db8:cafe::17]:4711\""],
        );
        h.append("x-forwarded-for", "203.0.113.1".parse().unwrap());
        assert_eq!(fwd.of(ip("10.0.0.1"), &h), ip("2001:db8:cafe::17"));
        assert_eq!(xff.of(ip("10.0.0.1"), &h), ip("203.0.113.1"));
        let h = headers("forwarded", &["For=10.1.1.1;by=x, proto=https"]);
        assert_eq!(fwd.of(ip("10.0.0.1"), &h), ip("10.0.0.1"));
        let h = headers("forwarded", &["for=_hidden, for=10.2.2.2"]);
        assert_eq!(fwd.of(ip("10.0.0.1"), &h), ip("10.2.2.2"));
    }
}
