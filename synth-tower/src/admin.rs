//! A small axum router to stop, resume and inspect synthetic traffic (feature `axum`).
//!
//! | method and path | what it does |
//! |---|---|
//! | `POST /synthetic/stop` | turns the kill switch on: synthetic requests are shed from now on |
//! | `POST /synthetic/resume` | turns it off |
//! | `GET /synthetic/status` | `{"stopped": bool, "stats": {...}}` |
//!
//! Every route needs `Authorization: Bearer <token>`; an empty token locks every route. Serve it
//! on an internal port, not the public one.
//!
//! # Example
//!
//! ```
//! use synth_tower::{KillSwitch, SyntheticStats, admin::admin_router};
//!
//! let kill = KillSwitch::new();
//! let stats = SyntheticStats::new();
//! let admin: axum::Router = admin_router(kill.clone(), stats.clone(), "s3cret-from-the-environment");
//! ```

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use serde_json::{Value, json};
use synth_ctx::Origin;

use crate::{KillSwitch, ShedCause, SyntheticStats, stats::REFUSAL_REASONS};

#[derive(Clone)]
struct Admin {
    kill: KillSwitch,
    stats: SyntheticStats,
    token: Arc<str>,
}

/// The admin router; see the [module docs](self).
pub fn admin_router(kill: KillSwitch, stats: SyntheticStats, bearer_token: impl Into<String>) -> Router {
    let state = Admin { kill, stats, token: bearer_token.into().into() };
    Router::new()
        .route("/synthetic/stop", post(stop))
        .route("/synthetic/resume", post(resume))
        .route("/synthetic/status", get(status))
        .with_state(state)
}

fn authorised(admin: &Admin, headers: &HeaderMap) -> bool {
    token_ok(&admin.token, headers)
}

/// Whether `headers` carry `Authorization: Bearer <token>`; an empty token locks everything.
pub(crate) fn token_ok(token: &str, headers: &HeaderMap) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    !token.is_empty() && constant_time_eq(given.as_bytes(), token.as_bytes())
}

pub(crate) fn unauthorised() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "send `Authorization: Bearer <admin token>`\n",
    )
        .into_response()
}

/// Compares without an early exit, so timing does not tell how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

async fn stop(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    if !authorised(&admin, &headers) {
        return unauthorised();
    }
    admin.kill.stop();
    tracing::warn!("synthetic traffic stopped through the admin API");
    Json(json!({ "stopped": true })).into_response()
}

async fn resume(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    if !authorised(&admin, &headers) {
        return unauthorised();
    }
    admin.kill.resume();
    tracing::warn!("synthetic traffic resumed through the admin API");
    Json(json!({ "stopped": false })).into_response()
}

async fn status(State(admin): State<Admin>, headers: HeaderMap) -> Response {
    if !authorised(&admin, &headers) {
        return unauthorised();
    }
    let s = admin.stats.snapshot();
    let accepted: serde_json::Map<String, Value> =
        Origin::ALL.iter().map(|o| (o.as_str().to_owned(), json!(s.accepted(*o)))).collect();
    let rejected: serde_json::Map<String, Value> =
        REFUSAL_REASONS.iter().map(|r| ((*r).to_owned(), json!(s.rejected(r)))).collect();
    let shed: serde_json::Map<String, Value> =
        ShedCause::ALL.iter().map(|c| (c.as_str().to_owned(), json!(s.shed(*c)))).collect();
    Json(json!({
        "stopped": admin.kill.is_stopped(),
        "stats": {
            "real": s.real,
            "accepted": accepted,
            "rejected": rejected,
            "treated_as_real": s.treated_as_real,
            "shed": shed,
            "in_flight": s.in_flight,
        }
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::constant_time_eq;

    #[test]
    fn compare() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }
}
