//! A consumer's WebSocket: `GET /ws/consumer`, also at the platform's own path
//! `/ws_api/account/{account}/messaging/consumer`, so clients written for the platform connect
//! unchanged.
//!
//! Authentication is the consumer's identity token, checked by the identity bridge's door:
//! `Authorization: jwt <token>` on the upgrade, or (browsers cannot set headers) a first
//! `InitConnection` request carrying a `.ams.headers.ConsumerAuthentication` header within
//! `relay.auth_timeout`. Every request checks the token's expiry; a fresh token may be sent
//! in-band by another `InitConnection` (same subject). When the token expires the socket gets a
//! `brandgate.TokenExpired` notification and is closed with code 4410.
//!
//! The socket itself (queue, subscriptions, shared requests) is `socket`'s; here is what only
//! a consumer does: authenticate and request its conversation.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::HeaderMap;
use serde_json::{Value, json};

use super::away::Presence;
use super::close_code;
use super::protocol::{Request, notification, response, text_response};
use super::refusal::HttpRefusal;
use super::requests::{ConsumerRequest, Unreadable};
use super::service::RelayService;
use super::socket::{Link, Next, Role, error_response, run, unknown_type, websocket};
use super::vocabulary::Participant;
use crate::clock::Clock;
use crate::identity::VerifyError;
use crate::ids::ConsumerId;
use crate::limiter::SourceSlot;
use crate::tls::Peer;

/// `GET /ws_api/account/{account}/messaging/consumer`.
pub async fn platform_path(
    State(relay): State<RelayService>,
    Path(account): Path<String>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if account != relay.inner.config.account {
        return HttpRefusal::NotFound("no such account".into()).into_response();
    }
    upgrade(relay, peer.map(|p| p.0), headers, ws).await
}

/// `GET /ws/consumer`.
pub async fn own_path(
    State(relay): State<RelayService>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    upgrade(relay, peer.map(|p| p.0), headers, ws).await
}

/// The token of `Authorization: jwt <token>` (or `Bearer`).
pub(super) fn header_token(headers: &HeaderMap) -> Option<&str> {
    crate::http_auth::authorization_token(headers, &["jwt", "bearer"])
}

async fn upgrade(
    relay: RelayService,
    peer: Option<Peer>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let Ok(permit) = relay.inner.sockets.clone().try_acquire_owned() else {
        return HttpRefusal::TooManySockets.into_response();
    };
    let identity = match header_token(&headers) {
        Some(token) => match relay.inner.identity.verify_consumer(token).await {
            Ok(id) => Some(id),
            // Not the token's fault (an external issuer's keys cannot be read): retry later.
            Err(VerifyError::Unavailable) => {
                return HttpRefusal::TokensUnavailable.into_response();
            }
            Err(e) => {
                tracing::info!(reason = %e, "a consumer's token was refused on the upgrade");
                return HttpRefusal::TokenRefused(e).into_response();
            }
        },
        None => None,
    };
    // A socket that has not authenticated yet holds one of its address's few slots until it
    // does (or goes), so one client cannot fill every socket with silent ones.
    let slot = match (&identity, &peer) {
        (None, Some(peer)) => {
            let limit = relay.inner.config.unauthenticated_per_source;
            match relay.inner.unauthenticated.take(peer.client, limit) {
                Some(slot) => Some(slot),
                None => return HttpRefusal::TooManyWaitingSockets.into_response(),
            }
        }
        _ => None,
    };
    websocket(ws, &relay.inner.config).on_upgrade(move |socket| async move {
        let _permit = permit;
        // Counted until the session ends, so shutdown can wait for the close frames.
        let _tracked = relay.inner.sessions.token();
        let _open = relay.inner.metrics.socket_opened("consumer");
        if let Some(identity) = &identity {
            relay.inner.profiles.record(identity).await;
        }
        let auth_deadline = tokio::time::Instant::now() + relay.inner.config.auth_timeout.0;
        let presence = identity
            .as_ref()
            .map(|i| relay.inner.away.connected(&i.subject));
        let role = ConsumerRole {
            consumer: identity.map(|i| Consumer {
                id: i.subject,
                valid_until: i.valid_until,
            }),
            auth_deadline,
            unauthenticated_slot: slot,
            presence,
            clock: relay.inner.clock.clone(),
        };
        run(role, Link::new(relay, socket)).await;
    })
}

/// The consumer a socket speaks for, once authenticated.
struct Consumer {
    id: ConsumerId,
    /// When the token stops being accepted (its expiry plus the identity leeway).
    valid_until: SystemTime,
}

/// A consumer's side of a socket.
struct ConsumerRole {
    consumer: Option<Consumer>,
    /// Until when an unauthenticated socket may send `InitConnection`.
    auth_deadline: tokio::time::Instant,
    /// The address's slot for sockets not authenticated yet; given back on authentication.
    unauthenticated_slot: Option<SourceSlot>,
    /// Counts the consumer as connected (for away pushes) while the socket lives.
    presence: Option<Presence>,
    clock: Arc<dyn Clock>,
}

impl Role for ConsumerRole {
    fn deadline(&self) -> tokio::time::Instant {
        match &self.consumer {
            None => self.auth_deadline,
            Some(c) => {
                tokio::time::Instant::now()
                    + c.valid_until
                        .duration_since(self.clock.now())
                        .unwrap_or(Duration::ZERO)
            }
        }
    }

    async fn deadline_passed(&mut self, link: &mut Link) -> Next {
        if self.consumer.is_none() {
            return Next::Close(
                close_code::UNAUTHENTICATED,
                "no InitConnection with a token in time",
            );
        }
        if !self.expired() {
            return Next::Continue;
        }
        let _ = link.send(expired_notification()).await;
        Next::Close(close_code::TOKEN_EXPIRED, "token expired")
    }

    async fn frame(&mut self, link: &mut Link, text: &str) -> Next {
        // Expiry applies to every frame, well-formed or not.
        if self.expired() {
            let _ = link.send(expired_notification()).await;
            return Next::Close(close_code::TOKEN_EXPIRED, "token expired");
        }
        let request = match link.read(text).await {
            Ok(r) => r,
            Err(next) => return next,
        };
        let who = self.consumer.as_ref().map(|c| c.id.clone());
        let id = &request.id;
        let answer = match (ConsumerRequest::parse(&request), who) {
            (Ok(ConsumerRequest::InitConnection), _) => {
                return self.init_connection(link, &request).await;
            }
            (_, None) => {
                let _ = link
                    .send(text_response(
                        id,
                        401,
                        "send InitConnection with a token first",
                    ))
                    .await;
                return Next::Close(close_code::UNAUTHENTICATED, "not authenticated");
            }
            (Err(Unreadable::Unknown(kind)), Some(_)) => {
                return link.reply(unknown_type(id, &kind)).await;
            }
            (Err(Unreadable::Body(e)), Some(_)) => Err(e),
            (Ok(ConsumerRequest::RequestConversation), Some(consumer)) => {
                match link.conversations().request(&consumer).await {
                    Ok((c, _)) => Ok(response(
                        id,
                        200,
                        "cm.RequestConversationResponse",
                        json!({ "conversationId": c.id }),
                    )),
                    Err(e) => Err(e),
                }
            }
            (Ok(ConsumerRequest::Shared(shared)), Some(consumer)) => {
                let who = Participant::Consumer(consumer);
                link.shared(&who, id, shared).await
            }
        };
        let frame = answer.unwrap_or_else(|e| error_response(&request.id, &e));
        link.reply(frame).await
    }
}

impl ConsumerRole {
    fn expired(&self) -> bool {
        self.consumer
            .as_ref()
            .is_some_and(|c| c.valid_until <= self.clock.now())
    }

    /// Authenticates (first time) or refreshes the token (same consumer) in-band.
    async fn init_connection(&mut self, link: &mut Link, request: &Request) -> Next {
        let token = request.headers.iter().find_map(|h| {
            (h.get("type").and_then(Value::as_str) == Some(".ams.headers.ConsumerAuthentication"))
                .then(|| h.get("jwt").and_then(Value::as_str))
                .flatten()
        });
        let Some(token) = token else {
            if self.consumer.is_none() {
                let _ = link
                    .send(text_response(
                        &request.id,
                        401,
                        "InitConnection needs a ConsumerAuthentication header",
                    ))
                    .await;
                return Next::Close(close_code::UNAUTHENTICATED, "no token");
            }
            return link.reply(text_response(&request.id, 200, "OK")).await;
        };
        match link.relay.inner.identity.verify_consumer(token).await {
            Ok(id) => {
                if let Some(current) = &self.consumer
                    && current.id != id.subject
                {
                    return link
                        .reply(text_response(
                            &request.id,
                            403,
                            "the new token is for another consumer",
                        ))
                        .await;
                }
                if self.presence.is_none() {
                    self.presence = Some(link.relay.inner.away.connected(&id.subject));
                }
                link.relay.inner.profiles.record(&id).await;
                self.consumer = Some(Consumer {
                    id: id.subject,
                    valid_until: id.valid_until,
                });
                self.unauthenticated_slot = None;
                link.reply(text_response(&request.id, 200, "OK")).await
            }
            Err(VerifyError::Unavailable) => {
                link.reply(text_response(
                    &request.id,
                    503,
                    "tokens cannot be checked right now",
                ))
                .await
            }
            Err(e) => {
                tracing::info!(reason = %e, "a consumer's token was refused in-band");
                let _ = link
                    .send(text_response(
                        &request.id,
                        401,
                        &format!("the token is not accepted: {e}"),
                    ))
                    .await;
                if self.consumer.is_none() {
                    Next::Close(close_code::UNAUTHENTICATED, "token refused")
                } else {
                    Next::Continue
                }
            }
        }
    }
}

/// The frame telling a consumer its token ran out (not in the platform's published schemas).
fn expired_notification() -> String {
    notification(
        "brandgate.TokenExpired",
        json!({ "reason": "the identity token expired; reconnect with a fresh one" }),
    )
}
