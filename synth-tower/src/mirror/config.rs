//! The builder, the layer and the run-time handle.

use std::{sync::Arc, time::Duration};

use http::{HeaderName, Method};
use synth_ctx::{RunId, Signer};
use tower_layer::Layer;

use super::{
    DarkTarget, Mirror,
    compare::CompareSpec,
    dispatch::{Settings, Shared},
    stats::{ErrorSample, MirrorSnapshot, MismatchSample},
};
use crate::KillSwitch;

/// A mirror setting that cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum MirrorConfigError {
    /// The share is not a number from 0.0 to 1.0.
    #[error("mirror share {0} is not a number from 0.0 (mirror nothing) to 1.0 (mirror every request)")]
    Share(f64),
    /// A zero that would stop every copy (queue, concurrency, timeout).
    #[error("mirror {0} must be more than zero")]
    Zero(&'static str),
    /// A marker TTL outside 10 s to 24 h.
    #[error(
        "mirror marker TTL {0:?} is outside 10 s to 24 h: the dark service refuses markers that live \
         longer than its verifier allows (24 h by default), and a shorter one is re-minted too often"
    )]
    MarkerTtl(Duration),
    /// A route filter that is not a path prefix.
    #[error("mirror route `{0}` must be a path prefix starting with `/`, e.g. `/search`")]
    Route(String),
}

/// Builds a [`MirrorLayer`]; see the [module docs](super) for an example.
#[derive(Debug)]
#[must_use]
pub struct MirrorBuilder {
    target: DarkTarget,
    signer: Signer,
    run: RunId,
    share: f64,
    routes: Vec<String>,
    methods: Option<Vec<Method>>,
    body_limit: usize,
    answer_limit: usize,
    queue: usize,
    max_pending_bytes: u64,
    concurrency: usize,
    timeout: Duration,
    marker_ttl: Duration,
    mirror_synthetic: bool,
    compare: Option<CompareSpec>,
    max_differences: usize,
    samples: usize,
    drop_headers: Vec<HeaderName>,
    kill: KillSwitch,
    service_name: String,
}

impl MirrorBuilder {
    /// The share of real requests (that pass the filters) to copy, 0.0-1.0. Default 0.01.
    pub fn share(mut self, share: f64) -> Self {
        self.share = share;
        self
    }

    /// Copy only requests whose path starts with one of these prefixes (default: every path).
    pub fn routes<I, S>(mut self, prefixes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.routes = prefixes.into_iter().map(Into::into).collect();
        self
    }

    /// Copy only requests with one of these methods (default: every method; the dark service's
    /// guards keep its side effects from happening twice).
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = Some(methods.into_iter().collect());
        self
    }

    /// Request bodies over this many bytes are not copied (counted as `body_too_large`).
    /// Default 256 KiB.
    pub fn body_limit(mut self, bytes: usize) -> Self {
        self.body_limit = bytes;
        self
    }

    /// Answer bodies (real and dark) over this many bytes are not compared (counted as
    /// `too_large`), and a dark answer is read no further. Default 256 KiB.
    pub fn answer_limit(mut self, bytes: usize) -> Self {
        self.answer_limit = bytes;
        self
    }

    /// Copies that may wait to be sent; more are dropped and counted. Default 1024.
    pub fn queue(mut self, copies: usize) -> Self {
        self.queue = copies;
        self
    }

    /// Bytes that copies may hold at once: request heads and bodies (also while they stream),
    /// queued or in flight, and in compare mode the real and dark answers (heads, trailers and
    /// bodies) kept until compared. A copy
    /// that would go over is dropped and counted (`queue_full`, or `too_large` for an answer).
    /// Default 32 MiB.
    pub fn max_pending_bytes(mut self, bytes: u64) -> Self {
        self.max_pending_bytes = bytes;
        self
    }

    /// Copies sent at once. Default 64.
    pub fn concurrency(mut self, copies: usize) -> Self {
        self.concurrency = copies;
        self
    }

    /// The time a copy may take, connection to the end of the dark answer. Default 2 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long each `dark` marker lives; it is re-minted when half has passed. Default 5 min.
    pub fn marker_ttl(mut self, ttl: Duration) -> Self {
        self.marker_ttl = ttl;
        self
    }

    /// Also copy requests that are already synthetic (default: never, so that mirrors cannot
    /// amplify each other's or a load test's traffic). A copy carries only the `dark` marker.
    /// A mirror's copy (origin `dark`) is never copied again, even so: a mirror pointed at its
    /// own service, or at one that mirrors back, would otherwise copy without end.
    pub fn mirror_synthetic(mut self, yes: bool) -> Self {
        self.mirror_synthetic = yes;
        self
    }

    /// Compare each real answer with the dark one (status, the spec's headers, the body,
    /// JSON-aware). Trailers are compared like headers; for gRPC answers `grpc-status` always
    /// is, so a failed call never matches a successful one. Off by default.
    pub fn compare(mut self, spec: CompareSpec) -> Self {
        self.compare = Some(spec);
        self
    }

    /// Differences kept per mismatching request. Default 10.
    pub fn max_differences(mut self, n: usize) -> Self {
        self.max_differences = n;
        self
    }

    /// Mismatch and error samples kept (the most recent). Default 50.
    pub fn samples(mut self, n: usize) -> Self {
        self.samples = n;
        self
    }

    /// Headers never sent to the dark target (hop-by-hop headers and any marker are always
    /// removed).
    pub fn drop_headers(mut self, names: impl IntoIterator<Item = HeaderName>) -> Self {
        self.drop_headers = names.into_iter().collect();
        self
    }

    /// The kill switch that stops mirroring at once (share it with [`VerifySyntheticLayer`]
    /// and the admin router: one stop for all synthetic traffic).
    ///
    /// [`VerifySyntheticLayer`]: crate::VerifySyntheticLayer
    pub fn kill_switch(mut self, kill: KillSwitch) -> Self {
        self.kill = kill;
        self
    }

    /// The `service` label of the mirror's Prometheus series. Default `service`.
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = name.into();
        self
    }

    /// Checks the settings and makes the layer.
    pub fn build(self) -> Result<MirrorLayer, MirrorConfigError> {
        if !(0.0..=1.0).contains(&self.share) {
            return Err(MirrorConfigError::Share(self.share));
        }
        for (value, what) in [(self.queue, "queue"), (self.concurrency, "concurrency")] {
            if value == 0 {
                return Err(MirrorConfigError::Zero(what));
            }
        }
        if self.timeout.is_zero() {
            return Err(MirrorConfigError::Zero("timeout"));
        }
        if self.marker_ttl < Duration::from_secs(10) || self.marker_ttl > Duration::from_secs(24 * 3600) {
            return Err(MirrorConfigError::MarkerTtl(self.marker_ttl));
        }
        if let Some(bad) = self.routes.iter().find(|r| !r.starts_with('/')) {
            return Err(MirrorConfigError::Route(bad.clone()));
        }
        let settings = Settings {
            signer: self.signer,
            run: self.run,
            marker_ttl: self.marker_ttl,
            routes: self.routes,
            methods: self.methods,
            body_limit: self.body_limit,
            answer_limit: self.answer_limit,
            max_pending_bytes: self.max_pending_bytes,
            concurrency: self.concurrency,
            timeout: self.timeout,
            mirror_synthetic: self.mirror_synthetic,
            compare_grpc: self.compare.as_ref().map(|spec| {
                let mut grpc = spec.clone();
                let status = http::HeaderName::from_static("grpc-status");
                if !grpc.headers.contains(&status) {
                    grpc.headers.push(status);
                }
                grpc
            }),
            compare: self.compare,
            max_differences: self.max_differences,
            drop_headers: self.drop_headers,
            kill: self.kill,
            service_name: self.service_name,
        };
        Ok(MirrorLayer {
            shared: Arc::new(Shared::new(self.target, settings, self.share, self.queue, self.samples)),
        })
    }
}

/// Copies a share of real requests to a dark target, marked `dark`, off the critical path; see
/// the [module docs](super).
///
/// Cheap to clone; clones (and every service they make) share the queue, the counters and the
/// [`MirrorHandle`].
#[derive(Clone, Debug)]
pub struct MirrorLayer {
    pub(crate) shared: Arc<Shared>,
}

impl MirrorLayer {
    /// Starts a builder: copies go to `target`, each with a `dark` marker for `run` minted by
    /// `signer` (the dark service's verifier must know the key).
    pub fn builder(target: DarkTarget, signer: Signer, run: RunId) -> MirrorBuilder {
        MirrorBuilder {
            target,
            signer,
            run,
            share: 0.01,
            routes: Vec::new(),
            methods: None,
            body_limit: 256 * 1024,
            answer_limit: 256 * 1024,
            queue: 1024,
            max_pending_bytes: 32 * 1024 * 1024,
            concurrency: 64,
            timeout: Duration::from_secs(2),
            marker_ttl: Duration::from_secs(300),
            mirror_synthetic: false,
            compare: None,
            max_differences: 10,
            samples: 50,
            drop_headers: Vec::new(),
            kill: KillSwitch::new(),
            service_name: "service".to_owned(),
        }
    }

    /// The handle that switches this mirror, changes its share and reads its counters.
    pub fn handle(&self) -> MirrorHandle {
        MirrorHandle { shared: self.shared.clone() }
    }
}

impl<S> Layer<S> for MirrorLayer {
    type Service = Mirror<S>;

    fn layer(&self, inner: S) -> Mirror<S> {
        Mirror::from_shared(inner, self.shared.clone())
    }
}

/// Switches a mirror on and off, changes its share, and reads what it did. Cheap to clone.
#[derive(Clone, Debug)]
pub struct MirrorHandle {
    shared: Arc<Shared>,
}

impl MirrorHandle {
    /// Whether mirroring is switched on (the kill switch aside).
    pub fn is_enabled(&self) -> bool {
        self.shared.enabled.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether copies are being made now: switched on and the kill switch off.
    pub fn is_active(&self) -> bool {
        self.shared.active()
    }

    /// Switches mirroring on or off. Off drops queued copies and cuts copies in flight short.
    pub fn set_enabled(&self, on: bool) {
        self.shared.enabled.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// The share of real requests copied.
    pub fn share(&self) -> f64 {
        self.shared.share()
    }

    /// Changes the share; refuses anything but a number from 0.0 to 1.0.
    pub fn set_share(&self, share: f64) -> Result<(), MirrorConfigError> {
        if !(0.0..=1.0).contains(&share) {
            return Err(MirrorConfigError::Share(share));
        }
        self.shared.set_share(share);
        Ok(())
    }

    /// The dark target.
    pub fn target(&self) -> &DarkTarget {
        &self.shared.target
    }

    /// The run id the copies' markers carry.
    pub fn run(&self) -> &RunId {
        &self.shared.settings.run
    }

    /// Whether answers are compared.
    pub fn compares(&self) -> bool {
        self.shared.settings.compare.is_some()
    }

    /// The counters now.
    pub fn snapshot(&self) -> MirrorSnapshot {
        self.shared.stats.snapshot()
    }

    /// The most recent mismatching requests, oldest first.
    pub fn mismatch_samples(&self) -> Vec<MismatchSample> {
        self.shared.stats.mismatch_samples()
    }

    /// The most recent copies that failed at the dark target, oldest first.
    pub fn error_samples(&self) -> Vec<ErrorSample> {
        self.shared.stats.error_samples()
    }

    /// The counters in the Prometheus text format, labelled with the service name.
    pub fn to_prometheus(&self) -> String {
        self.snapshot().to_prometheus(&self.shared.settings.service_name)
    }
}
