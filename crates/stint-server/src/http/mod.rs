//! The HTTP surface: routes, the per-request context, and the middleware
//! that stamps every response with a request id, times it and logs it (one
//! `info` line per request, target `stint::request`: method, route, status,
//! latency, request id, peer and the client id once known; never a
//! credential, a token or a path parameter).
//!
//! The middleware also runs each decision (every POST) in a task of its own.
//! A handler that has started a decision (a store write, an audit record)
//! finishes it even if the client goes away or its connection is closed:
//! a revocation is never durable but unaudited because a client hung up.
//! And it bounds the requests in flight rather than queueing them: at most
//! `Limits::max_in_flight` (503 beyond), revocations apart with their own
//! `Limits::max_revocations_in_flight` that minting cannot take; within
//! each, a client that an `Authorization: Basic` header authenticates
//! holds at most `Limits::max_in_flight_per_client`, and requests that no
//! header authenticates (credentials in the body, bearer tokens, none) at
//! most half of the pool together and
//! `Limits::max_unauthenticated_in_flight_per_source` per source (429
//! beyond either). With the 64 KiB body cap this bounds the bodies
//! handlers hold. GET routes (discovery, keys, health, metrics) are never
//! shed; on a connection admitted into the connection reserve (see
//! `crate::serve`), only health, discovery, keys, status lists and
//! revocation are served.

mod admin;
pub(crate) mod approvals;
pub(crate) mod client_auth;
mod discovery;
pub(crate) mod exchange;
pub(crate) mod feed;
mod introspect;
mod ops;
pub(crate) mod revoke;
mod status;
mod target;
mod token;
pub(crate) mod workloads;

use crate::error::OAuthError;
use crate::limits::{Admission, Principal, Shed, Source};
use crate::state::AppState;
use axum::Router;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
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
    /// The front end an operator acts through when it is not the HTTP API
    /// (`console`), for the audit record.
    pub(crate) via: Option<&'static str>,
    /// The operator's identity at their identity provider (issuer URL,
    /// `sub`), once known: the records' `federated_iss`/`federated_sub`.
    pub(crate) identity: Option<(String, String)>,
}

impl RequestContext {
    /// What an audit record says of the request: its id, the client's
    /// address, the front end (`via`) and the operator's identity.
    pub(crate) fn stamp(&self, entry: &mut stint_core::audit::AuditEntry) {
        entry.request_id = Some(self.request_id.clone());
        entry.client_addr = self.client_addr.map(|a| a.to_string());
        entry.via = self.via.map(str::to_owned);
        if let Some((iss, sub)) = &self.identity {
            entry.federated_iss = Some(iss.clone());
            entry.federated_sub = Some(sub.clone());
        }
    }

    /// This context, with the identity `entry` learned (an operator's ID
    /// token), for the records made after it.
    pub(crate) fn with_identity_of(&self, entry: &stint_core::audit::AuditEntry) -> Self {
        let mut context = self.clone();
        if let (Some(iss), Some(sub)) = (&entry.federated_iss, &entry.federated_sub) {
            context.identity = Some((iss.clone(), sub.clone()));
        }
        context
    }
}

const JOB_REVOKE_ROUTE: &str = "/v1/jobs/{job}/revoke";
const STEP_REVOKE_ROUTE: &str = "/v1/jobs/{job}/steps/{step}/revoke";
const APPROVAL_ROUTE: &str = "/v1/approvals/{id}";
const APPROVAL_DECISION_ROUTE: &str = "/v1/approvals/{id}/{decision}";
const STATUS_LIST_ROUTE: &str = "/v1/status/{list}";
const WORKLOAD_STOP_ROUTE: &str = "/v1/workloads/{name}/stop";
const WORKLOAD_ENABLE_ROUTE: &str = "/v1/workloads/{name}/enable";
const TARGET_CREDENTIAL_ROUTE: &str = "/v1/target-credentials/{id}";
const HEALTHZ: &str = "/healthz";
const READYZ: &str = "/readyz";
const METRICS: &str = "/metrics";

/// The routes that revoke: their own in-flight capacity, and served on a
/// reserved connection. (An approval's revocation shares its route with
/// the other decisions and is told apart by its last path segment.)
const REVOCATION_ROUTES: [&str; 5] = [
    proto::REVOCATION_PATH,
    TARGET_CREDENTIAL_ROUTE,
    JOB_REVOKE_ROUTE,
    STEP_REVOKE_ROUTE,
    WORKLOAD_STOP_ROUTE,
];

/// What a connection admitted into the reserve is served besides
/// revocation: cheap reads that health checks and verifiers need.
const RESERVED_ROUTES: [&str; 6] = [
    proto::METADATA_PATH,
    proto::OPENID_CONFIGURATION_PATH,
    proto::JWKS_PATH,
    STATUS_LIST_ROUTE,
    HEALTHZ,
    READYZ,
];

/// The client a handler authenticated, as a response extension, for the
/// request log line (a client id the policy knows, never a credential).
#[derive(Debug, Clone)]
pub(crate) struct LoggedClient(pub(crate) String);

/// Every route, so that the latency metric's `route` label is one of a fixed
/// set of static strings.
const ROUTES: [&str; 22] = [
    TARGET_CREDENTIAL_ROUTE,
    proto::METADATA_PATH,
    proto::OPENID_CONFIGURATION_PATH,
    proto::AUTHORIZATION_PATH,
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
        .route(
            proto::OPENID_CONFIGURATION_PATH,
            get(discovery::openid_configuration),
        )
        .route(
            proto::AUTHORIZATION_PATH,
            get(discovery::authorize).post(discovery::authorize),
        )
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
        .route(TARGET_CREDENTIAL_ROUTE, delete(target::revoke_one))
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
    let revocation = REVOCATION_ROUTES.contains(&route)
        || (route == APPROVAL_DECISION_ROUTE && request.uri().path().ends_with("/revoke"));
    let reserved_only = request.extensions().get::<Admission>() == Some(&Admission::Reserved);
    // For accounting and the log only: the handler authenticates again.
    let header_client = if request.headers().contains_key(http::header::AUTHORIZATION) {
        client_auth::header_client(request.headers(), &state.policy.load())
    } else {
        None
    };
    request.extensions_mut().insert(RequestContext {
        request_id: request_id.clone(),
        client_addr,
        via: None,
        identity: None,
    });
    let mut response = if reserved_only && !revocation && !RESERVED_ROUTES.contains(&route) {
        state.metrics.limited("reserved_connection");
        OAuthError::unavailable(
            "the broker is at its connection limit, and this connection is served for health, discovery, keys and revocation only",
        )
        .into_response()
    } else if request.method() == Method::POST {
        let principal = match &header_client {
            Some(client) => Principal::Client(client.clone()),
            None => Principal::Unauthenticated(
                client_addr.map_or(Source::Untracked, |addr| Source::of(addr.ip())),
            ),
        };
        decide(&state, revocation, principal, request, next).await
    } else {
        // Discovery, keys, health and metrics: cheap, bodiless, and needed
        // most when the broker is busy, so never shed.
        next.run(request).await
    };
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    state
        .metrics
        .observe_request(route, method, status, elapsed.as_secs_f64());
    let client_id = response
        .extensions()
        .get::<LoggedClient>()
        .map(|logged| logged.0.clone())
        .or(header_client);
    tracing::info!(
        target: "stint::request",
        method,
        route,
        status,
        latency_ms = elapsed.as_secs_f64() * 1000.0,
        request_id = %request_id,
        peer = client_addr.map(|addr| tracing::field::display(addr.ip())),
        client_id = client_id.as_deref(),
        "request"
    );
    response
}

/// Run a decision (every POST route) on its own task, within the caps on
/// requests in flight.
async fn decide(
    state: &AppState,
    revocation: bool,
    principal: Principal,
    request: Request,
    next: Next,
) -> Response {
    let pool = if revocation {
        &state.limits.revocations
    } else {
        &state.in_flight
    };
    let unauthenticated = matches!(principal, Principal::Unauthenticated(_));
    let permits = match state.limits.enter(pool, revocation, principal) {
        Ok(permits) => permits,
        Err(Shed::Pool) => {
            state.metrics.shed();
            return OAuthError::unavailable("the broker is at its limit of requests in flight")
                .into_response();
        }
        Err(Shed::Share) => {
            let (limit, who) = if unauthenticated {
                (
                    "max_unauthenticated_in_flight_per_source",
                    "this source has as many requests in flight without an authenticating Authorization header",
                )
            } else {
                (
                    "max_in_flight_per_client",
                    "this client has as many requests in flight",
                )
            };
            state.metrics.limited(limit);
            return OAuthError::new(
                proto::ErrorCode::TemporarilyUnavailable,
                DenyReason::RateLimited,
                format!("{who} as it may; retry when one has finished"),
            )
            .with_status(http::StatusCode::TOO_MANY_REQUESTS)
            .with_retry_after(1)
            .into_response();
        }
    };
    let handler = tokio::spawn(async move {
        let response = next.run(request).await;
        drop(permits);
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
