//! Found by a red team (these tests failed before the fix): mailboxes that route to a reserved synthetic domain through a
//! relay (`%` hack, UUCP `!` path, a quoted local part that is itself an address) are read as
//! real, so in a real request they reach the inner transport instead of being refused as
//! context lost.
#![cfg(feature = "lettre")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use lettre::{Address, AsyncTransport, address::Envelope, transport::stub::AsyncStubTransport};
use synth_guards::{email::GuardedTransport, identity::ReservedDomains};

const ROUTED: &[&str] = &[
    "u7+r42%loadtest.invalid@relay.example.com",
    "loadtest.invalid!u7+r42@relay.example.com",
    "\"u7+r42@loadtest.invalid\"@relay.example.com",
];

#[tokio::test]
async fn relay_routed_reserved_addresses_are_refused_as_context_lost() {
    let reserved = ReservedDomains::default();
    let mut failures = Vec::new();
    for address in ROUTED {
        if !reserved.is_synthetic_email(address) {
            failures.push(format!("identity: {address:?} classified as a real address"));
        }
        let Ok(to) = address.parse::<Address>() else {
            continue; // lettre refuses it: it can never reach a transport
        };
        let inner = AsyncStubTransport::new_ok();
        let mailer = GuardedTransport::new(inner.clone());
        let envelope = Envelope::new(Some("shop@example.com".parse().unwrap()), vec![to]).unwrap();
        // A real request (no synthetic scope).
        let result = mailer.send_raw(&envelope, b"Subject: x\r\n\r\nhi\r\n").await;
        if result.is_ok() || !inner.messages().await.is_empty() {
            failures.push(format!("email guard: {address:?} reached the inner transport in a real request"));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}
