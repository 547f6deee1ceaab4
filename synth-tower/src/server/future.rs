use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll, ready},
};

use http::{HeaderValue, Response};
use opentelemetry::Context as OtelContext;
use pin_project_lite::pin_project;
use synth_ctx::{
    Trail,
    http::{SYNTHETIC_TRAFFIC_GUARDS, SYNTHETIC_TRAFFIC_PATH, SYNTHETIC_TRAFFIC_SEEN},
};

use crate::{InScope, ResponseBody, stats::InFlight};

#[derive(Debug)]
pub(crate) struct SyntheticState {
    pub(crate) seen: Option<HeaderValue>,
    pub(crate) trail: Trail,
    /// The service's own name as a header value, sent as the path when nothing went downstream.
    pub(crate) hop_only: Option<HeaderValue>,
    pub(crate) _in_flight: InFlight,
    /// The request's synthetic context, for polling its response body.
    pub(crate) cx: OtelContext,
}

pin_project! {
    /// Response future of [`VerifySynthetic`](super::VerifySynthetic).
    #[derive(Debug)]
    pub struct ResponseFuture<F, B> {
        #[pin]
        kind: Kind<F, B>,
    }
}

pin_project! {
    #[project = KindProj]
    #[derive(Debug)]
    enum Kind<F, B> {
        Real { #[pin] future: F },
        Synthetic { #[pin] future: InScope<F>, state: Option<SyntheticState> },
        Local { response: Option<Response<ResponseBody<B>>> },
    }
}

impl<F, B> ResponseFuture<F, B> {
    pub(crate) fn real(future: F) -> Self {
        ResponseFuture { kind: Kind::Real { future } }
    }

    pub(crate) fn synthetic(future: InScope<F>, state: SyntheticState) -> Self {
        ResponseFuture { kind: Kind::Synthetic { future, state: Some(state) } }
    }

    pub(crate) fn local(response: Response<ResponseBody<B>>) -> Self {
        ResponseFuture { kind: Kind::Local { response: Some(response) } }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Real { future } => Poll::Ready(Ok(ready!(future.poll(cx))?.map(ResponseBody::inner))),
            KindProj::Synthetic { future, state } => {
                let res = ready!(future.poll(cx))?;
                Poll::Ready(Ok(match state.take() {
                    Some(state) => {
                        let mut res = res.map(|body| ResponseBody::scoped(body, state.cx.clone()));
                        report(&mut res, &state);
                        res
                    }
                    // Polled after completion: unreachable through `Future`'s contract.
                    None => res.map(ResponseBody::inner),
                }))
            }
            KindProj::Local { response } => match response.take() {
                Some(res) => Poll::Ready(Ok(res)),
                // Polled after completion: a caller bug; never panic in a server.
                None => Poll::Pending,
            },
        }
    }
}

fn report<B>(res: &mut Response<B>, state: &SyntheticState) {
    let headers = res.headers_mut();
    if let Some(seen) = &state.seen {
        headers.insert(SYNTHETIC_TRAFFIC_SEEN, seen.clone());
    }
    // Trail entries are checked to be `A-Z a-z 0-9 - _ . > , ( )`, valid header values.
    let path = match &state.hop_only {
        Some(hop) if !state.trail.has_downstream() => Some(hop.clone()),
        _ => HeaderValue::try_from(state.trail.path()).ok(),
    };
    if let Some(v) = path
        && !v.is_empty()
    {
        headers.insert(SYNTHETIC_TRAFFIC_PATH, v);
    }
    let guards = state.trail.guards();
    if let Ok(v) = HeaderValue::try_from(guards)
        && !v.is_empty()
    {
        headers.insert(SYNTHETIC_TRAFFIC_GUARDS, v);
    }
}
