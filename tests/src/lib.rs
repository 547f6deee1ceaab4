//! Cross-crate end-to-end tests for synth; the tests live in `tests/tests/`.
//!
//! The library part only holds the generated gRPC code of the test services.

/// The `hop.Hop` test service (`proto/hop.proto`): B forwards to C and says what both saw.
#[allow(missing_docs, unreachable_pub, missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod hop {
    tonic::include_proto!("hop");
}

/// The `ticker.Ticker` test service (`proto/ticker.proto`): a server stream whose items say what
/// the code producing them saw.
#[allow(missing_docs, unreachable_pub, missing_debug_implementations, clippy::all, clippy::pedantic)]
pub mod ticker {
    tonic::include_proto!("ticker");
}

/// The README's Rust examples, compiled and run as doctests.
#[doc = include_str!("../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// The guide's Rust examples (`docs/guide.md`), compiled (and run unless `no_run`) as doctests.
#[doc = include_str!("../../docs/guide.md")]
#[cfg(doctest)]
pub struct GuideDoctests;

/// The Rust API guide's examples (`docs/rust-api.md`), compiled (and run unless `no_run`).
#[doc = include_str!("../../docs/rust-api.md")]
#[cfg(doctest)]
pub struct RustApiDoctests;

/// The dark-traffic guide's examples (`docs/dark-traffic.md`), compiled (and run unless `no_run`).
#[doc = include_str!("../../docs/dark-traffic.md")]
#[cfg(doctest)]
pub struct DarkTrafficDoctests;

/// The replay guide's examples (`docs/replay.md`), compiled (and run unless `no_run`).
#[doc = include_str!("../../docs/replay.md")]
#[cfg(doctest)]
pub struct ReplayDoctests;
