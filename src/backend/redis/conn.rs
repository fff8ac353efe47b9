//! The connection every Redis store of one backend shares: a single node through a
//! `ConnectionManager` or a cluster through the async cluster client; health tracking; liveness
//! (a connection that stops answering is replaced); scripts with EVALSHA and a NOSCRIPT fallback;
//! and one place where Redis errors become [`BackendError`]s.
//!
//! Stores (the rate limiter's, the cache's, shared circuits') call [`Conn::eval`] (or
//! [`Conn::eval_before_deadline`], for scripts that must not write once the caller has given up on
//! them) with their own timeout, after asking [`Conn::admit`] whether to try Redis at all.
//! Scripts are in `script`, Redis's clock in `clock`, the error kinds in `error`.
//!
//! # Liveness
//!
//! The `redis` crate reconnects when a connection is *closed* (reset, refused, EOF), but a
//! connection that goes silent without closing (a dropped NAT or conntrack entry, a VIP failover,
//! a migrated VM) only times out, and a timeout is not a reason for it to reconnect: every call
//! would time out until the kernel gives up on the socket, some 15 minutes later. So the first
//! timeout on a connection makes it a suspect: one `PING` goes down the same connection (on a
//! cluster, to every master), and a connection that does not answer it within the liveness
//! timeout ([`DEFAULT_LIVENESS_TIMEOUT`], 1 s) is replaced by a fresh one, the old dropped. A
//! connection that answers was only slow, and is kept. One check runs at a time.
//!
//! # Deadlines
//!
//! A call's timeout is a tokio timer of its own (`deadline`), answered by the runtime that waits for
//! the call (paused time included), whatever any other runtime does; `deadline` says why a watcher
//! shared by a connection's calls, cheaper per call, was not kept.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, Weak};
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{Cmd, ErrorKind as RedisErrorKind, RedisError, ServerErrorKind, Value};

use self::deadline::Late;
use super::clock::{RedisClock, parse_time};
pub(crate) use super::error::classify;
use super::error::{LATE, into_redis_error};
#[cfg(feature = "metrics")]
use super::error::{kind_index, kind_label};
pub(crate) use super::script::Script;
use crate::backend::{BackendError, ErrorKind};
use crate::clock::{Clock, Nanos, TokioClock, duration_to_nanos};

/// While Redis is known to be down, one request per this interval tries it again (the others
/// follow the failure policy at once, without waiting for a timeout).
pub(crate) const PROBE_INTERVAL: Duration = Duration::from_millis(100);

#[cfg(feature = "rate-limit")]
mod batch;
mod deadline;

#[cfg(feature = "rate-limit")]
pub(crate) use self::batch::Batcher;

/// How long a connection suspected dead (a call on it timed out) has to answer a `PING` before it
/// is replaced: the default of [`RedisBackend::liveness_timeout`](super::RedisBackend::liveness_timeout).
pub const DEFAULT_LIVENESS_TIMEOUT: Duration = Duration::from_secs(1);

/// How long opening a replacement connection may take before it is tried again.
const REOPEN_TIMEOUT: Duration = Duration::from_secs(2);

/// Waits between failed attempts to open a replacement connection: doubling from the first to the
/// last.
const REOPEN_DELAYS: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(1));

/// A connection handle; cloning it is cheap (an `Arc` or a channel sender). A call takes the
/// handle by `&mut`: the caller's clone of [`Conn`]'s handle is the only one made per call (a
/// second clone here cost two more atomic read-modify-writes on the shared count per call).
#[derive(Clone)]
pub(crate) enum Handle {
    Single(redis::aio::ConnectionManager),
    #[cfg(feature = "redis-cluster")]
    Cluster(redis::cluster_async::ClusterConnection),
}

impl Handle {
    /// Sends `cmd`; a server error reply becomes `Err`.
    async fn query(&mut self, cmd: &Cmd) -> Result<Value, RedisError> {
        self.query_raw(cmd).await?.extract_error()
    }

    /// Sends `cmd`; a server error reply stays a value, as `ConnectionLike` answers it.
    ///
    /// A single node's call goes through `ConnectionManager::send_packed_command` itself, not
    /// its `ConnectionLike` method, which boxes that future (an allocation and its free per call).
    async fn query_raw(&mut self, cmd: &Cmd) -> Result<Value, RedisError> {
        match self {
            Self::Single(c) => c.send_packed_command(cmd).await,
            #[cfg(feature = "redis-cluster")]
            Self::Cluster(c) => c.req_packed_command(cmd).await,
        }
    }

    /// Sends a pipeline, as `ConnectionLike::req_packed_commands` does.
    async fn pipeline(
        &mut self,
        pipeline: &redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> Result<Vec<Value>, RedisError> {
        match self {
            Self::Single(c) => c.send_packed_commands(pipeline, offset, count).await,
            #[cfg(feature = "redis-cluster")]
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count).await,
        }
    }

    /// The database this connection is bound to.
    fn db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            #[cfg(feature = "redis-cluster")]
            Self::Cluster(c) => c.get_db(),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Single(_) => "single",
            #[cfg(feature = "redis-cluster")]
            Self::Cluster(_) => "cluster",
        }
    }
}

/// How to open the connection again, to replace one that stopped answering.
#[derive(Clone)]
pub(crate) enum Opener {
    Single(redis::Client, redis::aio::ConnectionManagerConfig),
    #[cfg(feature = "redis-cluster")]
    Cluster(redis::cluster::ClusterClient),
}

impl Opener {
    /// A connection that connects on its first call (single node only; a cluster client needs
    /// the cluster's answer to know its nodes).
    pub(crate) fn lazy(
        client: redis::Client,
        config: redis::aio::ConnectionManagerConfig,
    ) -> Result<(Self, Handle), RedisError> {
        let manager =
            redis::aio::ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
        Ok((Self::Single(client, config), Handle::Single(manager)))
    }

    /// Opens a new connection and waits until it is established.
    pub(crate) async fn open(&self) -> Result<Handle, RedisError> {
        match self {
            Self::Single(client, config) => {
                redis::aio::ConnectionManager::new_with_config(client.clone(), config.clone())
                    .await
                    .map(Handle::Single)
            }
            #[cfg(feature = "redis-cluster")]
            Self::Cluster(client) => client.get_async_connection().await.map(Handle::Cluster),
        }
    }
}

/// The connection in use, and which one it is (the first is 0, each replacement one more).
struct Line {
    handle: Handle,
    generation: u64,
}

/// A script and its keys and arguments, for [`Conn::quiet`].
pub(crate) type ScriptCall<'a> = (&'a Script, &'a [&'a [u8]], &'a [&'a [u8]]);

/// What is known of the connection's health ([`Conn::state`]).
const UNKNOWN: u8 = 0;
const UP: u8 = 1;
const DOWN: u8 = 2;

/// The shared connection and what is known of its health.
pub(crate) struct Conn {
    /// The connection in use; replaced by a new one when it stops answering. Read on every call
    /// (its handle cloned under the read lock), written once per replacement: a read lock is two
    /// atomic operations, where `ArcSwap::load` cost about 130 instructions per call (its debt
    /// list and thread-local node; the `instructions` bench's `redis64/rampart_cache_hit` row).
    line: RwLock<Line>,
    opener: Opener,
    /// This connection, for the liveness check's task (which must not keep it alive).
    me: Weak<Conn>,
    /// Whether a liveness check (or a replacement) is under way.
    checking: AtomicBool,
    /// When (on `clock`) a connection answering `READONLY` or `MASTERDOWN` may next be replaced:
    /// at most once per liveness timeout, so a node still demoted behind the address reached
    /// again is not reconnected to on every call.
    next_reopen: AtomicU64,
    /// How long a suspect connection has to answer `PING`, in nanoseconds.
    liveness_timeout: AtomicU64,
    /// Connections replaced because they stopped answering.
    replaced: AtomicU64,
    /// What the connection is to, for logs and metric labels: the URL(s) without credentials, or
    /// `external` for a connection given by the application.
    server: Arc<str>,
    clock: TokioClock,
    /// [`UNKNOWN`] until a call or probe has reached Redis or failed to, then [`UP`] or [`DOWN`].
    state: AtomicU8,
    /// While down: when (on `clock`) the next request may try Redis.
    next_probe: AtomicU64,
    probe_interval: Nanos,
    redis_clock: RedisClock,
    #[cfg(feature = "metrics")]
    meters: Meters,
}

/// The connection's metric keys, made once (labels built per call would allocate).
#[cfg(feature = "metrics")]
struct Meters {
    up: metrics::Key,
    replaced: metrics::Key,
    /// `rampart_redis_errors_total` by [`ErrorKind`], in [`kind_index`] order.
    errors: [metrics::Key; 4],
    latency: metrics::Key,
}

#[cfg(feature = "metrics")]
impl Meters {
    fn new(server: &str) -> Self {
        let server = metrics::Label::new("server", server.to_string());
        let errors = [
            ErrorKind::Unreachable,
            ErrorKind::Timeout,
            ErrorKind::Data,
            ErrorKind::Other,
        ]
        .map(|kind| {
            metrics::Key::from_parts(
                "rampart_redis_errors_total",
                vec![
                    server.clone(),
                    metrics::Label::from_static_parts("kind", kind_label(kind)),
                ],
            )
        });
        Self {
            replaced: metrics::Key::from_parts(
                "rampart_redis_reconnects_total",
                vec![server.clone()],
            ),
            latency: metrics::Key::from_parts(
                "rampart_redis_call_duration_seconds",
                vec![server.clone()],
            ),
            up: metrics::Key::from_parts("rampart_redis_up", vec![server]),
            errors,
        }
    }

    fn call_took(&self, nanos: Nanos) {
        crate::metrics::histogram(&self.latency).record(nanos as f64 / 1e9);
    }

    fn replaced(&self) {
        metrics::with_recorder(|r| {
            r.register_counter(&self.replaced, &crate::metrics::METADATA)
                .increment(1);
        });
    }

    fn set_up(&self, up: bool) {
        metrics::with_recorder(|r| {
            r.register_gauge(&self.up, &crate::metrics::METADATA)
                .set(if up { 1.0 } else { 0.0 });
        });
    }

    fn error(&self, kind: ErrorKind) {
        metrics::with_recorder(|r| {
            r.register_counter(&self.errors[kind_index(kind)], &crate::metrics::METADATA)
                .increment(1);
        });
    }
}

impl fmt::Debug for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state.load(Ordering::Relaxed) {
            UP => "up",
            DOWN => "down",
            _ => "unknown",
        };
        f.debug_struct("Conn")
            .field("kind", &self.line().handle.kind())
            .field("server", &self.server)
            .field("state", &state)
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// A connection to `server` (as shown in logs and metric labels), of unknown health until
    /// the first call or probe; `opener` opens it again when it stops answering.
    pub(crate) fn new(handle: Handle, opener: Opener, server: impl Into<Arc<str>>) -> Arc<Self> {
        let server = server.into();
        Arc::new_cyclic(|me| Self {
            line: RwLock::new(Line {
                handle,
                generation: 0,
            }),
            opener,
            me: me.clone(),
            checking: AtomicBool::new(false),
            next_reopen: AtomicU64::new(0),
            liveness_timeout: AtomicU64::new(duration_to_nanos(DEFAULT_LIVENESS_TIMEOUT)),
            replaced: AtomicU64::new(0),
            clock: TokioClock::new(),
            state: AtomicU8::new(UNKNOWN),
            next_probe: AtomicU64::new(0),
            probe_interval: duration_to_nanos(PROBE_INTERVAL),
            redis_clock: RedisClock::new(),
            #[cfg(feature = "metrics")]
            meters: Meters::new(&server),
            server,
        })
    }

    /// Sets how long a suspect connection has to answer `PING` before it is replaced.
    /// Out of range (10 ms to 60 s), the nearest bound applies; a layer built on the backend
    /// reports the setting as an error.
    pub(crate) fn set_liveness_timeout(&self, timeout: Duration) {
        let timeout = timeout.clamp(Duration::from_millis(10), Duration::from_secs(60));
        self.liveness_timeout
            .store(duration_to_nanos(timeout), Ordering::Relaxed);
    }

    /// How long a suspect connection has to answer `PING` before it is replaced.
    pub(crate) fn liveness_timeout(&self) -> Duration {
        Duration::from_nanos(self.liveness_timeout.load(Ordering::Relaxed))
    }

    /// The database of the connection in use.
    pub(crate) fn db(&self) -> i64 {
        self.line().handle.db()
    }

    /// How many connections were replaced because they stopped answering.
    pub(crate) fn replaced(&self) -> u64 {
        self.replaced.load(Ordering::Relaxed)
    }

    /// The connection in use now, and its generation.
    #[inline]
    fn current(&self) -> (Handle, u64) {
        let line = self.line();
        (line.handle.clone(), line.generation)
    }

    /// The connection in use, read-locked.
    #[inline]
    fn line(&self) -> RwLockReadGuard<'_, Line> {
        self.line.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the last call or probe reached Redis (an error reply counts: Redis answered it).
    /// False until one has.
    pub(crate) fn is_connected(&self) -> bool {
        self.state.load(Ordering::Acquire) == UP
    }

    /// Whether a call should try Redis now: always unless it is known to be down; while it is
    /// down, one caller per probe interval (that caller's request is the probe).
    #[inline]
    pub(crate) fn admit(&self) -> bool {
        if self.state.load(Ordering::Acquire) != DOWN {
            return true;
        }
        let now = self.clock.now();
        let next = self.next_probe.load(Ordering::Acquire);
        now >= next
            && self
                .next_probe
                .compare_exchange(
                    next,
                    now + self.probe_interval,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                )
                .is_ok()
    }

    /// The error for a call that was not tried because Redis is known to be down.
    pub(crate) fn down_error(&self) -> BackendError {
        BackendError::with_kind(
            ErrorKind::Unreachable,
            "redis is unreachable (a recent call failed; it is probed again every 100 ms)",
            None,
        )
    }

    /// Sends `script` (EVALSHA, or EVAL when the server answers NOSCRIPT) with `last` appended to
    /// `args` when given.
    async fn run(
        handle: &mut Handle,
        script: &Script,
        keys: &[&[u8]],
        args: &[&[u8]],
        last: Option<u64>,
    ) -> Result<Value, RedisError> {
        match handle
            .query(&script.cmd("EVALSHA", &script.sha, keys, args, last))
            .await
        {
            Err(e) if e.kind() == RedisErrorKind::Server(ServerErrorKind::NoScript) => {
                tracing::debug!(sha = %script.sha, "redis script cache is empty; sending the script");
                handle
                    .query(&script.cmd("EVAL", &script.code, keys, args, last))
                    .await
            }
            other => other,
        }
    }

    /// Runs `script` on `keys` with `args`, within `timeout` (for the whole call, the `NOSCRIPT`
    /// round trip included), and records the outcome in the health state. NOSCRIPT (a restarted or
    /// flushed server) is answered by sending the script itself.
    ///
    /// A call abandoned on its timeout may still run in Redis later (Redis runs what it has
    /// received): for scripts that count, use [`eval_before_deadline`](Self::eval_before_deadline).
    // For scripts whose late run does no harm (caches); the rate limiter's and the shared
    // circuits' count, so they use `eval_before_deadline`.
    #[cfg_attr(not(feature = "cache"), allow(dead_code))]
    pub(crate) async fn eval(
        &self,
        script: &Script,
        keys: &[&[u8]],
        args: &[&[u8]],
        timeout: Duration,
    ) -> Result<Value, BackendError> {
        let (mut handle, generation) = self.current();
        let start = tokio::time::Instant::now();
        let call = Self::run(&mut handle, script, keys, args, None);
        let result = deadline::until(deadline(start, timeout), call).await;
        self.took_between(start, tokio::time::Instant::now());
        self.finish(result, timeout, generation)
    }

    /// Records the time a store's call took since `started` (feature `metrics`).
    fn took(&self, started: Nanos) {
        #[cfg(feature = "metrics")]
        self.meters
            .call_took(self.clock.now().saturating_sub(started));
        let _ = started;
    }

    /// Records the time a store's call took from `start` to `end` (feature `metrics`), both read
    /// by the caller.
    #[inline]
    fn took_between(&self, start: tokio::time::Instant, end: tokio::time::Instant) {
        #[cfg(feature = "metrics")]
        self.meters.call_took(crate::clock::nanos_between(
            start.into_std(),
            end.into_std(),
        ));
        let _ = (start, end);
    }

    /// Runs `script` as [`eval`](Self::eval) does, telling it until when its work is still wanted,
    /// so that a call abandoned on its timeout and run by Redis later (after a stall, say) does not
    /// write: a request the failure policy has answered must not also count in Redis.
    ///
    /// The script gets one more argument after `args`: the `TIME` (microseconds since the Unix
    /// epoch, on Redis's clock) after which this caller will have given up, or `""` while no reply
    /// has told this process how Redis's clock relates to its own (see [`RedisClock`]). The script
    /// must
    ///
    /// - read `TIME` first and, past that bound, answer the error `RAMPARTLATE <TIME in µs>`
    ///   without writing anything;
    /// - otherwise answer an array whose last element is the `TIME` it read, in microseconds (an
    ///   integer); this method takes it off before returning the array.
    ///
    /// A `RAMPARTLATE` reply that arrives while the caller still waits means the estimate of
    /// Redis's clock was off (its clock was stepped, or a faster reply than any before): the estimate
    /// is corrected from the reply and the call sent once more.
    pub(crate) async fn eval_before_deadline(
        &self,
        script: &Script,
        keys: &[&[u8]],
        args: &[&[u8]],
        timeout: Duration,
    ) -> Result<Value, BackendError> {
        // One clock read for the deadline on our clock and the call's: `timeout` would read the
        // clock again (about 100 instructions per call, `instructions -- redis`).
        let start = tokio::time::Instant::now();
        let started = self.clock.at(start);
        let (result, generation) = self
            .fenced(script, keys, args, start, started, timeout)
            .await;
        self.took(started);
        self.finish(result, timeout, generation)
    }

    /// Runs `script` as [`eval_before_deadline`](Self::eval_before_deadline) does (fenced by its
    /// deadline on Redis's clock, the `TIME` it read taken off the reply), without recording the
    /// outcome in the health state, as [`quiet`](Self::quiet): for background writes that decide
    /// nothing but must not apply late (a live policy change sent on a connection that stalled,
    /// run by Redis after a newer change went through on its replacement, would revert it).
    pub(crate) async fn quiet_before_deadline(
        &self,
        script: &Script,
        keys: &[&[u8]],
        args: &[&[u8]],
        timeout: Duration,
    ) -> Result<Value, BackendError> {
        let start = tokio::time::Instant::now();
        let started = self.clock.at(start);
        let (result, _) = self
            .fenced(script, keys, args, start, started, timeout)
            .await;
        unrecorded(result, timeout)
    }

    /// The call of [`eval_before_deadline`](Self::eval_before_deadline), bounded by `timeout` from
    /// `start` (`started` on this connection's clock), and the generation of the connection it
    /// went on.
    async fn fenced(
        &self,
        script: &Script,
        keys: &[&[u8]],
        args: &[&[u8]],
        start: tokio::time::Instant,
        started: Nanos,
        timeout: Duration,
    ) -> (Result<Result<Value, RedisError>, Late>, u64) {
        let gives_up_at = started.saturating_add(duration_to_nanos(timeout));
        let (mut handle, generation) = self.current();
        let call = async {
            let mut sent_again = false;
            loop {
                // `""` until a reply has told how Redis's clock relates to ours.
                let not_after = self.redis_clock.redis_us_at(gives_up_at);
                let reply = match not_after {
                    Some(us) => Self::run(&mut handle, script, keys, args, Some(us)).await,
                    None => {
                        let args = [args, &[b"".as_slice()]].concat();
                        Self::run(&mut handle, script, keys, &args, None).await
                    }
                };
                let received = self.clock.now();
                match reply {
                    Ok(Value::Array(mut items)) => {
                        if let Some(Value::Int(at)) = items.last() {
                            if let Ok(at) = u64::try_from(*at) {
                                self.redis_clock.learn(received, at);
                            }
                            items.pop();
                        }
                        return Ok(Value::Array(items));
                    }
                    Err(e) if e.code() == Some(LATE) => {
                        if let Some(at) = e.detail().and_then(|d| d.trim().parse().ok()) {
                            self.redis_clock.learn(received, at);
                        }
                        if sent_again {
                            return Err(e);
                        }
                        tracing::debug!(
                            server = %self.server,
                            "redis ran a call after its deadline by the estimate of its clock, \
                             yet answered in time; estimate corrected, call sent again"
                        );
                        sent_again = true;
                    }
                    other => return other,
                }
            }
        };
        (
            deadline::until(deadline(start, timeout), call).await,
            generation,
        )
    }

    /// Sends one command within `timeout`, recording the outcome (for stores that need plain
    /// commands rather than scripts).
    pub(crate) async fn query(&self, cmd: &Cmd, timeout: Duration) -> Result<Value, BackendError> {
        self.query_timed(cmd, timeout).await.0
    }

    /// Sends one command as [`query`](Self::query) does, and answers with its outcome the instant
    /// (tokio's clock) the call ended: a caller that needs the time after the reply (the cache's
    /// hit path) reads it here rather than once more.
    ///
    /// Two clock reads per call, before and after: the call's deadline and its latency share the
    /// first (`tokio::time::timeout` would read it again, and the latency had
    /// one of each end of its own: about 150 instructions per call in the `instructions` bench's
    /// `redis64/rampart_cache_hit` row, `INSTRUCTIONS_ONLY=1 INSTRUCTIONS_CALLS=2000 cargo bench
    /// --bench instructions --all-features -- redis64/`).
    pub(crate) async fn query_timed(
        &self,
        cmd: &Cmd,
        timeout: Duration,
    ) -> (Result<Value, BackendError>, tokio::time::Instant) {
        let (mut handle, generation) = self.current();
        let start = tokio::time::Instant::now();
        // `query_raw` and the error reply taken out here, not through `Handle::query`: each
        // `async fn` level holds and moves the whole call's future once more.
        let result = deadline::until(deadline(start, timeout), handle.query_raw(cmd))
            .await
            .map(|r| r.and_then(Value::extract_error));
        let ended = tokio::time::Instant::now();
        self.took_between(start, ended);
        (self.finish(result, timeout, generation), ended)
    }

    /// Runs `script` (or, with `script` `None`, sends `cmd`) within `timeout` without recording
    /// the outcome in the health state: for background work that decides nothing (the rate
    /// limiter's policy polls and changes). A poll sent on a connection that is being replaced
    /// times out after decisions went back to Redis on the new one; recorded, it would mark Redis
    /// down again and send requests to the failure policy for a probe interval.
    pub(crate) async fn quiet(
        &self,
        script: Option<ScriptCall<'_>>,
        cmd: &Cmd,
        timeout: Duration,
    ) -> Result<Value, BackendError> {
        let (mut handle, _) = self.current();
        let call = async {
            match script {
                Some((script, keys, args)) => {
                    Self::run(&mut handle, script, keys, args, None).await
                }
                None => handle.query(cmd).await,
            }
        };
        unrecorded(tokio::time::timeout(timeout, call).await, timeout)
    }

    /// Sends `cmd` as [`query`](Self::query) does, answering `redis`'s own error type (for
    /// [`RedisConnection`](super::RedisConnection)): a timeout is an I/O error of kind `TimedOut`.
    pub(crate) async fn query_raw(
        &self,
        cmd: &Cmd,
        timeout: Duration,
    ) -> Result<Value, RedisError> {
        let (mut handle, generation) = self.current();
        let due = deadline(tokio::time::Instant::now(), timeout);
        let result = deadline::until(due, handle.query_raw(cmd)).await;
        self.finish(result, timeout, generation)
            .map_err(|e| into_redis_error(e, timeout))
    }

    /// Sends a pipeline as [`query_raw`](Self::query_raw) does.
    pub(crate) async fn pipeline_raw(
        &self,
        pipeline: &redis::Pipeline,
        offset: usize,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<Value>, RedisError> {
        let (mut handle, generation) = self.current();
        let due = deadline(tokio::time::Instant::now(), timeout);
        let result = deadline::until(due, handle.pipeline(pipeline, offset, count)).await;
        self.finish(result, timeout, generation)
            .map_err(|e| into_redis_error(e, timeout))
    }

    /// Sends `TIME` within `timeout`, recording the outcome; the answer also tells how Redis's
    /// clock relates to this process's.
    pub(crate) async fn ping(&self, timeout: Duration) -> Result<(), BackendError> {
        let value = self.query(&redis::cmd("TIME"), timeout).await?;
        let received = self.clock.now();
        if let Some((s, us)) = parse_time(&value) {
            self.redis_clock
                .learn(received, s.saturating_mul(1_000_000).saturating_add(us));
        }
        Ok(())
    }

    /// Records a call's outcome in the health state (a timeout makes the connection a suspect)
    /// and answers it, a failure as a [`BackendError`] holding the `redis` error.
    fn finish<T>(
        &self,
        result: Result<Result<T, RedisError>, Late>,
        timeout: Duration,
        generation: u64,
    ) -> Result<T, BackendError> {
        let error = match result {
            Ok(Ok(value)) => {
                self.up();
                return Ok(value);
            }
            Ok(Err(e)) => {
                // An error reply (data it cannot read, READONLY, OOM, ...) comes from Redis: the
                // connection is up, whatever the call's fate.
                let answered = matches!(
                    e.kind(),
                    RedisErrorKind::Server(_) | RedisErrorKind::Extension
                );
                let demoted = takes_no_writes(&e);
                if demoted && self.is_current(generation) {
                    self.demoted(generation);
                }
                let error = classify(e);
                #[cfg(feature = "metrics")]
                self.meters.error(error.kind());
                match error.kind() {
                    ErrorKind::Data | ErrorKind::Other if answered => self.up(),
                    ErrorKind::Data | ErrorKind::Other => {}
                    ErrorKind::Unreachable | ErrorKind::Timeout if self.is_current(generation) => {
                        self.down(&error)
                    }
                    ErrorKind::Unreachable | ErrorKind::Timeout => {}
                }
                return Err(error);
            }
            Err(_) => BackendError::with_kind(
                ErrorKind::Timeout,
                format!("redis did not answer within {timeout:?}"),
                None,
            ),
        };
        #[cfg(feature = "metrics")]
        self.meters.error(error.kind());
        if self.is_current(generation) {
            self.down(&error);
            self.suspect(generation);
        }
        Err(error)
    }

    /// Whether connection `generation` is still the one in use. A call that fails on a connection
    /// already replaced (it was sent before the replacement, and times out after it) says nothing
    /// of the new one: counted as an error, it neither marks Redis down (which would send the
    /// next probe interval's requests to the failure policy although the new connection answers)
    /// nor makes the new connection a suspect. The `redis_cache` test `liveness` caught it: a
    /// probe sent down the frozen connection timed out just after the replacement, and a request
    /// right after it was answered by the policy instead of from Redis.
    fn is_current(&self, generation: u64) -> bool {
        self.line().generation == generation
    }

    /// A call on connection `generation` (the one in use) timed out: unless a check is under way
    /// or that connection was replaced meanwhile, check in the background that it still answers,
    /// and replace it if it does not (see the module documentation).
    fn suspect(&self, generation: u64) {
        if self.line().generation != generation || self.checking.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.checking.store(false, Ordering::Release);
            return;
        };
        runtime.spawn(check(EndCheck::new(&self.me, generation)));
    }

    /// Connection `generation` (the one in use) reached a node that takes no writes: `READONLY`,
    /// a primary demoted by a failover (the address it was opened to, a virtual IP or DNS name,
    /// now leads to the new primary), or `MASTERDOWN`. It still answers `PING`, so the liveness
    /// check would keep it: open a new connection in its place, at most once per liveness
    /// timeout. A cluster connection is left alone: it follows `READONLY` to the slots' new
    /// owners itself.
    fn demoted(&self, generation: u64) {
        if !matches!(self.line().handle, Handle::Single(_)) {
            return;
        }
        let now = self.clock.now();
        let next = self.next_reopen.load(Ordering::Acquire);
        if now < next
            || self.line().generation != generation
            || self.checking.load(Ordering::Acquire)
        {
            return;
        }
        // A check already under way (a timeout's) is left to finish: the slot is not spent, so
        // the next `READONLY` after it reopens at once.
        let after = now.saturating_add(duration_to_nanos(self.liveness_timeout()));
        if self
            .next_reopen
            .compare_exchange(next, after, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
            || self.checking.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.checking.store(false, Ordering::Release);
            return;
        };
        runtime.spawn(reopen(EndCheck::new(&self.me, generation), Reopen::Demoted));
    }

    /// Puts `handle` in place of connection `generation`, which stopped answering (or reached a
    /// node that takes no writes).
    fn replace(&self, handle: Handle, generation: u64, why: Reopen) {
        let old = std::mem::replace(
            &mut *self.line.write().unwrap_or_else(PoisonError::into_inner),
            Line {
                handle,
                generation: generation + 1,
            },
        );
        self.replaced.fetch_add(1, Ordering::Relaxed);
        // The next request tries the new connection at once rather than at the next probe.
        self.next_probe.store(0, Ordering::Release);
        self.checking.store(false, Ordering::Release);
        match why {
            Reopen::Silent => tracing::warn!(
                connection = old.handle.kind(),
                server = %self.server,
                liveness_timeout = ?self.liveness_timeout(),
                "a redis connection stopped answering (no reply to PING); replaced it with a new one"
            ),
            Reopen::Demoted => tracing::warn!(
                connection = old.handle.kind(),
                server = %self.server,
                "a redis connection reached a node that takes no writes (READONLY or MASTERDOWN: \
                 a failover?); replaced it with a new one"
            ),
        }
        #[cfg(feature = "metrics")]
        self.meters.replaced();
        // Calls still waiting on the old connection hold clones of it until their timeouts; it
        // closes when the last goes.
        drop(old);
    }

    fn up(&self) {
        if self.state.load(Ordering::Relaxed) == UP {
            return;
        }
        let was = self.state.swap(UP, Ordering::AcqRel);
        if was == UP {
            return;
        }
        if was == DOWN {
            tracing::info!(
                connection = self.line().handle.kind(),
                server = %self.server,
                "redis is reachable again; decisions are shared again"
            );
        }
        #[cfg(feature = "metrics")]
        self.meters.set_up(true);
    }

    fn down(&self, error: &BackendError) {
        self.next_probe
            .store(self.clock.now() + self.probe_interval, Ordering::Release);
        if self.state.swap(DOWN, Ordering::AcqRel) != DOWN {
            tracing::warn!(
                connection = self.line().handle.kind(),
                server = %self.server,
                %error,
                "redis is unavailable; following the failure policy until it answers again"
            );
            #[cfg(feature = "metrics")]
            self.meters.set_up(false);
        }
    }
}

/// The outcome of a call whose health is not recorded ([`Conn::quiet`],
/// [`Conn::quiet_before_deadline`]): its value, Redis's error, or a timeout after `timeout`.
fn unrecorded<E>(
    result: Result<Result<Value, RedisError>, E>,
    timeout: Duration,
) -> Result<Value, BackendError> {
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(classify(e)),
        Err(_) => Err(BackendError::with_kind(
            ErrorKind::Timeout,
            format!("redis did not answer within {timeout:?}"),
            None,
        )),
    }
}

/// Whether `e` says the node takes no writes: `READONLY` (a replica) or `MASTERDOWN`; also as
/// Redis before 7 reports an error inside a script (`ERR Error running script ...: -READONLY
/// You can't write against a read only replica.`).
fn takes_no_writes(e: &RedisError) -> bool {
    matches!(
        e.kind(),
        RedisErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
    ) || (e.code() == Some("ERR")
        && e.detail()
            .is_some_and(|d| d.contains("-READONLY ") || d.contains("-MASTERDOWN ")))
}

/// `start + timeout`, or as far off as tokio's `timeout` puts a deadline that overflows.
fn deadline(start: tokio::time::Instant, timeout: Duration) -> tokio::time::Instant {
    start
        .checked_add(timeout)
        .unwrap_or_else(|| start + Duration::from_secs(86_400 * 365 * 30))
}

/// The liveness check of connection `generation` of `conn`: a `PING` down that connection (on a
/// cluster, every master), and a replacement when it does not answer within the liveness timeout.
/// Holds only a weak reference between steps, so a backend dropped meanwhile ends it.
///
/// `end` is made before the task is spawned and moved into it: a task dropped before it ever
/// ran (its runtime shut down first) ends the check too.
async fn check(end: EndCheck) {
    let (conn, generation) = (end.conn.clone(), end.generation);
    let (mut handle, timeout) = {
        let Some(conn) = conn.upgrade() else {
            return;
        };
        let line = conn.line();
        if line.generation != generation {
            return;
        }
        (line.handle.clone(), conn.liveness_timeout())
    };
    let answered = match tokio::time::timeout(timeout, handle.query(&redis::cmd("PING"))).await {
        Ok(Ok(_)) => true,
        // An error reply (LOADING, NOAUTH, ...) comes from Redis: the connection answers.
        Ok(Err(e)) => matches!(
            e.kind(),
            RedisErrorKind::Server(_) | RedisErrorKind::Extension
        ),
        Err(_) => false,
    };
    drop(handle);
    if answered {
        return;
    }
    reopen(end, Reopen::Silent).await;
}

/// Ends a check (or a reopening) of connection `generation` however its task ends: answered,
/// the backend dropped, or the task dropped halfway with the runtime it ran on. Unless that
/// connection was replaced meanwhile (the replacement ended the check already, and another may
/// have begun), the next suspect call may start a check again: without this, a task dropped
/// mid-check left `checking` set and the backend never checked or replaced a connection again.
struct EndCheck {
    conn: Weak<Conn>,
    generation: u64,
}

impl EndCheck {
    fn new(conn: &Weak<Conn>, generation: u64) -> Self {
        Self {
            conn: conn.clone(),
            generation,
        }
    }
}

impl Drop for EndCheck {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.upgrade()
            && conn.line().generation == self.generation
        {
            conn.checking.store(false, Ordering::Release);
        }
    }
}

/// Why a connection is replaced.
#[derive(Clone, Copy, Debug)]
enum Reopen {
    /// It did not answer `PING` within the liveness timeout.
    Silent,
    /// It reached a node that takes no writes.
    Demoted,
}

/// Opens a new connection and puts it in place of connection `generation` of `conn`, trying
/// again (with growing delays) until it opens or the backend is dropped.
async fn reopen(end: EndCheck, why: Reopen) {
    let (conn, generation) = (end.conn.clone(), end.generation);
    let mut delay = REOPEN_DELAYS.0;
    loop {
        let opener = match conn.upgrade() {
            Some(conn) => conn.opener.clone(),
            None => return,
        };
        match tokio::time::timeout(REOPEN_TIMEOUT, opener.open()).await {
            Ok(Ok(handle)) => {
                if let Some(conn) = conn.upgrade() {
                    conn.replace(handle, generation, why);
                }
                return;
            }
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "opening a new redis connection failed; trying again")
            }
            Err(_) => tracing::debug!("opening a new redis connection timed out; trying again"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(REOPEN_DELAYS.1);
    }
}

/// The integration tests' throw-away `redis-server`.
#[cfg(test)]
#[allow(dead_code, unreachable_pub)]
#[path = "../../../tests/common/redis.rs"]
mod test_server;

#[cfg(test)]
mod tests {
    use super::super::clock::NO_OFFSET;
    use super::*;

    use super::test_server as server;

    /// A script that follows the protocol of `eval_before_deadline` and counts its runs.
    const COUNTING: &str = r"
local t = redis.call('TIME')
local time_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local not_after = tonumber(ARGV[1] or '')
if not_after and time_us > not_after then
  return redis.error_reply(string.format('RAMPARTLATE %.0f', time_us))
end
return {redis.call('INCR', KEYS[1]), time_us}
";

    /// A call that times out (or cannot reach Redis) on a connection replaced meanwhile says
    /// nothing of the new one: Redis is not marked down (requests keep going to it rather than to
    /// the failure policy) and no check of the new connection starts. The same failure on the
    /// connection in use marks it down, as before.
    /// A check whose task is dropped halfway (its runtime shut down) ends: a later suspect call
    /// can check again. It stayed "under way" for good before, and the backend never checked or
    /// replaced a connection again.
    #[test]
    fn a_check_dropped_with_its_runtime_lets_the_next_one_start() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let conn = rt.block_on(async {
            let client = redis::Client::open("redis://127.0.0.1:1/").unwrap();
            let config = redis::aio::ConnectionManagerConfig::new();
            let (opener, handle) = Opener::lazy(client, config).unwrap();
            let conn = Conn::new(handle, opener, "test");
            conn.suspect(0);
            tokio::time::sleep(Duration::from_millis(50)).await;
            assert!(
                conn.checking.load(Ordering::SeqCst),
                "nothing listens there: still checking, or trying to reopen"
            );
            conn
        });
        drop(rt);
        assert!(!conn.checking.load(Ordering::SeqCst));
        assert_eq!(conn.replaced(), 0);

        // A check task that never ran: its runtime gone before it was first polled.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async { conn.suspect(0) });
        assert!(conn.checking.load(Ordering::SeqCst), "spawned, not yet run");
        drop(rt);
        assert!(!conn.checking.load(Ordering::SeqCst));
    }

    #[test]
    fn a_replica_refusing_writes_is_recognised_as_redis_7_and_earlier_report_it() {
        let error = |reply: &[u8]| {
            redis::parse_redis_value(reply)
                .unwrap()
                .extract_error()
                .unwrap_err()
        };
        for reply in [
            &b"-READONLY You can't write against a read only replica.\r\n"[..],
            b"-MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'.\r\n",
            b"-ERR Error running script (call to f_0123): @user_script:191: @user_script: 191: -READONLY You can't write against a read only replica.\r\n",
        ] {
            assert!(takes_no_writes(&error(reply)), "{}", String::from_utf8_lossy(reply));
        }
        for reply in [
            &b"-ERR unknown command\r\n"[..],
            b"-OOM command not allowed when used memory > 'maxmemory'.\r\n",
            b"-ERR Error running script: @user_script:1: RAMPARTDATA bad state\r\n",
        ] {
            assert!(
                !takes_no_writes(&error(reply)),
                "{}",
                String::from_utf8_lossy(reply)
            );
        }
    }

    #[tokio::test]
    async fn a_late_call_on_a_replaced_connection_does_not_mark_redis_down() {
        let client = || redis::Client::open("redis://127.0.0.1:1/").unwrap();
        let config = redis::aio::ConnectionManagerConfig::new();
        let (opener, handle) = Opener::lazy(client(), config.clone()).unwrap();
        let conn = Conn::new(handle, opener, "test");
        conn.up();
        let (_, replacement) = Opener::lazy(client(), config).unwrap();
        conn.replace(replacement, 0, Reopen::Silent);
        let timeout = Duration::from_millis(50);

        let late = conn.finish::<Value>(Err(Late), timeout, 0);
        assert!(late.unwrap_err().is_timeout());
        let refused = RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let unreachable = conn.finish::<Value>(Ok(Err(refused)), timeout, 0);
        assert!(unreachable.unwrap_err().is_unreachable());
        assert!(conn.is_connected(), "a failure of the old connection");
        assert!(
            !conn.checking.load(Ordering::SeqCst),
            "no check of the new one"
        );

        let late = conn.finish::<Value>(Err(Late), timeout, 1);
        assert!(late.unwrap_err().is_timeout());
        assert!(!conn.is_connected(), "a failure of the connection in use");
    }

    /// When the estimate of Redis's clock is off (its clock was stepped forward), a script
    /// refuses as late a call whose caller still waits: the estimate is corrected from the reply
    /// and the call sent again, once; the refused run wrote nothing.
    #[tokio::test]
    async fn a_late_reply_that_arrives_in_time_corrects_the_clock_and_is_sent_again() {
        let Some(server) = server::RedisServer::start() else {
            return;
        };
        let client = redis::Client::open(server.url()).unwrap();
        let config = redis::aio::ConnectionManagerConfig::new();
        let (opener, handle) = Opener::lazy(client, config).unwrap();
        let conn = Conn::new(handle, opener, server.url());
        let script = Script::new(COUNTING);
        let timeout = Duration::from_secs(5);
        let run = || conn.eval_before_deadline(&script, &[b"runs"], &[], timeout);

        // Not knowing Redis's clock: no bound, the call runs.
        assert_eq!(run().await.unwrap(), Value::Array(vec![Value::Int(1)]));
        let learned = conn.redis_clock.redis_us_at(conn.clock.now()).unwrap();
        // As if Redis's clock had been an hour behind until now: every bound is an hour early.
        let stale = RedisClock::new();
        stale.learn(conn.clock.now(), learned - 3_600_000_000);
        assert!(stale.redis_us_at(0).is_some());
        conn.redis_clock
            .current
            .store(stale.current.load(Ordering::Relaxed), Ordering::Relaxed);
        conn.redis_clock
            .previous
            .store(NO_OFFSET, Ordering::Relaxed);

        assert_eq!(
            run().await.unwrap(),
            Value::Array(vec![Value::Int(2)]),
            "sent again after the late reply, and counted once"
        );
        let now = conn.redis_clock.redis_us_at(conn.clock.now()).unwrap();
        assert!(now + 1_000_000 > learned, "corrected from the late reply");
        assert!(conn.is_connected());
    }
}
