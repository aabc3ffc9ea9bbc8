//! The brand's webhook receiver in the relay tests: tests/node/webhook-receiver.mjs, over HTTPS
//! with a certificate of the test's CA, checking each webhook's signature with Node's own
//! crypto and recording what it received.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::TestEnv;
use super::client::Client;

fn script() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/node/webhook-receiver.mjs"
    ))
}

/// A running receiver. Killed when dropped.
pub struct WebhookReceiver {
    _child: tokio::process::Child,
    base: String,
    client: Client,
}

impl WebhookReceiver {
    /// Starts a receiver that believes in `secret` and answers `answers` in order (then 200):
    /// statuses, or `{"status": .., "retryAfter": ..}` objects.
    pub async fn start(env: &TestEnv, secret: &str, answers: Value) -> WebhookReceiver {
        let (cert, key) = env.ca.server().write(env.path(), "webhook-receiver");
        let config = json!({
            "tls": {"cert": cert, "key": key},
            "secret": secret,
            "answers": answers,
        });
        let file = env.file("webhook-receiver.json", &config.to_string());
        let mut child = tokio::process::Command::new("node")
            .arg(script())
            .arg("--config")
            .arg(&file)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("node");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the webhook receiver did not start within 30 s")
            .unwrap()
            .expect("the webhook receiver exited before it listened");
        let ready: Value = serde_json::from_str(&line).unwrap();
        WebhookReceiver {
            _child: child,
            base: format!("https://127.0.0.1:{}", ready["port"]),
            client: env.client(),
        }
    }

    /// The URL brandgate posts to.
    pub fn url(&self) -> String {
        format!("{}/hooks/relay", self.base)
    }

    /// Makes the receiver never answer from now on.
    pub async fn hang(&self) {
        let a = self
            .client
            .post_json(
                &format!("{}/__test/script", self.base),
                &[],
                &json!({"hang": true}),
            )
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
    }

    /// Every webhook received so far, oldest first (see webhook-receiver.mjs).
    pub async fn deliveries(&self) -> Vec<Value> {
        let a = self
            .client
            .get(&format!("{}/__test/deliveries", self.base))
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
        serde_json::from_str(&a.body).unwrap()
    }

    /// Makes the receiver answer again (after [`WebhookReceiver::hang`]), 200 from now on.
    pub async fn answer_again(&self) {
        let a = self
            .client
            .post_json(
                &format!("{}/__test/script", self.base),
                &[],
                &json!({"hang": false, "answers": []}),
            )
            .await;
        assert_eq!(a.status, 200, "{}", a.body);
    }

    /// Waits (at most `limit`) until `n` webhooks were received, answered or not (one held
    /// by [`WebhookReceiver::hang`] counts).
    pub async fn wait_received(&self, n: usize, limit: Duration) -> Vec<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let got = self.deliveries().await;
            if got.len() >= n {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{n} webhooks not received within {limit:?}; got {got:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (at most `limit`) until `n` webhooks were received and answered; more than `n`
    /// fails. (A caller asserting that nothing more comes must wait for what would show it,
    /// such as the daemon's stop, and look again.)
    pub async fn wait_for(&self, n: usize, limit: Duration) -> Vec<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let got = self.deliveries().await;
            assert!(got.len() <= n, "more than {n} webhooks: {got:#?}");
            if got.len() == n && got.iter().all(|d| !d["status"].is_null()) {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "{n} webhooks not answered within {limit:?}; got {got:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
