//! The token endpoint: `client_credentials` with step-scoped parameters.

use super::RequestContext;
use super::client_auth::{credentials, read_form};
use crate::error::OAuthError;
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
use stint_core::audit::{AuditEntry, Decision, EventKind};
use stint_core::claims::{AccessTokenClaims, new_jti};
use stint_core::decision::{DecisionContext, DenyReason, StepRequest, decide};
use stint_proto::{ACCESS_TOKEN_TYP, ErrorCode, GRANT_CLIENT_CREDENTIALS, TokenResponse};

pub(crate) async fn token(
    State(state): State<Arc<AppState>>,
    Extension(context): Extension<RequestContext>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let now = state.clock.now();
    let mut entry = state.audit_entry(now, EventKind::TokenDenied, Decision::Deny, Some(&context));
    let outcome = mint(&state, now, &headers, body, &mut entry).await;
    if let Err(error) = &outcome {
        entry.reason = Some(error.reason.as_str().to_owned());
        entry.detail = Some(error.description.clone());
    } else {
        entry.event = EventKind::TokenMinted;
        entry.decision = Decision::Allow;
    }
    if let Err(unavailable) = state.record(entry).await {
        state.metrics.denied(unavailable.reason.as_str());
        return unavailable.into_response();
    }
    match outcome {
        Ok(response) => {
            state.metrics.minted();
            let mut response = Json(response).into_response();
            let headers = response.headers_mut();
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
            response
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
    body: Body,
    entry: &mut AuditEntry,
) -> Result<TokenResponse, OAuthError> {
    let form = read_form(headers, body, state.body_timeout).await?;
    let credentials = credentials(headers, Some(&form))?;
    let policy = state.policy.load();
    entry.client_id = credentials.loggable_id(&policy);
    let workload = credentials.authenticate(&policy)?;
    entry.sub = Some(workload.name().to_owned());

    match form.get("grant_type") {
        Some(GRANT_CLIENT_CREDENTIALS) => {}
        Some(_) => {
            return Err(OAuthError::new(
                ErrorCode::UnsupportedGrantType,
                DenyReason::UnsupportedGrantType,
                "only grant_type=client_credentials is supported",
            ));
        }
        None => {
            return Err(OAuthError::invalid_request(
                DenyReason::MalformedRequest,
                "the grant_type parameter is required",
            ));
        }
    }

    let request = StepRequest::from_params(&form)?;
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
    let grant = decide(context, workload, &request, || new_job_id(state))?;
    entry.job = Some(grant.job().to_owned());
    entry.aud = Some(grant.audience().to_owned());
    entry.step = Some(grant.step().to_owned());
    entry.workflow = Some(grant.workflow().to_owned());

    let jti = new_jti(&state.rng).map_err(|_| internal("could not generate a token id"))?;
    let claims = AccessTokenClaims::from_grant(&grant, &state.issuer, jti);
    let access_token = state
        .keys
        .signing_key()
        .sign_jwt(ACCESS_TOKEN_TYP, &claims, &state.rng)
        .map_err(|_| internal("could not sign the token"))?;
    entry.jti = Some(claims.jti.clone());
    entry.exp = Some(claims.exp);

    Ok(TokenResponse {
        access_token,
        token_type: "Bearer".into(),
        expires_in: u64::from(grant.ttl().as_secs()),
        scope: claims.scope,
        job: claims.job,
        step: claims.step,
    })
}

fn new_job_id(state: &AppState) -> String {
    let mut bytes = [0u8; 12];
    // Uniqueness, not secrecy: if the CSPRNG failed, minting fails right
    // after at the jti, so a zero id never reaches a token.
    let _ = ring::rand::SecureRandom::fill(&state.rng, &mut bytes);
    format!("job-{}", URL_SAFE_NO_PAD.encode(bytes))
}

fn internal(what: &str) -> OAuthError {
    OAuthError::new(ErrorCode::ServerError, DenyReason::Internal, what)
}
