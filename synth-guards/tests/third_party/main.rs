//! The marker never leaves through the third-party guard, and a vendor's answer never reports
//! into the request's trail: a recording vendor over real sockets, with the propagating client
//! layer below the guard and above it, a layer that calls on from its future (`lazy_layer`), and
//! OpenTelemetry baggage (`otel_baggage`).
#![cfg(feature = "http")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, http::HeaderMap, routing::any};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use opentelemetry::{Context, context::FutureExt as _};
use synth_ctx::{KeyRing, Origin, RunId, Signer, Synthetic, Trail};
use synth_guards::third_party::{HostRule, ThirdPartyGuardLayer};
use synth_tower::PropagateSyntheticLayer;
use tokio::net::TcpListener;
use tower::{Layer, Service, ServiceExt, util::BoxCloneService};

mod lazy_layer;
mod otel_baggage;

type Seen = Arc<Mutex<Vec<HeaderMap>>>;

fn synthetic(run: &str) -> Synthetic {
    let keys = KeyRing::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8").unwrap();
    Signer::new(keys).mint_synthetic(Origin::Load, &RunId::new(run).unwrap(), Duration::from_secs(600))
}

/// A vendor that records every request's headers and tries to write itself into the caller's
/// path report.
async fn recording_vendor() -> (SocketAddr, Seen) {
    let seen = Seen::default();
    let s = seen.clone();
    let app = Router::new().fallback(any(move |headers: HeaderMap| {
        let s = s.clone();
        async move {
            s.lock().unwrap().push(headers);
            (
                [
                    ("synthetic-traffic-path", "vendor>evil"),
                    ("synthetic-traffic-guards", "payment.charge,email"),
                    ("synthetic-traffic-seen", "r"),
                ],
                "ok",
            )
        }
    }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

type HttpService = BoxCloneService<Request<Empty<Bytes>>, (u16, HeaderMap), String>;

/// The guard with `rule` for every host, stacked with the propagating layer below (`inner`) or
/// above it.
fn client(rule: HostRule, propagate_inside: bool) -> HttpService {
    let guard = ThirdPartyGuardLayer::new("vendor.test").default_rule(rule);
    let base = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(HttpConnector::new());
    let map = |res: http::Response<_>| (res.status().as_u16(), res.headers().clone());
    if propagate_inside {
        let svc = guard.layer(PropagateSyntheticLayer::new().layer(base));
        BoxCloneService::new(svc.map_response(map).map_err(|e| e.to_string()))
    } else {
        let svc = PropagateSyntheticLayer::new().layer(guard.layer(base));
        BoxCloneService::new(svc.map_response(map).map_err(|e| e.to_string()))
    }
}

fn request(addr: SocketAddr, extra: &[(&str, &str)]) -> Request<Empty<Bytes>> {
    let mut b = Request::get(format!("http://{addr}/v1/check"));
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    b.body(Empty::new()).unwrap()
}

fn carries_marker(headers: &HeaderMap) -> bool {
    headers.contains_key("synthetic-traffic")
        || headers.get_all("baggage").iter().any(|v| v.to_str().unwrap_or("").contains("synthetic="))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_marker_reaches_a_vendor_or_sandbox_under_any_rule_or_stacking() {
    let (vendor, seen) = recording_vendor().await;
    let s = synthetic("vendors-1");
    for propagate_inside in [true, false] {
        for rule in [HostRule::Pass, HostRule::reroute(&format!("http://{vendor}/sandbox")).unwrap()] {
            seen.lock().unwrap().clear();
            let mut svc = client(rule.clone(), propagate_inside);
            let trail = Trail::starting_at(&Arc::from("orders"));
            let cx = s.to_context_with_trail(&Context::current(), &trail);
            // The request also carries the marker itself, as a handler forwarding its incoming
            // headers would, plus a baggage member that is not the marker.
            let req = request(
                vendor,
                &[
                    ("synthetic-traffic", s.token()),
                    ("baggage", &format!("tenant=7,synthetic={}", s.token())),
                ],
            );
            let (status, answer) =
                async { svc.ready().await.unwrap().call(req).await.unwrap() }.with_context(cx).await;
            assert_eq!(status, 200, "{rule:?}");
            let recorded = seen.lock().unwrap().clone();
            assert_eq!(recorded.len(), 1, "{rule:?}");
            assert!(
                !carries_marker(&recorded[0]),
                "{rule:?}, propagate inside {propagate_inside}: {:?}",
                recorded[0]
            );
            assert_eq!(recorded[0].get("baggage").unwrap(), "tenant=7", "other members are kept");
            // The vendor's report headers are dropped, and nothing of them reached the trail.
            assert!(!answer.contains_key("synthetic-traffic-path"), "{answer:?}");
            assert!(!answer.contains_key("synthetic-traffic-guards"), "{answer:?}");
            assert_eq!(trail.path(), "orders", "{rule:?}: the vendor wrote into the path");
            // Pass is the real effect of a synthetic call: not a suppression, so not reported.
            let own = if matches!(rule, HostRule::Pass) { "" } else { "vendor.test" };
            assert_eq!(trail.guards(), own, "{rule:?}: only the guard itself may be reported");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_request_carrying_a_marker_is_refused_as_context_lost() {
    let (vendor, seen) = recording_vendor().await;
    let s = synthetic("lost-1");
    let layer = ThirdPartyGuardLayer::new("vendor.lost.test").default_rule(HostRule::Pass);
    let guard = layer.guard().clone();
    let base = Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(HttpConnector::new());
    let svc = layer.layer(base);
    for marker in
        [("synthetic-traffic", s.token().to_owned()), ("baggage", format!("synthetic={}", s.token()))]
    {
        // No synthetic scope: a task that lost it, forwarding the incoming headers.
        let res = svc.clone().oneshot(request(vendor, &[(marker.0, &marker.1)])).await.unwrap();
        assert_eq!(res.status(), 500, "{marker:?}");
        assert_eq!(res.headers().get("synthetic-traffic-context-lost").unwrap(), "1");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert!(String::from_utf8_lossy(&body).contains("context lost"));
    }
    assert!(seen.lock().unwrap().is_empty(), "the vendor was called");
    let stats = guard.stats();
    assert_eq!((stats.context_lost, stats.executed, stats.suppressed), (2, 0, 0));

    // A plain real request still goes through.
    let res = svc.clone().oneshot(request(vendor, &[])).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(guard.stats().executed, 1);
}
