//! The mirror's shared state, its bounded queue, and the task that sends copies.

use std::{
    sync::{
        Arc, Mutex, Weak,
        atomic::{
            AtomicBool, AtomicU8, AtomicU64,
            Ordering::{Relaxed, SeqCst},
        },
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use http::{
    HeaderMap, HeaderName, Method, Request, Uri,
    header::{CONNECTION, CONTENT_LENGTH, EXPECT, HOST, TE, TRAILER, TRANSFER_ENCODING, UPGRADE},
};
use synth_ctx::{
    Origin, RunId, Signer, Synthetic,
    http::{insert_marker, remove_marker},
};
use tokio::sync::{Semaphore, mpsc};

use super::{
    DarkTarget,
    body::{RealAnswer, RealWaiter},
    compare::{self, Answer, CompareSpec},
    stats::{CompareResult, DarkResult, Decision, ErrorSample, MismatchSample, Stats, now_unix_ms},
};
use crate::{
    KillSwitch,
    tap::{Budget, Collector, is_synthetic, owned_headers, owned_uri, threshold, uniform},
};

/// A copy waiting to be sent: the real request's head and body, and (compare mode) where its
/// real answer will arrive. Everything it holds is within the byte budget, and released when
/// it is dropped, however that happens (sent, stopped, or a panic).
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Collector,
    pub(crate) real: Option<RealWaiter>,
    pub(crate) reservation: Reservation,
    pub(crate) timing: Arc<RealTiming>,
    pending: Option<Pending>,
}

impl Job {
    pub(crate) fn new(
        parts: &http::request::Parts,
        body: Collector,
        real: Option<RealWaiter>,
        reservation: Reservation,
        timing: Arc<RealTiming>,
    ) -> Self {
        Job {
            method: parts.method.clone(),
            // Owned copies: clones could pin the server's read buffers outside the budget.
            uri: owned_uri(&parts.uri),
            headers: owned_headers(&parts.headers),
            body,
            real,
            reservation,
            timing,
            pending: None,
        }
    }
}

/// The bytes of the request heads, bodies and real answers that copies hold, counted against
/// [`max_pending_bytes`](super::MirrorBuilder::max_pending_bytes); given back on drop.
#[derive(Debug)]
pub(crate) struct Reservation {
    stats: Arc<Stats>,
    budget: u64,
    bytes: u64,
}

impl Reservation {
    pub(crate) fn new(stats: Arc<Stats>, budget: u64) -> Self {
        Reservation { stats, budget, bytes: 0 }
    }

    /// Takes `n` more bytes if the budget has them.
    pub(crate) fn try_grow(&mut self, n: usize) -> bool {
        let n = n as u64;
        if self.stats.pending_bytes.fetch_add(n, Relaxed).saturating_add(n) > self.budget {
            self.stats.pending_bytes.fetch_sub(n, Relaxed);
            return false;
        }
        self.bytes += n;
        true
    }

    /// An empty reservation against the same budget.
    pub(crate) fn empty(&self) -> Self {
        Reservation { stats: self.stats.clone(), budget: self.budget, bytes: 0 }
    }

    /// Gives everything back now.
    pub(crate) fn release(&mut self) {
        self.stats.pending_bytes.fetch_sub(self.bytes, Relaxed);
        self.bytes = 0;
    }
}

impl Budget for Reservation {
    fn try_grow(&mut self, n: usize) -> bool {
        Reservation::try_grow(self, n)
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.release();
    }
}

/// One queued copy in the `pending` gauge, until dropped.
#[derive(Debug)]
struct Pending(Arc<Stats>);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Relaxed);
    }
}

/// The real answer's latency of a mirrored request, recorded only when its copy's dark latency
/// is (the copy was sent and answered or timed out), so that the real and the dark histograms
/// count the same requests. Whichever side comes second records it.
#[derive(Debug, Default)]
pub(crate) struct RealTiming {
    nanos: AtomicU64,
    flags: AtomicU8,
}

const REAL: u8 = 1;
const DARK: u8 = 2;

impl RealTiming {
    /// The real answer's head came (or the request was dropped unanswered) after `latency`.
    pub(crate) fn real_done(&self, stats: &Stats, latency: Duration) {
        self.nanos.store(u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX), SeqCst);
        if self.flags.fetch_or(REAL, SeqCst) & DARK != 0 {
            stats.real_latency.record(latency);
        }
    }

    /// The copy's dark latency was recorded.
    fn dark_done(&self, stats: &Stats) {
        if self.flags.fetch_or(DARK, SeqCst) & REAL != 0 {
            stats.real_latency.record(Duration::from_nanos(self.nanos.load(SeqCst)));
        }
    }
}

/// Settings fixed at build time.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) signer: Signer,
    pub(crate) run: RunId,
    pub(crate) marker_ttl: Duration,
    pub(crate) routes: Vec<String>,
    pub(crate) methods: Option<Vec<Method>>,
    pub(crate) body_limit: usize,
    pub(crate) answer_limit: usize,
    pub(crate) max_pending_bytes: u64,
    pub(crate) concurrency: usize,
    pub(crate) timeout: Duration,
    pub(crate) mirror_synthetic: bool,
    pub(crate) compare: Option<CompareSpec>,
    /// The compare spec for gRPC answers: the user's, plus `grpc-status` (a failed call is
    /// never a match for a successful one).
    pub(crate) compare_grpc: Option<CompareSpec>,
    pub(crate) max_differences: usize,
    pub(crate) drop_headers: Vec<HeaderName>,
    pub(crate) kill: KillSwitch,
    pub(crate) service_name: String,
}

/// Everything the layer, its services, the handle and the sender task share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) target: DarkTarget,
    pub(crate) settings: Settings,
    pub(crate) enabled: AtomicBool,
    /// The share as a threshold on a uniform `u64`: 0 never, `u64::MAX` always.
    threshold: AtomicU64,
    /// The share as `f64` bits, for reading back.
    share_bits: AtomicU64,
    pub(crate) stats: Arc<Stats>,
    queue: mpsc::Sender<Job>,
    receiver: Mutex<Option<mpsc::Receiver<Job>>>,
    started: AtomicBool,
    marker: Mutex<Option<Synthetic>>,
}

impl Shared {
    pub(crate) fn new(
        target: DarkTarget,
        settings: Settings,
        share: f64,
        queue: usize,
        samples: usize,
    ) -> Self {
        let (tx, rx) = mpsc::channel(queue);
        Shared {
            target,
            settings,
            enabled: AtomicBool::new(true),
            threshold: AtomicU64::new(threshold(share)),
            share_bits: AtomicU64::new(share.to_bits()),
            stats: Arc::new(Stats::new(samples)),
            queue: tx,
            receiver: Mutex::new(Some(rx)),
            started: AtomicBool::new(false),
            marker: Mutex::new(None),
        }
    }

    pub(crate) fn share(&self) -> f64 {
        f64::from_bits(self.share_bits.load(Relaxed))
    }

    /// Sets the share; the caller has checked it is within 0..=1.
    pub(crate) fn set_share(&self, share: f64) {
        self.share_bits.store(share.to_bits(), Relaxed);
        self.threshold.store(threshold(share), Relaxed);
    }

    /// Whether copies may be made and sent now.
    #[inline]
    pub(crate) fn active(&self) -> bool {
        self.enabled.load(Relaxed) && !self.settings.kill.is_stopped()
    }

    /// The cheap first decision, made for every real request: switched on and in the share.
    #[inline]
    pub(crate) fn sampled(&self) -> Result<(), Decision> {
        if !self.active() {
            return Err(Decision::Disabled);
        }
        let t = self.threshold.load(Relaxed);
        if t == u64::MAX || (t != 0 && uniform() < t) { Ok(()) } else { Err(Decision::NotSampled) }
    }

    /// The rest of the decision, for sampled requests only.
    pub(crate) fn eligible<B>(&self, req: &Request<B>) -> Result<(), Decision> {
        let s = &self.settings;
        // A tunnel or a protocol switch has no answer to copy or compare.
        if req.method() == Method::CONNECT || req.headers().contains_key(UPGRADE) {
            return Err(Decision::Filtered);
        }
        if let Some(methods) = &s.methods
            && !methods.contains(req.method())
        {
            return Err(Decision::Filtered);
        }
        if !s.routes.is_empty() && !s.routes.iter().any(|r| req.uri().path().starts_with(r.as_str())) {
            return Err(Decision::Filtered);
        }
        if !s.mirror_synthetic && is_synthetic(req) {
            return Err(Decision::Synthetic);
        }
        // Even when synthetic requests are mirrored: a copy copied again, by a mirror pointed at
        // its own service or at one that mirrors back, would multiply without end. A request
        // whose marker a `TreatAsReal` layer refused and removed may have been such a copy (its
        // origin can no longer be read), so it is never copied either.
        if is_dark(req) || marker_removed(req) {
            return Err(Decision::Synthetic);
        }
        Ok(())
    }

    /// Whether a copy would be dropped for want of room anyway: the queue is full or the byte
    /// budget spent.
    #[inline]
    pub(crate) fn saturated(&self) -> bool {
        self.queue.capacity() == 0
            || self.stats.pending_bytes.load(Relaxed) >= self.settings.max_pending_bytes
    }

    /// A reservation against this mirror's byte budget.
    pub(crate) fn reservation(&self) -> Reservation {
        Reservation::new(self.stats.clone(), self.settings.max_pending_bytes)
    }

    /// Queues a copy, or drops and counts it. Never waits.
    pub(crate) fn enqueue(self: &Arc<Self>, mut job: Job) {
        if !self.started.load(Relaxed) && !self.start() {
            self.stats.decided(Decision::NoSender);
            return;
        }
        self.stats.pending.fetch_add(1, Relaxed);
        job.pending = Some(Pending(self.stats.clone()));
        match self.queue.try_send(job) {
            Ok(()) => self.stats.decided(Decision::Queued),
            // The job is dropped here, and with it its bytes and its place in `pending`.
            Err(mpsc::error::TrySendError::Full(_)) => self.stats.decided(Decision::QueueFull),
            Err(mpsc::error::TrySendError::Closed(_)) => self.stats.decided(Decision::NoSender),
        }
    }

    /// Starts the sender (once): its own thread and runtime, so that copies never run on the
    /// real service's threads. A dark target in the same process that blocks, a copy that
    /// panics, or the real service's runtime shutting down cannot stop it or slow real requests.
    fn start(self: &Arc<Self>) -> bool {
        let Ok(mut slot) = self.receiver.lock() else { return false };
        if self.started.load(Relaxed) {
            return true;
        }
        let Some(rx) = slot.take() else { return false };
        let shared = Arc::downgrade(self);
        let concurrency = self.settings.concurrency;
        let spawned = std::thread::Builder::new().name("synth-mirror".into()).spawn(move || {
            // Two workers: a copy that blocks its thread (an in-process dark target doing sync
            // work) leaves the other to run the rest, their timeouts and the stop.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("synth-mirror")
                .enable_all()
                .build();
            match runtime {
                Ok(runtime) => runtime.block_on(sender(rx, shared, concurrency)),
                // The receiver is dropped: every later copy is counted as `no_sender`.
                Err(e) => tracing::error!("synth-tower mirror: no runtime for the sender: {e}"),
            }
        });
        match spawned {
            Ok(_) => {
                self.started.store(true, Relaxed);
                true
            }
            Err(e) => {
                tracing::error!("synth-tower mirror: cannot start the sender thread: {e}");
                false
            }
        }
    }

    /// The `dark` marker for copies: minted once and again when half its TTL has passed.
    fn marker(&self) -> Synthetic {
        let s = &self.settings;
        let mut slot = self.marker.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        if let Some(m) = &*slot
            && m.expires_at() > now + s.marker_ttl.as_secs() / 2
        {
            return m.clone();
        }
        let fresh = s.signer.mint_synthetic(Origin::Dark, &s.run, s.marker_ttl);
        *slot = Some(fresh.clone());
        fresh
    }

    /// The copy's head: the real request's, less hop-by-hop headers and any marker, plus the
    /// `dark` marker.
    fn copy_parts(&self, job: &mut Job) -> http::request::Parts {
        let mut headers = std::mem::take(&mut job.headers);
        let named: Vec<HeaderName> = headers
            .get_all(CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
        for name in [CONNECTION, TRAILER, TRANSFER_ENCODING, UPGRADE, HOST, CONTENT_LENGTH, EXPECT] {
            headers.remove(name);
        }
        for name in ["keep-alive", "proxy-connection"] {
            headers.remove(name);
        }
        // gRPC needs `te: trailers`; no other TE value may go over HTTP/2.
        if headers.get(TE).is_some_and(|v| v != "trailers") {
            headers.remove(TE);
        }
        for name in &self.settings.drop_headers {
            headers.remove(name);
        }
        remove_marker(&mut headers);
        insert_marker(&mut headers, &self.marker());
        let mut req = Request::new(());
        *req.method_mut() = job.method.clone();
        *req.uri_mut() = job.uri.clone();
        *req.headers_mut() = headers;
        req.into_parts().0
    }

    /// Sends one copy and, in compare mode, compares its answer with the real one.
    async fn send_copy(self: Arc<Self>, mut job: Job) {
        let s = &self.settings;
        // Should anything below panic, the copy still counts, as a dark error.
        let mut unsettled = Unsettled {
            shared: &self,
            method: job.method.clone(),
            path: job.uri.path().to_owned(),
            settled: false,
        };
        let parts = self.copy_parts(&mut job);
        let body = std::mem::take(&mut job.body).into_bytes();
        // The dark answer is kept (within the budget) only to be compared.
        let keep = job.real.as_ref().map(|_| self.reservation());
        let started = Instant::now();
        let sent = self.target.send(parts, body, s.answer_limit, keep);
        let outcome = tokio::select! {
            biased;
            () = self.stopped() => None,
            r = tokio::time::timeout(s.timeout, sent) => Some(r),
        };
        let dark = match outcome {
            None => return unsettled.settle(DarkResult::Stopped, None),
            Some(Err(_elapsed)) => return self.timed_out(&mut unsettled, &job),
            Some(Ok(Err(error))) => return unsettled.settle(DarkResult::Error, Some(error)),
            // A copy whose task was held up (a dark target in this process that blocks its
            // thread) can answer after the timeout: it is a timeout all the same.
            Some(Ok(Ok(_))) if started.elapsed() > s.timeout => return self.timed_out(&mut unsettled, &job),
            Some(Ok(Ok(answer))) => answer,
        };
        unsettled.settle(DarkResult::Answered, None);
        self.stats.dark_latency.record(dark.head_latency);
        job.timing.dark_done(&self.stats);
        let Some(mut real) = job.real.take() else { return };
        let (method, path) = (job.method.clone(), job.uri.path().to_owned());
        // The request's bytes are no longer needed; only the comparison's are.
        drop(job);
        let waited = tokio::select! {
            biased;
            // Cut short by the switch: nothing compared after the stop, and the real answer's
            // bytes go back at once (dropping the waiter empties its slot).
            () = self.stopped() => return,
            r = tokio::time::timeout(s.timeout, &mut real.rx) => r,
        };
        let answer = match waited {
            Ok(Ok(answer)) => answer,
            // The real answer was dropped, failed or is still streaming.
            _ => return self.stats.compared(CompareResult::RealIncomplete),
        };
        // Dropping the waiter gives back what the slot still held (nothing, once answered).
        drop(real);
        let (status, headers, body, _reservation) = match answer {
            RealAnswer::Complete { status, headers, body, reservation } => {
                (status, headers, body, reservation)
            }
            RealAnswer::TooLarge => return self.stats.compared(CompareResult::TooLarge),
        };
        if !dark.complete {
            return self.stats.compared(CompareResult::TooLarge);
        }
        let is_grpc = headers
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let Some(spec) = (if is_grpc { &s.compare_grpc } else { &s.compare }) else { return };
        let real = Answer { status, headers: &headers, body: &body };
        let dark_answer = Answer { status: dark.status, headers: &dark.headers, body: &dark.body };
        let result = compare::compare(spec, real, dark_answer, s.max_differences);
        if result.is_match() {
            self.stats.compared(CompareResult::Match);
        } else {
            self.stats.compared(CompareResult::Mismatch);
            self.stats.mismatch(MismatchSample {
                at_unix_ms: now_unix_ms(),
                method: method.to_string(),
                path,
                real_status: status.as_u16(),
                dark_status: dark.status.as_u16(),
                differences: result.differences,
                truncated: result.truncated,
            });
        }
    }

    /// Counts a copy that did not answer in time; its dark latency is the timeout (at least).
    fn timed_out(&self, unsettled: &mut Unsettled<'_>, job: &Job) {
        let timeout = self.settings.timeout;
        unsettled.settle(DarkResult::Timeout, Some(format!("no whole answer within {timeout:?}")));
        self.stats.dark_latency.record(timeout);
        job.timing.dark_done(&self.stats);
    }

    /// Resolves once mirroring is switched off or the kill switch goes on.
    async fn stopped(&self) {
        while self.active() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A copy whose dark result is not yet counted: counted as a dark error if it is dropped so
/// (a panic while sending).
struct Unsettled<'a> {
    shared: &'a Shared,
    method: Method,
    path: String,
    settled: bool,
}

impl Unsettled<'_> {
    fn settle(&mut self, result: DarkResult, error: Option<String>) {
        self.settled = true;
        self.shared.stats.dark(result);
        if let Some(error) = error {
            self.shared.stats.error(ErrorSample {
                at_unix_ms: now_unix_ms(),
                method: self.method.to_string(),
                path: std::mem::take(&mut self.path),
                result,
                error,
            });
        }
    }
}

impl Drop for Unsettled<'_> {
    fn drop(&mut self) {
        if !self.settled {
            let message = PANIC_MESSAGE.with(|m| m.borrow().clone()).unwrap_or_else(|| "unknown".to_owned());
            self.settle(DarkResult::Error, Some(format!("the copy panicked while being sent: {message}")));
        }
    }
}

thread_local! {
    /// The message of the panic being handled by [`CatchPanic`], for the error sample.
    static PANIC_MESSAGE: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Runs a copy, catching a panic in it: the panic's message goes into the error sample (the
/// copy's guards count it, and give its bytes back, while it is dropped here).
struct CatchPanic<F> {
    copy: Option<std::pin::Pin<Box<F>>>,
}

impl<F: std::future::Future<Output = ()>> std::future::Future for CatchPanic<F> {
    type Output = ();

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        let Some(copy) = self.copy.as_mut() else { return std::task::Poll::Ready(()) };
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| copy.as_mut().poll(cx))) {
            Ok(poll) => poll,
            Err(payload) => {
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|m| (*m).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "(no message)".to_owned());
                PANIC_MESSAGE.with(|m| *m.borrow_mut() = Some(message));
                self.copy = None;
                PANIC_MESSAGE.with(|m| m.borrow_mut().take());
                std::task::Poll::Ready(())
            }
        }
    }
}

/// Whether the request is a mirror's copy: verified as origin `dark` (an extension or the
/// scope), or, unverified, a marker whose origin reads `dark` (a forged one only stops a copy).
fn is_dark<B>(req: &Request<B>) -> bool {
    let dark = |s: &Synthetic| s.origin() == Origin::Dark;
    req.extensions().get::<Synthetic>().is_some_and(dark)
        || synth_ctx::current().is_some_and(|s| dark(&s))
        || synth_ctx::http::find_marker(req.headers())
            .is_some_and(|m| synth_ctx::Token::parse(&m.value).is_ok_and(|t| t.origin() == Origin::Dark))
}

/// Whether a verify layer refused and removed the request's marker (here, or a hop before).
fn marker_removed<B>(req: &Request<B>) -> bool {
    req.extensions().get::<crate::MarkerRemoved>().is_some()
        || req.headers().contains_key(crate::MARKER_REMOVED_HEADER)
}

/// The next queued copy, `None` once the mirror is dropped.
///
/// The queue is polled, never waited on: a receiver waiting on the channel would have every
/// queued copy wake the mirror's thread, a system call on the real request's path (about a
/// microsecond and a half). Polled, queuing a copy is a few atomic operations. The poll is every
/// millisecond while copies come, backing off to 50 ms when idle; a copy waits that long at most.
async fn next_job(rx: &mut mpsc::Receiver<Job>) -> Option<Job> {
    let mut idle = Duration::from_millis(1);
    loop {
        match rx.try_recv() {
            Ok(job) => return Some(job),
            Err(mpsc::error::TryRecvError::Disconnected) => return None,
            Err(mpsc::error::TryRecvError::Empty) => {
                tokio::time::sleep(idle).await;
                idle = (idle * 2).min(Duration::from_millis(50));
            }
        }
    }
}

/// The sender task: takes copies off the queue and sends each under the concurrency limit. Ends
/// when the mirror is dropped.
async fn sender(mut rx: mpsc::Receiver<Job>, shared: Weak<Shared>, concurrency: usize) {
    let slots = Arc::new(Semaphore::new(concurrency.max(1)));
    while let Some(job) = next_job(&mut rx).await {
        let Some(shared) = shared.upgrade() else { break };
        if !shared.active() {
            shared.stats.dark(DarkResult::Stopped);
            continue;
        }
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot,
            () = shared.stopped() => {
                shared.stats.dark(DarkResult::Stopped);
                continue;
            }
        };
        let Ok(slot) = slot else { break };
        tokio::spawn(async move {
            CatchPanic { copy: Some(Box::pin(shared.send_copy(job))) }.await;
            drop(slot);
        });
    }
}
