use std::{
    fmt,
    sync::Arc,
    task::{Context as TaskContext, Poll},
};

use http::{HeaderMap, HeaderValue, Request, Response};
use opentelemetry::Context;
use synth_ctx::{
    Origin, Synthetic, Token, Trail,
    http::{FoundMarker, SYNTHETIC_TRAFFIC, find_marker, remove_marker},
    propagation::with_incoming_baggage_lines,
};
use tower_service::Service;

use super::{
    InvalidMarkerPolicy, ResponseFuture, VerifySyntheticLayer, future::SyntheticState, layer::Config,
};
use crate::{ShedCause, response};

/// The service made by [`VerifySyntheticLayer`].
#[derive(Clone)]
pub struct VerifySynthetic<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> VerifySynthetic<S> {
    pub(crate) fn from_config(inner: S, config: Arc<Config>) -> Self {
        VerifySynthetic { inner, config }
    }

    /// Wraps `inner` with the given layer's settings.
    pub fn new(inner: S, layer: &VerifySyntheticLayer) -> Self {
        tower_layer::Layer::layer(layer, inner)
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

    fn shed_cause(&self, synthetic: &Synthetic) -> Option<ShedCause> {
        let c = &self.config;
        if c.kill.is_stopped() {
            Some(ShedCause::KillSwitch)
        } else if c.shed_when.as_ref().is_some_and(|p| p(synthetic)) {
            Some(ShedCause::Predicate)
        } else {
            None
        }
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for VerifySynthetic<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<crate::ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResB>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        let config = &self.config;
        let (verified, copy_or_replay) = match find_marker(req.headers()) {
            None => {
                config.stats.real();
                return ResponseFuture::real(self.inner.call(req));
            }
            // Refuses conflicting markers (lines or members that disagree) as well.
            Some(found) => match found.verify(&config.verifier) {
                Ok(synthetic) => (Ok(synthetic), false),
                Err(error) => {
                    let claims = claims_copy_or_replay(&found, req.headers());
                    (Err(error), claims)
                }
            },
        };
        let synthetic = match verified {
            Ok(synthetic) => synthetic,
            Err(error) => {
                config.stats.rejected(&error);
                tracing::debug!(reason = error.reason(), "synthetic-traffic marker refused");
                return match config.policy {
                    // A refused marker that reads `dark` or `replay` is refused under either
                    // policy: such a request repeats one a real user already made (a mirror's
                    // copy, a replayed capture), so serving it as real would repeat its effects
                    // (a charge, an email). A real user's request never carries one.
                    InvalidMarkerPolicy::Reject | InvalidMarkerPolicy::TreatAsReal if copy_or_replay => {
                        ResponseFuture::local(response::refused(&error, response::is_grpc(&req)))
                    }
                    InvalidMarkerPolicy::Reject => {
                        ResponseFuture::local(response::refused(&error, response::is_grpc(&req)))
                    }
                    InvalidMarkerPolicy::TreatAsReal => {
                        // Strip it so no later hop sees a marker that was not honoured here,
                        // and say so: the request is served as real, but it came marked (a
                        // replay, a load test, a copy), so it is never recorded or mirrored.
                        remove_marker(req.headers_mut());
                        req.extensions_mut().insert(crate::MarkerRemoved(()));
                        // The same, for the next hop: a service behind this one (a gateway that
                        // treats refused markers as real) must not record or copy it either.
                        req.headers_mut()
                            .insert(crate::MARKER_REMOVED_HEADER, http::HeaderValue::from_static("1"));
                        config.stats.treated_as_real();
                        ResponseFuture::real(self.inner.call(req))
                    }
                };
            }
        };

        let shed = self.shed_cause(&synthetic);
        let in_flight = match shed {
            None => config.stats.try_enter(config.max_in_flight),
            Some(_) => None,
        };
        let Some(in_flight) = in_flight else {
            let cause = shed.unwrap_or(ShedCause::InFlightCap);
            config.stats.shed(cause);
            return ResponseFuture::local(response::shed(config.retry_after_secs, response::is_grpc(&req)));
        };
        config.stats.accepted(synthetic.origin());

        let span = tracing::Span::current();
        span.record("synthetic", true);
        span.record("synthetic.origin", synthetic.origin().as_str());
        span.record("synthetic.run", synthetic.run().as_str());

        let trail = match &config.service_name {
            Some(name) => Trail::starting_at(name),
            None => Trail::new(),
        };
        // Run ids are `A-Z a-z 0-9 - _`, always a valid header value.
        let seen = HeaderValue::from_str(synthetic.run().as_str()).ok();
        // Incoming baggage members join the scope's context, so the client layer sends them on.
        // Every `baggage` line, as one list.
        let baggage = req.headers().get_all(synth_ctx::http::BAGGAGE);
        let parent = match baggage.iter().next() {
            Some(_) => Context::map_current(|cx| {
                with_incoming_baggage_lines(cx, baggage.iter().filter_map(|v| v.to_str().ok()))
            }),
            None => Context::current(),
        };
        let cx = synthetic.to_context_with_trail(&parent, &trail);
        req.extensions_mut().insert(synthetic);
        // `call` itself may already run handler code (tower services often do), so it runs in
        // the scope too, not only the future it returns.
        let future = {
            let _guard = cx.clone().attach();
            self.inner.call(req)
        };
        let state = SyntheticState {
            seen,
            trail,
            hop_only: config.hop_header.clone(),
            _in_flight: in_flight,
            cx: cx.clone(),
        };
        ResponseFuture::synthetic(crate::InScope::new(future, cx), state)
    }
}

/// Whether a refused marker says (unverified: its origin field only read) that the request is a
/// mirror's copy or a replay. With conflicting header lines, whether any line says so.
fn claims_copy_or_replay(found: &FoundMarker<'_>, headers: &HeaderMap) -> bool {
    let reads = |text: &str| {
        Token::parse(text.trim()).is_ok_and(|t| matches!(t.origin(), Origin::Dark | Origin::Replay))
    };
    if found.is_conflicting() {
        headers.get_all(SYNTHETIC_TRAFFIC).iter().any(|v| v.to_str().is_ok_and(reads))
    } else {
        reads(&found.value)
    }
}

impl<S: fmt::Debug> fmt::Debug for VerifySynthetic<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifySynthetic").field("inner", &self.inner).field("config", &self.config).finish()
    }
}
