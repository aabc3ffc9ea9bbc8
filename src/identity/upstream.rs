//! The brand's OpenID provider, with brandgate as its relying party (OpenID Connect Core 1.0,
//! authorization code flow with PKCE S256, state and nonce).
//!
//! What it owns: the provider's discovery document and keys (read at start and again, rate
//! limited, when a token names a key not seen yet, so the provider's key rotation is followed),
//! the client secret, and the checks of every upstream ID token: signature with an allowed
//! algorithm, `iss`, `aud`, `exp`, `iat` and `nbf` within the leeway, no claim named twice,
//! `nonce` when the login sent one,
//! `at_hash` when present. The HTTP client never follows a redirect.
//!
//! It never logs a token, a code or the client secret; what a failed check says is about the
//! token's shape (which claim), never its content.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use bytes::Bytes;
use openidconnect::core::{
    CoreAuthenticationFlow, CoreClient, CoreIdToken, CoreIdTokenVerifier, CoreJsonWebKeySet,
    CoreJwsSigningAlgorithm, CoreProviderMetadata,
};
use openidconnect::{
    AccessTokenHash, AsyncHttpClient, AuthType, AuthorizationCode, ClaimsVerificationError,
    ClientId, ClientSecret, CsrfToken, EndpointMaybeSet, EndpointNotSet, EndpointSet, IssuerUrl,
    Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl, Scope,
    SignatureVerificationError, TokenResponse,
};
use serde_json::{Map, Value};

use crate::clock::Clock;
use crate::config::{Problems, UpstreamClientAuth, UpstreamConfig};
use crate::http_client::{HttpClient, HttpError};
use crate::secret::Secret;

/// The client as discovery leaves it: authorization endpoint known, token and userinfo
/// endpoints as the provider advertised them.
type DiscoveredClient = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The provider could not be reached or answered nonsense: a retry may work.
    #[error("the login provider is unavailable: {0}")]
    Unavailable(String),
    /// The provider refused to exchange the code (it expired, was used, or PKCE failed there).
    #[error("the login provider refused the code: {0}")]
    Refused(String),
    /// An ID token failed a check.
    #[error("the ID token is not acceptable: {0}")]
    Token(#[from] TokenProblem),
}

/// Why an upstream ID token was refused; safe to show the presenter (it names a check, never
/// a value from the token).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenProblem {
    #[error("not a signed JWT")]
    Malformed,
    #[error("expired")]
    Expired,
    #[error("issued in the future or not valid yet")]
    NotYetValid,
    #[error("wrong issuer")]
    Issuer,
    #[error("not issued to an accepted audience")]
    Audience,
    #[error("nonce does not match the login")]
    Nonce,
    #[error("signed with a key the provider does not publish")]
    UnknownKey,
    #[error("signature algorithm not allowed")]
    Algorithm,
    #[error("bad signature")]
    Signature,
    #[error("at_hash does not match the access token")]
    AccessTokenHash,
    #[error("no ID token in the provider's answer")]
    Missing,
    #[error("{0}")]
    Other(&'static str),
}

/// An ID token's `nbf`: a NumericDate (RFC 7519 §2: seconds, possibly with a fraction) no
/// later than `now + leeway`. Any number counts, up to what no clock holds; anything else is
/// not a date.
fn check_not_before(nbf: &Value, now: SystemTime, leeway: Duration) -> Result<(), TokenProblem> {
    let seconds = nbf
        .as_f64()
        .filter(|s| s.is_finite())
        .ok_or(TokenProblem::Other("nbf is not a date"))?;
    let latest = crate::clock::unix_seconds(now + leeway) as f64;
    if seconds > latest {
        return Err(TokenProblem::NotYetValid);
    }
    Ok(())
}

/// Who logged in, as the provider said it (checked).
#[derive(Debug, Clone)]
pub struct UpstreamIdentity {
    pub issuer: String,
    pub subject: String,
    /// Every claim of the ID token, for the claim mapping.
    pub claims: Map<String, Value>,
}

/// A login about to be sent to the provider.
pub struct LoginStart {
    /// Where to send the browser.
    pub url: String,
    pub pkce_verifier: String,
    pub nonce: String,
}

/// What an ID token must say beyond the provider's own claims: for whom it was issued, and,
/// for a login's token, its nonce and the access token its `at_hash` covers.
#[derive(Clone, Copy)]
struct Expected<'a> {
    audience: &'a str,
    /// Further audiences a multi-audience token may name.
    accepted: &'a [String],
    nonce: Option<&'a Nonce>,
    access_token: Option<&'a openidconnect::AccessToken>,
}

/// What the provider published, and when it was read.
struct Discovered {
    client: DiscoveredClient,
    keys: CoreJsonWebKeySet,
    at: Instant,
}

/// The relying party. Cheap to share (`Arc`).
pub struct Upstream {
    issuer: IssuerUrl,
    client_id: ClientId,
    client_secret: Secret<String>,
    auth_type: AuthType,
    redirect: RedirectUrl,
    scopes: Vec<String>,
    algorithms: Vec<CoreJwsSigningAlgorithm>,
    rediscover_interval: Duration,
    login_timeout: Duration,
    logins_per_minute: u32,
    leeway: Duration,
    transport: Transport,
    clock: Arc<dyn Clock>,
    discovered: RwLock<Option<Arc<Discovered>>>,
    /// One discovery at a time; the others wait for its result.
    discovering: tokio::sync::Mutex<()>,
    /// When the last discovery failed: within [`FAILED_DISCOVERY_BACKOFF`] of it, callers are
    /// told at once instead of each trying again (a provider that is down is not hammered).
    failed_at: std::sync::Mutex<Option<Instant>>,
}

/// How long a failed discovery is not retried.
const FAILED_DISCOVERY_BACKOFF: Duration = Duration::from_secs(5);

impl Upstream {
    /// Reads the client secret and trust anchors; does not call the provider yet. `at` is
    /// where the settings are in the config (`identity.upstream`), for the problems;
    /// `redirect_uri` is where the provider sends the browser back.
    pub fn build(
        cfg: &UpstreamConfig,
        at: &str,
        redirect_uri: &str,
        leeway: Duration,
        clock: Arc<dyn Clock>,
        role: crate::egress::Role,
        problems: &mut Problems,
    ) -> Option<Upstream> {
        let key = format!("{at}.client_secret_file");
        let secret = crate::secret::read_secret_for(&key, &cfg.client_secret_file, problems)
            .and_then(|s| match String::from_utf8(s.expose().clone()) {
                Ok(text) => Some(Secret::new(text)),
                Err(_) => {
                    problems.push(&key, "the client secret is not UTF-8 text");
                    None
                }
            });
        let tls = crate::tls::client_config(&cfg.extra_trust_anchors, None, &[])
            .map_err(|e| problems.push(format!("{at}.extra_trust_anchors"), e))
            .ok();
        // Exactly as configured: issuers are compared as strings (OpenID Connect Discovery
        // §4.3), and some end in '/' (Auth0, Azure AD v1).
        let issuer = IssuerUrl::new(cfg.issuer.clone())
            .map_err(|e| problems.push(format!("{at}.issuer"), e.to_string()))
            .ok();
        let redirect = RedirectUrl::new(redirect_uri.to_string())
            .map_err(|e| problems.push(format!("{at}.redirect_uri"), e.to_string()))
            .ok();
        let algorithms = cfg
            .allowed_algorithms
            .iter()
            .filter_map(|a| {
                serde_json::from_value::<CoreJwsSigningAlgorithm>(Value::from(a.as_str())).ok()
            })
            .collect();
        Some(Upstream {
            issuer: issuer?,
            client_id: ClientId::new(cfg.client_id.clone()),
            client_secret: secret?,
            auth_type: match cfg.client_auth {
                UpstreamClientAuth::ClientSecretBasic => AuthType::BasicAuth,
                UpstreamClientAuth::ClientSecretPost => AuthType::RequestBody,
            },
            redirect: redirect?,
            scopes: cfg.scopes.clone(),
            algorithms,
            rediscover_interval: cfg.rediscover_interval.0,
            login_timeout: cfg.login_timeout.0,
            logins_per_minute: cfg.logins_per_minute,
            leeway,
            transport: Transport {
                client: HttpClient::new(role, tls?),
                timeout: cfg.timeout.0,
            },
            clock,
            discovered: RwLock::new(None),
            discovering: tokio::sync::Mutex::new(()),
            failed_at: std::sync::Mutex::new(None),
        })
    }

    pub fn issuer(&self) -> &str {
        self.issuer.as_str()
    }

    /// Logins one source address may start per minute.
    pub fn logins_per_minute(&self) -> u32 {
        self.logins_per_minute
    }

    /// How long a consumer may take to log in at the provider.
    pub fn login_timeout(&self) -> Duration {
        self.login_timeout
    }

    /// Whether the provider's metadata has been read at least once.
    pub fn is_discovered(&self) -> bool {
        self.current().is_some()
    }

    fn current(&self) -> Option<Arc<Discovered>> {
        self.discovered
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The provider's metadata: what was read before, or a fresh read.
    async fn metadata(&self) -> Result<Arc<Discovered>, UpstreamError> {
        match self.current() {
            Some(d) => Ok(d),
            None => self.discover(None).await,
        }
    }

    /// Reads the discovery document and the keys. `stale` is the read the caller found
    /// wanting: if another task has replaced it meanwhile, that newer read is used.
    async fn discover(
        &self,
        stale: Option<&Arc<Discovered>>,
    ) -> Result<Arc<Discovered>, UpstreamError> {
        // Bounded: a discovery in progress takes at most two calls of `timeout` each.
        let _one = tokio::time::timeout(self.transport.timeout * 3, self.discovering.lock())
            .await
            .map_err(|_| {
                UpstreamError::Unavailable("the login provider is slow to answer".into())
            })?;
        if let Some(now) = self.current()
            && stale.is_none_or(|s| !Arc::ptr_eq(s, &now))
        {
            return Ok(now);
        }
        let last_failure = *self.failed_at.lock().unwrap_or_else(|e| e.into_inner());
        if last_failure.is_some_and(|t| t.elapsed() < FAILED_DISCOVERY_BACKOFF) {
            return Err(UpstreamError::Unavailable(format!(
                "{} could not be read moments ago; retrying shortly",
                self.issuer.as_str()
            )));
        }
        let metadata = CoreProviderMetadata::discover_async(self.issuer.clone(), &self.transport)
            .await
            .map_err(|e| {
                *self.failed_at.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
                UpstreamError::Unavailable(format!(
                    "discovery at {}: {}",
                    self.issuer.as_str(),
                    crate::http_client::error_chain(&e)
                ))
            })?;
        let keys = metadata.jwks().clone();
        let client = CoreClient::from_provider_metadata(
            metadata,
            self.client_id.clone(),
            Some(ClientSecret::new(self.client_secret.expose().clone())),
        )
        .set_auth_type(self.auth_type.clone())
        .set_redirect_uri(self.redirect.clone());
        let discovered = Arc::new(Discovered {
            client,
            keys,
            at: Instant::now(),
        });
        *self.discovered.write().unwrap_or_else(|e| e.into_inner()) = Some(discovered.clone());
        tracing::info!(
            issuer = self.issuer.as_str(),
            "read the login provider's metadata and keys"
        );
        Ok(discovered)
    }

    /// Reads the provider's metadata now (at start-up, so the first login does not wait).
    pub async fn warm_up(&self) -> Result<(), UpstreamError> {
        self.metadata().await.map(|_| ())
    }

    /// A new login: the provider's authorization URL with `state`, a fresh nonce and a PKCE
    /// challenge whose verifier the caller keeps.
    pub async fn begin(&self, state: &str) -> Result<LoginStart, UpstreamError> {
        let discovered = self.metadata().await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let state = state.to_string();
        let mut request = discovered.client.authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            move || CsrfToken::new(state),
            Nonce::new_random,
        );
        for scope in self.scopes.iter().filter(|s| *s != "openid") {
            request = request.add_scope(Scope::new(scope.clone()));
        }
        let (url, _, nonce) = request.set_pkce_challenge(challenge).url();
        Ok(LoginStart {
            url: url.to_string(),
            pkce_verifier: verifier.secret().clone(),
            nonce: nonce.secret().clone(),
        })
    }

    /// Finishes a login: exchanges the code (with the PKCE verifier) and checks the ID token
    /// against the login's nonce.
    pub async fn finish(
        &self,
        code: &str,
        pkce_verifier: &str,
        nonce: &str,
    ) -> Result<UpstreamIdentity, UpstreamError> {
        let discovered = self.metadata().await?;
        let response = discovered
            .client
            .exchange_code(AuthorizationCode::new(code.to_string()))
            .map_err(|e| {
                UpstreamError::Unavailable(format!("the provider has no token endpoint: {e}"))
            })?
            .set_pkce_verifier(PkceCodeVerifier::new(pkce_verifier.to_string()))
            .request_async(&self.transport)
            .await
            .map_err(|e| match e {
                openidconnect::RequestTokenError::ServerResponse(r) => {
                    UpstreamError::Refused(r.error().to_string())
                }
                other => UpstreamError::Unavailable(format!(
                    "code exchange: {}",
                    crate::http_client::error_chain(&other)
                )),
            })?;
        let id_token = response.id_token().ok_or(TokenProblem::Missing)?.clone();
        let nonce = Nonce::new(nonce.to_string());
        let expected = Expected {
            audience: self.client_id.as_str(),
            accepted: &[],
            nonce: Some(&nonce),
            access_token: Some(response.access_token()),
        };
        self.verify(&id_token, &expected, discovered).await
    }

    /// Checks an ID token a brand system presents (server-to-server issuance): issued by the
    /// provider to brandgate's client id or one of `audiences` (the presenting backend's); no
    /// nonce to check.
    pub async fn verify_presented(
        &self,
        token: &str,
        audiences: &[String],
    ) -> Result<UpstreamIdentity, UpstreamError> {
        let id_token: CoreIdToken = token.parse().map_err(|_| TokenProblem::Malformed)?;
        let claims = unverified_claims(token).ok_or(TokenProblem::Malformed)?;
        let accepted = audiences;
        let audiences: Vec<&str> = match claims.get("aud") {
            Some(Value::String(a)) => vec![a.as_str()],
            Some(Value::Array(list)) => list.iter().filter_map(Value::as_str).collect(),
            _ => return Err(TokenProblem::Audience.into()),
        };
        let audience = audiences
            .iter()
            .find(|a| **a == self.client_id.as_str() || accepted.iter().any(|x| x == *a))
            .ok_or(TokenProblem::Audience)?
            .to_string();
        let discovered = self.metadata().await?;
        let expected = Expected {
            audience: &audience,
            accepted,
            nonce: None,
            access_token: None,
        };
        self.verify(&id_token, &expected, discovered).await
    }

    /// The checks, with one re-read of the provider's keys when the token names a key not
    /// seen yet (and the last read is older than `rediscover_interval`).
    async fn verify(
        &self,
        id_token: &CoreIdToken,
        expected: &Expected<'_>,
        discovered: Arc<Discovered>,
    ) -> Result<UpstreamIdentity, UpstreamError> {
        match self.check(id_token, expected, &discovered) {
            Err(TokenProblem::UnknownKey)
                if discovered.at.elapsed() >= self.rediscover_interval =>
            {
                tracing::info!(
                    issuer = self.issuer.as_str(),
                    "an ID token names a key the provider had not published: reading its keys again"
                );
                let fresh = self.discover(Some(&discovered)).await?;
                Ok(self.check(id_token, expected, &fresh)?)
            }
            other => Ok(other?),
        }
    }

    fn check(
        &self,
        id_token: &CoreIdToken,
        expected: &Expected<'_>,
        discovered: &Discovered,
    ) -> Result<UpstreamIdentity, TokenProblem> {
        let Expected {
            audience,
            accepted,
            nonce,
            access_token,
        } = *expected;
        let now = self.clock.now();
        let leeway = self.leeway;
        let accepted = accepted.to_vec();
        let own = self.client_id.as_str().to_string();
        let verifier = CoreIdTokenVerifier::new_public_client(
            ClientId::new(audience.to_string()),
            self.issuer.clone(),
            discovered.keys.clone(),
        )
        .set_allowed_algs(self.algorithms.clone())
        // exp is checked against now - leeway: a token the provider's clock thinks is still
        // valid for a moment is not refused because ours runs a little ahead.
        .set_time_fn(move || chrono_time(now.checked_sub(leeway).unwrap_or(now)))
        .set_issue_time_verifier_fn(move |iat| {
            if iat > chrono_time(now + leeway) {
                Err("issued in the future".into())
            } else {
                Ok(())
            }
        })
        // Other audiences of a multi-audience token must be ones we accept too.
        .set_other_audience_verifier_fn(move |aud| {
            aud.as_str() == own || accepted.iter().any(|a| a == aud.as_str())
        });
        let verified = match nonce {
            Some(n) => id_token.claims(&verifier, n),
            None => id_token.claims(&verifier, |_: Option<&Nonce>| Ok(())),
        }
        .map_err(problem)?;
        if let (Some(expected), Some(access_token)) = (verified.access_token_hash(), access_token) {
            let alg = id_token
                .signing_alg()
                .map_err(|_| TokenProblem::Algorithm)?;
            let key = id_token
                .signing_key(&verifier)
                .map_err(|_| TokenProblem::UnknownKey)?;
            let actual = AccessTokenHash::from_token(access_token, alg, key)
                .map_err(|_| TokenProblem::AccessTokenHash)?;
            if !crate::secret::constant_time_eq(actual.as_bytes(), expected.as_bytes()) {
                return Err(TokenProblem::AccessTokenHash);
            }
        }
        // The signature covers these bytes; read them once more, refusing a claim named twice
        // (the verifier and the claim mapping must not see two different values), and check
        // `nbf`, which the verifier does not.
        let claims = unique_claims(&id_token.to_string())?;
        if let Some(nbf) = claims.get("nbf") {
            check_not_before(nbf, now, leeway)?;
        }
        Ok(UpstreamIdentity {
            issuer: verified.issuer().as_str().to_string(),
            subject: verified.subject().as_str().to_string(),
            claims,
        })
    }
}

/// The top-level claims of a signed JWT, refusing a payload that names a claim twice.
fn unique_claims(jwt: &str) -> Result<Map<String, Value>, TokenProblem> {
    struct Unique(Map<String, Value>);
    impl<'de> serde::Deserialize<'de> for Unique {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Visit;
            impl<'de> serde::de::Visitor<'de> for Visit {
                type Value = Unique;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("a JSON object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut a: A,
                ) -> Result<Unique, A::Error> {
                    let mut map = Map::new();
                    while let Some((k, v)) = a.next_entry::<String, Value>()? {
                        if map.insert(k, v).is_some() {
                            return Err(serde::de::Error::custom("a claim is named twice"));
                        }
                    }
                    Ok(Unique(map))
                }
            }
            d.deserialize_map(Visit)
        }
    }
    let payload = jwt.split('.').nth(1).ok_or(TokenProblem::Malformed)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| TokenProblem::Malformed)?;
    serde_json::from_slice::<Unique>(&bytes)
        .map(|u| u.0)
        .map_err(|_| TokenProblem::Other("a claim is named twice, or the claims are not an object"))
}

/// The claims of a JWT whose signature has been (or is about to be) checked elsewhere.
fn unverified_claims(jwt: &str) -> Option<Map<String, Value>> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    match serde_json::from_slice(&bytes).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

fn chrono_time(t: SystemTime) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::<chrono::Utc>::from(t)
}

/// The library's verdict, as a problem the presenter may be told.
fn problem(e: ClaimsVerificationError) -> TokenProblem {
    match e {
        ClaimsVerificationError::Expired(why) if why.contains("future") => {
            TokenProblem::NotYetValid
        }
        ClaimsVerificationError::Expired(_) => TokenProblem::Expired,
        ClaimsVerificationError::InvalidAudience(_) => TokenProblem::Audience,
        ClaimsVerificationError::InvalidIssuer(_) => TokenProblem::Issuer,
        ClaimsVerificationError::InvalidNonce(_) => TokenProblem::Nonce,
        ClaimsVerificationError::SignatureVerification(s) => match s {
            SignatureVerificationError::NoMatchingKey => TokenProblem::UnknownKey,
            SignatureVerificationError::DisallowedAlg(_)
            | SignatureVerificationError::UnsupportedAlg(_) => TokenProblem::Algorithm,
            _ => TokenProblem::Signature,
        },
        ClaimsVerificationError::InvalidSubject(_) => TokenProblem::Other("no usable subject"),
        ClaimsVerificationError::Unsupported(_) => {
            TokenProblem::Other("unsupported token (encrypted?)")
        }
        _ => TokenProblem::Other("claims failed a check"),
    }
}

/// openidconnect's HTTP calls, made with brandgate's client (its trust anchors, its limits,
/// never following a redirect).
struct Transport {
    client: HttpClient,
    timeout: Duration,
}

impl<'c> AsyncHttpClient<'c> for Transport {
    type Error = HttpError;
    type Future =
        Pin<Box<dyn Future<Output = Result<openidconnect::HttpResponse, HttpError>> + Send + 'c>>;

    fn call(&'c self, request: openidconnect::HttpRequest) -> Self::Future {
        Box::pin(async move {
            // The provider's own documents name the token endpoint and the keys: they are held
            // to the same rule as configured URLs, so a secret, a code or the keys never cross
            // the network in clear text.
            crate::http_client::check_url(&request.uri().to_string())
                .map_err(|e| HttpError::NotAllowed(e.to_string()))?;
            let response = self
                .client
                .send(request.map(Bytes::from), self.timeout)
                .await?;
            let mut answer = http::Response::new(response.body.to_vec());
            *answer.status_mut() = response.status;
            *answer.headers_mut() = response.headers;
            Ok(answer)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn endpoints_the_provider_names_are_held_to_https() {
        crate::tls::install_crypto_provider();
        let transport = Transport {
            client: HttpClient::new(
                crate::egress::Role::Identity,
                crate::tls::client_config(&[], None, &[]).unwrap(),
            ),
            timeout: Duration::from_secs(1),
        };
        // A discovery document naming a plain-http token endpoint on another host: the call
        // is refused before anything is sent.
        let request = http::Request::post("http://login.brand.example/token")
            .body(b"client_secret=s".to_vec())
            .unwrap();
        assert!(matches!(
            transport.call(request).await,
            Err(HttpError::NotAllowed(_))
        ));
    }

    #[test]
    fn nbf_is_any_date_no_later_than_now_and_the_leeway() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        let leeway = Duration::from_secs(60);
        let check = |nbf: Value| check_not_before(&nbf, now, leeway);
        assert_eq!(check(serde_json::json!(1_800_000_000u64)), Ok(()));
        assert_eq!(check(serde_json::json!(1_800_000_060u64)), Ok(()));
        assert_eq!(check(serde_json::json!(-1)), Ok(()));
        assert_eq!(check(serde_json::json!(1_799_999_999.5)), Ok(()));
        for later in [
            serde_json::json!(1_800_000_061u64),
            serde_json::json!(1_800_000_060.5),
            serde_json::json!(u64::MAX),
            serde_json::json!(1e20),
        ] {
            assert_eq!(
                check(later.clone()),
                Err(TokenProblem::NotYetValid),
                "{later}"
            );
        }
        for not_a_date in [serde_json::json!("1800000000"), serde_json::json!(null)] {
            assert_eq!(
                check(not_a_date.clone()),
                Err(TokenProblem::Other("nbf is not a date")),
                "{not_a_date}"
            );
        }
    }

    #[test]
    fn claims_of_a_jwt_are_read_from_its_payload() {
        // {"sub":"a","aud":["x","y"]}
        let jwt = "e30.eyJzdWIiOiJhIiwiYXVkIjpbIngiLCJ5Il19.c2ln";
        let claims = unverified_claims(jwt).unwrap();
        assert_eq!(claims["sub"], "a");
        assert!(unverified_claims("not-a-jwt").is_none());
        assert_eq!(unique_claims(jwt).unwrap()["sub"], "a");
    }

    #[test]
    fn a_claim_named_twice_is_refused() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let jwt = format!(
            "e30.{}.c2ln",
            b64(r#"{"sub":"alice","email":"a@x","sub":"mallory"}"#)
        );
        assert!(matches!(unique_claims(&jwt), Err(TokenProblem::Other(_))));
        // Nested objects may repeat a key of the top level.
        let jwt = format!("e30.{}.c2ln", b64(r#"{"sub":"alice","x":{"sub":"b"}}"#));
        assert!(unique_claims(&jwt).is_ok());
    }
}
