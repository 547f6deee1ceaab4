//! Compares a real answer with a dark one: the status, chosen headers, and the body (JSON
//! structurally, with ignored paths; anything else byte for byte).
//!
//! The comparison is bounded: it reports at most `max` [`Difference`]s, builds a path string
//! only where it finds a difference, and its time and memory grow linearly with the bodies.
//!
//! Numbers are equal when they are numerically equal (`1`, `1.0` and `1e0`). Integers in the
//! 64-bit range (`i64` and `u64`) compare exactly, also against floats, so `18446744073709551615`
//! and `18446744073709551614` differ. Integers beyond the 64-bit range are read by `serde_json`
//! as the nearest `f64` before this module sees them, and compare as such.
//!
//! # Example
//!
//! ```
//! use http::{HeaderMap, StatusCode};
//! use synth_tower::compare::{Answer, CompareSpec, JsonPath, compare};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let spec = CompareSpec {
//!     ignore: vec![JsonPath::parse("$.generated_at")?],
//!     ..CompareSpec::default()
//! };
//! let headers = HeaderMap::new();
//! let real = Answer {
//!     status: StatusCode::OK,
//!     headers: &headers,
//!     body: br#"{"total": 10, "generated_at": 1}"#,
//! };
//! let dark = Answer { body: br#"{"total": 1e1, "generated_at": 2}"#, ..real };
//! assert!(compare(&spec, real, dark, 10).is_match());
//!
//! let dark = Answer { body: br#"{"total": 11, "generated_at": 2}"#, ..real };
//! let found = compare(&spec, real, dark, 10);
//! assert_eq!(found.differences.len(), 1);
//! assert_eq!(found.differences[0].at, "$.total");
//! assert_eq!((found.differences[0].real.as_str(), found.differences[0].dark.as_str()), ("10", "11"));
//! # Ok(()) }
//! ```

use std::fmt::{self, Write as _};
use std::io;
use std::ops::Range;
use std::str::FromStr;

use http::{HeaderMap, HeaderName, StatusCode, header::GetAll};
use serde_json::{Number, Value};

/// The most characters a [`Difference`]'s `real` or `dark` text holds (a longer one is cut and
/// ends in `…`).
pub const MAX_VALUE_CHARS: usize = 200;

/// The deepest nesting the structural walk descends into. `serde_json` refuses deeper input
/// already (its recursion limit is 128), so this only guards the stack should that change: below
/// it, a differing subtree is reported as one difference.
const MAX_DEPTH: usize = 128;

/// What [`JsonPath::parse`] accepts, quoted in every error.
const ACCEPTED: &str = "a JSON path is `$` followed by any of `.name`, `['name']`, `[\"name\"]`, \
                        `[N]`, `[*]` or `.*`";

/// A JSON path naming values the comparison ignores, e.g. `$.generated_at`.
///
/// Grammar: `$` then any of
/// - `.name`, where the name is an ASCII letter or `_` followed by ASCII letters, digits, `_`
///   or `-`;
/// - `['any name']` or `["any name"]`, with `\'`, `\"` and `\\` as the only escapes (every
///   other character stands for itself);
/// - `[N]`, an array index in decimal without sign or leading zero (`[0]`, `[12]`, not `[01]`);
/// - `[*]` or `.*`, any key or any index.
///
/// Nothing else: no filters, no slices, no recursive descent (`..`). `$` alone names the whole
/// body. A name matches object keys only and an index array elements only.
///
/// [`Display`](fmt::Display) writes the canonical form (`.name` where the grammar allows it,
/// otherwise `['…']`; wildcards as `[*]`), which parses back to the same path.
///
/// # Example
///
/// ```
/// use synth_tower::compare::JsonPath;
///
/// let path: JsonPath = r#"$["items"].*['unit price']"#.parse().unwrap();
/// assert_eq!(path.to_string(), "$.items[*]['unit price']");
/// assert_eq!(path.to_string().parse::<JsonPath>().unwrap(), path);
/// assert!(JsonPath::parse("$..price").is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct JsonPath {
    segments: Vec<Segment>,
}

/// One step of a [`JsonPath`] pattern.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Segment {
    Key(Box<str>),
    Index(usize),
    Any,
}

/// One step of a concrete place in a JSON document.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

impl Segment {
    fn matches(&self, step: Step<'_>) -> bool {
        match (self, step) {
            (Segment::Any, _) => true,
            (Segment::Key(key), Step::Key(at)) => **key == *at,
            (Segment::Index(index), Step::Index(at)) => *index == at,
            _ => false,
        }
    }
}

/// Why a text is not a [`JsonPath`]; each says where (a byte offset into the text).
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JsonPathError {
    /// The text does not start with `$`.
    #[error("a JSON path must start with `$` (byte {offset}); {ACCEPTED}")]
    MissingRoot {
        /// Byte offset of what stands where `$` should.
        offset: usize,
    },
    /// `..` (recursive descent) is not supported.
    #[error("recursive descent `..` at byte {offset} is not supported; {ACCEPTED}")]
    RecursiveDescent {
        /// Byte offset of the first `.`.
        offset: usize,
    },
    /// A `.` is not followed by a name or `*`.
    #[error(
        "expected a name (an ASCII letter or `_`, then letters, digits, `_` or `-`) or `*` at byte \
         {offset}; quote other names as `['name']`; {ACCEPTED}"
    )]
    ExpectedName {
        /// Byte offset just after the `.`.
        offset: usize,
    },
    /// A `[` is never closed.
    #[error("the `[` at byte {offset} is not closed; {ACCEPTED}")]
    UnclosedBracket {
        /// Byte offset of the `[`.
        offset: usize,
    },
    /// A quoted name is never closed.
    #[error("the quoted name starting at byte {offset} is not closed; {ACCEPTED}")]
    UnterminatedName {
        /// Byte offset of the opening quote.
        offset: usize,
    },
    /// A backslash in a quoted name is followed by something other than `'`, `"` or `\`.
    #[error("invalid escape at byte {offset}: only `\\'`, `\\\"` and `\\\\` are accepted in a quoted name")]
    InvalidEscape {
        /// Byte offset of the backslash.
        offset: usize,
    },
    /// An index has a sign.
    #[error("negative index at byte {offset}: indices count from the start, `[0]` is the first; {ACCEPTED}")]
    NegativeIndex {
        /// Byte offset of the `-`.
        offset: usize,
    },
    /// An index has a leading zero (so that every path has one spelling).
    #[error("index with a leading zero at byte {offset}: write `[1]`, not `[01]`; {ACCEPTED}")]
    LeadingZero {
        /// Byte offset of the index.
        offset: usize,
    },
    /// An index does not fit in `usize`.
    #[error("index at byte {offset} is too large; {ACCEPTED}")]
    IndexTooLarge {
        /// Byte offset of the index.
        offset: usize,
    },
    /// A filter expression (`[?(…)]`) is not supported.
    #[error("filter expressions (`[?(…)]`, byte {offset}) are not supported; {ACCEPTED}")]
    Filter {
        /// Byte offset of the `?`.
        offset: usize,
    },
    /// A character the grammar does not allow where it stands.
    #[error("unexpected {found:?} at byte {offset}; {ACCEPTED}")]
    UnexpectedChar {
        /// Byte offset of the character.
        offset: usize,
        /// The character.
        found: char,
    },
}

fn is_name_start(byte: u8) -> bool {
    byte.is_ascii_alphabetic() || byte == b'_'
}

fn is_name_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-'
}

/// Whether `key` can be written as `.key`.
fn is_dot_name(key: &str) -> bool {
    let bytes = key.as_bytes();
    bytes.first().is_some_and(|&b| is_name_start(b)) && bytes.iter().all(|&b| is_name_byte(b))
}

fn unexpected(text: &str, offset: usize) -> JsonPathError {
    match text.get(offset..).and_then(|rest| rest.chars().next()) {
        Some(found) => JsonPathError::UnexpectedChar { offset, found },
        // Offsets handed here always point at a character; keep a sensible error regardless.
        None => JsonPathError::ExpectedName { offset },
    }
}

impl JsonPath {
    /// Parses a path in the grammar described on [`JsonPath`].
    ///
    /// # Errors
    ///
    /// A [`JsonPathError`] naming what was wrong and at which byte.
    pub fn parse(text: &str) -> Result<JsonPath, JsonPathError> {
        let bytes = text.as_bytes();
        if bytes.first() != Some(&b'$') {
            return Err(JsonPathError::MissingRoot { offset: 0 });
        }
        let mut segments = Vec::new();
        let mut at = 1;
        while let Some(&byte) = bytes.get(at) {
            match byte {
                b'.' => {
                    let after = at + 1;
                    match bytes.get(after) {
                        Some(b'.') => return Err(JsonPathError::RecursiveDescent { offset: at }),
                        Some(b'*') => {
                            segments.push(Segment::Any);
                            at = after + 1;
                        }
                        Some(&b) if is_name_start(b) => {
                            let len = bytes[after..].iter().take_while(|&&b| is_name_byte(b)).count();
                            let end = after + len;
                            let name =
                                text.get(after..end).ok_or(JsonPathError::ExpectedName { offset: after })?;
                            segments.push(Segment::Key(name.into()));
                            at = end;
                        }
                        _ => return Err(JsonPathError::ExpectedName { offset: after }),
                    }
                }
                b'[' => {
                    let (segment, next) = parse_bracket(text, at)?;
                    segments.push(segment);
                    at = next;
                }
                _ => return Err(unexpected(text, at)),
            }
        }
        Ok(JsonPath { segments })
    }

    /// Whether this pattern matches the concrete path `at` exactly (not a path under it).
    fn matches(&self, at: &[Step<'_>]) -> bool {
        self.segments.len() == at.len() && self.segments.iter().zip(at).all(|(seg, &step)| seg.matches(step))
    }

    /// Where, in `text` (JSON), the values this pattern matches are: byte ranges of their raw
    /// text, so that a caller can replace them and keep every other byte as it was.
    #[cfg(feature = "capture")]
    pub(crate) fn value_spans(&self, text: &str) -> Result<Vec<std::ops::Range<usize>>, serde_json::Error> {
        let raw: &serde_json::value::RawValue = serde_json::from_str(text)?;
        let mut out = Vec::new();
        raw_spans(text, raw, &self.segments, &mut out)?;
        Ok(out)
    }
}

#[cfg(feature = "capture")]
fn raw_spans(
    base: &str,
    raw: &serde_json::value::RawValue,
    segments: &[Segment],
    out: &mut Vec<std::ops::Range<usize>>,
) -> Result<(), serde_json::Error> {
    use serde_json::value::RawValue;
    let text = raw.get();
    let Some((first, rest)) = segments.split_first() else {
        // `text` is a slice of `base`: its offset is where it starts.
        let start = (text.as_ptr() as usize).saturating_sub(base.as_ptr() as usize);
        out.push(start..start + text.len());
        return Ok(());
    };
    match text.as_bytes().first() {
        Some(b'{') => {
            let entries: RawEntries<'_> = serde_json::from_str(text)?;
            for (key, value) in entries.0 {
                if first.matches(Step::Key(&key)) {
                    raw_spans(base, value, rest, out)?;
                }
            }
        }
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(text)?;
            for (i, value) in items.into_iter().enumerate() {
                if first.matches(Step::Index(i)) {
                    raw_spans(base, value, rest, out)?;
                }
            }
        }
        _ => {}
    }
    Ok(())
}

/// An object's members in order, each value as its raw text.
#[cfg(feature = "capture")]
struct RawEntries<'a>(Vec<(String, &'a serde_json::value::RawValue)>);

#[cfg(feature = "capture")]
impl<'de: 'a, 'a> serde::Deserialize<'de> for RawEntries<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = RawEntries<'a>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RawEntries<'a>, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    entries.push((key, map.next_value::<&'a serde_json::value::RawValue>()?));
                }
                Ok(RawEntries(entries))
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// Parses `[…]` starting at the `[` at `open`; returns the segment and the offset after `]`.
fn parse_bracket(text: &str, open: usize) -> Result<(Segment, usize), JsonPathError> {
    let bytes = text.as_bytes();
    let inner = open + 1;
    let (segment, close) = match bytes.get(inner) {
        None => return Err(JsonPathError::UnclosedBracket { offset: open }),
        Some(b'*') => (Segment::Any, inner + 1),
        Some(&quote @ (b'\'' | b'"')) => {
            let (name, next) = parse_quoted(text, inner, quote)?;
            (Segment::Key(name.into()), next)
        }
        Some(b'0'..=b'9') => {
            let len = bytes[inner..].iter().take_while(|b| b.is_ascii_digit()).count();
            let digits =
                text.get(inner..inner + len).ok_or(JsonPathError::UnclosedBracket { offset: open })?;
            if len > 1 && digits.starts_with('0') {
                return Err(JsonPathError::LeadingZero { offset: inner });
            }
            let index =
                digits.parse::<usize>().map_err(|_| JsonPathError::IndexTooLarge { offset: inner })?;
            (Segment::Index(index), inner + len)
        }
        Some(b'-') => return Err(JsonPathError::NegativeIndex { offset: inner }),
        Some(b'?') => return Err(JsonPathError::Filter { offset: inner }),
        Some(_) => return Err(unexpected(text, inner)),
    };
    match bytes.get(close) {
        Some(b']') => Ok((segment, close + 1)),
        None => Err(JsonPathError::UnclosedBracket { offset: open }),
        Some(_) => Err(unexpected(text, close)),
    }
}

/// Parses a quoted name whose opening `quote` is at `start`; returns it and the offset after the
/// closing quote.
fn parse_quoted(text: &str, start: usize, quote: u8) -> Result<(String, usize), JsonPathError> {
    let body = text.get(start + 1..).ok_or(JsonPathError::UnterminatedName { offset: start })?;
    let mut name = String::new();
    let mut chars = body.char_indices();
    while let Some((offset, c)) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some((_, escaped @ ('\'' | '"' | '\\'))) => name.push(escaped),
                Some(_) => return Err(JsonPathError::InvalidEscape { offset: start + 1 + offset }),
                None => return Err(JsonPathError::UnterminatedName { offset: start }),
            }
        } else if c == char::from(quote) {
            return Ok((name, start + 1 + offset + 1));
        } else {
            name.push(c);
        }
    }
    Err(JsonPathError::UnterminatedName { offset: start })
}

impl FromStr for JsonPath {
    type Err = JsonPathError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        JsonPath::parse(text)
    }
}

impl fmt::Display for JsonPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_char('$')?;
        for segment in &self.segments {
            match segment {
                Segment::Key(key) => write_key(f, key)?,
                Segment::Index(index) => write!(f, "[{index}]")?,
                Segment::Any => f.write_str("[*]")?,
            }
        }
        Ok(())
    }
}

/// Writes a key step in canonical form: `.key` where the grammar allows it, else `['key']`.
fn write_key(out: &mut impl fmt::Write, key: &str) -> fmt::Result {
    if is_dot_name(key) {
        out.write_char('.')?;
        return out.write_str(key);
    }
    out.write_str("['")?;
    for c in key.chars() {
        if c == '\'' || c == '\\' {
            out.write_char('\\')?;
        }
        out.write_char(c)?;
    }
    out.write_str("']")
}

/// The canonical text of a concrete path, e.g. `$.items[3].price`.
fn path_text(path: &[Step<'_>]) -> String {
    let mut out = String::from("$");
    for step in path {
        // Writing into a String cannot fail.
        let _ = match step {
            Step::Key(key) => write_key(&mut out, key),
            Step::Index(index) => write!(out, "[{index}]"),
        };
    }
    out
}

/// One difference between the real and the dark answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Difference {
    /// Where: `status`, `header content-type`, `body` (not JSON, or JSON on one side only), or a
    /// JSON path in canonical form (`$.items[3].price`, `$['a b']`).
    pub at: String,
    /// The real value: compact JSON for JSON values (`(absent)` when missing), the status code,
    /// the header value (lossy; several joined with `, `; `(absent)` when missing), or a short
    /// description for bodies (`1234 bytes`, followed by the text when both bodies are short
    /// UTF-8); at most [`MAX_VALUE_CHARS`] characters (longer values are cut at a character
    /// boundary and end in `…`).
    pub real: String,
    /// The same for the dark answer.
    pub dark: String,
}

/// What to compare.
#[derive(Clone, Debug, Default)]
pub struct CompareSpec {
    /// Response headers to compare (by default none; e.g. `content-type`). A header absent on
    /// both sides matches; a header with several values matches when the values are the same in
    /// the same order.
    pub headers: Vec<HeaderName>,
    /// JSON paths whose values never count (their whole subtree). `$` ignores the whole body,
    /// but not the status or the headers.
    pub ignore: Vec<JsonPath>,
}

/// One answer: status, headers and the (complete) body bytes.
#[derive(Clone, Copy, Debug)]
pub struct Answer<'a> {
    /// The status code.
    pub status: StatusCode,
    /// The response headers.
    pub headers: &'a HeaderMap,
    /// The whole body.
    pub body: &'a [u8],
}

/// The outcome of [`compare`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Comparison {
    /// The differences found, at most the `max` asked for, in a stable order.
    pub differences: Vec<Difference>,
    /// Whether there were more differences than `max`.
    pub truncated: bool,
}

impl Comparison {
    /// Whether the answers match: no difference found (none reported and none cut).
    pub fn is_match(&self) -> bool {
        self.differences.is_empty() && !self.truncated
    }
}

/// Compares `real` with `dark`; returns at most `max` differences, in a stable order (status,
/// headers in the order of `spec.headers`, then the body in document order with object keys
/// sorted), plus whether more were cut.
///
/// Bodies that both parse as JSON are compared structurally: objects by key, arrays by index,
/// numbers by numeric value, a type change as one difference at its path; differences at or
/// under a path in `spec.ignore` do not count. Other bodies (an empty body is not JSON) compare
/// byte for byte as one `body` difference, as does JSON on one side only.
///
/// # Example
///
/// ```
/// use http::{HeaderMap, StatusCode, header::CONTENT_TYPE};
/// use synth_tower::compare::{Answer, CompareSpec, compare};
///
/// let spec = CompareSpec { headers: vec![CONTENT_TYPE], ..CompareSpec::default() };
/// let (mut json, text) = (HeaderMap::new(), HeaderMap::new());
/// json.insert(CONTENT_TYPE, "application/json".parse().unwrap());
/// let real = Answer { status: StatusCode::OK, headers: &json, body: b"[1, 2]" };
/// let dark = Answer { status: StatusCode::BAD_GATEWAY, headers: &text, body: b"[1]" };
///
/// let found = compare(&spec, real, dark, 2);
/// let at: Vec<&str> = found.differences.iter().map(|d| d.at.as_str()).collect();
/// assert_eq!(at, ["status", "header content-type"]);
/// assert!(found.truncated); // `$[1]` did not fit
/// assert_eq!(found.differences[1].dark, "(absent)");
/// ```
pub fn compare(spec: &CompareSpec, real: Answer<'_>, dark: Answer<'_>, max: usize) -> Comparison {
    let mut out = Collector { max, found: Comparison::default() };
    // Every step returns `Stop` once `max` is reached and exceeded: nothing after it is looked at.
    let _ = compare_all(spec, real, dark, &mut out);
    out.found
}

fn compare_all(spec: &CompareSpec, real: Answer<'_>, dark: Answer<'_>, out: &mut Collector) -> Flow {
    if real.status != dark.status {
        out.push(|| Difference {
            at: "status".to_owned(),
            real: real.status.as_u16().to_string(),
            dark: dark.status.as_u16().to_string(),
        })?;
    }
    for (position, name) in spec.headers.iter().enumerate() {
        if spec.headers[..position].contains(name) {
            continue;
        }
        let (real_values, dark_values) = (real.headers.get_all(name), dark.headers.get_all(name));
        if real_values.iter().ne(dark_values.iter()) {
            out.push(|| Difference {
                at: format!("header {name}"),
                real: header_text(real_values),
                dark: header_text(dark_values),
            })?;
        }
    }
    if spec.ignore.iter().any(|path| path.matches(&[])) {
        return Flow::Continue(());
    }
    match (parse_json(real.body), parse_json(dark.body)) {
        (Some(real_json), Some(dark_json)) => {
            let mut walk =
                Walk { ignore: &spec.ignore, path: Vec::new(), live: (0..spec.ignore.len()).collect(), out };
            let all = 0..walk.live.len();
            walk.values(&real_json, &dark_json, all)
        }
        (None, None) if real.body == dark.body => Flow::Continue(()),
        _ => out.push(|| {
            let (real, dark) = body_texts(real.body, dark.body);
            Difference { at: "body".to_owned(), real, dark }
        }),
    }
}

fn parse_json(body: &[u8]) -> Option<Value> {
    serde_json::from_slice(body).ok()
}

/// `Break` once more differences were found than fit.
type Flow = std::ops::ControlFlow<()>;

struct Collector {
    max: usize,
    found: Comparison,
}

impl Collector {
    /// Records a difference (built only if it fits), or notes the cut and stops the walk.
    fn push(&mut self, difference: impl FnOnce() -> Difference) -> Flow {
        if self.found.differences.len() >= self.max {
            self.found.truncated = true;
            return Flow::Break(());
        }
        self.found.differences.push(difference());
        Flow::Continue(())
    }
}

/// The structural comparison of two JSON documents.
struct Walk<'s, 'v, 'o> {
    ignore: &'s [JsonPath],
    /// Where the walk stands; turned into text only for a difference.
    path: Vec<Step<'v>>,
    /// A stack of indices into `ignore`: the patterns whose first `path.len()` segments match
    /// `path` ("live"), one contiguous range per level. Following only those keeps ignoring
    /// linear in the document size instead of re-matching every pattern at every node.
    live: Vec<usize>,
    out: &'o mut Collector,
}

impl<'v> Walk<'_, 'v, '_> {
    /// Compares `real` with `dark` at `self.path`, whose live patterns are `self.live[live]`.
    fn values(&mut self, real: &'v Value, dark: &'v Value, live: Range<usize>) -> Flow {
        match (real, dark) {
            (Value::Object(real_map), Value::Object(dark_map)) if self.path.len() < MAX_DEPTH => {
                // Sorted explicitly: with serde_json's `preserve_order` feature maps keep
                // document order, and the report order must not depend on a feature.
                let mut real_keys: Vec<&'v str> = real_map.keys().map(String::as_str).collect();
                let mut dark_keys: Vec<&'v str> = dark_map.keys().map(String::as_str).collect();
                real_keys.sort_unstable();
                dark_keys.sort_unstable();
                let (mut r, mut d) = (real_keys.into_iter().peekable(), dark_keys.into_iter().peekable());
                loop {
                    let key = match (r.peek(), d.peek()) {
                        (Some(&a), Some(&b)) if a == b => {
                            r.next();
                            d.next();
                            a
                        }
                        (Some(&a), Some(&b)) if a < b => {
                            r.next();
                            a
                        }
                        (_, Some(&b)) => {
                            d.next();
                            b
                        }
                        (Some(&a), None) => {
                            r.next();
                            a
                        }
                        (None, None) => break,
                    };
                    self.child(Step::Key(key), real_map.get(key), dark_map.get(key), live.clone())?;
                }
                Flow::Continue(())
            }
            (Value::Array(real_items), Value::Array(dark_items)) if self.path.len() < MAX_DEPTH => {
                for index in 0..real_items.len().max(dark_items.len()) {
                    self.child(
                        Step::Index(index),
                        real_items.get(index),
                        dark_items.get(index),
                        live.clone(),
                    )?;
                }
                Flow::Continue(())
            }
            _ if same_value(real, dark) => Flow::Continue(()),
            _ => self.difference(Some(real), Some(dark)),
        }
    }

    /// Steps into `step` unless a pattern ignores it, compares there, and steps back.
    fn child(
        &mut self,
        step: Step<'v>,
        real: Option<&'v Value>,
        dark: Option<&'v Value>,
        live: Range<usize>,
    ) -> Flow {
        let depth = self.path.len();
        let start = self.live.len();
        for slot in live {
            let Some(&pattern) = self.live.get(slot) else { continue };
            let Some(segments) = self.ignore.get(pattern).map(|p| &p.segments) else { continue };
            if segments.get(depth).is_some_and(|segment| segment.matches(step)) {
                if segments.len() == depth + 1 {
                    self.live.truncate(start);
                    return Flow::Continue(());
                }
                self.live.push(pattern);
            }
        }
        let child_live = start..self.live.len();
        self.path.push(step);
        let flow = match (real, dark) {
            (Some(real), Some(dark)) => self.values(real, dark, child_live),
            (real, dark) => self.difference(real, dark),
        };
        self.path.pop();
        self.live.truncate(start);
        flow
    }

    fn difference(&mut self, real: Option<&Value>, dark: Option<&Value>) -> Flow {
        let path = &self.path;
        self.out.push(|| Difference { at: path_text(path), real: json_text(real), dark: json_text(dark) })
    }
}

/// Equality without descending (the walk descends itself): numbers by value, containers (met
/// only beyond [`MAX_DEPTH`]) by serde_json's own equality.
fn same_value(real: &Value, dark: &Value) -> bool {
    match (real, dark) {
        (Value::Number(a), Value::Number(b)) => same_number(a, b),
        _ => real == dark,
    }
}

fn as_integer(number: &Number) -> Option<i128> {
    number.as_i64().map(i128::from).or_else(|| number.as_u64().map(i128::from))
}

/// Numeric equality that never rounds a 64-bit integer through `f64`.
fn same_number(a: &Number, b: &Number) -> bool {
    match (as_integer(a), as_integer(b)) {
        (Some(a), Some(b)) => a == b,
        (Some(int), None) => float_equals_integer(b.as_f64(), int),
        (None, Some(int)) => float_equals_integer(a.as_f64(), int),
        (None, None) => a.as_f64() == b.as_f64(),
    }
}

fn float_equals_integer(float: Option<f64>, int: i128) -> bool {
    // An integral finite f64 converts to i128 exactly when it is in range, and saturates
    // otherwise, to values no 64-bit integer has.
    float.is_some_and(|f| f.is_finite() && f.fract() == 0.0 && f as i128 == int)
}

/// Compact JSON of `value`, `(absent)` for none, cut at [`MAX_VALUE_CHARS`] without first
/// serialising a large subtree whole.
fn json_text(value: Option<&Value>) -> String {
    let Some(value) = value else { return "(absent)".to_owned() };
    let mut sink = CappedSink { bytes: Vec::new(), full: false };
    // The only error is the sink's own "full".
    let _ = serde_json::to_writer(&mut sink, value);
    let text = String::from_utf8_lossy(&sink.bytes);
    cut(&text, sink.full)
}

/// Enough bytes for more than [`MAX_VALUE_CHARS`] characters of up to four bytes each.
const SINK_CAP: usize = 4 * (MAX_VALUE_CHARS + 1);

struct CappedSink {
    bytes: Vec<u8>,
    full: bool,
}

impl io::Write for CappedSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = SINK_CAP.saturating_sub(self.bytes.len());
        if data.len() > room {
            self.bytes.extend_from_slice(&data[..room]);
            self.full = true;
            return Err(io::Error::other("enough for a difference's text"));
        }
        self.bytes.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// `text` if it has at most [`MAX_VALUE_CHARS`] characters (and is `complete`), otherwise its
/// first `MAX_VALUE_CHARS - 1` characters and `…`.
fn cut(text: &str, complete_text_is_longer: bool) -> String {
    if !complete_text_is_longer && text.chars().nth(MAX_VALUE_CHARS).is_none() {
        return text.to_owned();
    }
    let mut short: String = text.chars().take(MAX_VALUE_CHARS - 1).collect();
    short.push('…');
    short
}

fn header_text(values: GetAll<'_, http::HeaderValue>) -> String {
    let mut text = String::new();
    for (n, value) in values.iter().enumerate() {
        if n > 0 {
            text.push_str(", ");
        }
        text.push_str(&String::from_utf8_lossy(value.as_bytes()));
        if text.len() > SINK_CAP {
            return cut(&text, true);
        }
    }
    if text.is_empty() && values.iter().next().is_none() {
        return "(absent)".to_owned();
    }
    cut(&text, false)
}

/// `N bytes` for each body, followed by the text when both are UTF-8 of at most
/// [`MAX_VALUE_CHARS`] characters.
fn body_texts(real: &[u8], dark: &[u8]) -> (String, String) {
    fn short_text(body: &[u8]) -> Option<&str> {
        if body.len() > 4 * MAX_VALUE_CHARS {
            return None;
        }
        std::str::from_utf8(body).ok().filter(|text| text.chars().nth(MAX_VALUE_CHARS).is_none())
    }
    match (short_text(real), short_text(dark)) {
        (Some(real_text), Some(dark_text)) => (
            cut(&format!("{} bytes: {real_text:?}", real.len()), false),
            cut(&format!("{} bytes: {dark_text:?}", dark.len()), false),
        ),
        _ => (format!("{} bytes", real.len()), format!("{} bytes", dark.len())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::{CONTENT_TYPE, HeaderValue};
    use proptest::prelude::*;

    fn answer<'a>(headers: &'a HeaderMap, body: &'a [u8]) -> Answer<'a> {
        Answer { status: StatusCode::OK, headers, body }
    }

    /// The differences between two bodies, with the given ignore patterns, as (at, real, dark).
    fn diff_bodies(ignore: &[&str], real: &str, dark: &str) -> Vec<(String, String, String)> {
        let spec = CompareSpec {
            ignore: ignore.iter().map(|p| JsonPath::parse(p).unwrap()).collect(),
            ..CompareSpec::default()
        };
        let headers = HeaderMap::new();
        let found = compare(&spec, answer(&headers, real.as_bytes()), answer(&headers, dark.as_bytes()), 100);
        assert!(!found.truncated);
        found.differences.into_iter().map(|d| (d.at, d.real, d.dark)).collect()
    }

    fn d(at: &str, real: &str, dark: &str) -> (String, String, String) {
        (at.to_owned(), real.to_owned(), dark.to_owned())
    }

    #[test]
    fn numbers_are_equal_by_value() {
        assert_eq!(diff_bodies(&[], "[1, 1.0, 1e0, 0, -0, 100]", "[1e0, 1, 1.0, 0.0, 0, 1e2]"), []);
        assert_eq!(diff_bodies(&[], "[1]", "[1.5]"), [d("$[0]", "1", "1.5")]);
    }

    #[test]
    fn large_integers_compare_exactly() {
        let max = u64::MAX;
        let below = u64::MAX - 1;
        assert_eq!(diff_bodies(&[], &format!("{max}"), &format!("{max}")), []);
        assert_eq!(
            diff_bodies(&[], &format!("[{max}]"), &format!("[{below}]")),
            [d("$[0]", &max.to_string(), &below.to_string())]
        );
        // An integer against a float: no rounding of the integer through f64.
        assert_eq!(diff_bodies(&[], "9007199254740993", "9007199254740992.0").len(), 1);
        assert_eq!(diff_bodies(&[], "9007199254740992", "9007199254740992.0"), []);
        assert_eq!(diff_bodies(&[], &format!("{max}"), "18446744073709551615.0").len(), 1);
        assert_eq!(diff_bodies(&[], &i64::MIN.to_string(), "-9223372036854775808.0"), []);
    }

    #[test]
    fn a_type_change_is_one_difference_at_its_path() {
        assert_eq!(
            diff_bodies(&[], r#"{"a": {"b": [1, 2], "c": 3}}"#, r#"{"a": [1, 2]}"#),
            [d("$.a", r#"{"b":[1,2],"c":3}"#, "[1,2]")]
        );
        assert_eq!(diff_bodies(&[], r#"{"a": "1"}"#, r#"{"a": 1}"#), [d("$.a", r#""1""#, "1")]);
        assert_eq!(diff_bodies(&[], r#"[null]"#, r#"[false]"#), [d("$[0]", "null", "false")]);
    }

    #[test]
    fn keys_on_one_side_are_absent_on_the_other_in_sorted_order() {
        assert_eq!(
            diff_bodies(&[], r#"{"z": 1, "b": 2, "same": 0}"#, r#"{"same": 0, "a": true, "y": 1}"#),
            [
                d("$.a", "(absent)", "true"),
                d("$.b", "2", "(absent)"),
                d("$.y", "(absent)", "1"),
                d("$.z", "1", "(absent)")
            ]
        );
    }

    #[test]
    fn arrays_compare_by_index_and_extra_elements_are_absent() {
        assert_eq!(
            diff_bodies(&[], "[1, 2, 3]", "[1, 5]"),
            [d("$[1]", "2", "5"), d("$[2]", "3", "(absent)")]
        );
        assert_eq!(diff_bodies(&[], "[]", r#"[{"x": 1}]"#), [d("$[0]", "(absent)", r#"{"x":1}"#)]);
    }

    #[test]
    fn paths_are_written_in_canonical_form() {
        assert_eq!(
            diff_bodies(
                &[],
                r#"{"items": [0, 0, 0, {"price": 1}]}"#,
                r#"{"items": [0, 0, 0, {"price": 2}]}"#
            )[0]
            .0,
            "$.items[3].price"
        );
        assert_eq!(diff_bodies(&[], r#"{"a b": 1}"#, r#"{"a b": 2}"#)[0].0, "$['a b']");
        assert_eq!(diff_bodies(&[], r#"{"it's\\": 1}"#, r#"{"it's\\": 2}"#)[0].0, r"$['it\'s\\']");
        assert_eq!(diff_bodies(&[], r#"{"*": 1}"#, r#"{"*": 2}"#)[0].0, "$['*']");
        assert_eq!(diff_bodies(&[], r#"{"": 1}"#, r#"{"": 2}"#)[0].0, "$['']");
        assert_eq!(diff_bodies(&[], "1", "2")[0].0, "$");
    }

    #[test]
    fn ignored_paths_and_their_subtrees_do_not_count() {
        let real = r#"{"at": 1, "items": [{"id": 1, "ts": 5}, {"id": 2, "ts": 6}], "meta": {"a": 1, "b": 2}, "x y": 1}"#;
        let dark = r#"{"at": 2, "items": [{"id": 1, "ts": 7}, {"id": 2, "ts": 8}], "meta": {"a": 3, "b": 4}, "x y": 2}"#;
        assert_eq!(diff_bodies(&[], real, dark).len(), 6);
        assert_eq!(diff_bodies(&["$.at", "$.items[*].ts", "$.meta", "$['x y']"], real, dark), []);
        assert_eq!(diff_bodies(&["$.at", "$.items.*.ts", "$.meta.*", r#"$["x y"]"#], real, dark), []);
        assert_eq!(diff_bodies(&["$"], real, dark), []);
        // An index pattern ignores that element only; a key pattern does not match indices.
        assert_eq!(
            diff_bodies(&["$.at", "$.items[0]", "$.meta", "$['x y']"], real, dark),
            [d("$.items[1].ts", "6", "8")]
        );
        assert_eq!(diff_bodies(&["$['0']"], "[1]", "[2]"), [d("$[0]", "1", "2")]);
        // A key on one side only is ignored as well.
        assert_eq!(diff_bodies(&["$.extra"], r#"{"extra": 1}"#, "{}"), []);
    }

    #[test]
    fn the_root_pattern_ignores_the_body_but_not_status_or_headers() {
        let spec = CompareSpec { headers: vec![CONTENT_TYPE], ignore: vec![JsonPath::parse("$").unwrap()] };
        let (real_headers, mut dark_headers) = (HeaderMap::new(), HeaderMap::new());
        assert!(
            compare(&spec, answer(&real_headers, b"not json"), answer(&real_headers, b"{}"), 10).is_match()
        );
        dark_headers.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        let dark = Answer { status: StatusCode::CREATED, headers: &dark_headers, body: b"2" };
        let found = compare(&spec, answer(&real_headers, b"1"), dark, 10);
        let at: Vec<&str> = found.differences.iter().map(|d| d.at.as_str()).collect();
        assert_eq!(at, ["status", "header content-type"]);
        assert_eq!((found.differences[0].real.as_str(), found.differences[0].dark.as_str()), ("200", "201"));
    }

    #[test]
    fn bodies_that_are_not_json_compare_byte_for_byte() {
        assert_eq!(diff_bodies(&[], "", ""), []);
        assert_eq!(diff_bodies(&[], "hello", "hello"), []);
        assert_eq!(
            diff_bodies(&[], "hello", "help"),
            [d("body", r#"5 bytes: "hello""#, r#"4 bytes: "help""#)]
        );
        assert_eq!(diff_bodies(&[], "", "x"), [d("body", r#"0 bytes: """#, r#"1 bytes: "x""#)]);
        let long = "a".repeat(300);
        assert_eq!(diff_bodies(&[], &long, "b"), [d("body", "300 bytes", "1 bytes")]);
        let headers = HeaderMap::new();
        let found =
            compare(&CompareSpec::default(), answer(&headers, &[0xff, 0]), answer(&headers, b"ok"), 10);
        assert_eq!(
            found.differences,
            [Difference { at: "body".into(), real: "2 bytes".into(), dark: "2 bytes".into() }]
        );
    }

    #[test]
    fn json_on_one_side_only_is_one_body_difference() {
        assert_eq!(
            diff_bodies(&[], r#"{"a": 1}"#, "{a: 1}"),
            [d("body", r#"8 bytes: "{\"a\": 1}""#, r#"6 bytes: "{a: 1}""#)]
        );
        assert_eq!(diff_bodies(&[], "", "{}"), [d("body", r#"0 bytes: """#, r#"2 bytes: "{}""#)]);
        // A path pattern other than `$` does not hide it.
        assert_eq!(diff_bodies(&["$.a", "$.*"], "[]", "oops").len(), 1);
    }

    #[test]
    fn long_values_are_cut_at_a_char_boundary() {
        let long = "é".repeat(500);
        let found = diff_bodies(&[], &format!(r#"["{long}"]"#), "[1]");
        let real = &found[0].1;
        assert_eq!(real.chars().count(), MAX_VALUE_CHARS);
        assert!(real.starts_with("\"éé") && real.ends_with("é…"));
        // Exactly at the limit, nothing is cut.
        let fits = "x".repeat(MAX_VALUE_CHARS - 2);
        assert_eq!(diff_bodies(&[], &format!(r#"["{fits}"]"#), "[1]")[0].1, format!("\"{fits}\""));
        let over = "x".repeat(MAX_VALUE_CHARS - 1);
        assert!(diff_bodies(&[], &format!(r#"["{over}"]"#), "[1]")[0].1.ends_with('…'));
    }

    #[test]
    fn headers_are_compared_in_spec_order() {
        let spec = CompareSpec {
            headers: vec![
                HeaderName::from_static("x-b"),
                CONTENT_TYPE,
                HeaderName::from_static("x-absent"),
                CONTENT_TYPE,
            ],
            ..CompareSpec::default()
        };
        let (mut real, mut dark) = (HeaderMap::new(), HeaderMap::new());
        real.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        dark.insert(CONTENT_TYPE, HeaderValue::from_static("text/html"));
        real.append("x-b", HeaderValue::from_static("1"));
        real.append("x-b", HeaderValue::from_static("2"));
        dark.append("x-b", HeaderValue::from_static("1"));
        dark.insert("x-not-compared", HeaderValue::from_static("x"));
        let found = compare(&spec, answer(&real, b""), answer(&dark, b""), 10);
        assert_eq!(
            found.differences,
            [
                Difference { at: "header x-b".into(), real: "1, 2".into(), dark: "1".into() },
                Difference {
                    at: "header content-type".into(),
                    real: "application/json".into(),
                    dark: "text/html".into()
                },
            ]
        );
        dark.remove(CONTENT_TYPE);
        let found = compare(&spec, answer(&real, b""), answer(&dark, b""), 10);
        assert_eq!(found.differences[1].dark, "(absent)");
        // Same values on both sides match.
        assert!(compare(&spec, answer(&real, b""), answer(&real, b""), 10).is_match());
    }

    #[test]
    fn at_most_max_differences_and_the_cut_is_reported() {
        let headers = HeaderMap::new();
        let spec = CompareSpec::default();
        let (real, dark) = (answer(&headers, b"[1, 2, 3, 4]"), answer(&headers, b"[5, 6, 7, 8]"));
        let found = compare(&spec, real, dark, 2);
        assert!(found.truncated && !found.is_match());
        let at: Vec<&str> = found.differences.iter().map(|d| d.at.as_str()).collect();
        assert_eq!(at, ["$[0]", "$[1]"]);
        let exact = compare(&spec, real, dark, 4);
        assert!(!exact.truncated && exact.differences.len() == 4);
        let none = compare(&spec, real, dark, 0);
        assert!(none.truncated && none.differences.is_empty() && !none.is_match());
        assert!(compare(&spec, real, real, 0).is_match());
    }

    #[test]
    fn the_deepest_json_serde_accepts_is_compared() {
        let depth = (1..200).rev().find(|&n| {
            serde_json::from_str::<Value>(&"[".repeat(n)).is_err() && {
                let text = format!("{}{}", "[".repeat(n), "]".repeat(n));
                serde_json::from_str::<Value>(&text).is_ok()
            }
        });
        let depth = depth.unwrap();
        let real = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        let dark = format!("{}2{}", "[".repeat(depth), "]".repeat(depth));
        let found = diff_bodies(&[], &real, &dark);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, format!("${}", "[0]".repeat(depth)));
        // One level deeper is not JSON to serde_json: compared as bytes.
        let deeper = format!("[{real}]");
        assert_eq!(diff_bodies(&[], &deeper, &deeper), []);
        assert_eq!(diff_bodies(&[], &deeper, &format!("[{dark}]"))[0].0, "body");
    }

    #[test]
    fn paths_parse_and_display_canonically() {
        let cases = [
            ("$", "$"),
            ("$.a.b_c-d", "$.a.b_c-d"),
            ("$['a']", "$.a"),
            (r#"$["a b"]"#, "$['a b']"),
            (r#"$['it\'s']"#, r"$['it\'s']"),
            (r#"$["say \"hi\""]"#, r#"$['say "hi"']"#),
            (r"$['back\\slash']", r"$['back\\slash']"),
            ("$[0][12]", "$[0][12]"),
            ("$.*[*]", "$[*][*]"),
            ("$['*']", "$['*']"),
            ("$['0']", "$['0']"),
            ("$['']", "$['']"),
            ("$['ü']", "$['ü']"),
            ("$['a.b']", "$['a.b']"),
        ];
        for (text, canonical) in cases {
            let path = JsonPath::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(path.to_string(), canonical, "{text}");
            assert_eq!(canonical.parse::<JsonPath>().unwrap(), path, "{text}");
        }
        assert_ne!(JsonPath::parse("$[0]").unwrap(), JsonPath::parse("$['0']").unwrap());
    }

    #[test]
    fn bad_paths_are_refused_with_where_and_what() {
        use JsonPathError::*;
        let cases = [
            ("", MissingRoot { offset: 0 }),
            ("a.b", MissingRoot { offset: 0 }),
            ("$..a", RecursiveDescent { offset: 1 }),
            ("$.", ExpectedName { offset: 2 }),
            ("$.1a", ExpectedName { offset: 2 }),
            ("$.a.", ExpectedName { offset: 4 }),
            ("$[", UnclosedBracket { offset: 1 }),
            ("$[0", UnclosedBracket { offset: 1 }),
            ("$['x", UnterminatedName { offset: 2 }),
            (r"$['x\", UnterminatedName { offset: 2 }),
            ("$['x'", UnclosedBracket { offset: 1 }),
            (r"$['a\n']", InvalidEscape { offset: 4 }),
            ("$[01]", LeadingZero { offset: 2 }),
            ("$[-1]", NegativeIndex { offset: 2 }),
            ("$[99999999999999999999999]", IndexTooLarge { offset: 2 }),
            ("$[?(@.a)]", Filter { offset: 2 }),
            ("$[0:2]", UnexpectedChar { offset: 3, found: ':' }),
            ("$[ 0]", UnexpectedChar { offset: 2, found: ' ' }),
            ("$a", UnexpectedChar { offset: 1, found: 'a' }),
            ("$.a b", UnexpectedChar { offset: 3, found: ' ' }),
            ("$.é", ExpectedName { offset: 2 }),
            ("$]", UnexpectedChar { offset: 1, found: ']' }),
            ("$['a']x", UnexpectedChar { offset: 6, found: 'x' }),
        ];
        for (text, expected) in cases {
            assert_eq!(JsonPath::parse(text), Err(expected.clone()), "{text}");
        }
        let message = JsonPath::parse("$[-1]").unwrap_err().to_string();
        assert!(message.contains("byte 2") && message.contains("`[N]`"), "{message}");
    }

    #[test]
    fn matches_is_exact_and_wildcards_take_keys_and_indices() {
        let any = JsonPath::parse("$[*].a").unwrap();
        assert!(any.matches(&[Step::Index(3), Step::Key("a")]));
        assert!(any.matches(&[Step::Key("x"), Step::Key("a")]));
        assert!(!any.matches(&[Step::Key("x")]));
        assert!(!any.matches(&[Step::Key("x"), Step::Key("a"), Step::Index(0)]));
        assert!(JsonPath::parse("$").unwrap().matches(&[]));
        assert!(!JsonPath::parse("$[1]").unwrap().matches(&[Step::Key("1")]));
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
            "\\PC{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(5, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map("[a-z '\\\\*\"]{0,4}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    #[derive(Clone, Debug)]
    enum OwnedStep {
        Key(String),
        Index(usize),
    }

    /// Paths of the scalars and empty containers of `value`, in any order.
    fn leaves(value: &Value, at: &mut Vec<OwnedStep>, out: &mut Vec<Vec<OwnedStep>>) {
        match value {
            Value::Array(items) if !items.is_empty() => {
                for (i, item) in items.iter().enumerate() {
                    at.push(OwnedStep::Index(i));
                    leaves(item, at, out);
                    at.pop();
                }
            }
            Value::Object(map) if !map.is_empty() => {
                for (key, item) in map {
                    at.push(OwnedStep::Key(key.clone()));
                    leaves(item, at, out);
                    at.pop();
                }
            }
            _ => out.push(at.clone()),
        }
    }

    fn at_mut<'a>(value: &'a mut Value, path: &[OwnedStep]) -> &'a mut Value {
        path.iter().fold(value, |v, step| match step {
            OwnedStep::Key(k) => &mut v[k.as_str()],
            OwnedStep::Index(i) => &mut v[*i],
        })
    }

    /// A different value: same type where that stays one leaf, else a type change.
    fn mutated(value: &Value) -> Value {
        match value {
            Value::Null => Value::from(0),
            Value::Bool(b) => Value::Bool(!b),
            Value::Number(n) => match (n.as_i64(), n.as_u64()) {
                (Some(i), _) => Value::from(i.wrapping_add(1)),
                (None, Some(u)) => Value::from(u.wrapping_add(1)),
                _ => Value::String("was a float".into()),
            },
            Value::String(s) => Value::String(format!("{s}!")),
            _ => Value::Null,
        }
    }

    fn expected_text(path: &[OwnedStep]) -> String {
        let steps: Vec<Step<'_>> = path
            .iter()
            .map(|s| match s {
                OwnedStep::Key(k) => Step::Key(k),
                OwnedStep::Index(i) => Step::Index(*i),
            })
            .collect();
        path_text(&steps)
    }

    fn arb_path() -> impl Strategy<Value = JsonPath> {
        let segment = prop_oneof![
            "\\PC{0,6}".prop_map(|k| Segment::Key(k.into())),
            "[a-z_][a-z0-9_-]{0,4}".prop_map(|k| Segment::Key(k.into())),
            "['\"\\\\\\]\\[.*$ ]{0,4}".prop_map(|k| Segment::Key(k.into())),
            any::<usize>().prop_map(Segment::Index),
            (0usize..20).prop_map(Segment::Index),
            Just(Segment::Any),
        ];
        prop::collection::vec(segment, 0..6).prop_map(|segments| JsonPath { segments })
    }

    proptest! {
        #[test]
        fn a_document_matches_itself(value in arb_json()) {
            let body = serde_json::to_vec(&value).unwrap();
            let headers = HeaderMap::new();
            prop_assert!(compare(&CompareSpec::default(), answer(&headers, &body), answer(&headers, &body), 1).is_match());
        }

        #[test]
        fn one_changed_leaf_is_one_difference_at_its_path_and_ignoring_it_matches(
            value in arb_json(),
            pick in any::<prop::sample::Index>(),
        ) {
            let mut all = Vec::new();
            leaves(&value, &mut Vec::new(), &mut all);
            let path = pick.get(&all).clone();
            let mut changed = value.clone();
            let leaf = at_mut(&mut changed, &path);
            *leaf = mutated(leaf);
            let (real, dark) = (serde_json::to_vec(&value).unwrap(), serde_json::to_vec(&changed).unwrap());
            let headers = HeaderMap::new();
            let found = compare(&CompareSpec::default(), answer(&headers, &real), answer(&headers, &dark), 10);
            let expected = expected_text(&path);
            prop_assert_eq!(found.differences.len(), 1, "{:?}", found);
            prop_assert_eq!(&found.differences[0].at, &expected);
            prop_assert!(!found.truncated);

            let spec = CompareSpec { ignore: vec![JsonPath::parse(&expected).unwrap()], ..CompareSpec::default() };
            prop_assert!(compare(&spec, answer(&headers, &real), answer(&headers, &dark), 10).is_match());
        }

        #[test]
        fn paths_round_trip_through_display(path in arb_path()) {
            let text = path.to_string();
            prop_assert_eq!(JsonPath::parse(&text), Ok(path), "{}", text);
        }

        #[test]
        fn parse_never_panics(text in "\\PC{0,24}", grammarish in "[$.\\[\\]'\"\\\\*0-9a-z?@() -]{0,24}") {
            for text in [text, grammarish] {
                if let Ok(path) = JsonPath::parse(&text) {
                    prop_assert_eq!(JsonPath::parse(&path.to_string()), Ok(path));
                }
            }
        }
    }
}
