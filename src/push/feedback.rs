//! Dead-token feedback: each device token a provider declares dead is recorded (app, provider,
//! SHA-256 of the token, reason, provider timestamp) as one JSON line in
//! `<state_dir>/dead-tokens.jsonl` (by the daemon; `push-test` writes no file), and optionally POSTed to a webhook signed with HMAC-SHA256.
//!
//! Reporting never blocks a push: records go through a bounded queue to a background task; when
//! the queue is full the record is dropped and counted. The full token leaves only if the
//! operator set `include_token` for the webhook; the file never holds it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Uri};
use serde::Serialize;
use tokio::sync::mpsc;

use super::metrics::{PushMetrics, ResultLabels};
use super::request::DeviceToken;
use crate::clock::unix_seconds;
use crate::config::{FeedbackConfig, Problems};
use crate::http_client::HttpClient;
use crate::secret::{Secret, read_secret_file};

const QUEUE: usize = 1024;
const WEBHOOK_ATTEMPTS: u32 = 4;
/// The record file is rotated (to `.1`) past this size.
const ROTATE_BYTES: u64 = 16 * 1024 * 1024;
pub const RECORD_FILE: &str = "dead-tokens.jsonl";

/// One dead token.
#[derive(Debug, Clone, Serialize)]
pub struct DeadToken {
    pub app: String,
    pub provider: &'static str,
    pub token_sha256: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    pub reason: String,
    /// When the provider says the token stopped working (APNs 410 timestamp), Unix seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_timestamp: Option<u64>,
    pub recorded_at: u64,
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
            token_sha256: token.sha256_hex(),
            token: Some(token.as_str().to_string()),
            reason: reason.to_string(),
            provider_timestamp: since.map(unix_seconds),
            recorded_at: unix_seconds(SystemTime::now()),
        }
    }
}

struct Webhook {
    uri: Uri,
    secret: Option<Secret<Vec<u8>>>,
    include_token: bool,
    timeout: Duration,
    http: HttpClient,
}

/// The sending side; the background task ends when the last sink of a config generation goes.
#[derive(Clone)]
pub struct FeedbackSink {
    tx: mpsc::Sender<DeadToken>,
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
                let secret = match &w.secret_file {
                    None => Some(None),
                    Some(p) => read_secret_file(p)
                        .map(Some)
                        .map_err(|e| {
                            problems.push("push.feedback.webhook.secret_file", e.to_string())
                        })
                        .ok(),
                };
                let tls = crate::tls::client_config(&w.extra_trust_anchors, None, &[])
                    .map_err(|e| problems.push("push.feedback.webhook.extra_trust_anchors", e))
                    .ok();
                Some(Webhook {
                    uri: uri?,
                    secret: secret?,
                    include_token: w.include_token,
                    timeout: w.timeout.0,
                    http: HttpClient::new(tls?),
                })
            }
        };
        if cfg.webhook.is_some() && webhook.is_none() {
            return None;
        }
        let (tx, rx) = mpsc::channel(QUEUE);
        let path = record_dir.map(|d| d.join(RECORD_FILE));
        tokio::spawn(run(rx, path, webhook, metrics.clone()));
        Some(FeedbackSink {
            tx,
            metrics: metrics.clone(),
        })
    }

    /// Queues a record; never waits.
    pub fn report(&self, record: DeadToken) {
        if self.tx.try_send(record).is_err() {
            self.metrics
                .webhook
                .get_or_create(&ResultLabels { result: "dropped" })
                .inc();
            tracing::warn!("dead-token feedback queue full; a record was dropped");
        }
    }
}

async fn run(
    mut rx: mpsc::Receiver<DeadToken>,
    path: Option<PathBuf>,
    webhook: Option<Webhook>,
    metrics: PushMetrics,
) {
    while let Some(mut record) = rx.recv().await {
        let full_token = record.token.take();
        if let Some(path) = &path {
            let line = serde_json::to_string(&record).unwrap_or_default();
            let file = path.clone();
            // Blocking file I/O stays off the runtime's workers.
            let written = tokio::task::spawn_blocking(move || append(&file, &line)).await;
            if let Ok(Err(e)) | Err(e) = written.map_err(|e| e.to_string()) {
                tracing::warn!(file = %path.display(), error = %e, "cannot record a dead token");
            }
        }
        if let Some(hook) = &webhook {
            if hook.include_token {
                record.token = full_token;
            }
            let result = if deliver(hook, &record).await {
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
}

fn append(path: &Path, line: &str) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    if std::fs::metadata(path).is_ok_and(|m| m.len() > ROTATE_BYTES) {
        let _ = std::fs::rename(path, path.with_extension("jsonl.1"));
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(|e| e.to_string())?;
    writeln!(f, "{line}").map_err(|e| e.to_string())
}

/// POSTs one record, retrying with backoff. Returns whether the receiver took it (2xx).
async fn deliver(hook: &Webhook, record: &DeadToken) -> bool {
    let body = serde_json::to_vec(record).unwrap_or_default();
    for attempt in 1..=WEBHOOK_ATTEMPTS {
        let mut headers = vec![(
            HeaderName::from_static("content-type"),
            HeaderValue::from_static("application/json"),
        )];
        if let Some(secret) = &hook.secret {
            let signature = sign(secret, unix_seconds(SystemTime::now()), &body);
            if let Ok(v) = HeaderValue::from_str(&signature) {
                headers.push((HeaderName::from_static("brandgate-signature"), v));
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
            Ok(r) => tracing::warn!(
                status = r.status.as_u16(),
                attempt,
                "dead-token webhook failed"
            ),
            Err(e) => tracing::warn!(error = %e, attempt, "dead-token webhook failed"),
        }
        tokio::time::sleep(Duration::from_secs(1 << (attempt - 1))).await;
    }
    false
}

/// `t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>">`: the receiver recomputes it with the
/// shared secret and refuses old timestamps, so a captured call cannot be replayed later.
pub fn sign(secret: &Secret<Vec<u8>>, t: u64, body: &[u8]) -> String {
    use aws_lc_rs::hmac;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.expose());
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(t.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("t={t},v1={}", super::request::hex(ctx.sign().as_ref()))
}
