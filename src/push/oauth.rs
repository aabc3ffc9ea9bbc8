//! OAuth access tokens for the providers that want one per call (FCM, Huawei): the token call
//! itself (a form POST, the provider's refusals told apart from its outages), and the cache that
//! keeps a token until shortly before it expires, fetches one at a time however many pushes
//! wait, and remembers a refusal for a while so that every push does not ask again.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Uri};
use serde::Deserialize;

use super::outcome::Attempt;
use crate::clock::Clock;
use crate::http_client::HttpClient;

/// An access token is replaced this long before it expires.
const EARLY_REFRESH: Duration = Duration::from_secs(5 * 60);
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a refused credential is not asked about again.
const REFUSAL_MEMORY: Duration = Duration::from_secs(60);
/// Longest access-token lifetime believed (Google's are an hour, Huawei's too).
const MAX_LIFETIME: Duration = Duration::from_secs(86_400);

/// A token and when to replace it.
#[derive(Clone)]
pub struct CachedToken {
    header: HeaderValue,
    refresh_at: SystemTime,
}

/// The access tokens of one credential.
pub struct TokenCache {
    clock: Arc<dyn Clock>,
    cached: Mutex<Option<CachedToken>>,
    /// A refusal by the token endpoint (a revoked or wrong credential), remembered for a while;
    /// replacing the credential and reloading clears it.
    refused: Mutex<Option<(SystemTime, Attempt)>>,
    fetching: tokio::sync::Mutex<()>,
}

impl TokenCache {
    pub fn new(clock: Arc<dyn Clock>) -> TokenCache {
        TokenCache {
            clock,
            cached: Mutex::new(None),
            refused: Mutex::new(None),
            fetching: tokio::sync::Mutex::new(()),
        }
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    fn refused(&self) -> Option<Attempt> {
        let now = self.clock.now();
        let guard = self.refused.lock().unwrap_or_else(|e| e.into_inner());
        guard
            .as_ref()
            .filter(|(until, _)| *until > now)
            .map(|(_, answer)| answer.clone())
    }

    fn cached(&self) -> Option<HeaderValue> {
        let now = self.clock.now();
        let guard = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        guard
            .as_ref()
            .filter(|c| c.refresh_at > now)
            .map(|c| c.header.clone())
    }

    /// The `Authorization` header value; calls `fetch` when no token is fresh. Concurrent
    /// callers wait for one fetch.
    pub async fn header<F, Fut>(&self, fetch: F) -> Result<HeaderValue, Attempt>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<CachedToken, Attempt>>,
    {
        if let Some(h) = self.cached() {
            return Ok(h);
        }
        if let Some(refusal) = self.refused() {
            return Err(refusal);
        }
        // Rare (about once an hour): boxed, so every push's future does not carry the size of
        // a token call (see `PushService::send_on`).
        Box::pin(self.fetch_once(fetch)).await
    }

    /// The slow path of [`TokenCache::header`]: one fetch at a time, the others wait for it.
    async fn fetch_once<F, Fut>(&self, fetch: F) -> Result<HeaderValue, Attempt>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<CachedToken, Attempt>>,
    {
        let _one_fetch = self.fetching.lock().await;
        if let Some(h) = self.cached() {
            return Ok(h);
        }
        if let Some(refusal) = self.refused() {
            return Err(refusal);
        }
        let fresh = fetch().await.inspect_err(|answer| {
            if let Attempt::Permanent { .. } = answer {
                *self.refused.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((self.clock.now() + REFUSAL_MEMORY, answer.clone()));
            }
        })?;
        let header = fresh.header.clone();
        *self.cached.lock().unwrap_or_else(|e| e.into_inner()) = Some(fresh);
        Ok(header)
    }

    /// Forgets `rejected` (the provider said it is no longer good), unless a newer one
    /// replaced it already.
    pub fn discard(&self, rejected: &HeaderValue) {
        let mut guard = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if guard.as_ref().is_some_and(|c| c.header == *rejected) {
            *guard = None;
        }
    }
}

/// One token call: `form` (already encoded) posted to `uri`; a 429 or 5xx is an outage worth
/// a retry, any other refusal is the credential's (an operator must look).
pub async fn token_call(
    http: &HttpClient,
    uri: &Uri,
    form: String,
    provider: &'static str,
    now: SystemTime,
) -> Result<CachedToken, Attempt> {
    let headers = [(
        HeaderName::from_static("content-type"),
        HeaderValue::from_static("application/x-www-form-urlencoded"),
    )];
    let answer = http
        .post(uri, &headers, Bytes::from(form), CALL_TIMEOUT)
        .await
        .map_err(|e| {
            tracing::warn!(provider, error = %e, "OAuth token call failed");
            Attempt::transient("oauth_unavailable")
        })?;
    let status = answer.status.as_u16();
    if !answer.status.is_success() {
        #[derive(Deserialize, Default)]
        struct OAuthError {
            #[serde(default)]
            error: serde_json::Value,
        }
        let e: OAuthError = serde_json::from_slice(&answer.body).unwrap_or_default();
        tracing::warn!(provider, status, error = %e.error, "OAuth token refused");
        return Err(if status == 429 || status >= 500 {
            Attempt::Transient {
                status: Some(status),
                reason: "oauth_unavailable".into(),
                retry_after: None,
            }
        } else {
            Attempt::Permanent {
                status: Some(status),
                reason: "oauth_refused".into(),
            }
        });
    }
    #[derive(Deserialize)]
    struct Granted {
        access_token: String,
        expires_in: Option<u64>,
    }
    let bad_answer = || Attempt::Transient {
        status: Some(status),
        reason: "oauth_bad_answer".into(),
        retry_after: None,
    };
    let granted: Granted = serde_json::from_slice(&answer.body).map_err(|_| bad_answer())?;
    let lifetime = Duration::from_secs(granted.expires_in.unwrap_or(3600)).min(MAX_LIFETIME);
    let header = HeaderValue::from_str(&format!("Bearer {}", granted.access_token))
        .map_err(|_| bad_answer())?;
    Ok(CachedToken {
        header,
        refresh_at: now + lifetime.saturating_sub(EARLY_REFRESH),
    })
}
