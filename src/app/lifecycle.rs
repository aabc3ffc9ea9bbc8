//! The daemon's lifecycle.
//!
//! - Start: load and check the config, build every role (reading every credential), bind the
//!   public HTTPS listener and the ops listener, then tell systemd READY=1.
//! - SIGHUP: build a whole new configuration beside the running one; if anything is wrong it is
//!   refused, logged, and the running one stays. Connections and in-flight pushes are untouched:
//!   new TLS handshakes use the new certificate, new requests the new apps.
//! - SIGTERM/SIGINT: stop accepting, tell open connections to finish (HTTP/2 GOAWAY, HTTP/1
//!   close after the current response), wait for in-flight requests and for pushes whose caller
//!   already hung up, up to the grace period, exit 0.

use std::path::Path;
use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, IdentityConfig, Problems, RelayConfig};
use crate::dispatch::{Dispatcher, Doorbell};
use crate::identity::{IdentityMetrics, IdentityService};
use crate::ops::{self, Health, OpsState, systemd};
use crate::push::{self, PushService};
use crate::relay::{RelayBase, RelayService};
use crate::tls;

use super::prepare::prepare;
use super::server::{Public, accept_loop, bind, local_addr, public_router};
use super::{StartError, ensure_state_dir, open_store};

/// `brandgate serve`: runs until SIGTERM/SIGINT.
pub async fn serve(path: &Path) -> Result<(), StartError> {
    tls::install_crypto_provider();
    let mut config = Config::load(path)?;
    ops::log::init(&config.log.level, config.log.format);
    let egress = crate::egress::Policy::checked(&config)?;
    for way in egress.describe() {
        tracing::info!("egress {way}");
    }
    egress.install();
    // Before READY=1: a `systemctl reload` right after start must find SIGHUP handled, not
    // fall to its default action (terminate).
    let mut signals = Signals::listen()?;
    let state_dir = config.server.state_dir.clone();
    ensure_state_dir(&state_dir)?;

    let server_tls = tls::server_config(&config.server.tls, &state_dir).map_err(Problems::from)?;
    announce_development_certificate(server_tls.development_certificate.as_ref());

    // Unwise file modes are said even when something else stops the start.
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let mut registry = Registry::default();
    crate::ops::build_info::register(&mut registry);
    let reloads = Arc::new(crate::ops::reloads::Reloads::register(
        &mut registry,
        crate::ops::reload_status::runtime_dir().as_deref(),
    ));
    reloads.serving_certificate(server_tls.expires_at);
    // Stops the background checks when the daemon stops.
    let background = tokio_util::sync::CancellationToken::new();
    let _stop_background = background.clone().drop_guard();
    let mut store_health = None;
    registry.register_collector(Box::new(
        crate::ops::process_metrics::ProcessCollector::new(),
    ));
    let prepared = prepare(
        &config,
        Some(&state_dir),
        push::PushMetrics::register(&mut registry),
    )?;
    for note in &prepared.notes {
        tracing::info!("{note}");
    }
    let push = prepared.push;

    let (identity, relay, dispatcher) =
        match (&config.identity, prepared.identity, prepared.store) {
            (Some(id_config), Some(identity_prepared), Some(store_settings)) => {
                let (store, data_keys) = open_store(&config, store_settings, &state_dir).await?;
                store_health = Some(crate::ops::store_health::StoreHealth::start(
                    store.clone(),
                    &mut registry,
                    background.clone(),
                ));
                // The platform's re-sends are recognised on every node and after a restart.
                if config.push.shared_dedupe {
                    push.share_dedupe(store.clone());
                }
                // Work after a commit (or a provider's answer) waits in the store's outbox.
                let doorbell = Doorbell::default();
                push.keep_feedback_in(store.clone(), data_keys.clone(), doorbell.clone());
                let service = IdentityService::start(
                    id_config,
                    identity_prepared,
                    store.clone(),
                    data_keys.clone(),
                    crate::clock::system(),
                    IdentityMetrics::register(&mut registry),
                )
                .await
                .map_err(|e| StartError::Runtime(format!("identity: {e}")))?;
                let relay = config.relay.as_ref().zip(prepared.relay).map(
                    |(relay_config, relay_prepared)| {
                        RelayService::new(
                            relay_config,
                            relay_prepared,
                            RelayBase {
                                identity: service.clone(),
                                store: store.clone(),
                                data_keys,
                                push: push.clone(),
                                clock: crate::clock::system(),
                                doorbell: doorbell.clone(),
                            },
                            &mut registry,
                        )
                    },
                );
                let mut handlers = vec![push.outbox_handler()];
                if let Some(relay) = &relay {
                    handlers.extend(relay.outbox_handlers());
                }
                let in_flight = config
                    .relay
                    .as_ref()
                    .and_then(|r| r.webhooks.as_ref())
                    .map_or(crate::config::DEFAULT_MAX_IN_FLIGHT, |w| w.max_in_flight);
                let dispatcher = Dispatcher::start(
                    store.clone(),
                    crate::clock::system(),
                    doorbell,
                    handlers,
                    in_flight,
                    &mut registry,
                );
                (Some(service), relay, Some(dispatcher))
            }
            _ => (None, None, None),
        };

    let public_listener = bind(config.server.listen, "server.listen").await?;
    let ops_listener = bind(config.ops.listen, "ops.listen").await?;
    let public_addr = local_addr(&public_listener)?;
    let ops_addr = local_addr(&ops_listener)?;

    let health = Arc::new(Health::default());
    health.add_check(Arc::new(push.clone()));
    health.add_check(reloads.clone());
    if let Some(store_health) = store_health {
        health.add_check(store_health);
    }
    if let Some(identity) = &identity {
        health.add_check(Arc::new(identity.clone()));
    }
    let public = Arc::new(Public::new(
        server_tls.config,
        public_router(
            &push,
            identity.as_ref(),
            relay.as_ref().zip(config.relay.as_ref()),
        ),
        &config,
    ));

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
                reloads: &reloads,
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
    // One grace period for every stage.
    let deadline = tokio::time::Instant::now() + grace;
    // Pushes run detached from their connection (a caller that hung up does not cancel its
    // push), so they are waited for on their own. The outbox dispatcher stops claiming now and
    // lets its running attempts end: what is written meanwhile waits in the store.
    let dispatcher_stopped = async {
        if let Some(dispatcher) = &dispatcher {
            dispatcher.stop().await;
        }
    };
    let drained = async { tokio::join!(connections.wait(), push.drain(), dispatcher_stopped) };
    match tokio::time::timeout_at(deadline, drained).await {
        Ok(_) => tracing::info!("all connections closed and every push finished"),
        Err(_) => tracing::warn!(
            ?grace,
            open = connections.len(),
            pushes = push.pending_deliveries(),
            "grace period over; closing the remaining connections and abandoning unfinished pushes"
        ),
    }
    if let Some(relay) = &relay {
        // Sessions got their close frames at the start of the drain; they end quickly. A
        // moment is left for them (and this node's presence rows) even after a long drain.
        let floor = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        let _ = tokio::time::timeout_at(deadline.max(floor), relay.drained()).await;
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
                    let began = crate::ops::reload_status::monotonic_millis();
                    systemd::reloading();
                    match reload(path, config, state_dir, public, roles) {
                        Ok(()) => {
                            roles.reloads.record(began, &[]);
                            tracing::info!(apps = roles.push.app_count(), "configuration reloaded");
                        }
                        Err(problems) => {
                            let said: Vec<String> = problems.0.iter().map(ToString::to_string).collect();
                            roles.reloads.record(began, &said);
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

/// The roles a reload reaches, and where its outcome is kept.
#[derive(Clone, Copy)]
struct Roles<'a> {
    push: &'a PushService,
    identity: Option<&'a IdentityService>,
    relay: Option<&'a RelayService>,
    reloads: &'a crate::ops::reloads::Reloads,
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
        reloads: _,
    } = roles;
    let new = Config::load(path)?;
    let egress = crate::egress::Policy::checked(&new)?;
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
        (Some(service), Some(cfg)) => {
            Some((service, RelayService::prepare(cfg, new.identity.as_ref())?))
        }
        _ => None,
    };
    push.reload(&new.push, new.server.tls.client_ca.is_some())?;
    // Connections opened from now on leave the new way.
    egress.install();
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
    roles.reloads.serving_certificate(server_tls.expires_at);
    public.replace_tls(server_tls.config);
    for (key, changed) in restart_only_changes(config, &new) {
        if changed {
            tracing::warn!(key, "this setting changes only after a restart");
        }
    }
    *config = new;
    Ok(())
}

/// Settings bound at start-up (listeners, limits baked into the listener, logging).
fn restart_only_changes<'a>(old: &'a Config, new: &'a Config) -> [(&'static str, bool); 13] {
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
        (
            "server.trusted_proxies, client_address_header, proxy_protocol",
            o.trusted_proxies != n.trusted_proxies
                || o.client_address_header != n.client_address_header
                || o.proxy_protocol != n.proxy_protocol,
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
