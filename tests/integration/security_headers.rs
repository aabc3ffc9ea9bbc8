//! Every answer of the public listener carries the security headers, whichever role made it
//! and whatever its status: HTML pages of the login, JSON of every role, the fallbacks, and a
//! refused WebSocket upgrade. Without them the login's pages could be framed by another site
//! and answers sniffed as another type.

use bytes::Bytes;
use http::Method;
use serde_json::json;

use crate::support::client::{Answer, basic};
use crate::support::identity_world::{APP_CALLBACK, PLATFORM_CLIENT, World, enc};
use crate::support::relay_world::{ACCOUNT, Relay};

/// The headers every answer must carry.
fn assert_secure(name: &str, a: &Answer) {
    let header = |h: &str| {
        a.headers
            .get(h)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_else(|| panic!("{name} ({}): no {h}", a.status))
            .to_string()
    };
    assert_eq!(header("x-content-type-options"), "nosniff", "{name}");
    assert_eq!(header("x-frame-options"), "DENY", "{name}");
    assert_eq!(header("referrer-policy"), "no-referrer", "{name}");
    assert!(
        header("strict-transport-security").starts_with("max-age="),
        "{name}"
    );
    let csp = header("content-security-policy");
    assert!(csp.contains("frame-ancestors 'none'"), "{name}: {csp}");
    assert!(csp.contains("default-src 'none'"), "{name}: {csp}");
}

#[tokio::test]
async fn every_identity_answer_carries_the_security_headers() {
    let w = World::start("", "", "").await;
    let c = w.env.client();
    let url = |p: &str| w.daemon.url(p);
    let login = format!(
        "/login?client_id={PLATFORM_CLIENT}&redirect_uri={}&state=s",
        enc(APP_CALLBACK)
    );
    let cases = [
        (
            "discovery",
            c.get(&url("/.well-known/openid-configuration")).await,
            200,
        ),
        ("jwks", c.get(&url("/.well-known/jwks.json")).await, 200),
        ("pem", c.get(&url("/identity/v1/public-key.pem")).await, 200),
        ("login redirect", c.get(&url(&login)).await, 303),
        (
            "login page 400",
            c.get(&url("/login?client_id=nobody")).await,
            400,
        ),
        (
            "callback page 400",
            c.get(&url("/callback?state=unknown&code=x")).await,
            400,
        ),
        (
            "token 401",
            c.send(
                Method::POST,
                &url("/oauth/token"),
                &[
                    ("content-type", "application/x-www-form-urlencoded"),
                    ("authorization", &basic(PLATFORM_CLIENT, "wrong")),
                ],
                Bytes::from_static(b"grant_type=authorization_code&code=x"),
            )
            .await,
            401,
        ),
        (
            "backend token 401",
            c.post_json(&url("/identity/v1/token"), &[], &json!({"subject": "x"}))
                .await,
            401,
        ),
        ("fallback 404", c.get(&url("/nowhere")).await, 404),
        (
            "fallback 405",
            c.send(
                Method::DELETE,
                &url("/.well-known/jwks.json"),
                &[],
                Bytes::new(),
            )
            .await,
            405,
        ),
        (
            "push 404",
            c.post_json(&url("/push/no.such.app"), &[], &json!({}))
                .await,
            404,
        ),
    ];
    for (name, answer, status) in cases {
        assert_eq!(answer.status, status, "{name}: {}", answer.body);
        assert_secure(name, &answer);
    }
}

#[tokio::test]
async fn every_relay_answer_carries_the_security_headers() {
    let relay = Relay::start("1h").await;
    let c = relay.env.client();
    let url = |p: &str| relay.daemon.url(p);
    let cases = [
        (
            "signup",
            c.send(Method::POST, &url("/identity/v1/signup"), &[], Bytes::new())
                .await,
            200,
        ),
        (
            "history 401",
            c.get(&url("/api/v1/conversations/x/events")).await,
            401,
        ),
        (
            "conversations 401",
            c.get(&url("/api/v1/conversations")).await,
            401,
        ),
        (
            "registrations 401",
            c.get(&url("/api/v1/push-registrations")).await,
            401,
        ),
        (
            "agent login 401",
            c.post_json(
                &url(&format!("/api/account/{ACCOUNT}/login")),
                &[],
                &json!({"username": "nobody", "password": "wrong-password"}),
            )
            .await,
            401,
        ),
        (
            "websocket upgrade refused",
            crate::support::client::Client::http1(&relay.env.ca.cert_pem)
                .send(
                    Method::GET,
                    &url("/ws/consumer"),
                    &[
                        ("authorization", "jwt not-a-token"),
                        ("connection", "upgrade"),
                        ("upgrade", "websocket"),
                        ("sec-websocket-version", "13"),
                        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                    ],
                    Bytes::new(),
                )
                .await,
            401,
        ),
    ];
    for (name, answer, status) in cases {
        assert_eq!(answer.status, status, "{name}: {}", answer.body);
        assert_secure(name, &answer);
    }
}
