//! The signature on brandgate's outbound webhooks (the relay's events, the push proxy's dead
//! tokens), one scheme for both: Standard Webhooks (<https://www.standardwebhooks.com/>), so a
//! brand verifies them with that project's library in any language.
//!
//! - `webhook-id`: the delivery's id, the same on every attempt (receivers drop repeats);
//! - `webhook-timestamp`: Unix seconds of this attempt (receivers refuse old ones);
//! - `webhook-signature`: `v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`.
//!
//! The key is the webhook's secret file: `whsec_<base64>` as the standard writes secrets (the
//! key is the decoded bytes), or any other text, used as it is (libraries take it as a "raw"
//! secret). For one release a webhook can also carry its earlier headers
//! (`legacy_signature = true`), signed with the file's bytes as before:
//! `hex(HMAC-SHA256("<timestamp>.<body>"))`.

use base64::Engine;
use http::{HeaderName, HeaderValue};

use crate::secret::Secret;

/// Why a webhook secret cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum WebhookKeyError {
    #[error("the secret starts with whsec_ but the rest is not base64")]
    NotBase64,
    #[error("the secret's key is empty")]
    Empty,
}

/// A webhook's signing keys, from its secret file's bytes. Prints redacted.
pub struct WebhookKey {
    /// The Standard Webhooks key (decoded from `whsec_...`, or the bytes as they are).
    standard: Secret<Vec<u8>>,
    /// The file's bytes, for the legacy headers.
    legacy: Secret<Vec<u8>>,
}

impl std::fmt::Debug for WebhookKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookKey(redacted)")
    }
}

impl WebhookKey {
    pub fn new(secret: Secret<Vec<u8>>) -> Result<WebhookKey, WebhookKeyError> {
        let standard = match secret.expose().strip_prefix(b"whsec_") {
            Some(encoded) => base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .map_err(|_| WebhookKeyError::NotBase64)?,
            None => secret.expose().clone(),
        };
        if standard.is_empty() {
            return Err(WebhookKeyError::Empty);
        }
        Ok(WebhookKey {
            standard: Secret::new(standard),
            legacy: secret,
        })
    }

    /// `v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">`.
    pub fn signature(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let tag = hmac(
            &self.standard,
            &[id.as_bytes(), b".", stamp(timestamp).as_bytes(), b".", body],
        );
        format!(
            "v1,{}",
            base64::engine::general_purpose::STANDARD.encode(tag)
        )
    }

    /// The three Standard Webhooks headers for one attempt.
    pub fn headers(&self, id: &str, timestamp: u64, body: &[u8]) -> Vec<(HeaderName, HeaderValue)> {
        [
            ("webhook-id", id.to_string()),
            ("webhook-timestamp", stamp(timestamp)),
            ("webhook-signature", self.signature(id, timestamp, body)),
        ]
        .into_iter()
        .filter_map(|(name, value)| {
            Some((
                HeaderName::from_static(name),
                HeaderValue::from_str(&value).ok()?,
            ))
        })
        .collect()
    }

    /// The earlier scheme: `hex(HMAC-SHA256(file bytes, "<timestamp>.<body>"))`.
    pub fn legacy_signature(&self, timestamp: u64, body: &[u8]) -> String {
        crate::hex::encode(&hmac(
            &self.legacy,
            &[stamp(timestamp).as_bytes(), b".", body],
        ))
    }
}

fn stamp(timestamp: u64) -> String {
    timestamp.to_string()
}

fn hmac(key: &Secret<Vec<u8>>, parts: &[&[u8]]) -> Vec<u8> {
    use aws_lc_rs::hmac;
    let key = hmac::Key::new(hmac::HMAC_SHA256, key.expose());
    let mut ctx = hmac::Context::with_key(&key);
    for part in parts {
        ctx.update(part);
    }
    ctx.sign().as_ref().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> WebhookKey {
        WebhookKey::new(Secret::new(text.as_bytes().to_vec())).unwrap()
    }

    #[test]
    fn standard_signatures_match_an_independent_hmac() {
        // printf '%s' 'msg_1.1700000000.{"id":"x"}' \
        //   | openssl dgst -sha256 -mac HMAC -macopt hexkey:$(printf 'whsec-test' | xxd -p) -binary | base64
        // and the same with hexkey:$(printf 'MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw' | base64 -d | xxd -p):
        // a whsec_ secret's key is its base64 part, decoded.
        assert_eq!(
            key("whsec-test").signature("msg_1", 1_700_000_000, br#"{"id":"x"}"#),
            "v1,Z+6e68q29m2DxwgeRt2vOZjUjmJ7CIlxMsGWq2O0Xng="
        );
        assert_eq!(
            key("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").signature(
                "msg_1",
                1_700_000_000,
                br#"{"id":"x"}"#
            ),
            "v1,0ZCyvT82z7JAIAze7u5Mx2e1aSowwSTxXvtwPNcsdVE="
        );
    }

    #[test]
    fn legacy_signatures_keep_the_earlier_scheme() {
        // printf '%s' '1700000000.{"id":"x"}' | openssl dgst -sha256 -hmac 'whsec-test'
        assert_eq!(
            key("whsec-test").legacy_signature(1_700_000_000, br#"{"id":"x"}"#),
            "a011cc83d9ed494fd1b9659f5bcf0bc7dd5349dd15d02b313d6fc3b03064ce6a"
        );
    }

    #[test]
    fn a_whsec_secret_must_be_base64() {
        let refused =
            |text: &str| WebhookKey::new(Secret::new(text.as_bytes().to_vec())).unwrap_err();
        assert!(matches!(
            refused("whsec_not base64!"),
            WebhookKeyError::NotBase64
        ));
        assert!(matches!(refused("whsec_"), WebhookKeyError::Empty));
        let headers = key("whsec-test").headers("d-1", 5, b"{}");
        let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["webhook-id", "webhook-timestamp", "webhook-signature"]
        );
        assert_eq!(headers[1].1, "5");
    }
}
