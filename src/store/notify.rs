//! PostgreSQL LISTEN/NOTIFY, for the relay's fan-out between nodes: the store sends and
//! receives the notifications, the relay decides what they say. Keeps sqlx inside `store/`.
//! SQLite is one node and has none ([`Store::notifier`] is `None`).

use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};

use super::Store;

/// The database refused, or could not be reached.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct NotifyError(#[from] sqlx::Error);

/// Sends notifications through the store's pool, and makes listeners.
#[derive(Clone)]
pub struct Notifier {
    pool: PgPool,
}

impl Store {
    /// The notifier of a PostgreSQL store; `None` on SQLite.
    pub fn notifier(&self) -> Option<Notifier> {
        match self {
            Store::Sqlite(..) => None,
            Store::Postgres(pool) => Some(Notifier { pool: pool.clone() }),
        }
    }
}

impl Notifier {
    /// Sends `payloads` on `channel` in one statement (one transaction: delivered together,
    /// in order).
    pub async fn notify(&self, channel: &str, payloads: &[String]) -> Result<(), NotifyError> {
        sqlx::query("SELECT pg_notify($1, payload) FROM unnest($2::text[]) AS payload")
            .bind(channel)
            .bind(payloads)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A listener on `channel`, on a connection of its own named in `pg_stat_activity` as the
    /// store's application name followed by `label`. Connecting may take up to
    /// `connect_limit` per attempt inside the connection's pool.
    pub async fn listen(
        &self,
        channel: &str,
        label: &str,
        connect_limit: Duration,
    ) -> Result<Listener, NotifyError> {
        let options = self.pool.connect_options();
        let name = match options.get_application_name() {
            Some(app) => format!("{app} {label}"),
            None => format!("brandgate {label}"),
        };
        let options = (*options).clone().application_name(&name);
        // A pool of its own for each listener: a connection the network lost without a word
        // may take long to let go, and must not hold up its replacement. Two: sqlx may make
        // the next while the lost one is still closing.
        let pool = PgPoolOptions::new()
            .max_connections(2)
            .min_connections(0)
            .idle_timeout(None)
            .max_lifetime(None)
            .acquire_timeout(connect_limit)
            .connect_lazy_with(options);
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(channel).await?;
        Ok(Listener { pool, listener })
    }
}

/// What a listener received.
#[derive(Debug)]
pub enum Heard {
    /// A notification's payload.
    Payload(String),
    /// The connection dropped and was made again (listening again): notifications sent
    /// meanwhile are lost.
    Reconnected,
}

/// A connection listening on one channel.
pub struct Listener {
    pool: PgPool,
    listener: PgListener,
}

impl Listener {
    /// The next notification, or word that the connection was made again; an error when it
    /// is lost and could not be made again.
    pub async fn recv(&mut self) -> Result<Heard, NotifyError> {
        Ok(match self.listener.try_recv().await? {
            Some(notification) => Heard::Payload(notification.payload().to_string()),
            None => Heard::Reconnected,
        })
    }

    /// Asks the connection something (a connection the network dropped without a word looks
    /// quiet forever otherwise).
    pub async fn ping(&mut self) -> Result<(), NotifyError> {
        sqlx::query("SELECT 1").execute(&mut self.listener).await?;
        Ok(())
    }

    /// Lets the connection go, waiting at most `limit`.
    pub async fn close(self, limit: Duration) {
        drop(self.listener);
        let _ = tokio::time::timeout(limit, self.pool.close()).await;
    }
}
