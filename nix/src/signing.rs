//! Ed25519 signing keys and signatures in Nix's `name:base64` format.
//!
//! A secret key is written `name:base64(seed ‖ public key)` (64 bytes), a public key
//! `name:base64(public key)` (32 bytes) and a signature `name:base64(signature)` (64 bytes), the
//! name being that of the key that made it. This is what `nix-store --generate-binary-cache-key`
//! writes and what `trusted-public-keys` and narinfo `Sig:` lines hold.
//!
//! Kiln is stricter than Nix 2.8 where Nix would only fail later: a secret key whose public half
//! does not belong to its seed (libsodium would sign with the mismatched half and produce
//! signatures nobody can verify), a public key that is not a point on the curve, and key names with
//! whitespace or control characters (they could not be written on a narinfo line) are refused when
//! parsed. Verification uses Ed25519's strict rules, as libsodium does: small-order keys and
//! non-canonical signatures never verify.

use std::cmp::Ordering;
use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use thiserror::Error;

use crate::narinfo::excerpt;

/// Bytes in a secret key as Nix stores it: the 32-byte seed followed by the 32-byte public key.
pub const SECRET_KEY_BYTES: usize = 64;
/// Bytes in a public key.
pub const PUBLIC_KEY_BYTES: usize = 32;
/// Bytes in a signature.
pub const SIGNATURE_BYTES: usize = 64;
/// Longest key name Kiln accepts; Nix sets no limit, but names are short labels such as
/// `cache.example.org-1`.
pub const MAX_NAME_LEN: usize = 128;

/// Which of the three `name:base64` forms a value was meant to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// A secret key (64 bytes).
    Secret,
    /// A public key (32 bytes).
    Public,
    /// A signature (64 bytes).
    Signature,
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyKind::Secret => "secret key",
            KeyKind::Public => "public key",
            KeyKind::Signature => "signature",
        })
    }
}

/// Why a key or signature could not be parsed or made.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SigningError {
    /// No `:` separates the name from the data, or nothing comes before it.
    #[error("{kind} has no name: expected `name:base64`")]
    MissingName {
        /// What was being parsed.
        kind: KeyKind,
    },
    /// Nothing follows the `:`.
    #[error("{kind} {name:?} has no data after the ':'")]
    MissingData {
        /// What was being parsed.
        kind: KeyKind,
        /// The key name before the `:`.
        name: String,
    },
    /// The key name cannot be written in Nix's formats.
    #[error("key name {name:?} is invalid: {reason}")]
    InvalidName {
        /// The offending name (truncated if very long).
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The data after the `:` is not standard padded base64.
    #[error("{kind} {name:?} is not valid base64: {reason}")]
    Base64 {
        /// What was being parsed.
        kind: KeyKind,
        /// The key name before the `:`.
        name: String,
        /// The decoder's complaint.
        reason: String,
    },
    /// The decoded data has the wrong number of bytes.
    #[error("{kind} {name:?} decodes to {actual} bytes, expected {expected}")]
    WrongLength {
        /// What was being parsed.
        kind: KeyKind,
        /// The key name before the `:`.
        name: String,
        /// Bytes the kind must have.
        expected: usize,
        /// Bytes found.
        actual: usize,
    },
    /// The data after the `:` is far too long to be what it should be.
    #[error("{kind} {name:?} has {len} base64 characters, far more than {kind}s have")]
    TooLong {
        /// What was being parsed.
        kind: KeyKind,
        /// The key name before the `:`.
        name: String,
        /// Characters after the `:`.
        len: usize,
    },
    /// The second half of a secret key is not the public key of its first half.
    #[error("secret key {name:?} is corrupt: its public half does not match its seed")]
    PublicHalfMismatch {
        /// The key name.
        name: String,
    },
    /// The 32 bytes of a public key are not a valid Ed25519 point.
    #[error("public key {name:?} is not a valid Ed25519 key")]
    InvalidPublicKey {
        /// The key name.
        name: String,
    },
    /// The operating system could not provide random bytes for a new key.
    #[error("cannot get random bytes from the operating system for a new key: {0}")]
    Randomness(String),
}

/// Checks a key name: non-empty, no `:`, no whitespace or control characters, not absurdly long.
pub fn validate_key_name(name: &str) -> Result<(), SigningError> {
    let invalid = |reason| SigningError::InvalidName {
        name: excerpt(name),
        reason,
    };
    if name.is_empty() {
        return Err(invalid("it is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(invalid("it is longer than 128 bytes"));
    }
    if name.contains(':') {
        return Err(invalid("it contains ':'"));
    }
    if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("it contains whitespace or control characters"));
    }
    Ok(())
}

/// Splits `name:base64` and decodes the data into exactly `N` bytes.
fn parse_named<const N: usize>(kind: KeyKind, s: &str) -> Result<(String, [u8; N]), SigningError> {
    let (name, data) = match s.split_once(':') {
        Some((name, data)) if !name.is_empty() => (name, data),
        _ => return Err(SigningError::MissingName { kind }),
    };
    validate_key_name(name)?;
    if data.is_empty() {
        return Err(SigningError::MissingData {
            kind,
            name: name.to_owned(),
        });
    }
    // Far longer inputs cannot decode to N bytes; refusing them first bounds the work on hostile
    // input. Slightly wrong lengths are decoded so that the error can say how many bytes they hold.
    if data.len() > 2 * N.div_ceil(3) * 4 {
        return Err(SigningError::TooLong {
            kind,
            name: name.to_owned(),
            len: data.len(),
        });
    }
    let mut bytes = BASE64.decode(data).map_err(|e| SigningError::Base64 {
        kind,
        name: name.to_owned(),
        reason: e.to_string(),
    })?;
    let result = <[u8; N]>::try_from(bytes.as_slice()).map_err(|_| SigningError::WrongLength {
        kind,
        name: name.to_owned(),
        expected: N,
        actual: bytes.len(),
    });
    wipe(&mut bytes);
    Ok((name.to_owned(), result?))
}

/// Overwrites a buffer that held key material before it is freed.
fn wipe(bytes: &mut [u8]) {
    for b in bytes.iter_mut() {
        // SAFETY: `b` is a valid, aligned, exclusive reference. The volatile write keeps the
        // compiler from dropping a store to memory that is about to be freed.
        unsafe { std::ptr::write_volatile(b, 0) };
    }
}

/// An Ed25519 secret key with its name, as `nix-store --generate-binary-cache-key` writes it.
///
/// `Debug` shows only the name and the public key; the secret leaves this type only through
/// [`SecretKey::to_secret_string`]. The key material is zeroed when the value is dropped.
#[derive(Clone)]
pub struct SecretKey {
    name: String,
    key: SigningKey,
}

impl SecretKey {
    /// A new key pair from the operating system's random number generator.
    pub fn generate(name: &str) -> Result<SecretKey, SigningError> {
        validate_key_name(name)?;
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| SigningError::Randomness(e.to_string()))?;
        let key = SecretKey {
            name: name.to_owned(),
            key: SigningKey::from_bytes(&seed),
        };
        wipe(&mut seed);
        Ok(key)
    }

    /// The key pair whose secret is the 32-byte Ed25519 seed `seed`.
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Result<SecretKey, SigningError> {
        validate_key_name(name)?;
        Ok(SecretKey {
            name: name.to_owned(),
            key: SigningKey::from_bytes(seed),
        })
    }

    /// The key's name, which its signatures carry.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The public key that verifies this key's signatures, under the same name.
    pub fn public(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// Signs `data` (for narinfos, the store path fingerprint).
    pub fn sign(&self, data: &[u8]) -> Signature {
        Signature {
            name: self.name.clone(),
            bytes: self.key.sign(data).to_bytes(),
        }
    }

    /// The secret key in Nix's file format, `name:base64(seed ‖ public key)`. Write it only to a
    /// file readable by its owner alone.
    pub fn to_secret_string(&self) -> String {
        let mut bytes = self.key.to_keypair_bytes();
        let s = format!("{}:{}", self.name, BASE64.encode(bytes));
        wipe(&mut bytes);
        s
    }
}

/// Parses `name:base64`; surrounding whitespace (a key file's trailing newline) is ignored.
impl FromStr for SecretKey {
    type Err = SigningError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, mut bytes) = parse_named::<SECRET_KEY_BYTES>(KeyKind::Secret, s.trim())?;
        let seed: [u8; 32] = bytes[..32].try_into().expect("64 bytes split in halves");
        let key = SigningKey::from_bytes(&seed);
        let matches = key.verifying_key().as_bytes()[..] == bytes[32..];
        wipe(&mut bytes);
        if !matches {
            return Err(SigningError::PublicHalfMismatch { name });
        }
        Ok(SecretKey { name, key })
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("name", &self.name)
            .field(
                "public",
                &BASE64.encode(self.key.verifying_key().as_bytes()),
            )
            .finish_non_exhaustive()
    }
}

/// An Ed25519 public key with its name, as listed in `trusted-public-keys`.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    name: String,
    key: VerifyingKey,
}

impl PublicKey {
    /// The key's name; only signatures carrying this name are checked against it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The 32 raw key bytes.
    pub fn as_bytes(&self) -> &[u8; PUBLIC_KEY_BYTES] {
        self.key.as_bytes()
    }

    /// Whether `signature` was made over `data` by this key's secret: the names must match and the
    /// Ed25519 signature must verify under the strict rules.
    pub fn verify(&self, data: &[u8], signature: &Signature) -> bool {
        signature.name == self.name
            && self
                .key
                .verify_strict(
                    data,
                    &ed25519_dalek::Signature::from_bytes(&signature.bytes),
                )
                .is_ok()
    }
}

/// Parses `name:base64`; surrounding whitespace (a key file's trailing newline) is ignored.
impl FromStr for PublicKey {
    type Err = SigningError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, bytes) = parse_named::<PUBLIC_KEY_BYTES>(KeyKind::Public, s.trim())?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| SigningError::InvalidPublicKey { name: name.clone() })?;
        Ok(PublicKey { name, key })
    }
}

/// `name:base64`, as in `trusted-public-keys`.
impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, BASE64.encode(self.key.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// A detached Ed25519 signature with the name of the key that made it, as on a narinfo `Sig:` line.
///
/// Signatures order by their printed form, which is how Nix sorts a path's signatures.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Signature {
    name: String,
    bytes: [u8; SIGNATURE_BYTES],
}

impl Signature {
    /// The name of the key that made the signature.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The 64 raw signature bytes.
    pub fn as_bytes(&self) -> &[u8; SIGNATURE_BYTES] {
        &self.bytes
    }
}

/// Parses `name:base64` exactly: no surrounding whitespace.
impl FromStr for Signature {
    type Err = SigningError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (name, bytes) = parse_named::<SIGNATURE_BYTES>(KeyKind::Signature, s)?;
        Ok(Signature { name, bytes })
    }
}

/// `name:base64`, as on a narinfo `Sig:` line.
impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, BASE64.encode(self.bytes))
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({self})")
    }
}

impl PartialOrd for Signature {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Signature {
    fn cmp(&self, other: &Self) -> Ordering {
        self.to_string().cmp(&other.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made by `nix-store --generate-binary-cache-key nixkey-1 sk pk` with Nix 2.8.
    const NIX_SECRET: &str = "nixkey-1:TNgxVWayvOZUT5kXaiUzo9dEkCW3ZekyGHLkAaSkRnBeDF5Uzsv8HBSN18Rbdu9GqaDASft7/029gE6gWzcycQ==";
    const NIX_PUBLIC: &str = "nixkey-1:XgxeVM7L/BwUjdfEW3bvRqmgwEn7e/9NvYBOoFs3MnE=";

    #[test]
    fn nix_generated_secret_key_yields_its_public_key() {
        let secret: SecretKey = NIX_SECRET.parse().unwrap();
        assert_eq!(secret.name(), "nixkey-1");
        assert_eq!(secret.public().to_string(), NIX_PUBLIC);
        assert_eq!(secret.to_secret_string(), NIX_SECRET);
    }

    #[test]
    fn key_files_with_a_trailing_newline_parse() {
        assert!(format!("{NIX_SECRET}\n").parse::<SecretKey>().is_ok());
        assert!(format!("{NIX_PUBLIC}\n").parse::<PublicKey>().is_ok());
    }

    #[test]
    fn signatures_verify_only_with_the_matching_key_and_data() {
        let secret: SecretKey = NIX_SECRET.parse().unwrap();
        let sig = secret.sign(b"fingerprint");
        let public: PublicKey = NIX_PUBLIC.parse().unwrap();
        assert!(public.verify(b"fingerprint", &sig));
        assert!(!public.verify(b"fingerprinT", &sig));
        let other = SecretKey::generate("nixkey-1").unwrap().public();
        assert!(!other.verify(b"fingerprint", &sig));
        let renamed = format!("other:{}", sig.to_string().split_once(':').unwrap().1);
        assert!(!public.verify(b"fingerprint", &renamed.parse().unwrap()));
    }

    #[test]
    fn signatures_print_as_they_parse() {
        let sig = SecretKey::generate("k").unwrap().sign(b"x");
        let printed = sig.to_string();
        assert!(printed.starts_with("k:"));
        assert_eq!(printed.parse::<Signature>().unwrap(), sig);
    }

    #[test]
    fn generated_keys_differ() {
        let a = SecretKey::generate("k").unwrap();
        let b = SecretKey::generate("k").unwrap();
        assert_ne!(a.public(), b.public());
        assert_eq!(
            a.to_secret_string().parse::<SecretKey>().unwrap().public(),
            a.public()
        );
    }

    #[test]
    fn debug_output_hides_the_secret() {
        let secret: SecretKey = NIX_SECRET.parse().unwrap();
        let debug = format!("{secret:?}");
        let seed_b64 = NIX_SECRET.split_once(':').unwrap().1;
        assert!(!debug.contains(&seed_b64[..20]), "{debug}");
        assert!(debug.contains("nixkey-1"));
    }

    #[test]
    fn malformed_keys_are_refused_with_the_reason() {
        type Check = fn(&SigningError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("no-colon", |e| {
                matches!(e, SigningError::MissingName { .. })
            }),
            (":AAAA", |e| matches!(e, SigningError::MissingName { .. })),
            ("name:", |e| matches!(e, SigningError::MissingData { .. })),
            ("na me:AAAA", |e| {
                matches!(e, SigningError::InvalidName { .. })
            }),
            ("name:!!!!", |e| matches!(e, SigningError::Base64 { .. })),
            ("name:AAAA", |e| {
                matches!(e, SigningError::WrongLength { actual: 3, .. })
            }),
        ];
        for (input, check) in cases {
            let err = input.parse::<SecretKey>().unwrap_err();
            assert!(check(&err), "{input}: {err}");
        }
        let public_as_secret = NIX_PUBLIC.parse::<SecretKey>().unwrap_err();
        assert!(matches!(
            public_as_secret,
            SigningError::WrongLength {
                kind: KeyKind::Secret,
                expected: 64,
                actual: 32,
                ..
            }
        ));
    }

    #[test]
    fn secret_key_with_a_foreign_public_half_is_refused() {
        let a = SecretKey::generate("k").unwrap();
        let b = SecretKey::generate("k").unwrap();
        let mut bytes = a.key.to_keypair_bytes();
        bytes[32..].copy_from_slice(b.public().as_bytes());
        let forged = format!("k:{}", BASE64.encode(bytes));
        assert_eq!(
            forged.parse::<SecretKey>().unwrap_err(),
            SigningError::PublicHalfMismatch { name: "k".into() }
        );
    }

    #[test]
    fn public_key_that_is_not_a_curve_point_is_refused() {
        // y = 2 has no matching x on edwards25519.
        let mut bytes = [0u8; 32];
        bytes[0] = 2;
        let err = format!("k:{}", BASE64.encode(bytes))
            .parse::<PublicKey>()
            .unwrap_err();
        assert_eq!(err, SigningError::InvalidPublicKey { name: "k".into() });
    }

    #[test]
    fn signatures_order_like_their_printed_form() {
        let a: Signature = format!("a-b:{}", BASE64.encode([0u8; 64])).parse().unwrap();
        let b: Signature = format!("a:{}", BASE64.encode([0u8; 64])).parse().unwrap();
        assert!(a < b, "'-' sorts before ':' in Nix's std::set<std::string>");
    }
}
