//! [`InScope`]: a future or an HTTP body that is polled, asked and **dropped** inside an
//! OpenTelemetry context.
//!
//! OpenTelemetry's `WithContext` enters its context on each poll only. Code of a synthetic request
//! also runs when its future is dropped (a client that gave up: clean-up on cancellation) and when
//! a body is asked its size or dropped; outside the scope that code would see "real" and its
//! effects would be real. The server layer wraps a synthetic request's future and body in this;
//! the third-party guard wraps its client's future in a context without the marker.
//!
//! # Example
//!
//! ```
//! use opentelemetry::Context;
//! use synth_tower::InScope;
//!
//! # let keys = synth_ctx::KeyRing::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8").unwrap();
//! # let synthetic = synth_ctx::Signer::new(keys).mint_synthetic(synth_ctx::Origin::Load, &synth_ctx::RunId::new("r1").unwrap(), std::time::Duration::from_secs(60));
//! struct OnDrop;
//! impl Drop for OnDrop {
//!     fn drop(&mut self) {
//!         // Clean-up on cancellation: still synthetic.
//!         assert!(synth_ctx::is_synthetic());
//!     }
//! }
//! let cx = synthetic.to_context(&Context::current());
//! let guard = OnDrop;
//! let future = InScope::new(async move { let _keep = guard; std::future::pending::<()>().await }, cx);
//! drop(future); // never polled, dropped: its drop ran in the synthetic scope
//! ```

use std::{
    fmt,
    future::Future,
    pin::Pin,
    task::{Context as TaskContext, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use opentelemetry::Context;
use pin_project_lite::pin_project;

pin_project! {
    /// `T` (a future or an HTTP body) polled, asked and dropped inside a context; see the
    /// [module docs](self).
    pub struct InScope<T> {
        // `None` only while it is being dropped.
        #[pin]
        inner: Option<T>,
        cx: Context,
    }

    impl<T> PinnedDrop for InScope<T> {
        fn drop(this: Pin<&mut Self>) {
            let mut this = this.project();
            let _scope = this.cx.clone().attach();
            this.inner.set(None);
        }
    }
}

impl<T> InScope<T> {
    /// `inner`, in `cx`.
    pub fn new(inner: T, cx: Context) -> Self {
        InScope { inner: Some(inner), cx }
    }

    /// The context it runs in.
    pub fn context(&self) -> &Context {
        &self.cx
    }
}

impl<T: fmt::Debug> fmt::Debug for InScope<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InScope").field("inner", &self.inner).finish_non_exhaustive()
    }
}

impl<F: Future> Future for InScope<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<F::Output> {
        let this = self.project();
        let _scope = this.cx.clone().attach();
        match this.inner.as_pin_mut() {
            Some(future) => future.poll(cx),
            // Only while being dropped; never polled then.
            None => Poll::Pending,
        }
    }
}

impl<B: Body<Data = Bytes>> Body for InScope<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let _scope = this.cx.clone().attach();
        match this.inner.as_pin_mut() {
            Some(body) => body.poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        let _scope = self.cx.clone().attach();
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        let _scope = self.cx.clone().attach();
        self.inner.as_ref().map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}
