//! HAR 1.2 (<http://www.softwareishard.com/blog/har-12-spec/>): `log.entries[].request`, as
//! browsers, mitmproxy and Charles export it.
//!
//! HAR is one JSON document, so it is read whole, up to [`ReadOptions::max_har`]; each entry is
//! then checked on its own, so one bad entry is one bad record, not a bad file.

use std::io::{BufRead, Read};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;

use super::input::{
    BadReason, BadRecord, InputError, ReadOptions, Skipped, build_headers, host_of, parse_method,
};
use super::{Location, Position, Recorded, Scrubbed};

#[derive(Deserialize)]
struct Document {
    log: Log,
}

#[derive(Deserialize)]
struct Log {
    entries: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct Entry {
    #[serde(rename = "startedDateTime")]
    started: String,
    request: Request,
    /// Chrome's extension: `"memory"` or `"disk"` when the browser answered from its cache.
    #[serde(rename = "_fromCache", default)]
    from_cache: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Request {
    method: String,
    url: String,
    headers: Vec<NameValue>,
    #[serde(rename = "postData", default)]
    post_data: Option<PostData>,
}

#[derive(Deserialize)]
struct NameValue {
    name: String,
    value: String,
}

#[derive(Deserialize)]
struct PostData {
    #[serde(rename = "mimeType", default)]
    mime_type: String,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    encoding: Option<String>,
    #[serde(default)]
    params: Vec<Param>,
}

#[derive(Deserialize)]
struct Param {
    name: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(rename = "fileName", default)]
    file_name: Option<String>,
}

/// The entries of one HAR document, converted one at a time.
#[derive(Debug)]
pub(super) struct Entries {
    file: Arc<Path>,
    entries: std::iter::Enumerate<std::vec::IntoIter<serde_json::Value>>,
    opts: ReadOptions,
}

impl Entries {
    /// Reads the whole document (up to the cap) and checks its shape.
    pub(super) fn read<R: BufRead>(
        file: Arc<Path>,
        reader: R,
        opts: ReadOptions,
    ) -> Result<Self, InputError> {
        let mut text = Vec::new();
        reader
            .take(opts.max_har.saturating_add(1))
            .read_to_end(&mut text)
            .map_err(|source| InputError::Io { path: file.clone(), source })?;
        if text.len() as u64 > opts.max_har {
            return Err(InputError::HarTooLarge { path: file, limit: opts.max_har });
        }
        let text = text.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&text);
        let document: Document = serde_json::from_slice(text)
            .map_err(|e| InputError::HarInvalid { path: file.clone(), reason: e.to_string() })?;
        Ok(Self { file, entries: document.log.entries.into_iter().enumerate(), opts })
    }

    pub(super) fn next_record(&mut self, skipped: &mut Skipped) -> Option<Result<Recorded, BadRecord>> {
        for (index, value) in self.entries.by_ref() {
            let location = Location { file: self.file.clone(), at: Position::Entry(index) };
            match convert(value, &self.opts, location.clone()) {
                Ok(Converted::Request(recorded)) => return Some(Ok(*recorded)),
                Ok(Converted::FromCache) => skipped.from_cache += 1,
                Ok(Converted::NotHttp) => skipped.not_http += 1,
                Err(reason) => return Some(Err(BadRecord { location, reason })),
            }
        }
        None
    }
}

enum Converted {
    Request(Box<Recorded>),
    FromCache,
    NotHttp,
}

fn convert(value: serde_json::Value, opts: &ReadOptions, source: Location) -> Result<Converted, BadReason> {
    let entry: Entry = serde_json::from_value(value).map_err(|e| BadReason::Json(e.to_string()))?;
    if entry.from_cache.as_ref().is_some_and(|v| !(v.is_null() || *v == false || *v == "")) {
        return Ok(Converted::FromCache);
    }
    let request = entry.request;
    let url = request.url.split('#').next().unwrap_or_default();
    let Some((scheme, _)) = url.split_once(':') else {
        return Err(BadReason::Uri { uri: request.url.clone(), why: "not an absolute URL".into() });
    };
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https")) {
        return Ok(Converted::NotHttp);
    }
    let uri: http::Uri = url.parse().map_err(|e: http::uri::InvalidUri| BadReason::Uri {
        uri: request.url.clone(),
        why: e.to_string(),
    })?;
    let Some(host) = uri.authority().and_then(host_of) else {
        return Err(BadReason::Uri { uri: request.url.clone(), why: "no host".into() });
    };
    let path = uri.path_and_query().cloned().unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
    let path = if path.as_str().is_empty() { http::uri::PathAndQuery::from_static("/") } else { path };
    let method = parse_method(request.method.as_bytes())?;
    let at = parse_rfc3339(&entry.started).ok_or_else(|| BadReason::Timestamp(entry.started.clone()))?;
    let (headers, _) =
        build_headers(request.headers.iter().map(|h| (h.name.as_bytes(), h.value.as_bytes())))?;
    let body = match request.post_data {
        None => Vec::new(),
        Some(post) => post_body(post, opts)?,
    };
    Ok(Converted::Request(Box::new(Recorded {
        at,
        method,
        uri: path,
        host: Some(host),
        headers,
        body: body.into(),
        body_omitted: false,
        scrubbed: Scrubbed::default(),
        source,
    })))
}

fn post_body(post: PostData, opts: &ReadOptions) -> Result<Vec<u8>, BadReason> {
    let too_large = |len: usize| BadReason::BodyTooLarge { len: len as u64, limit: opts.max_body };
    let body = match (post.text, post.encoding.as_deref()) {
        (Some(text), None | Some("")) => text.into_bytes(),
        (Some(text), Some("base64")) => {
            if text.len() > opts.max_body.saturating_mul(4) / 3 + 4 {
                return Err(too_large(text.len() / 4 * 3));
            }
            STANDARD
                .decode(text.trim())
                .map_err(|e| BadReason::Base64 { what: "postData.text".into(), why: e.to_string() })?
        }
        (Some(_), Some(other)) => {
            return Err(BadReason::Body(format!(
                "postData.encoding {other:?} is not understood (only \"base64\")"
            )));
        }
        (None, _) if post.params.is_empty() => Vec::new(),
        (None, _) => form_body(&post.mime_type, &post.params)?,
    };
    if body.len() > opts.max_body {
        return Err(too_large(body.len()));
    }
    Ok(body)
}

/// A URL-encoded form rebuilt from `postData.params` when an exporter left out `text`; a
/// multipart form or a file upload cannot be rebuilt faithfully, so it is refused.
fn form_body(mime_type: &str, params: &[Param]) -> Result<Vec<u8>, BadReason> {
    let essence = mime_type.split(';').next().unwrap_or_default().trim();
    if !(essence.is_empty() || essence.eq_ignore_ascii_case("application/x-www-form-urlencoded"))
        || params.iter().any(|p| p.file_name.is_some())
    {
        return Err(BadReason::Body(format!(
            "postData has params but no text, and a {mime_type:?} body cannot be rebuilt from params"
        )));
    }
    let mut body = Vec::new();
    for (i, param) in params.iter().enumerate() {
        if i > 0 {
            body.push(b'&');
        }
        percent_encode(&param.name, &mut body);
        body.push(b'=');
        percent_encode(param.value.as_deref().unwrap_or_default(), &mut body);
    }
    Ok(body)
}

fn percent_encode(text: &str, out: &mut Vec<u8>) {
    for &b in text.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => out.push(b),
            b' ' => out.push(b'+'),
            _ => out.extend_from_slice(format!("%{b:02X}").as_bytes()),
        }
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)`, the ISO 8601 profile HAR exporters write.
pub(super) fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(range)?;
        part.iter()
            .all(u8::is_ascii_digit)
            .then(|| part.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b'T' | b't' | b' ')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut rest = &b[19..];
    let mut nanos = 0u32;
    if let Some(fraction) = rest.strip_prefix(b".") {
        let len = fraction.iter().take_while(|d| d.is_ascii_digit()).count();
        if len == 0 {
            return None;
        }
        for (i, d) in fraction[..len].iter().enumerate().take(9) {
            nanos += u32::from(d - b'0') * 10u32.pow(8 - i as u32);
        }
        rest = &fraction[len..];
    }
    let offset = match rest {
        b"Z" | b"z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let two = |a: u8, b: u8| {
                (a.is_ascii_digit() && b.is_ascii_digit()).then(|| i64::from((a - b'0') * 10 + (b - b'0')))
            };
            let minutes = two(*h1, *h2)? * 60 + two(*m1, *m2)?;
            if *sign == b'+' { minutes * 60 } else { -minutes * 60 }
        }
        _ => return None,
    };
    let seconds = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second - offset;
    let seconds = u64::try_from(seconds).ok()?;
    Some(UNIX_EPOCH + Duration::new(seconds, nanos))
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::input::{Format, read_from};
    use proptest::prelude::*;

    fn read_har(text: &str) -> (Vec<Result<Recorded, BadRecord>>, Skipped) {
        let mut records =
            read_from(Arc::from(Path::new("x.har")), text.as_bytes(), &ReadOptions::default()).unwrap();
        assert_eq!(records.format(), Format::Har);
        let all = records.by_ref().collect();
        (all, records.skipped())
    }

    fn entry(request: &str) -> String {
        format!(
            r#"{{"log":{{"version":"1.2","entries":[{{"startedDateTime":"2026-12-01T10:00:00.250Z","request":{request}}}]}}}}"#
        )
    }

    #[test]
    fn timestamps_as_exporters_write_them() {
        let cases: &[(&str, Option<(u64, u32)>)] = &[
            ("1970-01-01T00:00:00Z", Some((0, 0))),
            ("2026-12-01T10:00:00.250Z", Some((1_796_119_200, 250_000_000))),
            ("2026-12-01T12:00:00.250+02:00", Some((1_796_119_200, 250_000_000))),
            ("2026-12-01T05:30:00.123456-04:30", Some((1_796_119_200, 123_456_000))),
            ("2000-02-29T00:00:00Z", Some((951_782_400, 0))),
            ("2026-12-01T10:00:00", None),
            ("2026-13-01T10:00:00Z", None),
            ("2026-12-01T10:00:00.Z", None),
            ("1969-12-31T23:59:59Z", None),
            ("yesterday", None),
        ];
        for (text, expected) in cases {
            let want = expected.map(|(s, n)| UNIX_EPOCH + Duration::new(s, n));
            assert_eq!(parse_rfc3339(text), want, "{text}");
        }
    }

    #[test]
    fn each_bad_entry_says_which_and_what() {
        let cases: &[(String, &str)] = &[
            (entry(r#"{"method":"GET","headers":[]}"#), "x.har: log.entries[0]: missing field `url`"),
            (entry(r#"{"method":"GET","url":"/relative","headers":[]}"#), "not an absolute URL"),
            (entry(r#"{"method":"GET","url":"http://a b/","headers":[]}"#), "invalid URI"),
            (entry(r#"{"method":"GET","url":"http://a/","headers":[{"name":"x y","value":"1"}]}"#), "invalid header \"x y\""),
            (entry(r#"{"method":"POST","url":"http://a/","headers":[],"postData":{"mimeType":"x","text":"@@","encoding":"base64"}}"#), "invalid base64 in postData.text"),
            (entry(r#"{"method":"POST","url":"http://a/","headers":[],"postData":{"mimeType":"x","text":"a","encoding":"gzip"}}"#), "\"gzip\" is not understood"),
            (entry(r#"{"method":"POST","url":"http://a/","headers":[],"postData":{"mimeType":"multipart/form-data","params":[{"name":"f","fileName":"a.png"}]}}"#), "cannot be rebuilt"),
            (r#"{"log":{"entries":[{"request":{"method":"GET","url":"http://a/","headers":[]}}]}}"#.to_owned(), "missing field `startedDateTime`"),
            (r#"{"log":{"entries":[{"startedDateTime":"soon","request":{"method":"GET","url":"http://a/","headers":[]}}]}}"#.to_owned(), "invalid timestamp \"soon\""),
        ];
        for (text, expected) in cases {
            let (records, _) = read_har(text);
            let message = records[0].as_ref().unwrap_err().to_string();
            assert!(message.contains(expected), "{text}\n  gave: {message}\n  expected: {expected}");
        }
    }

    #[test]
    fn a_document_without_entries_or_over_the_cap_is_refused_whole() {
        let open = |text: &str, opts: ReadOptions| {
            read_from(Arc::from(Path::new("x.har")), text.as_bytes(), &opts).map(|_| ()).unwrap_err()
        };
        let err = open(r#"{"log":{"version":"1.2"}}"#, ReadOptions::default());
        assert!(err.to_string().contains("missing field `entries`"), "{err}");
        let err = open(r#"{"log":{"entries":[{"#, ReadOptions::default());
        assert!(matches!(err, InputError::HarInvalid { .. }), "{err}");
        let big = entry(r#"{"method":"GET","url":"http://a/","headers":[]}"#);
        let err = open(&big, ReadOptions { max_har: 50, ..ReadOptions::default() });
        assert!(err.to_string().contains("over 50 bytes"), "{err}");
    }

    #[test]
    fn only_a_cache_hit_is_skipped_as_one() {
        let text = |from_cache: &str| {
            format!(
                r#"{{"log":{{"entries":[{{"startedDateTime":"2026-12-01T10:00:00Z","_fromCache":{from_cache},"request":{{"method":"GET","url":"http://a/","headers":[]}}}}]}}}}"#
            )
        };
        for (value, skipped) in
            [("\"memory\"", 1), ("\"disk\"", 1), ("true", 1), ("false", 0), ("null", 0), ("\"\"", 0)]
        {
            let (records, counts) = read_har(&text(value));
            assert_eq!((records.len() as u64, counts.from_cache), (1 - skipped, skipped), "{value}");
        }
    }

    #[test]
    fn urlencoded_params_without_text_are_rebuilt() {
        let text = entry(
            r#"{"method":"POST","url":"https://user:secret@a.example/f?x=1#top","headers":[],"postData":{"mimeType":"application/x-www-form-urlencoded","params":[{"name":"q","value":"a b&c"},{"name":"é","value":"1"}]}}"#,
        );
        let (records, _) = read_har(&text);
        let r = records[0].as_ref().unwrap();
        assert_eq!(r.body.as_ref(), b"q=a+b%26c&%C3%A9=1");
        assert_eq!(r.uri.as_str(), "/f?x=1");
        assert_eq!(r.host.as_deref(), Some("a.example"));
    }

    proptest! {
        #[test]
        fn arbitrary_documents_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let mut input = b"{\"log\":{\"entries\":[{\"startedDateTime\":".to_vec();
            input.extend(bytes);
            if let Ok(records) = read_from(Arc::from(Path::new("x")), &input[..], &ReadOptions::default()) {
                records.for_each(drop);
            }
        }

        #[test]
        fn arbitrary_timestamps_never_panic(text in "[0-9T:+.Zz -]{0,40}") {
            let _ = parse_rfc3339(&text);
        }
    }
}
