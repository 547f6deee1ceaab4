//! Minting markers.

use std::time::Duration;

use base64::Engine as _;
use hmac::Mac;

use crate::{KeyRing, Origin, RunId, Synthetic, clock::now_unix, token::B64};

/// Mints markers with a key ring's signing key (the first one).
///
/// # Example
///
/// ```
/// use std::time::Duration;
/// use synth_ctx::{KeyRing, Origin, RunId, Signer, Verifier};
///
/// let keys = KeyRing::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8")?;
/// let run = RunId::new("r42")?;
/// let token = Signer::new(keys.clone()).mint(Origin::Load, &run, Duration::from_secs(3600));
///
/// let synthetic = Verifier::new(keys).verify(&token)?;
/// assert_eq!(synthetic.run(), &run);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct Signer {
    keys: KeyRing,
}

impl Signer {
    /// A signer that uses the ring's first key.
    pub fn new(keys: KeyRing) -> Self {
        Signer { keys }
    }

    /// Mints a token for `run` that expires `ttl` from now (rounded down to the second).
    pub fn mint(&self, origin: Origin, run: &RunId, ttl: Duration) -> String {
        self.mint_until(origin, run, now_unix().saturating_add(ttl.as_secs()))
    }

    /// Mints a token that expires at `expires_at` (unix seconds).
    ///
    /// Expiries past what the format can carry (10 digits) are clamped to `9999999999`.
    pub fn mint_until(&self, origin: Origin, run: &RunId, expires_at: u64) -> String {
        let key = self.keys.signing_key();
        let expires_at = expires_at.min(9_999_999_999);
        let mut token = format!("v1.{origin}.{run}.{expires_at}.{}", key.id);
        let mut mac = key.mac.clone();
        mac.update(token.as_bytes());
        let tag = mac.finalize().into_bytes();
        token.push('.');
        B64.encode_string(tag, &mut token);
        token
    }

    /// Mints a token and returns it already verified, ready to scope work with.
    pub fn mint_synthetic(&self, origin: Origin, run: &RunId, ttl: Duration) -> Synthetic {
        let expires_at = now_unix().saturating_add(ttl.as_secs()).min(9_999_999_999);
        let token = self.mint_until(origin, run, expires_at);
        Synthetic::new(origin, run.clone(), expires_at, self.keys.signing_key_id().clone(), &token)
    }

    /// The key ring in use.
    pub fn keys(&self) -> &KeyRing {
        &self.keys
    }
}
