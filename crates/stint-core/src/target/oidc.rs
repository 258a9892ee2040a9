//! OIDC targets: systems that trust Stint as an OpenID Connect issuer
//! (AWS `AssumeRoleWithWebIdentity`, GCP Workload Identity Federation,
//! Azure federated credentials, Vault / OpenBao JWT auth, Kubernetes).
//! For them Stint signs a *federation token*: an RS256 JWT with the
//! audience the system expects and a stable subject its trust policy
//! matches exactly.
//!
//! ```toml
//! [targets.aws-prod]
//! kind = "oidc"
//! audience = "sts.amazonaws.com"   # required: the aud the system expects
//! ttl_secs = 300                   # default 300, 60..=3600; never past the step token
//! aws_session_tags = false         # add AWS session tags (workload, workflow, step, job)
//!
//! [workflows.deploy.steps.apply]
//! scopes = ["federate:aws-prod"]
//! targets = ["aws-prod"]
//! ```
//!
//! Its one scope is `federate:NAME`: what the token may do is decided by
//! the trust policy on the other side.

use super::postgres::PlanError;
use crate::scope::ScopePattern;

/// The one action of an OIDC target's scope.
pub const FEDERATE_ACTION: &str = "federate";
/// The default lifetime of a federation token, in seconds.
pub const DEFAULT_TTL_SECS: u64 = 300;
/// The shortest lifetime a policy may set, in seconds.
pub const MIN_TTL_SECS: u64 = 60;
/// The longest lifetime a policy may set, in seconds.
pub const MAX_TTL_SECS: u64 = 3600;

/// An OIDC target's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcTarget {
    /// The `aud` of its tokens.
    pub audience: String,
    /// Their lifetime, in seconds (cut to the step token's).
    pub ttl_secs: u64,
    /// Whether they carry AWS session tags.
    pub aws_session_tags: bool,
}

/// The one scope of OIDC target `target_name`: `federate:NAME`.
pub fn scope_of(target_name: &str) -> String {
    format!("{FEDERATE_ACTION}:{target_name}")
}

/// Check a policy pattern about OIDC target `target_name`: only
/// `federate:NAME`.
pub fn check_pattern(target_name: &str, pattern: &ScopePattern) -> Result<(), PlanError> {
    if pattern.as_str() == scope_of(target_name) {
        Ok(())
    } else {
        Err(PlanError(format!(
            "pattern {:?}: an oidc target has one scope, {:?} (what its tokens may do is decided by the trust policy of the system that accepts them)",
            pattern.as_str(),
            scope_of(target_name)
        )))
    }
}
