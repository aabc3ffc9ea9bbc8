//! The relay's shared vocabulary: who acts ([`Participant`]), what can go wrong
//! ([`RelayError`]), the events participants publish ([`Event`]) and what followers and
//! watchers are told ([`Change`], [`StateChange`]). Every relay module may import it; it
//! imports no relay module but the protocol's frame builder.

use serde_json::{Value, json};

use super::protocol::notification;
use crate::store::StoreError;
use crate::store::relay::ConversationRow;

/// Who acts: a consumer, by its id from its identity token, or an agent, by its account id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Participant {
    Consumer(String),
    Agent(String),
}

impl Participant {
    pub fn id(&self) -> &str {
        match self {
            Participant::Consumer(id) | Participant::Agent(id) => id,
        }
    }

    /// The platform's role name.
    pub fn role(&self) -> &'static str {
        match self {
            Participant::Consumer(_) => "CONSUMER",
            Participant::Agent(_) => "ASSIGNED_AGENT",
        }
    }

    /// Whether this participant may see the conversation.
    pub(super) fn may_see(&self, c: &ConversationRow) -> bool {
        match self {
            Participant::Consumer(id) => c.consumer_id == *id,
            Participant::Agent(id) => c.agent_id.as_deref() == Some(id.as_str()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// No such conversation, or not one this participant may see (the same answer: nobody
    /// learns that another consumer's conversation exists).
    #[error("no such conversation")]
    NotFound,
    #[error("the conversation is closed")]
    Closed,
    /// Another agent took the conversation first, or it left the queue.
    #[error("the conversation is no longer waiting")]
    Taken,
    /// This agent rejected the conversation's ring in its current queue round.
    #[error("this agent rejected the ring")]
    Rejected,
    #[error("{0}")]
    BadRequest(String),
    /// The client's event id names another event already stored (409).
    #[error("{0}")]
    Conflict(String),
    #[error("the store cannot be used: {0}")]
    Store(#[from] StoreError),
    #[error("sealing failed: {0}")]
    Seal(String),
}

/// An event a participant publishes, checked.
#[derive(Debug, Clone)]
pub enum Event {
    /// Stored, sequenced: `ContentEvent` (text) or `AcceptStatusEvent` (receipts).
    Stored(Value),
    /// Not stored: `ChatStateEvent`.
    Ephemeral(Value),
}

/// One event of a conversation, as followers see it.
#[derive(Debug, Clone)]
pub struct Change {
    pub conversation_id: String,
    /// The event's sequence; for a chat state (not stored), the conversation's last one
    /// (carried between nodes, never sent to a client).
    pub seq: i64,
    pub originator_id: String,
    pub originator_role: &'static str,
    /// Unix milliseconds.
    pub server_timestamp: i64,
    pub event: Value,
    /// Whether it was stored (and counts in the sequence).
    pub stored: bool,
}

impl Change {
    /// This change as an item of `ms.MessagingEventNotification`'s `changes`. A chat state
    /// (typing) has no `sequence`: it is not a stored event, and clients tell stored events
    /// apart by their sequence (the schema requires one: a difference the tests name).
    pub fn to_json(&self) -> Value {
        let mut item = json!({
            "originatorId": self.originator_id,
            "serverTimestamp": self.server_timestamp,
            "event": self.event,
            "dialogId": self.conversation_id,
            "originatorMetadata": {"id": self.originator_id, "role": self.originator_role},
        });
        if self.stored {
            item["sequence"] = Value::from(self.seq);
        }
        item
    }
}

/// The frame carrying `changes`.
pub fn messaging_notification(changes: &[Change]) -> String {
    notification(
        "ms.MessagingEventNotification",
        json!({ "changes": changes.iter().map(Change::to_json).collect::<Vec<_>>() }),
    )
}

/// A conversation's state changed (opened, closed, taken by an agent, returned to the queue).
/// Watchers read the conversation from the store; this only says which one and whose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    pub conversation_id: String,
    pub consumer_id: String,
    /// The agent concerned, when an agent took or returned the conversation.
    pub agent_id: Option<String>,
}

/// The associated data a stored event's body is sealed with.
pub(super) fn event_seal_context(event_id: &str) -> Vec<u8> {
    format!("relay_event:{event_id}").into_bytes()
}
