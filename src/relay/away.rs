//! Away pushes: when an agent's message is committed and the consumer does not acknowledge it
//! in time, one push goes out per conversation burst, through the push proxy's door (so the
//! app's mask text, collapse and retry rules apply), to every device the consumer registered.
//!
//! A consumer with a live socket on this node has `relay.away.ack_delay` to send an
//! `AcceptStatusEvent` (ACCEPT or READ) covering the message; one without gets its push after
//! `relay.away.burst`, so messages sent together make one push. The badge is the number of
//! agent messages not acknowledged yet. A token the provider reports dead is removed.
//!
//! Before a push, the consumer's receipts are looked for in the store too (they may have been
//! committed on another node). What is unread is kept in memory, bounded (when full, the
//! conversations without a push pending are forgotten first) and dropped when the
//! conversation closes: a restart forgets pushes not sent yet. Presence is per node: with
//! several nodes, a consumer connected to another node counts as away (its receipts still
//! prevent the push).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio_util::task::TaskTracker;

use super::vocabulary::{Event, Role};
use crate::ids::{ConsumerId, ConversationId};
use crate::push::{Attempt, DeviceToken, Provider, PushRequest, PushService};
use crate::store::Store;
use crate::store::devices::PushRegistration;
use crate::store::seal::DataKeys;

/// Conversations with unread agent messages tracked at once; beyond, new ones get no push.
const MAX_TRACKED: usize = 100_000;
/// Unread sequences kept per conversation (the badge stops counting there).
const MAX_UNREAD: usize = 100;
/// Stored events read at most when looking for the consumer's receipts before a push.
const RECEIPTS_READ: i64 = 500;

/// The associated data a device token is sealed with.
pub fn seal_context(account: &str, consumer_id: &ConsumerId, app: &str) -> Vec<u8> {
    format!("push_registration:{account}:{consumer_id}:{app}").into_bytes()
}

/// Agent messages a consumer has not acknowledged, in one conversation.
struct Unread {
    consumer_id: ConsumerId,
    seqs: BTreeSet<i64>,
    /// The newest message's text (the push shows it, masked by the app's rule).
    text: String,
    /// The newest sequence a push went out for.
    pushed_through: i64,
    /// A push check is scheduled.
    armed: bool,
}

/// The away-push service of the relay. Shared (`Arc`).
pub struct Away {
    account: String,
    push: PushService,
    store: Store,
    data_keys: Arc<DataKeys>,
    ack_delay: Duration,
    burst: Duration,
    /// Consumers with a live socket on this node, and how many.
    online: Mutex<HashMap<ConsumerId, usize>>,
    unread: Mutex<HashMap<ConversationId, Unread>>,
    timers: TaskTracker,
}

/// Counts a consumer as connected while it lives.
pub struct Presence {
    away: Arc<Away>,
    consumer_id: ConsumerId,
}

impl Drop for Presence {
    fn drop(&mut self) {
        let mut online = self.away.online.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = online.get_mut(&self.consumer_id) {
            *n -= 1;
            if *n == 0 {
                online.remove(&self.consumer_id);
            }
        }
    }
}

impl Away {
    pub fn new(
        account: String,
        push: PushService,
        store: Store,
        data_keys: Arc<DataKeys>,
        ack_delay: Duration,
        burst: Duration,
    ) -> Away {
        Away {
            account,
            push,
            store,
            data_keys,
            ack_delay,
            burst,
            online: Mutex::new(HashMap::new()),
            unread: Mutex::new(HashMap::new()),
            timers: TaskTracker::new(),
        }
    }

    pub fn push(&self) -> &PushService {
        &self.push
    }

    /// Marks the consumer connected until the returned guard is dropped.
    pub fn connected(self: &Arc<Self>, consumer_id: &ConsumerId) -> Presence {
        *self
            .online
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(consumer_id.clone())
            .or_default() += 1;
        Presence {
            away: self.clone(),
            consumer_id: consumer_id.clone(),
        }
    }

    fn is_online(&self, consumer_id: &ConsumerId) -> bool {
        self.online
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(consumer_id)
    }

    /// An agent's message was committed.
    pub fn agent_message(
        self: &Arc<Self>,
        conversation_id: &ConversationId,
        consumer_id: &ConsumerId,
        seq: i64,
        text: &str,
    ) {
        let delay = if self.is_online(consumer_id) {
            self.ack_delay
        } else {
            self.burst
        };
        let arm = {
            let mut unread = self.unread.lock().unwrap_or_else(|e| e.into_inner());
            if unread.len() >= MAX_TRACKED && !unread.contains_key(conversation_id) {
                // Those with no push pending only keep a badge count: they go first.
                unread.retain(|_, e| e.armed);
                if unread.len() >= MAX_TRACKED {
                    tracing::warn!(
                        "too many conversations with pushes pending; no away push for this one"
                    );
                    return;
                }
            }
            let entry = unread
                .entry(conversation_id.clone())
                .or_insert_with(|| Unread {
                    consumer_id: consumer_id.clone(),
                    seqs: BTreeSet::new(),
                    text: String::new(),
                    pushed_through: -1,
                    armed: false,
                });
            if entry.seqs.len() >= MAX_UNREAD {
                entry.seqs.pop_first();
            }
            entry.seqs.insert(seq);
            entry.text = text.to_string();
            !std::mem::replace(&mut entry.armed, true)
        };
        if arm {
            let away = self.clone();
            let conversation = conversation_id.clone();
            self.timers.spawn(async move {
                tokio::time::sleep(delay).await;
                away.check(&conversation).await;
            });
        }
    }

    /// The consumer acknowledged (ACCEPT or READ) sequences up to `seq` of a conversation.
    pub fn acknowledged(&self, conversation_id: &ConversationId, seq: i64) {
        let mut unread = self.unread.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = unread.get_mut(conversation_id) {
            entry.seqs.retain(|s| *s > seq);
            if entry.seqs.is_empty() && !entry.armed {
                unread.remove(conversation_id);
            }
        }
    }

    /// The conversation closed: nothing of it is pushed any more.
    pub fn closed(&self, conversation_id: &ConversationId) {
        self.unread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(conversation_id);
    }

    /// The newest sequence the consumer acknowledged (ACCEPT or READ) in the stored events
    /// from `from` on, wherever it was committed.
    async fn acknowledged_in_store(
        &self,
        conversation_id: &ConversationId,
        from: i64,
    ) -> Option<i64> {
        let rows = match self
            .store
            .list_events(conversation_id, from, RECEIPTS_READ)
            .await
        {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read a conversation's receipts before an away push");
                return None;
            }
        };
        rows.iter()
            .filter(|r| Role::from_name(&r.originator_role) == Role::Consumer)
            .filter_map(|r| {
                let context = super::vocabulary::event_seal_context(&r.event_id);
                let plain = self.data_keys.open(&context, &r.sealed).ok()?;
                let body: Value = serde_json::from_slice(plain.expose()).ok()?;
                Event::from_stored(&body)?.newest_receipt()
            })
            .max()
    }

    /// The timer ran out: push if something new is still unread.
    async fn check(&self, conversation_id: &ConversationId) {
        let oldest = {
            let mut unread = self.unread.lock().unwrap_or_else(|e| e.into_inner());
            let Some(entry) = unread.get_mut(conversation_id) else {
                return;
            };
            entry.armed = false;
            entry.seqs.first().copied()
        };
        let acknowledged = match oldest {
            Some(oldest) => self.acknowledged_in_store(conversation_id, oldest).await,
            None => None,
        };
        let due = {
            let mut unread = self.unread.lock().unwrap_or_else(|e| e.into_inner());
            let Some(entry) = unread.get_mut(conversation_id) else {
                return;
            };
            if let Some(acknowledged) = acknowledged {
                entry.seqs.retain(|s| *s > acknowledged);
            }
            match entry.seqs.last().copied() {
                Some(newest) if newest > entry.pushed_through => {
                    entry.pushed_through = newest;
                    Some((
                        entry.consumer_id.clone(),
                        entry.seqs.len(),
                        entry.text.clone(),
                        newest,
                    ))
                }
                Some(_) => None,
                None => {
                    unread.remove(conversation_id);
                    None
                }
            }
        };
        let Some((consumer_id, badge, text, seq)) = due else {
            return;
        };
        let registrations = match self
            .store
            .list_push_registrations(&self.account, &consumer_id)
            .await
        {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read push registrations; no away push");
                return;
            }
        };
        for registration in registrations {
            self.send(&registration, conversation_id, badge, &text, seq)
                .await;
        }
    }

    async fn send(
        &self,
        registration: &PushRegistration,
        conversation_id: &ConversationId,
        badge: usize,
        text: &str,
        seq: i64,
    ) {
        let provider = match registration.provider.as_str() {
            "apns" => Provider::Apns,
            "fcm" => Provider::Fcm,
            _ => return,
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
                return;
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
                tracing::info!(app = %registration.app, conversation = %conversation_id, "an away push was delivered");
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
                } else {
                    tracing::warn!(app = %registration.app, reason = %d.last.reason(), "an away push was not delivered");
                }
            }
            Err(e) => {
                tracing::warn!(app = %registration.app, error = %e, "an away push could not be sent");
            }
        }
    }

    /// Stops the timers: pushes not sent yet are dropped (the consumer sees the messages when
    /// it next connects).
    pub fn shutdown(&self) {
        self.timers.close();
    }
}
