//! Consumer tokens from the external issuers `[[identity.external_issuers]]` names: which one a
//! token claims to come from (its unverified `iss`, compared exactly), that issuer's JWKS
//! (fetched over HTTPS, bounded in size and keys, cached, read again after `jwks_refresh` and
//! when a token names a key not seen yet, at most once per `jwks_min_refetch`, one fetch at a
//! time), and the checks of its tokens: the key's own algorithm, allowed and equal to the
//! header's, `iss`, `aud` one of the accepted audiences, `exp`, `iat`, `nbf` and the longest
//! lifetime, `sub` (the same time and subject checks as brandgate's own tokens).
//!
//! Its consumers are `"<id>:<sub>"`, so an external `sub` is never another issuer's; and
//! brandgate's own tokens with a subject of that form are refused (`owns_subject`), so it is
//! never one of brandgate's own consumers either. A JWKS that cannot be read while a set is cached keeps the
//! cached set; with none, tokens are `Unavailable` (a retry may work), never refused.
//!
//! It never logs a token or a claim; a refusal names the check that failed.

use crate::ids::ConsumerId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde::Deserialize;

use super::metrics::IdentityMetrics;
use super::verdict::{ConsumerIdentity, TokenClaims, VerifyError, profile_of, refusal};
use crate::clock::Clock;
use crate::config::{ExternalIssuerConfig, Problems};
use crate::http_client::{HttpClient, check_url};

/// Largest JWKS body read.
const MAX_JWKS_BYTES: usize = 64 * 1024;
/// Most keys taken from one JWKS (the rest are ignored).
const MAX_KEYS: usize = 32;
/// One JWKS fetch fits in this.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The configured external issuers, by `iss`. Rebuilt on reload (the caches start empty).
#[derive(Default)]
pub(super) struct ExternalIssuers {
    by_issuer: HashMap<String, Arc<External>>,
}

impl ExternalIssuers {
    /// Reads the trust anchors of every issuer; calls nobody yet.
    pub fn build(configs: &[ExternalIssuerConfig], problems: &mut Problems) -> ExternalIssuers {
        let mut by_issuer = HashMap::new();
        for (i, cfg) in configs.iter().enumerate() {
            let key = format!("identity.external_issuers[{i}]");
            let tls = crate::tls::client_config(&cfg.extra_trust_anchors, None, &[])
                .map_err(|e| problems.push(format!("{key}.extra_trust_anchors"), e))
                .ok();
            let url = check_url(&cfg.jwks_url)
                .map_err(|e| problems.push(format!("{key}.jwks_url"), e))
                .ok();
            let (Some(tls), Some(jwks_url)) = (tls, url) else {
                continue;
            };
            let algorithms = cfg
                .algorithms
                .iter()
                .filter_map(|a| a.parse::<Algorithm>().ok())
                .filter(|a| asymmetric(*a))
                .collect();
            by_issuer.insert(
                cfg.issuer.clone(),
                Arc::new(External {
                    id: cfg.id.clone(),
                    issuer: cfg.issuer.clone(),
                    jwks_url,
                    audiences: cfg.audiences.clone(),
                    algorithms,
                    max_lifetime: cfg.max_token_lifetime.0,
                    refresh: cfg.jwks_refresh.0,
                    min_refetch: cfg.jwks_min_refetch.0,
                    http: HttpClient::new(crate::egress::Role::Identity, tls),
                    keys: RwLock::new(None),
                    fetching: tokio::sync::Mutex::new(()),
                    last_attempt: Mutex::new(None),
                }),
            );
        }
        ExternalIssuers { by_issuer }
    }

    /// Whether `subject` is of the form `"<id>:..."` for one of these issuers' ids: reserved
    /// for their consumers.
    pub fn owns_subject(&self, subject: &str) -> bool {
        self.by_issuer.values().any(|x| {
            subject
                .strip_prefix(x.id.as_str())
                .is_some_and(|rest| rest.starts_with(':'))
        })
    }

    /// The issuer a token names, if it is one of these.
    pub fn get(&self, iss: &str) -> Option<&Arc<External>> {
        self.by_issuer.get(iss)
    }
}

/// The unverified `iss` of a token, to choose who checks it.
pub(super) fn unverified_issuer(token: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Iss {
        iss: Option<String>,
    }
    let payload = token.split('.').nth(1)?;
    let bytes =
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, payload).ok()?;
    serde_json::from_slice::<Iss>(&bytes).ok()?.iss
}

/// One external issuer and its cached keys.
pub(super) struct External {
    id: String,
    issuer: String,
    jwks_url: http::Uri,
    audiences: Vec<String>,
    algorithms: Vec<Algorithm>,
    max_lifetime: Duration,
    refresh: Duration,
    min_refetch: Duration,
    http: HttpClient,
    keys: RwLock<Option<Arc<KeySet>>>,
    /// One fetch at a time; the others wait for its result.
    fetching: tokio::sync::Mutex<()>,
    /// When the JWKS was last asked for (whatever came of it).
    last_attempt: Mutex<Option<Instant>>,
}

/// A JWKS as read: usable keys by kid.
struct KeySet {
    keys: HashMap<String, (Algorithm, DecodingKey)>,
    at: Instant,
}

impl External {
    /// Checks a token whose unverified `iss` is this issuer's.
    pub async fn verify(
        &self,
        token: &str,
        clock: &dyn Clock,
        leeway: Duration,
        metrics: &IdentityMetrics,
    ) -> Result<ConsumerIdentity, VerifyError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| VerifyError::Malformed)?;
        if !self.algorithms.contains(&header.alg) {
            return Err(VerifyError::Invalid("algorithm"));
        }
        let kid = header.kid.ok_or(VerifyError::Malformed)?;
        let (alg, key) = self.key(&kid, metrics).await?;
        // The key's own algorithm, never the header's choice.
        if alg != header.alg || !self.algorithms.contains(&alg) {
            return Err(VerifyError::Invalid("algorithm"));
        }
        let mut validation = jsonwebtoken::Validation::new(alg);
        validation.leeway = leeway.as_secs();
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&self.audiences);
        validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
        // Times are checked below against the injected clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        let data = jsonwebtoken::decode::<TokenClaims>(token, &key, &validation)
            .map_err(|e| refusal(&e))?;
        let claims = data.claims;
        if super::subject::check(&claims.sub).is_err() {
            return Err(VerifyError::Invalid("subject"));
        }
        let expires_at = claims.check_times(clock.now(), leeway, self.max_lifetime)?;
        // The issuer's own consumers: logged in there, whatever its token says.
        let (profile, _) = profile_of(token);
        Ok(ConsumerIdentity {
            subject: ConsumerId::new(format!("{}:{}", self.id, claims.sub)),
            expires_at,
            valid_until: expires_at + leeway,
            authenticated: true,
            profile,
        })
    }

    /// The key `kid`, from the cached set, or from the JWKS read again when the set is missing,
    /// older than `jwks_refresh`, or does not have it (at most once per `jwks_min_refetch`).
    async fn key(
        &self,
        kid: &str,
        metrics: &IdentityMetrics,
    ) -> Result<(Algorithm, DecodingKey), VerifyError> {
        let cached = self.cached();
        if let Some(set) = &cached
            && set.at.elapsed() < self.refresh
            && let Some(found) = set.keys.get(kid)
        {
            return Ok(found.clone());
        }
        let asked = Instant::now();
        let _one = self.fetching.lock().await;
        let due = {
            let last = self.last_attempt.lock().unwrap_or_else(|e| e.into_inner());
            // Another caller fetched while this one waited: use what it found.
            let fetched_meanwhile = last.is_some_and(|t| t >= asked);
            !fetched_meanwhile && last.is_none_or(|t| t.elapsed() >= self.min_refetch)
        };
        if due {
            *self.last_attempt.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            match self.fetch().await {
                Ok(set) => {
                    metrics.jwks_fetch("ok");
                    *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(set));
                }
                Err(e) => {
                    metrics.jwks_fetch("failed");
                    tracing::warn!(issuer = %self.id, error = %e, "an external issuer's JWKS cannot be read");
                }
            }
        }
        let set = self.cached().ok_or(VerifyError::Unavailable)?;
        set.keys.get(kid).cloned().ok_or(VerifyError::UnknownKey)
    }

    fn cached(&self) -> Option<Arc<KeySet>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    async fn fetch(&self) -> Result<KeySet, FetchError> {
        let request = http::Request::get(self.jwks_url.clone())
            .header(http::header::ACCEPT, "application/json")
            .body(Bytes::new())
            .map_err(|e| FetchError::Call(e.to_string()))?;
        let answer = self
            .http
            .send(request, FETCH_TIMEOUT)
            .await
            .map_err(|e| FetchError::Call(e.to_string()))?;
        if answer.status != http::StatusCode::OK {
            return Err(FetchError::Status(answer.status));
        }
        if answer.body.len() > MAX_JWKS_BYTES {
            return Err(FetchError::TooLarge);
        }
        Ok(KeySet {
            keys: parse_jwks(&answer.body)?,
            at: Instant::now(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("{0}")]
    Call(String),
    #[error("answered {0}")]
    Status(http::StatusCode),
    #[error("larger than {MAX_JWKS_BYTES} bytes")]
    TooLarge,
    #[error("not a JWKS")]
    NotJwks,
}

/// The usable signing keys of a JWKS, by kid: at most [`MAX_KEYS`], each with the algorithm it
/// is for. Keys without a kid, for encryption, symmetric, or not understood are left out (one
/// odd key must not hide the others).
fn parse_jwks(body: &[u8]) -> Result<HashMap<String, (Algorithm, DecodingKey)>, FetchError> {
    #[derive(Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(body).map_err(|_| FetchError::NotJwks)?;
    let mut keys = HashMap::new();
    for value in set.keys.into_iter().take(MAX_KEYS) {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        if matches!(
            jwk.common.public_key_use,
            Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
        ) {
            continue;
        }
        let (Some(kid), Some(alg)) = (jwk.common.key_id.clone(), key_algorithm(&jwk)) else {
            continue;
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        keys.insert(kid, (alg, key));
    }
    Ok(keys)
}

/// The one algorithm a JWK is for: its `alg` when it names one that fits its key type, else
/// the usual one for its type (RSA: RS256; EC: by curve; OKP Ed25519: EdDSA). `None` for a
/// symmetric key or an `alg` that does not fit the key.
fn key_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    let fits = |alg: Algorithm| match (&jwk.algorithm, alg) {
        (
            AlgorithmParameters::RSA(_),
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512,
        ) => true,
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES256) => p.curve == EllipticCurve::P256,
        (AlgorithmParameters::EllipticCurve(p), Algorithm::ES384) => p.curve == EllipticCurve::P384,
        (AlgorithmParameters::OctetKeyPair(p), Algorithm::EdDSA) => {
            p.curve == EllipticCurve::Ed25519
        }
        _ => false,
    };
    let alg = match &jwk.common.key_algorithm {
        Some(named) => format!("{named:?}").parse::<Algorithm>().ok()?,
        None => match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            AlgorithmParameters::EllipticCurve(p) if p.curve == EllipticCurve::P384 => {
                Algorithm::ES384
            }
            AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
                Algorithm::EdDSA
            }
            _ => return None,
        },
    };
    (asymmetric(alg) && fits(alg)).then_some(alg)
}

/// Whether `alg` is a public-key signature (never HMAC: anyone holding the secret could sign).
fn asymmetric(alg: Algorithm) -> bool {
    !matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwk(value: serde_json::Value) -> Jwk {
        serde_json::from_value(value).unwrap()
    }

    const N: &str = "sXchDaQebHnPiGvyDOAT4saGEUetSyo9MKLOoWFsueri23bOdgWp4Dy1WlUzewbgBHod5pcM9H95GQRV3JDXboIRROSBigeC5yjU1hGzHHyXss8UDprecbAYxknTcQkhslANGRUZmdTOQ5qTRsLAt6BTYuyvVRdhS8exSZEy_c4gs_7svlJJQ4H9_NxsiIoLwAEk7-Q3UXERGYw_75IDrGA84-lA_-Ct4eTlXHBIY2EaV7t7LjJaynVJCpkv4LKjTTAumiGUIuQhrNhZLuF_RJLqHpM2kgWFLU7-VTdL1VbC2tejvcI2BlMkEpk1BzBZI0KQB0GaDWFLN-aEAw3vRw";

    #[test]
    fn a_key_is_for_one_algorithm_that_fits_its_type() {
        let rsa = |alg: Option<&str>| {
            let mut v = serde_json::json!({"kty": "RSA", "kid": "r", "n": N, "e": "AQAB"});
            if let Some(a) = alg {
                v["alg"] = a.into();
            }
            key_algorithm(&jwk(v))
        };
        assert_eq!(rsa(None), Some(Algorithm::RS256));
        assert_eq!(rsa(Some("PS256")), Some(Algorithm::PS256));
        assert_eq!(rsa(Some("ES256")), None);
        assert_eq!(rsa(Some("HS256")), None);
        let ec = |crv: &str, alg: Option<&str>| {
            let mut v = serde_json::json!({"kty": "EC", "kid": "e", "crv": crv,
                "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
                "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"});
            if let Some(a) = alg {
                v["alg"] = a.into();
            }
            key_algorithm(&jwk(v))
        };
        assert_eq!(ec("P-256", None), Some(Algorithm::ES256));
        assert_eq!(ec("P-256", Some("ES256")), Some(Algorithm::ES256));
        assert_eq!(ec("P-256", Some("ES384")), None);
        assert_eq!(ec("P-256", Some("RS256")), None);
        assert_eq!(ec("P-384", None), Some(Algorithm::ES384));
        let oct =
            jwk(serde_json::json!({"kty": "oct", "kid": "s", "k": "c2VjcmV0", "alg": "HS256"}));
        assert_eq!(key_algorithm(&oct), None);
    }

    #[test]
    fn a_jwks_keeps_its_usable_signing_keys_only() {
        let body = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "good", "n": N, "e": "AQAB", "alg": "RS256", "use": "sig"},
            {"kty": "RSA", "kid": "enc", "n": N, "e": "AQAB", "use": "enc"},
            {"kty": "RSA", "n": N, "e": "AQAB"},
            {"kty": "oct", "kid": "secret", "k": "c2VjcmV0"},
            {"kty": "whatever", "kid": "odd"},
        ]});
        let keys = parse_jwks(body.to_string().as_bytes()).unwrap();
        assert_eq!(keys.keys().collect::<Vec<_>>(), vec!["good"]);
        assert!(parse_jwks(b"[]").is_err());
        let many: Vec<_> = (0..40)
            .map(|i| serde_json::json!({"kty": "RSA", "kid": format!("k{i}"), "n": N, "e": "AQAB"}))
            .collect();
        let keys = parse_jwks(serde_json::json!({ "keys": many }).to_string().as_bytes()).unwrap();
        assert_eq!(keys.len(), MAX_KEYS);
    }

    #[test]
    fn the_issuer_is_read_before_any_check() {
        let payload = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            br#"{"iss":"https://login.shop.example","sub":"x"}"#,
        );
        assert_eq!(
            unverified_issuer(&format!("e30.{payload}.sig")).as_deref(),
            Some("https://login.shop.example")
        );
        assert_eq!(unverified_issuer("abc"), None);
        assert_eq!(unverified_issuer("e30.e30.x"), None);
    }
}
