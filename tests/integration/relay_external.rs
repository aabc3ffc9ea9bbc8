//! Consumer tokens from an external issuer (`[[identity.external_issuers]]`): the test OpenID
//! provider signs them and publishes its JWKS over HTTPS with the test CA; the relay checks them
//! on the WebSocket upgrade.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde_json::{Value, json};

use crate::support::TestEnv;
use crate::support::idp::Idp;
use crate::support::messaging::{MessagingClient, Side};
use crate::support::relay_world::{self, PLATFORM_PATH, Relay};

const AUDIENCE: &str = "brand-chat";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A relay accepting tokens of `issuer` (JWKS at `<issuer>/jwks`) as external issuer "shop".
async fn relay_trusting(env: TestEnv, issuer: &str) -> Relay {
    let config = config_trusting(&env, issuer, &[AUDIENCE, "other-app"]);
    Relay::start_on(env, &config).await
}

/// The relay's config with external issuer "shop" at `issuer`, for `audiences`.
fn config_trusting(env: &TestEnv, issuer: &str, audiences: &[&str]) -> String {
    let ca = env.ca.write(env.path(), "idp-ca");
    relay_world::config(
        env,
        "1h",
        "",
        "requests_per_second = 100000\nauth_timeout = \"1s\"",
    ) + &format!(
        r#"
[[identity.external_issuers]]
id = "shop"
issuer = "{issuer}"
jwks_url = "{issuer}/jwks"
audiences = {audiences}
extra_trust_anchors = ["{ca}"]
jwks_min_refetch = "1s"
"#,
        audiences = json!(audiences),
        ca = ca.display(),
    )
}

/// The upgrade with `token`: the socket, or the status it was refused with.
async fn upgrade(relay: &Relay, token: &str) -> Result<MessagingClient, u16> {
    refusal(relay, token).await.map_err(|(status, _)| status)
}

/// The upgrade with `token`: the socket, or the status and body it was refused with.
async fn refusal(relay: &Relay, token: &str) -> Result<MessagingClient, (u16, String)> {
    MessagingClient::connect(
        &relay.env.ca.cert_pem,
        relay.daemon.public,
        PLATFORM_PATH,
        Some(&format!("jwt {token}")),
        Side::Consumer,
    )
    .await
    .map_err(|r| (r.status, r.body))
}

/// Asserts `token` is refused with 401 because of `reason`.
async fn assert_refused(relay: &Relay, token: &str, reason: &str) {
    match refusal(relay, token).await {
        Ok(_) => panic!("accepted; expected a refusal for {reason}"),
        Err((status, body)) => {
            assert_eq!(status, 401, "{reason}: {body}");
            assert!(body.contains(reason), "expected {reason:?}: {body}");
        }
    }
}

/// Upgrades with `token` until it is accepted (a JWKS refetch is rate limited), for at most
/// 15 s; panics with the last status otherwise.
async fn upgrade_soon(relay: &Relay, token: &str) -> MessagingClient {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        match upgrade(relay, token).await {
            Ok(c) => return c,
            Err(status) if tokio::time::Instant::now() >= deadline => {
                panic!("still refused with {status}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

fn claims(sub: &str) -> Value {
    json!({"sub": sub, "aud": AUDIENCE, "exp": now() + 600})
}

async fn open_conversation(c: &mut MessagingClient) -> String {
    let r = c.request("cm.ConsumerRequestConversation", json!({})).await;
    assert_eq!(r["code"], 200, "{r}");
    r["body"]["conversationId"].as_str().unwrap().to_string()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A token with any header and claims and a made-up signature.
fn unsigned(header: Value, claims: Value) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes()),
        b64(&[7u8; 256])
    )
}

#[tokio::test]
async fn an_external_consumer_converses_apart_from_brandgates_own() {
    let env = TestEnv::new();
    let idp = Idp::start(&env, vec![], json!({})).await;
    let relay = relay_trusting(env, &idp.issuer).await;

    let token = idp.sign(claims("alice"), "provider").await;
    let mut external = upgrade(&relay, &token).await.expect("accepted");
    let conv = open_conversation(&mut external).await;
    // A token for another accepted audience is the same consumer: the same conversation.
    let other_app = idp
        .sign(
            json!({"sub": "alice", "aud": "other-app", "exp": now() + 600}),
            "provider",
        )
        .await;
    let mut again = upgrade(&relay, &other_app).await.expect("accepted");
    assert_eq!(open_conversation(&mut again).await, conv);

    // brandgate's own consumer "alice" is someone else: its own conversation, and none of the
    // external one's.
    let own = relay.token_for("alice").await;
    let mut own = upgrade(&relay, &own).await.expect("accepted");
    assert_ne!(open_conversation(&mut own).await, conv);
    let r = own
        .request(
            "ms.SubscribeMessagingEvents",
            json!({"dialogId": conv, "fromSeq": 0}),
        )
        .await;
    assert_eq!(r["code"], 404, "{r}");
    // Nor can brandgate's own tokens name the external consumer.
    let impostor = relay.token_for("shop:alice").await;
    assert_refused(&relay, &impostor, "subject").await;
    idp.stop().await;
}

#[tokio::test]
async fn external_tokens_failing_a_check_are_refused() {
    let env = TestEnv::new();
    let idp = Idp::start(&env, vec![], json!({})).await;
    let mut relay = relay_trusting(env, &idp.issuer).await;
    let good = idp.sign(claims("bob"), "provider").await;
    upgrade(&relay, &good).await.expect("accepted");

    let t = now();
    // (what, claims, signing key, the reason the refusal names)
    let refused = [
        (
            "audience",
            json!({"sub": "bob", "aud": "someone-else", "exp": t + 600}),
            "provider",
        ),
        (
            "expired",
            json!({"sub": "bob", "aud": AUDIENCE, "iat": t - 7200, "exp": t - 3600}),
            "provider",
        ),
        (
            "not valid yet",
            json!({"sub": "bob", "aud": AUDIENCE, "iat": t + 3600, "exp": t + 7200}),
            "provider",
        ),
        (
            "lifetime",
            json!({"sub": "bob", "aud": AUDIENCE, "exp": t + 2 * 86_400}),
            "provider",
        ),
        (
            "issued at",
            json!({"sub": "bob", "aud": AUDIENCE, "iat": null, "exp": t + 600}),
            "provider",
        ),
        (
            "subject",
            json!({"sub": "", "aud": AUDIENCE, "exp": t + 600}),
            "provider",
        ),
        (
            "does not publish",
            json!({"sub": "bob", "aud": AUDIENCE, "exp": t + 600}),
            "unknown",
        ),
        (
            "does not publish",
            json!({"iss": "https://elsewhere.example", "sub": "bob", "aud": AUDIENCE, "exp": t + 600}),
            "provider",
        ),
    ];
    for (reason, claims, key) in refused {
        let token = idp.sign(claims, key).await;
        assert_refused(&relay, &token, reason).await;
    }

    // The signature altered (a byte in its middle).
    let mut parts: Vec<String> = good.split('.').map(String::from).collect();
    let mut signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(&parts[2])
        .unwrap();
    signature[100] ^= 1;
    parts[2] = b64(&signature);
    assert_refused(&relay, &parts.join("."), "signature").await;

    // Algorithms the issuer is not allowed: HMAC (a "signature" anyone holding the public key
    // could make) and none, with the provider's own kid.
    let kid = jsonwebtoken::decode_header(&good).unwrap().kid.unwrap();
    let claims =
        json!({"iss": idp.issuer, "sub": "bob", "aud": AUDIENCE, "iat": t, "exp": t + 600});
    // ES256 is allowed, but not the key's own algorithm.
    for (alg, reason) in [
        ("HS256", "algorithm"),
        ("none", "not a token"),
        ("ES256", "algorithm"),
    ] {
        let token = unsigned(
            json!({"alg": alg, "kid": kid, "typ": "JWT"}),
            claims.clone(),
        );
        assert_refused(&relay, &token, reason).await;
    }
    // The good token still passes: nothing above poisoned the cached keys.
    upgrade(&relay, &good).await.expect("accepted");
    idp.stop().await;
    // Refusals are logged by reason, never with the token or its claims (read once stopped,
    // so every line is in).
    let logs = relay.daemon.stop().await;
    assert!(logs.contains("refused"), "{logs}");
    assert!(!logs.contains(good.split('.').nth(1).unwrap()));
    assert!(!logs.contains("someone-else"));
}

#[tokio::test]
async fn a_reload_applies_changed_external_issuers() {
    let env = TestEnv::new();
    let idp = Idp::start(&env, vec![], json!({})).await;
    let mut relay = relay_trusting(env, &idp.issuer).await;
    let late = idp
        .sign(
            json!({"sub": "erin", "aud": "late-app", "iat": now(), "exp": now() + 600}),
            "provider",
        )
        .await;
    assert_refused(&relay, &late, "audience").await;

    let config = config_trusting(&relay.env, &idp.issuer, &[AUDIENCE, "late-app"]);
    relay.daemon.rewrite_config(&config);
    relay.daemon.reload().await;
    let mut c = upgrade(&relay, &late)
        .await
        .expect("accepted after the reload");
    open_conversation(&mut c).await;
    idp.stop().await;
}

#[tokio::test]
async fn a_rotated_key_is_fetched_when_a_token_names_it() {
    let env = TestEnv::new();
    let idp = Idp::start(&env, vec![], json!({})).await;
    let relay = relay_trusting(env, &idp.issuer).await;
    let before = idp.sign(claims("carol"), "provider").await;
    upgrade(&relay, &before).await.expect("accepted");

    idp.admin("rotate", json!({})).await;
    let rotated = idp.sign(claims("carol"), "rotated").await;
    let mut c = upgrade_soon(&relay, &rotated).await;
    open_conversation(&mut c).await;

    // The provider goes away: a token naming a key not seen yet makes the relay try the JWKS
    // again, which fails; that token is refused (401, not 503) and the keys already read keep
    // working.
    let unpublished = idp.sign(claims("carol"), "unknown").await;
    idp.stop().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while jwks_fetches(&relay, "failed").await == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no failed fetch");
        assert_refused(&relay, &unpublished, "does not publish").await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(jwks_fetches(&relay, "ok").await >= 2);
    upgrade(&relay, &before).await.expect("cached key");
    upgrade(&relay, &rotated).await.expect("cached key");
}

/// `brandgate_identity_external_jwks_fetches_total{outcome}` from `/metrics`.
async fn jwks_fetches(relay: &Relay, outcome: &str) -> u64 {
    let needle =
        format!("brandgate_identity_external_jwks_fetches_total{{outcome=\"{outcome}\"}} ");
    let body = crate::support::client::Client::http1("")
        .get(&relay.daemon.ops_url("/metrics"))
        .await
        .body;
    body.lines()
        .find_map(|l| l.strip_prefix(&needle))
        .map_or(0, |n| n.trim().parse().unwrap())
}

#[tokio::test]
async fn an_unreachable_jwks_is_503_until_it_can_be_read() {
    let env = TestEnv::new();
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let issuer = format!("https://127.0.0.1:{port}");
    // The provider is not running yet.
    let relay = relay_trusting(env, &issuer).await;

    let t = now();
    let token = unsigned(
        json!({"alg": "RS256", "kid": "provider-x", "typ": "JWT"}),
        json!({"iss": issuer, "sub": "dave", "aud": AUDIENCE, "iat": t, "exp": t + 600}),
    );
    assert_eq!(upgrade(&relay, &token).await.err(), Some(503));

    let idp = Idp::start_on(&relay.env, vec![], json!({}), port).await;
    assert_eq!(idp.issuer, issuer);
    let token = idp.sign(claims("dave"), "provider").await;
    let mut c = upgrade_soon(&relay, &token).await;
    open_conversation(&mut c).await;
    idp.stop().await;
}

/// The external issuer's JWKS is fetched through `[identity.egress]`'s proxy (a real
/// tinyproxy): its only tunnel is to the provider, and the token is accepted.
#[tokio::test]
async fn the_jwks_is_fetched_through_the_identity_roles_proxy() {
    use crate::support::proxy::{Proxy, ProxyRules, authority};
    let env = TestEnv::new();
    let idp = Idp::start(&env, vec![], json!({})).await;
    let mut proxy = Proxy::start(env.path(), ProxyRules::default()).await;
    let config = config_trusting(&env, &idp.issuer, &[AUDIENCE])
        + &format!("[identity.egress]\nproxy = \"{}\"\n", proxy.url());
    let relay = Relay::start_on(env, &config).await;
    let token = idp.sign(claims("bob"), "provider").await;
    upgrade(&relay, &token).await.expect("accepted");
    let provider_at = authority(&idp.issuer);
    let mut tunnels = proxy.stop_and_tunnels().await;
    tunnels.dedup();
    assert_eq!(tunnels, [provider_at]);
    idp.stop().await;
}
