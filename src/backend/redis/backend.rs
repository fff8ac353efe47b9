//! `RedisBackend`: connecting (a single node or a cluster, TLS, lazily or at once), the TCP and
//! connection-manager settings, and the per-layer settings each store is built from.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::conn::{self, Conn, Handle, Opener};
use super::{
    CONNECT_TIMEOUT, DEFAULT_PREFIX, DEFAULT_TIMEOUT, FailurePolicy, RedisConnection, StoreClock,
};
use crate::backend::{BackendError, ErrorKind};
use crate::clock::{Clock, TokioClock};
use crate::error::ConfigError;

#[cfg_attr(not(feature = "rate-limit"), allow(dead_code))]
/// Per-layer settings: each layer's store is built from the backend value it was given.
#[derive(Clone, Debug)]
pub(super) struct Settings {
    pub(super) prefix: Arc<str>,
    pub(super) timeout: Duration,
    pub(super) policy: FailurePolicy,
    pub(super) local_max_keys: usize,
    pub(super) clock: StoreClock,
    pub(super) repair: bool,
    /// Whether rate-limit decisions made at once share script calls (single node only).
    #[cfg_attr(not(feature = "rate-limit"), allow(dead_code))]
    pub(super) batch: bool,
    #[cfg_attr(not(feature = "cache"), allow(dead_code))]
    pub(super) cache_slots: u16,
    /// As last given to [`RedisBackend::liveness_timeout`] (the connection holds the value in
    /// force); checked when a layer is built.
    pub(super) liveness_timeout: Duration,
    /// How often a rate limiter asks Redis for live changes made by other replicas.
    #[cfg_attr(not(feature = "rate-limit"), allow(dead_code))]
    pub(super) policy_poll_interval: Duration,
}

/// A Redis connection (single node or cluster) and the settings of the stores built on it.
///
/// Cheap to clone: clones share one connection (and what is known of its health) and carry their
/// own settings, so one connection serves layers with different prefixes, timeouts and failure
/// policies. Give it to a layer with `.backend(redis.clone())`.
///
/// The connection reconnects by itself: when it is closed (a single node through the `redis`
/// crate's `ConnectionManager`, a cluster through its async cluster client), and when it goes
/// silent without closing (it is replaced; see
/// [When a connection goes silent](super#when-a-connection-goes-silent)).
///
/// See the [module documentation](super) for how decisions are made and what happens when Redis is
/// slow or down.
#[derive(Clone)]
pub struct RedisBackend {
    pub(super) conn: Arc<Conn>,
    pub(super) settings: Settings,
}

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("conn", &self.conn)
            .field("prefix", &self.settings.prefix)
            .field("timeout", &self.settings.timeout)
            .field("failure_policy", &self.settings.policy)
            .field("local_max_keys", &self.settings.local_max_keys)
            .field("clock", &self.settings.clock)
            .field("repair_corrupt_data", &self.settings.repair)
            .field("batch_decisions", &self.settings.batch)
            .field("policy_poll_interval", &self.settings.policy_poll_interval)
            .finish()
    }
}

fn url_error(url: &str, e: redis::RedisError) -> BackendError {
    BackendError::with_kind(
        ErrorKind::Other,
        format!("invalid redis url {:?}: {e}", redact(url)),
        Some(Box::new(e)),
    )
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// The server named in logs and metrics for a connection the application made.
const EXTERNAL: &str = "external";

/// The URL without user name or password, for metric labels.
fn without_credentials(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}{}", &url[..scheme + 3], &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

/// How long a connection may stay idle before TCP keepalive probes it, how often it probes then,
/// and how many unanswered probes close it: an idle connection to a host that is gone is closed
/// after about 5 + 3 × 1 = 8 s, by the kernel.
const KEEPALIVE: (Duration, Duration, u32) = (Duration::from_secs(5), Duration::from_secs(1), 3);

/// `TCP_USER_TIMEOUT` (Linux): how long data sent may stay unacknowledged before the kernel closes
/// the connection.
#[cfg(target_os = "linux")]
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(5);

/// The TCP settings of the connections this crate opens: `TCP_NODELAY` (commands are small and
/// answered one by one), keepalive ([`KEEPALIVE`]) and, on Linux, `TCP_USER_TIMEOUT`.
fn tcp_settings() -> redis::io::tcp::TcpSettings {
    use redis::io::tcp::socket2::TcpKeepalive;
    let keepalive = TcpKeepalive::new()
        .with_time(KEEPALIVE.0)
        .with_interval(KEEPALIVE.1);
    #[cfg(any(
        target_os = "linux",
        target_os = "android",
        target_os = "macos",
        target_os = "ios",
        target_os = "freebsd",
        target_os = "netbsd",
        target_os = "windows"
    ))]
    let keepalive = keepalive.with_retries(KEEPALIVE.2);
    let settings = redis::io::tcp::TcpSettings::default()
        .set_nodelay(true)
        .set_keepalive(keepalive);
    #[cfg(target_os = "linux")]
    let settings = settings.set_user_timeout(TCP_USER_TIMEOUT);
    settings
}

/// How the connection manager reconnects: quickly and for ever (a failed round of attempts is
/// started again by the next probe), so decisions return to Redis within a second of its return.
fn manager_config() -> redis::aio::ConnectionManagerConfig {
    redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(500)))
        .set_response_timeout(None) // each store call has its own timeout
        .set_min_delay(Duration::from_millis(20))
        .set_max_delay(Duration::from_millis(200))
        .set_number_of_retries(8)
}

impl RedisBackend {
    fn with_handle(handle: Handle, opener: Opener, server: String) -> Self {
        Self {
            conn: Conn::new(handle, opener, server),
            settings: Settings {
                prefix: Arc::from(DEFAULT_PREFIX),
                timeout: DEFAULT_TIMEOUT,
                policy: FailurePolicy::default(),
                local_max_keys: crate::backend::memory::DEFAULT_MAX_KEYS,
                clock: StoreClock::Redis(TokioClock::new()),
                repair: true,
                batch: true,
                cache_slots: 16,
                liveness_timeout: conn::DEFAULT_LIVENESS_TIMEOUT,
                policy_poll_interval: super::DEFAULT_POLICY_POLL_INTERVAL,
            },
        }
    }

    /// Connects to the Redis server at `url` and checks that it answers `PING` (within
    /// [`CONNECT_TIMEOUT`]).
    ///
    /// `url` is `redis://[user:password@]host[:port][/db]`, `rediss://...` (TLS, with the `redis`
    /// crate's TLS features enabled) or `redis+unix:///path/to/socket` (also `unix:///path`).
    ///
    /// # Errors
    ///
    /// When the URL is malformed or the server does not answer.
    pub async fn connect(url: &str) -> Result<Self, BackendError> {
        let backend = Self::connect_lazy(url)?;
        backend.conn.ping(CONNECT_TIMEOUT).await.map_err(|e| {
            BackendError::with_kind(
                e.kind(),
                format!("could not connect to redis at {}: {e}", redact(url)),
                Some(Box::new(e)),
            )
        })?;
        Ok(backend)
    }

    /// Sets up a connection to `url` without waiting for it: the application can start while Redis
    /// is down, its limiters following their failure policy until Redis answers.
    ///
    /// # Errors
    ///
    /// When the URL is malformed.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub fn connect_lazy(url: &str) -> Result<Self, BackendError> {
        let info = redis::IntoConnectionInfo::into_connection_info(url)
            .map_err(|e| url_error(url, e))?
            .set_tcp_settings(tcp_settings());
        let client = redis::Client::open(info).map_err(|e| url_error(url, e))?;
        let (opener, handle) =
            Opener::lazy(client, manager_config()).map_err(|e| url_error(url, e))?;
        Ok(Self::with_handle(handle, opener, without_credentials(url)))
    }

    /// Uses a `redis::Client` the application made (for settings the URL cannot carry: TLS
    /// certificates, TCP settings of its own, credentials from elsewhere), connects, and checks
    /// that the server answers, as [`connect`](Self::connect) does (within [`CONNECT_TIMEOUT`]).
    /// The backend keeps the client, to open a new connection when one goes silent; the client's
    /// own TCP settings are kept (this crate's, for [`connect`](Self::connect), are keepalive after
    /// 5 s idle and, on Linux, a `TCP_USER_TIMEOUT` of 5 s).
    ///
    /// The backend does not know where the connection goes: its logs and metrics name the server
    /// `external`.
    ///
    /// # Errors
    ///
    /// When the server does not answer.
    pub async fn from_client(client: redis::Client) -> Result<Self, BackendError> {
        let opener = Opener::Single(client, manager_config());
        let handle = tokio::time::timeout(CONNECT_TIMEOUT, opener.open())
            .await
            .map_err(|_| {
                BackendError::with_kind(
                    ErrorKind::Timeout,
                    format!("could not connect to redis within {CONNECT_TIMEOUT:?}"),
                    None,
                )
            })?
            .map_err(|e| {
                let e = conn::classify(e);
                BackendError::with_kind(
                    e.kind(),
                    format!("could not connect to redis: {e}"),
                    Some(Box::new(e)),
                )
            })?;
        let backend = Self::with_handle(handle, opener, EXTERNAL.to_string());
        backend.conn.ping(CONNECT_TIMEOUT).await?;
        Ok(backend)
    }

    /// Connects to a Redis Cluster through any of its `nodes` (URLs as for
    /// [`connect`](Self::connect)) and checks that it answers.
    ///
    /// # Errors
    ///
    /// When a URL is malformed or the cluster does not answer within [`CONNECT_TIMEOUT`].
    #[cfg(feature = "redis-cluster")]
    pub async fn connect_cluster<I, S>(nodes: I) -> Result<Self, BackendError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let nodes: Vec<String> = nodes.into_iter().map(|s| s.as_ref().to_string()).collect();
        let label = nodes
            .iter()
            .map(|n| without_credentials(n))
            .collect::<Vec<_>>()
            .join(",");
        let shown = nodes
            .iter()
            .map(|n| redact(n))
            .collect::<Vec<_>>()
            .join(", ");
        let client = redis::cluster::ClusterClient::builder(nodes)
            .connection_timeout(Duration::from_millis(500))
            .response_timeout(Duration::from_secs(1))
            .retries(3)
            .min_retry_wait(10)
            .max_retry_wait(100)
            .tcp_settings(tcp_settings())
            .build()
            .map_err(|e| url_error(&shown, e))?;
        Self::open_cluster(client, label, &shown).await
    }

    /// Uses a Redis Cluster client the application made (for settings the node URLs cannot carry),
    /// and checks that the cluster answers, as [`connect_cluster`](Self::connect_cluster) does.
    /// The client's own settings are kept: give it a connection timeout of about 500 ms, and a
    /// response timeout, retries and TCP settings of its own choosing.
    ///
    /// The backend does not know where the connection goes: its logs and metrics name the server
    /// `external`.
    ///
    /// # Errors
    ///
    /// When the cluster does not answer within [`CONNECT_TIMEOUT`].
    #[cfg(feature = "redis-cluster")]
    pub async fn from_cluster_client(
        client: redis::cluster::ClusterClient,
    ) -> Result<Self, BackendError> {
        Self::open_cluster(client, EXTERNAL.to_string(), EXTERNAL).await
    }

    #[cfg(feature = "redis-cluster")]
    async fn open_cluster(
        client: redis::cluster::ClusterClient,
        label: String,
        shown: &str,
    ) -> Result<Self, BackendError> {
        let connection = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_connection())
            .await
            .map_err(|_| {
                BackendError::with_kind(
                    ErrorKind::Timeout,
                    format!("could not connect to the redis cluster at {shown} within {CONNECT_TIMEOUT:?}"),
                    None,
                )
            })?
            .map_err(|e| {
                let e = conn::classify(e);
                BackendError::with_kind(
                    e.kind(),
                    format!("could not connect to the redis cluster at {shown}: {e}"),
                    Some(Box::new(e)),
                )
            })?;
        let backend =
            Self::with_handle(Handle::Cluster(connection), Opener::Cluster(client), label);
        backend.conn.ping(CONNECT_TIMEOUT).await?;
        Ok(backend)
    }

    /// The backend's connection, for the application's own commands: it implements `redis`'s
    /// `ConnectionLike`, with this backend's timeout per command, and shares the backend's health
    /// and liveness (a connection that stops answering is replaced for these commands too). See
    /// [`RedisConnection`].
    pub fn connection(&self) -> RedisConnection {
        RedisConnection::new(Arc::clone(&self.conn), self.settings.timeout)
    }

    /// How long a connection suspected dead has to answer before it is replaced (default
    /// [`DEFAULT_LIVENESS_TIMEOUT`](super::DEFAULT_LIVENESS_TIMEOUT), 1 s; between 10 ms and 60 s, checked when a layer is built).
    ///
    /// A call that times out makes its connection a suspect: one `PING` goes down that connection
    /// (on a cluster, to every master), and if no answer comes within this timeout, a new
    /// connection is opened and put in its place, the old one dropped. So from the first timeout,
    /// decisions go back to Redis within about this timeout, plus the time to open a connection,
    /// plus at most one probe interval (100 ms). A connection that answers was only slow and is
    /// kept.
    ///
    /// The setting belongs to the connection: it applies to every clone of this backend.
    #[must_use]
    pub fn liveness_timeout(mut self, timeout: Duration) -> Self {
        self.settings.liveness_timeout = timeout;
        self.conn.set_liveness_timeout(timeout);
        self
    }

    /// How many connections were replaced because they stopped answering, or reached a node that
    /// takes no writes (`READONLY`, `MASTERDOWN`) (for a health page; also the counter
    /// `rampart_redis_reconnects_total{server}`).
    pub fn replaced_connections(&self) -> u64 {
        self.conn.replaced()
    }

    /// The first part of every key this backend's stores write (default `"rampart"`). 1 to 64
    /// characters, without `{`, `}` or whitespace; checked when a layer is built.
    #[must_use]
    pub fn prefix(mut self, prefix: impl AsRef<str>) -> Self {
        self.settings.prefix = Arc::from(prefix.as_ref());
        self
    }

    /// How long one decision may wait for Redis (default [`DEFAULT_TIMEOUT`], 50 ms) before the
    /// failure policy decides instead. Between 1 ms and 60 s; checked when a layer is built.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.settings.timeout = timeout;
        self
    }

    /// How often each rate limiter on this backend asks Redis for live changes made through
    /// another replica's [`RateLimitHandle`](crate::rate_limit::RateLimitHandle) (default
    /// [`DEFAULT_POLICY_POLL_INTERVAL`](super::DEFAULT_POLICY_POLL_INTERVAL), 1 s; between 10 ms
    /// and 60 s, checked when a layer is built). One script call per limiter per interval; a change
    /// reaches every replica within this interval plus the [timeout](Self::timeout) (see
    /// [Limits, tiers and live changes](super#limits-tiers-and-live-changes)).
    #[must_use]
    pub fn policy_poll_interval(mut self, interval: Duration) -> Self {
        self.settings.policy_poll_interval = interval;
        self
    }

    /// What the layer given this backend does when Redis cannot decide (default
    /// [`FailurePolicy::Local`]).
    #[must_use]
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.settings.policy = policy;
        self
    }

    /// The most keys a store keeps in this process: keys remembered as over their limit, and the
    /// [`Local`](FailurePolicy::Local) fallback's keys (default 100,000 each). At least 1; checked
    /// when a layer is built.
    #[must_use]
    pub fn local_max_keys(mut self, max_keys: usize) -> Self {
        self.settings.local_max_keys = max_keys;
        self
    }

    /// Decides on `clock`'s time instead of Redis `TIME`: for tests and simulations only. Replicas
    /// whose clocks differ then disagree (a GCRA arrival time one of them reads as beyond its
    /// quota's tolerance is rebased to it, so a replica whose clock runs behind admits early), and
    /// keys expire in Redis no sooner than 10 minutes after their last write whatever `clock` says.
    #[must_use]
    pub fn clock<C: Clock>(mut self, clock: C) -> Self {
        self.settings.clock = StoreClock::Custom(Arc::new(move || clock.now()));
        self
    }

    /// Whether the last call to Redis (a decision or a [`ping`](Self::ping)) reached it. Cheap: for
    /// a health endpoint's `redis_connected`. Shared by every clone of this backend.
    ///
    /// - `false` until something has reached Redis: right after [`connect`](Self::connect) it is
    ///   `true` (connecting checks that Redis answers), but a backend made with
    ///   [`connect_lazy`](Self::connect_lazy) or from an existing connection reads `false` until
    ///   its first decision or `ping`. Call `ping` at start-up for a definite answer.
    /// - An error reply (`READONLY` during a failover, `OOM` when Redis is full, data a store
    ///   cannot read) counts as reaching Redis: the connection is up, even if the decision fell to
    ///   the failure policy.
    /// - A call that could not reach Redis or timed out makes it `false` until a later call
    ///   reaches Redis again (one request per 100 ms probes it meanwhile).
    pub fn is_connected(&self) -> bool {
        self.conn.is_connected()
    }

    /// Sends `TIME` (within this backend's timeout) and updates
    /// [`is_connected`](Self::is_connected). The answer also tells the backend how Redis's clock
    /// relates to this process's, which it needs to keep calls abandoned on their timeout from
    /// counting (see the [module documentation](super#when-redis-is-slow-or-gone)).
    ///
    /// # Errors
    ///
    /// When Redis does not answer in time, or answers with an error.
    pub async fn ping(&self) -> Result<(), BackendError> {
        self.conn.ping(self.settings.timeout).await
    }

    /// Whether the stores of this backend repair state they cannot read (default `true`).
    ///
    /// A limiter's key that holds something its script cannot read (another type of value, text
    /// that is not a state, or a state that the quota could never have produced, such as an
    /// arrival time years ahead) was written by something else: most likely a leftover or a
    /// collision with another program's keys under the same prefix. Left alone, it would cost that
    /// key's client a round trip and the failure policy on every request, for as long as it stays
    /// (for ever, without an expiry): `Closed` would refuse that client for good.
    ///
    /// - `true`: the script replaces it with a fresh state (with an expiry) and decides as for a
    ///   key never seen; the replacement is logged (a warning, at most one per 10 s per limiter,
    ///   naming the key and what was wrong) and counted in
    ///   `rampart_rate_limit_backend_repaired_total{name}`.
    /// - `false`: the data is left as it is, for someone to look at; each decision on that key is a
    ///   [`BackendError`] that [`is_corrupt_data`](BackendError::is_corrupt_data), handled by the
    ///   failure policy and counted (`rampart_redis_errors_total{kind="data"}`) until the key is
    ///   deleted (`redis-cli DEL <key>`; the error message names what is wrong).
    #[must_use]
    pub fn repair_corrupt_data(mut self, repair: bool) -> Self {
        self.settings.repair = repair;
        self
    }

    /// Whether unreadable state is repaired; see
    /// [`repair_corrupt_data`](Self::repair_corrupt_data).
    pub fn get_repair_corrupt_data(&self) -> bool {
        self.settings.repair
    }

    /// Whether a rate limiter's decisions made while another is on its way to Redis go together,
    /// as one script call of several keys (default `true`; single node only, a cluster's never
    /// do). Turn it off behind a proxy that shards by a command's first key (Envoy's Redis proxy,
    /// twemproxy) or a sharded service that refuses keys of several slots in one call: each
    /// decision is then its own call, as on a cluster.
    #[must_use]
    pub fn batch_decisions(mut self, batch: bool) -> Self {
        self.settings.batch = batch;
        self
    }

    /// Whether decisions are batched; see [`batch_decisions`](Self::batch_decisions).
    pub fn get_batch_decisions(&self) -> bool {
        self.settings.batch
    }

    /// The per-call timeout.
    pub fn get_timeout(&self) -> Duration {
        self.settings.timeout
    }

    /// The key prefix.
    pub fn get_prefix(&self) -> &str {
        &self.settings.prefix
    }

    /// The failure policy.
    pub fn get_failure_policy(&self) -> FailurePolicy {
        self.settings.policy
    }

    #[cfg_attr(not(feature = "rate-limit"), allow(dead_code))]
    pub(super) fn check_settings(&self) -> Result<(), ConfigError> {
        let s = &self.settings;
        let prefix_ok = !s.prefix.is_empty()
            && s.prefix.len() <= 64
            && !s
                .prefix
                .chars()
                .any(|c| c == '{' || c == '}' || c.is_whitespace() || c.is_control());
        if !prefix_ok {
            return Err(ConfigError::new(
                "prefix",
                format!(
                    "the redis key prefix {:?} must be 1 to 64 characters without braces or \
                     whitespace (braces would break Redis Cluster hash tags)",
                    s.prefix
                ),
            ));
        }
        if s.timeout < Duration::from_millis(1) || s.timeout > Duration::from_secs(60) {
            return Err(ConfigError::new(
                "timeout",
                format!(
                    "the redis call timeout must be between 1 ms and 60 s (got {:?})",
                    s.timeout
                ),
            ));
        }
        if s.liveness_timeout < Duration::from_millis(10)
            || s.liveness_timeout > Duration::from_secs(60)
        {
            return Err(ConfigError::new(
                "liveness_timeout",
                format!(
                    "the redis liveness timeout must be between 10 ms and 60 s (got {:?})",
                    s.liveness_timeout
                ),
            ));
        }
        if s.policy_poll_interval < Duration::from_millis(10)
            || s.policy_poll_interval > Duration::from_secs(60)
        {
            return Err(ConfigError::new(
                "policy_poll_interval",
                format!(
                    "the rate limit policy poll interval must be between 10 ms and 60 s (got {:?})",
                    s.policy_poll_interval
                ),
            ));
        }
        if s.local_max_keys == 0 {
            return Err(ConfigError::new(
                "local_max_keys",
                "the Redis backend must be allowed at least 1 local key (got 0)",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_shown_without_passwords() {
        assert_eq!(
            redact("redis://user:hunter2@host:6379/0"),
            "redis://user:***@host:6379/0"
        );
        assert_eq!(redact("redis://host:6379"), "redis://host:6379");
        assert_eq!(redact("redis://:pw@host"), "redis://:***@host");
    }

    #[test]
    fn metric_labels_carry_no_credentials() {
        assert_eq!(
            without_credentials("redis://user:hunter2@host:6379/0"),
            "redis://host:6379/0"
        );
        assert_eq!(without_credentials("rediss://:pw@host"), "rediss://host");
        assert_eq!(
            without_credentials("redis://host:6379"),
            "redis://host:6379"
        );
        assert_eq!(
            without_credentials("redis+unix:///run/redis.sock"),
            "redis+unix:///run/redis.sock"
        );
    }

    #[test]
    fn failure_policies_parse_from_configuration() {
        assert_eq!("open".parse::<FailurePolicy>(), Ok(FailurePolicy::Open));
        assert_eq!(
            " Closed ".parse::<FailurePolicy>(),
            Ok(FailurePolicy::Closed)
        );
        assert_eq!("local".parse::<FailurePolicy>(), Ok(FailurePolicy::Local));
        let e = "fail-open".parse::<FailurePolicy>().unwrap_err();
        assert_eq!(
            e.to_string(),
            r#"invalid failure_policy: "fail-open" is not one of "local", "open", "closed""#
        );
    }
}
