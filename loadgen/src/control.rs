//! The live HTTP endpoints of a run: Prometheus metrics and the control API.
//!
//! | method and path | what it does |
//! |---|---|
//! | `GET /metrics` | Prometheus text: requests, errors by class, status codes, tagged answers and latency quantiles per step; journeys in flight |
//! | `GET /status` | JSON: run id, paused, rate factor, journeys, requests, errors |
//! | `POST /stop` | stops the run (as Ctrl-C) |
//! | `POST /pause`, `POST /resume` | pauses and resumes arrivals |
//! | `POST /rate?factor=0.5` | multiplies every phase's rate |
//! | `POST /heartbeat` | "keep going": with `--heartbeat`, the run stops when none comes in time |
//!
//! With a token, the `POST` routes need `Authorization: Bearer <token>`. Bind it to loopback or
//! an internal interface.

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
pub enum Routes {
    /// `GET /metrics` only.
    MetricsOnly,
    /// Everything.
    All,
}

/// Starts a server on `addr` (port 0 picks one); returns the address it listens on.
pub async fn serve(
    addr: SocketAddr,
    control: Control,
    routes: Routes,
    token: Option<String>,
) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let token: Arc<Option<String>> = Arc::new(token);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let (control, token) = (control.clone(), token.clone());
            tokio::spawn(async move {
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
    Ok(local)
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
    if let Some(token) = token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if !given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.as_bytes())) {
            return text(
                StatusCode::UNAUTHORIZED,
                "send `Authorization: Bearer <control token>`\n".into(),
                "text/plain",
            );
        }
    }
    match path {
        "/stop" => control.stop(),
        "/pause" => control.pause(),
        "/resume" => control.resume(),
        "/heartbeat" => control.heartbeat(),
        "/rate" => {
            let factor = req
                .uri()
                .query()
                .unwrap_or("")
                .split('&')
                .find_map(|kv| kv.strip_prefix("factor="))
                .and_then(|f| f.parse::<f64>().ok());
            match factor {
                Some(f) if f.is_finite() && f >= 0.0 => control.set_rate_factor(f),
                _ => {
                    return text(
                        StatusCode::BAD_REQUEST,
                        "use /rate?factor=F with F >= 0 (1 = as written)\n".into(),
                        "text/plain",
                    );
                }
            }
        }
        _ => return text(StatusCode::NOT_FOUND, "unknown route\n".into(), "text/plain"),
    }
    text(StatusCode::OK, status(control).to_string(), "application/json")
}

/// Compares without an early exit, so the time taken does not tell how much of a guess matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn status(control: &Control) -> serde_json::Value {
    let live = control.live();
    let total = live.as_ref().map(|l| merge(&l.steps));
    json!({
        "run_id": live.as_ref().map(|l| l.run_id.clone()),
        "stopped": control.is_stopped(),
        "paused": control.is_paused(),
        "rate_factor": control.rate_factor(),
        "auto_factor": control.auto_factor(),
        "auto_paused": control.is_auto_paused(),
        "since_heartbeat_s": control.since_heartbeat().as_secs_f64(),
        "journeys": live.as_ref().map(|l| json!({ "active": l.active, "completed": l.completed, "failed": l.failed })),
        "requests": total.as_ref().map(|t| t.requests()),
        "errors": total.as_ref().map(|t| t.error_count()),
    })
}

fn label(s: &str) -> String {
    s.chars().map(|c| if c == '"' || c == '\\' || c == '\n' { '_' } else { c }).collect()
}

fn metrics(control: &Control) -> String {
    let mut out = String::new();
    let Some(live) = control.live() else {
        return "# the run has not started\n".into();
    };
    let run = label(&live.run_id);
    let _ = writeln!(out, "# TYPE loadgen_requests_total counter");
    let _ = writeln!(out, "# TYPE loadgen_errors_total counter");
    let _ = writeln!(out, "# TYPE loadgen_responses_total counter");
    let _ = writeln!(out, "# TYPE loadgen_tagged_responses_total counter");
    let _ = writeln!(out, "# TYPE loadgen_shed_responses_total counter");
    let _ = writeln!(out, "# TYPE loadgen_latency_seconds gauge");
    for (name, s) in live.step_names.iter().zip(&live.steps) {
        let step = label(name);
        let _ = writeln!(out, "loadgen_requests_total{{run=\"{run}\",step=\"{step}\"}} {}", s.requests());
        for class in ErrorClass::ALL {
            let n = s.errors.get(&class).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "loadgen_errors_total{{run=\"{run}\",step=\"{step}\",class=\"{}\"}} {n}",
                class.as_str()
            );
        }
        for (code, n) in &s.statuses {
            let _ =
                writeln!(out, "loadgen_responses_total{{run=\"{run}\",step=\"{step}\",code=\"{code}\"}} {n}");
        }
        let _ = writeln!(out, "loadgen_tagged_responses_total{{run=\"{run}\",step=\"{step}\"}} {}", s.tagged);
        let _ = writeln!(out, "loadgen_shed_responses_total{{run=\"{run}\",step=\"{step}\"}} {}", s.shed);
        if !s.latency.is_empty() {
            for q in [0.5, 0.95, 0.99] {
                let v = s.latency.value_at_quantile(q) as f64 / 1e6;
                let _ = writeln!(
                    out,
                    "loadgen_latency_seconds{{run=\"{run}\",step=\"{step}\",quantile=\"{q}\"}} {v}"
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "# TYPE loadgen_journeys_active gauge\nloadgen_journeys_active{{run=\"{run}\"}} {}",
        live.active
    );
    let _ = writeln!(
        out,
        "# TYPE loadgen_rate_factor gauge\nloadgen_rate_factor{{run=\"{run}\"}} {}",
        control.rate_factor()
    );
    out
}
