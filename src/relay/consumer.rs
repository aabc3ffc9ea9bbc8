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
//! One task per socket reads requests and writes frames; requests are answered in order,
//! directly, and subscriptions feed a queue bounded in bytes (`relay.send_queue_bytes`) that
//! the task drains. A socket that does not read its queue for 30 s is closed (4408; the client
//! catches up with `fromSeq`): nothing is skipped.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::RelayService;
use super::bus::{Outbox, Outgoing, follow};
use super::conversations::{Participant, RelayError};
use super::protocol::{self, Request, malformed_response, notification, response, text_response};
use crate::identity::{ConsumerIdentity, VerifyError};
use crate::limiter::SourceSlot;
use crate::store::relay::ConversationRow;
use crate::tls::Peer;

/// Conversations one socket may follow at once, and conversation-list subscriptions.
const MAX_FOLLOWS: usize = 16;
const MAX_WATCHES: usize = 4;

/// Close codes (the private range, RFC 6455 §7.4.2).
pub mod close_code {
    /// No valid token: none on the upgrade and no `InitConnection` in time, or it failed.
    pub const UNAUTHENTICATED: u16 = 4401;
    /// The token expired and no fresh one came in-band.
    pub const TOKEN_EXPIRED: u16 = 4410;
    /// The socket did not read what it was sent.
    pub const TOO_SLOW: u16 = super::super::bus::TOO_SLOW;
    /// A subscription failed (the store); reconnect and catch up with `fromSeq`.
    pub const SUBSCRIPTION_FAILED: u16 = super::super::bus::SUBSCRIPTION_FAILED;
    /// The daemon is stopping.
    pub const GOING_AWAY: u16 = 1001;
    /// A frame larger than `relay.max_frame_bytes` (RFC 6455's "message too big").
    pub const TOO_BIG: u16 = 1009;
}

/// `GET /ws_api/account/{account}/messaging/consumer`.
pub async fn platform_path(
    State(relay): State<RelayService>,
    Path(account): Path<String>,
    peer: Option<axum::Extension<Peer>>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if account != relay.inner.config.account {
        return (StatusCode::NOT_FOUND, "no such account").into_response();
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
    let value = headers.get(http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("jwt") || scheme.eq_ignore_ascii_case("bearer"))
        .then_some(token.trim())
}

async fn upgrade(
    relay: RelayService,
    peer: Option<Peer>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let Ok(permit) = relay.inner.sockets.clone().try_acquire_owned() else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many connections; retry later",
        )
            .into_response();
    };
    let identity = match header_token(&headers) {
        Some(token) => match relay.inner.identity.verify_consumer(token).await {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::info!(reason = %e, "a consumer's token was refused on the upgrade");
                return (
                    StatusCode::UNAUTHORIZED,
                    format!("the token is not accepted: {e}"),
                )
                    .into_response();
            }
        },
        None => None,
    };
    // A socket that has not authenticated yet holds one of its address's few slots until it
    // does (or goes), so one client cannot fill every socket with silent ones.
    let slot = match (&identity, &peer) {
        (None, Some(peer)) => {
            let limit = relay.inner.config.unauthenticated_per_source;
            match relay.inner.unauthenticated.take(peer.addr.ip(), limit) {
                Some(slot) => Some(slot),
                None => {
                    return (
                        StatusCode::TOO_MANY_REQUESTS,
                        "too many sockets from this address waiting to authenticate",
                    )
                        .into_response();
                }
            }
        }
        _ => None,
    };
    // The WebSocket layer stops anything past twice the limit (bounded memory); frames between
    // the limit and that are refused by the session with a clean 1009 close.
    let config = &relay.inner.config;
    ws.max_frame_size(config.max_frame_bytes * 2)
        .max_message_size(config.max_frame_bytes * 2)
        .on_upgrade(move |socket| async move {
            let _permit = permit;
            // Counted until the session ends, so shutdown can wait for the close frames.
            let _tracked = relay.inner.sessions.token();
            let mut session = Session::new(relay, identity);
            session.unauthenticated_slot = slot;
            session.run(socket).await;
        })
}

/// The consumer a socket speaks for, once authenticated.
struct Consumer {
    id: String,
    /// When the token stops being accepted (its expiry plus the identity leeway).
    valid_until: SystemTime,
}

struct Session {
    relay: RelayService,
    consumer: Option<Consumer>,
    /// Frames from subscriptions, drained by the socket's task.
    outbox: Outbox,
    queue: mpsc::Receiver<Outgoing>,
    /// Ends every subscription of this socket.
    cancel: CancellationToken,
    /// `ms.SubscribeMessagingEvents` by conversation.
    followed: HashMap<String, CancellationToken>,
    /// `cqm.SubscribeExConversations` by subscription id.
    watching: HashMap<String, CancellationToken>,
    /// Requests in the current second.
    window: (Instant, u32),
    /// A subscription to start once its response is on the wire (so the response comes first).
    pending: Option<Pending>,
    /// The address's slot for sockets not authenticated yet; given back on authentication.
    unauthenticated_slot: Option<SourceSlot>,
}

enum Pending {
    /// `ms.SubscribeMessagingEvents`: conversation, from sequence.
    Follow(String, i64, CancellationToken),
    /// `cqm.SubscribeExConversations`: subscription id, states wanted (empty: all).
    Watch(String, Vec<String>, CancellationToken),
}

/// What the socket's task does after a frame.
enum Next {
    Continue,
    Close(u16, &'static str),
}

impl Session {
    fn new(relay: RelayService, identity: Option<ConsumerIdentity>) -> Session {
        let (outbox, queue) = Outbox::new(relay.inner.config.send_queue_bytes);
        let cancel = relay.inner.shutdown.child_token();
        Session {
            relay,
            consumer: identity.map(|i| Consumer {
                id: i.subject,
                valid_until: i.valid_until,
            }),
            outbox,
            queue,
            cancel,
            followed: HashMap::new(),
            watching: HashMap::new(),
            window: (Instant::now(), 0),
            pending: None,
            unauthenticated_slot: None,
        }
    }

    /// Starts the subscription the last request asked for.
    fn start_pending(&mut self, who: &Participant) {
        let conversations = self.relay.inner.conversations.clone();
        let out = self.outbox.clone();
        match self.pending.take() {
            None => {}
            Some(Pending::Follow(dialog, from, token)) => {
                tokio::spawn(follow(conversations, dialog, from, out, token));
            }
            Some(Pending::Watch(id, states, token)) => {
                let consumer = who.id().to_string();
                tokio::spawn(async move {
                    if let Err(e) = watch(conversations, consumer, id, states, &out, token).await {
                        tracing::warn!(error = %e, "a subscription to conversations failed; closing its socket");
                        out.close(
                            close_code::SUBSCRIPTION_FAILED,
                            "the subscription failed; subscribe again",
                        );
                    }
                });
            }
        }
    }

    async fn run(mut self, mut socket: WebSocket) {
        let auth_deadline = tokio::time::Instant::now() + self.relay.inner.config.auth_timeout.0;
        let close = loop {
            let expiry = self.expiry();
            tokio::select! {
                incoming = socket.recv() => {
                    let Some(Ok(message)) = incoming else { break None };
                    match message {
                        Message::Text(text) if text.len() > self.relay.inner.config.max_frame_bytes => {
                            break Some((close_code::TOO_BIG, "frame larger than relay.max_frame_bytes"));
                        }
                        Message::Text(text) => match self.request(&mut socket, text.as_str()).await {
                            Next::Continue => {}
                            Next::Close(code, why) => break Some((code, why)),
                        },
                        Message::Binary(_) => {
                            let reason = if self.within_rate() { "frames must be text (JSON)" } else { "too many requests; slow down" };
                            let m = protocol::Malformed { id: None, reason: reason.into() };
                            if send(&mut socket, malformed_response(&m)).await.is_err() { break None; }
                        }
                        Message::Close(_) => break None,
                        // axum answers pings itself.
                        Message::Ping(_) | Message::Pong(_) => {}
                    }
                }
                queued = self.queue.recv() => match queued {
                    None => break None,
                    // The permit (the frame's share of the byte budget) is released once sent.
                    Some(Outgoing::Frame(frame, _permit)) => {
                        if send(&mut socket, frame).await.is_err() {
                            break Some((close_code::TOO_SLOW, "the socket does not read what it is sent"));
                        }
                    }
                    Some(Outgoing::Close(code, reason)) => break Some((code, reason)),
                },
                _ = tokio::time::sleep_until(auth_deadline), if self.consumer.is_none() => {
                    break Some((close_code::UNAUTHENTICATED, "no InitConnection with a token in time"));
                }
                _ = tokio::time::sleep_until(expiry), if self.consumer.is_some() => {
                    let _ = send(&mut socket, expired_notification()).await;
                    break Some((close_code::TOKEN_EXPIRED, "token expired"));
                }
                _ = self.cancel.cancelled() => {
                    break Some((close_code::GOING_AWAY, "the server is stopping"));
                }
            }
        };
        self.cancel.cancel();
        if let Some((code, reason)) = close {
            let frame = Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            }));
            let _ = tokio::time::timeout(SEND_TIMEOUT, socket.send(frame)).await;
        }
    }

    /// When the token runs out, as a timer deadline (far away before authentication).
    fn expiry(&self) -> tokio::time::Instant {
        let now = tokio::time::Instant::now();
        match &self.consumer {
            Some(c) => {
                let left = c
                    .valid_until
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                now + left
            }
            None => now + Duration::from_secs(86_400),
        }
    }

    fn expired(&self) -> bool {
        self.consumer
            .as_ref()
            .is_some_and(|c| c.valid_until <= SystemTime::now())
    }

    /// Counts a frame in this second's window; `false` past the limit.
    fn within_rate(&mut self) -> bool {
        // A fixed window per second: enough to stop a flood, never in a real client's way.
        if self.window.0.elapsed() >= Duration::from_secs(1) {
            self.window = (Instant::now(), 0);
        }
        self.window.1 += 1;
        self.window.1 <= self.relay.inner.config.requests_per_second
    }

    async fn request(&mut self, socket: &mut WebSocket, text: &str) -> Next {
        // Expiry and the rate apply to every frame, well-formed or not.
        if self.expired() {
            let _ = send(socket, expired_notification()).await;
            return Next::Close(close_code::TOKEN_EXPIRED, "token expired");
        }
        let within_rate = self.within_rate();
        let request = match protocol::parse_request(text) {
            Ok(r) => r,
            Err(m) => return reply(socket, malformed_response(&m)).await,
        };
        if !within_rate {
            return reply(
                socket,
                text_response(&request.id, 429, "too many requests; slow down"),
            )
            .await;
        }
        if request.kind == "InitConnection" {
            return self.init_connection(socket, &request).await;
        }
        let Some(consumer) = &self.consumer else {
            let _ = send(
                socket,
                text_response(&request.id, 401, "send InitConnection with a token first"),
            )
            .await;
            return Next::Close(close_code::UNAUTHENTICATED, "not authenticated");
        };
        let who = Participant::Consumer(consumer.id.clone());
        let frame = match self.dispatch(&who, &request).await {
            Ok(frame) => frame,
            Err(e) => error_response(&request.id, &e),
        };
        let next = reply(socket, frame).await;
        self.start_pending(&who);
        next
    }

    /// Authenticates (first time) or refreshes the token (same consumer) in-band.
    async fn init_connection(&mut self, socket: &mut WebSocket, request: &Request) -> Next {
        let token = request.headers.iter().find_map(|h| {
            (h.get("type").and_then(Value::as_str) == Some(".ams.headers.ConsumerAuthentication"))
                .then(|| h.get("jwt").and_then(Value::as_str))
                .flatten()
        });
        let Some(token) = token else {
            if self.consumer.is_none() {
                let _ = send(
                    socket,
                    text_response(
                        &request.id,
                        401,
                        "InitConnection needs a ConsumerAuthentication header",
                    ),
                )
                .await;
                return Next::Close(close_code::UNAUTHENTICATED, "no token");
            }
            return reply(socket, text_response(&request.id, 200, "OK")).await;
        };
        match self.relay.inner.identity.verify_consumer(token).await {
            Ok(id) => {
                if let Some(current) = &self.consumer
                    && current.id != id.subject
                {
                    return reply(
                        socket,
                        text_response(&request.id, 403, "the new token is for another consumer"),
                    )
                    .await;
                }
                self.consumer = Some(Consumer {
                    id: id.subject,
                    valid_until: id.valid_until,
                });
                self.unauthenticated_slot = None;
                reply(socket, text_response(&request.id, 200, "OK")).await
            }
            Err(VerifyError::Unavailable) => {
                reply(
                    socket,
                    text_response(&request.id, 503, "tokens cannot be checked right now"),
                )
                .await
            }
            Err(e) => {
                tracing::info!(reason = %e, "a consumer's token was refused in-band");
                let _ = send(
                    socket,
                    text_response(&request.id, 401, &format!("the token is not accepted: {e}")),
                )
                .await;
                if self.consumer.is_none() {
                    Next::Close(close_code::UNAUTHENTICATED, "token refused")
                } else {
                    Next::Continue
                }
            }
        }
    }

    async fn dispatch(&mut self, who: &Participant, r: &Request) -> Result<String, RelayError> {
        let conversations = &self.relay.inner.conversations;
        let body = &r.body;
        let text = |field: &str| -> Result<String, RelayError> {
            body.get(field)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty() && s.len() <= 64)
                .map(str::to_string)
                .ok_or_else(|| RelayError::BadRequest(format!("body.{field} must be an id")))
        };
        match r.kind.as_str() {
            "cm.ConsumerRequestConversation" => {
                let (c, _) = conversations.request(who.id()).await?;
                Ok(response(
                    &r.id,
                    200,
                    "cm.RequestConversationResponse",
                    json!({ "conversationId": c.id }),
                ))
            }
            "ms.PublishEvent" => {
                let dialog = text("dialogId")?;
                let raw = body
                    .get("event")
                    .ok_or_else(|| RelayError::BadRequest("body.event is missing".into()))?;
                let client_id = raw
                    .get("eventId")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty() && s.len() <= 64);
                let event = conversations.check_event(raw)?;
                let seq = conversations
                    .publish(who, &dialog, event, client_id)
                    .await?;
                Ok(response(
                    &r.id,
                    200,
                    "ms.PublishEventResponse",
                    json!({ "sequence": seq }),
                ))
            }
            "ms.SubscribeMessagingEvents" => {
                let dialog = text("dialogId")?;
                let from = match body.get("fromSeq") {
                    None | Some(Value::Null) => 0,
                    Some(v) => v.as_i64().ok_or_else(|| {
                        RelayError::BadRequest("body.fromSeq must be an integer".into())
                    })?,
                };
                let row = conversations.get(who, &dialog).await?;
                if let Some(old) = self.followed.remove(&dialog) {
                    old.cancel();
                }
                self.followed.retain(|_, t| !t.is_cancelled());
                if self.followed.len() >= MAX_FOLLOWS {
                    return Err(RelayError::BadRequest(format!(
                        "at most {MAX_FOLLOWS} conversations are followed per socket"
                    )));
                }
                // Nothing beyond the next sequence exists yet: a later fromSeq would wait for
                // events that then never show.
                let from = from.min(row.last_seq + 1);
                let token = self.cancel.child_token();
                self.followed.insert(dialog.clone(), token.clone());
                self.pending = Some(Pending::Follow(dialog, from, token));
                Ok(response(&r.id, 200, "GenericSubscribeResponse", json!({})))
            }
            "cqm.SubscribeExConversations" => {
                let states: Vec<String> = body
                    .get("convState")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                if self.watching.len() >= MAX_WATCHES {
                    return Err(RelayError::BadRequest(format!(
                        "at most {MAX_WATCHES} conversation subscriptions per socket"
                    )));
                }
                let id = uuid::Uuid::new_v4().to_string();
                let token = self.cancel.child_token();
                self.watching.insert(id.clone(), token.clone());
                self.pending = Some(Pending::Watch(id.clone(), states, token));
                Ok(response(
                    &r.id,
                    200,
                    "cqm.SubscribeExConversationsResponse",
                    json!({ "subscriptionId": id }),
                ))
            }
            "cqm.UnsubscribeExConversations" => {
                let id = text("subscriptionId")?;
                match self.watching.remove(&id) {
                    Some(t) => {
                        t.cancel();
                        Ok(text_response(&r.id, 200, "OK"))
                    }
                    None => Err(RelayError::NotFound),
                }
            }
            "cm.UpdateConversationField" => {
                let conversation = text("conversationId")?;
                let fields = body
                    .get("conversationField")
                    .and_then(Value::as_array)
                    .ok_or_else(|| {
                        RelayError::BadRequest("body.conversationField must be a list".into())
                    })?;
                let closes = fields.iter().all(|f| {
                    f.get("field").and_then(Value::as_str) == Some("ConversationStateField")
                        && f.get("conversationState").and_then(Value::as_str) == Some("CLOSE")
                });
                if fields.is_empty() || !closes {
                    return Err(RelayError::BadRequest(
                        "a consumer may only close its conversation (ConversationStateField CLOSE)"
                            .into(),
                    ));
                }
                conversations.close(who, &conversation).await?;
                Ok(text_response(&r.id, 200, "OK"))
            }
            "GetClock" => {
                let now = SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0);
                Ok(response(
                    &r.id,
                    200,
                    "GetClock$Response",
                    json!({ "currentTime": now }),
                ))
            }
            other => Err(RelayError::BadRequest(format!(
                "unknown request type {other:?}"
            ))),
        }
    }
}

/// A `400`/`404`/... answer for a failed request; our own failures are logged, not shown.
fn error_response(req_id: &str, e: &RelayError) -> String {
    let (code, text) = match e {
        RelayError::NotFound => (404, "no such conversation".to_string()),
        RelayError::Closed => (409, "the conversation is closed".to_string()),
        RelayError::BadRequest(why) => (400, why.clone()),
        RelayError::Store(_) | RelayError::Seal(_) => {
            tracing::error!(error = %e, "a relay request failed");
            (
                503,
                "the service cannot answer right now; retry".to_string(),
            )
        }
    };
    text_response(req_id, code, &text)
}

/// The frame telling a consumer its token ran out (not in the platform's published schemas).
fn expired_notification() -> String {
    notification(
        "brandgate.TokenExpired",
        json!({ "reason": "the identity token expired; reconnect with a fresh one" }),
    )
}

/// How long one frame may take to leave: a client that does not read is let go.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

async fn send(socket: &mut WebSocket, frame: String) -> Result<(), ()> {
    match tokio::time::timeout(SEND_TIMEOUT, socket.send(Message::Text(frame.into()))).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

async fn reply(socket: &mut WebSocket, frame: String) -> Next {
    match send(socket, frame).await {
        Ok(()) => Next::Continue,
        Err(_) => Next::Close(close_code::GOING_AWAY, "write failed"),
    }
}

/// Sends the consumer's conversations (in `states`, or all), then each change of one of
/// them, until `cancel`.
async fn watch(
    conversations: Arc<super::conversations::Conversations>,
    consumer: String,
    subscription: String,
    states: Vec<String>,
    out: &Outbox,
    cancel: CancellationToken,
) -> Result<(), RelayError> {
    let wanted = |c: &ConversationRow| {
        states.is_empty()
            || states
                .iter()
                .any(|s| s == if c.open { "OPEN" } else { "CLOSE" })
    };
    let who = Participant::Consumer(consumer.clone());
    let mut changes = conversations.bus().state_changes();
    let mut send_all = true;
    loop {
        if send_all {
            send_all = false;
            for c in conversations.list_for_consumer(&consumer).await? {
                if wanted(&c)
                    && !out
                        .send(conversation_change(&subscription, &c), &cancel)
                        .await
                {
                    return Ok(());
                }
            }
        }
        let changed = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            r = changes.recv() => r,
        };
        match changed {
            // Other consumers' changes are filtered here, without reading the store.
            Ok(change) if change.consumer_id != consumer => {}
            Ok(change) => {
                if let Ok(c) = conversations.get(&who, &change.conversation_id).await
                    && wanted(&c)
                    && !out
                        .send(conversation_change(&subscription, &c), &cancel)
                        .await
                {
                    return Ok(());
                }
            }
            // Behind: send the whole (short) list again rather than miss a change.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => send_all = true,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

/// A conversation as `cqm.ExConversationChangeNotification` shows it.
pub fn conversation_change(subscription: &str, c: &ConversationRow) -> String {
    let mut participants = vec![json!({"id": c.consumer_id, "role": "CONSUMER"})];
    if let Some(agent) = &c.agent_id {
        participants.push(json!({"id": agent, "role": "ASSIGNED_AGENT"}));
    }
    notification(
        "cqm.ExConversationChangeNotification",
        json!({
            "subscriptionId": subscription,
            "changes": [{
                "type": "UPSERT",
                "result": {
                    "convId": c.id,
                    "conversationDetails": {
                        "participants": participants,
                        "state": if c.open { "OPEN" } else { "CLOSE" },
                        "startTs": c.created_at,
                        "endTs": c.closed_at.unwrap_or(-1),
                        "dialogs": [{"dialogId": c.id}],
                    }
                }
            }]
        }),
    )
}
