//! How a key reads as text in logs, refusals, snapshots and metrics labels.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

/// How a key reads as text: the per-key circuit breaker names each circuit by its key's label in
/// logs, hooks, snapshots, refusals ([`CircuitOpen::key`](crate::circuit_breaker::error::CircuitOpen::key))
/// and metrics labels.
///
/// Implemented for the keys of the crate's extractors and for common plain types:
///
/// | key type | label |
/// |---|---|
/// | `()` ([`GlobalKey`](super::GlobalKey)) | `global` |
/// | [`IpAddr`], [`Ipv4Addr`], [`Ipv6Addr`] ([`PeerIp`](super::PeerIp), [`ClientIp`](super::ClientIp)) | `203.0.113.9`, `2001:db8::` |
/// | `http::HeaderValue` ([`HeaderKey`](super::HeaderKey), feature `http`) | `h:` and a 64-bit hash of the value, in hex: header values (API keys) never reach logs or metrics |
/// | integers, `bool`, `char` | as `Display` writes them |
/// | `String`, `&'static str`, `Box<str>` ([`UpstreamHost`](super::UpstreamHost)), `Arc<str>` | the text itself |
///
/// For a key type of your own, write its label (say, through its `Display`):
///
/// ```
/// use std::fmt::Write as _;
/// use tower_rampart::key::KeyLabel;
///
/// #[derive(Clone, Debug, Hash, PartialEq, Eq)]
/// struct Shard(u16);
///
/// impl KeyLabel for Shard {
///     fn write_label(&self, out: &mut String) {
///         let _ = write!(out, "shard-{}", self.0);
///     }
/// }
///
/// let mut out = String::new();
/// Shard(3).write_label(&mut out);
/// assert_eq!(out, "shard-3");
/// ```
pub trait KeyLabel {
    /// Appends this key's label to `out`.
    fn write_label(&self, out: &mut String);

    /// The key's label.
    fn label(&self) -> Arc<str> {
        let mut out = String::new();
        self.write_label(&mut out);
        Arc::from(out)
    }
}

macro_rules! display_labels {
    ($($t:ty),* $(,)?) => {$(
        impl KeyLabel for $t {
            fn write_label(&self, out: &mut String) {
                use std::fmt::Write as _;
                let _ = write!(out, "{self}");
            }
        }
    )*};
}

display_labels!(
    u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, bool, char, IpAddr, Ipv4Addr,
    Ipv6Addr,
);

impl KeyLabel for () {
    fn write_label(&self, out: &mut String) {
        out.push_str("global");
    }
}

impl KeyLabel for String {
    fn write_label(&self, out: &mut String) {
        out.push_str(self);
    }
}

impl KeyLabel for &'static str {
    fn write_label(&self, out: &mut String) {
        out.push_str(self);
    }
}

impl KeyLabel for Box<str> {
    fn write_label(&self, out: &mut String) {
        out.push_str(self);
    }
}

impl KeyLabel for Arc<str> {
    fn write_label(&self, out: &mut String) {
        out.push_str(self);
    }
}

#[cfg(feature = "http")]
impl KeyLabel for http::HeaderValue {
    /// `h:` and a hash of the value (the same in every process of one build), never the value
    /// itself.
    fn write_label(&self, out: &mut String) {
        use std::fmt::Write as _;
        use std::hash::BuildHasher;
        let hash = foldhash::quality::FixedState::with_seed(0x7261_6d70_6172_7400)
            .hash_one(self.as_bytes());
        let _ = write!(out, "h:{hash:016x}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_the_text_of_the_key() {
        assert_eq!(&*().label(), "global");
        assert_eq!(&*42u32.label(), "42");
        assert_eq!(&*"api.example.com".label(), "api.example.com");
        let ip: IpAddr = "2001:db8::".parse().unwrap();
        assert_eq!(&*ip.label(), "2001:db8::");
    }

    #[cfg(feature = "http")]
    #[test]
    fn header_values_are_hashed() {
        let label = http::HeaderValue::from_static("secret-api-key").label();
        assert!(label.starts_with("h:") && label.len() == 18, "{label}");
        assert!(!label.contains("secret"));
        assert_eq!(
            label,
            http::HeaderValue::from_static("secret-api-key").label()
        );
    }
}
