//! The replay as a Rust API: [`Replay`] says what to replay and how, [`replay`](crate::replay())
//! runs it with a [`RunConfig`](crate::RunConfig), as `loadgen replay` does.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method, Uri};

use super::plan::{PlanError, RunScope, Spec, Timing};
use super::{CapSourceSpec, Job, ReadOptions, Settings};
use crate::scenario::{Template, Threshold, Timeouts, Tls, signals::Signals};

/// The longest silence a replay keeps by default: 5 minutes.
pub const DEFAULT_MAX_GAP: Duration = Duration::from_secs(300);

/// Why a [`Replay`] cannot run: an option out of range, or a recording that cannot be replayed.
/// Nothing was sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// An option is out of range or malformed.
    #[error("{option}: {why}")]
    Option {
        /// The option, as the command line spells it (`--amplify`).
        option: &'static str,
        /// What is wrong and what to give instead.
        why: String,
    },
    /// A file cannot be read, holds a bad record (with its file and line), or holds nothing to
    /// replay.
    #[error("{0}")]
    Recording(String),
}

impl From<PlanError> for ReplayError {
    fn from(e: PlanError) -> Self {
        ReplayError::Recording(e.to_string())
    }
}

fn bad(option: &'static str, why: impl Into<String>) -> ReplayError {
    ReplayError::Option { option, why: why.into() }
}

/// What caps a replay's rate: replayed requests per second at most `share` times real traffic's.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ReplayCap {
    /// Real traffic is the recording's own rate where the replay is in it, divided by the share
    /// of real requests the capture recorded (1.0 when unknown: the cap is then as low as it can
    /// be, never higher than it should).
    Recording {
        /// The most replayed traffic, as a share of real traffic (0.25: a quarter).
        share: f64,
        /// The share of real requests the capture recorded (its sampling share).
        recorded_share: f64,
    },
    /// Real traffic is this query's answer (requests/s), asked of the replay's
    /// [`signals`](Replay::signals) source at each of its polls.
    Query {
        /// The most replayed traffic, as a share of real traffic.
        share: f64,
        /// A PromQL (or compatible) instant query for real traffic, in requests/s.
        query: String,
    },
}

/// Whether a replay has a cap: it must be said, one way or the other.
#[derive(Clone, Debug, PartialEq)]
enum CapChoice {
    Unset,
    None,
    Cap(ReplayCap),
}

/// A replay of recorded requests: the files, the target, the pace, the cap.
///
/// Every request carries a signed marker of origin `replay` (minted from the run's keys and
/// refreshed), so the services' guards make its side effects no-ops and `synth-cleanup` can
/// purge its rows. Only `GET`, `HEAD` and `OPTIONS` are replayed unless
/// [`methods`](Self::methods) says otherwise; credentials a HAR or `.gor` file recorded are
/// dropped unless [`keep_credentials`](Self::keep_credentials).
///
/// ```no_run
/// use std::time::Duration;
/// use loadgen::{Replay, ReplayCap, RunConfig};
///
/// # async fn f(keys: synth_ctx::KeyRing) -> Result<(), Box<dyn std::error::Error>> {
/// let replay = Replay::new(["captures/shop-1764650000000-42.jsonl"], "http://127.0.0.1:8080".parse()?)
///     .amplify(2.0)
///     .duration(Duration::from_secs(60))
///     .cap(ReplayCap::Recording { share: 0.25, recorded_share: 0.1 });
/// let outcome = loadgen::replay(replay, RunConfig::new(keys)).await?;
/// println!("{}", outcome.summary());
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Replay {
    files: Vec<PathBuf>,
    target: Uri,
    speed: f64,
    rate: Option<f64>,
    amplify: f64,
    looped: bool,
    duration: Option<Duration>,
    methods: Vec<Method>,
    hosts: Vec<String>,
    headers: Vec<(String, String)>,
    drop_headers: Vec<String>,
    keep_credentials: bool,
    skip_bad: bool,
    send_omitted: bool,
    routes: Vec<String>,
    cap: CapChoice,
    signals: Option<Signals>,
    thresholds: Vec<Threshold>,
    timeout: Duration,
    max_in_flight: usize,
    max_gap: Duration,
}

impl Replay {
    /// A replay of `files` (synth captures, HAR 1.2, GoReplay `.gor`: told from their content),
    /// sent to `target` (a base URL the recorded paths are joined to), at the recorded pace,
    /// once, without a cap: give one with [`cap`](Self::cap), or the run refuses to start unless
    /// [`no_cap`](Self::no_cap) says so.
    pub fn new(files: impl IntoIterator<Item = impl Into<PathBuf>>, target: Uri) -> Replay {
        Replay {
            files: files.into_iter().map(Into::into).collect(),
            target,
            speed: 1.0,
            rate: None,
            amplify: 1.0,
            looped: false,
            duration: None,
            methods: vec![Method::GET, Method::HEAD, Method::OPTIONS],
            hosts: Vec::new(),
            headers: Vec::new(),
            drop_headers: Vec::new(),
            keep_credentials: false,
            skip_bad: false,
            send_omitted: false,
            routes: Vec::new(),
            cap: CapChoice::Unset,
            signals: None,
            thresholds: Vec::new(),
            timeout: Duration::from_secs(30),
            max_in_flight: 4096,
            max_gap: DEFAULT_MAX_GAP,
        }
    }

    /// Plays the recorded inter-arrival times this many times as fast (default 1).
    pub fn speed(mut self, speed: f64) -> Replay {
        self.speed = speed;
        self.rate = None;
        self
    }

    /// Sends this many requests per second (copies included), ignoring the recorded times.
    pub fn rate(mut self, rate: f64) -> Replay {
        self.rate = Some(rate);
        self
    }

    /// Sends each record this many times (1.5: every other one twice; default 1).
    pub fn amplify(mut self, amplify: f64) -> Replay {
        self.amplify = amplify;
        self
    }

    /// Starts again at the end of the recording, until [`duration`](Self::duration) or a stop.
    pub fn looped(mut self, looped: bool) -> Replay {
        self.looped = looped;
        self
    }

    /// Stops sending after this long.
    pub fn duration(mut self, duration: Duration) -> Replay {
        self.duration = Some(duration);
        self
    }

    /// The methods replayed (default `GET`, `HEAD`, `OPTIONS`). Any other changes data: the
    /// services' guards must cover every side effect it has.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Replay {
        self.methods = methods.into_iter().collect();
        self
    }

    /// Only records sent to this host (`host` or `host:port`, any case); may be given again.
    pub fn host(mut self, host: impl Into<String>) -> Replay {
        self.hosts.push(host.into());
        self
    }

    /// Sets a header on every request: a template (`env('TOKEN')`, `uuid()`, `run`, …).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Replay {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Removes a header from every request.
    pub fn drop_header(mut self, name: impl Into<String>) -> Replay {
        self.drop_headers.push(name.into());
        self
    }

    /// Sends the credentials a HAR or `.gor` file recorded (`authorization`, `cookie`, …): the
    /// replay then acts as the users it recorded.
    pub fn keep_credentials(mut self, keep: bool) -> Replay {
        self.keep_credentials = keep;
        self
    }

    /// Counts bad records and goes on, instead of refusing the replay at the first one.
    pub fn skip_bad(mut self, skip: bool) -> Replay {
        self.skip_bad = skip;
        self
    }

    /// Sends records whose body the capture left out (over its limit) without a body.
    pub fn send_omitted(mut self, send: bool) -> Replay {
        self.send_omitted = send;
        self
    }

    /// A route pattern for the report's rows (`/users/{id}/orders`, `/static/{*}`).
    pub fn route(mut self, pattern: impl Into<String>) -> Replay {
        self.routes.push(pattern.into());
        self
    }

    /// Caps replayed traffic at a share of real traffic.
    pub fn cap(mut self, cap: ReplayCap) -> Replay {
        self.cap = CapChoice::Cap(cap);
        self
    }

    /// No cap: the replay sends at its own pace whatever real traffic does. Said explicitly, as
    /// `--no-cap` on the command line.
    pub fn no_cap(mut self) -> Replay {
        self.cap = CapChoice::None;
        self
    }

    /// Signals that guard the replay as they guard a run (conditions that abort or back off);
    /// a [`ReplayCap::Query`] asks its source.
    pub fn signals(mut self, signals: Signals) -> Replay {
        self.signals = Some(signals);
        self
    }

    /// A pass/fail threshold, as a scenario's.
    pub fn threshold(mut self, threshold: Threshold) -> Replay {
        self.thresholds.push(threshold);
        self
    }

    /// Whole-request timeout (default 30 s).
    pub fn timeout(mut self, timeout: Duration) -> Replay {
        self.timeout = timeout;
        self
    }

    /// Most replayed requests in flight (default 4096); beyond it, copies are dropped and counted.
    pub fn max_in_flight(mut self, n: usize) -> Replay {
        self.max_in_flight = n;
        self
    }

    /// Silences in the recordings longer than this are cut to it (default 5 minutes): files
    /// recorded days apart replay one after the other instead of waiting out the days.
    pub fn max_gap(mut self, gap: Duration) -> Replay {
        self.max_gap = gap;
        self
    }

    /// Checks the options: what to send and the run's settings.
    pub(crate) fn plan(self) -> Result<(Spec, Settings), ReplayError> {
        let target = self.target;
        if !matches!(target.scheme_str(), Some("http" | "https")) || target.host().is_none_or(str::is_empty) {
            return Err(bad("--target", format!("`{target}`: give an http:// or https:// URL with a host")));
        }
        if target.query().is_some() {
            return Err(bad("--target", format!("`{target}`: a base URL has no query")));
        }
        if self.files.is_empty() {
            return Err(bad("FILE", "give at least one recording"));
        }
        let timing = match self.rate {
            Some(r) if r.is_finite() && r > 0.0 && r <= crate::scenario::MAX_ARRIVAL_RATE => Timing::Rate(r),
            Some(r) => {
                return Err(bad(
                    "--rate",
                    format!(
                        "{r} is not a rate: give requests/s above 0, at most {}",
                        crate::scenario::MAX_ARRIVAL_RATE
                    ),
                ));
            }
            None if self.speed.is_finite() && self.speed > 0.0 && self.speed <= 1000.0 => {
                Timing::Recorded { speed: self.speed }
            }
            None => {
                return Err(bad(
                    "--speed",
                    format!("{}: give a factor above 0, at most 1000 (2 = twice as fast)", self.speed),
                ));
            }
        };
        if !(self.amplify.is_finite() && self.amplify > 0.0 && self.amplify <= 1000.0) {
            return Err(bad(
                "--amplify",
                format!(
                    "{}: give a factor above 0, at most 1000 (1.5 = every other request twice)",
                    self.amplify
                ),
            ));
        }
        let mut methods: Vec<Method> = Vec::new();
        for m in self.methods {
            if !methods.contains(&m) {
                methods.push(m);
            }
        }
        if methods.is_empty() {
            return Err(bad("--methods", "give at least one method, e.g. GET,HEAD"));
        }
        let mut set_headers = Vec::new();
        for (name, value) in &self.headers {
            let header = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| bad("--header", format!("`{name}` is not a header name")))?;
            if header.as_str().starts_with("synthetic-traffic") || header == "baggage" {
                return Err(bad(
                    "--header",
                    format!("{header}: the replay sends its own marker; it cannot be set by hand"),
                ));
            }
            let template = Template::compile(value.trim(), &RunScope).map_err(|e| {
                bad(
                    "--header",
                    format!(
                        "{header}: {}{}",
                        e.message,
                        e.hint.map(|h| format!(" ({h})")).unwrap_or_default()
                    ),
                )
            })?;
            set_headers.push((header, template));
        }
        let drop_headers = self
            .drop_headers
            .iter()
            .map(|h| {
                HeaderName::from_bytes(h.trim().as_bytes())
                    .map_err(|_| bad("--drop-header", format!("`{h}` is not a header name")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let routes = self
            .routes
            .iter()
            .map(|r| super::routes::Pattern::parse(r).map_err(|e| bad("--route", e.to_string())))
            .collect::<Result<Vec<_>, _>>()?;
        let share_ok = |s: f64, option: &'static str| {
            if s.is_finite() && s > 0.0 && s <= 100.0 {
                Ok(s)
            } else {
                Err(bad(option, format!("{s}: give a share above 0 (0.25 = a quarter), at most 100")))
            }
        };
        let cap = match self.cap {
            CapChoice::Unset => {
                return Err(bad(
                    "--cap-share",
                    "a replay needs a cap on its share of real traffic (e.g. --cap-share 0.25), or --no-cap spelled out",
                ));
            }
            CapChoice::None => None,
            CapChoice::Cap(ReplayCap::Recording { share, recorded_share }) => {
                let share = share_ok(share, "--cap-share")?;
                let recorded = share_ok(recorded_share, "--recorded-share")?;
                if recorded > 1.0 {
                    return Err(bad(
                        "--recorded-share",
                        format!("{recorded}: a capture records at most all requests (1)"),
                    ));
                }
                Some((share, CapSourceSpec::Recording(recorded)))
            }
            CapChoice::Cap(ReplayCap::Query { share, query }) => {
                let share = share_ok(share, "--cap-share")?;
                if query.trim().is_empty() {
                    return Err(bad("--real-rate", "the query is empty"));
                }
                if self.signals.is_none() {
                    return Err(bad(
                        "--real-rate",
                        "a query needs a source: --prometheus URL or --signals FILE",
                    ));
                }
                Some((share, CapSourceSpec::Query(query)))
            }
        };
        if self.duration.is_some_and(|d| d.is_zero()) {
            return Err(bad("--duration", "give more than 0s (leave it out to replay the recording once)"));
        }
        if self.max_gap.is_zero() {
            return Err(bad(
                "--max-gap",
                "give more than 0s (--rate sends at a fixed pace, whatever the recorded times)",
            ));
        }
        if self.timeout > Duration::from_secs(3600) {
            return Err(bad("--timeout", format!("{:?} is over an hour: give at most 1h", self.timeout)));
        }
        if self.max_in_flight == 0 {
            return Err(bad("--max-in-flight", "give 1 or more"));
        }
        if self.timeout.is_zero() {
            return Err(bad("--timeout", "give more than 0s"));
        }
        let mut signals = self.signals;
        if let Some(s) = signals.as_mut() {
            // Top-up has no meaning for a replay (its query can be the cap's, taken before).
            s.top_up = None;
        }
        let spec = Spec {
            files: self.files,
            target,
            timing,
            amplify: self.amplify,
            looped: self.looped,
            methods,
            hosts: self.hosts,
            set_headers,
            drop_headers,
            keep_credentials: self.keep_credentials,
            skip_bad: self.skip_bad,
            send_omitted: self.send_omitted,
            routes,
            read: ReadOptions::default(),
            max_gap: self.max_gap,
        };
        let settings = Settings {
            cap,
            duration: self.duration,
            max_in_flight: self.max_in_flight,
            signals,
            thresholds: self.thresholds,
            timeouts: Timeouts { connect: Duration::from_secs(5).min(self.timeout), request: self.timeout },
            tls: Tls::default(),
        };
        Ok((spec, settings))
    }
}

/// Reads the recordings (in a blocking task: every bad record is found before anything is sent)
/// and makes the job and the scenario it runs as; the warnings an operator should see first.
pub(crate) async fn prepare(replay: Replay) -> Result<(Job, crate::Scenario, Vec<String>), ReplayError> {
    let (spec, settings) = replay.plan()?;
    let spec = Arc::new(spec);
    let scan = {
        let spec = spec.clone();
        tokio::task::spawn_blocking(move || super::plan::scan(&spec))
            .await
            .map_err(|e| ReplayError::Recording(format!("reading the recordings: {e}")))??
    };
    // Amplification below 1 of a short recording can leave nothing to send: say so now, not with
    // a run that tested nothing.
    let mut amplifier = super::plan::Amplifier::new(spec.amplify);
    let copies: u64 = (0..scan.replayable.min(1_000_000)).map(|_| u64::from(amplifier.next_copies())).sum();
    if copies == 0 && !spec.looped {
        return Err(ReplayError::Recording(format!(
            "nothing to replay: {} recorded request(s) at --amplify {} make no copy",
            scan.replayable, spec.amplify
        )));
    }
    let warnings = super::plan::warnings(&spec, &scan);
    let spec = Arc::unwrap_or_clone(spec);
    let (job, scenario) = Job::new(spec, scan, settings);
    Ok((job, scenario, warnings))
}
