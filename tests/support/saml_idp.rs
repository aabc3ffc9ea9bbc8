//! A real SAML identity provider for the agents' SAML sign-in tests: Debian's pysaml2
//! (`tests/support/saml/idp.py`) over TLS with a certificate of the test CA, signing with its
//! own RSA key (made by the `openssl` CLI); and the attack fixtures made from its answers by
//! lxml and the xmlsec1 CLI (`tests/support/saml/attacks.py`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::TestEnv;
use super::client::Client;

pub const IDP_ENTITY: &str = "https://idp.brand.test/saml";

/// The running provider.
pub struct SamlIdp {
    _child: tokio::process::Child,
    pub base: String,
    pub key: PathBuf,
    pub cert: PathBuf,
    /// Where brandgate's SP metadata goes (read at the provider's first sign-in).
    pub sp_metadata_file: PathBuf,
    client: Client,
}

fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/support/saml")
        .join(name)
}

/// An RSA key and self-signed certificate, by the `openssl` CLI.
pub fn rsa_key_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let cert = dir.join(format!("{name}.crt"));
    let status = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", &format!("/CN={name}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null())
        .status()
        .expect("openssl");
    assert!(status.success(), "openssl req failed");
    (key, cert)
}

impl SamlIdp {
    /// Starts the provider; `users` maps a name to its `email` and `groups` attributes.
    pub async fn start(env: &TestEnv, users: Value) -> SamlIdp {
        let (key, cert) = rsa_key_pair(env.path(), "saml-idp-signing");
        let (tls_cert, tls_key) = env.ca.server().write(env.path(), "saml-idp-server");
        let sp_metadata_file = env.path().join("brandgate-sp-metadata.xml");
        let config = json!({
            "entity_id": IDP_ENTITY,
            "key_pem": key, "cert_pem": cert,
            "tls_cert": tls_cert, "tls_key": tls_key,
            "sp_metadata_file": sp_metadata_file,
            "users": users,
        });
        let file = env.file("saml-idp.json", &config.to_string());
        let mut child = tokio::process::Command::new("/usr/bin/python3")
            .arg(script("idp.py"))
            .arg(&file)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("/usr/bin/python3 (Debian's, with python3-pysaml2)");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the SAML provider did not start in 30 s")
            .unwrap()
            .expect("the SAML provider exited (is python3-pysaml2 installed?)");
        let port = line.strip_prefix("ready ").expect("a ready line");
        SamlIdp {
            _child: child,
            base: format!("https://127.0.0.1:{port}"),
            key,
            cert,
            sp_metadata_file,
            client: env.client(),
        }
    }

    /// Reads brandgate's SP metadata from `url` (as the provider's administrator would import
    /// it) into the file the provider loads at its first sign-in.
    pub async fn import_sp_metadata(&self, url: &str) {
        let a = self.client.get(url).await;
        assert_eq!(a.status, 200, "{}", a.body);
        assert_eq!(a.headers["content-type"], "application/samlmetadata+xml");
        std::fs::write(&self.sp_metadata_file, &a.body).unwrap();
    }

    pub fn metadata_url(&self) -> String {
        format!("{}/metadata", self.base)
    }

    pub async fn metadata(&self) -> String {
        let a = self.client.get(&self.metadata_url()).await;
        assert_eq!(a.status, 200, "{}", a.body);
        a.body
    }

    /// The signed answer to a sign-in request (`redirect` is where brandgate sent the
    /// browser): the form's action and its `SAMLResponse`, decoded. `sign` is `assertion`,
    /// `response` or `both`.
    pub async fn answer(&self, redirect: &str, user: &str, sign: &str) -> (String, String) {
        assert!(redirect.starts_with(&self.base), "{redirect}");
        let url = format!("{redirect}&user={user}&sign={sign}");
        let a = self.client.get(&url).await;
        assert_eq!(a.status, 200, "the provider refused: {}", a.body);
        let action = between(&a.body, "action=\"", "\"");
        let encoded = between(&a.body, "name=\"SAMLResponse\" value=\"", "\"");
        let xml = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .expect("base64");
        (action, String::from_utf8(xml).unwrap())
    }
}

fn between(text: &str, start: &str, end: &str) -> String {
    let from = text
        .find(start)
        .unwrap_or_else(|| panic!("no {start} in {text}"))
        + start.len();
    let len = text[from..].find(end).unwrap();
    text[from..from + len].to_string()
}

/// The attack fixtures made from two genuine answers (assertion signed; response signed), by
/// name (`other-audience.xml`, ...).
pub fn attacks(
    env: &TestEnv,
    idp: &SamlIdp,
    assertion_signed: &str,
    response_signed: &str,
) -> HashMap<String, String> {
    let dir = env.path().join("saml-attacks");
    let a = env.file("saml-assertion-signed.xml", assertion_signed);
    let r = env.file("saml-response-signed.xml", response_signed);
    let (other_key, other_cert) = rsa_key_pair(env.path(), "saml-other-signing");
    let out = std::process::Command::new("/usr/bin/python3")
        .arg(script("attacks.py"))
        .args([&a, &r, &idp.key, &idp.cert, &other_key, &other_cert, &dir])
        .output()
        .expect("/usr/bin/python3 with python3-lxml and xmlsec1");
    assert!(
        out.status.success(),
        "attacks.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            (name, std::fs::read_to_string(&path).unwrap())
        })
        .collect()
}
