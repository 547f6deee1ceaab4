//! An OpenTelemetry [`TextMapPropagator`] for the marker.
//!
//! It injects the marker of the context's synthetic scope as the `synthetic-traffic` header and
//! the `synthetic` baggage member (keeping every other baggage member), and extracts it from the
//! header, else from the baggage member.
//!
//! Extraction is lenient and bounded: anything that is not shaped like a token, a header over the
//! W3C baggage limits, a member past the 64th, is treated as absent. Verification is strict: with
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

use crate::{BAGGAGE_KEY, Synthetic, Token, Verifier, VerifyError, baggage};

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

/// A well-shaped marker found by extraction, not yet verified. Never makes anything synthetic
/// by itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExtractedMarker(Arc<str>);

impl ExtractedMarker {
    /// The marker extracted into `cx`, if any.
    pub fn from_context(cx: &Context) -> Option<&ExtractedMarker> {
        cx.get::<ExtractedMarker>()
    }

    /// The token as received.
    pub fn token(&self) -> &str {
        &self.0
    }

    /// Verifies it.
    pub fn verify(&self, verifier: &Verifier) -> Result<Synthetic, VerifyError> {
        verifier.verify(&self.0)
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
/// header is read leniently and within the W3C limits, like the SDK's `BaggagePropagator`.
///
/// ```
/// use opentelemetry::{Context, baggage::BaggageExt};
///
/// let cx = synth_ctx::propagation::with_incoming_baggage(&Context::new(), "tenant=acme,synthetic=forged");
/// assert_eq!(cx.baggage().get("tenant").map(|v| v.as_str().to_owned()).as_deref(), Some("acme"));
/// assert!(cx.baggage().get("synthetic").is_none());
/// ```
pub fn with_incoming_baggage(cx: &Context, header: &str) -> Context {
    use opentelemetry::baggage::KeyValueMetadata;
    let existing =
        cx.baggage().iter().map(|(k, (v, m))| KeyValueMetadata::new(k.clone(), v.clone(), m.clone()));
    let incoming = baggage::members(header)
        .filter(|(name, _, _)| *name != BAGGAGE_KEY)
        .map(|(name, value, props)| KeyValueMetadata::new(name.to_owned(), value.into_owned(), props));
    let merged: opentelemetry::baggage::Baggage = existing.chain(incoming).collect();
    cx.with_baggage(merged)
}

/// Finds a well-shaped marker: the header first, else the baggage member.
fn find_candidate(extractor: &dyn Extractor) -> Option<String> {
    let from_header =
        extractor.get(HEADER).map(str::trim).filter(|v| Token::parse(v).is_ok()).map(str::to_owned);
    from_header.or_else(|| {
        let member = baggage::find_member(extractor.get(BAGGAGE_HEADER)?, BAGGAGE_KEY)?;
        Token::parse(&member).is_ok().then(|| member.into_owned())
    })
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
        let Some(candidate) = find_candidate(extractor) else {
            return cx;
        };
        let marker = ExtractedMarker(Arc::from(candidate));
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
