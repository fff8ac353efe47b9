//! A background refresh (stale-while-revalidate): a fill spawned, its answer dropped.

use super::*;

pin_project! {
    /// A background refresh (stale-while-revalidate): the leader's side of a miss, spawned, its
    /// answer dropped.
    pub(crate) struct Refresh<F, C, X, St, A, V, Req> {
        #[pin]
        phase: Phase<F, C, Box<Fill<X, St, A, V>>>,
        _req: PhantomData<fn(Req)>,
    }
}

pin_project! {
    #[project = PhaseProj]
    enum Phase<F, C, Fl> {
        Calling { #[pin] fut: F, fill: Option<Fl> },
        Capturing { #[pin] capture: C, fill: Option<Fl> },
        Done,
    }
}

impl<F, C, X, St, A, V, Req> Refresh<F, C, X, St, A, V, Req> {
    pub(crate) fn new(fut: F, fill: Fill<X, St, A, V>) -> Self {
        Self {
            phase: Phase::Calling {
                fut,
                fill: Some(Box::new(fill)),
            },
            _req: PhantomData,
        }
    }
}

impl<F, C, X, St, A, V, Req, Res, E> Future for Refresh<F, C, X, St, A, V, Req>
where
    F: Future<Output = Result<Res, E>>,
    C: Future<Output = Captured<V, A::Response>>,
    X: crate::key::KeyExtractor,
    A: CacheMode<Req, Res, E, Stored = V, Capture = C>,
    St: CacheStore<V>,
    V: Send + Sync + 'static,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut phase = self.project().phase;
        loop {
            match phase.as_mut().project() {
                PhaseProj::Calling { fut, fill } => {
                    let result = ready!(fut.poll(cx));
                    let fill = fill.take().expect("refresh polled after completion");
                    match fill.on_result::<Req, Res, E>(result) {
                        Step::Capture(capture, fill) => phase.set(Phase::Capturing {
                            capture,
                            fill: Some(fill),
                        }),
                        Step::Done(_) => {
                            phase.set(Phase::Done);
                            return Poll::Ready(());
                        }
                    }
                }
                PhaseProj::Capturing { capture, fill } => {
                    let captured = ready!(capture.poll(cx));
                    let fill = fill.take().expect("refresh polled after completion");
                    drop(fill.on_captured::<Req, Res, E>(captured));
                    phase.set(Phase::Done);
                    return Poll::Ready(());
                }
                PhaseProj::Done => return Poll::Ready(()),
            }
        }
    }
}
