//! What every relay socket does, whoever speaks on it: one task per socket reads requests and
//! writes frames; requests are answered in order, directly; subscriptions feed a queue bounded
//! in bytes (`relay.send_queue_bytes`) that the task drains, and a socket that does not read
//! its queue for 30 s is closed (4408; the client catches up with `fromSeq`): nothing is
//! skipped. Here too: the per-second request window, the close codes, and the requests
//! consumers and agents share (publish, follow a conversation, watch the conversation list,
//! close or transfer). `consumer` and `agent` say who may connect and add their own requests
//! through [`Role`].

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::close_code;
use super::conversations::Conversations;
use super::outbox::{Outbox, Outgoing};
use super::protocol::{self, Request, malformed_response, notification, response, text_response};
use super::requests::{FieldChange, Shared};
use super::service::RelayService;
use super::subscriptions::follow;
use super::vocabulary::{Participant, RelayError};
use crate::config::RelayConfig;
use crate::ids::ConversationId;
use crate::store::relay::ConversationRow;

/// Conversations one socket may follow at once, and conversation-list subscriptions.
const MAX_FOLLOWS: usize = 16;
const MAX_WATCHES: usize = 4;

/// How long one frame may take to leave: a client that does not read is let go.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// What the socket's task does after a frame.
pub(super) enum Next {
    Continue,
    Close(u16, &'static str),
}

/// Who speaks on a socket: what authenticates it and the requests only it makes.
pub(super) trait Role: Send {
    /// When the role must look at its credential again (authentication not done in time, a
    /// credential's end, a periodic check).
    fn deadline(&self) -> tokio::time::Instant;
    /// The deadline passed: the role closes the socket or carries on.
    fn deadline_passed(&mut self, link: &mut Link) -> impl Future<Output = Next> + Send;
    /// Handles one text frame (within the size limit).
    fn frame(&mut self, link: &mut Link, text: &str) -> impl Future<Output = Next> + Send;
}

type Subscription = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A socket and what it holds: its queue, its subscriptions, its request window.
pub(super) struct Link {
    pub relay: RelayService,
    socket: WebSocket,
    /// Frames from subscriptions, drained by the socket's task.
    pub outbox: Outbox,
    queue: mpsc::Receiver<Outgoing>,
    /// Ends every subscription of this socket.
    cancel: CancellationToken,
    /// `ms.SubscribeMessagingEvents` by conversation.
    followed: HashMap<ConversationId, CancellationToken>,
    /// `cqm.SubscribeExConversations` (and routing subscriptions) by subscription id.
    watching: HashMap<String, CancellationToken>,
    /// Requests in the current second.
    window: (Instant, u32),
    /// A subscription to start once its response is on the wire (so the response comes first).
    pending: Option<Subscription>,
}

impl Link {
    pub fn new(relay: RelayService, socket: WebSocket) -> Link {
        let (outbox, queue) = Outbox::new(relay.inner.config.send_queue_bytes);
        let cancel = relay.inner.shutdown.child_token();
        Link {
            relay,
            socket,
            outbox,
            queue,
            cancel,
            followed: HashMap::new(),
            watching: HashMap::new(),
            window: (Instant::now(), 0),
            pending: None,
        }
    }

    pub fn conversations(&self) -> Arc<Conversations> {
        self.relay.inner.conversations.clone()
    }

    pub async fn send(&mut self, frame: String) -> Result<(), ()> {
        match tokio::time::timeout(SEND_TIMEOUT, self.socket.send(Message::Text(frame.into())))
            .await
        {
            Ok(Ok(())) => Ok(()),
            _ => Err(()),
        }
    }

    /// Sends an answer, then starts the subscription the request asked for, if any.
    pub async fn reply(&mut self, frame: String) -> Next {
        let next = match self.send(frame).await {
            Ok(()) => Next::Continue,
            Err(_) => Next::Close(close_code::GOING_AWAY, "write failed"),
        };
        if let Some(subscription) = self.pending.take() {
            tokio::spawn(subscription);
        }
        next
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

    /// Reads a frame as a request, counted against the rate. A malformed one, or one past
    /// the rate, is answered here (`Err` says what the socket does next).
    pub async fn read(&mut self, text: &str) -> Result<Request, Next> {
        let within_rate = self.within_rate();
        let request = match protocol::parse_request(text) {
            Ok(r) => r,
            Err(m) => return Err(self.reply(malformed_response(&m)).await),
        };
        if !within_rate {
            return Err(self
                .reply(text_response(
                    &request.id,
                    429,
                    "too many requests; slow down",
                ))
                .await);
        }
        Ok(request)
    }

    /// A token for a new subscription of this socket, registered under `id` (a
    /// conversation list or routing subscription), within the per-socket limit.
    pub fn new_subscription(&mut self, id: &str) -> Result<CancellationToken, RelayError> {
        self.watching.retain(|_, t| !t.is_cancelled());
        if self.watching.len() >= MAX_WATCHES {
            return Err(RelayError::BadRequest(format!(
                "at most {MAX_WATCHES} subscriptions of this kind per socket"
            )));
        }
        let token = self.cancel.child_token();
        self.watching.insert(id.to_string(), token.clone());
        Ok(token)
    }

    /// Starts `subscription` once the current request's response is sent.
    pub fn start_after_reply(&mut self, subscription: impl Future<Output = ()> + Send + 'static) {
        self.pending = Some(Box::pin(subscription));
    }

    /// Answers a request consumers and agents share (request id `id`).
    pub async fn shared(
        &mut self,
        who: &Participant,
        id: &str,
        request: Shared,
    ) -> Result<String, RelayError> {
        match request {
            Shared::PublishEvent {
                dialog,
                event,
                client_event_id,
            } => {
                self.publish(who, id, &dialog, &event, client_event_id.as_deref())
                    .await
            }
            Shared::SubscribeMessagingEvents { dialog, from_seq } => {
                self.follow(who, id, dialog, from_seq).await
            }
            Shared::SubscribeExConversations { states } => self.watch(who, id, states),
            Shared::UnsubscribeExConversations { subscription } => {
                match self.watching.remove(&subscription) {
                    Some(t) => {
                        t.cancel();
                        Ok(text_response(id, 200, "OK"))
                    }
                    None => Err(RelayError::NotFound),
                }
            }
            Shared::UpdateConversationField {
                conversation,
                change,
            } => {
                let conversations = &self.relay.inner.conversations;
                match change {
                    FieldChange::Close => conversations.close(who, &conversation).await?,
                    FieldChange::Transfer { skill } => {
                        conversations
                            .return_to_queue(who, &conversation, skill.as_deref())
                            .await?
                    }
                }
                Ok(text_response(id, 200, "OK"))
            }
            // The schema's 200 body is a string: the clock in Unix milliseconds, as text.
            Shared::GetClock => {
                let now = crate::clock::UnixMillis::of(self.relay.inner.clock.now()).0;
                Ok(text_response(id, 200, &now.to_string()))
            }
            Shared::KeepAlive => Ok(text_response(id, 200, "OK")),
        }
    }

    async fn publish(
        &mut self,
        who: &Participant,
        id: &str,
        dialog: &ConversationId,
        raw: &Value,
        client_event_id: Option<&str>,
    ) -> Result<String, RelayError> {
        let conversations = &self.relay.inner.conversations;
        let event = conversations.check_event(raw)?;
        // A chat state is not stored and gets no sequence.
        let body = match conversations
            .publish(who, dialog, event, client_event_id)
            .await?
        {
            Some(seq) => json!({ "sequence": seq }),
            None => json!({}),
        };
        Ok(response(id, 200, "ms.PublishEventResponse", body))
    }

    async fn follow(
        &mut self,
        who: &Participant,
        id: &str,
        dialog: ConversationId,
        from: i64,
    ) -> Result<String, RelayError> {
        let conversations = self.conversations();
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
        // Nothing beyond the next sequence exists yet: a later fromSeq would wait for events
        // that then never show.
        let from = from.min(row.last_seq + 1);
        let token = self.cancel.child_token();
        self.followed.insert(dialog.clone(), token.clone());
        // Live events are taken from now, before the answer: whatever comes after the answer
        // reaches this follower (a typing state cannot be caught up from the store).
        let live = conversations.bus().follower(&dialog);
        self.start_after_reply(follow(
            conversations,
            who.clone(),
            dialog,
            from,
            self.outbox.clone(),
            token,
            live,
        ));
        Ok(response(id, 200, "GenericSubscribeResponse", json!({})))
    }

    fn watch(
        &mut self,
        who: &Participant,
        req_id: &str,
        states: Vec<String>,
    ) -> Result<String, RelayError> {
        let id = uuid::Uuid::new_v4().to_string();
        let token = self.new_subscription(&id)?;
        let conversations = self.conversations();
        let out = self.outbox.clone();
        let who = who.clone();
        let subscription = id.clone();
        self.start_after_reply(async move {
            if let Err(e) = watch(conversations, who, subscription, states, &out, token).await {
                tracing::warn!(error = %e, "a subscription to conversations failed; closing its socket");
                out.close(
                    close_code::SUBSCRIPTION_FAILED,
                    "the subscription failed; subscribe again",
                );
            }
        });
        Ok(response(
            req_id,
            200,
            "cqm.SubscribeExConversationsResponse",
            json!({ "subscriptionId": id }),
        ))
    }
}

/// The WebSocket settings every relay socket gets. The layer stops anything past twice the
/// frame limit before reading it (bounded memory), frames between the limit and that are read
/// and refused by the session: either way the client gets a 1009 close. Buffers start small (an idle socket holds a few KiB, not the
/// library's 128 KiB read buffer) and grow for the frame at hand; frames are written at once.
pub(super) fn websocket(ws: WebSocketUpgrade, config: &RelayConfig) -> WebSocketUpgrade {
    ws.max_frame_size(config.max_frame_bytes * 2)
        .max_message_size(config.max_frame_bytes * 2)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
}

/// The read buffer a socket starts with.
const READ_BUFFER: usize = 1024;

/// How long a closing socket waits for the other side's part of the closing handshake.
const CLOSING_WAIT: Duration = Duration::from_secs(2);

/// How a socket's loop ended.
enum Ending {
    /// The client sent a Close frame: it is answered (RFC 6455 §5.5.1), then TCP ends.
    ClosedByClient,
    /// brandgate closes with this code and reason, then waits for the client's Close.
    Close(u16, &'static str),
    /// The connection is gone (reset, or ended without a Close): nothing to send.
    Gone,
}

/// The Close a read error calls for, if the connection can still carry one: a frame over the
/// layer's limit (1009), a broken frame (1002) or text that is not UTF-8 (1007).
fn close_for(error: axum::Error) -> Ending {
    use tungstenite::error::{CapacityError, Error};
    match error.into_inner().downcast_ref::<Error>() {
        Some(Error::Capacity(CapacityError::MessageTooLong { .. })) => Ending::Close(
            close_code::TOO_BIG,
            "frame larger than relay.max_frame_bytes",
        ),
        Some(Error::Capacity(_) | Error::Protocol(_)) => {
            Ending::Close(close_code::PROTOCOL_ERROR, "not a valid WebSocket frame")
        }
        Some(Error::Utf8(_)) => Ending::Close(close_code::INVALID_DATA, "text is not UTF-8"),
        _ => Ending::Gone,
    }
}

/// Runs a socket until it closes: frames in, queued frames out, deadlines, shutdown.
pub(super) async fn run<R: Role>(mut role: R, mut link: Link) {
    let max_frame = link.relay.inner.config.max_frame_bytes;
    let ending = loop {
        let deadline = role.deadline();
        tokio::select! {
            incoming = link.socket.recv() => {
                let message = match incoming {
                    Some(Ok(message)) => message,
                    Some(Err(e)) => break close_for(e),
                    None => break Ending::Gone,
                };
                match message {
                    Message::Text(text) if text.len() > max_frame => {
                        break Ending::Close(close_code::TOO_BIG, "frame larger than relay.max_frame_bytes");
                    }
                    // Boxed: the request's future (store calls and all) is allocated while it
                    // runs, not held by every idle socket.
                    Message::Text(text) => match Box::pin(role.frame(&mut link, text.as_str())).await {
                        Next::Continue => {}
                        Next::Close(code, why) => break Ending::Close(code, why),
                    },
                    Message::Binary(_) => {
                        let reason = if link.within_rate() { "frames must be text (JSON)" } else { "too many requests; slow down" };
                        let m = protocol::Malformed { id: None, reason: reason.into() };
                        if link.send(malformed_response(&m)).await.is_err() { break Ending::Gone; }
                    }
                    Message::Close(_) => break Ending::ClosedByClient,
                    // axum answers pings itself.
                    Message::Ping(_) | Message::Pong(_) => {}
                }
            }
            queued = link.queue.recv() => match queued {
                None => break Ending::Gone,
                // The permit (the frame's share of the byte budget) is released once sent.
                Some(Outgoing::Frame(frame, _permit)) => {
                    if link.send(frame).await.is_err() {
                        break Ending::Close(close_code::TOO_SLOW, "the socket does not read what it is sent");
                    }
                }
                Some(Outgoing::Close(code, reason)) => break Ending::Close(code, reason),
            },
            _ = tokio::time::sleep_until(deadline) => match Box::pin(role.deadline_passed(&mut link)).await {
                Next::Continue => {}
                Next::Close(code, why) => break Ending::Close(code, why),
            },
            _ = link.cancel.cancelled() => {
                break Ending::Close(close_code::GOING_AWAY, "the server is stopping");
            }
        }
    };
    link.cancel.cancel();
    finish_closing(&mut link.socket, ending).await;
}

/// The closing handshake (RFC 6455 §7.1.2): a client's Close is answered with a Close (the
/// library queued the echo; the next read sends it and then reports the end); a Close of ours
/// is sent, then the client's answer awaited (what it still sends is read and dropped). Bounded
/// by [`CLOSING_WAIT`]; then TCP ends when the socket is dropped.
async fn finish_closing(socket: &mut WebSocket, ending: Ending) {
    match ending {
        Ending::Gone => return,
        Ending::ClosedByClient => {}
        Ending::Close(code, reason) => {
            let frame = Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            }));
            if !matches!(
                tokio::time::timeout(SEND_TIMEOUT, socket.send(frame)).await,
                Ok(Ok(()))
            ) {
                return;
            }
        }
    }
    let _ = tokio::time::timeout(CLOSING_WAIT, async {
        while let Some(Ok(_)) = socket.recv().await {}
    })
    .await;
}

/// The answer to a request of a type the relay does not know, or not one this role sends.
pub(super) fn unknown_type(req_id: &str, kind: &str) -> String {
    text_response(req_id, 400, &format!("unknown request type {kind:?}"))
}

/// A `400`/`404`/... answer for a failed request; our own failures are logged, not shown.
pub(super) fn error_response(req_id: &str, e: &RelayError) -> String {
    let (code, text) = match e {
        RelayError::NotFound => (404, "no such conversation".to_string()),
        RelayError::Closed => (409, "the conversation is closed".to_string()),
        RelayError::Taken => (
            409,
            "the conversation was taken by another agent or left the queue".to_string(),
        ),
        RelayError::Rejected => (
            409,
            "you rejected this ring; it rings again once the conversation is back in the queue"
                .to_string(),
        ),
        RelayError::BadRequest(why) => (400, why.clone()),
        RelayError::Conflict(why) => (409, why.clone()),
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

/// Sends the participant's conversations (in `states`, or all), then each change of one of
/// them, until `cancel`. An agent's list also shows a conversation leaving it (transferred)
/// as a `DELETE`.
async fn watch(
    conversations: Arc<Conversations>,
    who: Participant,
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
    let mut changes = conversations.bus().state_changes();
    // What this subscription has shown, so an agent sees a conversation leave.
    let mut shown: HashSet<ConversationId> = HashSet::new();
    let mut send_all = true;
    loop {
        if send_all {
            send_all = false;
            let listed = conversations.list_for(&who).await?;
            // What was shown and is no longer the participant's (changed while this
            // subscription was behind, or on another node meanwhile) leaves the list.
            let gone: Vec<ConversationId> = shown
                .iter()
                .filter(|id| !listed.iter().any(|c| &c.id == *id))
                .cloned()
                .collect();
            for id in gone {
                match conversations.get(&who, &id).await {
                    Err(RelayError::NotFound) => {
                        shown.remove(&id);
                        if let Some(c) = conversations.get_for_routing(&id).await?
                            && !out
                                .send(conversation_gone(&subscription, &c), &cancel)
                                .await
                        {
                            return Ok(());
                        }
                    }
                    Err(e) => return Err(e),
                    Ok(_) => {}
                }
            }
            for c in listed {
                if wanted(&c) {
                    shown.insert(c.id.clone());
                    if !out
                        .send(conversation_change(&subscription, &c), &cancel)
                        .await
                    {
                        return Ok(());
                    }
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
            Ok(change) if matches!(&who, Participant::Consumer(id) if *id != change.consumer_id) => {
            }
            Ok(change) => match conversations.get(&who, &change.conversation_id).await {
                Ok(c) if wanted(&c) => {
                    shown.insert(c.id.clone());
                    if !out
                        .send(conversation_change(&subscription, &c), &cancel)
                        .await
                    {
                        return Ok(());
                    }
                }
                Ok(_) => {}
                Err(RelayError::NotFound) if shown.remove(&change.conversation_id) => {
                    if let Some(c) = conversations
                        .get_for_routing(&change.conversation_id)
                        .await?
                        && !out
                            .send(conversation_gone(&subscription, &c), &cancel)
                            .await
                    {
                        return Ok(());
                    }
                }
                Err(RelayError::NotFound) => {}
                Err(e) => return Err(e),
            },
            // Behind: send the whole (short) list again rather than miss a change.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => send_all = true,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

/// A conversation as `cqm.ExConversationChangeNotification` shows it.
pub fn conversation_change(subscription: &str, c: &ConversationRow) -> String {
    change_notification(subscription, "UPSERT", c)
}

/// A conversation leaving a subscriber's list (an agent's, after a transfer), as it is now.
fn conversation_gone(subscription: &str, c: &ConversationRow) -> String {
    change_notification(subscription, "DELETE", c)
}

fn change_notification(subscription: &str, kind: &str, c: &ConversationRow) -> String {
    let mut participants = vec![json!({"id": c.consumer_id, "role": "CONSUMER"})];
    if let Some(agent) = &c.agent_id {
        participants.push(json!({"id": agent, "role": "ASSIGNED_AGENT"}));
    }
    notification(
        "cqm.ExConversationChangeNotification",
        json!({
            "subscriptionId": subscription,
            "changes": [{
                "type": kind,
                "result": {
                    "convId": c.id,
                    "conversationDetails": {
                        "participants": participants,
                        "state": if c.open { "OPEN" } else { "CLOSE" },
                        "startTs": c.created_at,
                        "endTs": c.closed_at.map_or(-1, |t| t.0),
                        "dialogs": [{"dialogId": c.id}],
                    }
                }
            }]
        }),
    )
}
