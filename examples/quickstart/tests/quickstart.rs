//! The quickstart as a user runs it: the built binary as a process on loopback, `loadgen`'s
//! preflight and a 5 s run of `quickstart.yaml` against it, then a real order; the effects are
//! read where the service leaves them (SQLite, the outbox, the payments log, `/metrics`).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use loadgen::{Exit, RunConfig, Scenario};
use synth_ctx::{KeyRing, Origin, RunId, Signer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
const ADMIN_TOKEN: &str = "test-admin-token";

/// The running binary; killed when dropped.
struct Quickstart {
    child: Child,
    addr: String,
    admin: String,
    data: PathBuf,
}

impl Drop for Quickstart {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    let dir = std::env::temp_dir().join(format!("quickstart-{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Starts the binary on free ports (port 0; it prints what it bound) with its data in a new
/// temporary directory.
fn start(name: &str) -> Quickstart {
    start_binary(Path::new(env!("CARGO_BIN_EXE_quickstart")), name)
}

/// [`start`], with the binary at `binary`.
fn start_binary(binary: &Path, name: &str) -> Quickstart {
    let data = temp_dir(name);
    let mut child = Command::new(binary)
        .arg("127.0.0.1:0")
        .env("SYNTH_KEYS", KEYS)
        .env("SYNTH_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("QUICKSTART_ADMIN_LISTEN", "127.0.0.1:0")
        .env("QUICKSTART_DATA", &data)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut bound = |prefix: &str| {
        let line = lines.next().expect("the binary printed its address").unwrap();
        line.strip_prefix(prefix)
            .unwrap_or_else(|| panic!("`{line}` does not start with `{prefix}`"))
            .to_owned()
    };
    let addr = bound("quickstart listening on http://");
    let admin = bound("admin listening on http://");
    Quickstart { child, addr, admin, data }
}

/// One HTTP/1.1 request on a new connection; the status, the head and the body.
async fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str(&format!("content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head.to_ascii_lowercase(), body.to_owned())
}

fn scenario() -> Arc<Scenario> {
    Arc::new(Scenario::from_file(Path::new(env!("CARGO_MANIFEST_DIR")).join("quickstart.yaml")).unwrap())
}

fn config(q: &Quickstart, run: &str) -> RunConfig {
    RunConfig::new(KeyRing::parse(KEYS).unwrap())
        .with_target(format!("http://{}", q.addr).parse().unwrap())
        .with_run_id(RunId::new(run).unwrap())
        .with_quiet(true)
}

/// `(untagged rows, rows tagged `run`, all tagged rows)` of the orders table.
async fn rows(q: &Quickstart, run: &str) -> (i64, i64, i64) {
    let pool =
        sqlx::SqlitePool::connect(&format!("sqlite://{}", q.data.join("orders.db").display())).await.unwrap();
    let (real, by_run, tagged): (i64, i64, i64) = sqlx::query_as(
        "SELECT COUNT(*) FILTER (WHERE synthetic_run_id IS NULL), COUNT(*) FILTER (WHERE synthetic_run_id = ?), \
         COUNT(synthetic_run_id) FROM orders",
    )
    .bind(run)
    .fetch_one(&pool)
    .await
    .unwrap();
    (real, by_run, tagged)
}

fn payments(q: &Quickstart) -> usize {
    std::fs::read_to_string(q.data.join("payments.log")).map(|s| s.lines().count()).unwrap_or(0)
}

fn emails(q: &Quickstart) -> usize {
    std::fs::read_dir(q.data.join("outbox"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "eml"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synthetic_load_pays_and_mails_nothing_and_real_orders_still_do() {
    let q = start("load");

    // The preflight: one order, tagged; the path and both guards as the scenario expects.
    let preflight = loadgen::preflight(scenario(), &config(&q, "qs-preflight")).await.unwrap();
    assert!(preflight.passed(), "{}", preflight.render());

    let outcome = loadgen::run(scenario(), config(&q, "qs-run")).await.unwrap();
    assert_eq!(outcome.exit(), Exit::Ok, "{}", outcome.summary());
    let report = outcome.to_json();
    let step = &report["steps"].as_array().unwrap()[0];
    let requests = step["requests"].as_i64().unwrap();
    assert!(requests >= 20, "5 s at 5 a second: {step:#}");
    assert_eq!(step["tagged"], step["requests"], "every synthetic answer echoed the run id: {step:#}");

    // Synthetic: rows written and tagged with their run, nothing paid, nothing mailed.
    // (The run's own preflight sends one more order under the run's id.)
    assert_eq!(rows(&q, "qs-run").await, (0, requests + 1, requests + 2));
    assert_eq!((payments(&q), emails(&q)), (0, 0), "synthetic orders paid or mailed");

    // A real order (no marker): paid, mailed, an untagged row.
    let (status, head, body) = http(
        &q.addr,
        "POST",
        "/orders",
        &[],
        r#"{"email":"ana@example.com","card":"4242424242424242","cents":999}"#,
    )
    .await;
    assert_eq!(status, 201, "{body}");
    assert!(body.contains(r#""synthetic":false"#) && body.contains(r#""mailed":true"#), "{body}");
    assert!(!head.contains("synthetic-traffic-seen"), "a real answer is not tagged: {head}");
    assert_eq!(rows(&q, "qs-run").await.0, 1);
    assert_eq!((payments(&q), emails(&q)), (1, 1));

    // /metrics splits real from synthetic, as histograms, and promtool accepts the page.
    let (status, _, page) = http(&q.addr, "GET", "/metrics", &[], "").await;
    assert_eq!(status, 200);
    for series in [
        r#"http_request_duration_seconds_bucket{status="201",synthetic="false""#,
        r#"http_request_duration_seconds_bucket{status="201",synthetic="true""#,
        r#"synth_guard_suppressed_total{guard="payment.charge"}"#,
        r#"synth_guard_suppressed_total{guard="email"}"#,
    ] {
        assert!(page.contains(series), "no `{series}` in\n{page}");
    }
    if let Some(check) = synth_testkit::promtool::check_metrics("quickstart /metrics", &page) {
        check.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kill_switch_sheds_synthetic_orders_only_and_a_lost_marker_is_refused() {
    let q = start("kill");
    let token = Signer::new(KeyRing::parse(KEYS).unwrap()).mint(
        Origin::Load,
        &RunId::new("qs-kill").unwrap(),
        Duration::from_secs(60),
    );
    let synthetic = [("synthetic-traffic", token.as_str())];
    let order = r#"{"email":"b@loadtest.invalid","card":"4000000000000002","cents":5}"#;
    let real = r#"{"email":"ana@example.com","card":"4242424242424242","cents":5}"#;
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let admin = [("authorization", bearer.as_str())];

    let (status, ..) = http(&q.admin, "POST", "/synthetic/stop", &[], "").await;
    assert_eq!(status, 401, "the admin router wants the token");
    let (status, _, body) = http(&q.admin, "POST", "/synthetic/stop", &admin, "").await;
    assert!((200..300).contains(&status), "{status} {body}");
    let (status, head, _) = http(&q.addr, "POST", "/orders", &synthetic, order).await;
    assert_eq!(status, 503, "shed while stopped");
    assert!(head.contains("synthetic-traffic-shed: 1"), "{head}");
    let (status, _, body) = http(&q.addr, "POST", "/orders", &[], real).await;
    assert_eq!(status, 201, "real traffic is untouched: {body}");

    let (status, _, body) = http(&q.admin, "POST", "/synthetic/resume", &admin, "").await;
    assert!((200..300).contains(&status), "{status} {body}");
    let (status, _, body) = http(&q.addr, "POST", "/orders", &synthetic, order).await;
    assert_eq!(status, 201, "{body}");

    // A test card, or a reserved address with a real card, without a marker: refused before
    // anything is stored, paid or mailed.
    let reserved_only = r#"{"email":"c@loadtest.invalid","card":"4242424242424242","cents":5}"#;
    for input in [order, reserved_only] {
        let (status, _, body) = http(&q.addr, "POST", "/orders", &[], input).await;
        assert_eq!(status, 422, "{input}: {body}");
        assert_eq!(rows(&q, "qs-kill").await, (1, 1, 1), "{input}");
        assert_eq!((payments(&q), emails(&q)), (1, 1), "{input}: nothing paid or mailed");
    }
}

#[test]
fn without_keys_the_binary_says_what_to_set_and_serves_nothing() {
    let out = Command::new(env!("CARGO_BIN_EXE_quickstart"))
        .arg("127.0.0.1:0")
        .env_remove("SYNTH_KEYS")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("SYNTH_KEYS") && stderr.contains("loadgen keygen"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"));
}

/// Where the workspace's builds go: `CARGO_TARGET_DIR` (as CI and the house set it), else
/// `target/` at the workspace root.
fn workspace_target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

/// What a user does: copies the directory out, points the three synth crates at where they are
/// (here: this checkout, by absolute path), builds and runs it. Only what cannot work outside
/// the workspace is rewritten: the `path`s, the `[lints]` table (it reads the workspace's) and
/// the package's name (so its binary does not replace the workspace's own `quickstart` in the
/// shared target directory while other tests run it). The workspace's `Cargo.lock` keeps the
/// registry crates at the versions already built, so the build is offline and mostly cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copied_out_of_the_workspace_it_builds_by_path_passes_the_preflight_and_runs() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR"));
    let root = example.join("../..").canonicalize().unwrap();
    let copy = temp_dir("copied");
    std::fs::create_dir_all(copy.join("src")).unwrap();
    for file in ["src/main.rs", "quickstart.yaml"] {
        std::fs::copy(example.join(file), copy.join(file)).unwrap();
    }
    std::fs::copy(root.join("Cargo.lock"), copy.join("Cargo.lock")).unwrap();
    let manifest = std::fs::read_to_string(example.join("Cargo.toml")).unwrap();
    let mut rewritten = manifest.replace("name = \"quickstart\"", "name = \"quickstart-copied\"");
    for krate in ["synth-ctx", "synth-tower", "synth-guards", "loadgen", "testkit"] {
        let from = format!("path = \"../../{krate}\"");
        assert!(rewritten.contains(&from) || krate == "loadgen" || krate == "testkit", "{from}");
        rewritten = rewritten.replace(&from, &format!("path = {:?}", root.join(krate).display().to_string()));
    }
    rewritten = rewritten.replace("[lints]\nworkspace = true\n", "");
    assert!(!rewritten.contains("../../") && !rewritten.contains("[lints]"), "{rewritten}");
    std::fs::write(copy.join("Cargo.toml"), rewritten).unwrap();

    let target = workspace_target_dir(&root);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build
        .args(["build", "--offline", "--bin", "quickstart-copied"])
        .current_dir(&copy)
        .env("CARGO_TARGET_DIR", &target);
    let out = tokio::task::spawn_blocking(move || build.output().unwrap()).await.unwrap();
    assert!(out.status.success(), "the copy does not build:\n{}", String::from_utf8_lossy(&out.stderr));

    let q = start_binary(&target.join("debug/quickstart-copied"), "copied-run");
    let scenario = Arc::new(Scenario::from_file(copy.join("quickstart.yaml")).unwrap());
    let preflight = loadgen::preflight(scenario.clone(), &config(&q, "qs-copied")).await.unwrap();
    assert!(preflight.passed(), "{}", preflight.render());
    assert_eq!(rows(&q, "qs-copied").await, (0, 1, 1));
    assert_eq!((payments(&q), emails(&q)), (0, 0));
    // Its 5 s run, as a user would make it: every order stored, tagged, nothing paid or mailed.
    let outcome = loadgen::run(scenario, config(&q, "qs-copied-run").with_no_preflight(true)).await.unwrap();
    assert_eq!(outcome.exit(), loadgen::Exit::Ok, "{}", outcome.summary());
    let total = &outcome.to_json()["total"];
    let sent = total["requests"].as_u64().unwrap();
    assert!(sent >= 20, "{total}");
    assert_eq!(total["tagged"].as_u64(), Some(sent), "{total}");
    assert_eq!(rows(&q, "qs-copied-run").await, (0, sent as i64, sent as i64 + 1));
    assert_eq!((payments(&q), emails(&q)), (0, 0));
    drop(q);
    let _ = std::fs::remove_dir_all(&copy);
}
