//! The request-independent key and keys computed by a function.

use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;

use super::{ExtractKey, KeyError, KeyExtractor};

/// One key, `()`, for every request: one bucket for the rate limiter, one circuit for the circuit
/// breaker (its default), one entry (with the empty key) for the cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GlobalKey;

impl KeyExtractor for GlobalKey {
    type Key = ();

    #[inline]
    fn fixed_key(&self) -> Option<()> {
        Some(())
    }
}

impl<Req> ExtractKey<Req> for GlobalKey {
    #[inline]
    fn extract(&self, _: &Req) -> Result<(), KeyError> {
        Ok(())
    }
}

/// A key computed by a function of the request; `None` means the request has no key (see
/// [when no key can be extracted](super#when-no-key-can-be-extracted)). Made by [`key_fn`].
///
/// `F` is usually a closure, whose type cannot be written down. To name a layer built with a key
/// function (to return it from a function, or keep it in a struct), use a plain `fn` instead:
/// [`KeyFnPtr`].
pub struct KeyFn<F, K> {
    f: F,
    _key: PhantomData<fn() -> K>,
}

/// A [`KeyFn`] holding a plain function pointer, so that its type (and the type of a layer built
/// with it) can be written down. Made by [`KeyFn::from_fn`], or by [`key_fn`] given a `fn` item
/// cast to a pointer.
///
/// # Example: returning a keyed layer from a function
///
/// ```
/// use tower_rampart::backend::memory::MemoryRateLimitStore;
/// use tower_rampart::key::{KeyFn, KeyFnPtr};
/// use tower_rampart::rate_limit::{Quota, RateLimitLayer};
///
/// struct Job { tenant: u64 }
///
/// fn per_tenant() -> RateLimitLayer<KeyFnPtr<Job, u64>, MemoryRateLimitStore<u64>> {
///     RateLimitLayer::builder()
///         .quota(Quota::per_second(100))
///         .key(KeyFn::from_fn(|job: &Job| Some(job.tenant)))
///         .build()
///         .expect("valid quota")
/// }
/// # let _ = per_tenant();
/// ```
pub type KeyFnPtr<Req, K> = KeyFn<fn(&Req) -> Option<K>, K>;

/// Keys requests with `f`; returning `None` means the request has no key (see
/// [when no key can be extracted](super#when-no-key-can-be-extracted)).
///
/// The same function keys any layer: the rate limiter, per-key circuits and the cache (whose
/// keys must convert into a [`CacheKey`](crate::cache::CacheKey)). For a type that can be named,
/// see [`KeyFnPtr`].
///
/// # Example
///
/// ```
/// use tower_rampart::key::key_fn;
/// use tower_rampart::rate_limit::{Quota, RateLimitLayer};
///
/// // One bucket per tenant, taken from the request itself.
/// struct Job { tenant: u64 }
///
/// let layer = RateLimitLayer::builder()
///     .quota(Quota::per_second(100))
///     .key(key_fn(|job: &Job| Some(job.tenant)))
///     .build()
///     .unwrap();
/// # let _ = layer;
/// ```
pub fn key_fn<Req, F, K>(f: F) -> KeyFn<F, K>
where
    F: Fn(&Req) -> Option<K>,
{
    KeyFn {
        f,
        _key: PhantomData,
    }
}

impl<Req, K> KeyFnPtr<Req, K> {
    /// Keys requests with the plain function `f` (a closure that captures nothing coerces to
    /// one). The result's type, [`KeyFnPtr<Req, K>`], can be written down.
    pub const fn from_fn(f: fn(&Req) -> Option<K>) -> Self {
        Self {
            f,
            _key: PhantomData,
        }
    }
}

impl<F: Clone, K> Clone for KeyFn<F, K> {
    fn clone(&self) -> Self {
        Self {
            f: self.f.clone(),
            _key: PhantomData,
        }
    }
}

impl<F: Copy, K> Copy for KeyFn<F, K> {}

impl<F, K> fmt::Debug for KeyFn<F, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyFn")
            .field("key", &std::any::type_name::<K>())
            .finish()
    }
}

impl<F, K> KeyExtractor for KeyFn<F, K>
where
    F: Clone + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + fmt::Debug + 'static,
{
    type Key = K;
}

impl<F, K, Req> ExtractKey<Req> for KeyFn<F, K>
where
    F: Fn(&Req) -> Option<K> + Clone + Send + Sync + 'static,
    K: Hash + Eq + Clone + Send + Sync + fmt::Debug + 'static,
{
    #[inline]
    fn extract(&self, req: &Req) -> Result<K, KeyError> {
        (self.f)(req).ok_or(KeyError::new(
            "the key function returned no key for this request",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Job {
        tenant: u64,
    }

    fn tenant(job: &Job) -> Option<u64> {
        Some(job.tenant)
    }

    #[test]
    fn a_fn_pointer_key_has_a_nameable_type() {
        let named: KeyFnPtr<Job, u64> = KeyFn::from_fn(tenant);
        let cast: KeyFnPtr<Job, u64> = key_fn(tenant as fn(&Job) -> Option<u64>);
        let closure: KeyFnPtr<Job, u64> = KeyFn::from_fn(|job| Some(job.tenant + 1));
        let job = Job { tenant: 7 };
        assert_eq!(named.extract(&job), Ok(7));
        assert_eq!(cast.extract(&job), Ok(7));
        assert_eq!(closure.extract(&job), Ok(8));
        let none: KeyFnPtr<Job, u64> = KeyFn::from_fn(|_| None);
        assert!(none.extract(&job).is_err());
    }

    #[test]
    fn the_global_key_is_fixed() {
        assert_eq!(GlobalKey.fixed_key(), Some(()));
        assert_eq!(ExtractKey::<u8>::extract(&GlobalKey, &1), Ok(()));
    }
}
