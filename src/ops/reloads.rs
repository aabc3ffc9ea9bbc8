//! What became of each reload: `brandgate_config_reload_total{outcome}`, the time of the last
//! configuration applied (start or reload) as `brandgate_config_last_success_timestamp_seconds`,
//! and the last reload's outcome under `/readyz` (a refused reload leaves the running
//! configuration in place, so the node stays ready, but an operator can see it). Also what the
//! running configuration serves with that expires: the listener's certificate
//! (`brandgate_tls_certificate_expiry_timestamp_seconds`). Under systemd, each outcome is also
//! written for `brandgate reload` to wait on ([`super::reload_status`]).

use std::sync::Mutex;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::health::{Check, ReadinessCheck};
use super::reload_status::{Outcome as StatusOutcome, ReloadStatus, StatusFile};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    outcome: &'static str,
}

pub struct Reloads {
    total: Family<Outcome, Counter>,
    last_success: Gauge<f64, AtomicU64>,
    /// The last reload: applied or refused, and how many problems.
    last: Mutex<Option<(bool, usize)>>,
    certificate_expiry: Gauge<f64, AtomicU64>,
    /// Where `brandgate reload` reads outcomes, and the number of the last one.
    status: Option<(StatusFile, Mutex<u64>)>,
}

fn now_seconds() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Reloads {
    /// Registers the metrics; the configuration loaded at start counts as the last success.
    /// With `status_dir` (the runtime directory), outcomes are also written there, starting
    /// with this start.
    pub fn register(registry: &mut Registry, status_dir: Option<&std::path::Path>) -> Reloads {
        let status = status_dir.map(|dir| {
            let file = StatusFile::in_dir(dir);
            file.write(&ReloadStatus {
                generation: 0,
                began: super::reload_status::monotonic_millis(),
                outcome: StatusOutcome::Started,
                problems: Vec::new(),
            });
            (file, Mutex::new(0))
        });
        let reloads = Reloads {
            total: Family::default(),
            last_success: Gauge::default(),
            last: Mutex::new(None),
            certificate_expiry: Gauge::default(),
            status,
        };
        for outcome in ["applied", "refused"] {
            let _ = reloads.total.get_or_create(&Outcome { outcome });
        }
        reloads.last_success.set(now_seconds());
        registry.register(
            "brandgate_config_reload",
            "Reloads (SIGHUP) by outcome: applied, or refused with the running configuration kept",
            reloads.total.clone(),
        );
        registry.register(
            "brandgate_config_last_success_timestamp_seconds",
            "When the running configuration was loaded (start or reload), in seconds since the epoch",
            reloads.last_success.clone(),
        );
        registry.register(
            "brandgate_tls_certificate_expiry_timestamp_seconds",
            "When the public listener's TLS certificate expires, in seconds since the epoch",
            reloads.certificate_expiry.clone(),
        );
        reloads
    }

    /// The listener's certificate now in use expires at `at` (seconds since the epoch).
    pub fn serving_certificate(&self, at: Option<i64>) {
        if let Some(at) = at {
            self.certificate_expiry.set(at as f64);
        }
    }

    /// Records a reload that began at `began` ([`super::reload_status::monotonic_millis`]):
    /// applied (no problems), or refused with these problems.
    pub fn record(&self, began: u64, problems: &[String]) {
        let applied = problems.is_empty();
        if let Some((file, generation)) = &self.status {
            let mut generation = generation.lock().unwrap_or_else(|e| e.into_inner());
            *generation += 1;
            file.write(&ReloadStatus {
                generation: *generation,
                began,
                outcome: if applied {
                    StatusOutcome::Applied
                } else {
                    StatusOutcome::Refused
                },
                problems: problems.to_vec(),
            });
        }
        let problems = problems.len();
        let outcome = if applied { "applied" } else { "refused" };
        self.total.get_or_create(&Outcome { outcome }).inc();
        if applied {
            self.last_success.set(now_seconds());
        }
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some((applied, problems));
    }
}

impl ReadinessCheck for Reloads {
    fn name(&self) -> &'static str {
        "config"
    }

    fn check(&self) -> Check {
        let last = *self.last.lock().unwrap_or_else(|e| e.into_inner());
        let detail = match last {
            None => serde_json::json!({ "last_reload": "none" }),
            Some((true, _)) => serde_json::json!({ "last_reload": "applied" }),
            Some((false, problems)) => {
                serde_json::json!({ "last_reload": "refused", "problems": problems })
            }
        };
        Check {
            ready: true,
            detail,
        }
    }
}
