//! The claims of a Stint access token (RFC 9068).

use crate::decision::Grant;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};

/// The payload of every access token Stint mints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessTokenClaims {
    /// The broker's issuer URL.
    pub iss: String,
    /// The workload.
    pub sub: String,
    /// The target system.
    pub aud: String,
    /// The connector (client) the token was issued to.
    pub client_id: String,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
    /// Issue time, seconds since the epoch.
    pub iat: i64,
    /// Not valid before, seconds since the epoch (equal to `iat`).
    pub nbf: i64,
    /// Unique id: 128 random bits, base64url.
    pub jti: String,
    /// Granted scopes, space separated, sorted.
    pub scope: String,
    /// The job.
    pub job: String,
    /// The step.
    pub step: String,
    /// The workflow the step belongs to.
    pub workflow: String,
    /// Confirmation (RFC 8705 section 3.1): the token is bound to the TLS
    /// client certificate it was minted through, and only valid presented
    /// over a connection authenticated with that certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
    /// The operator approval its elevated scopes were granted under: the
    /// token is revoked with the approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elev: Option<String>,
    /// Where the token's status is published (draft-ietf-oauth-status-list):
    /// verifiers that poll the status list read its revocation there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<crate::status_list::StatusClaim>,
}

pub use stint_proto::Confirmation;

/// The confirmation that binds a token to a certificate (DER): its
/// base64url SHA-256 thumbprint (RFC 8705 section 3.1).
pub fn confirmation_for_certificate(der: &[u8]) -> Confirmation {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    Confirmation {
        x5t_s256: URL_SAFE_NO_PAD.encode(digest.as_ref()),
    }
}

impl AccessTokenClaims {
    /// The claims for `grant`, issued by `issuer` with id `jti`.
    pub fn from_grant(grant: &Grant, issuer: &str, jti: String) -> Self {
        let scope = grant
            .scopes()
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        Self {
            iss: issuer.to_owned(),
            sub: grant.workload().to_owned(),
            aud: grant.audience().to_owned(),
            client_id: grant.client_id().to_owned(),
            exp: grant.expires_at().timestamp(),
            iat: grant.issued_at().timestamp(),
            nbf: grant.issued_at().timestamp(),
            jti,
            scope,
            job: grant.job().to_owned(),
            step: grant.step().to_owned(),
            workflow: grant.workflow().to_owned(),
            cnf: None,
            elev: grant.approval().map(str::to_owned),
            status: None,
        }
    }

    /// The granted scopes.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scope.split(' ').filter(|s| !s.is_empty())
    }

    /// The token id as the revocation set keys it.
    pub fn jti_key(&self) -> Option<u128> {
        jti_key(&self.jti)
    }
}

/// A fresh token id: 128 bits from `rng`, base64url (22 characters).
pub fn new_jti(rng: &dyn SecureRandom) -> Result<String, ring::error::Unspecified> {
    let mut bytes = [0u8; 16];
    rng.fill(&mut bytes)?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

/// The 128-bit value of a Stint `jti`, or `None` if it is not one.
pub fn jti_key(jti: &str) -> Option<u128> {
    if jti.len() != 22 {
        return None;
    }
    let mut bytes = [0u8; 16];
    match URL_SAFE_NO_PAD.decode_slice(jti, &mut bytes) {
        Ok(16) => Some(u128::from_be_bytes(bytes)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;

    #[test]
    fn jti_round_trips_through_its_key() {
        let rng = SystemRandom::new();
        let jti = new_jti(&rng).unwrap();
        assert_eq!(jti.len(), 22);
        let key = jti_key(&jti).unwrap();
        assert_eq!(URL_SAFE_NO_PAD.encode(key.to_be_bytes()), jti);
        assert_ne!(jti, new_jti(&rng).unwrap());
        assert_eq!(jti_key("short"), None);
        assert_eq!(jti_key("!!!!!!!!!!!!!!!!!!!!!!"), None);
    }
}
