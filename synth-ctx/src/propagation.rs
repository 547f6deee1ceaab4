//! An OpenTelemetry [`TextMapPropagator`] for the marker.
//!
//! It injects the marker of the context's synthetic scope as the `synthetic-traffic` header and
//! the `synthetic` baggage member (keeping every other baggage member), and extracts it from the
//! header, else from the baggage member.
//!
//! Extraction reads every line the [`Extractor`] offers (through [`Extractor::get_all`]) and is
//! lenient: anything that is not shaped like a token is treated as absent. A `synthetic` baggage
//! member is found wherever it is, past the 64th member or in baggage over the W3C 8 KiB too:
//! the limits bound what is passed on, not whether a request is synthetic. Different markers
//! (header lines or baggage members that disagree) are ambiguous: the context is not synthetic
//! and the [`ExtractedMarker`] says so. Verification is strict: with
//! [`SyntheticPropagator::with_verifier`] only a marker that verifies enters the synthetic scope;
//! without it, a well-shaped marker is kept as an [`ExtractedMarker`] for a later verification
//! step and the context is not synthetic.
//!
//! Put it **last** in a composite propagator: it then also removes a `synthetic` baggage member
//! that did not verify, so a forged marker is not carried on by the `BaggagePropagator`.
//!
//! # Example
//!
//! ```
//! use std::collections::HashMap;
//! use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};
//! use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
//! use synth_ctx::{KeyRing, SyntheticPropagator, Verifier};
//!
//! let keys = KeyRing::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8")?;
//! let propagator = TextMapCompositePropagator::new(vec![
//!     Box::new(TraceContextPropagator::new()),
//!     Box::new(BaggagePropagator::new()),
//!     Box::new(SyntheticPropagator::new().with_verifier(Verifier::new(keys))),
//! ]);
//!
//! let mut incoming = HashMap::new();
//! incoming.insert("baggage".to_owned(), "tenant=acme,synthetic=v1.load.r42.4102444800.k1.forged".to_owned());
//! let cx = propagator.extract(&incoming);
//! assert!(synth_ctx::from_context(&cx).is_none()); // forged: not synthetic
//!
//! let mut outgoing = HashMap::new();
//! propagator.inject_context(&cx, &mut outgoing);
//! assert_eq!(outgoing["baggage"], "tenant=acme"); // other members kept, the forgery dropped
//! # Ok::<(), synth_ctx::KeyRingError>(())
//! ```

use std::sync::Arc;

use opentelemetry::{
    Context,
    baggage::BaggageExt,
    propagation::{Extractor, Injector, TextMapPropagator, text_map_propagator::FieldIter},
};

use crate::{
    BAGGAGE_KEY, Synthetic, Token, Verifier, VerifyError,
    baggage::{self, MarkerMember},
};

/// Header that carries the marker.
pub const HEADER: &str = "synthetic-traffic";
/// The W3C baggage header.
pub const BAGGAGE_HEADER: &str = "baggage";
/// Response header: the run id of a marker the service verified (proof the hop recognised it).
pub const SEEN_HEADER: &str = "synthetic-traffic-seen";
/// Response header: the services a synthetic request reached, see [`Trail::path`](crate::Trail::path).
pub const PATH_HEADER: &str = "synthetic-traffic-path";
/// Response header: the guards that engaged, see [`Trail::guards`](crate::Trail::guards).
pub const GUARDS_HEADER: &str = "synthetic-traffic-guards";
/// Response header: `1` when a service shed a synthetic request instead of serving it.
pub const SHED_HEADER: &str = "synthetic-traffic-shed";

/// A well-shaped marker found by extraction, not yet verified, or the record that the request
/// carried conflicting ones. Never makes anything synthetic by itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtractedMarker {
    token: Arc<str>,
    conflicting: bool,
}

impl ExtractedMarker {
    /// The marker extracted into `cx`, if any.
    pub fn from_context(cx: &Context) -> Option<&ExtractedMarker> {
        cx.get::<ExtractedMarker>()
    }

    /// The token as received; empty when [conflicting](Self::is_conflicting), so that verifying
    /// it directly fails too.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Whether the request carried different markers (header lines or baggage members that
    /// disagree).
    pub fn is_conflicting(&self) -> bool {
        self.conflicting
    }

    /// Verifies it; conflicting markers are refused with [`VerifyError::ConflictingMarkers`].
    pub fn verify(&self, verifier: &Verifier) -> Result<Synthetic, VerifyError> {
        if self.conflicting {
            return Err(VerifyError::ConflictingMarkers);
        }
        verifier.verify(&self.token)
    }
}

/// The marker's [`TextMapPropagator`]. See the [module docs](self).
#[derive(Clone, Debug)]
pub struct SyntheticPropagator {
    verifier: Option<Verifier>,
    fields: [String; 2],
}

impl Default for SyntheticPropagator {
    fn default() -> Self {
        Self::new()
    }
}

impl SyntheticPropagator {
    /// A propagator that injects the scope's marker and extracts markers without verifying them.
    pub fn new() -> Self {
        SyntheticPropagator { verifier: None, fields: [HEADER.to_owned(), BAGGAGE_HEADER.to_owned()] }
    }

    /// Verifies extracted markers: one that verifies puts the context in the synthetic scope.
    pub fn with_verifier(mut self, verifier: Verifier) -> Self {
        self.verifier = Some(verifier);
        self
    }
}

/// `cx` with the members of an incoming W3C `baggage` header added to its baggage, so they can
/// be sent on. The `synthetic` member is left out (only a verified marker may set it); the
/// header is read leniently and within the W3C limits, like the SDK's `BaggagePropagator`. For a
/// request with several `baggage` lines, use [`with_incoming_baggage_lines`].
///
/// ```
/// use opentelemetry::{Context, baggage::BaggageExt};
///
/// let cx = synth_ctx::propagation::with_incoming_baggage(&Context::new(), "tenant=acme,synthetic=forged");
/// assert_eq!(cx.baggage().get("tenant").map(|v| v.as_str().to_owned()).as_deref(), Some("acme"));
/// assert!(cx.baggage().get("synthetic").is_none());
/// ```
pub fn with_incoming_baggage(cx: &Context, header: &str) -> Context {
    merge_incoming(cx, &[header])
}

/// Like [`with_incoming_baggage`], for every `baggage` line of a request (in order): they are
/// one list, and the W3C limits (8192 bytes, 64 members) apply to all of them together.
///
/// ```
/// use opentelemetry::{Context, baggage::BaggageExt};
///
/// let lines = ["tenant=acme", "region=eu,synthetic=forged"];
/// let cx = synth_ctx::propagation::with_incoming_baggage_lines(&Context::new(), lines);
/// assert_eq!(cx.baggage().get("region").map(|v| v.as_str().to_owned()).as_deref(), Some("eu"));
/// assert_eq!(cx.baggage().len(), 2); // tenant and region; never the marker
/// ```
pub fn with_incoming_baggage_lines<'a>(cx: &Context, lines: impl IntoIterator<Item = &'a str>) -> Context {
    let mut lines = lines.into_iter();
    let Some(first) = lines.next() else {
        return cx.clone();
    };
    match lines.next() {
        // The usual case: one line, no copy of the list.
        None => merge_incoming(cx, &[first]),
        Some(second) => {
            let all: Vec<&str> = [first, second].into_iter().chain(lines).collect();
            merge_incoming(cx, &all)
        }
    }
}

fn merge_incoming(cx: &Context, lines: &[&str]) -> Context {
    use opentelemetry::baggage::KeyValueMetadata;
    let existing =
        cx.baggage().iter().map(|(k, (v, m))| KeyValueMetadata::new(k.clone(), v.clone(), m.clone()));
    let incoming = baggage::members(lines)
        .filter(|(name, _, _)| !baggage::is_key(name.as_bytes(), BAGGAGE_KEY))
        .map(|(name, value, props)| KeyValueMetadata::new(name.to_owned(), value.into_owned(), props));
    let merged: opentelemetry::baggage::Baggage = existing.chain(incoming).collect();
    cx.with_baggage(merged)
}

/// What extraction found.
enum Candidate {
    None,
    One(String),
    Conflicting,
}

/// Finds a well-shaped marker in every line: the header first, else the baggage member.
fn find_candidate(extractor: &dyn Extractor) -> Candidate {
    if let Some(lines) = extractor.get_all(HEADER)
        && let Some((first, rest)) = lines.split_first()
    {
        let first = first.trim();
        if rest.iter().any(|line| line.trim() != first) {
            return Candidate::Conflicting;
        }
        if Token::parse(first).is_ok() {
            return Candidate::One(first.to_owned());
        }
    }
    let Some(lines) = extractor.get_all(BAGGAGE_HEADER) else {
        return Candidate::None;
    };
    match baggage::find_marker_member(lines.iter().map(|line| line.as_bytes()), BAGGAGE_KEY) {
        MarkerMember::One(member) if Token::parse(&member).is_ok() => Candidate::One(member.into_owned()),
        MarkerMember::Absent | MarkerMember::One(_) => Candidate::None,
        MarkerMember::Conflicting => Candidate::Conflicting,
    }
}

impl TextMapPropagator for SyntheticPropagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let Some(synthetic) = crate::from_context(cx) else {
            // Real traffic: add nothing.
            return;
        };
        injector.set(HEADER, synthetic.token().to_owned());
        injector.set(BAGGAGE_HEADER, baggage::serialize_with(cx.baggage(), BAGGAGE_KEY, synthetic.token()));
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        // Only a verified marker may stay in the baggage; drop whatever else claimed the member.
        let cx = if cx.baggage().get(BAGGAGE_KEY).is_some() {
            cx.with_baggage(baggage::replace_member(cx.baggage(), BAGGAGE_KEY, None))
        } else {
            cx.clone()
        };
        let marker = match find_candidate(extractor) {
            Candidate::None => return cx,
            Candidate::One(token) => ExtractedMarker { token: Arc::from(token), conflicting: false },
            Candidate::Conflicting => ExtractedMarker { token: Arc::from(""), conflicting: true },
        };
        let verified = self.verifier.as_ref().and_then(|v| marker.verify(v).ok());
        let cx = cx.with_value(marker);
        match verified {
            Some(synthetic) => synthetic.to_context(&cx),
            None => cx,
        }
    }

    fn fields(&self) -> FieldIter<'_> {
        FieldIter::new(&self.fields)
    }
}
