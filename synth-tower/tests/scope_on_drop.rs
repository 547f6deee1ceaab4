//! Found by a red team (these tests failed before the fix): the server layer polls a synthetic response body inside the
//! request's scope, but the body's other code runs outside it: `size_hint`/`is_end_stream`
//! (hyper calls them to frame the response) and, above all, `Drop`, which is where a streamed
//! body's clean-up runs when the client goes away mid-stream (a load generator's timeout): the
//! clean-up of a synthetic request then sees "real".
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    convert::Infallible,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Empty};
use support::*;
use synth_tower::VerifySyntheticLayer;
use tower::{Layer, ServiceExt, service_fn};

type Log = Arc<Mutex<Vec<(&'static str, bool)>>>;

/// A streamed body that notes, at each call, whether it runs in a synthetic scope.
struct Probe {
    log: Log,
    frames: usize,
}

impl Probe {
    fn note(&self, what: &'static str) {
        self.log.lock().unwrap().push((what, synth_ctx::is_synthetic()));
    }
}

impl Body for Probe {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.note("poll_frame");
        if self.frames == 0 {
            return Poll::Ready(None);
        }
        self.frames -= 1;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"chunk")))))
    }

    fn is_end_stream(&self) -> bool {
        self.note("is_end_stream");
        false
    }

    fn size_hint(&self) -> SizeHint {
        self.note("size_hint");
        SizeHint::default()
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        // E.g. "mark the export aborted", "release the reservation", "count the download".
        self.note("drop");
    }
}

#[tokio::test]
async fn a_synthetic_body_runs_size_hint_and_drop_in_its_scope() {
    let log = Log::default();
    let l = log.clone();
    let handler = service_fn(move |_req: Request<Empty<Bytes>>| {
        let log = l.clone();
        async move { Ok::<_, Infallible>(Response::new(Probe { log, frames: 3 })) }
    });
    let svc = VerifySyntheticLayer::new(verifier()).layer(handler);
    let req = Request::get("/").header("synthetic-traffic", mint("body-1")).body(Empty::new()).unwrap();
    let res = svc.oneshot(req).await.unwrap();
    let mut body = res.into_body();
    let _ = body.size_hint();
    let _ = body.is_end_stream();
    // One chunk, then the client goes away: the body is dropped mid-stream.
    let _ = body.frame().await.unwrap().unwrap();
    drop(body);

    let log = log.lock().unwrap().clone();
    let outside: Vec<_> = log.iter().filter(|(_, synthetic)| !synthetic).map(|(what, _)| *what).collect();
    assert!(outside.is_empty(), "synthetic body code ran as real: {outside:?} (log {log:?})");
}

/// Notes, when dropped, whether it runs in a synthetic scope.
struct DropProbe(Log);

impl Drop for DropProbe {
    fn drop(&mut self) {
        self.0.lock().unwrap().push(("handler drop", synth_ctx::is_synthetic()));
    }
}

#[tokio::test]
async fn a_cancelled_synthetic_handler_is_dropped_in_its_scope() {
    let log = Log::default();
    let l = log.clone();
    let handler = service_fn(move |_req: Request<Empty<Bytes>>| {
        let log = l.clone();
        async move {
            // A compensation guard held across an await (e.g. "release the seat if we stop here").
            let _compensate = DropProbe(log.clone());
            log.lock().unwrap().push(("handler body", synth_ctx::is_synthetic()));
            std::future::pending::<()>().await;
            Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
        }
    });
    let svc = VerifySyntheticLayer::new(verifier()).layer(handler);
    let req = Request::get("/").header("synthetic-traffic", mint("cancel-1")).body(Empty::new()).unwrap();
    // The client times out: the response future is polled once, then dropped.
    let fut = svc.oneshot(req);
    let _ = tokio::time::timeout(std::time::Duration::from_millis(20), fut).await;

    let log = log.lock().unwrap().clone();
    assert_eq!(log.first(), Some(&("handler body", true)), "{log:?}");
    let outside: Vec<_> = log.iter().filter(|(_, synthetic)| !synthetic).map(|(what, _)| *what).collect();
    assert!(outside.is_empty(), "synthetic handler code ran as real: {outside:?} (log {log:?})");
}
