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
//! The binary is a thin shell over [`cli::run`], and `loadgen run` over the typed API below, so
//! everything it does can be driven in-process.
//!
//! # From Rust
//!
//! [`run`] takes a [`Scenario`] (from YAML, from a file, or built in Rust) and a [`RunConfig`]
//! (keys, run id, reports, control servers, …) and does everything `loadgen run` does:
//! preflight and signal check, control and metrics servers, a stop handle, refreshed markers,
//! automatic controls, reports. It returns one [`RunOutcome`] that the summary, the JSON report
//! and the HTML report all render, and the [`Exit`] code the command line would give.
//!
//! ```
//! use std::sync::Arc;
//!
//! use synth_ctx::{KeyRing, RunId};
//!
//! # async fn serve() -> std::net::SocketAddr {
//! #     let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! #     let addr = l.local_addr().unwrap();
//! #     let app = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
//! #     tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
//! #     addr
//! # }
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let addr = serve().await;
//! let yaml = format!(
//!     "target: http://{addr}\n\
//!      phases: [{{ duration: 1s, arrival_rate: 10 }}]\n\
//!      journeys: [{{ name: home, steps: [{{ get: / }}] }}]\n"
//! );
//! let scenario = loadgen::Scenario::from_yaml(&yaml)?; // or Scenario::from_file("journeys.yaml")
//! let keys = KeyRing::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8")?;
//! let config = loadgen::RunConfig::new(keys).with_run_id(RunId::new("docs-1")?).with_quiet(true);
//! let stop = config.control(); // stop(), pause(), set_rate_factor(..) from another task
//! let outcome = loadgen::run(Arc::new(scenario), config).await?;
//! assert_eq!(outcome.exit(), loadgen::Exit::Ok);
//! assert_eq!(outcome.to_json()["total"]["requests"], 10);
//! # drop(stop);
//! # Ok(())
//! # }
//! ```

mod api;
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

pub use api::{
    DEFAULT_TOKEN_TTL, Exit, Listener, NoRandomness, PreflightOutcome, RunConfig, RunError, RunOutcome,
    new_key, preflight, run,
};
pub use engine::{
    AbortReason, Control, Ending, JourneyStats,
    grpc::MarkerInterceptor,
    user::{
        Answer, BoxError, GrpcChannel, Journey, JourneyBuilder, JourneyResult, RequestBuilder, RequestError,
        Row, User,
    },
};
pub use observe::DEFAULT_SETTLE;
pub use scenario::{Feeder, Order, Phase, Scenario, ScenarioError, Threshold, threshold::InvalidThreshold};
pub use stats::{ErrorClass, GrpcCode};
