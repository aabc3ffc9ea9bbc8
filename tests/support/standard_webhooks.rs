//! The independent check of brandgate's webhook signatures: the Standard Webhooks project's
//! own library (npm `standardwebhooks`, through tests/node/verify-webhook.mjs) verifies one
//! request as a brand's receiver would.

use std::process::Stdio;

use tokio::io::AsyncWriteExt;

/// `Ok(())` when the library accepts the request, else its reason.
pub async fn verify(secret: &str, headers: &http::HeaderMap, body: &str) -> Result<(), String> {
    let headers: serde_json::Map<String, serde_json::Value> = headers
        .iter()
        .filter(|(name, _)| name.as_str().starts_with("webhook-"))
        .map(|(name, value)| (name.to_string(), value.to_str().unwrap().into()))
        .collect();
    let request = serde_json::json!({ "secret": secret, "headers": headers, "body": body });
    let mut child = tokio::process::Command::new("node")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/node/verify-webhook.mjs"
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("node (tests/node: run `npm ci --prefix tests/node`)");
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(request.to_string().as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(out.status.success(), "verify-webhook.mjs failed");
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    match answer["ok"].as_bool() {
        Some(true) => Ok(()),
        _ => Err(answer["error"].as_str().unwrap_or("?").to_string()),
    }
}
