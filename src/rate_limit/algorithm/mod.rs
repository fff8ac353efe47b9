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

use std::time::Duration;

use crate::clock::Nanos;
use crate::rate_limit::SetLimit;

/// The outcome of one rate-limit check.
///
/// Returned by every [`RateLimitStore`](super::RateLimitStore), and carried by
/// [`RateLimited`](super::error::RateLimited) when the request was refused.
#[derive(Clone, Copy, Debug)]
pub struct Decision {
    allowed: bool,
    limit: u32,
    // `remaining` is `slack / unit`, divided only when asked for: most admitted requests never are,
    // and the division (128-bit for the sliding window) would otherwise be on every hot path.
    slack: u64,
    unit: u64,
    reset: Nanos,
    retry_after: Nanos,
    counted: bool,
    /// Index in the decided set of the limit whose figures these are.
    binding: u8,
    /// Bit `i` set: the set's shadow limit `i` would have refused.
    shadow_refused: u8,
    /// Refused because no state could ever admit the cost asked (more than the burst).
    over_capacity: bool,
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
            allowed: true,
            limit,
            slack,
            unit,
            reset,
            retry_after: 0,
            counted: true,
            binding: 0,
            shadow_refused: 0,
            over_capacity: false,
        }
    }

    /// An admission that was not counted: a shared backend could not decide and its failure policy
    /// lets requests through. Carries no quota information, so no `RateLimit` fields are sent.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) const fn uncounted(limit: u32) -> Self {
        Self {
            allowed: true,
            limit,
            slack: limit as u64,
            unit: 1,
            reset: 0,
            retry_after: 0,
            counted: false,
            binding: 0,
            shadow_refused: 0,
            over_capacity: false,
        }
    }

    #[inline]
    pub(crate) const fn refused(limit: u32, reset: Nanos, retry_after: Nanos) -> Self {
        Self {
            allowed: false,
            limit,
            slack: 0,
            unit: 1,
            reset,
            retry_after,
            counted: true,
            binding: 0,
            shadow_refused: 0,
            over_capacity: false,
        }
    }

    /// A refusal of a cost no state could ever admit (more units than the burst): no retry helps.
    #[inline]
    pub(crate) const fn over_capacity(limit: u32, reset: Nanos) -> Self {
        Self {
            over_capacity: true,
            ..Self::refused(limit, reset, 0)
        }
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
    /// figures stay, the retry time goes.
    #[inline]
    pub(crate) const fn admitted_anyway(mut self) -> Self {
        self.allowed = true;
        self.retry_after = 0;
        self.over_capacity = false;
        self
    }

    /// The slack in units of `unit` (for comparing remaining counts without dividing).
    #[inline]
    #[cfg_attr(not(feature = "memory"), allow(dead_code))]
    pub(crate) const fn slack_parts(&self) -> (u64, u64) {
        (self.slack, self.unit)
    }

    /// Whether the request may proceed.
    pub const fn is_allowed(&self) -> bool {
        self.allowed
    }

    /// Whether the request was counted against the quota. `false` only when a shared backend could
    /// not decide and its failure policy let the request through
    /// ([`FailurePolicy::Open`](crate::backend::redis::FailurePolicy::Open)); such admissions carry
    /// no `RateLimit` header fields.
    pub const fn is_counted(&self) -> bool {
        self.counted
    }

    /// The quota's limit (requests per period).
    pub const fn limit(&self) -> u32 {
        self.limit
    }

    /// Requests that would still be admitted right now, after this one.
    pub const fn remaining(&self) -> u32 {
        let r = self.slack / self.unit;
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
        self.over_capacity
    }

    /// Time until the full quota is available again.
    pub const fn reset(&self) -> Duration {
        Duration::from_nanos(self.reset)
    }

    /// For a refused request, the time after which the same request would be admitted (if nothing
    /// else arrives in between); zero for an admitted one.
    pub const fn retry_after(&self) -> Duration {
        Duration::from_nanos(self.retry_after)
    }
}

impl Decision {
    /// The decision over a set from each limit's own `decisions` (in the set's order; `admitted`:
    /// whether every enforced limit admitted): the binding limit's figures, as
    /// [`RateLimitStore`](super::RateLimitStore) defines it. Shared by the stores, so they agree.
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
        self.allowed == other.allowed
            && self.limit == other.limit
            && self.remaining() == other.remaining()
            && self.reset == other.reset
            && self.retry_after == other.retry_after
            && self.counted == other.counted
            && self.binding == other.binding
            && self.shadow_refused == other.shadow_refused
            && self.over_capacity == other.over_capacity
    }
}

impl Eq for Decision {}

fn nanos(d: Duration) -> Nanos {
    crate::clock::duration_to_nanos(d)
}
