//! Outbound webhooks: tells the brand's backend, with a signed POST, that a conversation
//! opened, a message was stored or a conversation closed.
//!
//! [`Webhooks::emit`] never waits and never fails its caller: the webhook goes into a bounded
//! queue (`try_send`); when the queue is full it is dropped, counted and logged (at most every
//! few seconds). One worker task sends them, several at once, each conversation's strictly in
//! order, so a receiver that is slow for one conversation does not hold back the others.
//! A webhook is retried with exponential backoff and jitter on connection errors, timeouts,
//! `5xx` and `429` (honouring `Retry-After`), never after another `4xx`; its delivery id stays
//! the same across attempts, and each attempt is signed again with a fresh timestamp.
//!
//! Never logs the secret or the message text; the text only leaves at all when the brand set
//! `include_text`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::vocabulary::{Event, Participant, Role};
use crate::backoff::{Backoff, retry_after};
use crate::clock::UnixMillis;
use crate::clock::{Clock, unix_seconds};
use crate::config::{Problems, WebhooksConfig};
use crate::http_client::{HttpClient, HttpError};
use crate::ids::ConversationId;
use crate::secret::read_secret_for;
use crate::store::relay::ConversationRow;
use crate::webhook_signature::WebhookKey;

/// The first retry waits between half a second and a second, each next one twice as long; no
/// wait is longer than [`LONGEST_WAIT`].
const BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), LONGEST_WAIT);
/// No wait between attempts is longer, whatever the backoff or `Retry-After` say.
const LONGEST_WAIT: Duration = Duration::from_secs(300);
/// A full queue is logged at most this often (with the number dropped meanwhile).
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);
/// The queue when `[relay.webhooks]` was absent at start (a reload may add the section).
const DEFAULT_QUEUE: usize = 10_000;
const DEFAULT_IN_FLIGHT: usize = 8;

/// What happened, as the brand receives it in `type`.
#[derive(Debug, Clone, Copy)]
pub enum WebhookEvent<'a> {
    ConversationCreated,
    /// A stored event: only a `ContentEvent` (a message) becomes a webhook; receipts do not.
    MessageCreated {
        sequence: i64,
        originator_id: &'a str,
        originator_role: Role,
        event: &'a Event,
    },
    ConversationClosed,
}

impl<'a> WebhookEvent<'a> {
    /// `event`, stored at `sequence` by `who`.
    pub fn message(sequence: i64, who: &'a Participant, event: &'a Event) -> WebhookEvent<'a> {
        WebhookEvent::MessageCreated {
            sequence,
            originator_id: who.id(),
            originator_role: who.role(),
            event,
        }
    }

    fn type_name(&self) -> &'static str {
        match self {
            WebhookEvent::ConversationCreated => "conversation.created",
            WebhookEvent::MessageCreated { .. } => "message.created",
            WebhookEvent::ConversationClosed => "conversation.closed",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    r#type: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    outcome: &'static str,
}

/// The relay's webhook metrics.
#[derive(Clone, Default)]
pub struct WebhookMetrics {
    /// Webhooks finished, by type and result: delivered, refused (4xx), failed (attempts
    /// used up), dropped (queue full or stopping), abandoned (shutdown or webhooks turned off).
    webhooks: Family<ResultLabels, Counter>,
    /// Attempts, by outcome: 2xx, 4xx, 429, 5xx, timeout, error.
    attempts: Family<AttemptLabels, Counter>,
}

impl WebhookMetrics {
    pub fn register(registry: &mut Registry) -> WebhookMetrics {
        let m = WebhookMetrics::default();
        let r = registry.sub_registry_with_prefix("brandgate_relay");
        r.register(
            "webhooks",
            "Relay webhooks finished, by type and result (delivered, refused, failed, dropped, abandoned)",
            m.webhooks.clone(),
        );
        r.register(
            "webhook_attempts",
            "Relay webhook attempts, by outcome (2xx, 4xx, 429, 5xx, timeout, error)",
            m.attempts.clone(),
        );
        m
    }

    fn finished(&self, event_type: &'static str, result: &'static str) {
        self.webhooks
            .get_or_create(&ResultLabels {
                r#type: event_type,
                result,
            })
            .inc();
    }
}

/// `[relay.webhooks]`, read and checked: what a start or a reload puts in use.
pub struct Settings {
    uri: Uri,
    key: WebhookKey,
    config: WebhooksConfig,
    http: HttpClient,
}

impl Settings {
    /// Reads the secret and the trust anchors; every problem is reported, naming its key.
    pub fn prepare(config: &WebhooksConfig) -> Result<Settings, Problems> {
        let mut problems = Problems::default();
        let uri = crate::http_client::check_url(&config.url)
            .map_err(|e| problems.push("relay.webhooks.url", e))
            .ok();
        let key = read_secret_for(
            "relay.webhooks.secret_file",
            &config.secret_file,
            &mut problems,
        )
        .and_then(|secret| {
            WebhookKey::new(secret)
                .map_err(|e| problems.push("relay.webhooks.secret_file", e))
                .ok()
        });
        let tls = crate::tls::client_config(&config.extra_trust_anchors, None, &[])
            .map_err(|e| problems.push("relay.webhooks.extra_trust_anchors", e))
            .ok();
        match (uri, key, tls) {
            (Some(uri), Some(key), Some(tls)) if problems.is_empty() => Ok(Settings {
                uri,
                key,
                config: config.clone(),
                http: HttpClient::new(tls),
            }),
            _ => Err(problems),
        }
    }
}

/// One webhook on its way.
struct Delivery {
    id: String,
    event_type: &'static str,
    conversation_id: ConversationId,
    body: Bytes,
}

struct Shared {
    tx: mpsc::Sender<Delivery>,
    /// `None`: webhooks are off.
    settings: RwLock<Option<Arc<Settings>>>,
    clock: Arc<dyn Clock>,
    metrics: WebhookMetrics,
    /// When a drop was last logged, and how many were dropped since.
    drops: Mutex<(Option<Instant>, u64)>,
    /// Cancelled when the relay stops: the queue closes and no retry waits any more.
    closing: CancellationToken,
    worker: TaskTracker,
}

/// The door to the webhooks. Cheap to clone; [`Webhooks::disabled`] sends nothing.
#[derive(Clone, Default)]
pub struct Webhooks {
    shared: Option<Arc<Shared>>,
}

impl Webhooks {
    /// Sends nothing (a relay without webhooks, or a test).
    pub fn disabled() -> Webhooks {
        Webhooks::default()
    }

    /// Starts the worker. `settings` is `None` when `[relay.webhooks]` is absent; a reload can
    /// still turn webhooks on ([`Webhooks::apply`]), with the default queue size.
    /// The worker runs until [`Webhooks::drain`]: the relay lives as long as the process.
    pub fn start(
        settings: Option<Settings>,
        clock: Arc<dyn Clock>,
        metrics: WebhookMetrics,
    ) -> Webhooks {
        let (capacity, in_flight) = settings
            .as_ref()
            .map_or((DEFAULT_QUEUE, DEFAULT_IN_FLIGHT), |s| {
                (s.config.queue_capacity, s.config.max_in_flight)
            });
        let (tx, rx) = mpsc::channel(capacity);
        let shared = Arc::new(Shared {
            tx,
            settings: RwLock::new(settings.map(Arc::new)),
            clock,
            metrics,
            drops: Mutex::new((None, 0)),
            closing: CancellationToken::new(),
            worker: TaskTracker::new(),
        });
        shared
            .worker
            .spawn(run(rx, shared.clone(), in_flight, capacity));
        shared.worker.close();
        Webhooks {
            shared: Some(shared),
        }
    }

    /// Puts reloaded settings in use (`None`: webhooks off). Webhooks already queued are sent
    /// with the new settings; the queue size and `max_in_flight` stay as they were at start.
    pub fn apply(&self, settings: Option<Settings>) {
        if let Some(shared) = &self.shared {
            *shared.settings.write().unwrap_or_else(|e| e.into_inner()) = settings.map(Arc::new);
        }
    }

    /// Queues a webhook for `event` on `conversation`, which happened at `at` (Unix
    /// milliseconds). Call only after the change is committed. Never waits, never fails.
    pub fn emit(&self, conversation: &ConversationRow, at: UnixMillis, event: WebhookEvent<'_>) {
        let Some(shared) = &self.shared else { return };
        let Some(settings) = shared.current() else {
            return;
        };
        let event_type = event.type_name();
        if !settings.config.wants(event_type) {
            return;
        }
        let id = uuid::Uuid::new_v4().to_string();
        let Some(body) = body(&id, conversation, at, event, settings.config.include_text) else {
            return;
        };
        let delivery = Delivery {
            id,
            event_type,
            conversation_id: conversation.id.clone(),
            body,
        };
        if let Err(e) = shared.tx.try_send(delivery) {
            let why = match e {
                mpsc::error::TrySendError::Full(_) => "queue full",
                mpsc::error::TrySendError::Closed(_) => "relay stopping",
            };
            shared.metrics.finished(event_type, "dropped");
            shared.dropped(why);
        }
    }

    /// Stops taking webhooks and waits until the queued ones are sent (each gets at least one
    /// attempt; none waits for a retry). The caller bounds the wait.
    pub async fn drain(&self) {
        let Some(shared) = &self.shared else { return };
        let queued = shared.tx.max_capacity() - shared.tx.capacity();
        if queued > 0 {
            tracing::info!(queued, "sending the queued webhooks before stopping");
        }
        shared.closing.cancel();
        shared.worker.wait().await;
    }
}

impl Shared {
    fn current(&self) -> Option<Arc<Settings>> {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Logs a dropped webhook, at most once every [`DROP_LOG_EVERY`].
    fn dropped(&self, why: &'static str) {
        let mut drops = self.drops.lock().unwrap_or_else(|e| e.into_inner());
        drops.1 += 1;
        if drops.0.is_none_or(|at| at.elapsed() >= DROP_LOG_EVERY) {
            tracing::warn!(
                dropped = drops.1,
                why,
                "relay webhooks dropped (the receiver is slower than the relay; see brandgate_relay_webhooks_total)"
            );
            *drops = (Some(Instant::now()), 0);
        }
    }
}

/// The JSON body; `None` for stored events that are not messages.
fn body(
    id: &str,
    conversation: &ConversationRow,
    at: UnixMillis,
    event: WebhookEvent<'_>,
    include_text: bool,
) -> Option<Bytes> {
    let mut body = json!({
        "id": id,
        "type": event.type_name(),
        "account": conversation.account,
        "conversationId": conversation.id,
        "consumerId": conversation.consumer_id,
        "createdAt": at,
    });
    if let WebhookEvent::MessageCreated {
        sequence,
        originator_id,
        originator_role,
        event,
    } = event
    {
        let Event::Content { message } = event else {
            return None;
        };
        body["sequence"] = sequence.into();
        body["originatorId"] = originator_id.into();
        body["originatorRole"] = originator_role.name().into();
        if include_text {
            body["text"] = message.as_str().into();
        }
    }
    serde_json::to_vec(&body).ok().map(Bytes::from)
}

/// Sends what the queue holds: at most `in_flight` at once, one at a time per conversation
/// (the next one of a conversation waits, outside the channel, for the one before it). Holds
/// at most `capacity` waiting ones besides the channel's own. Ends once the relay is stopping,
/// the channel is empty and every delivery has finished.
async fn run(
    mut rx: mpsc::Receiver<Delivery>,
    shared: Arc<Shared>,
    in_flight: usize,
    capacity: usize,
) {
    // Conversations with a delivery running, and their next ones in order.
    let mut lanes: HashMap<ConversationId, VecDeque<Delivery>> = HashMap::new();
    let mut waiting = 0usize;
    let mut running: JoinSet<()> = JoinSet::new();
    let mut running_for: HashMap<tokio::task::Id, ConversationId> = HashMap::new();
    let mut open = true;
    let mut closing = false;
    loop {
        let take = open && running.len() < in_flight && waiting < capacity;
        tokio::select! {
            () = shared.closing.cancelled(), if !closing => {
                closing = true;
                // What is in the channel is still received; nothing new gets in.
                rx.close();
            }
            got = rx.recv(), if take => match got {
                Some(d) => match lanes.get_mut(&d.conversation_id) {
                    Some(lane) => {
                        lane.push_back(d);
                        waiting += 1;
                    }
                    None => {
                        lanes.insert(d.conversation_id.clone(), VecDeque::new());
                        let conversation = d.conversation_id.clone();
                        let task = running.spawn(deliver(shared.clone(), d));
                        running_for.insert(task.id(), conversation);
                    }
                },
                None => open = false,
            },
            Some(done) = running.join_next_with_id() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => {
                        tracing::error!(error = %e, "a webhook delivery task failed");
                        e.id()
                    }
                };
                let Some(conversation) = running_for.remove(&id) else { continue };
                let next = lanes.get_mut(&conversation).and_then(VecDeque::pop_front);
                match next {
                    Some(d) => {
                        waiting -= 1;
                        let task = running.spawn(deliver(shared.clone(), d));
                        running_for.insert(task.id(), conversation);
                    }
                    None => {
                        lanes.remove(&conversation);
                    }
                }
            }
            else => break,
        }
    }
}

/// What one attempt's answer means for the next step.
#[derive(Debug, PartialEq, Eq)]
enum Next {
    Delivered,
    /// `4xx` other than `429`: the receiver will not take it; trying again would not help.
    Refused,
    /// Try again, after the receiver's `Retry-After` if it gave one.
    Retry {
        retry_after: Option<Duration>,
    },
}

/// The next step after an answer with `status` (HTTP-date `Retry-After` read against `now`).
fn classify(status: StatusCode, headers: &HeaderMap, now: SystemTime) -> Next {
    if status.is_success() {
        Next::Delivered
    } else if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        Next::Retry {
            retry_after: retry_after(headers, now, LONGEST_WAIT),
        }
    } else {
        // 1xx and 3xx (redirects are never followed) are refusals too.
        Next::Refused
    }
}

fn header(name: &'static str, value: &str) -> Option<(HeaderName, HeaderValue)> {
    Some((
        HeaderName::from_static(name),
        HeaderValue::from_str(value).ok()?,
    ))
}

/// Sends one webhook until it is delivered, refused, out of attempts, or the relay stops.
async fn deliver(shared: Arc<Shared>, d: Delivery) {
    let mut attempt = 1u32;
    loop {
        let Some(settings) = shared.current() else {
            tracing::info!(delivery = %d.id, "relay webhooks turned off; a queued webhook was not sent");
            shared.metrics.finished(d.event_type, "abandoned");
            return;
        };
        let timestamp = unix_seconds(shared.clock.now());
        let mut headers: Vec<_> = [
            header("content-type", "application/json"),
            header(
                "user-agent",
                concat!("brandgate/", env!("CARGO_PKG_VERSION")),
            ),
        ]
        .into_iter()
        .flatten()
        .collect();
        headers.extend(settings.key.headers(&d.id, timestamp, &d.body));
        if settings.config.legacy_signature {
            let legacy = format!("v1={}", settings.key.legacy_signature(timestamp, &d.body));
            headers.extend(
                [
                    header("x-brandgate-delivery", &d.id),
                    header("x-brandgate-event", d.event_type),
                    header("x-brandgate-timestamp", &timestamp.to_string()),
                    header("x-brandgate-signature", &legacy),
                ]
                .into_iter()
                .flatten(),
            );
        }
        let answer = settings
            .http
            .post(
                &settings.uri,
                &headers,
                d.body.clone(),
                settings.config.timeout.0,
            )
            .await;
        let (next, outcome) = match &answer {
            Ok(r) => (
                classify(r.status, &r.headers, shared.clock.now()),
                match r.status.as_u16() {
                    200..=299 => "2xx",
                    429 => "429",
                    500..=599 => "5xx",
                    _ => "4xx",
                },
            ),
            Err(HttpError::Timeout(_)) => (Next::Retry { retry_after: None }, "timeout"),
            Err(_) => (Next::Retry { retry_after: None }, "error"),
        };
        shared
            .metrics
            .attempts
            .get_or_create(&AttemptLabels { outcome })
            .inc();
        let status = answer.as_ref().ok().map(|r| r.status.as_u16());
        let error = answer.as_ref().err().map(ToString::to_string);
        match next {
            Next::Delivered => {
                tracing::debug!(delivery = %d.id, r#type = d.event_type, attempt, "webhook delivered");
                shared.metrics.finished(d.event_type, "delivered");
                return;
            }
            Next::Refused => {
                tracing::warn!(delivery = %d.id, r#type = d.event_type, status, "the webhook receiver refused a webhook; not retried");
                shared.metrics.finished(d.event_type, "refused");
                return;
            }
            Next::Retry { .. } if attempt >= settings.config.max_attempts => {
                tracing::warn!(delivery = %d.id, r#type = d.event_type, attempt, status, error, "webhook given up after its last attempt");
                shared.metrics.finished(d.event_type, "failed");
                return;
            }
            Next::Retry { retry_after } => {
                let wait = retry_after.unwrap_or_else(|| BACKOFF.delay(attempt));
                tracing::info!(delivery = %d.id, r#type = d.event_type, attempt, status, error, ?wait, "webhook not delivered; retrying");
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = shared.closing.cancelled() => {
                        tracing::warn!(delivery = %d.id, r#type = d.event_type, attempt, "relay stopping; a webhook waiting for a retry was abandoned");
                        shared.metrics.finished(d.event_type, "abandoned");
                        return;
                    }
                }
                attempt += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn answers_are_classified_by_what_to_do_next() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let none = HeaderMap::new();
        let s = |c: u16| StatusCode::from_u16(c).unwrap();
        assert_eq!(classify(s(204), &none, now), Next::Delivered);
        assert_eq!(classify(s(400), &none, now), Next::Refused);
        assert_eq!(classify(s(410), &none, now), Next::Refused);
        assert_eq!(classify(s(302), &none, now), Next::Refused);
        assert_eq!(
            classify(s(503), &none, now),
            Next::Retry { retry_after: None }
        );
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(
            classify(s(429), &h, now),
            Next::Retry {
                retry_after: Some(Duration::from_secs(7))
            }
        );
        // Capped at the longest wait.
        h.insert("retry-after", HeaderValue::from_static("86400"));
        assert_eq!(
            classify(s(503), &h, now),
            Next::Retry {
                retry_after: Some(LONGEST_WAIT)
            }
        );
    }

    fn row() -> ConversationRow {
        ConversationRow {
            id: "c1".into(),
            account: "acme".into(),
            consumer_id: "u1".into(),
            open: true,
            agent_id: None,
            skill: None,
            created_at: UnixMillis(5),
            closed_at: None,
            last_seq: -1,
        }
    }

    #[test]
    fn message_text_is_sent_only_when_asked() {
        let event = Event::Content {
            message: "hi".into(),
        };
        let message = WebhookEvent::MessageCreated {
            sequence: 3,
            originator_id: "u1",
            originator_role: Role::Consumer,
            event: &event,
        };
        let without: Value =
            serde_json::from_slice(&body("d1", &row(), UnixMillis(9), message, false).unwrap())
                .unwrap();
        assert_eq!(
            without,
            json!({"id": "d1", "type": "message.created", "account": "acme",
                   "conversationId": "c1", "consumerId": "u1", "createdAt": 9, "sequence": 3,
                   "originatorId": "u1", "originatorRole": "CONSUMER"})
        );
        let with: Value =
            serde_json::from_slice(&body("d1", &row(), UnixMillis(9), message, true).unwrap())
                .unwrap();
        assert_eq!(with["text"], "hi");
        let receipt = Event::AcceptStatus {
            status: crate::relay::vocabulary::AcceptStatus::Read,
            sequences: vec![0],
        };
        let receipt = WebhookEvent::MessageCreated {
            sequence: 4,
            originator_id: "u1",
            originator_role: Role::Consumer,
            event: &receipt,
        };
        assert!(body("d2", &row(), UnixMillis(9), receipt, true).is_none());
    }
}
