//! Doors for the fuzz targets in `fuzz/` to the parsers that are private to their role: each
//! function runs one untrusted input through the same code the daemon runs it through, and
//! checks what that code promises about its result. Built only with the `fuzzing` feature.
//!
//! A panic here is a finding: nothing in this module unwraps or indexes the input, so the only
//! way to panic is in the code under test or in a broken promise it makes (asserted below).
//! Parsers reachable through a role's public door (the config loader, consumer tokens) are
//! fuzzed through that door by their targets and have no function here.
#![doc(hidden)]

use serde_json::Value;

use crate::push::payload::{self, PAYLOAD_LIMIT, Presentation};
use crate::push::request;
use crate::relay::protocol;

/// A push request body as the platform POSTs it: parsed, then built into the APNs and FCM
/// bodies with and without a mask, as delivery does. `true` when the body parsed.
pub fn push_request(body: &[u8]) -> bool {
    let Ok(req) = request::parse(body) else {
        return false;
    };
    let token = req.device_token.as_str();
    assert!(!token.is_empty(), "an empty device token was accepted");
    assert!(
        !token.chars().any(|c| c.is_control() || c.is_whitespace()),
        "a device token with whitespace was accepted"
    );
    let _ = req.device_token.sha256_hex();
    let _ = payload::is_background(&req);
    for mask_text in [None, Some("New message"), Some("")] {
        for mutable_content in [false, true] {
            let p = Presentation {
                mask_text,
                mutable_content,
            };
            // Too large even with the text emptied is a refusal; anything accepted fits.
            if let Ok(b) = payload::apns_body(&req, p) {
                assert!(
                    b.len() <= PAYLOAD_LIMIT,
                    "an APNs body of {} bytes",
                    b.len()
                );
                assert!(serde_json::from_slice::<Value>(&b).is_ok());
            }
            if let Ok(b) = payload::fcm_body(&req, p, "high", mutable_content) {
                assert!(serde_json::from_slice::<Value>(&b).is_ok());
            }
        }
    }
    true
}

/// One relay text frame: read as a request, and answered as the socket answers it (a `400`
/// with the reason for a malformed one). `true` when it is a request.
pub fn relay_request(text: &str) -> bool {
    let (answer, is_request) = match protocol::parse_request(text) {
        Ok(r) => {
            assert!((1..=64).contains(&r.id.len()), "request id {:?}", r.id);
            assert!(
                (1..=128).contains(&r.kind.len()),
                "request type {:?}",
                r.kind
            );
            // A text answer is cut to the schema's limit on a character boundary.
            let _ = protocol::text_response(&r.id, 429, text);
            (protocol::response(&r.id, 200, &r.kind, r.body), true)
        }
        Err(m) => (protocol::malformed_response(&m), false),
    };
    assert!(
        serde_json::from_str::<Value>(&answer).is_ok(),
        "an answer that is not JSON"
    );
    is_request
}

/// A SAML provider's answer as the ACS decodes it, through every check, against a provider
/// whose signing certificate was made here and whose key is thrown away: no input can carry a
/// valid signature, so the promise is that none is ever accepted. `true` when the answer got
/// as far as the signature (past the screen and the shape check).
pub fn saml_response(bytes: &[u8]) -> bool {
    use crate::relay::saml::response::{Expected, Refusal, check};
    static CERTIFICATE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let certificate = CERTIFICATE.get_or_init(|| {
        let key = rcgen::KeyPair::generate().expect("a key");
        let params = rcgen::CertificateParams::new(vec!["idp.fuzz".into()]).expect("params");
        params
            .self_signed(&key)
            .expect("a certificate")
            .der()
            .to_vec()
    });
    let certificates = [certificate.clone()];
    let expected = Expected {
        idp_entity_id: "https://idp.brand.test/saml",
        sp_entity_id: "https://brandgate.test/sp",
        acs_url: "https://brandgate.test/acs",
        certificates: &certificates,
        allow_sha1: true,
        now: std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000),
        leeway: std::time::Duration::from_secs(60),
    };
    match check(bytes, &expected) {
        Ok(vouched) => panic!("an answer nobody could sign was accepted: {vouched:?}"),
        Err(Refusal::Signature | Refusal::SignedContent(_)) => true,
        Err(_) => false,
    }
}
