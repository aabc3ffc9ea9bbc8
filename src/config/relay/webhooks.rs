//! The `[relay.webhooks]` section: where the relay tells the brand's backend that a
//! conversation opened, a message was stored or a conversation closed. Shape checks only; the
//! relay's `webhooks` module reads the secret and trust anchors when it builds itself.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Problems;
use crate::duration::Span;

/// The event types a brand can receive, as they appear in a webhook's `type`.
pub const EVENT_TYPES: [&str; 3] = [
    "conversation.created",
    "message.created",
    "conversation.closed",
];

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    /// Where every webhook is POSTed: an `https://` URL.
    pub url: String,
    /// The signing secret (Standard Webhooks: `whsec_<base64>`, or any text used as it is;
    /// re-read on reload).
    pub secret_file: PathBuf,
    /// Also send the earlier `X-Brandgate-*` headers (for one release, while receivers move
    /// to the Standard Webhooks headers).
    #[serde(default)]
    pub legacy_signature: bool,
    /// Only these event types are sent; all of them when absent.
    pub events: Option<Vec<String>>,
    /// Put the message text in `message.created`. Off by default: the text stays on the
    /// premises unless the brand asks for it.
    #[serde(default)]
    pub include_text: bool,
    /// Extra CA certificates (PEM) trusted for `url`, besides the system's.
    #[serde(default)]
    pub extra_trust_anchors: Vec<PathBuf>,
    /// One attempt, connection to answer.
    #[serde(default = "defaults::timeout")]
    pub timeout: Span,
    /// Attempts per webhook, the first included; then it is given up (logged and counted).
    #[serde(default = "defaults::max_attempts")]
    pub max_attempts: u32,
    /// No longer used: webhooks wait in the store's outbox, none is dropped. Still read, so an
    /// older config starts; `check-config` and the start-up log say so.
    pub queue_capacity: Option<usize>,
    /// Outbox items being sent at once by this node (each conversation's in order, one at a
    /// time).
    #[serde(default = "defaults::max_in_flight")]
    pub max_in_flight: usize,
}

/// Outbox attempts a node makes at once when `[relay.webhooks]` does not say.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 8;

impl WebhooksConfig {
    pub(super) fn check_shape(&self, p: &mut Problems) {
        match crate::http_client::check_url(&self.url) {
            Err(e) => p.push("relay.webhooks.url", e),
            Ok(uri) if uri.scheme_str() != Some("https") => p.push(
                "relay.webhooks.url",
                format!("{:?} must be an https:// URL", self.url),
            ),
            Ok(_) => {}
        }
        if let Some(events) = &self.events {
            if events.is_empty() {
                p.push(
                    "relay.webhooks.events",
                    "is empty: leave it out for every event, or remove [relay.webhooks]",
                );
            }
            for e in events {
                if !EVENT_TYPES.contains(&e.as_str()) {
                    p.push(
                        "relay.webhooks.events",
                        format!("{e:?} is not one of {}", EVENT_TYPES.join(", ")),
                    );
                }
            }
        }
        if self.timeout.0.is_zero() || self.timeout.0 > Duration::from_secs(60) {
            p.push("relay.webhooks.timeout", "must be above 0 and at most 60s");
        }
        if self.max_attempts == 0 || self.max_attempts > 20 {
            p.push("relay.webhooks.max_attempts", "must be between 1 and 20");
        }
        if self.max_in_flight == 0 || self.max_in_flight > 256 {
            p.push("relay.webhooks.max_in_flight", "must be between 1 and 256");
        }
    }

    /// Whether webhooks of `event_type` are sent.
    pub fn wants(&self, event_type: &str) -> bool {
        self.events
            .as_ref()
            .is_none_or(|events| events.iter().any(|e| e == event_type))
    }
}

mod defaults {
    use super::*;

    pub fn timeout() -> Span {
        Span(Duration::from_secs(10))
    }
    pub fn max_attempts() -> u32 {
        10
    }
    pub fn max_in_flight() -> usize {
        super::DEFAULT_MAX_IN_FLIGHT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> WebhooksConfig {
        let base = "url = \"https://hooks.brand.example/relay\"\nsecret_file = \"/s\"\n";
        use figment::providers::{Format, Toml};
        figment::Figment::from(Toml::string(&format!("{base}{toml}")))
            .extract()
            .unwrap()
    }

    fn problems(c: &WebhooksConfig) -> Vec<String> {
        let mut p = Problems::default();
        c.check_shape(&mut p);
        p.0.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn defaults_are_valid_and_send_everything_without_text() {
        let c = config("");
        assert!(problems(&c).is_empty(), "{:?}", problems(&c));
        assert!(!c.include_text);
        assert!(EVENT_TYPES.iter().all(|t| c.wants(t)));
    }

    #[test]
    fn the_url_must_be_https() {
        let mut c = config("");
        c.url = "http://127.0.0.1:9000/hook".into();
        assert_eq!(
            problems(&c),
            ["relay.webhooks.url: \"http://127.0.0.1:9000/hook\" must be an https:// URL"]
        );
        c.url = "hooks.brand.example".into();
        assert!(problems(&c)[0].starts_with("relay.webhooks.url: "));
    }

    #[test]
    fn unknown_events_and_bad_limits_are_each_reported() {
        let c = config(
            "events = [\"message.created\", \"message.deleted\"]\ntimeout = \"0s\"\n\
             max_attempts = 0\nmax_in_flight = 0\n",
        );
        let p = problems(&c);
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(p[0].contains("\"message.deleted\" is not one of"), "{p:?}");
        assert!(c.wants("message.created"));
        assert!(!c.wants("conversation.created"));
    }

    #[test]
    fn an_empty_event_list_is_refused() {
        assert_eq!(problems(&config("events = []\n")).len(), 1);
    }
}
