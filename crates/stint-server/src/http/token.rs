//! The token endpoint: `client_credentials` and RFC 8693 token exchange,
//! with step-scoped parameters.
//!
//! Before any work, each request counts against its source's rate limit
//! (`Limits::token_rate_per_source`), and once authenticated against its
//! client's (`Limits::token_rate_per_client`): beyond either, 429 with
//! `Retry-After`. HTTP Basic credentials are checked before the body is
//! read, so a request that does not authenticate costs no body read.

use super::client_auth::{certificate_client, credentials, read_form};
use super::exchange;
use super::target;
use super::{LoggedClient, RequestContext};
use crate::error::OAuthError;
use crate::limits::{Source, retry_after_secs};
use crate::serve::PeerCertificate;
use crate::state::AppState;
use axum::Extension;
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use http::{HeaderMap, HeaderValue, header};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stint_core::audit::{AuditEntry, Decision, EventKind};
use stint_core::claims::{AccessTokenClaims, confirmation_for_certificate, new_jti};
use stint_core::decision::{DecisionContext, DenyReason, StepRequest, Verdict, decide};
use stint_core::ids::validate_job_id;
use stint_core::policy::Workload;
use stint_proto::{
    ACCESS_TOKEN_TYP, ErrorCode, GRANT_CLIENT_CREDENTIALS, GRANT_TOKEN_EXCHANGE,
    TOKEN_TYPE_ACCESS_TOKEN, TargetCredentialResponse, TokenResponse,
};

pub(crate) async fn token(
    State(state): State<Arc<AppState>>,
    Extension(context): Extension<RequestContext>,
    certificate: Option<Extension<PeerCertificate>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let now = state.clock.now();
    let mut entry = state.audit_entry(now, EventKind::TokenDenied, Decision::Deny, Some(&context));
    let certificate = certificate.map(|Extension(c)| c);
    let outcome = mint(
        &state,
        now,
        &headers,
        certificate.as_ref(),
        body,
        &context,
        &mut entry,
    )
    .await;
    let outcome = match outcome {
        Ok(Issued::Target(issued)) => {
            return finish_target(&state, entry, *issued, now).await;
        }
        Ok(Issued::Token(response, live)) => Ok((response, live)),
        Err(error)
            if matches!(
                error.reason,
                DenyReason::ApprovalPending | DenyReason::SlowDown
            ) =>
        {
            // Not a decision: the request was audited when it was made, and
            // polls that find it still pending add nothing to the record.
            state.metrics.denied(error.reason.as_str());
            return error.into_response();
        }
        Err(error) => Err(error),
    };
    if let Err(error) = &outcome {
        entry.reason = Some(error.reason.as_str().to_owned());
        entry.detail = Some(error.description.clone());
        entry.would_deny.clear();
    } else {
        entry.event = EventKind::TokenMinted;
        entry.decision = Decision::Allow;
        if !entry.would_deny.is_empty() {
            state
                .metrics
                .shadow_grant(entry.workflow.as_deref().unwrap_or_default());
        }
    }
    let client_id = entry.client_id.clone();
    if let Err(unavailable) = state.record(entry).await {
        state.metrics.denied(unavailable.reason.as_str());
        return unavailable.into_response();
    }
    let outcome = outcome.map(|(response, live)| {
        if let (Some(kept), Some(claims)) = (&state.live, live) {
            kept.insert(*claims);
        }
        response
    });
    let mut response = respond(&state, outcome);
    if let Some(client_id) = client_id {
        response.extensions_mut().insert(LoggedClient(client_id));
    }
    response
}

/// What the token endpoint hands out.
enum Issued {
    /// A Stint access token, and its claims if live tokens are kept.
    Token(TokenResponse, Option<Box<AccessTokenClaims>>),
    /// A target's native credential (a step token exchanged), boxed: it
    /// is the larger answer and the rarer.
    Target(Box<TargetCredentialResponse>),
}

/// Audit a target credential's mint and answer with it; if the mint cannot
/// be recorded, the credential is destroyed and the answer is 503.
async fn finish_target(
    state: &AppState,
    entry: AuditEntry,
    issued: TargetCredentialResponse,
    now: DateTime<Utc>,
) -> Response {
    let client_id = entry.client_id.clone();
    let mut entry = entry;
    entry.decision = Decision::Allow;
    let federation = issued.federation.is_some();
    if let Err(unavailable) = state.record(entry).await {
        // A federation token that was not audited is never handed out;
        // nothing was made upstream for it, so there is nothing to undo.
        if !federation {
            state
                .targets
                .abandon(&issued.credential_id, now.timestamp());
        }
        state.metrics.denied(unavailable.reason.as_str());
        return unavailable.into_response();
    }
    if federation {
        state.metrics.federation_token_issued(&issued.target);
    } else {
        state.metrics.target_event(&issued.target, "minted");
    }
    let mut response = no_store(Json(issued).into_response());
    if let Some(client_id) = client_id {
        response.extensions_mut().insert(LoggedClient(client_id));
    }
    response
}

/// A response that carries a secret: never cached (RFC 6749 section 5.1).
fn no_store(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    response
}

fn respond(state: &AppState, outcome: Result<TokenResponse, OAuthError>) -> Response {
    match outcome {
        Ok(response) => {
            state.metrics.minted();
            no_store(Json(response).into_response())
        }
        Err(error) => {
            state.metrics.denied(error.reason.as_str());
            error.into_response()
        }
    }
}

/// Decide and sign. Fills `entry` with what it learns along the way.
async fn mint(
    state: &AppState,
    now: DateTime<Utc>,
    headers: &HeaderMap,
    certificate: Option<&PeerCertificate>,
    body: Body,
    request_context: &RequestContext,
    entry: &mut AuditEntry,
) -> Result<Issued, OAuthError> {
    // Out of reach of the store, a token could be neither revoked durably
    // nor checked against the other replicas' revocations.
    if !state.store_reachable() {
        return Err(OAuthError::unavailable("the broker cannot reach its store"));
    }
    let source = request_context
        .client_addr
        .map_or(Source::Untracked, |addr| Source::of(addr.ip()));
    state
        .limits
        .token_per_source
        .check(source, Instant::now())
        .map_err(|wait| rate_limited("this source", wait))?;
    let policy = state.policy.load();
    // HTTP Basic first: the body is read only for a client that
    // authenticated, or one whose credentials are in the body (and whose
    // requests in flight the per-source cap bounds).
    let header_workload = if headers.contains_key(header::AUTHORIZATION) {
        let credentials = credentials(headers, None)?;
        entry.client_id = credentials.loggable_id(&policy);
        let workload = credentials.authenticate(&policy)?;
        // Authenticated: its refusals from here on are its own, recorded
        // one by one.
        entry.sub = Some(workload.name().to_owned());
        check_client_rate(state, workload)?;
        Some(workload)
    } else {
        None
    };
    let form = read_form(headers, body, state.body_timeout).await?;
    let mut bound_to = None;
    let mut run_url = None;
    let (workload, identity_job, exchange) = match form.get("grant_type") {
        Some(GRANT_CLIENT_CREDENTIALS) => match header_workload {
            Some(workload) => {
                // The rules on mixing methods, now that the body is known.
                credentials(headers, Some(&form))?;
                (workload, None, false)
            }
            None => match certificate_client(&policy, headers, &form, certificate, entry) {
                Some(workload) => {
                    // Certificate-bound (RFC 8705 section 3).
                    bound_to = certificate.map(|c| confirmation_for_certificate(&c.0));
                    let workload = workload?;
                    check_client_rate(state, workload)?;
                    (workload, None, false)
                }
                None => {
                    let credentials = credentials(headers, Some(&form))?;
                    entry.client_id = credentials.loggable_id(&policy);
                    let workload = credentials.authenticate(&policy)?;
                    check_client_rate(state, workload)?;
                    (workload, None, false)
                }
            },
        },
        Some(GRANT_TOKEN_EXCHANGE) if target::is_target_exchange(&form) => {
            if header_workload.is_some()
                || form.get("client_id").is_some()
                || form.get("client_secret").is_some()
            {
                return Err(OAuthError::invalid_request(
                    DenyReason::MalformedRequest,
                    "a step token is exchanged with the step token alone: send no client credentials",
                ));
            }
            return target::exchange(state, &policy, &form, certificate, now, entry)
                .await
                .map(|issued| Issued::Target(Box::new(issued)));
        }
        Some(GRANT_TOKEN_EXCHANGE) => {
            if header_workload.is_some()
                || form.get("client_id").is_some()
                || form.get("client_secret").is_some()
            {
                return Err(OAuthError::invalid_request(
                    DenyReason::MalformedRequest,
                    "a token exchange authenticates with its subject_token alone: send no client credentials",
                ));
            }
            let identity = exchange::authenticate(state, &policy, &form, entry).await?;
            entry.client_id = Some(identity.workload.client_id().to_owned());
            check_client_rate(state, identity.workload)?;
            run_url = identity.run_url;
            (identity.workload, identity.job, true)
        }
        Some(_) => {
            return Err(OAuthError::new(
                ErrorCode::UnsupportedGrantType,
                DenyReason::UnsupportedGrantType,
                "grant_type must be client_credentials or urn:ietf:params:oauth:grant-type:token-exchange",
            ));
        }
        None => {
            return Err(OAuthError::invalid_request(
                DenyReason::MalformedRequest,
                "the grant_type parameter is required",
            ));
        }
    };
    entry.sub = Some(workload.name().to_owned());
    if state.is_stopped(workload.name()) {
        return Err(OAuthError::new(
            ErrorCode::UnauthorizedClient,
            DenyReason::WorkloadStopped,
            "this workload was stopped by an operator: it gets no tokens until an operator enables it again",
        ));
    }

    let mut request = StepRequest::from_params(&form)?;
    if let Some(job) = identity_job {
        validate_job_id(&job).map_err(|e| {
            OAuthError::new(
                ErrorCode::InvalidGrant,
                DenyReason::InvalidSubjectToken,
                format!("the job the subject token names is not a valid job id: it {e}"),
            )
        })?;
        if request.job.as_ref().is_some_and(|asked| *asked != job) {
            entry.job.clone_from(&request.job);
            return Err(OAuthError::invalid_request(
                DenyReason::JobContradictsIdentity,
                format!("the job parameter contradicts the job the subject token names ({job})"),
            ));
        }
        request.job = Some(job);
    }
    entry.step = Some(request.step.clone());
    entry.scopes = request
        .scopes
        .iter()
        .map(|s| s.as_str().to_owned())
        .collect();
    entry.aud.clone_from(&request.audience);
    entry.job.clone_from(&request.job);

    let context = DecisionContext {
        policy: &policy,
        revocations: &state.revocations,
        now,
    };
    let grant = match decide(context, workload, &request, || new_job_id(state))? {
        Verdict::Granted(grant) => grant,
        Verdict::NeedsApproval(needed) => {
            entry.job = Some(needed.job().to_owned());
            entry.step = Some(needed.step_ref());
            entry.approval_id = form
                .get("approval_id")
                .filter(|id| {
                    id.len() <= 64
                        && id
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                })
                .map(str::to_owned);
            let grant = state
                .approvals
                .elevate(state, needed, &form, request_context, run_url, now)
                .await?;
            entry.approval_id = grant.approval().map(str::to_owned);
            grant
        }
    };
    entry.job = Some(grant.job().to_owned());
    if state
        .revocations
        .is_step_revoked(grant.workload(), grant.job(), grant.step(), now)
    {
        return Err(OAuthError::new(
            ErrorCode::InvalidGrant,
            DenyReason::JobRevoked,
            format!(
                "step {:?} of job {:?} has been revoked; it cannot mint new tokens",
                grant.step(),
                grant.job()
            ),
        ));
    }
    entry.aud = Some(grant.audience().to_owned());
    entry.step = Some(grant.step().to_owned());
    entry.workflow = Some(grant.workflow().to_owned());
    // Minted although the workflow is past its review date (the policy
    // says warn, or deny_elevation and nothing was elevated): the record
    // says so.
    if policy
        .workflow(grant.workflow())
        .is_some_and(|w| w.is_overdue(now.date_naive()))
    {
        entry.reason = Some(DenyReason::ReviewOverdue.as_str().to_owned());
    }
    // Scopes only a pattern marked for removal granted (see
    // docs/least-privilege.md, staged removal).
    if let Some(step) = policy
        .workflow(grant.workflow())
        .and_then(|w| w.step(grant.step()))
    {
        entry.would_deny = step.review().would_deny(step.scopes(), grant.scopes());
    }

    let jti = new_jti(&state.rng).map_err(|_| internal("could not generate a token id"))?;
    let mut claims = AccessTokenClaims::from_grant(&grant, &state.issuer, jti);
    claims.cnf = bound_to;
    claims.status = Some(
        state
            .status_lists
            .allocate(&claims, state.store.as_ref(), &state.rng, now.timestamp())
            .await?,
    );
    // A job, approval or workload revoked between the decision and the
    // index's allocation: its status-list sweep may have missed this index
    // (revocations enter the set before the sweep, so one side sees the
    // other). The token is dead anyway: mark it and refuse.
    // And one that has begun (being audited and stored) and will cover it.
    if state.revocations.is_revoked(&claims, now) || state.is_pending(&claims) {
        state.status_lists.revoke_token(&claims);
        return Err(OAuthError::new(
            ErrorCode::InvalidGrant,
            DenyReason::JobRevoked,
            "the job, its approval or its workload was revoked while this token was being minted",
        ));
    }
    let access_token = state
        .keys
        .signing_key()
        .sign_jwt(ACCESS_TOKEN_TYP, &claims, &state.rng)
        .map_err(|_| internal("could not sign the token"))?;
    entry.jti = Some(claims.jti.clone());
    entry.exp = Some(claims.exp);
    let live = state.live.is_some().then(|| Box::new(claims.clone()));

    Ok(Issued::Token(
        TokenResponse {
            access_token,
            token_type: "Bearer".into(),
            expires_in: u64::from(grant.ttl().as_secs()),
            scope: claims.scope,
            job: claims.job,
            step: claims.step,
            issued_token_type: exchange.then(|| TOKEN_TYPE_ACCESS_TOKEN.to_owned()),
        },
        live,
    ))
}

fn new_job_id(state: &AppState) -> String {
    let mut bytes = [0u8; 12];
    // Uniqueness, not secrecy: if the CSPRNG failed, minting fails right
    // after at the jti, so a zero id never reaches a token.
    let _ = ring::rand::SecureRandom::fill(&state.rng, &mut bytes);
    format!("job-{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// Count a token request against its client's rate limit.
fn check_client_rate(state: &AppState, workload: &Workload) -> Result<(), OAuthError> {
    check_client_rate_of(state, workload.client_id())
}

/// Count a request of client `client_id` against its rate limit.
pub(crate) fn check_client_rate_of(state: &AppState, client_id: &str) -> Result<(), OAuthError> {
    state
        .limits
        .token_per_client
        .check(client_id.to_owned(), Instant::now())
        .map_err(|wait| rate_limited("this client", wait))
}

/// 429, with the OAuth error body and the seconds to wait.
fn rate_limited(who: &str, wait: Duration) -> OAuthError {
    let seconds = retry_after_secs(wait);
    OAuthError::new(
        ErrorCode::TemporarilyUnavailable,
        DenyReason::RateLimited,
        format!("{who} is asking for tokens faster than its rate limit; retry in {seconds} s"),
    )
    .with_status(http::StatusCode::TOO_MANY_REQUESTS)
    .with_retry_after(seconds)
}

fn internal(what: &str) -> OAuthError {
    OAuthError::new(ErrorCode::ServerError, DenyReason::Internal, what)
}
