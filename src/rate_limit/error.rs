//! Refusals made by the rate limiter.

use std::fmt;
use std::time::Duration;

use super::Decision;
use crate::key::KeyError;
use crate::rejection::{Rejection, RejectionKind};

/// The request was refused because its key is over quota.
///
/// Carries the decision through accessors; in HTTP mode it becomes a 429 with `Retry-After` and the
/// `RateLimit` / `RateLimit-Policy` fields, in gRPC mode `RESOURCE_EXHAUSTED` with retry info.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimited {
    decision: Decision,
    policy: Policy,
}

impl RateLimited {
    /// A refusal for `decision` (which should be a denial) under `policy`.
    pub(crate) const fn new(decision: Decision, policy: Policy) -> Self {
        Self { decision, policy }
    }

    /// How long until the same request would be admitted.
    pub fn retry_after(&self) -> Duration {
        self.decision.retry_after()
    }

    /// The quota's limit.
    pub fn limit(&self) -> u32 {
        self.decision.limit()
    }

    /// Requests left in the quota: always 0 for a refusal.
    pub fn remaining(&self) -> u32 {
        self.decision.remaining()
    }

    /// How long until the full quota is available again.
    pub fn reset(&self) -> Duration {
        self.decision.reset()
    }

    /// The refusing limit's period, as configured (`Quota::with_period(5, 500ms)`: 500 ms).
    ///
    /// The `RateLimit-Policy` field states its window in whole seconds: a period that is not one
    /// is stated there over its whole seconds rounded up, with the quota scaled down to match
    /// (`q=10;w=1` for 5 per 500 ms).
    pub fn period(&self) -> Duration {
        Duration::from_nanos(self.policy.period)
    }

    /// The name of the limit that refused, as in the `RateLimit-Policy` field (the layer's name
    /// for a layer built with one [`quota`](super::RateLimitBuilder::quota)).
    pub fn policy(&self) -> &'static str {
        self.policy.name
    }

    /// The whole decision.
    pub fn decision(&self) -> &Decision {
        &self.decision
    }
}

impl fmt::Display for RateLimited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("rate limit exceeded")
    }
}

impl std::error::Error for RateLimited {}

impl Rejection for RateLimited {
    fn kind(&self) -> RejectionKind {
        RejectionKind::RateLimited
    }

    fn retry_after(&self) -> Option<Duration> {
        Some(self.decision.retry_after())
    }

    #[cfg(feature = "http")]
    fn write_headers(&self, headers: &mut http::HeaderMap) {
        super::headers::write_rate_limit(headers, &self.policy, &self.decision);
    }
}

/// The request carried nothing to key the limit on, and the layer refuses such requests
/// ([`MissingKey::Reject`](super::MissingKey::Reject), the default).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyMissing {
    cause: KeyError,
}

impl KeyMissing {
    pub(crate) const fn new(cause: KeyError) -> Self {
        Self { cause }
    }

    /// Why no key was found, and how to fix it.
    pub fn reason(&self) -> &'static str {
        self.cause.reason()
    }
}

/// Says only that the key is missing: this text reaches clients (in the HTTP and gRPC refusals),
/// and the cause (how the server is deployed, what to fix) is the server's business. The cause is
/// [`reason`](KeyMissing::reason) and the error's `source`, and the layer logs it (a warning, at
/// most once per 10 s).
impl fmt::Display for KeyMissing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("rate limit key missing")
    }
}

impl std::error::Error for KeyMissing {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.cause)
    }
}

impl Rejection for KeyMissing {
    fn kind(&self) -> RejectionKind {
        RejectionKind::KeyMissing
    }
}

/// The request asks for more units than a limit could ever admit at once (its cost is above the
/// limit's burst): waiting does not help, so this is not a 429 but HTTP 413 (Content Too Large),
/// gRPC `OUT_OF_RANGE`, with no `Retry-After`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CostTooHigh {
    cost: u32,
    capacity: u32,
    policy: &'static str,
}

impl CostTooHigh {
    pub(crate) const fn new(cost: u32, capacity: u32, policy: &'static str) -> Self {
        Self {
            cost,
            capacity,
            policy,
        }
    }

    /// The units the request asked for.
    pub fn cost(&self) -> u32 {
        self.cost
    }

    /// The most units the limit admits at once (its burst).
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// The name of the limit that cannot admit it.
    pub fn policy(&self) -> &'static str {
        self.policy
    }
}

impl fmt::Display for CostTooHigh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "request cost {} exceeds the rate limit's capacity of {} at once",
            self.cost, self.capacity
        )
    }
}

impl std::error::Error for CostTooHigh {}

impl Rejection for CostTooHigh {
    fn kind(&self) -> RejectionKind {
        RejectionKind::CostTooHigh
    }
}

/// How a limiter describes itself in headers: its name, limit and window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Policy {
    pub(crate) name: &'static str,
    /// The limit's period in nanoseconds (the header's window is built from it once, in the
    /// `RateLimit-Policy` value).
    pub(crate) period: crate::clock::Nanos,
    /// Also send `X-RateLimit-Limit` / `-Remaining` / `-Reset`.
    pub(crate) legacy_headers: bool,
    /// The `RateLimit-Policy` value, built once per distinct policy (cloning it copies a pointer),
    /// and the `RateLimit` values kept for it.
    #[cfg(feature = "http")]
    pub(crate) header: &'static super::headers::PolicyHeader,
}
