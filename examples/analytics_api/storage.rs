//! The analytics data: metrics, events, active users and rejected requests, in memory or in Redis.
//!
//! Both stores keep the same data and answer the same questions; the app picks Redis when
//! `REDIS_URL` is set. In Redis every write is one atomic script (so replicas sharing it never see
//! half a write), and every read one round trip. A write that cannot be stored is an error, answered
//! 503 by the API: an accepted (201/202) write has been stored.
//!
//! Shared with `examples/grpc_analytics` (included by path).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, RwLock};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};

/// At most this many metrics are kept (in memory or in Redis); beyond it writes are refused (503),
/// not dropped.
pub(crate) const MAX_METRICS: usize = 1_000_000;
/// What a client is told when [`MAX_METRICS`] is reached.
const METRICS_FULL: &str = "metric storage is full; try again later";
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
const HISTORY_RETENTION_MINUTES: i64 = 25 * 60;
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
    /// Distinct users with events in each interval.
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

/// A store could not answer, or is at one of its bounds; the API answers 503. Only a bound's
/// message is shown to the client; any other cause is logged (it may tell how the service is
/// deployed).
#[derive(Debug)]
pub(crate) struct StorageError {
    message: String,
    full: bool,
}

impl StorageError {
    /// A failure whose cause is logged, not answered.
    pub(crate) fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            full: false,
        }
    }

    /// The store is at a bound (`message` says which): nothing was stored, and the client is told.
    pub(crate) fn full(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            full: true,
        }
    }

    /// The message a client may see: a bound's, or `None` for a failure whose cause is logged.
    pub(crate) fn public(&self) -> Option<&str> {
        self.full.then_some(self.message.as_str())
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

/// The metrics of one type, in memory: in submission order, with the running aggregate.
#[derive(Debug, Default)]
struct MetricsOfType {
    list: Vec<Metric>,
    all: Aggregate,
}

/// Time-bucketed activity, in memory. Pruned as it is written, so it stays bounded by the traffic
/// of the retention periods.
#[derive(Debug, Default)]
struct ActivityLog {
    /// Last event time (seconds) of each user, and of each (platform, user).
    users: HashMap<u64, i64>,
    platform_users: HashMap<(String, u64), i64>,
    /// Distinct users per minute.
    users_by_minute: BTreeMap<i64, HashSet<u64>>,
    /// Rejections per second (for the sliding five minutes) and per minute (for history).
    rejections_by_second: BTreeMap<i64, u64>,
    rejections_by_minute: BTreeMap<i64, u64>,
    /// When the user maps were last pruned (seconds).
    pruned_at: i64,
    /// The platforms told apart (at most [`MAX_PLATFORMS`]; later ones count as [`OTHER`]).
    platforms: HashSet<String>,
}

impl ActivityLog {
    fn prune(&mut self, now: i64) {
        let active_since = now - ACTIVE_WINDOW.as_secs() as i64;
        if now != self.pruned_at {
            self.users.retain(|_, t| *t > active_since);
            self.platform_users.retain(|_, t| *t > active_since);
            self.pruned_at = now;
        }
        let keep_minutes = now.div_euclid(60) - HISTORY_RETENTION_MINUTES;
        self.users_by_minute = self.users_by_minute.split_off(&keep_minutes);
        self.rejections_by_minute = self.rejections_by_minute.split_off(&keep_minutes);
        self.rejections_by_second = self.rejections_by_second.split_off(&(active_since + 1));
    }
}

/// The in-memory store.
#[derive(Debug, Default)]
pub(crate) struct MemoryStorage {
    metrics: RwLock<HashMap<String, MetricsOfType>>,
    metric_count: AtomicUsize,
    event_counts: RwLock<HashMap<String, u64>>,
    activity: Mutex<ActivityLog>,
}

impl MemoryStorage {
    fn add_metric(&self, m: &Metric) -> Result<(), StorageError> {
        if self.metric_count.fetch_add(1, Ordering::AcqRel) >= MAX_METRICS {
            self.metric_count.fetch_sub(1, Ordering::AcqRel);
            return Err(StorageError::full(METRICS_FULL));
        }
        let mut map = self.metrics.write().unwrap_or_else(|p| p.into_inner());
        let of_type = map.entry(m.metric_type.clone()).or_default();
        of_type.all.add(m);
        of_type.list.push(m.clone());
        Ok(())
    }

    fn with_type<R>(&self, metric_type: &str, f: impl FnOnce(Option<&MetricsOfType>) -> R) -> R {
        let map = self.metrics.read().unwrap_or_else(|p| p.into_inner());
        f(map.get(metric_type))
    }

    fn record_event(&self, e: &EventRecord, now: DateTime<Utc>) {
        {
            let mut counts = self.event_counts.write().unwrap_or_else(|p| p.into_inner());
            let kind = if counts.contains_key(&e.event_type) || counts.len() < MAX_EVENT_TYPES {
                e.event_type.as_str()
            } else {
                OTHER
            };
            *counts.entry(kind.to_owned()).or_default() += 1;
        }
        let now = now.timestamp();
        let mut log = self.activity.lock().unwrap_or_else(|p| p.into_inner());
        log.prune(now);
        log.users.insert(e.user_id, now);
        let platform = if log.platforms.contains(&e.platform) || log.platforms.len() < MAX_PLATFORMS
        {
            log.platforms.insert(e.platform.clone());
            e.platform.clone()
        } else {
            OTHER.to_owned()
        };
        log.platform_users.insert((platform, e.user_id), now);
        log.users_by_minute
            .entry(now.div_euclid(60))
            .or_default()
            .insert(e.user_id);
    }

    fn record_rejections(&self, n: u64, now: DateTime<Utc>) {
        let now = now.timestamp();
        let mut log = self.activity.lock().unwrap_or_else(|p| p.into_inner());
        log.prune(now);
        *log.rejections_by_second.entry(now).or_default() += n;
        *log.rejections_by_minute
            .entry(now.div_euclid(60))
            .or_default() += n;
    }

    fn activity(&self, now: DateTime<Utc>) -> Activity {
        let now = now.timestamp();
        let since = now - ACTIVE_WINDOW.as_secs() as i64;
        let log = self.activity.lock().unwrap_or_else(|p| p.into_inner());
        let mut by_platform = BTreeMap::new();
        for ((platform, _), t) in &log.platform_users {
            if *t > since {
                *by_platform.entry(platform.clone()).or_default() += 1;
            }
        }
        Activity {
            active_users: log.users.values().filter(|t| **t > since).count() as u64,
            by_platform,
            rejected: log
                .rejections_by_second
                .range(since + 1..=now)
                .map(|(_, n)| n)
                .sum(),
        }
    }

    fn history(&self, series: &Series, starts: &[i64], interval: i64) -> Vec<f64> {
        match series {
            Series::ActiveUsers => {
                let log = self.activity.lock().unwrap_or_else(|p| p.into_inner());
                starts
                    .iter()
                    .map(|&s| {
                        let users: HashSet<u64> = log
                            .users_by_minute
                            .range(s.div_euclid(60)..(s + interval).div_euclid(60))
                            .flat_map(|(_, u)| u.iter().copied())
                            .collect();
                        users.len() as f64
                    })
                    .collect()
            }
            Series::ApiRejections => {
                let log = self.activity.lock().unwrap_or_else(|p| p.into_inner());
                starts
                    .iter()
                    .map(|&s| {
                        log.rejections_by_minute
                            .range(s.div_euclid(60)..(s + interval).div_euclid(60))
                            .map(|(_, n)| *n as f64)
                            .sum()
                    })
                    .collect()
            }
            Series::Metric(t) => self.with_type(t, |of_type| {
                let list = of_type.map(|o| o.list.as_slice()).unwrap_or_default();
                averages_by_interval(list.iter(), starts, interval)
            }),
        }
    }
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

/// Data in Redis, under the `analytics:` prefix. Its commands go through the rate limiters'
/// [`RedisBackend`]'s connection ([`RedisBackend::connection`]): one connection, one timeout per
/// command, and one liveness rule (a connection that stops answering is replaced) for the
/// limiters, the cache and this storage alike.
///
/// [`RedisBackend`]: tower_rampart::backend::RedisBackend
/// [`RedisBackend::connection`]: tower_rampart::backend::RedisBackend::connection
#[derive(Clone)]
pub(crate) struct RedisStorage {
    conn: tower_rampart::backend::RedisConnection,
    backend: tower_rampart::backend::RedisBackend,
}

impl fmt::Debug for RedisStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStorage").finish_non_exhaustive()
    }
}

/// Stores a metric: its member in the type's sorted set (by timestamp, then by a zero-padded
/// sequence number, so equal metrics stay distinct and in submission order) and the type's running
/// aggregate, atomically.
const ADD_METRIC: &str = r"
if tonumber(redis.call('GET', 'analytics:metric_id') or '0') >= tonumber(ARGV[5]) then
  return redis.error_reply('RAMPARTFULL metric storage is full')
end
local id = redis.call('INCR', 'analytics:metric_id')
redis.call('ZADD', KEYS[1], ARGV[1], string.format('%020d', id) .. ':' .. ARGV[3])
redis.call('SADD', 'analytics:metric_types', ARGV[4])
local agg = KEYS[2]
local v = tonumber(ARGV[2])
local count = redis.call('HINCRBY', agg, 'count', 1)
-- The sum (for an exact average) while it is finite, and a running mean (for when finite values
-- overflow the sum: HINCRBYFLOAT would then refuse the write).
local sum = tonumber(redis.call('HGET', agg, 'sum') or '0')
if sum then sum = sum + v end
if sum and sum > -math.huge and sum < math.huge then
  redis.call('HSET', agg, 'sum', string.format('%.17g', sum))
else
  redis.call('HSET', agg, 'sum', 'overflow')
end
local mean = tonumber(redis.call('HGET', agg, 'mean') or '0')
mean = mean - mean / count + v / count
redis.call('HSET', agg, 'mean', string.format('%.17g', mean))
if count == 1 or v < tonumber(redis.call('HGET', agg, 'min')) then
  redis.call('HSET', agg, 'min', ARGV[2])
end
if count == 1 or v > tonumber(redis.call('HGET', agg, 'max')) then
  redis.call('HSET', agg, 'max', ARGV[2])
end
local latest = redis.call('HGET', agg, 'latest_ts')
if not latest or tonumber(ARGV[1]) >= tonumber(latest) then
  redis.call('HSET', agg, 'latest_ts', ARGV[1], 'latest', ARGV[2])
end
return id
";

/// Records an event: its type's count, the user's last activity (overall and on its platform), the
/// minute's distinct users; drops activity older than the active window. Platforms past the first
/// ARGV[7] and event types past the first ARGV[8] count as `other`, so the sets stay bounded and
/// the dashboard's summary (one count per platform) costs the same whatever clients send.
const RECORD_EVENT: &str = r"
local now, since, user, platform, etype = ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if redis.call('SISMEMBER', 'analytics:platforms', platform) == 0
   and redis.call('SCARD', 'analytics:platforms') >= tonumber(ARGV[7]) then
  platform = 'other'
end
if redis.call('HEXISTS', 'analytics:event_counts', etype) == 0
   and redis.call('HLEN', 'analytics:event_counts') >= tonumber(ARGV[8]) then
  etype = 'other'
end
redis.call('HINCRBY', 'analytics:event_counts', etype, 1)
redis.call('ZADD', 'analytics:active:users', now, user)
redis.call('ZREMRANGEBYSCORE', 'analytics:active:users', '-inf', since)
local pkey = 'analytics:active:platform:' .. platform
redis.call('ZADD', pkey, now, user)
redis.call('ZREMRANGEBYSCORE', pkey, '-inf', since)
redis.call('SADD', 'analytics:platforms', platform)
redis.call('SADD', KEYS[1], user)
redis.call('EXPIRE', KEYS[1], ARGV[6])
return 1
";

/// Counts ARGV[3] rejections in their second (kept past the active window) and minute (kept for
/// history).
const RECORD_REJECTION: &str = r"
redis.call('INCRBY', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('INCRBY', KEYS[2], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return 1
";

/// Active users overall and by platform since ARGV[1], and the rejections of the seconds in KEYS.
const ACTIVITY: &str = r"
local since = '(' .. ARGV[1]
local out = { redis.call('ZCOUNT', 'analytics:active:users', since, '+inf') }
for _, p in ipairs(redis.call('SMEMBERS', 'analytics:platforms')) do
  local n = redis.call('ZCOUNT', 'analytics:active:platform:' .. p, since, '+inf')
  if n > 0 then
    table.insert(out, p)
    table.insert(out, n)
  end
end
local rejected = 0
for _, v in ipairs(redis.call('MGET', unpack(KEYS))) do
  if v then rejected = rejected + tonumber(v) end
end
table.insert(out, 1, rejected)
return out
";

/// Distinct users per interval: ARGV[1] minute keys per interval, KEYS in interval order; unions
/// through a scratch key that no other script can see (scripts run one at a time).
const USERS_PER_INTERVAL: &str = r"
local per = tonumber(ARGV[1])
local out = {}
local scratch = 'analytics:scratch:union'
for i = 1, #KEYS, per do
  local keys = {}
  for j = i, math.min(i + per - 1, #KEYS) do table.insert(keys, KEYS[j]) end
  redis.call('SUNIONSTORE', scratch, unpack(keys))
  table.insert(out, redis.call('SCARD', scratch))
  redis.call('DEL', scratch)
end
return out
";

/// Sums of counters per interval: ARGV[1] keys per interval, KEYS in interval order.
const SUMS_PER_INTERVAL: &str = r"
local per = tonumber(ARGV[1])
local out = {}
for i = 1, #KEYS, per do
  local keys = {}
  for j = i, math.min(i + per - 1, #KEYS) do table.insert(keys, KEYS[j]) end
  local sum = 0
  for _, v in ipairs(redis.call('MGET', unpack(keys))) do
    if v then sum = sum + tonumber(v) end
  end
  table.insert(out, sum)
end
return out
";

/// The scripts, hashed once; each runs by hash (EVALSHA) and is sent whole on NOSCRIPT.
mod scripts {
    use std::sync::LazyLock;

    use redis::Script;
    use tower_rampart::backend::redis::FencedScript;

    // Writes are fenced: one that answered an error (503) never applies later.
    pub(super) static ADD_METRIC: LazyLock<FencedScript> =
        LazyLock::new(|| FencedScript::new(super::ADD_METRIC));
    pub(super) static RECORD_EVENT: LazyLock<FencedScript> =
        LazyLock::new(|| FencedScript::new(super::RECORD_EVENT));
    pub(super) static RECORD_REJECTION: LazyLock<FencedScript> =
        LazyLock::new(|| FencedScript::new(super::RECORD_REJECTION));
    pub(super) static ACTIVITY: LazyLock<Script> = LazyLock::new(|| Script::new(super::ACTIVITY));
    pub(super) static USERS_PER_INTERVAL: LazyLock<Script> =
        LazyLock::new(|| Script::new(super::USERS_PER_INTERVAL));
    pub(super) static SUMS_PER_INTERVAL: LazyLock<Script> =
        LazyLock::new(|| Script::new(super::SUMS_PER_INTERVAL));
}

fn metrics_key(metric_type: &str) -> String {
    format!("analytics:metrics:{metric_type}")
}

fn aggregate_key(metric_type: &str) -> String {
    format!("analytics:metric_agg:{metric_type}")
}

fn minute_users_key(minute: i64) -> String {
    format!("analytics:users:m:{minute}")
}

fn rejections_second_key(second: i64) -> String {
    format!("analytics:rejections:s:{second}")
}

fn rejections_minute_key(minute: i64) -> String {
    format!("analytics:rejections:m:{minute}")
}

/// Parses a sorted-set member `id:json` back into a metric.
fn parse_member(member: &str) -> Result<Metric, StorageError> {
    let json = member.split_once(':').map_or(member, |(_, j)| j);
    serde_json::from_str(json)
        .map_err(|e| StorageError::new(format!("unreadable stored metric: {e}")))
}

impl RedisStorage {
    /// A store on `url`. Connects lazily and reconnects by itself; calls fail after `timeout`
    /// while Redis is unreachable instead of waiting for it.
    pub(crate) fn open(url: &str, timeout: Duration) -> Result<Self, StorageError> {
        let backend = tower_rampart::backend::RedisBackend::connect_lazy(url)
            .map_err(|e| StorageError::new(format!("invalid REDIS_URL: {e}")))?
            .prefix("analytics")
            .timeout(timeout);
        Ok(Self {
            conn: backend.connection(),
            backend,
        })
    }

    fn conn(&self) -> tower_rampart::backend::RedisConnection {
        self.conn.clone()
    }

    /// Runs a write: stored if and only if it is acknowledged (a write that answered an error,
    /// say on a timeout while Redis was stalled, does not apply when Redis runs it later).
    async fn write(
        &self,
        script: &tower_rampart::backend::redis::FencedScript,
        keys: &[String],
        args: &[String],
    ) -> Result<(), StorageError> {
        let keys: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.conn
            .eval_fenced(script, &keys, &args)
            .await
            .map_err(|e| {
                let full = std::error::Error::source(&e)
                    .and_then(|s| s.downcast_ref::<redis::RedisError>())
                    .is_some_and(|r| r.code() == Some("RAMPARTFULL"));
                if full {
                    StorageError::full(METRICS_FULL)
                } else {
                    StorageError::new(format!("storage unavailable: {e}"))
                }
            })?;
        Ok(())
    }

    async fn ping(&self) -> bool {
        redis::cmd("PING")
            .query_async::<String>(&mut self.conn())
            .await
            .is_ok()
    }

    async fn add_metric(&self, m: &Metric) -> Result<(), StorageError> {
        let json = serde_json::to_string(m).map_err(|e| StorageError::new(e.to_string()))?;
        self.write(
            &scripts::ADD_METRIC,
            &[metrics_key(&m.metric_type), aggregate_key(&m.metric_type)],
            &[
                m.timestamp.timestamp_millis().to_string(),
                format!("{:?}", m.value), // shortest round-trip form
                json,
                m.metric_type.clone(),
                MAX_METRICS.to_string(),
            ],
        )
        .await
    }

    async fn members(
        &self,
        metric_type: &str,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<Metric>, StorageError> {
        let min = since.map_or("-inf".to_owned(), |s| s.timestamp_millis().to_string());
        let members: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(metrics_key(metric_type))
            .arg(min)
            .arg("+inf")
            .query_async(&mut self.conn())
            .await?;
        members.iter().map(|m| parse_member(m)).collect()
    }

    async fn page(
        &self,
        metric_type: &str,
        offset: usize,
        limit: usize,
    ) -> Result<(u64, Vec<Metric>), StorageError> {
        let key = metrics_key(metric_type);
        let mut pipe = redis::pipe();
        pipe.cmd("ZCARD").arg(&key);
        pipe.cmd("ZRANGE")
            .arg(&key)
            .arg(offset)
            .arg(offset as i64 + limit as i64 - 1);
        let (total, members): (u64, Vec<String>) = if limit == 0 {
            (
                redis::cmd("ZCARD")
                    .arg(&key)
                    .query_async(&mut self.conn())
                    .await?,
                Vec::new(),
            )
        } else {
            pipe.query_async(&mut self.conn()).await?
        };
        let page = members
            .iter()
            .map(|m| parse_member(m))
            .collect::<Result<_, _>>()?;
        Ok((total, page))
    }

    async fn summary_all(&self, metric_type: &str) -> Result<Summary, StorageError> {
        let agg: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(aggregate_key(metric_type))
            .query_async(&mut self.conn())
            .await?;
        let num = |k: &str| -> Result<f64, StorageError> {
            agg.get(k)
                .map_or(Ok(0.0), |v| v.parse())
                .map_err(|_| StorageError::new(format!("unreadable stored aggregate field {k}")))
        };
        let count = num("count")? as u64;
        if count == 0 {
            return Ok(Summary::default());
        }
        Ok(Summary {
            count,
            average: match agg.get("sum").and_then(|s| s.parse::<f64>().ok()) {
                Some(sum) => average(sum, num("mean")?, count),
                None => num("mean")?,
            },
            min: num("min")?,
            max: num("max")?,
            latest: num("latest")?,
        })
    }

    async fn record_event(&self, e: &EventRecord, now: DateTime<Utc>) -> Result<(), StorageError> {
        let now_s = now.timestamp();
        self.write(
            &scripts::RECORD_EVENT,
            &[minute_users_key(now_s.div_euclid(60))],
            &[
                now_s.to_string(),
                (now_s - ACTIVE_WINDOW.as_secs() as i64).to_string(),
                e.user_id.to_string(),
                e.platform.clone(),
                e.event_type.clone(),
                (HISTORY_RETENTION_MINUTES * 60).to_string(),
                MAX_PLATFORMS.to_string(),
                MAX_EVENT_TYPES.to_string(),
            ],
        )
        .await
    }

    async fn event_count(&self, event_type: &str) -> Result<u64, StorageError> {
        let n: Option<u64> = redis::cmd("HGET")
            .arg("analytics:event_counts")
            .arg(event_type)
            .query_async(&mut self.conn())
            .await?;
        Ok(n.unwrap_or(0))
    }

    async fn record_rejections(&self, n: u64, now: DateTime<Utc>) -> Result<(), StorageError> {
        let s = now.timestamp();
        self.write(
            &scripts::RECORD_REJECTION,
            &[
                rejections_second_key(s),
                rejections_minute_key(s.div_euclid(60)),
            ],
            &[
                (ACTIVE_WINDOW.as_secs() + 60).to_string(),
                (HISTORY_RETENTION_MINUTES * 60).to_string(),
                n.to_string(),
            ],
        )
        .await
    }

    async fn activity(&self, now: DateTime<Utc>) -> Result<Activity, StorageError> {
        let now = now.timestamp();
        let since = now - ACTIVE_WINDOW.as_secs() as i64;
        let mut script = scripts::ACTIVITY.prepare_invoke();
        for s in since + 1..=now {
            script.key(rejections_second_key(s));
        }
        script.arg(since);
        let out: Vec<redis::Value> = script.invoke_async(&mut self.conn()).await?;
        let int = |v: &redis::Value| -> Result<u64, StorageError> {
            redis::from_redis_value_ref(v)
                .map_err(|e| StorageError::new(format!("unexpected activity reply: {e}")))
        };
        let (Some(rejected), Some(users)) = (out.first(), out.get(1)) else {
            return Err(StorageError::new("unexpected activity reply"));
        };
        let mut by_platform = BTreeMap::new();
        for pair in out[2..].chunks(2) {
            if let [p, n] = pair {
                let p: String = redis::from_redis_value_ref(p)
                    .map_err(|e| StorageError::new(format!("unexpected activity reply: {e}")))?;
                by_platform.insert(p, int(n)?);
            }
        }
        Ok(Activity {
            active_users: int(users)?,
            by_platform,
            rejected: int(rejected)?,
        })
    }

    async fn history(
        &self,
        series: &Series,
        starts: &[i64],
        interval: i64,
    ) -> Result<Vec<f64>, StorageError> {
        let per = (interval / 60).max(1);
        let minute_keys = |key: fn(i64) -> String| {
            starts
                .iter()
                .flat_map(|&s| (0..per).map(move |i| key(s.div_euclid(60) + i)))
                .collect::<Vec<_>>()
        };
        let per_interval = |script: &'static redis::Script, keys: Vec<String>| {
            let mut invocation = script.prepare_invoke();
            for k in keys {
                invocation.key(k);
            }
            invocation.arg(per);
            invocation
        };
        match series {
            Series::ActiveUsers => {
                let inv = per_interval(&scripts::USERS_PER_INTERVAL, minute_keys(minute_users_key));
                let v: Vec<u64> = inv.invoke_async(&mut self.conn()).await?;
                Ok(v.into_iter().map(|n| n as f64).collect())
            }
            Series::ApiRejections => {
                let inv = per_interval(
                    &scripts::SUMS_PER_INTERVAL,
                    minute_keys(rejections_minute_key),
                );
                let v: Vec<u64> = inv.invoke_async(&mut self.conn()).await?;
                Ok(v.into_iter().map(|n| n as f64).collect())
            }
            Series::Metric(t) => {
                let since = starts.first().map(|&s| at(s));
                let metrics = self.members(t, since).await?;
                Ok(averages_by_interval(metrics.iter(), starts, interval))
            }
        }
    }
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

impl Storage {
    /// Whether the store's backing service answers: `None` in memory.
    pub(crate) async fn connected(&self) -> Option<bool> {
        match self {
            Self::Memory(_) => None,
            Self::Redis(r) => Some(r.ping().await),
        }
    }

    pub(crate) async fn add_metric(&self, m: &Metric) -> Result<(), StorageError> {
        match self {
            Self::Memory(s) => s.add_metric(m),
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
            Self::Memory(s) => Ok(s.with_type(metric_type, |o| {
                let list = o.map(|o| o.list.as_slice()).unwrap_or_default();
                (
                    list.len() as u64,
                    list.iter().skip(offset).take(limit).cloned().collect(),
                )
            })),
            Self::Redis(r) => r.page(metric_type, offset, limit).await,
        }
    }

    /// The metric types stored, in order.
    pub(crate) async fn metric_types(&self) -> Result<Vec<String>, StorageError> {
        let mut types: Vec<String> = match self {
            Self::Memory(s) => s
                .metrics
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .keys()
                .cloned()
                .collect(),
            Self::Redis(r) => {
                redis::cmd("SMEMBERS")
                    .arg("analytics:metric_types")
                    .query_async(&mut r.conn())
                    .await?
            }
        };
        types.sort();
        Ok(types)
    }

    /// The summary of a type's metrics, all of them or those timestamped at or after `since`.
    pub(crate) async fn summary(
        &self,
        metric_type: &str,
        since: Option<DateTime<Utc>>,
    ) -> Result<Summary, StorageError> {
        match (self, since) {
            (Self::Memory(s), None) => Ok(s.with_type(metric_type, |o| {
                o.map(|o| o.all.summary()).unwrap_or_default()
            })),
            (Self::Memory(s), Some(since)) => Ok(s.with_type(metric_type, |o| {
                let list = o.map(|o| o.list.as_slice()).unwrap_or_default();
                Summary::of(list.iter().filter(|m| m.timestamp >= since))
            })),
            (Self::Redis(r), None) => r.summary_all(metric_type).await,
            (Self::Redis(r), Some(since)) => Ok(Summary::of(
                r.members(metric_type, Some(since)).await?.iter(),
            )),
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
            Self::Memory(s) => Ok(s
                .event_counts
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(event_type)
                .copied()
                .unwrap_or(0)),
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
            Self::Redis(r) => r.backend.clone().into(),
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
            Self::Memory(s) => s.history(series, &starts, interval),
            Self::Redis(r) => r.history(series, &starts, interval).await?,
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
