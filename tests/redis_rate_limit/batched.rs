//! Decisions made at once on one store go to Redis in batches (`conn/batch.rs`): fewer script
//! calls than decisions, and each decision exactly what it is alone: the quota admitted exactly,
//! the single and set forms side by side, a decision that fails failing alone, and a decision
//! whose caller gave up not written however late its batch runs.

use std::time::Duration;

use futures::future::join_all;
use tower_rampart::backend::redis::RedisRateLimitStore;
use tower_rampart::backend::{FailurePolicy, RedisBackend};
use tower_rampart::rate_limit::{Algorithm, Ask, Quota, StoreLimits};

use crate::common::fault_proxy::FaultProxy;
use crate::common::redis::RedisServer;
use crate::support::{connect, decide, decide_ask, unique_prefix};

/// The script calls (`EVALSHA` and `EVAL`) `server` has run since it started.
fn script_calls(server: &RedisServer) -> u64 {
    server.calls("evalsha") + server.calls("eval")
}

/// The script calls Redis ran (those it failed, an `EVALSHA` answered `NOSCRIPT` before the
/// script was loaded, left out).
fn script_runs(server: &RedisServer) -> u64 {
    let stats = server.info("commandstats");
    let field = |line: &str, name: &str| -> u64 {
        line.split([':', ','])
            .find_map(|f| f.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
            .unwrap_or(0)
    };
    stats
        .lines()
        .filter(|l| l.starts_with("cmdstat_eval:") || l.starts_with("cmdstat_evalsha:"))
        .map(|l| field(l, "calls") - field(l, "failed_calls"))
        .sum()
}

/// The store of a limiter named `name` of `per_hour` requests an hour by `algorithm` on
/// `backend`, keyed by a `u32`.
fn limiter(
    backend: RedisBackend,
    name: &'static str,
    per_hour: u32,
    algorithm: Algorithm,
) -> RedisRateLimitStore<u32> {
    crate::support::u32_store(backend, name, Quota::per_hour(per_hour), algorithm)
}

/// A store of 100 decisions an hour on `server`, failing closed, its keys under a prefix of its own.
async fn hundred_an_hour(
    server: &RedisServer,
    algorithm: Algorithm,
    what: &str,
) -> RedisRateLimitStore<u32> {
    let backend = connect(&server.url())
        .await
        .failure_policy(FailurePolicy::Closed)
        .prefix(unique_prefix(what));
    limiter(backend, "batched", 100, algorithm)
}

/// The script runs and `TIME` reads `server` has made.
fn runs_and_times(server: &RedisServer) -> (u64, u64) {
    (script_runs(server), server.calls("time"))
}

/// What 200 single-form decisions on key 1 and 100 set-form ones of cost 2 on key 2, made at
/// once, come to however they were batched: each key's quota admitted exactly (`admitted`, of
/// each form), a `TIME` read per script run (`runs_and_times`, since before them), and nothing
/// left on either key (each decision written once).
async fn check_the_mixed_load(
    store: &RedisRateLimitStore<u32>,
    algorithm: Algorithm,
    admitted: (usize, usize),
    (runs, times): (u64, u64),
) {
    assert_eq!(admitted.0, 100, "{algorithm:?}: key 1's quota exactly");
    assert_eq!(
        admitted.1, 50,
        "{algorithm:?}: 50 of cost 2 spend key 2's 100"
    );
    // A batch reads Redis's TIME once for all its decisions (Redis counts the commands a script
    // calls in its command statistics).
    assert_eq!(
        times, runs,
        "{algorithm:?}: {times} TIME reads in {runs} script runs"
    );
    assert!(!decide(store, &1).await.unwrap().is_allowed());
    let set = store.limit_set().clone();
    assert!(
        !decide_ask(store, &2, &Ask::new(&set))
            .await
            .unwrap()
            .is_allowed()
    );
}

#[tokio::test]
async fn decisions_made_at_once_go_in_batches_and_admit_exactly_the_quota() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    for algorithm in [Algorithm::Gcra, Algorithm::SlidingWindow] {
        let store = &hundred_an_hour(&server, algorithm, "batched").await;
        let set = store.limit_set().clone();
        let before = script_calls(&server);
        let (runs_before, times_before) = runs_and_times(&server);
        // 200 single-form decisions on key 1 and 100 set-form ones (cost 2) on key 2, all at once
        // on this one-thread runtime, interleaved so that batches hold both forms.
        let singles = (0..200).map(|_| async { decide(store, &1).await });
        let doubles =
            (0..100).map(|_| async { decide_ask(store, &2, &Ask::new(&set).cost(2)).await });
        let (singles, doubles) = futures::join!(join_all(singles), join_all(doubles));
        let calls = script_calls(&server) - before;
        let (runs, times) = runs_and_times(&server);
        let admitted = |ds: &[Result<tower_rampart::rate_limit::Decision, _>]| {
            ds.iter()
                .map(|d| match d {
                    Ok(d) => d.is_allowed(),
                    Err(e) => panic!("{algorithm:?}: Redis failed a decision: {e}"),
                })
                .filter(|a| *a)
                .count()
        };
        // One call goes alone, the rest go as batches (of up to 16) behind it.
        assert!(
            calls <= 60,
            "{algorithm:?}: 300 decisions made at once took {calls} script calls"
        );
        check_the_mixed_load(
            store,
            algorithm,
            (admitted(&singles), admitted(&doubles)),
            (runs - runs_before, times - times_before),
        )
        .await;
    }
}

/// On a multi-thread runtime, decisions made by many tasks at once (their callers on both workers,
/// the batch's task on either) still batch, each answered once and the quota admitted exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_from_tasks_on_both_workers_batch_and_admit_exactly_the_quota() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    for algorithm in [Algorithm::Gcra, Algorithm::SlidingWindow] {
        let store = hundred_an_hour(&server, algorithm, "batched-mt").await;
        let set = store.limit_set().clone();
        let (runs_before, times_before) = runs_and_times(&server);
        // 300 tasks: 200 single-form decisions on key 1, 100 set-form ones (cost 2) on key 2,
        // started together behind a barrier so that they overlap.
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(300));
        let tasks: Vec<_> = (0..300)
            .map(|i| {
                let (store, set, barrier) = (store.clone(), set.clone(), barrier.clone());
                tokio::spawn(async move {
                    barrier.wait().await;
                    let d = if i % 3 == 2 {
                        decide_ask(&store, &2, &Ask::new(&set).cost(2)).await
                    } else {
                        decide(&store, &1).await
                    };
                    let d = d.unwrap_or_else(|e| panic!("{algorithm:?}: Redis failed: {e}"));
                    (i % 3 == 2, d.is_allowed())
                })
            })
            .collect();
        let (mut singles, mut doubles) = (0, 0);
        for t in tasks {
            match t.await.expect("a decision task panicked") {
                (false, true) => singles += 1,
                (true, true) => doubles += 1,
                _ => {}
            }
        }
        let (runs, times) = runs_and_times(&server);
        let (runs, times) = (runs - runs_before, times - times_before);
        // Far fewer script runs than decisions: batches formed across the workers. (How many
        // depends on how the tasks interleave; 22 and 23 in a run on an idle machine, 265 when a
        // batch's task, spawned as its worker's next task, ran before the other callers.)
        assert!(
            runs <= 100,
            "{algorithm:?}: 300 decisions at once took {runs} script runs"
        );
        check_the_mixed_load(&store, algorithm, (singles, doubles), (runs, times)).await;
    }
}

#[tokio::test]
async fn a_decision_that_fails_in_a_batch_fails_alone() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut raw = server.connection().await;
    for algorithm in [Algorithm::Gcra, Algorithm::SlidingWindow] {
        let backend = connect(&server.url())
            .await
            .failure_policy(FailurePolicy::Closed)
            .repair_corrupt_data(false)
            .prefix(unique_prefix("batched-fail"));
        let store = &limiter(backend, "batched", 3, algorithm);
        // Key 0 holds what no decision wrote; key 1 holds a hash (GET on it is an error reply).
        let _: () = redis::cmd("SET")
            .arg(store.redis_key(&0))
            .arg("hello")
            .query_async(&mut raw)
            .await
            .unwrap();
        let _: () = redis::cmd("HSET")
            .arg(store.redis_key(&1))
            .arg("field")
            .arg("value")
            .query_async(&mut raw)
            .await
            .unwrap();
        let before = script_calls(&server);
        // Keys 0 to 39, four decisions each, interleaved: the batches mix the two damaged keys'
        // decisions with the others'.
        let keys: Vec<u32> = (0..4).flat_map(|_| 0..40).collect();
        let results = join_all(keys.iter().map(|k| decide(store, k))).await;
        let calls = script_calls(&server) - before;
        assert!(
            calls < 40,
            "{algorithm:?}: 160 decisions took {calls} calls"
        );
        for k in 0..40u32 {
            let mine: Vec<_> = keys
                .iter()
                .zip(&results)
                .filter(|(key, _)| **key == k)
                .map(|(_, r)| r)
                .collect();
            if k < 2 {
                for r in mine {
                    let e = r.as_ref().expect_err("a damaged key's decision fails");
                    assert!(e.is_corrupt_data(), "{algorithm:?}, key {k}: {e}");
                }
            } else {
                let admitted = mine
                    .iter()
                    .map(|r| r.as_ref().expect("decided by Redis").is_allowed())
                    .filter(|a| *a)
                    .count();
                assert_eq!(
                    admitted, 3,
                    "{algorithm:?}, key {k}: its quota of 3 exactly"
                );
            }
        }
        // The damaged keys are left as they were.
        let kept: String = redis::cmd("GET")
            .arg(store.redis_key(&0))
            .query_async(&mut raw)
            .await
            .unwrap();
        assert_eq!(kept, "hello");
    }
}

#[tokio::test]
async fn a_batch_redis_runs_after_its_callers_gave_up_writes_nothing() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let proxy = FaultProxy::start(server.addr()).await;
    let backend = RedisBackend::connect(&proxy.url())
        .await
        .unwrap()
        .timeout(Duration::from_millis(300))
        .failure_policy(FailurePolicy::Closed)
        .prefix(unique_prefix("batched-late"));
    let store = &limiter(backend, "batched", 100, Algorithm::Gcra);
    // A first decision teaches the store how Redis's clock relates to its own (the deadline a
    // call carries is on Redis's clock), and a first batch (on another key) loads the batch form
    // into Redis's script cache: a held `EVALSHA` answered `NOSCRIPT` late would run nothing.
    assert!(decide(store, &1).await.unwrap().is_allowed());
    for d in join_all((0..10).map(|_| decide(store, &2))).await {
        assert!(d.unwrap().is_allowed());
    }
    let before = script_calls(&server);
    // The proxy holds what the client sends: of two decisions made at once, one goes alone and
    // the other as a batch behind it; 100 ms later 18 more go as two batches (16 and 2); all are
    // given up on (300 and 400 ms).
    proxy.pause();
    let alone = join_all((0..2).map(|_| decide(store, &1)));
    let queued = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        join_all((0..18).map(|_| decide(store, &1))).await
    };
    let (alone, queued) = futures::join!(alone, queued);
    for r in alone.iter().chain(&queued) {
        let e = r.as_ref().expect_err("no answer within the timeout");
        assert!(e.is_timeout(), "{e}");
    }
    // Redis runs what was held (the call alone and the batches), past every deadline: four
    // calls (one more on a host so slow that the 18 came after the first two had given up).
    proxy.forward();
    let until = std::time::Instant::now() + Duration::from_secs(5);
    while script_calls(&server) < before + 4 && std::time::Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let calls = script_calls(&server) - before;
    assert!(
        (4..=5).contains(&calls),
        "20 decisions reached Redis in {calls} calls, not in batches"
    );
    // Nothing of it was written: the key has its 99 units left (a decision that finds Redis marked
    // down by the timeouts follows the policy until the probe interval has passed).
    let mut admitted = 0;
    let until = std::time::Instant::now() + Duration::from_secs(10);
    while admitted < 100 && std::time::Instant::now() < until {
        match decide(store, &1).await {
            Ok(d) if d.is_allowed() => admitted += 1,
            Ok(_) => break,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert_eq!(admitted, 99, "the 20 given-up decisions spent nothing");
}

#[tokio::test]
async fn batching_can_be_turned_off_and_each_decision_is_its_own_call() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let backend = connect(&server.url())
        .await
        .failure_policy(FailurePolicy::Closed)
        .batch_decisions(false)
        .prefix(unique_prefix("unbatched"));
    assert!(!backend.get_batch_decisions());
    let store = &limiter(backend, "batched", 100, Algorithm::Gcra);
    assert!(decide(store, &0).await.unwrap().is_allowed());
    let before = script_calls(&server);
    // 50 decisions at once on 50 keys (no refusal remembered): 50 calls.
    let results = join_all((1..=50).map(|k| async move { decide(store, &k).await })).await;
    assert!(results.iter().all(|r| r.as_ref().unwrap().is_allowed()));
    assert_eq!(script_calls(&server) - before, 50);
}

#[tokio::test]
async fn a_malformed_batch_writes_nothing() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut raw = server.connection().await;
    // The batch form of the GCRA script as the store sends it, for keys a and b: a first decision
    // well formed, then a second whose count runs past the arguments, or one that repeats the
    // first's arguments ("=") without its deadline; and a first decision that repeats ("=") a
    // decision there is not.
    let source = tower_rampart::backend::redis::batch_script_source(Algorithm::Gcra);
    let first = ["6", "1000000", "3600000000000", "", "0", "1", ""];
    let batches: [&[&str]; 3] = [
        &[&first[..], &["9", "1000000"]].concat(),
        &[&first[..], &["="]].concat(),
        &[&["=", ""][..], &first[..]].concat(),
    ];
    for args in batches {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(source)
            .arg(2)
            .arg("batched-bad:a")
            .arg("batched-bad:b");
        for a in args {
            cmd.arg(*a);
        }
        let e = cmd.query_async::<redis::Value>(&mut raw).await.unwrap_err();
        assert!(e.to_string().contains("RAMPARTARG"), "{args:?}: {e}");
        let exists = existing(&mut raw, &["batched-bad:a", "batched-bad:b"]).await;
        assert_eq!(exists, 0, "{args:?}: no decision was made");
    }
}

/// How many of `keys` exist.
async fn existing(raw: &mut redis::aio::MultiplexedConnection, keys: &[&str]) -> u32 {
    redis::cmd("EXISTS")
        .arg(keys)
        .query_async(raw)
        .await
        .unwrap()
}

/// A batch's answers, sent as the store sends it and read as they come (a query would make an
/// answer that is an error the whole call's error).
async fn answers(
    raw: &mut redis::aio::MultiplexedConnection,
    cmd: &redis::Cmd,
) -> Vec<redis::Value> {
    match raw.send_packed_command(cmd).await.unwrap() {
        redis::Value::Array(answers) => answers,
        other => panic!("an array: {other:?}"),
    }
}

/// A decision whose arguments are the previous one's but its deadline is sent as "=" and that
/// deadline (what the store sends for a store's decisions on one clock): decided with the
/// previous decision's arguments and its own deadline.
#[tokio::test]
async fn a_decision_repeating_the_previous_ones_arguments_keeps_its_own_deadline() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut raw = server.connection().await;
    let source = tower_rampart::backend::redis::batch_script_source(Algorithm::Gcra);
    // An emission interval of 1 s, a burst of 2: keys a and c admitted with 1 unit left; b's
    // deadline (1 us after the epoch) long past.
    let far = "9007199254740991";
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(source)
        .arg(3)
        .arg("batched-eq:a")
        .arg("batched-eq:b")
        .arg("batched-eq:c")
        .arg(6)
        .arg("1000000000")
        .arg("2000000000")
        .arg("")
        .arg("0")
        .arg("1")
        .arg(far)
        .arg("=")
        .arg("1")
        .arg("=")
        .arg(far);
    let reply = answers(&mut raw, &cmd).await;
    assert_eq!(
        reply.len(),
        4,
        "three answers and the batch's TIME: {reply:?}"
    );
    for i in [0, 2] {
        let redis::Value::Array(answer) = &reply[i] else {
            panic!("answer {i}: {reply:?}");
        };
        // Admitted, the slack of one more unit (1 s), the TAT 1 s ahead; nothing repaired.
        assert_eq!(
            answer[..],
            [
                redis::Value::Int(1),
                redis::Value::Int(1_000_000_000),
                redis::Value::Int(1_000_000_000)
            ],
            "answer {i}: {reply:?}"
        );
    }
    assert!(
        matches!(&reply[1], redis::Value::ServerError(e) if e.code() == "RAMPARTLATE"),
        "b's own deadline had passed: {reply:?}"
    );
    let exists = existing(&mut raw, &["batched-eq:a", "batched-eq:b", "batched-eq:c"]).await;
    assert_eq!(exists, 2, "a and c written, b not");
}

/// A batch's decisions are all made at its one `TIME`, and each answer leaves with the batch's
/// reply: a decision whose deadline is nearer than the batch's run may take (100 us a decision)
/// is answered late, though the single script would make it, so that no decision is written for
/// a caller who gives up before the reply reaches it (the store sends it again, alone).
#[tokio::test]
async fn a_batch_answers_late_a_decision_due_within_its_run() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut raw = server.connection().await;
    let source = tower_rampart::backend::redis::batch_script_source(Algorithm::Gcra);
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut raw).await.unwrap();
    let now_us = secs * 1_000_000 + micros;
    // 200 decisions: a margin of 20 ms. The first is due 10 ms from now (Redis runs the batch
    // well within that), the others far off.
    let soon = (now_us + 10_000).to_string();
    let mut cmd = redis::cmd("EVAL");
    cmd.arg(source).arg(200);
    for k in 0..200 {
        cmd.arg(format!("batched-margin:{k}"));
    }
    cmd.arg(6)
        .arg("1000000")
        .arg("3600000000000")
        .arg("")
        .arg("0")
        .arg("1")
        .arg(&soon);
    for _ in 1..200 {
        cmd.arg("=").arg("9007199254740991");
    }
    let reply = answers(&mut raw, &cmd).await;
    assert_eq!(reply.len(), 201);
    assert!(
        matches!(&reply[0], redis::Value::ServerError(e) if e.code() == "RAMPARTLATE"),
        "the decision due within the batch's run: {:?}",
        reply[0]
    );
    assert!(
        reply[1..200].iter().all(
            |a| matches!(a, redis::Value::Array(v) if v.first() == Some(&redis::Value::Int(1)))
        ),
        "the others admitted"
    );
    let exists = existing(&mut raw, &["batched-margin:0"]).await;
    assert_eq!(exists, 0, "the late decision wrote nothing");
    // The single script makes the same decision, due as soon, in time.
    let single = tower_rampart::backend::redis::script_source(Algorithm::Gcra);
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut raw).await.unwrap();
    let reply: Vec<redis::Value> = redis::cmd("EVAL")
        .arg(single)
        .arg(1)
        .arg("batched-margin:0")
        .arg("1000000")
        .arg("3600000000000")
        .arg("")
        .arg("0")
        .arg("1")
        .arg(secs * 1_000_000 + micros + 10_000)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(reply[0], redis::Value::Int(1), "{reply:?}");
}

#[tokio::test]
async fn a_write_redis_refuses_mid_batch_fails_that_decision_only() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut raw = server.connection().await;
    let backend = connect(&server.url())
        .await
        .failure_policy(FailurePolicy::Closed)
        .prefix(unique_prefix("batched-oom"));
    let store = &limiter(backend, "batched", 1, Algorithm::Gcra);
    // Key 1 spends its one unit; a batch loads the batch form.
    assert!(decide(store, &1).await.unwrap().is_allowed());
    for r in join_all((1000..1010).map(|k| async move { decide(store, &k).await })).await {
        assert!(r.unwrap().is_allowed());
    }
    // Redis takes no more writes (over its memory bound, no eviction): a refusal writes nothing
    // and is still made; an admission's write is refused inside the script.
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("1")
        .query_async(&mut raw)
        .await
        .unwrap();
    // Key 1 (refusals) and fresh keys (admissions) interleaved, all at once.
    let keys: Vec<u32> = (0..10).flat_map(|i| [1, 2000 + i]).collect();
    let results = join_all(keys.iter().map(|k| decide(store, k))).await;
    let _: () = redis::cmd("CONFIG")
        .arg("SET")
        .arg("maxmemory")
        .arg("0")
        .query_async(&mut raw)
        .await
        .unwrap();
    for (k, r) in keys.iter().zip(&results) {
        if *k == 1 {
            let d = r.as_ref().expect("a refusal needs no write");
            assert!(!d.is_allowed(), "key 1 has nothing left");
        } else {
            let e = r
                .as_ref()
                .expect_err("an admission whose write was refused");
            assert!(format!("{e:?}").contains("OOM"), "key {k}: {e:?}");
        }
    }
    // Nothing of the refused writes landed.
    let kept: u32 = redis::cmd("EXISTS")
        .arg(store.redis_key(&2000))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(kept, 0);
}

#[test]
fn damaged_keys_repaired_inside_a_batch_are_decided_as_fresh() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut raw = server.connection().await;
            for (algorithm, name) in [
                (Algorithm::Gcra, "repaired-gcra"),
                (Algorithm::SlidingWindow, "repaired-sw"),
            ] {
                // Repairing (the default): a damaged key's answer carries what was repaired,
                // the one answer a batch does not shorten.
                let backend = connect(&server.url())
                    .await
                    .failure_policy(FailurePolicy::Closed)
                    .prefix(unique_prefix("batched-repair"));
                let store = &limiter(backend, name, 3, algorithm);
                for k in [0u32, 1] {
                    let _: () = redis::cmd("SET")
                        .arg(store.redis_key(&k))
                        .arg("hello")
                        .query_async(&mut raw)
                        .await
                        .unwrap();
                }
                let before = script_calls(&server);
                let keys: Vec<u32> = (0..4).flat_map(|_| 0..20).collect();
                let results = join_all(keys.iter().map(|k| decide(store, k))).await;
                assert!(
                    script_calls(&server) - before < 20,
                    "{algorithm:?}: batched"
                );
                for k in 0..20u32 {
                    let admitted = keys
                        .iter()
                        .zip(&results)
                        .filter(|(key, _)| **key == k)
                        .filter(|(_, r)| r.as_ref().expect("decided by Redis").is_allowed())
                        .count();
                    assert_eq!(admitted, 3, "{algorithm:?}, key {k}: a fresh quota of 3");
                }
            }
        });
    });
    // Each repair reached the store through its batch's answer: counted once per damaged key.
    let snapshot = crate::corrupt::snapshot(&snapshotter);
    for name in ["repaired-gcra", "repaired-sw"] {
        assert_eq!(
            crate::corrupt::counter(
                &snapshot,
                "rampart_rate_limit_backend_repaired_total",
                ("name", name)
            ),
            2,
            "{name}"
        );
    }
}

/// A batch is sent by a task on its callers' own runtime: a decision made on one runtime never
/// waits on another that has stopped running its tasks (a thread blocked by CPU-bound work).
#[test]
fn a_stalled_runtime_does_not_hold_another_runtimes_decisions() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let rt = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let (main, stalled) = (rt(), rt());
    let shared = main.block_on(async {
        let backend = RedisBackend::connect(&server.url())
            .await
            .unwrap()
            .timeout(Duration::from_millis(500))
            .failure_policy(FailurePolicy::Closed)
            .prefix(unique_prefix("batched-runtimes"));
        limiter(backend, "batched", 100, Algorithm::Gcra)
    });
    let store = shared.clone();
    // The other runtime: a decision in flight and one queued behind it (its batch's task spawned
    // there), then its thread blocks for 1.5 s before running anything again.
    let (started, start) = std::sync::mpsc::channel();
    let other = std::thread::spawn(move || {
        stalled.block_on(async {
            let mut first = Box::pin(decide(&store, &1));
            let mut second = Box::pin(decide(&store, &2));
            assert!(futures::poll!(first.as_mut()).is_pending());
            assert!(futures::poll!(second.as_mut()).is_pending());
            started.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(1_500));
            // The queued one's caller gave up (500 ms) before its batch's task ran: it was not
            // sent. (The first went at once; its reply waits on the connection's task, on the
            // other runtime, which this thread does not drive.)
            let (_, second) = futures::join!(first, second);
            assert!(second.unwrap_err().is_timeout());
        })
    });
    start.recv().unwrap();
    // Decisions here while the other runtime stalls: their batch goes on this runtime.
    let results = main.block_on(join_all((10..20).map(|k| {
        let store = &shared;
        async move { decide(store, &k).await }
    })));
    for r in results {
        assert!(
            r.expect("decided by Redis, not held by the stalled runtime")
                .is_allowed()
        );
    }
    other.join().unwrap();
    // Key 2's given-up decision spent nothing (the first's timeout, its reply unread while this
    // runtime was not driven, may have marked Redis down: a decision is answered by the policy
    // until the probe interval has passed).
    let d = main.block_on(async {
        for _ in 0..20 {
            if let Ok(d) = decide(&shared, &2).await {
                return d;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("redis did not decide again within 2 s");
    });
    assert_eq!(d.remaining(), 99);
}

/// A decision whose batch never left (its runtime ran nothing until after its deadline) times out
/// without counting against the connection: Redis kept nobody waiting, so it is not marked down,
/// and the next decision goes to it at once.
#[test]
fn a_decision_whose_batch_never_left_does_not_mark_redis_down() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    // The connection's task runs on `main`'s workers, which keep running while `stalled` does not.
    let main = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let stalled = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let shared = main.block_on(async {
        let backend = RedisBackend::connect(&server.url())
            .await
            .unwrap()
            .timeout(Duration::from_millis(300))
            .failure_policy(FailurePolicy::Closed)
            .prefix(unique_prefix("batched-never-left"));
        let store = limiter(backend, "batched", 100, Algorithm::Gcra);
        // The script loaded (a first call answered NOSCRIPT would need this runtime's thread to
        // send it again) and Redis's clock learnt.
        assert!(decide(&store, &0).await.unwrap().is_allowed());
        store
    });
    let store = shared.clone();
    std::thread::spawn(move || {
        stalled.block_on(async {
            // The first goes at once; the second joins a queue whose task is spawned here.
            let mut first = Box::pin(decide(&store, &1));
            let mut second = Box::pin(decide(&store, &2));
            assert!(futures::poll!(first.as_mut()).is_pending());
            assert!(futures::poll!(second.as_mut()).is_pending());
            std::thread::sleep(Duration::from_millis(600));
            let (first, second) = futures::join!(first, second);
            assert!(
                first
                    .expect("answered while this thread slept")
                    .is_allowed()
            );
            let e = second.expect_err("its deadline passed before its batch could leave");
            assert!(e.is_timeout(), "{e}");
            assert!(e.to_string().contains("not sent to redis"), "{e}");
        });
    })
    .join()
    .unwrap();
    main.block_on(async {
        let d = decide(&shared, &3).await;
        assert!(
            d.as_ref().is_ok_and(|d| d.is_allowed()),
            "redis was marked down by a decision that never reached it: {d:?}"
        );
        // Key 2's decision spent nothing.
        assert_eq!(decide(&shared, &2).await.unwrap().remaining(), 99);
    });
}
