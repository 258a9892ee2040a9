//! Webhook signatures: any header is parsed without a panic; a header
//! verifies only if one of its `v1` entries is the true HMAC of its `t`
//! and the body; a header the broker signs verifies at its time and not
//! for another body or outside the tolerance.
#![no_main]
use libfuzzer_sys::fuzz_target;
use stint_core::webhook::{SignatureError, sign, verify};

const SECRET: &[u8] = b"stint-webhook-fuzz-secret-32byte";

fuzz_target!(|data: &[u8]| {
    let (control, fields) = stint_fuzz::fields(data);
    let header = stint_fuzz::text(&fields, 0);
    let body = fields.get(1).copied().unwrap_or_default();
    let tolerance = i64::from(control);
    let now = 1_700_000_000;
    if verify(SECRET, header, body, now, tolerance).is_ok() {
        // Genuine: some entry is exactly what the broker would sign.
        let t = header
            .split(',')
            .find_map(|entry| entry.trim().strip_prefix("t="))
            .and_then(|t| t.parse::<i64>().ok())
            .expect("a verified header has its t");
        let genuine = sign(SECRET, t, body);
        let mac = genuine.rsplit_once("v1=").expect("v1").1;
        assert!(
            header
                .split(',')
                .any(|entry| entry.trim() == format!("v1={mac}")),
            "{header:?} verified without the true signature"
        );
        assert!(now.abs_diff(t) <= control.into());
    }
    // The broker's own header, at a time the input picks.
    let t = i64::from_le_bytes(
        fields
            .get(2)
            .and_then(|f| f.get(..8))
            .and_then(|f| f.try_into().ok())
            .unwrap_or([0; 8]),
    )
    .rem_euclid(4_000_000_000);
    let signed = sign(SECRET, t, body);
    assert_eq!(verify(SECRET, &signed, body, t, 0), Ok(()));
    assert_eq!(
        verify(
            SECRET,
            &signed,
            body,
            t.saturating_add(tolerance + 1),
            tolerance
        ),
        Err(SignatureError::Stale)
    );
    let mut other = body.to_vec();
    other.push(b' ');
    assert_eq!(
        verify(SECRET, &signed, &other, t, 0),
        Err(SignatureError::Mismatch)
    );
    assert_eq!(
        verify(b"another-secret-of-thirty-two-byt", &signed, body, t, 0),
        Err(SignatureError::Mismatch)
    );
    // Extra entries of unknown schemes do not change the answer.
    let extended = format!("v0=x,{signed},v2=y");
    assert_eq!(verify(SECRET, &extended, body, t, 0), Ok(()));
});
