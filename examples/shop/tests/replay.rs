//! Replay in the shop, over real sockets: the gateway captures real users' GETs (never a
//! synthetic one), the capture replayed ×2 onto the gateway with a cap is sent, tagged and
//! verified `replay`, and recorded by the capture zero times; and the demo's two replay lines
//! fail when their facts do not hold.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::{path::PathBuf, time::Duration};

use serde_json::{Value, json};
use shop::{
    MailTarget, Shop, ShopConfig,
    common::{get_text, http_client},
    traffic::wait_for_capture,
    verify::{self, Check, Observed, ReplayObserved, ServiceStats},
};
use synth_ctx::{KeyRing, Origin, RunId, Signer, Verifier};
use tower::ServiceExt as _;

const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shop-replay-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `GET url` with these headers; returns the status.
async fn get(url: &str, headers: &[(&str, &str)]) -> u16 {
    let mut req = http::Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = http_client().oneshot(req.body(http_body_util::Full::default()).unwrap()).await.unwrap();
    res.status().as_u16()
}

fn line<'a>(checks: &'a [Check], what: &str) -> &'a Check {
    checks.iter().find(|c| c.what == what).unwrap_or_else(|| panic!("no `{what}` line in {checks:?}"))
}

fn capture_files(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_capture_replayed_twice_is_tagged_and_never_captured_again() {
    let dir = temp_dir("x2");
    let capture = dir.join("capture");
    let shop = Shop::start(ShopConfig {
        verifier: Verifier::new(KeyRing::parse(KEYS).unwrap()),
        database_url: format!("sqlite://{}", dir.join("shop.db").display()),
        mail: MailTarget::Dir(dir.join("mail")),
        admin_token: String::new(),
        capture_dir: Some(capture.clone()),
    })
    .await
    .unwrap();
    let gateway = format!("http://{}", shop.gateway);
    let services = shop.services();

    // Real users browse (with a credential the capture must drop); a load test's GETs and a
    // forged marker's go through the same gateway.
    let load = Signer::new(KeyRing::parse(KEYS).unwrap()).mint(
        Origin::Load,
        &RunId::new("replay-test-load").unwrap(),
        Duration::from_secs(600),
    );
    for i in 1..=20 {
        let path = if i % 2 == 0 { format!("/products/{i}") } else { format!("/search?q=red&page={i}") };
        assert_eq!(get(&format!("{gateway}{path}"), &[("authorization", "Bearer real-secret")]).await, 200);
        assert_eq!(get(&format!("{gateway}{path}"), &[("synthetic-traffic", &load)]).await, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get(&format!("{gateway}/products/1"), &[("synthetic-traffic", "k1.forged")]).await, 403);
    let before = wait_for_capture(&services).await.expect("the gateway has a capture");
    assert_eq!(before["written"], 20, "{before:#}");
    assert_eq!(before["requests"]["synthetic"], 20, "the load test's GETs: {before:#}");
    let files = capture_files(&capture);
    let recorded: String = files.iter().map(|f| std::fs::read_to_string(f).unwrap()).collect();
    assert_eq!(recorded.lines().count(), 20);
    assert!(!recorded.contains("real-secret"), "{recorded}");

    let run = RunId::new("replay-test").unwrap();
    let replay = loadgen::Replay::new(files.clone(), gateway.parse().unwrap())
        .amplify(2.0)
        .duration(Duration::from_secs(2))
        .cap(loadgen::ReplayCap::Recording { share: 0.5, recorded_share: 1.0 });
    let config = loadgen::RunConfig::new(KeyRing::parse(KEYS).unwrap())
        .with_quiet(true)
        .with_run_id(run.clone())
        .with_report_json(dir.join("replay.json"));
    let outcome = loadgen::replay(replay, config).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(outcome.exit(), loadgen::Exit::Ok, "{}", outcome.summary());
    let after = wait_for_capture(&services).await.unwrap();
    let observed = ReplayObserved {
        recorded: outcome.replay.as_ref().unwrap().replayed_records,
        sent: outcome.finished.journeys.started,
        tagged: outcome.finished.total().tagged,
        amplify: 2.0,
        cap: "50% of real traffic".into(),
        held_at: None,
        capture_before: before,
        capture_after: after,
        rows_tagged: shop.store.counts(run.as_str()).await.unwrap().tagged_by_run
            + shop.store.search_rows(run.as_str()).await.unwrap().tagged_by_run,
    };
    let stats = ServiceStats::fetch(&services).await.unwrap();
    let checks = verify::checks(&Observed {
        stats: stats.clone(),
        replay: Some(observed.clone()),
        ..Observed::default()
    });
    let table = verify::table(&checks);
    eprintln!("{table}");
    let sent = line(&checks, "replayed requests");
    let again = line(&checks, "replayed requests re-captured");
    assert!(sent.ok && again.ok, "{table}\n{}", outcome.summary());
    assert_eq!(observed.recorded, 20);
    assert!(observed.sent > 0 && observed.tagged == observed.sent, "{observed:?}");
    assert_eq!(observed.recaptured(), 0);
    assert_eq!(again.synthetic, "0");
    // The gateway verified each one as `replay`; the file is as it was.
    assert_eq!(stats.gateway["requests_by_origin"]["replay"], observed.sent, "{:#}", stats.gateway);
    let now: String = capture_files(&capture).iter().map(|f| std::fs::read_to_string(f).unwrap()).collect();
    assert_eq!(now, recorded);
    // The capture's series are on the gateway's page.
    let (_, metrics) = get_text(&format!("{gateway}/metrics")).await.unwrap();
    assert!(
        metrics.contains("synth_capture_records_total{service=\"gateway\",result=\"written\"} 20"),
        "{metrics}"
    );

    // The lines fail when their facts do not hold.
    let fails = |o: ReplayObserved, what: &str| {
        let checks =
            verify::checks(&Observed { stats: stats.clone(), replay: Some(o), ..Observed::default() });
        assert!(!line(&checks, what).ok, "`{what}` passed:\n{}", verify::table(&checks));
    };
    let mut recaptured = observed.capture_after.clone();
    recaptured["written"] = json!(21);
    recaptured["requests"]["queued"] = json!(21);
    fails(ReplayObserved { capture_after: recaptured, ..observed.clone() }, "replayed requests re-captured");
    let nothing_sent = ReplayObserved { sent: 0, tagged: 0, ..observed.clone() };
    fails(nothing_sent.clone(), "replayed requests");
    fails(nothing_sent, "replayed requests re-captured");
    fails(ReplayObserved { tagged: observed.sent - 1, ..observed.clone() }, "replayed requests");
    fails(ReplayObserved { rows_tagged: 1, ..observed.clone() }, "replayed requests");
    let mut unseen = observed.capture_after.clone();
    unseen["requests"]["synthetic"] =
        Value::from(observed.capture_before["requests"]["synthetic"].as_u64().unwrap());
    fails(ReplayObserved { capture_after: unseen, ..observed.clone() }, "replayed requests re-captured");
    shop.stop();
    let _ = std::fs::remove_dir_all(&dir);
}
