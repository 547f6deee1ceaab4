//! The synthetic scope: `current()` and `is_synthetic()` anywhere inside a request.
//!
//! The scope is carried in the OpenTelemetry [`Context`], so it follows everything that already
//! follows OTel context: `.await`s in the same future, nested futures, and futures wrapped with
//! [`FutureExt::with_context`](opentelemetry::context::FutureExt::with_context).
//!
//! Outgoing, the marker travels as the `synthetic-traffic` header and the `synthetic` baggage
//! member, written by [`SyntheticPropagator`](crate::SyntheticPropagator) (put it last in a
//! composite propagator) or synth-tower's client layers. It is not copied into the context's
//! OTel baggage when a scope is entered: that would cost every synthetic request a baggage map
//! and a context entry for what the propagator already writes. Code that propagates with the
//! SDK's `BaggagePropagator` alone can use [`Synthetic::to_context_with_baggage`].
//!
//! What keeps the scope, and what does not:
//!
//! | code | in scope? |
//! |---|---|
//! | the handler's future, every `.await` in it, nested futures | yes |
//! | the response body, also streamed (SSE, `Body::from_stream`, tonic server streams) | yes, with synth-tower's server layer |
//! | [`spawn`](crate::spawn) / [`spawn_blocking`](crate::spawn_blocking) (feature `tokio`) | yes |
//! | a future wrapped with [`SyntheticFutureExt::in_current_scope`], then spawned anyhow | yes |
//! | a bare `tokio::spawn` or `tokio::task::spawn_blocking` | **no**: a new task starts with an empty context |
//! | `std::thread::spawn`, a thread pool, rayon | **no**: take [`current`] first and run the work in [`Synthetic::in_scope`] |
//!
//! A guard that runs outside the scope sees "real"; guards that can see synthetic input (a test
//! card, a reserved address) then refuse it as "context lost" rather than run the effect.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use synth_ctx::{KeyRing, Origin, RunId, Signer, SyntheticFutureExt};
//!
//! # async fn charge_card() -> &'static str { if synth_ctx::is_synthetic() { "stub" } else { "charged" } }
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let keys = KeyRing::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8")?;
//! let synthetic = Signer::new(keys).mint_synthetic(Origin::Load, &RunId::new("r42")?, Duration::from_secs(60));
//!
//! let outcome = futures_executor_block_on(charge_card().in_synthetic_scope(&synthetic));
//! assert_eq!(outcome, "stub");
//! assert!(!synth_ctx::is_synthetic()); // only inside the scope
//! # Ok(()) }
//! # fn futures_executor_block_on<F: std::future::Future>(f: F) -> F::Output {
//! #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
//! # }
//! ```

use std::{fmt, future::Future, sync::Arc};

use opentelemetry::{
    Context, ContextGuard,
    baggage::BaggageExt,
    context::{FutureExt as _, WithContext},
};

use crate::{KeyId, Origin, RunId, Trail};

/// Name of the baggage member that carries the marker.
pub const BAGGAGE_KEY: &str = "synthetic";

/// A verified synthetic marker: what the scope knows about the request. Cheap to clone.
#[derive(Clone)]
pub struct Synthetic(Arc<Inner>);

struct Inner {
    origin: Origin,
    run: RunId,
    expires_at: u64,
    key_id: KeyId,
    token: Arc<str>,
}

impl Synthetic {
    pub(crate) fn new(origin: Origin, run: RunId, expires_at: u64, key_id: KeyId, token: &str) -> Self {
        Synthetic(Arc::new(Inner { origin, run, expires_at, key_id, token: Arc::from(token) }))
    }

    /// Why the traffic is synthetic.
    pub fn origin(&self) -> Origin {
        self.0.origin
    }

    /// The run that sent it.
    pub fn run(&self) -> &RunId {
        &self.0.run
    }

    /// When the marker expires, unix seconds.
    pub fn expires_at(&self) -> u64 {
        self.0.expires_at
    }

    /// The key that signed it.
    pub fn key_id(&self) -> &KeyId {
        &self.0.key_id
    }

    /// The token itself, to send on to the next hop.
    pub fn token(&self) -> &str {
        &self.0.token
    }

    /// A copy that shares no allocation (and so no reference count) with `self`. Each thread
    /// keeps its own copy of hot tokens, so cloning one never bounces a cache line between cores.
    pub(crate) fn unshared(&self) -> Synthetic {
        let i = &self.0;
        Synthetic::new(i.origin, i.run.unshared(), i.expires_at, i.key_id.unshared(), &i.token)
    }

    pub(crate) fn token_arc(&self) -> Arc<str> {
        self.0.token.clone()
    }

    /// `parent` with this marker in scope. A [`Trail`] of `parent`'s scope carries on.
    pub fn to_context(&self, parent: &Context) -> Context {
        let trail = parent.get::<Scope>().and_then(|s| s.trail.clone());
        parent.with_value(Scope { synthetic: Some(self.clone()), trail })
    }

    /// `parent` with this marker in scope and `trail` as the request's trail: what a server
    /// layer does for each verified request (one context entry for both).
    pub fn to_context_with_trail(&self, parent: &Context, trail: &Trail) -> Context {
        parent.with_value(Scope { synthetic: Some(self.clone()), trail: Some(trail.clone()) })
    }

    /// Like [`to_context`](Self::to_context), and also sets the `synthetic` member of the
    /// context's OTel baggage (other members kept), for code that propagates with the SDK's
    /// `BaggagePropagator` alone. If the baggage is at its W3C limits the member is dropped,
    /// never another member.
    pub fn to_context_with_baggage(&self, parent: &Context) -> Context {
        let baggage = crate::baggage::replace_member(parent.baggage(), BAGGAGE_KEY, Some(self.token()));
        self.to_context(parent).with_baggage(baggage)
    }

    /// Enters the scope on this thread until the guard is dropped.
    ///
    /// Do not hold the guard across an `.await`; use
    /// [`in_synthetic_scope`](SyntheticFutureExt::in_synthetic_scope) for futures.
    pub fn attach(&self) -> ContextGuard {
        Context::map_current(|cx| self.to_context(cx)).attach()
    }

    /// Runs `f` inside the scope.
    pub fn in_scope<R>(&self, f: impl FnOnce() -> R) -> R {
        let _guard = self.attach();
        f()
    }
}

/// What a synthetic scope puts in the context: the marker and, inside a request, its trail.
/// [`without_synthetic`] puts an empty one, which hides an outer scope.
pub(crate) struct Scope {
    pub(crate) synthetic: Option<Synthetic>,
    pub(crate) trail: Option<Trail>,
}

impl fmt::Debug for Synthetic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Synthetic")
            .field("origin", &self.0.origin)
            .field("run", &self.0.run)
            .field("expires_at", &self.0.expires_at)
            .field("key_id", &self.0.key_id)
            .finish_non_exhaustive()
    }
}

impl PartialEq for Synthetic {
    fn eq(&self, other: &Self) -> bool {
        self.0.token == other.0.token
    }
}

impl Eq for Synthetic {}

/// The marker of the scope this code runs in, if any.
pub fn current() -> Option<Synthetic> {
    Context::map_current(|cx| from_context(cx).cloned())
}

/// Whether this code runs inside a synthetic scope.
///
/// ```
/// assert!(!synth_ctx::is_synthetic());
/// ```
pub fn is_synthetic() -> bool {
    Context::map_current(|cx| from_context(cx).is_some())
}

/// The marker carried by an OpenTelemetry context, if any.
pub fn from_context(cx: &Context) -> Option<&Synthetic> {
    cx.get::<Scope>().and_then(|s| s.synthetic.as_ref())
}

/// `cx` (its span, other baggage members and everything else) without its synthetic scope, its
/// trail or a `synthetic` member in its OTel baggage: what code that must not pass the marker on
/// runs in, such as a call that leaves the trust boundary for a
/// third party. Inside it, `is_synthetic()` is false and propagators add no marker.
///
/// ```
/// # let keys = synth_ctx::KeyRing::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8").unwrap();
/// # let synthetic = synth_ctx::Signer::new(keys).mint_synthetic(synth_ctx::Origin::Load, &synth_ctx::RunId::new("r1").unwrap(), std::time::Duration::from_secs(60));
/// use opentelemetry::Context;
/// synthetic.in_scope(|| {
///     let outside = synth_ctx::without_synthetic(&Context::current());
///     assert!(synth_ctx::from_context(&outside).is_none());
///     assert!(synth_ctx::is_synthetic(), "the caller's scope is unchanged");
/// });
/// ```
pub fn without_synthetic(cx: &Context) -> Context {
    let outside = cx.with_value(Scope { synthetic: None, trail: None });
    // The marker may also sit in the context's OTel baggage (`to_context_with_baggage`, or the
    // SDK's BaggagePropagator at ingress): an OTel injector would send it on from there.
    let baggage = cx.baggage();
    if baggage.get(BAGGAGE_KEY).is_some() {
        let without = crate::baggage::replace_member(baggage, BAGGAGE_KEY, None);
        return outside.with_baggage(without);
    }
    outside
}

/// Runs futures inside a synthetic scope.
pub trait SyntheticFutureExt: Future + Sized {
    /// Polls this future inside `synthetic`'s scope, on every poll, whatever task polls it.
    fn in_synthetic_scope(self, synthetic: &Synthetic) -> WithContext<Self> {
        let cx = Context::map_current(|cx| synthetic.to_context(cx));
        self.with_context(cx)
    }

    /// Captures the current context (synthetic or not) so the future keeps it when it is
    /// spawned or moved elsewhere.
    fn in_current_scope(self) -> WithContext<Self> {
        self.with_current_context()
    }
}

impl<F: Future> SyntheticFutureExt for F {}

/// Spawns a task that stays in the current scope (synthetic or real).
///
/// A bare `tokio::spawn` starts the task with an empty context: inside it, `is_synthetic()` is
/// false even when the spawner was synthetic.
#[cfg(feature = "tokio")]
pub fn spawn<F>(future: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(future.in_current_scope())
}

/// Runs a blocking closure on tokio's blocking pool inside the current scope (synthetic or real).
///
/// A bare `tokio::task::spawn_blocking` runs the closure on another thread with an empty context:
/// inside it, `is_synthetic()` is false even when the caller was synthetic.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// # let keys = synth_ctx::KeyRing::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8").unwrap();
/// # let synthetic = synth_ctx::Signer::new(keys).mint_synthetic(synth_ctx::Origin::Load, &synth_ctx::RunId::new("r1").unwrap(), std::time::Duration::from_secs(60));
/// use synth_ctx::SyntheticFutureExt;
/// let seen = async { synth_ctx::spawn_blocking(synth_ctx::is_synthetic).await.unwrap() }
///     .in_synthetic_scope(&synthetic)
///     .await;
/// assert!(seen);
/// # });
/// ```
#[cfg(feature = "tokio")]
pub fn spawn_blocking<F, R>(f: F) -> tokio::task::JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let cx = Context::current();
    tokio::task::spawn_blocking(move || {
        let _scope = cx.attach();
        f()
    })
}
