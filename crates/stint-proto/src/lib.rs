//! Wire types shared by `stintd`, the `stint-client` SDK and the `stint`
//! command line, so that the three can never disagree on a field name.
//!
//! Everything here is plain data with `serde` derives: no I/O, no logic
//! beyond small constructors. The OAuth shapes follow RFC 6749 (errors and
//! token responses), RFC 7662 (introspection), RFC 8414 (metadata) and
//! RFC 7517 (JWK sets).
#![warn(missing_docs)]

pub mod approvals;
pub mod jobs;
pub mod jwk;
pub mod metadata;
pub mod oauth;
pub mod revocations;
pub mod targets;
pub mod workloads;

pub use approvals::{
    APPROVALS_PATH, ApprovalList, ApprovalView, ApprovalVote, ApproveBody, DecisionBody,
};
pub use jobs::StepRevocationResponse;
pub use jwk::{Jwk, JwkKey, JwkSet};
pub use metadata::AuthorizationServerMetadata;
pub use oauth::{
    Confirmation, DevClient, ErrorCode, ErrorResponse, IntrospectionResponse,
    JobRevocationResponse, KeyRotationResponse, TokenResponse,
};
pub use revocations::{
    FeedPosition, REVOCATION_SNAPSHOT_PATH, REVOCATION_STREAM_PATH, RevocationEvent,
    RevocationSnapshot,
};
pub use targets::{
    FederationToken, GithubToken, PostgresLogin, TARGET_CREDENTIALS_PATH, TARGET_RESOURCE_PREFIX,
    TOKEN_TYPE_GITHUB_INSTALLATION_TOKEN, TOKEN_TYPE_NOT_APPLICABLE, TOKEN_TYPE_POSTGRES_LOGIN,
    TargetCredentialResponse,
};
pub use workloads::WorkloadState;

/// The token endpoint's path.
pub const TOKEN_PATH: &str = "/oauth2/token";
/// The RFC 7009 revocation endpoint's path.
pub const REVOCATION_PATH: &str = "/oauth2/revoke";
/// The RFC 7662 introspection endpoint's path.
pub const INTROSPECTION_PATH: &str = "/oauth2/introspect";
/// The JWK set's path.
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
/// The RFC 8414 metadata path.
pub const METADATA_PATH: &str = "/.well-known/oauth-authorization-server";
/// The OpenID-style discovery path; it serves the same document as
/// [`METADATA_PATH`], for clients that only know this one.
pub const OPENID_CONFIGURATION_PATH: &str = "/.well-known/openid-configuration";
/// The authorization endpoint named in the OpenID Connect discovery
/// document: it refuses every request (`unsupported_response_type`).
pub const AUTHORIZATION_PATH: &str = "/oauth2/authorize";

/// Signing key rotation, for workloads with the `admin` capability.
pub const KEY_ROTATION_PATH: &str = "/v1/admin/keys/rotate";

/// The `typ` header of every access token Stint mints (RFC 9068 section 2.1).
pub const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// The `grant_type` of the client credentials grant (RFC 6749 section 4.4).
pub const GRANT_CLIENT_CREDENTIALS: &str = "client_credentials";

/// The RFC 8693 token exchange grant type.
pub const GRANT_TOKEN_EXCHANGE: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 8693 token type: an OpenID Connect ID token.
pub const TOKEN_TYPE_ID_TOKEN: &str = "urn:ietf:params:oauth:token-type:id_token";
/// RFC 8693 token type: a JWT.
pub const TOKEN_TYPE_JWT: &str = "urn:ietf:params:oauth:token-type:jwt";
/// RFC 8693 token type: an OAuth access token (what Stint issues).
pub const TOKEN_TYPE_ACCESS_TOKEN: &str = "urn:ietf:params:oauth:token-type:access_token";
