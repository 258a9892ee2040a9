//! Access tokens after the signature: whatever claims a token signed by
//! the broker's key carries, `access_token::verify` accepts it only when
//! its issuer, audience, lifetime and times are right; accepted claims
//! serialize back to the same claims; `allows` grants only a scope the
//! token names; and any one-character change to the token is refused.
#![no_main]
use libfuzzer_sys::fuzz_target;
use stint_core::access_token::{
    Expectations, MAX_LEEWAY_SECS, allows, is_access_token_typ, verify,
};
use stint_core::claims::AccessTokenClaims;
use stint_core::jose::Algorithm;
use stint_core::ttl::MAX_TOKEN_TTL;

const BASE64URL: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fuzz_target!(|data: &[u8]| {
    let (control, fields) = stint_fuzz::fields(data);
    let claims = fields.first().copied().unwrap_or_default();
    let keys = stint_fuzz::keys();
    let alg = [Algorithm::EdDSA, Algorithm::ES256][usize::from(control & 1)];
    let typ = ["at+jwt", "application/at+jwt", "JWT", "AT+JWT"][usize::from(control >> 1 & 3)];
    let audience = [None, Some("demo-api"), Some("other")][usize::from(control >> 3 & 3) % 3];
    let leeway = [0, 30, MAX_LEEWAY_SECS, 10_000][usize::from(control >> 5 & 3)];
    let now = stint_fuzz::NOW
        + fields
            .get(1)
            .and_then(|f| std::str::from_utf8(f).ok())
            .and_then(|t| t.parse::<i32>().ok())
            .map_or(0, i64::from);
    let token = keys.sign_jwt(alg, typ, claims);
    let expect = Expectations {
        issuer: stint_fuzz::ISSUER,
        audience,
        leeway_secs: leeway,
    };
    let result = verify(&token, &keys.set, &expect, now);
    if let Ok(verified) = &result {
        let leeway = leeway.clamp(0, MAX_LEEWAY_SECS);
        assert!(is_access_token_typ(Some(typ)));
        assert_eq!(verified.iss, stint_fuzz::ISSUER);
        assert!(audience.is_none_or(|aud| verified.aud == aud));
        assert!(
            i128::from(verified.exp) - i128::from(verified.iat)
                <= i128::from(MAX_TOKEN_TTL.as_secs())
        );
        assert!(i128::from(verified.nbf.max(verified.iat)) <= i128::from(now) + i128::from(leeway));
        assert!(i128::from(verified.exp) > i128::from(now) - i128::from(leeway));
        let again: AccessTokenClaims =
            serde_json::from_slice(&serde_json::to_vec(verified).expect("serializes"))
                .expect("parses");
        assert_eq!(&again, verified);
        for scope in verified.scopes() {
            if let Some((action, resource)) = scope.split_once(':') {
                if allows(verified.scopes(), action, resource) {
                    let wanted = format!("{action}:{resource}");
                    assert!(verified.scopes().any(|s| s == wanted));
                }
            }
        }
        let action = stint_fuzz::text(&fields, 2);
        let resource = stint_fuzz::text(&fields, 3);
        if allows(verified.scopes(), action, resource) {
            let wanted = format!("{action}:{resource}");
            assert!(
                verified.scopes().any(|s| s == wanted),
                "{wanted:?} allowed by {:?}",
                verified.scope
            );
        }
    }
    // One character of the token replaced by another base64url character
    // (or a dot by one): never accepted.
    if result.is_ok() {
        let at = usize::from(control)
            .wrapping_mul(31)
            .wrapping_add(claims.len())
            % token.len();
        let mut tampered = token.clone().into_bytes();
        let old = tampered[at];
        let new = BASE64URL[(usize::from(old) + usize::from(control) + 1) % BASE64URL.len()];
        if new != old {
            tampered[at] = new;
            let tampered = String::from_utf8(tampered).expect("ASCII");
            assert!(
                verify(&tampered, &keys.set, &expect, now).is_err(),
                "a tampered token verified (byte {at})"
            );
        }
    }
});
