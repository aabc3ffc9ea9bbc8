//! `brandgate check-config` and start-up refusals: every problem named by its key, all at once,
//! exit status 78; environment overrides; `%d/` credential paths; `push-test`.

use crate::support::daemon::run;
use crate::support::pki::{ServiceAccount, TestCa};
use crate::support::{TestEnv, apns};

const APP: &str = "com.brand.app";

async fn check(env: &TestEnv, config: &str, vars: &[(&str, &str)]) -> (i32, String, String) {
    let path = env.file("check.toml", config);
    run(&["check-config", "--config", path.to_str().unwrap()], vars).await
}

#[tokio::test]
async fn the_shipped_config_passes_as_shipped() {
    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config/brandgate.toml");
    let (code, out, err) = run(&["check-config", "--config", shipped], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("configuration OK"), "{out}");
    assert!(
        out.contains("development certificate"),
        "it says a development certificate will be made: {out}"
    );
}

#[tokio::test]
async fn a_missing_config_file_is_named() {
    let (code, _, err) = run(
        &["check-config", "--config", "/nonexistent/brandgate.toml"],
        &[],
    )
    .await;
    assert_eq!(code, 78);
    assert!(
        err.contains("/nonexistent/brandgate.toml") && err.contains("No such file"),
        "{err}"
    );
}

#[tokio::test]
async fn unknown_fields_are_refused_with_their_key() {
    let env = TestEnv::new();
    let (code, _, err) = check(&env, &env.config("[push]\ndedup_window = \"1m\"\n"), &[]).await;
    assert_eq!(code, 78);
    assert!(
        err.contains("push") && err.contains("dedup_window"),
        "{err}"
    );
}

#[tokio::test]
async fn every_file_and_url_problem_is_reported_at_once() {
    let env = TestEnv::new();
    let not_a_key = env.secret("not-a-key.p8", "this is not a key\n");
    let config = env.config(&format!(
        r#"
[push.feedback.webhook]
url = "ftp://hooks.example/dead"

[[push.apps]]
id = "{APP}"
[push.apps.auth]
basic = {{ username = "platform", password_file = "/nonexistent/password" }}
[push.apps.apns]
topic = "{APP}"
endpoint = "http://api.push.apple.com"
token_key_file = "{}"
key_id = "ABC123DEFG"
team_id = "DEF123GHIJ"

[[push.apps]]
id = "com.brand.android"
[push.apps.auth]
allow_unauthenticated = true
[push.apps.fcm]
service_account_file = "/nonexistent/sa.json"
"#,
        not_a_key.display()
    ));
    let (code, _, err) = check(&env, &config, &[]).await;
    assert_eq!(code, 78, "{err}");
    for expected in [
        "push.feedback.webhook.url",
        "push.apps[0].auth.basic.password_file: cannot read /nonexistent/password",
        "push.apps[0].apns.endpoint",
        "push.apps[0].apns.token_key_file",
        "is not an APNs signing key",
        "push.apps[1].fcm.service_account_file: cannot read /nonexistent/sa.json",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    // One line per problem.
    assert_eq!(err.lines().count(), 5, "{err}");
    assert!(err.lines().all(|l| l.starts_with("brandgate: ")), "{err}");
}

/// Two typos and a missing key file: all three in one run, one line each, and a bad key that
/// came from the environment says which variable.
#[tokio::test]
async fn typos_and_file_problems_are_reported_together() {
    let env = TestEnv::new();
    let config = env.config(&format!(
        r#"
[push]
dedup_window = "1m"
[[push.apps]]
id = "{APP}"
[push.apps.auth]
allow_unauthenticated = true
[push.apps.apns]
topic = "{APP}"
token_key_file = "/nonexistent/AuthKey.p8"
key_idd = "ABC123DEFG"
key_id = "ABC123DEFG"
team_id = "DEF123GHIJ"
"#
    ));
    let (code, _, err) = check(&env, &config, &[("BRANDGATE_OPS__LISTN", "127.0.0.1:1")]).await;
    assert_eq!(code, 78, "{err}");
    for expected in [
        "push.dedup_window: unknown field",
        "push.apps[0].apns.key_idd: unknown field",
        "ops.listn: unknown field",
        "(from the environment: BRANDGATE_OPS__LISTN)",
        "push.apps[0].apns.token_key_file: cannot read /nonexistent/AuthKey.p8",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    assert_eq!(err.lines().count(), 4, "{err}");
}

/// check-config shows what consumer tokens carry: a privacy review reads it there.
#[tokio::test]
async fn check_config_shows_the_claims_tokens_carry() {
    let env = TestEnv::new();
    let base = env.config("[identity]\nissuer = \"https://id.brand.example\"\n");
    let (code, out, err) = check(&env, &base, &[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("identity.claims: consumer tokens carry no profile claims"),
        "{out}"
    );
    let mapped = format!("{base}[identity.claims]\nemail = \"mail\"\n");
    let (code, out, err) = check(&env, &mapped, &[]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("identity.claims: consumer tokens carry email <- mail (only these"),
        "{out}"
    );
}

#[tokio::test]
async fn environment_overrides_are_checked_like_the_file() {
    let env = TestEnv::new();
    let config = env.config("");
    let (code, _, err) = check(&env, &config, &[("BRANDGATE_PUSH__DEADLINE", "20s")]).await;
    assert_eq!(code, 78);
    assert!(err.contains("push.deadline"), "{err}");
    let (code, _, err) = check(
        &env,
        &config,
        &[("BRANDGATE_SERVER__LISTEN", "not-an-address")],
    )
    .await;
    assert_eq!(code, 78);
    assert!(err.contains("server.listen"), "{err}");
    let (code, out, err) = check(
        &env,
        &config,
        &[("BRANDGATE_OPS__LISTEN", "127.0.0.1:19999")],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ops listener 127.0.0.1:19999"), "{out}");
}

#[tokio::test]
async fn credentials_directory_paths_fall_back_to_the_secrets_directory() {
    let env = TestEnv::new();
    let config = env.config(&format!(
        "[[push.apps]]\nid = \"{APP}\"\n[push.apps.auth]\nbasic = {{ username = \"p\", password_file = \"%d/push-password\" }}\n[push.apps.fcm]\nservice_account_file = \"%d/sa.json\"\n"
    ));
    // Nothing anywhere: the error names where brandgate looked (secrets/ beside the config).
    let fallback = env.path().join("secrets");
    let (code, _, err) = check(&env, &config, &[]).await;
    assert_eq!(code, 78);
    let expected = format!("cannot read {}/push-password", fallback.display());
    assert!(err.contains(&expected), "{err}");

    let fake = crate::support::fake_fcm::FakeFcm::start("p1").await;
    // Under systemd: both handed over as credentials.
    let creds = env.path().join("creds");
    std::fs::create_dir_all(&creds).unwrap();
    std::fs::write(creds.join("push-password"), "pw\n").unwrap();
    std::fs::write(creds.join("sa.json"), &fake.account.json).unwrap();
    let (code, out, err) = check(
        &env,
        &config,
        &[("CREDENTIALS_DIRECTORY", creds.to_str().unwrap())],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("1 push app"), "{out}");

    // A drop-in that hands over only some: the rest come from secrets/.
    std::fs::remove_file(creds.join("sa.json")).unwrap();
    std::fs::create_dir_all(&fallback).unwrap();
    std::fs::write(fallback.join("sa.json"), &fake.account.json).unwrap();
    let (code, _, err) = check(
        &env,
        &config,
        &[("CREDENTIALS_DIRECTORY", creds.to_str().unwrap())],
    )
    .await;
    assert_eq!(code, 0, "{err}");

    // No systemd at all: everything from secrets/.
    std::fs::write(fallback.join("push-password"), "pw\n").unwrap();
    let (code, _, err) = check(&env, &config, &[]).await;
    assert_eq!(code, 0, "{err}");
}

/// The credentials drop-in shipped as an example and the shipped config agree: every `%d/<name>`
/// the config mentions has a `LoadCredential=<name>:` line, and each line's source is
/// `/etc/brandgate/secrets/<name>`, the very file the `%d/<name>` fallback reads without the
/// drop-in (so one set of files works both ways).
#[test]
fn the_credentials_drop_in_matches_the_shipped_config() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let drop_in = std::fs::read_to_string(root.join("systemd/credentials.conf.example")).unwrap();
    let config = std::fs::read_to_string(root.join("config/brandgate.toml")).unwrap();
    let mut credentials = Vec::new();
    for line in drop_in.lines() {
        // Optional ones are shipped commented out.
        let Some(spec) = line.trim_start_matches('#').strip_prefix("LoadCredential=") else {
            continue;
        };
        let (name, source) = spec.split_once(':').unwrap();
        assert_eq!(
            source,
            format!("/etc/brandgate/secrets/{name}"),
            "credential {name}"
        );
        credentials.push(name.to_string());
    }
    let mut named = Vec::new();
    for part in config.split("\"%d/").skip(1) {
        let name = part.split('"').next().unwrap();
        assert!(
            credentials.iter().any(|c| c == name),
            "config/brandgate.toml names %d/{name}, the drop-in has no LoadCredential for it"
        );
        named.push(name);
    }
    for expected in [
        "apns-key.p8",
        "fcm-service-account.json",
        "push-basic-password",
        "tls-key",
        "data-keys",
        "store-password",
        "feedback-webhook-secret",
    ] {
        assert!(
            named.contains(&expected),
            "the config mentions %d/{expected}"
        );
    }
}

#[tokio::test]
async fn secrets_readable_by_everyone_are_warned_about() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::new();
    let pw = env.file("open-password", "pw");
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (fake, key) = apns(APP).await;
    let auth = format!(
        "basic = {{ username = \"p\", password_file = \"{}\" }}\n",
        pw.display()
    );
    let (code, out, err) = check(
        &env,
        &env.config(&env.apns_app(APP, &fake, &key, "", &auth, "")),
        &[],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("readable by every user"), "{out}");
}

#[tokio::test]
async fn a_port_in_use_is_one_clear_line() {
    let env = TestEnv::new();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = env.config("").replacen(
        "listen = \"127.0.0.1:0\"",
        &format!("listen = \"127.0.0.1:{port}\""),
        1,
    );
    let path = env.file("serve.toml", &config);
    let (code, _, err) = run(&["serve", "--config", path.to_str().unwrap()], &[]).await;
    // Not a config problem: systemd may restart and succeed once the port is free.
    assert_eq!(code, 1);
    // Log lines come before it; the error itself is one line naming the key and the fix.
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("brandgate: "))
        .collect();
    assert_eq!(lines.len(), 1, "{err}");
    let line = lines[0];
    assert!(
        line.starts_with("brandgate: server.listen: ")
            && line.contains(&format!("127.0.0.1:{port}"))
            && line.contains("another process uses this port")
            && line.contains("set server.listen to a free port"),
        "{err}"
    );
}

/// The one line `check-config` prints for a single problem (exit 78), checked to start with
/// `key` and to be the only line.
async fn only_problem(env: &TestEnv, config: &str, key: &str) -> String {
    let (code, out, err) = check(env, config, &[]).await;
    assert_eq!(code, 78, "{out}{err}");
    assert_eq!(err.lines().count(), 1, "one line:\n{err}");
    let line = err.trim_end().to_string();
    assert!(
        line.starts_with(&format!("brandgate: {key}: ")),
        "names {key}: {line}"
    );
    line
}

#[tokio::test]
async fn a_tls_key_that_is_not_pem_is_one_line() {
    let env = TestEnv::new();
    let configured = env.path().join("server.key");
    let config = |key: &std::path::Path| {
        env.config("").replace(
            &configured.display().to_string(),
            &key.display().to_string(),
        )
    };
    let text = env.secret("not-a-key.pem", "this is not a key\n");
    let line = only_problem(&env, &config(&text), "server.tls.key").await;
    assert!(
        line.contains(&text.display().to_string())
            && line.contains("holds no PEM private key")
            && line.contains("openssl pkey -inform DER"),
        "{line}"
    );
    // The usual mix-up: the certificate given as the key.
    let cert = env.path().join("server.crt");
    let line = only_problem(&env, &config(&cert), "server.tls.key").await;
    assert!(
        line.contains("holds a certificate, not a private key"),
        "{line}"
    );
    // A real key, but not the certificate's.
    let other = TestCa::new("other").server().write(env.path(), "other");
    let line = only_problem(&env, &config(&other.1), "server.tls.key").await;
    assert!(
        line.contains("is not the key of the certificate in"),
        "{line}"
    );
}

#[tokio::test]
async fn a_malformed_service_account_file_is_one_line() {
    let env = TestEnv::new();
    let account = ServiceAccount::new("brand-app-12345", "https://oauth2.googleapis.com/token");
    // Cut short in the middle of the private key, as a bad copy would be.
    let cut = account.json.find("MII").unwrap() + 40;
    let file = env.secret("sa.json", &account.json[..cut]);
    let config = env.config(&format!(
        "[[push.apps]]\nid = \"{APP}\"\n[push.apps.auth]\n{}[push.apps.fcm]\nservice_account_file = \"{}\"\n",
        env.basic_auth(),
        file.display()
    ));
    let line = only_problem(&env, &config, "push.apps[0].fcm.service_account_file").await;
    assert!(
        line.contains(&file.display().to_string())
            && line.contains("is not valid JSON")
            && line.contains("download the key again"),
        "{line}"
    );
    assert!(
        !line.contains(&account.json[cut - 30..cut]),
        "no key material: {line}"
    );
}

#[tokio::test]
async fn a_wrong_pkcs12_password_is_one_line() {
    let env = TestEnv::new();
    let (cert, key) = TestCa::new("Apple (test)")
        .client("Apple Push Services: com.brand.app", &[APP])
        .write(env.path(), "push");
    let right = env.secret("right-password", "right\n");
    let wrong = env.secret("wrong-password", "wrong\n");
    let p12 = env.path().join("push.p12");
    let made = std::process::Command::new("openssl")
        .args(["pkcs12", "-export", "-in"])
        .arg(&cert)
        .arg("-inkey")
        .arg(&key)
        .arg("-out")
        .arg(&p12)
        .arg("-passout")
        .arg(format!("file:{}", right.display()))
        .status()
        .expect("openssl");
    assert!(made.success());
    let config = env.config(&format!(
        "[[push.apps]]\nid = \"{APP}\"\n[push.apps.auth]\n{}[push.apps.apns]\ntopic = \"{APP}\"\npkcs12_file = \"{}\"\npkcs12_password_file = \"{}\"\n",
        env.basic_auth(),
        p12.display(),
        wrong.display()
    ));
    let line = only_problem(&env, &config, "push.apps[0].apns.pkcs12_password_file").await;
    assert!(
        line.contains(&format!(
            "the password in {} does not open {}",
            wrong.display(),
            p12.display()
        )),
        "{line}"
    );
    assert!(
        !line.contains("wrong\n") && !line.contains(": wrong"),
        "{line}"
    );
}

#[tokio::test]
async fn more_than_four_custom_headers_is_one_line() {
    let env = TestEnv::new();
    let headers: Vec<String> = (1..=5)
        .map(|i| {
            let value = env.secret(&format!("header-{i}"), &format!("value-{i}\n"));
            format!(
                "{{ name = \"X-Brand-{i}\", value_file = \"{}\" }}",
                value.display()
            )
        })
        .collect();
    let account = ServiceAccount::new("brand-app-12345", "https://oauth2.googleapis.com/token");
    let account = env.secret("sa.json", &account.json);
    let config = env.config(&format!(
        "[[push.apps]]\nid = \"{APP}\"\n[push.apps.auth]\nheaders = [{}]\n[push.apps.fcm]\nservice_account_file = \"{}\"\n",
        headers.join(", "),
        account.display()
    ));
    let line = only_problem(&env, &config, "push.apps[0].auth.headers").await;
    assert!(
        line.contains("5 headers configured") && line.contains("at most 4"),
        "{line}"
    );
}

#[tokio::test]
async fn push_test_sends_through_the_pipeline_and_prints_the_answer() {
    let env = TestEnv::new();
    let (fake, key) = apns(APP).await;
    let config = env.config(&env.apns_app(
        APP,
        &fake,
        &key,
        "mask_text = \"New message\"",
        &env.basic_auth(),
        "",
    ));
    let path = env.file("pt.toml", &config);
    let path = path.to_str().unwrap();
    let (code, out, err) = run(
        &[
            "push-test",
            "--config",
            path,
            "--app",
            APP,
            "--token",
            "00aa11bb",
            "--text",
            "real text",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("apns answered HTTP 200: delivered"), "{out}");
    let sent = &fake.delivered_to("00aa11bb")[0];
    assert_eq!(
        sent.body["aps"]["alert"], "New message",
        "the mask applies to push-test too"
    );

    fake.script(
        "00aa11cc",
        vec![crate::support::fake_apns::gone(
            "Unregistered",
            1_700_000_000_000,
        )],
    );
    let (code, out, _) = run(
        &[
            "push-test",
            "--config",
            path,
            "--app",
            APP,
            "--token",
            "00aa11cc",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 1);
    assert!(out.contains("HTTP 410 Unregistered"), "{out}");

    let (code, _, err) = run(
        &[
            "push-test",
            "--config",
            path,
            "--app",
            "com.nope",
            "--token",
            "00",
        ],
        &[],
    )
    .await;
    assert_eq!(code, 78);
    assert!(err.contains("com.nope"), "{err}");
}

/// A secret the service user cannot read is named with the fix. As root, the check runs as an
/// unprivileged user (root reads everything); otherwise the file's mode alone locks it.
#[tokio::test]
async fn an_unreadable_secret_says_how_to_fix_it() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let env = TestEnv::new();
    std::fs::set_permissions(env.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let locked = env.secret("locked-password", "pw");
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    }
    let config = env.config(&format!(
        "[[push.apps]]\nid = \"{APP}\"\n[push.apps.auth]\nbasic = {{ username = \"p\", password_file = \"{}\" }}\n[push.apps.apns]\ntopic = \"{APP}\"\ncertificate_file = \"/nonexistent/c.pem\"\nprivate_key_file = \"/nonexistent/k.pem\"\n",
        locked.display()
    ));
    let path = env.file("locked.toml", &config);
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    // The unprivileged user may not reach the build directory (a checkout under a 0700
    // directory): it runs a copy from the test's own world-readable directory.
    let binary = env.path().join("brandgate");
    std::fs::copy(crate::support::daemon::binary(), &binary).unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut command = std::process::Command::new(&binary);
    command.args(["check-config", "--config", path.to_str().unwrap()]);
    if root {
        command.uid(65534).gid(65534);
    }
    let out = command.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("push.apps[0].auth.basic.password_file")
            && err.contains("Permission denied")
            && err.contains("chown root:brandgate"),
        "{err}"
    );
    let cert_line = err
        .lines()
        .find(|l| l.contains("push.apps[0].apns.certificate_file"))
        .unwrap_or_default();
    assert!(
        cert_line.contains("/nonexistent/c.pem") && cert_line.contains("fix the path"),
        "{err}"
    );
}

#[tokio::test]
async fn help_and_version_everywhere() {
    let (code, out, _) = run(&["-V"], &[]).await;
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        format!("brandgate {}", env!("CARGO_PKG_VERSION"))
    );
    // The long form says which build: commit, date, compiler, target.
    let (code, out, _) = run(&["--version"], &[]).await;
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], format!("brandgate {}", env!("CARGO_PKG_VERSION")));
    let keys: Vec<&str> = lines[1..]
        .iter()
        .filter_map(|l| l.split_once(": ").map(|(k, _)| k))
        .collect();
    assert_eq!(keys, ["commit", "built", "compiler", "target"], "{out}");
    assert!(out.contains("rustc "), "{out}");
    let (code, out, _) = run(&["--help"], &[]).await;
    assert_eq!(code, 0);
    for command in ["serve", "check-config", "push-test"] {
        assert!(out.contains(command), "{out}");
        let (code, out, _) = run(&[command, "--help"], &[]).await;
        assert_eq!(code, 0, "{command}");
        assert!(out.contains("--config"), "{command}: {out}");
        let (code, out, _) = run(&[command, "--version"], &[]).await;
        assert_eq!(code, 0, "{command}");
        assert!(out.contains(env!("CARGO_PKG_VERSION")), "{command}: {out}");
    }
}
