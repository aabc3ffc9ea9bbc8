//! The identity bridge role: consumer identity tokens the messaging platform verifies, signed
//! by a key ring brandgate keeps in its store, with the keys published as the platform expects
//! (OpenID discovery, JWKS, one-line PEM).
//!
//! The door is [`IdentityService`]: [`IdentityService::router`] for the listener,
//! [`IdentityService::mint`] for the rest of the process. `keys` manages the ring (it makes
//! and seals key material); `mint` is the only code that opens a private key.
//!
//! Built so far: the key ring (creation, rotation with a lead time, retirement, removal,
//! re-sealing), publication, minting, and anonymous identities. The upstream OpenID Connect
//! login and the platform's code flow come next.

mod endpoints;
pub mod keys;
mod mint;

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub use keys::{Algorithm, KeyRing, KeyState, RingKey, RingSettings};
pub use mint::{Claims, MintError, Minted};

use crate::clock::Clock;
use crate::config::IdentityConfig;
use crate::limiter::SourceLimiter;
use crate::store::Store;
use crate::store::seal::DataKeys;

/// How often each node looks after the ring (scheduled rotation, removal of old keys).
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
}

impl IdentityService {
    /// The service over `store`. Makes the first signing key if the ring is empty.
    pub async fn start(
        config: &IdentityConfig,
        store: Store,
        data_keys: Arc<DataKeys>,
        clock: Arc<dyn Clock>,
    ) -> Result<IdentityService, MintError> {
        let ring = Arc::new(KeyRing::new(
            store,
            data_keys,
            ring_settings(config),
            clock.clone(),
        ));
        ring.active().await?;
        let mint = mint::Mint::new(
            ring.clone(),
            config.issuer.trim_end_matches('/').to_string(),
            clock,
        );
        Ok(IdentityService {
            inner: Arc::new(Inner {
                config: config.clone(),
                ring,
                mint,
                signups: SourceLimiter::default(),
            }),
        })
    }

    /// The routes: discovery, JWKS, PEM, anonymous sign-up.
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

    /// Looks after the ring on this node until `cancel`: scheduled rotation, removal of keys
    /// whose tokens have all expired. Every node does it; the store keeps them in agreement.
    pub fn spawn_maintenance(&self, cancel: CancellationToken) {
        let ring = self.inner.ring.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(MAINTENANCE_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tick.tick() => {
                        if let Err(e) = ring.maintain().await {
                            tracing::warn!(error = %e, "signing key maintenance failed");
                        }
                    }
                }
            }
        });
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
