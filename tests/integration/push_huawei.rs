//! The push proxy towards Huawei Push Kit (v1) for phones without Google services: the OAuth
//! client-credentials token against the fake token endpoint (once, refreshed when Huawei says
//! it is stale), what the send carries, how Huawei's result codes map back to the platform,
//! the guard against a misconfigured app turning every token dead, and what the log never holds.

use serde_json::{Value, json};

use crate::support::daemon::Daemon;
use crate::support::fake::Behaviour;
use crate::support::fake_huawei::{FakeHuawei, HUAWEI_SECRET, huawei_result};
use crate::support::{TestEnv, huawei_push, platform_auth};

const APP: &str = "com.brand.huawei";
const TOKEN: &str = "IQAAAACy0kYqAADnTHd3hHs3oDz8-cl2qtDpS1Ls5y9mIFYnu_z2Yw";

struct World {
    env: TestEnv,
    fake: FakeHuawei,
    daemon: Daemon,
}

async fn world(app_extra: &str, huawei_extra: &str) -> World {
    let env = TestEnv::new();
    let fake = FakeHuawei::start().await;
    let app = env.huawei_app(APP, &fake, app_extra, &env.basic_auth(), huawei_extra);
    let daemon = Daemon::start(env.path(), &env.config(&app)).await;
    World { env, fake, daemon }
}

impl World {
    async fn push(&self, body: &Value) -> crate::support::client::Answer {
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
async fn a_huawei_push_reaches_push_kit_as_a_data_message() {
    let w = world("", "category = \"IM\"\nurgency = \"NORMAL\"\nttl = \"1h\"").await;
    let answer = w
        .push(&huawei_push(TOKEN, "Hello from agent", "conv-1", 6))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let got = w.fake.delivered_to(TOKEN);
    assert_eq!(got.len(), 1);
    let m = &got[0].message;
    assert_eq!(m["token"], json!([TOKEN]));
    // Huawei's `data` is one JSON string, holding what the platform's SDK reads.
    let data: Value = serde_json::from_str(m["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["message"], "Hello from agent");
    let payload: Value = serde_json::from_str(data["payload"].as_str().unwrap()).unwrap();
    assert_eq!(payload["conversationId"], "conv-1");
    assert_eq!(payload["sequence"], 6);
    assert_eq!(
        m["android"],
        json!({"urgency": "NORMAL", "ttl": "3600s", "category": "IM"})
    );
    // A repeat of the delivered push is not sent again.
    let again = w
        .push(&huawei_push(TOKEN, "Hello from agent", "conv-1", 6))
        .await;
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(w.fake.received().len(), 1);
}

#[tokio::test]
async fn masked_and_long_texts_are_sent_as_the_brand_wants() {
    let w = world("mask_text = \"New message\"", "").await;
    assert_eq!(
        w.push(&huawei_push(TOKEN, "PIN 493817", "c", 1))
            .await
            .status,
        200
    );
    let m = &w.fake.delivered_to(TOKEN)[0].message;
    assert!(!m.to_string().contains("493817"));
    let data: Value = serde_json::from_str(m["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["message"], "New message");

    // Unmasked, a text too long for Huawei's 4096-byte message is shortened, not refused.
    let w = world("", "").await;
    let long = "word ".repeat(2000);
    let answer = w.push(&huawei_push(TOKEN, &long, "c", 1)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let m = &w.fake.delivered_to(TOKEN)[0].message;
    assert!(m.to_string().len() <= 4096);
    let data: Value = serde_json::from_str(m["data"].as_str().unwrap()).unwrap();
    let sent = data["message"].as_str().unwrap();
    assert!(
        sent.len() > 2000 && long.starts_with(sent.trim_end_matches('…')),
        "{sent}"
    );
}

#[tokio::test]
async fn the_access_token_is_fetched_once_and_replaced_when_huawei_says_it_is_stale() {
    let w = world("", "").await;
    let bodies: Vec<Value> = (0..20).map(|i| huawei_push(TOKEN, "x", "c", i)).collect();
    let pushes = bodies.iter().map(|b| w.push(b));
    for answer in futures_util::future::join_all(pushes).await {
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    assert_eq!(
        w.fake.token_calls(),
        1,
        "one token for twenty pushes at once"
    );
    // Huawei drops the token (80200003): one new token, the push retried at once.
    w.fake.revoke_tokens();
    assert_eq!(w.push(&huawei_push(TOKEN, "x", "c", 99)).await.status, 200);
    assert_eq!(w.fake.token_calls(), 2);
    assert_eq!(w.fake.delivered_to(TOKEN).len(), 21);
}

#[tokio::test]
async fn huawei_results_map_to_platform_statuses() {
    let w = world("", "").await;
    let illegal = |t: &str| {
        let msg = json!({"success": 0, "failure": 1, "illegal_tokens": [t]}).to_string();
        huawei_result(200, "80100000", &msg)
    };
    let cases: Vec<(&str, Behaviour, u16)> = vec![
        ("t-partial", illegal("t-partial"), 403),
        ("t-partial-other", illegal("someone-else"), 200),
        (
            "t-invalid",
            huawei_result(400, "80300007", "All the tokens are invalid"),
            403,
        ),
        (
            "t-permission",
            huawei_result(403, "80300002", "No permission"),
            500,
        ),
        (
            "t-structure",
            huawei_result(400, "80100003", "Incorrect message structure"),
            500,
        ),
        (
            "t-toolarge",
            huawei_result(400, "80300008", "The message body size exceeds"),
            500,
        ),
    ];
    for (token, b, _) in &cases {
        w.fake.script(token, vec![b.clone()]);
    }
    for (i, (token, _, status)) in cases.iter().enumerate() {
        let answer = w.push(&huawei_push(token, "x", "c", i as i64)).await;
        assert_eq!(answer.status, *status, "{token}: {}", answer.body);
        let sent = w
            .fake
            .received()
            .iter()
            .filter(|r| r.token == *token)
            .count();
        assert_eq!(sent, 1, "{token} retried");
    }
    // Huawei's trouble and its flow control are retried.
    w.fake.script(
        "t-busy",
        vec![
            huawei_result(500, "81000001", "System inner error"),
            Behaviour::Status {
                status: 503,
                body: json!({}),
                retry_after: Some(1),
            },
            Behaviour::Ok,
        ],
    );
    assert_eq!(
        w.push(&huawei_push("t-busy", "x", "c", 50)).await.status,
        200
    );
    let calls: Vec<String> = w
        .fake
        .received()
        .iter()
        .filter(|r| r.token == "t-busy")
        .map(|r| r.answered.clone())
        .collect();
    assert_eq!(calls, ["81000001", "", "80000000"]);
}

#[tokio::test]
async fn a_misconfigured_app_does_not_turn_every_token_dead() {
    let w = world("", "").await;
    let all_invalid = huawei_result(400, "80300007", "All the tokens are invalid");
    let mut statuses = Vec::new();
    for i in 0..22 {
        let token = format!("t-{i}");
        w.fake.script(&token, vec![all_invalid.clone()]);
        let answer = w.push(&huawei_push(&token, "x", "c", i)).await;
        statuses.push((
            answer.status,
            answer.json()["reason"].as_str().unwrap_or("").to_string(),
        ));
    }
    // Nineteen are believed; from the twentieth on, with no delivery between, the app's own
    // credentials are suspected: refused (500), no token recorded dead, the app degraded.
    let dead = ("403".to_string(), "80300007".to_string());
    let suspect = ("500".to_string(), "all_tokens_invalid_suspect".to_string());
    let shown: Vec<(String, String)> = statuses
        .iter()
        .map(|(s, r)| (s.to_string(), r.clone()))
        .collect();
    let mut expected = vec![dead; 19];
    expected.extend(vec![suspect; 3]);
    assert_eq!(shown, expected);
    let ready = w.env.client().get(&w.daemon.ops_url("/readyz")).await;
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(
        ready.json()["checks"]["push"]["degraded"][format!("{APP}/huawei")],
        "all_tokens_invalid_suspect"
    );
    // One delivery clears it.
    assert_eq!(w.push(&huawei_push(TOKEN, "x", "c", 100)).await.status, 200);
    let ready = w.env.client().get(&w.daemon.ops_url("/readyz")).await;
    assert_eq!(ready.json()["checks"]["push"]["degraded"], json!({}));
    w.fake.script("t-after", vec![all_invalid]);
    assert_eq!(
        w.push(&huawei_push("t-after", "x", "c", 101)).await.status,
        403
    );
}

#[tokio::test]
async fn a_refused_secret_fails_without_hammering_the_token_endpoint_and_is_never_logged() {
    let mut w = world("", "").await;
    assert_eq!(w.push(&huawei_push(TOKEN, "x", "c", 1)).await.status, 200);
    let issued = w.fake.issued_tokens();
    w.fake.revoke_tokens();
    w.fake.script_token_endpoint(vec![Behaviour::Status {
        status: 400,
        body: json!({"error": 1101, "sub_error": 20152, "error_description": "invalid client"}),
        retry_after: None,
    }]);
    for i in 2..5 {
        let answer = w.push(&huawei_push(TOKEN, "x", "c", i)).await;
        assert_eq!(answer.status, 500, "{}", answer.body);
        assert_eq!(answer.json()["reason"], "oauth_refused");
    }
    assert_eq!(
        w.fake.token_calls(),
        2,
        "a refused secret is not asked about again at once"
    );
    let logs = w.daemon.stop().await;
    for secret in issued
        .iter()
        .map(String::as_str)
        .chain([HUAWEI_SECRET, TOKEN])
    {
        assert!(!logs.contains(secret), "the log holds {secret:?}:\n{logs}");
    }
}

#[tokio::test]
async fn collapse_key_is_sent_as_configured_and_checked_against_huaweis_range() {
    let w = world("", "collapse_key = -1").await;
    let answer = w.push(&huawei_push(TOKEN, "Hello", "conv-1", 1)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let got = w.fake.delivered_to(TOKEN);
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].message["android"],
        json!({"urgency": "HIGH", "ttl": "86400s", "collapse_key": -1})
    );

    // Beyond Huawei's groups: refused by name before the daemon would start.
    let env = TestEnv::new();
    let app = env.huawei_app(APP, &w.fake, "", &env.basic_auth(), "collapse_key = 101");
    let path = env.path().join("brandgate.toml");
    std::fs::write(&path, env.config(&app)).unwrap();
    let (code, _, err) =
        crate::support::daemon::run(&["check-config", "--config", path.to_str().unwrap()], &[])
            .await;
    assert_eq!(code, 78, "{err}");
    assert!(
        err.lines()
            .any(|l| l.contains("huawei.collapse_key:") && l.contains("a group from 1 to 100")),
        "{err}"
    );
}
