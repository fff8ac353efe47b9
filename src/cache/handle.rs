//! Invalidating cached entries from outside the request path: after a write, drop what it made
//! stale instead of waiting for the TTL.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};

use super::key::CacheKey;
use super::layer::Shared;
use super::store::{CacheStore, StoreOp};
use crate::backend::BackendError;

/// Invalidates entries of a [`CacheLayer`](super::CacheLayer): one key, every key with a prefix,
/// or all. Made by [`CacheLayer::handle`](super::CacheLayer::handle); cheap to clone.
///
/// An invalidation takes effect in this process at once, before the returned [`Invalidation`]
/// is even polled: no later request is served an entry stored before it, and responses fetched
/// by calls that were already running when it happened are not stored (they may have read the old
/// data; this applies to every running call, whatever its key, which costs at most one extra
/// miss), though they still answer the requests that were waiting for them. Requests arriving
/// after it do not wait for such calls: they start their own. With a shared store
/// (Redis), the returned future completes once the store has applied it too; await it before
/// answering the write that made the entries stale. With the in-memory store it is complete at
/// once.
///
/// # Example: invalidate on write
///
/// ```
/// use std::time::Duration;
/// use tower::{Layer, Service, ServiceExt, service_fn};
/// use tower_rampart::cache::CacheLayer;
/// use tower_rampart::key::key_fn;
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let layer = CacheLayer::builder()
///     .ttl(Duration::from_secs(300))
///     .key(key_fn(|metric: &&'static str| Some(format!("summary:{metric}"))))
///     .build()
///     .unwrap();
/// let handle = layer.handle();
/// let mut summaries = layer.layer(service_fn(|metric: &'static str| async move {
///     Ok::<_, std::convert::Infallible>(format!("{metric}: 3 points"))
/// }));
/// summaries.ready().await.unwrap().call("cpu").await.unwrap(); // stored
///
/// // A new cpu metric arrives: the next summary is fetched again.
/// handle.invalidate("summary:cpu").await.unwrap();
/// // Or every summary at once:
/// handle.invalidate_prefix("summary:").await.unwrap();
/// # }
/// ```
#[derive(Clone)]
pub struct CacheHandle {
    inner: Arc<dyn Invalidator>,
}

impl fmt::Debug for CacheHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheHandle")
            .field("cache", &self.inner.name())
            .finish()
    }
}

impl CacheHandle {
    pub(crate) fn new(inner: Arc<dyn Invalidator>) -> Self {
        Self { inner }
    }

    /// Removes the entry stored under `key` (for HTTP keys, `"GET /path?query"`).
    pub fn invalidate(&self, key: impl Into<CacheKey>) -> Invalidation {
        self.inner.invalidate(Target::Key(key.into()))
    }

    /// Removes every entry whose key starts with `prefix` (for example `"GET /api/metrics/"`).
    pub fn invalidate_prefix(&self, prefix: impl AsRef<[u8]>) -> Invalidation {
        self.inner
            .invalidate(Target::Prefix(prefix.as_ref().into()))
    }

    /// Removes every entry.
    pub fn invalidate_all(&self) -> Invalidation {
        self.inner.invalidate(Target::All)
    }

    /// The cache's name.
    pub fn name(&self) -> &'static str {
        self.inner.name()
    }
}

pub(crate) enum Target {
    Key(CacheKey),
    Prefix(Box<[u8]>),
    All,
}

impl Target {
    fn matches(&self, key: &CacheKey) -> bool {
        match self {
            Self::Key(k) => k == key,
            Self::Prefix(p) => key.starts_with(p),
            Self::All => true,
        }
    }
}

pub(crate) trait Invalidator: Send + Sync + 'static {
    fn invalidate(&self, target: Target) -> Invalidation;
    fn name(&self) -> &'static str;
}

pub(crate) struct HandleImpl<X, St, A, V> {
    pub(crate) shared: Arc<Shared<X, St, A>>,
    pub(crate) _value: PhantomData<fn() -> V>,
}

impl<X, St, A, V> Invalidator for HandleImpl<X, St, A, V>
where
    X: Send + Sync + 'static,
    A: Send + Sync + 'static,
    St: CacheStore<V>,
    V: Send + Sync + 'static,
{
    fn invalidate(&self, target: Target) -> Invalidation {
        self.shared.invalidate::<V>(&target)
    }

    fn name(&self) -> &'static str {
        self.shared.name
    }
}

/// What a successful write to a resource still waits for: its invalidations in a shared store.
pub(crate) type PendingInvalidation = Pin<Box<dyn Future<Output = ()> + Send>>;

impl<X, St, A> Shared<X, St, A>
where
    X: Send + Sync + 'static,
    St: Send + Sync + 'static,
    A: Send + Sync + 'static,
{
    /// Invalidates the `GET` and `HEAD` entries of `resource` (as [`HttpKey`] writes their keys:
    /// the method, a space, the resource, then, when keys have `variants`, a newline and fields)
    /// after a request that changed it succeeded. Done in this process at once; what a shared
    /// store still has to do runs on the runtime (to the end, whether or not the returned future
    /// is awaited), its failures reported (the write stands either way).
    ///
    /// [`HttpKey`]: super::HttpKey
    pub(crate) fn invalidate_resource<V>(
        self: &Arc<Self>,
        resource: &[u8],
        variants: bool,
    ) -> Option<PendingInvalidation>
    where
        St: CacheStore<V>,
        V: Send + Sync + 'static,
    {
        let mut pending = Vec::new();
        for method in [&b"GET "[..], b"HEAD "] {
            let exact = CacheKey::from_parts(&[method, resource]);
            let prefix: Box<[u8]> = [method, resource, b"\n"].concat().into();
            // Only the fills of this resource's stripe stop storing (see `Shared::stripe`).
            self.stripe(exact.as_bytes()).fetch_add(1, Ordering::SeqCst);
            // A key with no fields has no variants: no prefix to look up.
            let targets = [
                Some(Target::Key(exact)),
                variants.then_some(Target::Prefix(prefix)),
            ];
            for target in targets.into_iter().flatten() {
                let mut invalidation = self.invalidate_in_store::<V>(&target);
                match &mut invalidation.state {
                    InvalidationState::Ready(result) => {
                        if let Some(Err(e)) = result.take() {
                            self.backend_failed("invalidate", &e);
                        }
                    }
                    InvalidationState::Pending(_) => pending.push(invalidation),
                }
            }
        }
        if pending.is_empty() {
            return None;
        }
        let shared = Arc::clone(self);
        let work = std::future::poll_fn(move |cx| {
            pending.retain_mut(|invalidation| match Pin::new(invalidation).poll(cx) {
                Poll::Ready(Ok(())) => false,
                Poll::Ready(Err(e)) => {
                    shared.backend_failed("invalidate", &e);
                    false
                }
                Poll::Pending => true,
            });
            if pending.is_empty() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        });
        // On the runtime, so that the store completes it even when the answer is no longer
        // awaited (the client went away, an outer timeout fired): a write that happened is never
        // left with the resource's old entries in a shared store.
        Some(match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                let task = rt.spawn(work);
                Box::pin(async move {
                    let _ = task.await;
                })
            }
            Err(_) => Box::pin(work),
        })
    }
}

impl<X, St, A> Shared<X, St, A> {
    /// Invalidates `target`: in this process at once (the epoch, then the flights, then the
    /// store), and in a shared store when the returned [`Invalidation`] completes.
    pub(crate) fn invalidate<V>(&self, target: &Target) -> Invalidation
    where
        St: CacheStore<V>,
        V: Send + Sync + 'static,
    {
        // Order matters: the epoch first, so that a fill that stores after this point sees it
        // and takes its entry back out (see `Fill::store`).
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.invalidate_in_store::<V>(target)
    }

    /// [`invalidate`](Self::invalidate) once the epoch that fills compare is bumped: the flights,
    /// then the store.
    fn invalidate_in_store<V>(&self, target: &Target) -> Invalidation
    where
        St: CacheStore<V>,
        V: Send + Sync + 'static,
    {
        match target {
            Target::Key(k) => self.flights.detach_key(k),
            _ => self.flights.detach(|k| target.matches(k)),
        }
        let (op, what) = match target {
            Target::Key(k) => (self.store.invalidate(k), "key"),
            Target::Prefix(p) => (self.store.invalidate_prefix(p), "prefix"),
            Target::All => (self.store.clear(), "all"),
        };
        tracing::debug!(cache = self.name, what, "cache invalidated");
        #[cfg(feature = "metrics")]
        crate::metrics::counter(&crate::metrics::key(
            "rampart_cache_invalidations_total",
            self.name,
            &[("what", what)],
        ))
        .increment(1);
        match op {
            StoreOp::Ready(result) => Invalidation {
                state: InvalidationState::Ready(Some(result)),
            },
            StoreOp::Pending(fut) => Invalidation {
                state: InvalidationState::Pending(Box::pin(fut)),
            },
        }
    }
}

/// The completion of an invalidation; see [`CacheHandle`]. Resolves at once for the in-memory
/// store.
#[must_use = "with a shared store, an invalidation completes only when awaited"]
pub struct Invalidation {
    state: InvalidationState,
}

type BoxInvalidation = Pin<Box<dyn Future<Output = Result<(), BackendError>> + Send>>;

enum InvalidationState {
    Ready(Option<Result<(), BackendError>>),
    Pending(BoxInvalidation),
}

impl fmt::Debug for Invalidation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            InvalidationState::Ready(_) => "ready",
            InvalidationState::Pending(_) => "pending",
        };
        f.debug_struct("Invalidation")
            .field("state", &state)
            .finish()
    }
}

impl Future for Invalidation {
    type Output = Result<(), BackendError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.state {
            InvalidationState::Ready(result) => {
                Poll::Ready(result.take().expect("Invalidation polled after completion"))
            }
            InvalidationState::Pending(fut) => fut.as_mut().poll(cx),
        }
    }
}
