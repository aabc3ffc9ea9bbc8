//! The `[relay]` section: brandgate as the messaging backend itself, for brands that keep
//! conversations on their own premises. Needs `[identity]` (consumers connect with the tokens
//! it mints) and keeps everything in `[store]`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Problems;
use crate::duration::Span;
use crate::networks::Networks;

mod saml;
mod sso;
mod webhooks;
pub use saml::{SamlConfig, fingerprint as sha256_fingerprint};
pub use sso::{SsoConfig, callback_url};
pub use webhooks::{DEFAULT_MAX_IN_FLIGHT, WebhooksConfig};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// The brand's account id, as in the platform's URLs (`/ws_api/account/{account}/...`).
    pub account: String,
    /// Replaces `[egress]` for the relay's webhooks and the agents' sign-in provider (OIDC
    /// discovery and tokens, SAML metadata). Away pushes leave as the push role's do.
    pub egress: Option<crate::config::EgressConfig>,
    /// Largest message text accepted, in bytes.
    #[serde(default = "defaults::max_message_bytes")]
    pub max_message_bytes: usize,
    /// Largest WebSocket frame accepted, in bytes (a request with its envelope).
    #[serde(default = "defaults::max_frame_bytes")]
    pub max_frame_bytes: usize,
    /// A consumer that connects without `Authorization: jwt ...` must send `InitConnection`
    /// with its token within this time.
    #[serde(default = "defaults::auth_timeout")]
    pub auth_timeout: Span,
    /// WebSocket connections held at once; beyond it new ones are refused with 503.
    #[serde(default = "defaults::max_sockets")]
    pub max_sockets: usize,
    /// Bytes queued for a socket that does not read them; when they stay full for 30 s the
    /// socket is closed (the client reconnects and catches up with `fromSeq`: nothing is
    /// skipped).
    #[serde(default = "defaults::send_queue_bytes")]
    pub send_queue_bytes: usize,
    /// Sockets one address (IPv6: one /64) may hold before they authenticate; more get `429`.
    #[serde(default = "defaults::unauthenticated_per_source")]
    pub unauthenticated_per_source: usize,
    /// Requests per socket per second before it gets `429` answers.
    #[serde(default = "defaults::requests_per_second")]
    pub requests_per_second: u32,
    /// Pushes to consumers who are away.
    #[serde(default)]
    pub away: AwayConfig,
    /// Signed POSTs to the brand's backend when conversations open and close and messages are
    /// stored; off when absent.
    pub webhooks: Option<WebhooksConfig>,
    /// Agents' accounts, logins and sessions.
    #[serde(default)]
    pub agents: AgentsConfig,
    /// The agents' browser workspace at `/workspace/`.
    #[serde(default)]
    pub workspace: WorkspaceConfig,
    /// A consumer chat page at `/demo/` for trying the relay out; off unless enabled.
    #[serde(default)]
    pub demo: DemoConfig,
}

/// `[relay.workspace]`: the agents' browser workspace.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceConfig {
    /// Serve it at `/workspace/` (the agent API works either way).
    #[serde(default = "defaults::yes")]
    pub enabled: bool,
    /// The origins (`https://host[:port]`) a browser may open an agent socket from with the
    /// session cookie. Empty: only the origin the request is addressed to (its `Host`).
    #[serde(default)]
    pub origins: Vec<String>,
    /// Skills an agent may transfer a conversation to (none: transfers go to the queue as
    /// they are).
    #[serde(default)]
    pub skills: Vec<String>,
    /// Canned responses, inserted in a reply by their shortcut.
    #[serde(default)]
    pub canned: Vec<CannedResponse>,
}

impl Default for WorkspaceConfig {
    fn default() -> Self {
        WorkspaceConfig {
            enabled: true,
            origins: Vec::new(),
            skills: Vec::new(),
            canned: Vec::new(),
        }
    }
}

/// One canned response: `/shortcut` in the reply box inserts `text`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CannedResponse {
    pub shortcut: String,
    pub text: String,
}

/// `[relay.demo]`: a minimal consumer chat page (anonymous sign-up) at `/demo/`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DemoConfig {
    #[serde(default)]
    pub enabled: bool,
}

impl WorkspaceConfig {
    fn check_shape(&self, max_message_bytes: usize, p: &mut Problems) {
        for (i, origin) in self.origins.iter().enumerate() {
            if !is_https_origin(origin) {
                p.push(
                    format!("relay.workspace.origins[{i}]"),
                    "must be an https origin: https://host or https://host:port, no path",
                );
            }
        }
        for (i, skill) in self.skills.iter().enumerate() {
            if skill.is_empty() || skill.len() > 64 || skill.chars().any(char::is_control) {
                p.push(
                    format!("relay.workspace.skills[{i}]"),
                    "must be 1 to 64 printable characters (a skill id)",
                );
            }
        }
        for (i, c) in self.canned.iter().enumerate() {
            let shortcut_ok = (2..=32).contains(&c.shortcut.len())
                && c.shortcut.starts_with('/')
                && c.shortcut[1..]
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !shortcut_ok {
                p.push(
                    format!("relay.workspace.canned[{i}].shortcut"),
                    "must be '/' and 1 to 31 letters, digits, '-' or '_'",
                );
            }
            if c.text.is_empty() || c.text.len() > max_message_bytes {
                p.push(
                    format!("relay.workspace.canned[{i}].text"),
                    format!("must be 1 to {max_message_bytes} bytes (relay.max_message_bytes)"),
                );
            }
            if self.canned[..i].iter().any(|o| o.shortcut == c.shortcut) {
                p.push(
                    format!("relay.workspace.canned[{i}].shortcut"),
                    "is used twice",
                );
            }
        }
        if self.canned.len() > 500 {
            p.push("relay.workspace.canned", "at most 500 canned responses");
        }
    }
}

/// `https://host` or `https://host:port`, nothing else (how browsers send `Origin`).
fn is_https_origin(origin: &str) -> bool {
    let Some(authority) = origin.strip_prefix("https://") else {
        return false;
    };
    !authority.is_empty()
        && authority.len() <= 255
        && authority
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

/// `[relay.away]`: when an agent's message makes a push to the consumer's devices.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AwayConfig {
    /// A consumer connected to this node has this long to acknowledge (ACCEPT/READ) an agent's
    /// message before a push goes out anyway.
    #[serde(default = "defaults::ack_delay")]
    pub ack_delay: Span,
    /// A consumer not connected: agent messages within this window make one push.
    #[serde(default = "defaults::burst")]
    pub burst: Span,
}

impl Default for AwayConfig {
    fn default() -> AwayConfig {
        AwayConfig {
            ack_delay: defaults::ack_delay(),
            burst: defaults::burst(),
        }
    }
}

/// `[relay.agents]`: the agents' own logins.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentsConfig {
    /// Shortest password accepted, in characters (at least 8; the config may only raise it).
    #[serde(default = "defaults::min_password_length")]
    pub min_password_length: usize,
    /// Consecutive failed logins that lock an agent out.
    #[serde(default = "defaults::max_failed_logins")]
    pub max_failed_logins: u32,
    /// How long a lock-out lasts; then logins are accepted again and the count restarts.
    #[serde(default = "defaults::lockout")]
    pub lockout: Span,
    /// How long a session (its bearer) lasts; a refresh extends it by as much again.
    #[serde(default = "defaults::session_lifetime")]
    pub session_lifetime: Span,
    /// No refresh extends a session past this long after its login: then the agent signs in
    /// again (and, with single sign-on, the provider says again whether it may). Default: 24h,
    /// or `session_lifetime` when that is longer.
    pub max_session_age: Option<Span>,
    /// Login attempts one address (IPv6: one /64) may make per minute; more get `429`.
    #[serde(default = "defaults::login_attempts_per_minute")]
    pub login_attempts_per_minute: u32,
    /// The networks (CIDRs) agents may sign in from and use their sessions from: a login, a
    /// REST call or a socket from any other client address is refused with `403` and audited.
    /// Empty: from anywhere. Behind a load balancer, set `server.trusted_proxies` so the
    /// client's own address is the one checked.
    #[serde(default)]
    pub allowed_networks: Networks,
    /// Single sign-on through the brand's identity provider.
    pub sso: Option<SsoConfig>,
}

impl Default for AgentsConfig {
    fn default() -> Self {
        AgentsConfig {
            min_password_length: defaults::min_password_length(),
            max_failed_logins: defaults::max_failed_logins(),
            lockout: defaults::lockout(),
            session_lifetime: defaults::session_lifetime(),
            max_session_age: None,
            login_attempts_per_minute: defaults::login_attempts_per_minute(),
            allowed_networks: Networks::default(),
            sso: None,
        }
    }
}

/// Shortest password policy the config may set (the floor).
pub const MIN_PASSWORD_LENGTH: usize = 8;
/// Longest password accepted, in bytes: it bounds the work of hashing one.
pub const MAX_PASSWORD_BYTES: usize = 1024;

impl AgentsConfig {
    /// How long after its login a session may be refreshed to at most.
    pub fn max_session_age(&self) -> Duration {
        self.max_session_age.map_or(
            Duration::from_secs(24 * 3600).max(self.session_lifetime.0),
            |m| m.0,
        )
    }

    fn check_shape(&self, p: &mut Problems) {
        if self.min_password_length < MIN_PASSWORD_LENGTH
            || self.min_password_length > MAX_PASSWORD_BYTES / 4
        {
            p.push(
                "relay.agents.min_password_length",
                format!(
                    "must be between {MIN_PASSWORD_LENGTH} (the least allowed) and {}",
                    MAX_PASSWORD_BYTES / 4
                ),
            );
        }
        if self.max_failed_logins == 0 || self.max_failed_logins > 1000 {
            p.push(
                "relay.agents.max_failed_logins",
                "must be between 1 and 1000",
            );
        }
        if self.lockout.0.is_zero() || self.lockout.0 > Duration::from_secs(30 * 86_400) {
            p.push("relay.agents.lockout", "must be above 0 and at most 30d");
        }
        if self.session_lifetime.0 < Duration::from_secs(60)
            || self.session_lifetime.0 > Duration::from_secs(30 * 86_400)
        {
            p.push(
                "relay.agents.session_lifetime",
                "must be between 1m and 30d",
            );
        }
        if let Some(max) = self.max_session_age
            && (max < self.session_lifetime || max.0 > Duration::from_secs(90 * 86_400))
        {
            p.push(
                "relay.agents.max_session_age",
                "must be at least session_lifetime and at most 90d",
            );
        }
        if self.login_attempts_per_minute == 0 {
            p.push(
                "relay.agents.login_attempts_per_minute",
                "must be at least 1",
            );
        }
        if let Some(sso) = &self.sso {
            sso.check_shape(p);
        }
    }
}

impl RelayConfig {
    /// What only a restart changes, compared by its `Debug` form (it names files and
    /// settings, never a secret): everything but the webhooks' delivery settings, which a
    /// reload swaps in.
    pub fn bound_at_start(&self) -> String {
        let queue = self.webhooks.as_ref().map(|w| w.max_in_flight);
        let without_webhooks = RelayConfig {
            webhooks: None,
            ..self.clone()
        };
        format!("{without_webhooks:?} {queue:?}")
    }

    pub(super) fn check_shape(&self, p: &mut Problems) {
        if self.account.is_empty()
            || self.account.len() > 64
            || !self
                .account
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            p.push(
                "relay.account",
                "must be 1 to 64 letters, digits, '-' or '_' (the account id in the platform's URLs)",
            );
        }
        if self.max_message_bytes == 0 || self.max_message_bytes > 1024 * 1024 {
            p.push("relay.max_message_bytes", "must be between 1 and 1048576");
        }
        if self.max_frame_bytes < self.max_message_bytes + 1024 {
            p.push(
                "relay.max_frame_bytes",
                "must leave 1024 bytes beyond max_message_bytes for the envelope",
            );
        }
        if self.auth_timeout.0.is_zero() || self.auth_timeout.0 > Duration::from_secs(60) {
            p.push("relay.auth_timeout", "must be above 0 and at most 60s");
        }
        if self.max_sockets == 0 {
            p.push("relay.max_sockets", "must be at least 1");
        }
        if self.send_queue_bytes < self.max_frame_bytes {
            p.push(
                "relay.send_queue_bytes",
                "must hold at least one frame (max_frame_bytes)",
            );
        }
        if self.unauthenticated_per_source == 0 {
            p.push("relay.unauthenticated_per_source", "must be at least 1");
        }
        if self.requests_per_second == 0 {
            p.push("relay.requests_per_second", "must be at least 1");
        }
        if self.away.ack_delay.0 > Duration::from_secs(3600) {
            p.push("relay.away.ack_delay", "must be at most 1h");
        }
        if self.away.burst.0 > Duration::from_secs(600) {
            p.push("relay.away.burst", "must be at most 10m");
        }
        if let Some(webhooks) = &self.webhooks {
            webhooks.check_shape(p);
        }
        self.agents.check_shape(p);
        self.workspace.check_shape(self.max_message_bytes, p);
    }
}

mod defaults {
    use super::*;

    pub fn yes() -> bool {
        true
    }
    pub fn max_message_bytes() -> usize {
        8 * 1024
    }
    pub fn max_frame_bytes() -> usize {
        64 * 1024
    }
    pub fn auth_timeout() -> Span {
        Span(Duration::from_secs(5))
    }
    pub fn max_sockets() -> usize {
        4_000
    }
    pub fn send_queue_bytes() -> usize {
        1024 * 1024
    }
    pub fn unauthenticated_per_source() -> usize {
        64
    }
    pub fn requests_per_second() -> u32 {
        50
    }
    pub fn ack_delay() -> Span {
        Span(Duration::from_secs(30))
    }
    pub fn burst() -> Span {
        Span(Duration::from_secs(3))
    }
    pub fn min_password_length() -> usize {
        super::MIN_PASSWORD_LENGTH
    }
    pub fn max_failed_logins() -> u32 {
        10
    }
    pub fn lockout() -> Span {
        Span(Duration::from_secs(15 * 60))
    }
    pub fn session_lifetime() -> Span {
        Span(Duration::from_secs(8 * 3600))
    }
    pub fn login_attempts_per_minute() -> u32 {
        30
    }
}
