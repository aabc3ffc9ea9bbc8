//! The relay's records: conversations and their events.
//!
//! Contract (beyond the store's general one):
//! - A consumer has at most one open conversation per account: a second `create_conversation`
//!   for the same consumer while one is open is a [`StoreError::Conflict`] and changes nothing.
//! - `append_event` gives each stored event of a conversation the next sequence number, starting
//!   at 0, with no gap and no repeat, whatever the number of writers and nodes. It is atomic:
//!   when it returns `Ok`, the event is committed (an acknowledged message survives a crash).
//!   An event with a client event id already stored for the same originator returns the
//!   sequence it got the first time and stores nothing (a re-send after a lost ack).
//! - Events are only appended to open conversations ([`StoreError::NotFound`] otherwise);
//!   a re-send of an event stored before the close still answers with its sequence.
//! - `list_events` returns events in sequence order.
//! - An event's body is sealed by the caller; the store never sees message text.
//! - `take_conversation` gives a waiting conversation to one agent: of concurrent takers of
//!   the same conversation, on any number of nodes, exactly one succeeds.

use sqlx::Row;

use super::{Store, StoreError};

/// A conversation as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationRow {
    pub id: String,
    pub account: String,
    /// The consumer's stable id (from its identity token's issuer and subject).
    pub consumer_id: String,
    pub open: bool,
    /// The agent who took it; `None` while it waits in the queue.
    pub agent_id: Option<String>,
    pub skill: Option<String>,
    /// Unix milliseconds.
    pub created_at: i64,
    pub closed_at: Option<i64>,
    /// The highest sequence given to an event, -1 before the first.
    pub last_seq: i64,
}

/// An event to store.
#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    pub conversation_id: &'a str,
    /// A server-made unique id; the sealed body is bound to it.
    pub event_id: &'a str,
    pub originator_id: &'a str,
    /// `CONSUMER` or `ASSIGNED_AGENT` (the platform's roles).
    pub originator_role: &'a str,
    /// The client's own id for the event, making a re-send idempotent.
    pub client_event_id: Option<&'a str>,
    pub sealed: &'a [u8],
    /// Unix milliseconds.
    pub created_at: i64,
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub conversation_id: String,
    pub seq: i64,
    pub event_id: String,
    pub originator_id: String,
    pub originator_role: String,
    pub client_event_id: Option<String>,
    pub sealed: Vec<u8>,
    pub created_at: i64,
}

/// What `append_event` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub seq: i64,
    /// `false` when the client event id was already stored: nothing new was written.
    pub created: bool,
}

/// Column lists, as macros so queries stay literal strings (`concat!`).
macro_rules! conversation_columns {
    () => {
        "id, account, consumer_id, is_open, agent_id, skill, created_at, closed_at, last_seq"
    };
}
macro_rules! event_columns {
    () => {
        "conversation_id, seq, event_id, originator_id, originator_role, client_event_id, sealed, created_at"
    };
}

/// A `ConversationRow` from a result row of either backend.
macro_rules! conversation_row {
    ($r:expr) => {
        ConversationRow {
            id: $r.try_get("id")?,
            account: $r.try_get("account")?,
            consumer_id: $r.try_get("consumer_id")?,
            open: $r.try_get("is_open")?,
            agent_id: $r.try_get("agent_id")?,
            skill: $r.try_get("skill")?,
            created_at: $r.try_get("created_at")?,
            closed_at: $r.try_get("closed_at")?,
            last_seq: $r.try_get("last_seq")?,
        }
    };
}

/// An `EventRow` from a result row of either backend.
macro_rules! event_row {
    ($r:expr) => {
        EventRow {
            conversation_id: $r.try_get("conversation_id")?,
            seq: $r.try_get("seq")?,
            event_id: $r.try_get("event_id")?,
            originator_id: $r.try_get("originator_id")?,
            originator_role: $r.try_get("originator_role")?,
            client_event_id: $r.try_get("client_event_id")?,
            sealed: $r.try_get("sealed")?,
            created_at: $r.try_get("created_at")?,
        }
    };
}

impl Store {
    /// Opens a conversation. Conflict if the consumer already has an open one in the account.
    pub async fn create_conversation(&self, c: &ConversationRow) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query(concat!("INSERT INTO conversations (", conversation_columns!(), ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"))
            .bind(&c.id)
            .bind(&c.account)
            .bind(&c.consumer_id)
            .bind(c.open)
            .bind(&c.agent_id)
            .bind(&c.skill)
            .bind(c.created_at)
            .bind(c.closed_at)
            .bind(c.last_seq)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    pub async fn get_conversation(&self, id: &str) -> Result<Option<ConversationRow>, StoreError> {
        let row = on_pool!(self, pool => {
            sqlx::query(concat!("SELECT ", conversation_columns!(), " FROM conversations WHERE id = $1"))
                .bind(id)
                .fetch_optional(pool)
                .await?
                .map(|r| -> Result<ConversationRow, sqlx::Error> { Ok(conversation_row!(r)) })
                .transpose()?
        });
        Ok(row)
    }

    /// The consumer's open conversation in the account, if any.
    pub async fn get_open_conversation(
        &self,
        account: &str,
        consumer_id: &str,
    ) -> Result<Option<ConversationRow>, StoreError> {
        let row = on_pool!(self, pool => {
            sqlx::query(concat!("SELECT ", conversation_columns!(), " FROM conversations \
                 WHERE account = $1 AND consumer_id = $2 AND is_open"))
            .bind(account)
            .bind(consumer_id)
            .fetch_optional(pool)
            .await?
            .map(|r| -> Result<ConversationRow, sqlx::Error> { Ok(conversation_row!(r)) })
            .transpose()?
        });
        Ok(row)
    }

    /// The consumer's conversations in the account, newest first, at most `limit`.
    pub async fn list_consumer_conversations(
        &self,
        account: &str,
        consumer_id: &str,
        limit: i64,
    ) -> Result<Vec<ConversationRow>, StoreError> {
        let rows = on_pool!(self, pool => {
            sqlx::query(concat!("SELECT ", conversation_columns!(), " FROM conversations \
                 WHERE account = $1 AND consumer_id = $2 ORDER BY created_at DESC, id LIMIT $3"))
            .bind(account)
            .bind(consumer_id)
            .bind(limit)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| -> Result<ConversationRow, sqlx::Error> { Ok(conversation_row!(r)) })
            .collect::<Result<Vec<_>, _>>()?
        });
        Ok(rows)
    }

    /// Open conversations waiting for an agent in the account, oldest first, at most `limit`.
    pub async fn list_waiting_conversations(
        &self,
        account: &str,
        limit: i64,
    ) -> Result<Vec<ConversationRow>, StoreError> {
        let rows = on_pool!(self, pool => {
            sqlx::query(concat!("SELECT ", conversation_columns!(), " FROM conversations \
                 WHERE account = $1 AND is_open AND agent_id IS NULL ORDER BY created_at, id LIMIT $2"))
            .bind(account)
            .bind(limit)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| -> Result<ConversationRow, sqlx::Error> { Ok(conversation_row!(r)) })
            .collect::<Result<Vec<_>, _>>()?
        });
        Ok(rows)
    }

    /// The conversations an agent took in the account (open and closed), newest first, at
    /// most `limit`.
    pub async fn list_agent_conversations(
        &self,
        account: &str,
        agent_id: &str,
        limit: i64,
    ) -> Result<Vec<ConversationRow>, StoreError> {
        let rows = on_pool!(self, pool => {
            sqlx::query(concat!("SELECT ", conversation_columns!(), " FROM conversations \
                 WHERE account = $1 AND agent_id = $2 ORDER BY created_at DESC, id LIMIT $3"))
            .bind(account)
            .bind(agent_id)
            .bind(limit)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| -> Result<ConversationRow, sqlx::Error> { Ok(conversation_row!(r)) })
            .collect::<Result<Vec<_>, _>>()?
        });
        Ok(rows)
    }

    /// Gives a waiting open conversation to an agent. Returns whether it did: of agents
    /// taking the same conversation at once, exactly one gets `true`.
    pub async fn take_conversation(&self, id: &str, agent_id: &str) -> Result<bool, StoreError> {
        let done = on_pool!(self, pool => {
            sqlx::query("UPDATE conversations SET agent_id = $1 WHERE id = $2 AND is_open AND agent_id IS NULL")
                .bind(agent_id)
                .bind(id)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(done == 1)
    }

    /// Puts an open conversation held by `agent_id` back in the queue, with a new skill when
    /// given. Returns whether it did.
    pub async fn return_conversation(
        &self,
        id: &str,
        agent_id: &str,
        skill: Option<&str>,
    ) -> Result<bool, StoreError> {
        let done = on_pool!(self, pool => {
            sqlx::query("UPDATE conversations SET agent_id = NULL, skill = COALESCE($1, skill) \
                 WHERE id = $2 AND agent_id = $3 AND is_open")
                .bind(skill)
                .bind(id)
                .bind(agent_id)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(done == 1)
    }

    /// Closes an open conversation. Returns whether it was open.
    pub async fn close_conversation(&self, id: &str, closed_at: i64) -> Result<bool, StoreError> {
        let done = on_pool!(self, pool => {
            sqlx::query("UPDATE conversations SET is_open = FALSE, closed_at = $1 WHERE id = $2 AND is_open")
                .bind(closed_at)
                .bind(id)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(done == 1)
    }

    /// Appends an event (see the module's contract).
    pub async fn append_event(&self, e: &NewEvent<'_>) -> Result<Appended, StoreError> {
        // The same steps in each backend's transaction. Taking the next sequence first locks
        // the conversation's row (PostgreSQL) or the database (SQLite, BEGIN IMMEDIATE), so
        // the duplicate check after it sees every committed re-send.
        macro_rules! append {
            ($tx:ident) => {{
                // A re-send of a stored event answers with its sequence, even if the
                // conversation closed since.
                macro_rules! earlier {
                    () => {
                        match e.client_event_id {
                            Some(client_id) => sqlx::query_scalar::<_, i64>(
                                "SELECT seq FROM events WHERE conversation_id = $1 AND originator_id = $2 AND client_event_id = $3",
                            )
                            .bind(e.conversation_id)
                            .bind(e.originator_id)
                            .bind(client_id)
                            .fetch_optional(&mut *$tx)
                            .await?,
                            None => None,
                        }
                    };
                }
                if let Some(seq) = earlier!() {
                    return Ok(Appended { seq, created: false });
                }
                let next: Option<i64> = sqlx::query_scalar(
                    "UPDATE conversations SET last_seq = last_seq + 1 WHERE id = $1 AND is_open RETURNING last_seq",
                )
                .bind(e.conversation_id)
                .fetch_optional(&mut *$tx)
                .await?;
                let Some(seq) = next else {
                    return Err(StoreError::NotFound);
                };
                // Again under the conversation's lock: a concurrent re-send may have committed
                // between the first look and the lock (PostgreSQL, READ COMMITTED).
                if let Some(seq) = earlier!() {
                    // Dropping the transaction rolls the sequence back.
                    return Ok(Appended { seq, created: false });
                }
                sqlx::query(concat!(
                    "INSERT INTO events (",
                    event_columns!(),
                    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                ))
                .bind(e.conversation_id)
                .bind(seq)
                .bind(e.event_id)
                .bind(e.originator_id)
                .bind(e.originator_role)
                .bind(e.client_event_id)
                .bind(e.sealed)
                .bind(e.created_at)
                .execute(&mut *$tx)
                .await?;
                $tx.commit().await?;
                Ok(Appended { seq, created: true })
            }};
        }
        match self {
            Store::Sqlite(pool) => {
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                append!(tx)
            }
            Store::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                append!(tx)
            }
        }
    }

    /// Events of a conversation with `seq >= from_seq`, in order, at most `limit`.
    pub async fn list_events(
        &self,
        conversation_id: &str,
        from_seq: i64,
        limit: i64,
    ) -> Result<Vec<EventRow>, StoreError> {
        let rows = on_pool!(self, pool => {
            sqlx::query(concat!("SELECT ", event_columns!(), " FROM events WHERE conversation_id = $1 AND seq >= $2 ORDER BY seq LIMIT $3"))
            .bind(conversation_id)
            .bind(from_seq)
            .bind(limit)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| -> Result<EventRow, sqlx::Error> { Ok(event_row!(r)) })
            .collect::<Result<Vec<_>, _>>()?
        });
        Ok(rows)
    }
}
