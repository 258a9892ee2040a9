//! Administrative calls, for workloads with the `admin` capability.

use super::RequestContext;
use super::client_auth::credentials;
use crate::error::OAuthError;
use crate::keys::{Rotation, RotationError};
use crate::state::AppState;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use http::{HeaderMap, StatusCode};
use std::sync::Arc;
use stint_core::audit::{AuditEntry, Decision, EventKind};
use stint_core::decision::DenyReason;
use stint_proto::{ErrorCode, KeyRotationResponse};

/// `POST /v1/admin/keys/rotate`: a new signing key, published by every
/// broker for the publish lead before any signs with it; the old one stays
/// published until its tokens have expired.
///
/// The rotation is audited before it takes effect: if the `keys_rotated`
/// record cannot be written, the answer is 503 and the old key goes on
/// signing (a retry rotates once). A refusal is audited as
/// `key_rotation_denied`, and so is a rotation whose record was written but
/// whose new key the store then refused (nothing changed).
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
    if let Err(error) = authorize(&state, &headers, &mut entry) {
        return refuse(&state, entry, error).await;
    }
    let rotated = entry.clone();
    let recorder = Arc::clone(&state);
    let rotation = state
        .keys
        .rotate(
            state.store.as_ref(),
            state.clock.now(),
            &state.rng,
            |rotation| async move {
                let mut rotated = rotated;
                rotated.event = EventKind::KeysRotated;
                rotated.decision = Decision::Allow;
                rotated.kid = Some(rotation.kid.clone());
                rotated.detail = Some(format!(
                    "new signing key {} ({}) published now, signing from {}; retired key {} published until {}",
                    rotation.kid,
                    rotation.alg,
                    signs_from(&rotation),
                    rotation.retired_kid,
                    published_until(&rotation)
                ));
                recorder.record(rotated).await
            },
        )
        .await;
    match rotation {
        Ok(rotation) => {
            state.metrics.key_rotated();
            Json(KeyRotationResponse {
                retired_key_published_until: published_until(&rotation),
                signs_from: signs_from(&rotation),
                kid: rotation.kid,
                alg: rotation.alg.as_str().to_owned(),
                retired_kid: rotation.retired_kid,
            })
            .into_response()
        }
        // Not recorded, so not done: the old key signs on.
        Err(RotationError::Audit(unavailable)) => unavailable.into_response(),
        Err(RotationError::Generate(error)) => {
            tracing::error!(%error, "no new signing key could be made");
            let refusal = OAuthError::unavailable("a new signing key could not be made");
            refuse(&state, entry, refusal).await
        }
        Err(RotationError::Store(error)) => {
            tracing::error!(%error, "signing key rotation failed after it was audited; the old key still signs");
            let refusal = OAuthError::unavailable("the new signing key could not be stored");
            entry.detail = Some(format!(
                "the rotation recorded just before did not happen: {}; the old key still signs",
                refusal.description
            ));
            entry.reason = Some(refusal.reason.as_str().to_owned());
            match state.record(entry).await {
                Err(unavailable) => unavailable.into_response(),
                Ok(()) => refusal.into_response(),
            }
        }
    }
}

/// Audit a refusal, then send it (or 503 if it cannot be audited).
async fn refuse(state: &AppState, mut entry: AuditEntry, error: OAuthError) -> Response {
    entry.reason = Some(error.reason.as_str().to_owned());
    entry.detail = Some(error.description.clone());
    match state.record(entry).await {
        Err(unavailable) => unavailable.into_response(),
        Ok(()) => error.into_response(),
    }
}

fn signs_from(rotation: &Rotation) -> String {
    let from = chrono::DateTime::from_timestamp(rotation.signs_from, 0).unwrap_or_default();
    crate::audit::timestamp(from)
}

fn published_until(rotation: &Rotation) -> String {
    let until = chrono::DateTime::from_timestamp(rotation.retired_until, 0).unwrap_or_default();
    crate::audit::timestamp(until)
}

fn authorize(
    state: &AppState,
    headers: &HeaderMap,
    entry: &mut AuditEntry,
) -> Result<(), OAuthError> {
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
    Ok(())
}
