//! The GCRA script called directly (`EVALSHA` of [`script_source`]), on the paths its cost work
//! made (#18, #21): the caller's clock and stored states split without `string.match`/`tonumber`
//! (one to nineteen digits, leading zeros, the 2^53 microsecond bound), the set form's flags
//! checked by a string comparison for two limits spending, and packed values written with `..`
//! rather than one `format` per entry (byte for byte what the format always was).

use redis::Value;
use tower_rampart::backend::redis::{script_sha, script_source};
use tower_rampart::rate_limit::Algorithm;

use crate::common::redis::RedisServer;

struct Raw {
    con: redis::aio::MultiplexedConnection,
}

impl Raw {
    async fn new(server: &RedisServer) -> Self {
        let mut con = server.connection().await;
        let sha: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(script_source(Algorithm::Gcra))
            .query_async(&mut con)
            .await
            .unwrap();
        assert_eq!(sha, script_sha(Algorithm::Gcra));
        Self { con }
    }

    async fn eval(&self, key: &str, args: &[&str]) -> redis::RedisResult<Vec<Value>> {
        redis::cmd("EVALSHA")
            .arg(script_sha(Algorithm::Gcra))
            .arg(1)
            .arg(key)
            .arg(args)
            .query_async(&mut self.con.clone())
            .await
    }

    async fn get(&self, key: &str) -> Option<String> {
        redis::cmd("GET")
            .arg(key)
            .query_async(&mut self.con.clone())
            .await
            .unwrap()
    }

    async fn set(&self, key: &str, value: &str) {
        let _: () = redis::cmd("SET")
            .arg(key)
            .arg(value)
            .query_async(&mut self.con.clone())
            .await
            .unwrap();
    }
}

fn int(v: &Value) -> i64 {
    match v {
        Value::Int(i) => *i,
        other => panic!("an integer: {other:?}"),
    }
}

fn text(v: &Value) -> String {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).unwrap(),
        other => panic!("a string: {other:?}"),
    }
}

const NO_BOUND: &str = "9007199254740991";

/// The single form at the caller's clock `now` (ns, as text) with an emission of 1,000 ns and a
/// tolerance of 5,000 ns: the reply and the state written.
async fn single_at(raw: &Raw, key: &str, now: &str) -> (Vec<Value>, Option<String>) {
    let reply = raw
        .eval(key, &["1000", "5000", now, "600000", "1", NO_BOUND])
        .await
        .expect("a reply");
    (reply, raw.get(key).await)
}

#[tokio::test]
async fn the_callers_clock_and_stored_states_are_split_exactly() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let raw = Raw::new(&server).await;

    // Now and a fresh key: the TAT is now + emission, written as the digits of its nanoseconds.
    for (now, tat) in [
        ("1700000000123456789", "1700000000123457789"),
        ("1700000000123456999", "1700000000123457999"),
        ("9007199254740990999", "9007199254740991999"),
        ("5", "1005"),
        ("999", "1999"),
        ("1000", "2000"),
        // Zero-padded to nineteen digits: the number it spells.
        ("0000000000000001000", "2000"),
    ] {
        let key = format!("split:{now}");
        let (reply, state) = single_at(&raw, &key, now).await;
        assert_eq!(int(&reply[0]), 1, "admitted at {now}");
        assert_eq!((int(&reply[1]), int(&reply[2])), (4000, 1000), "at {now}");
        assert_eq!(state.as_deref(), Some(tat), "at {now}");
        // Read back at the same instant: a TAT 1,000 ns ahead, then 2,000.
        let (reply, state) = single_at(&raw, &key, now).await;
        assert_eq!((int(&reply[1]), int(&reply[2])), (3000, 2000), "at {now}");
        let second = (tat.parse::<u128>().unwrap() + 1000).to_string();
        assert_eq!(state.as_deref(), Some(second.as_str()), "at {now}");
    }

    // What is not 1 to 19 digits (or reaches 2^53 microseconds) is no clock.
    for now in [
        "0001700000000123456789",
        "123 ",
        "12a",
        "1e3",
        " 123456",
        "+1234567",
        "9007199254740992000",
        "17000000001234567890",
    ] {
        let err = raw
            .eval("split:bad", &["1000", "5000", now, "600000", "1", NO_BOUND])
            .await
            .expect_err(now);
        assert!(
            err.to_string().contains("the clock value is out of range"),
            "{now}: {err}"
        );
    }

    // Stored states: leading zeros read as the number they write, anything else repaired.
    raw.set("split:zeros", "0001005").await;
    let (reply, state) = single_at(&raw, "split:zeros", "5").await;
    assert_eq!((int(&reply[1]), int(&reply[2])), (3000, 2000));
    // Nothing repaired: `repaired` is left out, the server's time follows the figures.
    assert_eq!(reply.len(), 4, "{reply:?}");
    assert!(int(&reply[3]) > 1_700_000_000_000_000, "{reply:?}");
    assert_eq!(state.as_deref(), Some("2005"));
    let now = "1700000000123456789";
    for state in [
        "1e18",
        "1700000000123457789 ",
        "0x1700000000",
        "+17000000001234",
        "",
    ] {
        raw.set("split:foreign", state).await;
        let (reply, written) = single_at(&raw, "split:foreign", now).await;
        assert_eq!(
            text(&reply[3]),
            "the key does not hold a GCRA arrival time",
            "{state:?}"
        );
        assert_eq!(written.as_deref(), Some("1700000000123457789"), "{state:?}");
    }
}

/// The set form's arguments for limits `names` (each 1,000 ns emission, 5,000 ns tolerance), cost
/// 1, on the server's clock.
fn set<'a>(flags: &'a str, names: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["1000", "5000", "", "0", "1", "1", flags, names[0]];
    for name in &names[1..] {
        args.extend([*name, "1000", "5000"]);
    }
    args.push(NO_BOUND);
    args
}

#[tokio::test]
async fn the_set_forms_flags_are_checked_for_every_size() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let raw = Raw::new(&server).await;
    // Two limits spending, every one enforced: admitted, and the figures of the first.
    let reply = raw
        .eval("flags:ok", &set("000", &["a", "b"]))
        .await
        .unwrap();
    assert_eq!(int(&reply[0]), 1);
    // Nothing repaired: `repaired` is left out, `index` follows the figures.
    assert_eq!(reply.len(), 7, "{reply:?}");
    assert_eq!(int(&reply[3]), 1);
    // "000" is the flags of two limits only.
    for (flags, names) in [
        ("000", &["a", "b", "c"][..]),
        ("000", &["a"][..]),
        ("0000", &["a", "b"][..]),
        ("00", &["a", "b"][..]),
        ("0a0", &["a", "b"][..]),
        ("", &["a", "b"][..]),
    ] {
        let err = raw
            .eval("flags:bad", &set(flags, names))
            .await
            .expect_err(flags);
        assert!(
            err.to_string()
                .contains("the flags must be n + 1 characters 0 or 1"),
            "{flags:?} with {names:?}: {err}"
        );
    }
    // Shadow and peek flags of two limits still take the general path, and are read: `b` with
    // a burst of one (tolerance = emission = 1,000 s), spent by a first decision, refuses the next.
    let two = |flags: &'static str| {
        vec![
            "1000",
            "5000",
            "",
            "0",
            "1",
            "1",
            flags,
            "a",
            "b",
            "1000000000000",
            "1000000000000",
            NO_BOUND,
        ]
    };
    let first = raw.eval("flags:b", &two("000")).await.unwrap();
    assert_eq!(int(&first[0]), 1);
    let spent = raw.get("flags:b").await;
    // Enforced, `b` refuses the set: binding limit 2 (status 0), nothing written.
    let refused = raw.eval("flags:b", &two("000")).await.unwrap();
    assert_eq!(int(&refused[0]), 0);
    assert_eq!((int(&refused[3]), int(&refused[4])), (2, 0));
    assert_eq!(int(&refused[5]), 0);
    assert_eq!(raw.get("flags:b").await, spent, "a refusal writes nothing");
    // A peek at it says the same and writes nothing either.
    let peek = raw.eval("flags:b", &two("100")).await.unwrap();
    assert_eq!((int(&peek[0]), int(&peek[3])), (0, 2));
    assert_eq!(raw.get("flags:b").await, spent, "a peek writes nothing");
    // `b` in shadow: admitted, `b` flagged as refusing (bit 1), `a` binding and spent.
    let shadow = raw.eval("flags:b", &two("001")).await.unwrap();
    assert_eq!(int(&shadow[0]), 1);
    assert_eq!(int(&shadow[5]), 2);
    assert_eq!((int(&shadow[3]), int(&shadow[4])), (1, 1));
    assert_ne!(raw.get("flags:b").await, spent, "the admitted `a` spent");
    // A peek on a fresh key writes nothing.
    let reply = raw
        .eval("flags:peek", &set("100", &["a", "b"]))
        .await
        .unwrap();
    assert_eq!(int(&reply[0]), 1);
    assert_eq!(raw.get("flags:peek").await, None, "a peek writes nothing");
}

#[tokio::test]
async fn a_minimum_expiry_that_is_not_a_number_is_refused_whatever_the_decision() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let raw = Raw::new(&server).await;
    for args in [
        &["1000", "5000", "", "soon", "1", NO_BOUND][..],
        &[
            "1000", "5000", "", "", "1", "1", "000", "a", "b", "1000", "5000", NO_BOUND,
        ][..],
    ] {
        let err = raw.eval("ttl:bad", args).await.expect_err("no expiry");
        assert!(
            err.to_string()
                .contains("the minimum expiry must be a number of ms"),
            "{args:?}: {err}"
        );
        assert_eq!(raw.get("ttl:bad").await, None);
    }
    // Three arguments are no form at all: the arity is what is wrong.
    let err = raw
        .eval("ttl:bad", &["1000", "5000", NO_BOUND])
        .await
        .expect_err("three arguments");
    assert!(
        err.to_string()
            .contains("a set of n limits takes 3n + 6 arguments"),
        "{err}"
    );
}

#[tokio::test]
async fn packed_values_are_written_byte_for_byte_in_their_format() {
    let Some(server) = RedisServer::start() else {
        return;
    };
    let raw = Raw::new(&server).await;
    // A carried entry ("c", not in the decision) keeps its bytes; "a" is updated in place; "b",
    // new, goes last; the expired "x" is dropped.
    let far = "9999999999999";
    raw.set(
        "packed:bytes",
        &format!("|x|1|17|a|{far}|1700000000123456789|c|{far}|1 2 3"),
    )
    .await;
    let now = "1700000000123456789";
    let args = [
        "1000", "5000", now, "600000", "1", "1", "000", "a", "b", "1000", "5000", NO_BOUND,
    ];
    let reply = raw.eval("packed:bytes", &args).await.unwrap();
    assert_eq!(int(&reply[0]), 1);
    let value = raw.get("packed:bytes").await.unwrap();
    let (time_s, _): (u64, u64) = redis::cmd("TIME")
        .query_async(&mut raw.con.clone())
        .await
        .unwrap();
    let parts: Vec<&str> = value.split('|').collect();
    // "", then name, expiry, state for each entry.
    assert_eq!(parts.len(), 10, "{value}");
    assert_eq!(
        (parts[1], parts[3]),
        ("a", "1700000000123457789"),
        "{value}"
    );
    assert_eq!(
        (parts[4], parts[5], parts[6]),
        ("c", far, "1 2 3"),
        "{value}"
    );
    assert_eq!(
        (parts[7], parts[9]),
        ("b", "1700000000123457789"),
        "{value}"
    );
    // The expiries written: the server's ms now plus the minimum expiry (600,000 ms), as digits.
    for exp in [parts[2], parts[8]] {
        assert!(exp.bytes().all(|b| b.is_ascii_digit()), "{value}");
        let exp: u64 = exp.parse().unwrap();
        let now_ms = time_s * 1000;
        assert!(
            exp >= now_ms + 590_000 && exp <= now_ms + 601_000,
            "{exp} against {now_ms}"
        );
    }
}
