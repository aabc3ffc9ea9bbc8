//! Push de-duplication shared by every node and kept across restarts: who is delivering a push
//! (by its idempotency key, a SHA-256 digest: never a device token), and which were delivered
//! within the window.
//!
//! Contract: operations are applied in batches, each batch in one transaction, in order.
//! - `Claim` succeeds (`Claimed`) when no live row holds the key (none, or its `until` passed)
//!   or the claimer's own row still says sending: the key is then the owner's, `sending` until
//!   `until`. Otherwise it answers what the live row says: `Delivered`, or `Sending` (another
//!   owner is delivering it). Of owners claiming one key at once, on any number of nodes,
//!   exactly one gets `Claimed`.
//! - `Delivered` marks the key delivered until `until` (the window), whoever holds it (also when
//!   the claim ran out or was purged); `Release` removes the owner's key if it is still
//!   sending, never another owner's.

use sqlx::Row;

use super::{Store, StoreError};
use crate::clock::UnixMillis;

/// One operation on the shared claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushClaimOp {
    Claim {
        key: [u8; 32],
        owner: String,
        now: UnixMillis,
        until: UnixMillis,
    },
    Delivered {
        key: [u8; 32],
        owner: String,
        until: UnixMillis,
    },
    Release {
        key: [u8; 32],
        owner: String,
    },
}

impl PushClaimOp {
    /// The push's key the operation is about.
    pub fn key(&self) -> &[u8; 32] {
        match self {
            PushClaimOp::Claim { key, .. }
            | PushClaimOp::Delivered { key, .. }
            | PushClaimOp::Release { key, .. } => key,
        }
    }
}

/// What an operation found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushClaimOutcome {
    /// The key is now the claimer's.
    Claimed,
    /// Delivered within the window (by anyone).
    Delivered,
    /// Another owner is delivering it.
    Sending,
    /// `Delivered` or `Release` applied (or there was nothing of the owner's to change).
    Done,
}

/// Applies `ops` in `$tx` of either backend, collecting outcomes.
macro_rules! apply_ops {
    ($tx:expr, $ops:expr) => {{
        let mut outcomes = Vec::with_capacity($ops.len());
        for op in $ops {
            let outcome = match op {
                PushClaimOp::Claim { key, owner, now, until } => {
                    let took = sqlx::query(
                        "INSERT INTO push_claims (key, delivered, owner, until) VALUES ($1, FALSE, $2, $3) \
                         ON CONFLICT (key) DO UPDATE SET delivered = FALSE, owner = excluded.owner, until = excluded.until \
                         WHERE push_claims.until <= $4 \
                         OR (push_claims.owner = excluded.owner AND NOT push_claims.delivered)",
                    )
                    .bind(&key[..])
                    .bind(owner)
                    .bind(*until)
                    .bind(*now)
                    .execute(&mut *$tx)
                    .await?
                    .rows_affected();
                    if took == 1 {
                        PushClaimOutcome::Claimed
                    } else {
                        let delivered = sqlx::query("SELECT delivered FROM push_claims WHERE key = $1")
                            .bind(&key[..])
                            .fetch_optional(&mut *$tx)
                            .await?
                            .map(|r| r.try_get::<bool, _>("delivered"))
                            .transpose()?;
                        match delivered {
                            Some(true) => PushClaimOutcome::Delivered,
                            // Released between the two statements: another claim takes it.
                            Some(false) | None => PushClaimOutcome::Sending,
                        }
                    }
                }
                PushClaimOp::Delivered { key, owner, until } => {
                    // Whoever holds the row now: the push was delivered, that is what counts.
                    sqlx::query(
                        "INSERT INTO push_claims (key, delivered, owner, until) VALUES ($1, TRUE, $2, $3) \
                         ON CONFLICT (key) DO UPDATE SET delivered = TRUE, owner = excluded.owner, until = excluded.until",
                    )
                    .bind(&key[..])
                    .bind(owner)
                    .bind(*until)
                    .execute(&mut *$tx)
                    .await?;
                    PushClaimOutcome::Done
                }
                PushClaimOp::Release { key, owner } => {
                    sqlx::query("DELETE FROM push_claims WHERE key = $1 AND owner = $2 AND NOT delivered")
                        .bind(&key[..])
                        .bind(owner)
                        .execute(&mut *$tx)
                        .await?;
                    PushClaimOutcome::Done
                }
            };
            outcomes.push(outcome);
        }
        outcomes
    }};
}

/// Applies `ops`, whose keys are all different (so their order does not matter), in `$tx` of
/// backend `$db` with a few statements for the whole batch: one for the claims, one to read
/// what the losing claims found, one for the delivered marks; releases (failed pushes, rare)
/// one each.
macro_rules! apply_set {
    ($tx:expr, $ops:expr, $db:ty) => {{
        let ops: &[PushClaimOp] = $ops;
        let mut outcomes = vec![PushClaimOutcome::Done; ops.len()];
        let claims: Vec<(usize, Vec<u8>, String, UnixMillis, UnixMillis)> = ops
            .iter()
            .enumerate()
            .filter_map(|(i, op)| match op {
                PushClaimOp::Claim { key, owner, now, until } => {
                    Some((i, key.to_vec(), owner.clone(), *now, *until))
                }
                _ => None,
            })
            .collect();
        if let Some(now) = claims.iter().map(|c| c.3).max() {
            let mut insert = sqlx::QueryBuilder::<$db>::new(
                "INSERT INTO push_claims (key, delivered, owner, until) ",
            );
            insert.push_values(&claims, |mut row, c| {
                row.push_bind(c.1.clone())
                    .push("FALSE")
                    .push_bind(c.2.clone())
                    .push_bind(c.4);
            });
            insert.push(
                " ON CONFLICT (key) DO UPDATE SET delivered = FALSE, owner = excluded.owner, \
                 until = excluded.until WHERE push_claims.until <= ",
            );
            insert.push_bind(now);
            insert.push(
                " OR (push_claims.owner = excluded.owner AND NOT push_claims.delivered) RETURNING key",
            );
            let won: std::collections::HashSet<Vec<u8>> = insert
                .build()
                .fetch_all(&mut *$tx)
                .await?
                .iter()
                .map(|r| r.try_get::<Vec<u8>, _>("key"))
                .collect::<Result<_, _>>()?;
            let lost: Vec<_> = claims.iter().filter(|c| !won.contains(&c.1)).collect();
            let mut found = std::collections::HashMap::new();
            if !lost.is_empty() {
                let mut select = sqlx::QueryBuilder::<$db>::new(
                    "SELECT key, delivered FROM push_claims WHERE key IN (",
                );
                let mut keys = select.separated(", ");
                for c in &lost {
                    keys.push_bind(c.1.clone());
                }
                keys.push_unseparated(")");
                for r in select.build().fetch_all(&mut *$tx).await? {
                    found.insert(r.try_get::<Vec<u8>, _>("key")?, r.try_get::<bool, _>("delivered")?);
                }
            }
            for c in &claims {
                outcomes[c.0] = if won.contains(&c.1) {
                    PushClaimOutcome::Claimed
                } else if found.get(&c.1) == Some(&true) {
                    PushClaimOutcome::Delivered
                } else {
                    // Sending elsewhere (or released just now: the next claim takes it).
                    PushClaimOutcome::Sending
                };
            }
        }
        let delivered: Vec<(Vec<u8>, String, UnixMillis)> = ops
            .iter()
            .filter_map(|op| match op {
                PushClaimOp::Delivered { key, owner, until } => {
                    Some((key.to_vec(), owner.clone(), *until))
                }
                _ => None,
            })
            .collect();
        if !delivered.is_empty() {
            let mut upsert = sqlx::QueryBuilder::<$db>::new(
                "INSERT INTO push_claims (key, delivered, owner, until) ",
            );
            upsert.push_values(&delivered, |mut row, d| {
                row.push_bind(d.0.clone())
                    .push("TRUE")
                    .push_bind(d.1.clone())
                    .push_bind(d.2);
            });
            upsert.push(
                " ON CONFLICT (key) DO UPDATE SET delivered = TRUE, owner = excluded.owner, \
                 until = excluded.until",
            );
            upsert.build().execute(&mut *$tx).await?;
        }
        let releases: Vec<PushClaimOp> = ops
            .iter()
            .filter(|op| matches!(op, PushClaimOp::Release { .. }))
            .cloned()
            .collect();
        apply_ops!($tx, &releases);
        outcomes
    }};
}

/// Whether no two of `ops` name the same key.
fn keys_distinct(ops: &[PushClaimOp]) -> bool {
    let mut keys: Vec<&[u8; 32]> = ops.iter().map(PushClaimOp::key).collect();
    keys.sort_unstable();
    keys.windows(2).all(|w| w[0] != w[1])
}

impl Store {
    /// Applies `ops` in one transaction, in order (see the contract); an outcome per op.
    pub async fn apply_push_claims(
        &self,
        ops: &[PushClaimOp],
    ) -> Result<Vec<PushClaimOutcome>, StoreError> {
        let outcomes = match self {
            Store::Sqlite(pool, _) => {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let outcomes = if keys_distinct(ops) {
                    apply_set!(tx, ops, sqlx::Sqlite)
                } else {
                    apply_ops!(tx, ops)
                };
                tx.commit().await?;
                outcomes
            }
            Store::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                // A claim lost to a database crash costs at most a repeated push, never data:
                // the commit need not wait for the disk (other transactions still do).
                sqlx::query("SET LOCAL synchronous_commit = off")
                    .execute(&mut *tx)
                    .await?;
                let outcomes = if keys_distinct(ops) {
                    apply_set!(tx, ops, sqlx::Postgres)
                } else {
                    apply_ops!(tx, ops)
                };
                tx.commit().await?;
                outcomes
            }
        };
        Ok(outcomes)
    }

    /// Removes up to `limit` claims whose `until` passed before `now` (on PostgreSQL, rows
    /// another transaction holds are skipped, so a purge never waits for claims or deadlocks
    /// with them). Returns how many.
    pub async fn purge_push_claims(&self, now: UnixMillis, limit: i64) -> Result<u64, StoreError> {
        let done = match self {
            Store::Sqlite(pool, _) => sqlx::query(
                "DELETE FROM push_claims WHERE key IN (SELECT key FROM push_claims WHERE until < $1 LIMIT $2)",
            )
            .bind(now)
            .bind(limit)
            .execute(pool)
            .await?
            .rows_affected(),
            Store::Postgres(pool) => sqlx::query(
                "DELETE FROM push_claims WHERE key IN (SELECT key FROM push_claims WHERE until < $1 \
                 ORDER BY key LIMIT $2 FOR UPDATE SKIP LOCKED)",
            )
            .bind(now)
            .bind(limit)
            .execute(pool)
            .await?
            .rows_affected(),
        };
        Ok(done)
    }
}
