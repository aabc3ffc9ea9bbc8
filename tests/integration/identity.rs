//! The identity bridge so far: key publication, anonymous identities, the key ring at rest and
//! across rotation and nodes. Every token brandgate mints is checked by node's jose library
//! against what brandgate publishes, not by brandgate's own code.

use serde_json::Value;

use crate::support::TestEnv;
use crate::support::daemon::{Daemon, run};
use crate::support::identity_world::data_key_line;
use crate::support::jose::{self, Key};

const ISSUER: &str = "https://brandgate.test";

fn identity_config(env: &TestEnv, algorithm: &str, anonymous: &str, store_extra: &str) -> String {
    let keys = env.secret("data-keys", &data_key_line("k1"));
    env.config(&format!(
        r#"
[store]
data_keys_file = "{keys}"
{store_extra}
[identity]
issuer = "{ISSUER}"
audience = "platform"
algorithm = "{algorithm}"
token_lifetime = "10m"
[identity.anonymous]
{anonymous}
"#,
        keys = keys.display()
    ))
}

const ANONYMOUS_ON: &str = "enabled = true\ntoken_lifetime = \"1h\"\nper_minute = 3";

async fn signup(env: &TestEnv, daemon: &Daemon, path: &str) -> crate::support::client::Answer {
    env.client()
        .send(
            http::Method::POST,
            &daemon.url(path),
            &[],
            bytes::Bytes::new(),
        )
        .await
}

async fn jwks(env: &TestEnv, daemon: &Daemon) -> Value {
    env.client()
        .get(&daemon.url("/.well-known/jwks.json"))
        .await
        .json()
}

#[tokio::test]
async fn anonymous_identities_verify_with_an_independent_library() {
    let env = TestEnv::new();
    let daemon = Daemon::start(
        env.path(),
        &identity_config(&env, "RS256", ANONYMOUS_ON, ""),
    )
    .await;
    let set = jwks(&env, &daemon).await;
    let pem_line = env
        .client()
        .get(&daemon.url("/identity/v1/public-key.pem"))
        .await
        .body;
    let mut subjects = Vec::new();
    for path in ["/identity/v1/signup", "/api/account/12345678/signup"] {
        let answer = signup(&env, &daemon, path).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        assert_eq!(answer.headers["cache-control"], "no-store");
        let token = answer.json()["jwt"].as_str().unwrap().to_string();
        let by_jwks = jose::verify(&token, Key::Jwks(&set), Some(ISSUER), Some("platform"))
            .await
            .unwrap();
        let by_pem = jose::verify(
            &token,
            Key::PemLine {
                line: &pem_line,
                alg: "RS256",
            },
            Some(ISSUER),
            Some("platform"),
        )
        .await
        .unwrap();
        assert_eq!(by_jwks["payload"], by_pem["payload"]);
        let payload = &by_jwks["payload"];
        let sub = payload["sub"].as_str().unwrap();
        assert!(
            uuid::Uuid::parse_str(sub).is_ok_and(|u| u.get_version_num() == 4),
            "{sub}"
        );
        assert_eq!(
            payload["exp"].as_u64().unwrap() - payload["iat"].as_u64().unwrap(),
            3600
        );
        assert_eq!(payload["jti"].as_str().unwrap().len(), 32);
        assert_eq!(by_jwks["header"]["alg"], "RS256");
        assert_eq!(by_jwks["header"]["kid"], set["keys"][0]["kid"]);
        subjects.push(sub.to_string());
    }
    assert_ne!(subjects[0], subjects[1]);
    // jose refuses what it should: another issuer, another audience.
    let token = signup(&env, &daemon, "/identity/v1/signup").await.json()["jwt"]
        .as_str()
        .unwrap()
        .to_string();
    let wrong_issuer = jose::verify(&token, Key::Jwks(&set), Some("https://evil.test"), None)
        .await
        .unwrap_err();
    assert!(
        wrong_issuer.contains("ERR_JWT_CLAIM_VALIDATION_FAILED")
            && wrong_issuer.contains("\"iss\""),
        "{wrong_issuer}"
    );
    let wrong_audience = jose::verify(&token, Key::Jwks(&set), None, Some("someone-else"))
        .await
        .unwrap_err();
    assert!(
        wrong_audience.contains("ERR_JWT_CLAIM_VALIDATION_FAILED")
            && wrong_audience.contains("\"aud\""),
        "{wrong_audience}"
    );
}

#[tokio::test]
async fn keys_are_published_as_the_platform_reads_them() {
    let env = TestEnv::new();
    let daemon = Daemon::start(env.path(), &identity_config(&env, "RS256", "", "")).await;
    let client = env.client();
    let discovery = client
        .get(&daemon.url("/.well-known/openid-configuration"))
        .await;
    assert_eq!(discovery.status, 200);
    let d = discovery.json();
    assert_eq!(d["issuer"], ISSUER);
    assert_eq!(d["jwks_uri"], format!("{ISSUER}/.well-known/jwks.json"));
    assert_eq!(
        d["id_token_signing_alg_values_supported"],
        serde_json::json!(["RS256"])
    );
    let keys = client.get(&daemon.url("/.well-known/jwks.json")).await;
    assert_eq!(keys.headers["cache-control"], "public, max-age=300");
    let set = keys.json();
    assert_eq!(set["keys"].as_array().unwrap().len(), 1);
    let key = &set["keys"][0];
    assert_eq!(
        (
            key["kty"].as_str(),
            key["use"].as_str(),
            key["alg"].as_str()
        ),
        (Some("RSA"), Some("sig"), Some("RS256"))
    );
    assert!(
        key.get("d").is_none() && key.get("p").is_none(),
        "no private member is ever published"
    );
    let pem = client.get(&daemon.url("/identity/v1/public-key.pem")).await;
    assert!(
        pem.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    assert!(
        !pem.body.contains('\n') && !pem.body.contains("BEGIN"),
        "one line, no header"
    );
    // Anonymous identities are off unless enabled.
    let a = signup(&env, &daemon, "/identity/v1/signup").await;
    assert_eq!(a.status, 404);
    assert!(a.json()["error"].as_str().unwrap().contains("not enabled"));
}

#[tokio::test]
async fn es256_and_eddsa_keys() {
    for alg in ["ES256", "EdDSA"] {
        let env = TestEnv::new();
        let daemon = Daemon::start(env.path(), &identity_config(&env, alg, ANONYMOUS_ON, "")).await;
        let token = signup(&env, &daemon, "/identity/v1/signup").await.json()["jwt"]
            .as_str()
            .unwrap()
            .to_string();
        let set = jwks(&env, &daemon).await;
        let pem_line = env
            .client()
            .get(&daemon.url("/identity/v1/public-key.pem"))
            .await
            .body;
        let verified = jose::verify(&token, Key::Jwks(&set), Some(ISSUER), None)
            .await
            .unwrap();
        assert_eq!(verified["header"]["alg"], alg);
        jose::verify(
            &token,
            Key::PemLine {
                line: &pem_line,
                alg,
            },
            Some(ISSUER),
            None,
        )
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn anonymous_signups_are_rate_limited_per_source() {
    let env = TestEnv::new();
    let daemon = Daemon::start(
        env.path(),
        &identity_config(&env, "ES256", ANONYMOUS_ON, ""),
    )
    .await;
    for _ in 0..3 {
        assert_eq!(
            signup(&env, &daemon, "/identity/v1/signup").await.status,
            200
        );
    }
    let a = signup(&env, &daemon, "/api/account/1/signup").await;
    assert_eq!(a.status, 429);
    let retry: u64 = a.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
}

#[tokio::test]
async fn private_keys_are_sealed_in_the_database() {
    let env = TestEnv::new();
    let config = identity_config(&env, "RS256", ANONYMOUS_ON, "");
    let mut daemon = Daemon::start(env.path(), &config).await;
    assert_eq!(
        signup(&env, &daemon, "/identity/v1/signup").await.status,
        200
    );
    daemon.stop().await;
    let db = std::fs::read(env.path().join("state/brandgate.db")).unwrap();
    // A plaintext PKCS#8 RSA key would carry the rsaEncryption OID; sealed bytes do not.
    let rsa_oid = [
        0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
    ];
    assert!(
        !db.windows(rsa_oid.len()).any(|w| w == rsa_oid),
        "a private key is readable in the database"
    );
    assert!(!String::from_utf8_lossy(&db).contains("PRIVATE KEY"));
    // The database with another data key: the key ring is still listed, but nothing can sign.
    env.secret("data-keys", &data_key_line("k9"));
    let daemon = Daemon::start(env.path(), &config).await;
    let a = signup(&env, &daemon, "/identity/v1/signup").await;
    assert_eq!(a.status, 503, "{}", a.body);
    assert!(
        !a.body.contains("k1"),
        "internals stay in the log: {}",
        a.body
    );
    daemon.wait_log("does not hold").await;
}

#[tokio::test]
async fn a_rotated_key_is_published_before_it_signs() {
    let env = TestEnv::new();
    let config = identity_config(&env, "ES256", ANONYMOUS_ON, "");
    let daemon = Daemon::start(env.path(), &config).await;
    let before = jwks(&env, &daemon).await;
    let old_kid = before["keys"][0]["kid"].as_str().unwrap().to_string();
    let path = daemon.config_path.to_str().unwrap().to_string();
    let (code, out, err) = run(&["keys", "rotate", "--config", &path], &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("scheduled key"), "{out}");
    let (code, listing, _) = run(&["keys", "list", "--config", &path], &[]).await;
    assert_eq!(code, 0);
    assert!(
        listing.contains("active") && listing.contains("next"),
        "{listing}"
    );
    // A second rotation while one is pending is refused with the reason.
    let (code, _, err) = run(&["keys", "rotate", "--config", &path], &[]).await;
    assert_ne!(code, 0);
    assert!(err.contains("already waiting to activate"), "{err}");
    // The running daemon publishes the new key at once, and still signs with the old one.
    let after = jwks(&env, &daemon).await;
    let kids: Vec<&str> = after["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert_eq!(kids.len(), 2, "{after}");
    assert!(kids.contains(&old_kid.as_str()));
    let token = signup(&env, &daemon, "/identity/v1/signup").await.json()["jwt"]
        .as_str()
        .unwrap()
        .to_string();
    let verified = jose::verify(&token, Key::Jwks(&after), Some(ISSUER), None)
        .await
        .unwrap();
    assert_eq!(verified["header"]["kid"], old_kid.as_str());
}

#[tokio::test]
async fn nodes_sharing_postgresql_agree_on_the_active_key() {
    let Some(db) = crate::support::postgres::Database::create().await else {
        return;
    };
    let env_a = TestEnv::new();
    let env_b = TestEnv::new();
    let keys = data_key_line("shared");
    let store = db.store_line();
    let config_a = identity_config(&env_a, "RS256", ANONYMOUS_ON, &store);
    let config_b = identity_config(&env_b, "RS256", ANONYMOUS_ON, &store);
    env_a.secret("data-keys", &keys);
    env_b.secret("data-keys", &keys);
    let (a, b) = tokio::join!(
        Daemon::start(env_a.path(), &config_a),
        Daemon::start(env_b.path(), &config_b)
    );
    let (set_a, set_b) = (jwks(&env_a, &a).await, jwks(&env_b, &b).await);
    assert_eq!(set_a, set_b, "both nodes publish the same ring");
    // A token from either node verifies with the other's JWKS, signed by the same key.
    let from_a = signup(&env_a, &a, "/identity/v1/signup").await.json()["jwt"]
        .as_str()
        .unwrap()
        .to_string();
    let from_b = signup(&env_b, &b, "/identity/v1/signup").await.json()["jwt"]
        .as_str()
        .unwrap()
        .to_string();
    let va = jose::verify(&from_a, Key::Jwks(&set_b), Some(ISSUER), None)
        .await
        .unwrap();
    let vb = jose::verify(&from_b, Key::Jwks(&set_a), Some(ISSUER), None)
        .await
        .unwrap();
    assert_eq!(va["header"]["kid"], vb["header"]["kid"]);
    drop((a, b));
    db.drop().await;
}

#[tokio::test]
async fn a_new_data_key_takes_over_and_old_records_are_resealed() {
    let env = TestEnv::new();
    let config = identity_config(&env, "ES256", ANONYMOUS_ON, "");
    let old_line = std::fs::read_to_string(env.path().join("data-keys")).unwrap();
    let mut daemon = Daemon::start(env.path(), &config).await;
    assert_eq!(
        signup(&env, &daemon, "/identity/v1/signup").await.status,
        200
    );
    daemon.stop().await;
    // The operator adds a new data key in front (it becomes active), keeping the old one.
    env.secret("data-keys", &format!("{}{old_line}", data_key_line("k2")));
    let path = env.path().join("brandgate.toml");
    let (code, out, err) = run(
        &["store", "reseal", "--config", path.to_str().unwrap()],
        &[],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("re-sealed 1 signing key"), "{out}");
    // Now the old key can go: everything opens with the new one alone.
    let both = std::fs::read_to_string(env.path().join("data-keys")).unwrap();
    env.secret("data-keys", both.lines().next().unwrap());
    let daemon = Daemon::start(env.path(), &config).await;
    let a = signup(&env, &daemon, "/identity/v1/signup").await;
    assert_eq!(a.status, 200, "{}", a.body);
    let (_, out, _) = run(
        &["store", "reseal", "--config", path.to_str().unwrap()],
        &[],
    )
    .await;
    assert!(out.contains("re-sealed 0 signing key"), "{out}");
}

#[tokio::test]
async fn tokens_of_a_retired_key_verify_until_they_expire() {
    let env = TestEnv::new();
    let anonymous = "enabled = true\ntoken_lifetime = \"1h\"\nper_minute = 1000";
    let config = identity_config(&env, "RS256", anonymous, "")
        + "[identity.keys]\nrotation_lead = \"2s\"\njwks_max_age = \"1s\"\n";
    let daemon = Daemon::start(env.path(), &config).await;
    let old = signup(&env, &daemon, "/identity/v1/signup").await.json()["jwt"]
        .as_str()
        .unwrap()
        .to_string();
    let path = daemon.config_path.to_str().unwrap().to_string();
    let (code, out, err) = run(&["keys", "rotate", "--config", &path], &[]).await;
    assert_eq!(code, 0, "{out}{err}");

    // The new key signs once its lead time is over and the daemon's ring read (at most 10 s
    // old) has seen it; wait for that, boundedly.
    let old_kid = jose::verify(
        &old,
        Key::Jwks(&jwks(&env, &daemon).await),
        Some(ISSUER),
        None,
    )
    .await
    .unwrap()["header"]["kid"]
        .clone();
    let mut new = None;
    for _ in 0..300 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let set = jwks(&env, &daemon).await;
        if set["keys"].as_array().unwrap().len() < 2 {
            continue;
        }
        let answer = signup(&env, &daemon, "/identity/v1/signup").await;
        if answer.status != 200 {
            continue;
        }
        let token = answer.json()["jwt"].as_str().unwrap().to_string();
        let v = jose::verify(&token, Key::Jwks(&set), Some(ISSUER), None)
            .await
            .unwrap();
        if v["header"]["kid"] != old_kid {
            new = Some(token);
            break;
        }
    }
    assert!(new.is_some(), "the new key never started signing");

    // The old key is retired but still published: its token verifies.
    let set = jwks(&env, &daemon).await;
    let verified = jose::verify(&old, Key::Jwks(&set), Some(ISSUER), None)
        .await
        .expect("a token of the retired key still verifies");
    assert_eq!(verified["header"]["kid"], old_kid);
    let (_, listing, _) = run(&["keys", "list", "--config", &path], &[]).await;
    assert!(listing.contains("retired"), "{listing}");
}
