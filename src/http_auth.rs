//! What a caller presents to prove who it is, read the same way by every role: HTTP Basic
//! credentials (RFC 7617), tokens in `Authorization` (`Bearer`, the platform's `jwt`), cookies,
//! and the names of a verified client certificate.
//!
//! Only reading lives here; each role decides what it accepts, and compares secrets with
//! [`crate::secret::Secret::matches`] (constant time).

use base64::Engine;
use http::HeaderMap;

use crate::tls::PeerIdentity;

/// The user and password of an `Authorization: Basic` header, as sent.
pub fn basic_credentials(headers: &HeaderMap) -> Option<(String, String)> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// The token of an `Authorization: <scheme> <token>` header whose scheme is one of `schemes`
/// (compared without letter case).
pub fn authorization_token<'a>(headers: &'a HeaderMap, schemes: &[&str]) -> Option<&'a str> {
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    schemes
        .iter()
        .any(|s| scheme.eq_ignore_ascii_case(s))
        .then_some(token.trim())
}

/// The value of cookie `name` among the request's `Cookie` headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether the connection's client certificate carries one of `accepted` as its subject
/// common name or a subject alternative name (DNS names compared without letter case).
pub fn certificate_matches(peer: Option<&PeerIdentity>, accepted: &[String]) -> bool {
    peer.is_some_and(|p| {
        p.names.iter().any(|n| {
            accepted
                .iter()
                .any(|want| want == n || want.eq_ignore_ascii_case(n))
        })
    })
}

/// The authority (`host[:port]`) a request was addressed to: HTTP/1.1's `Host`, or HTTP/2's
/// `:authority` (which the request's URI carries). Only a plain authority is returned.
pub fn request_authority<'a>(headers: &'a HeaderMap, uri: &'a http::Uri) -> Option<&'a str> {
    headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 255
                && h.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
                })
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_are_read_whatever_the_scheme_case() {
        let mut h = HeaderMap::new();
        let v = base64::engine::general_purpose::STANDARD.encode("platform:pa:ss");
        h.insert(
            http::header::AUTHORIZATION,
            format!("bAsIc {v}").parse().unwrap(),
        );
        assert_eq!(
            basic_credentials(&h),
            Some(("platform".into(), "pa:ss".into()))
        );
        h.insert(http::header::AUTHORIZATION, "Bearer x".parse().unwrap());
        assert_eq!(basic_credentials(&h), None);
    }

    #[test]
    fn certificate_names_match_exactly_or_without_case() {
        let peer = PeerIdentity {
            names: vec!["Push.Platform.example".into()],
        };
        assert!(certificate_matches(
            Some(&peer),
            &["push.platform.example".into()]
        ));
        assert!(!certificate_matches(
            Some(&peer),
            &["platform.example".into()]
        ));
        assert!(!certificate_matches(
            None,
            &["push.platform.example".into()]
        ));
    }

    #[test]
    fn the_request_authority_is_host_or_the_http2_authority_and_plain() {
        let mut h = HeaderMap::new();
        let h2: http::Uri = "https://chat.brand.example:8443/ws/agent".parse().unwrap();
        let h1: http::Uri = "/ws/agent".parse().unwrap();
        assert_eq!(request_authority(&h, &h2), Some("chat.brand.example:8443"));
        assert_eq!(request_authority(&h, &h1), None);
        h.insert(http::header::HOST, "localhost:8443".parse().unwrap());
        assert_eq!(request_authority(&h, &h1), Some("localhost:8443"));
        h.insert(
            http::header::HOST,
            "evil.example; script-src *".parse().unwrap(),
        );
        assert_eq!(request_authority(&h, &h1), None, "not a plain authority");
    }
}
