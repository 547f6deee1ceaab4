//! The tees: the real request body and (in compare mode) the real response body pass through
//! untouched while the mirror keeps a bounded copy of their bytes.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::oneshot;

use super::{
    dispatch::{Job, Reservation, Shared},
    stats::Decision,
};

/// The real answer of a mirrored request, as compare mode sees it.
#[derive(Debug)]
pub(crate) enum RealAnswer {
    /// The answer, trailers merged into the headers; its bytes stay reserved until dropped.
    Complete { status: StatusCode, headers: HeaderMap, body: Bytes, reservation: Reservation },
    /// Over the compare limit or the byte budget.
    TooLarge,
}

/// What a tee does with the frames it sees.
trait Tap {
    fn data(&mut self, data: &Bytes);
    fn trailers(&mut self, _trailers: &HeaderMap) {}
    fn end(&mut self);
}

/// Polls `inner` and shows the frame to the tap, which is dropped when the body fails (a failed
/// body is not a complete copy; dropping the tap counts that).
fn poll_tapped<B, T>(
    mut inner: Pin<&mut B>,
    tap: &mut Option<Box<T>>,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, B::Error>>>
where
    B: Body<Data = Bytes>,
    T: Tap,
{
    let polled = inner.as_mut().poll_frame(cx);
    if let Some(t) = tap.as_deref_mut() {
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    t.data(data);
                } else if let Some(trailers) = frame.trailers_ref() {
                    t.trailers(trailers);
                }
                // Consumers that trust `is_end_stream` never poll for the final `None`.
                if inner.is_end_stream() {
                    t.end();
                }
            }
            Poll::Ready(None) => t.end(),
            Poll::Ready(Some(Err(_))) => *tap = None,
            Poll::Pending => {}
        }
    }
    polled
}

pin_project! {
    /// The request body the inner service sees: the real body, passed through. For a mirrored
    /// request, the bytes are also kept (by reference, not copied) until the body ends, and the
    /// copy is queued then; the handler never waits for the mirror.
    #[derive(Debug)]
    pub struct MirrorRequestBody<B> {
        #[pin]
        inner: B,
        tee: Option<Box<RequestTee>>,
    }
}

#[derive(Debug)]
struct RequestTee {
    job: Option<Job>,
    limit: usize,
    shared: Arc<Shared>,
}

impl Drop for RequestTee {
    fn drop(&mut self) {
        // Dropped before the end: the handler did not read the whole body (or it failed).
        if self.job.is_some() {
            self.shared.stats.decided(Decision::BodyIncomplete);
        }
    }
}

impl Tap for RequestTee {
    fn data(&mut self, data: &Bytes) {
        let Some(job) = &mut self.job else { return };
        if job.body_len + data.len() > self.limit {
            self.job = None;
            self.shared.stats.decided(Decision::BodyTooLarge);
            return;
        }
        // Bytes held for a body still streaming count against the budget as they arrive.
        if !job.reservation.try_grow(data.len()) {
            self.job = None;
            self.shared.stats.decided(Decision::QueueFull);
            return;
        }
        job.body_len += data.len();
        job.body.push(data.clone());
    }

    fn end(&mut self) {
        if let Some(job) = self.job.take() {
            self.shared.enqueue(job);
        }
    }
}

impl<B> MirrorRequestBody<B> {
    pub(crate) fn passthrough(inner: B) -> Self {
        MirrorRequestBody { inner, tee: None }
    }

    pub(crate) fn tee(inner: B, job: Job, limit: usize, shared: Arc<Shared>) -> Self {
        MirrorRequestBody { inner, tee: Some(Box::new(RequestTee { job: Some(job), limit, shared })) }
    }
}

impl<B> Body for MirrorRequestBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        poll_tapped(this.inner, this.tee, cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

pin_project! {
    /// The response body the client gets: the inner service's, passed through. In compare mode a
    /// mirrored request's answer is also kept (by reference) up to a limit, and handed to the
    /// comparison when it ends.
    #[derive(Debug)]
    pub struct MirrorResponseBody<B> {
        #[pin]
        inner: B,
        tee: Option<Box<ResponseTee>>,
    }
}

#[derive(Debug)]
pub(crate) struct ResponseTee {
    tx: Option<oneshot::Sender<RealAnswer>>,
    status: StatusCode,
    headers: HeaderMap,
    chunks: Vec<Bytes>,
    len: usize,
    limit: usize,
    reservation: Reservation,
}

impl ResponseTee {
    /// `None` when the byte budget cannot hold even the answer's headers (the copy is told:
    /// its comparison counts as `too_large`).
    pub(crate) fn new(
        tx: oneshot::Sender<RealAnswer>,
        status: StatusCode,
        headers: &HeaderMap,
        limit: usize,
        mut reservation: Reservation,
    ) -> Option<Self> {
        if !reservation.try_grow(super::dispatch::header_bytes(headers)) {
            let _ = tx.send(RealAnswer::TooLarge);
            return None;
        }
        Some(ResponseTee {
            tx: Some(tx),
            status,
            headers: headers.clone(),
            chunks: Vec::new(),
            len: 0,
            limit,
            reservation,
        })
    }

    fn give_up(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(RealAnswer::TooLarge);
        }
        self.chunks = Vec::new();
        self.reservation.release();
    }
}

impl Tap for ResponseTee {
    fn data(&mut self, data: &Bytes) {
        let Some(tx) = &self.tx else { return };
        if tx.is_closed() {
            // The copy gave up waiting (timeout, stop): keep nothing more of a long stream.
            self.tx = None;
            self.chunks = Vec::new();
            self.reservation.release();
            return;
        }
        if self.len + data.len() > self.limit || !self.reservation.try_grow(data.len()) {
            return self.give_up();
        }
        self.len += data.len();
        self.chunks.push(data.clone());
    }

    fn trailers(&mut self, trailers: &HeaderMap) {
        if self.tx.is_none() {
            return;
        }
        if !self.reservation.try_grow(super::dispatch::header_bytes(trailers)) {
            return self.give_up();
        }
        // gRPC's status is in the trailers: compared like headers.
        for (name, value) in trailers {
            self.headers.append(name, value.clone());
        }
    }

    fn end(&mut self) {
        if let Some(tx) = self.tx.take() {
            let body = join(std::mem::take(&mut self.chunks), self.len);
            let headers = std::mem::take(&mut self.headers);
            let empty = self.reservation.empty();
            let reservation = std::mem::replace(&mut self.reservation, empty);
            let _ = tx.send(RealAnswer::Complete { status: self.status, headers, body, reservation });
        }
    }
}

/// One buffer from the chunks: free for one chunk, one copy otherwise.
pub(crate) fn join(mut chunks: Vec<Bytes>, len: usize) -> Bytes {
    match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().unwrap_or_default(),
        _ => {
            let mut buf = BytesMut::with_capacity(len);
            for c in chunks {
                buf.extend_from_slice(&c);
            }
            buf.freeze()
        }
    }
}

impl<B> MirrorResponseBody<B> {
    pub(crate) fn passthrough(inner: B) -> Self {
        MirrorResponseBody { inner, tee: None }
    }

    pub(crate) fn tee(inner: B, tee: ResponseTee) -> Self
    where
        B: Body,
    {
        let mut body = MirrorResponseBody { inner, tee: Some(Box::new(tee)) };
        // A body that is already over (an empty answer) is never polled to its end.
        if body.inner.is_end_stream()
            && let Some(tee) = body.tee.as_deref_mut()
        {
            tee.end();
        }
        body
    }
}

impl<B> Body for MirrorResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        poll_tapped(this.inner, this.tee, cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
