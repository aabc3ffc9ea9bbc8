//! Brute-force protection for caller authentication: a source that fails too often in one
//! minute, for one app, gets 429 for the rest of that minute, before any credential is even
//! compared. Counting per app keeps one misconfigured app from locking the platform out of the
//! others; counting IPv6 sources per /64 keeps a single host from rotating addresses around it.
//! The table is bounded: when it is full of live windows, new sources are not tracked (the
//! limiter fails open rather than locking anyone out).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);
/// Sources tracked at most.
const MAX_TRACKED: usize = 10_000;

/// An IPv4 address, or the /64 an IPv6 address belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Source {
    V4(u32),
    V6Prefix(u64),
}

impl From<IpAddr> for Source {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Source::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(u32::from(v4)),
                None => Source::V6Prefix((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

#[derive(Default)]
pub struct AuthFailureLimiter {
    table: Mutex<HashMap<(Source, String), (Instant, u32)>>,
}

impl AuthFailureLimiter {
    /// How long `ip` must wait before trying `app` again, if it already failed `limit` times
    /// this minute.
    pub fn blocked(&self, ip: IpAddr, app: &str, limit: u32) -> Option<Duration> {
        let table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let (start, failures) = table.get(&(Source::from(ip), app.to_string()))?;
        let elapsed = start.elapsed();
        (elapsed < WINDOW && *failures >= limit).then(|| WINDOW - elapsed)
    }

    pub fn failed(&self, ip: IpAddr, app: &str) {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let key = (Source::from(ip), app.to_string());
        if !table.contains_key(&key) && table.len() >= MAX_TRACKED {
            table.retain(|_, (start, _)| start.elapsed() < WINDOW);
            if table.len() >= MAX_TRACKED {
                return;
            }
        }
        let entry = table.entry(key).or_insert((Instant::now(), 0));
        if entry.0.elapsed() >= WINDOW {
            *entry = (Instant::now(), 0);
        }
        entry.1 = entry.1.saturating_add(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_the_limit_for_that_source_and_app_only() {
        let l = AuthFailureLimiter::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert!(l.blocked(a, "app", 3).is_none());
            l.failed(a, "app");
        }
        let wait = l.blocked(a, "app", 3).unwrap();
        assert!(wait <= WINDOW && wait > Duration::from_secs(50));
        assert!(l.blocked(b, "app", 3).is_none());
        assert!(l.blocked(a, "other-app", 3).is_none());
    }

    #[test]
    fn ipv6_sources_count_per_64() {
        let l = AuthFailureLimiter::default();
        for i in 0..3 {
            let ip: IpAddr = format!("2001:db8:1:2::{i:x}").parse().unwrap();
            l.failed(ip, "app");
        }
        let neighbour: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        assert!(l.blocked(neighbour, "app", 3).is_some());
        let elsewhere: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(l.blocked(elsewhere, "app", 3).is_none());
    }

    #[test]
    fn a_full_table_fails_open() {
        let l = AuthFailureLimiter::default();
        for i in 0..MAX_TRACKED as u32 {
            l.failed(IpAddr::from(std::net::Ipv4Addr::from(i)), "app");
        }
        let newcomer = IpAddr::from(std::net::Ipv4Addr::new(203, 0, 113, 9));
        for _ in 0..10 {
            l.failed(newcomer, "app");
        }
        assert!(l.blocked(newcomer, "app", 3).is_none());
        assert_eq!(l.table.lock().unwrap().len(), MAX_TRACKED);
    }
}
