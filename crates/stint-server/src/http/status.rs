//! `GET /v1/status/{list}`: a Token Status List, as a signed
//! `statuslist+jwt` (draft-ietf-oauth-status-list). Public, like the JWK
//! set: a list says only which indexes are revoked.

use crate::error::OAuthError;
use crate::state::AppState;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use std::sync::Arc;
use stint_core::decision::DenyReason;
use stint_core::status_list::STATUS_LIST_MEDIA_TYPE;

/// The longest list id looked up.
const MAX_ID_LEN: usize = 64;

pub(crate) async fn status_list(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let not_found = || {
        OAuthError::invalid_request(DenyReason::MalformedRequest, "no such status list")
            .with_status(StatusCode::NOT_FOUND)
            .into_response()
    };
    if id.len() > MAX_ID_LEN {
        return not_found();
    }
    let at = state.clock.now();
    let now = at.timestamp();
    // As at start-up: also what expired within the largest verifier
    // leeway (a verifier still accepts such a token).
    let in_force = at - chrono::Duration::seconds(stint_core::access_token::MAX_LEEWAY_SECS);
    let revocations = || state.revocations.entries(in_force);
    let found = state
        .status_lists
        .token(
            &id,
            &state.keys,
            &state.rng,
            now,
            state.store.as_ref(),
            &revocations,
        )
        .await;
    let (token, etag) = match found {
        None => return not_found(),
        Some(Err(error)) => return error.into_response(),
        Some(Ok(found)) => found,
    };
    // Caches may keep it but must ask again each time (a 304 for the same
    // ETag is cheap): a copy served stale by a proxy would hide a
    // revocation from a verifier that trusts what it fetched as current.
    // How long a verifier may rely on a copy is the token's `ttl`.
    let cache_control = HeaderValue::from_static("public, no-cache");
    let etag_value = HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"\""));
    let unchanged = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|sent| sent.split(',').any(|tag| tag.trim() == etag));
    let mut response = if unchanged {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut response = token.into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(STATUS_LIST_MEDIA_TYPE),
        );
        response
    };
    let headers = response.headers_mut();
    headers.insert(header::ETAG, etag_value);
    headers.insert(header::CACHE_CONTROL, cache_control);
    response
}
