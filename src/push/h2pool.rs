//! A fixed set of long-lived HTTP/2 connections to one provider origin, for one credential.
//!
//! APNs and FCM want few, long-lived HTTP/2 connections with many concurrent streams. The pool
//! keeps `N` of them, spreads requests round-robin, opens a slot's connection on first use, and
//! replaces it when it closes (GOAWAY, reset, idle timeout). Each slot connects at most once at a
//! time; concurrent requests for a connecting slot wait for that one attempt. The peer's
//! `SETTINGS_MAX_CONCURRENT_STREAMS` is honoured by hyper, which queues requests beyond it.
//!
//! Only `h2` is offered in ALPN: a server that does not speak HTTP/2 is refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use super::metrics::PoolMetrics;
use super::outcome::Attempt;

/// Largest provider answer body read (APNs and FCM error bodies are a few hundred bytes).
const MAX_ANSWER_BYTES: usize = 64 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum PoolError {
    #[error("cannot connect to {origin}: {reason}")]
    Connect { origin: String, reason: String },
    #[error("connection to {origin} lost: {reason}")]
    Lost { origin: String, reason: String },
}

/// A provider's answer, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// `Retry-After`, in seconds or as a date read against `now` (at most an hour: beyond any
    /// push's deadline anyway).
    pub fn retry_after(&self, now: std::time::SystemTime) -> Option<Duration> {
        crate::backoff::retry_after(&self.headers, now, Duration::from_secs(3600))
    }
}

/// A connection in a slot, numbered so a failure is only ever blamed on the connection it
/// happened on.
#[derive(Clone)]
struct Live {
    id: u64,
    sender: SendRequest<Full<Bytes>>,
}

struct Slot {
    live: std::sync::Mutex<Option<Live>>,
    connecting: tokio::sync::Mutex<()>,
}

/// The pool. Dropping it closes its connections once in-flight requests finish.
pub struct H2Pool {
    host: String,
    port: u16,
    origin: String,
    server_name: ServerName<'static>,
    connector: TlsConnector,
    slots: Box<[Slot]>,
    next: AtomicUsize,
    connection_ids: std::sync::atomic::AtomicU64,
    metrics: PoolMetrics,
}

/// Why a provider's base URL cannot have a pool.
#[derive(Debug, thiserror::Error)]
pub enum PoolBaseError {
    #[error("{0} must be an https:// URL")]
    NotHttps(String),
    #[error("{0} has no host")]
    NoHost(String),
    #[error("{0:?} is not a valid server name")]
    ServerName(String),
}

impl H2Pool {
    /// `base` is `https://host[:port]`; `tls` must offer `h2` in ALPN.
    pub fn new(
        base: &Uri,
        tls: Arc<rustls::ClientConfig>,
        connections: usize,
        metrics: PoolMetrics,
    ) -> Result<H2Pool, PoolBaseError> {
        if base.scheme_str() != Some("https") {
            return Err(PoolBaseError::NotHttps(base.to_string()));
        }
        let host = base
            .host()
            .ok_or_else(|| PoolBaseError::NoHost(base.to_string()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = base.port_u16().unwrap_or(443);
        let server_name = ServerName::try_from(host.clone())
            .map_err(|_| PoolBaseError::ServerName(host.clone()))?;
        let slots = (0..connections.max(1))
            .map(|_| Slot {
                live: std::sync::Mutex::new(None),
                connecting: tokio::sync::Mutex::new(()),
            })
            .collect();
        Ok(H2Pool {
            origin: format!("{host}:{port}"),
            host,
            port,
            server_name,
            connector: TlsConnector::from(tls),
            slots,
            next: AtomicUsize::new(0),
            connection_ids: std::sync::atomic::AtomicU64::new(0),
            metrics,
        })
    }

    /// Sends a request built by a provider client; a request that could not be built or a
    /// connection that failed becomes the [`Attempt`] to report.
    pub async fn call(
        &self,
        provider: &'static str,
        request: Result<Request<Full<Bytes>>, http::Error>,
    ) -> Result<Answer, Attempt> {
        let Ok(request) = request else {
            return Err(Attempt::Permanent {
                status: None,
                reason: "BadRequestHeaders".into(),
            });
        };
        self.send(request).await.map_err(|e| {
            tracing::warn!(provider, error = %e, "provider call failed");
            Attempt::transient("connection")
        })
    }

    /// Sends one request on the next connection and reads the whole answer.
    pub async fn send(&self, request: Request<Full<Bytes>>) -> Result<Answer, PoolError> {
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.slots.len();
        let Live { id, mut sender } = self.live(index).await?;
        let response: Response<hyper::body::Incoming> =
            sender.send_request(request).await.map_err(|e| {
                self.forget(index, id);
                PoolError::Lost {
                    origin: self.origin.clone(),
                    reason: crate::http_client::error_chain(&e),
                }
            })?;
        let (parts, body) = response.into_parts();
        let body = Limited::new(body, MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| PoolError::Lost {
                origin: self.origin.clone(),
                reason: format!("reading the answer: {e}"),
            })?
            .to_bytes();
        Ok(Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// The slot's connection, opening it if it is missing or closed.
    async fn live(&self, index: usize) -> Result<Live, PoolError> {
        let slot = &self.slots[index];
        if let Some(l) = usable(slot) {
            return Ok(l);
        }
        let _one_connect = slot.connecting.lock().await;
        if let Some(l) = usable(slot) {
            return Ok(l);
        }
        // Rare: boxed, so every request's future does not carry the size of a TLS handshake.
        let sender = Box::pin(self.connect()).await.inspect_err(|_| {
            self.metrics.connect_failures.inc();
        })?;
        self.metrics.connects.inc();
        let live = Live {
            id: self.connection_ids.fetch_add(1, Ordering::Relaxed),
            sender,
        };
        *lock(&slot.live) = Some(live.clone());
        Ok(live)
    }

    /// Drops connection `id` from its slot after a request failed on it, so the next request
    /// opens a new one; a connection that already replaced it is left alone.
    fn forget(&self, index: usize, id: u64) {
        let mut guard = lock(&self.slots[index].live);
        if guard.as_ref().is_some_and(|l| l.id == id) {
            *guard = None;
        }
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, PoolError> {
        let fail = |reason: String| PoolError::Connect {
            origin: self.origin.clone(),
            reason,
        };
        let attempt = async {
            let tcp = crate::egress::connect(crate::egress::Role::Push, &self.host, self.port)
                .await
                .map_err(|e| fail(crate::http_client::error_chain(e.as_ref())))?;
            let tls = self
                .connector
                .connect(self.server_name.clone(), tcp)
                .await
                .map_err(|e| fail(format!("TLS: {e}")))?;
            if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
                return Err(fail("the server does not speak HTTP/2".into()));
            }
            let (sender, connection) =
                hyper::client::conn::http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .keep_alive_interval(Duration::from_secs(60))
                    .keep_alive_timeout(Duration::from_secs(20))
                    .keep_alive_while_idle(true)
                    .handshake(TokioIo::new(tls))
                    .await
                    .map_err(|e| fail(crate::http_client::error_chain(&e)))?;
            Ok((sender, connection))
        };
        let (sender, connection) = tokio::time::timeout(CONNECT_TIMEOUT, attempt)
            .await
            .map_err(|_| fail(format!("no connection within {CONNECT_TIMEOUT:?}")))??;
        let open = self.metrics.open.clone();
        let origin = self.origin.clone();
        open.inc();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(%origin, error = %crate::http_client::error_chain(&e), "provider connection closed");
            }
            open.dec();
        });
        Ok(sender)
    }
}

fn usable(slot: &Slot) -> Option<Live> {
    let guard = lock(&slot.live);
    guard.as_ref().filter(|l| !l.sender.is_closed()).cloned()
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the Option inconsistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
