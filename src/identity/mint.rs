//! The mint: the only code that opens a private signing key and the only code that signs
//! consumer identity tokens.
//!
//! Tokens are compact JWS (RFC 7515) signed here with aws-lc-rs: RS256 (the platform's
//! default), ES256 (fixed-size r||s, as JWS requires) or EdDSA. The key is opened from the
//! store once and kept parsed in memory, so a signature costs one private-key operation and no
//! key parsing. Claims are typed ([`Claims`]), and every token carries `iss`, `sub`, `iat`,
//! `exp`, `jti` and the signing key's `kid`.
//!
//! It never signs a token that brandgate or the platform would refuse: the subject must pass
//! [`subject::check`](super::subject::check), and a token is never longer than
//! [`MAX_TOKEN`] bytes (the platform's limit). When the optional profile claims would make it
//! longer, they are left out one by one in the order of [`DROP_ORDER`] until it fits, and the
//! names of those left out are logged (never their values); when even the token without them
//! is too long, minting is refused ([`MintError::TooLarge`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, RSA_PKCS1_SHA256,
};
use base64::Engine;
use serde::Serialize;
use serde_json::{Map, Value};

use super::keys::{Algorithm, KeyError, KeyRing, seal_context};
use super::subject::{self, SubjectError};
use super::verdict::MAX_TOKEN;
use crate::clock::{Clock, unix_seconds};
use crate::store::SigningKeyRow;

/// What a consumer token says. Optional profile claims are copied from the upstream login by
/// the claim mapping; `extra` holds `lp_sdes` and anything else mapped.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Claims {
    pub subject: String,
    pub audience: Option<String>,
    pub lifetime: Duration,
    /// Profile claims (`given_name`, `family_name`, `email`, `phone_number`,
    /// `preferred_username`, `gender`, `lp_sdes`), already type-checked.
    pub profile: Map<String, Value>,
}

/// A signed token.
#[derive(Debug, Clone)]
pub struct Minted {
    pub jwt: String,
    pub kid: String,
    pub expires_at: SystemTime,
}

#[derive(Debug, thiserror::Error)]
pub enum MintError {
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("the signing key cannot be opened: {0}")]
    Unusable(String),
    #[error("{0}")]
    Subject(#[from] SubjectError),
    #[error("the consumer token would be longer than 2048 bytes even without optional claims")]
    TooLarge,
}

impl MintError {
    /// Why the identity itself cannot become a token (its subject, or its size): the caller's
    /// to hear. `None` for a failure of brandgate's own (keys, store), which is logged instead.
    pub fn refusal(&self) -> Option<String> {
        match self {
            MintError::Subject(_) | MintError::TooLarge => Some(self.to_string()),
            MintError::Keys(_) | MintError::Unusable(_) => None,
        }
    }
}

/// The optional claims a token too long for [`MAX_TOKEN`] loses, first to last: the `lp_sdes`
/// personal entry, then its customer-info entry, then the profile claims the platform shows
/// least. `sub`, `iss`, `aud`, the times, `jti` and the app's `nonce` are never left out.
pub const DROP_ORDER: &[&str] = &[
    "lp_sdes.personal",
    "lp_sdes.ctmrinfo",
    "gender",
    "preferred_username",
    "phone_number",
    "email",
    "family_name",
    "given_name",
];

/// Removes `name` (one of [`DROP_ORDER`]) from a profile; whether it was there.
fn drop_claim(profile: &mut Map<String, Value>, name: &str) -> bool {
    let Some(entry) = name.strip_prefix("lp_sdes.") else {
        return profile.remove(name).is_some();
    };
    let Some(Value::Array(sdes)) = profile.get_mut("lp_sdes") else {
        return false;
    };
    let before = sdes.len();
    sdes.retain(|e| e.get("type").and_then(Value::as_str) != Some(entry));
    let dropped = sdes.len() != before;
    if sdes.is_empty() {
        profile.remove("lp_sdes");
    }
    dropped
}

/// Length of `n` bytes in unpadded base64url.
fn b64_len(n: usize) -> usize {
    (n * 4).div_ceil(3)
}

/// Re-seals the ring's private keys sealed under an older data key (`brandgate store
/// reseal`). Here because only the mint opens a private signing key. Returns how many.
pub async fn reseal_signing_keys(ring: &KeyRing) -> Result<usize, KeyError> {
    let data_keys = ring.data_keys();
    let mut count = 0;
    for row in ring.rows(true).await?.iter() {
        if !data_keys.is_stale(&row.private_sealed) {
            continue;
        }
        let context = seal_context(&row.kid);
        let plain = data_keys
            .open(&context, &row.private_sealed)
            .map_err(|_| KeyError::Crypto("a private key does not open with the data keys"))?;
        let sealed = data_keys
            .seal(&context, plain.expose())
            .map_err(|_| KeyError::Crypto("sealing failed"))?;
        if ring
            .store()
            .replace_signing_key_seal(&row.kid, &row.private_sealed, &sealed)
            .await?
        {
            count += 1;
        }
    }
    Ok(count)
}

/// A private key, parsed.
enum Signer {
    Rsa(aws_lc_rs::rsa::KeyPair),
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

impl Signer {
    fn open(row: &SigningKeyRow, ring: &KeyRing) -> Result<Signer, MintError> {
        let pkcs8 = ring
            .data_keys()
            .open(&seal_context(&row.kid), &row.private_sealed)
            .map_err(|e| MintError::Unusable(e.to_string()))?;
        let bad = |e: aws_lc_rs::error::KeyRejected| MintError::Unusable(e.to_string());
        match Algorithm::parse(&row.algorithm) {
            Some(Algorithm::RS256) => Ok(Signer::Rsa(
                aws_lc_rs::rsa::KeyPair::from_pkcs8(pkcs8.expose()).map_err(bad)?,
            )),
            Some(Algorithm::ES256) => Ok(Signer::Ecdsa(
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.expose())
                    .map_err(bad)?,
            )),
            Some(Algorithm::EdDSA) => Ok(Signer::Ed25519(
                Ed25519KeyPair::from_pkcs8(pkcs8.expose()).map_err(bad)?,
            )),
            None => Err(MintError::Unusable(format!(
                "unknown algorithm {:?}",
                row.algorithm
            ))),
        }
    }

    /// Length of this key's signatures in bytes.
    fn signature_len(&self) -> usize {
        match self {
            Signer::Rsa(k) => k.public_modulus_len(),
            Signer::Ecdsa(_) | Signer::Ed25519(_) => 64,
        }
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, MintError> {
        let failed = |_| MintError::Unusable("signing failed".into());
        match self {
            Signer::Rsa(k) => {
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(
                    &RSA_PKCS1_SHA256,
                    &aws_lc_rs::rand::SystemRandom::new(),
                    message,
                    &mut sig,
                )
                .map_err(failed)?;
                Ok(sig)
            }
            Signer::Ecdsa(k) => Ok(k
                .sign(&aws_lc_rs::rand::SystemRandom::new(), message)
                .map_err(failed)?
                .as_ref()
                .to_vec()),
            Signer::Ed25519(k) => Ok(k.sign(message).as_ref().to_vec()),
        }
    }
}

/// Signs consumer tokens with the ring's active key.
pub struct Mint {
    ring: Arc<KeyRing>,
    issuer: String,
    clock: Arc<dyn Clock>,
    /// The opened active key, by kid; replaced when another key becomes active.
    opened: Mutex<Option<(String, Arc<Signer>)>>,
}

#[derive(Serialize)]
struct Header<'a> {
    alg: &'a str,
    typ: &'static str,
    kid: &'a str,
}

impl Mint {
    pub fn new(ring: Arc<KeyRing>, issuer: String, clock: Arc<dyn Clock>) -> Mint {
        Mint {
            ring,
            issuer,
            clock,
            opened: Mutex::new(None),
        }
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    async fn signer(&self) -> Result<(SigningKeyRow, Arc<Signer>), MintError> {
        let row = self.ring.active().await?;
        if let Some((kid, signer)) = self
            .opened
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            && *kid == row.kid
        {
            return Ok((row, signer.clone()));
        }
        let signer = Arc::new(Signer::open(&row, &self.ring)?);
        *self.opened.lock().unwrap_or_else(|e| e.into_inner()) =
            Some((row.kid.clone(), signer.clone()));
        Ok((row, signer))
    }

    /// Signs a token for `claims`, leaving out optional claims (logged) if it would be too
    /// long.
    pub async fn mint(&self, claims: &Claims) -> Result<Minted, MintError> {
        let (row, signer) = self.signer().await?;
        let now = self.clock.now();
        let expires_at = now + claims.lifetime;
        let mut jti = [0u8; 16];
        aws_lc_rs::rand::fill(&mut jti).map_err(|_| MintError::Unusable("no randomness".into()))?;
        let header = serde_json::to_vec(&Header {
            alg: &row.algorithm,
            typ: "JWT",
            kid: &row.kid,
        })
        .map_err(|e| MintError::Unusable(e.to_string()))?;
        let (payload, dropped) = self.fitting_payload(claims, now, &jti, &header, &signer)?;
        if !dropped.is_empty() {
            tracing::warn!(
                left_out = ?dropped,
                "a consumer token would be longer than 2048 bytes; optional claims left out"
            );
        }
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let signing_input = format!("{}.{}", b64(&header), b64(&payload));
        let signature = signer.sign(signing_input.as_bytes())?;
        let jwt = format!("{signing_input}.{}", b64(&signature));
        debug_assert!(jwt.len() <= MAX_TOKEN);
        Ok(Minted {
            jwt,
            kid: row.kid,
            expires_at,
        })
    }

    /// Signs any payload with the active key, as the mint would: for tests of what verifiers
    /// refuse (claims the mint never writes).
    #[cfg(test)]
    pub(super) async fn sign_any(&self, payload: &str) -> String {
        let (row, signer) = self.signer().await.unwrap();
        let header = serde_json::to_vec(&Header {
            alg: &row.algorithm,
            typ: "JWT",
            kid: &row.kid,
        })
        .unwrap();
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let input = format!("{}.{}", b64(&header), b64(payload.as_bytes()));
        let signature = signer.sign(input.as_bytes()).unwrap();
        format!("{input}.{}", b64(&signature))
    }

    /// Which optional claims of `claims` the active key's token would have to leave out to fit
    /// (in [`DROP_ORDER`]), or why it cannot be minted at all. Lets a login refuse or warn
    /// when it starts rather than when its code is exchanged.
    pub async fn check_fit(&self, claims: &Claims) -> Result<Vec<&'static str>, MintError> {
        let (row, signer) = self.signer().await?;
        let header = serde_json::to_vec(&Header {
            alg: &row.algorithm,
            typ: "JWT",
            kid: &row.kid,
        })
        .map_err(|e| MintError::Unusable(e.to_string()))?;
        let (_, dropped) =
            self.fitting_payload(claims, self.clock.now(), &[0; 16], &header, &signer)?;
        Ok(dropped)
    }

    /// The payload of a token for `claims`, short enough that with `header` and a signature of
    /// `signer` it is at most [`MAX_TOKEN`] bytes, and the optional claims it left out.
    fn fitting_payload(
        &self,
        claims: &Claims,
        now: SystemTime,
        jti: &[u8; 16],
        header: &[u8],
        signer: &Signer,
    ) -> Result<(Vec<u8>, Vec<&'static str>), MintError> {
        subject::check(&claims.subject)?;
        let mut body = Map::new();
        body.insert("iss".into(), Value::from(self.issuer.as_str()));
        body.insert("sub".into(), Value::from(claims.subject.as_str()));
        if let Some(aud) = &claims.audience {
            body.insert("aud".into(), Value::from(aud.as_str()));
        }
        body.insert("iat".into(), Value::from(unix_seconds(now)));
        body.insert(
            "exp".into(),
            Value::from(unix_seconds(now + claims.lifetime)),
        );
        body.insert("jti".into(), Value::from(crate::hex::encode(jti)));
        let fixed: Vec<String> = body.keys().cloned().collect();
        for (k, v) in &claims.profile {
            body.entry(k.clone()).or_insert_with(|| v.clone());
        }
        let room = MAX_TOKEN - b64_len(header.len()) - 2 - b64_len(signer.signature_len());
        let mut dropped = Vec::new();
        let mut next = DROP_ORDER.iter();
        loop {
            let payload =
                serde_json::to_vec(&body).map_err(|e| MintError::Unusable(e.to_string()))?;
            if b64_len(payload.len()) <= room {
                return Ok((payload, dropped));
            }
            // Only profile claims go, never one of the token's own (a profile cannot
            // replace `sub` either: the token's own claims were set first).
            let Some(&name) = next.next() else {
                return Err(MintError::TooLarge);
            };
            if !fixed.iter().any(|f| f == name) && drop_claim(&mut body, name) {
                dropped.push(name);
            }
        }
    }
}

/// Keeps the `Signer` out of `Debug` output.
impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Signer([private key])")
    }
}

/// The public half of the active key is re-derived by verifiers from the JWKS; this only checks
/// a key pair is consistent in tests.
#[cfg(test)]
fn public_key(signer: &Signer) -> Vec<u8> {
    use aws_lc_rs::signature::KeyPair;
    match signer {
        Signer::Rsa(k) => k.public_key().as_ref().to_vec(),
        Signer::Ecdsa(k) => k.public_key().as_ref().to_vec(),
        Signer::Ed25519(k) => k.public_key().as_ref().to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::fake::FakeClock;
    use crate::identity::keys::RingSettings;
    use crate::store::Store;
    use crate::store::seal::DataKeys;

    async fn ring(
        dir: &std::path::Path,
        algorithm: Algorithm,
        clock: Arc<FakeClock>,
    ) -> Arc<KeyRing> {
        let store = Store::open_temporary(dir).await;
        let data = DataKeys::generate_for_test();
        Arc::new(KeyRing::new(
            store,
            Arc::new(data),
            RingSettings {
                algorithm,
                lead_time: Duration::from_secs(3600),
                max_token_lifetime: Duration::from_secs(3600),
                leeway: Duration::from_secs(60),
                rotate_every: None,
            },
            clock,
        ))
    }

    #[tokio::test]
    async fn tokens_verify_with_the_published_key() {
        for algorithm in [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA] {
            let dir = tempfile::tempdir().unwrap();
            let clock = Arc::new(FakeClock::new());
            let ring = ring(dir.path(), algorithm, clock.clone()).await;
            let mint = Mint::new(
                ring.clone(),
                "https://id.brand.example".into(),
                clock.clone(),
            );
            let claims = Claims {
                subject: "consumer-1".into(),
                audience: Some("platform".into()),
                lifetime: Duration::from_secs(600),
                profile: Map::from_iter([("email".to_string(), Value::from("a@b.example"))]),
            };
            let minted = mint.mint(&claims).await.unwrap();
            // jsonwebtoken, fed the JWKS entry, accepts it (node's jose checks it too, in the
            // integration tests).
            let jwks: jsonwebtoken::jwk::JwkSet =
                serde_json::from_value(ring.jwks().await.unwrap()).unwrap();
            let jwk = jwks.find(&minted.kid).unwrap();
            let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
            let alg = match algorithm {
                Algorithm::RS256 => jsonwebtoken::Algorithm::RS256,
                Algorithm::ES256 => jsonwebtoken::Algorithm::ES256,
                Algorithm::EdDSA => jsonwebtoken::Algorithm::EdDSA,
            };
            let mut validation = jsonwebtoken::Validation::new(alg);
            validation.set_audience(&["platform"]);
            validation.set_issuer(&["https://id.brand.example"]);
            validation.validate_exp = false;
            let data = jsonwebtoken::decode::<Value>(&minted.jwt, &key, &validation).unwrap();
            assert_eq!(data.claims["sub"], "consumer-1");
            assert_eq!(data.claims["email"], "a@b.example");
            assert_eq!(
                data.claims["exp"].as_u64().unwrap() - data.claims["iat"].as_u64().unwrap(),
                600
            );
            assert_eq!(data.header.kid.as_deref(), Some(minted.kid.as_str()));
            let (_, signer) = mint.signer().await.unwrap();
            assert!(!public_key(&signer).is_empty());
        }
    }

    /// An ES256 ring on a fake clock, its mint, and claims living `lifetime` seconds.
    async fn es256_fixture(
        dir: &std::path::Path,
        lifetime: u64,
    ) -> (Arc<FakeClock>, Arc<KeyRing>, Mint, Claims) {
        let clock = Arc::new(FakeClock::new());
        let ring = ring(dir, Algorithm::ES256, clock.clone()).await;
        let mint = Mint::new(ring.clone(), "iss".into(), clock.clone());
        let claims = Claims {
            subject: "s".into(),
            lifetime: Duration::from_secs(lifetime),
            ..Default::default()
        };
        (clock, ring, mint, claims)
    }

    #[tokio::test]
    async fn the_mint_follows_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let (clock, ring, mint, claims) = es256_fixture(dir.path(), 60).await;
        let first = mint.mint(&claims).await.unwrap();
        let next = ring.rotate().await.unwrap();
        assert_ne!(next.row.kid, first.kid);
        // Published at once, but not signing before the lead time.
        let jwks = ring.jwks().await.unwrap().to_string();
        assert!(jwks.contains(&next.row.kid));
        assert_eq!(mint.mint(&claims).await.unwrap().kid, first.kid);
        clock.advance(Duration::from_secs(3600));
        // The ring's cached read is at most a few seconds old; activation times are known.
        assert_eq!(mint.mint(&claims).await.unwrap().kid, next.row.kid);
        // The retired key stays published while its tokens can still be valid.
        assert!(ring.jwks().await.unwrap().to_string().contains(&first.kid));
    }

    /// Ten rotations on a fake clock: at every step each token still within its lifetime
    /// verifies against the published keys, every key is published before it signs, and keys
    /// leave the JWKS only once all their tokens have expired (plus the leeway).
    #[tokio::test]
    async fn ten_rotations_never_strand_a_token() {
        let dir = tempfile::tempdir().unwrap();
        let (clock, ring, mint, claims) = es256_fixture(dir.path(), 3600).await;
        let published = |set: &Value| -> Vec<String> {
            set["keys"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k["kid"].as_str().unwrap().to_string())
                .collect()
        };
        let mut tokens: Vec<Minted> = Vec::new();
        let mut seen_signing = std::collections::HashSet::new();
        for _ in 0..10 {
            let minted = mint.mint(&claims).await.unwrap();
            tokens.push(minted.clone());
            seen_signing.insert(minted.kid.clone());
            let next = ring.rotate().await.unwrap();
            // Published now, signing only after the lead time.
            assert!(published(&ring.jwks().await.unwrap()).contains(&next.row.kid));
            assert!(!seen_signing.contains(&next.row.kid));
            for step in [1800, 1799, 1] {
                clock.advance(Duration::from_secs(step));
                ring.maintain().await.unwrap();
                let set: jsonwebtoken::jwk::JwkSet =
                    serde_json::from_value(ring.jwks().await.unwrap()).unwrap();
                for t in &tokens {
                    if clock.now() >= t.expires_at + Duration::from_secs(60) {
                        continue;
                    }
                    // A live token verifies with what is published.
                    let jwk = set.find(&t.kid).expect("a live token's key left the JWKS");
                    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
                    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
                    v.validate_exp = false;
                    v.validate_aud = false;
                    jsonwebtoken::decode::<Value>(&t.jwt, &key, &v).unwrap();
                }
            }
        }
        assert_eq!(seen_signing.len(), 10, "each rotation took over");
        // After the last token expired, only the keys still needed are left.
        clock.advance(Duration::from_secs(3600 + 60));
        ring.maintain().await.unwrap();
        assert!(published(&ring.jwks().await.unwrap()).len() <= 2);
    }
}
