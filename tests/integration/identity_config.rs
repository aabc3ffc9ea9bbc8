//! `brandgate check-config` on the identity bridge's settings: every problem named by its key,
//! all at once, exit status 78.

use crate::support::TestEnv;
use crate::support::daemon::run;

#[tokio::test]
async fn identity_problems_are_reported_at_once_with_their_keys() {
    let env = TestEnv::new();
    let short_key = env.secret("pseudonym-key", "too short\n");
    let config = env.config(&format!(
        r#"
[identity]
issuer = "https://brandgate.test"
code_lifetime = "5m"
[identity.upstream]
issuer = "http://login.brand.example"
client_id = "brandgate"
client_secret_file = "/nonexistent/oidc-secret"
allowed_algorithms = ["RS256", "HS256"]
[identity.subject]
mode = "pseudonym"
pseudonym_key_file = "{key}"
[[identity.clients]]
id = "platform"
secret_file = "/nonexistent/platform-secret"
redirect_uris = ["javascript://x", "/relative"]
[[identity.backends]]
id = "crm"
client_cert_names = ["crm.brand.example"]
"#,
        key = short_key.display()
    ));
    let path = env.file("check.toml", &config);
    let (code, out, err) = run(&["check-config", "--config", path.to_str().unwrap()], &[]).await;
    assert_eq!(code, 78, "{out}{err}");
    for key in [
        "identity.code_lifetime",
        "identity.upstream.issuer",
        "identity.upstream.allowed_algorithms[1]",
        "identity.clients[0].redirect_uris[0]",
        "identity.clients[0].redirect_uris[1]",
    ] {
        assert!(err.contains(key), "{key} not named:\n{err}");
    }

    // Shape problems come first; with those fixed, the files are checked.
    let config = config
        .replace("code_lifetime = \"5m\"", "")
        .replace("http://login.brand.example", "https://login.brand.example")
        .replace(", \"HS256\"", "")
        .replace(
            "\"javascript://x\", \"/relative\"",
            "\"com.brand.app://cb\"",
        );
    std::fs::write(&path, config).unwrap();
    let (code, out, err) = run(&["check-config", "--config", path.to_str().unwrap()], &[]).await;
    assert_eq!(code, 78, "{out}{err}");
    for (key, says) in [
        (
            "identity.upstream.client_secret_file",
            "/nonexistent/oidc-secret",
        ),
        (
            "identity.clients[0].secret_file",
            "/nonexistent/platform-secret",
        ),
        ("identity.subject.pseudonym_key_file", "at least 32 bytes"),
        (
            "identity.backends[0].client_cert_names",
            "server.tls.client_ca",
        ),
    ] {
        let line = err
            .lines()
            .find(|l| l.contains(key))
            .unwrap_or_else(|| panic!("{key}:\n{err}"));
        assert!(line.contains(says), "{line}");
    }
}

#[tokio::test]
async fn unknown_claim_targets_are_refused() {
    let env = TestEnv::new();
    let config = env.config(
        "[identity]\nissuer = \"https://brandgate.test\"\n[identity.claims.ctmrinfo]\ncustomer_id = \"sub\"\n",
    );
    let path = env.file("check.toml", &config);
    let (code, _, err) = run(&["check-config", "--config", path.to_str().unwrap()], &[]).await;
    assert_eq!(code, 78);
    assert!(err.contains("customer_id"), "{err}");
}
