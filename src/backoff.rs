//! Waiting between attempts at something outside brandgate: exponential backoff with "equal
//! jitter", and the other side's `Retry-After`. The one copy every retry loop uses (push
//! providers, the relay's webhooks, the dead-token webhook).

use std::time::{Duration, SystemTime};

use http::HeaderMap;

use crate::clock::unix_seconds;

/// Backoff between attempts: `first * 2^(n-1)` after the `n`-th failure, at most `longest`,
/// then a random point in its upper half, so senders that failed together do not come back in
/// lockstep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub longest: Duration,
}

impl Backoff {
    pub const fn new(first: Duration, longest: Duration) -> Self {
        Backoff { first, longest }
    }

    /// The wait after the `attempt`-th failure (1-based).
    pub fn delay(&self, attempt: u32) -> Duration {
        self.delay_with(attempt, random_unit())
    }

    /// [`Backoff::delay`] with the random part given (`jitter` in `[0, 1)`).
    pub fn delay_with(&self, attempt: u32, jitter: f64) -> Duration {
        let full = self
            .first
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.longest);
        full / 2 + (full / 2).mul_f64(jitter.clamp(0.0, 1.0))
    }
}

/// A random number in `[0, 1)` (0.5 if the system's generator fails).
fn random_unit() -> f64 {
    let mut bytes = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// `Retry-After` as delay-seconds or an HTTP date (RFC 9110 §10.2.3) read against `now`, at
/// most `longest` (the other side's number can be anything; no wait overflows a clock). No
/// wait at all (`0`, a date passed) is `None`: the caller's backoff applies, so a receiver
/// saying "now" is not hammered.
pub fn retry_after(headers: &HeaderMap, now: SystemTime, longest: Duration) -> Option<Duration> {
    let text = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    let wait = match text.parse::<u64>() {
        Ok(seconds) => Duration::from_secs(seconds),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(text).ok()?;
            let at = u64::try_from(at.timestamp()).ok()?;
            Duration::from_secs(at.saturating_sub(unix_seconds(now)))
        }
    };
    Some(wait.min(longest)).filter(|w| !w.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_with_jitter_in_the_upper_half_and_is_capped() {
        let b = Backoff::new(Duration::from_secs(1), Duration::from_secs(300));
        assert_eq!(b.delay_with(1, 0.0), Duration::from_millis(500));
        assert_eq!(b.delay_with(1, 0.5), Duration::from_millis(750));
        assert_eq!(b.delay_with(3, 0.0), Duration::from_secs(2));
        assert_eq!(b.delay_with(30, 0.0), Duration::from_secs(150));
        assert_eq!(b.delay_with(u32::MAX, 1.0), Duration::from_secs(300));
        for n in 1..12 {
            let full = (Duration::from_secs(1) * (1 << (n - 1))).min(b.longest);
            let d = b.delay(n);
            assert!(d >= full / 2 && d <= full, "attempt {n}: {d:?} vs {full:?}");
        }
        // Two draws in a row are (almost surely) different: the jitter is random.
        let draws: std::collections::HashSet<_> = (0..8).map(|_| b.delay(5)).collect();
        assert!(draws.len() > 1, "{draws:?}");
    }

    #[test]
    fn retry_after_reads_seconds_and_dates_within_the_cap() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let longest = Duration::from_secs(300);
        let with = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(http::header::RETRY_AFTER, value.parse().unwrap());
            retry_after(&h, now, longest)
        };
        assert_eq!(with("7"), Some(Duration::from_secs(7)));
        assert_eq!(with(" 7 "), Some(Duration::from_secs(7)));
        // 1_700_000_000 is Tue, 14 Nov 2023 22:13:20 GMT.
        assert_eq!(
            with("Tue, 14 Nov 2023 22:13:50 GMT"),
            Some(Duration::from_secs(30))
        );
        assert_eq!(with("Tue, 14 Nov 2023 22:00:00 GMT"), None, "a date passed");
        assert_eq!(with("0"), None);
        assert_eq!(with("99999999999999999999"), None);
        assert_eq!(with("86400"), Some(longest));
        assert_eq!(with("soon"), None);
        assert_eq!(retry_after(&HeaderMap::new(), now, longest), None);
    }
}
