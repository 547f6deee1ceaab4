//! Red-team findings on Rust journeys (issue 16): each test (but the YAML control) failed on
//! main f8d93fa, reproducing a way the typed API let a run send, count or check less safely
//! than it says, and now guards its fix.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{Router, http::StatusCode, routing::get};
use loadgen::{Ending, Journey, Phase, RunConfig, Scenario, User};
use synth_ctx::{KeyRing, RunId, Verifier};
use synth_tower::VerifySyntheticLayer;

const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

/// Every request the server got: its path, whether it ran in a verified synthetic scope, when.
#[derive(Default)]
struct Seen {
    requests: Mutex<Vec<(String, bool, Instant)>>,
}

impl Seen {
    fn to(&self, path: &str) -> Vec<(bool, Instant)> {
        self.requests.lock().unwrap().iter().filter(|(p, _, _)| p == path).map(|(_, s, t)| (*s, *t)).collect()
    }
}

async fn server() -> (SocketAddr, Arc<Seen>) {
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    let record = move |path: &'static str, status: StatusCode| {
        let s = s.clone();
        get(move || async move {
            s.requests.lock().unwrap().push((path.to_owned(), synth_ctx::is_synthetic(), Instant::now()));
            (status, "ok")
        })
    };
    let app = Router::new()
        .route("/", record("/", StatusCode::OK))
        .route("/late", record("/late", StatusCode::OK))
        .route("/fail", record("/fail", StatusCode::SERVICE_UNAVAILABLE))
        .route("/charge", record("/charge", StatusCode::OK))
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

fn load(millis: u64, rate: f64) -> Phase {
    Phase::Load { duration: Duration::from_millis(millis), rate, ramp_to: rate, max_concurrent: None }
}

/// A journey that hands its `User` to a task of its own (what a journey does to fire a request
/// "in the background", e.g. a beacon), once per run; the task sends `/late` after `delay`.
fn spawning(delay: Duration) -> Journey {
    let once = Arc::new(AtomicBool::new(false));
    Journey::new("spawner").run(move |user: User| {
        let once = once.clone();
        async move {
            user.get("/").name("home").await?;
            if !once.swap(true, Ordering::SeqCst) {
                let user = Arc::new(user);
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = user.get("/late").name("late").send().await;
                });
            }
            Ok(())
        }
    })
}

/// FINDING 1a. A run that ends normally (`Ending::Completed`) never sets its stop flag, so a
/// `User` (or a `user.grpc()` channel) that outlived its journey keeps sending requests with the
/// run's still-valid marker after `loadgen::run` returned: after the report was written, counted
/// nowhere, and with no handle left that could stop it (the control reads "not stopped").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_a_user_kept_past_a_completed_run_sends_nothing_after_it_ended() {
    let (addr, seen) = server().await;
    let scenario = Scenario::new(format!("http://{addr}").parse().unwrap())
        .phase(load(300, 20.0))
        .journey(spawning(Duration::from_millis(800)));
    let config = config("rt-after-end").with_no_preflight(true);
    let control = config.control();
    let outcome = loadgen::run(Arc::new(scenario), config).await.unwrap();
    let ended = Instant::now();
    assert_eq!(outcome.finished.ending, Ending::Completed);
    assert!(!seen.to("/").is_empty(), "the run sent its journeys");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let late = seen.to("/late");
    assert!(
        late.is_empty(),
        "{} request(s) reached the target {:?} after the run ended (synthetic: {:?}); the run's control \
         says stopped = {}",
        late.len(),
        late.first().map(|(_, t)| t.saturating_duration_since(ended)),
        late.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        control.is_stopped(),
    );
}

/// FINDING 1b. An `abort_on_fail` threshold aborts the run (`Ending::Aborted`) without setting
/// the stop flag either: docs/rust-api.md says an abort ends the run and "nothing is sent after
/// it", yet a `User` held past its journey still sends, and `Control::is_stopped()` is false.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_after_a_threshold_abort_the_control_is_stopped_and_nothing_is_sent() {
    let (addr, seen) = server().await;
    let threshold =
        loadgen::Threshold::parse("error_rate < 1%").unwrap().for_step("home").abort_on_fail(true);
    let failing = {
        let once = Arc::new(AtomicBool::new(false));
        Journey::new("failing").run(move |user: User| {
            let once = once.clone();
            async move {
                if !once.swap(true, Ordering::SeqCst) {
                    let user = Arc::new(user);
                    let u = user.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(2500)).await;
                        let _ = u.get("/late").name("late").send().await;
                    });
                    user.get("/fail").name("home").await?;
                    return Ok(());
                }
                user.get("/fail").name("home").await?;
                Ok(())
            }
        })
    };
    let scenario = Scenario::new(format!("http://{addr}").parse().unwrap())
        .phase(load(60_000, 20.0))
        .journey(failing)
        .threshold(threshold);
    let config = config("rt-after-abort").with_no_preflight(true);
    let control = config.control();
    let outcome = loadgen::run(Arc::new(scenario), config).await.unwrap();
    assert!(matches!(outcome.finished.ending, Ending::Aborted(_)), "{:?}", outcome.finished.ending);
    let aborted = Instant::now();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let late = seen.to("/late");
    assert!(
        control.is_stopped() && late.is_empty(),
        "after the abort: control.is_stopped() = {}, {} request(s) still reached the target ({:?} after)",
        control.is_stopped(),
        late.len(),
        late.first().map(|(_, t)| t.saturating_duration_since(aborted)),
    );
}

/// FINDING 2. The preflight checks a Rust journey's `expect_guards` only if the journey gets to
/// that request. A journey that fails before it (here its first request answers 503) passes the
/// preflight with nothing checked, and the run then starts and sends the guarded request under
/// load. A YAML journey in the same state fails the preflight ("never reached").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_a_rust_journey_that_fails_before_its_guarded_request_fails_the_preflight() {
    let (addr, seen) = server().await;
    let pay = Journey::new("pay").run(|user: User| async move {
        user.get("/fail").name("basket").expect_status(200).await?;
        // The test server reports no guard: had this been sent, the preflight would fail.
        user.get("/charge").name("charge").expect_guards("payment.charge").await?;
        Ok(())
    });
    let scenario =
        Scenario::new(format!("http://{addr}").parse().unwrap()).phase(load(1000, 5.0)).journey(pay);
    let config = config("rt-preflight-skip");
    let outcome = loadgen::preflight(Arc::new(scenario), &config).await.unwrap();
    assert!(seen.to("/charge").is_empty(), "the preflight never sent the guarded request");
    assert!(
        !outcome.passed(),
        "the preflight passed without checking `charge`'s guard:\n{}",
        outcome.render()
    );
}

/// The same scenario in YAML: the preflight fails it (the guarded step was never reached). This
/// one passes on main; it shows the Rust journey above is held to less.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_control_the_same_journey_in_yaml_fails_the_preflight() {
    let (addr, _) = server().await;
    let yaml = format!(
        "target: http://{addr}\nphases:\n  - {{ duration: 1s, arrival_rate: 5 }}\njourneys:\n  - name: pay\n    steps:\n      \
         - {{ get: /fail, name: basket, expect: {{ status: 200 }} }}\n      \
         - {{ get: /charge, name: charge, expect_guards: [payment.charge] }}\n"
    );
    let scenario = Scenario::from_yaml(&yaml).unwrap();
    let outcome = loadgen::preflight(Arc::new(scenario), &config("rt-preflight-yaml")).await.unwrap();
    assert!(!outcome.passed(), "{}", outcome.render());
}

/// FINDING 3. A Rust journey that panics (an `unwrap()` on an answer, common in journey code)
/// is counted neither as failed nor completed: the report shows it as *cancelled by a stop* in
/// a run that was never stopped, and its panic message appears nowhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_a_panicking_rust_journey_is_counted_as_failed_not_cancelled() {
    let (addr, _) = server().await;
    let panics = Journey::new("panics").run(|user: User| async move {
        let answer = user.get("/").name("home").await?;
        let _: serde_json::Value = answer.json().unwrap(); // "ok" is not JSON: panics
        Ok(())
    });
    let scenario =
        Scenario::new(format!("http://{addr}").parse().unwrap()).phase(load(500, 10.0)).journey(panics);
    let outcome = loadgen::run(Arc::new(scenario), config("rt-panic").with_no_preflight(true)).await.unwrap();
    assert_eq!(outcome.finished.ending, Ending::Completed);
    let j = &outcome.finished.by_journey[0];
    assert!(j.started > 0);
    assert_eq!(
        (j.failed, j.cancelled),
        (j.started, 0),
        "{} journeys panicked: reported failed {}, cancelled {} (failures {:?}) in a run nobody stopped",
        j.started,
        j.failed,
        j.cancelled,
        j.failures
    );
}

/// FINDING 4. The preflight awaits each Rust journey in the caller's own task, so a journey that
/// panics takes `loadgen::preflight` (and `loadgen::run`, whose preflight is on by default for
/// Rust journeys) down with it: a panic in the caller instead of a failed preflight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_a_panicking_rust_journey_fails_the_preflight_instead_of_panicking_the_caller() {
    let (addr, _) = server().await;
    let panics = Journey::new("panics").run(|user: User| async move {
        let answer = user.get("/").name("home").await?;
        let _: serde_json::Value = answer.json().unwrap(); // "ok" is not JSON: panics
        Ok(())
    });
    let scenario =
        Scenario::new(format!("http://{addr}").parse().unwrap()).phase(load(500, 10.0)).journey(panics);
    let joined = tokio::spawn(async move {
        loadgen::preflight(Arc::new(scenario), &config("rt-preflight-panic")).await.map(|o| o.passed())
    })
    .await;
    match joined {
        Ok(result) => assert!(!matches!(result, Ok(true)), "a panicking journey passed the preflight"),
        Err(e) => panic!("loadgen::preflight panicked in the caller's task: {e}"),
    }
}

/// FINDING 5. `Journey::weight(0)` is documented as "never picked" (a YAML journey of weight 0
/// is refused at load for that reason), yet the preflight runs every journey once, that one
/// included: a journey switched off with weight 0 still sends its requests, tagged, before the
/// run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_a_weight_0_rust_journey_sends_nothing_even_in_the_preflight() {
    let (addr, seen) = server().await;
    let on = Journey::new("on").run(|user: User| async move {
        user.get("/").name("home").expect_path("shop").await?;
        Ok(())
    });
    let off = Journey::new("refunds (off)").weight(0).run(|user: User| async move {
        user.get("/late").name("refund").await?;
        Ok(())
    });
    let scenario = Scenario::new(format!("http://{addr}").parse().unwrap())
        .phase(load(200, 5.0))
        .journey(on)
        .journey(off);
    let _ = loadgen::preflight(Arc::new(scenario), &config("rt-weight0")).await.unwrap();
    assert_eq!(seen.to("/").len(), 1, "the preflight ran the journey of weight 1");
    let off = seen.to("/late");
    assert!(off.is_empty(), "the weight-0 journey sent {} request(s) in the preflight", off.len());
}

/// FINDING 6. A stop during the preflight is only seen between journeys and before requests: a
/// Rust journey in `user.think(..)` (or awaiting anything else) keeps `loadgen::run` from
/// returning until it is done, though docs/rust-api.md says a stop ends things "within 100 ms
/// wherever the journeys are" (the engine aborts journeys; the preflight only awaits them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_a_stop_during_the_preflight_returns_promptly_whatever_the_journey_awaits() {
    let (addr, seen) = server().await;
    let slow = Journey::new("slow").run(|user: User| async move {
        user.get("/").name("home").await?;
        user.think(Duration::from_secs(4)).await;
        user.get("/late").name("after think").await?;
        Ok(())
    });
    let scenario =
        Scenario::new(format!("http://{addr}").parse().unwrap()).phase(load(200, 5.0)).journey(slow);
    let config = config("rt-preflight-stop");
    let control = config.control();
    let run = tokio::spawn(async move { (loadgen::run(Arc::new(scenario), config).await, Instant::now()) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    control.stop();
    let stopped = Instant::now();
    let (result, ended) = tokio::time::timeout(Duration::from_secs(10), run).await.unwrap().unwrap();
    assert!(matches!(result, Err(loadgen::RunError::StoppedBeforeStart)), "{result:?}");
    assert!(seen.to("/late").is_empty(), "nothing was sent after the stop");
    let took = ended.saturating_duration_since(stopped);
    assert!(took < Duration::from_millis(500), "loadgen::run returned {took:?} after the stop");
}

/// FINDING 8. `loadgen::preflight` ends at a stop of the config's control (as documented) but
/// then reports a PASS for the journeys it never ran: a stopped (or already stopped) preflight
/// says `passed() == true`, `exit() == Exit::Ok` with nothing checked, where this journey would
/// fail it (the test server reports no hop `catalog`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_a_stopped_preflight_does_not_pass() {
    let (addr, seen) = server().await;
    let expects = Journey::new("expects").run(|user: User| async move {
        user.get("/").name("home").expect_path("catalog").await?;
        Ok(())
    });
    let scenario =
        Scenario::new(format!("http://{addr}").parse().unwrap()).phase(load(200, 5.0)).journey(expects);
    let scenario = Arc::new(scenario);
    // Unstopped, it fails: the hop is missing.
    let config = config("rt-preflight-stopped");
    assert!(!loadgen::preflight(scenario.clone(), &config).await.unwrap().passed());
    let sent = seen.to("/").len();
    // Stopped, it checks nothing and passes.
    config.control().stop();
    let outcome = loadgen::preflight(scenario, &config).await.unwrap();
    assert_eq!(seen.to("/").len(), sent, "a stopped preflight sends nothing");
    assert!(
        !outcome.passed(),
        "a stopped preflight that checked nothing passed (exit {:?}):\n{}",
        outcome.exit(),
        outcome.render()
    );
}

/// FINDING 9. The CLI and a YAML `target:` accept only an http(s) URL with a host, and
/// `RunConfig::with_target` is checked too; `Scenario::new(target)` is not, and `loadgen::run`
/// starts such a run anyway: every request fails as an "expectation" or "connect" error of the
/// journey instead of a clear `RunError` before anything starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_a_scenario_target_without_scheme_or_host_is_refused_before_the_run() {
    for target in ["ftp://127.0.0.1:9/", "/no/host", "127.0.0.1:9"] {
        let home = Journey::new("home").run(|user: User| async move {
            user.get("/").name("home").await?;
            Ok(())
        });
        let scenario = Scenario::new(target.parse().unwrap()).phase(load(200, 10.0)).journey(home);
        let result = loadgen::run(Arc::new(scenario), config("rt-target").with_no_preflight(true)).await;
        match result {
            Err(e) => assert!(e.to_string().contains("http"), "{target}: {e}"),
            Ok(outcome) => panic!(
                "target `{target}` was run: {:?}, failures {:?}",
                outcome.finished.ending, outcome.finished.by_journey[0].failures
            ),
        }
    }
}

/// FINDING 10. A phase built in code may say `Duration::MAX` ("until I stop it"); a scenario
/// file cannot (its durations are checked: "it is too long"). `loadgen::run` panics on it
/// ("overflow when adding durations": the marker lifetime adds 15 minutes to the planned
/// length) instead of running until the stop or refusing it with an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_a_phase_of_duration_max_runs_until_stopped_or_is_refused_without_a_panic() {
    let (addr, _) = server().await;
    // A long phase that does not overflow (2^62 s) runs and stops as it should; `Duration::MAX`
    // overflows the planned length plus 15 minutes (`report::planned`, `Duration` sums).
    for duration in [Duration::from_secs(1 << 62), Duration::MAX] {
        let home = Journey::new("home").run(|user: User| async move {
            user.get("/").name("home").await?;
            Ok(())
        });
        let scenario = Scenario::new(format!("http://{addr}").parse().unwrap())
            .phase(Phase::Closed { duration, users: 1 })
            .journey(home);
        let config = config("rt-forever").with_no_preflight(true);
        let control = config.control();
        let run = tokio::spawn(loadgen::run(Arc::new(scenario), config));
        tokio::time::sleep(Duration::from_millis(300)).await;
        control.stop();
        match tokio::time::timeout(Duration::from_secs(5), run).await.unwrap() {
            Ok(Ok(outcome)) => assert_eq!(outcome.finished.ending, Ending::Stopped),
            Ok(Err(e)) => assert!(!e.to_string().is_empty()),
            Err(panic) => panic!("loadgen::run panicked on a phase of {duration:?}: {panic}"),
        }
    }
}

/// FINDING 11. `user.think(d)` before the journey's first request adds `d` to the arrival's
/// intended time with `Instant + Duration`, which panics for a huge `d` (`Duration::MAX`, "wait
/// until the stop"); `tokio::time::sleep` itself takes it. The journey dies on the spot (and is
/// then reported as cancelled, see finding 3) instead of waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_a_think_of_duration_max_waits_instead_of_panicking() {
    let (addr, seen) = server().await;
    let waits = Journey::new("waits").run(|user: User| async move {
        // Wait "forever", but at most 100 ms here, then send.
        let _ = tokio::time::timeout(Duration::from_millis(100), user.think(Duration::MAX)).await;
        user.get("/late").name("after think").await?;
        Ok(())
    });
    let scenario =
        Scenario::new(format!("http://{addr}").parse().unwrap()).phase(load(300, 10.0)).journey(waits);
    let outcome =
        loadgen::run(Arc::new(scenario), config("rt-think-max").with_no_preflight(true)).await.unwrap();
    let j = &outcome.finished.by_journey[0];
    assert!(j.started > 0);
    assert_eq!(
        (j.completed, seen.to("/late").len() as u64),
        (j.started, j.started),
        "journeys {j:?}: the think panicked before its request"
    );
}

/// FINDING 12. A closed-model user's own HTTP/1.1 connection retries a request once on a fresh
/// connection when a kept-alive one closes before any answer byte, whatever the method. A
/// server that read (and acted on) a `POST` and then closed the connection gets it a second
/// time: one `POST /orders` of the journey, counted once in the report, two orders at the
/// target. (hyper's pool retries only requests it has not written.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_a_post_is_never_sent_twice_by_the_closed_models_retry() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    // A raw HTTP/1.1 server: answers every request, except a POST on a connection that already
    // answered one, which it reads in full (an order is placed) and then closes the connection.
    let posts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let p = posts.clone();
    tokio::spawn(async move {
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let p = p.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut answered = 0;
                loop {
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        let mut chunk = [0u8; 4096];
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    while buf.len() < end + 4 + len {
                        let mut chunk = [0u8; 4096];
                        match sock.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..end + 4 + len);
                    if head.starts_with("post") {
                        p.fetch_add(1, Ordering::SeqCst);
                        if answered > 0 {
                            return; // the order is placed; the connection drops unanswered
                        }
                    }
                    answered += 1;
                    if sock.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let once = Arc::new(AtomicBool::new(false));
    let order = Journey::new("order").run(move |user: User| {
        let once = once.clone();
        async move {
            if once.swap(true, Ordering::SeqCst) {
                user.think(Duration::from_secs(10)).await;
                return Ok(());
            }
            user.get("/").name("home").await?;
            user.post("/orders").name("place order").body("{\"qty\":1}").await?;
            Ok(())
        }
    });
    let scenario = Scenario::new(format!("http://{addr}").parse().unwrap())
        .phase(Phase::Closed { duration: Duration::from_millis(500), users: 1 })
        .journey(order);
    let config = config("rt-retry").with_no_preflight(true);
    let control = config.control();
    let run = tokio::spawn(loadgen::run(Arc::new(scenario), config));
    tokio::time::sleep(Duration::from_millis(400)).await;
    control.stop();
    let outcome = run.await.unwrap().unwrap();
    let i = outcome.finished.step_names.iter().position(|n| &**n == "place order").unwrap();
    let counted = outcome.finished.steps[i].requests();
    assert_eq!(counted, 1, "the journey sent one POST");
    assert_eq!(
        posts.load(Ordering::SeqCst),
        1,
        "the target received the journey's one POST /orders more than once"
    );
}

/// FINDING 13. The preflight runs each Rust journey to its end with no bound in time or
/// requests, before the automatic controls, the dead-man's switch or any threshold run. A
/// session-style journey (`while !user.is_stopped() { .. }`, the pattern `is_stopped` invites)
/// never ends there: the run never starts, and the target takes an unbounded, unguarded stream
/// of requests from the "preflight".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_the_preflight_of_a_session_journey_is_bounded() {
    let (addr, seen) = server().await;
    let session = Journey::new("session").run(|user: User| async move {
        while !user.is_stopped() {
            user.get("/").name("poll").await?;
            user.think(Duration::from_millis(5)).await;
        }
        Ok(())
    });
    let scenario =
        Scenario::new(format!("http://{addr}").parse().unwrap()).phase(load(300, 2.0)).journey(session);
    let config = config("rt-preflight-session");
    let control = config.control();
    let run = tokio::spawn(loadgen::run(Arc::new(scenario), config));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let finished = run.is_finished();
    let sent = seen.to("/").len();
    control.stop();
    let _ = run.await;
    assert!(
        finished && sent < 50,
        "3 s after a run of 0.3 s started: finished = {finished}, {sent} requests sent (the preflight is still going)"
    );
}

/// FINDING 1d. Because the end of the phases never sets the stop flag, a session-style journey
/// (`while !user.is_stopped()`) never learns the run is over, and the engine waits for journeys
/// in flight to finish: a run planned for 0.3 s goes on sending, with markers still refreshed,
/// until someone stops it by hand. The planned duration bounds nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redteam_a_session_journey_ends_when_the_phases_end() {
    let (addr, seen) = server().await;
    let session = Journey::new("session").run(|user: User| async move {
        while !user.is_stopped() {
            user.get("/").name("poll").await?;
            user.think(Duration::from_millis(5)).await;
        }
        Ok(())
    });
    let scenario =
        Scenario::new(format!("http://{addr}").parse().unwrap()).phase(load(300, 10.0)).journey(session);
    let config = config("rt-session-run").with_no_preflight(true);
    let control = config.control();
    let run = tokio::spawn(loadgen::run(Arc::new(scenario), config));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let finished = run.is_finished();
    let sent = seen.to("/").len();
    control.stop();
    let _ = run.await;
    assert!(sent > 0, "the run sent its journeys");
    assert!(finished, "3 s after a run of 0.3 s started it is still going: {sent} requests sent");
}
