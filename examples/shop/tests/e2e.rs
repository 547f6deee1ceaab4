//! The shop end to end over real sockets: each service in its own process on PostgreSQL with a
//! real SMTP server (and the gateway mirroring real searches to the dark catalog-v2, capturing
//! real users' GETs, and taking that capture replayed ×2 without recording it again); outsider
//! attacks at the gateway; the kill switch in the middle of a run.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::{Value, json};
use shop::{
    MailTarget, Shop, ShopConfig,
    common::{get_text, http_client, post_json},
    store::Store,
    traffic::{RealUsers, forged_probe, post_auth, real_session, wait_for_capture, wait_for_emails},
    verify::{self, Observed, ReplayObserved, ServiceStats},
};
use synth_ctx::{KeyRing, Origin, RunId, Signer, Verifier};
use synth_testkit::{pg::PgCluster, smtp::SmtpSink};

const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shop-e2e-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// `examples/shop/journeys.yaml` with shorter phases (the journeys as the demo runs them), its
/// gRPC steps calling `catalog` (a base URL).
fn short_journeys(dir: &Path, catalog: &str) -> PathBuf {
    let shop = Path::new(env!("CARGO_MANIFEST_DIR"));
    let yaml = std::fs::read_to_string(shop.join("journeys.yaml")).unwrap();
    let phases =
        "  - { duration: 10s, arrival_rate: 10, ramp_to: 80 }\n  - { duration: 15s, arrival_rate: 80 }\n";
    assert!(yaml.contains(phases), "journeys.yaml changed its phases: update this test");
    let yaml = yaml.replace(phases, "  - { duration: 5s, arrival_rate: 10, ramp_to: 40 }\n");
    let grpc = "'http://127.0.0.1:7001'";
    assert!(yaml.contains(grpc), "journeys.yaml changed its catalogue target: update this test");
    let yaml = yaml.replace(grpc, &format!("'{catalog}'"));
    std::fs::copy(shop.join("users.csv"), dir.join("users.csv")).unwrap();
    std::fs::create_dir_all(dir.join("proto")).unwrap();
    std::fs::copy(shop.join("proto/catalog.proto"), dir.join("proto/catalog.proto")).unwrap();
    let path = dir.join("journeys.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Runs loadgen in this process; returns its exit code and JSON report.
/// `observe`: the orders service's base URL, whose `/metrics` preflight reads for the e-mail
/// guard (it engages after the response).
async fn loadgen(
    scenario: &Path,
    target: &str,
    observe: &str,
    run: &str,
    dir: &Path,
) -> (loadgen::Exit, Value) {
    let report = dir.join(format!("{run}.json"));
    let scenario = loadgen::Scenario::from_file(scenario).unwrap();
    let config = loadgen::RunConfig::new(synth_ctx::KeyRing::parse(KEYS).unwrap())
        .with_quiet(true)
        .with_target(target.parse().unwrap())
        .with_run_id(synth_ctx::RunId::new(run).unwrap())
        .with_report_json(&report)
        .with_observe(vec![format!("{observe}/metrics")], loadgen::DEFAULT_SETTLE);
    let outcome = loadgen::run(std::sync::Arc::new(scenario), config).await.unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{}", outcome.summary());
    let exit = outcome.exit();
    (exit, serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap())
}

/// Replays the gateway's capture files in `capture` ×2 onto `gateway`, capped at half the
/// recorded real traffic, for 3 s, as the demo does; the capture's counters (read from the
/// gateway's `/stats`, settled) before and after.
async fn replay(
    services: &[(&'static str, String)],
    gateway: &str,
    capture: &Path,
    dir: &Path,
) -> (loadgen::Exit, ReplayObserved) {
    let capture_before = wait_for_capture(services).await.expect("the gateway has a capture");
    let mut files: Vec<PathBuf> = std::fs::read_dir(capture)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "the gateway captured nothing in {}", capture.display());
    let replay = loadgen::Replay::new(files, gateway.parse().unwrap())
        .amplify(2.0)
        .duration(Duration::from_secs(3))
        .cap(loadgen::ReplayCap::Recording { share: 0.5, recorded_share: 1.0 });
    let config = loadgen::RunConfig::new(KeyRing::parse(KEYS).unwrap())
        .with_quiet(true)
        .with_run_id(RunId::new("e2e-pg-replay").unwrap())
        .with_report_json(dir.join("replay.json"));
    let outcome = loadgen::replay(replay, config).await.unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{}", outcome.summary());
    let observed = ReplayObserved {
        recorded: outcome.replay.as_ref().unwrap().replayed_records,
        sent: outcome.finished.journeys.started,
        tagged: outcome.finished.total().tagged,
        amplify: 2.0,
        cap: "50% of real traffic".into(),
        // The cap at its last reading, if it held the replay back (as the demo shows it).
        held_at: outcome
            .controls
            .decisions
            .iter()
            .any(|d| d.action == loadgen::DecisionAction::Cap && d.detail.contains("held at"))
            .then(|| {
                let caps =
                    outcome.controls.decisions.iter().filter(|d| d.action == loadgen::DecisionAction::Cap);
                caps.rev().find_map(|d| d.value).map(|real| real * 0.5)
            })
            .flatten(),
        capture_before,
        capture_after: wait_for_capture(services).await.unwrap(),
        rows_tagged: 0,
    };
    (outcome.exit(), observed)
}

/// One service of the shop as its own process; killed on drop (and it stops by itself when
/// this process dies: its standard input closes).
struct Process {
    child: Child,
    _stdin: Option<ChildStdin>,
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `shop ARGS` and returns it with the URLs it printed (`<name> listening on <url>`).
fn spawn_shop(args: &[&str], env: &[(&str, &str)], lines: usize) -> (Process, Vec<(String, String)>) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_shop"));
    cmd.args(args).arg("--stop-on-stdin-eof").env("SYNTH_KEYS", KEYS).env_remove("SYNTH_KEYS_FILE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child =
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
    let stdin = child.stdin.take();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut urls = Vec::new();
    for _ in 0..lines {
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let (name, url) =
            line.trim().split_once(" listening on ").unwrap_or_else(|| panic!("{args:?} said {line:?}"));
        urls.push((name.to_owned(), url.to_owned()));
    }
    (Process { child, _stdin: stdin }, urls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_in_its_own_process_on_postgresql_with_a_real_smtp_server() {
    let test = "every_service_in_its_own_process_on_postgresql_with_a_real_smtp_server";
    let Some(pg) = PgCluster::start(test) else { return };
    let Some(sink) = SmtpSink::start(test) else { return };
    let database_url = pg.create_database("shop");
    let smtp_url = sink.url();
    let dir = temp_dir("processes");

    let (_payments, p) = spawn_shop(&["payments"], &[], 1);
    let (_fraud, f) = spawn_shop(&["fraud"], &[], 1);
    let (_catalog, c) = spawn_shop(&["catalog"], &[], 1);
    let (_orders, o) = spawn_shop(
        &["orders", "--payments", &p[0].1, "--fraud", &f[0].1],
        &[("DATABASE_URL", &database_url), ("SMTP_URL", &smtp_url)],
        1,
    );
    // The dark catalog-v2 on the same PostgreSQL database (its `searches` table, tagged).
    let (_catalog_v2, v2) = spawn_shop(&["catalog-v2"], &[("DATABASE_URL", &database_url)], 1);
    let capture = dir.join("capture");
    let (_gateway, g) = spawn_shop(
        &[
            "gateway",
            "--catalog",
            &c[0].1,
            "--orders",
            &o[0].1,
            "--dark-catalog",
            &v2[0].1,
            "--capture-dir",
            capture.to_str().unwrap(),
        ],
        &[],
        2,
    );
    let gateway = g[0].1.clone();
    let services: Vec<(&'static str, String)> = vec![
        ("gateway", gateway.clone()),
        ("catalog", c[0].1.clone()),
        ("orders", o[0].1.clone()),
        ("payments", p[0].1.clone()),
        ("fraud", f[0].1.clone()),
        ("catalog-v2", v2[0].1.clone()),
    ];
    let store = Store::open(&database_url).await.unwrap();
    let run = RunId::new("e2e-pg").unwrap();
    let db_start = store.counts(run.as_str()).await.unwrap();
    let dark_rows_start = store.search_rows(shop::catalog_v2::RUN).await.unwrap();

    let real_users = RealUsers::start(&gateway, 2);
    let (exit, report) = loadgen(&short_journeys(&dir, &c[0].1), &gateway, &o[0].1, run.as_str(), &dir).await;
    let real = real_users.stop().await;
    assert_eq!(real.errors.load(std::sync::atomic::Ordering::Relaxed), 0, "real users saw no failure");
    let forged = forged_probe(&gateway, &services, "k1", &run).await.unwrap();
    // The real users have stopped: the capture holds their browsing, and records nothing more.
    let (replay_exit, replayed) = replay(&services, &gateway, &capture, &dir).await;
    let replayed = ReplayObserved {
        rows_tagged: store.counts("e2e-pg-replay").await.unwrap().tagged_by_run
            + store.search_rows("e2e-pg-replay").await.unwrap().tagged_by_run,
        ..replayed
    };
    let after = verify::after_load(&services, &store, &database_url, &run).await.unwrap();

    // The SMTP server got the real customers' confirmations, and only those.
    let messages = sink.messages();
    for m in &messages {
        let rcpt = m.lines().next().unwrap_or("");
        assert!(rcpt.starts_with("X-Envelope-To: customer") && rcpt.ends_with("@shop.example"), "{rcpt}");
        assert!(!m.contains("loadtest.invalid"), "a synthetic identity got mail:\n{m}");
    }
    let observed = Observed {
        db_start,
        emails_arrived: Some(messages.len() as u64),
        forged: Some(forged),
        loadgen: Some(report.clone()),
        real_users: Some((
            real.errors.load(std::sync::atomic::Ordering::Relaxed),
            real.checkouts.load(std::sync::atomic::Ordering::Relaxed),
        )),
        real_searches: Some((
            real.searches.load(std::sync::atomic::Ordering::Relaxed),
            real.searches_differing.load(std::sync::atomic::Ordering::Relaxed),
        )),
        dark_rows_start,
        replay: Some(replayed.clone()),
        ..Observed::from(after)
    };
    let checks = verify::checks(&observed);
    let table = verify::table(&checks);
    eprintln!("{table}");
    assert!(checks.iter().all(|c| c.ok), "a check failed:\n{table}");
    // Including the dark ones: the real users' searches were mirrored, across processes.
    for dark in ["dark requests", "dark answers differing"] {
        assert!(checks.iter().any(|c| c.what == dark), "no `{dark}` line:\n{table}");
    }
    // And the replay's: its requests were sent, tagged, and none was captured again.
    let line = |what: &str| {
        checks.iter().find(|c| c.what == what).unwrap_or_else(|| panic!("no `{what}` line:\n{table}"))
    };
    let sent = line("replayed requests");
    assert!(sent.synthetic.parse::<u64>().unwrap() > 0, "{table}");
    assert_eq!(line("replayed requests re-captured").synthetic, "0", "{table}");
    assert!(replayed.sent > 0 && replayed.tagged == replayed.sent, "{replayed:?}");
    assert_eq!(replayed.recaptured(), 0, "{replayed:?}");
    assert_eq!(replay_exit, loadgen::Exit::Ok, "the replay passed");
    assert_eq!(exit, loadgen::Exit::Ok, "loadgen's thresholds passed");
    // Enough happened for the checks to mean something.
    assert!(observed.stats.orders["orders"]["synthetic"].as_u64().unwrap() >= 5, "{table}");
    assert!(!messages.is_empty(), "{table}");

    // Every service's page, after real and synthetic traffic, is what Prometheus accepts, and
    // shows that service's guards only.
    for (name, url) in &services {
        let (_, page) = get_text(&format!("{url}/metrics")).await.unwrap();
        if let Some(checked) = synth_testkit::promtool::check_metrics(test, &page) {
            checked.unwrap_or_else(|why| panic!("{name}'s /metrics refused by promtool: {why}\n{page}"));
        }
        let charges = page.contains("synth_guard_executed_total{guard=\"payment.charge\"}");
        assert_eq!(charges, *name == "orders", "{name}'s page and the orders guard:\n{page}");
        let mirror = page.contains("synth_mirror_requests_total{service=\"gateway\",decision=\"queued\"}");
        assert_eq!(mirror, *name == "gateway", "{name}'s page and the search mirror:\n{page}");
        let capture = page.contains("synth_capture_records_total{service=\"gateway\",result=\"written\"}");
        assert_eq!(capture, *name == "gateway", "{name}'s page and the browsing capture:\n{page}");
    }
    // A real Prometheus scrapes all five: `up` is 1 for each.
    let targets: Vec<std::net::SocketAddr> =
        services.iter().map(|(_, url)| url.trim_start_matches("http://").parse().unwrap()).collect();
    if let Some(prom) =
        synth_testkit::prometheus::Prometheus::start(test, &targets, Duration::from_millis(250))
    {
        let query = format!("{}/api/v1/query?query=up", prom.url());
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let (_, body) = get_text(&query).await.unwrap();
            let answer: Value = serde_json::from_str(&body).unwrap();
            let up: Vec<(String, String)> = answer["data"]["result"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| {
                    (
                        r["metric"]["instance"].as_str().unwrap().to_owned(),
                        r["value"][1].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
            if up.len() == targets.len() && up.iter().all(|(_, v)| v == "1") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "not every service is up in Prometheus: {up:?}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// A real customer's checkout carrying `marker` as a header or as baggage.
async fn checkout_with(
    gateway: &str,
    auth: &str,
    marker: &str,
    as_baggage: bool,
) -> (u16, String, http::HeaderMap) {
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;
    let (name, value) = if as_baggage {
        ("baggage", format!("tenant=acme,synthetic={marker}"))
    } else {
        ("synthetic-traffic", marker.to_owned())
    };
    let req = http::Request::post(format!("{gateway}/checkout"))
        .header("content-type", "application/json")
        .header("authorization", auth)
        .header(name, value)
        .body(http_body_util::Full::new(bytes::Bytes::from(r#"{"card":"4242424242424242"}"#)))
        .unwrap();
    let res = http_client().oneshot(req).await.unwrap();
    let status = res.status().as_u16();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned(), headers)
}

/// Logs in and fills a basket with `marker` on every request: a synthetic customer.
async fn synthetic_session(gateway: &str, marker: &str) -> String {
    use http_body_util::BodyExt as _;
    use tower::ServiceExt as _;
    let req = http::Request::post(format!("{gateway}/login"))
        .header("content-type", "application/json")
        .header("synthetic-traffic", marker)
        .body(http_body_util::Full::new(bytes::Bytes::from(
            r#"{"email":"u1@loadtest.invalid","password":"x"}"#,
        )))
        .unwrap();
    let res = http_client().oneshot(req).await.unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let session: Value = serde_json::from_slice(&body).unwrap();
    let auth = format!("Bearer {}", session["token"].as_str().unwrap());
    let line = json!({ "sku": "sku-1", "qty": 1 });
    let status = post_auth(
        &http_client(),
        &format!("{gateway}/basket"),
        &auth,
        &line,
        Some(("synthetic-traffic", marker)),
    )
    .await;
    assert_eq!(status, Some(200));
    auth
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outsider_markers_are_refused_at_the_gateway_with_no_side_effect() {
    let dir = temp_dir("attacks");
    // No clock-skew allowance, so a replay after expiry is refused within the test's time.
    let verifier = Verifier::new(KeyRing::parse(KEYS).unwrap()).with_clock_skew(Duration::ZERO);
    let shop = Shop::start(ShopConfig {
        verifier,
        database_url: format!("sqlite://{}", dir.join("shop.db").display()),
        mail: MailTarget::Dir(dir.join("mail")),
        admin_token: String::new(),
        capture_dir: None,
    })
    .await
    .unwrap();
    let gateway = format!("http://{}", shop.gateway);
    let services = shop.services();
    let run = RunId::new("attack").unwrap();
    let auth = real_session(&gateway, "victim@shop.example").await.unwrap();

    let signer = Signer::new(KeyRing::parse(KEYS).unwrap());
    let forger = Signer::new(KeyRing::parse("k1:ZmFrZS1zZWNyZXQtb2YtYW4tYXR0YWNrZXItMzItYnl0ZXM").unwrap());
    let stranger = Signer::new(KeyRing::parse("k9:c3RyYW5nZXJzLW93bi1zZWNyZXQta2V5LTMyLWJ5dGVz").unwrap());
    let attacks = [
        ("forged", forger.mint(Origin::Load, &run, Duration::from_secs(600)), "bad_signature"),
        ("expired", signer.mint_until(Origin::Load, &run, unix_now() - 3600), "expired"),
        ("wrong key", stranger.mint(Origin::Load, &run, Duration::from_secs(600)), "unknown_key"),
        ("garbage", "v1.load.attack.9999999999.k1.AAAA".to_owned(), "malformed"),
    ];
    let effects = || async {
        wait_for_emails(&services).await;
        let s = ServiceStats::fetch(&services).await.unwrap();
        let rows = shop.store.counts(run.as_str()).await.unwrap();
        (verify::effects(&s), rows.orders.synthetic + rows.lines.synthetic, s.payments["recorded"].clone())
    };
    let start = effects().await;
    for (what, marker, reason) in &attacks {
        for as_baggage in [false, true] {
            let (status, body, _) = checkout_with(&gateway, &auth, marker, as_baggage).await;
            assert_eq!(status, 403, "{what} (baggage: {as_baggage}): {body}");
            assert!(body.contains(reason), "{what} (baggage: {as_baggage}) says why: {body}");
        }
    }
    assert_eq!(effects().await, start, "no order, charge, email or tagged row");

    // Replayed after expiry: a marker that was good once (a synthetic checkout: no charge, no
    // email) is refused once it has expired, even though the verifier has seen it before.
    let short = signer.mint(Origin::Load, &run, Duration::from_secs(1));
    // Synthetic sessions live apart from real ones: log in and fill a basket under the marker.
    let synthetic_auth = synthetic_session(&gateway, &short).await;
    let (status, body, headers) = checkout_with(&gateway, &synthetic_auth, &short, false).await;
    assert_eq!(status, 201, "{body}");
    // The answer reports the hops and the guards the synthetic checkout went through.
    let header = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    assert_eq!(header("synthetic-traffic-seen"), "attack");
    assert_eq!(header("synthetic-traffic-path"), "gateway>orders");
    let guards = header("synthetic-traffic-guards");
    assert!(guards.contains("fraud-check") && guards.contains("payment.charge"), "{guards}");
    let after_good = effects().await;
    assert_eq!(after_good.1, start.1 + 2, "the good use wrote one tagged order and one tagged line");
    assert_eq!(after_good.0.1, start.0.1, "and charged nothing");
    assert_eq!(after_good.0.2, start.0.2, "and mailed nobody");
    post_auth(
        &http_client(),
        &format!("{gateway}/basket"),
        &auth,
        &json!({ "sku": "sku-2", "qty": 1 }),
        None,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2100)).await;
    for as_baggage in [false, true] {
        let (status, body, _) = checkout_with(&gateway, &auth, &short, as_baggage).await;
        assert_eq!(status, 403, "replayed after expiry (baggage: {as_baggage}): {body}");
        assert!(body.contains("expired"), "{body}");
    }
    assert_eq!(effects().await, after_good, "the replay changed nothing");

    // Fail closed when the context is lost: an order for a reserved synthetic identity that
    // reaches `orders` without a marker (a hop that forgot to propagate) is refused with an
    // error before anything is stored, charged or mailed, and counted as "context lost".
    let orders = format!("http://{}", shop.orders);
    let order = json!({ "email": "u7@loadtest.invalid", "card": "4242424242424242",
        "lines": [{ "sku": "sku-3", "qty": 1, "price_cents": 875 }] });
    let (status, _, body) = post_json(http_client(), &format!("{orders}/orders"), &order).await.unwrap();
    assert_eq!(status, 422, "{body}");
    assert!(body["error"].as_str().unwrap().contains("context lost"), "{body}");
    assert_eq!(effects().await, after_good, "no order, charge, email or tagged row");
    let s = ServiceStats::fetch(&services).await.unwrap();
    assert_eq!(s.orders["context_lost"], 1, "counted once: {}", s.orders);
    assert_eq!(s.orders["emails_delivered"]["real"], 0);
    let checks = verify::checks(&Observed { stats: s, ..Observed::default() });
    assert!(checks.iter().any(|c| c.what == "context lost" && !c.ok), "the demo's table would flag it");

    // An absurd order is refused, not overflowed.
    let huge = json!({ "email": "a@shop.example", "card": "4242424242424242",
        "lines": [{ "sku": "sku-1", "qty": 100, "price_cents": u64::MAX / 2 }] });
    let (status, ..) = post_json(http_client(), &format!("{orders}/orders"), &huge).await.unwrap();
    assert_eq!(status, 400);

    // A session made under load is no real login.
    let status = post_auth(
        &http_client(),
        &format!("{gateway}/basket"),
        &synthetic_auth,
        &json!({ "sku": "sku-1" }),
        None,
    )
    .await;
    assert_eq!(status, Some(401), "a synthetic session does not work for real requests");

    // The gateway counted every refusal, by reason.
    let (_, metrics) = get_text(&format!("{gateway}/metrics")).await.unwrap();
    for reason in ["bad_signature", "expired", "unknown_key", "malformed"] {
        assert!(metrics.contains(&format!("reason=\"{reason}\"")), "{reason} in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_switch_mid_run_stops_synthetic_traffic_at_once_and_spares_real_users() {
    let dir = temp_dir("kill");
    let shop = Shop::start(ShopConfig {
        verifier: Verifier::new(KeyRing::parse(KEYS).unwrap()),
        database_url: format!("sqlite://{}", dir.join("shop.db").display()),
        mail: MailTarget::Dir(dir.join("mail")),
        admin_token: "admin-secret".into(),
        capture_dir: None,
    })
    .await
    .unwrap();
    let gateway = format!("http://{}", shop.gateway);
    let orders = format!("http://{}", shop.orders);
    let scenario = dir.join("browse.yaml");
    std::fs::write(
        &scenario,
        "target: http://127.0.0.1:8080\nphases: [{ duration: 4s, arrival_rate: 60 }]\njourneys:\n  - name: browse\n    steps: [{ name: product, get: \"/products/{{ random_int(1, 100) }}\" }]\n",
    )
    .unwrap();
    let handled =
        |s: &Value| (s["handled"]["real"].as_u64().unwrap(), s["handled"]["synthetic"].as_u64().unwrap());
    let gateway_stats = {
        let gateway = gateway.clone();
        move || {
            let gateway = gateway.clone();
            async move {
                serde_json::from_str::<Value>(&get_text(&format!("{gateway}/stats")).await.unwrap().1)
                    .unwrap()
            }
        }
    };

    let real_users = RealUsers::start(&gateway, 2);
    let admin = format!("http://{}", shop.admin);
    let stats = gateway_stats.clone();
    let killer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let before = handled(&stats().await);
        let client = http_client();
        // A wrong token does nothing.
        let status =
            post_auth(&client, &format!("{admin}/synthetic/stop"), "Bearer guess", &Value::Null, None).await;
        assert_eq!(status, Some(401));
        let status =
            post_auth(&client, &format!("{admin}/synthetic/stop"), "Bearer admin-secret", &Value::Null, None)
                .await
                .unwrap();
        assert_eq!(status, 200);
        // Requests already past the layer finish; then no synthetic request reaches a handler.
        tokio::time::sleep(Duration::from_millis(250)).await;
        (before, handled(&stats().await))
    });
    let (_, report) = loadgen(&scenario, &gateway, &orders, "kill", &dir).await;
    let (before_stop, at_stop) = killer.await.unwrap();
    let end = handled(&gateway_stats().await);
    let real = real_users.stop().await;

    assert!(before_stop.1 > 20, "synthetic traffic flowed before the stop: {before_stop:?}");
    assert_eq!(end.1, at_stop.1, "no synthetic request reached a handler after the stop");
    assert!(end.0 > at_stop.0, "real users went on being served: {at_stop:?} -> {end:?}");
    assert_eq!(real.errors.load(std::sync::atomic::Ordering::Relaxed), 0, "and none of them failed");
    let shed = report["total"]["shed"].as_u64().unwrap();
    assert!(shed > 10, "loadgen counted the shed answers: {}", report["total"]);
    // ... and backed off because of them.
    assert!(
        report["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["source"] == "shed" && d["action"] == "back_off"),
        "{}",
        report["decisions"]
    );
    assert_eq!(report["total"]["status_codes"]["503"].as_u64().unwrap(), shed);
    let s = gateway_stats().await;
    assert_eq!(s["requests"]["shed"].as_u64().unwrap(), shed, "the gateway shed what loadgen saw shed");
    assert_eq!(s["synthetic_stopped"], true);
}
