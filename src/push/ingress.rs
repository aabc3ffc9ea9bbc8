//! `POST /push/{app}`: the platform's door into the push proxy. Checks the caller (rate limit on
//! failures, then the app's auth), reads and parses the body within limits, hands the push to
//! [`PushService`], and maps the result to the codes the platform understands. Every refusal is a
//! JSON `{"error": ...}` that says what the caller did wrong, never our internals.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http::{HeaderMap, HeaderValue, StatusCode, header};

use super::metrics::{RequestLabels, ResultLabels};
use super::outcome::{Attempt, Delivery};
use super::{PushError, PushService};
use crate::http_answer::{is_json, json_error, with_retry_after};
use crate::tls::Peer;

/// Time allowed to receive the whole body once the headers are in.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);

pub fn router(service: PushService) -> Router {
    Router::new()
        .route("/push/{app}", post(handle))
        .with_state(service)
}

/// Everything the endpoint can answer besides a delivery result.
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error(transparent)]
    Push(#[from] PushError),
    #[error("caller authentication failed")]
    Unauthenticated { basic: bool },
    #[error("too many failed authentications from this address")]
    RateLimited { retry_after: Duration },
    #[error("body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("body must be application/json")]
    NotJson,
    #[error("body not received in time")]
    BodyTimeout,
    #[error("body could not be read")]
    BodyUnreadable,
    #[error("{0}")]
    Malformed(String),
    #[error("the app id in the path is not valid")]
    BadPath,
    #[error("internal error while delivering; a retry may succeed")]
    Internal,
}

impl Refusal {
    /// The one place refusals become HTTP statuses; no catch-all arm, so a new refusal must be
    /// placed here deliberately.
    fn status(&self) -> StatusCode {
        match self {
            Refusal::Push(PushError::UnknownApp(_)) => StatusCode::NOT_FOUND,
            Refusal::Push(PushError::NoProvider { .. }) => StatusCode::BAD_REQUEST,
            Refusal::Push(PushError::Overloaded) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Push(PushError::Payload(_)) => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::Push(PushError::InvalidToken(_)) => StatusCode::FORBIDDEN,
            Refusal::Push(PushError::ConcurrentAttemptFailed) => StatusCode::INTERNAL_SERVER_ERROR,
            Refusal::Push(PushError::DeliveringElsewhere) => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::Unauthenticated { .. } => StatusCode::UNAUTHORIZED,
            Refusal::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Refusal::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Refusal::NotJson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Refusal::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Refusal::BodyUnreadable => StatusCode::BAD_REQUEST,
            Refusal::Malformed(_) => StatusCode::BAD_REQUEST,
            Refusal::BadPath => StatusCode::BAD_REQUEST,
            Refusal::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn into_response(self) -> Response {
        let response = json_error(self.status(), &self.to_string());
        match &self {
            Refusal::Unauthenticated { basic: true } => {
                let mut response = response;
                response.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Basic realm=\"brandgate\", charset=\"UTF-8\""),
                );
                response
            }
            Refusal::RateLimited { retry_after } => with_retry_after(response, *retry_after),
            Refusal::Push(PushError::Overloaded) => {
                with_retry_after(response, Duration::from_secs(1))
            }
            _ => response,
        }
    }
}

async fn handle(
    State(service): State<PushService>,
    path: Result<Path<String>, axum::extract::rejection::PathRejection>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let Ok(Path(app_id)) = path else {
        return Refusal::BadPath.into_response();
    };
    let generation = service.generation();
    let app = generation.apps.get(&app_id).cloned();
    let peer = peer.map(|p| p.0);
    let response = match receive(
        &service,
        &generation,
        &app_id,
        app.clone(),
        peer,
        &headers,
        body,
    )
    .await
    {
        Ok(delivery) => answer(&delivery),
        Err(refusal) => {
            if let Refusal::RateLimited { .. } = &refusal {
                service
                    .metrics()
                    .refused
                    .get_or_create(&ResultLabels {
                        result: "rate_limited",
                    })
                    .inc();
            }
            refusal.into_response()
        }
    };
    let status = response.status().as_u16();
    match &app {
        Some(app) if status == 200 => app.metrics.ok_requests.inc(),
        // Only configured ids become metric labels.
        _ => service
            .metrics()
            .requests
            .get_or_create(&RequestLabels {
                app: app
                    .as_ref()
                    .map_or_else(|| "unknown".to_string(), |a| a.id.clone()),
                status,
            })
            .inc(),
    };
    response
}

async fn receive(
    service: &PushService,
    generation: &Arc<super::Generation>,
    app_id: &str,
    app: Option<Arc<super::App>>,
    peer: Option<Peer>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Delivery, Refusal> {
    let limit = generation.settings.body_limit;
    let app = match admit(service, generation, app_id, app, peer, headers) {
        Ok(app) => app,
        Err(refusal) => {
            discard(body, limit).await;
            return Err(refusal);
        }
    };
    let bytes = match tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, limit)).await {
        Err(_) => return Err(Refusal::BodyTimeout),
        Ok(Err(e)) => {
            // axum reports an exceeded limit as a length-limit error in the source chain.
            let text = crate::http_client::error_chain(&e);
            return Err(if text.contains("length limit") {
                Refusal::TooLarge(limit)
            } else {
                Refusal::BodyUnreadable
            });
        }
        Ok(Ok(b)) => b,
    };
    let request = super::request::parse(&bytes).map_err(|m| Refusal::Malformed(m.0))?;
    // Delivery runs in its own task: if the caller goes away mid-push (a timeout, a reset
    // stream), the push still finishes and is recorded, so the platform's re-send is answered
    // as a duplicate instead of reaching the phone twice. A panic there is a 500, not a
    // dropped connection. The task is tracked, so shutdown waits for it (`PushService::drain`)
    // even when no connection is left to wait for.
    let (service, generation) = (service.clone(), generation.clone());
    let deliveries = service.shared.deliveries.clone();
    let delivery =
        deliveries.spawn(async move { service.send_on(&generation, &app, request).await });
    match delivery.await {
        Ok(result) => Ok(result?),
        Err(e) => {
            tracing::error!(error = %e, "push delivery task failed");
            Err(Refusal::Internal)
        }
    }
}

/// Longest a refused request's body is read for, before the refusal is sent anyway.
const DISCARD_TIMEOUT: Duration = Duration::from_secs(2);

/// Reads and drops what a refused caller is still sending (at most the body limit, for at
/// most [`DISCARD_TIMEOUT`]), so the refusal arrives as a status. Over HTTP/2, a stream
/// answered before its body ended is reset (RST_STREAM NO_ERROR), and common clients (curl,
/// nghttp2) then report a network error instead of the 401 or 429.
async fn discard(body: Body, limit: usize) {
    let _ = tokio::time::timeout(DISCARD_TIMEOUT, axum::body::to_bytes(body, limit)).await;
}

/// The checks made before the body is read: a configured app, the caller not rate limited,
/// its authentication, a JSON content type.
fn admit(
    service: &PushService,
    generation: &Arc<super::Generation>,
    app_id: &str,
    app: Option<Arc<super::App>>,
    peer: Option<Peer>,
    headers: &HeaderMap,
) -> Result<Arc<super::App>, Refusal> {
    // An unknown app is not counted against the caller: the platform itself may push for an
    // app not configured yet, and must not lock itself out of the others.
    let Some(app) = app else {
        return Err(PushError::UnknownApp(app_id.to_string()).into());
    };
    let ip = peer.as_ref().map(|p| p.client);
    let limit = generation.settings.auth_failures_per_minute;
    if let Some(ip) = ip
        && let Some(retry_after) = service.shared.limiter.blocked(ip, &app.id, limit)
    {
        return Err(Refusal::RateLimited { retry_after });
    }
    let certificate = peer.as_ref().and_then(|p| p.certificate.as_deref());
    if let Err(failure) = app.auth.check(headers, certificate) {
        if let Some(ip) = ip {
            service.shared.limiter.count(ip, &app.id);
        }
        tracing::warn!(app = %app.id, peer = ?ip, %failure, "caller authentication failed");
        return Err(Refusal::Unauthenticated {
            basic: app.auth.uses_basic(),
        });
    }
    if !is_json(headers) {
        return Err(Refusal::NotJson);
    }
    Ok(app)
}

/// The JSON answer to a finished push (written without an intermediate JSON tree: one per push).
#[derive(serde::Serialize)]
#[serde(untagged)]
enum AnswerBody<'a> {
    Delivered {
        status: &'static str,
        provider: &'static str,
        id: &'a Option<String>,
    },
    NotDelivered {
        error: &'static str,
        provider: &'static str,
        reason: &'a str,
    },
}

/// Maps a finished push to the platform's codes. Exhaustive over [`Attempt`].
fn answer(d: &Delivery) -> Response {
    let provider = d.provider.as_str();
    let not_delivered = |error, reason| AnswerBody::NotDelivered {
        error,
        provider,
        reason,
    };
    let (status, body) = match &d.last {
        Attempt::Delivered { id, .. } => (
            StatusCode::OK,
            AnswerBody::Delivered {
                status: if d.duplicate {
                    "duplicate"
                } else {
                    "delivered"
                },
                provider,
                id,
            },
        ),
        Attempt::DeadToken { reason, .. } => (
            StatusCode::FORBIDDEN,
            not_delivered("the device token cannot receive pushes", reason),
        ),
        Attempt::Transient { reason, .. } => (
            StatusCode::INTERNAL_SERVER_ERROR,
            not_delivered("not delivered in time; a retry may succeed", reason),
        ),
        Attempt::Permanent { reason, .. } => (
            StatusCode::INTERNAL_SERVER_ERROR,
            not_delivered(
                "the provider refused the push; the app's configuration needs a look",
                reason,
            ),
        ),
    };
    (status, axum::Json(body)).into_response()
}
