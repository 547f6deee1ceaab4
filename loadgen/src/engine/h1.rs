//! A minimal HTTP/1.1 client connection for closed-model users, who each keep one connection
//! and send one request at a time on it.
//!
//! hyper's client runs every connection as a separate task fed through a channel: two tasks and
//! two wake-ups per request. Here the user's own task writes the request and parses the answer
//! (httparse) on its socket, which is what a closed-model user does anyway. It speaks the part
//! of HTTP/1.1 a load generator needs: keep-alive, `content-length`, chunked and
//! read-to-close bodies, no body for HEAD / 1xx / 204 / 304, and a retry on a fresh connection
//! when a kept-alive one turns out to be closed before any answer byte.

use bytes::{Buf as _, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt as _, Full};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

use crate::stats::ErrorClass;

/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Most headers in a response.
const MAX_HEADERS: usize = 100;

/// One kept-alive connection.
#[derive(Debug)]
pub(crate) struct H1Conn {
    stream: TcpStream,
    buf: BytesMut,
    out: Vec<u8>,
    /// Requests answered on it: a failure before the first answer byte on a reused connection
    /// is retried once on a new one.
    answered: u64,
    reusable: bool,
}

/// How the body of an answer ends.
enum Framing {
    None,
    Length(usize),
    Chunked,
    Close,
}

impl H1Conn {
    /// Wraps a connected socket.
    pub(crate) fn new(stream: TcpStream) -> Self {
        H1Conn {
            stream,
            buf: BytesMut::with_capacity(8 * 1024),
            out: Vec::with_capacity(1024),
            answered: 0,
            reusable: true,
        }
    }

    /// Whether another request may follow on this connection.
    pub(crate) fn reusable(&self) -> bool {
        self.reusable
    }

    /// Whether it has answered before (a failure may be a stale keep-alive).
    pub(crate) fn reused(&self) -> bool {
        self.answered > 0
    }

    /// Sends `req` (borrowed: a retry sends it again as it is) and reads the whole answer.
    /// `Err((class, nothing_read))`: `nothing_read` when no byte of an answer arrived.
    pub(crate) async fn send(
        &mut self,
        req: &Request<Full<Bytes>>,
    ) -> Result<Response<Bytes>, (ErrorClass, bool)> {
        // `Full` holds one `Bytes`: cloning it is a reference count.
        let body = match req.body().clone().collect().await {
            Ok(b) => b.to_bytes(),
            Err(never) => match never {},
        };
        let method = req.method();
        let head_only = method == Method::HEAD;
        self.out.clear();
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        self.out.extend_from_slice(method.as_str().as_bytes());
        self.out.push(b' ');
        self.out.extend_from_slice(path.as_bytes());
        self.out.extend_from_slice(b" HTTP/1.1\r\n");
        if !req.headers().contains_key(http::header::HOST)
            && let Some(authority) = req.uri().authority()
        {
            self.out.extend_from_slice(b"host: ");
            self.out.extend_from_slice(authority.as_str().as_bytes());
            self.out.extend_from_slice(b"\r\n");
        }
        for (name, value) in req.headers() {
            if name == http::header::CONTENT_LENGTH || name == http::header::TRANSFER_ENCODING {
                continue;
            }
            self.out.extend_from_slice(name.as_str().as_bytes());
            self.out.extend_from_slice(b": ");
            self.out.extend_from_slice(value.as_bytes());
            self.out.extend_from_slice(b"\r\n");
        }
        if !body.is_empty() || matches!(*method, Method::POST | Method::PUT | Method::PATCH) {
            use std::io::Write as _;
            let _ = write!(self.out, "content-length: {}\r\n", body.len());
        }
        self.out.extend_from_slice(b"\r\n");
        self.out.extend_from_slice(&body);
        if let Err(e) = self.stream.write_all(&self.out).await {
            self.reusable = false;
            return Err((io_class(&e), true));
        }
        let res = self.read_response(head_only).await;
        match &res {
            Ok(_) => self.answered += 1,
            Err(_) => self.reusable = false,
        }
        res
    }

    async fn fill(&mut self) -> Result<usize, ErrorClass> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(8 * 1024);
        }
        self.stream.read_buf(&mut self.buf).await.map_err(|e| io_class(&e))
    }

    async fn read_response(&mut self, head_only: bool) -> Result<Response<Bytes>, (ErrorClass, bool)> {
        let mut first = true;
        loop {
            // Head.
            let (status, version, headers, head_len) = loop {
                match parse_head(&self.buf) {
                    Ok(Some(head)) => break head,
                    Ok(None) if self.buf.len() < MAX_HEAD => {
                        let nothing = first && self.buf.is_empty();
                        match self.fill().await {
                            Ok(0) => return Err((ErrorClass::Reset, nothing)),
                            Ok(_) => {}
                            Err(c) => return Err((c, nothing)),
                        }
                    }
                    _ => return Err((ErrorClass::Protocol, false)),
                }
            };
            first = false;
            self.buf.advance(head_len);
            if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
                continue; // 100 Continue and friends: the real answer follows
            }
            let close = connection_close(&headers, version);
            let framing =
                if head_only || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
                    Framing::None
                } else if headers
                    .get(http::header::TRANSFER_ENCODING)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
                {
                    Framing::Chunked
                } else if let Some(len) = headers.get(http::header::CONTENT_LENGTH) {
                    let len = len
                        .to_str()
                        .ok()
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .ok_or((ErrorClass::Protocol, false))?;
                    Framing::Length(len)
                } else {
                    Framing::Close
                };
            let body = match framing {
                Framing::None => Bytes::new(),
                Framing::Length(n) => self.exact(n).await?,
                Framing::Chunked => self.chunked().await?,
                Framing::Close => {
                    self.reusable = false;
                    loop {
                        match self.fill().await {
                            Ok(0) => break,
                            Ok(_) => {}
                            Err(c) => return Err((c, false)),
                        }
                    }
                    self.buf.split().freeze()
                }
            };
            if close {
                self.reusable = false;
            }
            let mut res = Response::new(body);
            *res.status_mut() = status;
            *res.version_mut() = version;
            *res.headers_mut() = headers;
            return Ok(res);
        }
    }

    async fn exact(&mut self, n: usize) -> Result<Bytes, (ErrorClass, bool)> {
        while self.buf.len() < n {
            match self.fill().await {
                Ok(0) => return Err((ErrorClass::Reset, false)),
                Ok(_) => {}
                Err(c) => return Err((c, false)),
            }
        }
        Ok(self.buf.split_to(n).freeze())
    }

    async fn line(&mut self) -> Result<BytesMut, (ErrorClass, bool)> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf.split_to(i);
                self.buf.advance(2);
                return Ok(line);
            }
            if self.buf.len() > MAX_HEAD {
                return Err((ErrorClass::Protocol, false));
            }
            match self.fill().await {
                Ok(0) => return Err((ErrorClass::Reset, false)),
                Ok(_) => {}
                Err(c) => return Err((c, false)),
            }
        }
    }

    async fn chunked(&mut self) -> Result<Bytes, (ErrorClass, bool)> {
        let mut body = BytesMut::new();
        loop {
            let line = self.line().await?;
            let size = std::str::from_utf8(&line)
                .ok()
                .and_then(|l| usize::from_str_radix(l.split(';').next().unwrap_or("").trim(), 16).ok())
                .ok_or((ErrorClass::Protocol, false))?;
            if size == 0 {
                // Trailers, then the empty line.
                while !self.line().await?.is_empty() {}
                return Ok(body.freeze());
            }
            let chunk = self.exact(size).await?;
            body.extend_from_slice(&chunk);
            if !self.line().await?.is_empty() {
                return Err((ErrorClass::Protocol, false));
            }
        }
    }
}

/// A parsed response head: status, version, headers, and its length in bytes.
type Head = (StatusCode, Version, HeaderMap, usize);

/// Parses a response head; `Ok(None)` when more bytes are needed. Not async on purpose: the
/// header slots stay on the stack instead of in every journey's future.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, ErrorClass> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut slots);
    match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => {
            let status =
                parsed.code.and_then(|c| StatusCode::from_u16(c).ok()).ok_or(ErrorClass::Protocol)?;
            let version = if parsed.version == Some(0) { Version::HTTP_10 } else { Version::HTTP_11 };
            let mut headers = HeaderMap::with_capacity(parsed.headers.len());
            for h in parsed.headers.iter() {
                let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| ErrorClass::Protocol)?;
                let value = HeaderValue::from_bytes(h.value).map_err(|_| ErrorClass::Protocol)?;
                headers.append(name, value);
            }
            Ok(Some((status, version, headers, n)))
        }
        Ok(httparse::Status::Partial) => Ok(None),
        Err(_) => Err(ErrorClass::Protocol),
    }
}

fn connection_close(headers: &HeaderMap, version: Version) -> bool {
    let tokens = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",")
        .to_ascii_lowercase();
    let has = |t: &str| tokens.split(',').any(|x| x.trim() == t);
    if version == Version::HTTP_10 { !has("keep-alive") } else { has("close") }
}

fn io_class(e: &std::io::Error) -> ErrorClass {
    match e.kind() {
        std::io::ErrorKind::TimedOut => ErrorClass::Timeout,
        _ => ErrorClass::Reset,
    }
}
