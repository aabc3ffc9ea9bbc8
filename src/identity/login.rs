//! The consumer's login, through the brand's own provider:
//! - `GET /login` checks who asks (a configured client, one of its redirect URIs, PKCE S256 if
//!   the app uses it), keeps the login as a pending grant under a fresh `state`, ties it to the
//!   browser with an HttpOnly cookie, and sends the browser to the provider (code flow, PKCE,
//!   nonce).
//! - `GET /callback` (the path of the configured redirect URI) takes the pending login back (a
//!   state works once, from the browser that started it), has the provider's code exchanged and
//!   its ID token checked, and returns to the app: with a one-time code for the platform's token
//!   call (60 s, bound to client, redirect URI and PKCE challenge), or, for implicit clients, with
//!   the consumer token itself (in the fragment, or as JSON for a native app).
//!
//! Nothing here is ever redirected to an unregistered URI, and no token, code or state is
//! logged.

use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode, header};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::IdentityService;
use super::grants::{GrantKind, Grants};
use super::upstream::UpstreamError;
use super::web::{LOGIN_COOKIE, cookie, login_cookie, page_error, params, redirect, with_params};
use crate::http_answer::with_retry_after;
use crate::tls::Peer;

/// Why a login is refused before it knows where to return to: shown to the person in the
/// browser (a page, or JSON for programs). [`PageRefusal::status`] maps each kind.
#[derive(Debug, thiserror::Error)]
enum PageRefusal {
    #[error("logins are not configured ([identity.upstream])")]
    NotConfigured,
    #[error("too many logins from this address; please try again in a minute")]
    TooManyLogins { retry_after: std::time::Duration },
    #[error("{0}")]
    Malformed(String),
}

impl PageRefusal {
    fn status(&self) -> StatusCode {
        match self {
            PageRefusal::NotConfigured => StatusCode::NOT_FOUND,
            PageRefusal::TooManyLogins { .. } => StatusCode::TOO_MANY_REQUESTS,
            PageRefusal::Malformed(_) => StatusCode::BAD_REQUEST,
        }
    }

    fn answer(self, headers: &HeaderMap) -> Response {
        let page = page_error(headers, self.status(), &self.to_string());
        match self {
            PageRefusal::TooManyLogins { retry_after } => with_retry_after(page, retry_after),
            PageRefusal::NotConfigured | PageRefusal::Malformed(_) => page,
        }
    }
}

/// Why a login that knows its app did not succeed: the app hears it the OAuth way (RFC 6749
/// §4.1.2.1). [`LoginFailure::status`] and [`LoginFailure::error_code`] map each kind.
#[derive(Debug)]
enum LoginFailure {
    /// The provider ended the login with this (known) OAuth error.
    EndedByProvider(&'static str),
    /// The identity can never become a consumer token.
    Unfit(String),
    /// The provider could not be used, or its answer failed a check.
    Upstream(UpstreamError),
}

impl LoginFailure {
    fn status(&self) -> StatusCode {
        match self {
            LoginFailure::EndedByProvider(_) | LoginFailure::Unfit(_) => StatusCode::FORBIDDEN,
            LoginFailure::Upstream(UpstreamError::Unavailable(_)) => StatusCode::BAD_GATEWAY,
            LoginFailure::Upstream(UpstreamError::Refused(_) | UpstreamError::Token(_)) => {
                StatusCode::BAD_REQUEST
            }
        }
    }

    /// The RFC 6749 §4.1.2.1 `error` value.
    fn error_code(&self) -> &'static str {
        match self {
            LoginFailure::EndedByProvider(error) => error,
            LoginFailure::Unfit(_) => "access_denied",
            LoginFailure::Upstream(UpstreamError::Unavailable(_)) => "temporarily_unavailable",
            LoginFailure::Upstream(UpstreamError::Refused(_) | UpstreamError::Token(_)) => {
                "server_error"
            }
        }
    }

    /// The `error_description`: names what failed, never a token or code.
    fn description(&self) -> String {
        match self {
            LoginFailure::EndedByProvider(_) => {
                "the login did not complete at the login provider".to_string()
            }
            LoginFailure::Unfit(reason) => {
                format!("this login cannot become a consumer identity: {reason}")
            }
            LoginFailure::Upstream(UpstreamError::Unavailable(_)) => {
                "the login provider cannot be reached right now; please try again".to_string()
            }
            LoginFailure::Upstream(UpstreamError::Refused(_)) => {
                "the login provider refused this login; please start again".to_string()
            }
            LoginFailure::Upstream(UpstreamError::Token(problem)) => {
                format!(
                    "the login provider's answer failed a check ({problem}); please start again"
                )
            }
        }
    }

    /// Logs why (the provider's own words stay in the log).
    fn log(&self) {
        match self {
            LoginFailure::EndedByProvider(error) => {
                tracing::info!(error, "the login provider ended a login without success");
            }
            LoginFailure::Unfit(reason) => {
                tracing::warn!(%reason, "a login's identity cannot become a consumer token");
            }
            LoginFailure::Upstream(UpstreamError::Unavailable(why)) => {
                tracing::warn!(error = %why, "the login provider is unavailable");
            }
            LoginFailure::Upstream(UpstreamError::Refused(why)) => {
                tracing::info!(error = %why, "the login provider refused to exchange a code");
            }
            LoginFailure::Upstream(UpstreamError::Token(problem)) => {
                tracing::warn!(%problem, "an ID token from the login provider failed a check");
            }
        }
    }
}

/// How the login answers the app in the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Answer {
    /// `?code=...&state=...` on the redirect URI.
    Code,
    /// `#id_token=...&state=...` on the redirect URI (implicit).
    TokenInFragment,
    /// `{"id_token": ...}` as the callback's own answer (a native app finishing it itself).
    TokenAsJson,
}

/// A login sent to the provider, waiting for the browser to come back. Kept under the state
/// and bound to the browser's login cookie (see `grants`).
#[derive(Serialize, Deserialize)]
struct PendingLogin {
    nonce: String,
    pkce_verifier: String,
    client_id: String,
    redirect_uri: String,
    redirect_uri_given: bool,
    app_state: Option<String>,
    app_code_challenge: Option<String>,
    app_nonce: Option<String>,
    answer: Answer,
}

/// A code given to an app, waiting for the platform's token call.
#[derive(Serialize, Deserialize)]
pub struct IssuedCode {
    pub client_id: String,
    pub redirect_uri: String,
    /// Whether the login named the redirect URI (then the token call must name it too).
    pub redirect_uri_given: bool,
    /// PKCE S256 challenge the app sent, if any.
    pub code_challenge: Option<String>,
    pub nonce: Option<String>,
    pub subject: String,
    pub profile: Map<String, Value>,
}

/// Whether `text` is a PKCE S256 challenge or verifier: 43 to 128 characters of the unreserved
/// set (RFC 7636 §4.1, §4.2).
pub fn is_pkce_text(text: &str) -> bool {
    (43..=128).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// Free text an app may hand through (state, nonce): bounded, printable.
fn is_app_text(text: &str) -> bool {
    !text.is_empty() && text.len() <= 512 && !text.chars().any(char::is_control)
}

pub async fn login(
    State(s): State<IdentityService>,
    peer: Option<axum::Extension<Peer>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let bad = |message: &str| PageRefusal::Malformed(message.to_string()).answer(&headers);
    let live = s.live();
    let Some(upstream) = live.upstream.clone() else {
        return PageRefusal::NotConfigured.answer(&headers);
    };
    // Each login keeps a record until it ends: bounded per source.
    if let Some(axum::Extension(peer)) = &peer {
        let ip = peer.client;
        if let Some(wait) = s
            .inner
            .logins
            .blocked(ip, "login", upstream.logins_per_minute())
        {
            s.inner.metrics.login("throttled");
            return PageRefusal::TooManyLogins { retry_after: wait }.answer(&headers);
        }
        s.inner.logins.count(ip, "login");
    }
    let p = match params(query.as_deref().unwrap_or("")) {
        Ok(p) => p,
        Err(e) => return bad(&e.to_string()),
    };
    let get = |k: &str| p.get(k).map(String::as_str);
    let Some(client) = live.callers.client_for_login(get("client_id")) else {
        return bad(match get("client_id") {
            Some(_) => "unknown client_id",
            None => "client_id is required (several clients are configured)",
        });
    };
    let named = get("redirect_uri").or(get("return_to"));
    let redirect_uri = match named {
        Some(uri) if client.allows_redirect(uri) => uri.to_string(),
        Some(_) => return bad("redirect_uri is not registered for this client"),
        None if client.redirect_uris.len() == 1 => client.redirect_uris[0].clone(),
        None => return bad("redirect_uri is required (the client has several)"),
    };
    let answer = match (get("response_type").unwrap_or("code"), get("response_mode")) {
        ("code", None | Some("query")) => Answer::Code,
        ("id_token", _) if !client.implicit => {
            return bad("this client may not receive tokens directly (implicit is off)");
        }
        ("id_token", None | Some("fragment")) => Answer::TokenInFragment,
        ("id_token", Some("json")) => Answer::TokenAsJson,
        ("code" | "id_token", Some(_)) => return bad("unsupported response_mode"),
        _ => return bad("unsupported response_type: use code or id_token"),
    };
    let app_code_challenge = match (get("code_challenge"), get("code_challenge_method")) {
        (None, None) => None,
        (Some(c), Some("S256")) if is_pkce_text(c) => Some(c.to_string()),
        (Some(_), Some("S256")) => return bad("code_challenge is not a S256 challenge"),
        (Some(_), _) => return bad("code_challenge_method must be S256"),
        (None, Some(_)) => return bad("code_challenge_method without code_challenge"),
    };
    for key in ["state", "nonce"] {
        if get(key).is_some_and(|v| !is_app_text(v)) {
            return bad(&format!("{key} must be 1 to 512 printable characters"));
        }
    }
    // A token handed over directly must carry the app's nonce, or a token leaked from one
    // session could be replayed into another (OpenID Connect Core §3.2.2.1).
    if answer != Answer::Code && get("nonce").is_none() {
        return bad("nonce is required for response_type=id_token");
    }

    // The browser's login cookie: kept if it has one, so several logins in one browser do not
    // spoil each other.
    let browser = match cookie(&headers, LOGIN_COOKIE).filter(|v| Grants::is_handle(v)) {
        Some(v) => v.to_string(),
        None => match Grants::new_handle() {
            Ok(v) => v,
            Err(e) => return s.unavailable("cannot make a login cookie", e),
        },
    };
    let state = match Grants::new_handle() {
        Ok(v) => v,
        Err(e) => return s.unavailable("cannot make a login state", e),
    };
    let start = match upstream.begin(&state).await {
        Ok(start) => start,
        Err(e) => {
            let to = AppReturn {
                redirect_uri: &redirect_uri,
                state: get("state"),
                answer,
            };
            return answer_error(&to, &headers, LoginFailure::Upstream(e));
        }
    };
    let pending = PendingLogin {
        nonce: start.nonce,
        pkce_verifier: start.pkce_verifier,
        client_id: client.id.clone(),
        redirect_uri,
        redirect_uri_given: named.is_some(),
        app_state: get("state").map(str::to_string),
        app_code_challenge,
        app_nonce: get("nonce").map(str::to_string),
        answer,
    };
    let lifetime = upstream.login_timeout();
    if let Err(e) = s
        .inner
        .grants
        .put(GrantKind::Login, &state, &browser, &pending, lifetime)
        .await
    {
        return s.unavailable("cannot keep a pending login", e);
    }
    s.inner.metrics.login("started");
    let mut response = redirect(&start.url);
    if let Some(c) = login_cookie(&browser, lifetime.as_secs()) {
        response.headers_mut().insert(header::SET_COOKIE, c);
    }
    response
}

pub async fn callback(
    State(s): State<IdentityService>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let bad = |message: &str| PageRefusal::Malformed(message.to_string()).answer(&headers);
    let live = s.live();
    let Some(upstream) = live.upstream.clone() else {
        return PageRefusal::NotConfigured.answer(&headers);
    };
    let p = match params(query.as_deref().unwrap_or("")) {
        Ok(p) => p,
        Err(e) => return bad(&e.to_string()),
    };
    let get = |k: &str| p.get(k).map(String::as_str);
    let Some(state) = get("state") else {
        s.inner.metrics.login("refused");
        return bad("the login's state is missing");
    };
    // Found only with the cookie of the browser that started the login: a state seen
    // elsewhere (in a log, a history, a link sent to someone) can neither finish nor spend it.
    let browser = cookie(&headers, LOGIN_COOKIE).unwrap_or("");
    let pending: PendingLogin = match s.inner.grants.take(GrantKind::Login, state, browser).await {
        Ok(Some(p)) => p,
        Ok(None) => {
            s.inner.metrics.login("refused");
            tracing::info!(
                cookie = !browser.is_empty(),
                "a login came back with an unknown, expired or used state, or in another browser"
            );
            return bad(
                "this login is unknown, expired, already finished, or was started in another browser: please start again",
            );
        }
        Err(e) => return s.unavailable("cannot read a pending login", e),
    };
    let app_state = pending.app_state.as_deref();

    // The provider said no (the consumer cancelled, or the provider refused the request): the
    // app hears it the OAuth way (RFC 6749 §4.1.2.1).
    if let Some(error) = get("error") {
        s.inner.metrics.login("denied");
        let known = [
            "access_denied",
            "login_required",
            "consent_required",
            "interaction_required",
            "temporarily_unavailable",
        ];
        let error = known
            .into_iter()
            .find(|k| *k == error)
            .unwrap_or("server_error");
        let failure = LoginFailure::EndedByProvider(error);
        return answer_error(&pending.app_return(), &headers, failure);
    }
    let Some(code) = get("code") else {
        return bad("the provider's answer has no code");
    };

    let identity = match upstream
        .finish(code, &pending.pkce_verifier, &pending.nonce)
        .await
    {
        Ok(identity) => identity,
        Err(e) => {
            s.inner.metrics.login("failed");
            return answer_error(&pending.app_return(), &headers, LoginFailure::Upstream(e));
        }
    };
    let subject = live.mapper.subject(&identity.issuer, &identity.subject);
    let profile = live.mapper.profile(&identity.claims);
    // Refused here, not when the platform exchanges the code: a login whose identity can
    // never be a token brandgate or the platform accepts (see `mint`) is told so at once.
    let claims = s.consumer_claims(subject.clone(), profile.clone(), pending.app_nonce.clone());
    if let Err(e) = s.inner.mint.check_fit(&claims).await {
        let Some(reason) = e.refusal() else {
            return s.unavailable("cannot prepare a consumer token", e);
        };
        s.inner.metrics.login("refused");
        let failure = LoginFailure::Unfit(reason.to_string());
        return answer_error(&pending.app_return(), &headers, failure);
    }
    s.inner.metrics.login("completed");

    match pending.answer {
        Answer::Code => {
            let code = match Grants::new_handle() {
                Ok(c) => c,
                Err(e) => return s.unavailable("cannot make a code", e),
            };
            let issued = IssuedCode {
                client_id: pending.client_id.clone(),
                redirect_uri: pending.redirect_uri.clone(),
                redirect_uri_given: pending.redirect_uri_given,
                code_challenge: pending.app_code_challenge.clone(),
                nonce: pending.app_nonce.clone(),
                subject,
                profile,
            };
            if let Err(e) = s
                .inner
                .grants
                .put(
                    GrantKind::Code,
                    &code,
                    "",
                    &issued,
                    s.inner.config.code_lifetime.0,
                )
                .await
            {
                return s.unavailable("cannot keep a code", e);
            }
            let mut pairs = vec![("code", code.as_str())];
            if let Some(st) = app_state {
                pairs.push(("state", st));
            }
            redirect(&with_params(&pending.redirect_uri, &pairs, false))
        }
        Answer::TokenInFragment | Answer::TokenAsJson => {
            let minted = match s.mint(&claims).await {
                Ok(m) => m,
                Err(e) => return s.unavailable("cannot mint a consumer token", e),
            };
            s.inner.metrics.token("implicit", "issued");
            let expires_in = s.inner.config.token_lifetime.0.as_secs().to_string();
            if pending.answer == Answer::TokenAsJson {
                let mut body = json!({
                    "id_token": minted.jwt,
                    "token_type": "Bearer",
                    "expires_in": s.inner.config.token_lifetime.0.as_secs(),
                });
                if let Some(st) = app_state {
                    body["state"] = Value::from(st);
                }
                return crate::http_answer::no_store(axum::Json(body).into_response());
            }
            let mut pairs = vec![
                ("id_token", minted.jwt.as_str()),
                ("token_type", "Bearer"),
                ("expires_in", expires_in.as_str()),
            ];
            if let Some(st) = app_state {
                pairs.push(("state", st));
            }
            redirect(&with_params(&pending.redirect_uri, &pairs, true))
        }
    }
}

/// Tells the app a login did not succeed, where it expects to hear about the login (RFC 6749
/// §4.1.2.1): on its redirect URI for redirects, as the answer itself for JSON.
fn answer_error(to: &AppReturn<'_>, headers: &HeaderMap, failure: LoginFailure) -> Response {
    failure.log();
    let description = failure.description();
    let mut pairs = vec![
        ("error", failure.error_code()),
        ("error_description", description.as_str()),
    ];
    if let Some(st) = to.state {
        pairs.push(("state", st));
    }
    match to.answer {
        Answer::Code => redirect(&with_params(to.redirect_uri, &pairs, false)),
        Answer::TokenInFragment => redirect(&with_params(to.redirect_uri, &pairs, true)),
        Answer::TokenAsJson => page_error(headers, failure.status(), &description),
    }
}

/// Where and how a login answers the app (its redirect URI has been checked).
struct AppReturn<'a> {
    redirect_uri: &'a str,
    state: Option<&'a str>,
    answer: Answer,
}

impl PendingLogin {
    fn app_return(&self) -> AppReturn<'_> {
        AppReturn {
            redirect_uri: &self.redirect_uri,
            state: self.app_state.as_deref(),
            answer: self.answer,
        }
    }
}
