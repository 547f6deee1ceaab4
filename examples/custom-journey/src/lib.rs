//! `custom-journey`: the start of your own load test written in Rust.
//!
//! A [`Journey`](loadgen::Journey) that logs in through a function ([`login`]), signs every
//! request body with HMAC-SHA256 ([`BodySigner`]), and branches on an answer (orders a product
//! only when it is in stock), in a [`scenario`] with thresholds built in Rust. The binary
//! (`cargo run -p custom-journey -- URL`) runs it against your service; [`server`] is a small
//! shop that checks everything the journey does, for the example's own tests.
//!
//! Copy `src/journey.rs` and `src/main.rs`, then change the requests.
//!
//! # Example
//!
//! The journey against the demo server, on loopback, for one second:
//!
//! ```
//! use std::{sync::Arc, time::Duration};
//!
//! use custom_journey::{BodySigner, DEMO_HMAC_SECRET, Settings, scenario, server};
//! use synth_ctx::{KeyRing, Verifier};
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let keys = KeyRing::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8")?;
//! let signer = BodySigner::new(DEMO_HMAC_SECRET)?;
//! let shop = server::serve(Verifier::new(keys.clone()), signer.clone()).await?;
//!
//! let settings = Settings { duration: Duration::from_secs(1), rate: 5.0, signer };
//! let scenario = scenario(shop.url().parse()?, &settings)?;
//! let outcome = loadgen::run(Arc::new(scenario), loadgen::RunConfig::new(keys).with_quiet(true)).await?;
//! assert_eq!(outcome.exit(), loadgen::Exit::Ok, "{}", outcome.summary());
//! // loadgen's preflight sends the journey once on its own first, then come 5 arrivals.
//! assert_eq!(shop.counts().logins, 1 + 5);
//! # Ok(())
//! # }
//! ```

pub mod journey;
pub mod server;

pub use journey::{
    BodySigner, DEMO_EMAIL, DEMO_HMAC_SECRET, DEMO_PASSWORD, InvalidSecret, PRODUCTS, SIGNATURE_HEADER,
    Settings, checkout, login, scenario,
};
