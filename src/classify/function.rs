//! Classifying with a closure.

use std::fmt;
use std::marker::PhantomData;

use super::{Classify, Verdict};

/// Classifies with a closure. Made by [`classify_fn`].
pub struct ClassifyFn<F, Res, E> {
    f: F,
    _types: PhantomData<fn(&Result<Res, E>)>,
}

/// Classifies results with `f`. For the circuit breaker, `f` must also be `Clone` (closures
/// that capture only `Clone` values are).
pub fn classify_fn<F, Res, E>(f: F) -> ClassifyFn<F, Res, E>
where
    F: Fn(&Result<Res, E>) -> Verdict,
{
    ClassifyFn {
        f,
        _types: PhantomData,
    }
}

impl<F: Clone, Res, E> Clone for ClassifyFn<F, Res, E> {
    fn clone(&self) -> Self {
        Self {
            f: self.f.clone(),
            _types: PhantomData,
        }
    }
}

impl<F, Res, E> fmt::Debug for ClassifyFn<F, Res, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClassifyFn").finish_non_exhaustive()
    }
}

impl<F, Res, E> Classify<Res, E> for ClassifyFn<F, Res, E>
where
    F: Fn(&Result<Res, E>) -> Verdict + Send + Sync + 'static,
    Res: 'static,
    E: 'static,
{
    #[inline]
    fn classify(&self, result: &Result<Res, E>) -> Verdict {
        (self.f)(result)
    }
}
