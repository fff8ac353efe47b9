//! What a retry layer tells its hooks ([`on_event`](super::RetryBuilder::on_event)).

use std::time::Duration;

use super::policy::GiveUp;
use crate::classify::Reason;
use crate::hooks::Event;

/// An event of a retry layer, as its [hooks](crate::hooks) see it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryEvent {
    /// An attempt failed in a way worth retrying, and a retry is scheduled after `delay`.
    #[non_exhaustive]
    RetryScheduled {
        /// The layer's name.
        name: &'static str,
        /// The attempt that failed: 1 for the first call; the retry is attempt `attempt + 1`.
        attempt: u32,
        /// The wait before the retry (after jitter, the cap and the server's pushback).
        delay: Duration,
        /// What failed.
        reason: Reason,
    },
    /// A retry was not made because the retry budget is spent. A [`GaveUp`](Self::GaveUp) with
    /// [`GiveUp::Budget`] follows.
    #[non_exhaustive]
    BudgetExhausted {
        /// The layer's name.
        name: &'static str,
        /// The attempts made.
        attempts: u32,
        /// What failed last.
        reason: Reason,
    },
    /// A request ends with a failure worth retrying that was not retried: attempts, budget or
    /// deadline exhausted, the server asked not to, or the request cannot be sent again.
    #[non_exhaustive]
    GaveUp {
        /// The layer's name.
        name: &'static str,
        /// The attempts made.
        attempts: u32,
        /// What failed last.
        reason: Reason,
        /// Why it was not retried.
        why: GiveUp,
        /// The same, as the `cause` label of `rampart_retry_gave_up_total` has it (which, for a
        /// request that cannot be sent again, says why: `not_idempotent`, `not_cloneable`).
        cause: &'static str,
    },
}

impl Event for RetryEvent {
    fn layer_name(&self) -> &str {
        match self {
            Self::RetryScheduled { name, .. }
            | Self::BudgetExhausted { name, .. }
            | Self::GaveUp { name, .. } => name,
        }
    }

    /// `retry_scheduled`, `budget_exhausted` or `gave_up`.
    fn kind(&self) -> &'static str {
        match self {
            Self::RetryScheduled { .. } => "retry_scheduled",
            Self::BudgetExhausted { .. } => "budget_exhausted",
            Self::GaveUp { .. } => "gave_up",
        }
    }
}
