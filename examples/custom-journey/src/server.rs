//! A tiny shop for the journey to run against: `/login`, `/products/{id}`, `/orders`.
//!
//! It does what your service would: it sits behind [`VerifySyntheticLayer`] (so loadgen's
//! marker is verified and each synthetic request runs in its scope), refuses with `401` a body
//! whose `x-signature` is not its HMAC, and refuses with `401` a request without a session
//! token. It counts what it served, so tests compare its counts with loadgen's report.
//!
//! # Example
//!
//! ```
//! use custom_journey::{BodySigner, DEMO_HMAC_SECRET, server};
//! use synth_ctx::{KeyRing, Verifier};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let keys = KeyRing::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8")?;
//! let shop = server::serve(Verifier::new(keys), BodySigner::new(DEMO_HMAC_SECRET)?).await?;
//! assert!(shop.addr().ip().is_loopback());
//! assert_eq!(shop.counts().total, 0);
//! # Ok(())
//! # }
//! ```

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::{
    Json, Router,
    body::Body,
    extract::{Path, Request, State},
    http::{HeaderMap, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use synth_ctx::Verifier;
use synth_tower::VerifySyntheticLayer;
use tokio::task::JoinHandle;

use crate::journey::{
    BodySigner, DEMO_EMAIL, DEMO_PASSWORD, Login, Order, PRODUCTS, Product, SIGNATURE_HEADER, Session,
};

/// Bodies larger than this are refused before their signature is checked (the demo's are tiny).
const MAX_BODY: usize = 64 * 1024;

/// Whether product `id` is in stock: two in three are, so both branches of the journey run.
pub fn in_stock(id: u64) -> bool {
    !id.is_multiple_of(3)
}

/// What the server has served so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Counts {
    /// Every request that reached a handler.
    pub total: u64,
    /// Those that ran in a verified synthetic scope.
    pub synthetic: u64,
    /// Successful logins.
    pub logins: u64,
    /// Products shown.
    pub product_views: u64,
    /// Of those, products in stock.
    pub in_stock_views: u64,
    /// Orders placed.
    pub orders: u64,
    /// Requests refused because their signature was missing or wrong.
    pub bad_signatures: u64,
}

#[derive(Default)]
struct Counters {
    total: AtomicU64,
    synthetic: AtomicU64,
    logins: AtomicU64,
    product_views: AtomicU64,
    in_stock_views: AtomicU64,
    orders: AtomicU64,
    bad_signatures: AtomicU64,
}

struct App {
    signer: BodySigner,
    counters: Counters,
    sessions: Mutex<HashSet<String>>,
    next_session: AtomicU64,
}

impl App {
    fn count_request(&self) {
        self.counters.total.fetch_add(1, Ordering::Relaxed);
        if synth_ctx::is_synthetic() {
            self.counters.synthetic.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn signed_in(&self, headers: &HeaderMap) -> bool {
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        token.is_some_and(|t| self.sessions.lock().unwrap_or_else(PoisonError::into_inner).contains(t))
    }
}

/// The running server; it stops when this is dropped.
#[derive(Debug)]
pub struct DemoServer {
    addr: SocketAddr,
    app: Arc<App>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App").finish_non_exhaustive()
    }
}

impl DemoServer {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL, `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What it has served so far.
    pub fn counts(&self) -> Counts {
        let c = &self.app.counters;
        let read = |n: &AtomicU64| n.load(Ordering::SeqCst);
        Counts {
            total: read(&c.total),
            synthetic: read(&c.synthetic),
            logins: read(&c.logins),
            product_views: read(&c.product_views),
            in_stock_views: read(&c.in_stock_views),
            orders: read(&c.orders),
            bad_signatures: read(&c.bad_signatures),
        }
    }
}

impl Drop for DemoServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the server on a free loopback port: markers checked by `verifier`, bodies by
/// `signer`. Needs a tokio runtime.
pub async fn serve(verifier: Verifier, signer: BodySigner) -> std::io::Result<DemoServer> {
    let app = Arc::new(App {
        signer,
        counters: Counters::default(),
        sessions: Mutex::new(HashSet::new()),
        next_session: AtomicU64::new(1),
    });
    let router = Router::new()
        .route("/login", post(login))
        .route("/products/{id}", get(product))
        .route("/orders", post(order))
        .layer(middleware::from_fn_with_state(app.clone(), check_signature))
        .with_state(app.clone())
        // Outermost, as in a real service: the marker is verified before anything else runs,
        // and everything inside (the signature check included) runs in the synthetic scope.
        .layer(VerifySyntheticLayer::new(verifier));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, router).await {
            eprintln!("custom-journey demo server: {e}");
        }
    });
    Ok(DemoServer { addr, app, task })
}

/// Refuses (`401`) any request whose body does not match its `x-signature`, before a handler
/// sees it.
async fn check_signature(State(app): State<Arc<App>>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_BODY).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "body too large or unreadable").into_response();
    };
    let signature = parts.headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok());
    if !signature.is_some_and(|s| app.signer.verify(&bytes, s)) {
        app.counters.bad_signatures.fetch_add(1, Ordering::Relaxed);
        return (StatusCode::UNAUTHORIZED, "bad x-signature").into_response();
    }
    next.run(Request::from_parts(parts, Body::from(bytes))).await
}

async fn login(State(app): State<Arc<App>>, Json(login): Json<Login>) -> Response {
    app.count_request();
    if login.email != DEMO_EMAIL || login.password != DEMO_PASSWORD {
        return (StatusCode::UNAUTHORIZED, "unknown account").into_response();
    }
    // A demo token: predictable, fine for a test server, never for a real one.
    let token = format!("session-{}", app.next_session.fetch_add(1, Ordering::Relaxed));
    app.sessions.lock().unwrap_or_else(PoisonError::into_inner).insert(token.clone());
    app.counters.logins.fetch_add(1, Ordering::Relaxed);
    Json(Session { token }).into_response()
}

async fn product(State(app): State<Arc<App>>, headers: HeaderMap, Path(id): Path<u64>) -> Response {
    app.count_request();
    if !app.signed_in(&headers) {
        return (StatusCode::UNAUTHORIZED, "log in first").into_response();
    }
    if !(1..=PRODUCTS).contains(&id) {
        return (StatusCode::NOT_FOUND, "no such product").into_response();
    }
    app.counters.product_views.fetch_add(1, Ordering::Relaxed);
    let in_stock = in_stock(id);
    if in_stock {
        app.counters.in_stock_views.fetch_add(1, Ordering::Relaxed);
    }
    Json(Product { id, in_stock }).into_response()
}

async fn order(State(app): State<Arc<App>>, headers: HeaderMap, Json(order): Json<Order>) -> Response {
    app.count_request();
    if !app.signed_in(&headers) {
        return (StatusCode::UNAUTHORIZED, "log in first").into_response();
    }
    if !(1..=PRODUCTS).contains(&order.product) || !in_stock(order.product) || order.quantity == 0 {
        return (StatusCode::CONFLICT, "cannot order that").into_response();
    }
    app.counters.orders.fetch_add(1, Ordering::Relaxed);
    (StatusCode::CREATED, "ordered").into_response()
}
