//! `http::HeaderMap` adapters (feature `http`).
//!
//! - [`find_marker`]: the raw marker a request carries, header first, else baggage member, read
//!   from every line; for a server layer that must tell "absent" from "present but invalid".
//! - [`insert_marker`] / [`remove_marker`]: set or strip the marker on outgoing headers, keeping
//!   every other baggage member.
//! - [`HeaderExtractor`] / [`HeaderInjector`]: OpenTelemetry carriers over a `HeaderMap`.
//!
//! # Example
//!
//! ```
//! use http::HeaderMap;
//! use synth_ctx::http::{find_marker, MarkerSource};
//!
//! let mut headers = HeaderMap::new();
//! headers.insert("baggage", "tenant=acme,synthetic=v1.load.r1.1.k1.sig".parse()?);
//! let found = find_marker(&headers).unwrap();
//! assert_eq!(found.source, MarkerSource::Baggage);
//! assert_eq!(found.value, "v1.load.r1.1.k1.sig"); // raw: still to be verified
//!
//! // Every `baggage` line is read; two different markers are refused, whatever they are.
//! headers.append("baggage", "synthetic=v1.load.r2.1.k1.sig".parse()?);
//! let found = find_marker(&headers).unwrap();
//! assert!(found.is_conflicting());
//! let keys = synth_ctx::KeyRing::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8")?;
//! let refused = found.verify(&synth_ctx::Verifier::new(keys)).unwrap_err();
//! assert_eq!(refused.reason(), "conflicting_markers");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::borrow::Cow;

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector};

use crate::{
    BAGGAGE_KEY, Synthetic, Verifier, VerifyError,
    baggage::{self, MarkerMember},
};

/// `synthetic-traffic`: the header that carries the marker.
pub const SYNTHETIC_TRAFFIC: HeaderName = HeaderName::from_static(crate::propagation::HEADER);
/// `baggage`: the W3C baggage header.
pub const BAGGAGE: HeaderName = HeaderName::from_static(crate::propagation::BAGGAGE_HEADER);

/// `synthetic-traffic-seen`: response header naming the run a service verified.
pub const SYNTHETIC_TRAFFIC_SEEN: HeaderName = HeaderName::from_static(crate::propagation::SEEN_HEADER);
/// `synthetic-traffic-path`: response header with the services a synthetic request reached.
pub const SYNTHETIC_TRAFFIC_PATH: HeaderName = HeaderName::from_static(crate::propagation::PATH_HEADER);
/// `synthetic-traffic-guards`: response header with the guards that engaged.
pub const SYNTHETIC_TRAFFIC_GUARDS: HeaderName = HeaderName::from_static(crate::propagation::GUARDS_HEADER);
/// `synthetic-traffic-shed`: response header set to `1` on a shed synthetic request.
pub const SYNTHETIC_TRAFFIC_SHED: HeaderName = HeaderName::from_static(crate::propagation::SHED_HEADER);

/// Request headers that carry a user's credentials or session: what a capture never stores and
/// a replay never sends as recorded (lowercase). Besides the standard ones, the identity headers
/// that AWS ALB, Google IAP and Cloudflare Access add in front of a service.
///
/// ```
/// assert!(synth_ctx::http::CREDENTIAL_HEADERS.contains(&"cookie"));
/// ```
pub const CREDENTIAL_HEADERS: [&str; 13] = [
    "authorization",
    "cookie",
    "proxy-authorization",
    "x-api-key",
    "x-auth-token",
    "x-access-token",
    "x-csrf-token",
    "x-xsrf-token",
    "x-amzn-oidc-accesstoken",
    "x-amzn-oidc-data",
    "x-goog-iap-jwt-assertion",
    "cf-access-jwt-assertion",
    "x-forwarded-access-token",
];

/// Whether a header value looks like a credential whatever the header's name: a `Bearer`,
/// `Basic` or `Digest` scheme, or a JWT (`eyJ…` with two dots).
///
/// ```
/// use synth_ctx::http::looks_like_credential;
/// assert!(looks_like_credential(b"Bearer abc"));
/// assert!(looks_like_credential(b"eyJhbGciOi.eyJzdWIiOi.sig"));
/// assert!(!looks_like_credential(b"text/html"));
/// ```
pub fn looks_like_credential(value: &[u8]) -> bool {
    let starts = |p: &[u8]| value.len() >= p.len() && value[..p.len()].eq_ignore_ascii_case(p);
    starts(b"bearer ")
        || starts(b"basic ")
        || starts(b"digest ")
        || (value.starts_with(b"eyJ") && value.iter().filter(|b| **b == b'.').count() >= 2)
}

/// Where a marker was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MarkerSource {
    /// The `synthetic-traffic` header.
    Header,
    /// The `synthetic` member of the `baggage` header.
    Baggage,
}

/// A marker as found on a request, not yet verified.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FoundMarker<'a> {
    /// Where it was.
    pub source: MarkerSource,
    /// Its text, trimmed (a baggage member's percent-decoded). Text that is not visible ASCII
    /// or does not decode is kept as it came (lossy UTF-8), which then fails verification as
    /// malformed. Empty when the request carries [conflicting](Self::is_conflicting) markers, so
    /// that verifying it directly fails too; [`verify`](Self::verify) says why.
    pub value: Cow<'a, str>,
    conflicting: bool,
}

impl FoundMarker<'_> {
    fn conflicting(source: MarkerSource) -> Self {
        FoundMarker { source, value: Cow::Borrowed(""), conflicting: true }
    }

    /// Whether the request carries different markers at [`source`](Self::source): several
    /// `synthetic-traffic` lines or `synthetic` baggage members that disagree.
    pub fn is_conflicting(&self) -> bool {
        self.conflicting
    }

    /// Verifies the marker; conflicting markers are refused with
    /// [`VerifyError::ConflictingMarkers`], whatever they are.
    pub fn verify(&self, verifier: &Verifier) -> Result<Synthetic, VerifyError> {
        if self.conflicting {
            return Err(VerifyError::ConflictingMarkers);
        }
        verifier.verify(&self.value)
    }
}

/// A header value as text: visible ASCII borrowed, anything else as lossy UTF-8.
fn header_text(v: &HeaderValue) -> Cow<'_, str> {
    match v.to_str() {
        Ok(s) => Cow::Borrowed(s.trim()),
        Err(_) => match String::from_utf8_lossy(v.as_bytes()) {
            Cow::Borrowed(s) => Cow::Borrowed(s.trim()),
            Cow::Owned(s) => Cow::Owned(s.trim().to_owned()),
        },
    }
}

/// The marker a request carries: the `synthetic-traffic` header, else the `synthetic` member of
/// its baggage.
///
/// Every line is read. Lines of the header that disagree, or `synthetic` members that disagree
/// (in one `baggage` line or across several), make a [conflicting](FoundMarker::is_conflicting)
/// marker. A `synthetic` member is found wherever it is, past the 64th member or in baggage over
/// 8 KiB too: the W3C limits bound what is passed on, not whether a request is synthetic.
/// When the header is present the baggage is not consulted (the header is the marker; a
/// baggage member that disagrees with it does not make it valid or invalid).
pub fn find_marker(headers: &HeaderMap) -> Option<FoundMarker<'_>> {
    let mut lines = headers.get_all(&SYNTHETIC_TRAFFIC).iter();
    if let Some(first) = lines.next() {
        let value = header_text(first);
        return Some(if lines.any(|line| header_text(line) != value) {
            FoundMarker::conflicting(MarkerSource::Header)
        } else {
            FoundMarker { source: MarkerSource::Header, value, conflicting: false }
        });
    }
    let lines = headers.get_all(&BAGGAGE).into_iter().map(HeaderValue::as_bytes);
    match baggage::find_marker_member(lines, BAGGAGE_KEY) {
        MarkerMember::Absent => None,
        MarkerMember::One(value) => {
            Some(FoundMarker { source: MarkerSource::Baggage, value, conflicting: false })
        }
        MarkerMember::Conflicting => Some(FoundMarker::conflicting(MarkerSource::Baggage)),
    }
}

/// Sets the marker on outgoing headers: the `synthetic-traffic` header and the `synthetic`
/// baggage member. Other baggage members are kept (several `baggage` lines become one); if
/// adding the member would break the W3C limits, the baggage is left as it was (the marker
/// still travels in its own header).
pub fn insert_marker(headers: &mut HeaderMap, synthetic: &Synthetic) {
    // Verified tokens are visible ASCII, so this conversion cannot fail.
    if let Ok(v) = HeaderValue::from_str(synthetic.token()) {
        headers.insert(SYNTHETIC_TRAFFIC, v);
    }
    let mut lines = headers.get_all(&BAGGAGE).iter();
    let existing: Option<Cow<'_, str>> = match (lines.next(), lines.next()) {
        (None, _) => None,
        (Some(one), None) => match one.to_str() {
            Ok(s) => Some(Cow::Borrowed(s)),
            Err(_) => return, // not text: leave it alone rather than lose it
        },
        (Some(_), Some(_)) => {
            let mut joined = String::new();
            for line in headers.get_all(&BAGGAGE) {
                let Ok(s) = line.to_str() else {
                    return; // not text: leave it alone rather than lose it
                };
                if !joined.is_empty() {
                    joined.push(',');
                }
                joined.push_str(s);
            }
            Some(Cow::Owned(joined))
        }
    };
    if let Some(merged) = baggage::with_member(existing.as_deref(), BAGGAGE_KEY, synthetic.token())
        && let Ok(v) = HeaderValue::from_str(&merged)
    {
        headers.insert(BAGGAGE, v);
    }
}

/// Sets the marker of `cx`'s synthetic scope on outgoing headers, like [`insert_marker`]; when
/// the request has no `baggage` header of its own, `cx`'s other baggage members go out with the
/// marker. Does nothing for a real (non-synthetic) context. Returns whether `cx` was synthetic.
pub fn insert_context(headers: &mut HeaderMap, cx: &opentelemetry::Context) -> bool {
    use opentelemetry::baggage::BaggageExt;
    let Some(synthetic) = crate::from_context(cx) else {
        return false;
    };
    if !headers.contains_key(&BAGGAGE) && !cx.baggage().is_empty() {
        let value = baggage::serialize_with(cx.baggage(), BAGGAGE_KEY, synthetic.token());
        if let Ok(v) = HeaderValue::try_from(value) {
            headers.insert(BAGGAGE, v);
        }
    }
    insert_marker(headers, synthetic);
    true
}

/// Removes the marker from headers: every `synthetic-traffic` line and every `synthetic`
/// member of every `baggage` line, keeping every other member; a line left empty is removed.
/// For requests that must go on as real ones.
pub fn remove_marker(headers: &mut HeaderMap) {
    headers.remove(&SYNTHETIC_TRAFFIC);
    let lines = headers.get_all(&BAGGAGE);
    if !lines.iter().any(|line| baggage::without_member_bytes(line.as_bytes(), BAGGAGE_KEY).is_some()) {
        return;
    }
    let kept: Vec<HeaderValue> = lines
        .iter()
        .filter_map(|line| match baggage::without_member_bytes(line.as_bytes(), BAGGAGE_KEY) {
            None => Some(line.clone()),
            Some(stripped) if stripped.is_empty() => None,
            // A subset of a valid value is valid; should it not be, the line is dropped: never
            // send a marker on.
            Some(stripped) => HeaderValue::from_bytes(&stripped).ok(),
        })
        .collect();
    headers.remove(&BAGGAGE);
    for line in kept {
        headers.append(BAGGAGE, line);
    }
}

/// An OpenTelemetry [`Extractor`] over request headers.
#[derive(Debug)]
pub struct HeaderExtractor<'a>(pub &'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    /// Every line of header `key` that is text, so that propagators can read them all.
    fn get_all(&self, key: &str) -> Option<Vec<&str>> {
        let lines: Vec<&str> = self.0.get_all(key).iter().filter_map(|v| v.to_str().ok()).collect();
        (!lines.is_empty()).then_some(lines)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

/// An OpenTelemetry [`Injector`] over request headers. Values that are not valid header values
/// (CR, LF, other control characters) are skipped, never sent.
#[derive(Debug)]
pub struct HeaderInjector<'a>(pub &'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(key.as_bytes()), HeaderValue::try_from(value))
        {
            self.0.insert(name, value);
        }
    }
}
