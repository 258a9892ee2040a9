//! RFC 8414 authorization server metadata.

use serde::{Deserialize, Serialize};

/// The document served at `/.well-known/oauth-authorization-server`, and,
/// with the fields OpenID Connect Discovery 1.0 section 3 requires as well
/// (`authorization_endpoint`, `subject_types_supported`,
/// `id_token_signing_alg_values_supported`, a non-empty
/// `response_types_supported`), at `/.well-known/openid-configuration`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizationServerMetadata {
    /// The issuer identifier; every token's `iss`.
    pub issuer: String,
    /// The token endpoint.
    pub token_endpoint: String,
    /// Where the public signing keys are published.
    pub jwks_uri: String,
    /// The RFC 7009 revocation endpoint.
    pub revocation_endpoint: String,
    /// The RFC 7662 introspection endpoint.
    pub introspection_endpoint: String,
    /// Supported grant types.
    pub grant_types_supported: Vec<String>,
    /// Stint issues nothing at an authorization endpoint: empty in the RFC
    /// 8414 document, `["none"]` in the OpenID Connect one (which must not
    /// be empty).
    pub response_types_supported: Vec<String>,
    /// OpenID Connect only: an endpoint that refuses every request with
    /// `unsupported_response_type` (Stint has no interactive sign-in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_endpoint: Option<String>,
    /// OpenID Connect only: `["public"]`, a token's `sub` (the workload)
    /// is the same for every audience.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_types_supported: Option<Vec<String>>,
    /// OpenID Connect only: the algorithms the JWTs the broker signs use:
    /// its access tokens' (`access_token_signing_alg_values_supported`),
    /// and `RS256` when a federation key is configured (federation tokens).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token_signing_alg_values_supported: Option<Vec<String>>,
    /// OpenID Connect only, with a federation key: the claims federation
    /// tokens carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claims_supported: Option<Vec<String>>,
    /// Client authentication methods at the token endpoint.
    pub token_endpoint_auth_methods_supported: Vec<String>,
    /// Client authentication methods at the revocation endpoint.
    pub revocation_endpoint_auth_methods_supported: Vec<String>,
    /// Client authentication methods at the introspection endpoint.
    pub introspection_endpoint_auth_methods_supported: Vec<String>,
    /// Algorithms the access tokens may be signed with.
    pub access_token_signing_alg_values_supported: Vec<String>,
    /// Whether tokens minted through a TLS client certificate are bound to
    /// it (RFC 8705 section 3.3); present when client certificates are on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_client_certificate_bound_access_tokens: Option<bool>,
}
