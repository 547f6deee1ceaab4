//! Found by a red team (this test failed before the fix): `without_synthetic` hides the synthetic scope but keeps the
//! context's OTel baggage, and the third-party guard relies on it. When the marker is in that
//! baggage (the scope was made with `Synthetic::to_context_with_baggage`, as documented for
//! services that propagate with the SDK's `BaggagePropagator`; or an SDK `BaggagePropagator` ran
//! before the server layer), an OTel propagation layer below the guard sends
//! `baggage: synthetic=<live token>` to the vendor, even with `SyntheticPropagator` last in the
//! composite as the docs recommend.

use bytes::Bytes;
use http::Request;
use http_body_util::Empty;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use opentelemetry::{
    Context,
    baggage::BaggageExt,
    context::FutureExt as _,
    propagation::{TextMapCompositePropagator, TextMapPropagator},
};
use opentelemetry_sdk::propagation::BaggagePropagator;
use synth_ctx::{SyntheticPropagator, Trail, http::HeaderInjector};
use synth_guards::third_party::{HostRule, ThirdPartyGuardLayer};
use tower::{Layer, Service, ServiceExt, util::MapRequestLayer};

use super::{carries_marker, recording_vendor, synthetic};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_marker_leaves_in_otel_baggage_through_the_third_party_guard() {
    let (vendor, seen) = recording_vendor().await;
    let s = synthetic("bag-1");
    // Two ways the marker ends up in the context's baggage.
    let with_baggage = s.to_context_with_baggage(&Context::new());
    let sdk_extracted = {
        // An SDK BaggagePropagator ran before the server layer (e.g. in an OTel tracing layer).
        let parent =
            Context::new().with_baggage([opentelemetry::KeyValue::new("synthetic", s.token().to_owned())]);
        s.to_context_with_trail(&parent, &Trail::new())
    };
    let mut failures = Vec::new();
    for (name, cx) in [("to_context_with_baggage", with_baggage), ("sdk-extracted parent", sdk_extracted)] {
        seen.lock().unwrap().clear();
        // guard -> OTel injection (composite, SyntheticPropagator last) -> hyper client.
        let inject = MapRequestLayer::new(|mut req: Request<Empty<Bytes>>| {
            let propagator = TextMapCompositePropagator::new(vec![
                Box::new(BaggagePropagator::new()),
                Box::new(SyntheticPropagator::new()),
            ]);
            Context::map_current(|cx| propagator.inject_context(cx, &mut HeaderInjector(req.headers_mut())));
            req
        });
        let base = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(HttpConnector::new());
        let mut svc =
            ThirdPartyGuardLayer::new("vendor.bag").default_rule(HostRule::Pass).layer(inject.layer(base));
        let req = Request::get(format!("http://{vendor}/v1/check")).body(Empty::new()).unwrap();
        let res = async { svc.ready().await.unwrap().call(req).await.unwrap() }.with_context(cx).await;
        assert_eq!(res.status(), 200);
        let recorded = seen.lock().unwrap().clone();
        assert_eq!(recorded.len(), 1);
        if carries_marker(&recorded[0]) {
            failures.push(format!("{name}: the vendor got the live marker: {:?}", recorded[0]));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
