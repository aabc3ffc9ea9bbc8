//! Injected wall-clock time, so token lifetimes, duplicate windows and retries can be tested by
//! moving a fake clock instead of sleeping.

use std::sync::Arc;
use std::time::SystemTime;

/// A source of the current time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> SystemTime;
}

/// The real clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// The clock the daemon runs on.
pub fn system() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// Seconds since the Unix epoch; a clock before 1970 reads as 0.
pub fn unix_seconds(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The time `secs` seconds after the Unix epoch, or `None` when no `SystemTime` can hold it
/// (a token's `exp` of 2^63 seconds and more: adding it would panic).
pub fn from_unix_seconds(secs: u64) -> Option<SystemTime> {
    SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::from_secs(secs))
}

/// A moment as milliseconds since the Unix epoch: how the relay and the store keep times (JWT
/// times are seconds, as RFC 7519 says, and stay plain numbers in the claims).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, serde::Serialize)]
#[serde(transparent)]
pub struct UnixMillis(pub i64);

impl UnixMillis {
    /// `t` in milliseconds; before 1970 reads as 0, beyond i64 as its maximum.
    pub fn of(t: SystemTime) -> UnixMillis {
        UnixMillis(
            t.duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                .unwrap_or(0),
        )
    }

    /// Now, by `clock`.
    pub fn now(clock: &dyn Clock) -> UnixMillis {
        UnixMillis::of(clock.now())
    }

    /// `by` later (saturating).
    pub fn after(self, by: std::time::Duration) -> UnixMillis {
        UnixMillis(
            self.0
                .saturating_add(i64::try_from(by.as_millis()).unwrap_or(i64::MAX)),
        )
    }

    /// The same moment as a `SystemTime` (a negative value reads as 1970).
    pub fn to_system_time(self) -> SystemTime {
        SystemTime::UNIX_EPOCH
            + std::time::Duration::from_millis(u64::try_from(self.0).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn millis_round_trip_and_saturate() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        assert_eq!(UnixMillis::of(t), UnixMillis(1_700_000_000_123));
        assert_eq!(UnixMillis::of(t).to_system_time(), t);
        assert_eq!(
            UnixMillis(i64::MAX - 1).after(Duration::from_secs(1)),
            UnixMillis(i64::MAX)
        );
        assert_eq!(UnixMillis(-5).to_system_time(), SystemTime::UNIX_EPOCH);
        let before_1970 = SystemTime::UNIX_EPOCH - Duration::from_secs(1);
        assert_eq!(UnixMillis::of(before_1970), UnixMillis(0));
    }
}

#[cfg(test)]
pub mod fake {
    //! A clock that only moves when a test says so.
    use super::Clock;
    use std::sync::Mutex;
    use std::time::{Duration, SystemTime};

    pub struct FakeClock(Mutex<SystemTime>);

    impl Default for FakeClock {
        fn default() -> Self {
            Self::new()
        }
    }

    impl FakeClock {
        pub fn new() -> Self {
            FakeClock(Mutex::new(
                SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            ))
        }

        pub fn advance(&self, by: Duration) {
            let mut now = self.0.lock().unwrap();
            *now += by;
        }
    }

    impl Clock for FakeClock {
        fn now(&self) -> SystemTime {
            *self.0.lock().unwrap()
        }
    }
}
