//! Consumers' devices over HTTPS, with the consumer's identity token
//! (`Authorization: jwt <token>`):
//! - `PUT /api/v1/push-registrations/{app}` with `{"provider": "apns"|"fcm", "token": "..."}`
//!   registers (or replaces) the device of one app (`[[push.apps]]` id) → `204`;
//! - `DELETE /api/v1/push-registrations/{app}` removes it → `204` (`404` if there was none);
//! - `GET /api/v1/push-registrations` lists the apps registered (never the tokens).
//!
//! The token is sealed at rest; it is only ever read to send the consumer's away pushes.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::away::seal_context;
use super::rest::caller;
use super::service::RelayService;
use super::vocabulary::Participant;
use crate::http_answer::{is_json, json_error};
use crate::push::{DeviceToken, Provider};
use crate::store::devices::PushRegistration;

/// Largest registration body accepted.
pub const MAX_BODY: usize = 8 * 1024;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Registration {
    provider: String,
    token: String,
}

/// The consumer calling, or the answer refusing the call.
async fn consumer(relay: &RelayService, headers: &HeaderMap) -> Result<String, Response> {
    match caller(relay, headers).await? {
        Participant::Consumer(id) => Ok(id),
        Participant::Agent(_) => Err(json_error(
            StatusCode::FORBIDDEN,
            "devices are registered by consumers",
        )),
    }
}

pub async fn register(
    State(relay): State<RelayService>,
    Path(app): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let consumer = match consumer(&relay, &headers).await {
        Ok(c) => c,
        Err(response) => return response,
    };
    if !is_json(&headers) {
        return json_error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "send JSON (Content-Type: application/json)",
        );
    }
    if body.len() > MAX_BODY {
        return json_error(StatusCode::PAYLOAD_TOO_LARGE, "the body is over 8 KiB");
    }
    let registration: Registration = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                &format!("expected {{\"provider\", \"token\"}}: {e}"),
            );
        }
    };
    let provider = match registration.provider.as_str() {
        "apns" => Provider::Apns,
        "fcm" => Provider::Fcm,
        _ => return json_error(StatusCode::BAD_REQUEST, "provider must be apns or fcm"),
    };
    if let Err(why) = provider.check_token(&registration.token) {
        return json_error(StatusCode::BAD_REQUEST, &why.to_string());
    }
    if !relay.inner.away.push().serves(&app, provider) {
        return json_error(
            StatusCode::NOT_FOUND,
            &format!("no app {app:?} delivering through {}", provider.as_str()),
        );
    }
    let account = &relay.inner.config.account;
    let sealed = match relay.inner.data_keys.seal(
        &seal_context(account, &consumer, &app),
        registration.token.as_bytes(),
    ) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot seal a device token");
            return json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the service cannot answer right now",
            );
        }
    };
    let row = PushRegistration {
        account: account.clone(),
        consumer_id: consumer,
        app,
        provider: provider.as_str().to_string(),
        token_sealed: sealed,
        token_hash: DeviceToken::new(registration.token).sha256_hex(),
        updated_at: crate::clock::unix_millis(relay.inner.clock.now()),
    };
    match relay.inner.store.put_push_registration(&row).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot store a push registration");
            json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the service cannot answer right now",
            )
        }
    }
}

pub async fn unregister(
    State(relay): State<RelayService>,
    Path(app): Path<String>,
    headers: HeaderMap,
) -> Response {
    let consumer = match consumer(&relay, &headers).await {
        Ok(c) => c,
        Err(response) => return response,
    };
    match relay
        .inner
        .store
        .delete_push_registration(&relay.inner.config.account, &consumer, &app, None)
        .await
    {
        Ok(true) => StatusCode::NO_CONTENT.into_response(),
        Ok(false) => json_error(StatusCode::NOT_FOUND, "no device registered for this app"),
        Err(e) => {
            tracing::error!(error = %e, "cannot remove a push registration");
            json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the service cannot answer right now",
            )
        }
    }
}

pub async fn list(State(relay): State<RelayService>, headers: HeaderMap) -> Response {
    let consumer = match consumer(&relay, &headers).await {
        Ok(c) => c,
        Err(response) => return response,
    };
    match relay
        .inner
        .store
        .list_push_registrations(&relay.inner.config.account, &consumer)
        .await
    {
        Ok(rows) => axum::Json(json!({
            "registrations": rows.iter().map(|r| json!({
                "app": r.app, "provider": r.provider, "updatedAt": r.updated_at,
            })).collect::<Vec<_>>()
        }))
        .into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot list push registrations");
            json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the service cannot answer right now",
            )
        }
    }
}
