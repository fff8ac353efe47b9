//! Layer names, given as `&'static str` or as a `String` from runtime configuration.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::{Mutex, OnceLock, PoisonError};

/// A layer's name as kept inside the layer: a `&'static str`, since it goes into metrics keys,
/// logs and Redis keys on the request path. A name given as a `String` (read from configuration)
/// is kept once per distinct name for the life of the process (a few bytes each; building a layer
/// with the same name again reuses it), so layers are meant to be built at start-up, not per
/// request.
pub(crate) fn intern(name: impl Into<Cow<'static, str>>) -> &'static str {
    match name.into() {
        Cow::Borrowed(name) => name,
        Cow::Owned(name) => {
            static NAMES: OnceLock<Mutex<HashSet<&'static str>>> = OnceLock::new();
            let mut names = NAMES
                .get_or_init(Default::default)
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(kept) = names.get(name.as_str()) {
                return kept;
            }
            let kept: &'static str = Box::leak(name.into_boxed_str());
            names.insert(kept);
            kept
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runtime_name_is_kept_once() {
        let a = intern(String::from("payments-from-config"));
        let b = intern(String::from("payments-from-config"));
        assert!(std::ptr::eq(a, b));
        assert_eq!(a, "payments-from-config");
        let s: &'static str = "static";
        assert!(std::ptr::eq(intern(s), s));
    }
}
