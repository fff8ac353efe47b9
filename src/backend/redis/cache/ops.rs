//! What the store does: reads, fills, invalidations and locks, in Redis or, while Redis is down,
//! as the failure policy says.

use super::*;

impl<V: RedisCacheValue> RedisCacheStore<V> {
    /// The Redis key of `key`'s entry, for inspecting it with `redis-cli` (binary-safe bytes).
    pub fn redis_key(&self, key: &CacheKey) -> Vec<u8> {
        self.inner.place(key).entry()
    }

    /// The cache's name (the layer's).
    pub fn name(&self) -> &'static str {
        self.inner.name
    }

    /// How many slots the cache's keys are spread over.
    pub fn slots(&self) -> u16 {
        self.inner.slots
    }

    /// The local fallback, while Redis is down ([`FailurePolicy::Local`]).
    pub(super) fn fallback(&self) -> Option<&MemoryCacheStore<V>> {
        let local = self.local.as_deref()?;
        self.inner.local_in_use.store(true, Ordering::Release);
        Some(local)
    }

    /// A write Redis cannot take now: to the fallback, or the error.
    pub(super) fn down_write(
        &self,
        local: impl FnOnce(&MemoryCacheStore<V>) -> StoreOp<(), NeverFuture<()>>,
    ) -> StoreOp<(), RedisCacheFuture<()>> {
        match self.fallback() {
            Some(store) => StoreOp::Ready(ready(local(store))),
            None => StoreOp::Ready(Err(self.inner.conn.down_error())),
        }
    }

    /// Writes `entry` under `key` in one script, holding (and then releasing) the lock of
    /// `token`, or without a lock.
    pub(super) fn write(
        &self,
        key: &CacheKey,
        entry: CacheEntry<V>,
        token: Option<u64>,
    ) -> StoreOp<(), RedisCacheFuture<()>> {
        let inner = Arc::clone(&self.inner);
        let local = self.local.clone();
        let key = key.clone();
        StoreOp::Pending(RedisCacheFuture::new(async move {
            let (now, wall) = inner.clocks();
            let Some(px) = lifetime_ms(entry.timing(), now) else {
                // Expired already: nothing to keep, but the lock must still be released.
                return match token {
                    Some(token) => {
                        let lock = inner.place(&key).lock();
                        let (random, _) = token_parts(token);
                        inner
                            .conn
                            .eval(
                                unlock_script(),
                                &[&lock],
                                &[random.as_bytes()],
                                inner.timeout,
                            )
                            .await
                            .map(|_| ())
                    }
                    None => Ok(()),
                };
            };
            let bytes = V::to_redis(&entry, now, wall);
            let place = inner.place(&key);
            let names = inner.slot_names(place.id);
            let (random, seq) = match token {
                Some(t) => token_parts(t),
                None => (String::new(), String::new()),
            };
            let px = px.to_string();
            let budget = inner.slot_budget.to_string();
            let result = inner
                .conn
                .eval(
                    fill_script(),
                    &[
                        &place.entry(),
                        &place.lock(),
                        &names.seq,
                        &names.idx,
                        &names.exp,
                        &names.sizes,
                        &names.bytes,
                    ],
                    &[
                        random.as_bytes(),
                        seq.as_bytes(),
                        px.as_bytes(),
                        key.as_bytes(),
                        &bytes,
                        budget.as_bytes(),
                        &names.entry_head,
                    ],
                    inner.timeout,
                )
                .await;
            match result {
                Ok(Value::Int(1)) => {
                    inner.redis_answered(local.as_deref());
                    Ok(())
                }
                Ok(Value::Int(0)) => {
                    inner.redis_answered(local.as_deref());
                    tracing::debug!(cache = inner.name, key = %key.for_logs(), "not stored: invalidated while fetching (seen in redis)");
                    Ok(())
                }
                Ok(Value::Int(2)) => {
                    inner.redis_answered(local.as_deref());
                    // A flood of new keys, or a max_bytes too small for what this cache holds:
                    // worth a (throttled) warning, as entries it refuses are fetched again.
                    if let Some(suppressed) = inner.log.check() {
                        tracing::warn!(cache = inner.name, key = %key.for_logs(), bytes = bytes.len(), suppressed, "not stored: no room in its slot of the cache's max_bytes in redis, even after evicting the entries that expire soonest");
                    }
                    Ok(())
                }
                Ok(_) => Err(unexpected("fill")),
                Err(e) if is_outage(&e) && token.is_none() && local.is_some() => {
                    let local = local.expect("checked");
                    inner.local_in_use.store(true, Ordering::Release);
                    ready(local.put(key, entry))
                }
                Err(e) => Err(e),
            }
        }))
    }

    /// Invalidates the keys of every slot within a `ZRANGEBYLEX` range.
    pub(super) fn invalidate_range(
        &self,
        min: Vec<u8>,
        max: Vec<u8>,
    ) -> StoreOp<(), RedisCacheFuture<()>> {
        let inner = Arc::clone(&self.inner);
        StoreOp::Pending(RedisCacheFuture::new(async move {
            let slots = (0..inner.slots).map(|slot| {
                let inner = Arc::clone(&inner);
                let (min, max) = (min.clone(), max.clone());
                async move {
                    let names = inner.slot_names(slot);
                    let batch = RANGE_BATCH.to_string();
                    let mut first = true;
                    loop {
                        let bump: &[u8] = if first { b"1" } else { b"0" };
                        first = false;
                        let n = inner
                            .conn
                            .eval(
                                range_script(),
                                &[
                                    &names.seq,
                                    &names.idx,
                                    &names.exp,
                                    &names.sizes,
                                    &names.bytes,
                                ],
                                &[&min, &max, batch.as_bytes(), &names.entry_head, bump],
                                inner.timeout,
                            )
                            .await?;
                        match n {
                            Value::Int(n) if usize::try_from(n).is_ok_and(|n| n < RANGE_BATCH) => {
                                return Ok(());
                            }
                            Value::Int(_) => {}
                            _ => return Err(unexpected("invalidation")),
                        }
                    }
                }
            });
            join_all(slots.collect()).await
        }))
    }
}

pub(super) type NeverFuture<T> = std::future::Pending<Result<T, BackendError>>;

/// The result of an operation of the in-memory store (always ready).
pub(super) fn ready<T>(op: StoreOp<T, NeverFuture<T>>) -> Result<T, BackendError> {
    match op {
        StoreOp::Ready(r) => r,
        StoreOp::Pending(_) => unreachable!("the in-memory store answers at once"),
    }
}

/// Runs `futs` concurrently; the first error, once all are done.
async fn join_all<F>(futs: Vec<F>) -> Result<(), BackendError>
where
    F: Future<Output = Result<(), BackendError>> + Send,
{
    let mut futs: Vec<Option<Pin<Box<F>>>> = futs.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut error = None;
    std::future::poll_fn(move |cx| {
        let mut pending = false;
        for slot in &mut futs {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    Poll::Ready(r) => {
                        *slot = None;
                        if let Err(e) = r {
                            error.get_or_insert(e);
                        }
                    }
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(error.take().map_or(Ok(()), Err))
        }
    })
    .await
}

impl<V: RedisCacheValue> CacheStore<V> for RedisCacheStore<V> {
    type Future<T: Send + 'static> = RedisCacheFuture<T>;

    fn get(&self, key: &CacheKey) -> StoreOp<Found<V>, RedisCacheFuture<Found<V>>> {
        let inner = &self.inner;
        if !inner.conn.admit() {
            return match self.fallback() {
                Some(local) => StoreOp::Ready(ready(local.get(key))),
                None => StoreOp::Ready(Err(inner.conn.down_error())),
            };
        }
        // A remembered key's command, name and key are its memo's; another's are made here.
        let target = match self.memo.find(key) {
            Some(memoized) => Target::Remembered(memoized),
            None => {
                let name = inner.place(key).entry();
                Target::New {
                    cmd: get_command(&name),
                    name,
                    key: key.clone(),
                }
            }
        };
        let inner = Arc::clone(inner);
        let local = self.local.clone();
        let memo = Arc::clone(&self.memo);
        StoreOp::Pending(RedisCacheFuture::new(async move {
            // The instant the reply came is the hit's `now` (one clock read fewer).
            let (result, now) = inner.conn.query_timed(target.cmd(), inner.timeout).await;
            match result {
                Ok(Value::Nil) => {
                    inner.redis_answered(local.as_deref());
                    if let Target::New { key, name, .. } = target {
                        memo.remember(Memoized::new(key, name.into_boxed_slice(), None));
                    }
                    Ok(None)
                }
                Ok(Value::BulkString(bytes)) => {
                    inner.redis_answered(local.as_deref());
                    let wall = inner.wall();
                    let mapping = inner.mapping(now, wall);
                    if let Target::Remembered(m) = &target
                        && let Some(seen) = &m.seen
                        && *seen.bytes == *bytes
                    {
                        let unmoved =
                            |mapping: i64| seen.mapping.abs_diff(mapping) <= MAPPING_SLACK_NS;
                        // The two clocks are read one after the other: a thread preempted between
                        // the reads sees the mapping moved by as long as it waited. Read both
                        // again before decoding what is the same entry (on a loaded 2-vCPU
                        // machine, 4-7% of the `instructions` bench's `redis64/rampart_cache_hit`
                        // hits were decoded again this way, about 3,000 instructions each).
                        if unmoved(mapping) || {
                            let (now, wall) = inner.clocks();
                            unmoved(inner.mapping(now, wall))
                        } {
                            return Ok(Some(seen.entry.clone()));
                        }
                    }
                    let copy = (bytes.len() <= MEMO_MAX_BYTES).then(|| Box::from(&bytes[..]));
                    let found = inner.decode::<V>(target.key(), bytes, now, wall);
                    let (key, name) = target.into_parts();
                    memo.remember(Memoized::new(
                        key,
                        name,
                        found.clone().zip(copy).map(|(entry, bytes)| Seen {
                            bytes,
                            entry,
                            mapping,
                        }),
                    ));
                    Ok(found)
                }
                Ok(_) => {
                    inner.undecodable(target.key(), "not a string");
                    Ok(None)
                }
                // A foreign type at the key (WRONGTYPE): a miss like any undecodable entry.
                Err(e) if e.is_corrupt_data() => {
                    inner.undecodable(target.key(), "not a string");
                    Ok(None)
                }
                Err(e) if is_outage(&e) && local.is_some() => {
                    inner.local_in_use.store(true, Ordering::Release);
                    ready(local.expect("checked").get(target.key()))
                }
                Err(e) => Err(e),
            }
        }))
    }

    /// Stores `entry` without a fill lock (unconditionally). The layer stores through
    /// [`put_locked`](CacheStore::put_locked); this serves a store whose lock could not be asked
    /// for while Redis was down (the local fallback).
    fn put(&self, key: CacheKey, entry: CacheEntry<V>) -> StoreOp<(), RedisCacheFuture<()>> {
        if !self.inner.conn.admit() {
            return self.down_write(|local| local.put(key, entry));
        }
        self.write(&key, entry, None)
    }

    fn invalidate(&self, key: &CacheKey) -> StoreOp<(), RedisCacheFuture<()>> {
        if let Some(local) = &self.local {
            let _ = local.invalidate(key);
        }
        let inner = &self.inner;
        if !inner.conn.admit() {
            return StoreOp::Ready(Err(inner.conn.down_error()));
        }
        let place = inner.place(key);
        let names = inner.slot_names(place.id);
        let entry = place.entry();
        let inner = Arc::clone(inner);
        let key = key.clone();
        StoreOp::Pending(RedisCacheFuture::new(async move {
            inner
                .conn
                .eval(
                    invalidate_script(),
                    &[
                        &entry,
                        &names.seq,
                        &names.idx,
                        &names.exp,
                        &names.sizes,
                        &names.bytes,
                    ],
                    &[key.as_bytes()],
                    inner.timeout,
                )
                .await
                .map(|_| ())
        }))
    }

    fn invalidate_prefix(&self, prefix: &[u8]) -> StoreOp<(), RedisCacheFuture<()>> {
        if let Some(local) = &self.local {
            let _ = local.invalidate_prefix(prefix);
        }
        if !self.inner.conn.admit() {
            return StoreOp::Ready(Err(self.inner.conn.down_error()));
        }
        let (min, max) = prefix_range(prefix);
        self.invalidate_range(min, max)
    }

    fn clear(&self) -> StoreOp<(), RedisCacheFuture<()>> {
        if let Some(local) = &self.local {
            let _ = local.clear();
        }
        if !self.inner.conn.admit() {
            return StoreOp::Ready(Err(self.inner.conn.down_error()));
        }
        self.invalidate_range(b"-".to_vec(), b"+".to_vec())
    }

    /// Takes the key's fill lock in one script that, with [`LockMode::UnlessFresh`], first
    /// looks at the key's entry and answers it instead when it is fresh (by this replica's clock,
    /// as the layer judges it). When the entry the script answers does not decode, the lock is
    /// asked for again, whatever is stored (a third round trip, for corrupt entries only; not
    /// counted as undecodable again, the lookup before the lock has counted it).
    fn lock(
        &self,
        key: &CacheKey,
        hold: Duration,
        mode: LockMode,
    ) -> StoreOp<FillLock<V>, RedisCacheFuture<FillLock<V>>> {
        let inner = &self.inner;
        if !inner.conn.admit() {
            // With the local fallback, this process fills on its own (and stores in memory).
            return match self.fallback() {
                Some(local) => StoreOp::Ready(ready(local.lock(key, hold, mode))),
                None => StoreOp::Ready(Err(inner.conn.down_error())),
            };
        }
        let place = inner.place(key);
        let names = inner.slot_names(place.id);
        let lock = place.lock();
        let entry = place.entry();
        let random = inner.token();
        let hold_ms = u64::try_from(hold.as_millis()).unwrap_or(u64::MAX).max(1);
        let inner = Arc::clone(inner);
        let local = self.local.clone();
        let key = key.clone();
        StoreOp::Pending(RedisCacheFuture::new(async move {
            let (random_arg, hold_arg) = (random.to_string(), hold_ms.to_string());
            let mut check = mode == LockMode::UnlessFresh;
            loop {
                let fresh_after = if check {
                    let (now, wall) = inner.clocks();
                    to_unix_ms(now, now, wall).to_string()
                } else {
                    String::new()
                };
                let reply = inner
                    .conn
                    .eval(
                        lock_script(),
                        &[&lock, &names.seq, &entry],
                        &[
                            random_arg.as_bytes(),
                            hold_arg.as_bytes(),
                            fresh_after.as_bytes(),
                        ],
                        inner.timeout,
                    )
                    .await;
                let reply = match reply {
                    Ok(reply) => reply,
                    Err(e) if is_outage(&e) && local.is_some() => {
                        inner.local_in_use.store(true, Ordering::Release);
                        return ready(local.expect("checked").lock(&key, hold, mode));
                    }
                    Err(e) => return Err(e),
                };
                let Value::Array(mut parts) = reply else {
                    return Err(unexpected("lock"));
                };
                let fresh = match parts.len() {
                    5 if check => parts.pop(),
                    4 => None,
                    _ => return Err(unexpected("lock")),
                };
                let [taken, seq, secs, micros] = &parts[..] else {
                    return Err(unexpected("lock"));
                };
                let (Some(seq), Some(secs), Some(micros)) =
                    (bulk_u64(seq), bulk_u64(secs), bulk_u64(micros))
                else {
                    return Err(unexpected("lock"));
                };
                inner.learn_offset(secs, micros);
                match (taken, fresh) {
                    (Value::Int(1), None) => return Ok(FillLock::Acquired(token(random, seq))),
                    (Value::Int(0), None) => return Ok(FillLock::HeldElsewhere),
                    (Value::Int(2), Some(Value::BulkString(bytes))) => {
                        let (now, wall) = inner.clocks();
                        match V::from_redis(bytes, now, wall) {
                            Ok(entry) => return Ok(FillLock::Fresh(entry)),
                            // Not an entry to serve (the lookup before the lock counted it as
                            // undecodable): fill the key over it.
                            Err(e) => {
                                tracing::trace!(cache = inner.name, key = %key.for_logs(), reason = e.reason(), "the fill lock found an undecodable entry; taking the lock");
                                check = false;
                            }
                        }
                    }
                    _ => return Err(unexpected("lock")),
                }
            }
        }))
    }

    fn unlock(&self, key: &CacheKey, token: u64) -> StoreOp<(), RedisCacheFuture<()>> {
        let inner = &self.inner;
        if !inner.conn.admit() {
            // The lock lapses by itself.
            return StoreOp::Ready(Ok(()));
        }
        let lock = inner.place(key).lock();
        let (random, _) = token_parts(token);
        let inner = Arc::clone(inner);
        StoreOp::Pending(RedisCacheFuture::new(async move {
            inner
                .conn
                .eval(
                    unlock_script(),
                    &[&lock],
                    &[random.as_bytes()],
                    inner.timeout,
                )
                .await
                .map(|_| ())
        }))
    }

    fn put_locked(
        &self,
        key: &CacheKey,
        entry: &CacheEntry<V>,
        token: u64,
    ) -> Option<StoreOp<(), RedisCacheFuture<()>>> {
        if !self.inner.conn.admit() {
            return Some(StoreOp::Ready(Err(self.inner.conn.down_error())));
        }
        Some(self.write(key, entry.clone(), Some(token)))
    }
}
