//! The relay's webhooks, end to end: a real consumer over WebSocket drives the real daemon,
//! and the brand's receiver is an independent peer (tests/node/webhook-receiver.mjs, HTTPS
//! with the test CA) that checks every signature with Node's own crypto.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::TestEnv;
use crate::support::daemon::Daemon;
use crate::support::identity_world::data_key_line;
use crate::support::messaging::{MessagingClient, Side};
use crate::support::webhook_receiver::WebhookReceiver;

const ACCOUNT: &str = "acme";
/// As the Standard Webhooks spec writes secrets: `whsec_` and the key in base64.
const SECRET: &str = "whsec_cmVsYXktd2ViaG9vay1rZXktMDEyMzQ1Njc4OQ==";
const TEXT: &str = "my card number is in this message";

struct World {
    env: TestEnv,
    daemon: Daemon,
}

/// The daemon with `[relay.webhooks]` posting to `receiver` (plus `webhooks_extra`), signing
/// with [`SECRET`].
async fn start(env: TestEnv, receiver: &WebhookReceiver, webhooks_extra: &str) -> World {
    start_on(env, receiver, webhooks_extra, "").await
}

/// [`start`], with `store_extra` in `[store]` (a PostgreSQL URL).
async fn start_on(
    env: TestEnv,
    receiver: &WebhookReceiver,
    webhooks_extra: &str,
    store_extra: &str,
) -> World {
    let store = env.store_section(&data_key_line("k1"), store_extra);
    let secret = env.secret("relay-webhook-secret", &format!("{SECRET}\n"));
    let ca = env.ca.write(env.path(), "receiver-ca");
    let config = env.config(&format!(
        r#"
{store}
[identity.anonymous]
enabled = true
per_minute = 1000
[relay]
account = "{ACCOUNT}"
requests_per_second = 100000
[relay.webhooks]
url = "{url}"
secret_file = "{secret}"
extra_trust_anchors = ["{ca}"]
{webhooks_extra}
"#,
        url = receiver.url(),
        secret = secret.display(),
        ca = ca.display(),
    ));
    let daemon = Daemon::start(env.path(), &config).await;
    World { env, daemon }
}

impl World {
    /// A consumer (an anonymous sign-up) connected over WebSocket.
    async fn consumer(&self) -> MessagingClient {
        let answer = self
            .env
            .client()
            .send(
                http::Method::POST,
                &self.daemon.url("/identity/v1/signup"),
                &[],
                bytes::Bytes::new(),
            )
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let auth = format!("jwt {}", answer.json()["jwt"].as_str().unwrap());
        MessagingClient::connect(
            &self.env.ca.cert_pem,
            self.daemon.public,
            "/ws_api/account/acme/messaging/consumer?v=3",
            Some(&auth),
            Side::Consumer,
        )
        .await
        .unwrap_or_else(|r| panic!("refused: {} {}", r.status, r.body))
    }

    /// Waits (bounded) until the metrics show `needle`.
    async fn wait_metric(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let metrics = self
                .env
                .client()
                .get(&self.daemon.ops_url("/metrics"))
                .await;
            if metrics.body.contains(needle) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no {needle} in\n{}",
                metrics.body
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn open(c: &mut MessagingClient) -> String {
    let r = c.request("cm.ConsumerRequestConversation", json!({})).await;
    assert_eq!(r["code"], 200, "{r}");
    r["body"]["conversationId"].as_str().unwrap().to_string()
}

async fn publish(c: &mut MessagingClient, conversation: &str, message: &str) -> Value {
    c.request(
        "ms.PublishEvent",
        json!({"dialogId": conversation, "event":
            {"type": "ContentEvent", "contentType": "text/plain", "message": message}}),
    )
    .await
}

async fn close(c: &mut MessagingClient, conversation: &str) {
    let r = c
        .request(
            "cm.UpdateConversationField",
            json!({"conversationId": conversation, "conversationField": [
                {"field": "ConversationStateField", "conversationState": "CLOSE"}]}),
        )
        .await;
    assert_eq!(r["code"], 200, "{r}");
}

#[tokio::test]
async fn a_conversation_reaches_the_brand_signed_in_order_without_text() {
    let env = TestEnv::new();
    let receiver = WebhookReceiver::start(&env, SECRET, json!([])).await;
    let mut world = start(env, &receiver, "").await;
    let mut c = world.consumer().await;
    let conversation = open(&mut c).await;
    let sent = publish(&mut c, &conversation, TEXT).await;
    assert_eq!(sent["code"], 200, "{sent}");
    close(&mut c, &conversation).await;

    let got = receiver.wait_for(3, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 3, "{got:#?}");
    let types: Vec<_> = got.iter().map(|d| d["body"]["type"].clone()).collect();
    assert_eq!(
        types,
        [
            "conversation.created",
            "message.created",
            "conversation.closed"
        ]
    );
    let consumer = got[0]["body"]["consumerId"].clone();
    assert!(consumer.as_str().is_some_and(|s| !s.is_empty()));
    for d in &got {
        assert_eq!(d["signatureValid"], true, "{d}");
        assert_eq!(d["status"], 200);
        assert_eq!(d["contentType"], "application/json");
        assert_eq!(d["delivery"], d["body"]["id"]);
        assert!(
            d["legacy"].is_null(),
            "the earlier headers only on request: {d}"
        );
        assert_eq!(d["body"]["account"], ACCOUNT);
        assert_eq!(d["body"]["conversationId"], conversation.as_str());
        assert_eq!(d["body"]["consumerId"], consumer);
        assert!(d["body"]["createdAt"].as_i64().is_some_and(|t| t > 0));
        assert!(d["body"].get("text").is_none(), "no text by default: {d}");
    }
    let message = &got[1]["body"];
    assert_eq!(message["sequence"], 0);
    assert_eq!(message["originatorRole"], "CONSUMER");
    assert_eq!(message["originatorId"], consumer);
    let ids: std::collections::HashSet<_> = got.iter().map(|d| d["delivery"].clone()).collect();
    assert_eq!(ids.len(), 3, "each webhook its own delivery id");

    world
        .wait_metric(
            r#"brandgate_relay_webhooks_total{type="conversation.closed",result="delivered"} 1"#,
        )
        .await;
    drop(c);
    let log = world.daemon.stop().await;
    assert!(!log.contains(TEXT), "the message text was logged");
    assert!(!log.contains(SECRET), "the webhook secret was logged");
    // Stopped: nothing more can come, and nothing more did.
    assert_eq!(receiver.deliveries().await.len(), 3);
}

#[tokio::test]
async fn the_text_goes_out_when_the_brand_asks_and_only_chosen_events() {
    let env = TestEnv::new();
    let receiver = WebhookReceiver::start(&env, SECRET, json!([])).await;
    let mut world = start(
        env,
        &receiver,
        "include_text = true\nevents = [\"message.created\", \"conversation.closed\"]\n\
         legacy_signature = true",
    )
    .await;
    let mut c = world.consumer().await;
    let conversation = open(&mut c).await;
    assert_eq!(publish(&mut c, &conversation, TEXT).await["code"], 200);
    close(&mut c, &conversation).await;

    // Each conversation's webhooks arrive in order: a conversation.created would be first.
    let got = receiver.wait_for(2, Duration::from_secs(20)).await;
    assert_eq!(got[0]["body"]["type"], "message.created", "{got:#?}");
    assert_eq!(got[0]["body"]["text"], TEXT);
    assert_eq!(got[0]["signatureValid"], true);
    // Asked for: the earlier headers too, signed as before, naming the same delivery.
    for d in &got {
        assert_eq!(d["legacy"]["signatureValid"], true, "{d}");
        assert_eq!(d["legacy"]["event"], d["body"]["type"]);
        assert_eq!(d["legacy"]["delivery"], d["delivery"]);
    }
    assert_eq!(got[1]["body"]["type"], "conversation.closed");
    assert!(got[1]["body"].get("text").is_none());
    // No conversation.created ever: once stopped, still these two.
    world.daemon.stop().await;
    assert_eq!(receiver.deliveries().await.len(), 2);
}

#[tokio::test]
async fn a_failing_receiver_gets_the_same_webhook_again_until_it_takes_it() {
    let env = TestEnv::new();
    let receiver = WebhookReceiver::start(&env, SECRET, json!([503, 503])).await;
    let mut world = start(env, &receiver, "events = [\"conversation.created\"]").await;
    let mut c = world.consumer().await;
    let conversation = open(&mut c).await;

    // Backoff: 0.5 to 1 s, then 1 to 2 s.
    let got = receiver.wait_for(3, Duration::from_secs(20)).await;
    let statuses: Vec<_> = got.iter().map(|d| d["status"].clone()).collect();
    assert_eq!(statuses, [503, 503, 200]);
    for d in &got {
        assert_eq!(
            d["delivery"], got[0]["delivery"],
            "one delivery id across attempts"
        );
        assert_eq!(d["body"]["conversationId"], conversation.as_str());
        assert_eq!(d["signatureValid"], true, "every attempt is signed: {d}");
    }
    world
        .wait_metric(r#"brandgate_relay_webhook_attempts_total{outcome="5xx"} 2"#)
        .await;
    world
        .wait_metric(
            r#"brandgate_relay_webhooks_total{type="conversation.created",result="delivered"} 1"#,
        )
        .await;
    // Taken: not sent again. Once stopped, still three.
    world.daemon.stop().await;
    assert_eq!(receiver.deliveries().await.len(), 3);
}

#[tokio::test]
async fn a_webhook_waiting_for_its_retry_does_not_hold_back_other_conversations() {
    let env = TestEnv::new();
    // The first webhook is told to come back in 3 s (Retry-After); a later one in 30 s.
    let receiver = WebhookReceiver::start(
        &env,
        SECRET,
        json!([{"status": 503, "retryAfter": "3"}, 200, 200, 200, {"status": 503, "retryAfter": "30"}]),
    )
    .await;
    let mut world = start(env, &receiver, "").await;
    let mut first = world.consumer().await;
    let waiting = open(&mut first).await;
    receiver.wait_for(1, Duration::from_secs(20)).await;

    // Another conversation's webhook goes out meanwhile; the first conversation's close waits
    // behind its retry.
    let mut second = world.consumer().await;
    let other = open(&mut second).await;
    receiver.wait_for(2, Duration::from_secs(10)).await;
    close(&mut first, &waiting).await;
    let got = receiver.wait_for(4, Duration::from_secs(20)).await;
    let seen: Vec<(String, String, i64)> = got
        .iter()
        .map(|d| {
            (
                d["body"]["conversationId"].as_str().unwrap().to_string(),
                d["body"]["type"].as_str().unwrap().to_string(),
                d["status"].as_i64().unwrap(),
            )
        })
        .collect();
    let created = "conversation.created".to_string();
    assert_eq!(
        seen,
        [
            (waiting.clone(), created.clone(), 503),
            (other.clone(), created.clone(), 200),
            (waiting.clone(), created.clone(), 200),
            (waiting.clone(), "conversation.closed".to_string(), 200),
        ],
        "order kept per conversation"
    );
    let at = |i: usize| got[i]["receivedAt"].as_i64().unwrap();
    assert!(
        at(2) - at(0) >= 3000,
        "Retry-After honoured: {} ms",
        at(2) - at(0)
    );
    assert_eq!(
        got[0]["delivery"], got[2]["delivery"],
        "the same webhook again"
    );

    // A webhook waiting for a 30 s retry when the daemon stops stays in the outbox, and is said
    // to; stopping does not wait for it. The operator sees it, with its last answer.
    let mut third = world.consumer().await;
    let waiting_too = open(&mut third).await;
    receiver.wait_for(5, Duration::from_secs(20)).await;
    let started = Instant::now();
    let log = world.daemon.stop().await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(
        log.contains("outbox items wait in the store for the next start"),
        "{log}"
    );
    assert_eq!(receiver.deliveries().await.len(), 5);
    let listed = outbox_list(&world, &[]).await;
    let pending: Vec<&str> = listed.lines().skip(1).collect();
    assert_eq!(pending.len(), 1, "{listed}");
    let fields: Vec<&str> = pending[0].split_whitespace().collect();
    assert_eq!(
        (fields[0], fields[1], fields[2], fields[3]),
        (
            got_last(&receiver).await.as_str(),
            "webhook",
            "pending",
            "1"
        ),
        "{listed}"
    );
    assert!(pending[0].ends_with("answered 503"), "{listed}");
    let _ = waiting_too;
}

/// The delivery id of the last webhook the receiver got.
async fn got_last(receiver: &WebhookReceiver) -> String {
    let got = receiver.deliveries().await;
    got.last().unwrap()["delivery"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `brandgate outbox list` (plus `args`) on the world's config: its standard output.
async fn outbox_list(world: &World, args: &[&str]) -> String {
    let config = world.daemon.config_path.to_str().unwrap();
    let mut all = vec!["outbox", "list", "--config", config];
    all.extend(args);
    let (code, out, err) = crate::support::daemon::run(&all, &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    out
}

#[tokio::test]
async fn a_receiver_that_never_answers_does_not_delay_the_consumer() {
    let env = TestEnv::new();
    let receiver = WebhookReceiver::start(&env, SECRET, json!([])).await;
    receiver.hang().await;
    let mut world = start(env, &receiver, "timeout = \"6s\"").await;
    let mut c = world.consumer().await;
    let conversation = open(&mut c).await;
    // The conversation.created webhook is now held by the receiver.
    receiver.wait_received(1, Duration::from_secs(20)).await;
    for i in 0..5 {
        let started = Instant::now();
        let sent = publish(&mut c, &conversation, &format!("message {i}")).await;
        assert_eq!(sent["code"], 200, "{sent}");
        assert_eq!(sent["body"]["sequence"], i);
        // Far below the 6 s the webhook attempt may take.
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "publish acknowledged after {:?}",
            started.elapsed()
        );
    }
    close(&mut c, &conversation).await;
    // The receiver answers again: the held attempt times out and is retried, and only then do
    // the conversation's other webhooks follow, in order.
    let answering_from = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    receiver.answer_again().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let got = loop {
        let got = receiver.deliveries().await;
        if got.len() >= 8 && got[1..].iter().all(|d| !d["status"].is_null()) {
            break got;
        }
        assert!(Instant::now() < deadline, "{got:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    world.daemon.stop().await;
    let got_after_stop = receiver.deliveries().await;
    assert_eq!(got_after_stop.len(), 8, "{got_after_stop:#?}");
    let kinds: Vec<(&str, Option<i64>)> = got
        .iter()
        .map(|d| {
            (
                d["body"]["type"].as_str().unwrap(),
                d["body"]["sequence"].as_i64(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("conversation.created", None),
            ("conversation.created", None),
            ("message.created", Some(0)),
            ("message.created", Some(1)),
            ("message.created", Some(2)),
            ("message.created", Some(3)),
            ("message.created", Some(4)),
            ("conversation.closed", None),
        ]
    );
    assert!(
        got[0]["status"].is_null(),
        "the first attempt was never answered"
    );
    assert!(
        got[2..]
            .iter()
            .all(|d| d["receivedAt"].as_i64().unwrap() >= answering_from),
        "nothing of the conversation went out while its first webhook was held: {got:#?}"
    );
}

/// The receiver holds the first webhook; ten messages are acknowledged meanwhile; then
/// `kill -9`. After a start on the same store the receiver gets everything, in commit order,
/// the held webhook under its first id.
async fn webhooks_outlive_a_kill(store_extra: &str) {
    let env = TestEnv::new();
    let receiver = WebhookReceiver::start(&env, SECRET, json!([])).await;
    receiver.hang().await;
    // Long enough that the held attempt is still held at the kill.
    let mut world = start_on(env, &receiver, "timeout = \"10s\"", store_extra).await;
    let mut c = world.consumer().await;
    let conversation = open(&mut c).await;
    let held = receiver.wait_received(1, Duration::from_secs(20)).await;
    assert_eq!(held.len(), 1, "{held:#?}");
    for i in 0..10 {
        let sent = publish(&mut c, &conversation, &format!("message {i}")).await;
        assert_eq!(sent["code"], 200, "{sent}");
        assert_eq!(sent["body"]["sequence"], i);
    }
    world.daemon.signal(libc::SIGKILL);
    world.daemon.wait_exit(Duration::from_secs(10)).await;
    receiver.answer_again().await;
    let config = std::fs::read_to_string(&world.daemon.config_path).unwrap();
    let mut daemon = Daemon::start(world.env.path(), &config).await;

    // On PostgreSQL the held item's lease (20 s) must run out first.
    let deadline = Instant::now() + Duration::from_secs(60);
    let delivered = loop {
        let delivered: Vec<Value> = receiver
            .deliveries()
            .await
            .into_iter()
            .filter(|d| d["status"] == 200)
            .collect();
        if delivered.len() >= 11 {
            break delivered;
        }
        assert!(Instant::now() < deadline, "{delivered:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let log = daemon.stop().await;
    let seen: Vec<(&str, Option<i64>)> = delivered
        .iter()
        .map(|d| {
            (
                d["body"]["type"].as_str().unwrap(),
                d["body"]["sequence"].as_i64(),
            )
        })
        .collect();
    let mut expected = vec![("conversation.created", None)];
    expected.extend((0..10).map(|i| ("message.created", Some(i))));
    assert_eq!(seen, expected, "every webhook once, in commit order");
    assert_eq!(
        delivered[0]["delivery"], held[0]["delivery"],
        "the held one, under its id"
    );
    assert!(delivered.iter().all(|d| d["signatureValid"] == true));
    assert!(
        delivered
            .iter()
            .all(|d| d["body"]["conversationId"] == conversation.as_str())
    );
    assert_eq!(
        receiver
            .deliveries()
            .await
            .iter()
            .filter(|d| d["status"] == 200)
            .count(),
        11,
        "nothing twice"
    );
    assert!(!log.contains("outbox items wait in the store"), "{log}");
}

#[tokio::test]
async fn webhooks_outlive_a_kill_on_sqlite() {
    webhooks_outlive_a_kill("").await;
}

#[tokio::test]
async fn webhooks_outlive_a_kill_on_postgresql() {
    let Some(db) = crate::support::postgres::Database::create().await else {
        return;
    };
    webhooks_outlive_a_kill(&db.store_line()).await;
    db.drop().await;
}

/// A receiver that refuses (`400`) gets nothing more of that webhook until the operator, who
/// sees it parked with the answer, puts it back: then it goes, under the same id.
#[tokio::test]
async fn a_refused_webhook_is_parked_until_the_operator_retries_it() {
    let env = TestEnv::new();
    let receiver = WebhookReceiver::start(&env, SECRET, json!([400])).await;
    let world = start(env, &receiver, "events = [\"conversation.created\"]").await;
    let mut c = world.consumer().await;
    open(&mut c).await;
    let refused = receiver.wait_for(1, Duration::from_secs(20)).await;
    world
        .wait_metric(r#"brandgate_outbox_items{kind="webhook",state="parked"} 1"#)
        .await;
    let listed = outbox_list(&world, &["--parked"]).await;
    let id = refused[0]["delivery"].as_str().unwrap();
    let line = listed.lines().nth(1).unwrap_or_default();
    assert!(line.starts_with(id), "{listed}");
    assert!(
        line.contains(" parked ") && line.ends_with("answered 400"),
        "{listed}"
    );
    assert_eq!(listed.lines().count(), 2, "{listed}");

    let config = world.daemon.config_path.to_str().unwrap();
    let (code, out, err) =
        crate::support::daemon::run(&["outbox", "retry", "--config", config, "no-such-id"], &[])
            .await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("no parked outbox item \"no-such-id\""),
        "{err}"
    );
    let (code, out, err) =
        crate::support::daemon::run(&["outbox", "retry", "--config", config, id], &[]).await;
    assert_eq!(
        (code, out.trim()),
        (0, "1 parked item(s) due again now"),
        "{err}"
    );
    let got = receiver.wait_for(2, Duration::from_secs(20)).await;
    assert_eq!(got[1]["status"], 200);
    assert_eq!(got[1]["delivery"], id);
    world
        .wait_metric(r#"brandgate_outbox_items{kind="webhook",state="parked"} 0"#)
        .await;
    assert_eq!(
        outbox_list(&world, &[]).await.lines().count(),
        1,
        "only the header"
    );
}

/// Webhooks turned off by a reload wait in the outbox (no node takes them) and go, under
/// their id, once a reload turns them on again.
#[tokio::test]
async fn webhooks_turned_off_wait_until_turned_on_again() {
    let env = TestEnv::new();
    let receiver =
        WebhookReceiver::start(&env, SECRET, json!([{"status": 503, "retryAfter": "2"}])).await;
    let mut world = start(env, &receiver, "").await;
    let with_webhooks = std::fs::read_to_string(&world.daemon.config_path).unwrap();
    let without = with_webhooks
        .split("[relay.webhooks]")
        .next()
        .unwrap()
        .to_string();
    let mut c = world.consumer().await;
    open(&mut c).await;
    let first = receiver.wait_for(1, Duration::from_secs(20)).await;
    world.daemon.rewrite_config(&without);
    world.daemon.reload().await;
    // Past the 2 s Retry-After: a node that took the webhook now would have removed it unsent.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let listed = outbox_list(&world, &[]).await;
    let pending: Vec<&str> = listed.lines().skip(1).collect();
    assert_eq!(pending.len(), 1, "{listed}");
    assert!(
        pending[0].starts_with(first[0]["delivery"].as_str().unwrap()),
        "{listed}"
    );
    assert_eq!(receiver.deliveries().await.len(), 1);

    world.daemon.rewrite_config(&with_webhooks);
    world.daemon.reload().await;
    let got = receiver.wait_for(2, Duration::from_secs(20)).await;
    assert_eq!(got[1]["status"], 200);
    assert_eq!(got[1]["delivery"], first[0]["delivery"]);
    world.daemon.stop().await;
    assert_eq!(receiver.deliveries().await.len(), 2);
}

#[tokio::test]
async fn a_receiver_with_another_secret_refuses_and_a_reload_reads_the_new_one() {
    let env = TestEnv::new();
    let receiver = WebhookReceiver::start(&env, "another-secret-entirely", json!([])).await;
    let mut world = start(env, &receiver, "").await;
    let mut c = world.consumer().await;
    let conversation = open(&mut c).await;

    let got = receiver.wait_for(1, Duration::from_secs(20)).await;
    assert_eq!(got[0]["signatureValid"], false, "{got:#?}");
    assert_eq!(got[0]["signatureError"], "No matching signature found");
    assert_eq!(got[0]["status"], 401);
    // A 4xx other than 429 is not retried.
    world
        .wait_metric(
            r#"brandgate_relay_webhooks_total{type="conversation.created",result="refused"} 1"#,
        )
        .await;
    assert_eq!(receiver.deliveries().await.len(), 1);

    // The brand rotates the secret: brandgate reads the file again on reload.
    world
        .env
        .secret("relay-webhook-secret", "another-secret-entirely\n");
    world.daemon.reload().await;
    close(&mut c, &conversation).await;
    // Exactly two: a retry of the refused one would be one more.
    let got = receiver.wait_for(2, Duration::from_secs(20)).await;
    assert_eq!(got[1]["body"]["type"], "conversation.closed");
    assert_eq!(got[1]["signatureValid"], true, "{got:#?}");
    assert_eq!(got[1]["status"], 200);
    world.daemon.stop().await;
    assert_eq!(receiver.deliveries().await.len(), 2);
}

/// What `check-config` prints for `config`, which it must refuse (exit 78).
async fn refused_by_check_config(env: &TestEnv, config: &str) -> String {
    let path = env.file("check.toml", config);
    let (code, out, err) =
        crate::support::daemon::run(&["check-config", "--config", path.to_str().unwrap()], &[])
            .await;
    assert_eq!(code, 78, "{out}{err}");
    err
}

#[tokio::test]
async fn check_config_names_every_webhook_problem() {
    let env = TestEnv::new();
    let keys = env.secret("data-keys", &data_key_line("k1"));
    let config = env.config(&format!(
        r#"
[store]
data_keys_file = "{keys}"
[identity]
issuer = "https://brandgate.test"
[relay]
account = "{ACCOUNT}"
[relay.webhooks]
url = "http://hooks.brand.example/relay"
secret_file = "{missing}"
events = ["message.deleted"]
"#,
        keys = keys.display(),
        missing = env.path().join("no-such-secret").display(),
    ));
    let err = refused_by_check_config(&env, &config).await;
    for key in [
        "relay.webhooks.url",
        "relay.webhooks.events: \"message.deleted\" is not one of",
    ] {
        assert!(err.contains(key), "{key} in {err}");
    }

    // The shape is right now: the missing secret file is what is left.
    let config = config
        .replace("http://hooks", "https://hooks")
        .replace("[\"message.deleted\"]", "[\"message.created\"]");
    let err = refused_by_check_config(&env, &config).await;
    assert!(
        err.contains("relay.webhooks.secret_file: cannot read"),
        "{err}"
    );

    // A secret written as the standard writes them, but not base64 after whsec_: named, not
    // used as raw text (the brand's library would decode it differently).
    let broken = env.secret("relay-webhook-secret", "whsec_not base64!\n");
    let config = config.replace(
        &env.path().join("no-such-secret").display().to_string(),
        &broken.display().to_string(),
    );
    let err = refused_by_check_config(&env, &config).await;
    assert!(
        err.contains(
            "relay.webhooks.secret_file: the secret starts with whsec_ but the rest is not base64"
        ),
        "{err}"
    );
}

/// The relay's webhooks leave through `[relay.egress]`'s proxy (a real tinyproxy): the tunnel
/// it opened is exactly to the receiver, and the webhooks arrive signed as ever.
#[tokio::test]
async fn webhooks_leave_through_the_relays_own_proxy() {
    use crate::support::proxy::{Proxy, ProxyRules, authority};
    let env = TestEnv::new();
    let receiver = WebhookReceiver::start(&env, SECRET, json!([])).await;
    let mut proxy = Proxy::start(env.path(), ProxyRules::default()).await;
    let world = start(
        env,
        &receiver,
        &format!("[relay.egress]\nproxy = \"{}\"", proxy.url()),
    )
    .await;
    let mut c = world.consumer().await;
    let conversation = open(&mut c).await;
    close(&mut c, &conversation).await;
    let got = receiver.wait_for(2, Duration::from_secs(20)).await;
    assert_eq!(got.len(), 2);
    let receiver_at = authority(&receiver.url());
    let mut tunnels = proxy.stop_and_tunnels().await;
    tunnels.dedup();
    assert_eq!(tunnels, [receiver_at]);
}
