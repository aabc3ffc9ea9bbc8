//! Whether the store answers: a `SELECT 1` every few seconds in the background, so `/readyz`
//! (which must answer at once) reads the last answer, and `brandgate_store_up` shows it. A
//! node whose database is gone is taken out of the load balancer instead of failing every
//! request that needs it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use super::health::{Check, ReadinessCheck};
use crate::store::Store;

/// How often the store is asked, and how long an answer may take.
const EVERY: Duration = Duration::from_secs(2);
const TIMEOUT: Duration = Duration::from_secs(2);

pub struct StoreHealth {
    up: AtomicBool,
    gauge: Gauge,
    backend: &'static str,
}

impl StoreHealth {
    /// Registers `brandgate_store_up` and asks `store` until `stop`.
    pub fn start(store: Store, registry: &mut Registry, stop: CancellationToken) -> Arc<Self> {
        let health = Arc::new(StoreHealth {
            up: AtomicBool::new(true),
            gauge: Gauge::default(),
            backend: store.backend(),
        });
        health.gauge.set(1);
        registry.register(
            "brandgate_store_up",
            "Whether the store answered its last check (1) or not (0)",
            health.gauge.clone(),
        );
        let watched = health.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let answer = tokio::time::timeout(TIMEOUT, store.ping()).await;
                let up = matches!(answer, Ok(Ok(())));
                let was = watched.up.swap(up, Ordering::SeqCst);
                watched.gauge.set(i64::from(up));
                match (was, up, answer) {
                    (true, false, Ok(Err(e))) => {
                        tracing::error!(error = %e, "the store does not answer: not ready");
                    }
                    (true, false, _) => {
                        tracing::error!("the store does not answer in time: not ready");
                    }
                    (false, true, _) => tracing::info!("the store answers again: ready"),
                    _ => {}
                }
            }
        });
        health
    }
}

impl ReadinessCheck for StoreHealth {
    fn name(&self) -> &'static str {
        "store"
    }

    fn check(&self) -> Check {
        let up = self.up.load(Ordering::SeqCst);
        Check {
            ready: up,
            detail: serde_json::json!({ "backend": self.backend, "answers": up }),
        }
    }
}
