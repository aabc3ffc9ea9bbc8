//! The independent check of what brandgate mints: node's `jose` library
//! (tests/node/verify-jwt.mjs, installed by `npm ci` in tests/run.sh) verifies a token against
//! a JWKS or a one-line PEM public key.

use std::path::PathBuf;

fn script() -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/node/verify-jwt.mjs"
    ))
}

/// What jose verified: `{"payload": ..., "header": ...}`, or its refusal.
pub async fn verify(
    token: &str,
    key: Key<'_>,
    issuer: Option<&str>,
    audience: Option<&str>,
) -> Result<serde_json::Value, String> {
    let dir = tempfile::tempdir().unwrap();
    let mut args: Vec<String> = vec![
        script().display().to_string(),
        "--token".into(),
        token.into(),
    ];
    match key {
        Key::Jwks(set) => {
            let file = dir.path().join("jwks.json");
            std::fs::write(&file, set.to_string()).unwrap();
            args.extend(["--jwks".into(), file.display().to_string()]);
        }
        Key::PemLine { line, alg } => {
            let file = dir.path().join("key.txt");
            std::fs::write(&file, line).unwrap();
            args.extend([
                "--pem-line".into(),
                file.display().to_string(),
                "--alg".into(),
                alg.into(),
            ]);
        }
    }
    if let Some(i) = issuer {
        args.extend(["--issuer".into(), i.into()]);
    }
    if let Some(a) = audience {
        args.extend(["--audience".into(), a.into()]);
    }
    let out = tokio::process::Command::new("node")
        .args(&args)
        .output()
        .await
        .expect("node (tests/node: run `npm ci --prefix tests/node`)");
    if out.status.success() {
        Ok(serde_json::from_slice(&out.stdout).unwrap())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

pub enum Key<'a> {
    Jwks(&'a serde_json::Value),
    PemLine { line: &'a str, alg: &'a str },
}
