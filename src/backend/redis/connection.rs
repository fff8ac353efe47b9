//! [`RedisConnection`]: the backend's connection, for an application's own commands.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisFuture, Value};

use super::conn::Conn;

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
