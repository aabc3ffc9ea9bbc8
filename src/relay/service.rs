//! The relay's door, [`RelayService`]: what it is built from, what its modules share, and its
//! lifecycle (prepare, start, reload, shut down, drain). Its routes are in `routes`.

use std::sync::Arc;

use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::accounts::{self, Accounts};
use super::{away, conversations, fanout, profiles, webhooks};
use crate::clock::Clock;
use crate::config::{IdentityConfig, Problems, RelayConfig};
use crate::dispatch::{Doorbell, Handler};
use crate::identity::IdentityService;
use crate::limiter::{SourceLimiter, SourceSlots};
use crate::push::PushService;
use crate::store::Store;
use crate::store::seal::DataKeys;

/// What the relay stands on: the other roles' doors, the store and the clock.
pub struct RelayBase {
    /// Verifies consumers' identity tokens.
    pub identity: IdentityService,
    pub store: Store,
    pub data_keys: Arc<DataKeys>,
    /// Sends away pushes.
    pub push: PushService,
    pub clock: Arc<dyn Clock>,
    /// Rung after commits that wrote outbox items (the daemon's dispatcher listens).
    pub doorbell: Doorbell,
}

/// The relay. Cheap to clone.
#[derive(Clone)]
pub struct RelayService {
    pub(super) inner: Arc<Inner>,
}

/// What the relay's modules share; each handler reaches it through its `RelayService`.
pub(super) struct Inner {
    pub(super) config: RelayConfig,
    pub(super) identity: IdentityService,
    pub(super) conversations: Arc<conversations::Conversations>,
    pub(super) accounts: Arc<accounts::Accounts>,
    pub(super) away: Arc<away::Away>,
    pub(super) store: Store,
    pub(super) data_keys: Arc<DataKeys>,
    /// Agents' login attempts per source address.
    pub(super) login_attempts: SourceLimiter,
    /// One permit per open socket.
    pub(super) sockets: Arc<Semaphore>,
    pub(super) metrics: super::metrics::RelayMetrics,
    /// Sockets not authenticated yet, per source address.
    pub(super) unauthenticated: SourceSlots,
    /// Cancelled at shutdown: every socket closes with 1001.
    pub(super) shutdown: CancellationToken,
    /// Every open session, so shutdown can wait for their close frames.
    pub(super) sessions: TaskTracker,
    pub(super) webhooks: webhooks::Webhooks,
    /// Fan-out to the other nodes (PostgreSQL only), stopped once the sessions have ended.
    pub(super) fanout: Option<fanout::Fanout>,
    /// What consumers' tokens said about them, for their agents.
    pub(super) profiles: profiles::Profiles,
    /// The relay's time (a test's fake clock moves it).
    pub(super) clock: Arc<dyn Clock>,
    /// Agents' single sign-on, when `[relay.agents.sso]` is configured.
    pub(super) sso: Option<super::idp::Sso>,
}

/// The relay's settings that need files (the webhook secret, trust anchors), read and
/// checked: what a start or a reload puts in use.
pub struct PreparedRelay {
    webhooks: Option<super::webhooks::Settings>,
    /// The agents' identity providers (used at start; a change needs a restart).
    sso: Option<super::idp::PreparedSso>,
}

impl RelayService {
    /// Reads and checks what the relay needs besides its config's shape; every problem is
    /// reported, naming its key.
    pub fn prepare(
        config: &RelayConfig,
        identity: Option<&IdentityConfig>,
    ) -> Result<PreparedRelay, Problems> {
        let mut problems = Problems::default();
        let webhooks = config
            .webhooks
            .as_ref()
            .map(webhooks::Settings::prepare)
            .transpose()
            .map_err(|p| problems.0.extend(p.0))
            .ok()
            .flatten();
        let sso = super::idp::prepare(config, identity, &mut problems);
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(PreparedRelay { webhooks, sso })
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
            doorbell,
        } = base;
        let metrics = super::metrics::RelayMetrics::register(registry);
        let accounts = Arc::new(
            RelayService::accounts(config, store.clone(), data_keys.clone(), clock.clone())
                .counting_audit_in(metrics.agent_audit.clone()),
        );
        // The dummy hash for unknown usernames, made before the first login needs it.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let accounts = accounts.clone();
            runtime.spawn(async move { accounts.warm_up().await });
        }
        let away = Arc::new(
            away::Away::new(
                config.account.clone(),
                push,
                store.clone(),
                data_keys.clone(),
                clock.clone(),
                config.away.ack_delay.0,
                config.away.burst.0,
            )
            .counting_in(metrics.away_pushes.clone()),
        );
        let webhooks = webhooks::Webhooks::new(
            prepared.webhooks,
            clock.clone(),
            webhooks::WebhookMetrics::register(registry),
            store.clone(),
            data_keys.clone(),
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
        .with_webhooks(webhooks.clone(), doorbell)
        .with_metrics(metrics.clone());
        let sso = prepared.sso.map(|sso| super::idp::Sso {
            oidc: sso.oidc.map(Arc::new),
            saml: sso.saml.map(Arc::new),
            grants: crate::identity::Grants::new(store.clone(), data_keys.clone(), clock.clone()),
        });
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
                metrics,
                unauthenticated: SourceSlots::default(),
                shutdown: CancellationToken::new(),
                sessions: TaskTracker::new(),
                webhooks,
                fanout,
                profiles,
                sso,
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

    /// Closes every socket (code 1001): clients reconnect elsewhere and catch up.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
        self.inner.sessions.close();
    }

    /// Puts reloaded settings in use (see [`RelayService::prepare`]): today the webhooks'
    /// (their secret file is read again).
    pub fn apply(&self, prepared: PreparedRelay) {
        self.inner.webhooks.apply(prepared.webhooks);
    }

    /// What works off the relay's outbox items (webhooks, away pushes), for the daemon's
    /// dispatcher.
    pub fn outbox_handlers(&self) -> Vec<Arc<dyn Handler>> {
        vec![
            Arc::new(self.inner.webhooks.clone()),
            Arc::new(self.inner.away.clone()),
        ]
    }

    /// Waits until every session has ended (after [`RelayService::shutdown`]), then stops
    /// recording presence and fanning out. The caller bounds the wait, then stops the
    /// dispatcher (what waits in the outbox stays in the store for the next start).
    pub async fn drained(&self) {
        self.inner.sessions.wait().await;
        self.inner.away.shutdown().await;
        if let Some(fanout) = &self.inner.fanout {
            fanout.stop().await;
        }
    }
}
