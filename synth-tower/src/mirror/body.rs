//! The tees: the real request body and (in compare mode) the real response body pass through
//! untouched while the mirror keeps a bounded copy of their bytes.
//!
//! The copy is owned (the bytes are copied, not kept by reference): a small frame held by
//! reference can pin a whole read buffer of the server's, so only an owned copy makes the byte
//! budget count the memory that is really held.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use http_body::{Body, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::oneshot;

use super::{
    dispatch::{Job, Reservation, Shared},
    stats::Decision,
};
use crate::tap::{Collector, Refused, Tap, header_bytes, owned_headers};

/// The real answer of a mirrored request, as compare mode sees it.
#[derive(Debug)]
pub(crate) enum RealAnswer {
    /// The answer, trailers merged into the headers; its bytes stay reserved until dropped.
    Complete { status: StatusCode, headers: HeaderMap, body: Bytes, reservation: Reservation },
    /// Over the compare limit or the byte budget.
    TooLarge,
}

pin_project! {
    /// The request body the inner service sees: the real body, passed through. For a mirrored
    /// request its bytes are also copied (up to the body limit and within the byte budget) until
    /// the body ends, and the copy is queued then; the handler never waits for the mirror.
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
        if let Err(refused) = job.body.push(data, &mut job.reservation) {
            self.job = None;
            self.shared.stats.decided(match refused {
                Refused::TooLarge => Decision::BodyTooLarge,
                Refused::OverBudget => Decision::QueueFull,
            });
        }
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

    pub(crate) fn tee(inner: B, job: Job, shared: Arc<Shared>) -> Self {
        MirrorRequestBody { inner, tee: Some(Box::new(RequestTee { job: Some(job), shared })) }
    }
}

crate::tap::tapped_body!(MirrorRequestBody);

/// The real answer being collected, shared by the response tee and the copy waiting for it.
/// Whichever side goes first decides: the tee hands it over when the answer ends; the copy,
/// when it stops waiting, empties it and gives its bytes back at once, even if the answer is an
/// idle stream that will not send another frame for hours.
#[derive(Debug)]
pub(crate) struct AnswerSlot(Mutex<SlotState>);

#[derive(Debug)]
struct SlotState {
    open: bool,
    tx: Option<oneshot::Sender<RealAnswer>>,
    body: Collector,
    headers: HeaderMap,
    status: StatusCode,
    reservation: Reservation,
}

impl AnswerSlot {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        // A poisoned lock only means a panic mid-update; the state is still consistent enough
        // to be emptied.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The copy's side of a real answer in compare mode. Dropping it (the copy is done, gave up,
/// or was never sent) empties the slot and gives its bytes back.
#[derive(Debug)]
pub(crate) struct RealWaiter {
    pub(crate) rx: oneshot::Receiver<RealAnswer>,
    slot: Arc<AnswerSlot>,
}

impl Drop for RealWaiter {
    fn drop(&mut self) {
        abandon(&mut self.slot.lock());
    }
}

/// A waiter for the copy and the sender for the response tee of one mirrored request.
pub(crate) fn answer_channel(reservation: Reservation) -> (RealWaiter, AnswerSender) {
    let (tx, rx) = oneshot::channel();
    let slot = Arc::new(AnswerSlot(Mutex::new(SlotState {
        open: true,
        tx: Some(tx),
        body: Collector::default(),
        headers: HeaderMap::new(),
        status: StatusCode::OK,
        reservation,
    })));
    (RealWaiter { rx, slot: slot.clone() }, AnswerSender { slot: Some(slot) })
}

/// The response tee's side, kept in the response future until the answer's head is there.
/// Dropped before that (the request was dropped unanswered, or its service failed), it tells
/// the copy at once that no real answer will come.
#[derive(Debug)]
pub(crate) struct AnswerSender {
    /// `None` once handed to the response tee.
    slot: Option<Arc<AnswerSlot>>,
}

impl Drop for AnswerSender {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            abandon(&mut slot.lock());
        }
    }
}

impl AnswerSender {
    /// Starts collecting the answer: `None` when the copy has already stopped waiting or the
    /// budget cannot hold the answer's headers (the copy is told: `too_large`).
    ///
    /// `length`: the body's length when the answer says it (`content-length`, or an exact size
    /// hint) and the server stops at that many bytes (HTTP/1): such a server never polls the
    /// body for its end, so the tee ends itself after `length` bytes.
    pub(crate) fn start(
        mut self,
        status: StatusCode,
        headers: &HeaderMap,
        limit: usize,
        hint: &SizeHint,
        length: Option<u64>,
    ) -> Option<ResponseTee> {
        let slot = self.slot.take()?;
        {
            let mut state = slot.lock();
            if !state.open {
                return None;
            }
            if !state.reservation.try_grow(header_bytes(headers)) {
                give_up(&mut state);
                return None;
            }
            state.status = status;
            // Owned: a clone could pin the server's buffers while the copy waits.
            state.headers = owned_headers(headers);
            state.body = Collector::new(limit, hint);
        }
        Some(ResponseTee { slot, left: length })
    }
}

/// The answer cannot be kept: the copy is told `too_large` and the bytes are given back.
fn give_up(state: &mut SlotState) {
    if let Some(tx) = state.tx.take() {
        let _ = tx.send(RealAnswer::TooLarge);
    }
    abandon(state);
}

/// The answer will not be complete: the sender is dropped (the copy counts `real_incomplete`
/// as soon as it looks) and the bytes are given back.
fn abandon(state: &mut SlotState) {
    state.tx = None;
    state.open = false;
    state.body = Collector::default();
    state.headers = HeaderMap::new();
    state.reservation.release();
}

/// Collects a mirrored request's real answer for the comparison. Dropped before the answer's end
/// (the client went away, a layer above gave up, the body failed), it tells the copy at once.
#[derive(Debug)]
pub(crate) struct ResponseTee {
    slot: Arc<AnswerSlot>,
    /// Bytes still to come when the answer's length is known and the server stops there.
    left: Option<u64>,
}

impl Drop for ResponseTee {
    fn drop(&mut self) {
        let mut state = self.slot.lock();
        if state.open {
            abandon(&mut state);
        }
    }
}

impl Tap for ResponseTee {
    fn data(&mut self, data: &Bytes) {
        {
            let mut state = self.slot.lock();
            if !state.open {
                return;
            }
            let SlotState { body, reservation, .. } = &mut *state;
            if body.push(data, reservation).is_err() {
                return give_up(&mut state);
            }
        }
        if let Some(left) = &mut self.left {
            *left = left.saturating_sub(data.len() as u64);
            if *left == 0 {
                self.end();
            }
        }
    }

    fn trailers(&mut self, trailers: &HeaderMap) {
        let mut state = self.slot.lock();
        if !state.open {
            return;
        }
        if !state.reservation.try_grow(header_bytes(trailers)) {
            return give_up(&mut state);
        }
        // gRPC's status is in the trailers: compared like headers.
        for (name, value) in &owned_headers(trailers) {
            state.headers.append(name, value.clone());
        }
    }

    fn end(&mut self) {
        let mut state = self.slot.lock();
        if !state.open {
            return;
        }
        state.open = false;
        let Some(tx) = state.tx.take() else { return };
        let body = std::mem::take(&mut state.body).into_bytes();
        let headers = std::mem::take(&mut state.headers);
        let empty = state.reservation.empty();
        let reservation = std::mem::replace(&mut state.reservation, empty);
        let _ = tx.send(RealAnswer::Complete { status: state.status, headers, body, reservation });
    }
}

pin_project! {
    /// The response body the client gets: the inner service's, passed through. In compare mode a
    /// mirrored request's answer is also copied up to a limit, and handed to the comparison when
    /// it ends.
    #[derive(Debug)]
    pub struct MirrorResponseBody<B> {
        #[pin]
        inner: B,
        tee: Option<Box<ResponseTee>>,
    }
}

impl<B> MirrorResponseBody<B> {
    pub(crate) fn passthrough(inner: B) -> Self {
        MirrorResponseBody { inner, tee: None }
    }

    /// `bodiless`: an answer that cannot have a body (to `HEAD`, or 1xx, 204, 304), which is
    /// complete at once whatever its body says.
    pub(crate) fn tee(inner: B, tee: ResponseTee, bodiless: bool) -> Self
    where
        B: Body,
    {
        let empty = tee.left == Some(0);
        let mut body = MirrorResponseBody { inner, tee: Some(Box::new(tee)) };
        // A body that is already over (an empty answer, or `content-length: 0` to a server that
        // stops there) is never polled to its end.
        if (bodiless || empty || body.inner.is_end_stream())
            && let Some(mut tee) = body.tee.take()
        {
            tee.end();
        }
        body
    }
}

crate::tap::tapped_body!(MirrorResponseBody);
