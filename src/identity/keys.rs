//! The signing key ring: keys in the store, private parts sealed, states derived from time the
//! same way on every node sharing the store.
//!
//! A key is *next* until its `activates_at`, then *active* until a newer key activates, then
//! *retired* until every token it signed has expired (its retirement plus the longest token
//! lifetime plus the clock leeway), then deleted. Next, active and retired keys are all
//! published; only the active one signs. A rotation adds a key that activates after a lead
//! time (default 1 h), longer than verifiers cache the JWKS, so nobody meets a token signed by
//! a key they have not fetched yet. Ties between keys activating at the same second are broken
//! by `kid`, so nodes never disagree on the active key.
//!
//! This module makes key material and seals it; it opens no private key (that is `mint`'s).

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair,
};
use base64::Engine;
use serde_json::{Value, json};

use crate::clock::{Clock, unix_seconds};
use crate::store::seal::DataKeys;
use crate::store::{SigningKeyRow, Store, StoreError};

/// How long a read of the ring is reused before the store is asked again. Keys are created
/// with a lead time far longer than this, so every node sees a new key before it activates.
const RING_CACHE: Duration = Duration::from_secs(10);

/// The algorithms brandgate signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
pub enum Algorithm {
    RS256,
    ES256,
    EdDSA,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::RS256 => "RS256",
            Algorithm::ES256 => "ES256",
            Algorithm::EdDSA => "EdDSA",
        }
    }

    pub fn parse(text: &str) -> Option<Algorithm> {
        match text {
            "RS256" => Some(Algorithm::RS256),
            "ES256" => Some(Algorithm::ES256),
            "EdDSA" => Some(Algorithm::EdDSA),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot make a key: {0}")]
    Crypto(&'static str),
    #[error(
        "a key ({kid}) is already waiting to activate at {activates_at}; rotate again after it is active"
    )]
    AlreadyScheduled { kid: String, activates_at: u64 },
}

/// Where a key is in its life at a given moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Next,
    Active,
    Retired,
}

impl KeyState {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyState::Next => "next",
            KeyState::Active => "active",
            KeyState::Retired => "retired",
        }
    }
}

/// One key as seen at a moment.
#[derive(Debug, Clone)]
pub struct RingKey {
    pub row: SigningKeyRow,
    pub state: KeyState,
    /// When a newer key took over (retired keys).
    pub retired_at: Option<i64>,
    /// When it leaves the JWKS and the store (retired keys).
    pub remove_at: Option<i64>,
}

/// Ring settings from the config.
#[derive(Debug, Clone)]
pub struct RingSettings {
    pub algorithm: Algorithm,
    pub lead_time: Duration,
    /// The longest lifetime of any token the ring signs.
    pub max_token_lifetime: Duration,
    pub leeway: Duration,
    pub rotate_every: Option<Duration>,
}

/// The key ring of one process; every node's ring agrees through the store.
pub struct KeyRing {
    store: Store,
    data_keys: Arc<DataKeys>,
    settings: RingSettings,
    clock: Arc<dyn Clock>,
    cache: RwLock<Option<(Instant, Arc<Vec<SigningKeyRow>>)>>,
}

impl KeyRing {
    pub fn new(
        store: Store,
        data_keys: Arc<DataKeys>,
        settings: RingSettings,
        clock: Arc<dyn Clock>,
    ) -> KeyRing {
        KeyRing {
            store,
            data_keys,
            settings,
            clock,
            cache: RwLock::new(None),
        }
    }

    pub fn settings(&self) -> &RingSettings {
        &self.settings
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub(super) fn data_keys(&self) -> &DataKeys {
        &self.data_keys
    }

    fn now(&self) -> i64 {
        unix_seconds(self.clock.now()) as i64
    }

    /// The rows, from the store or a recent read of it.
    pub(super) async fn rows(&self, fresh: bool) -> Result<Arc<Vec<SigningKeyRow>>, StoreError> {
        if !fresh
            && let Some((at, rows)) = self
                .cache
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
            && at.elapsed() < RING_CACHE
        {
            return Ok(rows.clone());
        }
        let rows = Arc::new(self.store.list_signing_keys().await?);
        *self.cache.write().unwrap_or_else(|e| e.into_inner()) =
            Some((Instant::now(), rows.clone()));
        Ok(rows)
    }

    /// The ring as it stands now.
    pub async fn view(&self) -> Result<Vec<RingKey>, StoreError> {
        Ok(derive(&self.rows(false).await?, self.now(), &self.settings))
    }

    /// The active key's row, creating the first key if the ring is empty (it may sign at once:
    /// no verifier can hold an older JWKS without it).
    pub async fn active(&self) -> Result<SigningKeyRow, KeyError> {
        let view = self.view().await?;
        if let Some(k) = view.iter().find(|k| k.state == KeyState::Active) {
            return Ok(k.row.clone());
        }
        // Nothing active in the cached view: look at the store itself before creating.
        let fresh = derive(&self.rows(true).await?, self.now(), &self.settings);
        if let Some(k) = fresh.iter().find(|k| k.state == KeyState::Active) {
            return Ok(k.row.clone());
        }
        let now = self.now();
        let row = self.make_key(now)?;
        self.store.create_signing_key(&row).await?;
        tracing::info!(kid = %row.kid, algorithm = %row.algorithm, "created the first signing key");
        let fresh = derive(&self.rows(true).await?, self.now(), &self.settings);
        fresh
            .into_iter()
            .find(|k| k.state == KeyState::Active)
            .map(|k| k.row)
            .ok_or(KeyError::Crypto("the new key did not become active"))
    }

    /// Schedules a new key: published now, signing after the lead time.
    pub async fn rotate(&self) -> Result<RingKey, KeyError> {
        let view = derive(&self.rows(true).await?, self.now(), &self.settings);
        if let Some(next) = view.iter().find(|k| k.state == KeyState::Next) {
            return Err(KeyError::AlreadyScheduled {
                kid: next.row.kid.clone(),
                activates_at: next.row.activates_at as u64,
            });
        }
        let now = self.now();
        let row = self.make_key(now + self.settings.lead_time.as_secs() as i64)?;
        self.store.create_signing_key(&row).await?;
        tracing::info!(kid = %row.kid, activates_at = row.activates_at, "scheduled a new signing key");
        let view = derive(&self.rows(true).await?, self.now(), &self.settings);
        view.into_iter()
            .find(|k| k.row.kid == row.kid)
            .ok_or(KeyError::Crypto("the new key is not in the ring"))
    }

    /// Rotates when the schedule says so (`rotate_every` after the active key activated) and
    /// deletes retired keys whose tokens have all expired. Run periodically on every node.
    pub async fn maintain(&self) -> Result<(), KeyError> {
        let now = self.now();
        let view = derive(&self.rows(true).await?, now, &self.settings);
        for k in &view {
            if k.remove_at.is_some_and(|at| at <= now)
                && self.store.delete_signing_key(&k.row.kid).await?
            {
                tracing::info!(kid = %k.row.kid, "removed a retired signing key");
            }
        }
        if let Some(every) = self.settings.rotate_every {
            let active = view.iter().find(|k| k.state == KeyState::Active);
            let waiting = view.iter().any(|k| k.state == KeyState::Next);
            let due = active.is_some_and(|a| {
                a.row.activates_at + every.as_secs() as i64
                    - self.settings.lead_time.as_secs() as i64
                    <= now
            });
            if due && !waiting {
                self.rotate().await?;
            }
        }
        Ok(())
    }

    /// The JWKS: every published key. Read from the store each time (verifiers fetch it
    /// rarely), so a key another node just scheduled is published at once.
    pub async fn jwks(&self) -> Result<Value, StoreError> {
        let keys: Vec<Value> = derive(&self.rows(true).await?, self.now(), &self.settings)
            .iter()
            .filter_map(|k| serde_json::from_str(&k.row.public_jwk).ok())
            .collect();
        Ok(json!({ "keys": keys }))
    }

    /// Makes a key of the configured algorithm, sealed, activating at `activates_at`.
    fn make_key(&self, activates_at: i64) -> Result<SigningKeyRow, KeyError> {
        let mut id = [0u8; 16];
        aws_lc_rs::rand::fill(&mut id).map_err(|_| KeyError::Crypto("no randomness"))?;
        let kid = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id);
        let (pkcs8, jwk_fields) = generate(self.settings.algorithm)?;
        let mut jwk = jwk_fields;
        jwk["kid"] = Value::from(kid.as_str());
        jwk["use"] = Value::from("sig");
        jwk["alg"] = Value::from(self.settings.algorithm.as_str());
        let private_sealed = self
            .data_keys
            .seal(&seal_context(&kid), &pkcs8)
            .map_err(|_| KeyError::Crypto("sealing failed"))?;
        Ok(SigningKeyRow {
            kid,
            algorithm: self.settings.algorithm.as_str().into(),
            public_jwk: jwk.to_string(),
            private_sealed,
            created_at: self.now(),
            activates_at,
        })
    }
}

/// The associated data a private key is sealed with: it opens only as this key's.
pub(super) fn seal_context(kid: &str) -> Vec<u8> {
    format!("signing_key:{kid}").into_bytes()
}

/// Derives each key's state at `now`.
pub fn derive(rows: &[SigningKeyRow], now: i64, settings: &RingSettings) -> Vec<RingKey> {
    // Rows come ordered by (activates_at, kid); the active key is the last that has activated.
    let activated: Vec<&SigningKeyRow> = rows.iter().filter(|r| r.activates_at <= now).collect();
    let active_kid = activated.last().map(|r| r.kid.clone());
    let keep = (settings.max_token_lifetime + settings.leeway).as_secs() as i64;
    rows.iter()
        .map(|row| {
            if row.activates_at > now {
                return RingKey {
                    row: row.clone(),
                    state: KeyState::Next,
                    retired_at: None,
                    remove_at: None,
                };
            }
            if Some(&row.kid) == active_kid.as_ref() {
                return RingKey {
                    row: row.clone(),
                    state: KeyState::Active,
                    retired_at: None,
                    remove_at: None,
                };
            }
            // Retired when the next key in activation order took over.
            let successor = activated
                .iter()
                .skip_while(|r| r.kid != row.kid)
                .nth(1)
                .map(|r| r.activates_at);
            let retired_at = successor.unwrap_or(row.activates_at);
            RingKey {
                row: row.clone(),
                state: KeyState::Retired,
                retired_at: Some(retired_at),
                remove_at: Some(retired_at + keep),
            }
        })
        .filter(|k| k.remove_at.is_none_or(|at| at > now))
        .collect()
}

/// New key material: the PKCS#8 private key and the public JWK fields.
fn generate(algorithm: Algorithm) -> Result<(Vec<u8>, Value), KeyError> {
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let failed = |_| KeyError::Crypto("key generation failed");
    match algorithm {
        Algorithm::RS256 => {
            let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                .map_err(failed)?;
            let der: Pkcs8V1Der = pair.as_der().map_err(failed)?;
            let public = pair.public_key();
            let jwk = json!({
                "kty": "RSA",
                "n": b64(public.modulus().big_endian_without_leading_zero()),
                "e": b64(public.exponent().big_endian_without_leading_zero()),
            });
            Ok((der.as_ref().to_vec(), jwk))
        }
        Algorithm::ES256 => {
            let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).map_err(failed)?;
            let der = pair.to_pkcs8v1().map_err(failed)?;
            let point = pair.public_key().as_ref();
            // Uncompressed point: 0x04 | x (32 bytes) | y (32 bytes).
            if point.len() != 65 {
                return Err(KeyError::Crypto("unexpected P-256 public key"));
            }
            let jwk = json!({ "kty": "EC", "crv": "P-256", "x": b64(&point[1..33]), "y": b64(&point[33..]) });
            Ok((der.as_ref().to_vec(), jwk))
        }
        Algorithm::EdDSA => {
            let pair = Ed25519KeyPair::generate().map_err(failed)?;
            let der = pair.to_pkcs8v1().map_err(failed)?;
            let jwk =
                json!({ "kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key().as_ref()) });
            Ok((der.as_ref().to_vec(), jwk))
        }
    }
}

/// A public JWK as SubjectPublicKeyInfo DER (for the one-line PEM the platform takes).
pub fn spki_der(jwk: &Value) -> Option<Vec<u8>> {
    let b64 = |field: &str| -> Option<Vec<u8>> {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(jwk.get(field)?.as_str()?)
            .ok()
    };
    match jwk.get("kty")?.as_str()? {
        "RSA" => {
            // RSAPublicKey (RFC 8017) from n and e, then aws-lc-rs re-encodes it as SPKI.
            let pkcs1 = der(
                0x30,
                &[der_unsigned(&b64("n")?), der_unsigned(&b64("e")?)].concat(),
            );
            let public = aws_lc_rs::rsa::PublicKey::from_der(&pkcs1).ok()?;
            let spki: PublicKeyX509Der = public.as_der().ok()?;
            Some(spki.as_ref().to_vec())
        }
        "EC" => {
            let (x, y) = (b64("x")?, b64("y")?);
            // SPKI for id-ecPublicKey / prime256v1 with the uncompressed point.
            const PREFIX: [u8; 27] = [
                0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06,
                0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04,
            ];
            (x.len() == 32 && y.len() == 32).then(|| [&PREFIX[..], &x, &y].concat())
        }
        "OKP" => {
            let x = b64("x")?;
            // SPKI for Ed25519 (RFC 8410).
            const PREFIX: [u8; 12] = [
                0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
            ];
            (x.len() == 32).then(|| [&PREFIX[..], &x].concat())
        }
        _ => None,
    }
}

/// A DER element: tag, definite length, content.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend_from_slice(&bytes);
    }
    out.extend_from_slice(content);
    out
}

/// A DER INTEGER holding an unsigned big-endian number.
fn der_unsigned(be: &[u8]) -> Vec<u8> {
    let trimmed: Vec<u8> = be.iter().copied().skip_while(|b| *b == 0).collect();
    let mut content = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.first().is_none_or(|b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend_from_slice(&trimmed);
    der(0x02, &content)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> RingSettings {
        RingSettings {
            algorithm: Algorithm::RS256,
            lead_time: Duration::from_secs(3600),
            max_token_lifetime: Duration::from_secs(7200),
            leeway: Duration::from_secs(60),
            rotate_every: None,
        }
    }

    fn row(kid: &str, activates_at: i64) -> SigningKeyRow {
        SigningKeyRow {
            kid: kid.into(),
            algorithm: "RS256".into(),
            public_jwk: "{}".into(),
            private_sealed: vec![],
            created_at: 0,
            activates_at,
        }
    }

    fn states(rows: &[SigningKeyRow], now: i64) -> Vec<(String, &'static str)> {
        derive(rows, now, &settings())
            .into_iter()
            .map(|k| (k.row.kid, k.state.as_str()))
            .collect()
    }

    #[test]
    fn states_follow_time() {
        let rows = [row("a", 1000), row("b", 5000)];
        assert_eq!(
            states(&rows, 2000),
            [("a".into(), "active"), ("b".into(), "next")]
        );
        assert_eq!(
            states(&rows, 5000),
            [("a".into(), "retired"), ("b".into(), "active")]
        );
        // a is retired at 5000 and removed after the longest token lifetime plus leeway.
        assert_eq!(states(&rows, 5000 + 7260 - 1).len(), 2);
        assert_eq!(states(&rows, 5000 + 7260), [("b".into(), "active")]);
    }

    #[test]
    fn simultaneous_keys_resolve_the_same_way_everywhere() {
        let rows = [row("x", 1000), row("y", 1000)];
        assert_eq!(
            states(&rows, 1000),
            [("x".into(), "retired"), ("y".into(), "active")]
        );
    }

    #[test]
    fn spki_for_every_algorithm() {
        for alg in [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA] {
            let (pkcs8, jwk) = generate(alg).unwrap();
            let der = spki_der(&jwk).unwrap();
            // The SPKI verifies a signature made with the private key.
            let message = b"spki check";
            let (sig, verify_alg): (Vec<u8>, &dyn aws_lc_rs::signature::VerificationAlgorithm) =
                match alg {
                    Algorithm::RS256 => {
                        let k = aws_lc_rs::rsa::KeyPair::from_pkcs8(&pkcs8).unwrap();
                        let mut sig = vec![0; k.public_modulus_len()];
                        k.sign(
                            &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                            &aws_lc_rs::rand::SystemRandom::new(),
                            message,
                            &mut sig,
                        )
                        .unwrap();
                        (sig, &aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256)
                    }
                    Algorithm::ES256 => {
                        let k = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8)
                            .unwrap();
                        let sig = k
                            .sign(&aws_lc_rs::rand::SystemRandom::new(), message)
                            .unwrap();
                        (
                            sig.as_ref().to_vec(),
                            &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED,
                        )
                    }
                    Algorithm::EdDSA => {
                        let k = Ed25519KeyPair::from_pkcs8(&pkcs8).unwrap();
                        (
                            k.sign(message).as_ref().to_vec(),
                            &aws_lc_rs::signature::ED25519,
                        )
                    }
                };
            let parsed = aws_lc_rs::signature::ParsedPublicKey::new(verify_alg, &der).unwrap();
            parsed.verify_sig(message, &sig).unwrap();
        }
    }
}
