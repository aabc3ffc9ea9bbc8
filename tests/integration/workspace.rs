//! The agents' workspace: how its files are served (policy, encodings, caching), and the
//! application itself in Debian's Chromium (tests/node/workspace-e2e.mjs, driven by
//! playwright-core) against a running relay, with test consumers on the relay's socket.
//! Screenshots of sign-in, the queue, a conversation, a reconnect and an ended session are
//! saved in `target/workspace-screenshots/`.

use std::path::PathBuf;

use http::Method;
use serde_json::json;

use crate::support::TestEnv;
use crate::support::client::Client;
use crate::support::daemon::Daemon;
use crate::support::relay_world::{self, ACCOUNT, BACKEND_SECRET, Relay};

const CHROMIUM: &str = "/usr/bin/chromium";

/// What the workspace world adds to the relay's config: the demo page, skills and canned
/// responses, a lock after three failures, and the claims consumers' tokens carry.
fn extra(login_attempts_per_minute: u32) -> String {
    format!(
        r#"requests_per_second = 100000
[relay.demo]
enabled = true
[relay.workspace]
skills = ["billing", "tech"]
[[relay.workspace.canned]]
shortcut = "/order"
text = "Your order number, please? It is in your confirmation email."
[relay.agents]
max_failed_logins = 3
login_attempts_per_minute = {login_attempts_per_minute}
[identity.claims]
given_name = "given_name"
family_name = "family_name"
email = "email"
phone_number = "phone_number"
[identity.claims.ctmrinfo]
customerId = "customer_id"
ctype = "tier"
"#
    )
}

async fn world(login_attempts_per_minute: u32) -> Relay {
    let env = TestEnv::new();
    let config = relay_world::config(&env, "1h", "", &extra(login_attempts_per_minute));
    Relay::start_on(env, &config).await
}

/// Runs `scenarios` of tests/node/workspace-e2e.mjs against `relay`, with the agents it
/// needs; panics with the script's report when any fails.
async fn in_chromium(relay: &Relay, scenarios: &[&str], agents: &[&str]) {
    let mut passwords = Vec::new();
    for agent in agents {
        passwords.push((agent.to_string(), relay.add_agent(agent).await));
    }
    let ca = relay.env.ca.write(relay.env.path(), "e2e-ca");
    run_scenarios(BrowserRun {
        dir: relay.env.path(),
        port: relay.daemon.public.port(),
        config: &relay.env.path().join("brandgate.toml"),
        account: ACCOUNT,
        agents: &passwords,
        ca: Some(&ca),
        scenarios,
        extra: json!({}),
    })
    .await;
}

/// A run of tests/node/workspace-e2e.mjs: `scenarios` against the brandgate listening on
/// `port` (its config at `config`), with `extra` settings for the script.
struct BrowserRun<'a> {
    dir: &'a std::path::Path,
    port: u16,
    config: &'a std::path::Path,
    account: &'a str,
    agents: &'a [(String, String)],
    ca: Option<&'a std::path::Path>,
    scenarios: &'a [&'a str],
    extra: serde_json::Value,
}

async fn run_scenarios(run: BrowserRun<'_>) {
    let BrowserRun {
        dir,
        port,
        config,
        account,
        agents,
        ca,
        scenarios,
        extra,
    } = run;
    assert!(
        std::path::Path::new(CHROMIUM).exists(),
        "Debian's chromium is needed (tests/run.sh installs it)"
    );
    let screenshots =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/workspace-screenshots");
    std::fs::create_dir_all(&screenshots).unwrap();
    let file = dir.join("workspace-e2e.json");
    let mut settings = json!({
        "base": format!("https://localhost:{port}"),
        "chromium": CHROMIUM,
        "screenshots": screenshots,
        "brandgate": crate::support::daemon::binary(),
        "brandgateConfig": config,
        "account": account,
        "agents": agents
            .iter()
            .map(|(name, password)| (name.clone(), json!(password)))
            .collect::<serde_json::Map<String, serde_json::Value>>(),
        "backend": {"id": "crm", "secret": BACKEND_SECRET},
        "scenarios": scenarios,
    });
    if let (Some(all), Some(more)) = (settings.as_object_mut(), extra.as_object()) {
        all.extend(more.clone());
    }
    std::fs::write(&file, settings.to_string()).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/node/workspace-e2e.mjs");
    let mut command = tokio::process::Command::new("node");
    command
        .arg(script)
        .arg("--config")
        .arg(&file)
        .kill_on_drop(true);
    if let Some(ca) = ca {
        command.env("NODE_EXTRA_CA_CERTS", ca);
    }
    let out = tokio::time::timeout(std::time::Duration::from_secs(300), command.output())
        .await
        .expect("the browser scenarios did not finish within 5 minutes")
        .expect("node");
    let report = String::from_utf8_lossy(&out.stdout);
    for scenario in scenarios {
        assert!(
            report.contains(&format!("ok {scenario}\n")),
            "{scenario} in Chromium:\n{report}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(out.status.success(), "{report}");
}

/// The README's "Try it": the shipped config/try-it.toml as it is (only its ports and state
/// directory moved for the test), an agent added with the CLI, and the demo page chatting with
/// the workspace.
#[tokio::test]
async fn try_it_works_as_the_readme_says() {
    let env = TestEnv::new();
    let state = env.path().join("state");
    let try_it = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/try-it.toml");
    let overrides = [
        ("BRANDGATE_SERVER__LISTEN", "127.0.0.1:0"),
        ("BRANDGATE_OPS__LISTEN", "127.0.0.1:0"),
        ("BRANDGATE_SERVER__STATE_DIR", state.to_str().unwrap()),
    ];
    let password = "a-long-demo-password";
    let password_file = env.secret("ivan-password", password);
    let (code, out, err) = crate::support::daemon::run(
        &[
            "agents",
            "add",
            "--config",
            try_it.to_str().unwrap(),
            "--account",
            "demo",
            "--username",
            "ivan",
            "--password-file",
            password_file.to_str().unwrap(),
        ],
        &overrides,
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    let mut daemon = Daemon::start_with_config_file(env.path(), &try_it, &overrides).await;
    run_scenarios(BrowserRun {
        dir: env.path(),
        port: daemon.public.port(),
        config: &try_it,
        account: "demo",
        agents: &[("ivan".to_string(), password.to_string())],
        ca: None,
        scenarios: &["demo"],
        extra: json!({}),
    })
    .await;
    daemon.stop().await;
}

#[tokio::test]
async fn the_workspace_in_chromium() {
    let relay = world(1000).await;
    in_chromium(
        &relay,
        &[
            "conversation",
            "history",
            "xss",
            "crossSite",
            "reconnect",
            "revoked",
            "signinErrors",
            "demo",
        ],
        &[
            "alice", "bob", "carol", "dave", "erin", "frank", "grace", "ivan", "judy",
        ],
    )
    .await;
}

/// "Sign in with SSO" in Chromium: the brand's real OpenID provider on another site, and
/// back in the workspace, signed in; a refused person is told why on the sign-in page.
#[tokio::test]
async fn sign_in_with_sso_in_chromium() {
    use crate::support::idp::{Idp, UPSTREAM_SECRET, agents_client};
    // The provider must know the workspace's address before either runs.
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let mut env = TestEnv::new();
    env.listen = format!("127.0.0.1:{port}");
    let callback = format!("https://localhost:{port}/api/account/{ACCOUNT}/sso/oidc/callback");
    let client = agents_client("brandgate-agents", &callback);
    let people = json!({
        "zoe": {"preferred_username": "zoe", "groups": ["support"]},
        "mallory": {"preferred_username": "mallory", "groups": ["visitors"]},
    });
    let idp = Idp::start(&env, vec![client], people).await;
    let secret = env.secret("agents-client-secret", UPSTREAM_SECRET);
    let ca = env.ca.write(env.path(), "agents-idp-ca");
    let sso = format!(
        r#"
[relay.agents.sso]
name = "Brand SSO"
required_group = "support"
required = true
break_glass = ["ops"]
# zoe has a password too: linked to her identity at the provider on her first sign-in.
link_existing = true
[relay.agents.sso.oidc]
issuer = "{issuer}"
client_id = "brandgate-agents"
client_secret_file = "{secret}"
redirect_uri = "{callback}"
scopes = ["openid", "profile", "brand"]
extra_trust_anchors = ["{ca}"]
"#,
        issuer = idp.issuer,
        secret = secret.display(),
        ca = ca.display(),
    );
    let config = relay_world::config(&env, "1h", "", &format!("{}{sso}", extra(1000)));
    let relay = Relay::start_on(env, &config).await;
    relay.add_agent("mallory").await;
    let ca = relay.env.ca.write(relay.env.path(), "e2e-ca");
    run_scenarios(BrowserRun {
        dir: relay.env.path(),
        port: relay.daemon.public.port(),
        config: &relay.env.path().join("brandgate.toml"),
        account: ACCOUNT,
        agents: &[("zoe".to_string(), relay.add_agent("zoe").await)],
        ca: Some(&ca),
        scenarios: &["sso"],
        extra: json!({"sso": {
            "name": "Brand SSO",
            "issuer": idp.issuer,
            "login": "zoe",
            "refusedLogin": "mallory",
        }}),
    })
    .await;
}

/// The same sign-in through the brand's SAML provider (pysaml2) in Chromium.
#[tokio::test]
async fn sign_in_with_saml_in_chromium() {
    use crate::support::saml_idp::SamlIdp;
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let mut env = TestEnv::new();
    env.listen = format!("127.0.0.1:{port}");
    let people = json!({
        "yara": {"email": ["yara@brand.test"], "groups": ["support"]},
        "mallory": {"email": ["mallory@brand.test"], "groups": ["visitors"]},
    });
    let idp = SamlIdp::start(&env, people).await;
    let ca = env.ca.write(env.path(), "saml-idp-ca");
    let sso = format!(
        r#"
[relay.agents.sso]
name = "Brand SAML"
required_group = "support"
[relay.agents.sso.saml]
idp_metadata_url = "{metadata}"
metadata_trust_anchors = ["{ca}"]
acs_url = "https://localhost:{port}/api/account/{ACCOUNT}/sso/saml/acs"
"#,
        metadata = idp.metadata_url(),
        ca = ca.display(),
    );
    let config = relay_world::config(&env, "1h", "", &format!("{}{sso}", extra(1000)));
    let relay = Relay::start_on(env, &config).await;
    let sp_metadata = format!("/api/account/{ACCOUNT}/sso/saml/metadata");
    idp.import_sp_metadata(&relay.daemon.url(&sp_metadata))
        .await;
    relay.add_sso_only_agent("yara").await;
    relay.add_sso_only_agent("mallory").await;
    let ca = relay.env.ca.write(relay.env.path(), "e2e-ca");
    run_scenarios(BrowserRun {
        dir: relay.env.path(),
        port: relay.daemon.public.port(),
        config: &relay.env.path().join("brandgate.toml"),
        account: ACCOUNT,
        agents: &[],
        ca: Some(&ca),
        scenarios: &["saml"],
        extra: json!({"saml": {
            "name": "Brand SAML",
            "idp": idp.base,
            "login": "yara",
            "refusedLogin": "mallory",
        }}),
    })
    .await;
}

#[tokio::test]
async fn a_rate_limited_sign_in_says_how_long_to_wait() {
    let relay = world(30).await;
    in_chromium(&relay, &["rateLimit"], &["heidi"]).await;
}

/// The pages' files: their policy (no inline code, Trusted Types, no framing, the socket's
/// origin), the smallest encoding the browser takes, ETags that answer 304, and only what
/// exists.
#[tokio::test]
async fn workspace_files_are_served_with_their_policy_and_encodings() {
    let relay = world(1000).await;
    let client = relay.env.client();
    let url = |p: &str| relay.daemon.url(p);
    let page = client
        .get_with_headers(&url("/workspace/"), &[("accept-encoding", "gzip, br")])
        .await;
    assert_eq!(page.status, 200);
    assert_eq!(page.headers["content-encoding"], "br");
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    assert_eq!(page.headers["cache-control"], "no-cache");
    let csp = page.headers["content-security-policy"].to_str().unwrap();
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "require-trusted-types-for 'script'",
        &format!(
            "connect-src 'self' wss://127.0.0.1:{}",
            relay.daemon.public.port()
        ),
    ] {
        assert!(csp.contains(directive), "{directive} in {csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(page.headers["x-content-type-options"], "nosniff");
    assert_eq!(page.headers["referrer-policy"], "no-referrer");

    // As written for a client that takes no encoding, gzip for one that takes only that.
    let plain = client.get(&url("/workspace/js/app.js")).await;
    assert_eq!(plain.status, 200);
    assert!(plain.headers.get("content-encoding").is_none());
    assert_eq!(
        plain.headers["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert!(plain.body.contains("import"), "{}", &plain.body[..100]);
    let gz = client
        .get_with_headers(&url("/workspace/js/app.js"), &[("accept-encoding", "gzip")])
        .await;
    assert_eq!(gz.headers["content-encoding"], "gzip");
    // The ETag names the file, whatever the encoding: a revalidation gets 304.
    let etag = plain.headers["etag"].to_str().unwrap().to_string();
    assert_eq!(gz.headers["etag"], etag.as_str());
    let again = client
        .get_with_headers(&url("/workspace/js/app.js"), &[("if-none-match", &etag)])
        .await;
    assert_eq!(again.status, 304);
    assert!(again.body.is_empty());

    for (path, status) in [
        ("/workspace", 308),
        ("/workspace/nothing.js", 404),
        ("/workspace/../Cargo.toml", 404),
        ("/demo/", 200),
    ] {
        let a = client.get(&url(path)).await;
        assert_eq!(a.status, status, "{path}");
    }
    let config = client.get(&url("/workspace/config.json")).await.json();
    assert_eq!(config["account"], ACCOUNT);

    // Without [relay.demo], no demo page.
    let env = TestEnv::new();
    let plain_relay = relay_world::config(&env, "1h", "", "");
    let other = Relay::start_on(env, &plain_relay).await;
    let a = Client::new(&other.env.ca.cert_pem)
        .send(
            Method::GET,
            &other.daemon.url("/demo/"),
            &[],
            bytes::Bytes::new(),
        )
        .await;
    assert_eq!(a.status, 404);
}
