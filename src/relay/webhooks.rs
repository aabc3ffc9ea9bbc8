//! Outbound webhooks: tells the brand's backend, with a signed POST, that a conversation
//! opened, a message was stored or a conversation closed.
//!
//! A webhook is an outbox item ([`crate::store::outbox`]) written in the same transaction as
//! its cause ([`Webhooks::item`]), so a committed change always gets its webhook, through
//! crashes and restarts, and each conversation's webhooks go out in commit order on any number
//! of nodes (one lane per conversation). The dispatcher makes the attempts
//! ([`Webhooks::attempt`]): retried with exponential backoff and jitter on connection errors,
//! timeouts, `5xx` and `429` (honouring `Retry-After`); parked for the operator after another
//! `4xx` or once the attempts are used up. Its delivery id (`webhook-id`) is the item's id,
//! the same across attempts and nodes; each attempt is signed again with a fresh timestamp.
//!
//! Never logs the secret or the message text; the text only leaves at all when the brand set
//! `include_text`, and it is never in the outbox: it is read from the sealed event when sent.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use serde_json::{Value, json};

use super::vocabulary::{Event, Participant, Role, event_seal_context};
use crate::backoff::Backoff;
use crate::clock::Clock;
use crate::clock::UnixMillis;
use crate::config::{Problems, WebhooksConfig};
use crate::dispatch::{Handler, Verdict};
use crate::http_client::HttpClient;
use crate::secret::read_secret_for;
use crate::store::Store;
use crate::store::outbox::{NewOutboxItem, OutboxItem};
use crate::store::relay::ConversationRow;
use crate::store::seal::DataKeys;
use crate::webhook_post::{Answer, Next, Target, header, post_once};
use crate::webhook_signature::WebhookKey;

/// The outbox kind of a webhook.
const KIND: &str = "webhook";

/// The first retry waits between half a second and a second, each next one twice as long; no
/// wait is longer than [`LONGEST_WAIT`].
const BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), LONGEST_WAIT);
/// No wait between attempts is longer, whatever the backoff or `Retry-After` say.
const LONGEST_WAIT: Duration = Duration::from_secs(300);

/// What happened, as the brand receives it in `type`.
#[derive(Debug, Clone, Copy)]
pub enum WebhookEvent<'a> {
    ConversationCreated,
    /// A stored event: only a `ContentEvent` (a message) becomes a webhook; receipts do not.
    MessageCreated {
        originator_id: &'a str,
        originator_role: Role,
        event: &'a Event,
    },
    ConversationClosed,
}

impl<'a> WebhookEvent<'a> {
    /// `event`, stored by `who` (the sequence is the outbox item's).
    pub fn message(who: &'a Participant, event: &'a Event) -> WebhookEvent<'a> {
        WebhookEvent::MessageCreated {
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
    /// Webhooks finished, by type and result: delivered, refused (4xx: parked), failed
    /// (attempts used up: parked), abandoned (webhooks turned off while one was claimed).
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
            "Relay webhooks finished, by type and result (delivered, refused, failed, abandoned)",
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
                http: HttpClient::new(crate::egress::Role::Relay, tls),
            }),
            _ => Err(problems),
        }
    }
}

struct Shared {
    /// `None`: webhooks are off.
    settings: RwLock<Option<Arc<Settings>>>,
    clock: Arc<dyn Clock>,
    metrics: WebhookMetrics,
    /// Where the text of a message comes from when the brand asked for it.
    store: Store,
    data_keys: Arc<DataKeys>,
}

/// The door to the webhooks. Cheap to clone; [`Webhooks::disabled`] makes no item.
#[derive(Clone, Default)]
pub struct Webhooks {
    shared: Option<Arc<Shared>>,
}

/// What the outbox keeps of a webhook: its body without the delivery id, the sequence (the
/// item's own) and the text (read from the sealed event when sent).
fn payload(
    conversation: &ConversationRow,
    at: UnixMillis,
    event: WebhookEvent<'_>,
) -> Option<Vec<u8>> {
    let mut body = json!({
        "type": event.type_name(),
        "account": conversation.account,
        "conversationId": conversation.id,
        "consumerId": conversation.consumer_id,
        "createdAt": at,
    });
    if let WebhookEvent::MessageCreated {
        originator_id,
        originator_role,
        event,
        ..
    } = event
    {
        if !matches!(event, Event::Content { .. }) {
            return None;
        }
        body["originatorId"] = originator_id.into();
        body["originatorRole"] = originator_role.name().into();
    }
    serde_json::to_vec(&body).ok()
}

impl Webhooks {
    /// Makes no item (a relay without webhooks, or a test).
    pub fn disabled() -> Webhooks {
        Webhooks::default()
    }

    /// `settings` is `None` when `[relay.webhooks]` is absent; a reload can still turn
    /// webhooks on ([`Webhooks::apply`]).
    pub fn new(
        settings: Option<Settings>,
        clock: Arc<dyn Clock>,
        metrics: WebhookMetrics,
        store: Store,
        data_keys: Arc<DataKeys>,
    ) -> Webhooks {
        Webhooks {
            shared: Some(Arc::new(Shared {
                settings: RwLock::new(settings.map(Arc::new)),
                clock,
                metrics,
                store,
                data_keys,
            })),
        }
    }

    /// Puts reloaded settings in use (`None`: webhooks off). Webhooks already in the outbox are
    /// sent with the new settings (or, when off, removed unsent).
    pub fn apply(&self, settings: Option<Settings>) {
        if let Some(shared) = &self.shared {
            *shared.settings.write().unwrap_or_else(|e| e.into_inner()) = settings.map(Arc::new);
        }
    }

    /// The outbox item for `event` on `conversation`, which happens at `at`: to be written in
    /// the same transaction as the change. `None` when webhooks are off, the brand does not
    /// want this type, or the event is not a message.
    pub fn item(
        &self,
        conversation: &ConversationRow,
        at: UnixMillis,
        event: WebhookEvent<'_>,
    ) -> Option<NewOutboxItem> {
        let shared = self.shared.as_ref()?;
        let settings = shared.current()?;
        if !settings.config.wants(event.type_name()) {
            return None;
        }
        let payload = payload(conversation, at, event)?;
        let now = UnixMillis::now(&*shared.clock);
        Some(NewOutboxItem {
            id: uuid::Uuid::new_v4().to_string(),
            kind: KIND.to_string(),
            lane: format!("webhook:{}", conversation.id),
            dedupe_key: None,
            payload,
            created_at: now,
            next_at: now,
        })
    }

    /// One attempt at the webhook `item` (its `attempts` made before), and what to do next.
    pub async fn attempt(&self, item: &OutboxItem) -> Verdict {
        let Some(shared) = &self.shared else {
            return Verdict::Drop {
                why: "relay webhooks are off",
            };
        };
        let stored: Option<Value> = serde_json::from_slice(&item.payload).ok();
        let event_type = stored
            .as_ref()
            .and_then(|b| b["type"].as_str())
            .and_then(type_named)
            .unwrap_or("unknown");
        let Some(settings) = shared.current() else {
            tracing::info!(delivery = %item.id, "relay webhooks turned off; a webhook in the outbox was not sent");
            shared.metrics.finished(event_type, "abandoned");
            return Verdict::Drop {
                why: "relay webhooks are off",
            };
        };
        let Some(body) = shared
            .body(item, stored, settings.config.include_text)
            .await
        else {
            shared.metrics.finished(event_type, "failed");
            return Verdict::Park {
                error: "the stored webhook is not readable".into(),
            };
        };
        let attempt = u32::try_from(item.attempts)
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        let headers = [
            header("content-type", "application/json"),
            header(
                "user-agent",
                concat!("brandgate/", env!("CARGO_PKG_VERSION")),
            ),
        ]
        .into_iter()
        .flatten()
        .collect();
        let legacy = |key: &WebhookKey, timestamp: u64, body: &[u8]| {
            if !settings.config.legacy_signature {
                return Vec::new();
            }
            let signature = format!("v1={}", key.legacy_signature(timestamp, body));
            [
                header("x-brandgate-delivery", &item.id),
                header("x-brandgate-event", event_type),
                header("x-brandgate-timestamp", &timestamp.to_string()),
                header("x-brandgate-signature", &signature),
            ]
            .into_iter()
            .flatten()
            .collect()
        };
        let target = Target {
            http: &settings.http,
            uri: &settings.uri,
            key: Some(&settings.key),
            timeout: settings.config.timeout.0,
            longest_wait: LONGEST_WAIT,
        };
        let Answer {
            next,
            outcome,
            status,
            error,
        } = post_once(&target, &item.id, body, shared.clock.now(), headers, legacy).await;
        shared
            .metrics
            .attempts
            .get_or_create(&AttemptLabels { outcome })
            .inc();
        match next {
            Next::Delivered => {
                tracing::debug!(delivery = %item.id, r#type = event_type, attempt, "webhook delivered");
                shared.metrics.finished(event_type, "delivered");
                Verdict::Delivered
            }
            Next::Refused => {
                tracing::warn!(delivery = %item.id, r#type = event_type, status, "the webhook receiver refused a webhook; parked (see brandgate outbox list)");
                shared.metrics.finished(event_type, "refused");
                Verdict::Park { error }
            }
            Next::Retry { .. } if attempt >= settings.config.max_attempts => {
                tracing::warn!(delivery = %item.id, r#type = event_type, attempt, status, error, "webhook given up after its last attempt; parked (see brandgate outbox list)");
                shared.metrics.finished(event_type, "failed");
                Verdict::Park { error }
            }
            Next::Retry { retry_after } => {
                let wait = retry_after.unwrap_or_else(|| BACKOFF.delay(attempt));
                tracing::info!(delivery = %item.id, r#type = event_type, attempt, status, error, ?wait, "webhook not delivered; retrying");
                Verdict::Retry { wait, error }
            }
        }
    }
}

impl Handler for Webhooks {
    fn kind(&self) -> &'static str {
        KIND
    }

    /// While `[relay.webhooks]` is configured; turned off, webhooks wait in the outbox.
    fn serves(&self) -> bool {
        self.shared.as_ref().is_some_and(|s| s.current().is_some())
    }

    fn attempt<'a>(
        &'a self,
        item: &'a OutboxItem,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Verdict> + Send + 'a>> {
        Box::pin(Webhooks::attempt(self, item))
    }
}

/// The type's static name, for labels.
fn type_named(name: &str) -> Option<&'static str> {
    [
        "conversation.created",
        "message.created",
        "conversation.closed",
    ]
    .into_iter()
    .find(|t| *t == name)
}

impl Shared {
    fn current(&self) -> Option<Arc<Settings>> {
        self.settings
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The body to send: the stored one with the delivery id, the sequence and, when asked
    /// for, the message's text. `None` when the stored body is not readable.
    async fn body(
        &self,
        item: &OutboxItem,
        stored: Option<Value>,
        include_text: bool,
    ) -> Option<Bytes> {
        let mut body = stored?;
        let fields = body.as_object_mut()?;
        fields.insert("id".into(), item.id.clone().into());
        if fields.get("type").and_then(Value::as_str) == Some("message.created") {
            let seq = item.seq?;
            fields.insert("sequence".into(), seq.into());
            if include_text {
                match self.text(item, seq).await {
                    Some(text) => {
                        fields.insert("text".into(), text.into());
                    }
                    None => {
                        tracing::warn!(delivery = %item.id, "a message's text cannot be read; its webhook goes without it");
                    }
                }
            }
        }
        serde_json::to_vec(&body).ok().map(Bytes::from)
    }

    /// The text of the message stored at `seq` of the item's conversation.
    async fn text(&self, item: &OutboxItem, seq: i64) -> Option<String> {
        let conversation = item.conversation_id.as_ref()?;
        let row = self
            .store
            .list_events(conversation, seq, 1)
            .await
            .ok()?
            .pop()?;
        if row.seq != seq {
            return None;
        }
        let plain = self
            .data_keys
            .open(&event_seal_context(&row.event_id), &row.sealed)
            .ok()?;
        let body: Value = serde_json::from_slice(plain.expose()).ok()?;
        match Event::from_stored(&body)? {
            Event::Content { message } => Some(message.to_string()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

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
    fn the_outbox_keeps_neither_text_nor_receipts() {
        let event = Event::Content {
            message: "hi".into(),
        };
        let message = WebhookEvent::MessageCreated {
            originator_id: "u1",
            originator_role: Role::Consumer,
            event: &event,
        };
        let kept: Value =
            serde_json::from_slice(&payload(&row(), UnixMillis(9), message).unwrap()).unwrap();
        assert_eq!(
            kept,
            json!({"type": "message.created", "account": "acme", "conversationId": "c1",
                   "consumerId": "u1", "createdAt": 9, "originatorId": "u1",
                   "originatorRole": "CONSUMER"})
        );
        let receipt = Event::AcceptStatus {
            status: crate::relay::vocabulary::AcceptStatus::Read,
            sequences: vec![0],
        };
        let receipt = WebhookEvent::MessageCreated {
            originator_id: "u1",
            originator_role: Role::Consumer,
            event: &receipt,
        };
        assert!(payload(&row(), UnixMillis(9), receipt).is_none());
    }
}
