use super::codec::*;
use super::*;

#[test]
fn prefix_ranges_cover_exactly_the_keys_with_the_prefix() {
    assert_eq!(prefix_range(b""), (b"-".to_vec(), b"+".to_vec()));
    assert_eq!(
        prefix_range(b"GET /a"),
        (b"[GET /a".to_vec(), b"(GET /b".to_vec())
    );
    assert_eq!(
        prefix_range(b"a\xff\xff"),
        (b"[a\xff\xff".to_vec(), b"(b".to_vec())
    );
    assert_eq!(prefix_range(b"\xff"), (b"[\xff".to_vec(), b"+".to_vec()));
    // Lexicographic order of bytes: every key with the prefix is in [min, max).
    let (min, max) = prefix_range(b"ab");
    for key in [&b"ab"[..], b"ab\x00", b"ab\xff\xff", b"abz"] {
        assert!(key >= &min[1..] && key < &max[1..], "{key:?}");
    }
    for key in [&b"aa\xff"[..], b"a", b"ac", b"b"] {
        assert!(!(key >= &min[1..] && key < &max[1..]), "{key:?}");
    }
}

#[test]
fn each_slot_holds_its_share_of_max_bytes() {
    assert_eq!(slot_budget(64 << 20, 16), 4 << 20);
    assert_eq!(slot_budget(1000, 3), 333);
    assert_eq!(slot_budget(5, 16), 1);
    assert_eq!(slot_budget(u64::MAX, 1), u64::MAX);
}

#[test]
fn the_scripts_that_count_bytes_carry_the_counting_functions() {
    for script in [fill_script(), invalidate_script(), range_script()] {
        // Lua functions must be defined before the code that calls them runs: sizes.lua first.
        assert!(script.code.starts_with(include_str!("sizes.lua")));
        assert!(
            script.code.matches("sizes_open(").count() >= 2,
            "defined and used"
        );
    }
}

#[test]
fn each_counting_function_serves_a_script() {
    // Each is a closure made on every call of each script that carries them: none is idle.
    let sizes = include_str!("sizes.lua");
    for line in sizes.lines() {
        let Some(name) = line.strip_prefix("local function ") else {
            continue;
        };
        let call = &name[..=name.find('(').unwrap()];
        let used = sizes.matches(call).count() > 1
            || [fill_script(), invalidate_script(), range_script()]
                .iter()
                .any(|script| script.code[sizes.len()..].contains(call));
        assert!(used, "{call} is used");
    }
}

#[test]
fn tokens_carry_a_random_part_and_the_counter() {
    let t = token(0xdead_beef, 0x1_0000_0007);
    assert_eq!(token_parts(t), (0xdead_beefu32.to_string(), 7.to_string()));
}

#[test]
fn framed_values_round_trip_and_refuse_anything_else() {
    let now = Instant::now();
    let wall = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let timing = Timing::new(
        now,
        crate::cache::entry::Lifetimes {
            ttl: Duration::from_secs(60),
            stale_while_revalidate: Duration::from_secs(30),
            stale_if_error: Duration::from_secs(600),
            age: Duration::ZERO,
        },
    );
    let entry = CacheEntry::new(String::from("summary"), timing, 7);
    let bytes = String::to_redis(&entry, now, wall);
    let later = now + Duration::from_secs(5);
    let back = String::from_redis(bytes.clone(), later, wall + Duration::from_secs(5)).unwrap();
    assert_eq!(back.value(), "summary");
    assert_eq!(back.age(later), Duration::from_secs(5));
    assert_eq!(
        back.timing().fresh_until - back.timing().stored_at,
        Duration::from_secs(60)
    );
    for cut in 0..FRAME_HEADER {
        assert!(String::from_redis(bytes[..cut].to_vec(), now, wall).is_err());
    }
    let mut v2 = bytes.clone();
    v2[3] = 2;
    assert_eq!(
        String::from_redis(v2, now, wall).unwrap_err().reason(),
        "unknown format version"
    );
    let mut bad = bytes.clone();
    bad.push(0xff);
    assert_eq!(
        String::from_redis(bad, now, wall).unwrap_err().reason(),
        "the value's codec refused it"
    );
    assert!(String::from_redis(b"hello world, not an entry at all".to_vec(), now, wall).is_err());
}
