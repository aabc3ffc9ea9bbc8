//! Checks consumer identity tokens for the rest of the process (the relay's consumers): a
//! token whose `iss` is a configured external issuer goes to `external`; any other must be one
//! brandgate minted itself: signed by a key the ring publishes now (next, active or retired,
//! so a token outlives its key's retirement), with the algorithm of that key, `iss` this
//! issuer, `aud` present and the configured audience (when one is configured), a subject that
//! passes `subject::check`, `exp` not passed, `iat` present and neither `iat` nor `nbf` in the
//! future (all within the leeway), and a lifetime (`exp - iat`) no longer than the longest
//! this brandgate mints plus the leeway. A claim named twice is refused.
//!
//! The verdict says which check failed, never anything from the token.

use crate::ids::ConsumerId;
use std::collections::HashMap;
use std::sync::Mutex;

use super::keys::Algorithm;
use super::verdict::{ConsumerIdentity, MAX_TOKEN, TokenClaims, VerifyError, profile_of, refusal};
use super::{IdentityService, external};

/// Parsed public keys by kid (parsing a JWK costs more than a signature check).
#[derive(Default)]
pub(super) struct KeyCache(Mutex<HashMap<String, (Algorithm, jsonwebtoken::DecodingKey)>>);

impl IdentityService {
    /// Checks a consumer token: one brandgate minted, or one of a configured external issuer
    /// (whose consumers are `"<id>:<sub>"`).
    pub async fn verify_consumer(&self, token: &str) -> Result<ConsumerIdentity, VerifyError> {
        if token.len() > MAX_TOKEN {
            return Err(VerifyError::Malformed);
        }
        // Chosen by the unverified `iss`: exactly one candidate checks the token. A token
        // naming another issuer goes on to the own-token checks, which refuse it.
        let live = self.live();
        if let Some(external) = external::unverified_issuer(token)
            .as_deref()
            .and_then(|iss| live.external.get(iss))
        {
            let config = &self.inner.config;
            return external
                .verify(
                    token,
                    self.inner.clock.as_ref(),
                    config.leeway.0,
                    &self.inner.metrics,
                )
                .await;
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| VerifyError::Malformed)?;
        let kid = header.kid.ok_or(VerifyError::Malformed)?;
        let (algorithm, key) = self.public_key(&kid).await?;
        let alg = match algorithm {
            Algorithm::RS256 => jsonwebtoken::Algorithm::RS256,
            Algorithm::ES256 => jsonwebtoken::Algorithm::ES256,
            Algorithm::EdDSA => jsonwebtoken::Algorithm::EdDSA,
        };
        // The key's own algorithm, never the header's choice.
        if header.alg != alg {
            return Err(VerifyError::Invalid("algorithm"));
        }
        let config = &self.inner.config;
        let mut validation = jsonwebtoken::Validation::new(alg);
        validation.leeway = config.leeway.0.as_secs();
        validation.set_issuer(&[self.inner.mint.issuer()]);
        // Times are checked below against the injected clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        match &config.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                validation.set_required_spec_claims(&["exp", "sub", "iss", "aud"]);
            }
            None => {
                validation.validate_aud = false;
                validation.set_required_spec_claims(&["exp", "sub", "iss"]);
            }
        }
        let data = jsonwebtoken::decode::<TokenClaims>(token, &key, &validation)
            .map_err(|e| refusal(&e))?;
        // "<id>:<sub>" belongs to external issuer <id>: brandgate's own consumer of that name
        // (a trusted backend or a login can name one) would be the external one.
        if super::subject::check(&data.claims.sub).is_err()
            || live.external.owns_subject(&data.claims.sub)
        {
            return Err(VerifyError::Invalid("subject"));
        }
        // No token brandgate mints lives longer than the lifetime of the kind it mints.
        let mut longest = config.token_lifetime.0;
        if config.anonymous.enabled {
            longest = longest.max(config.anonymous.token_lifetime.0);
        }
        let max_lifetime = longest + config.leeway.0;
        let expires_at =
            data.claims
                .check_times(self.inner.clock.now(), config.leeway.0, max_lifetime)?;
        let (profile, anonymous) = profile_of(token);
        Ok(ConsumerIdentity {
            subject: ConsumerId::new(data.claims.sub),
            expires_at,
            valid_until: expires_at + config.leeway.0,
            authenticated: !anonymous,
            profile,
        })
    }

    /// The published key `kid`, parsed once. A key the ring no longer publishes (removed) is
    /// refused even if it was parsed before.
    async fn public_key(
        &self,
        kid: &str,
    ) -> Result<(Algorithm, jsonwebtoken::DecodingKey), VerifyError> {
        let view = self
            .inner
            .ring
            .view()
            .await
            .map_err(|_| VerifyError::Unavailable)?;
        let row = view
            .iter()
            .find(|k| k.row.kid == kid)
            .ok_or(VerifyError::UnknownKey)?;
        let cache = &self.inner.verify_keys.0;
        let mut parsed = cache.lock().unwrap_or_else(|e| e.into_inner());
        // Only published keys stay parsed.
        parsed.retain(|k, _| view.iter().any(|v| v.row.kid == *k));
        if let Some(found) = parsed.get(kid) {
            return Ok(found.clone());
        }
        let algorithm = Algorithm::parse(&row.row.algorithm).ok_or(VerifyError::UnknownKey)?;
        let jwk: jsonwebtoken::jwk::Jwk =
            serde_json::from_str(&row.row.public_jwk).map_err(|_| VerifyError::UnknownKey)?;
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwk).map_err(|_| VerifyError::UnknownKey)?;
        parsed.insert(kid.to_string(), (algorithm, key.clone()));
        Ok((algorithm, key))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::fake::FakeClock;
    use crate::config::IdentityConfig;
    use crate::identity::{Claims, IdentityMetrics};
    use crate::store::Store;
    use crate::store::seal::DataKeys;
    use std::time::Duration;

    async fn service(dir: &std::path::Path, clock: Arc<FakeClock>) -> IdentityService {
        let config: IdentityConfig = serde_json::from_value(serde_json::json!({
            "issuer": "https://id.brand.example", "audience": "platform"
        }))
        .unwrap();
        let prepared = IdentityService::prepare(&config, false, clock.clone()).unwrap();
        IdentityService::start(
            &config,
            prepared,
            Store::open_temporary(dir).await,
            Arc::new(DataKeys::generate_for_test()),
            clock,
            IdentityMetrics::default(),
        )
        .await
        .unwrap()
    }

    fn claims(lifetime: u64) -> Claims {
        Claims {
            subject: "consumer-1".into(),
            audience: Some("platform".into()),
            lifetime: Duration::from_secs(lifetime),
            profile: Default::default(),
        }
    }

    #[tokio::test]
    async fn own_tokens_verify_until_they_expire() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(FakeClock::new());
        let s = service(dir.path(), clock.clone()).await;
        let token = s.mint(&claims(600)).await.unwrap().jwt;
        let who = s.verify_consumer(&token).await.unwrap();
        assert_eq!(who.subject, "consumer-1");
        // Past its lifetime and the 60 s leeway: expired, by the injected clock.
        clock.advance(Duration::from_secs(600 + 59));
        assert!(s.verify_consumer(&token).await.is_ok());
        clock.advance(Duration::from_secs(1));
        assert_eq!(s.verify_consumer(&token).await, Err(VerifyError::Expired));
    }

    /// Tokens signed by the ring's own active key, with claims the mint never writes: each is
    /// refused for its own reason (the first case, written as the mint would, passes).
    #[tokio::test]
    async fn claims_the_mint_never_writes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(FakeClock::new());
        let s = service(dir.path(), clock.clone()).await;
        let now = crate::clock::unix_seconds(crate::clock::Clock::now(clock.as_ref()));
        let iss = "https://id.brand.example";
        let good = serde_json::json!({"iss": iss, "sub": "c1", "aud": "platform", "iat": now, "exp": now + 600});
        let with = |patch: serde_json::Value| {
            let mut claims = good.clone();
            for (k, v) in patch.as_object().unwrap() {
                if v.is_null() {
                    claims.as_object_mut().unwrap().remove(k);
                } else {
                    claims[k] = v.clone();
                }
            }
            claims
        };
        let year = 365 * 24 * 3600;
        let cases = [
            ("as minted", good.clone(), None),
            (
                "no aud",
                with(serde_json::json!({"aud": null})),
                Some(VerifyError::Invalid("audience")),
            ),
            (
                "iat 61 s ahead",
                with(serde_json::json!({"iat": now + 61})),
                Some(VerifyError::Invalid("not valid yet")),
            ),
            (
                "iat 59 s ahead (leeway)",
                with(serde_json::json!({"iat": now + 59})),
                None,
            ),
            (
                "nbf 1 h ahead",
                with(serde_json::json!({"nbf": now + 3600})),
                Some(VerifyError::Invalid("not valid yet")),
            ),
            ("nbf now", with(serde_json::json!({"nbf": now})), None),
            (
                "exp 100 years ahead",
                with(serde_json::json!({"exp": now + 100 * year})),
                Some(VerifyError::Invalid("lifetime")),
            ),
            // Numbers past what a SystemTime holds (2^63 s): refused, never a panic (found
            // by the consumer_token fuzz target).
            (
                "exp u64::MAX",
                with(serde_json::json!({"exp": u64::MAX})),
                Some(VerifyError::Invalid("lifetime")),
            ),
            (
                "iat and exp u64::MAX",
                with(serde_json::json!({"iat": u64::MAX, "exp": u64::MAX})),
                Some(VerifyError::Invalid("not valid yet")),
            ),
            (
                "nbf u64::MAX",
                with(serde_json::json!({"nbf": u64::MAX})),
                Some(VerifyError::Invalid("not valid yet")),
            ),
            (
                "lifetime 1 h + leeway + 1 s",
                with(serde_json::json!({"exp": now + 3600 + 61})),
                Some(VerifyError::Invalid("lifetime")),
            ),
            (
                "lifetime 1 h + leeway",
                with(serde_json::json!({"exp": now + 3600 + 60})),
                None,
            ),
            (
                "exp before iat",
                with(serde_json::json!({"iat": now + 50, "exp": now + 30})),
                Some(VerifyError::Invalid("lifetime")),
            ),
            (
                "no iat",
                with(serde_json::json!({"iat": null})),
                Some(VerifyError::Invalid("issued at")),
            ),
            (
                "sub with a line break",
                with(serde_json::json!({"sub": "evil\nINFO forged"})),
                Some(VerifyError::Invalid("subject")),
            ),
            (
                "sub with ESC",
                with(serde_json::json!({"sub": "a\u{1b}[31m"})),
                Some(VerifyError::Invalid("subject")),
            ),
            (
                "sub of 256 bytes",
                with(serde_json::json!({"sub": "s".repeat(256)})),
                Some(VerifyError::Invalid("subject")),
            ),
        ];
        for (name, claims, expected) in cases {
            let token = s.inner.mint.sign_any(&claims.to_string()).await;
            let got = s.verify_consumer(&token).await;
            match expected {
                None => assert!(got.is_ok(), "{name}: {got:?}"),
                Some(e) => assert_eq!(got, Err(e), "{name}"),
            }
        }
        // A claim named twice: serde refuses the duplicate field, whichever value comes first.
        for doubled in ["sub", "exp", "iat", "nbf", "iss", "aud"] {
            let mut text = good.to_string();
            text.pop();
            let value = good.get(doubled).cloned().unwrap_or(serde_json::json!(now));
            if good.get(doubled).is_none() {
                text.push_str(&format!(r#","{doubled}":{value}"#));
            }
            text.push_str(&format!(r#","{doubled}":{value}}}"#));
            let token = s.inner.mint.sign_any(&text).await;
            assert_eq!(
                s.verify_consumer(&token).await,
                Err(VerifyError::Invalid("claims")),
                "{doubled} twice"
            );
        }
    }

    #[tokio::test]
    async fn foreign_altered_or_mistargeted_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let other_dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(FakeClock::new());
        let s = service(dir.path(), clock.clone()).await;
        let other = service(other_dir.path(), clock.clone()).await;

        // Signed by another brandgate's ring.
        let foreign = other.mint(&claims(600)).await.unwrap().jwt;
        assert_eq!(
            s.verify_consumer(&foreign).await,
            Err(VerifyError::UnknownKey)
        );

        // The payload changed after signing.
        let token = s.mint(&claims(600)).await.unwrap().jwt;
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            br#"{"iss":"https://id.brand.example","sub":"someone-else","aud":"platform","exp":9999999999}"#,
        );
        parts[1] = &forged;
        assert_eq!(
            s.verify_consumer(&parts.join(".")).await,
            Err(VerifyError::Invalid("signature"))
        );

        // Another audience.
        let mut wrong_aud = claims(600);
        wrong_aud.audience = Some("someone".into());
        let token = s.mint(&wrong_aud).await.unwrap().jwt;
        assert_eq!(
            s.verify_consumer(&token).await,
            Err(VerifyError::Invalid("audience"))
        );

        assert_eq!(s.verify_consumer("abc").await, Err(VerifyError::Malformed));
        // (Duplicate claims: see `claims_the_mint_never_writes_are_refused`.)
        let huge = format!("{}.{}.x", "a".repeat(1500), "b".repeat(1500));
        assert_eq!(s.verify_consumer(&huge).await, Err(VerifyError::Malformed));
    }
}
