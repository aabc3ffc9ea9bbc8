//! Dead-token feedback to the brand's webhook: signed (Standard Webhooks, checked with that
//! project's own library), retried under one id, token only on request; the record file and
//! the metric, for APNs and for FCM. With a store, records wait in its outbox: they outlive
//! `kill -9`, and a token found dead on two nodes is posted once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde_json::Value;

use crate::support::daemon::Daemon;
use crate::support::fake_apns::{self, FakeApns};
use crate::support::fake_fcm::{FakeFcm, fcm_error};
use crate::support::identity_world::data_key_line;
use crate::support::pki::ApnsKey;
use crate::support::standard_webhooks;
use crate::support::{TestEnv, android_push, apns, ios_push, platform_auth};

const APP: &str = "com.brand.app";

#[derive(Clone, Default)]
struct Receiver {
    calls: Arc<Mutex<Vec<(HeaderMap, String)>>>,
    /// The status each call was answered with, in order.
    answered: Arc<Mutex<Vec<u16>>>,
    /// Answers to give, in order; 200 once they run out.
    answers: Arc<Mutex<Vec<u16>>>,
    /// While set, every call is answered 503 (the brand's backend is down).
    down: Arc<AtomicBool>,
}

impl Receiver {
    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// The calls answered 200.
    fn accepted(&self) -> Vec<(HeaderMap, String)> {
        let calls = self.calls.lock().unwrap();
        let answered = self.answered.lock().unwrap();
        calls
            .iter()
            .zip(answered.iter())
            .filter(|(_, status)| **status == 200)
            .map(|(call, _)| call.clone())
            .collect()
    }
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: String) -> StatusCode {
    // One lock order for both lists, so `accepted` pairs them right.
    let mut calls = r.calls.lock().unwrap();
    let mut answered = r.answered.lock().unwrap();
    let status = if r.down.load(Ordering::SeqCst) {
        503
    } else {
        let mut answers = r.answers.lock().unwrap();
        if answers.is_empty() {
            200
        } else {
            answers.remove(0)
        }
    };
    calls.push((headers, body));
    answered.push(status);
    StatusCode::from_u16(status).unwrap()
}

/// A webhook receiver on loopback (plain HTTP is allowed to loopback only).
async fn start_receiver(answers: Vec<u16>) -> (String, Receiver) {
    let r = Receiver {
        answers: Arc::new(Mutex::new(answers)),
        ..Default::default()
    };
    let app = axum::Router::new()
        .route("/dead", axum::routing::post(receive))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "http://127.0.0.1:{}/dead",
        listener.local_addr().unwrap().port()
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, r)
}

async fn wait_calls(r: &Receiver, n: usize) -> Vec<(HeaderMap, String)> {
    for _ in 0..800 {
        let calls = r.calls.lock().unwrap().clone();
        if calls.len() >= n {
            return calls;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the webhook never got {n} calls");
}

fn sha256_hex(data: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn hmac_hex(secret: &[u8], message: &[u8]) -> String {
    use aws_lc_rs::hmac;
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), message);
    tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test]
async fn dead_tokens_are_posted_signed_and_retried() {
    let env = TestEnv::new();
    let (fake, key) = apns(APP).await;
    // The receiver fails once; brandgate retries.
    let (url, receiver) = start_receiver(vec![503]).await;
    // As the standard writes secrets: whsec_ and the key in base64.
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let secret = env.secret("hook-secret", &format!("{SECRET}\n"));
    let config = env.config(&format!(
        "[push.feedback.webhook]\nurl = \"{url}\"\nsecret_file = \"{}\"\n{}",
        secret.display(),
        env.apns_app(APP, &fake, &key, "", &env.basic_auth(), "")
    ));
    let daemon = Daemon::start(env.path(), &config).await;
    let token = "0badbad0";
    fake.script(
        token,
        vec![fake_apns::gone("Unregistered", 1_765_000_000_000)],
    );
    let a = env
        .client()
        .post_json(
            &daemon.url(&format!("/push/{APP}")),
            &[("authorization", &platform_auth())],
            &ios_push(token, "x", "c", 1),
        )
        .await;
    assert_eq!(a.status, 403);

    let calls = wait_calls(&receiver, 2).await;
    let (headers, body) = &calls[1];
    let record: Value = serde_json::from_str(body).unwrap();
    assert_eq!(record["app"], APP);
    assert_eq!(record["provider"], "apns");
    assert_eq!(record["reason"], "Unregistered");
    assert_eq!(record["provider_timestamp"], 1_765_000_000);
    assert_eq!(record["token_sha256"], sha256_hex(token.as_bytes()));
    assert!(
        record.get("token").is_none(),
        "the token itself only goes out with include_token"
    );

    // Both attempts are signed, under one id (a receiver drops the repeat); the earlier
    // header only comes with legacy_signature.
    for (attempt, (h, b)) in calls.iter().enumerate() {
        standard_webhooks::verify(SECRET, h, b)
            .await
            .unwrap_or_else(|e| panic!("attempt {attempt}: {e}"));
    }
    assert_eq!(calls[0].0["webhook-id"], headers["webhook-id"]);
    assert!(headers.get("brandgate-signature").is_none());
    // Signed with another key, or with the body changed, it is refused.
    let other = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    assert_eq!(
        standard_webhooks::verify(other, headers, body).await,
        Err("No matching signature found".into())
    );
    assert_eq!(
        standard_webhooks::verify(SECRET, headers, &body.replace("apns", "fcm")).await,
        Err("No matching signature found".into())
    );

    // Counted once brandgate has read the receiver's answer, which may be after the receiver
    // recorded the call: wait for it (bounded).
    let counted = "brandgate_push_feedback_webhook_total{result=\"ok\"} 1";
    let mut metrics = String::new();
    for _ in 0..200 {
        metrics = env.client().get(&daemon.ops_url("/metrics")).await.body;
        if metrics.contains(counted) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(metrics.contains(counted), "{metrics}");
}

#[tokio::test]
async fn the_full_token_goes_out_only_when_asked() {
    let env = TestEnv::new();
    let (fake, key) = apns(APP).await;
    let (url, receiver) = start_receiver(vec![]).await;
    let config = env.config(&format!(
        "[push.feedback.webhook]\nurl = \"{url}\"\ninclude_token = true\n{}",
        env.apns_app(APP, &fake, &key, "", &env.basic_auth(), "")
    ));
    let daemon = Daemon::start(env.path(), &config).await;
    fake.script("0badbad1", vec![fake_apns::reason(400, "BadDeviceToken")]);
    env.client()
        .post_json(
            &daemon.url(&format!("/push/{APP}")),
            &[("authorization", &platform_auth())],
            &ios_push("0badbad1", "x", "c", 1),
        )
        .await;
    let calls = wait_calls(&receiver, 1).await;
    let record: Value = serde_json::from_str(&calls[0].1).unwrap();
    assert_eq!(record["token"], "0badbad1");
    assert!(
        calls[0].0.get("webhook-signature").is_none()
            && calls[0].0.get("brandgate-signature").is_none(),
        "no secret, no signature"
    );
    assert!(
        calls[0].0.contains_key("webhook-id"),
        "the id still goes out"
    );
    // The record file never holds the token, whatever the webhook gets (it is written beside
    // the webhook call, not before it: wait for it, bounded).
    let path = env.path().join("state/dead-tokens.jsonl");
    let mut file = String::new();
    for _ in 0..200 {
        file = std::fs::read_to_string(&path).unwrap_or_default();
        if file.lines().count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(file.lines().count(), 1);
    assert!(!file.contains("0badbad1"), "{file}");
}

#[tokio::test]
async fn the_record_file_does_not_wait_for_a_failing_webhook() {
    let env = TestEnv::new();
    let (fake, key) = apns(APP).await;
    // A receiver that always fails: brandgate keeps retrying it in the background.
    let (url, receiver) = start_receiver(vec![503; 100]).await;
    let config = env.config(&format!(
        "[push.feedback.webhook]\nurl = \"{url}\"\n{}",
        env.apns_app(APP, &fake, &key, "", &env.basic_auth(), "")
    ));
    let daemon = Daemon::start(env.path(), &config).await;
    for (i, token) in ["0dead001", "0dead002", "0dead003"].iter().enumerate() {
        fake.script(token, vec![fake_apns::reason(400, "BadDeviceToken")]);
        env.client()
            .post_json(
                &daemon.url(&format!("/push/{APP}")),
                &[("authorization", &platform_auth())],
                &ios_push(token, "x", "c", i as i64),
            )
            .await;
    }
    let path = env.path().join("state/dead-tokens.jsonl");
    let mut lines = 0;
    for _ in 0..200 {
        lines = std::fs::read_to_string(&path)
            .unwrap_or_default()
            .lines()
            .count();
        if lines == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        lines, 3,
        "every dead token is in the file while the webhook still fails"
    );
    assert!(
        receiver.calls.lock().unwrap().len() < 12,
        "the webhook is still being retried"
    );
}

/// An FCM registration token FCM calls UNREGISTERED is recorded like an APNs one: a line in the
/// record file (its hash, never the token), the dead-token metric under provider "fcm", and the
/// signed webhook call.
#[tokio::test]
async fn fcm_unregistered_tokens_are_recorded_counted_and_posted() {
    const FCM_APP: &str = "com.brand.android";
    let env = TestEnv::new();
    let fake = FakeFcm::start("brand-app-12345").await;
    let (url, receiver) = start_receiver(vec![]).await;
    // A secret that is not whsec_: used as it is (the library's "raw" key), and the earlier
    // header asked for too.
    let secret = env.secret("hook-secret", "whsec-fcm-42\n");
    let config = env.config(&format!(
        "[push.feedback.webhook]\nurl = \"{url}\"\nsecret_file = \"{}\"\nlegacy_signature = true\n{}",
        secret.display(),
        env.fcm_app(FCM_APP, &fake, "", &env.basic_auth())
    ));
    let daemon = Daemon::start(env.path(), &config).await;
    let token = "ZmNtLXJlZ2lzdHJhdGlvbi10b2tlbi10aGF0LWRpZWQ";
    fake.script(
        token,
        vec![fcm_error(
            404,
            "UNREGISTERED",
            "Requested entity was not found.",
        )],
    );
    let a = env
        .client()
        .post_json(
            &daemon.url(&format!("/push/{FCM_APP}")),
            &[("authorization", &platform_auth())],
            &android_push(token, "x", "c", 1),
        )
        .await;
    assert_eq!(a.status, 403, "{}", a.body);

    let calls = wait_calls(&receiver, 1).await;
    let (headers, body) = &calls[0];
    let record: Value = serde_json::from_str(body).unwrap();
    assert_eq!(record["app"], FCM_APP);
    assert_eq!(record["provider"], "fcm");
    assert_eq!(record["reason"], "UNREGISTERED");
    assert_eq!(record["token_sha256"], sha256_hex(token.as_bytes()));
    assert!(record.get("token").is_none(), "{body}");
    standard_webhooks::verify("whsec-fcm-42", headers, body)
        .await
        .unwrap();
    // Brandgate-Signature: t=<unix>,v1=hex(HMAC-SHA256(secret, "<t>.<body>")), as before.
    let signature = headers["brandgate-signature"].to_str().unwrap();
    let (t, v1) = signature.split_once(",v1=").unwrap();
    let t = t.strip_prefix("t=").unwrap();
    assert_eq!(
        v1,
        hmac_hex(b"whsec-fcm-42", format!("{t}.{body}").as_bytes())
    );

    // The record file (written beside the webhook call: wait for it, bounded).
    let path = env.path().join("state/dead-tokens.jsonl");
    let mut file = String::new();
    for _ in 0..200 {
        file = std::fs::read_to_string(&path).unwrap_or_default();
        if file.lines().count() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(file.lines().count(), 1, "{file}");
    assert!(!file.contains(token), "{file}");
    let line: Value = serde_json::from_str(file.trim()).unwrap();
    assert_eq!(line["app"], FCM_APP);
    assert_eq!(line["provider"], "fcm");
    assert_eq!(line["reason"], "UNREGISTERED");
    assert_eq!(line["token_sha256"], sha256_hex(token.as_bytes()));
    assert!(line["recorded_at"].as_u64().is_some(), "{line}");

    let metrics = env.client().get(&daemon.ops_url("/metrics")).await.body;
    let counted =
        format!("brandgate_push_dead_tokens_total{{app=\"{FCM_APP}\",provider=\"fcm\"}} 1");
    assert!(
        metrics.contains(&counted),
        "missing {counted} in\n{metrics}"
    );
}

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const DEAD: &str = "0dead0ff1ce";

/// A daemon with a store (`[identity]` makes one; `store_extra` in `[store]`, `keys` its data
/// keys), pushing through `fake` and posting dead tokens to `url` (`webhook_extra` in the
/// webhook's section).
async fn stored_node(
    env: &TestEnv,
    fake: &FakeApns,
    key: &ApnsKey,
    url: &str,
    store_extra: &str,
    keys: &str,
    webhook_extra: &str,
) -> Daemon {
    let store = env.store_section(keys, store_extra);
    let secret = env.secret("hook-secret", SECRET);
    let app = env.apns_app(APP, fake, key, "", &env.basic_auth(), "");
    let config = env.config(&format!(
        r#"
{store}
[push.feedback.webhook]
url = "{url}"
secret_file = "{secret}"
{webhook_extra}
{app}"#,
        secret = secret.display(),
    ));
    Daemon::start(env.path(), &config).await
}

/// The platform's push of `sequence` to [`DEAD`], answered 403 (APNs said it is gone).
async fn push_to_dead(env: &TestEnv, daemon: &Daemon, sequence: i64) {
    let answer = env
        .client()
        .post_json(
            &daemon.url(&format!("/push/{APP}")),
            &[("authorization", &platform_auth())],
            &ios_push(DEAD, "x", "conv-dead", sequence),
        )
        .await;
    assert_eq!(answer.status, 403, "{}", answer.body);
}

/// Waits (bounded) until the receiver accepted `n` calls.
async fn wait_accepted(receiver: &Receiver, n: usize) -> Vec<(HeaderMap, String)> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let accepted = receiver.accepted();
        if accepted.len() >= n {
            return accepted;
        }
        assert!(
            Instant::now() < deadline,
            "the receiver accepted {} of {n}",
            accepted.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What `brandgate outbox list` shows of the daemon's store.
async fn outbox_list(daemon: &Daemon) -> String {
    let config = daemon.config_path.to_str().unwrap();
    let (code, out, err) =
        crate::support::daemon::run(&["outbox", "list", "--config", config], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    out
}

/// Waits (bounded) until the store's outbox holds no dead-token record, as `brandgate outbox
/// list` reads it.
async fn wait_outbox_empty(daemon: &Daemon) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = outbox_list(daemon).await;
        if !out.contains("dead_token") {
            return;
        }
        assert!(Instant::now() < deadline, "still in the outbox:\n{out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The receiver is down when APNs declares a token dead; the daemon is killed (`kill -9`)
/// before it could post the record. Started again on the same store, with the receiver back,
/// it posts the record once, under the id of the first attempt, with the token it sealed.
async fn a_dead_token_record_outlives_a_kill(store_extra: &str) {
    let env = TestEnv::new();
    let (fake, key) = apns(APP).await;
    let (url, receiver) = start_receiver(vec![]).await;
    receiver.set_down(true);
    let keys = data_key_line("k1");
    let mut daemon = stored_node(
        &env,
        &fake,
        &key,
        &url,
        store_extra,
        &keys,
        "include_token = true",
    )
    .await;
    fake.script(
        DEAD,
        vec![fake_apns::gone("Unregistered", 1_765_000_000_000)],
    );
    push_to_dead(&env, &daemon, 1).await;
    // Kept before the platform heard that the token is dead.
    let listed = outbox_list(&daemon).await;
    assert!(listed.contains("dead_token"), "{listed}");
    daemon.signal(libc::SIGKILL);
    daemon.wait_exit(Duration::from_secs(10)).await;

    receiver.set_down(false);
    let config = std::fs::read_to_string(&daemon.config_path).unwrap();
    let mut daemon = Daemon::start(env.path(), &config).await;
    let accepted = wait_accepted(&receiver, 1).await;
    wait_outbox_empty(&daemon).await;
    daemon.stop().await;

    assert_eq!(receiver.accepted().len(), 1, "posted once");
    let (headers, body) = &accepted[0];
    standard_webhooks::verify(SECRET, headers, body)
        .await
        .unwrap();
    let record: Value = serde_json::from_str(body).unwrap();
    assert_eq!(record["app"], APP);
    assert_eq!(record["reason"], "Unregistered");
    assert_eq!(record["provider_timestamp"], 1_765_000_000);
    assert_eq!(record["token_sha256"], sha256_hex(DEAD.as_bytes()));
    assert_eq!(record["token"], DEAD, "the sealed token, opened to be sent");
    let calls = receiver.calls.lock().unwrap().clone();
    assert!(
        calls
            .iter()
            .all(|(h, _)| h["webhook-id"] == headers["webhook-id"]),
        "every attempt under one id"
    );
}

#[tokio::test]
async fn a_dead_token_record_outlives_a_kill_on_sqlite() {
    a_dead_token_record_outlives_a_kill("").await;
}

#[tokio::test]
async fn a_dead_token_record_outlives_a_kill_on_postgresql() {
    let Some(db) = crate::support::postgres::Database::create().await else {
        return;
    };
    a_dead_token_record_outlives_a_kill(&db.store_line()).await;
    db.drop().await;
}

/// Two nodes on one PostgreSQL each find the same token dead (two pushes) while the receiver
/// is down: once it is back, the record is posted once, not once per node.
#[tokio::test]
async fn a_token_found_dead_on_two_nodes_is_posted_once() {
    let Some(db) = crate::support::postgres::Database::create().await else {
        return;
    };
    let (fake, key) = apns(APP).await;
    let (url, receiver) = start_receiver(vec![]).await;
    receiver.set_down(true);
    let store = db.store_line();
    let keys = data_key_line("k1");
    let (env_a, env_b) = (TestEnv::new(), TestEnv::new());
    let mut a = stored_node(&env_a, &fake, &key, &url, &store, &keys, "").await;
    let mut b = stored_node(&env_b, &fake, &key, &url, &store, &keys, "").await;
    let gone = || fake_apns::gone("Unregistered", 1_765_000_000_000);
    fake.script(DEAD, vec![gone(), gone()]);
    push_to_dead(&env_a, &a, 1).await;
    push_to_dead(&env_b, &b, 2).await;
    let asked = fake.received().iter().filter(|r| r.token == DEAD).count();
    assert_eq!(asked, 2, "both nodes asked APNs");

    receiver.set_down(false);
    let accepted = wait_accepted(&receiver, 1).await;
    wait_outbox_empty(&a).await;
    a.stop().await;
    b.stop().await;
    assert_eq!(
        receiver.accepted().len(),
        1,
        "one record for one dead token"
    );
    let calls = receiver.calls.lock().unwrap().clone();
    assert!(
        calls
            .iter()
            .all(|(h, _)| h["webhook-id"] == accepted[0].0["webhook-id"]),
        "every attempt, from either node, under one id"
    );
    db.drop().await;
}

/// With `max_attempts = 2`, a record the receiver fails twice is parked (listed with its
/// answer, not tried again by itself); `brandgate outbox retry --all` puts it back and it goes,
/// under the same id.
#[tokio::test]
async fn a_record_failed_to_its_last_attempt_is_parked_until_retried() {
    let env = TestEnv::new();
    let (fake, key) = apns(APP).await;
    let (url, receiver) = start_receiver(vec![503, 503]).await;
    let daemon = stored_node(
        &env,
        &fake,
        &key,
        &url,
        "",
        &data_key_line("k1"),
        "max_attempts = 2",
    )
    .await;
    fake.script(
        DEAD,
        vec![fake_apns::gone("Unregistered", 1_765_000_000_000)],
    );
    push_to_dead(&env, &daemon, 1).await;
    let failed = wait_calls(&receiver, 2).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let parked = loop {
        let listed = outbox_list(&daemon).await;
        if listed.contains(" parked ") {
            break listed;
        }
        assert!(Instant::now() < deadline, "never parked:\n{listed}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let line = parked.lines().find(|l| l.contains("dead_token")).unwrap();
    assert!(
        line.contains(" parked ") && line.ends_with("answered 503"),
        "{parked}"
    );
    assert_eq!(receiver.calls.lock().unwrap().len(), 2, "no third attempt");

    let config = daemon.config_path.to_str().unwrap();
    let (code, out, err) =
        crate::support::daemon::run(&["outbox", "retry", "--all", "--config", config], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    let accepted = wait_accepted(&receiver, 1).await;
    wait_outbox_empty(&daemon).await;
    assert_eq!(receiver.accepted().len(), 1);
    assert_eq!(accepted[0].0["webhook-id"], failed[0].0["webhook-id"]);
}
