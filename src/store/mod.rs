//! The store: SQLite (the embedded default, WAL, nothing else to run) or PostgreSQL (several
//! brandgate nodes sharing one database), behind one handle with one contract, proven by one
//! conformance suite run against both (`tests/integration/store.rs`).
//!
//! Contract, for every backend:
//! - Every method is atomic: it happens whole or not at all.
//! - `create_*` fails with [`StoreError::Conflict`] when the key already exists and changes
//!   nothing; `delete_*` and `replace_*` say whether there was something to act on.
//! - `list_*` return rows in a stated, stable order.
//! - Values that must not be readable from the database alone are sealed by the caller
//!   ([`seal`]) before they reach the store; the store never sees a data key.
//!
//! Schema changes are numbered migrations ([`migrate`]), applied at start-up under a lock, so
//! nodes starting together do not race; a database migrated by a newer brandgate is refused.

/// Runs the same statement code against whichever pool this is.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            Store::Sqlite($pool, _) => $body,
            Store::Postgres($pool) => $body,
        }
    };
}

pub mod agents;
mod columns;
pub mod devices;
mod grants;
pub mod migrate;
pub(crate) mod notify;
pub mod outbox;
mod presence;
pub(crate) mod profiles;
pub mod push_claims;
pub mod relay;
pub mod seal;
pub(crate) mod sealed;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::Row;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("already exists")]
    Conflict,
    #[error("no such record")]
    NotFound,
    #[error("the database cannot be used: {0}")]
    Unavailable(String),
    #[error(
        "the database was migrated by a newer brandgate (schema version {found}, this one knows {known})"
    )]
    TooNew { found: i64, known: i64 },
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if let sqlx::Error::Database(db) = &e
            && db.is_unique_violation()
        {
            return StoreError::Conflict;
        }
        StoreError::Unavailable(e.to_string())
    }
}

/// The handle. Cheap to clone.
#[derive(Clone, Debug)]
pub enum Store {
    /// The pool, and the writer that commits relay events in groups (see `relay`).
    Sqlite(SqlitePool, std::sync::Arc<relay::SqliteAppender>),
    Postgres(PgPool),
}

/// How to reach the database.
pub struct StoreOptions<'a> {
    /// `sqlite:///path/brandgate.db` or `postgres://user@host:5432/db?sslmode=verify-full`.
    pub url: &'a str,
    /// The PostgreSQL password, read from a file (never in the URL in the config).
    pub password: Option<&'a str>,
    pub max_connections: u32,
}

impl Store {
    /// Connects and applies pending migrations.
    pub async fn open(options: StoreOptions<'_>) -> Result<Store, StoreError> {
        let store = Store::connect(options).await?;
        migrate::run(&store).await?;
        Ok(store)
    }

    async fn connect(options: StoreOptions<'_>) -> Result<Store, StoreError> {
        let url = options.url;
        let invalid = |e: sqlx::Error| {
            StoreError::Unavailable(format!("{}: {e}", crate::secret::url_for_display(url)))
        };
        if url.starts_with("sqlite:") {
            let connect = SqliteConnectOptions::from_str(url)
                .map_err(invalid)?
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // An acknowledged write survives a power cut, not only a crash.
                .synchronous(SqliteSynchronous::Full)
                .foreign_keys(true)
                .busy_timeout(Duration::from_secs(5));
            if let Some(dir) = connect.get_filename().parent()
                && !dir.as_os_str().is_empty()
            {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Unavailable(format!("cannot create {}: {e}", dir.display()))
                })?;
            }
            let file = connect.get_filename().to_path_buf();
            let pool = SqlitePoolOptions::new()
                .max_connections(options.max_connections.max(1))
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(connect)
                .await
                .map_err(invalid)?;
            // Only the service reads its database (SQLite gives the -wal and -shm files the same
            // mode). systemd's UMask= does this too; this covers a start outside systemd.
            {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600));
            }
            let appender = std::sync::Arc::new(relay::SqliteAppender::start(pool.clone()));
            Ok(Store::Sqlite(pool, appender))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let mut connect = PgConnectOptions::from_str(url).map_err(invalid)?;
            if let Some(pw) = options.password {
                connect = connect.password(pw);
            }
            let pool = PgPoolOptions::new()
                .max_connections(options.max_connections.max(1))
                .acquire_timeout(Duration::from_secs(10))
                .connect_with(connect)
                .await
                .map_err(invalid)?;
            Ok(Store::Postgres(pool))
        } else {
            Err(StoreError::Unavailable(format!(
                "{:?} is neither a sqlite: nor a postgres:// URL",
                crate::secret::url_for_display(url)
            )))
        }
    }

    /// A fresh embedded database in `dir` (unit tests).
    #[cfg(test)]
    pub async fn open_temporary(dir: &Path) -> Store {
        Store::open(StoreOptions {
            url: &Store::default_url(dir),
            password: None,
            max_connections: 2,
        })
        .await
        .expect("a temporary SQLite store")
    }

    /// The default embedded database in the state directory.
    pub fn default_url(state_dir: &Path) -> String {
        format!("sqlite://{}", state_dir.join("brandgate.db").display())
    }

    /// Asks the database for nothing (`SELECT 1`): whether it answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query("SELECT 1").execute(pool).await?;
        });
        Ok(())
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(..) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Closes every connection (a clean SQLite shutdown checkpoints the WAL).
    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await)
    }

    // ----------------------------------------------------------------- signing keys

    /// Adds a key to the signing key ring. Conflict if the `kid` exists.
    pub async fn create_signing_key(&self, key: &SigningKeyRow) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO signing_keys (kid, algorithm, public_jwk, private_sealed, created_at, activates_at) \
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .bind(&key.kid)
            .bind(&key.algorithm)
            .bind(&key.public_jwk)
            .bind(&key.private_sealed)
            .bind(key.created_at)
            .bind(key.activates_at)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// Every key of the ring, oldest activation first (ties by `kid`).
    pub async fn list_signing_keys(&self) -> Result<Vec<SigningKeyRow>, StoreError> {
        let rows = on_pool!(self, pool => {
            sqlx::query(
                "SELECT kid, algorithm, public_jwk, private_sealed, created_at, activates_at \
                 FROM signing_keys ORDER BY activates_at, kid",
            )
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| -> Result<SigningKeyRow, sqlx::Error> {
                Ok(SigningKeyRow {
                    kid: r.try_get("kid")?,
                    algorithm: r.try_get("algorithm")?,
                    public_jwk: r.try_get("public_jwk")?,
                    private_sealed: r.try_get("private_sealed")?,
                    created_at: r.try_get("created_at")?,
                    activates_at: r.try_get("activates_at")?,
                })
            })
            .collect::<Result<Vec<_>, _>>()?
        });
        Ok(rows)
    }

    /// Removes a key. Returns whether it existed.
    pub async fn delete_signing_key(&self, kid: &str) -> Result<bool, StoreError> {
        let done = on_pool!(self, pool => {
            sqlx::query("DELETE FROM signing_keys WHERE kid = $1")
                .bind(kid)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(done == 1)
    }

    /// Replaces a key's sealed private part, only if it is still `expected` (so two nodes
    /// re-sealing at once do not overwrite each other). Returns whether it was replaced.
    pub async fn replace_signing_key_seal(
        &self,
        kid: &str,
        expected: &[u8],
        sealed: &[u8],
    ) -> Result<bool, StoreError> {
        let done = on_pool!(self, pool => {
            sqlx::query("UPDATE signing_keys SET private_sealed = $1 WHERE kid = $2 AND private_sealed = $3")
                .bind(sealed)
                .bind(kid)
                .bind(expected)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(done == 1)
    }
}

/// A key of the signing key ring as stored. Its state is derived from time, the same on every
/// node (see `identity::keys`): next until `activates_at`, then active until a newer key
/// activates, then retired until it is deleted.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKeyRow {
    pub kid: String,
    pub algorithm: String,
    /// The public key as a JWK (JSON).
    pub public_jwk: String,
    /// The private key (PKCS#8), sealed with the context `signing_key:<kid>`.
    pub private_sealed: Vec<u8>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub activates_at: i64,
}

impl std::fmt::Debug for SigningKeyRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKeyRow")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .field("created_at", &self.created_at)
            .field("activates_at", &self.activates_at)
            .finish_non_exhaustive()
    }
}
