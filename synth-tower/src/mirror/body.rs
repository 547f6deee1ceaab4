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
use crate::tap::{Collector, Refused, Tap, header_bytes};

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
        let mut state = self.slot.lock();
        state.open = false;
        state.tx = None;
        state.body = Collector::default();
        state.headers = HeaderMap::new();
        state.reservation.release();
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
    (RealWaiter { rx, slot: slot.clone() }, AnswerSender { slot })
}

/// The response tee's side, kept in the response future until the answer's head is there.
#[derive(Debug)]
pub(crate) struct AnswerSender {
    slot: Arc<AnswerSlot>,
}

impl AnswerSender {
    /// Starts collecting the answer: `None` when the copy has already stopped waiting or the
    /// budget cannot hold the answer's headers (the copy is told: `too_large`).
    pub(crate) fn start(
        self,
        status: StatusCode,
        headers: &HeaderMap,
        limit: usize,
        hint: &SizeHint,
    ) -> Option<ResponseTee> {
        {
            let mut state = self.slot.lock();
            if !state.open {
                return None;
            }
            if !state.reservation.try_grow(header_bytes(headers)) {
                give_up(&mut state);
                return None;
            }
            state.status = status;
            state.headers = headers.clone();
            state.body = Collector::new(limit, hint);
        }
        Some(ResponseTee { slot: self.slot })
    }
}

fn give_up(state: &mut SlotState) {
    if let Some(tx) = state.tx.take() {
        let _ = tx.send(RealAnswer::TooLarge);
    }
    state.open = false;
    state.body = Collector::default();
    state.headers = HeaderMap::new();
    state.reservation.release();
}

/// Collects a mirrored request's real answer for the comparison.
#[derive(Debug)]
pub(crate) struct ResponseTee {
    slot: Arc<AnswerSlot>,
}

impl Tap for ResponseTee {
    fn data(&mut self, data: &Bytes) {
        let mut state = self.slot.lock();
        if !state.open {
            return;
        }
        let SlotState { body, reservation, .. } = &mut *state;
        if body.push(data, reservation).is_err() {
            give_up(&mut state);
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
        for (name, value) in trailers {
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
        let mut body = MirrorResponseBody { inner, tee: Some(Box::new(tee)) };
        // A body that is already over (an empty answer) is never polled to its end.
        if (bodiless || body.inner.is_end_stream())
            && let Some(mut tee) = body.tee.take()
        {
            tee.end();
        }
        body
    }
}

crate::tap::tapped_body!(MirrorResponseBody);
