//! The public HTTPS listener: every role's routes behind one router, TLS, HTTP/1.1 and HTTP/2.
//!
//! Backpressure: at most `max_connections` connections (beyond it, new ones wait in the
//! kernel's backlog), a TLS handshake timeout, a header read timeout, a cap on concurrent
//! HTTP/2 streams per connection.
//!
//! Every request carries its [`Peer`]: the connection's peer (from a trusted proxy's PROXY
//! header when `server.proxy_protocol` is on) and the request's client address
//! ([`crate::client_address`]).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::client_address::ClientAddress;
use crate::config::Config;
use crate::identity::IdentityService;
use crate::push::PushService;
use crate::relay::RelayService;
use crate::tls::{Peer, PeerIdentity};

use super::{StartError, problem};

/// What the public listener reads for every new connection; swapped on reload.
pub(super) struct Public {
    tls: RwLock<Arc<rustls::ServerConfig>>,
    router: Router,
    http: auto::Builder<TokioExecutor>,
    handshake_timeout: Duration,
    idle_timeout: Duration,
    connections: Arc<Semaphore>,
    client_address: Arc<ClientAddress>,
    proxy_protocol: bool,
}

impl Public {
    pub(super) fn new(tls: Arc<rustls::ServerConfig>, router: Router, config: &Config) -> Public {
        Public {
            tls: RwLock::new(tls),
            router,
            http: http_builder(config),
            handshake_timeout: config.server.handshake_timeout.0,
            idle_timeout: config.server.idle_timeout.0,
            connections: Arc::new(Semaphore::new(config.server.max_connections)),
            client_address: Arc::new(ClientAddress::new(
                config.server.trusted_proxies.clone(),
                config.server.client_address_header,
            )),
            proxy_protocol: config.server.proxy_protocol,
        }
    }

    /// New connections' TLS from now on (a reload's certificate); open ones keep theirs.
    pub(super) fn replace_tls(&self, tls: Arc<rustls::ServerConfig>) {
        *self.tls.write().unwrap_or_else(|e| e.into_inner()) = tls;
    }

    fn tls(&self) -> Arc<rustls::ServerConfig> {
        self.tls.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Every role's routes on the public listener, and JSON answers for what none of them serves;
/// every answer carries the security headers.
pub(super) fn public_router(
    push: &PushService,
    identity: Option<&IdentityService>,
    relay: Option<(&RelayService, &crate::config::RelayConfig)>,
) -> Router {
    fn refusal(status: http::StatusCode, message: &str) -> axum::response::Response {
        use axum::response::IntoResponse;
        (status, axum::Json(serde_json::json!({ "error": message }))).into_response()
    }
    let mut router = push.router();
    if let Some(identity) = identity {
        router = router.merge(identity.router());
    }
    if let Some((relay, config)) = relay {
        router = router
            .merge(relay.router())
            .merge(crate::workspace::router(config));
    }
    let router = router
        .method_not_allowed_fallback(|| async {
            refusal(
                http::StatusCode::METHOD_NOT_ALLOWED,
                "this endpoint does not take that method",
            )
        })
        .fallback(|| async {
            refusal(
                http::StatusCode::NOT_FOUND,
                "no such endpoint (pushes go to POST /push/{app})",
            )
        });
    crate::security_headers::layer(router)
}

pub(super) async fn bind(addr: SocketAddr, key: &str) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr).await.map_err(|e| {
        let line = |hint: &str| format!("{key}: cannot listen on {addr}: {e}{hint}");
        match e.kind() {
            // Often passing (the old process still draining): exit 1, so systemd retries.
            std::io::ErrorKind::AddrInUse => StartError::Runtime(line(&format!(
                " (another process uses this port: stop it, or set {key} to a free port)"
            ))),
            std::io::ErrorKind::PermissionDenied => StartError::Config(problem(
                key,
                line(" (ports below 1024 need CAP_NET_BIND_SERVICE)")
                    .trim_start_matches(&format!("{key}: "))
                    .to_string(),
            )),
            _ => StartError::Config(problem(key, format!("cannot listen on {addr}: {e}"))),
        }
    })
}

pub(super) fn local_addr(l: &TcpListener) -> Result<SocketAddr, StartError> {
    l.local_addr()
        .map_err(|e| StartError::Runtime(e.to_string()))
}

fn http_builder(config: &Config) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.server.header_timeout.0)
        .max_buf_size(64 * 1024);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(config.server.max_concurrent_streams)
        .max_header_list_size(32 * 1024)
        .keep_alive_interval(Some(Duration::from_secs(60)))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

/// Accepts connections until `stop` is cancelled. Each connection runs on `tracker` until it
/// ends or, after `close` is cancelled, finishes what it has in flight.
pub(super) async fn accept_loop(
    listener: TcpListener,
    public: Arc<Public>,
    stop: CancellationToken,
    close: CancellationToken,
    tracker: TaskTracker,
) {
    let mut backoff = Duration::from_millis(10);
    loop {
        let permit = tokio::select! {
            _ = stop.cancelled() => return,
            p = public.connections.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (tcp, addr) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait and try again, never spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            },
        };
        backoff = Duration::from_millis(10);
        let _ = tcp.set_nodelay(true);
        let public = public.clone();
        let close = close.clone();
        tracker.spawn(async move {
            let _permit = permit;
            serve_connection(tcp, addr, &public, close).await;
        });
    }
}

/// When a connection last finished a request, and how many it has running.
struct Activity {
    in_flight: AtomicUsize,
    last: std::sync::Mutex<Instant>,
}

impl Activity {
    fn begin(&self) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
    }

    fn end(&self) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Instant::now();
        self.in_flight.fetch_sub(1, Ordering::AcqRel);
    }

    /// Nothing running and nothing finished for `limit`.
    fn idle_for(&self, limit: Duration) -> bool {
        self.in_flight.load(Ordering::Acquire) == 0
            && self
                .last
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .elapsed()
                >= limit
    }
}

async fn serve_connection(
    mut tcp: tokio::net::TcpStream,
    mut addr: SocketAddr,
    public: &Public,
    close: CancellationToken,
) {
    // From a trusted balancer speaking the PROXY protocol, its header names the client of
    // every request on the connection, and no forwarding header is read (the client wrote them).
    let mut proxied_client = None;
    if public.proxy_protocol && public.client_address.trusts(addr.ip()) {
        let header = crate::proxy_protocol::read(&mut tcp);
        match tokio::time::timeout(public.handshake_timeout, header).await {
            Ok(Ok(Some(source))) => {
                addr = source;
                proxied_client = Some(crate::networks::canonical(source.ip()));
            }
            // LOCAL (a health check) or an address family other than TCP over IP.
            Ok(Ok(None)) => proxied_client = Some(crate::client_address::UNKNOWN_CLIENT),
            Ok(Err(e)) => {
                tracing::warn!(%addr, error = %e, "a trusted proxy's connection was closed");
                return;
            }
            Err(_) => {
                tracing::debug!(%addr, "a trusted proxy sent no PROXY header in time");
                return;
            }
        }
    }
    let acceptor = tokio_rustls::TlsAcceptor::from(public.tls());
    let stream = match tokio::time::timeout(public.handshake_timeout, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%addr, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%addr, "TLS handshake timed out");
            return;
        }
    };
    let certificate = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(|c| PeerIdentity::from_certificate(c))
        .map(Arc::new);
    let peer = Peer {
        addr,
        client: addr.ip(),
        certificate,
    };
    let activity = Arc::new(Activity {
        in_flight: AtomicUsize::new(0),
        last: std::sync::Mutex::new(Instant::now()),
    });
    let router = public.router.clone();
    let counted = activity.clone();
    let client_address = public.client_address.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        let client =
            proxied_client.unwrap_or_else(|| client_address.of(peer.addr.ip(), request.headers()));
        request.extensions_mut().insert(Peer {
            client,
            ..peer.clone()
        });
        let mut router = router.clone();
        let activity = counted.clone();
        activity.begin();
        async move {
            let response = tower_service::Service::call(&mut router, request).await;
            activity.end();
            response
        }
    });
    let connection = public
        .http
        .serve_connection_with_upgrades(TokioIo::new(stream), service);
    tokio::pin!(connection);
    // An idle connection is closed (HTTP/2 GOAWAY, HTTP/1 close) so idle clients cannot hold
    // every connection slot; a draining daemon closes them all the same way.
    let mut tick = tokio::time::interval((public.idle_timeout / 4).max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut closing = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%addr, error = %crate::http_client::error_chain(&*e), "connection ended with an error");
                }
                return;
            }
            _ = close.cancelled(), if !closing => {
                closing = true;
                connection.as_mut().graceful_shutdown();
            }
            _ = tick.tick(), if !closing => {
                if activity.idle_for(public.idle_timeout) {
                    tracing::debug!(%addr, "closing an idle connection");
                    closing = true;
                    connection.as_mut().graceful_shutdown();
                }
            }
        }
    }
}
