//! Refusals and shed answers at a tonic gRPC server are gRPC statuses the tonic client decodes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use synth_ctx::{KeyRing, Origin, RunId, Signer, Verifier};
use synth_e2e::hop::{
    ForwardReply, ForwardRequest,
    hop_client::HopClient,
    hop_server::{Hop, HopServer},
};
use synth_tower::{InvalidMarkerPolicy, KillSwitch, VerifySyntheticLayer};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Code, Request, Response, Status, metadata::MetadataValue, transport::Channel};

const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

struct Counting(Arc<AtomicUsize>);

#[tonic::async_trait]
impl Hop for Counting {
    async fn forward(&self, _: Request<ForwardRequest>) -> Result<Response<ForwardReply>, Status> {
        self.0.fetch_add(1, Ordering::SeqCst);
        let seen =
            synth_ctx::current().map_or_else(|| "real".to_owned(), |s| format!("synthetic {}", s.run()));
        Ok(Response::new(ForwardReply { seen_by_b: seen, from_c: String::new() }))
    }
}

async fn start(layer: VerifySyntheticLayer, hits: Arc<AtomicUsize>) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(layer)
            .add_service(HopServer::new(Counting(hits)))
            .serve_with_incoming(TcpListenerStream::new(l))
            .await
            .unwrap()
    });
    addr
}

async fn call(addr: SocketAddr, metadata: &[(&'static str, String)]) -> Result<String, Status> {
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let mut request = Request::new(ForwardRequest { note: String::new() });
    for (k, v) in metadata {
        request.metadata_mut().insert(*k, MetadataValue::try_from(v.as_str()).unwrap());
    }
    HopClient::new(channel).forward(request).await.map(|r| r.into_inner().seen_by_b)
}

fn signer(secret_kid: &str) -> Signer {
    Signer::new(KeyRing::parse(secret_kid).unwrap())
}

#[tokio::test]
async fn bad_markers_are_permission_denied_with_the_reason() {
    let hits = Arc::new(AtomicUsize::new(0));
    let addr =
        start(VerifySyntheticLayer::new(Verifier::new(KeyRing::parse(KEYS).unwrap())), hits.clone()).await;
    let run = RunId::new("grpc").unwrap();
    let good = signer(KEYS);
    let cases = [
        (
            signer("k1:ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8").mint(
                Origin::Load,
                &run,
                Duration::from_secs(60),
            ),
            "bad_signature",
        ),
        (
            signer("k7:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8").mint(
                Origin::Load,
                &run,
                Duration::from_secs(60),
            ),
            "unknown_key",
        ),
        (good.mint_until(Origin::Load, &run, 1_000_000_000), "expired"),
        (good.mint(Origin::Load, &run, Duration::from_secs(7 * 86_400)), "ttl_too_long"),
        ("garbage".to_owned(), "malformed"),
        ("x".repeat(2000), "oversized"),
    ];
    for (token, reason) in &cases {
        for key in ["synthetic-traffic", "baggage"] {
            let value = if key == "baggage" { format!("synthetic={token}") } else { token.clone() };
            let status = call(addr, &[(key, value)]).await.unwrap_err();
            assert_eq!(status.code(), Code::PermissionDenied, "{reason} via {key}: {status:?}");
            assert!(status.message().contains(&format!("({reason})")), "{reason}: {}", status.message());
        }
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0, "a refused call reached the handler");
    assert_eq!(call(addr, &[]).await.unwrap(), "real");
    let token = good.mint(Origin::Replay, &run, Duration::from_secs(60));
    assert_eq!(call(addr, &[("synthetic-traffic", token)]).await.unwrap(), "synthetic grpc");
}

#[tokio::test]
async fn treat_as_real_and_kill_switch_over_grpc() {
    let hits = Arc::new(AtomicUsize::new(0));
    let kill = KillSwitch::new();
    let layer = VerifySyntheticLayer::new(Verifier::new(KeyRing::parse(KEYS).unwrap()))
        .with_invalid_marker_policy(InvalidMarkerPolicy::TreatAsReal)
        .with_kill_switch(kill.clone());
    let addr = start(layer, hits.clone()).await;
    assert_eq!(call(addr, &[("synthetic-traffic", "forged".into())]).await.unwrap(), "real");

    let token = signer(KEYS).mint(Origin::Load, &RunId::new("k").unwrap(), Duration::from_secs(60));
    kill.stop();
    let status = call(addr, &[("synthetic-traffic", token.clone())]).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable);
    assert_eq!(status.metadata().get("synthetic-traffic-shed").unwrap(), "1");
    assert_eq!(call(addr, &[]).await.unwrap(), "real", "real calls are never shed");
    kill.resume();
    assert_eq!(call(addr, &[("synthetic-traffic", token)]).await.unwrap(), "synthetic k");
    assert_eq!(hits.load(Ordering::SeqCst), 3);
}
