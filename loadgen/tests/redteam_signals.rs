//! Red-team reproductions for loadgen's safety signals, preflight --observe and /metrics page.
//! Each test states the promise and is EXPECTED TO FAIL on the current code.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{Read as _, Write as _},
    net::SocketAddr,
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use axum::{Router, http::StatusCode, response::IntoResponse, routing::get};
use loadgen::cli::Exit;

#[path = "support/cli.rs"]
mod support;
use support::loadgen;

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

fn write(name: &str, yaml: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("loadgen-redteam-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("keys"), KEYS).unwrap();
    let path = dir.join("s.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

async fn run(path: &std::path::Path, extra: &[&str]) -> (Exit, String) {
    let keys = path.with_file_name("keys");
    let json = path.with_extension("json");
    let mut args = vec![
        "run",
        path.to_str().unwrap(),
        "--quiet",
        "--keys-file",
        keys.to_str().unwrap(),
        "--report-json",
        json.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    loadgen(&args).await
}

fn scenario(target: SocketAddr, prom: SocketAddr, signals_extra: &str, query: &str) -> String {
    format!(
        "target: http://{target}\nphases: [{{ duration: 2s, arrival_rate: 20 }}]\njourneys: [{{ name: s, steps: [{{ get: / }}] }}]\n\
         signals:\n  prometheus: http://{prom}\n  interval: 200ms\n  timeout: 500ms\n{signals_extra}  conditions:\n    - {{ name: real 5xx, query: '{query}', above: 0.01, action: abort }}\n"
    )
}

const MATRIX: &str = r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"job":"shop"},"values":[[1.7e9,"0.5"]]}]}}"#;

/// A condition whose query returns a range vector (`errors[5m]` as an instant query: a matrix)
/// can never be read: it is a mistake in the scenario, like a refused query, so the run must
/// not start (exit 4). Today it is only a warning ("the source did not answer"), and with
/// `on_unavailable: continue` the run goes on with the condition never evaluated, though the
/// value (0.5) breaches the bound (0.01) all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_a_matrix_query_starts_a_blind_run() {
    let (t, hits) = counting_target().await;
    let prom = source(StatusCode::OK, "application/json", MATRIX).await;
    let file = write("matrix", &scenario(t, prom, "  on_unavailable: continue\n", "errors[5m]"));
    let (exit, out) = run(&file, &[]).await;
    assert_eq!(
        exit,
        Exit::PreflightFailed,
        "a condition that can never be read let the run start; {} requests sent: {out}",
        hits.load(Ordering::Relaxed)
    );
}

/// An SSO proxy in front of Prometheus answers 200 with an HTML login page: the signal can never
/// be read (a configuration mistake, not an outage), yet the run starts with a warning and, with
/// `on_unavailable: continue`, sends its load blind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_a_200_html_login_page_starts_a_blind_run() {
    let (t, hits) = counting_target().await;
    let prom = source(StatusCode::OK, "text/html", "<html><body>Sign in</body></html>").await;
    let file = write("html", &scenario(t, prom, "  on_unavailable: continue\n", "errors"));
    let (exit, out) = run(&file, &[]).await;
    assert_eq!(
        exit,
        Exit::PreflightFailed,
        "an unreadable signal let the run start; {} requests sent: {out}",
        hits.load(Ordering::Relaxed)
    );
}

/// `on_unavailable: abort` with a source that is down at the start: the start check only warns,
/// and the run sends load blind until `unavailable_after` polls have failed. A signal that reads
/// nothing is treated as healthy for that time; nothing should be sent before the first answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_on_unavailable_abort_sends_blind_before_aborting() {
    let (t, hits) = counting_target().await;
    let prom = source(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "down").await;
    let file = write(
        "abort-down",
        &scenario(t, prom, "  on_unavailable: abort\n  unavailable_after: 5\n", "errors"),
    );
    let (exit, out) = run(&file, &[]).await;
    assert_eq!(
        hits.load(Ordering::Relaxed),
        0,
        "requests sent while the signals were blind (exit {exit:?}): {out}"
    );
}

fn promtool(page: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed");
    child.stdin.take().unwrap().write_all(page.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
}

/// loadgen's own `--metrics-addr` page, read from a real run against a loopback server, must pass
/// `promtool check metrics` like every other /metrics page. It has no HELP lines and a
/// `quantile` label on a gauge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_loadgens_own_metrics_page_passes_promtool() {
    let (t, _) = counting_target().await;
    let yaml = format!(
        "target: http://{t}\nphases: [{{ duration: 2s, arrival_rate: 20 }}]\njourneys: [{{ name: s, steps: [{{ name: home, get: / }}, {{ name: again, get: / }}] }}]\n"
    );
    let file = write("metrics", &yaml);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let reader = tokio::task::spawn_blocking(move || {
        std::thread::sleep(Duration::from_millis(1200));
        http_get(addr, "/metrics")
    });
    let addr_arg = addr.to_string();
    let (exit, out) = run(&file, &["--metrics-addr", &addr_arg]).await;
    assert_eq!(exit, Exit::Ok, "{out}");
    let page = reader.await.unwrap().expect("the metrics page answered during the run");
    assert!(page.contains("loadgen_requests_total"), "{page}");
    promtool(&page).unwrap_or_else(|why| panic!("promtool refused loadgen's page: {why}\n{page}"));
}

/// preflight --observe credits a guard that moved during a journey to every step of the journey
/// that expects it. Step `confirm` sends its e-mail through the guard (after the response);
/// step `notify` sends a real e-mail with no guard at all. Both expect `email`; the counter moved
/// by 1, and both pass: the unguarded step's real side effect is "proven" guarded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_observe_credits_one_engagement_to_every_step() {
    use synth_guards::GuardRegistry;
    let guards = GuardRegistry::new();
    let email = guards.guard("email");
    let page = guards.clone();
    let real_emails = Arc::new(AtomicU64::new(0));
    let sent = real_emails.clone();
    let app = Router::new()
        .route(
            "/confirm",
            axum::routing::post(move || {
                let email = email.clone();
                synth_ctx::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let _ = email.decide(false).allows_effect();
                });
                async { "ok" }
            }),
        )
        .route(
            "/notify",
            axum::routing::post(move || {
                // No guard: a real e-mail, even for synthetic traffic.
                sent.fetch_add(1, Ordering::Relaxed);
                async { "ok" }
            }),
        )
        .layer(synth_tower::VerifySyntheticLayer::new(synth_ctx::Verifier::new(
            synth_ctx::KeyRing::parse(KEYS).unwrap(),
        )))
        .route("/metrics", get(move || std::future::ready(page.render_prometheus())));
    let t = serve(app).await;
    let yaml = format!(
        "target: http://{t}\nphases: [{{ duration: 1s, arrival_rate: 5 }}]\njourneys:\n  - name: buy\n    steps:\n      - {{ name: confirm, post: /confirm, expect_guards: [email] }}\n      - {{ name: notify, post: /notify, expect_guards: [email] }}\n"
    );
    let file = write("observe-two-steps", &yaml);
    let keys = file.with_file_name("keys");
    let metrics = format!("http://{t}/metrics");
    let (exit, text) = loadgen(&[
        "preflight",
        file.to_str().unwrap(),
        "--keys-file",
        keys.to_str().unwrap(),
        "--observe",
        &metrics,
        "--settle",
        "400ms",
    ])
    .await;
    assert_eq!(real_emails.load(Ordering::Relaxed), 1, "the unguarded step ran");
    assert_eq!(exit, Exit::PreflightFailed, "the unguarded step `notify` passed as guarded: {text}");
}
