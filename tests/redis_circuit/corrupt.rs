//! A circuit's hash holding what the script could not have written (foreign or damaged data:
//! `wt=1e15`, `wh=-inf`, `until=nan`, which Lua's `tonumber` reads) is answered with a data error
//! before anything is written: Redis stays free for every client (no loop over a huge window gap),
//! the hash is left as it was, and the replicas follow their own circuits (an `until=nan` does not
//! keep the circuit open for good, nor does one beyond the longest wait the script writes, nor a
//! permit's lease beyond the longest the script writes). The
//! time window's slice a sync adds to is checked with the rest, before the old slices go. A large
//! count window empties in a bounded number of commands.

use std::time::Duration;

use tower_rampart::circuit_breaker::CircuitBreakerBuilder;

use crate::common::redis::RedisServer;
use crate::support::{Outcome, Replica, all_following, connect, unique_prefix, within};

const INTERVAL: Duration = Duration::from_millis(50);
/// A generous bound, on real time, for what must be prompt.
const PROMPT: Duration = Duration::from_secs(10);

fn configure(b: CircuitBreakerBuilder) -> CircuitBreakerBuilder {
    b.name("corrupt")
        .window(100)
        .wait_duration(Duration::from_millis(200))
}

/// Redis answers `PING` (from a client of its own), within [`PROMPT`].
async fn answers_ping(server: &RedisServer, what: &str) {
    let addr = server.addr();
    let pong = tokio::time::timeout(
        PROMPT,
        tokio::task::spawn_blocking(move || crate::common::redis::command_at(addr, "PING")),
    )
    .await
    .unwrap_or_else(|_| panic!("{what}: redis did not answer PING within {PROMPT:?}"))
    .unwrap();
    assert_eq!(pong, "+PONG", "{what}: redis is busy");
}

/// A replica on its own prefix whose circuit's hash exists (it synced once); and the hash's key.
async fn replica(server: &RedisServer, what: &str) -> (Replica, String) {
    let prefix = unique_prefix(what);
    let r = Replica::new(connect(&server.url(), &prefix).await, configure, INTERVAL);
    assert_eq!(r.call().await, Outcome::Ok);
    all_following(std::slice::from_ref(&r)).await;
    let key = format!("{prefix}:cb:{{corrupt/global}}");
    server.until_one_key(&key).await;
    (r, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_numbers_are_refused_before_any_write_and_redis_stays_free() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    // (what, fields written, whether a handle's reset, rather than calls, meets them)
    let cases: [(&str, &str, bool); 6] = [
        ("huge-gap", "wt 1e15 c 1000", false),
        ("minus-inf-head", "wh -inf c 1000", false),
        ("inf-tail", "wt inf c 1000", false),
        ("huge-gap-closing", "wt 1e15 c 1000", true),
        ("nan-count", "c nan", false),
        ("fraction", "wt 2.5", false),
    ];
    for (what, fields, reset) in cases {
        let (r, key) = replica(&server, what).await;
        assert_eq!(server.command(&format!("HSET {key} {fields}")), ":0");
        let len = server.command(&format!("HLEN {key}"));
        if reset {
            r.handle.reset();
        } else {
            for _ in 0..5 {
                assert_eq!(r.call().await, Outcome::Ok, "{what}");
            }
        }
        // The sync meets the data, and the replica follows its own circuit.
        within(
            PROMPT,
            &format!("{what}: the replica stops following"),
            || !r.following(),
        )
        .await;
        answers_ping(&server, what).await;
        tokio::time::sleep(INTERVAL * 4).await;
        answers_ping(&server, what).await;
        // Nothing was written: the fields are as they were, no batch was added.
        let first = fields.split(' ').next().unwrap();
        let value = fields.split(' ').nth(1).unwrap();
        let got = server.command(&format!("HGET {key} {first}"));
        assert!(got.ends_with(value), "{what}: {first} is now {got:?}");
        assert_eq!(server.command(&format!("HLEN {key}")), len, "{what}");
        assert_eq!(
            r.call().await,
            Outcome::Ok,
            "{what}: the local circuit serves"
        );
        // Deleted, the hash is made afresh and followed again.
        server.command(&format!("DEL {key}"));
        within(
            PROMPT,
            &format!("{what}: the replica follows again"),
            || r.following(),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_circuit_whose_end_cannot_be_read_is_not_open_for_good() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    // 9e15 and 2^53 are whole numbers, but beyond now + 2^52 us: the script never writes them.
    for end in ["nan", "inf", "-nan", "1e300", "9e15", "9007199254740992"] {
        let prefix = unique_prefix("until");
        let r = Replica::new(
            connect(&server.url(), &prefix).await,
            |b| {
                b.name("corrupt")
                    .consecutive_failures(1)
                    .wait_duration(Duration::from_secs(1))
            },
            INTERVAL,
        );
        let key = format!("{prefix}:cb:{{corrupt/global}}");
        // Synced once before the failure: a first sync that came after the replica's own wait
        // had lapsed (a loaded host) reported no opening, and the shared circuit never opened.
        within(PROMPT, &format!("until={end}: the replica follows"), || {
            r.following()
        })
        .await;
        // A failure opens the shared circuit, for 1 s; its end is then damaged. Read in Redis: on
        // a loaded host the replica's own circuit can be half-open (its wait gone) before its
        // sync returns, and the script checks `until` in every state.
        r.up.fail(true);
        assert_eq!(r.call().await, Outcome::Failed);
        within(
            PROMPT,
            &format!("until={end}: the shared circuit opens"),
            || server.command(&format!("HGET {key} st")).ends_with("\r\n1"),
        )
        .await;
        assert_eq!(server.command(&format!("HSET {key} until {end}")), ":0");
        r.up.fail(false);
        // Several syncs, and far longer than the wait: the replica serves calls again.
        tokio::time::sleep(Duration::from_millis(2000)).await;
        let mut last = Vec::new();
        for _ in 0..10 {
            last.push(r.call().await);
            tokio::time::sleep(INTERVAL).await;
        }
        assert!(
            last.iter().all(|o| *o == Outcome::Ok),
            "until={end}: calls 2 s after the wait began: {last:?}"
        );
        assert!(!r.following(), "until={end}: the hash is not followed");
        answers_ping(&server, end).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_count_window_closes_and_slides_in_few_commands() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let prefix = unique_prefix("large");
    let r = Replica::new(
        connect(&server.url(), &prefix).await,
        |b| b.name("corrupt").window(1_000_000).minimum_calls(1_000_000),
        INTERVAL,
    );
    assert_eq!(r.call().await, Outcome::Ok);
    let key = format!("{prefix}:cb:{{corrupt/global}}");
    server.until_one_key(&key).await;
    // 100,000 batches of one call each, as many replicas reporting small batches leave them.
    let fill = "EVAL \"for i = 0, 99999 do redis.call('HSET', KEYS[1], 'bc' .. i, 1, 'bf' .. i, \
                0, 'bs' .. i, 0) end redis.call('HSET', KEYS[1], 'wh', 0, 'wt', 100000, 'c', \
                100000) return 1\" 1";
    assert_eq!(server.command(&format!("{fill} {key}")), ":1");
    let before = server.calls("hdel");
    r.handle.reset();
    within(PROMPT, "the window is emptied", || {
        server.command(&format!("HGET {key} wt")).ends_with("\r\n0")
    })
    .await;
    let hdel = server.calls("hdel") - before;
    assert!(hdel <= 5, "closing took {hdel} HDEL commands");
    let len: u64 = server.command(&format!("HLEN {key}"))[1..].parse().unwrap();
    assert!(len < 40, "the hash still holds {len} fields");
    answers_ping(&server, "closed").await;
    drop(r); // its syncs would count below

    // Sliding: 1,000 more one-call batches, then a batch that pushes 500 of them out.
    let fill = "EVAL \"for i = 0, 999 do redis.call('HSET', KEYS[1], 'bc' .. i, 1, 'bf' .. i, \
                0, 'bs' .. i, 0) end redis.call('HSET', KEYS[1], 'wk', 'c1000', 'wh', 0, 'wt', \
                1000, 'c', 1000) return 1\" 1";
    let prefix = unique_prefix("slide");
    let r = Replica::new(
        connect(&server.url(), &prefix).await,
        |b| b.name("corrupt").window(1_000).minimum_calls(1_000),
        Duration::from_secs(2),
    );
    assert_eq!(r.call().await, Outcome::Ok);
    let key = format!("{prefix}:cb:{{corrupt/global}}");
    server.until_one_key(&key).await;
    all_following(std::slice::from_ref(&r)).await;
    assert_eq!(server.command(&format!("{fill} {key}")), ":1");
    let before = (server.calls("hdel"), server.calls("hmget"));
    for _ in 0..500 {
        assert_eq!(r.call().await, Outcome::Ok);
    }
    // The replica's next sync (within its interval, 2 s) reports the batch of 500 (501 when the
    // first call came after the first sync), which pushes as many one-call batches out.
    let start = std::time::Instant::now();
    loop {
        // HGET: the HMGETs are counted below.
        let window = server.command(&format!("HGET {key} wh"));
        let wh: u64 = window.split("\r\n").nth(1).unwrap().parse().unwrap();
        if wh >= 500 {
            break;
        }
        assert!(
            start.elapsed() < PROMPT,
            "the batch of 500 is not in: wh is {window:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hdel = server.calls("hdel") - before.0;
    let hmget = server.calls("hmget") - before.1;
    assert!(hdel <= 10, "sliding took {hdel} HDEL commands");
    assert!(hmget <= 20, "sliding took {hmget} HMGET commands");
}

/// The script called directly (`EVAL` of its source) on a hash set up by the test, with a report
/// of `calls` successes from replica 7 and no command: Redis's answer.
async fn eval_script(
    con: &mut redis::aio::MultiplexedConnection,
    key: &str,
    window: &str,
    calls: u32,
) -> redis::RedisResult<Vec<redis::Value>> {
    let calls = calls.to_string();
    let args = [
        window, "1000", "0.5", "", "0", "200000", "2", "60000000", "1", "600000", "7", "1000",
        &calls, "0", "0", "0", "0", "0", "0", "0", "0", "", "0", "0",
    ];
    eval_args(con, key, &args).await
}

/// The circuit script on `key` with `args` (its 24 arguments).
async fn eval_args(
    con: &mut redis::aio::MultiplexedConnection,
    key: &str,
    args: &[&str; 24],
) -> redis::RedisResult<Vec<redis::Value>> {
    redis::cmd("EVAL")
        .arg(include_str!("../../src/backend/redis/circuit.lua"))
        .arg(1)
        .arg(key)
        .arg(&args[..])
        .query_async(con)
        .await
}

async fn hash(con: &mut redis::aio::MultiplexedConnection, key: &str) -> Vec<(String, String)> {
    let mut all: Vec<(String, String)> = redis::cmd("HGETALL")
        .arg(key)
        .query_async(con)
        .await
        .unwrap();
    all.sort();
    all
}

/// Redis TIME, in us.
async fn redis_now(con: &mut redis::aio::MultiplexedConnection) -> u64 {
    let (s, us): (u64, u64) = redis::cmd("TIME").query_async(con).await.unwrap();
    s * 1_000_000 + us
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_time_slice_that_cannot_be_incremented_is_refused_before_the_old_slices_go() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut con = server.connection().await;
    // Slices of 30 minutes; the window's oldest slice counted is 2 before the current one, so a
    // sync first deletes that slice (3 calls, 1 failure) and takes it off the totals, then
    // increments the current slice's fields (HINCRBY: whole numbers in Redis's own form only).
    let window = "t3600000000/2";
    let width = 1_800_000_000;
    for (what, field, value) in [
        ("fraction", "tc", "2.5"),
        ("exponent", "tc", "1e3"),
        ("leading zero", "tf", "05"),
        ("nan", "ts", "nan"),
        ("sign", "tc", "+4"),
    ] {
        let key = format!("{}:cb:{{corrupt/slice}}", unique_prefix("slice"));
        let sl = redis_now(&mut con).await / width;
        let old = sl - 2;
        let _: () = redis::cmd("HSET")
            .arg(&key)
            .arg(&[
                ("st", "0".to_string()),
                ("ep", "1".to_string()),
                ("gen", "1".to_string()),
                ("since", "1".to_string()),
                ("wk", window.to_string()),
                ("tlo", old.to_string()),
                (&format!("tc{old}") as &str, "3".to_string()),
                (&format!("tf{old}"), "1".to_string()),
                ("c", "3".to_string()),
                ("f", "1".to_string()),
                // The current slice, and the next one should the test run across their border.
                (&format!("{field}{sl}"), value.to_string()),
                (&format!("{field}{}", sl + 1), value.to_string()),
            ])
            .query_async(&mut con)
            .await
            .unwrap();
        let before = hash(&mut con, &key).await;
        let err = eval_script(&mut con, &key, window, 5)
            .await
            .expect_err(what);
        // Nothing was written: the old slice and the totals that count it are still there.
        assert_eq!(hash(&mut con, &key).await, before, "{what}: {err}");
        assert!(err.to_string().contains("RAMPARTDATA"), "{what}: {err}");
    }
    // Slices the script wrote are read and incremented, the old one taken off the totals.
    let key = format!("{}:cb:{{corrupt/slice}}", unique_prefix("slice"));
    let sl = redis_now(&mut con).await / width;
    let old = sl - 2;
    let cmd = format!(
        "HSET {key} st 0 ep 1 gen 1 since 1 wk {window} tlo {old} tc{old} 3 tf{old} 1 c 7 f 1 \
         tc{sl} 4 tc{} 4",
        sl + 1
    );
    assert_eq!(server.command(&cmd), ":12");
    let reply = eval_script(&mut con, &key, window, 5).await.unwrap();
    assert_eq!(
        reply[7],
        redis::Value::Int(9),
        "calls in the window: {reply:?}"
    );
    assert_eq!(
        reply[8],
        redis::Value::Int(0),
        "failures in the window: {reply:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_end_of_a_wait_beyond_the_longest_the_script_writes_is_refused() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut con = server.connection().await;
    let max_wait: u64 = 1 << 52;
    let now = redis_now(&mut con).await;
    // A day beyond the bound (a failover may set Redis TIME back a little, never days): refused.
    let key = format!("{}:cb:{{corrupt/until}}", unique_prefix("until"));
    let end = now + max_wait + 86_400_000_000 * 2;
    let cmd = format!("HSET {key} st 1 ep 2 gen 1 since {now} until {end} streak 1");
    assert_eq!(server.command(&cmd), ":6");
    let before = hash(&mut con, &key).await;
    let err = eval_script(&mut con, &key, "c100", 0).await.unwrap_err();
    assert!(err.to_string().contains("RAMPARTDATA"), "{err}");
    assert!(err.to_string().contains("until"), "{err}");
    assert_eq!(hash(&mut con, &key).await, before);
    // The longest wait the script writes is read: the circuit is open for as long.
    let key = format!("{}:cb:{{corrupt/until}}", unique_prefix("until"));
    let end = now + max_wait;
    let cmd = format!("HSET {key} st 1 ep 2 gen 1 since {now} until {end} streak 1");
    assert_eq!(server.command(&cmd), ":6");
    let reply = eval_script(&mut con, &key, "c100", 0).await.unwrap();
    assert_eq!(reply[2], redis::Value::Int(1), "{reply:?}");
    match reply[3] {
        redis::Value::Int(left) => assert!(left as u64 > max_wait - 60_000_000, "{reply:?}"),
        _ => panic!("{reply:?}"),
    }
}

/// The script with its arguments as `eval_script`'s, but replica 7's lease (ms) and the permits it
/// wants given.
async fn eval_with_lease(
    con: &mut redis::aio::MultiplexedConnection,
    key: &str,
    lease_ms: &str,
    want: &str,
) -> redis::RedisResult<Vec<redis::Value>> {
    let args = [
        "c100", "1000", "0.5", "", "0", "200000", "2", "60000000", "1", "600000", "7", lease_ms,
        "0", "0", "0", "0", "0", "0", "0", "0", want, "", "0", "0",
    ];
    eval_args(con, key, &args).await
}

/// A holder's lease (`d<replica>`) or the waiting flag (`pw`) far ahead kept a vanished replica's
/// permits held, so that no other replica could probe (half-open for good), or had every holder
/// give its permits back at every sync: beyond the longest lease the script writes (a day, and a
/// day for clocks) they are refused before any write; a lease asked for beyond it is cut to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_of_permits_beyond_the_longest_the_script_writes_is_refused() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let mut con = server.connection().await;
    let day: u64 = 86_400_000_000;
    let now = redis_now(&mut con).await;
    let half_open = |key: &str, extra: &str| {
        format!("HSET {key} st 2 ep 2 gen 1 since {now} wk c100 pg 1 hl 9 g9 1 {extra}")
    };
    for (field, value) in [("d9", now + 3 * day), ("pw", now + 3 * day)] {
        let key = format!("{}:cb:{{corrupt/lease}}", unique_prefix("lease"));
        assert_eq!(
            server.command(&half_open(&key, &format!("d9 {now} {field} {value}"))),
            if field == "d9" { ":9" } else { ":10" },
            "{field}"
        );
        let before = hash(&mut con, &key).await;
        let err = eval_with_lease(&mut con, &key, "1000", "1")
            .await
            .unwrap_err();
        assert!(err.to_string().contains("RAMPARTDATA"), "{field}: {err}");
        assert!(err.to_string().contains(field), "{field}: {err}");
        assert_eq!(
            hash(&mut con, &key).await,
            before,
            "{field}: nothing written"
        );
    }
    // A day ahead is read: replica 9 keeps its permit, and replica 7, wanting one, waits.
    let key = format!("{}:cb:{{corrupt/lease}}", unique_prefix("lease"));
    let d9 = now + day;
    assert_eq!(server.command(&half_open(&key, &format!("d9 {d9}"))), ":9");
    let reply = eval_with_lease(&mut con, &key, "1000", "1").await.unwrap();
    assert_eq!(reply[2], redis::Value::Int(2), "half-open: {reply:?}");
    assert_eq!(reply[6], redis::Value::Int(0), "no permit for 7: {reply:?}");
    assert_eq!(reply[12], redis::Value::Int(1), "7 waits: {reply:?}");
    assert!(server.command(&format!("HGET {key} g9")).ends_with("\r\n1"));
    // A lease of two days asked for is written as one: replica 7 takes the permit 9 gave back.
    let key = format!("{}:cb:{{corrupt/lease}}", unique_prefix("lease"));
    assert_eq!(
        server.command(&format!("HSET {key} st 2 ep 2 gen 1 since {now} wk c100")),
        ":5"
    );
    let reply = eval_with_lease(&mut con, &key, "172800000", "1")
        .await
        .unwrap();
    assert_eq!(
        reply[6],
        redis::Value::Int(1),
        "7 holds a permit: {reply:?}"
    );
    let d7: u64 = server
        .command(&format!("HGET {key} d7"))
        .rsplit("\r\n")
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let at = redis_now(&mut con).await;
    assert!(
        d7 <= at + day && d7 + 60_000_000 > at + day,
        "d7 {d7}, now {at}"
    );
    // Nor is anything but a whole number of milliseconds taken for one.
    let err = eval_with_lease(&mut con, &key, "1e300", "1")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("RAMPARTARG"), "{err}");
}
