//! Configuration from files (feature `serde`): one format for every layer.
//!
//! Each layer has a whole-layer configuration type that derives `Deserialize` and `Serialize`:
//! [`RateLimitConfig`](crate::rate_limit::RateLimitConfig),
//! [`CircuitBreakerConfig`](crate::circuit_breaker::CircuitBreakerConfig),
//! [`RetryConfig`](crate::retry::RetryConfig) and [`CacheConfig`](crate::cache::CacheConfig).
//! They share one shape:
//!
//! - **Fields are named after the builder's setters** (`max_attempts`, `wait_duration`,
//!   `stale_while_revalidate`, ...), and a field left out keeps the builder's default, so there is
//!   one list of defaults: the builder's.
//! - **`into_builder()`** turns the configuration into the layer's builder, where the parts that
//!   are code rather than data (`.key(..)`, `.backend(..)`, `.http()`, hooks, classifiers, the
//!   rate limiter's `.tier_of(..)` resolver) are added before `.build()`. What is data stays in the
//!   file, down to a rate limiter's several limits, tiers and shadow mode.
//! - **The builder checks the values**: a value that cannot work is refused by `build()` with the
//!   same [`ConfigError`](crate::ConfigError), naming the same setting, as when it is set in code.
//! - **Unknown fields are refused** (`deny_unknown_fields`), so a typo such as `max_attempt` is an
//!   error when the file is read, not a setting silently ignored.
//!
//! The value types inside them ([`Quota`](crate::rate_limit::Quota),
//! [`Limit`](crate::rate_limit::Limit),
//! [`Backoff`](crate::retry::Backoff), [`Budget`](crate::retry::Budget), ...) use the same
//! format on their own.
//!
//! # Durations
//!
//! Every duration is written as a human-readable string, as
//! [`humantime`](https://docs.rs/humantime) reads it: `"100ms"`, `"30s"`, `"1m 30s"`, `"2h"`
//! (units `ns`, `us`, `ms`, `s`, `m`, `h`, `d`, `w` and their longer spellings, `"0"` for zero).
//! Configuration is written back in the same form (`"1m 30s"`).
//!
//! For compatibility with files written for earlier versions (where a quota's period was a number
//! of seconds), a plain number is still read, as seconds: `60` and `0.5` are `"60s"` and
//! `"500ms"`. So is a string that is only a number (`"60"`), as environment variables and
//! environment-to-config loaders give every value. The `{"secs": .., "nanos": ..}` form is no longer read: write `"1s 500ms"` instead.
//!
//! # Example
//!
//! ```
//! use tower_rampart::retry::RetryConfig;
//!
//! let config: RetryConfig = serde_json::from_str(
//!     r#"{ "max_attempts": 4, "backoff": { "initial": "50ms", "max": "2s" }, "deadline": "10s" }"#,
//! )?;
//! let layer = config.into_builder().build()?;
//! # let _ = layer;
//! # Ok::<_, Box<dyn std::error::Error>>(())
//! ```

/// A `Duration` as a human-readable string (`"100ms"`, `"1m 30s"`); a number is read as seconds.
///
/// Use with `#[serde(with = "crate::config::duration")]`.
pub(crate) mod duration {
    use std::fmt;
    use std::time::Duration;

    use serde::de::{self, Deserializer, Visitor};
    use serde::ser::Serializer;

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        d.deserialize_any(DurationVisitor)
    }

    /// Reads a duration; its `visit_*` methods serve values that may be a duration or something
    /// else.
    pub(crate) struct DurationVisitor;

    pub(crate) const EXPECTED: &str = r#"a duration such as "100ms", "30s" or "1m 30s""#;

    fn from_secs<E: de::Error>(secs: f64) -> Result<Duration, E> {
        Duration::try_from_secs_f64(secs).map_err(|_| {
            E::custom(format_args!(
                "invalid duration {secs}: a number is read as seconds and must be zero or more \
                 (and finite); or write {EXPECTED}"
            ))
        })
    }

    impl<'de> Visitor<'de> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(EXPECTED)
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
            let v = v.trim();
            // A string that is only a number is read as the number is: seconds. Environment
            // variables and most environment-to-config loaders hand every value over as a string.
            if let Ok(secs) = v.parse::<f64>() {
                return from_secs(secs);
            }
            humantime::parse_duration(v).map_err(|e| {
                E::custom(format_args!(
                    "invalid duration {v:?}: {e}; write {EXPECTED}"
                ))
            })
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
            Ok(Duration::from_secs(v))
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
            match u64::try_from(v) {
                Ok(v) => Ok(Duration::from_secs(v)),
                Err(_) => from_secs(v as f64),
            }
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
            from_secs(v)
        }

        fn visit_map<A: de::MapAccess<'de>>(self, _: A) -> Result<Duration, A::Error> {
            Err(de::Error::custom(format_args!(
                "durations are no longer read as {{\"secs\", \"nanos\"}}: write {EXPECTED}"
            )))
        }
    }
}

/// An `Option<Duration>` in the format of [`duration`]; use with
/// `#[serde(default, skip_serializing_if = "Option::is_none", with = "crate::config::opt_duration")]`.
pub(crate) mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(transparent)]
    struct Human(#[serde(with = "super::duration")] Duration);

    pub(crate) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        d.map(Human).serialize(s)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<Human>::deserialize(d)?.map(|h| h.0))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
    struct D {
        #[serde(with = "super::duration")]
        d: Duration,
        #[serde(
            default,
            skip_serializing_if = "Option::is_none",
            with = "super::opt_duration"
        )]
        o: Option<Duration>,
    }

    fn read(json: &str) -> Result<D, String> {
        serde_json::from_str(json).map_err(|e| e.to_string())
    }

    #[test]
    fn durations_read_as_human_strings_or_seconds() {
        let cases = [
            (r#""100ms""#, Duration::from_millis(100)),
            (r#""30s""#, Duration::from_secs(30)),
            (r#""1m 30s""#, Duration::from_secs(90)),
            (r#""1.5s""#, Duration::from_millis(1500)),
            (r#""2h""#, Duration::from_secs(7200)),
            (r#""0""#, Duration::ZERO),
            ("60", Duration::from_secs(60)),
            ("0.5", Duration::from_millis(500)),
            (r#""60""#, Duration::from_secs(60)),
            (r#"" 0.25 ""#, Duration::from_millis(250)),
        ];
        for (text, want) in cases {
            let got = read(&format!(r#"{{"d":{text}}}"#)).unwrap();
            assert_eq!(got, D { d: want, o: None }, "{text}");
            let got = read(&format!(r#"{{"d":"1s","o":{text}}}"#)).unwrap();
            assert_eq!(got.o, Some(want), "{text}");
        }
    }

    #[test]
    fn durations_are_written_as_human_strings() {
        let d = D {
            d: Duration::from_secs(90),
            o: Some(Duration::from_millis(100)),
        };
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, r#"{"d":"1m 30s","o":"100ms"}"#);
        assert_eq!(read(&json).unwrap(), d);
        let none = D {
            d: Duration::ZERO,
            o: None,
        };
        let json = serde_json::to_string(&none).unwrap();
        assert_eq!(json, r#"{"d":"0s"}"#);
        assert_eq!(read(&json).unwrap(), none);
    }

    #[test]
    fn bad_durations_are_refused_with_what_to_write() {
        let cases = [
            (
                r#""5 parsecs""#,
                r#"invalid duration "5 parsecs": unknown time unit"#,
            ),
            (
                r#""-3""#,
                "invalid duration -3: a number is read as seconds",
            ),
            (
                r#""NaN""#,
                "invalid duration NaN: a number is read as seconds",
            ),
            ("-1", "invalid duration -1: a number is read as seconds"),
            (
                r#"{"secs":1,"nanos":0}"#,
                r#"durations are no longer read as {"secs", "nanos"}"#,
            ),
            ("true", r#"expected a duration such as "100ms""#),
        ];
        for (text, needle) in cases {
            let e = read(&format!(r#"{{"d":{text}}}"#)).unwrap_err();
            assert!(e.contains(needle), "{text}: {e}");
            assert!(
                e.contains(r#""1m 30s""#),
                "{text}: {e} should say what to write"
            );
            assert!(!e.starts_with(char::is_uppercase), "{e}");
        }
    }
}
