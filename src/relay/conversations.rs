//! Conversations and their events: who may see and do what, sequence numbers, and sealing.
//!
//! The only code that writes conversations and events. A consumer only ever reaches its own
//! conversations; an agent only those it took (waiting ones are offered by `routing`). Stored
//! events (content, accept/read receipts) get the next sequence from the store and are
//! acknowledged only once committed; chat states (typing) are not stored and have no
//! sequence. Every stored event body is sealed (AES-256-GCM under
//! the data keys) and bound to its event id: the database never holds message text.

use std::sync::Arc;

use serde_json::Value;

use super::away::Away;
use super::bus::Bus;
use super::metrics::RelayMetrics;
use super::vocabulary::{Change, Event, Participant, RelayError, Role, event_seal_context};
use super::webhooks::{WebhookEvent, Webhooks};
use crate::clock::{Clock, UnixMillis};
use crate::dispatch::Doorbell;
use crate::ids::{AgentId, ConsumerId, ConversationId};
use crate::store::outbox::NewOutboxItem;
use crate::store::relay::{ConversationRow, NewEvent, Notice};
use crate::store::seal::DataKeys;
use crate::store::{Store, StoreError};

/// The conversations of one account. Cheap to share (`Arc`).
pub struct Conversations {
    account: String,
    store: Store,
    data_keys: Arc<DataKeys>,
    bus: Arc<Bus>,
    clock: Arc<dyn Clock>,
    max_message_bytes: usize,
    /// Pushes to consumers who are away (none without `[push]` apps).
    away: Option<Arc<Away>>,
    webhooks: Webhooks,
    /// Rung after a commit that wrote outbox items.
    doorbell: Doorbell,
    /// Messages committed, deliveries and rings accepted are counted here.
    metrics: RelayMetrics,
}

impl Conversations {
    pub fn new(
        account: String,
        store: Store,
        data_keys: Arc<DataKeys>,
        bus: Arc<Bus>,
        clock: Arc<dyn Clock>,
        max_message_bytes: usize,
    ) -> Conversations {
        Conversations {
            account,
            store,
            data_keys,
            bus,
            clock,
            max_message_bytes,
            away: None,
            webhooks: Webhooks::disabled(),
            doorbell: Doorbell::default(),
            metrics: RelayMetrics::default(),
        }
    }

    /// Counts into the relay's published metrics.
    pub fn with_metrics(self, metrics: RelayMetrics) -> Conversations {
        Conversations { metrics, ..self }
    }

    /// The relay's metrics (for the subscriptions and rings that use these conversations).
    pub fn metrics(&self) -> &RelayMetrics {
        &self.metrics
    }

    /// Sends away pushes for agents' messages.
    pub fn with_away(mut self, away: Arc<Away>) -> Conversations {
        self.away = Some(away);
        self
    }

    /// Tells the brand's backend about committed changes through `webhooks`: their items are
    /// written with each change, and `doorbell` wakes the dispatcher after the commit.
    pub fn with_webhooks(self, webhooks: Webhooks, doorbell: Doorbell) -> Conversations {
        Conversations {
            webhooks,
            doorbell,
            ..self
        }
    }

    /// Wakes the dispatcher when a commit wrote outbox items.
    fn written(&self, outbox: &[NewOutboxItem]) {
        if !outbox.is_empty() {
            self.doorbell.ring();
        }
    }

    pub fn bus(&self) -> &Arc<Bus> {
        &self.bus
    }

    /// The consumer's open conversation, opened now if it has none (then `true`).
    pub async fn request(
        &self,
        consumer: &ConsumerId,
    ) -> Result<(ConversationRow, bool), RelayError> {
        if let Some(open) = self
            .store
            .get_open_conversation(&self.account, consumer)
            .await?
        {
            return Ok((open, false));
        }
        let row = ConversationRow {
            id: ConversationId::new(uuid::Uuid::new_v4().to_string()),
            account: self.account.clone(),
            consumer_id: consumer.clone(),
            open: true,
            agent_id: None,
            skill: None,
            created_at: UnixMillis::now(&*self.clock),
            closed_at: None,
            last_seq: -1,
        };
        let outbox: Vec<_> = self
            .webhooks
            .item(&row, row.created_at, WebhookEvent::ConversationCreated)
            .into_iter()
            .collect();
        match self.store.create_conversation(&row, &outbox).await {
            Ok(()) => {
                tracing::info!(conversation = %row.id, "a consumer opened a conversation");
                self.written(&outbox);
                self.bus.state_changed(&row.id, consumer);
                Ok((row, true))
            }
            // Another socket of the same consumer opened one a moment ago: that one.
            Err(StoreError::Conflict) => self
                .store
                .get_open_conversation(&self.account, consumer)
                .await?
                .map(|row| (row, false))
                .ok_or(RelayError::NotFound),
            Err(e) => Err(e.into()),
        }
    }

    /// The participant's conversations, newest first (the last 100): a consumer's own, or
    /// those an agent took.
    pub async fn list_for(&self, who: &Participant) -> Result<Vec<ConversationRow>, RelayError> {
        Ok(match who {
            Participant::Consumer(id) => {
                self.store
                    .list_consumer_conversations(&self.account, id, 100)
                    .await?
            }
            Participant::Agent(id) => {
                self.store
                    .list_agent_conversations(&self.account, id, 100)
                    .await?
            }
        })
    }

    /// Open conversations waiting for an agent that `agent_id` has not rejected, oldest first
    /// (at most `limit`).
    pub async fn waiting_for(
        &self,
        agent_id: &AgentId,
        limit: i64,
    ) -> Result<Vec<ConversationRow>, RelayError> {
        Ok(self
            .store
            .list_waiting_conversations(&self.account, Some(agent_id), limit)
            .await?)
    }

    /// Whether `agent_id` rejected the waiting conversation's ring (since it last joined the
    /// queue).
    pub async fn rejected_by(
        &self,
        agent_id: &AgentId,
        conversation_id: &ConversationId,
    ) -> Result<bool, RelayError> {
        Ok(self
            .store
            .has_rejected_ring(conversation_id, agent_id)
            .await?)
    }

    /// An agent rejects a waiting conversation's ring: it is not rung for it again, on any
    /// socket or node, and cannot take it, until the conversation returns to the queue.
    pub async fn reject(
        &self,
        agent_id: &AgentId,
        conversation_id: &ConversationId,
    ) -> Result<(), RelayError> {
        let Some(row) = self.get_for_routing(conversation_id).await? else {
            return Err(RelayError::NotFound);
        };
        if !self.store.reject_ring(conversation_id, agent_id).await? {
            return Err(RelayError::Taken);
        }
        tracing::info!(conversation = %conversation_id, agent = %agent_id, "an agent rejected a ring");
        // The agent's other sockets end their ring too.
        self.bus.state_changed(conversation_id, &row.consumer_id);
        Ok(())
    }

    /// A conversation of this account whoever holds it, for routing (which shows agents
    /// waiting conversations, never their events).
    pub(super) async fn get_for_routing(
        &self,
        conversation_id: &ConversationId,
    ) -> Result<Option<ConversationRow>, RelayError> {
        Ok(self
            .store
            .get_conversation(conversation_id)
            .await?
            .filter(|c| c.account == self.account))
    }

    /// An agent takes a waiting conversation; of agents accepting it at once, one wins, the
    /// others get [`RelayError::Taken`].
    pub async fn take(
        &self,
        agent_id: &AgentId,
        conversation_id: &ConversationId,
    ) -> Result<(), RelayError> {
        let Some(row) = self.get_for_routing(conversation_id).await? else {
            return Err(RelayError::NotFound);
        };
        if !self
            .store
            .take_conversation(conversation_id, agent_id)
            .await?
        {
            if self
                .store
                .has_rejected_ring(conversation_id, agent_id)
                .await?
            {
                return Err(RelayError::Rejected);
            }
            return Err(RelayError::Taken);
        }
        tracing::info!(conversation = %conversation_id, agent = %agent_id, "an agent took a conversation");
        self.bus.state_changed(conversation_id, &row.consumer_id);
        Ok(())
    }

    /// The agent holding a conversation puts it back in the queue (a transfer), with a new
    /// skill when given.
    pub async fn return_to_queue(
        &self,
        who: &Participant,
        conversation_id: &ConversationId,
        skill: Option<&str>,
    ) -> Result<(), RelayError> {
        let Participant::Agent(agent_id) = who else {
            return Err(RelayError::BadRequest(
                "only the assigned agent may transfer a conversation".into(),
            ));
        };
        let row = self.get(who, conversation_id).await?;
        if !row.open {
            return Err(RelayError::Closed);
        }
        if !self
            .store
            .return_conversation(conversation_id, agent_id, skill)
            .await?
        {
            // Closed or transferred in between.
            return Err(RelayError::Closed);
        }
        tracing::info!(conversation = %conversation_id, agent = %agent_id, "an agent returned a conversation to the queue");
        self.bus.state_changed(conversation_id, &row.consumer_id);
        Ok(())
    }

    /// The conversation, if `who` may see it.
    pub async fn get(
        &self,
        who: &Participant,
        conversation_id: &ConversationId,
    ) -> Result<ConversationRow, RelayError> {
        let row = self
            .store
            .get_conversation(conversation_id)
            .await?
            .ok_or(RelayError::NotFound)?;
        if row.account == self.account && who.may_see(&row) {
            Ok(row)
        } else {
            Err(RelayError::NotFound)
        }
    }

    /// Checks an event a participant publishes (`ms.PublishEvent`'s `event`) against the
    /// relay's limits.
    pub fn check_event(&self, event: &Value) -> Result<Event, RelayError> {
        Event::check(event, self.max_message_bytes)
    }

    /// Publishes an event to a conversation `who` may see. Returns the sequence once the
    /// event is committed (stored events); a chat state has none.
    ///
    /// A client event id already stored for this participant answers with that event's
    /// sequence when the event is the same (a re-send), and [`RelayError::Conflict`] when it is
    /// another: nothing is stored either way. Receipts may only name sequences that exist.
    pub async fn publish(
        &self,
        who: &Participant,
        conversation_id: &ConversationId,
        event: Event,
        client_event_id: Option<&str>,
    ) -> Result<Option<i64>, RelayError> {
        let conversation = self.get(who, conversation_id).await?;
        if !conversation.open {
            return Err(RelayError::Closed);
        }
        if let Some(highest) = event.newest_receipt()
            && highest > conversation.last_seq
        {
            return Err(RelayError::BadRequest(format!(
                "sequenceList names sequence {highest}, but the conversation's last is {}",
                conversation.last_seq
            )));
        }
        let now = UnixMillis::now(&*self.clock);
        // What followers are told: for a chat state, the conversation's last sequence.
        let change = |seq: i64, event: Event| Change {
            conversation_id: conversation_id.clone(),
            seq,
            originator_id: who.id().to_string(),
            originator_role: who.role(),
            server_timestamp: now,
            event,
        };
        if !event.is_stored() {
            self.bus.publish(change(conversation.last_seq, event));
            return Ok(None);
        }
        let event_id = uuid::Uuid::new_v4().to_string();
        let plain =
            serde_json::to_vec(&event.to_json()).map_err(|e| RelayError::Seal(e.to_string()))?;
        let sealed = self
            .data_keys
            .seal(&event_seal_context(&event_id), &plain)
            .map_err(|e| RelayError::Seal(e.to_string()))?;
        let away_push = match (&self.away, who, &event) {
            (Some(away), Participant::Agent(_), Event::Content { .. }) => {
                away.item(&conversation, now)
            }
            _ => None,
        };
        let outbox: Vec<_> = self
            .webhooks
            .item(&conversation, now, WebhookEvent::message(who, &event))
            .into_iter()
            .chain(away_push)
            .collect();
        // The other nodes hear of the event at its commit, from inside its transaction.
        let notice_payload = |seq: i64| self.bus.event_notice(conversation_id, seq);
        let notice = self.bus.notice_channel().map(|channel| Notice {
            channel,
            payload: &notice_payload,
        });
        let appended = self
            .store
            .append_event(&NewEvent {
                conversation_id,
                event_id: &event_id,
                originator_id: who.id(),
                originator_role: who.role().name(),
                client_event_id,
                holder: match who {
                    Participant::Agent(id) => Some(id),
                    Participant::Consumer(_) => None,
                },
                sealed: &sealed,
                created_at: now,
                outbox: &outbox,
                notice,
            })
            .await
            .map_err(|e| match (e, who) {
                // Transferred away in the meantime: no longer this agent's.
                (StoreError::NotFound, Participant::Agent(_)) => RelayError::NotFound,
                (StoreError::NotFound, Participant::Consumer(_)) => RelayError::Closed,
                (other, _) => other.into(),
            })?;
        if let Some((earlier_id, earlier_sealed)) = &appended.earlier {
            let earlier = self.open_event(earlier_id, earlier_sealed)?;
            if earlier != event {
                return Err(RelayError::Conflict(
                    "event.eventId was already used for another event".into(),
                ));
            }
        }
        if appended.created {
            if matches!(event, Event::Content { .. }) {
                self.metrics.message_committed(match who {
                    Participant::Consumer(_) => "consumer",
                    Participant::Agent(_) => "agent",
                });
            }
            self.written(&outbox);
            self.bus.publish(change(appended.seq, event));
        }
        Ok(Some(appended.seq))
    }

    /// A stored event, opened and read.
    fn open_event(&self, event_id: &str, sealed: &[u8]) -> Result<Event, RelayError> {
        let plain = self
            .data_keys
            .open(&event_seal_context(event_id), sealed)
            .map_err(|e| RelayError::Seal(e.to_string()))?;
        let body: Value =
            serde_json::from_slice(plain.expose()).map_err(|e| RelayError::Seal(e.to_string()))?;
        Event::from_stored(&body)
            .ok_or_else(|| RelayError::Seal(format!("stored event {event_id} is not an event")))
    }

    /// Stored events of a conversation `who` may see, from `from_seq`, at most `limit`.
    pub async fn history(
        &self,
        who: &Participant,
        conversation_id: &ConversationId,
        from_seq: i64,
        limit: i64,
    ) -> Result<Vec<Change>, RelayError> {
        self.get(who, conversation_id).await?;
        self.events(conversation_id, from_seq, limit).await
    }

    /// Stored events, opened (no access check: the caller made it).
    pub(super) async fn events(
        &self,
        conversation_id: &ConversationId,
        from_seq: i64,
        limit: i64,
    ) -> Result<Vec<Change>, RelayError> {
        let rows = self
            .store
            .list_events(conversation_id, from_seq.max(0), limit)
            .await?;
        rows.into_iter()
            .map(|r| {
                let event = self.open_event(&r.event_id, &r.sealed)?;
                Ok(Change {
                    conversation_id: r.conversation_id,
                    seq: r.seq,
                    originator_id: r.originator_id,
                    originator_role: Role::from_name(&r.originator_role),
                    server_timestamp: r.created_at,
                    event,
                })
            })
            .collect()
    }

    /// Closes a conversation `who` may see. Closing a closed one is not an error.
    pub async fn close(
        &self,
        who: &Participant,
        conversation_id: &ConversationId,
    ) -> Result<(), RelayError> {
        let row = self.get(who, conversation_id).await?;
        let closed_at = UnixMillis::now(&*self.clock);
        let outbox: Vec<_> = self
            .webhooks
            .item(&row, closed_at, WebhookEvent::ConversationClosed)
            .into_iter()
            .collect();
        if self
            .store
            .close_conversation(conversation_id, closed_at, &outbox)
            .await?
        {
            self.written(&outbox);
            tracing::info!(conversation = %conversation_id, "a conversation was closed");
            self.bus.state_changed(conversation_id, &row.consumer_id);
        }
        Ok(())
    }
}
