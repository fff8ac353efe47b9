//! Which requests may be sent again, and how they are copied.
//!
//! The first attempt consumes the request, so a retry needs a copy made before it. A
//! [`CloneRequest`] makes that copy and says whether retrying a request is safe at all:
//!
//! - [`CloneAll`] (the default): any `Req: Clone`, every request.
//! - [`HttpRequests`] (feature `http`, set by `.http()` and `.grpc()`): `http::Request<B>` whose
//!   body can be copied ([`TryCloneBody`]); only idempotent methods (GET, HEAD, OPTIONS, PUT, DELETE,
//!   TRACE) and requests carrying an `Idempotency-Key` header, unless told otherwise.
//! - [`clone_fn`]: any closure.
//!
//! A request that cannot be copied (a streaming body) or must not be retried (a POST) is **sent
//! once**, as it came: never dropped, never refused. Its result is returned as it is.
//!
//! # Bodies
//!
//! In-memory bodies (`Full<Bytes>`, what a hyper client takes, `Bytes`, `String`, ...) are always
//! copied. axum's and tonic's `Body` are type-erased streams that can be read only once: they are
//! copied when they are known to be empty (as a GET's usually is), and, with
//! [`HttpRequests::buffer_bodies`], when their content is already in memory:
//!
//! - **gRPC** (`.grpc()`, on by default, up to [`DEFAULT_BUFFER_LIMIT`]): a unary call through a
//!   tonic `Channel` carries its encoded message in a body that has it ready at once. The layer
//!   reads it without waiting, sends an equivalent in-memory body, and keeps a copy for the
//!   retries. Client-streaming calls whose messages are not all there yet are sent once.
//! - **HTTP** (`.http()`, off unless asked for with `buffer_bodies`): an axum `Body` built from
//!   bytes is copied the same way; a body still arriving from the network is not (which bodies
//!   are retried would then depend on timing).
//!
//! The layer never waits for a body: what is not there at once makes the request go once, with
//! the part already read put back in front of the rest, so nothing is lost. Bodies longer than
//! the limit go once too.
//!
//! # Getting retries for streaming bodies
//!
//! Bodies that stream (hyper's `Incoming`, or a request body an axum proxy forwards as it
//! arrives) can be read only once. To retry them, read the body into memory first and send a
//! cloneable body. In an axum proxy, for instance:
//!
//! ```
//! use bytes::Bytes;
//! use http_body_util::{BodyExt, Full};
//!
//! async fn outbound(req: axum::extract::Request) -> Result<http::Request<Full<Bytes>>, axum::Error> {
//!     let (parts, body) = req.into_parts();
//!     let bytes = body.collect().await?.to_bytes(); // cap the size first, e.g. with tower-http's RequestBodyLimit
//!     Ok(http::Request::from_parts(parts, Full::new(bytes)))
//! }
//! # let _ = outbound;
//! ```

use std::fmt;
use std::time::Duration;

/// Copies requests for retries, and decides which may be retried at all.
pub trait CloneRequest<Req>: Send + Sync + 'static {
    /// A copy of `req` to send in a later attempt; `None` if it cannot be copied.
    ///
    /// May replace `req` with an equivalent request that can be copied, as
    /// [`HttpRequests::buffer_bodies`] does with a body already in memory. Must not wait.
    fn clone_request(&self, req: &mut Req) -> Option<Req>;

    /// Whether sending `req` more than once is safe (default: always).
    fn may_retry(&self, req: &Req) -> bool {
        let _ = req;
        true
    }

    /// How long the caller gives `req`, when the request says so itself (gRPC's `grpc-timeout`;
    /// default: it does not). The retries keep within it, as within the layer's own
    /// [`deadline`](super::RetryBuilder::deadline).
    #[inline]
    fn time_given(&self, req: &Req) -> Option<Duration> {
        let _ = req;
        None
    }

    /// Says on a retry's copy of a request that carried its [`time_given`](Self::time_given)
    /// how much of it is left, `left` (default: nothing), just before it is sent.
    fn set_time_left(&self, req: &mut Req, left: Duration) {
        let _ = (req, left);
    }
}

/// Why a request is sent only once.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NotRetryable {
    /// Sending it twice might do its work twice (a POST without an `Idempotency-Key`).
    NotIdempotent,
    /// It cannot be copied (a streaming body).
    NotCloneable,
    /// Retries are off (at most one attempt).
    RetriesOff,
}

impl NotRetryable {
    /// A short label, for logs and metrics: `not_idempotent`, `not_cloneable` or `retries_off`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::NotIdempotent => "not_idempotent",
            Self::NotCloneable => "not_cloneable",
            Self::RetriesOff => "retries_off",
        }
    }
}

impl fmt::Display for NotRetryable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotIdempotent => "the request is not idempotent",
            Self::NotCloneable => "the request cannot be copied",
            Self::RetriesOff => "retries are off",
        })
    }
}

/// The default: requests are cloned with `Clone`, and every request may be retried.
///
/// Note that `http::Request<B>` is `Clone` when `B` is, with no regard for the method: for HTTP
/// use [`HttpRequests`], which retries idempotent requests only.
#[derive(Clone, Copy, Debug, Default)]
pub struct CloneAll;

impl<Req: Clone> CloneRequest<Req> for CloneAll {
    #[inline]
    fn clone_request(&self, req: &mut Req) -> Option<Req> {
        Some(req.clone())
    }
}

/// Copies requests with a closure. Made by [`clone_fn`].
#[derive(Clone)]
pub struct CloneFn<F> {
    f: F,
}

/// Copies requests with `f`, which returns `None` for requests that must be sent only once.
///
/// ```
/// use tower_rampart::retry::{RetryLayer, request::clone_fn};
///
/// #[derive(Debug)]
/// struct Job { id: u64, payload: Vec<u8>, replayable: bool }
///
/// let layer = RetryLayer::builder()
///     .requests(clone_fn(|job: &Job| {
///         job.replayable.then(|| Job { id: job.id, payload: job.payload.clone(), replayable: true })
///     }))
///     .build()
///     .unwrap();
/// # let _ = layer;
/// ```
pub fn clone_fn<F, Req>(f: F) -> CloneFn<F>
where
    F: Fn(&Req) -> Option<Req> + Send + Sync + 'static,
{
    CloneFn { f }
}

impl<F> fmt::Debug for CloneFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloneFn").finish_non_exhaustive()
    }
}

impl<F, Req> CloneRequest<Req> for CloneFn<F>
where
    F: Fn(&Req) -> Option<Req> + Send + Sync + 'static,
{
    #[inline]
    fn clone_request(&self, req: &mut Req) -> Option<Req> {
        (self.f)(req)
    }
}

#[cfg(feature = "http")]
pub use self::http_requests::{DEFAULT_BUFFER_LIMIT, HttpRequests, IDEMPOTENCY_KEY, TryCloneBody};

/// Reading the part of a body that is already in memory, and putting it back.
#[cfg(any(feature = "axum", feature = "tonic"))]
mod buffer {
    use std::collections::VecDeque;
    use std::pin::Pin;
    use std::task::{Context, Poll, Waker};

    use bytes::Bytes;
    use http_body::{Body, Frame};

    use crate::body::Resumed;

    /// What of a body was read, put back in front of the rest.
    pub(super) type Replay<B> = Resumed<B, <B as Body>::Error>;

    /// The most frames read at once: a body of endless empty frames must not hold the thread.
    const MAX_FRAMES: usize = 1024;

    fn copy_frame(frame: &Frame<Bytes>) -> Frame<Bytes> {
        match (frame.data_ref(), frame.trailers_ref()) {
            (Some(data), _) => Frame::data(data.clone()),
            (None, Some(trailers)) => Frame::trailers(trailers.clone()),
            (None, None) => Frame::data(Bytes::new()),
        }
    }

    /// Reads what of `body` is in memory, without waiting (polling it with a waker that does
    /// nothing, as `now_or_never` does; whoever polls it next registers their own). If that is the
    /// whole body, and at most `limit` bytes, `body` becomes an in-memory body of the same frames
    /// (made by `wrap`) and a copy is returned; otherwise what was read is put back in front of
    /// the rest.
    pub(super) fn buffer<B>(body: &mut B, limit: usize, wrap: fn(Replay<B>) -> B) -> Option<B>
    where
        B: Body<Data = Bytes> + Default + Unpin,
    {
        let mut cx = Context::from_waker(Waker::noop());
        let mut frames = VecDeque::new();
        let mut size = 0usize;
        let (ended, error) = loop {
            if body.is_end_stream() {
                break (true, None);
            }
            if size > limit || frames.len() >= MAX_FRAMES {
                break (false, None);
            }
            match Pin::new(&mut *body).poll_frame(&mut cx) {
                Poll::Ready(None) => break (true, None),
                Poll::Ready(Some(Ok(frame))) => {
                    size = size.saturating_add(frame.data_ref().map_or(0, Bytes::len));
                    frames.push_back(frame);
                }
                Poll::Ready(Some(Err(e))) => break (false, Some(e)),
                Poll::Pending => break (false, None),
            }
        };
        if ended && size <= limit {
            let copy = frames.iter().map(copy_frame).collect();
            *body = wrap(Resumed::new(frames, None, None));
            return Some(wrap(Resumed::new(copy, None, None)));
        }
        if !frames.is_empty() || error.is_some() {
            let rest = (!ended).then(|| std::mem::take(body));
            *body = wrap(Resumed::new(frames, error, rest));
        }
        None
    }
}

#[cfg(feature = "http")]
mod http_requests {
    use std::time::Duration;

    use bytes::Bytes;
    use http::{HeaderName, Method, Request};

    use super::CloneRequest;

    /// `Idempotency-Key` (draft-ietf-httpapi-idempotency-key-header): a request carrying it may be
    /// retried whatever its method.
    pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

    /// The most bytes of a body [`HttpRequests::buffer_bodies`] keeps a copy of, as `.grpc()` sets
    /// it: 64 KiB.
    pub const DEFAULT_BUFFER_LIMIT: usize = 64 * 1024;

    /// Copies `http::Request`s whose body can be copied, and retries only those that are safe to
    /// send twice.
    ///
    /// Safe: the idempotent methods of RFC 9110 (GET, HEAD, OPTIONS, PUT, DELETE, TRACE), and any
    /// request with an `Idempotency-Key` header. [`any_method`](Self::any_method) lifts the
    /// restriction (gRPC, whose calls are all POSTs, does; so does `.grpc()` on the builder).
    ///
    /// The copy has the same method, URI, version, headers and extensions, and a copy of the body
    /// made by [`TryCloneBody`]; a body that cannot be copied makes the request go once. With
    /// [`buffer_bodies`](Self::buffer_bodies), bodies whose content is already in memory are
    /// copied too (see the [module documentation](super)).
    #[derive(Clone, Copy, Debug, Default)]
    pub struct HttpRequests {
        any_method: bool,
        buffer_limit: usize,
        grpc_timeout: bool,
    }

    impl HttpRequests {
        /// Idempotent requests only; bodies copied only when [`TryCloneBody::try_clone_body`]
        /// can.
        pub const fn new() -> Self {
            Self {
                any_method: false,
                buffer_limit: 0,
                grpc_timeout: false,
            }
        }

        /// Reads gRPC's `grpc-timeout` header (what tonic's `Request::set_timeout` sets) as the
        /// call's deadline, within which the retries keep, and sets each retry's `grpc-timeout` to
        /// the time left of it; `.grpc()` turns it on. Without it, every attempt took the whole
        /// timeout again (tonic enforces it per attempt, below this layer), so a call given 1 s
        /// could take `max_attempts` seconds. A `Channel`'s own timeout (`Endpoint::timeout`)
        /// sends no header and is enforced per attempt below the layer: bound the whole call with
        /// the layer's [`deadline`](crate::retry::RetryBuilder::deadline).
        #[must_use]
        pub const fn grpc_timeout(mut self, yes: bool) -> Self {
            self.grpc_timeout = yes;
            self
        }

        /// Also copies bodies that stream but whose content is already in memory, up to
        /// `max_bytes` (0 turns it off, the default; `.grpc()` sets [`DEFAULT_BUFFER_LIMIT`]),
        /// with [`TryCloneBody::buffer_body`]: a unary gRPC call's encoded message, an axum
        /// `Body` built from bytes. The copy shares the bytes; it is kept until the request ends.
        #[must_use]
        pub const fn buffer_bodies(mut self, max_bytes: usize) -> Self {
            self.buffer_limit = max_bytes;
            self
        }

        /// The most bytes of a body [`buffer_bodies`](Self::buffer_bodies) keeps (0: off).
        pub const fn buffer_limit(&self) -> usize {
            self.buffer_limit
        }

        /// Retries requests of any method when `yes` (POST and PATCH included): only for
        /// upstreams that make them idempotent themselves.
        #[must_use]
        pub const fn any_method(mut self, yes: bool) -> Self {
            self.any_method = yes;
            self
        }

        /// Whether `req` may be sent twice.
        pub fn is_retryable<B>(&self, req: &Request<B>) -> bool {
            self.any_method
                || matches!(
                    *req.method(),
                    Method::GET
                        | Method::HEAD
                        | Method::OPTIONS
                        | Method::PUT
                        | Method::DELETE
                        | Method::TRACE
                )
                || req.headers().contains_key(&IDEMPOTENCY_KEY)
        }
    }

    impl<B: TryCloneBody> CloneRequest<Request<B>> for HttpRequests {
        fn clone_request(&self, req: &mut Request<B>) -> Option<Request<B>> {
            let body = match req.body().try_clone_body() {
                Some(body) => body,
                None if self.buffer_limit > 0 => req.body_mut().buffer_body(self.buffer_limit)?,
                None => return None,
            };
            let mut copy = Request::new(body);
            *copy.method_mut() = req.method().clone();
            *copy.uri_mut() = req.uri().clone();
            *copy.version_mut() = req.version();
            *copy.headers_mut() = req.headers().clone();
            *copy.extensions_mut() = req.extensions().clone();
            Some(copy)
        }

        #[inline]
        fn may_retry(&self, req: &Request<B>) -> bool {
            self.is_retryable(req)
        }

        #[inline]
        fn time_given(&self, req: &Request<B>) -> Option<Duration> {
            if !self.grpc_timeout {
                return None;
            }
            parse_grpc_timeout(req.headers().get(&GRPC_TIMEOUT)?.as_bytes())
        }

        fn set_time_left(&self, req: &mut Request<B>, left: Duration) {
            if self.grpc_timeout {
                req.headers_mut()
                    .insert(GRPC_TIMEOUT.clone(), format_grpc_timeout(left));
            }
        }
    }

    static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

    /// gRPC's `grpc-timeout` (`1*8DIGIT` then `H`, `M`, `S`, `m`, `u` or `n`); `None` for
    /// anything else.
    pub(crate) fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
        let (&unit, digits) = value.split_last()?;
        if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
        let n = digits
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        Some(match unit {
            b'H' => Duration::from_secs(n * 3600),
            b'M' => Duration::from_secs(n * 60),
            b'S' => Duration::from_secs(n),
            b'm' => Duration::from_millis(n),
            b'u' => Duration::from_micros(n),
            b'n' => Duration::from_nanos(n),
            _ => return None,
        })
    }

    /// `left` as a `grpc-timeout` value: whole milliseconds, rounded up (at least 1), in the
    /// finest unit whose value has at most 8 digits.
    pub(crate) fn format_grpc_timeout(left: Duration) -> http::HeaderValue {
        let ms = left.as_nanos().div_ceil(1_000_000).max(1);
        let text = if ms < 100_000_000 {
            format!("{ms}m")
        } else if ms.div_ceil(1000) < 100_000_000 {
            format!("{}S", ms.div_ceil(1000))
        } else {
            format!("{}H", ms.div_ceil(3_600_000).min(99_999_999))
        };
        http::HeaderValue::try_from(text).expect("digits and a unit are a valid header value")
    }

    /// A request body that can sometimes be copied.
    ///
    /// Implemented for in-memory bodies (always copied), and for axum's and tonic's `Body`, which are
    /// copied when they are known to be empty, or, through [`buffer_body`](Self::buffer_body), when
    /// their content is already in memory (a streaming body can be read once). Implement it for
    /// your own body types; see the [module documentation](super) for bodies that stream.
    pub trait TryCloneBody: Sized {
        /// A copy of the body, or `None` if it cannot be copied.
        fn try_clone_body(&self) -> Option<Self>;

        /// Makes the body copyable if its content is already in memory: reads it without waiting,
        /// up to `limit` bytes; if that is the whole body, replaces it with an in-memory body of
        /// the same frames and returns a copy. Otherwise returns `None` and leaves an equivalent
        /// body in place (what was read, then the rest). Used by
        /// [`HttpRequests::buffer_bodies`].
        ///
        /// The default does nothing and returns `None`; axum's and tonic's `Body` implement it.
        fn buffer_body(&mut self, limit: usize) -> Option<Self> {
            let _ = limit;
            None
        }
    }

    macro_rules! clone_bodies {
        ($($t:ty),* $(,)?) => {$(
            impl TryCloneBody for $t {
                #[inline]
                fn try_clone_body(&self) -> Option<Self> {
                    Some(self.clone())
                }
            }
        )*};
    }

    clone_bodies!((), String, Vec<u8>, Bytes, &'static str, &'static [u8]);

    impl<D: Clone> TryCloneBody for http_body_util::Full<D> {
        #[inline]
        fn try_clone_body(&self) -> Option<Self> {
            Some(self.clone())
        }
    }

    impl<D> TryCloneBody for http_body_util::Empty<D> {
        #[inline]
        fn try_clone_body(&self) -> Option<Self> {
            Some(Self::new())
        }
    }

    /// An empty copy of a body known to be empty.
    #[cfg(any(feature = "axum", feature = "tonic"))]
    fn empty_copy<B: http_body::Body + Default>(body: &B) -> Option<B> {
        (body.size_hint().exact() == Some(0)).then(B::default)
    }

    #[cfg(feature = "axum")]
    impl TryCloneBody for axum::body::Body {
        /// An empty body is copied; any other only through [`buffer_body`](Self::buffer_body).
        fn try_clone_body(&self) -> Option<Self> {
            empty_copy(self)
        }

        /// Copies a body whose frames are all there at once (one built from bytes).
        fn buffer_body(&mut self, limit: usize) -> Option<Self> {
            super::buffer::buffer(self, limit, axum::body::Body::new)
        }
    }

    #[cfg(feature = "tonic")]
    impl TryCloneBody for tonic::body::Body {
        /// An empty body is copied; any other only through [`buffer_body`](Self::buffer_body).
        fn try_clone_body(&self) -> Option<Self> {
            empty_copy(self)
        }

        /// Copies a body whose frames are all there at once: a unary call's encoded message, as
        /// tonic's generated clients send it through a `Channel`.
        fn buffer_body(&mut self, limit: usize) -> Option<Self> {
            super::buffer::buffer(self, limit, tonic::body::Body::new)
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn req<B>(method: Method, body: B) -> Request<B> {
            Request::builder()
                .method(method)
                .uri("http://upstream/x?y=1")
                .header("x-trace", "abc")
                .extension(7u32)
                .body(body)
                .unwrap()
        }

        #[test]
        fn idempotent_methods_and_idempotency_keys_are_retryable() {
            let h = HttpRequests::new();
            for m in [
                Method::GET,
                Method::HEAD,
                Method::OPTIONS,
                Method::PUT,
                Method::DELETE,
                Method::TRACE,
            ] {
                assert!(h.may_retry(&req(m, ())));
            }
            assert!(!h.may_retry(&req(Method::POST, ())));
            assert!(!h.may_retry(&req(Method::PATCH, ())));
            let mut keyed = req(Method::POST, ());
            keyed
                .headers_mut()
                .insert(&IDEMPOTENCY_KEY, "8e03978e".parse().unwrap());
            assert!(h.may_retry(&keyed));
            assert!(h.any_method(true).may_retry(&req(Method::POST, ())));
        }

        #[test]
        fn grpc_timeouts_are_read_and_written_as_grpc_sends_them() {
            for (text, d) in [
                ("1S", Duration::from_secs(1)),
                ("250m", Duration::from_millis(250)),
                ("99999999n", Duration::from_nanos(99_999_999)),
                ("7u", Duration::from_micros(7)),
                ("2M", Duration::from_secs(120)),
                ("99999999H", Duration::from_secs(99_999_999 * 3600)),
            ] {
                assert_eq!(parse_grpc_timeout(text.as_bytes()), Some(d), "{text}");
            }
            for junk in [
                "",
                "S",
                "1",
                "123456789S",
                "1s",
                "-1S",
                "1.5S",
                " 1S",
                "1Sm",
            ] {
                assert_eq!(parse_grpc_timeout(junk.as_bytes()), None, "{junk:?}");
            }
            for (d, text) in [
                (Duration::from_millis(500), "500m"),
                (Duration::from_micros(1), "1m"),
                (Duration::ZERO, "1m"),
                (Duration::from_micros(1_500), "2m"),
                (Duration::from_secs(100_000), "100000S"),
                (Duration::from_secs(400_000_000), "111112H"),
            ] {
                assert_eq!(format_grpc_timeout(d), text, "{d:?}");
            }
            // Only when asked (`.grpc()` asks), and only the header.
            let mut r = req(Method::POST, ());
            r.headers_mut().insert(&GRPC_TIMEOUT, "1S".parse().unwrap());
            assert_eq!(HttpRequests::new().time_given(&r), None);
            let grpc = HttpRequests::new().grpc_timeout(true);
            assert_eq!(grpc.time_given(&r), Some(Duration::from_secs(1)));
            grpc.set_time_left(&mut r, Duration::from_millis(40));
            assert_eq!(r.headers()[&GRPC_TIMEOUT], "40m");
            assert_eq!(r.headers()["x-trace"], "abc");
        }

        #[test]
        fn copies_keep_everything() {
            let original = req(Method::PUT, Bytes::from_static(b"{}"));
            let mut original = original;
            let copy = HttpRequests::new().clone_request(&mut original).unwrap();
            assert_eq!(copy.method(), Method::PUT);
            assert_eq!(copy.uri(), original.uri());
            assert_eq!(copy.headers(), original.headers());
            assert_eq!(copy.extensions().get::<u32>(), Some(&7));
            assert_eq!(copy.body(), original.body());
        }

        #[cfg(all(feature = "axum", feature = "tonic"))]
        #[tokio::test]
        async fn bodies_in_memory_are_buffered_and_what_is_read_is_never_lost() {
            use http_body_util::BodyExt;

            async fn text<B: http_body::Body<Data = Bytes>>(body: B) -> Result<String, String>
            where
                B::Error: std::fmt::Display,
            {
                match body.collect().await {
                    Ok(c) => Ok(String::from_utf8(c.to_bytes().to_vec()).unwrap()),
                    Err(e) => Err(e.to_string()),
                }
            }
            let h = HttpRequests::new().buffer_bodies(16);

            // All there at once: copied, and both send the same bytes.
            let mut original = req(Method::PUT, axum::body::Body::from("data"));
            let copy = h.clone_request(&mut original).expect("copied");
            assert_eq!(copy.headers(), original.headers());
            assert_eq!(copy.extensions().get::<u32>(), Some(&7));
            assert_eq!(text(original.into_body()).await.unwrap(), "data");
            assert_eq!(text(copy.into_body()).await.unwrap(), "data");

            // Off unless asked for.
            let mut off = req(Method::PUT, axum::body::Body::from("data"));
            assert!(HttpRequests::new().clone_request(&mut off).is_none());
            assert_eq!(text(off.into_body()).await.unwrap(), "data");

            // Longer than the limit: sent as it is.
            let mut long = req(Method::PUT, axum::body::Body::from("seventeen bytes!!"));
            assert!(h.clone_request(&mut long).is_none());
            assert_eq!(text(long.into_body()).await.unwrap(), "seventeen bytes!!");

            // Still arriving: what was read goes back in front of the rest.
            let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Bytes, std::io::Error>>();
            tx.unbounded_send(Ok(Bytes::from("first "))).unwrap();
            let mut arriving = req(Method::PUT, axum::body::Body::from_stream(rx));
            assert!(h.clone_request(&mut arriving).is_none());
            tx.unbounded_send(Ok(Bytes::from("second"))).unwrap();
            drop(tx);
            assert_eq!(text(arriving.into_body()).await.unwrap(), "first second");

            // An error stops the reading, and is put back too.
            let failing = futures::stream::iter([
                Ok(Bytes::from("a")),
                Err(std::io::Error::other("broken pipe")),
            ]);
            let mut failing = req(Method::PUT, axum::body::Body::from_stream(failing));
            assert!(h.clone_request(&mut failing).is_none());
            let err = text(failing.into_body()).await.unwrap_err();
            assert!(err.contains("broken pipe"), "{err}");

            // Trailers are copied with the data; tonic's body the same way.
            let mut trailers = http::HeaderMap::new();
            trailers.insert("x-checksum", "42".parse().unwrap());
            let frames = |t: &http::HeaderMap| {
                http_body_util::StreamBody::new(futures::stream::iter([
                    Ok::<_, std::convert::Infallible>(http_body::Frame::data(Bytes::from("msg"))),
                    Ok(http_body::Frame::trailers(t.clone())),
                ]))
            };
            let mut original = req(Method::POST, tonic::body::Body::new(frames(&trailers)));
            let copy = h
                .any_method(true)
                .clone_request(&mut original)
                .expect("copied");
            for body in [original.into_body(), copy.into_body()] {
                let collected = body.collect().await.unwrap();
                assert_eq!(collected.trailers(), Some(&trailers));
                assert_eq!(collected.to_bytes(), "msg");
            }
        }

        #[cfg(feature = "axum")]
        #[test]
        fn axum_bodies_are_copied_only_when_empty() {
            let h = HttpRequests::new();
            assert!(
                h.clone_request(&mut req(Method::GET, axum::body::Body::empty()))
                    .is_some()
            );
            assert!(
                h.clone_request(&mut req(Method::PUT, axum::body::Body::from("data")))
                    .is_none()
            );
        }
    }
}
