//! The relay's agent accounts through the real doors: `brandgate agents ...` on the command
//! line (passwords on standard input, as CI has no terminal) and the login, refresh and logout
//! endpoints over HTTPS against the running daemon.

use std::time::{Duration, Instant};

use brandgate::store::Store;
use serde_json::json;

use crate::support::TestEnv;
use crate::support::client::Answer;
use crate::support::daemon::{Daemon, run_with_stdin};
use crate::support::identity_world::data_key_line;

const ACCOUNT: &str = "acme";
const COOKIE: &str = "__Host-brandgate_agent";
/// What every refused login answers, whatever the reason.
const REFUSED: &str = r#"{"error":"the username or password is not accepted"}"#;

struct World {
    env: TestEnv,
    daemon: Daemon,
}

impl World {
    async fn start(agents_extra: &str) -> World {
        let env = TestEnv::new();
        let keys = env.secret("data-keys", &data_key_line("k1"));
        let config = env.config(&format!(
            r#"
[store]
data_keys_file = "{keys}"
[identity]
issuer = "https://brandgate.test"
[relay]
account = "{ACCOUNT}"
[relay.agents]
max_failed_logins = 3
lockout = "3s"
login_attempts_per_minute = 1000
{agents_extra}
"#,
            keys = keys.display()
        ));
        let daemon = Daemon::start(env.path(), &config).await;
        World { env, daemon }
    }

    /// `brandgate agents <args> --config ... --account acme`, with `stdin` on standard input.
    async fn agents(&self, args: &[&str], stdin: &str) -> (i32, String, String) {
        let config = self.daemon.config_path.to_str().unwrap().to_string();
        let mut all = vec!["agents"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--config", &config, "--account", ACCOUNT]);
        run_with_stdin(&all, stdin).await
    }

    /// Adds an agent (the password on standard input, with its newline).
    async fn add(&self, username: &str, password: &str) {
        let (code, out, err) = self
            .agents(&["add", "--username", username], &format!("{password}\n"))
            .await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains(&format!("added agent {username}")), "{out}");
    }

    async fn list(&self) -> String {
        let (code, out, err) = self.agents(&["list"], "").await;
        assert_eq!(code, 0, "{err}");
        out
    }

    fn url(&self, what: &str) -> String {
        self.daemon.url(&format!("/api/account/{ACCOUNT}/{what}"))
    }

    async fn login(&self, username: &str, password: &str) -> Answer {
        self.env
            .client()
            .post_json(
                &self.url("login"),
                &[],
                &json!({ "username": username, "password": password }),
            )
            .await
    }

    /// A successful login's bearer and CSRF token.
    async fn session(&self, username: &str, password: &str) -> (String, String) {
        let a = self.login(username, password).await;
        assert_eq!(a.status, 200, "{}", a.body);
        let body = a.json();
        (
            body["bearer"].as_str().unwrap().to_string(),
            body["csrf"].as_str().unwrap().to_string(),
        )
    }

    async fn post(&self, what: &str, headers: &[(&str, &str)]) -> Answer {
        self.env
            .client()
            .send(
                http::Method::POST,
                &self.url(what),
                headers,
                bytes::Bytes::new(),
            )
            .await
    }

    async fn refresh_with_bearer(&self, bearer: &str) -> Answer {
        self.post("refresh", &[("authorization", &format!("Bearer {bearer}"))])
            .await
    }

    /// Stops the daemon; returns its whole log and an embedded store on its database.
    async fn stop(mut self) -> (String, Store, TestEnv) {
        let log = self.daemon.stop().await;
        let store = self.env.open_state_store().await;
        (log, store, self.env)
    }
}

#[tokio::test]
async fn an_agent_added_on_the_command_line_logs_in_refreshes_and_logs_out() {
    let w = World::start("").await;
    let password = "correct-horse-battery";
    w.add("ann", password).await;
    let listed = w.list().await;
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("ann ") && l.contains("active")),
        "{listed}"
    );

    let a = w.login("ann", password).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.headers["cache-control"], "no-store");
    let body = a.json();
    let bearer = body["bearer"].as_str().unwrap().to_string();
    let csrf = body["csrf"].as_str().unwrap().to_string();
    assert_eq!(bearer.len(), 43, "256 bits, base64url");
    assert_ne!(bearer, csrf);
    let expires = body["expiresAt"].as_u64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    // The default lifetime, 8 hours.
    assert!(
        expires.abs_diff(now + 8 * 3600 * 1000) < 60_000,
        "{expires}"
    );
    let cookie = a.headers["set-cookie"].to_str().unwrap();
    assert!(
        cookie.starts_with(&format!("{COOKIE}={bearer};")),
        "{cookie}"
    );
    for part in ["Path=/", "Secure", "HttpOnly", "SameSite=Strict"] {
        assert!(cookie.split("; ").any(|p| p == part), "{part}: {cookie}");
    }

    // Refresh by bearer: the same bearer (open sockets hold it), a later end, a new CSRF
    // token (the old one is refused from then on).
    let r = w.refresh_with_bearer(&bearer).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let bearer2 = r.json()["bearer"].as_str().unwrap().to_string();
    let csrf2 = r.json()["csrf"].as_str().unwrap().to_string();
    assert_eq!(bearer2, bearer);
    assert_ne!(csrf2, csrf);
    assert!(
        r.json()["expiresAt"].as_u64().unwrap() >= expires,
        "{}",
        r.body
    );

    // By cookie: without the CSRF token, or with the one the refresh replaced, refused; with
    // the current one, fine.
    let jar = format!("{COOKIE}={bearer2}");
    let no_csrf = w.post("refresh", &[("cookie", &jar)]).await;
    assert_eq!(no_csrf.status, 403, "{}", no_csrf.body);
    assert!(no_csrf.body.contains("X-CSRF-Token"), "{}", no_csrf.body);
    let wrong = w
        .post("refresh", &[("cookie", &jar), ("x-csrf-token", &csrf)])
        .await;
    assert_eq!(wrong.status, 403);
    let by_cookie = w
        .post("refresh", &[("cookie", &jar), ("x-csrf-token", &csrf2)])
        .await;
    assert_eq!(by_cookie.status, 200, "{}", by_cookie.body);
    // A caller that used the cookie is not handed the bearer (a page's script never holds it);
    // the session, and so its cookie, stays the same.
    assert!(
        by_cookie.json().get("bearer").is_none(),
        "{}",
        by_cookie.body
    );
    let bearer3 = bearer2.clone();
    let csrf3 = by_cookie.json()["csrf"].as_str().unwrap().to_string();
    // The browser workspace signs in with cookieOnly: the answer holds no bearer either.
    let cookie_only = w
        .env
        .client()
        .post_json(
            &w.url("login"),
            &[],
            &json!({ "username": "ann", "password": password, "cookieOnly": true }),
        )
        .await;
    assert_eq!(cookie_only.status, 200, "{}", cookie_only.body);
    assert!(
        cookie_only.json().get("bearer").is_none(),
        "{}",
        cookie_only.body
    );
    assert_eq!(cookie_only.json()["username"], "ann");
    let set = cookie_only.headers["set-cookie"].to_str().unwrap();
    assert!(
        set.starts_with(&format!("{COOKIE}=")) && set.contains("HttpOnly"),
        "{set}"
    );

    // Logout ends the session (by cookie, with its CSRF token).
    let out = w
        .post(
            "logout",
            &[
                ("cookie", &format!("{COOKIE}={bearer3}")),
                ("x-csrf-token", &csrf3),
            ],
        )
        .await;
    assert_eq!(out.status, 204, "{}", out.body);
    assert!(
        out.headers["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0")
    );
    assert_eq!(w.refresh_with_bearer(&bearer3).await.status, 401);
    assert_eq!(
        w.post("logout", &[("authorization", &format!("Bearer {bearer3}"))])
            .await
            .status,
        401
    );

    // Wrong password and unknown username: the same answer.
    let wrong = w.login("ann", "not-the-password").await;
    assert_eq!((wrong.status, wrong.body.as_str()), (401, REFUSED));
    let unknown = w.login("nobody", password).await;
    assert_eq!((unknown.status, unknown.body.as_str()), (401, REFUSED));

    // Malformed requests are told what is wrong.
    let client = w.env.client();
    let other = client
        .post_json(
            &w.daemon.url("/api/account/other/login"),
            &[],
            &json!({ "username": "ann", "password": password }),
        )
        .await;
    assert_eq!(other.status, 404);
    let not_json = client
        .send(
            http::Method::POST,
            &w.url("login"),
            &[("content-type", "text/plain")],
            bytes::Bytes::from("ann:pw"),
        )
        .await;
    assert_eq!(not_json.status, 415, "{}", not_json.body);
    let missing = client
        .post_json(&w.url("login"), &[], &json!({ "username": "ann" }))
        .await;
    assert_eq!(missing.status, 400);
    assert!(
        missing.json()["error"]
            .as_str()
            .unwrap()
            .contains("password")
    );
    let huge = client
        .post_json(
            &w.url("login"),
            &[],
            &json!({ "username": "ann", "password": "x".repeat(20_000) }),
        )
        .await;
    assert_eq!(huge.status, 413, "{}", huge.body);
    let get = client.get(&w.url("login")).await;
    assert_eq!(get.status, 405);

    let listed = w.list().await;
    let ann = listed.lines().find(|l| l.starts_with("ann ")).unwrap();
    assert!(!ann.trim_end().ends_with(" -"), "a last login: {ann}");

    // The audit holds every attempt; neither the log nor the database holds a password or
    // a bearer.
    let (log, store, env) = w.stop().await;
    let audit = store.list_agent_audit(ACCOUNT, 100).await.unwrap();
    let outcomes: Vec<&str> = audit.iter().rev().map(|a| a.outcome.as_str()).collect();
    assert_eq!(
        outcomes,
        [
            "added",
            "success",
            "success",
            "wrong_password",
            "unknown_username"
        ]
    );
    assert_eq!(audit[0].username, "nobody");
    assert_eq!(audit[0].source.as_deref(), Some("127.0.0.1"));
    assert_eq!(audit[1].agent_id, audit[3].agent_id);
    assert!(log.contains("agent login"), "the log has the attempts");
    let secrets = [password, &bearer, &bearer2, &bearer3, &csrf, &csrf3];
    for s in secrets {
        assert!(!log.contains(s), "the log holds a secret");
    }
    store.close().await;
    let state = env.path().join("state");
    let mut searched = 0;
    for name in ["brandgate.db", "brandgate.db-wal"] {
        if let Ok(bytes) = std::fs::read(state.join(name)) {
            searched += bytes.len();
            for s in secrets {
                assert!(
                    !bytes.windows(s.len()).any(|w| w == s.as_bytes()),
                    "{name} holds a password or a bearer"
                );
            }
            assert!(
                !bytes.windows(9).any(|w| w == b"$argon2id"),
                "{name} holds a password hash in clear"
            );
        }
    }
    assert!(searched > 0, "the database files were read");
}

#[tokio::test]
async fn failed_logins_lock_the_agent_until_the_lockout_ends_or_a_reset() {
    let w = World::start("").await;
    let file = w.env.secret("ann-password", "first-password\n");
    let (code, _, err) = w
        .agents(
            &[
                "add",
                "--username",
                "ann",
                "--password-file",
                file.to_str().unwrap(),
            ],
            "",
        )
        .await;
    assert_eq!(code, 0, "{err}");

    // Three failures (the configured count) lock; then even the right password gets no
    // session. Who gives the right password learns until when (423); a wrong one learns
    // nothing (the same 401 as ever).
    for _ in 0..3 {
        assert_eq!(w.login("ann", "wrong-password").await.status, 401);
    }
    let locked_at = Instant::now();
    let refused = w.login("ann", "first-password").await;
    assert_eq!(refused.status, 423, "{}", refused.body);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let until = refused.json()["lockedUntil"].as_i64().unwrap();
    assert!(
        (now_ms..=now_ms + 3_500).contains(&until),
        "locked until {until}, now {now_ms}"
    );
    assert!(refused.json()["error"].as_str().unwrap().contains("locked"));
    let wrong = w.login("ann", "wrong-password").await;
    assert_eq!((wrong.status, wrong.body.as_str()), (401, REFUSED));
    let listed = w.list().await;
    assert!(listed.contains("locked until"), "{listed}");

    // After the lockout (3s) the right password works again; poll with a deadline.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let a = w.login("ann", "first-password").await;
        if a.status == 200 {
            break;
        }
        assert_eq!(a.status, 423, "{}", a.body);
        assert!(Instant::now() < deadline, "still locked after 30s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        locked_at.elapsed() >= Duration::from_millis(2500),
        "unlocked too early: {:?}",
        locked_at.elapsed()
    );
    assert!(
        w.list()
            .await
            .lines()
            .any(|l| l.starts_with("ann ") && l.contains("active"))
    );

    // Locked again; a password reset lifts it at once and ends the agent's sessions.
    let (bearer, _) = w.session("ann", "first-password").await;
    for _ in 0..3 {
        assert_eq!(w.login("ann", "wrong-password").await.status, 401);
    }
    assert_eq!(w.login("ann", "first-password").await.status, 423);
    let (code, out, err) = w
        .agents(
            &["reset-password", "--username", "ann"],
            "second-password\n",
        )
        .await;
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(w.refresh_with_bearer(&bearer).await.status, 401);
    assert_eq!(w.login("ann", "first-password").await.status, 401);
    w.session("ann", "second-password").await;

    let (_, store, _env) = w.stop().await;
    let outcomes: Vec<String> = store
        .list_agent_audit(ACCOUNT, 100)
        .await
        .unwrap()
        .into_iter()
        .rev()
        .map(|a| a.outcome)
        .collect();
    let count = |o: &str| outcomes.iter().filter(|x| *x == o).count();
    assert_eq!(count("locked_out"), 2, "{outcomes:?}");
    assert_eq!(count("password_reset"), 1, "{outcomes:?}");
    assert!(count("locked_right_password") >= 2, "{outcomes:?}");
    assert!(count("locked") >= 1, "{outcomes:?}");
    store.close().await;
}

#[tokio::test]
async fn disabling_an_agent_ends_its_sessions() {
    let w = World::start("").await;
    w.add("ann", "ann-password").await;
    w.add("bob", "bob-password").await;
    let (ann, _) = w.session("ann", "ann-password").await;
    let (bob, _) = w.session("bob", "bob-password").await;

    let (code, out, err) = w.agents(&["disable", "--username", "ann"], "").await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        w.list()
            .await
            .lines()
            .any(|l| l.starts_with("ann ") && l.contains("disabled"))
    );
    assert_eq!(w.refresh_with_bearer(&ann).await.status, 401);
    let refused = w.login("ann", "ann-password").await;
    assert_eq!((refused.status, refused.body.as_str()), (401, REFUSED));
    // Another agent's session is untouched.
    assert_eq!(w.refresh_with_bearer(&bob).await.status, 200);

    let (code, _, err) = w.agents(&["enable", "--username", "ann"], "").await;
    assert_eq!(code, 0, "{err}");
    w.session("ann", "ann-password").await;
}

#[tokio::test]
async fn the_command_line_explains_what_it_refuses() {
    let w = World::start("min_password_length = 12").await;
    let (code, _, err) = w
        .agents(&["add", "--username", "ann"], "eleven-char\n")
        .await;
    assert_ne!(code, 0);
    assert!(err.contains("too short") && err.contains("12"), "{err}");
    w.add("ann", "twelve-chars").await;
    let (code, _, err) = w
        .agents(&["add", "--username", "ann"], "another-password\n")
        .await;
    assert_ne!(code, 0);
    assert!(err.contains("already exists"), "{err}");
    let (code, _, err) = w.agents(&["disable", "--username", "zed"], "").await;
    assert_ne!(code, 0);
    assert!(err.contains("no agent named \"zed\""), "{err}");
    let (code, _, err) = w
        .agents(&["reset-password", "--username", "ann"], "short\n")
        .await;
    assert_ne!(code, 0);
    assert!(err.contains("too short"), "{err}");
    let (code, _, err) = w.agents(&["add", "--username", "bob"], "").await;
    assert_ne!(code, 0);
    assert!(err.contains("empty"), "{err}");
    // Another account than the relay's.
    let config = w.daemon.config_path.to_str().unwrap().to_string();
    let (code, _, err) = run_with_stdin(
        &["agents", "list", "--config", &config, "--account", "other"],
        "",
    )
    .await;
    assert_ne!(code, 0);
    assert!(err.contains("serves account \"acme\""), "{err}");
    // Each refusal is one line.
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[tokio::test]
async fn login_attempts_are_limited_per_source() {
    let env = TestEnv::new();
    let keys = env.secret("data-keys", &data_key_line("k1"));
    let config = env.config(&format!(
        r#"
[store]
data_keys_file = "{keys}"
[identity]
issuer = "https://brandgate.test"
[relay]
account = "{ACCOUNT}"
[relay.agents]
login_attempts_per_minute = 3
"#,
        keys = keys.display()
    ));
    let daemon = Daemon::start(env.path(), &config).await;
    let w = World { env, daemon };
    for _ in 0..3 {
        assert_eq!(w.login("ann", "whatever-password").await.status, 401);
    }
    let limited = w.login("ann", "whatever-password").await;
    assert_eq!(limited.status, 429, "{}", limited.body);
    assert!(limited.headers.contains_key("retry-after"));
}
