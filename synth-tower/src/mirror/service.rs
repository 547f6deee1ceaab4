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
use tokio::sync::oneshot;
use tower_service::Service;

use super::{
    body::{MirrorRequestBody, MirrorResponseBody, RealAnswer, ResponseTee},
    dispatch::{Job, RealTiming, Shared, header_bytes},
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
        let settings = &shared.settings;
        let (parts, body) = req.into_parts();
        if body.size_hint().lower() > settings.body_limit as u64 {
            shared.stats.decided(Decision::BodyTooLarge);
            let req = Request::from_parts(parts, MirrorRequestBody::passthrough(body));
            return MirrorFuture::passthrough(self.inner.call(req));
        }
        let (tx, rx) = match settings.compare {
            Some(_) => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), Some(rx))
            }
            None => (None, None),
        };
        // The copy's head counts against the byte budget from the start.
        let mut reservation = shared.reservation();
        if !reservation.try_grow(header_bytes(&parts.headers) + uri_bytes(&parts.uri)) {
            shared.stats.decided(Decision::QueueFull);
            let req = Request::from_parts(parts, MirrorRequestBody::passthrough(body));
            return MirrorFuture::passthrough(self.inner.call(req));
        }
        let timing = Arc::new(RealTiming::default());
        let job = Job::new(&parts, rx, reservation, timing.clone());
        let body = if body.is_end_stream() {
            shared.enqueue(job);
            MirrorRequestBody::passthrough(body)
        } else {
            MirrorRequestBody::tee(body, job, settings.body_limit, shared.clone())
        };
        let future = self.inner.call(Request::from_parts(parts, body));
        MirrorFuture::mirrored(
            future,
            Mirrored { started: Instant::now(), tx, timing, shared: shared.clone() },
        )
    }
}

#[derive(Debug)]
pub(crate) struct Mirrored {
    started: Instant,
    tx: Option<oneshot::Sender<RealAnswer>>,
    timing: Arc<RealTiming>,
    shared: Arc<Shared>,
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
        m.timing.answered(&m.shared.stats, m.started.elapsed());
        let tee = m.tx.and_then(|tx| {
            let limit = m.shared.settings.answer_limit;
            ResponseTee::new(tx, res.status(), res.headers(), limit, m.shared.reservation())
        });
        Poll::Ready(Ok(match tee {
            Some(tee) => res.map(|body| MirrorResponseBody::tee(body, tee)),
            None => res.map(MirrorResponseBody::passthrough),
        }))
    }
}

/// A URI's size as the budget counts it, without formatting it.
fn uri_bytes(uri: &http::Uri) -> usize {
    uri.scheme_str().map_or(0, str::len)
        + uri.authority().map_or(0, |a| a.as_str().len())
        + uri.path_and_query().map_or(0, |p| p.as_str().len())
}
