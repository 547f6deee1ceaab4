//! `catalog-v2`: the next version of the search, deployed **dark**. It answers `GET /search`
//! like the gateway does (same JSON shape), but nothing real depends on it: the gateway's
//! `MirrorLayer` sends it a copy of each real user's search, marked `dark`, and compares its
//! answer with the real one.
//!
//! It has one deliberate difference, the kind of change a dark launch exists to catch: its new
//! pricing code prices product [`REPRICED`] differently, so every search whose results include
//! that product differs at one JSON path, and every other search matches. It also adds a field
//! the gateway does not have, `took_us` (its own timing), which legitimately differs and which
//! the comparison ignores.
//!
//! Its side effects go through synth like any service's: each search is recorded in the
//! `searches` table (tagged with the copy's run id, `dark-catalog-v2`, so `synth-cleanup` purges
//! it) and published to an analytics feed behind the guard `search.analytics` (a no-op for
//! synthetic traffic). Its `/stats` shows what it saw by origin, so "every request was a `dark`
//! copy, and no side effect was real" is something the demo measures.
//!
//! # Example
//!
//! ```
//! use shop::catalog_v2::{REPRICED, answer_differs, differing_path, search_results};
//!
//! // The searches that include product 42 ("white hats") differ from the real answers.
//! assert!(answer_differs("hats"));
//! assert!(!answer_differs("shoes"));
//! assert_eq!(differing_path("hats").as_deref(), Some("$.results[4].price_cents"));
//! let hats = search_results("hats", true);
//! assert_eq!(hats[4].id, REPRICED);
//! assert_ne!(hats[4].price_cents, search_results("hats", false)[4].price_cents);
//! ```

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Instant,
};

use axum::{
    Json, Router,
    extract::{Query, State},
    http::StatusCode,
    response::IntoResponse,
    routing::get,
};
use serde::Deserialize;
use serde_json::{Value, json};
use synth_ctx::{Origin, Verifier};
use synth_guards::Guard;

use crate::{
    catalog::{PRODUCTS, product},
    common::{ServiceBase, Split, error},
    proto::Product,
    store::Store,
};

/// The run id of the gateway's `dark` copies: what the dark rows are tagged with and what
/// `synth-cleanup --run` purges.
pub const RUN: &str = "dark-catalog-v2";

/// The product whose price catalog-v2 computes differently (the deliberate difference).
pub const REPRICED: u32 = 42;

/// Results per search, as the gateway asks the catalogue for.
pub const LIMIT: usize = 20;

/// A JSON path into the gateway's search answer that catalog-v2 fills differently on purpose
/// (its own timing): the mirror's comparison ignores it.
pub const IGNORED: &str = "$.took_us";

/// The guard around the analytics feed.
pub const ANALYTICS_GUARD: &str = "search.analytics";

/// The search, as the catalogue does it (`query` trimmed and lower-cased, names containing it,
/// at most [`LIMIT`]); with `v2`, product [`REPRICED`] gets the new price.
pub fn search_results(query: &str, v2: bool) -> Vec<Product> {
    let query = query.trim().to_lowercase();
    (1..=PRODUCTS)
        .filter_map(product)
        .filter(|p| p.name.contains(&query))
        .take(LIMIT)
        .map(|mut p| {
            if v2 && p.id == REPRICED {
                p.price_cents = v2_price(p.id);
            }
            p
        })
        .collect()
}

/// The new pricing rule's result for `id`: 5 % off, rounded down to a whole cent.
fn v2_price(id: u32) -> u64 {
    let old = 500 + u64::from(id) * 125;
    old * 95 / 100
}

/// Whether catalog-v2's answer to a search for `query` differs from the gateway's (it does when
/// the results include product [`REPRICED`]).
pub fn answer_differs(query: &str) -> bool {
    search_results(query, false).iter().any(|p| p.id == REPRICED)
}

/// The JSON path at which catalog-v2's answer to a search for `query` differs from the
/// gateway's, in the comparison's canonical form (`$.results[4].price_cents`), if it does.
pub fn differing_path(query: &str) -> Option<String> {
    let at = search_results(query, false).iter().position(|p| p.id == REPRICED)?;
    Some(format!("$.results[{at}].price_cents"))
}

/// What catalog-v2 counted (`GET /stats`).
#[derive(Debug, Default)]
pub struct Counters {
    /// Searches served, by context (real must stay 0: only copies are sent here).
    pub searches: Split,
    /// Searches served, by the marker's origin: `[load, replay, dark]`.
    by_origin: [AtomicU64; 3],
    /// Events published to the analytics feed (the real side effect; must stay 0).
    pub analytics_published: AtomicU64,
    /// Searches that could not be recorded.
    pub store_errors: AtomicU64,
}

struct CatalogV2 {
    store: Store,
    analytics: Guard,
    counters: Arc<Counters>,
}

#[derive(Debug, Deserialize)]
struct SearchQuery {
    #[serde(default)]
    q: String,
}

/// The dark catalog-v2 service: `GET /search` behind the synth layer (as `catalog-v2`), plus
/// `/metrics` and `/stats`.
pub fn router(verifier: Verifier, store: Store) -> (Router, ServiceBase, Arc<Counters>) {
    let base = ServiceBase::new("catalog-v2", verifier);
    let counters = Arc::new(Counters::default());
    let state = Arc::new(CatalogV2 {
        store,
        analytics: base.guards.guard(ANALYTICS_GUARD),
        counters: counters.clone(),
    });
    let stats = {
        let c = counters.clone();
        let base = base.clone();
        move || {
            let layer = base.stats.snapshot();
            let guard = base.guards.stats().get(ANALYTICS_GUARD).copied().unwrap_or_default();
            json!({
                "searches": c.searches.get(),
                "searches_by_origin": {
                    "load": c.by_origin[0].load(Relaxed),
                    "replay": c.by_origin[1].load(Relaxed),
                    "dark": c.by_origin[2].load(Relaxed),
                },
                "verified_by_origin": {
                    "load": layer.accepted(Origin::Load),
                    "replay": layer.accepted(Origin::Replay),
                    "dark": layer.accepted(Origin::Dark),
                },
                "analytics_published": c.analytics_published.load(Relaxed),
                "analytics_guard": { "executed": guard.executed, "suppressed": guard.suppressed },
                "store_errors": c.store_errors.load(Relaxed),
            })
        }
    };
    let app = Router::new()
        .route("/search", get(search))
        .with_state(state)
        .layer(base.metered())
        .layer(base.server_layer())
        .merge(base.observability(stats));
    (app, base, counters)
}

async fn search(State(s): State<Arc<CatalogV2>>, Query(q): Query<SearchQuery>) -> axum::response::Response {
    let started = Instant::now();
    s.counters.searches.record();
    if let Some(origin) = synth_ctx::current().map(|c| c.origin()) {
        let i = match origin {
            Origin::Load => 0,
            Origin::Replay => 1,
            // `Origin` may grow: anything else is counted with `dark`, the only one expected.
            _ => 2,
        };
        s.counters.by_origin[i].fetch_add(1, Relaxed);
    }
    let products = search_results(&q.q, true);
    if let Err(e) = s.store.record_search(&q.q, products.len()).await {
        s.counters.store_errors.fetch_add(1, Relaxed);
        return error(StatusCode::INTERNAL_SERVER_ERROR, format!("recording the search: {e}"));
    }
    let counters = s.counters.clone();
    s.analytics.run(async move { counters.analytics_published.fetch_add(1, Relaxed) }, |_| 0).await;
    let results: Vec<Value> = products
        .iter()
        .map(|p| json!({ "id": p.id, "sku": p.sku, "name": p.name, "price_cents": p.price_cents }))
        .collect();
    let took_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    Json(json!({ "results": results, "took_us": took_us })).into_response()
}
