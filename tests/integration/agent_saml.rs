//! Agents' SAML 2.0 sign-in against a real identity provider (Debian's pysaml2, signing with
//! the xmlsec1 CLI): brandgate's start sends an AuthnRequest the provider parses and checks,
//! the provider reads brandgate's SP metadata and answers with a signed Response, brandgate's
//! ACS checks it and starts the same session a password login gives. Every forged or
//! misdirected answer — made from the provider's real output by lxml and xmlsec1, never by
//! brandgate — is refused with the reason of the check that caught it, and the genuine answer
//! still works afterwards (a refusal spends nothing).

use base64::Engine;
use serde_json::json;

use crate::support::TestEnv;
use crate::support::client::{Answer, Client};
use crate::support::daemon::run;
use crate::support::relay_world::{ACCOUNT, Relay, config};
use crate::support::saml_idp::{IDP_ENTITY, SamlIdp, attacks, rsa_key_pair};

const SAML_COOKIE: &str = "__Host-brandgate-saml";
const SESSION_COOKIE: &str = "__Host-brandgate_agent";

fn acs() -> String {
    format!("https://brandgate.test/api/account/{ACCOUNT}/sso/saml/acs")
}

async fn provider(env: &TestEnv) -> SamlIdp {
    let users = json!({
        "ann": {"email": ["ann@brand.test"], "groups": ["support", "staff"]},
        "bob": {"email": ["bob@brand.test"], "groups": ["sales"]},
        "dan": {"email": ["dan@brand.test"], "groups": ["support"]},
    });
    SamlIdp::start(env, users).await
}

/// A relay whose agents sign in at `idp` (metadata from its URL, TLS pinned to the test CA);
/// `saml_extra` goes in `[relay.agents.sso.saml]`. Writes brandgate's SP metadata where the
/// provider reads it.
async fn relay(env: TestEnv, idp: &SamlIdp, agents_extra: &str, saml_extra: &str) -> Relay {
    relay_with(env, idp, agents_extra, "", saml_extra).await
}

/// [`relay`], with `sso_extra` in `[relay.agents.sso]`.
async fn relay_with(
    env: TestEnv,
    idp: &SamlIdp,
    agents_extra: &str,
    sso_extra: &str,
    saml_extra: &str,
) -> Relay {
    let ca = env.ca.write(env.path(), "saml-idp-ca");
    let relay_extra = format!(
        r#"requests_per_second = 1000
[relay.agents]
{agents_extra}
[relay.agents.sso]
required_group = "support"
{sso_extra}
[relay.agents.sso.saml]
idp_metadata_url = "{url}"
metadata_trust_anchors = ["{ca}"]
{saml_extra}
"#,
        url = idp.metadata_url(),
        ca = ca.display(),
    );
    let config = config(&env, "1h", "", &relay_extra);
    let relay = Relay::start_on(env, &config).await;
    let metadata = format!("/api/account/{ACCOUNT}/sso/saml/metadata");
    idp.import_sp_metadata(&relay.daemon.url(&metadata)).await;
    relay
}

/// brandgate's start: the browser's SAML cookie and where it is sent (the provider).
async fn begin(relay: &Relay) -> (String, String) {
    begin_with(relay, &relay.env.client()).await
}

async fn begin_with(relay: &Relay, client: &Client) -> (String, String) {
    let a = client
        .get(
            &relay
                .daemon
                .url(&format!("/api/account/{ACCOUNT}/sso/saml")),
        )
        .await;
    assert_eq!(a.status, 303, "{}", a.body);
    let set = a.headers["set-cookie"].to_str().unwrap();
    assert!(
        set.contains("Secure") && set.contains("HttpOnly") && set.contains("SameSite=None"),
        "{set}"
    );
    let cookie = set.split(';').next().unwrap().to_string();
    assert!(cookie.starts_with(&format!("{SAML_COOKIE}=")), "{cookie}");
    let location = a.headers["location"].to_str().unwrap().to_string();
    (cookie, location)
}

/// Posts an answer to the ACS as the provider's form would, from the browser with `cookie`.
async fn post(relay: &Relay, cookie: Option<&str>, xml: &str) -> Answer {
    post_with(relay, &relay.env.client(), cookie, xml).await
}

async fn post_with(relay: &Relay, client: &Client, cookie: Option<&str>, xml: &str) -> Answer {
    let encoded = base64::engine::general_purpose::STANDARD.encode(xml);
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("SAMLResponse", &encoded)
        .append_pair("RelayState", "")
        .finish();
    let mut headers = vec![("content-type", "application/x-www-form-urlencoded")];
    if let Some(c) = cookie {
        headers.push(("cookie", c));
    }
    client
        .send(
            http::Method::POST,
            &relay
                .daemon
                .url(&format!("/api/account/{ACCOUNT}/sso/saml/acs")),
            &headers,
            bytes::Bytes::from(form),
        )
        .await
}

/// A whole sign-in of `user`, the answer signed as `sign` says: brandgate's answer.
async fn sign_in(relay: &Relay, idp: &SamlIdp, user: &str, sign: &str) -> Answer {
    let (cookie, location) = begin(relay).await;
    let (action, xml) = idp.answer(&location, user, sign).await;
    assert_eq!(
        action,
        acs(),
        "the provider posts to the ACS in our metadata"
    );
    post(relay, Some(&cookie), &xml).await
}

/// The session cookie and CSRF token of a successful sign-in.
fn session(a: &Answer) -> (String, String) {
    assert_eq!(a.status, 303, "{}", a.body);
    let location = a.headers["location"].to_str().unwrap();
    let csrf = location
        .strip_prefix("/workspace/#csrf=")
        .unwrap_or_else(|| panic!("landed at {location}"))
        .to_string();
    let cookie = a
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .find(|c| c.starts_with(SESSION_COOKIE))
        .expect("a session cookie")
        .split(';')
        .next()
        .unwrap()
        .to_string();
    (cookie, csrf)
}

/// The reason of a refusal answered as JSON.
fn reason(a: &Answer) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&a.body).unwrap_or_else(|_| panic!("not JSON: {}", a.body));
    v["error"]
        .as_str()
        .or(v["reason"].as_str())
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn an_agent_signs_in_with_saml_and_works_as_after_a_password_login() {
    let env = TestEnv::new();
    let idp = provider(&env).await;
    let mut relay = relay(env, &idp, "", "").await;
    relay.add_sso_only_agent("ann").await;
    relay.add_sso_only_agent("bob").await;

    // The request the provider parsed named our ACS and entity; it answered there.
    let a = sign_in(&relay, &idp, "ann", "assertion").await;
    let (cookie, csrf) = session(&a);
    let client = relay.env.client();
    let with_cookie = [("cookie", cookie.as_str()), ("x-csrf-token", csrf.as_str())];
    let w = client
        .get_with_headers(&relay.daemon.url("/api/v1/workspace"), &with_cookie)
        .await;
    assert_eq!(w.status, 200, "{}", w.body);
    assert_eq!(w.json()["username"], "ann");

    // A signed Response (its assertion unsigned), and both signed: the same session.
    for sign in ["response", "both"] {
        let a = sign_in(&relay, &idp, "ann", sign).await;
        session(&a);
    }
    // Not in the required group (from the `groups` attribute).
    let a = sign_in(&relay, &idp, "bob", "assertion").await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(reason(&a).contains("group"), "{}", a.body);
    // Someone the provider knows but the account does not.
    let a = sign_in(&relay, &idp, "dan", "assertion").await;
    assert_eq!(a.status, 403, "{}", a.body);

    // A transient NameID names nobody for good: no agent is linked to it.
    let (cookie, location) = begin(&relay).await;
    let transient = format!("{location}&nameid=transient");
    let (_, xml) = idp.answer(&transient, "ann", "assertion").await;
    assert!(xml.contains("nameid-format:transient"), "{xml}");
    let a = post(&relay, Some(&cookie), &xml).await;
    assert_eq!(a.status, 400, "{}", a.body);
    assert!(
        reason(&a).contains("subject: no lasting name"),
        "{}",
        a.body
    );

    // A replayed answer (the same assertion again) is refused by the replay cache.
    let (cookie, location) = begin(&relay).await;
    let (_, xml) = idp.answer(&location, "ann", "assertion").await;
    session(&post(&relay, Some(&cookie), &xml).await);
    let again = post(&relay, Some(&cookie), &xml).await;
    assert_eq!(again.status, 400, "{}", again.body);
    assert!(reason(&again).contains("replay"), "{}", again.body);

    // An answer brought by another browser (without the request's cookie, or with another
    // browser's) finds no request.
    let other_browser = format!("{SAML_COOKIE}=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    // Brought there, it spends nothing: its own browser still signs in with it.
    for cookie in [None, Some(other_browser.as_str())] {
        let (own, location) = begin(&relay).await;
        let (_, xml) = idp.answer(&location, "ann", "assertion").await;
        let a = post(&relay, cookie, &xml).await;
        assert_eq!(a.status, 400, "{}", a.body);
        assert!(reason(&a).contains("another browser"), "{}", a.body);
        session(&post(&relay, Some(&own), &xml).await);
    }

    let (log, store) = relay.stop_and_open_store().await;
    let rows: Vec<(String, String, Option<String>)> = store
        .list_agent_audit(ACCOUNT, 100)
        .await
        .unwrap()
        .into_iter()
        .rev()
        .map(|r| (r.outcome, r.username, r.via))
        .collect();
    let via = |who: &str| Some(format!("saml {IDP_ENTITY} {who:?}"));
    let provider = Some(format!("saml {IDP_ENTITY}"));
    let row = |o: &str, u: &str, v: Option<String>| (o.to_string(), u.to_string(), v);
    assert_eq!(
        rows,
        [
            row("added", "ann", None),
            row("added", "bob", None),
            row("success", "ann", via("ann")),
            row("success", "ann", via("ann")),
            row("success", "ann", via("ann")),
            row("sso_not_in_group", "bob", via("bob")),
            row("unknown_username", "dan", via("dan")),
            row("sso_invalid_response", "", provider.clone()),
            row("success", "ann", via("ann")),
            row("sso_invalid_response", "", provider),
            row("success", "ann", via("ann")),
            row("success", "ann", via("ann")),
        ]
    );
    assert!(log.contains("agent signed in with single sign-on"), "{log}");
    assert!(
        !log.contains("SAMLResponse") && !log.contains("<saml:Assertion"),
        "{log}"
    );
}

#[tokio::test]
async fn every_forged_or_misdirected_answer_is_refused_for_its_own_reason() {
    let env = TestEnv::new();
    let idp = provider(&env).await;
    let relay = relay(env, &idp, "", "").await;
    relay.add_sso_only_agent("ann").await;
    let (cookie, location) = begin(&relay).await;
    let (_, genuine) = idp.answer(&location, "ann", "assertion").await;
    let (cookie_r, location_r) = begin(&relay).await;
    let (_, genuine_r) = idp.answer(&location_r, "ann", "response").await;
    let fixtures = attacks(&relay.env, &idp, &genuine, &genuine_r);

    let expected = [
        (
            "other-audience.xml",
            400,
            "audience: the assertion is not for this service provider",
        ),
        (
            "no-audience.xml",
            400,
            "audience: the assertion is not for this service provider",
        ),
        (
            "other-recipient.xml",
            400,
            "recipient: the bearer confirmation is not for this service's ACS URL",
        ),
        (
            "other-destination.xml",
            400,
            "destination: the answer is not addressed to this service's ACS URL",
        ),
        (
            "other-issuer.xml",
            400,
            "issuer: the answer is not from the configured provider",
        ),
        ("expired.xml", 400, "time: the assertion has expired"),
        (
            "not-yet-valid.xml",
            400,
            "time: the assertion is not valid yet",
        ),
        (
            "confirmation-expired.xml",
            400,
            "time: the bearer confirmation has expired",
        ),
        (
            "status-responder.xml",
            403,
            "status: the provider did not sign the agent in (Responder)",
        ),
        (
            "unknown-in-response-to.xml",
            400,
            "this sign-in is unknown, expired, already finished",
        ),
        (
            "in-response-to-differs.xml",
            400,
            "in-response-to: the answer's request and its assertion's differ",
        ),
        (
            "unsolicited.xml",
            400,
            "unsolicited: the answer is for no request of ours",
        ),
        (
            "wrong-key.xml",
            400,
            "signature: not valid with the provider's certificate",
        ),
        (
            "sha1.xml",
            400,
            "algorithm: \"http://www.w3.org/2000/09/xmldsig#rsa-sha1\" is not allowed",
        ),
        ("unsigned.xml", 400, "signature: the answer is not signed"),
        (
            "response-signed-assertion-swapped.xml",
            400,
            "signature: not valid with the provider's certificate",
        ),
        ("comment-injection.xml", 400, "a comment or CDATA"),
        (
            "xsw-signed-moved-to-extensions.xml",
            400,
            "shape: extensions and advice are refused",
        ),
        (
            "xsw-duplicate-id.xml",
            400,
            "shape: two elements have the same ID",
        ),
        (
            "xsw-forged-inside-signature.xml",
            400,
            "shape: the response must hold exactly one assertion",
        ),
        (
            "xsw-second-unsigned-assertion.xml",
            400,
            "shape: the response must hold exactly one assertion",
        ),
        (
            "xsw-signed-nested-in-forgery.xml",
            400,
            "shape: the response must hold exactly one assertion",
        ),
        ("xxe.xml", 400, "the XML has a DTD, an entity"),
        (
            "utf7-declaration.xml",
            400,
            "the XML declaration must be version 1.0 in UTF-8",
        ),
        ("billion-laughs.xml", 400, "the XML has a DTD, an entity"),
    ];
    let mut names: Vec<&str> = fixtures.keys().map(String::as_str).collect();
    names.sort_unstable();
    let mut listed: Vec<&str> = expected.iter().map(|(n, _, _)| *n).collect();
    listed.sort_unstable();
    assert_eq!(names, listed, "every fixture has its expected refusal");
    for (name, status, why) in expected {
        let a = post(&relay, Some(&cookie), &fixtures[name]).await;
        assert_eq!(a.status, status, "{name}: {}", a.body);
        assert!(reason(&a).contains(why), "{name}: {}", a.body);
    }

    // Nothing was spent: the genuine answers still sign ann in, once each.
    session(&post(&relay, Some(&cookie), &genuine).await);
    session(&post(&relay, Some(&cookie_r), &genuine_r).await);
}

#[tokio::test]
async fn the_providers_metadata_must_be_pinned_and_signed() {
    let env = TestEnv::new();
    let idp = provider(&env).await;
    let base = config(&env, "1h", "", "");
    let check = |saml: String| {
        let config = format!("{base}\n[relay.agents.sso]\n[relay.agents.sso.saml]\n{saml}\n");
        let path = env.file("check.toml", &config);
        async move { run(&["check-config", "--config", path.to_str().unwrap()], &[]).await }
    };
    // Metadata without a signing certificate: some libraries then skip the check; refused.
    let metadata = idp.metadata().await;
    let start = metadata
        .find("<md:KeyDescriptor")
        .or_else(|| metadata.find("<ns0:KeyDescriptor"));
    let unsigned = match start {
        Some(from) => {
            let end_tag = if metadata[from..].starts_with("<md:") {
                "</md:KeyDescriptor>"
            } else {
                "</ns0:KeyDescriptor>"
            };
            let to = metadata[from..].find(end_tag).unwrap() + from + end_tag.len();
            format!("{}{}", &metadata[..from], &metadata[to..])
        }
        None => panic!("no KeyDescriptor in {metadata}"),
    };
    let file = env.file("idp-unsigned.xml", &unsigned);
    let (code, out, err) = check(format!("idp_metadata_file = \"{}\"", file.display())).await;
    assert_eq!(code, 78, "{out}{err}");
    assert!(
        err.contains("relay.agents.sso.saml.idp_metadata_file")
            && err.contains("no signing certificate"),
        "{err}"
    );
    // The genuine metadata file passes; pinned to another certificate, it does not.
    let file = env.file("idp.xml", &metadata);
    let (code, out, err) = check(format!("idp_metadata_file = \"{}\"", file.display())).await;
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, err) = check(format!(
        "idp_metadata_file = \"{}\"\nidp_cert_sha256 = [\"{}\"]",
        file.display(),
        "ab".repeat(32)
    ))
    .await;
    assert_eq!(code, 78);
    assert!(
        err.contains("no signing certificate matches idp_cert_sha256"),
        "{err}"
    );
    let (code, _, err) =
        check("idp_metadata_url = \"http://idp.brand.test/metadata\"".into()).await;
    assert_eq!(code, 78);
    assert!(
        err.contains("relay.agents.sso.saml.idp_metadata_url") && err.contains("https"),
        "{err}"
    );
    // Metadata from a URL needs a pin: the provider's CA or its signing certificates.
    let url = format!("idp_metadata_url = \"{}\"", idp.metadata_url());
    let (code, _, err) = check(url.clone()).await;
    assert_eq!(code, 78);
    assert!(
        err.contains("needs metadata_trust_anchors (the provider's CA) or idp_cert_sha256"),
        "{err}"
    );
    let pinned = format!("{url}\nidp_cert_sha256 = [\"{}\"]", "ab".repeat(32));
    let (code, out, err) = check(pinned).await;
    assert_eq!(code, 0, "{out}{err}");

    // The metadata URL's TLS is pinned to the configured CA only: another CA's server is not
    // believed, and no sign-in starts.
    let (_, other_ca_cert) = rsa_key_pair(env.path(), "unrelated-ca");
    let relay_extra = format!(
        r#"[relay.agents.sso]
[relay.agents.sso.saml]
idp_metadata_url = "{url}"
metadata_trust_anchors = ["{ca}"]
"#,
        url = idp.metadata_url(),
        ca = other_ca_cert.display(),
    );
    let config = config(&env, "1h", "", &relay_extra);
    let relay = Relay::start_on(env, &config).await;
    let a = relay
        .env
        .client()
        .get(
            &relay
                .daemon
                .url(&format!("/api/account/{ACCOUNT}/sso/saml")),
        )
        .await;
    assert_eq!(a.status, 502, "{}", a.body);
    assert!(reason(&a).contains("cannot be reached"), "{}", a.body);
}

#[tokio::test]
async fn saml_from_outside_the_allowed_networks_is_refused_before_anything_is_read() {
    let env = TestEnv::new();
    let idp = provider(&env).await;
    let relay = relay(env, &idp, "allowed_networks = [\"127.0.0.2/32\"]", "").await;
    relay.add_sso_only_agent("ann").await;
    let inside = relay.env.client_from("127.0.0.2".parse().unwrap());
    let outside = relay.env.client();
    let start = relay
        .daemon
        .url(&format!("/api/account/{ACCOUNT}/sso/saml"));
    let a = outside.get(&start).await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(reason(&a).contains("network"), "{}", a.body);
    // An answer started inside and brought from outside is refused, and spends nothing.
    let (cookie, location) = begin_with(&relay, &inside).await;
    let (_, xml) = idp.answer(&location, "ann", "assertion").await;
    let a = post_with(&relay, &outside, Some(&cookie), &xml).await;
    assert_eq!(a.status, 403, "{}", a.body);
    assert!(reason(&a).contains("network"), "{}", a.body);
    let a = post_with(&relay, &inside, Some(&cookie), &xml).await;
    let (session_cookie, csrf) = session(&a);
    // The session made inside is useless outside.
    let with_cookie = [
        ("cookie", session_cookie.as_str()),
        ("x-csrf-token", csrf.as_str()),
    ];
    let workspace = relay.daemon.url("/api/v1/workspace");
    assert_eq!(
        inside
            .get_with_headers(&workspace, &with_cookie)
            .await
            .status,
        200
    );
    assert_eq!(
        outside
            .get_with_headers(&workspace, &with_cookie)
            .await
            .status,
        403
    );
}

/// Two nodes on one PostgreSQL, as behind a load balancer: a sign-in started on one finishes
/// on the other, and its answer replayed to the first is refused there.
#[tokio::test]
async fn a_sign_in_finishes_on_any_node_and_its_replay_fails_on_every_node() {
    let Some(db) = crate::support::postgres::Database::create().await else {
        return;
    };
    let keys = crate::support::identity_world::data_key_line("k1");
    let first = TestEnv::new();
    let idp = provider(&first).await;
    let ca = first.ca.write(first.path(), "saml-idp-ca");
    let node_config = |env: &TestEnv, name: &str| {
        let keys = env.secret("data-keys", &keys);
        env.config(&format!(
            r#"
[store]
data_keys_file = "{keys}"
url = "{url}?application_name={name}"
[identity]
issuer = "https://brandgate.test"
[relay]
account = "{ACCOUNT}"
requests_per_second = 1000
[relay.agents.sso]
[relay.agents.sso.saml]
idp_metadata_url = "{metadata}"
metadata_trust_anchors = ["{ca}"]
"#,
            keys = keys.display(),
            url = db.url,
            metadata = idp.metadata_url(),
            ca = ca.display(),
        ))
    };
    let config_a = node_config(&first, "node-a");
    let a = Relay::start_on(first, &config_a).await;
    let second = TestEnv::new();
    let config_b = node_config(&second, "node-b");
    let b = Relay::start_on(second, &config_b).await;
    let metadata = format!("/api/account/{ACCOUNT}/sso/saml/metadata");
    idp.import_sp_metadata(&a.daemon.url(&metadata)).await;
    a.add_sso_only_agent("ann").await;

    let (cookie, location) = begin(&a).await;
    let (_, xml) = idp.answer(&location, "ann", "assertion").await;
    session(&post(&b, Some(&cookie), &xml).await);
    let again = post(&a, Some(&cookie), &xml).await;
    assert_eq!(again.status, 400, "{}", again.body);
    assert!(reason(&again).contains("replay"), "{}", again.body);
}

#[tokio::test]
async fn the_username_comes_from_the_configured_attribute_and_new_faces_can_be_created() {
    let env = TestEnv::new();
    let idp = provider(&env).await;
    let mut relay = relay_with(
        env,
        &idp,
        "",
        "create_agents = true",
        "username_attribute = \"email\"",
    )
    .await;
    // Nobody was added: ann (in the required group) becomes the agent named by her email
    // (released by the provider as FriendlyName "email"); bob (not in it) does not.
    let a = sign_in(&relay, &idp, "ann", "assertion").await;
    let (cookie, csrf) = session(&a);
    let with_cookie = [("cookie", cookie.as_str()), ("x-csrf-token", csrf.as_str())];
    let w = relay
        .env
        .client()
        .get_with_headers(&relay.daemon.url("/api/v1/workspace"), &with_cookie)
        .await;
    assert_eq!(w.json()["username"], "ann@brand.test", "{}", w.body);
    let a = sign_in(&relay, &idp, "bob", "assertion").await;
    assert_eq!(a.status, 403, "{}", a.body);
    let (_, store) = relay.stop_and_open_store().await;
    let agents: Vec<String> = store
        .list_agents(ACCOUNT)
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.username)
        .collect();
    assert_eq!(agents, ["ann@brand.test"]);
}

#[tokio::test]
async fn answers_nobody_asked_for_are_taken_only_when_allowed_and_only_once() {
    let env = TestEnv::new();
    let idp = provider(&env).await;
    let relay = relay(env, &idp, "", "allow_idp_initiated = true").await;
    relay.add_sso_only_agent("ann").await;
    // An answer sent unasked: the provider's real answer with its request taken out, signed
    // again with the provider's key (attacks.py's unsolicited.xml).
    let (_, location) = begin(&relay).await;
    let (_, genuine) = idp.answer(&location, "ann", "assertion").await;
    let (_, location_r) = begin(&relay).await;
    let (_, genuine_r) = idp.answer(&location_r, "ann", "response").await;
    let fixtures = attacks(&relay.env, &idp, &genuine, &genuine_r);
    let unsolicited = &fixtures["unsolicited.xml"];
    session(&post(&relay, None, unsolicited).await);
    // Nothing ties it to a browser or a request: only the replay cache stops it twice.
    let again = post(&relay, None, unsolicited).await;
    assert_eq!(again.status, 400, "{}", again.body);
    assert!(reason(&again).contains("replay"), "{}", again.body);
}

/// With `[relay.egress]` naming a proxy (a real tinyproxy), the provider's metadata is fetched
/// through it (its only tunnels are to the provider), and agents sign in as they do directly.
#[tokio::test]
async fn the_providers_metadata_is_fetched_through_the_relay_roles_proxy() {
    use crate::support::proxy::{Proxy, ProxyRules, authority};
    let env = TestEnv::new();
    let idp = provider(&env).await;
    let mut proxy = Proxy::start(env.path(), ProxyRules::default()).await;
    let egress = format!("[relay.egress]\nproxy = \"{}\"\n", proxy.url());
    let relay = relay(env, &idp, "", &egress).await;
    relay.add_sso_only_agent("ann").await;
    let a = sign_in(&relay, &idp, "ann", "assertion").await;
    session(&a);

    proxy
        .stop_expecting_tunnels_only_to(&authority(&idp.metadata_url()))
        .await;
}
