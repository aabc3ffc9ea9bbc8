//! Wires the roles to the listeners and runs the daemon's lifecycle.
//!
//! - Start: load and check the config, build every role (reading every credential), bind the
//!   public HTTPS listener and the ops listener, then tell systemd READY=1.
//! - SIGHUP: build a whole new configuration beside the running one; if anything is wrong it is
//!   refused, logged, and the running one stays. Connections and in-flight pushes are untouched:
//!   new TLS handshakes use the new certificate, new requests the new apps.
//! - SIGTERM/SIGINT: stop accepting, tell open connections to finish (HTTP/2 GOAWAY, HTTP/1
//!   close after the current response), wait for in-flight requests and for pushes whose caller
//!   already hung up, up to the grace period, exit 0.
//!
//! Backpressure on the public listener: at most `max_connections` connections (beyond it, new
//! ones wait in the kernel's backlog), a TLS handshake timeout, a header read timeout, a cap on
//! concurrent HTTP/2 streams per connection.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, IdentityConfig, Problems, RelayConfig};
use crate::identity::{IdentityMetrics, IdentityService, KeyRing};
use crate::ops::{self, Health, OpsState, systemd};
use crate::push::{self, Delivery, Provider, PushService};
use crate::relay::{Accounts, RelayBase, RelayService};
use crate::secret::Secret;
use crate::store::seal::DataKeys;
use crate::store::{Store, StoreOptions};
use crate::tls::{self, Peer, PeerIdentity};

/// Exit status for a configuration that cannot be used (sysexits' EX_CONFIG). The unit file
/// lists it in `RestartPreventExitStatus=`, so systemd does not restart-loop on a bad config.
pub const EXIT_CONFIG: u8 = 78;

/// Why the daemon or a command could not run.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(Problems),
    #[error("{0}")]
    Runtime(String),
}

impl From<Problems> for StartError {
    fn from(p: Problems) -> Self {
        StartError::Config(p)
    }
}

fn problem(key: &str, message: impl Into<String>) -> Problems {
    Problems(vec![crate::config::Problem::new(key, message)])
}

/// The state directory exists (created 0750 if missing) and is a directory.
fn ensure_state_dir(dir: &Path) -> Result<(), Problems> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)
        .map_err(|e| {
            problem(
                "server.state_dir",
                format!(
                    "cannot create {}: {e} (under systemd, StateDirectory= makes it)",
                    dir.display()
                ),
            )
        })
}

/// `brandgate check-config`: everything start-up checks, without binding or writing anything.
/// Returns warnings and a summary on success.
pub async fn check_config(path: &Path) -> Result<(Vec<String>, String), Problems> {
    tls::install_crypto_provider();
    // Keys that are unknown or malformed are named and left out; the rest is checked too, so
    // one run shows every problem (a typo and a missing key file together).
    let (config, mut problems) = Config::load_lenient(path);
    let Some(config) = config else {
        return Err(problems);
    };
    let mut notes = config.warnings();
    match tls::check_server_config(&config.server.tls) {
        Ok(None) => notes.push(format!(
            "server.tls: no certificate configured; a self-signed development certificate will be \
             generated in {}/dev-tls (not for production)",
            config.server.state_dir.display()
        )),
        Ok(Some(())) => {}
        Err(e) => problems.push(e.key, e.message),
    }
    if let Some(identity) = &config.identity {
        match IdentityService::prepare(
            identity,
            config.server.tls.client_ca.is_some(),
            crate::clock::system(),
        ) {
            Ok(prepared) => notes.push(prepared.claims_note()),
            Err(p) => problems.0.extend(p.0),
        }
        match &config.store.data_keys_file {
            Some(file) => {
                if let Err(e) = DataKeys::load(file, config.store.active_data_key.as_deref()) {
                    problems.push("store.data_keys_file", e);
                }
            }
            None => notes.push(format!(
                "store.data_keys_file: not configured; a development data key will be generated in {}",
                config.server.state_dir.display()
            )),
        }
        if let Some(url) = &config.store.url
            && !(url.starts_with("sqlite:")
                || url.starts_with("postgres://")
                || url.starts_with("postgresql://"))
        {
            problems.push("store.url", "must be a sqlite: or postgres:// URL");
        }
        if let Some(f) = &config.store.password_file
            && let Err(e) = crate::secret::read_secret_file(f)
        {
            problems.push("store.password_file", e.to_string());
        }
    }
    if let Some(relay) = &config.relay
        && let Err(p) = RelayService::prepare(relay)
    {
        problems.0.extend(p.0);
    }
    if config.server.state_dir.exists() && !config.server.state_dir.is_dir() {
        problems.push(
            "server.state_dir",
            format!("{} is not a directory", config.server.state_dir.display()),
        );
    }
    let push = PushService::build(
        &config.push,
        None,
        config.server.tls.client_ca.is_some(),
        push::PushMetrics::register(&mut Registry::default()),
        crate::clock::system(),
    );
    let apps = match push {
        Ok(service) => service.app_count(),
        Err(p) => {
            problems.0.extend(p.0);
            0
        }
    };
    problems.into_result((
        notes,
        format!(
            "configuration OK: {apps} push app(s), identity bridge {}; public listener {}, ops listener {}",
            config
                .identity
                .as_ref()
                .map_or("off".to_string(), |i| format!("on (issuer {})", i.issuer)),
            config.server.listen,
            config.ops.listen
        ),
    ))
}

/// `brandgate push-test`: one push through the same pipeline the proxy uses.
pub async fn push_test(
    path: &Path,
    app: &str,
    token: &str,
    text: Option<String>,
    provider: Option<Provider>,
) -> Result<Delivery, StartError> {
    tls::install_crypto_provider();
    let config = Config::load(path)?;
    let Some(app_cfg) = config.push.apps.iter().find(|a| a.id == app) else {
        return Err(problem("--app", format!("no app {app:?} in push.apps")).into());
    };
    let provider = match (provider, app_cfg.apns.is_some(), app_cfg.fcm.is_some()) {
        (Some(p), _, _) => p,
        (None, true, false) => Provider::Apns,
        (None, false, true) => Provider::Fcm,
        (None, _, _) => {
            return Err(problem(
                "--provider",
                "this app has both APNs and FCM: say which (apns or fcm)",
            )
            .into());
        }
    };
    let service = PushService::build(
        &config.push,
        None,
        config.server.tls.client_ca.is_some(),
        push::PushMetrics::register(&mut Registry::default()),
        crate::clock::system(),
    )?;
    let request = push::PushRequest::text(provider, push::DeviceToken::new(token), text);
    service
        .send(app, request)
        .await
        .map_err(|e| StartError::Runtime(e.to_string()))
}

/// What the public listener reads for every new connection; swapped on reload.
struct Public {
    tls: RwLock<Arc<rustls::ServerConfig>>,
    router: Router,
    http: auto::Builder<TokioExecutor>,
    handshake_timeout: Duration,
    idle_timeout: Duration,
    connections: Arc<Semaphore>,
}

impl Public {
    fn tls(&self) -> Arc<rustls::ServerConfig> {
        self.tls.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Every role's routes on the public listener, and JSON answers for what none of them serves;
/// every answer carries the security headers.
fn public_router(
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

/// The store and the data keys that seal what it holds. Without a data-key file, a
/// development key is made in the state directory (and the log says so).
async fn open_store(
    config: &Config,
    state_dir: &Path,
) -> Result<(Store, Arc<DataKeys>), StartError> {
    let data_keys = match &config.store.data_keys_file {
        Some(file) => DataKeys::load(file, config.store.active_data_key.as_deref())
            .map_err(|e| problem("store.data_keys_file", e))?,
        None => {
            let path = state_dir.join("data-keys");
            if !path.exists() {
                let line = DataKeys::generate_line("dev1").map_err(StartError::Runtime)?;
                tls::write_private_file(&path, line.as_bytes()).map_err(StartError::Runtime)?;
                tracing::warn!(file = %path.display(), "no store.data_keys_file configured: generated a development data key; \
                    what it seals is only as safe as this file: configure store.data_keys_file (LoadCredential=) before production");
            }
            DataKeys::load(&path, config.store.active_data_key.as_deref())
                .map_err(|e| problem("store.data_keys_file", e))?
        }
    };
    let password = match &config.store.password_file {
        Some(f) => Some(
            crate::secret::read_secret_file(f)
                .map_err(|e| problem("store.password_file", e.to_string()))?,
        ),
        None => None,
    };
    let password = match &password {
        Some(p) => Some(
            std::str::from_utf8(p.expose())
                .map_err(|_| problem("store.password_file", "the password is not UTF-8"))?,
        ),
        None => None,
    };
    let url = config
        .store
        .url
        .clone()
        .unwrap_or_else(|| Store::default_url(state_dir));
    let store = Store::open(StoreOptions {
        url: &url,
        password,
        max_connections: config.store.max_connections,
    })
    .await
    .map_err(|e| StartError::Runtime(format!("store ({}): {e}", crate::store::redact_url(&url))))?;
    Ok((store, Arc::new(data_keys)))
}

/// `brandgate keys list|rotate`: the signing key ring, straight from the store.
pub async fn key_ring(path: &Path) -> Result<(KeyRing, Store), StartError> {
    tls::install_crypto_provider();
    let config = Config::load(path)?;
    let Some(identity) = &config.identity else {
        return Err(problem(
            "identity",
            "the identity bridge is not configured ([identity] section)",
        )
        .into());
    };
    let (store, data_keys) = open_store(&config, &config.server.state_dir).await?;
    let ring = KeyRing::new(
        store.clone(),
        data_keys,
        crate::identity::ring_settings(identity),
        crate::clock::system(),
    );
    Ok((ring, store))
}

/// `brandgate store reseal`: everything sealed under an older data key (signing keys, relay
/// events, agents' password hashes, device tokens, pending logins), sealed again under the
/// active one. Returns what it re-sealed, by kind.
pub async fn reseal(path: &Path) -> Result<Vec<(&'static str, usize)>, StartError> {
    use crate::store::sealed::SealedColumn;
    tls::install_crypto_provider();
    let config = Config::load(path)?;
    let (store, data_keys) = open_store(&config, &config.server.state_dir).await?;
    let runtime = |e: String| StartError::Runtime(e);
    let mut done = Vec::new();
    if let Some(identity) = &config.identity {
        let ring = KeyRing::new(
            store.clone(),
            data_keys.clone(),
            crate::identity::ring_settings(identity),
            crate::clock::system(),
        );
        let n = ring.reseal().await.map_err(|e| runtime(e.to_string()))?;
        done.push(("signing keys", n));
    }
    for column in SealedColumn::ALL {
        let mut count = 0;
        let mut position = String::new();
        loop {
            let page = store
                .list_sealed(column, &position, 500)
                .await
                .map_err(|e| runtime(e.to_string()))?;
            let Some(last) = page.last() else { break };
            position = last.position.clone();
            for row in page.iter().filter(|r| data_keys.is_stale(&r.sealed)) {
                let context = crate::relay::seal_context(column, &row.fields)
                    .or_else(|| crate::identity::seal_context(column, &row.fields))
                    .ok_or_else(|| runtime(format!("no owner for {}", column.name())))?;
                let plain = data_keys.open(&context, &row.sealed).map_err(|e| {
                    runtime(format!(
                        "{} do not open with the data keys: {e}",
                        column.name()
                    ))
                })?;
                let sealed = data_keys
                    .seal(&context, plain.expose())
                    .map_err(|e| runtime(e.to_string()))?;
                if store
                    .replace_sealed(column, &row.fields, &row.sealed, &sealed)
                    .await
                    .map_err(|e| runtime(e.to_string()))?
                {
                    count += 1;
                }
            }
        }
        done.push((column.name(), count));
    }
    store.close().await;
    Ok(done)
}

/// `brandgate agents ...`: the relay's agent accounts, straight from the store. `account` must
/// be the one the relay serves (agents of another account could never log in here).
pub async fn agent_accounts(path: &Path, account: &str) -> Result<(Accounts, Store), StartError> {
    tls::install_crypto_provider();
    let config = Config::load(path)?;
    let Some(relay) = &config.relay else {
        return Err(problem("relay", "the relay is not configured ([relay] section)").into());
    };
    if relay.account != account {
        return Err(StartError::Runtime(format!(
            "this relay serves account {:?}, not {account:?}",
            relay.account
        )));
    }
    let (store, data_keys) = open_store(&config, &config.server.state_dir).await?;
    let accounts = RelayService::accounts(relay, store.clone(), data_keys, crate::clock::system());
    Ok((accounts, store))
}

/// A password for `brandgate agents add|reset-password`: the content of `file` (one trailing
/// newline dropped), or else the first line of standard input. A terminal is refused rather
/// than echoing the password on the screen.
pub fn read_password(file: Option<&Path>) -> Result<Secret<String>, StartError> {
    use std::io::{BufRead, IsTerminal};
    let bytes = match file {
        Some(f) => crate::secret::read_secret_file(f)
            .map_err(|e| StartError::Runtime(e.to_string()))?
            .expose()
            .clone(),
        None => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                return Err(StartError::Runtime(
                    "give the password with --password-file <path>, or on standard input (a pipe); \
                     it is not read from a terminal, where it would show"
                        .into(),
                ));
            }
            let mut line = String::new();
            stdin
                .lock()
                .read_line(&mut line)
                .map_err(|e| StartError::Runtime(format!("cannot read standard input: {e}")))?;
            let line = line.strip_suffix('\n').unwrap_or(&line);
            let line = line.strip_suffix('\r').unwrap_or(line);
            line.as_bytes().to_vec()
        }
    };
    let password = String::from_utf8(bytes)
        .map_err(|_| StartError::Runtime("the password is not UTF-8 text".into()))?;
    if password.is_empty() {
        return Err(StartError::Runtime("the password is empty".into()));
    }
    Ok(Secret::new(password))
}

/// `brandgate serve`: runs until SIGTERM/SIGINT.
pub async fn serve(path: &Path) -> Result<(), StartError> {
    tls::install_crypto_provider();
    let mut config = Config::load(path)?;
    ops::log::init(&config.log);
    // Before READY=1: a `systemctl reload` right after start must find SIGHUP handled, not
    // fall to its default action (terminate).
    let mut signals = Signals::listen()?;
    let state_dir = config.server.state_dir.clone();
    ensure_state_dir(&state_dir)?;

    let server_tls = tls::server_config(&config.server.tls, &state_dir).map_err(Problems::from)?;
    announce_development_certificate(server_tls.development_certificate.as_ref());

    let mut registry = Registry::default();
    let push_metrics = push::PushMetrics::register(&mut registry);
    let push = PushService::build(
        &config.push,
        Some(&state_dir),
        config.server.tls.client_ca.is_some(),
        push_metrics,
        crate::clock::system(),
    )?;
    for w in config.warnings() {
        tracing::warn!("{w}");
    }

    let (identity, relay) = match &config.identity {
        Some(id_config) => {
            let prepared = IdentityService::prepare(
                id_config,
                config.server.tls.client_ca.is_some(),
                crate::clock::system(),
            )?;
            let relay_prepared = config
                .relay
                .as_ref()
                .map(RelayService::prepare)
                .transpose()?;
            let (store, data_keys) = open_store(&config, &state_dir).await?;
            let service = IdentityService::start(
                id_config,
                prepared,
                store.clone(),
                data_keys.clone(),
                crate::clock::system(),
                IdentityMetrics::register(&mut registry),
            )
            .await
            .map_err(|e| StartError::Runtime(format!("identity: {e}")))?;
            let relay =
                config
                    .relay
                    .as_ref()
                    .zip(relay_prepared)
                    .map(|(relay_config, prepared)| {
                        RelayService::new(
                            relay_config,
                            prepared,
                            RelayBase {
                                identity: service.clone(),
                                store,
                                data_keys,
                                push: push.clone(),
                                clock: crate::clock::system(),
                            },
                            &mut registry,
                        )
                    });
            (Some(service), relay)
        }
        None => (None, None),
    };

    let public_listener = bind(config.server.listen, "server.listen").await?;
    let ops_listener = bind(config.ops.listen, "ops.listen").await?;
    let public_addr = local_addr(&public_listener)?;
    let ops_addr = local_addr(&ops_listener)?;

    let health = Arc::new(Health::default());
    health.add_check(Arc::new(push.clone()));
    if let Some(identity) = &identity {
        health.add_check(Arc::new(identity.clone()));
    }
    let public = Arc::new(Public {
        tls: RwLock::new(server_tls.config),
        router: public_router(
            &push,
            identity.as_ref(),
            relay.as_ref().zip(config.relay.as_ref()),
        ),
        http: http_builder(&config),
        handshake_timeout: config.server.handshake_timeout.0,
        idle_timeout: config.server.idle_timeout.0,
        connections: Arc::new(Semaphore::new(config.server.max_connections)),
    });

    // Three stages of stopping: accepting ends, open connections are told to finish, and the
    // ops listener (where /readyz says "draining") closes last.
    let stop_accepting = CancellationToken::new();
    let close_connections = CancellationToken::new();
    let close_ops = CancellationToken::new();
    let connections = TaskTracker::new();
    let accept = tokio::spawn(accept_loop(
        public_listener,
        public.clone(),
        stop_accepting.clone(),
        close_connections.clone(),
        connections.clone(),
    ));
    let ops_router = ops::router(OpsState {
        registry: Arc::new(registry),
        health: health.clone(),
    });
    let ops_task = tokio::spawn({
        let close_ops = close_ops.clone();
        async move {
            let server = axum::serve(ops_listener, ops_router)
                .with_graceful_shutdown(close_ops.cancelled_owned());
            if let Err(e) = server.await {
                tracing::error!(error = %e, "ops listener failed");
            }
        }
    });

    health.set_listening();
    let status = format!("listening on https://{public_addr} (ops http://{ops_addr})");
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        apps = push.app_count(),
        "brandgate ready: {status}"
    );
    systemd::ready(&status);
    systemd::spawn_watchdog(close_ops.clone());
    if let Some(identity) = &identity {
        identity.spawn_maintenance(close_ops.clone());
    }

    signals
        .until_stop(
            path,
            &mut config,
            &state_dir,
            &public,
            Roles {
                push: &push,
                identity: identity.as_ref(),
                relay: relay.as_ref(),
            },
            &status,
        )
        .await;

    // Draining.
    health.set_draining();
    systemd::stopping();
    tracing::info!(grace = ?config.server.shutdown_grace.0, "shutting down: draining in-flight requests");
    stop_accepting.cancel();
    let _ = accept.await;
    close_connections.cancel();
    if let Some(relay) = &relay {
        relay.shutdown();
    }
    connections.close();
    let grace = config.server.shutdown_grace.0;
    // Pushes run detached from their connection (a caller that hung up does not cancel its
    // push), so they are waited for on their own, within the same grace period.
    let drained = async { tokio::join!(connections.wait(), push.drain()) };
    match tokio::time::timeout(grace, drained).await {
        Ok(_) => tracing::info!("all connections closed and every push finished"),
        Err(_) => tracing::warn!(
            ?grace,
            open = connections.len(),
            pushes = push.pending_deliveries(),
            "grace period over; closing the remaining connections and abandoning unfinished pushes"
        ),
    }
    if let Some(relay) = &relay {
        // Sessions got their close frames at the start of the drain; they end quickly.
        let _ = tokio::time::timeout(grace, relay.drained()).await;
    }
    close_ops.cancel();
    let _ = ops_task.await;
    if let Some(identity) = &identity {
        identity.close().await;
    }
    Ok(())
}

fn announce_development_certificate(dev: Option<&tls::DevCertificate>) {
    if let Some(dev) = dev {
        let how = if dev.generated { "generated" } else { "using" };
        tracing::warn!(
            cert = %dev.cert.display(),
            "no server.tls.cert configured: {how} a self-signed development certificate; \
             configure server.tls.cert and server.tls.key before production"
        );
    }
}

async fn bind(addr: SocketAddr, key: &str) -> Result<TcpListener, StartError> {
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

fn local_addr(l: &TcpListener) -> Result<SocketAddr, StartError> {
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

/// The signals the daemon acts on: SIGHUP reloads, SIGTERM and SIGINT stop.
struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn listen() -> Result<Signals, StartError> {
        use tokio::signal::unix::{SignalKind, signal};
        let listen = |kind: SignalKind| {
            signal(kind).map_err(|e| StartError::Runtime(format!("cannot listen for signals: {e}")))
        };
        Ok(Signals {
            hup: listen(SignalKind::hangup())?,
            term: listen(SignalKind::terminate())?,
            int: listen(SignalKind::interrupt())?,
        })
    }

    /// Reloads on every SIGHUP until SIGTERM or SIGINT arrives.
    async fn until_stop(
        &mut self,
        path: &Path,
        config: &mut Config,
        state_dir: &Path,
        public: &Public,
        roles: Roles<'_>,
        status: &str,
    ) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => {
                    systemd::reloading();
                    match reload(path, config, state_dir, public, roles) {
                        Ok(()) => tracing::info!(apps = roles.push.app_count(), "configuration reloaded"),
                        Err(problems) => {
                            for p in &problems.0 {
                                tracing::error!(problem = %p, "reload refused; the running configuration stays");
                            }
                        }
                    }
                    systemd::ready(status);
                }
            }
        }
    }
}

/// The roles a reload reaches.
#[derive(Clone, Copy)]
struct Roles<'a> {
    push: &'a PushService,
    identity: Option<&'a IdentityService>,
    relay: Option<&'a RelayService>,
}

/// Builds everything from the file again and swaps it in, or changes nothing.
fn reload(
    path: &Path,
    config: &mut Config,
    state_dir: &Path,
    public: &Public,
    roles: Roles<'_>,
) -> Result<(), Problems> {
    let Roles {
        push,
        identity,
        relay,
    } = roles;
    let new = Config::load(path)?;
    let server_tls = tls::server_config(&new.server.tls, state_dir)?;
    // Everything is read and checked before anything is swapped: a reload happens whole or not
    // at all.
    let identity_update = match (identity, &new.identity) {
        (Some(service), Some(cfg)) => Some((
            service,
            IdentityService::prepare(
                cfg,
                new.server.tls.client_ca.is_some(),
                crate::clock::system(),
            )?,
        )),
        _ => None,
    };
    let relay_update = match (relay, &new.relay) {
        (Some(service), Some(cfg)) => Some((service, RelayService::prepare(cfg)?)),
        _ => None,
    };
    push.reload(&new.push, new.server.tls.client_ca.is_some())?;
    if let Some((service, prepared)) = identity_update {
        service.apply(prepared);
    }
    if let Some((service, prepared)) = relay_update {
        service.apply(prepared);
    }
    for w in new.warnings() {
        tracing::warn!("{w}");
    }
    announce_development_certificate(server_tls.development_certificate.as_ref());
    *public.tls.write().unwrap_or_else(|e| e.into_inner()) = server_tls.config;
    for (key, changed) in restart_only_changes(config, &new) {
        if changed {
            tracing::warn!(key, "this setting changes only after a restart");
        }
    }
    *config = new;
    Ok(())
}

/// Settings bound at start-up (listeners, limits baked into the listener, logging).
fn restart_only_changes<'a>(old: &'a Config, new: &'a Config) -> [(&'static str, bool); 12] {
    let (o, n) = (&old.server, &new.server);
    [
        ("server.listen", o.listen != n.listen),
        ("server.state_dir", o.state_dir != n.state_dir),
        (
            "server.max_connections",
            o.max_connections != n.max_connections,
        ),
        (
            "server.handshake_timeout",
            o.handshake_timeout != n.handshake_timeout,
        ),
        (
            "server.header_timeout",
            o.header_timeout != n.header_timeout,
        ),
        ("server.idle_timeout", o.idle_timeout != n.idle_timeout),
        (
            "server.max_concurrent_streams",
            o.max_concurrent_streams != n.max_concurrent_streams,
        ),
        ("ops.listen", old.ops.listen != new.ops.listen),
        // Compared by their Debug form: it names files and settings, never a secret.
        (
            "store",
            format!("{:?}", old.store) != format!("{:?}", new.store),
        ),
        (
            "identity (issuer, audience, lifetimes, algorithm, keys, anonymous, callback path)",
            old.identity.as_ref().map(IdentityConfig::bound_at_start)
                != new.identity.as_ref().map(IdentityConfig::bound_at_start),
        ),
        (
            "relay (all but webhooks' url, secret, events, include_text, trust anchors, timeout, attempts)",
            old.relay.as_ref().map(RelayConfig::bound_at_start)
                != new.relay.as_ref().map(RelayConfig::bound_at_start),
        ),
        (
            "log",
            old.log.level != new.log.level || old.log.format != new.log.format,
        ),
    ]
}

/// Accepts connections until `stop` is cancelled. Each connection runs on `tracker` until it
/// ends or, after `close` is cancelled, finishes what it has in flight.
async fn accept_loop(
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
    tcp: tokio::net::TcpStream,
    addr: SocketAddr,
    public: &Public,
    close: CancellationToken,
) {
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
    let peer = Peer { addr, certificate };
    let activity = Arc::new(Activity {
        in_flight: AtomicUsize::new(0),
        last: std::sync::Mutex::new(Instant::now()),
    });
    let router = public.router.clone();
    let counted = activity.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(peer.clone());
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
