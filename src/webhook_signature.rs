//! The signature on brandgate's outbound webhooks (the relay's events, the push proxy's dead
//! tokens): `hex(HMAC-SHA256(secret, "<unix seconds>.<body>"))`. The receiver recomputes it
//! with the shared secret and refuses old timestamps, so a captured call cannot be replayed
//! later. Each webhook puts it in its own header (see the README).

use crate::secret::Secret;

/// The hex HMAC-SHA256 of `"<timestamp>.<body>"` under `secret`.
pub fn sign(secret: &Secret<Vec<u8>>, timestamp: u64, body: &[u8]) -> String {
    use aws_lc_rs::hmac;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret.expose());
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    crate::hex::encode(ctx.sign().as_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_an_independent_hmac() {
        // printf '%s' '1700000000.{"id":"x"}' | openssl dgst -sha256 -hmac 'whsec-test'
        let secret = Secret::new(b"whsec-test".to_vec());
        assert_eq!(
            sign(&secret, 1_700_000_000, br#"{"id":"x"}"#),
            "a011cc83d9ed494fd1b9659f5bcf0bc7dd5349dd15d02b313d6fc3b03064ce6a"
        );
    }
}
