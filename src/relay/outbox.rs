//! A socket's outbound queue, bounded in bytes: what its subscriptions hand it, drained by
//! the socket's task. A client that does not read cannot make the daemon hold more than its
//! budget; one that stays behind for [`SLOW_CLIENT`] is closed.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::close_code::TOO_SLOW;

/// How long a subscription waits for room in its socket's queue before the socket is closed.
const SLOW_CLIENT: Duration = Duration::from_secs(30);

/// What subscriptions hand their socket: a frame, holding its share of the socket's byte
/// budget until written, or a request to close.
pub enum Outgoing {
    Frame(String, OwnedSemaphorePermit),
    Close(u16, &'static str),
}

/// A socket's queue, bounded in bytes: a client that does not read cannot make the daemon
/// hold more than the budget for it; after [`SLOW_CLIENT`] it is closed instead.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Outgoing>,
    budget: Arc<Semaphore>,
    capacity: u32,
}

impl Outbox {
    pub fn new(capacity_bytes: usize) -> (Outbox, mpsc::Receiver<Outgoing>) {
        let capacity = u32::try_from(capacity_bytes).unwrap_or(u32::MAX).max(1);
        let (tx, rx) = mpsc::channel(4096);
        (
            Outbox {
                tx,
                budget: Arc::new(Semaphore::new(capacity as usize)),
                capacity,
            },
            rx,
        )
    }

    /// Queues a frame. `false` when the subscription should end: cancelled, the socket gone,
    /// or the client too slow (then the socket is asked to close).
    pub async fn send(&self, frame: String, cancel: &CancellationToken) -> bool {
        let need = u32::try_from(frame.len())
            .unwrap_or(u32::MAX)
            .clamp(1, self.capacity);
        let permit = tokio::select! {
            biased;
            _ = cancel.cancelled() => return false,
            p = tokio::time::timeout(SLOW_CLIENT, self.budget.clone().acquire_many_owned(need)) => p,
        };
        match permit {
            Ok(Ok(permit)) => self.tx.send(Outgoing::Frame(frame, permit)).await.is_ok(),
            Ok(Err(_)) => false,
            Err(_) => {
                self.close(TOO_SLOW, "the socket does not read what it is sent");
                false
            }
        }
    }

    /// Asks the socket to close.
    pub fn close(&self, code: u16, reason: &'static str) {
        let _ = self.tx.try_send(Outgoing::Close(code, reason));
    }
}
