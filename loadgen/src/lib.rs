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
//!
//! # The public surface
//!
//! Two modules and the items at the crate root; everything else (the engine, its scheduler and
//! HTTP client, the statistics, the reports' renderers, the control server) is private, so a
//! run cannot be started around its safety checks.
//!
//! - **Running**: [`run`] with a [`RunConfig`] gives a [`RunOutcome`]; [`preflight`] gives a
//!   [`PreflightOutcome`]; [`Exit`] is the exit code either maps to, [`RunError`] why nothing (or
//!   not everything) happened. [`Control`] stops, pauses or re-rates a run from another task and
//!   shows it [`Live`]; [`RateFactorError`] is a refused factor.
//! - **The scenario**: [`Scenario`] (from YAML, a file, or built in Rust), its [`Phase`]s,
//!   [`Feeder`]s ([`Order`]) and [`Threshold`]s ([`InvalidThreshold`]), [`ScenarioError`]; the
//!   [`scenario`] module has the rest of the model (steps, templates, signals). Journeys written
//!   in Rust: [`Journey`], [`User`], [`RequestBuilder`], [`Answer`], [`Row`].
//! - **What a run came to** (the fields of [`RunOutcome`]): [`Finished`] (with
//!   [`Finished::total`]), its [`Ending`] and [`AbortReason`], [`JourneyCounts`],
//!   [`JourneyStats`], [`StepStats`] by [`ErrorClass`]; the series of [`Point`]s; threshold
//!   [`Verdict`]s; the automatic controls' [`Record`] of [`Decision`]s ([`DecisionAction`]) and
//!   [`SignalPoint`]s.
//! - **What a preflight found**: a [`PreflightReport`] of [`Checked`] requests, each with its
//!   [`Observation`]; signals that cannot guard a run as [`SignalProblem`]s.
//! - **Helpers**: [`parse_duration`] (`500ms`, `1h30m`; [`DurationError`]), [`new_key`],
//!   [`DEFAULT_TOKEN_TTL`], [`DEFAULT_SETTLE`].
//! - **The command line**: [`cli`], for a program that embeds `loadgen`'s commands.
//!
//! # The control API
//!
//! [`RunConfig::with_control_addr`] serves these routes while the run goes on
//! ([`RunConfig::with_metrics_addr`] serves `GET /metrics` alone):
//!
//! | method and path | what it does |
//! |---|---|
//! | `GET /metrics` | Prometheus text (HELP and TYPE for every family; passes `promtool check metrics`): requests, errors by class, status codes, tagged and shed answers and a latency summary per step; journeys in flight, rate factor |
//! | `GET /status` | JSON: run id, paused, rate factor, journeys, requests, errors |
//! | `POST /stop` | stops the run (as Ctrl-C) |
//! | `POST /pause`, `POST /resume` | pauses and resumes arrivals |
//! | `POST /rate?factor=0.5` | multiplies every phase's rate: a number from 0 to the scenario's `max_rate_factor` (default 10); anything else is refused with 400 |
//! | `POST /heartbeat` | "keep going": with [`RunConfig::with_heartbeat`], the run stops when none comes in time |
//!
//! With [`RunConfig::with_control_token`], every route of both servers needs
//! `Authorization: Bearer <token>`, or answers 401. Bind them to loopback or an internal
//! interface; a non-loopback address without a token is refused. [`Control`] is the same API in
//! process:
//!
//! ```
//! let control = loadgen::Control::new();
//! // What `POST /rate?factor=` applies, and the bound it checks first.
//! assert!(control.set_rate_factor(1e300).is_err());
//! assert_eq!(control.max_rate_factor(), 10.0);
//! control.set_rate_factor(0.5)?;
//! assert_eq!(control.rate_factor(), 0.5);
//! # Ok::<(), loadgen::RateFactorError>(())
//! ```
//!
//! The engine's own entry point is not public: a run goes through [`run`], which checks the
//! signals, runs the preflight and refreshes the markers.
//!
//! ```compile_fail
//! // Private: use `loadgen::run` with a `RunConfig`.
//! use loadgen::engine::run;
//! ```
//!
//! Nor can a caller lift what the run's automatic controls hold (their pause while a signal is
//! unread, their back-off) or swap the marker the run refreshes:
//!
//! ```compile_fail
//! let control = loadgen::Control::new();
//! control.set_auto_paused(false); // only the automatic controls lift their own hold
//! ```
//!
//! ```compile_fail
//! let control = loadgen::Control::new();
//! control.set_auto_factor(10.0); // only the automatic controls undo their back-off
//! ```
//!
//! ```compile_fail
//! let control = loadgen::Control::new();
//! control.set_token("not a marker"); // the run mints and refreshes its own
//! ```

mod api;
pub mod cli;
mod control;
mod controls;
mod duration;
mod engine;
mod html;
mod observe;
mod preflight;
pub(crate) mod replay;
mod report;
mod rng;
pub mod scenario;
mod schedule;
mod stats;

pub use api::{
    DEFAULT_TOKEN_TTL, Exit, Listener, NoRandomness, PreflightOutcome, RunConfig, RunError, RunOutcome,
    new_key, preflight, replay, run,
};
pub use controls::{Decision, DecisionAction, Record, SignalPoint, SignalProblem};
pub use duration::{DurationError, parse as parse_duration};
pub use engine::{
    AbortReason, Control, DRAIN_LIMIT, Ending, Finished, JourneyCounts, JourneyStats, Live, Observation,
    PREFLIGHT_JOURNEY_LIMIT, PREFLIGHT_MAX_SENDS, RateFactorError,
    grpc::MarkerInterceptor,
    user::{
        Answer, BoxError, GrpcChannel, Journey, JourneyBuilder, JourneyResult, RequestBuilder, RequestError,
        Row, User,
    },
};
pub use observe::DEFAULT_SETTLE;
pub use preflight::{Checked, Report as PreflightReport};
pub use replay::{DEFAULT_MAX_GAP, Replay, ReplayCap, ReplayError, ReplaySummary};
pub use report::{Point, Verdict};
pub use scenario::{Feeder, Order, Phase, Scenario, ScenarioError, Threshold, threshold::InvalidThreshold};
pub use stats::{ErrorClass, GrpcCode, StepStats};

/// Entry points for the fuzz targets in `loadgen/fuzz`; not part of the API (hidden, unstable).
///
/// A `#[doc(hidden)]` module rather than a `fuzz` feature: the readers stay crate-private and
/// this exposes none of their types, only bytes in and text out, so nothing here can be built
/// on; and the fuzz crate needs no feature that an ordinary build could switch on by mistake.
#[doc(hidden)]
pub mod __fuzz {
    use std::path::Path;
    use std::sync::Arc;

    use crate::replay;

    /// What [`read_bytes`] found in one input.
    #[derive(Debug)]
    pub struct Read {
        /// The format it was read as.
        pub format: String,
        /// For each record: what became of it, or the bad record's message.
        pub records: Vec<Result<Written, String>>,
        /// Records skipped as not requests to replay.
        pub skipped: u64,
    }

    /// One record read, written as a synth line and read back.
    #[derive(Debug)]
    pub struct Written {
        /// Where the record is.
        pub location: String,
        /// Its synth line.
        pub line: String,
        /// That line read back and written again: the fuzz target asserts it is `Ok(line)`.
        pub back: Result<String, String>,
    }

    /// Reads `data` as whatever format it looks like; `Err` is the file-level error.
    pub fn read_bytes(data: &[u8]) -> Result<Read, String> {
        let opts = replay::ReadOptions { max_body: 1 << 16, max_har: 1 << 20 };
        let mut records =
            replay::read_from(Arc::from(Path::new("fuzz")), data, &opts).map_err(|e| e.to_string())?;
        let read = records
            .by_ref()
            .map(|record| {
                let record = record.map_err(|e| e.to_string())?;
                let line = replay::to_jsonl(&record);
                let back = read_back(&line, &opts);
                Ok(Written { location: record.source.to_string(), line, back })
            })
            .collect();
        let skipped = records.skipped();
        Ok(Read {
            format: format!("{:?}", records.format()),
            records: read,
            skipped: skipped.from_cache + skipped.not_http + skipped.responses,
        })
    }

    fn read_back(line: &str, opts: &replay::ReadOptions) -> Result<String, String> {
        let mut again = replay::read_from(Arc::from(Path::new("again")), line.as_bytes(), opts)
            .map_err(|e| format!("written line not readable: {e}"))?;
        let back = again.next().ok_or("written line read as no record")?.map_err(|e| e.to_string())?;
        Ok(replay::to_jsonl(&back))
    }
}
