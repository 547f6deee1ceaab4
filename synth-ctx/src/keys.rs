//! Signing keys: the `SYNTH_KEYS` configuration.
//!
//! `SYNTH_KEYS="kid:base64url-secret,kid2:base64url-secret"`: the first key signs, every key
//! verifies, so a key is rotated by putting the new one first and dropping the old one once its
//! tokens have expired. Secrets are at least 32 bytes. Errors name the entry and the key id but
//! never a secret.
//!
//! # Example
//!
//! ```
//! use synth_ctx::KeyRing;
//!
//! let keys = KeyRing::parse("k2:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8,k1:Hx4dHBsaGRgXFhUUExIREA8ODQwLCgkIBwYFBAMCAQA")?;
//! assert_eq!(keys.signing_key_id().as_str(), "k2");
//! assert_eq!(keys.len(), 2);
//!
//! let err = KeyRing::parse("k1:c2hvcnQ").unwrap_err();
//! assert_eq!(err.to_string(), "SYNTH_KEYS entry 1 (key id `k1`): the secret is 5 bytes; use at least 32 random bytes (`loadgen keygen` makes one)");
//! # Ok::<(), synth_ctx::KeyRingError>(())
//! ```

use std::{fmt, path::Path, sync::Arc};

use base64::Engine as _;
use hmac::{Hmac, KeyInit};
use sha2::Sha256;

use crate::token::{B64, KeyId};

/// Environment variable the key ring is read from.
pub const KEYS_ENV: &str = "SYNTH_KEYS";

/// Shortest secret accepted, in bytes.
pub const MIN_SECRET_LEN: usize = 32;

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// One key: its id and an HMAC state already keyed with the secret.
///
/// The keyed state is cloned per signature, which saves hashing the key on every verification.
#[derive(Clone)]
pub(crate) struct Key {
    pub(crate) id: KeyId,
    pub(crate) mac: HmacSha256,
}

/// The keys a service signs and verifies markers with. Cheap to clone.
///
/// `Debug` shows key ids only.
#[derive(Clone)]
pub struct KeyRing {
    keys: Arc<[Key]>,
}

/// Why a key ring could not be built. Never contains a secret.
///
/// Its `Debug` is its message, so that `fn main() -> Result<(), Box<dyn Error>>` prints what to
/// do (`Error: SYNTH_KEYS is not set; …`) rather than a bare variant name (`Error: NotSet`).
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum KeyRingError {
    /// No key at all.
    #[error("{source_name} holds no key; set it to `kid:base64url-secret` (`loadgen keygen` prints one)")]
    Empty {
        /// Where the keys came from (`SYNTH_KEYS`, a file path, ...).
        source_name: String,
    },
    /// `SYNTH_KEYS` is not set.
    #[error(
        "SYNTH_KEYS is not set; set it to `kid:base64url-secret[,kid2:secret2]` (`loadgen keygen` prints one)"
    )]
    NotSet,
    /// The variable is set but is not valid UTF-8.
    #[error("SYNTH_KEYS is not valid UTF-8")]
    NotUnicode,
    /// An entry has no `:` between key id and secret.
    #[error("{source_name} entry {entry}: expected `kid:base64url-secret`")]
    MissingSeparator {
        /// Where the keys came from.
        source_name: String,
        /// 1-based position of the entry.
        entry: usize,
    },
    /// The key id is empty, too long or has characters outside `A-Z a-z 0-9 - _`.
    #[error("{source_name} entry {entry}: the key id is not 1-32 characters of A-Z a-z 0-9 - _")]
    BadKeyId {
        /// Where the keys came from.
        source_name: String,
        /// 1-based position of the entry.
        entry: usize,
    },
    /// The same key id appears twice.
    #[error("{source_name} entry {entry}: key id `{kid}` appears twice; each key needs its own id")]
    DuplicateKeyId {
        /// Where the keys came from.
        source_name: String,
        /// 1-based position of the second occurrence.
        entry: usize,
        /// The repeated id.
        kid: KeyId,
    },
    /// The secret is not base64url.
    #[error(
        "{source_name} entry {entry} (key id `{kid}`): the secret is not base64url (A-Z a-z 0-9 - _, no padding needed)"
    )]
    BadSecretEncoding {
        /// Where the keys came from.
        source_name: String,
        /// 1-based position of the entry.
        entry: usize,
        /// The key's id.
        kid: KeyId,
    },
    /// The secret decodes to fewer than [`MIN_SECRET_LEN`] bytes.
    #[error(
        "{source_name} entry {entry} (key id `{kid}`): the secret is {len} bytes; use at least 32 random bytes (`loadgen keygen` makes one)"
    )]
    SecretTooShort {
        /// Where the keys came from.
        source_name: String,
        /// 1-based position of the entry.
        entry: usize,
        /// The key's id.
        kid: KeyId,
        /// Decoded length of the secret.
        len: usize,
    },
    /// The key file could not be read.
    #[error("cannot read key file {path}: {source}")]
    Io {
        /// The file's path.
        path: String,
        /// What the operating system said.
        source: std::io::Error,
    },
}

impl std::fmt::Debug for KeyRingError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl KeyRing {
    /// Parses `kid:base64url-secret` entries separated by commas.
    pub fn parse(spec: &str) -> Result<Self, KeyRingError> {
        Self::parse_named(spec, KEYS_ENV)
    }

    /// Reads the key ring from the `SYNTH_KEYS` environment variable.
    pub fn from_env() -> Result<Self, KeyRingError> {
        match std::env::var(KEYS_ENV) {
            Ok(spec) => Self::parse(&spec),
            Err(std::env::VarError::NotPresent) => Err(KeyRingError::NotSet),
            Err(std::env::VarError::NotUnicode(_)) => Err(KeyRingError::NotUnicode),
        }
    }

    /// Reads entries from a file: separated by commas or newlines; blank lines and lines
    /// starting with `#` are ignored.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, KeyRingError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|source| KeyRingError::Io { path: path.display().to_string(), source })?;
        let spec: Vec<&str> =
            text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
        Self::parse_named(&spec.join(","), &path.display().to_string())
    }

    /// Builds a key ring from raw secrets, first one signing.
    ///
    /// ```
    /// use synth_ctx::{KeyId, KeyRing};
    /// let keys = KeyRing::from_secrets([(KeyId::new("k1")?, [7u8; 32].to_vec())])?;
    /// # assert_eq!(keys.len(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_secrets(secrets: impl IntoIterator<Item = (KeyId, Vec<u8>)>) -> Result<Self, KeyRingError> {
        let source_name = "key list";
        let mut keys: Vec<Key> = Vec::new();
        for (i, (kid, secret)) in secrets.into_iter().enumerate() {
            keys.push(make_key(source_name, i + 1, kid, &secret, &keys)?);
        }
        Self::from_keys(keys, source_name)
    }

    fn from_keys(keys: Vec<Key>, source_name: &str) -> Result<Self, KeyRingError> {
        if keys.is_empty() {
            return Err(KeyRingError::Empty { source_name: source_name.to_owned() });
        }
        Ok(KeyRing { keys: keys.into() })
    }

    fn parse_named(spec: &str, source_name: &str) -> Result<Self, KeyRingError> {
        let mut keys: Vec<Key> = Vec::new();
        for (i, entry) in spec.split(',').map(str::trim).filter(|e| !e.is_empty()).enumerate() {
            let entry_no = i + 1;
            let (kid, secret) = entry.split_once(':').ok_or_else(|| KeyRingError::MissingSeparator {
                source_name: source_name.to_owned(),
                entry: entry_no,
            })?;
            let kid = KeyId::new(kid.trim()).map_err(|_| KeyRingError::BadKeyId {
                source_name: source_name.to_owned(),
                entry: entry_no,
            })?;
            let secret = B64.decode(secret.trim().trim_end_matches('=')).map_err(|_| {
                KeyRingError::BadSecretEncoding {
                    source_name: source_name.to_owned(),
                    entry: entry_no,
                    kid: kid.clone(),
                }
            })?;
            keys.push(make_key(source_name, entry_no, kid, &secret, &keys)?);
        }
        Self::from_keys(keys, source_name)
    }

    /// The id of the key that signs.
    pub fn signing_key_id(&self) -> &KeyId {
        &self.signing_key().id
    }

    pub(crate) fn signing_key(&self) -> &Key {
        // `from_keys` refuses an empty ring.
        &self.keys[0]
    }

    pub(crate) fn get(&self, kid: &str) -> Option<&Key> {
        self.keys.iter().find(|k| k.id.as_str() == kid)
    }

    /// Ids of every key, signing key first.
    pub fn key_ids(&self) -> impl Iterator<Item = &KeyId> {
        self.keys.iter().map(|k| &k.id)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false: a key ring holds at least one key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

fn make_key(
    source_name: &str,
    entry: usize,
    kid: KeyId,
    secret: &[u8],
    existing: &[Key],
) -> Result<Key, KeyRingError> {
    if existing.iter().any(|k| k.id == kid) {
        return Err(KeyRingError::DuplicateKeyId { source_name: source_name.to_owned(), entry, kid });
    }
    if secret.len() < MIN_SECRET_LEN {
        return Err(KeyRingError::SecretTooShort {
            source_name: source_name.to_owned(),
            entry,
            kid,
            len: secret.len(),
        });
    }
    // HMAC accepts keys of any length, so this cannot fail; map it anyway rather than panic.
    let mac = <HmacSha256 as KeyInit>::new_from_slice(secret).map_err(|_| KeyRingError::SecretTooShort {
        source_name: source_name.to_owned(),
        entry,
        kid: kid.clone(),
        len: secret.len(),
    })?;
    Ok(Key { id: kid, mac })
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyRing")
            .field("key_ids", &self.keys.iter().map(|k| k.id.as_str()).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S1: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8";

    fn err(spec: &str) -> String {
        KeyRing::parse(spec).unwrap_err().to_string()
    }

    #[test]
    fn bad_config_errors_are_clear_and_never_echo_secrets() {
        let cases = [
            ("", "SYNTH_KEYS holds no key"),
            (" , ", "SYNTH_KEYS holds no key"),
            ("k1", "entry 1: expected `kid:base64url-secret`"),
            ("k 1:AAAA", "entry 1: the key id is not"),
            (&format!("k1:{S1},k1:{S1}"), "entry 2: key id `k1` appears twice"),
            ("k1:not*base64!secretvalue", "entry 1 (key id `k1`): the secret is not base64url"),
            ("k1:c2VjcmV0LXRoYXQtaXMtdG9vLXNob3J0", "the secret is 24 bytes"),
        ];
        for (spec, want) in cases {
            let got = err(spec);
            assert!(got.contains(want), "{spec:?}: {got}");
            if let Some((_, secret)) = spec.split_once(':') {
                let secret = secret.split(',').next().unwrap();
                assert!(secret.len() < 4 || !got.contains(secret), "error echoes the secret: {got}");
            }
        }
    }

    #[test]
    fn accepts_padding_whitespace_and_rotation_order() {
        let ring = KeyRing::parse(&format!(" new : {S1}= , old:{S1}")).unwrap();
        assert_eq!(ring.signing_key_id().as_str(), "new");
        assert_eq!(ring.key_ids().map(KeyId::as_str).collect::<Vec<_>>(), ["new", "old"]);
        assert!(!format!("{ring:?}").contains(S1));
    }

    #[test]
    fn reads_a_file_with_comments_and_lines() {
        let dir = std::env::temp_dir().join(format!("synth-ctx-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys");
        std::fs::write(&path, format!("# rotated 2026-11\nk2:{S1}\n\nk1:{S1}\n")).unwrap();
        let ring = KeyRing::from_file(&path).unwrap();
        assert_eq!(ring.len(), 2);
        let missing = KeyRing::from_file(dir.join("nope")).unwrap_err().to_string();
        assert!(missing.starts_with("cannot read key file"), "{missing}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
