//! The agents' login over HTTPS:
//! - `POST /api/account/{account}/login` with `{"username", "password"}` answers
//!   `{"bearer", "csrf", "expiresAt"}` (Unix milliseconds) and sets the bearer as a
//!   `__Host-` cookie (HttpOnly, Secure, SameSite=Strict) for the agents' browser workspace;
//! - `POST /api/account/{account}/refresh` gives a new session and ends the old one;
//! - `POST /api/account/{account}/logout` ends the session (`204`).
//!
//! Refresh and logout take the bearer as `Authorization: Bearer <bearer>`, or from the cookie
//! together with `X-CSRF-Token` (the session's CSRF token, compared in constant time): a cookie
//! alone is what a cross-site request would carry. Every refused login gets the same `401`;
//! the audit keeps the reason. The one exception: a locked agent that gives its right password
//! gets `423` with when the lock lifts (nobody without the password learns of the lock). Login
//! attempts are limited per source address.
//!
//! Never logs a password, a bearer or a CSRF token.

use std::net::IpAddr;
use std::time::SystemTime;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use serde::Deserialize;
use serde_json::json;

use super::accounts::{AgentAuthError, LiveSession, LoginError, NewSession};
use super::refusal::HttpRefusal;
use super::service::RelayService;
use crate::client_address::ClientIp;
use crate::config::MAX_PASSWORD_BYTES;
use crate::http_answer::{is_json, no_store};
use crate::http_auth::{authorization_token, cookie};
use crate::secret::Secret;
use crate::tls::Peer;

/// The session cookie (`__Host-`: only set by this origin over HTTPS, path `/`, no domain).
pub const SESSION_COOKIE: &str = "__Host-brandgate_agent";
/// The header a cookie-authenticated request must carry.
pub const CSRF_HEADER: &str = "x-csrf-token";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    username: String,
    password: String,
    /// The browser workspace asks for the cookie only: the bearer is then not in the answer,
    /// so no script of the page ever holds it.
    #[serde(default, rename = "cookieOnly")]
    cookie_only: bool,
}

/// Refuses a request for another account than the relay's.
pub(super) fn check_account(relay: &RelayService, account: &str) -> Result<(), HttpRefusal> {
    if account == relay.inner.accounts.account() {
        Ok(())
    } else {
        Err(HttpRefusal::NotFound("no such account".into()))
    }
}

/// `POST /api/account/{account}/login`.
pub async fn login(
    State(relay): State<RelayService>,
    Path(account): Path<String>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, HttpRefusal> {
    check_account(&relay, &account)?;
    let accounts = &relay.inner.accounts;
    let source = peer.map(|p| p.0.client);
    // Every attempt counts, so a guesser cannot try faster by getting some right.
    if let Some(ip) = source {
        let limit = accounts.config().login_attempts_per_minute;
        if let Some(retry_after) = relay.inner.login_attempts.blocked(ip, "agent-login", limit) {
            return Err(HttpRefusal::TooManyLogins { retry_after });
        }
        relay.inner.login_attempts.count(ip, "agent-login");
    }
    let body = read_json_body(&headers, body)?;
    let Ok(LoginBody {
        username,
        password,
        cookie_only,
    }) = serde_json::from_slice::<LoginBody>(&body)
    else {
        // Not the parser's message: it may quote what was sent.
        return Err(HttpRefusal::BadRequest(
            r#"the body must be a JSON object {"username": "...", "password": "..."}"#.into(),
        ));
    };
    let password = Secret::new(password);
    if username.is_empty() || password.expose().is_empty() {
        return Err(HttpRefusal::BadRequest(
            "username and password must not be empty".into(),
        ));
    }
    if username.len() > 256 || password.expose().len() > MAX_PASSWORD_BYTES {
        return Err(HttpRefusal::CredentialsTooLong);
    }
    match accounts.login(&username, &password, source).await {
        Ok(session) => Ok(session_answer(session, lifetime(&relay), !cookie_only)),
        Err(LoginError::Refused(super::accounts::Refusal::SsoRequired)) => {
            Err(HttpRefusal::SsoRequired(account))
        }
        Err(LoginError::Refused(_)) => Err(HttpRefusal::LoginRefused),
        Err(LoginError::Locked { until }) => Err(HttpRefusal::Locked { until }),
        Err(LoginError::OutsideNetworks) => Err(HttpRefusal::OutsideNetworks),
        Err(LoginError::Unavailable(e)) => {
            Err(HttpRefusal::unavailable("cannot check an agent's login", e))
        }
    }
}

/// `POST /api/account/{account}/refresh`.
pub async fn refresh(
    State(relay): State<RelayService>,
    Path(account): Path<String>,
    ClientIp(source): ClientIp,
    headers: HeaderMap,
) -> Result<Response, HttpRefusal> {
    check_account(&relay, &account)?;
    let (bearer, _) = authenticated(&relay, &headers, source).await?;
    // A caller that sent the bearer gets it back; one that used the cookie does not.
    let by_header = headers.contains_key(header::AUTHORIZATION);
    match relay.inner.accounts.refresh(&bearer, source).await {
        Ok(session) => Ok(session_answer(session, lifetime(&relay), by_header)),
        Err(e) => Err(auth_error(e)),
    }
}

/// `POST /api/account/{account}/logout`.
pub async fn logout(
    State(relay): State<RelayService>,
    Path(account): Path<String>,
    ClientIp(source): ClientIp,
    headers: HeaderMap,
) -> Result<Response, HttpRefusal> {
    check_account(&relay, &account)?;
    let (bearer, _) = authenticated(&relay, &headers, source).await?;
    relay
        .inner
        .accounts
        .logout(&bearer, source)
        .await
        .map_err(auth_error)?;
    let mut r = no_store(StatusCode::NO_CONTENT.into_response());
    if let Ok(v) = HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0"
    )) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    Ok(r)
}

/// `GET /api/v1/workspace`: what the signed-in agent's workspace needs: who it is, when its
/// session ends, and the account's settings (message size limit, skills to transfer to,
/// canned responses). Bearer, or cookie with `X-CSRF-Token`.
pub async fn workspace(
    State(relay): State<RelayService>,
    ClientIp(source): ClientIp,
    headers: HeaderMap,
) -> Result<Response, HttpRefusal> {
    let (_, live) = authenticated(&relay, &headers, source).await?;
    let config = &relay.inner.config;
    let expires_at = crate::clock::UnixMillis::of(live.principal.expires_at).0;
    let mut r = axum::Json(json!({
        "account": config.account,
        "username": live.principal.username,
        "expiresAt": expires_at,
        "maxMessageBytes": config.max_message_bytes,
        "skills": config.workspace.skills,
        "canned": config.workspace.canned.iter()
            .map(|c| json!({"shortcut": c.shortcut, "text": c.text}))
            .collect::<Vec<_>>(),
    }))
    .into_response();
    r = no_store(r);
    Ok(r)
}

/// The body of a JSON request: the right content type, within the size limit.
fn read_json_body(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, HttpRefusal> {
    if !is_json(headers) {
        return Err(HttpRefusal::NotJson);
    }
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            HttpRefusal::BodyTooLarge
        } else {
            HttpRefusal::BodyUnreadable
        }
    })
}

/// The bearer of a request and its live session: from `Authorization: Bearer`, or from the
/// session cookie with a matching `X-CSRF-Token`.
pub(super) async fn authenticated(
    relay: &RelayService,
    headers: &HeaderMap,
    source: Option<IpAddr>,
) -> Result<(String, LiveSession), HttpRefusal> {
    let accounts = &relay.inner.accounts;
    if headers.contains_key(header::AUTHORIZATION) {
        let bearer = authorization_token(headers, &["bearer"])
            .map(str::to_string)
            .ok_or(HttpRefusal::NotABearer)?;
        let live = accounts
            .session(&bearer, source)
            .await
            .map_err(auth_error)?;
        return Ok((bearer, live));
    }
    let bearer = cookie(headers, SESSION_COOKIE)
        .ok_or(HttpRefusal::NoSession)?
        .to_string();
    let live = accounts
        .session(&bearer, source)
        .await
        .map_err(auth_error)?;
    match headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()) {
        Some(csrf) if live.csrf_matches(csrf) => Ok((bearer, live)),
        _ => Err(HttpRefusal::NoCsrfToken),
    }
}

/// The cookie's lifetime, in seconds: the session's.
pub(super) fn lifetime(relay: &RelayService) -> u64 {
    relay.inner.accounts.config().session_lifetime.0.as_secs()
}

fn auth_error(e: AgentAuthError) -> HttpRefusal {
    match e {
        AgentAuthError::Invalid => HttpRefusal::SessionNotValid,
        AgentAuthError::OutsideNetworks => HttpRefusal::OutsideNetworks,
        AgentAuthError::Unavailable(e) => {
            HttpRefusal::unavailable("cannot check an agent's session", e)
        }
    }
}

/// `200` with the new session, and its cookie.
fn session_answer(s: NewSession, max_age: u64, with_bearer: bool) -> Response {
    let expires_at = s
        .principal
        .expires_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut body = json!({
        "csrf": s.csrf.expose(),
        "expiresAt": expires_at,
        "username": s.principal.username,
    });
    if with_bearer {
        body["bearer"] = json!(s.bearer.expose());
    }
    let mut r = axum::Json(body).into_response();
    r = no_store(r);
    if let Some(v) = session_cookie(&s, max_age) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// `Set-Cookie` for a new session, living `max_age` seconds.
pub(super) fn session_cookie(s: &NewSession, max_age: u64) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{SESSION_COOKIE}={}; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age={max_age}",
        s.bearer.expose()
    ))
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            format!("a=1; {SESSION_COOKIE}=abc; b=2").parse().unwrap(),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "c"), None);
    }

    #[test]
    fn only_json_bodies_are_read() {
        let mut h = HeaderMap::new();
        let body = || Ok(Bytes::from_static(b"{}"));
        assert_eq!(
            read_json_body(&h, body()).unwrap_err().status(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        h.insert(
            header::CONTENT_TYPE,
            "application/json; charset=utf-8".parse().unwrap(),
        );
        assert!(read_json_body(&h, body()).is_ok());
    }
}
