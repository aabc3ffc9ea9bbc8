//! Outbound HTTP calls that are not push sends: the FCM OAuth token call, webhooks, and the
//! brand's OpenID provider.
//!
//! HTTP/1.1 or HTTP/2 as the server offers (ALPN), TLS through [`crate::tls`], out through the
//! role's way ([`crate::egress`]: directly or through the brand's proxy), no redirect ever
//! followed, every call bounded by a timeout and a response size limit. Plain `http://` is only
//! allowed to loopback addresses (a local webhook receiver); everything else must be `https://`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::egress::{EgressConnector, Role};

/// Largest response body read from any outbound call.
const MAX_RESPONSE_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("response body unreadable or larger than {MAX_RESPONSE_BYTES} bytes")]
    Body,
    #[error("not called: {0}")]
    NotAllowed(String),
}

/// A response, read whole.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A small outbound client. Cheap to clone.
#[derive(Clone)]
pub struct HttpClient {
    inner: Client<hyper_rustls::HttpsConnector<EgressConnector>, Full<Bytes>>,
}

impl HttpClient {
    /// A client for `role`'s calls (it leaves the way that role's egress says).
    pub fn new(role: Role, tls: Arc<rustls::ClientConfig>) -> Self {
        Self::with_idle_connections(role, tls, usize::MAX)
    }

    /// [`HttpClient::new`], keeping at most `idle` idle connections per host.
    pub fn with_idle_connections(role: Role, tls: Arc<rustls::ClientConfig>, idle: usize) -> Self {
        let http = EgressConnector::new(role);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let inner = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(idle)
            .build(connector);
        HttpClient { inner }
    }

    /// POSTs `body` and reads the whole answer, all within `timeout`.
    pub async fn post(
        &self,
        uri: &Uri,
        headers: &[(HeaderName, HeaderValue)],
        body: Bytes,
        timeout: Duration,
    ) -> Result<HttpResponse, HttpError> {
        let mut request = Request::builder().method(Method::POST).uri(uri.clone());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        let request = request
            .body(body)
            .map_err(|e| HttpError::Connect(e.to_string()))?;
        self.send(request, timeout).await
    }

    /// Sends any request and reads the whole answer, all within `timeout`. A redirect is
    /// returned as it is, never followed.
    pub async fn send(
        &self,
        request: Request<Bytes>,
        timeout: Duration,
    ) -> Result<HttpResponse, HttpError> {
        let request = request.map(Full::new);
        let call = async {
            let response = self
                .inner
                .request(request)
                .await
                .map_err(|e| HttpError::Connect(error_chain(&e)))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|_| HttpError::Body)?
                .to_bytes();
            Ok(HttpResponse {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(timeout, call)
            .await
            .map_err(|_| HttpError::Timeout(timeout))?
    }
}

/// Checks that a configured URL is one brandgate may call: `https://`, or `http://` to a loopback
/// address.
pub fn check_url(text: &str) -> Result<Uri, UrlError> {
    let uri: Uri = text
        .parse()
        .map_err(|e: http::uri::InvalidUri| UrlError::NotAUrl {
            text: text.to_string(),
            reason: e.to_string(),
        })?;
    let host = uri
        .host()
        .ok_or_else(|| UrlError::NoHost(text.to_string()))?
        .trim_start_matches('[')
        .trim_end_matches(']');
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if is_loopback(host) => Ok(uri),
        Some("http") => Err(UrlError::PlainHttp(text.to_string())),
        _ => Err(UrlError::NotHttps(text.to_string())),
    }
}

/// Why a configured URL may not be called.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("{text:?} is not a URL: {reason}")]
    NotAUrl { text: String, reason: String },
    #[error("{0:?} has no host")]
    NoHost(String),
    #[error("{0:?}: plain http is only allowed to a loopback address; use https")]
    PlainHttp(String),
    #[error("{0:?} must be an https:// URL")]
    NotHttps(String),
}

/// Whether `host` (a name, or an address with or without brackets) is this machine.
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// An error and its causes on one line (hyper's errors hide the useful part in `source()`).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_https_unless_loopback() {
        assert!(check_url("https://hooks.example.com/dead").is_ok());
        assert!(check_url("http://127.0.0.1:9000/x").is_ok());
        assert!(check_url("http://[::1]:9000/x").is_ok());
        assert!(check_url("http://localhost/x").is_ok());
        assert!(check_url("http://hooks.example.com/x").is_err());
        assert!(check_url("ftp://x/").is_err());
        assert!(check_url("not a url").is_err());
    }
}
