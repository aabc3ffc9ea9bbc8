//! Per-source limits. [`SourceLimiter`]: over one-minute windows, how many times a source did
//! something in a scope (failed an authentication for one app or client, signed up
//! anonymously, started a login) this minute, and whether it is over its limit.
//! [`SourceSlots`]: how many things a source holds at once (sockets that have not
//! authenticated yet). [`MinuteBudget`]: how many times something may happen per minute from
//! all sources together (what many sources could otherwise multiply).
//!
//! Used for brute-force protection of caller authentication (counted per app or client, so
//! one misconfigured app does not lock the platform out of the others) and for rate limiting
//! sign-ups and login starts. IPv6 sources count per /64, so a host cannot rotate addresses
//! around it.
//!
//! Scopes are chosen by the code, never taken from a request as they are (a client id is a
//! scope only once it names a configured client), so one source holds a handful of windows.
//! Besides each (source, scope) window, every source has one window over all its scopes with
//! a ceiling of [`SCOPES_PER_SOURCE`] times the scope's limit: a source cannot get more tries
//! by spreading them over scopes.
//!
//! Memory is bounded: each table holds at most a fixed number of windows. A full table never
//! means "allow": it drops windows that have ended, then the ones touched longest ago, and the
//! per-source table is ten times larger than any one source can fill, so forgetting a window
//! takes many thousands of sources, not one.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WINDOW: Duration = Duration::from_secs(60);
/// (source, scope) windows kept at most.
const MAX_SCOPED: usize = 50_000;
/// Per-source windows kept at most.
const MAX_SOURCES: usize = 100_000;
/// A source's ceiling over all scopes, in multiples of one scope's limit.
pub const SCOPES_PER_SOURCE: u32 = 16;

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

/// One minute's count.
#[derive(Clone, Copy)]
struct Window {
    start: Instant,
    count: u32,
    touched: Instant,
}

/// Windows by key, at most `capacity` of them.
struct Windows<K> {
    table: HashMap<K, Window>,
    capacity: usize,
}

impl<K: Eq + Hash> Windows<K> {
    fn new(capacity: usize) -> Self {
        Windows {
            table: HashMap::new(),
            capacity,
        }
    }

    /// How long until `key` is under `limit` again, if it is at it now.
    fn wait(&self, key: &K, limit: u32, now: Instant) -> Option<Duration> {
        let w = self.table.get(key)?;
        let elapsed = now.saturating_duration_since(w.start);
        (elapsed < WINDOW && w.count >= limit).then(|| WINDOW - elapsed)
    }

    fn count(&mut self, key: K, now: Instant) {
        if !self.table.contains_key(&key) && self.table.len() >= self.capacity {
            self.make_room(now);
        }
        let w = self.table.entry(key).or_insert(Window {
            start: now,
            count: 0,
            touched: now,
        });
        if now.saturating_duration_since(w.start) >= WINDOW {
            w.start = now;
            w.count = 0;
        }
        w.count = w.count.saturating_add(1);
        w.touched = now;
    }

    /// Drops ended windows; if that frees less than an eighth of the table, also the windows
    /// with the fewest counts (of those, the ones touched longest ago), down to seven eighths.
    /// Windows that block are the last to go: filling the table with one try each from many
    /// keys evicts those tries, not a window at its limit. An eighth stays free, so this runs
    /// at most once every `capacity / 8` new keys.
    fn make_room(&mut self, now: Instant) {
        self.table
            .retain(|_, w| now.saturating_duration_since(w.start) < WINDOW);
        let keep = self.capacity - self.capacity / 8;
        if self.table.len() <= keep {
            return;
        }
        let mut ranks: Vec<(u32, Instant)> =
            self.table.values().map(|w| (w.count, w.touched)).collect();
        let cut = ranks.len() - keep;
        let (_, first_kept, _) = ranks.select_nth_unstable(cut);
        let first_kept = *first_kept;
        self.table.retain(|_, w| (w.count, w.touched) >= first_kept);
    }
}

/// How often a source may do something: per scope, and over all its scopes.
pub struct SourceLimiter {
    scoped: Mutex<Windows<(Source, Box<str>)>>,
    sources: Mutex<Windows<Source>>,
}

impl Default for SourceLimiter {
    fn default() -> Self {
        SourceLimiter {
            scoped: Mutex::new(Windows::new(MAX_SCOPED)),
            sources: Mutex::new(Windows::new(MAX_SOURCES)),
        }
    }
}

impl SourceLimiter {
    /// How long `ip` must wait before doing `scope` again, if it already did it `limit` times
    /// this minute, or did anything `limit` × [`SCOPES_PER_SOURCE`] times.
    pub fn blocked(&self, ip: IpAddr, scope: &str, limit: u32) -> Option<Duration> {
        let source = Source::from(ip);
        let now = Instant::now();
        let ceiling = limit.saturating_mul(SCOPES_PER_SOURCE);
        let by_source = lock(&self.sources).wait(&source, ceiling, now);
        let by_scope = lock(&self.scoped).wait(&(source, scope.into()), limit, now);
        by_source.max(by_scope)
    }

    /// Counts one more time `ip` did `scope`.
    pub fn count(&self, ip: IpAddr, scope: &str) {
        let source = Source::from(ip);
        let now = Instant::now();
        lock(&self.sources).count(source, now);
        lock(&self.scoped).count((source, scope.into()), now);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Things a source holds at the same time (sockets not authenticated yet), at most `limit`
/// per source. A slot is given back when its [`SourceSlot`] is dropped. The table holds only
/// sources that hold a slot now, so it is bounded by the slots taken (the listener's own
/// socket limit).
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
        let mut held = lock(&self.held);
        let count = held.entry(source).or_insert(0);
        if *count >= limit {
            if *count == 0 {
                held.remove(&source);
            }
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
        let mut held = lock(&self.slots.held);
        if let Some(count) = held.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                held.remove(&self.source);
            }
        }
    }
}

/// A number of times per one-minute window, for all sources together.
pub struct MinuteBudget {
    limit: u32,
    window: Mutex<(Instant, u32)>,
}

impl MinuteBudget {
    pub fn new(limit: u32) -> MinuteBudget {
        MinuteBudget {
            limit,
            window: Mutex::new((Instant::now(), 0)),
        }
    }

    /// Takes one from this minute's budget; false when it is spent.
    pub fn take(&self) -> bool {
        let mut w = self.window.lock().unwrap_or_else(|e| e.into_inner());
        if w.0.elapsed() >= WINDOW {
            *w = (Instant::now(), 0);
        }
        if w.1 >= self.limit {
            return false;
        }
        w.1 += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(i: u32) -> IpAddr {
        IpAddr::from(std::net::Ipv4Addr::from(i))
    }

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
        // A refused source with nothing held leaves nothing behind.
        assert!(slots.take("192.0.2.3".parse().unwrap(), 0).is_none());
        assert!(!lock(&slots.held).contains_key(&Source::from(v4(0xC000_0203))));
    }

    #[test]
    fn spreading_attempts_over_scopes_meets_the_source_ceiling() {
        let l = SourceLimiter::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        // Two tries in each of many scopes: no scope reaches its limit of 3.
        for i in 0..(3 * SCOPES_PER_SOURCE / 2) {
            let scope = format!("client-{i}");
            l.count(a, &scope);
            l.count(a, &scope);
        }
        let wait = l.blocked(a, "a-scope-never-used", 3);
        assert!(
            wait.is_some_and(|w| w > Duration::from_secs(50)),
            "{wait:?}"
        );
    }

    #[test]
    fn a_full_table_never_means_allow() {
        let l = SourceLimiter::default();
        let attacker = v4(0xCB00_7109);
        for _ in 0..3 {
            l.count(attacker, "app");
        }
        assert!(l.blocked(attacker, "app", 3).is_some());
        // Many other sources fill the scoped table past its size, one window each.
        for i in 0..(MAX_SCOPED as u32 + 10) {
            l.count(v4(i), "app");
        }
        assert!(lock(&l.scoped).table.len() <= MAX_SCOPED);
        // The attacker's window was touched longest ago, but it is at its limit: the
        // one-try windows went first.
        assert!(l.blocked(attacker, "app", 3).is_some());
        // A newcomer is tracked and limited as usual.
        let newcomer = v4(0xCB00_710A);
        for _ in 0..3 {
            l.count(newcomer, "app");
        }
        assert!(l.blocked(newcomer, "app", 3).is_some());
    }

    #[test]
    fn a_full_table_makes_room_by_dropping_ended_then_idle_windows() {
        let mut w: Windows<u32> = Windows::new(80);
        let start = Instant::now();
        for k in 0..40 {
            w.count(k, start);
        }
        let later = start + WINDOW + Duration::from_secs(1);
        for k in 40..80 {
            w.count(k, later);
        }
        // Full: the 40 ended windows go, the live ones stay.
        w.count(1000, later);
        assert_eq!(w.table.len(), 41);
        assert!((40..80).all(|k| w.table.contains_key(&k)));

        // Full of live windows: those with the fewest counts, then touched longest ago, go
        // down to 7/8.
        let mut w: Windows<u32> = Windows::new(80);
        for k in 0..80 {
            let at = start + Duration::from_millis(u64::from(k));
            w.count(k, at);
            if k < 5 {
                w.count(k, at);
            }
        }
        w.count(1000, start + Duration::from_secs(1));
        assert_eq!(w.table.len(), 71);
        assert!((0..5).all(|k| w.table.contains_key(&k)), "two counts stay");
        assert!((5..15).all(|k| !w.table.contains_key(&k)));
        assert!((15..80).all(|k| w.table.contains_key(&k)));
        assert!(w.table.contains_key(&1000));
    }

    #[test]
    fn a_minute_budget_is_shared_and_spent() {
        let b = MinuteBudget::new(3);
        assert_eq!(
            [b.take(), b.take(), b.take(), b.take()],
            [true, true, true, false]
        );
    }
}
