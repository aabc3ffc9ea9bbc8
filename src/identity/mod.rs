//! The identity bridge role: the brand's OpenID Connect login stays the only login, and
//! brandgate turns a consumer's login there into the consumer identity token the messaging
//! platform verifies, signed by a key ring brandgate keeps in its store and publishes as the
//! platform expects (OpenID discovery, JWKS, one-line PEM).
//!
//! The door is [`IdentityService`]: [`IdentityService::router`] for the listener,
//! [`IdentityService::mint`] and [`IdentityService::verify_consumer`] for the rest of the
//! process. Inside:
//! - `upstream`: brandgate as relying party of the brand's provider (the only code that talks
//!   to it or holds its client secret);
//! - `login` (`/login`, `/callback`), `token` (`/oauth/token`, the platform's code exchange),
//!   `issue` (`/identity/v1/token`, server-to-server), `endpoints` (publication, anonymous
//!   sign-up): the HTTP side;
//! - `claims`: the subject mode and the claim mapping; `subject`: what a consumer's `sub` may
//!   be, for every token minted or accepted; `callers`: who may ask for tokens;
//!   `grants`: single-use states and codes, sealed in the store;
//! - `keys` manages the ring (it makes and seals key material); `mint` is the only code that
//!   opens a private key and signs; `verify` checks the consumer tokens it signed, and hands
//!   those of configured external issuers to `external` (their JWKS, their checks).

mod callers;
mod claims;
mod endpoints;
mod external;
mod grants;
mod issue;
mod keys;
mod login;
mod metrics;
mod mint;
mod refusal;
mod subject;
mod token;
mod upstream;
mod verdict;
mod verify;
mod web;

use std::sync::Arc;

use axum::response::Response;
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

pub(crate) use grants::{GrantError, GrantKind, Grants};
pub use keys::{Algorithm, KeyRing, KeyState, RingKey, RingSettings};
pub use metrics::IdentityMetrics;
pub use mint::{Claims, MintError, Minted};
pub(crate) use upstream::{Upstream, UpstreamError};
pub use verdict::{ANONYMOUS, ConsumerIdentity, PROFILE, VerifyError};
/// What the agents' single sign-on shares with the consumer login's pages.
pub(crate) mod pages {
    pub(crate) use super::web::{
        LOGIN_COOKIE, binding_cookie, login_cookie, page_error, params, redirect,
    };
}

/// Seals the identity bridge's records again under the active data key (`brandgate store
/// reseal`): the signing keys when the bridge is configured (`ring`), and the pending logins
/// and codes. Returns how many of each kind it re-sealed.
pub async fn reseal(
    store: &Store,
    data_keys: &DataKeys,
    ring: Option<&KeyRing>,
) -> Result<Vec<(&'static str, usize)>, ResealFailure> {
    use crate::store::sealed::SealedColumn;
    let mut done = Vec::new();
    if let Some(ring) = ring {
        done.push(("signing keys", mint::reseal_signing_keys(ring).await?));
    }
    let column = SealedColumn::PendingGrants;
    // A pending grant is bound to its record id.
    let n = store
        .reseal_column(column, data_keys, |fields| match fields {
            [id] => Some(id.as_bytes().to_vec()),
            _ => None,
        })
        .await?;
    done.push((column.name(), n));
    Ok(done)
}

/// Why re-sealing the identity bridge's records stopped.
#[derive(Debug, thiserror::Error)]
pub enum ResealFailure {
    #[error("signing keys: {0}")]
    Keys(#[from] keys::KeyError),
    #[error(transparent)]
    Records(#[from] crate::store::sealed::ResealError),
}

use crate::clock::Clock;
use crate::config::{IdentityConfig, Problems};
use crate::limiter::SourceLimiter;
use crate::store::Store;
use crate::store::seal::DataKeys;
use crate::tls::Peer;

/// Failed client or backend authentications per source address (and scope) per minute
/// before `429`.
const AUTH_FAILURES_PER_MINUTE: u32 = 30;

/// How often each node looks after the ring (scheduled rotation, removal of old keys) and
/// forgets expired logins and codes.
const MAINTENANCE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// The identity bridge. Cheap to clone.
#[derive(Clone)]
pub struct IdentityService {
    inner: Arc<Inner>,
}

struct Inner {
    config: IdentityConfig,
    ring: Arc<KeyRing>,
    mint: mint::Mint,
    signups: SourceLimiter,
    /// Logins started, per source.
    logins: SourceLimiter,
    /// Failed client and backend authentications, per source.
    failures: SourceLimiter,
    /// What a reload replaces: the login provider, the claim mapping, clients, backends and
    /// external issuers.
    live: std::sync::RwLock<Arc<Prepared>>,
    grants: grants::Grants,
    metrics: IdentityMetrics,
    /// Public keys of the ring, parsed, for checking consumer tokens.
    verify_keys: verify::KeyCache,
    clock: Arc<dyn Clock>,
}

/// What the identity bridge reads from files before it can start (and again on reload):
/// checked by `brandgate check-config` without touching the store or the network.
pub struct Prepared {
    upstream: Option<Arc<upstream::Upstream>>,
    mapper: claims::ClaimMapper,
    callers: callers::Callers,
    external: external::ExternalIssuers,
}

impl Prepared {
    /// What consumer tokens carry besides the subject, for `check-config`.
    pub fn claims_note(&self) -> String {
        let mapped = self.mapper.describe();
        if mapped.is_empty() {
            "identity.claims: consumer tokens carry no profile claims (none is mapped)".into()
        } else {
            format!(
                "identity.claims: consumer tokens carry {} (only these: a line removed is never sent)",
                mapped.join(", ")
            )
        }
    }
}

impl IdentityService {
    /// Reads every secret and file the config names (client secrets, pseudonym key, trust
    /// anchors). Every problem is reported at once.
    pub fn prepare(
        config: &IdentityConfig,
        client_ca_configured: bool,
        clock: Arc<dyn Clock>,
    ) -> Result<Prepared, Problems> {
        let mut problems = Problems::default();
        let upstream = config.upstream.as_ref().and_then(|u| {
            let redirect = config.callback_uri()?;
            let at = "identity.upstream";
            upstream::Upstream::build(
                u,
                at,
                &redirect,
                config.leeway.0,
                clock.clone(),
                crate::egress::Role::Identity,
                &mut problems,
            )
            .map(Arc::new)
        });
        let mapper = claims::ClaimMapper::build(config, &mut problems);
        let callers = callers::Callers::build(
            &config.clients,
            &config.backends,
            client_ca_configured,
            &mut problems,
        );
        let external = external::ExternalIssuers::build(&config.external_issuers, &mut problems);
        problems.into_result(Prepared {
            upstream,
            mapper,
            callers,
            external,
        })
    }

    /// The service over `store`. Makes the first signing key if the ring is empty.
    pub async fn start(
        config: &IdentityConfig,
        prepared: Prepared,
        store: Store,
        data_keys: Arc<DataKeys>,
        clock: Arc<dyn Clock>,
        metrics: IdentityMetrics,
    ) -> Result<IdentityService, MintError> {
        let ring = Arc::new(KeyRing::new(
            store.clone(),
            data_keys.clone(),
            ring_settings(config),
            clock.clone(),
        ));
        ring.active().await?;
        let mint = mint::Mint::new(
            ring.clone(),
            config.issuer.trim_end_matches('/').to_string(),
            clock.clone(),
        );
        Ok(IdentityService {
            inner: Arc::new(Inner {
                config: config.clone(),
                ring,
                mint,
                signups: SourceLimiter::default(),
                logins: SourceLimiter::default(),
                failures: SourceLimiter::default(),
                live: std::sync::RwLock::new(Arc::new(prepared)),
                grants: grants::Grants::new(store, data_keys, clock.clone()),
                metrics,
                verify_keys: verify::KeyCache::default(),
                clock,
            }),
        })
    }

    /// What the current configuration says about the login provider, claims and callers.
    fn live(&self) -> Arc<Prepared> {
        self.inner
            .live
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Puts a configuration read again (`SIGHUP`, after [`IdentityService::prepare`]) in
    /// place: the login provider's settings and secrets, the claim mapping, the clients and the
    /// backends. Requests in progress finish with what they started with. The issuer, the
    /// audience, lifetimes and the key ring are bound at start.
    pub fn apply(&self, prepared: Prepared) {
        let prepared = Arc::new(prepared);
        *self.inner.live.write().unwrap_or_else(|e| e.into_inner()) = prepared.clone();
        if let Some(upstream) = prepared.upstream.clone() {
            tokio::spawn(async move {
                if let Err(e) = upstream.warm_up().await {
                    tracing::warn!(error = %e, "the login provider cannot be read yet; logins will retry it");
                }
            });
        }
    }

    /// The routes: discovery, JWKS, PEM, anonymous sign-up, login, the code exchange and
    /// server-to-server issuance.
    pub fn router(&self) -> axum::Router {
        endpoints::router(self.clone())
    }

    pub fn ring(&self) -> &KeyRing {
        &self.inner.ring
    }

    /// Closes the store's connections (at shutdown, after the listeners drained).
    pub async fn close(&self) {
        self.inner.ring.store().close().await;
    }

    /// Signs a consumer token.
    pub async fn mint(&self, claims: &Claims) -> Result<Minted, MintError> {
        self.inner.mint.mint(claims).await
    }

    /// What a consumer token for a login or a backend says: the configured audience and
    /// lifetime, the app's nonce when it sent one.
    fn consumer_claims(
        &self,
        subject: String,
        mut profile: Map<String, Value>,
        nonce: Option<String>,
    ) -> Claims {
        if let Some(n) = nonce {
            profile.insert("nonce".into(), Value::from(n));
        }
        Claims {
            subject,
            audience: self.inner.config.audience.clone(),
            lifetime: self.inner.config.token_lifetime.0,
            profile,
        }
    }

    /// Signs a consumer token for a login or a backend (see [`Self::consumer_claims`]).
    async fn mint_consumer(
        &self,
        subject: String,
        profile: Map<String, Value>,
        nonce: Option<String>,
    ) -> Result<Minted, MintError> {
        self.mint(&self.consumer_claims(subject, profile, nonce))
            .await
    }

    /// How long `peer` must wait, after too many failed caller authentications in `scope`
    /// this minute (client and backend secrets are guessable only this slowly).
    fn failures_wait(&self, peer: Option<&Peer>, scope: &str) -> Option<std::time::Duration> {
        let ip = peer?.client;
        self.inner
            .failures
            .blocked(ip, scope, AUTH_FAILURES_PER_MINUTE)
    }

    /// Counts one failed caller authentication of `peer` in `scope`.
    fn count_failure(&self, peer: Option<&Peer>, scope: &str) {
        if let Some(p) = peer {
            self.inner.failures.count(p.client, scope);
        }
    }

    /// `503` for a failure of ours (logged, never shown).
    fn unavailable(&self, what: &str, e: impl std::fmt::Display) -> Response {
        axum::response::IntoResponse::into_response(refusal::Refusal::unavailable(what, e))
    }

    /// Looks after the ring on this node until `cancel`: scheduled rotation, removal of keys
    /// whose tokens have all expired, expired logins and codes. Every node does it; the store
    /// keeps them in agreement. Reads the login provider's metadata once at start.
    pub fn spawn_maintenance(&self, cancel: CancellationToken) {
        let service = self.clone();
        tokio::spawn(async move {
            if let Some(upstream) = &service.live().upstream
                && let Err(e) = upstream.warm_up().await
            {
                tracing::warn!(error = %e, "the login provider cannot be read yet; logins will retry it");
            }
            let mut tick = tokio::time::interval(MAINTENANCE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => {
                        if let Err(e) = service.inner.ring.maintain().await {
                            tracing::warn!(error = %e, "signing key maintenance failed");
                        }
                        if let Err(e) = service.inner.grants.delete_expired().await {
                            tracing::warn!(error = %e, "cannot delete expired logins and codes");
                        }
                    }
                }
            }
        });
    }
}

impl crate::ops::health::ReadinessCheck for IdentityService {
    fn name(&self) -> &'static str {
        "identity"
    }

    /// Ready either way (the published keys and anonymous identities do not need the login
    /// provider); a provider not read yet is shown, so an operator sees why logins fail.
    fn check(&self) -> crate::ops::health::Check {
        let upstream = match &self.live().upstream {
            None => Value::from("not configured"),
            Some(u) if u.is_discovered() => Value::from("ok"),
            Some(_) => Value::from("not reachable yet"),
        };
        crate::ops::health::Check {
            ready: true,
            detail: serde_json::json!({ "login_provider": upstream }),
        }
    }
}

/// The ring's settings from the config: the longest token any key signs bounds how long a
/// retired key stays published.
pub fn ring_settings(config: &IdentityConfig) -> RingSettings {
    RingSettings {
        algorithm: Algorithm::parse(&config.algorithm).unwrap_or(Algorithm::RS256),
        lead_time: config.keys.rotation_lead.0,
        max_token_lifetime: config
            .token_lifetime
            .0
            .max(config.anonymous.token_lifetime.0),
        leeway: config.leeway.0,
        rotate_every: config.keys.rotate_every.map(|s| s.0),
    }
}
