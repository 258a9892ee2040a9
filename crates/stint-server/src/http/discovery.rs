//! RFC 8414 metadata and the JWK set.

use crate::state::AppState;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, header};
use std::sync::Arc;

const JSON: HeaderValue = HeaderValue::from_static("application/json");
/// Verifiers may cache for five minutes; a new key is published at least
/// that long before it signs (see docs/operations.md).
const CACHEABLE: HeaderValue = HeaderValue::from_static("public, max-age=300");

pub(crate) async fn metadata(State(state): State<Arc<AppState>>) -> Response {
    (
        [
            (header::CONTENT_TYPE, JSON),
            (header::CACHE_CONTROL, CACHEABLE),
        ],
        state.metadata.clone(),
    )
        .into_response()
}

pub(crate) async fn jwks(State(state): State<Arc<AppState>>) -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/jwk-set+json"),
            ),
            (header::CACHE_CONTROL, CACHEABLE),
        ],
        state.keys.jwks_json(),
    )
        .into_response()
}
