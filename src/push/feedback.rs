//! Dead-token feedback: each device token a provider declares dead is recorded (app, provider,
//! SHA-256 of the token, reason, provider timestamp) as one JSON line in
//! `<state_dir>/dead-tokens.jsonl` (by the daemon; `push-test` writes no file), and optionally
//! POSTed to a webhook signed as Standard Webhooks says (see [`crate::webhook_signature`]).
//!
//! Reporting never blocks a push. The file is written for every dead token, off the runtime's
//! workers; the webhook is fed through a bounded queue by its own task, so a slow or failing
//! receiver delays only itself (a full queue drops the post, counted, never the file line). The
//! full token leaves only if the operator set `include_token` for the webhook; the file never
//! holds it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Uri};
use serde::Serialize;
use tokio::sync::mpsc;

use super::metrics::{PushMetrics, ResultLabels};
use super::request::DeviceToken;
use crate::backoff::{Backoff, retry_after};
use crate::clock::unix_seconds;
use crate::config::{FeedbackConfig, Problems};
use crate::http_client::HttpClient;
use crate::secret::read_secret_file;
use crate::webhook_signature::WebhookKey;

const QUEUE: usize = 1024;
const WEBHOOK_ATTEMPTS: u32 = 4;
/// Between attempts: 0.5–1 s, then 1–2 s, then 2–4 s, unless the receiver's `Retry-After`
/// asks for another wait (at most [`LONGEST_WAIT`]).
const WEBHOOK_BACKOFF: Backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
const LONGEST_WAIT: Duration = Duration::from_secs(60);
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
        serde_json::to_string(&Record {
            app: &self.app,
            provider: self.provider,
            token_sha256: self.token.sha256_hex(),
            token: with_token.then(|| self.token.as_str()),
            reason: &self.reason,
            provider_timestamp: self.since.map(unix_seconds),
            recorded_at: unix_seconds(self.recorded_at),
        })
        .unwrap_or_default()
    }
}

struct Webhook {
    uri: Uri,
    key: Option<WebhookKey>,
    legacy_signature: bool,
    include_token: bool,
    timeout: Duration,
    http: HttpClient,
}

/// Where dead tokens go. The record file is written for every one, whatever the webhook does;
/// the webhook gets them through a bounded queue drained by its own task, which ends when the
/// last sink of a config generation goes.
#[derive(Clone)]
pub struct FeedbackSink {
    record_file: Option<PathBuf>,
    webhook: Option<mpsc::Sender<DeadToken>>,
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
                Some(Webhook {
                    uri: uri?,
                    key: key?,
                    legacy_signature: w.legacy_signature,
                    include_token: w.include_token,
                    timeout: w.timeout.0,
                    http: HttpClient::new(tls?),
                })
            }
        };
        if cfg.webhook.is_some() && webhook.is_none() {
            return None;
        }
        let webhook = webhook.map(|hook| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(post_all(rx, hook, metrics.clone()));
            tx
        });
        Some(FeedbackSink {
            record_file: record_dir.map(|d| d.join(RECORD_FILE)),
            webhook,
            metrics: metrics.clone(),
        })
    }

    /// Records a dead token and queues it for the webhook; never waits.
    pub fn report(&self, dead: DeadToken) {
        if let Some(path) = &self.record_file {
            let (path, line) = (path.clone(), dead.to_json(false));
            // Blocking file I/O stays off the runtime's workers.
            tokio::task::spawn_blocking(move || {
                if let Err(e) = append(&path, &line) {
                    tracing::warn!(file = %path.display(), error = %e, "cannot record a dead token");
                }
            });
        }
        if let Some(tx) = &self.webhook
            && tx.try_send(dead).is_err()
        {
            self.metrics
                .webhook
                .get_or_create(&ResultLabels { result: "dropped" })
                .inc();
            tracing::warn!(
                "dead-token webhook queue full; a record was not posted (it is in the record file)"
            );
        }
    }
}

async fn post_all(mut rx: mpsc::Receiver<DeadToken>, hook: Webhook, metrics: PushMetrics) {
    while let Some(dead) = rx.recv().await {
        let body = dead.to_json(hook.include_token);
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

/// POSTs one record, retrying with backoff. Returns whether the receiver took it (2xx).
async fn deliver(hook: &Webhook, body: String) -> bool {
    let body = body.into_bytes();
    // The same id on every attempt, so the receiver can drop a repeat.
    let id = uuid::Uuid::new_v4().to_string();
    // The receiver's Retry-After, when its last answer gave one.
    let mut asked_wait = None;
    for attempt in 1..=WEBHOOK_ATTEMPTS {
        let timestamp = unix_seconds(SystemTime::now());
        let mut headers = vec![(
            HeaderName::from_static("content-type"),
            HeaderValue::from_static("application/json"),
        )];
        match &hook.key {
            Some(key) => {
                headers.extend(key.headers(&id, timestamp, &body));
                if hook.legacy_signature {
                    let legacy = format!(
                        "t={timestamp},v1={}",
                        key.legacy_signature(timestamp, &body)
                    );
                    if let Ok(v) = HeaderValue::from_str(&legacy) {
                        headers.push((HeaderName::from_static("brandgate-signature"), v));
                    }
                }
            }
            // Unsigned: the id still lets the receiver drop a repeat.
            None => {
                if let Ok(v) = HeaderValue::from_str(&id) {
                    headers.push((HeaderName::from_static("webhook-id"), v));
                }
            }
        }
        match hook
            .http
            .post(&hook.uri, &headers, Bytes::from(body.clone()), hook.timeout)
            .await
        {
            Ok(r) if r.status.is_success() => return true,
            Ok(r) if r.status.is_client_error() && r.status.as_u16() != 429 => {
                tracing::warn!(
                    status = r.status.as_u16(),
                    "dead-token webhook refused the record"
                );
                return false;
            }
            Ok(r) => {
                tracing::warn!(
                    status = r.status.as_u16(),
                    attempt,
                    "dead-token webhook failed"
                );
                asked_wait = retry_after(&r.headers, SystemTime::now(), LONGEST_WAIT);
            }
            Err(e) => tracing::warn!(error = %e, attempt, "dead-token webhook failed"),
        }
        if attempt < WEBHOOK_ATTEMPTS {
            let wait = asked_wait
                .take()
                .unwrap_or_else(|| WEBHOOK_BACKOFF.delay(attempt));
            tokio::time::sleep(wait).await;
        }
    }
    false
}
