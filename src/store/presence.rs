//! Which consumers have a socket open, on any node: each node writes a row per consumer it
//! holds a socket of, keeps its rows alive while it runs, and removes them when the last
//! socket closes or the node stops. A node that dies leaves rows that expire.
//!
//! Contract: `is_consumer_present` is true while some node's unexpired row names the consumer;
//! `set_consumer_present(.., false)` removes only that node's row; `refresh_node_presence`
//! and `clear_node_presence` also remove any node's rows that expired (a dead node's).

use super::{Store, StoreError};
use crate::clock::UnixMillis;
use crate::ids::ConsumerId;

impl Store {
    /// Records (`present`) or removes this node's socket(s) of a consumer.
    pub async fn set_consumer_present(
        &self,
        node: &str,
        account: &str,
        consumer_id: &ConsumerId,
        present: bool,
        expires_at: UnixMillis,
    ) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            if present {
                sqlx::query(
                    "INSERT INTO consumer_presence (account, consumer_id, node, expires_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (account, consumer_id, node) DO UPDATE SET expires_at = excluded.expires_at",
                )
                .bind(account)
                .bind(consumer_id)
                .bind(node)
                .bind(expires_at)
                .execute(pool)
                .await?;
            } else {
                sqlx::query("DELETE FROM consumer_presence WHERE account = $1 AND consumer_id = $2 AND node = $3")
                    .bind(account)
                    .bind(consumer_id)
                    .bind(node)
                    .execute(pool)
                    .await?;
            }
        });
        Ok(())
    }

    /// Keeps every row of `node` alive until `expires_at`, and removes rows that expired
    /// before `now` (a dead node's).
    pub async fn refresh_node_presence(
        &self,
        node: &str,
        now: UnixMillis,
        expires_at: UnixMillis,
    ) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query("UPDATE consumer_presence SET expires_at = $2 WHERE node = $1")
                .bind(node)
                .bind(expires_at)
                .execute(pool)
                .await?;
            sqlx::query("DELETE FROM consumer_presence WHERE expires_at < $1")
                .bind(now)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Removes every row of `node` (it stops), and rows of any node that expired before `now`.
    pub async fn clear_node_presence(&self, node: &str, now: UnixMillis) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query("DELETE FROM consumer_presence WHERE node = $1 OR expires_at < $2")
                .bind(node)
                .bind(now)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    /// Whether a node holds a socket of the consumer (a row not expired at `now`).
    pub async fn is_consumer_present(
        &self,
        account: &str,
        consumer_id: &ConsumerId,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        let found = on_pool!(self, pool => {
            sqlx::query_scalar::<_, i64>(
                "SELECT expires_at FROM consumer_presence WHERE account = $1 AND consumer_id = $2 AND expires_at > $3 LIMIT 1",
            )
            .bind(account)
            .bind(consumer_id)
            .bind(now)
            .fetch_optional(pool)
            .await?
            .is_some()
        });
        Ok(found)
    }
}
