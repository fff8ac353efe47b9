//! The analytics data: metrics, events, active users and rejected requests, in memory or in Redis.
//!
//! Both stores keep the same data and answer the same questions; the app picks Redis when
//! `REDIS_URL` is set. In Redis every write is one atomic script (so replicas sharing it never see
//! half a write), and every read one round trip. A write that cannot be stored is an error, answered
//! 503 by the API: an accepted (201/202) write has been stored.
//!
//! Shared with `examples/grpc_analytics` (included by path).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

mod active;
pub(crate) mod blocks;
pub(crate) mod distinct;
mod in_memory;
mod in_redis;

pub(crate) use in_memory::MemoryStorage;
pub(crate) use in_redis::RedisStorage;

/// By default at most this many metrics are kept (in memory or in Redis; `MAX_STORED_METRICS`):
/// each one stored past it forgets the oldest stored, of any type. A type whose metrics are all
/// forgotten is forgotten with its all-time aggregate, so attacker-chosen types cannot grow the
/// state past this bound either. Writes are never refused for room.
pub(crate) const MAX_METRICS: usize = 1_000_000;
/// At most this many platforms are told apart (in memory and in Redis); events from platforms seen
/// after them count as [`OTHER`], so attacker-chosen platforms cannot grow the state or the cost
/// of the dashboard's summary.
pub(crate) const MAX_PLATFORMS: usize = 64;
/// At most this many event types are counted apart; events of types seen after them count as
/// [`OTHER`].
pub(crate) const MAX_EVENT_TYPES: usize = 1_000;
/// The platform and event type that stand for those past the bounds.
pub(crate) const OTHER: &str = "other";
/// "Active" users and the rejection count look back this far.
pub(crate) const ACTIVE_WINDOW: Duration = Duration::from_secs(300);
/// Per-minute history (active users, rejections) is kept this long.
pub(crate) const HISTORY_RETENTION_MINUTES: i64 = 25 * 60;
/// The platform of events whose payload names none.
pub(crate) const UNKNOWN_PLATFORM: &str = "unknown";

/// Whether `t` can be a metric type, an event type or a platform: 1 to 100 characters (as the
/// reference service takes them), none of them a control character.
pub(crate) fn valid_metric_type(t: &str) -> bool {
    !t.is_empty() && t.chars().count() <= 100 && !t.chars().any(char::is_control)
}

/// A submitted measurement.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub(crate) struct Metric {
    pub(crate) timestamp: DateTime<Utc>,
    pub(crate) value: f64,
    #[serde(rename = "type")]
    pub(crate) metric_type: String,
}

/// What an event contributes to the statistics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct EventRecord {
    pub(crate) user_id: u64,
    pub(crate) event_type: String,
    pub(crate) platform: String,
}

/// Count, average, min, max and latest value of a metric type (zeros when empty).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub(crate) struct Summary {
    pub(crate) count: u64,
    pub(crate) average: f64,
    pub(crate) min: f64,
    pub(crate) max: f64,
    pub(crate) latest: f64,
}

impl Summary {
    fn of<'a>(metrics: impl IntoIterator<Item = &'a Metric>) -> Self {
        let mut acc = Aggregate::default();
        for m in metrics {
            acc.add(m);
        }
        acc.summary()
    }
}

/// A running aggregate of one metric type.
#[derive(Clone, Debug, Default)]
struct Aggregate {
    count: u64,
    /// The sum, for an exact average; and the running mean, for when finite values overflow the
    /// sum (two values near `f64::MAX` made the average infinite, and JSON `null`).
    sum: f64,
    mean: f64,
    min: f64,
    max: f64,
    /// The value with the latest timestamp (the last submitted among equal timestamps).
    latest: Option<(DateTime<Utc>, f64)>,
}

impl Aggregate {
    fn add(&mut self, m: &Metric) {
        if self.count == 0 {
            self.min = m.value;
            self.max = m.value;
        } else {
            self.min = self.min.min(m.value);
            self.max = self.max.max(m.value);
        }
        self.count += 1;
        self.sum += m.value;
        self.mean = running_mean(self.mean, m.value, self.count);
        if self.latest.is_none_or(|(t, _)| m.timestamp >= t) {
            self.latest = Some((m.timestamp, m.value));
        }
    }

    fn summary(&self) -> Summary {
        if self.count == 0 {
            return Summary::default();
        }
        Summary {
            count: self.count,
            average: average(self.sum, self.mean, self.count),
            min: self.min,
            max: self.max,
            latest: self.latest.map_or(0.0, |(_, v)| v),
        }
    }
}

/// Users with events in the last five minutes, by platform, and requests rejected in that time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Activity {
    pub(crate) active_users: u64,
    pub(crate) by_platform: BTreeMap<String, u64>,
    pub(crate) rejected: u64,
}

/// What a history series is of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Series {
    /// Distinct users with events in each interval: counted as Redis's `PFCOUNT` counts them (in
    /// memory too), exactly for small numbers and within about 1% past a few thousand.
    ActiveUsers,
    /// Requests rejected (4xx) in each interval.
    ApiRejections,
    /// The average value of a metric type in each interval (by the metrics' own timestamps).
    Metric(String),
}

/// One point of a history series: the start of an interval and its value.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Point {
    pub(crate) timestamp: DateTime<Utc>,
    pub(crate) value: f64,
}

/// A store could not answer; the API answers 503. The cause is logged, not answered (it may tell
/// how the service is deployed).
#[derive(Debug)]
pub(crate) struct StorageError {
    message: String,
}

impl StorageError {
    /// A failure whose cause is logged, not answered.
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
        }
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StorageError {}

impl From<redis::RedisError> for StorageError {
    fn from(e: redis::RedisError) -> Self {
        Self::new(format!("storage unavailable: {e}"))
    }
}

/// The interval starts of a series of `points` intervals of `interval` seconds ending with the
/// one that holds `now`.
fn interval_starts(now: DateTime<Utc>, interval: i64, points: usize) -> Vec<i64> {
    let current = now.timestamp().div_euclid(interval) * interval;
    (0..points as i64)
        .rev()
        .map(|i| current - i * interval)
        .collect()
}

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(secs, 0).single().unwrap_or_default()
}

/// The mean of `n` values whose first `n - 1` have the mean `mean`, and whose last is `v`: finite
/// for any finite values (a sum is not: two values near `f64::MAX` overflow it).
pub(crate) fn running_mean(mean: f64, v: f64, n: u64) -> f64 {
    let n = n as f64;
    mean - mean / n + v / n
}

/// The average of `n` values from their sum (exact as a sum is), or from their running mean when
/// the sum overflowed.
fn average(sum: f64, mean: f64, n: u64) -> f64 {
    let exact = sum / n as f64;
    if exact.is_finite() { exact } else { mean }
}

/// The average value per interval of `metrics`, by their timestamps (0 for an empty interval).
fn averages_by_interval<'a>(
    metrics: impl Iterator<Item = &'a Metric>,
    starts: &[i64],
    interval: i64,
) -> Vec<f64> {
    let Some(&first) = starts.first() else {
        return Vec::new();
    };
    let mut sums = vec![(0.0, 0.0, 0u64); starts.len()];
    for m in metrics {
        let t = m.timestamp.timestamp();
        if t >= first {
            let i = ((t - first) / interval) as usize;
            if let Some(slot) = sums.get_mut(i) {
                slot.2 += 1;
                slot.0 += m.value;
                slot.1 = running_mean(slot.1, m.value, slot.2);
            }
        }
    }
    sums.into_iter()
        .map(|(sum, mean, n)| if n == 0 { 0.0 } else { average(sum, mean, n) })
        .collect()
}

/// Where the data lives.
#[derive(Debug)]
pub(crate) enum Storage {
    Memory(Box<MemoryStorage>),
    Redis(RedisStorage),
}

impl Default for Storage {
    fn default() -> Self {
        Self::Memory(Box::default())
    }
}

/// The beginning of every cache key of `metric_type`'s summaries (in both examples' caches).
pub(crate) fn summary_prefix(metric_type: &str) -> String {
    format!("summary:{metric_type}:")
}

/// Stores `metric` in `storage`, then drops from `summaries` the cached summaries it made stale:
/// its type's, and those of any type whose oldest metrics made room (the next one is computed
/// afresh, whatever its TTL). A cache that cannot drop them is logged: they expire with their TTL.
/// Owned arguments, for [`deadline::to_the_end`](crate::deadline::to_the_end).
pub(crate) async fn store_metric(
    storage: Arc<Storage>,
    summaries: tower_rampart::cache::CacheHandle,
    metric: Metric,
) -> Result<(), StorageError> {
    let forgotten = storage.add_metric(&metric).await?;
    let others = forgotten.iter().filter(|t| **t != metric.metric_type);
    for t in std::iter::once(&metric.metric_type).chain(others) {
        if let Err(e) = summaries.invalidate_prefix(summary_prefix(t)).await {
            tracing::warn!(error = %e, "could not drop cached summaries; they expire with their TTL");
        }
    }
    Ok(())
}

impl Storage {
    /// In memory, keeping at most `kept` metrics (at least 1; [`MAX_METRICS`] by default).
    pub(crate) fn memory_keeping(kept: usize) -> Self {
        Self::Memory(Box::new(MemoryStorage::keeping(kept)))
    }

    /// Whether the store's backing service answers: `None` in memory.
    pub(crate) async fn connected(&self) -> Option<bool> {
        match self {
            Self::Memory(_) => None,
            Self::Redis(r) => Some(r.ping().await),
        }
    }

    /// Stores `m`; answers the types whose oldest metrics were forgotten to make room (their
    /// summaries changed too).
    pub(crate) async fn add_metric(&self, m: &Metric) -> Result<Vec<String>, StorageError> {
        match self {
            Self::Memory(s) => Ok(s.add_metric(m)),
            Self::Redis(r) => r.add_metric(m).await,
        }
    }

    /// The total number of metrics of a type, and `limit` of them from `offset` (in timestamp
    /// order in Redis, submission order in memory).
    pub(crate) async fn metrics_page(
        &self,
        metric_type: &str,
        offset: usize,
        limit: usize,
    ) -> Result<(u64, Vec<Metric>), StorageError> {
        match self {
            Self::Memory(s) => Ok(s.page(metric_type, offset, limit)),
            Self::Redis(r) => r.page(metric_type, offset, limit).await,
        }
    }

    /// The number of metrics kept, of every type, and the newest `limit` of them (oldest first, in
    /// submission order).
    pub(crate) async fn newest_metrics(
        &self,
        limit: usize,
    ) -> Result<(u64, Vec<Metric>), StorageError> {
        match self {
            Self::Memory(s) => Ok(s.newest(limit)),
            Self::Redis(r) => r.newest(limit).await,
        }
    }

    /// The summary of a type's metrics, all of them or those timestamped at or after `since`.
    pub(crate) async fn summary(
        &self,
        metric_type: &str,
        since: Option<DateTime<Utc>>,
    ) -> Result<Summary, StorageError> {
        match self {
            Self::Memory(s) => Ok(s.summary(metric_type, since)),
            Self::Redis(r) => r.summary(metric_type, since).await,
        }
    }

    pub(crate) async fn record_event(
        &self,
        e: &EventRecord,
        now: DateTime<Utc>,
    ) -> Result<(), StorageError> {
        match self {
            Self::Memory(s) => {
                s.record_event(e, now);
                Ok(())
            }
            Self::Redis(r) => r.record_event(e, now).await,
        }
    }

    pub(crate) async fn event_count(&self, event_type: &str) -> Result<u64, StorageError> {
        match self {
            Self::Memory(s) => Ok(s.event_count(event_type)),
            Self::Redis(r) => r.event_count(event_type).await,
        }
    }

    /// Counts `n` requests rejected (4xx) at `now`.
    pub(crate) async fn record_rejections(
        &self,
        n: u64,
        now: DateTime<Utc>,
    ) -> Result<(), StorageError> {
        match self {
            Self::Memory(s) => {
                s.record_rejections(n, now);
                Ok(())
            }
            Self::Redis(r) => r.record_rejections(n, now).await,
        }
    }

    /// The backend of the layers' state: in memory with the data in memory, or, with the data in
    /// Redis, on the same Redis (keys under `analytics:`).
    pub(crate) fn backend(&self) -> tower_rampart::backend::Backend {
        match self {
            Self::Memory(_) => tower_rampart::backend::Backend::memory(),
            Self::Redis(r) => r.backend().clone().into(),
        }
    }

    /// Counts one rejection at `now` if that needs no I/O (in memory), returning whether it did; a
    /// remote store's counts are batched by the caller instead.
    pub(crate) fn record_rejection_now(&self, now: DateTime<Utc>) -> bool {
        match self {
            Self::Memory(s) => {
                s.record_rejections(1, now);
                true
            }
            Self::Redis(_) => false,
        }
    }

    /// Whether writes are cheap enough to make on the request path (memory), or better batched.
    pub(crate) fn is_remote(&self) -> bool {
        matches!(self, Self::Redis(_))
    }

    pub(crate) async fn activity(&self, now: DateTime<Utc>) -> Result<Activity, StorageError> {
        match self {
            Self::Memory(s) => Ok(s.activity(now)),
            Self::Redis(r) => r.activity(now).await,
        }
    }

    /// `points` points of `series`, `interval` seconds each, the last one holding `now`.
    pub(crate) async fn history(
        &self,
        series: &Series,
        interval: i64,
        points: usize,
        now: DateTime<Utc>,
    ) -> Result<Vec<Point>, StorageError> {
        let starts = interval_starts(now, interval, points);
        let values = match self {
            Self::Memory(s) => s.history(series, &starts, interval, now.timestamp()),
            Self::Redis(r) => {
                r.history(series, &starts, interval, now.timestamp())
                    .await?
            }
        };
        Ok(starts
            .iter()
            .zip(values)
            .map(|(&s, value)| Point {
                timestamp: at(s),
                value,
            })
            .collect())
    }
}
