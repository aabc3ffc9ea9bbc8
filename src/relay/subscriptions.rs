//! Subscriptions to a conversation's events: the store's catch-up, then live events from the
//! bus, never skipping one and never sending one twice (`ms.SubscribeMessagingEvents`).

use std::sync::Arc;

use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::bus::{Live, LiveEvents};
use super::close_code::SUBSCRIPTION_FAILED;
use super::conversations::Conversations;
use super::outbox::Outbox;
use super::vocabulary::{Participant, RelayError, messaging_notification};
use crate::ids::ConversationId;

/// Events read from the store at once when catching up (one frame).
const REPLAY_BATCH: i64 = 50;

/// Sends a conversation's events from `from_seq` to `out` until `cancel` or the socket goes:
/// the stored ones first, then live ones, with no gap and no repeat across the switch (the
/// live subscription, `live`, starts before the store is read, and before the follow is
/// answered; anything seen twice is skipped by sequence, anything missed is read from the
/// store). If the store fails, the socket is
/// closed (1011) so the client reconnects and catches up: a subscription never dies silently.
pub async fn follow(
    conversations: Arc<Conversations>,
    who: Participant,
    conversation_id: ConversationId,
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
    conversation_id: &ConversationId,
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
                    conversations.metrics().delivered(batch.len());
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
                    Ok(change) => change.conversation_id == *conversation_id,
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
            Ok(Live::Change(change)) if !change.event.is_stored() => {
                if !out
                    .send(messaging_notification(&[(*change).clone()]), cancel)
                    .await
                {
                    return Ok(());
                }
                conversations.metrics().delivered(1);
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
                conversations.metrics().delivered(1);
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
    use crate::relay::bus::Bus;
    use crate::relay::outbox::Outgoing;
    use crate::store::Store;
    use crate::store::seal::DataKeys;
    use serde_json::{Value, json};

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
        let (conv, _) = there.request(&"c1".into()).await.unwrap();
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
        here.bus()
            .committed_elsewhere(&"another-conversation".into(), 0);
        assert!(!here.bus().has_channel(&"another-conversation".into()));
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
        let (conv, _) = conversations.request(&"c1".into()).await.unwrap();
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
