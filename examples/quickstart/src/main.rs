//! The smallest real service with synth: one route, `POST /orders`, that stores a row, charges a
//! card and mails a confirmation, safe under synthetic load. Copy it, then replace the stand-ins.
//!
//! ```sh
//! export SYNTH_KEYS=$(loadgen keygen --kid k1)          # the service and loadgen share it
//! SYNTH_ADMIN_TOKEN=change-me cargo run -p quickstart -- 127.0.0.1:3000
//! loadgen preflight examples/quickstart/quickstart.yaml  # hops and guards, each journey once
//! loadgen run examples/quickstart/quickstart.yaml
//! ```
//!
//! Everything it does lands in `QUICKSTART_DATA` (default `./quickstart-data`): `orders.db`
//! (SQLite), `outbox/` (one `.eml` file per e-mail sent) and `payments.log` (one line per charge).

use std::{path::PathBuf, sync::Arc, time::Instant};

use anyhow::Context as _;
use axum::{
    Json, Router,
    extract::{Request, State},
    http::StatusCode,
    middleware::{self, Next},
    response::Response,
    routing::{get, post},
};
use lettre::{AsyncFileTransport, AsyncTransport as _, Message, Tokio1Executor, message::Mailbox};
use metrics_exporter_prometheus::PrometheusBuilder;
use serde_json::{Value, json};
use sqlx::{SqlitePool, sqlite::SqliteConnectOptions};
use synth_ctx::{KeyRing, Verifier};
use synth_guards::{
    Guard, GuardRegistry,
    db::{current_tag, sqlite::add_tag_column},
    email::{GuardedTransport, Sent},
    identity::{EmailClass, ReservedDomains},
    telemetry::metrics_layer::{LATENCY_BUCKETS, SyntheticRecorder},
};
use synth_tower::{VerifySyntheticLayer, admin::admin_router};

/// Test cards start with this: a charge with one is synthetic whatever the context says.
const TEST_CARD_PREFIX: &str = "4000000000000";

struct App {
    db: SqlitePool,
    payment: Guard,
    mailer: GuardedTransport<AsyncFileTransport<Tokio1Executor>>,
    payments_log: PathBuf,
}

#[derive(serde::Deserialize)]
struct NewOrder {
    email: String,
    card: String,
    cents: i64,
}

type Answer = Result<(StatusCode, Json<Value>), (StatusCode, String)>;

fn failed(e: impl std::fmt::Display) -> (StatusCode, String) {
    (StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
}

async fn create_order(State(app): State<Arc<App>>, Json(order): Json<NewOrder>) -> Answer {
    // Every input is read before any effect: a bad one is refused with nothing stored,
    // charged or mailed (a customer told "failed" must not have been charged).
    let bad = |what: &str| (StatusCode::BAD_REQUEST, what.to_owned());
    let to: Mailbox = order.email.parse().map_err(|_| bad("`email` is not an address"))?;
    let card: String = order.card.chars().filter(|c| !c.is_whitespace() && *c != '-').collect();
    if card.is_empty() || !card.chars().all(|c| c.is_ascii_digit()) {
        return Err(bad("`card` is not a card number"));
    }
    if order.cents <= 0 {
        return Err(bad("`cents` must be more than 0"));
    }
    // A test card or a reserved address (`@loadtest.invalid`, ...) in a request without a marker
    // means the marker was lost on the way: refuse it before anything happens (the guard counts
    // it as context lost). The address classified is the one the e-mail will go to.
    let test_card = card.starts_with(TEST_CARD_PREFIX);
    let reserved = match ReservedDomains::default().classify(to.email.as_ref()) {
        Ok(class) => class == EmailClass::Synthetic,
        Err(e) => return Err((StatusCode::BAD_REQUEST, format!("`email`: {e}"))),
    };
    app.payment
        .check_context(test_card || reserved)
        .map_err(|e| (StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;

    // Tagged row: `current_tag()` is the run id in a synthetic request, NULL for real ones.
    let (id,): (i64,) =
        sqlx::query_as("INSERT INTO orders (email, cents, synthetic_run_id) VALUES (?, ?, ?) RETURNING id")
            .bind(&order.email)
            .bind(order.cents)
            .bind(current_tag())
            .fetch_one(&app.db)
            .await
            .map_err(failed)?;

    // The payment: the real call for real traffic, the stub for synthetic traffic.
    let charge = app
        .payment
        .run_checked(test_card, charge_card(&app.payments_log, id, order.cents), |_synthetic| {
            Ok("stubbed".to_owned())
        })
        .await
        .map_err(|e| (StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?
        .map_err(failed)?;

    // The e-mail: the guarded transport drops it for synthetic traffic (and would refuse a
    // reserved address in a real request, had the check above not already).
    let message = Message::builder()
        .from("Shop <orders@shop.example>".parse().map_err(failed)?)
        .to(to)
        .subject(format!("Your order {id}"))
        .body(format!("Thank you! Order {id} is paid ({charge}).\n"))
        .map_err(failed)?;
    let mailed = match app.mailer.send(message).await.map_err(failed)? {
        Sent::Delivered(_) => true,
        Sent::Suppressed { .. } => false,
    };

    // Ask, anywhere in the request: here only to tell the caller what happened.
    let synthetic = synth_ctx::is_synthetic();
    Ok((
        StatusCode::CREATED,
        Json(json!({ "order": id, "charge": charge, "mailed": mailed, "synthetic": synthetic })),
    ))
}

/// The payment provider's stand-in: one line per charge. Replace it with your provider's call.
async fn charge_card(log: &PathBuf, order: i64, cents: i64) -> std::io::Result<String> {
    use tokio::io::AsyncWriteExt as _;
    let mut file = tokio::fs::OpenOptions::new().create(true).append(true).open(log).await?;
    file.write_all(format!("order={order} cents={cents}\n").as_bytes()).await?;
    Ok(format!("ch_{order}"))
}

/// Times every request. Inside the synth layer, so `SyntheticRecorder` labels each value
/// `synthetic="true"|"false"` from the request's scope.
async fn timed(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let res = next.run(req).await;
    metrics::histogram!("http_request_duration_seconds", "status" => res.status().as_str().to_owned())
        .record(start.elapsed().as_secs_f64());
    res
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let keys = KeyRing::from_env().context(
        "SYNTH_KEYS: set it to the key ring loadgen signs with (`loadgen keygen --kid k1` makes one)",
    )?;
    let listen = std::env::args().nth(1).or_else(|| std::env::var("QUICKSTART_LISTEN").ok());
    let listen = listen.unwrap_or_else(|| "127.0.0.1:3000".to_owned());
    let data = PathBuf::from(std::env::var("QUICKSTART_DATA").unwrap_or_else(|_| "quickstart-data".into()));
    std::fs::create_dir_all(data.join("outbox")).with_context(|| format!("creating {}", data.display()))?;

    // Histograms (buckets), not the exporter's default summaries, and every series split.
    let prometheus = PrometheusBuilder::new().set_buckets(LATENCY_BUCKETS)?.build_recorder();
    let metrics_handle = prometheus.handle();
    metrics::set_global_recorder(SyntheticRecorder::new(prometheus))?;
    metrics::describe_histogram!("http_request_duration_seconds", metrics::Unit::Seconds, "Time to answer.");

    let options = SqliteConnectOptions::new().filename(data.join("orders.db")).create_if_missing(true);
    let db = SqlitePool::connect_with(options).await.context("opening orders.db")?;
    sqlx::query("CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, email TEXT NOT NULL, cents INTEGER NOT NULL)")
        .execute(&db)
        .await?;
    add_tag_column(&mut *db.acquire().await?, "orders").await?; // idempotent

    let app = Arc::new(App {
        db,
        payment: Guard::new("payment.charge"),
        mailer: GuardedTransport::new(AsyncFileTransport::new(data.join("outbox"))), // guard `email`
        payments_log: data.join("payments.log"),
    });

    // The service's name is what `synthetic-traffic-path` (and a scenario's `expect_path`) shows.
    let synth = VerifySyntheticLayer::new(Verifier::new(keys)).with_service_name("quickstart");
    let (kill_switch, stats) = (synth.kill_switch().clone(), synth.stats().clone());
    let page_stats = stats.clone();
    let metrics_page = move || {
        let page = format!(
            "{}{}{}",
            metrics_handle.render(),
            page_stats.snapshot().to_prometheus("quickstart"),
            GuardRegistry::global().render_prometheus()
        );
        std::future::ready(page)
    };
    let service = Router::new()
        .route("/orders", post(create_order))
        .with_state(app)
        .layer(middleware::from_fn(timed))
        .layer(synth) // outermost: everything above runs inside the synthetic scope
        .route("/metrics", get(metrics_page));

    let listener =
        tokio::net::TcpListener::bind(&listen).await.with_context(|| format!("binding {listen}"))?;
    println!("quickstart listening on http://{}", listener.local_addr()?);
    // The stop button, on its own (internal) port: POST /synthetic/stop, /synthetic/resume,
    // GET /synthetic/status, each with `Authorization: Bearer $SYNTH_ADMIN_TOKEN`.
    // An empty token would serve a stop button that refuses everyone: that is no stop button.
    let token = std::env::var("SYNTH_ADMIN_TOKEN").ok().filter(|t| !t.trim().is_empty());
    if let Some(token) = token {
        let admin_listen =
            std::env::var("QUICKSTART_ADMIN_LISTEN").unwrap_or_else(|_| "127.0.0.1:3001".into());
        let admin = tokio::net::TcpListener::bind(&admin_listen)
            .await
            .with_context(|| format!("binding {admin_listen}"))?;
        println!("admin listening on http://{}", admin.local_addr()?);
        tokio::spawn(axum::serve(admin, admin_router(kill_switch, stats, token)).into_future());
    } else {
        println!("admin router off: set SYNTH_ADMIN_TOKEN to a secret (not empty) to serve it");
    }
    axum::serve(listener, service).await?;
    Ok(())
}
