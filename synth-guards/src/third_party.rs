//! The third-party HTTP guard: a tower client layer with per-host rules for synthetic traffic
//! (feature `http`).
//!
//! For a request made inside a synthetic scope, the rule of the target host decides:
//! [`HostRule::Block`] answers with a canned response and never calls out, [`HostRule::Reroute`]
//! sends the request to a sandbox base URL instead, [`HostRule::Pass`] lets it through. Hosts
//! without a rule get the default rule, which blocks (fail closed). Real traffic is not rerouted or
//! blocked.
//!
//! **The marker never leaves through this guard.** Whatever the rule, and for real requests too,
//! the `synthetic-traffic` header and the `synthetic` baggage member are stripped, and the inner
//! client is called outside the synthetic scope, so a propagating layer below this one adds
//! nothing: a vendor or sandbox never holds a live marker it could replay at your edge. Its
//! answers' `synthetic-traffic-path`/`-guards`/`-seen` headers are dropped too, so a third party
//! cannot write itself into the request's path report (and so make a preflight pass).
//!
//! A **real** request (no synthetic scope) that carries a marker is context lost: a task that
//! lost its scope is sending synthetic work. The third party is not called; the answer is
//! `500` with `synthetic-traffic-context-lost: 1` (never a success), and the guard counts it.
//!
//! # Example
//!
//! ```
//! use synth_guards::third_party::{HostRule, ThirdPartyGuardLayer};
//!
//! let layer = ThirdPartyGuardLayer::new("fraud-check")
//!     .rule("api.fraudcheck.example", HostRule::reroute("http://127.0.0.1:9911/sandbox")?)
//!     .rule("*.stripe.com", HostRule::block(402, r#"{"error":"synthetic"}"#))
//!     .rule("geo.internal", HostRule::Pass);
//! # Ok::<(), http::uri::InvalidUri>(())
//! ```

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri, header, uri::PathAndQuery};
use opentelemetry::Context as OtelContext;
use pin_project_lite::pin_project;
use synth_ctx::http::{
    SYNTHETIC_TRAFFIC_GUARDS, SYNTHETIC_TRAFFIC_PATH, SYNTHETIC_TRAFFIC_SEEN, find_marker, remove_marker,
};
use synth_tower::InScope;
use tower_layer::Layer;
use tower_service::Service;

use crate::Guard;

/// What happens to a synthetic request to a host.
#[derive(Clone, Debug)]
pub enum HostRule {
    /// Answer with this status and body; never call the host.
    Block {
        /// The canned status.
        status: StatusCode,
        /// The canned body (sent as `application/json` if it starts with `{` or `[`).
        body: Bytes,
    },
    /// Send the request to this base URL instead (its path is prefixed to the request's).
    Reroute {
        /// Scheme, authority and optional path prefix of the sandbox.
        base: Uri,
    },
    /// Let it through unchanged.
    Pass,
}

impl HostRule {
    /// A block rule. An invalid status code becomes 503.
    pub fn block(status: u16, body: impl Into<Bytes>) -> Self {
        HostRule::Block {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            body: body.into(),
        }
    }

    /// A reroute rule to `base` (e.g. `http://127.0.0.1:9911/sandbox`).
    pub fn reroute(base: &str) -> Result<Self, http::uri::InvalidUri> {
        Ok(HostRule::Reroute { base: base.parse()? })
    }
}

#[derive(Clone, Debug)]
struct Rules {
    exact: Vec<(String, HostRule)>,
    suffix: Vec<(String, HostRule)>,
    default: HostRule,
}

impl Rules {
    fn for_host(&self, host: &str) -> &HostRule {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if let Some((_, r)) = self.exact.iter().find(|(h, _)| *h == host) {
            return r;
        }
        self.suffix
            .iter()
            .filter(|(s, _)| {
                host.len() > s.len()
                    && host.ends_with(s.as_str())
                    && host.as_bytes()[host.len() - s.len() - 1] == b'.'
            })
            .max_by_key(|(s, _)| s.len())
            .map_or(&self.default, |(_, r)| r)
    }
}

/// Applies [`HostRule`]s to synthetic outgoing requests; see the [module docs](self).
#[derive(Clone, Debug)]
pub struct ThirdPartyGuardLayer {
    guard: Guard,
    rules: Arc<Rules>,
}

impl ThirdPartyGuardLayer {
    /// A layer whose guard is called `name`, blocking every host until rules say otherwise.
    pub fn new(name: &str) -> Self {
        ThirdPartyGuardLayer {
            guard: Guard::new(name),
            rules: Arc::new(Rules {
                exact: Vec::new(),
                suffix: Vec::new(),
                default: HostRule::block(503, "synthetic request blocked by synth-guards\n"),
            }),
        }
    }

    fn rules(&mut self) -> &mut Rules {
        Arc::make_mut(&mut self.rules)
    }

    /// The rule for `host` (`api.example.com`), or for every subdomain (`*.example.com`).
    pub fn rule(mut self, host: &str, rule: HostRule) -> Self {
        let host = host.trim().trim_end_matches('.').to_ascii_lowercase();
        match host.strip_prefix("*.") {
            Some(suffix) => self.rules().suffix.push((suffix.to_owned(), rule)),
            None => self.rules().exact.push((host, rule)),
        }
        self
    }

    /// The rule for hosts without one (default: block with 503).
    pub fn default_rule(mut self, rule: HostRule) -> Self {
        self.rules().default = rule;
        self
    }

    /// Counts into `guard` instead (e.g. one from the service's own
    /// [`GuardRegistry`](crate::GuardRegistry)); the layer takes the guard's name.
    pub fn with_guard(mut self, guard: Guard) -> Self {
        self.guard = guard;
        self
    }

    /// The guard, for its counters.
    pub fn guard(&self) -> &Guard {
        &self.guard
    }
}

impl<S> Layer<S> for ThirdPartyGuardLayer {
    type Service = ThirdPartyGuard<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ThirdPartyGuard { inner, guard: self.guard.clone(), rules: self.rules.clone() }
    }
}

/// The service made by [`ThirdPartyGuardLayer`].
#[derive(Clone)]
pub struct ThirdPartyGuard<S> {
    inner: S,
    guard: Guard,
    rules: Arc<Rules>,
}

impl<S: fmt::Debug> fmt::Debug for ThirdPartyGuard<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ThirdPartyGuard")
            .field("inner", &self.inner)
            .field("guard", &self.guard.name())
            .finish()
    }
}

fn reroute(uri: &Uri, base: &Uri) -> Option<Uri> {
    let prefix = base.path().trim_end_matches('/');
    let rest = uri.path_and_query().map_or("/", PathAndQuery::as_str);
    let pq: PathAndQuery = format!("{prefix}{rest}").parse().ok()?;
    let mut parts = base.clone().into_parts();
    parts.path_and_query = Some(pq);
    Uri::from_parts(parts).ok()
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for ThirdPartyGuard<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<GuardBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResB>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<ReqB>) -> Self::Future {
        // The marker never leaves the trust boundary, whatever the rule.
        let carried_marker = find_marker(req.headers()).is_some();
        if carried_marker {
            remove_marker(req.headers_mut());
        }
        let Some(synthetic) = synth_ctx::current() else {
            if carried_marker {
                self.guard.context_lost("a real request to a third party carried a synthetic-traffic marker");
                return ResponseFuture::local(context_lost_response());
            }
            self.guard.executed();
            return ResponseFuture::inner(self.call_unmarked(req));
        };
        let host = req.uri().host().unwrap_or("").to_owned();
        match self.rules.for_host(&host) {
            HostRule::Pass => ResponseFuture::inner(self.call_unmarked(req)),
            HostRule::Block { status, body } => {
                self.guard.suppressed(&synthetic);
                tracing::debug!(%host, "synthetic call to a third party blocked");
                let mut res = Response::new(GuardBody::local(body.clone()));
                *res.status_mut() = *status;
                let json = body.first().is_some_and(|b| *b == b'{' || *b == b'[');
                let ct = if json { "application/json" } else { "text/plain; charset=utf-8" };
                res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
                res.headers_mut().insert("synthetic-traffic-blocked", HeaderValue::from_static("1"));
                ResponseFuture::local(res)
            }
            HostRule::Reroute { base } => match reroute(req.uri(), base) {
                Some(uri) => {
                    self.guard.suppressed(&synthetic);
                    tracing::debug!(%host, to = %uri, "synthetic call to a third party rerouted to its sandbox");
                    *req.uri_mut() = uri;
                    // The client sets Host from the new URI.
                    req.headers_mut().remove(header::HOST);
                    ResponseFuture::inner(self.call_unmarked(req))
                }
                None => {
                    self.guard.suppressed(&synthetic);
                    let mut res = Response::new(GuardBody::local(Bytes::from_static(
                        b"sandbox URL could not be built\n",
                    )));
                    *res.status_mut() = StatusCode::BAD_GATEWAY;
                    ResponseFuture::local(res)
                }
            },
        }
    }
}

impl<S> ThirdPartyGuard<S> {
    /// Calls the inner client outside the synthetic scope, and polls and drops its future there
    /// too: a propagating layer below this one (or one that calls on from its future, such as a
    /// retry) then adds no marker and reports into no trail.
    fn call_unmarked<R>(&mut self, req: R) -> InScope<S::Future>
    where
        S: Service<R>,
    {
        let outside = OtelContext::map_current(synth_ctx::without_synthetic);
        let future = {
            let _outside = outside.clone().attach();
            self.inner.call(req)
        };
        InScope::new(future, outside)
    }
}

fn context_lost_response<B>() -> Response<GuardBody<B>> {
    let mut res = Response::new(GuardBody::local(Bytes::from_static(
        b"refused by synth-guards: a real request carried a synthetic-traffic marker (context lost); \
          propagate the synthetic scope to the task that makes this call\n",
    )));
    *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
    res.headers_mut().insert("synthetic-traffic-context-lost", HeaderValue::from_static("1"));
    res
}

/// A third party's answer never reports into the request's path or guards.
fn drop_reports(headers: &mut HeaderMap) {
    for name in [SYNTHETIC_TRAFFIC_PATH, SYNTHETIC_TRAFFIC_GUARDS, SYNTHETIC_TRAFFIC_SEEN] {
        headers.remove(name);
    }
}

pin_project! {
    /// Response future of [`ThirdPartyGuard`].
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
        Inner { #[pin] future: InScope<F> },
        Local { response: Option<Response<GuardBody<B>>> },
    }
}

impl<F, B> ResponseFuture<F, B> {
    fn inner(future: InScope<F>) -> Self {
        ResponseFuture { kind: Kind::Inner { future } }
    }

    fn local(response: Response<GuardBody<B>>) -> Self {
        ResponseFuture { kind: Kind::Local { response: Some(response) } }
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<GuardBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Inner { future } => {
                let mut res = ready!(future.poll(cx))?;
                drop_reports(res.headers_mut());
                Poll::Ready(Ok(res.map(GuardBody::inner)))
            }
            KindProj::Local { response } => match response.take() {
                Some(res) => Poll::Ready(Ok(res)),
                None => Poll::Pending,
            },
        }
    }
}

/// The third party's body, or the canned body of a blocked request: synth-tower's
/// [`ResponseBody`](synth_tower::ResponseBody), the same "inner or local" body its server layer
/// answers with.
pub type GuardBody<B> = synth_tower::ResponseBody<B>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_matching_and_reroute() {
        let layer = ThirdPartyGuardLayer::new("t")
            .rule("API.Example.com.", HostRule::Pass)
            .rule("*.stripe.com", HostRule::block(402, "x"))
            .rule("*.eu.stripe.com", HostRule::Pass);
        let r = &layer.rules;
        assert!(matches!(r.for_host("api.example.com"), HostRule::Pass));
        assert!(matches!(r.for_host("x.api.example.com"), HostRule::Block { .. }), "exact means exact");
        assert!(
            matches!(r.for_host("api.stripe.com"), HostRule::Block { status, .. } if status.as_u16() == 402)
        );
        assert!(matches!(r.for_host("a.eu.stripe.com"), HostRule::Pass), "longest suffix wins");
        assert!(matches!(r.for_host("stripe.com"), HostRule::Block { status, .. } if status.as_u16() == 503));
        assert!(
            matches!(r.for_host("evilstripe.com"), HostRule::Block { status, .. } if status.as_u16() == 503)
        );

        let base: Uri = "http://127.0.0.1:9/sandbox/".parse().unwrap();
        let to = reroute(&"https://api.x.com/v1/check?id=3".parse().unwrap(), &base).unwrap();
        assert_eq!(to.to_string(), "http://127.0.0.1:9/sandbox/v1/check?id=3");
    }
}
