//! The relay over plain HTTPS: `GET /api/v1/conversations/{id}/events?fromSeq=&limit=`, a
//! conversation's stored events for the consumer who owns it (its identity token as
//! `Authorization: jwt <token>` or `Bearer`). Anyone else gets `404`, as for a conversation that
//! does not exist.

use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use serde_json::json;

use super::RelayService;
use super::conversations::{Participant, RelayError};

/// Most events in one answer.
const MAX_LIMIT: i64 = 1000;

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({ "error": message }))).into_response()
}

pub async fn events(
    State(relay): State<RelayService>,
    Path(conversation): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let Some(token) = super::consumer::header_token(&headers) else {
        return error(
            StatusCode::UNAUTHORIZED,
            "send the consumer's identity token: Authorization: jwt <token>",
        );
    };
    let consumer = match relay.inner.identity.verify_consumer(token).await {
        Ok(c) => c,
        Err(e) => {
            return error(
                StatusCode::UNAUTHORIZED,
                &format!("the token is not accepted: {e}"),
            );
        }
    };
    let mut from_seq = 0;
    let mut limit = 100;
    for (k, v) in form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()) {
        let number = || v.parse::<i64>().ok();
        match k.as_ref() {
            "fromSeq" => match number() {
                Some(n) if n >= 0 => from_seq = n,
                _ => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        "fromSeq must be a sequence (0 or more)",
                    );
                }
            },
            "limit" => match number() {
                Some(n) if (1..=MAX_LIMIT).contains(&n) => limit = n,
                _ => return error(StatusCode::BAD_REQUEST, "limit must be between 1 and 1000"),
            },
            _ => return error(StatusCode::BAD_REQUEST, &format!("unknown parameter {k}")),
        }
    }
    let who = Participant::Consumer(consumer.subject);
    match relay
        .inner
        .conversations
        .history(&who, &conversation, from_seq, limit)
        .await
    {
        Ok(changes) => {
            let mut response = axum::Json(json!({
                "conversationId": conversation,
                "events": changes.iter().map(|c| c.to_json()).collect::<Vec<_>>(),
            }))
            .into_response();
            response.headers_mut().insert(
                http::header::CACHE_CONTROL,
                http::HeaderValue::from_static("no-store"),
            );
            response
        }
        Err(RelayError::NotFound) => error(StatusCode::NOT_FOUND, "no such conversation"),
        Err(e) => {
            tracing::error!(error = %e, "cannot read a conversation's history");
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the service cannot answer right now",
            )
        }
    }
}
