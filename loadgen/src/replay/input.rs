//! Opening a file, telling its format, and the errors and options every reader shares.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::Path;
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};

use super::{Location, Recorded, gor, har, jsonl};

/// The formats replay reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum Format {
    /// synth's capture records, one JSON object per line (`docs/capture-format.md`).
    SynthJsonl,
    /// HAR 1.2: one JSON document with `log.entries`.
    Har,
    /// GoReplay's file output: header line, raw HTTP/1.x request, `\n🐵🙈🙉\n`.
    Gor,
}

/// Limits on what a reader accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReadOptions {
    /// Largest body a record may carry, in bytes (default 16 MiB): a larger one is a bad record,
    /// so one huge request cannot take the replay's memory.
    pub(crate) max_body: usize,
    /// Largest HAR document, in bytes (default 256 MiB): HAR is one JSON document and is read
    /// whole, so a larger one is refused before it is read.
    pub(crate) max_har: u64,
}

impl Default for ReadOptions {
    fn default() -> Self {
        Self { max_body: 16 << 20, max_har: 256 << 20 }
    }
}

impl ReadOptions {
    /// What a record may take beyond its body (header line, request head, JSON around a body).
    pub(super) const HEAD_ALLOWANCE: usize = 1 << 20;
}

/// Why a file cannot be read at all.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum InputError {
    /// The file cannot be opened or read.
    #[error("cannot read {}: {source}", path.display())]
    Io {
        /// The file.
        path: Arc<Path>,
        /// What the system said.
        source: io::Error,
    },
    /// The file is empty: nothing to replay.
    #[error("{} is empty: nothing to replay", path.display())]
    Empty {
        /// The file.
        path: Arc<Path>,
    },
    /// The content is none of the formats.
    #[error(
        "{} is not a format replay reads (it starts with {start}); expected a synth capture \
         (JSON Lines, each line like {{\"v\":1,\"at_us\":…}}), a HAR 1.2 export (one JSON document \
         {{\"log\":{{\"entries\":[…]}}}}) or a GoReplay .gor file (a line `1 <id> <timestamp_ns> \
         <latency>`, the raw HTTP request, then a line 🐵🙈🙉)",
        path.display()
    )]
    UnknownFormat {
        /// The file.
        path: Arc<Path>,
        /// Its first bytes, escaped.
        start: String,
    },
    /// A HAR document over [`ReadOptions::max_har`].
    #[error("{} is a HAR document over {limit} bytes; HAR is read whole, so split it or convert it to JSON Lines", path.display())]
    HarTooLarge {
        /// The file.
        path: Arc<Path>,
        /// The limit.
        limit: u64,
    },
    /// A HAR document that is not valid JSON or has no `log.entries` array.
    #[error("{} is not a valid HAR document: {reason}", path.display())]
    HarInvalid {
        /// The file.
        path: Arc<Path>,
        /// What is wrong.
        reason: String,
    },
}

/// One record that cannot be replayed, with where it is and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{location}: {reason}")]
pub(crate) struct BadRecord {
    /// Where the record is.
    pub(crate) location: Location,
    /// What is wrong with it.
    pub(crate) reason: BadReason,
}

/// What is wrong with a record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum BadReason {
    /// The record stops before its end (cut line, missing separator, body shorter than declared).
    #[error("truncated: {0}")]
    Truncated(String),
    /// The line or record is over the reader's limit.
    #[error("record over {limit} bytes (the body limit is {body_limit} bytes)")]
    TooLong {
        /// The limit on the record.
        limit: usize,
        /// The body limit it derives from.
        body_limit: usize,
    },
    /// The body is over [`ReadOptions::max_body`].
    #[error("body of {len} bytes is over the limit of {limit} bytes")]
    BodyTooLarge {
        /// The body's length (declared or decoded).
        len: u64,
        /// The limit.
        limit: usize,
    },
    /// Not the JSON the format asks for (a missing field, a wrong type, invalid JSON).
    #[error("{0}")]
    Json(String),
    /// A synth record of a version this reader does not know.
    #[error("format version {0} is not supported (this reader reads version 1)")]
    Version(u64),
    /// A method that is not an HTTP token.
    #[error("invalid method {0:?}")]
    Method(String),
    /// A URI replay cannot send.
    #[error("invalid URI {uri:?}: {why}")]
    Uri {
        /// The URI as recorded.
        uri: String,
        /// Why.
        why: String,
    },
    /// A header replay cannot send.
    #[error("invalid header {name:?}: {why}")]
    Header {
        /// The header name as recorded.
        name: String,
        /// Why.
        why: String,
    },
    /// Invalid base64 in a body or header value.
    #[error("invalid base64 in {what}: {why}")]
    Base64 {
        /// Which field.
        what: String,
        /// The decoder's reason.
        why: String,
    },
    /// A body that does not match its declared length or omission flag.
    #[error("inconsistent body: {0}")]
    Body(String),
    /// A timestamp that is missing or not understood.
    #[error("invalid timestamp {0:?}")]
    Timestamp(String),
    /// A GoReplay record that is not `<type> <id> <timestamp> [<latency>]` plus an HTTP/1.x request.
    #[error("invalid GoReplay record: {0}")]
    Gor(String),
    /// The file could not be read past this point.
    #[error("read error: {0}")]
    Io(String),
}

/// Records that were read but are not requests to replay, by reason.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Skipped {
    /// HAR entries the browser served from its cache (`_fromCache`): the server never saw them.
    pub(crate) from_cache: u64,
    /// HAR entries whose URL is not `http:` or `https:` (`data:`, `blob:`, `ws:`, …).
    pub(crate) not_http: u64,
    /// GoReplay payloads that are responses (type 2, original; type 3, replayed).
    pub(crate) responses: u64,
}

/// The records of one file, in file order. After an I/O error the iterator yields that error as
/// a bad record and ends.
#[derive(Debug)]
pub(crate) struct Records<R> {
    format: Format,
    inner: Inner<R>,
    skipped: Skipped,
}

#[derive(Debug)]
enum Inner<R> {
    Jsonl(jsonl::Reader<R>),
    Har(har::Entries),
    Gor(gor::Reader<R>),
}

impl<R> Records<R> {
    /// The format the file was read as.
    pub(crate) fn format(&self) -> Format {
        self.format
    }

    /// What was skipped so far (not bad, not requests to replay).
    pub(crate) fn skipped(&self) -> Skipped {
        self.skipped
    }
}

impl<R: BufRead> Iterator for Records<R> {
    type Item = Result<Recorded, BadRecord>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.inner {
            Inner::Jsonl(reader) => reader.next(),
            Inner::Har(entries) => entries.next_record(&mut self.skipped),
            Inner::Gor(reader) => reader.next_record(&mut self.skipped),
        }
    }
}

/// How many bytes [`read_from`] looks at to tell the format.
const SNIFF: usize = 64 << 10;

/// Tells a file's format from its first bytes (a UTF-8 byte order mark and leading whitespace
/// are ignored): a JSON object whose first key is `"log"` is HAR, one whose first key is a synth
/// record field (`v`, `at_us`, `method`, `uri`) is a synth capture, a first line
/// `<1|2|3> <id> <digits>…` is GoReplay.
pub(crate) fn detect(first_bytes: &[u8]) -> Result<Format, DetectError> {
    let bytes = first_bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(first_bytes);
    let trimmed = bytes.trim_ascii_start();
    if trimmed.is_empty() {
        return Err(DetectError::Empty);
    }
    if let Some(rest) = trimmed.strip_prefix(b"{") {
        let key = first_json_key(rest);
        return match key {
            Some(b"log") => Ok(Format::Har),
            Some(b"v" | b"at_us" | b"method" | b"uri") => Ok(Format::SynthJsonl),
            _ => Err(DetectError::Unknown),
        };
    }
    if gor::looks_like_header(bytes) {
        return Ok(Format::Gor);
    }
    Err(DetectError::Unknown)
}

/// Why [`detect`] could not tell a format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum DetectError {
    /// Nothing but whitespace.
    #[error("empty")]
    Empty,
    /// Content of none of the formats.
    #[error("none of the formats")]
    Unknown,
}

/// The first key of a JSON object whose `{` has been consumed, when it is a plain string (no
/// escapes; none of the keys looked for has any).
fn first_json_key(rest: &[u8]) -> Option<&[u8]> {
    let rest = rest.trim_ascii_start().strip_prefix(b"\"")?;
    let end = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
    (rest[end] == b'"').then(|| &rest[..end])
}

/// Opens `path` and reads its records (see the module docs for what each format looks like).
pub(crate) fn read(path: &Path, opts: &ReadOptions) -> Result<Records<BufReader<File>>, InputError> {
    let name: Arc<Path> = Arc::from(path);
    let file = File::open(path).map_err(|source| InputError::Io { path: name.clone(), source })?;
    read_from(name, BufReader::with_capacity(SNIFF, file), opts)
}

/// Reads records from `reader`, named `name` in errors and locations.
pub(crate) fn read_from<R: BufRead>(
    name: Arc<Path>,
    mut reader: R,
    opts: &ReadOptions,
) -> Result<Records<R>, InputError> {
    let first = reader.fill_buf().map_err(|source| InputError::Io { path: name.clone(), source })?;
    let format = match detect(first) {
        Ok(format) => format,
        Err(DetectError::Empty) => return Err(InputError::Empty { path: name }),
        Err(DetectError::Unknown) => {
            return Err(InputError::UnknownFormat { start: escape_start(first), path: name });
        }
    };
    let inner = match format {
        Format::SynthJsonl => Inner::Jsonl(jsonl::Reader::new(name, reader, *opts)),
        Format::Har => Inner::Har(har::Entries::read(name, reader, *opts)?),
        Format::Gor => Inner::Gor(gor::Reader::new(name, reader, *opts)),
    };
    Ok(Records { format, inner, skipped: Skipped::default() })
}

/// The first bytes of a file, printable whatever they are.
fn escape_start(first: &[u8]) -> String {
    let head = &first[..first.len().min(40)];
    let mut out = String::from("\"");
    out.extend(head.escape_ascii().map(char::from));
    out.push('"');
    if first.len() > head.len() {
        out.push('…');
    }
    out
}

/// Reads up to and including the next `\n` into `buf` (cleared first), reading at most
/// `limit + 1` bytes. `Ok(None)` at end of file; `Ok(Some(true))` for a whole line,
/// `Ok(Some(false))` for a line cut by end of file; `Err(TooLong)` when over the limit (the rest of
/// the line is consumed, so the next call starts on the next line).
pub(super) fn read_line<R: BufRead>(
    reader: &mut R,
    buf: &mut Vec<u8>,
    limit: usize,
) -> Result<Option<bool>, LineError> {
    buf.clear();
    let mut limited = io::Read::take(&mut *reader, limit as u64 + 1);
    let n = limited.read_until(b'\n', buf).map_err(LineError::Io)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        return Ok(Some(true));
    }
    if buf.len() > limit {
        // Skip to the end of the line without keeping it.
        loop {
            let available = reader.fill_buf().map_err(LineError::Io)?;
            if available.is_empty() {
                break;
            }
            match available.iter().position(|&b| b == b'\n') {
                Some(i) => {
                    reader.consume(i + 1);
                    break;
                }
                None => {
                    let len = available.len();
                    reader.consume(len);
                }
            }
        }
        buf.clear();
        return Err(LineError::TooLong);
    }
    Ok(Some(false))
}

/// Why [`read_line`] gave no line.
#[derive(Debug)]
pub(super) enum LineError {
    Io(io::Error),
    TooLong,
}

/// Builds the request headers replay sends from recorded (name, value) pairs: drops pseudo,
/// hop-by-hop, `Host` and `Content-Length` headers and returns the recorded authority
/// (`:authority` first, else `Host`).
pub(super) fn build_headers<'a>(
    pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>,
) -> Result<(HeaderMap, Option<String>), BadReason> {
    let mut headers = HeaderMap::new();
    let mut authority = None;
    let mut host = None;
    for (name, value) in pairs {
        if let Some(pseudo) = name.strip_prefix(b":") {
            if pseudo == b"authority" {
                authority = Some(header_text(name, value)?);
            }
            continue;
        }
        let header = HeaderName::from_bytes(name).map_err(|e| BadReason::Header {
            name: String::from_utf8_lossy(name).into_owned(),
            why: e.to_string(),
        })?;
        let value = HeaderValue::from_bytes(value).map_err(|_| BadReason::Header {
            name: header.as_str().to_owned(),
            why: "value has bytes a header cannot carry (control characters or line breaks)".into(),
        })?;
        if header == http::header::HOST {
            if host.is_none() {
                host = Some(header_text(name, value.as_bytes())?);
            }
            continue;
        }
        headers.append(header, value);
    }
    let named: Vec<HeaderName> = headers
        .get_all(http::header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|token| HeaderName::from_bytes(token.trim().as_bytes()).ok())
        .collect();
    for name in &named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
    Ok((headers, authority.or(host)))
}

/// Headers that belong to one connection, and `Content-Length`, which the sender sets for the
/// body it sends.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authenticate",
    "content-length",
];

fn header_text(name: &[u8], value: &[u8]) -> Result<String, BadReason> {
    let bad = |why: String| BadReason::Header { name: String::from_utf8_lossy(name).into_owned(), why };
    let authority =
        http::uri::Authority::try_from(value).map_err(|e| bad(format!("not a host[:port]: {e}")))?;
    Ok(host_of(&authority)).and_then(|host| host.ok_or_else(|| bad("not a host[:port]".into())))
}

/// `host[:port]` of an authority, without any `user:password@` (a credential in a recorded URL is
/// not sent again as part of a host name), `None` when no host is left.
pub(super) fn host_of(authority: &http::uri::Authority) -> Option<String> {
    let host_port = authority.as_str().rsplit('@').next().unwrap_or_default();
    (!authority.host().is_empty()).then(|| host_port.to_owned())
}

/// Checks a recorded method.
pub(super) fn parse_method(method: &[u8]) -> Result<http::Method, BadReason> {
    http::Method::from_bytes(method)
        .map_err(|_| BadReason::Method(String::from_utf8_lossy(method).into_owned()))
}

/// Checks an origin-form request target.
pub(super) fn parse_origin_form(uri: &str) -> Result<http::uri::PathAndQuery, BadReason> {
    let bad = |why: &str| BadReason::Uri { uri: uri.to_owned(), why: why.to_owned() };
    if !uri.starts_with('/') {
        return Err(bad("not origin-form (a path starting with `/`, no scheme or host)"));
    }
    if uri.contains('#') {
        return Err(bad("a request target has no fragment (`#`)"));
    }
    uri.parse::<http::uri::PathAndQuery>().map_err(|e| bad(&e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_each_format_from_content() {
        let cases: &[(&[u8], Result<Format, DetectError>)] = &[
            (b"{\"v\":1,\"at_us\":1}\n", Ok(Format::SynthJsonl)),
            (b"\xEF\xBB\xBF  {\"at_us\":1,\"v\":1}", Ok(Format::SynthJsonl)),
            (b"{\n  \"log\": {\n    \"version\": \"1.2\"", Ok(Format::Har)),
            (b"\xEF\xBB\xBF{\"log\":{}}", Ok(Format::Har)),
            (b"1 8a3f 1700000000000000000 0\nGET / HTTP/1.1\r\n", Ok(Format::Gor)),
            (b"2 8a3f 1700000000000000000\nHTTP/1.1 200 OK\r\n", Ok(Format::Gor)),
            (b"", Err(DetectError::Empty)),
            (b" \n\t", Err(DetectError::Empty)),
            (b"{\"name\":\"x\"}", Err(DetectError::Unknown)),
            (b"{\"lo\\u0067\":{}}", Err(DetectError::Unknown)),
            (b"[1,2]", Err(DetectError::Unknown)),
            (b"GET / HTTP/1.1\r\n\r\n", Err(DetectError::Unknown)),
            (b"4 id 123 0\n", Err(DetectError::Unknown)),
            (b"1 id notanumber 0\n", Err(DetectError::Unknown)),
            (b"\x00\x01\x02binary", Err(DetectError::Unknown)),
        ];
        for (input, expected) in cases {
            assert_eq!(detect(input), *expected, "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn unknown_format_names_each_format_and_shows_the_start() {
        let err = read_from(Arc::from(Path::new("x.txt")), &b"hello world"[..], &ReadOptions::default())
            .map(|_| ())
            .unwrap_err();
        let message = err.to_string();
        assert!(message.contains("x.txt"), "{message}");
        assert!(message.contains("\"hello world\""), "{message}");
        for format in ["synth capture", "HAR 1.2", "GoReplay"] {
            assert!(message.contains(format), "{message}");
        }
        let empty =
            read_from(Arc::from(Path::new("e")), &b""[..], &ReadOptions::default()).map(|_| ()).unwrap_err();
        assert!(matches!(empty, InputError::Empty { .. }), "{empty}");
    }

    #[test]
    fn a_missing_file_is_an_input_error_with_its_path() {
        let err =
            read(Path::new("/nonexistent/capture.jsonl"), &ReadOptions::default()).map(|_| ()).unwrap_err();
        assert!(matches!(err, InputError::Io { .. }));
        assert!(err.to_string().contains("/nonexistent/capture.jsonl"), "{err}");
    }

    #[test]
    fn headers_lose_pseudo_hop_by_hop_and_framing_and_keep_the_authority() {
        let pairs: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"GET"),
            (b":authority", b"shop.example:8443"),
            (b"Host", b"other.example"),
            (b"Connection", b"keep-alive, X-Trace"),
            (b"X-Trace", b"1"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Content-Length", b"3"),
            (b"Accept", b"a"),
            (b"accept", b"b"),
        ];
        let (headers, host) = build_headers(pairs).unwrap();
        assert_eq!(host.as_deref(), Some("shop.example:8443"));
        let (_, host) = build_headers(vec![(&b"host"[..], &b"u:pw@h.example:80"[..])]).unwrap();
        assert_eq!(host.as_deref(), Some("h.example:80"));
        for bad in [&b"a b"[..], b"", b"h/x", b"h\x01"] {
            let err = build_headers(vec![(&b":authority"[..], bad)]).unwrap_err();
            assert!(matches!(err, BadReason::Header { .. }), "{err}");
        }
        assert_eq!(headers.len(), 2, "{headers:?}");
        let accept: Vec<_> = headers.get_all("accept").iter().collect();
        assert_eq!(accept, ["a", "b"]);
        let bad = build_headers(vec![(&b"x"[..], &b"a\r\nb"[..])]).unwrap_err();
        assert!(matches!(bad, BadReason::Header { .. }), "{bad}");
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_detection_or_any_reader(
            prefix in proptest::sample::select(vec![&b""[..], b"{\"v\":1,", b"{\"log\":", b"1 a 1 0\n", b"\xEF\xBB\xBF{\"log\":{\"entries\":["]),
            bytes in proptest::collection::vec(proptest::arbitrary::any::<u8>(), 0..512),
        ) {
            let mut input = prefix.to_vec();
            input.extend(bytes);
            let opts = ReadOptions { max_body: 64, max_har: 4096 };
            if let Ok(records) = read_from(Arc::from(Path::new("x")), &input[..], &opts) {
                records.for_each(drop);
            }
        }
    }

    #[test]
    fn a_line_over_the_limit_is_refused_and_the_next_one_read() {
        let mut input = &b"short\nxxxxxxxxxxxxxxxxxxxx\nnext\ncut"[..];
        let mut buf = Vec::new();
        assert_eq!(read_line(&mut input, &mut buf, 8).unwrap(), Some(true));
        assert!(matches!(read_line(&mut input, &mut buf, 8), Err(LineError::TooLong)));
        assert_eq!(read_line(&mut input, &mut buf, 8).unwrap(), Some(true));
        assert_eq!(buf, b"next\n");
        assert_eq!(read_line(&mut input, &mut buf, 8).unwrap(), Some(false));
        assert_eq!(read_line(&mut input, &mut buf, 8).unwrap(), None);
    }
}
