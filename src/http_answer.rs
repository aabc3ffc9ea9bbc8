//! The small HTTP pieces every role's handlers share: answers no cache may keep, JSON errors,
//! `Retry-After`, and the one Content-Type rule for request bodies.
//!
//! The rule: a handler reads a body only as the media type its `Content-Type` names (parameters
//! such as `charset` ignored, case-insensitive); a missing or different type is refused before
//! the body is read, with `415` (the OAuth token endpoints answer `400 invalid_request`, as
//! RFC 6749 asks). It keeps a cross-site form (which can send only
//! `application/x-www-form-urlencoded`, `multipart/form-data` or `text/plain` without a
//! preflight) from reaching a JSON endpoint, and a body from being guessed at.

use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde_json::json;

/// Marks an answer as never to be stored by a cache (tokens, codes, sessions, conversations).
pub fn no_store(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

/// `{"error": message}` with `status`, never cached.
pub fn json_error(status: StatusCode, message: &str) -> Response {
    no_store((status, axum::Json(json!({ "error": message }))).into_response())
}

/// `response` with `Retry-After` (whole seconds, at least 1).
pub fn with_retry_after(mut response: Response, wait: std::time::Duration) -> Response {
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(wait.as_secs().max(1)),
    );
    response
}

/// Whether the request's body is declared as media type `expected` (parameters ignored). A
/// request without `Content-Type` is not.
pub fn has_media_type(request: &HeaderMap, expected: &str) -> bool {
    request
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(expected))
}

/// Whether the request's body is declared as JSON.
pub fn is_json(request: &HeaderMap) -> bool {
    has_media_type(request, "application/json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_media_type_is_the_declared_one_or_nothing() {
        let with = |value: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(v) = value {
                h.insert(header::CONTENT_TYPE, v.parse().unwrap());
            }
            is_json(&h)
        };
        assert!(with(Some("application/json")));
        assert!(with(Some("Application/JSON; charset=utf-8")));
        assert!(with(Some(" application/json ;x=y")));
        assert!(!with(None), "a missing Content-Type is not JSON");
        assert!(!with(Some("text/plain")));
        assert!(!with(Some("application/json-seq")));
        assert!(!with(Some("application/x-www-form-urlencoded")));
    }

    #[test]
    fn errors_are_json_and_never_cached() {
        let r = with_retry_after(
            json_error(StatusCode::TOO_MANY_REQUESTS, "slow down"),
            std::time::Duration::from_millis(200),
        );
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
        assert_eq!(r.headers()[header::PRAGMA], "no-cache");
        assert_eq!(r.headers()[header::RETRY_AFTER], "1");
        assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
    }
}
