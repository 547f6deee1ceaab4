//! What the mirror and the capture share: sampling, "is this request synthetic?", and the tee
//! that copies a body while it streams to the handler.

use std::{
    cell::Cell,
    pin::Pin,
    task::{Context, Poll},
    time::{SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request};
use http_body::{Body, Frame, SizeHint};
use synth_ctx::Synthetic;

/// Pays for the memory a [`Collector`] takes.
pub(crate) trait Budget {
    /// Takes `n` more bytes if there are that many left.
    fn try_grow(&mut self, n: usize) -> bool;
}

/// No budget beyond the collector's own limit.
#[cfg(feature = "capture")]
#[derive(Debug, Default)]
pub(crate) struct Unbudgeted;

#[cfg(feature = "capture")]
impl Budget for Unbudgeted {
    fn try_grow(&mut self, _n: usize) -> bool {
        true
    }
}

/// An owned copy of a body, up to a limit, paid for from a [`Budget`] as it grows.
#[derive(Debug, Default)]
pub(crate) struct Collector {
    buf: Vec<u8>,
    limit: usize,
    /// The first allocation: the body's exact length when it is known.
    hint: usize,
}

/// Why a [`Collector`] refused bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// Over its limit.
    TooLarge,
    /// The byte budget could not pay for it.
    OverBudget,
}

impl Collector {
    pub(crate) fn new(limit: usize, size_hint: &SizeHint) -> Self {
        let hint = size_hint.exact().map_or(0, |n| usize::try_from(n).unwrap_or(usize::MAX).min(limit));
        Collector { buf: Vec::new(), limit, hint }
    }

    /// Copies `data` in, growing the buffer (and the reservation) when needed.
    pub(crate) fn push(&mut self, data: &[u8], budget: &mut impl Budget) -> Result<(), Refused> {
        let needed = self.buf.len() + data.len();
        if needed > self.limit {
            return Err(Refused::TooLarge);
        }
        if needed > self.buf.capacity() {
            let want = needed.max(self.buf.capacity() * 2).max(self.hint).min(self.limit);
            if !budget.try_grow(want - self.buf.capacity()) {
                return Err(Refused::OverBudget);
            }
            self.buf.reserve_exact(want - self.buf.len());
        }
        self.buf.extend_from_slice(data);
        Ok(())
    }

    pub(crate) fn into_bytes(self) -> Bytes {
        Bytes::from(self.buf)
    }
}

/// What a tee does with the frames it sees.
pub(crate) trait Tap {
    fn data(&mut self, data: &Bytes);
    fn trailers(&mut self, _trailers: &HeaderMap) {}
    fn end(&mut self);
}

/// `impl Body` for a pinned body type with fields `inner: B` (pinned) and `tee: Option<Box<T>>`
/// where `T: Tap`: the inner body's frames, shown to the tap on their way.
macro_rules! tapped_body {
    ($body:ident) => {
        impl<B> http_body::Body for $body<B>
        where
            B: http_body::Body<Data = bytes::Bytes>,
        {
            type Data = bytes::Bytes;
            type Error = B::Error;

            fn poll_frame(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, B::Error>>> {
                let this = self.project();
                $crate::tap::poll_tapped(this.inner, this.tee, cx)
            }

            fn is_end_stream(&self) -> bool {
                self.inner.is_end_stream()
            }

            fn size_hint(&self) -> http_body::SizeHint {
                self.inner.size_hint()
            }
        }
    };
}
pub(crate) use tapped_body;

/// Polls `inner` and shows the frame to the tap, which is dropped when the body fails (a failed
/// body is not a complete copy; dropping the tap counts that).
pub(crate) fn poll_tapped<B, T>(
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
                    // Consumers that trust `is_end_stream` never poll for the final `None`.
                    if inner.is_end_stream() {
                        t.end();
                    }
                } else if let Some(trailers) = frame.trailers_ref() {
                    // Trailers are the last frame; hyper polls no further after them.
                    t.trailers(trailers);
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

/// An owned copy of a header map: every value copied into memory of its own.
///
/// hyper's HTTP/1 parser makes each header value a slice of the connection's read buffer (8 KiB
/// and up, growing to hundreds of KiB): a clone kept in a queue would keep that whole buffer
/// alive, far beyond the few bytes a budget counts for the value. (Header names are already
/// owned: parsers copy custom names.)
pub(crate) fn owned_headers(headers: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(headers.len());
    for (name, value) in headers {
        out.append(name.clone(), owned_value(value));
    }
    out
}

fn owned_value(value: &HeaderValue) -> HeaderValue {
    match HeaderValue::from_bytes(value.as_bytes()) {
        Ok(mut owned) => {
            owned.set_sensitive(value.is_sensitive());
            owned
        }
        // Only a value made with an unchecked constructor can fail the check; hyper's pass it
        // (its parser allows the same bytes). Kept as it is rather than changed or dropped.
        Err(_) => value.clone(),
    }
}

/// An owned copy of a URI, for the same reason as [`owned_headers`]: hyper's request target is a
/// slice of the read buffer too.
#[cfg(feature = "mirror")]
pub(crate) fn owned_uri(uri: &http::Uri) -> http::Uri {
    // `to_string` writes back exactly what was parsed (scheme, authority, path and query), and
    // parsing a `String` takes it as the URI's own bytes.
    http::Uri::try_from(uri.to_string()).unwrap_or_else(|_| uri.clone())
}

/// A header map's size as the budget counts it.
#[cfg(feature = "mirror")]
pub(crate) fn header_bytes(headers: &HeaderMap) -> usize {
    headers.iter().map(|(k, v)| k.as_str().len() + v.len() + 4).sum()
}

/// The share as a threshold on a uniform `u64`: 0 never, `u64::MAX` always.
pub(crate) fn threshold(share: f64) -> u64 {
    if share >= 1.0 {
        u64::MAX
    } else if share > 0.0 {
        // share < 1, so the product is below 2^64.
        (share * 18_446_744_073_709_551_616.0) as u64
    } else {
        0
    }
}

/// A uniform `u64` from a per-thread xorshift: no lock, no shared cache line.
pub(crate) fn uniform() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(seed());
    }
    STATE
        .try_with(|s| {
            let mut x = s.get();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s.set(x);
            x
        })
        .unwrap_or(0)
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));
    h.finish() | 1 // xorshift must not start at 0
}

/// Whether a request is synthetic in any form: a marker header or baggage member (valid or not),
/// a verified marker in its extensions, a refused one that the verify layer removed
/// ([`MarkerRemoved`](crate::MarkerRemoved)), or a synthetic scope around the call.
pub(crate) fn is_synthetic<B>(req: &Request<B>) -> bool {
    req.extensions().get::<Synthetic>().is_some()
        || req.extensions().get::<crate::MarkerRemoved>().is_some()
        || req.headers().contains_key(crate::MARKER_REMOVED_HEADER)
        || synth_ctx::http::find_marker(req.headers()).is_some()
        || synth_ctx::is_synthetic()
}
