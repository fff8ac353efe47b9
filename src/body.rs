//! A body read in part and put back together: the frames already read, then what stopped the
//! reading (an error), then the rest of the body, if it did not end. The cache resumes a response
//! it read while deciding whether to store it; retry, a request it read to keep a copy.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

/// Frames read from a body, then what stopped the reading (an error), then the rest of the body
/// (`R`, polled through `Pin::new`), if it did not end. After the error, the rest is dropped: the
/// body has ended.
pub(crate) struct Resumed<R, E> {
    frames: VecDeque<Frame<Bytes>>,
    error: Option<E>,
    rest: Option<R>,
}

impl<R, E> Resumed<R, E> {
    pub(crate) fn new(frames: VecDeque<Frame<Bytes>>, error: Option<E>, rest: Option<R>) -> Self {
        Self {
            frames,
            error,
            rest,
        }
    }
}

impl<R, E> std::fmt::Debug for Resumed<R, E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resumed")
            .field("frames", &self.frames.len())
            .field("rest", &self.rest.is_some())
            .finish_non_exhaustive()
    }
}

// Nothing in a `Resumed` is ever pinned: it polls `rest` through `Pin::new`, which needs
// `R: Unpin`, and holds frames and errors by value.
impl<R, E> Unpin for Resumed<R, E> {}

impl<R, E> Body for Resumed<R, E>
where
    R: Body<Data = Bytes, Error = E> + Unpin,
{
    type Data = Bytes;
    type Error = E;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, E>>> {
        let this = self.get_mut();
        if let Some(frame) = this.frames.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Some(e) = this.error.take() {
            this.rest = None;
            return Poll::Ready(Some(Err(e)));
        }
        match &mut this.rest {
            Some(rest) => Pin::new(rest).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.frames.is_empty()
            && self.error.is_none()
            && self.rest.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let read: u64 = self
            .frames
            .iter()
            .filter_map(|f| f.data_ref().map(|d| d.len() as u64))
            .sum();
        match &self.rest {
            None => SizeHint::with_exact(read),
            Some(rest) => {
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower().saturating_add(read));
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper.saturating_add(read));
                }
                hint
            }
        }
    }
}
