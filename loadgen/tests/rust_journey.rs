//! Journeys written in Rust (`loadgen::Journey`), run by the typed API against a loopback
//! server that verifies every marker with `VerifySyntheticLayer`: tagging, names and counts,
//! timing from the intended time, the stop, error classes, cookies, data rows, mixing with YAML
//! journeys, the preflight.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{
    Router,
    http::{HeaderMap, StatusCode},
    routing::{get, post},
};
use loadgen::{ErrorClass, Exit, Journey, Phase, RunConfig, RunError, Scenario, User};
use synth_ctx::{KeyRing, RunId, Verifier};
use synth_tower::VerifySyntheticLayer;

const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

/// What the server saw: every request, whether it ran in a verified synthetic scope, and when.
#[derive(Default)]
struct Seen {
    total: AtomicUsize,
    synthetic: AtomicUsize,
    at: Mutex<Vec<Instant>>,
    emails: Mutex<Vec<String>>,
}

fn count(seen: &Seen) {
    seen.total.fetch_add(1, Ordering::SeqCst);
    if synth_ctx::is_synthetic() {
        seen.synthetic.fetch_add(1, Ordering::SeqCst);
    }
    seen.at.lock().unwrap().push(Instant::now());
}

async fn server() -> (SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    let app = Router::new()
        .route(
            "/",
            get(|axum::extract::State(s): axum::extract::State<Arc<Seen>>| async move {
                count(&s);
                "ok"
            }),
        )
        .route(
            "/login",
            post(|axum::extract::State(s): axum::extract::State<Arc<Seen>>| async move {
                count(&s);
                ([("set-cookie", "session=abc123; Path=/; HttpOnly")], "welcome")
            }),
        )
        .route(
            "/me",
            get(|axum::extract::State(s): axum::extract::State<Arc<Seen>>, h: HeaderMap| async move {
                count(&s);
                let cookie = h.get("cookie").and_then(|v| v.to_str().ok()).unwrap_or("");
                if cookie.contains("session=abc123") {
                    (StatusCode::OK, "{\"plan\":\"gold\"}")
                } else {
                    (StatusCode::UNAUTHORIZED, "{}")
                }
            }),
        )
        .route(
            "/products/{id}",
            get(|axum::extract::State(s): axum::extract::State<Arc<Seen>>| async move {
                count(&s);
                "{\"stock\":3}"
            }),
        )
        .route(
            "/slow",
            get(|axum::extract::State(s): axum::extract::State<Arc<Seen>>| async move {
                count(&s);
                tokio::time::sleep(Duration::from_millis(300)).await;
                "slow"
            }),
        )
        .route(
            "/fail",
            get(|axum::extract::State(s): axum::extract::State<Arc<Seen>>| async move {
                count(&s);
                (StatusCode::INTERNAL_SERVER_ERROR, "no")
            }),
        )
        .route(
            "/whoami",
            get(|axum::extract::State(s): axum::extract::State<Arc<Seen>>, h: HeaderMap| async move {
                count(&s);
                let email = h.get("x-email").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
                s.emails.lock().unwrap().push(email);
                "ok"
            }),
        )
        .with_state(s)
        .layer(VerifySyntheticLayer::new(Verifier::new(KeyRing::parse(KEYS).unwrap())));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (addr, seen)
}

fn config(run: &str) -> RunConfig {
    RunConfig::new(KeyRing::parse(KEYS).unwrap())
        .with_run_id(RunId::new(run).unwrap())
        .with_seed(7)
        .with_quiet(true)
}

fn load(seconds: u64, rate: f64) -> Phase {
    Phase::Load { duration: Duration::from_secs(seconds), rate, ramp_to: rate, max_concurrent: None }
}

fn step<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step `{name}` in {:#}", report["steps"]))
}

fn errors(step: &serde_json::Value) -> u64 {
    step["errors"].as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum()
}

fn journey<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["by_journey"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["name"] == name)
        .unwrap_or_else(|| panic!("no journey `{name}` in {:#}", report["by_journey"]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_is_tagged_named_counted_and_keeps_its_cookies() {
    let (addr, seen) = server().await;
    let shop = Journey::new("shop").run(|user: User| async move {
        user.post("/login").name("login").expect_status(200).await?;
        let me = user.get("/me").name("me").send().await?;
        assert!(me.is_tagged(), "the target echoed the run id");
        let plan: serde_json::Value = me.json()?;
        // A branch on the answer.
        if plan["plan"] == "gold" {
            let id = 1 + user.random_below(3);
            user.get(format!("/products/{id}")).name("product").await?;
        }
        Ok(())
    });
    let scenario =
        Scenario::new(format!("http://{addr}").parse().unwrap()).phase(load(1, 20.0)).journey(shop);
    let outcome =
        loadgen::run(Arc::new(scenario), config("rust-tagged").with_no_preflight(true)).await.unwrap();
    let report = outcome.to_json();
    assert_eq!(outcome.exit(), Exit::Ok, "{}", outcome.summary());
    for name in ["login", "me", "product"] {
        let s = step(&report, name);
        assert_eq!(s["requests"], 20, "{name}: {s:#}");
        assert_eq!(s["tagged"], 20, "{name}: every answer echoed the run id");
        assert_eq!(errors(s), 0, "{name}: {s:#}");
    }
    let j = journey(&report, "shop");
    assert_eq!(
        (j["started"].as_u64(), j["completed"].as_u64(), j["failed"].as_u64()),
        (Some(20), Some(20), Some(0))
    );
    assert_eq!(report["total"]["requests"], 60);
    assert_eq!(seen.total.load(Ordering::SeqCst), 60, "the server counted 60 requests");
    assert_eq!(seen.synthetic.load(Ordering::SeqCst), 60, "every one verified and scoped as synthetic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_counted_by_class_and_by_message() {
    let (addr, _) = server().await;
    let flaky = Journey::new("flaky").run(|user: User| async move {
        user.get("/").name("home").await?;
        if user.random_below(2) == 0 {
            // A request error ends the journey through `?`.
            user.get("/fail").name("broken").await?;
        } else {
            return Err(format!("no stock left for product {}", 7).into());
        }
        Ok(())
    });
    let scenario =
        Scenario::new(format!("http://{addr}").parse().unwrap()).phase(load(1, 40.0)).journey(flaky);
    let outcome =
        loadgen::run(Arc::new(scenario), config("rust-errors").with_no_preflight(true)).await.unwrap();
    let report = outcome.to_json();
    let j = journey(&report, "flaky");
    assert_eq!(j["started"], 40);
    assert_eq!(j["failed"], 40, "{j:#}");
    let by_status = j["failures"]["broken: status 500"].as_u64().unwrap();
    let by_own = j["failures"]["no stock left for product 7"].as_u64().unwrap();
    assert_eq!(by_status + by_own, 40, "{j:#}");
    assert!(by_status > 5 && by_own > 5, "both branches ran: {j:#}");
    assert_eq!(step(&report, "broken")["errors"]["status"].as_u64(), Some(by_status));
    assert_eq!(errors(step(&report, "home")), 0);
    let summary = outcome.summary();
    assert!(summary.contains("flaky: 40 started, 0 completed, 40 failed"), "{summary}");
    assert!(summary.contains("broken: status 500 ×"), "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_request_is_timed_from_the_arrival_and_a_think_is_not_latency() {
    let (addr, _) = server().await;
    let timed = Journey::new("timed").run(|user: User| async move {
        // Work before the first request (a slow token library, say) delays it: the user
        // meant to send it at the arrival, so the delay is latency, as a scheduler's would be.
        tokio::time::sleep(Duration::from_millis(200)).await;
        user.get("/").name("first").await?;
        user.get("/").name("second").await?;
        user.get("/slow").name("slow").await?;
        Ok(())
    });
    let thinking = Journey::new("thinking").run(|user: User| async move {
        user.think(Duration::from_millis(200)).await;
        user.get("/").name("after think").await?;
        Ok(())
    });
    let scenario = Scenario::new(format!("http://{addr}").parse().unwrap())
        .phase(load(1, 10.0))
        .journey(timed)
        .journey(thinking);
    let outcome =
        loadgen::run(Arc::new(scenario), config("rust-timing").with_no_preflight(true)).await.unwrap();
    let report = outcome.to_json();
    let p50 = |name: &str| step(&report, name)["latency_ms"]["p50"].as_f64().unwrap();
    assert!(p50("first") >= 195.0, "the first request counts from the arrival: {}", p50("first"));
    assert!(p50("second") < 150.0, "later requests count from their own send: {}", p50("second"));
    assert!(p50("slow") >= 295.0, "a slow answer shows: {}", p50("slow"));
    assert!(p50("after think") < 150.0, "think time is not latency: {}", p50("after think"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_ends_the_run_within_100ms_with_journeys_midway_and_nothing_after() {
    let (addr, seen) = server().await;
    let long = Journey::new("long").run(|user: User| async move {
        user.get("/").name("start").await?;
        user.get("/slow").name("slow").await?;
        user.think(Duration::from_secs(30)).await;
        user.get("/").name("never").await?;
        Ok(())
    });
    let scenario =
        Scenario::new(format!("http://{addr}").parse().unwrap()).phase(load(60, 100.0)).journey(long);
    let config = config("rust-stop").with_no_preflight(true);
    let control = config.control();
    let run = tokio::spawn(async move {
        let outcome = loadgen::run(Arc::new(scenario), config).await;
        (outcome, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    control.stop();
    let stopped_at = Instant::now();
    let (outcome, ended) = tokio::time::timeout(Duration::from_secs(3), run).await.unwrap().unwrap();
    let took = ended.saturating_duration_since(stopped_at);
    assert!(took < Duration::from_millis(100), "the run took {took:?} to end after the stop");
    let outcome = outcome.unwrap();
    assert_eq!(outcome.exit(), Exit::Stopped);
    let report = outcome.to_json();
    assert!(report["journeys"]["cancelled"].as_u64().unwrap() > 20, "{:#}", report["journeys"]);
    assert_eq!(report["steps"].as_array().unwrap().iter().filter(|s| s["name"] == "never").count(), 0);
    let slow = step(&report, "slow");
    assert!(slow["errors"]["cancelled"].as_u64().unwrap() > 0, "requests in flight were cancelled: {slow:#}");
    // Nothing reaches the server after the stop.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let late = seen.at.lock().unwrap().iter().filter(|t| **t > stopped_at + Duration::from_millis(5)).count();
    assert_eq!(late, 0, "{late} requests arrived after the stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn yaml_and_rust_journeys_mix_by_weight_and_share_data_rows() {
    let (addr, seen) = server().await;
    let dir = std::env::temp_dir().join(format!("loadgen-rust-journey-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("users.csv"), "email,password\na@loadtest.invalid,1\nb@loadtest.invalid,2\n")
        .unwrap();
    std::fs::write(
        dir.join("s.yaml"),
        format!(
            "target: http://{addr}\nphases: [{{ duration: 1s, arrival_rate: 1000 }}]\n\
             data: {{ users: {{ csv: users.csv, order: sequential }} }}\n\
             journeys: [{{ name: yaml, weight: 1, steps: [{{ get: / }}] }}]\n"
        ),
    )
    .unwrap();
    let rust = Journey::new("rust").weight(3).run(|user: User| async move {
        let row = user.data("users").ok_or("no users feeder")?;
        let email = row.get("email").ok_or("no email column")?.to_owned();
        // The same row for the whole journey.
        assert_eq!(user.data("users").unwrap().get("email"), Some(email.as_str()));
        assert!(user.data("nope").is_none());
        user.get("/whoami").header("x-email", &email).await?;
        Ok(())
    });
    let scenario = Scenario::from_file(dir.join("s.yaml")).unwrap().journey(rust);
    let outcome = loadgen::run(Arc::new(scenario), config("rust-mix").with_no_preflight(true)).await.unwrap();
    let report = outcome.to_json();
    assert_eq!(outcome.exit(), Exit::Ok, "{}", outcome.summary());
    let (y, r) = (
        journey(&report, "yaml")["started"].as_u64().unwrap(),
        journey(&report, "rust")["started"].as_u64().unwrap(),
    );
    assert_eq!(y + r, 1000, "every arrival ran one journey");
    let share = r as f64 / 1000.0;
    assert!((0.70..=0.80).contains(&share), "weight 3 of 4 is 75% ± 5 points: {share}");
    let emails = seen.emails.lock().unwrap();
    assert_eq!(emails.len() as u64, r);
    let a = emails.iter().filter(|e| *e == "a@loadtest.invalid").count();
    assert!(a.abs_diff(emails.len() - a) <= 1, "sequential rows alternate: {a} of {}", emails.len());
    assert_eq!(seen.synthetic.load(Ordering::SeqCst), seen.total.load(Ordering::SeqCst));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_model_users_run_rust_journeys_back_to_back() {
    let (addr, seen) = server().await;
    let j = Journey::new("loop").run(|user: User| async move {
        user.get("/").name("a").await?;
        user.get("/").name("b").await?;
        Ok(())
    });
    let scenario = Scenario::new(format!("http://{addr}").parse().unwrap())
        .phase(Phase::Closed { duration: Duration::from_millis(500), users: 4 })
        .journey(j);
    let outcome =
        loadgen::run(Arc::new(scenario), config("rust-closed").with_no_preflight(true)).await.unwrap();
    let report = outcome.to_json();
    assert_eq!(outcome.exit(), Exit::Ok, "{}", outcome.summary());
    let (a, b) =
        (step(&report, "a")["requests"].as_u64().unwrap(), step(&report, "b")["requests"].as_u64().unwrap());
    assert!(a > 50 && a.abs_diff(b) <= 4, "back to back: {a} and {b}");
    assert_eq!(seen.total.load(Ordering::SeqCst) as u64, a + b);
    assert_eq!(step(&report, "a")["tagged"].as_u64(), Some(a));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_preflight_runs_rust_journeys_and_checks_what_they_expect() {
    let (addr, seen) = server().await;
    let expects = |service: &'static str| {
        Journey::new("expects").run(move |user: User| async move {
            user.get("/").name("home").expect_path(service).await?;
            Ok(())
        })
    };
    // The test server does not report its name in synthetic-traffic-path: a journey that
    // expects a hop there fails the preflight, and nothing more is sent.
    let scenario = Scenario::new(format!("http://{addr}").parse().unwrap())
        .phase(load(1, 50.0))
        .journey(expects("catalog"));
    let err = loadgen::run(Arc::new(scenario), config("rust-preflight")).await.unwrap_err();
    assert!(matches!(err, RunError::PreflightFailed(_)), "{err}");
    assert_eq!(err.exit(), Exit::PreflightFailed);
    if let RunError::PreflightFailed(report) = &err {
        let text = report.render();
        assert!(text.contains("home") && text.contains("missing hop catalog"), "{text}");
    }
    assert_eq!(seen.total.load(Ordering::SeqCst), 1, "only the preflight's one request was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scenario_without_a_journey_that_can_run_is_refused_before_sending() {
    let (addr, seen) = server().await;
    let never = Journey::new("never").weight(0).run(|user: User| async move {
        user.get("/").await?;
        Ok(())
    });
    let scenario =
        Scenario::new(format!("http://{addr}").parse().unwrap()).phase(load(1, 10.0)).journey(never);
    let err = loadgen::run(Arc::new(scenario), config("rust-none")).await.unwrap_err();
    assert!(matches!(err, RunError::NoJourney), "{err}");
    assert_eq!(err.exit(), Exit::Usage);
    assert_eq!(seen.total.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_header_or_url_fails_the_request_as_an_expectation_and_sends_nothing() {
    let (addr, seen) = server().await;
    let bad = Journey::new("bad").run(|user: User| async move {
        let e = user.get("/").name("bad header").header("x-bad", "line\nbreak").await.unwrap_err();
        assert_eq!(e.class(), ErrorClass::Expectation);
        assert!(e.to_string().contains("x-bad"), "{e}");
        let e = user.get("/a path with spaces").name("bad path").await.unwrap_err();
        assert_eq!(e.class(), ErrorClass::Expectation);
        Err(e.into())
    });
    let scenario = Scenario::new(format!("http://{addr}").parse().unwrap()).phase(load(1, 5.0)).journey(bad);
    let outcome = loadgen::run(Arc::new(scenario), config("rust-bad").with_no_preflight(true)).await.unwrap();
    let report = outcome.to_json();
    assert_eq!(step(&report, "bad header")["errors"]["expectation"], 5);
    assert_eq!(step(&report, "bad path")["errors"]["expectation"], 5);
    assert_eq!(journey(&report, "bad")["failed"], 5);
    assert_eq!(seen.total.load(Ordering::SeqCst), 0, "nothing was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_threshold_on_a_rust_request_aborts_the_run_with_a_typed_reason() {
    let (addr, _) = server().await;
    let j = Journey::new("orders").run(|user: User| async move {
        user.get("/").name("home").await?;
        user.get("/fail").name("place order").await?;
        Ok(())
    });
    let threshold =
        loadgen::Threshold::parse("error_rate < 1%").unwrap().for_step("place order").abort_on_fail(true);
    let scenario = Scenario::new(format!("http://{addr}").parse().unwrap())
        .phase(load(60, 20.0))
        .journey(j)
        .threshold(threshold)
        .threshold(loadgen::Threshold::parse("p99 < 1s").unwrap().for_step("home"));
    let started = Instant::now();
    let outcome =
        loadgen::run(Arc::new(scenario), config("rust-threshold").with_no_preflight(true)).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(5), "aborted at the first check, not after 60 s");
    assert_eq!(
        outcome.finished.ending,
        loadgen::Ending::Aborted(loadgen::AbortReason::Threshold { threshold: "error_rate < 1%".into() })
    );
    assert_eq!(outcome.exit(), Exit::Stopped);
    let report = outcome.to_json();
    assert_eq!(report["abort_kind"], "threshold");
    assert_eq!(report["abort_reason"], "threshold `error_rate < 1%` failed");
    let verdicts = report["thresholds"].as_array().unwrap();
    assert_eq!(verdicts[0]["passed"], false, "{verdicts:?}");
    assert_eq!(verdicts[1]["passed"], true, "the Rust request `home` was measured: {verdicts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scenario_built_in_rust_has_data_feeders_of_its_own() {
    let (addr, seen) = server().await;
    let dir = std::env::temp_dir().join(format!("loadgen-rust-feeder-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let csv = dir.join("users.csv");
    std::fs::write(&csv, "email\nx@loadtest.invalid\ny@loadtest.invalid\nz@loadtest.invalid\n").unwrap();
    let users = loadgen::Feeder::from_csv("users", &csv, loadgen::Order::Sequential).unwrap();
    let j = Journey::new("who").run(|user: User| async move {
        let row = user.data("users").ok_or("no users")?;
        user.get("/whoami").header("x-email", row.get("email").ok_or("no email")?).await?;
        Ok(())
    });
    let scenario = Scenario::new(format!("http://{addr}").parse().unwrap())
        .phase(load(1, 30.0))
        .data(users.clone())
        .unwrap()
        .journey(j);
    let outcome = loadgen::run(Arc::new(scenario.clone()), config("rust-feeder").with_no_preflight(true))
        .await
        .unwrap();
    assert_eq!(outcome.exit(), Exit::Ok, "{}", outcome.summary());
    let emails = seen.emails.lock().unwrap().clone();
    assert_eq!(emails.len(), 30);
    for e in ["x@loadtest.invalid", "y@loadtest.invalid", "z@loadtest.invalid"] {
        assert_eq!(emails.iter().filter(|x| *x == e).count(), 10, "sequential: each row a third of the time");
    }
    // A second feeder of the same name is refused, not swapped under the steps that read it.
    let e = scenario.data(users).unwrap_err();
    assert!(e.message.contains("already has data `users`"), "{e}");
    std::fs::write(&csv, "email\n").unwrap();
    assert!(
        loadgen::Feeder::from_csv("users", &csv, loadgen::Order::Random)
            .unwrap_err()
            .message
            .contains("no rows")
    );
}

#[test]
fn top_up_counts_a_rust_journey_as_one_request() {
    let yaml = "target: http://127.0.0.1:9\nphases: [{ duration: 1s, arrival_rate: 1 }]\n\
                journeys: [{ name: three, weight: 1, steps: [{ get: / }, { get: /a }, { get: /b }] }]\n";
    let rust = Journey::new("rust").weight(1).run(|user: User| async move {
        user.get("/").await?;
        Ok(())
    });
    let s = Scenario::from_yaml(yaml).unwrap();
    assert_eq!(s.requests_per_journey(), 3.0);
    // Half the arrivals send three requests, half (as far as loadgen can know) one.
    assert_eq!(s.journey(rust).requests_per_journey(), 2.0);
}
