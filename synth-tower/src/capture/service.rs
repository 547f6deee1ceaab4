//! The service made by [`CaptureLayer`](super::CaptureLayer), its future and its request body.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU8, Ordering::AcqRel},
    },
    task::{Context, Poll, ready},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, uri::PathAndQuery};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use super::{CaptureRecord, Decision, Scrubbed, Shared, sampled};
use crate::tap::{Collector, Refused, Tap, Unbudgeted, is_synthetic, owned_headers};

/// The service made by [`CaptureLayer`](super::CaptureLayer): the inner service, with a sample
/// of its real requests recorded.
#[derive(Clone)]
pub struct Capture<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Capture<S> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Shared>) -> Self {
        Capture { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: fmt::Debug> fmt::Debug for Capture<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Capture").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl<S> Capture<S> {
    fn decide<B>(&self, req: &Request<B>) -> Result<(), Decision> {
        let shared = &self.shared;
        if !shared.enabled.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(Decision::Disabled);
        }
        if !sampled(shared.threshold.load(std::sync::atomic::Ordering::Relaxed)) {
            return Err(Decision::NotSampled);
        }
        let s = &shared.settings;
        // `OPTIONS *` (asterisk-form) has no path to record: a line's `uri` is origin-form.
        if req.method() == Method::CONNECT
            || req.uri().path_and_query().is_none_or(|pq| !pq.as_str().starts_with('/'))
            || req.headers().contains_key(http::header::UPGRADE)
            || s.methods.as_ref().is_some_and(|m| !m.contains(req.method()))
            || (!s.routes.is_empty() && !s.routes.iter().any(|r| req.uri().path().starts_with(r.as_str())))
        {
            return Err(Decision::Filtered);
        }
        // Replayed, load-test and dark requests all carry a marker: never recorded, valid or
        // not, so that a replay can never feed the capture it came from.
        if is_synthetic(req) {
            return Err(Decision::Synthetic);
        }
        if !shared.admit() {
            return Err(Decision::RateLimited);
        }
        Ok(())
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Capture<S>
where
    S: Service<Request<CaptureRequestBody<ReqB>>, Response = Response<ResB>>,
    ReqB: Body<Data = Bytes>,
{
    type Response = Response<ResB>;
    type Error = S::Error;
    type Future = CaptureFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        if let Err(skip) = self.decide(&req) {
            self.shared.stats.decided(skip);
            return CaptureFuture {
                inner: self.inner.call(req.map(CaptureRequestBody::passthrough)),
                pending: None,
            };
        }
        let (parts, body) = req.into_parts();
        let record = CaptureRecord {
            at: SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default(),
            method: parts.method.clone(),
            uri: owned_path(&parts.uri),
            version: parts.version,
            headers: recorded_headers(&parts),
            body: Bytes::new(),
            body_len: 0,
            body_omitted: false,
            scrubbed: Scrubbed::default(),
            status: None,
            latency: None,
            line: super::record::LineCache::default(),
        };
        let pending = Arc::new(Pending {
            record: Mutex::new(Some(record)),
            left: AtomicU8::new(2),
            shared: self.shared.clone(),
        });
        let body = if body.is_end_stream() {
            pending.finish(|_| {});
            CaptureRequestBody::passthrough(body)
        } else {
            let hint = body.size_hint();
            let collector = Collector::new(self.shared.settings.body_limit, &hint);
            let tee = CaptureTee {
                pending: Some(pending.clone()),
                body: collector,
                len: 0,
                known: hint.exact(),
                bodiless_method: matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS),
                over: false,
            };
            CaptureRequestBody { inner: body, tee: Some(Box::new(tee)) }
        };
        let inner = self.inner.call(Request::from_parts(parts, body));
        CaptureFuture { inner, pending: Some(Answer { pending: Some(pending), started: Instant::now() }) }
    }
}

/// The request's path and query, owned: hyper's request target is a slice of the connection's
/// read buffer, which a clone would keep alive while the record waits in the queue.
fn owned_path(uri: &http::Uri) -> PathAndQuery {
    // Only origin-form URIs are recorded (`decide` filters the rest), so the path is there.
    uri.path_and_query()
        .and_then(|pq| PathAndQuery::try_from(pq.as_str()).ok())
        .unwrap_or_else(|| PathAndQuery::from_static("/"))
}

/// The request's headers, owned (see [`owned_headers`]), with its authority as `host` when it
/// came in the URI only (HTTP/2's `:authority`, an absolute-form HTTP/1 target without `host`):
/// `host[:port]`, never the userinfo a URI may carry (`user:password@`).
fn recorded_headers(parts: &http::request::Parts) -> http::HeaderMap {
    let mut headers = owned_headers(&parts.headers);
    let authority = parts.uri.authority().and_then(|a| a.as_str().rsplit('@').next());
    if !headers.contains_key(http::header::HOST)
        && let Some(host) = authority.and_then(|a| HeaderValue::from_str(a).ok())
    {
        headers.insert(http::header::HOST, host);
    }
    headers
}

/// A record waiting for its two halves: the request body's end and the answer's head. The
/// second to arrive queues it, exactly once.
struct Pending {
    record: Mutex<Option<CaptureRecord>>,
    left: AtomicU8,
    shared: Arc<Shared>,
}

impl fmt::Debug for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending").finish_non_exhaustive()
    }
}

impl Pending {
    fn finish(&self, fill: impl FnOnce(&mut CaptureRecord)) {
        let mut slot = self.record.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(record) = slot.as_mut() {
            fill(record);
        }
        if self.left.fetch_sub(1, AcqRel) == 1
            && let Some(record) = slot.take()
        {
            drop(slot);
            self.shared.enqueue(record);
        }
    }
}

/// The answer's half: its status and latency, or none if the request was dropped unanswered.
struct Answer {
    pending: Option<Arc<Pending>>,
    started: Instant,
}

impl fmt::Debug for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Answer").finish_non_exhaustive()
    }
}

impl Answer {
    fn answered(mut self, status: StatusCode) {
        let latency = self.started.elapsed();
        if let Some(pending) = self.pending.take() {
            pending.finish(|r| {
                r.status = Some(status);
                r.latency = Some(latency);
            });
        }
    }
}

impl Drop for Answer {
    fn drop(&mut self) {
        // Dropped unanswered (the client went away, the handler failed): recorded without status.
        if let Some(pending) = self.pending.take() {
            pending.finish(|_| {});
        }
    }
}

pin_project! {
    /// The response future of [`Capture`]: the inner service's, untouched.
    #[derive(Debug)]
    pub struct CaptureFuture<F> {
        #[pin]
        inner: F,
        pending: Option<Answer>,
    }
}

impl<F, B, E> Future for CaptureFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<B>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = ready!(this.inner.poll(cx));
        if let (Ok(res), Some(answer)) = (&res, this.pending.take()) {
            answer.answered(res.status());
        }
        Poll::Ready(res)
    }
}

/// Copies a recorded request's body as it streams.
struct CaptureTee {
    pending: Option<Arc<Pending>>,
    body: Collector,
    len: u64,
    /// The body's length when known in advance (a `content-length`).
    known: Option<u64>,
    /// GET, HEAD or OPTIONS: a method whose requests have no body.
    bodiless_method: bool,
    over: bool,
}

impl Tap for CaptureTee {
    fn data(&mut self, data: &Bytes) {
        self.len += data.len() as u64;
        if !self.over && self.body.push(data, &mut Unbudgeted) == Err(Refused::TooLarge) {
            // Recorded without its body; only its length goes on being counted.
            self.over = true;
            self.body = Collector::default();
        }
    }

    fn end(&mut self) {
        if let Some(pending) = self.pending.take() {
            let (len, over) = (self.len, self.over);
            let body = std::mem::take(&mut self.body).into_bytes();
            pending.finish(|r| {
                r.body_len = len;
                if over {
                    r.body_omitted = true;
                } else {
                    r.body = body;
                }
            });
        }
    }
}

impl Drop for CaptureTee {
    fn drop(&mut self) {
        // Dropped before the end: the handler did not read the whole body; recorded without it,
        // with its length when it was known. A request of a method without a body (an empty
        // chunked GET) that showed no byte is recorded with its empty body, not as omitted.
        if let Some(pending) = self.pending.take() {
            let len = self.known.unwrap_or(self.len).max(self.len);
            let empty = len == 0 && self.bodiless_method;
            pending.finish(|r| {
                r.body_len = len;
                r.body_omitted = !empty;
            });
        }
    }
}

impl fmt::Debug for CaptureTee {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaptureTee").field("len", &self.len).finish_non_exhaustive()
    }
}

pin_project! {
    /// The request body the inner service sees: the real body, passed through; for a recorded
    /// request its bytes are also copied (up to the body limit) as they stream.
    #[derive(Debug)]
    pub struct CaptureRequestBody<B> {
        #[pin]
        inner: B,
        tee: Option<Box<CaptureTee>>,
    }
}

impl<B> CaptureRequestBody<B> {
    fn passthrough(inner: B) -> Self {
        CaptureRequestBody { inner, tee: None }
    }
}

crate::tap::tapped_body!(CaptureRequestBody);
