//! Health, readiness and metrics.

use crate::metrics::{Access, Format, Scrape};
use crate::state::AppState;
use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
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
    let store = state.store_reachable() && state.store.check().await.is_ok();
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

/// `GET /metrics`, in the format the scraper's `Accept` asks for. Open to
/// any scraper unless `--metrics-token-file` is set (then only to one that
/// presents the token as `Authorization: Bearer`); the policy's workflow
/// names are only in an authorized scrape.
pub(crate) async fn metrics(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let access = state.metrics.authorize(
        headers
            .get(header::AUTHORIZATION)
            .map(HeaderValue::as_bytes),
    );
    if access == Access::Refused {
        let mut response = (
            StatusCode::UNAUTHORIZED,
            "the metrics need the scrape token: Authorization: Bearer TOKEN (--metrics-token-file)\n",
        )
            .into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"stint-metrics\""),
        );
        return response;
    }
    let format = Format::negotiate(
        headers
            .get(header::ACCEPT)
            .and_then(|value| value.to_str().ok()),
    );
    let now = state.clock.now();
    let policy = state.policy.load();
    let scrape = Scrape {
        policy: &policy,
        today: now.date_naive(),
        revocations: state.revocations.len(),
        approvals_pending: state.approvals.list(true, now).await.len(),
        feed_streams: state.feed.subscribers(),
        feed_events: state.feed.published(),
        webhook: state.approvals.webhook_counts(),
        jwks_fetches: state.issuer_keys.fetch_counts(),
        names: access == Access::Full,
        targets: state.targets.census(now.timestamp()),
        rate_limits: state.targets.rate_limits(),
    };
    let text = state.metrics.render(&scrape, format);
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static(format.content_type()),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        ],
        text,
    )
        .into_response()
}
