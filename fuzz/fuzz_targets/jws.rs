//! Compact JWS: parsing and verification never panic, and a token verifies
//! (by its `kid` in the fixed key set, or under any one of the keys) only
//! if what it signs, `header.payload`, is what the genuine tokens in the
//! seed corpus sign: the fixed keys' ids are in the seeds, so the fuzzer
//! reaches the signature checks and mutates real signatures.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::collections::HashSet;
use std::sync::OnceLock;
use stint_core::jose::{UnverifiedJws, VerifyingKey};

fn genuine() -> &'static HashSet<String> {
    static GENUINE: OnceLock<HashSet<String>> = OnceLock::new();
    GENUINE.get_or_init(|| {
        stint_fuzz::genuine_jws()
            .iter()
            .map(|(_, header, payload)| stint_fuzz::signing_input(header, payload))
            .collect()
    })
}

fn each_key() -> &'static [VerifyingKey] {
    static EACH: OnceLock<Vec<VerifyingKey>> = OnceLock::new();
    EACH.get_or_init(|| {
        let keys = stint_fuzz::keys();
        [
            keys.ed25519.verifying_key(),
            VerifyingKey::from_jwk(&keys.es256_jwk).expect("ES256"),
            VerifyingKey::from_jwk(&keys.rsa_jwk).expect("RS256"),
        ]
        .into()
    })
}

fuzz_target!(|token: &str| {
    let Ok(jws) = UnverifiedJws::parse(token) else {
        return;
    };
    let _ = jws.algorithm();
    let signed = token.rsplit_once('.').map_or("", |(input, _)| input);
    let verified = jws.clone().verified_payload(&stint_fuzz::keys().set);
    let by_one = each_key()
        .iter()
        .any(|key| jws.clone().verified_payload_with(key).is_ok());
    if verified.is_ok() || by_one {
        assert!(
            genuine().contains(signed),
            "a token that signs something no key signed verified: {token}"
        );
    }
    if let Ok(payload) = verified {
        assert_eq!(payload, jws.unverified_payload());
    }
});
