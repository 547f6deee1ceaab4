//! The invariants the demo prints and the end-to-end tests assert: what each service saw, real
//! versus synthetic, and that no synthetic request caused a real side effect.

use std::fmt::Write as _;

use serde_json::Value;

use synth_ctx::RunId;
use synth_guards::cleanup::{CleanupError, CleanupOptions, Selector, cleanup};

use crate::{
    catalog_v2,
    common::{CallError, get_text},
    store::{DARK_TABLES, DbCounts, SearchRows, Store, StoreError, TABLES},
    traffic::SEARCHES,
};

/// The `/stats` of every service.
#[derive(Clone, Debug, Default)]
pub struct ServiceStats {
    /// gateway.
    pub gateway: Value,
    /// catalog.
    pub catalog: Value,
    /// orders.
    pub orders: Value,
    /// payments.
    pub payments: Value,
    /// fraud.
    pub fraud: Value,
    /// The dark catalog-v2 (`Value::Null` when the shop runs without it).
    pub catalog_v2: Value,
}

impl ServiceStats {
    /// Reads `/stats` of each service; `services` maps names to base URLs.
    pub async fn fetch(services: &[(&str, String)]) -> Result<ServiceStats, CallError> {
        let mut s = ServiceStats::default();
        for (name, url) in services {
            let (_, body) = get_text(&format!("{url}/stats")).await?;
            let v: Value = serde_json::from_str(&body)?;
            match *name {
                "gateway" => s.gateway = v,
                "catalog" => s.catalog = v,
                "orders" => s.orders = v,
                "payments" => s.payments = v,
                "fraud" => s.fraud = v,
                "catalog-v2" => s.catalog_v2 = v,
                _ => {}
            }
        }
        Ok(s)
    }
}

/// Everything observed during a demo or test run.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    /// Service counters at the end of the load.
    pub stats: ServiceStats,
    /// Database rows before any traffic.
    pub db_start: DbCounts,
    /// Database rows after the load, before cleanup.
    pub db_before_cleanup: DbCounts,
    /// Database rows after cleanup.
    pub db_after_cleanup: DbCounts,
    /// Rows `synth-cleanup` said it deleted.
    pub purged: u64,
    /// Emails that arrived where mail goes (files or the SMTP sink), if counted.
    pub emails_arrived: Option<u64>,
    /// The forged-marker probe, if one was sent.
    pub forged: Option<Forged>,
    /// The gateway's `/metrics` text.
    pub gateway_metrics: String,
    /// loadgen's JSON report, if the load came from loadgen.
    pub loadgen: Option<Value>,
    /// The real users beside the load: (journeys with a failure, checkouts that made an order).
    pub real_users: Option<(u64, u64)>,
    /// The real users' searches: (sent, of which the dark answer is meant to differ).
    pub real_searches: Option<(u64, u64)>,
    /// The `searches` rows (catalog-v2's) before any traffic.
    pub dark_rows_start: SearchRows,
    /// The `searches` rows after the load, before cleanup.
    pub dark_rows_before_cleanup: SearchRows,
    /// The `searches` rows after `synth-cleanup --run dark-catalog-v2`.
    pub dark_rows_after_cleanup: SearchRows,
    /// Rows that cleanup deleted.
    pub dark_purged: u64,
    /// The replay of the gateway's capture onto the gateway, if one ran.
    pub replay: Option<ReplayObserved>,
}

/// A replay of the gateway's capture (real users' browsing) onto the gateway, with the capture
/// still on, and what the capture did meanwhile.
#[derive(Clone, Debug, Default)]
pub struct ReplayObserved {
    /// Recorded requests the replay read (the real users' `GET`s in the capture files).
    pub recorded: u64,
    /// Replayed requests sent (one per replay journey loadgen started).
    pub sent: u64,
    /// Of those, the answers that echoed the replay's run id (`synthetic-traffic-seen`).
    pub tagged: u64,
    /// Copies of each recorded request (2.0: each twice).
    pub amplify: f64,
    /// The cap, in words (`50% of real traffic (…)`).
    pub cap: String,
    /// The rate at which the cap held the replay back, if it did (requests/s).
    pub held_at: Option<f64>,
    /// The gateway capture's counters (`/stats` → `capture`), settled, before the replay.
    pub capture_before: Value,
    /// The same, settled, after the replay.
    pub capture_after: Value,
    /// Rows tagged with the replay's run id, after it (its `GET`s write none).
    pub rows_tagged: u64,
}

impl ReplayObserved {
    /// Records the capture wrote to its files during the replay: replayed requests captured
    /// again (the loop the capture must break). Must be 0.
    pub fn recaptured(&self) -> u64 {
        n(&self.capture_after, &["written"]).saturating_sub(n(&self.capture_before, &["written"]))
    }

    /// Requests the capture took into its queue during the replay (written or not).
    pub fn queued(&self) -> u64 {
        let path = ["requests", "queued"];
        n(&self.capture_after, &path).saturating_sub(n(&self.capture_before, &path))
    }

    /// Requests the capture skipped as synthetic during the replay.
    pub fn skipped_synthetic(&self) -> u64 {
        let path = ["requests", "synthetic"];
        n(&self.capture_after, &path).saturating_sub(n(&self.capture_before, &path))
    }
}

/// What the services and the database say once the load is over, before and after cleanup.
#[derive(Clone, Debug, Default)]
pub struct AfterLoad {
    /// Service counters.
    pub stats: ServiceStats,
    /// The gateway's `/metrics` text.
    pub gateway_metrics: String,
    /// Rows before cleanup.
    pub db_before_cleanup: DbCounts,
    /// Rows after cleanup.
    pub db_after_cleanup: DbCounts,
    /// Rows the cleanup deleted.
    pub purged: u64,
    /// catalog-v2's rows before its cleanup.
    pub dark_rows_before_cleanup: SearchRows,
    /// catalog-v2's rows after its cleanup.
    pub dark_rows_after_cleanup: SearchRows,
    /// catalog-v2's rows that its cleanup deleted.
    pub dark_purged: u64,
}

/// Why [`after_load`] could not finish.
#[derive(Debug, thiserror::Error)]
pub enum AfterLoadError {
    /// A service did not answer.
    #[error("reading the services' counters: {0}")]
    Call(#[from] CallError),
    /// The database.
    #[error("counting rows: {0}")]
    Store(#[from] StoreError),
    /// The cleanup.
    #[error("cleanup: {0}")]
    Cleanup(#[from] CleanupError),
    /// The dark run id is not a run id.
    #[error("dark run id: {0}")]
    RunId(#[from] synth_ctx::InvalidRunId),
}

/// Waits for confirmation emails in flight and for the gateway's mirror to settle, reads every
/// service's counters and the gateway's metrics, counts the rows, deletes `run`'s rows and the
/// dark catalog-v2's (what `synth-cleanup --run` does for each) and counts again.
pub async fn after_load(
    services: &[(&'static str, String)],
    store: &Store,
    database_url: &str,
    run: &RunId,
) -> Result<AfterLoad, AfterLoadError> {
    crate::traffic::wait_for_emails(services).await;
    crate::traffic::wait_for_mirror(services).await;
    let stats = ServiceStats::fetch(services).await?;
    let gateway = services.iter().find(|(n, _)| *n == "gateway").map_or("", |(_, u)| u.as_str());
    let (_, gateway_metrics) = get_text(&format!("{gateway}/metrics")).await?;
    let db_before_cleanup = store.counts(run.as_str()).await?;
    let tables = TABLES.iter().map(|t| (*t).to_owned()).collect();
    let report =
        cleanup(database_url, &CleanupOptions::new(tables, Selector::Run(run.clone())), &mut |_| {}).await?;
    let db_after_cleanup = store.counts(run.as_str()).await?;
    let dark_rows_before_cleanup = store.search_rows(catalog_v2::RUN).await?;
    let dark_run = RunId::new(catalog_v2::RUN)?;
    let tables = DARK_TABLES.iter().map(|t| (*t).to_owned()).collect();
    let dark =
        cleanup(database_url, &CleanupOptions::new(tables, Selector::Run(dark_run)), &mut |_| {}).await?;
    let dark_rows_after_cleanup = store.search_rows(catalog_v2::RUN).await?;
    Ok(AfterLoad {
        stats,
        gateway_metrics,
        db_before_cleanup,
        db_after_cleanup,
        purged: report.total_rows(),
        dark_rows_before_cleanup,
        dark_rows_after_cleanup,
        dark_purged: dark.total_rows(),
    })
}

impl From<AfterLoad> for Observed {
    fn from(a: AfterLoad) -> Self {
        Observed {
            stats: a.stats,
            gateway_metrics: a.gateway_metrics,
            db_before_cleanup: a.db_before_cleanup,
            db_after_cleanup: a.db_after_cleanup,
            purged: a.purged,
            dark_rows_before_cleanup: a.dark_rows_before_cleanup,
            dark_rows_after_cleanup: a.dark_rows_after_cleanup,
            dark_purged: a.dark_purged,
            ..Observed::default()
        }
    }
}

/// A checkout sent by hand with a forged marker.
#[derive(Clone, Debug, Default)]
pub struct Forged {
    /// The gateway's answer (403 expected).
    pub status: u16,
    /// Orders, charges and emails counted before and after it: must be equal.
    pub effects_before: (u64, u64, u64),
    /// See `effects_before`.
    pub effects_after: (u64, u64, u64),
}

/// One line of the verification table.
#[derive(Clone, Debug)]
pub struct Check {
    /// What is checked.
    pub what: &'static str,
    /// Real count (or value).
    pub real: String,
    /// Synthetic count (or value).
    pub synthetic: String,
    /// Whether it holds.
    pub ok: bool,
    /// Why, briefly.
    pub note: String,
}

fn n(v: &Value, path: &[&str]) -> u64 {
    path.iter().try_fold(v, |v, k| v.get(k)).and_then(Value::as_u64).unwrap_or(0)
}

/// `(real, synthetic)` at a path that holds a split count.
fn split(v: &Value, path: &[&str]) -> (u64, u64) {
    let mut real = path.to_vec();
    real.push("real");
    let mut synthetic = path.to_vec();
    synthetic.push("synthetic");
    (n(v, &real), n(v, &synthetic))
}

/// The `_count` of `shop_http_request_duration_seconds` for `service`, by the `synthetic` label.
pub fn duration_counts(metrics: &str, service: &str) -> (u64, u64) {
    let mut out = (0, 0);
    let service = format!("service=\"{service}\"");
    for line in metrics.lines().filter(|l| l.starts_with("shop_http_request_duration_seconds_count{")) {
        if !line.contains(&service) {
            continue;
        }
        let value = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) as u64;
        if line.contains("synthetic=\"true\"") {
            out.1 += value;
        } else if line.contains("synthetic=\"false\"") {
            out.0 += value;
        }
    }
    out
}

fn check(
    what: &'static str,
    real: impl ToString,
    synthetic: impl ToString,
    ok: bool,
    note: impl Into<String>,
) -> Check {
    Check { what, real: real.to_string(), synthetic: synthetic.to_string(), ok, note: note.into() }
}

/// Counters every service's `/stats` must report: a missing one would read as 0 and pass.
const REQUIRED: [(&str, &[&str]); 5] = [
    (
        "gateway",
        &[
            "requests.real",
            "requests.synthetic",
            "requests.rejected",
            "calls.catalog.real",
            "calls.orders.real",
        ],
    ),
    ("catalog", &["requests.real", "requests.synthetic", "requests.rejected"]),
    (
        "orders",
        &[
            "requests.real",
            "orders.real",
            "orders.synthetic",
            "charges.real",
            "charges.synthetic",
            "charges_suppressed",
            "fraud_blocked",
            "emails_delivered.real",
            "emails_delivered.synthetic",
            "emails_suppressed",
            "emails_failed",
            "emails_pending",
            "context_lost",
        ],
    ),
    ("payments", &["recorded.real", "recorded.synthetic"]),
    ("fraud", &["recorded.real", "recorded.synthetic"]),
];

fn missing(s: &ServiceStats) -> Vec<String> {
    let mut out = Vec::new();
    for (service, paths) in REQUIRED {
        let v = match service {
            "gateway" => &s.gateway,
            "catalog" => &s.catalog,
            "orders" => &s.orders,
            "payments" => &s.payments,
            _ => &s.fraud,
        };
        for p in paths {
            let path: Vec<&str> = p.split('.').collect();
            if path.iter().try_fold(v, |v, k| v.get(k)).and_then(Value::as_u64).is_none() {
                out.push(format!("{service}:{p}"));
            }
        }
    }
    out
}

/// Every invariant, in the order the table shows them.
pub fn checks(o: &Observed) -> Vec<Check> {
    let s = &o.stats;
    let mut out = Vec::new();
    let gaps = missing(s);
    out.push(check(
        "every service reported its counters",
        "-",
        "-",
        gaps.is_empty(),
        if gaps.is_empty() {
            "all /stats fields present".to_owned()
        } else {
            format!("missing: {}", gaps.join(", "))
        },
    ));
    if let Some((errors, checkouts)) = o.real_users {
        out.push(check(
            "real users served",
            format!("{checkouts} orders"),
            "-",
            errors == 0 && checkouts > 0,
            format!("{errors} real journeys failed"),
        ));
    }
    let gw = split(&s.gateway, &["requests"]);
    out.push(check(
        "requests at gateway",
        gw.0,
        gw.1,
        gw.0 > 0 && gw.1 > 0 && n(&s.gateway, &["requests", "rejected"]) <= 1,
        "both kinds of traffic arrived; only the forged probe was refused",
    ));
    // loadgen's own gRPC steps call the catalogue directly: each answered call is one more
    // synthetic request there that the gateway did not send, and its preflight (not in the
    // report) may add one per gRPC step. The real counts still match exactly: a synthetic call
    // that lost its marker, or a real one that gained one, moves them.
    let direct: u64 = o
        .loadgen
        .as_ref()
        .and_then(|r| r["total"]["grpc_status_codes"].as_object())
        .map_or(0, |codes| codes.values().filter_map(Value::as_u64).sum());
    for (name, stats, calls) in [("catalog", &s.catalog, "catalog"), ("orders", &s.orders, "orders")] {
        let seen = split(stats, &["requests"]);
        let sent = split(&s.gateway, &["calls", calls]);
        let clean = n(stats, &["requests", "rejected"]) == 0;
        let (ok, note) = if name == "catalog" && direct > 0 {
            (
                seen.0 == sent.0 && seen.1 >= sent.1 + direct && clean,
                format!(
                    "gateway sent {} real, {} synthetic, loadgen {direct} over gRPC (and its preflight's): every hop saw the marker, no real call gained one",
                    sent.0, sent.1
                ),
            )
        } else {
            (
                seen == sent && clean,
                format!(
                    "gateway sent {} real, {} synthetic: every hop saw the marker, no real call gained one",
                    sent.0, sent.1
                ),
            )
        };
        out.push(check(
            if name == "catalog" {
                "requests at catalog (gRPC hop)"
            } else {
                "requests at orders (HTTP hop)"
            },
            seen.0,
            seen.1,
            ok,
            note,
        ));
    }
    if let Some(report) = &o.loadgen {
        let responses = n(report, &["total", "responses"]);
        let tagged = n(report, &["total", "tagged"]);
        out.push(check(
            "tagging coverage (loadgen)",
            "-",
            format!("{tagged}/{responses}"),
            responses > 0 && tagged == responses,
            "every synthetic response echoed synthetic-traffic-seen",
        ));
    }
    let orders = split(&s.orders, &["orders"]);
    let rows_real =
        o.db_before_cleanup.orders.real - o.db_start.orders.real.min(o.db_before_cleanup.orders.real);
    let rows_syn = o.db_before_cleanup.orders.synthetic
        - o.db_start.orders.synthetic.min(o.db_before_cleanup.orders.synthetic);
    out.push(check(
        "orders stored",
        orders.0,
        orders.1,
        orders.0 > 0 && orders.1 > 0 && rows_real == orders.0 && rows_syn == orders.1,
        format!("{rows_real} untagged rows, {rows_syn} tagged rows"),
    ));
    let charges = split(&s.payments, &["recorded"]);
    let suppressed = n(&s.orders, &["charges_suppressed"]);
    out.push(check(
        "charges at payment provider",
        charges.0,
        charges.1,
        charges.0 > 0
            && charges.1 == 0
            && charges.0 == split(&s.orders, &["charges"]).0
            && suppressed == orders.1,
        format!("{suppressed} suppressed by the payment.charge guard"),
    ));
    let fraud = split(&s.fraud, &["recorded"]);
    let blocked = n(&s.orders, &["fraud_blocked"]);
    out.push(check(
        "fraud-check calls (third party)",
        fraud.0,
        fraud.1,
        fraud.0 > 0 && fraud.1 == 0 && fraud.0 == orders.0 && blocked == orders.1,
        format!("{blocked} answered by the third-party guard"),
    ));
    let delivered = split(&s.orders, &["emails_delivered"]);
    let email_suppressed = n(&s.orders, &["emails_suppressed"]);
    let arrived_ok = o.emails_arrived.is_none_or(|a| a == delivered.0 + delivered.1);
    out.push(check(
        "emails sent (from a spawned task)",
        delivered.0,
        delivered.1,
        delivered.0 > 0
            && delivered.1 == 0
            && delivered.0 == orders.0
            && email_suppressed == orders.1
            && n(&s.orders, &["emails_failed"]) == 0
            && n(&s.orders, &["emails_pending"]) == 0
            && arrived_ok,
        match o.emails_arrived {
            Some(a) => format!("{email_suppressed} suppressed; {a} arrived"),
            None => format!("{email_suppressed} suppressed"),
        },
    ));
    let lost = n(&s.orders, &["context_lost"]);
    out.push(check(
        "context lost",
        "-",
        lost,
        lost == 0,
        "no synthetic input (test card, reserved address) seen without its marker, charge or email",
    ));
    let tagged = o.db_before_cleanup.tagged_by_run;
    out.push(check(
        "rows tagged, purged by cleanup",
        "-",
        format!("{tagged} -> {}", o.db_after_cleanup.tagged_by_run),
        tagged > 0 && o.purged == tagged && o.db_after_cleanup.tagged_by_run == 0,
        format!("synth-cleanup deleted {} rows", o.purged),
    ));
    let b = &o.db_before_cleanup;
    let a = &o.db_after_cleanup;
    out.push(check(
        "real rows intact",
        format!("{} rows", a.orders.real + a.lines.real),
        "-",
        b.real_checksum == a.real_checksum && b.orders.real == a.orders.real && b.lines.real == a.lines.real,
        format!("checksum {} before and after", a.real_checksum),
    ));
    if let Some(f) = &o.forged {
        out.push(check(
            "forged marker refused",
            "-",
            f.status,
            f.status == 403 && f.effects_before == f.effects_after,
            "no order, charge or email followed it",
        ));
    }
    let d = duration_counts(&o.gateway_metrics, "gateway");
    out.push(check(
        "request-duration metric split",
        d.0,
        d.1,
        d.0 > 0 && d.1 > 0,
        "shop_http_request_duration_seconds{synthetic=...}",
    ));
    if let Some(mirror) = s.gateway.get("mirror") {
        out.extend(dark_checks(o, mirror));
    }
    if let Some(replay) = &o.replay {
        out.extend(replay_checks(s, replay));
    }
    out
}

/// The two replay lines: the replayed requests (sent, tagged, verified `replay` at the gateway,
/// capped, no rows), and the replayed requests the gateway's capture recorded again (none).
fn replay_checks(s: &ServiceStats, r: &ReplayObserved) -> [Check; 2] {
    // Nothing but the replay sends `replay` markers to the gateway.
    let verified = n(&s.gateway, &["requests_by_origin", "replay"]);
    let cap = match r.held_at {
        Some(rate) => format!("cap {} held it at {rate:.1} req/s", r.cap),
        None => format!("cap {}, not reached", r.cap),
    };
    let sent = check(
        "replayed requests",
        r.recorded,
        r.sent,
        r.sent > 0 && r.tagged == r.sent && verified == r.sent && r.rows_tagged == 0,
        format!(
            "real GETs captured at the gateway, replayed ×{}: {}/{} tagged `replay` (echoed), {verified} verified \
             `replay` at the gateway; {cap}; {} rows tagged (GETs write none)",
            r.amplify, r.tagged, r.sent, r.rows_tagged
        ),
    );
    let recaptured = r.recaptured();
    let skipped = r.skipped_synthetic();
    let again = check(
        "replayed requests re-captured",
        "-",
        recaptured,
        r.sent > 0 && recaptured == 0 && r.queued() == 0 && skipped == r.sent,
        format!(
            "the capture file gained {recaptured} records during the replay; {skipped} requests skipped as synthetic"
        ),
    );
    [sent, again]
}

/// The JSON paths at which catalog-v2's answers to the real users' searches are meant to
/// differ from the gateway's.
pub fn expected_dark_paths() -> Vec<String> {
    let mut paths: Vec<String> = SEARCHES.iter().filter_map(|q| catalog_v2::differing_path(q)).collect();
    paths.sort();
    paths.dedup();
    paths
}

/// The two dark-traffic lines: the copies and their side effects, and the answers that differ.
fn dark_checks(o: &Observed, mirror: &Value) -> [Check; 2] {
    let s = &o.stats;
    let v2 = &s.catalog_v2;
    let sent = n(mirror, &["requests", "queued"]);
    let answered = n(mirror, &["dark", "answered"]);
    let skipped = n(mirror, &["requests", "synthetic"]);
    let dark_seen = n(v2, &["searches_by_origin", "dark"]);
    let verified = n(v2, &["verified_by_origin", "dark"]);
    let not_dark = n(v2, &["searches", "real"])
        + n(v2, &["searches_by_origin", "load"])
        + n(v2, &["searches_by_origin", "replay"])
        + n(v2, &["requests", "rejected"]);
    let executed = n(v2, &["analytics_guard", "executed"]) + n(v2, &["analytics_published"]);
    let suppressed = n(v2, &["analytics_guard", "suppressed"]);
    let start = &o.dark_rows_start;
    let before = &o.dark_rows_before_cleanup;
    let untagged = before.rows.real.saturating_sub(start.rows.real);
    let tagged = before.tagged_by_run.saturating_sub(start.tagged_by_run);
    let left = o.dark_rows_after_cleanup.tagged_by_run;
    // A load test's searches reached the gateway: the mirror must have skipped them.
    let load_skipped = o.loadgen.is_none() || skipped > 0;
    let all_real_sent = o.real_searches.is_none_or(|(searches, _)| sent == searches);
    let copies = check(
        "dark requests",
        o.real_searches.map_or_else(|| "-".to_owned(), |(searches, _)| searches.to_string()),
        sent,
        sent > 0
            && answered == sent
            && dark_seen == sent
            && verified == sent
            && not_dark == 0
            && executed == 0
            && suppressed == sent
            && untagged == 0
            && tagged == sent
            && left == 0
            && o.dark_purged == tagged
            && load_skipped
            && all_real_sent,
        format!(
            "real searches copied: {verified} verified `dark` at catalog-v2, {not_dark} not; side effects {executed} \
             ({suppressed} suppressed by {}, {untagged} untagged rows, {tagged} tagged rows, {} purged); \
             {skipped} synthetic searches not mirrored",
            catalog_v2::ANALYTICS_GUARD,
            o.dark_purged
        ),
    );
    let mismatches = n(mirror, &["compared", "mismatch"]);
    let matches = n(mirror, &["compared", "match"]);
    let other = n(mirror, &["compared", "real_incomplete"]) + n(mirror, &["compared", "too_large"]);
    let paths: Vec<String> = mirror
        .get("mismatch_paths")
        .and_then(Value::as_object)
        .map_or_else(Vec::new, |p| p.keys().cloned().collect());
    let expected_paths = expected_dark_paths();
    let paths_ok = !paths.is_empty() && paths.iter().all(|p| expected_paths.contains(p));
    let counts_ok = match o.real_searches {
        Some((searches, differing)) => {
            mismatches == differing && matches == searches - differing.min(searches)
        }
        None => true,
    };
    let expected = o.real_searches.map_or_else(|| "?".to_owned(), |(_, d)| d.to_string());
    let differing = check(
        "dark answers differing",
        "-",
        format!("{mismatches}/{}", mismatches + matches + other),
        mismatches > 0 && other == 0 && paths_ok && counts_ok,
        format!(
            "at {} (expected {expected}: the searches that include product {}; {} ignored)",
            if paths.is_empty() { "no path".to_owned() } else { paths.join(", ") },
            catalog_v2::REPRICED,
            catalog_v2::IGNORED
        ),
    );
    [copies, differing]
}

/// The table, one line per check.
pub fn table(checks: &[Check]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:<36} {:>10} {:>14}  result note", "check", "real", "synthetic");
    for c in checks {
        let result = if c.ok { "ok" } else { "FAIL" };
        let _ = writeln!(out, "{:<36} {:>10} {:>14}  {:<6} {}", c.what, c.real, c.synthetic, result, c.note);
    }
    out
}

/// Orders, charges and emails so far: `(orders stored, charges at the provider, emails delivered)`.
pub fn effects(s: &ServiceStats) -> (u64, u64, u64) {
    let (r, sy) = split(&s.orders, &["orders"]);
    let (cr, cs) = split(&s.payments, &["recorded"]);
    let (er, es) = split(&s.orders, &["emails_delivered"]);
    (r + sy, cr + cs, er + es)
}
