//! Numbered schema migrations, one list per backend, embedded in the binary. Each applied
//! version is a row in `schema_migrations`; pending ones run in order inside one transaction
//! that holds a lock (SQLite: `BEGIN IMMEDIATE`; PostgreSQL: a transaction advisory lock), so
//! nodes starting at the same time apply each migration once. Migrations are only ever added,
//! never edited.

use sqlx::Row;

use super::{Store, StoreError};

/// (version, SQL) for SQLite.
const SQLITE: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE signing_keys (
        kid TEXT PRIMARY KEY,
        algorithm TEXT NOT NULL,
        public_jwk TEXT NOT NULL,
        private_sealed BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        activates_at INTEGER NOT NULL
    )",
    ),
    (
        2,
        "CREATE TABLE pending_grants (
            id TEXT PRIMARY KEY,
            sealed BLOB NOT NULL,
            expires_at INTEGER NOT NULL
        );
        CREATE INDEX pending_grants_by_expiry ON pending_grants (expires_at)",
    ),
    (
        3,
        "CREATE TABLE conversations (
            id TEXT PRIMARY KEY,
            account TEXT NOT NULL,
            consumer_id TEXT NOT NULL,
            is_open INTEGER NOT NULL,
            agent_id TEXT,
            skill TEXT,
            created_at INTEGER NOT NULL,
            closed_at INTEGER,
            last_seq INTEGER NOT NULL
        );
        CREATE UNIQUE INDEX one_open_conversation_per_consumer
            ON conversations (account, consumer_id) WHERE is_open;
        CREATE INDEX conversations_by_consumer ON conversations (account, consumer_id, created_at);
        CREATE INDEX conversations_by_agent ON conversations (agent_id) WHERE is_open;
        CREATE TABLE events (
            conversation_id TEXT NOT NULL REFERENCES conversations (id),
            seq INTEGER NOT NULL,
            event_id TEXT NOT NULL UNIQUE,
            originator_id TEXT NOT NULL,
            originator_role TEXT NOT NULL,
            client_event_id TEXT,
            sealed BLOB NOT NULL,
            created_at INTEGER NOT NULL,
            PRIMARY KEY (conversation_id, seq)
        );
        CREATE UNIQUE INDEX events_by_client_id
            ON events (conversation_id, originator_id, client_event_id)
            WHERE client_event_id IS NOT NULL",
    ),
    (
        4,
        "CREATE TABLE agents (
            id TEXT PRIMARY KEY,
            account TEXT NOT NULL,
            username TEXT NOT NULL,
            password_sealed BLOB NOT NULL,
            disabled INTEGER NOT NULL,
            failed_logins INTEGER NOT NULL,
            locked_until INTEGER,
            created_at INTEGER NOT NULL,
            last_login_at INTEGER,
            UNIQUE (account, username)
        );
        CREATE TABLE agent_sessions (
            token_hash BLOB PRIMARY KEY,
            agent_id TEXT NOT NULL REFERENCES agents (id),
            csrf_hash BLOB NOT NULL,
            created_at INTEGER NOT NULL,
            expires_at INTEGER NOT NULL
        );
        CREATE INDEX agent_sessions_by_agent ON agent_sessions (agent_id);
        CREATE INDEX agent_sessions_by_expiry ON agent_sessions (expires_at);
        CREATE TABLE agent_audit (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            at INTEGER NOT NULL,
            account TEXT NOT NULL,
            username TEXT NOT NULL,
            agent_id TEXT,
            outcome TEXT NOT NULL,
            source TEXT
        );
        CREATE INDEX agent_audit_by_account ON agent_audit (account, at)",
    ),
    (
        5,
        "CREATE TABLE push_registrations (
            account TEXT NOT NULL,
            consumer_id TEXT NOT NULL,
            app TEXT NOT NULL,
            provider TEXT NOT NULL,
            token_sealed BLOB NOT NULL,
            token_hash TEXT NOT NULL,
            updated_at INTEGER NOT NULL,
            PRIMARY KEY (account, consumer_id, app)
        )",
    ),
    (
        6,
        "ALTER TABLE conversations ADD COLUMN queue_round INTEGER NOT NULL DEFAULT 0;
        CREATE TABLE ring_rejections (
            conversation_id TEXT NOT NULL REFERENCES conversations (id),
            agent_id TEXT NOT NULL,
            queue_round INTEGER NOT NULL,
            PRIMARY KEY (conversation_id, agent_id)
        )",
    ),
    (
        7,
        "CREATE TABLE consumer_profiles (
            account TEXT NOT NULL,
            consumer_id TEXT NOT NULL,
            sealed BLOB NOT NULL,
            updated_at INTEGER NOT NULL,
            PRIMARY KEY (account, consumer_id)
        )",
    ),
    (
        8,
        "CREATE TABLE outbox (
            position INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL,
            lane TEXT NOT NULL,
            dedupe_key TEXT UNIQUE,
            conversation_id TEXT,
            seq INTEGER,
            payload BLOB NOT NULL,
            created_at INTEGER NOT NULL,
            next_at INTEGER NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            last_error TEXT,
            parked BOOLEAN NOT NULL DEFAULT FALSE,
            version INTEGER NOT NULL DEFAULT 0,
            lease_owner TEXT,
            lease_until INTEGER
        );
        CREATE INDEX outbox_by_lane ON outbox (lane, position) WHERE NOT parked;
        CREATE INDEX outbox_by_due ON outbox (next_at) WHERE NOT parked",
    ),
    (
        9,
        "CREATE TABLE consumer_presence (
            account TEXT NOT NULL,
            consumer_id TEXT NOT NULL,
            node TEXT NOT NULL,
            expires_at INTEGER NOT NULL,
            PRIMARY KEY (account, consumer_id, node)
        );
        CREATE INDEX consumer_presence_by_node ON consumer_presence (node)",
    ),
    (
        10,
        "CREATE TABLE push_claims (
            key BLOB PRIMARY KEY,
            delivered BOOLEAN NOT NULL,
            owner TEXT NOT NULL,
            until INTEGER NOT NULL
        );
        CREATE INDEX push_claims_by_until ON push_claims (until)",
    ),
    (
        11,
        "CREATE INDEX outbox_leased ON outbox (lane) WHERE lease_until IS NOT NULL",
    ),
    (
        12,
        // Every claim and mark rewrote this index; the purge, once a minute, does without it.
        "DROP INDEX push_claims_by_until",
    ),
    (
        13,
        // How a sign-in was made: `oidc <issuer>` for single sign-on; none for passwords.
        "ALTER TABLE agent_audit ADD COLUMN via TEXT",
    ),
    (
        14,
        // The identity at the agents' provider an agent is linked to (`<issuer> <sub>`).
        "ALTER TABLE agents ADD COLUMN sso_subject TEXT;
        CREATE UNIQUE INDEX agents_by_sso_subject ON agents (account, sso_subject)
            WHERE sso_subject IS NOT NULL",
    ),
];

/// (version, SQL) for PostgreSQL.
const POSTGRES: &[(i64, &str)] = &[
    (
        1,
        "CREATE TABLE signing_keys (
        kid TEXT PRIMARY KEY,
        algorithm TEXT NOT NULL,
        public_jwk TEXT NOT NULL,
        private_sealed BYTEA NOT NULL,
        created_at BIGINT NOT NULL,
        activates_at BIGINT NOT NULL
    )",
    ),
    (
        2,
        "CREATE TABLE pending_grants (
            id TEXT PRIMARY KEY,
            sealed BYTEA NOT NULL,
            expires_at BIGINT NOT NULL
        );
        CREATE INDEX pending_grants_by_expiry ON pending_grants (expires_at)",
    ),
    (
        3,
        "CREATE TABLE conversations (
            id TEXT PRIMARY KEY,
            account TEXT NOT NULL,
            consumer_id TEXT NOT NULL,
            is_open BOOLEAN NOT NULL,
            agent_id TEXT,
            skill TEXT,
            created_at BIGINT NOT NULL,
            closed_at BIGINT,
            last_seq BIGINT NOT NULL
        );
        CREATE UNIQUE INDEX one_open_conversation_per_consumer
            ON conversations (account, consumer_id) WHERE is_open;
        CREATE INDEX conversations_by_consumer ON conversations (account, consumer_id, created_at);
        CREATE INDEX conversations_by_agent ON conversations (agent_id) WHERE is_open;
        CREATE TABLE events (
            conversation_id TEXT NOT NULL REFERENCES conversations (id),
            seq BIGINT NOT NULL,
            event_id TEXT NOT NULL UNIQUE,
            originator_id TEXT NOT NULL,
            originator_role TEXT NOT NULL,
            client_event_id TEXT,
            sealed BYTEA NOT NULL,
            created_at BIGINT NOT NULL,
            PRIMARY KEY (conversation_id, seq)
        );
        CREATE UNIQUE INDEX events_by_client_id
            ON events (conversation_id, originator_id, client_event_id)
            WHERE client_event_id IS NOT NULL",
    ),
    (
        4,
        "CREATE TABLE agents (
            id TEXT PRIMARY KEY,
            account TEXT NOT NULL,
            username TEXT NOT NULL,
            password_sealed BYTEA NOT NULL,
            disabled BOOLEAN NOT NULL,
            failed_logins BIGINT NOT NULL,
            locked_until BIGINT,
            created_at BIGINT NOT NULL,
            last_login_at BIGINT,
            UNIQUE (account, username)
        );
        CREATE TABLE agent_sessions (
            token_hash BYTEA PRIMARY KEY,
            agent_id TEXT NOT NULL REFERENCES agents (id),
            csrf_hash BYTEA NOT NULL,
            created_at BIGINT NOT NULL,
            expires_at BIGINT NOT NULL
        );
        CREATE INDEX agent_sessions_by_agent ON agent_sessions (agent_id);
        CREATE INDEX agent_sessions_by_expiry ON agent_sessions (expires_at);
        CREATE TABLE agent_audit (
            id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            at BIGINT NOT NULL,
            account TEXT NOT NULL,
            username TEXT NOT NULL,
            agent_id TEXT,
            outcome TEXT NOT NULL,
            source TEXT
        );
        CREATE INDEX agent_audit_by_account ON agent_audit (account, at)",
    ),
    (
        5,
        "CREATE TABLE push_registrations (
            account TEXT NOT NULL,
            consumer_id TEXT NOT NULL,
            app TEXT NOT NULL,
            provider TEXT NOT NULL,
            token_sealed BYTEA NOT NULL,
            token_hash TEXT NOT NULL,
            updated_at BIGINT NOT NULL,
            PRIMARY KEY (account, consumer_id, app)
        )",
    ),
    (
        6,
        "ALTER TABLE conversations ADD COLUMN queue_round BIGINT NOT NULL DEFAULT 0;
        CREATE TABLE ring_rejections (
            conversation_id TEXT NOT NULL REFERENCES conversations (id),
            agent_id TEXT NOT NULL,
            queue_round BIGINT NOT NULL,
            PRIMARY KEY (conversation_id, agent_id)
        )",
    ),
    (
        7,
        "CREATE TABLE consumer_profiles (
            account TEXT NOT NULL,
            consumer_id TEXT NOT NULL,
            sealed BYTEA NOT NULL,
            updated_at BIGINT NOT NULL,
            PRIMARY KEY (account, consumer_id)
        )",
    ),
    (
        8,
        "CREATE TABLE outbox (
            position BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            id TEXT NOT NULL UNIQUE,
            kind TEXT NOT NULL,
            lane TEXT NOT NULL,
            dedupe_key TEXT UNIQUE,
            conversation_id TEXT,
            seq BIGINT,
            payload BYTEA NOT NULL,
            created_at BIGINT NOT NULL,
            next_at BIGINT NOT NULL,
            attempts BIGINT NOT NULL DEFAULT 0,
            last_error TEXT,
            parked BOOLEAN NOT NULL DEFAULT FALSE,
            version BIGINT NOT NULL DEFAULT 0,
            lease_owner TEXT,
            lease_until BIGINT
        );
        CREATE INDEX outbox_by_lane ON outbox (lane, position) WHERE NOT parked;
        CREATE INDEX outbox_by_due ON outbox (next_at) WHERE NOT parked",
    ),
    (
        9,
        "CREATE TABLE consumer_presence (
            account TEXT NOT NULL,
            consumer_id TEXT NOT NULL,
            node TEXT NOT NULL,
            expires_at BIGINT NOT NULL,
            PRIMARY KEY (account, consumer_id, node)
        );
        CREATE INDEX consumer_presence_by_node ON consumer_presence (node)",
    ),
    (
        10,
        "CREATE TABLE push_claims (
            key BYTEA PRIMARY KEY,
            delivered BOOLEAN NOT NULL,
            owner TEXT NOT NULL,
            until BIGINT NOT NULL
        );
        CREATE INDEX push_claims_by_until ON push_claims (until)",
    ),
    (
        11,
        "CREATE INDEX outbox_leased ON outbox (lane) WHERE lease_until IS NOT NULL",
    ),
    (
        12,
        // Every claim and mark rewrote this index; the purge, once a minute, does without it.
        // Room left in each page lets an update stay on its page (no index entry to add).
        "DROP INDEX push_claims_by_until;
        ALTER TABLE push_claims SET (fillfactor = 70)",
    ),
    (
        13,
        // How a sign-in was made: `oidc <issuer>` for single sign-on; none for passwords.
        "ALTER TABLE agent_audit ADD COLUMN via TEXT",
    ),
    (
        14,
        // The identity at the agents' provider an agent is linked to (`<issuer> <sub>`).
        "ALTER TABLE agents ADD COLUMN sso_subject TEXT;
        CREATE UNIQUE INDEX agents_by_sso_subject ON agents (account, sso_subject)
            WHERE sso_subject IS NOT NULL",
    ),
];

/// Any number that no other application on a shared PostgreSQL server would pick ("brandgat").
const PG_LOCK: i64 = 0x6272_616e_6467_6174;

/// The newest schema version this build knows.
pub fn latest(store: &Store) -> i64 {
    let list = match store {
        Store::Sqlite(..) => SQLITE,
        Store::Postgres(_) => POSTGRES,
    };
    list.last().map_or(0, |(v, _)| *v)
}

/// Applies every pending migration. Refuses a database newer than this build.
pub async fn run(store: &Store) -> Result<(), StoreError> {
    // The same steps inside each backend's locking transaction.
    macro_rules! apply {
        ($tx:ident, $list:expr) => {{
            sqlx::query(
                "CREATE TABLE IF NOT EXISTS schema_migrations (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
            )
            .execute(&mut *$tx)
            .await?;
            let applied: Vec<i64> = sqlx::query("SELECT version FROM schema_migrations ORDER BY version")
                .fetch_all(&mut *$tx)
                .await?
                .iter()
                .map(|r| r.try_get::<i64, _>("version"))
                .collect::<Result<_, _>>()?;
            check_not_newer(&applied, $list)?;
            for (version, sql) in $list.iter().filter(|(v, _)| !applied.contains(v)) {
                sqlx::raw_sql(*sql).execute(&mut *$tx).await?;
                sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES ($1, $2)")
                    .bind(version)
                    .bind(now())
                    .execute(&mut *$tx)
                    .await?;
            }
        }};
    }
    match store {
        Store::Sqlite(pool, _) => {
            // IMMEDIATE: the write lock is taken at once, so a second process waits here.
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            apply!(tx, SQLITE);
            tx.commit().await?;
        }
        Store::Postgres(pool) => {
            let mut tx = pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(PG_LOCK)
                .execute(&mut *tx)
                .await?;
            apply!(tx, POSTGRES);
            tx.commit().await?;
        }
    }
    Ok(())
}

fn check_not_newer(applied: &[i64], known: &[(i64, &str)]) -> Result<(), StoreError> {
    let newest_known = known.last().map_or(0, |(v, _)| *v);
    match applied.iter().max() {
        Some(&found) if found > newest_known => Err(StoreError::TooNew {
            found,
            known: newest_known,
        }),
        _ => Ok(()),
    }
}

fn now() -> i64 {
    crate::clock::unix_seconds(std::time::SystemTime::now()) as i64
}
