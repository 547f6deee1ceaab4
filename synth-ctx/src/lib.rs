//! The signed synthetic-traffic marker, and the context that tells any code in a request whether
//! that request is synthetic.
//!
//! Load tests in production are safe only if every service can tell synthetic traffic from real
//! traffic, and only if an outsider cannot make real traffic look synthetic (and so switch off
//! payments or emails). This crate provides both halves:
//!
//! - **The marker** ([`Token`], [`Signer`], [`Verifier`], [`KeyRing`]): a small, language-neutral,
//!   HMAC-SHA256-signed token `v1.<origin>.<run>.<exp>.<kid>.<sig>`, carried as the
//!   `synthetic-traffic` header and the `synthetic` W3C baggage member. The spec and its test
//!   vectors are in `docs/marker-spec.md`.
//! - **The context** ([`Synthetic`], [`current`], [`is_synthetic`]): inside a synthetic scope, any
//!   code can ask. The scope lives in the OpenTelemetry [`Context`](opentelemetry::Context), so it
//!   crosses `.await`s and follows futures that carry OTel context.
//! - **Propagation** ([`SyntheticPropagator`], and [`http`] adapters): onwards to the next hop.
//! - **The trail** ([`trail`]): which services and guards a synthetic request reached.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use synth_ctx::{KeyRing, Origin, RunId, Signer, Verifier};
//!
//! // SYNTH_KEYS in production: `KeyRing::from_env()`.
//! let keys = KeyRing::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8")?;
//!
//! // The load generator mints...
//! let token = Signer::new(keys.clone()).mint(Origin::Load, &RunId::new("r42")?, Duration::from_secs(600));
//!
//! // ...a service verifies, then runs the request in the synthetic scope.
//! let synthetic = Verifier::new(keys).verify(&token)?;
//! synthetic.in_scope(|| {
//!     assert!(synth_ctx::is_synthetic());
//!     assert_eq!(synth_ctx::current().unwrap().run().as_str(), "r42");
//! });
//! assert!(!synth_ctx::is_synthetic());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Feature flags
//!
//! - `http`: [`http`] adapters for `http::HeaderMap`.
//! - `tokio`: [`spawn`] and [`spawn_blocking`], tokio's that keep the synthetic scope.
//! - `full`: all of the above.
//!
//! The default build depends on neither tokio nor any HTTP crate.
//!
//! # Supported Rust versions
//!
//! The minimum supported Rust version is 1.94.

mod baggage;
mod cache;
mod clock;
mod context;
#[cfg(feature = "http")]
pub mod http;
mod keys;
pub mod propagation;
mod sign;
pub mod token;
pub mod trail;
mod verify;

pub use baggage::{MAX_BAGGAGE_LEN, MAX_BAGGAGE_MEMBERS};
pub use context::{
    BAGGAGE_KEY, Synthetic, SyntheticFutureExt, current, from_context, is_synthetic, without_synthetic,
};
#[cfg(feature = "tokio")]
pub use context::{spawn, spawn_blocking};
pub use keys::{KEYS_ENV, KeyRing, KeyRingError, MIN_SECRET_LEN};
pub use propagation::{ExtractedMarker, SyntheticPropagator};
pub use sign::Signer;
pub use token::{
    InvalidKeyId, InvalidOrigin, InvalidRunId, KeyId, MAX_TOKEN_LEN, Malformed, Origin, ParseError, RunId,
    Token,
};
pub use trail::Trail;
pub use verify::{DEFAULT_CACHE_CAPACITY, DEFAULT_CLOCK_SKEW, DEFAULT_MAX_TTL, Verifier, VerifyError};
