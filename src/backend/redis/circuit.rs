//! The Redis store of shared circuit state: one hash per circuit, one script call per sync.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use redis::Value;

use super::conn::{Conn, Script};
use super::{RedisBackend, RedisKey};
use crate::backend::{BackendError, ErrorKind};
use crate::circuit_breaker::CircuitState;
use crate::circuit_breaker::store::{
    CircuitBackend, CircuitSpec, CircuitStore, SyncReply, SyncRequest, sealed,
};
use crate::error::ConfigError;

fn circuit_script() -> &'static Script {
    static SCRIPT: std::sync::OnceLock<Script> = std::sync::OnceLock::new();
    SCRIPT.get_or_init(|| Script::new(include_str!("circuit.lua")))
}

/// The SHA1 of the shared circuit script, as `EVALSHA` takes it.
pub fn circuit_script_sha() -> &'static str {
    circuit_script().sha()
}

/// A duration in whole microseconds, at least 1.
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// How long an idle circuit's hash is kept: 10 minutes, or longer for long waits and windows.
fn idle_ttl(spec: &CircuitSpec) -> Duration {
    let cfg = &spec.cfg;
    let span = spec.time_window().map_or(Duration::ZERO, |(span, _)| span);
    Duration::from_secs(600)
        .max(cfg.wait.max.saturating_mul(2))
        .max(span.saturating_mul(2))
        .max(spec.interval.saturating_mul(10))
        .min(Duration::from_secs(30 * 24 * 3600))
}

/// The [`CircuitStore`] kept in Redis, built by [`RedisBackend`] for
/// [`shared`](crate::circuit_breaker::CircuitBreakerBuilder::backend) circuits.
///
/// Each circuit is one hash, `<prefix>:cb:{<name>/<key>}` (the key `global` for a layer's one
/// circuit), holding its state, its window and its half-open permits; each sync is one `EVALSHA`
/// of a script that runs on Redis `TIME`. Hashes of idle circuits expire (after 10 minutes, or
/// twice the longest wait or window if longer); a forced-open or disabled circuit's is kept until
/// changed.
pub struct RedisCircuitStore<K> {
    inner: Arc<Inner>,
    _key: PhantomData<fn(&K)>,
}

struct Inner {
    conn: Arc<Conn>,
    /// `<prefix>:cb:{<name>/`, to which the key and `}` are appended.
    key_head: Vec<u8>,
    /// The script's first ten arguments: the circuit's configuration.
    config: Vec<Vec<u8>>,
    timeout: Duration,
}

impl<K> Clone for RedisCircuitStore<K> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            _key: PhantomData,
        }
    }
}

impl<K> fmt::Debug for RedisCircuitStore<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisCircuitStore")
            .field("key_prefix", &String::from_utf8_lossy(&self.inner.key_head))
            .field("timeout", &self.inner.timeout)
            .field("conn", &self.inner.conn)
            .finish_non_exhaustive()
    }
}

impl<K: RedisKey> RedisCircuitStore<K> {
    /// The Redis key of `key`'s circuit (`()` for a layer's one circuit).
    pub fn redis_key(&self, key: &K) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.inner.key_head.len() + 32);
        out.extend_from_slice(&self.inner.key_head);
        key.write_redis_key(&mut out);
        out.push(b'}');
        out
    }
}

impl<K> sealed::Sealed for RedisCircuitStore<K> {}
impl sealed::Sealed for RedisBackend {}

/// A sync in flight (boxed; the type is named so it can change without breaking anyone).
pub struct RedisSync {
    inner: Pin<Box<dyn Future<Output = Result<SyncReply, BackendError>> + Send>>,
}

impl fmt::Debug for RedisSync {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSync").finish_non_exhaustive()
    }
}

impl Future for RedisSync {
    type Output = Result<SyncReply, BackendError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.inner.as_mut().poll(cx)
    }
}

/// A data error names the circuit's key: the hash to look at, or to delete (`DEL <key>`) for the
/// replicas to share a fresh circuit (until then each follows its own).
fn name_key(e: BackendError, redis_key: &[u8]) -> BackendError {
    if !e.is_corrupt_data() {
        return e;
    }
    let message = format!("{e} (at {})", String::from_utf8_lossy(redis_key));
    BackendError::with_kind(ErrorKind::Data, message, Some(Box::new(e)))
}

/// The script's answer, checked.
fn parse(value: &Value) -> Result<SyncReply, BackendError> {
    let bad = || {
        BackendError::with_kind(
            ErrorKind::Data,
            format!("redis answered the circuit script with {value:?}"),
            None,
        )
    };
    let Value::Array(items) = value else {
        return Err(bad());
    };
    if items.len() != 13 {
        return Err(bad());
    }
    let mut n = [0u64; 13];
    for (slot, item) in n.iter_mut().zip(items) {
        match item {
            Value::Int(i) if *i >= 0 => *slot = *i as u64,
            _ => return Err(bad()),
        }
    }
    let small = |x: u64| u32::try_from(x).map_err(|_| bad());
    let state = match n[2] {
        0 => CircuitState::Closed,
        1 => CircuitState::Open,
        2 => CircuitState::HalfOpen,
        3 => CircuitState::ForcedOpen,
        4 => CircuitState::Disabled,
        _ => return Err(bad()),
    };
    Ok(SyncReply {
        generation: n[0],
        epoch: n[1],
        state,
        open_for: (state == CircuitState::Open).then(|| Duration::from_micros(n[3])),
        streak: small(n[4])?,
        reason: u8::try_from(n[5]).map_err(|_| bad())?,
        held: small(n[6])?,
        calls: small(n[7])?,
        failures: small(n[8])?,
        slow: small(n[9])?,
        run: small(n[10])?,
        in_state_for: Duration::from_micros(n[11]),
        contended: n[12] == 1,
    })
}

impl<K> CircuitStore<K> for RedisCircuitStore<K>
where
    K: RedisKey + Send + Sync + 'static,
{
    type Future = RedisSync;

    fn sync(&self, key: &K, request: &SyncRequest) -> RedisSync {
        let redis_key = self.redis_key(key);
        let r = request;
        let (assert_us, assert_reason) = r
            .assert_open
            .map_or((0, 0), |(left, reason)| (micros(left), reason));
        let report: [Vec<u8>; 14] = [
            r.replica.to_string(),
            r.lease.as_millis().max(1).to_string(),
            r.calls.to_string(),
            r.failures.to_string(),
            r.slow.to_string(),
            r.run.to_string(),
            r.probe_epoch.to_string(),
            r.probe_ok.to_string(),
            r.probe_bad.to_string(),
            r.held.to_string(),
            r.want.to_string(),
            r.command.map_or("", |c| c.as_str()).to_string(),
            assert_us.to_string(),
            assert_reason.to_string(),
        ]
        .map(String::into_bytes);
        let inner = Arc::clone(&self.inner);
        RedisSync {
            inner: Box::pin(async move {
                let args: Vec<&[u8]> = inner
                    .config
                    .iter()
                    .chain(report.iter())
                    .map(Vec::as_slice)
                    .collect();
                // Fenced by its deadline on Redis's clock: a sync abandoned on its timeout and
                // run late would apply a command taken back since (circuit.lua, ARGV 25).
                let value = inner
                    .conn
                    .eval_before_deadline(circuit_script(), &[&redis_key], &args, inner.timeout)
                    .await
                    .map_err(|e| name_key(e, &redis_key))?;
                parse(&value)
            }),
        }
    }

    fn is_available(&self) -> bool {
        self.inner.conn.admit()
    }

    fn is_connected(&self) -> bool {
        self.inner.conn.is_connected()
    }

    fn timeout(&self) -> Duration {
        self.inner.timeout
    }
}

impl<K> CircuitBackend<K> for RedisBackend
where
    K: RedisKey + Send + Sync + 'static,
{
    type Store = RedisCircuitStore<K>;

    fn circuit_store(&self, spec: &CircuitSpec) -> Result<Self::Store, ConfigError> {
        self.check_settings()?;
        if self.settings.clock.is_custom() {
            return Err(ConfigError::new(
                "clock",
                "shared circuits run on Redis TIME; a backend with a custom clock cannot share them",
            ));
        }
        let cfg = &spec.cfg;
        if cfg.name == "default" {
            tracing::warn!(
                prefix = %self.settings.prefix,
                "a shared circuit is named \"default\": breakers sharing a name and prefix share \
                 one circuit (one upstream's failures open the other's), so name each breaker \
                 (.name(\"payments\")) unless this is the only one"
            );
        }
        let window = match (spec.window_calls(), spec.time_window()) {
            (Some(calls), _) => format!("c{calls}"),
            (None, Some((span, buckets))) => format!("t{}/{buckets}", micros(span)),
            (None, None) => unreachable!("a window is counted or timed"),
        };
        let rate = |r: Option<f64>| r.map_or(String::new(), |r| r.to_string());
        let config = [
            window,
            cfg.minimum_calls.to_string(),
            rate(cfg.failure_rate),
            rate(cfg.slow_calls.map(|s| s.rate)),
            cfg.consecutive_failures.unwrap_or(0).to_string(),
            micros(cfg.wait.initial).to_string(),
            cfg.wait.multiplier.to_string(),
            micros(cfg.wait.max).to_string(),
            cfg.half_open_probes.to_string(),
            idle_ttl(spec).as_millis().to_string(),
        ]
        .map(String::into_bytes)
        .to_vec();
        // The name inside the hash tag with the key: circuits of different names hash to their own
        // Cluster slots (with the key alone, every layer's one circuit, `{global}`, shared one).
        // Names cannot hold `/`: the first one ends the name, so no name and key write the same
        // bytes as another pair.
        let key_head = format!("{}:cb:{{{}/", self.settings.prefix, cfg.name).into_bytes();
        Ok(RedisCircuitStore {
            inner: Arc::new(Inner {
                conn: Arc::clone(&self.conn),
                key_head,
                config,
                timeout: self.settings.timeout,
            }),
            _key: PhantomData,
        })
    }
}
