//! Live changes across replicas: a change made through one replica's
//! [`RateLimitHandle`](crate::rate_limit::RateLimitHandle) is stored in Redis, and every replica of
//! the limiter polls for changes and applies them (see the
//! [module documentation](super#limits-tiers-and-live-changes) for the bound).
//!
//! Per limiter (prefix `P`, name `L`), two keys with the hash tag `{P:rl:L}` (one Cluster slot):
//!
//! - `{P:rl:L}:policies`, a hash: `v`, the version of the last change; `d`, the default limits;
//!   `t:<tier>`, a tier's; `k:<key>`, a key's own (the key as written in its state keys, after the name's `/`), each as
//!   [`encode`] writes them;
//! - `{P:rl:L}:changes`, a sorted set: each field, scored with the version of its last change.
//!
//! A change is one script call (`policy_publish.lua`): next version, value, log. A replica asks
//! for what changed since the version it has applied (one `HMGET` per interval; when there is
//! something new, the changed fields and their values), and applies each field's latest value: tiers and the default at once; a key's own limits at
//! that key's next request (only then does the replica hold the key as its layer knows it: a key
//! is written to Redis, never read back). Its own changes are applied already, and skipped.
//!
//! These calls leave the connection's health alone (they decide nothing; see `Conn::quiet`).
//! Publishing never blocks the handle: changes wait in an outbox (one per field, the latest) for
//! the replica's sync task, which writes them in order and tries again every interval while Redis
//! is down.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock, Weak};
use std::time::Duration;

use redis::Value;

use super::RedisKey;
use super::conn::{Conn, Script};
use crate::backend::BackendError;
use crate::rate_limit::{Limit, PolicyChange, PolicySink, Quota};
use crate::throttle::LogThrottle;

fn publish_script() -> &'static Script {
    static SCRIPT: OnceLock<Script> = OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(include_str!("policy_publish.lua")))
}

/// The most changes one poll reads (a new replica catching up reads again at once).
const POLL_BATCH: usize = 500;

/// The format of an encoded limit list: `1:` then the limits.
const FORMAT: &str = "1:";

/// `limits` as stored in Redis: `1:` and, per limit, `name limit period_ns burst|- shadow`,
/// separated by `;` (names are letters, digits and `-_.:`).
pub(crate) fn encode(limits: &[Limit]) -> String {
    let mut out = String::from(FORMAT);
    for (i, l) in limits.iter().enumerate() {
        if i > 0 {
            out.push(';');
        }
        let q = l.quota();
        let burst = if q.burst_size() == q.limit() {
            "-".to_string()
        } else {
            q.burst_size().to_string()
        };
        out.push_str(&format!(
            "{} {} {} {burst} {}",
            l.name(),
            q.limit(),
            q.period().as_nanos(),
            u8::from(l.is_shadow())
        ));
    }
    out
}

/// The limits [`encode`] wrote, or what is wrong with `text`.
pub(crate) fn decode(text: &[u8]) -> Result<Vec<Limit>, String> {
    let text = std::str::from_utf8(text).map_err(|_| "not UTF-8 text".to_string())?;
    let Some(body) = text.strip_prefix(FORMAT) else {
        return Err(format!(
            "not limits of format {FORMAT:?} (a newer release's, or not ours)"
        ));
    };
    body.split(';')
        .map(|item| {
            let bad = || format!("{item:?} is not `name limit period_ns burst|- shadow`");
            let parts: Vec<&str> = item.split(' ').collect();
            let [name, limit, period, burst, shadow] = parts.as_slice() else {
                return Err(bad());
            };
            crate::error::check_name(name).map_err(|e| e.to_string())?;
            let limit: u32 = limit.parse().map_err(|_| bad())?;
            let period: u64 = period.parse().map_err(|_| bad())?;
            let mut quota = Quota::with_period(limit, Duration::from_nanos(period));
            if *burst != "-" {
                quota = quota.burst(burst.parse().map_err(|_| bad())?);
            }
            let shadow = match *shadow {
                "0" => false,
                "1" => true,
                _ => return Err(bad()),
            };
            Ok(Limit::new(name.to_string(), quota).shadow(shadow))
        })
        .collect()
}

/// A change as a field of the policies hash and its value ("" to clear).
fn field_of<K: RedisKey>(change: &PolicyChange<K>) -> (Vec<u8>, String) {
    match change {
        PolicyChange::Default { limits } => (b"d".to_vec(), encode(limits)),
        PolicyChange::Tier { name, limits } => (format!("t:{name}").into_bytes(), encode(limits)),
        PolicyChange::Key { key, limits } => {
            let mut field = b"k:".to_vec();
            key.write_redis_key(&mut field);
            (field, limits.as_deref().map(encode).unwrap_or_default())
        }
    }
}

/// One limiter's sync with Redis (shared by its store's clones; its task holds it weakly).
pub(crate) struct PolicySync<K> {
    conn: Arc<Conn>,
    keys: [Vec<u8>; 2],
    interval: Duration,
    timeout: Duration,
    name: Arc<str>,
    sink: OnceLock<PolicySink<K>>,
    started: AtomicBool,
    /// The version whose changes (and every earlier one) this replica has applied.
    known: AtomicU64,
    /// The run of versions `known` counts in (the hash's `e`; `None` before any, or in a hash an
    /// earlier build wrote): versions start again from 1 when Redis loses the hash.
    known_epoch: Mutex<Option<Vec<u8>>>,
    /// Changes made here, not yet written to Redis: the latest value per field, in order.
    outbox: Mutex<Vec<(Vec<u8>, String)>>,
    /// Fields this replica wrote, with the version Redis gave them (skipped when polled).
    own: Mutex<HashMap<Vec<u8>, u64>>,
    /// Keys' own limits received and not yet applied (at the key's next request), by the key as
    /// written in Redis; `None` clears them.
    pending: RwLock<HashMap<Vec<u8>, Option<Vec<Limit>>>>,
    any_pending: AtomicBool,
    /// Keys whose own limits this replica holds (set through its handle, or applied from
    /// `pending`), by the key as written in Redis: only for these is a clearing kept pending. A
    /// new replica replays the whole change log, and every key ever cleared would otherwise wait
    /// in `pending` for good (with every request paying a lookup in it).
    held: Mutex<std::collections::HashSet<Vec<u8>>>,
    /// Wakes the task for a change (its own `Arc`: the task waits on it without holding the sync).
    wake: Arc<tokio::sync::Notify>,
    log: LogThrottle,
    #[cfg(feature = "metrics")]
    errors: metrics::Key,
}

impl<K> fmt::Debug for PolicySync<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicySync")
            .field("policies", &String::from_utf8_lossy(&self.keys[0]))
            .field("interval", &self.interval)
            .field("known", &self.known.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl<K: RedisKey + std::hash::Hash + Eq + Clone + Send + Sync + 'static> PolicySync<K> {
    /// The sync of limiter `name` under `prefix`.
    pub(crate) fn new(
        conn: Arc<Conn>,
        prefix: &str,
        name: &str,
        interval: Duration,
        timeout: Duration,
    ) -> Self {
        let tag = format!("{{{prefix}:rl:{name}}}");
        Self {
            conn,
            keys: [
                format!("{tag}:policies").into_bytes(),
                format!("{tag}:changes").into_bytes(),
            ],
            interval,
            timeout,
            name: Arc::from(name),
            sink: OnceLock::new(),
            started: AtomicBool::new(false),
            known: AtomicU64::new(0),
            known_epoch: Mutex::new(None),
            outbox: Mutex::new(Vec::new()),
            own: Mutex::new(HashMap::new()),
            pending: RwLock::new(HashMap::new()),
            any_pending: AtomicBool::new(false),
            held: Mutex::new(std::collections::HashSet::new()),
            wake: Arc::new(tokio::sync::Notify::new()),
            log: LogThrottle::new(Duration::from_secs(10)),
            #[cfg(feature = "metrics")]
            errors: crate::metrics::key(
                "rampart_rate_limit_policy_errors_total",
                name.to_string(),
                &[],
            ),
        }
    }

    /// Where received changes go; starts the sync task (now if a runtime is running, else at the
    /// first request or change).
    pub(crate) fn subscribe(self: &Arc<Self>, sink: PolicySink<K>) {
        let _ = self.sink.set(sink);
        self.start();
    }

    /// Starts the sync task once, if subscribed and a runtime is running.
    #[inline]
    pub(crate) fn start(self: &Arc<Self>) {
        if self.started.load(Ordering::Relaxed) || self.sink.get().is_none() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if !self.started.swap(true, Ordering::AcqRel) {
            runtime.spawn(run(Stopped(Arc::downgrade(self))));
        }
    }

    /// Queues `change` (applied here already) for Redis, and wakes the task.
    pub(crate) fn publish(self: &Arc<Self>, change: &PolicyChange<K>) {
        let (field, value) = field_of(change);
        {
            // Under `pending`'s lock, as `received` checks the outbox and keeps a key's change
            // pending: a key's change received at the same time is either dropped here (older
            // than this one) or never kept (this one in the outbox already).
            let mut pending = self.pending.write().unwrap_or_else(PoisonError::into_inner);
            if let PolicyChange::Key { limits, .. } = change {
                let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
                if limits.is_some() {
                    held.insert(field.clone());
                } else {
                    held.remove(&field);
                }
                if pending.remove(&field).is_some() && pending.is_empty() {
                    self.any_pending.store(false, Ordering::Release);
                }
            }
            let mut outbox = self.outbox.lock().unwrap_or_else(PoisonError::into_inner);
            outbox.retain(|(f, _)| *f != field);
            outbox.push((field, value));
        }
        self.start();
        if !self.started.load(Ordering::Acquire) {
            self.warn(
                "a rate limit change cannot reach the other replicas: no tokio runtime is running \
                 here; it will be written to redis once one is",
                &self.name,
            );
        }
        self.wake.notify_one();
    }

    /// Applies a key's own limits received from Redis, if any wait for `key` (at its request).
    #[inline]
    pub(crate) fn apply_pending(&self, key: &K) {
        if !self.any_pending.load(Ordering::Acquire) {
            return;
        }
        self.apply_pending_slow(key);
    }

    #[cold]
    fn apply_pending_slow(&self, key: &K) {
        let mut bytes = b"k:".to_vec();
        key.write_redis_key(&mut bytes);
        let found = {
            let pending = self.pending.read().unwrap_or_else(PoisonError::into_inner);
            pending.contains_key(&bytes)
        };
        if !found {
            return;
        }
        let limits = {
            let mut pending = self.pending.write().unwrap_or_else(PoisonError::into_inner);
            let limits = pending.remove(&bytes);
            if pending.is_empty() {
                self.any_pending.store(false, Ordering::Release);
            }
            limits
        };
        let Some(limits) = limits else {
            return;
        };
        {
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            if limits.is_some() {
                held.insert(bytes.clone());
            } else {
                held.remove(&bytes);
            }
        }
        let Some(sink) = self.sink.get() else {
            return;
        };
        let change = PolicyChange::Key {
            key: key.clone(),
            limits,
        };
        if let Err(e) = sink.apply(&change) {
            self.rejected(&bytes, &e.to_string());
        }
    }

    /// Writes what waits in the outbox, oldest first; stops at the first failure (kept for the
    /// next round).
    async fn flush(&self) -> Result<(), BackendError> {
        loop {
            let Some((field, value)) = self
                .outbox
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .first()
                .cloned()
            else {
                return Ok(());
            };
            // Fenced by its deadline on Redis's clock: sent on a connection that stalls and is
            // replaced, it must not apply after a newer change made on the replacement.
            let reply = self
                .conn
                .quiet_before_deadline(
                    publish_script(),
                    &[&self.keys[0], &self.keys[1]],
                    &[&field, value.as_bytes()],
                    self.timeout,
                )
                .await?;
            // `{version}` (the `TIME` it read was taken off).
            let version = match &reply {
                Value::Array(items) => match items[..] {
                    [Value::Int(v)] if v > 0 => Some(v as u64),
                    _ => None,
                },
                _ => None,
            };
            let Some(version) = version else {
                return Err(BackendError::new(
                    format!("redis answered the policy change with {reply:?}"),
                    None,
                ));
            };
            let mut outbox = self.outbox.lock().unwrap_or_else(PoisonError::into_inner);
            // Unless the handle changed that field again meanwhile, it is written.
            if outbox
                .first()
                .is_some_and(|(f, v)| *f == field && *v == value)
            {
                outbox.remove(0);
            }
            self.own
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(field, version);
        }
    }

    /// Asks Redis what changed since the version applied, and applies it; until caught up.
    ///
    /// Plain commands, not a script: with nothing new (the usual case) a poll is one `HMGET` (the
    /// version and the run it counts in; a new run, after Redis lost the hash, is read whole).
    /// When something changed, the fields changed since (`ZRANGEBYSCORE`) and their values (`HMGET`)
    /// are two reads; a change landing between them is read with its newer value and read again at
    /// the next poll, which applies the same value once more.
    async fn poll(&self) -> Result<(), BackendError> {
        for _ in 0..1_000 {
            let known = self.known.load(Ordering::Acquire);
            let reply = self
                .conn
                .quiet(
                    None,
                    redis::cmd("HMGET").arg(&self.keys[0]).arg("v").arg("e"),
                    self.timeout,
                )
                .await?;
            let (reply, epoch) = match &reply {
                Value::Array(pair) if pair.len() == 2 => match &pair[1] {
                    Value::Nil => (&pair[0], None),
                    Value::BulkString(e) => (&pair[0], Some(e.clone())),
                    other => return Err(bad("the policies' epoch", other)),
                },
                other => return Err(bad("the policies' version", other)),
            };
            let same_run = *self
                .known_epoch
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                == epoch;
            let version = match reply {
                Value::Nil => 0,
                Value::BulkString(v) => {
                    match std::str::from_utf8(v).ok().and_then(|v| v.parse().ok()) {
                        Some(v) => v,
                        None => {
                            self.rejected(b"v", "the version is not a number");
                            0
                        }
                    }
                }
                other => return Err(bad("the policies' version", other)),
            };
            if version == known && same_run {
                return Ok(());
            }
            let since = if version < known || (!same_run && known > 0) {
                self.warn(
                    "the rate limit policies in redis are older than this replica's (deleted, or \
                     the data was lost); keeping the limits in force here, applying what is there",
                    &self.name,
                );
                // Versions of the lost run mean nothing in the new one, this replica's own
                // writes' included.
                self.own
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clear();
                0
            } else {
                known
            };
            let rows = self
                .conn
                .quiet(
                    None,
                    redis::cmd("ZRANGEBYSCORE")
                        .arg(&self.keys[1])
                        .arg(format!("({since}"))
                        .arg("+inf")
                        .arg("WITHSCORES")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(POLL_BATCH),
                    self.timeout,
                )
                .await?;
            let Value::Array(rows) = &rows else {
                return Err(bad("the change log", &rows));
            };
            let mut changes = Vec::with_capacity(rows.len() / 2);
            for row in rows.chunks(2) {
                let [Value::BulkString(field), at] = row else {
                    return Err(bad("the change log", &Value::Array(rows.clone())));
                };
                let at = match at {
                    Value::BulkString(a) => std::str::from_utf8(a)
                        .ok()
                        .and_then(|a| a.parse::<f64>().ok()),
                    Value::Double(a) => Some(*a),
                    _ => None,
                }
                .filter(|a| *a >= 0.0)
                .ok_or_else(|| bad("the change log", at))?;
                changes.push((field.clone(), at as u64));
            }
            let last = changes.last().map_or(version, |(_, at)| *at);
            if !changes.is_empty() {
                let mut get = redis::cmd("HMGET");
                get.arg(&self.keys[0]);
                for (field, _) in &changes {
                    get.arg(field);
                }
                let values = self.conn.quiet(None, &get, self.timeout).await?;
                let Value::Array(values) = values else {
                    return Err(bad("the policies", &values));
                };
                if values.len() != changes.len() {
                    return Err(bad("the policies", &Value::Array(values)));
                }
                for ((field, at), value) in changes.iter().zip(&values) {
                    let value: &[u8] = match value {
                        Value::BulkString(v) => v,
                        Value::Nil => b"",
                        other => return Err(bad("the policies", other)),
                    };
                    self.received(field, value, *at);
                }
            }
            let complete = rows.len() / 2 < POLL_BATCH;
            let covered = if complete { version.max(last) } else { last };
            self.known.store(covered, Ordering::Release);
            *self
                .known_epoch
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = epoch;
            if complete {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Whether a change of `field` made here waits in the outbox (newer than anything in Redis).
    fn in_outbox(&self, field: &[u8]) -> bool {
        self.outbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .any(|(f, _)| f == field)
    }

    /// Applies `field`'s latest value, changed at version `at`.
    fn received(&self, field: &[u8], value: &[u8], at: u64) {
        {
            let mut own = self.own.lock().unwrap_or_else(PoisonError::into_inner);
            if own.get(field).is_some_and(|v| *v == at) {
                own.remove(field);
                return;
            }
        }
        // A change made here and not yet written is newer than anything in Redis.
        if self.in_outbox(field) {
            return;
        }
        let Some(sink) = self.sink.get() else {
            return;
        };
        let limits = if value.is_empty() && field.starts_with(b"k:") {
            None
        } else {
            match decode(value) {
                Ok(limits) => Some(limits),
                Err(why) => return self.rejected(field, &why),
            }
        };
        let result = match (field.split_first_chunk::<2>(), limits) {
            (_, Some(limits)) if field == b"d" => sink.apply(&PolicyChange::Default { limits }),
            (Some((b"t:", name)), Some(limits)) => match std::str::from_utf8(name) {
                Ok(name) => sink.apply(&PolicyChange::Tier {
                    name: crate::name::intern(name.to_string()),
                    limits,
                }),
                Err(_) => return self.rejected(field, "the tier's name is not UTF-8"),
            },
            (Some((b"k:", _)), limits) => {
                let mut pending = self.pending.write().unwrap_or_else(PoisonError::into_inner);
                // Checked again under `pending`'s lock (see `publish`): a change made here since
                // the check above is newer.
                if self.in_outbox(field) {
                    return;
                }
                let held = self
                    .held
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .contains(field);
                if limits.is_none() && !held {
                    // Nothing of this key's is held here: nothing to clear (and a setting still
                    // pending is superseded).
                    pending.remove(field);
                    if pending.is_empty() {
                        self.any_pending.store(false, Ordering::Release);
                    }
                } else {
                    pending.insert(field.to_vec(), limits);
                    self.any_pending.store(true, Ordering::Release);
                }
                return;
            }
            _ => return self.rejected(field, "not a field this release writes"),
        };
        if let Err(e) = result {
            self.rejected(field, &e.to_string());
        }
    }

    /// A change from Redis that cannot apply here: logged (at most once per 10 s) and counted;
    /// the limits in force stay.
    #[cold]
    fn rejected(&self, field: &[u8], why: &str) {
        #[cfg(feature = "metrics")]
        crate::metrics::counter(&self.errors).increment(1);
        if let Some(suppressed) = self.log.check() {
            tracing::warn!(
                limiter = %self.name,
                field = %String::from_utf8_lossy(field),
                problem = why,
                suppressed,
                "a rate limit change in redis cannot apply here; keeping the limits in force"
            );
        }
    }

    #[cold]
    fn warn(&self, what: &'static str, limiter: &str) {
        if let Some(suppressed) = self.log.check() {
            tracing::warn!(limiter, suppressed, "{what}");
        }
    }
}

/// An answer of the wrong shape.
fn bad(what: &str, value: &Value) -> BackendError {
    BackendError::new(
        format!("redis answered the read of {what} with {value:?}"),
        None,
    )
}

/// The sync task's mark on its store: made before the task is spawned and moved into it, so that
/// the task dropped with its runtime (an app with several, a test's), even before it ever ran,
/// lets the next request start it again; marked started for good, the store never synced again.
struct Stopped<K>(Weak<PolicySync<K>>);

impl<K> Drop for Stopped<K> {
    fn drop(&mut self) {
        if let Some(sync) = self.0.upgrade() {
            sync.started.store(false, Ordering::Release);
        }
    }
}

/// The sync task: write the outbox, poll, wait for the interval or a change; until the store is
/// dropped. Failures (Redis down) are logged at most once per 10 s and tried again each round.
async fn run<K: RedisKey + std::hash::Hash + Eq + Clone + Send + Sync + 'static>(
    stopped: Stopped<K>,
) {
    let sync = stopped.0.clone();
    loop {
        let Some(this) = sync.upgrade() else {
            return;
        };
        if let Err(error) = this.flush().await {
            this.failed(
                "writing a rate limit change to redis failed; trying again",
                &error,
            );
        }
        if let Err(error) = this.poll().await {
            this.failed(
                "reading rate limit changes from redis failed; trying again",
                &error,
            );
        }
        let (interval, wake) = (this.interval, Arc::clone(&this.wake));
        // Only the weak reference while waiting: a dropped store's task ends after its wait.
        drop(this);
        let _ = tokio::time::timeout(interval, wake.notified()).await;
    }
}

impl<K> PolicySync<K> {
    /// The Redis keys holding the limiter's policies and their change log.
    pub(crate) fn redis_keys(&self) -> &[Vec<u8>; 2] {
        &self.keys
    }

    #[cold]
    fn failed(&self, what: &'static str, error: &BackendError) {
        if let Some(suppressed) = self.log.check() {
            tracing::warn!(limiter = %self.name, %error, suppressed, "{what}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_publish_script_replicates_commands_before_time_on_redis_before_7() {
        crate::backend::redis::rate_limit::script_text_tests::replicates_commands_before_time(
            include_str!("policy_publish.lua"),
        );
    }

    #[test]
    fn limits_round_trip_through_their_encoding() {
        let limits = [
            Limit::new("minute", Quota::per_minute(10)),
            Limit::new("day", Quota::per_hour(1000).burst(50)).shadow(true),
            Limit::new(
                "odd.name:1",
                Quota::with_period(7, Duration::from_nanos(1_000_000_333)),
            ),
        ];
        let text = encode(&limits);
        assert_eq!(
            text,
            "1:minute 10 60000000000 - 0;day 1000 3600000000000 50 1;odd.name:1 7 1000000333 - 0"
        );
        assert_eq!(decode(text.as_bytes()).unwrap(), limits);
    }

    #[test]
    fn text_that_is_not_limits_is_refused_with_a_reason() {
        for bad in [
            &b"minute 10 60000000000 - 0"[..],
            b"1:",
            b"1:minute 10 60s - 0",
            b"1:minute ten 60000000000 - 0",
            b"1:minute 10 60000000000 - 2",
            b"1:bad name 10 60000000000 - 0",
            b"1:a{b} 10 60000000000 - 0",
            b"2:minute 10 60000000000 - 0",
            b"\xff\xfe",
        ] {
            assert!(decode(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
