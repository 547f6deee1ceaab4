//! A real checkout (no marker) with synthetic-looking input through the gateway: a test card, a
//! reserved address in any spelling a mail system reads as one, or both. Each is refused with
//! 422 and leaves nothing behind (no order row, no charge, no email), and is counted as "context
//! lost"; a normal real checkout still charges and mails; a synthetic checkout is unchanged.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::{path::PathBuf, time::Duration};

use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use shop::{
    MailTarget, Shop, ShopConfig,
    common::http_client,
    mail::count_eml,
    traffic::{post_auth, real_session, wait_for_emails},
    verify::ServiceStats,
};
use synth_ctx::{KeyRing, Origin, RunId, Signer, Verifier};
use tower::ServiceExt as _;

const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";
const REAL_CARD: &str = "4242424242424242";
const TEST_CARD: &str = "4000000000000002";

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("shop-context-lost-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// POSTs JSON to `url` with `auth` and optionally a marker; returns the status and the JSON body.
async fn post(url: &str, auth: &str, body: &Value, marker: Option<&str>) -> (u16, Value) {
    let mut req =
        http::Request::post(url).header("content-type", "application/json").header("authorization", auth);
    if let Some(m) = marker {
        req = req.header("synthetic-traffic", m);
    }
    let req = req.body(http_body_util::Full::new(bytes::Bytes::from(body.to_string()))).unwrap();
    let res = http_client().oneshot(req).await.unwrap();
    let status = res.status().as_u16();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

/// What a checkout can leave behind.
#[derive(Debug, PartialEq)]
struct Effects {
    real_orders: u64,
    real_lines: u64,
    tagged_rows: u64,
    charges: Value,
    emails_delivered: Value,
    eml_files: u64,
    context_lost: u64,
    guard_context_lost: u64,
}

struct Fixture {
    shop: Shop,
    gateway: String,
    mail: PathBuf,
    run: RunId,
}

impl Fixture {
    async fn effects(&self) -> Effects {
        let services = self.shop.services();
        wait_for_emails(&services).await;
        let s = ServiceStats::fetch(&services).await.unwrap();
        let rows = self.shop.store.counts(self.run.as_str()).await.unwrap();
        Effects {
            real_orders: rows.orders.real,
            real_lines: rows.lines.real,
            tagged_rows: rows.orders.synthetic + rows.lines.synthetic,
            charges: s.payments["recorded"].clone(),
            emails_delivered: s.orders["emails_delivered"].clone(),
            eml_files: count_eml(&self.mail).unwrap(),
            context_lost: s.orders["context_lost"].as_u64().unwrap(),
            // The charge guard's counter as the orders service exports it.
            guard_context_lost: {
                let (_, page) =
                    shop::common::get_text(&format!("http://{}/metrics", self.shop.orders)).await.unwrap();
                page.lines()
                    .find_map(|l| l.strip_prefix("synth_guard_context_lost_total{guard=\"payment.charge\"} "))
                    .and_then(|n| n.trim().parse().ok())
                    .unwrap()
            },
        }
    }

    /// A real customer (no marker) logs in as `email`, fills a basket and checks out with `card`.
    async fn real_checkout(&self, email: &str, card: &str) -> (u16, Value) {
        let auth = real_session(&self.gateway, email).await.unwrap();
        post(&format!("{}/checkout", self.gateway), &auth, &json!({ "card": card }), None).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_checkouts_with_synthetic_input_fail_and_leave_no_effect() {
    let dir = temp_dir("gateway");
    let mail = dir.join("mail");
    let shop = Shop::start(ShopConfig {
        verifier: Verifier::new(KeyRing::parse(KEYS).unwrap()),
        database_url: format!("sqlite://{}", dir.join("shop.db").display()),
        mail: MailTarget::Dir(mail.clone()),
        admin_token: String::new(),
        capture_dir: None,
    })
    .await
    .unwrap();
    let f =
        Fixture { gateway: format!("http://{}", shop.gateway), shop, mail, run: RunId::new("lost").unwrap() };

    let refused = [
        ("a test card", "ana@shop.example", TEST_CARD),
        ("a reserved address", "u1@loadtest.invalid", REAL_CARD),
        (
            "a full-width reserved address",
            "u2@loadtest.\u{ff49}\u{ff4e}\u{ff56}\u{ff41}\u{ff4c}\u{ff49}\u{ff44}",
            REAL_CARD,
        ),
        ("a reserved address with a display name", "Load Test <u3@x.invalid>", REAL_CARD),
        ("a reserved address with a trailing dot", "u4@LOADTEST.INVALID.", REAL_CARD),
        ("both", "u5@loadtest.invalid", TEST_CARD),
    ];
    for (what, email, card) in refused {
        let before = f.effects().await;
        let (status, body) = f.real_checkout(email, card).await;
        assert_eq!(status, 422, "{what}: {body}");
        let message = body["error"].as_str().unwrap_or_default();
        assert!(message.contains("context lost") && message.contains("marker"), "{what} says why: {body}");
        let after = f.effects().await;
        assert_eq!(
            after,
            Effects {
                context_lost: before.context_lost + 1,
                guard_context_lost: before.guard_context_lost + 1,
                ..before
            },
            "{what}: no order row, no charge, no email; counted once"
        );
    }

    // An address the guards cannot read is a bad request, not a guess: nothing happens, and it
    // is no propagation bug.
    let before = f.effects().await;
    let (status, body) = f.real_checkout("ana@exa mple.com", REAL_CARD).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(f.effects().await, before);

    // A normal real checkout still stores, charges and mails.
    let before = f.effects().await;
    let (status, body) = f.real_checkout("ana@shop.example", REAL_CARD).await;
    assert_eq!(status, 201, "{body}");
    assert_ne!(body["charge"], "stubbed", "{body}");
    let after = f.effects().await;
    assert_eq!(after.real_orders, before.real_orders + 1);
    assert_eq!(after.charges["real"], before.charges["real"].as_u64().unwrap() + 1);
    assert_eq!(after.emails_delivered["real"], before.emails_delivered["real"].as_u64().unwrap() + 1);
    assert_eq!(after.eml_files, before.eml_files + 1);
    assert_eq!(after.context_lost, before.context_lost);

    // A synthetic checkout (signed marker, synthetic identity and test card) is stubbed and
    // tagged, as before: no charge, no email, nothing counted as lost.
    let marker =
        Signer::new(KeyRing::parse(KEYS).unwrap()).mint(Origin::Load, &f.run, Duration::from_secs(60));
    let (status, login) = post(
        &format!("{}/login", f.gateway),
        "",
        &json!({ "email": "u6+lost@loadtest.invalid", "password": "x" }),
        Some(&marker),
    )
    .await;
    assert_eq!(status, 200, "{login}");
    let auth = format!("Bearer {}", login["token"].as_str().unwrap());
    let status = post_auth(
        &http_client(),
        &format!("{}/basket", f.gateway),
        &auth,
        &json!({ "sku": "sku-1", "qty": 1 }),
        Some(("synthetic-traffic", &marker)),
    )
    .await;
    assert_eq!(status, Some(200));
    let before = f.effects().await;
    let (status, body) =
        post(&format!("{}/checkout", f.gateway), &auth, &json!({ "card": TEST_CARD }), Some(&marker)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["charge"], "stubbed");
    let after = f.effects().await;
    assert_eq!(
        after,
        Effects { tagged_rows: before.tagged_rows + 2, ..before },
        "one tagged order, one tagged line"
    );
}
