//! Relay fan-out across brandgate nodes sharing one PostgreSQL, over LISTEN/NOTIFY (no broker).
//!
//! Owns the two tasks of a node: the sender, which `pg_notify`s each publication of this
//! node's bus (after its commit: the bus only sees committed events), and the listener, which
//! hands the other nodes' notifications to this node's bus. A notification is a hint, never
//! the event: "sequence n of conversation c is committed" (followers read it from the store),
//! "this chat state", "this conversation's state changed", or "resync" (notifications may
//! have been lost: re-check the store). It must never carry message text: the payload is
//! built from ids, sequences, a chat state's name and a timestamp only ([`encode`]).
//!
//! Notifications are not stored by PostgreSQL: those sent while a listener is disconnected
//! are lost. So every time the listener (re)connects (also after its connection stopped
//! answering), every follower and watcher on the node re-checks the store; and when this node
//! could not send some (queue full, database unreachable), it sends "resync" once it can.
//! A stored event's notification is sent inside the append's transaction (PostgreSQL
//! delivers it at the commit, and only then), so a committed event is never silent, even when
//! its node dies right after the commit. Chat states and conversation state changes go
//! through the sender after their commit. SQLite is one node: no fan-out.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::bus::{Bus, Outward};
use super::vocabulary::{Change, ChatState, Event, Role, StateChange};
use crate::backoff::Backoff;
use crate::clock::UnixMillis;
use crate::ids::{AgentId, ConsumerId, ConversationId};
use crate::store::Store;
use crate::store::notify::{Heard, Listener, Notifier, NotifyError};

/// The PostgreSQL notification channel every node sends on and listens to.
pub const CHANNEL: &str = "brandgate_relay";
/// The largest payload sent. PostgreSQL refuses more than 8000 bytes; ids are at most 255
/// characters (identity subjects), so real payloads stay far below this.
pub const MAX_PAYLOAD: usize = 4000;
/// Publications waiting to be sent. When full, they are dropped and a resync is sent instead.
const QUEUE_CAPACITY: usize = 8192;
/// Notifications sent in one statement.
const MAX_BATCH: usize = 256;
/// Waits between attempts to reach the database: 0.1-0.2 s, doubling up to 2.5-5 s, jittered
/// so the nodes do not all come back to a restarted database at the same instant.
const RETRY: Backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
/// How long stopping may take to send what is queued and to let the listener go.
const STOP_LIMIT: Duration = Duration::from_secs(5);
/// How long the listener's connection may take to be made and to listen.
const CONNECT_LIMIT: Duration = Duration::from_secs(10);
/// How long the listener's connection may be quiet before it is asked whether it is there,
/// and how long it may take to answer.
const PING_EVERY: Duration = Duration::from_secs(30);
const PING_LIMIT: Duration = Duration::from_secs(10);

/// A notification as it travels: which node sent it, and what it says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Wire {
    node: String,
    #[serde(flatten)]
    body: Body,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Body {
    /// A stored event was committed; its content stays in the store.
    Event {
        conversation: ConversationId,
        seq: i64,
    },
    /// A chat state (not stored): its name, who, and when; `seq` is the last stored one.
    ChatState {
        conversation: ConversationId,
        seq: i64,
        originator: String,
        role: String,
        at: i64,
        state: String,
    },
    /// A conversation's state changed (opened, closed, taken, returned).
    State {
        conversation: ConversationId,
        consumer: ConsumerId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        agent: Option<AgentId>,
    },
    /// The sender lost some notifications: re-check everything.
    Resync,
}

#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("the database refused or is unreachable: {0}")]
    Database(#[from] NotifyError),
    #[error("the database did not answer within {0:?}")]
    TimedOut(Duration),
}

#[derive(Debug, thiserror::Error)]
enum ListenError {
    #[error("{0}")]
    Database(#[from] NotifyError),
    #[error("the connection did not answer within {0:?}")]
    Unresponsive(Duration),
}

#[derive(Debug, thiserror::Error)]
enum DecodeError {
    #[error("not a relay notification: {0}")]
    Json(#[from] serde_json::Error),
    #[error("not a chat state name")]
    ChatState,
}

impl Body {
    /// What a bus publication says to the other nodes: ids, sequences and a chat state's
    /// name, never the event's content.
    fn of_change(change: &Change) -> Option<Body> {
        match &change.event {
            Event::ChatState(state) => Some(Body::ChatState {
                conversation: change.conversation_id.clone(),
                seq: change.seq,
                originator: change.originator_id.clone(),
                role: change.originator_role.name().to_string(),
                at: change.server_timestamp.0,
                state: state.name().to_string(),
            }),
            Event::Content { .. } | Event::AcceptStatus { .. } => Some(Body::Event {
                conversation: change.conversation_id.clone(),
                seq: change.seq,
            }),
        }
    }

    fn of_state(change: &StateChange) -> Body {
        Body::State {
            conversation: change.conversation_id.clone(),
            consumer: change.consumer_id.clone(),
            agent: change.agent_id.clone(),
        }
    }
}

/// The payload for `body` from `node`, or `None` if it would exceed [`MAX_PAYLOAD`] (only
/// possible with unusually long ids; see [`Outbound`] for what is sent instead).
fn encode(node: &str, body: Body) -> Option<String> {
    let payload = serde_json::to_string(&Wire {
        node: node.to_string(),
        body,
    })
    .ok()?;
    (payload.len() <= MAX_PAYLOAD).then_some(payload)
}

/// Hands another node's notification to this node's bus (then `true`); its own are ignored.
fn inject(bus: &Bus, own_node: &str, payload: &str) -> Result<bool, DecodeError> {
    let wire: Wire = serde_json::from_str(payload)?;
    if wire.node == own_node {
        return Ok(false);
    }
    match wire.body {
        Body::Event { conversation, seq } => bus.committed_elsewhere(&conversation, seq),
        Body::ChatState {
            conversation,
            seq,
            originator,
            role,
            at,
            state,
        } => {
            let state = ChatState::from_name(&state).ok_or(DecodeError::ChatState)?;
            bus.chat_state_elsewhere(Change {
                conversation_id: conversation,
                seq,
                originator_id: originator,
                // The same two roles the store gives back (`Conversations::events`).
                originator_role: Role::from_name(&role),
                server_timestamp: UnixMillis(at),
                event: Event::ChatState(state),
            });
        }
        Body::State {
            conversation,
            consumer,
            agent,
        } => bus.state_changed_elsewhere(StateChange {
            conversation_id: conversation,
            consumer_id: consumer,
            agent_id: agent,
        }),
        Body::Resync => bus.recheck_all(),
    }
    Ok(true)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NotificationLabels {
    /// `sent`, `failed` (the database refused or was unreachable), `dropped` (the queue was
    /// full), `received` (from another node), `invalid` (received, not understood).
    outcome: &'static str,
}

/// The fan-out's metrics. Label values are fixed words, never ids.
#[derive(Clone, Default)]
pub struct FanoutMetrics {
    notifications: Family<NotificationLabels, Counter>,
    reconnects: Counter,
}

impl FanoutMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "brandgate_relay_fanout_notifications",
            "Relay notifications between nodes over PostgreSQL, by outcome (sent, failed, dropped, received, invalid)",
            self.notifications.clone(),
        );
        registry.register(
            "brandgate_relay_fanout_listener_reconnects",
            "Times the relay's PostgreSQL listener connection was re-established (each makes every follower and watcher re-check the store)",
            self.reconnects.clone(),
        );
    }

    fn count(&self, outcome: &'static str, n: usize) {
        self.notifications
            .get_or_create(&NotificationLabels { outcome })
            .inc_by(n as u64);
    }
}

/// Where the bus puts its publications for the other nodes. Never blocks the publisher: when
/// the queue is full the publication is dropped and a resync is owed instead.
#[derive(Clone)]
struct Outbound {
    node: Arc<str>,
    tx: mpsc::Sender<String>,
    overflowed: Arc<AtomicBool>,
    metrics: FanoutMetrics,
}

impl Outward for Outbound {
    /// A chat state. A stored event was told inside its append's transaction
    /// ([`Outward::event_notice`]).
    fn change(&self, change: &Change) {
        if change.event.is_stored() {
            // Its commit (which this follows) delivered the notice.
            self.metrics.count("sent", 1);
            return;
        }
        if let Some(body) = Body::of_change(change) {
            match encode(&self.node, body) {
                Some(payload) => self.enqueue(payload),
                // A chat state is transient: one with outlandish ids is not worth a resync.
                None if !change.event.is_stored() => {
                    tracing::debug!("a chat state is too large to notify; not sent to other nodes");
                }
                None => self.owe_resync(),
            }
        }
    }

    fn event_notice(&self, conversation_id: &ConversationId, seq: i64) -> Option<String> {
        let body = Body::Event {
            conversation: conversation_id.clone(),
            seq,
        };
        let payload = encode(&self.node, body);
        if payload.is_none() {
            self.owe_resync();
        }
        payload
    }

    fn channel(&self) -> &'static str {
        CHANNEL
    }

    /// A conversation state change.
    fn state(&self, change: &StateChange) {
        match encode(&self.node, Body::of_state(change)) {
            Some(payload) => self.enqueue(payload),
            None => self.owe_resync(),
        }
    }
}

impl Outbound {
    fn enqueue(&self, payload: String) {
        if self.tx.try_send(payload).is_err() {
            self.metrics.count("dropped", 1);
            self.owe_resync();
        }
    }

    /// The other nodes will be told to re-check everything, since something was not sent.
    /// The queue is full or the payload too large; the sender sees the flag on its next round,
    /// and a full queue guarantees there is one.
    fn owe_resync(&self) {
        self.overflowed.store(true, Ordering::SeqCst);
        // Wakes the sender if the queue happens to be empty (an oversized payload).
        let _ = self.tx.try_send(String::new());
    }
}

/// The running fan-out of one node: stop it after the sessions have ended.
pub struct Fanout {
    stop: CancellationToken,
    tasks: TaskTracker,
    metrics: FanoutMetrics,
}

impl Fanout {
    /// The bus for `store`: with fan-out to the other nodes on PostgreSQL, local on SQLite.
    pub fn bus_for(store: &Store) -> (Arc<Bus>, Option<Fanout>) {
        match store.notifier() {
            None => (Arc::new(Bus::default()), None),
            Some(notifier) => {
                let (bus, fanout) = Fanout::start(notifier);
                (bus, Some(fanout))
            }
        }
    }

    fn start(notifier: Notifier) -> (Arc<Bus>, Fanout) {
        let node: Arc<str> = uuid::Uuid::new_v4().simple().to_string().into();
        let metrics = FanoutMetrics::default();
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let overflowed = Arc::new(AtomicBool::new(false));
        let bus = Arc::new(Bus::with_outbound(Outbound {
            node: node.clone(),
            tx,
            overflowed: overflowed.clone(),
            metrics: metrics.clone(),
        }));
        let stop = CancellationToken::new();
        let tasks = TaskTracker::new();
        tasks.spawn(send(
            notifier.clone(),
            node.clone(),
            rx,
            overflowed,
            stop.clone(),
            metrics.clone(),
        ));
        tasks.spawn(listen(
            notifier,
            node.clone(),
            bus.clone(),
            stop.clone(),
            metrics.clone(),
        ));
        tracing::info!(node = %node, "relay fan-out to other nodes over PostgreSQL LISTEN/NOTIFY");
        (
            bus,
            Fanout {
                stop,
                tasks,
                metrics,
            },
        )
    }

    pub fn metrics(&self) -> &FanoutMetrics {
        &self.metrics
    }

    /// Sends what is still queued, stops listening, and waits for both.
    pub async fn stop(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// The sender: queued publications to `pg_notify`, in batches, in order. Owes the other
/// nodes a resync after anything it could not send, and sends it as soon as it can.
async fn send(
    notifier: Notifier,
    node: Arc<str>,
    mut rx: mpsc::Receiver<String>,
    overflowed: Arc<AtomicBool>,
    stop: CancellationToken,
    metrics: FanoutMetrics,
) {
    let resync = encode(&node, Body::Resync).unwrap_or_default();
    let mut owe_resync = false;
    let mut failures = 0u32;
    let mut retry = RETRY.delay(1);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let stopping = tokio::select! {
            biased;
            n = rx.recv_many(&mut batch, MAX_BATCH) => n == 0,
            _ = stop.cancelled() => true,
            _ = tokio::time::sleep(retry), if owe_resync => false,
        };
        if stopping {
            while let Ok(payload) = rx.try_recv() {
                batch.push(payload);
            }
        }
        if overflowed.swap(false, Ordering::SeqCst) {
            owe_resync = true;
        }
        // Empty payloads only wake this task up.
        batch.retain(|p| !p.is_empty());
        if owe_resync {
            batch.push(resync.clone());
        }
        let mut failed = false;
        for chunk in batch.chunks(MAX_BATCH) {
            let sent = if stopping {
                tokio::time::timeout(STOP_LIMIT, notifier.notify(CHANNEL, chunk))
                    .await
                    .map(|sent| sent.map_err(SendError::from))
                    .unwrap_or(Err(SendError::TimedOut(STOP_LIMIT)))
            } else {
                notifier
                    .notify(CHANNEL, chunk)
                    .await
                    .map_err(SendError::from)
            };
            match sent {
                Ok(()) => metrics.count("sent", chunk.len()),
                Err(e) => {
                    metrics.count("failed", chunk.len());
                    if !failed {
                        tracing::warn!(error = %e, "relay notifications to other nodes failed; they will be told to re-check the store");
                    }
                    failed = true;
                }
            }
        }
        if failed {
            owe_resync = true;
            failures += 1;
            retry = RETRY.delay(failures);
        } else if !batch.is_empty() {
            owe_resync = false;
            failures = 0;
        }
        batch.clear();
        if stopping {
            if owe_resync {
                tracing::warn!(
                    "stopping with relay notifications unsent; other nodes' followers catch up on the next event"
                );
            }
            return;
        }
    }
}

/// The listener: the other nodes' notifications to this node's bus. Its own connection
/// (named in `pg_stat_activity` as the store's application name plus "relay listener"), made
/// again whenever it drops or stops answering; after every (re)connection the node's
/// followers and watchers re-check the store, since notifications sent meanwhile are lost.
async fn listen(
    notifier: Notifier,
    node: Arc<str>,
    bus: Arc<Bus>,
    stop: CancellationToken,
    metrics: FanoutMetrics,
) {
    let mut connected_before = false;
    let mut failures = 0u32;
    loop {
        let attempt = async {
            Ok::<_, ListenError>(
                notifier
                    .listen(CHANNEL, "relay listener", CONNECT_LIMIT)
                    .await?,
            )
        };
        let connected = tokio::select! {
            _ = stop.cancelled() => break,
            c = tokio::time::timeout(CONNECT_LIMIT, attempt) => {
                c.unwrap_or(Err(ListenError::Unresponsive(CONNECT_LIMIT)))
            }
        };
        let ended = match connected {
            Ok(mut listener) => {
                failures = 0;
                if connected_before {
                    reconnected(&metrics);
                } else {
                    tracing::debug!("the relay listener is listening");
                }
                connected_before = true;
                // Followers that started before this LISTEN took effect may have missed
                // something.
                bus.recheck_all();
                let ended = receive(&mut listener, &node, &bus, &stop, &metrics).await;
                match &ended {
                    Ended::Lost(e) => {
                        tracing::warn!(error = %e, "the relay listener lost PostgreSQL");
                    }
                    Ended::Stopped => listener.close(STOP_LIMIT).await,
                }
                ended
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, failures, "the relay listener cannot reach PostgreSQL");
                Ended::Lost(e)
            }
        };
        if matches!(ended, Ended::Stopped) {
            break;
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(RETRY.delay(failures.max(1))) => {}
        }
    }
}

/// How a listening connection's time ended.
enum Ended {
    Stopped,
    Lost(ListenError),
}

/// Hands notifications to the bus until stopped or the connection is lost (and could not be
/// made again). Asks the connection something when it has been quiet for
/// [`PING_EVERY`]: one the network dropped without a word (no FIN, no RST) would otherwise
/// look quiet forever while notifications go elsewhere.
async fn receive(
    listener: &mut Listener,
    node: &str,
    bus: &Bus,
    stop: &CancellationToken,
    metrics: &FanoutMetrics,
) -> Ended {
    let mut ping_at = tokio::time::Instant::now() + PING_EVERY;
    loop {
        let received = tokio::select! {
            biased;
            _ = stop.cancelled() => return Ended::Stopped,
            _ = tokio::time::sleep_until(ping_at) => {
                match tokio::time::timeout(PING_LIMIT, listener.ping()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Ended::Lost(e.into()),
                    Err(_) => return Ended::Lost(ListenError::Unresponsive(PING_LIMIT)),
                }
                ping_at = tokio::time::Instant::now() + PING_EVERY;
                continue;
            }
            r = listener.recv() => r,
        };
        match received {
            Ok(Heard::Payload(payload)) => {
                ping_at = tokio::time::Instant::now() + PING_EVERY;
                match inject(bus, node, &payload) {
                    Ok(true) => metrics.count("received", 1),
                    Ok(false) => {}
                    Err(e) => {
                        metrics.count("invalid", 1);
                        tracing::debug!(error = %e, "ignored a notification on the relay channel");
                    }
                }
            }
            // The connection dropped and was made again (and listens again).
            Ok(Heard::Reconnected) => {
                reconnected(metrics);
                bus.recheck_all();
            }
            Err(e) => return Ended::Lost(e.into()),
        }
    }
}

fn reconnected(metrics: &FanoutMetrics) {
    metrics.reconnects.inc();
    tracing::info!(
        "the relay listener reconnected to PostgreSQL; followers and watchers re-check the store"
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A change carrying `event` as a client would publish it (checked as the relay does).
    fn change(event: serde_json::Value) -> Change {
        Change {
            conversation_id: "4f9a1f4e-5b7c-4d7e-9a51-0d1c3c1b7e21".into(),
            seq: 41,
            originator_id: "consumer-1".into(),
            originator_role: Role::Consumer,
            server_timestamp: UnixMillis(1_700_000_000_000),
            event: Event::check(&event, 4096).unwrap(),
        }
    }

    #[test]
    fn a_stored_event_is_notified_by_its_sequence_never_its_text() {
        let secret = "the-account-number-is-4711-0815";
        let c =
            change(json!({"type": "ContentEvent", "contentType": "text/plain", "message": secret}));
        let payload = encode("node-a", Body::of_change(&c).unwrap()).unwrap();
        assert!(!payload.contains(secret), "{payload}");
        assert!(!payload.contains("ContentEvent"), "{payload}");
        let wire: serde_json::Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(
            wire,
            json!({"node": "node-a", "kind": "event",
                "conversation": "4f9a1f4e-5b7c-4d7e-9a51-0d1c3c1b7e21", "seq": 41})
        );
    }

    #[test]
    fn a_chat_state_carries_its_name_and_nothing_else_of_the_event() {
        let c = change(
            json!({"type": "ChatStateEvent", "chatState": "COMPOSING", "message": "secret"}),
        );
        let payload = encode("node-a", Body::of_change(&c).unwrap()).unwrap();
        assert!(!payload.contains("secret"), "{payload}");
        let wire: serde_json::Value = serde_json::from_str(&payload).unwrap();
        assert_eq!(wire["kind"], "chat_state");
        assert_eq!(wire["state"], "COMPOSING");
    }

    #[test]
    fn payloads_stay_under_the_bound_even_with_the_longest_ids() {
        // Identity subjects are at most 255 characters; four bytes each at worst in UTF-8.
        let long = "\u{1F600}".repeat(255);
        let body = Body::State {
            conversation: uuid::Uuid::new_v4().to_string().into(),
            consumer: long.clone().into(),
            agent: Some(long.clone().into()),
        };
        let payload = encode(&uuid::Uuid::new_v4().simple().to_string(), body).unwrap();
        assert!(payload.len() <= MAX_PAYLOAD, "{}", payload.len());
        let mut c = change(json!({"type": "ChatStateEvent", "chatState": "PAUSE"}));
        c.originator_id = long;
        let payload = encode("node-a", Body::of_change(&c).unwrap()).unwrap();
        assert!(payload.len() <= MAX_PAYLOAD);
        // Beyond the bound nothing is encoded (the caller sends a resync instead).
        let body = Body::State {
            conversation: "c".into(),
            consumer: "x".repeat(MAX_PAYLOAD).into(),
            agent: None,
        };
        assert_eq!(encode("node-a", body), None);
        const { assert!(MAX_PAYLOAD < 8000) };
    }

    #[test]
    fn every_kind_decodes_to_what_was_encoded() {
        let bodies = [
            Body::Event {
                conversation: "c1".into(),
                seq: 7,
            },
            Body::ChatState {
                conversation: "c1".into(),
                seq: 6,
                originator: "u".into(),
                role: "CONSUMER".into(),
                at: 5,
                state: "PAUSE".into(),
            },
            Body::State {
                conversation: "c1".into(),
                consumer: "u".into(),
                agent: Some("agent-7".into()),
            },
            Body::State {
                conversation: "c1".into(),
                consumer: "u".into(),
                agent: None,
            },
            Body::Resync,
        ];
        for body in bodies {
            let payload = encode("n", body.clone()).unwrap();
            let wire: Wire = serde_json::from_str(&payload).unwrap();
            assert_eq!(wire.body, body);
        }
    }

    #[tokio::test]
    async fn another_nodes_state_change_reaches_watchers_and_its_own_is_ignored() {
        let bus = Bus::default();
        let mut watcher = bus.state_changes();
        let own = encode(
            "me",
            Body::State {
                conversation: "c-own".into(),
                consumer: "u".into(),
                agent: None,
            },
        )
        .unwrap();
        assert!(!inject(&bus, "me", &own).unwrap());
        let other = encode(
            "other",
            Body::State {
                conversation: "c1".into(),
                consumer: "u".into(),
                agent: Some("a".into()),
            },
        )
        .unwrap();
        assert!(inject(&bus, "me", &other).unwrap());
        let got = watcher.recv().await.unwrap();
        assert_eq!(got.conversation_id, "c1");
        assert_eq!(got.agent_id, Some("a".into()));
        // A resync reads as "you may have missed changes".
        inject(&bus, "me", &encode("other", Body::Resync).unwrap()).unwrap();
        assert!(matches!(
            watcher.recv().await,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_))
        ));
        assert!(inject(&bus, "me", "{\"node\":\"x\",\"kind\":\"nope\"}").is_err());
        let bad_state = encode(
            "other",
            Body::ChatState {
                conversation: "c1".into(),
                seq: 1,
                originator: "u".into(),
                role: "CONSUMER".into(),
                at: 0,
                state: "<script>".into(),
            },
        )
        .unwrap();
        assert!(inject(&bus, "me", &bad_state).is_err());
    }
}
