//! The push proxy towards APNs: what reaches the (fake) APNs for each request shape and option,
//! and how every APNs answer is mapped back to the platform.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::Method;

use serde_json::json;

use crate::support::daemon::Daemon;
use crate::support::fake::Behaviour;
use crate::support::fake_apns::{self, FakeApns};
use crate::support::pki::ApnsKey;
use crate::support::{TestEnv, apns, ios_push, platform_auth};

const APP: &str = "com.brand.app";
const TOKEN: &str = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";

struct World {
    env: TestEnv,
    fake: FakeApns,
    daemon: Daemon,
}

async fn world(app_extra: &str, apns_extra: &str) -> World {
    let env = TestEnv::new();
    let (fake, key) = apns(APP).await;
    let config =
        env.config(&env.apns_app(APP, &fake, &key, app_extra, &env.basic_auth(), apns_extra));
    let daemon = Daemon::start(env.path(), &config).await;
    World { env, fake, daemon }
}

impl World {
    async fn push(&self, body: &serde_json::Value) -> crate::support::client::Answer {
        let auth = platform_auth();
        self.env
            .client()
            .post_json(
                &self.daemon.url(&format!("/push/{APP}")),
                &[("authorization", &auth)],
                body,
            )
            .await
    }
}

#[tokio::test]
async fn ios_push_reaches_apns_with_headers_and_payload() {
    let w = world("", "").await;
    let answer = w
        .push(&ios_push(TOKEN, "Hello from agent", "conv-1", 8))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.json()["status"], "delivered");
    let got = w.fake.delivered_to(TOKEN);
    assert_eq!(got.len(), 1);
    let r = &got[0];
    assert_eq!(r.headers["apns-topic"], APP);
    assert_eq!(r.headers["apns-push-type"], "alert");
    assert_eq!(r.headers["apns-priority"], "10");
    assert_eq!(r.headers["apns-collapse-id"], "conv-1");
    let expiration: u64 = r.headers["apns-expiration"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        expiration > now + 3600,
        "expiration {expiration} too close to now {now}"
    );
    assert_eq!(r.body["aps"]["alert"], "Hello from agent");
    assert_eq!(r.body["aps"]["sound"], "default");
    assert_eq!(r.body["aps"]["badge"], 3);
    assert_eq!(r.body["conversationId"], "conv-1");
    assert_eq!(r.body["sequence"], 8);
    assert!(
        r.body.get("device-token").is_none(),
        "the token must not be in the payload"
    );
    // The apns-id brandgate chose is the one APNs echoed, and the platform sees it.
    assert_eq!(answer.json()["id"], r.headers["apns-id"].to_str().unwrap());
}

#[tokio::test]
async fn mask_text_replaces_the_real_text_and_mutable_content_is_set() {
    let w = world(
        "mask_text = \"You have a new message\"\nmutable_content = true",
        "",
    )
    .await;
    let mut body = ios_push(TOKEN, "ignored", "conv-2", 1);
    body["aps"]["alert"] =
        json!({"title": "Agent Smith", "body": "Your code is 493817", "loc-args": ["493817"]});
    let answer = w.push(&body).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let r = &w.fake.delivered_to(TOKEN)[0];
    assert_eq!(r.body["aps"]["alert"], "You have a new message");
    assert_eq!(r.body["aps"]["mutable-content"], 1);
    assert_eq!(r.body["aps"]["badge"], 3);
    let sent = r.body.to_string();
    assert!(
        !sent.contains("493817") && !sent.contains("Smith"),
        "{sent}"
    );
}

/// Every APNs answer, mapped to what the platform understands.
#[tokio::test]
async fn apns_answers_map_to_platform_statuses() {
    let w = world("", "").await;
    let gone_ms = 1_760_000_000_123u64;
    let cases: Vec<(&str, Behaviour, u16, &str)> = vec![
        (
            "0a01",
            fake_apns::reason(400, "BadDeviceToken"),
            403,
            "BadDeviceToken",
        ),
        (
            "0a02",
            fake_apns::reason(400, "DeviceTokenNotForTopic"),
            403,
            "DeviceTokenNotForTopic",
        ),
        (
            "0a03",
            fake_apns::gone("Unregistered", gone_ms),
            403,
            "Unregistered",
        ),
        (
            "0a04",
            fake_apns::gone("ExpiredToken", gone_ms),
            403,
            "ExpiredToken",
        ),
        ("0a05", fake_apns::reason(400, "BadTopic"), 500, "BadTopic"),
        (
            "0a06",
            fake_apns::reason(403, "BadCertificateEnvironment"),
            500,
            "BadCertificateEnvironment",
        ),
        (
            "0a07",
            fake_apns::reason(413, "PayloadTooLarge"),
            500,
            "PayloadTooLarge",
        ),
    ];
    for (token, behaviour, _, _) in &cases {
        w.fake.script(token, vec![behaviour.clone()]);
    }
    for (i, (token, _, status, reason)) in cases.iter().enumerate() {
        let answer = w.push(&ios_push(token, "hi", "c", i as i64)).await;
        assert_eq!(answer.status, *status, "{token}: {}", answer.body);
        assert_eq!(answer.json()["reason"], *reason, "{token}");
        if *status == 403 {
            assert_eq!(
                answer.json()["error"],
                "the device token cannot receive pushes"
            );
        }
        // Dead tokens and refusals are not retried.
        assert_eq!(
            w.fake
                .received()
                .iter()
                .filter(|r| r.token == *token)
                .count(),
            1,
            "{token}"
        );
    }

    // Each dead token is recorded once, by hash, with APNs' timestamp where it gave one.
    let lines = wait_for_lines(&w, 4).await;
    let records: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let unregistered = records
        .iter()
        .find(|r| r["reason"] == "Unregistered")
        .unwrap();
    assert_eq!(unregistered["provider_timestamp"], gone_ms / 1000);
    assert_eq!(unregistered["app"], APP);
    assert_eq!(unregistered["token_sha256"].as_str().unwrap().len(), 64);
    assert!(
        lines
            .iter()
            .all(|l| !l.contains("0a03\"") && !l.contains("\"token\"")),
        "the file never holds the token"
    );

    // Metrics count them.
    let metrics = w.env.client().get(&w.daemon.ops_url("/metrics")).await.body;
    assert!(
        metrics.contains(
            "brandgate_push_dead_tokens_total{app=\"com.brand.app\",provider=\"apns\"} 4"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("reason=\"BadTopic\""), "{metrics}");
}

/// The dead-token file is written by a background task: wait (bounded) until it has `n` lines.
async fn wait_for_lines(w: &World, n: usize) -> Vec<String> {
    let path = w.env.path().join("state/dead-tokens.jsonl");
    for _ in 0..200 {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= n {
            return lines;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{} never had {n} lines", path.display());
}

#[tokio::test]
async fn transient_answers_are_retried_within_the_deadline() {
    let w = world("", "").await;
    // 429 with Retry-After, then 500, then delivered: one platform request, three APNs calls.
    w.fake.script(
        "0b01",
        vec![
            fake_apns::too_many_requests(1),
            fake_apns::reason(500, "InternalServerError"),
            Behaviour::Ok,
        ],
    );
    let started = std::time::Instant::now();
    let answer = w.push(&ios_push("0b01", "hi", "c", 1)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "Retry-After was not honoured"
    );
    let calls: Vec<u16> = w
        .fake
        .received()
        .iter()
        .filter(|r| r.token == "0b01")
        .map(|r| r.answered)
        .collect();
    assert_eq!(calls, vec![429, 500, 200]);

    // Always unavailable: brandgate gives up before the platform's 10 s re-send, with 500.
    w.fake
        .script("0b02", vec![fake_apns::reason(503, "ServiceUnavailable")]);
    let started = std::time::Instant::now();
    let answer = w.push(&ios_push("0b02", "hi", "c", 2)).await;
    assert_eq!(answer.status, 500, "{}", answer.body);
    assert_eq!(answer.json()["reason"], "ServiceUnavailable");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        w.fake
            .received()
            .iter()
            .filter(|r| r.token == "0b02")
            .count()
            > 1
    );

    // A Retry-After longer than the deadline is not waited for.
    w.fake.script(
        "0b03",
        vec![fake_apns::too_many_requests(60), Behaviour::Ok],
    );
    let answer = w.push(&ios_push("0b03", "hi", "c", 3)).await;
    assert_eq!(answer.status, 500);
    assert_eq!(
        w.fake
            .received()
            .iter()
            .filter(|r| r.token == "0b03")
            .count(),
        1
    );

    let metrics = w.env.client().get(&w.daemon.ops_url("/metrics")).await.body;
    assert!(
        metrics.contains("brandgate_push_retries_total{app=\"com.brand.app\",provider=\"apns\"}"),
        "{metrics}"
    );
    // The log says why each gave up: retries used up (0b02) or a wait past the deadline (0b03).
    let mut w = w;
    let log = w.daemon.stop().await;
    let line = |token: &str| {
        log.lines()
            .find(|l| l.contains("push not delivered") && l.contains(token))
            .unwrap_or_else(|| panic!("no line for {token}: {log}"))
            .to_string()
    };
    assert!(line("0b02").contains("every retry was used before the deadline"));
    assert!(line("0b03").contains("the next retry would start after the deadline"));
}

#[tokio::test]
async fn a_slow_provider_is_cut_off_at_the_deadline() {
    // The deadline is 8 s by default; this test shortens it.
    let env = TestEnv::new();
    let (fake, key) = apns(APP).await;
    let config = env.config(&format!(
        "[push]\ndeadline = \"1s\"\n{}",
        env.apns_app(APP, &fake, &key, "", &env.basic_auth(), "")
    ));
    let daemon = Daemon::start(env.path(), &config).await;
    fake.script(
        "0c01",
        vec![Behaviour::Delay(
            Duration::from_secs(5),
            Box::new(Behaviour::Ok),
        )],
    );
    let started = std::time::Instant::now();
    let auth = platform_auth();
    let answer = env
        .client()
        .post_json(
            &daemon.url(&format!("/push/{APP}")),
            &[("authorization", &auth)],
            &ios_push("0c01", "hi", "c", 1),
        )
        .await;
    assert_eq!(answer.status, 500, "{}", answer.body);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "took {took:?}");
    let mut daemon = daemon;
    let log = daemon.stop().await;
    assert!(
        log.contains("push not delivered: the deadline came during an attempt"),
        "{log}"
    );
}

#[tokio::test]
async fn connection_loss_and_goaway_are_survived() {
    let w = world("", "connections = 1").await;
    // The connection drops under the request: brandgate reconnects and retries.
    w.fake.script("0d01", vec![Behaviour::Reset, Behaviour::Ok]);
    let answer = w.push(&ios_push("0d01", "hi", "c", 1)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(w.fake.delivered_to("0d01").len(), 1);
    assert_eq!(w.fake.listening.connection_count(), 2);

    // APNs says GOAWAY (after answering): the next push goes over a new connection.
    w.fake
        .script("0d02", vec![Behaviour::GoAway(Box::new(Behaviour::Ok))]);
    assert_eq!(w.push(&ios_push("0d02", "hi", "c", 2)).await.status, 200);
    let answer = w.push(&ios_push("0d03", "hi", "c", 3)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(w.fake.listening.connection_count(), 3);
}

#[tokio::test]
async fn pushes_share_a_fixed_pool_of_connections_and_one_provider_token() {
    let w = world("", "connections = 2").await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let client = w.env.client();
        let url = w.daemon.url(&format!("/push/{APP}"));
        tasks.push(tokio::spawn(async move {
            let auth = platform_auth();
            client
                .post_json(
                    &url,
                    &[("authorization", &auth)],
                    &ios_push(&format!("0e{i:02}"), "hi", "c", i),
                )
                .await
                .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    assert_eq!(w.fake.listening.connection_count(), 2);
    let bearers: std::collections::HashSet<String> = w
        .fake
        .received()
        .iter()
        .map(|r| r.headers["authorization"].to_str().unwrap().to_string())
        .collect();
    assert_eq!(
        bearers.len(),
        1,
        "the provider token is signed once and reused"
    );
}

#[tokio::test]
async fn a_repeat_of_a_delivered_push_is_not_sent_again() {
    let w = world("", "").await;
    let push = ios_push(TOKEN, "hi", "conv-9", 42);
    assert_eq!(w.push(&push).await.json()["status"], "delivered");
    let again = w.push(&push).await;
    assert_eq!(again.status, 200);
    assert_eq!(again.json()["status"], "duplicate");
    assert_eq!(w.fake.delivered_to(TOKEN).len(), 1);
    // Another sequence number is another message.
    assert_eq!(
        w.push(&ios_push(TOKEN, "hi", "conv-9", 43)).await.json()["status"],
        "delivered"
    );
    assert_eq!(w.fake.delivered_to(TOKEN).len(), 2);

    // A push that failed is sent again when the platform re-sends it.
    w.fake.script(
        "0f01",
        vec![
            fake_apns::reason(503, "ServiceUnavailable"),
            fake_apns::reason(503, "ServiceUnavailable"),
            fake_apns::reason(503, "ServiceUnavailable"),
            fake_apns::reason(503, "ServiceUnavailable"),
            fake_apns::reason(503, "ServiceUnavailable"),
            fake_apns::reason(503, "ServiceUnavailable"),
            Behaviour::Ok,
        ],
    );
    let failing = ios_push("0f01", "hi", "conv-10", 1);
    assert_eq!(w.push(&failing).await.status, 500);
    assert_eq!(w.push(&failing).await.json()["status"], "delivered");

    let metrics = w.env.client().get(&w.daemon.ops_url("/metrics")).await.body;
    assert!(
        metrics.contains("brandgate_push_duplicates_total 1"),
        "{metrics}"
    );
}

#[tokio::test]
async fn long_text_is_truncated_to_fit_never_refused() {
    let w = world("", "").await;
    let long: String = "Ünïcödé text that goes on. ".repeat(400);
    let answer = w.push(&ios_push(TOKEN, &long, "c", 1)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let r = &w.fake.delivered_to(TOKEN)[0];
    assert!(r.body_len <= 4096, "{}", r.body_len);
    let alert = r.body["aps"]["alert"].as_str().unwrap();
    assert!(alert.ends_with('…'));
    assert!(long.starts_with(alert.trim_end_matches('…')));
    assert!(
        r.body_len > 3900,
        "cut much more than needed: {}",
        r.body_len
    );
}

#[tokio::test]
async fn malformed_requests_get_a_reason() {
    let w = world("", "").await;
    let url = w.daemon.url(&format!("/push/{APP}"));
    let auth = platform_auth();
    let client = w.env.client();
    let post = |body: &'static str, ct: &'static str| {
        let client = client.clone();
        let url = url.clone();
        let auth = auth.clone();
        async move {
            client
                .send(
                    Method::POST,
                    &url,
                    &[("authorization", &auth), ("content-type", ct)],
                    bytes::Bytes::from(body),
                )
                .await
        }
    };
    let a = post("{not json", "application/json").await;
    assert_eq!(a.status, 400);
    assert!(
        a.json()["error"]
            .as_str()
            .unwrap()
            .contains("not valid JSON")
    );
    let a = post(r#"{"push-service":1}"#, "application/json").await;
    assert_eq!(a.status, 400);
    assert!(a.json()["error"].as_str().unwrap().contains("device-token"));
    let a = post(r#"{"push-service":1,"device-token":"aa"}"#, "text/plain").await;
    assert_eq!(a.status, 415);
    assert!(
        a.json()["error"]
            .as_str()
            .unwrap()
            .contains("application/json")
    );
    // No Content-Type at all: refused the same way (one rule for every JSON body).
    let a = client
        .send(
            Method::POST,
            &url,
            &[("authorization", &auth)],
            bytes::Bytes::from_static(br#"{"push-service":1,"device-token":"aa"}"#),
        )
        .await;
    assert_eq!(a.status, 415);
    assert!(w.fake.received().is_empty());
    let a = post(
        r#"{"push-service":3,"device-token":"aa","notificationType":"huawei"}"#,
        "application/json",
    )
    .await;
    // Huawei, for an app that has no Huawei credentials: refused, naming what is missing.
    assert_eq!(a.status, 400);
    assert!(
        a.json()["error"].as_str().unwrap().contains("huawei"),
        "{}",
        a.body
    );
    let a = post(
        r#"{"push-service":2,"device-token":"aa","data":{"message":"x"}}"#,
        "application/json",
    )
    .await;
    assert_eq!(a.status, 400);
    assert!(
        a.json()["error"]
            .as_str()
            .unwrap()
            .contains("no fcm provider")
    );

    let big = format!(
        r#"{{"push-service":1,"device-token":"aa","aps":{{"alert":"{}"}}}}"#,
        "x".repeat(70_000)
    );
    let a = client
        .send(
            Method::POST,
            &url,
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            bytes::Bytes::from(big),
        )
        .await;
    assert_eq!(a.status, 413);
    assert!(a.json()["error"].as_str().unwrap().contains("65536"));

    let a = client
        .post_json(
            &w.daemon.url("/push/com.other.app"),
            &[("authorization", &auth)],
            &ios_push(TOKEN, "x", "c", 1),
        )
        .await;
    assert_eq!(a.status, 404);
    // Nothing of the above reached APNs.
    assert!(w.fake.received().is_empty());
}

#[tokio::test]
async fn a_refused_credential_shows_in_readyz_and_clears_after_a_delivery() {
    let w = world("", "").await;
    w.fake
        .script("1a01", vec![fake_apns::reason(403, "InvalidProviderToken")]);
    assert_eq!(w.push(&ios_push("1a01", "x", "c", 1)).await.status, 500);
    let ready = w.env.client().get(&w.daemon.ops_url("/readyz")).await;
    assert_eq!(
        ready.status, 200,
        "one app's credential must not take the node out: {}",
        ready.body
    );
    assert_eq!(
        ready.json()["checks"]["push"]["degraded"]["com.brand.app/apns"],
        "InvalidProviderToken"
    );
    assert_eq!(w.push(&ios_push("1a02", "x", "c", 2)).await.status, 200);
    let ready = w.env.client().get(&w.daemon.ops_url("/readyz")).await;
    assert_eq!(ready.json()["checks"]["push"]["degraded"], json!({}));
}

#[tokio::test]
async fn a_wrong_signing_key_is_refused_by_apns() {
    let env = TestEnv::new();
    let (fake, _right_key) = apns(APP).await;
    let wrong = ApnsKey::new();
    let config = env.config(&env.apns_app(APP, &fake, &wrong, "", &env.basic_auth(), ""));
    let daemon = Daemon::start(env.path(), &config).await;
    let auth = platform_auth();
    let answer = env
        .client()
        .post_json(
            &daemon.url(&format!("/push/{APP}")),
            &[("authorization", &auth)],
            &ios_push(TOKEN, "x", "c", 1),
        )
        .await;
    assert_eq!(answer.status, 500);
    assert_eq!(answer.json()["reason"], "InvalidProviderToken");
    assert!(fake.delivered_to(TOKEN).is_empty());
}

#[tokio::test]
async fn an_expired_provider_token_is_signed_again() {
    let w = world("", "").await;
    w.fake.script(
        "1b01",
        vec![
            fake_apns::reason(403, "ExpiredProviderToken"),
            Behaviour::Ok,
        ],
    );
    let answer = w.push(&ios_push("1b01", "x", "c", 1)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let bearers: Vec<String> = w
        .fake
        .received()
        .iter()
        .filter(|r| r.token == "1b01")
        .map(|r| r.headers["authorization"].to_str().unwrap().to_string())
        .collect();
    assert_eq!(bearers.len(), 2);
    assert_ne!(bearers[0], bearers[1], "the rejected token was replaced");
}

#[tokio::test]
async fn an_android_shaped_request_for_apns_carries_its_text() {
    let w = world("", "").await;
    let mut body = crate::support::android_push("1c01", "Android-shaped", "conv-5", 3);
    body["push-service"] = 1.into();
    body["notificationType"] = "apn".into();
    assert_eq!(w.push(&body).await.status, 200);
    let r = &w.fake.delivered_to("1c01")[0];
    assert_eq!(r.body["aps"]["alert"], "Android-shaped");
    assert_eq!(r.body["aps"]["badge"], 4);
    assert_eq!(r.body["conversationId"], "conv-5");
}

#[tokio::test]
async fn a_silent_push_stays_silent_when_masked() {
    let w = world("mask_text = \"New message\"", "").await;
    let body = json!({"aps": {"content-available": 1}, "push-service": 1, "device-token": "1d01",
        "conversationId": "c", "sequence": 1, "notificationType": "apn"});
    assert_eq!(w.push(&body).await.status, 200);
    let r = &w.fake.delivered_to("1d01")[0];
    assert!(r.body["aps"].get("alert").is_none(), "{}", r.body);
    assert_eq!(r.headers["apns-push-type"], "background");
    assert_eq!(r.headers["apns-priority"], "5");
}

#[tokio::test]
async fn a_token_that_is_not_hex_is_refused_without_calling_apns() {
    let w = world("", "").await;
    let answer = w.push(&ios_push("opaque-id-123", "x", "c", 1)).await;
    assert_eq!(answer.status, 403, "{}", answer.body);
    assert!(answer.json()["error"].as_str().unwrap().contains("hex"));
    assert!(w.fake.received().is_empty());
    // Not a dead token APNs reported: nothing is recorded.
    assert!(!w.env.path().join("state/dead-tokens.jsonl").exists());
}

#[tokio::test]
async fn a_repeat_arriving_during_delivery_waits_and_is_not_sent_again() {
    let w = world("", "").await;
    w.fake.script(
        "1e01",
        vec![Behaviour::Delay(
            Duration::from_millis(800),
            Box::new(Behaviour::Ok),
        )],
    );
    let push = ios_push("1e01", "x", "conv-e", 7);
    let (first, second) = tokio::join!(w.push(&push), async {
        w.daemon.wait_in_flight(1).await;
        w.push(&push).await
    });
    let mut statuses = vec![
        first.json()["status"].clone(),
        second.json()["status"].clone(),
    ];
    statuses.sort_by_key(|v| v.to_string());
    assert_eq!(statuses, vec![json!("delivered"), json!("duplicate")]);
    assert_eq!(
        w.fake
            .received()
            .iter()
            .filter(|r| r.token == "1e01")
            .count(),
        1
    );
}

#[tokio::test]
async fn a_caller_that_gives_up_does_not_cause_a_second_delivery() {
    let w = world("", "").await;
    w.fake.script(
        "1f01",
        vec![Behaviour::Delay(
            Duration::from_millis(700),
            Box::new(Behaviour::Ok),
        )],
    );
    let push = ios_push("1f01", "x", "conv-f", 9);
    // The platform times out and drops its request while APNs is still answering.
    let gave_up = tokio::time::timeout(Duration::from_millis(200), w.push(&push)).await;
    assert!(gave_up.is_err());
    for _ in 0..200 {
        if !w.fake.delivered_to("1f01").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        w.fake.delivered_to("1f01").len(),
        1,
        "the push finished without its caller"
    );
    // Its re-send is recognised.
    let again = w.push(&push).await;
    assert_eq!(again.json()["status"], "duplicate", "{}", again.body);
    assert_eq!(w.fake.delivered_to("1f01").len(), 1);
}

#[tokio::test]
async fn every_refusal_is_json() {
    let w = world("", "").await;
    let client = w.env.client();
    let a = client.get(&w.daemon.url(&format!("/push/{APP}"))).await;
    assert_eq!(a.status, 405);
    assert!(a.json()["error"].as_str().unwrap().contains("method"));
    let a = client.get(&w.daemon.url("/elsewhere")).await;
    assert_eq!(a.status, 404);
    assert!(a.json()["error"].as_str().unwrap().contains("/push/"));
    let a = client
        .post_json(&w.daemon.url("/push/%FF%FE"), &[], &json!({}))
        .await;
    assert_eq!(a.status, 400);
    assert!(a.json()["error"].is_string());
}

/// An app and its `-Dev` build with one `.p8` share one connection to Apple and one provider
/// token (Apple expects one token per key, refreshed at most every 20 minutes); an app added
/// by a reload with the same key joins them.
#[tokio::test]
async fn apps_sharing_a_key_share_one_connection_and_one_provider_token() {
    let env = TestEnv::new();
    let (fake, key) = apns(APP).await;
    let app = |id: &str| {
        env.apns_app(id, &fake, &key, "", &env.basic_auth(), "connections = 1")
            .replace(&format!("topic = \"{id}\""), &format!("topic = \"{APP}\""))
    };
    let dev = format!("{APP}-Dev");
    let beta = format!("{APP}-Beta");
    let two = env.config(&format!("[push]\n{}{}", app(APP), app(&dev)));
    let mut daemon = Daemon::start(env.path(), &two).await;
    let push = |id: String, token: &'static str, seq: i64| {
        let env = &env;
        let daemon = &daemon;
        async move {
            env.client()
                .post_json(
                    &daemon.url(&format!("/push/{id}")),
                    &[("authorization", &platform_auth())],
                    &ios_push(token, "hi", "c", seq),
                )
                .await
                .status
        }
    };
    assert_eq!(push(APP.to_string(), "cc01", 1).await, 200);
    assert_eq!(push(dev.clone(), "cc02", 1).await, 200);
    assert_eq!(push(APP.to_string(), "cc03", 2).await, 200);
    daemon.rewrite_config(&env.config(&format!("[push]\n{}{}{}", app(APP), app(&dev), app(&beta))));
    daemon.reload().await;
    daemon.wait_log("configuration reloaded").await;
    let push = |id: String, token: &'static str, seq: i64| {
        let env = &env;
        let daemon = &daemon;
        async move {
            env.client()
                .post_json(
                    &daemon.url(&format!("/push/{id}")),
                    &[("authorization", &platform_auth())],
                    &ios_push(token, "hi", "c", seq),
                )
                .await
                .status
        }
    };
    assert_eq!(push(beta.clone(), "cc04", 1).await, 200);
    let bearers: Vec<http::HeaderValue> = ["cc01", "cc02", "cc03", "cc04"]
        .iter()
        .map(|t| fake.delivered_to(t)[0].headers["authorization"].clone())
        .collect();
    assert!(bearers.iter().all(|b| *b == bearers[0]), "{bearers:?}");
    assert_eq!(fake.listening.connection_count(), 1);
}
