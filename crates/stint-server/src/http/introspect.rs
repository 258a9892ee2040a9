//! RFC 7662 token introspection, for authenticated clients.

use super::client_auth::{bearer, credentials, read_form};
use super::exchange;
use crate::error::OAuthError;
use crate::state::{AppState, TokenState};
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, header};
use std::sync::Arc;
use stint_core::decision::DenyReason;
use stint_proto::IntrospectionResponse;

/// Introspection is a read, not a decision: it is not audited, and it keeps
/// answering when the audit log cannot be written. Any authenticated client
/// may introspect any token (resource servers are clients too): by its
/// client credentials, or, for a federated workload that has none, by
/// `Authorization: Bearer` with its platform ID token, verified exactly as
/// a token exchange verifies it. The answer for anything that is not an
/// active token of this broker (expired, revoked, badly signed, malformed,
/// oversized, not a JWT) is exactly `{"active": false}` (RFC 7662 section
/// 2.2); only a request without a `token` is an error.
pub(crate) async fn introspect(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match introspect_inner(&state, &headers, body).await {
        Ok(body) => {
            let mut response = Json(body).into_response();
            response
                .headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(error) => error.into_response(),
    }
}

async fn introspect_inner(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
) -> Result<IntrospectionResponse, OAuthError> {
    let form = read_form(headers, body, state.body_timeout).await?;
    let policy = state.policy.load();
    match bearer(headers) {
        Some(id_token) => {
            exchange::identify_bearer(state, &policy, id_token).await?;
        }
        None => {
            credentials(headers, Some(&form))?.authenticate(&policy)?;
        }
    }
    let token = form.get("token").ok_or_else(|| {
        OAuthError::invalid_request(
            DenyReason::MalformedRequest,
            "the token parameter is required",
        )
    })?;
    // Out of reach of the store, revocations made elsewhere are unknown
    // here: no token is vouched for.
    if !state.store_reachable() {
        return Ok(IntrospectionResponse::inactive());
    }
    // Whatever is not an active token of ours, including what cannot even
    // be parsed as one, is inactive: the caller learns nothing more.
    let Ok(TokenState::Active(claims)) = state.check_token(token, state.clock.now()) else {
        return Ok(IntrospectionResponse::inactive());
    };
    Ok(IntrospectionResponse {
        active: true,
        scope: Some(claims.scope),
        client_id: Some(claims.client_id),
        token_type: Some("Bearer".into()),
        exp: Some(claims.exp),
        iat: Some(claims.iat),
        nbf: Some(claims.nbf),
        sub: Some(claims.sub),
        aud: Some(claims.aud),
        iss: Some(claims.iss),
        jti: Some(claims.jti),
        job: Some(claims.job),
        step: Some(claims.step),
        workflow: Some(claims.workflow),
        cnf: claims.cnf,
        elev: claims.elev,
    })
}
