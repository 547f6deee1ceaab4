//! loadgen: a load generator for production, where every request carries a signed
//! synthetic-traffic marker.
//!
//! This release has the key and token commands operators use to send one synthetic request by
//! hand and to debug a refusal:
//!
//! ```text
//! loadgen keygen --kid k1                      # a fresh `kid:secret` for SYNTH_KEYS
//! loadgen token mint --run r42 --ttl 1h        # a signed token (keys from SYNTH_KEYS)
//! loadgen token verify v1.load.r42....         # exit 0 with its fields, or 1 with the reason
//! ```
//!
//! The binary is a thin shell over [`cli::run`], so everything it does can be driven in-process.

pub mod cli;
pub mod control;
pub mod controls;
pub mod duration;
pub mod engine;
pub mod html;
pub mod observe;
pub mod preflight;
pub mod report;
pub mod rng;
pub mod scenario;
pub mod schedule;
pub mod stats;
