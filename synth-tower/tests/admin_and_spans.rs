//! The admin router and the span attributes exported through the OpenTelemetry SDK.
#![cfg(feature = "axum")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

mod support;

use axum::{Router, body::Body, routing::get};
use http::Request;
use opentelemetry::{Value, trace::TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use support::*;
use synth_tower::{VerifySyntheticLayer, admin::admin_router};
use tower::ServiceExt;
use tower_http::trace::TraceLayer;
use tracing_subscriber::layer::SubscriberExt;

#[tokio::test]
async fn admin_router_stops_resumes_and_reports_behind_a_bearer_token() {
    let layer = VerifySyntheticLayer::new(verifier());
    let admin = serve(admin_router(layer.kill_switch().clone(), layer.stats().clone(), "t0ken")).await;
    let app = serve(Router::new().route("/", get(|| async { "ok" })).layer(layer)).await;
    let client = client();
    let token = mint("adm");

    let post = |path: &'static str, bearer: Option<&'static str>| {
        let client = client.clone();
        async move {
            let mut req = Request::post(format!("http://{admin}{path}"));
            if let Some(b) = bearer {
                req = req.header("authorization", format!("Bearer {b}"));
            }
            let res = client.oneshot(req.body(Default::default()).unwrap()).await.unwrap();
            res.status().as_u16()
        }
    };
    assert_eq!(post("/synthetic/stop", None).await, 401);
    assert_eq!(post("/synthetic/stop", Some("wrong")).await, 401);
    assert_eq!(fetch(&client, app, "/", &[("synthetic-traffic", &token)]).await.status.as_u16(), 200);

    assert_eq!(post("/synthetic/stop", Some("t0ken")).await, 200);
    assert_eq!(fetch(&client, app, "/", &[("synthetic-traffic", &token)]).await.status.as_u16(), 503);
    assert_eq!(fetch(&client, app, "/", &[]).await.status.as_u16(), 200);

    let status = fetch(&client, admin, "/synthetic/status", &[("authorization", "Bearer t0ken")]).await;
    let json: serde_json::Value = serde_json::from_str(&status.body).unwrap();
    assert_eq!(json["stopped"], true);
    assert_eq!(json["stats"]["accepted"]["load"], 1);
    assert_eq!(json["stats"]["shed"]["kill_switch"], 1);
    assert_eq!(json["stats"]["real"], 1);
    assert_eq!(fetch(&client, admin, "/synthetic/status", &[]).await.status.as_u16(), 401);

    assert_eq!(post("/synthetic/resume", Some("t0ken")).await, 200);
    assert_eq!(fetch(&client, app, "/", &[("synthetic-traffic", &token)]).await.status.as_u16(), 200);

    let locked = serve(admin_router(Default::default(), Default::default(), "")).await;
    let res = fetch(&client, locked, "/synthetic/status", &[("authorization", "Bearer ")]).await;
    assert_eq!(res.status.as_u16(), 401, "an empty admin token locks every route");
}

fn attribute(span: &opentelemetry_sdk::trace::SpanData, key: &str) -> Option<Value> {
    span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.clone())
}

#[tokio::test]
async fn exported_spans_carry_the_synthetic_attributes_in_either_layer_order() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _default = tracing::subscriber::set_default(subscriber);

    let handler = Router::new().route("/", get(|| async { "ok" }));
    let trace = TraceLayer::new_for_http().make_span_with(synth_tower::trace::make_span);
    // Synth layer outside TraceLayer (recommended) and inside it.
    let outside = handler.clone().layer(trace.clone()).layer(VerifySyntheticLayer::new(verifier()));
    let inside = handler.layer(VerifySyntheticLayer::new(verifier())).layer(trace);

    for (app, run) in [(outside, "outside"), (inside, "inside")] {
        let token = mint(run);
        let req = Request::get("/").header("synthetic-traffic", &token).body(Body::empty()).unwrap();
        assert_eq!(app.clone().oneshot(req).await.unwrap().status(), 200);
        let real = Request::get("/").body(Body::empty()).unwrap();
        assert_eq!(app.oneshot(real).await.unwrap().status(), 200);
    }
    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let requests: Vec<_> = spans.iter().filter(|s| s.name == "request").collect();
    assert_eq!(requests.len(), 4, "{spans:?}");
    for run in ["outside", "inside"] {
        let span = requests
            .iter()
            .find(|s| attribute(s, "synthetic.run") == Some(Value::from(run)))
            .unwrap_or_else(|| panic!("no span for run {run}: {requests:?}"));
        assert_eq!(attribute(span, "synthetic"), Some(Value::Bool(true)));
        assert_eq!(attribute(span, "synthetic.origin"), Some(Value::from("load")));
    }
    let real = requests.iter().filter(|s| attribute(s, "synthetic").is_none()).count();
    assert_eq!(real, 2, "real requests carry no synthetic attribute");
}
