//! Administrative calls, for workloads with the `admin` capability.

use super::RequestContext;
use super::client_auth::credentials;
use crate::error::OAuthError;
use crate::state::AppState;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use http::{HeaderMap, StatusCode};
use std::sync::Arc;
use stint_core::audit::{AuditEntry, Decision, EventKind};
use stint_core::decision::DenyReason;
use stint_proto::{ErrorCode, KeyRotationResponse};

/// `POST /v1/admin/keys/rotate`: a new signing key, published before it
/// signs; the old one stays published until its tokens have expired.
pub(crate) async fn rotate_keys(
    State(state): State<Arc<AppState>>,
    Extension(context): Extension<RequestContext>,
    headers: HeaderMap,
) -> Response {
    let now = state.clock.now();
    let mut entry = state.audit_entry(
        now,
        EventKind::KeyRotationDenied,
        Decision::Deny,
        Some(&context),
    );
    let outcome = rotate(&state, &headers, &mut entry).await;
    match &outcome {
        Ok(rotation) => {
            entry.event = EventKind::KeysRotated;
            entry.decision = Decision::Allow;
            entry.detail = Some(format!(
                "new signing key {} ({}); retired key {} published until {}",
                rotation.kid,
                rotation.alg,
                rotation.retired_kid,
                rotation.retired_key_published_until
            ));
        }
        Err(error) => {
            entry.reason = Some(error.reason.as_str().to_owned());
            entry.detail = Some(error.description.clone());
        }
    }
    if let Err(unavailable) = state.record(entry).await {
        return unavailable.into_response();
    }
    match outcome {
        Ok(rotation) => {
            state.metrics.key_rotated();
            Json(rotation).into_response()
        }
        Err(error) => error.into_response(),
    }
}

async fn rotate(
    state: &AppState,
    headers: &HeaderMap,
    entry: &mut AuditEntry,
) -> Result<KeyRotationResponse, OAuthError> {
    let credentials = credentials(headers, None)?;
    let policy = state.policy.load();
    entry.client_id = credentials.loggable_id(&policy);
    let workload = credentials.authenticate(&policy)?;
    entry.sub = Some(workload.name().to_owned());
    if !workload.is_admin() {
        return Err(OAuthError::new(
            ErrorCode::UnauthorizedClient,
            DenyReason::NotAdmin,
            "this client does not have the admin capability",
        )
        .with_status(StatusCode::FORBIDDEN));
    }
    let rotation = state
        .keys
        .rotate(state.store.as_ref(), state.clock.now(), &state.rng)
        .await
        .map_err(|error| {
            tracing::error!(%error, "signing key rotation failed");
            OAuthError::unavailable("the new signing key could not be stored")
        })?;
    let until = chrono::DateTime::from_timestamp(rotation.retired_until, 0).unwrap_or_default();
    Ok(KeyRotationResponse {
        kid: rotation.kid,
        alg: rotation.alg.as_str().to_owned(),
        retired_kid: rotation.retired_kid,
        retired_key_published_until: crate::audit::timestamp(until),
    })
}
