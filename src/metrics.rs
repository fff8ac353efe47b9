//! Metrics (feature `metrics`), in one style for every layer, through the
//! [`metrics`](https://docs.rs/metrics) facade: whatever recorder the application installs (a
//! Prometheus exporter, say) receives them.
//!
//! Every series of a layer carries the label `name`: the layer's [`name`] (`.name("payments")` on
//! its builder), so that two layers of one kind in one application report apart. Series of the
//! Redis connection carry `server` instead (the URL without credentials). Other labels say which
//! case a count is (`reason`, `to`, `op`, ...). Each metric is described, with its unit, to the
//! recorder when a layer is built.
//!
//! | metric | type | labels | what |
//! |---|---|---|---|
//! | `rampart_rate_limit_admitted_total` | counter | `name` | requests a rate limiter's decision admitted |
//! | `rampart_rate_limit_rejected_total` | counter | `name`, `reason` | requests refused: `rate_limited`, `cost_too_high`, `backend_unavailable`, `missing_key` |
//! | `rampart_rate_limit_shadow_rejected_total` | counter | `name`, `policy` | requests a shadow limit (`policy`), or any limit in a layer's shadow mode, would have refused; admitted |
//! | `rampart_rate_limit_unknown_tier_total` | counter | `name` | requests whose tier resolver named a tier the layer does not have (the default limits applied) |
//! | `rampart_rate_limit_backend_fallback_total` | counter | `name`, `policy` | decisions Redis could not make, left to the failure policy |
//! | `rampart_rate_limit_backend_repaired_total` | counter | `name` | unreadable Redis states replaced with fresh ones |
//! | `rampart_rate_limit_lease_calls_total` | counter | `name` | Redis round trips of a leased limiter (`backend::redis::lease`) |
//! | `rampart_rate_limit_lease_units_total` | counter | `name` | units carved from quotas by those round trips |
//! | `rampart_rate_limit_lease_stranded_units_total` | counter | `name` | leased units that expired unused (counted in Redis, never admitted) |
//! | `rampart_circuit_state` | gauge | `name` (`key`) | 0 closed, 1 open, 2 half-open, 3 forced open, 4 disabled (per-key circuits: only with `key_in_metrics`) |
//! | `rampart_circuit_transitions_total` | counter | `name` (`key`), `to` | state changes |
//! | `rampart_circuit_rejected_total` | counter | `name` (`key`) | calls refused by an open circuit |
//! | `rampart_circuit_failures_total` | counter | `name` (`key`) | calls classified as failures |
//! | `rampart_circuit_shared_fallback_total` | counter | `name` | syncs with the shared store that failed (the replica ran its own circuit) |
//! | `rampart_retry_attempts_total` | counter | `name`, `reason` | retries made |
//! | `rampart_retry_budget_exhausted_total` | counter | `name` | retries the budget did not allow |
//! | `rampart_retry_gave_up_total` | counter | `name`, `cause` | requests that ended with a failure they were not retried after |
//! | `rampart_retry_delay_seconds` | histogram (seconds) | `name` | the wait before each retry scheduled |
//! | `rampart_cache_hits_total`, `_misses_total`, `_stale_total`, `_stale_if_error_total`, `_coalesced_total`, `_unusable_total` | counter | `name` | requests by how the cache answered |
//! | `rampart_cache_fill_duration_seconds` | histogram (seconds) | `name` | each fill: from the upstream call made on a miss to its response captured (stored or not) or its failure |
//! | `rampart_cache_bytes` | gauge (bytes) | `name` | bytes of entries held in memory |
//! | `rampart_cache_evictions_total` | counter | `name`, `reason` | entries evicted from memory: `size`, `expired` |
//! | `rampart_cache_backend_errors_total` | counter | `name`, `op` | store operations that failed |
//! | `rampart_cache_not_stored_total` | counter | `name`, `reason` | answers not stored |
//! | `rampart_cache_invalidations_total` | counter | `name`, `what` | invalidations: `key`, `prefix`, `all` |
//! | `rampart_cache_undecodable_total` | counter | `name`, `reason` | Redis entries that could not be read (served as misses) |
//! | `rampart_redis_up` | gauge | `server` | 1 while calls reach Redis, 0 while they fail |
//! | `rampart_redis_errors_total` | counter | `server`, `kind` | calls that failed: `unreachable`, `timeout`, `data`, `other` |
//! | `rampart_redis_reconnects_total` | counter | `server` | connections replaced because they went silent or reached a node that takes no writes |
//! | `rampart_redis_call_duration_seconds` | histogram (seconds) | `server` | each script or command a store sends to Redis (a `NOSCRIPT` resend included in its call), until its answer, error or timeout |
//!
//! [`name`]: crate::rate_limit::RateLimitBuilder::name

// Each layer uses the part it needs; with only some layers enabled, the rest is unused.
#![cfg_attr(
    not(all(
        feature = "rate-limit",
        feature = "circuit-breaker",
        feature = "retry",
        feature = "cache"
    )),
    allow(dead_code)
)]

use ::metrics::{Counter, Gauge, Histogram, Key, Label, Level, Metadata, SharedString, Unit};

/// The label every layer's series carry: the layer's name.
pub(crate) const NAME: &str = "name";

/// The metadata of every metric of the crate.
pub(crate) static METADATA: Metadata<'static> =
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()));

/// The key of `metric` for the layer named `name`, with more labels.
pub(crate) fn key(
    metric: &'static str,
    name: impl Into<SharedString>,
    labels: &[(&'static str, &'static str)],
) -> Key {
    let mut all = Vec::with_capacity(labels.len() + 1);
    all.push(Label::new(NAME, name));
    all.extend(labels.iter().map(|(k, v)| Label::from_static_parts(k, v)));
    Key::from_parts(metric, all)
}

/// The key of `metric` with `labels` as they are (for series that are not a layer's).
pub(crate) fn key_with(metric: &'static str, labels: Vec<Label>) -> Key {
    Key::from_parts(metric, labels)
}

/// The counter `key`, from the recorder installed now (keep the handle on a hot path).
pub(crate) fn counter(key: &Key) -> Counter {
    ::metrics::with_recorder(|r| r.register_counter(key, &METADATA))
}

/// The gauge `key`, from the recorder installed now.
pub(crate) fn gauge(key: &Key) -> Gauge {
    ::metrics::with_recorder(|r| r.register_gauge(key, &METADATA))
}

/// The histogram `key`, from the recorder installed now.
pub(crate) fn histogram(key: &Key) -> Histogram {
    ::metrics::with_recorder(|r| r.register_histogram(key, &METADATA))
}

/// Adds one to `metric` for the layer named `name`, with more labels (for rare events: it builds
/// the key each time).
pub(crate) fn count(
    metric: &'static str,
    name: impl Into<SharedString>,
    labels: &[(&'static str, &'static str)],
) {
    counter(&key(metric, name, labels)).increment(1);
}

/// Every metric, its unit and what it counts, as the table in the module documentation says.
const DESCRIPTIONS: &[(&str, Option<Unit>, &str)] = &[
    (
        "rampart_rate_limit_admitted_total",
        Some(Unit::Count),
        "requests admitted by a rate limiter's decision",
    ),
    (
        "rampart_rate_limit_rejected_total",
        Some(Unit::Count),
        "requests refused by a rate limiter",
    ),
    (
        "rampart_rate_limit_shadow_rejected_total",
        Some(Unit::Count),
        "requests a shadow limit would have refused, admitted",
    ),
    (
        "rampart_rate_limit_unknown_tier_total",
        Some(Unit::Count),
        "requests whose tier resolver named an unknown tier (default limits applied)",
    ),
    (
        "rampart_rate_limit_backend_fallback_total",
        Some(Unit::Count),
        "rate-limit decisions the backend could not make, left to the failure policy",
    ),
    (
        "rampart_rate_limit_backend_repaired_total",
        Some(Unit::Count),
        "unreadable rate-limit states in Redis replaced with fresh ones",
    ),
    (
        "rampart_rate_limit_lease_calls_total",
        Some(Unit::Count),
        "redis round trips of a leased rate limiter",
    ),
    (
        "rampart_rate_limit_lease_units_total",
        Some(Unit::Count),
        "units carved from rate-limit quotas in redis by lease calls",
    ),
    (
        "rampart_rate_limit_lease_stranded_units_total",
        Some(Unit::Count),
        "leased rate-limit units that expired unused: counted in redis, never admitted",
    ),
    (
        "rampart_circuit_state",
        None,
        "circuit state: 0 closed, 1 open, 2 half-open, 3 forced open, 4 disabled",
    ),
    (
        "rampart_circuit_transitions_total",
        Some(Unit::Count),
        "circuit state changes",
    ),
    (
        "rampart_circuit_rejected_total",
        Some(Unit::Count),
        "calls refused by an open circuit",
    ),
    (
        "rampart_circuit_failures_total",
        Some(Unit::Count),
        "calls classified as failures",
    ),
    (
        "rampart_circuit_shared_fallback_total",
        Some(Unit::Count),
        "failed syncs of a shared circuit (the replica ran its own circuit meanwhile)",
    ),
    (
        "rampart_retry_attempts_total",
        Some(Unit::Count),
        "retries made",
    ),
    (
        "rampart_retry_budget_exhausted_total",
        Some(Unit::Count),
        "retries the retry budget did not allow",
    ),
    (
        "rampart_retry_gave_up_total",
        Some(Unit::Count),
        "requests that ended with a failure they were not retried after",
    ),
    (
        "rampart_retry_delay_seconds",
        Some(Unit::Seconds),
        "the wait before each retry scheduled",
    ),
    (
        "rampart_cache_hits_total",
        Some(Unit::Count),
        "requests answered from the cache",
    ),
    (
        "rampart_cache_misses_total",
        Some(Unit::Count),
        "requests the cache had no fresh entry for",
    ),
    (
        "rampart_cache_stale_total",
        Some(Unit::Count),
        "requests answered with a stale entry while it was refreshed",
    ),
    (
        "rampart_cache_stale_if_error_total",
        Some(Unit::Count),
        "requests answered with a stale entry because the upstream failed",
    ),
    (
        "rampart_cache_coalesced_total",
        Some(Unit::Count),
        "requests that shared another request's upstream call",
    ),
    (
        "rampart_cache_unusable_total",
        Some(Unit::Count),
        "requests the cache could not key or serve",
    ),
    (
        "rampart_cache_fill_duration_seconds",
        Some(Unit::Seconds),
        "time from a cache miss's upstream call to its response captured or its failure",
    ),
    (
        "rampart_cache_bytes",
        Some(Unit::Bytes),
        "bytes of cache entries held in memory",
    ),
    (
        "rampart_cache_evictions_total",
        Some(Unit::Count),
        "cache entries evicted from memory",
    ),
    (
        "rampart_cache_backend_errors_total",
        Some(Unit::Count),
        "cache store operations that failed",
    ),
    (
        "rampart_cache_not_stored_total",
        Some(Unit::Count),
        "upstream answers the cache did not store",
    ),
    (
        "rampart_cache_invalidations_total",
        Some(Unit::Count),
        "cache invalidations",
    ),
    (
        "rampart_cache_undecodable_total",
        Some(Unit::Count),
        "cache entries in Redis that could not be read",
    ),
    (
        "rampart_redis_up",
        None,
        "1 while calls reach Redis, 0 while they fail",
    ),
    (
        "rampart_redis_errors_total",
        Some(Unit::Count),
        "calls to Redis that failed",
    ),
    (
        "rampart_redis_reconnects_total",
        Some(Unit::Count),
        "connections to Redis replaced because they stopped answering",
    ),
    (
        "rampart_redis_call_duration_seconds",
        Some(Unit::Seconds),
        "time a store's call to Redis took, until its answer, error or timeout",
    ),
];

/// Describes every metric (unit and text) to the recorder installed now. Layers call it when
/// they are built; a recorder installed later learns the metrics without their descriptions.
pub(crate) fn describe() {
    ::metrics::with_recorder(|r| {
        for (metric, unit, text) in DESCRIPTIONS {
            let key = ::metrics::KeyName::from_const_str(metric);
            let text = SharedString::const_str(text);
            if metric.ends_with("_total") {
                r.describe_counter(key, *unit, text);
            } else if metric.ends_with("_seconds") {
                r.describe_histogram(key, *unit, text);
            } else {
                r.describe_gauge(key, *unit, text);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_the_name_label_first() {
        let k = key(
            "rampart_cache_hits_total",
            "summaries",
            &[("reason", "size")],
        );
        let labels: Vec<_> = k.labels().map(|l| (l.key(), l.value())).collect();
        assert_eq!(labels, [("name", "summaries"), ("reason", "size")]);
    }

    #[test]
    fn every_description_has_a_unit_or_is_a_state_gauge() {
        for (metric, unit, text) in DESCRIPTIONS {
            assert!(metric.starts_with("rampart_"), "{metric}");
            assert!(
                !text.is_empty() && !text.starts_with(char::is_uppercase),
                "{metric}: lowercase text"
            );
            assert!(unit.is_some() || !metric.ends_with("_total"), "{metric}");
            assert_eq!(
                metric.ends_with("_seconds"),
                *unit == Some(Unit::Seconds),
                "{metric}: histograms are in seconds and named so"
            );
        }
    }
}
