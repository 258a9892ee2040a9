//! RFC 8693 token exchange: a job proves who it is with the ID token its
//! platform gave it (GitHub Actions, GitLab CI, a Kubernetes service
//! account), instead of a client secret.
//!
//! In order, stopping at the first failure: the parameters; the token's
//! shape; its `iss` looked up among the policy's trusted issuers (before any
//! network call: an untrusted issuer is never fetched); its `alg` among the
//! issuer's; the issuer's keys (cached, fetched on demand); the signature;
//! `exp`, `nbf` and `iat` (with the issuer's maximum token age); `aud`; then
//! the workload whose bindings the claims satisfy (exactly one), and the job
//! the claims name, if the issuer has job claims.

use crate::error::OAuthError;
use crate::state::AppState;
use serde_json::Value;
use stint_core::audit::AuditEntry;
use stint_core::decision::DenyReason;
use stint_core::federation::{TokenTimes, TrustedIssuer};
use stint_core::form::FormParams;
use stint_core::jose::{JoseError, MAX_TOKEN_LEN, UnverifiedJws};
use stint_core::policy::{Policy, Workload};
use stint_proto::{ErrorCode, TOKEN_TYPE_ACCESS_TOKEN, TOKEN_TYPE_ID_TOKEN, TOKEN_TYPE_JWT};

/// Clock leeway on a subject token's `exp`, `nbf` and `iat`.
const LEEWAY_SECS: u32 = 30;

/// Who the subject token proves the caller is.
pub(crate) struct Identity<'p> {
    pub(crate) workload: &'p Workload,
    /// The job id the token's claims name, if the issuer has job claims.
    pub(crate) job: Option<String>,
    /// The CI run's page, if the platform's claims name it.
    pub(crate) run_url: Option<String>,
}

fn invalid_grant(reason: DenyReason, description: impl Into<String>) -> OAuthError {
    OAuthError::new(ErrorCode::InvalidGrant, reason, description)
}

fn invalid_token(description: impl Into<String>) -> OAuthError {
    invalid_grant(DenyReason::InvalidSubjectToken, description)
}

/// Authenticate a token exchange request by its subject token.
pub(crate) async fn authenticate<'p>(
    state: &AppState,
    policy: &'p Policy,
    form: &FormParams,
    entry: &mut AuditEntry,
) -> Result<Identity<'p>, OAuthError> {
    let subject_token = form.get("subject_token").ok_or_else(|| {
        OAuthError::invalid_request(
            DenyReason::MalformedRequest,
            "the subject_token parameter is required",
        )
    })?;
    match form.get("subject_token_type") {
        Some(TOKEN_TYPE_ID_TOKEN | TOKEN_TYPE_JWT) => {}
        Some(_) => {
            return Err(OAuthError::invalid_request(
                DenyReason::MalformedRequest,
                "subject_token_type must be urn:ietf:params:oauth:token-type:id_token or urn:ietf:params:oauth:token-type:jwt",
            ));
        }
        None => {
            return Err(OAuthError::invalid_request(
                DenyReason::MalformedRequest,
                "the subject_token_type parameter is required",
            ));
        }
    }
    if form
        .get("requested_token_type")
        .is_some_and(|t| t != TOKEN_TYPE_ACCESS_TOKEN)
    {
        return Err(OAuthError::invalid_request(
            DenyReason::MalformedRequest,
            "Stint issues only access tokens (requested_token_type urn:ietf:params:oauth:token-type:access_token)",
        ));
    }
    if form.get("actor_token").is_some() {
        return Err(OAuthError::invalid_request(
            DenyReason::MalformedRequest,
            "delegation (actor_token) is not supported",
        ));
    }
    identify(state, policy, subject_token, entry).await
}

/// Verify a platform ID token and find the workload bound to it: the heart
/// of the exchange, also how a federated workload authenticates to revoke
/// (`Authorization: Bearer ID_TOKEN`).
pub(crate) async fn identify<'p>(
    state: &AppState,
    policy: &'p Policy,
    subject_token: &str,
    entry: &mut AuditEntry,
) -> Result<Identity<'p>, OAuthError> {
    let (issuer, claims) = verify_id_token(state, policy, subject_token, entry).await?;
    let bound = policy.workloads_for_identity(issuer.name(), &claims);
    let workload = match bound.as_slice() {
        [workload] => *workload,
        [] => {
            return Err(invalid_grant(
                DenyReason::UnboundIdentity,
                "no workload is bound to this identity",
            ));
        }
        _ => {
            tracing::error!(
                issuer = issuer.name(),
                "an identity matches several workloads' bindings: refusing; make the bindings exclusive"
            );
            return Err(invalid_grant(
                DenyReason::UnboundIdentity,
                "this identity matches several workloads",
            ));
        }
    };
    let job = issuer.job_from_claims(&claims).map_err(invalid_token)?;
    Ok(Identity {
        workload,
        job,
        run_url: issuer.run_url(&claims),
    })
}

/// Authenticate a federated workload that presents its platform ID token as
/// `Authorization: Bearer` (where a workload with a secret would use HTTP
/// Basic), verified exactly as [`identify`] verifies a subject token. A
/// refusal is `invalid_client` (the credential is the client's), except that
/// an issuer whose keys cannot be fetched stays `temporarily_unavailable`.
pub(crate) async fn identify_bearer<'p>(
    state: &AppState,
    policy: &'p Policy,
    id_token: &str,
) -> Result<Identity<'p>, OAuthError> {
    // Not audited (the caller's request is not a decision), so what
    // `identify` records along the way is dropped.
    let mut scratch = state.audit_entry(
        state.clock.now(),
        stint_core::audit::EventKind::TokenDenied,
        stint_core::audit::Decision::Deny,
        None,
    );
    identify(state, policy, id_token, &mut scratch)
        .await
        .map_err(|error| {
            if error.code == ErrorCode::TemporarilyUnavailable {
                error
            } else {
                OAuthError::invalid_client(format!(
                    "the bearer ID token was not accepted: {}",
                    error.description
                ))
            }
        })
}

/// Verify an ID token from one of the policy's trusted issuers: its issuer,
/// algorithm, signature, times and audience. Returns the issuer and the
/// verified claims (a JSON object). Also how operators sign in. Each
/// verification is counted in the metrics by its outcome.
pub(crate) async fn verify_id_token<'p>(
    state: &AppState,
    policy: &'p Policy,
    subject_token: &str,
    entry: &mut AuditEntry,
) -> Result<(&'p TrustedIssuer, Value), OAuthError> {
    let verified = verify_id_token_unmetered(state, policy, subject_token, entry).await;
    state.metrics.id_token(match &verified {
        Ok(_) => "verified",
        Err(error) if error.code == ErrorCode::TemporarilyUnavailable => "keys_unavailable",
        Err(error) if error.reason == DenyReason::UntrustedIssuer => "untrusted_issuer",
        Err(_) => "invalid",
    });
    verified
}

async fn verify_id_token_unmetered<'p>(
    state: &AppState,
    policy: &'p Policy,
    subject_token: &str,
    entry: &mut AuditEntry,
) -> Result<(&'p TrustedIssuer, Value), OAuthError> {
    if subject_token.len() > MAX_TOKEN_LEN {
        return Err(invalid_token(format!(
            "the subject token is longer than {MAX_TOKEN_LEN} bytes"
        )));
    }
    let jws = UnverifiedJws::parse(subject_token)
        .map_err(|e| invalid_token(format!("the subject token is not a JWT: {e}")))?;

    // Which issuer? Read from the unverified payload only to choose keys;
    // an issuer the policy does not list is refused here, without a fetch.
    let iss = serde_json::from_slice::<Value>(jws.unverified_payload())
        .ok()
        .and_then(|claims| claims.get("iss").and_then(Value::as_str).map(str::to_owned))
        .ok_or_else(|| invalid_token("the subject token has no iss claim"))?;
    let Some(issuer) = policy.trusted_issuer(&iss) else {
        // Recorded (bounded) for the audit trail; never fetched.
        entry.federated_iss = Some(iss.chars().take(256).collect());
        return Err(invalid_grant(
            DenyReason::UntrustedIssuer,
            "the subject token's issuer is not trusted",
        ));
    };
    entry.federated_iss = Some(issuer.url().to_owned());
    let alg = jws
        .algorithm()
        .map_err(|e| invalid_token(format!("the subject token is refused: {e}")))?;
    if !issuer.algorithms().contains(&alg) {
        return Err(invalid_token(format!(
            "the subject token's algorithm {alg} is not accepted from this issuer"
        )));
    }
    let keys = state
        .issuer_keys
        .keys_for(issuer, jws.header().kid.as_deref())
        .await
        .map_err(|error| {
            tracing::warn!(%error, "subject token not verifiable");
            OAuthError::unavailable("the identity provider's keys could not be fetched")
        })?;
    let payload = jws.verified_payload(&keys).map_err(|e| match e {
        JoseError::UnknownKey => {
            invalid_token("the subject token is signed by a key its issuer does not publish")
        }
        other => invalid_token(format!("the subject token is refused: {other}")),
    })?;
    let claims: Value = serde_json::from_slice(&payload)
        .ok()
        .filter(Value::is_object)
        .ok_or_else(|| invalid_token("the subject token's claims are not a JSON object"))?;
    entry.federated_sub = claims
        .get("sub")
        .and_then(Value::as_str)
        .map(|sub| sub.chars().take(256).collect());

    let number = |name: &str| claims.get(name).and_then(Value::as_i64);
    let times = TokenTimes {
        exp: number("exp").ok_or_else(|| {
            invalid_token("the subject token has no exp claim that is a whole number of seconds")
        })?,
        nbf: match claims.get("nbf") {
            None => None,
            Some(_) => Some(number("nbf").ok_or_else(|| {
                invalid_token("the subject token's nbf claim is not a whole number of seconds")
            })?),
        },
        iat: number("iat").ok_or_else(|| {
            invalid_token("the subject token has no iat claim that is a whole number of seconds")
        })?,
    };
    times
        .check(
            state.clock.now().timestamp(),
            issuer.max_token_age(),
            LEEWAY_SECS,
        )
        .map_err(|e| invalid_token(format!("the subject token {e}")))?;
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => issuer.audiences().contains(aud),
        Some(Value::Array(auds)) => auds
            .iter()
            .filter_map(Value::as_str)
            .any(|aud| issuer.audiences().iter().any(|a| a == aud)),
        _ => false,
    };
    if !audience_ok {
        return Err(invalid_token(
            "the subject token is for another audience than this broker",
        ));
    }

    Ok((issuer, claims))
}
