//! Fan-out of committed events to the sockets following a conversation, on this node.
//!
//! A broadcast channel per conversation with followers, made on first subscription and dropped
//! with the last. The bus may drop events for a follower that falls behind (a bounded channel
//! must); [`follow`] never does: it detects the gap and reads what it missed from the store, so
//! a subscriber sees every stored event exactly once, in order.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::conversations::{Conversations, RelayError};
use super::protocol::notification;

/// Events a follower may be behind by before it reads from the store instead.
const CHANNEL_CAPACITY: usize = 256;
/// Events read from the store at once when catching up.
const REPLAY_BATCH: i64 = 200;

/// One event of a conversation, as followers see it.
#[derive(Debug, Clone)]
pub struct Change {
    pub conversation_id: String,
    /// The event's sequence; for a chat state (not stored), the conversation's last one.
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
    /// This change as an item of `ms.MessagingEventNotification`'s `changes`.
    pub fn to_json(&self) -> Value {
        json!({
            "sequence": self.seq,
            "originatorId": self.originator_id,
            "serverTimestamp": self.server_timestamp,
            "event": self.event,
            "dialogId": self.conversation_id,
            "originatorMetadata": {"id": self.originator_id, "role": self.originator_role},
        })
    }
}

/// The frame carrying `changes`.
pub fn messaging_notification(changes: &[Change]) -> String {
    notification(
        "ms.MessagingEventNotification",
        json!({ "changes": changes.iter().map(Change::to_json).collect::<Vec<_>>() }),
    )
}

#[derive(Default)]
pub struct Bus {
    conversations: Mutex<HashMap<String, broadcast::Sender<Arc<Change>>>>,
    /// Ids of conversations whose state changed (opened, closed, taken).
    states: Mutex<Option<broadcast::Sender<String>>>,
}

impl Bus {
    /// Live events of a conversation from now on.
    pub fn subscribe(&self, conversation_id: &str) -> broadcast::Receiver<Arc<Change>> {
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

    /// Hands a committed event to the followers of its conversation on this node.
    pub fn publish(&self, change: Change) {
        let mut map = self.conversations.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(sender) = map.get(&change.conversation_id) {
            if sender.receiver_count() == 0 {
                map.remove(&change.conversation_id);
            } else {
                let _ = sender.send(Arc::new(change));
            }
        }
    }

    /// Conversation state changes (ids) from now on.
    pub fn state_changes(&self) -> broadcast::Receiver<String> {
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        states
            .get_or_insert_with(|| broadcast::channel(CHANNEL_CAPACITY).0)
            .subscribe()
    }

    /// Tells state followers that a conversation changed.
    pub fn state_changed(&self, conversation_id: &str) {
        if let Some(sender) = self
            .states
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            let _ = sender.send(conversation_id.to_string());
        }
    }

    /// A conversation closed: its state followers hear it.
    pub fn closed(&self, conversation_id: &str) {
        self.state_changed(conversation_id);
    }
}

/// Sends a conversation's events from `from_seq` to `out` until `cancel` or the receiver goes:
/// the stored ones first, then live ones, with no gap and no repeat across the switch (the
/// live subscription starts before the store is read; anything seen twice is skipped by
/// sequence, anything missed is read from the store).
pub async fn follow(
    conversations: Arc<Conversations>,
    conversation_id: String,
    from_seq: i64,
    out: mpsc::Sender<String>,
    cancel: CancellationToken,
) -> Result<(), RelayError> {
    let mut live = conversations.bus().subscribe(&conversation_id);
    let mut next = from_seq.max(0);
    // Sends stored events from `next` on; false when the socket is gone.
    macro_rules! catch_up {
        () => {
            loop {
                let batch = conversations
                    .events(&conversation_id, next, REPLAY_BATCH)
                    .await?;
                if let Some(last) = batch.last() {
                    next = last.seq + 1;
                    if out.send(messaging_notification(&batch)).await.is_err() {
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
            _ = cancel.cancelled() => return Ok(()),
            r = live.recv() => r,
        };
        match received {
            Ok(change) if !change.stored => {
                if out
                    .send(messaging_notification(&[(*change).clone()]))
                    .await
                    .is_err()
                {
                    return Ok(());
                }
            }
            Ok(change) if change.seq < next => {}
            Ok(change) if change.seq == next => {
                next += 1;
                if out
                    .send(messaging_notification(&[(*change).clone()]))
                    .await
                    .is_err()
                {
                    return Ok(());
                }
            }
            // A later event arrived first (two writers), or this follower fell behind: the
            // store has everything committed.
            Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => catch_up!(),
            Err(broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}
