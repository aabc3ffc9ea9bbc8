//! `POST /identity/v1/token`: the brand's own systems ask for consumer tokens, presenting a
//! consumer's ID token from the real provider (signed by it through its test admin API) or,
//! when trusted, a subject and claims. What brandgate answers is verified by node's jose.

use serde_json::{Value, json};

use crate::support::TestEnv;
use crate::support::client::{Answer, Client, basic};
use crate::support::identity_world::World;
use crate::support::idp::UPSTREAM_CLIENT;
use crate::support::pki::TestCa;

const BACKEND_SECRET: &str = "backend-s3cret";

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// brandgate with two backends: `login` (secret, untrusted) and `crm` (client certificate,
/// trusted), and `brand-web` accepted as another audience.
async fn world() -> (World, TestCa) {
    let env = TestEnv::new();
    let client_ca = TestCa::new("backend client CA");
    let ca = client_ca.write(env.path(), "backend-ca");
    let secret = env.secret("backend-secret", &format!("{BACKEND_SECRET}\n"));
    let backends = format!(
        r#"
[[identity.backends]]
id = "login"
secret_file = "{secret}"
accepted_audiences = ["brand-web"]
[[identity.backends]]
id = "crm"
client_cert_names = ["crm.brand.example"]
trusted = true
"#,
        secret = secret.display()
    );
    let w = World::start_in(
        env,
        &format!("client_ca = \"{}\"", ca.display()),
        "",
        "",
        &backends,
    )
    .await;
    (w, client_ca)
}

async fn ask(w: &World, client: &Client, auth: Option<&str>, body: &Value) -> Answer {
    let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
    client
        .post_json(&w.daemon.url("/identity/v1/token"), &headers, body)
        .await
}

async fn id_token(w: &World, claims: Value, key: &str) -> String {
    let mut all = json!({"sub": "alice", "aud": UPSTREAM_CLIENT, "exp": now() + 300,
        "email": "alice@example.test", "customer_tier": "silver"});
    for (k, v) in claims.as_object().unwrap() {
        all[k] = v.clone();
    }
    w.idp.sign(all, key).await
}

#[tokio::test]
async fn a_backend_exchanges_a_consumers_id_token() {
    let (w, _) = world().await;
    let client = w.env.client();
    let auth = basic("login", BACKEND_SECRET);
    let token = id_token(&w, json!({}), "provider").await;
    let answer = ask(&w, &client, Some(&auth), &json!({"id_token": token})).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.headers["cache-control"], "no-store");
    let body = answer.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 600);
    let claims = w.verify(body["jwt"].as_str().unwrap()).await.unwrap();
    assert_eq!(claims["payload"]["sub"], "alice");
    assert_eq!(claims["payload"]["email"], "alice@example.test");
    assert_eq!(claims["payload"]["lp_sdes"][0]["info"]["ctype"], "silver");

    // Another audience the config accepts.
    let other = id_token(&w, json!({"aud": "brand-web"}), "provider").await;
    let answer = ask(&w, &client, Some(&auth), &json!({"id_token": other})).await;
    assert_eq!(answer.status, 200, "{}", answer.body);

    let metrics = client.get(&w.daemon.ops_url("/metrics")).await.body;
    assert!(
        metrics.contains("brandgate_identity_tokens_total{flow=\"backend\",outcome=\"issued\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn presented_id_tokens_are_checked() {
    let (w, _) = world().await;
    let client = w.env.client();
    let auth = basic("login", BACKEND_SECRET);
    let cases = [
        (json!({"exp": now() - 120}), "provider", "expired"),
        (json!({"aud": "someone-else"}), "provider", "audience"),
        (
            json!({"iss": "https://other-idp.example"}),
            "provider",
            "issuer",
        ),
        (json!({}), "unknown", "key the provider does not publish"),
        (json!({"iat": now() + 3600}), "provider", "future"),
    ];
    for (claims, key, why) in cases {
        let token = id_token(&w, claims.clone(), key).await;
        let answer = ask(&w, &client, Some(&auth), &json!({"id_token": token})).await;
        assert_eq!(answer.status, 400, "{claims} {key}: {}", answer.body);
        assert!(
            answer.json()["error"].as_str().unwrap().contains(why),
            "{why}: {}",
            answer.body
        );
    }
    let answer = ask(&w, &client, Some(&auth), &json!({"id_token": "not.a.jwt"})).await;
    assert_eq!(answer.status, 400);
}

#[tokio::test]
async fn backends_must_authenticate() {
    let (w, ca) = world().await;
    let client = w.env.client();
    let token = id_token(&w, json!({}), "provider").await;
    let body = json!({"id_token": token});
    for auth in [
        None,
        Some(basic("login", "wrong")),
        Some(basic("nobody", BACKEND_SECRET)),
    ] {
        let answer = ask(&w, &client, auth.as_deref(), &body).await;
        assert_eq!(answer.status, 401, "{auth:?}: {}", answer.body);
        assert!(answer.headers.contains_key("www-authenticate"));
    }
    // A certificate from the right CA with a name no backend has.
    let stranger = w
        .env
        .client_with(&ca.client("stranger", &["other.brand.example"]));
    let answer = ask(&w, &stranger, None, &body).await;
    assert_eq!(answer.status, 401);
}

#[tokio::test]
async fn only_trusted_backends_name_subjects() {
    let (w, ca) = world().await;
    let request =
        json!({"subject": "crm-customer-17", "claims": {"given_name": "Carol", "customer_id": 17}});
    let untrusted = ask(
        &w,
        &w.env.client(),
        Some(&basic("login", BACKEND_SECRET)),
        &request,
    )
    .await;
    assert_eq!(untrusted.status, 403, "{}", untrusted.body);

    let crm = w.env.client_with(&ca.client("crm", &["crm.brand.example"]));
    // brand-web is an audience the login backend may present, not the crm backend.
    let token = id_token(&w, json!({"aud": "brand-web"}), "provider").await;
    let answer = ask(&w, &crm, None, &json!({"id_token": token})).await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert!(answer.body.contains("audience"), "{}", answer.body);

    let answer = ask(&w, &crm, None, &request).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let claims = w
        .verify(answer.json()["jwt"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(claims["payload"]["sub"], "crm-customer-17");
    assert_eq!(claims["payload"]["given_name"], "Carol");
    assert_eq!(claims["payload"]["lp_sdes"][0]["info"]["customerId"], "17");

    for (bad, status) in [
        (json!({"subject": ""}), 400),
        (json!({"subject": "a\u{7}b"}), 400),
        (json!({"id_token": "x", "subject": "y"}), 400),
        (json!({"subject": "x", "unknown": 1}), 400),
        (json!({}), 400),
    ] {
        let answer = ask(&w, &crm, None, &bad).await;
        assert_eq!(answer.status, status, "{bad}: {}", answer.body);
    }
    let answer = crm
        .send(
            http::Method::POST,
            &w.daemon.url("/identity/v1/token"),
            &[("content-type", "text/plain")],
            bytes::Bytes::from_static(b"subject=x"),
        )
        .await;
    assert_eq!(answer.status, 415);
}

/// A consumer whose claims would make a token longer than 2,048 bytes (the platform's limit,
/// and the relay's) still gets one: optional claims are left out in the documented order,
/// their names logged, never their values.
#[tokio::test]
async fn a_token_never_outgrows_2048_bytes() {
    let (mut w, _) = world().await;
    let client = w.env.client();
    let auth = basic("login", BACKEND_SECRET);
    // A 241-character login name (the acceptance run's case), and long names and email.
    let long = |c: char, n: usize| c.to_string().repeat(n);
    let token = id_token(
        &w,
        json!({
            "preferred_username": long('u', 241),
            "given_name": long('g', 300),
            "family_name": long('f', 300),
            "email": format!("{}@example.test", long('e', 200)),
            "customer_id": long('7', 200),
        }),
        "provider",
    )
    .await;
    let answer = ask(&w, &client, Some(&auth), &json!({"id_token": token})).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let jwt = answer.json()["jwt"].as_str().unwrap().to_string();
    assert!(jwt.len() <= 2048, "{} bytes", jwt.len());
    let payload = w.verify(&jwt).await.unwrap()["payload"].clone();
    assert_eq!(payload["sub"], "alice");

    // What went is a prefix of the order, and what stayed is whole.
    let order = [
        "lp_sdes.personal",
        "lp_sdes.ctmrinfo",
        "preferred_username",
        "email",
        "family_name",
        "given_name",
    ];
    let present = |name: &str| match name.strip_prefix("lp_sdes.") {
        Some(entry) => payload["lp_sdes"]
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["type"] == entry)),
        None => payload.get(name).is_some(),
    };
    let gone: Vec<&str> = order.iter().copied().take_while(|n| !present(n)).collect();
    assert!(
        gone.len() >= 3,
        "at least lp_sdes and the login name go: {payload}"
    );
    assert!(order[gone.len()..].iter().all(|n| present(n)), "{payload}");
    assert_eq!(payload["given_name"], long('g', 300));

    let log = w.daemon.stop().await;
    let line = log
        .lines()
        .find(|l| l.contains("optional claims left out"))
        .unwrap_or_else(|| panic!("no log line: {log}"));
    for name in &gone {
        assert!(line.contains(name), "{name} not named: {line}");
    }
    assert!(!log.contains(&long('u', 241)), "a value was logged");
}

/// A provider subject that is not printable text never becomes a consumer id.
#[tokio::test]
async fn unprintable_subjects_are_refused() {
    let (w, _) = world().await;
    let client = w.env.client();
    let auth = basic("login", BACKEND_SECRET);
    for sub in [
        "evil\nINFO forged",
        "a\r\nb",
        "bell\u{7}",
        "esc\u{1b}[2J",
        "rtl\u{202E}",
    ] {
        let token = id_token(&w, json!({ "sub": sub }), "provider").await;
        let answer = ask(&w, &client, Some(&auth), &json!({"id_token": token})).await;
        assert_eq!(answer.status, 400, "{sub:?}: {}", answer.body);
        assert!(
            answer
                .body
                .contains("control, line-separator or bidirectional-override"),
            "{sub:?}: {}",
            answer.body
        );
    }
}
