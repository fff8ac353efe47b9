//! Macros every layer's service shares.

/// `get_ref`, `get_mut` and `into_inner` for a service whose wrapped service is its field `inner`
/// of type `S` (as tower-http's services have them).
#[cfg_attr(
    not(any(
        feature = "rate-limit",
        feature = "circuit-breaker",
        feature = "retry",
        feature = "cache"
    )),
    allow(unused_macros)
)]
macro_rules! define_inner_service_accessors {
    () => {
        /// The wrapped service.
        pub fn get_ref(&self) -> &S {
            &self.inner
        }

        /// The wrapped service, mutably.
        pub fn get_mut(&mut self) -> &mut S {
            &mut self.inner
        }

        /// Unwraps the inner service.
        pub fn into_inner(self) -> S {
            self.inner
        }
    };
}
