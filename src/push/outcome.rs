//! Results by what to do next. A provider's answer to one attempt is an [`Attempt`]; the result
//! of a whole push (retries included) is a [`Delivery`]. A dead device token is data, not an
//! error: the platform is told (403) and the token is recorded.

use std::time::{Duration, SystemTime};

use super::request::Provider;

/// What one provider call said.
#[derive(Debug, Clone, PartialEq)]
pub enum Attempt {
    /// Accepted by the provider (`apns-id` or the FCM message name).
    Delivered { status: u16, id: Option<String> },
    /// The token can never receive again (until the device registers a new one).
    DeadToken {
        status: u16,
        reason: String,
        /// When the provider learned the token was dead (APNs 410 `timestamp`).
        since: Option<SystemTime>,
    },
    /// Worth trying again: throttled, provider trouble, or the connection broke.
    Transient {
        status: Option<u16>,
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Trying again will not help: our credential or request is wrong. Needs an operator.
    Permanent { status: Option<u16>, reason: String },
}

impl Attempt {
    pub fn transient(reason: impl Into<String>) -> Attempt {
        Attempt::Transient {
            status: None,
            reason: reason.into(),
            retry_after: None,
        }
    }

    /// The `outcome` metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Attempt::Delivered { .. } => "delivered",
            Attempt::DeadToken { .. } => "dead_token",
            Attempt::Transient { .. } => "transient",
            Attempt::Permanent { .. } => "permanent",
        }
    }

    /// The provider's reason (or `ok`), for the `reason` metric label and logs.
    pub fn reason(&self) -> &str {
        match self {
            Attempt::Delivered { .. } => "ok",
            Attempt::DeadToken { reason, .. }
            | Attempt::Transient { reason, .. }
            | Attempt::Permanent { reason, .. } => reason,
        }
    }

    /// The provider's HTTP status, when it answered at all.
    pub fn status(&self) -> Option<u16> {
        match self {
            Attempt::Delivered { status, .. } | Attempt::DeadToken { status, .. } => Some(*status),
            Attempt::Transient { status, .. } | Attempt::Permanent { status, .. } => *status,
        }
    }
}

/// The result of one push after every attempt.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub provider: Provider,
    /// The last attempt's answer. A transient answer here means retrying stopped.
    pub last: Attempt,
    pub attempts: u32,
    /// Why retrying stopped, when the last answer is transient.
    pub gave_up: Option<super::retry::GaveUp>,
    /// Set when nothing was sent because this push was already delivered.
    pub duplicate: bool,
}

impl Delivery {
    pub fn delivered(&self) -> bool {
        matches!(self.last, Attempt::Delivered { .. })
    }
}
