//! Whose request it is: the client address every per-source limit, every access list and every
//! audit line uses.
//!
//! The client is the connection's peer, unless that peer is one of `server.trusted_proxies`:
//! then the forwarding header the config names (`X-Forwarded-For`, or the standard
//! `Forwarded`; one of them, never both, so a client cannot slip a value past a proxy that
//! rewrites only the other) is read from the right, hop by hop, while the hops are trusted
//! proxies too. The first hop that is not is the client. Each comma-separated hop is read on
//! its own, so bytes a client puts in its part of the line cannot spoil the hops the proxies
//! appended. When a trusted proxy does not say who the client is (no header, or a hop that
//! does not parse before an untrusted one: `unknown`, an obfuscated name), the client is
//! [`UNKNOWN_CLIENT`], never the proxy itself: a proxy's own address may well be inside an
//! access list. From any other peer the headers are not read at all: without trusted
//! proxies, a forged header changes nothing. (With `server.proxy_protocol`, the listener takes
//! the client from the PROXY header instead and reads no forwarding header.)

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use http::HeaderMap;
use serde::Deserialize;

use crate::networks::{Networks, canonical};

/// The client of a request a trusted proxy sent without saying whose it is: one address for
/// all of them (sharing one budget in every per-source limit), inside no access list but one
/// that admits everything (`0.0.0.0/0`).
pub const UNKNOWN_CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

/// Which header trusted proxies put the client's address in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
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
        let (name, hop): (&str, fn(&str) -> Option<IpAddr>) = match self.header {
            ForwardedHeader::XForwardedFor => ("x-forwarded-for", parse_hop),
            ForwardedHeader::Forwarded => ("forwarded", forwarded_for),
        };
        let hops: Vec<&[u8]> = list_items(headers, name).collect();
        let mut client = UNKNOWN_CLIENT;
        for item in hops.into_iter().rev() {
            let Some(ip) = std::str::from_utf8(item).ok().and_then(hop) else {
                return UNKNOWN_CLIENT;
            };
            if !self.trusts(ip) {
                return ip;
            }
            // Trusted all the way: the leftmost is the client (a host inside the network).
            client = ip;
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

/// The comma-separated items of every line of header `name`, in order, as bytes, trimmed of
/// spaces and tabs.
fn list_items<'a>(headers: &'a HeaderMap, name: &str) -> impl Iterator<Item = &'a [u8]> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(|item| item.trim_ascii())
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
        // No header: not the proxy itself, an unknown client.
        assert_eq!(r.of(ip("10.0.0.1"), &HeaderMap::new()), UNKNOWN_CLIENT);
        // Ports, brackets and mapped addresses.
        let h = headers("x-forwarded-for", &["[2001:db8::7]:4711"]);
        assert_eq!(r.of(ip("10.0.0.1"), &h), ip("2001:db8::7"));
        let h = headers("x-forwarded-for", &["198.51.100.9:1234"]);
        assert_eq!(r.of(ip("::ffff:10.0.0.1"), &h), ip("198.51.100.9"));
    }

    #[test]
    fn an_unreadable_hop_before_an_untrusted_one_makes_the_client_unknown() {
        let r = rule(&["10.0.0.0/8"], ForwardedHeader::XForwardedFor);
        let h = headers("x-forwarded-for", &["198.51.100.7, unknown, 10.0.0.3"]);
        assert_eq!(r.of(ip("10.0.0.1"), &h), UNKNOWN_CLIENT);
        let h = headers("x-forwarded-for", &["198.51.100.7, "]);
        assert_eq!(r.of(ip("10.0.0.1"), &h), UNKNOWN_CLIENT);
    }

    #[test]
    fn bytes_a_client_writes_cannot_spoil_the_hops_proxies_append() {
        let r = rule(&["10.0.0.0/8"], ForwardedHeader::XForwardedFor);
        // nginx appends ", <peer>" to the client's own line, whatever it holds.
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(b"\xff\xfe, 198.51.100.7").unwrap(),
        );
        assert_eq!(r.of(ip("10.0.0.1"), &h), ip("198.51.100.7"));
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            http::HeaderValue::from_bytes(b"\xff, 10.0.0.9").unwrap(),
        );
        assert_eq!(r.of(ip("10.0.0.1"), &h), UNKNOWN_CLIENT);
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
        assert_eq!(fwd.of(ip("10.0.0.1"), &h), UNKNOWN_CLIENT);
        let h = headers("forwarded", &["for=_hidden, for=10.2.2.2"]);
        assert_eq!(fwd.of(ip("10.0.0.1"), &h), UNKNOWN_CLIENT);
        let h = headers("forwarded", &["for=10.3.3.3, for=10.2.2.2"]);
        assert_eq!(fwd.of(ip("10.0.0.1"), &h), ip("10.3.3.3"));
    }
}
