//! Why the relay refuses an HTTPS call (history, lists, devices, the agents' login, a socket's
//! upgrade), as a type:
//! handlers return one, and [`HttpRefusal::status`] maps every kind to its status in one
//! exhaustive match, as the push ingress does. The text is the reason the caller reads; it
//! never holds a secret or anything the caller did not send.

use std::time::{Duration, SystemTime};

use axum::response::{IntoResponse, Response};
use http::StatusCode;
use serde_json::json;

use crate::config::MAX_PASSWORD_BYTES;
use crate::http_answer::{json_error, no_store, with_retry_after};
use crate::identity::VerifyError;

/// Largest body of a relay call that takes one: a login (a username, a password of at most
/// `MAX_PASSWORD_BYTES`, which JSON may escape at six bytes each, and the punctuation) or a
/// device registration.
pub(super) const MAX_BODY_BYTES: usize = 8 * 1024;

#[derive(Debug, thiserror::Error)]
pub(super) enum HttpRefusal {
    // Who calls.
    #[error(
        "send a consumer's identity token (Authorization: jwt <token>) or an agent's session (Authorization: Bearer <bearer>)"
    )]
    NoCredential,
    #[error("send the session as Authorization: Bearer <bearer>")]
    NotABearer,
    #[error("send the session as Authorization: Bearer <bearer>, or its cookie with X-CSRF-Token")]
    NoSession,
    #[error("the token is not accepted: {0}")]
    TokenRefused(VerifyError),
    #[error("the session is not valid (unknown, expired or ended); log in again")]
    SessionNotValid,
    #[error("a request authenticated by the session cookie must carry the session's X-CSRF-Token")]
    NoCsrfToken,
    #[error("{0}")]
    WrongRole(&'static str),
    #[error("the username or password is not accepted")]
    LoginRefused,
    #[error(
        "this account's agents sign in with single sign-on: use \"Sign in with SSO\" in the workspace (GET /api/account/{0}/sso/oidc)"
    )]
    SsoRequired(String),
    #[error("this agent is locked after too many failed logins; it unlocks at lockedUntil")]
    Locked { until: SystemTime },
    #[error("too many login attempts from this address; try again in a minute")]
    TooManyLogins { retry_after: Duration },
    #[error(
        "send the agent's session: Authorization: Bearer <bearer>, or its cookie from the workspace"
    )]
    NoAgentSession,
    #[error("the session cookie is only accepted from the workspace's own origin")]
    ForeignOrigin,
    #[error("too many sockets from this address waiting to authenticate")]
    TooManyWaitingSockets,
    #[error(
        "this account's agents may sign in and work only from its allowed networks; this client address is not in them"
    )]
    OutsideNetworks,

    // What it sent.
    #[error("{0}")]
    BadRequest(String),
    #[error("send the body as Content-Type: application/json")]
    NotJson,
    #[error("the body is larger than {MAX_BODY_BYTES} bytes")]
    BodyTooLarge,
    #[error("the body could not be read")]
    BodyUnreadable,
    #[error("the username or password is too long (passwords: at most {MAX_PASSWORD_BYTES} bytes)")]
    CredentialsTooLong,
    #[error("{0}")]
    NotFound(String),

    // brandgate itself.
    #[error("tokens cannot be checked right now")]
    TokensUnavailable,
    #[error("sessions cannot be checked right now")]
    SessionsUnavailable,
    #[error("the service cannot answer right now; try again")]
    Unavailable,
    #[error("too many connections; retry later")]
    TooManySockets,
}

impl HttpRefusal {
    pub fn status(&self) -> StatusCode {
        match self {
            HttpRefusal::NoCredential
            | HttpRefusal::NotABearer
            | HttpRefusal::NoSession
            | HttpRefusal::TokenRefused(_)
            | HttpRefusal::SessionNotValid
            | HttpRefusal::LoginRefused
            | HttpRefusal::SsoRequired(_)
            | HttpRefusal::NoAgentSession => StatusCode::UNAUTHORIZED,
            HttpRefusal::NoCsrfToken
            | HttpRefusal::WrongRole(_)
            | HttpRefusal::ForeignOrigin
            | HttpRefusal::OutsideNetworks => StatusCode::FORBIDDEN,
            HttpRefusal::Locked { .. } => StatusCode::LOCKED,
            HttpRefusal::TooManyLogins { .. } | HttpRefusal::TooManyWaitingSockets => {
                StatusCode::TOO_MANY_REQUESTS
            }
            HttpRefusal::BadRequest(_)
            | HttpRefusal::BodyUnreadable
            | HttpRefusal::CredentialsTooLong => StatusCode::BAD_REQUEST,
            HttpRefusal::NotJson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            HttpRefusal::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            HttpRefusal::NotFound(_) => StatusCode::NOT_FOUND,
            HttpRefusal::TokensUnavailable
            | HttpRefusal::SessionsUnavailable
            | HttpRefusal::Unavailable
            | HttpRefusal::TooManySockets => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// brandgate could not do its part (`what` failed with `error`): logged here, and the
    /// caller told only to try again.
    pub fn unavailable(what: &str, error: impl std::fmt::Display) -> HttpRefusal {
        tracing::error!(error = %error, "{what}");
        HttpRefusal::Unavailable
    }

    /// `404` for a conversation that does not exist or is not the caller's (the same answer).
    pub fn no_conversation() -> HttpRefusal {
        HttpRefusal::NotFound("no such conversation".into())
    }
}

impl IntoResponse for HttpRefusal {
    fn into_response(self) -> Response {
        let status = self.status();
        match self {
            HttpRefusal::Locked { until } => no_store(
                (
                    status,
                    axum::Json(json!({
                        "error": HttpRefusal::Locked { until }.to_string(),
                        "lockedUntil": crate::clock::UnixMillis::of(until).0,
                    })),
                )
                    .into_response(),
            ),
            HttpRefusal::TooManyLogins { retry_after } => {
                let text = self.to_string();
                with_retry_after(json_error(status, &text), retry_after)
            }
            HttpRefusal::TooManySockets => {
                let text = self.to_string();
                with_retry_after(json_error(status, &text), Duration::from_secs(1))
            }
            other => json_error(status, &other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_answers_its_status_with_its_reason() {
        let r = HttpRefusal::NoCsrfToken.into_response();
        assert_eq!(r.status(), 403);
        assert_eq!(r.headers()[http::header::CACHE_CONTROL], "no-store");
        let r = HttpRefusal::TooManyLogins {
            retry_after: Duration::from_secs(30),
        }
        .into_response();
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()[http::header::RETRY_AFTER], "30");
        let r = HttpRefusal::Locked {
            until: SystemTime::UNIX_EPOCH + Duration::from_secs(2),
        }
        .into_response();
        assert_eq!(r.status(), 423);
        assert_eq!(r.headers()[http::header::CACHE_CONTROL], "no-store");
    }
}
