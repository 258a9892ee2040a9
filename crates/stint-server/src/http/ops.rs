//! Health, readiness and metrics.

use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde_json::json;
use std::sync::Arc;
use stint_core::audit::{Decision, EventKind};

/// The process is up and serving.
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

/// The broker can make decisions: the audit log and the store both work.
pub(crate) async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let audit = state
        .audit
        .check(|| {
            let mut entry = state.audit_entry(
                state.clock.now(),
                EventKind::AuditResumed,
                Decision::Allow,
                None,
            );
            entry.detail = Some("readiness probe: the audit log is writable again".into());
            entry
        })
        .await;
    let store = state.store.check().await.is_ok();
    let status = if audit && store {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "status": if status == StatusCode::OK { "ready" } else { "unavailable" },
        "checks": { "audit_log": audit, "store": store },
    });
    (status, Json(body)).into_response()
}

pub(crate) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let now = state.clock.now();
    let text = state.metrics.render(
        &state.policy.load(),
        now.date_naive(),
        state.revocations.len(),
    );
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        )],
        text,
    )
        .into_response()
}
