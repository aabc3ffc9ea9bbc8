//! The small HTTP pieces the identity bridge's handlers share: OAuth-style parameter parsing
//! (a parameter given twice is an error, RFC 6749 §3.1), answers that are never cached,
//! readable errors for browsers and JSON for programs, the login cookie, and redirect URLs.

use std::collections::HashMap;

use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};

use crate::http_answer::{json_error, no_store};

/// The longest parameter value accepted anywhere (states, nonces, codes, tokens).
pub const MAX_PARAM: usize = 4096;

/// The cookie that ties a login to the browser that started it. `__Host-`: only ever set
/// with `Secure`, `Path=/` and no `Domain` (RFC 6265bis §4.1.3.2).
pub const LOGIN_COOKIE: &str = "__Host-brandgate-login";

/// Parses `a=1&b=2` (query or form body). Refuses a repeated parameter and oversized values.
pub fn params(raw: &str) -> Result<HashMap<String, String>, ParamError> {
    let mut out = HashMap::new();
    for (k, v) in form_urlencoded::parse(raw.as_bytes()) {
        if v.len() > MAX_PARAM {
            return Err(ParamError::TooLong(k.into_owned()));
        }
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(ParamError::Repeated(k.into_owned()));
        }
    }
    Ok(out)
}

/// Why a query or form body is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("parameter {0} is too long")]
    TooLong(String),
    #[error("parameter {0} is given more than once")]
    Repeated(String),
}

/// An error a person in a browser may see: a minimal page when the request accepts HTML,
/// else JSON.
pub fn page_error(request: &HeaderMap, status: StatusCode, message: &str) -> Response {
    let wants_html = request
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    if !wants_html {
        return json_error(status, message);
    }
    let body = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Sign-in problem</title></head>\
         <body><h1>Sign-in problem</h1><p>{}</p></body></html>",
        escape_html(message)
    );
    let mut response = (status, body).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    response.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'"),
    );
    no_store(response)
}

fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `response` inviting HTTP Basic credentials (RFC 7235 §4.1).
pub fn basic_challenge(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"brandgate\""),
    );
    response
}

/// A `303 See Other` to `location`.
pub fn redirect(location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(v) => {
            let mut response = StatusCode::SEE_OTHER.into_response();
            response.headers_mut().insert(header::LOCATION, v);
            no_store(response)
        }
        Err(_) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the redirect could not be built",
        ),
    }
}

/// `base` with `pairs` added to its query (`?` or `&`), or as its fragment.
pub fn with_params(base: &str, pairs: &[(&str, &str)], in_fragment: bool) -> String {
    let encoded = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs.iter())
        .finish();
    let sep = if in_fragment {
        '#'
    } else if base.contains('?') {
        '&'
    } else {
        '?'
    };
    format!("{base}{sep}{encoded}")
}

pub use crate::http_auth::cookie;

/// `Set-Cookie` for the login cookie, living `max_age` seconds.
pub fn login_cookie(value: &str, max_age: u64) -> Option<HeaderValue> {
    binding_cookie(LOGIN_COOKIE, value, max_age, "Lax")
}

/// `Set-Cookie` for a cookie that binds a sign-in to the browser that started it: host-only,
/// HTTPS-only, out of scripts' reach, living `max_age` seconds. `same_site` is `Lax` where
/// the answer comes back by a top-level GET, `None` where it comes by a cross-site POST (SAML).
pub fn binding_cookie(
    name: &str,
    value: &str,
    max_age: u64,
    same_site: &str,
) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; Secure; HttpOnly; SameSite={same_site}; Max-Age={max_age}"
    ))
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_parameters_are_refused() {
        assert_eq!(params("a=1&b=x%20y").unwrap()["b"], "x y");
        assert_eq!(
            params("code=1&code=2"),
            Err(ParamError::Repeated("code".into()))
        );
        let long = format!("state={}", "x".repeat(MAX_PARAM + 1));
        assert_eq!(params(&long), Err(ParamError::TooLong("state".into())));
    }

    #[test]
    fn redirects_keep_the_callback_query() {
        assert_eq!(
            with_params("com.app://cb", &[("code", "c"), ("state", "a b")], false),
            "com.app://cb?code=c&state=a+b"
        );
        assert_eq!(
            with_params("https://x/cb?k=1", &[("code", "c")], false),
            "https://x/cb?k=1&code=c"
        );
        assert_eq!(
            with_params("https://x/cb", &[("id_token", "t")], true),
            "https://x/cb#id_token=t"
        );
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            format!("a=1; {LOGIN_COOKIE}=v2; b=3").parse().unwrap(),
        );
        assert_eq!(cookie(&h, LOGIN_COOKIE), Some("v2"));
        assert_eq!(cookie(&h, "c"), None);
    }

    #[test]
    fn error_pages_escape_what_they_show() {
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, "text/html".parse().unwrap());
        let r = page_error(&h, StatusCode::BAD_REQUEST, "<script>");
        assert_eq!(r.headers()[header::CACHE_CONTROL], "no-store");
        assert_eq!(escape_html("<a href='x'>"), "&lt;a href=&#39;x&#39;&gt;");
    }
}
