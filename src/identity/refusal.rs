//! Why the identity bridge refuses a JSON call (backend issuance, anonymous sign-up), as a
//! type: handlers return one, and [`Refusal::status`] maps every kind to its status in one
//! exhaustive match. The text is the reason the caller reads: it names a check, never a value
//! of the caller's token or secret. (The OAuth token endpoint answers RFC 6749's errors, and
//! the login pages readable pages: they have their own.)

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::StatusCode;

use super::upstream::TokenProblem;
use super::web::basic_challenge;
use crate::http_answer::{json_error, with_retry_after};

#[derive(Debug, thiserror::Error)]
pub(super) enum Refusal {
    #[error("too many failed authentications from this address; retry later")]
    TooManyFailures { retry_after: Duration },
    #[error("too many sign-ups from this address; retry later")]
    TooManySignups { retry_after: Duration },
    #[error("backend authentication failed")]
    BackendUnauthenticated,
    #[error("this backend may only present ID tokens (it is not trusted to name subjects)")]
    NotTrusted,
    #[error("the body must be application/json")]
    NotJson,
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("send either {{\"id_token\": ...}} or {{\"subject\": ..., \"claims\": {{...}}}}")]
    NeitherShape,
    #[error("ID tokens cannot be checked: no [identity.upstream] is configured")]
    NoUpstream,
    #[error("the ID token is not acceptable: {0}")]
    IdToken(TokenProblem),
    #[error("subject must be 1 to 255 bytes of printable text: {0}")]
    Subject(String),
    #[error("no consumer token can be made for this identity: {0}")]
    Unmintable(String),
    #[error("anonymous identities are not enabled")]
    AnonymousOff,
    #[error("the login provider cannot be reached to check the token; retry later")]
    UpstreamUnreachable,
    #[error("the identity service cannot answer right now")]
    Unavailable,
}

impl Refusal {
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::TooManyFailures { .. } | Refusal::TooManySignups { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Refusal::BackendUnauthenticated => StatusCode::UNAUTHORIZED,
            Refusal::NotTrusted => StatusCode::FORBIDDEN,
            Refusal::NotJson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Refusal::Malformed(_)
            | Refusal::NeitherShape
            | Refusal::NoUpstream
            | Refusal::IdToken(_)
            | Refusal::Subject(_)
            | Refusal::Unmintable(_) => StatusCode::BAD_REQUEST,
            Refusal::AnonymousOff => StatusCode::NOT_FOUND,
            Refusal::UpstreamUnreachable | Refusal::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The bridge could not do its part (`what` failed with `error`): logged here, never
    /// shown.
    pub fn unavailable(what: &str, error: impl std::fmt::Display) -> Refusal {
        tracing::error!(error = %error, "{what}");
        Refusal::Unavailable
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let response = json_error(self.status(), &self.to_string());
        match self {
            Refusal::TooManyFailures { retry_after } | Refusal::TooManySignups { retry_after } => {
                with_retry_after(response, retry_after)
            }
            Refusal::BackendUnauthenticated => basic_challenge(response),
            _ => response,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_carries_its_status_and_headers() {
        let r = Refusal::BackendUnauthenticated.into_response();
        assert_eq!(r.status(), 401);
        assert!(r.headers().contains_key(http::header::WWW_AUTHENTICATE));
        let r = Refusal::TooManySignups {
            retry_after: Duration::from_secs(12),
        }
        .into_response();
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()[http::header::RETRY_AFTER], "12");
        assert_eq!(Refusal::NeitherShape.status(), 400);
        assert_eq!(
            Refusal::NeitherShape.to_string(),
            "send either {\"id_token\": ...} or {\"subject\": ..., \"claims\": {...}}"
        );
    }
}
