//! The identity bridge with the brand's login: a real OpenID provider (oidc-provider), a
//! browser scripted over HTTP through brandgate's `/login`, the provider's login and consent
//! forms and brandgate's callback, then the platform's code exchange at `/oauth/token`. What
//! brandgate mints is verified by node's jose against brandgate's published JWKS.

use http::Method;
use serde_json::{Value, json};

use crate::support::client::Answer;
use crate::support::identity_world::{
    APP_CALLBACK, PLATFORM_CLIENT, PLATFORM_SECRET, VERIFIER, WEB_CALLBACK, World, enc,
};
use crate::support::idp::{BRANDGATE_ISSUER, Browser, Landing, url_params};

fn page(landing: Landing) -> Answer {
    match landing {
        Landing::Page(p) => p,
        Landing::App(url) => panic!("expected a page, landed at {url}"),
    }
}

#[tokio::test]
async fn a_consumer_logs_in_and_the_platform_exchanges_the_code() {
    let mut w = World::start("", "", "").await;
    let mut browser = w.browser();
    let code = w.login_for_code(&mut browser, "alice").await;
    assert!(code.len() >= 22, "a code carries at least 128 bits");

    let answer = w.exchange(&code, APP_CALLBACK, Some(VERIFIER)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.headers["cache-control"], "no-store");
    assert_eq!(answer.headers["pragma"], "no-cache");
    let body = answer.json();
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 600);
    assert!(body["access_token"].is_string());
    let id_token = body["id_token"].as_str().unwrap();

    // An independent library verifies it against the published keys.
    let verified = w
        .verify(id_token)
        .await
        .expect("jose verifies the id_token");
    let claims = &verified["payload"];
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["iss"], BRANDGATE_ISSUER);
    assert_eq!(claims["aud"], "platform-audience");
    assert_eq!(claims["email"], "alice@example.test");
    assert_eq!(claims["given_name"], "Alice");
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        600
    );
    assert!(claims["jti"].is_string());
    assert!(verified["header"]["kid"].is_string());
    let sdes = claims["lp_sdes"].as_array().unwrap();
    assert_eq!(
        sdes[0],
        json!({"type": "ctmrinfo", "info": {"ctype": "gold", "customerId": "C-4711"}})
    );
    assert_eq!(
        sdes[1],
        json!({"type": "personal", "personal": {"firstname": "Alice", "lastname": "Liddell",
            "contacts": [{"email": "alice@example.test"}]}})
    );

    // What brandgate sent the provider: code flow with PKCE S256, a state and a nonce, and
    // the client secret by Basic.
    let seen = w.idp.requests().await;
    let auth = &seen["authorization"][0];
    assert_eq!(auth["response_type"], "code");
    assert_eq!(auth["code_challenge_method"], "S256");
    assert!(auth["nonce"].as_str().unwrap().len() >= 16);
    assert!(auth["state"].as_str().unwrap().len() >= 22);
    assert_eq!(auth["redirect_uri"], format!("{BRANDGATE_ISSUER}/callback"));
    assert_eq!(seen["token"][0]["auth_method"], "client_secret_basic");
    assert!(seen["token"][0]["params"]["code_verifier"].is_string());

    // The metrics count it.
    let metrics = w.env.client().get(&w.daemon.ops_url("/metrics")).await.body;
    assert!(
        metrics.contains("brandgate_identity_logins_total{outcome=\"completed\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("brandgate_identity_tokens_total{flow=\"code\",outcome=\"issued\"} 1")
    );

    // Nothing secret reached the log (read once the daemon has stopped, so every line is in).
    let id_token = id_token.to_string();
    let logs = w.daemon.stop().await;
    assert!(
        logs.contains("exchanged a code for a consumer token"),
        "{logs}"
    );
    assert!(!logs.contains(id_token.split('.').nth(2).unwrap()));
    assert!(!logs.contains(&code));
    assert!(!logs.contains(PLATFORM_SECRET));
    assert!(!logs.contains("alice@example.test"));
}

/// A login name that is not printable text (a forged log line, a terminal escape) never
/// becomes a consumer: the app hears why at once, and no code is issued.
#[tokio::test]
async fn a_login_whose_subject_is_not_printable_is_refused() {
    let w = World::start("", "", "").await;
    for login in ["evil%0AINFO+forged", "bell%07", "esc%1B%5B2J"] {
        let mut browser = w.browser();
        let query = format!(
            "client_id={PLATFORM_CLIENT}&redirect_uri={}&state=s1",
            crate::support::identity_world::enc(APP_CALLBACK)
        );
        let Landing::App(url) = browser.login(&query, login).await else {
            panic!("{login}: the app was not told");
        };
        let p = url_params(&url);
        assert_eq!(p["error"], "access_denied", "{login}: {url}");
        assert!(
            p["error_description"].contains("control, line-separator or bidirectional-override"),
            "{login}: {url}"
        );
        assert!(!p.contains_key("code"), "{url}");
        assert_eq!(p["state"], "s1");
    }
}

/// A 241-character login name with the mapped profile made a 2,116-byte token the relay
/// refused: now optional claims are left out and the token stays within 2,048 bytes.
#[tokio::test]
async fn a_long_login_name_still_gets_a_token_within_the_limit() {
    let w = World::start("", "", "").await;
    let name = "n".repeat(241);
    // The provider's ID token for this login carries a full profile.
    w.idp
        .admin(
            "tamper",
            json!({"claims": {
                "given_name": "G".repeat(200), "family_name": "F".repeat(200),
                "email": format!("{}@example.test", "e".repeat(150)),
                "preferred_username": name, "customer_tier": "platinum", "customer_id": "C-1"
            }}),
        )
        .await;
    let mut browser = w.browser();
    let code = w.login_for_code(&mut browser, &name).await;
    let answer = w.exchange(&code, APP_CALLBACK, Some(VERIFIER)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let token = answer.json()["id_token"].as_str().unwrap().to_string();
    assert!(token.len() <= 2048, "{} bytes", token.len());
    let verified = w.verify(&token).await.expect("jose verifies it");
    assert_eq!(verified["payload"]["sub"], name.as_str());
    // The lp_sdes entries went first; the names stayed.
    assert!(verified["payload"].get("lp_sdes").is_none(), "{verified}");
    assert_eq!(verified["payload"]["given_name"], "G".repeat(200));
}

#[tokio::test]
async fn client_secret_in_the_body_works_too() {
    let w = World::start("", "client_auth = \"client_secret_post\"", "").await;
    // brandgate authenticates at the provider with a form secret this time (the provider's
    // client allows only Basic, so that must fail): the setting is honoured.
    let mut browser = w.browser();
    let landing = browser
        .login(
            &format!("redirect_uri={}&state=st", enc(APP_CALLBACK)),
            "alice",
        )
        .await;
    let why = app_error(landing, "server_error");
    assert!(why.contains("refused"), "{why}");
    assert_eq!(
        w.idp.requests().await["token"][0]["auth_method"],
        "client_secret_post"
    );

    // The platform may send its own client secret in the body.
    let w = World::start("", "", "").await;
    let mut browser = w.browser();
    let code = match browser
        .login(&format!("redirect_uri={}", enc(WEB_CALLBACK)), "bob")
        .await
    {
        Landing::App(url) => url_params(&url)["code"].clone(),
        Landing::Page(p) => panic!("{}", p.body),
    };
    let form = format!(
        "grant_type=authorization_code&code={code}&redirect_uri={}&client_id={PLATFORM_CLIENT}&client_secret={}",
        enc(WEB_CALLBACK),
        enc(PLATFORM_SECRET)
    );
    let answer = w.token_call(&form, None).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let claims = w
        .verify(answer.json()["id_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(claims["payload"]["sub"], "bob");
}

#[tokio::test]
async fn a_replayed_state_is_refused() {
    let w = World::start("", "", "").await;
    let mut browser = w.browser();
    // Walk to the provider's answer by hand, to keep the callback URL.
    let start = format!(
        "{BRANDGATE_ISSUER}/login?redirect_uri={}",
        enc(APP_CALLBACK)
    );
    let at_provider = browser.follow(&start).await;
    let callback = capture_callback(&mut browser, at_provider, "alice").await;
    let first = browser.follow(&callback).await;
    assert!(matches!(first, Landing::App(_)), "{first:?}");
    let again = page(browser.follow(&callback).await);
    assert_eq!(again.status, 400);
    assert!(again.body.contains("already finished"), "{}", again.body);

    // A state brandgate never gave out.
    let forged = callback.replace("state=", "state=x");
    let p = page(browser.follow(&forged).await);
    assert_eq!(p.status, 400);
    let missing = format!("{BRANDGATE_ISSUER}/callback?code=abc");
    let p = page(browser.follow(&missing).await);
    assert_eq!(p.status, 400);
    assert!(p.body.contains("state is missing"));
}

#[tokio::test]
async fn a_login_finished_in_another_browser_is_refused() {
    let w = World::start("", "", "").await;
    let mut victim = w.browser();
    let mut attacker = w.browser();
    let start = format!(
        "{BRANDGATE_ISSUER}/login?redirect_uri={}",
        enc(APP_CALLBACK)
    );
    let at_provider = attacker.follow(&start).await;
    let callback = capture_callback(&mut attacker, at_provider, "mallory").await;
    // The attacker sends its callback link to someone else (login CSRF).
    let p = page(victim.follow(&callback).await);
    assert_eq!(p.status, 400);
    assert!(p.body.contains("another browser"), "{}", p.body);

    // Nor can anyone who saw a consumer's callback spend it before the consumer's browser
    // gets there: the consumer still finishes.
    let at_provider = victim.follow(&start).await;
    let consumers = capture_callback(&mut victim, at_provider, "alice").await;
    let p = page(attacker.follow(&consumers).await);
    assert_eq!(p.status, 400);
    let landing = victim.follow(&consumers).await;
    assert!(matches!(landing, Landing::App(_)), "{landing:?}");
}

/// Logs in at the provider and returns the callback URL it sends the browser to, without
/// following it.
async fn capture_callback(browser: &mut Browser, at_provider: Landing, who: &str) -> String {
    let Landing::Page(login_page) = at_provider else {
        panic!("expected the provider's login page");
    };
    // Log in and consent, stopping at the first redirect to brandgate.
    let mut landing = Landing::Page(login_page);
    for form in [
        format!("prompt=login&login={who}&password=x"),
        "prompt=consent".to_string(),
    ] {
        let Landing::Page(p) = &landing else {
            unreachable!()
        };
        let action = p
            .body
            .split("action=\"")
            .nth(1)
            .unwrap()
            .split('"')
            .next()
            .unwrap();
        let url = absolute(browser, &action.replace("&amp;", "&"));
        let mut answer = browser.request(Method::POST, &url, Some(&form)).await;
        loop {
            assert!((300..400).contains(&answer.status), "{}", answer.body);
            let location = answer.headers["location"].to_str().unwrap().to_string();
            let next = absolute(browser, &location);
            if next.starts_with(BRANDGATE_ISSUER) {
                return next;
            }
            answer = browser.request(Method::GET, &next, None).await;
            if !(300..400).contains(&answer.status) {
                landing = Landing::Page(answer);
                break;
            }
        }
    }
    panic!("the provider never sent the browser back");
}

/// A provider URL as given (absolute) or relative to the provider.
fn absolute(browser: &Browser, url: &str) -> String {
    if url.starts_with('/') {
        format!("{}{url}", browser.idp_issuer())
    } else {
        url.to_string()
    }
}

/// Runs one login whose provider answer was tampered with; the login must end at the app's
/// callback with `error=server_error`. Returns the `error_description` it carries.
async fn tampered_login(w: &World, tamper: Value) -> String {
    w.idp.admin("tamper", tamper).await;
    let mut browser = w.browser();
    app_error(
        browser
            .login(
                &format!("redirect_uri={}&state=st", enc(APP_CALLBACK)),
                "alice",
            )
            .await,
        "server_error",
    )
}

/// The app's callback carries `error` (and the app's state, and no code); returns the
/// `error_description`.
fn app_error(landing: Landing, error: &str) -> String {
    let Landing::App(url) = landing else {
        panic!("expected a return to the app, got {landing:?}");
    };
    assert!(url.starts_with(APP_CALLBACK), "{url}");
    let p = url_params(&url);
    assert_eq!(p.get("error").map(String::as_str), Some(error), "{url}");
    assert!(!p.contains_key("code"), "{url}");
    assert_eq!(p["state"], "st");
    p["error_description"].clone()
}

#[tokio::test]
async fn a_nonce_mismatch_is_refused() {
    let w = World::start("", "", "").await;
    let p = tampered_login(&w, json!({"claims": {"nonce": "not-the-one-sent"}})).await;
    assert!(p.contains("nonce"), "{p}");
}

#[tokio::test]
async fn a_token_for_another_audience_is_refused() {
    let w = World::start("", "", "").await;
    let p = tampered_login(&w, json!({"claims": {"aud": "someone-else"}})).await;
    assert!(p.contains("audience"), "{p}");
}

#[tokio::test]
async fn an_expired_upstream_token_is_refused() {
    let w = World::start("", "", "").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // Expired beyond the 60 s leeway.
    let p = tampered_login(&w, json!({"claims": {"exp": now - 120, "iat": now - 720}})).await;
    assert!(p.contains("expired"), "{p}");
}

#[tokio::test]
async fn an_upstream_token_signed_by_an_unknown_key_is_refused() {
    let w = World::start("", "rediscover_interval = \"0s\"", "").await;
    let p = tampered_login(&w, json!({"key": "unknown"})).await;
    assert!(p.contains("key the provider does not publish"), "{p}");
}

#[tokio::test]
async fn a_tampered_at_hash_is_refused() {
    let w = World::start("", "", "").await;
    let p = tampered_login(&w, json!({"claims": {"at_hash": "AAAAAAAAAAAAAAAAAAAAAA"}})).await;
    assert!(p.contains("at_hash"), "{p}");
}

#[tokio::test]
async fn the_providers_key_rotation_is_followed() {
    // Re-reading the keys is allowed at once here: the new key is found.
    let w = World::start("", "rediscover_interval = \"0s\"", "").await;
    w.idp.admin("rotate", json!({})).await;
    w.idp.admin("tamper", json!({"key": "rotated"})).await;
    let mut browser = w.browser();
    let landing = browser
        .login(&format!("redirect_uri={}", enc(APP_CALLBACK)), "alice")
        .await;
    assert!(matches!(landing, Landing::App(_)), "{landing:?}");
    w.daemon.wait_log("reading its keys again").await;

    // Rate limited: within the interval the keys are not read again, so a token signed with
    // a key published after the last read is refused.
    let mut w = World::start("", "rediscover_interval = \"1h\"", "").await;
    w.idp.admin("rotate", json!({})).await;
    let p = tampered_login(&w, json!({"key": "rotated"})).await;
    assert!(p.contains("key the provider does not publish"), "{p}");
    let log = w.daemon.stop().await;
    assert!(
        log.contains("an ID token from the login provider failed a check"),
        "{log}"
    );
    assert!(!log.contains("reading its keys again"), "{log}");
}

#[tokio::test]
async fn a_code_works_once() {
    let w = World::start("", "", "").await;
    let mut browser = w.browser();
    let code = w.login_for_code(&mut browser, "alice").await;
    let first = w.exchange(&code, APP_CALLBACK, Some(VERIFIER)).await;
    assert_eq!(first.status, 200, "{}", first.body);
    let second = w.exchange(&code, APP_CALLBACK, Some(VERIFIER)).await;
    assert_eq!(second.status, 400);
    assert_eq!(second.json()["error"], "invalid_grant");
    assert_eq!(second.headers["cache-control"], "no-store");
}

#[tokio::test]
async fn a_code_expires() {
    let w = World::start("code_lifetime = \"1s\"", "", "").await;
    let mut browser = w.browser();
    let code = w.login_for_code(&mut browser, "alice").await;
    // Expiry is kept in whole seconds: past two seconds the code is certainly expired.
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let answer = w.exchange(&code, APP_CALLBACK, Some(VERIFIER)).await;
    assert_eq!(answer.status, 400, "{}", answer.body);
    assert_eq!(answer.json()["error"], "invalid_grant");
}

#[tokio::test]
async fn a_code_needs_its_redirect_uri() {
    let w = World::start("", "", "").await;
    let mut browser = w.browser();
    let code = w.login_for_code(&mut browser, "alice").await;
    let answer = w.exchange(&code, WEB_CALLBACK, Some(VERIFIER)).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.json()["error"], "invalid_grant");
    // The code is spent: the right redirect URI afterwards does not bring it back.
    let answer = w.exchange(&code, APP_CALLBACK, Some(VERIFIER)).await;
    assert_eq!(answer.json()["error"], "invalid_grant");
}

#[tokio::test]
async fn a_wrong_client_secret_is_invalid_client_and_leaves_the_code() {
    let w = World::start("", "", "").await;
    let mut browser = w.browser();
    let code = w.login_for_code(&mut browser, "alice").await;
    let form = format!(
        "grant_type=authorization_code&code={code}&redirect_uri={}&code_verifier={VERIFIER}",
        enc(APP_CALLBACK)
    );
    let answer = w.token_call(&form, Some((PLATFORM_CLIENT, "wrong"))).await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.json()["error"], "invalid_client");
    assert!(
        answer.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    let answer = w.token_call(&form, None).await;
    assert_eq!(answer.status, 401, "no client authentication at all");
    // Basic and body credentials together are refused.
    let both = format!("{form}&client_secret=x");
    let answer = w
        .token_call(&both, Some((PLATFORM_CLIENT, PLATFORM_SECRET)))
        .await;
    assert_eq!(answer.json()["error"], "invalid_request");
    // The code was never looked at: the real client still gets its token.
    let answer = w
        .token_call(&form, Some((PLATFORM_CLIENT, PLATFORM_SECRET)))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}

#[tokio::test]
async fn a_wrong_pkce_verifier_is_refused() {
    let w = World::start("", "", "").await;
    let mut browser = w.browser();
    let code = w.login_for_code(&mut browser, "alice").await;
    let wrong = "x".repeat(43);
    let answer = w.exchange(&code, APP_CALLBACK, Some(&wrong)).await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.json()["error"], "invalid_grant");

    let code = w.login_for_code(&mut browser, "alice").await;
    let answer = w.exchange(&code, APP_CALLBACK, None).await;
    assert_eq!(
        answer.json()["error"],
        "invalid_grant",
        "the verifier is required"
    );
}

#[tokio::test]
async fn malformed_token_calls_get_rfc6749_errors() {
    let w = World::start("", "", "").await;
    let creds = Some((PLATFORM_CLIENT, PLATFORM_SECRET));
    let cases = [
        ("grant_type=client_credentials", "unsupported_grant_type"),
        ("code=abc", "invalid_request"),
        ("grant_type=authorization_code", "invalid_request"),
        (
            "grant_type=authorization_code&code=a&code=b",
            "invalid_request",
        ),
        (
            "grant_type=authorization_code&code=never-issued",
            "invalid_grant",
        ),
    ];
    for (form, error) in cases {
        let answer = w.token_call(form, creds).await;
        assert_eq!(answer.status, 400, "{form}");
        assert_eq!(answer.json()["error"], error, "{form}");
    }
    // Basic credentials as many clients send them, not form-encoded first (the secret has a
    // space and an '@'): accepted too.
    let raw = crate::support::client::basic(PLATFORM_CLIENT, PLATFORM_SECRET);
    let answer = w
        .platform
        .send(
            Method::POST,
            &w.daemon.url("/oauth/token"),
            &[
                ("content-type", "application/x-www-form-urlencoded"),
                ("authorization", raw.as_str()),
            ],
            bytes::Bytes::from_static(b"grant_type=authorization_code&code=never-issued"),
        )
        .await;
    assert_eq!(answer.json()["error"], "invalid_grant", "{}", answer.body);

    let answer = w
        .env
        .client()
        .post_json(
            &w.daemon.url("/oauth/token"),
            &[],
            &json!({"grant_type": "authorization_code"}),
        )
        .await;
    assert_eq!(answer.status, 400);
    assert_eq!(answer.json()["error"], "invalid_request");
}

#[tokio::test]
async fn the_implicit_flow_returns_the_token_itself() {
    let w = World::start("", "", "").await;
    let mut browser = w.browser();
    let query = format!(
        "response_type=id_token&redirect_uri={}&state=s1&nonce=app-nonce-1",
        enc(WEB_CALLBACK)
    );
    let Landing::App(url) = browser.login(&query, "alice").await else {
        panic!("no redirect to the app");
    };
    assert!(
        url.starts_with(&format!("{WEB_CALLBACK}#")),
        "in the fragment: {url}"
    );
    let p = url_params(&url);
    assert_eq!(p["state"], "s1");
    assert_eq!(p["token_type"], "Bearer");
    let claims = w.verify(&p["id_token"]).await.unwrap();
    assert_eq!(claims["payload"]["sub"], "alice");
    assert_eq!(claims["payload"]["nonce"], "app-nonce-1");

    // A native app that finishes the callback itself gets JSON.
    let query = format!(
        "response_type=id_token&response_mode=json&redirect_uri={}&state=s2&nonce=n2",
        enc(APP_CALLBACK)
    );
    let answer = page(browser.login(&query, "alice").await);
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(answer.headers["cache-control"], "no-store");
    let body = answer.json();
    assert_eq!(body["state"], "s2");
    assert!(w.verify(body["id_token"].as_str().unwrap()).await.is_ok());
}

#[tokio::test]
async fn logins_only_return_to_registered_places() {
    let w = World::start("", "", "").await;
    let mut browser = w.browser();
    for (query, why) in [
        (
            "redirect_uri=https%3A%2F%2Fevil.example%2Fcb",
            "not registered",
        ),
        ("client_id=nobody", "unknown client_id"),
        (
            "redirect_uri=com.brand.app%3A%2F%2Fcallback&response_type=token",
            "unsupported response_type",
        ),
        (
            "redirect_uri=com.brand.app%3A%2F%2Fcallback&code_challenge=abc&code_challenge_method=plain",
            "S256",
        ),
        (
            "redirect_uri=com.brand.app%3A%2F%2Fcallback&state=a&state=b",
            "more than once",
        ),
    ] {
        let start = format!("{BRANDGATE_ISSUER}/login?{query}");
        let answer = browser.request(Method::GET, &start, None).await;
        assert_eq!(answer.status, 400, "{query}: {}", answer.body);
        assert!(
            answer.headers.get("location").is_none(),
            "{query}: never redirected"
        );
        assert!(answer.body.contains(why), "{query}: {}", answer.body);
        assert!(
            answer.headers["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
    }
    // Two redirect URIs are registered: a login must say which.
    let answer = browser
        .request(Method::GET, &format!("{BRANDGATE_ISSUER}/login"), None)
        .await;
    assert_eq!(answer.status, 400);
    assert!(
        answer.body.contains("redirect_uri is required"),
        "{}",
        answer.body
    );
}

#[tokio::test]
async fn a_cancelled_login_tells_the_app() {
    let w = World::start("", "", "").await;
    let mut browser = w.browser();
    let start = format!(
        "{BRANDGATE_ISSUER}/login?redirect_uri={}&state=st",
        enc(APP_CALLBACK)
    );
    let Landing::Page(login_page) = browser.follow(&start).await else {
        panic!("expected the provider's page");
    };
    // oidc-provider's development login page has a "cancel" link: /interaction/<uid>/abort.
    let uid = login_page
        .body
        .split("/interaction/")
        .nth(1)
        .unwrap()
        .split(['/', '"', '?'])
        .next()
        .unwrap()
        .to_string();
    let abort = format!("{}/interaction/{uid}/abort", browser.idp_issuer());
    let Landing::App(url) = browser.follow(&abort).await else {
        panic!("no redirect to the app");
    };
    let p = url_params(&url);
    assert_eq!(p["error"], "access_denied");
    assert_eq!(p["state"], "st");
    assert!(!p.contains_key("code"));
}

#[tokio::test]
async fn pseudonymous_subjects_are_stable_and_not_the_upstream_id() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("pseudonym-key");
    std::fs::write(
        &key,
        "Q2hvb3NlIGEgbG9uZyByYW5kb20ga2V5IGhlcmUsIDMyKyBieXRlcw==\n",
    )
    .unwrap();
    let identity_extra = format!(
        "[identity.subject]\nmode = \"pseudonym\"\npseudonym_key_file = \"{}\"\n",
        key.display()
    );
    let w = World::start(&identity_extra, "", "").await;
    let mut subjects = Vec::new();
    for _ in 0..2 {
        let mut browser = w.browser();
        let code = w.login_for_code(&mut browser, "alice").await;
        let answer = w.exchange(&code, APP_CALLBACK, Some(VERIFIER)).await;
        let claims = w
            .verify(answer.json()["id_token"].as_str().unwrap())
            .await
            .unwrap();
        subjects.push(claims["payload"]["sub"].as_str().unwrap().to_string());
    }
    assert_eq!(subjects[0], subjects[1]);
    assert_ne!(subjects[0], "alice");
    assert_eq!(subjects[0].len(), 43, "base64url of an HMAC-SHA256");
}

#[tokio::test]
async fn discovery_names_the_code_flow_endpoints() {
    let w = World::start("", "", "").await;
    let d = w
        .env
        .client()
        .get(&w.daemon.url("/.well-known/openid-configuration"))
        .await
        .json();
    assert_eq!(
        d["token_endpoint"],
        format!("{BRANDGATE_ISSUER}/oauth/token")
    );
    assert_eq!(
        d["authorization_endpoint"],
        format!("{BRANDGATE_ISSUER}/login")
    );
    assert_eq!(d["code_challenge_methods_supported"], json!(["S256"]));
    // The provider's metadata is read at start, in the background.
    let mut state = Value::Null;
    for _ in 0..100 {
        let ready = w
            .env
            .client()
            .get(&w.daemon.ops_url("/readyz"))
            .await
            .json();
        state = ready["checks"]["identity"]["login_provider"].clone();
        if state == "ok" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(state, "ok");
}

#[tokio::test]
async fn a_reload_reads_the_client_secrets_again() {
    let mut w = World::start("", "", "").await;
    let form = "grant_type=authorization_code&code=never-issued";
    // The right secret gets as far as the code; a wrong one stops at client authentication.
    let answer = w
        .token_call(form, Some((PLATFORM_CLIENT, PLATFORM_SECRET)))
        .await;
    assert_eq!(answer.json()["error"], "invalid_grant");

    let rotated = "a-n3w platform secret";
    w.env.secret("platform-secret", &format!("{rotated}\n"));
    w.daemon.reload().await;
    w.daemon.wait_log("configuration reloaded").await;
    let answer = w
        .token_call(form, Some((PLATFORM_CLIENT, PLATFORM_SECRET)))
        .await;
    assert_eq!(
        answer.status, 401,
        "the old secret is refused after a reload"
    );
    let answer = w.token_call(form, Some((PLATFORM_CLIENT, rotated))).await;
    assert_eq!(answer.json()["error"], "invalid_grant", "{}", answer.body);

    // A reload that cannot read a secret changes nothing.
    std::fs::remove_file(w.env.path().join("platform-secret")).unwrap();
    w.daemon.reload().await;
    w.daemon.wait_log("reload refused").await;
    let answer = w.token_call(form, Some((PLATFORM_CLIENT, rotated))).await;
    assert_eq!(answer.json()["error"], "invalid_grant", "{}", answer.body);
    // Logins still work after the reloads.
    let mut browser = w.browser();
    let code = w.login_for_code(&mut browser, "alice").await;
    let form = format!(
        "grant_type=authorization_code&code={code}&redirect_uri={}&code_verifier={VERIFIER}",
        enc(APP_CALLBACK)
    );
    let answer = w.token_call(&form, Some((PLATFORM_CLIENT, rotated))).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
}

#[tokio::test]
async fn a_provider_that_is_down_is_not_hammered_and_the_app_hears_of_it() {
    let env = crate::support::TestEnv::new();
    // Nothing listens there.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let secret = env.secret("upstream-secret", "s\n");
    let client_secret = env.secret("platform-secret", "p\n");
    let keys = env.secret(
        "data-keys",
        &crate::support::identity_world::data_key_line("k1"),
    );
    let config = env.config(&format!(
        r#"
[store]
data_keys_file = "{keys}"
[identity]
issuer = "{BRANDGATE_ISSUER}"
[identity.upstream]
issuer = "https://127.0.0.1:{port}"
client_id = "brandgate"
client_secret_file = "{secret}"
timeout = "2s"
[[identity.clients]]
id = "platform"
secret_file = "{client_secret}"
redirect_uris = ["{APP_CALLBACK}"]
"#,
        keys = keys.display(),
        secret = secret.display(),
        client_secret = client_secret.display(),
    ));
    let daemon = crate::support::daemon::Daemon::start(env.path(), &config).await;
    let client = env.client();
    for _ in 0..5 {
        let answer = client
            .get(&daemon.url(&format!(
                "/login?state=st&redirect_uri={}",
                enc(APP_CALLBACK)
            )))
            .await;
        // The app is told, on its callback, and may retry later.
        assert_eq!(answer.status, 303, "{}", answer.body);
        let location = answer.headers["location"].to_str().unwrap();
        assert!(location.starts_with(APP_CALLBACK), "{location}");
        let p = url_params(location);
        assert_eq!(p["error"], "temporarily_unavailable");
        assert_eq!(p["state"], "st");
    }
    // Right after a failed attempt, logins are answered without calling the provider again.
    daemon.wait_log("moments ago").await;
    let ready = client.get(&daemon.ops_url("/readyz")).await.json();
    assert_eq!(
        ready["checks"]["identity"]["login_provider"],
        "not reachable yet"
    );
    assert_eq!(
        ready["ready"], true,
        "keys and anonymous identities do not need the provider"
    );
}

#[tokio::test]
async fn logins_are_limited_per_source() {
    let w = World::start("", "logins_per_minute = 2", "").await;
    let mut browser = w.browser();
    let start = format!(
        "{BRANDGATE_ISSUER}/login?redirect_uri={}",
        enc(APP_CALLBACK)
    );
    for _ in 0..2 {
        let answer = browser.request(Method::GET, &start, None).await;
        assert_eq!(answer.status, 303);
    }
    let answer = browser.request(Method::GET, &start, None).await;
    assert_eq!(answer.status, 429, "{}", answer.body);
    assert!(answer.headers.contains_key("retry-after"));
}

/// With `[identity.egress]` naming a proxy (a real tinyproxy), every call to the brand's
/// provider (discovery, its keys, the code exchange) goes through it: its only tunnels are to
/// the provider, and the login ends in a token as it does directly.
#[tokio::test]
async fn the_brands_provider_is_reached_through_the_identity_roles_proxy() {
    use crate::support::TestEnv;
    use crate::support::proxy::{Proxy, ProxyRules, authority};
    let env = TestEnv::new();
    let mut proxy = Proxy::start(env.path(), ProxyRules::default()).await;
    let egress = format!("[identity.egress]\nproxy = \"{}\"\n", proxy.url());
    let w = World::start_in(env, "", "", "", &egress).await;
    let mut browser = w.browser();
    let code = w.login_for_code(&mut browser, "alice").await;
    let answer = w.exchange(&code, APP_CALLBACK, Some(VERIFIER)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let seen = w.idp.requests().await;
    assert_eq!(seen["token"].as_array().map(Vec::len), Some(1), "{seen}");

    proxy
        .stop_expecting_tunnels_only_to(&authority(&w.idp.issuer))
        .await;
}
