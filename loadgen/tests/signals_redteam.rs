//! loadgen's safety signals, preflight `--observe` and its own `/metrics` page: holes found by a
//! red team; each test failed before the fix.
//!
//! - a condition whose query returns a range vector (a matrix) never reads: the run does not
//!   start, and one that turns into a matrix mid-run aborts it;
//! - a signal source that answers something else than the query API (an SSO login page) stops
//!   the run before it starts, saying what came back;
//! - nothing is sent before the signals' first good answer, whatever `on_unavailable` says;
//! - loadgen's own `/metrics` page passes `promtool check metrics`;
//! - `--observe` credits a guard's rise to at most as many steps as it rose;
//! - answers loadgen reads itself (signal sources, `--observe` pages) are bounded (4 MiB).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{Read as _, Write as _},
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, body::Body, http::StatusCode, response::IntoResponse, routing::get};
use bytes::Bytes;
use loadgen::Exit;
use serde_json::Value;

#[path = "support/cli.rs"]
mod support;

const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

async fn serve(app: Router) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

/// A target that counts the requests it gets.
async fn counting_target() -> (SocketAddr, Arc<AtomicU64>) {
    let hits = Arc::new(AtomicU64::new(0));
    let h = hits.clone();
    let app = Router::new().route(
        "/",
        get(move || {
            h.fetch_add(1, Ordering::Relaxed);
            async { "ok" }
        }),
    );
    (serve(app).await, hits)
}

/// A query API that always gives the same answer.
async fn source(status: StatusCode, content_type: &'static str, body: &'static str) -> SocketAddr {
    serve(Router::new().route(
        "/api/v1/query",
        get(move || async move { (status, [("content-type", content_type)], body).into_response() }),
    ))
    .await
}

/// A query API whose answer depends on the seconds since it started.
async fn scripted_source(
    script: impl Fn(f64) -> (StatusCode, &'static str) + Clone + Send + Sync + 'static,
) -> SocketAddr {
    let started = Instant::now();
    serve(Router::new().route(
        "/api/v1/query",
        get(move || {
            let (status, body) = script(started.elapsed().as_secs_f64());
            async move { (status, [("content-type", "application/json")], body).into_response() }
        }),
    ))
    .await
}

fn write(name: &str, yaml: &str) -> PathBuf {
    support::scenario_file("loadgen-signals-redteam", name, yaml, KEYS)
}

/// Runs the file through the typed API with its JSON report beside it.
async fn run(
    path: &std::path::Path,
    configure: impl FnOnce(loadgen::RunConfig) -> loadgen::RunConfig,
) -> (Exit, String) {
    let json = path.with_extension("json");
    support::run_file(path, |c| configure(c.with_report_json(&json))).await
}

fn report(path: &std::path::Path) -> Value {
    serde_json::from_slice(&std::fs::read(path.with_extension("json")).unwrap()).unwrap()
}

fn scenario(target: SocketAddr, prom: SocketAddr, signals_extra: &str, query: &str) -> String {
    format!(
        "target: http://{target}\nphases: [{{ duration: 2s, arrival_rate: 20 }}]\njourneys: [{{ name: s, steps: [{{ get: / }}] }}]\n\
         signals:\n  prometheus: http://{prom}\n  interval: 200ms\n  timeout: 500ms\n{signals_extra}  conditions:\n    - {{ name: real 5xx, query: '{query}', above: 0.01, action: abort }}\n"
    )
}

const MATRIX: &str = r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"job":"shop"},"values":[[1.7e9,"0.5"]]}]}}"#;
const HEALTHY: &str = r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"job":"shop"},"value":[1.7e9,"0.001"]}]}}"#;

/// A condition whose query returns a range vector (`errors[5m]` as an instant query) can never
/// be compared with its bound: a scenario mistake like a refused query. It used to be a warning
/// ("the source did not answer") and, with `on_unavailable: continue`, a run blind for its
/// whole length.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_matrix_typed_signal_stops_the_run_before_it_starts_and_aborts_it_mid_run() {
    let (t, hits) = counting_target().await;
    let prom = source(StatusCode::OK, "application/json", MATRIX).await;
    let file = write("matrix", &scenario(t, prom, "  on_unavailable: continue\n", "errors[5m]"));
    let (exit, out) = run(&file, |c| c).await;
    assert_eq!(exit, Exit::PreflightFailed, "{} requests sent: {out}", hits.load(Ordering::Relaxed));
    assert_eq!(hits.load(Ordering::Relaxed), 0);
    assert!(out.contains("real 5xx") && out.contains("matrix") && out.contains("rate("), "{out}");

    // Readable at the start, a matrix later (a rule reloaded with a range selector): abort.
    let prom = scripted_source(|t| (StatusCode::OK, if t < 0.5 { HEALTHY } else { MATRIX })).await;
    let file = write("matrix-later", &scenario(t, prom, "  on_unavailable: continue\n", "errors"));
    let (exit, out) = run(&file, |c| c).await;
    assert_eq!(exit, Exit::Stopped, "{out}");
    let report = report(&file);
    let reason = report["abort_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("real 5xx") && reason.contains("matrix"), "{reason}");
    assert!(report["duration_s"].as_f64().unwrap() < 1.5, "{}", report["duration_s"]);
}

/// An SSO proxy in front of Prometheus answers 200 with an HTML login page: a configuration
/// mistake, not an outage. It used to be a warning, then a blind run with `continue`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_that_answers_a_login_page_stops_the_run_and_says_what_came_back() {
    let (t, hits) = counting_target().await;
    let prom = source(StatusCode::OK, "text/html", "<html><body>Sign in</body></html>").await;
    let file = write("html", &scenario(t, prom, "  on_unavailable: continue\n", "errors"));
    let (exit, out) = run(&file, |c| c).await;
    assert_eq!(exit, Exit::PreflightFailed, "{} requests sent: {out}", hits.load(Ordering::Relaxed));
    assert_eq!(hits.load(Ordering::Relaxed), 0);
    let url = format!("http://{prom}/api/v1/query");
    for what in [url.as_str(), "200", "text/html", "Sign in", "signals.prometheus"] {
        assert!(out.contains(what), "the message names {what}: {out}");
    }

    // JSON that is not the query API's (another API at that URL) is no better.
    let prom = source(StatusCode::OK, "application/json", r#"{"message":"Unauthorized"}"#).await;
    let file = write("other-json", &scenario(t, prom, "", "errors"));
    let (exit, out) = run(&file, |c| c).await;
    assert_eq!(exit, Exit::PreflightFailed, "{out}");
    assert!(out.contains("Unauthorized"), "{out}");
    assert_eq!(hits.load(Ordering::Relaxed), 0);
}

/// Nothing is sent before the first good answer, whatever `on_unavailable` says: `abort` with
/// a source down at the start used to send load blind until `unavailable_after` polls had
/// failed (22 requests), and `continue` sent it for the whole run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_sent_before_the_signals_first_good_answer_whatever_on_unavailable_says() {
    let (t, hits) = counting_target().await;
    let prom = source(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "down").await;
    let file = write(
        "abort-down",
        &scenario(t, prom, "  on_unavailable: abort\n  unavailable_after: 5\n", "errors"),
    );
    let (exit, out) = run(&file, |c| c).await;
    assert_eq!(hits.load(Ordering::Relaxed), 0, "requests sent while the signals were blind: {out}");
    assert_eq!(exit, Exit::Stopped, "{out}");
    assert!(report(&file)["abort_reason"].as_str().unwrap().contains("unavailable"), "{out}");
    assert_eq!(report(&file)["abort_kind"], "signals_unavailable", "{out}");

    // `continue`: the same gate; the first answer (after 1 s) opens it, and only then is
    // anything sent. The source notes how many requests had arrived when it first answered.
    let (t, hits) = counting_target().await;
    let at_first_answer = Arc::new(AtomicU64::new(u64::MAX));
    let (seen, note) = (hits.clone(), at_first_answer.clone());
    let prom = scripted_source(move |t| {
        if t < 1.0 {
            (StatusCode::SERVICE_UNAVAILABLE, "{}")
        } else {
            let _ = note.compare_exchange(
                u64::MAX,
                seen.load(Ordering::SeqCst),
                Ordering::SeqCst,
                Ordering::SeqCst,
            );
            (StatusCode::OK, HEALTHY)
        }
    })
    .await;
    let file = write("continue-down", &scenario(t, prom, "  on_unavailable: continue\n", "errors"));
    let (exit, out) = run(&file, |c| c).await;
    assert_eq!(exit, Exit::Ok, "{out}");
    assert_eq!(at_first_answer.load(Ordering::SeqCst), 0, "requests sent before the first answer: {out}");
    assert!(hits.load(Ordering::Relaxed) > 5, "the run went on once the source answered: {out}");
    let decisions = report(&file)["decisions"].clone();
    let actions: Vec<&str> =
        decisions.as_array().unwrap().iter().map(|d| d["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["pause", "resume"], "{decisions}");
    assert!(decisions[0]["detail"].as_str().unwrap().contains("first answer"), "{decisions}");
}

fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
}

/// loadgen's own `--metrics-addr` page, read from a real run against a loopback server, passes
/// `promtool check metrics` like every other /metrics page. It had no HELP lines and a
/// `quantile` label on a gauge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loadgens_own_metrics_page_passes_promtool() {
    let (t, _) = counting_target().await;
    let yaml = format!(
        "target: http://{t}\nphases: [{{ duration: 2s, arrival_rate: 20 }}]\njourneys: [{{ name: s, steps: [{{ name: home, get: / }}, {{ name: again, get: / }}] }}]\n"
    );
    let file = write("metrics", &yaml);
    let port = synth_testkit::free_port().unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let reader = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_millis(1200));
        http_get(addr, "/metrics")
    });
    let (exit, out) = run(&file, |c| c.with_metrics_addr(addr)).await;
    assert_eq!(exit, Exit::Ok, "{out}");
    let page = reader.await.unwrap().expect("the metrics page answered during the run");
    assert!(page.contains("loadgen_requests_total"), "{page}");
    assert!(page.contains("# TYPE loadgen_latency_seconds summary"), "{page}");
    assert!(page.contains("loadgen_latency_seconds_count{run="), "{page}");
    let Some(verdict) =
        synth_testkit::promtool::check_metrics("loadgens_own_metrics_page_passes_promtool", &page)
    else {
        return;
    };
    verdict.unwrap_or_else(|why| panic!("promtool refused loadgen's page: {why}\n{page}"));
}

/// A service whose `/confirm` sends its e-mail through the guard after the response (from a
/// spawned task), and whose `/notify` sends a real one when `guarded_notify` is false.
async fn shop(guarded_notify: bool) -> (SocketAddr, Arc<AtomicU64>) {
    use synth_guards::GuardRegistry;
    let guards = GuardRegistry::new();
    let email = guards.guard("email");
    let page = guards.clone();
    let real_emails = Arc::new(AtomicU64::new(0));
    let sent = real_emails.clone();
    let deferred = move || {
        let email = email.clone();
        synth_ctx::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = email.decide(false).allows_effect();
        });
    };
    let confirm = deferred.clone();
    let app = Router::new()
        .route(
            "/confirm",
            axum::routing::post(move || {
                confirm();
                async { "ok" }
            }),
        )
        .route(
            "/notify",
            axum::routing::post(move || {
                if guarded_notify {
                    deferred();
                } else {
                    // No guard: a real e-mail, even for synthetic traffic.
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                async { "ok" }
            }),
        )
        .layer(synth_tower::VerifySyntheticLayer::new(synth_ctx::Verifier::new(
            synth_ctx::KeyRing::parse(KEYS).unwrap(),
        )))
        .route("/metrics", get(move || std::future::ready(page.render_prometheus())));
    (serve(app).await, real_emails)
}

async fn preflight_observed(t: SocketAddr, name: &str, observe: &str) -> (Exit, String) {
    let yaml = format!(
        "target: http://{t}\nphases: [{{ duration: 1s, arrival_rate: 5 }}]\njourneys:\n  - name: buy\n    steps:\n      - {{ name: confirm, post: /confirm, expect_guards: [email] }}\n      - {{ name: notify, post: /notify, expect_guards: [email] }}\n"
    );
    let file = write(name, &yaml);
    support::preflight_file(&file, |c| c.with_observe(vec![observe.to_owned()], Duration::from_millis(400)))
        .await
}

/// preflight --observe credited a guard that moved during a journey to every step expecting it:
/// with `confirm` guarded and `notify` sending a real e-mail, a rise of 1 passed both. Now each
/// credited step needs a rise of its own; when two are guarded, two rises pass them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_credits_a_guard_to_at_most_as_many_steps_as_it_rose() {
    let (t, real_emails) = shop(false).await;
    let (exit, text) = preflight_observed(t, "observe-unguarded", &format!("http://{t}/metrics")).await;
    assert_eq!(real_emails.load(Ordering::Relaxed), 1, "the unguarded step ran");
    assert_eq!(exit, Exit::PreflightFailed, "the unguarded step `notify` passed as guarded: {text}");
    for step in ["confirm", "notify"] {
        assert!(text.contains(&format!("FAIL buy / {step}: guard email rose by 1")), "{text}");
    }
    assert!(text.contains("2 of its requests expect it there (confirm, notify)"), "{text}");

    // Both steps guarded: the counter rose by 2, and both pass.
    let (t, real_emails) = shop(true).await;
    let (exit, text) = preflight_observed(t, "observe-guarded", &format!("http://{t}/metrics")).await;
    assert_eq!(real_emails.load(Ordering::Relaxed), 0);
    assert_eq!(exit, Exit::Ok, "{text}");
    assert!(text.contains("after the response: buy / notify: email"), "{text}");
}

/// A body of `len` bytes sent in 64 KiB chunks, with no Content-Length: the reader cannot know
/// its size before reading it.
fn streamed(len: usize) -> Body {
    let chunk = Bytes::from(vec![b' '; 64 * 1024]);
    let chunks = len.div_ceil(chunk.len());
    Body::from_stream(futures_util::stream::iter(
        (0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
    ))
}

/// Answers loadgen reads itself are bounded at 4 MiB: a signal source (streamed, no length)
/// and an `--observe` page (with a Content-Length) beyond it are errors naming the URL, not an
/// unbounded read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_over_4_mib_from_a_signal_source_or_an_observe_page_are_refused_naming_the_url() {
    let (t, hits) = counting_target().await;
    let prom = serve(Router::new().route("/api/v1/query", get(|| async { streamed(5 << 20) }))).await;
    let file = write("big-signal", &scenario(t, prom, "", "errors"));
    let (exit, out) = run(&file, |c| c).await;
    assert_eq!(exit, Exit::PreflightFailed, "{out}");
    assert_eq!(hits.load(Ordering::Relaxed), 0);
    assert!(
        out.contains(&format!("http://{prom}/api/v1/query")) && out.contains("larger than 4194304 bytes"),
        "{out}"
    );

    let (shop, _) = shop(true).await;
    let big = serve(Router::new().route("/metrics", get(|| async { " ".repeat(5 << 20) }))).await;
    let url = format!("http://{big}/metrics");
    let (exit, text) = preflight_observed(shop, "big-observe", &url).await;
    assert_eq!(exit, Exit::PreflightFailed, "{text}");
    assert!(text.contains(&format!("--observe {url}: the answer is larger than 4194304 bytes")), "{text}");
}
