//! Dark traffic end to end (issue 14's proof), on real loopback sockets:
//!
//! 1. `synth-tower/examples/mirror.rs` as two real processes, a real one mirroring to a dark copy
//!    of itself: the copies arrive verified as `dark`, both `/metrics` pages pass promtool, the
//!    admin routes switch mirroring off, the kill switch stops it, bad arguments exit 2, and an
//!    example pointed at itself copies each real request once;
//! 2. a real order service (axum, `MirrorLayer` at share 0.2) and a dark one
//!    (`VerifySyntheticLayer`, the payment guard, a tagged table on a real PostgreSQL): the dark
//!    service gets 20 % ± 2 points of the real requests, each scoped `dark` with the run id, charges
//!    nothing, tags its rows, and `synth-cleanup` (the library) purges exactly those rows while the
//!    real rows and charges stay as they were;
//! 3. loadgen against a real service whose dark target hangs, resets, answers 500 or is not
//!    listening: not one failed or non-2xx answer, and the mirror counts every dark failure;
//!    and a copy is never copied again, even by a mirror asked to copy synthetic requests.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader, Lines},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    extract::{Path as UrlPath, State},
    http::StatusCode,
    routing::{get, post},
};
use loadgen::{Exit, RunConfig, Scenario};
use serde_json::{Value, json};
use sqlx::{PgPool, postgres::PgPoolOptions};
use synth_ctx::{KeyRing, Origin, RunId, Signer, Verifier};
use synth_guards::{
    GuardRegistry,
    cleanup::{CleanupOptions, Selector, cleanup},
    db::postgres::{add_tag_column, begin_tagged},
};
use synth_testkit::pg::PgCluster;
use synth_tower::{
    VerifySyntheticLayer,
    mirror::{CompareResult, CompareSpec, DarkResult, DarkTarget, Decision, MirrorHandle, MirrorLayer},
};

const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
const RUN: &str = "dark-orders-v2";

fn keys() -> KeyRing {
    KeyRing::parse(KEYS).unwrap()
}

async fn serve(app: Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// A client that never goes through a proxy from the environment.
fn client() -> reqwest::Client {
    reqwest::Client::builder().no_proxy().build().unwrap()
}

/// Waits (up to `secs`) until `done` holds.
async fn eventually(what: &str, secs: u64, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Every queued copy has a result and nothing is pending.
fn settled(h: &MirrorHandle) -> bool {
    let s = h.snapshot();
    s.pending == 0 && s.decided(Decision::Queued) == DarkResult::ALL.iter().map(|r| s.dark(*r)).sum::<u64>()
}

// ---------------------------------------------------------------------------------------------
// 1. The example, as real processes.
// ---------------------------------------------------------------------------------------------

/// Where the workspace's builds go: `CARGO_TARGET_DIR` (as CI and the house set it), else
/// `target/` at the workspace root (as `examples/quickstart/tests/quickstart.rs` finds it).
fn workspace_target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

/// Builds the example once per test process (`cargo build`, as a user would) and returns the
/// binary. Cargo's lock serialises it with any other build in the same target directory.
fn example_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().unwrap();
        let target = workspace_target_dir(&root);
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let out = Command::new(cargo)
            .args(["build", "-p", "synth-tower", "--example", "mirror", "--features", "mirror,axum"])
            .current_dir(&root)
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "the example does not build:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        target.join("debug/examples/mirror")
    })
}

/// A running example; killed when dropped.
struct Example {
    child: Child,
    addr: String,
    admin: Option<String>,
    /// Kept open so that the process never writes into a closed pipe.
    _stdout: Lines<BufReader<ChildStdout>>,
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `mirror 127.0.0.1:0 DARK_URL SHARE` and reads the addresses it printed.
fn start_example(dark_url: &str, share: &str, admin_token: Option<&str>) -> Example {
    start_example_on("127.0.0.1:0", dark_url, share, admin_token).unwrap_or_else(|e| panic!("{e}"))
}

/// Starts `mirror LISTEN DARK_URL SHARE` and reads the addresses it printed; when it exits
/// first, what it said on standard error.
fn start_example_on(
    listen: &str,
    dark_url: &str,
    share: &str,
    admin_token: Option<&str>,
) -> Result<Example, String> {
    let mut cmd = Command::new(example_binary());
    cmd.args([listen, dark_url, share])
        .env("SYNTH_KEYS", KEYS)
        .env_remove("SYNTH_MIRROR_RUN")
        .env_remove("SYNTH_ADMIN_TOKEN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(token) = admin_token {
        cmd.env("SYNTH_ADMIN_TOKEN", token).env("MIRROR_ADMIN_LISTEN", "127.0.0.1:0");
    }
    let mut child = cmd.spawn().unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (Some(Ok(first)), Some(Ok(second))) = (lines.next(), lines.next()) else {
        let out = child.wait_with_output().unwrap();
        return Err(format!("the example ended ({}): {}", out.status, String::from_utf8_lossy(&out.stderr)));
    };
    let addr =
        first.strip_prefix("mirror listening on http://").unwrap_or_else(|| panic!("{first}")).to_owned();
    let admin = match admin_token {
        Some(_) => Some(
            second
                .strip_prefix("admin listening on http://")
                .unwrap_or_else(|| panic!("{second}"))
                .to_owned(),
        ),
        None => {
            assert!(second.starts_with("admin off: set SYNTH_ADMIN_TOKEN"), "{second}");
            None
        }
    };
    Ok(Example { child, addr, admin, _stdout: lines })
}

async fn get_text(client: &reqwest::Client, url: &str, token: Option<&str>) -> (u16, String) {
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

/// The value of the series `line` (name and labels, exactly) on a metrics page.
fn series(page: &str, line: &str) -> Option<u64> {
    page.lines().find_map(|l| l.strip_prefix(line)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_mirrors_real_requests_to_a_dark_copy_of_itself() {
    tokio::task::spawn_blocking(example_binary).await.unwrap();
    // The two terminals of the example's docs: the dark copy first (share 0), then the real one.
    let dark = tokio::task::spawn_blocking(|| start_example("http://127.0.0.1:9", "0", None)).await.unwrap();
    let dark_url = format!("http://{}", dark.addr);
    let real = tokio::task::spawn_blocking(move || start_example(&dark_url, "1", Some("tok"))).await.unwrap();
    let admin = real.admin.clone().unwrap();
    let http = client();

    let n = 30;
    for id in 0..n {
        let (status, body) = get_text(&http, &format!("http://{}/products/{id}", real.addr), None).await;
        assert_eq!(status, 200, "{body}");
        let answer: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            (answer["id"].as_u64(), answer["served_by"].as_str()),
            (Some(id), Some(real.addr.as_str()))
        );
    }
    let (status, _) = get_text(&http, &format!("http://{}/", real.addr), None).await;
    assert_eq!(status, 200);

    // Every copy reached the dark copy and its verify layer scoped it as `dark`; nothing real
    // arrived there.
    let dark_metrics = format!("http://{}/metrics", dark.addr);
    let dark_series = r#"synth_requests_total{service="mirror-example",synthetic="true",origin="dark"}"#;
    let deadline = Instant::now() + Duration::from_secs(10);
    let dark_page = loop {
        let (_, page) = get_text(&http, &dark_metrics, None).await;
        if series(&page, dark_series) == Some(n + 1) || Instant::now() > deadline {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(series(&dark_page, dark_series), Some(n + 1), "{dark_page}");
    assert_eq!(
        series(&dark_page, r#"synth_requests_total{service="mirror-example",synthetic="false"}"#),
        Some(0)
    );
    assert_eq!(
        series(&dark_page, r#"synth_marker_rejected_total{service="mirror-example",reason="bad_signature"}"#),
        Some(0)
    );

    // The dark copy counts a copy when it arrives; the real one counts its answer, then compares
    // it with the real answer: wait for the last comparison.
    let compared = |page: &str| -> u64 {
        CompareResult::ALL
            .iter()
            .filter_map(|r| {
                series(
                    page,
                    &format!(
                        r#"synth_mirror_compared_total{{service="mirror-example",result="{}"}}"#,
                        r.as_str()
                    ),
                )
            })
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let real_page = loop {
        let (_, page) = get_text(&http, &format!("http://{}/metrics", real.addr), None).await;
        if compared(&page) == n + 1 || Instant::now() > deadline {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(compared(&real_page), n + 1, "{real_page}");
    let queued = r#"synth_mirror_requests_total{service="mirror-example",decision="queued"}"#;
    assert_eq!(series(&real_page, queued), Some(n + 1), "{real_page}");
    assert_eq!(
        series(&real_page, r#"synth_mirror_dark_total{service="mirror-example",result="answered"}"#),
        Some(n + 1)
    );
    // Nothing synthetic came to the real instance: /metrics itself is neither verified nor mirrored.
    assert_eq!(
        series(&real_page, r#"synth_requests_total{service="mirror-example",synthetic="false"}"#),
        Some(n + 1)
    );
    for (what, page) in
        [("the real example's /metrics", &real_page), ("the dark example's /metrics", &dark_page)]
    {
        if let Some(checked) = synth_testkit::promtool::check_metrics(what, page) {
            checked.unwrap_or_else(|e| panic!("{what}: {e}\n{page}"));
        }
    }

    // The admin routes: the report needs the token; `served_by` differs but is ignored, so the
    // answers match.
    let report_url = format!("http://{admin}/synthetic/mirror");
    assert_eq!(get_text(&http, &report_url, None).await.0, 401);
    let (status, body) = get_text(&http, &report_url, Some("tok")).await;
    assert_eq!(status, 200, "{body}");
    let report: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(report["run"], "dark-example");
    assert_eq!(report["requests"]["queued"], n + 1);
    assert_eq!(report["compared"]["match"], n + 1, "{report:#}");

    // Switched off from the admin router: no more copies.
    let res = http.post(&report_url).bearer_auth("tok").body(r#"{"enabled": false}"#).send().await.unwrap();
    assert_eq!(res.status(), 200);
    for id in 0..5 {
        assert_eq!(get_text(&http, &format!("http://{}/products/{id}", real.addr), None).await.0, 200);
    }
    let (_, real_page) = get_text(&http, &format!("http://{}/metrics", real.addr), None).await;
    assert_eq!(
        series(&real_page, r#"synth_mirror_requests_total{service="mirror-example",decision="disabled"}"#),
        Some(5)
    );
    let (_, dark_page) = get_text(&http, &dark_metrics, None).await;
    assert_eq!(series(&dark_page, dark_series), Some(n + 1));

    // Switched back on, then the kill switch's stop (the same admin port): mirroring stops at
    // once while real requests are served as before.
    let res = http.post(&report_url).bearer_auth("tok").body(r#"{"enabled": true}"#).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let stop = format!("http://{admin}/synthetic/stop");
    assert_eq!(http.post(&stop).bearer_auth("tok").send().await.unwrap().status(), 200);
    for id in 0..5 {
        assert_eq!(get_text(&http, &format!("http://{}/products/{id}", real.addr), None).await.0, 200);
    }
    let (_, real_page) = get_text(&http, &format!("http://{}/metrics", real.addr), None).await;
    assert_eq!(
        series(&real_page, r#"synth_mirror_requests_total{service="mirror-example",decision="disabled"}"#),
        Some(10)
    );
    assert_eq!(series(&real_page, queued), Some(n + 1));
}

/// A mirror pointed at its own service copies each real request once: the copy arrives marked
/// `dark`, is scoped by the verify layer, and is never copied again (no amplification loop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_example_mirroring_to_itself_copies_each_real_request_once() {
    tokio::task::spawn_blocking(example_binary).await.unwrap();
    // Its own address must be known before it starts: a free port, which another process may
    // take before the example binds it, hence a few tries.
    let me = tokio::task::spawn_blocking(|| {
        let mut tries = Vec::new();
        for _ in 0..5 {
            let port = synth_testkit::free_port().unwrap();
            match start_example_on(
                &format!("127.0.0.1:{port}"),
                &format!("http://127.0.0.1:{port}"),
                "1",
                None,
            ) {
                Ok(me) => return me,
                Err(e) => tries.push(e),
            }
        }
        panic!("the example did not start: {tries:#?}")
    })
    .await
    .unwrap();
    let http = client();
    let n = 10;
    for id in 0..n {
        assert_eq!(get_text(&http, &format!("http://{}/products/{id}", me.addr), None).await.0, 200);
    }
    let metrics = format!("http://{}/metrics", me.addr);
    let synthetic = r#"synth_mirror_requests_total{service="mirror-example",decision="synthetic"}"#;
    let deadline = Instant::now() + Duration::from_secs(10);
    let page = loop {
        let (_, page) = get_text(&http, &metrics, None).await;
        if series(&page, synthetic) == Some(n) || Instant::now() > deadline {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // Give a loop, if there were one, the time to show.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, page_later) = get_text(&http, &metrics, None).await;
    for (line, value) in [
        (r#"synth_mirror_requests_total{service="mirror-example",decision="queued"}"#, n),
        (synthetic, n),
        (r#"synth_requests_total{service="mirror-example",synthetic="false"}"#, n),
        (r#"synth_requests_total{service="mirror-example",synthetic="true",origin="dark"}"#, n),
    ] {
        assert_eq!((series(&page, line), series(&page_later, line)), (Some(value), Some(value)), "{line}");
    }
}

#[test]
fn the_example_refuses_bad_arguments_with_its_usage_and_exit_code_2() {
    let binary = example_binary();
    let cases: [(&[&str], bool, &str); 6] = [
        (&[], true, "expected 3 arguments, got 0"),
        (&["127.0.0.1:0", "http://127.0.0.1:9"], true, "expected 3 arguments, got 2"),
        (&["localhost", "http://127.0.0.1:9", "0.2"], true, "LISTEN `localhost`"),
        (&["127.0.0.1:0", "not a url", "0.2"], true, "DARK_URL"),
        (&["127.0.0.1:0", "http://127.0.0.1:9", "NaN"], true, "SHARE `NaN` is not a number from 0.0 to 1.0"),
        (&["127.0.0.1:0", "http://127.0.0.1:9", "0.2"], false, "SYNTH_KEYS"),
    ];
    for (args, with_keys, expected) in cases {
        let mut cmd = Command::new(binary);
        cmd.args(args).env_remove("SYNTH_KEYS");
        if with_keys {
            cmd.env("SYNTH_KEYS", KEYS);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains(expected) && stderr.contains("usage: mirror LISTEN DARK_URL SHARE"),
            "{args:?}: {stderr}"
        );
        assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"), "{args:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// 2. The proof: share, verification, guards, tagging and cleanup.
// ---------------------------------------------------------------------------------------------

/// The origin and run id of a request's synthetic scope, `None` for a real request.
type Scope = Option<(Origin, String)>;

/// One order service (the real one and its dark new version run the same code): stores the
/// order in a tagged table and charges the payment provider through the `payment.charge` guard.
#[derive(Clone)]
struct Orders {
    db: PgPool,
    guards: GuardRegistry,
    /// The payment provider's stand-in: one per charge that really happened.
    provider_charges: Arc<AtomicU64>,
    /// The synthetic context each request ran in (origin, run), `None` for real ones.
    scopes: Arc<Mutex<Vec<Scope>>>,
}

impl Orders {
    async fn new(url: &str) -> Orders {
        Orders {
            db: PgPoolOptions::new().max_connections(8).connect(url).await.unwrap(),
            guards: GuardRegistry::new(),
            provider_charges: Arc::default(),
            scopes: Arc::default(),
        }
    }
}

async fn create_order(
    State(s): State<Orders>,
    Json(order): Json<Value>,
) -> Result<(StatusCode, Json<Value>), (StatusCode, String)> {
    let failed = |e: sqlx::Error| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
    let field = |name: &str| {
        order[name].as_i64().ok_or_else(|| (StatusCode::BAD_REQUEST, format!("`{name}` is not an integer")))
    };
    let (request, cents) = (field("request")?, field("cents")?);
    s.scopes.lock().unwrap().push(synth_ctx::current().map(|c| (c.origin(), c.run().to_string())));
    // The row: the tag column's default reads the transaction setting `begin_tagged` made from
    // the request's scope (the run id for a dark copy, NULL for a real request).
    let mut tx = begin_tagged(&s.db).await.map_err(failed)?;
    let (id,): (i64,) = sqlx::query_as("INSERT INTO orders (request, cents) VALUES ($1, $2) RETURNING id")
        .bind(request)
        .bind(cents)
        .fetch_one(&mut *tx)
        .await
        .map_err(failed)?;
    tx.commit().await.map_err(failed)?;
    // The charge: real for real requests, a stub for the dark copies (the real request already
    // charged the customer).
    let provider = s.provider_charges.clone();
    let charge = s
        .guards
        .guard("payment.charge")
        .run_checked(
            false,
            async move {
                provider.fetch_add(1, Relaxed);
                format!("ch_{id}")
            },
            |_synthetic| "stubbed".to_owned(),
        )
        .await
        .map_err(|e| (StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    Ok((StatusCode::CREATED, Json(json!({ "order": id, "charge": charge }))))
}

fn orders_app(state: Orders) -> Router {
    Router::new().route("/orders", post(create_order)).with_state(state)
}

/// `(request, cents, id)` of the untagged (real) rows, and the count of rows per tag.
async fn rows(db: &PgPool) -> (Vec<(i64, i64, i64)>, Vec<(Option<String>, i64)>) {
    let real = sqlx::query_as(
        "SELECT request, cents, id FROM orders WHERE synthetic_run_id IS NULL ORDER BY request",
    )
    .fetch_all(db)
    .await
    .unwrap();
    let tags = sqlx::query_as(
        "SELECT synthetic_run_id, COUNT(*) FROM orders GROUP BY synthetic_run_id ORDER BY synthetic_run_id NULLS FIRST",
    )
    .fetch_all(db)
    .await
    .unwrap();
    (real, tags)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifth_of_real_orders_reach_the_dark_service_marked_dark_charge_nothing_and_are_purged() {
    let Some(pg) = PgCluster::start("dark traffic end to end") else { return };
    let url = pg.create_database("dark_traffic");
    let admin_db = PgPoolOptions::new().max_connections(2).connect(&url).await.unwrap();
    sqlx::query(
        "CREATE TABLE orders (id BIGSERIAL PRIMARY KEY, request BIGINT NOT NULL, cents BIGINT NOT NULL)",
    )
    .execute(&admin_db)
    .await
    .unwrap();
    add_tag_column(&mut admin_db.acquire().await.unwrap(), "orders").await.unwrap();

    // The dark service: the new version, verifying markers, guarding its charges, writing into
    // the same (tagged) table as the real one.
    let dark = Orders::new(&url).await;
    let dark_verify = VerifySyntheticLayer::new(Verifier::new(keys())).with_service_name("orders-v2");
    let dark_stats = dark_verify.stats().clone();
    let dark_addr = serve(orders_app(dark.clone()).layer(dark_verify)).await;

    // The real service: the same code, with the mirror inside its verify layer.
    let real = Orders::new(&url).await;
    let mirror = MirrorLayer::builder(
        DarkTarget::url(&format!("http://{dark_addr}")).unwrap(),
        Signer::new(keys()),
        RunId::new(RUN).unwrap(),
    )
    .share(0.2)
    .build()
    .unwrap();
    let handle = mirror.handle();
    let real_verify = VerifySyntheticLayer::new(Verifier::new(keys())).with_service_name("orders");
    let real_stats = real_verify.stats().clone();
    let real_addr = serve(orders_app(real.clone()).layer(mirror).layer(real_verify)).await;

    // N real (unmarked) orders, 16 at a time. 5000 rather than the minimum 2000: the share is
    // sampled at random, and ± 2 points is 3.5 standard deviations at 5000, 2.2 at 2000.
    let n: i64 = 5000;
    let http = client();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..16 {
        let http = http.clone();
        tasks.spawn(async move {
            for request in (w..n).step_by(16) {
                let res = http
                    .post(format!("http://{real_addr}/orders"))
                    .header("content-type", "application/json")
                    .body(json!({ "request": request, "cents": 100 + request }).to_string())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(res.status(), 201, "{}", res.text().await.unwrap());
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    eventually("every copy answered", 30, || settled(&handle)).await;

    // The share: 20 % ± 2 points, and every queued copy answered.
    let s = handle.snapshot();
    let copies = s.decided(Decision::Queued);
    assert_eq!(copies + s.decided(Decision::NotSampled), n as u64, "{s:?}");
    let share = copies as f64 / n as f64;
    assert!((0.18..=0.22).contains(&share), "share {share}: {s:?}");
    assert_eq!(s.dark(DarkResult::Answered), copies, "{s:?}");

    // Each copy verified at the dark service with origin `dark` and the run id; no real request
    // there. The real service saw only real requests.
    let scopes = dark.scopes.lock().unwrap().clone();
    assert_eq!(scopes.len() as u64, copies);
    assert!(scopes.iter().all(|s| s.as_ref() == Some(&(Origin::Dark, RUN.to_owned()))), "{scopes:?}");
    let ds = dark_stats.snapshot();
    assert_eq!((ds.accepted(Origin::Dark), ds.real, ds.rejected_total()), (copies, 0, 0));
    let rs = real_stats.snapshot();
    assert_eq!((rs.real, rs.accepted(Origin::Dark)), (n as u64, 0));
    assert!(real.scopes.lock().unwrap().iter().all(Option::is_none));

    // Charges: all of the dark service's suppressed and counted by its guard, none reached its
    // provider; the real service charged every order once.
    let dark_guard = dark.guards.stats()["payment.charge"];
    assert_eq!((dark_guard.suppressed, dark_guard.executed, dark_guard.context_lost), (copies, 0, 0));
    assert_eq!(dark.provider_charges.load(Relaxed), 0);
    let real_guard = real.guards.stats()["payment.charge"];
    assert_eq!((real_guard.executed, real_guard.suppressed), (n as u64, 0));
    assert_eq!(real.provider_charges.load(Relaxed), n as u64);

    // Rows: N real ones, untagged, one per request; the copies' tagged with the run id, each a
    // copy of a distinct real request.
    let (real_rows, tags) = rows(&admin_db).await;
    assert_eq!(tags, vec![(None, n), (Some(RUN.to_owned()), copies as i64)]);
    assert_eq!(real_rows.iter().map(|r| r.0).collect::<Vec<_>>(), (0..n).collect::<Vec<_>>());
    let dark_requests: Vec<(i64, i64)> =
        sqlx::query_as("SELECT request, cents FROM orders WHERE synthetic_run_id = $1")
            .bind(RUN)
            .fetch_all(&admin_db)
            .await
            .unwrap();
    let distinct: BTreeSet<i64> = dark_requests.iter().map(|r| r.0).collect();
    assert_eq!(distinct.len() as u64, copies, "a request copied twice");
    assert!(dark_requests.iter().all(|(request, cents)| (0..n).contains(request) && *cents == 100 + request));

    // synth-cleanup purges exactly the dark rows; the real rows are as they were, byte for byte,
    // and so are the charges.
    let report = cleanup(
        &url,
        &CleanupOptions::new(vec!["orders".into()], Selector::Run(RunId::new(RUN).unwrap())),
        &mut |_| {},
    )
    .await
    .unwrap();
    assert_eq!(report.total_rows(), copies);
    assert!(report.fully_purged());
    let (real_after, tags_after) = rows(&admin_db).await;
    assert_eq!(tags_after, vec![(None, n)]);
    assert_eq!(real_after, real_rows);
    assert_eq!((real.provider_charges.load(Relaxed), dark.provider_charges.load(Relaxed)), (n as u64, 0));
}

// ---------------------------------------------------------------------------------------------
// 3. No harm: loadgen against a real service whose dark target misbehaves.
// ---------------------------------------------------------------------------------------------

/// Dark targets that misbehave.
#[derive(Clone, Copy, Debug)]
enum Bad {
    Hangs,
    Resets,
    Answers500,
    NotListening,
}

async fn bad_target(kind: Bad) -> SocketAddr {
    match kind {
        Bad::NotListening => {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap() // dropped: nothing listens there
        }
        Bad::Answers500 => {
            serve(Router::new().fallback(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "boom") })).await
        }
        Bad::Hangs | Bad::Resets => {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                let mut held = Vec::new();
                while let Ok((conn, _)) = listener.accept().await {
                    if let Bad::Hangs = kind {
                        held.push(conn); // accepted, never read, never answered
                    } else {
                        // Linger 0 sends a reset on close, at once (it cannot block the thread).
                        #[allow(deprecated)]
                        let _ = conn.set_linger(Some(Duration::ZERO));
                        drop(conn);
                    }
                }
            });
            addr
        }
    }
}

/// The real service: a product page, counting its answers by status class.
fn product_app(answers: Arc<[AtomicU64; 6]>) -> Router {
    Router::new()
        .route(
            "/products/{id}",
            get(|UrlPath(id): UrlPath<u64>| async move { Json(json!({ "id": id, "price": id * 100 })) }),
        )
        .layer(axum::middleware::from_fn(move |req: axum::extract::Request, next: axum::middleware::Next| {
            let answers = answers.clone();
            async move {
                let res = next.run(req).await;
                answers[usize::from(res.status().as_u16() / 100).min(5)].fetch_add(1, Relaxed);
                res
            }
        }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dark_target_that_hangs_resets_fails_or_is_absent_never_fails_a_real_request() {
    for kind in [Bad::Hangs, Bad::Resets, Bad::Answers500, Bad::NotListening] {
        let dark = bad_target(kind).await;
        // loadgen marks every request it sends; the mirror is asked to copy marked requests
        // too, so that this load stands for real traffic (each copy carries only its own
        // `dark` marker).
        let mirror = MirrorLayer::builder(
            DarkTarget::url(&format!("http://{dark}")).unwrap(),
            Signer::new(keys()),
            RunId::new(RUN).unwrap(),
        )
        .share(1.0)
        .mirror_synthetic(true)
        .compare(CompareSpec::default())
        .timeout(Duration::from_millis(250))
        .build()
        .unwrap();
        let handle = mirror.handle();
        let answers: Arc<[AtomicU64; 6]> = Arc::default();
        let real = serve(product_app(answers.clone()).layer(mirror)).await;

        // Open model, 2 s at 200 arrivals/s.
        let yaml = format!(
            "target: http://{real}\nphases: [{{ duration: 2s, arrival_rate: 200 }}]\n\
             journeys: [{{ name: product, steps: [{{ get: /products/7 }}] }}]\n"
        );
        let config = RunConfig::new(keys())
            .with_run_id(RunId::new("no-harm").unwrap())
            .with_quiet(true)
            .with_no_preflight(true);
        let outcome = loadgen::run(Arc::new(Scenario::from_yaml(&yaml).unwrap()), config).await.unwrap();
        assert_eq!(outcome.exit(), Exit::Ok, "{kind:?}: {}", outcome.summary());
        let total = outcome.to_json()["total"].clone();
        let sent = total["requests"].as_u64().unwrap();
        assert!(sent >= 300, "{kind:?}: {total}");
        assert!(total["errors"].as_object().unwrap().values().all(|v| v == 0), "{kind:?}: {total}");
        assert_eq!(total["status_codes"], json!({ "200": sent }), "{kind:?}: {total}");
        // The service's own count agrees: every answer a 2xx.
        let counted: Vec<u64> = answers.iter().map(|a| a.load(Relaxed)).collect();
        assert_eq!(counted, vec![0, 0, sent, 0, 0, 0], "{kind:?}");

        // And the mirror counted every dark failure.
        eventually("every copy settled", 10, || settled(&handle)).await;
        let s = handle.snapshot();
        let copies = s.decided(Decision::Queued);
        assert_eq!(copies + s.decided(Decision::QueueFull), sent, "{kind:?}: {s:?}");
        assert!(copies > 0, "{kind:?}: {s:?}");
        let (errors, timeouts) = (s.dark(DarkResult::Error), s.dark(DarkResult::Timeout));
        match kind {
            Bad::Hangs => assert_eq!(timeouts, copies, "{kind:?}: {s:?}"),
            // A reset or a refused connection is an error; on a loaded machine one may take
            // longer than the 250 ms timeout and count as a timeout instead, never as answered.
            Bad::Resets | Bad::NotListening => {
                assert_eq!(errors + timeouts, copies, "{kind:?}: {s:?}");
                assert!(errors * 10 >= copies * 9, "{kind:?}: {s:?}");
            }
            // Answered, with a 500: every comparison (made after the answer is counted) a
            // mismatch.
            Bad::Answers500 => {
                assert_eq!(s.dark(DarkResult::Answered), copies, "{kind:?}: {s:?}");
                let compared = |h: &MirrorHandle| {
                    let s = h.snapshot();
                    CompareResult::ALL.iter().map(|r| s.compared(*r)).sum::<u64>()
                };
                eventually("every comparison", 10, || compared(&handle) == copies).await;
                let s = handle.snapshot();
                assert_eq!(s.compared(CompareResult::Mismatch), copies, "{kind:?}: {s:?}");
                assert!(
                    handle.mismatch_samples().iter().all(|m| m.dark_status == 500 && m.real_status == 200)
                );
            }
        }
        if !matches!(kind, Bad::Answers500) {
            assert!(!handle.error_samples().is_empty(), "{kind:?}");
        }
    }
}

/// A mirror asked to copy synthetic requests too (`mirror_synthetic(true)`, as above, for a
/// load test's traffic) and pointed at its own service (or at a service that mirrors back):
/// a copy, marked `dark`, must never be copied again, or the copies multiply without end and
/// load the real service. With and without a verify layer in front of the mirror (the marker
/// then seen in the scope, or only in the header).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_is_never_copied_again_even_when_synthetic_requests_are_mirrored() {
    for verified in [true, false] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mirror = MirrorLayer::builder(
            DarkTarget::url(&format!("http://{addr}")).unwrap(),
            Signer::new(keys()),
            RunId::new(RUN).unwrap(),
        )
        .share(1.0)
        .mirror_synthetic(true)
        .build()
        .unwrap();
        let handle = mirror.handle();
        let answers: Arc<[AtomicU64; 6]> = Arc::default();
        let app = product_app(answers.clone()).layer(mirror);
        let app = if verified { app.layer(VerifySyntheticLayer::new(Verifier::new(keys()))) } else { app };
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

        let http = client();
        let n = 10;
        for id in 0..n {
            assert_eq!(get_text(&http, &format!("http://{addr}/products/{id}"), None).await.0, 200);
        }
        // A load test's request is still copied, once: that is what mirror_synthetic asks.
        let load =
            Signer::new(keys()).mint(Origin::Load, &RunId::new("load-run").unwrap(), Duration::from_secs(60));
        let res = http
            .get(format!("http://{addr}/products/1"))
            .header("synthetic-traffic", load)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        // Time for a loop, if there is one, to show (it makes thousands of copies a second).
        tokio::time::sleep(Duration::from_millis(500)).await;
        let s = handle.snapshot();
        assert_eq!(s.decided(Decision::Queued), n + 1, "verified: {verified}: {s:?}");
        eventually("settled", 10, || settled(&handle)).await;
        let s = handle.snapshot();
        assert_eq!(s.decided(Decision::Queued), n + 1, "verified: {verified}: {s:?}");
        assert_eq!(s.decided(Decision::Synthetic), n + 1, "verified: {verified}: {s:?}");
        let served: u64 = answers.iter().map(|a| a.load(Relaxed)).sum();
        assert_eq!(served, 2 * (n + 1), "verified: {verified}");
    }
}
