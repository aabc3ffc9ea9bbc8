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
use http::HeaderMap;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::IdentityService;
use super::refusal::Refusal;
use super::upstream::UpstreamError;
use crate::http_answer::{has_media_type, no_store};
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
    let answer = handle(&s, peer.as_ref().map(|p| &p.0), &headers, &body)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    s.inner.metrics.answered("backend", answer.status());
    answer
}

async fn handle(
    s: &IdentityService,
    peer: Option<&Peer>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, Refusal> {
    let live = s.live();
    if let Some(retry_after) = s.failures_wait(peer, "identity_token") {
        return Err(Refusal::TooManyFailures { retry_after });
    }
    let basic = basic_credentials(headers);
    let backend = live.callers.authenticate_backend(
        basic.as_ref().map(|(u, p)| (u.as_str(), p.as_str())),
        peer.and_then(|p| p.certificate.as_deref()),
    );
    let Some(backend) = backend else {
        s.count_failure(peer, "identity_token");
        tracing::info!("a token request failed backend authentication");
        return Err(Refusal::BackendUnauthenticated);
    };

    if !has_media_type(headers, "application/json") {
        return Err(Refusal::NotJson);
    }
    let request: Request =
        serde_json::from_slice(body).map_err(|e| Refusal::Malformed(e.to_string()))?;

    let (subject, profile) = match request {
        Request {
            id_token: Some(token),
            subject: None,
            claims: None,
        } => {
            let upstream = live.upstream.as_ref().ok_or(Refusal::NoUpstream)?;
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
                    return Err(Refusal::IdToken(problem));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot check a presented ID token");
                    return Err(Refusal::UpstreamUnreachable);
                }
            }
        }
        Request {
            id_token: None,
            subject: Some(subject),
            claims,
        } => {
            if !backend.trusted {
                return Err(Refusal::NotTrusted);
            }
            super::subject::check(&subject).map_err(|e| Refusal::Subject(e.to_string()))?;
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
        _ => return Err(Refusal::NeitherShape),
    };

    match s.mint_consumer(subject, profile, None).await {
        Ok(minted) => {
            tracing::info!(backend = %backend.id, kid = %minted.kid, "issued a consumer token to a backend");
            Ok(no_store(
                axum::Json(json!({
                    "jwt": minted.jwt,
                    "token_type": "Bearer",
                    "expires_in": s.inner.config.token_lifetime.0.as_secs(),
                }))
                .into_response(),
            ))
        }
        Err(e) => Err(match e.refusal() {
            Some(reason) => Refusal::Unmintable(reason),
            None => Refusal::unavailable("cannot mint a consumer token", e),
        }),
    }
}
