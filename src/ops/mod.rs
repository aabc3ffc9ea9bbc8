//! The operator's side of the daemon: the ops listener's routes (`/metrics` in the Prometheus
//! text format, `/healthz`, `/readyz`), systemd notifications and the watchdog, and logging.
//!
//! The ops listener is plain HTTP and binds to loopback by default; it serves nothing secret.

pub mod build_info;
pub mod health;
pub mod log;
pub mod process_metrics;
pub mod reload_status;
pub mod reloads;
pub mod store_health;
pub mod systemd;

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use http::{HeaderValue, StatusCode, header};
use prometheus_client::registry::Registry;

pub use health::Health;

/// What the ops routes read.
#[derive(Clone)]
pub struct OpsState {
    pub registry: Arc<Registry>,
    pub health: Arc<Health>,
}

/// The ops listener's routes.
pub fn router(state: OpsState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(state)
}

async fn metrics(State(state): State<OpsState>) -> impl IntoResponse {
    let mut text = String::new();
    if prometheus_client::encoding::text::encode(&mut text, &state.registry).is_err() {
        return (StatusCode::INTERNAL_SERVER_ERROR, "metrics encoding failed").into_response();
    }
    let mut response = text.into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

/// The process is alive and its runtime answers.
async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready to take traffic: configuration loaded, listening, providers usable, not draining.
async fn readyz(State(state): State<OpsState>) -> impl IntoResponse {
    let report = state.health.report();
    let status = if report.ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(report))
}
