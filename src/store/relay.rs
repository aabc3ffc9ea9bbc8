//! The relay's records: conversations and their events.
//!
//! Contract (beyond the store's general one):
//! - A consumer has at most one open conversation per account: a second `create_conversation`
//!   for the same consumer while one is open is a [`StoreError::Conflict`] and changes nothing.
//! - `append_event` gives each stored event of a conversation the next sequence number, starting
//!   at 0, with no gap and no repeat, whatever the number of writers and nodes. It is atomic:
//!   when it returns `Ok`, the event is committed (an acknowledged message survives a crash).
//!   An event with a client event id already stored for the same originator returns the
//!   sequence it got the first time, with that event's id and sealed body, and stores nothing
//!   (a re-send after a lost ack; the caller tells it from another event under the same id).
//! - Events are only appended to open conversations, and an agent's only while it holds the
//!   conversation ([`StoreError::NotFound`] otherwise);
//!   a re-send of an event stored before the close still answers with its sequence.
//! - `list_events` returns events in sequence order.
//! - An event's body is sealed by the caller; the store never sees message text.
//! - `take_conversation` gives a waiting conversation to one agent: of concurrent takers of
//!   the same conversation, on any number of nodes, exactly one succeeds. An agent that
//!   rejected its ring (`reject_ring`) cannot take it, nor is it listed for that agent, until
//!   the conversation joins the queue again (`return_conversation` starts a new round).

use sqlx::Row;
use sqlx::sqlite::SqlitePool;
use tokio::sync::{mpsc, oneshot};

use super::outbox::{NewOutboxItem, insert_outbox};
use super::{Store, StoreError};
use crate::clock::UnixMillis;
use crate::ids::{AgentId, ConsumerId, ConversationId};

/// A conversation as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationRow {
    pub id: ConversationId,
    pub account: String,
    /// The consumer's stable id (from its identity token's issuer and subject).
    pub consumer_id: ConsumerId,
    pub open: bool,
    /// The agent who took it; `None` while it waits in the queue.
    pub agent_id: Option<AgentId>,
    pub skill: Option<String>,
    pub created_at: UnixMillis,
    pub closed_at: Option<UnixMillis>,
    /// The highest sequence given to an event, -1 before the first.
    pub last_seq: i64,
}

/// An event to store.
#[derive(Debug, Clone)]
pub struct NewEvent<'a> {
    pub conversation_id: &'a ConversationId,
    /// A server-made unique id; the sealed body is bound to it.
    pub event_id: &'a str,
    pub originator_id: &'a str,
    /// `CONSUMER` or `ASSIGNED_AGENT` (the platform's roles).
    pub originator_role: &'a str,
    /// The client's own id for the event, making a re-send idempotent.
    pub client_event_id: Option<&'a str>,
    /// For an agent's event: the agent that must still hold the conversation when it is
    /// appended (a transfer in between refuses it).
    pub holder: Option<&'a AgentId>,
    pub sealed: &'a [u8],
    pub created_at: UnixMillis,
    /// Work the event causes (webhooks, an away push), committed with it and given its
    /// conversation and sequence; not written for a re-send.
    pub outbox: &'a [NewOutboxItem],
    /// PostgreSQL: a notification sent inside the append's transaction, so it is delivered
    /// exactly when the event is committed (never for a re-send). SQLite has none.
    pub notice: Option<Notice<'a>>,
}

/// A notification to send with an appended event: on `channel`, what `payload` makes of the
/// event's sequence (`None`: send nothing). The store does not know what it says.
#[derive(Clone, Copy)]
pub struct Notice<'a> {
    pub channel: &'a str,
    pub payload: &'a (dyn Fn(i64) -> Option<String> + Sync),
}

impl std::fmt::Debug for Notice<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notice")
            .field("channel", &self.channel)
            .finish_non_exhaustive()
    }
}

/// A stored event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRow {
    pub conversation_id: ConversationId,
    pub seq: i64,
    pub event_id: String,
    pub originator_id: String,
    pub originator_role: String,
    pub client_event_id: Option<String>,
    pub sealed: Vec<u8>,
    pub created_at: UnixMillis,
}

/// What `append_event` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub seq: i64,
    /// `false` when the client event id was already stored: nothing new was written.
    pub created: bool,
    /// When not created: the stored event's id and sealed body, so the caller can tell a
    /// re-send (the same event) from another event under the same client id.
    pub earlier: Option<(String, Vec<u8>)>,
}

impl Appended {
    fn created(seq: i64) -> Appended {
        Appended {
            seq,
            created: true,
            earlier: None,
        }
    }

    fn repeat((seq, event_id, sealed): (i64, String, Vec<u8>)) -> Appended {
        Appended {
            seq,
            created: false,
            earlier: Some((event_id, sealed)),
        }
    }
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

/// SQL that is true when the agent bound at `$agent` rejected the `conversations` row at hand
/// in its current queue round (false when the agent is NULL).
macro_rules! rejected_by {
    ($agent:literal) => {
        concat!(
            "EXISTS (SELECT 1 FROM ring_rejections r WHERE r.conversation_id = conversations.id \
             AND r.agent_id = ",
            $agent,
            " AND r.queue_round = conversations.queue_round)"
        )
    };
}

/// The sequence, event id and sealed body of the event stored the first time under a client
/// event id (same originator), in transaction `$tx` of either backend.
macro_rules! earlier_seq {
    ($tx:ident, $e:expr) => {
        match $e.client_event_id {
            Some(client_id) => {
                sqlx::query_as::<_, (i64, String, Vec<u8>)>(
                    "SELECT seq, event_id, sealed FROM events WHERE conversation_id = $1 AND originator_id = $2 AND client_event_id = $3",
                )
                .bind($e.conversation_id)
                .bind($e.originator_id)
                .bind(client_id)
                .fetch_optional(&mut *$tx)
                .await
            }
            None => Ok(None),
        }
    };
}

/// Takes the next sequence of an open conversation (`None`: closed, unknown, or no longer
/// held by the event's holder).
macro_rules! next_seq {
    ($tx:ident, $e:expr) => {
        sqlx::query_scalar::<_, i64>(
            "UPDATE conversations SET last_seq = last_seq + 1 \
             WHERE id = $1 AND is_open AND ($2 IS NULL OR agent_id = $2) RETURNING last_seq",
        )
        .bind($e.conversation_id)
        .bind($e.holder)
        .fetch_optional(&mut *$tx)
        .await
    };
}

macro_rules! insert_event {
    ($tx:ident, $e:expr, $seq:expr) => {
        sqlx::query(concat!(
            "INSERT INTO events (",
            event_columns!(),
            ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
        ))
        .bind($e.conversation_id)
        .bind($seq)
        .bind($e.event_id)
        .bind($e.originator_id)
        .bind($e.originator_role)
        .bind($e.client_event_id)
        .bind($e.sealed)
        .bind($e.created_at)
        .execute(&mut *$tx)
        .await
    };
}

impl Store {
    /// Opens a conversation, with the work its opening causes (`outbox`). Conflict if the
    /// consumer already has an open one in the account (then nothing is written).
    pub async fn create_conversation(
        &self,
        c: &ConversationRow,
        outbox: &[NewOutboxItem],
    ) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
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
            .execute(&mut *tx)
            .await?;
            insert_outbox!(tx, outbox, &c.id, None::<i64>)?;
            tx.commit().await?;
        });
        Ok(())
    }

    pub async fn get_conversation(
        &self,
        id: &ConversationId,
    ) -> Result<Option<ConversationRow>, StoreError> {
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
        consumer_id: &ConsumerId,
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
        consumer_id: &ConsumerId,
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

    /// Open conversations waiting for an agent in the account, oldest first, at most `limit`;
    /// with `for_agent`, without those that agent rejected since they last joined the queue.
    pub async fn list_waiting_conversations(
        &self,
        account: &str,
        for_agent: Option<&AgentId>,
        limit: i64,
    ) -> Result<Vec<ConversationRow>, StoreError> {
        let rows = on_pool!(self, pool => {
            sqlx::query(concat!("SELECT ", conversation_columns!(), " FROM conversations \
                 WHERE account = $1 AND is_open AND agent_id IS NULL AND NOT ", rejected_by!("$3"),
                 " ORDER BY created_at, id LIMIT $2"))
            .bind(account)
            .bind(limit)
            .bind(for_agent)
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
        agent_id: &AgentId,
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

    /// Gives a waiting open conversation to an agent that has not rejected it since it last
    /// joined the queue. Returns whether it did: of agents taking the same conversation at
    /// once, exactly one gets `true`.
    pub async fn take_conversation(
        &self,
        id: &ConversationId,
        agent_id: &AgentId,
    ) -> Result<bool, StoreError> {
        let done = on_pool!(self, pool => {
            sqlx::query(concat!("UPDATE conversations SET agent_id = $1 \
                 WHERE id = $2 AND is_open AND agent_id IS NULL AND NOT ", rejected_by!("$1")))
                .bind(agent_id)
                .bind(id)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(done == 1)
    }

    /// An agent rejects a waiting conversation's ring: until the conversation joins the queue
    /// again (returned by its agent), this agent is not offered it and cannot take it. Returns
    /// whether the conversation was waiting.
    pub async fn reject_ring(
        &self,
        id: &ConversationId,
        agent_id: &AgentId,
    ) -> Result<bool, StoreError> {
        let done = on_pool!(self, pool => {
            sqlx::query("INSERT INTO ring_rejections (conversation_id, agent_id, queue_round) \
                 SELECT id, $2, queue_round FROM conversations WHERE id = $1 AND is_open AND agent_id IS NULL \
                 ON CONFLICT (conversation_id, agent_id) DO UPDATE SET queue_round = excluded.queue_round")
                .bind(id)
                .bind(agent_id)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(done == 1)
    }

    /// Whether `agent_id` rejected the conversation since it last joined the queue.
    pub async fn has_rejected_ring(
        &self,
        id: &ConversationId,
        agent_id: &AgentId,
    ) -> Result<bool, StoreError> {
        let found = on_pool!(self, pool => {
            sqlx::query(concat!("SELECT 1 FROM conversations WHERE id = $2 AND ", rejected_by!("$1")))
                .bind(agent_id)
                .bind(id)
                .fetch_optional(pool)
                .await?
                .is_some()
        });
        Ok(found)
    }

    /// Puts an open conversation held by `agent_id` back in the queue, with a new skill when
    /// given: a new round, in which every agent is offered it again (rejections of earlier
    /// rounds no longer count). Returns whether it did.
    pub async fn return_conversation(
        &self,
        id: &ConversationId,
        agent_id: &AgentId,
        skill: Option<&str>,
    ) -> Result<bool, StoreError> {
        let done = on_pool!(self, pool => {
            sqlx::query("UPDATE conversations SET agent_id = NULL, skill = COALESCE($1, skill), \
                 queue_round = queue_round + 1 WHERE id = $2 AND agent_id = $3 AND is_open")
                .bind(skill)
                .bind(id)
                .bind(agent_id)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(done == 1)
    }

    /// Closes an open conversation (its ring rejections go: it never rings again), with the
    /// work its closing causes (`outbox`, written only if it was open). Returns whether it was
    /// open.
    pub async fn close_conversation(
        &self,
        id: &ConversationId,
        closed_at: UnixMillis,
        outbox: &[NewOutboxItem],
    ) -> Result<bool, StoreError> {
        let done = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            // Locks the conversation's row: appends wait, so the outbox keeps commit order.
            let done = sqlx::query("UPDATE conversations SET is_open = FALSE, closed_at = $1 WHERE id = $2 AND is_open")
                .bind(closed_at)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            sqlx::query("DELETE FROM ring_rejections WHERE conversation_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            if done == 1 {
                insert_outbox!(tx, outbox, id, None::<i64>)?;
            }
            tx.commit().await?;
            done
        });
        Ok(done == 1)
    }

    /// Appends an event (see the module's contract). On SQLite, appends waiting at the same
    /// time are committed together by [`SqliteAppender`] (one sync to disk for the group);
    /// each returns once its group is committed.
    pub async fn append_event(&self, e: &NewEvent<'_>) -> Result<Appended, StoreError> {
        match self {
            Store::Sqlite(_, appender) => appender.append(e).await,
            Store::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                // A re-send of a stored event answers with its sequence, even if the
                // conversation closed since.
                if let Some(earlier) = earlier_seq!(tx, e)? {
                    return Ok(Appended::repeat(earlier));
                }
                // Taking the next sequence locks the conversation's row...
                let Some(seq) = next_seq!(tx, e)? else {
                    return Err(StoreError::NotFound);
                };
                // ...so this second look sees a concurrent re-send that committed between the
                // first look and the lock (READ COMMITTED).
                if let Some(earlier) = earlier_seq!(tx, e)? {
                    // Dropping the transaction rolls the sequence back.
                    return Ok(Appended::repeat(earlier));
                }
                insert_event!(tx, e, seq)?;
                insert_outbox!(tx, e.outbox, e.conversation_id, Some(seq))?;
                // Delivered by PostgreSQL at the commit, and only then.
                if let Some(notice) = e.notice
                    && let Some(payload) = (notice.payload)(seq)
                {
                    sqlx::query("SELECT pg_notify($1, $2)")
                        .bind(notice.channel)
                        .bind(payload)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                Ok(Appended::created(seq))
            }
        }
    }

    /// Events of a conversation with `seq >= from_seq`, in order, at most `limit`.
    pub async fn list_events(
        &self,
        conversation_id: &ConversationId,
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

/// Appends waiting at once, committed together: SQLite syncs the disk once per commit, so
/// one commit for a group of appends multiplies what a node can acknowledge. One task owns
/// the writing; each append waits for its group's commit before it is answered, so nothing
/// is acknowledged that a crash could take back.
#[derive(Debug)]
pub struct SqliteAppender {
    jobs: mpsc::Sender<AppendJob>,
}

/// Appends committed at most in one group.
const GROUP: usize = 256;

#[derive(Debug)]
struct AppendJob {
    event: OwnedEvent,
    done: oneshot::Sender<Result<Appended, StoreError>>,
}

/// A [`NewEvent`] that can wait in a queue.
#[derive(Debug)]
struct OwnedEvent {
    conversation_id: ConversationId,
    event_id: String,
    originator_id: String,
    originator_role: String,
    client_event_id: Option<String>,
    holder: Option<AgentId>,
    sealed: Vec<u8>,
    created_at: UnixMillis,
    outbox: Vec<NewOutboxItem>,
}

impl OwnedEvent {
    fn new(e: &NewEvent<'_>) -> OwnedEvent {
        OwnedEvent {
            conversation_id: e.conversation_id.clone(),
            event_id: e.event_id.to_string(),
            originator_id: e.originator_id.to_string(),
            originator_role: e.originator_role.to_string(),
            client_event_id: e.client_event_id.map(str::to_string),
            holder: e.holder.cloned(),
            sealed: e.sealed.to_vec(),
            created_at: e.created_at,
            outbox: e.outbox.to_vec(),
        }
    }

    fn as_new(&self) -> NewEvent<'_> {
        NewEvent {
            conversation_id: &self.conversation_id,
            event_id: &self.event_id,
            originator_id: &self.originator_id,
            originator_role: &self.originator_role,
            client_event_id: self.client_event_id.as_deref(),
            holder: self.holder.as_ref(),
            sealed: &self.sealed,
            created_at: self.created_at,
            outbox: &self.outbox,
            // SQLite is one node: nobody to notify.
            notice: None,
        }
    }
}

impl SqliteAppender {
    /// Starts the writer (inside a tokio runtime); it ends when the last handle is dropped.
    pub(super) fn start(pool: SqlitePool) -> SqliteAppender {
        let (jobs, queue) = mpsc::channel(4 * GROUP);
        tokio::spawn(write_groups(pool, queue));
        SqliteAppender { jobs }
    }

    async fn append(&self, e: &NewEvent<'_>) -> Result<Appended, StoreError> {
        let (done, answer) = oneshot::channel();
        let job = AppendJob {
            event: OwnedEvent::new(e),
            done,
        };
        let stopped = || StoreError::Unavailable("the store's writer has stopped".into());
        self.jobs.send(job).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn write_groups(pool: SqlitePool, mut queue: mpsc::Receiver<AppendJob>) {
    let mut group = Vec::with_capacity(GROUP);
    while queue.recv_many(&mut group, GROUP).await > 0 {
        match commit_group(&pool, &group).await {
            Ok(results) => {
                for (job, result) in group.drain(..).zip(results) {
                    let _ = job.done.send(result);
                }
            }
            // Nothing of the group was committed: every append fails (a re-send with the
            // same client event id is safe).
            Err(e) => {
                let e = StoreError::from(e);
                for job in group.drain(..) {
                    let _ = job.done.send(Err(e.clone()));
                }
            }
        }
    }
}

/// One transaction for the whole group. `BEGIN IMMEDIATE` holds the database's write lock, so
/// each check sees everything committed and every append before it in the group, and nothing
/// else writes in between: no append needs undoing within the transaction.
async fn commit_group(
    pool: &SqlitePool,
    group: &[AppendJob],
) -> Result<Vec<Result<Appended, StoreError>>, sqlx::Error> {
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
    let mut results = Vec::with_capacity(group.len());
    for job in group {
        let e = job.event.as_new();
        if let Some(earlier) = earlier_seq!(tx, e)? {
            results.push(Ok(Appended::repeat(earlier)));
            continue;
        }
        let Some(seq) = next_seq!(tx, e)? else {
            results.push(Err(StoreError::NotFound));
            continue;
        };
        insert_event!(tx, e, seq)?;
        insert_outbox!(tx, e.outbox, e.conversation_id, Some(seq))?;
        results.push(Ok(Appended::created(seq)));
    }
    tx.commit().await?;
    Ok(results)
}
