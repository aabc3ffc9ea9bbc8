//! What the fake APNs and FCM servers share: a TLS listener speaking HTTP/2 (and HTTP/1.1 where
//! offered in ALPN), per-connection control (send GOAWAY, drop the connection), connection
//! counting, and scripts of answers keyed by device token.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::sync::Notify;

/// One scripted answer.
#[derive(Clone, Debug)]
pub enum Behaviour {
    /// The provider's success answer.
    Ok,
    /// An error answer: status, JSON body and optional `Retry-After` seconds.
    Status {
        status: u16,
        body: serde_json::Value,
        retry_after: Option<u64>,
    },
    /// Wait, then behave as the inner behaviour.
    Delay(Duration, Box<Behaviour>),
    /// Drop the TCP connection without answering.
    Reset,
    /// Send GOAWAY on the connection, then answer as the inner behaviour.
    GoAway(Box<Behaviour>),
}

/// Answers scripted per key (device token). Each request takes the next answer; the last one
/// repeats. Keys without a script get [`Behaviour::Ok`].
#[derive(Default)]
pub struct Script(Mutex<HashMap<String, VecDeque<Behaviour>>>);

impl Script {
    pub fn set(&self, key: &str, answers: Vec<Behaviour>) {
        self.0
            .lock()
            .unwrap()
            .insert(key.to_string(), answers.into());
    }

    pub fn next(&self, key: &str) -> Behaviour {
        let mut map = self.0.lock().unwrap();
        match map.get_mut(key) {
            Some(q) if q.len() > 1 => q.pop_front().unwrap(),
            Some(q) => q.front().cloned().unwrap_or(Behaviour::Ok),
            None => Behaviour::Ok,
        }
    }
}

/// Lets a handler act on its connection.
#[derive(Default)]
pub struct ConnControl {
    goaway: Notify,
    reset: Notify,
    /// Names from the client certificate, when one was presented.
    pub client_names: Vec<String>,
}

impl ConnControl {
    pub fn goaway(&self) {
        self.goaway.notify_one();
    }
    pub fn reset(&self) {
        self.reset.notify_one();
    }
}

pub type Handler = Arc<
    dyn Fn(
            Request<Bytes>,
            Arc<ConnControl>,
        ) -> Pin<Box<dyn Future<Output = Response<Full<Bytes>>> + Send>>
        + Send
        + Sync,
>;

/// A running fake server.
pub struct Listening {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
}

impl Listening {
    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }
    pub fn connection_count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Serves `handler` over TLS on an ephemeral loopback port until the runtime ends.
pub async fn serve(tls: Arc<rustls::ServerConfig>, handler: Handler) -> Listening {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counter = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            let tls = tls.clone();
            let handler = handler.clone();
            tokio::spawn(async move {
                let _ = tcp.set_nodelay(true);
                let Ok(stream) = tokio_rustls::TlsAcceptor::from(tls).accept(tcp).await else {
                    return;
                };
                let client_names = stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| certificate_names(c))
                    .unwrap_or_default();
                let control = Arc::new(ConnControl {
                    client_names,
                    ..Default::default()
                });
                let ctl = control.clone();
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let handler = handler.clone();
                        let ctl = ctl.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            Ok::<_, std::convert::Infallible>(
                                handler(Request::from_parts(parts, body), ctl).await,
                            )
                        }
                    });
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder
                    .http2()
                    .timer(TokioTimer::new())
                    .max_concurrent_streams(1000);
                let conn = builder.serve_connection(TokioIo::new(stream), service);
                tokio::pin!(conn);
                let mut goaway_sent = false;
                loop {
                    tokio::select! {
                        _ = conn.as_mut() => break,
                        _ = control.reset.notified() => break,
                        _ = control.goaway.notified(), if !goaway_sent => {
                            goaway_sent = true;
                            conn.as_mut().graceful_shutdown();
                        }
                    }
                }
            });
        }
    });
    Listening { addr, connections }
}

/// The subject common names and DNS alternative names of a certificate.
fn certificate_names(der: &[u8]) -> Vec<String> {
    use x509_parser::extensions::GeneralName;
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_string))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push(d.to_string());
            }
        }
    }
    names
}

/// A TLS server config for a fake: the given leaf, ALPN as listed, and client certificates
/// verified against `client_ca` when given (optional for the client).
pub fn server_tls(
    leaf: &super::pki::Leaf,
    alpn: &[&[u8]],
    client_ca: Option<&str>,
) -> Arc<rustls::ServerConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    brandgate::tls::install_crypto_provider();
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(leaf.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
    let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
    let builder = rustls::ServerConfig::builder();
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(ca.as_bytes()) {
                roots.add(c.unwrap()).unwrap();
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                .allow_unauthenticated()
                .build()
                .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(chain, key).unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A JSON answer.
pub fn json(
    status: u16,
    body: &serde_json::Value,
    retry_after: Option<u64>,
) -> Response<Full<Bytes>> {
    let mut r = Response::builder()
        .status(StatusCode::from_u16(status).unwrap())
        .header("content-type", "application/json");
    if let Some(s) = retry_after {
        r = r.header("retry-after", s.to_string());
    }
    r.body(Full::new(Bytes::from(body.to_string()))).unwrap()
}

/// Resolves delays, resets and GOAWAYs; returns the answer to give (`None`: the connection
/// was dropped and no answer goes out).
pub async fn act(mut behaviour: Behaviour, ctl: &ConnControl) -> Option<Behaviour> {
    loop {
        match behaviour {
            Behaviour::Delay(d, inner) => {
                tokio::time::sleep(d).await;
                behaviour = *inner;
            }
            Behaviour::GoAway(inner) => {
                ctl.goaway();
                behaviour = *inner;
            }
            Behaviour::Reset => {
                ctl.reset();
                std::future::pending::<()>().await;
                return None;
            }
            other => return Some(other),
        }
    }
}
