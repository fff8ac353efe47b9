//! `Cache-Control` and `Age`: parsing the directives the cache acts on, writing ages.

use http::header::{self, HeaderMap, HeaderValue};

/// The `Cache-Control` directives the cache acts on.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Directives {
    pub(crate) no_store: bool,
    pub(crate) no_cache: bool,
    pub(crate) private: bool,
    pub(crate) public: bool,
    pub(crate) must_revalidate: bool,
    pub(crate) max_age: Option<u64>,
    pub(crate) s_maxage: Option<u64>,
    pub(crate) stale_while_revalidate: Option<u64>,
    pub(crate) stale_if_error: Option<u64>,
    /// Requests only: `min-fresh=N`, the least freshness left an answer must have.
    pub(crate) min_fresh: Option<u64>,
    /// Requests only: `only-if-cached`, answer from the cache or not at all.
    pub(crate) only_if_cached: bool,
}

impl Directives {
    /// Parses every `Cache-Control` field of `headers`. Unknown directives are ignored; a
    /// number that does not parse counts as 0 (the response is then treated as stale at once).
    pub(crate) fn parse(headers: &HeaderMap) -> Self {
        let mut d = Self::default();
        for value in headers.get_all(header::CACHE_CONTROL) {
            for item in split_list(value.as_bytes()) {
                let (name, arg) = match item.iter().position(|&b| b == b'=') {
                    Some(i) => (trim(&item[..i]), Some(unquote(trim(&item[i + 1..])))),
                    None => (item, None),
                };
                let seconds = || arg.map(parse_seconds).unwrap_or(0);
                let is = |s: &str| name.eq_ignore_ascii_case(s.as_bytes());
                if is("no-store") {
                    d.no_store = true;
                } else if is("no-cache") {
                    d.no_cache = true;
                } else if is("private") {
                    d.private = true;
                } else if is("public") {
                    d.public = true;
                } else if is("must-revalidate") || is("proxy-revalidate") {
                    d.must_revalidate = true;
                } else if is("max-age") {
                    d.max_age.get_or_insert_with(seconds);
                } else if is("s-maxage") {
                    d.s_maxage.get_or_insert_with(seconds);
                } else if is("stale-while-revalidate") {
                    d.stale_while_revalidate.get_or_insert_with(seconds);
                } else if is("stale-if-error") {
                    d.stale_if_error.get_or_insert_with(seconds);
                } else if is("min-fresh") {
                    d.min_fresh.get_or_insert_with(seconds);
                } else if is("only-if-cached") {
                    d.only_if_cached = true;
                }
            }
        }
        d
    }
}

/// Splits a comma-separated list, ignoring commas inside double quotes; items are trimmed and
/// empty ones skipped.
pub(super) fn split_list(bytes: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        loop {
            if rest.is_empty() {
                return None;
            }
            let mut quoted = false;
            let mut end = rest.len();
            for (i, &b) in rest.iter().enumerate() {
                match b {
                    b'"' => quoted = !quoted,
                    b',' if !quoted => {
                        end = i;
                        break;
                    }
                    _ => {}
                }
            }
            let item = trim(&rest[..end]);
            rest = if end < rest.len() {
                &rest[end + 1..]
            } else {
                &[]
            };
            if !item.is_empty() {
                return Some(item);
            }
        }
    })
}

fn trim(b: &[u8]) -> &[u8] {
    b.trim_ascii()
}

fn unquote(b: &[u8]) -> &[u8] {
    if b.len() >= 2 && b[0] == b'"' && b[b.len() - 1] == b'"' {
        &b[1..b.len() - 1]
    } else {
        b
    }
}

/// Delta-seconds; too large saturates, anything else that is not digits is 0.
fn parse_seconds(b: &[u8]) -> u64 {
    if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
        return 0;
    }
    b.iter().fold(0u64, |n, &d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    })
}

/// `age` values for the first five minutes, made once: cloning one costs a reference count
/// instead of formatting and allocating a new value on every hit.
pub(super) fn age_value(secs: u64) -> HeaderValue {
    const CACHED: u64 = 300;
    static AGES: std::sync::OnceLock<Box<[HeaderValue]>> = std::sync::OnceLock::new();
    if secs >= CACHED {
        return HeaderValue::from(secs);
    }
    let ages = AGES.get_or_init(|| (0..CACHED).map(HeaderValue::from).collect());
    ages[secs as usize].clone()
}
