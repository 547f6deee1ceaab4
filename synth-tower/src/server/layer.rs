use std::{fmt, sync::Arc, time::Duration};

use synth_ctx::{Synthetic, Verifier};
use tower_layer::Layer;

use super::VerifySynthetic;
use crate::{KillSwitch, SyntheticStats};

/// What to do with a request whose marker is present but does not verify.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum InvalidMarkerPolicy {
    /// Answer 403 (gRPC `PERMISSION_DENIED`) with the reason. The handler is not called.
    #[default]
    Reject,
    /// Remove the marker and serve the request as a real one. Never as a synthetic one.
    ///
    /// Except a marker whose origin field (read, not trusted) is `dark` or `replay`: that request
    /// is refused with 403 as under [`Reject`](Self::Reject). A mirror's copy or a replayed
    /// capture repeats a request a real user already made; served as real, its effects (a
    /// charge, an email) would happen a second time. A real user's request never carries such a
    /// marker, so refusing it costs no real traffic.
    TreatAsReal,
}

type ShedPredicate = Arc<dyn Fn(&Synthetic) -> bool + Send + Sync>;

#[derive(Clone)]
pub(crate) struct Config {
    pub(crate) verifier: Verifier,
    pub(crate) policy: InvalidMarkerPolicy,
    pub(crate) service_name: Option<Arc<str>>,
    /// The path report of a request that went nowhere else: the service name, ready to send.
    pub(crate) hop_header: Option<http::HeaderValue>,
    pub(crate) kill: KillSwitch,
    pub(crate) shed_when: Option<ShedPredicate>,
    pub(crate) max_in_flight: Option<usize>,
    pub(crate) retry_after_secs: u32,
    pub(crate) stats: SyntheticStats,
}

/// Verifies the synthetic-traffic marker at ingress; see the [module docs](crate::server).
///
/// Cheap to clone; clones share the kill switch, the counters and the in-flight count.
#[derive(Clone)]
pub struct VerifySyntheticLayer {
    config: Arc<Config>,
}

impl VerifySyntheticLayer {
    /// A layer that verifies markers with `verifier` and rejects invalid ones.
    pub fn new(verifier: Verifier) -> Self {
        if verifier.accepts_unsigned_markers() {
            tracing::warn!(
                "synth-tower: the verifier ACCEPTS UNSIGNED MARKERS (development mode); anyone can make \
                 requests synthetic and switch guards off. Never run this in production."
            );
        }
        VerifySyntheticLayer {
            config: Arc::new(Config {
                verifier,
                policy: InvalidMarkerPolicy::Reject,
                service_name: None,
                hop_header: None,
                kill: KillSwitch::new(),
                shed_when: None,
                max_in_flight: None,
                retry_after_secs: 5,
                stats: SyntheticStats::new(),
            }),
        }
    }

    fn config(&mut self) -> &mut Config {
        Arc::make_mut(&mut self.config)
    }

    /// What to do with a marker that is present but invalid (default: reject).
    pub fn with_invalid_marker_policy(mut self, policy: InvalidMarkerPolicy) -> Self {
        self.config().policy = policy;
        self
    }

    /// The name this service gives itself in the `synthetic-traffic-path` report. Characters
    /// outside `A-Z a-z 0-9 - _ .` become `_`; it is cut to 64 characters.
    pub fn with_service_name(mut self, name: &str) -> Self {
        let mut clean: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '_' })
            .take(synth_ctx::trail::MAX_NAME_LEN)
            .collect();
        if clean.is_empty() {
            clean.push('_');
        }
        if clean != name {
            tracing::warn!(given = name, used = %clean, "synth-tower: service name sanitised for the path report");
        }
        self.config().hop_header = http::HeaderValue::from_str(&clean).ok();
        self.config().service_name = Some(clean.into());
        self
    }

    /// Uses `kill` as this layer's kill switch (by default it has one of its own, see
    /// [`kill_switch`](Self::kill_switch)).
    pub fn with_kill_switch(mut self, kill: KillSwitch) -> Self {
        self.config().kill = kill;
        self
    }

    /// Sheds a synthetic request when `predicate` returns true, e.g. when the service's own
    /// real-traffic latency is above its objective. Called once per verified synthetic request.
    pub fn with_shed_when(mut self, predicate: impl Fn(&Synthetic) -> bool + Send + Sync + 'static) -> Self {
        self.config().shed_when = Some(Arc::new(predicate));
        self
    }

    /// Sheds synthetic requests beyond `max` in flight at once.
    pub fn with_max_in_flight(mut self, max: usize) -> Self {
        self.config().max_in_flight = Some(max);
        self
    }

    /// The `Retry-After` sent with shed answers (default 5 s, rounded up to whole seconds).
    pub fn with_retry_after(mut self, after: Duration) -> Self {
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        self.config().retry_after_secs = u32::try_from(secs).unwrap_or(u32::MAX);
        self
    }

    /// Counts into `stats` (by default the layer has counters of its own, see
    /// [`stats`](Self::stats)).
    pub fn with_stats(mut self, stats: SyntheticStats) -> Self {
        self.config().stats = stats;
        self
    }

    /// The kill switch of this layer.
    pub fn kill_switch(&self) -> &KillSwitch {
        &self.config.kill
    }

    /// The counters of this layer.
    pub fn stats(&self) -> &SyntheticStats {
        &self.config.stats
    }
}

impl<S> Layer<S> for VerifySyntheticLayer {
    type Service = VerifySynthetic<S>;

    fn layer(&self, inner: S) -> Self::Service {
        VerifySynthetic::from_config(inner, self.config.clone())
    }
}

impl fmt::Debug for VerifySyntheticLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.config.fmt(f)
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifySyntheticLayer")
            .field("verifier", &self.verifier)
            .field("policy", &self.policy)
            .field("service_name", &self.service_name)
            .field("kill", &self.kill)
            .field("shed_when", &self.shed_when.as_ref().map(|_| ".."))
            .field("max_in_flight", &self.max_in_flight)
            .field("retry_after_secs", &self.retry_after_secs)
            .finish_non_exhaustive()
    }
}
