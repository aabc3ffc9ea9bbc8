//! The relay's shared vocabulary: who acts ([`Participant`], speaking as a [`Role`]), what can
//! go wrong ([`RelayError`]), the events of a conversation ([`Event`], read from the wire or
//! the store once and written back only at the edge) and what followers and watchers are told
//! ([`Change`], [`StateChange`]). Every relay module may import it; it
//! imports no relay module but the protocol's frame builder.

use serde_json::{Value, json};

use super::protocol::notification;
use crate::clock::UnixMillis;
use crate::ids::{AgentId, ConsumerId, ConversationId};
use crate::store::StoreError;
use crate::store::relay::ConversationRow;

/// Who acts: a consumer, by its id from its identity token, or an agent, by its account id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Participant {
    Consumer(ConsumerId),
    Agent(AgentId),
}

impl Participant {
    pub fn id(&self) -> &str {
        match self {
            Participant::Consumer(id) => id.as_str(),
            Participant::Agent(id) => id.as_str(),
        }
    }

    /// The role it speaks as.
    pub fn role(&self) -> Role {
        match self {
            Participant::Consumer(_) => Role::Consumer,
            Participant::Agent(_) => Role::AssignedAgent,
        }
    }

    /// Whether this participant may see the conversation.
    pub(super) fn may_see(&self, c: &ConversationRow) -> bool {
        match self {
            Participant::Consumer(id) => c.consumer_id == *id,
            Participant::Agent(id) => c.agent_id.as_ref() == Some(id),
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

/// The role an event's originator speaks as, as the platform names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Consumer,
    AssignedAgent,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Consumer => "CONSUMER",
            Role::AssignedAgent => "ASSIGNED_AGENT",
        }
    }

    /// A role by its name: `CONSUMER`, or an agent's (the store and other nodes write only
    /// these two; anything else is an agent, as it always was read).
    pub fn from_name(name: &str) -> Role {
        if name == "CONSUMER" {
            Role::Consumer
        } else {
            Role::AssignedAgent
        }
    }
}

/// `AcceptStatusEvent`'s status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AcceptStatus {
    Accept,
    Read,
}

/// `ChatStateEvent`'s state (typing and presence in the conversation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatState {
    Active,
    Inactive,
    Gone,
    Composing,
    Pause,
}

impl ChatState {
    pub fn name(self) -> &'static str {
        match self {
            ChatState::Active => "ACTIVE",
            ChatState::Inactive => "INACTIVE",
            ChatState::Gone => "GONE",
            ChatState::Composing => "COMPOSING",
            ChatState::Pause => "PAUSE",
        }
    }

    pub fn from_name(name: &str) -> Option<ChatState> {
        Some(match name {
            "ACTIVE" => ChatState::Active,
            "INACTIVE" => ChatState::Inactive,
            "GONE" => ChatState::Gone,
            "COMPOSING" => ChatState::Composing,
            "PAUSE" => ChatState::Pause,
            _ => return None,
        })
    }
}

/// An event of a conversation, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `ContentEvent`, `text/plain`: a message.
    Content { message: String },
    /// `AcceptStatusEvent`: the originator accepted or read these sequences.
    AcceptStatus {
        status: AcceptStatus,
        sequences: Vec<i64>,
    },
    /// `ChatStateEvent`: not stored, no sequence.
    ChatState(ChatState),
}

impl Event {
    /// Whether it is stored (and gets a sequence): messages and receipts, not chat states.
    pub fn is_stored(&self) -> bool {
        !matches!(self, Event::ChatState(_))
    }

    /// The highest sequence a receipt names.
    pub fn newest_receipt(&self) -> Option<i64> {
        match self {
            Event::AcceptStatus { sequences, .. } => sequences.iter().copied().max(),
            _ => None,
        }
    }

    /// Reads an event a participant publishes (`ms.PublishEvent`'s `event`), refusing what
    /// the relay does not take, with the reason; messages at most `max_message_bytes`.
    pub fn check(event: &Value, max_message_bytes: usize) -> Result<Event, RelayError> {
        let bad = |why: &str| Err(RelayError::BadRequest(why.to_string()));
        match event.get("type").and_then(Value::as_str) {
            Some("ContentEvent") => {
                if event.get("contentType").and_then(Value::as_str) != Some("text/plain") {
                    return bad("contentType must be text/plain");
                }
                let Some(message) = event.get("message").and_then(Value::as_str) else {
                    return bad("message must be text");
                };
                if message.is_empty() {
                    return bad("message is empty");
                }
                if message.len() > max_message_bytes {
                    return Err(RelayError::BadRequest(format!(
                        "message is longer than {max_message_bytes} bytes"
                    )));
                }
                // Control characters other than line breaks and tabs.
                if message
                    .chars()
                    .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
                {
                    return bad("message holds control characters");
                }
                Ok(Event::Content {
                    message: message.to_string(),
                })
            }
            Some("AcceptStatusEvent") => {
                let status = match event.get("status").and_then(Value::as_str) {
                    Some("ACCEPT") => AcceptStatus::Accept,
                    Some("READ") => AcceptStatus::Read,
                    _ => return bad("status must be ACCEPT or READ"),
                };
                let Some(list) = event.get("sequenceList").and_then(Value::as_array) else {
                    return bad("sequenceList must be a list of sequences");
                };
                let sequences: Vec<i64> = list
                    .iter()
                    .filter_map(|s| s.as_i64().filter(|n| *n >= 0))
                    .collect();
                if list.is_empty() || list.len() > 1000 || sequences.len() != list.len() {
                    return bad("sequenceList must hold 1 to 1000 sequences");
                }
                Ok(Event::AcceptStatus { status, sequences })
            }
            Some("ChatStateEvent") => {
                match event
                    .get("chatState")
                    .and_then(Value::as_str)
                    .and_then(ChatState::from_name)
                {
                    Some(state) => Ok(Event::ChatState(state)),
                    None => bad("chatState must be ACTIVE, INACTIVE, GONE, COMPOSING or PAUSE"),
                }
            }
            Some(_) => bad("event type must be ContentEvent, AcceptStatusEvent or ChatStateEvent"),
            None => bad("event needs a type"),
        }
    }

    /// Reads back an event brandgate wrote (the store's sealed body): `None` if it is not one.
    pub fn from_stored(body: &Value) -> Option<Event> {
        Event::check(body, usize::MAX).ok()
    }

    /// The event on the wire (and in the store): the platform's JSON.
    pub fn to_json(&self) -> Value {
        match self {
            Event::Content { message } => {
                json!({"type": "ContentEvent", "contentType": "text/plain", "message": message})
            }
            Event::AcceptStatus { status, sequences } => json!({
                "type": "AcceptStatusEvent",
                "status": match status {
                    AcceptStatus::Accept => "ACCEPT",
                    AcceptStatus::Read => "READ",
                },
                "sequenceList": sequences,
            }),
            Event::ChatState(state) => {
                json!({"type": "ChatStateEvent", "chatState": state.name()})
            }
        }
    }
}

/// One event of a conversation, as followers see it.
#[derive(Debug, Clone)]
pub struct Change {
    pub conversation_id: ConversationId,
    /// The event's sequence; for a chat state (not stored), the conversation's last one
    /// (carried between nodes, never sent to a client).
    pub seq: i64,
    pub originator_id: String,
    pub originator_role: Role,
    pub server_timestamp: UnixMillis,
    /// A stored one (a message, a receipt) counts in the sequence; a chat state does not.
    pub event: Event,
}

impl Change {
    /// This change as an item of `ms.MessagingEventNotification`'s `changes`. A chat state
    /// (typing) has no `sequence`: it is not a stored event, and clients tell stored events
    /// apart by their sequence (the schema requires one: a difference the tests name).
    pub fn to_json(&self) -> Value {
        let mut item = json!({
            "originatorId": self.originator_id,
            "serverTimestamp": self.server_timestamp.0,
            "event": self.event.to_json(),
            "dialogId": self.conversation_id,
            "originatorMetadata": {"id": self.originator_id, "role": self.originator_role.name()},
        });
        if self.event.is_stored() {
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
    pub conversation_id: ConversationId,
    pub consumer_id: ConsumerId,
    /// The agent concerned, when an agent took or returned the conversation.
    pub agent_id: Option<AgentId>,
}

/// The associated data a stored event's body is sealed with.
pub(super) fn event_seal_context(event_id: &str) -> Vec<u8> {
    format!("relay_event:{event_id}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(event: Value) -> String {
        match Event::check(&event, 16) {
            Err(RelayError::BadRequest(why)) => why,
            other => panic!("{event} was not refused: {other:?}"),
        }
    }

    #[test]
    fn an_accepted_event_is_written_back_as_the_platform_spells_it() {
        // Unknown fields are dropped; what is written reads back to the same event.
        let cases = [
            (
                json!({"type": "ContentEvent", "contentType": "text/plain", "message": "hi\n",
                       "eventId": "e1", "extra": 1}),
                json!({"type": "ContentEvent", "contentType": "text/plain", "message": "hi\n"}),
            ),
            (
                json!({"type": "AcceptStatusEvent", "status": "READ", "sequenceList": [3, 1]}),
                json!({"type": "AcceptStatusEvent", "status": "READ", "sequenceList": [3, 1]}),
            ),
            (
                json!({"type": "ChatStateEvent", "chatState": "COMPOSING", "message": "x"}),
                json!({"type": "ChatStateEvent", "chatState": "COMPOSING"}),
            ),
        ];
        for (sent, written) in cases {
            let event = Event::check(&sent, 16).unwrap();
            assert_eq!(event.to_json(), written);
            assert_eq!(Event::from_stored(&written), Some(event));
        }
        let receipt = Event::check(
            &json!({"type": "AcceptStatusEvent", "status": "ACCEPT", "sequenceList": [3, 9, 1]}),
            16,
        )
        .unwrap();
        assert_eq!(receipt.newest_receipt(), Some(9));
        assert!(receipt.is_stored());
        assert!(!Event::ChatState(ChatState::Gone).is_stored());
    }

    #[test]
    fn each_refusal_says_why() {
        let text =
            |m: &str| json!({"type": "ContentEvent", "contentType": "text/plain", "message": m});
        assert_eq!(refused(json!({})), "event needs a type");
        assert_eq!(
            refused(json!({"type": "RichContentEvent"})),
            "event type must be ContentEvent, AcceptStatusEvent or ChatStateEvent"
        );
        assert_eq!(
            refused(json!({"type": "ContentEvent", "contentType": "text/html", "message": "x"})),
            "contentType must be text/plain"
        );
        assert_eq!(refused(text("")), "message is empty");
        assert_eq!(
            refused(text(&"x".repeat(17))),
            "message is longer than 16 bytes"
        );
        assert_eq!(refused(text("a\u{7}b")), "message holds control characters");
        for list in [json!([]), json!([-1]), json!([1.5]), json!(["1"])] {
            assert_eq!(
                refused(
                    json!({"type": "AcceptStatusEvent", "status": "READ", "sequenceList": list})
                ),
                "sequenceList must hold 1 to 1000 sequences"
            );
        }
        assert_eq!(
            refused(json!({"type": "AcceptStatusEvent", "status": "SEEN", "sequenceList": [1]})),
            "status must be ACCEPT or READ"
        );
        assert_eq!(
            refused(json!({"type": "ChatStateEvent", "chatState": "TYPING"})),
            "chatState must be ACTIVE, INACTIVE, GONE, COMPOSING or PAUSE"
        );
    }

    #[test]
    fn roles_and_chat_states_read_back_by_name() {
        for role in [Role::Consumer, Role::AssignedAgent] {
            assert_eq!(Role::from_name(role.name()), role);
        }
        for state in [
            ChatState::Active,
            ChatState::Inactive,
            ChatState::Gone,
            ChatState::Composing,
            ChatState::Pause,
        ] {
            assert_eq!(ChatState::from_name(state.name()), Some(state));
        }
        assert_eq!(ChatState::from_name("composing"), None);
    }
}
