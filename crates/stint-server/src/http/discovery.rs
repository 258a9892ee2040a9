//! RFC 8414 metadata, OpenID Connect discovery, and the JWK set.

use crate::error::OAuthError;
use crate::state::AppState;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderValue, header};
use std::sync::Arc;
use stint_core::decision::DenyReason;
use stint_proto::ErrorCode;

const JSON: HeaderValue = HeaderValue::from_static("application/json");
/// The metadata documents may be cached for five minutes (the JWK set for
/// no longer than a new key is published before it signs:
/// [`crate::keys::KeyRing::jwks_cache_control`]).
const CACHEABLE: HeaderValue = HeaderValue::from_static("public, max-age=300");

pub(crate) async fn metadata(State(state): State<Arc<AppState>>) -> Response {
    (
        [
            (header::CONTENT_TYPE, JSON),
            (header::CACHE_CONTROL, CACHEABLE),
        ],
        state.metadata.oauth.clone(),
    )
        .into_response()
}

pub(crate) async fn openid_configuration(State(state): State<Arc<AppState>>) -> Response {
    (
        [
            (header::CONTENT_TYPE, JSON),
            (header::CACHE_CONTROL, CACHEABLE),
        ],
        state.metadata.openid.clone(),
    )
        .into_response()
}

/// The authorization endpoint OpenID Connect discovery requires a URL for.
/// Stint has no interactive authorization and no registered redirect URIs,
/// so it never redirects (RFC 6749 section 4.1.2.1): every request, GET or
/// POST, whatever its parameters, is answered here with 400
/// `unsupported_response_type`.
pub(crate) async fn authorize() -> Response {
    OAuthError::new(
        ErrorCode::UnsupportedResponseType,
        DenyReason::UnsupportedGrantType,
        "Stint has no interactive authorization: a workload gets tokens at the token endpoint (client_credentials or token exchange)",
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
            // Never longer than a new key is published before it signs.
            (header::CACHE_CONTROL, state.keys.jwks_cache_control()),
        ],
        state.keys.jwks_json(),
    )
        .into_response()
}
