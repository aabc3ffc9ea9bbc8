//! Logging: one event per line on standard error, which journald collects. Under journald
//! (`$JOURNAL_STREAM` set) the timestamp is left out, journald adds its own. `json` format writes
//! one JSON object per line for log shippers.
//!
//! What is logged is decided at each call site: never message text, full device tokens,
//! passwords, keys or bearer tokens (see `push::DeviceToken`'s `Display` and `secret::Secret`).

use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogConfig, LogFormat};

/// Parses a filter such as `info` or `warn,brandgate=debug`.
pub fn parse_filter(text: &str) -> Result<Targets, String> {
    text.parse::<Targets>().map_err(|e| e.to_string())
}

/// Installs the process's log subscriber. Later calls do nothing.
pub fn init(cfg: &LogConfig) {
    let filter = parse_filter(&cfg.level)
        .unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO));
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false);
    let result = match (cfg.format, journald) {
        (LogFormat::Json, _) => tracing_subscriber::registry()
            .with(fmt.json().flatten_event(true).with_filter(filter))
            .try_init(),
        (LogFormat::Text, true) => tracing_subscriber::registry()
            .with(fmt.without_time().with_filter(filter))
            .try_init(),
        (LogFormat::Text, false) => tracing_subscriber::registry()
            .with(fmt.with_filter(filter))
            .try_init(),
    };
    // Already installed (tests, or a second call): keep the first.
    let _ = result;
}
