//! The simulated flaky dependency and its client, behind a circuit breaker on the client side,
//! where a circuit breaker belongs. Shared by `analytics_api` (`/external`) and `grpc_analytics`
//! (`CallExternal`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tower::ServiceBuilder;
use tower::util::BoxCloneSyncService;
use tower_rampart::BoxError;
use tower_rampart::circuit_breaker::{CircuitBreakerLayer, CircuitHandle};

/// The client of the external dependency: one call, one value.
pub(crate) type ExternalClient = BoxCloneSyncService<(), u32, BoxError>;

/// The dependency failed (as the simulated one does at `EXTERNAL_SERVICE_FAILURE_RATE`).
#[derive(Debug)]
pub(crate) struct ExternalFailure;

impl std::fmt::Display for ExternalFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("external service failure")
    }
}

impl std::error::Error for ExternalFailure {}

/// A small, fast pseudo-random sequence (splitmix64); the simulation needs no more.
#[derive(Debug)]
struct Dice(AtomicU64);

impl Dice {
    fn roll(&self) -> u64 {
        let mut z = self
            .0
            .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
            .wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in [0, 1).
    fn unit(&self) -> f64 {
        (self.roll() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The simulated dependency's failure rate, adjustable while it runs (tests make it fail, then
/// recover).
#[derive(Clone, Debug)]
pub(crate) struct FailureRate(Arc<AtomicU64>);

impl FailureRate {
    fn new(rate: f64) -> Self {
        Self(Arc::new(AtomicU64::new(rate.to_bits())))
    }

    pub(crate) fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Ordering::Relaxed))
    }

    /// Sets the rate, from 0.0 to 1.0.
    #[allow(dead_code, reason = "used by the tests")]
    pub(crate) fn set(&self, rate: f64) {
        assert!((0.0..=1.0).contains(&rate), "a failure rate is from 0 to 1");
        self.0.store(rate.to_bits(), Ordering::Relaxed);
    }
}

/// The simulated dependency: answers a value from 100 to 199 after `latency`, or fails with
/// probability `failure_rate`.
fn flaky_dependency(
    failure_rate: FailureRate,
    latency: Duration,
) -> impl tower::Service<(), Response = u32, Error = BoxError, Future: Send> + Clone + Send + Sync {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.as_nanos() as u64);
    let dice = Arc::new(Dice(AtomicU64::new(seed)));
    tower::service_fn(move |()| {
        let dice = Arc::clone(&dice);
        let failure_rate = failure_rate.get();
        async move {
            if !latency.is_zero() {
                tokio::time::sleep(latency).await;
            }
            if failure_rate > 0.0 && dice.unit() < failure_rate {
                Err::<u32, BoxError>(Box::new(ExternalFailure))
            } else {
                Ok(100 + (dice.roll() % 100) as u32)
            }
        }
    })
}

/// The dependency's client behind a circuit breaker: `CIRCUIT_BREAKER_FAILURE_THRESHOLD` failures
/// in a row open it for `CIRCUIT_BREAKER_RESET_TIMEOUT`; then one probe call decides. A call that
/// takes longer than `EXTERNAL_SERVICE_TIMEOUT` fails, inside the breaker: a hung dependency is
/// a failing one (a call cut short from outside, by the request's own timeout, would count for
/// nothing, and the circuit would never open).
///
/// With `redis`, every instance shares the circuit (the dependency is the same for all of them):
/// a trip seen by one refuses on all within about a quarter of a second.
pub(crate) fn client(
    config: &crate::config::Config,
    backend: tower_rampart::backend::Backend,
) -> Result<(ExternalClient, CircuitHandle, FailureRate), tower_rampart::ConfigError> {
    // In memory: this instance's own circuit; in Redis: one circuit for every instance.
    let breaker = CircuitBreakerLayer::builder()
        .name("external")
        .consecutive_failures(config.breaker_threshold)
        .wait_duration(config.breaker_reset)
        .backend(backend)
        .build()?;
    let handle = breaker.handle();
    let rate = FailureRate::new(config.external_failure_rate);
    let svc = ServiceBuilder::new()
        .layer(breaker)
        .timeout(config.external_timeout)
        .service(flaky_dependency(rate.clone(), config.external_latency));
    Ok((BoxCloneSyncService::new(svc), handle, rate))
}
