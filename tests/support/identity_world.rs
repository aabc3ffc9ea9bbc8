//! One identity-bridge world for tests and benchmarks: the real OpenID provider, brandgate
//! configured against it (a code-flow client with two app callbacks, a claim mapping), and the
//! platform's side of the code flow.

use bytes::Bytes;
use http::Method;
use serde_json::{Value, json};

use super::TestEnv;
use super::client::{Answer, Client, basic};
use super::daemon::Daemon;
use super::idp::{BRANDGATE_ISSUER, Browser, Idp, Landing, url_params};
use super::jose::{self, Key};

pub const APP_CALLBACK: &str = "com.brand.app://callback";
pub const WEB_CALLBACK: &str = "https://www.brand.example/chat/callback";
pub const PLATFORM_CLIENT: &str = "platform";
pub const PLATFORM_SECRET: &str = "pl@tform code-flow s3cret";

/// A PKCE verifier and its S256 challenge, computed outside brandgate (Python's hashlib:
/// base64url(sha256(verifier)) without padding).
pub const VERIFIER: &str = "dBjftJeZ4CVP-mJ92IXZnHS2jKdZHDv1vHVzZoSTj7o";
pub const CHALLENGE: &str = "aEgdsOzk-rqDZd-qeJD-h5nRf-RQXyWHSOF8L5NBSzk";

/// The provider, brandgate configured against it, and a browser.
pub struct World {
    pub env: TestEnv,
    pub idp: Idp,
    pub daemon: Daemon,
    /// The platform's client: one, so its calls share connections.
    pub platform: Client,
}

/// Accounts at the provider: alice has a profile and brand attributes.
pub fn accounts() -> Value {
    json!({
        "alice": {
            "email": "alice@example.test",
            "given_name": "Alice",
            "family_name": "Liddell",
            "customer_tier": "gold",
            "customer_id": "C-4711",
        }
    })
}

impl World {
    /// `identity_extra` goes in `[identity]`, `upstream_extra` in `[identity.upstream]`,
    /// `rest` after everything (more sections).
    pub async fn start(identity_extra: &str, upstream_extra: &str, rest: &str) -> World {
        Self::start_in(TestEnv::new(), "", identity_extra, upstream_extra, rest).await
    }

    /// As [`World::start`], in `env`, with `tls_extra` in `[server.tls]`.
    pub async fn start_in(
        env: TestEnv,
        tls_extra: &str,
        identity_extra: &str,
        upstream_extra: &str,
        rest: &str,
    ) -> World {
        let idp = Idp::start(&env, vec![], accounts()).await;
        let keys = env.secret("data-keys", &data_key_line("k1"));
        let client_secret = env.secret("platform-secret", &format!("{PLATFORM_SECRET}\n"));
        let config = env.base_config_with_tls(tls_extra)
            + &format!(
                r#"
[store]
data_keys_file = "{keys}"
[identity]
issuer = "{BRANDGATE_ISSUER}"
audience = "platform-audience"
token_lifetime = "10m"
{identity_extra}
{upstream}
[identity.claims]
given_name = "given_name"
family_name = "family_name"
email = "email"
phone_number = "phone_number"
preferred_username = "preferred_username"
[identity.claims.ctmrinfo]
ctype = "customer_tier"
customerId = "customer_id"
[identity.claims.personal]
firstname = "given_name"
lastname = "family_name"
email = "email"
[[identity.clients]]
id = "{PLATFORM_CLIENT}"
secret_file = "{secret}"
redirect_uris = ["{APP_CALLBACK}", "{WEB_CALLBACK}"]
implicit = true
{rest}
"#,
                keys = keys.display(),
                upstream = idp.upstream_config(&env, upstream_extra),
                secret = client_secret.display(),
            );
        let daemon = Daemon::start(env.path(), &config).await;
        // The provider's metadata and keys are read in the background after start: tests
        // that change the provider's keys must come after that first read.
        daemon.wait_log("read the login provider's metadata").await;
        let platform = env.client();
        World {
            env,
            idp,
            daemon,
            platform,
        }
    }

    pub fn browser(&self) -> Browser {
        Browser::new(&self.env, &self.daemon.url(""), &self.idp)
    }

    /// A full login of `who` for the app callback, PKCE from the app; the code it returns.
    pub async fn login_for_code(&self, browser: &mut Browser, who: &str) -> String {
        let query = format!(
            "client_id={PLATFORM_CLIENT}&redirect_uri={}&state=app-state-1&code_challenge={CHALLENGE}&code_challenge_method=S256",
            enc(APP_CALLBACK)
        );
        match browser.login(&query, who).await {
            Landing::App(url) => {
                assert!(url.starts_with(APP_CALLBACK), "{url}");
                let p = url_params(&url);
                assert_eq!(p["state"], "app-state-1", "the app's state comes back");
                p["code"].clone()
            }
            Landing::Page(page) => panic!("login ended on a page: {} {}", page.status, page.body),
        }
    }

    /// The platform's token call: form-encoded, client auth by HTTP Basic.
    pub async fn exchange(&self, code: &str, redirect_uri: &str, verifier: Option<&str>) -> Answer {
        let mut form = format!(
            "grant_type=authorization_code&code={}&redirect_uri={}",
            enc(code),
            enc(redirect_uri)
        );
        if let Some(v) = verifier {
            form.push_str(&format!("&code_verifier={v}"));
        }
        self.token_call(&form, Some((PLATFORM_CLIENT, PLATFORM_SECRET)))
            .await
    }

    pub async fn token_call(&self, form: &str, basic_auth: Option<(&str, &str)>) -> Answer {
        let auth = basic_auth.map(|(u, p)| basic(&enc(u), &enc(p)));
        let mut headers = vec![("content-type", "application/x-www-form-urlencoded")];
        if let Some(a) = &auth {
            headers.push(("authorization", a.as_str()));
        }
        self.platform
            .send(
                Method::POST,
                &self.daemon.url("/oauth/token"),
                &headers,
                Bytes::from(form.to_string()),
            )
            .await
    }

    pub async fn jwks(&self) -> Value {
        self.env
            .client()
            .get(&self.daemon.url("/.well-known/jwks.json"))
            .await
            .json()
    }

    /// What jose says of a token brandgate minted, against brandgate's JWKS.
    pub async fn verify(&self, token: &str) -> Result<Value, String> {
        let set = self.jwks().await;
        jose::verify(
            token,
            Key::Jwks(&set),
            Some(BRANDGATE_ISSUER),
            Some("platform-audience"),
        )
        .await
    }
}

pub fn enc(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// A line of a data-key file: `<id> <base64 of 32 random bytes>`.
pub fn data_key_line(id: &str) -> String {
    use base64::Engine;
    let mut raw = [0u8; 32];
    aws_lc_rs::rand::fill(&mut raw).unwrap();
    format!(
        "{id} {}\n",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}
