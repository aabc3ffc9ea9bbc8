//! One attempt at a signed webhook POST, and what its answer means for the next step. Both
//! webhooks (the relay's events, the push proxy's dead-token records) send through it, so they
//! sign, time out and read answers alike: `2xx` delivered; `429`, `5xx`, a timeout or a
//! connection error worth another attempt (after the receiver's `Retry-After` when it gave
//! one); any other answer (another `4xx`; redirects are never followed) a refusal that another
//! attempt would not change.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};

use crate::backoff::retry_after;
use crate::clock::unix_seconds;
use crate::http_client::{HttpClient, HttpError};
use crate::webhook_signature::WebhookKey;

/// Where and how one webhook is sent.
pub struct Target<'a> {
    pub http: &'a HttpClient,
    pub uri: &'a Uri,
    /// Signs each attempt; unsigned webhooks still carry their `webhook-id`.
    pub key: Option<&'a WebhookKey>,
    pub timeout: Duration,
    /// The longest `Retry-After` honoured.
    pub longest_wait: Duration,
}

/// What an answer means for the next step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Delivered,
    /// The receiver will not take it; trying again would not help.
    Refused,
    /// Try again, after the receiver's `Retry-After` if it gave one.
    Retry {
        retry_after: Option<Duration>,
    },
}

/// One attempt's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub next: Next,
    /// For metrics: `2xx`, `4xx`, `429`, `5xx`, `timeout` or `error`.
    pub outcome: &'static str,
    /// The receiver's status, when it answered.
    pub status: Option<u16>,
    /// What went wrong, for logs and the outbox (`answered 503`, the connection error).
    pub error: String,
}

/// POSTs `body` once as delivery `id`, signed with the timestamp `now`, with `headers` (the
/// content type, and whatever the caller adds) and the headers `legacy` builds from the key,
/// the timestamp and the body (a webhook's earlier signature, while receivers move).
pub async fn post_once(
    target: &Target<'_>,
    id: &str,
    body: Bytes,
    now: SystemTime,
    mut headers: Vec<(HeaderName, HeaderValue)>,
    legacy: impl FnOnce(&WebhookKey, u64, &[u8]) -> Vec<(HeaderName, HeaderValue)>,
) -> Answer {
    let timestamp = unix_seconds(now);
    match target.key {
        Some(key) => {
            headers.extend(key.headers(id, timestamp, &body));
            headers.extend(legacy(key, timestamp, &body));
        }
        None => headers.extend(header("webhook-id", id)),
    }
    let answer = target
        .http
        .post(target.uri, &headers, body, target.timeout)
        .await;
    match answer {
        Ok(r) => Answer {
            next: classify(r.status, &r.headers, now, target.longest_wait),
            outcome: match r.status.as_u16() {
                200..=299 => "2xx",
                429 => "429",
                500..=599 => "5xx",
                _ => "4xx",
            },
            status: Some(r.status.as_u16()),
            error: format!("answered {}", r.status.as_u16()),
        },
        Err(e) => Answer {
            next: Next::Retry { retry_after: None },
            outcome: if matches!(e, HttpError::Timeout(_)) {
                "timeout"
            } else {
                "error"
            },
            status: None,
            error: e.to_string(),
        },
    }
}

/// The next step after an answer with `status` (an HTTP-date `Retry-After` read against
/// `now`, and honoured up to `longest_wait`).
pub fn classify(
    status: StatusCode,
    headers: &HeaderMap,
    now: SystemTime,
    longest_wait: Duration,
) -> Next {
    if status.is_success() {
        Next::Delivered
    } else if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        Next::Retry {
            retry_after: retry_after(headers, now, longest_wait),
        }
    } else {
        // 1xx and 3xx (redirects are never followed) are refusals too.
        Next::Refused
    }
}

/// A header from a value that may not be valid (then none).
pub fn header(name: &'static str, value: &str) -> Option<(HeaderName, HeaderValue)> {
    Some((
        HeaderName::from_static(name),
        HeaderValue::from_str(value).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_classified_by_what_to_do_next() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let longest = Duration::from_secs(300);
        let none = HeaderMap::new();
        let s = |c: u16| StatusCode::from_u16(c).unwrap();
        assert_eq!(classify(s(204), &none, now, longest), Next::Delivered);
        assert_eq!(classify(s(400), &none, now, longest), Next::Refused);
        assert_eq!(classify(s(410), &none, now, longest), Next::Refused);
        assert_eq!(classify(s(302), &none, now, longest), Next::Refused);
        assert_eq!(
            classify(s(503), &none, now, longest),
            Next::Retry { retry_after: None }
        );
        let mut h = HeaderMap::new();
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(
            classify(s(429), &h, now, longest),
            Next::Retry {
                retry_after: Some(Duration::from_secs(7))
            }
        );
        // Capped at the longest wait.
        h.insert("retry-after", HeaderValue::from_static("86400"));
        assert_eq!(
            classify(s(503), &h, now, longest),
            Next::Retry {
                retry_after: Some(longest)
            }
        );
    }
}
