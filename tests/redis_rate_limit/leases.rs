//! Leased mode (#20): replicas decide hot keys from leases of the quota; the bounds stated in
//! `backend::redis::lease` hold against real `redis-server`s.
//!
//! - 4 replicas (4 backends, each with its own connection), 40 concurrent clients, several quotas:
//!   the replicas together never admit more than exact counting allows over the run
//!   (burst + rate x elapsed), every unit carved in Redis is admitted, held or counted as stranded,
//!   the stranding stays within the bound, and Redis sees far fewer calls than decisions; on a
//!   single node and on a 3-master cluster. Over every window of the quota's period (sliding over
//!   the admission times; about 20 windows with a 100 ms period) the replicas admit at most exact
//!   mode's allowance plus the outstanding leases; and they carve all the quota exact mode would
//!   admit but for what they leave in Redis while refusing locally (a quarter lease each).
//! - Cold keys stay exact: one call of one unit per decision.
//! - A replica dropped while holding a lease strands at most its lease, and that quota is back
//!   within the bound.
//! - Redis killed mid-run: the replicas serve from what they hold (never more), then follow the
//!   failure policy; restarted, leases resume.
//!
//! Redis I/O runs on real time: every loop is bounded in count and time, and time-dependent
//! bounds use the elapsed time measured around the run (plus the scheduling lag seen meanwhile,
//! [`LagProbe`]).

use std::num::NonZeroU32;
use std::time::Duration;

use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_rampart::BoxError;
use tower_rampart::backend::redis::{LeaseConfig, RedisLeasedStore, RedisRateLimitStore};
use tower_rampart::backend::{BackendUnavailable, FailurePolicy, RedisBackend};
use tower_rampart::key::key_fn;
use tower_rampart::rate_limit::error::RateLimited;
use tower_rampart::rate_limit::{Algorithm, Quota, RateLimitLayer};

use crate::common::fault_proxy::FaultProxy;
use crate::common::redis::{RedisCluster, RedisServer};
use crate::support::{LagProbe, decide, unique_prefix};

const REPLICAS: usize = 4;
const CLIENTS: usize = 40;
/// The per-call timeout of these backends: leases must live at least twice as long.
const TIMEOUT: Duration = Duration::from_millis(200);

type Svc = tower::util::BoxCloneSyncService<(), (), BoxError>;

/// A global leased limiter on `backend`, its store, and the service it wraps.
fn leased(
    backend: RedisBackend,
    prefix: &str,
    quota: Quota,
    config: LeaseConfig,
) -> (RedisLeasedStore<()>, Svc) {
    let layer = RateLimitLayer::builder()
        .name("leases")
        .quota(quota)
        .backend(backend.prefix(prefix).leased(config))
        .build()
        .expect("a valid configuration");
    let store = layer.store().clone();
    let svc = layer.layer(service_fn(|_: ()| async { Ok::<_, BoxError>(()) }));
    (store, tower::util::BoxCloneSyncService::new(svc))
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    admitted: u64,
    limited: u64,
    unavailable: u64,
    /// The longest any request waited for its decision.
    longest: Duration,
    /// When each admitted request's answer came back, in order.
    admitted_at: Vec<Instant>,
}

impl std::fmt::Debug for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tally")
            .field("admitted", &self.admitted)
            .field("limited", &self.limited)
            .field("unavailable", &self.unavailable)
            .field("longest", &self.longest)
            .finish_non_exhaustive()
    }
}

impl Tally {
    fn total(&self) -> u64 {
        self.admitted + self.limited + self.unavailable
    }
}

/// With Redis out of reach (`what`) and `held` units in the replicas' leases: sends more requests
/// than that, and checks that the replicas served at most what they held, then followed the
/// failure policy (Closed). Returns the tally.
async fn served_from_leases_then_refused(services: &[Svc], held: u64, what: &str) -> Tally {
    // More requests than the units held: some must fall to the policy.
    let per_client = usize::try_from(held).unwrap() / CLIENTS + 50;
    let tally = run_clients(
        services,
        per_client,
        Duration::from_millis(1),
        Duration::from_secs(5),
    )
    .await;
    println!("held {held} when {what}; meanwhile: {tally:?}");
    assert!(
        tally.admitted <= held,
        "{what}: served {} from {held} held",
        tally.admitted
    );
    assert!(
        tally.unavailable > 0,
        "{what}: then the failure policy (Closed): {tally:?}"
    );
    tally
}

/// `CLIENTS` clients spread over `services`, each sending up to `per_client` requests with `gap`
/// between them, for at most `budget`.
async fn run_clients(
    services: &[Svc],
    per_client: usize,
    gap: Duration,
    budget: Duration,
) -> Tally {
    let deadline = Instant::now() + budget;
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let mut svc = services[client % services.len()].clone();
            tokio::spawn(async move {
                let mut t = Tally::default();
                for _ in 0..per_client {
                    if Instant::now() >= deadline {
                        break;
                    }
                    let asked = Instant::now();
                    let result = svc.ready().await.unwrap().call(()).await;
                    t.longest = t.longest.max(asked.elapsed());
                    match result {
                        Ok(()) => {
                            t.admitted += 1;
                            t.admitted_at.push(Instant::now());
                        }
                        Err(e) if e.is::<RateLimited>() => t.limited += 1,
                        Err(e) if e.is::<BackendUnavailable>() => t.unavailable += 1,
                        Err(e) => panic!("unexpected error from the limiter: {e}"),
                    }
                    tokio::time::sleep(gap).await;
                }
                t
            })
        })
        .collect();
    let mut all = Tally::default();
    for task in tasks {
        let t = task.await.expect("client task panicked");
        all.admitted += t.admitted;
        all.limited += t.limited;
        all.unavailable += t.unavailable;
        all.longest = all.longest.max(t.longest);
        all.admitted_at.extend(t.admitted_at);
    }
    all.admitted_at.sort_unstable();
    all
}

/// The most admissions in any window of length `window` (sliding over the admission times: a
/// window holding the most starts at an admission).
fn busiest_window(admitted_at: &[Instant], window: Duration) -> u64 {
    let mut end = 0;
    let mut most = 0;
    for (start, &t) in admitted_at.iter().enumerate() {
        while end < admitted_at.len() && admitted_at[end] <= t + window {
            end += 1;
        }
        most = most.max(end - start);
    }
    most as u64
}

/// Waits until no lease call is in flight in `stores` (their counts stop moving), at most 2 s.
async fn settle(stores: &[RedisLeasedStore<()>]) {
    let mut last = u64::MAX;
    for _ in 0..40 {
        tokio::time::sleep(TIMEOUT / 4).await;
        let now: u64 = stores
            .iter()
            .map(|s| s.lease_calls() + s.leased_units())
            .sum();
        if now == last {
            return;
        }
        last = now;
    }
}

/// The property, for one quota and lease configuration, against `replicas`.
async fn bound_holds(
    replicas: Vec<RedisBackend>,
    quota: Quota,
    config: LeaseConfig,
    label: &str,
    per_client: usize,
) {
    let lag = LagProbe::start();
    let prefix = unique_prefix("leases");
    let (stores, services): (Vec<_>, Vec<_>) = replicas
        .into_iter()
        .map(|b| leased(b, &prefix, quota, config))
        .unzip();
    let started = Instant::now();
    let tally = run_clients(
        &services,
        per_client,
        Duration::from_millis(1),
        Duration::from_secs(3),
    )
    .await;
    let elapsed = started.elapsed();
    settle(&stores).await;

    let burst = u64::from(quota.burst_size());
    let rate = f64::from(quota.limit()) / quota.period().as_secs_f64();
    let exact_bound = burst + (rate * elapsed.as_secs_f64()).ceil() as u64;
    let leased: u64 = stores.iter().map(|s| s.leased_units()).sum();
    let held: u64 = stores.iter().map(|s| s.held_units(&())).sum();
    let stranded: u64 = stores.iter().map(|s| s.stranded_units()).sum();
    let calls: u64 = stores.iter().map(|s| s.lease_calls()).sum();
    let max_units = stores[0].max_lease_units();
    println!(
        "{label}: {tally:?} in {elapsed:?}; exact bound {exact_bound}; leased {leased}, held {held}, \
         stranded {stranded}; {calls} lease calls for {} decisions; max lease {max_units}",
        tally.total()
    );
    assert_eq!(tally.unavailable, 0, "{label}: Redis was up");
    // Over-admission: none in count.
    assert!(
        tally.admitted <= exact_bound,
        "{label}: admitted {} > burst + rate x elapsed = {exact_bound}",
        tally.admitted
    );
    // Every unit carved is admitted, still held, or dropped unused (stranded): none is lost or
    // admitted twice.
    assert_eq!(
        leased,
        tally.admitted + held + stranded,
        "{label}: unit accounting"
    );
    // Under-admission: what is held at the end is within the bound, and the demand exceeded the
    // quota, so the quota was used but for what the replicas hold or let expire.
    let bound = REPLICAS as u64 * (max_units + max_units / 4);
    assert!(held <= bound, "{label}: held {held} > {bound}");
    // Over-admission per window, over every window of the quota's period: at most what exact mode
    // admits in it (GCRA: burst + rate x length) plus the units held in leases at its start (the
    // bound). An answer is seen after its decision, by at most the longest wait seen, so a window
    // of seen answers holds decisions from a window that much longer.
    let period = quota.period();
    let busiest = busiest_window(&tally.admitted_at, period);
    let span = (period + tally.longest).as_secs_f64();
    let exact_window = burst + (rate * span).ceil() as u64;
    println!(
        "{label}: busiest {period:?} window admitted {busiest}; exact mode's allowance {exact_window} \
         (a window of {span:.3}s) + bound {bound}"
    );
    assert!(
        busiest <= exact_window + bound,
        "{label}: {busiest} admitted in one {period:?} window > exact allowance {exact_window} + \
         leased bound {bound}"
    );
    assert!(
        tally.total() > exact_bound,
        "{label}: the demand must exceed the quota"
    );
    // Under-admission, with a demand above the quota throughout: every unit the quota earned
    // was carved (admitted, held or stranded, all in `leased`) but for what the replicas left in
    // Redis while refusing locally at the end (each waits at most a quarter of its lease's worth
    // of the quota's time, plus the unit Redis's retry time covers), and what the quota earns
    // over the longest wait and the scheduling lag seen (the run's edges, measured around it).
    let left_in_redis = REPLICAS as u64 * (max_units / 4 + 1);
    let edges = (rate * (tally.longest + 2 * lag.lag()).as_secs_f64()).ceil() as u64;
    println!(
        "{label}: carved {leased} of exact's {exact_bound} (short by {}; allowed {left_in_redis} \
         left in Redis + {edges} at the edges)",
        exact_bound.saturating_sub(leased)
    );
    assert!(
        leased + left_in_redis + edges >= exact_bound,
        "{label}: carved {leased} units where exact mode admits {exact_bound}: more than \
         {left_in_redis} + {edges} short"
    );
    // Leasing: far fewer calls than decisions.
    assert!(
        calls * 3 < tally.total(),
        "{label}: {calls} calls for {} decisions",
        tally.total()
    );
}

fn cases() -> [(Quota, LeaseConfig, &'static str); 3] {
    [
        (
            Quota::per_second(400),
            LeaseConfig::new().ttl(Duration::from_millis(500)),
            "400/s, ttl 500ms",
        ),
        (
            Quota::per_second(2_000).burst(300),
            LeaseConfig::new(),
            "2000/s burst 300, ttl 1s",
        ),
        (
            Quota::per_minute(1_200),
            LeaseConfig::new().max_units(NonZeroU32::new(8).unwrap()),
            "1200/min, max lease 8",
        ),
    ]
}

async fn replicas(url: &str) -> Vec<RedisBackend> {
    let mut out = Vec::new();
    for _ in 0..REPLICAS {
        let b = RedisBackend::connect(url)
            .await
            .expect("connect to the test redis-server");
        out.push(b.timeout(TIMEOUT).failure_policy(FailurePolicy::Closed));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replicas_forty_clients_stay_within_the_bound_on_one_node() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    for (quota, config, label) in cases() {
        bound_holds(replicas(&server.url()).await, quota, config, label, 300).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replicas_forty_clients_stay_within_the_bound_on_a_cluster() {
    let Some(cluster) = RedisCluster::start() else {
        return;
    };
    let mut backends = Vec::new();
    for _ in 0..REPLICAS {
        let b = RedisBackend::connect_cluster(cluster.urls())
            .await
            .expect("connect to the test cluster");
        backends.push(b.timeout(TIMEOUT).failure_policy(FailurePolicy::Closed));
    }
    let (quota, config, label) = cases()[0];
    bound_holds(backends, quota, config, label, 300).await;
}

/// The per-window bound, over many windows: a quota of 20 per 100 ms (burst 20, so leases of at
/// most 5 units) under a demand far above it for about 2 s, so about 20 windows of the period
/// slide over the admissions, each checked against exact mode's allowance plus the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_window_of_the_period_admits_at_most_exact_plus_the_outstanding_leases() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let quota = Quota::with_period(20, Duration::from_millis(100));
    bound_holds(
        replicas(&server.url()).await,
        quota,
        LeaseConfig::new(),
        "20 per 100ms",
        900,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_keys_stay_exact_one_call_of_one_unit_per_decision() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let backend = replicas(&server.url()).await.remove(0);
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_second(1_000))
        .key(key_fn(|k: &u32| Some(*k)))
        .backend(
            backend
                .prefix(unique_prefix("cold"))
                .leased(LeaseConfig::new()),
        )
        .build()
        .unwrap();
    let store = layer.store();
    // Many keys, each seen once: the decisions (and so the headers) exact mode gives.
    for k in 0..50u32 {
        let d = decide(store, &k).await.unwrap();
        assert!(d.is_allowed() && d.is_counted());
        assert_eq!((d.limit(), d.remaining()), (1_000, 999));
        assert_eq!(d.reset(), Duration::from_millis(1));
    }
    assert_eq!((store.lease_calls(), store.leased_units()), (50, 50));
    // One key seen every 300 ms: fewer than 2 per half a time to live.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(decide(store, &7).await.unwrap().is_allowed());
        assert_eq!(store.held_units(&7), 0, "a cold key holds nothing");
    }
    assert_eq!((store.lease_calls(), store.leased_units()), (53, 53));
    // The same key hammered: it is leased, and its decisions still carry the quota's fields.
    // Leases grow with the rate the key is seen at, so how soon depends on how fast the machine
    // answers (under the whole suite's load, 200 decisions once took more than 50 calls): within
    // five rounds of 100 decisions (500, half the burst), one round needs at most 10 calls.
    let mut calls_per_round = Vec::new();
    for _ in 0..5 {
        let before = store.lease_calls();
        for _ in 0..100 {
            let d = decide(store, &7).await.unwrap();
            assert!(d.is_allowed() && d.is_counted());
            assert!(d.remaining() < 1_000 && d.reset() <= Duration::from_secs(1));
        }
        calls_per_round.push(store.lease_calls() - before);
        if calls_per_round.last() <= Some(&10) {
            break;
        }
    }
    assert!(
        calls_per_round.last() <= Some(&10),
        "lease calls per round of 100 decisions: {calls_per_round:?}"
    );
}

/// An exact replica of the same limiter (same name, quota and prefix: the same keys).
fn exact_twin(backend: RedisBackend, prefix: &str, quota: Quota) -> RedisRateLimitStore<()> {
    RateLimitLayer::builder()
        .name("leases")
        .quota(quota)
        .backend(backend.prefix(prefix))
        .build()
        .unwrap()
        .store()
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_dropped_holding_a_lease_strands_at_most_it_and_only_for_the_bound() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let lag = LagProbe::start();
    // 20 a second (one unit per 50 ms), burst 20: leases of at most 5 units (a quarter of the burst).
    let quota = Quota::per_second(20);
    let emission = Duration::from_millis(50);
    let prefix = unique_prefix("dropped");
    let mut backends = replicas(&server.url()).await;
    let (a, _svc) = leased(backends.remove(0), &prefix, quota, LeaseConfig::new());
    assert_eq!(a.max_lease_units(), 5);
    // Replica A takes 10 units quickly: its lease grows, and it holds some when it stops.
    let mut admitted_a = 0u64;
    let started_a = Instant::now();
    for _ in 0..100 {
        if admitted_a >= 10 && a.held_units(&()) > 0 {
            break;
        }
        if decide(&a, &()).await.unwrap().is_allowed() {
            admitted_a += 1;
        }
    }
    settle(std::slice::from_ref(&a)).await;
    let held = a.held_units(&());
    assert!(held > 0, "replica A must hold part of a lease when dropped");
    assert!(held <= 5 + 5 / 4, "a lease and a quarter at most: {held}");
    let counted = a.leased_units();
    assert_eq!(counted, admitted_a + held + a.stranded_units());
    drop(a);

    // Redis counted the held units: an exact twin sees the quota short by what A admitted and
    // held, less what time earned back.
    let b = exact_twin(backends.remove(0), &prefix, quota);
    let first = decide(&b, &()).await.unwrap();
    let earned = (started_a.elapsed().as_millis() / 50 + 1) as u64;
    assert!(
        u64::from(first.remaining()) + counted < 20 + earned,
        "remaining {} with {counted} counted",
        first.remaining()
    );
    // Within held x emission (plus the lag), the stranded units are back: the twin gets at least
    // the burst less what A admitted and its own first unit.
    tokio::time::sleep(lag.allowing_for(emission * held as u32)).await;
    let mut admitted_b = 0u64;
    for _ in 0..40 {
        if decide(&b, &()).await.unwrap().is_allowed() {
            admitted_b += 1;
        }
    }
    assert!(
        admitted_b + 1 >= 20u64.saturating_sub(admitted_a),
        "only {admitted_b} admitted after the bound; A admitted {admitted_a} and held {held}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_leases_serve_then_the_policy_then_leases_resume() {
    let Some(mut server) = RedisServer::start() else {
        return;
    };
    let lag = LagProbe::start();
    let prefix = unique_prefix("killed");
    let quota = Quota::per_second(1_000_000);
    let config = LeaseConfig::new();
    let (stores, services): (Vec<_>, Vec<_>) = replicas(&server.url())
        .await
        .into_iter()
        .map(|b| leased(b, &prefix, quota, config))
        .unzip();
    let up = run_clients(
        &services,
        100,
        Duration::from_millis(1),
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(
        up.admitted,
        up.total(),
        "a quota far above the load: {up:?}"
    );
    settle(&stores).await;
    let held: u64 = stores.iter().map(|s| s.held_units(&())).sum();
    assert!(held > 0, "the replicas hold leases: {up:?}");

    server.kill();
    let down = served_from_leases_then_refused(&services, held, "Redis died").await;
    assert_eq!(down.limited, 0);

    server.restart();
    // Each replica finds Redis again on its own (its connection probes every 100 ms).
    let restarted = Instant::now();
    for (store, svc) in stores.iter().zip(&services) {
        let calls_before = store.lease_calls();
        let mut svc = svc.clone();
        loop {
            if svc.ready().await.unwrap().call(()).await.is_ok()
                && store.lease_calls() > calls_before
            {
                break;
            }
            assert!(
                restarted.elapsed() < lag.allowing_for(Duration::from_secs(5)),
                "leases did not resume within 5 s of the restart"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let back = restarted.elapsed();
    println!("every replica leasing again {back:?} after the restart");
    assert!(
        back <= lag.allowing_for(Duration::from_secs(1)),
        "leases resumed {back:?} after the restart"
    );
    let again = run_clients(
        &services,
        20,
        Duration::from_millis(1),
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(again.admitted, again.total(), "{again:?}");
}

#[tokio::test]
async fn leased_mode_takes_gcra_and_a_ttl_longer_than_twice_the_timeout() {
    let backend = RedisBackend::connect_lazy("redis://127.0.0.1:1/").unwrap();
    let build = |b: RedisBackend, algorithm, config| {
        RateLimitLayer::builder()
            .quota(Quota::per_second(10))
            .algorithm(algorithm)
            .backend(b.leased(config))
            .build()
            .map(|_| ())
    };
    let e = build(
        backend.clone(),
        Algorithm::SlidingWindow,
        LeaseConfig::new(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("GCRA only"), "{e}");
    let short = LeaseConfig::new().ttl(Duration::from_millis(80));
    let e = build(backend.clone(), Algorithm::Gcra, short).unwrap_err();
    assert!(e.to_string().contains("at least twice"), "{e}");
    assert!(build(backend, Algorithm::Gcra, LeaseConfig::new()).is_ok());
}

/// The lease counters and exact mode's refusal counter, from a recorder local to this thread: the
/// runtime is a current-thread one, so every call (background renewals included) runs here.
#[cfg(feature = "metrics")]
#[test]
fn lease_calls_units_and_stranded_units_are_measured() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let Some(server) = RedisServer::start() else {
        return;
    };
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let backend = RedisBackend::connect(&server.url())
                .await
                .unwrap()
                .timeout(Duration::from_millis(40));
            let config = LeaseConfig::new().ttl(Duration::from_millis(100));
            let (store, mut svc) = leased(
                backend,
                &unique_prefix("metered"),
                Quota::per_second(50),
                config,
            );
            let mut refused = 0;
            for _ in 0..100 {
                if let Err(e) = svc.ready().await.unwrap().call(()).await {
                    assert!(e.is::<RateLimited>(), "{e}");
                    refused += 1;
                }
            }
            assert!(
                refused >= 40,
                "a burst of 50 for 100 requests: {refused} refused"
            );
            // Earn units back, lease some, and let the lease expire unused.
            tokio::time::sleep(Duration::from_millis(300)).await;
            for _ in 0..10 {
                let _ = svc.ready().await.unwrap().call(()).await;
            }
            settle(std::slice::from_ref(&store)).await;
            let held = store.held_units(&());
            tokio::time::sleep(Duration::from_millis(150)).await;
            let _ = svc.ready().await.unwrap().call(()).await;
            settle(std::slice::from_ref(&store)).await;
            assert!(
                held == 0 || store.stranded_units() >= held,
                "{held} held went stale"
            );
            (store, refused)
        })
    });
    let (store, refused) = store;
    let mut got = std::collections::HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        if key
            .labels()
            .any(|l| l.key() == "name" && l.value() == "leases")
            && let DebugValue::Counter(n) = value
        {
            let reason = key
                .labels()
                .find(|l| l.key() == "reason")
                .map(|l| l.value().to_string());
            got.insert((key.name().to_string(), reason), n);
        }
    }
    let get = |name: &str, reason: Option<&str>| {
        got.get(&(name.to_string(), reason.map(String::from)))
            .copied()
            .unwrap_or(0)
    };
    assert_eq!(
        get("rampart_rate_limit_lease_calls_total", None),
        store.lease_calls()
    );
    assert!(store.lease_calls() > 0);
    assert_eq!(
        get("rampart_rate_limit_lease_units_total", None),
        store.leased_units()
    );
    assert_eq!(
        get("rampart_rate_limit_lease_stranded_units_total", None),
        store.stranded_units()
    );
    assert!(
        get("rampart_rate_limit_rejected_total", Some("rate_limited")) >= refused,
        "refusals counted as in exact mode: {got:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cut_off_no_request_waits_past_twice_the_timeout_and_leases_resume() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let lag = LagProbe::start();
    let proxy = FaultProxy::start(server.addr()).await;
    let prefix = unique_prefix("cut");
    let (stores, services): (Vec<_>, Vec<_>) = replicas(&proxy.url())
        .await
        .into_iter()
        .map(|b| leased(b, &prefix, Quota::per_second(1_000_000), LeaseConfig::new()))
        .unzip();
    let up = run_clients(
        &services,
        100,
        Duration::from_millis(1),
        Duration::from_secs(3),
    )
    .await;
    assert_eq!(up.admitted, up.total(), "{up:?}");
    settle(&stores).await;
    let held: u64 = stores.iter().map(|s| s.held_units(&())).sum();

    // Every byte held, on every connection: calls only time out.
    proxy.pause();
    let cut = served_from_leases_then_refused(&services, held, "cut off").await;
    let bound = lag.allowing_for(2 * TIMEOUT);
    assert!(
        cut.longest <= bound,
        "a request waited {:?} (bound {bound:?})",
        cut.longest
    );

    proxy.forward();
    let resumed = Instant::now();
    for (store, svc) in stores.iter().zip(&services) {
        let calls_before = store.lease_calls();
        let mut svc = svc.clone();
        loop {
            if svc.ready().await.unwrap().call(()).await.is_ok()
                && store.lease_calls() > calls_before
            {
                break;
            }
            assert!(
                resumed.elapsed() < lag.allowing_for(Duration::from_secs(5)),
                "leases did not resume within 5 s of the link's return"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    println!(
        "every replica leasing again {:?} after the link came back",
        resumed.elapsed()
    );
}

/// Issue #18 in leased mode: leases serve the layer's own quota, one unit per request; any other
/// question (a tier's limits, a cost, a peek) is decided exactly, on the same keys, so a cost
/// spends from the same quota the leases carve. A default of several limits could never be leased:
/// building it in leased mode says so.
#[tokio::test]
async fn leases_serve_the_layers_own_quota_and_everything_else_is_decided_exactly() {
    use tower_rampart::rate_limit::{Ask, Check, Limit, RateLimitStore};

    let Some(server) = RedisServer::start() else {
        return;
    };
    let backend = RedisBackend::connect(&server.url())
        .await
        .unwrap()
        .timeout(TIMEOUT)
        .prefix(unique_prefix("lease-policies"));
    let layer = RateLimitLayer::builder()
        .name("leased")
        .quota(Quota::per_hour(10))
        .tier("pro", [Limit::new("pro", Quota::per_hour(100))])
        .key(key_fn(|k: &u32| Some(*k)))
        .backend(backend.clone().leased(LeaseConfig::new()))
        .build()
        .unwrap();
    let store = layer.store();
    let ask = |set, cost: u32, peek: bool| {
        let store = store.clone();
        async move {
            let ask = Ask::new(&set).cost(cost);
            let ask = if peek { ask.peek() } else { ask };
            match store.check(&1u32, &ask) {
                Check::Ready(r) => r,
                Check::Pending(f) => f.await,
            }
            .unwrap()
        }
    };
    let handle = layer.handle();
    let own = handle.default_set();
    // Loads the script (a peek of nothing), so that each question below is one call.
    assert_eq!(ask(own.clone(), 0, true).await.remaining(), 10);
    let calls = server.calls("evalsha") + server.calls("eval");
    // A cost of 3: exact, one call, 7 left in Redis.
    let d = ask(own.clone(), 3, false).await;
    assert!(d.is_allowed());
    assert_eq!(d.remaining(), 7);
    // A peek: exact, spends nothing.
    assert_eq!(ask(own.clone(), 1, true).await.remaining(), 6);
    assert_eq!(ask(own.clone(), 3, true).await.remaining(), 4);
    // Another tier's limits: exact, their own state.
    let pro = handle.tier_set("pro").unwrap();
    let d = ask(pro, 1, false).await;
    assert_eq!((d.limit(), d.remaining()), (100, 99));
    assert_eq!(
        server.calls("evalsha") + server.calls("eval") - calls,
        4,
        "one call each"
    );
    // The plain question: leased from the same quota, 7 units left of it.
    let mut admitted = 0;
    for _ in 0..20 {
        admitted += usize::from(decide(store, &1).await.unwrap().is_allowed());
    }
    assert_eq!(admitted, 7, "the units the exact decisions left");
    assert!(!ask(own, 1, true).await.is_allowed(), "the quota is spent");

    let err = RateLimitLayer::builder()
        .limits([
            Limit::new("minute", Quota::per_minute(10)),
            Limit::new("day", Quota::per_hour(100)),
        ])
        .key(key_fn(|k: &u32| Some(*k)))
        .backend(backend.leased(LeaseConfig::new()))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("leased mode"), "{err}");
}

/// A leased limiter named `name` on `server` (its own prefix, from `what`) keyed by `u32` at
/// `quota`: its store and the handle that changes its quota at run time.
async fn keyed_leased(
    server: &RedisServer,
    what: &str,
    name: &'static str,
    quota: Quota,
) -> (
    RedisLeasedStore<u32>,
    tower_rampart::rate_limit::RateLimitHandle<u32>,
) {
    let backend = RedisBackend::connect(&server.url())
        .await
        .unwrap()
        .timeout(TIMEOUT)
        .prefix(unique_prefix(what));
    let layer = RateLimitLayer::builder()
        .name(name)
        .quota(quota)
        .key(key_fn(|k: &u32| Some(*k)))
        .backend(backend.leased(LeaseConfig::new()))
        .build()
        .unwrap();
    (layer.store().clone(), layer.handle())
}

/// A live change of the layer's own quota (`RateLimitHandle::set_default`) turned leasing off for
/// every request: the limits asked for no longer matched those the store was built with, so each
/// decision went to Redis, exactly. Leases follow the new quota now: a raised quota admits at once
/// (the refusal remembered under the old one is forgotten) and is served from leases again.
#[tokio::test]
async fn leases_follow_the_layers_quota_changed_at_run_time() {
    use tower_rampart::rate_limit::{Ask, Limit};

    let Some(server) = RedisServer::start() else {
        return;
    };
    let (store, handle) =
        keyed_leased(&server, "lease-retune", "retuned", Quota::per_minute(10)).await;
    let store = &store;
    let mut admitted = 0;
    for _ in 0..20 {
        admitted += usize::from(decide(store, &1).await.unwrap().is_allowed());
    }
    assert_eq!(admitted, 10);
    let refused = decide(store, &1).await.unwrap();
    assert!(!refused.is_allowed());
    assert!(
        refused.retry_after() >= Duration::from_secs(5),
        "{refused:?}"
    );

    // The key's state (a minute's worth spent) is well within the new quota's tolerance (an hour).
    handle
        .set_default([Limit::new("retuned", Quota::per_hour(100_000))])
        .unwrap();
    // As the layer asks: with the limits in force.
    let live = handle.default_set();
    let calls = server.calls("evalsha") + server.calls("eval");
    let mut admitted = 0;
    for _ in 0..300 {
        let d = crate::support::decide_ask(store, &1, &Ask::new(&live)).await;
        admitted += usize::from(d.unwrap().is_allowed());
    }
    let calls = server.calls("evalsha") + server.calls("eval") - calls;
    eprintln!("300 decisions after the change: {calls} Redis calls");
    assert_eq!(admitted, 300, "the raised quota admits at once");
    assert!(
        calls < 60,
        "{calls} Redis calls for 300 decisions: leases serve the new quota"
    );
    // A second's worth at 100,000 an hour.
    assert_eq!(store.max_lease_units(), 27, "sized for the new quota");

    // A key's own limit that bears the layer's name is not the layer's quota: decided exactly,
    // and the leases keep following the default.
    handle
        .set_key(&7, [Limit::new("retuned", Quota::per_second(10_000))])
        .unwrap();
    let own = handle.resolved(&7);
    let leases = store.lease_calls();
    let d = crate::support::decide_ask(store, &7, &Ask::new(&own)).await;
    assert_eq!(d.unwrap().limit(), 10_000);
    assert_eq!(store.lease_calls(), leases, "decided exactly");
    assert_eq!(store.max_lease_units(), 27, "the leases' terms unchanged");
}

/// A key that spent 10 an hour (its arrival time an hour ahead), the layer's quota then raised to
/// 10 a second: the lease script counts it as spent in full under the new quota and writes it back
/// there on the refusal, so that it drains in one interval, as the exact store does (it waited
/// the rest of the hour).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leased_key_spent_under_a_slower_quota_drains_in_one_interval_of_the_new_one() {
    use tower_rampart::rate_limit::{Ask, Limit};

    let Some(server) = RedisServer::start() else {
        return;
    };
    let (store, handle) =
        keyed_leased(&server, "lease-rebase", "rebased", Quota::per_hour(10)).await;
    let store = &store;
    let mut admitted = 0;
    for _ in 0..12 {
        admitted += usize::from(decide(store, &5).await.unwrap().is_allowed());
    }
    assert_eq!(admitted, 10);
    handle
        .set_default([Limit::new("rebased", Quota::per_second(10))])
        .unwrap();
    let live = handle.default_set();
    let refused = crate::support::decide_ask(store, &5, &Ask::new(&live))
        .await
        .unwrap();
    assert!(!refused.is_allowed(), "{refused:?}");
    assert!(
        refused.retry_after() <= Duration::from_millis(100),
        "one interval of the new quota, not the rest of the hour: {refused:?}"
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    let d = crate::support::decide_ask(store, &5, &Ask::new(&live))
        .await
        .unwrap();
    assert!(d.is_allowed(), "drained from the rebased state: {d:?}");
}

/// A request dropped while its lease call is in flight (a client gone, a timeout around the
/// layer) must not leave the key's call claimed for good: later requests would each wait a whole
/// timeout for a call that never answers, and the key would never be leased again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_dropped_during_its_lease_call_leaves_the_key_usable() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let timeout = Duration::from_secs(5);
    let backend = RedisBackend::connect(&server.url())
        .await
        .unwrap()
        .timeout(timeout);
    // Redis answering (the suite's load can make the connection's first check time out).
    for _ in 0..50 {
        if backend.ping().await.is_ok() && backend.is_connected() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let layer = RateLimitLayer::builder()
        .name("dropped")
        .quota(Quota::per_second(1000))
        .key(key_fn(|k: &u64| Some(*k)))
        .backend(
            backend
                .prefix(unique_prefix("dropped"))
                .leased(LeaseConfig::new().ttl(Duration::from_secs(11))),
        )
        .build()
        .expect("a valid configuration");
    let store = layer.store().clone();
    let mut svc = layer.layer(service_fn(|_: u64| async { Ok::<_, BoxError>(()) }));
    // A key's first decision is a lease call: polled once (claimed and sent), then dropped. (One
    // ready at once, from the failure policy while Redis did not answer, is asked again with a
    // key of its own, at most 20 times.)
    let mut dropped = None;
    for key in 0..20u64 {
        let call = svc.ready().await.unwrap().call(key);
        if tokio::time::timeout(Duration::ZERO, call).await.is_err() {
            dropped = Some(key);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let key = dropped.unwrap_or_else(|| {
        panic!(
            "no decision waited for Redis in 20 (lease calls: {})",
            store.lease_calls()
        )
    });
    let calls_before = store.lease_calls();
    for i in 0..20 {
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(timeout * 2, svc.ready().await.unwrap().call(key))
            .await
            .expect("bounded by twice the timeout");
        answer.expect("quota left");
        assert!(
            started.elapsed() < timeout / 2,
            "decision {i} took {:?}: it waited for the dropped request's call",
            started.elapsed()
        );
    }
    assert!(
        store.lease_calls() > calls_before,
        "the key is leased again"
    );
}
