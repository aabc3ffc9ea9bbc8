//! The relay over plain HTTPS:
//! - `GET /api/v1/conversations/{id}/events?fromSeq=&limit=`: a conversation's stored events,
//!   for the consumer who owns it (its identity token as `Authorization: jwt <token>` or
//!   `Bearer`) and the agent who took it (its session as `Authorization: Bearer <bearer>`).
//!   Anyone else gets `404`, as for a conversation that does not exist.
//! - `GET /api/v1/conversations`: an agent's conversations (taken by it, newest first).

use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use serde_json::json;

use super::accounts::AgentAuthError;
use super::service::RelayService;
use super::vocabulary::{Participant, RelayError};
use crate::http_answer::{json_error, no_store};
use crate::identity::VerifyError;

/// Most events in one answer.
const MAX_LIMIT: i64 = 1000;

pub async fn events(
    State(relay): State<RelayService>,
    Path(conversation): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let who = match caller(&relay, &headers).await {
        Ok(who) => who,
        Err(response) => return response,
    };
    let mut from_seq = 0;
    let mut limit = 100;
    for (k, v) in form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        let number = || v.parse::<i64>().ok();
        match k.as_ref() {
            "fromSeq" => match number() {
                Some(n) if n >= 0 => from_seq = n,
                _ => {
                    return json_error(
                        StatusCode::BAD_REQUEST,
                        "fromSeq must be a sequence (0 or more)",
                    );
                }
            },
            "limit" => match number() {
                Some(n) if (1..=MAX_LIMIT).contains(&n) => limit = n,
                _ => {
                    return json_error(StatusCode::BAD_REQUEST, "limit must be between 1 and 1000");
                }
            },
            _ => return json_error(StatusCode::BAD_REQUEST, &format!("unknown parameter {k}")),
        }
    }
    match relay
        .inner
        .conversations
        .history(&who, &conversation, from_seq, limit)
        .await
    {
        Ok(changes) => no_store(
            axum::Json(json!({
                "conversationId": conversation,
                "events": changes.iter().map(|c| c.to_json()).collect::<Vec<_>>(),
            }))
            .into_response(),
        ),
        Err(RelayError::NotFound) => json_error(StatusCode::NOT_FOUND, "no such conversation"),
        Err(e) => {
            tracing::error!(error = %e, "cannot read a conversation's history");
            json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the service cannot answer right now",
            )
        }
    }
}

/// `GET /api/v1/conversations`: the calling agent's conversations.
pub async fn list(State(relay): State<RelayService>, headers: HeaderMap) -> Response {
    let who = match caller(&relay, &headers).await {
        Ok(who @ Participant::Agent(_)) => who,
        Ok(Participant::Consumer(_)) => {
            return json_error(
                StatusCode::FORBIDDEN,
                "the conversation list is for agents; a consumer subscribes to its own",
            );
        }
        Err(response) => return response,
    };
    match relay.inner.conversations.list_for(&who).await {
        Ok(rows) => {
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
            no_store(axum::Json(json!({ "conversations": list })).into_response())
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot list an agent's conversations");
            json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the service cannot answer right now",
            )
        }
    }
}

/// Who calls: a consumer by its identity token (a JWT: `Authorization: jwt <token>` or
/// `Bearer <token>`), or an agent by its session (`Authorization: Bearer <bearer>`; a bearer
/// is not a JWT, so the two never mix), or, from the browser workspace, by the session cookie
/// with the session's `X-CSRF-Token`.
pub(super) async fn caller(
    relay: &RelayService,
    headers: &HeaderMap,
) -> Result<Participant, Response> {
    if !headers.contains_key(http::header::AUTHORIZATION)
        && crate::http_auth::cookie(headers, super::login::SESSION_COOKIE).is_some()
    {
        let (_, live) = super::login::authenticated(relay, headers).await?;
        return Ok(Participant::Agent(live.principal.agent_id));
    }
    let Some(token) = super::consumer::header_token(headers) else {
        return Err(json_error(
            StatusCode::UNAUTHORIZED,
            "send a consumer's identity token (Authorization: jwt <token>) or an agent's session (Authorization: Bearer <bearer>)",
        ));
    };
    if token.contains('.') {
        match relay.inner.identity.verify_consumer(token).await {
            Ok(c) => Ok(Participant::Consumer(c.subject)),
            Err(VerifyError::Unavailable) => Err(json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "tokens cannot be checked right now",
            )),
            Err(e) => Err(json_error(
                StatusCode::UNAUTHORIZED,
                &format!("the token is not accepted: {e}"),
            )),
        }
    } else {
        match relay.inner.accounts.authenticate(token).await {
            Ok(agent) => Ok(Participant::Agent(agent.agent_id)),
            Err(AgentAuthError::Unavailable(_)) => Err(json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "sessions cannot be checked right now",
            )),
            Err(_) => Err(json_error(
                StatusCode::UNAUTHORIZED,
                "the session is not valid; log in",
            )),
        }
    }
}

/// `GET /api/v1/conversations/{id}/consumer`: who the conversation's consumer is, for the
/// agent holding it. `{"consumerId", "authenticated", "claims": {...}}`; a consumer whose
/// profile was never recorded shows as not authenticated with no claims. Only the agent holding
/// the conversation gets it (the same `404` as for a conversation that does not exist
/// otherwise).
pub async fn consumer_profile(
    State(relay): State<RelayService>,
    Path(conversation): Path<String>,
    headers: HeaderMap,
) -> Response {
    let who = match caller(&relay, &headers).await {
        Ok(who @ Participant::Agent(_)) => who,
        Ok(Participant::Consumer(_)) => {
            return json_error(
                StatusCode::FORBIDDEN,
                "this is for the conversation's agent",
            );
        }
        Err(response) => return response,
    };
    let row = match relay.inner.conversations.get(&who, &conversation).await {
        Ok(row) => row,
        Err(RelayError::NotFound) => {
            return json_error(StatusCode::NOT_FOUND, "no such conversation");
        }
        Err(e) => return profile_unavailable(e),
    };
    match relay.inner.profiles.get(&row.consumer_id).await {
        Ok(profile) => {
            let profile = profile.unwrap_or_else(|| json!({"authenticated": false, "claims": {}}));
            no_store(
                axum::Json(json!({
                    "consumerId": row.consumer_id,
                    "authenticated": profile["authenticated"],
                    "claims": profile["claims"],
                }))
                .into_response(),
            )
        }
        Err(e) => profile_unavailable(e),
    }
}

fn profile_unavailable(e: RelayError) -> Response {
    tracing::error!(error = %e, "cannot read a consumer's profile");
    json_error(
        StatusCode::SERVICE_UNAVAILABLE,
        "the service cannot answer right now",
    )
}
