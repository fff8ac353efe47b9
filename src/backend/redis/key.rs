//! How a limiter's key becomes part of a Redis key.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// A key type the Redis backend can store: how it is written into a Redis key.
///
/// The Redis key of a limiter's key is `<prefix>:rl:<algorithm>:<quota>:{<limiter name>/<key>}`
/// (for example `rampart:rl:gcra:10/60s:{default/203.0.113.9}`; its value holds every limit's
/// state for that key); this trait writes the `<key>` part. The braces make the limiter's name and
/// the key a Redis Cluster hash tag, so everything one limiter stores for one key lives on one
/// node, and different limiters' keys (the one key `global` of each global limiter too) spread
/// over the slots. Names cannot hold `/`, so the key may hold anything: the first `/` ends the
/// name. (A `}` in the key ends the hash tag there: the slot is that of the name and the key's
/// start, and distinct keys still write distinct Redis keys.)
///
/// Implemented for the keys of the crate's extractors and for common plain types:
///
/// | key type | written as |
/// |---|---|
/// | `()` ([`GlobalKey`](crate::key::GlobalKey)) | `global` |
/// | [`IpAddr`], [`Ipv4Addr`], [`Ipv6Addr`] ([`PeerIp`](crate::key::PeerIp), [`ClientIp`](crate::key::ClientIp)) | `203.0.113.9`, `2001:db8::` (compact text) |
/// | `http::HeaderValue` ([`HeaderKey`](crate::key::HeaderKey), feature `http`) | `h:` and the SHA-1 of the value, in hex: API keys never reach Redis |
/// | [`Hashed<T>`] | `h:` and the SHA-1 of the bytes, in hex |
/// | integers | decimal |
/// | `String`, `&'static str`, `Box<str>`, `Arc<str>` | the text itself |
/// | `(A, B)`, `(A, B, C)` | the parts joined by `:`; in every part but the last, `\` and `:` are escaped as `\\` and `\:` (`7:orders`, `2001\:db8\:\::orders`) |
///
/// Text keys go to Redis as they are: wrap secrets (tokens, e-mail addresses) in [`Hashed`].
///
/// Distinct keys of one type must write distinct bytes, or two clients would share one limit. The
/// implementations here keep that promise, tuples included (the escaping is what makes
/// `("a:b", "c")` and `("a", "b:c")` differ); an implementation of your own must keep it too, for
/// example by writing a fixed-width or escaped form of each field, as the tuples do.
///
/// # Example
///
/// ```
/// use tower_rampart::backend::redis::RedisKey;
///
/// #[derive(Clone, Debug, Hash, PartialEq, Eq)]
/// struct Tenant(u64);
///
/// impl RedisKey for Tenant {
///     fn write_redis_key(&self, out: &mut Vec<u8>) {
///         out.extend_from_slice(b"tenant-");
///         self.0.write_redis_key(out);
///     }
/// }
///
/// let mut out = Vec::new();
/// Tenant(42).write_redis_key(&mut out);
/// assert_eq!(out, b"tenant-42");
/// ```
pub trait RedisKey {
    /// Appends this key's form to `out`. Distinct keys must write distinct bytes.
    fn write_redis_key(&self, out: &mut Vec<u8>);
}

impl RedisKey for () {
    fn write_redis_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"global");
    }
}

/// Writes `value` straight into `out` (formatting into a `String` first allocated and freed one
/// per decision).
fn write_display(out: &mut Vec<u8>, value: impl std::fmt::Display) {
    use std::io::Write as _;
    // Writing to a `Vec` cannot fail.
    let _ = write!(out, "{value}");
}

impl RedisKey for Ipv4Addr {
    fn write_redis_key(&self, out: &mut Vec<u8>) {
        write_display(out, self);
    }
}

impl RedisKey for Ipv6Addr {
    fn write_redis_key(&self, out: &mut Vec<u8>) {
        write_display(out, self);
    }
}

impl RedisKey for IpAddr {
    fn write_redis_key(&self, out: &mut Vec<u8>) {
        write_display(out, self);
    }
}

macro_rules! integer_keys {
    ($($t:ty),*) => {$(
        impl RedisKey for $t {
            /// The digits by `itoa`, on the stack: `Display` through `fmt::write` cost about
            /// 300 instructions and an allocation per key (`instructions -- redis`,
            /// `redis64/rampart_store`).
            fn write_redis_key(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(itoa::Buffer::new().format(*self).as_bytes());
            }
        }
    )*};
}
integer_keys!(
    u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize
);

impl RedisKey for String {
    fn write_redis_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
}

impl RedisKey for &'static str {
    fn write_redis_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
}

impl RedisKey for Box<str> {
    fn write_redis_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
}

impl RedisKey for Arc<str> {
    fn write_redis_key(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(self.as_bytes());
    }
}

/// Writes `part`, then escapes what it wrote: `\` becomes `\\` and `:` becomes `\:`, so the
/// first unescaped `:` after it marks where it ends. Parts without either byte (integers, IPv4
/// addresses, most names) are written as they are, with no extra work.
fn write_escaped(out: &mut Vec<u8>, part: &impl RedisKey) {
    let start = out.len();
    part.write_redis_key(out);
    let special = out[start..]
        .iter()
        .filter(|&&b| b == b':' || b == b'\\')
        .count();
    if special == 0 {
        return;
    }
    // Shift in place from the back: each special byte gains a `\` in front of it.
    let old_len = out.len();
    out.resize(old_len + special, 0);
    let mut write = out.len();
    for read in (start..old_len).rev() {
        let b = out[read];
        write -= 1;
        out[write] = b;
        if b == b':' || b == b'\\' {
            write -= 1;
            out[write] = b'\\';
        }
    }
    debug_assert_eq!(write, start);
}

/// Tuples write their parts joined by `:`, every part but the last with `\` and `:` escaped
/// (`\\`, `\:`): the first unescaped `:` ends the first part, so distinct tuples write distinct
/// bytes whatever their parts contain (`("a:b", "c")` is `a\:b:c`, `("a", "b:c")` is `a:b:c`).
/// The last part needs no escaping: it runs to the end.
impl<A: RedisKey, B: RedisKey> RedisKey for (A, B) {
    fn write_redis_key(&self, out: &mut Vec<u8>) {
        write_escaped(out, &self.0);
        out.push(b':');
        self.1.write_redis_key(out);
    }
}

impl<A: RedisKey, B: RedisKey, C: RedisKey> RedisKey for (A, B, C) {
    fn write_redis_key(&self, out: &mut Vec<u8>) {
        write_escaped(out, &self.0);
        out.push(b':');
        write_escaped(out, &self.1);
        out.push(b':');
        self.2.write_redis_key(out);
    }
}

/// Writes `h:` and the hex SHA-1 of `bytes`.
///
/// SHA-1 is used as a key derivation, not for integrity: what matters is that the value cannot be
/// recovered from the digest and that no one can craft a second value landing on a given client's
/// bucket (both still hold for SHA-1; its known weakness is colliding two values one chooses).
fn write_hashed(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(b"h:");
    let digest = sha1_smol::Sha1::from(bytes).digest().bytes();
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in digest {
        out.push(HEX[usize::from(b >> 4)]);
        out.push(HEX[usize::from(b & 0xf)]);
    }
}

#[cfg(feature = "http")]
impl RedisKey for http::HeaderValue {
    fn write_redis_key(&self, out: &mut Vec<u8>) {
        write_hashed(out, self.as_bytes());
    }
}

/// A key that goes to Redis only as a digest: for tokens, API keys, e-mail addresses and anything
/// else that should not be readable in Redis.
///
/// ```
/// use tower_rampart::backend::redis::{Hashed, RedisKey};
///
/// let mut out = Vec::new();
/// Hashed("secret-token".to_string()).write_redis_key(&mut out);
/// assert!(out.starts_with(b"h:"));
/// assert!(!out.windows(6).any(|w| w == b"secret"));
/// ```
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub struct Hashed<T>(pub T);

impl<T: AsRef<[u8]>> RedisKey for Hashed<T> {
    fn write_redis_key(&self, out: &mut Vec<u8>) {
        write_hashed(out, self.0.as_ref());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: impl RedisKey) -> String {
        let mut out = Vec::new();
        k.write_redis_key(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn keys_are_compact_and_secrets_hashed() {
        assert_eq!(key(()), "global");
        assert_eq!(key("203.0.113.9".parse::<IpAddr>().unwrap()), "203.0.113.9");
        assert_eq!(key("2001:db8::".parse::<IpAddr>().unwrap()), "2001:db8::");
        assert_eq!(key(42u64), "42");
        assert_eq!(key((7u32, "orders")), "7:orders");
        assert_eq!(
            key(("203.0.113.9".parse::<IpAddr>().unwrap(), "login")),
            "203.0.113.9:login"
        );
        assert_eq!(key((1u8, 2u16, 3u64)), "1:2:3");
        // SHA-1("abc"), the FIPS test vector.
        assert_eq!(
            key(Hashed("abc")),
            "h:a9993e364706816aba3e25717850c26c9cd0d89d"
        );
        #[cfg(feature = "http")]
        assert_eq!(
            key(http::HeaderValue::from_static("abc")),
            "h:a9993e364706816aba3e25717850c26c9cd0d89d"
        );
    }

    /// Review of #7: tuples whose parts contain `:` wrote the same bytes.
    #[test]
    fn tuples_whose_parts_contain_colons_do_not_collide() {
        assert_ne!(key(("a:b", "c")), key(("a", "b:c")));
        assert_eq!(key(("a:b", "c")), r"a\:b:c");
        assert_eq!(key(("a", "b:c")), "a:b:c");
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_ne!(key((v6("::1"), "2:x")), key((v6("::1:2"), "x")));
        assert_eq!(key((v6("::1"), "2:x")), r"\:\:1:2:x");
        assert_eq!(key((v6("::1:2"), "x")), r"\:\:1\:2:x");
        // Backslashes are escaped too, or `("a\\", ":b")` would meet `("a\\:", "b")`.
        assert_ne!(key(("a\\", ":b")), key(("a\\:", "b")));
        assert_eq!(key(("a\\", ":b")), r"a\\::b");
        assert_ne!(
            key(("a", "b:c", "d")),
            key(("a:b", "c", "d")),
            "three parts"
        );
        assert_ne!(key((("a", "b:c"), "d")), key((("a:b", "c"), "d")), "nested");
    }

    /// Reads a tuple key back: the escaped first part (unescaped) and the rest. Only for the
    /// property test, to show the encoding is reversible (hence injective).
    fn split_first(bytes: &[u8]) -> Option<(Vec<u8>, &[u8])> {
        let mut first = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => {
                    first.push(*bytes.get(i + 1)?);
                    i += 2;
                }
                b':' => return Some((first, &bytes[i + 1..])),
                b => {
                    first.push(b);
                    i += 1;
                }
            }
        }
        None
    }

    fn raw(k: impl RedisKey) -> Vec<u8> {
        let mut out = Vec::new();
        k.write_redis_key(&mut out);
        out
    }

    /// Every text of up to `n` bytes over `alphabet`.
    fn texts(alphabet: &[char], n: usize) -> Vec<String> {
        let mut all = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..n {
            last = last
                .iter()
                .flat_map(|t| alphabet.iter().map(move |c| format!("{t}{c}")))
                .collect();
            all.extend(last.iter().cloned());
        }
        all
    }

    /// Every key of a small universe, against every other: no two distinct keys write the same
    /// bytes.
    fn injective<K: RedisKey + Clone + std::fmt::Debug>(keys: impl IntoIterator<Item = K>) {
        let mut seen = std::collections::HashMap::new();
        for k in keys {
            if let Some(other) = seen.insert(raw(k.clone()), k.clone()) {
                panic!("{other:?} and {k:?} both write {:?}", key(k.clone()));
            }
        }
    }

    #[test]
    fn small_universes_of_tuples_write_distinct_bytes() {
        let parts = texts(&[':', '\\', '1', '2'], 3);
        let ips: Vec<IpAddr> = [
            "::", "::1", "::1:2", "::2", "1::", "1::2", "1:2::", "0.0.0.1",
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        injective(
            ips.iter()
                .flat_map(|ip| parts.iter().map(move |p| (*ip, p.clone()))),
        );
        injective(
            parts
                .iter()
                .flat_map(|a| parts.iter().map(move |b| (a.clone(), b.clone()))),
        );
        let short = texts(&[':', '\\', '1'], 2);
        injective(short.iter().flat_map(|a| {
            short.iter().flat_map({
                let short = &short;
                move |b| short.iter().map(move |c| (a.clone(), b.clone(), c.clone()))
            })
        }));
        injective(short.iter().flat_map(|a| {
            short.iter().flat_map({
                let short = &short;
                move |b| {
                    short
                        .iter()
                        .map(move |c| ((a.clone(), b.clone()), c.clone()))
                }
            })
        }));
    }

    use proptest::prelude::*;

    /// Short text over few letters, heavy in the bytes that matter (`:`, `\`), so that parts
    /// meet often: without the escaping, a few hundred cases find a collision.
    fn part() -> impl Strategy<Value = String> {
        proptest::string::string_regex(r"[:\\12]{0,3}").unwrap()
    }

    /// IPv6 addresses that differ by a trailing `:group` (`::1`, `::1:2`), and random ones.
    fn ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            proptest::sample::select(vec![
                "::", "::1", "::1:2", "::2", "1::", "1::2", "1:2::", "0.0.0.1"
            ])
            .prop_map(|s| s.parse::<IpAddr>().unwrap()),
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u16; 8]>().prop_map(IpAddr::from),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

        #[test]
        fn distinct_pairs_write_distinct_bytes(a in (part(), part()), b in (part(), part())) {
            prop_assert_eq!(a == b, raw(a.clone()) == raw(b.clone()));
            // And the first part can be read back: the encoding is reversible.
            let bytes = raw(a.clone());
            let (first, rest) = split_first(&bytes).unwrap();
            prop_assert_eq!(first, a.0.as_bytes());
            prop_assert_eq!(rest, a.1.as_bytes());
        }

        #[test]
        fn distinct_ip_pairs_write_distinct_bytes(a in (ip(), part()), b in (ip(), part())) {
            prop_assert_eq!(a == b, raw(a.clone()) == raw(b.clone()));
        }

        #[test]
        fn distinct_triples_write_distinct_bytes(
            a in (part(), part(), part()),
            b in (part(), part(), part()),
        ) {
            prop_assert_eq!(a == b, raw(a.clone()) == raw(b.clone()));
        }

        #[test]
        fn distinct_nested_tuples_write_distinct_bytes(
            a in ((part(), part()), part(), (ip(), 0u8..3)),
            b in ((part(), part()), part(), (ip(), 0u8..3)),
        ) {
            prop_assert_eq!(a == b, raw(a.clone()) == raw(b.clone()));
        }
    }
}
