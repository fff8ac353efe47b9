//! What the store sends: the scripts' parameters for a limit, whether the scripts can decide it
//! exactly, and the set form's arguments.

use std::hash::Hash;
use std::time::Duration;

use super::{Inner, MAX_SCRIPT_NANOS};
use crate::backend::BackendError;
use crate::backend::redis::RedisKey;
use crate::rate_limit::Ask;
use crate::rate_limit::quota::{Algorithm, Limits};

/// The set form's key (the one holding every limit's state) and arguments (all but the last, which
/// the connection adds).
type SetCall = (Vec<u8>, Vec<Vec<u8>>);

/// The script's two parameters of `limits` for `algorithm`.
pub(super) fn params(algorithm: Algorithm, limits: &Limits) -> [Vec<u8>; 2] {
    let (a, b) = match algorithm {
        Algorithm::Gcra => (limits.emission, limits.tolerance),
        Algorithm::SlidingWindow => (limits.period, u64::from(limits.limit)),
    };
    [
        itoa::Buffer::new().format(a).as_bytes().to_vec(),
        itoa::Buffer::new().format(b).as_bytes().to_vec(),
    ]
}

/// Why the scripts cannot decide `limits` exactly, if they cannot (their Lua numbers are doubles,
/// exact below 2^53).
pub(super) fn unscriptable(algorithm: Algorithm, limits: &Limits) -> Option<String> {
    match algorithm {
        Algorithm::Gcra if limits.tolerance > MAX_SCRIPT_NANOS => Some(format!(
            "the Redis backend handles GCRA bursts spanning up to 52 days (burst x period / \
             limit); {} per {:?} with a burst of {} spans {:?}",
            limits.limit,
            Duration::from_nanos(limits.period),
            limits.burst,
            Duration::from_nanos(limits.tolerance)
        )),
        Algorithm::SlidingWindow if limits.period > MAX_SCRIPT_NANOS || limits.period < 1_000 => {
            Some(format!(
                "the Redis backend handles sliding-window periods from 1 microsecond to 52 days \
                 (got {:?})",
                Duration::from_nanos(limits.period)
            ))
        }
        _ => None,
    }
}

impl<K: Hash + Eq + Clone + RedisKey + Send + Sync + 'static> Inner<K> {
    /// The set form's key and arguments for `ask` on `key` (all but the last argument, which the
    /// connection adds), or why the scripts cannot decide this set.
    pub(super) fn set_call(
        &self,
        key: &K,
        ask: &Ask<'_>,
        clock_arg: Option<&str>,
    ) -> Result<SetCall, BackendError> {
        let limits = ask.set().limits();
        let mut args = Vec::with_capacity(3 * limits.len() + 5);
        let mut flags = Vec::with_capacity(limits.len() + 1);
        flags.push(if ask.is_peek() { b'1' } else { b'0' });
        let mut rest = Vec::with_capacity(3 * limits.len());
        for (i, l) in limits.iter().enumerate() {
            if let Some(why) = unscriptable(self.algorithm, &l.limits) {
                return Err(BackendError::new(
                    format!("limit {:?}: {why}", l.name),
                    None,
                ));
            }
            flags.push(if l.shadow { b'1' } else { b'0' });
            let [p1, p2] = params(self.algorithm, &l.limits);
            // The layer's own limit's entry has no name: it is the bare state a single-quota
            // limiter has always written.
            let name = if self.is_own(l.name) {
                Vec::new()
            } else {
                l.name.as_bytes().to_vec()
            };
            if i == 0 {
                args.extend([p1, p2]);
                rest.push(name);
            } else {
                rest.extend([name, p1, p2]);
            }
        }
        args.push(clock_arg.unwrap_or("").as_bytes().to_vec());
        args.push(if clock_arg.is_some() {
            b"600000".to_vec()
        } else {
            b"0".to_vec()
        });
        args.push(self.repair.to_vec());
        args.push(itoa::Buffer::new().format(ask.units()).as_bytes().to_vec());
        args.push(flags);
        args.extend(rest);
        Ok((self.redis_key(key), args))
    }
}
