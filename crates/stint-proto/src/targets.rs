//! Target credentials: what a step token is exchanged for when the system
//! it reaches is a target Stint makes native credentials for (a PostgreSQL
//! login today).
//!
//! The exchange is RFC 8693 at the token endpoint: `grant_type` token
//! exchange, the step token as `subject_token` (type
//! [`TOKEN_TYPE_ACCESS_TOKEN`](crate::TOKEN_TYPE_ACCESS_TOKEN)), and the
//! target named by `audience=NAME` or `resource=urn:stint:target:NAME`. The
//! answer is a [`TargetCredentialResponse`]: the secret is its
//! `access_token` (RFC 8693 section 2.2.1, `token_type` `N_A`, since it is
//! not an OAuth access token), returned once and never stored by Stint.

use serde::{Deserialize, Serialize};
use std::fmt;

/// `issued_token_type` of a PostgreSQL login: `access_token` is the
/// password of the role named in [`PostgresLogin::user`].
pub const TOKEN_TYPE_POSTGRES_LOGIN: &str = "urn:stint:params:oauth:token-type:postgres-login";

/// The `issued_token_type` of a GitHub installation token.
pub const TOKEN_TYPE_GITHUB_INSTALLATION_TOKEN: &str =
    "urn:stint:params:oauth:token-type:github-installation-token";

/// How to use a GitHub installation token: send it as
/// `Authorization: Bearer TOKEN` to `api_url`, or as the password of user
/// `x-access-token` to git over HTTPS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GithubToken {
    /// The API's base URL (`https://api.github.com`, or a GitHub Enterprise
    /// Server's `https://HOST/api/v3`).
    pub api_url: String,
    /// The host git reaches over HTTPS (`github.com`, or the server's).
    pub git_host: String,
    /// The installation the token is for.
    pub installation_id: u64,
    /// The repositories it reaches, `owner/name`.
    pub repositories: Vec<String>,
    /// Permission name to level (`contents` -> `write`), as GitHub
    /// granted them.
    pub permissions: std::collections::BTreeMap<String, String>,
    /// When GitHub stops accepting it by itself, seconds since the epoch
    /// (an hour after it was made). Stint revokes it at the step's end,
    /// which is sooner.
    pub github_expires_at: i64,
}

/// The `resource` form of a target's name: `urn:stint:target:NAME`.
pub const TARGET_RESOURCE_PREFIX: &str = "urn:stint:target:";

/// `token_type` of a credential that is not an OAuth access token
/// (RFC 8693 section 2.2.1).
pub const TOKEN_TYPE_NOT_APPLICABLE: &str = "N_A";

/// Where the native credentials of one step token live: revoke one with
/// `DELETE /v1/target-credentials/{credential_id}`, authenticated by the
/// step token it was exchanged from (`Authorization: Bearer`).
pub const TARGET_CREDENTIALS_PATH: &str = "/v1/target-credentials";

/// The answer to a target-credential exchange.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetCredentialResponse {
    /// The secret itself (for PostgreSQL, the password). Shown once.
    pub access_token: String,
    /// Always [`TOKEN_TYPE_NOT_APPLICABLE`].
    pub token_type: String,
    /// What `access_token` is, e.g. [`TOKEN_TYPE_POSTGRES_LOGIN`].
    pub issued_token_type: String,
    /// Seconds until the credential stops working: the step token's `exp`.
    pub expires_in: u64,
    /// The credential's id at Stint (not a secret): the handle to revoke it
    /// alone, and what the audit log names it by.
    pub credential_id: String,
    /// The target's name in the policy.
    pub target: String,
    /// The target's kind, e.g. `postgres`.
    pub kind: String,
    /// The scopes the credential carries (those of the step token that
    /// name this target), space-separated.
    pub scope: String,
    /// How to use a PostgreSQL login (kind `postgres`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresLogin>,
    /// How to use a GitHub installation token (kind `github`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github: Option<GithubToken>,
    /// What a federation token says (kind `oidc`): `access_token` is the
    /// signed JWT itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federation: Option<FederationToken>,
}

impl fmt::Debug for TargetCredentialResponse {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TargetCredentialResponse")
            .field("access_token", &"<redacted>")
            .field("token_type", &self.token_type)
            .field("issued_token_type", &self.issued_token_type)
            .field("expires_in", &self.expires_in)
            .field("credential_id", &self.credential_id)
            .field("target", &self.target)
            .field("kind", &self.kind)
            .field("scope", &self.scope)
            .field("postgres", &self.postgres)
            .field("github", &self.github)
            .field("federation", &self.federation)
            .finish()
    }
}

/// The public claims of a federation token (kind `oidc`), so that a
/// caller need not decode the JWT to learn them. None is a secret. Its
/// `issued_token_type` is [`TOKEN_TYPE_JWT`](crate::TOKEN_TYPE_JWT), or
/// [`TOKEN_TYPE_ID_TOKEN`](crate::TOKEN_TYPE_ID_TOKEN) when asked for so.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FederationToken {
    /// Its `aud`: the audience the target expects.
    pub audience: String,
    /// Its `sub`: what the trust policy on the other side matches.
    pub subject: String,
    /// Its `exp`, in seconds since the epoch.
    pub expires_at: i64,
    /// The key it is signed with (RS256), as the JWKS names it.
    pub kid: String,
}

/// What libpq needs besides the password (`PGHOST`, `PGPORT`,
/// `PGDATABASE`, `PGUSER`, `PGSSLMODE`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PostgresLogin {
    /// The server's host name or address.
    pub host: String,
    /// The server's port.
    pub port: u16,
    /// The database the login is for.
    pub database: String,
    /// The role to log in as (`stint_...`).
    pub user: String,
    /// libpq's `sslmode` to use: `verify-full`, `require` or `disable`,
    /// as the target is configured at Stint.
    pub sslmode: String,
    /// When the role stops accepting logins (`VALID UNTIL`), in seconds
    /// since the epoch: the step token's `exp`.
    pub expires_at: i64,
}
