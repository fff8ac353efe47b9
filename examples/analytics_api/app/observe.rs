//! Request-level plumbing on every route: request ids and the HTTP metrics and rejection count.

use super::*;

/// Request ids in the form of a random (version 4) UUID, drawn from a per-thread generator rather
/// than the operating system's (which costs a system call per request); ids, not secrets.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct RandomRequestId;

impl MakeRequestId for RandomRequestId {
    fn make_request_id<B>(&mut self, _: &http::Request<B>) -> Option<RequestId> {
        let hi = (fastrand::u64(..) & !0xf000) | 0x4000; // version 4
        let lo = (fastrand::u64(..) & !(0xc << 60)) | (0x8 << 60); // variant 1
        Some(RequestId::new(uuid_text(hi, lo)))
    }
}

/// `hi` and `lo` as a UUID's text (`8-4-4-4-12` lowercase hex digits), written straight into the
/// header value: one allocation, no formatter.
pub(super) fn uuid_text(hi: u64, lo: u64) -> http::HeaderValue {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // Where the 32 digits go among the 36 bytes (the other four are the dashes).
    const AT: [usize; 32] = [
        0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 14, 15, 16, 17, 19, 20, 21, 22, 24, 25, 26, 27, 28,
        29, 30, 31, 32, 33, 34, 35,
    ];
    let mut text = [b'-'; 36];
    for i in 0..16 {
        let shift = 60 - 4 * i;
        text[AT[i]] = HEX[((hi >> shift) & 0xf) as usize];
        text[AT[16 + i]] = HEX[((lo >> shift) & 0xf) as usize];
    }
    http::HeaderValue::from_bytes(&text).expect("hex digits and dashes are a valid header value")
}

/// Records the HTTP metrics of every request, and counts every 4xx answer (the limiters' 429s, the
/// body limit's 413 and the timeout's 408 included: they are inside this layer) for the dashboard's
/// `apiRejectedCount`. Hand-written rather than `middleware::from_fn`, which boxes the inner
/// service and the future on every request: this sits on every route.
#[derive(Clone)]
pub(crate) struct ObserveLayer {
    pub(super) state: AppState,
}

impl<S> tower::Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe {
            inner,
            state: self.state.clone(),
        }
    }
}

/// See [`ObserveLayer`].
#[derive(Clone)]
pub(crate) struct Observe<S> {
    inner: S,
    state: AppState,
}

impl<S, B, RB> tower::Service<http::Request<B>> for Observe<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
{
    type Response = http::Response<RB>;
    type Error = S::Error;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        ObserveFuture {
            timer: Some(telemetry::RequestTimer::start(&req)),
            inner: self.inner.call(req),
            state: self.state.clone(),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Observe`].
    pub(crate) struct ObserveFuture<F> {
        #[pin]
        inner: F,
        timer: Option<telemetry::RequestTimer>,
        state: AppState,
    }
}

impl<F, RB, E> std::future::Future for ObserveFuture<F>
where
    F: std::future::Future<Output = Result<http::Response<RB>, E>>,
{
    type Output = Result<http::Response<RB>, E>;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let Ok(res) = &result {
            if let Some(timer) = this.timer.take() {
                timer.finish(res.status());
            }
            if res.status().is_client_error() {
                let state = &*this.state;
                // In memory the count is written now; a remote store gets it within a second.
                if !state.storage.record_rejection_now(state.now()) {
                    state.rejections.pending.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        std::task::Poll::Ready(result)
    }
}
