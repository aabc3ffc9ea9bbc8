//! Duplicate suppression. The platform re-sends a push every 10 s after a 5xx, up to 4 times;
//! a push already delivered (same app, device token, conversation and sequence) must not reach
//! the phone twice. A delivered push is remembered for the window (10 minutes by default); a
//! repeat that arrives while the first is still being delivered waits for its result.
//!
//! Keys are SHA-256 digests: the table never holds a device token. It is bounded; past its
//! capacity the oldest entries go first.
//!
//! The keys are held in [`SHARDS`] hash maps, by the key's first byte, each with its own lock.
//! A hash map that outgrows itself moves every entry while its lock is held: one map of a
//! million entries stopped every push each time it doubled, for 21 ms at 229,376 entries and
//! 84 ms at 917,504 (the p99 spikes of the push benchmark); a 256th of it takes a fraction of
//! a millisecond, and only the pushes of that part wait for it. One queue in delivery order,
//! across the maps, keeps "the oldest go first" exact; its lock is held to append a record
//! or take the oldest, never while a map grows.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use crate::clock::Clock;

pub type Key = [u8; 32];

/// The idempotency key of a push, when it has one (conversation and sequence both present).
pub fn key(
    app: &str,
    token: &str,
    conversation: Option<&str>,
    sequence: Option<i64>,
) -> Option<Key> {
    let (conversation, sequence) = (conversation?, sequence?);
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for part in [app.as_bytes(), token.as_bytes(), conversation.as_bytes()] {
        ctx.update(&(part.len() as u64).to_le_bytes());
        ctx.update(part);
    }
    ctx.update(&sequence.to_le_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    Some(out)
}

enum Entry {
    /// Being delivered; the sender says `true` when delivered, `false` when it failed.
    InFlight(watch::Receiver<Option<bool>>),
    Delivered(SystemTime),
}

/// How many parts the table is split into: one per value of a key's first byte.
const SHARDS: usize = 256;

/// One part of the table.
#[derive(Default)]
struct Shard {
    entries: HashMap<Key, Entry>,
}

/// The duplicate table, shared by every generation of the config.
pub struct Dedupe {
    shards: Box<[Mutex<Shard>]>,
    /// Delivered keys of every shard in delivery order, for expiry and eviction. Held only to
    /// append or take from the front; when it grows after it has wrapped, it copies the
    /// shorter part (48 bytes a record: a copy, far cheaper than a rehash). Locked before a
    /// shard, never after.
    order: Mutex<VecDeque<(Key, SystemTime)>>,
    /// Entries in all shards together, held against the capacity. Claims that pass the check
    /// at the same moment may each add one past it; the next claim takes them off again.
    len: AtomicUsize,
    clock: Arc<dyn Clock>,
    evicted_early: prometheus_client::metrics::counter::Counter,
}

/// The outcome of [`Dedupe::claim`].
pub enum Claim {
    /// Deliver it; report the result through the guard.
    Fresh(Guard),
    /// Already delivered within the window: answer 200 and send nothing.
    AlreadyDelivered,
    /// A concurrent request for the same push was being delivered and failed. Not tried again
    /// here: the platform re-sends, and two failures in a row rarely help each other.
    ConcurrentFailed,
}

/// Held while a push is delivered. Dropping it without [`Guard::delivered`] releases the key so
/// a re-send can try again.
pub struct Guard {
    dedupe: Arc<Dedupe>,
    key: Key,
    tx: watch::Sender<Option<bool>>,
    done: bool,
}

impl Dedupe {
    /// `evicted_early` counts entries dropped before their window ended (see `expire`).
    pub fn new(
        clock: Arc<dyn Clock>,
        evicted_early: prometheus_client::metrics::counter::Counter,
    ) -> Arc<Dedupe> {
        Arc::new(Dedupe {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            order: Mutex::default(),
            len: AtomicUsize::new(0),
            clock,
            evicted_early,
        })
    }

    fn lock(&self, index: usize) -> MutexGuard<'_, Shard> {
        self.shards[index].lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The shard `key` lives in (keys are digests, so the first byte spreads them evenly).
    fn shard_of(&self, key: &Key) -> MutexGuard<'_, Shard> {
        self.lock(usize::from(key[0]))
    }

    /// Claims `key` for delivery, or says it was already delivered within `window`.
    pub async fn claim(self: &Arc<Self>, key: Key, window: Duration, capacity: usize) -> Claim {
        let now = self.clock.now();
        let early = self.expire(now, window, capacity);
        if early > 0 {
            self.evicted_early.inc_by(early);
        }
        let mut waiting = {
            let mut shard = self.shard_of(&key);
            match shard.entries.get(&key) {
                Some(Entry::Delivered(at)) if within(now, *at, window) => {
                    return Claim::AlreadyDelivered;
                }
                Some(Entry::InFlight(rx)) => rx.clone(),
                _ => {
                    let (tx, rx) = watch::channel(None);
                    if shard.entries.insert(key, Entry::InFlight(rx)).is_none() {
                        self.len.fetch_add(1, Ordering::Relaxed);
                    }
                    return Claim::Fresh(Guard {
                        dedupe: self.clone(),
                        key,
                        tx,
                        done: false,
                    });
                }
            }
        };
        // Another request is delivering the same push: its deadline bounds this wait.
        let delivered = matches!(
            waiting.wait_for(|r| r.is_some()).await.as_deref(),
            Ok(Some(true))
        );
        if delivered {
            Claim::AlreadyDelivered
        } else {
            Claim::ConcurrentFailed
        }
    }

    /// Drops delivered entries older than the window, and the oldest while the table is at
    /// `capacity`. Returns how many went before their window ended (capacity too small for
    /// the load).
    fn expire(&self, now: SystemTime, window: Duration, capacity: usize) -> u64 {
        let mut early = 0;
        let mut order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((key, at)) = order.front().copied() {
            let live = within(now, at, window);
            if live && self.len.load(Ordering::Relaxed) < capacity {
                break;
            }
            order.pop_front();
            if self.forget(&mut self.shard_of(&key), key, at) {
                early += u64::from(live);
            }
        }
        early
    }

    /// Removes `key` if it is still the delivery recorded at `at` (it may have been claimed
    /// again since). Says whether it was.
    fn forget(&self, shard: &mut Shard, key: Key, at: SystemTime) -> bool {
        if matches!(shard.entries.get(&key), Some(Entry::Delivered(t)) if *t == at) {
            shard.entries.remove(&key);
            self.len.fetch_sub(1, Ordering::Relaxed);
            true
        } else {
            false
        }
    }

    /// Entries in the maps, checked against the shared count.
    #[cfg(test)]
    fn len(&self) -> usize {
        let in_maps = (0..SHARDS).map(|i| self.lock(i).entries.len()).sum();
        assert_eq!(
            self.len.load(Ordering::Relaxed),
            in_maps,
            "the count drifted"
        );
        in_maps
    }
}

fn within(now: SystemTime, at: SystemTime, window: Duration) -> bool {
    now.duration_since(at)
        .map(|age| age < window)
        .unwrap_or(true)
}

impl Guard {
    /// Records the push as delivered.
    pub fn delivered(mut self) {
        let at = self.dedupe.clock.now();
        let mut order = self.dedupe.order.lock().unwrap_or_else(|e| e.into_inner());
        let mut shard = self.dedupe.shard_of(&self.key);
        if shard
            .entries
            .insert(self.key, Entry::Delivered(at))
            .is_none()
        {
            self.dedupe.len.fetch_add(1, Ordering::Relaxed);
        }
        drop(shard);
        order.push_back((self.key, at));
        drop(order);
        self.done = true;
        let _ = self.tx.send(Some(true));
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.done {
            if self
                .dedupe
                .shard_of(&self.key)
                .entries
                .remove(&self.key)
                .is_some()
            {
                self.dedupe.len.fetch_sub(1, Ordering::Relaxed);
            }
            let _ = self.tx.send(Some(false));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::fake::FakeClock;

    const WINDOW: Duration = Duration::from_secs(600);

    fn k(seq: i64) -> Key {
        key("app", "token", Some("conv"), Some(seq)).unwrap()
    }

    #[tokio::test]
    async fn delivered_push_is_a_duplicate_within_the_window_only() {
        let clock = Arc::new(FakeClock::new());
        let d = Dedupe::new(clock.clone(), Default::default());
        let Claim::Fresh(g) = d.claim(k(1), WINDOW, 100).await else {
            panic!()
        };
        g.delivered();
        clock.advance(Duration::from_secs(599));
        assert!(matches!(
            d.claim(k(1), WINDOW, 100).await,
            Claim::AlreadyDelivered
        ));
        // Another sequence number is another push.
        assert!(matches!(d.claim(k(2), WINDOW, 100).await, Claim::Fresh(_)));
        clock.advance(Duration::from_secs(2));
        assert!(matches!(d.claim(k(1), WINDOW, 100).await, Claim::Fresh(_)));
    }

    #[tokio::test]
    async fn failed_push_can_be_sent_again() {
        let d = Dedupe::new(Arc::new(FakeClock::new()), Default::default());
        let Claim::Fresh(g) = d.claim(k(1), WINDOW, 100).await else {
            panic!()
        };
        drop(g);
        assert!(matches!(d.claim(k(1), WINDOW, 100).await, Claim::Fresh(_)));
    }

    #[tokio::test]
    async fn a_concurrent_repeat_waits_for_the_first() {
        let d = Dedupe::new(Arc::new(FakeClock::new()), Default::default());
        let Claim::Fresh(g) = d.claim(k(1), WINDOW, 100).await else {
            panic!()
        };
        let d2 = d.clone();
        let waiter = tokio::spawn(async move {
            matches!(d2.claim(k(1), WINDOW, 100).await, Claim::AlreadyDelivered)
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        g.delivered();
        assert!(waiter.await.unwrap());
    }

    #[tokio::test]
    async fn a_concurrent_repeat_of_a_failed_push_is_not_sent() {
        let d = Dedupe::new(Arc::new(FakeClock::new()), Default::default());
        let Claim::Fresh(g) = d.claim(k(1), WINDOW, 100).await else {
            panic!()
        };
        let d2 = d.clone();
        let waiter = tokio::spawn(async move {
            matches!(d2.claim(k(1), WINDOW, 100).await, Claim::ConcurrentFailed)
        });
        tokio::task::yield_now().await;
        drop(g);
        assert!(waiter.await.unwrap());
        // Later, the platform's re-send may try again.
        assert!(matches!(d.claim(k(1), WINDOW, 100).await, Claim::Fresh(_)));
    }

    /// Delivers the pushes `seqs`, a millisecond apart, into a table of `capacity`.
    async fn deliver_each(
        d: &Arc<Dedupe>,
        clock: &FakeClock,
        seqs: std::ops::Range<i64>,
        capacity: usize,
    ) {
        for seq in seqs {
            let Claim::Fresh(g) = d.claim(k(seq), WINDOW, capacity).await else {
                panic!("push {seq} was not fresh")
            };
            g.delivered();
            clock.advance(Duration::from_millis(1));
        }
    }

    #[tokio::test]
    async fn capacity_bounds_the_table() {
        let clock = Arc::new(FakeClock::new());
        let d = Dedupe::new(clock.clone(), Default::default());
        deliver_each(&d, &clock, 0..50, 10).await;
        assert!(d.len() <= 11, "{}", d.len());
        assert!(d.evicted_early.get() >= 39, "{}", d.evicted_early.get());
    }

    #[tokio::test]
    async fn the_oldest_go_first_across_every_part_of_the_table() {
        let clock = Arc::new(FakeClock::new());
        let d = Dedupe::new(clock.clone(), Default::default());
        deliver_each(&d, &clock, 0..1000, 600).await;
        let remembered: Vec<i64> = {
            let mut seqs = Vec::new();
            for seq in 0..1000 {
                let key = k(seq);
                if let Some(Entry::Delivered(_)) = d.shard_of(&key).entries.get(&key) {
                    seqs.push(seq);
                }
            }
            seqs
        };
        // Each claim past the 600th made room by forgetting the oldest, whichever its map.
        assert_eq!(remembered, (400..1000).collect::<Vec<_>>());
        assert_eq!(d.len(), 600);
        assert_eq!(d.evicted_early.get(), 400);
    }

    #[tokio::test]
    async fn no_one_map_holds_more_than_a_small_part_of_the_table() {
        // What a doubling map moves under its lock is bounded by its own size.
        let clock = Arc::new(FakeClock::new());
        let d = Dedupe::new(clock.clone(), Default::default());
        let pushes = 25_600;
        deliver_each(&d, &clock, 0..pushes, 1_000_000).await;
        let largest = (0..SHARDS)
            .map(|i| d.lock(i).entries.len())
            .max()
            .unwrap_or_default();
        assert_eq!(d.len(), pushes as usize);
        // 100 on average; a map of the whole table would hold all 25,600.
        assert!(largest < 160, "the largest map holds {largest}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn the_count_matches_the_maps_under_concurrent_claims() {
        // Claims, deliveries, failures and evictions from several threads at once, over keys
        // that repeat, in a table kept at its capacity.
        let clock = Arc::new(FakeClock::new());
        let d = Dedupe::new(clock.clone(), Default::default());
        let workers: Vec<_> = (0..8)
            .map(|w: i64| {
                let d = d.clone();
                tokio::spawn(async move {
                    for i in 0..2_000 {
                        let seq = (i * 7 + w * 13) % 1_500;
                        if let Claim::Fresh(g) = d.claim(k(seq), WINDOW, 1_000).await {
                            if (seq + w) % 3 == 0 {
                                drop(g);
                            } else {
                                g.delivered();
                            }
                        }
                    }
                })
            })
            .collect();
        for w in workers {
            w.await.unwrap();
        }
        let remaining = d.len();
        assert!(remaining > 0 && remaining <= 1_000 + 8, "{remaining}");
    }

    #[test]
    fn key_needs_conversation_and_sequence() {
        assert!(key("a", "t", None, Some(1)).is_none());
        assert!(key("a", "t", Some("c"), None).is_none());
        // Field boundaries matter: ("ab","c") and ("a","bc") differ.
        assert_ne!(
            key("ab", "c", Some("x"), Some(1)),
            key("a", "bc", Some("x"), Some(1))
        );
    }
}
