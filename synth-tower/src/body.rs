//! The response body of synth's layers: the inner service's body, or a short one of the
//! layer's own (a refusal, a shed answer, a guard's canned answer).
//!
//! A synthetic request's body is polled **inside its synthetic scope**: a streamed body (axum's
//! `Body::from_stream`, server-sent events, a tonic server stream) produces its items after the
//! handler's future has returned, so without this the code that makes them would see "real".

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use opentelemetry::Context as OtelContext;
use pin_project_lite::pin_project;

use crate::InScope;

pin_project! {
    /// The inner service's body, or a short body written by the layer itself (a refusal, a shed
    /// answer, or, in synth-guards' third-party guard, the canned answer to a blocked call).
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<B> {
        Inner { #[pin] body: B },
        // A synthetic request's body: polled, asked and dropped in the request's context.
        Scoped { #[pin] body: InScope<B> },
        Local { bytes: Option<Bytes> },
    }
}

impl<B> ResponseBody<B> {
    /// The inner service's body, passed through.
    pub fn inner(body: B) -> Self {
        ResponseBody { kind: Kind::Inner { body } }
    }

    /// The inner service's body, polled inside `cx` (a synthetic request's context) on every
    /// poll, so code that produces a streamed body stays in the request's synthetic scope.
    pub(crate) fn scoped(body: B, cx: OtelContext) -> Self {
        ResponseBody { kind: Kind::Scoped { body: InScope::new(body, cx) } }
    }

    /// A complete body of the layer's own.
    ///
    /// ```
    /// use http_body::Body as _;
    /// let body = synth_tower::ResponseBody::<http_body_util::Empty<bytes::Bytes>>::local("refused");
    /// assert_eq!(body.size_hint().exact(), Some(7));
    /// ```
    pub fn local(bytes: impl Into<Bytes>) -> Self {
        let bytes = bytes.into();
        ResponseBody { kind: Kind::Local { bytes: (!bytes.is_empty()).then_some(bytes) } }
    }
}

impl<B> Body for ResponseBody<B>
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
            KindProj::Inner { body } => body.poll_frame(cx),
            KindProj::Scoped { body } => body.poll_frame(cx),
            KindProj::Local { bytes } => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { body } => body.is_end_stream(),
            Kind::Scoped { body } => body.is_end_stream(),
            Kind::Local { bytes } => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { body } => body.size_hint(),
            Kind::Scoped { body } => body.size_hint(),
            Kind::Local { bytes } => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
        }
    }
}
