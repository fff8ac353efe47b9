//! The counting algorithms, as pure functions of (state, now).
//!
//! Both are written so a backend can run them atomically: the in-memory store keeps the state in
//! an atomic word (GCRA) or a tiny mutex (sliding window); the Redis store runs the same arithmetic in a
//! Lua script. Keeping the arithmetic here, free of I/O and clocks, lets it be tested exhaustively.

// The atomic cells are the in-memory store's; other backends run the same arithmetic remotely.
#[cfg_attr(not(feature = "memory"), allow(dead_code))]
pub(crate) mod gcra;
#[cfg_attr(not(feature = "memory"), allow(dead_code))]
pub(crate) mod sliding_window;

use std::fmt;
use std::time::Duration;

use crate::clock::Nanos;
use crate::rate_limit::SetLimit;

/// The outcome of one rate-limit check.
///
/// Returned by every [`RateLimitStore`](super::RateLimitStore), and carried by
/// [`RateLimited`](super::error::RateLimited) when the request was refused.
#[derive(Clone, Copy)]
pub struct Decision {
    // 32 bytes, copied from the store to the service and into the response future on every
    // request: the slack and the retry time share a word (an admission has no retry time, a
    // refusal no slack), the three flags a byte.
    /// When admitted, the slack: `remaining` is `slack / unit`, divided only when asked for (most
    /// admitted requests never are, and the division, 128-bit for the sliding window, would
    /// otherwise be on every hot path). When refused, the retry time.
    slack_or_retry: u64,
    unit: u64,
    reset: Nanos,
    limit: u32,
    /// [`ALLOWED`], [`COUNTED`], [`OVER_CAPACITY`].
    flags: u8,
    /// Index in the decided set of the limit whose figures these are.
    binding: u8,
    /// Bit `i` set: the set's shadow limit `i` would have refused.
    shadow_refused: u8,
}

/// The request may proceed.
const ALLOWED: u8 = 1;
/// The request was counted against the quota.
const COUNTED: u8 = 2;
/// Refused because no state could ever admit the cost asked (more than the burst).
const OVER_CAPACITY: u8 = 4;

impl fmt::Debug for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decision")
            .field("allowed", &self.is_allowed())
            .field("limit", &self.limit)
            .field("remaining", &self.remaining())
            .field("reset", &self.reset())
            .field("retry_after", &self.retry_after())
            .field("counted", &self.is_counted())
            .field("binding", &self.binding)
            .field("shadow_refused", &self.shadow_refused)
            .field("over_capacity", &self.exceeds_capacity())
            .finish()
    }
}

impl Decision {
    /// A request that was admitted.
    ///
    /// `remaining` is how many more would be admitted right now; `reset` how long until the full
    /// quota is available again.
    pub fn allowed(limit: u32, remaining: u32, reset: Duration) -> Self {
        Self::admitted(limit, u64::from(remaining), 1, nanos(reset))
    }

    /// A request that was refused; it could succeed after `retry_after`.
    pub fn denied(limit: u32, retry_after: Duration, reset: Duration) -> Self {
        Self::refused(limit, nanos(reset), nanos(retry_after))
    }

    /// An admission with `slack / unit` requests remaining.
    #[inline]
    pub(crate) const fn admitted(limit: u32, slack: u64, unit: u64, reset: Nanos) -> Self {
        Self {
            slack_or_retry: slack,
            unit,
            reset,
            limit,
            flags: ALLOWED | COUNTED,
            binding: 0,
            shadow_refused: 0,
        }
    }

    /// An admission that was not counted: a shared backend could not decide and its failure policy
    /// lets requests through. Carries no quota information, so no `RateLimit` fields are sent.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) const fn uncounted(limit: u32) -> Self {
        Self {
            flags: ALLOWED,
            ..Self::admitted(limit, limit as u64, 1, 0)
        }
    }

    #[inline]
    pub(crate) const fn refused(limit: u32, reset: Nanos, retry_after: Nanos) -> Self {
        Self {
            slack_or_retry: retry_after,
            unit: 1,
            reset,
            limit,
            flags: COUNTED,
            binding: 0,
            shadow_refused: 0,
        }
    }

    /// A refusal of a cost no state could ever admit (more units than the burst): no retry helps.
    #[inline]
    pub(crate) const fn over_capacity(limit: u32, reset: Nanos) -> Self {
        let mut d = Self::refused(limit, reset, 0);
        d.flags |= OVER_CAPACITY;
        d
    }

    /// This decision, as the figures of the set's limit `index`.
    #[inline]
    #[cfg_attr(not(feature = "memory"), allow(dead_code))]
    pub(crate) const fn with_binding(mut self, index: usize) -> Self {
        self.binding = index as u8;
        self
    }

    /// This decision, noting that the set's shadow limits in `mask` (bit `i` for limit `i`) would
    /// have refused.
    #[inline]
    #[cfg_attr(not(feature = "memory"), allow(dead_code))]
    pub(crate) const fn with_shadow_refused(mut self, mask: u8) -> Self {
        self.shadow_refused = mask;
        self
    }

    /// This decision admitted anyway (a shadow limit's refusal, or the layer's shadow mode): the
    /// figures stay, the retry time goes (a refusal had no slack: none remaining).
    #[inline]
    pub(crate) const fn admitted_anyway(mut self) -> Self {
        if !self.is_allowed() {
            self.slack_or_retry = 0;
        }
        self.flags = (self.flags | ALLOWED) & !OVER_CAPACITY;
        self
    }

    /// The slack in units of `unit` (for comparing remaining counts without dividing).
    #[inline]
    #[cfg_attr(not(feature = "memory"), allow(dead_code))]
    pub(crate) const fn slack_parts(&self) -> (u64, u64) {
        (self.slack(), self.unit)
    }

    /// The slack, zero for a refusal.
    #[inline]
    const fn slack(&self) -> u64 {
        if self.is_allowed() {
            self.slack_or_retry
        } else {
            0
        }
    }

    /// Whether the request may proceed.
    pub const fn is_allowed(&self) -> bool {
        self.flags & ALLOWED != 0
    }

    /// Whether the request was counted against the quota. `false` only when a shared backend could
    /// not decide and its failure policy let the request through
    /// ([`FailurePolicy::Open`](crate::backend::redis::FailurePolicy::Open)); such admissions carry
    /// no `RateLimit` header fields.
    pub const fn is_counted(&self) -> bool {
        self.flags & COUNTED != 0
    }

    /// The quota's limit (requests per period).
    pub const fn limit(&self) -> u32 {
        self.limit
    }

    /// Requests that would still be admitted right now, after this one.
    pub const fn remaining(&self) -> u32 {
        let r = self.slack() / self.unit;
        if r > u32::MAX as u64 {
            u32::MAX
        } else {
            r as u32
        }
    }

    /// Which limit of the decided set these figures are: when refused, the refusing enforced limit
    /// with the longest wait; when admitted, the enforced limit with the fewest requests remaining
    /// (ties: the first); 0 for a set of one limit.
    pub const fn policy_index(&self) -> usize {
        self.binding as usize
    }

    /// Whether a shadow limit of the set would have refused (it was admitted anyway).
    pub const fn shadow_refused(&self) -> bool {
        self.shadow_refused != 0
    }

    /// Which shadow limits would have refused: bit `i` for the set's limit `i`.
    pub const fn shadow_refused_mask(&self) -> u8 {
        self.shadow_refused
    }

    /// Whether the request was refused because it asks for more units than the limit could ever
    /// admit at once (a cost above the burst): waiting does not help, so there is no retry time.
    pub const fn exceeds_capacity(&self) -> bool {
        self.flags & OVER_CAPACITY != 0
    }

    /// Time until the full quota is available again.
    pub const fn reset(&self) -> Duration {
        Duration::from_nanos(self.reset)
    }

    /// For a refused request, the time after which the same request would be admitted (if nothing
    /// else arrives in between); zero for an admitted one.
    pub const fn retry_after(&self) -> Duration {
        if self.is_allowed() {
            Duration::ZERO
        } else {
            Duration::from_nanos(self.slack_or_retry)
        }
    }
}

impl Decision {
    /// The decision over a set from each limit's own `decisions` (in the set's order; `admitted`:
    /// whether every enforced limit admitted): the binding limit's figures, as
    /// [`RateLimitStore`](super::RateLimitStore) defines it. The in-memory store folds the same
    /// choice into its loop over the limits and, in debug builds, checks its answer against this.
    #[cfg_attr(not(feature = "memory"), allow(dead_code))]
    pub(crate) fn combine(limits: &[SetLimit], decisions: &[Decision], admitted: bool) -> Decision {
        let fewer = |a: &Decision, b: &Decision| {
            // Fewer requests remaining, as `remaining()` counts them.
            let ((sa, ua), (sb, ub)) = (a.slack_parts(), b.slack_parts());
            (sa / ua) < (sb / ub)
        };
        let mut best: Option<usize> = None;
        for (i, (l, d)) in limits.iter().zip(decisions).enumerate() {
            if l.shadow {
                continue;
            }
            let better = match best {
                None => admitted || !d.is_allowed(),
                Some(b) if !admitted => {
                    let cur = &decisions[b];
                    !d.is_allowed()
                        && (d.exceeds_capacity() && !cur.exceeds_capacity()
                            || d.exceeds_capacity() == cur.exceeds_capacity()
                                && d.retry_after() > cur.retry_after())
                }
                Some(b) => fewer(d, &decisions[b]),
            };
            if better {
                best = Some(i);
            }
        }
        match best {
            Some(i) => decisions[i].with_binding(i),
            None => {
                // Shadow limits only: the one with the fewest remaining, admitted.
                let mut b = 0;
                for i in 1..decisions.len() {
                    if fewer(&decisions[i], &decisions[b]) {
                        b = i;
                    }
                }
                decisions[b].admitted_anyway().with_binding(b)
            }
        }
    }
}

impl PartialEq for Decision {
    fn eq(&self, other: &Self) -> bool {
        self.flags == other.flags
            && self.limit == other.limit
            && self.remaining() == other.remaining()
            && self.reset == other.reset
            && self.retry_after() == other.retry_after()
            && self.binding == other.binding
            && self.shadow_refused == other.shadow_refused
    }
}

impl Eq for Decision {}

fn nanos(d: Duration) -> Nanos {
    crate::clock::duration_to_nanos(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_decision_is_four_words_and_its_shared_word_reads_by_outcome() {
        // Copied from the store to the service and into the response future on every request.
        assert_eq!(std::mem::size_of::<Decision>(), 32);
        let admitted = Decision::admitted(10, 7, 1, 5);
        assert_eq!(
            (admitted.remaining(), admitted.retry_after()),
            (7, Duration::ZERO)
        );
        let refused = Decision::refused(10, 5, 3);
        assert_eq!(
            (refused.remaining(), refused.retry_after()),
            (0, Duration::from_nanos(3))
        );
        // Admitted anyway: a refusal's retry time goes and nothing remains; an admission keeps
        // its slack.
        let anyway = refused.admitted_anyway();
        assert!(anyway.is_allowed() && anyway.is_counted());
        assert_eq!(
            (anyway.remaining(), anyway.retry_after()),
            (0, Duration::ZERO)
        );
        assert_eq!(admitted.admitted_anyway(), admitted);
        let over = Decision::over_capacity(10, 5);
        assert!(over.exceeds_capacity() && !over.admitted_anyway().exceeds_capacity());
        assert!(!Decision::uncounted(10).is_counted());
        assert_eq!(Decision::uncounted(10).remaining(), 10);
    }
}
