//! Our APNs client: HTTP/2 over rustls through [`H2Pool`], token auth (an ES256 provider token
//! signed with the team's `.p8` key) or certificate auth (PEM or PKCS#12), and the table that
//! turns every documented APNs answer into what to do next.
//!
//! The provider token is reused and re-signed once it is `token_refresh` old (Apple: no more
//! often than every 20 minutes, at least every 60); under concurrency exactly one request signs.
//! Apps with the same credential and endpoint (`com.x` and `com.x-Dev` sharing a `.p8`) share
//! one [`ApnsLink`]: one pool of connections and one provider token, as Apple expects of one
//! key. This module holds the signing key and never prints it.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderValue, Request, Uri};
use http_body_util::Full;
use serde::Deserialize;

use super::h2pool::H2Pool;
use super::metrics::PushMetrics;
use super::outcome::Attempt;
use super::request::DeviceToken;
use crate::clock::{Clock, unix_seconds};
use crate::config::{ApnsConfig, Problems};
use crate::secret::read_secret_file;
use crate::tls::{ClientIdentity, client_config, load_certificates, load_private_key};

/// Apple's gateways.
const PRODUCTION: &str = "https://api.push.apple.com";
const SANDBOX: &str = "https://api.sandbox.push.apple.com";

/// Apple refuses provider tokens refreshed more often than this (429 TooManyProviderTokenUpdates).
const MIN_TOKEN_REFRESH: Duration = Duration::from_secs(20 * 60);
/// ... and refuses tokens older than this (403 ExpiredProviderToken).
const MAX_TOKEN_AGE: Duration = Duration::from_secs(60 * 60);

/// What apps with one credential share: the connections to Apple and the provider token.
pub struct ApnsLink {
    token: Option<ProviderToken>,
    pool: H2Pool,
}

/// The client for one app: its topic and settings, over its credential's [`ApnsLink`].
pub struct ApnsClient {
    base: String,
    topic: HeaderValue,
    expiration: Duration,
    pub collapse_by_conversation: bool,
    link: Arc<ApnsLink>,
    clock: Arc<dyn Clock>,
}

impl ApnsClient {
    /// Builds the client, reporting every problem under `key` (`push.apps[0].apns`). With
    /// `shared`, the link of another app with the same credential and endpoint is used, and
    /// the credential is not read again.
    pub fn build(
        key: &str,
        app_id: &str,
        cfg: &ApnsConfig,
        metrics: &PushMetrics,
        clock: Arc<dyn Clock>,
        shared: Option<Arc<ApnsLink>>,
        problems: &mut Problems,
    ) -> Option<ApnsClient> {
        let before = problems.0.len();
        let base = match cfg.endpoint.as_str() {
            "production" => PRODUCTION.to_string(),
            "sandbox" => SANDBOX.to_string(),
            url => match url.parse::<Uri>() {
                Ok(u) if u.scheme_str() == Some("https") && u.host().is_some() => {
                    url.trim_end_matches('/').to_string()
                }
                _ => {
                    problems.push(
                        format!("{key}.endpoint"),
                        format!("{url:?} must be \"production\", \"sandbox\" or an https:// URL"),
                    );
                    String::new()
                }
            },
        };
        let topic = match HeaderValue::from_str(&cfg.topic) {
            Ok(v) if !cfg.topic.is_empty() => Some(v),
            _ => {
                problems.push(
                    format!("{key}.topic"),
                    "must be the app's bundle id (non-empty, printable)",
                );
                None
            }
        };
        if cfg.connections == 0 || cfg.connections > 64 {
            problems.push(format!("{key}.connections"), "must be between 1 and 64");
        }
        if cfg.expiration.0 > Duration::from_secs(30 * 86_400) {
            problems.push(format!("{key}.expiration"), "must be at most 30d");
        }
        let refresh = cfg.token_refresh.0;
        if refresh < MIN_TOKEN_REFRESH || refresh >= MAX_TOKEN_AGE {
            problems.push(
                format!("{key}.token_refresh"),
                "must be at least 20m and below 60m (Apple's limits)",
            );
        }

        if let Some(link) = shared {
            if problems.0.len() > before {
                return None;
            }
            return Some(ApnsClient {
                base,
                topic: topic?,
                expiration: cfg.expiration.0,
                collapse_by_conversation: cfg.collapse_by_conversation,
                link,
                clock,
            });
        }
        let token_auth =
            cfg.token_key_file.is_some() || cfg.key_id.is_some() || cfg.team_id.is_some();
        let pem_auth = cfg.certificate_file.is_some() || cfg.private_key_file.is_some();
        let p12_auth = cfg.pkcs12_file.is_some() || cfg.pkcs12_password_file.is_some();
        let mut token = None;
        let mut identity = None;
        match (token_auth, pem_auth, p12_auth) {
            (true, false, false) => {
                token = ProviderToken::load(key, cfg, refresh, clock.clone(), problems);
            }
            (false, true, false) => identity = load_pem_identity(key, cfg, problems),
            (false, false, true) => identity = load_pkcs12_identity(key, cfg, problems),
            (false, false, false) => problems.push(
                key,
                "needs a credential: token_key_file + key_id + team_id, certificate_file + \
                 private_key_file, or pkcs12_file + pkcs12_password_file",
            ),
            _ => problems.push(
                key,
                "configure exactly one credential: token (token_key_file), PEM certificate \
                 (certificate_file) or PKCS#12 (pkcs12_file)",
            ),
        }

        let expires_at = identity
            .as_ref()
            .and_then(|id| id.chain.first())
            .and_then(|cert| crate::tls::expires_at(cert));
        if let Some(at) = expires_at {
            let labels = super::metrics::ProviderLabels {
                app: app_id.to_string(),
                provider: "apns",
            };
            metrics
                .certificate_expiry
                .get_or_create(&labels)
                .set(at as f64);
        }
        let tls = match client_config(&cfg.extra_trust_anchors, identity, &[b"h2"]) {
            Ok(tls) => Some(tls),
            Err(e) => {
                problems.push(format!("{key}.extra_trust_anchors"), e);
                None
            }
        };
        if problems.0.len() > before {
            return None;
        }
        let base_uri: Uri = base.parse().ok()?;
        let pool = match H2Pool::new(
            &base_uri,
            tls?,
            cfg.connections,
            metrics.pool(app_id, "apns"),
        ) {
            Ok(p) => p,
            Err(e) => {
                problems.push(format!("{key}.endpoint"), e);
                return None;
            }
        };
        Some(ApnsClient {
            base,
            topic: topic?,
            expiration: cfg.expiration.0,
            collapse_by_conversation: cfg.collapse_by_conversation,
            link: Arc::new(ApnsLink { token, pool }),
            clock,
        })
    }

    /// The connections and provider token this client sends with, for apps that share them.
    pub fn link(&self) -> Arc<ApnsLink> {
        self.link.clone()
    }

    /// One call to APNs for one device. The token must have passed [`Provider::check_token`](super::Provider::check_token).
    pub async fn attempt(
        &self,
        device: &DeviceToken,
        payload: Bytes,
        background: bool,
        collapse_id: Option<&str>,
        apns_id: &str,
    ) -> Attempt {
        let expiration = unix_seconds(self.clock.now() + self.expiration);
        let (push_type, priority) = if background {
            ("background", "5")
        } else {
            ("alert", "10")
        };
        let mut request = Request::post(format!("{}/3/device/{}", self.base, device.as_str()))
            .header("apns-topic", self.topic.clone())
            .header("apns-push-type", push_type)
            .header("apns-priority", priority)
            .header("apns-expiration", expiration)
            .header("apns-id", apns_id);
        if let Some(c) = collapse_id {
            request = request.header("apns-collapse-id", collapse_header(c));
        }
        let bearer = self.link.token.as_ref().map(ProviderToken::current);
        if let Some(b) = &bearer {
            request = request.header(http::header::AUTHORIZATION, b.header.clone());
        }
        let answer = match self
            .link
            .pool
            .call("apns", request.body(Full::new(payload)))
            .await
        {
            Ok(a) => a,
            Err(attempt) => return attempt,
        };
        let status = answer.status.as_u16();
        let id = answer
            .headers
            .get("apns-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let retry_after = answer.retry_after(self.clock.now());
        let body: ErrorBody = if answer.body.is_empty() {
            ErrorBody::default()
        } else {
            serde_json::from_slice(&answer.body).unwrap_or_default()
        };
        let attempt = classify(status, id, body, retry_after);
        if let (Some(token), Some(bearer)) = (&self.link.token, &bearer)
            && attempt.reason() == "ExpiredProviderToken"
        {
            token.discard(bearer);
        }
        attempt
    }
}

/// APNs error body: `{"reason": "...", "timestamp": <ms>}`.
#[derive(Debug, Default, Deserialize)]
struct ErrorBody {
    #[serde(default)]
    reason: String,
    timestamp: Option<u64>,
}

/// Apple's answer table ("Handling notification responses from APNs"), by what to do next.
fn classify(
    status: u16,
    id: Option<String>,
    body: ErrorBody,
    retry_after: Option<Duration>,
) -> Attempt {
    if status == 200 {
        return Attempt::Delivered { status, id };
    }
    let reason = if body.reason.is_empty() {
        format!("HTTP{status}")
    } else {
        body.reason
    };
    let dead = |since: Option<SystemTime>| Attempt::DeadToken {
        status,
        reason: reason.clone(),
        since,
    };
    let transient = || Attempt::Transient {
        status: Some(status),
        reason: reason.clone(),
        retry_after,
    };
    let permanent = || Attempt::Permanent {
        status: Some(status),
        reason: reason.clone(),
    };
    match (status, reason.as_str()) {
        (200, _) => Attempt::Delivered { status, id },
        // The token is not (or no longer) a device of this app.
        (400, "BadDeviceToken") => dead(None),
        (400, "DeviceTokenNotForTopic") => dead(None),
        // The device unregistered; `timestamp` (ms) says since when. Stop using the token.
        (410, _) => dead(
            body.timestamp
                .map(|ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms)),
        ),
        // APNs closed an idle connection under the request: a new connection will do.
        (400, "IdleTimeout") => transient(),
        // Our provider token aged out (clock skew): it is discarded and re-signed.
        (403, "ExpiredProviderToken") => transient(),
        // Too many requests to this device, or token refreshes: wait and retry.
        (429, _) => transient(),
        // Apple's trouble (InternalServerError, ServiceUnavailable, Shutdown), or a proxy's
        // on the way: retry.
        (s, _) if s >= 500 => transient(),
        // Everything else is our request or credential: BadCollapseId, BadExpirationDate,
        // BadMessageId, BadPriority, BadTopic, DuplicateHeaders, InvalidPushType,
        // MissingDeviceToken, MissingTopic, PayloadEmpty, TopicDisallowed (400);
        // BadCertificate, BadCertificateEnvironment, Forbidden, InvalidProviderToken,
        // MissingProviderToken, UnrelatedKeyIdInToken, BadEnvironmentKeyIdInToken (403);
        // BadPath (404); MethodNotAllowed (405); PayloadTooLarge (413).
        _ => permanent(),
    }
}

/// `apns-collapse-id` is limited to 64 bytes: a longer conversation id is replaced by its hash.
fn collapse_header(id: &str) -> String {
    if id.len() <= 64 && id.bytes().all(|b| b.is_ascii_graphic()) {
        id.to_string()
    } else {
        crate::hex::encode(&crate::digest::sha256(id.as_bytes())[..24])
    }
}

/// An issued provider token and when it was signed.
#[derive(Clone)]
struct Issued {
    header: HeaderValue,
    at: SystemTime,
}

/// The ES256 provider token for one key: signed on first use, reused until `refresh` old.
struct ProviderToken {
    key: jsonwebtoken::EncodingKey,
    key_id: String,
    team_id: String,
    refresh: Duration,
    clock: Arc<dyn Clock>,
    current: Mutex<Option<Issued>>,
    #[cfg(test)]
    signed: std::sync::atomic::AtomicUsize,
}

impl ProviderToken {
    fn load(
        key: &str,
        cfg: &ApnsConfig,
        refresh: Duration,
        clock: Arc<dyn Clock>,
        problems: &mut Problems,
    ) -> Option<ProviderToken> {
        let ident = |field: &str, v: &Option<String>, problems: &mut Problems| match v {
            Some(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric()) => {
                Some(s.clone())
            }
            Some(_) => {
                problems.push(
                    format!("{key}.{field}"),
                    "must be letters and digits (Apple's 10-character id)",
                );
                None
            }
            None => {
                problems.push(format!("{key}.{field}"), "is required with token_key_file");
                None
            }
        };
        let key_id = ident("key_id", &cfg.key_id, problems);
        let team_id = ident("team_id", &cfg.team_id, problems);
        let Some(path) = &cfg.token_key_file else {
            problems.push(
                format!("{key}.token_key_file"),
                "is required with key_id and team_id",
            );
            return None;
        };
        let signing_key = match read_secret_file(path) {
            Ok(pem) => match jsonwebtoken::EncodingKey::from_ec_pem(pem.expose()) {
                Ok(k) => Some(k),
                Err(_) => {
                    problems.push(
                        format!("{key}.token_key_file"),
                        format!(
                            "{} is not an APNs signing key (a .p8 file: PEM \"PRIVATE KEY\", P-256)",
                            path.display()
                        ),
                    );
                    None
                }
            },
            Err(e) => {
                problems.push(format!("{key}.token_key_file"), e.to_string());
                None
            }
        };
        let token = ProviderToken {
            key: signing_key?,
            key_id: key_id?,
            team_id: team_id?,
            refresh,
            clock,
            current: Mutex::new(None),
            #[cfg(test)]
            signed: Default::default(),
        };
        // Sign once now: a key that cannot sign is a config problem, not a push failure.
        if token.sign().is_none() {
            problems.push(
                format!("{key}.token_key_file"),
                "the key cannot sign ES256 tokens (it must be a P-256 key)",
            );
            return None;
        }
        Some(token)
    }

    /// The token to send now: the current one, or a freshly signed one when it is `refresh`
    /// old. The lock is held while signing (tens of microseconds), so one caller signs and the
    /// others reuse its token.
    fn current(&self) -> Issued {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        // Read the time under the lock: a token another thread just signed is never "from the
        // future" for us. A wall clock stepped backwards reads as a fresh token; should APNs
        // then call it expired, `discard` makes the next call sign anew.
        let now = self.clock.now();
        if let Some(issued) = current.as_ref() {
            let age = now.duration_since(issued.at).unwrap_or(Duration::ZERO);
            if age < self.refresh {
                return issued.clone();
            }
        }
        match self.sign() {
            Some(issued) => {
                *current = Some(issued.clone());
                issued
            }
            // Checked at load time; if signing ever fails, APNs answers 403 and we report it.
            None => Issued {
                header: HeaderValue::from_static("bearer invalid"),
                at: now,
            },
        }
    }

    /// Forgets `rejected` so the next call signs anew (after APNs said ExpiredProviderToken).
    fn discard(&self, rejected: &Issued) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current
            .as_ref()
            .is_some_and(|c| c.header == rejected.header)
        {
            *current = None;
        }
    }

    fn sign(&self) -> Option<Issued> {
        #[derive(serde::Serialize)]
        struct Claims<'a> {
            iss: &'a str,
            iat: u64,
        }
        let at = self.clock.now();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        let claims = Claims {
            iss: &self.team_id,
            iat: unix_seconds(at),
        };
        let jwt = jsonwebtoken::encode(&header, &claims, &self.key).ok()?;
        #[cfg(test)]
        self.signed
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let header = HeaderValue::from_str(&format!("bearer {jwt}")).ok()?;
        Some(Issued { header, at })
    }
}

/// Reads a PEM certificate chain and its key for certificate auth.
fn load_pem_identity(
    key: &str,
    cfg: &ApnsConfig,
    problems: &mut Problems,
) -> Option<ClientIdentity> {
    let (Some(cert), Some(pk)) = (&cfg.certificate_file, &cfg.private_key_file) else {
        problems.push(key, "certificate_file and private_key_file go together");
        return None;
    };
    let chain = load_certificates(cert)
        .map_err(|e| problems.push(format!("{key}.certificate_file"), e))
        .ok();
    let private = load_private_key(pk)
        .map_err(|e| problems.push(format!("{key}.private_key_file"), e))
        .ok();
    Some(ClientIdentity {
        chain: chain?,
        key: private?,
    })
}

/// Reads a PKCS#12 bundle (as exported from Keychain Access) for certificate auth.
fn load_pkcs12_identity(
    key: &str,
    cfg: &ApnsConfig,
    problems: &mut Problems,
) -> Option<ClientIdentity> {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let (Some(file), Some(pw_file)) = (&cfg.pkcs12_file, &cfg.pkcs12_password_file) else {
        problems.push(key, "pkcs12_file and pkcs12_password_file go together");
        return None;
    };
    let data = read_secret_file(file)
        .map_err(|e| problems.push(format!("{key}.pkcs12_file"), e.to_string()))
        .ok();
    let password = read_secret_file(pw_file)
        .map_err(|e| problems.push(format!("{key}.pkcs12_password_file"), e.to_string()))
        .ok();
    let (data, password) = (data?, password?);
    let Ok(password) = std::str::from_utf8(password.expose()) else {
        problems.push(
            format!("{key}.pkcs12_password_file"),
            "the password is not UTF-8",
        );
        return None;
    };
    let store = match p12_keystore::KeyStore::from_pkcs12(
        data.expose(),
        password,
        p12_keystore::Pkcs12ImportPolicy::Relaxed,
    ) {
        Ok(s) => s,
        // The bundle's integrity MAC is keyed by the password: a mismatch means the password
        // is not the one the bundle was exported with.
        Err(p12_keystore::error::Error::MacError(_)) => {
            problems.push(
                format!("{key}.pkcs12_password_file"),
                format!(
                    "the password in {} does not open {}: put the password the .p12 was \
                     exported with in that file",
                    pw_file.display(),
                    file.display()
                ),
            );
            return None;
        }
        Err(e) => {
            problems.push(
                format!("{key}.pkcs12_file"),
                format!(
                    "{} cannot be opened (not PKCS#12, or a wrong password): {e}; export the \
                     push certificate with its private key as .p12",
                    file.display()
                ),
            );
            return None;
        }
    };
    let Some((_, chain)) = store.private_key_chain() else {
        problems.push(
            format!("{key}.pkcs12_file"),
            format!("{} holds no private key", file.display()),
        );
        return None;
    };
    if chain.certs().is_empty() {
        problems.push(
            format!("{key}.pkcs12_file"),
            format!("{} holds no certificate for its key", file.display()),
        );
        return None;
    }
    Some(ClientIdentity {
        chain: chain
            .certs()
            .iter()
            .map(|c| CertificateDer::from(c.as_der().to_vec()))
            .collect(),
        key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(chain.key().as_der().to_vec())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::fake::FakeClock;
    use std::sync::atomic::Ordering;

    fn token(clock: Arc<FakeClock>) -> ProviderToken {
        let key = rcgen::KeyPair::generate().unwrap();
        ProviderToken {
            key: jsonwebtoken::EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).unwrap(),
            key_id: "KEY1234567".into(),
            team_id: "TEAM123456".into(),
            refresh: Duration::from_secs(50 * 60),
            clock,
            current: Mutex::new(None),
            signed: Default::default(),
        }
    }

    #[test]
    fn provider_token_is_reused_until_refresh_age() {
        let clock = Arc::new(FakeClock::new());
        let t = token(clock.clone());
        let first = t.current();
        clock.advance(Duration::from_secs(49 * 60));
        assert_eq!(t.current().header, first.header);
        assert_eq!(t.signed.load(Ordering::SeqCst), 1);
        clock.advance(Duration::from_secs(60));
        let second = t.current();
        assert_ne!(second.header, first.header);
        assert_eq!(t.signed.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn one_refresh_under_concurrency() {
        let clock = Arc::new(FakeClock::new());
        let t = Arc::new(token(clock.clone()));
        t.current();
        clock.advance(Duration::from_secs(51 * 60));
        let handles: Vec<_> = (0..16)
            .map(|_| {
                let t = t.clone();
                std::thread::spawn(move || t.current().header)
            })
            .collect();
        let headers: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert!(headers.windows(2).all(|w| w[0] == w[1]));
        assert_eq!(t.signed.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn discarded_token_is_replaced_once() {
        let clock = Arc::new(FakeClock::new());
        let t = token(clock.clone());
        let first = t.current();
        clock.advance(Duration::from_secs(1));
        t.discard(&first);
        let second = t.current();
        assert_ne!(first.header, second.header);
        // A late rejection of the old token does not throw away the new one.
        t.discard(&first);
        assert_eq!(t.current().header, second.header);
    }

    #[test]
    fn answer_table() {
        let body = |r: &str, ts: Option<u64>| ErrorBody {
            reason: r.into(),
            timestamp: ts,
        };
        assert_eq!(
            classify(200, None, body("", None), None).label(),
            "delivered"
        );
        for (status, reason, expected) in [
            (400, "BadDeviceToken", "dead_token"),
            (400, "DeviceTokenNotForTopic", "dead_token"),
            (410, "Unregistered", "dead_token"),
            (410, "ExpiredToken", "dead_token"),
            (400, "BadTopic", "permanent"),
            (400, "IdleTimeout", "transient"),
            (403, "InvalidProviderToken", "permanent"),
            (403, "ExpiredProviderToken", "transient"),
            (413, "PayloadTooLarge", "permanent"),
            (429, "TooManyRequests", "transient"),
            (500, "InternalServerError", "transient"),
            (503, "Shutdown", "transient"),
        ] {
            assert_eq!(
                classify(status, None, body(reason, None), None).label(),
                expected,
                "{reason}"
            );
        }
        let gone = classify(
            410,
            None,
            body("Unregistered", Some(1_700_000_000_000)),
            None,
        );
        assert_eq!(
            gone,
            Attempt::DeadToken {
                status: 410,
                reason: "Unregistered".into(),
                since: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            }
        );
    }

    #[test]
    fn collapse_ids_fit_apples_limit() {
        assert_eq!(collapse_header("conv-1"), "conv-1");
        assert_eq!(collapse_header(&"x".repeat(100)).len(), 48);
    }
}
