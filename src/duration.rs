//! Durations as operators write them in the config: `250ms`, `10s`, `20m`, `1h`, `1d`, or a
//! combination such as `1h30m`.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Why a text is not a duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("{0:?} is not a duration like 500ms, 10s, 5m, 1h or 1d")]
    NotADuration(String),
    #[error("{0:?}: number too large")]
    TooLarge(String),
    #[error("{0:?} needs a unit (ms, s, m, h or d)")]
    NoUnit(String),
    #[error("{text:?}: unknown unit {unit:?} (ms, s, m, h or d)")]
    UnknownUnit { text: String, unit: String },
}

/// Parses a human duration. A bare number is refused: a unit must always be written, so `10`
/// can never silently mean milliseconds in one place and seconds in another.
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(DurationError::NotADuration(text.to_string()));
        }
        let value: u64 = rest[..digits]
            .parse()
            .map_err(|_| DurationError::TooLarge(text.to_string()))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(value),
            "s" => Duration::from_secs(value),
            "m" => Duration::from_secs(value.saturating_mul(60)),
            "h" => Duration::from_secs(value.saturating_mul(3600)),
            "d" => Duration::from_secs(value.saturating_mul(86_400)),
            "" => return Err(DurationError::NoUnit(text.to_string())),
            other => {
                return Err(DurationError::UnknownUnit {
                    text: text.to_string(),
                    unit: other.to_string(),
                });
            }
        };
        total = total.saturating_add(part);
    }
    Ok(total)
}

/// A duration in the form [`parse`] reads, largest units first (`1h30m`, `1s500ms`, `0s`).
/// Anything below a millisecond is left out (the form has no smaller unit).
pub fn format(d: Duration) -> String {
    let mut millis = d.as_millis();
    if millis == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
        ("ms", 1),
    ] {
        if millis >= size {
            out.push_str(&format!("{}{unit}", millis / size));
            millis %= size;
        }
    }
    out
}

/// Deserializes a [`Duration`] from its human form; for `#[serde(deserialize_with)]`.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a duration such as \"500ms\", \"10s\", \"5m\", \"1h\" or \"1d\"")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
            parse(v).map_err(E::custom)
        }
    }
    d.deserialize_str(Visitor)
}

/// A config field holding a duration.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(pub Duration);

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize(d).map(Span)
    }
}

impl serde::Serialize for Span {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(self.0))
    }
}

impl fmt::Debug for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl From<Span> for Duration {
    fn from(s: Span) -> Duration {
        s.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_what_it_parses() {
        for text in [
            "0s",
            "500ms",
            "10s",
            "5m",
            "1h",
            "1d",
            "1h30m",
            "1s500ms",
            "2d3h4m5s6ms",
        ] {
            let d = parse(text).unwrap();
            assert_eq!(format(d), text);
        }
        assert_eq!(format(Duration::from_secs(90)), "1m30s");
        assert_eq!(format(Duration::from_micros(1500)), "1ms");
    }

    #[test]
    fn units_and_combinations() {
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("20m"), Ok(Duration::from_secs(1200)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("2d"), Ok(Duration::from_secs(172_800)));
    }

    #[test]
    fn refuses_missing_or_unknown_units() {
        assert_eq!(parse("10"), Err(DurationError::NoUnit("10".into())));
        assert_eq!(
            parse("10 sec"),
            Err(DurationError::UnknownUnit {
                text: "10 sec".into(),
                unit: " sec".into()
            })
        );
        assert_eq!(parse("s"), Err(DurationError::NotADuration("s".into())));
        assert_eq!(parse(""), Err(DurationError::Empty));
        assert_eq!(
            parse("99999999999999999999s"),
            Err(DurationError::TooLarge("99999999999999999999s".into()))
        );
        assert_eq!(
            parse("10").unwrap_err().to_string(),
            "\"10\" needs a unit (ms, s, m, h or d)"
        );
    }
}
