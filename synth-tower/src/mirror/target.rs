//! Where copies go: a base URL (`http://`, `https://`, `h2c://`) or any tower `Service`.

use std::{
    error::Error as StdError,
    fmt,
    future::Future,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Uri, uri::PathAndQuery};
use http_body::Body;
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use tower_service::Service;

use super::dispatch::Reservation;
use crate::tap::{Collector, header_bytes, owned_headers};

type BoxError = Box<dyn StdError + Send + Sync>;
type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A dark answer: status, headers and as much of the body as the limit allows.
#[derive(Debug)]
pub(crate) struct DarkAnswer {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    /// False when the body was longer than the limit (then `body` is its start).
    pub(crate) complete: bool,
    /// Time to the response head.
    pub(crate) head_latency: Duration,
    /// What the kept body takes from the byte budget, until the answer is dropped.
    _reservation: Option<Reservation>,
}

impl DarkAnswer {
    /// An answer the byte budget could not keep: nothing of it held, compared as `too_large`.
    fn over_budget(status: StatusCode, head_latency: Duration, keep: Option<Reservation>) -> Self {
        DarkAnswer {
            status,
            headers: HeaderMap::new(),
            body: Bytes::new(),
            complete: false,
            head_latency,
            _reservation: keep,
        }
    }
}

/// Why a [`DarkTarget`] cannot be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DarkTargetError {
    /// Not a URL.
    #[error("dark target `{url}` is not a URL ({reason}); give a base URL such as http://catalog-v2:8080")]
    BadUrl {
        /// What was given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A scheme other than `http`, `https` and `h2c`.
    #[error(
        "dark target `{url}`: the scheme `{scheme}` is not supported; use http:// (HTTP/1.1, or HTTP/2 \
         by upgrade-free prior knowledge with h2c://) or https:// (HTTP/2 or HTTP/1.1 by ALPN)"
    )]
    Scheme {
        /// What was given.
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// The base URL carries a query or a fragment, which a copy could not keep.
    #[error(
        "dark target `{url}`: a base URL cannot carry a query or fragment; give scheme, host, port and an optional path prefix"
    )]
    QueryInBase {
        /// What was given.
        url: String,
    },
    /// The TLS configuration for `https://` could not be built.
    #[error("dark target `{url}`: TLS setup failed: {reason}")]
    Tls {
        /// What was given.
        url: String,
        /// Why.
        reason: String,
    },
}

trait Send_: Send + Sync {
    fn send(
        &self,
        parts: http::request::Parts,
        body: Bytes,
        limit: usize,
        keep: Option<Reservation>,
    ) -> BoxFuture<Result<DarkAnswer, String>>;
}

/// Where the mirror sends copies: a base URL, or a tower `Service` (an in-process router, a
/// client with its own middleware).
///
/// # Example
///
/// ```
/// use synth_tower::mirror::DarkTarget;
///
/// let target = DarkTarget::url("http://catalog-v2.internal:8080")?;
/// assert_eq!(target.to_string(), "http://catalog-v2.internal:8080");
/// assert!(DarkTarget::url("ftp://catalog-v2").is_err());
/// # Ok::<(), synth_tower::mirror::DarkTargetError>(())
/// ```
#[derive(Clone)]
pub struct DarkTarget {
    inner: Arc<dyn Send_>,
    label: Arc<str>,
}

impl fmt::Debug for DarkTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("DarkTarget").field(&self.label).finish()
    }
}

impl fmt::Display for DarkTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.label)
    }
}

impl DarkTarget {
    /// Copies go to `base` plus the request's path and query:
    ///
    /// - `http://host:port[/prefix]`: HTTP/1.1;
    /// - `h2c://host:port[/prefix]`: HTTP/2 over cleartext, with prior knowledge;
    /// - `https://host:port[/prefix]`: TLS (the system's roots; ring), HTTP/2 or HTTP/1.1 by ALPN.
    ///
    /// Connections are pooled and reused. A copy's request line is rewritten to the dark host;
    /// everything else is the real request's.
    pub fn url(base: &str) -> Result<DarkTarget, DarkTargetError> {
        Self::url_with_roots(base, [])
    }

    /// [`url`](Self::url), trusting these certificate authorities for `https://` besides the
    /// system's (a dark service with a certificate from an internal CA).
    ///
    /// ```
    /// use synth_tower::mirror::{DarkTarget, rustls::pki_types::{CertificateDer, pem::PemObject}};
    ///
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/tls");
    /// let ca: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(dir.join("ca.pem"))?.collect::<Result<_, _>>()?;
    /// let target = DarkTarget::url_with_roots("https://catalog-v2.internal:8443", ca)?;
    /// # Ok(()) }
    /// ```
    pub fn url_with_roots(
        base: &str,
        roots: impl IntoIterator<Item = rustls::pki_types::CertificateDer<'static>>,
    ) -> Result<DarkTarget, DarkTargetError> {
        let bad = |reason: String| DarkTargetError::BadUrl { url: base.to_owned(), reason };
        let uri: Uri = base.parse().map_err(|e: http::uri::InvalidUri| bad(e.to_string()))?;
        let scheme = uri.scheme_str().ok_or_else(|| bad("no scheme".into()))?.to_ascii_lowercase();
        let authority = uri.authority().ok_or_else(|| bad("no host".into()))?.clone();
        if authority.as_str().contains('@') {
            return Err(bad(
                "credentials in the URL are not supported: copies carry the real request's own headers"
                    .into(),
            ));
        }
        if uri.query().is_some() || base.contains('#') {
            return Err(DarkTargetError::QueryInBase { url: base.to_owned() });
        }
        let prefix = uri.path().trim_end_matches('/').to_owned();
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let mut builder = Client::builder(TokioExecutor::new());
        builder.pool_idle_timeout(Duration::from_secs(30));
        let (wire_scheme, inner): (&str, Arc<dyn Send_>) = match scheme.as_str() {
            "http" => ("http", Arc::new(UrlTarget { client: builder.build(connector) })),
            "h2c" => {
                builder.http2_only(true);
                ("http", Arc::new(UrlTarget { client: builder.build(connector) }))
            }
            "https" => {
                let config = tls_config(roots)
                    .map_err(|reason| DarkTargetError::Tls { url: base.to_owned(), reason })?;
                connector.enforce_http(false);
                let https = hyper_rustls::HttpsConnectorBuilder::new()
                    .with_tls_config(config)
                    .https_only()
                    .enable_http1()
                    .enable_http2()
                    .wrap_connector(connector);
                ("https", Arc::new(UrlTarget { client: builder.build(https) }))
            }
            other => {
                return Err(DarkTargetError::Scheme { url: base.to_owned(), scheme: other.to_owned() });
            }
        };
        let target = Arc::new(Based { inner, scheme: wire_scheme, authority, prefix });
        Ok(DarkTarget { inner: target, label: base.trim_end_matches('/').into() })
    }

    /// Copies go to `service` (cloned for each copy), with an origin-form URI (path and query).
    ///
    /// ```
    /// use synth_tower::mirror::DarkTarget;
    ///
    /// let dark_router = tower::service_fn(|_req: http::Request<http_body_util::Full<bytes::Bytes>>| async {
    ///     Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(bytes::Bytes::from("v2"))))
    /// });
    /// let target = DarkTarget::service(dark_router, "catalog-v2 (in process)");
    /// assert_eq!(target.to_string(), "catalog-v2 (in process)");
    /// ```
    pub fn service<S, B>(service: S, label: impl Into<String>) -> DarkTarget
    where
        S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + Sync + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        let label: String = label.into();
        DarkTarget { inner: Arc::new(ServiceTarget { service }), label: label.into() }
    }

    pub(crate) fn send(
        &self,
        parts: http::request::Parts,
        body: Bytes,
        limit: usize,
        keep: Option<Reservation>,
    ) -> BoxFuture<Result<DarkAnswer, String>> {
        self.inner.send(parts, body, limit, keep)
    }
}

/// A target reached by URL: rewrites the URI, then hands the request to the client.
struct Based {
    inner: Arc<dyn Send_>,
    scheme: &'static str,
    authority: http::uri::Authority,
    prefix: String,
}

impl Send_ for Based {
    fn send(
        &self,
        mut parts: http::request::Parts,
        body: Bytes,
        limit: usize,
        keep: Option<Reservation>,
    ) -> BoxFuture<Result<DarkAnswer, String>> {
        let pq = parts.uri.path_and_query().map_or("/", PathAndQuery::as_str);
        let path = format!("{}{}", self.prefix, pq);
        match Uri::builder()
            .scheme(self.scheme)
            .authority(self.authority.clone())
            .path_and_query(path)
            .build()
        {
            Ok(uri) => parts.uri = uri,
            Err(e) => return Box::pin(async move { Err(format!("cannot build the copy's URI: {e}")) }),
        }
        self.inner.send(parts, body, limit, keep)
    }
}

struct UrlTarget<C> {
    client: Client<C, Full<Bytes>>,
}

impl<C> Send_ for UrlTarget<C>
where
    C: hyper_util::client::legacy::connect::Connect + Clone + Send + Sync + 'static,
{
    fn send(
        &self,
        parts: http::request::Parts,
        body: Bytes,
        limit: usize,
        keep: Option<Reservation>,
    ) -> BoxFuture<Result<DarkAnswer, String>> {
        let client = self.client.clone();
        Box::pin(async move {
            let started = Instant::now();
            let res =
                client.request(Request::from_parts(parts, Full::new(body))).await.map_err(|e| chain(&e))?;
            let head_latency = started.elapsed();
            read_answer(res, limit, keep, head_latency).await
        })
    }
}

struct ServiceTarget<S> {
    service: S,
}

impl<S, B> Send_ for ServiceTarget<S>
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>> + Clone + Send + Sync + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    fn send(
        &self,
        mut parts: http::request::Parts,
        body: Bytes,
        limit: usize,
        keep: Option<Reservation>,
    ) -> BoxFuture<Result<DarkAnswer, String>> {
        let mut service = self.service.clone();
        if let Some(pq) = parts.uri.path_and_query().cloned() {
            parts.uri = Uri::from(pq);
        }
        Box::pin(async move {
            let started = Instant::now();
            std::future::poll_fn(|cx| service.poll_ready(cx)).await.map_err(|e| chain(&*e.into()))?;
            let res = service
                .call(Request::from_parts(parts, Full::new(body)))
                .await
                .map_err(|e| chain(&*e.into()))?;
            let head_latency = started.elapsed();
            read_answer(res, limit, keep, head_latency).await
        })
    }
}

/// Reads the dark answer: its head, its trailers (merged into the headers), and its body, kept
/// (within `limit` and the reservation) only when `keep` is given, else read and thrown away up
/// to `limit` (so that the connection can be reused) and no further.
async fn read_answer<B>(
    res: Response<B>,
    limit: usize,
    mut keep: Option<Reservation>,
    head_latency: Duration,
) -> Result<DarkAnswer, String>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let (parts, body) = res.into_parts();
    let mut collector = Collector::new(limit, &body.size_hint());
    let mut headers = parts.headers;
    if let Some(reservation) = keep.as_mut() {
        // Kept until the real answer comes: an owned copy (a clone could pin the client's read
        // buffer), counted in the byte budget like the body.
        headers = owned_headers(&headers);
        if !reservation.try_grow(header_bytes(&headers)) {
            return Ok(DarkAnswer::over_budget(parts.status, head_latency, keep));
        }
    }
    let mut body = std::pin::pin!(body);
    let (mut read, mut complete) = (0usize, true);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the dark answer's body: {}", chain(&*e.into())))?;
        match frame.into_data() {
            Ok(data) => {
                read += data.len();
                let kept = match keep.as_mut() {
                    Some(reservation) => collector.push(&data, reservation).is_ok(),
                    None => read <= limit,
                };
                if !kept {
                    // Stop reading: the rest would only be thrown away (the connection closes).
                    complete = false;
                    break;
                }
            }
            // gRPC's status is in the trailers: compared like headers.
            Err(frame) => {
                if let Ok(trailers) = frame.into_trailers() {
                    if let Some(reservation) = keep.as_mut() {
                        if !reservation.try_grow(header_bytes(&trailers)) {
                            return Ok(DarkAnswer::over_budget(parts.status, head_latency, keep));
                        }
                        for (name, value) in &owned_headers(&trailers) {
                            headers.append(name, value.clone());
                        }
                    } else {
                        for (name, value) in &trailers {
                            headers.append(name, value.clone());
                        }
                    }
                }
            }
        }
    }
    Ok(DarkAnswer {
        status: parts.status,
        headers,
        body: collector.into_bytes(),
        complete,
        head_latency,
        _reservation: keep,
    })
}

/// An error and its sources, one line.
fn chain(e: &(dyn StdError + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn tls_config(
    extra: impl IntoIterator<Item = rustls::pki_types::CertificateDer<'static>>,
) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    for cert in extra {
        roots.add(cert).map_err(|e| format!("a given root certificate: {e}"))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert!(DarkTarget::url("http://127.0.0.1:9/").is_ok());
        assert!(DarkTarget::url("h2c://127.0.0.1:9/v2").is_ok());
        assert!(matches!(DarkTarget::url("ftp://x"), Err(DarkTargetError::Scheme { .. })));
        assert!(matches!(DarkTarget::url("http://x/?a=1"), Err(DarkTargetError::QueryInBase { .. })));
        assert!(matches!(DarkTarget::url("catalog"), Err(DarkTargetError::BadUrl { .. })));
        assert!(matches!(DarkTarget::url("http://u:p@x"), Err(DarkTargetError::BadUrl { .. })));
        let e = DarkTarget::url("ftp://x").map(|_| ()).unwrap_err().to_string();
        assert!(e.contains("http://") && e.contains("ftp"), "{e}");
    }
}
