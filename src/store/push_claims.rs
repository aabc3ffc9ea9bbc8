//! Push de-duplication shared by every node and kept across restarts: who is delivering a push
//! (by its idempotency key, a SHA-256 digest: never a device token), and which were delivered
//! within the window.
//!
//! Contract: operations are applied in batches, in order (a batch is not atomic: each
//! operation changes one row on its own).
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

/// Splits `ops` into runs, in order, in which no key repeats: within a run the order of
/// operations does not matter (each touches its own row), so a run is applied set-wise.
fn distinct_runs(ops: &[PushClaimOp]) -> Vec<&[PushClaimOp]> {
    let mut runs = Vec::new();
    let mut start = 0;
    let mut seen = std::collections::HashSet::new();
    for (i, op) in ops.iter().enumerate() {
        if !seen.insert(*op.key()) {
            runs.push(&ops[start..i]);
            start = i;
            seen.clear();
            seen.insert(*op.key());
        }
    }
    if start < ops.len() {
        runs.push(&ops[start..]);
    }
    runs
}

/// A row as claims and marks write it: key, owner, until.
type ClaimRow = (Vec<u8>, String, i64);

/// The operations of one run, by kind.
#[derive(Default)]
struct Sorted {
    claims: Vec<ClaimRow>,
    /// Where each claim stands in the run (its outcome goes there).
    claim_at: Vec<usize>,
    /// The latest `now` of the claims: a row past it is free.
    now: i64,
    delivered: Vec<ClaimRow>,
    /// Key and owner.
    releases: Vec<ClaimRow>,
}

/// `rows` as the columns PostgreSQL takes as arrays.
fn columns(rows: &[ClaimRow]) -> (Vec<&[u8]>, Vec<&str>, Vec<i64>) {
    (
        rows.iter().map(|r| &r.0[..]).collect(),
        rows.iter().map(|r| r.1.as_str()).collect(),
        rows.iter().map(|r| r.2).collect(),
    )
}

impl Sorted {
    fn of(run: &[PushClaimOp]) -> Sorted {
        let mut sorted = Sorted::default();
        for (i, op) in run.iter().enumerate() {
            match op {
                PushClaimOp::Claim {
                    key,
                    owner,
                    now,
                    until,
                } => {
                    sorted.now = sorted.now.max(now.0);
                    sorted.claim_at.push(i);
                    sorted.claims.push((key.to_vec(), owner.clone(), until.0));
                }
                PushClaimOp::Delivered { key, owner, until } => {
                    sorted
                        .delivered
                        .push((key.to_vec(), owner.clone(), until.0))
                }
                PushClaimOp::Release { key, owner } => {
                    sorted.releases.push((key.to_vec(), owner.clone(), 0))
                }
            }
        }
        sorted
    }
}

/// Where claims are written: a connection pool of their own (on PostgreSQL
/// [`WRITER_CONNECTIONS`] beside the store's `max_connections`; on SQLite one connection),
/// whose commits do not wait for the disk (PostgreSQL: `synchronous_commit = off`; SQLite:
/// `synchronous = NORMAL`). A claim lost to a power cut (not to a crash of brandgate) costs at
/// most one repeated push; every other write of the store still waits for the disk. A batch's
/// statements are not one transaction: each operation is one row's change, and applying a
/// batch again is harmless.
#[derive(Clone, Debug)]
pub enum PushClaimWriter {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
}

/// Connections the writer keeps.
const WRITER_CONNECTIONS: u32 = 2;

impl Store {
    /// The claims' writer, on connections of its own to this store's database (opened when
    /// first used).
    pub fn push_claim_writer(&self) -> PushClaimWriter {
        let acquire = std::time::Duration::from_secs(10);
        match self {
            Store::Sqlite(pool, _) => {
                let connect = (*pool.connect_options())
                    .clone()
                    .synchronous(sqlx::sqlite::SqliteSynchronous::Normal);
                // SQLite has one writer at a time: a second connection would only wait.
                PushClaimWriter::Sqlite(
                    sqlx::sqlite::SqlitePoolOptions::new()
                        .max_connections(1)
                        .acquire_timeout(acquire)
                        .connect_lazy_with(connect),
                )
            }
            Store::Postgres(pool) => PushClaimWriter::Postgres(
                sqlx::postgres::PgPoolOptions::new()
                    .max_connections(WRITER_CONNECTIONS)
                    .acquire_timeout(acquire)
                    // A session setting (a connection pooler in session mode keeps it; one in
                    // transaction mode may not, and commits then wait for the disk again).
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            sqlx::Executor::execute(&mut *conn, "SET synchronous_commit = off")
                                .await
                                .map(|_| ())
                        })
                    })
                    .connect_lazy_with((*pool.connect_options()).clone()),
            ),
        }
    }

    /// Applies `ops` in order (see the contract), through a writer made for the call (tests
    /// and one-off use; the daemon keeps one [`PushClaimWriter`]).
    pub async fn apply_push_claims(
        &self,
        ops: &[PushClaimOp],
    ) -> Result<Vec<PushClaimOutcome>, StoreError> {
        let writer = self.push_claim_writer();
        let outcomes = writer.apply(ops).await;
        writer.close().await;
        outcomes
    }

    /// Removes the claims whose `until` passed before `now` among the keys starting with the
    /// byte `first` (keys are SHA-256 digests, spread evenly: one of 256 slices of the table,
    /// read through the primary key). On PostgreSQL, rows another transaction holds are
    /// skipped, so a purge never waits for claims or deadlocks with them. Returns how many.
    pub async fn purge_push_claims_slice(
        &self,
        now: UnixMillis,
        first: u8,
    ) -> Result<u64, StoreError> {
        let from = vec![first];
        // Keys of the next slice start at `first + 1`; the last slice ends below 33 bytes of
        // 0xff, above every 32-byte key (one bounded range either way, for the index).
        let to = match first.checked_add(1) {
            Some(next) => vec![next],
            None => vec![u8::MAX; 33],
        };
        let done = match self {
            Store::Sqlite(pool, _) => {
                sqlx::query("DELETE FROM push_claims WHERE key >= $1 AND key < $2 AND until < $3")
                    .bind(&from)
                    .bind(&to)
                    .bind(now)
                    .execute(pool)
                    .await?
                    .rows_affected()
            }
            Store::Postgres(pool) => sqlx::query(
                "DELETE FROM push_claims WHERE key IN (SELECT key FROM push_claims \
                 WHERE key >= $1 AND key < $2 AND until < $3 \
                 FOR UPDATE SKIP LOCKED)",
            )
            .bind(&from)
            .bind(&to)
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected(),
        };
        Ok(done)
    }

    /// Removes every claim whose `until` passed before `now`, slice by slice. Returns how many.
    pub async fn purge_push_claims(&self, now: UnixMillis) -> Result<u64, StoreError> {
        let mut done = 0;
        for first in 0..=u8::MAX {
            done += self.purge_push_claims_slice(now, first).await?;
        }
        Ok(done)
    }
}

impl PushClaimWriter {
    /// Applies `ops` in order (see the contract); an outcome per op. Each run of distinct keys
    /// is a few set-wise statements: the claims (with what the losing ones found), the
    /// delivered marks, the releases.
    pub async fn apply(&self, ops: &[PushClaimOp]) -> Result<Vec<PushClaimOutcome>, StoreError> {
        let mut outcomes = Vec::with_capacity(ops.len());
        for run in distinct_runs(ops) {
            let sorted = Sorted::of(run);
            let mut run_outcomes = vec![PushClaimOutcome::Done; run.len()];
            let claimed = match self {
                PushClaimWriter::Sqlite(pool) => sqlite_run(pool, &sorted).await?,
                PushClaimWriter::Postgres(pool) => postgres_run(pool, &sorted).await?,
            };
            for (i, outcome) in sorted.claim_at.iter().zip(claimed) {
                run_outcomes[*i] = outcome;
            }
            outcomes.extend(run_outcomes);
        }
        Ok(outcomes)
    }

    /// How many batches can usefully be under way at once (SQLite: one writer at a time).
    pub fn concurrency(&self) -> usize {
        match self {
            PushClaimWriter::Sqlite(_) => 1,
            PushClaimWriter::Postgres(_) => WRITER_CONNECTIONS as usize,
        }
    }

    /// Closes the writer's connections.
    pub async fn close(&self) {
        match self {
            PushClaimWriter::Sqlite(pool) => pool.close().await,
            PushClaimWriter::Postgres(pool) => pool.close().await,
        }
    }
}

/// What a claim found: taken, or the live row's state.
fn claim_outcome(won: bool, delivered: Option<bool>) -> PushClaimOutcome {
    match (won, delivered) {
        (true, _) => PushClaimOutcome::Claimed,
        (false, Some(true)) => PushClaimOutcome::Delivered,
        // Another owner's live claim (or one that ended since): it is being delivered.
        (false, _) => PushClaimOutcome::Sending,
    }
}

/// One run on PostgreSQL: fixed statements over arrays (prepared once per connection, whatever
/// the batch's size), each its own transaction; rows are written in key order, so two nodes'
/// runs lock them in the same order.
async fn postgres_run(
    pool: &sqlx::PgPool,
    run: &Sorted,
) -> Result<Vec<PushClaimOutcome>, StoreError> {
    let mut outcomes = Vec::with_capacity(run.claims.len());
    if !run.claims.is_empty() {
        let (keys, owners, untils) = columns(&run.claims);
        // The final SELECT reads the rows as the statement's snapshot saw them: for a losing
        // claim, the live row that beat it (a row another transaction committed during the
        // statement shows as none: `Sending`, and the claimer asks again shortly). One index
        // look-up per key: a join would let the planner scan the whole table, which holds a
        // window's worth of pushes.
        let rows = sqlx::query(
            "WITH input AS (SELECT * FROM UNNEST($1::bytea[], $2::text[], $3::bigint[]) \
             WITH ORDINALITY AS i(key, owner, until, n)), \
             won AS (INSERT INTO push_claims (key, delivered, owner, until) \
             SELECT key, FALSE, owner, until FROM input ORDER BY key \
             ON CONFLICT (key) DO UPDATE SET delivered = FALSE, owner = excluded.owner, \
             until = excluded.until WHERE push_claims.until <= $4 \
             OR (push_claims.owner = excluded.owner AND NOT push_claims.delivered) RETURNING key) \
             SELECT w.key IS NOT NULL AS won, \
             (SELECT p.delivered FROM push_claims p WHERE p.key = i.key) AS delivered \
             FROM input i LEFT JOIN won w ON w.key = i.key ORDER BY i.n",
        )
        .bind(&keys)
        .bind(&owners)
        .bind(&untils)
        .bind(run.now)
        .fetch_all(pool)
        .await?;
        for r in rows {
            outcomes.push(claim_outcome(r.try_get("won")?, r.try_get("delivered")?));
        }
    }
    if !run.delivered.is_empty() {
        let (keys, owners, untils) = columns(&run.delivered);
        sqlx::query(
            "INSERT INTO push_claims (key, delivered, owner, until) \
             SELECT key, TRUE, owner, until FROM UNNEST($1::bytea[], $2::text[], $3::bigint[]) \
             AS d(key, owner, until) ORDER BY key \
             ON CONFLICT (key) DO UPDATE SET delivered = TRUE, owner = excluded.owner, \
             until = excluded.until",
        )
        .bind(&keys)
        .bind(&owners)
        .bind(&untils)
        .execute(pool)
        .await?;
    }
    if !run.releases.is_empty() {
        let (keys, owners, _) = columns(&run.releases);
        sqlx::query(
            "DELETE FROM push_claims p USING UNNEST($1::bytea[], $2::text[]) AS r(key, owner) \
             WHERE p.key = r.key AND p.owner = r.owner AND NOT p.delivered",
        )
        .bind(&keys)
        .bind(&owners)
        .execute(pool)
        .await?;
    }
    Ok(outcomes)
}

/// `INSERT INTO push_claims ... VALUES` for `rows`, `delivered` as given (SQLite).
fn insert_rows(rows: &[ClaimRow], delivered: &'static str) -> sqlx::QueryBuilder<sqlx::Sqlite> {
    let mut insert =
        sqlx::QueryBuilder::new("INSERT INTO push_claims (key, delivered, owner, until) ");
    insert.push_values(rows, |mut row, r| {
        row.push_bind(r.0.clone())
            .push(delivered)
            .push_bind(r.1.clone())
            .push_bind(r.2);
    });
    insert
}

/// One run on SQLite, in one transaction (the statements are built for the run's size;
/// SQLite prepares them in-process).
async fn sqlite_run(
    pool: &sqlx::SqlitePool,
    run: &Sorted,
) -> Result<Vec<PushClaimOutcome>, StoreError> {
    type Db = sqlx::Sqlite;
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let mut outcomes = Vec::with_capacity(run.claims.len());
    if !run.claims.is_empty() {
        let mut insert = insert_rows(&run.claims, "FALSE");
        insert.push(
            " ON CONFLICT (key) DO UPDATE SET delivered = FALSE, owner = excluded.owner, \
             until = excluded.until WHERE push_claims.until <= ",
        );
        insert.push_bind(run.now);
        insert.push(
            " OR (push_claims.owner = excluded.owner AND NOT push_claims.delivered) RETURNING key",
        );
        let won: std::collections::HashSet<Vec<u8>> = insert
            .build()
            .fetch_all(&mut *tx)
            .await?
            .iter()
            .map(|r| r.try_get::<Vec<u8>, _>("key"))
            .collect::<Result<_, _>>()?;
        let lost: Vec<&Vec<u8>> = run
            .claims
            .iter()
            .map(|c| &c.0)
            .filter(|k| !won.contains(*k))
            .collect();
        let mut found = std::collections::HashMap::new();
        if !lost.is_empty() {
            let mut select = sqlx::QueryBuilder::<Db>::new(
                "SELECT key, delivered FROM push_claims WHERE key IN (",
            );
            let mut keys = select.separated(", ");
            for key in &lost {
                keys.push_bind((*key).clone());
            }
            keys.push_unseparated(")");
            for r in select.build().fetch_all(&mut *tx).await? {
                found.insert(
                    r.try_get::<Vec<u8>, _>("key")?,
                    r.try_get::<bool, _>("delivered")?,
                );
            }
        }
        for c in &run.claims {
            outcomes.push(claim_outcome(won.contains(&c.0), found.get(&c.0).copied()));
        }
    }
    if !run.delivered.is_empty() {
        let mut upsert = insert_rows(&run.delivered, "TRUE");
        upsert.push(
            " ON CONFLICT (key) DO UPDATE SET delivered = TRUE, owner = excluded.owner, \
             until = excluded.until",
        );
        upsert.build().execute(&mut *tx).await?;
    }
    for (key, owner, _) in &run.releases {
        sqlx::query("DELETE FROM push_claims WHERE key = $1 AND owner = $2 AND NOT delivered")
            .bind(key)
            .bind(owner)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(outcomes)
}
