//! The client layer: send the marker on to the next hop, and collect its path report.
//!
//! [`PropagateSyntheticLayer`] wraps any tower HTTP client (hyper-util's legacy client, a tonic
//! `Channel`, ...). Inside a synthetic scope it sets the `synthetic-traffic` header and the
//! `synthetic` baggage member on each request (other members are kept; with no `baggage` header
//! of its own, the request gets the members of the current context), and adds the
//! `synthetic-traffic-path` and `synthetic-traffic-guards` the downstream service answers with to
//! the current request's [`Trail`]. Outside a synthetic scope it adds nothing.
//!
//! # Example
//!
//! ```
//! use tower::ServiceBuilder;
//! use synth_tower::PropagateSyntheticLayer;
//!
//! # fn wrap<S>(client: S) -> synth_tower::PropagateSynthetic<S> {
//! let client = ServiceBuilder::new().layer(PropagateSyntheticLayer::new()).service(client);
//! # client }
//! ```

use std::{
    future::Future,
    pin::Pin,
    task::{Context as TaskContext, Poll, ready},
};

use http::{HeaderMap, Request, Response};
use opentelemetry::Context;
use pin_project_lite::pin_project;
use synth_ctx::{
    Trail,
    http::{SYNTHETIC_TRAFFIC_GUARDS, SYNTHETIC_TRAFFIC_PATH, insert_context},
};
use tower_layer::Layer;
use tower_service::Service;

/// Propagates the marker on outgoing requests; see the [module docs](self).
#[derive(Clone, Copy, Debug, Default)]
pub struct PropagateSyntheticLayer {
    _priv: (),
}

impl PropagateSyntheticLayer {
    /// A new layer.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for PropagateSyntheticLayer {
    type Service = PropagateSynthetic<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PropagateSynthetic { inner }
    }
}

/// The service made by [`PropagateSyntheticLayer`].
#[derive(Clone, Debug)]
pub struct PropagateSynthetic<S> {
    inner: S,
}

impl<S> PropagateSynthetic<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        PropagateSynthetic { inner }
    }

    /// A layer for this service.
    pub fn layer() -> PropagateSyntheticLayer {
        PropagateSyntheticLayer::new()
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service, mutably.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

/// Sets the marker of `cx` on `headers`, if `cx` is synthetic; returns the trail to report
/// into. Shared by every client integration.
pub(crate) fn prepare_outgoing(cx: &Context, headers: &mut HeaderMap) -> Option<Trail> {
    insert_context(headers, cx).then(|| Trail::from_context(cx).cloned())?
}

/// Adds what a downstream service reported to `trail`.
pub(crate) fn collect_report(trail: &Trail, headers: &HeaderMap) {
    let text = |name| headers.get(name).and_then(|v: &http::HeaderValue| v.to_str().ok()).unwrap_or("");
    trail.add_downstream(text(&SYNTHETIC_TRAFFIC_PATH), text(&SYNTHETIC_TRAFFIC_GUARDS));
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for PropagateSynthetic<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let trail = Context::map_current(|cx| prepare_outgoing(cx, req.headers_mut()));
        ResponseFuture { future: self.inner.call(req), trail }
    }
}

pin_project! {
    /// Response future of [`PropagateSynthetic`].
    #[derive(Debug)]
    pub struct ResponseFuture<F> {
        #[pin]
        future: F,
        trail: Option<Trail>,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = ready!(this.future.poll(cx));
        if let (Ok(res), Some(trail)) = (&res, this.trail.take()) {
            collect_report(&trail, res.headers());
        }
        Poll::Ready(res)
    }
}
