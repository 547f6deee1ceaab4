//! Answers the server layer gives without calling the inner service.

use std::fmt::Write as _;

use http::{HeaderValue, Request, Response, StatusCode, header};
use synth_ctx::{VerifyError, http::SYNTHETIC_TRAFFIC_SHED};

use crate::body::ResponseBody;

/// gRPC status codes used here (see grpc/doc/statuscodes.md).
const GRPC_PERMISSION_DENIED: u16 = 7;
const GRPC_UNAVAILABLE: u16 = 14;

pub(crate) fn is_grpc<B>(req: &Request<B>) -> bool {
    req.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// A gRPC "trailers-only" answer: status and message in the headers, no body. gRPC clients
/// (tonic among them) decode it as a `Status`.
fn grpc<B>(code: u16, message: &str) -> Response<ResponseBody<B>> {
    let mut res = Response::new(ResponseBody::local(""));
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from(code));
    if let Ok(v) = HeaderValue::from_str(&grpc_percent_encode(message)) {
        h.insert("grpc-message", v);
    }
    res
}

/// gRPC's `grpc-message` encoding: percent-encode everything outside printable ASCII, and `%`.
fn grpc_percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn text<B>(status: StatusCode, body: String) -> Response<ResponseBody<B>> {
    let mut res = Response::new(ResponseBody::local(body));
    *res.status_mut() = status;
    res.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    res
}

pub(crate) fn refused<B>(error: &VerifyError, grpc_request: bool) -> Response<ResponseBody<B>> {
    let message = format!("synthetic-traffic marker refused ({}): {error}", error.reason());
    if grpc_request {
        grpc(GRPC_PERMISSION_DENIED, &message)
    } else {
        text(StatusCode::FORBIDDEN, message + "\n")
    }
}

pub(crate) fn shed<B>(retry_after_secs: u32, grpc_request: bool) -> Response<ResponseBody<B>> {
    let message = "synthetic traffic is being shed by this service; retry later or stop the run";
    let mut res = if grpc_request {
        grpc(GRPC_UNAVAILABLE, message)
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, format!("{message}\n"))
    };
    res.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
    res.headers_mut().insert(SYNTHETIC_TRAFFIC_SHED, HeaderValue::from_static("1"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_message_encoding() {
        assert_eq!(grpc_percent_encode("a b%c\r\né"), "a b%25c%0D%0A%C3%A9");
    }
}
