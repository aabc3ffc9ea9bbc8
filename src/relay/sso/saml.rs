//! Agents' sign-in with SAML 2.0, brandgate being the service provider:
//! - `GET /api/account/{account}/sso/saml` keeps a pending sign-in under a fresh 256-bit
//!   handle, tied to the browser's SAML cookie (`SameSite=None`: the answer is a cross-site
//!   POST), and sends the browser to the provider with an AuthnRequest whose ID is `_<handle>`;
//! - `POST /api/account/{account}/sso/saml/acs` takes the provider's answer (a few checked at
//!   a time, bounded per source): every check of `saml::response` (signature with the pinned
//!   certificates, then only signed content read), `InResponseTo` matched to the pending
//!   sign-in of this browser, once (answers sent unasked only with `allow_idp_initiated`),
//!   then the assertion recorded as used until it expires (in the store: a replay fails on
//!   any node). An answer refused before that spends nothing;
//! - `GET /api/account/{account}/sso/saml/metadata` publishes brandgate's SP metadata.
//!
//! Never logs or audits an assertion; a refusal names the check that failed.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use http::{HeaderMap, StatusCode, header};

use super::{admit_start, browser_and_handle, refused, signed_in, status_of};
use crate::client_address::ClientIp;
use crate::http_auth::cookie;
use crate::identity::pages::redirect;
use crate::identity::{GrantKind, Grants};
use crate::relay::accounts::SsoIdentity;
use crate::relay::service::RelayService;

use crate::relay::saml::{IdpMetadata, SamlProvider, Unavailable, metadata, request, response};

/// The browser's binding to its pending SAML sign-ins. `SameSite=None`: the provider's answer
/// arrives as a cross-site POST, which would not carry a `Lax` cookie.
pub const SAML_COOKIE: &str = "__Host-brandgate-saml";
/// Largest ACS form read.
pub const MAX_ACS_BYTES: usize = 256 * 1024;

const NOT_CONFIGURED: &str = "single sign-on with SAML is not configured for this account";

/// `GET /api/account/{account}/sso/saml`.
pub async fn start(
    State(relay): State<RelayService>,
    Path(account): Path<String>,
    ClientIp(source): ClientIp,
    headers: HeaderMap,
) -> Response {
    let refuse = |status, code, reason: &str| refused(&relay, &headers, status, code, reason);
    let Some((saml, grants)) = provider(&relay, &account) else {
        return refuse(StatusCode::NOT_FOUND, "not_configured", NOT_CONFIGURED);
    };
    if let Err(refusal) = admit_start(
        &relay,
        &headers,
        source,
        "agent-saml",
        saml.config.logins_per_minute,
    )
    .await
    {
        return refusal;
    }
    let idp = match saml.metadata().await {
        Ok(m) => m,
        Err(e) => return provider_unavailable(&relay, &headers, &e),
    };
    let (browser, handle) = match browser_and_handle(&headers, SAML_COOKIE) {
        Ok(both) => both,
        Err(e) => return super::unavailable(&relay, &headers, "cannot make a sign-in handle", e),
    };
    let now = relay.inner.clock.now();
    let url = match request::redirect_url(
        &idp.sso_url,
        &format!("_{handle}"),
        &saml.sp_entity_id,
        &saml.acs_url,
        now,
    ) {
        Ok(url) => url,
        Err(e) => return super::unavailable(&relay, &headers, "cannot build an AuthnRequest", e),
    };
    let lifetime = saml.config.login_timeout.0;
    if let Err(e) = grants
        .put(
            GrantKind::AgentSaml,
            &handle,
            &browser,
            &idp.entity_id,
            lifetime,
        )
        .await
    {
        return super::unavailable(&relay, &headers, "cannot keep a pending sign-in", e);
    }
    if let Err(e) = grants.delete_expired().await {
        tracing::warn!(error = %e, "cannot remove expired pending sign-ins");
    }
    let mut response = redirect(&url);
    if let Some(c) =
        crate::identity::pages::binding_cookie(SAML_COOKIE, &browser, lifetime.as_secs(), "None")
    {
        response.headers_mut().insert(header::SET_COOKIE, c);
    }
    response
}

/// `POST /api/account/{account}/sso/saml/acs` (HTTP-POST binding).
pub async fn acs(
    State(relay): State<RelayService>,
    Path(account): Path<String>,
    ClientIp(source): ClientIp,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let refuse = |status, code, reason: &str| refused(&relay, &headers, status, code, reason);
    let Some((saml, grants)) = provider(&relay, &account) else {
        return refuse(StatusCode::NOT_FOUND, "not_configured", NOT_CONFIGURED);
    };
    // Each answer costs a signature check: bounded per source, like the starts.
    if let Err(refusal) = super::admit_start(
        &relay,
        &headers,
        source,
        "agent-saml-acs",
        saml.config.logins_per_minute,
    )
    .await
    {
        return refusal;
    }
    let encoded = match saml_response_field(&body) {
        Ok(e) => e,
        Err(why) => return refuse(StatusCode::BAD_REQUEST, "bad_request", why),
    };
    let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(&encoded) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "SAMLResponse is not base64",
        );
    };
    let idp = match saml.metadata().await {
        Ok(m) => m,
        Err(e) => return provider_unavailable(&relay, &headers, &e),
    };
    let via = format!("saml {}", idp.entity_id);
    let vouched = match check_answer(&relay, &headers, source, &saml, &idp, decoded).await {
        Ok(v) => v,
        Err(refusal) => return refusal,
    };
    let subject = saml.config.subject_attribute.as_str();
    let subject_value = match vouched.value(subject) {
        Some(_) if subject == "NameID" && vouched.transient => None,
        found => found,
    };
    let Some(subject_value) = subject_value else {
        let check = "subject: no lasting name for the agent (a transient NameID, or not exactly one value of subject_attribute)";
        return invalid(&relay, &headers, source, &via, check).await;
    };
    // The request this answers, once, from this browser; then the assertion, once.
    let replay_key = format!("{}\n{}", idp.entity_id, vouched.assertion_id);
    match &vouched.in_response_to {
        Some(id) => {
            let browser = cookie(&headers, SAML_COOKIE).unwrap_or("");
            let handle = id.strip_prefix('_').unwrap_or("");
            let asked: Option<String> =
                match grants.take(GrantKind::AgentSaml, handle, browser).await {
                    Ok(found) => found,
                    Err(e) => {
                        return super::unavailable(
                            &relay,
                            &headers,
                            "cannot read a pending sign-in",
                            e,
                        );
                    }
                };
            if asked.as_deref() != Some(idp.entity_id.as_str()) {
                if let Ok(true) = grants.is_used(GrantKind::SamlAssertion, &replay_key).await {
                    return invalid(&relay, &headers, source, &via, REPLAY).await;
                }
                tracing::info!(
                    cookie = !browser.is_empty(),
                    "a SAML answer came for a request that is unknown, expired, used, or from another browser"
                );
                return refuse(
                    StatusCode::BAD_REQUEST,
                    "sign_in_unknown",
                    "this sign-in is unknown, expired, already finished, or was started in another browser: please start again",
                );
            }
        }
        None if saml.config.allow_idp_initiated => {}
        None => {
            let check = "unsolicited: the answer is for no request of ours, and IdP-initiated sign-in is off";
            return invalid(&relay, &headers, source, &via, check).await;
        }
    }
    match grants
        .first_use(GrantKind::SamlAssertion, &replay_key, vouched.usable_until)
        .await
    {
        Ok(true) => {}
        Ok(false) => return invalid(&relay, &headers, source, &via, REPLAY).await,
        Err(e) => return super::unavailable(&relay, &headers, "cannot record a used assertion", e),
    }
    let identity = SsoIdentity {
        // The NameID quoted (escaped): it goes in the log and the audit as it came.
        via: format!("{via} {:?}", vouched.name_id),
        subject: format!("saml {} {subject_value}", idp.entity_id),
        username: vouched
            .value(&saml.config.username_attribute)
            .map(str::to_string),
        groups: vouched
            .values(&saml.config.groups_attribute)
            .into_iter()
            .map(str::to_string)
            .collect(),
    };
    match relay.inner.accounts.sso_login(&identity, source).await {
        Ok(session) => signed_in(&relay, session),
        Err(e) => refuse(status_of(&e), e.outcome(), &e.to_string()),
    }
}

const REPLAY: &str = "replay: this assertion was used before";

/// Every check of the answer ([`response::check`]), on a blocking thread, a few at a time.
async fn check_answer(
    relay: &RelayService,
    headers: &HeaderMap,
    source: Option<std::net::IpAddr>,
    saml: &Arc<SamlProvider>,
    idp: &Arc<IdpMetadata>,
    decoded: Vec<u8>,
) -> Result<response::Vouched, Response> {
    let via = format!("saml {}", idp.entity_id);
    let Ok(_permit) = tokio::time::timeout(CHECK_WAIT, saml.checks.acquire()).await else {
        return Err(refused(
            relay,
            headers,
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "too many sign-ins are being checked; please try again",
        ));
    };
    let checked = {
        let (saml, idp) = (saml.clone(), idp.clone());
        let now = relay.inner.clock.now();
        tokio::task::spawn_blocking(move || {
            let expected = response::Expected {
                idp_entity_id: &idp.entity_id,
                sp_entity_id: &saml.sp_entity_id,
                acs_url: &saml.acs_url,
                certificates: &idp.certificates,
                allow_sha1: saml.config.allow_sha1,
                now,
                leeway: saml.leeway,
            };
            response::check(&decoded, &expected)
        })
        .await
    };
    match checked {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(refusal)) if refusal.is_status() => {
            tracing::info!(via, %refusal, "the identity provider ended an agent's sign-in without success");
            Err(refused(
                relay,
                headers,
                StatusCode::FORBIDDEN,
                "provider_ended",
                &format!("the identity provider did not complete the sign-in ({refusal})"),
            ))
        }
        Ok(Err(refusal)) => Err(invalid(relay, headers, source, &via, &refusal.to_string()).await),
        Err(e) => Err(super::unavailable(
            relay,
            headers,
            "a SAML check did not finish",
            e,
        )),
    }
}

/// How long an answer waits for a free check before it is turned away.
const CHECK_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// `GET /api/account/{account}/sso/saml/metadata`.
pub async fn metadata(State(relay): State<RelayService>, Path(account): Path<String>) -> Response {
    let Some((saml, _)) = provider(&relay, &account) else {
        return crate::identity::pages::page_error(
            &HeaderMap::new(),
            StatusCode::NOT_FOUND,
            NOT_CONFIGURED,
        );
    };
    let body = metadata::service_provider(&saml.sp_entity_id, &saml.acs_url);
    (
        [(header::CONTENT_TYPE, "application/samlmetadata+xml")],
        body,
    )
        .into_response()
}

/// The form's one `SAMLResponse`, with whitespace (line breaks some providers add) removed.
fn saml_response_field(body: &[u8]) -> Result<String, &'static str> {
    let mut found = None;
    for (key, value) in form_urlencoded::parse(body) {
        if key == "SAMLResponse" {
            if found.is_some() {
                return Err("SAMLResponse is repeated");
            }
            found = Some(
                value
                    .chars()
                    .filter(|c| !c.is_ascii_whitespace())
                    .collect::<String>(),
            );
        }
    }
    found
        .filter(|v| !v.is_empty())
        .ok_or("the form has no SAMLResponse")
}

/// An answer that failed a check: audited, logged with the check, refused.
async fn invalid(
    relay: &RelayService,
    headers: &HeaderMap,
    source: Option<std::net::IpAddr>,
    via: &str,
    check: &str,
) -> Response {
    relay
        .inner
        .accounts
        .audit_sso_failure("sso_invalid_response", source, via)
        .await;
    tracing::warn!(
        check,
        via,
        "a SAML answer for an agent's sign-in failed a check"
    );
    refused(
        relay,
        headers,
        StatusCode::BAD_REQUEST,
        "sso_invalid_response",
        &format!("the identity provider's answer failed a check ({check}); please start again"),
    )
}

fn provider_unavailable(relay: &RelayService, headers: &HeaderMap, e: &Unavailable) -> Response {
    tracing::warn!(error = %e, "the agents' SAML provider is unavailable");
    refused(
        relay,
        headers,
        StatusCode::BAD_GATEWAY,
        "provider_unavailable",
        "the identity provider cannot be reached right now; please try again",
    )
}

/// The account's SAML provider and the pending sign-ins, when `account` is the relay's and
/// it has one.
fn provider<'r>(relay: &'r RelayService, account: &str) -> Option<(Arc<SamlProvider>, &'r Grants)> {
    if account != relay.inner.config.account {
        return None;
    }
    let sso = relay.inner.sso.as_ref()?;
    Some((sso.saml.clone()?, &sso.grants))
}
