//! The synthetic scope across awaits, nested scopes, spawns and concurrent tasks.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::time::Duration;

use opentelemetry::{Context, baggage::BaggageExt, context::FutureExt as _};
use synth_ctx::{KeyRing, Origin, RunId, Signer, Synthetic, SyntheticFutureExt};

fn synthetic(run: &str) -> Synthetic {
    let keys = KeyRing::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8").unwrap();
    Signer::new(keys).mint_synthetic(Origin::Load, &RunId::new(run).unwrap(), Duration::from_secs(60))
}

fn current_run() -> Option<String> {
    synth_ctx::current().map(|s| s.run().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_survives_awaits_and_thread_hops() {
    let s = synthetic("r-await");
    let seen = async {
        let mut seen = Vec::new();
        for _ in 0..20 {
            // Yield so the multi-thread runtime may resume us on another worker.
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(1)).await;
            seen.push(current_run());
        }
        seen
    }
    .in_synthetic_scope(&s)
    .await;
    assert!(seen.iter().all(|r| r.as_deref() == Some("r-await")), "{seen:?}");
    assert!(!synth_ctx::is_synthetic(), "the scope ends with the future");
}

#[tokio::test]
async fn nested_futures_and_scopes() {
    let outer = synthetic("outer");
    let inner = synthetic("inner");
    let (before, nested, after) = async {
        let before = current_run();
        let nested = async { current_run() }.in_synthetic_scope(&inner).await;
        let after = current_run();
        (before, nested, after)
    }
    .in_synthetic_scope(&outer)
    .await;
    assert_eq!(before.as_deref(), Some("outer"));
    assert_eq!(nested.as_deref(), Some("inner"));
    assert_eq!(after.as_deref(), Some("outer"));
}

#[test]
fn sync_scope_keeps_baggage_and_can_carry_the_member() {
    let s = synthetic("sync");
    let base = Context::new().with_baggage([opentelemetry::KeyValue::new("tenant", "acme")]);
    let _base = base.attach();
    let member = |cx: &Context, key: &str| cx.baggage().get(key).map(|v| v.as_str().to_owned());
    s.in_scope(|| {
        assert_eq!(current_run().as_deref(), Some("sync"));
        Context::map_current(|cx| {
            assert_eq!(member(cx, "tenant").as_deref(), Some("acme"));
            assert_eq!(member(cx, "synthetic"), None, "the propagator writes the member, not the scope");
        });
    });
    let with_member = Context::map_current(|cx| s.to_context_with_baggage(cx));
    assert_eq!(member(&with_member, "tenant").as_deref(), Some("acme"));
    assert_eq!(member(&with_member, "synthetic").as_deref(), Some(s.token()));
    assert!(synth_ctx::from_context(&with_member).is_some());
    assert!(!synth_ctx::is_synthetic());
}

#[test]
fn nested_scope_keeps_the_request_trail() {
    let outer = synthetic("outer");
    let trail = synth_ctx::Trail::new();
    let _g = outer.to_context_with_trail(&Context::new(), &trail).attach();
    synthetic("inner").in_scope(|| synth_ctx::trail::record_guard("email"));
    assert_eq!(trail.guards(), "email");
}

#[cfg(feature = "tokio")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_helper_carries_the_scope_and_bare_spawn_does_not() {
    let s = synthetic("spawned");
    let (helper, future_ext, bare) = async {
        let helper = synth_ctx::spawn(async { current_run() });
        let future_ext = tokio::spawn(async { current_run() }.in_current_scope());
        // Documented behaviour: a bare tokio::spawn starts with an empty context.
        let bare = tokio::spawn(async { current_run() });
        (helper.await.unwrap(), future_ext.await.unwrap(), bare.await.unwrap())
    }
    .in_synthetic_scope(&s)
    .await;
    assert_eq!(helper.as_deref(), Some("spawned"));
    assert_eq!(future_ext.as_deref(), Some("spawned"));
    assert_eq!(bare, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_tasks_never_see_each_others_runs() {
    let mut tasks = Vec::new();
    for i in 0..64 {
        let s = synthetic(&format!("run-{i}"));
        let real = i % 4 == 0;
        let fut = async move {
            let mut wrong = 0;
            for _ in 0..50 {
                tokio::task::yield_now().await;
                let seen = current_run();
                let want = (!real).then(|| format!("run-{i}"));
                if seen != want {
                    wrong += 1;
                }
            }
            wrong
        };
        tasks.push(if real {
            tokio::spawn(fut.with_context(Context::new()))
        } else {
            tokio::spawn(fut.in_synthetic_scope(&s))
        });
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 0);
    }
}

#[test]
fn otel_context_carries_it_for_code_that_only_knows_otel() {
    let s = synthetic("otel");
    let cx = s.to_context(&Context::new());
    // Some library that only propagates OTel context:
    let in_library = || -> bool { synth_ctx::is_synthetic() };
    assert!(!in_library());
    let _g = cx.attach();
    assert!(in_library());
}
