//! Bounds on the live controls (issue 12): the rate factor is range-checked, the arrival loop
//! stays responsive whatever it is asked to do, a stop (API, abort, dead-man's switch) ends the
//! run within 100 ms with no request started after it, and a control token closes every route.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Router, routing::get};
use clap::Parser as _;
use loadgen::{
    cli::{Cli, run_async},
    control::{Routes, serve as serve_control},
    controls,
    engine::{self, Control, Ending, Finished, RunOptions},
    scenario::{self, Phase, Scenario},
};
use proptest::prelude::*;

const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
const SECRET: &str = "sekret";
/// The spec: a stop ends the run within this long, whatever the engine is doing.
const STOP_BOUND: Duration = Duration::from_millis(100);

fn marker(run: &str) -> String {
    synth_ctx::Signer::new(synth_ctx::KeyRing::parse(KEYS).unwrap()).mint(
        synth_ctx::Origin::Load,
        &synth_ctx::RunId::new(run).unwrap(),
        Duration::from_secs(600),
    )
}

/// A loopback server that answers `GET /` after `delay` and notes when each request arrived.
async fn counting_server(delay: Duration) -> (SocketAddr, Arc<Mutex<Vec<Instant>>>) {
    let hits: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let h = hits.clone();
    let app = Router::new().route(
        "/",
        get(move || {
            let h = h.clone();
            async move {
                h.lock().unwrap().push(Instant::now());
                tokio::time::sleep(delay).await;
                "ok"
            }
        }),
    );
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (addr, hits)
}

/// One GET per journey at `rate` journeys/s for a long time (the tests stop it), plus `extra`
/// top-level YAML.
fn one_get(target: SocketAddr, rate: f64, phase_extra: &str, extra: &str) -> Arc<Scenario> {
    let yaml = format!(
        "target: http://{target}\n{extra}phases: [{{ duration: 60s, arrival_rate: {rate}{phase_extra} }}]\njourneys: [{{ name: s, steps: [{{ get: / }}] }}]\n"
    );
    Arc::new(scenario::parse(&yaml, "test.yaml", std::path::Path::new(".")).unwrap())
}

fn start(s: Arc<Scenario>, control: &Control, run: &str) -> tokio::task::JoinHandle<Finished> {
    let options = RunOptions { token: marker(run), run_id: run.into(), seed: Some(7) };
    tokio::spawn(engine::run(s, options, control.clone(), |_| None))
}

/// A bare HTTP/1.1 exchange: the status code and the body.
async fn http(addr: SocketAddr, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let auth = token.map(|t| format!("authorization: Bearer {t}\r\n")).unwrap_or_default();
    s.write_all(
        format!(
            "{method} {path} HTTP/1.1\r\nhost: x\r\n{auth}content-length: 0\r\nconnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.unwrap();
    let code = buf[9..12].parse().unwrap();
    let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (code, body)
}

/// Waits for the run to end after a stop that returned at `stopped_at`: it must take less than
/// [`STOP_BOUND`], and the server must have seen no request arrive after the stop.
async fn ends_at_once(
    run: tokio::task::JoinHandle<Finished>,
    stopped_at: Instant,
    hits: &Mutex<Vec<Instant>>,
) -> Finished {
    let finished = tokio::time::timeout(Duration::from_secs(3), run)
        .await
        .expect("the run did not end within 3 s of the stop")
        .unwrap();
    let took = stopped_at.elapsed();
    assert!(took < STOP_BOUND, "the run took {took:?} to end after the stop");
    // Anything already on the wire arrives within a few ms; give it time, then look.
    tokio::time::sleep(Duration::from_millis(150)).await;
    let late = hits.lock().unwrap().iter().filter(|t| **t > stopped_at).count();
    assert_eq!(late, 0, "{late} requests reached the server after the stop");
    finished
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_nan_negative_and_huge_factors_are_refused() {
    let (target, _) = counting_server(Duration::ZERO).await;
    for (extra, max, over) in [("", "10", "10.0001"), ("max_rate_factor: 2.5\n", "2.5", "3")] {
        let s = one_get(target, 5.0, "", extra);
        let control = Control::new();
        let api =
            serve_control("127.0.0.1:0".parse().unwrap(), control.clone(), Routes::All, Some(SECRET.into()))
                .await
                .unwrap();
        let run = start(s, &control, "factors");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(http(api, "POST", "/rate?factor=0.5", Some(SECRET)).await.0, 200);
        for bad in
            ["1e300", "1e309", "NaN", "nan", "inf", "-inf", "infinity", "-1", "-0.5", over, "", "abc", "0x10"]
        {
            let (code, body) = http(api, "POST", &format!("/rate?factor={bad}"), Some(SECRET)).await;
            assert_eq!(code, 400, "factor={bad} was accepted: {body}");
            assert!(
                body.contains(&format!("from 0 to {max}")),
                "factor={bad}: the body says the range: {body}"
            );
            assert_eq!(control.rate_factor(), 0.5, "a refused factor={bad} left the rate alone");
        }
        let (code, _) = http(api, "POST", "/rate?factor=1&factor=1e300", Some(SECRET)).await;
        assert_eq!(code, 400, "two factors: ambiguous, refused");
        assert_eq!(http(api, "POST", "/rate", Some(SECRET)).await.0, 400);
        for good in ["0", max, "1"] {
            let (code, body) = http(api, "POST", &format!("/rate?factor={good}"), Some(SECRET)).await;
            assert_eq!(code, 200, "factor={good}: {body}");
            assert_eq!(control.rate_factor(), good.parse::<f64>().unwrap());
        }
        // The library API keeps the same bound.
        assert!(control.set_rate_factor(f64::NAN).is_err());
        assert!(control.set_rate_factor(1e300).is_err());
        assert!(control.set_rate_factor(-1.0).is_err());
        assert_eq!(control.rate_factor(), 1.0);
        control.stop();
        run.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_run_stops_within_100ms_and_sends_nothing_after_the_stop() {
    // The red team's case: max_concurrent saturated by a slow target, the factor pushed up.
    let (target, hits) = counting_server(Duration::from_millis(300)).await;
    let s = one_get(target, 200.0, ", max_concurrent: 20", "");
    let control = Control::new();
    let api =
        serve_control("127.0.0.1:0".parse().unwrap(), control.clone(), Routes::All, Some(SECRET.into()))
            .await
            .unwrap();
    let run = start(s, &control, "saturated");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(http(api, "POST", "/rate?factor=1e300", Some(SECRET)).await.0, 400);
    assert_eq!(http(api, "POST", "/rate?factor=10", Some(SECRET)).await.0, 200);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (code, body) = http(api, "POST", "/stop", Some(SECRET)).await;
    let stopped_at = Instant::now();
    assert_eq!(code, 200, "{body}");
    let finished = ends_at_once(run, stopped_at, &hits).await;
    assert_eq!(finished.ending, Ending::Stopped);
    assert!(
        finished.journeys.dropped > 100,
        "arrivals beyond max_concurrent are dropped: {:?}",
        finished.journeys
    );
    assert!(finished.journeys.started <= 60, "at most 20 at once, 300 ms each: {:?}", finished.journeys);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_absurd_written_rate_cannot_wedge_the_arrival_loop() {
    // A library caller (or `hit`) can write any finite rate: above ~2^53 arrivals/s the
    // arrival credit used to stop decreasing and the loop never yielded again.
    let (target, hits) = counting_server(Duration::from_millis(200)).await;
    let phase = Phase::Load {
        duration: Duration::from_secs(60),
        rate: 1e300,
        ramp_to: 1e300,
        max_concurrent: Some(20),
    };
    let s = Arc::new(Scenario::single_request(
        format!("http://{target}/").parse().unwrap(),
        http::Method::GET,
        phase,
    ));
    let control = Control::new();
    let run = start(s, &control, "absurd");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(control.live().is_some_and(|l| l.active <= 20), "max_concurrent holds");
    control.abort("test: abort");
    let stopped_at = Instant::now();
    let finished = ends_at_once(run, stopped_at, &hits).await;
    assert_eq!(finished.ending, Ending::Aborted("test: abort".into()));
    assert!(finished.journeys.started <= 40, "{:?}", finished.journeys);

    // The command line refuses such a rate outright.
    let cli = Cli::try_parse_from(["loadgen", "hit", "http://127.0.0.1:9/", "--rate", "1e300"]).unwrap();
    let err = run_async(cli, &mut Vec::new()).await.unwrap_err().to_string();
    assert!(err.contains("--rate") && err.contains("1000000"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_mans_switch_stops_within_100ms_even_while_a_signal_poll_hangs() {
    let (target, hits) = counting_server(Duration::ZERO).await;
    // A "Prometheus" that accepts connections and never answers: each poll waits its timeout.
    let prom = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let prom_addr = prom.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = prom.accept().await {
            held.push(s);
        }
    });
    let signals = format!(
        "signals:\n  prometheus: http://{prom_addr}\n  interval: 1s\n  timeout: 5s\n  on_unavailable: continue\n  conditions:\n    - {{ name: p95, query: q, above: 1, action: abort }}\n"
    );
    let s = one_get(target, 20.0, "", &signals);
    let control = Control::new();
    let guard = tokio::spawn(controls::run(
        s.clone(),
        control.clone(),
        controls::Options { heartbeat: Some(Duration::from_millis(500)), print: false },
        controls::SharedRecord::default(),
        std::time::Instant::now(),
    ));
    let run = start(s, &control, "deadman");
    tokio::time::sleep(Duration::from_millis(50)).await;
    control.heartbeat();
    let beat = Instant::now();
    let finished =
        tokio::time::timeout(Duration::from_secs(3), run).await.expect("the switch never fired").unwrap();
    let took = beat.elapsed();
    guard.abort();
    assert_eq!(finished.ending, Ending::Stopped);
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(500) + STOP_BOUND,
        "the switch (500 ms) ended the run {took:?} after the last heartbeat"
    );
    let end = beat + took;
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert_eq!(hits.lock().unwrap().iter().filter(|t| **t > end).count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_token_closes_every_route_and_the_heartbeat_needs_one() {
    let (target, _) = counting_server(Duration::ZERO).await;
    let s = one_get(target, 5.0, "", "");
    let control = Control::new();
    let api =
        serve_control("127.0.0.1:0".parse().unwrap(), control.clone(), Routes::All, Some(SECRET.into()))
            .await
            .unwrap();
    let metrics = serve_control(
        "127.0.0.1:0".parse().unwrap(),
        control.clone(),
        Routes::MetricsOnly,
        Some(SECRET.into()),
    )
    .await
    .unwrap();
    let run = start(s, &control, "closed");
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (addr, method, path) in [
        (api, "GET", "/status"),
        (api, "GET", "/metrics"),
        (api, "GET", "/nowhere"),
        (api, "POST", "/pause"),
        (api, "POST", "/rate?factor=0.5"),
        (api, "POST", "/heartbeat"),
        (api, "POST", "/stop"),
        (metrics, "GET", "/metrics"),
    ] {
        for token in [None, Some("wrong"), Some("sekre"), Some("sekrett"), Some("")] {
            let (code, body) = http(addr, method, path, token).await;
            assert_eq!(code, 401, "{method} {path} with {token:?}: {body}");
        }
    }
    assert!(!control.is_stopped() && !control.is_paused() && control.rate_factor() == 1.0);
    let (code, body) = http(api, "GET", "/status", Some(SECRET)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["run_id"], "closed");
    let (code, body) = http(metrics, "GET", "/metrics", Some(SECRET)).await;
    assert!(code == 200 && body.contains("loadgen_requests_total"), "{code} {body}");
    control.stop();
    run.await.unwrap();

    // The command line: a heartbeat that anyone could send is no dead-man's switch.
    let dir = std::env::temp_dir().join(format!("loadgen-bounds-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("keys"), KEYS).unwrap();
    let file = dir.join("s.yaml");
    std::fs::write(
        &file,
        format!("target: http://{target}\nphases: [{{ duration: 1s, arrival_rate: 1 }}]\njourneys: [{{ name: s, steps: [{{ get: / }}] }}]\n"),
    )
    .unwrap();
    let (file, keys) = (file.to_str().unwrap(), dir.join("keys"));
    let keys = keys.to_str().unwrap();
    let base = ["loadgen", "run", file, "--quiet", "--keys-file", keys];
    for (extra, want) in [
        (&["--control-addr", "127.0.0.1:0", "--heartbeat", "30s"][..], "--heartbeat needs --control-token"),
        (&["--control-addr", "127.0.0.1:0", "--control-token", ""][..], "--control-token is empty"),
        (&["--control-addr", "0.0.0.0:0"][..], "needs --control-token"),
        (&["--metrics-addr", "0.0.0.0:0"][..], "needs --control-token"),
    ] {
        let cli = Cli::try_parse_from(base.iter().chain(extra)).unwrap();
        let err = run_async(cli, &mut Vec::new())
            .await
            .map(|e| format!("exit {e:?}"))
            .unwrap_or_else(|e| e.to_string());
        assert!(err.contains(want), "{extra:?}: {err}");
    }
}

/// One control call of a random sequence.
#[derive(Clone, Debug)]
enum Call {
    /// `POST /rate?factor=…` with the text given, and whether it is in range.
    Rate(String, bool),
    Pause,
    Resume,
    Wait(u64),
}

/// How the sequence ends.
#[derive(Clone, Copy, Debug)]
enum End {
    Stop,
    Abort,
}

fn factor(max: f64) -> impl Strategy<Value = Call> {
    prop_oneof![
        4 => (0.0..=1.0f64).prop_map(move |u| Call::Rate(format!("{}", u * max), true)),
        2 => Just(Call::Rate(format!("{max}"), true)),
        2 => (0.001..100.0f64).prop_map(move |x| Call::Rate(format!("{}", max + x), false)),
        1 => (0.001..100.0f64).prop_map(|x| Call::Rate(format!("-{x}"), false)),
        2 => prop::sample::select(vec!["1e300", "1e309", "NaN", "inf", "-inf", "", "fast", "1e18"])
            .prop_map(|t| Call::Rate(t.to_owned(), false)),
    ]
}

fn calls(max: f64) -> impl Strategy<Value = Vec<Call>> {
    prop::collection::vec(
        prop_oneof![
            5 => factor(max),
            1 => Just(Call::Pause),
            2 => Just(Call::Resume),
            3 => (20..250u64).prop_map(Call::Wait),
        ],
        1..8,
    )
}

/// The most requests the server saw in any one-second window.
fn busiest_second(hits: &[Instant]) -> usize {
    let mut hits = hits.to_vec();
    hits.sort();
    (0..hits.len())
        .map(|i| hits[i..].iter().take_while(|t| t.duration_since(hits[i]) < Duration::from_secs(1)).count())
        .max()
        .unwrap_or(0)
}

async fn drive(max: f64, calls: Vec<Call>, end: End) {
    const RATE: f64 = 40.0;
    let (target, hits) = counting_server(Duration::from_millis(5)).await;
    let s = one_get(target, RATE, "", &format!("max_rate_factor: {max}\n"));
    let control = Control::new();
    let api =
        serve_control("127.0.0.1:0".parse().unwrap(), control.clone(), Routes::All, Some(SECRET.into()))
            .await
            .unwrap();
    let run = start(s, &control, "prop");
    let mut factor = 1.0;
    for call in calls {
        match call {
            Call::Rate(f, valid) => {
                let (code, body) = http(api, "POST", &format!("/rate?factor={f}"), Some(SECRET)).await;
                assert_eq!(code, if valid { 200 } else { 400 }, "factor={f} (max {max}): {body}");
                if valid {
                    factor = f.parse().unwrap();
                }
                assert_eq!(control.rate_factor(), factor, "after factor={f}");
            }
            Call::Pause => assert_eq!(http(api, "POST", "/pause", Some(SECRET)).await.0, 200),
            Call::Resume => assert_eq!(http(api, "POST", "/resume", Some(SECRET)).await.0, 200),
            Call::Wait(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
        }
    }
    // At least a second at the last rate, so a rate above the bound shows in one window.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let stopped_at = match end {
        End::Stop => {
            assert_eq!(http(api, "POST", "/stop", Some(SECRET)).await.0, 200);
            Instant::now()
        }
        End::Abort => {
            control.abort("prop: abort");
            Instant::now()
        }
    };
    let finished = ends_at_once(run, stopped_at, &hits).await;
    assert!(matches!(finished.ending, Ending::Stopped | Ending::Aborted(_)), "{:?}", finished.ending);
    // The bound: the written rate times max_rate_factor, plus one arrival of slack for where
    // a window's edges fall.
    let busiest = busiest_second(&hits.lock().unwrap());
    let bound = RATE * max;
    assert!(busiest as f64 <= bound + 1.0, "{busiest} requests in one second; the bound is {bound}/s");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_control_calls_keep_the_bounds_and_stop_always_stops(
        (max, calls, end) in prop::sample::select(vec![1.0, 1.5, 2.0, 3.0]).prop_flat_map(|max| {
            (Just(max), calls(max), prop_oneof![Just(End::Stop), Just(End::Abort)])
        })
    ) {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(drive(max, calls, end));
    }
}
