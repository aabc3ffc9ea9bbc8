//! The relay's own metrics (`brandgate_relay_*`): sockets open by role, messages committed by
//! who sent them, events delivered to subscribed sockets, how long agents' rings rang before
//! they were accepted, agents' sign-ins and other audited account events by outcome (lock-outs
//! among them), and away pushes by result. Labels come from fixed sets in the code, never from
//! a request.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
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

/// Seconds from a ring shown to an agent's socket to the agent accepting it.
const RING_TO_ACCEPT_BUCKETS: [f64; 11] = [
    0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

#[derive(Clone)]
pub struct RelayMetrics {
    sockets_open: Family<RoleLabel, Gauge>,
    messages_committed: Family<RoleLabel, Counter>,
    deliveries: Counter,
    ring_to_accept: Histogram,
    /// Every audited agent account event (sign-ins by outcome, lock-outs, additions, ...).
    pub agent_audit: Family<OutcomeLabel, Counter>,
    pub away_pushes: Family<ResultLabel, Counter>,
}

impl Default for RelayMetrics {
    /// Metrics nobody reads (a relay part made on its own, as in tests); `register` makes the
    /// ones that are published.
    fn default() -> RelayMetrics {
        RelayMetrics {
            sockets_open: Family::default(),
            messages_committed: Family::default(),
            deliveries: Counter::default(),
            ring_to_accept: Histogram::new(RING_TO_ACCEPT_BUCKETS),
            agent_audit: Family::default(),
            away_pushes: Family::default(),
        }
    }
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
            "messages_committed",
            "Messages stored in conversations on this node, by who sent them (consumer, agent)",
            m.messages_committed.clone(),
        );
        r.register(
            "deliveries",
            "Conversation events sent to subscribed sockets on this node",
            m.deliveries.clone(),
        );
        r.register_with_unit(
            "ring_to_accept",
            "Time from a waiting conversation's ring shown to an agent to that agent accepting it",
            prometheus_client::registry::Unit::Seconds,
            m.ring_to_accept.clone(),
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
            let _ = m.messages_committed.get_or_create(&RoleLabel { role });
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

    /// A message from `role` (`consumer`, `agent`) was committed.
    pub fn message_committed(&self, role: &'static str) {
        self.messages_committed
            .get_or_create(&RoleLabel { role })
            .inc();
    }

    /// `events` conversation events were handed to a subscribed socket.
    pub fn delivered(&self, events: usize) {
        self.deliveries.inc_by(events as u64);
    }

    /// An agent accepted a ring shown `rang` ago.
    pub fn ring_accepted(&self, rang: std::time::Duration) {
        self.ring_to_accept.observe(rang.as_secs_f64());
    }

    /// A socket of `role` opened; it counts until the guard is dropped.
    pub fn socket_opened(&self, role: &'static str) -> OpenSocket {
        let gauge = self.sockets_open.get_or_create(&RoleLabel { role }).clone();
        gauge.inc();
        OpenSocket(gauge)
    }
}
