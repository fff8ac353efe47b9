//! Reading the rate limit scripts' replies: the single form's and the set form's (see
//! `limit_set.lua`), as the in-memory store's decisions; repairs the scripts report are logged and
//! counted here.

use std::hash::Hash;

use redis::Value;

use super::Inner;
#[cfg(feature = "metrics")]
use super::Meters;
use crate::backend::redis::RedisKey;
use crate::backend::{BackendError, ErrorKind};
use crate::rate_limit::quota::Algorithm;
use crate::rate_limit::{Decision, LimitSet, SetLimit};

impl<K: Hash + Eq + Clone + RedisKey + Send + Sync + 'static> Inner<K> {
    /// Reads a decision or lease script's answer, `[n0, n1, n2, repaired]` (the connection took
    /// the server's time off the end): three counts, and what the script repaired at the key,
    /// logged and counted here (the decision scripts leave an empty one out: `[n0, n1, n2]`).
    /// `None` for any other shape. One reader for the exact and the leased store, which share the
    /// scripts' conventions.
    pub(in crate::backend::redis) fn read_reply(
        &self,
        value: &Value,
        redis_key: &[u8],
    ) -> Option<[u64; 3]> {
        let Value::Array(items) = value else {
            return None;
        };
        match items.as_slice() {
            [n0, n1, n2] => counts([n0, n1, n2]),
            [n0, n1, n2, repaired] => {
                let n = counts([n0, n1, n2])?;
                match repaired {
                    Value::BulkString(what) if what.is_empty() => {}
                    Value::BulkString(what) => self.repaired(redis_key, what),
                    _ => return None,
                }
                Some(n)
            }
            _ => None,
        }
    }

    /// The script replaced state it could not read at `redis_key` with a fresh one.
    #[cold]
    pub(super) fn repaired(&self, redis_key: &[u8], what: &[u8]) {
        #[cfg(feature = "metrics")]
        Meters::count(&self.meters.repaired);
        if let Some(suppressed) = self.repair_log.check() {
            tracing::warn!(
                limiter = %self.name,
                key = %String::from_utf8_lossy(redis_key),
                problem = %String::from_utf8_lossy(what),
                suppressed,
                "redis held state this limiter cannot read at this key; replaced it with a fresh \
                 state (see RedisBackend::repair_corrupt_data)"
            );
        }
    }

    /// Reads the single form's answer for `limit`, `[allowed, a, b, repaired]` (`repaired` left
    /// out when nothing was).
    pub(super) fn parse_one(
        &self,
        value: &Value,
        redis_key: &[u8],
        limit: &SetLimit,
    ) -> Result<Decision, BackendError> {
        let n = self
            .read_reply(value, redis_key)
            .ok_or_else(|| bad_reply(value))?;
        let l = &limit.limits;
        Ok(match (n[0], self.algorithm) {
            (1, Algorithm::Gcra) => Decision::admitted(l.limit, n[1], l.emission, n[2]),
            (1, _) => Decision::admitted(l.limit, n[1], 1, n[2]),
            (0, _) => Decision::refused(l.limit, n[1], n[2]),
            _ => return Err(bad_reply(value)),
        })
    }

    /// Reads the set form's answer, `[allowed, a, b, repaired, index, status, shadow_refused]`
    /// (see `limit_set.lua`; without `repaired` when nothing was), as the in-memory store's
    /// decision for the same set.
    pub(super) fn parse_set(
        &self,
        value: &Value,
        redis_key: &[u8],
        set: &LimitSet,
    ) -> Result<Decision, BackendError> {
        let bad = || bad_reply(value);
        let Value::Array(items) = value else {
            return Err(bad());
        };
        let (n0, n1, n2, repaired, index, status, mask) = match items.as_slice() {
            [n0, n1, n2, index, status, mask] => (n0, n1, n2, None, index, status, mask),
            [n0, n1, n2, repaired, index, status, mask] => {
                (n0, n1, n2, Some(repaired), index, status, mask)
            }
            _ => return Err(bad()),
        };
        let [allowed, a, b, index, status, mask] =
            counts([n0, n1, n2, index, status, mask]).ok_or_else(bad)?;
        let i = usize::try_from(index)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .filter(|i| *i < set.limits().len())
            .ok_or_else(bad)?;
        match repaired {
            None => {}
            Some(Value::BulkString(what)) if what.is_empty() => {}
            Some(Value::BulkString(what)) => {
                for line in what.split(|c| *c == b'\n') {
                    let mut parts = line.splitn(2, |c| *c == b' ');
                    let (Some(n), Some(problem)) = (parts.next(), parts.next()) else {
                        return Err(bad());
                    };
                    // 0 for the value as a whole, i for limit i's entry.
                    let n = std::str::from_utf8(n)
                        .ok()
                        .and_then(|n| n.parse::<usize>().ok())
                        .filter(|n| *n <= set.limits().len())
                        .ok_or_else(bad)?;
                    match n.checked_sub(1) {
                        None => self.repaired(redis_key, problem),
                        Some(i) => {
                            let what = format!(
                                "limit {:?}: {}",
                                set.limits()[i].name,
                                String::from_utf8_lossy(problem)
                            );
                            self.repaired(redis_key, what.as_bytes());
                        }
                    }
                }
            }
            Some(_) => return Err(bad()),
        }
        let d = set_decision(&set.limits()[i], self.algorithm, allowed, status, a, b)
            .ok_or_else(bad)?;
        Ok(d.with_binding(i)
            .with_shadow_refused(u8::try_from(mask).map_err(|_| bad())?))
    }
}

/// The set form's decision by `limit` (the binding one): `status` is what the limit says (1
/// admitted, 0 refused, 2 a cost above its capacity), `allowed` what the set says (1 when a
/// refusal is admitted anyway, in shadow mode). `None` for any other pair: a limit that admitted
/// and a set that refused is not a reply the script makes.
fn set_decision(
    limit: &SetLimit,
    algorithm: Algorithm,
    allowed: u64,
    status: u64,
    a: u64,
    b: u64,
) -> Option<Decision> {
    let l = &limit.limits;
    let d = match (status, algorithm) {
        (1, Algorithm::Gcra) => Decision::admitted(l.limit, a, l.emission, b),
        (1, _) => Decision::admitted(l.limit, a, 1, b),
        (0, _) => Decision::refused(l.limit, a, b),
        (2, _) => Decision::over_capacity(l.limit, a),
        _ => return None,
    };
    match (allowed, status) {
        (1, 1) | (0, 0 | 2) => Some(d),
        (1, _) => Some(d.admitted_anyway()),
        _ => None,
    }
}

/// Non-negative integers from a reply, or `None`.
fn counts<const N: usize>(items: [&Value; N]) -> Option<[u64; N]> {
    let mut n = [0u64; N];
    for (slot, item) in n.iter_mut().zip(items) {
        match item {
            Value::Int(i) if *i >= 0 => *slot = *i as u64,
            _ => return None,
        }
    }
    Some(n)
}

pub(super) fn bad_reply(value: &Value) -> BackendError {
    BackendError::with_kind(
        ErrorKind::Data,
        format!("redis answered the rate limit script with {value:?}"),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rate_limit::{Limit, Quota};

    /// Each (allowed, status) pair the set form answers reads as its decision; a limit that
    /// admitted in a set that refused, or a status the script has not, is no decision at all.
    #[test]
    fn the_set_forms_allowed_and_status_pairs() {
        let set = LimitSet::new(
            Algorithm::Gcra,
            &[Limit::new("pairs", Quota::per_hour(10))],
            false,
        )
        .unwrap();
        let limit = &set.limits()[0];
        let read = |allowed, status| set_decision(limit, Algorithm::Gcra, allowed, status, 4, 6);
        assert!(read(1, 1).unwrap().is_allowed());
        assert!(!read(0, 0).unwrap().is_allowed());
        assert!(!read(0, 2).unwrap().is_allowed(), "over capacity, refused");
        // Shadow mode: the limit refused, the set admitted it anyway.
        assert!(read(1, 0).unwrap().is_allowed());
        assert!(read(1, 2).unwrap().is_allowed());
        assert!(
            read(0, 1).is_none(),
            "a limit that admitted in a refused set"
        );
        for (allowed, status) in [(2, 1), (0, 3), (1, 3)] {
            assert!(read(allowed, status).is_none(), "{allowed}, {status}");
        }
    }
}
