//! What checking a consumer token concludes, and the checks every issuer's tokens share
//! (brandgate's own in `verify`, an external issuer's in `external`): the verdict, the claims
//! read once, their time checks, the profile a checked token carries.

use crate::ids::ConsumerId;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

/// Longest token accepted (the platform's own limit for a consumer JWT).
pub const MAX_TOKEN: usize = 2048;

/// Who a token says the consumer is, once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerIdentity {
    /// The consumer's id: the token's subject (`<issuer>:<sub>` for an external issuer).
    pub subject: ConsumerId,
    pub expires_at: SystemTime,
    /// Until when it is accepted: its expiry plus the clock leeway.
    pub valid_until: SystemTime,
    /// Whether the consumer logged in (or a brand system vouched for it), rather than signing
    /// up anonymously.
    pub authenticated: bool,
    /// What the token says about the consumer, as minted: the profile claims of [`PROFILE`]
    /// that it carries (what the agents' workspace shows).
    pub profile: serde_json::Map<String, serde_json::Value>,
}

/// The claims of a consumer token that describe the consumer (the identity bridge's mapping
/// fills them; an external issuer may send them too).
pub const PROFILE: &[&str] = &[
    "given_name",
    "family_name",
    "email",
    "phone_number",
    "preferred_username",
    "gender",
    "lp_sdes",
];

/// The claim brandgate's anonymous tokens carry (`true`), telling them from logins.
pub const ANONYMOUS: &str = "brandgate_anonymous";

/// The profile claims of a token whose signature has been checked, and whether it is
/// anonymous (its [`ANONYMOUS`] claim).
pub(super) fn profile_of(token: &str) -> (serde_json::Map<String, serde_json::Value>, bool) {
    let claims = token
        .split('.')
        .nth(1)
        .and_then(|p| {
            base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, p).ok()
        })
        .and_then(|bytes| {
            serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&bytes).ok()
        })
        .unwrap_or_default();
    let anonymous = claims.get(ANONYMOUS) == Some(&serde_json::Value::Bool(true));
    let profile = claims
        .into_iter()
        .filter(|(k, _)| PROFILE.contains(&k.as_str()))
        .collect();
    (profile, anonymous)
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    #[error("not a token brandgate issued or accepts")]
    Malformed,
    #[error("signed by a key its issuer does not publish")]
    UnknownKey,
    #[error("expired")]
    Expired,
    #[error("fails a check: {0}")]
    Invalid(&'static str),
    /// The key ring, or an external issuer's JWKS, cannot be read: a retry may work.
    #[error("the signing keys cannot be read")]
    Unavailable,
}

/// The claims every consumer token is checked for. Each is read once: a payload naming one
/// of them twice is refused as malformed JSON (serde refuses a duplicate field), so no two
/// readers of a token can see two different values.
#[derive(Deserialize)]
pub(super) struct TokenClaims {
    pub sub: String,
    pub exp: u64,
    pub iat: Option<u64>,
    pub nbf: Option<u64>,
    #[allow(dead_code)]
    pub iss: Option<String>,
    #[allow(dead_code)]
    pub aud: Option<serde_json::Value>,
}

impl TokenClaims {
    /// The time checks, against `now`: `exp` not passed, `iat` present and `iat`/`nbf` not
    /// in the future (both within `leeway`), and `exp - iat` at most `max_lifetime`. Returns
    /// when the token expires.
    pub fn check_times(
        &self,
        now: SystemTime,
        leeway: Duration,
        max_lifetime: Duration,
    ) -> Result<SystemTime, VerifyError> {
        // Any number a token carries, up to u64::MAX: one past what a `SystemTime` holds is
        // far in the future, never a panic.
        let at = crate::clock::from_unix_seconds;
        let latest = now + leeway;
        if at(self.exp)
            .and_then(|exp| exp.checked_add(leeway))
            .is_some_and(|limit| limit <= now)
        {
            return Err(VerifyError::Expired);
        }
        let iat = self.iat.ok_or(VerifyError::Invalid("issued at"))?;
        let in_future = |secs: u64| at(secs).is_none_or(|t| t > latest);
        if in_future(iat) || self.nbf.is_some_and(in_future) {
            return Err(VerifyError::Invalid("not valid yet"));
        }
        if self.exp < iat || self.exp - iat > max_lifetime.as_secs() {
            return Err(VerifyError::Invalid("lifetime"));
        }
        // `iat` is at most `latest` and `exp` at most `max_lifetime` after it.
        at(self.exp).ok_or(VerifyError::Invalid("lifetime"))
    }
}

/// Which check a token failed, from jsonwebtoken's error (its kind, never its text).
pub(super) fn refusal(e: &jsonwebtoken::errors::Error) -> VerifyError {
    use jsonwebtoken::errors::ErrorKind;
    match e.kind() {
        ErrorKind::ExpiredSignature => VerifyError::Expired,
        ErrorKind::InvalidIssuer => VerifyError::Invalid("issuer"),
        ErrorKind::InvalidAudience => VerifyError::Invalid("audience"),
        ErrorKind::InvalidSignature => VerifyError::Invalid("signature"),
        ErrorKind::ImmatureSignature => VerifyError::Invalid("not valid yet"),
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "aud" => VerifyError::Invalid("audience"),
            "iss" => VerifyError::Invalid("issuer"),
            "sub" => VerifyError::Invalid("subject"),
            _ => VerifyError::Invalid("claims"),
        },
        _ => VerifyError::Invalid("claims"),
    }
}
