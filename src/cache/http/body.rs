//! The bodies of the HTTP cache: `CacheBody` (replayed or streamed through) and `HttpCapture`
//! (reads a response's body, up to the cap, to store it).

use std::collections::VecDeque;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http::Response;
use http::header;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use crate::body::Resumed;
use crate::cache::entry::Lifetimes;
use crate::cache::mode::{CacheStatus, Captured};

use super::mode::HttpMode;
use super::response::CachedResponse;

pin_project! {
    /// The body of responses from an HTTP-mode cache: a stored body replayed from memory, or the
    /// inner service's body streaming through (after whatever part of it was read while deciding
    /// whether it could be stored).
    pub struct CacheBody<B>
    where
        B: Body,
    {
        #[pin]
        kind: Kind<B, B::Error>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B, E> {
        Full { data: Option<Bytes> },
        Stream { #[pin] body: B },
        Resumed { body: Resumed<Pin<Box<B>>, E> },
    }
}

impl<B: Body> CacheBody<B> {
    /// A body of `data`, already in memory.
    pub fn full(data: Bytes) -> Self {
        Self {
            kind: Kind::Full {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    /// The inner service's body, streamed through.
    pub fn stream(body: B) -> Self {
        Self {
            kind: Kind::Stream { body },
        }
    }

    fn resume(prefix: VecDeque<Frame<Bytes>>, error: Option<B::Error>, rest: Pin<Box<B>>) -> Self {
        Self {
            kind: Kind::Resumed {
                body: Resumed::new(prefix, error, Some(rest)),
            },
        }
    }
}

impl<B> Body for CacheBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            KindProj::Full { data } => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            KindProj::Stream { body } => body.poll_frame(cx),
            KindProj::Resumed { body } => Pin::new(body).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full { data } => data.is_none(),
            Kind::Stream { body } => body.is_end_stream(),
            Kind::Resumed { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full { data } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
            Kind::Stream { body } => body.size_hint(),
            Kind::Resumed { body } => body.size_hint(),
        }
    }
}

impl<B: Body> fmt::Debug for CacheBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            Kind::Full { .. } => "full",
            Kind::Stream { .. } => "stream",
            Kind::Resumed { .. } => "resumed",
        };
        f.debug_struct("CacheBody")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

/// Reads an HTTP response's body, up to the cap, to store it.
pub struct HttpCapture<B: Body> {
    pub(super) state: Option<CaptureState<B>>,
}

pub(super) enum CaptureState<B: Body> {
    /// Decided from the head alone: not stored.
    Pass {
        parts: http::response::Parts,
        body: B,
        reason: &'static str,
        mode: HttpMode,
    },
    Reading {
        parts: http::response::Parts,
        body: Pin<Box<B>>,
        chunks: Vec<Bytes>,
        len: usize,
        lifetimes: Lifetimes,
        mode: HttpMode,
    },
}

// The body is only ever polled behind its own `Pin<Box<_>>` (or moved, unpolled, out of `Pass`),
// so the capture itself may move.
impl<B: Body> Unpin for HttpCapture<B> {}

impl<B: Body> HttpCapture<B> {
    pub(super) fn pass(
        mode: &HttpMode,
        parts: http::response::Parts,
        body: B,
        reason: &'static str,
    ) -> Self {
        Self {
            state: Some(CaptureState::Pass {
                parts,
                body,
                reason,
                mode: mode.clone(),
            }),
        }
    }
}

impl<B: Body> fmt::Debug for HttpCapture<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match self.state {
            Some(CaptureState::Pass { .. }) => "pass",
            Some(CaptureState::Reading { .. }) => "reading",
            None => "done",
        };
        f.debug_struct("HttpCapture")
            .field("state", &state)
            .finish()
    }
}

impl<B> std::future::Future for HttpCapture<B>
where
    B: Body<Data = Bytes>,
{
    type Output = Captured<CachedResponse, Response<CacheBody<B>>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let state = self
            .state
            .as_mut()
            .expect("capture polled after completion");
        let CaptureState::Reading {
            body,
            chunks,
            len,
            mode,
            ..
        } = state
        else {
            let Some(CaptureState::Pass {
                parts,
                body,
                reason,
                mode,
            }) = self.state.take()
            else {
                unreachable!("matched above")
            };
            let mut response = Response::from_parts(parts, CacheBody::stream(body));
            mode.mark(response.headers_mut(), CacheStatus::Miss);
            return Poll::Ready(Captured::Pass { response, reason });
        };
        let max = mode.max_body_bytes;
        // Not storable after all: answer with what was read so far, then the rest of the body.
        let (reason, last, error) = loop {
            match ready!(body.as_mut().poll_frame(cx)) {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if *len + data.len() > max => {
                        break ("too large", Some(Frame::data(data)), None);
                    }
                    Ok(data) => {
                        *len += data.len();
                        if !data.is_empty() {
                            chunks.push(data);
                        }
                    }
                    Err(trailers) => break ("trailers", Some(trailers), None),
                },
                Some(Err(e)) => break ("body error", None, Some(e)),
                None => {
                    let Some(CaptureState::Reading {
                        parts,
                        mut chunks,
                        len,
                        lifetimes,
                        mode,
                        ..
                    }) = self.state.take()
                    else {
                        unreachable!("reading")
                    };
                    let body = match chunks.len() {
                        0 => Bytes::new(),
                        1 => chunks.pop().expect("one chunk"),
                        _ => {
                            let mut all = BytesMut::with_capacity(len);
                            for c in chunks {
                                all.extend_from_slice(&c);
                            }
                            all.freeze()
                        }
                    };
                    let stored =
                        CachedResponse::new(parts.status, parts.version, parts.headers, body)
                            .with_placeholders(&mode);
                    let mut response = Response::new(CacheBody::full(stored.body.clone()));
                    *response.status_mut() = stored.status;
                    *response.version_mut() = stored.version;
                    *response.headers_mut() = stored.headers.clone();
                    *response.extensions_mut() = parts.extensions;
                    mode.mark(response.headers_mut(), CacheStatus::Miss);
                    if mode.age {
                        // The placeholder, for hits: a fresh answer sends the upstream's own age
                        // (a cache upstream said how old it was), if any. Without this layer's
                        // `Age`, the upstream's field was stored as it came, and stays.
                        match lifetimes.age.as_secs() {
                            0 => drop(response.headers_mut().remove(header::AGE)),
                            secs => drop(
                                response
                                    .headers_mut()
                                    .insert(header::AGE, super::directives::age_value(secs)),
                            ),
                        }
                    }
                    return Poll::Ready(Captured::Store {
                        weight: stored.weight(),
                        value: stored,
                        lifetimes,
                        response,
                    });
                }
            }
        };
        let Some(CaptureState::Reading {
            parts,
            body,
            chunks,
            mode,
            ..
        }) = self.state.take()
        else {
            unreachable!("reading")
        };
        let mut prefix: VecDeque<Frame<Bytes>> = chunks.into_iter().map(Frame::data).collect();
        prefix.extend(last);
        let mut response = Response::from_parts(parts, CacheBody::resume(prefix, error, body));
        mode.mark(response.headers_mut(), CacheStatus::Miss);
        Poll::Ready(Captured::Pass { response, reason })
    }
}
