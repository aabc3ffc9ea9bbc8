//! The self-hosted relay role: for brands that keep conversations on their own premises,
//! brandgate is the messaging backend itself. Consumers connect over WebSocket with the
//! identity tokens the identity bridge mints, and speak the platform's published messaging
//! protocol (`protocol`), so clients written for the platform connect unchanged.
//!
//! The door is [`RelayService`]: [`RelayService::router`] for the listener and
//! [`RelayService::shutdown`] for the end. Inside:
//! - `consumer`: a consumer's socket (authentication, token expiry, requests);
//! - `rest`: a conversation's history over HTTPS;
//! - `accounts`: agent accounts, passwords, lock-out and sessions ([`Accounts::authenticate`]
//!   tells the agent socket whose bearer it is); `login`: their login, refresh and logout
//!   over HTTPS;
//! - `conversations`: the only code that writes conversations and events (access rules,
//!   sequences, sealing); `bus`: fan-out of committed events to followers, with catch-up
//!   from the store so nothing is skipped; `protocol`: the envelopes.
//!
//! Built so far: the consumer side and history. The agent side, away pushes and webhooks
//! come next.

mod accounts;
mod bus;
mod consumer;
mod conversations;
mod login;
mod protocol;
mod rest;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use accounts::{
    AccountError, Accounts, AgentAuthError, AgentPrincipal, AgentState, AgentView, LoginError,
    NewSession, Refusal,
};
pub use consumer::close_code;

use crate::clock::Clock;
use crate::config::RelayConfig;
use crate::identity::IdentityService;
use crate::limiter::{SourceLimiter, SourceSlots};
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
    accounts: Arc<accounts::Accounts>,
    /// Agents' login attempts per source address.
    login_attempts: SourceLimiter,
    /// One permit per open socket.
    sockets: Arc<Semaphore>,
    /// Sockets not authenticated yet, per source address.
    unauthenticated: SourceSlots,
    /// Cancelled at shutdown: every socket closes with 1001.
    shutdown: CancellationToken,
    /// Every open session, so shutdown can wait for their close frames.
    sessions: TaskTracker,
}

impl RelayService {
    pub fn new(
        config: &RelayConfig,
        identity: IdentityService,
        store: Store,
        data_keys: Arc<DataKeys>,
        clock: Arc<dyn Clock>,
    ) -> RelayService {
        let accounts = Arc::new(RelayService::accounts(
            config,
            store.clone(),
            data_keys.clone(),
            clock.clone(),
        ));
        // The dummy hash for unknown usernames, made before the first login needs it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let accounts = accounts.clone();
            runtime.spawn(async move { accounts.warm_up().await });
        }
        let conversations = conversations::Conversations::new(
            config.account.clone(),
            store,
            data_keys,
            Arc::new(bus::Bus::default()),
            clock,
            config.max_message_bytes,
        );
        RelayService {
            inner: Arc::new(Inner {
                config: config.clone(),
                identity,
                conversations: Arc::new(conversations),
                accounts,
                login_attempts: SourceLimiter::default(),
                sockets: Arc::new(Semaphore::new(config.max_sockets)),
                unauthenticated: SourceSlots::default(),
                shutdown: CancellationToken::new(),
                sessions: TaskTracker::new(),
            }),
        }
    }

    /// The agent accounts of the relay's account, on their own (for `brandgate agents`).
    pub fn accounts(
        config: &RelayConfig,
        store: Store,
        data_keys: Arc<DataKeys>,
        clock: Arc<dyn Clock>,
    ) -> Accounts {
        Accounts::new(
            config.account.clone(),
            config.agents.clone(),
            store,
            data_keys,
            clock,
        )
    }

    /// The routes: the consumer's WebSocket at both paths, history over REST, and the agents'
    /// login.
    pub fn router(&self) -> Router {
        let agents = Router::new()
            .route("/api/account/{account}/login", post(login::login))
            .route("/api/account/{account}/refresh", post(login::refresh))
            .route("/api/account/{account}/logout", post(login::logout))
            .layer(axum::extract::DefaultBodyLimit::max(login::MAX_BODY_BYTES));
        Router::new()
            .merge(agents)
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

    /// Waits until every session has ended (after [`RelayService::shutdown`]).
    pub async fn drained(&self) {
        self.inner.sessions.wait().await;
    }
}
