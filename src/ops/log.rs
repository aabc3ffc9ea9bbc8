//! Logging: one event per line on standard error, which journald collects. Under journald
//! (`$JOURNAL_STREAM` set) the timestamp is left out, journald adds its own, and each line
//! starts with its syslog priority (`<3>` error, `<4>` warning, `<6>` info, `<7>` debug), which
//! journald takes off and keeps: `journalctl -u brandgate -p warning` shows the warnings.
//! `json` format writes one JSON object per line for log shippers.
//!
//! What is logged is decided at each call site: never message text, full device tokens,
//! passwords, keys or bearer tokens (see `push::DeviceToken`'s `Display` and `secret::Secret`).

use serde::Deserialize;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How each line is written (`log.format`): text for people, JSON for log shippers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Why a text is not a log filter.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("{0:?} is not a level (error, warn, info, debug, trace, off)")]
    NotALevel(String),
    #[error("{0}")]
    Directive(String),
}

/// Parses a filter such as `info` or `debug,h2=trace`. The bare level applies to brandgate;
/// libraries log warnings and errors only, unless named: their debug output is noisy and some
/// of it (frames, headers) is not ours to vet for secrets.
pub fn parse_filter(text: &str) -> Result<Targets, FilterError> {
    use tracing_subscriber::filter::LevelFilter;
    // `Targets` would take a bare misspelt level ("debgu") as a module name; refuse it instead.
    for directive in text.split(',').map(str::trim).filter(|d| !d.contains('=')) {
        if directive.parse::<LevelFilter>().is_err() {
            return Err(FilterError::NotALevel(directive.to_string()));
        }
    }
    let asked = text
        .parse::<Targets>()
        .map_err(|e| FilterError::Directive(e.to_string()))?;
    let level = asked.default_level().unwrap_or(LevelFilter::INFO);
    let mut filter = Targets::new()
        .with_default(level.min(LevelFilter::WARN))
        .with_target("brandgate", level);
    for (target, target_level) in asked.iter() {
        filter = filter.with_target(target, target_level);
    }
    Ok(filter)
}

/// Installs the process's log subscriber (`level` as [`parse_filter`] reads it; `info` if it
/// cannot). Later calls do nothing.
pub fn init(level: &str, format: LogFormat) {
    let filter =
        parse_filter(level).unwrap_or_else(|_| Targets::new().with_default(tracing::Level::INFO));
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false);
    let result = match (format, journald) {
        (LogFormat::Json, _) => tracing_subscriber::registry()
            .with(fmt.json().flatten_event(true).with_filter(filter))
            .try_init(),
        (LogFormat::Text, true) => {
            let lines = tracing_subscriber::fmt::format()
                .without_time()
                .with_ansi(false)
                .with_target(false);
            tracing_subscriber::registry()
                .with(fmt.event_format(Priority(lines)).with_filter(filter))
                .try_init()
        }
        (LogFormat::Text, false) => tracing_subscriber::registry()
            .with(fmt.with_filter(filter))
            .try_init(),
    };
    // Already installed (tests, or a second call): keep the first.
    let _ = result;
}

/// Writes an event's syslog priority before the line (sd-daemon's `<N>` prefix).
struct Priority<F>(F);

/// The syslog priority of a level.
fn priority(level: tracing::Level) -> u8 {
    match level {
        tracing::Level::ERROR => 3,
        tracing::Level::WARN => 4,
        tracing::Level::INFO => 6,
        _ => 7,
    }
}

impl<S, N, F> tracing_subscriber::fmt::FormatEvent<S, N> for Priority<F>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
    F: tracing_subscriber::fmt::FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        write!(writer, "<{}>", priority(*event.metadata().level()))?;
        self.0.format_event(ctx, writer, event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;

    #[test]
    fn a_bare_level_is_for_brandgate_and_libraries_stay_at_warn() {
        let f = parse_filter("debug").unwrap();
        assert!(f.would_enable("brandgate::push", &Level::DEBUG));
        assert!(!f.would_enable("h2::codec", &Level::DEBUG));
        assert!(f.would_enable("h2::codec", &Level::WARN));
        let f = parse_filter("info,h2=trace").unwrap();
        assert!(f.would_enable("h2::codec", &Level::TRACE));
        assert!(!f.would_enable("brandgate", &Level::DEBUG));
        assert!(parse_filter("loud").is_err());
    }
}
