//! gRPC steps: unary calls over HTTP/2 with tonic, one lazily connected channel per target
//! origin, messages built from JSON templates into `prost-reflect` dynamic messages.
//!
//! A call is timed, counted, stopped and cancelled exactly like an HTTP request (the same
//! [`InFlight`] and [`Outcome`] recording); the marker goes in the `synthetic-traffic`
//! metadata, read from the run's current marker for every call ([`MarkerInterceptor`]), so a
//! refreshed token applies to the next call.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError, RwLock},
    time::Duration,
};

use http::{HeaderValue, Uri};
use prost::Message as _;
use prost_reflect::{DynamicMessage, MessageDescriptor, SerializeOptions};
use tokio::time::Instant;
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    metadata::{MetadataMap, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};

use super::{Shared, journey::InFlight};
use crate::{
    rng::Rng,
    scenario::{Capture, GrpcCall, Tls, template::Values},
    stats::{ErrorClass, GrpcCode, Outcome},
};

/// The metadata key of the marker (the `synthetic-traffic` header).
const MARKER_KEY: &str = "synthetic-traffic";

/// Puts the run's current marker into every call's `synthetic-traffic` metadata.
///
/// It reads the marker when each call is made, not when it is built, so a client made once
/// keeps sending the refreshed marker after the run's token is renewed. Use it with any tonic
/// client: `FooClient::with_interceptor(channel, interceptor)`.
///
/// The one a journey gets from [`User::grpc`](crate::User::grpc) also refuses every call once
/// the run is stopped (`CANCELLED`, nothing sent), as loadgen's own requests do.
#[derive(Clone)]
pub struct MarkerInterceptor {
    marker: Arc<RwLock<HeaderValue>>,
    /// The run's stop flag, for interceptors handed to journeys.
    stopped: Option<Arc<std::sync::atomic::AtomicBool>>,
}

/// Never prints the marker: it is a live signed token while the run goes on.
impl std::fmt::Debug for MarkerInterceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MarkerInterceptor").finish_non_exhaustive()
    }
}

impl MarkerInterceptor {
    /// An interceptor that sends whatever `marker` holds at the time of each call.
    pub(crate) fn new(marker: Arc<RwLock<HeaderValue>>) -> Self {
        MarkerInterceptor { marker, stopped: None }
    }

    /// The same, refusing calls once `stopped` is set.
    pub(crate) fn stopping(mut self, stopped: Arc<std::sync::atomic::AtomicBool>) -> Self {
        self.stopped = Some(stopped);
        self
    }
}

impl Interceptor for MarkerInterceptor {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if self.stopped.as_ref().is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst)) {
            // Nothing reaches the target after a stop, from loadgen's steps or a journey's client.
            let mut status = Status::cancelled("the load test was stopped");
            status.set_source(Arc::new(LocalFailure(ErrorClass::Cancelled)));
            return Err(status);
        }
        let marker = self.marker.read().unwrap_or_else(PoisonError::into_inner).clone();
        // A marker is a printable ASCII token: one that is not would be refused by any verifier,
        // so the call is not sent at all (fail closed) rather than sent untagged.
        let value = MetadataValue::try_from(marker.as_bytes()).map_err(|_| {
            let mut status = Status::internal("the synthetic-traffic marker is not ASCII");
            status.set_source(Arc::new(LocalFailure(ErrorClass::Expectation)));
            status
        })?;
        request.metadata_mut().insert(MARKER_KEY, value);
        Ok(request)
    }
}

/// The interceptor for `shared`'s run: the marker it sends is the run's, refreshed in place.
pub(crate) fn interceptor(shared: &Shared) -> MarkerInterceptor {
    MarkerInterceptor::new(shared.marker.clone())
}

/// The run's gRPC channels: one per origin (`scheme://host:port`), connected on first use and
/// shared by every call to it. HTTP/2 multiplexes the calls over that connection; tonic
/// reconnects it if it drops.
pub(crate) struct Channels {
    by_origin: Mutex<HashMap<String, Channel>>,
    connect_timeout: Duration,
    /// For `https://` origins; `None` if no TLS configuration could be built (those calls then
    /// fail as connect errors, as HTTPS requests do).
    tls: Option<rustls::ClientConfig>,
}

impl std::fmt::Debug for Channels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.by_origin.lock().map_or(0, |m| m.len());
        f.debug_struct("Channels").field("origins", &n).finish_non_exhaustive()
    }
}

impl Channels {
    /// No channel yet; `tls` adds the scenario's roots to the system's for `https://`.
    pub(crate) fn new(connect_timeout: Duration, tls: &Tls) -> Self {
        Channels {
            by_origin: Mutex::new(HashMap::new()),
            connect_timeout,
            tls: super::client::tls_config(tls).ok(),
        }
    }

    /// The channel to `uri`'s origin, made (not yet connected) on first use.
    fn get(&self, uri: &Uri) -> Result<Channel, ErrorClass> {
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err(ErrorClass::Connect);
        };
        let origin = format!("{scheme}://{authority}");
        let mut map = self.by_origin.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(c) = map.get(&origin) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(origin.clone())
            .map_err(|_| ErrorClass::Connect)?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true);
        let channel = match scheme {
            "http" => endpoint.connect_lazy(),
            "https" => {
                let Some(config) = self.tls.clone() else { return Err(ErrorClass::Connect) };
                let mut tcp = hyper_util::client::legacy::connect::HttpConnector::new();
                tcp.enforce_http(false);
                tcp.set_nodelay(true);
                tcp.set_connect_timeout(Some(self.connect_timeout));
                // ALPN offers only `h2`: gRPC needs HTTP/2. The config names ring as its
                // provider, so no process-wide default provider is needed.
                let https = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(config)
                    .https_only()
                    .enable_http2()
                    .wrap_connector(tcp);
                endpoint.connect_with_connector_lazy(https)
            }
            _ => return Err(ErrorClass::Connect),
        };
        map.insert(origin, channel.clone());
        Ok(channel)
    }
}

/// A tonic [`Channel`] to `uri`'s origin for `shared`'s run: pooled (one per origin, shared
/// with the run's gRPC steps), connected lazily, TLS with the scenario's roots for `https://`.
/// Wrap it with [`interceptor`] so its calls carry the marker.
pub(crate) fn channel(shared: &Shared, uri: &Uri) -> Result<Channel, ErrorClass> {
    shared.grpc.get(uri)
}

/// [`channel`] with [`interceptor`] applied: what a generated tonic client takes
/// (`FooClient::new(intercepted(shared, uri)?)`), every call tagged with the run's current marker.
pub(crate) fn intercepted(
    shared: &Shared,
    uri: &Uri,
) -> Result<InterceptedService<Channel, MarkerInterceptor>, ErrorClass> {
    Ok(InterceptedService::new(channel(shared, uri)?, interceptor(shared)))
}

/// Why a call failed on this side, carried as a status's source so it is not read as a
/// status the server sent.
#[derive(Debug)]
struct LocalFailure(ErrorClass);

impl std::fmt::Display for LocalFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.as_str())
    }
}

impl std::error::Error for LocalFailure {}

/// A request as sent: built per call from a template, or encoded once when the scenario loaded.
#[derive(Debug)]
enum Outgoing {
    Message(DynamicMessage),
    Encoded(bytes::Bytes),
}

/// Encodes a request, and decodes an answer of the method's output type when the step reads it
/// (captures, JSON expectations; the first message of a stream); otherwise the answer's bytes
/// are skipped, as an HTTP step skips parsing a body it does not read.
#[derive(Clone, Debug)]
struct DynamicCodec {
    output: Option<MessageDescriptor>,
}

impl Codec for DynamicCodec {
    type Encode = Outgoing;
    type Decode = Option<DynamicMessage>;
    type Encoder = DynamicEncoder;
    type Decoder = DynamicDecoder;

    fn encoder(&mut self) -> DynamicEncoder {
        DynamicEncoder
    }

    fn decoder(&mut self) -> DynamicDecoder {
        DynamicDecoder { output: self.output.clone() }
    }
}

#[derive(Debug)]
struct DynamicEncoder;

impl Encoder for DynamicEncoder {
    type Item = Outgoing;
    type Error = Status;

    fn encode(&mut self, item: Outgoing, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        match item {
            Outgoing::Message(m) => m.encode(dst).map_err(|e| local(ErrorClass::Expectation, e.to_string())),
            Outgoing::Encoded(b) => {
                bytes::BufMut::put_slice(dst, &b);
                Ok(())
            }
        }
    }
}

#[derive(Debug)]
struct DynamicDecoder {
    output: Option<MessageDescriptor>,
}

impl Decoder for DynamicDecoder {
    type Item = Option<DynamicMessage>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Option<DynamicMessage>>, Status> {
        // Only the first message is read: a stream's later ones are counted, not kept.
        let Some(output) = self.output.take() else {
            bytes::Buf::advance(src, bytes::Buf::remaining(src));
            return Ok(Some(None));
        };
        // An answer that is not the method's output type is the server breaking the protocol.
        DynamicMessage::decode(output, src)
            .map(|m| Some(Some(m)))
            .map_err(|e| local(ErrorClass::Protocol, e.to_string()))
    }
}

fn local(class: ErrorClass, message: String) -> Status {
    let mut status = Status::internal(message);
    status.set_source(Arc::new(LocalFailure(class)));
    status
}

/// The failure class of a status that no server sent (connect, timeout, reset, codec), or
/// `None` for a status the server answered with.
pub(super) fn local_failure(status: &Status) -> Option<ErrorClass> {
    let mut source = std::error::Error::source(status);
    let any = source.is_some();
    while let Some(e) = source {
        if let Some(LocalFailure(class)) = e.downcast_ref::<LocalFailure>() {
            return Some(*class);
        }
        if e.is::<tonic::ConnectError>() {
            return Some(ErrorClass::Connect);
        }
        if e.is::<tonic::TimeoutExpired>() {
            return Some(ErrorClass::Timeout);
        }
        source = e.source();
    }
    // The server's statuses carry no source; one with a source came from the transport (a
    // reset stream, a closed connection).
    any.then_some(ErrorClass::Reset)
}

/// Makes one call of a gRPC step; the captured values to store, or why it failed (it is then
/// counted as the step's failure, as an HTTP request's would be).
pub(super) async fn call(
    shared: &Shared,
    g: &GrpcCall,
    values: &(dyn Values + Sync),
    rng: &mut Rng,
    intended: Option<Instant>,
) -> Result<Vec<(usize, String)>, ErrorClass> {
    let unsent = |class: ErrorClass| {
        shared.stats.record(g.stat, Outcome::unanswered(class));
        observe(shared, g, class.into(), None);
        Err(class)
    };
    let message = match &g.encoded {
        Some(bytes) => Outgoing::Encoded(bytes.clone()),
        None => {
            let json = super::journey::render_json(&g.message, values, rng);
            // A message the schema does not accept (a template that rendered a word into a
            // number field) is not sent: the step fails, the run goes on.
            let Ok(message) = DynamicMessage::deserialize(g.method.input(), json) else {
                return unsent(ErrorClass::Expectation);
            };
            Outgoing::Message(message)
        }
    };
    let mut request = tonic::Request::new(message);
    for (key, value) in &g.metadata {
        let Ok(v) = MetadataValue::try_from(value.render(values, rng)) else {
            return unsent(ErrorClass::Expectation);
        };
        request.metadata_mut().insert(key.clone(), v);
    }
    let target = g.target.as_ref().unwrap_or(&shared.scenario.target);
    let service = match intercepted(shared, target) {
        Ok(s) => s,
        Err(class) => return unsent(class),
    };
    if !shared.may_send() {
        // Nothing may reach the target after a stop (nor past a preflight's budget).
        shared.stats.record(g.stat, Outcome::unanswered(ErrorClass::Cancelled));
        return Err(ErrorClass::Cancelled);
    }
    let intended = intended.unwrap_or_else(Instant::now);
    let mut in_flight = InFlight::start(shared, g.stat);
    let mut client = tonic::client::Grpc::new(service);
    // Messages of a server stream, counted as they arrive (a stream cut by an error status or
    // a timeout still counts the ones it delivered).
    let mut count = 0u64;
    let messages = &mut count;
    let exchange = async {
        // At most `max_connections` requests in flight, gRPC calls included; the wait counts
        // in the call's latency, as it does for HTTP requests.
        let Some(_slot) = shared.client.slot().await else {
            return Err(local(ErrorClass::Cancelled, "the run is ending".to_owned()));
        };
        client.ready().await.map_err(|e| {
            let mut status = Status::unavailable(e.to_string());
            status.set_source(Arc::new(LocalFailure(ErrorClass::Connect)));
            status
        })?;
        let reads = !g.expect_json.is_empty()
            || g.captures.iter().any(|(_, c)| matches!(c, Capture::Json(_) | Capture::Regex(_)));
        let codec = DynamicCodec { output: reads.then(|| g.method.output()) };
        if !g.server_streaming {
            return client.unary(request, g.path.clone(), codec).await;
        }
        // A stream is read to its end (the call's latency); its first message is the answer
        // that captures and expectations read, and every message is counted.
        let response = client.server_streaming(request, g.path.clone(), codec).await?;
        let (metadata, mut stream, extensions) = response.into_parts();
        let mut first = None;
        while let Some(m) = stream.message().await? {
            *messages += 1;
            if first.is_none() {
                first = m;
            }
        }
        let mut headers = metadata.into_headers();
        if let Some(trailers) = stream.trailers().await? {
            headers.extend(trailers.into_headers());
        }
        Ok(tonic::Response::from_parts(MetadataMap::from_headers(headers), first, extensions))
    };
    let result = tokio::time::timeout(shared.scenario.timeouts.request, exchange).await;
    let latency_us = u64::try_from(intended.elapsed().as_micros()).unwrap_or(u64::MAX);
    if count > 0 {
        shared.stats.record_messages(g.stat, count);
    }
    let (code, metadata, message) = match result {
        Err(_) => return failed(shared, g, &mut in_flight, ErrorClass::Timeout),
        Ok(Err(status)) => match local_failure(&status) {
            Some(class) => return failed(shared, g, &mut in_flight, class),
            None => (GrpcCode::from(status.code()), status.metadata().clone(), None),
        },
        Ok(Ok(response)) => {
            let (metadata, message, _) = response.into_parts();
            (GrpcCode::Ok, metadata, message)
        }
    };
    let seen = |key: &http::HeaderName| metadata.get(key.as_str()).map(|v| v.as_encoded_bytes());
    let tagged = seen(&synth_ctx::http::SYNTHETIC_TRAFFIC_SEEN) == Some(shared.run_id.as_bytes());
    let shed = seen(&synth_ctx::http::SYNTHETIC_TRAFFIC_SHED) == Some(b"1".as_slice());
    let checked = check(g, code, &metadata, message.as_ref());
    let error = checked.as_ref().err().copied();
    in_flight.finish(Outcome {
        latency_us: Some(latency_us),
        status: None,
        grpc_status: Some(code),
        error,
        tagged,
        shed,
    });
    observe(shared, g, Observed::Answer { error, tagged }, Some(&metadata));
    checked
}

fn failed(
    shared: &Shared,
    g: &GrpcCall,
    in_flight: &mut InFlight<'_>,
    class: ErrorClass,
) -> Result<Vec<(usize, String)>, ErrorClass> {
    in_flight.finish(Outcome::unanswered(class));
    observe(shared, g, class.into(), None);
    Err(class)
}

/// Checks the status and expectations and runs the captures: the captured values, or the
/// failure class.
fn check(
    g: &GrpcCall,
    code: GrpcCode,
    metadata: &MetadataMap,
    message: Option<&DynamicMessage>,
) -> Result<Vec<(usize, String)>, ErrorClass> {
    if !g.expect_status.contains(&code) {
        return Err(ErrorClass::Status);
    }
    for (name, want) in &g.expect_metadata {
        if metadata.get(name.as_str()).and_then(|v| v.to_str().ok()) != Some(want.as_str()) {
            return Err(ErrorClass::Expectation);
        }
    }
    let needs_json = !g.expect_json.is_empty()
        || g.captures.iter().any(|(_, c)| matches!(c, Capture::Json(_) | Capture::Regex(_)));
    // Proto field names (as in the message template), every field present (a capture of a
    // zero value finds it), 64-bit integers as JSON numbers.
    let json = match message {
        Some(m) if needs_json => {
            let options = SerializeOptions::new()
                .skip_default_fields(false)
                .use_proto_field_name(true)
                .stringify_64_bit_integers(false);
            m.serialize_with_options(serde_json::value::Serializer, &options).ok()
        }
        _ => None,
    };
    for (path, want) in &g.expect_json {
        if json.as_ref().and_then(|j| path.find(j)) != Some(want) {
            return Err(ErrorClass::Expectation);
        }
    }
    let text = if g.captures.iter().any(|(_, c)| matches!(c, Capture::Regex(_))) {
        json.as_ref().map(serde_json::Value::to_string)
    } else {
        None
    };
    let mut captured = Vec::with_capacity(g.captures.len());
    for (slot, capture) in &g.captures {
        let value = match capture {
            Capture::Json(path) => json.as_ref().and_then(|j| path.find(j)).map(|v| match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            }),
            Capture::Header(name) => {
                metadata.get(name.as_str()).and_then(|v| v.to_str().ok()).map(str::to_owned)
            }
            Capture::Regex(re) => text
                .as_deref()
                .and_then(|t| re.captures(t))
                .and_then(|c| c.get(1).or_else(|| c.get(0)))
                .map(|m| m.as_str().to_owned()),
        };
        match value {
            Some(v) => captured.push((*slot, v)),
            None => return Err(ErrorClass::Capture),
        }
    }
    Ok(captured)
}

/// What a call came to, for preflight.
enum Observed {
    Unanswered(ErrorClass),
    Answer { error: Option<ErrorClass>, tagged: bool },
}

impl From<ErrorClass> for Observed {
    fn from(class: ErrorClass) -> Self {
        Observed::Unanswered(class)
    }
}

/// Preflight: keeps what the answer's metadata said about hops and guards.
fn observe(shared: &Shared, g: &GrpcCall, what: Observed, metadata: Option<&MetadataMap>) {
    let Some(observe) = &shared.observe else { return };
    let text = |name: &http::HeaderName| {
        metadata.and_then(|m| m.get(name.as_str())).and_then(|v| v.to_str().ok()).map(str::to_owned)
    };
    let (error, seen) = match what {
        Observed::Unanswered(class) => (Some(class), false),
        Observed::Answer { error, tagged } => (error, tagged),
    };
    let o = super::Observation {
        step: shared.scenario.step_names.get(g.stat).cloned().unwrap_or_else(|| Arc::from("?")),
        // An HTTP status: a gRPC call has none of its own (its status is in the report).
        status: None,
        error,
        seen,
        path: text(&synth_ctx::http::SYNTHETIC_TRAFFIC_PATH),
        guards: text(&synth_ctx::http::SYNTHETIC_TRAFFIC_GUARDS),
        expect_path: g.expect_path.clone(),
        expect_guards: g.expect_guards.clone(),
    };
    observe.lock().unwrap_or_else(PoisonError::into_inner).push(o);
}
