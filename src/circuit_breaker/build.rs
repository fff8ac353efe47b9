//! Building: the builder's settings checked into the breaker's configuration, and the four kinds
//! of layer (one circuit or per key; kept in this replica or shared through a store).

use std::sync::Arc;
use std::time::Duration;

use super::builder::CircuitBreakerBuilder;
use super::key::PerKey;
use super::keyed::CircuitMap;
#[cfg(feature = "redis")]
use super::layer::SyncGuard;
use super::layer::{CircuitBreakerLayer, Circuits, Shared};
use super::state::{Breaker, Config, Hooks, MAX_PROBES, SlowCalls, Wait, WindowConfig};
use super::store::NotShared;
#[cfg(feature = "redis")]
use super::store::SharedWith;
use crate::error::ConfigError;
use crate::key::{GlobalKey, KeyExtractor, KeyLabel};

/// The most per-key circuits a layer may be given room for.
const MAX_CIRCUITS: usize = 1_000_000;

impl<C, M, F, X, S> CircuitBreakerBuilder<C, M, F, X, S> {
    /// Takes the builder apart into its untyped settings and its typed parts.
    pub(super) fn split(self) -> (Settings, C, M, F, X, S) {
        (
            Settings {
                name: self.name,
                failure_rate: self.failure_rate,
                slow_calls: self.slow_calls,
                window: self.window,
                minimum_calls: self.minimum_calls,
                consecutive_failures: self.consecutive_failures,
                wait: self.wait,
                half_open_probes: self.half_open_probes,
                key_in_metrics: self.key_in_metrics,
                max_circuits: self.max_circuits,
                hooks: self.hooks,
                sync_interval: self.sync_interval,
            },
            self.classifier,
            self.mode,
            self.fallback,
            self.key,
            self.store,
        )
    }
}

/// The builder's settings that do not change its type.
pub(super) struct Settings {
    name: &'static str,
    failure_rate: Option<f64>,
    slow_calls: Option<SlowCalls>,
    window: WindowConfig,
    minimum_calls: Option<u32>,
    consecutive_failures: Option<u32>,
    wait: Wait,
    half_open_probes: u32,
    key_in_metrics: bool,
    max_circuits: usize,
    hooks: Hooks,
    sync_interval: Duration,
}

impl Settings {
    pub(super) fn join<C, M, F, X, S>(
        self,
        classifier: C,
        mode: M,
        fallback: F,
        key: X,
        store: S,
    ) -> CircuitBreakerBuilder<C, M, F, X, S> {
        CircuitBreakerBuilder {
            name: self.name,
            failure_rate: self.failure_rate,
            slow_calls: self.slow_calls,
            window: self.window,
            minimum_calls: self.minimum_calls,
            consecutive_failures: self.consecutive_failures,
            wait: self.wait,
            half_open_probes: self.half_open_probes,
            key_in_metrics: self.key_in_metrics,
            classifier,
            mode,
            fallback,
            key,
            max_circuits: self.max_circuits,
            hooks: self.hooks,
            store,
            sync_interval: self.sync_interval,
        }
    }

    /// Checks the settings of a shared circuit, beyond [`config`](Self::config)'s.
    #[cfg(feature = "redis")]
    fn shared_spec(&self, cfg: &Config) -> Result<super::store::CircuitSpec, ConfigError> {
        let interval = self.sync_interval;
        if interval < Duration::from_millis(1) || interval > Duration::from_secs(3600) {
            return Err(ConfigError::new(
                "sync_interval",
                format!("must be from 1 ms to 1 hour (got {interval:?})"),
            ));
        }
        if let WindowConfig::Time { span, .. } = cfg.window
            && span < interval * 2
        {
            return Err(ConfigError::new(
                "time_window",
                format!(
                    "a shared circuit's window of {span:?} must span at least two sync intervals \
                     ({:?}): outcomes reach it in batches, once per interval; lengthen the window \
                     or shorten sync_interval",
                    interval * 2
                ),
            ));
        }
        Ok(super::store::CircuitSpec {
            cfg: cfg.clone(),
            interval,
        })
    }

    /// Checks the settings.
    fn config(&self) -> Result<Config, ConfigError> {
        let err = |setting, reason: String| Err(ConfigError::new(setting, reason));
        if let Some(rate) = self.failure_rate
            && !(rate > 0.0 && rate <= 1.0)
        {
            return err(
                "failure_rate",
                format!("must be greater than 0 and at most 1 (got {rate})"),
            );
        }
        if let Some(s) = self.slow_calls {
            if !(s.rate > 0.0 && s.rate <= 1.0) {
                return err(
                    "slow_calls",
                    format!(
                        "the rate must be greater than 0 and at most 1 (got {})",
                        s.rate
                    ),
                );
            }
            if s.threshold.is_zero() {
                return err(
                    "slow_calls",
                    "the threshold must be longer than zero".into(),
                );
            }
        }
        let window_calls = match self.window {
            WindowConfig::Count(n) => {
                if n == 0 || n > 1_000_000 {
                    return err(
                        "window",
                        format!("must be from 1 to 1000000 calls (got {n})"),
                    );
                }
                n
            }
            WindowConfig::Time { span, buckets } => {
                if buckets == 0 || buckets > 1_000 {
                    return err(
                        "time_window",
                        format!("buckets must be from 1 to 1000 (got {buckets})"),
                    );
                }
                if span.as_nanos() < u128::from(buckets) {
                    return err(
                        "time_window",
                        format!("a span of {span:?} cannot hold {buckets} buckets; lengthen it"),
                    );
                }
                u32::MAX
            }
        };
        let minimum_calls = self.minimum_calls.unwrap_or(window_calls.min(20));
        if minimum_calls == 0 || minimum_calls > window_calls {
            return err(
                "minimum_calls",
                format!("must be from 1 to the window size, {window_calls} (got {minimum_calls})"),
            );
        }
        if self.consecutive_failures == Some(0) {
            return err("consecutive_failures", "must be at least 1 (got 0)".into());
        }
        let w = self.wait;
        if w.initial.is_zero() {
            return err("wait_duration", "must be longer than zero".into());
        }
        if !(w.multiplier.is_finite() && w.multiplier >= 1.0) {
            return err(
                "exponential_wait",
                format!(
                    "the multiplier must be a finite number of at least 1 (got {})",
                    w.multiplier
                ),
            );
        }
        if w.max < w.initial {
            return err(
                "exponential_wait",
                format!(
                    "the maximum ({:?}) must not be shorter than the initial wait ({:?})",
                    w.max, w.initial
                ),
            );
        }
        if self.half_open_probes == 0 || self.half_open_probes > MAX_PROBES {
            return err(
                "half_open_probes",
                format!(
                    "must be from 1 to {MAX_PROBES} (got {})",
                    self.half_open_probes
                ),
            );
        }
        crate::error::check_name(self.name)?;
        // With no condition set, the failure rate's default applies.
        let failure_rate = match (
            self.failure_rate,
            self.consecutive_failures,
            self.slow_calls,
        ) {
            (None, None, None) => Some(0.5),
            (rate, _, _) => rate,
        };
        let cfg = Config {
            name: self.name,
            failure_rate,
            slow_calls: self.slow_calls,
            window: self.window,
            minimum_calls,
            consecutive_failures: self.consecutive_failures,
            wait: self.wait,
            half_open_probes: self.half_open_probes,
            key_in_metrics: self.key_in_metrics,
        };
        Ok(cfg)
    }
}

impl<C, M, F> CircuitBreakerBuilder<C, M, F, GlobalKey, NotShared> {
    /// Checks the configuration and builds the layer.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming the setting, when a rate is outside (0, 1], a window, minimum,
    /// threshold or probe count is zero (or the minimum exceeds the window), a wait is zero or
    /// shrinks, or the name has characters logs and headers cannot carry.
    pub fn build(self) -> Result<CircuitBreakerLayer<C, M, F>, ConfigError> {
        let (settings, classifier, mode, fallback, key, _) = self.split();
        build_one(settings, classifier, mode, fallback, key)
    }
}

/// A layer with one circuit, kept in this replica.
fn build_one<C, M, F>(
    settings: Settings,
    classifier: C,
    mode: M,
    fallback: F,
    key: GlobalKey,
) -> Result<CircuitBreakerLayer<C, M, F>, ConfigError> {
    let cfg = settings.config()?;
    let breaker = Breaker::new(cfg, None, settings.hooks.clone());
    Ok(CircuitBreakerLayer {
        shared: Arc::new(Shared {
            circuits: Circuits::One(Arc::new(breaker)),
            key,
            classifier,
            mode,
            fallback,
            #[cfg(feature = "redis")]
            sync: None,
        }),
    })
}

#[cfg(feature = "redis")]
impl<C, M, F, B> CircuitBreakerBuilder<C, M, F, GlobalKey, SharedWith<B>>
where
    B: super::store::CircuitBackend<()>,
{
    /// Checks the configuration and builds the layer, whose circuit is shared through the store.
    ///
    /// The sync task starts here when called inside a Tokio runtime, or else with the first call
    /// made inside one.
    ///
    /// # Errors
    ///
    /// As for a layer that is not shared, and when `sync_interval` is outside 1 ms to 1 hour, a
    /// time window spans less than two sync intervals, or the backend's settings are invalid
    /// (for Redis: its prefix or timeout).
    pub fn build(self) -> Result<CircuitBreakerLayer<C, M, F>, ConfigError> {
        let (settings, classifier, mode, fallback, key, store) = self.split();
        if !store.backend.shares() {
            return build_one(settings, classifier, mode, fallback, key);
        }
        let cfg = settings.config()?;
        let spec = settings.shared_spec(&cfg)?;
        let store = store.backend.circuit_store(&spec)?;
        let signal = Arc::new(super::shared::Signal::new());
        let breaker = Arc::new(Breaker::new_shared(
            cfg,
            None,
            settings.hooks.clone(),
            &signal,
        ));
        let driver = super::shared::driver(
            store,
            super::shared::Tracked::One((), Arc::clone(&breaker)),
            spec.interval,
            spec.cfg.name,
            Arc::clone(&signal),
        );
        Ok(CircuitBreakerLayer {
            shared: Arc::new(Shared {
                circuits: Circuits::One(breaker),
                key,
                classifier,
                mode,
                fallback,
                sync: Some(SyncGuard {
                    _driver: driver,
                    signal,
                }),
            }),
        })
    }
}

impl<C, M, F, X> CircuitBreakerBuilder<C, M, F, PerKey<X>, NotShared>
where
    X: KeyExtractor,
    X::Key: KeyLabel,
{
    /// Checks the configuration and builds the layer.
    ///
    /// # Errors
    ///
    /// As for a layer with one circuit, and when `max_circuits` is 0 or over 1,000,000.
    pub fn build(self) -> Result<CircuitBreakerLayer<C, M, F, PerKey<X>>, ConfigError> {
        let (settings, classifier, mode, fallback, key, _) = self.split();
        build_per_key(settings, classifier, mode, fallback, key)
    }
}

/// A layer with a circuit per key, kept in this replica.
fn build_per_key<C, M, F, X>(
    settings: Settings,
    classifier: C,
    mode: M,
    fallback: F,
    key: PerKey<X>,
) -> Result<CircuitBreakerLayer<C, M, F, PerKey<X>>, ConfigError>
where
    X: KeyExtractor,
    X::Key: KeyLabel,
{
    let cfg = settings.config()?;
    settings.check_max_circuits()?;
    let map = CircuitMap::new(
        settings.max_circuits,
        cfg,
        settings.hooks.clone(),
        label::<X::Key>,
    );
    Ok(CircuitBreakerLayer {
        shared: Arc::new(Shared {
            circuits: Circuits::PerKey(Arc::new(map)),
            key,
            classifier,
            mode,
            fallback,
            #[cfg(feature = "redis")]
            sync: None,
        }),
    })
}

#[cfg(feature = "redis")]
impl<C, M, F, X, B> CircuitBreakerBuilder<C, M, F, PerKey<X>, SharedWith<B>>
where
    X: KeyExtractor,
    X::Key: KeyLabel,
    B: super::store::CircuitBackend<X::Key>,
{
    /// Checks the configuration and builds the layer, whose per-key circuits are shared through
    /// the store (each key's circuit with the same key's on the other replicas).
    ///
    /// # Errors
    ///
    /// As for a shared layer with one circuit, and when `max_circuits` is 0 or over 1,000,000.
    pub fn build(self) -> Result<CircuitBreakerLayer<C, M, F, PerKey<X>>, ConfigError> {
        let (settings, classifier, mode, fallback, key, store) = self.split();
        if !store.backend.shares() {
            return build_per_key(settings, classifier, mode, fallback, key);
        }
        let cfg = settings.config()?;
        settings.check_max_circuits()?;
        let spec = settings.shared_spec(&cfg)?;
        let store = store.backend.circuit_store(&spec)?;
        let signal = Arc::new(super::shared::Signal::new());
        let map = Arc::new(
            CircuitMap::new(
                settings.max_circuits,
                cfg,
                settings.hooks.clone(),
                label::<X::Key>,
            )
            .with_signal(Arc::clone(&signal)),
        );
        let driver = super::shared::driver(
            store,
            super::shared::Tracked::PerKey(Arc::clone(&map)),
            spec.interval,
            spec.cfg.name,
            Arc::clone(&signal),
        );
        Ok(CircuitBreakerLayer {
            shared: Arc::new(Shared {
                circuits: Circuits::PerKey(map),
                key,
                classifier,
                mode,
                fallback,
                sync: Some(SyncGuard {
                    _driver: driver,
                    signal,
                }),
            }),
        })
    }
}

impl Settings {
    fn check_max_circuits(&self) -> Result<(), ConfigError> {
        if self.max_circuits == 0 || self.max_circuits > MAX_CIRCUITS {
            return Err(ConfigError::new(
                "max_circuits",
                format!(
                    "must be from 1 to {MAX_CIRCUITS} (got {})",
                    self.max_circuits
                ),
            ));
        }
        Ok(())
    }
}

/// A key as text, for logs and labels.
fn label<K: KeyLabel>(key: &K) -> Arc<str> {
    key.label()
}
