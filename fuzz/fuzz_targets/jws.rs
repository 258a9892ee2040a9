//! Compact JWS: parsing and verification never panic, and nothing the
//! fuzzer makes verifies under a key it does not have.
#![no_main]
use libfuzzer_sys::fuzz_target;
use ring::rand::SystemRandom;
use std::sync::OnceLock;
use stint_core::jose::{Algorithm, KeySet, SigningKey, UnverifiedJws};

fn keys() -> &'static KeySet {
    static KEYS: OnceLock<KeySet> = OnceLock::new();
    KEYS.get_or_init(|| {
        let rng = SystemRandom::new();
        let mut keys = KeySet::new();
        for alg in [Algorithm::ES256, Algorithm::EdDSA] {
            let (key, _) = SigningKey::generate(alg, &rng).expect("key generation");
            keys.insert(key.verifying_key());
        }
        keys
    })
}

fuzz_target!(|token: &str| {
    if let Ok(jws) = UnverifiedJws::parse(token) {
        let _ = jws.algorithm();
        assert!(
            jws.verified_payload(keys()).is_err(),
            "a token the fuzzer made verified under a fresh key"
        );
    }
});
