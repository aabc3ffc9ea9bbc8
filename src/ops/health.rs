//! Liveness and readiness. `/healthz` only says the process answers. `/readyz` says whether this
//! node should get traffic: configuration loaded, listener bound, not draining, and every role's
//! own check. A role reports trouble that needs an operator but does not stop the node (a
//! provider refusing one app's credential) as `degraded` detail, still ready, so one broken app
//! does not take every node of every app out of the load balancer.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use serde::Serialize;
use serde_json::Value;

/// A role's answer to "are you ready?".
pub struct Check {
    pub ready: bool,
    pub detail: Value,
}

/// Something that can say whether it is ready.
pub trait ReadinessCheck: Send + Sync {
    fn name(&self) -> &'static str;
    fn check(&self) -> Check;
}

#[derive(Default)]
pub struct Health {
    listening: AtomicBool,
    draining: AtomicBool,
    checks: RwLock<Vec<Arc<dyn ReadinessCheck>>>,
}

#[derive(Serialize)]
pub struct Report {
    pub ready: bool,
    pub listening: bool,
    pub draining: bool,
    pub checks: BTreeMap<&'static str, Value>,
}

impl Health {
    pub fn set_listening(&self) {
        self.listening.store(true, Ordering::SeqCst);
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub fn add_check(&self, check: Arc<dyn ReadinessCheck>) {
        self.checks
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(check);
    }

    pub fn report(&self) -> Report {
        let listening = self.listening.load(Ordering::SeqCst);
        let draining = self.draining.load(Ordering::SeqCst);
        let mut ready = listening && !draining;
        let mut checks = BTreeMap::new();
        for c in self.checks.read().unwrap_or_else(|e| e.into_inner()).iter() {
            let result = c.check();
            ready &= result.ready;
            checks.insert(c.name(), result.detail);
        }
        Report {
            ready,
            listening,
            draining,
            checks,
        }
    }
}
