//! The identity bridge's metrics. Label values are fixed words, never ids or subjects.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoginLabels {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    /// `code` (the platform's exchange), `implicit`, `backend`, `anonymous`.
    flow: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JwksLabels {
    /// `ok` or `failed`.
    outcome: &'static str,
}

#[derive(Clone, Default)]
pub struct IdentityMetrics {
    logins: Family<LoginLabels, Counter>,
    tokens: Family<TokenLabels, Counter>,
    jwks_fetches: Family<JwksLabels, Counter>,
}

impl IdentityMetrics {
    pub fn register(registry: &mut Registry) -> IdentityMetrics {
        let m = IdentityMetrics::default();
        registry.register(
            "brandgate_identity_logins",
            "Consumer logins through the brand's provider, by outcome (started, completed, denied, refused, failed)",
            m.logins.clone(),
        );
        registry.register(
            "brandgate_identity_tokens",
            "Consumer token requests, by flow and outcome (issued, refused, client_refused, failed)",
            m.tokens.clone(),
        );
        registry.register(
            "brandgate_identity_external_jwks_fetches",
            "JWKS fetches from external token issuers, by outcome (ok, failed)",
            m.jwks_fetches.clone(),
        );
        m
    }

    pub fn jwks_fetch(&self, outcome: &'static str) {
        self.jwks_fetches
            .get_or_create(&JwksLabels { outcome })
            .inc();
    }

    pub fn login(&self, outcome: &'static str) {
        self.logins.get_or_create(&LoginLabels { outcome }).inc();
    }

    pub fn token(&self, flow: &'static str, outcome: &'static str) {
        self.tokens
            .get_or_create(&TokenLabels { flow, outcome })
            .inc();
    }

    /// Counts a token request of `flow` by the status it was answered with.
    pub fn answered(&self, flow: &'static str, status: http::StatusCode) {
        let outcome = match status {
            http::StatusCode::OK => "issued",
            http::StatusCode::UNAUTHORIZED | http::StatusCode::TOO_MANY_REQUESTS => {
                "client_refused"
            }
            s if s.is_server_error() => "failed",
            _ => "refused",
        };
        self.token(flow, outcome);
    }
}
