//! OAuth 2.0 request and response shapes.

use serde::{Deserialize, Serialize};
use std::fmt;

/// An OAuth 2.0 error code (RFC 6749 section 5.2, RFC 7009 section 2.2.1,
/// RFC 6750 section 3.1), as it appears in the `error` member.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request is missing a parameter, repeats one, or is malformed.
    InvalidRequest,
    /// Client authentication failed.
    InvalidClient,
    /// The grant is invalid, expired or revoked.
    InvalidGrant,
    /// The client may not use this grant or step.
    UnauthorizedClient,
    /// The `grant_type` is not supported.
    UnsupportedGrantType,
    /// A requested scope is invalid or exceeds what the step allows.
    InvalidScope,
    /// The token type hint names a type the server cannot revoke.
    UnsupportedTokenType,
    /// The requested audience is missing, unknown or not allowed (RFC 8707).
    InvalidTarget,
    /// The server cannot serve the request right now; retry later.
    TemporarilyUnavailable,
    /// The server hit an unexpected condition.
    ServerError,
    /// An approval is still pending: poll again after the interval
    /// (RFC 8628 section 3.5).
    AuthorizationPending,
    /// Polling too fast: add 5 seconds to the interval (RFC 8628).
    SlowDown,
    /// The approval was denied or revoked (RFC 8628).
    AccessDenied,
    /// The approval request expired or ended (RFC 8628).
    ExpiredToken,
    /// The bearer credential is missing, malformed or not accepted
    /// (RFC 6750 section 3.1).
    InvalidToken,
    /// The authorization endpoint issues nothing of that response type
    /// (RFC 6749 section 4.1.2.1): Stint has no interactive authorization.
    UnsupportedResponseType,
}

impl ErrorCode {
    /// The code as it is written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidClient => "invalid_client",
            Self::InvalidGrant => "invalid_grant",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidScope => "invalid_scope",
            Self::UnsupportedTokenType => "unsupported_token_type",
            Self::InvalidTarget => "invalid_target",
            Self::TemporarilyUnavailable => "temporarily_unavailable",
            Self::ServerError => "server_error",
            Self::AuthorizationPending => "authorization_pending",
            Self::SlowDown => "slow_down",
            Self::AccessDenied => "access_denied",
            Self::ExpiredToken => "expired_token",
            Self::InvalidToken => "invalid_token",
            Self::UnsupportedResponseType => "unsupported_response_type",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of every error response: `{"error": ..., "error_description": ...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// The error code.
    pub error: ErrorCode,
    /// A human-readable explanation; never contains a secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_description: Option<String>,
    /// With `authorization_pending` and `slow_down`: the approval request
    /// to poll for (send it back as the `approval_id` parameter), as
    /// RFC 8628's `device_code`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    /// The seconds to wait between polls (RFC 8628 `interval`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<u64>,
    /// Seconds until the request expires unless approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in: Option<u64>,
    /// The job the request is for (send it back as `job` when the broker
    /// chose it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// The request in full: who must approve, who has.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<crate::approvals::ApprovalView>,
}

impl ErrorResponse {
    /// An error with its description and nothing else.
    pub fn new(error: ErrorCode, description: impl Into<String>) -> Self {
        Self {
            error,
            error_description: Some(description.into()),
            approval_id: None,
            interval: None,
            expires_in: None,
            job: None,
            approval: None,
        }
    }
}

/// A successful token response (RFC 6749 section 5.1).
///
/// `job` and `step` are Stint extensions: they echo what the token was
/// minted for, which matters when the broker chose the job id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    /// The signed JWT.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: String,
    /// Seconds until the token expires.
    pub expires_in: u64,
    /// The granted scopes, space separated.
    pub scope: String,
    /// The job the token belongs to.
    pub job: String,
    /// The workflow step the token was minted for.
    pub step: String,
    /// For a token exchange (RFC 8693): the type of the token issued, always
    /// an access token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_token_type: Option<String>,
}

/// An RFC 7662 introspection response.
///
/// An inactive token is exactly `{"active": false}`: the other members are
/// omitted, so nothing about a revoked or foreign token leaks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntrospectionResponse {
    /// Whether the token is currently active.
    pub active: bool,
    /// The token's scopes, space separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The connector the token was issued to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Always `Bearer` for an active token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_type: Option<String>,
    /// Expiry, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    /// Issue time, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    /// Not-before time, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// The workload the token was minted for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// The target system.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// The issuer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// The token's unique id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// The job the token belongs to (Stint extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// The step the token was minted for (Stint extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// The workflow of that step (Stint extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// The certificate the token is bound to, if it is (RFC 8705).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<Confirmation>,
    /// The operator approval the token's elevated scopes were granted
    /// under (Stint extension).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elev: Option<String>,
}

impl IntrospectionResponse {
    /// The response for any token that is not active.
    pub fn inactive() -> Self {
        Self::default()
    }
}

/// The `cnf` (confirmation) member of a certificate-bound token and of its
/// introspection (RFC 8705 section 3.1).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// The base64url SHA-256 of the client certificate's DER.
    #[serde(rename = "x5t#S256")]
    pub x5t_s256: String,
}

/// The body of `POST /v1/jobs/{job}/revoke`'s success response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRevocationResponse {
    /// The job whose tokens were revoked.
    pub job: String,
    /// When the revocation took effect, RFC 3339.
    pub revoked_at: String,
}

/// The body of `POST /v1/admin/keys/rotate`'s success response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRotationResponse {
    /// The new signing key's id: it is published from now on, and signs
    /// from `signs_from`.
    pub kid: String,
    /// Its algorithm.
    pub alg: String,
    /// When the new key begins to sign on every broker, RFC 3339: the
    /// publish lead (`--key-publish-lead`, by default the JWK set's cache
    /// lifetime) after the rotation, so that verifiers holding a cached JWK
    /// set have fetched one with the new key by then.
    pub signs_from: String,
    /// The key it replaces: it signs until `signs_from`, and stays
    /// published (so its tokens keep verifying) until
    /// `retired_key_published_until`, then is removed.
    pub retired_kid: String,
    /// When the retired key leaves the JWKS, RFC 3339.
    pub retired_key_published_until: String,
}

/// The `dev-client.json` file that `stintd --dev` writes: everything a
/// client needs to ask the dev broker for a token.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DevClient {
    /// The broker's issuer URL.
    pub issuer: String,
    /// The token endpoint URL.
    pub token_endpoint: String,
    /// The client id.
    pub client_id: String,
    /// The client secret. Treat the file like a password.
    pub client_secret: String,
}

impl fmt::Debug for DevClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevClient")
            .field("issuer", &self.issuer)
            .field("token_endpoint", &self.token_endpoint)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_serialize_as_rfc_strings() {
        for code in [
            ErrorCode::InvalidRequest,
            ErrorCode::InvalidClient,
            ErrorCode::InvalidGrant,
            ErrorCode::UnauthorizedClient,
            ErrorCode::UnsupportedGrantType,
            ErrorCode::InvalidScope,
            ErrorCode::UnsupportedTokenType,
            ErrorCode::InvalidTarget,
            ErrorCode::TemporarilyUnavailable,
            ErrorCode::ServerError,
            ErrorCode::AuthorizationPending,
            ErrorCode::SlowDown,
            ErrorCode::AccessDenied,
            ErrorCode::ExpiredToken,
            ErrorCode::InvalidToken,
        ] {
            let json = serde_json::to_string(&code).unwrap();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }

    #[test]
    fn inactive_introspection_is_exactly_active_false() {
        let json = serde_json::to_string(&IntrospectionResponse::inactive()).unwrap();
        assert_eq!(json, r#"{"active":false}"#);
    }

    #[test]
    fn dev_client_debug_redacts_the_secret() {
        let dev = DevClient {
            issuer: "http://127.0.0.1:1".into(),
            token_endpoint: "http://127.0.0.1:1/oauth2/token".into(),
            client_id: "demo-job".into(),
            client_secret: "stint_sekrit".into(),
        };
        assert!(!format!("{dev:?}").contains("sekrit"));
    }
}
