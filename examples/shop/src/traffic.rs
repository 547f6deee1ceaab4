//! Traffic the demo and the end-to-end tests send besides loadgen's: real users (no marker) and
//! a forged marker sent by hand.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::Full;
use serde_json::{Value, json};
use synth_ctx::{KeyRing, Origin, RunId, Signer};
use tower::ServiceExt as _;

use crate::{
    common::{CallError, HttpClient, get_text, http_client, post_json},
    verify::{self, Forged, ServiceStats},
};

/// What the real users did.
#[derive(Clone, Debug, Default)]
pub struct RealTraffic {
    /// Requests sent.
    pub requests: Arc<AtomicU64>,
    /// Checkouts that created an order.
    pub checkouts: Arc<AtomicU64>,
    /// Journeys with any failure.
    pub errors: Arc<AtomicU64>,
    /// Searches sent (each one the gateway mirrors to the dark catalog-v2).
    pub searches: Arc<AtomicU64>,
    /// Of those, searches whose dark answer is meant to differ (they include the product
    /// catalog-v2 prices differently).
    pub searches_differing: Arc<AtomicU64>,
}

/// What real users search for, in turn.
pub const SEARCHES: [&str; 5] = ["shoes", "hats", "bags", "red", "navy"];

/// Real users browsing and buying until `stop` is set: log in, search, look at a product, add it
/// to the basket, check out with a real-looking card, rest 400 ms.
#[derive(Debug)]
pub struct RealUsers {
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Their counters.
    pub traffic: RealTraffic,
}

impl RealUsers {
    /// Starts `users` real users against `gateway` (a base URL).
    pub fn start(gateway: &str, users: usize) -> RealUsers {
        let stop = Arc::new(AtomicBool::new(false));
        let traffic = RealTraffic::default();
        let tasks = (0..users)
            .map(|i| tokio::spawn(real_user(i, gateway.to_owned(), stop.clone(), traffic.clone())))
            .collect();
        RealUsers { stop, tasks, traffic }
    }

    /// Stops them and waits for their last journeys to end.
    pub async fn stop(self) -> RealTraffic {
        self.stop.store(true, Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        self.traffic
    }
}

async fn real_user(i: usize, gateway: String, stop: Arc<AtomicBool>, t: RealTraffic) {
    let client = http_client();
    let mut n = 0u64;
    while !stop.load(Relaxed) {
        n += 1;
        let product = 1 + (i as u64 * 17 + n * 7) % 100;
        let ok = async {
            let email = format!("customer{i}@shop.example");
            let login = json!({ "email": email, "password": "hunter2" });
            let (s, _, login) = post_json(client.clone(), &format!("{gateway}/login"), &login).await.ok()?;
            t.requests.fetch_add(1, Relaxed);
            let token = login.get("token")?.as_str()?.to_owned();
            let query = SEARCHES[(i + n as usize) % SEARCHES.len()];
            let (s1, _) = get_text(&format!("{gateway}/search?q={query}")).await.ok()?;
            t.requests.fetch_add(1, Relaxed);
            t.searches.fetch_add(1, Relaxed);
            t.searches_differing.fetch_add(u64::from(crate::catalog_v2::answer_differs(query)), Relaxed);
            let (s2, _) = get_text(&format!("{gateway}/products/{product}")).await.ok()?;
            t.requests.fetch_add(1, Relaxed);
            let auth = format!("Bearer {token}");
            let line = json!({ "sku": format!("sku-{product}"), "qty": 1 });
            let basket = post_auth(&client, &format!("{gateway}/basket"), &auth, &line, None).await?;
            t.requests.fetch_add(1, Relaxed);
            let card = json!({ "card": "4242424242424242" });
            let checkout = post_auth(&client, &format!("{gateway}/checkout"), &auth, &card, None).await?;
            t.requests.fetch_add(1, Relaxed);
            t.checkouts.fetch_add(u64::from(checkout == 201), Relaxed);
            Some(s.is_success() && s1.is_success() && s2.is_success() && basket == 200 && checkout == 201)
        }
        .await;
        if ok != Some(true) {
            t.errors.fetch_add(1, Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
}

/// POSTs JSON with an `authorization` header and optionally one more header; returns the status.
pub async fn post_auth(
    client: &HttpClient,
    url: &str,
    auth: &str,
    body: &Value,
    extra: Option<(&str, &str)>,
) -> Option<u16> {
    let mut req =
        http::Request::post(url).header("content-type", "application/json").header("authorization", auth);
    if let Some((k, v)) = extra {
        req = req.header(k, v);
    }
    let req = req.body(Full::new(Bytes::from(body.to_string()))).ok()?;
    let res = client.clone().oneshot(req).await.ok()?;
    Some(res.status().as_u16())
}

/// Logs in as a real customer, fills a basket, and returns the `authorization` value.
pub async fn real_session(gateway: &str, email: &str) -> Result<String, CallError> {
    let client = http_client();
    let (_, _, login) =
        post_json(client.clone(), &format!("{gateway}/login"), &json!({ "email": email, "password": "x" }))
            .await?;
    let auth = format!("Bearer {}", login.get("token").and_then(Value::as_str).unwrap_or(""));
    post_auth(&client, &format!("{gateway}/basket"), &auth, &json!({ "sku": "sku-1", "qty": 1 }), None).await;
    Ok(auth)
}

/// A real customer's checkout carrying a marker signed with the right key id but an attacker's
/// secret: the gateway must refuse it (403), and no order, charge or email may follow.
pub async fn forged_probe(
    gateway: &str,
    services: &[(&'static str, String)],
    kid: &str,
    run: &RunId,
) -> Result<Forged, CallError> {
    let auth = real_session(gateway, "mallory@shop.example").await?;
    wait_for_emails(services).await;
    let before = verify::effects(&ServiceStats::fetch(services).await?);
    let forger = KeyRing::parse(&format!("{kid}:ZmFrZS1zZWNyZXQtb2YtYW4tYXR0YWNrZXItMzItYnl0ZXM"))
        .map_err(|e| CallError::Transport(e.to_string()))?;
    let token = Signer::new(forger).mint(Origin::Load, run, Duration::from_secs(600));
    let status = post_auth(
        &http_client(),
        &format!("{gateway}/checkout"),
        &auth,
        &json!({ "card": "4242424242424242" }),
        Some((synth_ctx::propagation::HEADER, &token)),
    )
    .await
    .unwrap_or(0);
    tokio::time::sleep(Duration::from_millis(200)).await;
    wait_for_emails(services).await;
    let after = verify::effects(&ServiceStats::fetch(services).await?);
    Ok(Forged { status, effects_before: before, effects_after: after })
}

/// Waits (up to 10 s) until the orders service has no confirmation email in flight.
pub async fn wait_for_emails(services: &[(&'static str, String)]) {
    let Some((_, orders)) = services.iter().find(|(n, _)| *n == "orders") else { return };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let pending = get_text(&format!("{orders}/stats"))
            .await
            .ok()
            .and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok())
            .and_then(|v| v.get("emails_pending").and_then(Value::as_u64));
        if pending == Some(0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (up to 10 s) until the gateway's mirror has settled: no copy pending, every copy sent
/// has a result, and (compare mode) every answered copy has been compared. Returns at once when
/// the gateway has no mirror.
pub async fn wait_for_mirror(services: &[(&'static str, String)]) {
    let Some((_, gateway)) = services.iter().find(|(n, _)| *n == "gateway") else { return };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let stats = get_text(&format!("{gateway}/stats"))
            .await
            .ok()
            .and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok());
        let Some(m) = stats.as_ref().and_then(|v| v.get("mirror")) else { return };
        let sum = |v: &Value| v.as_object().map_or(0, |o| o.values().filter_map(Value::as_u64).sum::<u64>());
        let queued = m["requests"]["queued"].as_u64().unwrap_or(0);
        let settled = m["pending"].as_u64() == Some(0)
            && sum(&m["dark"]) == queued
            && sum(&m["compared"]) == m["dark"]["answered"].as_u64().unwrap_or(0);
        if settled {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (up to 10 s) until the gateway's capture has settled (every record it queued is
/// written or refused by its file) and returns its counters (`/stats` → `capture`); `None` when
/// the gateway has no capture or does not answer.
pub async fn wait_for_capture(services: &[(&'static str, String)]) -> Option<Value> {
    let (_, gateway) = services.iter().find(|(n, _)| *n == "gateway")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let stats = get_text(&format!("{gateway}/stats"))
            .await
            .ok()
            .and_then(|(_, b)| serde_json::from_str::<Value>(&b).ok())?;
        let capture = stats.get("capture")?;
        let count = |path: &[&str]| {
            path.iter().try_fold(capture, |v, k| v.get(k)).and_then(Value::as_u64).unwrap_or(0)
        };
        let settled = count(&["written"]) + count(&["sink_errors"]) >= count(&["requests", "queued"]);
        if settled || Instant::now() >= deadline {
            return Some(capture.clone());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
