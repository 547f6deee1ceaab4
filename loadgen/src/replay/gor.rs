//! GoReplay's file output (`--output-file`), as its `output_file.go` writes and `input_file.go`
//! reads it: for each payload a header line `<type> <id> <timestamp_ns> <latency>\n` (type `1`
//! request, `2` original response, `3` replayed response; older versions write no latency), the
//! raw HTTP/1.x message, then the separator `\n🐵🙈🙉\n`.
//!
//! Only type 1 is a request; responses are skipped and counted. A message that itself contains a
//! line `🐵🙈🙉` cannot be told from a separator: GoReplay has the same limit.

use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::input::{
    BadReason, BadRecord, LineError, ReadOptions, Skipped, build_headers, host_of, parse_method,
    parse_origin_form, read_line,
};
use super::{Location, Position, Recorded, Scrubbed};

/// The separator's own line (GoReplay's `payloadSeparator` without its leading `\n`, which ends
/// the message).
const SEPARATOR_LINE: &[u8] = "🐵🙈🙉\n".as_bytes();

/// Most headers a request may have.
const MAX_HEADERS: usize = 256;

/// True when `bytes` starts with a whole GoReplay header line.
pub(super) fn looks_like_header(bytes: &[u8]) -> bool {
    let Some(end) = bytes.iter().position(|&b| b == b'\n') else { return false };
    parse_header(&bytes[..end]).is_some()
}

struct Header {
    kind: u8,
    at: SystemTime,
}

fn parse_header(line: &[u8]) -> Option<Header> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut fields = line.split(|&b| b == b' ');
    let kind = match fields.next()? {
        [k @ (b'1' | b'2' | b'3')] => *k,
        _ => return None,
    };
    let id = fields.next()?;
    if id.is_empty() {
        return None;
    }
    let at_ns = fields.next()?;
    if at_ns.is_empty() || !at_ns.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let at_ns: u64 = std::str::from_utf8(at_ns).ok()?.parse().ok()?;
    if let Some(latency) = fields.next() {
        let digits = latency.strip_prefix(b"-").unwrap_or(latency);
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return None;
        }
    }
    if fields.next().is_some() {
        return None;
    }
    Some(Header { kind, at: UNIX_EPOCH + Duration::from_nanos(at_ns) })
}

/// Reads a `.gor` file record by record.
#[derive(Debug)]
pub(super) struct Reader<R> {
    file: Arc<Path>,
    reader: R,
    opts: ReadOptions,
    line: u64,
    buf: Vec<u8>,
    done: bool,
}

/// One payload's bytes as read, before it is understood.
enum Raw {
    /// Header line, message (its last `\n`, part of the separator, removed).
    Whole(Vec<u8>, Vec<u8>),
    Truncated,
    TooLong,
}

impl<R: BufRead> Reader<R> {
    pub(super) fn new(file: Arc<Path>, reader: R, opts: ReadOptions) -> Self {
        Self { file, reader, opts, line: 0, buf: Vec::new(), done: false }
    }

    fn record_limit(&self) -> usize {
        self.opts.max_body.saturating_add(ReadOptions::HEAD_ALLOWANCE)
    }

    /// Reads up to and including the next separator line.
    fn read_raw(&mut self) -> Result<Option<Raw>, std::io::Error> {
        let limit = self.record_limit();
        let mut header: Option<Vec<u8>> = None;
        let mut message = Vec::new();
        let mut too_long = false;
        loop {
            let whole = match read_line(&mut self.reader, &mut self.buf, limit) {
                Ok(None) => {
                    return Ok(match header {
                        None => None,
                        // A trailing blank line after the last separator is not a record.
                        Some(h) if h.trim_ascii().is_empty() && message.is_empty() && !too_long => None,
                        Some(_) if too_long => Some(Raw::TooLong),
                        Some(_) => Some(Raw::Truncated),
                    });
                }
                Ok(Some(whole)) => whole,
                Err(LineError::Io(e)) => return Err(e),
                Err(LineError::TooLong) => {
                    self.line += 1;
                    too_long = true;
                    header.get_or_insert_with(Vec::new);
                    continue;
                }
            };
            self.line += 1;
            if header.is_none() {
                header = Some(std::mem::take(&mut self.buf));
                continue;
            }
            if whole && self.buf == SEPARATOR_LINE {
                if too_long {
                    return Ok(Some(Raw::TooLong));
                }
                message.pop_if(|b| *b == b'\n');
                return Ok(Some(Raw::Whole(header.unwrap_or_default(), message)));
            }
            if !too_long {
                message.extend_from_slice(&self.buf);
                too_long = message.len() > limit;
                if too_long {
                    message = Vec::new();
                }
            }
        }
    }

    pub(super) fn next_record(&mut self, skipped: &mut Skipped) -> Option<Result<Recorded, BadRecord>> {
        loop {
            if self.done {
                return None;
            }
            let first_line = self.line + 1;
            let location = Location { file: self.file.clone(), at: Position::Line(first_line) };
            let bad = |reason| Some(Err(BadRecord { location: location.clone(), reason }));
            let (header, message) = match self.read_raw() {
                Ok(None) => return None,
                Ok(Some(Raw::Whole(header, message))) => (header, message),
                Ok(Some(Raw::Truncated)) => {
                    return bad(BadReason::Truncated(
                        "the file ends before the record's 🐵🙈🙉 separator".into(),
                    ));
                }
                Ok(Some(Raw::TooLong)) => {
                    return bad(BadReason::TooLong {
                        limit: self.record_limit(),
                        body_limit: self.opts.max_body,
                    });
                }
                Err(e) => {
                    self.done = true;
                    return bad(BadReason::Io(e.to_string()));
                }
            };
            let header_text = header.strip_suffix(b"\n").unwrap_or(&header);
            let Some(meta) = parse_header(header_text) else {
                return bad(BadReason::Gor(format!(
                    "header line {:?} is not `<1|2|3> <id> <timestamp_ns> [<latency>]`",
                    String::from_utf8_lossy(&header_text[..header_text.len().min(80)])
                )));
            };
            if meta.kind != b'1' {
                skipped.responses += 1;
                continue;
            }
            return Some(
                parse_request(&message, meta.at, &self.opts, location.clone())
                    .map_err(|reason| BadRecord { location, reason }),
            );
        }
    }
}

fn parse_request(
    message: &[u8],
    at: SystemTime,
    opts: &ReadOptions,
    source: Location,
) -> Result<Recorded, BadReason> {
    let mut slots = vec![httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut slots);
    let head_len = match request.parse(message) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            return Err(BadReason::Truncated("the HTTP request head ends before its blank line".into()));
        }
        Err(e) => return Err(BadReason::Gor(format!("not an HTTP/1.x request: {e}"))),
    };
    let method = parse_method(request.method.unwrap_or_default().as_bytes())?;
    let target = request.path.unwrap_or_default();
    let (uri, target_host) = if target.starts_with('/') {
        (parse_origin_form(target)?, None)
    } else {
        // Absolute-form, as a client talking to a proxy sends it.
        let bad = |why: &str| BadReason::Uri { uri: target.to_owned(), why: why.to_owned() };
        let uri: http::Uri = target.parse().map_err(|e: http::uri::InvalidUri| bad(&e.to_string()))?;
        let (Some(host), Some(path)) = (uri.authority().and_then(host_of), uri.path_and_query()) else {
            return Err(bad("neither origin-form (`/path`) nor absolute-form (`http://host/path`)"));
        };
        let path =
            if path.as_str().is_empty() { http::uri::PathAndQuery::from_static("/") } else { path.clone() };
        (path, Some(host))
    };
    let rest = &message[head_len..];
    let body = framed_body(request.headers, rest, opts)?;
    let (headers, host) = build_headers(request.headers.iter().map(|h| (h.name.as_bytes(), h.value)))?;
    Ok(Recorded {
        at,
        method,
        uri,
        host: target_host.or(host),
        headers,
        body: body.into(),
        body_omitted: false,
        scrubbed: Scrubbed::default(),
        source,
    })
}

/// The body as the request frames it: `Content-Length` bytes, or the chunked encoding decoded.
/// Both at once, or bytes beyond the framing, are refused: a request that can be read two ways is
/// not replayed one of them.
fn framed_body(
    headers: &[httparse::Header<'_>],
    rest: &[u8],
    opts: &ReadOptions,
) -> Result<Vec<u8>, BadReason> {
    let framing = |why: String| BadReason::Gor(why);
    let mut length: Option<u64> = None;
    let mut chunked = false;
    for header in headers {
        if header.name.eq_ignore_ascii_case("content-length") {
            let value = std::str::from_utf8(header.value).ok().map(str::trim);
            let parsed = value
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse().ok());
            let Some(parsed) = parsed else {
                return Err(framing(format!(
                    "invalid Content-Length {:?}",
                    String::from_utf8_lossy(header.value)
                )));
            };
            if length.is_some_and(|l| l != parsed) {
                return Err(framing("two different Content-Length values".into()));
            }
            length = Some(parsed);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            let value = String::from_utf8_lossy(header.value);
            let last = value.rsplit(',').next().unwrap_or_default().trim();
            if !last.eq_ignore_ascii_case("chunked") {
                return Err(framing(format!("Transfer-Encoding {value:?} does not end in chunked")));
            }
            chunked = true;
        }
    }
    match (length, chunked) {
        (Some(_), true) => Err(framing("both Content-Length and chunked Transfer-Encoding".into())),
        (Some(len), false) => {
            if len > opts.max_body as u64 {
                return Err(BadReason::BodyTooLarge { len, limit: opts.max_body });
            }
            let len = len as usize;
            if rest.len() < len {
                return Err(BadReason::Truncated(format!(
                    "Content-Length is {len} but the record has {} body bytes",
                    rest.len()
                )));
            }
            if rest.len() > len {
                return Err(framing(format!("{} bytes after the Content-Length body", rest.len() - len)));
            }
            Ok(rest.to_vec())
        }
        (None, true) => decode_chunked(rest, opts),
        (None, false) if rest.is_empty() => Ok(Vec::new()),
        (None, false) => Err(framing(format!(
            "{} bytes after the head but no Content-Length or chunked Transfer-Encoding",
            rest.len()
        ))),
    }
}

fn decode_chunked(mut rest: &[u8], opts: &ReadOptions) -> Result<Vec<u8>, BadReason> {
    let truncated = || BadReason::Truncated("the chunked body ends before its last chunk".into());
    let mut body = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").ok_or_else(truncated)?;
        let size_text = &rest[..line_end];
        let size_text = size_text.split(|&b| b == b';').next().unwrap_or_default().trim_ascii();
        let size = std::str::from_utf8(size_text)
            .ok()
            .filter(|s| !s.is_empty() && s.len() <= 16)
            .and_then(|s| u64::from_str_radix(s, 16).ok())
            .ok_or_else(|| {
                BadReason::Gor(format!("invalid chunk size {:?}", String::from_utf8_lossy(size_text)))
            })?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            break;
        }
        if size > (opts.max_body - body.len().min(opts.max_body)) as u64 {
            return Err(BadReason::BodyTooLarge { len: body.len() as u64 + size, limit: opts.max_body });
        }
        let size = size as usize;
        if rest.len() < size + 2 {
            return Err(truncated());
        }
        if &rest[size..size + 2] != b"\r\n" {
            return Err(BadReason::Gor("a chunk is not followed by CRLF".into()));
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
    // Trailer fields, then the blank line that ends the message.
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n").ok_or_else(truncated)?;
        let is_blank = line_end == 0;
        rest = &rest[line_end + 2..];
        if is_blank {
            break;
        }
    }
    if !rest.is_empty() {
        return Err(BadReason::Gor(format!("{} bytes after the chunked body", rest.len())));
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::input::{Format, read_from};
    use proptest::prelude::*;

    const SEP: &str = "\n🐵🙈🙉\n";

    fn read_gor(bytes: &[u8], opts: &ReadOptions) -> (Vec<Result<Recorded, BadRecord>>, Skipped) {
        let mut records = read_from(Arc::from(Path::new("x.gor")), bytes, opts).unwrap();
        assert_eq!(records.format(), Format::Gor);
        let all = records.by_ref().collect();
        (all, records.skipped())
    }

    fn one(message: &str) -> Result<Recorded, String> {
        let file = format!("1 abc 1700000000000000001 -1\n{message}{SEP}");
        let (mut records, _) = read_gor(file.as_bytes(), &ReadOptions::default());
        assert_eq!(records.len(), 1);
        records.remove(0).map_err(|e| e.to_string())
    }

    #[test]
    fn content_length_and_chunked_bodies() {
        let r = one("POST /a HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhe\nlo").unwrap();
        assert_eq!(r.body.as_ref(), b"he\nlo");
        assert_eq!(r.host.as_deref(), Some("h"));
        assert!(r.headers.is_empty());
        assert_eq!(r.at, UNIX_EPOCH + Duration::from_nanos(1_700_000_000_000_000_001));
        let r = one("POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n")
            .unwrap();
        assert_eq!(r.body.as_ref(), b"abcde");
        assert!(r.headers.is_empty(), "{:?}", r.headers);
        let r = one("GET http://proxy.example:8080/p?q=1 HTTP/1.0\r\n\r\n").unwrap();
        assert_eq!((r.uri.as_str(), r.host.as_deref()), ("/p?q=1", Some("proxy.example:8080")));
    }

    #[test]
    fn each_bad_request_says_what() {
        let cases: &[(&str, &str)] = &[
            ("GET / HTTP/1.1\r\nHost: h\r\n", "truncated: the HTTP request head ends"),
            (
                "POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc",
                "truncated: Content-Length is 10 but the record has 3",
            ),
            ("POST / HTTP/1.1\r\nContent-Length: 1\r\n\r\nabc", "2 bytes after the Content-Length body"),
            ("POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n", "invalid Content-Length"),
            (
                "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\na",
                "two different Content-Length",
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                "both Content-Length and chunked",
            ),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", "does not end in chunked"),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab",
                "truncated: the chunked body ends",
            ),
            ("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "invalid chunk size"),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc\r\n0\r\n\r\n",
                "not followed by CRLF",
            ),
            ("GET / HTTP/1.1\r\n\r\nextra", "5 bytes after the head"),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /",
                "5 bytes after the chunked body",
            ),
            ("HTTP/1.1 200 OK\r\n\r\n", "not an HTTP/1.x request"),
            ("GET * HTTP/1.1\r\n\r\n", "neither origin-form"),
            ("GET /\x01 HTTP/1.1\r\n\r\n", "not an HTTP/1.x request"),
        ];
        for (message, expected) in cases {
            let err = one(message).unwrap_err();
            assert!(err.starts_with("x.gor:1: "), "{err}");
            assert!(err.contains(expected), "{message:?}\n  gave: {err}\n  expected: {expected}");
        }
    }

    #[test]
    fn responses_are_skipped_bad_records_located_and_truncation_reported() {
        let file = format!(
            "1 a 100 0\nGET /one HTTP/1.1\r\n\r\n{SEP}2 a 200 5\nHTTP/1.1 200 OK\r\n\r\n{SEP}\
             9 nonsense\nGET / HTTP/1.1\r\n\r\n{SEP}1 b 300\nGET /two HTTP/1.1\r\n\r\n{SEP}1 c 400 0\nGET /cut HTTP/1.1\r\n"
        );
        let (records, skipped) = read_gor(file.as_bytes(), &ReadOptions::default());
        assert_eq!(skipped.responses, 1);
        assert_eq!(records.len(), 4, "{records:?}");
        assert_eq!(records[0].as_ref().unwrap().uri, "/one");
        assert_eq!(records[0].as_ref().unwrap().source.to_string(), "x.gor:1");
        let header = records[1].as_ref().unwrap_err().to_string();
        assert!(
            header.starts_with("x.gor:11: invalid GoReplay record: header line \"9 nonsense\""),
            "{header}"
        );
        assert_eq!(records[2].as_ref().unwrap().uri, "/two");
        assert_eq!(records[2].as_ref().unwrap().source.to_string(), "x.gor:16");
        let cut = records[3].as_ref().unwrap_err().to_string();
        assert!(cut.starts_with("x.gor:21: truncated: the file ends before"), "{cut}");
    }

    #[test]
    fn a_body_over_the_limit_is_refused_and_the_next_record_read() {
        let opts = ReadOptions { max_body: 100, ..ReadOptions::default() };
        let big = "x".repeat((1 << 20) + 200);
        let file = format!(
            "1 a 1 0\nPOST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n{}{SEP}1 b 2 0\nPOST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n{big}{SEP}1 c 3 0\nGET /after HTTP/1.1\r\n\r\n{SEP}",
            "y".repeat(101),
            big.len()
        );
        let (records, _) = read_gor(file.as_bytes(), &opts);
        assert_eq!(records.len(), 3);
        let err = records[0].as_ref().unwrap_err().to_string();
        assert!(err.contains("body of 101 bytes is over the limit of 100"), "{err}");
        assert!(
            matches!(records[1], Err(BadRecord { reason: BadReason::TooLong { .. }, .. })),
            "{:?}",
            records[1]
        );
        assert_eq!(records[2].as_ref().unwrap().uri, "/after");
    }

    proptest! {
        #[test]
        fn arbitrary_records_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
            let mut input = b"1 id 1 0\n".to_vec();
            input.extend(bytes);
            let (_records, _) = read_gor(&input, &ReadOptions { max_body: 64, ..ReadOptions::default() });
        }

        #[test]
        fn arbitrary_bodies_in_content_length_or_chunks_read_back(
            body in prop::collection::vec(any::<u8>(), 0..200),
            split in 1usize..50,
        ) {
            let mut message = format!("POST /b HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
            message.extend(&body);
            let r = parse_request(&message, UNIX_EPOCH, &ReadOptions::default(), Location { file: Arc::from(Path::new("")), at: Position::Line(1) }).unwrap();
            prop_assert_eq!(r.body.as_ref(), &body[..]);
            let mut chunked = b"POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            for chunk in body.chunks(split) {
                chunked.extend(format!("{:x}\r\n", chunk.len()).as_bytes());
                chunked.extend(chunk);
                chunked.extend(b"\r\n");
            }
            chunked.extend(b"0\r\n\r\n");
            let r = parse_request(&chunked, UNIX_EPOCH, &ReadOptions::default(), Location { file: Arc::from(Path::new("")), at: Position::Line(1) }).unwrap();
            prop_assert_eq!(r.body.as_ref(), &body[..]);
        }
    }
}
