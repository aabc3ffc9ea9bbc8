//! Away pushes: when an agent's message is committed and the consumer does not acknowledge it
//! in time, one push goes out per conversation burst, through the push proxy's door (so the
//! app's mask text, collapse and retry rules apply), to every device the consumer registered.
//!
//! Nothing of it lives only in memory. The agent's message writes, in its own transaction, one
//! outbox item per conversation ([`Away::item`]; a message while one is pending renews it), due
//! after the shorter of `relay.away.ack_delay` and `relay.away.burst`. When it is due, on
//! whichever node claims it ([`Away::attempt`]), everything is read from the store: the
//! conversation (closed: nothing), the agent messages after the consumer's newest receipt
//! (ACCEPT or READ, from any node), and whether the consumer has a socket open on any node. A
//! connected consumer has `ack_delay` from the burst's first message to acknowledge, an away
//! one `burst`; then one push shows the newest unread message, with the number unread as the
//! badge. A restart (graceful or `kill -9`) between the message and the push still sends it
//! (at least once: a node killed between the push and its record sends it again, collapsed
//! on the phone). A token the provider reports dead is removed.
//!
//! Presence: each node records the consumers it holds sockets of in the store (only when the
//! first opens and the last closes, in order, by one task) and keeps its rows alive; a node that
//! dies leaves rows that expire after [`PRESENCE_TTL`].

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use super::metrics::ResultLabel;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::vocabulary::{Event, Role, event_seal_context};
use crate::clock::{Clock, UnixMillis};
use crate::dispatch::{Handler, Verdict};
use crate::ids::{ConsumerId, ConversationId};
use crate::push::{Attempt, DeviceToken, Provider, PushError, PushRequest, PushService};
use crate::store::Store;
use crate::store::devices::PushRegistration;
use crate::store::outbox::{NewOutboxItem, OutboxItem};
use crate::store::relay::ConversationRow;
use crate::store::seal::DataKeys;

/// The outbox kind of an away push.
const KIND: &str = "away_push";
/// Stored events read, around the burst's newest message, for receipts and unread messages.
const EVENTS_READ: i64 = 500;
/// A node's presence rows outlive its last refresh by this long.
const PRESENCE_TTL: Duration = Duration::from_secs(60);
/// How often a node refreshes its presence rows.
const PRESENCE_REFRESH: Duration = Duration::from_secs(20);
/// Presence changes waiting for the store; beyond, one is dropped (logged): the consumer then
/// counts as away, or present, until its next connection.
const PRESENCE_QUEUE: usize = 10_000;
/// Attempts at an away push no device got for a passing reason.
const PUSH_ATTEMPTS: i64 = 3;
/// Attempts at an away push while the store cannot answer.
const STORE_ATTEMPTS: i64 = 6;

/// The associated data a device token is sealed with.
pub fn seal_context(account: &str, consumer_id: &ConsumerId, app: &str) -> Vec<u8> {
    format!("push_registration:{account}:{consumer_id}:{app}").into_bytes()
}

/// The away-push service of the relay. Shared (`Arc`).
pub struct Away {
    account: String,
    push: PushService,
    store: Store,
    data_keys: Arc<DataKeys>,
    clock: Arc<dyn Clock>,
    ack_delay: Duration,
    burst: Duration,
    /// Consumers with a live socket on this node, and how many.
    online: Mutex<HashMap<ConsumerId, usize>>,
    /// First-socket-opened (`true`) and last-socket-closed (`false`), to the store in order.
    presence_changes: Option<mpsc::Sender<(ConsumerId, bool)>>,
    stopping: CancellationToken,
    tasks: TaskTracker,
    /// Away pushes by result (`brandgate_relay_away_pushes_total`).
    sent: Family<ResultLabel, Counter>,
}

/// Counts a consumer as connected while it lives.
pub struct Presence {
    away: Arc<Away>,
    consumer_id: ConsumerId,
}

impl Drop for Presence {
    fn drop(&mut self) {
        // Under the lock, so the store sees first-opened and last-closed in their order.
        let mut online = self.away.online.lock().unwrap_or_else(|e| e.into_inner());
        match online.get_mut(&self.consumer_id) {
            Some(n) if *n > 1 => *n -= 1,
            Some(_) => {
                online.remove(&self.consumer_id);
                self.away.presence_changed(&self.consumer_id, false);
            }
            None => {}
        }
    }
}

impl Away {
    /// Starts the presence writer (inside a tokio runtime; without one, presence is not
    /// recorded).
    pub fn new(
        account: String,
        push: PushService,
        store: Store,
        data_keys: Arc<DataKeys>,
        clock: Arc<dyn Clock>,
        ack_delay: Duration,
        burst: Duration,
    ) -> Away {
        // This node's name in the presence rows (new at every start).
        let node = uuid::Uuid::new_v4().to_string();
        let stopping = CancellationToken::new();
        let tasks = TaskTracker::new();
        let presence_changes = tokio::runtime::Handle::try_current().ok().map(|_| {
            let (tx, rx) = mpsc::channel(PRESENCE_QUEUE);
            tasks.spawn(write_presence(
                rx,
                store.clone(),
                clock.clone(),
                account.clone(),
                node.clone(),
                stopping.clone(),
            ));
            tx
        });
        tasks.close();
        Away {
            account,
            push,
            store,
            data_keys,
            clock,
            ack_delay,
            burst,
            online: Mutex::new(HashMap::new()),
            presence_changes,
            stopping,
            tasks,
            sent: Family::default(),
        }
    }

    /// Counts each away push's result in `sent` (the relay's metrics).
    pub fn counting_in(mut self, sent: Family<ResultLabel, Counter>) -> Away {
        self.sent = sent;
        self
    }

    pub fn push(&self) -> &PushService {
        &self.push
    }

    /// Marks the consumer connected until the returned guard is dropped.
    pub fn connected(self: &Arc<Self>, consumer_id: &ConsumerId) -> Presence {
        // Under the lock, so the store sees first-opened and last-closed in their order.
        let mut online = self.online.lock().unwrap_or_else(|e| e.into_inner());
        let n = online.entry(consumer_id.clone()).or_default();
        *n += 1;
        if *n == 1 {
            self.presence_changed(consumer_id, true);
        }
        drop(online);
        Presence {
            away: self.clone(),
            consumer_id: consumer_id.clone(),
        }
    }

    fn presence_changed(&self, consumer_id: &ConsumerId, present: bool) {
        if let Some(tx) = &self.presence_changes
            && tx.try_send((consumer_id.clone(), present)).is_err()
        {
            tracing::warn!(
                "too many presence changes waiting for the store; one was dropped (away pushes may come early or late for that consumer)"
            );
        }
    }

    /// The outbox item an agent's message in `conversation` writes at `now`: one per
    /// conversation while pending (a later message renews it). `None` when no push app is
    /// configured.
    pub fn item(&self, conversation: &ConversationRow, now: UnixMillis) -> Option<NewOutboxItem> {
        if self.push.app_count() == 0 {
            return None;
        }
        let key = format!("away:{}", conversation.id);
        Some(NewOutboxItem {
            id: uuid::Uuid::new_v4().to_string(),
            kind: KIND.to_string(),
            lane: key.clone(),
            dedupe_key: Some(key),
            payload: json!({"consumerId": conversation.consumer_id})
                .to_string()
                .into_bytes(),
            created_at: now,
            next_at: now.after(self.ack_delay.min(self.burst)),
        })
    }

    /// The item is due: push if something is still unread and the consumer had its time.
    pub async fn attempt(&self, item: &OutboxItem) -> Verdict {
        let Some(conversation_id) = &item.conversation_id else {
            return Verdict::Drop {
                why: "an away push names no conversation",
            };
        };
        let conversation = match self.store.get_conversation(conversation_id).await {
            Ok(Some(c)) if c.open => c,
            Ok(_) => {
                return Verdict::Drop {
                    why: "the conversation is closed",
                };
            }
            Err(e) => return store_trouble(item, e),
        };
        let newest = item.seq.unwrap_or(conversation.last_seq);
        let unread = match self.unread(conversation_id, newest).await {
            Ok(u) => u,
            Err(e) => return store_trouble(item, e),
        };
        let Some(last) = unread.last() else {
            return Verdict::Delivered;
        };
        let now = UnixMillis::now(&*self.clock);
        let present = match self
            .store
            .is_consumer_present(&self.account, &conversation.consumer_id, now)
            .await
        {
            Ok(p) => p,
            Err(e) => return store_trouble(item, e),
        };
        let due = item
            .created_at
            .after(if present { self.ack_delay } else { self.burst });
        if now < due {
            return Verdict::Defer { until: due };
        }
        let registrations = match self
            .store
            .list_push_registrations(&self.account, &conversation.consumer_id)
            .await
        {
            Ok(r) => r,
            Err(e) => return store_trouble(item, e),
        };
        let mut sent = Vec::with_capacity(registrations.len());
        for registration in &registrations {
            let result = self
                .send(
                    registration,
                    conversation_id,
                    unread.len(),
                    &last.1,
                    last.0,
                    &item.id,
                )
                .await;
            let label = match result {
                Sent::Delivered => "delivered",
                Sent::Transient => "transient",
                Sent::NotForThisDevice => "not_for_this_device",
            };
            self.sent
                .get_or_create(&ResultLabel { result: label })
                .inc();
            sent.push(result);
        }
        // Tried again (a few times: a late push is little use) only when no device got it and
        // trying again may help; a device that got it may get it again (collapsed on the phone).
        let again = !sent.contains(&Sent::Delivered) && sent.contains(&Sent::Transient);
        if again && item.attempts + 1 < PUSH_ATTEMPTS {
            return Verdict::Retry {
                wait: Duration::from_secs(10),
                error: "no device got the away push".into(),
            };
        }
        Verdict::Delivered
    }

    /// The agent messages (sequence, text) after the consumer's newest receipt, in the stored
    /// events around `newest`, oldest first.
    async fn unread(
        &self,
        conversation_id: &ConversationId,
        newest: i64,
    ) -> Result<Vec<(i64, String)>, crate::store::StoreError> {
        let from = (newest - EVENTS_READ / 2 + 1).max(0);
        let rows = self
            .store
            .list_events(conversation_id, from, EVENTS_READ)
            .await?;
        let mut acknowledged = -1;
        let mut messages = Vec::new();
        for r in &rows {
            let context = event_seal_context(&r.event_id);
            let Some(event) = self
                .data_keys
                .open(&context, &r.sealed)
                .ok()
                .and_then(|plain| serde_json::from_slice::<Value>(plain.expose()).ok())
                .and_then(|body| Event::from_stored(&body))
            else {
                continue;
            };
            match (Role::from_name(&r.originator_role), event) {
                (Role::Consumer, event) => {
                    if let Some(seq) = event.newest_receipt() {
                        acknowledged = acknowledged.max(seq);
                    }
                }
                (_, Event::Content { message }) => messages.push((r.seq, message.to_string())),
                _ => {}
            }
        }
        messages.retain(|(seq, _)| *seq > acknowledged);
        Ok(messages)
    }

    async fn send(
        &self,
        registration: &PushRegistration,
        conversation_id: &ConversationId,
        badge: usize,
        text: &str,
        seq: i64,
        item_id: &str,
    ) -> Sent {
        let Some(provider) = Provider::from_name(&registration.provider) else {
            return Sent::NotForThisDevice;
        };
        let context = seal_context(
            &registration.account,
            &registration.consumer_id,
            &registration.app,
        );
        let token = match self.data_keys.open(&context, &registration.token_sealed) {
            Ok(t) => String::from_utf8_lossy(t.expose()).into_owned(),
            Err(e) => {
                tracing::warn!(error = %e, app = %registration.app, "a push registration cannot be opened");
                return Sent::NotForThisDevice;
            }
        };
        let mut request = PushRequest::text(provider, DeviceToken::new(token), Some(text.into()));
        request.meta.conversation_id = Some(conversation_id.to_string());
        request.meta.dialog_id = Some(conversation_id.to_string());
        request.meta.badge = Some(u32::try_from(badge).unwrap_or(u32::MAX));
        request.meta.sequence = Some(seq);
        request.meta.brand_id = Some(self.account.clone());
        match self.push.send(&registration.app, request).await {
            Ok(d) if d.delivered() => {
                tracing::info!(app = %registration.app, conversation = %conversation_id, item = item_id, "an away push was delivered");
                Sent::Delivered
            }
            Ok(d) => {
                if let Attempt::DeadToken { .. } = d.last {
                    tracing::info!(app = %registration.app, "a consumer's device token is dead; its registration is removed");
                    if let Err(e) = self
                        .store
                        .delete_push_registration(
                            &registration.account,
                            &registration.consumer_id,
                            &registration.app,
                            Some(&registration.token_hash),
                        )
                        .await
                    {
                        tracing::warn!(error = %e, "cannot remove a dead push registration");
                    }
                    Sent::NotForThisDevice
                } else {
                    tracing::warn!(app = %registration.app, reason = %d.last.reason(), "an away push was not delivered");
                    match d.last {
                        Attempt::Transient { .. } => Sent::Transient,
                        _ => Sent::NotForThisDevice,
                    }
                }
            }
            Err(e) => {
                tracing::warn!(app = %registration.app, error = %e, "an away push could not be sent");
                match e {
                    PushError::Overloaded
                    | PushError::ConcurrentAttemptFailed
                    | PushError::DeliveringElsewhere => Sent::Transient,
                    _ => Sent::NotForThisDevice,
                }
            }
        }
    }

    /// Stops recording presence and removes this node's rows. The caller bounds the wait.
    pub async fn shutdown(&self) {
        self.stopping.cancel();
        self.tasks.wait().await;
    }
}

/// What became of the away push for one device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Delivered,
    /// Not now (the provider, or this node, was busy or failing): trying again may help.
    Transient,
    /// Never for this device (dead token, refused, not readable, an app not served).
    NotForThisDevice,
}

/// The store cannot answer: the item is tried again shortly, a few times (a push much later
/// than its messages is no use).
fn store_trouble(item: &OutboxItem, e: crate::store::StoreError) -> Verdict {
    if item.attempts + 1 >= STORE_ATTEMPTS {
        tracing::warn!(error = %e, item = %item.id, "an away push was given up: the store could not answer");
        return Verdict::Drop {
            why: "the store could not answer",
        };
    }
    Verdict::Retry {
        wait: Duration::from_secs(5),
        error: e.to_string(),
    }
}

impl Handler for Arc<Away> {
    fn kind(&self) -> &'static str {
        KIND
    }

    /// While a push app is configured.
    fn serves(&self) -> bool {
        self.push.app_count() > 0
    }

    fn renewed_after(&self) -> Duration {
        self.ack_delay.min(self.burst)
    }

    fn attempt<'a>(
        &'a self,
        item: &'a OutboxItem,
    ) -> Pin<Box<dyn Future<Output = Verdict> + Send + 'a>> {
        Box::pin(Away::attempt(self, item))
    }
}

/// Applies presence changes in order, refreshes this node's rows, and removes them on stop.
async fn write_presence(
    mut changes: mpsc::Receiver<(ConsumerId, bool)>,
    store: Store,
    clock: Arc<dyn Clock>,
    account: String,
    node: String,
    stopping: CancellationToken,
) {
    let mut refresh = tokio::time::interval(PRESENCE_REFRESH);
    loop {
        tokio::select! {
            () = stopping.cancelled() => break,
            change = changes.recv() => {
                let Some((consumer, present)) = change else { break };
                let expires = UnixMillis::now(&*clock).after(PRESENCE_TTL);
                if let Err(e) = store
                    .set_consumer_present(&node, &account, &consumer, present, expires)
                    .await
                {
                    tracing::warn!(error = %e, "cannot record a consumer's presence");
                }
            }
            _ = refresh.tick() => {
                let now = UnixMillis::now(&*clock);
                if let Err(e) = store.refresh_node_presence(&node, now, now.after(PRESENCE_TTL)).await {
                    tracing::warn!(error = %e, "cannot refresh this node's presence rows");
                }
            }
        }
    }
    if let Err(e) = store
        .clear_node_presence(&node, UnixMillis::now(&*clock))
        .await
    {
        tracing::warn!(error = %e, "cannot remove this node's presence rows; they expire by themselves");
    }
}
