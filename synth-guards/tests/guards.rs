//! Guards under real and synthetic scopes, over real sockets: an SMTP sink, third-party HTTP
//! servers, and the general guard, including the context-lost cases.
#![cfg(all(feature = "lettre", feature = "http"))]
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, routing::any};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::{
    client::legacy::{
        Client,
        connect::{HttpConnector, dns::Name},
    },
    rt::TokioExecutor,
};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use synth_ctx::{KeyRing, Origin, RunId, Signer, Synthetic, SyntheticFutureExt, Trail};
use synth_guards::{
    Guard,
    email::{GuardedError, GuardedTransport, Sent},
    third_party::{HostRule, ThirdPartyGuardLayer},
};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::TcpListener,
};
use tower::{Layer, ServiceExt};

fn synthetic(run: &str) -> Synthetic {
    let keys = KeyRing::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8").unwrap();
    Signer::new(keys).mint_synthetic(Origin::Load, &RunId::new(run).unwrap(), Duration::from_secs(60))
}

/// A minimal SMTP sink on loopback: accepts every message and records its envelope recipients.
async fn smtp_sink() -> (SocketAddr, Arc<Mutex<Vec<Vec<String>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(Mutex::new(Vec::new()));
    let store = received.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let store = store.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                write.write_all(b"220 sink ESMTP\r\n").await.unwrap();
                let mut rcpt = Vec::new();
                while let Ok(Some(line)) = lines.next_line().await {
                    let upper = line.to_ascii_uppercase();
                    let reply: &[u8] = if upper.starts_with("EHLO") || upper.starts_with("HELO") {
                        b"250-sink\r\n250 8BITMIME\r\n"
                    } else if upper.starts_with("RCPT TO:") {
                        rcpt.push(line[8..].trim().trim_matches(['<', '>']).to_owned());
                        b"250 ok\r\n"
                    } else if upper.starts_with("DATA") {
                        write.write_all(b"354 go on\r\n").await.unwrap();
                        while let Ok(Some(l)) = lines.next_line().await {
                            if l == "." {
                                break;
                            }
                        }
                        store.lock().unwrap().push(std::mem::take(&mut rcpt));
                        b"250 queued\r\n"
                    } else if upper.starts_with("QUIT") {
                        write.write_all(b"221 bye\r\n").await.unwrap();
                        return;
                    } else {
                        b"250 ok\r\n"
                    };
                    write.write_all(reply).await.unwrap();
                }
            });
        }
    });
    (addr, received)
}

fn message(to: &[&str]) -> Message {
    let mut b = Message::builder().from("shop@example.com".parse().unwrap()).subject("order");
    for t in to {
        b = b.to(t.parse().unwrap());
    }
    b.body(String::from("thanks")).unwrap()
}

#[tokio::test]
async fn email_is_sent_for_real_traffic_only_and_never_to_reserved_domains() {
    let (addr, received) = smtp_sink().await;
    let smtp = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous("127.0.0.1").port(addr.port()).build();
    let guard = Guard::new("email.test-1");
    let mailer = GuardedTransport::new(smtp).with_guard(guard.clone());

    // Real request, real customer: delivered.
    let sent = mailer.send(message(&["ana@example.com"])).await.unwrap();
    assert!(sent.was_delivered());

    // Synthetic request: suppressed, reported on the trail, nothing reaches the sink.
    let s = synthetic("mail-run");
    let trail = Trail::new();
    let cx = s.to_context_with_trail(&opentelemetry::Context::new(), &trail);
    let sent = {
        use opentelemetry::context::FutureExt as _;
        mailer.send(message(&["ana@example.com"])).with_context(cx).await.unwrap()
    };
    assert!(matches!(sent, Sent::Suppressed { recipients: 1 }));
    assert_eq!(trail.guards(), "email.test-1");

    // Context lost: a synthetic identity in a real request is refused with an error, in every
    // spelling a mail system reads as one.
    for to in [
        "u1+mail-run@loadtest.invalid",
        "u1@loadtest.\u{ff49}\u{ff4e}\u{ff56}\u{ff41}\u{ff4c}\u{ff49}\u{ff44}",
        "Load Test <u1@LOADTEST.INVALID>",
    ] {
        let lost = mailer.send(message(&[to])).await;
        assert!(
            matches!(lost, Err(GuardedError::ContextLost { synthetic: 1, recipients: 1, .. })),
            "{to:?}: {lost:?}"
        );
    }
    // Mixed: refused as a whole, so the real recipient does not get half a message either.
    let mixed = mailer.send(message(&["bo@example.com", "u2+r@loadtest.invalid"])).await;
    let Err(GuardedError::ContextLost { lost, synthetic: 1, recipients: 2 }) = mixed else {
        panic!("a mixed message is refused whole: {mixed:?}")
    };
    assert_eq!(lost.guard(), "email.test-1");
    let text = GuardedError::<std::io::Error>::ContextLost { lost, synthetic: 1, recipients: 2 }.to_string();
    assert!(text.contains("marker") && text.contains("nothing was sent"), "says what to fix: {text}");
    // The inner transport's failure is its own case.
    let failing = GuardedTransport::new(lettre::transport::stub::AsyncStubTransport::new_error())
        .with_guard(Guard::new("email.test-1b"));
    assert!(matches!(failing.send(message(&["ana@example.com"])).await, Err(GuardedError::Transport(_))));

    let got = received.lock().unwrap().clone();
    assert_eq!(got, vec![vec!["ana@example.com".to_owned()]], "only the real message arrived");
    let stats = guard.stats();
    assert_eq!((stats.executed, stats.suppressed, stats.context_lost), (1, 1, 4));
}

#[tokio::test]
async fn email_to_a_domain_the_guard_cannot_classify_is_refused() {
    use lettre::{Address, address::Envelope, transport::stub::AsyncStubTransport};
    let inner = AsyncStubTransport::new_ok();
    let guard = Guard::new("email.test-unclassifiable");
    let mailer = GuardedTransport::new(inner.clone()).with_guard(guard.clone());
    // lettre's checked constructors refuse such domains; an envelope built from unchecked input
    // can still carry one.
    let envelope = Envelope::new(
        None,
        vec![Address::new_dangerous("ana", "example.com"), Address::new_dangerous("u", "x..example")],
    )
    .unwrap();
    let refused = mailer.send_raw(&envelope, b"Subject: hi\r\n\r\nhi\r\n").await;
    assert!(
        matches!(refused, Err(GuardedError::Unclassifiable { unclassifiable: 1, recipients: 2 })),
        "{refused:?}"
    );
    assert!(inner.messages().await.is_empty(), "nothing was sent, not even to the real recipient");
    // In a synthetic request nothing is classified: everything is suppressed.
    let sent = mailer
        .send_raw(&envelope, b"Subject: hi\r\n\r\nhi\r\n")
        .in_synthetic_scope(&synthetic("unclass"))
        .await;
    assert!(matches!(sent, Ok(Sent::Suppressed { recipients: 2 })), "{sent:?}");
    let stats = guard.stats();
    assert_eq!((stats.executed, stats.suppressed, stats.context_lost), (0, 1, 0));
}

#[tokio::test]
async fn general_guard_runs_the_effect_only_for_real_traffic() {
    let guard = Guard::new("payment.charge.test-2");
    let charges = Arc::new(AtomicUsize::new(0));
    let charge = |looks_synthetic: bool| {
        let (guard, charges) = (guard.clone(), charges.clone());
        async move {
            guard
                .run_checked(
                    looks_synthetic,
                    async {
                        charges.fetch_add(1, Ordering::SeqCst);
                        "charged".to_owned()
                    },
                    |s| format!("stub for {}", s.run()),
                )
                .await
        }
    };
    assert_eq!(charge(false).await.unwrap(), "charged");
    assert_eq!(charge(false).in_synthetic_scope(&synthetic("pay")).await.unwrap(), "stub for pay");
    assert_eq!(charge(true).in_synthetic_scope(&synthetic("pay")).await.unwrap(), "stub for pay");
    // A test card without a synthetic context: an error, never a charge and never a stand-in.
    let lost = charge(true).await.unwrap_err();
    assert_eq!(lost.guard(), "payment.charge.test-2");
    assert!(lost.to_string().contains("marker"), "says what to fix: {lost}");
    assert_eq!(charges.load(Ordering::SeqCst), 1);
    // Checked up front, before a handler's own effects: the same refusal, and a pass counts
    // nothing (the guarded call that follows does).
    assert_eq!(guard.check_context(true), Err(lost));
    assert_eq!(guard.check_context(false), Ok(()));
    assert_eq!(async { guard.check_context(true) }.in_synthetic_scope(&synthetic("pay")).await, Ok(()));
    // `run` cannot see the input: the real effect for real traffic, the stub for synthetic.
    assert_eq!(guard.run(async { "ran" }, |_| "stubbed").await, "ran");
    assert_eq!(
        guard.run(async { "ran" }, |_| "stubbed").in_synthetic_scope(&synthetic("pay")).await,
        "stubbed"
    );
    let stats = guard.stats();
    assert_eq!((stats.executed, stats.suppressed, stats.context_lost), (2, 3, 2));
    let text = synth_guards::render_prometheus();
    assert!(text.contains("synth_guard_suppressed_total{guard=\"payment.charge.test-2\"} 3"), "{text}");
    assert!(text.contains("synth_guard_context_lost_total{guard=\"payment.charge.test-2\"} 2"), "{text}");
}

/// A loopback HTTP server that counts hits and answers with its name and the path.
async fn counting_server(name: &'static str) -> (SocketAddr, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = Router::new().fallback(any(move |req: axum::extract::Request| {
        let h = h.clone();
        async move {
            h.fetch_add(1, Ordering::SeqCst);
            format!("{name} {}", req.uri())
        }
    }));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, hits)
}

#[tokio::test]
async fn third_party_calls_are_blocked_rerouted_or_passed_for_synthetic_traffic_only() {
    let (vendor, vendor_hits) = counting_server("vendor").await;
    let (sandbox, sandbox_hits) = counting_server("sandbox").await;
    let layer = ThirdPartyGuardLayer::new("fraud-check.test-3")
        .rule(
            "fraud.example",
            HostRule::reroute(&format!("http://127.0.0.1:{}/sandbox", sandbox.port())).unwrap(),
        )
        .rule("*.payments.example", HostRule::block(402, r#"{"error":"synthetic"}"#))
        .rule("geo.example", HostRule::Pass);
    let guard = layer.guard().clone();
    // Every name resolves to loopback: the "third parties" are told apart by name in the URI,
    // which is what the guard's rules read, and all land on the vendor's port.
    let resolve_to_loopback = tower::service_fn(|_: Name| async {
        Ok::<_, std::io::Error>(std::iter::once(SocketAddr::from(([127, 0, 0, 1], 0))))
    });
    let connector = HttpConnector::new_with_resolver(resolve_to_loopback);
    let client = layer.layer(Client::builder(TokioExecutor::new()).build::<_, Empty<Bytes>>(connector));
    let call = |host: &'static str, path: &'static str| {
        let client = client.clone();
        async move {
            let req =
                Request::get(format!("http://{host}:{}{path}", vendor.port())).body(Empty::new()).unwrap();
            let res = client.oneshot(req).await.unwrap();
            let status = res.status().as_u16();
            let body =
                String::from_utf8(res.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap();
            (status, body)
        }
    };

    // Real traffic is never touched: every call reaches the vendor.
    for host in ["fraud.example", "api.payments.example", "geo.example", "other.example"] {
        assert_eq!(call(host, "/real").await, (200, "vendor /real".to_owned()));
    }
    assert_eq!(vendor_hits.load(Ordering::SeqCst), 4);

    let s = synthetic("vendors");
    // Rerouted to the sandbox with the path kept.
    assert_eq!(
        call("fraud.example", "/v1/check?id=1").in_synthetic_scope(&s).await,
        (200, "sandbox /sandbox/v1/check?id=1".to_owned())
    );
    // Blocked with the canned answer.
    assert_eq!(
        call("api.payments.example", "/charge").in_synthetic_scope(&s).await,
        (402, r#"{"error":"synthetic"}"#.to_owned())
    );
    // Unknown hosts are blocked by default (fail closed).
    assert_eq!(call("other.example", "/").in_synthetic_scope(&s).await.0, 503);
    // Pass lets it through.
    assert_eq!(call("geo.example", "/where").in_synthetic_scope(&s).await, (200, "vendor /where".to_owned()));

    assert_eq!(vendor_hits.load(Ordering::SeqCst), 5, "only the pass rule reached the vendor");
    assert_eq!(sandbox_hits.load(Ordering::SeqCst), 1);
    let stats = guard.stats();
    assert_eq!(
        (stats.suppressed, stats.executed),
        (3, 4),
        "pass is neither: the real effect of a synthetic call"
    );
}
