//! An instrumented example shop: five small services over real loopback sockets, each with synth.
//!
//! ```text
//!                 HTTP                gRPC
//! users/loadgen ───────▶ gateway ───────────▶ catalog
//!                           │ ┄┄┄┄┄┄┄┄┄┄┄┄┄┄┄┄▶ catalog-v2  (dark: a copy of each real search,
//!                           │                   marked `dark`, answers compared; tagged rows)
//!                           │ HTTP
//!                           ▼
//!                         orders ──▶ database (orders, order_lines: tagged rows)
//!                           │ ├────▶ payments     (guard "payment.charge": never for synthetic)
//!                           │ ├────▶ fraud-check  (third-party guard: blocked for synthetic)
//!                           │ └────▶ email        (guarded lettre transport, from a spawned task)
//! ```
//!
//! Every service verifies the marker at ingress ([`synth_tower::VerifySyntheticLayer`] with its
//! name), propagates it on its clients, records `shop_http_request_duration_seconds` through
//! [`synth_guards::telemetry::metrics_layer::SyntheticRecorder`] (so every series is split by
//! `synthetic`), and serves `GET /metrics` (Prometheus) and `GET /stats` (JSON counters the demo
//! and the end-to-end tests check).
//!
//! [`Shop::start`] runs all of them in one process (the demo's default); the `shop` binary runs
//! one service per process (`shop gateway --catalog … --orders …`).

pub mod catalog;
pub mod catalog_v2;
pub mod common;
pub mod gateway;
pub mod mail;
pub mod orders;
pub mod recorder;
mod shop;
pub mod store;
pub mod traffic;
pub mod verify;

pub use shop::{MailTarget, Shop, ShopConfig, StartError, admin_of};

/// The catalogue's gRPC types, generated from `proto/catalog.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod proto {
    tonic::include_proto!("shop.catalog.v1");
}
