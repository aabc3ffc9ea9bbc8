//! Retrying transient provider failures inside brandgate: exponential backoff with jitter,
//! `Retry-After` honoured, everything within the push's deadline. The deadline is shorter than
//! the platform's own 10 s re-send, so brandgate gives up (500) before the platform tries again,
//! never racing it.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

use super::outcome::Attempt;
use crate::backoff::Backoff;

/// How a push retries a transient answer: at most `max_attempts` attempts, waiting `backoff`
/// between them (when the provider gives no `Retry-After`).
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub backoff: Backoff,
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            backoff: Backoff::new(Duration::from_millis(100), Duration::from_secs(2)),
            max_attempts: 6,
        }
    }
}

/// Why retrying stopped with a transient answer (for the log: an operator tells a provider
/// that was down the whole time from one that was merely slow).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GaveUp {
    /// Every attempt allowed was made.
    AttemptsUsed,
    /// The deadline came while an attempt was still running.
    DeadlineReached,
    /// The next wait (backoff or the provider's `Retry-After`) would end past the deadline.
    WaitPastDeadline,
}

impl GaveUp {
    pub fn describe(self) -> &'static str {
        match self {
            GaveUp::AttemptsUsed => "every retry was used before the deadline",
            GaveUp::DeadlineReached => "the deadline came during an attempt",
            GaveUp::WaitPastDeadline => "the next retry would start after the deadline",
        }
    }
}

/// Runs `attempt` until it is not transient, the attempts run out, or the next try could not
/// finish before `deadline`. Returns the last answer, how many attempts were made, and why it
/// stopped when the last answer is transient; `on_retry` is told about each retry (for the
/// metric).
pub async fn run<F, Fut>(
    deadline: Instant,
    policy: RetryPolicy,
    mut on_retry: impl FnMut(&Attempt),
    mut attempt: F,
) -> (Attempt, u32, Option<GaveUp>)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Attempt>,
{
    let mut made = 0;
    loop {
        made += 1;
        let answer = match tokio::time::timeout_at(deadline, attempt()).await {
            Ok(answer) => answer,
            Err(_) => {
                return (
                    Attempt::transient("deadline"),
                    made,
                    Some(GaveUp::DeadlineReached),
                );
            }
        };
        let Attempt::Transient { retry_after, .. } = &answer else {
            return (answer, made, None);
        };
        if made >= policy.max_attempts {
            return (answer, made, Some(GaveUp::AttemptsUsed));
        }
        let wait = retry_after.unwrap_or_else(|| policy.backoff.delay(made));
        // A wait that would end past the deadline is pointless: the platform re-sends anyway.
        // (checked: a provider's Retry-After can be any number.)
        match Instant::now().checked_add(wait) {
            Some(end) if end < deadline => {}
            _ => return (answer, made, Some(GaveUp::WaitPastDeadline)),
        }
        on_retry(&answer);
        tokio::time::sleep(wait).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    fn transient(after: Option<u64>) -> Attempt {
        Attempt::Transient {
            status: Some(503),
            reason: "ServiceUnavailable".into(),
            retry_after: after.map(Duration::from_secs),
        }
    }

    fn delivered() -> Attempt {
        Attempt::Delivered {
            status: 200,
            id: None,
        }
    }

    async fn scripted(
        script: Vec<Attempt>,
        deadline: Duration,
    ) -> (Attempt, u32, u32, Duration, Option<GaveUp>) {
        let script = Mutex::new(VecDeque::from(script));
        let start = Instant::now();
        let mut retries = 0;
        let (last, n, why) = run(
            start + deadline,
            RetryPolicy::default(),
            |_| retries += 1,
            || {
                let next = script.lock().unwrap().pop_front().unwrap();
                async move { next }
            },
        )
        .await;
        (last, n, retries, start.elapsed(), why)
    }

    #[tokio::test(start_paused = true)]
    async fn retries_transient_answers_until_delivered() {
        let (last, n, retries, elapsed, why) = scripted(
            vec![transient(None), transient(Some(1)), delivered()],
            Duration::from_secs(8),
        )
        .await;
        assert_eq!((last, why), (delivered(), None));
        assert_eq!((n, retries), (3, 2));
        // The second wait is the provider's Retry-After.
        assert!(elapsed >= Duration::from_secs(1), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_beyond_the_deadline_gives_up_at_once() {
        let (last, n, _, elapsed, why) = scripted(
            vec![transient(Some(30)), delivered()],
            Duration::from_secs(8),
        )
        .await;
        assert_eq!(last.label(), "transient");
        assert_eq!(why, Some(GaveUp::WaitPastDeadline));
        assert_eq!(n, 1);
        assert!(elapsed < Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_and_dead_token_answers_are_not_retried() {
        let dead = Attempt::DeadToken {
            status: 410,
            reason: "Unregistered".into(),
            since: None,
        };
        let (last, n, _, _, why) =
            scripted(vec![dead.clone(), delivered()], Duration::from_secs(8)).await;
        assert_eq!((last, n, why), (dead, 1, None));
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_used_up_before_the_deadline_say_so() {
        let (last, n, retries, elapsed, why) =
            scripted(vec![transient(None); 7], Duration::from_secs(8)).await;
        assert_eq!((last.label(), n, retries), ("transient", 6, 5));
        assert!(elapsed < Duration::from_secs(8), "{elapsed:?}");
        assert_eq!(why, Some(GaveUp::AttemptsUsed));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_provider_is_cut_off_at_the_deadline() {
        let start = Instant::now();
        let (last, n, why) = run(
            start + Duration::from_secs(3),
            RetryPolicy::default(),
            |_| {},
            std::future::pending::<Attempt>,
        )
        .await;
        assert_eq!((last.label(), n), ("transient", 1));
        assert_eq!(why, Some(GaveUp::DeadlineReached));
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }
}
