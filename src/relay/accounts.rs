//! Agent accounts: their passwords, lock-out, sessions and the audit of every login attempt.
//! The only code that hashes or checks an agent's password or mints an agent's bearer.
//!
//! - Passwords are hashed with argon2id (PHC string, random salt), and the hash is sealed at
//!   rest bound to the agent's id. Hashing runs on the blocking pool behind a small semaphore,
//!   so logins cannot take every core. An unknown, disabled or locked username costs one
//!   verification of a dummy hash, so timing does not tell which usernames exist.
//! - `relay.agents.max_failed_logins` consecutive failures lock the agent for
//!   `relay.agents.lockout`; then logins are accepted again and the count restarts. A password
//!   reset lifts the lock.
//! - A session is a 256-bit random bearer and CSRF token; the store keeps only their SHA-256.
//!   Disabling an agent or resetting its password ends its sessions.
//! - Every attempt is audited (a row and a log line with the username and the outcome).
//! - With `relay.agents.allowed_networks`, a login, a session's use (REST, socket) or a refresh
//!   from a client address outside the list is refused before anything else is checked, and
//!   audited (`network_not_allowed`; at most [`OUTSIDE_AUDITS_PER_MINUTE`] rows per source and
//!   [`OUTSIDE_AUDITS_IN_ALL_PER_MINUTE`] in all a minute, the rest in the debug log): a session
//!   made inside the list is not usable outside it.
//!
//! Never logs, stores or returns a password, its hash or a bearer.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::metrics::OutcomeLabel;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use base64::Engine;
use tokio::sync::{OnceCell, Semaphore};

use crate::clock::{Clock, UnixMillis};
use crate::config::{AgentsConfig, MAX_PASSWORD_BYTES};
use crate::digest::sha256;
use crate::ids::AgentId;
use crate::limiter::{MinuteBudget, SourceLimiter};
use crate::secret::Secret;
use crate::store::agents::{AgentAuditRow, AgentRow, AgentSessionRow};
use crate::store::seal::{DataKeys, SealError};
use crate::store::{Store, StoreError};

/// Refusals of sessions used from outside `allowed_networks` audited per source a minute.
pub const OUTSIDE_AUDITS_PER_MINUTE: u32 = 30;
/// ... and from all sources together (many sources cannot fill the audit either).
pub const OUTSIDE_AUDITS_IN_ALL_PER_MINUTE: u32 = 600;

/// Longest wait for a hashing slot before a login is answered "unavailable".
const HASHING_WAIT: Duration = Duration::from_secs(10);

/// Who an agent's bearer belongs to, for the agent socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPrincipal {
    pub agent_id: AgentId,
    pub username: String,
    /// The session ends then; the socket must not outlive it.
    pub expires_at: SystemTime,
}

/// Why a bearer was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AgentAuthError {
    /// Unknown, expired, revoked, or its agent is disabled.
    #[error("the session is not valid (unknown, expired or ended)")]
    Invalid,
    /// Used from a client address outside the account's `allowed_networks`.
    #[error("the client address is outside the account's allowed networks")]
    OutsideNetworks,
    /// The store cannot answer.
    #[error("the session cannot be checked right now: {0}")]
    Unavailable(String),
}

/// Why a login was refused. The caller gets one answer for all the refusals (the audit keeps
/// which one it was), except a locked agent that gave its right password: only someone who
/// knows the password learns that the agent is locked, and until when.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("login refused ({})", .0.as_str())]
    Refused(Refusal),
    /// From a client address outside the account's `allowed_networks` (nothing was checked).
    #[error("login from outside the account's allowed networks")]
    OutsideNetworks,
    /// The password was right, but the agent is locked out until then.
    #[error("the agent is locked out")]
    Locked { until: SystemTime },
    #[error("logins cannot be checked right now: {0}")]
    Unavailable(String),
}

/// Which refusal, for the audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    UnknownUsername,
    WrongPassword,
    /// This failure reached the limit: the agent is locked from now.
    LockedOut,
    /// Already locked.
    Locked,
    Disabled,
    /// The agent has no password: it signs in with single sign-on only.
    NoPassword,
    /// The account requires single sign-on and this agent is not a break-glass one.
    SsoRequired,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::UnknownUsername => "unknown_username",
            Refusal::WrongPassword => "wrong_password",
            Refusal::LockedOut => "locked_out",
            Refusal::Locked => "locked",
            Refusal::Disabled => "disabled",
            Refusal::NoPassword => "no_password",
            Refusal::SsoRequired => "sso_required",
        }
    }
}

/// Who the brand's identity provider says signed in, as the relay's single sign-on read it
/// from the provider's checked answer.
#[derive(Debug, Clone)]
pub struct SsoIdentity {
    /// Which provider and who there, for the audit and the log: `oidc <issuer> <sub>`.
    pub via: String,
    /// Who at the provider, for good (`<issuer> <sub>`): what an agent is linked to.
    pub subject: String,
    /// The value of the configured username claim, when it had one.
    pub username: Option<String>,
    /// The agent's groups at the provider.
    pub groups: Vec<String>,
}

/// Why a single sign-on did not start a session; the text is what the person is shown.
#[derive(Debug, thiserror::Error)]
pub enum SsoLoginError {
    #[error(
        "this account's agents may sign in and work only from its allowed networks; this client address is not in them"
    )]
    OutsideNetworks,
    #[error("single sign-on is not configured for this account")]
    NotConfigured,
    #[error("the identity provider did not give a username this account can use")]
    NoUsername,
    #[error("your account at the identity provider is not in the group allowed to work here")]
    NotInGroup,
    #[error(
        "there is no agent with your username in this account; ask an administrator to add you"
    )]
    UnknownAgent,
    #[error("this agent is linked to another identity at the identity provider")]
    LinkedToAnother,
    #[error("this agent signs in with its password only (a break-glass agent)")]
    BreakGlass,
    #[error("this agent has a password and is not linked to single sign-on; ask an administrator")]
    HasPassword,
    #[error("this agent is disabled")]
    Disabled,
    #[error("this agent is locked after too many failed password logins")]
    Locked { until: SystemTime },
    #[error("sign-ins cannot be completed right now; please try again")]
    Unavailable(String),
}

impl SsoLoginError {
    /// The audit's outcome.
    pub fn outcome(&self) -> &'static str {
        match self {
            SsoLoginError::OutsideNetworks => NETWORK_NOT_ALLOWED,
            SsoLoginError::NotConfigured => "sso_not_configured",
            SsoLoginError::NoUsername => "sso_no_username",
            SsoLoginError::NotInGroup => "sso_not_in_group",
            SsoLoginError::UnknownAgent => "unknown_username",
            SsoLoginError::LinkedToAnother => "sso_subject_mismatch",
            SsoLoginError::BreakGlass => "sso_break_glass",
            SsoLoginError::HasPassword => "sso_not_linked",
            SsoLoginError::Disabled => "disabled",
            SsoLoginError::Locked { .. } => "locked",
            SsoLoginError::Unavailable(_) => "unavailable",
        }
    }
}

/// Why an operator's change to an agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    #[error("an agent named {0:?} already exists in this account")]
    Duplicate(String),
    #[error("no agent named {0:?} in this account")]
    UnknownAgent(String),
    #[error("the password is too short: at least {0} characters")]
    PasswordTooShort(usize),
    #[error("the password is too long: at most {0} bytes")]
    PasswordTooLong(usize),
    #[error("usernames are 1 to 64 characters: letters, digits, '.', '_', '-', '@' or '+'")]
    BadUsername,
    #[error("the store cannot be used: {0}")]
    Store(#[from] StoreError),
    #[error("the stored password cannot be opened: {0}")]
    Seal(#[from] SealError),
    #[error("password hashing failed: {0}")]
    Hashing(#[from] HashingError),
}

/// Why a password could not be hashed or checked (never that it was wrong).
#[derive(Debug, thiserror::Error)]
pub enum HashingError {
    #[error("no randomness available")]
    NoRandomness,
    #[error("too many logins are being checked; try again")]
    Busy,
    #[error("password hashing is shut down")]
    ShutDown,
    #[error("the hashing task failed: {0}")]
    TaskFailed(String),
    #[error("argon2: {0}")]
    Argon2(argon2::password_hash::Error),
    #[error("a stored password hash cannot be used: {0}")]
    UnusableHash(argon2::password_hash::Error),
}

/// A new session: what the agent gets back from a login or a refresh. Prints redacted.
#[derive(Debug)]
pub struct NewSession {
    pub bearer: Secret<String>,
    pub csrf: Secret<String>,
    pub principal: AgentPrincipal,
}

/// A live session as the HTTP edge sees it: whose, and the digest of its CSRF token.
#[derive(Debug)]
pub(super) struct LiveSession {
    pub principal: AgentPrincipal,
    csrf_hash: Vec<u8>,
    /// When it began: no refresh extends it past `max_session_age` from then.
    created_at: UnixMillis,
}

impl LiveSession {
    /// Whether `csrf` is this session's CSRF token (constant time).
    pub fn csrf_matches(&self, csrf: &str) -> bool {
        crate::secret::constant_time_eq(&sha256(csrf.as_bytes()), &self.csrf_hash)
    }
}

/// An agent's state, for `brandgate agents list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentState {
    Active,
    Disabled,
    LockedUntil(SystemTime),
}

/// An agent as an operator sees it.
#[derive(Debug, Clone)]
pub struct AgentView {
    pub id: AgentId,
    pub username: String,
    pub state: AgentState,
    pub created_at: SystemTime,
    pub last_login_at: Option<SystemTime>,
}

/// The agents of the relay's account.
pub struct Accounts {
    account: String,
    config: AgentsConfig,
    store: Store,
    data_keys: Arc<DataKeys>,
    clock: Arc<dyn Clock>,
    hashing: Semaphore,
    /// A hash of a random password, verified against when there is no real one to check.
    dummy: OnceCell<String>,
    /// Audit rows written for sessions used from outside the allowed networks, per source.
    outside_audits: SourceLimiter,
    /// ... and in all.
    outside_audits_in_all: MinuteBudget,
    /// Audited events by outcome (`brandgate_relay_agent_audit_total`).
    audited: Family<OutcomeLabel, Counter>,
}

impl Accounts {
    pub fn new(
        account: String,
        config: AgentsConfig,
        store: Store,
        data_keys: Arc<DataKeys>,
        clock: Arc<dyn Clock>,
    ) -> Accounts {
        // Each hash holds argon2's default 19 MiB for tens of milliseconds: a few at a time.
        let slots = std::thread::available_parallelism().map_or(2, |n| n.get().clamp(1, 4));
        Accounts {
            account,
            config,
            store,
            data_keys,
            clock,
            hashing: Semaphore::new(slots),
            dummy: OnceCell::new(),
            outside_audits: SourceLimiter::default(),
            outside_audits_in_all: MinuteBudget::new(OUTSIDE_AUDITS_IN_ALL_PER_MINUTE),
            audited: Family::default(),
        }
    }

    /// Counts each audited event by outcome in `audited` (the relay's metrics).
    pub fn counting_audit_in(mut self, audited: Family<OutcomeLabel, Counter>) -> Accounts {
        self.audited = audited;
        self
    }

    pub fn account(&self) -> &str {
        &self.account
    }

    pub fn config(&self) -> &AgentsConfig {
        &self.config
    }

    /// Whether `username` must sign in with single sign-on (not a break-glass agent of an
    /// account that requires it).
    fn sso_required_for(&self, username: &str) -> bool {
        self.config
            .sso
            .as_ref()
            .is_some_and(|sso| sso.required && !sso.break_glass.iter().any(|b| b == username))
    }

    /// Whether agents may sign in and use their sessions from `source` (no list: from
    /// anywhere; an unknown source is outside any list).
    pub fn admits(&self, source: Option<IpAddr>) -> bool {
        let allowed = &self.config.allowed_networks;
        allowed.is_empty() || source.is_some_and(|ip| allowed.contains(ip))
    }

    fn now_ms(&self) -> UnixMillis {
        UnixMillis::now(&*self.clock)
    }

    // ------------------------------------------------------------------ operators

    /// Adds an agent with a password that meets the policy, or, with none, one that signs in
    /// with single sign-on only.
    pub async fn add_agent(
        &self,
        username: &str,
        password: Option<&Secret<String>>,
    ) -> Result<AgentView, AccountError> {
        let row = self.new_agent(username, password, None).await?;
        self.audit(username, Some(&row.id), "added", Some("cli"), None)
            .await;
        Ok(self.view(&row))
    }

    /// Stores a new agent (no password: single sign-on only, linked to `sso_subject` when
    /// created by its first sign-in).
    async fn new_agent(
        &self,
        username: &str,
        password: Option<&Secret<String>>,
        sso_subject: Option<&str>,
    ) -> Result<AgentRow, AccountError> {
        check_username(username)?;
        let id = AgentId::new(uuid::Uuid::new_v4().to_string());
        let password_sealed = match password {
            Some(password) => {
                self.check_password(password)?;
                let hash = self.hash(password).await?;
                self.data_keys.seal(&seal_context(&id), hash.as_bytes())?
            }
            None => Vec::new(),
        };
        let now = self.now_ms();
        let row = AgentRow {
            password_sealed,
            id,
            account: self.account.clone(),
            username: username.to_string(),
            disabled: false,
            failed_logins: 0,
            locked_until: None,
            created_at: now,
            last_login_at: None,
            sso_subject: sso_subject.map(str::to_string),
        };
        match self.store.create_agent(&row).await {
            Ok(()) => Ok(row),
            Err(StoreError::Conflict) => Err(AccountError::Duplicate(username.into())),
            Err(e) => Err(e.into()),
        }
    }

    /// Every agent of the account, by username.
    pub async fn list_agents(&self) -> Result<Vec<AgentView>, AccountError> {
        let rows = self.store.list_agents(&self.account).await?;
        Ok(rows.iter().map(|r| self.view(r)).collect())
    }

    /// Disables (ending its sessions) or enables an agent.
    pub async fn set_disabled(&self, username: &str, disabled: bool) -> Result<(), AccountError> {
        let agent = self.existing(username).await?;
        if !self.store.set_agent_disabled(&agent.id, disabled).await? {
            return Err(AccountError::UnknownAgent(username.into()));
        }
        let what = if disabled { "disabled" } else { "enabled" };
        tracing::info!(account = %self.account, username, "agent {what}");
        self.audit(username, Some(&agent.id), what, Some("cli"), None)
            .await;
        Ok(())
    }

    /// Sets a new password, lifts a lock-out and ends the agent's sessions.
    pub async fn reset_password(
        &self,
        username: &str,
        password: &Secret<String>,
    ) -> Result<(), AccountError> {
        self.check_password(password)?;
        let agent = self.existing(username).await?;
        let hash = self.hash(password).await?;
        let sealed = self
            .data_keys
            .seal(&seal_context(&agent.id), hash.as_bytes())?;
        if !self
            .store
            .replace_agent_password(&agent.id, &sealed)
            .await?
        {
            return Err(AccountError::UnknownAgent(username.into()));
        }
        tracing::info!(account = %self.account, username, "agent's password reset");
        self.audit(
            username,
            Some(&agent.id),
            "password_reset",
            Some("cli"),
            None,
        )
        .await;
        Ok(())
    }

    async fn existing(&self, username: &str) -> Result<AgentRow, AccountError> {
        self.store
            .get_agent(&self.account, username)
            .await?
            .ok_or_else(|| AccountError::UnknownAgent(username.into()))
    }

    fn check_password(&self, password: &Secret<String>) -> Result<(), AccountError> {
        let p = password.expose();
        if p.len() > MAX_PASSWORD_BYTES {
            return Err(AccountError::PasswordTooLong(MAX_PASSWORD_BYTES));
        }
        if p.chars().count() < self.config.min_password_length {
            return Err(AccountError::PasswordTooShort(
                self.config.min_password_length,
            ));
        }
        Ok(())
    }

    fn view(&self, r: &AgentRow) -> AgentView {
        let now = self.now_ms();
        let state = match (r.disabled, r.locked_until) {
            (true, _) => AgentState::Disabled,
            (false, Some(until)) if until > now => AgentState::LockedUntil(until.to_system_time()),
            (false, _) => AgentState::Active,
        };
        AgentView {
            id: r.id.clone(),
            username: r.username.clone(),
            state,
            created_at: r.created_at.to_system_time(),
            last_login_at: r.last_login_at.map(UnixMillis::to_system_time),
        }
    }

    // ------------------------------------------------------------------ logins

    /// Checks a username and password and starts a session. Every attempt is audited.
    pub async fn login(
        &self,
        username: &str,
        password: &Secret<String>,
        source: Option<IpAddr>,
    ) -> Result<NewSession, LoginError> {
        let result = if !self.admits(source) {
            Err((LoginError::OutsideNetworks, None))
        } else if self.sso_required_for(username) {
            Err((LoginError::Refused(Refusal::SsoRequired), None))
        } else {
            self.try_login(username, password).await
        };
        let source = source.map(|s| s.to_string());
        let (outcome, agent_id) = match &result {
            Ok(s) => ("success", Some(&s.principal.agent_id)),
            Err((LoginError::Refused(r), id)) => (r.as_str(), id.as_ref()),
            Err((LoginError::OutsideNetworks, id)) => (NETWORK_NOT_ALLOWED, id.as_ref()),
            Err((LoginError::Locked { .. }, id)) => ("locked_right_password", id.as_ref()),
            Err((LoginError::Unavailable(_), id)) => ("unavailable", id.as_ref()),
        };
        match &result {
            Ok(_) => {
                tracing::info!(account = %self.account, username, outcome, source = ?source, "agent login")
            }
            Err((LoginError::Refused(Refusal::LockedOut), _)) => tracing::warn!(
                account = %self.account, username, outcome, source = ?source,
                lockout = ?self.config.lockout.0,
                "agent login refused; the agent is locked out after {} failures", self.config.max_failed_logins
            ),
            Err((LoginError::OutsideNetworks, _)) => tracing::warn!(
                account = %self.account, username, outcome, source = ?source,
                "agent login refused: the client address is outside relay.agents.allowed_networks"
            ),
            Err((LoginError::Refused(_) | LoginError::Locked { .. }, _)) => {
                tracing::info!(account = %self.account, username, outcome, source = ?source, "agent login refused")
            }
            Err((LoginError::Unavailable(e), _)) => {
                tracing::error!(account = %self.account, username, error = %e, "agent login could not be checked")
            }
        }
        self.audit(username, agent_id, outcome, source.as_deref(), None)
            .await;
        result.map_err(|(e, _)| e)
    }

    /// The login itself; the error carries the agent id when the username exists.
    async fn try_login(
        &self,
        username: &str,
        password: &Secret<String>,
    ) -> Result<NewSession, (LoginError, Option<AgentId>)> {
        let unavailable = |e: &dyn std::fmt::Display, id: Option<&AgentId>| {
            (LoginError::Unavailable(e.to_string()), id.cloned())
        };
        let refused = |r: Refusal, id: Option<&AgentId>| (LoginError::Refused(r), id.cloned());
        let agent = self
            .store
            .get_agent(&self.account, username)
            .await
            .map_err(|e| unavailable(&e, None))?;
        let now = self.now_ms();
        let Some(agent) = agent else {
            self.verify_dummy(password)
                .await
                .map_err(|e| unavailable(&e, None))?;
            return Err(refused(Refusal::UnknownUsername, None));
        };
        let id = Some(&agent.id);
        // An agent without a password (single sign-on only) costs the same as any other.
        if agent.password_sealed.is_empty() {
            self.verify_dummy(password)
                .await
                .map_err(|e| unavailable(&e, id))?;
            return Err(refused(Refusal::NoPassword, id));
        }
        // A disabled agent costs the same as any other attempt; its password is not checked.
        if agent.disabled {
            self.verify_dummy(password)
                .await
                .map_err(|e| unavailable(&e, id))?;
            return Err(refused(Refusal::Disabled, id));
        }
        let hash = self
            .data_keys
            .open(&seal_context(&agent.id), &agent.password_sealed)
            .map_err(|e| unavailable(&e, id))?;
        let hash = String::from_utf8(hash.expose().clone())
            .map_err(|_| unavailable(&"the stored hash is not text", id))?;
        let right = self
            .verify(password, Secret::new(hash))
            .await
            .map_err(|e| unavailable(&e, id))?;
        // Locked: no session whatever the password, and a wrong one does not count. Who gave
        // the right one is told until when (the agent itself, waiting for the lock to lift).
        if let Some(until) = agent.locked_until.filter(|t| *t > now) {
            if right {
                let until = until.to_system_time();
                return Err((LoginError::Locked { until }, id.cloned()));
            }
            return Err(refused(Refusal::Locked, id));
        }
        let now = self.now_ms();
        if !right {
            let lock_until = now.after(self.config.lockout.0);
            let counted = self
                .store
                .record_failed_login(
                    &agent.id,
                    now,
                    i64::from(self.config.max_failed_logins),
                    lock_until,
                )
                .await
                .map_err(|e| unavailable(&e, id))?;
            let why = match counted {
                Some(f) if f.locked_until == Some(lock_until) => Refusal::LockedOut,
                Some(_) => Refusal::WrongPassword,
                // Locked by a concurrent attempt meanwhile.
                None => Refusal::Locked,
            };
            return Err(refused(why, id));
        }
        let (session, minted) = self
            .mint(&agent.id, &agent.username, now)
            .map_err(|e| unavailable(&e, id))?;
        let begun = self
            .store
            .begin_agent_session(&session, now)
            .await
            .map_err(|e| unavailable(&e, id))?;
        if !begun {
            // Disabled or locked between the read and now.
            return Err(refused(Refusal::Disabled, id));
        }
        if let Err(e) = self.store.delete_expired_agent_sessions(now).await {
            tracing::warn!(error = %e, "cannot remove expired agent sessions");
        }
        Ok(minted)
    }

    /// Starts a session for an agent the brand's identity provider vouched for (the checks of
    /// the provider's answer are done). Maps the identity to an agent of the account, applies
    /// the policy (`required_group`, `create_agents`, disabled, locked, allowed networks) and
    /// audits the outcome with `via` (the provider). Never sees a token or an assertion.
    pub async fn sso_login(
        &self,
        vouched: &SsoIdentity,
        source: Option<IpAddr>,
    ) -> Result<NewSession, SsoLoginError> {
        let result = self.try_sso_login(vouched, source).await;
        // Only a name an agent could have goes in the log and the audit.
        let username = vouched
            .username
            .as_deref()
            .filter(|u| check_username(u).is_ok())
            .unwrap_or("");
        let source_text = source.map(|s| s.to_string());
        let (outcome, agent_id) = match &result {
            Ok(s) => ("success", Some(&s.principal.agent_id)),
            Err((e, id)) => (e.outcome(), id.as_ref()),
        };
        match &result {
            Ok(_) => tracing::info!(
                account = %self.account, username, outcome, source = ?source_text, via = %vouched.via,
                "agent signed in with single sign-on"
            ),
            Err((SsoLoginError::Unavailable(e), _)) => tracing::error!(
                account = %self.account, username, error = %e, via = %vouched.via,
                "an agent's single sign-on could not be completed"
            ),
            Err((e, _)) => tracing::warn!(
                account = %self.account, username, outcome, source = ?source_text, via = %vouched.via,
                "agent single sign-on refused: {e}"
            ),
        }
        self.audit(
            username,
            agent_id,
            outcome,
            source_text.as_deref(),
            Some(&vouched.via),
        )
        .await;
        result.map_err(|(e, _)| e)
    }

    async fn try_sso_login(
        &self,
        vouched: &SsoIdentity,
        source: Option<IpAddr>,
    ) -> Result<NewSession, (SsoLoginError, Option<AgentId>)> {
        let unavailable = |e: &dyn std::fmt::Display, id: Option<&AgentId>| {
            (SsoLoginError::Unavailable(e.to_string()), id.cloned())
        };
        if !self.admits(source) {
            return Err((SsoLoginError::OutsideNetworks, None));
        }
        let Some(sso) = &self.config.sso else {
            return Err((SsoLoginError::NotConfigured, None));
        };
        let Some(username) = vouched
            .username
            .as_deref()
            .filter(|u| check_username(u).is_ok())
        else {
            return Err((SsoLoginError::NoUsername, None));
        };
        if let Some(group) = &sso.required_group
            && !vouched.groups.iter().any(|g| g == group)
        {
            return Err((SsoLoginError::NotInGroup, None));
        }
        let agent = self.sso_agent(vouched, username, sso, source).await?;
        let id = Some(&agent.id);
        if agent.disabled {
            return Err((SsoLoginError::Disabled, id.cloned()));
        }
        let now = self.now_ms();
        if let Some(until) = agent.locked_until.filter(|t| *t > now) {
            let until = until.to_system_time();
            return Err((SsoLoginError::Locked { until }, id.cloned()));
        }
        let (session, minted) = self
            .mint(&agent.id, &agent.username, now)
            .map_err(|e| unavailable(&e, id))?;
        let begun = self
            .store
            .begin_agent_session(&session, now)
            .await
            .map_err(|e| unavailable(&e, id))?;
        if !begun {
            return Err((SsoLoginError::Disabled, id.cloned()));
        }
        Ok(minted)
    }

    /// The agent a vouched identity is: the one linked to its subject; else the one its
    /// username names, linked now if it may be (an agent without a password, or any with
    /// `link_existing`; never a break-glass agent, never one linked to someone else); else,
    /// with `create_agents`, a new one linked to it.
    async fn sso_agent(
        &self,
        vouched: &SsoIdentity,
        username: &str,
        sso: &crate::config::SsoConfig,
        source: Option<IpAddr>,
    ) -> Result<AgentRow, (SsoLoginError, Option<AgentId>)> {
        let unavailable = |e: &dyn std::fmt::Display, id: Option<&AgentId>| {
            (SsoLoginError::Unavailable(e.to_string()), id.cloned())
        };
        let subject = vouched.subject.as_str();
        if let Some(agent) = self
            .store
            .get_agent_by_sso_subject(&self.account, subject)
            .await
            .map_err(|e| unavailable(&e, None))?
        {
            if agent.username != username {
                tracing::info!(account = %self.account, agent = %agent.username, claimed = username, "an agent's username at the provider is not its username here; its linked identity decides");
            }
            return Ok(agent);
        }
        let found = self
            .store
            .get_agent(&self.account, username)
            .await
            .map_err(|e| unavailable(&e, None))?;
        let Some(agent) = found else {
            if !sso.create_agents {
                return Err((SsoLoginError::UnknownAgent, None));
            }
            return match self.new_agent(username, None, Some(subject)).await {
                Ok(row) => {
                    tracing::info!(account = %self.account, username, via = %vouched.via, "agent created on its first single sign-on");
                    let source = source.map(|s| s.to_string());
                    self.audit(
                        username,
                        Some(&row.id),
                        "added",
                        source.as_deref(),
                        Some(&vouched.via),
                    )
                    .await;
                    Ok(row)
                }
                // Created (or the subject linked) by a concurrent sign-in meanwhile: the next
                // sign-in finds it.
                Err(AccountError::Duplicate(_)) => Err((
                    SsoLoginError::Unavailable("the agent was being created; sign in again".into()),
                    None,
                )),
                Err(e) => Err(unavailable(&e, None)),
            };
        };
        let id = Some(&agent.id);
        if agent.sso_subject.is_some() {
            return Err((SsoLoginError::LinkedToAnother, id.cloned()));
        }
        if sso.break_glass.iter().any(|b| b == username) {
            return Err((SsoLoginError::BreakGlass, id.cloned()));
        }
        if !agent.password_sealed.is_empty() && !sso.link_existing {
            return Err((SsoLoginError::HasPassword, id.cloned()));
        }
        match self.store.link_agent_sso_subject(&agent.id, subject).await {
            Ok(true) => {
                tracing::info!(account = %self.account, username, via = %vouched.via, "agent linked to its identity at the provider");
                Ok(AgentRow {
                    sso_subject: Some(subject.to_string()),
                    ..agent
                })
            }
            // Linked meanwhile, by a concurrent sign-in of this or another identity.
            Ok(false) | Err(StoreError::Conflict) => {
                Err((SsoLoginError::LinkedToAnother, id.cloned()))
            }
            Err(e) => Err(unavailable(&e, id)),
        }
    }

    // ------------------------------------------------------------------ sessions

    /// Who holds `bearer`, if its session is live, its agent enabled and `source` admitted.
    pub async fn authenticate(
        &self,
        bearer: &str,
        source: Option<IpAddr>,
    ) -> Result<AgentPrincipal, AgentAuthError> {
        self.session(bearer, source).await.map(|s| s.principal)
    }

    /// The live session of `bearer`, used from `source`. Outside the allowed networks it is
    /// refused whether or not it is valid (a valid one is named in the audit).
    pub(super) async fn session(
        &self,
        bearer: &str,
        source: Option<IpAddr>,
    ) -> Result<LiveSession, AgentAuthError> {
        if self.admits(source) {
            return self.live_session(bearer).await;
        }
        self.audit_outside(bearer, source).await;
        Err(AgentAuthError::OutsideNetworks)
    }

    /// Audits a single sign-on whose provider answer failed a check (a forged or tampered
    /// token), with no username: nothing in it can be believed.
    pub async fn audit_sso_failure(&self, outcome: &str, source: Option<IpAddr>, via: &str) {
        let source = source.map(|s| s.to_string());
        self.audit("", None, outcome, source.as_deref(), Some(via))
            .await;
    }

    /// Audits (and logs) a session used, or a sign-in started (`bearer` empty), from outside
    /// the allowed networks, within the per-source budget: a stolen bearer tried from outside
    /// cannot flood the audit.
    pub(super) async fn audit_outside(&self, bearer: &str, source: Option<IpAddr>) {
        let scope = "outside-networks";
        if let Some(ip) = source {
            if self
                .outside_audits
                .blocked(ip, scope, OUTSIDE_AUDITS_PER_MINUTE)
                .is_some()
            {
                tracing::debug!(source = %ip, "an agent call from outside the allowed networks (not audited: over the budget)");
                return;
            }
            self.outside_audits.count(ip, scope);
        }
        if !self.outside_audits_in_all.take() {
            tracing::debug!(
                "an agent call from outside the allowed networks (not audited: over the budget of all sources)"
            );
            return;
        }
        let principal = self.live_session(bearer).await.ok().map(|l| l.principal);
        let username = principal.as_ref().map_or("", |p| p.username.as_str());
        let source = source.map(|s| s.to_string());
        tracing::warn!(
            account = %self.account, username, source = ?source,
            "an agent call was refused: the client address is outside relay.agents.allowed_networks"
        );
        self.audit(
            username,
            principal.as_ref().map(|p| &p.agent_id),
            NETWORK_NOT_ALLOWED,
            source.as_deref(),
            None,
        )
        .await;
    }

    async fn live_session(&self, bearer: &str) -> Result<LiveSession, AgentAuthError> {
        if !looks_like_token(bearer) {
            return Err(AgentAuthError::Invalid);
        }
        let live = self
            .store
            .get_live_agent_session(&sha256(bearer.as_bytes()), self.now_ms())
            .await
            .map_err(|e| AgentAuthError::Unavailable(e.to_string()))?
            .ok_or(AgentAuthError::Invalid)?;
        if live.account != self.account {
            return Err(AgentAuthError::Invalid);
        }
        Ok(LiveSession {
            principal: AgentPrincipal {
                agent_id: live.agent_id,
                username: live.username,
                expires_at: live.expires_at.to_system_time(),
            },
            csrf_hash: live.csrf_hash,
            created_at: live.created_at,
        })
    }

    /// Extends the session of `bearer` by a whole lifetime from now, but never past
    /// `max_session_age` from its login, with a new CSRF token. The bearer stays (as on the
    /// platform): the agent's open sockets hold it and live on. A session at its maximum age
    /// cannot be refreshed: the agent signs in again (at the provider, for single sign-on, which
    /// then says again whether it may).
    pub async fn refresh(
        &self,
        bearer: &str,
        source: Option<IpAddr>,
    ) -> Result<NewSession, AgentAuthError> {
        let live = self.session(bearer, source).await?;
        let now = self.now_ms();
        let csrf = random_token().map_err(|e| AgentAuthError::Unavailable(e.to_string()))?;
        let expires_at = std::cmp::min(
            now.after(self.config.session_lifetime.0),
            live.created_at.after(self.config.max_session_age()),
        );
        if expires_at <= now {
            return Err(AgentAuthError::Invalid);
        }
        let extended = self
            .store
            .extend_agent_session(
                &sha256(bearer.as_bytes()),
                &sha256(csrf.as_bytes()),
                expires_at,
                now,
            )
            .await
            .map_err(|e| AgentAuthError::Unavailable(e.to_string()))?;
        if !extended {
            return Err(AgentAuthError::Invalid);
        }
        let p = live.principal;
        tracing::info!(account = %self.account, username = %p.username, "agent session refreshed");
        Ok(NewSession {
            bearer: Secret::new(bearer.to_string()),
            csrf: Secret::new(csrf),
            principal: AgentPrincipal {
                expires_at: expires_at.to_system_time(),
                ..p
            },
        })
    }

    /// Ends the session of `bearer`.
    pub async fn logout(&self, bearer: &str, source: Option<IpAddr>) -> Result<(), AgentAuthError> {
        let live = self.session(bearer, source).await?;
        let ended = self
            .store
            .delete_agent_session(&sha256(bearer.as_bytes()))
            .await
            .map_err(|e| AgentAuthError::Unavailable(e.to_string()))?;
        if !ended {
            return Err(AgentAuthError::Invalid);
        }
        tracing::info!(account = %self.account, username = %live.principal.username, "agent logged out");
        Ok(())
    }

    /// A fresh session for the agent: the row to store and what the agent gets.
    fn mint(
        &self,
        agent_id: &AgentId,
        username: &str,
        now: UnixMillis,
    ) -> Result<(AgentSessionRow, NewSession), HashingError> {
        let bearer = random_token()?;
        let csrf = random_token()?;
        let expires_at = now.after(self.config.session_lifetime.0);
        let row = AgentSessionRow {
            token_hash: sha256(bearer.as_bytes()).to_vec(),
            agent_id: agent_id.clone(),
            csrf_hash: sha256(csrf.as_bytes()).to_vec(),
            created_at: now,
            expires_at,
        };
        let session = NewSession {
            bearer: Secret::new(bearer),
            csrf: Secret::new(csrf),
            principal: AgentPrincipal {
                agent_id: agent_id.clone(),
                username: username.to_string(),
                expires_at: expires_at.to_system_time(),
            },
        };
        Ok((row, session))
    }

    // ------------------------------------------------------------------ hashing

    async fn hash(&self, password: &Secret<String>) -> Result<String, HashingError> {
        let password = password.clone();
        self.blocking(move || {
            let mut salt = [0u8; 16];
            aws_lc_rs::rand::fill(&mut salt).map_err(|_| HashingError::NoRandomness)?;
            argon2::Argon2::default()
                .hash_password_with_salt(password.expose().as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(HashingError::Argon2)
        })
        .await
    }

    /// Whether `password` matches the PHC string `hash`.
    async fn verify(
        &self,
        password: &Secret<String>,
        hash: Secret<String>,
    ) -> Result<bool, HashingError> {
        let password = password.clone();
        self.blocking(move || {
            match argon2::Argon2::default()
                .verify_password(password.expose().as_bytes(), hash.expose().as_str())
            {
                Ok(()) => Ok(true),
                Err(argon2::password_hash::Error::PasswordInvalid) => Ok(false),
                Err(e) => Err(HashingError::UnusableHash(e)),
            }
        })
        .await
    }

    /// Makes the dummy hash now, so that not even the first unknown username costs more than
    /// a known one. Called when the daemon starts.
    pub async fn warm_up(&self) {
        if let Err(e) = self.dummy_hash().await {
            tracing::warn!(error = %e, "cannot prepare the agents' dummy password hash");
        }
    }

    async fn dummy_hash(&self) -> Result<String, HashingError> {
        self.dummy
            .get_or_try_init(|| async {
                let random = Secret::new(random_token()?);
                self.hash(&random).await
            })
            .await
            .cloned()
    }

    /// Spends the same effort as a real check, against a hash no password matches.
    async fn verify_dummy(&self, password: &Secret<String>) -> Result<(), HashingError> {
        let dummy = self.dummy_hash().await?;
        self.verify(password, Secret::new(dummy)).await.map(|_| ())
    }

    /// Runs CPU-heavy hashing on the blocking pool, a few at a time.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, HashingError> + Send + 'static,
    ) -> Result<T, HashingError> {
        let _permit = tokio::time::timeout(HASHING_WAIT, self.hashing.acquire())
            .await
            .map_err(|_| HashingError::Busy)?
            .map_err(|_| HashingError::ShutDown)?;
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| HashingError::TaskFailed(e.to_string()))?
    }

    // ------------------------------------------------------------------ audit

    async fn audit(
        &self,
        username: &str,
        agent_id: Option<&AgentId>,
        outcome: &str,
        source: Option<&str>,
        via: Option<&str>,
    ) {
        self.audited
            .get_or_create(&OutcomeLabel {
                outcome: outcome.to_string(),
            })
            .inc();
        let row = AgentAuditRow {
            at: self.now_ms(),
            account: self.account.clone(),
            username: username.to_string(),
            agent_id: agent_id.cloned(),
            outcome: outcome.to_string(),
            source: source.map(str::to_string),
            via: via.map(str::to_string),
        };
        if let Err(e) = self.store.create_agent_audit(&row).await {
            // The log line above already holds the attempt.
            tracing::error!(error = %e, username, outcome, "cannot write the agent audit");
        }
    }
}

/// The audit outcome of a login or session use from outside the allowed networks.
pub const NETWORK_NOT_ALLOWED: &str = "network_not_allowed";

/// Usernames: 1 to 64 characters of a conservative set (they show in logs and lists).
fn check_username(username: &str) -> Result<(), AccountError> {
    let ok = (1..=64).contains(&username.len())
        && username
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@' | b'+'));
    if ok {
        Ok(())
    } else {
        Err(AccountError::BadUsername)
    }
}

/// The associated data binding a sealed password hash to its agent.
pub(super) fn seal_context(agent_id: &AgentId) -> Vec<u8> {
    format!("agent_password:{agent_id}").into_bytes()
}

/// 256 random bits, base64url without padding (43 characters).
fn random_token() -> Result<String, HashingError> {
    let mut raw = [0u8; 32];
    aws_lc_rs::rand::fill(&mut raw).map_err(|_| HashingError::NoRandomness)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw))
}

/// Whether `token` has the shape [`random_token`] gives (spares the store junk lookups).
fn looks_like_token(token: &str) -> bool {
    token.len() == 43
        && token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::fake::FakeClock;
    use crate::duration::Span;

    struct World {
        _dir: tempfile::TempDir,
        clock: Arc<FakeClock>,
        store: Store,
        accounts: Accounts,
    }

    async fn world() -> World {
        world_with(AgentsConfig::default()).await
    }

    async fn world_with(config: AgentsConfig) -> World {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_temporary(dir.path()).await;
        let clock = Arc::new(FakeClock::new());
        let config = AgentsConfig {
            max_failed_logins: 3,
            lockout: Span(Duration::from_secs(60)),
            session_lifetime: Span(Duration::from_secs(3600)),
            max_session_age: Some(Span(Duration::from_secs(7200))),
            ..config
        };
        let accounts = Accounts::new(
            "acme".into(),
            config,
            store.clone(),
            Arc::new(DataKeys::generate_for_test()),
            clock.clone(),
        );
        World {
            _dir: dir,
            clock,
            store,
            accounts,
        }
    }

    fn pw(p: &str) -> Secret<String> {
        Secret::new(p.to_string())
    }

    fn refusal(r: Result<NewSession, LoginError>) -> Refusal {
        match r {
            Err(LoginError::Refused(r)) => r,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn outside_the_allowed_networks_nothing_is_checked_and_every_refusal_is_audited() {
        let w = world_with(AgentsConfig {
            allowed_networks: [
                "10.0.0.0/8".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ]
            .into_iter()
            .collect(),
            ..AgentsConfig::default()
        })
        .await;
        let a = &w.accounts;
        let inside: IpAddr = "10.1.2.3".parse().unwrap();
        let inside_v6: IpAddr = "2001:db8::9".parse().unwrap();
        let outside: IpAddr = "192.0.2.1".parse().unwrap();
        a.add_agent("ann", Some(&pw("correct horse")))
            .await
            .unwrap();
        // Outside, even the right password gets no session, and a wrong one is not counted.
        for _ in 0..5 {
            assert!(matches!(
                a.login("ann", &pw("correct horse"), Some(outside)).await,
                Err(LoginError::OutsideNetworks)
            ));
        }
        assert!(matches!(
            a.login("ann", &pw("correct horse"), None).await,
            Err(LoginError::OutsideNetworks)
        ));
        let s = a
            .login("ann", &pw("correct horse"), Some(inside))
            .await
            .unwrap();
        let bearer = s.bearer.expose();
        assert!(a.authenticate(bearer, Some(inside_v6)).await.is_ok());
        // The session made inside is refused outside, and so is a junk bearer.
        assert!(matches!(
            a.authenticate(bearer, Some(outside)).await,
            Err(AgentAuthError::OutsideNetworks)
        ));
        assert!(matches!(
            a.refresh(bearer, Some(outside)).await,
            Err(AgentAuthError::OutsideNetworks)
        ));
        assert!(matches!(
            a.authenticate("junk", Some(outside)).await,
            Err(AgentAuthError::OutsideNetworks)
        ));
        assert!(a.authenticate(bearer, Some(inside)).await.is_ok());
        let audit = w.store.list_agent_audit("acme", 100).await.unwrap();
        let rows: Vec<(&str, &str, Option<&str>)> = audit
            .iter()
            .rev()
            .map(|r| (r.outcome.as_str(), r.username.as_str(), r.source.as_deref()))
            .collect();
        let login_refused = (NETWORK_NOT_ALLOWED, "ann", Some("192.0.2.1"));
        assert_eq!(
            rows,
            [
                ("added", "ann", Some("cli")),
                login_refused,
                login_refused,
                login_refused,
                login_refused,
                login_refused,
                (NETWORK_NOT_ALLOWED, "ann", None),
                ("success", "ann", Some("10.1.2.3")),
                (NETWORK_NOT_ALLOWED, "ann", Some("192.0.2.1")),
                (NETWORK_NOT_ALLOWED, "ann", Some("192.0.2.1")),
                (NETWORK_NOT_ALLOWED, "", Some("192.0.2.1")),
            ]
        );
        assert!(audit.iter().all(|r| r.outcome != "wrong_password"));
    }

    fn sso(link_existing: bool, create_agents: bool) -> crate::config::SsoConfig {
        crate::config::SsoConfig {
            required: false,
            break_glass: vec!["root".into()],
            create_agents,
            link_existing,
            required_group: Some("support".into()),
            username_claim: "preferred_username".into(),
            groups_claim: "groups".into(),
            name: "SSO".into(),
            oidc: None,
            saml: None,
        }
    }

    fn vouched(sub: &str, username: &str) -> SsoIdentity {
        SsoIdentity {
            via: format!("oidc https://idp {sub:?}"),
            subject: format!("https://idp {sub}"),
            username: Some(username.into()),
            groups: vec!["support".into()],
        }
    }

    fn sso_refusal(r: Result<NewSession, SsoLoginError>) -> &'static str {
        match r {
            Err(e) => e.outcome(),
            Ok(s) => panic!("signed in as {}", s.principal.username),
        }
    }

    #[tokio::test]
    async fn an_agent_is_its_linked_identity_whatever_its_name_says_later() {
        let w = world_with(AgentsConfig {
            sso: Some(sso(true, true)),
            ..AgentsConfig::default()
        })
        .await;
        let a = &w.accounts;
        a.add_agent("ann", Some(&pw("correct horse")))
            .await
            .unwrap();
        a.add_agent("root", Some(&pw("correct horse")))
            .await
            .unwrap();
        // link_existing: ann's first sign-in links her to sub-1.
        let s = a.sso_login(&vouched("sub-1", "ann"), None).await.unwrap();
        assert_eq!(s.principal.username, "ann");
        // Renamed at the provider: still ann here.
        let s = a.sso_login(&vouched("sub-1", "ann.b"), None).await.unwrap();
        assert_eq!(s.principal.username, "ann");
        // Someone else with her name is not her; the break-glass agent never signs in this way.
        assert_eq!(
            sso_refusal(a.sso_login(&vouched("sub-2", "ann"), None).await),
            "sso_subject_mismatch"
        );
        assert_eq!(
            sso_refusal(a.sso_login(&vouched("sub-3", "root"), None).await),
            "sso_break_glass"
        );
        // create_agents: a new name makes a new agent linked to its identity, once.
        let s = a
            .sso_login(&vouched("sub-4", "newbie"), None)
            .await
            .unwrap();
        assert_eq!(s.principal.username, "newbie");
        assert_eq!(
            sso_refusal(a.sso_login(&vouched("sub-5", "newbie"), None).await),
            "sso_subject_mismatch"
        );
        let linked = w.store.get_agent("acme", "newbie").await.unwrap().unwrap();
        assert_eq!(linked.sso_subject.as_deref(), Some("https://idp sub-4"));
        assert!(linked.password_sealed.is_empty());
        // Not in the group: nothing else is looked at.
        let mut outsider = vouched("sub-1", "ann");
        outsider.groups = vec!["sales".into()];
        assert_eq!(
            sso_refusal(a.sso_login(&outsider, None).await),
            "sso_not_in_group"
        );
    }

    #[tokio::test]
    async fn without_link_existing_an_agent_with_a_password_is_not_taken_by_its_name() {
        let w = world_with(AgentsConfig {
            sso: Some(sso(false, false)),
            ..AgentsConfig::default()
        })
        .await;
        let a = &w.accounts;
        a.add_agent("ann", Some(&pw("correct horse")))
            .await
            .unwrap();
        a.add_agent("dan", None).await.unwrap();
        assert_eq!(
            sso_refusal(a.sso_login(&vouched("sub-1", "ann"), None).await),
            "sso_not_linked"
        );
        assert_eq!(
            sso_refusal(a.sso_login(&vouched("sub-9", "nobody"), None).await),
            "unknown_username"
        );
        a.sso_login(&vouched("sub-2", "dan"), None).await.unwrap();
        let ann = w.store.get_agent("acme", "ann").await.unwrap().unwrap();
        assert_eq!(ann.sso_subject, None);
    }

    #[tokio::test]
    async fn a_bearer_tried_from_outside_cannot_flood_the_audit() {
        let w = world_with(AgentsConfig {
            allowed_networks: ["10.0.0.0/8".parse().unwrap()].into_iter().collect(),
            ..AgentsConfig::default()
        })
        .await;
        let a = &w.accounts;
        let outside: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..OUTSIDE_AUDITS_PER_MINUTE + 10 {
            assert!(matches!(
                a.authenticate("junk", Some(outside)).await,
                Err(AgentAuthError::OutsideNetworks)
            ));
        }
        assert!(a.authenticate("junk", Some(other)).await.is_err());
        let audit = w.store.list_agent_audit("acme", 1000).await.unwrap();
        let count = |ip: &str| {
            audit
                .iter()
                .filter(|r| r.source.as_deref() == Some(ip))
                .count()
        };
        assert_eq!(count("192.0.2.1"), OUTSIDE_AUDITS_PER_MINUTE as usize);
        assert_eq!(count("192.0.2.2"), 1);
    }

    #[tokio::test]
    async fn lockout_counts_consecutive_failures_and_ends_with_time() {
        let w = world().await;
        let a = &w.accounts;
        a.add_agent("ann", Some(&pw("correct horse")))
            .await
            .unwrap();
        // A success resets the count.
        assert_eq!(
            refusal(a.login("ann", &pw("nope nope"), None).await),
            Refusal::WrongPassword
        );
        a.login("ann", &pw("correct horse"), None).await.unwrap();
        for _ in 0..2 {
            assert_eq!(
                refusal(a.login("ann", &pw("nope nope"), None).await),
                Refusal::WrongPassword
            );
        }
        assert_eq!(
            refusal(a.login("ann", &pw("nope nope"), None).await),
            Refusal::LockedOut
        );
        // Locked: even the right password gets no session; who gives it learns until when
        // (the lock's end, 60 s on), a wrong one only that it is refused.
        let locked_until = w.clock.now() + Duration::from_secs(60);
        assert!(matches!(
            a.login("ann", &pw("correct horse"), None).await,
            Err(LoginError::Locked { until }) if until == locked_until
        ));
        assert_eq!(
            refusal(a.login("ann", &pw("nope nope"), None).await),
            Refusal::Locked
        );
        let listed = a.list_agents().await.unwrap();
        assert!(matches!(listed[0].state, AgentState::LockedUntil(_)));
        w.clock.advance(Duration::from_secs(59));
        assert!(matches!(
            a.login("ann", &pw("correct horse"), None).await,
            Err(LoginError::Locked { .. })
        ));
        w.clock.advance(Duration::from_secs(1));
        // The lock ran out: the count restarts (one failure does not lock again).
        assert_eq!(
            refusal(a.login("ann", &pw("nope nope"), None).await),
            Refusal::WrongPassword
        );
        a.login("ann", &pw("correct horse"), None).await.unwrap();
        assert_eq!(a.list_agents().await.unwrap()[0].state, AgentState::Active);
        // Every attempt was audited, newest first.
        let audit = w.store.list_agent_audit("acme", 100).await.unwrap();
        let outcomes: Vec<&str> = audit.iter().rev().map(|r| r.outcome.as_str()).collect();
        assert_eq!(
            outcomes,
            [
                "added",
                "wrong_password",
                "success",
                "wrong_password",
                "wrong_password",
                "locked_out",
                "locked_right_password",
                "locked",
                "locked_right_password",
                "wrong_password",
                "success"
            ]
        );
    }

    #[tokio::test]
    async fn a_password_reset_lifts_the_lock_and_ends_sessions() {
        let w = world().await;
        let a = &w.accounts;
        a.add_agent("ann", Some(&pw("correct horse")))
            .await
            .unwrap();
        let s = a.login("ann", &pw("correct horse"), None).await.unwrap();
        for _ in 0..3 {
            let _ = a.login("ann", &pw("nope nope"), None).await;
        }
        assert!(matches!(
            a.login("ann", &pw("correct horse"), None).await,
            Err(LoginError::Locked { .. })
        ));
        a.reset_password("ann", &pw("battery staple"))
            .await
            .unwrap();
        assert!(matches!(
            a.authenticate(s.bearer.expose(), None).await,
            Err(AgentAuthError::Invalid)
        ));
        assert_eq!(
            refusal(a.login("ann", &pw("correct horse"), None).await),
            Refusal::WrongPassword
        );
        a.login("ann", &pw("battery staple"), None).await.unwrap();
    }

    #[tokio::test]
    async fn sessions_expire_rotate_and_end() {
        let w = world().await;
        let a = &w.accounts;
        a.add_agent("ann", Some(&pw("correct horse")))
            .await
            .unwrap();
        let s = a.login("ann", &pw("correct horse"), None).await.unwrap();
        let p = a.authenticate(s.bearer.expose(), None).await.unwrap();
        assert_eq!(p.username, "ann");
        assert_eq!(p.expires_at, w.clock.now() + Duration::from_secs(3600));
        assert!(!format!("{s:?}").contains(s.bearer.expose().as_str()));

        // A refresh half-way extends the same session by a whole lifetime, with a new CSRF token.
        w.clock.advance(Duration::from_secs(1800));
        let r = a.refresh(s.bearer.expose(), None).await.unwrap();
        assert_eq!(r.bearer.expose(), s.bearer.expose());
        assert_eq!(
            r.principal.expires_at,
            w.clock.now() + Duration::from_secs(3600)
        );
        let live = a.session(r.bearer.expose(), None).await.unwrap();
        assert!(live.csrf_matches(r.csrf.expose()));
        assert!(!live.csrf_matches(s.csrf.expose()));
        // Past the first end, still live; at the new one, gone and not refreshable.
        w.clock.advance(Duration::from_secs(2400));
        assert!(a.authenticate(r.bearer.expose(), None).await.is_ok());
        w.clock.advance(Duration::from_secs(1200));
        assert!(matches!(
            a.refresh(r.bearer.expose(), None).await,
            Err(AgentAuthError::Invalid)
        ));
        assert!(matches!(
            a.authenticate(r.bearer.expose(), None).await,
            Err(AgentAuthError::Invalid)
        ));

        // Refreshed again and again, a session ends at its maximum age from the login (2 h
        // in this world), and then cannot be refreshed.
        let s = a.login("ann", &pw("correct horse"), None).await.unwrap();
        let login_at = w.clock.now();
        for _ in 0..2 {
            w.clock.advance(Duration::from_secs(1800));
            let r = a.refresh(s.bearer.expose(), None).await.unwrap();
            assert_eq!(
                r.principal.expires_at,
                w.clock.now() + Duration::from_secs(3600)
            );
        }
        w.clock.advance(Duration::from_secs(1800));
        let r = a.refresh(s.bearer.expose(), None).await.unwrap();
        assert_eq!(r.principal.expires_at, login_at + Duration::from_secs(7200));
        w.clock.advance(Duration::from_secs(1800));
        assert!(matches!(
            a.refresh(s.bearer.expose(), None).await,
            Err(AgentAuthError::Invalid)
        ));

        let s = a.login("ann", &pw("correct horse"), None).await.unwrap();
        a.logout(s.bearer.expose(), None).await.unwrap();
        assert!(matches!(
            a.authenticate(s.bearer.expose(), None).await,
            Err(AgentAuthError::Invalid)
        ));

        let s = a.login("ann", &pw("correct horse"), None).await.unwrap();
        a.set_disabled("ann", true).await.unwrap();
        assert!(matches!(
            a.authenticate(s.bearer.expose(), None).await,
            Err(AgentAuthError::Invalid)
        ));
        assert_eq!(
            refusal(a.login("ann", &pw("correct horse"), None).await),
            Refusal::Disabled
        );
        a.set_disabled("ann", false).await.unwrap();
        // Enabling does not bring an ended session back.
        assert!(matches!(
            a.authenticate(s.bearer.expose(), None).await,
            Err(AgentAuthError::Invalid)
        ));
        a.login("ann", &pw("correct horse"), None).await.unwrap();
        assert!(matches!(
            a.authenticate("not a bearer", None).await,
            Err(AgentAuthError::Invalid)
        ));
    }

    #[tokio::test]
    async fn policy_and_names_are_enforced() {
        let w = world().await;
        let a = &w.accounts;
        assert!(a.dummy.get().is_none());
        a.warm_up().await;
        assert!(
            a.dummy.get().is_some(),
            "the dummy hash is ready before any login"
        );
        assert!(matches!(
            a.add_agent("ann", Some(&pw("short"))).await,
            Err(AccountError::PasswordTooShort(8))
        ));
        // Characters, not bytes.
        assert!(matches!(
            a.add_agent("ann", Some(&pw("ééééééé"))).await,
            Err(AccountError::PasswordTooShort(8))
        ));
        assert!(matches!(
            a.add_agent("ann", Some(&pw(&"x".repeat(MAX_PASSWORD_BYTES + 1))))
                .await,
            Err(AccountError::PasswordTooLong(_))
        ));
        assert!(matches!(
            a.add_agent("a n", Some(&pw("long enough"))).await,
            Err(AccountError::BadUsername)
        ));
        a.add_agent("ann", Some(&pw("long enough"))).await.unwrap();
        assert!(matches!(
            a.add_agent("ann", Some(&pw("long enough"))).await,
            Err(AccountError::Duplicate(_))
        ));
        assert!(matches!(
            a.set_disabled("bob", true).await,
            Err(AccountError::UnknownAgent(_))
        ));
        assert_eq!(
            refusal(a.login("bob", &pw("long enough"), None).await),
            Refusal::UnknownUsername
        );
    }

    #[tokio::test]
    async fn the_stored_hash_is_sealed_to_its_agent() {
        let w = world().await;
        w.accounts
            .add_agent("ann", Some(&pw("correct horse")))
            .await
            .unwrap();
        let row = w.store.get_agent("acme", "ann").await.unwrap().unwrap();
        assert!(!row.password_sealed.windows(8).any(|x| x == b"$argon2i"));
        let opened = w
            .accounts
            .data_keys
            .open(&seal_context(&row.id), &row.password_sealed)
            .unwrap();
        assert!(opened.expose().starts_with(b"$argon2id$"));
        assert!(
            w.accounts
                .data_keys
                .open(b"agent_password:other", &row.password_sealed)
                .is_err()
        );
    }
}
