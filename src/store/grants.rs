//! Pending grants: short-lived, single-use records of the identity bridge (a login waiting for
//! the consumer to come back from the brand's provider, a code waiting for the platform's
//! token call). Kept in the store so that any node may finish what another node started.
//!
//! The caller picks the id (a hash of the secret handle the consumer or platform holds, never
//! the handle itself) and seals the value. `take_pending_grant` is the only way to read one,
//! and it deletes what it reads in the same statement: two nodes racing for one code cannot
//! both get it.

use sqlx::Row;

use super::{Store, StoreError};

impl Store {
    /// Records a grant. Conflict if the id exists.
    pub async fn create_pending_grant(
        &self,
        id: &str,
        sealed: &[u8],
        expires_at: i64,
    ) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query("INSERT INTO pending_grants (id, sealed, expires_at) VALUES ($1, $2, $3)")
                .bind(id)
                .bind(sealed)
                .bind(expires_at)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Removes the grant and returns its sealed value, or `None` if there is none or it expired
    /// (at or before `now`). Atomic: of several concurrent takers, one at most gets the value.
    pub async fn take_pending_grant(
        &self,
        id: &str,
        now: i64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let row = on_pool!(self, pool => {
            sqlx::query("DELETE FROM pending_grants WHERE id = $1 RETURNING sealed, expires_at")
                .bind(id)
                .fetch_optional(pool)
                .await?
                .map(|r| -> Result<(Vec<u8>, i64), sqlx::Error> {
                    Ok((r.try_get("sealed")?, r.try_get("expires_at")?))
                })
                .transpose()?
        });
        Ok(row.and_then(|(sealed, expires_at)| (expires_at > now).then_some(sealed)))
    }

    /// Whether the grant `id` exists and expires after `now` (read only).
    pub async fn pending_grant_is_live(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        let found = on_pool!(self, pool => {
            sqlx::query("SELECT 1 AS one FROM pending_grants WHERE id = $1 AND expires_at > $2")
                .bind(id)
                .bind(now)
                .fetch_optional(pool)
                .await?
                .is_some()
        });
        Ok(found)
    }

    /// Deletes the grant `id` if it expired at or before `now`.
    pub async fn delete_pending_grant_if_expired(
        &self,
        id: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query("DELETE FROM pending_grants WHERE id = $1 AND expires_at <= $2")
                .bind(id)
                .bind(now)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Deletes every grant that expired at or before `now`; returns how many.
    pub async fn delete_expired_pending_grants(&self, now: i64) -> Result<u64, StoreError> {
        let done = on_pool!(self, pool => {
            sqlx::query("DELETE FROM pending_grants WHERE expires_at <= $1")
                .bind(now)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(done)
    }
}
