//! The mirror's shared state, its bounded queue, and the task that sends copies.

use std::{
    cell::Cell,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http::{
    HeaderMap, HeaderName, Method, Request, Uri,
    header::{CONNECTION, CONTENT_LENGTH, EXPECT, HOST, TE, TRAILER, TRANSFER_ENCODING, UPGRADE},
};
use synth_ctx::{
    Origin, RunId, Signer, Synthetic,
    http::{insert_marker, remove_marker},
};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{
    DarkTarget,
    body::{RealAnswer, join},
    compare::{self, Answer, CompareSpec},
    stats::{CompareResult, DarkResult, Decision, ErrorSample, MismatchSample, Stats, now_unix_ms},
};
use crate::KillSwitch;

/// A copy waiting to be sent: the real request's head and body, and (compare mode) where its
/// real answer will arrive.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Vec<Bytes>,
    pub(crate) body_len: usize,
    pub(crate) real: Option<oneshot::Receiver<RealAnswer>>,
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
    pub(crate) stats: Stats,
    queue: mpsc::Sender<Job>,
    receiver: Mutex<Option<mpsc::Receiver<Job>>>,
    started: AtomicBool,
    marker: Mutex<Option<Synthetic>>,
}

fn threshold(share: f64) -> u64 {
    if share >= 1.0 {
        u64::MAX
    } else if share > 0.0 {
        // share < 1, so the product is below 2^64.
        (share * 18_446_744_073_709_551_616.0) as u64
    } else {
        0
    }
}

/// A uniform `u64` from a per-thread xorshift: no lock, no shared cache line.
fn uniform() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(seed());
    }
    STATE
        .try_with(|s| {
            let mut x = s.get();
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s.set(x);
            x
        })
        .unwrap_or(0)
}

fn seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64));
    h.finish() | 1 // xorshift must not start at 0
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
            stats: Stats::new(samples),
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
        // its own service or at one that mirrors back, would multiply without end.
        if is_dark(req) {
            return Err(Decision::Synthetic);
        }
        Ok(())
    }

    /// Queues a copy, or drops and counts it. Never waits.
    pub(crate) fn enqueue(self: &Arc<Self>, job: Job) {
        let len = job.body_len as u64;
        let budget = self.settings.max_pending_bytes;
        if self.stats.pending_bytes.fetch_add(len, Relaxed) + len > budget {
            self.stats.pending_bytes.fetch_sub(len, Relaxed);
            self.stats.decided(Decision::QueueFull);
            return;
        }
        if !self.started.load(Relaxed) && !self.start() {
            self.stats.pending_bytes.fetch_sub(len, Relaxed);
            self.stats.decided(Decision::NoSender);
            return;
        }
        self.stats.pending.fetch_add(1, Relaxed);
        match self.queue.try_send(job) {
            Ok(()) => self.stats.decided(Decision::Queued),
            Err(e) => {
                self.stats.pending.fetch_sub(1, Relaxed);
                self.stats.pending_bytes.fetch_sub(len, Relaxed);
                self.stats.decided(match e {
                    mpsc::error::TrySendError::Full(_) => Decision::QueueFull,
                    mpsc::error::TrySendError::Closed(_) => Decision::NoSender,
                });
            }
        }
    }

    /// Starts the sender task on the current tokio runtime (once).
    fn start(self: &Arc<Self>) -> bool {
        let Ok(mut slot) = self.receiver.lock() else { return false };
        if self.started.load(Relaxed) {
            return true;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return false };
        let Some(rx) = slot.take() else { return false };
        runtime.spawn(sender(rx, Arc::downgrade(self), self.settings.concurrency));
        self.started.store(true, Relaxed);
        true
    }

    fn finished(&self, job_len: usize) {
        self.stats.pending.fetch_sub(1, Relaxed);
        self.stats.pending_bytes.fetch_sub(job_len as u64, Relaxed);
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
        let len = job.body_len;
        let parts = self.copy_parts(&mut job);
        let body = join(std::mem::take(&mut job.body), len);
        let sent = self.target.send(parts, body, s.answer_limit);
        let outcome = tokio::select! {
            biased;
            () = self.stopped() => None,
            r = tokio::time::timeout(s.timeout, sent) => Some(r),
        };
        let dark = match outcome {
            None => {
                self.stats.dark(DarkResult::Stopped);
                self.finished(len);
                return;
            }
            Some(Err(_elapsed)) => {
                self.failed(&job, DarkResult::Timeout, format!("no whole answer within {:?}", s.timeout));
                self.finished(len);
                return;
            }
            Some(Ok(Err(error))) => {
                self.failed(&job, DarkResult::Error, error);
                self.finished(len);
                return;
            }
            Some(Ok(Ok(answer))) => answer,
        };
        self.stats.dark(DarkResult::Answered);
        self.stats.dark_latency.record(dark.head_latency);
        // The copy's bytes are gone; what remains is the comparison.
        self.finished(len);
        let (Some(spec), Some(real)) = (&s.compare, job.real.take()) else { return };
        let real = match tokio::time::timeout(s.timeout, real).await {
            Ok(Ok(real)) => real,
            // The real answer was dropped, failed or is still streaming.
            _ => return self.stats.compared(CompareResult::RealIncomplete),
        };
        let (status, headers, body) = match real {
            RealAnswer::Complete { status, headers, body } => (status, headers, body),
            RealAnswer::TooLarge => return self.stats.compared(CompareResult::TooLarge),
        };
        if !dark.complete {
            return self.stats.compared(CompareResult::TooLarge);
        }
        let real = Answer { status, headers: &headers, body: &body };
        let dark_answer = Answer { status: dark.status, headers: &dark.headers, body: &dark.body };
        let result = compare::compare(spec, real, dark_answer, s.max_differences);
        if result.is_match() {
            self.stats.compared(CompareResult::Match);
        } else {
            self.stats.compared(CompareResult::Mismatch);
            self.stats.mismatch(MismatchSample {
                at_unix_ms: now_unix_ms(),
                method: job.method.to_string(),
                path: job.uri.path().to_owned(),
                real_status: status.as_u16(),
                dark_status: dark.status.as_u16(),
                differences: result.differences,
                truncated: result.truncated,
            });
        }
    }

    fn failed(&self, job: &Job, result: DarkResult, error: String) {
        self.stats.dark(result);
        self.stats.error(ErrorSample {
            at_unix_ms: now_unix_ms(),
            method: job.method.to_string(),
            path: job.uri.path().to_owned(),
            result,
            error,
        });
    }

    /// Resolves once mirroring is switched off or the kill switch goes on.
    async fn stopped(&self) {
        while self.active() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Whether a request is synthetic in any form: a marker header or baggage member (valid or not),
/// a verified marker in its extensions, or a synthetic scope around the call.
fn is_synthetic<B>(req: &Request<B>) -> bool {
    req.extensions().get::<Synthetic>().is_some()
        || synth_ctx::http::find_marker(req.headers()).is_some()
        || synth_ctx::is_synthetic()
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

/// The sender task: takes copies off the queue and sends each under the concurrency limit. Ends
/// when the mirror is dropped.
async fn sender(mut rx: mpsc::Receiver<Job>, shared: Weak<Shared>, concurrency: usize) {
    let slots = Arc::new(Semaphore::new(concurrency.max(1)));
    while let Some(job) = rx.recv().await {
        let Some(shared) = shared.upgrade() else { break };
        if !shared.active() {
            shared.stats.dark(DarkResult::Stopped);
            shared.finished(job.body_len);
            continue;
        }
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot,
            () = shared.stopped() => {
                shared.stats.dark(DarkResult::Stopped);
                shared.finished(job.body_len);
                continue;
            }
        };
        let Ok(slot) = slot else { break };
        tokio::spawn(async move {
            shared.send_copy(job).await;
            drop(slot);
        });
    }
}
