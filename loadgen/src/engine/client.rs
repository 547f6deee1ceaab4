//! The HTTP client: hyper over pooled connections, with connect and request timeouts and
//! classified errors.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

use crate::stats::ErrorClass;

type TlsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A pooled client: HTTP/1.1 or h2c for `http://`, TLS with ALPN (`h2`, `http/1.1`) for
/// `https://`.
#[derive(Clone, Debug)]
pub(crate) struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
    /// For `https://` URLs; `None` if no TLS configuration could be built (every HTTPS request
    /// then fails as a connect error, and the run says why at the start).
    tls: Option<TlsClient>,
    connect_timeout: Duration,
    request_timeout: Duration,
    /// Bounds the pool: one permit per request in flight through it.
    slots: std::sync::Arc<tokio::sync::Semaphore>,
    http2: bool,
}

/// The most loadgen reads of an answer it interprets itself (a signal source's query result, an
/// `--observe` page): 4 MiB, far above a real query result or `/metrics` page.
pub(crate) const MAX_READ_BODY: usize = 4 << 20;

/// Why [`HttpClient::send_bounded`] gave no answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum Bounded {
    /// The exchange failed.
    #[error("{}", .0.as_str())]
    Failed(ErrorClass),
    /// The body is larger than the limit (in bytes); the rest was not read.
    #[error("the answer is larger than {0} bytes")]
    TooLarge(usize),
}

/// A connection kept by one user.
#[derive(Debug)]
pub(crate) struct Conn {
    authority: http::uri::Authority,
    conn: super::h1::H1Conn,
}

impl HttpClient {
    /// A client with these timeouts and at most `max_connections` requests in flight through
    /// its pool.
    pub(crate) fn new(
        connect_timeout: Duration,
        request_timeout: Duration,
        max_connections: usize,
        http2: bool,
        tls: &crate::scenario::Tls,
    ) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let mut builder = Client::builder(TokioExecutor::new());
        builder.pool_idle_timeout(Duration::from_secs(30));
        let tls = match tls_config(tls) {
            Ok(config) => {
                let mut plain = connector.clone();
                plain.enforce_http(false);
                let https = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(config).https_only();
                // ALPN offers what is enabled: h2 only when asked for HTTP/2, else h2 and http/1.1.
                let https = if http2 { https.enable_http2() } else { https.enable_http1().enable_http2() };
                Some(builder.build(https.wrap_connector(plain)))
            }
            Err(e) => {
                eprintln!("loadgen: no TLS for https:// URLs: {e}");
                None
            }
        };
        if http2 {
            // h2c with prior knowledge: one connection carries many streams.
            builder.http2_only(true);
        }
        let inner = builder.build(connector);
        let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(max_connections.max(1)));
        HttpClient { inner, tls, connect_timeout, request_timeout, slots, http2 }
    }

    /// Sends `req` over `conn`, a connection this caller keeps to itself (a closed-model user),
    /// opening or re-opening it as needed; requests to another host go through the pool.
    /// Skipping the shared pool saves its locking and bookkeeping on every request.
    pub(crate) async fn send_on(
        &self,
        conn: &mut Option<Conn>,
        req: Request<Full<Bytes>>,
    ) -> Result<Response<Bytes>, ErrorClass> {
        let Some(authority) = req.uri().authority().cloned() else { return self.send(req).await };
        // Dedicated connections are HTTP/1.1; HTTP/2 multiplexes through the pool.
        if self.http2 || req.uri().scheme_str() != Some("http") {
            return self.send(req).await;
        }
        // A kept-alive connection the server closed in the meantime fails before any answer
        // byte arrives: that request is sent once more, on a new connection.
        for attempt in 0..2 {
            let reusable = conn.as_ref().is_some_and(|c| c.authority == authority && c.conn.reusable());
            if !reusable {
                *conn = None;
                let h = authority.host().trim_start_matches('[').trim_end_matches(']');
                let stream = tokio::time::timeout(
                    self.connect_timeout,
                    tokio::net::TcpStream::connect((h, authority.port_u16().unwrap_or(80))),
                )
                .await
                .map_err(|_| ErrorClass::Connect)?
                .map_err(|_| ErrorClass::Connect)?;
                let _ = stream.set_nodelay(true);
                *conn = Some(Conn { authority: authority.clone(), conn: super::h1::H1Conn::new(stream) });
            }
            let Some(c) = conn.as_mut() else { return Err(ErrorClass::Connect) };
            // Only a request that changes nothing is sent again: the server may have read (and
            // acted on) the first one before it closed, and a POST twice is two orders.
            let safe =
                matches!(*req.method(), http::Method::GET | http::Method::HEAD | http::Method::OPTIONS);
            let may_retry = attempt == 0 && safe && c.conn.reused();
            let result = match tokio::time::timeout(self.request_timeout, c.conn.send(&req)).await {
                Ok(r) => r,
                Err(_) => Err((ErrorClass::Timeout, false)),
            };
            match result {
                Ok(res) => return Ok(res),
                Err((class, nothing_read)) => {
                    *conn = None;
                    if !(may_retry && nothing_read) {
                        return Err(class);
                    }
                }
            }
        }
        Err(ErrorClass::Reset)
    }

    /// Waits for one of the pool's `max_connections` slots, for a request that does not go
    /// through the pool (a gRPC call): the scenario's bound holds for every request in flight.
    /// `None` if the pool is closed.
    pub(super) async fn slot(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        self.slots.acquire().await.ok()
    }

    /// Sends `req` and reads the whole answer.
    pub(crate) async fn send(&self, req: Request<Full<Bytes>>) -> Result<Response<Bytes>, ErrorClass> {
        self.exchange(req, None).await.map_err(|e| match e {
            Bounded::Failed(class) => class,
            // Not reachable without a limit; a connection that sends too much is a reset.
            Bounded::TooLarge(_) => ErrorClass::Reset,
        })
    }

    /// Sends `req` and reads the answer, whose body may be at most `limit` bytes: for answers
    /// loadgen reads itself (signal sources, `--observe` pages), so that a misdirected URL
    /// streaming gigabytes cannot exhaust its memory while it guards a run.
    pub(crate) async fn send_bounded(
        &self,
        req: Request<Full<Bytes>>,
        limit: usize,
    ) -> Result<Response<Bytes>, Bounded> {
        self.exchange(req, Some(limit)).await
    }

    async fn exchange(
        &self,
        req: Request<Full<Bytes>>,
        limit: Option<usize>,
    ) -> Result<Response<Bytes>, Bounded> {
        // With HTTP/1.1 a request in flight holds a connection: the permit bounds sockets.
        let Ok(_slot) = self.slots.acquire().await else {
            return Err(Bounded::Failed(ErrorClass::Cancelled));
        };
        let https = req.uri().scheme() == Some(&http::uri::Scheme::HTTPS);
        let exchange = async {
            let res = match (&self.tls, https) {
                (_, false) => self.inner.request(req).await,
                (Some(tls), true) => tls.request(req).await,
                (None, true) => return Err(Bounded::Failed(ErrorClass::Connect)),
            }
            .map_err(|e| Bounded::Failed(classify(&e)))?;
            let (parts, mut body) = res.into_parts();
            let Some(limit) = limit else {
                let body = body.collect().await.map_err(|e| Bounded::Failed(classify_hyper(&e)))?.to_bytes();
                return Ok(Response::from_parts(parts, body));
            };
            // A declared length over the limit is refused before a byte of it is read.
            let declared = parts
                .headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if declared.is_some_and(|n| n > limit as u64) {
                return Err(Bounded::TooLarge(limit));
            }
            let mut read = Vec::new();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| Bounded::Failed(classify_hyper(&e)))?;
                if let Ok(data) = frame.into_data() {
                    if read.len().saturating_add(data.len()) > limit {
                        return Err(Bounded::TooLarge(limit));
                    }
                    read.extend_from_slice(&data);
                }
            }
            Ok(Response::from_parts(parts, Bytes::from(read)))
        };
        match tokio::time::timeout(self.request_timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(Bounded::Failed(ErrorClass::Timeout)),
        }
    }
}

/// The TLS client configuration: the system's roots plus the scenario's, ring as the one crypto
/// provider (named here, so no process-wide default is needed).
pub(super) fn tls_config(tls: &crate::scenario::Tls) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    for cert in &tls.extra_roots {
        roots.add(cert.clone())?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

fn classify(e: &hyper_util::client::legacy::Error) -> ErrorClass {
    if e.is_connect() {
        return ErrorClass::Connect;
    }
    match std::error::Error::source(e).and_then(|s| s.downcast_ref::<hyper::Error>()) {
        Some(h) => classify_hyper(h),
        None => ErrorClass::Reset,
    }
}

fn classify_hyper(e: &hyper::Error) -> ErrorClass {
    if e.is_parse() || e.is_parse_status() {
        ErrorClass::Protocol
    } else if e.is_timeout() {
        ErrorClass::Timeout
    } else {
        // Closed, incomplete message, body write aborted, I/O: the connection went away.
        ErrorClass::Reset
    }
}
