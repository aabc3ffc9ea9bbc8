//! The outbox: work that must happen after a commit (a webhook to the brand's backend, an away
//! push) or after an answer from outside (a dead-token record), written in the same
//! transaction as the change that causes it (or, for an answer from outside, before brandgate
//! answers its own caller) and worked off by a dispatcher, on any node.
//!
//! Contract (beyond the store's general one):
//! - Items are written only together with their cause: [`NewEvent::outbox`](super::relay::NewEvent)
//!   items commit with the event (and get its conversation and sequence), the ones given to
//!   `create_conversation` / `close_conversation` with that change. Nothing is written if the
//!   change is not. [`Store::add_outbox_item`] writes one on its own, for a cause outside the
//!   store; it does not renew a pending item with its `dedupe_key` but leaves it alone.
//! - An item with a `dedupe_key` already pending is not added again; the pending one is marked
//!   renewed instead (its `version` grows and it takes the new sequence), so a dispatcher that
//!   claimed it before learns, when it completes, that there is more to do.
//! - Items of one `lane` are handed out in the order they were written, one at a time: only the
//!   oldest pending item of a lane can be claimed, none while an item of the lane holds a live
//!   lease, and the next only once it is completed or parked. Lanes are independent.
//! - [`Store::claim_outbox`] leases due items of the kinds asked for to one owner; of owners
//!   claiming at once, on any number of nodes, each item goes to exactly one. A lease that
//!   runs out (its node died) makes the item claimable again. Completing, rescheduling or
//!   parking an item needs its owner's lease: once another owner claimed it, the first
//!   changes nothing (a lease that ran out but was not claimed again still counts).
//! - Parked items (attempts used up) stay, for the CLI to list and retry, until purged; parking
//!   drops an item's `dedupe_key`, so the next write with that key makes a new item.
//!
//! Payloads carry references and metadata, never a secret or message text: what needs text
//! reads the sealed event when it delivers, and a device token is sealed in its payload.

use sqlx::Row;

use super::{Store, StoreError};
use crate::clock::UnixMillis;
use crate::ids::ConversationId;

/// An item to write with its cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOutboxItem {
    /// Stable across attempts and nodes: receivers use it to drop repeats.
    pub id: String,
    /// What the dispatcher does with it (`webhook`, `away_push`, `dead_token`).
    pub kind: String,
    /// Items of one lane are delivered in order, one at a time.
    pub lane: String,
    /// At most one pending item per key (see the module's contract).
    pub dedupe_key: Option<String>,
    /// Kind-specific JSON.
    pub payload: Vec<u8>,
    pub created_at: UnixMillis,
    /// Not claimed before.
    pub next_at: UnixMillis,
}

/// An item as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxItem {
    /// Write order, across lanes.
    pub position: i64,
    pub id: String,
    pub kind: String,
    pub lane: String,
    pub dedupe_key: Option<String>,
    pub conversation_id: Option<ConversationId>,
    /// The sequence of the event it was written with (the newest one, once renewed).
    pub seq: Option<i64>,
    pub payload: Vec<u8>,
    pub created_at: UnixMillis,
    pub next_at: UnixMillis,
    /// Attempts made so far.
    pub attempts: i64,
    pub last_error: Option<String>,
    /// Parked: attempts used up, waiting for an operator.
    pub parked: bool,
    /// Grows each time a write with the same `dedupe_key` renews it.
    pub version: i64,
}

/// Pending and parked items of one kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxCount {
    pub kind: String,
    pub pending: i64,
    pub parked: i64,
}

/// What to do with a claimed item once its attempt is over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settle<'a> {
    /// Done (or nothing to do): removed, unless renewed since the claim; a renewed item is
    /// released as if written at `renewed_at` (its `created_at`), due at `renewed_due`.
    Done {
        renewed_at: UnixMillis,
        renewed_due: UnixMillis,
    },
    /// Try again at `next_at`, recording the error and the attempt.
    Retry { next_at: UnixMillis, error: &'a str },
    /// Not yet: released, due at `next_at`, the attempt not counted.
    Defer { next_at: UnixMillis },
    /// Attempts used up: parked with its error, at `at` (purging counts from it).
    Park { error: &'a str, at: UnixMillis },
}

/// What [`Store::settle_outbox`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    Removed,
    /// Released for more work (renewed), rescheduled or parked.
    Kept,
    /// The lease was no longer the owner's: nothing changed.
    LeaseLost,
}

macro_rules! outbox_columns {
    () => {
        "position, id, kind, lane, dedupe_key, conversation_id, seq, payload, created_at, next_at, \
         attempts, last_error, parked, version"
    };
}

/// An `OutboxItem` from a result row of either backend.
macro_rules! outbox_row {
    ($r:expr) => {
        OutboxItem {
            position: $r.try_get("position")?,
            id: $r.try_get("id")?,
            kind: $r.try_get("kind")?,
            lane: $r.try_get("lane")?,
            dedupe_key: $r.try_get("dedupe_key")?,
            conversation_id: $r.try_get("conversation_id")?,
            seq: $r.try_get("seq")?,
            payload: $r.try_get("payload")?,
            created_at: $r.try_get("created_at")?,
            next_at: $r.try_get("next_at")?,
            attempts: $r.try_get("attempts")?,
            last_error: $r.try_get("last_error")?,
            parked: $r.try_get("parked")?,
            version: $r.try_get("version")?,
        }
    };
}

/// Writes `items` in transaction `$tx` of either backend, for `conversation` (and `seq`); an
/// item whose `dedupe_key` is pending renews that one, or, with `$on_conflict` given, does what
/// it says.
macro_rules! insert_outbox {
    ($tx:expr, $items:expr, $conversation:expr, $seq:expr) => {
        insert_outbox!(
            $tx,
            $items,
            $conversation,
            $seq,
            "DO UPDATE SET version = outbox.version + 1, seq = excluded.seq"
        )
    };
    ($tx:expr, $items:expr, $conversation:expr, $seq:expr, $on_conflict:literal) => {{
        let mut done: Result<(), sqlx::Error> = Ok(());
        for item in $items {
            let written = sqlx::query(concat!(
                "INSERT INTO outbox (id, kind, lane, dedupe_key, conversation_id, seq, payload, created_at, next_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (dedupe_key) ",
                $on_conflict
            ))
            .bind(&item.id)
            .bind(&item.kind)
            .bind(&item.lane)
            .bind(&item.dedupe_key)
            .bind($conversation)
            .bind($seq)
            .bind(&item.payload)
            .bind(item.created_at)
            .bind(item.next_at)
            .execute(&mut *$tx)
            .await;
            if let Err(e) = written {
                done = Err(e);
                break;
            }
        }
        done
    }};
}
pub(super) use insert_outbox;

/// The claim, with `$lock` (PostgreSQL: `FOR UPDATE OF o SKIP LOCKED`) on the candidates.
///
/// It walks the lanes, not the items: `lanes` steps from one lane name to the next through
/// the `(lane, position)` index, each lane's head is its smallest pending position, and a lane
/// with a live lease (found through the index of leased items) is passed over. A claim thus
/// costs in proportion to the lanes waiting, however many items wait behind their heads (a
/// scan of the items in order made every claim read the whole backlog).
macro_rules! claim_sql {
    ($lock:literal) => {
        concat!(
            "WITH RECURSIVE lanes(lane) AS (\
             SELECT MIN(lane) FROM outbox WHERE NOT parked \
             UNION ALL \
             SELECT (SELECT MIN(n.lane) FROM outbox n WHERE NOT n.parked AND n.lane > lanes.lane) \
             FROM lanes WHERE lanes.lane IS NOT NULL) \
             UPDATE outbox SET lease_owner = $1, lease_until = $2 WHERE position IN (\
             SELECT o.position FROM lanes JOIN outbox o ON o.position = \
             (SELECT MIN(h.position) FROM outbox h WHERE h.lane = lanes.lane AND NOT h.parked) \
             WHERE NOT o.parked AND o.next_at <= $3 \
             AND (o.lease_until IS NULL OR o.lease_until <= $3) \
             AND (',' || $5 || ',') LIKE ('%,' || o.kind || ',%') \
             AND NOT EXISTS (SELECT 1 FROM outbox p WHERE p.lane = o.lane AND NOT p.parked \
             AND p.lease_until IS NOT NULL AND p.lease_until > $3) \
             ORDER BY o.position LIMIT $4 ",
            $lock,
            ") RETURNING ",
            outbox_columns!()
        )
    };
}

impl Store {
    /// Writes `item` on its own, for work whose cause is outside the store (a provider declared
    /// a device token dead). While an item with its `dedupe_key` is pending, nothing is written:
    /// that one does the same work.
    pub async fn add_outbox_item(&self, item: &NewOutboxItem) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            let mut conn = pool.acquire().await?;
            insert_outbox!(conn, [item], None::<&str>, None::<i64>, "DO NOTHING")?;
        });
        Ok(())
    }

    /// Leases up to `limit` due items of `kinds` to `owner` until `lease_until` (see the
    /// contract), oldest first. A lane with a live lease on any of its items gives none.
    pub async fn claim_outbox(
        &self,
        owner: &str,
        kinds: &[&str],
        now: UnixMillis,
        lease_until: UnixMillis,
        limit: i64,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        // Kinds are fixed words of this program (letters and `_`), matched in a list.
        let kinds = kinds.join(",");
        let mut items = match self {
            Store::Sqlite(pool, _) => {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let rows = sqlx::query(claim_sql!(""))
                    .bind(owner)
                    .bind(lease_until)
                    .bind(now)
                    .bind(limit)
                    .bind(&kinds)
                    .fetch_all(&mut *tx)
                    .await?;
                tx.commit().await?;
                rows.iter()
                    .map(|r| -> Result<OutboxItem, sqlx::Error> { Ok(outbox_row!(r)) })
                    .collect::<Result<Vec<_>, _>>()?
            }
            Store::Postgres(pool) => sqlx::query(claim_sql!("FOR UPDATE OF o SKIP LOCKED"))
                .bind(owner)
                .bind(lease_until)
                .bind(now)
                .bind(limit)
                .bind(&kinds)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| -> Result<OutboxItem, sqlx::Error> { Ok(outbox_row!(r)) })
                .collect::<Result<Vec<_>, _>>()?,
        };
        items.sort_by_key(|i| i.position);
        Ok(items)
    }

    /// Ends `owner`'s attempt at a claimed `item` (claimed at its `version`).
    pub async fn settle_outbox(
        &self,
        item: &OutboxItem,
        owner: &str,
        how: Settle<'_>,
    ) -> Result<Settled, StoreError> {
        let (removed, kept) = on_pool!(self, pool => {
            match how {
                Settle::Done { renewed_at, renewed_due } => {
                    let removed = sqlx::query(
                        "DELETE FROM outbox WHERE position = $1 AND lease_owner = $2 AND version = $3",
                    )
                    .bind(item.position)
                    .bind(owner)
                    .bind(item.version)
                    .execute(pool)
                    .await?
                    .rows_affected();
                    let kept = if removed == 0 {
                        sqlx::query(
                            "UPDATE outbox SET lease_owner = NULL, lease_until = NULL, next_at = $3, \
                             created_at = $4 WHERE position = $1 AND lease_owner = $2",
                        )
                        .bind(item.position)
                        .bind(owner)
                        .bind(renewed_due)
                        .bind(renewed_at)
                        .execute(pool)
                        .await?
                        .rows_affected()
                    } else {
                        0
                    };
                    (removed, kept)
                }
                Settle::Retry { next_at, error } => {
                    let kept = sqlx::query(
                        "UPDATE outbox SET lease_owner = NULL, lease_until = NULL, next_at = $3, \
                         attempts = attempts + 1, last_error = $4 WHERE position = $1 AND lease_owner = $2",
                    )
                    .bind(item.position)
                    .bind(owner)
                    .bind(next_at)
                    .bind(error)
                    .execute(pool)
                    .await?
                    .rows_affected();
                    (0, kept)
                }
                Settle::Defer { next_at } => {
                    let kept = sqlx::query(
                        "UPDATE outbox SET lease_owner = NULL, lease_until = NULL, next_at = $3 \
                         WHERE position = $1 AND lease_owner = $2",
                    )
                    .bind(item.position)
                    .bind(owner)
                    .bind(next_at)
                    .execute(pool)
                    .await?
                    .rows_affected();
                    (0, kept)
                }
                Settle::Park { error, at } => {
                    // The time it was parked goes in next_at.
                    let kept = sqlx::query(
                        "UPDATE outbox SET lease_owner = NULL, lease_until = NULL, parked = TRUE, \
                         dedupe_key = NULL, attempts = attempts + 1, last_error = $3, next_at = $4 \
                         WHERE position = $1 AND lease_owner = $2",
                    )
                    .bind(item.position)
                    .bind(owner)
                    .bind(error)
                    .bind(at)
                    .execute(pool)
                    .await?
                    .rows_affected();
                    (0, kept)
                }
            }
        });
        Ok(match (removed, kept) {
            (1.., _) => Settled::Removed,
            (_, 1..) => Settled::Kept,
            _ => Settled::LeaseLost,
        })
    }

    /// Extends `owner`'s lease on the item at `position` until `lease_until` (its attempt is
    /// still running). Returns whether `owner` still held it.
    pub async fn renew_outbox_lease(
        &self,
        position: i64,
        owner: &str,
        lease_until: UnixMillis,
    ) -> Result<bool, StoreError> {
        let renewed = on_pool!(self, pool => {
            sqlx::query("UPDATE outbox SET lease_until = $3 WHERE position = $1 AND lease_owner = $2")
                .bind(position)
                .bind(owner)
                .bind(lease_until)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(renewed == 1)
    }

    /// Gives back every lease `owner` holds (a node stopping): the items are claimable at once.
    pub async fn release_outbox(&self, owner: &str) -> Result<u64, StoreError> {
        let released = on_pool!(self, pool => {
            sqlx::query("UPDATE outbox SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = $1")
                .bind(owner)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(released)
    }

    /// At start-up: gives back the leases no running process can hold. On SQLite, which one
    /// process serves, every lease left is a dead process's (a crash), so all are given back;
    /// on PostgreSQL other nodes may be working, so nothing is (leases of a dead node run out).
    pub async fn release_orphaned_outbox_leases(&self) -> Result<u64, StoreError> {
        match self {
            Store::Sqlite(pool, _) => Ok(sqlx::query(
                "UPDATE outbox SET lease_owner = NULL, lease_until = NULL WHERE lease_owner IS NOT NULL",
            )
            .execute(pool)
            .await?
            .rows_affected()),
            Store::Postgres(_) => Ok(0),
        }
    }

    /// Items in write order, at most `limit`: all, or only parked (`Some(true)`) or pending
    /// (`Some(false)`) ones.
    pub async fn list_outbox(
        &self,
        parked: Option<bool>,
        limit: i64,
    ) -> Result<Vec<OutboxItem>, StoreError> {
        let rows = on_pool!(self, pool => {
            sqlx::query(concat!("SELECT ", outbox_columns!(), " FROM outbox \
                 WHERE ($1 IS NULL OR parked = $1) ORDER BY position LIMIT $2"))
                .bind(parked)
                .bind(limit)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| -> Result<OutboxItem, sqlx::Error> { Ok(outbox_row!(r)) })
                .collect::<Result<Vec<_>, _>>()?
        });
        Ok(rows)
    }

    /// Puts parked items back to work, due at `now` with their attempts reset: the one with
    /// `id`, or every parked one. Returns how many.
    pub async fn retry_parked_outbox(
        &self,
        id: Option<&str>,
        now: UnixMillis,
    ) -> Result<u64, StoreError> {
        let done = on_pool!(self, pool => {
            sqlx::query("UPDATE outbox SET parked = FALSE, attempts = 0, next_at = $2 \
                 WHERE parked AND ($1 IS NULL OR id = $1)")
                .bind(id)
                .bind(now)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(done)
    }

    /// Removes items parked before `before`. Returns how many.
    pub async fn purge_parked_outbox(&self, before: UnixMillis) -> Result<u64, StoreError> {
        let done = on_pool!(self, pool => {
            sqlx::query("DELETE FROM outbox WHERE parked AND next_at < $1")
                .bind(before)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(done)
    }

    /// Pending and parked items by kind, in kind order.
    pub async fn count_outbox(&self) -> Result<Vec<OutboxCount>, StoreError> {
        let rows = on_pool!(self, pool => {
            sqlx::query(
                "SELECT kind, \
                 SUM(CASE WHEN parked THEN 0 ELSE 1 END) AS pending, \
                 SUM(CASE WHEN parked THEN 1 ELSE 0 END) AS parked \
                 FROM outbox GROUP BY kind ORDER BY kind",
            )
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| -> Result<OutboxCount, sqlx::Error> {
                Ok(OutboxCount {
                    kind: r.try_get("kind")?,
                    pending: r.try_get("pending")?,
                    parked: r.try_get("parked")?,
                })
            })
            .collect::<Result<Vec<_>, _>>()?
        });
        Ok(rows)
    }
}
