//! Checking a Stint access token: the one implementation the broker's
//! introspection and the SDK's offline verifier share.
//!
//! In order, and stopping at the first failure: the token's shape and size,
//! its `alg` (never `none`, never an HMAC, and always the algorithm pinned to
//! the key its `kid` names), `typ: at+jwt` (RFC 9068 section 4), the
//! signature, the claims' shape, `iss`, `aud` (when the caller names one),
//! a lifetime no longer than [`MAX_TOKEN_TTL`], and `iat`, `nbf` and `exp`
//! with a leeway. Every failure is its own [`TokenError`]
//! variant, so a caller can tell a tampered token from an expired one.

use crate::claims::AccessTokenClaims;
use crate::jose::{JoseError, KeySet, UnverifiedJws};
use crate::scope::{Scope, ScopePattern};
use crate::ttl::MAX_TOKEN_TTL;
use stint_proto::ACCESS_TOKEN_TYP;
use thiserror::Error;

/// The most clock leeway a verifier may allow, in seconds.
pub const MAX_LEEWAY_SECS: i64 = 300;

/// What a token must satisfy besides its signature.
#[derive(Debug, Clone, Copy)]
pub struct Expectations<'a> {
    /// The broker's issuer URL: the token's `iss` must equal it.
    pub issuer: &'a str,
    /// The audience the caller serves; `None` skips the check (the broker's
    /// introspection answers for any audience).
    pub audience: Option<&'a str>,
    /// Seconds of clock difference tolerated on `nbf` and `exp`, at most
    /// [`MAX_LEEWAY_SECS`].
    pub leeway_secs: i64,
}

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TokenError {
    /// Not a compact JWS, or over the size limit.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// `alg: none`.
    #[error("unsecured tokens (alg \"none\") are never accepted")]
    AlgNone,
    /// An algorithm other than ES256 and EdDSA, e.g. HS256.
    #[error("algorithm {0:?} is not accepted")]
    UnsupportedAlgorithm(String),
    /// The `alg` differs from the one pinned to the key named by `kid`.
    #[error("the token's algorithm is not its key's algorithm")]
    AlgorithmMismatch,
    /// The header has `crit`.
    #[error("the token has critical header parameters")]
    CriticalHeader,
    /// No `kid`, or one naming no known key.
    #[error("the token's signing key is unknown")]
    UnknownKey,
    /// The signature does not verify.
    #[error("the token's signature is invalid")]
    BadSignature,
    /// `typ` is not `at+jwt`.
    #[error("the token is not an access token (typ is not at+jwt)")]
    WrongType,
    /// The payload is not a Stint access token's claims.
    #[error("the token's claims are malformed")]
    BadClaims,
    /// `iss` is not the expected issuer.
    #[error("the token was issued by another issuer")]
    WrongIssuer,
    /// `aud` is not the expected audience.
    #[error("the token is for another audience")]
    WrongAudience,
    /// `exp` has passed.
    #[error("the token has expired")]
    Expired,
    /// `nbf` or `iat` is in the future.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `exp` is more than [`MAX_TOKEN_TTL`] after `iat`: no broker mints
    /// such a token, so its key must be in the wrong hands.
    #[error("the token's lifetime is longer than any token Stint issues")]
    BadLifetime,
    /// The token is bound to a TLS client certificate (`cnf`), and was not
    /// checked against the certificate it was presented with.
    #[error(
        "the token is bound to a client certificate; verify it with the presenting certificate"
    )]
    CertificateBound,
    /// The token is bound to another certificate than the one presenting it.
    #[error("the token is bound to another client certificate")]
    CertificateMismatch,
}

impl From<JoseError> for TokenError {
    fn from(error: JoseError) -> Self {
        match error {
            JoseError::AlgNone => Self::AlgNone,
            JoseError::UnsupportedAlgorithm(alg) => Self::UnsupportedAlgorithm(alg),
            JoseError::AlgorithmMismatch => Self::AlgorithmMismatch,
            JoseError::CriticalHeader => Self::CriticalHeader,
            JoseError::UnknownKey => Self::UnknownKey,
            JoseError::BadSignature => Self::BadSignature,
            other @ (JoseError::TooLong
            | JoseError::Malformed(_)
            | JoseError::Key(_)
            | JoseError::BadJwk(_)) => Self::Malformed(other.to_string()),
        }
    }
}

/// Whether a JWS `typ` names an RFC 9068 access token.
pub fn is_access_token_typ(typ: Option<&str>) -> bool {
    typ.is_some_and(|typ| {
        typ.eq_ignore_ascii_case(ACCESS_TOKEN_TYP) || typ.eq_ignore_ascii_case("application/at+jwt")
    })
}

/// The `kid` a token's header names, if it parses at all: what a verifier
/// that does not know the key should look for.
pub fn key_id(token: &str) -> Option<String> {
    UnverifiedJws::parse(token).ok()?.header().kid.clone()
}

/// Check `token` against `keys` and `expect` at `now` (seconds since the
/// epoch) and return its claims.
pub fn verify(
    token: &str,
    keys: &KeySet,
    expect: &Expectations<'_>,
    now: i64,
) -> Result<AccessTokenClaims, TokenError> {
    let jws = UnverifiedJws::parse(token)?;
    // The algorithm first: `none` and HS256 are refused as such, whatever
    // else is wrong with the token.
    jws.algorithm()?;
    if !is_access_token_typ(jws.header().typ.as_deref()) {
        return Err(TokenError::WrongType);
    }
    let payload = jws.verified_payload(keys)?;
    let claims: AccessTokenClaims =
        serde_json::from_slice(&payload).map_err(|_| TokenError::BadClaims)?;
    if claims.iss != expect.issuer {
        return Err(TokenError::WrongIssuer);
    }
    // Every scope the token carries must be one this broker could grant:
    // a scope with a character that a resource server splits on or decodes
    // (`read:demo/x,write:prod/db`) is refused as a whole, never read as
    // several.
    if crate::scope::parse_scope_list(&claims.scope).is_err() {
        return Err(TokenError::BadClaims);
    }
    if expect
        .audience
        .is_some_and(|audience| claims.aud != audience)
    {
        return Err(TokenError::WrongAudience);
    }
    if claims.exp.saturating_sub(claims.iat) > i64::from(MAX_TOKEN_TTL.as_secs()) {
        return Err(TokenError::BadLifetime);
    }
    let leeway = expect.leeway_secs.clamp(0, MAX_LEEWAY_SECS);
    if claims.nbf.max(claims.iat) > now.saturating_add(leeway) {
        return Err(TokenError::NotYetValid);
    }
    if claims.exp <= now.saturating_sub(leeway) {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

/// Whether a token that carries `granted` scopes allows `action` on
/// `resource`: the broker's matcher, with each granted scope as a pattern.
/// Tokens carry concrete scopes, so this is an exact match on a well-formed
/// scope: a granted "scope" with a wildcard matches nothing, and neither
/// does a malformed request (an `action` with a `:` in it, say).
pub fn allows<'a>(
    granted: impl IntoIterator<Item = &'a str>,
    action: &str,
    resource: &str,
) -> bool {
    let Ok(wanted) = Scope::parse(&format!("{action}:{resource}")) else {
        return false;
    };
    if wanted.action() != action || wanted.resource() != resource {
        return false;
    }
    granted.into_iter().any(|granted| {
        ScopePattern::parse(granted)
            .is_ok_and(|pattern| pattern.is_concrete() && pattern.matches(&wanted))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jose::{Algorithm, SigningKey};
    use base64::Engine as _;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use ring::rand::SystemRandom;

    const ISSUER: &str = "https://stint.test";

    fn claims(now: i64) -> AccessTokenClaims {
        AccessTokenClaims {
            iss: ISSUER.into(),
            sub: "w".into(),
            aud: "api".into(),
            client_id: "w".into(),
            exp: now + 300,
            iat: now,
            nbf: now,
            jti: "AAAAAAAAAAAAAAAAAAAAAA".into(),
            scope: "read:demo/a write:demo/b".into(),
            job: "j".into(),
            step: "s".into(),
            workflow: "wf".into(),
            cnf: None,
            elev: None,
            status: None,
        }
    }

    fn setup() -> (SigningKey, KeySet) {
        let rng = SystemRandom::new();
        let (key, _) = SigningKey::generate(Algorithm::ES256, &rng).unwrap();
        let mut keys = KeySet::new();
        keys.insert(key.verifying_key());
        (key, keys)
    }

    fn sign(key: &SigningKey, typ: &str, claims: &AccessTokenClaims) -> String {
        key.sign_jwt(typ, claims, &SystemRandom::new()).unwrap()
    }

    fn expect(audience: Option<&str>) -> Expectations<'_> {
        Expectations {
            issuer: ISSUER,
            audience,
            leeway_secs: 30,
        }
    }

    #[test]
    fn each_failure_is_its_own_error() {
        let (key, keys) = setup();
        let now = 1_800_000_000;
        let good = sign(&key, "at+jwt", &claims(now));
        assert!(verify(&good, &keys, &expect(Some("api")), now).is_ok());

        let mut other = claims(now);
        other.iss = "https://evil.test".into();
        assert_eq!(
            verify(&sign(&key, "at+jwt", &other), &keys, &expect(None), now),
            Err(TokenError::WrongIssuer)
        );
        assert_eq!(
            verify(&good, &keys, &expect(Some("other-api")), now),
            Err(TokenError::WrongAudience)
        );
        assert_eq!(
            verify(&sign(&key, "JWT", &claims(now)), &keys, &expect(None), now),
            Err(TokenError::WrongType)
        );
        // Expiry and not-before, with the leeway on both sides.
        assert!(verify(&good, &keys, &expect(None), now + 300 + 29).is_ok());
        assert_eq!(
            verify(&good, &keys, &expect(None), now + 300 + 30),
            Err(TokenError::Expired)
        );
        assert!(verify(&good, &keys, &expect(None), now - 30).is_ok());
        assert_eq!(
            verify(&good, &keys, &expect(None), now - 31),
            Err(TokenError::NotYetValid)
        );
        // A tampered payload.
        let mut parts: Vec<&str> = good.split('.').collect();
        let mut tampered_claims = claims(now);
        tampered_claims.scope = "admin:everything/x".into();
        let forged = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&tampered_claims).unwrap());
        parts[1] = &forged;
        assert_eq!(
            verify(&parts.join("."), &keys, &expect(None), now),
            Err(TokenError::BadSignature)
        );
        // A key this verifier does not know.
        let (stranger, _) = setup();
        assert_eq!(
            verify(
                &sign(&stranger, "at+jwt", &claims(now)),
                &keys,
                &expect(None),
                now
            ),
            Err(TokenError::UnknownKey)
        );
        assert!(matches!(
            verify("not a token", &keys, &expect(None), now),
            Err(TokenError::Malformed(_))
        ));
    }

    /// A signed token whose scope claim holds what this broker never
    /// grants (a comma a resource server would split on, a `+` form
    /// decoding would turn into a space, no scope at all) is refused as a
    /// whole, before anyone reads its scopes.
    #[test]
    fn scopes_a_consumer_would_split_are_refused() {
        let (key, keys) = setup();
        let now = 1_800_000_000;
        for scope in [
            "read:demo/x,write:prod/db",
            "read:demo/x+write:prod/db",
            "read:demo/*",
            "",
        ] {
            let mut bad = claims(now);
            bad.scope = scope.into();
            assert_eq!(
                verify(&sign(&key, "at+jwt", &bad), &keys, &expect(None), now),
                Err(TokenError::BadClaims),
                "{scope:?}"
            );
        }
    }

    /// `alg: none` and an HS256 token whose HMAC key is the broker's public
    /// key (the classic key-confusion attack) are refused by their `alg`.
    #[test]
    fn none_and_hmac_are_refused_by_alg() {
        let (key, keys) = setup();
        let now = 1_800_000_000;
        let kid = key.kid().to_owned();
        let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(now)).unwrap());
        let header = |alg: &str| {
            URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"at+jwt","kid":"{kid}"}}"#))
        };
        let none = format!("{}.{payload}.", header("none"));
        assert_eq!(
            verify(&none, &keys, &expect(None), now),
            Err(TokenError::AlgNone)
        );
        let public = serde_json::to_vec(key.public_jwk()).unwrap();
        let signing_input = format!("{}.{payload}", header("HS256"));
        let mac = ring::hmac::sign(
            &ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &public),
            signing_input.as_bytes(),
        );
        let hs256 = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(mac.as_ref()));
        assert_eq!(
            verify(&hs256, &keys, &expect(None), now),
            Err(TokenError::UnsupportedAlgorithm("HS256".into()))
        );
        // An EdDSA header on an ES256 key.
        let eddsa = format!("{}.{payload}.AAAA", header("EdDSA"));
        assert_eq!(
            verify(&eddsa, &keys, &expect(None), now),
            Err(TokenError::AlgorithmMismatch)
        );
    }

    #[test]
    fn allows_matches_exactly_the_granted_scopes() {
        let granted = ["read:demo/a", "write:demo/b/c"];
        assert!(allows(granted, "read", "demo/a"));
        assert!(allows(granted, "write", "demo/b/c"));
        assert!(!allows(granted, "read", "demo/a/b"));
        assert!(!allows(granted, "write", "demo/a"));
        assert!(!allows(granted, "read", "demo/*"));
        assert!(!allows(granted, "read", "demo/../a"));
        assert!(!allows(granted, "read", ""));
        // The action/resource split cannot be moved.
        assert!(!allows(["read:demo:x"], "read:demo", "x"));
        // A wildcard in a token's scope is not a wildcard.
        assert!(!allows(["read:demo/*"], "read", "demo/a"));
    }

    #[test]
    fn a_lifetime_longer_than_any_broker_issues_is_refused() {
        let (key, keys) = setup();
        let now = 1_800_000_000;
        let mut long = claims(now);
        long.exp = now + i64::from(MAX_TOKEN_TTL.as_secs()) + 1;
        assert_eq!(
            verify(&sign(&key, "at+jwt", &long), &keys, &expect(None), now),
            Err(TokenError::BadLifetime)
        );
        let mut issued_later = claims(now + 600);
        issued_later.nbf = now;
        assert_eq!(
            verify(
                &sign(&key, "at+jwt", &issued_later),
                &keys,
                &expect(None),
                now
            ),
            Err(TokenError::NotYetValid)
        );
    }
}
