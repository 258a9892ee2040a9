//! The HTTP surface: routes, the per-request context, and the middleware
//! that stamps every response with a request id and times it.
//!
//! The middleware also runs each decision (every POST) in a task of its own.
//! A handler that has started a decision (a store write, an audit record)
//! finishes it even if the client goes away or its connection is closed:
//! a revocation is never durable but unaudited because a client hung up.
//! And it caps the requests in flight across every connection at
//! `Limits::max_in_flight`, answering 503 beyond that rather than
//! queueing without bound: with the 64 KiB body cap, this bounds the bodies
//! handlers hold (64 MiB at the default 1024). GET routes (discovery, keys,
//! health, metrics) are never shed.

mod admin;
mod approvals;
pub(crate) mod client_auth;
mod discovery;
pub(crate) mod exchange;
pub(crate) mod feed;
mod introspect;
mod ops;
mod revoke;
mod status;
mod token;
mod workloads;

use crate::error::OAuthError;
use crate::state::AppState;
use axum::Router;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderValue, Method};
use ring::rand::SecureRandom as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;
use stint_core::decision::DenyReason;
use stint_proto as proto;

/// What every handler knows about the request it serves.
#[derive(Debug, Clone)]
pub(crate) struct RequestContext {
    pub(crate) request_id: String,
    pub(crate) client_addr: Option<SocketAddr>,
}

const JOB_REVOKE_ROUTE: &str = "/v1/jobs/{job}/revoke";
const STEP_REVOKE_ROUTE: &str = "/v1/jobs/{job}/steps/{step}/revoke";
const APPROVAL_ROUTE: &str = "/v1/approvals/{id}";
const APPROVAL_DECISION_ROUTE: &str = "/v1/approvals/{id}/{decision}";
const STATUS_LIST_ROUTE: &str = "/v1/status/{list}";
const WORKLOAD_STOP_ROUTE: &str = "/v1/workloads/{name}/stop";
const WORKLOAD_ENABLE_ROUTE: &str = "/v1/workloads/{name}/enable";
const HEALTHZ: &str = "/healthz";
const READYZ: &str = "/readyz";
const METRICS: &str = "/metrics";

/// Every route, so that the latency metric's `route` label is one of a fixed
/// set of static strings.
const ROUTES: [&str; 20] = [
    proto::METADATA_PATH,
    proto::OPENID_CONFIGURATION_PATH,
    proto::JWKS_PATH,
    proto::TOKEN_PATH,
    proto::REVOCATION_PATH,
    proto::INTROSPECTION_PATH,
    JOB_REVOKE_ROUTE,
    STEP_REVOKE_ROUTE,
    proto::KEY_ROTATION_PATH,
    proto::APPROVALS_PATH,
    APPROVAL_ROUTE,
    APPROVAL_DECISION_ROUTE,
    proto::REVOCATION_STREAM_PATH,
    proto::REVOCATION_SNAPSHOT_PATH,
    STATUS_LIST_ROUTE,
    WORKLOAD_STOP_ROUTE,
    WORKLOAD_ENABLE_ROUTE,
    HEALTHZ,
    READYZ,
    METRICS,
];

pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route(proto::METADATA_PATH, get(discovery::metadata))
        .route(proto::OPENID_CONFIGURATION_PATH, get(discovery::metadata))
        .route(proto::JWKS_PATH, get(discovery::jwks))
        .route(proto::TOKEN_PATH, post(token::token))
        .route(proto::REVOCATION_PATH, post(revoke::revoke_token))
        .route(proto::INTROSPECTION_PATH, post(introspect::introspect))
        .route(JOB_REVOKE_ROUTE, post(revoke::revoke_job))
        .route(STEP_REVOKE_ROUTE, post(revoke::revoke_step))
        .route(proto::KEY_ROTATION_PATH, post(admin::rotate_keys))
        .route(proto::APPROVALS_PATH, get(approvals::list))
        .route(APPROVAL_ROUTE, get(approvals::show))
        .route(APPROVAL_DECISION_ROUTE, post(approvals::decide_route))
        .route(proto::REVOCATION_STREAM_PATH, get(feed::stream))
        .route(proto::REVOCATION_SNAPSHOT_PATH, get(feed::snapshot))
        .route(STATUS_LIST_ROUTE, get(status::status_list))
        .route(WORKLOAD_STOP_ROUTE, post(workloads::stop))
        .route(WORKLOAD_ENABLE_ROUTE, post(workloads::enable))
        .route(HEALTHZ, get(ops::healthz))
        .route(READYZ, get(ops::readyz))
        .route(METRICS, get(ops::metrics))
        .route_layer(middleware::from_fn_with_state(Arc::clone(&state), observe))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn observe(State(state): State<Arc<AppState>>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let mut id = [0u8; 12];
    // A request id is for correlation, not secrecy; if the CSPRNG failed we
    // would fail every mint anyway, so an all-zero id here is harmless.
    let _ = state.rng.fill(&mut id);
    let request_id = URL_SAFE_NO_PAD.encode(id);
    let client_addr = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0);
    let route = route_label(request.extensions().get::<MatchedPath>());
    let method = method_label(request.method());
    request.extensions_mut().insert(RequestContext {
        request_id: request_id.clone(),
        client_addr,
    });
    let mut response = if request.method() == Method::POST {
        decide(&state, request, next).await
    } else {
        // Discovery, keys, health and metrics: cheap, bodiless, and needed
        // most when the broker is busy, so never shed.
        next.run(request).await
    };
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    state.metrics.observe_request(
        route,
        method,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// Run a decision (every POST route) on its own task, within the cap on
/// requests in flight.
async fn decide(state: &AppState, request: Request, next: Next) -> Response {
    let Ok(permit) = Arc::clone(&state.in_flight).try_acquire_owned() else {
        state.metrics.shed();
        return OAuthError::unavailable("the broker is at its limit of requests in flight")
            .into_response();
    };
    let handler = tokio::spawn(async move {
        let response = next.run(request).await;
        drop(permit);
        response
    });
    handler.await.unwrap_or_else(|error| {
        tracing::error!(%error, "request handler failed");
        OAuthError::new(
            proto::ErrorCode::ServerError,
            DenyReason::Internal,
            "the request could not be handled",
        )
        .with_status(http::StatusCode::INTERNAL_SERVER_ERROR)
        .into_response()
    })
}

fn route_label(matched: Option<&MatchedPath>) -> &'static str {
    matched
        .and_then(|path| ROUTES.iter().find(|route| **route == path.as_str()))
        .copied()
        .unwrap_or("other")
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

async fn method_not_allowed() -> Response {
    OAuthError::invalid_request(
        DenyReason::MalformedRequest,
        "this endpoint does not accept that method",
    )
    .with_status(http::StatusCode::METHOD_NOT_ALLOWED)
    .into_response()
}

async fn not_found() -> Response {
    OAuthError::invalid_request(DenyReason::MalformedRequest, "no such endpoint")
        .with_status(http::StatusCode::NOT_FOUND)
        .into_response()
}
