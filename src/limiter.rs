//! Per-source limits. [`SourceLimiter`]: over one-minute windows, how many times a source did something (failed
//! an authentication for one app, signed up anonymously) this minute, and whether it is over
//! its limit. Used for brute-force protection of caller authentication (counted per app, so one
//! misconfigured app does not lock the platform out of the others) and for rate limiting
//! anonymous sign-ups. IPv6 sources count per /64, so a host cannot rotate addresses around
//! it. The table is bounded: when it is full of live windows, new sources are not tracked
//! (the limiter fails open rather than locking anyone out). [`SourceSlots`]: how many things a
//! source holds at once (sockets that have not authenticated yet).

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
pub struct SourceLimiter {
    table: Mutex<HashMap<(Source, String), (Instant, u32)>>,
}

impl SourceLimiter {
    /// How long `ip` must wait before doing `scope` again, if it already did it `limit` times
    /// this minute.
    pub fn blocked(&self, ip: IpAddr, scope: &str, limit: u32) -> Option<Duration> {
        let table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let (start, failures) = table.get(&(Source::from(ip), scope.to_string()))?;
        let elapsed = start.elapsed();
        (elapsed < WINDOW && *failures >= limit).then(|| WINDOW - elapsed)
    }

    /// Counts one more time `ip` did `scope`.
    pub fn count(&self, ip: IpAddr, scope: &str) {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let key = (Source::from(ip), scope.to_string());
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

/// Things a source holds at the same time (sockets not authenticated yet), at most `limit`
/// per source. A slot is given back when its [`SourceSlot`] is dropped.
#[derive(Clone, Default)]
pub struct SourceSlots {
    held: std::sync::Arc<Mutex<HashMap<Source, usize>>>,
}

/// One slot of a source; dropping it gives it back.
pub struct SourceSlot {
    slots: SourceSlots,
    source: Source,
}

impl SourceSlots {
    /// A slot for `ip`, or `None` when it already holds `limit`.
    pub fn take(&self, ip: IpAddr, limit: usize) -> Option<SourceSlot> {
        let source = Source::from(ip);
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let count = held.entry(source).or_insert(0);
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(SourceSlot {
            slots: self.clone(),
            source,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut held = self.slots.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = held.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_after_the_limit_for_that_source_and_app_only() {
        let l = SourceLimiter::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert!(l.blocked(a, "app", 3).is_none());
            l.count(a, "app");
        }
        let wait = l.blocked(a, "app", 3).unwrap();
        assert!(wait <= WINDOW && wait > Duration::from_secs(50));
        assert!(l.blocked(b, "app", 3).is_none());
        assert!(l.blocked(a, "other-app", 3).is_none());
    }

    #[test]
    fn ipv6_sources_count_per_64() {
        let l = SourceLimiter::default();
        for i in 0..3 {
            let ip: IpAddr = format!("2001:db8:1:2::{i:x}").parse().unwrap();
            l.count(ip, "app");
        }
        let neighbour: IpAddr = "2001:db8:1:2:ffff::1".parse().unwrap();
        assert!(l.blocked(neighbour, "app", 3).is_some());
        let elsewhere: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(l.blocked(elsewhere, "app", 3).is_none());
    }

    #[test]
    fn slots_are_bounded_per_source_and_given_back() {
        let slots = SourceSlots::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let first = slots.take(a, 2).unwrap();
        let _second = slots.take(a, 2).unwrap();
        assert!(slots.take(a, 2).is_none());
        assert!(slots.take("192.0.2.2".parse().unwrap(), 2).is_some());
        drop(first);
        assert!(slots.take(a, 2).is_some());
    }

    #[test]
    fn a_full_table_fails_open() {
        let l = SourceLimiter::default();
        for i in 0..MAX_TRACKED as u32 {
            l.count(IpAddr::from(std::net::Ipv4Addr::from(i)), "app");
        }
        let newcomer = IpAddr::from(std::net::Ipv4Addr::new(203, 0, 113, 9));
        for _ in 0..10 {
            l.count(newcomer, "app");
        }
        assert!(l.blocked(newcomer, "app", 3).is_none());
        assert_eq!(l.table.lock().unwrap().len(), MAX_TRACKED);
    }
}
