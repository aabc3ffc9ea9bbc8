//! Dead-token feedback: each device token a provider declares dead is recorded (app, provider,
//! SHA-256 of the token, reason, provider timestamp) as one JSON line in
//! `<state_dir>/dead-tokens.jsonl` (by the daemon; `push-test` writes no file), and optionally
//! POSTed to a webhook signed as Standard Webhooks says (see [`crate::webhook_signature`]).
//!
//! Reporting never waits for the webhook. The file is written for every dead token, off the
//! runtime's workers. When the daemon has a store, a record for the webhook is written to the
//! store's outbox before the platform is answered, and the daemon's dispatcher posts it
//! ([`FeedbackSink::attempt`]): it outlives a crash, a token found dead on several nodes while
//! its record waits is posted once, and the delivery id (`webhook-id`) is the item's, the same
//! across attempts and nodes. Without a store (or when it cannot take the record), the webhook
//! is fed through a bounded queue in memory by its own task, so a slow or failing receiver
//! delays only itself (a full queue drops the post, counted, never the file line). The full
//! token leaves only if the operator set `include_token` for the webhook; the file never holds
//! it, and the outbox holds it sealed.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Uri};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::metrics::{PushMetrics, ResultLabels};
use super::request::DeviceToken;
use crate::backoff::Backoff;
use crate::clock::{Clock, UnixMillis, unix_seconds};
use crate::config::{FeedbackConfig, Problems};
use crate::dispatch::{Doorbell, Verdict};
use crate::http_client::HttpClient;
use crate::secret::read_secret_file;
use crate::store::outbox::{NewOutboxItem, OutboxItem};
use crate::store::seal::{DataKeys, SealError};
use crate::store::{Store, StoreError};
use crate::webhook_post::{Answer, Next, Target, header, post_once};
use crate::webhook_signature::WebhookKey;

/// The outbox kind of a dead-token record.
pub const OUTBOX_KIND: &str = "dead_token";
const QUEUE: usize = 1024;
/// Between attempts: 0.5–1 s, then 1–2 s, 2–4 s, ..., unless the receiver's `Retry-After`
/// asks for another wait (at most [`LONGEST_WAIT`]). The in-memory queue, which one task
/// drains, never waits longer than [`LONGEST_QUEUE_WAIT`].
const WEBHOOK_BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), LONGEST_WAIT);
const LONGEST_WAIT: Duration = Duration::from_secs(300);
const LONGEST_QUEUE_WAIT: Duration = Duration::from_secs(60);
/// Attempts per record from the in-memory queue (fewer than the outbox's: one task drains it).
const QUEUE_ATTEMPTS: u32 = 4;
/// The longest a push's answer waits for its dead-token record to be kept in the outbox.
const KEEP_LIMIT: Duration = Duration::from_secs(1);
/// The record file is rotated (to `.1`) past this size.
const ROTATE_BYTES: u64 = 16 * 1024 * 1024;
pub const RECORD_FILE: &str = "dead-tokens.jsonl";

/// One dead token. Its `Debug` shows the token shortened, like every [`DeviceToken`].
#[derive(Debug, Clone)]
pub struct DeadToken {
    pub app: String,
    pub provider: &'static str,
    pub token: DeviceToken,
    pub reason: String,
    /// When the provider says the token stopped working (APNs 410 timestamp).
    pub since: Option<SystemTime>,
    pub recorded_at: SystemTime,
}

/// What is written and posted for a dead token.
#[derive(Serialize)]
struct Record<'a> {
    app: &'a str,
    provider: &'static str,
    token_sha256: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<&'a str>,
    reason: &'a str,
    /// Unix seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    provider_timestamp: Option<u64>,
    recorded_at: u64,
}

impl DeadToken {
    pub fn new(
        app: &str,
        provider: &'static str,
        token: &DeviceToken,
        reason: &str,
        since: Option<SystemTime>,
    ) -> Self {
        DeadToken {
            app: app.to_string(),
            provider,
            token: token.clone(),
            reason: reason.to_string(),
            since,
            recorded_at: SystemTime::now(),
        }
    }

    /// The JSON record; the token itself only when `with_token`.
    fn to_json(&self, with_token: bool) -> String {
        serde_json::to_string(&self.record(with_token)).unwrap_or_default()
    }

    fn record(&self, with_token: bool) -> Record<'_> {
        Record {
            app: &self.app,
            provider: self.provider,
            token_sha256: self.token.sha256_hex(),
            token: with_token.then(|| self.token.as_str()),
            reason: &self.reason,
            provider_timestamp: self.since.map(unix_seconds),
            recorded_at: unix_seconds(self.recorded_at),
        }
    }
}

/// A dead-token record as it waits in the outbox: the record without the token, and the
/// token sealed when the webhook was to carry it.
#[derive(Serialize, Deserialize)]
struct Stored {
    record: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sealed_token: Option<String>,
}

/// What a sealed token in the outbox is bound to: its item.
fn seal_context(item_id: &str) -> Vec<u8> {
    format!("brandgate dead-token outbox\0{item_id}").into_bytes()
}

/// Why a record could not be kept in the outbox (it then goes through the in-memory queue).
#[derive(Debug, thiserror::Error)]
enum KeepError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot seal the device token: {0}")]
    Seal(#[from] SealError),
}

/// Where the daemon keeps dead-token records for the webhook when it has a store: the
/// outbox, so a record outlives a crash and goes out once across nodes.
pub struct FeedbackOutbox {
    pub store: Store,
    pub data_keys: Arc<DataKeys>,
    pub clock: Arc<dyn Clock>,
    pub bell: Doorbell,
}

impl FeedbackOutbox {
    /// Writes `dead` for the webhook. A record of the same token (app, provider) still
    /// pending is not added again.
    async fn write(&self, dead: &DeadToken, include_token: bool) -> Result<(), KeepError> {
        let id = uuid::Uuid::new_v4().to_string();
        let sealed_token = if include_token {
            let sealed = self
                .data_keys
                .seal(&seal_context(&id), dead.token.as_str().as_bytes())?;
            Some(base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                sealed,
            ))
        } else {
            None
        };
        let stored = Stored {
            record: serde_json::to_value(dead.record(false)).unwrap_or_default(),
            sealed_token,
        };
        let now = UnixMillis::now(&*self.clock);
        let digest = dead.token.sha256_hex();
        self.store
            .add_outbox_item(&NewOutboxItem {
                kind: OUTBOX_KIND.into(),
                // Records need no order; 16 lanes per app (by the digest's first digit) let
                // several go at once while keeping the lanes a claim walks few.
                lane: format!(
                    "{OUTBOX_KIND}:{}:{}",
                    dead.app,
                    digest.get(..1).unwrap_or("0")
                ),
                dedupe_key: Some(format!(
                    "{OUTBOX_KIND}:{}:{}:{}",
                    dead.app, dead.provider, digest
                )),
                id,
                payload: serde_json::to_vec(&stored).unwrap_or_default(),
                created_at: now,
                next_at: now,
            })
            .await?;
        self.bell.ring();
        Ok(())
    }

    /// The body for a stored item: its record, with the token when `include_token` and it
    /// was kept. `None` when the item is not readable.
    fn body(&self, item: &OutboxItem, include_token: bool) -> Option<Vec<u8>> {
        let stored: Stored = serde_json::from_slice(&item.payload).ok()?;
        let mut record = stored.record;
        if include_token {
            match stored
                .sealed_token
                .as_deref()
                .map(|s| self.open_token(item, s))
            {
                Some(Some(token)) => {
                    record.as_object_mut()?.insert("token".into(), token.into());
                }
                // Sealed under a data key no longer configured, say: the record still goes.
                Some(None) => {
                    tracing::warn!(delivery = %item.id, "a dead-token record's sealed token cannot be opened; it goes without the token");
                }
                None => {
                    tracing::info!(delivery = %item.id, "a dead-token record written before include_token was set goes without the token");
                }
            }
        }
        serde_json::to_vec(&record).ok()
    }

    /// The device token sealed in `item`'s payload.
    fn open_token(&self, item: &OutboxItem, sealed: &str) -> Option<String> {
        let sealed =
            base64::Engine::decode(&base64::engine::general_purpose::STANDARD, sealed).ok()?;
        let token = self.data_keys.open(&seal_context(&item.id), &sealed).ok()?;
        String::from_utf8(token.expose().clone()).ok()
    }
}

struct Webhook {
    uri: Uri,
    key: Option<WebhookKey>,
    legacy_signature: bool,
    include_token: bool,
    timeout: Duration,
    max_attempts: u32,
    http: HttpClient,
}

/// Where dead tokens go. The record file is written for every one, whatever the webhook does.
/// The webhook gets them through the store's outbox when the daemon has one
/// ([`FeedbackOutbox`]), otherwise (or when the store cannot take one) through a bounded queue
/// in memory drained by its own task, which ends when the last sink of a config generation
/// goes.
#[derive(Clone)]
pub struct FeedbackSink {
    record_file: Option<PathBuf>,
    webhook: Option<Arc<Webhook>>,
    queue: Option<mpsc::Sender<DeadToken>>,
    metrics: PushMetrics,
}

impl FeedbackSink {
    pub fn build(
        cfg: &FeedbackConfig,
        record_dir: Option<&Path>,
        metrics: &PushMetrics,
        problems: &mut Problems,
    ) -> Option<FeedbackSink> {
        let webhook = match &cfg.webhook {
            None => None,
            Some(w) => {
                let uri = crate::http_client::check_url(&w.url)
                    .map_err(|e| problems.push("push.feedback.webhook.url", e))
                    .ok();
                let key = match &w.secret_file {
                    None => Some(None),
                    Some(p) => read_secret_file(p)
                        .map_err(|e| e.to_string())
                        .and_then(|s| WebhookKey::new(s).map_err(|e| e.to_string()))
                        .map(Some)
                        .map_err(|e| problems.push("push.feedback.webhook.secret_file", e))
                        .ok(),
                };
                let tls = crate::tls::client_config(&w.extra_trust_anchors, None, &[])
                    .map_err(|e| problems.push("push.feedback.webhook.extra_trust_anchors", e))
                    .ok();
                Some(Arc::new(Webhook {
                    uri: uri?,
                    key: key?,
                    legacy_signature: w.legacy_signature,
                    include_token: w.include_token,
                    timeout: w.timeout.0,
                    max_attempts: w.max_attempts.max(1),
                    http: HttpClient::new(crate::egress::Role::Push, tls?),
                }))
            }
        };
        if cfg.webhook.is_some() && webhook.is_none() {
            return None;
        }
        let queue = webhook.clone().map(|hook| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(post_all(rx, hook, metrics.clone()));
            tx
        });
        Some(FeedbackSink {
            record_file: record_dir.map(|d| d.join(RECORD_FILE)),
            webhook,
            queue,
            metrics: metrics.clone(),
        })
    }

    /// Whether a webhook is configured (dead-token records in the outbox wait while not).
    pub fn has_webhook(&self) -> bool {
        self.webhook.is_some()
    }

    /// Records a dead token and hands it to the webhook: kept in `outbox` when given (before
    /// the platform hears the token is dead), else queued in memory (never waits).
    pub async fn report(&self, dead: DeadToken, outbox: Option<&FeedbackOutbox>) {
        if let Some(path) = &self.record_file {
            let (path, line) = (path.clone(), dead.to_json(false));
            // Blocking file I/O stays off the runtime's workers.
            tokio::task::spawn_blocking(move || {
                if let Err(e) = append(&path, &line) {
                    tracing::warn!(file = %path.display(), error = %e, "cannot record a dead token");
                }
            });
        }
        let Some(webhook) = &self.webhook else {
            return;
        };
        if let Some(outbox) = outbox {
            // The platform's answer waits for this write: a database that does not answer
            // soon does not hold it up.
            match tokio::time::timeout(KEEP_LIMIT, outbox.write(&dead, webhook.include_token)).await
            {
                Ok(Ok(())) => return,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot keep a dead-token record in the outbox; it waits in memory instead")
                }
                Err(_) => {
                    tracing::warn!(limit = ?KEEP_LIMIT, "the store did not take a dead-token record in time; it waits in memory instead")
                }
            }
        }
        if let Some(tx) = &self.queue
            && tx.try_send(dead).is_err()
        {
            self.count("dropped");
            tracing::warn!(
                "dead-token webhook queue full; a record was not posted (it is in the record file)"
            );
        }
    }

    fn count(&self, result: &'static str) {
        self.metrics
            .webhook
            .get_or_create(&ResultLabels { result })
            .inc();
    }

    /// One attempt at a dead-token record kept in the outbox (its `attempts` made before).
    pub async fn attempt(&self, item: &OutboxItem, outbox: &FeedbackOutbox) -> Verdict {
        let Some(hook) = &self.webhook else {
            // The dispatcher only asks while a webhook is configured; one removed meanwhile
            // leaves the item waiting.
            return Verdict::Defer {
                until: UnixMillis::now(&*outbox.clock).after(Duration::from_secs(1)),
            };
        };
        let Some(body) = outbox.body(item, hook.include_token) else {
            self.count("failed");
            return Verdict::Park {
                error: "the stored dead-token record is not readable".into(),
            };
        };
        let attempt = u32::try_from(item.attempts)
            .unwrap_or(u32::MAX)
            .saturating_add(1);
        let answer = post(hook, &item.id, body, outbox.clock.now()).await;
        match answer.next {
            Next::Delivered => {
                self.count("ok");
                Verdict::Delivered
            }
            Next::Refused => {
                tracing::warn!(delivery = %item.id, status = answer.status, "dead-token webhook refused the record; parked (see brandgate outbox list)");
                self.count("failed");
                Verdict::Park {
                    error: answer.error,
                }
            }
            Next::Retry { .. } if attempt >= hook.max_attempts => {
                tracing::warn!(delivery = %item.id, attempt, error = answer.error, "dead-token record given up after its last attempt; parked (see brandgate outbox list)");
                self.count("failed");
                Verdict::Park {
                    error: answer.error,
                }
            }
            Next::Retry { retry_after } => {
                let wait = retry_after.unwrap_or_else(|| WEBHOOK_BACKOFF.delay(attempt));
                tracing::info!(delivery = %item.id, attempt, error = answer.error, ?wait, "dead-token webhook failed; retrying");
                Verdict::Retry {
                    wait,
                    error: answer.error,
                }
            }
        }
    }
}

/// The in-memory queue's task: each record posted with its retries, one after another.
async fn post_all(mut rx: mpsc::Receiver<DeadToken>, hook: Arc<Webhook>, metrics: PushMetrics) {
    while let Some(dead) = rx.recv().await {
        let body = dead.to_json(hook.include_token).into_bytes();
        let result = if deliver(&hook, body).await {
            "ok"
        } else {
            "failed"
        };
        metrics
            .webhook
            .get_or_create(&ResultLabels { result })
            .inc();
    }
}

fn append(path: &Path, line: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if std::fs::metadata(path).is_ok_and(|m| m.len() > ROTATE_BYTES) {
        let _ = std::fs::rename(path, path.with_extension("jsonl.1"));
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)?;
    writeln!(f, "{line}")
}

/// One signed POST of a record as delivery `id`.
async fn post(hook: &Webhook, id: &str, body: Vec<u8>, now: SystemTime) -> Answer {
    let target = Target {
        http: &hook.http,
        uri: &hook.uri,
        key: hook.key.as_ref(),
        timeout: hook.timeout,
        longest_wait: LONGEST_WAIT,
    };
    let headers = header("content-type", "application/json")
        .into_iter()
        .collect();
    let legacy =
        |key: &WebhookKey, timestamp: u64, body: &[u8]| -> Vec<(HeaderName, HeaderValue)> {
            if !hook.legacy_signature {
                return Vec::new();
            }
            let value = format!("t={timestamp},v1={}", key.legacy_signature(timestamp, body));
            header("brandgate-signature", &value).into_iter().collect()
        };
    post_once(&target, id, Bytes::from(body), now, headers, legacy).await
}

/// POSTs one record from the in-memory queue, retrying with backoff. Returns whether the
/// receiver took it (2xx).
async fn deliver(hook: &Webhook, body: Vec<u8>) -> bool {
    // The same id on every attempt, so the receiver can drop a repeat.
    let id = uuid::Uuid::new_v4().to_string();
    let attempts = hook.max_attempts.min(QUEUE_ATTEMPTS);
    for attempt in 1..=attempts {
        let answer = post(hook, &id, body.clone(), SystemTime::now()).await;
        let asked_wait = match answer.next {
            Next::Delivered => return true,
            Next::Refused => {
                tracing::warn!(
                    status = answer.status,
                    "dead-token webhook refused the record"
                );
                return false;
            }
            Next::Retry { retry_after } => retry_after,
        };
        tracing::warn!(
            status = answer.status,
            error = answer.error,
            attempt,
            "dead-token webhook failed"
        );
        if attempt < attempts {
            let wait = asked_wait
                .unwrap_or_else(|| WEBHOOK_BACKOFF.delay(attempt))
                .min(LONGEST_QUEUE_WAIT);
            tokio::time::sleep(wait).await;
        }
    }
    false
}
