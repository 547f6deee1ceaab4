//! The marker's wire format: parsing a token into its fields, without trusting it.
//!
//! ```text
//! token   = "v1." origin "." run "." exp "." kid "." sig
//! origin  = "load" / "replay" / "dark"
//! run     = 1*64( ALPHA / DIGIT / "-" / "_" )
//! exp     = 1*10DIGIT                      ; unix seconds
//! kid     = 1*32( ALPHA / DIGIT / "-" / "_" )
//! sig     = base64url, no padding, of HMAC-SHA256(secret[kid], "v1.<origin>.<run>.<exp>.<kid>")
//! ```
//!
//! Parsing only checks the shape. Whether a token may be trusted is the
//! [`Verifier`](crate::Verifier)'s job.
//!
//! # Example
//!
//! ```
//! use synth_ctx::{Origin, Token};
//!
//! let token = Token::parse("v1.load.r42.4102444800.k1.tIWragboMd7Ioyrggq-3wEKFkUN56JM0LU_J-5XHBDU")?;
//! assert_eq!(token.origin(), Origin::Load);
//! assert_eq!(token.run(), "r42");
//! assert_eq!(token.expires_at(), 4102444800);
//! assert_eq!(token.key_id(), "k1");
//! # Ok::<(), synth_ctx::ParseError>(())
//! ```

use std::{fmt, str::FromStr, sync::Arc};

use base64::Engine as _;

/// The only token version this crate reads and writes.
pub const VERSION: &str = "v1";

/// Longest run id a token may carry.
pub const MAX_RUN_ID_LEN: usize = 64;
/// Longest key id a token may carry.
pub const MAX_KEY_ID_LEN: usize = 32;
/// Most digits the expiry may have.
pub const MAX_EXPIRY_DIGITS: usize = 10;
/// Length of the base64url (unpadded) encoding of a 32-byte HMAC-SHA256 tag.
pub const SIGNATURE_LEN: usize = 43;
/// Longest well-formed token: `"v1." + "replay" + "." + run + "." + exp + "." + kid + "." + sig`.
///
/// Anything longer is refused as oversized before any other work is done.
pub const MAX_TOKEN_LEN: usize =
    3 + 6 + 1 + MAX_RUN_ID_LEN + 1 + MAX_EXPIRY_DIGITS + 1 + MAX_KEY_ID_LEN + 1 + SIGNATURE_LEN;

pub(crate) const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Why synthetic traffic exists: the `origin` field of the marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    /// Synthetic journeys from a load generator.
    Load,
    /// Captured real requests replayed.
    Replay,
    /// A copy of real traffic mirrored to a service off the critical path.
    Dark,
}

impl Origin {
    /// Every origin, in wire order.
    pub const ALL: [Origin; 3] = [Origin::Load, Origin::Replay, Origin::Dark];

    /// The wire name: `load`, `replay` or `dark`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Origin::Load => "load",
            Origin::Replay => "replay",
            Origin::Dark => "dark",
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text was not `load`, `replay` or `dark`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("unknown origin: expected one of `load`, `replay`, `dark`")]
pub struct InvalidOrigin;

impl FromStr for Origin {
    type Err = InvalidOrigin;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "load" => Ok(Origin::Load),
            "replay" => Ok(Origin::Replay),
            "dark" => Ok(Origin::Dark),
            _ => Err(InvalidOrigin),
        }
    }
}

pub(crate) fn is_id_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn is_id(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(is_id_char)
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $err:ident, $max:expr, $what:literal, $msg:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            #[doc = concat!("Checks `id` is a valid ", $what, ": 1 to ", stringify!($max), " characters of `A-Z a-z 0-9 - _`.")]
            pub fn new(id: impl AsRef<str>) -> Result<Self, $err> {
                let id = id.as_ref();
                if is_id(id, $max) {
                    Ok(Self(Arc::from(id)))
                } else {
                    Err($err { len: id.len() })
                }
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// A copy with its own allocation.
            pub(crate) fn unshared(&self) -> Self {
                Self(Arc::from(&*self.0))
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = $err;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::new(s)
            }
        }

        #[doc = concat!("The text is not a valid ", $what, ".")]
        #[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
        #[error($msg)]
        pub struct $err {
            /// Length of the rejected text, in bytes.
            pub len: usize,
        }
    };
}

id_type!(
    /// The id of a test run, as carried in the marker: it tags rows, metrics and logs.
    ///
    /// ```
    /// use synth_ctx::RunId;
    /// assert!(RunId::new("checkout-2026-11-27").is_ok());
    /// assert!(RunId::new("has space").is_err());
    /// ```
    RunId,
    InvalidRunId,
    64,
    "run id",
    "invalid run id ({len} bytes): use 1 to 64 characters of A-Z a-z 0-9 - _"
);

id_type!(
    /// The id of a signing key, so keys can be rotated.
    ///
    /// ```
    /// use synth_ctx::KeyId;
    /// assert!(KeyId::new("k1").is_ok());
    /// assert!(KeyId::new("").is_err());
    /// ```
    KeyId,
    InvalidKeyId,
    32,
    "key id",
    "invalid key id ({len} bytes): use 1 to 32 characters of A-Z a-z 0-9 - _"
);

/// Which part of a token is malformed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Malformed {
    /// The token does not start with `v1.`.
    Version,
    /// The token does not have exactly six `.`-separated fields.
    FieldCount,
    /// The origin is not `load`, `replay` or `dark`.
    Origin,
    /// The run id is empty, too long or has characters outside `A-Z a-z 0-9 - _`.
    RunId,
    /// The expiry is not 1 to 10 decimal digits.
    Expiry,
    /// The key id is empty, too long or has characters outside `A-Z a-z 0-9 - _`.
    KeyId,
    /// The signature is not 43 characters of unpadded base64url encoding 32 bytes.
    Signature,
}

impl Malformed {
    /// A short, stable name for logs and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Malformed::Version => "version",
            Malformed::FieldCount => "field_count",
            Malformed::Origin => "origin",
            Malformed::RunId => "run_id",
            Malformed::Expiry => "expiry",
            Malformed::KeyId => "key_id",
            Malformed::Signature => "signature",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            Malformed::Version => "it does not start with `v1.`",
            Malformed::FieldCount => "it does not have six `.`-separated fields",
            Malformed::Origin => "the origin is not `load`, `replay` or `dark`",
            Malformed::RunId => "the run id is not 1-64 characters of A-Z a-z 0-9 - _",
            Malformed::Expiry => "the expiry is not 1-10 decimal digits",
            Malformed::KeyId => "the key id is not 1-32 characters of A-Z a-z 0-9 - _",
            Malformed::Signature => "the signature is not 43 characters of unpadded base64url",
        }
    }
}

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// Why text could not be parsed as a token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// Longer than [`MAX_TOKEN_LEN`]; nothing else was looked at.
    #[error("marker is {len} bytes, longer than any valid token ({max} bytes)", max = MAX_TOKEN_LEN)]
    Oversized {
        /// Length of the rejected text, in bytes.
        len: usize,
    },
    /// The shape is wrong.
    #[error("malformed marker: {0}")]
    Malformed(Malformed),
}

/// A token split into its fields. Nothing about it is trusted yet.
///
/// It borrows the text it was parsed from, so parsing allocates nothing.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Token<'a> {
    text: &'a str,
    origin: Origin,
    run: &'a str,
    expires_at: u64,
    key_id: &'a str,
    signature: [u8; 32],
}

impl<'a> Token<'a> {
    /// Splits `text` into a token's fields, checking only their shape.
    pub fn parse(text: &'a str) -> Result<Self, ParseError> {
        use Malformed as M;
        let bad = ParseError::Malformed;
        if text.len() > MAX_TOKEN_LEN {
            return Err(ParseError::Oversized { len: text.len() });
        }
        let mut fields = text.split('.');
        let mut next = |m: Malformed| fields.next().ok_or(bad(m));
        if next(M::Version)? != VERSION {
            return Err(bad(M::Version));
        }
        let origin = next(M::FieldCount)?;
        let run = next(M::FieldCount)?;
        let exp = next(M::FieldCount)?;
        let kid = next(M::FieldCount)?;
        let sig = next(M::FieldCount)?;
        if fields.next().is_some() {
            return Err(bad(M::FieldCount));
        }
        let origin = origin.parse().map_err(|_| bad(M::Origin))?;
        if !is_id(run, MAX_RUN_ID_LEN) {
            return Err(bad(M::RunId));
        }
        if exp.is_empty() || exp.len() > MAX_EXPIRY_DIGITS || !exp.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(M::Expiry));
        }
        // At most 10 digits: always fits in a u64.
        let expires_at = exp.bytes().fold(0u64, |acc, b| acc * 10 + u64::from(b - b'0'));
        if !is_id(kid, MAX_KEY_ID_LEN) {
            return Err(bad(M::KeyId));
        }
        let mut signature = [0u8; 32];
        // The strict engine refuses non-zero trailing bits, so every signature has exactly one
        // spelling and no byte of a valid token can be changed without changing what it says.
        if sig.len() != SIGNATURE_LEN || B64.decode_slice(sig, &mut signature).ok() != Some(signature.len()) {
            return Err(bad(M::Signature));
        }
        Ok(Token { text, origin, run, expires_at, key_id: kid, signature })
    }

    /// The whole token, as parsed.
    pub fn as_str(&self) -> &'a str {
        self.text
    }

    /// Why the traffic is synthetic.
    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// The run id.
    pub fn run(&self) -> &'a str {
        self.run
    }

    /// Expiry, unix seconds.
    pub fn expires_at(&self) -> u64 {
        self.expires_at
    }

    /// The id of the key that signed it.
    pub fn key_id(&self) -> &'a str {
        self.key_id
    }

    /// The HMAC-SHA256 tag the token claims.
    pub fn signature(&self) -> &[u8; 32] {
        &self.signature
    }

    /// The bytes the signature covers: `v1.<origin>.<run>.<exp>.<kid>`, exactly as received.
    pub fn signed_part(&self) -> &'a str {
        &self.text[..self.text.len() - SIGNATURE_LEN - 1]
    }
}

impl fmt::Debug for Token<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("origin", &self.origin)
            .field("run", &self.run)
            .field("expires_at", &self.expires_at)
            .field("key_id", &self.key_id)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: &str = "v1.load.r42.4102444800.k1.tIWragboMd7Ioyrggq-3wEKFkUN56JM0LU_J-5XHBDU";

    #[test]
    fn parses_fields_and_signed_part() {
        let t = Token::parse(T1).unwrap();
        assert_eq!(t.signed_part(), "v1.load.r42.4102444800.k1");
        assert_eq!(t.as_str(), T1);
    }

    #[test]
    fn max_len_matches_the_grammar() {
        let t = format!("v1.replay.{}.9999999999.{}.{}", "r".repeat(64), "k".repeat(32), "A".repeat(43));
        assert_eq!(t.len(), MAX_TOKEN_LEN);
        assert!(Token::parse(&t).is_ok());
        let longer = format!("{t}A");
        assert_eq!(Token::parse(&longer), Err(ParseError::Oversized { len: MAX_TOKEN_LEN + 1 }));
    }

    #[test]
    fn non_canonical_signature_trailing_bits_are_refused() {
        // `U` encodes ...010100; the last two bits are dropped, so `V` would decode to the same bytes.
        let alt = T1.replace("BDU", "BDV");
        assert_eq!(Token::parse(&alt), Err(ParseError::Malformed(Malformed::Signature)));
    }

    #[test]
    fn ids_validate() {
        assert!(RunId::new("a".repeat(64)).is_ok());
        assert_eq!(RunId::new("a".repeat(65)), Err(InvalidRunId { len: 65 }));
        assert!(KeyId::new("k.1").is_err());
        assert_eq!("dark".parse::<Origin>(), Ok(Origin::Dark));
        assert!("Load".parse::<Origin>().is_err());
    }
}
