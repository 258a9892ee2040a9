//! JSON Web Keys (RFC 7517) as Stint publishes and reads them.

use serde::{Deserialize, Serialize};

/// A JWK set: `{"keys": [...]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwkSet {
    /// The keys.
    pub keys: Vec<Jwk>,
}

/// One public key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// The key type and its public parameters.
    #[serde(flatten)]
    pub key: JwkKey,
    /// The key id; Stint uses the RFC 7638 thumbprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// The one JWS algorithm this key may be used with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alg: Option<String>,
    /// The intended use; `sig` for signing keys.
    #[serde(default, rename = "use", skip_serializing_if = "Option::is_none")]
    pub key_use: Option<String>,
}

/// The key type (`kty`) with its public parameters, base64url encoded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kty")]
pub enum JwkKey {
    /// An elliptic-curve key (RFC 7518 section 6.2).
    #[serde(rename = "EC")]
    Ec {
        /// The curve, e.g. `P-256`.
        crv: String,
        /// The x coordinate.
        x: String,
        /// The y coordinate.
        y: String,
    },
    /// An octet key pair (RFC 8037), e.g. Ed25519.
    #[serde(rename = "OKP")]
    Okp {
        /// The curve, e.g. `Ed25519`.
        crv: String,
        /// The public key.
        x: String,
    },
    /// An RSA key (RFC 7518 section 6.3).
    #[serde(rename = "RSA")]
    Rsa {
        /// The modulus.
        n: String,
        /// The exponent.
        e: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_an_ec_key() {
        let json =
            r#"{"kty":"EC","crv":"P-256","x":"ax","y":"ay","kid":"k1","alg":"ES256","use":"sig"}"#;
        let jwk: Jwk = serde_json::from_str(json).unwrap();
        assert_eq!(jwk.kid.as_deref(), Some("k1"));
        assert!(matches!(jwk.key, JwkKey::Ec { ref crv, .. } if crv == "P-256"));
        let back: Jwk = serde_json::from_str(&serde_json::to_string(&jwk).unwrap()).unwrap();
        assert_eq!(back, jwk);
    }
}
