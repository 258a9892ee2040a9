//! Client secrets: generation, hashing and constant-time checking.
//!
//! The broker never stores a secret, only its SHA-256. Secrets are 256 bits
//! from the system CSPRNG, so a plain hash is enough: there is nothing to
//! brute-force, and a cheap hash keeps client authentication off the list
//! of things that limit mint throughput.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::digest;
use ring::rand::SecureRandom;
use subtle::ConstantTimeEq;

/// Every generated secret starts with this, so that secret scanners can
/// recognise a leaked one.
pub const SECRET_PREFIX: &str = "stint_";
/// The longest client secret the broker will even hash.
pub const MAX_SECRET_LEN: usize = 256;

/// Generate a new client secret: `stint_` and 32 random bytes, base64url.
pub fn generate(rng: &dyn SecureRandom) -> Result<String, ring::error::Unspecified> {
    let mut bytes = [0u8; 32];
    rng.fill(&mut bytes)?;
    Ok(format!("{SECRET_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes)))
}

/// The SHA-256 of a secret, as the policy stores it.
pub fn hash(secret: &str) -> [u8; 32] {
    let digest = digest::digest(&digest::SHA256, secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The SHA-256 of a secret, lowercase hex.
pub fn hash_hex(secret: &str) -> String {
    hex::encode(hash(secret))
}

/// Whether `presented` hashes to `expected`, compared in constant time.
/// Over-long input is refused without hashing.
pub fn verify(presented: &str, expected: &[u8; 32]) -> bool {
    if presented.len() > MAX_SECRET_LEN {
        return false;
    }
    bool::from(hash(presented).ct_eq(expected))
}

/// Whether two byte strings are equal, in time that depends on their
/// lengths only (for tokens and thumbprints presented by a caller).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;

    #[test]
    fn generated_secrets_verify_against_their_hash_only() {
        let rng = SystemRandom::new();
        let a = generate(&rng).unwrap();
        let b = generate(&rng).unwrap();
        assert!(a.starts_with(SECRET_PREFIX));
        assert_eq!(a.len(), SECRET_PREFIX.len() + 43);
        assert_ne!(a, b);
        let hash_a = hash(&a);
        assert!(verify(&a, &hash_a));
        assert!(!verify(&b, &hash_a));
        assert!(!verify("", &hash_a));
        assert!(!verify(
            &"x".repeat(MAX_SECRET_LEN + 1),
            &hash(&"x".repeat(MAX_SECRET_LEN + 1))
        ));
    }

    #[test]
    fn hash_is_sha256() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(
            hash_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
