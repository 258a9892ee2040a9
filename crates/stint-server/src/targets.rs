//! The broker as the host of its target credentials
//! ([`stint_targets::queue`]): its clock, store, audit log, randomness,
//! revocations and metrics, and the OAuth errors a refused mint becomes.

use crate::error::OAuthError;
use crate::state::AppState;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use stint_core::audit::AuditEntry;
use stint_core::claims::AccessTokenClaims;
use stint_core::decision::DenyReason;
use stint_proto::ErrorCode;
use stint_store::Store;
use stint_targets::queue::{Host, MintError, UpstreamFailure};

#[async_trait]
impl Host for AppState {
    fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    fn rng(&self) -> &ring::rand::SystemRandom {
        &self.rng
    }

    fn is_revoked(&self, claims: &AccessTokenClaims, now: DateTime<Utc>) -> bool {
        self.revocations.is_revoked(claims, now) || self.is_pending(claims)
    }

    async fn audit(&self, entry: AuditEntry) -> Result<(), String> {
        self.audit.record(entry).await.map_err(|e| e.to_string())
    }

    fn count(&self, target: &str, event: &str) {
        self.metrics.target_event(target, event);
    }

    fn instance(&self) -> &str {
        &self.instance
    }
}

/// The OAuth error a refused mint is answered with.
pub(crate) fn oauth_error(error: MintError) -> OAuthError {
    let refused = OAuthError::new;
    match error {
        MintError::UnknownTarget(target) => refused(
            ErrorCode::InvalidTarget,
            DenyReason::UnknownTarget,
            format!("the policy declares no target named {target}"),
        ),
        MintError::TargetBroken { target, why } => refused(
            ErrorCode::TemporarilyUnavailable,
            DenyReason::TargetUnavailable,
            format!("target {target} cannot be used now: {why}"),
        ),
        MintError::PlanRefused(why) => {
            refused(ErrorCode::InvalidScope, DenyReason::TargetPlanRefused, why)
        }
        MintError::AlreadyExchanged(target) => refused(
            ErrorCode::InvalidGrant,
            DenyReason::AlreadyExchanged,
            format!(
                "this step token was already exchanged for a credential on target {target}: ask for a new step token"
            ),
        ),
        MintError::NotRecorded => {
            OAuthError::unavailable("the credential could not be recorded before it is made")
        }
        MintError::RevokedMeanwhile => refused(
            ErrorCode::InvalidGrant,
            DenyReason::InactiveSubjectToken,
            "the step token was revoked while its credential was being made; the credential is being destroyed".to_owned(),
        ),
        MintError::Upstream {
            target, failure, ..
        } => match failure {
            UpstreamFailure::Unavailable(why) => refused(
                ErrorCode::TemporarilyUnavailable,
                DenyReason::TargetUnavailable,
                format!("target {target} is unavailable: {why}; nothing was handed out, retry later"),
            ),
            UpstreamFailure::RateLimited {
                retry_after_secs,
                message,
            } => refused(
                ErrorCode::TemporarilyUnavailable,
                DenyReason::TargetRateLimited,
                format!(
                    "target {target} is rate limited ({message}); nothing was handed out: retry after {retry_after_secs} s"
                ),
            )
            .with_retry_after(retry_after_secs),
            UpstreamFailure::Permanent(why) => refused(
                ErrorCode::ServerError,
                DenyReason::TargetRefused,
                format!("target {target}: {why}"),
            ),
            // Undefined schema, table or sequence: the scope names an
            // object the target does not have.
            UpstreamFailure::Refused { code, message }
                if matches!(code.as_str(), "3F000" | "42P01") =>
            {
                refused(
                    ErrorCode::InvalidScope,
                    DenyReason::TargetRefused,
                    format!(
                        "target {target} has no such object ({code}: {message}); nothing was made"
                    ),
                )
            }
            UpstreamFailure::Refused { code, message } if code.starts_with("github:") => {
                github_refusal(&target, &code, &message)
            }
            UpstreamFailure::Refused { code, message } => refused(
                ErrorCode::ServerError,
                DenyReason::TargetRefused,
                format!(
                    "target {target} refused to make the credential ({code}: {message}); nothing was made: check the admin's privileges (docs/targets.md)"
                ),
            ),
        },
        MintError::Internal(what) => refused(ErrorCode::ServerError, DenyReason::Internal, what.to_owned()),
    }
}

/// GitHub's refusals, each its own OAuth error.
fn github_refusal(target: &str, code: &str, message: &str) -> OAuthError {
    let (error, description) = match code {
        "github:401" => (
            ErrorCode::ServerError,
            format!(
                "GitHub refused the App's credentials for target {target} (401: {message}): check its app_id or client_id and private_key_file (docs/targets.md)"
            ),
        ),
        "github:404" => (
            ErrorCode::InvalidTarget,
            format!("target {target}: {message}"),
        ),
        "github:422" => (
            ErrorCode::InvalidScope,
            format!(
                "GitHub refused the repositories or permissions for target {target} (422: {message}): the App's installation must hold every permission and repository the step asks for"
            ),
        ),
        "github:mismatch" => (
            ErrorCode::ServerError,
            format!("target {target}: {message}; nothing was handed out"),
        ),
        _ => (
            ErrorCode::ServerError,
            format!(
                "GitHub refused the token for target {target} ({}: {message}); nothing was handed out",
                code.trim_start_matches("github:")
            ),
        ),
    };
    OAuthError::new(error, DenyReason::TargetRefused, description)
}
