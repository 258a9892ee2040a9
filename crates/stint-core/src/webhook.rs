//! Webhook signatures: how the broker signs the events it posts, and how a
//! receiver checks them.
//!
//! Every delivery carries a [`SIGNATURE_HEADER`] of the form
//!
//! ```text
//! stint-signature: t=<unix seconds>,v1=<lowercase hex HMAC-SHA256(secret, "<t>.<raw body>")>
//! ```
//!
//! The timestamp is signed together with the body (as Stripe does), so a
//! captured delivery cannot be replayed once it is older than the
//! receiver's tolerance. The broker signs every attempt afresh, so a retried
//! delivery carries the time of that attempt. A header may carry more than
//! one `v1` entry (for instance while a secret is being rotated); it is
//! accepted when any one of them matches. Unknown keys are ignored so that
//! later schemes can be added alongside `v1`.
//!
//! Plain functions with no I/O and no clock: the caller passes the time.
//!
//! ```
//! use stint_core::webhook::{sign, verify, DEFAULT_TOLERANCE_SECS};
//!
//! let secret = b"0123456789abcdef0123456789abcdef";
//! let body = br#"{"text":"hello"}"#;
//! let header = sign(secret, 1_700_000_000, body);
//! assert!(verify(secret, &header, body, 1_700_000_010, DEFAULT_TOLERANCE_SECS).is_ok());
//! assert!(verify(secret, &header, b"{}", 1_700_000_010, DEFAULT_TOLERANCE_SECS).is_err());
//! ```

use ring::hmac;
use thiserror::Error;

/// The HTTP header that carries the signature.
pub const SIGNATURE_HEADER: &str = "stint-signature";

/// The shortest webhook secret the broker accepts, in bytes. HMAC-SHA256's
/// security rests on the key: 32 bytes (256 bits) of randomness, for
/// instance `openssl rand -hex 32` (64 characters), leaves nothing to guess.
pub const MIN_SECRET_LEN: usize = 32;

/// A reasonable tolerance for [`verify`]: five minutes either way covers
/// modest clock skew and queueing while keeping the replay window short.
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

/// The longest signature header [`verify`] reads. A timestamp and a few
/// signatures need about 90 bytes each; anything much longer is not ours.
pub const MAX_HEADER_LEN: usize = 512;

/// The length of one `v1` value: SHA-256's 32 bytes, hex-encoded.
const V1_HEX_LEN: usize = 64;

/// The most digits a timestamp may have (enough for any `i64` second
/// count we will see, and short enough never to overflow).
const MAX_TIMESTAMP_DIGITS: usize = 18;

/// Why a signature header was refused. The messages never include the
/// secret, the presented signature or the expected one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SignatureError {
    /// The header is not of the form `t=<seconds>,v1=<hex>[,v1=<hex>...]`.
    #[error("malformed {SIGNATURE_HEADER} header: {0}")]
    Malformed(&'static str),
    /// The signature matches but its timestamp is outside the tolerance
    /// (a replay, or a clock that is off).
    #[error(
        "the {SIGNATURE_HEADER} timestamp is too far from now; check both clocks, or this is a replayed delivery"
    )]
    Stale,
    /// No signature in the header matches the body under this secret.
    #[error("the {SIGNATURE_HEADER} signature does not match the body; check the shared secret")]
    Mismatch,
}

/// The [`SIGNATURE_HEADER`] value for `body` sent at `timestamp` (Unix
/// seconds): `t=<timestamp>,v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let tag = hmac::sign(&key, &signed_payload(timestamp, body));
    format!("t={timestamp},v1={}", hex::encode(tag.as_ref()))
}

/// Check a [`SIGNATURE_HEADER`] value against the raw request body.
///
/// The header is parsed strictly: at most [`MAX_HEADER_LEN`] bytes of
/// comma-separated `key=value` entries, exactly one `t` (decimal digits
/// only) and at least one `v1` (64 lowercase hex digits); other keys are
/// ignored. The signatures are compared in constant time. A header whose
/// signature matches but whose timestamp is more than `tolerance_secs`
/// before or after `now` is [`SignatureError::Stale`]; a negative tolerance
/// counts as zero.
///
/// `body` must be the bytes as received, before any JSON parsing.
pub fn verify(
    secret: &[u8],
    header: &str,
    body: &[u8],
    now: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    let parsed = parse(header)?;
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    let payload = signed_payload(parsed.timestamp, body);
    // Signature first, then time: `Stale` then means "genuine but old",
    // which tells an operator to look at clocks rather than secrets, and a
    // forger learns nothing from either answer.
    let mut matched = false;
    for candidate in &parsed.signatures {
        // Every candidate is checked, so the time taken does not depend on
        // which one matched.
        matched |= hmac::verify(&key, &payload, candidate).is_ok();
    }
    if !matched {
        return Err(SignatureError::Mismatch);
    }
    let tolerance = u64::try_from(tolerance_secs).unwrap_or(0);
    if now.abs_diff(parsed.timestamp) > tolerance {
        return Err(SignatureError::Stale);
    }
    Ok(())
}

/// The bytes the MAC covers: the decimal timestamp, a dot, the raw body.
fn signed_payload(timestamp: i64, body: &[u8]) -> Vec<u8> {
    let prefix = format!("{timestamp}.");
    let mut payload = Vec::with_capacity(prefix.len() + body.len());
    payload.extend_from_slice(prefix.as_bytes());
    payload.extend_from_slice(body);
    payload
}

/// A header's content, parsed but not yet checked.
struct ParsedHeader {
    timestamp: i64,
    signatures: Vec<[u8; 32]>,
}

fn parse(header: &str) -> Result<ParsedHeader, SignatureError> {
    if header.len() > MAX_HEADER_LEN {
        return Err(SignatureError::Malformed("too long"));
    }
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for entry in header.split(',') {
        let (key, value) = entry
            .trim()
            .split_once('=')
            .ok_or(SignatureError::Malformed("every entry must be key=value"))?;
        match key {
            "t" => {
                if timestamp.is_some() {
                    return Err(SignatureError::Malformed("more than one t"));
                }
                timestamp = Some(parse_timestamp(value)?);
            }
            "v1" => signatures.push(parse_v1(value)?),
            // Room for later schemes; a receiver that knows only v1 still
            // needs a v1 entry to match.
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed("no t entry"))?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed("no v1 entry"));
    }
    Ok(ParsedHeader {
        timestamp,
        signatures,
    })
}

fn parse_timestamp(value: &str) -> Result<i64, SignatureError> {
    const BAD: SignatureError = SignatureError::Malformed("t must be Unix seconds in decimal");
    // Digits only: no sign, no spaces, no leading `+` that `str::parse`
    // would accept.
    if value.is_empty()
        || value.len() > MAX_TIMESTAMP_DIGITS
        || !value.bytes().all(|b| b.is_ascii_digit())
    {
        return Err(BAD);
    }
    value.parse().map_err(|_| BAD)
}

fn parse_v1(value: &str) -> Result<[u8; 32], SignatureError> {
    const BAD: SignatureError = SignatureError::Malformed("v1 must be 64 lowercase hex digits");
    if value.len() != V1_HEX_LEN || value.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(BAD);
    }
    let mut tag = [0u8; 32];
    hex::decode_to_slice(value, &mut tag).map_err(|_| BAD)?;
    Ok(tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"stint-webhook-test-secret-32byte";
    const BODY: &[u8] =
        br#"{"id":"evt","type":"approval.requested","text":"deploy needs approval"}"#;
    const T: i64 = 1_700_000_000;

    #[test]
    fn known_answer() {
        // Computed once outside Rust, independently of ring:
        //   printf '%s' '1700000000.{"id":"evt","type":"approval.requested","text":"deploy needs approval"}' \
        //     | openssl dgst -sha256 -hmac 'stint-webhook-test-secret-32byte'
        // and cross-checked with Python's hmac.new(secret, payload, hashlib.sha256).
        assert_eq!(SECRET.len(), MIN_SECRET_LEN);
        let expected =
            "t=1700000000,v1=acdefd31faf1bc8f3292856ff3a308f1346cfaad41eee53aa973242bb99a7047";
        assert_eq!(sign(SECRET, T, BODY), expected);
        assert_eq!(verify(SECRET, expected, BODY, T, 0), Ok(()));
    }

    #[test]
    fn round_trip() {
        let header = sign(SECRET, T, BODY);
        assert_eq!(verify(SECRET, &header, BODY, T + 10, 300), Ok(()));
        assert_eq!(verify(SECRET, &header, BODY, T - 10, 300), Ok(()));
        // Exactly at the edge of the tolerance is still fine.
        assert_eq!(verify(SECRET, &header, BODY, T + 300, 300), Ok(()));
        // An empty body signs and verifies too.
        let empty = sign(SECRET, T, b"");
        assert_eq!(verify(SECRET, &empty, b"", T, 0), Ok(()));
    }

    #[test]
    fn tampered_body_is_a_mismatch() {
        let header = sign(SECRET, T, BODY);
        let mut tampered = BODY.to_vec();
        tampered[10] ^= 1;
        assert_eq!(
            verify(SECRET, &header, &tampered, T, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify(SECRET, &header, &BODY[..BODY.len() - 1], T, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn wrong_secret_is_a_mismatch() {
        let header = sign(SECRET, T, BODY);
        let other = b"another-webhook-secret-of-32-byt";
        assert_eq!(
            verify(other, &header, BODY, T, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn changed_timestamp_is_a_mismatch() {
        // Moving t to make an old delivery look fresh breaks the MAC.
        let header = sign(SECRET, T, BODY);
        let moved = header.replace("t=1700000000", "t=1700000900");
        assert_eq!(
            verify(SECRET, &moved, BODY, T + 900, 300),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn stale_and_future_timestamps_are_refused() {
        let header = sign(SECRET, T, BODY);
        assert_eq!(
            verify(SECRET, &header, BODY, T + 301, 300),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify(SECRET, &header, BODY, T - 301, 300),
            Err(SignatureError::Stale)
        );
        // A negative tolerance is zero.
        assert_eq!(
            verify(SECRET, &header, BODY, T + 1, -5),
            Err(SignatureError::Stale)
        );
        // Extreme clocks do not overflow.
        assert_eq!(verify(SECRET, &header, BODY, 0, i64::MAX), Ok(()));
        assert_eq!(verify(SECRET, &header, BODY, i64::MAX, i64::MAX), Ok(()));
        assert_eq!(
            verify(SECRET, &header, BODY, i64::MIN, 300),
            Err(SignatureError::Stale)
        );
    }

    #[test]
    fn any_matching_v1_is_enough_and_unknown_keys_are_ignored() {
        let good = sign(SECRET, T, BODY);
        let good_v1 = good.split_once(",v1=").map(|(_, v)| v).unwrap();
        let other = sign(b"another-webhook-secret-of-32-byt", T, BODY);
        let other_v1 = other.split_once(",v1=").map(|(_, v)| v).unwrap();
        let rotated = format!("t={T},v1={other_v1},v1={good_v1}");
        assert_eq!(verify(SECRET, &rotated, BODY, T, 0), Ok(()));
        let extended = format!("v0=whatever,t={T}, v1={good_v1},v2=future");
        assert_eq!(verify(SECRET, &extended, BODY, T, 0), Ok(()));
    }

    #[test]
    fn malformed_headers_are_refused() {
        let good = sign(SECRET, T, BODY);
        let v1 = good.split_once(",v1=").map(|(_, v)| v).unwrap().to_owned();
        let cases = [
            String::new(),
            format!("v1={v1}"),                              // missing t
            format!("t={T}"),                                // missing v1
            format!("t=,v1={v1}"),                           // empty t
            format!("t=abc,v1={v1}"),                        // non-numeric t
            format!("t=-1700000000,v1={v1}"),                // signed t
            format!("t=+1700000000,v1={v1}"),                // signed t
            format!("t=1e9,v1={v1}"),                        // not decimal
            format!("t=99999999999999999999,v1={v1}"),       // too many digits
            format!("t={T},t={T},v1={v1}"),                  // two t
            format!("t={T},v1={}", &v1[..63]),               // short hex
            format!("t={T},v1={v1}00"),                      // long hex
            format!("t={T},v1={}", v1.replace('a', "g")),    // not hex
            format!("t={T},v1={}", v1.to_ascii_uppercase()), // uppercase hex
            format!("t={T},v1={v1},garbage"),                // entry without '='
            format!("t={T};v1={v1}"),                        // wrong separator
            format!("t={T},v1={v1},x={}", "a".repeat(600)),  // huge header
        ];
        for header in &cases {
            match verify(SECRET, header, BODY, T, 300) {
                Err(SignatureError::Malformed(_)) => {}
                other => panic!("{header:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn messages_do_not_leak_signatures() {
        let good = sign(SECRET, T, BODY);
        let v1 = good.split_once(",v1=").map(|(_, v)| v).unwrap();
        let secret_text = std::str::from_utf8(SECRET).unwrap();
        for error in [
            verify(SECRET, &good, b"other", T, 300).unwrap_err(),
            verify(SECRET, &good, BODY, T + 1000, 300).unwrap_err(),
            verify(SECRET, "t=1,v1=zz", BODY, T, 300).unwrap_err(),
        ] {
            let message = error.to_string();
            assert!(!message.contains(v1), "{message}");
            assert!(!message.contains(secret_text), "{message}");
        }
    }
}
