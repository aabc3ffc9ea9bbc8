//! An HTTPS client for talking to brandgate as the platform (or an operator) would: trusts the
//! test CA only, HTTP/2 or HTTP/1.1 as negotiated (or HTTP/1.1 only), optional client
//! certificate.

use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderMap, Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::pki::Leaf;

#[derive(Clone)]
pub struct Client {
    inner: HyperClient<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>,
}

#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
    pub version: http::Version,
}

impl Answer {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

pub enum Protocols {
    Negotiated,
    Http1Only,
}

/// A client TLS config trusting only `ca_pem`, with a client certificate when given.
pub fn tls_config(ca_pem: &str, identity: Option<&Leaf>) -> rustls::ClientConfig {
    brandgate::tls::install_crypto_provider();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    match identity {
        None => builder.with_no_client_auth(),
        Some(leaf) => {
            let chain = CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
    }
}

impl Client {
    pub fn new(ca_pem: &str) -> Client {
        Self::build(tls_config(ca_pem, None), Protocols::Negotiated)
    }

    pub fn with_identity(ca_pem: &str, identity: &Leaf) -> Client {
        Self::build(tls_config(ca_pem, Some(identity)), Protocols::Negotiated)
    }

    pub fn http1(ca_pem: &str) -> Client {
        Self::build(tls_config(ca_pem, None), Protocols::Http1Only)
    }

    /// Connections from `local` (a loopback address such as 127.0.0.2), as another host's.
    pub fn from_address(ca_pem: &str, local: std::net::IpAddr) -> Client {
        Self::build_from(tls_config(ca_pem, None), Protocols::Negotiated, Some(local))
    }

    pub fn build(tls: rustls::ClientConfig, protocols: Protocols) -> Client {
        Self::build_from(tls, protocols, None)
    }

    fn build_from(
        tls: rustls::ClientConfig,
        protocols: Protocols,
        local: Option<std::net::IpAddr>,
    ) -> Client {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_local_address(local);
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http();
        let connector = match protocols {
            Protocols::Negotiated => builder.enable_http1().enable_http2().wrap_connector(http),
            Protocols::Http1Only => builder.enable_http1().wrap_connector(http),
        };
        Client {
            inner: HyperClient::builder(TokioExecutor::new()).build(connector),
        }
    }

    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Answer {
        self.try_send(method, url, headers, body)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    pub async fn try_send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Answer, String> {
        let mut req = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req.body(Full::new(body)).unwrap();
        let resp = self
            .inner
            .request(req)
            .await
            .map_err(|e| brandgate::http_client::error_chain(&e))?;
        let version = resp.version();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok(Answer {
            status: parts.status.as_u16(),
            headers: parts.headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            version,
        })
    }

    pub async fn post_json(
        &self,
        url: &str,
        headers: &[(&str, &str)],
        body: &serde_json::Value,
    ) -> Answer {
        let mut all = vec![("content-type", "application/json")];
        all.extend_from_slice(headers);
        self.send(Method::POST, url, &all, Bytes::from(body.to_string()))
            .await
    }

    pub async fn get_with_headers(&self, url: &str, headers: &[(&str, &str)]) -> Answer {
        self.send(Method::GET, url, headers, Bytes::new()).await
    }

    pub async fn get(&self, url: &str) -> Answer {
        self.send(Method::GET, url, &[], Bytes::new()).await
    }
}

/// `Authorization: Basic` for a user and password.
pub fn basic(user: &str, password: &str) -> String {
    use base64::Engine;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

pub type Shared = Arc<Client>;
