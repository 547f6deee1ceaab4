//! `shop-demo`: the example shop under tagged load, in about a minute.
//!
//! 1. starts the shop (gateway, catalog over gRPC, orders, payments, fraud check) on loopback,
//!    SQLite and `.eml` files in a fresh directory;
//! 2. runs a trickle of real users (no marker) while loadgen drives `examples/shop/journeys.yaml`
//!    (browse, search, login + basket + checkout, weighted, ramping up), every request signed;
//! 3. sends one checkout with a forged marker by hand;
//! 4. runs synth-cleanup for the run;
//! 5. prints what every service saw, real versus synthetic, and exits 1 if any check fails.

use std::{
    io::Write as _,
    path::PathBuf,
    process::ExitCode,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::Parser;
use serde_json::json;
use shop::{
    MailTarget, Shop, ShopConfig,
    common::{get_text, http_client, post_json},
    verify::{self, Forged, Observed, ServiceStats},
};
use synth_ctx::{KeyRing, Origin, RunId, Signer, Verifier};
use synth_guards::cleanup::{CleanupOptions, Selector, cleanup};

/// The example shop under tagged load: what a synthetic run touches, and what it must not.
#[derive(Debug, Parser)]
#[command(
    name = "shop-demo",
    version,
    about,
    after_help = "Exit codes: 0 every check passed, 1 a check failed, 2 the demo could not run."
)]
struct Cli {
    /// Where the database, the emails and the reports go (default: a new temporary directory).
    #[arg(long)]
    out: Option<PathBuf>,
    /// The journeys loadgen runs.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../shop/journeys.yaml"))]
    scenario: PathBuf,
    /// Real users browsing and buying alongside the load.
    #[arg(long, default_value_t = 4)]
    real_users: usize,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("shop-demo: starting the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match rt.block_on(demo(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("shop-demo: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn demo(cli: Cli) -> anyhow::Result<bool> {
    let run = RunId::new(format!("demo-{}", std::process::id()))?;
    let out = match cli.out {
        Some(dir) => dir,
        None => std::env::temp_dir().join(format!("shop-demo-{run}")),
    };
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let out = out.canonicalize().unwrap_or(out);

    // A fresh signing key for this demo, shared by loadgen (signs) and the shop (verifies).
    let mut key = Vec::new();
    loadgen::cli::run(loadgen::cli::Cli::parse_from(["loadgen", "keygen", "--kid", "demo"]), &mut key)?;
    let key = String::from_utf8(key)?.trim().to_owned();
    let keys_file = out.join("synth-keys");
    std::fs::write(&keys_file, format!("{key}\n"))?;
    let verifier = Verifier::new(KeyRing::parse(&key)?);

    let database_url = format!("sqlite://{}", out.join("shop.db").display());
    let mail_dir = out.join("mail");
    let shop = Shop::start(ShopConfig {
        verifier,
        database_url: database_url.clone(),
        mail: MailTarget::Dir(mail_dir.clone()),
        admin_token: String::new(),
    })
    .await
    .context("starting the shop")?;
    let services = shop.services();
    eprintln!(
        "shop: gateway http://{}, catalog (gRPC) http://{}, orders http://{}, payments http://{}, fraud-check http://{}",
        shop.gateway, shop.catalog, shop.orders, shop.payments, shop.fraud
    );
    let db_start = shop.store.counts(run.as_str()).await?;

    // Real users: no marker, real emails, a real-looking card.
    let stop_real = Arc::new(AtomicBool::new(false));
    let real = RealTraffic::default();
    let real_tasks: Vec<_> = (0..cli.real_users)
        .map(|i| {
            tokio::spawn(real_user(i, format!("http://{}", shop.gateway), stop_real.clone(), real.clone()))
        })
        .collect();

    eprintln!("loadgen: {} against the gateway, run {run}", cli.scenario.display());
    let report_json = out.join("report.json");
    let report_html = out.join("report.html");
    let args = [
        "loadgen".to_owned(),
        "run".into(),
        cli.scenario.display().to_string(),
        "--target".into(),
        format!("http://{}", shop.gateway),
        "--run-id".into(),
        run.to_string(),
        "--keys-file".into(),
        keys_file.display().to_string(),
        "--report-json".into(),
        report_json.display().to_string(),
        "--report-html".into(),
        report_html.display().to_string(),
    ];
    let mut stdout = std::io::stdout();
    let exit = loadgen::cli::run_async(loadgen::cli::Cli::try_parse_from(args)?, &mut stdout).await?;

    stop_real.store(true, Relaxed);
    for t in real_tasks {
        let _ = t.await;
    }
    let forged = forged_probe(&shop, &services, &run).await?;
    eprintln!(
        "real users: {} requests, {} checkouts, {} errors",
        real.requests.load(Relaxed),
        real.checkouts.load(Relaxed),
        real.errors.load(Relaxed)
    );
    wait_for_emails(&services).await;

    let stats = ServiceStats::fetch(&services).await?;
    let (_, gateway_metrics) = get_text(&format!("http://{}/metrics", shop.gateway)).await?;
    let db_before_cleanup = shop.store.counts(run.as_str()).await?;
    shop.stop();

    eprintln!(
        "cleanup: synth-cleanup --database-url {database_url} --tables {} --run {run}",
        shop::store::TABLES.join(",")
    );
    let tables = shop::store::TABLES.iter().map(|t| (*t).to_owned()).collect();
    let report =
        cleanup(&database_url, &CleanupOptions::new(tables, Selector::Run(run.clone())), &mut |_| {})
            .await
            .context("cleanup")?;
    let db_after_cleanup = shop.store.counts(run.as_str()).await?;

    let loadgen_report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report_json)?)?;
    let observed = Observed {
        stats,
        db_start,
        db_before_cleanup,
        db_after_cleanup,
        purged: report.total_rows(),
        emails_arrived: Some(shop::mail::count_eml(&mail_dir)?),
        forged: Some(forged),
        gateway_metrics,
        loadgen: Some(loadgen_report),
    };
    let checks = verify::checks(&observed);
    let ok = checks.iter().all(|c| c.ok);
    let mut o = std::io::stdout().lock();
    writeln!(o, "\n{}", verify::table(&checks))?;
    writeln!(o, "reports: {} and {}", report_html.display(), report_json.display())?;
    writeln!(o, "database: {}  emails: {}", out.join("shop.db").display(), mail_dir.display())?;
    if !matches!(exit, loadgen::cli::Exit::Ok) {
        writeln!(o, "loadgen: thresholds or run did not pass (exit code {})", exit as u8)?;
    }
    writeln!(o, "{}", if ok { "every check passed" } else { "SOME CHECKS FAILED" })?;
    Ok(ok && matches!(exit, loadgen::cli::Exit::Ok))
}

#[derive(Clone, Debug, Default)]
struct RealTraffic {
    requests: Arc<AtomicU64>,
    checkouts: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
}

/// One real user: log in, look at a product, add it, check out, rest; until told to stop.
async fn real_user(i: usize, gateway: String, stop: Arc<AtomicBool>, t: RealTraffic) {
    let client = http_client();
    let mut n = 0u64;
    while !stop.load(Relaxed) {
        n += 1;
        let product = 1 + (i as u64 * 17 + n * 7) % 100;
        let ok = async {
            let (s, _, login) = post_json(
                client.clone(),
                &format!("{gateway}/login"),
                &json!({ "email": format!("customer{i}@shop.example"), "password": "hunter2" }),
            )
            .await
            .ok()?;
            t.requests.fetch_add(1, Relaxed);
            let token = login.get("token")?.as_str()?.to_owned();
            let (s2, _) = get_text(&format!("{gateway}/products/{product}")).await.ok()?;
            t.requests.fetch_add(1, Relaxed);
            let auth = format!("Bearer {token}");
            let basket = post_auth(
                &client,
                &format!("{gateway}/basket"),
                &auth,
                json!({ "sku": format!("sku-{product}"), "qty": 1 }),
            )
            .await?;
            t.requests.fetch_add(1, Relaxed);
            let checkout = post_auth(
                &client,
                &format!("{gateway}/checkout"),
                &auth,
                json!({ "card": "4242424242424242" }),
            )
            .await?;
            t.requests.fetch_add(1, Relaxed);
            t.checkouts.fetch_add(u64::from(checkout == 201), Relaxed);
            Some(s.is_success() && s2.is_success() && basket == 200 && checkout == 201)
        }
        .await;
        if ok != Some(true) {
            t.errors.fetch_add(1, Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
}

async fn post_auth(
    client: &shop::common::HttpClient,
    url: &str,
    auth: &str,
    body: serde_json::Value,
) -> Option<u16> {
    use tower::ServiceExt as _;
    let req = http::Request::post(url)
        .header("content-type", "application/json")
        .header("authorization", auth)
        .body(http_body_util::Full::new(bytes::Bytes::from(body.to_string())))
        .ok()?;
    let res = client.clone().oneshot(req).await.ok()?;
    Some(res.status().as_u16())
}

/// A real customer's checkout carrying a marker signed with the wrong secret: refused with
/// 403, and nothing happens.
async fn forged_probe(
    shop: &Shop,
    services: &[(&'static str, String)],
    run: &RunId,
) -> anyhow::Result<Forged> {
    let gateway = format!("http://{}", shop.gateway);
    let client = http_client();
    let (_, _, login) = post_json(
        client.clone(),
        &format!("{gateway}/login"),
        &json!({ "email": "mallory@shop.example", "password": "x" }),
    )
    .await?;
    let auth = format!("Bearer {}", login.get("token").and_then(|t| t.as_str()).unwrap_or(""));
    post_auth(&client, &format!("{gateway}/basket"), &auth, json!({ "sku": "sku-1", "qty": 1 })).await;
    wait_for_emails(services).await;
    let before = verify::effects(&ServiceStats::fetch(services).await?);
    // Same key id as the real key, attacker's secret: a forgery.
    let forger = Signer::new(KeyRing::parse("demo:ZmFrZS1zZWNyZXQtb2YtYW4tYXR0YWNrZXItMzItYnl0ZXM")?);
    let token = forger.mint(Origin::Load, run, Duration::from_secs(600));
    use tower::ServiceExt as _;
    let req = http::Request::post(format!("{gateway}/checkout"))
        .header("content-type", "application/json")
        .header("authorization", &auth)
        .header(synth_ctx::propagation::HEADER, token)
        .body(http_body_util::Full::new(bytes::Bytes::from(r#"{"card":"4242424242424242"}"#)))?;
    let status = client.oneshot(req).await.map_err(|e| anyhow::anyhow!("{e}"))?.status().as_u16();
    tokio::time::sleep(Duration::from_millis(200)).await;
    wait_for_emails(services).await;
    let after = verify::effects(&ServiceStats::fetch(services).await?);
    eprintln!("forged marker at the gateway: HTTP {status}");
    Ok(Forged { status, effects_before: before, effects_after: after })
}

/// Waits (up to 10 s) until the orders service has no confirmation email in flight.
async fn wait_for_emails(services: &[(&'static str, String)]) {
    let Some((_, orders)) = services.iter().find(|(n, _)| *n == "orders") else { return };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let pending = get_text(&format!("{orders}/stats"))
            .await
            .ok()
            .and_then(|(_, b)| serde_json::from_str::<serde_json::Value>(&b).ok())
            .and_then(|v| v.get("emails_pending").and_then(serde_json::Value::as_u64));
        if pending == Some(0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
