//! Our Huawei Push Kit client (push API v1): the app's OAuth client-credentials token (cached
//! by [`TokenCache`]: one fetch at a time, never one per push, since Huawei throttles token
//! calls), sends to `{push_url}/v1/{app_id}/messages:send`, and the table that turns Huawei's
//! result codes into what to do next — with a guard against a misconfigured app turning every
//! token dead. This module holds the client secret and never prints it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Uri};
use serde::Deserialize;

use super::oauth::{CachedToken, TokenCache, token_call};
use super::outcome::Attempt;
use crate::clock::Clock;
use crate::config::{HuaweiConfig, Problems};
use crate::http_client::HttpClient;
use crate::secret::{Secret, read_secret_file};
use crate::tls::client_config;

const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// "All tokens invalid" this many times in a row, with no delivery between: more likely the
/// app id or secret is wrong (every token then looks invalid) than every user gone at once.
pub const SUSPECT_STREAK: u32 = 20;

/// The client for one Huawei app.
pub struct HuaweiClient {
    send_uri: Uri,
    pub urgency: String,
    pub category: Option<String>,
    pub ttl: Duration,
    pub collapse_key: Option<i8>,
    http: HttpClient,
    tokens: ClientCredentials,
    /// "All tokens invalid" answers since the last delivery.
    invalid_streak: AtomicU32,
}

impl HuaweiClient {
    /// Builds the client, reporting every problem under `key` (`push.apps[0].huawei`).
    pub fn build(
        key: &str,
        cfg: &HuaweiConfig,
        clock: Arc<dyn Clock>,
        problems: &mut Problems,
    ) -> Option<HuaweiClient> {
        let before = problems.0.len();
        if cfg.app_id.is_empty() || !cfg.app_id.bytes().all(|b| b.is_ascii_digit()) {
            problems.push(
                format!("{key}.app_id"),
                "must be the app's numeric ID in AppGallery Connect",
            );
        }
        let secret = read_secret_file(&cfg.client_secret_file)
            .map_err(|e| problems.push(format!("{key}.client_secret_file"), e.to_string()))
            .ok()
            .and_then(|bytes| {
                let text = std::str::from_utf8(bytes.expose()).ok()?.trim().to_string();
                (!text.is_empty() && !text.chars().any(char::is_control))
                    .then(|| Secret::new(text))
                    .or_else(|| {
                        problems.push(
                            format!("{key}.client_secret_file"),
                            "must hold the client secret on one line",
                        );
                        None
                    })
            });
        let oauth_uri = crate::http_client::check_url(&cfg.oauth_url)
            .map_err(|e| problems.push(format!("{key}.oauth_url"), e))
            .ok();
        let base = cfg.push_url.trim_end_matches('/');
        let send_uri =
            crate::http_client::check_url(&format!("{base}/v1/{}/messages:send", cfg.app_id))
                .map_err(|e| problems.push(format!("{key}.push_url"), e))
                .ok();
        if !matches!(cfg.urgency.as_str(), "HIGH" | "NORMAL") {
            problems.push(format!("{key}.urgency"), "must be \"HIGH\" or \"NORMAL\"");
        }
        if let Some(c) = &cfg.category
            && (c.is_empty()
                || c.len() > 64
                || !c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
        {
            problems.push(
                format!("{key}.category"),
                "must be a Huawei message category such as \"IM\" or \"VOIP\"",
            );
        }
        if cfg.collapse_key.is_some_and(|k| !(-1..=100).contains(&k)) {
            problems.push(
                format!("{key}.collapse_key"),
                "must be -1 (deliver every kept message), 0 (Huawei's default) or a group from 1 to 100",
            );
        }
        if cfg.connections == 0 || cfg.connections > 64 {
            problems.push(format!("{key}.connections"), "must be between 1 and 64");
        }
        if cfg.ttl.0.is_zero() || cfg.ttl.0 > Duration::from_secs(15 * 86_400) {
            problems.push(format!("{key}.ttl"), "must be between 1s and 15 days");
        }
        let tls = client_config(&cfg.extra_trust_anchors, None, &[])
            .map_err(|e| problems.push(format!("{key}.extra_trust_anchors"), e))
            .ok();
        if problems.0.len() > before {
            return None;
        }
        let tls = tls?;
        Some(HuaweiClient {
            send_uri: send_uri?,
            urgency: cfg.urgency.clone(),
            category: cfg.category.clone(),
            ttl: cfg.ttl.0,
            collapse_key: cfg.collapse_key,
            http: HttpClient::with_idle_connections(
                crate::egress::Role::Push,
                tls.clone(),
                cfg.connections,
            ),
            tokens: ClientCredentials {
                client_id: cfg.app_id.clone(),
                secret: secret?,
                uri: oauth_uri?,
                http: HttpClient::new(crate::egress::Role::Push, tls),
                cache: TokenCache::new(clock),
            },
            invalid_streak: AtomicU32::new(0),
        })
    }

    /// One call to Huawei with a prepared request body for `token`.
    pub async fn attempt(&self, token: &str, body: Bytes) -> Attempt {
        let mut refreshed = false;
        loop {
            let bearer = match self.tokens.header().await {
                Ok(b) => b,
                Err(a) => return a,
            };
            let headers = [
                (http::header::AUTHORIZATION, bearer.clone()),
                (
                    HeaderName::from_static("content-type"),
                    HeaderValue::from_static("application/json;charset=utf-8"),
                ),
            ];
            let answer = match self
                .http
                .post(&self.send_uri, &headers, body.clone(), SEND_TIMEOUT)
                .await
            {
                Ok(a) => a,
                Err(e) => {
                    tracing::debug!(provider = "huawei", error = %e, "send failed");
                    return Attempt::transient("connection");
                }
            };
            let attempt = classify(answer.status.as_u16(), &answer.body, token);
            // The token went stale under us: a new token, and one more try at once.
            if attempt.reason() == STALE_TOKEN {
                self.tokens.cache.discard(&bearer);
                if !refreshed {
                    refreshed = true;
                    continue;
                }
            }
            return self.guard(attempt);
        }
    }

    /// A dead token only while the app is known to work: a run of "all tokens invalid" with no
    /// delivery is taken as the app's own misconfiguration (refused: the app shows degraded),
    /// and no token is recorded dead for it.
    fn guard(&self, attempt: Attempt) -> Attempt {
        match &attempt {
            Attempt::Delivered { .. } => self.invalid_streak.store(0, Ordering::Relaxed),
            Attempt::DeadToken { status, reason, .. } if reason == ALL_INVALID => {
                let streak = self.invalid_streak.fetch_add(1, Ordering::Relaxed) + 1;
                if streak >= SUSPECT_STREAK {
                    if streak == SUSPECT_STREAK {
                        tracing::warn!(
                            provider = "huawei",
                            streak,
                            "every token Huawei was sent is \"invalid\" and none was delivered: \
                             check the app id and client secret; no more tokens are recorded dead \
                             until a push is delivered"
                        );
                    }
                    return Attempt::Permanent {
                        status: Some(*status),
                        reason: "all_tokens_invalid_suspect".into(),
                    };
                }
            }
            _ => {}
        }
        attempt
    }
}

/// Huawei's answer body.
#[derive(Deserialize, Default)]
struct Answer {
    #[serde(default)]
    code: String,
    #[serde(default)]
    msg: String,
}

const STALE_TOKEN: &str = "80200003";
const ALL_INVALID: &str = "80300007";

/// Huawei's result codes (Push Kit server API, "Result codes"), by what to do next.
fn classify(status: u16, body: &[u8], token: &str) -> Attempt {
    let answer: Answer = serde_json::from_slice(body).unwrap_or_default();
    let code = if answer.code.is_empty() {
        format!("HTTP{status}")
    } else {
        answer.code.chars().take(16).collect()
    };
    let dead = |reason: &str| Attempt::DeadToken {
        status,
        reason: reason.into(),
        since: None,
    };
    let transient = || Attempt::Transient {
        status: Some(status),
        reason: code.clone(),
        retry_after: None,
    };
    match code.as_str() {
        "80000000" => Attempt::Delivered { status, id: None },
        // Partial success: `msg` lists the tokens that are not valid (one token per message
        // here, so it is this one or none).
        "80100000" => {
            #[derive(Deserialize, Default)]
            struct Partial {
                #[serde(default)]
                illegal_tokens: Vec<String>,
            }
            let partial: Partial = serde_json::from_str(&answer.msg).unwrap_or_default();
            if partial.illegal_tokens.iter().any(|t| t == token) {
                dead("80100000")
            } else {
                Attempt::Delivered { status, id: None }
            }
        }
        ALL_INVALID => dead(ALL_INVALID),
        // The access token was refused or expired: a new one is fetched and the send retried.
        "80200001" | STALE_TOKEN => Attempt::Transient {
            status: Some(status),
            reason: STALE_TOKEN.into(),
            retry_after: None,
        },
        // Huawei's own trouble, or its flow control.
        "81000001" => transient(),
        _ if status == 503 || status == 429 || status >= 500 => transient(),
        // 80300008 (too large after fitting), 80100001/3 (the message), 80300002 (no
        // permission for the tokens), 80300011 (no permission for high urgency), ...: an
        // operator must look.
        _ => Attempt::Permanent {
            status: Some(status),
            reason: code.clone(),
        },
    }
}

/// OAuth client-credentials tokens for one app.
struct ClientCredentials {
    client_id: String,
    secret: Secret<String>,
    uri: Uri,
    http: HttpClient,
    cache: TokenCache,
}

impl ClientCredentials {
    async fn header(&self) -> Result<HeaderValue, Attempt> {
        self.cache.header(|| self.fetch()).await
    }

    async fn fetch(&self) -> Result<CachedToken, Attempt> {
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "client_credentials")
            .append_pair("client_id", &self.client_id)
            .append_pair("client_secret", self.secret.expose())
            .finish();
        let now = self.cache.clock().now();
        token_call(&self.http, &self.uri, form, "huawei", now).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(status: u16, code: &str, msg: &str) -> Attempt {
        let body = serde_json::json!({"code": code, "msg": msg, "requestId": "1"}).to_string();
        classify(status, body.as_bytes(), "tok-1")
    }

    #[test]
    fn result_codes() {
        assert_eq!(answer(200, "80000000", "Success").label(), "delivered");
        let partial = |tokens: &str| {
            let msg = format!(r#"{{"success":0,"failure":1,"illegal_tokens":[{tokens}]}}"#);
            answer(200, "80100000", &msg).label()
        };
        assert_eq!(partial(r#""tok-1""#), "dead_token");
        assert_eq!(partial(r#""tok-2""#), "delivered");
        assert_eq!(
            answer(400, "80300007", "All the tokens are invalid").label(),
            "dead_token"
        );
        assert_eq!(
            answer(401, "80200003", "OAuth token expired").reason(),
            STALE_TOKEN
        );
        assert_eq!(
            answer(401, "80200001", "OAuth authentication error").reason(),
            STALE_TOKEN
        );
        assert_eq!(
            answer(500, "81000001", "System inner error").label(),
            "transient"
        );
        assert_eq!(classify(503, b"", "tok-1").label(), "transient");
        assert_eq!(answer(400, "80300008", "too large").label(), "permanent");
        assert_eq!(
            answer(403, "80300002", "no permission").label(),
            "permanent"
        );
        assert_eq!(
            answer(400, "80100003", "Incorrect message structure").label(),
            "permanent"
        );
    }
}
