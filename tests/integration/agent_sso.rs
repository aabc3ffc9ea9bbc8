//! Agents' single sign-on with OpenID Connect against a real provider (oidc-provider, the
//! one the identity tests run), through a browser scripted over HTTP: brandgate's start, the
//! provider's login and consent forms, brandgate's callback, and the workspace it lands on
//! with the session. The session is then used exactly as a password login's: REST with the
//! cookie and CSRF token, the agent socket with the bearer, a refresh.

use serde_json::{Value, json};

use crate::support::TestEnv;
use crate::support::client::Answer;
use crate::support::daemon::run;
use crate::support::idp::{
    BRANDGATE_ISSUER, Browser, Idp, Landing, UPSTREAM_SECRET, agents_client, url_params,
};
use crate::support::messaging::{MessagingClient, Side};
use crate::support::relay_world::{ACCOUNT, Relay, config};

const AGENTS_CLIENT: &str = "brandgate-agents";
const SESSION_COOKIE: &str = "__Host-brandgate_agent";
const WORKSPACE: &str = "https://brandgate.test/workspace/";

fn callback() -> String {
    format!("{BRANDGATE_ISSUER}/api/account/{ACCOUNT}/sso/oidc/callback")
}

fn start_url() -> String {
    format!("{BRANDGATE_ISSUER}/api/account/{ACCOUNT}/sso/oidc")
}

/// A provider with brandgate's agents client and the people who sign in there.
async fn provider(env: &TestEnv) -> Idp {
    let client = agents_client(AGENTS_CLIENT, &callback());
    let people = json!({
        "ann": {"preferred_username": "ann", "groups": ["support", "staff"]},
        "bob": {"preferred_username": "bob", "groups": ["sales"]},
        "carol": {"preferred_username": "carol", "groups": "support"},
        "dan": {"preferred_username": "dan", "groups": ["support"]},
        "root": {"preferred_username": "root", "groups": ["support"]},
        "erin": {"preferred_username": "erin", "groups": ["support"]},
        "impostor": {"preferred_username": "ann", "groups": ["support"]},
        "nameless": {"groups": ["support"]},
    });
    Idp::start(env, vec![client], people).await
}

/// A relay whose agents sign in at `idp`; `sso_extra` goes in `[relay.agents.sso]`.
async fn relay(env: TestEnv, idp: &Idp, agents_extra: &str, sso_extra: &str) -> Relay {
    let secret = env.secret("agents-client-secret", UPSTREAM_SECRET);
    let ca = env.ca.write(env.path(), "agents-idp-ca");
    let relay_extra = format!(
        r#"requests_per_second = 1000
[relay.agents]
{agents_extra}
[relay.agents.sso]
required_group = "support"
{sso_extra}
[relay.agents.sso.oidc]
issuer = "{issuer}"
client_id = "{AGENTS_CLIENT}"
client_secret_file = "{secret}"
scopes = ["openid", "profile", "brand"]
extra_trust_anchors = ["{ca}"]
"#,
        issuer = idp.issuer,
        secret = secret.display(),
        ca = ca.display(),
    );
    let config = config(&env, "1h", "", &relay_extra);
    Relay::start_on(env, &config).await
}

fn browser(relay: &Relay, idp: &Idp) -> Browser {
    let mut b = Browser::new(&relay.env, &relay.daemon.url(""), idp);
    b.stop_at(WORKSPACE);
    b
}

/// Signs `person` in at the provider from brandgate's start; where the browser lands.
async fn sign_in(browser: &mut Browser, person: &str) -> String {
    let landing = browser.follow(&start_url()).await;
    match browser.finish_at_provider(landing, person).await {
        Landing::App(url) => url,
        Landing::Page(page) => panic!("{person}: stopped at a page: {} {}", page.status, page.body),
    }
}

/// The code of a sign-in's refusal, from the workspace address it landed on (the workspace
/// shows its own words for it).
fn refusal(landing: &str) -> String {
    assert!(landing.starts_with(WORKSPACE), "{landing}");
    url_params(landing)
        .get("sso-error")
        .unwrap_or_else(|| panic!("no refusal in {landing}"))
        .clone()
}

async fn password_login(relay: &Relay, username: &str, password: &str) -> Answer {
    relay
        .env
        .client()
        .post_json(
            &relay.daemon.url(&format!("/api/account/{ACCOUNT}/login")),
            &[],
            &json!({ "username": username, "password": password }),
        )
        .await
}

/// Stops the daemon; the audit (outcome, username, via), oldest first, and the whole log.
async fn audit(relay: &mut Relay) -> (Vec<(String, String, Option<String>)>, String) {
    let (log, store) = relay.stop_and_open_store().await;
    let rows = store.list_agent_audit(ACCOUNT, 100).await.unwrap();
    let rows = rows
        .into_iter()
        .rev()
        .map(|r| (r.outcome, r.username, r.via))
        .collect();
    (rows, log)
}

#[tokio::test]
async fn an_agent_signs_in_at_the_brands_provider_and_works_as_after_a_password_login() {
    let env = TestEnv::new();
    let idp = provider(&env).await;
    let mut relay = relay(env, &idp, "", "").await;
    relay.add_sso_only_agent("ann").await;
    relay.add_sso_only_agent("dan").await;
    relay.add_agent("erin").await;

    let mut b = browser(&relay, &idp);
    let landed = sign_in(&mut b, "ann").await;
    let csrf = url_params(&landed)
        .get("csrf")
        .unwrap_or_else(|| panic!("no CSRF token: {landed}"))
        .clone();
    let bearer = b.cookies("brandgate")[SESSION_COOKIE].clone();

    // The cookie with its CSRF token, as the workspace uses it.
    let cookie = format!("{SESSION_COOKIE}={bearer}");
    let client = relay.env.client();
    let with_cookie = [("cookie", cookie.as_str()), ("x-csrf-token", csrf.as_str())];
    let a = client
        .get_with_headers(&relay.daemon.url("/api/v1/workspace"), &with_cookie)
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.json()["username"], "ann");
    let a = client
        .send(
            http::Method::POST,
            &relay.daemon.url(&format!("/api/account/{ACCOUNT}/refresh")),
            &with_cookie,
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    // The bearer on the agent socket.
    let mut agent = MessagingClient::connect(
        &relay.env.ca.cert_pem,
        relay.daemon.public,
        "/ws/agent",
        Some(&format!("Bearer {bearer}")),
        Side::Agent,
    )
    .await
    .unwrap_or_else(|r| panic!("socket refused: {} {}", r.status, r.body));
    let r = agent
        .request("routing.SetAgentState", json!({"availability": "ONLINE"}))
        .await;
    assert_eq!(r["code"], 200, "{r}");

    // What brandgate asked the provider: its own client, code flow with PKCE, state, nonce.
    let seen = idp.requests().await;
    let auth = seen["authorization"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["client_id"] == AGENTS_CLIENT)
        .expect("an authorization request of the agents' client")
        .clone();
    assert_eq!(auth["response_type"], "code");
    assert_eq!(auth["code_challenge_method"], "S256");
    assert_eq!(auth["redirect_uri"], callback());
    assert!(auth["nonce"].as_str().unwrap().len() >= 16);
    assert!(auth["state"].as_str().unwrap().len() >= 22);

    // An agent without a password signs in only this way.
    let landed = sign_in(&mut browser(&relay, &idp), "dan").await;
    assert!(url_params(&landed).contains_key("csrf"), "{landed}");
    let a = password_login(&relay, "dan", "any password at all").await;
    assert_eq!(a.status, 401, "{}", a.body);

    // Refusals, each with its reason: not in the required group (a string claim counts as
    // one group), not an agent here, no username from the provider.
    let landed = sign_in(&mut browser(&relay, &idp), "bob").await;
    assert_eq!(refusal(&landed), "sso_not_in_group");
    let landed = sign_in(&mut browser(&relay, &idp), "carol").await;
    assert_eq!(refusal(&landed), "unknown_username");
    let landed = sign_in(&mut browser(&relay, &idp), "nameless").await;
    assert_eq!(refusal(&landed), "sso_no_username");
    // An agent with a password is not taken over by whoever has its name at the provider
    // (link_existing is off), and once ann is linked to her identity, another identity with
    // her username is not her.
    let landed = sign_in(&mut browser(&relay, &idp), "erin").await;
    assert_eq!(refusal(&landed), "sso_not_linked");
    let landed = sign_in(&mut browser(&relay, &idp), "impostor").await;
    assert_eq!(refusal(&landed), "sso_subject_mismatch");
    // ann herself still gets in.
    let landed = sign_in(&mut browser(&relay, &idp), "ann").await;
    assert!(url_params(&landed).contains_key("csrf"), "{landed}");
    // A forged answer: the ID token's audience is another client's.
    idp.admin("tamper", json!({"claims": {"aud": "someone-else"}}))
        .await;
    let landed = sign_in(&mut browser(&relay, &idp), "ann").await;
    assert_eq!(refusal(&landed), "sso_invalid_response");
    // Nothing of this reached the browser as a session.
    let a = client
        .get_with_headers(
            &relay.daemon.url("/api/v1/workspace"),
            &[("authorization", "Bearer x")],
        )
        .await;
    assert_eq!(a.status, 401);

    let via = |sub: &str| format!("oidc {} {sub:?}", idp.issuer);
    let provider = format!("oidc {}", idp.issuer);
    let log_bearer = bearer.clone();
    let (rows, log) = audit(&mut relay).await;
    let row =
        |o: &str, u: &str, v: Option<&str>| (o.to_string(), u.to_string(), v.map(str::to_string));
    assert_eq!(
        rows,
        [
            row("added", "ann", None),
            row("added", "dan", None),
            row("added", "erin", None),
            row("success", "ann", Some(&via("ann"))),
            row("success", "dan", Some(&via("dan"))),
            row("no_password", "dan", None),
            row("sso_not_in_group", "bob", Some(&via("bob"))),
            row("unknown_username", "carol", Some(&via("carol"))),
            row("sso_no_username", "", Some(&via("nameless"))),
            row("sso_not_linked", "erin", Some(&via("erin"))),
            row("sso_subject_mismatch", "ann", Some(&via("impostor"))),
            row("success", "ann", Some(&via("ann"))),
            row("sso_invalid_response", "", Some(&provider)),
        ]
    );
    assert!(log.contains("agent signed in with single sign-on"), "{log}");
    assert!(!log.contains(&log_bearer));
    assert!(!log.contains(&csrf));
}

#[tokio::test]
async fn a_sign_in_works_once_and_only_in_the_browser_that_started_it() {
    let env = TestEnv::new();
    let idp = provider(&env).await;
    let relay = relay(env, &idp, "", "").await;
    relay.add_sso_only_agent("ann").await;
    let mut b = browser(&relay, &idp);
    b.stop_at(&callback());
    let back = sign_in(&mut b, "ann").await;
    assert!(back.starts_with(&callback()), "{back}");

    b.stop_at(WORKSPACE);
    // Another browser (without the login cookie) cannot finish it, nor spend it.
    let mut other = browser(&relay, &idp);
    let a = other.request(http::Method::GET, &back, None).await;
    assert_eq!(a.status, 303);
    let location = a.headers["location"].to_str().unwrap().to_string();
    assert_eq!(url_params(&location)["sso-error"], "sign_in_unknown");
    // The one that started it finishes it, once.
    let a = b.request(http::Method::GET, &back, None).await;
    assert_eq!(a.status, 303, "{}", a.body);
    let location = a.headers["location"].to_str().unwrap().to_string();
    assert!(url_params(&location).contains_key("csrf"), "{location}");
    let a = b.request(http::Method::GET, &back, None).await;
    let location = a.headers["location"].to_str().unwrap().to_string();
    assert_eq!(url_params(&location)["sso-error"], "sign_in_unknown");
    // A program (no text/html) is answered with the status and the reason.
    let a = relay.env.client().get(&relay.daemon.url(&format!(
        "/api/account/{ACCOUNT}/sso/oidc/callback?state=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA&code=x"
    ))).await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(
        a.json()["error"]
            .as_str()
            .unwrap()
            .starts_with("this sign-in is unknown")
    );
}

#[tokio::test]
async fn an_account_that_requires_sso_refuses_passwords_but_for_break_glass_agents() {
    let env = TestEnv::new();
    let idp = provider(&env).await;
    let mut relay = relay(
        env,
        &idp,
        "",
        "required = true\nbreak_glass = [\"root\"]\ncreate_agents = true",
    )
    .await;
    let ann = relay.add_agent("ann").await;
    let root = relay.add_agent("root").await;
    let a = password_login(&relay, "ann", &ann).await;
    assert_eq!(a.status, 401, "{}", a.body);
    assert_eq!(
        a.json()["error"],
        format!(
            "this account's agents sign in with single sign-on: use \"Sign in with SSO\" in the workspace (GET /api/account/{ACCOUNT}/sso/oidc)"
        )
    );
    let a = password_login(&relay, "root", &root).await;
    assert_eq!(a.status, 200, "{}", a.body);

    // The workspace offers the sign-in.
    let a = relay
        .env
        .client()
        .get(&relay.daemon.url("/workspace/config.json"))
        .await;
    assert_eq!(
        a.json()["sso"],
        json!([{"name": "SSO", "href": format!("/api/account/{ACCOUNT}/sso/oidc")}])
    );
    assert_eq!(a.json()["passwords"], false);

    // With create_agents, someone the provider vouches for (in the group) becomes an agent.
    let landed = sign_in(&mut browser(&relay, &idp), "carol").await;
    assert!(url_params(&landed).contains_key("csrf"), "{landed}");
    let config = relay.env.path().join("brandgate.toml");
    let (code, out, _) = run(
        &[
            "agents",
            "list",
            "--config",
            &config.to_string_lossy(),
            "--account",
            ACCOUNT,
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0);
    assert!(
        out.lines()
            .any(|l| l.starts_with("carol ") && l.contains("active")),
        "{out}"
    );
    // ... but not someone outside it, and a break-glass agent never this way.
    let landed = sign_in(&mut browser(&relay, &idp), "bob").await;
    assert_eq!(refusal(&landed), "sso_not_in_group");
    let landed = sign_in(&mut browser(&relay, &idp), "root").await;
    assert_eq!(refusal(&landed), "sso_break_glass");

    let outcomes: Vec<(String, String)> = audit(&mut relay)
        .await
        .0
        .into_iter()
        .map(|(o, u, _)| (o, u))
        .collect();
    let o = |a: &str, b: &str| (a.to_string(), b.to_string());
    assert_eq!(
        outcomes,
        [
            o("added", "ann"),
            o("added", "root"),
            o("sso_required", "ann"),
            o("success", "root"),
            o("added", "carol"),
            o("success", "carol"),
            o("sso_not_in_group", "bob"),
            o("sso_break_glass", "root"),
        ]
    );
}

#[tokio::test]
async fn single_sign_on_from_outside_the_allowed_networks_is_refused_before_the_provider() {
    let env = TestEnv::new();
    let idp = provider(&env).await;
    let relay = relay(env, &idp, "allowed_networks = [\"127.0.0.2/32\"]", "").await;
    relay.add_sso_only_agent("ann").await;
    let mut b = browser(&relay, &idp);
    let Landing::App(landed) = b.follow(&start_url()).await else {
        panic!("expected the workspace");
    };
    assert_eq!(refusal(&landed), "network_not_allowed");
    let seen: Value = idp.requests().await;
    assert!(
        seen["authorization"].as_array().unwrap().is_empty(),
        "the provider was asked: {seen}"
    );
}
