//! Secrets kept at rest: sealed with AES-256-GCM under a key from a file.
//!
//! The broker keeps two kinds of secret in its store that a backup must not
//! leak: its signing keys (under the key-encryption key) and GitHub
//! installation tokens until they are revoked (under the target's token
//! key). Both are sealed here, each bound by its associated data to what
//! it is (and, for a signing key, to its `kid`), so a sealed value moved to
//! another row or another purpose does not open.
//!
//! The sealed form: a version byte, the key's id (the first four bytes of
//! the key's SHA-256, so that a changed key file is told apart from a
//! corrupt value), a random 96-bit nonce, the ciphertext and the tag.

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::SecureRandom;
use std::fmt;

/// The sealed form's version byte.
pub const SEAL_VERSION: u8 = 1;
/// Bytes a sealed value adds to its plaintext.
pub const SEAL_OVERHEAD: usize = 1 + 4 + NONCE_LEN + 16;

/// Why a value did not seal or open. None of these holds the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SealError {
    /// Not in the sealed form this build knows.
    Malformed,
    /// Sealed under another key (the key file changed).
    OtherKey,
    /// Under this key's id, but it does not open: tampered with, or bound
    /// to other associated data.
    DoesNotOpen,
    /// No nonce could be generated, or the cipher refused.
    Failed,
}

impl fmt::Display for SealError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Malformed => "not in a sealed form this stintd knows",
            Self::OtherKey => "sealed under another key",
            Self::DoesNotOpen => "does not open under the key (tampered with, or moved)",
            Self::Failed => "could not be sealed",
        })
    }
}

/// A key that seals and opens values.
pub struct Sealer {
    key: LessSafeKey,
    key_id: [u8; 4],
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("key_id", &hex::encode(self.key_id))
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// The key from a key file's contents: exactly 32 bytes, or 64 hex
    /// digits (and a final newline). `None` for anything else; the caller
    /// names the file.
    pub fn from_key_file_bytes(bytes: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(bytes).ok().map(str::trim_end);
        let key: Vec<u8> = match text.map(hex::decode) {
            Some(Ok(decoded)) if decoded.len() == 32 => decoded,
            _ if bytes.len() == 32 => bytes.to_vec(),
            _ => return None,
        };
        let digest = ring::digest::digest(&ring::digest::SHA256, &key);
        let mut key_id = [0u8; 4];
        key_id.copy_from_slice(digest.as_ref().get(..4)?);
        let key = UnboundKey::new(&AES_256_GCM, &key).ok()?;
        Some(Self {
            key: LessSafeKey::new(key),
            key_id,
        })
    }

    /// The key's id, in hex: says which key file sealed a value.
    pub fn key_id(&self) -> String {
        hex::encode(self.key_id)
    }

    /// Whether `value` has the sealed form's prefix (its version byte and
    /// room for the rest), whatever key sealed it.
    pub fn looks_sealed(value: &[u8]) -> bool {
        value.first() == Some(&SEAL_VERSION) && value.len() >= SEAL_OVERHEAD
    }

    /// The id of the key that sealed `value`, in hex, if it has the sealed
    /// form: says which key file it needs.
    pub fn sealed_key_id(value: &[u8]) -> Option<String> {
        Self::looks_sealed(value).then(|| hex::encode(value.get(1..5).unwrap_or_default()))
    }

    /// Seal `plain`, bound to `aad`.
    pub fn seal(
        &self,
        plain: &[u8],
        aad: &[u8],
        rng: &dyn SecureRandom,
    ) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill(&mut nonce).map_err(|_| SealError::Failed)?;
        let mut in_out = plain.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad),
                &mut in_out,
            )
            .map_err(|_| SealError::Failed)?;
        let mut sealed = Vec::with_capacity(SEAL_OVERHEAD + plain.len());
        sealed.push(SEAL_VERSION);
        sealed.extend_from_slice(&self.key_id);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(&in_out);
        Ok(sealed)
    }

    /// Open a value sealed under this key and bound to `aad`.
    pub fn unseal(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
        let (version, rest) = sealed.split_first().ok_or(SealError::Malformed)?;
        if *version != SEAL_VERSION || sealed.len() < SEAL_OVERHEAD {
            return Err(SealError::Malformed);
        }
        let (key_id, rest) = rest.split_at(4);
        if key_id != self.key_id {
            return Err(SealError::OtherKey);
        }
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Malformed)?;
        let mut in_out = ciphertext.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut in_out)
            .map_err(|_| SealError::DoesNotOpen)?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ring::rand::SystemRandom;

    #[test]
    fn a_sealed_value_opens_only_under_its_key_and_its_binding() {
        let rng = SystemRandom::new();
        let key = Sealer::from_key_file_bytes(&[7u8; 32]).unwrap();
        let same = Sealer::from_key_file_bytes(format!("{}\n", hex::encode([7u8; 32])).as_bytes())
            .unwrap();
        let other = Sealer::from_key_file_bytes(&[8u8; 32]).unwrap();
        assert_eq!(key.key_id(), same.key_id());
        assert_ne!(key.key_id(), other.key_id());

        let secret = b"a private key, say";
        let sealed = key.seal(secret, b"kid-1", &rng).unwrap();
        assert!(Sealer::looks_sealed(&sealed));
        assert_eq!(sealed.len(), SEAL_OVERHEAD + secret.len());
        assert!(!sealed.windows(secret.len()).any(|w| w == secret));
        assert_ne!(
            sealed,
            key.seal(secret, b"kid-1", &rng).unwrap(),
            "a nonce each"
        );
        assert_eq!(key.unseal(&sealed, b"kid-1").unwrap(), secret);
        assert_eq!(same.unseal(&sealed, b"kid-1").unwrap(), secret);
        assert_eq!(other.unseal(&sealed, b"kid-1"), Err(SealError::OtherKey));
        assert_eq!(key.unseal(&sealed, b"kid-2"), Err(SealError::DoesNotOpen));
        let mut tampered = sealed.clone();
        if let Some(last) = tampered.last_mut() {
            *last ^= 1;
        }
        assert_eq!(key.unseal(&tampered, b"kid-1"), Err(SealError::DoesNotOpen));
        assert_eq!(key.unseal(&[], b""), Err(SealError::Malformed));
        assert_eq!(
            key.unseal(&[SEAL_VERSION, 1], b""),
            Err(SealError::Malformed)
        );
        assert!(!Sealer::looks_sealed(&[0x30, 0x81, 0x87]));
        assert_eq!(Sealer::sealed_key_id(&sealed), Some(key.key_id()));
        assert_eq!(Sealer::sealed_key_id(secret), None);
    }

    #[test]
    fn key_files_hold_32_bytes_or_64_hex_digits() {
        assert!(Sealer::from_key_file_bytes(&[1u8; 32]).is_some());
        assert!(Sealer::from_key_file_bytes(hex::encode([1u8; 32]).as_bytes()).is_some());
        for bad in [
            &b""[..],
            &[1u8; 31],
            &[1u8; 33],
            b"not hex at all",
            &[b'a'; 63],
        ] {
            assert!(Sealer::from_key_file_bytes(bad).is_none());
        }
        let debug = format!("{:?}", Sealer::from_key_file_bytes(&[9u8; 32]).unwrap());
        assert!(
            debug.contains("key_id") && !debug.contains("090909"),
            "{debug}"
        );
    }
}
