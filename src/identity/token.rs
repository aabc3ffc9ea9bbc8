//! `POST /oauth/token`: the platform exchanges a one-time code for the consumer's identity
//! token (RFC 6749 §4.1.3, PKCE RFC 7636 §4.6).
//!
//! The request is `application/x-www-form-urlencoded`; the client authenticates with HTTP
//! Basic or with `client_id`/`client_secret` in the body, never both. A code works once: it is
//! spent by the first call that presents it with valid client credentials, whatever the
//! outcome. Answers are never cached; errors are RFC 6749 §5.2 JSON, and `invalid_client`
//! comes with 401.

use std::time::Duration;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde_json::json;

use super::IdentityService;
use super::grants::GrantKind;
use super::login::{IssuedCode, is_pkce_text};
use super::web::{basic_challenge, params};
use crate::http_answer::{has_media_type, no_store, with_retry_after};
use crate::http_auth::basic_credentials;
use crate::tls::Peer;

/// Why a token call is refused, as RFC 6749 §5.2 names it: [`TokenRefusal::status`] and
/// [`TokenRefusal::error_code`] map every kind in one exhaustive match each; the text is the
/// `error_description`, which names a check, never a secret or a code.
#[derive(Debug, thiserror::Error)]
enum TokenRefusal {
    #[error("{0}")]
    InvalidRequest(String),
    #[error("client authentication failed")]
    InvalidClient,
    #[error("too many failed client authentications from this address; retry later")]
    TooManyFailures { retry_after: Duration },
    #[error("only authorization_code is supported")]
    UnsupportedGrantType,
    #[error("{0}")]
    InvalidGrant(String),
    #[error("the identity service cannot answer right now")]
    Unavailable,
}

impl TokenRefusal {
    fn request(description: &str) -> TokenRefusal {
        TokenRefusal::InvalidRequest(description.to_string())
    }

    fn grant(description: &str) -> TokenRefusal {
        TokenRefusal::InvalidGrant(description.to_string())
    }

    fn status(&self) -> StatusCode {
        match self {
            TokenRefusal::InvalidRequest(_)
            | TokenRefusal::UnsupportedGrantType
            | TokenRefusal::InvalidGrant(_) => StatusCode::BAD_REQUEST,
            TokenRefusal::InvalidClient => StatusCode::UNAUTHORIZED,
            TokenRefusal::TooManyFailures { .. } => StatusCode::TOO_MANY_REQUESTS,
            TokenRefusal::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The RFC 6749 §5.2 `error` value.
    fn error_code(&self) -> &'static str {
        match self {
            TokenRefusal::InvalidRequest(_) => "invalid_request",
            TokenRefusal::InvalidClient | TokenRefusal::TooManyFailures { .. } => "invalid_client",
            TokenRefusal::UnsupportedGrantType => "unsupported_grant_type",
            TokenRefusal::InvalidGrant(_) => "invalid_grant",
            TokenRefusal::Unavailable => "temporarily_unavailable",
        }
    }
}

impl IntoResponse for TokenRefusal {
    fn into_response(self) -> Response {
        let body = json!({ "error": self.error_code(), "error_description": self.to_string() });
        let response = no_store((self.status(), axum::Json(body)).into_response());
        match self {
            TokenRefusal::TooManyFailures { retry_after } => {
                with_retry_after(response, retry_after)
            }
            TokenRefusal::InvalidClient => basic_challenge(response),
            _ => response,
        }
    }
}

pub async fn token(
    State(s): State<IdentityService>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let answer = exchange(&s, peer.as_ref().map(|p| &p.0), &headers, &body)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    s.inner.metrics.answered("code", answer.status());
    answer
}

async fn exchange(
    s: &IdentityService,
    peer: Option<&Peer>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, TokenRefusal> {
    let live = s.live();
    if !has_media_type(headers, "application/x-www-form-urlencoded") {
        return Err(TokenRefusal::request(
            "the body must be application/x-www-form-urlencoded",
        ));
    }
    let Ok(text) = std::str::from_utf8(body) else {
        return Err(TokenRefusal::request("the body is not UTF-8"));
    };
    let p = match params(text) {
        Ok(p) => p,
        Err(e) => return Err(TokenRefusal::InvalidRequest(e.to_string())),
    };
    let get = |k: &str| p.get(k).map(String::as_str);

    // Client authentication first: nothing about a code is said to an unauthenticated caller.
    // RFC 6749 §2.3.1 form-encodes the Basic user and password, but many clients send them
    // as they are: both readings are tried (each in constant time), so a secret with '+' or
    // '%' works either way.
    let basic = basic_credentials(headers);
    let candidates: Vec<(String, String)> = match (&basic, get("client_id"), get("client_secret")) {
        (Some(_), _, Some(_)) => {
            return Err(TokenRefusal::request(
                "use one client authentication method, not Basic and form fields",
            ));
        }
        (Some((u, pw)), form_id, None) => {
            let decoded = (decode_form_component(u), decode_form_component(pw));
            if form_id.is_some_and(|f| f != u && f != decoded.0) {
                return Err(TokenRefusal::request(
                    "client_id differs from the authenticated client",
                ));
            }
            vec![(u.clone(), pw.clone()), decoded]
        }
        (None, Some(id), Some(secret)) => vec![(id.to_string(), secret.to_string())],
        (None, _, None) | (None, None, Some(_)) => Vec::new(),
    };
    // Failures are counted per source and client, so a stranger failing from a shared address
    // does not lock the platform's own client out as easily. The client is the configured one
    // the presented id names in any of its readings (so `br%61nd` counts as `brand`); ids that
    // name no client share one scope, so made-up ids cannot multiply the allowance.
    let scope = match candidates
        .iter()
        .find_map(|(id, _)| live.callers.client(id))
    {
        Some(known) => format!("oauth_token:client:{}", known.id),
        None => "oauth_token:unknown".to_string(),
    };
    if let Some(wait) = s.failures_wait(peer, &scope) {
        return Err(TokenRefusal::TooManyFailures { retry_after: wait });
    }
    let mut client = None;
    for (id, secret) in &candidates {
        let found = live.callers.authenticate_client(id, secret);
        client = client.or(found);
    }
    let Some(client) = client else {
        s.count_failure(peer, &scope);
        tracing::info!(
            presented = !candidates.is_empty(),
            "a token call failed client authentication"
        );
        return Err(TokenRefusal::InvalidClient);
    };

    match get("grant_type") {
        Some("authorization_code") => {}
        Some(_) => {
            return Err(TokenRefusal::UnsupportedGrantType);
        }
        None => return Err(TokenRefusal::request("grant_type is missing")),
    }
    let Some(code) = get("code") else {
        return Err(TokenRefusal::request("code is missing"));
    };
    if let Some(v) = get("code_verifier")
        && !is_pkce_text(v)
    {
        return Err(TokenRefusal::request(
            "code_verifier must be 43 to 128 unreserved characters",
        ));
    }

    let issued: IssuedCode = match s.inner.grants.take(GrantKind::Code, code, "").await {
        Ok(Some(c)) => c,
        Ok(None) => {
            return Err(TokenRefusal::grant(
                "the code is unknown, expired or already used",
            ));
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot read a code");
            return Err(TokenRefusal::Unavailable);
        }
    };
    if issued.client_id != client.id {
        tracing::warn!(client = %client.id, "a client presented a code issued to another client");
        return Err(TokenRefusal::grant(
            "the code was not issued to this client",
        ));
    }
    match get("redirect_uri") {
        Some(uri) if uri != issued.redirect_uri => {
            return Err(TokenRefusal::grant("redirect_uri differs from the login's"));
        }
        None if issued.redirect_uri_given => {
            return Err(TokenRefusal::grant(
                "redirect_uri is required: the login named one",
            ));
        }
        _ => {}
    }
    match (&issued.code_challenge, get("code_verifier")) {
        (Some(challenge), Some(verifier)) => {
            let digest = crate::digest::sha256(verifier.as_bytes());
            let computed = base64::Engine::encode(
                &base64::engine::general_purpose::URL_SAFE_NO_PAD,
                digest.as_ref(),
            );
            if !crate::secret::constant_time_eq(computed.as_bytes(), challenge.as_bytes()) {
                return Err(TokenRefusal::grant(
                    "code_verifier does not match the login's code_challenge",
                ));
            }
        }
        (Some(_), None) => {
            return Err(TokenRefusal::grant(
                "code_verifier is required: the login sent a code_challenge",
            ));
        }
        (None, Some(_)) => {
            return Err(TokenRefusal::grant(
                "code_verifier given, but the login sent no code_challenge",
            ));
        }
        (None, None) => {}
    }

    let minted = match s
        .mint_consumer(issued.subject, issued.profile, issued.nonce)
        .await
    {
        Ok(m) => m,
        Err(e) if e.refusal().is_some() => {
            tracing::warn!(error = %e, "a code's identity cannot become a consumer token");
            return Err(TokenRefusal::InvalidGrant(e.to_string()));
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot mint a consumer token");
            return Err(TokenRefusal::Unavailable);
        }
    };
    tracing::info!(client = %client.id, kid = %minted.kid, "exchanged a code for a consumer token");
    Ok(no_store(
        axum::Json(json!({
            "access_token": minted.jwt,
            "token_type": "Bearer",
            "expires_in": s.inner.config.token_lifetime.0.as_secs(),
            "id_token": minted.jwt,
        }))
        .into_response(),
    ))
}

/// One `application/x-www-form-urlencoded` component (`+` is a space, `%XX` a byte).
fn decode_form_component(text: &str) -> String {
    form_urlencoded::parse(format!("x={text}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_parts_are_form_decoded() {
        assert_eq!(decode_form_component("a%3Ab+c"), "a:b c");
        assert_eq!(decode_form_component("plain"), "plain");
    }
}
