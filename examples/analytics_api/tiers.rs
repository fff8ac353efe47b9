//! API-key tiers (#18): who a metric submission is counted as, and at which quota.
//!
//! - `API_KEYS`: comma-separated `key=tier` pairs (`free-2f6c0e1d9a8b7c65=free,pro-…=pro`). A key is
//!   16 to 256 visible ASCII characters (no `,`; it may contain `=`, the pair splits at the last one).
//! - `TIER_QUOTAS`: comma-separated `tier=N/Ss` (`free=10/60s,pro=1000/60s`): `N` requests per `S`
//!   seconds, admitted GCRA-style like the default limit (a burst of `N`, then one every `S/N` s).
//! - `RATE_LIMIT_SHADOW=1`: every limit decides and counts but admits
//!   (`rampart_rate_limit_shadow_rejected_total` in `/metrics`).
//!
//! A request whose `X-API-Key` is a known key is counted against that key, at its tier's quota.
//! Anything else (no header, an unknown key) is counted against the client's IP address at the
//! default limit, exactly as without `API_KEYS`: an unknown key creates no state of its own, so
//! inventing keys buys an attacker nothing.
//!
//! Keys are secrets. They are never logged, never put in metrics labels (the tier is), never
//! echoed by a configuration error, and never kept: the process holds only their SHA-1 digests, and
//! a request's key is looked up by its digest, so the time a lookup takes says nothing about the
//! stored keys (only about digests, which cannot be turned back into keys). With Redis a key's
//! state lives under `h:<digest>`, the form the crate's `Hashed` keys take.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Request};
use tower_rampart::backend::redis::RedisKey;
use tower_rampart::key::{ClientIp, ExtractKey, KeyError, KeyExtractor};
use tower_rampart::rate_limit::{MAX_PERIOD, Quota};

/// The request header that carries an API key.
pub(crate) const API_KEY_HEADER: HeaderName = HeaderName::from_static("x-api-key");

/// The shortest key accepted: shorter ones can be guessed.
const MIN_KEY_LEN: usize = 16;
/// The longest key accepted (and hashed when a request presents one).
const MAX_KEY_LEN: usize = 256;
/// At most this many tiers.
const MAX_TIERS: usize = 32;
/// The longest tier name (it becomes a `RateLimit-Policy` item and a metrics label).
const MAX_TIER_NAME: usize = 64;
/// The highest rate a tier may have, in requests per second: past it, a limit per key means nothing.
const MAX_RATE_PER_SEC: u64 = 1_000_000;

/// The SHA-1 digest of a key: what the process keeps and what Redis sees.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct KeyId([u8; 20]);

impl KeyId {
    fn of(key: &[u8]) -> Self {
        Self(sha1_smol::Sha1::from(key).digest().bytes())
    }

    /// Appends the first `bytes` bytes of the digest in lowercase hex, straight into `out` (the
    /// Redis key is written on every decision for a key).
    fn write_hex(&self, bytes: usize, out: &mut Vec<u8>) {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        for b in &self.0[..bytes] {
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        }
    }
}

impl fmt::Debug for KeyId {
    /// The digest's first 4 bytes: enough to tell keys apart in a debug print, and not the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut hex = Vec::with_capacity(8);
        self.write_hex(4, &mut hex);
        write!(f, "KeyId({}…)", String::from_utf8_lossy(&hex))
    }
}

/// Who a request is counted as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Client {
    /// A known API key, and its tier (an index into [`Tiers::names`]).
    Key { id: KeyId, tier: u8 },
    /// Anyone else: the client's IP address (see `ClientIp`).
    Ip(IpAddr),
}

impl RedisKey for Client {
    /// An IP address is written as before tiers existed (`203.0.113.9`), so that its state carries
    /// over; a key as `h:` and its digest in hex, as the crate's `Hashed` writes it (never the key).
    /// The two cannot meet: no IP address starts with `h`.
    fn write_redis_key(&self, out: &mut Vec<u8>) {
        match self {
            Self::Ip(ip) => ip.write_redis_key(out),
            Self::Key { id, .. } => {
                out.extend_from_slice(b"h:");
                id.write_hex(id.0.len(), out);
            }
        }
    }
}

/// One tier: its name and quota.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Tier {
    pub(crate) name: &'static str,
    pub(crate) quota: Quota,
}

/// `API_KEYS`, `TIER_QUOTAS` and `RATE_LIMIT_SHADOW`, checked.
#[derive(Clone, Default)]
pub(crate) struct Tiers {
    tiers: Vec<Tier>,
    keys: Arc<HashMap<KeyId, u8>>,
    shadow: bool,
}

impl fmt::Debug for Tiers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tiers")
            .field("tiers", &self.tiers)
            .field("keys", &self.keys.len())
            .field("shadow", &self.shadow)
            .finish()
    }
}

/// A tier variable that could not be used: the variable, and what is wrong with which item. It
/// never holds a key.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TierError {
    var: &'static str,
    problem: String,
}

impl fmt::Display for TierError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.var, self.problem)
    }
}

impl std::error::Error for TierError {}

fn err(var: &'static str, problem: impl Into<String>) -> TierError {
    TierError {
        var,
        problem: problem.into(),
    }
}

impl Tiers {
    /// Reads the three variables through `get`; unset or empty ones mean no tiers, no keys, no
    /// shadow mode.
    pub(crate) fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, TierError> {
        let nonempty = |var| get(var).filter(|v| !v.trim().is_empty());
        let tiers = match nonempty("TIER_QUOTAS") {
            Some(v) => parse_tiers(&v)?,
            None => Vec::new(),
        };
        let keys = match nonempty("API_KEYS") {
            Some(v) => parse_keys(&v, &tiers)?,
            None => HashMap::new(),
        };
        let shadow = match get("RATE_LIMIT_SHADOW").as_deref().map(str::trim) {
            None | Some("" | "0" | "false") => false,
            Some("1" | "true") => true,
            Some(other) => {
                return Err(err(
                    "RATE_LIMIT_SHADOW",
                    format!("{other:?}: expected 1 (shadow mode) or 0"),
                ));
            }
        };
        Ok(Self {
            tiers,
            keys: Arc::new(keys),
            shadow,
        })
    }

    /// Reads the process environment.
    #[allow(dead_code, reason = "the tests read a map")]
    pub(crate) fn from_env() -> Result<Self, TierError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// The tiers, in `TIER_QUOTAS` order.
    pub(crate) fn tiers(&self) -> &[Tier] {
        &self.tiers
    }

    /// How many keys `API_KEYS` lists.
    pub(crate) fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Whether every limit runs in shadow mode.
    pub(crate) fn shadow(&self) -> bool {
        self.shadow
    }

    /// The tier a client is limited at: its key's, or none (the default limit) for an IP.
    pub(crate) fn tier_of(&self, client: &Client) -> Option<&'static str> {
        match client {
            Client::Key { tier, .. } => self.tiers.get(usize::from(*tier)).map(|t| t.name),
            Client::Ip(_) => None,
        }
    }

    /// The key extractor: a known API key, or the client's IP address by `ip`.
    pub(crate) fn extractor(&self, ip: ClientIp) -> ApiKeyOrIp {
        ApiKeyOrIp {
            keys: Arc::clone(&self.keys),
            ip,
        }
    }
}

/// `TIER_QUOTAS`.
fn parse_tiers(value: &str) -> Result<Vec<Tier>, TierError> {
    const VAR: &str = "TIER_QUOTAS";
    let mut tiers: Vec<Tier> = Vec::new();
    for (i, item) in value.split(',').map(str::trim).enumerate() {
        let n = i + 1;
        if item.is_empty() {
            return Err(err(
                VAR,
                format!(
                    "item {n} is empty (a comma too many?); expected tier=N/Ss, e.g. free=10/60s"
                ),
            ));
        }
        let bad = |why: String| err(VAR, format!("item {n} {item:?}: {why}"));
        let Some((name, quota)) = item.split_once('=') else {
            return Err(bad("expected tier=N/Ss, e.g. free=10/60s".into()));
        };
        let name = name.trim();
        check_tier_name(name).map_err(|why| bad(why.into()))?;
        if tiers.iter().any(|t| t.name == name) {
            return Err(bad(format!("tier {name:?} is defined twice")));
        }
        let quota = parse_quota(quota.trim()).map_err(bad)?;
        if tiers.len() == MAX_TIERS {
            return Err(bad(format!("more than {MAX_TIERS} tiers")));
        }
        tiers.push(Tier {
            // Once per tier at start-up: the limiter's names are `'static`.
            name: Box::leak(name.to_owned().into_boxed_str()),
            quota,
        });
    }
    Ok(tiers)
}

fn check_tier_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("the tier name is empty");
    }
    if name.len() > MAX_TIER_NAME {
        return Err("the tier name is longer than 64 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
    {
        return Err(
            "a tier name has only letters, digits and -_.: (it is sent in RateLimit-Policy)",
        );
    }
    Ok(())
}

/// `N/Ss`: at least one request, a period from 1 s to 366 days, at most a million a second.
fn parse_quota(text: &str) -> Result<Quota, String> {
    const FORM: &str = "expected N/Ss (N requests per S seconds), e.g. 10/60s";
    let (n, s) = text.split_once('/').ok_or(FORM)?;
    let secs = s.trim().strip_suffix('s').ok_or(FORM)?;
    let n: u32 = n.trim().parse().map_err(|_| FORM)?;
    let secs: u64 = secs.trim().parse().map_err(|_| FORM)?;
    if n == 0 {
        return Err("the limit must be at least 1 request".into());
    }
    if secs == 0 {
        return Err("the window must be at least 1 second".into());
    }
    if secs > MAX_PERIOD.as_secs() {
        return Err(format!(
            "the window must be at most {} s (366 days)",
            MAX_PERIOD.as_secs()
        ));
    }
    if u64::from(n) > MAX_RATE_PER_SEC.saturating_mul(secs) {
        return Err(format!(
            "more than {MAX_RATE_PER_SEC} requests a second is no limit at all"
        ));
    }
    Ok(Quota::with_period(n, Duration::from_secs(secs)))
}

/// `API_KEYS`, against the tiers `TIER_QUOTAS` defines. Messages name items by position and tier,
/// never by key.
fn parse_keys(value: &str, tiers: &[Tier]) -> Result<HashMap<KeyId, u8>, TierError> {
    const VAR: &str = "API_KEYS";
    let mut keys: HashMap<KeyId, (u8, usize)> = HashMap::new();
    for (i, item) in value.split(',').map(str::trim).enumerate() {
        let n = i + 1;
        if item.is_empty() {
            return Err(err(
                VAR,
                format!("item {n} is empty (a comma too many?); expected key=tier"),
            ));
        }
        let Some((key, tier)) = item.rsplit_once('=') else {
            return Err(err(
                VAR,
                format!("item {n} (key hidden) has no tier; expected key=tier"),
            ));
        };
        let (key, tier) = (key.trim(), tier.trim());
        let bad = |why: String| err(VAR, format!("item {n} (key hidden, tier {tier:?}): {why}"));
        if key.is_empty() {
            return Err(bad("the key is empty".into()));
        }
        if !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad(
                "a key has only visible ASCII characters (it is sent in a header)".into(),
            ));
        }
        if key.len() < MIN_KEY_LEN || key.len() > MAX_KEY_LEN {
            return Err(bad(format!(
                "a key has {MIN_KEY_LEN} to {MAX_KEY_LEN} characters (this one {}); make one with \
                 `openssl rand -hex 16`",
                key.len()
            )));
        }
        let Some(index) = tiers.iter().position(|t| t.name == tier) else {
            let known: Vec<&str> = tiers.iter().map(|t| t.name).collect();
            return Err(bad(if known.is_empty() {
                "unknown tier: TIER_QUOTAS defines none".into()
            } else {
                format!("unknown tier: TIER_QUOTAS defines {}", known.join(", "))
            }));
        };
        let index = u8::try_from(index).expect("at most MAX_TIERS tiers");
        if let Some((_, first)) = keys.insert(KeyId::of(key.as_bytes()), (index, n)) {
            return Err(err(
                VAR,
                format!("items {first} and {n} list the same key (key hidden)"),
            ));
        }
    }
    Ok(keys.into_iter().map(|(id, (tier, _))| (id, tier)).collect())
}

/// Keys a request by its API key when `API_KEYS` lists it, by the client's IP address otherwise.
#[derive(Clone)]
pub(crate) struct ApiKeyOrIp {
    keys: Arc<HashMap<KeyId, u8>>,
    ip: ClientIp,
}

impl fmt::Debug for ApiKeyOrIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeyOrIp")
            .field("keys", &self.keys.len())
            .field("ip", &self.ip)
            .finish()
    }
}

impl ApiKeyOrIp {
    /// The known key `req` presents, with its tier.
    fn known_key<B>(&self, req: &Request<B>) -> Option<Client> {
        if self.keys.is_empty() {
            return None;
        }
        let presented = req.headers().get(API_KEY_HEADER)?.as_bytes();
        if presented.len() > MAX_KEY_LEN {
            return None;
        }
        let id = KeyId::of(presented);
        let tier = *self.keys.get(&id)?;
        Some(Client::Key { id, tier })
    }
}

impl KeyExtractor for ApiKeyOrIp {
    type Key = Client;

    fn validate(&self) -> Result<(), tower_rampart::ConfigError> {
        self.ip.validate()
    }

    fn covers_header(&self, name: &str) -> bool {
        name == API_KEY_HEADER.as_str() || self.ip.covers_header(name)
    }
}

impl<B> ExtractKey<Request<B>> for ApiKeyOrIp {
    fn extract(&self, req: &Request<B>) -> Result<Client, KeyError> {
        if let Some(known) = self.known_key(req) {
            return Ok(known);
        }
        self.ip.extract(req).map(Client::Ip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiers(vars: &[(&str, &str)]) -> Result<Tiers, String> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Tiers::from_lookup(|k| vars.get(k).cloned()).map_err(|e| e.to_string())
    }

    const FREE: &str = "free-0123456789abcdef";
    const PRO: &str = "pro-0123456789abcdef==";

    #[test]
    fn tiers_and_keys_are_read() {
        let t = tiers(&[
            ("TIER_QUOTAS", " free=10/60s , pro=1000/60s"),
            ("API_KEYS", &format!("{FREE}=free, {PRO}=pro")),
            ("RATE_LIMIT_SHADOW", "1"),
        ])
        .unwrap();
        assert_eq!(
            t.tiers(),
            [
                Tier {
                    name: "free",
                    quota: Quota::per_minute(10)
                },
                Tier {
                    name: "pro",
                    quota: Quota::per_minute(1000)
                }
            ]
        );
        assert_eq!(t.key_count(), 2);
        assert!(t.shadow());
        // The key's `==` (base64 padding) is part of the key: the pair splits at the last `=`.
        let pro = Client::Key {
            id: KeyId::of(PRO.as_bytes()),
            tier: 1,
        };
        assert_eq!(t.tier_of(&pro), Some("pro"));
        assert_eq!(t.tier_of(&Client::Ip([127, 0, 0, 1].into())), None);
        // Nothing set: no tiers, no keys, no shadow.
        let none = tiers(&[("API_KEYS", ""), ("TIER_QUOTAS", " ")]).unwrap();
        assert_eq!(
            (none.tiers().len(), none.key_count(), none.shadow()),
            (0, 0, false)
        );
        // Tiers without keys are allowed (keys may come later).
        assert_eq!(
            tiers(&[("TIER_QUOTAS", "free=1/1s")])
                .unwrap()
                .tiers()
                .len(),
            1
        );
    }

    #[test]
    fn bad_quotas_are_refused_naming_the_item() {
        let e = |v: &str| tiers(&[("TIER_QUOTAS", v)]).unwrap_err();
        assert_eq!(
            e("free=0/60s"),
            r#"invalid TIER_QUOTAS: item 1 "free=0/60s": the limit must be at least 1 request"#
        );
        assert_eq!(
            e("free=10/60s,pro=10/0s"),
            r#"invalid TIER_QUOTAS: item 2 "pro=10/0s": the window must be at least 1 second"#
        );
        assert_eq!(
            e("free=10/99999999s"),
            r#"invalid TIER_QUOTAS: item 1 "free=10/99999999s": the window must be at most 31622400 s (366 days)"#
        );
        assert_eq!(
            e("free=4000000000/1s"),
            r#"invalid TIER_QUOTAS: item 1 "free=4000000000/1s": more than 1000000 requests a second is no limit at all"#
        );
        for form in [
            "free=10/60",
            "free=10",
            "free=ten/60s",
            "free=-1/60s",
            "free=99999999999/60s",
            "free=10/1m",
        ] {
            assert_eq!(
                e(form),
                format!(
                    "invalid TIER_QUOTAS: item 1 {form:?}: expected N/Ss (N requests per S seconds), e.g. 10/60s"
                )
            );
        }
        assert_eq!(
            e("free"),
            r#"invalid TIER_QUOTAS: item 1 "free": expected tier=N/Ss, e.g. free=10/60s"#
        );
        assert_eq!(
            e("free=10/60s,,pro=1/1s"),
            "invalid TIER_QUOTAS: item 2 is empty (a comma too many?); expected tier=N/Ss, e.g. free=10/60s"
        );
        assert_eq!(
            e("free=10/60s,"),
            "invalid TIER_QUOTAS: item 2 is empty (a comma too many?); expected tier=N/Ss, e.g. free=10/60s"
        );
        assert_eq!(
            e("free=10/60s,free=20/60s"),
            r#"invalid TIER_QUOTAS: item 2 "free=20/60s": tier "free" is defined twice"#
        );
        assert_eq!(
            e("fr ee=10/60s"),
            r#"invalid TIER_QUOTAS: item 1 "fr ee=10/60s": a tier name has only letters, digits and -_.: (it is sent in RateLimit-Policy)"#
        );
        assert_eq!(
            e("=10/60s"),
            r#"invalid TIER_QUOTAS: item 1 "=10/60s": the tier name is empty"#
        );
        let many: Vec<String> = (0..=MAX_TIERS).map(|i| format!("t{i}=1/1s")).collect();
        assert_eq!(
            e(&many.join(",")),
            r#"invalid TIER_QUOTAS: item 33 "t32=1/1s": more than 32 tiers"#
        );
    }

    #[test]
    fn bad_keys_are_refused_without_showing_the_key() {
        let e = |v: &str| {
            let msg =
                tiers(&[("TIER_QUOTAS", "free=10/60s,pro=1000/60s"), ("API_KEYS", v)]).unwrap_err();
            for secret in [FREE, PRO, "short-key"] {
                assert!(!msg.contains(secret), "the message shows a key: {msg}");
            }
            msg
        };
        assert_eq!(
            e(&format!("{FREE}=gold")),
            r#"invalid API_KEYS: item 1 (key hidden, tier "gold"): unknown tier: TIER_QUOTAS defines free, pro"#
        );
        assert_eq!(
            tiers(&[("API_KEYS", &format!("{FREE}=free"))]).unwrap_err(),
            r#"invalid API_KEYS: item 1 (key hidden, tier "free"): unknown tier: TIER_QUOTAS defines none"#
        );
        assert_eq!(
            e(&format!("{FREE}=free,{PRO}=pro,{FREE}=pro")),
            "invalid API_KEYS: items 1 and 3 list the same key (key hidden)"
        );
        assert_eq!(
            e(&format!("{FREE}=free,,{PRO}=pro")),
            "invalid API_KEYS: item 2 is empty (a comma too many?); expected key=tier"
        );
        assert_eq!(
            e(&format!("{FREE}=free,")),
            "invalid API_KEYS: item 2 is empty (a comma too many?); expected key=tier"
        );
        assert_eq!(
            e(FREE),
            "invalid API_KEYS: item 1 (key hidden) has no tier; expected key=tier"
        );
        assert_eq!(
            e("=free"),
            r#"invalid API_KEYS: item 1 (key hidden, tier "free"): the key is empty"#
        );
        assert_eq!(
            e("short-key=free"),
            r#"invalid API_KEYS: item 1 (key hidden, tier "free"): a key has 16 to 256 characters (this one 9); make one with `openssl rand -hex 16`"#
        );
        assert_eq!(
            e("free key 0123456789=free"),
            r#"invalid API_KEYS: item 1 (key hidden, tier "free"): a key has only visible ASCII characters (it is sent in a header)"#
        );
    }

    #[test]
    fn shadow_mode_takes_one_or_zero() {
        for (v, shadow) in [
            ("1", true),
            ("true", true),
            ("0", false),
            ("false", false),
            ("", false),
        ] {
            assert_eq!(tiers(&[("RATE_LIMIT_SHADOW", v)]).unwrap().shadow(), shadow);
        }
        assert_eq!(
            tiers(&[("RATE_LIMIT_SHADOW", "yes")]).unwrap_err(),
            r#"invalid RATE_LIMIT_SHADOW: "yes": expected 1 (shadow mode) or 0"#
        );
    }

    fn request(key: Option<&str>, forwarded_for: &str) -> Request<()> {
        let mut req = Request::builder().header("x-forwarded-for", forwarded_for);
        if let Some(key) = key {
            req = req.header("x-api-key", key);
        }
        let mut req = req.body(()).unwrap();
        req.extensions_mut()
            .insert(std::net::SocketAddr::from(([127, 0, 0, 1], 40000)));
        req
    }

    #[test]
    fn a_known_key_is_the_client_and_anything_else_is_the_ip() {
        let t = tiers(&[
            ("TIER_QUOTAS", "free=10/60s,pro=1000/60s"),
            ("API_KEYS", &format!("{FREE}=free,{PRO}=pro")),
        ])
        .unwrap();
        let x = t.extractor(ClientIp::new().trusted_proxies(["127.0.0.1"]));
        let ip: IpAddr = [203, 0, 113, 9].into();
        let free = x.extract(&request(Some(FREE), "203.0.113.9")).unwrap();
        assert_eq!(t.tier_of(&free), Some("free"));
        assert!(matches!(free, Client::Key { tier: 0, .. }));
        let pro = x.extract(&request(Some(PRO), "203.0.113.9")).unwrap();
        assert_eq!(t.tier_of(&pro), Some("pro"));
        // The same key from another address is the same client.
        assert_eq!(
            x.extract(&request(Some(FREE), "198.51.100.7")).unwrap(),
            free
        );
        // An unknown key, a key one character off, an overlong one, none: the client's address.
        let long = "k".repeat(MAX_KEY_LEN + 1);
        for key in [
            Some("unknown-0123456789abcdef"),
            Some(&FREE[1..]),
            Some(&long),
            None,
        ] {
            assert_eq!(
                x.extract(&request(key, "203.0.113.9")).unwrap(),
                Client::Ip(ip)
            );
        }
        // Without API_KEYS the header is not even read.
        let plain = tiers(&[])
            .unwrap()
            .extractor(ClientIp::new().trusted_proxies(["127.0.0.1"]));
        assert_eq!(
            plain.extract(&request(Some(FREE), "203.0.113.9")).unwrap(),
            Client::Ip(ip)
        );
    }

    #[test]
    fn redis_sees_addresses_as_before_and_keys_only_as_digests() {
        let form = |c: Client| {
            let mut out = Vec::new();
            c.write_redis_key(&mut out);
            String::from_utf8(out).unwrap()
        };
        let ip: IpAddr = [203, 0, 113, 9].into();
        let mut before = Vec::new();
        ip.write_redis_key(&mut before);
        assert_eq!(form(Client::Ip(ip)).as_bytes(), before);
        let key = form(Client::Key {
            id: KeyId::of(FREE.as_bytes()),
            tier: 0,
        });
        let mut hashed = Vec::new();
        tower_rampart::backend::redis::Hashed(FREE).write_redis_key(&mut hashed);
        assert_eq!(key.as_bytes(), hashed, "the crate's own form for secrets");
        assert!(!key.contains("0123456789abcdef"));
        // Debug prints show neither.
        let debug = format!(
            "{:?}",
            Client::Key {
                id: KeyId::of(FREE.as_bytes()),
                tier: 0
            }
        );
        assert!(
            !debug.contains(FREE) && debug.starts_with("Key { id: KeyId("),
            "{debug}"
        );
    }
}
