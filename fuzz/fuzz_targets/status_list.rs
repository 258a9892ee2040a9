//! Token Status Lists: decoding never panics and stays within its bound;
//! a decoded list encodes and decodes to itself; a list built from chosen
//! statuses reads them back after encoding; and a status list token
//! verifies only with the right key, type, subject and times.
#![no_main]
use libfuzzer_sys::fuzz_target;
use stint_core::jose::Algorithm;
use stint_core::status_list::{
    MAX_DECODED_LEN, StatusList, StatusListClaim, StatusListTokenClaims, verify_list_token,
};
use stint_fuzz::{LIST_URI, NOW};

fuzz_target!(|data: &[u8]| {
    let (control, fields) = stint_fuzz::fields(data);
    let bits = [1u8, 2, 4, 8][usize::from(control & 3)];
    match control >> 6 {
        // A list member as a verifier receives it.
        0 => {
            let lst = stint_fuzz::text(&fields, 0);
            if let Ok(list) = StatusList::decode(bits, lst) {
                assert!(list.len() <= MAX_DECODED_LEN * 8);
                let again = StatusList::decode(bits, &list.encode()).expect("its own encoding");
                assert_eq!(again, list);
                let mask = if bits == 8 { 0xff } else { (1u8 << bits) - 1 };
                for idx in [0, 1, list.len() as u64 / 2, list.len() as u64, u64::MAX] {
                    match list.get(idx) {
                        Ok(status) => assert!(idx < list.len() as u64 && status <= mask),
                        Err(_) => assert!(idx >= list.len() as u64),
                    }
                }
            }
        }
        // Statuses chosen by the input, set, encoded, decoded.
        1 => {
            let statuses = fields.get(0).copied().unwrap_or_default();
            let statuses = &statuses[..statuses.len().min(4096)];
            let mask = if bits == 8 { 0xff } else { (1u8 << bits) - 1 };
            let mut list = StatusList::new(bits, statuses.len()).expect("valid bits");
            if bits < 8 && !statuses.is_empty() {
                assert!(
                    list.set(0, mask + 1).is_err(),
                    "a status wider than the list"
                );
            }
            for (idx, status) in statuses.iter().enumerate() {
                list.set(idx as u64, status & mask).expect("in range");
            }
            assert!(list.set(list.len() as u64, 0).is_err());
            let decoded = StatusListClaim::of(&list).list().expect("round trip");
            for (idx, status) in statuses.iter().enumerate() {
                assert_eq!(decoded.get(idx as u64), Ok(status & mask));
            }
            assert_eq!(decoded, list);
        }
        // A status list token: the fuzzer's claims signed, or its whole
        // token (the seeds carry real ones).
        _ => {
            let keys = stint_fuzz::keys();
            let now = NOW + i64::from(control & 0x3c) * 60 - 1000;
            let leeway = i64::from(control & 0x0c) * 10;
            let (token, ours) = if control >> 6 == 2 {
                let claims = fields.get(0).copied().unwrap_or_default();
                let typ = if control & 1 == 0 {
                    "statuslist+jwt"
                } else {
                    "JWT"
                };
                (keys.sign_jwt(Algorithm::EdDSA, typ, claims), true)
            } else {
                (stint_fuzz::text(&fields, 0).to_owned(), false)
            };
            let Ok(verified) = verify_list_token(&token, &keys.set, LIST_URI, now, leeway) else {
                return;
            };
            assert!(verified.iat <= now + leeway && verified.exp > now - leeway);
            if ours {
                assert_eq!(
                    control & 1,
                    0,
                    "a token that is not a statuslist+jwt verified"
                );
                let payload = fields.get(0).copied().unwrap_or_default();
                let claims: StatusListTokenClaims =
                    serde_json::from_slice(payload).expect("verified claims parse");
                assert_eq!(claims.sub, LIST_URI);
                assert_eq!(claims.status_list.list().as_ref(), Ok(&verified.list));
            }
        }
    }
});
