//! The identity bridge's HTTP routes:
//! - `GET /.well-known/openid-configuration`: discovery (issuer, JWKS location, algorithms).
//! - `GET /.well-known/jwks.json`: every published key (next, active, retired), cacheable for
//!   `keys.jwks_max_age`, always shorter than the rotation lead time.
//! - `GET /identity/v1/public-key.pem`: the active key as one line of base64 SubjectPublicKeyInfo,
//!   the form the platform's "JWT Public Key" field takes.
//! - `POST /identity/v1/signup` (and the platform IdP's shape `/api/account/{account}/signup`):
//!   an anonymous identity, `{"jwt": ...}` with a random UUID `sub`, rate limited per source.
//! - `GET /login` and the callback (`login`), `POST /oauth/token` (`token`), and
//!   `POST /identity/v1/token` (`issue`), mounted here.
//!
//! Failures answer JSON `{"error": ...}` and never show internals (they are logged).

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use http::{HeaderValue, header};
use serde_json::{Value, json};

use super::refusal::Refusal;
use super::{Claims, IdentityService};
use crate::http_answer::no_store;
use crate::tls::Peer;

/// Largest body of a token request (form or JSON).
const MAX_TOKEN_REQUEST: usize = 16 * 1024;

pub fn router(service: IdentityService) -> Router {
    let limit = axum::extract::DefaultBodyLimit::max(MAX_TOKEN_REQUEST);
    let mut router = Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/.well-known/jwks.json", get(jwks))
        .route("/identity/v1/public-key.pem", get(public_key))
        .route("/identity/v1/signup", post(signup))
        .route("/api/account/{account}/signup", post(signup))
        .route("/identity/v1/token", post(super::issue::issue).layer(limit))
        .route("/oauth/token", post(super::token::token).layer(limit));
    // Mounted even without a login provider (they answer 404 then), so a reload can add one.
    router = router.route("/login", get(super::login::login));
    let path = callback_path(&service);
    router = router.route(&path, get(super::login::callback));
    if path != "/callback" {
        router = router.route("/callback", get(super::login::callback));
    }
    router.with_state(service)
}

/// The path the provider sends the browser back to: that of the configured redirect URI.
fn callback_path(service: &IdentityService) -> String {
    service
        .inner
        .config
        .callback_uri()
        .and_then(|u| u.parse::<http::Uri>().ok())
        .map(|u| u.path().to_string())
        .filter(|p| p.starts_with('/') && p.len() > 1)
        .unwrap_or_else(|| "/callback".into())
}

fn cache_for(mut response: Response, max_age: Duration) -> Response {
    if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={}", max_age.as_secs())) {
        response.headers_mut().insert(header::CACHE_CONTROL, v);
    }
    response
}

async fn discovery(State(s): State<IdentityService>) -> Response {
    let issuer = s.inner.mint.issuer();
    let config = &s.inner.config;
    let mut body = json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
        "id_token_signing_alg_values_supported": [config.algorithm],
        "subject_types_supported": ["public"],
        "response_types_supported": ["id_token"],
        "claims_supported": ["iss", "sub", "aud", "iat", "exp", "jti", "nonce", "given_name",
            "family_name", "email", "phone_number", "preferred_username", "gender", "lp_sdes"],
    });
    if s.live().upstream.is_some() {
        body["authorization_endpoint"] = Value::from(format!("{issuer}/login"));
        body["token_endpoint"] = Value::from(format!("{issuer}/oauth/token"));
        body["response_types_supported"] = json!(["code", "id_token"]);
        body["response_modes_supported"] = json!(["query", "fragment"]);
        body["grant_types_supported"] = json!(["authorization_code", "implicit"]);
        body["token_endpoint_auth_methods_supported"] =
            json!(["client_secret_basic", "client_secret_post"]);
        body["code_challenge_methods_supported"] = json!(["S256"]);
    }
    cache_for(axum::Json(body).into_response(), config.keys.jwks_max_age.0)
}

async fn jwks(State(s): State<IdentityService>) -> Response {
    match s.inner.ring.jwks().await {
        Ok(set) => cache_for(
            axum::Json(set).into_response(),
            s.inner.config.keys.jwks_max_age.0,
        ),
        Err(e) => s.unavailable("cannot read the key ring", e),
    }
}

async fn public_key(State(s): State<IdentityService>) -> Response {
    let row = match s.inner.ring.active().await {
        Ok(row) => row,
        Err(e) => return s.unavailable("cannot read the key ring", e),
    };
    let der = serde_json::from_str(&row.public_jwk)
        .ok()
        .and_then(|jwk| super::keys::spki_der(&jwk));
    let Some(der) = der else {
        return s.unavailable("the active key's public part is unreadable", &row.kid);
    };
    let mut response = base64::engine::general_purpose::STANDARD
        .encode(der)
        .into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    // Changes only when a new key activates; short enough to follow a rotation quickly.
    cache_for(response, Duration::from_secs(60))
}

async fn signup(
    State(s): State<IdentityService>,
    peer: Option<axum::Extension<Peer>>,
) -> Result<Response, Refusal> {
    let settings = &s.inner.config.anonymous;
    if !settings.enabled {
        return Err(Refusal::AnonymousOff);
    }
    if let Some(axum::Extension(peer)) = &peer {
        let ip = peer.client;
        if let Some(retry_after) = s.inner.signups.blocked(ip, "signup", settings.per_minute) {
            s.inner.metrics.token("anonymous", "refused");
            return Err(Refusal::TooManySignups { retry_after });
        }
        s.inner.signups.count(ip, "signup");
    }
    let claims = Claims {
        subject: uuid::Uuid::new_v4().to_string(),
        audience: s.inner.config.audience.clone(),
        lifetime: settings.token_lifetime.0,
        // Tells this consumer's token from a login's (the agents' workspace shows it).
        profile: serde_json::Map::from_iter([(
            super::verdict::ANONYMOUS.to_string(),
            serde_json::Value::Bool(true),
        )]),
    };
    match s.mint(&claims).await {
        Ok(minted) => {
            s.inner.metrics.token("anonymous", "issued");
            Ok(no_store(
                axum::Json(json!({ "jwt": minted.jwt })).into_response(),
            ))
        }
        Err(e) => Err(Refusal::unavailable("cannot mint an anonymous identity", e)),
    }
}
