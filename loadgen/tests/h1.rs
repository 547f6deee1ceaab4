//! Closed-model users' own HTTP/1.1 connections against a raw server that answers in every
//! framing HTTP/1.1 allows: content-length, chunked (with trailers), read-to-close, no body
//! (HEAD, 204), 100 Continue first, a kept-alive connection the server closed, and garbage.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use loadgen::{ErrorClass, Finished, RunConfig, Scenario};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

/// Answers each request by its path; counts connections. `/stale` answers, then closes the
/// connection without saying so (a keep-alive the server dropped).
async fn raw_server() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // Read one request head (these requests have no body).
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end);
                    assert!(
                        head.contains("synthetic-traffic: v1."),
                        "every request carries the marker: {head}"
                    );
                    let (method, path) = {
                        let mut it = head.split(' ');
                        (it.next().unwrap_or("").to_owned(), it.next().unwrap_or("").to_owned())
                    };
                    let answer: &[u8] = match (method.as_str(), path.as_str()) {
                        ("HEAD", _) => b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
                        (_, "/len") => b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
                        (_, "/chunked") => b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3;ext=1\r\nhel\r\n2\r\nlo\r\n0\r\nx-trailer: t\r\n\r\n",
                        (_, "/nocontent") => b"HTTP/1.1 204 No Content\r\n\r\n",
                        (_, "/continue") => b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
                        (_, "/close") => b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nhello",
                        (_, "/stale") => b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
                        _ => b"NOT HTTP AT ALL\r\n\r\n",
                    };
                    if s.write_all(answer).await.is_err() {
                        return;
                    }
                    if path == "/close" || path == "/stale" {
                        return; // drops the socket
                    }
                }
            });
        }
    });
    (addr, conns)
}

async fn run(addr: SocketAddr, steps: &str, users: usize) -> Finished {
    let dir = std::env::temp_dir().join(format!("loadgen-h1-{}-{}", std::process::id(), steps.len()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.yaml");
    std::fs::write(
        &path,
        format!("target: http://{addr}\nphases: [{{ duration: 1s, users: {users} }}]\njourneys:\n  - name: j\n    steps:\n{steps}"),
    )
    .unwrap();
    // Quiet, and no preflight: the tests count connections.
    let config = RunConfig::new(synth_ctx::KeyRing::parse(KEYS).unwrap())
        .with_run_id(synth_ctx::RunId::new("h1").unwrap())
        .with_seed(1)
        .with_quiet(true)
        .with_no_preflight(true);
    loadgen::run(Arc::new(Scenario::from_file(&path).unwrap()), config).await.unwrap().finished
}

const HELLO: &str = "capture: { w: { regex: \"^hello$\" } }";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_framing_is_read_whole_and_keep_alive_is_reused() {
    let (addr, conns) = raw_server().await;
    let steps = format!(
        "      - {{ get: /len, {HELLO} }}\n      - {{ get: /chunked, {HELLO} }}\n      - {{ head: /len }}\n      - {{ get: /nocontent, expect: {{ status: 204 }} }}\n      - {{ get: /continue, {HELLO} }}\n      - {{ get: /len, {HELLO} }}\n"
    );
    let finished = run(addr, &steps, 1).await;
    let total = finished.total();
    assert!(total.responses >= 60, "{total:?}");
    assert_eq!(total.error_count(), 0, "{:?}", total.errors);
    assert_eq!(conns.load(Ordering::SeqCst), 1, "one user, one kept-alive connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_and_dropped_connections_are_replaced() {
    let (addr, conns) = raw_server().await;
    // `/close` says so and ends the body by closing; `/stale` closes without a word: the next
    // request finds the kept-alive connection dead before any answer and is sent again.
    let steps = format!(
        "      - {{ get: /close, {HELLO} }}\n      - {{ get: /stale, {HELLO} }}\n      - {{ get: /len, {HELLO} }}\n"
    );
    let finished = run(addr, &steps, 1).await;
    let total = finished.total();
    assert!(total.responses >= 30, "{total:?}");
    assert_eq!(total.error_count(), 0, "{:?}", total.errors);
    let journeys = finished.journeys.completed as usize;
    assert!(conns.load(Ordering::SeqCst) >= 2 * journeys, "new connections after each close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_a_protocol_error() {
    let (addr, _) = raw_server().await;
    let finished = run(addr, "      - { get: /garbage }\n", 1).await;
    let total = finished.total();
    assert!(total.errors.get(&ErrorClass::Protocol).copied().unwrap_or(0) >= 10, "{:?}", total.errors);
    assert_eq!(total.responses, 0);
}
