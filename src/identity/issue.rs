//! `POST /identity/v1/token`: server-to-server issuance for the brand's own systems.
//!
//! A configured backend (HTTP Basic with its id and secret, and/or a client certificate with
//! an accepted name) presents either a consumer's upstream ID token, checked exactly as at
//! login except for the nonce (`{"id_token": "..."}`), or, if it is trusted, the subject and
//! upstream-style claims it vouches for (`{"subject": "...", "claims": {...}}`). Both go
//! through the same subject rule and claim mapping as a login. The answer is
//! `{"jwt", "token_type", "expires_in"}`, never cached.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::IdentityService;
use super::upstream::UpstreamError;
use super::web::basic_challenge;
use crate::http_answer::{has_media_type, json_error, no_store, with_retry_after};
use crate::http_auth::basic_credentials;
use crate::tls::Peer;

/// What a backend asks for: exactly one of the two shapes.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    id_token: Option<String>,
    subject: Option<String>,
    claims: Option<Map<String, Value>>,
}

pub async fn issue(
    State(s): State<IdentityService>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let answer = handle(&s, peer.as_ref().map(|p| &p.0), &headers, &body).await;
    s.inner.metrics.answered("backend", answer.status());
    answer
}

async fn handle(
    s: &IdentityService,
    peer: Option<&Peer>,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let live = s.live();
    if let Some(wait) = s.failures_wait(peer, "identity_token") {
        return with_retry_after(
            json_error(
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed authentications from this address; retry later",
            ),
            wait,
        );
    }
    let basic = basic_credentials(headers);
    let backend = live.callers.authenticate_backend(
        basic.as_ref().map(|(u, p)| (u.as_str(), p.as_str())),
        peer.and_then(|p| p.certificate.as_deref()),
    );
    let Some(backend) = backend else {
        s.count_failure(peer, "identity_token");
        tracing::info!("a token request failed backend authentication");
        return basic_challenge(json_error(
            StatusCode::UNAUTHORIZED,
            "backend authentication failed",
        ));
    };

    if !has_media_type(headers, "application/json") {
        return json_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "the body must be application/json",
        );
    }
    let request: Request = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, &format!("malformed request: {e}")),
    };

    let (subject, profile) = match request {
        Request {
            id_token: Some(token),
            subject: None,
            claims: None,
        } => {
            let Some(upstream) = &live.upstream else {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    "ID tokens cannot be checked: no [identity.upstream] is configured",
                );
            };
            match upstream
                .verify_presented(&token, &backend.accepted_audiences)
                .await
            {
                Ok(identity) => (
                    live.mapper.subject(&identity.issuer, &identity.subject),
                    live.mapper.profile(&identity.claims),
                ),
                Err(UpstreamError::Token(problem)) => {
                    tracing::info!(backend = %backend.id, %problem, "a presented ID token failed a check");
                    return json_error(
                        StatusCode::BAD_REQUEST,
                        &format!("the ID token is not acceptable: {problem}"),
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot check a presented ID token");
                    return json_error(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "the login provider cannot be reached to check the token; retry later",
                    );
                }
            }
        }
        Request {
            id_token: None,
            subject: Some(subject),
            claims,
        } => {
            if !backend.trusted {
                return json_error(
                    StatusCode::FORBIDDEN,
                    "this backend may only present ID tokens (it is not trusted to name subjects)",
                );
            }
            if let Err(e) = super::subject::check(&subject) {
                return json_error(
                    StatusCode::BAD_REQUEST,
                    &format!("subject must be 1 to 255 bytes of printable text: {e}"),
                );
            }
            let claims = claims.unwrap_or_default();
            let issuer = live
                .upstream
                .as_ref()
                .map(|u| u.issuer().to_string())
                .unwrap_or_else(|| format!("backend:{}", backend.id));
            (
                live.mapper.subject(&issuer, &subject),
                live.mapper.profile(&claims),
            )
        }
        _ => {
            return json_error(
                StatusCode::BAD_REQUEST,
                "send either {\"id_token\": ...} or {\"subject\": ..., \"claims\": {...}}",
            );
        }
    };

    match s.mint_consumer(subject, profile, None).await {
        Ok(minted) => {
            tracing::info!(backend = %backend.id, kid = %minted.kid, "issued a consumer token to a backend");
            no_store(
                axum::Json(json!({
                    "jwt": minted.jwt,
                    "token_type": "Bearer",
                    "expires_in": s.inner.config.token_lifetime.0.as_secs(),
                }))
                .into_response(),
            )
        }
        Err(e) => match e.refusal() {
            Some(reason) => json_error(
                StatusCode::BAD_REQUEST,
                &format!("no consumer token can be made for this identity: {reason}"),
            ),
            None => s.unavailable("cannot mint a consumer token", e),
        },
    }
}
