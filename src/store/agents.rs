//! The relay's agent records: accounts, their sessions, and the audit of every login attempt.
//!
//! Contract (beyond the store's general one):
//! - `(account, username)` is unique: a second `create_agent` for it is a
//!   [`StoreError::Conflict`] and changes nothing.
//! - A session row is keyed by the SHA-256 of its bearer; the store never sees a bearer or a
//!   CSRF token, only their digests. An agent's password hash arrives sealed.
//! - `record_failed_login` counts a failure and locks the agent once the count reaches the
//!   limit, in one statement; a lock that has run out restarts the count. It does nothing to an
//!   agent that is locked now.
//! - `begin_agent_session` records a successful login and stores the session only if the agent
//!   is enabled and not locked at that moment, atomically with respect to
//!   `set_agent_disabled` and `replace_agent_password`, which end every session of the agent:
//!   no session outlives a disable or a password reset.
//! - `extend_agent_session` gives a session a new CSRF digest and a new end only while it is
//!   live and its agent enabled (a refresh: the bearer stays, as sockets hold it).
//! - `list_agents` is ordered by username; `list_agent_audit` newest first.
//! - An agent is linked to at most one identity at the agents' identity provider
//!   (`sso_subject`), and an identity to at most one agent of an account (Conflict);
//!   `link_agent_sso_subject` never replaces a link.
//!
//! Times are Unix milliseconds.

use crate::clock::UnixMillis;
use crate::ids::AgentId;
use sqlx::Row;

use super::{Store, StoreError};

/// An agent as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct AgentRow {
    /// A UUID; the sealed password is bound to it.
    pub id: AgentId,
    pub account: String,
    pub username: String,
    /// The argon2id PHC string, sealed with the context `agent_password:<id>`.
    pub password_sealed: Vec<u8>,
    pub disabled: bool,
    /// Consecutive failed logins since the last success, reset or run-out lock.
    pub failed_logins: i64,
    /// Logins are refused until then.
    pub locked_until: Option<UnixMillis>,
    pub created_at: UnixMillis,
    pub last_login_at: Option<UnixMillis>,
    /// The identity at the agents' identity provider this agent is linked to
    /// (`<issuer> <sub>`), once it signed in there.
    pub sso_subject: Option<String>,
}

impl std::fmt::Debug for AgentRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentRow")
            .field("id", &self.id)
            .field("account", &self.account)
            .field("username", &self.username)
            .field("disabled", &self.disabled)
            .field("failed_logins", &self.failed_logins)
            .field("locked_until", &self.locked_until)
            .field("sso_subject", &self.sso_subject)
            .finish_non_exhaustive()
    }
}

/// A session to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentSessionRow {
    /// SHA-256 of the bearer.
    pub token_hash: Vec<u8>,
    pub agent_id: AgentId,
    /// SHA-256 of the session's CSRF token.
    pub csrf_hash: Vec<u8>,
    pub created_at: UnixMillis,
    pub expires_at: UnixMillis,
}

/// A live session with its agent, as `get_live_agent_session` finds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveAgentSession {
    pub agent_id: AgentId,
    pub account: String,
    pub username: String,
    pub csrf_hash: Vec<u8>,
    /// When the session began (a login); refreshes do not move it.
    pub created_at: UnixMillis,
    pub expires_at: UnixMillis,
}

/// What `record_failed_login` left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailedLogin {
    pub failed_logins: i64,
    pub locked_until: Option<UnixMillis>,
}

/// One audited event (a login attempt, or an operator's change to an agent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentAuditRow {
    pub at: UnixMillis,
    pub account: String,
    pub username: String,
    pub agent_id: Option<AgentId>,
    /// What happened (`success`, `wrong_password`, `unknown_username`, `locked`, ...).
    pub outcome: String,
    /// The caller's address, or `cli` for the command line.
    pub source: Option<String>,
    /// How the agent signed in when not with a password: `oidc <issuer>`.
    pub via: Option<String>,
}

macro_rules! agent_columns {
    () => {
        "id, account, username, password_sealed, disabled, failed_logins, locked_until, created_at, last_login_at, sso_subject"
    };
}

/// Inserts a session (an expression, inside a transaction `$tx` of either backend).
macro_rules! insert_session {
    ($tx:ident, $s:expr) => {
        sqlx::query(
            "INSERT INTO agent_sessions (token_hash, agent_id, csrf_hash, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&$s.token_hash)
        .bind(&$s.agent_id)
        .bind(&$s.csrf_hash)
        .bind($s.created_at)
        .bind($s.expires_at)
        .execute(&mut *$tx)
        .await
    };
}

macro_rules! agent_row {
    ($r:expr) => {
        AgentRow {
            id: $r.try_get("id")?,
            account: $r.try_get("account")?,
            username: $r.try_get("username")?,
            password_sealed: $r.try_get("password_sealed")?,
            disabled: $r.try_get("disabled")?,
            failed_logins: $r.try_get("failed_logins")?,
            locked_until: $r.try_get("locked_until")?,
            created_at: $r.try_get("created_at")?,
            last_login_at: $r.try_get("last_login_at")?,
            sso_subject: $r.try_get("sso_subject")?,
        }
    };
}

/// Runs `$body` inside a write transaction of either backend (SQLite: `BEGIN IMMEDIATE`, so
/// writers queue instead of failing; PostgreSQL: row locks taken by the statements).
macro_rules! in_transaction {
    ($store:expr, $tx:ident => $body:expr) => {
        match $store {
            Store::Sqlite(pool, _) => {
                let mut $tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                $body
            }
            Store::Postgres(pool) => {
                let mut $tx = pool.begin().await?;
                $body
            }
        }
    };
}

impl Store {
    /// Adds an agent. Conflict if the account already has that username (or the id exists).
    pub async fn create_agent(&self, a: &AgentRow) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query(concat!("INSERT INTO agents (", agent_columns!(), ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"))
                .bind(&a.id)
                .bind(&a.account)
                .bind(&a.username)
                .bind(&a.password_sealed)
                .bind(a.disabled)
                .bind(a.failed_logins)
                .bind(a.locked_until)
                .bind(a.created_at)
                .bind(a.last_login_at)
                .bind(&a.sso_subject)
                .execute(pool)
                .await?;
        });
        Ok(())
    }

    pub async fn get_agent(
        &self,
        account: &str,
        username: &str,
    ) -> Result<Option<AgentRow>, StoreError> {
        let row = on_pool!(self, pool => {
            sqlx::query(concat!("SELECT ", agent_columns!(), " FROM agents WHERE account = $1 AND username = $2"))
                .bind(account)
                .bind(username)
                .fetch_optional(pool)
                .await?
                .map(|r| -> Result<AgentRow, sqlx::Error> { Ok(agent_row!(r)) })
                .transpose()?
        });
        Ok(row)
    }

    /// The agent of `account` linked to `subject` at the identity provider.
    pub async fn get_agent_by_sso_subject(
        &self,
        account: &str,
        subject: &str,
    ) -> Result<Option<AgentRow>, StoreError> {
        let row = on_pool!(self, pool => {
            sqlx::query(concat!("SELECT ", agent_columns!(), " FROM agents WHERE account = $1 AND sso_subject = $2"))
                .bind(account)
                .bind(subject)
                .fetch_optional(pool)
                .await?
                .map(|r| -> Result<AgentRow, sqlx::Error> { Ok(agent_row!(r)) })
                .transpose()?
        });
        Ok(row)
    }

    /// Links an agent not linked yet to `subject`; false when it is linked already (to
    /// anyone). Conflict when another agent of the account has that subject.
    pub async fn link_agent_sso_subject(
        &self,
        agent_id: &AgentId,
        subject: &str,
    ) -> Result<bool, StoreError> {
        let done = on_pool!(self, pool => {
            sqlx::query("UPDATE agents SET sso_subject = $2 WHERE id = $1 AND sso_subject IS NULL")
                .bind(agent_id)
                .bind(subject)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(done == 1)
    }

    /// The account's agents, by username.
    pub async fn list_agents(&self, account: &str) -> Result<Vec<AgentRow>, StoreError> {
        let rows = on_pool!(self, pool => {
            sqlx::query(concat!("SELECT ", agent_columns!(), " FROM agents WHERE account = $1 ORDER BY username"))
                .bind(account)
                .fetch_all(pool)
                .await?
                .iter()
                .map(|r| -> Result<AgentRow, sqlx::Error> { Ok(agent_row!(r)) })
                .collect::<Result<Vec<_>, _>>()?
        });
        Ok(rows)
    }

    /// Disables or enables an agent; disabling ends all its sessions in the same transaction.
    /// Returns whether the agent exists.
    pub async fn set_agent_disabled(
        &self,
        id: &AgentId,
        disabled: bool,
    ) -> Result<bool, StoreError> {
        in_transaction!(self, tx => {
            let found = sqlx::query("UPDATE agents SET disabled = $1 WHERE id = $2")
                .bind(disabled)
                .bind(id)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if disabled {
                sqlx::query("DELETE FROM agent_sessions WHERE agent_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(found == 1)
        })
    }

    /// Replaces an agent's sealed password, clears its failure count and lock, and ends all its
    /// sessions, in one transaction. Returns whether the agent exists.
    pub async fn replace_agent_password(
        &self,
        id: &AgentId,
        password_sealed: &[u8],
    ) -> Result<bool, StoreError> {
        in_transaction!(self, tx => {
            let found = sqlx::query(
                "UPDATE agents SET password_sealed = $1, failed_logins = 0, locked_until = NULL WHERE id = $2",
            )
            .bind(password_sealed)
            .bind(id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            sqlx::query("DELETE FROM agent_sessions WHERE agent_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(found == 1)
        })
    }

    /// Counts a failed login at `now`; at `max_failed` failures the agent is locked until
    /// `lock_until`. `None` when the agent does not exist or is locked at `now` (nothing
    /// counted).
    pub async fn record_failed_login(
        &self,
        id: &AgentId,
        now: UnixMillis,
        max_failed: i64,
        lock_until: UnixMillis,
    ) -> Result<Option<FailedLogin>, StoreError> {
        // Every right-hand side reads the row as it was before the update (both backends).
        const EXPIRED: &str = "(locked_until IS NOT NULL AND locked_until <= $1)";
        let sql = format!(
            "UPDATE agents SET \
                failed_logins = CASE WHEN {EXPIRED} THEN 1 ELSE failed_logins + 1 END, \
                locked_until = CASE \
                    WHEN (CASE WHEN {EXPIRED} THEN 1 ELSE failed_logins + 1 END) >= $2 THEN $3 \
                    WHEN {EXPIRED} THEN NULL \
                    ELSE locked_until END \
             WHERE id = $4 AND (locked_until IS NULL OR locked_until <= $1) \
             RETURNING failed_logins, locked_until"
        );
        let row = on_pool!(self, pool => {
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(now)
                .bind(max_failed)
                .bind(lock_until)
                .bind(id)
                .fetch_optional(pool)
                .await?
                .map(|r| -> Result<FailedLogin, sqlx::Error> {
                    Ok(FailedLogin {
                        failed_logins: r.try_get("failed_logins")?,
                        locked_until: r.try_get("locked_until")?,
                    })
                })
                .transpose()?
        });
        Ok(row)
    }

    /// Records a successful login at `now` (failure count and lock cleared, last login set) and
    /// stores the session, only if the agent is enabled and not locked. Returns whether it did.
    pub async fn begin_agent_session(
        &self,
        session: &AgentSessionRow,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        in_transaction!(self, tx => {
            // The update locks the agent's row (PostgreSQL) until the commit, so a concurrent
            // disable or reset waits and then ends this session too.
            let updated = sqlx::query(
                "UPDATE agents SET failed_logins = 0, locked_until = NULL, last_login_at = $1 \
                 WHERE id = $2 AND NOT disabled AND (locked_until IS NULL OR locked_until <= $1)",
            )
            .bind(now)
            .bind(&session.agent_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if updated != 1 {
                return Ok(false);
            }
            insert_session!(tx, session)?;
            tx.commit().await?;
            Ok(true)
        })
    }

    /// The session whose bearer hashes to `token_hash`, if it is live at `now` and its agent
    /// is enabled.
    pub async fn get_live_agent_session(
        &self,
        token_hash: &[u8],
        now: UnixMillis,
    ) -> Result<Option<LiveAgentSession>, StoreError> {
        let row = on_pool!(self, pool => {
            sqlx::query(
                "SELECT s.agent_id, a.account, a.username, s.csrf_hash, s.created_at, s.expires_at \
                 FROM agent_sessions s JOIN agents a ON a.id = s.agent_id \
                 WHERE s.token_hash = $1 AND s.expires_at > $2 AND NOT a.disabled",
            )
            .bind(token_hash)
            .bind(now)
            .fetch_optional(pool)
            .await?
            .map(|r| -> Result<LiveAgentSession, sqlx::Error> {
                Ok(LiveAgentSession {
                    agent_id: r.try_get("agent_id")?,
                    account: r.try_get("account")?,
                    username: r.try_get("username")?,
                    csrf_hash: r.try_get("csrf_hash")?,
                    created_at: r.try_get("created_at")?,
                    expires_at: r.try_get("expires_at")?,
                })
            })
            .transpose()?
        });
        Ok(row)
    }

    /// Extends a live session of an enabled agent: a new CSRF digest and end. Returns whether
    /// it did (`false`: no such live session).
    pub async fn extend_agent_session(
        &self,
        token_hash: &[u8],
        csrf_hash: &[u8],
        expires_at: UnixMillis,
        now: UnixMillis,
    ) -> Result<bool, StoreError> {
        let done = on_pool!(self, pool => {
            sqlx::query(
                "UPDATE agent_sessions SET csrf_hash = $1, expires_at = $2 \
                 WHERE token_hash = $3 AND expires_at > $4 \
                 AND agent_id IN (SELECT id FROM agents WHERE NOT disabled)",
            )
            .bind(csrf_hash)
            .bind(expires_at)
            .bind(token_hash)
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(done == 1)
    }

    /// Ends a session. Returns whether it existed.
    pub async fn delete_agent_session(&self, token_hash: &[u8]) -> Result<bool, StoreError> {
        let done = on_pool!(self, pool => {
            sqlx::query("DELETE FROM agent_sessions WHERE token_hash = $1")
                .bind(token_hash)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(done == 1)
    }

    /// Removes sessions that expired at or before `now`. Returns how many.
    pub async fn delete_expired_agent_sessions(&self, now: UnixMillis) -> Result<u64, StoreError> {
        let done = on_pool!(self, pool => {
            sqlx::query("DELETE FROM agent_sessions WHERE expires_at <= $1")
                .bind(now)
                .execute(pool)
                .await?
                .rows_affected()
        });
        Ok(done)
    }

    /// How many sessions an agent holds (live or not yet removed).
    pub async fn count_agent_sessions(&self, agent_id: &AgentId) -> Result<i64, StoreError> {
        let n = on_pool!(self, pool => {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM agent_sessions WHERE agent_id = $1")
                .bind(agent_id)
                .fetch_one(pool)
                .await?
        });
        Ok(n)
    }

    pub async fn create_agent_audit(&self, a: &AgentAuditRow) -> Result<(), StoreError> {
        on_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO agent_audit (at, account, username, agent_id, outcome, source, via) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(a.at)
            .bind(&a.account)
            .bind(&a.username)
            .bind(&a.agent_id)
            .bind(&a.outcome)
            .bind(&a.source)
            .bind(&a.via)
            .execute(pool)
            .await?;
        });
        Ok(())
    }

    /// The account's audit, newest first, at most `limit`.
    pub async fn list_agent_audit(
        &self,
        account: &str,
        limit: i64,
    ) -> Result<Vec<AgentAuditRow>, StoreError> {
        let rows = on_pool!(self, pool => {
            sqlx::query(
                "SELECT at, account, username, agent_id, outcome, source, via FROM agent_audit \
                 WHERE account = $1 ORDER BY at DESC, id DESC LIMIT $2",
            )
            .bind(account)
            .bind(limit)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|r| -> Result<AgentAuditRow, sqlx::Error> {
                Ok(AgentAuditRow {
                    at: r.try_get("at")?,
                    account: r.try_get("account")?,
                    username: r.try_get("username")?,
                    agent_id: r.try_get("agent_id")?,
                    outcome: r.try_get("outcome")?,
                    source: r.try_get("source")?,
                    via: r.try_get("via")?,
                })
            })
            .collect::<Result<Vec<_>, _>>()?
        });
        Ok(rows)
    }
}
