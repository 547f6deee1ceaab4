//! The server layer over real sockets: accept, refuse, treat as real, shed, report.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, extract::Request, http::HeaderMap, routing::get};
use support::*;
use synth_ctx::{Origin, RunId, Signer, Synthetic};
use synth_tower::{InvalidMarkerPolicy, KillSwitch, ShedCause, VerifySyntheticLayer};
use tokio::sync::Notify;

/// A handler that reports what it saw: `real`, or `synthetic <run>` (from the scope, from the
/// request extensions and from a task spawned with the helper, which must all agree).
async fn report(req: Request) -> String {
    let from_scope = synth_ctx::current().map(|s| s.run().to_string());
    let from_ext = req.extensions().get::<Synthetic>().map(|s| s.run().to_string());
    let from_spawn =
        synth_ctx::spawn(async { synth_ctx::current().map(|s| s.run().to_string()) }).await.unwrap();
    assert_eq!(from_scope, from_ext);
    assert_eq!(from_scope, from_spawn);
    let marker_left = req.headers().contains_key("synthetic-traffic");
    match from_scope {
        Some(run) => format!("synthetic {run}"),
        None => format!("real{}", if marker_left { " with marker header" } else { "" }),
    }
}

fn app(layer: VerifySyntheticLayer, hits: Arc<AtomicUsize>) -> Router {
    Router::new()
        .route(
            "/",
            get(move |req: Request| {
                let hits = hits.clone();
                async move {
                    hits.fetch_add(1, Ordering::SeqCst);
                    report(req).await
                }
            }),
        )
        .layer(layer)
}

#[tokio::test]
async fn real_requests_pass_untouched_and_valid_markers_are_scoped() {
    let layer = VerifySyntheticLayer::new(verifier()).with_service_name("svc-a");
    let stats = layer.stats().clone();
    let addr = serve(app(layer, Arc::default())).await;
    let client = client();

    let real = fetch(&client, addr, "/", &[]).await;
    assert_eq!((real.status.as_u16(), real.body.as_str()), (200, "real"));
    for h in ["synthetic-traffic-seen", "synthetic-traffic-path", "synthetic-traffic-guards"] {
        assert!(real.header(h).is_none(), "{h} sent for a real request");
    }

    let token = mint("run-1");
    let syn = fetch(&client, addr, "/", &[("synthetic-traffic", &token)]).await;
    assert_eq!((syn.status.as_u16(), syn.body.as_str()), (200, "synthetic run-1"));
    assert_eq!(syn.header("synthetic-traffic-seen"), Some("run-1"));
    assert_eq!(syn.header("synthetic-traffic-path"), Some("svc-a"));

    // Marker only in baggage, among other members.
    let baggage = format!("tenant=acme,synthetic={token},x=1");
    let via_baggage = fetch(&client, addr, "/", &[("baggage", &baggage)]).await;
    assert_eq!(via_baggage.body, "synthetic run-1");

    let s = stats.snapshot();
    assert_eq!((s.real, s.accepted(Origin::Load), s.rejected_total()), (1, 2, 0));
}

#[tokio::test]
async fn every_kind_of_bad_marker_is_refused_with_its_reason_and_reaches_no_handler() {
    let layer = VerifySyntheticLayer::new(verifier()).with_service_name("svc-a");
    let stats = layer.stats().clone();
    let hits = Arc::new(AtomicUsize::new(0));
    let addr = serve(app(layer, hits.clone())).await;
    let client = client();

    let other_key = synth_ctx::KeyRing::parse("k1:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8").unwrap();
    let forged =
        Signer::new(other_key).mint(Origin::Load, &RunId::new("evil").unwrap(), Duration::from_secs(60));
    let unknown = synth_ctx::KeyRing::parse("k9:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8").unwrap();
    let unknown =
        Signer::new(unknown).mint(Origin::Load, &RunId::new("evil").unwrap(), Duration::from_secs(60));
    let signer = Signer::new(keys());
    let expired = signer.mint_until(Origin::Load, &RunId::new("old").unwrap(), 1_000_000_000);
    let too_long = signer.mint(Origin::Load, &RunId::new("long").unwrap(), Duration::from_secs(48 * 3600));
    let oversized = "v".repeat(4000);

    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (vec![("synthetic-traffic", forged.clone())], "bad_signature"),
        (vec![("synthetic-traffic", unknown)], "unknown_key"),
        (vec![("synthetic-traffic", expired.clone())], "expired"),
        (vec![("synthetic-traffic", too_long)], "ttl_too_long"),
        (vec![("synthetic-traffic", "yes please".into())], "malformed"),
        (vec![("synthetic-traffic", "".into())], "malformed"),
        (vec![("synthetic-traffic", oversized)], "oversized"),
        (vec![("baggage", format!("synthetic={forged}"))], "bad_signature"),
        (vec![("baggage", format!("synthetic={expired}"))], "expired"),
        // A CRLF smuggled through baggage percent-encoding decodes to a malformed token.
        (vec![("baggage", "synthetic=v1.load.r.1.k1.%0D%0Aset-cookie:%20x".into())], "malformed"),
        // A valid header wins, but a forged header is not rescued by a valid baggage member.
        (
            vec![("synthetic-traffic", forged.clone()), ("baggage", format!("synthetic={}", mint("ok")))],
            "bad_signature",
        ),
    ];
    for (headers, reason) in &cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let res = fetch(&client, addr, "/", &headers).await;
        assert_eq!(res.status.as_u16(), 403, "{headers:?}");
        assert!(
            res.body.starts_with(&format!("synthetic-traffic marker refused ({reason})")),
            "{headers:?}: {}",
            res.body
        );
        assert!(res.header("synthetic-traffic-seen").is_none());
        assert!(res.header("synthetic-traffic-path").is_none());
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0, "a refused request reached the handler");
    let s = stats.snapshot();
    assert_eq!(s.rejected_total(), cases.len() as u64);
    assert_eq!(s.rejected("bad_signature"), 3);
    assert_eq!(s.rejected("oversized"), 1);
    assert_eq!((s.real, s.accepted(Origin::Load)), (0, 0));
}

#[tokio::test]
async fn crlf_in_a_raw_request_never_reaches_a_handler() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let hits = Arc::new(AtomicUsize::new(0));
    let addr = serve(app(VerifySyntheticLayer::new(verifier()), hits.clone())).await;
    let token = mint("crlf");
    for smuggled in [
        format!("synthetic-traffic: {token}\rX-Injected: 1\r\n"),
        // obs-fold: a continuation line that would glue more text onto the marker.
        format!("synthetic-traffic: {token}\r\n x-folded: 1\r\n"),
        "synthetic-traffic: v1.load.r\r.1.k1.x\r\n".to_owned(),
    ] {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let raw = format!("GET / HTTP/1.1\r\nhost: x\r\n{smuggled}connection: close\r\n\r\n");
        stream.write_all(raw.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(!answer.contains("synthetic crlf"), "{answer}");
        assert!(answer.is_empty() || answer.starts_with("HTTP/1.1 400"), "{answer}");
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn treat_as_real_policy_strips_the_marker() {
    let layer =
        VerifySyntheticLayer::new(verifier()).with_invalid_marker_policy(InvalidMarkerPolicy::TreatAsReal);
    let stats = layer.stats().clone();
    let addr = serve(app(layer, Arc::default())).await;
    let client = client();
    // Another last character (one in 16 signatures already ends in `A`).
    let token = mint("x");
    let (head, last) = token.split_at(token.len() - 1);
    let forged = format!("{head}{}", if last == "A" { "Q" } else { "A" });
    let res = fetch(&client, addr, "/", &[("synthetic-traffic", &forged)]).await;
    assert_eq!((res.status.as_u16(), res.body.as_str()), (200, "real"));
    let valid = fetch(&client, addr, "/", &[("synthetic-traffic", &mint("still-ok"))]).await;
    assert_eq!(valid.body, "synthetic still-ok");
    let s = stats.snapshot();
    assert_eq!((s.treated_as_real, s.real, s.rejected_total()), (1, 1, 1));
}

/// Under `TreatAsReal`, a refused marker whose origin reads `dark` or `replay` (a mirror's copy,
/// a replayed capture, signed with a key this service does not trust, or forged) is refused
/// with 403, never served as real: it repeats a request a real user already made. A refused
/// `load` marker is still served as real.
#[tokio::test]
async fn treat_as_real_refuses_a_marker_that_reads_dark_or_replay() {
    let layer =
        VerifySyntheticLayer::new(verifier()).with_invalid_marker_policy(InvalidMarkerPolicy::TreatAsReal);
    let stats = layer.stats().clone();
    let hits = Arc::new(AtomicUsize::new(0));
    let addr = serve(app(layer, hits.clone())).await;
    let client = client();
    // Signed with a key the service does not hold.
    let other =
        Signer::new(synth_ctx::KeyRing::parse("k2:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8").unwrap());
    let minted = |origin| other.mint(origin, &RunId::new("r").unwrap(), Duration::from_secs(60));
    let forged_dark = {
        let valid =
            Signer::new(keys()).mint(Origin::Dark, &RunId::new("r").unwrap(), Duration::from_secs(60));
        let (head, last) = valid.split_at(valid.len() - 1);
        format!("{head}{}", if last == "A" { "Q" } else { "A" })
    };
    for (what, headers) in [
        ("dark, unknown key", vec![("synthetic-traffic", minted(Origin::Dark))]),
        ("replay, unknown key", vec![("synthetic-traffic", minted(Origin::Replay))]),
        ("dark, forged", vec![("synthetic-traffic", forged_dark.clone())]),
        ("dark in baggage", vec![("baggage", format!("synthetic={}", minted(Origin::Dark)))]),
        (
            "conflicting lines, one dark",
            vec![("synthetic-traffic", minted(Origin::Load)), ("synthetic-traffic", minted(Origin::Dark))],
        ),
    ] {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let res = fetch(&client, addr, "/", &headers).await;
        assert_eq!(res.status.as_u16(), 403, "{what}: {}", res.body);
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0, "no refused copy or replay reached the handler");
    let load = fetch(&client, addr, "/", &[("synthetic-traffic", &minted(Origin::Load))]).await;
    assert_eq!((load.status.as_u16(), load.body.as_str()), (200, "real"));
    let s = stats.snapshot();
    assert_eq!((s.rejected_total(), s.treated_as_real), (6, 1));
}

#[tokio::test]
async fn kill_switch_sheds_synthetic_and_never_real() {
    let kill = KillSwitch::new();
    let layer = VerifySyntheticLayer::new(verifier())
        .with_kill_switch(kill.clone())
        .with_retry_after(Duration::from_millis(1500));
    let stats = layer.stats().clone();
    let hits = Arc::new(AtomicUsize::new(0));
    let addr = serve(app(layer, hits.clone())).await;
    let client = client();
    let token = mint("k");

    kill.stop();
    let shed = fetch(&client, addr, "/", &[("synthetic-traffic", &token)]).await;
    assert_eq!(shed.status.as_u16(), 503);
    assert_eq!(shed.header("synthetic-traffic-shed"), Some("1"));
    assert_eq!(shed.header("retry-after"), Some("2"));
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    let real = fetch(&client, addr, "/", &[]).await;
    assert_eq!((real.status.as_u16(), real.body.as_str()), (200, "real"));

    kill.resume();
    let back = fetch(&client, addr, "/", &[("synthetic-traffic", &token)]).await;
    assert_eq!((back.status.as_u16(), back.body.as_str()), (200, "synthetic k"));
    assert_eq!(stats.snapshot().shed(ShedCause::KillSwitch), 1);
}

#[tokio::test]
async fn predicate_and_in_flight_cap_shed() {
    let shedding = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = shedding.clone();
    let layer = VerifySyntheticLayer::new(verifier())
        .with_max_in_flight(1)
        .with_shed_when(move |s| flag.load(Ordering::SeqCst) && s.origin() == Origin::Load);
    let stats = layer.stats().clone();
    let gate = Arc::new(Notify::new());
    let entered = Arc::new(Notify::new());
    let (g, e) = (gate.clone(), entered.clone());
    let app = Router::new()
        .route(
            "/slow",
            get(move || {
                let (g, e) = (g.clone(), e.clone());
                async move {
                    e.notify_one();
                    g.notified().await;
                    "done"
                }
            }),
        )
        .route("/", get(|| async { "fast" }))
        .layer(layer);
    let addr = serve(app).await;
    let client = client();
    let token = mint("cap");

    let first = {
        let (client, token) = (client.clone(), token.clone());
        tokio::spawn(async move { fetch(&client, addr, "/slow", &[("synthetic-traffic", &token)]).await })
    };
    entered.notified().await;
    let second = fetch(&client, addr, "/", &[("synthetic-traffic", &token)]).await;
    assert_eq!(second.status.as_u16(), 503, "over the in-flight cap");
    let real = fetch(&client, addr, "/", &[]).await;
    assert_eq!(real.status.as_u16(), 200, "real traffic is never capped");
    gate.notify_one();
    assert_eq!(first.await.unwrap().body, "done");
    assert_eq!(fetch(&client, addr, "/", &[("synthetic-traffic", &token)]).await.status.as_u16(), 200);

    shedding.store(true, Ordering::SeqCst);
    assert_eq!(fetch(&client, addr, "/", &[("synthetic-traffic", &token)]).await.status.as_u16(), 503);
    let s = stats.snapshot();
    assert_eq!((s.shed(ShedCause::InFlightCap), s.shed(ShedCause::Predicate), s.in_flight), (1, 1, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_runs_and_real_requests_never_mix() {
    let addr = serve(app(VerifySyntheticLayer::new(verifier()), Arc::default())).await;
    let client = client();
    let mut tasks = Vec::new();
    for i in 0..60 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            if i % 3 == 0 {
                (fetch(&client, addr, "/", &[]).await.body, "real".to_owned())
            } else {
                let run = format!("run-{i}");
                (
                    fetch(&client, addr, "/", &[("synthetic-traffic", &mint(&run))]).await.body,
                    format!("synthetic {run}"),
                )
            }
        }));
    }
    for t in tasks {
        let (got, want) = t.await.unwrap();
        assert_eq!(got, want);
    }
}

#[tokio::test]
async fn path_and_guards_come_back_through_the_client_layer() {
    // b: records a guard; c: plain. a calls b then c through the propagation layer.
    let b = serve(
        Router::new()
            .route(
                "/",
                get(|headers: HeaderMap| async move {
                    synth_ctx::trail::record_guard("email");
                    headers.get("baggage").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default()
                }),
            )
            .layer(VerifySyntheticLayer::new(verifier()).with_service_name("b")),
    )
    .await;
    let c = serve(
        Router::new()
            .route("/", get(|| async { "c" }))
            .layer(VerifySyntheticLayer::new(verifier()).with_service_name("c")),
    )
    .await;
    let a = serve(
        Router::new()
            .route(
                "/",
                get(move || async move {
                    let client = client();
                    let from_b = fetch(&client, b, "/", &[("baggage", "tenant=acme")]).await;
                    let from_c = fetch(&client, c, "/", &[]).await;
                    synth_ctx::trail::record_guard("payment.charge");
                    format!(
                        "{}|{}|{}",
                        from_b.body,
                        from_b.header("synthetic-traffic-seen").unwrap_or("-"),
                        from_c.body
                    )
                }),
            )
            .layer(VerifySyntheticLayer::new(verifier()).with_service_name("a")),
    )
    .await;
    let client = client();
    let token = mint("path-run");
    let res = fetch(&client, a, "/", &[("synthetic-traffic", &token)]).await;
    assert_eq!(res.header("synthetic-traffic-path"), Some("a>(b,c)"));
    assert_eq!(res.header("synthetic-traffic-guards"), Some("email,payment.charge"));
    let (b_baggage, rest) = res.body.split_once('|').unwrap();
    assert!(b_baggage.contains("tenant=acme"), "other baggage kept: {b_baggage}");
    assert!(b_baggage.contains(&format!("synthetic={token}")), "{b_baggage}");
    assert_eq!(rest, "path-run|c");

    // A real request through the same services: nothing added, nothing reported.
    let real = fetch(&client, a, "/", &[]).await;
    assert_eq!(real.body, "tenant=acme|-|c");
    assert!(real.header("synthetic-traffic-path").is_none());
}

#[tokio::test]
async fn development_mode_accepts_unsigned_markers_and_counts_them_as_synthetic() {
    let layer =
        VerifySyntheticLayer::new(verifier().insecure_accept_unsigned_markers()).with_service_name("dev");
    let stats = layer.stats().clone();
    let addr = serve(app(layer, Arc::default())).await;
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
    let unsigned = format!("v1.load.hand-made.{exp}.dev.{}", "A".repeat(43));
    let res = fetch(&client(), addr, "/", &[("synthetic-traffic", &unsigned)]).await;
    assert_eq!((res.status.as_u16(), res.body.as_str()), (200, "synthetic hand-made"));
    // Shape and expiry still count.
    let res = fetch(&client(), addr, "/", &[("synthetic-traffic", "v1.load.x")]).await;
    assert_eq!(res.status.as_u16(), 403);
    let text = stats.snapshot().to_prometheus("dev");
    assert!(
        text.contains("synth_requests_total{service=\"dev\",synthetic=\"true\",origin=\"load\"} 1"),
        "{text}"
    );
    assert!(text.contains("synth_marker_rejected_total{service=\"dev\",reason=\"malformed\"} 1"), "{text}");
    assert!(text.contains("synth_in_flight{service=\"dev\"} 0"), "{text}");
}

/// A handler that reports `real` or `synthetic <run>`, the baggage lines it received and, in the
/// synthetic scope, the baggage members that joined the scope's context.
async fn baggage_report(req: Request) -> String {
    use opentelemetry::baggage::BaggageExt;
    let decision = synth_ctx::current().map_or("real".to_owned(), |s| format!("synthetic {}", s.run()));
    let lines: Vec<&str> = req.headers().get_all("baggage").iter().map(|v| v.to_str().unwrap()).collect();
    let mut members: Vec<String> = opentelemetry::Context::map_current(|cx| {
        cx.baggage().iter().map(|(k, v)| format!("{k}={}", v.0.as_str())).collect()
    });
    members.sort();
    let marker_left = req.headers().contains_key("synthetic-traffic");
    format!("{decision} | lines {lines:?} | scope {members:?} | header left {marker_left}")
}

#[tokio::test]
async fn every_baggage_line_is_read_and_stripped() {
    let valid = mint("r1");
    let other = mint("r2");
    // Another last character (one signature in 16 already ends in `A`).
    let (head, last) = valid.split_at(valid.len() - 1);
    let forged = format!("{head}{}", if last == "A" { "Q" } else { "A" });
    assert_ne!(forged, valid);
    let members_64 = (0..synth_ctx::MAX_BAGGAGE_MEMBERS).map(|i| format!("m{i}=1")).collect::<Vec<_>>();
    let members_64 = members_64.join(",");
    let pad = format!("pad={}", "x".repeat(synth_ctx::MAX_BAGGAGE_LEN - 100));
    let syn = |t: &str| format!("synthetic={t}");
    let ok = |run: &str| (200, format!("synthetic {run}"));
    let refused = |reason: &str| (403, format!("synthetic-traffic marker refused ({reason})"));
    // (name, request headers, (status, start of the body) under Reject, the same under TreatAsReal)
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, (u16, String), (u16, String));
    let cases: Vec<Case<'_>> = vec![
        (
            "marker in line 2",
            vec![("baggage", "tenant=acme".into()), ("baggage", format!("region=eu,{}", syn(&valid)))],
            ok("r1"),
            ok("r1"),
        ),
        (
            "marker after the 64th member",
            vec![("baggage", members_64.clone()), ("baggage", syn(&valid))],
            ok("r1"),
            ok("r1"),
        ),
        (
            "marker in a line that makes the whole over 8 KiB",
            vec![("baggage", pad.clone()), ("baggage", syn(&valid))],
            ok("r1"),
            ok("r1"),
        ),
        (
            "two lines with two different markers",
            vec![("baggage", syn(&valid)), ("baggage", syn(&other))],
            refused("conflicting_markers"),
            (200, "real | lines [] |".into()),
        ),
        (
            "a valid header and a forged baggage member",
            vec![("synthetic-traffic", valid.clone()), ("baggage", format!("a=1,{}", syn(&forged)))],
            ok("r1"),
            ok("r1"),
        ),
        (
            "a forged header and a valid baggage member",
            vec![("synthetic-traffic", forged.clone()), ("baggage", format!("a=1,{}", syn(&valid)))],
            refused("bad_signature"),
            (200, "real | lines [\"a=1\"] | scope [] | header left false".into()),
        ),
        (
            "a forged marker in line 2",
            vec![("baggage", "tenant=acme".into()), ("baggage", syn(&forged))],
            refused("bad_signature"),
            (200, "real | lines [\"tenant=acme\"] | scope [] | header left false".into()),
        ),
        (
            "a forged marker in line 2, among other members",
            vec![("baggage", "tenant=acme".into()), ("baggage", format!("a=1, {} ;p ,b=2", syn(&forged)))],
            refused("bad_signature"),
            (200, "real | lines [\"tenant=acme\", \"a=1,b=2\"] |".into()),
        ),
    ];
    for policy in [InvalidMarkerPolicy::Reject, InvalidMarkerPolicy::TreatAsReal] {
        let layer = VerifySyntheticLayer::new(verifier()).with_invalid_marker_policy(policy);
        let stats = layer.stats().clone();
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let app = Router::new()
            .route(
                "/",
                get(move |req: Request| {
                    counter.fetch_add(1, Ordering::SeqCst);
                    baggage_report(req)
                }),
            )
            .layer(layer);
        let addr = serve(app).await;
        let client = client();
        let mut refusals = 0;
        for (name, headers, on_reject, on_treat_as_real) in &cases {
            let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let (status, body) = match policy {
                InvalidMarkerPolicy::Reject => on_reject,
                _ => on_treat_as_real,
            };
            refusals += u64::from(on_reject.0 == 403);
            let res = fetch(&client, addr, "/", &headers).await;
            assert_eq!(res.status.as_u16(), *status, "{policy:?}, {name}: {}", res.body);
            assert!(res.body.starts_with(body.as_str()), "{policy:?}, {name}: {}", res.body);
        }
        let s = stats.snapshot();
        assert_eq!(s.rejected_total(), refusals, "{policy:?}");
        if policy == InvalidMarkerPolicy::Reject {
            assert_eq!(hits.load(Ordering::SeqCst) as u64, cases.len() as u64 - refusals);
        } else {
            assert_eq!(s.treated_as_real, refusals);
        }
    }
}

#[tokio::test]
async fn members_of_every_baggage_line_join_the_synthetic_scope() {
    let app = Router::new().route("/", get(baggage_report)).layer(VerifySyntheticLayer::new(verifier()));
    let addr = serve(app).await;
    let token = mint("r1");
    let res = fetch(
        &client(),
        addr,
        "/",
        &[("baggage", &format!("tenant=acme,synthetic={token}")), ("baggage", "region=eu")],
    )
    .await;
    assert!(
        res.body.starts_with("synthetic r1 | lines")
            && res.body.contains("scope [\"region=eu\", \"tenant=acme\"]"),
        "{}",
        res.body
    );
}
