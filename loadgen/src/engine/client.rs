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

/// A pooled HTTP/1.1 client.
#[derive(Clone, Debug)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
    request_timeout: Duration,
}

impl HttpClient {
    /// A client with these timeouts.
    pub fn new(connect_timeout: Duration, request_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(true);
        let inner =
            Client::builder(TokioExecutor::new()).pool_idle_timeout(Duration::from_secs(30)).build(connector);
        HttpClient { inner, request_timeout }
    }

    /// Sends `req` and reads the whole answer.
    pub async fn send(&self, req: Request<Full<Bytes>>) -> Result<Response<Bytes>, ErrorClass> {
        let exchange = async {
            let res = self.inner.request(req).await.map_err(|e| classify(&e))?;
            let (parts, body) = res.into_parts();
            let body = body.collect().await.map_err(|e| classify_hyper(&e))?.to_bytes();
            Ok(Response::from_parts(parts, body))
        };
        match tokio::time::timeout(self.request_timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(ErrorClass::Timeout),
        }
    }
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
