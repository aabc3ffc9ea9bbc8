//! The `[identity]` section: the identity bridge's tokens and keys, the brand's login it relies
//! on (`[identity.upstream]`), how a consumer's subject and profile are derived from that login
//! (`[identity.subject]`, `[identity.claims]`), and who may ask for tokens (`[[identity.clients]]`
//! for the platform's code flow, `[[identity.backends]]` for server-to-server issuance).
//!
//! Like the rest of the config this names secret files and never holds a secret.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Problems;
use crate::duration::Span;

/// The identity bridge: consumer identity tokens and the keys that sign them.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityConfig {
    /// `iss` of every token brandgate mints, and the base of its discovery document: the public
    /// https URL of this brandgate.
    pub issuer: String,
    /// `aud` of consumer tokens, when the platform expects one.
    pub audience: Option<String>,
    /// Replaces `[egress]` for the brand's OpenID provider and the external issuers' JWKS.
    pub egress: Option<crate::config::EgressConfig>,
    #[serde(default = "defaults::token_lifetime")]
    pub token_lifetime: Span,
    /// `RS256` (the platform's default), `ES256` or `EdDSA`.
    #[serde(default = "defaults::algorithm")]
    pub algorithm: String,
    /// Clock difference tolerated when checking times (ours and the upstream's).
    #[serde(default = "defaults::leeway")]
    pub leeway: Span,
    #[serde(default)]
    pub keys: KeysConfig,
    #[serde(default)]
    pub anonymous: AnonymousConfig,
    /// The brand's OpenID Connect login. Without it, only anonymous identities are issued.
    pub upstream: Option<UpstreamConfig>,
    #[serde(default)]
    pub subject: SubjectConfig,
    #[serde(default)]
    pub claims: ClaimsConfig,
    /// How long a login's one-time code waits for the platform's token call (at most 60s).
    #[serde(default = "defaults::code_lifetime")]
    pub code_lifetime: Span,
    /// Who exchanges codes at `POST /oauth/token` (the platform) and where logins may return.
    #[serde(default)]
    pub clients: Vec<ClientConfig>,
    /// The brand's own systems that ask for tokens at `POST /identity/v1/token`.
    #[serde(default)]
    pub backends: Vec<BackendConfig>,
    /// Other issuers whose consumer tokens the relay accepts, checked against their JWKS.
    #[serde(default)]
    pub external_issuers: Vec<ExternalIssuerConfig>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeysConfig {
    /// A new key is published this long before it signs (verifiers cache the JWKS).
    #[serde(default = "defaults::rotation_lead")]
    pub rotation_lead: Span,
    /// Rotate on this schedule (off when absent; `brandgate keys rotate` rotates by hand).
    pub rotate_every: Option<Span>,
    /// `Cache-Control: max-age` of the JWKS; must be shorter than `rotation_lead`.
    #[serde(default = "defaults::jwks_max_age")]
    pub jwks_max_age: Span,
}

impl Default for KeysConfig {
    fn default() -> Self {
        KeysConfig {
            rotation_lead: defaults::rotation_lead(),
            rotate_every: None,
            jwks_max_age: defaults::jwks_max_age(),
        }
    }
}

/// Anonymous identities (`POST /identity/v1/signup`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AnonymousConfig {
    #[serde(default)]
    pub enabled: bool,
    #[serde(default = "defaults::anonymous_lifetime")]
    pub token_lifetime: Span,
    /// Sign-ups per source address per minute.
    #[serde(default = "defaults::anonymous_per_minute")]
    pub per_minute: u32,
}

impl Default for AnonymousConfig {
    fn default() -> Self {
        AnonymousConfig {
            enabled: false,
            token_lifetime: defaults::anonymous_lifetime(),
            per_minute: defaults::anonymous_per_minute(),
        }
    }
}

/// How brandgate authenticates itself at the upstream token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamClientAuth {
    #[default]
    ClientSecretBasic,
    ClientSecretPost,
}

/// The brand's OpenID Connect provider, with brandgate registered at it as a confidential client.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The provider's issuer URL; `<issuer>/.well-known/openid-configuration` is read from it.
    pub issuer: String,
    pub client_id: String,
    pub client_secret_file: PathBuf,
    #[serde(default)]
    pub client_auth: UpstreamClientAuth,
    /// Scopes asked for at login (`openid` is always asked for).
    #[serde(default = "defaults::scopes")]
    pub scopes: Vec<String>,
    /// Where the provider sends the browser back. Default: `<identity.issuer>/callback`. Register
    /// exactly this at the provider.
    pub redirect_uri: Option<String>,
    /// Extra CA certificates (PEM) trusted for the provider's TLS, besides the system's.
    #[serde(default)]
    pub extra_trust_anchors: Vec<PathBuf>,
    /// ID-token signature algorithms accepted from the provider.
    #[serde(default = "defaults::upstream_algorithms")]
    pub allowed_algorithms: Vec<String>,
    /// Every call to the provider (discovery, keys, code exchange) fits in this.
    #[serde(default = "defaults::upstream_timeout")]
    pub timeout: Span,
    /// A token signed by a key the provider has not published yet makes brandgate read the
    /// provider's keys again, at most this often.
    #[serde(default = "defaults::rediscover_interval")]
    pub rediscover_interval: Span,
    /// How long a consumer may take between starting a login and coming back.
    #[serde(default = "defaults::login_timeout")]
    pub login_timeout: Span,
    /// Logins started per source address per minute (each keeps a pending record in the store
    /// until it finishes or times out). Many consumers may share one address (carrier NAT).
    #[serde(default = "defaults::logins_per_minute")]
    pub logins_per_minute: u32,
}

impl UpstreamConfig {
    /// The checks of its shape; `at` is where it is in the config (`identity.upstream`).
    pub fn check_shape(&self, at: &str, p: &mut Problems) {
        if let Err(e) = crate::http_client::check_url(&self.issuer) {
            p.push(format!("{at}.issuer"), e);
        }
        if self.client_id.is_empty() {
            p.push(format!("{at}.client_id"), "must not be empty");
        }
        if let Some(uri) = &self.redirect_uri
            && let Err(e) = crate::http_client::check_url(uri)
        {
            p.push(format!("{at}.redirect_uri"), e);
        }
        for (i, alg) in self.allowed_algorithms.iter().enumerate() {
            if !UPSTREAM_ALGORITHMS.contains(&alg.as_str()) {
                p.push(
                    format!("{at}.allowed_algorithms[{i}]"),
                    format!("{alg:?} is not one of {}", UPSTREAM_ALGORITHMS.join(", ")),
                );
            }
        }
        if self.allowed_algorithms.is_empty() {
            p.push(
                format!("{at}.allowed_algorithms"),
                "list at least one algorithm",
            );
        }
        if self.logins_per_minute == 0 {
            p.push(format!("{at}.logins_per_minute"), "must be at least 1");
        }
        if self.login_timeout.0 < Duration::from_secs(30) {
            p.push(format!("{at}.login_timeout"), "must be at least 30s");
        }
    }
}

/// Where a consumer token's `sub` comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SubjectMode {
    /// The upstream `sub`, as it is.
    #[default]
    Upstream,
    /// A stable pseudonym: a keyed hash (HMAC-SHA256) of the upstream issuer and `sub`, so the
    /// platform never learns the brand's user ids.
    Pseudonym,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SubjectConfig {
    #[serde(default)]
    pub mode: SubjectMode,
    /// The pseudonym key (at least 32 bytes). Keep it: a new key gives every consumer a new id.
    pub pseudonym_key_file: Option<PathBuf>,
}

/// Which upstream claim fills each claim of a consumer token. Each value names an upstream
/// claim (a top-level member of the upstream ID token, or of a trusted backend's `claims`).
/// Only what is written here is sent: there are no defaults, so a line removed is a claim
/// never sent (the shipped config writes the usual ones out). `check-config` prints what
/// consumer tokens will carry.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimsConfig {
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub email: Option<String>,
    pub phone_number: Option<String>,
    pub preferred_username: Option<String>,
    pub gender: Option<String>,
    /// `lp_sdes` entry `{"type": "ctmrinfo", "info": {...}}`.
    #[serde(default)]
    pub ctmrinfo: CtmrinfoClaims,
    /// `lp_sdes` entry `{"type": "personal", "personal": {...}}`.
    #[serde(default)]
    pub personal: PersonalClaims,
}

/// The platform's customer-info fields (`ctmrinfo`), each filled from the named upstream claim.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
#[allow(non_snake_case)]
pub struct CtmrinfoClaims {
    pub cstatus: Option<String>,
    pub ctype: Option<String>,
    pub customerId: Option<String>,
    pub balance: Option<String>,
    pub currency: Option<String>,
    pub socialId: Option<String>,
    pub imei: Option<String>,
    pub userName: Option<String>,
    pub companySize: Option<String>,
    pub companyBranch: Option<String>,
    pub accountName: Option<String>,
    pub role: Option<String>,
    pub storeId: Option<String>,
    pub storeNumber: Option<String>,
    pub lastPaymentDate: Option<String>,
    pub registrationDate: Option<String>,
}

/// The platform's personal-info fields (`personal`), each filled from the named upstream claim.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PersonalClaims {
    pub firstname: Option<String>,
    pub lastname: Option<String>,
    /// An age in years, or a birth date (`YYYY-MM-DD`).
    pub age: Option<String>,
    /// Go into `contacts[0]`.
    pub email: Option<String>,
    pub phone: Option<String>,
    /// `MALE`, `FEMALE` or `OTHER` (any letter case upstream).
    pub gender: Option<String>,
    pub company: Option<String>,
    pub language: Option<String>,
}

/// A client of brandgate's code flow: the platform's connector for the brand, which exchanges
/// codes at `POST /oauth/token`, and the app callbacks its logins return to.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The `client_id` the platform is configured with.
    pub id: String,
    /// The client secret the platform is configured with (HTTP Basic or form fields).
    pub secret_file: PathBuf,
    /// Where a login may return: the apps' callbacks, custom schemes
    /// (`com.brand.app://callback`) or https URLs. Compared exactly.
    pub redirect_uris: Vec<String>,
    /// Whether logins may ask for the token straight back (`response_type=id_token`).
    #[serde(default)]
    pub implicit: bool,
}

/// A brand system allowed to ask for consumer tokens at `POST /identity/v1/token`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    /// The user name in HTTP Basic, and the name in logs.
    pub id: String,
    /// The password in HTTP Basic.
    pub secret_file: Option<PathBuf>,
    /// Or a client certificate (mutual TLS; needs `server.tls.client_ca`) whose subject common
    /// name or a subject alternative name is one of these.
    #[serde(default)]
    pub client_cert_names: Vec<String>,
    /// Whether it may name a subject and claims itself instead of presenting an upstream ID
    /// token. Only for systems that authenticated the consumer themselves.
    #[serde(default)]
    pub trusted: bool,
    /// Audiences besides brandgate's own client id whose ID tokens this backend may present
    /// (its own client at the brand's provider).
    #[serde(default)]
    pub accepted_audiences: Vec<String>,
}

/// An issuer of consumer tokens other than brandgate (the brand's own token service, say): the
/// relay accepts its tokens as consumer identities, checked against its published JWKS. Its
/// consumers are `"<id>:<sub>"` in the relay, so they never meet brandgate's own or another
/// issuer's.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalIssuerConfig {
    /// A short name (letters, digits, `-`, `_`): the prefix of its consumers' ids, and the name
    /// in logs.
    pub id: String,
    /// The `iss` its tokens carry, compared exactly.
    pub issuer: String,
    /// Where its JWKS is published (https).
    pub jwks_url: String,
    /// The `aud` values accepted (a token must name one).
    pub audiences: Vec<String>,
    /// Signature algorithms accepted (asymmetric only).
    #[serde(default = "defaults::external_algorithms")]
    pub algorithms: Vec<String>,
    /// Extra CA certificates (PEM) trusted for the JWKS URL, besides the system's.
    #[serde(default)]
    pub extra_trust_anchors: Vec<PathBuf>,
    /// Tokens whose `exp - iat` is longer (or that have no `iat`) are refused.
    #[serde(default = "defaults::external_max_token_lifetime")]
    pub max_token_lifetime: Span,
    /// The JWKS is read again this often (and when a token names a key not seen yet).
    #[serde(default = "defaults::jwks_refresh")]
    pub jwks_refresh: Span,
    /// The JWKS is read at most this often, whatever tokens name.
    #[serde(default = "defaults::jwks_min_refetch")]
    pub jwks_min_refetch: Span,
}

impl IdentityConfig {
    /// The upstream's redirect URI: configured, or `<issuer>/callback`.
    pub fn callback_uri(&self) -> Option<String> {
        let upstream = self.upstream.as_ref()?;
        Some(
            upstream
                .redirect_uri
                .clone()
                .unwrap_or_else(|| format!("{}/callback", self.issuer.trim_end_matches('/'))),
        )
    }

    /// The settings a reload cannot change (they shape the key ring, the tokens already out,
    /// or the routes), in a form to compare. Names files and values, never a secret.
    pub fn bound_at_start(&self) -> String {
        format!(
            "{:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?}",
            self.issuer,
            self.audience,
            self.token_lifetime,
            self.algorithm,
            self.leeway,
            self.keys,
            self.anonymous,
            self.code_lifetime,
            self.callback_uri(),
        )
    }

    /// Checks that need no file and no network.
    pub(super) fn check_shape(&self, p: &mut Problems) {
        match self.issuer.parse::<http::Uri>() {
            Ok(u)
                if u.scheme_str() == Some("https") && u.host().is_some() && u.query().is_none() => {
            }
            _ => p.push(
                "identity.issuer",
                format!("{:?} must be an https:// URL without a query", self.issuer),
            ),
        }
        if crate::identity::Algorithm::parse(&self.algorithm).is_none() {
            p.push("identity.algorithm", "must be RS256, ES256 or EdDSA");
        }
        if self.keys.jwks_max_age >= self.keys.rotation_lead {
            p.push(
                "identity.keys.jwks_max_age",
                "must be shorter than rotation_lead, or verifiers may not know a key when it starts signing",
            );
        }
        if let Some(every) = self.keys.rotate_every
            && every <= self.keys.rotation_lead
        {
            p.push(
                "identity.keys.rotate_every",
                "must be longer than rotation_lead",
            );
        }
        for (key, lifetime) in [
            ("identity.token_lifetime", self.token_lifetime),
            (
                "identity.anonymous.token_lifetime",
                self.anonymous.token_lifetime,
            ),
        ] {
            if lifetime.0.is_zero() || lifetime.0 > Duration::from_secs(30 * 86_400) {
                p.push(key, "must be above 0 and at most 30d");
            }
        }
        if self.code_lifetime.0 < Duration::from_secs(1)
            || self.code_lifetime.0 > Duration::from_secs(60)
        {
            p.push("identity.code_lifetime", "must be between 1s and 60s");
        }
        if let Some(up) = &self.upstream {
            up.check_shape("identity.upstream", p);
        }
        if self.subject.mode == SubjectMode::Pseudonym && self.subject.pseudonym_key_file.is_none()
        {
            p.push(
                "identity.subject.pseudonym_key_file",
                "mode = \"pseudonym\" needs a key file (e.g. head -c32 /dev/urandom | base64 > pseudonym-key)",
            );
        }
        check_ids(
            p,
            "identity.clients",
            self.clients.iter().map(|c| c.id.as_str()),
        );
        for (i, c) in self.clients.iter().enumerate() {
            let key = format!("identity.clients[{i}]");
            if c.redirect_uris.is_empty() {
                p.push(
                    format!("{key}.redirect_uris"),
                    "list at least one redirect URI",
                );
            }
            for (j, uri) in c.redirect_uris.iter().enumerate() {
                if let Err(e) = check_redirect_uri(uri) {
                    p.push(format!("{key}.redirect_uris[{j}]"), e);
                }
            }
        }
        if !self.clients.is_empty() && self.upstream.is_none() {
            p.push(
                "identity.clients",
                "need [identity.upstream]: codes come from a consumer's login there",
            );
        }
        check_ids(
            p,
            "identity.backends",
            self.backends.iter().map(|b| b.id.as_str()),
        );
        for (i, b) in self.backends.iter().enumerate() {
            let key = format!("identity.backends[{i}]");
            if b.secret_file.is_none() && b.client_cert_names.is_empty() {
                p.push(
                    key.clone(),
                    "needs secret_file or client_cert_names: a backend must authenticate",
                );
            }
            if !b.trusted && self.upstream.is_none() {
                p.push(
                    format!("{key}.trusted"),
                    "an untrusted backend presents upstream ID tokens: configure [identity.upstream] or set trusted = true",
                );
            }
        }
        self.check_external_issuers(p);
    }

    fn check_external_issuers(&self, p: &mut Problems) {
        let mut ids = std::collections::HashSet::new();
        let mut issuers = std::collections::HashSet::new();
        for (i, x) in self.external_issuers.iter().enumerate() {
            let key = format!("identity.external_issuers[{i}]");
            if x.id.is_empty()
                || x.id.len() > 32
                || !x
                    .id
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
            {
                p.push(
                    format!("{key}.id"),
                    "must be 1 to 32 letters, digits, '-' or '_'",
                );
            }
            if !ids.insert(x.id.as_str()) {
                p.push(
                    format!("{key}.id"),
                    format!("{:?} is configured twice", x.id),
                );
            }
            if x.issuer.is_empty() {
                p.push(format!("{key}.issuer"), "must not be empty");
            } else if x.issuer.trim_end_matches('/') == self.issuer.trim_end_matches('/') {
                p.push(
                    format!("{key}.issuer"),
                    "is brandgate's own issuer; its tokens are checked against its own key ring",
                );
            } else if !issuers.insert(x.issuer.as_str()) {
                p.push(
                    format!("{key}.issuer"),
                    format!("{:?} is configured twice", x.issuer),
                );
            }
            match crate::http_client::check_url(&x.jwks_url) {
                Ok(u) if u.scheme_str() == Some("https") => {}
                Ok(_) => p.push(format!("{key}.jwks_url"), "must be an https:// URL"),
                Err(e) => p.push(format!("{key}.jwks_url"), e),
            }
            if x.audiences.is_empty() || x.audiences.iter().any(String::is_empty) {
                p.push(
                    format!("{key}.audiences"),
                    "list the accepted aud values (non-empty): a token for someone else must not pass",
                );
            }
            if x.algorithms.is_empty() {
                p.push(format!("{key}.algorithms"), "list at least one algorithm");
            }
            for (j, alg) in x.algorithms.iter().enumerate() {
                if !UPSTREAM_ALGORITHMS.contains(&alg.as_str()) {
                    p.push(
                        format!("{key}.algorithms[{j}]"),
                        format!("{alg:?} is not one of {}", UPSTREAM_ALGORITHMS.join(", ")),
                    );
                }
            }
            if x.max_token_lifetime.0.is_zero()
                || x.max_token_lifetime.0 > Duration::from_secs(30 * 86_400)
            {
                p.push(
                    format!("{key}.max_token_lifetime"),
                    "must be above 0 and at most 30d",
                );
            }
            if x.jwks_min_refetch.0 < Duration::from_secs(1) {
                p.push(format!("{key}.jwks_min_refetch"), "must be at least 1s");
            }
            if x.jwks_refresh.0 < Duration::from_secs(60) || x.jwks_refresh.0 < x.jwks_min_refetch.0
            {
                p.push(
                    format!("{key}.jwks_refresh"),
                    "must be at least 1m and at least jwks_min_refetch",
                );
            }
        }
    }
}

/// Ids of a list (`identity.clients`): non-empty, no `:` (they go in HTTP Basic), unique.
fn check_ids<'a>(p: &mut Problems, list: &str, ids: impl Iterator<Item = &'a str>) {
    let mut seen = std::collections::HashSet::new();
    for (i, id) in ids.enumerate() {
        if id.is_empty() || id.contains(':') {
            p.push(
                format!("{list}[{i}].id"),
                "must be non-empty and have no ':'",
            );
        }
        if !seen.insert(id) {
            p.push(
                format!("{list}[{i}].id"),
                format!("{id:?} is configured twice"),
            );
        }
    }
}

/// The signature algorithms an upstream ID token may use (asymmetric only: a shared-secret
/// HS256 token could be forged by anyone holding the client secret).
pub const UPSTREAM_ALGORITHMS: &[&str] = &[
    "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
];

/// A redirect URI a login may return to: an absolute URI without a fragment (RFC 6749 §3.1.2),
/// https, a custom scheme of a native app (`com.brand.app://callback`), or http to loopback.
pub fn check_redirect_uri(uri: &str) -> Result<(), RedirectUriError> {
    let parsed: http::Uri =
        uri.parse()
            .map_err(|e: http::uri::InvalidUri| RedirectUriError::NotAUri {
                uri: uri.to_string(),
                reason: e.to_string(),
            })?;
    if uri.contains('#') {
        return Err(RedirectUriError::Fragment(uri.to_string()));
    }
    match parsed.scheme_str() {
        None => Err(RedirectUriError::Relative(uri.to_string())),
        Some("https") => Ok(()),
        Some("http") => Ok(crate::http_client::check_url(uri).map(|_| ())?),
        Some(s)
            if ["javascript", "data", "file", "vbscript"]
                .iter()
                .any(|bad| s.eq_ignore_ascii_case(bad)) =>
        {
            Err(RedirectUriError::NeverACallback(uri.to_string()))
        }
        Some(_) => Ok(()),
    }
}

/// Why a URI may not be a login's redirect URI.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RedirectUriError {
    #[error("{uri:?} is not a URI: {reason}")]
    NotAUri { uri: String, reason: String },
    #[error("{0:?} must not have a fragment")]
    Fragment(String),
    #[error("{0:?} must be absolute")]
    Relative(String),
    #[error("{0:?}: that scheme is never a callback")]
    NeverACallback(String),
    #[error(transparent)]
    Url(#[from] crate::http_client::UrlError),
}

mod defaults {
    use super::*;

    pub fn token_lifetime() -> Span {
        Span(Duration::from_secs(3600))
    }
    pub fn algorithm() -> String {
        "RS256".into()
    }
    pub fn leeway() -> Span {
        Span(Duration::from_secs(60))
    }
    pub fn rotation_lead() -> Span {
        Span(Duration::from_secs(3600))
    }
    pub fn jwks_max_age() -> Span {
        Span(Duration::from_secs(300))
    }
    pub fn anonymous_lifetime() -> Span {
        Span(Duration::from_secs(86_400))
    }
    pub fn code_lifetime() -> Span {
        Span(Duration::from_secs(60))
    }
    pub fn anonymous_per_minute() -> u32 {
        10
    }
    pub fn scopes() -> Vec<String> {
        vec!["openid".into(), "profile".into(), "email".into()]
    }
    pub fn upstream_algorithms() -> Vec<String> {
        ["RS256", "PS256", "ES256"]
            .into_iter()
            .map(String::from)
            .collect()
    }
    pub fn external_algorithms() -> Vec<String> {
        ["RS256", "ES256"].into_iter().map(String::from).collect()
    }
    pub fn external_max_token_lifetime() -> Span {
        Span(Duration::from_secs(86_400))
    }
    pub fn jwks_refresh() -> Span {
        Span(Duration::from_secs(3600))
    }
    pub fn jwks_min_refetch() -> Span {
        Span(Duration::from_secs(30))
    }
    pub fn upstream_timeout() -> Span {
        Span(Duration::from_secs(10))
    }
    pub fn rediscover_interval() -> Span {
        Span(Duration::from_secs(60))
    }
    pub fn logins_per_minute() -> u32 {
        300
    }
    pub fn login_timeout() -> Span {
        Span(Duration::from_secs(600))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_uris_are_absolute_and_safe() {
        assert!(check_redirect_uri("com.brand.app://callback").is_ok());
        assert!(check_redirect_uri("https://www.brand.example/chat/cb").is_ok());
        assert!(check_redirect_uri("http://127.0.0.1:7000/cb").is_ok());
        assert!(check_redirect_uri("http://www.brand.example/cb").is_err());
        assert!(check_redirect_uri("/relative").is_err());
        assert!(check_redirect_uri("https://x.example/cb#frag").is_err());
        assert!(check_redirect_uri("javascript://alert(1)").is_err());
        assert!(check_redirect_uri("JavaScript://alert(1)").is_err());
    }

    fn external(extra: serde_json::Value) -> Vec<String> {
        let mut issuer = serde_json::json!({
            "id": "shop", "issuer": "https://login.shop.example",
            "jwks_url": "https://login.shop.example/jwks", "audiences": ["chat"]
        });
        for (k, v) in extra.as_object().unwrap() {
            issuer[k] = v.clone();
        }
        let config: IdentityConfig = serde_json::from_value(serde_json::json!({
            "issuer": "https://id.brand.example", "external_issuers": [issuer]
        }))
        .unwrap();
        let mut p = Problems::default();
        config.check_shape(&mut p);
        p.0.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn external_issuers_are_checked() {
        assert!(external(serde_json::json!({})).is_empty());
        for (bad, key) in [
            (serde_json::json!({"id": "a:b"}), ".id"),
            (serde_json::json!({"id": ""}), ".id"),
            (serde_json::json!({"audiences": []}), ".audiences"),
            (
                serde_json::json!({"jwks_url": "http://login.shop.example/jwks"}),
                ".jwks_url",
            ),
            (
                serde_json::json!({"jwks_url": "http://127.0.0.1/jwks"}),
                ".jwks_url",
            ),
            (
                serde_json::json!({"algorithms": ["none"]}),
                ".algorithms[0]",
            ),
            (
                serde_json::json!({"algorithms": ["HS256"]}),
                ".algorithms[0]",
            ),
            (serde_json::json!({"algorithms": []}), ".algorithms"),
            (
                serde_json::json!({"issuer": "https://id.brand.example/"}),
                ".issuer",
            ),
            (
                serde_json::json!({"max_token_lifetime": "0s"}),
                ".max_token_lifetime",
            ),
            (serde_json::json!({"jwks_refresh": "10s"}), ".jwks_refresh"),
        ] {
            let found = external(bad.clone());
            assert!(
                found
                    .iter()
                    .any(|p| p.contains(&format!("identity.external_issuers[0]{key}"))),
                "{bad}: {found:?}"
            );
        }
        let unknown: Result<ExternalIssuerConfig, _> = serde_json::from_value(serde_json::json!({
            "id": "shop", "issuer": "x", "jwks_url": "https://x/", "audiences": ["a"], "extra": 1
        }));
        assert!(unknown.is_err());
    }
}
