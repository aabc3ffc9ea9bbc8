//! The push proxy towards FCM HTTP v1: service-account OAuth against the fake token endpoint,
//! what the send carries, how FCM's errors map back to the platform, and what the log must
//! never hold.

use serde_json::Value;

use crate::support::daemon::Daemon;
use crate::support::fake::Behaviour;
use crate::support::fake_fcm::{FakeFcm, fcm_error};
use crate::support::{TestEnv, android_push, ios_push, platform_auth};

const APP: &str = "com.brand.android";
const PROJECT: &str = "brand-app-12345";
const TOKEN: &str = "dXJnZW50OkFQQTkxYkhQUm9vdF9Ub2tlbl9Gb3JfVGVzdHNfT25seQ";

struct World {
    env: TestEnv,
    fake: FakeFcm,
    daemon: Daemon,
}

async fn world(app_extra: &str) -> World {
    let env = TestEnv::new();
    let fake = FakeFcm::start(PROJECT).await;
    let config = env.config(&env.fcm_app(APP, &fake, app_extra, &env.basic_auth()));
    let daemon = Daemon::start(env.path(), &config).await;
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
async fn android_push_reaches_fcm_as_a_data_message() {
    let w = world("").await;
    let answer = w
        .push(&android_push(TOKEN, "Hello from agent", "conv-1", 6))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        answer.json()["id"]
            .as_str()
            .unwrap()
            .starts_with(&format!("projects/{PROJECT}/messages/"))
    );
    let got = w.fake.delivered_to(TOKEN);
    assert_eq!(got.len(), 1);
    let m = &got[0].message;
    assert_eq!(m["data"]["message"], "Hello from agent");
    let payload: Value = serde_json::from_str(m["data"]["payload"].as_str().unwrap()).unwrap();
    assert_eq!(payload["conversationId"], "conv-1");
    assert_eq!(payload["badge"], 4);
    assert_eq!(payload["sequence"], 6);
    assert_eq!(m["android"]["priority"], "high");
    assert_eq!(m["android"]["collapse_key"], "conv-1");
}

#[tokio::test]
async fn masked_text_never_reaches_fcm() {
    let w = world("mask_text = \"New message\"").await;
    assert_eq!(
        w.push(&android_push(TOKEN, "PIN 493817", "c", 1))
            .await
            .status,
        200
    );
    let m = &w.fake.delivered_to(TOKEN)[0].message;
    assert_eq!(m["data"]["message"], "New message");
    assert!(!m.to_string().contains("493817"));
}

#[tokio::test]
async fn the_access_token_is_fetched_once_and_reused() {
    let w = world("").await;
    for i in 0..5 {
        assert_eq!(w.push(&android_push(TOKEN, "x", "c", i)).await.status, 200);
    }
    assert_eq!(w.fake.token_calls(), 1);
    // FCM stops accepting the token (revoked, expired early): brandgate fetches a new one and
    // the push still goes out.
    w.fake.revoke_tokens();
    assert_eq!(w.push(&android_push(TOKEN, "x", "c", 99)).await.status, 200);
    assert_eq!(w.fake.token_calls(), 2);
}

#[tokio::test]
async fn fcm_errors_map_to_platform_statuses() {
    let w = world("").await;
    let cases: Vec<(&str, Behaviour, u16)> = vec![
        (
            "t-unregistered",
            fcm_error(404, "UNREGISTERED", "Requested entity was not found."),
            403,
        ),
        (
            "t-invalid",
            fcm_error(
                400,
                "INVALID_ARGUMENT",
                "The registration token is not a valid FCM registration token",
            ),
            403,
        ),
        (
            "t-sender",
            fcm_error(403, "SENDER_ID_MISMATCH", "SenderId mismatch"),
            403,
        ),
        (
            "t-badmsg",
            fcm_error(
                400,
                "INVALID_ARGUMENT",
                "Request contains an invalid argument.",
            ),
            500,
        ),
        (
            "t-apnsauth",
            fcm_error(
                401,
                "THIRD_PARTY_AUTH_ERROR",
                "Auth error from APNS or Web Push Service",
            ),
            500,
        ),
    ];
    for (token, b, _) in &cases {
        w.fake.script(token, vec![b.clone()]);
    }
    for (i, (token, _, status)) in cases.iter().enumerate() {
        let answer = w.push(&android_push(token, "x", "c", i as i64)).await;
        assert_eq!(answer.status, *status, "{token}: {}", answer.body);
        assert_eq!(
            w.fake
                .received()
                .iter()
                .filter(|r| r.token == *token)
                .count(),
            1,
            "{token} retried"
        );
    }
    // Quota and outages are retried; Retry-After is honoured.
    w.fake.script(
        "t-quota",
        vec![
            Behaviour::Status {
                status: 429,
                body: serde_json::json!({"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "quota",
                    "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": "QUOTA_EXCEEDED"}]}}),
                retry_after: Some(1),
            },
            fcm_error(503, "UNAVAILABLE", "later"),
            Behaviour::Ok,
        ],
    );
    assert_eq!(
        w.push(&android_push("t-quota", "x", "c", 50)).await.status,
        200
    );
    let calls: Vec<u16> = w
        .fake
        .received()
        .iter()
        .filter(|r| r.token == "t-quota")
        .map(|r| r.answered)
        .collect();
    assert_eq!(calls, vec![429, 503, 200]);
}

#[tokio::test]
async fn a_refused_service_account_fails_without_hammering_the_token_endpoint() {
    let w = world("").await;
    w.fake.script_token_endpoint(vec![Behaviour::Status {
        status: 400,
        body: serde_json::json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}),
        retry_after: None,
    }]);
    for i in 0..3 {
        let answer = w.push(&android_push(TOKEN, "x", "c", i)).await;
        assert_eq!(answer.status, 500, "{}", answer.body);
        assert_eq!(answer.json()["reason"], "oauth_refused");
    }
    assert_eq!(
        w.fake.token_calls(),
        1,
        "a refused credential is neither retried nor asked again at once"
    );
    assert!(w.fake.received().is_empty());
}

#[tokio::test]
async fn an_ios_shaped_request_for_fcm_is_delivered_with_its_text() {
    let w = world("").await;
    let mut body = ios_push(TOKEN, "iOS-shaped text", "conv-3", 2);
    body["push-service"] = 2.into();
    body["notificationType"] = "gcm".into();
    assert_eq!(w.push(&body).await.status, 200);
    let m = &w.fake.delivered_to(TOKEN)[0].message;
    assert_eq!(m["data"]["message"], "iOS-shaped text");
}

#[tokio::test]
async fn an_access_token_is_replaced_before_it_expires() {
    let w = world("").await;
    // Tokens that expire within brandgate's early-refresh margin (5 minutes) are never reused.
    w.fake.set_token_lifetime(300);
    for i in 0..3 {
        assert_eq!(w.push(&android_push(TOKEN, "x", "c", i)).await.status, 200);
    }
    assert_eq!(w.fake.token_calls(), 3);
    // A normal lifetime is reused.
    w.fake.set_token_lifetime(3599);
    for i in 3..6 {
        assert_eq!(w.push(&android_push(TOKEN, "x", "c", i)).await.status, 200);
    }
    assert_eq!(w.fake.token_calls(), 4);
}

#[tokio::test]
async fn a_dropped_fcm_connection_is_retried() {
    let w = world("").await;
    w.fake
        .script("t-reset", vec![Behaviour::Reset, Behaviour::Ok]);
    let answer = w.push(&android_push("t-reset", "x", "c", 1)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(w.fake.delivered_to("t-reset").len(), 1);
}

/// The FCM side of the log rules: at debug level, across deliveries, a dead token, a refused
/// push, a revoked access token and a failed caller, the log never holds the message text, a
/// full registration token, an access token, the signed OAuth assertion or the service
/// account's private key.
#[tokio::test]
async fn logs_never_hold_fcm_text_tokens_or_secrets() {
    let mut w = world("").await;
    let text = "The-Real-Android-Text-4711";
    let dead = "dGhpcy1yZWdpc3RyYXRpb24tdG9rZW4taXMtZGVhZA";
    let refused = "cmVmdXNlZC1yZWdpc3RyYXRpb24tdG9rZW4tMDAx";
    w.fake.script(
        dead,
        vec![fcm_error(
            404,
            "UNREGISTERED",
            "Requested entity was not found.",
        )],
    );
    w.fake.script(
        refused,
        vec![fcm_error(
            401,
            "THIRD_PARTY_AUTH_ERROR",
            "Auth error from APNS or Web Push Service",
        )],
    );
    assert_eq!(w.push(&android_push(TOKEN, text, "c", 1)).await.status, 200);
    assert_eq!(w.push(&android_push(dead, text, "c", 2)).await.status, 403);
    assert_eq!(
        w.push(&android_push(refused, text, "c", 3)).await.status,
        500
    );
    // FCM stops accepting the access token: brandgate fetches another (and logs why).
    w.fake.revoke_tokens();
    assert_eq!(w.push(&android_push(TOKEN, text, "c", 4)).await.status, 200);
    let wrong = crate::support::client::basic(crate::support::PLATFORM_USER, "n0pe-n0pe");
    let a = w
        .env
        .client()
        .post_json(
            &w.daemon.url(&format!("/push/{APP}")),
            &[("authorization", &wrong)],
            &android_push(TOKEN, text, "c", 5),
        )
        .await;
    assert_eq!(a.status, 401);
    let logs = w.daemon.stop().await;

    let access_tokens = w.fake.issued_tokens();
    assert_eq!(
        access_tokens.len(),
        2,
        "a token before and after the revocation"
    );
    let assertions = w.fake.assertions();
    let account: Value = serde_json::from_str(&w.fake.account.json).unwrap();
    let private_key = account["private_key"].as_str().unwrap();
    let mut secrets: Vec<&str> = vec![
        text,
        TOKEN,
        dead,
        refused,
        crate::support::PLATFORM_PASSWORD,
        "n0pe-n0pe",
        wrong.trim_start_matches("Basic "),
    ];
    secrets.extend(access_tokens.iter().map(String::as_str));
    secrets.extend(assertions.iter().map(String::as_str));
    // Every line of the key's base64, not only the first.
    secrets.extend(
        private_key
            .lines()
            .filter(|l| !l.starts_with("-----") && l.len() > 16),
    );
    for secret in secrets {
        assert!(!logs.contains(secret), "the log holds {secret:?}:\n{logs}");
    }
    // What the log does say: the shortened token and FCM's reason.
    assert!(
        logs.contains(&format!("{}…#", &dead[..8])) && logs.contains("UNREGISTERED"),
        "{logs}"
    );
    assert!(logs.lines().all(|l| !l.is_empty()), "one event per line");
}

/// Two Android apps of one Firebase project (one service account) share one connection pool
/// to FCM and one OAuth access token: one token call between them.
#[tokio::test]
async fn apps_of_one_service_account_share_one_connection_and_one_access_token() {
    let env = TestEnv::new();
    let fake = FakeFcm::start(PROJECT).await;
    let other = format!("{APP}.beta");
    let config = env.config(&format!(
        "[push]\n{}{}",
        env.fcm_app(APP, &fake, "", &env.basic_auth()).replace(
            "extra_trust_anchors",
            "connections = 1\nextra_trust_anchors"
        ),
        env.fcm_app(&other, &fake, "", &env.basic_auth()).replace(
            "extra_trust_anchors",
            "connections = 1\nextra_trust_anchors"
        ),
    ));
    let daemon = Daemon::start(env.path(), &config).await;
    for (i, app) in [APP, other.as_str(), APP, other.as_str()]
        .iter()
        .enumerate()
    {
        let token = format!("{TOKEN}{i}");
        let answer = env
            .client()
            .post_json(
                &daemon.url(&format!("/push/{app}")),
                &[("authorization", &platform_auth())],
                &android_push(&token, "hi", "c", 1),
            )
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(fake.delivered_to(&token).len(), 1);
    }
    assert_eq!(fake.token_calls(), 1);
    // One connection for the sends and one for the token call (the fake serves both); each app
    // on its own would open two more.
    assert_eq!(fake.listening.connection_count(), 2);
}
