//! What a replay sends, and in what order: the files read in time order (a k-way merge, so
//! rotated captures of several instances interleave as they happened), filtered (methods,
//! hosts, omitted bodies), rewritten for the target (base URL, headers set and dropped), and
//! handed to the engine as [`Feed`] items by a reader thread.
//!
//! Everything is read twice: once before the run by [`scan`] (every bad record found before
//! anything is sent, the counts, the hosts, the route rows, the recording's own rate for the
//! cap), then while it runs by [`spawn_reader`], which streams (a capture of any size replays
//! in bounded memory) and stops at what the scan saw, so a capture still being written replays
//! as it was when the replay started.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};

use super::Recorded;
use super::input::{BadRecord, Format, InputError, ReadOptions, Records, Skipped, read};
use super::routes::{Pattern, Routes};
use crate::rng::Rng;
use crate::scenario::Template;
use crate::scenario::template::{Values, Var};

/// When each request goes out.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Timing {
    /// The recorded inter-arrival times, `speed` times as fast.
    Recorded {
        /// 1 = as recorded, 2 = twice as fast.
        speed: f64,
    },
    /// A fixed rate of requests sent per second (copies included), timestamps ignored.
    Rate(f64),
}

/// Headers replay never sends as recorded: another run's marker and stale trace context; who the
/// recorded client was (a rate limiter, a fraud check or a log would blame real users' addresses
/// for the replay's traffic, and a forwarded host could choose what the target serves); a real
/// user's idempotency key (the target would answer that user's retry from the replay's result).
const ALWAYS_DROPPED: [&str; 16] = [
    "baggage",
    "traceparent",
    "tracestate",
    "synthetic-traffic-removed",
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-real-ip",
    "x-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "x-cluster-client-ip",
    "idempotency-key",
    "x-idempotency-key",
];

/// Whether a recorded header is a credential: one of synth's credential headers, or any header
/// whose value looks like one (a bearer token, a JWT). Dropped unless `--keep-credentials`, so a
/// replay never acts as the real user it recorded (a synth capture has dropped them already).
fn is_credential(name: &HeaderName, value: &HeaderValue) -> bool {
    synth_ctx::http::CREDENTIAL_HEADERS.contains(&name.as_str())
        || synth_ctx::http::looks_like_credential(value.as_bytes())
}

/// Everything that decides what a replay sends.
#[derive(Clone, Debug)]
pub(crate) struct Spec {
    /// The recordings, in any of the formats.
    pub(crate) files: Vec<PathBuf>,
    /// Base URL every recorded path is joined to (`http://host:port`, maybe with a path prefix).
    pub(crate) target: Uri,
    /// When requests go out.
    pub(crate) timing: Timing,
    /// Copies of each record (1.5: every other one twice).
    pub(crate) amplify: f64,
    /// Start again at the end.
    pub(crate) looped: bool,
    /// Methods replayed (default GET, HEAD, OPTIONS).
    pub(crate) methods: Vec<Method>,
    /// Only records sent to one of these hosts (`host` or `host:port`, any case); empty: all.
    pub(crate) hosts: Vec<String>,
    /// Headers set on every request (templates: `env()`, `uuid()`, `run`).
    pub(crate) set_headers: Vec<(HeaderName, Template)>,
    /// Headers removed from every request.
    pub(crate) drop_headers: Vec<HeaderName>,
    /// Send the credentials a HAR or GoReplay file recorded.
    pub(crate) keep_credentials: bool,
    /// Count bad records and go on, instead of refusing the replay.
    pub(crate) skip_bad: bool,
    /// Send records whose body the capture left out, without a body (else skipped).
    pub(crate) send_omitted: bool,
    /// Route patterns for the report's rows.
    pub(crate) routes: Vec<Pattern>,
    /// Limits on what the readers accept.
    pub(crate) read: ReadOptions,
    /// Silences in the recording longer than this are cut to it.
    pub(crate) max_gap: Duration,
}

/// Why a replay cannot start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum PlanError {
    /// A file cannot be opened or is none of the formats.
    #[error(transparent)]
    Input(#[from] InputError),
    /// A bad record, and no `--skip-bad`.
    #[error("{0} (--skip-bad counts bad records and goes on)")]
    Bad(BadRecord),
    /// Nothing left to send.
    #[error("nothing to replay: {0}")]
    Nothing(String),
    /// Not a regular file (a pipe, a device, a directory): it could not be read twice.
    #[error(
        "{0}: not a regular file (replay reads each file twice: first to check it, then to send it); copy it to a file first"
    )]
    NotAFile(String),
}

/// One file as the scan found it.
#[derive(Clone, Debug)]
pub(crate) struct FileScan {
    /// The file.
    pub(crate) path: Arc<Path>,
    /// Its format.
    pub(crate) format: Format,
    /// Records and bad records read (what the replay reads again, no more).
    pub(crate) items: u64,
    /// Which file it was when the scan opened it: a later pass refuses another one.
    pub(crate) identity: FileIdentity,
}

/// What tells a file apart from one put in its place: its device and inode, and its length (a
/// capture still being written may grow, not shrink).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct FileIdentity {
    dev: u64,
    ino: u64,
    len: u64,
}

impl FileIdentity {
    fn of(path: &Path) -> std::io::Result<(FileIdentity, bool)> {
        let meta = std::fs::metadata(path)?;
        #[cfg(unix)]
        let (dev, ino) = {
            use std::os::unix::fs::MetadataExt as _;
            (meta.dev(), meta.ino())
        };
        #[cfg(not(unix))]
        let (dev, ino) = (0, 0);
        Ok((FileIdentity { dev, ino, len: meta.len() }, meta.is_file()))
    }

    /// Whether `now` can still be the file this was (the same one, not shorter).
    fn still(&self, now: &FileIdentity) -> bool {
        self.dev == now.dev && self.ino == now.ino && now.len >= self.len
    }
}

/// What the recordings hold, found before anything is sent.
#[derive(Clone, Debug, Default)]
pub(crate) struct Scan {
    /// Per file.
    pub(crate) files: Vec<FileScan>,
    /// Records read (good ones).
    pub(crate) records: u64,
    /// Of which replayed.
    pub(crate) replayable: u64,
    /// Not replayed for their method, by method.
    pub(crate) other_methods: BTreeMap<String, u64>,
    /// Not replayed: sent to a host not chosen with `--host`.
    pub(crate) other_hosts: u64,
    /// Not replayed: the capture left the body out.
    pub(crate) omitted_bodies: u64,
    /// Bad records (only with `--skip-bad`; without, the first one is an error).
    pub(crate) bad: u64,
    /// Records the readers skipped as not requests (cached HAR entries, responses).
    pub(crate) skipped: Skipped,
    /// Hosts the replayable records were sent to, with counts.
    pub(crate) hosts: BTreeMap<String, u64>,
    /// Headers a capture scrubbed from replayable records, with counts (fill them with `--header`).
    pub(crate) scrubbed_headers: BTreeMap<String, u64>,
    /// Replayable records that carried credentials, dropped (`--keep-credentials` keeps them).
    pub(crate) credentials_dropped: u64,
    /// The report's rows, in order of first appearance.
    pub(crate) routes: Arc<Routes>,
    /// The recording's length: the last replayable record's offset from the first.
    pub(crate) span: Duration,
    /// Replayable records per second of the recording, by the second they were stamped (unix).
    pub(crate) per_second: BTreeMap<u64, u32>,
    /// Silences longer than the longest gap, cut to it: how many, and how long in all.
    pub(crate) gaps_cut: (u64, Duration),
    /// Records stamped more than the longest gap before a record earlier in the files: sent
    /// right after it, not at their time.
    pub(crate) backwards: u64,
}

impl Scan {
    /// The recording's own request rate around `stamped` (unix seconds, as a record's
    /// [`Prepared::stamped`]): replayable records per second over the 5 seconds centred on it,
    /// within the recording (fewer seconds at its ends), before amplification.
    pub(crate) fn recorded_rate_at(&self, stamped: f64) -> f64 {
        let (Some((&first, _)), Some((&last, _))) =
            (self.per_second.first_key_value(), self.per_second.last_key_value())
        else {
            return 0.0;
        };
        let at = (stamped.max(0.0) as u64).clamp(first, last);
        let (lo, hi) = (at.saturating_sub(2).max(first), at.saturating_add(2).min(last));
        let count: u64 = self.per_second.range(lo..=hi).map(|(_, &c)| u64::from(c)).sum();
        count as f64 / (hi - lo + 1) as f64
    }

    /// The mean rate of replayable records over the whole recording.
    pub(crate) fn mean_rate(&self) -> f64 {
        let secs = self.span.as_secs_f64().max(1.0);
        self.replayable as f64 / secs
    }
}

/// What becomes of a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    Replay,
    OtherMethod,
    OtherHost,
    OmittedBody,
}

fn fate(r: &Recorded, spec: &Spec) -> Fate {
    if !spec.methods.contains(&r.method) {
        return Fate::OtherMethod;
    }
    if !spec.hosts.is_empty() {
        let host = r.host.as_deref().unwrap_or("");
        let matches = |want: &String| {
            host.eq_ignore_ascii_case(want)
                || host.rsplit_once(':').is_some_and(|(h, _)| h.eq_ignore_ascii_case(want))
        };
        if !spec.hosts.iter().any(matches) {
            return Fate::OtherHost;
        }
    }
    if r.body_omitted && !spec.send_omitted {
        return Fate::OmittedBody;
    }
    Fate::Replay
}

/// The files' records in time order: the earliest head of all files first; a bad record as soon
/// as its file reaches it. Each file gives at most `limits[i]` items (records and bad ones).
struct Merge {
    files: Vec<Records<BufReader<File>>>,
    heads: Vec<Option<Result<Recorded, BadRecord>>>,
    left: Vec<u64>,
    /// Items read from each file.
    read: Vec<u64>,
}

impl Merge {
    fn open(paths: &[PathBuf], limits: Option<&[u64]>, opts: &ReadOptions) -> Result<Merge, InputError> {
        let files = paths.iter().map(|p| read(p, opts)).collect::<Result<Vec<_>, _>>()?;
        let left = match limits {
            Some(l) => l.to_vec(),
            None => vec![u64::MAX; files.len()],
        };
        Ok(Merge { heads: files.iter().map(|_| None).collect(), read: vec![0; files.len()], files, left })
    }

    fn skipped(&self) -> Skipped {
        self.files.iter().map(Records::skipped).fold(Skipped::default(), |a, b| Skipped {
            from_cache: a.from_cache + b.from_cache,
            not_http: a.not_http + b.not_http,
            responses: a.responses + b.responses,
        })
    }
}

impl Iterator for Merge {
    /// The file's index, and its item.
    type Item = (usize, Result<Recorded, BadRecord>);

    fn next(&mut self) -> Option<Self::Item> {
        for (i, file) in self.files.iter_mut().enumerate() {
            if self.heads[i].is_none() && self.left[i] > 0 {
                self.heads[i] = file.next();
                if self.heads[i].is_some() {
                    self.left[i] -= 1;
                    self.read[i] += 1;
                } else {
                    self.left[i] = 0;
                }
            }
        }
        let bad = self.heads.iter().position(|h| matches!(h, Some(Err(_))));
        let pick = bad.or_else(|| {
            (0..self.heads.len())
                .filter_map(|i| match &self.heads[i] {
                    Some(Ok(r)) => Some((r.at, i)),
                    _ => None,
                })
                .min()
                .map(|(_, i)| i)
        })?;
        Some((pick, self.heads[pick].take()?))
    }
}

/// The replay's clock over the recording: seconds from its first record, never back in time (a
/// file listed out of order, as HAR lists by start, replays in file order), with every silence
/// longer than `max_gap` cut to it (recordings made days apart do not wait out the days). The
/// scan and the reader use one each, so they agree on every offset.
#[derive(Clone, Debug)]
pub(crate) struct Clock {
    first: Option<SystemTime>,
    max_gap: f64,
    /// The last record's time from the first, as recorded.
    raw: f64,
    /// Seconds cut so far.
    cut: f64,
    /// The last offset given.
    last: f64,
    /// Silences cut.
    pub(crate) gaps_cut: u64,
    /// Records stamped more than `max_gap` before one that came earlier in the files.
    pub(crate) backwards: u64,
}

impl Clock {
    pub(crate) fn new(max_gap: Duration) -> Clock {
        Clock {
            first: None,
            max_gap: max_gap.as_secs_f64(),
            raw: 0.0,
            cut: 0.0,
            last: 0.0,
            gaps_cut: 0,
            backwards: 0,
        }
    }

    /// The offset of a record recorded `at`.
    pub(crate) fn offset(&mut self, at: SystemTime) -> f64 {
        let first = *self.first.get_or_insert(at);
        let raw = at.duration_since(first).map_or(0.0, |d| d.as_secs_f64());
        if raw - self.raw > self.max_gap {
            self.cut += raw - self.raw - self.max_gap;
            self.gaps_cut += 1;
        }
        if raw + self.max_gap < self.raw {
            self.backwards += 1;
        }
        self.raw = self.raw.max(raw);
        self.last = (raw - self.cut).max(self.last);
        self.last
    }

    /// Seconds of silence cut.
    pub(crate) fn cut(&self) -> f64 {
        self.cut
    }
}

/// The unix second a record was stamped in.
fn stamped_second(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A record's stamp in unix seconds.
fn stamped(at: SystemTime) -> f64 {
    at.duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Reads every file once: refuses the first bad record (unless `skip_bad`), counts what is
/// replayed and what is not and why, names the report's rows, and measures the recording.
pub(crate) fn scan(spec: &Spec) -> Result<Scan, PlanError> {
    let mut identities = Vec::with_capacity(spec.files.len());
    for path in &spec.files {
        let (identity, regular) = FileIdentity::of(path)
            .map_err(|source| PlanError::Input(InputError::Io { path: Arc::from(path.as_path()), source }))?;
        if !regular {
            return Err(PlanError::NotAFile(path.display().to_string()));
        }
        identities.push(identity);
    }
    let mut merge = Merge::open(&spec.files, None, &spec.read)?;
    let mut scan = Scan::default();
    let mut routes = Routes::new(spec.routes.clone());
    let mut items = vec![0u64; spec.files.len()];
    let mut clock = Clock::new(spec.max_gap);
    let mut prev = 0.0f64;
    for (i, item) in merge.by_ref() {
        items[i] += 1;
        let r = match item {
            Ok(r) => r,
            Err(bad) if spec.skip_bad => {
                scan.bad += 1;
                let _ = bad;
                continue;
            }
            Err(bad) => return Err(PlanError::Bad(bad)),
        };
        scan.records += 1;
        match fate(&r, spec) {
            Fate::OtherMethod => *scan.other_methods.entry(r.method.to_string()).or_default() += 1,
            Fate::OtherHost => scan.other_hosts += 1,
            Fate::OmittedBody => scan.omitted_bodies += 1,
            Fate::Replay => {
                scan.replayable += 1;
                prev = clock.offset(r.at);
                // The recording's rate is counted by when each request was stamped, not by when the
                // replay sends it: records out of order or silences cut do not pile up into a
                // rate the recording never had.
                let c = scan.per_second.entry(stamped_second(r.at)).or_default();
                *c = c.saturating_add(1);
                *scan
                    .hosts
                    .entry(r.host.clone().unwrap_or_else(|| "(no host recorded)".into()))
                    .or_default() += 1;
                for h in &r.scrubbed.headers {
                    *scan.scrubbed_headers.entry(h.to_string()).or_default() += 1;
                }
                if !spec.keep_credentials && r.headers.iter().any(|(k, v)| is_credential(k, v)) {
                    scan.credentials_dropped += 1;
                }
                routes.group(&r.method, &remove_dot_segments(r.uri.path()));
            }
        }
    }
    scan.skipped = merge.skipped();
    scan.span = Duration::from_secs_f64(prev);
    scan.gaps_cut = (clock.gaps_cut, Duration::from_secs_f64(clock.cut()));
    scan.backwards = clock.backwards;
    scan.files = spec
        .files
        .iter()
        .zip(&merge.files)
        .zip(items)
        .zip(identities)
        .map(|(((p, f), items), identity)| FileScan {
            path: Arc::from(p.as_path()),
            format: f.format(),
            items,
            identity,
        })
        .collect();
    scan.routes = Arc::new(routes);
    if scan.replayable == 0 {
        let mut why = format!("{} records read", scan.records);
        if !scan.other_methods.is_empty() {
            let m: Vec<String> = scan.other_methods.iter().map(|(m, n)| format!("{n} {m}")).collect();
            why.push_str(&format!(
                ", {} not replayed for their method (replayed: {}; --methods widens it)",
                m.join(", "),
                spec.methods.iter().map(Method::as_str).collect::<Vec<_>>().join(", ")
            ));
        }
        if scan.other_hosts > 0 {
            why.push_str(&format!(", {} sent to other hosts than --host", scan.other_hosts));
        }
        if scan.omitted_bodies > 0 {
            why.push_str(&format!(
                ", {} without their body (over the capture's limit; --send-omitted sends them without one)",
                scan.omitted_bodies
            ));
        }
        if scan.bad > 0 {
            why.push_str(&format!(", {} bad", scan.bad));
        }
        return Err(PlanError::Nothing(why));
    }
    Ok(scan)
}

/// One request to send, as many times as it has copies.
#[derive(Debug)]
pub(crate) struct Prepared {
    /// Seconds into the replay (loops add up), for recorded timing.
    pub(crate) offset: f64,
    /// When it was recorded (unix seconds), for the cap's recorded rate.
    pub(crate) stamped: f64,
    /// How many times to send it (amplification; 0 for a record amplification leaves out).
    pub(crate) copies: u32,
    /// The request.
    pub(crate) request: Arc<Request>,
}

/// A request ready to send, shared by its copies.
#[derive(Debug)]
pub(crate) struct Request {
    pub(crate) method: Method,
    pub(crate) uri: Uri,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    /// Its row in the report.
    pub(crate) row: usize,
}

/// What the reader thread hands the engine.
#[derive(Debug)]
pub(crate) enum Feed {
    /// The next requests, in order.
    Requests(Vec<Prepared>),
    /// The replay cannot go on (a file changed since the scan, a record bad now): why.
    Failed(String),
}

/// What `--header` templates may name: the run id (`{{ run }}`).
pub(crate) struct RunScope;

impl crate::scenario::template::Scope for RunScope {
    fn resolve(&self, name: &str) -> Option<Var> {
        (name == "run").then_some(Var::Run)
    }

    fn names(&self) -> Vec<String> {
        vec!["run".to_owned()]
    }
}

struct RunValues(String);

impl Values for RunValues {
    fn get(&self, var: &Var) -> &str {
        match var {
            Var::Run => &self.0,
            _ => "",
        }
    }
}

/// Amplification: how many copies each record gets, so that `n` records get `amplify × n`
/// copies, spread evenly (1.5: 1, 2, 1, 2, …; 0.5: every other record).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Amplifier {
    amplify: f64,
    owed: f64,
}

impl Amplifier {
    pub(crate) fn new(amplify: f64) -> Amplifier {
        Amplifier { amplify, owed: 0.0 }
    }

    /// Copies of the next record.
    pub(crate) fn next_copies(&mut self) -> u32 {
        self.owed += self.amplify;
        // Within a rounding error of a whole copy counts as it (10 × 0.1 is 0.9999…).
        let whole = (self.owed + 1e-9).floor();
        self.owed -= whole;
        whole as u32
    }
}

/// Most requests in one message from the reader: the engine wakes the reader once per batch,
/// not once per request (on one core, a hand-off per request cost more than the request).
const BATCH: usize = 256;

/// Most body bytes in one batch: with the channel's few batches, what the reader holds ahead.
const BATCH_BYTES: usize = 1 << 20;

/// How many batches the reader may be ahead of the engine.
pub(crate) const BATCHES_AHEAD: usize = 2;

/// A looping replay keeps its first pass in memory and sends it again, when the pass holds at
/// most this many requests and body bytes (else each pass reads the files again).
const LOOP_CACHE_REQUESTS: usize = 1 << 20;
const LOOP_CACHE_BYTES: usize = 64 << 20;

/// Starts the thread that reads the files again (as far as `scan` read them) and feeds the
/// engine in batches; it ends when the recording ends (or, with `looped`, never) or when `tx`
/// is closed.
pub(crate) fn spawn_reader(
    spec: Arc<Spec>,
    scan: Arc<Scan>,
    run_id: String,
    tx: tokio::sync::mpsc::Sender<Feed>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("loadgen-replay-reader".into()).spawn(move || {
        let mut out = Batcher { tx, batch: Vec::with_capacity(BATCH), bytes: 0 };
        let mut amplifier = Amplifier::new(spec.amplify);
        let mut rng = Rng::from_entropy();
        let values = RunValues(run_id);
        let limits: Vec<u64> = scan.files.iter().map(|f| f.items).collect();
        let pass_len = {
            let span = scan.span.as_secs_f64();
            let gap = if scan.replayable > 1 { span / (scan.replayable - 1) as f64 } else { 1.0 };
            span + gap.max(0.001)
        };
        // The first pass, kept for the next ones while it fits.
        let mut cache: Option<(Vec<Kept>, usize)> = spec.looped.then(|| (Vec::new(), 0));
        let mut pass = 0u64;
        loop {
            let base = pass as f64 * pass_len;
            if pass > 0
                && let Some((kept, _)) = &cache
            {
                for (prev, stamp, request) in kept {
                    let item = Prepared {
                        offset: base + prev,
                        stamped: *stamp,
                        copies: amplifier.next_copies(),
                        request: request.clone(),
                    };
                    if !out.push(item) {
                        return;
                    }
                }
                if !out.flush() {
                    return;
                }
                pass += 1;
                continue;
            }
            // The same files as the scan read, or the replay stops: a file replaced or cut short
            // since would send what nobody checked, under the scan's report rows.
            for f in &scan.files {
                match FileIdentity::of(&f.path) {
                    Ok((now, _)) if f.identity.still(&now) => {}
                    Ok(_) => {
                        out.fail(format!(
                            "{} was replaced or cut short since the replay started",
                            f.path.display()
                        ));
                        return;
                    }
                    Err(e) => {
                        out.fail(format!("{}: {e}", f.path.display()));
                        return;
                    }
                }
            }
            let mut merge = match Merge::open(&spec.files, Some(&limits), &spec.read) {
                Ok(m) => m,
                Err(e) => {
                    out.fail(format!("reading the recording again: {e}"));
                    return;
                }
            };
            let mut clock = Clock::new(spec.max_gap);
            let mut sent = 0u64;
            for (_, item) in merge.by_ref() {
                if out.tx.is_closed() {
                    return;
                }
                let r = match item {
                    Ok(r) => r,
                    Err(_) if spec.skip_bad => continue,
                    Err(bad) => {
                        out.fail(format!("{bad} (the file changed since it was read?)"));
                        return;
                    }
                };
                if fate(&r, &spec) != Fate::Replay {
                    continue;
                }
                let prev = clock.offset(r.at);
                let copies = amplifier.next_copies();
                let request = match prepare(&spec, &scan.routes, &r, &values, &mut rng) {
                    Ok(request) => Arc::new(request),
                    Err(why) => {
                        out.fail(format!("{}: {why}", r.source));
                        return;
                    }
                };
                if pass == 0
                    && let Some((kept, bytes)) = cache.as_mut()
                {
                    *bytes += request.body.len();
                    if kept.len() < LOOP_CACHE_REQUESTS && *bytes <= LOOP_CACHE_BYTES {
                        kept.push((prev, stamped(r.at), request.clone()));
                    } else {
                        cache = None;
                    }
                }
                sent += 1;
                if !out.push(Prepared { offset: base + prev, stamped: stamped(r.at), copies, request }) {
                    return;
                }
            }
            if let Some(f) =
                scan.files.iter().zip(&merge.read).find(|(f, read)| **read < f.items).map(|(f, _)| f)
            {
                out.fail(format!(
                    "{} holds fewer records than when the replay started: cut short?",
                    f.path.display()
                ));
                return;
            }
            if sent < scan.replayable {
                out.fail(format!(
                    "the recordings hold {sent} requests to replay, {} when the replay started: changed?",
                    scan.replayable
                ));
                return;
            }
            if !out.flush() || !spec.looped {
                return;
            }
            pass += 1;
        }
    })
}

/// A request of a looping replay's first pass, kept with its offset and its stamp.
type Kept = (f64, f64, Arc<Request>);

/// The reader's side of the channel: requests in batches.
struct Batcher {
    tx: tokio::sync::mpsc::Sender<Feed>,
    batch: Vec<Prepared>,
    bytes: usize,
}

impl Batcher {
    /// Adds a request, sending the batch when it is full; `false` once the engine is gone.
    fn push(&mut self, item: Prepared) -> bool {
        self.bytes += item.request.body.len();
        self.batch.push(item);
        if self.batch.len() >= BATCH || self.bytes >= BATCH_BYTES { self.flush() } else { true }
    }

    /// Sends what the batch holds; `false` once the engine is gone.
    fn flush(&mut self) -> bool {
        if self.batch.is_empty() {
            return true;
        }
        self.bytes = 0;
        let batch = std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH));
        self.tx.blocking_send(Feed::Requests(batch)).is_ok()
    }

    /// Sends what the batch holds, then why the replay cannot go on.
    fn fail(&mut self, why: String) {
        if self.flush() {
            let _ = self.tx.blocking_send(Feed::Failed(why));
        }
    }
}

/// The request a record becomes: joined to the target, headers dropped and set.
fn prepare(
    spec: &Spec,
    routes: &Routes,
    r: &Recorded,
    values: &RunValues,
    rng: &mut Rng,
) -> Result<Request, String> {
    let base = spec.target.to_string();
    // Dot segments resolved first: a recorded `/../` never climbs out of the target's path prefix.
    let path = remove_dot_segments(r.uri.path());
    let query = r.uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    let uri: Uri = format!("{}{path}{query}", base.trim_end_matches('/'))
        .parse()
        .map_err(|e| format!("the URL made from {} and {} is not valid: {e}", spec.target, r.uri))?;
    let mut headers = r.headers.clone();
    for name in ALWAYS_DROPPED {
        headers.remove(name);
    }
    // Every synth header (`synthetic-traffic`, `-path`, …): the replay's own marker is the only one.
    let mut gone: Vec<HeaderName> =
        headers.keys().filter(|k| k.as_str().starts_with("synthetic-traffic")).cloned().collect();
    if !spec.keep_credentials {
        gone.extend(headers.iter().filter(|(k, v)| is_credential(k, v)).map(|(k, _)| k.clone()));
    }
    gone.extend(spec.drop_headers.iter().cloned());
    for name in gone {
        headers.remove(name);
    }
    for (name, template) in &spec.set_headers {
        let value = template.render(values, rng);
        let value =
            HeaderValue::try_from(value).map_err(|_| format!("--header {name}: not a valid header value"))?;
        headers.insert(name.clone(), value);
    }
    Ok(Request {
        method: r.method.clone(),
        uri,
        headers,
        body: r.body.clone(),
        row: routes.find(&r.method, &path),
    })
}

/// A path with its `.` and `..` segments resolved (RFC 3986, 5.2.4), percent-encoded dots
/// included: what a gateway that normalises paths would route.
pub(crate) fn remove_dot_segments(path: &str) -> String {
    let is = |seg: &str, dots: &[&str]| dots.iter().any(|d| seg.eq_ignore_ascii_case(d));
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    let last = segments.len().saturating_sub(1);
    let mut trailing = false;
    for (i, seg) in segments.iter().enumerate() {
        if is(seg, &[".", "%2e"]) {
            trailing = i == last;
        } else if is(seg, &["..", ".%2e", "%2e.", "%2e%2e"]) {
            out.pop();
            trailing = i == last;
        } else {
            out.push(seg);
            trailing = false;
        }
    }
    let mut joined = format!("/{}", out.join("/"));
    if trailing && !joined.ends_with('/') {
        joined.push('/');
    }
    joined
}

/// What a replay should say before it starts: what it will not send as recorded.
pub(crate) fn warnings(spec: &Spec, scan: &Scan) -> Vec<String> {
    let mut w = Vec::new();
    let safe = [http::Method::GET, http::Method::HEAD, http::Method::OPTIONS];
    let changing: Vec<&str> =
        spec.methods.iter().filter(|m| !safe.contains(m)).map(http::Method::as_str).collect();
    if !changing.is_empty() {
        w.push(format!(
            "--methods replays {}: these change data. Every side effect they have must be covered by the \
             services' synth guards (payments, e-mails, writes tagged for synth-cleanup), or real \
             systems are changed by this replay",
            changing.join(", ")
        ));
    }
    let set: Vec<&str> = spec.set_headers.iter().map(|(n, _)| n.as_str()).collect();
    for (name, n) in &scan.scrubbed_headers {
        if !set.contains(&name.as_str()) {
            w.push(format!(
                "{n} recorded requests had `{name}` scrubbed by the capture: they go without it (set a test value with --header '{name}: …')"
            ));
        }
    }
    if scan.credentials_dropped > 0 {
        w.push(format!(
            "{} recorded requests carried credentials (authorization, cookie, …): dropped, so the replay does not act as the users it recorded (--header sets a test credential; --keep-credentials sends the recorded ones)",
            scan.credentials_dropped
        ));
    }
    if scan.hosts.len() > 1 && spec.hosts.is_empty() {
        let hosts: Vec<String> = scan.hosts.iter().take(5).map(|(h, n)| format!("{h} ({n})")).collect();
        w.push(format!(
            "the recordings hold requests to {} hosts ({}{}): all go to {} (--host keeps one)",
            scan.hosts.len(),
            hosts.join(", "),
            if scan.hosts.len() > 5 { ", …" } else { "" },
            spec.target
        ));
    }
    if scan.bad > 0 {
        w.push(format!("{} bad records skipped (--skip-bad)", scan.bad));
    }
    if scan.backwards > 0 {
        w.push(format!(
            "{} records are stamped more than --max-gap before a record that comes earlier in the files: each is sent right after it, not at its own time (are the files' clocks apart?)",
            scan.backwards
        ));
    }
    let (gaps, cut) = scan.gaps_cut;
    if gaps > 0 {
        w.push(format!(
            "{gaps} silences in the recordings were longer than --max-gap {}s and were cut to it ({:.0}s in all)",
            spec.max_gap.as_secs_f64(),
            cut.as_secs_f64()
        ));
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amplification_spreads_fractions_evenly() {
        let take = |a: f64, n: usize| {
            let mut amp = Amplifier::new(a);
            (0..n).map(|_| amp.next_copies()).collect::<Vec<_>>()
        };
        assert_eq!(take(1.0, 4), [1, 1, 1, 1]);
        assert_eq!(take(3.0, 3), [3, 3, 3]);
        assert_eq!(take(1.5, 4), [1, 2, 1, 2]);
        assert_eq!(take(0.5, 4), [0, 1, 0, 1]);
        // Ten records at 0.1 make exactly one copy, not none for a rounding error.
        assert_eq!(take(0.1, 10).iter().sum::<u32>(), 1);
        assert_eq!(take(2.3, 1000).iter().map(|&c| u64::from(c)).sum::<u64>(), 2300);
    }

    proptest::proptest! {
        /// n records at any amplification get floor(n × a) copies in all (to a rounding error),
        /// and no record gets more than ceil(a) of them.
        #[test]
        fn amplification_sends_what_it_says(a in 0.001f64..50.0, n in 1usize..2000) {
            let mut amp = Amplifier::new(a);
            let copies: Vec<u32> = (0..n).map(|_| amp.next_copies()).collect();
            let total: f64 = copies.iter().map(|&c| f64::from(c)).sum();
            proptest::prop_assert!((total - (n as f64 * a)).abs() <= 1.0, "{total} vs {}", n as f64 * a);
            proptest::prop_assert!(copies.iter().all(|&c| f64::from(c) <= a.ceil()));
        }
    }

    #[test]
    fn the_clock_never_goes_back_and_cuts_long_silences() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let at = |s: f64| t0 + Duration::from_secs_f64(s);
        let mut c = Clock::new(Duration::from_secs(10));
        let offsets: Vec<f64> = [0.0, 1.0, 0.5, 2.0, 3600.0, 3601.0, 3600.5, 90_000.0]
            .into_iter()
            .map(|s| c.offset(at(s)))
            .collect();
        // Out of order stays put; an hour's silence is 10 s, a day's another 10 s.
        assert_eq!(offsets, [0.0, 1.0, 1.0, 2.0, 12.0, 13.0, 13.0, 23.0]);
        assert_eq!(c.gaps_cut, 2);
        assert_eq!(c.cut(), (3600.0 - 2.0 - 10.0) + (90_000.0 - 3601.0 - 10.0));
    }

    #[test]
    fn the_recorded_rate_is_a_centred_mean_by_stamped_second() {
        let per_second: BTreeMap<u64, u32> =
            [10, 10, 10, 40, 40, 40, 40, 40].iter().enumerate().map(|(i, &c)| (1000 + i as u64, c)).collect();
        let scan = Scan { per_second, ..Scan::default() };
        assert_eq!(scan.recorded_rate_at(1000.0), 10.0);
        assert_eq!(scan.recorded_rate_at(1002.5), (10.0 * 3.0 + 40.0 * 2.0) / 5.0);
        assert_eq!(scan.recorded_rate_at(1007.9), 40.0);
        // Outside the recording: its ends.
        assert_eq!(scan.recorded_rate_at(1e9), 40.0);
        assert_eq!(scan.recorded_rate_at(0.0), 10.0);
        assert_eq!(Scan::default().recorded_rate_at(3.0), 0.0);
        // A silent second inside the recording counts as 0.
        let gap: BTreeMap<u64, u32> = [(10, 5), (14, 5)].into_iter().collect();
        assert_eq!(Scan { per_second: gap, ..Scan::default() }.recorded_rate_at(12.0), 2.0);
    }
}
