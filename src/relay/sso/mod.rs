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

use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode, header};

use super::accounts::{NewSession, SsoLoginError};
use super::service::RelayService;
use crate::identity::pages::{page_error, redirect};

pub(super) use oidc::{callback as oidc_callback, start as oidc_start};

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
