//! Our FCM HTTP v1 client: service-account OAuth (a JWT-bearer grant posted to the `token_uri`
//! in the service-account file; cached by [`TokenCache`]), sends over [`H2Pool`], and the table that turns FCM's error codes into what
//! to do next. This module holds the service account's private key and never prints it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Uri};
use http_body_util::Full;
use serde::Deserialize;

use super::h2pool::H2Pool;
use super::metrics::PushMetrics;
use super::oauth::{CachedToken, TokenCache, token_call};
use super::outcome::Attempt;
use crate::clock::{Clock, unix_seconds};
use crate::config::{FcmConfig, Problems};
use crate::http_client::HttpClient;
use crate::secret::read_secret_file;
use crate::tls::client_config;

const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// The client for one app's Firebase project.
pub struct FcmClient {
    pub android_priority: String,
    pub collapse_by_conversation: bool,
    link: Arc<FcmLink>,
}

/// What apps with one service account and project share: the connections to FCM and the
/// OAuth access token.
pub struct FcmLink {
    send_uri: Uri,
    tokens: AccessTokens,
    pool: H2Pool,
}

/// The fields of a Google service-account key file that brandgate uses.
#[derive(Deserialize)]
struct ServiceAccountFile {
    #[serde(rename = "type")]
    kind: Option<String>,
    project_id: Option<String>,
    private_key_id: Option<String>,
    private_key: String,
    client_email: String,
    token_uri: String,
}

/// Why a service-account file could not be read as one, with the fix. serde's messages name a
/// missing field or a type and a position, never a string value (every field read is a string),
/// so no part of the private key can reach the message.
fn service_account_error(path: &std::path::Path, e: &serde_json::Error) -> String {
    use serde_json::error::Category;
    const FIX: &str = "download the key again (Firebase console: Project settings, Service \
                       accounts, Generate new private key)";
    match e.classify() {
        Category::Syntax | Category::Eof => format!(
            "{} is not valid JSON (line {}, column {}): {FIX}",
            path.display(),
            e.line(),
            e.column()
        ),
        Category::Data | Category::Io => format!(
            "{} is not a Google service-account key ({e}): {FIX}",
            path.display()
        ),
    }
}

impl FcmClient {
    /// Builds the client, reporting every problem under `key` (`push.apps[0].fcm`). With
    /// `shared`, the link of another app with the same service account, project and endpoint
    /// is used, and the service account is not read again.
    pub fn build(
        key: &str,
        app_id: &str,
        cfg: &FcmConfig,
        metrics: &PushMetrics,
        clock: Arc<dyn Clock>,
        shared: Option<Arc<FcmLink>>,
        problems: &mut Problems,
    ) -> Option<FcmClient> {
        let before = problems.0.len();
        if let Some(link) = shared {
            check_priority(key, cfg, problems);
            return (problems.0.len() == before).then(|| FcmClient {
                android_priority: cfg.android_priority.clone(),
                collapse_by_conversation: cfg.collapse_by_conversation,
                link,
            });
        }
        let sa_key = format!("{key}.service_account_file");
        let account: Option<ServiceAccountFile> = match read_secret_file(&cfg.service_account_file)
        {
            Ok(bytes) => match serde_json::from_slice::<ServiceAccountFile>(bytes.expose()) {
                Ok(sa) if sa.kind.as_deref().is_none_or(|k| k == "service_account") => Some(sa),
                Ok(_) => {
                    problems.push(
                        &sa_key,
                        "is not a service-account key (\"type\" must be \"service_account\")",
                    );
                    None
                }
                Err(e) => {
                    problems.push(
                        &sa_key,
                        service_account_error(&cfg.service_account_file, &e),
                    );
                    None
                }
            },
            Err(e) => {
                problems.push(&sa_key, e.to_string());
                None
            }
        };
        let account = account?;
        let signing_key = jsonwebtoken::EncodingKey::from_rsa_pem(account.private_key.as_bytes())
            .map_err(|_| problems.push(&sa_key, "its private_key is not an RSA PEM key"))
            .ok();
        let token_uri = crate::http_client::check_url(&account.token_uri)
            .map_err(|e| problems.push(&sa_key, format!("token_uri: {e}")))
            .ok();
        let project = cfg.project_id.clone().or(account.project_id.clone());
        let project = match project {
            Some(p)
                if !p.is_empty()
                    && p.bytes().all(|b| {
                        b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b':'
                    }) =>
            {
                Some(p)
            }
            Some(p) => {
                problems.push(
                    format!("{key}.project_id"),
                    format!("{p:?} is not a Firebase project id"),
                );
                None
            }
            None => {
                problems.push(
                    format!("{key}.project_id"),
                    "is required (the service-account file has none)",
                );
                None
            }
        };
        let endpoint = cfg.endpoint.trim_end_matches('/');
        let send_uri = project.as_ref().and_then(|p| {
            format!("{endpoint}/v1/projects/{p}/messages:send")
                .parse::<Uri>()
                .ok()
                .filter(|u| u.scheme_str() == Some("https") && u.host().is_some())
        });
        if project.is_some() && send_uri.is_none() {
            problems.push(
                format!("{key}.endpoint"),
                format!("{endpoint:?} must be an https:// URL"),
            );
        }
        check_priority(key, cfg, problems);
        if cfg.connections == 0 || cfg.connections > 64 {
            problems.push(format!("{key}.connections"), "must be between 1 and 64");
        }
        let send_tls = client_config(&cfg.extra_trust_anchors, None, &[b"h2"])
            .map_err(|e| problems.push(format!("{key}.extra_trust_anchors"), e))
            .ok();
        let token_tls = client_config(&cfg.extra_trust_anchors, None, &[])
            .map_err(|e| problems.push(format!("{key}.extra_trust_anchors"), e))
            .ok();
        if problems.0.len() > before {
            return None;
        }
        let send_uri = send_uri?;
        let pool = H2Pool::new(
            &send_uri,
            send_tls?,
            cfg.connections,
            metrics.pool(app_id, "fcm"),
        )
        .map_err(|e| problems.push(format!("{key}.endpoint"), e))
        .ok()?;
        Some(FcmClient {
            android_priority: cfg.android_priority.clone(),
            collapse_by_conversation: cfg.collapse_by_conversation,
            link: Arc::new(FcmLink {
                send_uri,
                tokens: AccessTokens {
                    email: account.client_email,
                    key_id: account.private_key_id,
                    key: signing_key?,
                    token_uri: token_uri?,
                    http: HttpClient::new(crate::egress::Role::Push, token_tls?),
                    cache: TokenCache::new(clock),
                },
                pool,
            }),
        })
    }

    /// The connections and access token this client sends with, for apps that share them.
    pub fn link(&self) -> Arc<FcmLink> {
        self.link.clone()
    }

    /// One call to FCM with a prepared `{"message": ...}` body.
    pub async fn attempt(&self, body: Bytes) -> Attempt {
        let link = &self.link;
        let bearer = match link.tokens.header().await {
            Ok(b) => b,
            Err(a) => return a,
        };
        let request = Request::post(link.send_uri.clone())
            .header(http::header::AUTHORIZATION, bearer.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body));
        let answer = match link.pool.call("fcm", request).await {
            Ok(a) => a,
            Err(attempt) => return attempt,
        };
        let status = answer.status.as_u16();
        let retry_after = answer.retry_after(link.tokens.cache.clock().now());
        let attempt = classify(status, &answer.body, retry_after);
        if attempt.reason() == "UNAUTHENTICATED" {
            link.tokens.cache.discard(&bearer);
        }
        attempt
    }
}

fn check_priority(key: &str, cfg: &FcmConfig, problems: &mut Problems) {
    if !matches!(cfg.android_priority.as_str(), "high" | "normal") {
        problems.push(
            format!("{key}.android_priority"),
            "must be \"high\" or \"normal\"",
        );
    }
}

#[derive(Deserialize, Default)]
struct GoogleErrorBody {
    #[serde(default)]
    error: GoogleError,
}

#[derive(Deserialize, Default)]
struct GoogleError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    details: Vec<GoogleErrorDetail>,
}

#[derive(Deserialize, Default)]
struct GoogleErrorDetail {
    #[serde(rename = "errorCode")]
    error_code: Option<String>,
    #[serde(rename = "fieldViolations", default)]
    field_violations: Vec<FieldViolation>,
}

#[derive(Deserialize, Default)]
struct FieldViolation {
    #[serde(default)]
    field: String,
}

/// FCM's error table ("FCM error codes", `google.firebase.fcm.v1.FcmError`), by what to do next.
fn classify(status: u16, body: &[u8], retry_after: Option<Duration>) -> Attempt {
    if status == 200 {
        #[derive(Deserialize)]
        struct Sent {
            name: Option<String>,
        }
        let id = serde_json::from_slice::<Sent>(body)
            .ok()
            .and_then(|s| s.name);
        return Attempt::Delivered { status, id };
    }
    let e = serde_json::from_slice::<GoogleErrorBody>(body)
        .unwrap_or_default()
        .error;
    let code = e
        .details
        .iter()
        .find_map(|d| d.error_code.clone())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| {
            if e.status.is_empty() {
                format!("HTTP{status}")
            } else {
                e.status.clone()
            }
        });
    // INVALID_ARGUMENT covers both a bad token and a bad message; FCM tells them apart only by
    // a field violation on `message.token` or by its message text.
    let token_invalid = e
        .details
        .iter()
        .flat_map(|d| &d.field_violations)
        .any(|v| v.field == "message.token")
        || e.message.contains("registration token");
    let dead = |reason: &str| Attempt::DeadToken {
        status,
        reason: reason.into(),
        since: None,
    };
    let transient = || Attempt::Transient {
        status: Some(status),
        reason: code.clone(),
        retry_after,
    };
    match code.as_str() {
        // The app was uninstalled or the token expired: remove it.
        "UNREGISTERED" => dead("UNREGISTERED"),
        // The token belongs to another Firebase project.
        "SENDER_ID_MISMATCH" => dead("SENDER_ID_MISMATCH"),
        "INVALID_ARGUMENT" if token_invalid => dead("INVALID_ARGUMENT"),
        // Sending too fast for this project or device: back off.
        "QUOTA_EXCEEDED" => transient(),
        // Google's trouble.
        "UNAVAILABLE" | "INTERNAL" => transient(),
        // Our access token was refused (expired early, revoked): it is discarded, retry.
        "UNAUTHENTICATED" => transient(),
        // Any other server-side failure (a 502/504 from a proxy on the way) is worth a retry too.
        _ if status == 429 || status >= 500 => transient(),
        // INVALID_ARGUMENT (the message), THIRD_PARTY_AUTH_ERROR (the APNs/web credential in
        // Firebase), PERMISSION_DENIED, NOT_FOUND (project): an operator must look.
        _ => Attempt::Permanent {
            status: Some(status),
            reason: code.clone(),
        },
    }
}

/// OAuth access tokens for one service account (JWT-bearer grant).
struct AccessTokens {
    email: String,
    key_id: Option<String>,
    key: jsonwebtoken::EncodingKey,
    token_uri: Uri,
    http: HttpClient,
    cache: TokenCache,
}

impl AccessTokens {
    /// The `Authorization` header value ([`TokenCache::header`]).
    async fn header(&self) -> Result<HeaderValue, Attempt> {
        self.cache.header(|| self.fetch()).await
    }

    async fn fetch(&self) -> Result<CachedToken, Attempt> {
        #[derive(serde::Serialize)]
        struct Claims<'a> {
            iss: &'a str,
            scope: &'a str,
            aud: String,
            iat: u64,
            exp: u64,
        }
        let now = self.cache.clock().now();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = self.key_id.clone();
        let claims = Claims {
            iss: &self.email,
            scope: SCOPE,
            aud: self.token_uri.to_string(),
            iat: unix_seconds(now),
            exp: unix_seconds(now) + 3600,
        };
        let assertion =
            jsonwebtoken::encode(&header, &claims, &self.key).map_err(|_| Attempt::Permanent {
                status: None,
                reason: "oauth_signing_failed".into(),
            })?;
        let form = format!(
            "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion={assertion}"
        );
        token_call(&self.http, &self.token_uri, form, "fcm", now).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(status: u16, code: &str, message: &str, extra: &str) -> Attempt {
        let body = format!(
            r#"{{"error":{{"code":{status},"message":"{message}","status":"X","details":[
            {{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"{code}"}}{extra}]}}}}"#
        );
        classify(status, body.as_bytes(), None)
    }

    #[test]
    fn error_table() {
        assert_eq!(
            classify(200, br#"{"name":"projects/p/messages/1"}"#, None),
            Attempt::Delivered {
                status: 200,
                id: Some("projects/p/messages/1".into())
            }
        );
        assert_eq!(err(404, "UNREGISTERED", "gone", "").label(), "dead_token");
        assert_eq!(
            err(403, "SENDER_ID_MISMATCH", "no", "").label(),
            "dead_token"
        );
        assert_eq!(
            err(
                400,
                "INVALID_ARGUMENT",
                "The registration token is not a valid FCM registration token",
                ""
            )
            .label(),
            "dead_token"
        );
        let violation = r#",{"@type":"type.googleapis.com/google.rpc.BadRequest","fieldViolations":[{"field":"message.token","description":"bad"}]}"#;
        assert_eq!(
            err(
                400,
                "INVALID_ARGUMENT",
                "Request contains an invalid argument.",
                violation
            )
            .label(),
            "dead_token"
        );
        assert_eq!(
            err(
                400,
                "INVALID_ARGUMENT",
                "Request contains an invalid argument.",
                ""
            )
            .label(),
            "permanent"
        );
        assert_eq!(
            err(429, "QUOTA_EXCEEDED", "slow down", "").label(),
            "transient"
        );
        assert_eq!(err(503, "UNAVAILABLE", "later", "").label(), "transient");
        assert_eq!(err(500, "INTERNAL", "oops", "").label(), "transient");
        assert_eq!(
            err(401, "THIRD_PARTY_AUTH_ERROR", "apns cert", "").label(),
            "permanent"
        );
        assert_eq!(classify(502, b"<html>", None).label(), "transient");
        assert_eq!(classify(404, b"<html>", None).label(), "permanent");
        assert_eq!(classify(503, b"", None).label(), "transient");
    }
}
