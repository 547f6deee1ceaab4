//! A replay as a run: the scenario it runs as (target, timeouts, signals, thresholds; one row per
//! route), the engine's feed, and the summary the reports show.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::input::Format;
use super::plan::{Scan, Spec, Timing, spawn_reader};
use crate::controls::{Cap, CapSource};
use crate::engine::replay::Feed;
use crate::scenario::{self, Phase, Scenario, Threshold, signals::Signals};

/// What a replay read and how it sends it: the `replay` section of the reports.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ReplaySummary {
    /// Each file and its format (`synth-jsonl`, `har`, `gor`).
    pub files: Vec<(String, String)>,
    /// Records read (good ones).
    pub records: u64,
    /// Of which replayed (each sent [`amplify`](Self::amplify) times on average, per loop).
    pub replayed_records: u64,
    /// Records not replayed, by reason (`method POST`, `other host`, `body omitted`, `bad`,
    /// `cached (HAR)`, `not http (HAR)`, `response (GoReplay)`).
    pub not_replayed: BTreeMap<String, u64>,
    /// The recording's length, seconds.
    pub recording_s: f64,
    /// `at the recorded pace ×2` or `500 req/s`.
    pub timing: String,
    /// Copies per record.
    pub amplify: f64,
    /// Whether the recording starts again at its end.
    pub looped: bool,
    /// The cap: `25% of real traffic (…)`, or `none (--no-cap)`.
    pub cap: String,
    /// Headers the capture scrubbed, with counts: a replay sends them only if `--header` sets them.
    pub scrubbed_headers: BTreeMap<String, u64>,
    /// Records whose recorded credentials were dropped (HAR, GoReplay).
    pub credentials_dropped: u64,
}

impl ReplaySummary {
    /// One line: what is replayed, how, against what cap.
    pub(crate) fn headline(&self) -> String {
        format!(
            "{} of {} recorded requests ({:.0}s) from {} file(s), {}, each sent ×{}{}, cap: {}",
            self.replayed_records,
            self.records,
            self.recording_s,
            self.files.len(),
            self.timing,
            self.amplify,
            if self.looped { ", looped" } else { "" },
            self.cap
        )
    }
}

/// A replay ready to run.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) spec: Arc<Spec>,
    pub(crate) scan: Arc<Scan>,
    pub(crate) cap: Option<Cap>,
    pub(crate) duration: Option<Duration>,
    pub(crate) max_in_flight: usize,
    pub(crate) summary: ReplaySummary,
}

/// What the reports and the engine need besides the recording.
#[derive(Debug)]
pub(crate) struct Settings {
    pub(crate) cap: Option<(f64, CapSourceSpec)>,
    pub(crate) duration: Option<Duration>,
    pub(crate) max_in_flight: usize,
    pub(crate) signals: Option<Signals>,
    pub(crate) thresholds: Vec<Threshold>,
    pub(crate) timeouts: scenario::Timeouts,
    pub(crate) tls: scenario::Tls,
}

/// Where the cap reads real traffic, before the recording is scanned.
#[derive(Clone, Debug)]
pub(crate) enum CapSourceSpec {
    /// A query of the run's signal source.
    Query(String),
    /// The recording's own rate, over this share of real traffic recorded.
    Recording(f64),
}

impl Job {
    /// The job and the scenario it runs as.
    pub(crate) fn new(spec: Spec, scan: Scan, settings: Settings) -> (Job, Scenario) {
        let scan = Arc::new(scan);
        let cap = settings.cap.as_ref().map(|(share, source)| Cap {
            share: *share,
            source: match source {
                CapSourceSpec::Query(q) => CapSource::Query(q.clone()),
                CapSourceSpec::Recording(recorded_share) => {
                    CapSource::Recording { scan: scan.clone(), recorded_share: *recorded_share }
                }
            },
        });
        let summary = summary(&spec, &scan, settings.cap.as_ref());
        // The planned rate and length, for the controls' figures and the markers' lifetime.
        let (rate, length) = match spec.timing {
            Timing::Recorded { speed } => {
                (scan.mean_rate() * spec.amplify * speed, scan.span.as_secs_f64() / speed)
            }
            Timing::Rate(rate) => (rate, scan.replayable as f64 * spec.amplify / rate),
        };
        // Centuries at a tiny speed: as long as a phase can be.
        let length = Duration::try_from_secs_f64(length).unwrap_or(Duration::MAX);
        let length = match (spec.looped, settings.duration) {
            (_, Some(d)) => d,
            (true, None) => Duration::MAX,
            (false, None) => length.max(Duration::from_secs(1)),
        };
        let mut s = Scenario::single_request(
            spec.target.clone(),
            http::Method::GET,
            Phase::Load { duration: length, rate, ramp_to: rate, max_concurrent: None },
        );
        s.target = spec.target.clone();
        if let Some(j) = s.journeys.first_mut() {
            j.name = Arc::from("replay");
        }
        s.step_names = scan.routes.names().to_vec();
        if s.step_names.is_empty() {
            s.step_names.push(Arc::from("replay"));
        }
        s.thresholds = settings.thresholds;
        s.signals = settings.signals;
        s.timeouts = settings.timeouts;
        s.tls = settings.tls;
        let job = Job {
            spec: Arc::new(spec),
            scan,
            cap,
            duration: settings.duration,
            max_in_flight: settings.max_in_flight,
            summary,
        };
        (job, s)
    }

    /// Starts the reader thread: the engine's feed.
    pub(crate) fn start(self, run_id: &str) -> Result<Feed, crate::RunError> {
        let (tx, rx) = tokio::sync::mpsc::channel(super::plan::BATCHES_AHEAD);
        spawn_reader(self.spec.clone(), self.scan.clone(), run_id.to_owned(), tx)
            .map_err(crate::RunError::ReplayReader)?;
        Ok(Feed {
            rx,
            buffer: std::collections::VecDeque::new(),
            timing: self.spec.timing,
            duration: self.duration,
            max_in_flight: self.max_in_flight,
        })
    }
}

fn summary(spec: &Spec, scan: &Scan, cap: Option<&(f64, CapSourceSpec)>) -> ReplaySummary {
    let mut not_replayed = BTreeMap::new();
    let mut add = |k: String, n: u64| {
        if n > 0 {
            *not_replayed.entry(k).or_default() += n;
        }
    };
    for (m, n) in &scan.other_methods {
        add(format!("method {m}"), *n);
    }
    add("other host".into(), scan.other_hosts);
    add("body omitted".into(), scan.omitted_bodies);
    add("bad".into(), scan.bad);
    add("cached (HAR)".into(), scan.skipped.from_cache);
    add("not http (HAR)".into(), scan.skipped.not_http);
    add("response (GoReplay)".into(), scan.skipped.responses);
    ReplaySummary {
        files: scan
            .files
            .iter()
            .map(|f| {
                let format = match f.format {
                    Format::SynthJsonl => "synth-jsonl",
                    Format::Har => "har",
                    Format::Gor => "gor",
                };
                (f.path.display().to_string(), format.to_owned())
            })
            .collect(),
        records: scan.records,
        replayed_records: scan.replayable,
        not_replayed,
        recording_s: scan.span.as_secs_f64(),
        timing: match spec.timing {
            Timing::Recorded { speed } => format!("at the recorded pace ×{speed}"),
            Timing::Rate(rate) => format!("{rate} req/s"),
        },
        amplify: spec.amplify,
        looped: spec.looped,
        cap: match cap {
            None => "none (--no-cap)".into(),
            Some((share, CapSourceSpec::Query(q))) => {
                format!("{}% of real traffic (query `{q}`)", percent(*share))
            }
            Some((share, CapSourceSpec::Recording(recorded))) => format!(
                "{}% of real traffic (the recording's own rate, recorded at {}% of real traffic)",
                percent(*share),
                percent(*recorded)
            ),
        },
        scrubbed_headers: scan.scrubbed_headers.clone(),
        credentials_dropped: scan.credentials_dropped,
    }
}

/// A share as a percentage without float noise: 0.07 is `7`, not `7.000000000000001`.
fn percent(share: f64) -> String {
    let text = format!("{:.4}", share * 100.0);
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}
