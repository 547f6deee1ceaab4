//! One journey: its steps, captures, cookies and expectations.

use std::sync::{Arc, atomic::Ordering};

use bytes::Bytes;
use futures_util::FutureExt as _;
use http::{HeaderValue, Request, Response, header};
use http_body_util::Full;
use tokio::time::Instant;

use super::{Shared, client::Conn};
use crate::{
    rng::Rng,
    scenario::{
        Body, Capture, JsonTemplate, Step,
        template::{Values, Var},
        walk::{self, Action},
    },
    stats::{ErrorClass, Outcome},
};

struct State {
    captures: Vec<Option<String>>,
    rows: Vec<Option<Arc<[String]>>>,
    cookies: Vec<(String, String)>,
    run: String,
    /// When the next request was meant to be sent, for the first request of the journey.
    intended: Option<Instant>,
}

impl Values for State {
    fn get(&self, var: &Var) -> &str {
        match var {
            Var::Capture(i) => self.captures.get(*i).and_then(|c| c.as_deref()).unwrap_or(""),
            Var::Data(f, c) => {
                self.rows.get(*f).and_then(|r| r.as_ref()).and_then(|r| r.get(*c)).map_or("", String::as_str)
            }
            Var::Run => &self.run,
        }
    }
}

/// A request in flight: counted in [`Shared::in_flight`] until its outcome is recorded, and
/// recorded as cancelled if its future is dropped before it finishes. Recording and uncounting
/// happen together under [`Shared::settle`], so a run that stops without waiting for every
/// cancelled journey still counts each request exactly once.
pub(super) struct InFlight<'a> {
    shared: &'a Shared,
    step: usize,
    done: bool,
}

impl<'a> InFlight<'a> {
    pub(super) fn start(shared: &'a Shared, step: usize) -> Self {
        if let Some(n) = shared.stats.in_flight(step) {
            n.fetch_add(1, Ordering::SeqCst);
        }
        InFlight { shared, step, done: false }
    }

    pub(super) fn finish(&mut self, outcome: Outcome) {
        if self.done {
            return;
        }
        self.done = true;
        let _settle = self.shared.settle.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        self.shared.stats.record(self.step, outcome);
        if let Some(n) = self.shared.stats.in_flight(self.step) {
            n.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.finish(Outcome::unanswered(ErrorClass::Cancelled));
    }
}

/// Decrements the active-journey count however the journey ends (even if aborted).
pub(super) struct Active<'a>(pub(super) &'a Shared);

impl Drop for Active<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Runs a journey. `conn` is the caller's own connection (closed-model users keep one);
/// `None` uses the shared pool.
pub(super) async fn run(
    shared: Arc<Shared>,
    journey: usize,
    intended: Instant,
    rng: Rng,
    conn: Option<Arc<std::sync::Mutex<Option<Conn>>>>,
) {
    let _active = Active(&shared);
    let scenario = shared.scenario.clone();
    let Some(j) = scenario.journeys.get(journey) else { return };
    let tally = shared.journeys.get(journey);
    if let Some(t) = tally {
        t.started.fetch_add(1, Ordering::Relaxed);
    }
    if let Some(code) = &j.code {
        let user = super::user::User::new(shared.clone(), journey, j.cookies, intended, rng, conn);
        // A panic in journey code (an `unwrap` on an answer) is that journey's failure, with
        // its message, not a cancellation nobody asked for.
        let result = match std::panic::AssertUnwindSafe(code.call(user)).catch_unwind().await {
            Ok(result) => result,
            Err(panic) => {
                let why = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic".to_owned());
                Err(format!("panicked: {why}").into())
            }
        };
        let counter = if result.is_ok() { &shared.completed } else { &shared.failed };
        counter.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = tally {
            t.finish(result.err().map(|e| e.to_string()));
        }
        return;
    }
    let mut own_conn =
        conn.as_ref().and_then(|c| c.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take());
    let mut rows = vec![None; scenario.feeders.len()];
    let mut rng = rng;
    for &f in &j.feeders_used {
        let feeder = &scenario.feeders[f];
        let n = feeder.rows.len();
        let i = match feeder.order {
            crate::scenario::Order::Sequential => {
                shared.feeder_cursors[f].fetch_add(1, Ordering::Relaxed) % n
            }
            crate::scenario::Order::Random => rng.below(n as u64) as usize,
        };
        rows[f] = Some(feeder.rows[i].clone());
    }
    let mut state = State {
        captures: vec![None; j.captures.len()],
        rows,
        cookies: Vec::new(),
        run: shared.run_id.clone(),
        intended: Some(intended),
    };
    let mut io = Io { conn: &mut own_conn, dedicated: conn.is_some() };
    // Boxed, as the steps always were: the journey's spawned future stays small whatever a
    // request's future holds.
    let failed = Box::pin(run_steps(&shared, &j.steps, j.cookies, &mut state, &mut rng, &mut io)).await;
    if let Some(slot) = &conn {
        *slot.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = own_conn;
    }
    // Cut short by the run's stop before its next request: cancelled, as a journey the stop
    // aborts is, not failed (counted by what is left: started − completed − failed).
    if matches!(failed, Some((_, ErrorClass::Cancelled))) && shared.stopped.load(Ordering::SeqCst) {
        return;
    }
    let counter = if failed.is_none() { &shared.completed } else { &shared.failed };
    counter.fetch_add(1, Ordering::Relaxed);
    if let Some(t) = tally {
        t.finish(failed.map(|(stat, class)| {
            let step = shared.stats.name(stat).unwrap_or_else(|| Arc::from("?"));
            format!("{step}: {}", class.as_str())
        }));
    }
}

/// Runs `steps` in order, loops unrolled, up to the first request that fails: its step and
/// failure, or `None` when every request passed.
async fn run_steps(
    shared: &Shared,
    steps: &[Step],
    cookies: bool,
    state: &mut State,
    rng: &mut Rng,
    io: &mut Io<'_>,
) -> Option<(usize, ErrorClass)> {
    for visit in walk::run_order(steps) {
        match visit.action {
            Action::Think(d) => {
                // A request after a think was meant to go out when the think ends.
                state.intended = state.intended.map(|t| t + d);
                tokio::time::sleep(d).await;
            }
            Action::Request(r) => {
                if let Err(class) = request(shared, r, cookies, state, rng, io).await {
                    return Some((r.stat, class));
                }
            }
            Action::Grpc(g) => {
                let intended = state.intended.take();
                // Boxed: a tonic call's future is large, and most journeys make none.
                match Box::pin(super::grpc::call(shared, g, &*state, rng, intended)).await {
                    Ok(captured) => {
                        for (slot, value) in captured {
                            state.captures[slot] = Some(value);
                        }
                    }
                    Err(class) => return Some((g.stat, class)),
                }
            }
        }
    }
    None
}

fn build(
    shared: &Shared,
    r: &crate::scenario::Request,
    cookies: bool,
    state: &State,
    rng: &mut Rng,
) -> Option<Request<Full<Bytes>>> {
    let uri: http::Uri = match &r.fixed_uri {
        // A literal URL was parsed when the scenario loaded: cloning it is a reference count.
        Some(uri) => uri.clone(),
        None => {
            let path = r.url.render(state, rng);
            if path.starts_with("http://") || path.starts_with("https://") {
                path.parse().ok()?
            } else {
                let base = shared.base.as_str();
                let sep = if path.starts_with('/') { "" } else { "/" };
                let mut full = String::with_capacity(base.len() + sep.len() + path.len());
                full.push_str(base);
                full.push_str(sep);
                full.push_str(&path);
                full.parse().ok()?
            }
        }
    };
    let mut req = Request::builder().method(r.method.clone()).uri(uri);
    let headers = req.headers_mut()?;
    let marker = shared.marker.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
    headers.insert(synth_ctx::http::SYNTHETIC_TRAFFIC, marker);
    for (name, value) in &r.headers {
        let v = value.render(state, rng);
        headers.insert(name.clone(), HeaderValue::try_from(v).ok()?);
    }
    if cookies && !state.cookies.is_empty() {
        let jar: Vec<String> = state.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
        headers.insert(header::COOKIE, HeaderValue::try_from(jar.join("; ")).ok()?);
    }
    let body = match &r.body {
        Body::Empty => Bytes::new(),
        Body::Text(t) => Bytes::from(t.render(state, rng)),
        Body::Json(j) => {
            let v = render_json(j, state, rng);
            if !headers.contains_key(header::CONTENT_TYPE) {
                headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
            }
            Bytes::from(serde_json::to_vec(&v).ok()?)
        }
    };
    req.body(Full::new(body)).ok()
}

pub(super) fn render_json(j: &JsonTemplate, values: &dyn Values, rng: &mut Rng) -> serde_json::Value {
    match j {
        JsonTemplate::Fixed(v) => v.clone(),
        JsonTemplate::String(t) => serde_json::Value::String(t.render(values, rng)),
        JsonTemplate::Array(a) => {
            serde_json::Value::Array(a.iter().map(|x| render_json(x, values, rng)).collect())
        }
        JsonTemplate::Object(o) => serde_json::Value::Object(
            o.iter().map(|(k, x)| (k.clone(), render_json(x, values, rng))).collect(),
        ),
    }
}

/// How a journey sends: over its user's own connection, or through the pool.
pub(super) struct Io<'c> {
    conn: &'c mut Option<Conn>,
    dedicated: bool,
}

async fn request(
    shared: &Shared,
    r: &crate::scenario::Request,
    cookies: bool,
    state: &mut State,
    rng: &mut Rng,
    io: &mut Io<'_>,
) -> Result<(), ErrorClass> {
    let Some(req) = build(shared, r, cookies, state, rng) else {
        shared.stats.record(r.stat, Outcome::unanswered(ErrorClass::Expectation));
        observe(shared, r, None, Some(ErrorClass::Expectation), None);
        return Err(ErrorClass::Expectation);
    };
    if !shared.may_send() {
        // Stopped while this journey was between steps: the journey is about to be cancelled,
        // and nothing may reach the target after a stop (nor past a preflight's budget).
        shared.stats.record(r.stat, Outcome::unanswered(ErrorClass::Cancelled));
        return Err(ErrorClass::Cancelled);
    }
    let intended = state.intended.take().unwrap_or_else(Instant::now);
    let mut in_flight = InFlight::start(shared, r.stat);
    let result =
        if io.dedicated { shared.client.send_on(io.conn, req).await } else { shared.client.send(req).await };
    let latency_us = u64::try_from(intended.elapsed().as_micros()).unwrap_or(u64::MAX);
    let res = match result {
        Ok(res) => res,
        Err(class) => {
            in_flight.finish(Outcome::unanswered(class));
            observe(shared, r, None, Some(class), None);
            return Err(class);
        }
    };
    let status = res.status().as_u16();
    let (tagged, shed) = marks(shared, &res);
    if cookies {
        remember_cookies(&res, &mut state.cookies);
    }
    let error = check(r, &res, state);
    in_flight.finish(Outcome {
        latency_us: Some(latency_us),
        status: Some(status),
        grpc_status: None,
        error,
        tagged,
        shed,
    });
    observe(shared, r, Some(status), error, Some((&res, tagged)));
    error.map_or(Ok(()), Err)
}

/// What an answer says of the run's marker: whether it echoed this run's id
/// (`synthetic-traffic-seen`, tagged) and whether the target shed it (`synthetic-traffic-shed`).
pub(super) fn marks(shared: &Shared, res: &Response<Bytes>) -> (bool, bool) {
    let h = res.headers();
    let tagged = h
        .get(synth_ctx::http::SYNTHETIC_TRAFFIC_SEEN)
        .is_some_and(|v| v.as_bytes() == shared.run_id.as_bytes());
    let shed = h.get(synth_ctx::http::SYNTHETIC_TRAFFIC_SHED).is_some_and(|v| v.as_bytes() == b"1");
    (tagged, shed)
}

/// Preflight: keeps what the answer said about hops and guards.
fn observe(
    shared: &Shared,
    r: &crate::scenario::Request,
    status: Option<u16>,
    error: Option<ErrorClass>,
    res: Option<(&Response<Bytes>, bool)>,
) {
    if shared.observe.is_none() {
        return;
    }
    let step = shared.scenario.step_names.get(r.stat).cloned().unwrap_or_else(|| Arc::from("?"));
    record_observation(shared, step, status, error, res, &r.expect_path, &r.expect_guards);
}

/// Preflight: keeps what an answer (if any) said about hops and guards, beside what the request
/// expects. For YAML steps and Rust journeys' requests alike.
pub(super) fn record_observation(
    shared: &Shared,
    step: Arc<str>,
    status: Option<u16>,
    error: Option<ErrorClass>,
    res: Option<(&Response<Bytes>, bool)>,
    expect_path: &[String],
    expect_guards: &[String],
) {
    let Some(observe) = &shared.observe else { return };
    let header = |name: &http::HeaderName| {
        res.and_then(|(res, _)| res.headers().get(name)).and_then(|v| v.to_str().ok()).map(str::to_owned)
    };
    let o = super::Observation {
        step,
        status,
        error,
        seen: res.is_some_and(|(_, tagged)| tagged),
        path: header(&synth_ctx::http::SYNTHETIC_TRAFFIC_PATH),
        guards: header(&synth_ctx::http::SYNTHETIC_TRAFFIC_GUARDS),
        expect_path: expect_path.to_vec(),
        expect_guards: expect_guards.to_vec(),
    };
    observe.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(o);
}

pub(super) fn remember_cookies(res: &Response<Bytes>, jar: &mut Vec<(String, String)>) {
    for v in res.headers().get_all(header::SET_COOKIE) {
        let Ok(v) = v.to_str() else { continue };
        let Some((name, value)) = v.split(';').next().and_then(|kv| kv.split_once('=')) else { continue };
        let (name, value) = (name.trim().to_owned(), value.trim().to_owned());
        match jar.iter_mut().find(|(n, _)| *n == name) {
            Some(entry) => entry.1 = value,
            None => jar.push((name, value)),
        }
    }
}

/// Checks status and expectations and runs the captures; the failure class, if any.
fn check(r: &crate::scenario::Request, res: &Response<Bytes>, state: &mut State) -> Option<ErrorClass> {
    let status = res.status().as_u16();
    let status_ok = match &r.expect.status {
        Some(codes) => codes.contains(&status),
        None => status < 400,
    };
    if !status_ok {
        return Some(ErrorClass::Status);
    }
    for (name, want) in &r.expect.headers {
        if res.headers().get(name).and_then(|v| v.to_str().ok()) != Some(want.as_str()) {
            return Some(ErrorClass::Expectation);
        }
    }
    let needs_json =
        !r.expect.json.is_empty() || r.captures.iter().any(|(_, c)| matches!(c, Capture::Json(_)));
    let json: Option<serde_json::Value> =
        if needs_json { serde_json::from_slice(res.body()).ok() } else { None };
    for (path, want) in &r.expect.json {
        if json.as_ref().and_then(|j| path.find(j)) != Some(want) {
            return Some(ErrorClass::Expectation);
        }
    }
    for (slot, capture) in &r.captures {
        let value = match capture {
            Capture::Json(path) => json.as_ref().and_then(|j| path.find(j)).map(|v| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            }),
            Capture::Header(name) => res.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned),
            Capture::Regex(re) => std::str::from_utf8(res.body())
                .ok()
                .and_then(|b| re.captures(b))
                .and_then(|c| c.get(1).or_else(|| c.get(0)))
                .map(|m| m.as_str().to_owned()),
        };
        match value {
            Some(v) => state.captures[*slot] = Some(v),
            None => return Some(ErrorClass::Capture),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every journey in think time holds its steps' future: its size is the memory per
    /// concurrent journey (100,000 of them must fit well under 1 GiB).
    #[test]
    fn a_journeys_request_future_stays_small() {
        let scenario = Arc::new(crate::scenario::Scenario::single_request(
            http::Uri::from_static("http://127.0.0.1:9/"),
            http::Method::GET,
            crate::scenario::Phase::Pause { duration: std::time::Duration::from_secs(1) },
        ));
        let options = super::super::RunOptions { token: "t".into(), run_id: "r".into(), seed: None };
        let marker = Arc::new(std::sync::RwLock::new(HeaderValue::from_static("t")));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let _guard = rt.enter();
        let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let shared = super::super::new_shared(&scenario, &options, marker, stopped, false);
        let Step::Request(r) = &scenario.journeys[0].steps[0] else { panic!("a request step") };
        let mut state = State {
            captures: Vec::new(),
            rows: Vec::new(),
            cookies: Vec::new(),
            run: "r".into(),
            intended: None,
        };
        let mut rng = Rng::new(1);
        let mut conn = None;
        let mut io = Io { conn: &mut conn, dedicated: true };
        let size = std::mem::size_of_val(&request(&shared, r, false, &mut state, &mut rng, &mut io));
        // About 2 KB today; 3 KB catches a parser's header array (3.2 KB) held across an await.
        assert!(size < 3072, "a request's future takes {size} bytes");
    }
}
