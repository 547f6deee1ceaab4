//! The kill switch: stop all synthetic traffic at once.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

/// A cheap-to-clone handle that stops synthetic traffic. While it is on, the server layer sheds
/// every synthetic request (503 + `Retry-After` + `synthetic-traffic-shed: 1`, or gRPC
/// `UNAVAILABLE`) before it reaches a handler. Real requests are never affected.
///
/// # Example
///
/// ```
/// use synth_tower::KillSwitch;
///
/// let kill = KillSwitch::new();
/// let handle = kill.clone(); // e.g. for an admin endpoint
/// handle.stop();
/// assert!(kill.is_stopped());
/// handle.resume();
/// assert!(!kill.is_stopped());
/// ```
#[derive(Clone, Debug, Default)]
pub struct KillSwitch(Arc<AtomicBool>);

impl KillSwitch {
    /// A switch that lets synthetic traffic through.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sheds all synthetic traffic from now on.
    pub fn stop(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Lets synthetic traffic through again.
    pub fn resume(&self) {
        self.0.store(false, Ordering::SeqCst);
    }

    /// Whether synthetic traffic is being shed.
    pub fn is_stopped(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}
