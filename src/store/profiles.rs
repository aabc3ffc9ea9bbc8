//! What each consumer's identity token said about it when it last connected (name, email,
//! phone, `lp_sdes`), for the agents who hold its conversations. One record per (account,
//! consumer), replaced at each authentication. The value is sealed by the caller; the store
//! never sees a name or an address.

use super::{Store, StoreError};
use crate::ids::ConsumerId;

impl Store {
    /// Records the consumer's sealed profile, replacing the one before.
    pub async fn put_consumer_profile(
        &self,
        account: &str,
        consumer_id: &ConsumerId,
        sealed: &[u8],
        updated_at: i64,
    ) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO consumer_profiles (account, consumer_id, sealed, updated_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (account, consumer_id) \
                 DO UPDATE SET sealed = excluded.sealed, updated_at = excluded.updated_at",
            )
            .bind(account)
            .bind(consumer_id)
            .bind(sealed)
            .bind(updated_at)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// The consumer's sealed profile, if it ever connected.
    pub async fn get_consumer_profile(
        &self,
        account: &str,
        consumer_id: &ConsumerId,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let found = on_pool!(self, pool => {
            sqlx::query_scalar::<_, Vec<u8>>(
                "SELECT sealed FROM consumer_profiles WHERE account = $1 AND consumer_id = $2",
            )
            .bind(account)
            .bind(consumer_id)
            .fetch_optional(pool)
            .await?
        });
        Ok(found)
    }
}
