//! Found by a red team (this test failed before the fix): the third-party guard calls the inner client outside the
//! synthetic scope, but polls the inner future *inside* it. Any layer between the guard and the
//! propagating layer that calls the next service from its future (a retry layer re-calling on
//! failure, an async adapter built with `service_fn`, a boxed async middleware) makes the
//! propagating layer run in the synthetic scope: the live marker goes to the vendor, and the
//! vendor's `synthetic-traffic-path` is collected into the trail before the guard can drop it.

use std::sync::Arc;

use bytes::Bytes;
use http::Request;
use http_body_util::Empty;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use opentelemetry::{Context, context::FutureExt as _};
use synth_ctx::Trail;
use synth_guards::third_party::{HostRule, ThirdPartyGuardLayer};
use synth_tower::PropagateSyntheticLayer;
use tower::{Layer, Service, ServiceExt, service_fn};

use super::{carries_marker, recording_vendor, synthetic};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazy_layer_below_the_guard_sends_no_marker_to_the_vendor() {
    let (vendor, seen) = recording_vendor().await;
    let s = synthetic("lazy-1");
    let mut failures = Vec::new();
    for rule in [HostRule::Pass, HostRule::reroute(&format!("http://{vendor}/sandbox")).unwrap()] {
        seen.lock().unwrap().clear();
        // guard -> async adapter (calls the next service from its future, like a retry layer's
        // second attempt) -> PropagateSyntheticLayer -> hyper client.
        let propagating = PropagateSyntheticLayer::new()
            .layer(Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(HttpConnector::new()));
        let lazy = service_fn(move |req: Request<Empty<Bytes>>| {
            let next = propagating.clone();
            async move { next.oneshot(req).await }
        });
        let mut svc = ThirdPartyGuardLayer::new("vendor.lazy").default_rule(rule.clone()).layer(lazy);

        let trail = Trail::starting_at(&Arc::from("orders"));
        let cx = s.to_context_with_trail(&Context::current(), &trail);
        let req = Request::get(format!("http://{vendor}/v1/check")).body(Empty::new()).unwrap();
        let res = async { svc.ready().await.unwrap().call(req).await.unwrap() }.with_context(cx).await;
        assert_eq!(res.status(), 200, "{rule:?}");

        let recorded = seen.lock().unwrap().clone();
        assert_eq!(recorded.len(), 1, "{rule:?}");
        if carries_marker(&recorded[0]) {
            failures.push(format!("{rule:?}: the vendor got the live marker: {:?}", recorded[0]));
        }
        if trail.path() != "orders" || !trail.guards().ends_with("vendor.lazy") && !trail.guards().is_empty()
        {
            failures.push(format!(
                "{rule:?}: the vendor wrote into the report: path {:?}, guards {:?}",
                trail.path(),
                trail.guards()
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
