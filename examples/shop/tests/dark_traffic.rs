//! Dark traffic in the shop, over real sockets: the gateway mirrors every real search to the dark
//! `catalog-v2` (marked `dark`, signed with the shop's keys), never a synthetic one; catalog-v2's
//! side effects are suppressed and its rows tagged and purged; the one deliberate difference is
//! found at its JSON path; the gateway's `/metrics` carries the mirror's series and passes
//! promtool; the gateway's kill switch stops the copies; and the demo's two dark lines fail when
//! their facts do not hold.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::{path::PathBuf, time::Duration};

use serde_json::Value;
use shop::{
    MailTarget, Shop, ShopConfig, catalog_v2,
    common::{get_text, http_client},
    traffic::{SEARCHES, wait_for_mirror},
    verify::{self, Check, Observed, ServiceStats},
};
use synth_ctx::{KeyRing, Origin, RunId, Signer, Verifier};
use tower::ServiceExt as _;

const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shop-dark-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn shop(dir: &std::path::Path) -> Shop {
    Shop::start(ShopConfig {
        verifier: Verifier::new(KeyRing::parse(KEYS).unwrap()),
        database_url: format!("sqlite://{}", dir.join("shop.db").display()),
        mail: MailTarget::Dir(dir.join("mail")),
        admin_token: "admin-secret".into(),
        capture_dir: None,
    })
    .await
    .unwrap()
}

/// `GET url`, with a marker header if given; returns the status and the body.
async fn get(url: &str, marker: Option<&str>) -> (u16, String) {
    use http_body_util::BodyExt as _;
    let mut req = http::Request::get(url);
    if let Some(m) = marker {
        req = req.header("synthetic-traffic", m);
    }
    let res = http_client().oneshot(req.body(http_body_util::Full::default()).unwrap()).await.unwrap();
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

fn line<'a>(checks: &'a [Check], what: &str) -> &'a Check {
    checks.iter().find(|c| c.what == what).unwrap_or_else(|| panic!("no `{what}` line in {checks:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_searches_are_mirrored_to_the_dark_catalog_and_nothing_else() {
    let test = "real_searches_are_mirrored_to_the_dark_catalog_and_nothing_else";
    let dir = temp_dir("mirror");
    let shop = shop(&dir).await;
    let gateway = format!("http://{}", shop.gateway);
    let services = shop.services();
    let run = RunId::new("dark-test-load").unwrap();
    let dark_rows_start = shop.store.search_rows(catalog_v2::RUN).await.unwrap();

    // Real users' searches: each term four times; "hats" includes the repriced product.
    let mut differing = 0;
    for round in 0..4 {
        for q in SEARCHES {
            let (status, body) = get(&format!("{gateway}/search?q={q}"), None).await;
            assert_eq!(status, 200, "{q} (round {round}): {body}");
            // The real answer is the real catalogue's, untouched by the mirror.
            assert!(!body.contains("took_us"), "{body}");
            differing += u64::from(catalog_v2::answer_differs(q));
        }
    }
    let searches = 4 * SEARCHES.len() as u64;
    assert_eq!(differing, 4, "the test's premise: one term in five differs");
    // A load test's searches (valid markers) and a forged one: never copied.
    let signer = Signer::new(KeyRing::parse(KEYS).unwrap());
    let marker = signer.mint(Origin::Load, &run, Duration::from_secs(600));
    for q in SEARCHES {
        let (status, _) = get(&format!("{gateway}/search?q={q}"), Some(&marker)).await;
        assert_eq!(status, 200);
    }
    let forger = Signer::new(KeyRing::parse("k1:ZmFrZS1zZWNyZXQtb2YtYW4tYXR0YWNrZXItMzItYnl0ZXM").unwrap());
    let forged = forger.mint(Origin::Load, &run, Duration::from_secs(600));
    assert_eq!(get(&format!("{gateway}/search?q=hats"), Some(&forged)).await.0, 403);
    // Other real routes are not mirrored either (route filter).
    assert_eq!(get(&format!("{gateway}/products/42"), None).await.0, 200);

    wait_for_mirror(&services).await;
    let s = ServiceStats::fetch(&services).await.unwrap();
    let mirror = &s.gateway["mirror"];
    assert_eq!(mirror["run"], catalog_v2::RUN);
    assert_eq!(mirror["requests"]["queued"], searches, "{mirror}");
    assert_eq!(mirror["requests"]["synthetic"], SEARCHES.len() as u64, "load searches skipped: {mirror}");
    assert_eq!(mirror["requests"]["filtered"], 1, "the product page: {mirror}");
    assert_eq!(mirror["dark"]["answered"], searches, "{mirror}");
    // At catalog-v2: every request a verified `dark` copy, none real, none from the load test.
    let v2 = &s.catalog_v2;
    assert_eq!(v2["verified_by_origin"]["dark"], searches, "{v2}");
    assert_eq!(v2["searches_by_origin"]["dark"], searches, "{v2}");
    assert_eq!(v2["searches_by_origin"]["load"], 0, "{v2}");
    assert_eq!(v2["searches"]["real"], 0, "{v2}");
    assert_eq!(v2["requests"]["rejected"], 0, "{v2}");
    // Its side effects: the analytics feed never ran, every copy suppressed by the guard.
    assert_eq!(v2["analytics_published"], 0, "{v2}");
    assert_eq!(v2["analytics_guard"]["executed"], 0, "{v2}");
    assert_eq!(v2["analytics_guard"]["suppressed"], searches, "{v2}");
    // The comparison: the "hats" searches differ, at the repriced product's price only.
    assert_eq!(mirror["compared"]["mismatch"], differing, "{mirror}");
    assert_eq!(mirror["compared"]["match"], searches - differing, "{mirror}");
    let paths: Vec<&String> = mirror["mismatch_paths"].as_object().unwrap().keys().collect();
    assert_eq!(paths, ["$.results[4].price_cents"], "{mirror}");
    assert_eq!(verify::expected_dark_paths(), ["$.results[4].price_cents"]);
    // The admin router's report names the path and both prices (real 5750, dark 5462).
    let (_, report) = get_with_token(&format!("http://{}/synthetic/mirror", shop.admin)).await;
    let report: Value = serde_json::from_str(&report).unwrap();
    let first = &report["mismatches"][0];
    assert_eq!(first["path"], "/search", "no query in samples: {first}");
    assert_eq!(first["differences"][0]["at"], "$.results[4].price_cents", "{first}");
    assert_eq!(
        (first["differences"][0]["real"].as_str(), first["differences"][0]["dark"].as_str()),
        (Some("5750"), Some("5462")),
        "{first}"
    );

    // The gateway's page has the mirror's series, and Prometheus accepts it.
    let (_, page) = get_text(&format!("{gateway}/metrics")).await.unwrap();
    for series in [
        format!("synth_mirror_requests_total{{service=\"gateway\",decision=\"queued\"}} {searches}"),
        format!("synth_mirror_compared_total{{service=\"gateway\",result=\"mismatch\"}} {differing}"),
        format!("synth_mirror_latency_seconds_count{{service=\"gateway\",side=\"dark\"}} {searches}"),
    ] {
        assert!(page.contains(&series), "{series} in\n{page}");
    }
    if let Some(checked) = synth_testkit::promtool::check_metrics(test, &page) {
        checked.unwrap_or_else(|why| panic!("the gateway's /metrics refused by promtool: {why}\n{page}"));
    }

    // The rows: one tagged row per copy, none untagged; cleanup of the dark run purges them.
    let after = verify::after_load(
        &services,
        &shop.store,
        &format!("sqlite://{}", dir.join("shop.db").display()),
        &run,
    )
    .await
    .unwrap();
    assert_eq!(after.dark_rows_before_cleanup.rows.real, 0);
    assert_eq!(after.dark_rows_before_cleanup.tagged_by_run, searches);
    assert_eq!(after.dark_purged, searches);
    assert_eq!(after.dark_rows_after_cleanup.tagged_by_run, 0);

    // The demo's two lines hold...
    let observed = Observed {
        real_searches: Some((searches, differing)),
        dark_rows_start,
        ..Observed::from(after.clone())
    };
    let checks = verify::checks(&observed);
    let table = verify::table(&checks);
    assert!(line(&checks, "dark requests").ok, "{table}");
    assert!(line(&checks, "dark answers differing").ok, "{table}");
    // ... and fail when a fact does not: a count of real searches the copies do not match, or
    // a different expectation of how many differ.
    let wrong = Observed { real_searches: Some((searches + 1, differing)), ..observed.clone() };
    assert!(!line(&verify::checks(&wrong), "dark requests").ok);
    let wrong = Observed { real_searches: Some((searches, differing + 1)), ..observed.clone() };
    assert!(!line(&verify::checks(&wrong), "dark answers differing").ok);
    // A real (unmarked) request straight to catalog-v2 is a real side effect there: the line fails.
    let (status, _) = get(&format!("http://{}/search?q=red", shop.catalog_v2), None).await;
    assert_eq!(status, 200);
    let leaked = Observed { stats: ServiceStats::fetch(&services).await.unwrap(), ..observed.clone() };
    let c = verify::checks(&leaked);
    assert!(!line(&c, "dark requests").ok, "{}", verify::table(&c));

    // The gateway's kill switch stops the copies with the rest of the synthetic traffic.
    shop.kill.stop();
    assert_eq!(get(&format!("{gateway}/search?q=hats"), None).await.0, 200, "real users are served");
    let s = ServiceStats::fetch(&services).await.unwrap();
    assert_eq!(s.gateway["mirror"]["requests"]["disabled"], 1, "{}", s.gateway["mirror"]);
    assert_eq!(s.gateway["mirror"]["requests"]["queued"], searches);
    assert_eq!(s.gateway["mirror"]["active"], false);
}

/// `GET url` with the shop's admin token.
async fn get_with_token(url: &str) -> (u16, String) {
    use http_body_util::BodyExt as _;
    let req = http::Request::get(url)
        .header("authorization", "Bearer admin-secret")
        .body(http_body_util::Full::default())
        .unwrap();
    let res = http_client().oneshot(req).await.unwrap();
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}
