//! `orders`: stores the order (tagged rows), asks the fraud-check API (third-party guard),
//! charges the card (payment guard) and sends the confirmation email from a spawned task
//! (guarded lettre transport).
//!
//! A real request (no marker) whose input is synthetic (a test card, an address under a reserved
//! domain) means the marker was lost on the way: it is refused with 422 before anything is
//! stored, charged or mailed, and counted as `context_lost`.

use std::sync::{
    Arc,
    atomic::{
        AtomicU64,
        Ordering::{Relaxed, SeqCst},
    },
};

use axum::{Json, Router, extract::State, http::StatusCode, response::IntoResponse, routing::post};
use serde::Deserialize;
use serde_json::{Value, json};
use synth_ctx::Verifier;
use synth_guards::{
    Guard,
    identity::{AddressError, EmailClass, ReservedDomains},
    third_party::{HostRule, ThirdPartyGuard, ThirdPartyGuardLayer},
};
use tower::Layer as _;

use crate::{
    common::{HttpClient, ServiceBase, Split, error, http_client, post_json},
    mail::{MailError, Mailer},
    store::{Line, Store},
};

/// Test card numbers start with this: a charge with one is synthetic whatever the context says.
pub const TEST_CARD_PREFIX: &str = "4000000000000";

/// Whether an order's input is a synthetic identity: a test card, or an address under a reserved
/// domain in any spelling a mail system reads as one. An address that is not a mailbox is an
/// error (the order is a bad request), not a guess either way.
pub fn looks_synthetic(email: &str, card: &str) -> Result<bool, AddressError> {
    let address = ReservedDomains::default().classify(email)?;
    Ok(card.starts_with(TEST_CARD_PREFIX) || address == EmailClass::Synthetic)
}

/// Where `orders` sends its calls.
#[derive(Clone, Debug)]
pub struct Downstream {
    /// Base URL of the payment provider, e.g. `http://127.0.0.1:7003`.
    pub payments: String,
    /// Base URL of the fraud-check API.
    pub fraud: String,
}

/// What `orders` counted (`GET /stats`).
#[derive(Debug, Default)]
pub struct Counters {
    /// Orders stored, by context.
    pub orders: Split,
    /// Charges sent to the payment provider, by context (synthetic must stay 0).
    pub charges: Split,
    /// Charges the payment guard suppressed.
    pub charges_suppressed: AtomicU64,
    /// Calls that reached the fraud-check API, by context (synthetic must stay 0).
    pub fraud_checks: Split,
    /// Fraud checks the third-party guard answered itself.
    pub fraud_blocked: AtomicU64,
    /// Emails handed to the transport, by the context the sending task saw (synthetic must
    /// stay 0).
    pub emails_delivered: Split,
    /// Emails the guard suppressed.
    pub emails_suppressed: AtomicU64,
    /// Emails that failed.
    pub emails_failed: AtomicU64,
    /// Emails still being sent by background tasks.
    pub emails_pending: AtomicU64,
    /// Synthetic input without a synthetic context (a propagation bug; refused).
    pub context_lost: AtomicU64,
}

struct Orders {
    store: Store,
    mailer: Arc<Mailer>,
    http: HttpClient,
    fraud: ThirdPartyGuard<HttpClient>,
    downstream: Downstream,
    charge_guard: Guard,
    counters: Arc<Counters>,
}

#[derive(Debug, Deserialize)]
struct NewOrder {
    email: String,
    card: String,
    lines: Vec<Line>,
}

/// The orders service.
pub fn router(
    verifier: Verifier,
    store: Store,
    mailer: Mailer,
    downstream: Downstream,
) -> (Router, ServiceBase, Arc<Counters>) {
    let base = ServiceBase::new("orders", verifier);
    let counters = Arc::new(Counters::default());
    // Any host: the fraud-check API is a third party. Synthetic calls get a canned "accept".
    let fraud = ThirdPartyGuardLayer::new("fraud-check")
        .with_guard(base.guards.guard("fraud-check"))
        .default_rule(HostRule::block(200, r#"{"verdict":"accept","stubbed":true}"#))
        .layer(http_client());
    let state = Arc::new(Orders {
        store,
        mailer: Arc::new(mailer.with_guard(base.guards.guard("email"))),
        http: http_client(),
        fraud,
        downstream,
        charge_guard: base.guards.guard("payment.charge"),
        counters: counters.clone(),
    });
    let stats = {
        let c = counters.clone();
        move || {
            json!({
                "orders": c.orders.get(),
                "charges": c.charges.get(),
                "charges_suppressed": c.charges_suppressed.load(Relaxed),
                "fraud_checks": c.fraud_checks.get(),
                "fraud_blocked": c.fraud_blocked.load(Relaxed),
                "emails_delivered": c.emails_delivered.get(),
                "emails_suppressed": c.emails_suppressed.load(Relaxed),
                "emails_failed": c.emails_failed.load(Relaxed),
                "emails_pending": c.emails_pending.load(SeqCst),
                "context_lost": c.context_lost.load(Relaxed),
            })
        }
    };
    let app = Router::new()
        .route("/orders", post(create))
        .with_state(state)
        .layer(base.metered())
        .layer(base.server_layer())
        .merge(base.observability(stats));
    (app, base, counters)
}

impl Orders {
    /// The answer to synthetic input in a real request, counted (the guard has logged it).
    fn context_lost(&self, lost: &synth_guards::ContextLost) -> axum::response::Response {
        self.counters.context_lost.fetch_add(1, Relaxed);
        error(StatusCode::UNPROCESSABLE_ENTITY, lost.to_string())
    }
}

async fn create(State(s): State<Arc<Orders>>, Json(order): Json<NewOrder>) -> axum::response::Response {
    if order.lines.is_empty() || order.lines.iter().any(|l| l.qty == 0) {
        return error(StatusCode::BAD_REQUEST, "an order needs lines with qty >= 1");
    }
    // Checked: an absurd price or quantity is a bad request, not an overflow.
    let total = order
        .lines
        .iter()
        .try_fold(0u64, |acc, l| l.price_cents.checked_mul(u64::from(l.qty)).and_then(|x| acc.checked_add(x)))
        .filter(|t| i64::try_from(*t).is_ok());
    let Some(total) = total else {
        return error(StatusCode::BAD_REQUEST, "the order total is too large");
    };
    let looks_synthetic = match looks_synthetic(&order.email, &order.card) {
        Ok(l) => l,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("`email`: {e}")),
    };
    // Before anything is stored: synthetic input in a real request is refused whole (the
    // guard counts and logs it). Storing the order first would leave a real, untagged order
    // that is never charged.
    if let Err(lost) = s.charge_guard.check_context(looks_synthetic) {
        return s.context_lost(&lost);
    }
    let id = match s.store.insert_order(&order.email, &order.lines).await {
        Ok(id) => id,
        Err(e) => {
            tracing::error!(error = %e, "storing an order");
            return error(StatusCode::SERVICE_UNAVAILABLE, "could not store the order");
        }
    };
    s.counters.orders.record();

    // Fraud check: a third party. For synthetic requests the guard answers itself.
    let check = json!({ "email": order.email, "amount_cents": total });
    match post_json(s.fraud.clone(), &format!("{}/check", s.downstream.fraud), &check).await {
        Ok((status, headers, verdict)) if status.is_success() => {
            if headers.contains_key("synthetic-traffic-blocked") {
                s.counters.fraud_blocked.fetch_add(1, Relaxed);
            } else {
                s.counters.fraud_checks.record();
            }
            if verdict.get("verdict").and_then(Value::as_str) != Some("accept") {
                let _ = s.store.set_status(id, "rejected").await;
                return error(StatusCode::PAYMENT_REQUIRED, "the fraud check refused the order");
            }
        }
        Ok((status, ..)) => {
            tracing::warn!(%status, "fraud check answered an error");
            return error(StatusCode::BAD_GATEWAY, "the fraud check failed");
        }
        Err(e) => {
            tracing::warn!(error = %e, "fraud check unreachable");
            return error(StatusCode::BAD_GATEWAY, "the fraud check is unreachable");
        }
    }

    // The charge: the thing that must never happen for synthetic traffic.
    let charge = json!({ "order_id": id, "amount_cents": total, "card": order.card, "email": order.email });
    let url = format!("{}/charges", s.downstream.payments);
    let outcome = s
        .charge_guard
        .run_checked(
            looks_synthetic,
            async {
                s.counters.charges.record();
                match post_json(s.http.clone(), &url, &charge).await {
                    Ok((status, _, body)) if status.is_success() => {
                        Ok(body.get("charge_id").and_then(Value::as_str).unwrap_or("").to_owned())
                    }
                    Ok((status, ..)) => Err(format!("the payment provider answered {status}")),
                    Err(e) => Err(e.to_string()),
                }
            },
            |_synthetic| {
                s.counters.charges_suppressed.fetch_add(1, Relaxed);
                Ok("stubbed".to_owned())
            },
        )
        .await;
    let outcome = match outcome {
        Ok(outcome) => outcome,
        // Checked above with the same input in the same scope, so not expected here; if it
        // happens anyway, the stored order is marked refused and the answer is still an error.
        Err(lost) => {
            let _ = s.store.set_status(id, "refused").await;
            return s.context_lost(&lost);
        }
    };
    let charge_id = match outcome {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, order = id, "charge failed");
            let _ = s.store.set_status(id, "payment_failed").await;
            return error(StatusCode::BAD_GATEWAY, "the payment failed");
        }
    };
    let status = if charge_id == "stubbed" { "payment_stubbed" } else { "paid" };
    if let Err(e) = s.store.set_status(id, status).await {
        tracing::error!(error = %e, order = id, "updating an order");
    }

    // The confirmation goes out from a background task: synth_ctx::spawn carries the scope.
    s.counters.emails_pending.fetch_add(1, SeqCst);
    let (mailer, counters, email) = (s.mailer.clone(), s.counters.clone(), order.email.clone());
    synth_ctx::spawn(async move {
        // A synthetic address in a task that lost the scope is the bug this example guards
        // against (a bare tokio::spawn): the transport refuses it, and it is counted here.
        match mailer.send_confirmation(&email, id, total).await {
            Ok(true) => counters.emails_delivered.record(),
            Ok(false) => {
                counters.emails_suppressed.fetch_add(1, SeqCst);
            }
            Err(MailError::ContextLost(e)) => {
                tracing::error!(error = %e, order = id, "confirmation email refused");
                counters.context_lost.fetch_add(1, SeqCst);
            }
            Err(e) => {
                tracing::warn!(error = %e, order = id, "confirmation email");
                counters.emails_failed.fetch_add(1, SeqCst);
            }
        }
        // Last, so a reader that sees 0 pending also sees the counts above.
        counters.emails_pending.fetch_sub(1, SeqCst);
    });

    (StatusCode::CREATED, Json(json!({ "order_id": id, "total_cents": total, "charge": charge_id })))
        .into_response()
}
