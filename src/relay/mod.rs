//! The self-hosted relay role: for brands that keep conversations on their own premises,
//! brandgate is the messaging backend itself. Consumers connect over WebSocket with the
//! identity tokens the identity bridge mints, and speak the platform's published messaging
//! protocol (`protocol`), so clients written for the platform connect unchanged.
//!
//! The door is [`RelayService`]: [`RelayService::router`] for the listener and
//! [`RelayService::shutdown`] for the end. Inside:
//! - `consumer`: a consumer's socket (authentication, token expiry, requests);
//! - `rest`: a conversation's history over HTTPS;
//! - `conversations`: the only code that writes conversations and events (access rules,
//!   sequences, sealing); `bus`: fan-out of committed events to followers, with catch-up
//!   from the store so nothing is skipped; `fanout`: the same across nodes sharing one
//!   PostgreSQL (LISTEN/NOTIFY); `protocol`: the envelopes.
//!
//! Built so far: the consumer side and history. The agent side, away pushes and webhooks
//! come next.

mod bus;
mod consumer;
mod conversations;
mod fanout;
mod protocol;
mod rest;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use consumer::close_code;

use crate::clock::Clock;
use crate::config::RelayConfig;
use crate::identity::IdentityService;
use crate::limiter::SourceSlots;
use crate::store::Store;
use crate::store::seal::DataKeys;

/// The relay. Cheap to clone.
#[derive(Clone)]
pub struct RelayService {
    inner: Arc<Inner>,
}

struct Inner {
    config: RelayConfig,
    identity: IdentityService,
    conversations: Arc<conversations::Conversations>,
    /// One permit per open socket.
    sockets: Arc<Semaphore>,
    /// Sockets not authenticated yet, per source address.
    unauthenticated: SourceSlots,
    /// Cancelled at shutdown: every socket closes with 1001.
    shutdown: CancellationToken,
    /// Every open session, so shutdown can wait for their close frames.
    sessions: TaskTracker,
    /// Fan-out to the other nodes (PostgreSQL only), stopped once the sessions have ended.
    fanout: Option<fanout::Fanout>,
}

impl RelayService {
    pub fn new(
        config: &RelayConfig,
        identity: IdentityService,
        store: Store,
        data_keys: Arc<DataKeys>,
        clock: Arc<dyn Clock>,
    ) -> RelayService {
        let (bus, fanout) = fanout::Fanout::bus_for(&store);
        let conversations = conversations::Conversations::new(
            config.account.clone(),
            store,
            data_keys,
            bus,
            clock,
            config.max_message_bytes,
        );
        RelayService {
            inner: Arc::new(Inner {
                config: config.clone(),
                identity,
                conversations: Arc::new(conversations),
                sockets: Arc::new(Semaphore::new(config.max_sockets)),
                unauthenticated: SourceSlots::default(),
                shutdown: CancellationToken::new(),
                sessions: TaskTracker::new(),
                fanout,
            }),
        }
    }

    /// The routes: the consumer's WebSocket at both paths, and history over REST.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/ws/consumer", get(consumer::own_path))
            .route("/api/v1/conversations/{id}/events", get(rest::events))
            .route(
                "/ws_api/account/{account}/messaging/consumer",
                get(consumer::platform_path),
            )
            .with_state(self.clone())
    }

    /// Closes every socket (code 1001): clients reconnect elsewhere and catch up.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.sessions.close();
    }

    /// Waits until every session has ended (after [`RelayService::shutdown`]), then for
    /// the fan-out to send what they published to the other nodes.
    pub async fn drained(&self) {
        self.inner.sessions.wait().await;
        if let Some(fanout) = &self.inner.fanout {
            fanout.stop().await;
        }
    }

    /// Adds the relay's metrics (the fan-out's, on PostgreSQL) to `registry`.
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        if let Some(fanout) = &self.inner.fanout {
            fanout.metrics().register(registry);
        }
    }
}
