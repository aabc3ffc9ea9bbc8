//! Brute-force protection for caller authentication: a source address that fails too often in
//! one minute gets 429 for the rest of that minute, before any credential is even compared.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at most; beyond it, finished windows are pruned.
const MAX_TRACKED: usize = 10_000;

#[derive(Default)]
pub struct AuthFailureLimiter {
    table: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl AuthFailureLimiter {
    /// How long `ip` must wait, if it already failed `limit` times this minute.
    pub fn blocked(&self, ip: IpAddr, limit: u32) -> Option<Duration> {
        let table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let (start, failures) = table.get(&ip)?;
        let elapsed = start.elapsed();
        (elapsed < WINDOW && *failures >= limit).then(|| WINDOW - elapsed)
    }

    pub fn failed(&self, ip: IpAddr) {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if table.len() >= MAX_TRACKED {
            table.retain(|_, (start, _)| start.elapsed() < WINDOW);
        }
        let entry = table.entry(ip).or_insert((Instant::now(), 0));
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
    fn blocks_after_the_limit_and_only_that_address() {
        let l = AuthFailureLimiter::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert!(l.blocked(a, 3).is_none());
            l.failed(a);
        }
        let wait = l.blocked(a, 3).unwrap();
        assert!(wait <= WINDOW && wait > Duration::from_secs(50));
        assert!(l.blocked(b, 3).is_none());
    }
}
