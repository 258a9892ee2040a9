//! Token Status Lists (draft-ietf-oauth-status-list): the compressed bit
//! array that tells verifiers which tokens are revoked, and the claims that
//! point a token at its entry and carry the list.
//!
//! A list holds one status of `bits` bits (1, 2, 4 or 8) per index, packed
//! least-significant bits first within each byte; on the wire it is zlib
//! (DEFLATE with the zlib header) and then base64url without padding: the
//! `lst` member. A token names its entry with
//! `"status": {"status_list": {"idx": N, "uri": "..."}}`, and the list is
//! served as a JWT of type `statuslist+jwt` whose `sub` is that URI.
//!
//! Decoding is bounded ([`MAX_DECODED_LEN`]): a small, hostile `lst` cannot
//! inflate into gigabytes.

use crate::jose::{JoseError, KeySet, UnverifiedJws};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use flate2::Compression;
use flate2::read::ZlibDecoder;
use flate2::write::ZlibEncoder;
use serde::{Deserialize, Serialize};
use std::io::{Read as _, Write as _};
use thiserror::Error;

/// The `typ` header of a status list token.
pub const STATUS_LIST_TYP: &str = "statuslist+jwt";
/// The media type a status list token is served with.
pub const STATUS_LIST_MEDIA_TYPE: &str = "application/statuslist+jwt";
/// The largest list a verifier decodes, in bytes after decompression
/// (16 MiB: 134 million one-bit statuses).
pub const MAX_DECODED_LEN: usize = 16 * 1024 * 1024;

/// The longest status list token a verifier reads (a list of a million
/// random one-bit statuses compresses to about 128 KiB).
pub const MAX_LIST_TOKEN_LEN: usize = 4 * 1024 * 1024;

/// The token is valid.
pub const VALID: u8 = 0;
/// The token is revoked, for good.
pub const INVALID: u8 = 1;
/// The token is suspended (it may become valid again).
pub const SUSPENDED: u8 = 2;

/// What is wrong with a list or an index.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StatusListError {
    /// `bits` is not 1, 2, 4 or 8.
    #[error("bits must be 1, 2, 4 or 8")]
    BadBits,
    /// The index is past the end of the list.
    #[error("index {0} is outside the status list")]
    OutOfRange(u64),
    /// The value does not fit in `bits` bits.
    #[error("status {0} does not fit the list's bits")]
    BadValue(u8),
    /// `lst` is not base64url, not zlib, or too large.
    #[error("the status list is malformed: {0}")]
    Malformed(&'static str),
}

/// A status list: `bits` bits per token.
#[derive(Clone, PartialEq, Eq)]
pub struct StatusList {
    bits: u8,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for StatusList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusList")
            .field("bits", &self.bits)
            .field("len", &self.len())
            .finish()
    }
}

fn check_bits(bits: u8) -> Result<(), StatusListError> {
    if matches!(bits, 1 | 2 | 4 | 8) {
        Ok(())
    } else {
        Err(StatusListError::BadBits)
    }
}

impl StatusList {
    /// A list of `capacity` statuses (rounded up to whole bytes), all
    /// [`VALID`].
    pub fn new(bits: u8, capacity: usize) -> Result<Self, StatusListError> {
        check_bits(bits)?;
        let per_byte = 8 / usize::from(bits);
        Ok(Self {
            bits,
            bytes: vec![0; capacity.div_ceil(per_byte)],
        })
    }

    /// Bits per status.
    pub fn bits(&self) -> u8 {
        self.bits
    }

    /// How many statuses the list holds.
    pub fn len(&self) -> usize {
        self.bytes.len() * (8 / usize::from(self.bits))
    }

    /// Whether the list holds no status at all.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn locate(&self, idx: u64) -> Result<(usize, u32), StatusListError> {
        let per_byte = 8 / u64::from(self.bits);
        let byte = usize::try_from(idx / per_byte)
            .ok()
            .filter(|b| *b < self.bytes.len())
            .ok_or(StatusListError::OutOfRange(idx))?;
        // Least-significant bits first within each byte.
        let shift = u32::try_from((idx % per_byte) * u64::from(self.bits))
            .map_err(|_| StatusListError::OutOfRange(idx))?;
        Ok((byte, shift))
    }

    fn mask(&self) -> u8 {
        if self.bits == 8 {
            0xff
        } else {
            (1u8 << self.bits) - 1
        }
    }

    /// The status at `idx`.
    pub fn get(&self, idx: u64) -> Result<u8, StatusListError> {
        let (byte, shift) = self.locate(idx)?;
        Ok((self.bytes[byte] >> shift) & self.mask())
    }

    /// Set the status at `idx`.
    pub fn set(&mut self, idx: u64, value: u8) -> Result<(), StatusListError> {
        if value > self.mask() {
            return Err(StatusListError::BadValue(value));
        }
        let (byte, shift) = self.locate(idx)?;
        let mask = self.mask();
        let slot = &mut self.bytes[byte];
        *slot = (*slot & !(mask << shift)) | (value << shift);
        Ok(())
    }

    /// The `lst` member: zlib, then base64url without padding.
    pub fn encode(&self) -> String {
        let mut encoder = ZlibEncoder::new(Vec::new(), Compression::best());
        // Writing to a Vec cannot fail.
        let compressed = encoder
            .write_all(&self.bytes)
            .and_then(|()| encoder.finish())
            .unwrap_or_default();
        URL_SAFE_NO_PAD.encode(compressed)
    }

    /// A list from its `bits` and `lst` members, refusing anything that
    /// inflates past [`MAX_DECODED_LEN`].
    pub fn decode(bits: u8, lst: &str) -> Result<Self, StatusListError> {
        check_bits(bits)?;
        // Base64 of the largest acceptable compressed list is far below
        // this; a longer member is refused before decoding.
        if lst.len() > MAX_DECODED_LEN {
            return Err(StatusListError::Malformed("lst is too long"));
        }
        let compressed = URL_SAFE_NO_PAD
            .decode(lst)
            .map_err(|_| StatusListError::Malformed("lst is not base64url"))?;
        let mut bytes = Vec::new();
        ZlibDecoder::new(compressed.as_slice())
            .take(MAX_DECODED_LEN as u64 + 1)
            .read_to_end(&mut bytes)
            .map_err(|_| StatusListError::Malformed("lst is not zlib"))?;
        if bytes.len() > MAX_DECODED_LEN {
            return Err(StatusListError::Malformed("the list is too large"));
        }
        Ok(Self { bits, bytes })
    }
}

/// The `status` claim of a token (the draft's section 6.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusClaim {
    /// Where the token's status is.
    pub status_list: StatusReference,
}

/// A token's entry in a status list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReference {
    /// The index of the token's status.
    pub idx: u64,
    /// The URI of the status list token.
    pub uri: String,
}

/// The claims of a status list token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusListTokenClaims {
    /// The list's URI: equal to the `uri` in the tokens that point at it.
    pub sub: String,
    /// When it was issued.
    pub iat: i64,
    /// When it expires: a verifier must fetch it again before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    /// How long, in seconds, a verifier may cache it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<u64>,
    /// The list.
    pub status_list: StatusListClaim,
}

/// The `status_list` member of a status list token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusListClaim {
    /// Bits per status.
    pub bits: u8,
    /// The compressed, encoded list.
    pub lst: String,
}

impl StatusListClaim {
    /// The claim for `list`.
    pub fn of(list: &StatusList) -> Self {
        Self {
            bits: list.bits(),
            lst: list.encode(),
        }
    }

    /// The list this claim carries (bounded, see [`StatusList::decode`]).
    pub fn list(&self) -> Result<StatusList, StatusListError> {
        StatusList::decode(self.bits, &self.lst)
    }
}

/// Why a status list token was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ListTokenError {
    /// Not a JWS, an algorithm that is not accepted, an unknown key, a bad
    /// signature.
    #[error(transparent)]
    Jose(#[from] JoseError),
    /// `typ` is not `statuslist+jwt`.
    #[error("the token is not a status list token (typ is not statuslist+jwt)")]
    WrongType,
    /// The claims are not a status list token's.
    #[error("the status list token's claims are malformed")]
    BadClaims,
    /// `sub` is not the URI the list was fetched from.
    #[error("the status list token is for another list")]
    WrongSubject,
    /// No `exp`, or it has passed.
    #[error("the status list token has expired (or has no exp)")]
    Expired,
    /// `iat` is in the future.
    #[error("the status list token was issued in the future")]
    NotYetValid,
    /// The list itself.
    #[error(transparent)]
    List(#[from] StatusListError),
}

/// A status list token, verified.
#[derive(Debug, Clone)]
pub struct VerifiedStatusList {
    /// The statuses.
    pub list: StatusList,
    /// When it was issued.
    pub iat: i64,
    /// When it expires.
    pub exp: i64,
    /// How long it may be cached, if said.
    pub ttl: Option<u64>,
}

/// Verify the status list token `token`, fetched from `uri`, at `now`
/// (seconds since the epoch) with `leeway` seconds of clock tolerance:
/// `typ: statuslist+jwt`, signed by one of `keys` with the algorithm pinned
/// to that key, `sub` equal to `uri`, `iat` not in the future and `exp`
/// present and not passed; the list decoded within [`MAX_DECODED_LEN`].
pub fn verify_list_token(
    token: &str,
    keys: &KeySet,
    uri: &str,
    now: i64,
    leeway: i64,
) -> Result<VerifiedStatusList, ListTokenError> {
    let jws = UnverifiedJws::parse_up_to(token, MAX_LIST_TOKEN_LEN)?;
    jws.algorithm()?;
    let typ = jws.header().typ.as_deref().unwrap_or_default();
    if !(typ.eq_ignore_ascii_case(STATUS_LIST_TYP)
        || typ.eq_ignore_ascii_case(STATUS_LIST_MEDIA_TYPE))
    {
        return Err(ListTokenError::WrongType);
    }
    let payload = jws.verified_payload(keys)?;
    let claims: StatusListTokenClaims =
        serde_json::from_slice(&payload).map_err(|_| ListTokenError::BadClaims)?;
    if claims.sub != uri {
        return Err(ListTokenError::WrongSubject);
    }
    if claims.iat > now.saturating_add(leeway) {
        return Err(ListTokenError::NotYetValid);
    }
    let exp = claims.exp.ok_or(ListTokenError::Expired)?;
    if exp <= now.saturating_sub(leeway) {
        return Err(ListTokenError::Expired);
    }
    Ok(VerifiedStatusList {
        list: claims.status_list.list()?,
        iat: claims.iat,
        exp,
        ttl: claims.ttl,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn statuses(list: &StatusList, n: u64) -> Vec<u8> {
        (0..n).map(|i| list.get(i).unwrap()).collect()
    }

    #[test]
    fn the_drafts_one_bit_example_decodes() {
        // vectors.md: bits 1, lst eNrbuRgAAhcBXQ -> bytes b9 a3.
        let list = StatusList::decode(1, "eNrbuRgAAhcBXQ").unwrap();
        assert_eq!(list.bytes, [0xb9, 0xa3]);
        assert_eq!(
            statuses(&list, 16),
            [1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1]
        );
        assert_eq!(list.len(), 16);
    }

    #[test]
    fn the_drafts_two_bit_example_decodes() {
        // vectors.md: bits 2, lst eNo76fITAAPfAgc -> bytes c9 44 f9.
        let list = StatusList::decode(2, "eNo76fITAAPfAgc").unwrap();
        assert_eq!(list.bytes, [0xc9, 0x44, 0xf9]);
        assert_eq!(statuses(&list, 12), [1, 2, 0, 3, 0, 1, 0, 1, 1, 2, 3, 3]);
    }

    #[test]
    fn building_the_examples_reproduces_their_bytes() {
        let mut one = StatusList::new(1, 16).unwrap();
        for (i, s) in [1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0, 1]
            .into_iter()
            .enumerate()
        {
            one.set(i as u64, s).unwrap();
        }
        assert_eq!(one.bytes, [0xb9, 0xa3]);
        // Our own encoding decodes back to the same list (compressors may
        // differ byte for byte from the draft's, the content may not).
        assert_eq!(StatusList::decode(1, &one.encode()).unwrap(), one);

        let mut two = StatusList::new(2, 12).unwrap();
        for (i, s) in [1, 2, 0, 3, 0, 1, 0, 1, 1, 2, 3, 3].into_iter().enumerate() {
            two.set(i as u64, s).unwrap();
        }
        assert_eq!(two.bytes, [0xc9, 0x44, 0xf9]);
    }

    #[test]
    fn indexes_and_values_are_checked() {
        let mut list = StatusList::new(1, 10).unwrap();
        assert_eq!(list.len(), 16, "rounded up to whole bytes");
        assert_eq!(list.get(16), Err(StatusListError::OutOfRange(16)));
        assert_eq!(list.set(16, 1), Err(StatusListError::OutOfRange(16)));
        assert_eq!(list.set(3, 2), Err(StatusListError::BadValue(2)));
        assert_eq!(
            list.get(u64::MAX),
            Err(StatusListError::OutOfRange(u64::MAX))
        );
        list.set(3, INVALID).unwrap();
        list.set(3, VALID).unwrap();
        assert_eq!(list.get(3), Ok(VALID), "a status can be set back");
        assert_eq!(StatusList::new(3, 8), Err(StatusListError::BadBits));
        let mut eight = StatusList::new(8, 2).unwrap();
        eight.set(1, 0xff).unwrap();
        assert_eq!(eight.get(1), Ok(0xff));
        assert_eq!(eight.get(0), Ok(0));
    }

    #[test]
    fn hostile_lists_are_refused() {
        assert!(StatusList::decode(1, "not base64!").is_err());
        assert!(StatusList::decode(1, "AAAA").is_err(), "not zlib");
        assert_eq!(
            StatusList::decode(5, "eNrbuRgAAhcBXQ"),
            Err(StatusListError::BadBits)
        );
        // 32 MiB of zeros compresses to a few dozen KiB: a zip bomb for a
        // verifier that inflates without a bound.
        let bomb = StatusList {
            bits: 1,
            bytes: vec![0; 2 * MAX_DECODED_LEN],
        };
        let lst = bomb.encode();
        assert!(lst.len() < 128 * 1024);
        assert_eq!(
            StatusList::decode(1, &lst),
            Err(StatusListError::Malformed("the list is too large"))
        );
    }

    #[test]
    fn a_million_tokens_compress_to_little_while_few_are_revoked() {
        let mut list = StatusList::new(1, 1 << 20).unwrap();
        for idx in (0..(1u64 << 20)).step_by(1000) {
            list.set(idx, INVALID).unwrap();
        }
        let lst = list.encode();
        assert!(lst.len() < 16 * 1024, "{} bytes", lst.len());
        let back = StatusList::decode(1, &lst).unwrap();
        assert_eq!(back.get(2000), Ok(INVALID));
        assert_eq!(back.get(2001), Ok(VALID));
    }

    #[test]
    fn claims_have_the_drafts_shape() {
        let claim = StatusClaim {
            status_list: StatusReference {
                idx: 7,
                uri: "https://stint.example/v1/status/abc".into(),
            },
        };
        assert_eq!(
            serde_json::to_value(&claim).unwrap(),
            serde_json::json!({"status_list": {"idx": 7, "uri": "https://stint.example/v1/status/abc"}})
        );
        let token = StatusListTokenClaims {
            sub: "https://stint.example/v1/status/abc".into(),
            iat: 1_000,
            exp: Some(1_600),
            ttl: Some(30),
            status_list: StatusListClaim {
                bits: 1,
                lst: "eNrbuRgAAhcBXQ".into(),
            },
        };
        let json = serde_json::to_value(&token).unwrap();
        assert_eq!(json["status_list"]["bits"], 1);
        assert_eq!(token.status_list.list().unwrap().get(0), Ok(INVALID));
    }

    proptest! {
        #[test]
        fn set_then_get_round_trips_through_the_wire_form(
            bits in prop::sample::select(vec![1u8, 2, 4, 8]),
            writes in prop::collection::vec((0u64..512, any::<u8>()), 0..64),
        ) {
            let mut list = StatusList::new(bits, 512).unwrap();
            let mut expected = vec![0u8; list.len()];
            for (idx, value) in writes {
                let value = value & list.mask();
                list.set(idx, value).unwrap();
                expected[idx as usize] = value;
            }
            let back = StatusList::decode(bits, &list.encode()).unwrap();
            for (idx, value) in expected.iter().enumerate() {
                prop_assert_eq!(back.get(idx as u64).unwrap(), *value);
            }
        }
    }

    mod list_tokens {
        use super::super::*;
        use crate::jose::{Algorithm, SigningKey};
        use ring::rand::SystemRandom;

        const URI: &str = "https://stint.test/v1/status/abc";
        const NOW: i64 = 1_800_000_000;

        fn key() -> SigningKey {
            SigningKey::generate(Algorithm::ES256, &SystemRandom::new())
                .unwrap()
                .0
        }

        fn keys_of(key: &SigningKey) -> KeySet {
            let mut keys = KeySet::new();
            keys.insert(key.verifying_key());
            keys
        }

        fn claims() -> StatusListTokenClaims {
            let mut list = StatusList::new(1, 16).unwrap();
            list.set(3, INVALID).unwrap();
            StatusListTokenClaims {
                sub: URI.into(),
                iat: NOW,
                exp: Some(NOW + 300),
                ttl: Some(60),
                status_list: StatusListClaim::of(&list),
            }
        }

        fn sign(key: &SigningKey, typ: &str, claims: &StatusListTokenClaims) -> String {
            key.sign_jwt(typ, claims, &SystemRandom::new()).unwrap()
        }

        #[test]
        fn a_signed_list_verifies_and_reads_back() {
            let key = key();
            let token = sign(&key, STATUS_LIST_TYP, &claims());
            let verified = verify_list_token(&token, &keys_of(&key), URI, NOW, 0).unwrap();
            assert_eq!(verified.list.get(3), Ok(INVALID));
            assert_eq!(verified.list.get(2), Ok(VALID));
            assert_eq!(
                (verified.iat, verified.exp, verified.ttl),
                (NOW, NOW + 300, Some(60))
            );
        }

        #[test]
        fn every_lie_is_refused() {
            let key = key();
            let keys = keys_of(&key);
            let good = claims();
            let check = |token: &str| verify_list_token(token, &keys, URI, NOW, 5);
            assert_eq!(
                check(&sign(&key, "at+jwt", &good)).unwrap_err(),
                ListTokenError::WrongType
            );
            let other = StatusListTokenClaims {
                sub: "https://stint.test/v1/status/other".into(),
                ..good.clone()
            };
            assert_eq!(
                check(&sign(&key, STATUS_LIST_TYP, &other)).unwrap_err(),
                ListTokenError::WrongSubject
            );
            let expired = StatusListTokenClaims {
                exp: Some(NOW - 6),
                ..good.clone()
            };
            assert_eq!(
                check(&sign(&key, STATUS_LIST_TYP, &expired)).unwrap_err(),
                ListTokenError::Expired
            );
            let no_exp = StatusListTokenClaims {
                exp: None,
                ..good.clone()
            };
            assert_eq!(
                check(&sign(&key, STATUS_LIST_TYP, &no_exp)).unwrap_err(),
                ListTokenError::Expired
            );
            let future = StatusListTokenClaims {
                iat: NOW + 60,
                ..good.clone()
            };
            assert_eq!(
                check(&sign(&key, STATUS_LIST_TYP, &future)).unwrap_err(),
                ListTokenError::NotYetValid
            );
            // Signed by a key the verifier does not hold.
            assert_eq!(
                check(&sign(&self::key(), STATUS_LIST_TYP, &good)).unwrap_err(),
                ListTokenError::Jose(JoseError::UnknownKey)
            );
            // A tampered payload.
            let token = sign(&key, STATUS_LIST_TYP, &good);
            let mut parts: Vec<&str> = token.split('.').collect();
            let forged = URL_SAFE_NO_PAD.encode(
                serde_json::to_vec(&StatusListTokenClaims {
                    status_list: StatusListClaim::of(&StatusList::new(1, 16).unwrap()),
                    ..good.clone()
                })
                .unwrap(),
            );
            parts[1] = &forged;
            assert_eq!(
                check(&parts.join(".")).unwrap_err(),
                ListTokenError::Jose(JoseError::BadSignature)
            );
            // Too long to read.
            let huge = "a".repeat(MAX_LIST_TOKEN_LEN + 1);
            assert_eq!(
                check(&huge).unwrap_err(),
                ListTokenError::Jose(JoseError::TooLong)
            );
        }
    }
}
