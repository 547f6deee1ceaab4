//! What every service of the shop shares: the synth server layer, the request metric, the
//! `/metrics` and `/stats` endpoints, real/synthetic counters and a small HTTP client.

use std::{
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{Router, response::IntoResponse, routing::get};
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use synth_ctx::Verifier;
use synth_guards::GuardRegistry;
use synth_tower::{
    KillSwitch, PropagateSynthetic, PropagateSyntheticLayer, SyntheticStats, VerifySyntheticLayer,
    capture::{self, CaptureHandle},
    mirror::{CompareResult, DarkResult, Decision, MirrorHandle},
};
use tokio::sync::watch;
use tower::{Layer, Service, ServiceExt};

/// Real and synthetic counts of something.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitCount {
    /// Counted outside a synthetic scope.
    pub real: u64,
    /// Counted inside one.
    pub synthetic: u64,
}

/// A counter split by the synthetic context at the time of counting.
#[derive(Debug, Default)]
pub struct Split {
    real: AtomicU64,
    synthetic: AtomicU64,
}

impl Split {
    /// Counts one, as real or synthetic according to the current context.
    pub fn record(&self) {
        if synth_ctx::is_synthetic() {
            self.synthetic.fetch_add(1, Relaxed);
        } else {
            self.real.fetch_add(1, Relaxed);
        }
    }

    /// Counts one as synthetic whatever the context says (a recorder that saw synthetic input).
    pub fn record_synthetic(&self) {
        self.synthetic.fetch_add(1, Relaxed);
    }

    /// The counts so far.
    pub fn get(&self) -> SplitCount {
        SplitCount { real: self.real.load(Relaxed), synthetic: self.synthetic.load(Relaxed) }
    }
}

/// Requests a service's synth layer saw.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    /// Without a marker.
    pub real: u64,
    /// With a valid marker (any origin).
    pub synthetic: u64,
    /// Refused markers (forged, expired, …).
    pub rejected: u64,
    /// Synthetic requests shed (kill switch, overload).
    pub shed: u64,
}

/// One service's identity and its synth state.
#[derive(Clone, Debug)]
pub struct ServiceBase {
    /// The name in `synthetic-traffic-path` and in metric labels.
    pub name: &'static str,
    /// Counters of the server layer.
    pub stats: SyntheticStats,
    /// The service's kill switch for synthetic traffic.
    pub kill: KillSwitch,
    /// Requests that reached the handlers (past the synth layer).
    pub handled: Arc<Split>,
    /// This service's guards: its `/metrics` page shows these, not the other services' of the
    /// same process (`shop all`).
    pub guards: GuardRegistry,
    /// The service's mirror (dark traffic), if it has one: its series join `/metrics`, its
    /// counters `/stats` (as `mirror`), its routes the admin API.
    pub mirror: Option<MirrorHandle>,
    /// The service's capture of real requests (for replay), if it has one: its series join
    /// `/metrics`, its counters `/stats` (as `capture`).
    pub capture: Option<CaptureHandle>,
    verifier: Verifier,
}

impl ServiceBase {
    /// A service named `name` that verifies markers with `verifier`.
    pub fn new(name: &'static str, verifier: Verifier) -> Self {
        ServiceBase {
            name,
            stats: SyntheticStats::new(),
            kill: KillSwitch::new(),
            handled: Arc::default(),
            guards: GuardRegistry::new(),
            mirror: None,
            capture: None,
            verifier,
        }
    }

    /// The metrics layer for this service (inside [`server_layer`](Self::server_layer)).
    pub fn metered(&self) -> MeteredLayer {
        MeteredLayer { service: self.name, handled: self.handled.clone() }
    }

    /// The synth server layer for this service.
    pub fn server_layer(&self) -> VerifySyntheticLayer {
        VerifySyntheticLayer::new(self.verifier.clone())
            .with_service_name(self.name)
            .with_stats(self.stats.clone())
            .with_kill_switch(self.kill.clone())
    }

    /// The layer's counters.
    pub fn requests(&self) -> RequestCounts {
        let s = self.stats.snapshot();
        RequestCounts {
            real: s.real + s.treated_as_real,
            synthetic: s.accepted.iter().sum(),
            rejected: s.rejected_total(),
            shed: s.shed_total(),
        }
    }

    /// Requests with a valid marker, by its origin (`load`, `replay`, `dark`): a replayed
    /// request is told from a load test's by this, not by `requests.synthetic`.
    pub fn requests_by_origin(&self) -> serde_json::Value {
        let s = self.stats.snapshot();
        synth_ctx::Origin::ALL.iter().map(|o| (o.as_str(), serde_json::Value::from(s.accepted(*o)))).collect()
    }

    /// `GET /metrics` (this service's synth counters and guards, and the process's `metrics`
    /// registry: each family once, so `promtool check metrics` and Prometheus accept it) and `GET /stats` (the JSON that `stats` returns, with `requests` added).
    pub fn observability<F>(&self, stats: F) -> Router
    where
        F: Fn() -> serde_json::Value + Clone + Send + Sync + 'static,
    {
        let me = self.clone();
        let metrics = {
            let me = me.clone();
            move || {
                let me = me.clone();
                async move {
                    let mut text = metrics_handle().map(PrometheusHandle::render).unwrap_or_default();
                    text.push_str(&me.stats.snapshot().to_prometheus(me.name));
                    text.push_str(&me.guards.render_prometheus());
                    if let Some(mirror) = &me.mirror {
                        text.push_str(&mirror.to_prometheus());
                    }
                    if let Some(capture) = &me.capture {
                        text.push_str(&capture.to_prometheus());
                    }
                    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
                }
            }
        };
        let json = move || {
            let me = me.clone();
            let stats = stats.clone();
            async move {
                let mut v = stats();
                if let Some(o) = v.as_object_mut() {
                    o.insert("service".into(), me.name.into());
                    o.insert("requests".into(), serde_json::json!(me.requests()));
                    o.insert("requests_by_origin".into(), me.requests_by_origin());
                    o.insert("handled".into(), serde_json::json!(me.handled.get()));
                    o.insert("synthetic_stopped".into(), me.kill.is_stopped().into());
                    if let Some(mirror) = &me.mirror {
                        o.insert("mirror".into(), mirror_stats(mirror));
                    }
                    if let Some(capture) = &me.capture {
                        o.insert("capture".into(), capture_stats(capture));
                    }
                }
                axum::Json(v)
            }
        };
        Router::new().route("/metrics", get(metrics)).route("/stats", get(json))
    }
}

/// A mirror's counters as `/stats` shows them: what it did with the requests it looked at
/// (`requests.queued` = copies sent, `requests.synthetic` = synthetic requests it skipped), what
/// became of the copies (`dark`), the comparisons (`compared`), copies still pending, and the
/// JSON paths at which the sampled mismatches differed, with how many samples named each.
pub fn mirror_stats(mirror: &MirrorHandle) -> serde_json::Value {
    let s = mirror.snapshot();
    let requests: serde_json::Map<String, serde_json::Value> =
        Decision::ALL.iter().map(|d| (d.as_str().to_owned(), s.decided(*d).into())).collect();
    let dark: serde_json::Map<String, serde_json::Value> =
        DarkResult::ALL.iter().map(|r| (r.as_str().to_owned(), s.dark(*r).into())).collect();
    let compared: serde_json::Map<String, serde_json::Value> =
        CompareResult::ALL.iter().map(|r| (r.as_str().to_owned(), s.compared(*r).into())).collect();
    let mut paths = std::collections::BTreeMap::<String, u64>::new();
    let samples = mirror.mismatch_samples();
    for m in &samples {
        for d in &m.differences {
            *paths.entry(d.at.clone()).or_default() += 1;
        }
    }
    serde_json::json!({
        "target": mirror.target().to_string(),
        "run": mirror.run().as_str(),
        "share": mirror.share(),
        "active": mirror.is_active(),
        "requests": requests,
        "dark": dark,
        "compared": compared,
        "pending": s.pending,
        "mismatch_samples": samples.len(),
        "mismatch_paths": paths,
    })
}

/// A capture's counters as `/stats` shows them: what it did with the requests it looked at
/// (`requests.queued` = recorded, `requests.synthetic` = skipped because synthetic: a replayed
/// request among them), records `written` to the file and refused by it (`sink_errors`), bytes.
pub fn capture_stats(capture: &CaptureHandle) -> serde_json::Value {
    let s = capture.snapshot();
    let requests: serde_json::Map<String, serde_json::Value> =
        capture::Decision::ALL.iter().map(|d| (d.as_str().to_owned(), s.decided(*d).into())).collect();
    serde_json::json!({
        "share": capture.share(),
        "active": capture.is_enabled(),
        "requests": requests,
        "written": s.written,
        "sink_errors": s.sink_errors,
        "bytes": s.bytes,
        "body_omitted": s.body_omitted,
    })
}

static METRICS: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process's `metrics` recorder once: Prometheus, wrapped in synth's
/// `SyntheticRecorder` so every series gets `synthetic="true"|"false"`.
pub fn install_metrics() {
    let _ = metrics_handle();
}

fn metrics_handle() -> Option<&'static PrometheusHandle> {
    METRICS
        .get_or_init(|| {
            // Histograms, not the exporter's default summaries: real users' p95 is then a
            // histogram_quantile query, the one loadgen's signals and the guide use.
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
                .set_buckets(synth_guards::telemetry::metrics_layer::LATENCY_BUCKETS)
                .map(metrics_exporter_prometheus::PrometheusBuilder::build_recorder);
            let recorder = match recorder {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "metrics buckets refused: /metrics shows synth counters only");
                    return None;
                }
            };
            let handle = recorder.handle();
            let wrapped = synth_guards::telemetry::metrics_layer::SyntheticRecorder::new(recorder);
            if metrics::set_global_recorder(wrapped).is_err() {
                tracing::warn!(
                    "a metrics recorder was already installed: /metrics shows synth counters only"
                );
                return None;
            }
            // promtool (and a careful reader) wants HELP text for every family.
            metrics::describe_histogram!(
                "shop_http_request_duration_seconds",
                metrics::Unit::Seconds,
                "Time to answer a request, by service and status; `synthetic` splits real from load."
            );
            let upkeep = handle.clone();
            let _ = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || {
                loop {
                    std::thread::sleep(Duration::from_secs(5));
                    upkeep.run_upkeep();
                }
            });
            Some(handle)
        })
        .as_ref()
}

/// Records `shop_http_request_duration_seconds{service, status}` for every request, and counts
/// the requests that reached the handlers. Put it inside the synth layer: the recorder reads the
/// synthetic context when the value is recorded, and shed or refused requests never get here.
#[derive(Clone, Debug)]
pub struct MeteredLayer {
    service: &'static str,
    handled: Arc<Split>,
}

impl<S> Layer<S> for MeteredLayer {
    type Service = Metered<S>;
    fn layer(&self, inner: S) -> Metered<S> {
        Metered { inner, service: self.service, handled: self.handled.clone() }
    }
}

/// See [`MeteredLayer`].
#[derive(Clone, Debug)]
pub struct Metered<S> {
    inner: S,
    service: &'static str,
    handled: Arc<Split>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> Service<Request<B>> for Metered<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Response<RB>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let start = Instant::now();
        self.handled.record();
        let service = self.service;
        let fut = self.inner.call(req);
        Box::pin(async move {
            let res = fut.await;
            let status = match &res {
                Ok(r) => status_class(r.status()),
                Err(_) => "error",
            };
            metrics::histogram!("shop_http_request_duration_seconds", "service" => service, "status" => status)
                .record(start.elapsed().as_secs_f64());
            res
        })
    }
}

fn status_class(s: StatusCode) -> &'static str {
    match s.as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// Stops servers started with [`serve`].
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Sender<bool>);

impl Shutdown {
    /// A new, unfired signal.
    pub fn new() -> Self {
        Shutdown(watch::channel(false).0)
    }

    /// Stops every server that listens to it (in-flight requests finish).
    pub fn fire(&self) {
        let _ = self.0.send(true);
    }

    /// Resolves once fired.
    pub fn wait(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.subscribe();
        async move {
            let _ = rx.wait_for(|fired| *fired).await;
        }
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

/// Binds `addr` and serves `app` until `shutdown` fires; returns the bound address.
pub async fn serve(addr: SocketAddr, app: Router, shutdown: &Shutdown) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let signal = shutdown.wait();
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(signal).await {
            tracing::error!(%bound, error = %e, "server stopped");
        }
    });
    Ok(bound)
}

/// The HTTP client every service uses for its downstream calls: pooled HTTP/1.1, the marker
/// propagated by synth's client layer.
pub type HttpClient = PropagateSynthetic<Client<HttpConnector, Full<Bytes>>>;

/// A new [`HttpClient`].
pub fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    connector.set_nodelay(true);
    PropagateSyntheticLayer::new().layer(Client::builder(TokioExecutor::new()).build(connector))
}

/// Why a downstream call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The URL did not parse.
    #[error("bad URL {0}")]
    Url(String),
    /// Connect or transport error.
    #[error("{0}")]
    Transport(String),
    /// The body was not JSON.
    #[error("the answer was not JSON: {0}")]
    Json(#[from] serde_json::Error),
}

/// POSTs `body` as JSON through `client` (any service stack over the shop's client) and
/// returns the status, the headers and the JSON answer (`null` when empty).
pub async fn post_json<S, RB>(
    client: S,
    url: &str,
    body: &serde_json::Value,
) -> Result<(StatusCode, http::HeaderMap, serde_json::Value), CallError>
where
    S: Service<Request<Full<Bytes>>, Response = Response<RB>>,
    S::Error: std::fmt::Display,
    RB: http_body::Body,
    RB::Error: std::fmt::Display,
{
    let req = Request::post(url)
        .header(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))
        .body(Full::new(Bytes::from(serde_json::to_vec(body)?)))
        .map_err(|_| CallError::Url(url.to_owned()))?;
    let res = client.oneshot(req).await.map_err(|e| CallError::Transport(e.to_string()))?;
    let (parts, body) = res.into_parts();
    let bytes = body.collect().await.map_err(|e| CallError::Transport(e.to_string()))?.to_bytes();
    let json = if bytes.is_empty() { serde_json::Value::Null } else { serde_json::from_slice(&bytes)? };
    Ok((parts.status, parts.headers, json))
}

/// The `{ "error": … }` answer of every service.
pub fn error(status: StatusCode, message: impl Into<String>) -> axum::response::Response {
    (status, axum::Json(serde_json::json!({ "error": message.into() }))).into_response()
}

/// Shared, reference-counted service state.
pub type Shared<T> = Arc<T>;

/// GETs `url` and returns the status and the body as text (for `/stats` and `/metrics`).
pub async fn get_text(url: &str) -> Result<(StatusCode, String), CallError> {
    let req = Request::get(url).body(Full::new(Bytes::new())).map_err(|_| CallError::Url(url.to_owned()))?;
    let res = http_client().oneshot(req).await.map_err(|e| CallError::Transport(e.to_string()))?;
    let (parts, body) = res.into_parts();
    let bytes = body.collect().await.map_err(|e| CallError::Transport(e.to_string()))?.to_bytes();
    Ok((parts.status, String::from_utf8_lossy(&bytes).into_owned()))
}
