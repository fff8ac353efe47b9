//! [`RedisConnection`]: the backend's connection, for an application's own commands.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::conn::{Conn, Script};
use crate::backend::BackendError;

/// The connection of a [`RedisBackend`](super::RedisBackend), for the application's own commands
/// (`redis::cmd(..).query_async(&mut conn)`, scripts' `invoke_async`, pipelines): it implements
/// `redis`'s [`ConnectionLike`], so any async command of the `redis` crate runs on it.
///
/// It is the backend's connection, not a second one, so what the backend does for its stores it
/// does for these commands too:
///
/// - every command has a timeout (the backend's [`timeout`](super::RedisBackend::timeout) when
///   the connection was taken, or [`with_timeout`](Self::with_timeout)); one that runs out answers
///   an I/O error of kind [`TimedOut`](std::io::ErrorKind::TimedOut);
/// - a connection that stops answering is replaced (see
///   [`liveness_timeout`](super::RedisBackend::liveness_timeout)), and the commands that come after
///   go to the new one;
/// - [`is_connected`](super::RedisBackend::is_connected) and the `rampart_redis_*` metrics count
///   these commands with the stores'.
///
/// Cheap to clone. A command that timed out may still run in Redis later (Redis runs what it has
/// received): a command whose late run would do harm must carry its own deadline, as the
/// backend's own scripts do.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use tower_rampart::backend::RedisBackend;
///
/// let redis = RedisBackend::connect("redis://127.0.0.1:6379/").await?;
/// let mut conn = redis.connection();
/// let n: i64 = redis::cmd("INCR").arg("visits").query_async(&mut conn).await?;
/// # let _ = n; Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisConnection {
    conn: Arc<Conn>,
    timeout: Duration,
}

impl RedisConnection {
    pub(super) fn new(conn: Arc<Conn>, timeout: Duration) -> Self {
        Self { conn, timeout }
    }

    /// The same connection with another per-command timeout (at least 1 ms).
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.max(Duration::from_millis(1));
        self
    }

    /// The per-command timeout.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs `script` on `keys` with `args` so that it **writes nothing once this caller has given
    /// up on it**: a write answered with an error (the timeout ran out, Redis was stalled) is not
    /// applied later, when Redis runs what it had received. This is what an application needs for
    /// "a refusal means nothing was stored": the crate's own rate-limit scripts work this way.
    ///
    /// The script learns, on Redis's own clock, the time after which its caller has given up (see
    /// the [backend's documentation](super#a-request-is-counted-once-even-when-redis-answers-late)
    /// for how that clock is learned: nothing needs to be synchronised), and one that starts later
    /// answers an error without running. The answer is the script's own (a `nil` answer is
    /// [`Value::Nil`]).
    ///
    /// What the guarantee does not cover: before anything has come back from Redis on this
    /// backend (right after `connect_lazy`) calls carry no bound; and a script that starts just
    /// before the bound and whose answer travels back slower than the fastest recent one has
    /// written, though its caller sees a timeout (at least once, as any store without the bound).
    ///
    /// # Errors
    ///
    /// When Redis does not answer within the timeout, is unreachable, or the script fails.
    pub async fn eval_fenced(
        &self,
        script: &FencedScript,
        keys: &[&[u8]],
        args: &[&[u8]],
    ) -> Result<Value, BackendError> {
        let reply = self
            .conn
            .eval_before_deadline(&script.inner, keys, args, self.timeout)
            .await?;
        match reply {
            Value::Array(mut items) if items.len() == 1 => Ok(items.pop().unwrap_or(Value::Nil)),
            other => Err(BackendError::new(
                format!("a fenced script answered {other:?}, not its one value"),
                None,
            )),
        }
    }
}

/// A Lua script for [`RedisConnection::eval_fenced`]: written as for `EVAL`, with `KEYS` and
/// `ARGV` as usual, it is wrapped so that it reads Redis's `TIME` first and runs only if its
/// caller still waits for it. Make it once (a `static` with `LazyLock`) and run it many times: it
/// is sent by its SHA1 (`EVALSHA`), whole only when Redis does not have it.
///
/// ```
/// use tower_rampart::backend::redis::FencedScript;
///
/// let add = FencedScript::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
/// assert_eq!(add.sha().len(), 40);
/// ```
pub struct FencedScript {
    inner: Script,
}

impl FencedScript {
    /// Wraps `body` (a script as for `EVAL`) so that it runs only while its caller waits.
    ///
    /// The body must not read the last element of `ARGV` past those it is given (the wrapper
    /// removes it before the body runs), and, like any script that reads `TIME` before writing,
    /// it needs Redis 5 or newer (script effects replication, the default since Redis 5).
    pub fn new(body: &str) -> Self {
        let code = format!(
            "local rampart_t = redis.call('TIME')\n\
             local rampart_now = tonumber(rampart_t[1]) * 1000000 + tonumber(rampart_t[2])\n\
             local rampart_bound = tonumber(table.remove(ARGV))\n\
             if rampart_bound and rampart_now > rampart_bound then\n\
               return redis.error_reply(string.format('RAMPARTLATE %.0f', rampart_now))\n\
             end\n\
             local rampart_result = (function()\n{body}\nend)()\n\
             if rampart_result == nil then rampart_result = false end\n\
             return {{rampart_result, rampart_now}}\n"
        );
        Self {
            inner: Script::new(code),
        }
    }

    /// The SHA1 of the wrapped script, as `EVALSHA` takes it.
    pub fn sha(&self) -> &str {
        self.inner.sha()
    }
}

impl fmt::Debug for FencedScript {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FencedScript")
            .field("sha", &self.sha())
            .finish()
    }
}

impl fmt::Debug for RedisConnection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConnection")
            .field("conn", &self.conn)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(self.conn.query_raw(cmd, self.timeout))
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(
            self.conn
                .pipeline_raw(pipeline, offset, count, self.timeout),
        )
    }

    fn get_db(&self) -> i64 {
        self.conn.db()
    }
}
