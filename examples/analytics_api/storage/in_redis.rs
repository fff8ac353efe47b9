//! The Redis store.

use super::blocks::{Block, interval_blocks};
use super::*;

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
    /// The most metrics kept (at least 1); past it the oldest is forgotten.
    kept: usize,
}

impl fmt::Debug for RedisStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStorage").finish_non_exhaustive()
    }
}

/// Stores a metric: its member in the type's sorted set (by timestamp, then by a zero-padded
/// sequence number, so equal metrics stay distinct and in submission order), its place in the
/// order of submission across types, and the type's running aggregate, atomically. Past ARGV[5]
/// metrics the oldest submitted are forgotten (at most 100 per call, so a lowered bound is reached
/// over the next writes without one long script), and a type left with none is forgotten with its
/// aggregate; answers the types that lost metrics. Type names hold no control character, so the first newline of an order entry ends
/// its type.
///
/// An aggregate that is not what this script writes (another type of key, a field that is not a
/// number: corrupted by hand or by another program) is rebuilt from the type's metrics before
/// anything is written: Redis does not undo a script's writes when it fails halfway, so a check
/// after them would leave a metric stored behind a refusal. Members that do not decode are left
/// out of the rebuild (and out of lists and summaries).
const ADD_METRIC: &str = r"
local agg = KEYS[2]
-- A number as this script writes it and the service parses it back (Lua's `tonumber` alone also
-- takes hexadecimal and surrounding spaces, which the service's parser refuses).
local function decimal(s)
  return s ~= nil and string.find(s, '^%-?[%d.]+[eE]?[%-+]?%d*$') ~= nil and tonumber(s) ~= nil
end
local function usable()
  local kind = redis.call('TYPE', agg)['ok']
  if kind == 'none' then return true end
  if kind ~= 'hash' then return false end
  local f = redis.call('HMGET', agg, 'count', 'mean', 'min', 'max', 'sum', 'latest_ts', 'latest')
  -- HINCRBY needs a whole number.
  if not f[1] or not string.find(f[1], '^%d+$') then return false end
  for i = 2, 4 do
    if not decimal(f[i]) then return false end
  end
  if f[5] and f[5] ~= 'overflow' and not decimal(f[5]) then return false end
  if (f[6] and not decimal(f[6])) or (f[7] and not decimal(f[7])) then return false end
  return true
end
if not usable() then
  redis.call('DEL', agg)
  if redis.call('TYPE', KEYS[1])['ok'] == 'zset' then
    local n, sum, mean, min, max, latest_ts, latest = 0, 0, 0, nil, nil, nil, nil
    local all = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
    for i = 1, #all, 2 do
      local colon = string.find(all[i], ':', 1, true)
      local ok, decoded = pcall(cjson.decode, colon and string.sub(all[i], colon + 1) or '')
      local v = ok and type(decoded) == 'table' and tonumber(decoded['value'])
      if v then
        n = n + 1
        sum = sum + v
        mean = mean - mean / n + v / n
        if not min or v < min then min = v end
        if not max or v > max then max = v end
        latest_ts, latest = all[i + 1], v
      end
    end
    if n > 0 then
      local s = 'overflow'
      if sum > -math.huge and sum < math.huge then s = string.format('%.17g', sum) end
      redis.call('HSET', agg, 'count', n, 'sum', s, 'mean', string.format('%.17g', mean),
        'min', string.format('%.17g', min), 'max', string.format('%.17g', max),
        'latest_ts', latest_ts, 'latest', string.format('%.17g', latest))
    end
  end
end
local id = redis.call('INCR', 'analytics:metric_id')
local member = string.format('%020d', id) .. ':' .. ARGV[3]
redis.call('ZADD', KEYS[1], ARGV[1], member)
redis.call('LPUSH', 'analytics:metric_order', ARGV[4] .. '\n' .. member)
local kept = tonumber(ARGV[5])
local forgotten, seen = {}, {}
for _ = 1, 100 do
  if redis.call('LLEN', 'analytics:metric_order') <= kept then break end
  local old = redis.call('RPOP', 'analytics:metric_order')
  local nl = string.find(old, '\n', 1, true)
  if nl then
    local t = string.sub(old, 1, nl - 1)
    if not seen[t] then
      seen[t] = true
      forgotten[#forgotten + 1] = t
    end
    local set = 'analytics:metrics:' .. t
    redis.call('ZREM', set, string.sub(old, nl + 1))
    if redis.call('ZCARD', set) == 0 then
      redis.call('DEL', set, 'analytics:metric_agg:' .. t)
    end
  end
end
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
return forgotten
";

/// Records an event: its type's count, the user's last activity (overall and on its platform), and
/// the user in the HyperLogLog of each block of time holding now (KEYS: its minute, 5 and 15
/// minutes, and hour), KEYS[i] kept ARGV[8 + i] seconds (until its last minute is ARGV[6] seconds
/// old, as the memory store keeps it); drops activity older than the
/// active window. Platforms past the first ARGV[7] and event types past the first ARGV[8] count as
/// `other`, so the sets stay bounded and the dashboard's summary (one count per platform) costs the
/// same whatever clients send; a HyperLogLog holds at most 12 KiB however many users it counts.
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
for i, block in ipairs(KEYS) do
  redis.call('PFADD', block, user)
  redis.call('EXPIRE', block, ARGV[8 + i])
end
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
    pub(super) static SUMS_PER_INTERVAL: LazyLock<Script> =
        LazyLock::new(|| Script::new(super::SUMS_PER_INTERVAL));
}

fn metrics_key(metric_type: &str) -> String {
    format!("analytics:metrics:{metric_type}")
}

fn aggregate_key(metric_type: &str) -> String {
    format!("analytics:metric_agg:{metric_type}")
}

/// The HyperLogLog of the users of a block of time, e.g. `analytics:users:5m:29000000` for the 5
/// minutes from minute 29,000,000 since the epoch. (The names differ from those of the sets that
/// versions before held, `analytics:users:m:{minute}`: those expire unread.)
fn users_key(block: Block) -> String {
    format!("analytics:users:{}m:{}", block.grain, block.start)
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

/// The metrics of `members` that decode; one that does not (corrupted by hand or by another
/// program) is logged and left out, rather than failing every read that reaches it.
fn parse_members<'a>(members: impl IntoIterator<Item = &'a str>) -> Vec<Metric> {
    members
        .into_iter()
        .filter_map(|m| match parse_member(m) {
            Ok(metric) => Some(metric),
            Err(e) => {
                tracing::warn!(error = %e, "a stored metric was left out");
                None
            }
        })
        .collect()
}

impl RedisStorage {
    /// The backend whose connection this storage shares.
    pub(super) fn backend(&self) -> &tower_rampart::backend::RedisBackend {
        &self.backend
    }

    /// The number of metrics kept (of every type), and the newest `limit` of them, oldest first,
    /// in submission order: one round trip, whose work is `limit`'s.
    pub(super) async fn newest(&self, limit: usize) -> Result<(u64, Vec<Metric>), StorageError> {
        let (total, entries) = self
            .count_and_range(("LLEN", "LRANGE"), "analytics:metric_order", 0, limit)
            .await?;
        // Newest first in Redis (LPUSH): each entry is the type, a newline, the member.
        let newest = parse_members(
            entries
                .iter()
                .rev()
                .map(|e| e.split_once('\n').map_or(e.as_str(), |(_, member)| member)),
        );
        Ok((total, newest))
    }

    /// The length of the list or sorted set `key` (`count`: `LLEN` or `ZCARD`) and `limit` of its
    /// members from `start` (`range`: `LRANGE` or `ZRANGE`), in one round trip.
    async fn count_and_range(
        &self,
        (count, range): (&str, &str),
        key: &str,
        start: usize,
        limit: usize,
    ) -> Result<(u64, Vec<String>), StorageError> {
        if limit == 0 {
            let total = redis::cmd(count)
                .arg(key)
                .query_async(&mut self.conn())
                .await?;
            return Ok((total, Vec::new()));
        }
        let mut pipe = redis::pipe();
        pipe.cmd(count).arg(key);
        pipe.cmd(range)
            .arg(key)
            .arg(start)
            .arg(start as i64 + limit as i64 - 1);
        Ok(pipe.query_async(&mut self.conn()).await?)
    }

    /// The summary of a type's metrics, all of them (from the stored aggregate) or those
    /// timestamped at or after `since`.
    pub(super) async fn summary(
        &self,
        metric_type: &str,
        since: Option<DateTime<Utc>>,
    ) -> Result<Summary, StorageError> {
        match since {
            None => self.summary_all(metric_type).await,
            Some(since) => Ok(Summary::of(
                self.members(metric_type, Some(since)).await?.iter(),
            )),
        }
    }

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
            kept: MAX_METRICS,
        })
    }

    /// Keeps at most `kept` metrics (at least 1; [`MAX_METRICS`] by default): each one stored past
    /// it forgets the oldest stored.
    pub(crate) fn keeping(mut self, kept: usize) -> Self {
        self.kept = kept.max(1);
        self
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
    ) -> Result<redis::Value, StorageError> {
        let keys: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.conn
            .eval_fenced(script, &keys, &args)
            .await
            .map_err(|e| StorageError::new(format!("storage unavailable: {e}")))
    }

    pub(super) async fn ping(&self) -> bool {
        redis::cmd("PING")
            .query_async::<String>(&mut self.conn())
            .await
            .is_ok()
    }

    /// Stores `m`; answers the types whose oldest metrics it made room by forgetting.
    pub(super) async fn add_metric(&self, m: &Metric) -> Result<Vec<String>, StorageError> {
        let json = serde_json::to_string(m).map_err(|e| StorageError::new(e.to_string()))?;
        let forgotten = self
            .write(
                &scripts::ADD_METRIC,
                &[metrics_key(&m.metric_type), aggregate_key(&m.metric_type)],
                &[
                    m.timestamp.timestamp_millis().to_string(),
                    format!("{:?}", m.value), // shortest round-trip form
                    json,
                    m.metric_type.clone(),
                    self.kept.to_string(),
                ],
            )
            .await?;
        redis::from_redis_value(forgotten)
            .map_err(|e| StorageError::new(format!("unexpected reply storing a metric: {e}")))
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
        Ok(parse_members(members.iter().map(String::as_str)))
    }

    pub(super) async fn page(
        &self,
        metric_type: &str,
        offset: usize,
        limit: usize,
    ) -> Result<(u64, Vec<Metric>), StorageError> {
        let key = metrics_key(metric_type);
        let (total, members) = self
            .count_and_range(("ZCARD", "ZRANGE"), &key, offset, limit)
            .await?;
        Ok((total, parse_members(members.iter().map(String::as_str))))
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

    pub(super) async fn record_event(
        &self,
        e: &EventRecord,
        now: DateTime<Utc>,
    ) -> Result<(), StorageError> {
        let now_s = now.timestamp();
        let blocks: Vec<Block> = Block::holding(now_s.div_euclid(60)).collect();
        let mut args = vec![
            now_s.to_string(),
            (now_s - ACTIVE_WINDOW.as_secs() as i64).to_string(),
            e.user_id.to_string(),
            e.platform.clone(),
            e.event_type.clone(),
            (HISTORY_RETENTION_MINUTES * 60).to_string(),
            MAX_PLATFORMS.to_string(),
            MAX_EVENT_TYPES.to_string(),
        ];
        // Each block until its last minute is as old as the history kept (`Block::kept_at`, the
        // memory store's rule): from its end, not from its last write, or an hour's block would
        // go up to 59 minutes before the memory store's.
        args.extend(blocks.iter().map(|b| {
            ((b.start + b.grain + HISTORY_RETENTION_MINUTES) * 60 - now_s)
                .max(1)
                .to_string()
        }));
        self.write(
            &scripts::RECORD_EVENT,
            &blocks.iter().copied().map(users_key).collect::<Vec<_>>(),
            &args,
        )
        .await
        .map(drop)
    }

    pub(super) async fn event_count(&self, event_type: &str) -> Result<u64, StorageError> {
        let n: Option<u64> = redis::cmd("HGET")
            .arg("analytics:event_counts")
            .arg(event_type)
            .query_async(&mut self.conn())
            .await?;
        Ok(n.unwrap_or(0))
    }

    pub(super) async fn record_rejections(
        &self,
        n: u64,
        now: DateTime<Utc>,
    ) -> Result<(), StorageError> {
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
        .map(drop)
    }

    pub(super) async fn activity(&self, now: DateTime<Utc>) -> Result<Activity, StorageError> {
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

    pub(super) async fn history(
        &self,
        series: &Series,
        starts: &[i64],
        interval: i64,
        now: i64,
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
                // One PFCOUNT per interval, of at most `MAX_BLOCKS_PER_INTERVAL` HyperLogLogs (12
                // KiB at most each), in one round trip: Redis serves other clients between them,
                // and the whole request reads at most one key per minute kept.
                let blocks = interval_blocks(starts, interval, now);
                let mut pipe = redis::pipe();
                for of_interval in blocks.iter().filter(|b| !b.is_empty()) {
                    pipe.cmd("PFCOUNT");
                    for &block in of_interval {
                        pipe.arg(users_key(block));
                    }
                }
                let counts: Vec<u64> = if blocks.iter().all(Vec::is_empty) {
                    Vec::new()
                } else {
                    pipe.query_async(&mut self.conn()).await?
                };
                let mut counts = counts.into_iter();
                Ok(blocks
                    .iter()
                    .map(|b| {
                        if b.is_empty() {
                            0.0
                        } else {
                            counts.next().unwrap_or(0) as f64
                        }
                    })
                    .collect())
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
