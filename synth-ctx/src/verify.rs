//! Verifying markers: the strict half of the crate.

use std::{sync::Arc, time::Duration};

use hmac::Mac;

use crate::{
    KeyId, KeyRing, Malformed, ParseError, RunId, Synthetic, Token, cache::VerifiedCache, clock::now_unix,
};

/// Longest lifetime a verifier accepts by default: 24 hours.
pub const DEFAULT_MAX_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Clock skew tolerated by default between the minting and the verifying host: 30 seconds.
pub const DEFAULT_CLOCK_SKEW: Duration = Duration::from_secs(30);
/// Verified tokens remembered by default.
pub const DEFAULT_CACHE_CAPACITY: usize = 16 * 1024;

/// Why a marker was refused. Every variant says what to do in its message, and
/// [`reason`](VerifyError::reason) gives a stable label for metrics.
///
/// Messages never repeat the token (an attacker's text); they may name the key id, which is
/// checked to be `A-Z a-z 0-9 - _` before it gets here.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    /// Longer than any valid token; nothing else was looked at.
    #[error("oversized marker ({len} bytes, at most {max} allowed)", max = crate::MAX_TOKEN_LEN)]
    Oversized {
        /// Length of the refused marker, in bytes.
        len: usize,
    },
    /// Not shaped like a token.
    #[error("malformed marker: {0}")]
    Malformed(Malformed),
    /// Signed with a key id this verifier does not hold.
    #[error("unknown key id `{kid}`: add its secret to SYNTH_KEYS or mint with a key this service knows")]
    UnknownKey {
        /// The key id the token names.
        kid: KeyId,
    },
    /// The signature does not match: forged, tampered with, or signed with another secret.
    #[error("bad signature: the marker was not signed with this service's key for its key id")]
    BadSignature,
    /// Past its expiry (plus the allowed clock skew).
    #[error("expired marker: it expired at {expires_at} (unix seconds), now is {now}; mint a fresh one")]
    Expired {
        /// The token's expiry, unix seconds.
        expires_at: u64,
        /// The verifier's clock, unix seconds.
        now: u64,
    },
    /// Expires further ahead than the verifier's maximum lifetime allows.
    #[error(
        "marker lives too long: it expires {ttl_secs} s from now, more than the {max_ttl_secs} s allowed; mint it with a shorter TTL"
    )]
    TtlTooLong {
        /// Seconds from now until the token's expiry.
        ttl_secs: u64,
        /// The verifier's maximum, in seconds.
        max_ttl_secs: u64,
    },
    /// The request carries two different markers (`synthetic-traffic` lines or `synthetic`
    /// baggage members that disagree). Which one counts is ambiguous, so none does. Reported
    /// by `http::FoundMarker::verify` and
    /// [`ExtractedMarker::verify`](crate::ExtractedMarker::verify), never by the verifier
    /// itself, which only ever sees one token.
    #[error(
        "conflicting markers: the request carries different synthetic-traffic markers (header lines or baggage members); send exactly one"
    )]
    ConflictingMarkers,
}

impl VerifyError {
    /// A short, stable label: `oversized`, `malformed`, `unknown_key`, `bad_signature`,
    /// `expired`, `ttl_too_long` or `conflicting_markers`.
    pub const fn reason(&self) -> &'static str {
        match self {
            VerifyError::Oversized { .. } => "oversized",
            VerifyError::Malformed(_) => "malformed",
            VerifyError::UnknownKey { .. } => "unknown_key",
            VerifyError::BadSignature => "bad_signature",
            VerifyError::Expired { .. } => "expired",
            VerifyError::TtlTooLong { .. } => "ttl_too_long",
            VerifyError::ConflictingMarkers => "conflicting_markers",
        }
    }
}

impl From<ParseError> for VerifyError {
    fn from(e: ParseError) -> Self {
        match e {
            ParseError::Oversized { len } => VerifyError::Oversized { len },
            ParseError::Malformed(m) => VerifyError::Malformed(m),
        }
    }
}

/// Decides whether a marker may be trusted, and remembers the ones that may.
///
/// Valid means: well formed, a known key id, a good signature (compared in constant time), an
/// expiry in the future (allowing the clock skew) and no further ahead than the maximum TTL.
///
/// Tokens that verified are kept in a bounded cache until they expire, so a token seen before
/// costs a hash lookup instead of an HMAC. Refused tokens never enter the cache, so a flood of
/// forged tokens cannot grow it. Clones share the cache, but only while they judge tokens
/// alike: a builder method that changes the judgement ([`with_max_ttl`](Self::with_max_ttl),
/// [`with_clock_skew`](Self::with_clock_skew),
/// [`insecure_accept_unsigned_markers`](Self::insecure_accept_unsigned_markers)) gives the
/// verifier a fresh cache of its own, so a laxer clone can never vouch for a token in the
/// stricter one's cache.
///
/// # Example
///
/// ```
/// use synth_ctx::{KeyRing, Origin, Verifier, VerifyError};
///
/// let keys = KeyRing::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8")?;
/// let verifier = Verifier::new(keys);
/// let now = 4102441200; // an hour before the token expires
///
/// let ok = verifier.verify_at("v1.load.r42.4102444800.k1.tIWragboMd7Ioyrggq-3wEKFkUN56JM0LU_J-5XHBDU", now)?;
/// assert_eq!(ok.origin(), Origin::Load);
///
/// let forged = verifier.verify_at("v1.load.r42.4102444800.k1.AIWragboMd7Ioyrggq-3wEKFkUN56JM0LU_J-5XHBDU", now);
/// assert_eq!(forged.unwrap_err(), VerifyError::BadSignature);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct Verifier {
    keys: KeyRing,
    max_ttl: u64,
    skew: u64,
    cache: Option<Arc<VerifiedCache>>,
    insecure_unsigned: bool,
}

impl Verifier {
    /// A verifier with a 24 h maximum TTL, 30 s of clock skew and a cache of
    /// [`DEFAULT_CACHE_CAPACITY`] tokens.
    pub fn new(keys: KeyRing) -> Self {
        Verifier {
            keys,
            max_ttl: DEFAULT_MAX_TTL.as_secs(),
            skew: DEFAULT_CLOCK_SKEW.as_secs(),
            cache: Some(Arc::new(VerifiedCache::new(DEFAULT_CACHE_CAPACITY))),
            insecure_unsigned: false,
        }
    }

    /// Refuses tokens that expire more than `max_ttl` from now. The verifier gets a cache of
    /// its own (clones made before keep theirs).
    pub fn with_max_ttl(mut self, max_ttl: Duration) -> Self {
        self.max_ttl = max_ttl.as_secs();
        self.own_cache()
    }

    /// Tolerates this much difference between the minting and verifying clocks. The verifier
    /// gets a cache of its own (clones made before keep theirs).
    pub fn with_clock_skew(mut self, skew: Duration) -> Self {
        self.skew = skew.as_secs();
        self.own_cache()
    }

    /// A fresh, empty cache of the same capacity. The cache holds verdicts, and a verdict is only
    /// as good as the configuration that reached it: sharing it with a clone configured otherwise
    /// would let the laxer one accept tokens on the stricter one's behalf (or the reverse).
    fn own_cache(mut self) -> Self {
        self.cache = self.cache.map(|c| Arc::new(VerifiedCache::new(c.capacity())));
        self
    }

    /// Remembers up to `capacity` verified tokens; `0` turns the cache off.
    pub fn with_cache_capacity(mut self, capacity: usize) -> Self {
        self.cache = (capacity > 0).then(|| Arc::new(VerifiedCache::new(capacity)));
        self
    }

    /// **Development only. Never in production.** Accepts markers whose signature is wrong or
    /// whose key id is unknown, so a developer can hand-write `v1.load.my-run.<exp>.dev.<43 chars>`
    /// without keys. Shape, expiry and TTL are still checked. Anyone who can reach a service in
    /// this mode can switch its guards off. The verifier gets a cache of its own, so clones made
    /// before (strict ones) never see what it accepted.
    pub fn insecure_accept_unsigned_markers(mut self) -> Self {
        self.insecure_unsigned = true;
        self.own_cache()
    }

    /// Whether [`insecure_accept_unsigned_markers`](Self::insecure_accept_unsigned_markers) is on.
    pub fn accepts_unsigned_markers(&self) -> bool {
        self.insecure_unsigned
    }

    /// Verifies `token` against the system clock.
    pub fn verify(&self, token: &str) -> Result<Synthetic, VerifyError> {
        self.verify_at(token, now_unix())
    }

    /// Verifies `token` as if the time were `now` (unix seconds).
    pub fn verify_at(&self, token: &str, now: u64) -> Result<Synthetic, VerifyError> {
        if let Some(cache) = &self.cache
            && let Some(hit) = cache.get(token, now.saturating_sub(self.skew))
        {
            return Ok(hit);
        }
        let synthetic = self.verify_uncached(token, now)?;
        if let Some(cache) = &self.cache {
            cache.insert(synthetic.clone(), now.saturating_sub(self.skew));
        }
        Ok(synthetic)
    }

    fn verify_uncached(&self, text: &str, now: u64) -> Result<Synthetic, VerifyError> {
        let token = Token::parse(text)?;
        // Parsing checked the key id's shape, so this cannot fail.
        let kid = KeyId::new(token.key_id()).map_err(|_| VerifyError::Malformed(Malformed::KeyId))?;
        match self.keys.get(token.key_id()) {
            Some(key) => {
                let mut mac = key.mac.clone();
                mac.update(token.signed_part().as_bytes());
                if mac.verify_slice(token.signature()).is_err() && !self.insecure_unsigned {
                    return Err(VerifyError::BadSignature);
                }
            }
            None if self.insecure_unsigned => {}
            None => return Err(VerifyError::UnknownKey { kid }),
        }
        let expires_at = token.expires_at();
        if now > expires_at.saturating_add(self.skew) {
            return Err(VerifyError::Expired { expires_at, now });
        }
        let ttl_secs = expires_at.saturating_sub(now);
        if ttl_secs > self.max_ttl.saturating_add(self.skew) {
            return Err(VerifyError::TtlTooLong { ttl_secs, max_ttl_secs: self.max_ttl });
        }
        let run = RunId::new(token.run()).map_err(|_| VerifyError::Malformed(Malformed::RunId))?;
        Ok(Synthetic::new(token.origin(), run, expires_at, kid, text))
    }

    /// Number of tokens in the cache (for tests and diagnostics).
    pub fn cached_tokens(&self) -> usize {
        self.cache.as_ref().map_or(0, |c| c.len())
    }

    /// The key ring in use.
    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }
}
