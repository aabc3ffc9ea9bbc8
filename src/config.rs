//! The configuration: one TOML file, overridden by `BRANDGATE_*` environment variables (`__`
//! separates nested keys: `BRANDGATE_OPS__LISTEN=127.0.0.1:9000`), deserialized into the typed
//! structs below. Unknown keys are errors everywhere.
//!
//! Loading only checks shape and syntax. Everything that needs the outside world (reading key
//! files, parsing certificates, checking URLs against the provider's rules) is checked by the role
//! that owns it while it builds itself, and reported as a [`Problem`] naming the key: all problems
//! are gathered and reported at once (`brandgate check-config`).
//!
//! This module never holds a secret: the config names files, and the roles read them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::{Deserialize, Serialize};

use crate::client_address::ForwardedHeader;
use crate::duration::Span;
use crate::networks::Networks;
pub use crate::ops::log::LogFormat;
pub use crate::problems::{Problem, Problems};

mod egress;
mod identity;
mod show;
pub use show::ShowError;
mod relay;
pub use egress::EgressConfig;
pub use identity::*;
pub use relay::{
    AgentsConfig, CannedResponse, DEFAULT_MAX_IN_FLIGHT, DemoConfig, MAX_PASSWORD_BYTES,
    RelayConfig, SamlConfig, SsoConfig, WebhooksConfig, WorkspaceConfig, callback_url,
    sha256_fingerprint,
};

/// The whole configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub ops: OpsConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub push: PushConfig,
    #[serde(default)]
    pub store: StoreConfig,
    /// The identity bridge; off when the section is absent.
    pub identity: Option<IdentityConfig>,
    /// The self-hosted relay; off when the section is absent. Needs `[identity]`.
    pub relay: Option<RelayConfig>,
    /// How outbound connections leave: directly, or through an HTTP proxy.
    #[serde(default)]
    pub egress: EgressConfig,
}

/// Where brandgate keeps what must outlive a restart (the signing key ring today).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite:///path/file.db` or `postgres://user@host:5432/db?sslmode=verify-full`.
    /// Default: `brandgate.db` in the state directory.
    pub url: Option<String>,
    /// The PostgreSQL password (never in the URL).
    pub password_file: Option<PathBuf>,
    #[serde(default = "defaults::store_connections")]
    pub max_connections: u32,
    /// Data keys that seal secrets at rest: lines of `<id> <base64 of 32 random bytes>`.
    /// Without it, a development data key is generated in the state directory.
    pub data_keys_file: Option<PathBuf>,
    /// The data key that seals new values. Default: the first in the file.
    pub active_data_key: Option<String>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: None,
            password_file: None,
            max_connections: defaults::store_connections(),
            data_keys_file: None,
            active_data_key: None,
        }
    }
}

/// The public HTTPS listener.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "defaults::listen")]
    pub listen: SocketAddr,
    /// Where brandgate keeps its state (the development certificate, the dead-token record).
    /// Defaults to `$STATE_DIRECTORY` (set by systemd's `StateDirectory=`), else `/var/lib/brandgate`.
    #[serde(default = "defaults::state_dir")]
    pub state_dir: PathBuf,
    #[serde(default)]
    pub tls: ServerTlsConfig,
    #[serde(default = "defaults::max_connections")]
    pub max_connections: usize,
    #[serde(default = "defaults::handshake_timeout")]
    pub handshake_timeout: Span,
    #[serde(default = "defaults::header_timeout")]
    pub header_timeout: Span,
    /// A connection with nothing in flight for this long is closed.
    #[serde(default = "defaults::idle_timeout")]
    pub idle_timeout: Span,
    #[serde(default = "defaults::max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    #[serde(default = "defaults::shutdown_grace")]
    pub shutdown_grace: Span,
    /// Load balancers and reverse proxies in front of brandgate (CIDRs). Only from these peers
    /// is `client_address_header` (and, with `proxy_protocol`, the PROXY header) believed for
    /// the client's address; every per-source limit and access list then counts real clients.
    /// Empty: every client is its connection's peer and forwarding headers are ignored.
    #[serde(default)]
    pub trusted_proxies: Networks,
    /// Which header trusted proxies put the client's address in: `x-forwarded-for` or
    /// `forwarded` (RFC 7239). Only that one is read.
    #[serde(default)]
    pub client_address_header: ForwardedHeader,
    /// Trusted proxies send a PROXY protocol v2 header before TLS (layer-4 balancers); a
    /// connection from one that does not is closed. Other peers connect directly as always.
    #[serde(default)]
    pub proxy_protocol: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: defaults::listen(),
            state_dir: defaults::state_dir(),
            tls: ServerTlsConfig::default(),
            max_connections: defaults::max_connections(),
            handshake_timeout: defaults::handshake_timeout(),
            header_timeout: defaults::header_timeout(),
            idle_timeout: defaults::idle_timeout(),
            max_concurrent_streams: defaults::max_concurrent_streams(),
            shutdown_grace: defaults::shutdown_grace(),
            trusted_proxies: Networks::default(),
            client_address_header: ForwardedHeader::default(),
            proxy_protocol: false,
        }
    }
}

/// The public listener's certificate. Without `cert`/`key`, a self-signed development
/// certificate is generated in the state directory.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerTlsConfig {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// CA bundle for client certificates. When set, callers may present a certificate (apps that
    /// require one check it); when absent, no client certificate is asked for.
    pub client_ca: Option<PathBuf>,
}

/// The operator's listener: `/metrics`, `/healthz`, `/readyz`. Plain HTTP, loopback by default.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OpsConfig {
    #[serde(default = "defaults::ops_listen")]
    pub listen: SocketAddr,
}

impl Default for OpsConfig {
    fn default() -> Self {
        OpsConfig {
            listen: defaults::ops_listen(),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter: `info`, or `warn,brandgate=debug`.
    #[serde(default = "defaults::log_level")]
    pub level: String,
    #[serde(default)]
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: defaults::log_level(),
            format: LogFormat::Text,
        }
    }
}

/// The push proxy.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PushConfig {
    /// A repeat of a delivered push (same app, token, conversation and sequence) within this
    /// window answers 200 without sending again.
    #[serde(default = "defaults::dedupe_window")]
    pub dedupe_window: Span,
    #[serde(default = "defaults::dedupe_capacity")]
    pub dedupe_capacity: usize,
    /// When the daemon has a store: also claim each push there before sending, so re-sends
    /// reaching other nodes, or this one after a restart, are recognised (costs a commit per
    /// push; see the README's benchmarks). Changes on restart.
    #[serde(default = "defaults::shared_dedupe")]
    pub shared_dedupe: bool,
    /// Everything brandgate does for one push, retries included, fits in this time. Keep it under
    /// the platform's 10 s re-send interval.
    #[serde(default = "defaults::deadline")]
    pub deadline: Span,
    /// Pushes being delivered at once; beyond it callers get 503 (and the platform re-sends).
    #[serde(default = "defaults::max_in_flight")]
    pub max_in_flight: usize,
    #[serde(default = "defaults::body_limit")]
    pub body_limit: usize,
    /// Failed caller authentications allowed per source address per minute before that address
    /// gets 429 for the rest of the minute.
    #[serde(default = "defaults::auth_failures_per_minute")]
    pub auth_failures_per_minute: u32,
    #[serde(default)]
    pub feedback: FeedbackConfig,
    #[serde(default)]
    pub apps: Vec<AppConfig>,
    /// Replaces `[egress]` for the providers, their token calls and the feedback webhook.
    pub egress: Option<EgressConfig>,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            dedupe_window: defaults::dedupe_window(),
            dedupe_capacity: defaults::dedupe_capacity(),
            shared_dedupe: defaults::shared_dedupe(),
            deadline: defaults::deadline(),
            max_in_flight: defaults::max_in_flight(),
            body_limit: defaults::body_limit(),
            auth_failures_per_minute: defaults::auth_failures_per_minute(),
            feedback: FeedbackConfig::default(),
            apps: Vec::new(),
            egress: None,
        }
    }
}

/// Where dead device tokens are reported.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FeedbackConfig {
    pub webhook: Option<WebhookConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    pub url: String,
    /// The signing secret (Standard Webhooks: `whsec_<base64>`, or any text used as it is).
    /// Without it the records go unsigned.
    pub secret_file: Option<PathBuf>,
    /// Also send the earlier `Brandgate-Signature` header (for one release, while receivers
    /// move to the Standard Webhooks headers).
    #[serde(default)]
    pub legacy_signature: bool,
    /// Send the full device token, not only its SHA-256.
    #[serde(default)]
    pub include_token: bool,
    #[serde(default)]
    pub extra_trust_anchors: Vec<PathBuf>,
    #[serde(default = "defaults::webhook_timeout")]
    pub timeout: Span,
    /// Attempts per record, the first included; then it is parked (`brandgate outbox list`).
    /// Without a store (push proxy only) at most 4.
    #[serde(default = "defaults::feedback_max_attempts")]
    pub max_attempts: u32,
}

/// One app the platform sends pushes for.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AppConfig {
    /// The platform's "App Name" for this app: usually the bundle id / package name
    /// (iOS debug builds register as `<bundleId>-Dev`). Used in the URL: `POST /push/{id}`.
    pub id: String,
    /// When set, the notification text that leaves brandgate is this, never the real text.
    pub mask_text: Option<String>,
    /// Set `mutable-content: 1` on APNs alerts so the app's notification service extension can
    /// fetch the real text itself.
    #[serde(default)]
    pub mutable_content: bool,
    #[serde(default)]
    pub auth: CallerAuthConfig,
    pub apns: Option<ApnsConfig>,
    pub fcm: Option<FcmConfig>,
    pub huawei: Option<HuaweiConfig>,
}

/// What a caller must present to push for an app. Every configured method must pass.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CallerAuthConfig {
    pub basic: Option<BasicAuthConfig>,
    pub client_cert: Option<ClientCertAuthConfig>,
    #[serde(default)]
    pub headers: Vec<HeaderAuthConfig>,
    /// Must be set explicitly to accept pushes with no caller authentication at all.
    #[serde(default)]
    pub allow_unauthenticated: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuthConfig {
    pub username: String,
    pub password_file: PathBuf,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientCertAuthConfig {
    /// Accepted identities: a certificate matches when its subject common name or one of its
    /// subject alternative names (DNS, URI, e-mail) equals one of these (DNS names ignore case).
    pub names: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderAuthConfig {
    pub name: String,
    pub value_file: PathBuf,
}

/// Apple Push Notification service for one app.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApnsConfig {
    /// The `apns-topic`: the app's bundle id.
    pub topic: String,
    /// `production`, `sandbox`, or an https URL (a relay, or a test server).
    #[serde(default = "defaults::apns_endpoint")]
    pub endpoint: String,
    /// Token auth: the `.p8` signing key, its key id and the team id.
    pub token_key_file: Option<PathBuf>,
    pub key_id: Option<String>,
    pub team_id: Option<String>,
    /// Certificate auth, PEM: the certificate (chain) and its private key.
    pub certificate_file: Option<PathBuf>,
    pub private_key_file: Option<PathBuf>,
    /// Certificate auth, PKCS#12: the `.p12` bundle and the file holding its password.
    pub pkcs12_file: Option<PathBuf>,
    pub pkcs12_password_file: Option<PathBuf>,
    /// Extra CA certificates (PEM) trusted for this endpoint, besides the system's.
    #[serde(default)]
    pub extra_trust_anchors: Vec<PathBuf>,
    /// HTTP/2 connections kept open to APNs for this app.
    #[serde(default = "defaults::connections")]
    pub connections: usize,
    /// How long APNs keeps trying to reach an offline device (`apns-expiration`).
    #[serde(default = "defaults::apns_expiration")]
    pub expiration: Span,
    /// Collapse notifications of one conversation on the device (`apns-collapse-id`).
    #[serde(default = "defaults::yes")]
    pub collapse_by_conversation: bool,
    /// Provider token age after which a new one is signed (Apple: between 20 and 60 minutes).
    #[serde(default = "defaults::apns_token_refresh")]
    pub token_refresh: Span,
}

/// Firebase Cloud Messaging (HTTP v1) for one app.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FcmConfig {
    /// The Google service-account JSON key file.
    pub service_account_file: PathBuf,
    /// Defaults to the `project_id` in the service-account file.
    pub project_id: Option<String>,
    #[serde(default = "defaults::fcm_endpoint")]
    pub endpoint: String,
    #[serde(default)]
    pub extra_trust_anchors: Vec<PathBuf>,
    #[serde(default = "defaults::connections")]
    pub connections: usize,
    /// Android delivery priority: `high` (wakes the device) or `normal`.
    #[serde(default = "defaults::fcm_priority")]
    pub android_priority: String,
    #[serde(default = "defaults::yes")]
    pub collapse_by_conversation: bool,
}

/// Huawei Push Kit (push API v1) for one app, for phones without Google services.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HuaweiConfig {
    /// The app's ID in AppGallery Connect (also its OAuth client id).
    pub app_id: String,
    /// The app's client secret (AppGallery Connect: Project settings, App information).
    pub client_secret_file: PathBuf,
    /// Huawei's OAuth token endpoint.
    #[serde(default = "defaults::huawei_oauth_url")]
    pub oauth_url: String,
    /// The push API's base URL (`{push_url}/v1/{app_id}/messages:send`).
    #[serde(default = "defaults::huawei_push_url")]
    pub push_url: String,
    #[serde(default)]
    pub extra_trust_anchors: Vec<PathBuf>,
    /// Idle connections kept to the push API.
    #[serde(default = "defaults::connections")]
    pub connections: usize,
    /// `android.urgency`: `HIGH` (delivered at once, counted against the app's high-priority
    /// quota) or `NORMAL`.
    #[serde(default = "defaults::huawei_urgency")]
    pub urgency: String,
    /// `android.category`: the message class the app was approved for (`IM`, `VOIP`, ...).
    /// Without one, Huawei caps messages per device per day.
    pub category: Option<String>,
    /// How long Huawei keeps a message for an offline device.
    #[serde(default = "defaults::huawei_ttl")]
    pub ttl: crate::duration::Span,
    /// `android.collapse_key`: which of an offline device's kept messages Huawei delivers when
    /// it comes back. `-1` every one (up to Huawei's own cap), `0` Huawei's default (usually
    /// only the latest), `1`..`100` a group of which only the latest is delivered. Unset,
    /// Huawei's default applies. The groups are few, so conversations are not mapped to them:
    /// two conversations in one group would hide each other's messages.
    pub collapse_key: Option<i8>,
}

mod defaults {
    use super::*;
    use std::time::Duration;

    pub fn listen() -> SocketAddr {
        SocketAddr::from(([0, 0, 0, 0], 8443))
    }
    pub fn ops_listen() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 9464))
    }
    pub fn state_dir() -> PathBuf {
        // systemd's StateDirectory= may hold several paths separated by ':'; ours is the first.
        std::env::var_os("STATE_DIRECTORY")
            .and_then(|v| {
                v.to_string_lossy()
                    .split(':')
                    .next()
                    .filter(|s| !s.is_empty())
                    .map(PathBuf::from)
            })
            .unwrap_or_else(|| PathBuf::from("/var/lib/brandgate"))
    }
    pub fn max_connections() -> usize {
        4096
    }
    pub fn handshake_timeout() -> Span {
        Span(Duration::from_secs(10))
    }
    pub fn header_timeout() -> Span {
        Span(Duration::from_secs(10))
    }
    pub fn idle_timeout() -> Span {
        Span(Duration::from_secs(120))
    }
    pub fn max_concurrent_streams() -> u32 {
        256
    }
    pub fn shutdown_grace() -> Span {
        Span(Duration::from_secs(20))
    }
    pub fn log_level() -> String {
        "info".into()
    }
    pub fn dedupe_window() -> Span {
        Span(Duration::from_secs(600))
    }
    pub fn dedupe_capacity() -> usize {
        1_000_000
    }
    pub fn shared_dedupe() -> bool {
        true
    }
    pub fn deadline() -> Span {
        Span(Duration::from_secs(8))
    }
    pub fn max_in_flight() -> usize {
        8192
    }
    pub fn body_limit() -> usize {
        64 * 1024
    }
    pub fn auth_failures_per_minute() -> u32 {
        30
    }
    pub fn feedback_max_attempts() -> u32 {
        10
    }
    pub fn webhook_timeout() -> Span {
        Span(Duration::from_secs(5))
    }
    pub fn apns_endpoint() -> String {
        "production".into()
    }
    pub fn fcm_endpoint() -> String {
        "https://fcm.googleapis.com".into()
    }
    pub fn connections() -> usize {
        2
    }
    pub fn apns_expiration() -> Span {
        Span(Duration::from_secs(86_400))
    }
    pub fn apns_token_refresh() -> Span {
        Span(Duration::from_secs(50 * 60))
    }
    pub fn huawei_oauth_url() -> String {
        "https://oauth-login.cloud.huawei.com/oauth2/v3/token".into()
    }
    pub fn huawei_push_url() -> String {
        "https://push-api.cloud.huawei.com".into()
    }
    pub fn huawei_urgency() -> String {
        "HIGH".into()
    }
    pub fn huawei_ttl() -> crate::duration::Span {
        crate::duration::Span(Duration::from_secs(86_400))
    }
    pub fn fcm_priority() -> String {
        "high".into()
    }
    pub fn yes() -> bool {
        true
    }
    pub fn store_connections() -> u32 {
        10
    }
}

impl Config {
    /// Reads the file and the environment. Fails with every syntax or shape problem found.
    pub fn load(path: &Path) -> Result<Config, Problems> {
        let (config, problems) = Self::load_lenient(path);
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => Err(problems),
        }
    }

    /// Reads the file and the environment, reporting every problem at once: each unknown or
    /// malformed key is named and left out, so the rest is still read (and `check-config` can
    /// go on to check the files and URLs it names). The config is `None` only when what is
    /// left cannot make one (a required key missing, the file unreadable).
    pub fn load_lenient(path: &Path) -> (Option<Config>, Problems) {
        Self::load_lenient_with_env(path, Env::prefixed("BRANDGATE_").split("__"))
    }

    fn load_lenient_with_env(path: &Path, env: Env) -> (Option<Config>, Problems) {
        // `%d/name` without systemd credentials means `secrets/name` beside the config file.
        if let Some(dir) = path.parent() {
            crate::secret::set_credentials_fallback(dir.join("secrets"));
        }
        let unreadable = |message: String| (None, Problems(vec![Problem::new("", message)]));
        match std::fs::metadata(path) {
            Ok(m) if m.is_file() => {}
            Ok(_) => {
                return unreadable(format!(
                    "config file {} is not a regular file",
                    path.display()
                ));
            }
            Err(e) => {
                return unreadable(format!("cannot read config file {}: {e}", path.display()));
            }
        }
        let figment = Figment::new().merge(Toml::file_exact(path)).merge(env);
        let (config, mut problems) = extract_every_problem(&figment);
        if let Some(config) = &config {
            problems.0.extend(config.check_shape().0);
        }
        (config, problems)
    }

    /// Every file that holds a secret, with the key that names it.
    pub fn secret_files(&self) -> Vec<(String, &Path)> {
        let mut files: Vec<(String, &Path)> = Vec::new();
        if let Some(f) = &self.store.password_file {
            files.push(("store.password_file".into(), f));
        }
        if let Some(f) = &self.store.data_keys_file {
            files.push(("store.data_keys_file".into(), f));
        }
        if let Some(k) = &self.server.tls.key {
            files.push(("server.tls.key".into(), k));
        }
        if let Some(w) = &self.push.feedback.webhook
            && let Some(f) = &w.secret_file
        {
            files.push(("push.feedback.webhook.secret_file".into(), f));
        }
        if let Some(w) = self.relay.as_ref().and_then(|r| r.webhooks.as_ref()) {
            files.push(("relay.webhooks.secret_file".into(), &w.secret_file));
        }
        if let Some(id) = &self.identity {
            if let Some(up) = &id.upstream {
                files.push((
                    "identity.upstream.client_secret_file".into(),
                    &up.client_secret_file,
                ));
            }
            if let Some(f) = &id.subject.pseudonym_key_file {
                files.push(("identity.subject.pseudonym_key_file".into(), f));
            }
            for (i, c) in id.clients.iter().enumerate() {
                files.push((format!("identity.clients[{i}].secret_file"), &c.secret_file));
            }
            for (i, b) in id.backends.iter().enumerate() {
                if let Some(f) = &b.secret_file {
                    files.push((format!("identity.backends[{i}].secret_file"), f));
                }
            }
        }
        for (i, app) in self.push.apps.iter().enumerate() {
            let key = format!("push.apps[{i}]");
            if let Some(b) = &app.auth.basic {
                files.push((format!("{key}.auth.basic.password_file"), &b.password_file));
            }
            for (j, h) in app.auth.headers.iter().enumerate() {
                files.push((format!("{key}.auth.headers[{j}].value_file"), &h.value_file));
            }
            if let Some(a) = &app.apns {
                let named = [
                    ("token_key_file", &a.token_key_file),
                    ("private_key_file", &a.private_key_file),
                    ("pkcs12_file", &a.pkcs12_file),
                    ("pkcs12_password_file", &a.pkcs12_password_file),
                ];
                for (field, path) in named {
                    if let Some(p) = path {
                        files.push((format!("{key}.apns.{field}"), p));
                    }
                }
            }
            if let Some(f) = &app.fcm {
                files.push((
                    format!("{key}.fcm.service_account_file"),
                    &f.service_account_file,
                ));
            }
            if let Some(h) = &app.huawei {
                files.push((
                    format!("{key}.huawei.client_secret_file"),
                    &h.client_secret_file,
                ));
            }
        }
        files
    }

    /// What is usable but unwise: secret files every user on the machine can read.
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings: Vec<String> = self
            .secret_files()
            .into_iter()
            .filter(|(_, path)| crate::secret::world_readable(path))
            .map(|(key, path)| {
                format!(
                    "{key}: {} is readable by every user; chmod 0640 (root:brandgate) or hand it over with LoadCredential=",
                    path.display()
                )
            })
            .collect();
        if let Some(relay) = &self.relay
            && relay.max_sockets > self.server.max_connections
        {
            warnings.push(format!(
                "relay.max_sockets ({}) is above server.max_connections ({}): the listener stops accepting first; raise server.max_connections for that many sockets",
                relay.max_sockets, self.server.max_connections
            ));
        }
        if let Some(webhooks) = self.relay.as_ref().and_then(|r| r.webhooks.as_ref())
            && webhooks.queue_capacity.is_some()
        {
            warnings.push(
                "relay.webhooks.queue_capacity is no longer used: webhooks wait in the store's outbox and none is dropped; remove the line".to_string(),
            );
        }
        warnings
    }

    /// Checks that need no file: ranges, duplicates, and combinations that make no sense.
    fn check_shape(&self) -> Problems {
        let mut p = Problems::default();
        // Port 0 means "any free port", which never collides.
        if self.server.listen == self.ops.listen && self.ops.listen.port() != 0 {
            p.push("ops.listen", "must differ from server.listen");
        }
        if self.server.proxy_protocol && self.server.trusted_proxies.is_empty() {
            p.push(
                "server.proxy_protocol",
                "needs server.trusted_proxies: the PROXY header is read only from trusted proxies",
            );
        }
        if self.server.max_connections == 0 {
            p.push("server.max_connections", "must be at least 1");
        }
        if self.server.max_concurrent_streams == 0 {
            p.push("server.max_concurrent_streams", "must be at least 1");
        }
        if self.server.tls.cert.is_some() != self.server.tls.key.is_some() {
            p.push(
                "server.tls",
                "cert and key go together: set both, or neither for a development certificate",
            );
        }
        if crate::ops::log::parse_filter(&self.log.level).is_err() {
            p.push(
                "log.level",
                format!(
                    "{:?} is not a log filter like \"info\" or \"warn,brandgate=debug\"",
                    self.log.level
                ),
            );
        }
        let push = &self.push;
        if push.deadline.0.is_zero() || push.deadline.0 >= std::time::Duration::from_secs(10) {
            p.push(
                "push.deadline",
                "must be above 0 and below 10s, the platform's re-send interval",
            );
        }
        if push.max_in_flight == 0 {
            p.push("push.max_in_flight", "must be at least 1");
        }
        if push.body_limit < 1024 {
            p.push("push.body_limit", "must be at least 1024 bytes");
        }
        if let Some(id) = &self.identity {
            id.check_shape(&mut p);
        }
        if let Some(relay) = &self.relay {
            relay.check_shape(&mut p);
            if self.identity.is_none() {
                p.push(
                    "relay",
                    "needs [identity]: consumers connect with the tokens it mints",
                );
            }
        }
        let mut seen = std::collections::HashSet::new();
        for (i, app) in push.apps.iter().enumerate() {
            if !seen.insert(app.id.as_str()) {
                p.push(
                    format!("push.apps[{i}].id"),
                    format!("{:?} is configured twice", app.id),
                );
            }
        }
        p
    }
}

/// Turns one figment error into a problem naming the key (`server.listen`) and, where known, the
/// source (the file or the environment variable).
/// Extracts the config, and on each error names it and leaves its key out, then tries again
/// (every unknown key of one run is reported, not only the first). A key whose value was left
/// out is not reported again as missing.
fn extract_every_problem(figment: &Figment) -> (Option<Config>, Problems) {
    use figment::value::Dict;
    let mut problems = Problems::default();
    let mut data: Dict = match figment.extract() {
        Ok(d) => d,
        Err(e) => {
            return (
                None,
                Problems(e.into_iter().map(|e| figment_problem(e, figment)).collect()),
            );
        }
    };
    let mut left_out: Vec<Vec<String>> = Vec::new();
    // Bounded: each round removes a key, and a config has not many more than this.
    for _ in 0..256 {
        let attempt = Figment::from(figment::providers::Serialized::globals(&data));
        let error = match attempt.extract::<Config>() {
            Ok(config) => return (Some(config), problems),
            Err(e) => e,
        };
        let mut removed_any = false;
        for e in error {
            let at = key_path(&e);
            let missing = matches!(e.kind, figment::error::Kind::MissingField(_));
            if !(missing && left_out.iter().any(|l| at.starts_with(l))) {
                problems.0.push(figment_problem(e, figment));
            }
            // A missing key cannot be left out: its table is, so the rest can still be read.
            let table = &at[..at.len().saturating_sub(1)];
            let leave_out = if missing { table } else { &at[..] };
            if remove_key(&mut data, leave_out) {
                removed_any = true;
                left_out.push(leave_out.to_vec());
            }
        }
        if !removed_any {
            break;
        }
    }
    // What is left cannot be made a config; every problem on the way is named.
    (None, problems)
}

/// The path of the key an error is about (for an unknown field, the field itself).
fn key_path(e: &figment::Error) -> Vec<String> {
    let mut path = e.path.clone();
    match &e.kind {
        figment::error::Kind::UnknownField(field, _)
            if path.last().map(String::as_str) != Some(field.as_str()) =>
        {
            path.push(field.clone());
        }
        figment::error::Kind::MissingField(field)
            if path.last().map(String::as_str) != Some(field.as_ref()) =>
        {
            path.push(field.to_string());
        }
        _ => {}
    }
    path
}

/// Removes the key at `path` from `data`; whether there was one.
fn remove_key(data: &mut figment::value::Dict, path: &[String]) -> bool {
    match path {
        [] => false,
        [last] => data.remove(last.as_str()).is_some(),
        [first, rest @ ..] => data
            .get_mut(first.as_str())
            .is_some_and(|v| remove_in(v, rest)),
    }
}

fn remove_in(value: &mut figment::value::Value, path: &[String]) -> bool {
    use figment::value::Value;
    match value {
        Value::Dict(_, d) => remove_key(d, path),
        Value::Array(_, items) => {
            let Some((index, rest)) = path.split_first() else {
                return false;
            };
            let Some(n) = index.parse::<usize>().ok().filter(|n| *n < items.len()) else {
                return false;
            };
            if rest.is_empty() {
                items.remove(n);
                true
            } else {
                remove_in(&mut items[n], rest)
            }
        }
        _ => false,
    }
}

/// A figment error as a problem: the key in the spelling the roles use
/// (`push.apps[0].apns.key_id`) and, when it came from the environment, which variable.
fn figment_problem(e: figment::Error, figment: &Figment) -> Problem {
    let path = key_path(&e);
    let key = display_key(&path);
    let mut message = e.kind.to_string();
    let dotted = path.join(".");
    let source = figment
        .find_metadata(&dotted)
        .or(e.metadata.as_ref())
        .map(|m| (m.name.to_string(), m.source.as_ref().map(|s| s.to_string())));
    match source {
        Some((name, _)) if name.to_ascii_lowercase().contains("environment") => {
            let variable = format!(
                "BRANDGATE_{}",
                path.iter()
                    .map(|p| p.to_ascii_uppercase())
                    .collect::<Vec<_>>()
                    .join("__")
            );
            message = format!("{message} (from the environment: {variable})");
        }
        Some((_, Some(file))) => message = format!("{message} (in {file})"),
        _ => {}
    }
    Problem { key, message }
}

/// `["push", "apps", "0", "apns", "key_id"]` as `push.apps[0].apns.key_id`.
fn display_key(path: &[String]) -> String {
    let mut key = String::new();
    for part in path {
        if part.chars().all(|c| c.is_ascii_digit()) && !part.is_empty() && !key.is_empty() {
            key.push_str(&format!("[{part}]"));
        } else {
            if !key.is_empty() {
                key.push('.');
            }
            key.push_str(part);
        }
    }
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(toml: &str, env: &[(&str, &str)]) -> Result<Config, Problems> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml).unwrap();
        let vars: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        // A private prefix keeps the test independent of the process environment.
        let prefix = format!("BGTEST{}_", std::process::id());
        for (k, v) in &vars {
            // SAFETY: unit tests in this module set variables under a per-process prefix that
            // nothing else reads.
            unsafe { std::env::set_var(format!("{prefix}{k}"), v) };
        }
        let (config, problems) =
            Config::load_lenient_with_env(&path, Env::prefixed(&prefix).split("__"));
        let r = match config {
            Some(c) if problems.is_empty() => Ok(c),
            _ => Err(problems),
        };
        for (k, _) in &vars {
            unsafe { std::env::remove_var(format!("{prefix}{k}")) };
        }
        r
    }

    #[test]
    fn networks_are_checked_where_they_are_written() {
        let e = load_str(
            "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"10.1.2.3/8\"]\n",
            &[],
        )
        .unwrap_err();
        let p =
            e.0.iter()
                .find(|p| p.key.starts_with("server.trusted_proxies"))
                .unwrap();
        assert!(p.message.contains("did you mean 10.0.0.0/8?"), "{e}");
        let e = load_str("[server]\nproxy_protocol = true\n", &[]).unwrap_err();
        assert_eq!(e.0[0].key, "server.proxy_protocol", "{e}");
        let c = load_str(
            "[server]\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]\nclient_address_header = \"forwarded\"\nproxy_protocol = true\n",
            &[],
        )
        .unwrap();
        assert_eq!(c.server.trusted_proxies.len(), 2);
        assert_eq!(
            c.server.client_address_header,
            crate::client_address::ForwardedHeader::Forwarded
        );
        let e = load_str("[server]\nclient_address_header = \"x-real-ip\"\n", &[]).unwrap_err();
        assert_eq!(e.0[0].key, "server.client_address_header", "{e}");
    }

    #[test]
    fn a_session_cannot_outlive_its_maximum_age() {
        let base = "[identity]\nissuer = \"https://b.example\"\n[relay]\naccount = \"acme\"\n";
        let e = load_str(
            &format!("{base}[relay.agents]\nsession_lifetime = \"8h\"\nmax_session_age = \"1h\"\n"),
            &[],
        )
        .unwrap_err();
        assert_eq!(e.0[0].key, "relay.agents.max_session_age", "{e}");
        // Unset: a day, or the lifetime when that is longer (older configs keep working).
        let c = load_str(
            &format!("{base}[relay.agents]\nsession_lifetime = \"2d\"\n"),
            &[],
        )
        .unwrap();
        let agents = &c.relay.unwrap().agents;
        assert_eq!(agents.max_session_age().as_secs(), 2 * 86_400);
        assert_eq!(
            crate::config::AgentsConfig::default()
                .max_session_age()
                .as_secs(),
            86_400
        );
    }

    #[test]
    fn agent_single_sign_on_is_checked_where_it_is_written() {
        let base = "[identity]\nissuer = \"https://b.example\"\n[relay]\naccount = \"acme\"\n";
        let e = load_str(
            &format!("{base}[relay.agents.sso]\nbreak_glass = [\"root\"]\n"),
            &[],
        )
        .unwrap_err();
        let keys: Vec<&str> = e.0.iter().map(|p| p.key.as_str()).collect();
        assert!(keys.contains(&"relay.agents.sso"), "{e}");
        assert!(keys.contains(&"relay.agents.sso.break_glass"), "{e}");
        let e = load_str(
            &format!(
                "{base}[relay.agents.sso]\nrequired_group = \"\"\n[relay.agents.sso.oidc]\nissuer = \"http://idp\"\nclient_id = \"\"\nclient_secret_file = \"/x\"\nallowed_algorithms = [\"HS256\"]\n"
            ),
            &[],
        )
        .unwrap_err();
        let keys: Vec<&str> = e.0.iter().map(|p| p.key.as_str()).collect();
        for key in [
            "relay.agents.sso.required_group",
            "relay.agents.sso.oidc.issuer",
            "relay.agents.sso.oidc.client_id",
            "relay.agents.sso.oidc.allowed_algorithms[0]",
        ] {
            assert!(keys.contains(&key), "{key} not in {keys:?}");
        }
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = load_str("", &[]).unwrap();
        assert_eq!(c.server.listen.port(), 8443);
        assert_eq!(c.ops.listen.ip().to_string(), "127.0.0.1");
        assert_eq!(c.push.dedupe_window.0.as_secs(), 600);
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = load_str("[server]\nlisten = \"127.0.0.1:1\"\nlisten_port = 3\n", &[]).unwrap_err();
        assert!(e.0.iter().any(|p| p.key.contains("listen_port")), "{e}");
    }

    #[test]
    fn every_unknown_key_of_one_run_is_named_in_the_roles_spelling() {
        let e = load_str(
            "[server]\nlisten_port = 3\n[ops]\nlisen = \"127.0.0.1:1\"\n\
             [[push.apps]]\nid = \"a\"\n[push.apps.apns]\nkey_idd = \"K\"\n",
            &[("PUSH__DEADLIN", "5s")],
        )
        .unwrap_err();
        let keys: Vec<&str> = e.0.iter().map(|p| p.key.as_str()).collect();
        for key in [
            "server.listen_port",
            "ops.lisen",
            "push.apps[0].apns.key_idd",
            "push.deadlin",
        ] {
            assert!(keys.contains(&key), "{key} not in {keys:?}");
        }
        let from_env = e.0.iter().find(|p| p.key == "push.deadlin").unwrap();
        assert!(
            from_env
                .message
                .contains("from the environment: BRANDGATE_PUSH__DEADLIN"),
            "{from_env}"
        );
        let from_file = e.0.iter().find(|p| p.key == "ops.lisen").unwrap();
        assert!(from_file.message.contains("c.toml"), "{from_file}");
    }

    #[test]
    fn a_bad_value_is_named_once_and_the_rest_is_still_read() {
        let (config, problems) = {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("c.toml");
            std::fs::write(
                &path,
                "[push]\ndeadline = \"12s\"\ntypo = 1\n[ops]\nlisten = \"127.0.0.1:9999\"\n",
            )
            .unwrap();
            Config::load_lenient_with_env(&path, Env::prefixed("BGTEST_NOTHING_"))
        };
        let keys: Vec<&str> = problems.0.iter().map(|p| p.key.as_str()).collect();
        let mut keys = keys;
        keys.sort();
        assert_eq!(keys, ["push.deadline", "push.typo"], "{problems}");
        // The rest of the file was read (and a default stands in for the bad value).
        assert_eq!(config.unwrap().ops.listen.port(), 9999);
    }

    #[test]
    fn environment_overrides_nested_keys() {
        let c = load_str(
            "[ops]\nlisten = \"127.0.0.1:1000\"\n",
            &[("OPS__LISTEN", "127.0.0.1:2000")],
        )
        .unwrap();
        assert_eq!(c.ops.listen.port(), 2000);
    }

    #[test]
    fn bad_values_are_reported_with_their_key() {
        let e = load_str("[push]\ndeadline = \"12s\"\n", &[]).unwrap_err();
        assert_eq!(e.0[0].key, "push.deadline");
        let e = load_str("[server]\nlisten = \"nowhere\"\n", &[]).unwrap_err();
        assert_eq!(e.0[0].key, "server.listen");
    }

    #[test]
    fn agent_policy_may_only_be_raised_and_every_problem_is_named() {
        let relay = "[identity]\nissuer = \"https://bg.test\"\n[relay]\naccount = \"acme\"\n";
        let c = load_str(relay, &[]).unwrap();
        let agents = &c.relay.unwrap().agents;
        assert_eq!(agents.min_password_length, 8);
        assert_eq!(agents.max_failed_logins, 10);
        assert_eq!(agents.lockout.0.as_secs(), 15 * 60);
        assert_eq!(agents.session_lifetime.0.as_secs(), 8 * 3600);
        let e = load_str(
            &format!(
                "{relay}[relay.agents]\nmin_password_length = 6\nmax_failed_logins = 0\n\
                 lockout = \"0s\"\nsession_lifetime = \"10s\"\n"
            ),
            &[],
        )
        .unwrap_err();
        let keys: Vec<&str> = e.0.iter().map(|p| p.key.as_str()).collect();
        for key in [
            "relay.agents.min_password_length",
            "relay.agents.max_failed_logins",
            "relay.agents.lockout",
            "relay.agents.session_lifetime",
        ] {
            assert!(keys.contains(&key), "{key} in {e}");
        }
        let e = load_str(&format!("{relay}[relay.agents]\nmax_logins = 3\n"), &[]).unwrap_err();
        assert!(
            e.0.iter()
                .any(|p| p.key.contains("max_logins") || p.message.contains("max_logins")),
            "{e}"
        );
    }
}
