//! Capture for replay: record a sample of **real** requests, scrubbed, off the critical path
//! (feature `capture`).
//!
//! [`CaptureLayer`] goes on a real service (axum, hyper, tonic: it is generic over
//! `http::Request<B>`). For each request it decides, in this order: is capture on, is the request
//! in the sampled share, does it pass the route and method filters, is it **real** (a request
//! that carries a marker in any form, valid or not, or runs in a synthetic scope is never
//! recorded: replayed requests carry a `replay` marker, so a replay sent back through the same
//! service is never captured again), is there room under the per-second ceiling. A chosen
//! request is served exactly as before; meanwhile:
//!
//! - its body is copied as it streams to the handler, up to
//!   [`body_limit`](CaptureBuilder::body_limit) (64 KiB by default); a longer body, or one the
//!   handler does not read to its end, is recorded without it, flagged `body_omitted`;
//! - once the body has ended and the answer's head is there (its status and latency are
//!   recorded too), the record goes into a bounded queue; a full queue drops it and counts it;
//! - a writer on its own thread (`synth-capture`) **scrubs** it and hands it to the
//!   [`CaptureSink`]: by default [`JsonLinesSink`], rotated files in the format of
//!   `docs/capture-format.md`. Scrubbing ([`Scrub`]) drops `authorization`, `cookie`,
//!   `proxy-authorization`, `x-api-key` and the headers you list (or keeps only an allowlist),
//!   replaces query parameters and JSON body fields by name or [`JsonPath`] with
//!   `__synth_scrubbed__`, and records what it scrubbed (names, never values).
//!
//! Nothing the capture does can fail or slow the real request: it never waits, and everything it
//! holds is bounded (the queue, the body limit).
//!
//! # Example
//!
//! ```
//! use axum::{Router, routing::get};
//! use synth_tower::capture::{CaptureLayer, JsonLinesSink, Scrub};
//! use synth_tower::compare::JsonPath;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = std::env::temp_dir().join(format!("capture-mod-doc-{}", std::process::id()));
//! let sink = JsonLinesSink::new(&dir, "catalog")?; // e.g. /var/lib/catalog/capture
//! let capture = CaptureLayer::builder(sink)
//!     .share(0.05)
//!     .per_second(50)
//!     .routes(["/products", "/search"])
//!     .scrub(Scrub { query: vec!["email".into()], json: vec![JsonPath::parse("$.card")?], ..Scrub::default() })
//!     .service_name("catalog")
//!     .build()?;
//! let handle = capture.handle(); // handle.snapshot(), handle.to_prometheus()
//! let app: Router = Router::new().route("/products", get(|| async { "[]" })).layer(capture);
//! # std::fs::remove_dir_all(&dir).ok();
//! # Ok(()) }
//! ```

mod record;
mod service;
mod sink;

use std::{
    fmt::Write as _,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        mpsc,
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use http::Method;
pub use record::{CaptureRecord, DEFAULT_DROPPED_HEADERS, HeaderPolicy, SCRUBBED, Scrub, Scrubbed};
pub use service::{Capture, CaptureFuture, CaptureRequestBody};
pub use sink::{CaptureSink, CaptureSinkError, JsonLinesSink};
use tower_layer::Layer;

pub use crate::compare::JsonPath;
use crate::{
    stats::{STRIPES, stripe_index},
    tap::{threshold, uniform},
};

/// A capture setting that cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum CaptureConfigError {
    /// The share is not a number from 0.0 to 1.0.
    #[error("capture share {0} is not a number from 0.0 (record nothing) to 1.0 (record every request)")]
    Share(f64),
    /// A zero that would stop every record.
    #[error("capture {0} must be more than zero")]
    Zero(&'static str),
    /// A route filter that is not a path prefix.
    #[error("capture route `{0}` must be a path prefix starting with `/`, e.g. `/search`")]
    Route(String),
}

/// What the capture did with a request it looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Decision {
    /// Recorded: its record went into the queue.
    Queued,
    /// Not in the sampled share.
    NotSampled,
    /// Outside the route or method filters, a `CONNECT` or `Upgrade` request, or one without an
    /// origin-form path to record (`OPTIONS *`).
    Filtered,
    /// Synthetic in some form (a marker, valid or not, or a synthetic scope): never recorded.
    Synthetic,
    /// Over the per-second ceiling.
    RateLimited,
    /// Capture is switched off.
    Disabled,
    /// The queue was full: the record was dropped.
    QueueFull,
    /// The writer could not be started or has ended.
    NoWriter,
}

impl Decision {
    /// Every decision, in the order of [`CaptureSnapshot::decisions`].
    pub const ALL: [Decision; 8] = [
        Decision::Queued,
        Decision::NotSampled,
        Decision::Filtered,
        Decision::Synthetic,
        Decision::RateLimited,
        Decision::Disabled,
        Decision::QueueFull,
        Decision::NoWriter,
    ];

    /// A stable label for metrics and JSON.
    pub const fn as_str(self) -> &'static str {
        match self {
            Decision::Queued => "queued",
            Decision::NotSampled => "not_sampled",
            Decision::Filtered => "filtered",
            Decision::Synthetic => "synthetic",
            Decision::RateLimited => "rate_limited",
            Decision::Disabled => "disabled",
            Decision::QueueFull => "queue_full",
            Decision::NoWriter => "no_writer",
        }
    }
}

#[derive(Debug, Default)]
#[repr(align(128))]
struct Stripe {
    decisions: [AtomicU64; Decision::ALL.len()],
}

#[derive(Debug, Default)]
struct Stats {
    stripes: [Stripe; STRIPES],
    written: AtomicU64,
    sink_errors: AtomicU64,
    bytes: AtomicU64,
    body_omitted: AtomicU64,
    scrubbed: [AtomicU64; 3],
}

impl Stats {
    #[inline]
    fn decided(&self, d: Decision) {
        self.stripes[stripe_index()].decisions[d as usize].fetch_add(1, Relaxed);
    }
}

/// A point-in-time copy of a capture's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CaptureSnapshot {
    /// Requests by what the capture did with them, in [`Decision::ALL`] order.
    pub decisions: [u64; Decision::ALL.len()],
    /// Records the sink took.
    pub written: u64,
    /// Records the sink refused (dropped).
    pub sink_errors: u64,
    /// Bytes of the records written (their JSON Lines form).
    pub bytes: u64,
    /// Records written without their body.
    pub body_omitted: u64,
    /// Scrubbed items: headers, query parameters, JSON fields.
    pub scrubbed: [u64; 3],
}

impl CaptureSnapshot {
    /// Requests with one decision.
    pub fn decided(&self, d: Decision) -> u64 {
        self.decisions[d as usize]
    }

    /// The counters in the Prometheus text format, labelled with `service`.
    pub fn to_prometheus(&self, service: &str) -> String {
        let service: String = service.chars().filter(|c| !matches!(c, '"' | '\\' | '\n')).collect();
        let mut out = String::new();
        let mut family = |name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
        };
        family(
            "synth_capture_requests_total",
            "counter",
            "Requests the capture looked at, by what it did with them.",
        );
        for d in Decision::ALL {
            let _ = writeln!(
                out,
                "synth_capture_requests_total{{service=\"{service}\",decision=\"{}\"}} {}",
                d.as_str(),
                self.decided(d)
            );
        }
        let mut family = |name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
        };
        family("synth_capture_records_total", "counter", "Records handed to the sink, by result.");
        let _ = writeln!(
            out,
            "synth_capture_records_total{{service=\"{service}\",result=\"written\"}} {}",
            self.written
        );
        let _ = writeln!(
            out,
            "synth_capture_records_total{{service=\"{service}\",result=\"sink_error\"}} {}",
            self.sink_errors
        );
        let _ = writeln!(out, "# HELP synth_capture_bytes_total Bytes of the records written.");
        let _ = writeln!(out, "# TYPE synth_capture_bytes_total counter");
        let _ = writeln!(out, "synth_capture_bytes_total{{service=\"{service}\"}} {}", self.bytes);
        let _ = writeln!(out, "# HELP synth_capture_body_omitted_total Records written without their body.");
        let _ = writeln!(out, "# TYPE synth_capture_body_omitted_total counter");
        let _ =
            writeln!(out, "synth_capture_body_omitted_total{{service=\"{service}\"}} {}", self.body_omitted);
        let _ = writeln!(out, "# HELP synth_capture_scrubbed_total Items scrubbed before storing, by kind.");
        let _ = writeln!(out, "# TYPE synth_capture_scrubbed_total counter");
        for (i, what) in ["header", "query", "json"].iter().enumerate() {
            let _ = writeln!(
                out,
                "synth_capture_scrubbed_total{{service=\"{service}\",what=\"{what}\"}} {}",
                self.scrubbed[i]
            );
        }
        out
    }
}

/// Settings fixed at build time.
struct Settings {
    routes: Vec<String>,
    methods: Option<Vec<Method>>,
    body_limit: usize,
    per_second: Option<u32>,
    scrub: Arc<Scrub>,
    service_name: String,
}

/// What the layer, its services, the handle and the writer share.
pub(crate) struct Shared {
    sink: Arc<dyn CaptureSink>,
    settings: Settings,
    enabled: AtomicBool,
    threshold: AtomicU64,
    share_bits: AtomicU64,
    /// The per-second ceiling's window: the unix second in the high 32 bits, the count below.
    window: AtomicU64,
    stats: Arc<Stats>,
    queue: mpsc::SyncSender<CaptureRecord>,
    receiver: Mutex<Option<mpsc::Receiver<CaptureRecord>>>,
    started: AtomicBool,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture").field("service", &self.settings.service_name).finish_non_exhaustive()
    }
}

impl Shared {
    /// Takes one place under the per-second ceiling, if there is one left.
    fn admit(&self) -> bool {
        let Some(limit) = self.settings.per_second else { return true };
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()) & 0xFFFF_FFFF;
        let mut current = self.window.load(Relaxed);
        loop {
            let (second, count) = (current >> 32, current & 0xFFFF_FFFF);
            // A reading older than the window (a thread preempted across a second boundary)
            // counts against the current window: the window only moves forward.
            let next = if now <= second {
                if count >= u64::from(limit) {
                    return false;
                }
                current + 1
            } else {
                (now << 32) | 1
            };
            match self.window.compare_exchange_weak(current, next, Relaxed, Relaxed) {
                Ok(_) => return true,
                Err(seen) => current = seen,
            }
        }
    }

    /// Queues a record, or drops and counts it. Never waits.
    fn enqueue(self: &Arc<Self>, record: CaptureRecord) {
        if !self.started.load(Relaxed) && !self.start() {
            return self.stats.decided(Decision::NoWriter);
        }
        match self.queue.try_send(record) {
            Ok(()) => self.stats.decided(Decision::Queued),
            Err(mpsc::TrySendError::Full(_)) => self.stats.decided(Decision::QueueFull),
            Err(mpsc::TrySendError::Disconnected(_)) => self.stats.decided(Decision::NoWriter),
        }
    }

    /// Starts the writer thread (once).
    fn start(self: &Arc<Self>) -> bool {
        let Ok(mut slot) = self.receiver.lock() else { return false };
        if self.started.load(Relaxed) {
            return true;
        }
        let Some(rx) = slot.take() else { return false };
        let (stats, scrub, sink) = (self.stats.clone(), self.settings.scrub.clone(), self.sink.clone());
        match std::thread::Builder::new()
            .name("synth-capture".into())
            .spawn(move || writer(&rx, &stats, &scrub, &*sink))
        {
            Ok(_) => {
                self.started.store(true, Relaxed);
                true
            }
            Err(e) => {
                tracing::error!("synth-tower capture: cannot start the writer thread: {e}");
                false
            }
        }
    }
}

/// The writer: scrubs each record and hands it to the sink. The queue is polled, never waited
/// on, so that queuing a record never wakes a thread from the real request's path. When the
/// capture is dropped it writes what is still queued, flushes, and ends.
fn writer(rx: &mpsc::Receiver<CaptureRecord>, stats: &Stats, scrub: &Scrub, sink: &dyn CaptureSink) {
    let mut idle = Duration::from_millis(1);
    let mut unflushed = false;
    // A sink (or a scrub) that panics costs its record, never the capture.
    let guarded = |f: &mut dyn FnMut() -> Result<(), CaptureSinkError>| {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
            .unwrap_or_else(|_| Err(CaptureSinkError::Other("the sink panicked".to_owned())))
    };
    loop {
        match rx.try_recv() {
            Ok(mut record) => {
                idle = Duration::from_millis(1);
                let written = guarded(&mut || {
                    record.scrub(scrub);
                    sink.write(&record)
                });
                for (i, n) in
                    [record.scrubbed.headers.len(), record.scrubbed.query.len(), record.scrubbed.json.len()]
                        .into_iter()
                        .enumerate()
                {
                    stats.scrubbed[i].fetch_add(n as u64, Relaxed);
                }
                match written {
                    Ok(()) => {
                        stats.written.fetch_add(1, Relaxed);
                        stats.bytes.fetch_add(record.json_line().len() as u64 + 1, Relaxed);
                        if record.body_omitted {
                            stats.body_omitted.fetch_add(1, Relaxed);
                        }
                        unflushed = true;
                    }
                    Err(e) => {
                        stats.sink_errors.fetch_add(1, Relaxed);
                        tracing::warn!("synth-tower capture: record dropped: {e}");
                    }
                }
            }
            Err(mpsc::TryRecvError::Empty) => {
                if unflushed {
                    if let Err(e) = guarded(&mut || sink.flush()) {
                        tracing::warn!("synth-tower capture: flush failed: {e}");
                    }
                    unflushed = false;
                }
                std::thread::sleep(idle);
                idle = (idle * 2).min(Duration::from_millis(50));
            }
            // Every record queued before the capture was dropped has been written by now:
            // `try_recv` says disconnected only once the queue is empty.
            Err(mpsc::TryRecvError::Disconnected) => break,
        }
    }
    let _ = guarded(&mut || sink.flush());
}

/// Builds a [`CaptureLayer`]; see the [module docs](self).
#[must_use]
pub struct CaptureBuilder {
    sink: Arc<dyn CaptureSink>,
    share: f64,
    per_second: Option<u32>,
    routes: Vec<String>,
    methods: Option<Vec<Method>>,
    body_limit: usize,
    queue: usize,
    scrub: Scrub,
    service_name: String,
}

impl std::fmt::Debug for CaptureBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaptureBuilder").field("share", &self.share).finish_non_exhaustive()
    }
}

impl CaptureBuilder {
    /// The share of real requests (that pass the filters) to record, 0.0-1.0. Default 0.01.
    pub fn share(mut self, share: f64) -> Self {
        self.share = share;
        self
    }

    /// At most this many records per second (default 100); `None` for no ceiling.
    pub fn per_second(mut self, limit: impl Into<Option<u32>>) -> Self {
        self.per_second = limit.into();
        self
    }

    /// Record only requests whose path starts with one of these prefixes (default: every path).
    pub fn routes<I, S>(mut self, prefixes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.routes = prefixes.into_iter().map(Into::into).collect();
        self
    }

    /// Record only requests with one of these methods. Default GET, HEAD and OPTIONS: what
    /// replay sends unless told otherwise, and requests that rarely carry a body with personal
    /// data (a login form, a payment). Widen it knowingly, with a [`Scrub`] for those bodies.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = Some(methods.into_iter().collect());
        self
    }

    /// Bodies over this many bytes are recorded without the body (`body_omitted`). Default 64 KiB.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// Records that may wait for the writer; more are dropped and counted. Default 1024.
    pub fn queue(mut self, records: usize) -> Self {
        self.queue = records;
        self
    }

    /// What to scrub before storing (default: credentials headers only).
    pub fn scrub(mut self, scrub: Scrub) -> Self {
        self.scrub = scrub;
        self
    }

    /// The `service` label of the capture's Prometheus series. Default `service`.
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = name.into();
        self
    }

    /// Checks the settings and makes the layer.
    pub fn build(self) -> Result<CaptureLayer, CaptureConfigError> {
        if !(0.0..=1.0).contains(&self.share) {
            return Err(CaptureConfigError::Share(self.share));
        }
        if self.queue == 0 {
            return Err(CaptureConfigError::Zero("queue"));
        }
        if self.per_second == Some(0) {
            return Err(CaptureConfigError::Zero("per_second"));
        }
        if let Some(bad) = self.routes.iter().find(|r| !r.starts_with('/')) {
            return Err(CaptureConfigError::Route(bad.clone()));
        }
        let (tx, rx) = mpsc::sync_channel(self.queue);
        Ok(CaptureLayer {
            shared: Arc::new(Shared {
                sink: self.sink,
                settings: Settings {
                    routes: self.routes,
                    methods: self.methods,
                    body_limit: self.body_limit,
                    per_second: self.per_second,
                    scrub: Arc::new(self.scrub),
                    service_name: self.service_name,
                },
                enabled: AtomicBool::new(true),
                threshold: AtomicU64::new(threshold(self.share)),
                share_bits: AtomicU64::new(self.share.to_bits()),
                window: AtomicU64::new(0),
                stats: Arc::new(Stats::default()),
                queue: tx,
                receiver: Mutex::new(Some(rx)),
                started: AtomicBool::new(false),
            }),
        })
    }
}

/// Records a sample of real requests, scrubbed, off the critical path; see the
/// [module docs](self). Cheap to clone; clones share the queue, the writer and the counters.
#[derive(Clone, Debug)]
pub struct CaptureLayer {
    shared: Arc<Shared>,
}

impl CaptureLayer {
    /// Starts a builder: records go to `sink`.
    pub fn builder(sink: impl CaptureSink) -> CaptureBuilder {
        CaptureBuilder {
            sink: Arc::new(sink),
            share: 0.01,
            per_second: Some(100),
            routes: Vec::new(),
            methods: Some(vec![Method::GET, Method::HEAD, Method::OPTIONS]),
            body_limit: 64 * 1024,
            queue: 1024,
            scrub: Scrub::default(),
            service_name: "service".to_owned(),
        }
    }

    /// The handle that switches this capture and reads its counters.
    pub fn handle(&self) -> CaptureHandle {
        CaptureHandle { shared: self.shared.clone() }
    }
}

impl<S> Layer<S> for CaptureLayer {
    type Service = Capture<S>;

    fn layer(&self, inner: S) -> Capture<S> {
        Capture::from_shared(inner, self.shared.clone())
    }
}

/// Switches a capture on and off, changes its share, and reads its counters. Cheap to clone.
#[derive(Clone, Debug)]
pub struct CaptureHandle {
    shared: Arc<Shared>,
}

impl CaptureHandle {
    /// Whether capture is switched on.
    pub fn is_enabled(&self) -> bool {
        self.shared.enabled.load(Relaxed)
    }

    /// Switches capture on or off.
    pub fn set_enabled(&self, on: bool) {
        self.shared.enabled.store(on, Relaxed);
    }

    /// The share of real requests recorded.
    pub fn share(&self) -> f64 {
        f64::from_bits(self.shared.share_bits.load(Relaxed))
    }

    /// Changes the share; refuses anything but a number from 0.0 to 1.0.
    pub fn set_share(&self, share: f64) -> Result<(), CaptureConfigError> {
        if !(0.0..=1.0).contains(&share) {
            return Err(CaptureConfigError::Share(share));
        }
        self.shared.share_bits.store(share.to_bits(), Relaxed);
        self.shared.threshold.store(threshold(share), Relaxed);
        Ok(())
    }

    /// The counters now.
    pub fn snapshot(&self) -> CaptureSnapshot {
        let stats = &self.shared.stats;
        let mut decisions = [0; Decision::ALL.len()];
        for st in &stats.stripes {
            for (o, c) in decisions.iter_mut().zip(&st.decisions) {
                *o += c.load(Relaxed);
            }
        }
        CaptureSnapshot {
            decisions,
            written: stats.written.load(Relaxed),
            sink_errors: stats.sink_errors.load(Relaxed),
            bytes: stats.bytes.load(Relaxed),
            body_omitted: stats.body_omitted.load(Relaxed),
            scrubbed: [0, 1, 2].map(|i| stats.scrubbed[i].load(Relaxed)),
        }
    }

    /// The counters in the Prometheus text format, labelled with the service name.
    pub fn to_prometheus(&self) -> String {
        self.snapshot().to_prometheus(&self.shared.settings.service_name)
    }
}

/// A uniform draw under the share's threshold.
#[inline]
fn sampled(t: u64) -> bool {
    t == u64::MAX || (t != 0 && uniform() < t)
}
