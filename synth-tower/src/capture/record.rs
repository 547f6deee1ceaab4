//! One captured request, its scrubbing, and its JSON Lines form (`docs/capture-format.md`).

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, Method, StatusCode, Version, uri::PathAndQuery};
use serde_json::{Map, Value, json};

use crate::compare::JsonPath;

/// What replaces a scrubbed query value or JSON field: URL- and JSON-safe, never a real value.
pub const SCRUBBED: &str = "__synth_scrubbed__";

/// Headers dropped by default: credentials and sessions, including those that load balancers and
/// identity-aware proxies add. Any other header whose value looks like a credential (`Bearer `,
/// `Basic `, a JWT) is dropped too.
pub const DEFAULT_DROPPED_HEADERS: [&str; 13] = synth_ctx::http::CREDENTIAL_HEADERS;

/// Whether a header value looks like a credential: a bearer or basic scheme, or a JWT.
fn looks_like_credential(value: &http::HeaderValue) -> bool {
    synth_ctx::http::looks_like_credential(value.as_bytes())
}

/// Which request headers a capture keeps.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum HeaderPolicy {
    /// Every header except [`DEFAULT_DROPPED_HEADERS`] and these.
    DropListed(Vec<HeaderName>),
    /// Only these headers (an allowlist); every other one is dropped.
    KeepOnly(Vec<HeaderName>),
}

impl Default for HeaderPolicy {
    fn default() -> Self {
        HeaderPolicy::DropListed(Vec::new())
    }
}

/// What a capture scrubs before anything is stored.
#[derive(Clone, Debug, Default)]
pub struct Scrub {
    /// Headers to drop (recorded by name as scrubbed, never their values).
    pub headers: HeaderPolicy,
    /// Query parameters whose values become [`SCRUBBED`].
    pub query: Vec<String>,
    /// JSON body fields whose values become `"__synth_scrubbed__"` (JSON bodies only).
    pub json: Vec<JsonPath>,
}

/// What was scrubbed from one request (names and paths only).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Scrubbed {
    /// Dropped headers, lowercase, each once.
    pub headers: Vec<String>,
    /// Query parameters whose values were replaced, each once.
    pub query: Vec<String>,
    /// JSON paths (as configured) that replaced at least one value.
    pub json: Vec<String>,
}

impl Scrubbed {
    /// Whether nothing was scrubbed.
    pub fn is_empty(&self) -> bool {
        self.headers.is_empty() && self.query.is_empty() && self.json.is_empty()
    }
}

/// One captured (and scrubbed) real request, as a [`CaptureSink`](super::CaptureSink) gets it.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CaptureRecord {
    /// When it arrived, since the unix epoch.
    pub at: Duration,
    /// Its method.
    pub method: Method,
    /// Its path and query (scrubbed).
    pub uri: PathAndQuery,
    /// Its HTTP version.
    pub version: Version,
    /// Its headers (scrubbed).
    pub headers: HeaderMap,
    /// Its body (scrubbed); empty when omitted.
    pub body: Bytes,
    /// The body's length: of [`body`](Self::body) when it is recorded (after scrubbing, which
    /// can change it), the length as received when the body is omitted.
    pub body_len: u64,
    /// Whether the body was left out: over the capture's limit, or not read to its end by the
    /// handler.
    pub body_omitted: bool,
    /// What was scrubbed.
    pub scrubbed: Scrubbed,
    /// The real answer's status, when it came.
    pub status: Option<StatusCode>,
    /// The real answer's time to its head.
    pub latency: Option<Duration>,
    /// The JSON line, made once (the sink writes it and the counters measure it).
    pub(crate) line: LineCache,
}

/// A record's JSON line, made once for the record the capture's writer hands to its sink: the
/// sink gets it by `&`, so it cannot change under the line. A clone's fields can be edited (a
/// sink that redacts a copy further), so a clone keeps no line: each
/// [`to_json_line`](CaptureRecord::to_json_line) of it is made from its fields as they are then.
#[derive(Debug, Default)]
pub(crate) struct LineCache {
    line: std::sync::OnceLock<String>,
    /// A clone's: never kept.
    off: bool,
}

impl Clone for LineCache {
    fn clone(&self) -> Self {
        LineCache { line: std::sync::OnceLock::new(), off: true }
    }
}

impl CaptureRecord {
    /// Scrubs the record in place, as `scrub` says.
    pub(crate) fn scrub(&mut self, scrub: &Scrub) {
        // A line made before would show what is about to be scrubbed.
        self.line.line = std::sync::OnceLock::new();
        let received = self.body_len;
        self.scrub_fields(scrub);
        // A recorded body's length is that of the body recorded, which scrubbing may have
        // rewritten (a reader refuses a record where they differ); an omitted body's is the
        // length received.
        self.body_len = if self.body_omitted { received } else { self.body.len() as u64 };
    }

    fn scrub_fields(&mut self, scrub: &Scrub) {
        let mut dropped: Vec<String> = Vec::new();
        let names: Vec<HeaderName> = self.headers.keys().cloned().collect();
        for name in names {
            let drop = match &scrub.headers {
                HeaderPolicy::DropListed(extra) => {
                    DEFAULT_DROPPED_HEADERS.contains(&name.as_str())
                        || extra.contains(&name)
                        || self.headers.get_all(&name).iter().any(looks_like_credential)
                }
                HeaderPolicy::KeepOnly(keep) => !keep.contains(&name),
            };
            if drop {
                self.headers.remove(&name);
                dropped.push(name.as_str().to_owned());
            }
        }
        dropped.sort();
        dropped.dedup();
        self.scrubbed.headers = dropped;

        if !scrub.query.is_empty()
            && let Some(query) = self.uri.query()
        {
            let (rewritten, hit) = scrub_pairs(query, &scrub.query);
            if !hit.is_empty() {
                let text = format!("{}?{rewritten}", self.uri.path());
                // Only parts of a valid query were replaced by a URL-safe word: still valid. Should
                // it not be, the query goes whole rather than with a value that should not.
                self.uri = PathAndQuery::try_from(text.as_str())
                    .unwrap_or_else(|_| PathAndQuery::from_static("/__synth_scrubbed__"));
                self.scrubbed.query = hit;
            }
        }

        // The same URL travels in headers too (`referer`, `x-forwarded-uri`, `x-original-uri`, …):
        // any header value with a query gets the query rules.
        if !scrub.query.is_empty() {
            let names: Vec<HeaderName> = self.headers.keys().cloned().collect();
            for name in names {
                let values: Vec<http::HeaderValue> = self.headers.get_all(&name).iter().cloned().collect();
                if !values.iter().any(|v| v.as_bytes().contains(&b'?')) {
                    continue;
                }
                self.headers.remove(&name);
                for value in values {
                    let rewritten = value.to_str().ok().and_then(|text| {
                        let (head, query) = text.split_once('?')?;
                        let (query, fragment) =
                            query.split_once('#').map_or((query, None), |(q, f)| (q, Some(f)));
                        let (query, hit) = scrub_pairs(query, &scrub.query);
                        if hit.is_empty() {
                            return None;
                        }
                        for h in hit {
                            if !self.scrubbed.query.contains(&h) {
                                self.scrubbed.query.push(h);
                            }
                        }
                        let text = match fragment {
                            Some(f) => format!("{head}?{query}#{f}"),
                            None => format!("{head}?{query}"),
                        };
                        http::HeaderValue::from_str(&text).ok()
                    });
                    // A value that cannot be read or rebuilt is not kept rather than kept whole.
                    match rewritten {
                        Some(v) => {
                            self.headers.append(name.clone(), v);
                        }
                        None if value.to_str().is_ok_and(|t| {
                            t.split_once('?').is_some_and(|(_, q)| scrub_pairs(q, &scrub.query).1.is_empty())
                        }) =>
                        {
                            self.headers.append(name.clone(), value);
                        }
                        None => {
                            if !self.scrubbed.headers.contains(&name.as_str().to_owned()) {
                                self.scrubbed.headers.push(name.as_str().to_owned());
                            }
                        }
                    }
                }
            }
        }

        let form = self.headers.get(http::header::CONTENT_TYPE).is_some_and(|v| {
            v.to_str().is_ok_and(|t| {
                t.trim_start().to_ascii_lowercase().starts_with("application/x-www-form-urlencoded")
            })
        });
        if form && !scrub.query.is_empty() && !self.body.is_empty() && !self.body_omitted {
            match std::str::from_utf8(&self.body) {
                Ok(text) => {
                    let (rewritten, hit) = scrub_pairs(text, &scrub.query);
                    if !hit.is_empty() {
                        self.body = Bytes::from(rewritten);
                        for name in hit {
                            if !self.scrubbed.query.contains(&name) {
                                self.scrubbed.query.push(name);
                            }
                        }
                    }
                }
                // A form that is not text cannot be searched: not stored.
                Err(_) => self.omit_body(),
            }
        }

        // Form fields in a body the query rules cannot read (multipart, plain text): not stored.
        let unreadable_form = self.headers.get(http::header::CONTENT_TYPE).is_some_and(|v| {
            v.to_str().is_ok_and(|t| {
                let t = t.trim_start().to_ascii_lowercase();
                t.starts_with("multipart/") || t.starts_with("text/plain")
            })
        });
        if unreadable_form && !scrub.query.is_empty() && !self.body.is_empty() {
            self.omit_body();
        }

        if !scrub.json.is_empty() && !self.body.is_empty() && !self.body_omitted {
            // Duplicate keys: the parsed value would not show what the bytes hold. Not stored.
            if serde_json::from_slice::<NoDuplicateKeys>(&self.body).is_err() {
                self.omit_body();
                return;
            }
            // Only the matched values are replaced, in the original text: every other byte
            // (numbers, key order, spacing) is kept as it came.
            let Ok(text) = std::str::from_utf8(&self.body) else {
                // Not text, so not JSON: a body that cannot be searched is not stored.
                return self.omit_body();
            };
            let mut spans: Vec<std::ops::Range<usize>> = Vec::new();
            let mut hit = Vec::new();
            for path in &scrub.json {
                match path.value_spans(text) {
                    Ok(found) if found.is_empty() => {}
                    Ok(found) => {
                        spans.extend(found);
                        hit.push(path.to_string());
                    }
                    // Not JSON: a body that cannot be searched for the configured fields is not
                    // stored, rather than stored with them.
                    Err(_) => return self.omit_body(),
                }
            }
            if !hit.is_empty() {
                spans.sort_by_key(|r| (r.start, std::cmp::Reverse(r.end)));
                let mut out = String::with_capacity(text.len());
                let mut at = 0;
                for span in spans {
                    // A span inside one already replaced (`$.a` and `$.a.b`) is gone with it.
                    if span.start < at || span.end > text.len() {
                        continue;
                    }
                    out.push_str(&text[at..span.start]);
                    out.push('"');
                    out.push_str(SCRUBBED);
                    out.push('"');
                    at = span.end;
                }
                out.push_str(&text[at..]);
                self.body = Bytes::from(out);
                self.scrubbed.json = hit;
            }
        }
    }

    fn omit_body(&mut self) {
        self.body = Bytes::new();
        self.body_omitted = true;
    }

    /// The record as one line of JSON (no newline), in the format of `docs/capture-format.md`.
    pub fn to_json_line(&self) -> String {
        self.json_line().into_owned()
    }

    /// [`to_json_line`](Self::to_json_line), made once and kept (a clone's made each time).
    pub(crate) fn json_line(&self) -> std::borrow::Cow<'_, str> {
        if self.line.off {
            return std::borrow::Cow::Owned(self.make_json_line());
        }
        std::borrow::Cow::Borrowed(self.line.line.get_or_init(|| self.make_json_line()))
    }

    fn make_json_line(&self) -> String {
        let headers: Vec<Value> = self
            .headers
            .iter()
            .map(|(name, value)| match value.to_str() {
                Ok(text) => json!([name.as_str(), text]),
                Err(_) => json!([
                    name.as_str(),
                    base64::engine::general_purpose::STANDARD.encode(value.as_bytes()),
                    "base64"
                ]),
            })
            .collect();
        let (body, encoding) = match std::str::from_utf8(&self.body) {
            Ok(text) => (text.to_owned(), "utf8"),
            Err(_) => (base64::engine::general_purpose::STANDARD.encode(&self.body), "base64"),
        };
        let mut line = Map::new();
        line.insert("v".into(), json!(1));
        line.insert("at_us".into(), json!(u64::try_from(self.at.as_micros()).unwrap_or(u64::MAX)));
        line.insert("method".into(), json!(self.method.as_str()));
        line.insert("uri".into(), json!(self.uri.as_str()));
        line.insert("version".into(), json!(version(self.version)));
        line.insert("headers".into(), Value::Array(headers));
        line.insert("body".into(), json!(body));
        line.insert("body_encoding".into(), json!(encoding));
        line.insert("body_len".into(), json!(self.body_len));
        if self.body_omitted {
            line.insert("body_omitted".into(), json!(true));
        }
        if !self.scrubbed.is_empty() {
            line.insert(
                "scrubbed".into(),
                json!({ "headers": self.scrubbed.headers, "query": self.scrubbed.query, "json": self.scrubbed.json }),
            );
        }
        if let Some(status) = self.status {
            line.insert("status".into(), json!(status.as_u16()));
        }
        if let Some(latency) = self.latency {
            line.insert("latency_us".into(), json!(u64::try_from(latency.as_micros()).unwrap_or(u64::MAX)));
        }
        Value::Object(line).to_string()
    }
}

/// `name=value&…` with the values of the listed names (compared decoded) replaced; the names hit.
fn scrub_pairs(text: &str, names: &[String]) -> (String, Vec<String>) {
    let mut hit: Vec<String> = Vec::new();
    let rewritten: Vec<String> = text
        .split('&')
        .map(|pair| {
            let (name, value) = pair.split_once('=').map_or((pair, None), |(n, v)| (n, Some(v)));
            let decoded = percent_decode(name);
            if names.contains(&decoded) {
                if !hit.contains(&decoded) {
                    hit.push(decoded);
                }
                format!("{name}={SCRUBBED}")
            } else {
                match value {
                    Some(v) => format!("{name}={v}"),
                    None => name.to_owned(),
                }
            }
        })
        .collect();
    (rewritten.join("&"), hit)
}

/// Deserialises any JSON, refusing an object with the same key twice (at any depth).
struct NoDuplicateKeys;

impl<'de> serde::Deserialize<'de> for NoDuplicateKeys {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NoDuplicateKeysVisitor)
    }
}

struct NoDuplicateKeysVisitor;

impl<'de> serde::de::Visitor<'de> for NoDuplicateKeysVisitor {
    type Value = NoDuplicateKeys;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<NoDuplicateKeys, A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert(key) {
                return Err(serde::de::Error::custom("duplicate key"));
            }
            map.next_value::<NoDuplicateKeys>()?;
        }
        Ok(NoDuplicateKeys)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<NoDuplicateKeys, A::Error> {
        while seq.next_element::<NoDuplicateKeys>()?.is_some() {}
        Ok(NoDuplicateKeys)
    }

    fn visit_bool<E>(self, _: bool) -> Result<NoDuplicateKeys, E> {
        Ok(NoDuplicateKeys)
    }

    fn visit_i64<E>(self, _: i64) -> Result<NoDuplicateKeys, E> {
        Ok(NoDuplicateKeys)
    }

    fn visit_u64<E>(self, _: u64) -> Result<NoDuplicateKeys, E> {
        Ok(NoDuplicateKeys)
    }

    fn visit_f64<E>(self, _: f64) -> Result<NoDuplicateKeys, E> {
        Ok(NoDuplicateKeys)
    }

    fn visit_str<E>(self, _: &str) -> Result<NoDuplicateKeys, E> {
        Ok(NoDuplicateKeys)
    }

    fn visit_unit<E>(self) -> Result<NoDuplicateKeys, E> {
        Ok(NoDuplicateKeys)
    }
}

fn version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}

/// `%XX` decoded (invalid escapes kept as they are), `+` as a space: how query names are compared.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = |b: u8| (b as char).to_digit(16);
                match (bytes.get(i + 1).and_then(|b| hex(*b)), bytes.get(i + 2).and_then(|b| hex(*b))) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(uri: &str, headers: &[(&str, &str)], body: &str) -> CaptureRecord {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        CaptureRecord {
            at: Duration::from_micros(1_764_650_000_123_456),
            method: Method::POST,
            uri: PathAndQuery::try_from(uri).unwrap(),
            version: Version::HTTP_11,
            headers: map,
            body: Bytes::from(body.to_owned()),
            body_len: body.len() as u64,
            body_omitted: false,
            scrubbed: Scrubbed::default(),
            status: Some(StatusCode::CREATED),
            latency: Some(Duration::from_micros(1834)),
            line: LineCache::default(),
        }
    }

    #[test]
    fn default_scrub_drops_credentials_and_names_them() {
        let mut r = record(
            "/orders?email=a%40b.c&page=2",
            &[("authorization", "Bearer s3cret"), ("cookie", "sid=1"), ("accept", "*/*"), ("x-api-key", "k")],
            r#"{"card":"4111","customer":{"email":"a@b.c","name":"Ann"},"items":[1]}"#,
        );
        let scrub = Scrub {
            headers: HeaderPolicy::default(),
            query: vec!["email".into()],
            json: vec![
                JsonPath::parse("$.card").unwrap(),
                JsonPath::parse("$.customer.email").unwrap(),
                JsonPath::parse("$.nothing").unwrap(),
            ],
        };
        r.scrub(&scrub);
        let line = r.to_json_line();
        for secret in ["s3cret", "sid=1", "4111", "a@b.c", "a%40b.c", "\"k\""] {
            assert!(!line.contains(secret), "{secret} leaked: {line}");
        }
        assert_eq!(r.scrubbed.headers, ["authorization", "cookie", "x-api-key"]);
        assert_eq!(r.scrubbed.query, ["email"]);
        assert_eq!(r.scrubbed.json, ["$.card", "$.customer.email"]);
        assert_eq!(r.uri.as_str(), "/orders?email=__synth_scrubbed__&page=2");
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["headers"], json!([["accept", "*/*"]]));
        assert_eq!(v["status"], 201);
        assert_eq!(v["latency_us"], 1834);
        let body: Value = serde_json::from_str(v["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["customer"]["name"], "Ann");
        assert_eq!(body["card"], SCRUBBED);
    }

    #[test]
    fn a_clone_s_line_is_made_from_its_fields_as_they_are_then() {
        let original = record("/", &[("x-email", "ann@example.com")], "secret");
        let first = original.to_json_line();
        let mut copy = original.clone();
        assert_eq!(copy.to_json_line(), first);
        copy.headers.remove("x-email");
        copy.body = Bytes::new();
        let edited = copy.to_json_line();
        assert!(!edited.contains("ann@example.com") && !edited.contains("secret"), "{edited}");
        // The original's line is kept (made once) and still its own.
        assert_eq!(original.to_json_line(), first);
    }

    #[test]
    fn body_len_is_the_recorded_body_s_length_or_the_received_one_when_omitted() {
        let form_type = [("content-type", "application/x-www-form-urlencoded")];
        let mut form = record("/", &form_type, "user=ann&password=hunter2");
        form.scrub(&Scrub { query: vec!["password".into()], ..Scrub::default() });
        assert_eq!(form.body, "user=ann&password=__synth_scrubbed__");
        assert_eq!(form.body_len, form.body.len() as u64);
        // Scrubbed by the query rule, then left out by the JSON rule (not JSON).
        let mut both = record("/", &form_type, "user=ann&password=hunter2");
        both.scrub(&Scrub {
            query: vec!["password".into()],
            json: vec![JsonPath::parse("$.card").unwrap()],
            ..Scrub::default()
        });
        assert!(both.body_omitted && both.body.is_empty());
        assert_eq!(both.body_len, 25, "the length received");
    }

    #[test]
    fn allowlist_keeps_only_listed_headers() {
        let mut r = record("/", &[("accept", "a"), ("x-secret", "s"), ("user-agent", "u")], "");
        r.scrub(&Scrub { headers: HeaderPolicy::KeepOnly(vec![http::header::ACCEPT]), ..Scrub::default() });
        assert_eq!(r.headers.len(), 1);
        assert_eq!(r.scrubbed.headers, ["user-agent", "x-secret"]);
    }

    #[test]
    fn a_body_that_cannot_be_searched_for_fields_is_not_stored() {
        let mut r = record("/", &[], "card=4111");
        r.scrub(&Scrub { json: vec![JsonPath::parse("$.card").unwrap()], ..Scrub::default() });
        assert!(r.body_omitted && r.body.is_empty());
        assert!(!r.to_json_line().contains("4111"));
    }

    #[test]
    fn binary_bodies_and_header_values_are_base64() {
        let mut r = record("/", &[], "");
        r.body = Bytes::from_static(&[0, 159, 146, 150]);
        r.headers.insert("x-bin", http::HeaderValue::from_bytes(&[0xfa, b'a']).unwrap());
        let v: Value = serde_json::from_str(&r.to_json_line()).unwrap();
        assert_eq!(v["body_encoding"], "base64");
        assert_eq!(v["body"], "AJ+Slg==");
        assert_eq!(v["headers"][0][2], "base64");
    }

    #[test]
    fn query_names_are_compared_decoded() {
        assert_eq!(percent_decode("e%6Dail"), "email");
        assert_eq!(percent_decode("a+b"), "a b");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        let mut r = record("/?e%6Dail=x&email=y", &[], "");
        r.scrub(&Scrub { query: vec!["email".into()], ..Scrub::default() });
        assert_eq!(r.uri.as_str(), "/?e%6Dail=__synth_scrubbed__&email=__synth_scrubbed__");
    }

    #[test]
    fn json_scrub_replaces_only_the_matched_values_in_the_original_text() {
        let body = r#"{ "id": 123456789012345678901234567890, "a": {"b": 1, "c": [1.10, 2]},
            "items": [{"card": "4111", "n": 1e2}, {"card": "5500"}], "x": "a\u00e9" }"#;
        let mut r = record("/", &[], body);
        let paths = ["$.a", "$.a.b", "$.items[*].card", "$.missing"];
        r.scrub(&Scrub {
            json: paths.iter().map(|p| JsonPath::parse(p).unwrap()).collect(),
            ..Scrub::default()
        });
        let out = std::str::from_utf8(&r.body).unwrap();
        assert_eq!(
            out,
            r#"{ "id": 123456789012345678901234567890, "a": "__synth_scrubbed__",
            "items": [{"card": "__synth_scrubbed__", "n": 1e2}, {"card": "__synth_scrubbed__"}], "x": "a\u00e9" }"#
        );
        assert_eq!(r.scrubbed.json, ["$.a", "$.a.b", "$.items[*].card"]);
        serde_json::from_str::<Value>(out).unwrap();

        let mut dup = record("/", &[], r#"{"card": "4111", "card": "x"}"#);
        dup.scrub(&Scrub { json: vec![JsonPath::parse("$.card").unwrap()], ..Scrub::default() });
        assert!(dup.body_omitted && dup.body.is_empty());
    }
}
