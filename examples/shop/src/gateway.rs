//! `gateway`: the public HTTP API. Calls `catalog` over gRPC and `orders` over HTTP, both
//! through synth's client layer.
//!
//! Given a dark catalogue ([`router`]'s `dark_catalog`), it also mirrors real users' searches
//! there: [`search_mirror`] copies every real `GET /search` (never a synthetic one), marked
//! `dark` with the shop's keys, off the critical path, and compares the answers.

use std::{
    collections::{HashMap, VecDeque},
    path::Path as FsPath,
    sync::{Arc, Mutex, PoisonError},
};

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::IntoResponse,
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::{Value, json};
use synth_ctx::{RunId, Signer, Verifier};
use synth_tower::{
    PropagateSynthetic, PropagateSyntheticLayer,
    capture::{CaptureLayer, JsonLinesSink, Scrub},
    mirror::{CompareSpec, DarkTarget, JsonPath, MirrorLayer},
};
use tonic::transport::Channel;
use tower::Layer as _;

use crate::{
    catalog::id_of_sku,
    common::{HttpClient, ServiceBase, Split, error, http_client, post_json},
    proto::{GetProductRequest, Product, SearchRequest, catalog_client::CatalogClient},
    store::Line,
};

/// Sessions kept at most; the oldest go first.
const MAX_SESSIONS: usize = 100_000;

/// Calls the gateway made downstream, by context: each downstream service must have seen
/// exactly as many of each (tagging coverage per hop).
#[derive(Debug, Default)]
pub struct Calls {
    /// gRPC calls to `catalog`.
    pub catalog: Split,
    /// HTTP calls to `orders`.
    pub orders: Split,
}

#[derive(Debug)]
struct Session {
    email: String,
    basket: Vec<Line>,
}

#[derive(Debug, Default)]
struct Sessions {
    by_token: HashMap<String, Session>,
    order: VecDeque<String>,
}

struct Gateway {
    catalog: CatalogClient<PropagateSynthetic<Channel>>,
    orders_url: String,
    http: HttpClient,
    /// Real users' sessions. Synthetic logins live apart, so load can never evict a real user's
    /// session (and a session token only works in the world it was made in).
    sessions: Mutex<Sessions>,
    synthetic_sessions: Mutex<Sessions>,
    calls: Arc<Calls>,
}

/// The mirror that copies real users' searches to the dark `catalog-v2` at `dark_catalog` (a
/// base URL): every real `GET /search` (share 1.0: the demo's real users search a few hundred
/// times, and each copy is cheap), each copy marked `dark` for run
/// [`catalog_v2::RUN`](crate::catalog_v2::RUN) and signed with `base`'s keys (the keys every
/// shop service verifies with), stopped by `base`'s kill switch with the rest of the synthetic
/// traffic. Answers are compared: status, `content-type`, and the JSON body except
/// [`catalog_v2::IGNORED`](crate::catalog_v2::IGNORED), the field catalog-v2 adds on purpose.
/// Synthetic searches (load tests) are never copied: the layer's default.
pub fn search_mirror(
    verifier: &Verifier,
    base: &ServiceBase,
    dark_catalog: &str,
) -> Result<MirrorLayer, String> {
    let target = DarkTarget::url(dark_catalog).map_err(|e| format!("dark catalogue: {e}"))?;
    let run = RunId::new(crate::catalog_v2::RUN).map_err(|e| format!("dark run id: {e}"))?;
    let ignore = JsonPath::parse(crate::catalog_v2::IGNORED).map_err(|e| format!("ignored path: {e}"))?;
    MirrorLayer::builder(target, Signer::new(verifier.keys().clone()), run)
        .share(1.0)
        .routes(["/search"])
        .methods([http::Method::GET])
        .compare(CompareSpec { headers: vec![header::CONTENT_TYPE], ignore: vec![ignore] })
        .kill_switch(base.kill.clone())
        .service_name(base.name)
        .build()
        .map_err(|e| format!("search mirror: {e}"))
}

/// The prefix of the gateway's capture files: `<dir>/gateway-<unix ms>-<pid>.jsonl`.
pub const CAPTURE_PREFIX: &str = "gateway";

/// The capture that records real users' browsing at the gateway into `dir` (created if
/// missing), for `loadgen replay`: every real `GET` (share 1.0: the demo's real users browse a
/// few hundred pages, and a record is cheap; the default ceiling of 100 records/s still bounds
/// it), credential headers (`authorization`, `cookie`, `x-api-key`, … the capture's
/// [`DEFAULT_DROPPED_HEADERS`](synth_tower::capture::DEFAULT_DROPPED_HEADERS)) dropped before
/// anything is stored (the default [`Scrub`]). Only `GET`: the other routes log in, fill a
/// basket and pay, which a replay must not do again. A synthetic request (marked, or in a
/// synthetic scope) is never recorded: that is what keeps a replay sent back through the
/// gateway out of the file.
pub fn browsing_capture(dir: &FsPath) -> Result<CaptureLayer, String> {
    let sink = JsonLinesSink::new(dir, CAPTURE_PREFIX)
        .map_err(|e| format!("capture directory {}: {e}", dir.display()))?;
    CaptureLayer::builder(sink)
        .share(1.0)
        .methods([http::Method::GET])
        .scrub(Scrub::default())
        .service_name("gateway")
        .build()
        .map_err(|e| format!("browsing capture: {e}"))
}

/// The gateway. `catalog` and `orders` are base URLs (`http://127.0.0.1:7001`); with
/// `dark_catalog` (the dark `catalog-v2`'s base URL) real users' searches are mirrored there
/// ([`search_mirror`]) and the returned base carries the mirror's handle; with `capture_dir`
/// real users' `GET`s are recorded there ([`browsing_capture`]) and the base carries the
/// capture's handle.
pub fn router(
    verifier: Verifier,
    catalog: &str,
    orders: &str,
    dark_catalog: Option<&str>,
    capture_dir: Option<&FsPath>,
) -> Result<(Router, ServiceBase, Arc<Calls>), String> {
    let mut base = ServiceBase::new("gateway", verifier.clone());
    let mirror = dark_catalog.map(|url| search_mirror(&verifier, &base, url)).transpose()?;
    base.mirror = mirror.as_ref().map(MirrorLayer::handle);
    let capture = capture_dir.map(browsing_capture).transpose()?;
    base.capture = capture.as_ref().map(CaptureLayer::handle);
    let channel = Channel::from_shared(catalog.to_owned())
        .map_err(|e| format!("catalog URL `{catalog}`: {e}"))?
        .connect_lazy();
    let calls = Arc::new(Calls::default());
    let state = Arc::new(Gateway {
        catalog: CatalogClient::new(PropagateSyntheticLayer::new().layer(channel)),
        orders_url: orders.trim_end_matches('/').to_owned(),
        http: http_client(),
        sessions: Mutex::new(Sessions::default()),
        synthetic_sessions: Mutex::new(Sessions::default()),
        calls: calls.clone(),
    });
    let stats = {
        let c = calls.clone();
        move || json!({ "calls": { "catalog": c.catalog.get(), "orders": c.orders.get() } })
    };
    let mut routes = Router::new()
        .route("/", get(home))
        .route("/products/{id}", get(product))
        .route("/search", get(search))
        .route("/login", post(login))
        .route("/basket", get(basket).post(add_to_basket))
        .route("/checkout", post(checkout))
        .with_state(state)
        .layer(base.metered());
    // Inside the synth layer: refused and shed requests never reach the mirror, and the ones
    // that do run in their synthetic scope, which is how the mirror knows to skip them.
    if let Some(mirror) = mirror {
        routes = routes.layer(mirror);
    }
    // Inside the synth layer too, for the same reason: a replayed request (marked `replay`)
    // runs in its synthetic scope here, so the capture skips it (it also skips any request
    // that carries a marker). Outside `/metrics` and `/stats`: the demo's own reads of the
    // counters are not browsing.
    if let Some(capture) = capture {
        routes = routes.layer(capture);
    }
    let app = routes.layer(base.server_layer()).merge(base.observability(stats));
    Ok((app, base, calls))
}

fn product_json(p: &Product) -> Value {
    json!({ "id": p.id, "sku": p.sku, "name": p.name, "price_cents": p.price_cents })
}

impl Gateway {
    async fn search(&self, query: &str, limit: u32) -> Result<Vec<Product>, axum::response::Response> {
        self.calls.catalog.record();
        let mut client = self.catalog.clone();
        match client.search(SearchRequest { query: query.to_owned(), limit }).await {
            Ok(r) => Ok(r.into_inner().products),
            Err(s) => Err(grpc_error(&s)),
        }
    }

    async fn product(&self, id: u32) -> Result<Product, axum::response::Response> {
        self.calls.catalog.record();
        let mut client = self.catalog.clone();
        match client.get_product(GetProductRequest { id }).await {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => Err(grpc_error(&s)),
        }
    }

    /// The sessions of the current request's world (real or synthetic).
    fn sessions(&self) -> std::sync::MutexGuard<'_, Sessions> {
        let m = if synth_ctx::is_synthetic() { &self.synthetic_sessions } else { &self.sessions };
        m.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn session_email(&self, headers: &HeaderMap) -> Option<String> {
        let token = bearer(headers)?;
        let sessions = self.sessions();
        sessions.by_token.get(token).map(|s| s.email.clone())
    }
}

fn grpc_error(s: &tonic::Status) -> axum::response::Response {
    match s.code() {
        tonic::Code::NotFound => error(StatusCode::NOT_FOUND, s.message()),
        tonic::Code::Unavailable => error(StatusCode::SERVICE_UNAVAILABLE, s.message()),
        _ => error(StatusCode::BAD_GATEWAY, format!("catalog: {}", s.message())),
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION)?.to_str().ok()?.strip_prefix("Bearer ")
}

async fn home(State(g): State<Arc<Gateway>>) -> axum::response::Response {
    match g.search("", 8).await {
        Ok(products) => {
            Json(json!({ "featured": products.iter().map(product_json).collect::<Vec<_>>() })).into_response()
        }
        Err(r) => r,
    }
}

async fn product(State(g): State<Arc<Gateway>>, Path(id): Path<u32>) -> axum::response::Response {
    match g.product(id).await {
        Ok(p) => Json(product_json(&p)).into_response(),
        Err(r) => r,
    }
}

#[derive(Debug, Deserialize)]
struct SearchQuery {
    #[serde(default)]
    q: String,
}

async fn search(State(g): State<Arc<Gateway>>, Query(q): Query<SearchQuery>) -> axum::response::Response {
    match g.search(&q.q, 20).await {
        Ok(products) => {
            Json(json!({ "results": products.iter().map(product_json).collect::<Vec<_>>() })).into_response()
        }
        Err(r) => r,
    }
}

#[derive(Debug, Deserialize)]
struct Login {
    email: String,
    password: String,
}

async fn login(State(g): State<Arc<Gateway>>, Json(l): Json<Login>) -> axum::response::Response {
    if !l.email.contains('@') || l.password.is_empty() {
        return error(StatusCode::UNAUTHORIZED, "give an email address and a password");
    }
    let mut raw = [0u8; 16];
    if getrandom::fill(&mut raw).is_err() {
        return error(StatusCode::SERVICE_UNAVAILABLE, "no randomness for a session token");
    }
    let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let mut sessions = g.sessions();
    while sessions.order.len() >= MAX_SESSIONS {
        if let Some(old) = sessions.order.pop_front() {
            sessions.by_token.remove(&old);
        }
    }
    sessions.order.push_back(token.clone());
    sessions.by_token.insert(token.clone(), Session { email: l.email, basket: Vec::new() });
    Json(json!({ "token": token })).into_response()
}

#[derive(Debug, Deserialize)]
struct AddLine {
    sku: String,
    #[serde(default = "one")]
    qty: u32,
}

fn one() -> u32 {
    1
}

async fn add_to_basket(
    State(g): State<Arc<Gateway>>,
    headers: HeaderMap,
    Json(a): Json<AddLine>,
) -> axum::response::Response {
    if g.session_email(&headers).is_none() {
        return error(StatusCode::UNAUTHORIZED, "log in first: POST /login");
    }
    let Some(id) = id_of_sku(&a.sku) else {
        return error(StatusCode::NOT_FOUND, format!("no product `{}`", a.sku));
    };
    if a.qty == 0 || a.qty > 100 {
        return error(StatusCode::BAD_REQUEST, "qty must be 1 to 100");
    }
    let p = match g.product(id).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let Some(token) = bearer(&headers) else {
        return error(StatusCode::UNAUTHORIZED, "log in first: POST /login");
    };
    let mut sessions = g.sessions();
    match sessions.by_token.get_mut(token) {
        Some(s) => {
            s.basket.push(Line { sku: p.sku, qty: a.qty, price_cents: p.price_cents });
            Json(json!({ "items": s.basket.len() })).into_response()
        }
        None => error(StatusCode::UNAUTHORIZED, "the session expired: log in again"),
    }
}

async fn basket(State(g): State<Arc<Gateway>>, headers: HeaderMap) -> axum::response::Response {
    let Some(token) = bearer(&headers) else {
        return error(StatusCode::UNAUTHORIZED, "log in first: POST /login");
    };
    let sessions = g.sessions();
    match sessions.by_token.get(token) {
        Some(s) => Json(json!({ "lines": s.basket })).into_response(),
        None => error(StatusCode::UNAUTHORIZED, "log in first: POST /login"),
    }
}

#[derive(Debug, Deserialize)]
struct Checkout {
    card: String,
}

async fn checkout(
    State(g): State<Arc<Gateway>>,
    headers: HeaderMap,
    Json(c): Json<Checkout>,
) -> axum::response::Response {
    let Some(token) = bearer(&headers) else {
        return error(StatusCode::UNAUTHORIZED, "log in first: POST /login");
    };
    let (email, lines) = {
        let mut sessions = g.sessions();
        match sessions.by_token.get_mut(token) {
            Some(s) if s.basket.is_empty() => return error(StatusCode::BAD_REQUEST, "the basket is empty"),
            Some(s) => (s.email.clone(), std::mem::take(&mut s.basket)),
            None => return error(StatusCode::UNAUTHORIZED, "log in first: POST /login"),
        }
    };
    g.calls.orders.record();
    let order = json!({ "email": email, "card": c.card, "lines": lines });
    let result = post_json(g.http.clone(), &format!("{}/orders", g.orders_url), &order).await;
    if !matches!(&result, Ok((status, ..)) if status.is_success()) {
        // No order: the customer keeps the basket.
        if let (Some(s), Some(lines)) = (g.sessions().by_token.get_mut(token), order.get("lines")) {
            s.basket = serde_json::from_value(lines.clone()).unwrap_or_default();
        }
    }
    match result {
        Ok((status, _, body)) => (status, Json(body)).into_response(),
        Err(e) => error(StatusCode::BAD_GATEWAY, format!("orders: {e}")),
    }
}
