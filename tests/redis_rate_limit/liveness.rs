//! Liveness (#14): a connection that goes silent without closing is replaced, and decisions go
//! back to Redis within the documented bound; a paused link holds no call past its timeout and
//! nothing applies late; a reset recovers; a cluster with one master frozen recovers. Every fault
//! is made by a fault proxy between the backend and a real `redis-server`
//! (`common::fault_proxy`).
//!
//! Timing is real (Redis I/O); every loop is bounded in count and time; the bounds asserted are
//! the documented ones plus the scheduling lag measured in the same run (`LagProbe`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tower_rampart::backend::redis::{DEFAULT_LIVENESS_TIMEOUT, RedisRateLimitStore};
use tower_rampart::backend::{BackendError, FailurePolicy, RedisBackend};
use tower_rampart::rate_limit::{Algorithm, Decision, Quota, RateLimitLayer};

use crate::common::fault_proxy::FaultProxy;
use crate::common::redis::{RedisCluster, RedisServer, command_at};
use crate::support::{LagProbe, decide, unique_prefix};

const TIMEOUT: Duration = Duration::from_millis(50);
/// The documented bound from the first timeout to decisions back on Redis: the liveness timeout,
/// plus opening a connection, plus one probe interval (100 ms). Opening one on loopback takes a
/// millisecond or two; 500 ms covers it on a loaded machine.
const RECOVERY: Duration = DEFAULT_LIVENESS_TIMEOUT.saturating_add(Duration::from_millis(600));
/// The most a call may take while the link is silent: twice its timeout.
const CALL_BOUND: Duration = Duration::from_millis(100);
/// Per hour, so nothing comes back while a test runs.
const LIMIT: u32 = 5;

fn limiter(backend: RedisBackend) -> RedisRateLimitStore<u32> {
    crate::support::u32_store(backend, "liveness", Quota::per_hour(LIMIT), Algorithm::Gcra)
}

async fn closed_backend(url: &str) -> RedisBackend {
    RedisBackend::connect(url)
        .await
        .unwrap()
        .timeout(TIMEOUT)
        .failure_policy(FailurePolicy::Closed)
        .prefix(unique_prefix("liveness"))
}

/// A test's first decision, made before any fault: key 1, through Redis. Under the whole suite's
/// load on two cores one call can outlast the 50 ms timeout (seen once, at stop 28, in
/// `a_reset_connection_recovers`), which says nothing about what the tests check, so a first call
/// that timed out is asked again, for up to 5 s. (A timed-out call almost never counts: the
/// backend connected, so each call carries the deadline after which Redis must not run it; the
/// tests using this only ask that the decision admits.)
async fn first_decision(store: &RedisRateLimitStore<u32>) -> Decision {
    let started = Instant::now();
    loop {
        match decide(store, &1).await {
            Ok(d) => return d,
            Err(e) if e.is_timeout() && started.elapsed() < Duration::from_secs(5) => {}
            Err(e) => panic!("the first decision, before any fault: {e}"),
        }
    }
}

/// Whether `Closed` answered this decision for want of Redis (rather than Redis deciding).
fn from_policy(result: &Result<Decision, BackendError>) -> bool {
    match result {
        Ok(_) => false,
        Err(e) => {
            assert!(
                e.is_timeout() || e.is_unreachable(),
                "unexpected error: {e}"
            );
            true
        }
    }
}

/// Background load: `tasks` clients deciding for fresh keys every 5 ms until stopped (or 20 s),
/// each returning the slowest call it saw.
struct Load {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<Duration>>,
}

impl Load {
    fn start(store: &RedisRateLimitStore<u32>, tasks: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..tasks)
            .map(|t| {
                let (store, stop) = (store.clone(), Arc::clone(&stop));
                tokio::spawn(async move {
                    let started = Instant::now();
                    let mut slowest = Duration::ZERO;
                    for i in 0..4_000u32 {
                        if stop.load(Ordering::Relaxed)
                            || started.elapsed() > Duration::from_secs(20)
                        {
                            break;
                        }
                        let at = Instant::now();
                        let result = decide(&store, &(10_000_000 + t * 100_000 + i)).await;
                        let _ = from_policy(&result);
                        slowest = slowest.max(at.elapsed());
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    slowest
                })
            })
            .collect();
        Self { stop, tasks }
    }

    /// Stops the clients; the slowest call any of them saw.
    async fn stop(self) -> Duration {
        self.stop.store(true, Ordering::Relaxed);
        let mut slowest = Duration::ZERO;
        for t in self.tasks {
            slowest = slowest.max(t.await.expect("no panic in a client"));
        }
        slowest
    }
}

/// Decides for fresh keys every 10 ms (for at most `limit`) until Redis decides one (after a
/// decision made for want of Redis, when `after_a_failure`: a frozen connection always fails
/// first, but a reset one may be back before the next decision); returns when that was, and when
/// the first decision for want of Redis was.
async fn until_back_on_redis(
    store: &RedisRateLimitStore<u32>,
    limit: Duration,
    after_a_failure: bool,
) -> (Option<Instant>, Instant) {
    let started = Instant::now();
    let mut first_failure = None;
    for i in 0..10_000u32 {
        let result = decide(store, &(1_000_000 + i)).await;
        if from_policy(&result) {
            first_failure.get_or_insert_with(Instant::now);
        } else if first_failure.is_some() || !after_a_failure {
            return (first_failure, Instant::now());
        }
        assert!(
            started.elapsed() < limit,
            "decisions did not go back to redis within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no decision went back to redis");
}

/// Waits (at most 2 s) until the proxy has `n` connections open: a replaced connection closes
/// once the last call waiting on it has given up.
async fn until_open(proxy: &FaultProxy, n: usize) {
    for _ in 0..200 {
        if proxy.open() == n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!(
        "{} connections open through the proxy, not {n}",
        proxy.open()
    );
}

fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

/// The outage: every open connection goes silent (no RST, no FIN) while new ones work.
/// Before, every decision fell to the failure policy until the kernel gave up on the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_connection_is_replaced_and_decisions_go_back_to_redis() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let proxy = FaultProxy::start(server.addr()).await;
    let probe = LagProbe::start();
    let redis = closed_backend(&proxy.url()).await;
    let store = limiter(redis.clone());
    assert!(first_decision(&store).await.is_allowed());
    assert_eq!(proxy.open(), 1, "one connection, shared");
    let tasks_before = alive_tasks();

    for round in 1..=2u64 {
        let load = Load::start(&store, 4);
        tokio::time::sleep(Duration::from_millis(50)).await;
        proxy.freeze();
        let (first_failure, back) =
            until_back_on_redis(&store, Duration::from_secs(10), true).await;
        let recovery = back - first_failure.expect("the freeze was noticed");
        let slowest = load.stop().await;
        assert!(
            recovery < probe.allowing_for(RECOVERY),
            "round {round}: back on redis {recovery:?} after the first failure; bound {RECOVERY:?} \
             (timers up to {:?} late)",
            probe.lag()
        );
        assert!(
            slowest < probe.allowing_for(CALL_BOUND),
            "round {round}: a call waited {slowest:?} on a silent connection"
        );
        assert!(redis.is_connected(), "round {round}: connected again");
        assert_eq!(
            redis.replaced_connections(),
            round,
            "one replacement per freeze"
        );
        // The frozen connection was closed by the backend; only the new one is open.
        until_open(&proxy, 1).await;
        assert_eq!(proxy.accepted() as u64, 1 + round);
        eprintln!("round {round}: back on redis {recovery:?} after the first failure");
    }
    // No task left behind: the checks and the old connections' drivers have ended.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        alive_tasks() <= tasks_before,
        "{} tasks alive, {tasks_before} before",
        alive_tasks()
    );
}

/// A link that holds every byte for 5 s, then delivers them: no call waits past its timeout, and
/// the decisions abandoned meanwhile, run by Redis when the bytes arrive, count for nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_link_holds_no_call_and_nothing_applies_late() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let proxy = FaultProxy::start(server.addr()).await;
    let probe = LagProbe::start();
    let redis = closed_backend(&proxy.url()).await;
    let store = limiter(redis.clone());
    assert!(decide(&store, &99).await.unwrap().is_allowed());
    let before = server.calls("evalsha");

    proxy.pause();
    let paused = Instant::now();
    let mut slowest = Duration::ZERO;
    let mut refused = 0;
    for _ in 0..500 {
        if paused.elapsed() > Duration::from_secs(5) {
            break;
        }
        let at = Instant::now();
        let result = decide(&store, &1).await;
        slowest = slowest.max(at.elapsed());
        assert!(from_policy(&result), "nothing reaches redis while paused");
        refused += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(refused > 5, "the paused link was tried {refused} times");
    assert!(
        slowest < probe.allowing_for(CALL_BOUND),
        "a call waited {slowest:?} on a paused link"
    );
    proxy.forward();
    let (_, _) = until_back_on_redis(&store, Duration::from_secs(10), false).await;
    // What was sent during the pause reached Redis once the bytes flowed: it ran, and wrote nothing.
    let name = String::from_utf8(store.redis_key(&1)).unwrap();
    for _ in 0..100 {
        if server.calls("evalsha") > before + 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        server.calls("evalsha") > before + 1,
        "the held calls reached redis after the pause"
    );
    assert_eq!(
        server.command(&format!("EXISTS {name}")),
        ":0",
        "a call abandoned during the pause counted when redis ran it late"
    );
    let d = decide(&store, &1).await.unwrap();
    assert_eq!(d.remaining(), LIMIT - 1, "the whole quota is left: {d:?}");
}

/// Every connection reset (RST): the client reconnects, and decisions go back to Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_connection_recovers() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let proxy = FaultProxy::start(server.addr()).await;
    let probe = LagProbe::start();
    let redis = closed_backend(&proxy.url()).await;
    let store = limiter(redis.clone());
    assert!(first_decision(&store).await.is_allowed());
    let load = Load::start(&store, 4);
    tokio::time::sleep(Duration::from_millis(50)).await;
    proxy.reset();
    let reset_at = Instant::now();
    let (_, back) = until_back_on_redis(&store, Duration::from_secs(10), false).await;
    let slowest = load.stop().await;
    assert!(
        back - reset_at < probe.allowing_for(RECOVERY),
        "back on redis {:?} after the reset",
        back - reset_at
    );
    assert!(
        slowest < probe.allowing_for(CALL_BOUND),
        "a call waited {slowest:?}"
    );
    assert!(redis.is_connected());
    until_open(&proxy, 1).await;
}

/// A slow Redis is not a dead one: calls time out while Redis sleeps 300 ms at a time (`DEBUG
/// SLEEP`), but the connection answers `PING` within the liveness timeout, so it is kept.
///
/// (A stall longer than the liveness timeout, or a write held by `CLIENT PAUSE WRITE` with later
/// commands queued behind it on the same connection, does replace it: from this side such a
/// connection cannot be told from a dead one. The README says so.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_but_answering_connection_is_kept() {
    let Some(server) = RedisServer::start_with(&["--enable-debug-command", "yes"]) else {
        return;
    };
    let proxy = FaultProxy::start(server.addr()).await;
    let redis = closed_backend(&proxy.url()).await;
    let store = limiter(redis.clone());
    assert!(first_decision(&store).await.is_allowed());
    let addr = server.addr();
    let mut timed_out = 0;
    for round in 0..3u32 {
        let sleeper = std::thread::spawn(move || command_at(addr, "DEBUG SLEEP 0.3"));
        tokio::time::sleep(Duration::from_millis(30)).await;
        if from_policy(&decide(&store, &(100 + round)).await) {
            timed_out += 1;
        }
        assert_eq!(sleeper.join().unwrap(), "+OK");
        // Let the liveness check (if one started) see its answer.
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert!(timed_out > 0, "no call timed out: the test proved nothing");
    assert_eq!(
        redis.replaced_connections(),
        0,
        "the connection answered PING"
    );
    assert_eq!(proxy.accepted(), 1);
    assert!(
        !from_policy(&decide(&store, &200).await),
        "redis decides again"
    );
}

/// Redis Cluster with one master frozen (clients reach it through the proxy: it announces the
/// proxy's port): the cluster connection is replaced, and decisions for that master's keys go
/// back to Redis within the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_with_one_master_frozen_recovers() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let node = &cluster.nodes[0];
    let proxy = FaultProxy::start(node.addr()).await;
    assert_eq!(
        node.command(&format!(
            "CONFIG SET cluster-announce-port {}",
            proxy.port()
        )),
        "+OK"
    );
    // Every node must tell clients the proxy's port for the first master's slots.
    let announced = format!("{}", proxy.port());
    for _ in 0..250 {
        if cluster
            .nodes
            .iter()
            .all(|n| n.command("CLUSTER NODES").contains(&announced))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let probe = LagProbe::start();
    let urls = vec![proxy.url(), cluster.nodes[1].url(), cluster.nodes[2].url()];
    let redis = RedisBackend::connect_cluster(&urls)
        .await
        .unwrap()
        .timeout(TIMEOUT)
        .failure_policy(FailurePolicy::Closed)
        .prefix(unique_prefix("liveness-cluster"));
    let store = limiter(redis.clone());
    // Keys whose slot the first master serves (slots 0 to 5460).
    let on_first: Vec<u32> = (0..10_000u32)
        .filter(|k| {
            let name = String::from_utf8(store.redis_key(k)).unwrap();
            let slot: u32 = node
                .command(&format!("CLUSTER KEYSLOT {name}"))
                .trim_start_matches(':')
                .parse()
                .unwrap();
            slot <= 5460
        })
        .take(400)
        .collect();
    assert!(decide(&store, &on_first[0]).await.unwrap().is_allowed());
    assert!(
        proxy.accepted() >= 1,
        "the first master is reached through the proxy"
    );

    proxy.freeze();
    let mut first_failure = None;
    let mut back = None;
    let started = Instant::now();
    for k in &on_first[1..] {
        let result = decide(&store, k).await;
        if from_policy(&result) {
            first_failure.get_or_insert_with(Instant::now);
        } else if first_failure.is_some() {
            back = Some(Instant::now());
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no recovery within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let recovery = back.expect("back on redis") - first_failure.expect("the freeze was noticed");
    assert!(
        recovery < probe.allowing_for(RECOVERY),
        "back on redis {recovery:?} after the first failure on the frozen master"
    );
    assert!(redis.replaced_connections() >= 1);
    eprintln!("cluster: back on redis {recovery:?} after the first failure");
}

/// An absurd liveness timeout is refused by name when a layer is built.
#[tokio::test]
async fn an_absurd_liveness_timeout_is_refused_by_name() {
    for bad in [
        Duration::ZERO,
        Duration::from_millis(9),
        Duration::from_secs(61),
    ] {
        let redis = RedisBackend::connect_lazy("redis://127.0.0.1:1/")
            .unwrap()
            .liveness_timeout(bad);
        let e = RateLimitLayer::builder()
            .quota(Quota::per_hour(1))
            .backend(redis)
            .build()
            .unwrap_err();
        assert_eq!(e.setting(), "liveness_timeout", "{e}");
        assert!(e.to_string().contains("between 10 ms and 60 s"), "{e}");
    }
}

/// A primary demoted by a failover behind the address the backend connected to answers every
/// write `READONLY` but still answers `PING`: the connection is replaced on that reply (at most
/// once per liveness timeout), and once the address leads to a primary again decisions are
/// Redis's again. Here the "address" is a fault proxy in front of node A; A is demoted to a
/// replica of B, then made a primary again, as a failover back would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_to_a_demoted_primary_is_replaced() {
    let (Some(a), Some(b)) = (RedisServer::start(), RedisServer::start()) else {
        return;
    };
    let proxy = FaultProxy::start(a.addr()).await;
    let redis = closed_backend(&proxy.url()).await;
    let store = limiter(redis.clone());
    assert!(first_decision(&store).await.is_allowed());
    let opened = proxy.accepted();
    assert_eq!(redis.replaced_connections(), 0);

    a.command(&format!("REPLICAOF 127.0.0.1 {}", b.port()));
    let started = Instant::now();
    let mut readonly = 0;
    while redis.replaced_connections() == 0 && started.elapsed() < Duration::from_secs(5) {
        if let Err(e) = decide(&store, &2).await {
            let cause = std::error::Error::source(&e).map(ToString::to_string);
            if cause.is_some_and(|c| c.to_ascii_uppercase().contains("READ ONLY")) {
                readonly += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(readonly > 0, "the demoted node refused the writes");
    assert!(
        redis.replaced_connections() >= 1,
        "replaced within 5 s of the first READONLY"
    );
    assert!(proxy.accepted() > opened, "a new connection was opened");

    // Still demoted: replaced again at most once per liveness timeout (1 s).
    let replaced = redis.replaced_connections();
    let burst = Instant::now();
    for _ in 0..50 {
        let _ = decide(&store, &2).await;
    }
    let bound =
        1 + burst.elapsed().as_millis() as u64 / DEFAULT_LIVENESS_TIMEOUT.as_millis() as u64;
    assert!(
        redis.replaced_connections() - replaced <= bound,
        "{} replacements in {:?}",
        redis.replaced_connections() - replaced,
        burst.elapsed()
    );

    // The address leads to a primary again: decisions are Redis's.
    a.command("REPLICAOF NO ONE");
    let back = Instant::now();
    loop {
        match decide(&store, &3).await {
            Ok(d) => {
                assert!(d.is_allowed());
                break;
            }
            Err(e) => assert!(
                back.elapsed() < Duration::from_secs(5),
                "still failing 5 s after the failover back: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
