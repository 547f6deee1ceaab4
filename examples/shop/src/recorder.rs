//! `payments` and `fraud-check`: stand-ins for a card network and a third-party API. They do
//! nothing but record every call they receive, real or synthetic: the demo's proof is that the
//! synthetic count stays 0.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering::Relaxed},
};

use axum::{Json, Router, routing::post};
use serde_json::{Value, json};
use synth_ctx::Verifier;

use crate::common::{ServiceBase, Split};

/// What a recorder counted.
#[derive(Debug, Default)]
pub struct Recorded {
    /// Calls received: synthetic when the request carried a valid marker or synthetic input
    /// (a reserved test identity or a test card), which must never happen.
    pub calls: Split,
    next_id: AtomicU64,
}

/// The payment provider: `POST /charges {order_id, amount_cents, card, email}`.
pub fn payments(verifier: Verifier) -> (Router, ServiceBase, Arc<Recorded>) {
    recorder(
        "payments",
        "/charges",
        verifier,
        |id| json!({ "charge_id": format!("ch_{id}"), "status": "captured" }),
    )
}

/// The fraud-check API: `POST /check {email, amount_cents}`.
pub fn fraud(verifier: Verifier) -> (Router, ServiceBase, Arc<Recorded>) {
    recorder("fraud", "/check", verifier, |id| json!({ "check_id": id, "verdict": "accept" }))
}

fn recorder(
    name: &'static str,
    path: &'static str,
    verifier: Verifier,
    answer: fn(u64) -> Value,
) -> (Router, ServiceBase, Arc<Recorded>) {
    let base = ServiceBase::new(name, verifier);
    let rec = Arc::new(Recorded::default());
    let r = rec.clone();
    let handler = move |Json(body): Json<Value>| {
        let r = r.clone();
        async move {
            let email = body.get("email").and_then(Value::as_str).unwrap_or("");
            let card = body.get("card").and_then(Value::as_str).unwrap_or("");
            // An address that cannot be classified counts as synthetic: `orders` refuses those, so
            // one arriving here is a leak too.
            if !synth_ctx::is_synthetic() && crate::orders::looks_synthetic(email, card).unwrap_or(true) {
                // Synthetic input without the marker: it got here, which is the failure we count.
                r.calls.record_synthetic();
                tracing::error!(service = name, "synthetic input reached {name} without a marker");
            } else {
                r.calls.record();
            }
            Json(answer(r.next_id.fetch_add(1, Relaxed) + 1))
        }
    };
    let stats = {
        let r = rec.clone();
        move || json!({ "recorded": r.calls.get() })
    };
    let app = Router::new()
        .route(path, post(handler))
        .layer(base.metered())
        .layer(base.server_layer())
        .merge(base.observability(stats));
    (app, base, rec)
}
