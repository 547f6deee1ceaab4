//! `http::HeaderMap` adapters (feature `http`).
//!
//! - [`find_marker`]: the raw marker a request carries, header first, else baggage member; for a
//!   server layer that must tell "absent" from "present but invalid".
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
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::borrow::Cow;

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::propagation::{Extractor, Injector};

use crate::{BAGGAGE_KEY, Synthetic, baggage};

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
    /// Its text, trimmed. A header value that is not visible ASCII is replaced by lossy UTF-8,
    /// which then fails verification as malformed.
    pub value: Cow<'a, str>,
}

/// The marker a request carries: the first `synthetic-traffic` header, else the `synthetic`
/// member of the first `baggage` header (ignored whole when over the W3C limits).
pub fn find_marker(headers: &HeaderMap) -> Option<FoundMarker<'_>> {
    if let Some(v) = headers.get(&SYNTHETIC_TRAFFIC) {
        let value = match v.to_str() {
            Ok(s) => Cow::Borrowed(s.trim()),
            Err(_) => Cow::Owned(String::from_utf8_lossy(v.as_bytes()).trim().to_owned()),
        };
        return Some(FoundMarker { source: MarkerSource::Header, value });
    }
    let header = headers.get(&BAGGAGE)?.to_str().ok()?;
    let value = baggage::find_member(header, BAGGAGE_KEY)?;
    Some(FoundMarker { source: MarkerSource::Baggage, value })
}

/// Sets the marker on outgoing headers: the `synthetic-traffic` header and the `synthetic`
/// baggage member. Other baggage members are kept; if adding the member would break the W3C
/// limits, the baggage header is left as it was (the marker still travels in its own header).
pub fn insert_marker(headers: &mut HeaderMap, synthetic: &Synthetic) {
    // Verified tokens are visible ASCII, so this conversion cannot fail.
    if let Ok(v) = HeaderValue::from_str(synthetic.token()) {
        headers.insert(SYNTHETIC_TRAFFIC, v);
    }
    let existing = headers.get(&BAGGAGE).and_then(|v| v.to_str().ok());
    if headers.contains_key(&BAGGAGE) && existing.is_none() {
        return; // not text: leave it alone rather than lose it
    }
    if let Some(merged) = baggage::with_member(existing, BAGGAGE_KEY, synthetic.token())
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

/// Removes the marker from headers: the `synthetic-traffic` header and the `synthetic` baggage
/// member, keeping every other member. For requests that must go on as real ones.
pub fn remove_marker(headers: &mut HeaderMap) {
    headers.remove(&SYNTHETIC_TRAFFIC);
    let Some(stripped) = headers
        .get(&BAGGAGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|h| baggage::without_member(h, BAGGAGE_KEY))
    else {
        return;
    };
    match HeaderValue::from_str(&stripped) {
        Ok(v) if !stripped.is_empty() => {
            headers.insert(BAGGAGE, v);
        }
        _ => {
            headers.remove(&BAGGAGE);
        }
    }
}

/// An OpenTelemetry [`Extractor`] over request headers.
#[derive(Debug)]
pub struct HeaderExtractor<'a>(pub &'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
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
