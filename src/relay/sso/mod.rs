//! Agents' single sign-on through the brand's identity provider (`[relay.agents.sso]`):
//! the provider's checks live in the method's module (`oidc`), what the provider vouched for
//! becomes an agent's session in `accounts` (policy, audit), and this module ends the sign-in
//! in the browser exactly as a password login would leave it: the session cookie, and the
//! session's CSRF token handed to the workspace in the URL fragment of the redirect to
//! `/workspace/` (never sent to a server, dropped from the address bar by the page).
//!
//! A refusal is shown where the person is: on the workspace's sign-in page for a browser
//! (redirected there with the refusal's code in the fragment, which the page turns into its
//! own words: a crafted link can show nothing but the page's own texts), as JSON with its
//! status and reason otherwise.

mod oidc;
mod saml;

use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode, header};

use super::accounts::{NewSession, SsoLoginError};
use super::service::RelayService;
use crate::identity::pages::{page_error, redirect};

pub(super) use oidc::{callback as oidc_callback, start as oidc_start};
pub(super) use saml::{
    MAX_ACS_BYTES as SAML_MAX_ACS_BYTES, acs as saml_acs, metadata as saml_metadata,
    start as saml_start,
};

/// A session started: the cookie, and the workspace with the CSRF token (or, without the
/// workspace, the same JSON a password login answers).
fn signed_in(relay: &RelayService, session: NewSession) -> Response {
    let max_age = super::login::lifetime(relay);
    let mut response = if relay.inner.config.workspace.enabled {
        let fragment = form_urlencoded::Serializer::new(String::new())
            .append_pair("csrf", session.csrf.expose())
            .finish();
        redirect(&format!("/workspace/#{fragment}"))
    } else {
        crate::http_answer::no_store(
            axum::Json(serde_json::json!({
                "csrf": session.csrf.expose(),
                "expiresAt": crate::clock::UnixMillis::of(session.principal.expires_at).0,
                "username": session.principal.username,
            }))
            .into_response(),
        )
    };
    if let Some(cookie) = super::login::session_cookie(&session, max_age) {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    response
}

/// A sign-in that did not succeed, where the person sees it: `code` for the workspace,
/// `reason` and `status` for programs.
fn refused(
    relay: &RelayService,
    headers: &HeaderMap,
    status: StatusCode,
    code: &str,
    reason: &str,
) -> Response {
    let browser = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    if browser && relay.inner.config.workspace.enabled {
        let fragment = form_urlencoded::Serializer::new(String::new())
            .append_pair("sso-error", code)
            .finish();
        return redirect(&format!("/workspace/#{fragment}"));
    }
    page_error(headers, status, reason)
}

/// What every sign-in start checks before anything is kept: the account's allowed networks
/// (audited when outside) and the starts per source and minute under `scope` (each start
/// keeps a record until it ends).
async fn admit_start(
    relay: &RelayService,
    headers: &HeaderMap,
    source: Option<std::net::IpAddr>,
    scope: &str,
    per_minute: u32,
) -> Result<(), Response> {
    let accounts = &relay.inner.accounts;
    if !accounts.admits(source) {
        accounts.audit_outside("", source).await;
        let outside = SsoLoginError::OutsideNetworks;
        let reason = outside.to_string();
        return Err(refused(
            relay,
            headers,
            StatusCode::FORBIDDEN,
            outside.outcome(),
            &reason,
        ));
    }
    if let Some(ip) = source {
        let attempts = &relay.inner.login_attempts;
        if attempts.blocked(ip, scope, per_minute).is_some() {
            return Err(refused(
                relay,
                headers,
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_sign_ins",
                "too many sign-ins from this address; try again in a minute",
            ));
        }
        attempts.count(ip, scope);
    }
    Ok(())
}

/// The browser's binding (its cookie `cookie_name` when it holds a handle, else a new one)
/// and a fresh handle for the sign-in being started.
fn browser_and_handle(
    headers: &HeaderMap,
    cookie_name: &str,
) -> Result<(String, String), crate::identity::GrantError> {
    let browser = match crate::http_auth::cookie(headers, cookie_name) {
        Some(v) if crate::identity::Grants::is_handle(v) => v.to_string(),
        _ => crate::identity::Grants::new_handle()?,
    };
    Ok((browser, crate::identity::Grants::new_handle()?))
}

/// Something of ours failed (the store, randomness): logged, and the person asked to retry.
fn unavailable(
    relay: &RelayService,
    headers: &HeaderMap,
    what: &str,
    e: impl std::fmt::Display,
) -> Response {
    tracing::error!(error = %e, "{what}");
    refused(
        relay,
        headers,
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "sign-ins cannot be completed right now; please try again",
    )
}

/// The status of a refusal the accounts made.
fn status_of(e: &SsoLoginError) -> StatusCode {
    match e {
        SsoLoginError::NotConfigured => StatusCode::NOT_FOUND,
        SsoLoginError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        SsoLoginError::Locked { .. } => StatusCode::LOCKED,
        SsoLoginError::OutsideNetworks
        | SsoLoginError::NoUsername
        | SsoLoginError::NotInGroup
        | SsoLoginError::UnknownAgent
        | SsoLoginError::LinkedToAnother
        | SsoLoginError::BreakGlass
        | SsoLoginError::HasPassword
        | SsoLoginError::Disabled => StatusCode::FORBIDDEN,
    }
}
