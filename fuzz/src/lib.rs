//! What the fuzz targets and the corpus generator share: fixed keys whose
//! key ids appear in the seed corpora (so the fuzzer reaches signature
//! checks), the fuzz policy, and an encoder independent of the one under
//! test.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, RsaKeyPair};
use std::sync::OnceLock;
use stint_core::jose::{Algorithm, KeySet, SigningKey, VerifyingKey, thumbprint};
use stint_core::policy::Policy;
use stint_proto::{Jwk, JwkKey};

/// The issuer of the tokens the targets sign.
pub const ISSUER: &str = "https://stint.fuzz";
/// The one status list the status list targets sign.
pub const LIST_URI: &str = "https://stint.fuzz/v1/status/L";
/// The fuzz policy's workload that authenticates with a secret.
pub const CLIENT_ID: &str = "w";
/// Its secret (the policy holds its SHA-256).
pub const CLIENT_SECRET: &str = "abc";
/// A fixed time: the seeds' tokens are valid around it.
pub const NOW: i64 = 1_800_000_000;

/// RFC 8037 appendix A.1's Ed25519 key.
const ED25519_D: &str = "nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A";
const ED25519_X: &str = "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo";
/// RFC 7515 appendix A.3's P-256 key.
const P256_D: &str = "jpsQnnGQmL-YBIffH1136cspYG6-0iY7X1fCE9-E9LI";
const P256_X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
const P256_Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";
/// The repository's RSA test key (crates/stint-core/testdata/README.md).
const RSA_DER: &[u8] = include_bytes!("../../crates/stint-core/testdata/rsa2048.der");

/// The fixed keys, private and public.
pub struct Keys {
    /// Ed25519 (EdDSA).
    pub ed25519: SigningKey,
    /// P-256 (ES256).
    pub es256: EcdsaKeyPair,
    /// Its JWK, with `kid` (its thumbprint) and `alg`.
    pub es256_jwk: Jwk,
    /// RSA 2048 (RS256).
    pub rsa: RsaKeyPair,
    /// Its JWK, with `kid` and `alg`.
    pub rsa_jwk: Jwk,
    /// The three public keys, by their thumbprints.
    pub set: KeySet,
    rng: SystemRandom,
}

fn b64(text: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(text).expect("base64url")
}

fn jwk(key: JwkKey, alg: Algorithm) -> Jwk {
    Jwk {
        kid: Some(thumbprint(&key)),
        key,
        alg: Some(alg.as_str().into()),
        key_use: Some("sig".into()),
    }
}

/// The fixed keys.
pub fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let rng = SystemRandom::new();
        let ed25519 = SigningKey::from_ed25519_seed(&b64(ED25519_D), &b64(ED25519_X))
            .expect("the RFC 8037 key");
        let mut point = vec![4u8];
        point.extend(b64(P256_X));
        point.extend(b64(P256_Y));
        let es256 = EcdsaKeyPair::from_private_key_and_public_key(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &b64(P256_D),
            &point,
            &rng,
        )
        .expect("the RFC 7515 key");
        let es256_jwk = jwk(
            JwkKey::Ec {
                crv: "P-256".into(),
                x: P256_X.into(),
                y: P256_Y.into(),
            },
            Algorithm::ES256,
        );
        let rsa = RsaKeyPair::from_der(RSA_DER).expect("the RSA test key");
        let public = ring::rsa::PublicKeyComponents::<Vec<u8>>::from(rsa.public());
        let rsa_jwk = jwk(
            JwkKey::Rsa {
                n: URL_SAFE_NO_PAD.encode(&public.n),
                e: URL_SAFE_NO_PAD.encode(&public.e),
            },
            Algorithm::RS256,
        );
        let mut set = KeySet::new();
        set.insert(ed25519.verifying_key());
        set.insert(VerifyingKey::from_jwk(&es256_jwk).expect("ES256 JWK"));
        set.insert(VerifyingKey::from_jwk(&rsa_jwk).expect("RS256 JWK"));
        Keys {
            ed25519,
            es256,
            es256_jwk,
            rsa,
            rsa_jwk,
            set,
            rng,
        }
    })
}

impl Keys {
    /// The key id of the key for `alg`.
    pub fn kid(&self, alg: Algorithm) -> &str {
        match alg {
            Algorithm::EdDSA => self.ed25519.kid(),
            Algorithm::ES256 => self.es256_jwk.kid.as_deref().unwrap_or_default(),
            Algorithm::RS256 => self.rsa_jwk.kid.as_deref().unwrap_or_default(),
        }
    }

    /// A compact JWS of `payload` under the protected header `header`
    /// (JSON text), signed with the key for `alg`.
    pub fn sign(&self, alg: Algorithm, header: &[u8], payload: &[u8]) -> String {
        match alg {
            Algorithm::EdDSA => self
                .ed25519
                .sign_compact(header, payload, &self.rng)
                .expect("Ed25519 signs"),
            Algorithm::ES256 | Algorithm::RS256 => {
                let input = format!(
                    "{}.{}",
                    URL_SAFE_NO_PAD.encode(header),
                    URL_SAFE_NO_PAD.encode(payload)
                );
                let sig = if alg == Algorithm::ES256 {
                    self.es256
                        .sign(&self.rng, input.as_bytes())
                        .expect("ES256 signs")
                        .as_ref()
                        .to_vec()
                } else {
                    let mut sig = vec![0; self.rsa.public().modulus_len()];
                    self.rsa
                        .sign(
                            &signature::RSA_PKCS1_SHA256,
                            &self.rng,
                            input.as_bytes(),
                            &mut sig,
                        )
                        .expect("RS256 signs");
                    sig
                };
                format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
            }
        }
    }

    /// A JWT of `claims` with header `{"alg", "typ", "kid"}`.
    pub fn sign_jwt(&self, alg: Algorithm, typ: &str, claims: &[u8]) -> String {
        let header = serde_json::json!({"alg": alg.as_str(), "typ": typ, "kid": self.kid(alg)});
        self.sign(alg, header.to_string().as_bytes(), claims)
    }
}

/// The fuzz policy: a workload with a secret and two workflows (one step
/// with an elevation), a certificate-bound workload, and federated
/// workloads under GitHub Actions and Kubernetes presets, plus a plain
/// issuer whose job comes from two nested claims.
pub const POLICY: &str = r#"
[workloads.w]
secret_sha256 = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
workflows = ["a", "b"]

[workloads.cert]
certificate = { uri = "spiffe://fuzz.test/ns/ci/sa/deployer" }
workflows = ["a"]

[workloads.web-deployer]
workflows = ["a"]

[[workloads.web-deployer.federated]]
issuer = "github"
claims = { repository = "acme/web", ref = "refs/heads/main" }

[workloads.cluster-job]
workflows = ["a"]

[[workloads.cluster-job.federated]]
issuer = "cluster"
claims = { "kubernetes.io/namespace" = "ci", sub = "system:serviceaccount:ci:*" }

[workloads.nested]
workflows = ["a"]

[[workloads.nested.federated]]
issuer = "plain"
claims = { "org/team" = "infra", sub = "*-runner-*" }

[issuers.github]
url = "https://token.actions.githubusercontent.com"
preset = "github-actions"
audiences = ["https://stint.fuzz"]

[issuers.cluster]
url = "https://kubernetes.default.svc.cluster.local"
preset = "kubernetes"
audiences = ["stint"]

[issuers.plain]
url = "https://idp.fuzz"
audiences = ["stint", "other"]
algorithms = ["EdDSA"]
job_claims = ["org/team", "run"]

[workflows.a]
review_by = 2099-01-01

[workflows.a.steps.read]
scopes = ["read:demo/**", "read:gh/*/web"]

[workflows.b]
review_by = 2099-01-01

[workflows.b.steps.read]
scopes = ["read:other/x"]

[workflows.b.steps.deploy]
scopes = ["deploy:k8s/staging/*"]
audiences = ["k8s"]
max_ttl = "10m"

[workflows.b.steps.deploy.elevation]
scopes = ["deploy:k8s/prod/*", "admin:k8s/**"]
approver_groups = ["sre"]
quorum = 1
max_duration = "30m"
max_wait = "15m"

[operators.alice]
groups = ["sre"]
key_sha256 = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
"#;

/// The fuzz policy, parsed.
pub fn policy() -> &'static Policy {
    static POLICY_PARSED: OnceLock<Policy> = OnceLock::new();
    POLICY_PARSED.get_or_init(|| {
        Policy::parse("fuzz.toml", POLICY).unwrap_or_else(|e| panic!("the fuzz policy: {e}"))
    })
}

/// `application/x-www-form-urlencoded` encoding of one component, written
/// here apart from both the broker's decoder and the SDK's encoder:
/// `unreserved` bytes as themselves, a space as `+` when `plus` (else
/// `%20`), everything else as `%XX` in upper or lower case hex.
pub fn form_encode(text: &str, plus: bool, lower_hex: bool) -> String {
    let mut out = String::new();
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(char::from(byte));
            }
            b' ' if plus => out.push('+'),
            _ if lower_hex => out.push_str(&format!("%{byte:02x}")),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

/// The byte that separates the fields of a structured input: never part
/// of UTF-8 text, so a text field never has to escape it.
pub const SEPARATOR: u8 = 0xff;

/// A structured input: its first byte (the "control" byte that picks a
/// mode and small numbers) and the rest split at [`SEPARATOR`].
pub fn fields(data: &[u8]) -> (u8, Vec<&[u8]>) {
    match data.split_first() {
        Some((control, rest)) => (*control, rest.split(|b| *b == SEPARATOR).collect()),
        None => (0, Vec::new()),
    }
}

/// The inverse of [`fields`], for the corpus generator.
pub fn join_fields(control: u8, fields: &[&[u8]]) -> Vec<u8> {
    let mut out = vec![control];
    out.extend(fields.join(&[SEPARATOR][..]));
    out
}

/// Field `n` as text (`""` if absent or not UTF-8).
pub fn text<'a>(fields: &[&'a [u8]], n: usize) -> &'a str {
    fields
        .get(n)
        .and_then(|field| std::str::from_utf8(field).ok())
        .unwrap_or_default()
}

/// The JWS the seed corpora carry, as `(alg, protected header, payload)`:
/// known answers from RFC 8037 (no `kid`), and tokens with the fixed
/// keys' ids. The `jws` target accepts a verified token only if its signing
/// input is one of these.
pub fn genuine_jws() -> Vec<(Algorithm, String, String)> {
    let keys = keys();
    let claims = access_token_claims(NOW);
    let mut out = vec![(
        Algorithm::EdDSA,
        r#"{"alg":"EdDSA"}"#.to_owned(),
        "Example of Ed25519 signing".to_owned(),
    )];
    for alg in [Algorithm::EdDSA, Algorithm::ES256, Algorithm::RS256] {
        let header =
            serde_json::json!({"alg": alg.as_str(), "typ": "at+jwt", "kid": keys.kid(alg)});
        out.push((alg, header.to_string(), claims.to_string()));
    }
    out
}

/// The signing input (`header.payload`, base64url) of a JWS.
pub fn signing_input(header: &str, payload: &str) -> String {
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header),
        URL_SAFE_NO_PAD.encode(payload)
    )
}

/// The claims of an access token the broker would mint, issued at `iat`.
pub fn access_token_claims(iat: i64) -> serde_json::Value {
    serde_json::json!({
        "iss": ISSUER,
        "sub": CLIENT_ID,
        "aud": "demo-api",
        "client_id": CLIENT_ID,
        "exp": iat + 300,
        "iat": iat,
        "nbf": iat,
        "jti": "q0ZB1lbJ6DgIuVEf0Tj7jA",
        "scope": "read:demo/a read:gh/acme/web",
        "job": "job-1",
        "step": "read",
        "workflow": "a",
        "status": {"status_list": {"idx": 3, "uri": LIST_URI}},
    })
}

/// The status list tokens the seed corpora carry, as `(protected header,
/// claims)`, all signed with the Ed25519 key for [`LIST_URI`] around
/// [`NOW`]: one list with a revoked index, one empty, one of 2-bit
/// statuses.
pub fn genuine_status_lists() -> Vec<(String, String)> {
    use stint_core::status_list::{INVALID, SUSPENDED, StatusList, StatusListClaim};
    let header = serde_json::json!({
        "alg": "EdDSA",
        "typ": "statuslist+jwt",
        "kid": keys().kid(Algorithm::EdDSA),
    })
    .to_string();
    let mut revoked = StatusList::new(1, 16).expect("bits");
    revoked.set(3, INVALID).expect("in range");
    let mut two_bits = StatusList::new(2, 8).expect("bits");
    two_bits.set(1, SUSPENDED).expect("in range");
    two_bits.set(2, INVALID).expect("in range");
    [
        (revoked, Some(60)),
        (StatusList::new(1, 0).expect("bits"), None),
        (two_bits, Some(600)),
    ]
    .into_iter()
    .map(|(list, ttl)| {
        let mut claims = serde_json::json!({
            "sub": LIST_URI,
            "iat": NOW,
            "exp": NOW + 300,
            "status_list": StatusListClaim::of(&list),
        });
        if let Some(ttl) = ttl {
            claims["ttl"] = serde_json::json!(ttl);
        }
        (header.clone(), claims.to_string())
    })
    .collect()
}
