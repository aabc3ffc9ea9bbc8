//! De-duplication shared with the other nodes and kept across restarts, through the store
//! ([`crate::store::push_claims`]), behind the in-memory table ([`super::dedupe`]), which
//! stays the fast path: a repeat this node already delivered never reaches the database.
//!
//! A push's key is claimed in the database before it is sent, so the platform's re-send that
//! lands on another node (or on this one after a restart) within the window answers
//! `duplicate` without sending. A re-send that arrives while another node is still delivering
//! waits for its outcome, up to the push's deadline: delivered there, it is a duplicate;
//! released there (the first attempt failed), this one claims the key and sends. Claims are
//! batched (a few set-wise statements for all the operations waiting at once, on PostgreSQL two
//! batches under way at a time), so a busy node pays a fraction of a round trip per push. When the database cannot answer, pushes go on with the
//! in-memory table only (counted in `brandgate_push_dedupe_store_errors_total`).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;

use super::dedupe::Key;
use crate::clock::{Clock, UnixMillis};
use crate::store::Store;
use crate::store::push_claims::{PushClaimOp, PushClaimOutcome, PushClaimWriter};

/// Operations waiting for the writer; beyond, a claim goes without the database.
const QUEUE: usize = 8192;
/// Operations in one transaction at most.
const BATCH: usize = 256;
/// How often a re-send waiting for another node's attempt looks again.
const WAIT_STEP: Duration = Duration::from_millis(200);
/// How often every claim past its time is removed.
const PURGE_EVERY: Duration = Duration::from_secs(60);
/// How long a delivered or released mark may take, all tries together.
const MARK_LIMIT: Duration = Duration::from_secs(10);

/// What the shared claim says about a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shared {
    /// This node sends it (then reports [`SharedDedupe::delivered`] or
    /// [`SharedDedupe::release`]).
    Send,
    /// Delivered within the window, here or elsewhere: answer `duplicate`.
    Duplicate,
    /// Another node was still delivering it when the deadline came.
    StillSendingElsewhere,
    /// The database did not answer: go on with the in-memory table alone.
    Unavailable,
}

struct Job {
    op: PushClaimOp,
    done: oneshot::Sender<Option<PushClaimOutcome>>,
}

/// The shared claims of one node. Cheap to share (`Arc`).
pub struct SharedDedupe {
    /// One queue per writer; a key always goes to the same one, so one key's operations are
    /// applied in the order they were queued.
    jobs: Vec<mpsc::Sender<Job>>,
    writer: PushClaimWriter,
    /// The marks sent after a delivery, so stopping waits for them.
    marks: TaskTracker,
    /// This node's name in the claims (new at every start).
    owner: String,
    clock: Arc<dyn Clock>,
    errors: Counter,
}

impl SharedDedupe {
    /// Starts the writer (inside a tokio runtime); it ends when the last handle is dropped.
    pub fn start(store: Store, clock: Arc<dyn Clock>, errors: Counter) -> Arc<SharedDedupe> {
        let writer = store.push_claim_writer();
        let jobs = (0..writer.concurrency())
            .map(|_| {
                let (jobs, queue) = mpsc::channel(QUEUE);
                tokio::spawn(write(writer.clone(), queue, errors.clone()));
                jobs
            })
            .collect();
        tokio::spawn(purge(store, clock.clone()));
        Arc::new(SharedDedupe {
            jobs,
            writer,
            marks: TaskTracker::new(),
            owner: uuid::Uuid::new_v4().to_string(),
            clock,
            errors,
        })
    }

    /// Queues one operation for its key's writer; `None` when the queue is full.
    fn enqueue(&self, op: PushClaimOp) -> Option<oneshot::Receiver<Option<PushClaimOutcome>>> {
        let (done, answer) = oneshot::channel();
        let writer = usize::from(op.key()[0]) % self.jobs.len().max(1);
        let queued = self
            .jobs
            .get(writer)
            .is_some_and(|queue| queue.try_send(Job { op, done }).is_ok());
        if !queued {
            self.errors.inc();
            return None;
        }
        Some(answer)
    }

    /// One operation through the writer, waiting at most until `by`.
    async fn apply(&self, op: PushClaimOp, by: tokio::time::Instant) -> Option<PushClaimOutcome> {
        let answer = self.enqueue(op)?;
        Self::outcome(answer, by, &self.errors).await
    }

    /// The writer's answer, waited for at most until `by`.
    async fn outcome(
        answer: oneshot::Receiver<Option<PushClaimOutcome>>,
        by: tokio::time::Instant,
        errors: &Counter,
    ) -> Option<PushClaimOutcome> {
        match tokio::time::timeout_at(by, answer).await {
            Ok(answer) => answer.ok().flatten(),
            Err(_) => {
                errors.inc();
                None
            }
        }
    }

    /// Claims `key` for a delivery that ends by `deadline` (a tokio instant); waits, up to
    /// it, while another node is delivering the same push.
    pub async fn claim(&self, key: Key, deadline: tokio::time::Instant) -> Shared {
        loop {
            let now = UnixMillis::now(&*self.clock);
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            // The claim outlives the attempt a little, so a node that dies mid-push lets go.
            let until = now.after(left + Duration::from_secs(5));
            let op = PushClaimOp::Claim {
                key,
                owner: self.owner.clone(),
                now,
                until,
            };
            let outcome = self.apply(op, deadline).await;
            match outcome {
                Some(PushClaimOutcome::Claimed) => return Shared::Send,
                Some(PushClaimOutcome::Delivered) => return Shared::Duplicate,
                Some(PushClaimOutcome::Sending) => {
                    if tokio::time::Instant::now() + WAIT_STEP >= deadline {
                        return Shared::StillSendingElsewhere;
                    }
                    tokio::time::sleep(WAIT_STEP).await;
                }
                Some(PushClaimOutcome::Done) | None => return Shared::Unavailable,
            }
        }
    }

    /// The claimed push was delivered: a duplicate for everyone until `window` ends. Sent in
    /// the background (the answer does not wait), tried until it is recorded or
    /// [`MARK_LIMIT`] passes; [`SharedDedupe::drain`] waits for it.
    pub fn delivered(self: &Arc<Self>, key: Key, window: Duration) {
        let until = UnixMillis::now(&*self.clock).after(window);
        self.mark(PushClaimOp::Delivered {
            key,
            owner: self.owner.clone(),
            until,
        });
    }

    /// The claimed push was not delivered: a re-send may try again, on any node. In the
    /// background, as [`SharedDedupe::delivered`].
    pub fn release(self: &Arc<Self>, key: Key) {
        self.mark(PushClaimOp::Release {
            key,
            owner: self.owner.clone(),
        });
    }

    fn mark(self: &Arc<Self>, op: PushClaimOp) {
        // Queued now, in the order of the calls; only waiting for it and retrying are in the
        // background.
        let first = self.enqueue(op.clone());
        let shared = self.clone();
        self.marks.spawn(async move {
            let by = tokio::time::Instant::now() + MARK_LIMIT;
            if let Some(answer) = first
                && Self::outcome(answer, by, &shared.errors).await.is_some()
            {
                return;
            }
            for wait in [100, 500, 2000] {
                tokio::time::sleep(Duration::from_millis(wait)).await;
                if shared.apply(op.clone(), by).await.is_some() {
                    return;
                }
            }
            tracing::warn!("a push's de-duplication record could not be written; a re-send on another node may be sent again");
        });
    }

    /// Waits for the marks still being written, then closes the writer's connections
    /// (stopping).
    pub async fn drain(&self) {
        self.marks.close();
        self.marks.wait().await;
        self.writer.close().await;
    }
}

/// A writer: what waits in its queue goes in one batch, ordered by key (two nodes' batches lock
/// rows in the same order). Each key has its writer, so its operations are applied in the
/// order they were queued, while other writers' batches are under way. A batch that fails is
/// applied again one operation at a time, so one bad operation does not sink the rest.
async fn write(writer: PushClaimWriter, mut queue: mpsc::Receiver<Job>, errors: Counter) {
    let mut batch = Vec::with_capacity(BATCH);
    loop {
        if queue.recv_many(&mut batch, BATCH).await == 0 {
            return;
        }
        // Stable: one key's operations keep their order.
        batch.sort_by_key(|job: &Job| *job.op.key());
        let ops: Vec<PushClaimOp> = batch.iter().map(|j| j.op.clone()).collect();
        match writer.apply(&ops).await {
            Ok(outcomes) => {
                for (job, outcome) in batch.drain(..).zip(outcomes) {
                    let _ = job.done.send(Some(outcome));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, ops = batch.len(), "a batch of push claims failed; applying them one by one");
                for job in batch.drain(..) {
                    let outcome = match writer.apply(std::slice::from_ref(&job.op)).await {
                        Ok(mut outcomes) => outcomes.pop(),
                        Err(e) => {
                            errors.inc();
                            tracing::warn!(error = %e, "push de-duplication cannot reach the store; this push goes on with this node's memory only");
                            None
                        }
                    };
                    let _ = job.done.send(outcome);
                }
            }
        }
    }
}

/// Removes claims past their time, beside the writer (never holding it up): one pass over the
/// table every [`PURGE_EVERY`], a 256th of the keys at a time, spread over the period.
async fn purge(store: Store, clock: Arc<dyn Clock>) {
    let mut every = tokio::time::interval(PURGE_EVERY / 256);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for first in (0..=u8::MAX).cycle() {
        every.tick().await;
        if let Err(e) = store
            .purge_push_claims_slice(UnixMillis::now(&*clock), first)
            .await
        {
            tracing::warn!(error = %e, "cannot remove old push claims");
        }
    }
}
