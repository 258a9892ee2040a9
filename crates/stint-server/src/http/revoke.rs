//! Revocation: one token (RFC 7009) or every token of a job.

use super::RequestContext;
use super::client_auth::{bearer, credentials, read_form};
use super::exchange;
use crate::error::OAuthError;
use crate::state::{AppState, Revocation, TokenState};
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use http::{HeaderMap, StatusCode};
use std::sync::Arc;
use stint_core::audit::{AuditEntry, Decision, EventKind};
use stint_core::decision::DenyReason;
use stint_core::form::FormParams;
use stint_core::ids::validate_job_id;
use stint_core::policy::{Policy, Workload};
use stint_core::revocation::{JobRevocation, StepRevocation, TokenRevocation};
use stint_proto::ErrorCode;
use stint_proto::oauth::JobRevocationResponse;

/// What a valid revocation request did.
enum Revoked {
    /// The token is now revoked (or already was).
    Now,
    /// Nothing to do: the token had expired, or is not one of ours. RFC
    /// 7009 answers 200 either way.
    Nothing(&'static str),
}

pub(crate) async fn revoke_token(
    State(state): State<Arc<AppState>>,
    Extension(context): Extension<RequestContext>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let now = state.clock.now();
    let mut entry = state.audit_entry(
        now,
        EventKind::TokenRevocationDenied,
        Decision::Deny,
        Some(&context),
    );
    let outcome = revoke(&state, &headers, body, &mut entry).await;
    match &outcome {
        Ok(Revoked::Now) => {
            entry.event = EventKind::TokenRevoked;
            entry.decision = Decision::Allow;
        }
        Ok(Revoked::Nothing(reason)) => entry.reason = Some((*reason).to_owned()),
        Err(error) => {
            entry.reason = Some(error.reason.as_str().to_owned());
            entry.detail = Some(error.description.clone());
        }
    }
    if let Err(unavailable) = state.record(entry).await {
        return unavailable.into_response();
    }
    match outcome {
        Ok(Revoked::Now) => {
            state.metrics.revoked("token");
            StatusCode::OK.into_response()
        }
        Ok(Revoked::Nothing(reason)) => {
            state.metrics.revocation_denied(reason);
            StatusCode::OK.into_response()
        }
        Err(error) => {
            state.metrics.revocation_denied(error.reason.as_str());
            error.into_response()
        }
    }
}

async fn revoke(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    entry: &mut AuditEntry,
) -> Result<Revoked, OAuthError> {
    let form = read_form(headers, body, state.body_timeout).await?;
    let policy = state.policy.load();
    let Caller { workload, only_job } = caller(state, &policy, headers, Some(&form), entry).await?;
    entry.sub = Some(workload.name().to_owned());
    let token = form.get("token").ok_or_else(|| {
        OAuthError::invalid_request(
            DenyReason::MalformedRequest,
            "the token parameter is required",
        )
    })?;
    // token_type_hint is optional and only a hint (RFC 7009 section 2.1):
    // Stint has only access tokens, so it is not consulted.
    let now = state.clock.now();
    let claims = match state.check_token(token, now)? {
        TokenState::Active(claims) | TokenState::Revoked(claims) => claims,
        TokenState::Expired => return Ok(Revoked::Nothing("already_expired")),
        TokenState::Unknown => return Ok(Revoked::Nothing("unknown_token")),
    };
    entry.jti = Some(claims.jti.clone());
    entry.job = Some(claims.job.clone());
    entry.step = Some(claims.step.clone());
    entry.aud = Some(claims.aud.clone());
    entry.exp = Some(claims.exp);
    entry.scopes = claims.scopes().map(str::to_owned).collect();
    if only_job.as_ref().is_some_and(|job| *job != claims.job) {
        return Err(not_this_job());
    }
    if claims.client_id != workload.client_id() || claims.sub != workload.name() {
        return Err(OAuthError::new(
            ErrorCode::UnauthorizedClient,
            DenyReason::NotTokensOwner,
            "the token was not issued to this client",
        ));
    }
    let revocation = TokenRevocation {
        jti: claims.jti.clone(),
        sub: claims.sub.clone(),
        job: claims.job.clone(),
        expires_at: claims.exp,
        revoked_at: now.timestamp(),
    };
    // In force first: the token is dead from this instant, even if the
    // store write below fails (then the client is told to retry).
    state.enforce(Revocation::Token(&revocation, &claims));
    state
        .store
        .revoke_token(&revocation)
        .await
        .map_err(|error| {
            tracing::error!(%error, "revocation not durable");
            OAuthError::unavailable("the revocation could not be made durable")
        })?;
    Ok(Revoked::Now)
}

/// Who is asking, and which job (if only one) they speak for.
struct Caller<'p> {
    workload: &'p Workload,
    /// A bearer credential tied to one job (a step token, or an ID token
    /// whose claims name the job) speaks for that job only.
    only_job: Option<String>,
}

/// Who is asking: a workload authenticated by its client credentials
/// (HTTP Basic, or in the form body when `form` is given); or, as
/// `Authorization: Bearer`, one of the broker's own active access tokens
/// (a federated job revokes with the step token itself, which outlives its
/// platform ID token) or a federated workload's platform ID token, verified
/// exactly as a token exchange verifies it.
async fn caller<'p>(
    state: &AppState,
    policy: &'p Policy,
    headers: &HeaderMap,
    form: Option<&FormParams>,
    entry: &mut AuditEntry,
) -> Result<Caller<'p>, OAuthError> {
    if let Some(presented) = bearer(headers) {
        // A genuine, unexpired token of ours (revoked already or not:
        // revoking again, or completing its job, changes nothing for the
        // worse).
        if let Ok(TokenState::Active(claims) | TokenState::Revoked(claims)) =
            state.check_token(presented, state.clock.now())
        {
            let workload = policy
                .workload(&claims.sub)
                .filter(|w| w.client_id() == claims.client_id)
                .ok_or_else(|| {
                    OAuthError::invalid_client("the bearer token's workload is not in the policy")
                })?;
            entry.client_id = Some(workload.client_id().to_owned());
            return Ok(Caller {
                workload,
                only_job: Some(claims.job),
            });
        }
        let id_token = presented;
        let identity = exchange::identify(state, policy, id_token, entry)
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
            })?;
        entry.client_id = Some(identity.workload.client_id().to_owned());
        return Ok(Caller {
            workload: identity.workload,
            only_job: identity.job,
        });
    }
    let credentials = credentials(headers, form)?;
    entry.client_id = credentials.loggable_id(policy);
    Ok(Caller {
        workload: credentials.authenticate(policy)?,
        only_job: None,
    })
}

fn not_this_job() -> OAuthError {
    OAuthError::new(
        ErrorCode::UnauthorizedClient,
        DenyReason::NotTokensOwner,
        "this bearer credential speaks for another job",
    )
}

pub(crate) async fn revoke_job(
    State(state): State<Arc<AppState>>,
    Extension(context): Extension<RequestContext>,
    job: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let now = state.clock.now();
    let mut entry = state.audit_entry(
        now,
        EventKind::JobRevocationDenied,
        Decision::Deny,
        Some(&context),
    );
    let outcome = revoke_job_inner(&state, job, &headers, &mut entry).await;
    let sub = entry.sub.clone();
    let outcome = match state
        .record_outcome(entry, outcome, EventKind::JobRevoked)
        .await
    {
        Ok(outcome) => outcome,
        Err(response) => return response,
    };
    match outcome {
        Ok(response) => {
            state.metrics.revoked("job");
            // The job's approvals end with it (its tokens, elevated or
            // not, are already revoked with the job). If that cannot be
            // stored, say so: the revocation stands, a retry is harmless,
            // and the sweep ends them while the job's revocation lasts.
            if let Some(workload) = &sub
                && !state
                    .approvals
                    .end_job(&state, workload, &response.job)
                    .await
            {
                return OAuthError::unavailable(
                    "the job is revoked, but ending its approvals could not be stored",
                )
                .into_response();
            }
            Json(response).into_response()
        }
        Err(error) => {
            state.metrics.revocation_denied(error.reason.as_str());
            error.into_response()
        }
    }
}

/// `POST /v1/jobs/{job}/steps/{step}/revoke`: every token of one step of
/// one of the caller's jobs, and no new one for it.
pub(crate) async fn revoke_step(
    State(state): State<Arc<AppState>>,
    Extension(context): Extension<RequestContext>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> Response {
    let now = state.clock.now();
    let mut entry = state.audit_entry(
        now,
        EventKind::JobRevocationDenied,
        Decision::Deny,
        Some(&context),
    );
    let outcome = revoke_step_inner(&state, path, &headers, &mut entry).await;
    match state
        .record_outcome(entry, outcome, EventKind::StepRevoked)
        .await
    {
        Ok(Ok(response)) => {
            state.metrics.revoked("step");
            Json(response).into_response()
        }
        Ok(Err(error)) => {
            state.metrics.revocation_denied(error.reason.as_str());
            error.into_response()
        }
        Err(response) => response,
    }
}

async fn revoke_step_inner(
    state: &AppState,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: &HeaderMap,
    entry: &mut AuditEntry,
) -> Result<serde_json::Value, OAuthError> {
    let policy = state.policy.load();
    let Caller { workload, only_job } = caller(state, &policy, headers, None, entry).await?;
    entry.sub = Some(workload.name().to_owned());
    let Path((job, step)) = path.map_err(|_| {
        OAuthError::invalid_request(DenyReason::MalformedJob, "the job id or step is malformed")
    })?;
    validate_job_id(&job).map_err(|e| {
        OAuthError::invalid_request(
            DenyReason::MalformedJob,
            format!("the job id is malformed: it {e}"),
        )
    })?;
    stint_core::ids::validate_name(&step).map_err(|e| {
        OAuthError::invalid_request(
            DenyReason::MalformedStep,
            format!("the step is malformed: it {e}"),
        )
    })?;
    entry.job = Some(job.clone());
    entry.step = Some(step.clone());
    if only_job.as_ref().is_some_and(|only| *only != job) {
        return Err(not_this_job());
    }
    let now = state.clock.now();
    let revocation = StepRevocation::new(workload.name(), &job, &step, now);
    state.enforce(Revocation::Step(&revocation));
    state
        .store
        .revoke_step(&revocation)
        .await
        .map_err(|error| {
            tracing::error!(%error, "step revocation not durable");
            OAuthError::unavailable("the revocation could not be made durable")
        })?;
    Ok(serde_json::json!({
        "job": job,
        "step": step,
        "revoked_at": crate::audit::timestamp(now),
    }))
}

async fn revoke_job_inner(
    state: &AppState,
    job: Result<Path<String>, PathRejection>,
    headers: &HeaderMap,
    entry: &mut AuditEntry,
) -> Result<JobRevocationResponse, OAuthError> {
    let policy = state.policy.load();
    let Caller { workload, only_job } = caller(state, &policy, headers, None, entry).await?;
    entry.sub = Some(workload.name().to_owned());
    let Path(job) = job.map_err(|_| {
        OAuthError::invalid_request(DenyReason::MalformedJob, "the job id is malformed")
    })?;
    validate_job_id(&job).map_err(|e| {
        OAuthError::invalid_request(
            DenyReason::MalformedJob,
            format!("the job id is malformed: it {e}"),
        )
    })?;
    entry.job = Some(job.clone());
    if only_job.as_ref().is_some_and(|only| *only != job) {
        return Err(not_this_job());
    }
    let now = state.clock.now();
    // Jobs are keyed by workload: a workload can only ever revoke (and be
    // blocked from minting for) its own jobs.
    let revocation = JobRevocation::new(workload.name(), &job, now);
    state.enforce(Revocation::Job(&revocation));
    state.store.revoke_job(&revocation).await.map_err(|error| {
        tracing::error!(%error, "job revocation not durable");
        OAuthError::unavailable("the revocation could not be made durable")
    })?;
    Ok(JobRevocationResponse {
        job,
        revoked_at: crate::audit::timestamp(now),
    })
}
