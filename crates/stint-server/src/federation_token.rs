//! Federation tokens: the RS256 JWTs Stint signs for OIDC targets (AWS
//! `AssumeRoleWithWebIdentity`, GCP Workload Identity Federation, Azure
//! federated credentials, Vault / OpenBao JWT auth, Kubernetes).
//!
//! Their keys come from the operator's files (`--federation-key FILE`,
//! repeatable): ring cannot make RSA keys, and a cloud's trust is in the
//! operator's hands anyway, as with Kubernetes'
//! `--service-account-signing-key-file`. The first key signs; every key is
//! published in the JWK set, so a rotation is: add the new key second,
//! wait past the relying parties' JWKS cache lifetime, move it first,
//! later remove the old one. The claims are built by
//! [`stint_core::target::oidc::federation_claims`] (pure); this module
//! loads the keys and signs.

use ring::rand::SecureRandom;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use stint_core::jose::SigningKey;
use stint_core::target::oidc::FederationClaims;
use stint_proto::Jwk;

/// The largest key file read, in bytes (a 4096-bit PEM key is ~3.3 KiB).
const MAX_KEY_FILE_LEN: u64 = 64 * 1024;

/// The `typ` header of a federation token: a plain JWT, as every relying
/// party expects of an OIDC token.
pub const FEDERATION_TOKEN_TYP: &str = "JWT";

/// A federation key file that cannot be used, and why (never its bytes).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--federation-key {}: {why}", path.display())]
pub struct FederationKeyError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub why: String,
}

/// The federation signing keys: the first signs, all are published.
#[derive(Debug, Clone, Default)]
pub struct FederationKeys {
    keys: Vec<Arc<SigningKey>>,
}

impl FederationKeys {
    /// Load RS256 keys from PEM (PKCS#8 or PKCS#1) or DER files, in
    /// order. A file readable by group or others is used, with a warning.
    pub fn load(paths: &[PathBuf]) -> Result<Self, FederationKeyError> {
        let mut keys: Vec<Arc<SigningKey>> = Vec::with_capacity(paths.len());
        for path in paths {
            let key = load_one(path)?;
            if keys.iter().any(|k| k.kid() == key.kid()) {
                return Err(FederationKeyError {
                    path: path.clone(),
                    why: format!("the same key (kid {}) is given twice", key.kid()),
                });
            }
            tracing::info!(path = %path.display(), kid = key.kid(), signs = keys.is_empty(), "federation key loaded");
            keys.push(Arc::new(key));
        }
        Ok(Self { keys })
    }

    /// Keys already loaded (the first signs).
    pub fn from_keys(keys: Vec<SigningKey>) -> Self {
        Self {
            keys: keys.into_iter().map(Arc::new).collect(),
        }
    }

    /// The key that signs, if any is configured.
    pub fn signing_key(&self) -> Option<&SigningKey> {
        self.keys.first().map(Arc::as_ref)
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The public keys, for the JWK set (each with `kid`, `alg`, `use`).
    pub fn public_jwks(&self) -> Vec<Jwk> {
        self.keys.iter().map(|k| k.public_jwk().clone()).collect()
    }
}

fn load_one(path: &Path) -> Result<SigningKey, FederationKeyError> {
    let fail = |why: String| FederationKeyError {
        path: path.to_owned(),
        why,
    };
    let metadata = std::fs::metadata(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        if metadata.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                "a federation key file is readable by group or others: chmod 600 it"
            );
        }
    }
    if metadata.len() > MAX_KEY_FILE_LEN {
        return Err(fail(format!(
            "it is larger than {MAX_KEY_FILE_LEN} bytes: not a key file"
        )));
    }
    let bytes = std::fs::read(path).map_err(|e| fail(format!("cannot read it: {e}")))?;
    let looks_pem = bytes.starts_with(b"-----") || bytes.windows(11).any(|w| w == b"-----BEGIN ");
    let key = if looks_pem {
        SigningKey::from_rsa_pem(&bytes)
    } else {
        SigningKey::from_rsa_der(&bytes)
    };
    key.map_err(|e| fail(e.to_string()))
}

/// The message of an exchange for an OIDC target on a broker without a
/// federation key.
pub const NO_FEDERATION_KEY: &str =
    "no federation signing key is configured: start stintd with --federation-key FILE";

/// Log a warning if `policy` declares OIDC targets that nothing can sign
/// for.
pub(crate) fn warn_if_unsigned(policy: &stint_core::policy::Policy, keys: &FederationKeys) {
    if !keys.is_empty() {
        return;
    }
    let oidc: Vec<&str> = policy
        .targets()
        .filter(|t| matches!(t.kind(), stint_core::target::TargetKind::Oidc(_)))
        .map(|t| t.name())
        .collect();
    if !oidc.is_empty() {
        tracing::warn!(
            targets = %oidc.join(", "),
            "the policy declares oidc targets but {NO_FEDERATION_KEY}; their exchanges are refused until then"
        );
    }
}

/// Sign `claims` with `key`: header `alg: RS256`, `typ: JWT`, `kid`.
pub(crate) fn sign(
    key: &SigningKey,
    claims: &FederationClaims,
    rng: &dyn SecureRandom,
) -> Result<String, stint_core::jose::JoseError> {
    key.sign_jwt(FEDERATION_TOKEN_TYP, claims, rng)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    const PEM: &[u8] = include_bytes!("../../stint-core/testdata/rsa2048.pem");
    const DER: &[u8] = include_bytes!("../../stint-core/testdata/rsa2048.der");

    fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    #[test]
    fn pem_and_der_files_load_and_the_first_signs() {
        let dir = tempfile::tempdir().unwrap();
        let pem = write(dir.path(), "k.pem", PEM);
        let keys = FederationKeys::load(std::slice::from_ref(&pem)).unwrap();
        let kid = keys.signing_key().unwrap().kid().to_owned();
        let jwks = keys.public_jwks();
        assert_eq!(jwks.len(), 1);
        assert_eq!(jwks[0].alg.as_deref(), Some("RS256"));
        assert_eq!(jwks[0].key_use.as_deref(), Some("sig"));
        let der = write(dir.path(), "k.der", DER);
        let same = FederationKeys::load(std::slice::from_ref(&der)).unwrap();
        assert_eq!(same.signing_key().unwrap().kid(), kid);
        // The same key twice is a mistake, named.
        let error = FederationKeys::load(&[pem, der]).unwrap_err();
        assert!(error.why.contains("twice"), "{error}");
    }

    #[test]
    fn unusable_files_are_refused_naming_the_file_never_the_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let error = FederationKeys::load(std::slice::from_ref(&missing)).unwrap_err();
        assert_eq!(error.path, missing);
        assert!(error.to_string().contains("missing.pem"), "{error}");

        let secret_text =
            b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWJ5dGVz\n-----END PRIVATE KEY-----\n";
        let bad = write(dir.path(), "bad.pem", secret_text);
        let error = FederationKeys::load(&[bad]).unwrap_err().to_string();
        assert!(error.contains("bad.pem"), "{error}");
        assert!(!error.contains("c2VjcmV0"), "{error}");

        let small = write(
            dir.path(),
            "small.pem",
            include_bytes!("../../stint-core/testdata/rsa1024.pem"),
        );
        let error = FederationKeys::load(&[small]).unwrap_err().to_string();
        assert!(error.contains("2048 to 4096 bits"), "{error}");
    }
}
