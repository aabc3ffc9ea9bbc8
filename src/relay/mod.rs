//! The self-hosted relay role: for brands that keep conversations on their own premises,
//! brandgate is the messaging backend itself. Consumers connect over WebSocket with the
//! identity tokens the identity bridge mints, and speak the platform's published messaging
//! protocol (`protocol`), so clients written for the platform connect unchanged.
//!
//! The door is [`RelayService`]: [`RelayService::router`] for the listener and
//! [`RelayService::shutdown`] for the end. Inside:
//! - `socket`: what every socket does (queue, subscriptions, shared requests, close codes);
//! - `consumer`: a consumer's socket (authentication, token expiry, its own requests);
//! - `agent`: an agent's socket (session, availability, rings); `routing`: which agent gets a
//!   waiting conversation; `accounts`: agent accounts, passwords, lock-out and sessions
//!   ([`Accounts::authenticate`] tells the agent socket whose bearer it is); `login`: their
//!   login, refresh and logout over HTTPS;
//! - `rest`: a conversation's history over HTTPS; `devices`: consumers' push registrations;
//!   `away`: pushes to consumers who do not acknowledge agents' messages;
//! - `conversations`: the only code that writes conversations and events (access rules,
//!   sequences, sealing); `bus`: fan-out of committed events to followers, with catch-up
//!   from the store so nothing is skipped; `fanout`: the same across nodes sharing one
//!   PostgreSQL (LISTEN/NOTIFY); `protocol`: the envelopes;
//! - `webhooks`: signed POSTs to the brand's backend about committed changes, never
//!   blocking the relay.
//!
//! Away pushes go through the push proxy's door ([`PushService::send`]).

mod accounts;
mod agent;
mod away;
mod bus;
mod consumer;
mod conversations;
mod devices;
mod fanout;
mod login;
mod profiles;
pub(crate) mod protocol;
mod rest;
mod routing;
mod socket;
mod webhooks;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post, put};
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use accounts::{
    AccountError, Accounts, AgentAuthError, AgentPrincipal, AgentState, AgentView, LoginError,
    NewSession, Refusal,
};
pub use socket::close_code;

use crate::clock::Clock;
use crate::config::{Problems, RelayConfig};
use crate::identity::IdentityService;
use crate::limiter::{SourceLimiter, SourceSlots};
use crate::push::PushService;
use crate::store::Store;
use crate::store::seal::DataKeys;
use crate::store::sealed::{ResealError, SealedColumn};

/// Seals the relay's records again under the active data key (`brandgate store reseal`).
/// Returns how many of each kind it re-sealed.
pub async fn reseal(
    store: &Store,
    data_keys: &DataKeys,
) -> Result<Vec<(&'static str, usize)>, ResealError> {
    let mut done = Vec::new();
    for column in [
        SealedColumn::RelayEvents,
        SealedColumn::AgentPasswords,
        SealedColumn::PushTokens,
        SealedColumn::ConsumerProfiles,
    ] {
        let n = store
            .reseal_column(column, data_keys, |fields| seal_context(column, fields))
            .await?;
        done.push((column.name(), n));
    }
    Ok(done)
}

/// The associated data a relay record's sealed value is bound to, from the fields
/// [`Store::list_sealed`] gives; `None` for a column the relay does not own.
fn seal_context(column: SealedColumn, fields: &[String]) -> Option<Vec<u8>> {
    match (column, fields) {
        (SealedColumn::RelayEvents, [event_id]) => Some(conversations::seal_context(event_id)),
        (SealedColumn::AgentPasswords, [agent_id]) => Some(accounts::seal_context(agent_id)),
        (SealedColumn::PushTokens, [account, consumer, app]) => {
            Some(away::seal_context(account, consumer, app))
        }
        (SealedColumn::ConsumerProfiles, [account, consumer]) => {
            Some(profiles::seal_context(account, consumer))
        }
        _ => None,
    }
}

/// What the relay stands on: the other roles' doors, the store and the clock.
pub struct RelayBase {
    /// Verifies consumers' identity tokens.
    pub identity: IdentityService,
    pub store: Store,
    pub data_keys: Arc<DataKeys>,
    /// Sends away pushes.
    pub push: PushService,
    pub clock: Arc<dyn Clock>,
}

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
    away: Arc<away::Away>,
    store: Store,
    data_keys: Arc<DataKeys>,
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
    webhooks: webhooks::Webhooks,
    /// Fan-out to the other nodes (PostgreSQL only), stopped once the sessions have ended.
    fanout: Option<fanout::Fanout>,
    /// What consumers' tokens said about them, for their agents.
    profiles: profiles::Profiles,
    /// The relay's time (a test's fake clock moves it).
    clock: Arc<dyn Clock>,
}

/// The relay's settings that need files (the webhook secret, trust anchors), read and
/// checked: what a start or a reload puts in use.
pub struct PreparedRelay {
    webhooks: Option<webhooks::Settings>,
}

/// The answer to an upgrade past `relay.max_sockets`: `503`, the reason, and when to retry.
fn too_many_sockets() -> axum::response::Response {
    use axum::response::IntoResponse;
    crate::http_answer::with_retry_after(
        (
            http::StatusCode::SERVICE_UNAVAILABLE,
            "too many connections; retry later",
        )
            .into_response(),
        std::time::Duration::from_secs(1),
    )
}

impl RelayService {
    /// Reads and checks what the relay needs besides its config's shape; every problem is
    /// reported, naming its key.
    pub fn prepare(config: &RelayConfig) -> Result<PreparedRelay, Problems> {
        let webhooks = config
            .webhooks
            .as_ref()
            .map(webhooks::Settings::prepare)
            .transpose()?;
        Ok(PreparedRelay { webhooks })
    }

    pub fn new(
        config: &RelayConfig,
        prepared: PreparedRelay,
        base: RelayBase,
        registry: &mut Registry,
    ) -> RelayService {
        let RelayBase {
            identity,
            store,
            data_keys,
            push,
            clock,
        } = base;
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
        let away = Arc::new(away::Away::new(
            config.account.clone(),
            push,
            store.clone(),
            data_keys.clone(),
            config.away.ack_delay.0,
            config.away.burst.0,
        ));
        let webhooks = webhooks::Webhooks::start(
            prepared.webhooks,
            clock.clone(),
            webhooks::WebhookMetrics::register(registry),
        );
        let (bus, fanout) = fanout::Fanout::bus_for(&store);
        if let Some(fanout) = &fanout {
            fanout.metrics().register(registry);
        }
        let profiles = profiles::Profiles::new(
            config.account.clone(),
            store.clone(),
            data_keys.clone(),
            clock.clone(),
        );
        let conversations = conversations::Conversations::new(
            config.account.clone(),
            store.clone(),
            data_keys.clone(),
            bus,
            clock.clone(),
            config.max_message_bytes,
        )
        .with_away(away.clone())
        .with_webhooks(webhooks.clone());
        RelayService {
            inner: Arc::new(Inner {
                config: config.clone(),
                identity,
                conversations: Arc::new(conversations),
                accounts,
                login_attempts: SourceLimiter::default(),
                away,
                store,
                data_keys,
                sockets: Arc::new(Semaphore::new(config.max_sockets)),
                unauthenticated: SourceSlots::default(),
                shutdown: CancellationToken::new(),
                sessions: TaskTracker::new(),
                webhooks,
                fanout,
                profiles,
                clock,
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

    /// The routes: the consumer's and the agent's WebSockets at both paths, history over
    /// REST, consumers' devices, and the agents' login.
    pub fn router(&self) -> Router {
        let agents = Router::new()
            .route("/api/account/{account}/login", post(login::login))
            .route("/api/account/{account}/refresh", post(login::refresh))
            .route("/api/account/{account}/logout", post(login::logout))
            .layer(axum::extract::DefaultBodyLimit::max(login::MAX_BODY_BYTES));
        Router::new()
            .merge(agents)
            .route("/ws/consumer", get(consumer::own_path))
            .route("/ws/agent", get(agent::own_path))
            .route(
                "/ws_api/account/{account}/messaging/brand/{bearer}",
                get(agent::platform_path),
            )
            .route("/api/v1/conversations", get(rest::list))
            .route("/api/v1/workspace", get(login::workspace))
            .route("/api/v1/push-registrations", get(devices::list))
            .route(
                "/api/v1/push-registrations/{app}",
                put(devices::register)
                    .delete(devices::unregister)
                    .layer(DefaultBodyLimit::max(devices::MAX_BODY)),
            )
            .route("/api/v1/conversations/{id}/events", get(rest::events))
            .route(
                "/api/v1/conversations/{id}/consumer",
                get(profiles::consumer),
            )
            .route(
                "/ws_api/account/{account}/messaging/consumer",
                get(consumer::platform_path),
            )
            .with_state(self.clone())
    }

    /// Closes every socket (code 1001): clients reconnect elsewhere and catch up.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.away.shutdown();
        self.inner.sessions.close();
    }

    /// Puts reloaded settings in use (see [`RelayService::prepare`]): today the webhooks'
    /// (their secret file is read again).
    pub fn apply(&self, prepared: PreparedRelay) {
        self.inner.webhooks.apply(prepared.webhooks);
    }

    /// Waits until every session has ended (after [`RelayService::shutdown`]), then until the
    /// webhooks already queued have had an attempt (none waits for a retry any more).
    /// The caller bounds the wait.
    pub async fn drained(&self) {
        self.inner.sessions.wait().await;
        self.inner.webhooks.drain().await;
        if let Some(fanout) = &self.inner.fanout {
            fanout.stop().await;
        }
    }
}
