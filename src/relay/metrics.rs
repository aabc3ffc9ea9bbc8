//! The relay's own metrics (`brandgate_relay_*`): sockets open by role, agents' sign-ins and
//! other audited account events by outcome, and away pushes by result. Labels come from fixed
//! sets in the code, never from a request.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabel {
    pub role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone, Default)]
pub struct RelayMetrics {
    sockets_open: Family<RoleLabel, Gauge>,
    /// Every audited agent account event (sign-ins by outcome, lock-outs, additions, ...).
    pub agent_audit: Family<OutcomeLabel, Counter>,
    pub away_pushes: Family<ResultLabel, Counter>,
}

/// Counts a socket as open until dropped.
pub struct OpenSocket(Gauge);

impl Drop for OpenSocket {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl RelayMetrics {
    pub fn register(registry: &mut Registry) -> RelayMetrics {
        let m = RelayMetrics::default();
        let r = registry.sub_registry_with_prefix("brandgate_relay");
        r.register(
            "sockets_open",
            "WebSockets open on this node, by role (consumer, agent)",
            m.sockets_open.clone(),
        );
        r.register(
            "agent_audit",
            "Audited agent account events by outcome: sign-ins (success and every refusal), lock-outs, changes",
            m.agent_audit.clone(),
        );
        r.register(
            "away_pushes",
            "Pushes to consumers who did not acknowledge an agent's message, by result",
            m.away_pushes.clone(),
        );
        // The common series show from the start (a 0 a dashboard or an alert can read).
        for role in ["consumer", "agent"] {
            let _ = m.sockets_open.get_or_create(&RoleLabel { role });
        }
        for outcome in ["success", "wrong_password", "locked_out"] {
            let outcome = outcome.to_string();
            let _ = m.agent_audit.get_or_create(&OutcomeLabel { outcome });
        }
        for result in ["delivered", "transient", "not_for_this_device"] {
            let _ = m.away_pushes.get_or_create(&ResultLabel { result });
        }
        m
    }

    /// A socket of `role` opened; it counts until the guard is dropped.
    pub fn socket_opened(&self, role: &'static str) -> OpenSocket {
        let gauge = self.sockets_open.get_or_create(&RoleLabel { role }).clone();
        gauge.inc();
        OpenSocket(gauge)
    }
}
