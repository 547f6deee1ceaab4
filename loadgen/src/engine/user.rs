//! Journeys written in Rust: an async function over a virtual [`User`].
//!
//! A [`Journey`] runs in the same engine as a YAML journey: it is picked by weight, its first
//! request is timed from the arrival's intended time, every request carries the run's marker,
//! is counted under its name and stopped by a stop. See `docs/rust-api.md`.

use std::{
    future::{Future, IntoFuture},
    pin::Pin,
    sync::{Arc, Mutex, PoisonError, atomic::Ordering},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, header};
use http_body_util::Full;
use tokio::time::Instant;

use super::{Shared, client::Conn, journey::InFlight};
use crate::{
    rng::Rng,
    stats::{ErrorClass, Outcome},
};

/// What a journey function returns: `Ok(())` when the journey did what it should, or any error
/// (its message is counted in the report as the journey's failure).
pub type JourneyResult = Result<(), BoxError>;

/// What [`User::grpc`] hands out: a tonic channel whose calls carry the run's marker.
pub type GrpcChannel = tonic::service::interceptor::InterceptedService<
    tonic::transport::Channel,
    super::grpc::MarkerInterceptor,
>;

/// Any error a journey returns (`?` converts most errors into it, `"text".into()` too).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

type BoxFuture = Pin<Box<dyn Future<Output = JourneyResult> + Send + 'static>>;

/// The function of a journey written in Rust.
#[derive(Clone)]
pub(crate) struct Code(Arc<dyn Fn(User) -> BoxFuture + Send + Sync>);

impl std::fmt::Debug for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<journey written in Rust>")
    }
}

impl Code {
    pub(crate) fn call(&self, user: User) -> BoxFuture {
        (self.0)(user)
    }
}

/// A journey written in Rust, to add to a [`Scenario`](crate::Scenario) with
/// [`Scenario::journey`](crate::Scenario::journey). YAML and Rust journeys mix in one scenario:
/// they share its phases, weights, thresholds, signals and reports.
///
/// ```
/// use loadgen::{Journey, User};
///
/// let checkout = Journey::new("checkout").weight(2).run(|user: User| async move {
///     let product = user.get("/products/7").name("product").send().await?;
///     if product.status() == 200 {
///         user.post("/orders").json(&serde_json::json!({ "product": 7 })).expect_status(201).send().await?;
///     }
///     Ok(())
/// });
/// assert_eq!(checkout.name(), "checkout");
/// assert_eq!(checkout.weight_value(), 2);
/// ```
#[derive(Clone, Debug)]
pub struct Journey {
    name: Arc<str>,
    weight: u32,
    cookies: bool,
    code: Code,
}

/// A [`Journey`] being described: its weight and cookie handling, then [`run`](Self::run).
#[derive(Clone, Debug)]
#[must_use = "a journey does nothing until `.run(..)` gives it its function"]
pub struct JourneyBuilder {
    name: Arc<str>,
    weight: u32,
    cookies: bool,
}

impl Journey {
    /// Starts describing a journey called `name` (its name in reports), of weight 1, with
    /// cookies kept across its requests.
    #[allow(clippy::new_ret_no_self)] // `Journey::new(..).weight(..).run(..)` reads as the issue asks
    pub fn new(name: impl Into<String>) -> JourneyBuilder {
        JourneyBuilder { name: Arc::from(name.into()), weight: 1, cookies: true }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its weight among the scenario's journeys.
    pub fn weight_value(&self) -> u32 {
        self.weight
    }

    pub(crate) fn into_model(self) -> crate::scenario::Journey {
        crate::scenario::Journey {
            name: self.name,
            weight: self.weight,
            steps: Vec::new(),
            captures: Vec::new(),
            cookies: self.cookies,
            feeders_used: Vec::new(),
            code: Some(self.code),
        }
    }
}

impl JourneyBuilder {
    /// Its weight among the scenario's journeys (default 1): a journey of weight 2 is picked
    /// twice as often as one of weight 1. Weight 0 means never picked.
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight;
        self
    }

    /// Whether answers' `set-cookie` are sent back on the journey's later requests (default:
    /// yes). Each journey run has its own jar.
    pub fn cookies(mut self, keep: bool) -> Self {
        self.cookies = keep;
        self
    }

    /// The journey's function: called once per arrival (or per loop of a closed-model user)
    /// with a fresh [`User`]. Returning an error counts the journey as failed, with the error's
    /// message in the report.
    ///
    /// `?` turns any error into the [`BoxError`] it returns, and `Err("why".into())` says why
    /// in words.
    pub fn run<F, Fut>(self, f: F) -> Journey
    where
        F: Fn(User) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = JourneyResult> + Send + 'static,
    {
        let code = Code(Arc::new(move |user| Box::pin(f(user))));
        Journey { name: self.name, weight: self.weight, cookies: self.cookies, code }
    }
}

/// A virtual user: one run of one journey. Its requests carry the run's marker and are counted
/// under their names; its first request is timed from when the arrival was due.
///
/// Methods take `&self`, so requests can also be sent concurrently (`tokio::join!`).
pub struct User {
    shared: Arc<Shared>,
    journey: usize,
    cookies: bool,
    state: Mutex<UserState>,
    /// A closed-model user's own connection, taken by one request at a time.
    conn: Option<Arc<Mutex<Option<Conn>>>>,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User").field("journey", &self.journey).finish_non_exhaustive()
    }
}

struct UserState {
    /// When the first request was due; taken by it.
    intended: Option<Instant>,
    cookies: Vec<(String, String)>,
    rows: Vec<Option<Arc<[String]>>>,
    rng: Rng,
}

/// One row of a data feeder (`data:` in the scenario), as [`User::data`] hands it out.
#[derive(Clone, Debug)]
pub struct Row {
    columns: Arc<[String]>,
    values: Arc<[String]>,
}

impl Row {
    /// The value in `column`, if the feeder has that column.
    pub fn get(&self, column: &str) -> Option<&str> {
        let i = self.columns.iter().position(|c| c == column)?;
        self.values.get(i).map(String::as_str)
    }
}

impl User {
    pub(crate) fn new(
        shared: Arc<Shared>,
        journey: usize,
        cookies: bool,
        intended: Instant,
        rng: Rng,
        conn: Option<Arc<Mutex<Option<Conn>>>>,
    ) -> Self {
        let feeders = shared.scenario.feeders.len();
        User {
            shared,
            journey,
            cookies,
            state: Mutex::new(UserState {
                intended: Some(intended),
                cookies: Vec::new(),
                rows: vec![None; feeders],
                rng,
            }),
            conn,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, UserState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A `GET` of `path` (joined to the target, or an absolute `http(s)://` URL).
    pub fn get(&self, path: impl Into<String>) -> RequestBuilder<'_> {
        self.request(Method::GET, path)
    }

    /// A `POST` of `path`.
    pub fn post(&self, path: impl Into<String>) -> RequestBuilder<'_> {
        self.request(Method::POST, path)
    }

    /// A `PUT` of `path`.
    pub fn put(&self, path: impl Into<String>) -> RequestBuilder<'_> {
        self.request(Method::PUT, path)
    }

    /// A `PATCH` of `path`.
    pub fn patch(&self, path: impl Into<String>) -> RequestBuilder<'_> {
        self.request(Method::PATCH, path)
    }

    /// A `DELETE` of `path`.
    pub fn delete(&self, path: impl Into<String>) -> RequestBuilder<'_> {
        self.request(Method::DELETE, path)
    }

    /// A request of any method.
    pub fn request(&self, method: Method, path: impl Into<String>) -> RequestBuilder<'_> {
        RequestBuilder {
            user: self,
            method,
            path: path.into(),
            headers: HeaderMap::new(),
            body: Body::Empty,
            name: None,
            expect_status: None,
            expect_path: Vec::new(),
            expect_guards: Vec::new(),
            invalid: None,
        }
    }

    /// Waits `d` (think time). The stop button does not wait for it: a stopped run drops the
    /// journey wherever it is.
    pub async fn think(&self, d: Duration) {
        {
            // A first request after a think was meant to go out when the think ends.
            let mut s = self.state();
            s.intended = s.intended.and_then(|t| t.checked_add(d));
        }
        tokio::time::sleep(d).await;
    }

    /// This journey's row of the data feeder `feeder` (a `data:` entry of the scenario): the
    /// same row for every call in one journey run, the next one (or a random one, as the feeder
    /// says) for the next run. `None` if the scenario has no such feeder.
    pub fn data(&self, feeder: &str) -> Option<Row> {
        let scenario = &self.shared.scenario;
        let f = scenario.feeders.iter().position(|x| x.name == feeder)?;
        let data = &scenario.feeders[f];
        let mut s = self.state();
        if let Some(Some(values)) = s.rows.get(f) {
            return Some(Row { columns: data.columns.clone().into(), values: values.clone() });
        }
        let n = data.rows.len();
        if n == 0 {
            return None;
        }
        let i = match data.order {
            crate::scenario::Order::Sequential => {
                self.shared.feeder_cursors.get(f)?.fetch_add(1, Ordering::Relaxed) % n
            }
            crate::scenario::Order::Random => s.rng.below(n as u64) as usize,
        };
        let values = data.rows.get(i)?.clone();
        if let Some(slot) = s.rows.get_mut(f) {
            *slot = Some(values.clone());
        }
        Some(Row { columns: data.columns.clone().into(), values })
    }

    /// The marker every request of this run carries now (`synthetic-traffic`), for a protocol
    /// loadgen does not speak. Markers are refreshed during long runs: ask again rather than
    /// keep one.
    pub fn marker(&self) -> HeaderValue {
        self.shared.marker.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The run's id.
    pub fn run_id(&self) -> &str {
        &self.shared.run_id
    }

    /// A random number below `n` (0 if `n` is 0), from the run's seeded generator: a run with
    /// `--seed` makes the same choices.
    pub fn random_below(&self, n: u64) -> u64 {
        if n == 0 {
            return 0;
        }
        self.state().rng.below(n)
    }

    /// A tonic channel to the scenario's target whose every call carries the run's marker
    /// (refreshed in place) and is refused once the run is stopped: generated clients take it
    /// as it is (`CatalogClient::new(user.grpc()?)`). The channel is the run's, shared by its
    /// users and its YAML gRPC steps (HTTP/2, connected on first use, TLS as for HTTP).
    ///
    /// Wrap each call in [`call`](Self::call) to time and count it under a name in the report.
    pub fn grpc(&self) -> Result<GrpcChannel, RequestError> {
        self.grpc_to(&self.shared.scenario.target.to_string())
    }

    /// [`grpc`](Self::grpc) to another origin (`http://host:port` for h2c, `https://…`).
    pub fn grpc_to(&self, uri: &str) -> Result<GrpcChannel, RequestError> {
        let error = |detail: String| RequestError {
            name: Arc::from(format!("grpc {uri}")),
            class: ErrorClass::Connect,
            status: None,
            grpc_status: None,
            detail: Some(detail),
        };
        let uri: http::Uri = uri.parse().map_err(|e| error(format!("`{uri}` is not a URL: {e}")))?;
        let channel = super::grpc::channel(&self.shared, &uri)
            .map_err(|_| error("no channel: give an http:// or https:// URL with a host".into()))?;
        let interceptor = super::grpc::interceptor(&self.shared).stopping(self.shared.stopped.clone());
        Ok(tonic::service::interceptor::InterceptedService::new(channel, interceptor))
    }

    /// Times and counts a gRPC call (from a client on [`grpc`](Self::grpc)) under `name`, as
    /// loadgen's own requests are: from the arrival's intended time if it is the journey's
    /// first, its status name in the report, not sent after a stop. A status other than `OK` is
    /// an error (counted as `status`, returned with the status's code).
    ///
    /// ```no_run
    /// # async fn f(user: &loadgen::User) -> Result<(), loadgen::BoxError> {
    /// # let mut client = tonic::client::Grpc::new(user.grpc()?);
    /// # let call = async { Err::<tonic::Response<()>, _>(tonic::Status::unavailable("example")) };
    /// // let mut client = CatalogClient::new(user.grpc()?);
    /// // let answer = user.call("search", client.search(SearchRequest { query: "hats".into(), limit: 5 })).await?;
    /// let answer = user.call("search", call).await?;
    /// # Ok(()) }
    /// ```
    pub async fn call<T>(
        &self,
        name: &str,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<tonic::Response<T>, RequestError> {
        let shared = &*self.shared;
        let stat = shared.stats.index_of(name);
        let error = |class: ErrorClass, grpc_status: Option<crate::stats::GrpcCode>| RequestError {
            name: Arc::from(name),
            class,
            status: None,
            grpc_status,
            detail: None,
        };
        if !shared.may_send() {
            shared.stats.record(stat, Outcome::unanswered(ErrorClass::Cancelled));
            return Err(error(ErrorClass::Cancelled, None));
        }
        let intended = self.state().intended.take().unwrap_or_else(Instant::now);
        let mut in_flight = InFlight::start(shared, stat);
        // At most `max_connections` requests in flight, a journey's own gRPC calls included;
        // the wait counts in the call's latency.
        let limited = async {
            let _slot = shared.client.slot().await;
            call.await
        };
        let result = tokio::time::timeout(shared.scenario.timeouts.request, limited).await;
        let latency_us = u64::try_from(intended.elapsed().as_micros()).unwrap_or(u64::MAX);
        let seen = |m: &tonic::metadata::MetadataMap| {
            let get = |k: &HeaderName| m.get(k.as_str()).map(|v| v.as_encoded_bytes());
            (
                get(&synth_ctx::http::SYNTHETIC_TRAFFIC_SEEN) == Some(shared.run_id.as_bytes()),
                get(&synth_ctx::http::SYNTHETIC_TRAFFIC_SHED) == Some(b"1".as_slice()),
            )
        };
        let (code, tagged, shed, answer) = match result {
            Err(_) => {
                in_flight.finish(Outcome::unanswered(ErrorClass::Timeout));
                return Err(error(ErrorClass::Timeout, None));
            }
            Ok(Err(status)) => match super::grpc::local_failure(&status) {
                Some(class) => {
                    in_flight.finish(Outcome::unanswered(class));
                    return Err(error(class, None));
                }
                None => {
                    let (tagged, shed) = seen(status.metadata());
                    (crate::stats::GrpcCode::from(status.code()), tagged, shed, None)
                }
            },
            Ok(Ok(answer)) => {
                let (tagged, shed) = seen(answer.metadata());
                (crate::stats::GrpcCode::Ok, tagged, shed, Some(answer))
            }
        };
        let failed = (code != crate::stats::GrpcCode::Ok).then_some(ErrorClass::Status);
        in_flight.finish(Outcome {
            latency_us: Some(latency_us),
            status: None,
            grpc_status: Some(code),
            error: failed,
            tagged,
            shed,
        });
        match (answer, failed) {
            (Some(answer), None) => Ok(answer),
            _ => Err(error(ErrorClass::Status, Some(code))),
        }
    }

    /// Whether the journey should finish now: the run was stopped, or its phases are over (or,
    /// in the preflight, the journey has sent its share). A journey that loops until the run
    /// ends (`while !user.is_stopped() { .. }`) checks this; a long computation between
    /// requests may too.
    pub fn is_stopped(&self) -> bool {
        self.shared.ending()
    }

    async fn send(&self, b: RequestBuilder<'_>) -> Result<Answer, RequestError> {
        let shared = &*self.shared;
        let name: Arc<str> = match &b.name {
            Some(n) => Arc::from(n.as_str()),
            None => Arc::from(format!("{} {}", b.method, strip_query(&b.path))),
        };
        let stat = shared.stats.index_of(&name);
        let fail = |class: ErrorClass, status: Option<u16>| RequestError {
            name: name.clone(),
            class,
            status,
            grpc_status: None,
            detail: None,
        };
        let req = match self.build(&b) {
            Ok(req) => req,
            Err(why) => {
                shared.stats.record(stat, Outcome::unanswered(ErrorClass::Expectation));
                self.observe(&name, &b, None, Some(ErrorClass::Expectation), None);
                return Err(RequestError {
                    name,
                    class: ErrorClass::Expectation,
                    status: None,
                    grpc_status: None,
                    detail: Some(why),
                });
            }
        };
        if !shared.may_send() {
            // Nothing reaches the target after a stop (nor past a preflight's budget).
            shared.stats.record(stat, Outcome::unanswered(ErrorClass::Cancelled));
            return Err(fail(ErrorClass::Cancelled, None));
        }
        let intended = self.state().intended.take().unwrap_or_else(Instant::now);
        let mut in_flight = InFlight::start(shared, stat);
        let own = self.conn.as_ref().and_then(|c| c.lock().unwrap_or_else(PoisonError::into_inner).take());
        let result = match own {
            Some(conn) => {
                let mut conn = Some(conn);
                let r = shared.client.send_on(&mut conn, req).await;
                if let Some(slot) = &self.conn {
                    *slot.lock().unwrap_or_else(PoisonError::into_inner) = conn;
                }
                r
            }
            None if self.conn.is_some() => {
                // The user's connection is not open yet (or another request holds it).
                let mut conn = None;
                let r = shared.client.send_on(&mut conn, req).await;
                if let Some(slot) = &self.conn {
                    let mut held = slot.lock().unwrap_or_else(PoisonError::into_inner);
                    if held.is_none() {
                        *held = conn;
                    }
                }
                r
            }
            None => shared.client.send(req).await,
        };
        let latency_us = u64::try_from(intended.elapsed().as_micros()).unwrap_or(u64::MAX);
        let res = match result {
            Ok(res) => res,
            Err(class) => {
                in_flight.finish(Outcome::unanswered(class));
                self.observe(&name, &b, None, Some(class), None);
                return Err(fail(class, None));
            }
        };
        let status = res.status().as_u16();
        let (tagged, shed) = super::journey::marks(shared, &res);
        if self.cookies {
            super::journey::remember_cookies(&res, &mut self.state().cookies);
        }
        let ok = match &b.expect_status {
            Some(codes) => codes.contains(&status),
            None => status < 400,
        };
        let error = (!ok).then_some(ErrorClass::Status);
        in_flight.finish(Outcome {
            latency_us: Some(latency_us),
            status: Some(status),
            grpc_status: None,
            error,
            tagged,
            shed,
        });
        self.observe(&name, &b, Some(status), error, Some((&res, tagged)));
        if let Some(class) = error {
            return Err(fail(class, Some(status)));
        }
        let (parts, body) = res.into_parts();
        Ok(Answer { status: parts.status, headers: parts.headers, body, tagged })
    }

    fn build(&self, b: &RequestBuilder<'_>) -> Result<Request<Full<Bytes>>, String> {
        if let Some(why) = &b.invalid {
            return Err(why.clone());
        }
        let uri: http::Uri = if b.path.starts_with("http://") || b.path.starts_with("https://") {
            b.path.parse().map_err(|e| format!("`{}` is not a URL: {e}", b.path))?
        } else {
            let base = self.shared.base.as_str();
            let sep = if b.path.starts_with('/') { "" } else { "/" };
            format!("{base}{sep}{}", b.path)
                .parse()
                .map_err(|e| format!("`{}` is not a path: {e}", b.path))?
        };
        let mut req = Request::builder().method(b.method.clone()).uri(uri);
        let headers = req.headers_mut().ok_or("the request could not be built")?;
        for (name, value) in &b.headers {
            headers.append(name.clone(), value.clone());
        }
        // The marker last, over anything the journey set: every request carries the run's own.
        headers.insert(synth_ctx::http::SYNTHETIC_TRAFFIC, self.marker());
        if self.cookies {
            let s = self.state();
            if !s.cookies.is_empty() {
                let jar: Vec<String> = s.cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let jar = HeaderValue::try_from(jar.join("; ")).map_err(|e| format!("cookies: {e}"))?;
                headers.insert(header::COOKIE, jar);
            }
        }
        let body = match &b.body {
            Body::Empty => Bytes::new(),
            Body::Bytes(b) => b.clone(),
            Body::Json(b) => {
                if !headers.contains_key(header::CONTENT_TYPE) {
                    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                }
                b.clone()
            }
        };
        req.body(Full::new(body)).map_err(|e| e.to_string())
    }

    /// Preflight: keeps what the answer said about hops and guards.
    fn observe(
        &self,
        name: &Arc<str>,
        b: &RequestBuilder<'_>,
        status: Option<u16>,
        error: Option<ErrorClass>,
        res: Option<(&http::Response<Bytes>, bool)>,
    ) {
        super::journey::record_observation(
            &self.shared,
            name.clone(),
            status,
            error,
            res,
            &b.expect_path,
            &b.expect_guards,
        );
    }
}

fn strip_query(path: &str) -> &str {
    path.split_once('?').map_or(path, |(p, _)| p)
}

enum Body {
    Empty,
    Bytes(Bytes),
    Json(Bytes),
}

/// A request being described; [`send`](Self::send) it, or `.await` it directly.
#[must_use = "a request is sent only when it is awaited (`.send().await`)"]
pub struct RequestBuilder<'u> {
    user: &'u User,
    method: Method,
    path: String,
    headers: HeaderMap,
    body: Body,
    name: Option<String>,
    expect_status: Option<Vec<u16>>,
    expect_path: Vec<String>,
    expect_guards: Vec<String>,
    /// A header or body that could not be made: the request fails as an expectation error
    /// when sent (nothing is sent), so a journey's `?` sees it where it happened.
    invalid: Option<String>,
}

impl std::fmt::Debug for RequestBuilder<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestBuilder")
            .field("method", &self.method)
            .field("path", &self.path)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<'u> RequestBuilder<'u> {
    /// Adds a header. A name or value that is not valid HTTP fails the request when sent.
    pub fn header(mut self, name: impl AsRef<str>, value: impl AsRef<str>) -> Self {
        let (name, value) = (name.as_ref(), value.as_ref());
        match (HeaderName::try_from(name), HeaderValue::try_from(value)) {
            (Ok(n), Ok(v)) => {
                self.headers.append(n, v);
            }
            _ => self.invalid = Some(format!("header `{name}` is not a valid HTTP header")),
        }
        self
    }

    /// A JSON body (and `content-type: application/json` unless a header sets another).
    pub fn json<T: serde::Serialize + ?Sized>(mut self, body: &T) -> Self {
        match serde_json::to_vec(body) {
            Ok(v) => self.body = Body::Json(Bytes::from(v)),
            Err(e) => self.invalid = Some(format!("the JSON body could not be made: {e}")),
        }
        self
    }

    /// A body as it is (set `content-type` with [`header`](Self::header)).
    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = Body::Bytes(body.into());
        self
    }

    /// The name its statistics are kept under (default: method and path without the query).
    /// Requests of the same name share a row of the report, YAML steps included. Name requests
    /// whose path holds an id, or each id becomes a row (past 1,000 names, the rest share one).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The status the answer must have (default: any below 400). Call again to allow more.
    pub fn expect_status(mut self, status: u16) -> Self {
        self.expect_status.get_or_insert_with(Vec::new).push(status);
        self
    }

    /// A service the answer's `synthetic-traffic-path` must name (checked by the preflight).
    pub fn expect_path(mut self, service: impl Into<String>) -> Self {
        self.expect_path.push(service.into());
        self
    }

    /// A guard the answer's `synthetic-traffic-guards` must name (checked by the preflight).
    pub fn expect_guards(mut self, guard: impl Into<String>) -> Self {
        self.expect_guards.push(guard.into());
        self
    }

    /// Sends it and reads the answer. A status it does not expect, a connection failure, a
    /// timeout or a stop is an error (counted under the request's name), so `?` ends the journey
    /// there.
    pub async fn send(self) -> Result<Answer, RequestError> {
        let user = self.user;
        user.send(self).await
    }
}

impl<'u> IntoFuture for RequestBuilder<'u> {
    type Output = Result<Answer, RequestError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send + 'u>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.send())
    }
}

/// An answer, read whole.
#[derive(Clone, Debug)]
pub struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    tagged: bool,
}

impl Answer {
    /// Its status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// Its headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// Its body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Its body as text, if it is UTF-8.
    pub fn text(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.body)
    }

    /// Its body parsed as JSON.
    pub fn json<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// Whether the target echoed this run's id (`synthetic-traffic-seen`): the request was
    /// verified and scoped as synthetic there.
    pub fn is_tagged(&self) -> bool {
        self.tagged
    }
}

/// Why a request of a Rust journey failed; it is already counted under the request's name.
#[derive(Clone, Debug, thiserror::Error)]
#[error("{name}: {}{}", describe(*.class, *.status, *.grpc_status), .detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
pub struct RequestError {
    name: Arc<str>,
    class: ErrorClass,
    status: Option<u16>,
    grpc_status: Option<crate::stats::GrpcCode>,
    detail: Option<String>,
}

fn describe(class: ErrorClass, status: Option<u16>, grpc: Option<crate::stats::GrpcCode>) -> String {
    match (class, status, grpc) {
        (ErrorClass::Status, Some(s), _) => format!("status {s}"),
        (ErrorClass::Status, None, Some(code)) => format!("grpc {}", code.as_str()),
        (class, _, _) => class.as_str().to_owned(),
    }
}

impl RequestError {
    /// The request's name (its report row).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What went wrong.
    pub fn class(&self) -> ErrorClass {
        self.class
    }

    /// The HTTP status of the answer, if there was one.
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// The gRPC status of a [`User::call`], if the server answered with one.
    pub fn grpc_status(&self) -> Option<crate::stats::GrpcCode> {
        self.grpc_status
    }
}
