//! Caller authentication on the proxy endpoint (HTTP Basic, custom headers, client
//! certificates, and combinations), brute-force limiting, and brandgate authenticating itself
//! to APNs with a certificate (PEM and PKCS#12).

use std::process::Command;

use crate::support::client::basic;
use crate::support::daemon::Daemon;
use crate::support::fake_apns::{ApnsAuth, FakeApns};
use crate::support::pki::{ApnsKey, TestCa};
use crate::support::{TestEnv, apns, ios_push, platform_auth};

const APP: &str = "com.brand.app";
const TOKEN: &str = "00ff00ff00ff00ff";

async fn start(
    env: &TestEnv,
    tls_extra: &str,
    app_extra: &str,
    auth: &str,
) -> (FakeApns, ApnsKey, Daemon) {
    let (fake, key) = apns(APP).await;
    let config = format!(
        "{}{}",
        env.base_config_with_tls(tls_extra),
        env.apns_app(APP, &fake, &key, app_extra, auth, "")
    );
    let daemon = Daemon::start(env.path(), &config).await;
    (fake, key, daemon)
}

#[tokio::test]
async fn basic_auth_is_required_and_checked() {
    let env = TestEnv::new();
    let (fake, _k, mut daemon) = start(&env, "", "", &env.basic_auth()).await;
    let url = daemon.url(&format!("/push/{APP}"));
    let client = env.client();
    let body = ios_push(TOKEN, "x", "c", 1);

    let ok = client
        .post_json(&url, &[("authorization", &platform_auth())], &body)
        .await;
    assert_eq!(ok.status, 200, "{}", ok.body);

    for header in [
        None,
        Some(basic("platform", "guess-Zq81")),
        Some(basic("someone", crate::support::PLATFORM_PASSWORD)),
        Some("Bearer abc".to_string()),
    ] {
        let headers: Vec<(&str, &str)> = header
            .iter()
            .map(|h| ("authorization", h.as_str()))
            .collect();
        let a = client
            .post_json(&url, &headers, &ios_push(TOKEN, "x", "c", 2))
            .await;
        assert_eq!(a.status, 401, "{header:?}");
        assert_eq!(a.json()["error"], "caller authentication failed");
        assert!(
            a.headers["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Basic")
        );
    }
    assert_eq!(fake.received().len(), 1, "refused callers never reach APNs");
    let logs = daemon.stop().await;
    assert_eq!(
        logs.matches("caller authentication failed").count(),
        4,
        "{logs}"
    );
    assert!(
        !logs.contains("guess-Zq81") && !logs.contains(crate::support::PLATFORM_PASSWORD),
        "passwords are never logged"
    );
}

#[tokio::test]
async fn custom_headers_must_all_match() {
    let env = TestEnv::new();
    let k1 = env.secret("h1", "abc-123_$&@.#*");
    let k2 = env.secret("h2", "second");
    let auth = format!(
        "headers = [{{ name = \"X-Brand-Key\", value_file = \"{}\" }}, {{ name = \"X-Brand-Env\", value_file = \"{}\" }}]\n",
        k1.display(),
        k2.display()
    );
    let (_fake, _k, daemon) = start(&env, "", "", &auth).await;
    let url = daemon.url(&format!("/push/{APP}"));
    let client = env.client();
    let body = ios_push(TOKEN, "x", "c", 1);
    let both = client
        .post_json(
            &url,
            &[("x-brand-key", "abc-123_$&@.#*"), ("x-brand-env", "second")],
            &body,
        )
        .await;
    assert_eq!(both.status, 200, "{}", both.body);
    let one = client
        .post_json(
            &url,
            &[("x-brand-key", "abc-123_$&@.#*")],
            &ios_push(TOKEN, "x", "c", 2),
        )
        .await;
    assert_eq!(one.status, 401);
    let wrong = client
        .post_json(
            &url,
            &[("x-brand-key", "abc-123_$&@.#"), ("x-brand-env", "second")],
            &ios_push(TOKEN, "x", "c", 3),
        )
        .await;
    assert_eq!(wrong.status, 401);
    assert!(wrong.headers.get("www-authenticate").is_none());
}

#[tokio::test]
async fn client_certificates_are_matched_by_name() {
    let env = TestEnv::new();
    let client_ca = TestCa::new("platform client CA");
    let ca_path = client_ca.write(env.path(), "client-ca");
    let tls_extra = format!("client_ca = \"{}\"", ca_path.display());
    let auth = "client_cert = { names = [\"push.platform.example\"] }\n";
    let (fake, _k, daemon) = start(&env, &tls_extra, "", auth).await;
    let url = daemon.url(&format!("/push/{APP}"));

    let good = client_ca.client("platform-client", &["push.platform.example"]);
    let a = env
        .client_with(&good)
        .post_json(&url, &[], &ios_push(TOKEN, "x", "c", 1))
        .await;
    assert_eq!(a.status, 200, "{}", a.body);

    let other_name = client_ca.client("someone-else", &["other.example"]);
    let a = env
        .client_with(&other_name)
        .post_json(&url, &[], &ios_push(TOKEN, "x", "c", 2))
        .await;
    assert_eq!(a.status, 401);

    let a = env
        .client()
        .post_json(&url, &[], &ios_push(TOKEN, "x", "c", 3))
        .await;
    assert_eq!(a.status, 401, "no certificate");

    // A certificate from a CA brandgate does not trust does not even finish the handshake.
    let stranger = TestCa::new("stranger").client("platform-client", &["push.platform.example"]);
    let r = env
        .client_with(&stranger)
        .try_send(
            http::Method::POST,
            &url,
            &[("content-type", "application/json")],
            bytes::Bytes::from(ios_push(TOKEN, "x", "c", 4).to_string()),
        )
        .await;
    // The client sees the server's alert (UnknownCA) or, when the connection ends before it
    // reads it, only the end: closed, reset, or a broken pipe on its next write (TLS 1.3
    // checks its certificate after its side of the handshake). Never an HTTP answer; the
    // daemon's log says why in every case (below).
    let e = r.unwrap_err();
    assert!(
        ["UnknownCA", "connection closed", "broken pipe", "reset"]
            .iter()
            .any(|end| e.contains(end)),
        "{e}"
    );
    assert_eq!(fake.received().len(), 1);
    let mut daemon = daemon;
    let log = daemon.stop().await;
    assert!(
        log.lines()
            .any(|l| l.contains("TLS handshake failed") && l.contains("UnknownIssuer")),
        "{log}"
    );
}

#[tokio::test]
async fn combined_methods_all_apply() {
    let env = TestEnv::new();
    let client_ca = TestCa::new("platform client CA");
    let tls_extra = format!(
        "client_ca = \"{}\"",
        client_ca.write(env.path(), "client-ca").display()
    );
    let auth = format!(
        "{}client_cert = {{ names = [\"platform-client\"] }}\n",
        env.basic_auth()
    );
    let (_fake, _k, daemon) = start(&env, &tls_extra, "", &auth).await;
    let url = daemon.url(&format!("/push/{APP}"));
    let cert = client_ca.client("platform-client", &[]);
    let a = env
        .client_with(&cert)
        .post_json(
            &url,
            &[("authorization", &platform_auth())],
            &ios_push(TOKEN, "x", "c", 1),
        )
        .await;
    assert_eq!(a.status, 200, "{}", a.body);
    let a = env
        .client_with(&cert)
        .post_json(&url, &[], &ios_push(TOKEN, "x", "c", 2))
        .await;
    assert_eq!(a.status, 401, "certificate without password");
    let a = env
        .client()
        .post_json(
            &url,
            &[("authorization", &platform_auth())],
            &ios_push(TOKEN, "x", "c", 3),
        )
        .await;
    assert_eq!(a.status, 401, "password without certificate");
}

#[tokio::test]
async fn repeated_failures_from_one_address_are_throttled() {
    let env = TestEnv::new();
    let (fake, key) = apns(APP).await;
    let config = env.config(&format!(
        "[push]\nauth_failures_per_minute = 3\n{}",
        env.apns_app(APP, &fake, &key, "", &env.basic_auth(), "")
    ));
    let daemon = Daemon::start(env.path(), &config).await;
    let url = daemon.url(&format!("/push/{APP}"));
    let client = env.client();
    // Pushes for apps not configured (yet) do not count against the caller.
    for i in 0..5 {
        let a = client
            .post_json(
                &daemon.url("/push/com.brand.app-Dev"),
                &[("authorization", &platform_auth())],
                &ios_push(TOKEN, "x", "c", i),
            )
            .await;
        assert_eq!(a.status, 404);
    }
    assert_eq!(
        client
            .post_json(
                &url,
                &[("authorization", &platform_auth())],
                &ios_push(TOKEN, "x", "c", 100)
            )
            .await
            .status,
        200
    );
    let wrong = basic("platform", "guess");
    for i in 0..3 {
        assert_eq!(
            client
                .post_json(
                    &url,
                    &[("authorization", &wrong)],
                    &ios_push(TOKEN, "x", "c", i)
                )
                .await
                .status,
            401
        );
    }
    // Now even the right password waits: guessing is throttled before any comparison.
    let a = client
        .post_json(
            &url,
            &[("authorization", &platform_auth())],
            &ios_push(TOKEN, "x", "c", 9),
        )
        .await;
    assert_eq!(a.status, 429, "{}", a.body);
    let retry: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    let metrics = client.get(&daemon.ops_url("/metrics")).await.body;
    assert!(
        metrics.contains("brandgate_push_refused_total{result=\"rate_limited\"} 1"),
        "{metrics}"
    );
}

/// brandgate authenticates to APNs with a client certificate given as PEM or PKCS#12 (both the
/// modern and the legacy encryption that Keychain Access exports), made by openssl.
#[tokio::test]
async fn apns_certificate_auth_pem_and_pkcs12() {
    let env = TestEnv::new();
    let apple = TestCa::new("Apple Worldwide Developer Relations (test)");
    let leaf = apple.client("Apple Push Services: com.brand.app", &[APP]);
    let fake = FakeApns::start(
        APP,
        ApnsAuth::Certificate {
            client_ca_pem: apple.cert_pem.clone(),
            name: APP.into(),
        },
    )
    .await;
    let (cert, key) = leaf.write(env.path(), "apns-push");
    let pw = env.secret("p12-password", "p12 pass\n");
    let mut variants = vec![format!(
        "certificate_file = \"{}\"\nprivate_key_file = \"{}\"",
        cert.display(),
        key.display()
    )];
    for (name, legacy) in [("modern.p12", false), ("legacy.p12", true)] {
        let out = env.path().join(name);
        let mut cmd = Command::new("openssl");
        cmd.args(["pkcs12", "-export", "-in"])
            .arg(&cert)
            .arg("-inkey")
            .arg(&key)
            .arg("-out")
            .arg(&out);
        cmd.arg("-passout").arg(format!("file:{}", pw.display()));
        if legacy {
            cmd.arg("-legacy");
        }
        let status = cmd.status().expect("openssl");
        assert!(status.success());
        variants.push(format!(
            "pkcs12_file = \"{}\"\npkcs12_password_file = \"{}\"",
            out.display(),
            pw.display()
        ));
    }
    let ca = fake.ca.write(env.path(), "fake-apns-ca");
    for (i, credential) in variants.iter().enumerate() {
        let dir = env.path().join(format!("run{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        let config = env.config(&format!(
            "[[push.apps]]\nid = \"{APP}\"\n[push.apps.auth]\n{}[push.apps.apns]\ntopic = \"{APP}\"\nendpoint = \"{}\"\n{credential}\nextra_trust_anchors = [\"{}\"]\n",
            env.basic_auth(),
            fake.url(),
            ca.display()
        ));
        let config = config.replace(
            &format!("{}/state", env.path().display()),
            &format!("{}/state", dir.display()),
        );
        let daemon = Daemon::start(&dir, &config).await;
        let a = env
            .client()
            .post_json(
                &daemon.url(&format!("/push/{APP}")),
                &[("authorization", &platform_auth())],
                &ios_push(TOKEN, "x", "c", i as i64),
            )
            .await;
        assert_eq!(a.status, 200, "variant {i}: {}", a.body);
        let sent = fake.delivered_to(TOKEN);
        assert!(
            sent.last().unwrap().headers.get("authorization").is_none(),
            "certificate auth sends no token"
        );
        // Its expiry, for the alert that says to renew it in time.
        let m = env.client().get(&daemon.ops_url("/metrics")).await.body;
        let expiry = format!(
            "brandgate_push_certificate_expiry_timestamp_seconds{{app=\"{APP}\",provider=\"apns\"}} {}",
            crate::support::pki::not_after(&cert)
        );
        assert!(
            m.lines().any(|l| l == expiry || l == format!("{expiry}.0")),
            "missing {expiry} in\n{m}"
        );
    }
    assert_eq!(fake.delivered_to(TOKEN).len(), 3);
}

/// A refusal that comes before the body is read (wrong password, rate limited, unknown app)
/// still reaches an HTTP/2 client that is sending a body as a status: curl (nghttp2) used to
/// report error 92 (stream reset) for about one in ten, with no status at all.
#[tokio::test]
async fn early_refusals_reach_an_http2_client_sending_a_body() {
    let env = TestEnv::new();
    let (_fake, _k, daemon) = start(&env, "", "", &env.basic_auth()).await;
    let ca = env.ca.write(env.path(), "curl-ca");
    // A push of about 40 KiB (under the 64 KiB limit): the client is still sending when the
    // refusal is decided.
    let body = ios_push(TOKEN, &"x".repeat(40_000), "c", 1).to_string();
    let body_file = env.file("push.json", &body);
    // 40 wrong passwords: 401 until the limit (30 a minute), then 429: both early.
    let cases = [
        (
            format!("/push/{APP}"),
            basic("platform", "wrong-password"),
            &[401, 429][..],
        ),
        ("/push/no.such.app".to_string(), platform_auth(), &[404][..]),
    ];
    for (path, auth, statuses) in cases {
        let url = daemon.url(&path);
        let mut failures = Vec::new();
        for i in 0..40 {
            let out = tokio::process::Command::new("curl")
                .args(["--http2", "--silent", "--show-error", "--cacert"])
                .arg(&ca)
                .args(["-o", "/dev/null", "-w", "%{http_code} %{http_version}"])
                .args(["-H", &format!("authorization: {auth}")])
                .args(["-H", "content-type: application/json"])
                .arg("--data-binary")
                .arg(format!("@{}", body_file.display()))
                .arg(&url)
                .output()
                .await
                .expect("curl");
            let said = String::from_utf8_lossy(&out.stdout).to_string();
            if !out.status.success() || !statuses.iter().any(|s| said == format!("{s} 2")) {
                failures.push(format!(
                    "#{i}: exit {:?}, {said:?}, {}",
                    out.status.code(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
        }
        assert!(failures.is_empty(), "{path}:\n{}", failures.join("\n"));
    }
}
