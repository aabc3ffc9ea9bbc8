//! The relay over plain HTTPS:
//! - `GET /api/v1/conversations/{id}/events?fromSeq=&limit=`: a conversation's stored events,
//!   for the consumer who owns it (its identity token as `Authorization: jwt <token>` or
//!   `Bearer`) and the agent who took it (its session as `Authorization: Bearer <bearer>`).
//!   Anyone else gets `404`, as for a conversation that does not exist.
//! - `GET /api/v1/conversations`: an agent's conversations (taken by it, newest first).

use std::net::IpAddr;

use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::HeaderMap;
use serde_json::json;

use super::accounts::AgentAuthError;
use super::refusal::HttpRefusal;
use super::service::RelayService;
use super::vocabulary::{Participant, RelayError};
use crate::client_address::ClientIp;
use crate::http_answer::no_store;
use crate::identity::VerifyError;
use crate::ids::ConversationId;

/// Most events in one answer.
const MAX_LIMIT: i64 = 1000;

pub async fn events(
    State(relay): State<RelayService>,
    Path(conversation): Path<ConversationId>,
    RawQuery(query): RawQuery,
    ClientIp(source): ClientIp,
    headers: HeaderMap,
) -> Result<Response, HttpRefusal> {
    let who = caller(&relay, &headers, source).await?;
    let mut from_seq = 0;
    let mut limit = 100;
    for (k, v) in form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        let number = || v.parse::<i64>().ok();
        match k.as_ref() {
            "fromSeq" => match number() {
                Some(n) if n >= 0 => from_seq = n,
                _ => return Err(bad("fromSeq must be a sequence (0 or more)")),
            },
            "limit" => match number() {
                Some(n) if (1..=MAX_LIMIT).contains(&n) => limit = n,
                _ => return Err(bad("limit must be between 1 and 1000")),
            },
            _ => return Err(HttpRefusal::BadRequest(format!("unknown parameter {k}"))),
        }
    }
    let changes = relay
        .inner
        .conversations
        .history(&who, &conversation, from_seq, limit)
        .await
        .map_err(|e| refused(e, "cannot read a conversation's history"))?;
    Ok(no_store(
        axum::Json(json!({
            "conversationId": conversation,
            "events": changes.iter().map(|c| c.to_json()).collect::<Vec<_>>(),
        }))
        .into_response(),
    ))
}

/// `GET /api/v1/conversations`: the calling agent's conversations.
pub async fn list(
    State(relay): State<RelayService>,
    ClientIp(source): ClientIp,
    headers: HeaderMap,
) -> Result<Response, HttpRefusal> {
    let who = agent_caller(
        &relay,
        &headers,
        source,
        "the conversation list is for agents; a consumer subscribes to its own",
    )
    .await?;
    let rows = relay
        .inner
        .conversations
        .list_for(&who)
        .await
        .map_err(|e| refused(e, "cannot list an agent's conversations"))?;
    let list: Vec<_> = rows
        .iter()
        .map(|c| {
            json!({
                "conversationId": c.id,
                "consumerId": c.consumer_id,
                "state": if c.open { "OPEN" } else { "CLOSE" },
                "skillId": c.skill,
                "startTs": c.created_at,
                "endTs": c.closed_at,
                "lastSequence": c.last_seq,
            })
        })
        .collect();
    Ok(no_store(
        axum::Json(json!({ "conversations": list })).into_response(),
    ))
}

/// Who calls: a consumer by its identity token (a JWT: `Authorization: jwt <token>` or
/// `Bearer <token>`), or an agent by its session (`Authorization: Bearer <bearer>`; a bearer
/// is not a JWT, so the two never mix), or, from the browser workspace, by the session cookie
/// with the session's `X-CSRF-Token`.
pub(super) async fn caller(
    relay: &RelayService,
    headers: &HeaderMap,
    source: Option<IpAddr>,
) -> Result<Participant, HttpRefusal> {
    if !headers.contains_key(http::header::AUTHORIZATION)
        && crate::http_auth::cookie(headers, super::login::SESSION_COOKIE).is_some()
    {
        let (_, live) = super::login::authenticated(relay, headers, source).await?;
        return Ok(Participant::Agent(live.principal.agent_id));
    }
    let token = super::consumer::header_token(headers).ok_or(HttpRefusal::NoCredential)?;
    if token.contains('.') {
        match relay.inner.identity.verify_consumer(token).await {
            Ok(c) => Ok(Participant::Consumer(c.subject)),
            Err(VerifyError::Unavailable) => Err(HttpRefusal::TokensUnavailable),
            Err(e) => Err(HttpRefusal::TokenRefused(e)),
        }
    } else {
        match relay.inner.accounts.authenticate(token, source).await {
            Ok(agent) => Ok(Participant::Agent(agent.agent_id)),
            Err(AgentAuthError::Unavailable(_)) => Err(HttpRefusal::SessionsUnavailable),
            Err(AgentAuthError::OutsideNetworks) => Err(HttpRefusal::OutsideNetworks),
            Err(_) => Err(HttpRefusal::SessionNotValid),
        }
    }
}

/// The agent calling; a consumer is refused with `why`.
async fn agent_caller(
    relay: &RelayService,
    headers: &HeaderMap,
    source: Option<IpAddr>,
    why: &'static str,
) -> Result<Participant, HttpRefusal> {
    match caller(relay, headers, source).await? {
        who @ Participant::Agent(_) => Ok(who),
        Participant::Consumer(_) => Err(HttpRefusal::WrongRole(why)),
    }
}

/// `GET /api/v1/conversations/{id}/consumer`: who the conversation's consumer is, for the
/// agent holding it. `{"consumerId", "authenticated", "claims": {...}}`; a consumer whose
/// profile was never recorded shows as not authenticated with no claims. Only the agent holding
/// the conversation gets it (the same `404` as for a conversation that does not exist
/// otherwise).
pub async fn consumer_profile(
    State(relay): State<RelayService>,
    Path(conversation): Path<ConversationId>,
    ClientIp(source): ClientIp,
    headers: HeaderMap,
) -> Result<Response, HttpRefusal> {
    let who = agent_caller(
        &relay,
        &headers,
        source,
        "this is for the conversation's agent",
    )
    .await?;
    let row = relay
        .inner
        .conversations
        .get(&who, &conversation)
        .await
        .map_err(|e| refused(e, "cannot read a consumer's profile"))?;
    let profile = relay
        .inner
        .profiles
        .get(&row.consumer_id)
        .await
        .map_err(|e| refused(e, "cannot read a consumer's profile"))?
        .unwrap_or_else(|| json!({"authenticated": false, "claims": {}}));
    Ok(no_store(
        axum::Json(json!({
            "consumerId": row.consumer_id,
            "authenticated": profile["authenticated"],
            "claims": profile["claims"],
        }))
        .into_response(),
    ))
}

fn bad(why: &str) -> HttpRefusal {
    HttpRefusal::BadRequest(why.to_string())
}

/// A relay error as an HTTPS refusal: `404` for a conversation that is not there (or not the
/// caller's); anything else is brandgate's own trouble, logged as `what`.
fn refused(e: RelayError, what: &str) -> HttpRefusal {
    match e {
        RelayError::NotFound => HttpRefusal::no_conversation(),
        other => HttpRefusal::unavailable(what, other),
    }
}
