//! tonic helpers (feature `tonic`).
//!
//! The server side needs nothing tonic-specific: add the generic layer with
//! `Server::builder().layer(VerifySyntheticLayer::new(verifier))`; refusals and shed answers go
//! out as gRPC statuses (`PERMISSION_DENIED`, `UNAVAILABLE`) for `application/grpc` requests.
//!
//! The client side has two options:
//! - [`PropagateSyntheticLayer`](crate::PropagateSyntheticLayer) around the `Channel`
//!   (`ServiceBuilder::new().layer(PropagateSyntheticLayer::new()).service(channel)`): propagates
//!   and collects the downstream path report. Prefer it.
//! - [`propagate`] as an interceptor (`MyClient::with_interceptor(channel, synth_tower::tonic::propagate)`):
//!   propagates only, since interceptors cannot see responses.

use synth_ctx::Synthetic;
use tonic::{Request, Status, metadata::MetadataMap};

/// A tonic interceptor that sends the current synthetic marker (header and baggage member) on
/// the request's metadata. Adds nothing outside a synthetic scope.
///
/// ```
/// let request = synth_tower::tonic::propagate(tonic::Request::new(())).unwrap();
/// assert!(request.metadata().get("synthetic-traffic").is_none()); // not in a synthetic scope
/// ```
#[allow(clippy::result_large_err)] // the signature tonic's `Interceptor` requires
pub fn propagate(mut request: Request<()>) -> Result<Request<()>, Status> {
    if synth_ctx::is_synthetic() {
        let mut headers = std::mem::take(request.metadata_mut()).into_headers();
        opentelemetry::Context::map_current(|cx| synth_ctx::http::insert_context(&mut headers, cx));
        *request.metadata_mut() = MetadataMap::from_headers(headers);
    }
    Ok(request)
}

/// The verified marker of a request the server layer accepted, from a tonic handler.
///
/// `synth_ctx::current()` gives the same inside the handler's future; this reads the request's
/// extensions, so it also works where the scope is not carried.
pub fn synthetic<T>(request: &Request<T>) -> Option<&Synthetic> {
    request.extensions().get::<Synthetic>()
}
