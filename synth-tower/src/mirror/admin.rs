//! The mirror's admin routes (features `mirror` and `axum`).

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::{Map, Value, json};

use super::{
    CompareResult, DarkResult, Decision, HistogramSnapshot, MirrorHandle, MismatchSample, stats::ErrorSample,
};
use crate::admin::{token_ok, unauthorised};

#[derive(Clone)]
struct MirrorAdmin {
    handle: MirrorHandle,
    token: std::sync::Arc<str>,
}

/// The mirror's admin routes, to merge into the [admin router](crate::admin::admin_router):
///
/// | method and path | what it does |
/// |---|---|
/// | `GET /synthetic/mirror` | settings, counters, latency of real and dark answers, the most recent mismatches (with the differing JSON paths) and dark errors |
/// | `POST /synthetic/mirror` | `{"enabled": false}` switches mirroring off (queued copies dropped, copies in flight cut short), `{"enabled": true, "share": 0.05}` on with a new share |
///
/// Every route needs `Authorization: Bearer <token>`; an empty token locks every route. The
/// kill switch's `POST /synthetic/stop` stops mirroring too, when the mirror was given the same
/// [`KillSwitch`](crate::KillSwitch).
///
/// ```
/// use synth_ctx::{KeyRing, RunId, Signer};
/// use synth_tower::{KillSwitch, SyntheticStats, admin::admin_router, mirror::{self, DarkTarget, MirrorLayer}};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let keys = KeyRing::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8")?;
/// let kill = KillSwitch::new();
/// let layer = MirrorLayer::builder(DarkTarget::url("http://127.0.0.1:9")?, Signer::new(keys), RunId::new("dark-v2")?)
///     .kill_switch(kill.clone())
///     .build()?;
/// let admin: axum::Router = admin_router(kill, SyntheticStats::new(), "s3cret")
///     .merge(mirror::admin_router(layer.handle(), "s3cret"));
/// # Ok(()) }
/// ```
pub fn admin_router(handle: MirrorHandle, bearer_token: impl Into<String>) -> Router {
    let state = MirrorAdmin { handle, token: bearer_token.into().into() };
    Router::new().route("/synthetic/mirror", get(status).post(change)).with_state(state)
}

async fn status(State(admin): State<MirrorAdmin>, headers: HeaderMap) -> Response {
    if !token_ok(&admin.token, &headers) {
        return unauthorised();
    }
    Json(report(&admin.handle)).into_response()
}

fn bad_request(message: String) -> Response {
    (StatusCode::BAD_REQUEST, format!("{message}\n")).into_response()
}

async fn change(State(admin): State<MirrorAdmin>, headers: HeaderMap, body: Bytes) -> Response {
    if !token_ok(&admin.token, &headers) {
        return unauthorised();
    }
    let usage = "send a JSON object such as {\"enabled\": true, \"share\": 0.05}";
    let fields = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(fields)) => fields,
        Ok(_) => return bad_request(format!("not a JSON object; {usage}")),
        Err(e) => return bad_request(format!("not JSON ({e}); {usage}")),
    };
    if let Some(unknown) = fields.keys().find(|k| !matches!(k.as_str(), "enabled" | "share")) {
        return bad_request(format!("unknown field `{unknown}`; {usage}"));
    }
    let enabled = match fields.get("enabled") {
        None => None,
        Some(Value::Bool(b)) => Some(*b),
        Some(other) => return bad_request(format!("`enabled` must be true or false, not {other}")),
    };
    if let Some(share) = fields.get("share") {
        // Checked before anything changes, so a bad request changes nothing.
        let Some(share) = share.as_f64().filter(|s| (0.0..=1.0).contains(s)) else {
            return bad_request(format!("`share` must be a number from 0.0 to 1.0, not {share}"));
        };
        if let Err(e) = admin.handle.set_share(share) {
            return bad_request(e.to_string());
        }
    }
    if let Some(on) = enabled {
        admin.handle.set_enabled(on);
    }
    tracing::warn!(
        enabled = admin.handle.is_enabled(),
        share = admin.handle.share(),
        "mirroring changed through the admin API"
    );
    Json(report(&admin.handle)).into_response()
}

fn report(handle: &MirrorHandle) -> Value {
    let s = handle.snapshot();
    let requests: Map<String, Value> =
        Decision::ALL.iter().map(|d| (d.as_str().to_owned(), json!(s.decided(*d)))).collect();
    let dark: Map<String, Value> =
        DarkResult::ALL.iter().map(|r| (r.as_str().to_owned(), json!(s.dark(*r)))).collect();
    let compared: Map<String, Value> =
        CompareResult::ALL.iter().map(|r| (r.as_str().to_owned(), json!(s.compared(*r)))).collect();
    json!({
        "enabled": handle.is_enabled(),
        "active": handle.is_active(),
        "share": handle.share(),
        "target": handle.target().to_string(),
        "run": handle.run().as_str(),
        "compare": handle.compares(),
        "requests": requests,
        "dark": dark,
        "compared": compared,
        "pending": s.pending,
        "pending_bytes": s.pending_bytes,
        "latency": { "real": latency(&s.real_latency), "dark": latency(&s.dark_latency) },
        "mismatches": handle.mismatch_samples().iter().map(mismatch).collect::<Vec<_>>(),
        "errors": handle.error_samples().iter().map(error).collect::<Vec<_>>(),
    })
}

fn latency(h: &HistogramSnapshot) -> Value {
    let ms = |q: f64| h.quantile_upper_bound(q).map(|d| d.as_secs_f64() * 1000.0);
    json!({ "count": h.count(), "p50_ms_at_most": ms(0.5), "p99_ms_at_most": ms(0.99) })
}

fn mismatch(m: &MismatchSample) -> Value {
    json!({
        "at_unix_ms": m.at_unix_ms,
        "method": m.method,
        "path": m.path,
        "real_status": m.real_status,
        "dark_status": m.dark_status,
        "differences": m.differences.iter().map(|d| json!({ "at": d.at, "real": d.real, "dark": d.dark })).collect::<Vec<_>>(),
        "truncated": m.truncated,
    })
}

fn error(e: &ErrorSample) -> Value {
    json!({
        "at_unix_ms": e.at_unix_ms,
        "method": e.method,
        "path": e.path,
        "result": e.result.as_str(),
        "error": e.error,
    })
}
