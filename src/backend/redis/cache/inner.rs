//! The state every clone of a store shares: the connection, names and settings, and the helpers
//! that read Redis's answers.

use super::*;

pub(super) struct Inner {
    pub(super) conn: Arc<Conn>,
    pub(super) name: &'static str,
    /// `<prefix>:cache:<name>:{<name>:`: a slot's names follow it with `<slot>}:`.
    pub(super) head: Box<[u8]>,
    /// Each slot's `<head><slot>}:`, made once.
    pub(super) slot_heads: Box<[Box<[u8]>]>,
    pub(super) slots: u16,
    /// The most bytes one slot holds (the layer's `max_bytes` over the slots), as its records
    /// count them.
    pub(super) slot_budget: u64,
    pub(super) timeout: Duration,
    pub(super) clock: StoreClock,
    /// Redis `TIME` minus the wall clock, in milliseconds, as last seen (0 until seen).
    pub(super) offset_ms: AtomicI64,
    /// The origin of [`mapping`](Self::mapping)'s tokio clock.
    pub(super) base: Instant,
    /// Whether the local fallback has been used since Redis last answered.
    pub(super) local_in_use: AtomicBool,
    /// Feeds token randomness.
    pub(super) tokens: AtomicU64,
    pub(super) token_seed: foldhash::fast::RandomState,
    pub(super) log: LogThrottle,
}

impl Inner {
    pub(super) fn slot_of(&self, digest: &[u8; 20]) -> u16 {
        u16::from_be_bytes([digest[0], digest[1]]) % self.slots
    }

    pub(super) fn place(&self, key: &CacheKey) -> Place<'_> {
        let digest = sha1_smol::Sha1::from(key.as_bytes()).digest().bytes();
        let id = self.slot_of(&digest);
        Place {
            id,
            slot: &self.slot_heads[usize::from(id)],
            hex: hex(&digest),
        }
    }

    pub(super) fn slot_names(&self, slot: u16) -> SlotNames {
        let head = &self.slot_heads[usize::from(slot)];
        let with = |tail: &[u8]| [&head[..], tail].concat();
        SlotNames {
            seq: with(b"seq"),
            idx: with(b"idx"),
            exp: with(b"exp"),
            sizes: with(b"sz"),
            bytes: with(b"bytes"),
            entry_head: with(b"e:"),
        }
    }

    /// One reading of tokio's clock and of the wall clock the entries' times are written in.
    pub(super) fn clocks(&self) -> (Instant, SystemTime) {
        (Instant::now(), self.wall())
    }

    /// The wall clock the entries' times are written in: this process's, corrected by the offset
    /// to Redis's `TIME`, or the caller's clock.
    pub(super) fn wall(&self) -> SystemTime {
        match &self.clock {
            StoreClock::Redis(_) => {
                let offset = self.offset_ms.load(Ordering::Relaxed);
                let system = SystemTime::now();
                if offset >= 0 {
                    system + Duration::from_millis(offset.unsigned_abs())
                } else {
                    system - Duration::from_millis(offset.unsigned_abs())
                }
            }
            // A caller's clock (tests, simulations): its nanoseconds from a fixed epoch, so that
            // replicas given clones of one clock agree.
            StoreClock::Custom(_) => {
                UNIX_EPOCH
                    + Duration::from_secs(CUSTOM_EPOCH_SECS)
                    + Duration::from_nanos(self.clock.now())
            }
        }
    }

    /// The wall clock minus tokio's (from [`base`](Self::base)), in nanoseconds, for one reading
    /// of both.
    ///
    /// In nanoseconds, compared with a slack ([`MAPPING_SLACK_NS`]): it was in whole
    /// milliseconds, each clock truncated on its own, and two readings of an unchanged mapping
    /// could differ by 2 when its fraction of a millisecond sat near a whole one, so that a hot
    /// key's hits decoded their entry again now and then (115 of 3,000 hits in one run of the
    /// `instructions` bench's `redis64/rampart_cache_hit` row, about 130 instructions per hit on
    /// average). No 128-bit division either.
    pub(super) fn mapping(&self, now: Instant, wall: SystemTime) -> i64 {
        let wall = wall.duration_since(UNIX_EPOCH).map_or(0, nanos);
        let since_base = crate::clock::nanos_between(self.base.into_std(), now.into_std());
        wall.saturating_sub(i64::try_from(since_base).unwrap_or(i64::MAX))
    }

    /// Learns the offset of Redis's clock from a reply carrying its `TIME`.
    pub(super) fn learn_offset(&self, secs: u64, micros: u64) {
        let redis_ms = i128::from(secs) * 1000 + i128::from(micros / 1000);
        let Ok(local) = SystemTime::now().duration_since(UNIX_EPOCH) else {
            return;
        };
        let offset = redis_ms - local.as_millis() as i128;
        if let Ok(offset) = i64::try_from(offset) {
            self.offset_ms.store(offset, Ordering::Relaxed);
        }
    }

    /// A fresh random part for a lock token.
    pub(super) fn token(&self) -> u32 {
        use std::hash::BuildHasher;
        let n = self.tokens.fetch_add(1, Ordering::Relaxed);
        (self.token_seed.hash_one(n) >> 32) as u32
    }

    /// Redis answered: if the local fallback was used while it did not, forget what it holds
    /// (it may be stale next time Redis goes away).
    pub(super) fn redis_answered<V: Send + Sync + 'static>(
        &self,
        local: Option<&MemoryCacheStore<V>>,
    ) {
        if let Some(local) = local
            && self.local_in_use.load(Ordering::Relaxed)
            && self.local_in_use.swap(false, Ordering::AcqRel)
        {
            tracing::info!(
                cache = self.name,
                "redis answers again; dropping the entries cached in memory meanwhile"
            );
            let _ = local.clear();
        }
    }

    /// Bytes at a key that are not an entry: a miss, counted and reported.
    #[cold]
    pub(super) fn undecodable(&self, key: &CacheKey, reason: &'static str) {
        if let Some(suppressed) = self.log.check() {
            tracing::warn!(cache = self.name, key = %key.for_logs(), reason, suppressed, "undecodable cache entry in redis; treating it as a miss");
        }
        #[cfg(feature = "metrics")]
        crate::metrics::counter(&crate::metrics::key(
            "rampart_cache_undecodable_total",
            self.name,
            &[("reason", reason)],
        ))
        .increment(1);
    }

    pub(super) fn decode<V: RedisCacheValue>(
        &self,
        key: &CacheKey,
        bytes: Vec<u8>,
        now: Instant,
        wall: SystemTime,
    ) -> Found<V> {
        match V::from_redis(bytes, now, wall) {
            Ok(entry) => Some(entry),
            Err(e) => {
                self.undecodable(key, e.reason());
                None
            }
        }
    }
}

/// A duration in nanoseconds, saturating (at about 292 years).
fn nanos(d: Duration) -> i64 {
    i64::try_from(d.as_secs())
        .unwrap_or(i64::MAX)
        .saturating_mul(1_000_000_000)
        .saturating_add(i64::from(d.subsec_nanos()))
}

/// How far the wall clock may have moved against tokio's since an entry was decoded for its
/// decoding (whose times are `Instant`s made from wall times) to be reused: 1 ms, the resolution
/// of the entries' times.
pub(super) const MAPPING_SLACK_NS: u64 = 1_000_000;

pub(super) fn bulk_u64(v: &Value) -> Option<u64> {
    match v {
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        Value::Int(n) => u64::try_from(*n).ok(),
        _ => None,
    }
}

pub(super) fn unexpected(what: &str) -> BackendError {
    BackendError::with_kind(
        ErrorKind::Other,
        format!("unexpected reply from the cache's {what} script"),
        None,
    )
}

/// Whether an error means Redis could not be reached (rather than, say, a script error).
pub(super) fn is_outage(e: &BackendError) -> bool {
    e.is_unreachable() || e.is_timeout()
}

/// The hard expiry of an entry in milliseconds from now, at least 1; `None` if it has passed.
pub(super) fn lifetime_ms(timing: &Timing, now: Instant) -> Option<u64> {
    let left = crate::clock::nanos_between(now.into_std(), timing.expires_at().into_std());
    if left == 0 {
        return None;
    }
    Some((left / 1_000_000).max(1))
}
