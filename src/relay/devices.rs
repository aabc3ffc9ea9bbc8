//! Consumers' devices over HTTPS, with the consumer's identity token
//! (`Authorization: jwt <token>`):
//! - `PUT /api/v1/push-registrations/{app}` with `{"provider": "apns"|"fcm"|"huawei", "token": "..."}`
//!   registers (or replaces) the device of one app (`[[push.apps]]` id) → `204`;
//! - `DELETE /api/v1/push-registrations/{app}` removes it → `204` (`404` if there was none);
//! - `GET /api/v1/push-registrations` lists the apps registered (never the tokens).
//!
//! The token is sealed at rest; it is only ever read to send the consumer's away pushes.

use std::net::IpAddr;

use crate::ids::ConsumerId;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::away::seal_context;
use super::refusal::{HttpRefusal, MAX_BODY_BYTES};
use super::rest::caller;
use super::service::RelayService;
use super::vocabulary::Participant;
use crate::client_address::ClientIp;
use crate::http_answer::{is_json, no_store};
use crate::push::{DeviceToken, Provider};
use crate::store::devices::PushRegistration;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Registration {
    provider: String,
    token: String,
}

/// The consumer calling, or why the call is refused.
async fn consumer(
    relay: &RelayService,
    headers: &HeaderMap,
    source: Option<IpAddr>,
) -> Result<ConsumerId, HttpRefusal> {
    match caller(relay, headers, source).await? {
        Participant::Consumer(id) => Ok(id),
        Participant::Agent(_) => Err(HttpRefusal::WrongRole(
            "devices are registered by consumers",
        )),
    }
}

pub async fn register(
    State(relay): State<RelayService>,
    Path(app): Path<String>,
    ClientIp(source): ClientIp,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, HttpRefusal> {
    let consumer = consumer(&relay, &headers, source).await?;
    if !is_json(&headers) {
        return Err(HttpRefusal::NotJson);
    }
    if body.len() > MAX_BODY_BYTES {
        return Err(HttpRefusal::BodyTooLarge);
    }
    let registration: Registration = serde_json::from_slice(&body).map_err(|e| {
        HttpRefusal::BadRequest(format!("expected {{\"provider\", \"token\"}}: {e}"))
    })?;
    let Some(provider) = Provider::from_name(&registration.provider) else {
        return Err(HttpRefusal::BadRequest(
            "provider must be apns, fcm or huawei".into(),
        ));
    };
    provider
        .check_token(&registration.token)
        .map_err(|why| HttpRefusal::BadRequest(why.to_string()))?;
    if !relay.inner.away.push().serves(&app, provider) {
        return Err(HttpRefusal::NotFound(format!(
            "no app {app:?} delivering through {}",
            provider.as_str()
        )));
    }
    let account = &relay.inner.config.account;
    let sealed = relay
        .inner
        .data_keys
        .seal(
            &seal_context(account, &consumer, &app),
            registration.token.as_bytes(),
        )
        .map_err(|e| HttpRefusal::unavailable("cannot seal a device token", e))?;
    let row = PushRegistration {
        account: account.clone(),
        consumer_id: consumer,
        app,
        provider: provider.as_str().to_string(),
        token_sealed: sealed,
        token_hash: DeviceToken::new(registration.token).sha256_hex(),
        updated_at: crate::clock::UnixMillis::of(relay.inner.clock.now()).0,
    };
    relay
        .inner
        .store
        .put_push_registration(&row)
        .await
        .map_err(|e| HttpRefusal::unavailable("cannot store a push registration", e))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn unregister(
    State(relay): State<RelayService>,
    Path(app): Path<String>,
    ClientIp(source): ClientIp,
    headers: HeaderMap,
) -> Result<Response, HttpRefusal> {
    let consumer = consumer(&relay, &headers, source).await?;
    let removed = relay
        .inner
        .store
        .delete_push_registration(&relay.inner.config.account, &consumer, &app, None)
        .await
        .map_err(|e| HttpRefusal::unavailable("cannot remove a push registration", e))?;
    if removed {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(HttpRefusal::NotFound(
            "no device registered for this app".into(),
        ))
    }
}

pub async fn list(
    State(relay): State<RelayService>,
    ClientIp(source): ClientIp,
    headers: HeaderMap,
) -> Result<Response, HttpRefusal> {
    let consumer = consumer(&relay, &headers, source).await?;
    let rows = relay
        .inner
        .store
        .list_push_registrations(&relay.inner.config.account, &consumer)
        .await
        .map_err(|e| HttpRefusal::unavailable("cannot list push registrations", e))?;
    Ok(no_store(
        axum::Json(json!({
            "registrations": rows.iter().map(|r| json!({
                "app": r.app, "provider": r.provider, "updatedAt": r.updated_at,
            })).collect::<Vec<_>>()
        }))
        .into_response(),
    ))
}
