//! The push proxy's metrics. Label values are bounded: apps are the configured ids (anything
//! else is `unknown`), reasons are provider codes or brandgate's own short codes.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub app: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeliveryLabels {
    pub app: String,
    pub provider: &'static str,
    pub outcome: &'static str,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProviderLabels {
    pub app: String,
    pub provider: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
}

type HistogramFamily = Family<ProviderLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 0.5 ms .. ~8 s.
    Histogram::new(exponential_buckets(0.0005, 2.0, 15))
}

/// Every push metric, registered once at start-up and shared by all generations of the config.
#[derive(Clone)]
pub struct PushMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub deliveries: Family<DeliveryLabels, Counter>,
    pub provider_latency: HistogramFamily,
    pub retries: Family<ProviderLabels, Counter>,
    pub in_flight: Gauge,
    pub duplicates: Counter,
    pub dedupe_evicted_early: Counter,
    pub dedupe_store_errors: Counter,
    pub dead_tokens: Family<ProviderLabels, Counter>,
    /// When an app's provider certificate (APNs certificate auth) expires.
    pub certificate_expiry: Family<ProviderLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub webhook: Family<ResultLabels, Counter>,
    pub refused: Family<ResultLabels, Counter>,
    pub pool_open: Family<ProviderLabels, Gauge>,
    pub pool_connects: Family<ProviderLabels, Counter>,
    pub pool_connect_failures: Family<ProviderLabels, Counter>,
}

/// One app's busiest series, resolved once when the app is built so the hot path does not hash
/// label sets for every push.
pub struct AppMetrics {
    pub ok_requests: Counter,
    pub apns: ProviderSeries,
    pub fcm: ProviderSeries,
    pub huawei: ProviderSeries,
}

pub struct ProviderSeries {
    pub latency: Histogram,
    pub retries: Counter,
    pub delivered: Counter,
}

impl AppMetrics {
    pub fn provider(&self, provider: super::Provider) -> &ProviderSeries {
        match provider {
            super::Provider::Apns => &self.apns,
            super::Provider::Fcm => &self.fcm,
            super::Provider::Huawei => &self.huawei,
        }
    }
}

/// The metrics of one connection pool.
#[derive(Clone)]
pub struct PoolMetrics {
    pub open: Gauge,
    pub connects: Counter,
    pub connect_failures: Counter,
}

impl PushMetrics {
    pub fn register(registry: &mut Registry) -> PushMetrics {
        let m = PushMetrics {
            requests: Family::default(),
            deliveries: Family::default(),
            provider_latency: Family::new_with_constructor(latency_histogram),
            retries: Family::default(),
            in_flight: Gauge::default(),
            duplicates: Counter::default(),
            dedupe_evicted_early: Counter::default(),
            dedupe_store_errors: Counter::default(),
            dead_tokens: Family::default(),
            certificate_expiry: Family::default(),
            webhook: Family::default(),
            refused: Family::default(),
            pool_open: Family::default(),
            pool_connects: Family::default(),
            pool_connect_failures: Family::default(),
        };
        let r = registry.sub_registry_with_prefix("brandgate_push");
        r.register(
            "requests",
            "Push requests received, by app and HTTP status answered",
            m.requests.clone(),
        );
        r.register(
            "deliveries",
            "Pushes finished, by app, provider, outcome and provider reason",
            m.deliveries.clone(),
        );
        r.register(
            "provider_latency_seconds",
            "Time for one provider call, by app and provider",
            m.provider_latency.clone(),
        );
        r.register(
            "retries",
            "Provider calls retried after a transient failure",
            m.retries.clone(),
        );
        r.register(
            "in_flight",
            "Pushes being delivered right now",
            m.in_flight.clone(),
        );
        r.register(
            "duplicates",
            "Repeats of an already delivered push answered without sending",
            m.duplicates.clone(),
        );
        r.register(
            "dedupe_evicted_early",
            "Delivered pushes forgotten before dedupe_window ended because dedupe_capacity was full",
            m.dedupe_evicted_early.clone(),
        );
        r.register(
            "dedupe_store_errors",
            "Push claims the store could not take (de-duplication went on with this node's memory only)",
            m.dedupe_store_errors.clone(),
        );
        r.register(
            "dead_tokens",
            "Device tokens the provider declared dead",
            m.dead_tokens.clone(),
        );
        r.register(
            "certificate_expiry_timestamp_seconds",
            "When an app's APNs client certificate expires, in seconds since the epoch",
            m.certificate_expiry.clone(),
        );
        r.register(
            "feedback_webhook",
            "Dead-token webhook calls, by result",
            m.webhook.clone(),
        );
        r.register(
            "refused",
            "Requests refused before delivery (overload, rate limit), by reason",
            m.refused.clone(),
        );
        // Both refusals show from the start (a 0 a dashboard or an alert can read).
        for result in ["overloaded", "rate_limited"] {
            let _ = m.refused.get_or_create(&ResultLabels { result });
        }
        r.register(
            "pool_connections_open",
            "Open HTTP/2 connections to providers",
            m.pool_open.clone(),
        );
        r.register(
            "pool_connects",
            "Provider connections opened",
            m.pool_connects.clone(),
        );
        r.register(
            "pool_connect_failures",
            "Provider connections that failed to open",
            m.pool_connect_failures.clone(),
        );
        m
    }

    pub fn app(&self, app: &str) -> AppMetrics {
        let series = |provider: &'static str| {
            let labels = ProviderLabels {
                app: app.to_string(),
                provider,
            };
            ProviderSeries {
                latency: self.provider_latency.get_or_create_owned(&labels),
                retries: self.retries.get_or_create_owned(&labels),
                delivered: self.deliveries.get_or_create_owned(&DeliveryLabels {
                    app: app.to_string(),
                    provider,
                    outcome: "delivered",
                    reason: "ok".into(),
                }),
            }
        };
        AppMetrics {
            ok_requests: self.requests.get_or_create_owned(&RequestLabels {
                app: app.to_string(),
                status: 200,
            }),
            apns: series("apns"),
            fcm: series("fcm"),
            huawei: series("huawei"),
        }
    }

    pub fn pool(&self, app: &str, provider: &'static str) -> PoolMetrics {
        let labels = ProviderLabels {
            app: app.to_string(),
            provider,
        };
        PoolMetrics {
            open: self.pool_open.get_or_create_owned(&labels),
            connects: self.pool_connects.get_or_create_owned(&labels),
            connect_failures: self.pool_connect_failures.get_or_create_owned(&labels),
        }
    }
}

/// Every reason a `reason` label may carry: Apple's documented reasons, FCM's error codes and
/// Google's canonical statuses, and brandgate's own. Anything else a provider invents becomes
/// `unrecognized`, so a misbehaving server cannot create unbounded series.
const KNOWN_REASONS: &[&str] = &[
    // APNs
    "BadCollapseId",
    "BadDeviceToken",
    "BadExpirationDate",
    "BadMessageId",
    "BadPriority",
    "BadTopic",
    "DeviceTokenNotForTopic",
    "DuplicateHeaders",
    "IdleTimeout",
    "InvalidPushType",
    "MissingDeviceToken",
    "MissingTopic",
    "PayloadEmpty",
    "TopicDisallowed",
    "BadCertificate",
    "BadCertificateEnvironment",
    "ExpiredProviderToken",
    "Forbidden",
    "InvalidProviderToken",
    "MissingProviderToken",
    "UnrelatedKeyIdInToken",
    "BadEnvironmentKeyIdInToken",
    "BadPath",
    "MethodNotAllowed",
    "ExpiredToken",
    "Unregistered",
    "PayloadTooLarge",
    "TooManyProviderTokenUpdates",
    "TooManyRequests",
    "InternalServerError",
    "ServiceUnavailable",
    "Shutdown",
    // FCM
    "UNSPECIFIED_ERROR",
    "INVALID_ARGUMENT",
    "UNREGISTERED",
    "SENDER_ID_MISMATCH",
    "QUOTA_EXCEEDED",
    "UNAVAILABLE",
    "INTERNAL",
    "THIRD_PARTY_AUTH_ERROR",
    "UNAUTHENTICATED",
    "PERMISSION_DENIED",
    "NOT_FOUND",
    "RESOURCE_EXHAUSTED",
    // brandgate
    "ok",
    "connection",
    "deadline",
    "oauth_unavailable",
    "oauth_refused",
    "oauth_bad_answer",
    "oauth_signing_failed",
    "BadRequestHeaders",
    "no_provider",
];

/// A provider reason as a label value (see [`KNOWN_REASONS`]); `HTTP<status>` stands for an
/// answer without a reason.
pub fn reason_label(reason: &str) -> String {
    let http_status = reason
        .strip_prefix("HTTP")
        .is_some_and(|s| s.len() == 3 && s.bytes().all(|b| b.is_ascii_digit()));
    if http_status || KNOWN_REASONS.contains(&reason) {
        reason.to_string()
    } else {
        "unrecognized".to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_reasons_become_labels() {
        assert_eq!(reason_label("Unregistered"), "Unregistered");
        assert_eq!(reason_label("QUOTA_EXCEEDED"), "QUOTA_EXCEEDED");
        assert_eq!(reason_label("HTTP502"), "HTTP502");
        assert_eq!(reason_label("MadeUpReason123"), "unrecognized");
        assert_eq!(reason_label("HTTP5022"), "unrecognized");
    }
}
