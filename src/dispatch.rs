//! The outbox dispatcher: works off what the roles left in the store's outbox
//! ([`crate::store::outbox`]): the relay's webhooks and away pushes, the push proxy's
//! dead-token records. One per process (the daemon starts it when it has a store), on every
//! node at once.
//!
//! It claims due items under a lease (so each goes to one node, and a node that dies hands
//! its items back when the lease runs out), makes one attempt at each, several at once, and
//! settles it in the store: removed when done, rescheduled with the error when it is to be
//! tried again, parked when its attempts are used up. It claims when woken by a local commit
//! ([`Doorbell::ring`]), when an attempt ends (the next item of that lane is due), and at
//! least every [`POLL`] (other nodes' commits, retries coming due). Stopping lets the running
//! attempts end, then gives the leases back: nothing waits in memory, so a restart, graceful
//! or not, loses nothing. Leases are short ([`LEASE`]) and renewed while their attempts run,
//! so a node that dies holding items hands them back that soon (on SQLite, which one process
//! serves, at once when it starts again).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::{Clock, UnixMillis};
use crate::store::Store;
use crate::store::outbox::{OutboxCount, OutboxItem, Settle, Settled};

/// The longest an idle dispatcher goes without looking for due items.
const POLL: Duration = Duration::from_secs(1);
/// How long a claim holds an item unless renewed: a dead node's items are free this soon.
const LEASE: Duration = Duration::from_secs(20);
/// How often the leases of running attempts are renewed.
const RENEW: Duration = Duration::from_secs(5);
/// How often the backlog gauges are read from the store, and parked items purged.
const HOUSEKEEPING: Duration = Duration::from_secs(5);
/// Parked items are removed after this long (the operator had a week to retry them).
const PARKED_KEPT: Duration = Duration::from_secs(7 * 24 * 3600);

/// The end of one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Try again after `wait`.
    Retry {
        wait: Duration,
        error: String,
    },
    /// Not due yet: released until `until`, not counted as an attempt.
    Defer {
        until: UnixMillis,
    },
    /// Not to be tried again by itself: parked for the operator.
    Park {
        error: String,
    },
    /// Nothing to do any more (the feature was turned off, the conversation closed): removed
    /// unsent.
    Drop {
        why: &'static str,
    },
}

/// What works off one kind of item (relay webhooks, away pushes, dead-token records). The
/// dispatcher knows no kind itself: they plug in here.
pub trait Handler: Send + Sync + 'static {
    /// The items' `kind`.
    fn kind(&self) -> &'static str;
    /// Whether this node can work on them now (webhooks configured, a push app): items of a
    /// kind no node serves wait.
    fn serves(&self) -> bool;
    /// When an item renewed during its attempt (see the outbox's `dedupe_key`) is due again.
    fn renewed_after(&self) -> Duration {
        Duration::ZERO
    }
    /// One attempt at `item` (its `attempts` made before), and what to do next.
    fn attempt<'a>(
        &'a self,
        item: &'a OutboxItem,
    ) -> Pin<Box<dyn Future<Output = Verdict> + Send + 'a>>;
}

/// Wakes the dispatcher after a commit that wrote outbox items. Cheap to clone.
#[derive(Clone, Default)]
pub struct Doorbell(Arc<Notify>);

impl Doorbell {
    pub fn ring(&self) {
        self.0.notify_one();
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BacklogLabels {
    kind: String,
    state: &'static str,
}

/// The outbox's backlog, by kind and state (pending, parked), as last read.
#[derive(Clone, Default)]
struct OutboxMetrics {
    items: Family<BacklogLabels, Gauge>,
}

/// The dispatcher of one node. Cheap to clone.
#[derive(Clone)]
pub struct Dispatcher {
    shared: Arc<Shared>,
}

struct Shared {
    store: Store,
    clock: Arc<dyn Clock>,
    /// This node's lease owner name (new at every start).
    owner: String,
    bell: Doorbell,
    handlers: Vec<Arc<dyn Handler>>,
    in_flight: usize,
    metrics: OutboxMetrics,
    stopping: CancellationToken,
    task: TaskTracker,
}

impl Dispatcher {
    /// Starts working off the outbox with `handlers`, at most `in_flight` attempts at once,
    /// woken by `bell` (which the writers of items ring).
    pub fn start(
        store: Store,
        clock: Arc<dyn Clock>,
        bell: Doorbell,
        handlers: Vec<Arc<dyn Handler>>,
        in_flight: usize,
        registry: &mut Registry,
    ) -> Dispatcher {
        let metrics = OutboxMetrics::default();
        registry.register(
            "brandgate_outbox_items",
            "Outbox items (webhooks, away pushes, dead-token records waiting), by kind and state (pending, parked), read every few seconds",
            metrics.items.clone(),
        );
        let shared = Arc::new(Shared {
            store,
            clock,
            owner: uuid::Uuid::new_v4().to_string(),
            bell,
            handlers,
            in_flight: in_flight.max(1),
            metrics,
            stopping: CancellationToken::new(),
            task: TaskTracker::new(),
        });
        shared.task.spawn(run(shared.clone()));
        shared.task.close();
        Dispatcher { shared }
    }

    /// Stops claiming, lets the running attempts end, and gives the leases back. The caller
    /// bounds the wait (an attempt ends within its timeout).
    pub async fn stop(&self) {
        self.shared.stopping.cancel();
        self.shared.task.wait().await;
        let shared = &self.shared;
        if let Err(e) = shared.store.release_outbox(&shared.owner).await {
            tracing::warn!(error = %e, "cannot hand the outbox's leases back; other nodes take the items when the leases run out");
        }
        match shared.store.count_outbox().await {
            Ok(counts) => {
                let pending: i64 = counts.iter().map(|c| c.pending).sum();
                if pending > 0 {
                    tracing::info!(
                        pending,
                        "outbox items wait in the store for the next start (or another node)"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot count the outbox's items"),
        }
    }
}

async fn run(shared: Arc<Shared>) {
    match shared.store.release_orphaned_outbox_leases().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            released = n,
            "outbox items a stopped process was working on are due again"
        ),
        Err(e) => tracing::warn!(error = %e, "cannot release the outbox's orphaned leases"),
    }
    let mut running: JoinSet<()> = JoinSet::new();
    // The item (its position) each running attempt holds: only these leases are renewed.
    let mut holding: HashMap<tokio::task::Id, Holding> = HashMap::new();
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
    housekeeping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut renew = tokio::time::interval(RENEW);
    renew.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_purge: Option<tokio::time::Instant> = None;
    loop {
        // Claim while there is room and items come back (more may be due).
        while !shared.stopping.is_cancelled() && running.len() < shared.in_flight {
            let room = shared.in_flight - running.len();
            let kinds: Vec<&str> = shared
                .handlers
                .iter()
                .filter(|h| h.serves())
                .map(|h| h.kind())
                .collect();
            if kinds.is_empty() {
                break;
            }
            let now = UnixMillis::now(&*shared.clock);
            let claimed = match shared
                .store
                .claim_outbox(&shared.owner, &kinds, now, now.after(LEASE), room as i64)
                .await
            {
                Ok(items) => items,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot claim outbox items; trying again shortly");
                    Vec::new()
                }
            };
            let full = claimed.len() == room;
            if running.is_empty() && !claimed.is_empty() {
                // The first renewal comes a full period after the claim.
                renew.reset();
            }
            for item in claimed {
                let position = item.position;
                let settling = Arc::new(AtomicBool::new(false));
                let task = running.spawn(attempt(shared.clone(), item, settling.clone()));
                holding.insert(task.id(), Holding { position, settling });
            }
            if !full {
                break;
            }
        }
        tokio::select! {
            () = shared.stopping.cancelled() => {
                // The running attempts end (within their timeouts), their leases kept alive.
                loop {
                    tokio::select! {
                        done = running.join_next_with_id() => match done {
                            Some(done) => { holding.remove(&finished(done)); }
                            None => return,
                        },
                        _ = renew.tick() => shared.renew(&holding).await,
                    }
                }
            }
            () = shared.bell.0.notified() => {}
            Some(done) = running.join_next_with_id() => {
                holding.remove(&finished(done));
                // Every other attempt that ended meanwhile, before the next claim.
                while let Some(done) = running.try_join_next_with_id() {
                    holding.remove(&finished(done));
                }
            }
            _ = housekeeping.tick() => {
                shared.read_backlog().await;
                if last_purge.is_none_or(|at| at.elapsed() >= Duration::from_secs(3600)) {
                    last_purge = Some(tokio::time::Instant::now());
                    shared.purge_parked().await;
                }
            }
            _ = renew.tick(), if !running.is_empty() => shared.renew(&holding).await,
            () = tokio::time::sleep(POLL) => {}
        }
    }
}

/// The id of an attempt's task that ended (a panic is logged: its item is tried again once
/// its lease runs out).
fn finished(done: Result<(tokio::task::Id, ()), tokio::task::JoinError>) -> tokio::task::Id {
    match done {
        Ok((id, ())) => id,
        Err(e) => {
            tracing::error!(error = %e, "an outbox attempt failed; its item is tried again after its lease");
            e.id()
        }
    }
}

/// One attempt at `item`, settled in the store; `settling` is set once the attempt is over (its
/// lease is no longer renewed from then on).
async fn attempt(shared: Arc<Shared>, item: OutboxItem, settling: Arc<AtomicBool>) {
    let handler = shared.handlers.iter().find(|h| h.kind() == item.kind);
    let verdict = match handler {
        Some(handler) => handler.attempt(&item).await,
        None => Verdict::Park {
            error: format!(
                "this brandgate does not handle outbox items of kind {:?}",
                item.kind
            ),
        },
    };
    let now = UnixMillis::now(&*shared.clock);
    let done = Settle::Done {
        renewed_at: now,
        renewed_due: now.after(handler.map_or(Duration::ZERO, |h| h.renewed_after())),
    };
    let settle = match &verdict {
        Verdict::Delivered => done,
        Verdict::Drop { why } => {
            tracing::info!(item = %item.id, kind = %item.kind, why, "an outbox item was removed unsent");
            done
        }
        Verdict::Defer { until } => Settle::Defer { next_at: *until },
        Verdict::Retry { wait, error } => Settle::Retry {
            next_at: now.after(*wait),
            error,
        },
        Verdict::Park { error } => Settle::Park { error, at: now },
    };
    // A database that hiccups gets a few tries; after them the lease runs out (it is no
    // longer renewed) and the item is tried again.
    settling.store(true, Ordering::SeqCst);
    let mut settled = shared
        .store
        .settle_outbox(&item, &shared.owner, settle.clone())
        .await;
    for wait in [100, 1000] {
        if settled.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(wait)).await;
        settled = shared
            .store
            .settle_outbox(&item, &shared.owner, settle.clone())
            .await;
    }
    match settled {
        Ok(Settled::LeaseLost) => {
            tracing::warn!(item = %item.id, kind = %item.kind, "an outbox item's lease ran out during its attempt; another node may repeat it")
        }
        Ok(Settled::Removed | Settled::Kept) => {}
        // The lease runs out and the item is tried again: at least once, never lost.
        Err(e) => {
            tracing::warn!(error = %e, item = %item.id, "cannot record an outbox attempt; the item is tried again after its lease")
        }
    }
    // The lane's next item may be due now.
    shared.bell.ring();
}

/// A running attempt's item, and whether the attempt is over (its item being settled).
struct Holding {
    position: i64,
    settling: Arc<AtomicBool>,
}

impl Shared {
    /// Keeps the leases of the running attempts alive (an attempt that is over settles its
    /// item: no lease to keep).
    async fn renew(&self, holding: &HashMap<tokio::task::Id, Holding>) {
        let until = UnixMillis::now(&*self.clock).after(LEASE);
        for held in holding.values() {
            if held.settling.load(Ordering::SeqCst) {
                continue;
            }
            match self
                .store
                .renew_outbox_lease(held.position, &self.owner, until)
                .await
            {
                Ok(true) => {}
                // Settled while this renewal was on its way.
                Ok(false) if held.settling.load(Ordering::SeqCst) => {}
                Ok(false) => tracing::warn!(
                    "an outbox item's lease was taken over during its attempt; another node may repeat it"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot renew an outbox lease; another node may repeat an attempt")
                }
            }
        }
    }

    async fn read_backlog(&self) {
        let Ok(counts) = self.store.count_outbox().await else {
            return;
        };
        self.metrics.items.clear();
        // The kinds this node works on show even when none waits (a 0 an alert can read).
        let known = self.handlers.iter().map(|h| OutboxCount {
            kind: h.kind().to_string(),
            ..OutboxCount::default()
        });
        for c in known.into_iter().chain(counts) {
            for (state, n) in [("pending", c.pending), ("parked", c.parked)] {
                self.metrics
                    .items
                    .get_or_create(&BacklogLabels {
                        kind: c.kind.clone(),
                        state,
                    })
                    .set(n);
            }
        }
    }

    async fn purge_parked(&self) {
        let before = UnixMillis(UnixMillis::now(&*self.clock).0 - PARKED_KEPT.as_millis() as i64);
        match self.store.purge_parked_outbox(before).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::warn!(
                    removed = n,
                    "parked outbox items older than a week were removed"
                )
            }
            Err(e) => tracing::warn!(error = %e, "cannot purge parked outbox items"),
        }
    }
}
