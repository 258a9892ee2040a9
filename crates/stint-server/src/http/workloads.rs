//! The emergency stop: `POST /v1/workloads/{name}/stop` revokes every
//! token the workload holds and refuses it new ones;
//! `POST /v1/workloads/{name}/enable` lets it mint again (what it held
//! before the stop stays revoked). Operators only (as `/v1/approvals`);
//! every call is audited.

use super::RequestContext;
use super::approvals::operator;
use super::client_auth::read_json;
use crate::error::OAuthError;
use crate::state::{AppState, Revocation};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use http::{HeaderMap, StatusCode};
use std::sync::Arc;
use stint_core::audit::{AuditEntry, Decision, EventKind};
use stint_core::decision::DenyReason;
use stint_core::revocation::WorkloadStop;
use stint_proto::DecisionBody;

/// The answer to a stop or an enable.
#[derive(Debug, serde::Serialize)]
struct WorkloadState {
    workload: String,
    stopped: bool,
    /// Every token issued up to this time is revoked (a stop).
    #[serde(skip_serializing_if = "Option::is_none")]
    tokens_revoked_before: Option<i64>,
}

pub(crate) async fn stop(
    State(state): State<Arc<AppState>>,
    Extension(context): Extension<RequestContext>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Body,
) -> Response {
    act(&state, &context, &headers, &name, body, true).await
}

pub(crate) async fn enable(
    State(state): State<Arc<AppState>>,
    Extension(context): Extension<RequestContext>,
    headers: HeaderMap,
    Path(name): Path<String>,
    body: Body,
) -> Response {
    act(&state, &context, &headers, &name, body, false).await
}

async fn act(
    state: &AppState,
    context: &RequestContext,
    headers: &HeaderMap,
    name: &str,
    body: Body,
    stopping: bool,
) -> Response {
    let now = state.clock.now();
    let mut entry = state.audit_entry(
        now,
        EventKind::WorkloadStopRefused,
        Decision::Deny,
        Some(context),
    );
    let outcome = decide(state, headers, name, body, stopping, &mut entry).await;
    let allowed = if stopping {
        EventKind::WorkloadStopped
    } else {
        EventKind::WorkloadEnabled
    };
    // A stop is in force (memory and store) before it is audited: if the
    // audit fails, the workload is stopped anyway and the caller is told.
    match state.record_outcome(entry, outcome, allowed).await {
        Ok(Ok(answer)) => Json(answer).into_response(),
        Ok(Err(error)) => error.into_response(),
        Err(response) => response,
    }
}

async fn decide(
    state: &AppState,
    headers: &HeaderMap,
    name: &str,
    body: Body,
    stopping: bool,
    entry: &mut AuditEntry,
) -> Result<WorkloadState, OAuthError> {
    let operator = operator(state, headers, entry).await?;
    entry.operator = Some(operator.name.clone());
    let policy = state.policy.load();
    let Some(workload) = policy.workload(name) else {
        return Err(
            OAuthError::invalid_request(DenyReason::MalformedRequest, "no such workload")
                .with_status(StatusCode::NOT_FOUND),
        );
    };
    entry.sub = Some(workload.name().to_owned());
    let body: DecisionBody = read_json(headers, body, state.body_timeout).await?;
    if body
        .comment
        .as_deref()
        .is_some_and(|c| c.len() > 1024 || c.chars().any(char::is_control))
    {
        return Err(OAuthError::invalid_request(
            DenyReason::MalformedRequest,
            "the comment is one line of at most 1024 bytes",
        ));
    }
    entry.comment = body.comment;
    let at = state.clock.now().timestamp();
    if stopping {
        let stop = WorkloadStop {
            workload: workload.name().to_owned(),
            stopped_at: at,
            stopped_by: operator.name.clone(),
            enabled_at: None,
        };
        // Memory first: no token of the workload is accepted, and no new
        // one minted, from this instant.
        state
            .stopped
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(stop.workload.clone());
        state.enforce(Revocation::Workload(&stop));
        state.store.stop_workload(&stop).await.map_err(|error| {
            tracing::error!(%error, "workload stop not durable");
            OAuthError::unavailable("the stop could not be made durable")
        })?;
        tracing::warn!(workload = %stop.workload, operator = %operator.name, "workload stopped");
        entry.detail = Some(
            "every token issued to the workload is revoked; it mints nothing until enabled".into(),
        );
        Ok(WorkloadState {
            workload: stop.workload,
            stopped: true,
            tokens_revoked_before: Some(stop.stopped_at),
        })
    } else {
        if !state.is_stopped(workload.name()) {
            return Err(OAuthError::invalid_request(
                DenyReason::MalformedRequest,
                "the workload is not stopped",
            )
            .with_status(StatusCode::CONFLICT));
        }
        // Stored first: a crash right after must not leave it stopped in
        // the store and running here, nor the reverse.
        state
            .store
            .enable_workload(workload.name(), at)
            .await
            .map_err(|error| {
                tracing::error!(%error, "workload enable not durable");
                OAuthError::unavailable("the change could not be made durable")
            })?;
        state
            .stopped
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(workload.name());
        tracing::warn!(workload = %workload.name(), operator = %operator.name, "workload enabled again");
        Ok(WorkloadState {
            workload: workload.name().to_owned(),
            stopped: false,
            tokens_revoked_before: None,
        })
    }
}
