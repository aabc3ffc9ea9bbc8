//! Agents' sign-in with OpenID Connect, through the identity bridge's relying party
//! (`identity::Upstream`: code flow with PKCE S256, state and nonce; the ID token's signature,
//! issuer, audience, times, nonce and `at_hash` checked), with its own client registration:
//! - `GET /api/account/{account}/sso/oidc` keeps the sign-in as a pending grant under a fresh
//!   `state`, tied to the browser's login cookie, and sends the browser to the provider;
//! - `GET /api/account/{account}/sso/oidc/callback` takes it back (once, from that browser),
//!   has the code exchanged and the ID token checked, and hands the vouched identity to the
//!   accounts.
//!
//! Never logs a code, a state or a token.

use axum::extract::{Path, RawQuery, State};
use axum::response::Response;
use http::{HeaderMap, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{admit_start, browser_and_handle, refused, signed_in, status_of, unavailable};
use crate::client_address::ClientIp;
use crate::http_auth::cookie;
use crate::identity::pages::{LOGIN_COOKIE, login_cookie, params, redirect};
use crate::identity::{GrantKind, Grants, UpstreamError};
use crate::relay::accounts::SsoIdentity;
use crate::relay::service::RelayService;

const NOT_CONFIGURED: &str =
    "single sign-on with OpenID Connect is not configured for this account";

/// A sign-in sent to the provider, waiting for the browser to come back.
#[derive(Serialize, Deserialize)]
struct PendingSignIn {
    nonce: String,
    pkce_verifier: String,
}

/// `GET /api/account/{account}/sso/oidc`.
pub async fn start(
    State(relay): State<RelayService>,
    Path(account): Path<String>,
    ClientIp(source): ClientIp,
    headers: HeaderMap,
) -> Response {
    let refuse = |status, code, reason: &str| refused(&relay, &headers, status, code, reason);
    let Some((upstream, grants)) = provider(&relay, &account) else {
        return refuse(StatusCode::NOT_FOUND, "not_configured", NOT_CONFIGURED);
    };
    let limit = upstream.logins_per_minute();
    if let Err(refusal) = admit_start(&relay, &headers, source, "agent-sso", limit).await {
        return refusal;
    }
    let (browser, state) = match browser_and_handle(&headers, LOGIN_COOKIE) {
        Ok(both) => both,
        Err(e) => return unavailable(&relay, &headers, "cannot make a sign-in state", e),
    };
    let begun = match upstream.begin(&state).await {
        Ok(b) => b,
        Err(e) => return provider_failed(&relay, &headers, &e),
    };
    let pending = PendingSignIn {
        nonce: begun.nonce,
        pkce_verifier: begun.pkce_verifier,
    };
    let lifetime = upstream.login_timeout();
    if let Err(e) = grants
        .put(GrantKind::AgentLogin, &state, &browser, &pending, lifetime)
        .await
    {
        return unavailable(&relay, &headers, "cannot keep a pending sign-in", e);
    }
    let mut response = redirect(&begun.url);
    if let Some(c) = login_cookie(&browser, lifetime.as_secs()) {
        response.headers_mut().insert(header::SET_COOKIE, c);
    }
    response
}

/// `GET /api/account/{account}/sso/oidc/callback`.
pub async fn callback(
    State(relay): State<RelayService>,
    Path(account): Path<String>,
    ClientIp(source): ClientIp,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let refuse = |status, code, reason: &str| refused(&relay, &headers, status, code, reason);
    let Some((upstream, grants)) = provider(&relay, &account) else {
        return refuse(StatusCode::NOT_FOUND, "not_configured", NOT_CONFIGURED);
    };
    let p = match params(query.as_deref().unwrap_or("")) {
        Ok(p) => p,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
    };
    let get = |k: &str| p.get(k).map(String::as_str);
    let Some(state) = get("state") else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the sign-in's state is missing",
        );
    };
    // Found only with the cookie of the browser that started the sign-in.
    let browser = cookie(&headers, LOGIN_COOKIE).unwrap_or("");
    let pending: PendingSignIn = match grants.take(GrantKind::AgentLogin, state, browser).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            tracing::info!(
                cookie = !browser.is_empty(),
                "an agent's sign-in came back with an unknown, expired or used state, or in another browser"
            );
            return refuse(
                StatusCode::BAD_REQUEST,
                "sign_in_unknown",
                "this sign-in is unknown, expired, already finished, or was started in another browser: please start again",
            );
        }
        Err(e) => return unavailable(&relay, &headers, "cannot read a pending sign-in", e),
    };
    let via = format!("oidc {}", upstream.issuer());
    if get("error").is_some() {
        tracing::info!(
            via,
            "the identity provider ended an agent's sign-in without success"
        );
        return refuse(
            StatusCode::FORBIDDEN,
            "provider_ended",
            "the identity provider did not complete the sign-in",
        );
    }
    let Some(code) = get("code") else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "the provider's answer has no code",
        );
    };
    let identity = match upstream
        .finish(code, &pending.pkce_verifier, &pending.nonce)
        .await
    {
        Ok(identity) => identity,
        Err(e) => {
            if let UpstreamError::Token(problem) = &e {
                let accounts = &relay.inner.accounts;
                accounts
                    .audit_sso_failure("sso_invalid_response", source, &via)
                    .await;
                tracing::warn!(%problem, via, "an ID token for an agent's sign-in failed a check");
            }
            return provider_failed(&relay, &headers, &e);
        }
    };
    let Some(sso) = relay.inner.accounts.config().sso.as_ref() else {
        return refuse(
            StatusCode::NOT_FOUND,
            "not_configured",
            "single sign-on is not configured",
        );
    };
    // An email address names an agent only once the provider has verified it.
    let unverified_email = sso.username_claim == "email"
        && identity.claims.get("email_verified") != Some(&Value::Bool(true));
    let vouched = SsoIdentity {
        // The subject quoted (escaped): it goes in the log and the audit as it came.
        via: format!("{via} {:?}", identity.subject),
        subject: format!("{} {}", identity.issuer, identity.subject),
        username: identity
            .claims
            .get(&sso.username_claim)
            .and_then(Value::as_str)
            .filter(|_| !unverified_email)
            .map(str::to_string),
        groups: match identity.claims.get(&sso.groups_claim) {
            Some(Value::Array(list)) => list
                .iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
            Some(Value::String(one)) => vec![one.clone()],
            _ => Vec::new(),
        },
    };
    match relay.inner.accounts.sso_login(&vouched, source).await {
        Ok(session) => signed_in(&relay, session),
        Err(e) => refuse(status_of(&e), e.outcome(), &e.to_string()),
    }
}

/// The account's OpenID provider and the pending sign-ins, when `account` is the relay's and
/// it has one.
fn provider<'r>(
    relay: &'r RelayService,
    account: &str,
) -> Option<(std::sync::Arc<crate::identity::Upstream>, &'r Grants)> {
    if account != relay.inner.config.account {
        return None;
    }
    let sso = relay.inner.sso.as_ref()?;
    Some((sso.oidc.clone()?, &sso.grants))
}

/// The provider could not be used, or its answer failed a check.
fn provider_failed(relay: &RelayService, headers: &HeaderMap, e: &UpstreamError) -> Response {
    let (status, code, reason) = match e {
        UpstreamError::Unavailable(why) => {
            tracing::warn!(error = %why, "the agents' identity provider is unavailable");
            (
                StatusCode::BAD_GATEWAY,
                "provider_unavailable",
                "the identity provider cannot be reached right now; please try again".to_string(),
            )
        }
        UpstreamError::Refused(why) => {
            tracing::info!(error = %why, "the agents' identity provider refused to exchange a code");
            (
                StatusCode::BAD_REQUEST,
                "provider_refused",
                "the identity provider refused this sign-in; please start again".to_string(),
            )
        }
        UpstreamError::Token(problem) => (
            StatusCode::BAD_REQUEST,
            "sso_invalid_response",
            format!(
                "the identity provider's answer failed a check ({problem}); please start again"
            ),
        ),
    };
    refused(relay, headers, status, code, &reason)
}
