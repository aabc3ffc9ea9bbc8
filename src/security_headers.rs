//! The security headers every answer of the public listener carries, whichever role made it
//! (HTML pages, JSON, errors, WebSocket refusals):
//!
//! - `X-Content-Type-Options: nosniff`: a browser never reads an answer as another type than
//!   the one it declares;
//! - `Content-Security-Policy` with `frame-ancestors 'none'` (and `X-Frame-Options: DENY` for
//!   browsers that predate it): no page of brandgate is shown inside another site's frame. A
//!   role that sets its own policy keeps it, with `frame-ancestors 'none'` added when it has
//!   none; answers without one get `default-src 'none'` (nothing in them may load anything);
//! - `Referrer-Policy: no-referrer`: a login or callback URL (codes, states) never leaves in a
//!   `Referer` header;
//! - `Strict-Transport-Security` (one year, this host only): the listener is always TLS.
//!
//! A header a role set itself is never replaced (except for the frame-ancestors addition).

use axum::Router;
use axum::response::Response;
use http::header::{
    CONTENT_SECURITY_POLICY, REFERRER_POLICY, STRICT_TRANSPORT_SECURITY, X_CONTENT_TYPE_OPTIONS,
    X_FRAME_OPTIONS,
};
use http::{HeaderMap, HeaderValue};

/// Puts the headers on every answer `router` gives.
pub fn layer(router: Router) -> Router {
    router.layer(axum::middleware::map_response(
        |mut response: Response| async move {
            add(response.headers_mut());
            response
        },
    ))
}

/// The headers, added to `headers` where missing.
pub fn add(headers: &mut HeaderMap) {
    let mut default = |name, value: &'static str| {
        headers
            .entry(name)
            .or_insert_with(|| HeaderValue::from_static(value));
    };
    default(X_CONTENT_TYPE_OPTIONS, "nosniff");
    default(X_FRAME_OPTIONS, "DENY");
    default(REFERRER_POLICY, "no-referrer");
    default(STRICT_TRANSPORT_SECURITY, "max-age=31536000");
    let policy = match headers
        .get(CONTENT_SECURITY_POLICY)
        .map(HeaderValue::to_str)
    {
        None => HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
        Some(Ok(own)) if !own.contains("frame-ancestors") => {
            match HeaderValue::from_str(&format!("{own}; frame-ancestors 'none'")) {
                Ok(v) => v,
                Err(_) => HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
            }
        }
        Some(Ok(_)) => return,
        // A policy that is not text cannot be extended: the strictest one instead.
        Some(Err(_)) => HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    };
    headers.insert(CONTENT_SECURITY_POLICY, policy);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_headers_are_added_and_a_roles_own_are_kept() {
        let mut h = HeaderMap::new();
        add(&mut h);
        assert_eq!(h[X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(h[X_FRAME_OPTIONS], "DENY");
        assert_eq!(h[REFERRER_POLICY], "no-referrer");
        assert_eq!(h[STRICT_TRANSPORT_SECURITY], "max-age=31536000");
        assert_eq!(
            h[CONTENT_SECURITY_POLICY],
            "default-src 'none'; frame-ancestors 'none'"
        );

        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'"),
        );
        h.insert(REFERRER_POLICY, HeaderValue::from_static("same-origin"));
        add(&mut h);
        assert_eq!(
            h[CONTENT_SECURITY_POLICY],
            "default-src 'none'; frame-ancestors 'none'"
        );
        assert_eq!(h[REFERRER_POLICY], "same-origin");

        let own = "default-src 'self'; frame-ancestors 'self'";
        let mut h = HeaderMap::new();
        h.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(own));
        add(&mut h);
        assert_eq!(h[CONTENT_SECURITY_POLICY], own);
    }
}
