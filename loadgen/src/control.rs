//! The live HTTP endpoints of a run: Prometheus metrics and the control API.
//!
//! The routes are listed in the crate docs ("The control API"), where callers of
//! [`RunConfig::with_control_addr`](crate::RunConfig::with_control_addr) read them.
//!
//! With a token, every route (`/metrics` and `/status` too, and the metrics-only server) needs
//! `Authorization: Bearer <token>`, or answers 401. The comparison takes the same time however
//! much of a guess matches and whatever its length. Bind it to loopback or an internal interface.

use std::{convert::Infallible, fmt::Write as _, net::SocketAddr, sync::Arc};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::json;

use crate::{
    engine::Control,
    stats::{ErrorClass, merge},
};

/// Which routes a server offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Routes {
    /// `GET /metrics` only.
    MetricsOnly,
    /// Everything.
    All,
}

/// Starts a server on `addr` (port 0 picks one); returns the address it listens on and the
/// server's task: aborting it closes the listener and every open connection,
/// so a run that is over answers nothing (a library may run many in one process).
pub(crate) async fn serve_with_handle(
    addr: SocketAddr,
    control: Control,
    routes: Routes,
    token: Option<String>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let token: Arc<Option<String>> = Arc::new(token);
    let task = tokio::spawn(async move {
        // Owned by this task: aborting it drops the set, which aborts the connections.
        let mut connections = tokio::task::JoinSet::new();
        loop {
            while connections.try_join_next().is_some() {}
            let Ok((stream, _)) = listener.accept().await else { continue };
            let (control, token) = (control.clone(), token.clone());
            connections.spawn(async move {
                let service = service_fn(move |req| {
                    let (control, token) = (control.clone(), token.clone());
                    async move { Ok::<_, Infallible>(handle(&req, &control, routes, token.as_deref())) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok((local, task))
}

fn text(status: StatusCode, body: String, content_type: &'static str) -> Response<Full<Bytes>> {
    let mut res = Response::new(Full::new(Bytes::from(body)));
    *res.status_mut() = status;
    res.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static(content_type));
    res
}

fn handle(
    req: &Request<Incoming>,
    control: &Control,
    routes: Routes,
    token: Option<&str>,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    // Checked before routing: with a token nothing answers without it, not even a 404.
    if let Some(token) = token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
            let mut res = text(
                StatusCode::UNAUTHORIZED,
                "send `Authorization: Bearer <control token>`\n".into(),
                "text/plain",
            );
            res.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
            return res;
        }
    }
    if req.method() == Method::GET && path == "/metrics" {
        return text(StatusCode::OK, metrics(control), "text/plain; version=0.0.4");
    }
    if routes == Routes::MetricsOnly {
        return text(StatusCode::NOT_FOUND, "only /metrics here\n".into(), "text/plain");
    }
    if req.method() == Method::GET && path == "/status" {
        return text(StatusCode::OK, status(control).to_string(), "application/json");
    }
    if req.method() != Method::POST {
        return text(
            StatusCode::NOT_FOUND,
            "routes: GET /metrics, GET /status, POST /stop, /pause, /resume, /rate?factor=F, /heartbeat\n"
                .into(),
            "text/plain",
        );
    }
    match path {
        "/stop" => control.stop(),
        "/pause" => control.pause(),
        "/resume" => control.resume(),
        "/heartbeat" => control.heartbeat(),
        "/rate" => {
            let mut given =
                req.uri().query().unwrap_or("").split('&').filter_map(|kv| kv.strip_prefix("factor="));
            // Exactly one factor: with two, which one a proxy or this server reads is a guess.
            let factor = match (given.next(), given.next()) {
                (Some(f), None) => f.parse::<f64>().map_err(|_| format!("`{f}` is not a number")),
                (None, _) => Err("no factor".to_owned()),
                (Some(_), Some(_)) => Err("more than one factor".to_owned()),
            }
            .and_then(|f| control.set_rate_factor(f).map_err(|_| format!("{f:?} is out of range")));
            if let Err(why) = factor {
                let max = control.max_rate_factor();
                return text(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "{why}: use /rate?factor=F with F a number from 0 to {max} (1 = as written, 0 = no arrivals; the scenario's max_rate_factor sets the upper end)\n"
                    ),
                    "text/plain",
                );
            }
        }
        _ => return text(StatusCode::NOT_FOUND, "unknown route\n".into(), "text/plain"),
    }
    text(StatusCode::OK, status(control).to_string(), "application/json")
}

/// Compares `given` with `secret` without an early exit and over `given`'s length only, so the
/// time taken tells neither how much of a guess matched nor how long the secret is (the same
/// comparison as synth-tower's admin router).
fn constant_time_eq(given: &[u8], secret: &[u8]) -> bool {
    let mut diff = given.len() ^ secret.len();
    for (i, x) in given.iter().enumerate() {
        diff |= usize::from(x ^ secret.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

fn status(control: &Control) -> serde_json::Value {
    let live = control.live();
    let total = live.as_ref().map(|l| merge(&l.steps));
    json!({
        "run_id": live.as_ref().map(|l| l.run_id.clone()),
        "stopped": control.is_stopped(),
        "paused": control.is_paused(),
        "rate_factor": control.rate_factor(),
        "max_rate_factor": control.max_rate_factor(),
        "auto_factor": control.auto_factor(),
        "auto_paused": control.is_auto_paused(),
        "since_heartbeat_s": control.since_heartbeat().as_secs_f64(),
        "journeys": live.as_ref().map(|l| json!({ "active": l.active, "completed": l.completed, "failed": l.failed })),
        "requests": total.as_ref().map(|t| t.requests()),
        "errors": total.as_ref().map(|t| t.error_count()),
        // A replay's cap (replayed requests/s; null: none), and whether it holds the replay now.
        "replay_cap": Some(control.cap()).filter(|c| c.is_finite()),
        "replay_capped": control.is_capped(),
    })
}

/// A label value as the text format escapes it: `\\`, `\"` and `\n` (two rows that differ only
/// by a quote or a backslash stay two series).
fn label(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Writes a family's `# HELP` and `# TYPE` lines.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The Prometheus text page: every family once, with HELP and TYPE, its samples together
/// (the exposition format wants a family's lines in one group), latency as a summary.
fn metrics(control: &Control) -> String {
    let mut out = String::new();
    let Some(live) = control.live() else {
        return "# the run has not started\n".into();
    };
    let run = label(&live.run_id);
    let steps: Vec<(String, &crate::stats::StepStats)> =
        live.step_names.iter().map(|n| label(n)).zip(&live.steps).collect();
    family(&mut out, "loadgen_requests_total", "counter", "Requests sent, per step.");
    for (step, s) in &steps {
        let _ = writeln!(out, "loadgen_requests_total{{run=\"{run}\",step=\"{step}\"}} {}", s.requests());
    }
    family(&mut out, "loadgen_errors_total", "counter", "Failed requests, per step and error class.");
    for (step, s) in &steps {
        for class in ErrorClass::ALL {
            let n = s.errors.get(&class).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "loadgen_errors_total{{run=\"{run}\",step=\"{step}\",class=\"{}\"}} {n}",
                class.as_str()
            );
        }
    }
    family(&mut out, "loadgen_responses_total", "counter", "Answers, per step and HTTP status code.");
    for (step, s) in &steps {
        for (code, n) in &s.statuses {
            let _ =
                writeln!(out, "loadgen_responses_total{{run=\"{run}\",step=\"{step}\",code=\"{code}\"}} {n}");
        }
    }
    family(
        &mut out,
        "loadgen_tagged_responses_total",
        "counter",
        "Answers that echoed this run in synthetic-traffic-seen, per step.",
    );
    for (step, s) in &steps {
        let _ = writeln!(out, "loadgen_tagged_responses_total{{run=\"{run}\",step=\"{step}\"}} {}", s.tagged);
    }
    family(
        &mut out,
        "loadgen_shed_responses_total",
        "counter",
        "Answers the target's synth layer shed (synthetic-traffic-shed: 1), per step.",
    );
    for (step, s) in &steps {
        let _ = writeln!(out, "loadgen_shed_responses_total{{run=\"{run}\",step=\"{step}\"}} {}", s.shed);
    }
    // A summary: the quantiles of the whole run so far, with its count and sum (the sum from
    // the histogram's mean, within its 3 significant digits).
    family(
        &mut out,
        "loadgen_latency_seconds",
        "summary",
        "Request latency per step over the run so far (quantiles from an HDR histogram).",
    );
    for (step, s) in &steps {
        let h = &s.latency;
        if !h.is_empty() {
            for q in [0.5, 0.95, 0.99] {
                let v = h.value_at_quantile(q) as f64 / 1e6;
                let _ = writeln!(
                    out,
                    "loadgen_latency_seconds{{run=\"{run}\",step=\"{step}\",quantile=\"{q}\"}} {v}"
                );
            }
        }
        let count = h.len();
        let sum = if count == 0 { 0.0 } else { h.mean() * count as f64 / 1e6 };
        let _ = writeln!(out, "loadgen_latency_seconds_sum{{run=\"{run}\",step=\"{step}\"}} {sum}");
        let _ = writeln!(out, "loadgen_latency_seconds_count{{run=\"{run}\",step=\"{step}\"}} {count}");
    }
    family(&mut out, "loadgen_journeys_active", "gauge", "Journeys in flight.");
    let _ = writeln!(out, "loadgen_journeys_active{{run=\"{run}\"}} {}", live.active);
    family(&mut out, "loadgen_rate_factor", "gauge", "The operator's rate factor (POST /rate?factor=).");
    let _ = writeln!(out, "loadgen_rate_factor{{run=\"{run}\"}} {}", control.rate_factor());
    let cap = control.cap();
    if cap.is_finite() {
        family(
            &mut out,
            "loadgen_replay_cap_requests_per_second",
            "gauge",
            "A replay's cap: the most replayed requests per second (its share of real traffic).",
        );
        let _ = writeln!(out, "loadgen_replay_cap_requests_per_second{{run=\"{run}\"}} {cap}");
        family(&mut out, "loadgen_replay_capped", "gauge", "1 while the cap holds the replay back.");
        let _ = writeln!(out, "loadgen_replay_capped{{run=\"{run}\"}} {}", u8::from(control.is_capped()));
    }
    out
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::{Routes, constant_time_eq, serve_with_handle};
    use crate::engine::Control;

    /// Sends one HTTP/1.1 request and returns the status line.
    async fn status_line(at: std::net::SocketAddr, request: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(at).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await.unwrap();
        String::from_utf8_lossy(&answer).lines().next().unwrap_or_default().to_owned()
    }

    #[tokio::test]
    async fn a_token_guards_every_route_and_the_rate_is_bounded() {
        let control = Control::new();
        let (at, task) = serve_with_handle(
            "127.0.0.1:0".parse().unwrap(),
            control.clone(),
            Routes::All,
            Some("s3cret".into()),
        )
        .await
        .unwrap();
        assert!(at.port() > 0);
        for path in ["/status", "/metrics"] {
            let line =
                status_line(at, &format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n"))
                    .await;
            assert!(line.contains(" 401 "), "{path}: {line}");
        }
        let line = status_line(
            at,
            "GET /status HTTP/1.1\r\nhost: x\r\nauthorization: Bearer s3cret\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert!(line.contains(" 200 "), "{line}");
        let line = status_line(
            at,
            "POST /rate?factor=1e300 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer s3cret\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        )
        .await;
        assert!(line.contains(" 400 "), "{line}");
        // What `POST /rate?factor=` applies, and the bound it checks first.
        assert!(control.set_rate_factor(1e300).is_err());
        assert_eq!(control.max_rate_factor(), 10.0);
        assert_eq!(control.rate_factor(), 1.0);
        task.abort();
    }

    #[test]
    fn the_comparison_needs_every_byte_and_the_length() {
        assert!(constant_time_eq(b"sekret", b"sekret"));
        for guess in [&b"sekreT"[..], b"sekre", b"sekrett", b"", b"sekret\0"] {
            assert!(!constant_time_eq(guess, b"sekret"), "{guess:?}");
        }
        assert!(!constant_time_eq(b"a", b""));
    }
}
