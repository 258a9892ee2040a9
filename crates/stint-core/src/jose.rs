//! Compact JWS (RFC 7515) signing and verification, on ring.
//!
//! Only what Stint needs: ES256 (P-256, the default) and EdDSA (Ed25519)
//! for its own tokens, and RS256 for federation tokens (what clouds and
//! secrets managers that trust Stint as an OIDC issuer all accept), with
//! keys the operator makes (ring cannot generate RSA keys).
//! Every key carries exactly one algorithm, and a token is checked against
//! the algorithm of the key its `kid` names: the token's own `alg` header is
//! compared to it, never trusted to choose. `none`, HMAC algorithms and
//! anything else are refused before any cryptography runs.
//!
//! Why not `jsonwebtoken`: its current releases offer aws-lc-rs or RustCrypto
//! backends, not ring, and the project keeps one crypto stack. Compact JWS is
//! three base64url strings and one signature call; the known-answer tests
//! below (RFC 8037, RFC 7638, RFC 7515) pin it down.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SecureRandom;
use ring::signature::{
    self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair, UnparsedPublicKey,
};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;
use stint_proto::{Jwk, JwkKey};
use thiserror::Error;

/// The longest token accepted anywhere, in bytes.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// A JWS algorithm Stint signs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Algorithm {
    /// ECDSA with P-256 and SHA-256 (RFC 7518 section 3.4).
    ES256,
    /// Ed25519 (RFC 8037).
    EdDSA,
    /// RSASSA-PKCS1-v1_5 with SHA-256 (RFC 7518 section 3.3). Verified
    /// with 2048 to 8192 bit keys (federated identity providers: GitHub
    /// Actions, GitLab, Kubernetes sign RS256); signed with 2048 to 4096
    /// bit keys loaded from the operator's files
    /// ([`SigningKey::from_rsa_pem`]), for federation tokens only.
    RS256,
}

impl Algorithm {
    /// The `alg` header value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ES256 => "ES256",
            Self::EdDSA => "EdDSA",
            Self::RS256 => "RS256",
        }
    }

    /// The algorithm named by an `alg` value, if Stint supports it.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "ES256" => Some(Self::ES256),
            "EdDSA" => Some(Self::EdDSA),
            "RS256" => Some(Self::RS256),
            _ => None,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What went wrong with a key or a token.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum JoseError {
    /// The token is over [`MAX_TOKEN_LEN`] (or the limit given to
    /// [`UnverifiedJws::parse_up_to`]).
    #[error("the token is too long")]
    TooLong,
    /// Not three base64url parts with a JSON object header.
    #[error("the token is not a compact JWS: {0}")]
    Malformed(&'static str),
    /// `alg: none`.
    #[error("unsecured tokens (alg \"none\") are never accepted")]
    AlgNone,
    /// An algorithm Stint does not accept, e.g. HS256.
    #[error("algorithm {0:?} is not accepted")]
    UnsupportedAlgorithm(String),
    /// The header's `alg` is not the one pinned to the key its `kid` names.
    #[error("the token's algorithm does not match its key's algorithm")]
    AlgorithmMismatch,
    /// The header has a `crit` member; no extension is understood.
    #[error("the token has critical header parameters, none of which are understood")]
    CriticalHeader,
    /// No `kid`, or one that names no known key.
    #[error("the token's signing key is unknown")]
    UnknownKey,
    /// The signature does not verify.
    #[error("the token's signature is invalid")]
    BadSignature,
    /// A key could not be loaded or generated.
    #[error("key rejected: {0}")]
    Key(String),
    /// A JWK that cannot be used for verification.
    #[error("unusable JWK: {0}")]
    BadJwk(&'static str),
}

enum KeyPairInner {
    Es256(EcdsaKeyPair),
    EdDsa(Ed25519KeyPair),
    Rs256(RsaKeyPair),
}

/// The smallest RSA modulus Stint signs with, in bytes (2048 bits).
const MIN_RSA_SIGNING_MODULUS_LEN: usize = 256;
/// The largest, in bytes (4096 bits): what every relying party accepts.
const MAX_RSA_SIGNING_MODULUS_LEN: usize = 512;

/// A private signing key with its algorithm and key id.
pub struct SigningKey {
    alg: Algorithm,
    kid: String,
    jwk: Jwk,
    inner: KeyPairInner,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Generate a new key. Returns the key and its PKCS#8 encoding, which is
    /// what should be persisted.
    pub fn generate(alg: Algorithm, rng: &dyn SecureRandom) -> Result<(Self, Vec<u8>), JoseError> {
        let pkcs8 = match alg {
            Algorithm::ES256 => {
                EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, rng)
            }
            Algorithm::EdDSA => Ed25519KeyPair::generate_pkcs8(rng),
            Algorithm::RS256 => return Err(cannot_generate_rsa()),
        }
        .map_err(|_| JoseError::Key("key generation failed".into()))?;
        let key = Self::from_pkcs8(alg, pkcs8.as_ref(), rng)?;
        Ok((key, pkcs8.as_ref().to_vec()))
    }

    /// Load a key from its PKCS#8 encoding.
    pub fn from_pkcs8(
        alg: Algorithm,
        pkcs8: &[u8],
        rng: &dyn SecureRandom,
    ) -> Result<Self, JoseError> {
        let inner = match alg {
            Algorithm::ES256 => KeyPairInner::Es256(
                EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, rng)
                    .map_err(|e| JoseError::Key(e.to_string()))?,
            ),
            Algorithm::EdDSA => KeyPairInner::EdDsa(
                Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
                    .map_err(|e| JoseError::Key(e.to_string()))?,
            ),
            Algorithm::RS256 => KeyPairInner::Rs256(checked_rsa(
                RsaKeyPair::from_pkcs8(pkcs8).map_err(|e| JoseError::Key(e.to_string()))?,
            )?),
        };
        Ok(Self::with_inner(alg, inner))
    }

    /// Load an RS256 key from PEM: `PRIVATE KEY` (PKCS#8) or `RSA PRIVATE
    /// KEY` (PKCS#1), as `openssl genpkey -algorithm RSA` writes it. The
    /// first private key in the text is used; 2048 to 4096 bits. Errors
    /// never quote the key.
    pub fn from_rsa_pem(pem: &[u8]) -> Result<Self, JoseError> {
        use rustls_pki_types::PrivateKeyDer;
        use rustls_pki_types::pem::PemObject as _;
        let der = PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
            JoseError::Key(match e {
                rustls_pki_types::pem::Error::NoItemsFound => {
                    "no PEM private key found (expected -----BEGIN PRIVATE KEY----- or -----BEGIN RSA PRIVATE KEY-----)".to_owned()
                }
                _ => "the PEM text is malformed".to_owned(),
            })
        })?;
        match der {
            PrivateKeyDer::Pkcs8(der) => Self::from_rsa_der(der.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(der) => Self::from_rsa_der(der.secret_pkcs1_der()),
            _ => Err(JoseError::Key(
                "not an RSA private key (an EC or other key): federation tokens are signed RS256"
                    .into(),
            )),
        }
    }

    /// Load an RS256 key from DER: PKCS#8, or PKCS#1 `RSAPrivateKey`;
    /// 2048 to 4096 bits.
    pub fn from_rsa_der(der: &[u8]) -> Result<Self, JoseError> {
        let pair = match RsaKeyPair::from_pkcs8(der) {
            Ok(pair) => pair,
            Err(pkcs8_error) => RsaKeyPair::from_der(der).map_err(|pkcs1_error| {
                let size = |e: &ring::error::KeyRejected| {
                    matches!(e.to_string().as_str(), "TooSmall" | "TooLarge")
                };
                if size(&pkcs8_error) || size(&pkcs1_error) {
                    JoseError::Key(
                        "an RSA signing key must be 2048 to 4096 bits, this one is not".into(),
                    )
                } else {
                    JoseError::Key(format!(
                        "not a usable RSA private key (as PKCS#8: {pkcs8_error}; as PKCS#1: {pkcs1_error})"
                    ))
                }
            })?,
        };
        Ok(Self::with_inner(
            Algorithm::RS256,
            KeyPairInner::Rs256(checked_rsa(pair)?),
        ))
    }

    /// Load an Ed25519 key from its 32-byte seed and public key (the form
    /// RFC 8037's examples use).
    pub fn from_ed25519_seed(seed: &[u8], public_key: &[u8]) -> Result<Self, JoseError> {
        let pair = Ed25519KeyPair::from_seed_and_public_key(seed, public_key)
            .map_err(|e| JoseError::Key(e.to_string()))?;
        Ok(Self::with_inner(
            Algorithm::EdDSA,
            KeyPairInner::EdDsa(pair),
        ))
    }

    fn with_inner(alg: Algorithm, inner: KeyPairInner) -> Self {
        let key = match &inner {
            KeyPairInner::Es256(pair) => {
                // ring's P-256 public key is the uncompressed point 04 || X || Y.
                let coordinates = pair.public_key().as_ref().get(1..).unwrap_or_default();
                let (x, y) = coordinates.split_at(coordinates.len() / 2);
                JwkKey::Ec {
                    crv: "P-256".into(),
                    x: URL_SAFE_NO_PAD.encode(x),
                    y: URL_SAFE_NO_PAD.encode(y),
                }
            }
            KeyPairInner::EdDsa(pair) => JwkKey::Okp {
                crv: "Ed25519".into(),
                x: URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
            },
            KeyPairInner::Rs256(pair) => {
                let (n, e) = rsa_components(pair);
                JwkKey::Rsa {
                    n: URL_SAFE_NO_PAD.encode(n),
                    e: URL_SAFE_NO_PAD.encode(e),
                }
            }
        };
        let kid = thumbprint(&key);
        let jwk = Jwk {
            key,
            kid: Some(kid.clone()),
            alg: Some(alg.as_str().into()),
            key_use: Some("sig".into()),
        };
        Self {
            alg,
            kid,
            jwk,
            inner,
        }
    }

    /// The key's algorithm.
    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// The key id: the RFC 7638 thumbprint of the public key.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK, with `kid`, `alg` and `use`.
    pub fn public_jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// The matching verification key.
    pub fn verifying_key(&self) -> VerifyingKey {
        let public = match &self.inner {
            KeyPairInner::Es256(pair) => PublicKey::Raw(pair.public_key().as_ref().to_vec()),
            KeyPairInner::EdDsa(pair) => PublicKey::Raw(pair.public_key().as_ref().to_vec()),
            KeyPairInner::Rs256(pair) => {
                let (n, e) = rsa_components(pair);
                PublicKey::Rsa { n, e }
            }
        };
        VerifyingKey {
            alg: self.alg,
            kid: self.kid.clone(),
            public,
        }
    }

    /// Sign `payload` under a protected header given as JSON text.
    pub fn sign_compact(
        &self,
        header_json: &[u8],
        payload: &[u8],
        rng: &dyn SecureRandom,
    ) -> Result<String, JoseError> {
        let mut token = String::with_capacity((header_json.len() + payload.len()) * 4 / 3 + 100);
        URL_SAFE_NO_PAD.encode_string(header_json, &mut token);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(payload, &mut token);
        let signature = match &self.inner {
            KeyPairInner::Es256(pair) => pair
                .sign(rng, token.as_bytes())
                .map_err(|_| JoseError::Key("signing failed".into()))?
                .as_ref()
                .to_vec(),
            KeyPairInner::EdDsa(pair) => pair.sign(token.as_bytes()).as_ref().to_vec(),
            KeyPairInner::Rs256(pair) => {
                let mut signature = vec![0; pair.public().modulus_len()];
                pair.sign(
                    &signature::RSA_PKCS1_SHA256,
                    rng,
                    token.as_bytes(),
                    &mut signature,
                )
                .map_err(|_| JoseError::Key("signing failed".into()))?;
                signature
            }
        };
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, &mut token);
        Ok(token)
    }

    /// Sign `claims` as a JWT with header `{"alg", "typ", "kid"}`.
    pub fn sign_jwt<T: Serialize>(
        &self,
        typ: &str,
        claims: &T,
        rng: &dyn SecureRandom,
    ) -> Result<String, JoseError> {
        #[derive(Serialize)]
        struct Header<'a> {
            alg: &'a str,
            typ: &'a str,
            kid: &'a str,
        }
        let header = serde_json::to_vec(&Header {
            alg: self.alg.as_str(),
            typ,
            kid: &self.kid,
        })
        .map_err(|_| JoseError::Key("header serialization failed".into()))?;
        let payload = serde_json::to_vec(claims)
            .map_err(|_| JoseError::Key("claims serialization failed".into()))?;
        self.sign_compact(&header, &payload, rng)
    }
}

/// A public key pinned to one algorithm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyingKey {
    alg: Algorithm,
    kid: String,
    public: PublicKey,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PublicKey {
    /// P-256: the uncompressed point; Ed25519: the 32-byte key.
    Raw(Vec<u8>),
    /// RSA: modulus and exponent, big-endian.
    Rsa { n: Vec<u8>, e: Vec<u8> },
}

/// The smallest RSA modulus accepted, in bytes (2048 bits).
const MIN_RSA_MODULUS_LEN: usize = 256;
/// The largest, in bytes (8192 bits).
const MAX_RSA_MODULUS_LEN: usize = 1024;

fn cannot_generate_rsa() -> JoseError {
    JoseError::Key(
        "RSA keys cannot be generated here: make one (openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:3072) and load it with SigningKey::from_rsa_pem".into(),
    )
}

/// An RSA key pair of a size Stint signs with: 2048 to 4096 bits.
fn checked_rsa(pair: RsaKeyPair) -> Result<RsaKeyPair, JoseError> {
    let len = pair.public().modulus_len();
    if (MIN_RSA_SIGNING_MODULUS_LEN..=MAX_RSA_SIGNING_MODULUS_LEN).contains(&len) {
        Ok(pair)
    } else {
        Err(JoseError::Key(format!(
            "an RSA signing key must be 2048 to 4096 bits, this one is {} bits",
            len * 8
        )))
    }
}

/// An RSA key's modulus and public exponent, big-endian, without leading
/// zeros (RFC 7518 section 6.3.1).
fn rsa_components(pair: &RsaKeyPair) -> (Vec<u8>, Vec<u8>) {
    let components = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public());
    let strip = |bytes: Vec<u8>| {
        let zeros = bytes.iter().take_while(|b| **b == 0).count();
        bytes.get(zeros..).unwrap_or_default().to_vec()
    };
    (strip(components.n), strip(components.e))
}

impl VerifyingKey {
    /// Build a verification key from a JWK. The JWK must have a `kid`; its
    /// `alg`, if present, must agree with the key type, and becomes the only
    /// algorithm this key verifies.
    pub fn from_jwk(jwk: &Jwk) -> Result<Self, JoseError> {
        let kid = jwk.kid.clone().ok_or(JoseError::BadJwk("no kid"))?;
        if jwk.key_use.as_deref().is_some_and(|u| u != "sig") {
            return Err(JoseError::BadJwk("not a signing key"));
        }
        let (alg, public) = match &jwk.key {
            JwkKey::Ec { crv, x, y } if crv == "P-256" => {
                let x = decode_fixed(x, 32)?;
                let y = decode_fixed(y, 32)?;
                let mut point = Vec::with_capacity(65);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                (Algorithm::ES256, PublicKey::Raw(point))
            }
            JwkKey::Okp { crv, x } if crv == "Ed25519" => {
                (Algorithm::EdDSA, PublicKey::Raw(decode_fixed(x, 32)?))
            }
            JwkKey::Rsa { n, e } => {
                let decode = |b64: &str| {
                    URL_SAFE_NO_PAD
                        .decode(b64)
                        .map_err(|_| JoseError::BadJwk("a key parameter is not base64url"))
                };
                let n = decode(n)?;
                let e = decode(e)?;
                let significant = n.iter().skip_while(|b| **b == 0).count();
                if !(MIN_RSA_MODULUS_LEN..=MAX_RSA_MODULUS_LEN).contains(&significant) {
                    return Err(JoseError::BadJwk(
                        "an RSA modulus must be 2048 to 8192 bits",
                    ));
                }
                if e.is_empty() || e.len() > 4 {
                    return Err(JoseError::BadJwk("an RSA exponent must be 1 to 4 bytes"));
                }
                (Algorithm::RS256, PublicKey::Rsa { n, e })
            }
            _ => return Err(JoseError::BadJwk("unsupported key type or curve")),
        };
        if jwk
            .alg
            .as_deref()
            .is_some_and(|named| named != alg.as_str())
        {
            return Err(JoseError::BadJwk("alg does not match the key type"));
        }
        Ok(Self { alg, kid, public })
    }

    /// The pinned algorithm.
    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// The key id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Verify `jws` with this key: its `alg` must be this key's algorithm.
    pub fn verify(&self, jws: &UnverifiedJws<'_>) -> Result<(), JoseError> {
        let alg = jws.algorithm()?;
        if alg != self.alg {
            return Err(JoseError::AlgorithmMismatch);
        }
        let message = jws.signing_input.as_bytes();
        let verified = match (&self.public, self.alg) {
            (PublicKey::Raw(public), Algorithm::ES256) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, public)
                    .verify(message, &jws.signature)
            }
            (PublicKey::Raw(public), Algorithm::EdDSA) => {
                UnparsedPublicKey::new(&signature::ED25519, public).verify(message, &jws.signature)
            }
            (PublicKey::Rsa { n, e }, Algorithm::RS256) => {
                signature::RsaPublicKeyComponents { n, e }.verify(
                    &signature::RSA_PKCS1_2048_8192_SHA256,
                    message,
                    &jws.signature,
                )
            }
            // A key's material always agrees with its algorithm (from_jwk
            // and SigningKey build them together); anything else fails.
            _ => return Err(JoseError::BadSignature),
        };
        verified.map_err(|_| JoseError::BadSignature)
    }
}

/// A set of verification keys, looked up by `kid`.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: HashMap<String, VerifyingKey>,
}

impl KeySet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a key, replacing any key with the same `kid`.
    pub fn insert(&mut self, key: VerifyingKey) {
        self.keys.insert(key.kid.clone(), key);
    }

    /// The key with this `kid`.
    pub fn get(&self, kid: &str) -> Option<&VerifyingKey> {
        self.keys.get(kid)
    }

    /// How many keys there are.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Verify `jws` with the key its `kid` names.
    pub fn verify(&self, jws: &UnverifiedJws<'_>) -> Result<(), JoseError> {
        // Refuse unsupported algorithms before saying anything about keys.
        jws.algorithm()?;
        let kid = jws.header.kid.as_deref().ok_or(JoseError::UnknownKey)?;
        self.keys.get(kid).ok_or(JoseError::UnknownKey)?.verify(jws)
    }
}

/// The protected header of a JWS, as far as Stint reads it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct JwsHeader {
    /// The algorithm the token claims.
    pub alg: String,
    /// The media type, `at+jwt` for access tokens.
    #[serde(default)]
    pub typ: Option<String>,
    /// The key id.
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// A compact JWS that has been parsed but not verified. Its payload is not
/// reachable until a key has verified the signature: see [`Self::verified_payload`].
#[derive(Debug, Clone)]
pub struct UnverifiedJws<'a> {
    header: JwsHeader,
    signing_input: &'a str,
    payload: Vec<u8>,
    signature: Vec<u8>,
}

impl<'a> UnverifiedJws<'a> {
    /// Parse `token`: at most [`MAX_TOKEN_LEN`] bytes, three base64url parts
    /// without padding, a JSON object header without `crit`.
    pub fn parse(token: &'a str) -> Result<Self, JoseError> {
        Self::parse_up_to(token, MAX_TOKEN_LEN)
    }

    /// [`Self::parse`], for a kind of JWS that may be longer (a status
    /// list token): at most `max_len` bytes.
    pub fn parse_up_to(token: &'a str, max_len: usize) -> Result<Self, JoseError> {
        if token.len() > max_len {
            return Err(JoseError::TooLong);
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JoseError::Malformed("expected three dot-separated parts"));
        };
        let header_json = URL_SAFE_NO_PAD
            .decode(header_b64)
            .map_err(|_| JoseError::Malformed("the header is not base64url"))?;
        let header: JwsHeader = serde_json::from_slice(&header_json)
            .map_err(|_| JoseError::Malformed("the header is not a JSON object with an alg"))?;
        if header.crit.is_some() {
            return Err(JoseError::CriticalHeader);
        }
        let payload = URL_SAFE_NO_PAD
            .decode(payload_b64)
            .map_err(|_| JoseError::Malformed("the payload is not base64url"))?;
        let signature = URL_SAFE_NO_PAD
            .decode(signature_b64)
            .map_err(|_| JoseError::Malformed("the signature is not base64url"))?;
        let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];
        Ok(Self {
            header,
            signing_input,
            payload,
            signature,
        })
    }

    /// The header.
    pub fn header(&self) -> &JwsHeader {
        &self.header
    }

    /// The header's algorithm, if it is one Stint accepts.
    pub fn algorithm(&self) -> Result<Algorithm, JoseError> {
        if self.header.alg.eq_ignore_ascii_case("none") {
            return Err(JoseError::AlgNone);
        }
        Algorithm::from_name(&self.header.alg).ok_or_else(|| {
            JoseError::UnsupportedAlgorithm(self.header.alg.chars().take(16).collect())
        })
    }

    /// Verify with `keys` and return the payload bytes.
    pub fn verified_payload(self, keys: &KeySet) -> Result<Vec<u8>, JoseError> {
        keys.verify(&self)?;
        Ok(self.payload)
    }

    /// The payload bytes, NOT verified. Only for choosing which keys to
    /// verify with (a federated token's `iss`): nothing read here may be
    /// trusted or acted on until [`Self::verified_payload`] succeeds.
    pub fn unverified_payload(&self) -> &[u8] {
        &self.payload
    }

    /// Verify with one key and return the payload bytes.
    pub fn verified_payload_with(self, key: &VerifyingKey) -> Result<Vec<u8>, JoseError> {
        key.verify(&self)?;
        Ok(self.payload)
    }
}

/// The RFC 7638 thumbprint of a public key: SHA-256 over the required
/// members in lexicographic order, base64url.
pub fn thumbprint(key: &JwkKey) -> String {
    // serde_json::to_string on a &str cannot fail; it only adds quotes and escapes.
    let quote = |s: &str| serde_json::to_string(s).unwrap_or_default();
    let canonical = match key {
        JwkKey::Ec { crv, x, y } => format!(
            r#"{{"crv":{},"kty":"EC","x":{},"y":{}}}"#,
            quote(crv),
            quote(x),
            quote(y)
        ),
        JwkKey::Okp { crv, x } => {
            format!(r#"{{"crv":{},"kty":"OKP","x":{}}}"#, quote(crv), quote(x))
        }
        JwkKey::Rsa { n, e } => format!(r#"{{"e":{},"kty":"RSA","n":{}}}"#, quote(e), quote(n)),
    };
    URL_SAFE_NO_PAD.encode(ring::digest::digest(
        &ring::digest::SHA256,
        canonical.as_bytes(),
    ))
}

fn decode_fixed(b64: &str, len: usize) -> Result<Vec<u8>, JoseError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(b64)
        .map_err(|_| JoseError::BadJwk("a key parameter is not base64url"))?;
    if bytes.len() == len {
        Ok(bytes)
    } else {
        Err(JoseError::BadJwk("a key parameter has the wrong length"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;

    // RFC 8037 appendix A, via shared/vectors.md.
    const ED_D: &str = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A";
    const ED_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
    const ED_THUMBPRINT: &str = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k";
    const ED_JWS: &str = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";

    /// Sign `header.payload` with the test RSA key (testdata/README.md);
    /// returns the token and the key's JWK.
    fn rs256_token(header: &str, payload: &str) -> (String, Jwk) {
        let pair = ring::rsa::KeyPair::from_der(include_bytes!("../testdata/rsa2048.der")).unwrap();
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload)
        );
        let mut signature = vec![0; pair.public().modulus_len()];
        pair.sign(
            &signature::RSA_PKCS1_SHA256,
            &SystemRandom::new(),
            input.as_bytes(),
            &mut signature,
        )
        .unwrap();
        let components = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(pair.public());
        let jwk = Jwk {
            key: JwkKey::Rsa {
                n: URL_SAFE_NO_PAD.encode(&components.n),
                e: URL_SAFE_NO_PAD.encode(&components.e),
            },
            kid: Some("rsa-1".into()),
            alg: Some("RS256".into()),
            key_use: Some("sig".into()),
        };
        (
            format!("{input}.{}", URL_SAFE_NO_PAD.encode(&signature)),
            jwk,
        )
    }

    #[test]
    fn rs256_from_a_federated_issuer_verifies_with_its_alg_pinned() {
        let (token, jwk) = rs256_token(r#"{"alg":"RS256","kid":"rsa-1"}"#, r#"{"sub":"x"}"#);
        let key = VerifyingKey::from_jwk(&jwk).unwrap();
        assert_eq!(key.alg(), Algorithm::RS256);
        let mut keys = KeySet::new();
        keys.insert(key);
        let jws = UnverifiedJws::parse(&token).unwrap();
        assert_eq!(jws.verified_payload(&keys).unwrap(), br#"{"sub":"x"}"#);

        // The same signature under another header is another message.
        let (forged, _) = rs256_token(r#"{"alg":"RS256","kid":"rsa-1"}"#, r#"{"sub":"y"}"#);
        let spliced = format!(
            "{}.{}",
            token.rsplit_once('.').unwrap().0,
            forged.rsplit_once('.').unwrap().1
        );
        assert_eq!(
            keys.verify(&UnverifiedJws::parse(&spliced).unwrap()),
            Err(JoseError::BadSignature)
        );
        // An ES256 header naming the RSA key: the key's algorithm decides.
        let (es, _) = rs256_token(r#"{"alg":"ES256","kid":"rsa-1"}"#, r#"{"sub":"x"}"#);
        assert_eq!(
            keys.verify(&UnverifiedJws::parse(&es).unwrap()),
            Err(JoseError::AlgorithmMismatch)
        );
        // ring cannot make RSA keys: they come from the operator's files.
        assert!(SigningKey::generate(Algorithm::RS256, &SystemRandom::new()).is_err());
    }

    #[test]
    fn small_or_mislabelled_rsa_keys_are_refused() {
        let (_, jwk) = rs256_token(r#"{"alg":"RS256"}"#, "{}");
        let mut small = jwk.clone();
        small.key = JwkKey::Rsa {
            n: URL_SAFE_NO_PAD.encode([0xC5u8; 128]),
            e: "AQAB".into(),
        };
        assert!(matches!(
            VerifyingKey::from_jwk(&small),
            Err(JoseError::BadJwk(_))
        ));
        let mut mislabelled = jwk;
        mislabelled.alg = Some("PS256".into());
        assert!(matches!(
            VerifyingKey::from_jwk(&mislabelled),
            Err(JoseError::BadJwk(_))
        ));
    }

    #[test]
    fn rs256_signing_keys_load_from_pem_and_der_and_round_trip() {
        let rng = SystemRandom::new();
        let from_pem = SigningKey::from_rsa_pem(include_bytes!("../testdata/rsa2048.pem")).unwrap();
        let from_pkcs1 =
            SigningKey::from_rsa_der(include_bytes!("../testdata/rsa2048.der")).unwrap();
        // One key, whichever encoding: the kid is the RFC 7638 thumbprint.
        assert_eq!(from_pem.kid(), from_pkcs1.kid());
        assert_eq!(from_pem.alg(), Algorithm::RS256);
        let jwk = from_pem.public_jwk();
        assert_eq!(jwk.alg.as_deref(), Some("RS256"));
        assert_eq!(jwk.key_use.as_deref(), Some("sig"));
        assert_eq!(thumbprint(&jwk.key), from_pem.kid());
        let JwkKey::Rsa { n, e } = &jwk.key else {
            panic!("an RSA JWK")
        };
        assert_eq!(e, "AQAB");
        assert_eq!(URL_SAFE_NO_PAD.decode(n).unwrap().len(), 256);

        let token = from_pem
            .sign_jwt("JWT", &serde_json::json!({"sub": "w"}), &rng)
            .unwrap();
        let jws = UnverifiedJws::parse(&token).unwrap();
        assert_eq!(jws.header().alg, "RS256");
        assert_eq!(jws.header().typ.as_deref(), Some("JWT"));
        assert_eq!(jws.header().kid.as_deref(), Some(from_pem.kid()));
        // Verified by the key rebuilt from the published JWK, and by the
        // signing key's own verifying half.
        let published = VerifyingKey::from_jwk(jwk).unwrap();
        assert_eq!(published, from_pem.verifying_key());
        assert_eq!(
            jws.clone().verified_payload_with(&published).unwrap(),
            br#"{"sub":"w"}"#
        );
        // A signature of another payload does not carry over.
        let other = from_pem
            .sign_jwt("JWT", &serde_json::json!({"sub": "x"}), &rng)
            .unwrap();
        let spliced = format!(
            "{}.{}",
            token.rsplit_once('.').unwrap().0,
            other.rsplit_once('.').unwrap().1
        );
        assert_eq!(
            UnverifiedJws::parse(&spliced)
                .unwrap()
                .verified_payload_with(&published),
            Err(JoseError::BadSignature)
        );
        // The PKCS#8 form also loads through from_pkcs8.
        let pkcs8 = {
            use rustls_pki_types::PrivateKeyDer;
            use rustls_pki_types::pem::PemObject as _;
            let PrivateKeyDer::Pkcs8(der) =
                PrivateKeyDer::from_pem_slice(include_bytes!("../testdata/rsa2048.pem")).unwrap()
            else {
                panic!("a PKCS#8 key")
            };
            der.secret_pkcs8_der().to_vec()
        };
        let via_pkcs8 = SigningKey::from_pkcs8(Algorithm::RS256, &pkcs8, &rng).unwrap();
        assert_eq!(via_pkcs8.kid(), from_pem.kid());
    }

    #[test]
    fn unusable_rsa_signing_keys_are_refused_with_a_reason() {
        let small = SigningKey::from_rsa_pem(include_bytes!("../testdata/rsa1024.pem"));
        assert!(
            matches!(&small, Err(JoseError::Key(why)) if why.contains("RSA")),
            "{small:?}"
        );
        let none = SigningKey::from_rsa_pem(b"not a key");
        assert!(
            matches!(&none, Err(JoseError::Key(why)) if why.contains("no PEM private key")),
            "{none:?}"
        );
        let garbage = SigningKey::from_rsa_der(&[0x30, 0x03, 0x02, 0x01, 0x00]);
        assert!(matches!(garbage, Err(JoseError::Key(_))));
        // An EC key in PEM is not an RSA key.
        let rng = SystemRandom::new();
        let (_, pkcs8) = SigningKey::generate(Algorithm::ES256, &rng).unwrap();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(&pkcs8)
        );
        assert!(matches!(
            SigningKey::from_rsa_pem(pem.as_bytes()),
            Err(JoseError::Key(_))
        ));
    }

    fn rfc8037_key() -> SigningKey {
        let seed = URL_SAFE_NO_PAD.decode(ED_D).unwrap();
        let public = URL_SAFE_NO_PAD.decode(ED_X).unwrap();
        SigningKey::from_ed25519_seed(&seed, &public).unwrap()
    }

    #[test]
    fn rfc8037_ed25519_signature_is_reproduced_exactly() {
        let key = rfc8037_key();
        let token = key
            .sign_compact(
                br#"{"alg":"EdDSA"}"#,
                b"Example of Ed25519 signing",
                &SystemRandom::new(),
            )
            .unwrap();
        assert_eq!(token, ED_JWS);
    }

    #[test]
    fn rfc8037_thumbprint_is_the_kid() {
        let key = rfc8037_key();
        assert_eq!(key.kid(), ED_THUMBPRINT);
        assert_eq!(thumbprint(&key.public_jwk().key), ED_THUMBPRINT);
    }

    #[test]
    fn rfc7638_rsa_thumbprint() {
        let key = JwkKey::Rsa {
            n: "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw".into(),
            e: "AQAB".into(),
        };
        assert_eq!(
            thumbprint(&key),
            "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
        );
    }

    #[test]
    fn rfc8037_token_verifies_with_its_published_jwk() {
        let mut jwk = rfc8037_key().public_jwk().clone();
        jwk.alg = None; // the RFC's JWK has no alg; it is inferred from the curve
        let key = VerifyingKey::from_jwk(&jwk).unwrap();
        assert_eq!(key.alg(), Algorithm::EdDSA);
        let payload = UnverifiedJws::parse(ED_JWS)
            .unwrap()
            .verified_payload_with(&key)
            .unwrap();
        assert_eq!(payload, b"Example of Ed25519 signing");
    }

    #[test]
    fn rfc7515_unsecured_jws_is_refused() {
        let token = "eyJhbGciOiJub25lIn0.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.";
        let jws = UnverifiedJws::parse(token).unwrap();
        let mut keys = KeySet::new();
        keys.insert(rfc8037_key().verifying_key());
        assert_eq!(jws.verified_payload(&keys), Err(JoseError::AlgNone));
    }

    #[test]
    fn es256_round_trip_and_tamper_detection() {
        let rng = SystemRandom::new();
        let (key, pkcs8) = SigningKey::generate(Algorithm::ES256, &rng).unwrap();
        let reloaded = SigningKey::from_pkcs8(Algorithm::ES256, &pkcs8, &rng).unwrap();
        assert_eq!(reloaded.kid(), key.kid());
        let token = key
            .sign_jwt("at+jwt", &serde_json::json!({"sub": "w"}), &rng)
            .unwrap();

        let mut keys = KeySet::new();
        keys.insert(VerifyingKey::from_jwk(key.public_jwk()).unwrap());
        let jws = UnverifiedJws::parse(&token).unwrap();
        assert_eq!(jws.header().typ.as_deref(), Some("at+jwt"));
        assert_eq!(jws.header().kid.as_deref(), Some(key.kid()));
        assert_eq!(jws.verified_payload(&keys).unwrap(), br#"{"sub":"w"}"#);

        // Flip one payload character: the signature no longer covers it.
        let (head, rest) = token.split_once('.').unwrap();
        let (payload, sig) = rest.split_once('.').unwrap();
        let tampered_payload = URL_SAFE_NO_PAD.encode(br#"{"sub":"x"}"#);
        assert_ne!(tampered_payload, payload);
        let tampered = format!("{head}.{tampered_payload}.{sig}");
        assert_eq!(
            UnverifiedJws::parse(&tampered)
                .unwrap()
                .verified_payload(&keys),
            Err(JoseError::BadSignature)
        );
    }

    #[test]
    fn algorithm_is_pinned_per_key() {
        let rng = SystemRandom::new();
        let (es, _) = SigningKey::generate(Algorithm::ES256, &rng).unwrap();
        let token = es.sign_jwt("at+jwt", &serde_json::json!({}), &rng).unwrap();
        // A token whose kid names the ES256 key but claims EdDSA.
        let (_, rest) = token.split_once('.').unwrap();
        let forged_header =
            URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"EdDSA","kid":"{}"}}"#, es.kid()));
        let forged = format!("{forged_header}.{rest}");
        let mut keys = KeySet::new();
        keys.insert(es.verifying_key());
        assert_eq!(
            UnverifiedJws::parse(&forged)
                .unwrap()
                .verified_payload(&keys),
            Err(JoseError::AlgorithmMismatch)
        );
        // And HS256 is refused outright.
        let hs_header =
            URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"HS256","kid":"{}"}}"#, es.kid()));
        let hs = format!("{hs_header}.{rest}");
        assert_eq!(
            UnverifiedJws::parse(&hs).unwrap().verified_payload(&keys),
            Err(JoseError::UnsupportedAlgorithm("HS256".into()))
        );
    }

    #[test]
    fn malformed_tokens_are_refused_without_panicking() {
        let long = "a".repeat(MAX_TOKEN_LEN + 1);
        assert_eq!(UnverifiedJws::parse(&long).unwrap_err(), JoseError::TooLong);
        for bad in [
            "",
            "a",
            "a.b",
            "a.b.c.d",
            "!!.e30.",
            "e30.!!.",
            "e30.e30.!!",
            "bnVsbA.e30.",
        ] {
            assert!(
                matches!(UnverifiedJws::parse(bad), Err(JoseError::Malformed(_))),
                "{bad:?}"
            );
        }
        // Padding is not base64url-without-padding.
        assert!(UnverifiedJws::parse("eyJhbGciOiJFUzI1NiJ9.e30=.").is_err());
        let crit = URL_SAFE_NO_PAD.encode(r#"{"alg":"ES256","crit":["exp"]}"#);
        assert_eq!(
            UnverifiedJws::parse(&format!("{crit}.e30.")).unwrap_err(),
            JoseError::CriticalHeader
        );
    }

    #[test]
    fn jwk_alg_must_match_key_type() {
        let rng = SystemRandom::new();
        let (key, _) = SigningKey::generate(Algorithm::ES256, &rng).unwrap();
        let mut jwk = key.public_jwk().clone();
        jwk.alg = Some("EdDSA".into());
        assert!(VerifyingKey::from_jwk(&jwk).is_err());
        jwk.alg = Some("ES256".into());
        jwk.kid = None;
        assert!(VerifyingKey::from_jwk(&jwk).is_err());
    }
}
