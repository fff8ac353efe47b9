//! Errors shared by every layer.
//!
//! Each layer's refusals have their own small types ([`RateLimited`](crate::rate_limit::error::RateLimited),
//! ...); this module holds what they have in common: the boxed error alias used by layers in their
//! default rejection mode, and [`ConfigError`], returned by every builder's `build()`.

use std::borrow::Cow;
use std::fmt;

/// The type-erased error returned by layers in their default (generic) rejection mode.
///
/// Downcast it to find out what happened: `err.is::<RateLimited>()`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A layer was configured with a value that cannot work.
///
/// Returned by the builders' `build()` methods. The message names the setting and says what to fix,
/// e.g. `invalid quota: the limit must be at least 1 request per period (got 0)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    setting: &'static str,
    reason: Cow<'static, str>,
}

impl ConfigError {
    #[cfg_attr(
        not(any(
            feature = "rate-limit",
            feature = "circuit-breaker",
            feature = "retry",
            feature = "cache"
        )),
        allow(dead_code)
    )]
    pub(crate) fn new(setting: &'static str, reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            setting,
            reason: reason.into(),
        }
    }

    /// The name of the setting that was refused, e.g. `"quota"`.
    pub fn setting(&self) -> &str {
        self.setting
    }

    /// Why it was refused and what would be accepted.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// Checks a layer's name: 1 to 64 letters, digits and `-_.:` (it goes into logs, metrics labels and
/// header fields).
#[cfg_attr(
    not(any(
        feature = "rate-limit",
        feature = "circuit-breaker",
        feature = "retry",
        feature = "cache"
    )),
    allow(dead_code)
)]
pub(crate) fn check_name(name: &str) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            "name",
            format!("{name:?} must be 1 to 64 characters of letters, digits and -_.:"),
        ))
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid {}: {}", self.setting, self.reason)
    }
}

impl std::error::Error for ConfigError {}
