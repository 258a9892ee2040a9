//! The emergency stop: `POST /v1/workloads/{name}/stop` revokes every
//! token the workload holds and refuses it new ones;
//! `POST /v1/workloads/{name}/enable` lets it mint again (what it held
//! before the stop stays revoked). Operators only (as `/v1/approvals`);
//! every call is audited.

use super::RequestContext;
use super::approvals::operator;
use super::client_auth::read_json;
use crate::error::OAuthError;
use crate::state::{AppState, Pending, Revocation};
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
use stint_store::AuditedWrite;

/// The answer to a stop or an enable.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WorkloadState {
    /// The workload.
    pub workload: String,
    /// Whether it is stopped now.
    pub stopped: bool,
    /// Every token issued up to this time is revoked (a stop).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_revoked_before: Option<i64>,
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
    let called = async {
        let operator = operator(state, headers, &mut entry).await?;
        entry.operator = Some(operator.name.clone());
        // No such workload: refused before its body is read.
        let policy = state.policy.load();
        let workload = policy.workload(name).ok_or_else(no_such_workload)?;
        entry.sub = Some(workload.name().to_owned());
        let body: DecisionBody = read_json(headers, body, state.body_timeout).await?;
        Ok::<_, OAuthError>((operator.name, body.comment))
    }
    .await;
    let outcome = match called {
        Ok((operator, comment)) => {
            let context = context.with_identity_of(&entry);
            set_workload(state, &context, &operator, name, comment, stopping).await
        }
        Err(error) => Err(state.refuse(entry, error).await),
    };
    match outcome {
        Ok(answer) => Json(answer).into_response(),
        Err(error) => error.into_response(),
    }
}

/// Operator `operator` stops (or enables) workload `name`, with an
/// optional one-line comment: checked, audited, stored and in force, or
/// refused (and the refusal audited). The API and the console both call
/// this.
pub(crate) async fn set_workload(
    state: &AppState,
    context: &RequestContext,
    operator: &str,
    name: &str,
    comment: Option<String>,
    stopping: bool,
) -> Result<WorkloadState, OAuthError> {
    let now = state.clock.now();
    let mut entry = state.audit_entry(
        now,
        EventKind::WorkloadStopRefused,
        Decision::Deny,
        Some(context),
    );
    entry.operator = Some(operator.to_owned());
    let workload = match check_call(state, name, comment, &mut entry) {
        Ok(workload) => workload,
        Err(error) => return Err(state.refuse(entry, error).await),
    };
    if stopping {
        stop_workload(state, entry, workload, operator.to_owned()).await
    } else {
        enable_workload(state, entry, workload, operator, now.timestamp()).await?
    }
}

fn no_such_workload() -> OAuthError {
    OAuthError::invalid_request(DenyReason::MalformedRequest, "no such workload")
        .with_status(StatusCode::NOT_FOUND)
}

/// The workload named and the comment, checked. Fills `entry` with them.
fn check_call(
    state: &AppState,
    name: &str,
    comment: Option<String>,
    entry: &mut AuditEntry,
) -> Result<String, OAuthError> {
    let policy = state.policy.load();
    let Some(workload) = policy.workload(name) else {
        return Err(no_such_workload());
    };
    entry.sub = Some(workload.name().to_owned());
    if comment
        .as_deref()
        .is_some_and(|c| c.len() > 1024 || c.chars().any(char::is_control))
    {
        return Err(OAuthError::invalid_request(
            DenyReason::MalformedRequest,
            "the comment is one line of at most 1024 bytes",
        ));
    }
    entry.comment = comment;
    Ok(workload.name().to_owned())
}

/// A stop is audited, stored, then in force (see [`AppState::revoke`]).
async fn stop_workload(
    state: &AppState,
    mut entry: AuditEntry,
    workload: String,
    operator: String,
) -> Result<WorkloadState, OAuthError> {
    let _held = state.hold(Pending::Workload {
        sub: workload.clone(),
    });
    // The stop's time is taken after the hold: every token signed before
    // it is covered (issued at or before it), and none is signed after it.
    let stop = WorkloadStop {
        workload,
        stopped_at: state.clock.now().timestamp(),
        stopped_by: operator,
        enabled_at: None,
    };
    entry.event = EventKind::WorkloadStopped;
    entry.decision = Decision::Allow;
    entry.detail = Some(
        "every token issued to the workload is revoked; it mints nothing until enabled".into(),
    );
    state
        .revoke(
            entry,
            EventKind::WorkloadStopRefused,
            Revocation::Workload(&stop),
        )
        .await?;
    tracing::warn!(workload = %stop.workload, operator = %stop.stopped_by, "workload stopped");
    Ok(WorkloadState {
        workload: stop.workload,
        stopped: true,
        tokens_revoked_before: Some(stop.stopped_at),
    })
}

/// An enable and its record: one transaction where the audit log is in the
/// store; otherwise stored, then audited, so that a crash right after does
/// not leave the workload stopped in the store and running here, nor the
/// reverse. The outcome, or the answer when it could not be recorded.
async fn enable_workload(
    state: &AppState,
    mut entry: AuditEntry,
    workload: String,
    operator: &str,
    at: i64,
) -> Result<Result<WorkloadState, OAuthError>, OAuthError> {
    if !state.is_stopped(&workload) {
        let refused = OAuthError::invalid_request(
            DenyReason::MalformedRequest,
            "the workload is not stopped",
        )
        .with_status(StatusCode::CONFLICT);
        return state
            .record_outcome(entry, Err(refused), EventKind::WorkloadEnabled)
            .await;
    }
    let write = AuditedWrite::WorkloadEnabled {
        workload: workload.clone(),
        at,
    };
    let seq = if state.audit.writes_changes() {
        entry.event = EventKind::WorkloadEnabled;
        entry.decision = Decision::Allow;
        match state.record_with(entry, write.clone()).await {
            Ok(seq) => seq,
            Err(unavailable) => return Ok(Err(unavailable)),
        }
    } else {
        let stored = state.store.store_write(&write).await.map_err(|error| {
            tracing::error!(%error, "workload enable not durable");
            OAuthError::unavailable("the change could not be made durable")
        });
        let seq = match state
            .record_outcome(entry, stored, EventKind::WorkloadEnabled)
            .await?
        {
            Ok(seq) => seq,
            Err(refused) => return Ok(Err(refused)),
        };
        Some(seq)
    };
    // Enabled here, as on every other broker, when the change is applied:
    // in sequence, so a stop committed just after it (through another
    // broker) is not undone by this answer.
    if !state.announce(seq, write.change()).await {
        tracing::warn!(%workload, "the enable is stored, not yet applied here: it is as soon as the change feed can be read");
    }
    tracing::warn!(%workload, %operator, "workload enabled again");
    Ok(Ok(WorkloadState {
        workload,
        stopped: false,
        tokens_revoked_before: None,
    }))
}
