//! Consumers' push registrations: the device token of each app a consumer uses, so the relay
//! can reach a consumer who is away. One registration per (account, consumer, app); a new one
//! replaces the old. The token is sealed by the caller; the store keeps its SHA-256 beside it
//! so that a token a provider reported dead is removed only if it is still the registered one.

use crate::ids::ConsumerId;
use sqlx::Row;

use super::{Store, StoreError};

/// A registration as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushRegistration {
    pub account: String,
    pub consumer_id: ConsumerId,
    /// The app's id in `[[push.apps]]`.
    pub app: String,
    /// `apns` or `fcm`.
    pub provider: String,
    pub token_sealed: Vec<u8>,
    /// SHA-256 of the token, hex.
    pub token_hash: String,
    /// Unix milliseconds.
    pub updated_at: i64,
}

impl Store {
    /// Records a registration, replacing the consumer's earlier one for the same app.
    pub async fn put_push_registration(&self, r: &PushRegistration) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO push_registrations \
                 (account, consumer_id, app, provider, token_sealed, token_hash, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (account, consumer_id, app) DO UPDATE SET provider = excluded.provider, \
                 token_sealed = excluded.token_sealed, token_hash = excluded.token_hash, \
                 updated_at = excluded.updated_at",
            )
            .bind(&r.account)
            .bind(&r.consumer_id)
            .bind(&r.app)
            .bind(&r.provider)
            .bind(&r.token_sealed)
            .bind(&r.token_hash)
            .bind(r.updated_at)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// The consumer's registrations, by app.
    pub async fn list_push_registrations(
        &self,
        account: &str,
        consumer_id: &ConsumerId,
    ) -> Result<Vec<PushRegistration>, StoreError> {
        let rows = on_pool!(self, pool => {
            sqlx::query(
                "SELECT account, consumer_id, app, provider, token_sealed, token_hash, updated_at \
                 FROM push_registrations WHERE account = $1 AND consumer_id = $2 ORDER BY app",
            )
            .bind(account)
            .bind(consumer_id)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| -> Result<PushRegistration, sqlx::Error> {
                Ok(PushRegistration {
                    account: r.try_get("account")?,
                    consumer_id: r.try_get("consumer_id")?,
                    app: r.try_get("app")?,
                    provider: r.try_get("provider")?,
                    token_sealed: r.try_get("token_sealed")?,
                    token_hash: r.try_get("token_hash")?,
                    updated_at: r.try_get("updated_at")?,
                })
            })
            .collect::<Result<Vec<_>, _>>()?
        });
        Ok(rows)
    }

    /// Removes the consumer's registration for `app`; with `token_hash`, only if that is still
    /// the registered token. Returns whether one was removed.
    pub async fn delete_push_registration(
        &self,
        account: &str,
        consumer_id: &ConsumerId,
        app: &str,
        token_hash: Option<&str>,
    ) -> Result<bool, StoreError> {
        let done = on_pool!(self, pool => {
            sqlx::query(
                "DELETE FROM push_registrations WHERE account = $1 AND consumer_id = $2 AND app = $3 \
                 AND ($4 IS NULL OR token_hash = $4)",
            )
            .bind(account)
            .bind(consumer_id)
            .bind(app)
            .bind(token_hash)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(done == 1)
    }
}
