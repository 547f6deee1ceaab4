//! Red team of `loadgen replay` (rt16): each test reproduces a finding and is expected to FAIL
//! until the library is fixed. Real sockets, as in `replay.rs` (helpers copied from there).
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

#[path = "support/cli.rs"]
mod cli_support;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::Router;
use cli_support::loadgen;
use loadgen::cli::Exit;
use synth_ctx::{KeyRing, Origin, Verifier};
use synth_tower::VerifySyntheticLayer;

const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("loadgen-rt16-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("keys"), KEYS).unwrap();
    d
}

/// A request as the handler saw it: its marker's origin, method, URI, headers.
type Arrival = (Option<Origin>, String, String, Vec<(String, String)>);

#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Arrival>>>, Arc<Mutex<Vec<Instant>>>);

impl Seen {
    fn all(&self) -> Vec<Arrival> {
        self.0.lock().unwrap().clone()
    }
}

/// A service that keeps every request it is sent, behind the verifier.
async fn recording_service() -> (SocketAddr, Seen) {
    let seen = Seen::default();
    let s = seen.clone();
    let app = Router::new()
        .fallback(move |req: axum::extract::Request| {
            let seen = s.clone();
            async move {
                let origin = synth_ctx::current().map(|s| s.origin());
                let headers = req
                    .headers()
                    .iter()
                    .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
                    .collect();
                seen.1.lock().unwrap().push(Instant::now());
                seen.0.lock().unwrap().push((
                    origin,
                    req.method().to_string(),
                    req.uri().to_string(),
                    headers,
                ));
                "ok"
            }
        })
        .layer(VerifySyntheticLayer::new(Verifier::new(KeyRing::parse(KEYS).unwrap())));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    (addr, seen)
}

/// One synth capture line: a GET of `uri` at `ms` after a fixed start, with these headers.
fn line(ms: u64, method: &str, uri: &str, headers: &[(&str, &str)]) -> String {
    let h: Vec<String> = headers.iter().map(|(n, v)| format!(r#"["{n}","{v}"]"#)).collect();
    format!(
        "{{\"v\":1,\"at_us\":{},\"method\":\"{method}\",\"uri\":\"{uri}\",\"headers\":[{}],\"body\":\"\",\"body_encoding\":\"utf8\",\"body_len\":0}}\n",
        1_764_650_000_000_000u64 + ms * 1000,
        h.join(",")
    )
}

fn har_entry(ms: u64, url: &str, headers: &[(&str, &str)]) -> String {
    let h: Vec<String> = headers.iter().map(|(n, v)| format!(r#"{{"name":"{n}","value":"{v}"}}"#)).collect();
    format!(
        r#"{{"startedDateTime":"2026-12-01T10:00:00.{ms:03}Z","time":1,"request":{{"method":"GET","url":"{url}","httpVersion":"HTTP/1.1","headers":[{}],"queryString":[],"cookies":[],"headersSize":-1,"bodySize":0}},"response":{{"status":200,"statusText":"OK","httpVersion":"HTTP/1.1","headers":[],"cookies":[],"content":{{"size":0,"mimeType":"text/html"}},"redirectURL":"","headersSize":-1,"bodySize":0}},"cache":{{}},"timings":{{"send":0,"wait":1,"receive":0}}}}"#,
        h.join(",")
    )
}

fn har(entries: &[String]) -> String {
    format!(
        r#"{{"log":{{"version":"1.2","creator":{{"name":"t","version":"1"}},"entries":[{}]}}}}"#,
        entries.join(",")
    )
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

/// A browser export holds the recording user's session under more names than the five replay
/// drops: the capture's own list (`DEFAULT_DROPPED_HEADERS`) names 13 and also drops any value
/// that looks like a credential. Replay sends the rest as recorded, so it acts as the user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn har_credentials_outside_the_five_names_are_replayed_as_the_recorded_user() {
    let d = dir("creds");
    let (addr, seen) = recording_service().await;
    let file = d.join("session.har");
    std::fs::write(
        &file,
        har(&[har_entry(
            0,
            "https://shop.example/account",
            &[
                ("Authorization", "Bearer five-names-secret"),
                ("X-Access-Token", "secret-access-token"),
                ("X-CSRF-Token", "secret-csrf"),
                ("X-Amzn-Oidc-Accesstoken", "secret-alb-token"),
                ("Cf-Access-Jwt-Assertion", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2ln"),
                ("X-Session", "Bearer secret-bearer-in-custom-header"),
            ],
        )]),
    )
    .unwrap();
    let report = d.join("r.json");
    let (exit, out) = loadgen(&[
        "replay",
        &s(&file),
        "--target",
        &format!("http://{addr}"),
        "--no-cap",
        "--keys-file",
        &s(&d.join("keys")),
        "--report-json",
        &s(&report),
        "--quiet",
    ])
    .await;
    assert_eq!(exit, Exit::Ok, "{out}");
    let all = seen.all();
    assert_eq!(all.len(), 1, "{out}");
    let wire = format!("{:?}", all[0].3);
    assert!(!wire.contains("five-names-secret"), "{wire}");
    // The finding: these reach the target.
    for secret in ["secret-access-token", "secret-csrf", "secret-alb-token", "eyJhbGci", "secret-bearer"] {
        assert!(
            !wire.contains(secret),
            "a recorded credential went out without --keep-credentials: {secret}\n{wire}"
        );
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// Recorded forwarding headers go out as recorded: the target (its rate limiter, fraud checks,
/// audit log) sees the replay ×N as coming from the real users' addresses, and a recorded
/// `x-forwarded-host` overrides the host the replay speaks to for frameworks that trust it.
/// The recorded `Host` is dropped for the same reason these should be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recorded_forwarding_headers_attribute_the_replay_to_real_users() {
    let d = dir("xff");
    let (addr, seen) = recording_service().await;
    let file = d.join("rec.jsonl");
    std::fs::write(
        &file,
        line(
            0,
            "GET",
            "/products/1",
            &[
                ("x-forwarded-for", "203.0.113.77"),
                ("x-real-ip", "203.0.113.77"),
                ("forwarded", "for=203.0.113.77;host=prod.example"),
                ("x-forwarded-host", "prod.example"),
            ],
        ),
    )
    .unwrap();
    let (exit, out) = loadgen(&[
        "replay",
        &s(&file),
        "--target",
        &format!("http://{addr}"),
        "--amplify",
        "3",
        "--no-cap",
        "--keys-file",
        &s(&d.join("keys")),
        "--quiet",
    ])
    .await;
    assert_eq!(exit, Exit::Ok, "{out}");
    let all = seen.all();
    assert_eq!(all.len(), 3, "{out}");
    for (_, _, _, headers) in &all {
        let wire = format!("{headers:?}");
        assert!(
            !wire.contains("203.0.113.77") && !wire.contains("prod.example"),
            "a replayed request claims a real user's address / the recorded host: {wire}"
        );
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// One replayable record at `--amplify 0.5` gets 0 copies: nothing is sent, yet the replay
/// "completed" with exit 0. CI reads a pass; the docs say a replay with nothing to send is
/// refused (exit 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_that_sends_nothing_exits_0() {
    let d = dir("nothing");
    let (addr, seen) = recording_service().await;
    let file = d.join("rec.jsonl");
    std::fs::write(&file, line(0, "GET", "/products/1", &[])).unwrap();
    let (exit, out) = outcome(&[
        "replay",
        &s(&file),
        "--target",
        &format!("http://{addr}"),
        "--amplify",
        "0.5",
        "--no-cap",
        "--keys-file",
        &s(&d.join("keys")),
        "--quiet",
    ])
    .await;
    assert_eq!(seen.all().len(), 0, "{out}");
    assert_ne!(exit, Ok(Exit::Ok), "a replay that sent nothing passed:\n{out}");
    let _ = std::fs::remove_dir_all(&d);
}

/// The recording's own rate as the cap, and a cap so low it holds the replay for its whole
/// `--duration`: nothing is sent, exit 0. The same "tested nothing" that exits 3 when a signal
/// source never answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_held_by_its_cap_for_its_whole_length_sends_nothing_and_exits_0() {
    let d = dir("held");
    let (addr, seen) = recording_service().await;
    let file = d.join("rec.jsonl");
    // Two records 4 minutes apart: about 0.33 recorded req/s around the start.
    let text = line(0, "GET", "/products/1", &[]) + &line(240_000, "GET", "/products/2", &[]);
    std::fs::write(&file, text).unwrap();
    let (exit, out) = loadgen(&[
        "replay",
        &s(&file),
        "--target",
        &format!("http://{addr}"),
        "--duration",
        "2s",
        "--cap-share",
        "0.05",
        "--keys-file",
        &s(&d.join("keys")),
        "--quiet",
    ])
    .await;
    assert_eq!(seen.all().len(), 0, "{out}");
    assert_ne!(exit, Exit::Ok, "a replay that sent nothing passed:\n{out}");
    let _ = std::fs::remove_dir_all(&d);
}

/// docs/replay.md: "A file that changed in between aborts the replay (exit 3)". With `--loop`
/// every pass opens the file again; replaced (renamed over) after the scan, the new content is
/// replayed and the run "completes" (exit 0), its report naming rows of a recording that is no
/// longer what was sent. (1100 records so that the reader, 1024 records ahead at most, opens the
/// second pass after the swap.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looped_recording_replaced_mid_run_is_replayed_not_refused() {
    let d = dir("replaced");
    let (addr, seen) = recording_service().await;
    let file = d.join("rec.jsonl");
    let content = |prefix: &str| {
        (0..1100).map(|i| line(i * 2, "GET", &format!("/{prefix}/{i}"), &[])).collect::<String>()
    };
    std::fs::write(&file, content("scanned")).unwrap();
    let (f, tmp, watch) = (file.clone(), d.join("new.jsonl"), seen.clone());
    let swap = tokio::spawn(async move {
        // Once the replay has started (the scan is done), another recording of the same size
        // takes the file's name.
        while watch.all().is_empty() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        std::fs::write(&tmp, content("swapped")).unwrap();
        std::fs::rename(&tmp, &f).unwrap();
    });
    let (exit, out) = loadgen(&[
        "replay",
        &s(&file),
        "--target",
        &format!("http://{addr}"),
        "--loop",
        "--duration",
        "3s",
        "--no-cap",
        "--keys-file",
        &s(&d.join("keys")),
        "--quiet",
    ])
    .await;
    swap.await.unwrap();
    let all = seen.all();
    let swapped = all.iter().filter(|a| a.2.starts_with("/swapped/")).count();
    assert!(all.iter().any(|a| a.2.starts_with("/scanned/")), "{out}");
    assert_eq!(
        swapped, 0,
        "{swapped} requests from a file replaced after the scan were replayed (exit {exit:?}):\n{out}"
    );
    // A looping replay whose first pass fits in memory sends that pass again (what it checked);
    // one that reads its files again stops when one was replaced (exit 3).
    assert!(matches!(exit, Exit::Ok | Exit::Stopped), "{out}");
    let _ = std::fs::remove_dir_all(&d);
}

/// CPU time (user + system, clock ticks) of this process's threads whose name starts `prefix`.
fn thread_cpu(prefix: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if !comm.trim().starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks = f.get(11).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0)
            + f.get(12).and_then(|u| u.parse::<u64>().ok()).unwrap_or(0);
        out.push((e.file_name().to_string_lossy().into_owned(), ticks));
    }
    out
}

/// A looped recording truncated mid-run to records that are not replayed (here a POST): the
/// reader reads the file again and again, finds nothing to send, never touches its channel and
/// so never learns the run is over. The replay sends nothing more and "completes" with exit 0;
/// the reader thread spins a core for the life of the process (without `--duration`, the
/// replay itself never ends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_looped_recording_leaves_the_reader_spinning_after_the_run() {
    let d = dir("truncated");
    let (addr, seen) = recording_service().await;
    let file = d.join("rec.jsonl");
    let post = line(0, "POST", "/orders", &[]);
    std::fs::write(&file, post.clone() + &line(10, "GET", "/products/1", &[])).unwrap();
    let f = file.clone();
    let cut = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        std::fs::write(&f, post).unwrap();
    });
    let (exit, out) = loadgen(&[
        "replay",
        &s(&file),
        "--target",
        &format!("http://{addr}"),
        "--loop",
        "--speed",
        "100",
        "--duration",
        "1500ms",
        "--no-cap",
        "--keys-file",
        &s(&d.join("keys")),
        "--quiet",
    ])
    .await;
    cut.await.unwrap();
    assert!(!seen.all().is_empty(), "{out}");
    // The run is over: give the reader a moment to notice, then watch it for a second.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = thread_cpu("loadgen-replay");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = thread_cpu("loadgen-replay");
    let spinning: Vec<(String, u64)> = after
        .iter()
        .filter_map(|(tid, t)| {
            let was = before.iter().find(|(b, _)| b == tid).map_or(*t, |(_, b)| *b);
            (t - was > 20).then(|| (tid.clone(), t - was))
        })
        .collect();
    assert!(
        spinning.is_empty(),
        "reader thread(s) still burning CPU after the replay ended (exit {exit:?}): {spinning:?} ticks in 1s\n{out}"
    );
    // What was sent is what the scan checked (the first pass, kept in memory for the loop).
    assert!(seen.all().iter().all(|a| a.2 == "/products/1"), "{out}");
    assert!(matches!(exit, Exit::Ok | Exit::Stopped), "{out}");
    let _ = std::fs::remove_dir_all(&d);
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// "A capture of any size replays in bounded memory": the reader runs up to 1024 records ahead
/// of the engine, whatever their size. GETs with large bodies (HAR and .gor allow 16 MiB each)
/// one second apart: the reader holds the whole file in the channel while the engine waits out
/// the recorded pace (1024 × 16 MiB = 16 GiB at worst).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readers_read_ahead_holds_hundreds_of_megabytes_of_bodies() {
    let d = dir("readahead");
    let (addr, _seen) = recording_service().await;
    let file = d.join("rec.gor");
    {
        use std::io::Write as _;
        let body = vec![b'a'; 8 << 20];
        let mut w = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
        for i in 0..64u64 {
            let ts = 1_764_650_000_000_000_000u64 + i * 1_000_000_000;
            write!(
                w,
                "1 {i:024x} {ts} 0\nGET /blob/{i} HTTP/1.1\r\nHost: shop.example\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .unwrap();
            w.write_all(&body).unwrap();
            w.write_all("\n\u{1f435}\u{1f648}\u{1f649}\n".as_bytes()).unwrap();
        }
    }
    let base = rss_kib();
    let peak = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                peak.fetch_max(rss_kib(), std::sync::atomic::Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let t0 = Instant::now();
    let (exit, out) = loadgen(&[
        "replay",
        &s(&file),
        "--target",
        &format!("http://{addr}"),
        "--duration",
        "3s",
        "--no-cap",
        "--keys-file",
        &s(&d.join("keys")),
        "--quiet",
    ])
    .await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    sampler.join().unwrap();
    let grown_mib = peak.load(std::sync::atomic::Ordering::SeqCst).saturating_sub(base) / 1024;
    assert_eq!(exit, Exit::Ok, "{out}");
    assert!(t0.elapsed() < Duration::from_secs(30));
    // About four requests went out (3 s at 1 req/s); memory should hold a few bodies, not 64.
    // The reader is at most 2 batches (1 MiB, or one body, each) ahead; what the process holds
    // beyond the bodies in use is glibc's per-thread arenas keeping freed 8 MiB chunks (the scan,
    // the reader and the engine each free bodies in their own): with MALLOC_ARENA_MAX=1 the
    // same run stays under 128 MiB. Before the batches, it grew by about 550 MiB here.
    assert!(
        grown_mib < 192,
        "the replay's memory grew by {grown_mib} MiB to send ~4 requests of 8 MiB\n{out}"
    );
    let _ = std::fs::remove_dir_all(&d);
}

/// One HTTP/1.1 exchange on a fresh connection: the whole answer as text.
async fn raw(addr: SocketAddr, method: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(
        format!("{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).await.unwrap();
    text
}

/// Route rows come from recorded paths. `/metrics` turns `"` and `\` in a label into `_`, so
/// rows `GET /q"x`, `GET /q\x` and `GET /q_x` become one label set three times over: a
/// page with duplicate series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_rows_that_differ_by_a_quote_or_backslash_make_duplicate_series_on_metrics() {
    let d = dir("metrics");
    let (addr, _seen) = recording_service().await;
    let file = d.join("rec.jsonl");
    let text =
        line(0, "GET", r#"/q\"x"#, &[]) + &line(5, "GET", r"/q\\x", &[]) + &line(10, "GET", "/q_x", &[]);
    std::fs::write(&file, text).unwrap();
    let port = synth_testkit::free_port().unwrap();
    let control: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let operator = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let page = raw(control, "GET", "/metrics").await;
        let _ = raw(control, "POST", "/stop").await;
        page
    });
    let (exit, out) = loadgen(&[
        "replay",
        &s(&file),
        "--target",
        &format!("http://{addr}"),
        "--loop",
        "--speed",
        "10",
        "--no-cap",
        "--control-addr",
        &control.to_string(),
        "--keys-file",
        &s(&d.join("keys")),
        "--quiet",
    ])
    .await;
    let page = operator.await.unwrap();
    assert_eq!(exit, Exit::Stopped, "{out}");
    let body = page.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    let series: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("loadgen_requests_total{"))
        .filter_map(|l| l.rsplit_once(' ').map(|(s, _)| s))
        .collect();
    let mut unique = series.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(series.len(), unique.len(), "duplicate series on /metrics:\n{body}\n{out}");
    if let Some(verdict) = synth_testkit::promtool::check_metrics(
        "route_rows_that_differ_by_a_quote_or_backslash_make_duplicate_series_on_metrics",
        &body,
    ) {
        verdict.unwrap_or_else(|why| panic!("promtool refused the replay's page: {why}\n{body}"));
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// `--duration 0s` is accepted: the replay sends nothing and exits 0 (same class as above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_with_duration_0_sends_nothing_and_exits_0() {
    let d = dir("dur0");
    let (addr, seen) = recording_service().await;
    let file = d.join("rec.jsonl");
    std::fs::write(&file, line(0, "GET", "/products/1", &[])).unwrap();
    let (exit, out) = outcome(&[
        "replay",
        &s(&file),
        "--target",
        &format!("http://{addr}"),
        "--duration",
        "0s",
        "--no-cap",
        "--keys-file",
        &s(&d.join("keys")),
        "--quiet",
    ])
    .await;
    assert_eq!(seen.all().len(), 0, "{out}");
    assert_ne!(exit, Ok(Exit::Ok), "a replay that sent nothing passed:\n{out}");
    let _ = std::fs::remove_dir_all(&d);
}

/// `Replay::timeout(Duration::MAX)` (the usual Rust spelling of "no timeout") passes the
/// option check (only zero is refused), the engine starts, then panics while draining
/// (`engine/mod.rs`: `Instant::now() + DRAIN_LIMIT.max(timeout)` overflows), with the request it
/// spawned in flight or cut off: no outcome, no report, a panic in the caller's runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_with_timeout_duration_max_panics_while_draining() {
    let d = dir("tmax");
    let (addr, seen) = recording_service().await;
    let file = d.join("rec.jsonl");
    std::fs::write(&file, line(0, "GET", "/products/1", &[])).unwrap();
    let replay = loadgen::Replay::new([&file], format!("http://{addr}").parse().unwrap())
        .no_cap()
        .timeout(Duration::MAX);
    let config = loadgen::RunConfig::new(KeyRing::parse(KEYS).unwrap()).with_quiet(true);
    let joined = tokio::spawn(async move { loadgen::replay(replay, config).await.map(|o| o.exit()) }).await;
    let sent = seen.all().len();
    match joined {
        Err(e) => panic!("loadgen::replay panicked (the target saw {sent} request(s)): {e}"),
        Ok(result) => {
            // Either refused up front (nothing sent) or completed.
            assert!(result.is_err() && sent == 0 || result.is_ok(), "{result:?}");
        }
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// A FIFO as the recording (`mkfifo p; zcat capture.jsonl.gz > p & loadgen replay p …`): the
/// scan reads it to its end and finds 5 requests; the reader opens it again and blocks in
/// `open()` for a writer that never comes. The replay sends nothing and, with `--duration`,
/// "completes" with exit 0 (without it, it waits until Ctrl-C); the reader thread stays blocked
/// for the life of the process. A recording that cannot be read twice should be refused up
/// front (exit 2), or the run aborted (exit 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_recording_replays_nothing_and_exits_0_leaving_the_reader_blocked() {
    use std::io::Write as _;
    let d = dir("fifo");
    let (addr, seen) = recording_service().await;
    let text: String = (0..5).map(|i| line(i * 10, "GET", &format!("/items/{i}"), &[])).collect();
    let fifo = d.join("fifo");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let f = fifo.clone();
    std::thread::spawn(move || {
        let mut w = std::fs::OpenOptions::new().write(true).open(&f).unwrap();
        w.write_all(text.as_bytes()).unwrap();
    });
    let readers_before: Vec<String> = thread_cpu("loadgen-replay").into_iter().map(|(t, _)| t).collect();
    let (exit, out) = outcome(&[
        "replay",
        &s(&fifo),
        "--target",
        &format!("http://{addr}"),
        "--duration",
        "2s",
        "--no-cap",
        "--keys-file",
        &s(&d.join("keys")),
        "--quiet",
    ])
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let left: Vec<String> = thread_cpu("loadgen-replay")
        .into_iter()
        .map(|(t, _)| t)
        .filter(|t| !readers_before.contains(t))
        .collect();
    let sent = seen.all().len();
    assert!(
        exit != Ok(Exit::Ok) || sent > 0,
        "the scan found 5 requests, the replay sent {sent} and exited 0; reader threads left: {left:?}\n{out}"
    );
    // Unblock whichever end still waits (a leaked reader, or the writer above when the replay
    // refused the pipe without opening it), without blocking here.
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        const O_NONBLOCK: i32 = 0o4000;
        let _ = std::fs::OpenOptions::new().write(true).custom_flags(O_NONBLOCK).open(&fifo);
        let _ = std::fs::OpenOptions::new().read(true).custom_flags(O_NONBLOCK).open(&fifo);
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// RFC 3986 dot-segment removal, as nginx, Go's ServeMux, Envoy (normalize_path) and most
/// gateways apply it before routing.
fn remove_dot_segments(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for seg in path.split('/').skip(1) {
        match seg {
            "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    format!("/{}", out.join("/"))
}

/// `--target https://gateway.example/staging` ("it may carry a path prefix"): a recorded path
/// with dot-segments (real captures hold scanners' `/../` probes; .gor and synth captures keep
/// them as sent) is joined as `/staging/../payments/…`, and a gateway that normalises the path
/// routes it outside the prefix: to whatever else that host serves (production, admin).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_dot_segment_path_escapes_the_targets_path_prefix() {
    let d = dir("prefix");
    let (addr, seen) = recording_service().await;
    let file = d.join("rec.jsonl");
    let text = line(0, "GET", "/products/1", &[])
        + &line(10, "GET", "/../payments/refunds", &[])
        + &line(20, "GET", "/./%2e%2e/admin", &[]);
    std::fs::write(&file, text).unwrap();
    let (exit, out) = loadgen(&[
        "replay",
        &s(&file),
        "--target",
        &format!("http://{addr}/staging"),
        "--no-cap",
        "--keys-file",
        &s(&d.join("keys")),
        "--quiet",
    ])
    .await;
    let paths: Vec<String> = seen.all().into_iter().map(|a| a.2).collect();
    assert!(paths.iter().any(|p| p == "/staging/products/1"), "{paths:?}\n{out}");
    for p in &paths {
        let routed = remove_dot_segments(p.split('?').next().unwrap_or(p));
        assert!(
            routed.starts_with("/staging/"),
            "sent `{p}`, which a normalising gateway routes to `{routed}`, outside --target's /staging (exit {exit:?})"
        );
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// The replay's clock starts at the first record and "never goes back": one record stamped
/// later than the rest at the head of a file (a skewed clock, a bad export, an edited line)
/// puts every other record at offset 0. The recording replays all at once, and the cap from
/// the recording's own rate counts every record in its first second: real traffic of 1 req/s
/// reads as 601 req/s, and `--cap-share 0.25` lets ~150 req/s through instead of 0.25.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_future_stamped_first_record_collapses_the_recording_and_lifts_the_cap() {
    let d = dir("future");
    let (addr, seen) = recording_service().await;
    let file = d.join("rec.jsonl");
    // 1 request a second for 10 minutes, after a first line stamped a day later.
    let mut text = line(86_400_000, "GET", "/products/0", &[]);
    for i in 0..600u64 {
        text.push_str(&line(i * 1000, "GET", &format!("/products/{}", i + 1), &[]));
    }
    std::fs::write(&file, text).unwrap();
    let (exit, out) = loadgen(&[
        "replay",
        &s(&file),
        "--target",
        &format!("http://{addr}"),
        "--duration",
        "3s",
        "--cap-share",
        "0.25",
        "--keys-file",
        &s(&d.join("keys")),
        "--quiet",
    ])
    .await;
    let sent = seen.all().len();
    // At a quarter of 1 req/s, 3 s allow one request (the bucket holds at least one).
    assert!(sent <= 2, "{sent} requests in 3 s under a cap meant to be 0.25 req/s (exit {exit:?})\n{out}");
    let _ = std::fs::remove_dir_all(&d);
}

/// `--max-gap` cuts silences for timing, but the cap's "recording's own rate" is counted on the
/// cut clock too: a sparse recording replayed without its pauses (`--max-gap 0s`, or any gap
/// shorter than the recording's own) reads as denser real traffic, and the cap rises with it.
/// Here 1 req/s recorded reads as 601 req/s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_max_gap_inflates_the_recordings_own_rate_and_lifts_the_cap() {
    let d = dir("maxgap");
    let (addr, seen) = recording_service().await;
    let file = d.join("rec.jsonl");
    let text: String = (0..601u64).map(|i| line(i * 1000, "GET", &format!("/products/{i}"), &[])).collect();
    std::fs::write(&file, text).unwrap();
    let (exit, out) = loadgen(&[
        "replay",
        &s(&file),
        "--target",
        &format!("http://{addr}"),
        "--max-gap",
        "1ms",
        "--duration",
        "3s",
        "--cap-share",
        "0.25",
        "--keys-file",
        &s(&d.join("keys")),
        "--quiet",
    ])
    .await;
    let sent = seen.all().len();
    assert!(sent <= 2, "{sent} requests in 3 s under a cap meant to be 0.25 req/s (exit {exit:?})\n{out}");
    let _ = std::fs::remove_dir_all(&d);
}

/// With `--methods POST` (after the side-effect inventory), a recorded `Idempotency-Key` is the
/// real user's: replayed ×N, the target's idempotency store (often a gateway or middleware in
/// front of the synth guards) records the replay's no-op answer under the user's key, and the
/// user's own retry gets that answer back: a real request served a synthetic result.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_idempotency_key_is_replayed_under_the_real_users_key() {
    let d = dir("idem");
    let (addr, seen) = recording_service().await;
    let file = d.join("rec.jsonl");
    std::fs::write(
        &file,
        line(
            0,
            "POST",
            "/payments",
            &[("idempotency-key", "real-user-key-7f3a"), ("content-type", "application/json")],
        ),
    )
    .unwrap();
    let (exit, out) = loadgen(&[
        "replay",
        &s(&file),
        "--target",
        &format!("http://{addr}"),
        "--methods",
        "POST",
        "--amplify",
        "2",
        "--no-cap",
        "--keys-file",
        &s(&d.join("keys")),
        "--quiet",
    ])
    .await;
    let all = seen.all();
    assert_eq!(all.len(), 2, "{out}");
    for (_, _, _, headers) in &all {
        assert!(
            !headers.iter().any(|(_, v)| v.contains("real-user-key")),
            "a replayed POST carries the real user's idempotency key (exit {exit:?}): {headers:?}"
        );
    }
    let _ = std::fs::remove_dir_all(&d);
}

/// Options the check accepts (a speed above 0, any --max-gap) and a recording whose two
/// records are centuries apart: `Job::new` computes the planned length with
/// `Duration::from_secs_f64(span / speed)` and panics (job.rs), instead of refusing the option.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_speed_over_a_long_recording_panics_in_planning() {
    let d = dir("tiny");
    let (addr, _seen) = recording_service().await;
    let file = d.join("rec.jsonl");
    let rec = |at: u64, uri: &str| {
        format!(
            "{{\"v\":1,\"at_us\":{at},\"method\":\"GET\",\"uri\":\"{uri}\",\"headers\":[],\"body\":\"\",\"body_encoding\":\"utf8\",\"body_len\":0}}\n"
        )
    };
    std::fs::write(&file, rec(1, "/a") + &rec(18_000_000_000_000_000_000, "/b")).unwrap();
    let replay = loadgen::Replay::new([&file], format!("http://{addr}").parse().unwrap())
        .no_cap()
        .speed(1e-9)
        .max_gap(Duration::MAX)
        .duration(Duration::from_secs(1));
    let config = loadgen::RunConfig::new(KeyRing::parse(KEYS).unwrap()).with_quiet(true);
    let joined = tokio::spawn(async move { loadgen::replay(replay, config).await.map(|o| o.exit()) }).await;
    assert!(joined.is_ok(), "loadgen::replay panicked: {:?}", joined.err());
    let _ = std::fs::remove_dir_all(&d);
}

/// Runs `loadgen ARGS…`: its exit code, or the error it refused to start with (exit 2).
async fn outcome(args: &[&str]) -> (Result<Exit, String>, String) {
    let cli = <loadgen::cli::Cli as clap::Parser>::try_parse_from(
        std::iter::once("loadgen").chain(args.iter().copied()),
    )
    .unwrap_or_else(|e| panic!("loadgen {args:?}: {e}"));
    let mut out = Vec::new();
    let exit = loadgen::cli::run_async(cli, &mut out).await.map_err(|e| format!("{e:#}"));
    (exit, String::from_utf8(out).unwrap_or_default())
}
