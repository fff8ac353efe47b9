//! The HTTP mode: buffered bodies, `Cache-Control`, `Vary`, `x-cache` and `age`.

use http::header::HeaderName;

mod body;
mod directives;
mod key;
mod mode;
mod response;

pub use self::body::{CacheBody, HttpCapture};
pub use self::key::HttpKey;
pub use self::mode::HttpMode;
pub use self::response::CachedResponse;

/// `x-cache`: `HIT`, `MISS` or `STALE`.
pub static X_CACHE: HeaderName = HeaderName::from_static("x-cache");

/// The default cap on a buffered response body: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
