//! Routing: which agent gets a waiting conversation.
//!
//! An agent's socket has a [`Desk`]: its availability (`routing.SetAgentState`; `OFFLINE`
//! until it says otherwise) and the rings it rejected. Its routing-task subscription
//! (`routing.SubscribeRoutingTasks`, [`ring`]) shows, while it is `ONLINE`, every open
//! conversation waiting in the queue as a task with one `WAITING` ring; the ring id is the
//! conversation id. `routing.UpdateRingState` `ACCEPTED` takes the conversation (the store lets
//! exactly one agent win; the others' tasks complete as `CANCELLED`), `REJECTED` ends the ring
//! for this agent only, on all its sockets and nodes: kept in the store, it is neither rung nor
//! able to take the conversation again until the conversation returns to the queue. The queue is read from the store and changes arrive over the bus, so
//! agents on other nodes are rung as well.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

use super::conversations::Conversations;
use super::outbox::Outbox;
use super::protocol::notification;
use super::vocabulary::RelayError;
use crate::ids::{AgentId, ConversationId};
use crate::store::relay::ConversationRow;

/// Waiting conversations one agent is rung for at once (the oldest).
const MAX_RINGS: i64 = 100;

/// An agent's availability, as the platform names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Availability {
    Online,
    Away,
    BackSoon,
    Offline,
}

impl Availability {
    pub fn parse(text: &str) -> Option<Availability> {
        Some(match text {
            "ONLINE" => Availability::Online,
            "AWAY" => Availability::Away,
            "BACK_SOON" => Availability::BackSoon,
            "OFFLINE" => Availability::Offline,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Availability::Online => "ONLINE",
            Availability::Away => "AWAY",
            Availability::BackSoon => "BACK_SOON",
            Availability::Offline => "OFFLINE",
        }
    }
}

/// One agent socket's routing state.
#[derive(Debug, Clone)]
pub struct Desk {
    pub availability: Availability,
    /// Conversations whose ring this agent rejected.
    pub rejected: HashSet<ConversationId>,
}

impl Default for Desk {
    fn default() -> Desk {
        Desk {
            availability: Availability::Offline,
            rejected: HashSet::new(),
        }
    }
}

/// How a task ends for this agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// This agent took the conversation.
    Accepted,
    /// This agent rejected the ring.
    Rejected,
    /// Taken by another agent, closed, or this agent is no longer online.
    Cancelled,
}

/// Sends the agent's routing tasks until `cancel` (see the module's description).
pub async fn ring(
    conversations: Arc<Conversations>,
    agent_id: AgentId,
    subscription: String,
    mut desk: watch::Receiver<Desk>,
    out: Outbox,
    cancel: CancellationToken,
) -> Result<(), RelayError> {
    let mut changes = conversations.bus().state_changes();
    // Tasks shown as waiting, by conversation, with when each was shown.
    let mut ringing: HashMap<ConversationId, (ConversationRow, Instant)> = HashMap::new();
    let mut resync = true;
    // The last read of the queue was cut at MAX_RINGS: when a ring ends, read it again so the
    // conversations beyond get their turn.
    let mut capped = false;
    loop {
        if resync {
            resync = false;
            let (online, rejected) = {
                let d = desk.borrow_and_update();
                (d.availability == Availability::Online, d.rejected.clone())
            };
            let waiting = if online {
                conversations.waiting_for(&agent_id, MAX_RINGS).await?
            } else {
                Vec::new()
            };
            capped = waiting.len() as i64 >= MAX_RINGS;
            let waiting_ids: HashSet<&ConversationId> = waiting.iter().map(|c| &c.id).collect();
            let ended: Vec<ConversationId> = ringing
                .keys()
                .filter(|id| !waiting_ids.contains(id) || rejected.contains(*id))
                .cloned()
                .collect();
            for id in ended {
                if let Some((row, _)) = ringing.remove(&id) {
                    let how = if rejected.contains(&id) {
                        Ending::Rejected
                    } else {
                        Ending::Cancelled
                    };
                    if !out
                        .send(task(&subscription, &row, Some(how)), &cancel)
                        .await
                    {
                        return Ok(());
                    }
                }
            }
            for c in waiting {
                if !ringing.contains_key(&c.id) && !rejected.contains(&c.id) {
                    if !out.send(task(&subscription, &c, None), &cancel).await {
                        return Ok(());
                    }
                    ringing.insert(c.id.clone(), (c, Instant::now()));
                }
            }
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(()),
            changed = desk.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                resync = true;
            }
            change = changes.recv() => match change {
                Ok(change) => {
                    let Some(row) = conversations.get_for_routing(&change.conversation_id).await? else {
                        continue;
                    };
                    let waiting = row.open && row.agent_id.is_none();
                    let was_ringing = ringing.contains_key(&row.id);
                    let (online, rejected) = {
                        let d = desk.borrow();
                        (d.availability == Availability::Online, d.rejected.contains(&row.id))
                    };
                    // Rejected on another socket or node of this agent: the store knows.
                    let rejected_elsewhere = || conversations.rejected_by(&agent_id, &row.id);
                    if was_ringing && !waiting {
                        let rang = ringing.remove(&row.id).map(|(_, at)| at.elapsed());
                        resync = capped;
                        let how = if row.agent_id.as_ref() == Some(&agent_id) {
                            if let Some(rang) = rang {
                                conversations.metrics().ring_accepted(rang);
                            }
                            Ending::Accepted
                        } else {
                            Ending::Cancelled
                        };
                        if !out.send(task(&subscription, &row, Some(how)), &cancel).await {
                            return Ok(());
                        }
                    } else if was_ringing && (rejected || rejected_elsewhere().await?) {
                        ringing.remove(&row.id);
                        resync = capped;
                        if !out.send(task(&subscription, &row, Some(Ending::Rejected)), &cancel).await {
                            return Ok(());
                        }
                    } else if !was_ringing && waiting && online && !rejected
                        && ringing.len() < MAX_RINGS as usize
                        && !rejected_elsewhere().await?
                    {
                        if !out.send(task(&subscription, &row, None), &cancel).await {
                            return Ok(());
                        }
                        ringing.insert(row.id.clone(), (row, Instant::now()));
                    }
                }
                // Behind: read the queue again rather than miss a conversation.
                Err(broadcast::error::RecvError::Lagged(_)) => resync = true,
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            }
        }
    }
}

/// A `routing.routingTaskNotification` for one conversation: waiting (`None`) or ended.
fn task(subscription: &str, c: &ConversationRow, ending: Option<Ending>) -> String {
    let state = match ending {
        None => "WAITING",
        Some(Ending::Accepted) => "ACCEPTED",
        Some(Ending::Rejected) => "REJECTED",
        Some(Ending::Cancelled) => "CANCELLED",
    };
    notification(
        "routing.routingTaskNotification",
        json!({
            "subscriptionId": subscription,
            "changes": [{
                "type": "UPSERT",
                "result": {
                    "routingTaskId": c.id,
                    "taskCompleted": ending.is_some(),
                    "conversationId": c.id,
                    "consumerId": c.consumer_id,
                    "skillId": c.skill.as_deref().unwrap_or("-1"),
                    "ringsDetails": [{"ringId": c.id, "ringState": state, "weight": 0}],
                }
            }]
        }),
    )
}

/// Sends the agent's availability now and on every change, until `cancel`
/// (`routing.SubscribeAgentsState`).
pub async fn report_state(
    subscription: String,
    mut desk: watch::Receiver<Desk>,
    out: Outbox,
    cancel: CancellationToken,
) {
    let mut last = None;
    loop {
        let now = desk.borrow_and_update().availability;
        if last != Some(now) {
            last = Some(now);
            let frame = notification(
                "routing.agentStateNotification",
                json!({
                    "subscriptionId": subscription,
                    "changes": [{"type": "UPSERT", "result": {"availability": now.name()}}]
                }),
            );
            if !out.send(frame, &cancel).await {
                return;
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            changed = desk.changed() => if changed.is_err() { return },
        }
    }
}
