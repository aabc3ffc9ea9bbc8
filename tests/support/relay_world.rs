//! A running relay for the relay tests: a daemon with the identity bridge (anonymous sign-ups
//! and a trusted backend to name consumers) and `[relay]`, and the clients that talk to it.

use serde_json::{Value, json};

use super::TestEnv;
use super::daemon::Daemon;
use super::identity_world::data_key_line;
use super::messaging::{MessagingClient, Side};

pub const ACCOUNT: &str = "acme";
pub const PLATFORM_PATH: &str = "/ws_api/account/acme/messaging/consumer?v=3";

pub const BACKEND_SECRET: &str = "relay-test-backend-secret";

pub fn config(env: &TestEnv, token_lifetime: &str, store_extra: &str, relay_extra: &str) -> String {
    let store = env.store_section(&data_key_line("k1"), store_extra);
    let backend = env.secret("backend-secret", BACKEND_SECRET);
    env.config(&format!(
        r#"
{store}token_lifetime = "{token_lifetime}"
# Sockets close exactly at a token's expiry in these tests.
leeway = "0s"
[[identity.backends]]
id = "crm"
secret_file = "{backend}"
trusted = true
[identity.anonymous]
enabled = true
token_lifetime = "{token_lifetime}"
per_minute = 1000
[relay]
account = "{ACCOUNT}"
max_message_bytes = 2000
max_frame_bytes = 16384
{relay_extra}
"#,
        backend = backend.display(),
    ))
}

pub struct Relay {
    pub env: TestEnv,
    pub daemon: Daemon,
}

impl Relay {
    pub async fn start(token_lifetime: &str) -> Relay {
        Self::start_with(
            token_lifetime,
            "",
            "requests_per_second = 100000\nauth_timeout = \"1s\"",
        )
        .await
    }

    pub async fn start_with(token_lifetime: &str, store_extra: &str, relay_extra: &str) -> Relay {
        let env = TestEnv::new();
        let config = config(&env, token_lifetime, store_extra, relay_extra);
        Self::start_on(env, &config).await
    }

    /// A relay on `env` with `config` (made with [`config`], plus anything after it).
    pub async fn start_on(env: TestEnv, config: &str) -> Relay {
        let daemon = Daemon::start(env.path(), config).await;
        Relay { env, daemon }
    }

    /// Adds an agent with the command line (`brandgate agents add`) and logs it in over
    /// HTTPS; returns its session bearer.
    pub async fn agent(&self, username: &str) -> String {
        let password = self.add_agent(username).await;
        self.login(username, &password).await
    }

    /// Adds an agent with the command line (`brandgate agents add`); returns its password.
    pub async fn add_agent(&self, username: &str) -> String {
        let password = format!("{username}-password-1");
        let file = self.env.secret(&format!("password-{username}"), &password);
        self.agents_add(username, &["--password-file", &file.to_string_lossy()])
            .await;
        password
    }

    /// Adds an agent without a password (`brandgate agents add --sso-only`).
    pub async fn add_sso_only_agent(&self, username: &str) {
        let out = self.agents_add(username, &["--sso-only"]).await;
        assert!(out.contains("single sign-on only"), "{out}");
    }

    /// `brandgate agents add` for `username` with `extra` arguments; its output.
    async fn agents_add(&self, username: &str, extra: &[&str]) -> String {
        let config = self.env.path().join("brandgate.toml");
        let config = config.to_string_lossy();
        let mut args = vec![
            "agents",
            "add",
            "--config",
            &config,
            "--account",
            ACCOUNT,
            "--username",
            username,
        ];
        args.extend_from_slice(extra);
        let (code, out, err) = super::daemon::run(&args, &[]).await;
        assert_eq!(code, 0, "agents add: {out}{err}");
        out
    }

    /// Stops the daemon; its whole log and an embedded store on its database (to read what
    /// it left, such as the audit, once every line is in).
    pub async fn stop_and_open_store(&mut self) -> (String, brandgate::store::Store) {
        let log = self.daemon.stop().await;
        (log, self.env.open_state_store().await)
    }

    /// Logs an agent in; returns its session bearer.
    pub async fn login(&self, username: &str, password: &str) -> String {
        let answer = self
            .env
            .client()
            .post_json(
                &self.daemon.url(&format!("/api/account/{ACCOUNT}/login")),
                &[],
                &json!({ "username": username, "password": password }),
            )
            .await;
        assert_eq!(answer.status, 200, "login: {}", answer.body);
        answer.json()["bearer"].as_str().unwrap().to_string()
    }

    /// An agent's socket at the platform's path (the bearer in the path).
    pub async fn connect_agent(&self, bearer: &str) -> MessagingClient {
        MessagingClient::connect(
            &self.env.ca.cert_pem,
            self.daemon.public,
            &format!("/ws_api/account/{ACCOUNT}/messaging/brand/{bearer}?v=2.0"),
            None,
            Side::Agent,
        )
        .await
        .unwrap_or_else(|r| panic!("agent refused: {} {}", r.status, r.body))
    }

    /// A consumer identity token (an anonymous sign-up).
    pub async fn token(&self) -> String {
        let answer = self
            .env
            .client()
            .send(
                http::Method::POST,
                &self.daemon.url("/identity/v1/signup"),
                &[],
                bytes::Bytes::new(),
            )
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.json()["jwt"].as_str().unwrap().to_string()
    }

    /// An agent's socket, online, with its routing tasks subscribed.
    pub async fn online_agent(&self, bearer: &str) -> MessagingClient {
        let mut agent = self.connect_agent(bearer).await;
        let r = agent
            .request("routing.SetAgentState", json!({"availability": "ONLINE"}))
            .await;
        assert_eq!(r["code"], 200, "{r}");
        let r = agent
            .request("routing.SubscribeRoutingTasks", json!({}))
            .await;
        assert_eq!(r["code"], 200, "{r}");
        agent
    }

    /// A token for a named consumer (a trusted backend vouching for it).
    pub async fn token_for(&self, subject: &str) -> String {
        let answer = self
            .env
            .client()
            .post_json(
                &self.daemon.url("/identity/v1/token"),
                &[(
                    "authorization",
                    &crate::support::client::basic("crm", BACKEND_SECRET),
                )],
                &json!({ "subject": subject }),
            )
            .await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        answer.json()["jwt"].as_str().unwrap().to_string()
    }

    pub async fn connect(&self, token: Option<&str>) -> MessagingClient {
        let auth = token.map(|t| format!("jwt {t}"));
        MessagingClient::connect(
            &self.env.ca.cert_pem,
            self.daemon.public,
            PLATFORM_PATH,
            auth.as_deref(),
            Side::Consumer,
        )
        .await
        .unwrap_or_else(|r| panic!("refused: {} {}", r.status, r.body))
    }

    /// A connected consumer with its open conversation.
    /// A connected consumer, its open conversation, and its token.
    pub async fn consumer(&self) -> (MessagingClient, String, String) {
        let token = self.token().await;
        let mut c = self.connect(Some(&token)).await;
        let r = c.request("cm.ConsumerRequestConversation", json!({})).await;
        assert_eq!(r["code"], 200, "{r}");
        let id = r["body"]["conversationId"].as_str().unwrap().to_string();
        (c, id, token)
    }
}

pub fn text(message: &str) -> Value {
    json!({"type": "ContentEvent", "contentType": "text/plain", "message": message})
}

pub async fn publish(c: &mut MessagingClient, dialog: &str, event: Value) -> Value {
    c.request(
        "ms.PublishEvent",
        json!({"dialogId": dialog, "event": event}),
    )
    .await
}

/// The next routing task of `conversation` on an agent's socket: its ring state and the task.
pub async fn ring_state(agent: &mut MessagingClient, conversation: &str) -> (String, Value) {
    loop {
        let n = agent.notification("routing.routingTaskNotification").await;
        let result = &n["body"]["changes"][0]["result"];
        if result["conversationId"] == conversation {
            return (
                result["ringsDetails"][0]["ringState"]
                    .as_str()
                    .unwrap()
                    .to_string(),
                result.clone(),
            );
        }
    }
}
