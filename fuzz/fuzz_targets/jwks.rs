//! JWK sets and `VerifyingKey::from_jwk`: parsing never panics; a key is
//! built only with the JWK's `kid`, for the algorithm its type implies and
//! its `alg` names; a set serializes and parses back to itself; and a key
//! from the set verifies one of the genuine tokens only if it holds the
//! genuine key's material (so no odd encoding of another key is taken for
//! it).
#![no_main]
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use stint_core::jose::{Algorithm, UnverifiedJws, VerifyingKey, thumbprint};
use stint_proto::{Jwk, JwkKey, JwkSet};

/// A key's material, decoded and without leading zero bytes.
fn material(key: &JwkKey) -> Option<Vec<Vec<u8>>> {
    let decode = |text: &str| {
        URL_SAFE_NO_PAD.decode(text).ok().map(|bytes| {
            bytes
                .into_iter()
                .skip_while(|b| *b == 0)
                .collect::<Vec<u8>>()
        })
    };
    Some(match key {
        JwkKey::Ec { crv, x, y } => vec![crv.as_bytes().to_vec(), decode(x)?, decode(y)?],
        JwkKey::Okp { crv, x } => vec![crv.as_bytes().to_vec(), decode(x)?],
        JwkKey::Rsa { n, e } => vec![decode(n)?, decode(e)?],
    })
}

fn genuine() -> &'static [(String, Algorithm, Vec<Vec<u8>>)] {
    static GENUINE: OnceLock<Vec<(String, Algorithm, Vec<Vec<u8>>)>> = OnceLock::new();
    GENUINE.get_or_init(|| {
        let keys = stint_fuzz::keys();
        let jwks = [
            keys.ed25519.public_jwk().clone(),
            keys.es256_jwk.clone(),
            keys.rsa_jwk.clone(),
        ];
        stint_fuzz::genuine_jws()
            .into_iter()
            .skip(1)
            .zip(jwks)
            .map(|((alg, header, payload), jwk)| {
                let token = keys.sign(alg, header.as_bytes(), payload.as_bytes());
                (token, alg, material(&jwk.key).expect("genuine material"))
            })
            .collect()
    })
}

fn check(jwk: &Jwk) {
    let _ = thumbprint(&jwk.key);
    let Ok(key) = VerifyingKey::from_jwk(jwk) else {
        return;
    };
    assert_eq!(Some(key.kid()), jwk.kid.as_deref());
    let implied = match &jwk.key {
        JwkKey::Ec { .. } => Algorithm::ES256,
        JwkKey::Okp { .. } => Algorithm::EdDSA,
        JwkKey::Rsa { .. } => Algorithm::RS256,
    };
    assert_eq!(key.alg(), implied);
    assert!(jwk.alg.as_deref().is_none_or(|alg| alg == implied.as_str()));
    assert!(jwk.key_use.as_deref().is_none_or(|u| u == "sig"));
    for (token, alg, material_of_signer) in genuine() {
        let jws = UnverifiedJws::parse(token).expect("a genuine token parses");
        if key.verify(&jws).is_ok() {
            assert_eq!(key.alg(), *alg);
            assert_eq!(
                material(&jwk.key).as_ref(),
                Some(material_of_signer),
                "another key verified a genuine token"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(set) = serde_json::from_slice::<JwkSet>(data) {
        let again: JwkSet = serde_json::from_str(&serde_json::to_string(&set).expect("serializes"))
            .expect("parses");
        assert_eq!(again, set);
        set.keys.iter().take(16).for_each(check);
    } else if let Ok(jwk) = serde_json::from_slice::<Jwk>(data) {
        check(&jwk);
    }
});
