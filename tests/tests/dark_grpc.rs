//! Dark traffic for gRPC: a tonic server behind `MirrorLayer` copies unary calls over h2c to a
//! dark tonic server behind `VerifySyntheticLayer`, which sees each one as `dark`; compare mode
//! compares the answers' messages.
#![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a panic is the failure report

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use synth_ctx::{KeyRing, Origin, RunId, Signer, Verifier};
use synth_e2e::hop::{
    ForwardReply, ForwardRequest,
    hop_client::HopClient,
    hop_server::{Hop, HopServer},
};
use synth_tower::{
    VerifySyntheticLayer,
    mirror::{CompareResult, CompareSpec, DarkResult, DarkTarget, Decision, MirrorHandle, MirrorLayer},
};
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status, transport::Channel};

const KEYS: &str = "k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

/// Echoes the note; `differ_on` makes the dark one answer otherwise for that note.
struct Echo {
    seen: Arc<Mutex<Vec<(Option<Origin>, String)>>>,
    differ_on: Option<&'static str>,
}

#[tonic::async_trait]
impl Hop for Echo {
    async fn forward(&self, request: Request<ForwardRequest>) -> Result<Response<ForwardReply>, Status> {
        let note = request.into_inner().note;
        self.seen.lock().unwrap().push((synth_ctx::current().map(|s| s.origin()), note.clone()));
        let from_c = if self.differ_on == Some(note.as_str()) { "v2".to_owned() } else { String::new() };
        Ok(Response::new(ForwardReply { seen_by_b: note, from_c }))
    }
}

type Seen = Arc<Mutex<Vec<(Option<Origin>, String)>>>;

async fn listener() -> (tokio::net::TcpListener, SocketAddr) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    (l, addr)
}

async fn dark(differ_on: Option<&'static str>) -> (SocketAddr, Seen) {
    let seen = Seen::default();
    let (l, addr) = listener().await;
    let echo = Echo { seen: seen.clone(), differ_on };
    let verify = VerifySyntheticLayer::new(Verifier::new(KeyRing::parse(KEYS).unwrap()));
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(verify)
            .add_service(HopServer::new(echo))
            .serve_with_incoming(TcpListenerStream::new(l))
            .await
            .unwrap()
    });
    (addr, seen)
}

async fn real(dark: SocketAddr) -> (SocketAddr, Seen, MirrorHandle) {
    let seen = Seen::default();
    let (l, addr) = listener().await;
    let layer = MirrorLayer::builder(
        DarkTarget::url(&format!("h2c://{dark}")).unwrap(),
        Signer::new(KeyRing::parse(KEYS).unwrap()),
        RunId::new("dark-grpc").unwrap(),
    )
    .share(1.0)
    .compare(CompareSpec::default())
    .build()
    .unwrap();
    let handle = layer.handle();
    let echo = Echo { seen: seen.clone(), differ_on: None };
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(layer)
            .add_service(HopServer::new(echo))
            .serve_with_incoming(TcpListenerStream::new(l))
            .await
            .unwrap()
    });
    (addr, seen, handle)
}

async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn unary_calls_are_copied_as_dark_and_their_answers_compared() {
    let (dark_addr, dark_seen) = dark(Some("note-7")).await;
    let (real_addr, real_seen, handle) = real(dark_addr).await;
    let channel = Channel::from_shared(format!("http://{real_addr}")).unwrap().connect().await.unwrap();
    let mut client = HopClient::new(channel);
    for i in 0..20 {
        let note = format!("note-{i}");
        let reply = client.forward(ForwardRequest { note: note.clone() }).await.unwrap().into_inner();
        // The real answer is the real service's, untouched.
        assert_eq!((reply.seen_by_b.as_str(), reply.from_c.as_str()), (note.as_str(), ""));
    }
    eventually("20 comparisons", || {
        let s = handle.snapshot();
        CompareResult::ALL.iter().map(|r| s.compared(*r)).sum::<u64>() == 20
    })
    .await;
    let s = handle.snapshot();
    assert_eq!(s.decided(Decision::Queued), 20);
    assert_eq!(s.dark(DarkResult::Answered), 20);
    assert_eq!((s.compared(CompareResult::Match), s.compared(CompareResult::Mismatch)), (19, 1), "{s:?}");
    let samples = handle.mismatch_samples();
    assert_eq!(samples.len(), 1);
    assert_eq!(samples[0].path, "/hop.Hop/Forward");
    assert_eq!(samples[0].differences[0].at, "body");

    let dark_seen = dark_seen.lock().unwrap().clone();
    assert_eq!(dark_seen.len(), 20);
    assert!(dark_seen.iter().all(|(origin, _)| *origin == Some(Origin::Dark)), "{dark_seen:?}");
    let real_seen = real_seen.lock().unwrap().clone();
    assert!(real_seen.iter().all(|(origin, _)| origin.is_none()));
}
