//! Fan-out of committed events to the sockets following a conversation, and of conversation
//! state changes to the sockets watching a consumer's conversations.
//!
//! A broadcast channel per conversation with followers, made on first subscription and dropped
//! with the last. The bus may drop events for a follower that falls behind (a bounded channel
//! must); [`follow`] never does: it detects the gap and reads what it missed from the store, so
//! a subscriber sees every stored event exactly once, in order.
//!
//! With several nodes on one PostgreSQL, what is published here also goes to the other nodes
//! (`fanout`), and what they publish comes in as hints: "sequence n of this conversation is
//! committed" makes followers read it from the store, "notifications may have been lost" makes
//! every follower and watcher re-check the store. The bus never hands message text to another
//! node.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::conversations::{Conversations, Participant, RelayError};
use super::fanout::Outbound;
use super::protocol::notification;

/// Events a follower may be behind by before it reads from the store instead.
const CHANNEL_CAPACITY: usize = 256;
/// Events read from the store at once when catching up (one frame).
const REPLAY_BATCH: i64 = 50;
/// How long a subscription waits for room in its socket's queue before the socket is closed.
const SLOW_CLIENT: Duration = Duration::from_secs(30);
/// Close code for a socket that does not read what it is sent.
pub const TOO_SLOW: u16 = 4408;
/// Close code when a subscription cannot go on (the store failed): reconnect with `fromSeq`.
pub const SUBSCRIPTION_FAILED: u16 = 1011;

/// What subscriptions hand their socket: a frame, holding its share of the socket's byte
/// budget until written, or a request to close.
pub enum Outgoing {
    Frame(String, OwnedSemaphorePermit),
    Close(u16, &'static str),
}

/// A socket's queue, bounded in bytes: a client that does not read cannot make the daemon
/// hold more than the budget for it; after [`SLOW_CLIENT`] it is closed instead.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Outgoing>,
    budget: Arc<Semaphore>,
    capacity: u32,
}

impl Outbox {
    pub fn new(capacity_bytes: usize) -> (Outbox, mpsc::Receiver<Outgoing>) {
        let capacity = u32::try_from(capacity_bytes).unwrap_or(u32::MAX).max(1);
        let (tx, rx) = mpsc::channel(4096);
        (
            Outbox {
                tx,
                budget: Arc::new(Semaphore::new(capacity as usize)),
                capacity,
            },
            rx,
        )
    }

    /// Queues a frame. `false` when the subscription should end: cancelled, the socket gone,
    /// or the client too slow (then the socket is asked to close).
    pub async fn send(&self, frame: String, cancel: &CancellationToken) -> bool {
        let need = u32::try_from(frame.len())
            .unwrap_or(u32::MAX)
            .clamp(1, self.capacity);
        let permit = tokio::select! {
            biased;
            _ = cancel.cancelled() => return false,
            p = tokio::time::timeout(SLOW_CLIENT, self.budget.clone().acquire_many_owned(need)) => p,
        };
        match permit {
            Ok(Ok(permit)) => self.tx.send(Outgoing::Frame(frame, permit)).await.is_ok(),
            Ok(Err(_)) => false,
            Err(_) => {
                self.close(TOO_SLOW, "the socket does not read what it is sent");
                false
            }
        }
    }

    /// Asks the socket to close.
    pub fn close(&self, code: u16, reason: &'static str) {
        let _ = self.tx.try_send(Outgoing::Close(code, reason));
    }
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

/// What a conversation's followers are sent.
#[derive(Debug, Clone)]
enum Live {
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
pub struct LiveEvents(broadcast::Receiver<Live>);

#[derive(Default)]
pub struct Bus {
    conversations: Mutex<HashMap<String, broadcast::Sender<Live>>>,
    /// Conversations whose state changed (opened, closed, taken), with their consumer.
    states: Mutex<Option<broadcast::Sender<StateSignal>>>,
    /// Where this node's publications go to reach the other nodes (PostgreSQL only).
    outbound: Option<Outbound>,
}

impl Bus {
    /// A bus whose publications also reach the other nodes through `outbound`.
    pub(super) fn with_outbound(outbound: Outbound) -> Bus {
        Bus {
            outbound: Some(outbound),
            ..Bus::default()
        }
    }

    /// A follower's live events of a conversation, from now on: taken before the follow's
    /// answer is sent, so whatever is published after the answer (a typing state, which is not
    /// stored and so cannot be caught up) reaches it.
    pub fn follower(&self, conversation_id: &str) -> LiveEvents {
        LiveEvents(self.subscribe(conversation_id))
    }

    /// Live events of a conversation from now on.
    fn subscribe(&self, conversation_id: &str) -> broadcast::Receiver<Live> {
        let mut map = self.conversations.lock().unwrap_or_else(|e| e.into_inner());
        // Channels whose followers all left are dropped here (and on publish), so the map
        // holds only conversations someone follows.
        if map.len() >= 1024 && map.len().is_power_of_two() {
            map.retain(|_, s| s.receiver_count() > 0);
        }
        map.entry(conversation_id.to_string())
            .or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
            .subscribe()
    }

    /// How many follow a conversation on this node.
    #[cfg(test)]
    pub fn subscribers(&self, conversation_id: &str) -> usize {
        self.conversations
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(conversation_id)
            .map_or(0, |s| s.receiver_count())
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

    /// To the followers of a conversation on this node; nothing when nobody here follows it.
    fn deliver(&self, conversation_id: &str, live: Live) {
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
    pub(super) fn committed_elsewhere(&self, conversation_id: &str, seq: i64) {
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
    pub fn state_changed(&self, conversation_id: &str, consumer_id: &str) {
        self.publish_state(StateChange {
            conversation_id: conversation_id.to_string(),
            consumer_id: consumer_id.to_string(),
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

/// Sends a conversation's events from `from_seq` to `out` until `cancel` or the socket goes:
/// the stored ones first, then live ones, with no gap and no repeat across the switch (the
/// live subscription, `live`, starts before the store is read, and before the follow is
/// answered; anything seen twice is skipped by sequence, anything missed is read from the
/// store). If the store fails, the socket is
/// closed (1011) so the client reconnects and catches up: a subscription never dies silently.
pub async fn follow(
    conversations: Arc<Conversations>,
    who: Participant,
    conversation_id: String,
    from_seq: i64,
    out: Outbox,
    cancel: CancellationToken,
    live: LiveEvents,
) {
    let result = follow_until_done(
        &conversations,
        &who,
        &conversation_id,
        from_seq,
        &out,
        &cancel,
        live.0,
    )
    .await;
    if let Err(e) = result {
        tracing::warn!(error = %e, "a subscription to a conversation failed; closing its socket");
        out.close(
            SUBSCRIPTION_FAILED,
            "the subscription failed; reconnect with fromSeq",
        );
    }
}

async fn follow_until_done(
    conversations: &Conversations,
    who: &Participant,
    conversation_id: &str,
    from_seq: i64,
    out: &Outbox,
    cancel: &CancellationToken,
    mut live: broadcast::Receiver<Live>,
) -> Result<(), RelayError> {
    // An agent loses a conversation it transfers: its state changes are watched, and the
    // subscription ends once the agent may no longer see it. (A consumer's never changes.)
    let mut states = match who {
        Participant::Agent(_) => {
            let states = conversations.bus().state_changes();
            conversations.get(who, conversation_id).await?;
            Some(states)
        }
        Participant::Consumer(_) => None,
    };
    let mut next = from_seq.max(0);
    // Sends stored events from `next` on; ends the subscription when cancelled or gone.
    macro_rules! catch_up {
        () => {
            loop {
                let batch = tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return Ok(()),
                    b = conversations.events(conversation_id, next, REPLAY_BATCH) => b?,
                };
                if let Some(last) = batch.last() {
                    next = last.seq + 1;
                    if !out.send(messaging_notification(&batch), cancel).await {
                        return Ok(());
                    }
                }
                if (batch.len() as i64) < REPLAY_BATCH {
                    break;
                }
            }
        };
    }
    catch_up!();
    loop {
        let received = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            changed = async {
                match states.as_mut() {
                    Some(states) => states.recv().await,
                    None => std::future::pending().await,
                }
            } => {
                let concerned = match &changed {
                    Ok(change) => change.conversation_id == conversation_id,
                    Err(broadcast::error::RecvError::Lagged(_)) => true,
                    Err(broadcast::error::RecvError::Closed) => {
                        states = None;
                        false
                    }
                };
                if concerned {
                    match conversations.get(who, conversation_id).await {
                        Ok(_) => {}
                        Err(RelayError::NotFound) => return Ok(()),
                        Err(e) => return Err(e),
                    }
                }
                continue;
            }
            r = live.recv() => r,
        };
        match received {
            // A chat state is sent as it comes; it has no sequence (see `Change::to_json`).
            Ok(Live::Change(change)) if !change.stored => {
                if !out
                    .send(messaging_notification(&[(*change).clone()]), cancel)
                    .await
                {
                    return Ok(());
                }
            }
            Ok(Live::Change(change)) if change.seq < next => {}
            Ok(Live::Change(change)) if change.seq == next => {
                next += 1;
                if !out
                    .send(messaging_notification(&[(*change).clone()]), cancel)
                    .await
                {
                    return Ok(());
                }
            }
            // A later event arrived first (two writers): the store has everything committed.
            Ok(Live::Change(_)) => catch_up!(),
            // Another node committed it (its notification is sent after the commit): read it,
            // and anything before it, from the store.
            Ok(Live::Committed(seq)) if seq < next => {}
            Ok(Live::Committed(_) | Live::Recheck) => catch_up!(),
            // This follower fell behind the live channel: the same, from the store.
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::debug!(missed, "a follower fell behind; catching up from the store");
                catch_up!()
            }
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::fake::FakeClock;
    use crate::relay::conversations::Conversations;
    use crate::store::Store;
    use crate::store::seal::DataKeys;

    /// Two nodes on one store, each with its own bus. A follower on the first gets what the
    /// second commits when a hint says so, or when told to re-check (after a listener
    /// reconnect); stale hints and hints for conversations nobody follows cost nothing.
    #[tokio::test]
    async fn hints_from_another_node_make_a_follower_read_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_temporary(dir.path()).await;
        let keys = Arc::new(DataKeys::generate_for_test());
        let node = |store: Store| {
            Arc::new(Conversations::new(
                "acct".into(),
                store,
                keys.clone(),
                Arc::new(Bus::default()),
                Arc::new(FakeClock::new()),
                1000,
            ))
        };
        let (here, there) = (node(store.clone()), node(store));
        let who = Participant::Consumer("c1".into());
        let (conv, _) = there.request("c1").await.unwrap();
        let publish_there = |i: i64| {
            let there = there.clone();
            let (who, conv) = (who.clone(), conv.id.clone());
            async move {
                let event = there
                    .check_event(&json!({"type": "ContentEvent", "contentType": "text/plain",
                        "message": format!("m{i}")}))
                    .unwrap();
                assert_eq!(
                    there.publish(&who, &conv, event, None).await.unwrap(),
                    Some(i)
                );
            }
        };
        let (outbox, mut queue) = Outbox::new(100_000);
        let cancel = CancellationToken::new();
        let follower = tokio::spawn(follow(
            here.clone(),
            who.clone(),
            conv.id.clone(),
            0,
            outbox,
            cancel.clone(),
            here.bus().follower(&conv.id),
        ));
        while here.bus().subscribers(&conv.id) == 0 {
            tokio::task::yield_now().await;
        }
        let mut next_frame = async || {
            let Some(Outgoing::Frame(frame, _permit)) = queue.recv().await else {
                panic!("the follower closed the socket");
            };
            let frame: Value = serde_json::from_str(&frame).unwrap();
            frame["body"]["changes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["sequence"].as_i64().unwrap())
                .collect::<Vec<_>>()
        };

        for i in 0..3 {
            publish_there(i).await;
        }
        here.bus().committed_elsewhere(&conv.id, 2);
        assert_eq!(next_frame().await, vec![0, 1, 2]);
        // Stale: already delivered.
        here.bus().committed_elsewhere(&conv.id, 1);
        for i in 3..5 {
            publish_there(i).await;
        }
        // Its notifications were lost: a re-check finds them.
        here.bus().recheck_all();
        assert_eq!(next_frame().await, vec![3, 4]);
        publish_there(5).await;
        here.bus().committed_elsewhere(&conv.id, 5);
        assert_eq!(next_frame().await, vec![5]);

        // Nobody here follows this one: no channel is made, nothing is read.
        here.bus().committed_elsewhere("another-conversation", 0);
        assert!(
            !here
                .bus()
                .conversations
                .lock()
                .unwrap()
                .contains_key("another-conversation")
        );
        cancel.cancel();
        follower.await.unwrap();
    }

    /// A follower whose socket does not read: its task blocks on the byte budget, the live
    /// channel overflows (600 events > 256), and it catches up from the store. Every event
    /// arrives once, in order, chat states included in between.
    #[tokio::test]
    async fn a_follower_that_falls_behind_catches_up_from_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let conversations = Arc::new(Conversations::new(
            "acct".into(),
            Store::open_temporary(dir.path()).await,
            Arc::new(DataKeys::generate_for_test()),
            Arc::new(Bus::default()),
            Arc::new(FakeClock::new()),
            1000,
        ));
        let who = Participant::Consumer("c1".into());
        let (conv, _) = conversations.request("c1").await.unwrap();
        let (outbox, mut queue) = Outbox::new(1000);
        let cancel = CancellationToken::new();
        let follower = tokio::spawn(follow(
            conversations.clone(),
            who.clone(),
            conv.id.clone(),
            0,
            outbox,
            cancel.clone(),
            conversations.bus().follower(&conv.id),
        ));
        // Let the follower subscribe before anything is published.
        while conversations.bus().subscribers(&conv.id) == 0 {
            tokio::task::yield_now().await;
        }
        for i in 0..600 {
            let event = conversations
                .check_event(&json!({"type": "ContentEvent", "contentType": "text/plain",
                    "message": format!("m{i}")}))
                .unwrap();
            conversations
                .publish(&who, &conv.id, event, None)
                .await
                .unwrap();
        }
        let typing = conversations
            .check_event(&json!({"type": "ChatStateEvent", "chatState": "COMPOSING"}))
            .unwrap();
        conversations
            .publish(&who, &conv.id, typing, None)
            .await
            .unwrap();

        let mut seen = Vec::new();
        let mut typing = None;
        while typing.is_none() {
            let Some(Outgoing::Frame(frame, _permit)) = queue.recv().await else {
                panic!("the follower closed the socket");
            };
            let frame: Value = serde_json::from_str(&frame).unwrap();
            for change in frame["body"]["changes"].as_array().unwrap() {
                if change["event"]["type"] == "ChatStateEvent" {
                    typing = Some(change.clone());
                } else {
                    seen.push(change["sequence"].as_i64().unwrap());
                }
            }
        }
        assert_eq!(seen, (0..600).collect::<Vec<i64>>());
        // The chat state is not a stored event: it carries no sequence a client could take
        // for one (and drop the stored event that has it).
        let typing = typing.unwrap();
        assert!(typing.get("sequence").is_none(), "{typing}");
        cancel.cancel();
        follower.await.unwrap();
    }
}
