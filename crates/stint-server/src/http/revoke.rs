//! Revocation: one token (RFC 7009) or every token of a job.

use super::RequestContext;
use super::client_auth::{bearer, certificate_client, credentials, read_form};
use super::exchange;
use crate::error::OAuthError;
use crate::serve::PeerCertificate;
use crate::state::{AppState, Pending, Revocation, TokenState};
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use http::{HeaderMap, StatusCode};
use std::sync::Arc;
use stint_core::audit::{AuditEntry, Decision, EventKind};
use stint_core::claims::{AccessTokenClaims, confirmation_for_certificate};
use stint_core::decision::DenyReason;
use stint_core::form::FormParams;
use stint_core::ids::validate_job_id;
use stint_core::policy::{Policy, Workload};
use stint_core::revocation::{JobRevocation, StepRevocation, TokenRevocation};
use stint_core::secret::constant_time_eq;
use stint_proto::ErrorCode;
use stint_proto::oauth::JobRevocationResponse;

/// What a valid revocation request comes to.
enum Planned {
    /// Revoke this token (its claims name its status list entry).
    Token(TokenRevocation, Box<AccessTokenClaims>),
    /// Nothing to do: the token had expired, was already revoked, is not
    /// one of ours or is not a token at all. RFC 7009 answers 200 either
    /// way (section 2.2: "invalid tokens do not cause an error response").
    Nothing(&'static str),
}

pub(crate) async fn revoke_token(
    State(state): State<Arc<AppState>>,
    Extension(context): Extension<RequestContext>,
    certificate: Option<Extension<PeerCertificate>>,
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
    let certificate = certificate.map(|Extension(c)| c);
    let planned = plan(&state, &headers, certificate.as_ref(), body, &mut entry).await;
    let answer = match planned {
        Ok(Planned::Token(revocation, claims)) => {
            entry.event = EventKind::TokenRevoked;
            entry.decision = Decision::Allow;
            state
                .revoke(
                    entry,
                    EventKind::TokenRevocationDenied,
                    Revocation::Token(&revocation, claims.status.as_ref().map(|s| &s.status_list)),
                )
                .await
                .map(|()| "token")
        }
        Ok(Planned::Nothing(reason)) => {
            entry.reason = Some(reason.to_owned());
            state.record(entry).await.map(|()| reason)
        }
        Err(error) => Err(state.refuse(entry, error).await),
    };
    match answer {
        Ok("token") => {
            state.metrics.revoked("token");
            StatusCode::OK.into_response()
        }
        Ok(reason) => {
            state.metrics.revocation_denied(reason);
            StatusCode::OK.into_response()
        }
        Err(error) => {
            state.metrics.revocation_denied(error.reason.as_str());
            error.into_response()
        }
    }
}

/// Authorize an RFC 7009 request and say what it comes to. Fills `entry`
/// with what it learns.
async fn plan(
    state: &AppState,
    headers: &HeaderMap,
    certificate: Option<&PeerCertificate>,
    body: Body,
    entry: &mut AuditEntry,
) -> Result<Planned, OAuthError> {
    let policy = state.policy.load();
    // A credential in the Authorization header is checked before the body
    // is read: a request that does not authenticate costs no body read.
    let authority = if headers.contains_key(http::header::AUTHORIZATION) {
        Some(caller(state, &policy, headers, None, entry).await?)
    } else {
        None
    };
    let form = read_form(headers, body, state.body_timeout).await?;
    let authority = match authority {
        Some(authority) => {
            if bearer(headers).is_none() {
                // The rules on mixing Basic with credentials in the body.
                credentials(headers, Some(&form))?;
            }
            authority
        }
        // RFC 8705 `tls_client_auth`: a verified client certificate and a
        // `client_id` in the body.
        None => match certificate_client(&policy, headers, &form, certificate, entry) {
            Some(workload) => {
                let workload = workload?;
                entry.sub = Some(workload.name().to_owned());
                Authority::Workload {
                    workload,
                    only_job: None,
                }
            }
            None => caller(state, &policy, headers, Some(&form), entry).await?,
        },
    };
    let token = form.get("token").ok_or_else(|| {
        OAuthError::invalid_request(
            DenyReason::MalformedRequest,
            "the token parameter is required",
        )
    })?;
    // token_type_hint is optional and only a hint (RFC 7009 section 2.1):
    // Stint has only access tokens, so it is not consulted.
    let now = state.clock.now();
    let (workload, only_job) = match authority {
        Authority::Workload { workload, only_job } => (workload, only_job),
        Authority::StepToken {
            presented,
            state: presented_state,
        } => {
            // A step token is its own credential for one thing only:
            // revoking itself.
            if !constant_time_eq(presented.as_bytes(), token.as_bytes()) {
                return Err(not_revocation_authority(
                    "a step token may revoke only itself; revoke other tokens with the workload's own credential",
                ));
            }
            return match *presented_state {
                TokenState::Active(claims) => {
                    note_token(entry, &claims);
                    check_holder(&claims, certificate)?;
                    Ok(revocation_of(claims, now))
                }
                // Nothing left to do, and nothing this credential may do.
                TokenState::Revoked(claims) => {
                    note_token(entry, &claims);
                    Ok(Planned::Nothing("already_revoked"))
                }
                TokenState::Expired | TokenState::Unknown => {
                    Ok(Planned::Nothing("already_expired"))
                }
            };
        }
    };
    entry.sub = Some(workload.name().to_owned());
    // A token expired within the largest verifier leeway is still
    // accepted by some verifiers: revoke it too.
    let leeway = stint_core::access_token::MAX_LEEWAY_SECS;
    let claims = match state.check_token_within(token, now, leeway) {
        // Revoking again is harmless (and stored again, idempotently).
        Ok(TokenState::Active(claims) | TokenState::Revoked(claims)) => claims,
        Ok(TokenState::Expired) => return Ok(Planned::Nothing("already_expired")),
        Ok(TokenState::Unknown) => return Ok(Planned::Nothing("unknown_token")),
        // Too long, or not a compact JWS: not a token of ours either.
        Err(_) => return Ok(Planned::Nothing("malformed_token")),
    };
    note_token(entry, &claims);
    if only_job.as_ref().is_some_and(|job| *job != claims.job) {
        return Err(not_this_job());
    }
    if claims.client_id != workload.client_id() || claims.sub != workload.name() {
        return Err(not_owner());
    }
    Ok(revocation_of(claims, now))
}

fn revocation_of(claims: AccessTokenClaims, now: DateTime<Utc>) -> Planned {
    Planned::Token(token_revocation(&claims, now), Box::new(claims))
}

fn token_revocation(claims: &AccessTokenClaims, now: DateTime<Utc>) -> TokenRevocation {
    TokenRevocation {
        jti: claims.jti.clone(),
        sub: claims.sub.clone(),
        job: claims.job.clone(),
        expires_at: claims.exp,
        revoked_at: now.timestamp(),
    }
}

/// What the audit record says of the token a request names.
fn note_token(entry: &mut AuditEntry, claims: &AccessTokenClaims) {
    entry.jti = Some(claims.jti.clone());
    entry.job = Some(claims.job.clone());
    entry.step = Some(claims.step.clone());
    entry.aud = Some(claims.aud.clone());
    entry.exp = Some(claims.exp);
    entry.scopes = claims.scopes().map(str::to_owned).collect();
}

/// A certificate-bound token (RFC 8705 `cnf`) speaks for itself only from
/// the certificate it is bound to: a copy of it, without that
/// certificate's key, revokes nothing.
fn check_holder(
    claims: &AccessTokenClaims,
    certificate: Option<&PeerCertificate>,
) -> Result<(), OAuthError> {
    if presents_its_certificate(claims, certificate) {
        Ok(())
    } else {
        Err(not_revocation_authority(
            "this token is bound to a client certificate: revoke it over a connection with that certificate, or with the workload's own credential",
        ))
    }
}

/// Whether a token may be used over this connection: it is bound to no
/// certificate (RFC 8705 `cnf`), or the connection presents that one.
pub(crate) fn presents_its_certificate(
    claims: &AccessTokenClaims,
    certificate: Option<&PeerCertificate>,
) -> bool {
    let Some(bound) = &claims.cnf else {
        return true;
    };
    certificate
        .map(|c| confirmation_for_certificate(&c.0))
        .is_some_and(|presented| {
            constant_time_eq(presented.x5t_s256.as_bytes(), bound.x5t_s256.as_bytes())
        })
}

/// Who is asking to revoke, and with what authority.
///
/// Revocation authority comes from the workload's own credential: its
/// client secret (HTTP Basic, or in the body where a form is read), or a
/// federated workload's platform ID token (`Authorization: Bearer`,
/// verified exactly as a token exchange verifies it), which may name the
/// one job it speaks for. A step token presented as `Authorization:
/// Bearer` is no workload credential: at `/oauth2/revoke` it may revoke
/// itself (while active, and from its certificate if it is bound to one),
/// and nothing else anywhere.
enum Authority<'p> {
    /// The workload's own credential.
    Workload {
        workload: &'p Workload,
        /// A platform ID token whose claims name a job speaks for that job
        /// only.
        only_job: Option<String>,
    },
    /// One of the broker's own access tokens (active, revoked or
    /// expired), presented as a bearer.
    StepToken {
        presented: String,
        state: Box<TokenState>,
    },
}

async fn caller<'p>(
    state: &AppState,
    policy: &'p Policy,
    headers: &HeaderMap,
    form: Option<&FormParams>,
    entry: &mut AuditEntry,
) -> Result<Authority<'p>, OAuthError> {
    if let Some(presented) = bearer(headers) {
        let now = state.clock.now();
        let token_state = match state.check_token(presented, now) {
            Ok(
                token_state
                @ (TokenState::Active(_) | TokenState::Revoked(_) | TokenState::Expired),
            ) => Some(token_state),
            _ => None,
        };
        if let Some(token_state) = token_state {
            let workload = match &token_state {
                TokenState::Active(claims) | TokenState::Revoked(claims) => Some(
                    policy
                        .workload(&claims.sub)
                        .filter(|w| w.client_id() == claims.client_id)
                        .ok_or_else(|| {
                            OAuthError::invalid_client(
                                "the bearer token's workload is not in the policy",
                            )
                        })?,
                ),
                TokenState::Expired | TokenState::Unknown => None,
            };
            if let Some(workload) = workload {
                entry.client_id = Some(workload.client_id().to_owned());
                entry.sub = Some(workload.name().to_owned());
            }
            return Ok(Authority::StepToken {
                presented: presented.to_owned(),
                state: Box::new(token_state),
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
        // Authenticated: its refusals from here on are its own, recorded
        // one by one (never counted away with unauthenticated ones).
        entry.sub = Some(identity.workload.name().to_owned());
        return Ok(Authority::Workload {
            workload: identity.workload,
            only_job: identity.job,
        });
    }
    let credentials = credentials(headers, form)?;
    entry.client_id = credentials.loggable_id(policy);
    let workload = credentials.authenticate(policy)?;
    entry.sub = Some(workload.name().to_owned());
    Ok(Authority::Workload {
        workload,
        only_job: None,
    })
}

/// The workload credential behind a request to revoke a job or a step. A
/// step token is refused here, whatever its state: it may revoke itself,
/// never its job or its siblings.
async fn workload_caller<'p>(
    state: &AppState,
    policy: &'p Policy,
    headers: &HeaderMap,
    entry: &mut AuditEntry,
) -> Result<(&'p Workload, Option<String>), OAuthError> {
    match caller(state, policy, headers, None, entry).await? {
        Authority::Workload { workload, only_job } => Ok((workload, only_job)),
        Authority::StepToken { .. } => Err(not_revocation_authority(
            "a step token cannot revoke a job or a step: authenticate with the workload's own credential (its client secret or platform ID token); a step token may revoke only itself, at /oauth2/revoke",
        )),
    }
}

fn not_revocation_authority(why: &str) -> OAuthError {
    OAuthError::new(
        ErrorCode::UnauthorizedClient,
        DenyReason::NotRevocationAuthority,
        why,
    )
    .with_status(StatusCode::FORBIDDEN)
}

fn not_owner() -> OAuthError {
    OAuthError::new(
        ErrorCode::UnauthorizedClient,
        DenyReason::NotTokensOwner,
        "the token was not issued to this client",
    )
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
    let outcome = match plan_job(&state, job, &headers, &mut entry).await {
        Ok(planned) => carry_out_job(&state, entry, planned).await,
        Err(error) => Err(refused(&state, entry, error).await),
    };
    match outcome {
        Ok(response) => Json(response).into_response(),
        Err(error) => error.into_response(),
    }
}

/// A refused revocation, audited and counted.
async fn refused(state: &AppState, entry: AuditEntry, error: OAuthError) -> OAuthError {
    state.metrics.revocation_denied(error.reason.as_str());
    state.refuse(entry, error).await
}

/// Revoke job `planned` (checked: the caller may): hold new mints for it,
/// audit, store, enforce, then end its approvals.
async fn carry_out_job(
    state: &AppState,
    mut entry: AuditEntry,
    planned: JobRevocation,
) -> Result<JobRevocationResponse, OAuthError> {
    let _held = state.hold(Pending::Job {
        sub: planned.sub.clone(),
        job: planned.job.clone(),
    });
    // Its time is taken after the hold: every token signed before it is
    // covered, and none is signed after it.
    let at = state.clock.now();
    let revocation = JobRevocation::new(&planned.sub, &planned.job, at);
    entry.event = EventKind::JobRevoked;
    entry.decision = Decision::Allow;
    if let Err(error) = state
        .revoke(
            entry,
            EventKind::JobRevocationDenied,
            Revocation::Job(&revocation),
        )
        .await
    {
        state.metrics.revocation_denied(error.reason.as_str());
        return Err(error);
    }
    state.metrics.revoked("job");
    // The job's approvals end with it (its tokens, elevated or not, are
    // already revoked with the job). If that cannot be stored, say so: the
    // revocation stands, a retry is harmless, and the sweep ends them while
    // the job's revocation lasts.
    if !state
        .approvals
        .end_job(state, &revocation.sub, &revocation.job)
        .await
    {
        return Err(OAuthError::unavailable(
            "the job is revoked, but ending its approvals could not be stored",
        ));
    }
    Ok(JobRevocationResponse {
        job: revocation.job.clone(),
        revoked_at: crate::audit::timestamp(at),
    })
}

/// Operator `operator` revokes job `job` of workload `workload` (the
/// console's "revoke job"): as the workload's own call does, audited with
/// the operator.
pub(crate) async fn revoke_job_as_operator(
    state: &AppState,
    context: &RequestContext,
    operator: &str,
    workload: &str,
    job: &str,
) -> Result<JobRevocationResponse, OAuthError> {
    let now = state.clock.now();
    let mut entry = state.audit_entry(
        now,
        EventKind::JobRevocationDenied,
        Decision::Deny,
        Some(context),
    );
    entry.operator = Some(operator.to_owned());
    let checked = (|| {
        let policy = state.policy.load();
        let found = policy.workload(workload).ok_or_else(|| {
            OAuthError::invalid_request(DenyReason::MalformedRequest, "no such workload")
                .with_status(StatusCode::NOT_FOUND)
        })?;
        entry.sub = Some(found.name().to_owned());
        validate_job_id(job).map_err(|e| {
            OAuthError::invalid_request(
                DenyReason::MalformedJob,
                format!("the job id is malformed: it {e}"),
            )
        })?;
        entry.job = Some(job.to_owned());
        Ok(JobRevocation::new(found.name(), job, now))
    })();
    match checked {
        Ok(planned) => carry_out_job(state, entry, planned).await,
        Err(error) => Err(refused(state, entry, error).await),
    }
}

/// Operator `operator` revokes token `jti`, which must be one of the live
/// tokens this broker keeps (minted here while the console ran, not yet
/// past its `exp` and the verifiers' leeway). A `jti` it does not know is
/// refused, and the refusal audited.
pub(crate) async fn revoke_live_token(
    state: &AppState,
    context: &RequestContext,
    operator: &str,
    jti: &str,
) -> Result<(), OAuthError> {
    let now = state.clock.now();
    let leeway = stint_core::access_token::MAX_LEEWAY_SECS;
    let claims = state
        .live
        .as_ref()
        .and_then(|live| live.get(jti, now.timestamp().saturating_sub(leeway)));
    let Some(claims) = claims else {
        let mut entry = state.audit_entry(
            now,
            EventKind::TokenRevocationDenied,
            Decision::Deny,
            Some(context),
        );
        entry.operator = Some(operator.to_owned());
        entry.jti = Some(jti.chars().take(64).collect());
        let error = OAuthError::invalid_request(
            DenyReason::MalformedRequest,
            "no live token with that id was minted by this broker",
        )
        .with_status(StatusCode::NOT_FOUND);
        return Err(refused(state, entry, error).await);
    };
    revoke_token_as_operator(state, context, operator, &claims).await
}

/// Operator `operator` revokes the token `claims` describe (the console's
/// live list knows them): audited with the operator, stored, in force and
/// announced, its status list entry INVALID.
pub(crate) async fn revoke_token_as_operator(
    state: &AppState,
    context: &RequestContext,
    operator: &str,
    claims: &AccessTokenClaims,
) -> Result<(), OAuthError> {
    let now = state.clock.now();
    let mut entry = state.audit_entry(now, EventKind::TokenRevoked, Decision::Allow, Some(context));
    entry.operator = Some(operator.to_owned());
    entry.sub = Some(claims.sub.clone());
    entry.client_id = Some(claims.client_id.clone());
    note_token(&mut entry, claims);
    let revocation = token_revocation(claims, now);
    let outcome = state
        .revoke(
            entry,
            EventKind::TokenRevocationDenied,
            Revocation::Token(&revocation, claims.status.as_ref().map(|s| &s.status_list)),
        )
        .await;
    match &outcome {
        Ok(()) => state.metrics.revoked("token"),
        Err(error) => state.metrics.revocation_denied(error.reason.as_str()),
    }
    outcome
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
    let outcome = match plan_step(&state, path, &headers, &mut entry).await {
        Ok(planned) => {
            let _held = state.hold(Pending::Step {
                sub: planned.sub.clone(),
                job: planned.job.clone(),
                step: planned.step.clone(),
            });
            // As for a job: the time after the hold.
            let at = state.clock.now();
            let revocation = StepRevocation::new(&planned.sub, &planned.job, &planned.step, at);
            entry.event = EventKind::StepRevoked;
            entry.decision = Decision::Allow;
            state
                .revoke(
                    entry,
                    EventKind::JobRevocationDenied,
                    Revocation::Step(&revocation),
                )
                .await
                .map(|()| {
                    serde_json::json!({
                        "job": revocation.job,
                        "step": revocation.step,
                        "revoked_at": crate::audit::timestamp(at),
                    })
                })
        }
        Err(error) => Err(state.refuse(entry, error).await),
    };
    match outcome {
        Ok(response) => {
            state.metrics.revoked("step");
            Json(response).into_response()
        }
        Err(error) => {
            state.metrics.revocation_denied(error.reason.as_str());
            error.into_response()
        }
    }
}

async fn plan_step(
    state: &AppState,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: &HeaderMap,
    entry: &mut AuditEntry,
) -> Result<StepRevocation, OAuthError> {
    let policy = state.policy.load();
    let (workload, only_job) = workload_caller(state, &policy, headers, entry).await?;
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
    Ok(StepRevocation::new(
        workload.name(),
        &job,
        &step,
        state.clock.now(),
    ))
}

async fn plan_job(
    state: &AppState,
    job: Result<Path<String>, PathRejection>,
    headers: &HeaderMap,
    entry: &mut AuditEntry,
) -> Result<JobRevocation, OAuthError> {
    let policy = state.policy.load();
    let (workload, only_job) = workload_caller(state, &policy, headers, entry).await?;
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
    // Jobs are keyed by workload: a workload can only ever revoke (and be
    // blocked from minting for) its own jobs.
    Ok(JobRevocation::new(workload.name(), &job, state.clock.now()))
}
