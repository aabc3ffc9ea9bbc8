//! Duplicate suppression. The platform re-sends a push every 10 s after a 5xx, up to 4 times;
//! a push already delivered (same app, device token, conversation and sequence) must not reach
//! the phone twice. A delivered push is remembered for the window (10 minutes by default); a
//! repeat that arrives while the first is still being delivered waits for its result.
//!
//! Keys are SHA-256 digests: the table never holds a device token. It is bounded; past its
//! capacity the oldest entries go first.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
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

struct Table {
    entries: HashMap<Key, Entry>,
    /// Delivered keys in delivery order, for expiry and eviction.
    order: VecDeque<(Key, SystemTime)>,
}

/// The duplicate table, shared by every generation of the config.
pub struct Dedupe {
    table: Mutex<Table>,
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
            table: Mutex::new(Table {
                entries: HashMap::new(),
                order: VecDeque::new(),
            }),
            clock,
            evicted_early,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Claims `key` for delivery, or says it was already delivered within `window`.
    pub async fn claim(self: &Arc<Self>, key: Key, window: Duration, capacity: usize) -> Claim {
        let mut waiting = {
            let mut table = self.lock();
            let now = self.clock.now();
            let early = expire(&mut table, now, window, capacity);
            if early > 0 {
                self.evicted_early.inc_by(early);
            }
            match table.entries.get(&key) {
                Some(Entry::Delivered(at)) if within(now, *at, window) => {
                    return Claim::AlreadyDelivered;
                }
                Some(Entry::InFlight(rx)) => rx.clone(),
                _ => {
                    let (tx, rx) = watch::channel(None);
                    table.entries.insert(key, Entry::InFlight(rx));
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

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().entries.len()
    }
}

fn within(now: SystemTime, at: SystemTime, window: Duration) -> bool {
    now.duration_since(at)
        .map(|age| age < window)
        .unwrap_or(true)
}

/// Drops delivered entries older than the window, and the oldest beyond capacity. Returns how
/// many went before their window ended (capacity too small for the load).
fn expire(table: &mut Table, now: SystemTime, window: Duration, capacity: usize) -> u64 {
    let mut early = 0;
    while let Some((key, at)) = table.order.front().copied() {
        let live = within(now, at, window);
        if live && table.entries.len() < capacity {
            break;
        }
        table.order.pop_front();
        // Only remove the entry this record is about (the key may have been re-claimed since).
        if matches!(table.entries.get(&key), Some(Entry::Delivered(t)) if *t == at) {
            table.entries.remove(&key);
            early += u64::from(live);
        }
    }
    early
}

impl Guard {
    /// Records the push as delivered.
    pub fn delivered(mut self) {
        let at = self.dedupe.clock.now();
        let mut table = self.dedupe.lock();
        table.entries.insert(self.key, Entry::Delivered(at));
        table.order.push_back((self.key, at));
        drop(table);
        self.done = true;
        let _ = self.tx.send(Some(true));
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if !self.done {
            self.dedupe.lock().entries.remove(&self.key);
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

    #[tokio::test]
    async fn capacity_bounds_the_table() {
        let clock = Arc::new(FakeClock::new());
        let d = Dedupe::new(clock.clone(), Default::default());
        for seq in 0..50 {
            let Claim::Fresh(g) = d.claim(k(seq), WINDOW, 10).await else {
                panic!()
            };
            g.delivered();
            clock.advance(Duration::from_millis(1));
        }
        assert!(d.len() <= 11, "{}", d.len());
        assert!(d.evicted_early.get() >= 39, "{}", d.evicted_early.get());
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
