//! The service made by [`MirrorLayer`](super::MirrorLayer) and its response future.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
    time::Instant,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use pin_project_lite::pin_project;
use tower_service::Service;

use crate::tap::{Collector, header_bytes};

use super::{
    body::{AnswerSender, MirrorRequestBody, MirrorResponseBody, answer_channel},
    dispatch::{Job, RealTiming, Shared},
    stats::Decision,
};

/// The service made by [`MirrorLayer`](super::MirrorLayer): the inner service, with a share of
/// its real requests copied to the dark target.
#[derive(Clone)]
pub struct Mirror<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Mirror<S> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Shared>) -> Self {
        Mirror { inner, shared }
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

impl<S: fmt::Debug> fmt::Debug for Mirror<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mirror").field("inner", &self.inner).field("target", &self.shared.target).finish()
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Mirror<S>
where
    S: Service<Request<MirrorRequestBody<ReqB>>, Response = Response<ResB>>,
    ReqB: Body<Data = Bytes>,
    ResB: Body<Data = Bytes>,
{
    type Response = Response<MirrorResponseBody<ResB>>;
    type Error = S::Error;
    type Future = MirrorFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let shared = &self.shared;
        if let Err(skip) = shared.sampled().and_then(|()| shared.eligible(&req)) {
            shared.stats.decided(skip);
            return MirrorFuture::passthrough(self.inner.call(req.map(MirrorRequestBody::passthrough)));
        }
        // A full queue or budget (a dark target that is slow or gone) costs the real request
        // next to nothing: no copy is built just to be dropped.
        if shared.saturated() {
            shared.stats.decided(Decision::QueueFull);
            return MirrorFuture::passthrough(self.inner.call(req.map(MirrorRequestBody::passthrough)));
        }
        let settings = &shared.settings;
        let (parts, body) = req.into_parts();
        if body.size_hint().lower() > settings.body_limit as u64 {
            shared.stats.decided(Decision::BodyTooLarge);
            let req = Request::from_parts(parts, MirrorRequestBody::passthrough(body));
            return MirrorFuture::passthrough(self.inner.call(req));
        }
        // The copy's head counts against the byte budget from the start.
        let mut reservation = shared.reservation();
        if !reservation.try_grow(header_bytes(&parts.headers) + uri_bytes(&parts.uri)) {
            shared.stats.decided(Decision::QueueFull);
            let req = Request::from_parts(parts, MirrorRequestBody::passthrough(body));
            return MirrorFuture::passthrough(self.inner.call(req));
        }
        let (waiter, answer) = match settings.compare {
            Some(_) => {
                let (waiter, answer) = answer_channel(shared.reservation());
                (Some(waiter), Some(answer))
            }
            None => (None, None),
        };
        let timing = Arc::new(RealTiming::default());
        let collector = Collector::new(settings.body_limit, &body.size_hint());
        let job = Job::new(&parts, collector, waiter, reservation, timing.clone());
        let head = parts.method == http::Method::HEAD;
        let http1 = parts.version < http::Version::HTTP_2;
        let body = if body.is_end_stream() {
            shared.enqueue(job);
            MirrorRequestBody::passthrough(body)
        } else {
            MirrorRequestBody::tee(body, job, shared.clone())
        };
        let future = self.inner.call(Request::from_parts(parts, body));
        let clock = RealClock { started: Instant::now(), timing, shared: shared.clone(), done: false };
        MirrorFuture::mirrored(future, Mirrored { clock, answer, head, http1 })
    }
}

/// Times a mirrored request's real answer; a request dropped before its answer (a client or a
/// timeout above gave up) counts as answered when dropped, so the slowest real answers are not
/// left out of the histogram.
#[derive(Debug)]
struct RealClock {
    started: Instant,
    timing: Arc<RealTiming>,
    shared: Arc<Shared>,
    done: bool,
}

impl RealClock {
    fn stop(&mut self) {
        if !self.done {
            self.done = true;
            self.timing.real_done(&self.shared.stats, self.started.elapsed());
        }
    }
}

impl Drop for RealClock {
    fn drop(&mut self) {
        self.stop();
    }
}

#[derive(Debug)]
pub(crate) struct Mirrored {
    clock: RealClock,
    answer: Option<AnswerSender>,
    head: bool,
    /// An HTTP/1 request: its server writes a body of known length and polls it no further.
    http1: bool,
}

pin_project! {
    /// The response future of [`Mirror`]: the inner service's, untouched; a mirrored request's
    /// real latency is recorded, and in compare mode its answer is teed.
    #[derive(Debug)]
    pub struct MirrorFuture<F> {
        #[pin]
        inner: F,
        mirrored: Option<Mirrored>,
    }
}

impl<F> MirrorFuture<F> {
    fn passthrough(inner: F) -> Self {
        MirrorFuture { inner, mirrored: None }
    }

    fn mirrored(inner: F, mirrored: Mirrored) -> Self {
        MirrorFuture { inner, mirrored: Some(mirrored) }
    }
}

impl<F, B, E> Future for MirrorFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: Body<Data = Bytes>,
{
    type Output = Result<Response<MirrorResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = ready!(this.inner.poll(cx))?;
        let Some(m) = this.mirrored.take() else {
            return Poll::Ready(Ok(res.map(MirrorResponseBody::passthrough)));
        };
        let mut m = m;
        m.clock.stop();
        let limit = m.clock.shared.settings.answer_limit;
        let status = res.status();
        // No body can follow these, whatever the body type says.
        let bodiless = m.head
            || status.is_informational()
            || status == http::StatusCode::NO_CONTENT
            || status == http::StatusCode::NOT_MODIFIED;
        let hint = res.body().size_hint();
        // hyper's HTTP/1 server stops polling a body once it has written its `content-length`
        // (from the header, or from an exact size hint), without waiting for the body to say it
        // has ended: a streamed body would never show its end to the tee. HTTP/2 polls to the
        // end (trailers may follow), so the length is used for HTTP/1 only.
        let length = if m.http1 && !bodiless { known_length(res.headers(), &hint) } else { None };
        let tee = m.answer.take().and_then(|a| a.start(status, res.headers(), limit, &hint, length));
        Poll::Ready(Ok(match tee {
            Some(tee) => res.map(|body| MirrorResponseBody::tee(body, tee, bodiless)),
            None => res.map(MirrorResponseBody::passthrough),
        }))
    }
}

/// The body length an HTTP/1 server writes: a single valid `content-length`, else the body's
/// exact size hint. `None` when the body is delimited otherwise (chunked).
fn known_length(headers: &http::HeaderMap, hint: &http_body::SizeHint) -> Option<u64> {
    let mut values = headers.get_all(http::header::CONTENT_LENGTH).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => value.to_str().ok().and_then(|v| v.trim().parse::<u64>().ok()),
        // Several values: hyper refuses or merges them; no length is assumed.
        (Some(_), Some(_)) => None,
        (None, _) => hint.exact(),
    }
}

/// A URI's size as the budget counts it, without formatting it.
fn uri_bytes(uri: &http::Uri) -> usize {
    uri.scheme_str().map_or(0, str::len)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len())
}
