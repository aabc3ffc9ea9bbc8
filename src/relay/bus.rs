//! Fan-out of committed events to the sockets following a conversation, and of conversation
//! state changes to the sockets watching a consumer's conversations.
//!
//! A broadcast channel per conversation with followers, made on first subscription and dropped
//! with the last. The bus may drop events for a follower that falls behind (a bounded channel
//! must); a subscription (`subscriptions`) never does: it detects the gap and reads what it missed from the store, so
//! a subscriber sees every stored event exactly once, in order.
//!
//! With several nodes on one PostgreSQL, what is published here also goes to the other nodes
//! (`fanout`), and what they publish comes in as hints: "sequence n of this conversation is
//! committed" makes followers read it from the store, "notifications may have been lost" makes
//! every follower and watcher re-check the store. The bus never hands message text to another
//! node.

use crate::ids::{ConsumerId, ConversationId};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast;

use super::vocabulary::{Change, StateChange};

/// Events a follower may be behind by before it reads from the store instead.
const CHANNEL_CAPACITY: usize = 256;

/// What a conversation's followers are sent.
#[derive(Debug, Clone)]
pub(super) enum Live {
    /// An event published on this node, or a chat state from another node.
    Change(Arc<Change>),
    /// Another node committed the event with this sequence: it is in the store.
    Committed(i64),
    /// Notifications from other nodes may have been lost: check the store.
    Recheck,
}

/// What state watchers are sent.
#[derive(Debug, Clone)]
enum StateSignal {
    Changed(StateChange),
    /// Notifications from other nodes may have been lost: read the list again.
    Resync,
}

/// A watcher's receiver of conversation state changes. Reads like a broadcast receiver:
/// `Err(Lagged(_))` means changes may have been missed (this watcher fell behind, or another
/// node's notifications were lost), so the watcher reads its list from the store again.
pub struct StateChanges(broadcast::Receiver<StateSignal>);

impl StateChanges {
    /// The next change. Cancel-safe, as `broadcast::Receiver::recv` is.
    pub async fn recv(&mut self) -> Result<StateChange, broadcast::error::RecvError> {
        match self.0.recv().await {
            Ok(StateSignal::Changed(change)) => Ok(change),
            Ok(StateSignal::Resync) => Err(broadcast::error::RecvError::Lagged(0)),
            Err(e) => Err(e),
        }
    }
}

/// A follower's live events of one conversation (see [`Bus::follower`]).
pub struct LiveEvents(pub(super) broadcast::Receiver<Live>);

/// Where the hub hands what must reach the other nodes (fan-out implements it, over
/// PostgreSQL); the hub knows nothing of how.
pub(super) trait Outward: Send + Sync {
    /// A committed event or a chat state published on this node. Committed events were told
    /// inside their transaction already ([`Outward::event_notice`]).
    fn change(&self, change: &Change);
    /// The channel and the payload that tell the other nodes, inside the append's transaction,
    /// that `seq` of `conversation_id` is committed (`None`: nothing to send).
    fn event_notice(&self, conversation_id: &ConversationId, seq: i64) -> Option<String>;
    fn channel(&self) -> &'static str;
    /// A conversation's state changed on this node.
    fn state(&self, change: &StateChange);
}

#[derive(Default)]
pub struct Bus {
    conversations: Mutex<HashMap<ConversationId, broadcast::Sender<Live>>>,
    /// Conversations whose state changed (opened, closed, taken), with their consumer.
    states: Mutex<Option<broadcast::Sender<StateSignal>>>,
    /// Where this node's publications go to reach the other nodes (PostgreSQL only).
    outbound: Option<Box<dyn Outward>>,
}

impl Bus {
    /// A bus whose publications also reach the other nodes through `outbound`.
    pub(super) fn with_outbound(outbound: impl Outward + 'static) -> Bus {
        Bus {
            outbound: Some(Box::new(outbound)),
            ..Bus::default()
        }
    }

    /// A follower's live events of a conversation, from now on: taken before the follow's
    /// answer is sent, so whatever is published after the answer (a typing state, which is not
    /// stored and so cannot be caught up) reaches it.
    pub fn follower(&self, conversation_id: &ConversationId) -> LiveEvents {
        LiveEvents(self.subscribe(conversation_id))
    }

    /// Live events of a conversation from now on.
    fn subscribe(&self, conversation_id: &ConversationId) -> broadcast::Receiver<Live> {
        let mut map = self.conversations.lock().unwrap_or_else(|e| e.into_inner());
        // Channels whose followers all left are dropped here (and on publish), so the map
        // holds only conversations someone follows.
        if map.len() >= 1024 && map.len().is_power_of_two() {
            map.retain(|_, s| s.receiver_count() > 0);
        }
        map.entry(conversation_id.clone())
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
            .subscribe()
    }

    /// How many follow a conversation on this node.
    #[cfg(test)]
    pub fn subscribers(&self, conversation_id: &ConversationId) -> usize {
        self.conversations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(conversation_id)
            .map_or(0, |s| s.receiver_count())
    }

    /// Whether this node has a channel for a conversation (someone followed it).
    #[cfg(test)]
    pub(super) fn has_channel(&self, conversation_id: &ConversationId) -> bool {
        self.conversations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(conversation_id)
    }

    /// Hands a committed event (or a chat state) to the followers of its conversation, here
    /// and on the other nodes.
    pub fn publish(&self, change: Change) {
        if let Some(outbound) = &self.outbound {
            outbound.change(&change);
        }
        let conversation_id = change.conversation_id.clone();
        self.deliver(&conversation_id, Live::Change(Arc::new(change)));
    }

    /// Where an append sends its notice to the other nodes inside its transaction (see
    /// [`Bus::event_notice`]); `None` on one node.
    pub fn notice_channel(&self) -> Option<&'static str> {
        self.outbound.as_ref().map(|o| o.channel())
    }

    /// The notice for the other nodes that `seq` of `conversation_id` is committed.
    pub fn event_notice(&self, conversation_id: &ConversationId, seq: i64) -> Option<String> {
        self.outbound
            .as_ref()
            .and_then(|o| o.event_notice(conversation_id, seq))
    }

    /// To the followers of a conversation on this node; nothing when nobody here follows it.
    fn deliver(&self, conversation_id: &ConversationId, live: Live) {
        let mut map = self.conversations.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = map.get(conversation_id) {
            if sender.receiver_count() == 0 {
                map.remove(conversation_id);
            } else {
                let _ = sender.send(live);
            }
        }
    }

    /// Another node committed an event: followers here read it from the store.
    pub(super) fn committed_elsewhere(&self, conversation_id: &ConversationId, seq: i64) {
        self.deliver(conversation_id, Live::Committed(seq));
    }

    /// A chat state published on another node: to the followers here only.
    pub(super) fn chat_state_elsewhere(&self, change: Change) {
        let conversation_id = change.conversation_id.clone();
        self.deliver(&conversation_id, Live::Change(Arc::new(change)));
    }

    /// A state change on another node: to the watchers here only.
    pub(super) fn state_changed_elsewhere(&self, change: StateChange) {
        self.send_state(StateSignal::Changed(change));
    }

    /// Notifications from other nodes may have been lost (the listener reconnected): every
    /// follower and watcher on this node checks the store again.
    pub(super) fn recheck_all(&self) {
        self.conversations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, sender| sender.send(Live::Recheck).is_ok());
        self.send_state(StateSignal::Resync);
    }

    /// Conversation state changes from now on.
    pub fn state_changes(&self) -> StateChanges {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        StateChanges(
            states
                .get_or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
                .subscribe(),
        )
    }

    /// Tells state watchers, here and on the other nodes, that a conversation of
    /// `consumer_id` changed.
    pub fn state_changed(&self, conversation_id: &ConversationId, consumer_id: &ConsumerId) {
        self.publish_state(StateChange {
            conversation_id: conversation_id.clone(),
            consumer_id: consumer_id.clone(),
            agent_id: None,
        });
    }

    /// Tells state watchers, here and on the other nodes, of a state change.
    pub fn publish_state(&self, change: StateChange) {
        if let Some(outbound) = &self.outbound {
            outbound.state(&change);
        }
        self.send_state(StateSignal::Changed(change));
    }

    fn send_state(&self, signal: StateSignal) {
        if let Some(sender) = self
            .states
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            let _ = sender.send(signal);
        }
    }
}
