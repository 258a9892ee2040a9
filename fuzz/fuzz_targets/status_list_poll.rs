//! The SDK's status list poller: any response body is read without a
//! panic; a list is kept only from a `statuslist+jwt` signed by the
//! verifier's keys for the list's URI and valid now, and only one the seed
//! corpus's genuine tokens (or the claims signed here) carry; "recent"
//! means signed within half its ttl (plus leeway); every index reads
//! without a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use stint_client::fuzzing::poll_status_list;
use stint_core::jose::Algorithm;
use stint_fuzz::{LIST_URI, NOW};

fuzz_target!(|data: &[u8]| {
    let (control, fields) = stint_fuzz::fields(data);
    let keys = stint_fuzz::keys();
    let now = NOW + i64::from(control & 0x3f) * 10 - 100;
    let leeway = i64::from(control >> 6) * 5;
    let payload = fields.first().copied().unwrap_or_default();
    let signed;
    let body: &[u8] = if control & 0x40 != 0 {
        signed = keys.sign_jwt(Algorithm::EdDSA, "statuslist+jwt", payload);
        signed.as_bytes()
    } else {
        payload
    };
    let Ok(polled) = poll_status_list(body, &keys.set, LIST_URI, now, leeway) else {
        return;
    };
    assert!(polled.iat <= now + leeway && polled.exp > now - leeway);
    let max_age = i128::from(polled.ttl / 2) + i128::from(leeway);
    assert_eq!(
        polled.recent,
        i128::from(now) - i128::from(polled.iat) <= max_age
    );
    for idx in [0, 3, polled.list.len() as u64, u64::MAX] {
        let _ = polled.list.get(idx);
    }
    if control & 0x40 == 0 {
        // A body the fuzzer wrote: only a genuine token from the corpus.
        let token = std::str::from_utf8(body).expect("text").trim();
        let signed_part = token.rsplit_once('.').map_or("", |(input, _)| input);
        assert!(
            stint_fuzz::genuine_status_lists()
                .iter()
                .any(|(header, claims)| stint_fuzz::signing_input(header, claims) == signed_part),
            "a status list no key signed was kept"
        );
    }
});
