//! `/v1/approvals`: operators list, inspect, approve, deny and revoke
//! elevation requests.
//!
//! Every call authenticates an operator with `Authorization: Bearer`: an
//! operator key (from `stintd new-operator`, its SHA-256 in the policy) or
//! an OIDC ID token from a trusted issuer whose `sub` an operator is bound
//! to. Refused decisions are audited; reads are not.

use super::RequestContext;
use super::client_auth::read_json;
use super::exchange::verify_id_token;
use crate::approvals::{Action, ActionError, duration_param};
use crate::audit::timestamp;
use crate::error::OAuthError;
use crate::state::AppState;
use axum::Extension;
use axum::Json;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode, header};
use serde_json::Value;
use std::sync::Arc;
use stint_core::approval::{ApprovalError, Operator};
use stint_core::audit::{AuditEntry, Decision, EventKind};
use stint_core::decision::DenyReason;
use stint_core::form::FormParams;
use stint_core::jose::MAX_TOKEN_LEN;
use stint_proto::{ApprovalList, ApproveBody, DecisionBody, ErrorCode};

/// The most groups read from an ID token's groups claim.
const MAX_CLAIM_GROUPS: usize = 256;
/// The longest approval id accepted in a path.
const MAX_ID_LEN: usize = 64;

fn not_operator(description: &str) -> OAuthError {
    OAuthError::new(
        ErrorCode::InvalidToken,
        DenyReason::NotOperator,
        description,
    )
}

/// Who is calling: an operator of the policy in force, with their groups.
pub(crate) async fn operator(
    state: &AppState,
    headers: &HeaderMap,
    entry: &mut AuditEntry,
) -> Result<Operator, OAuthError> {
    let credential = headers
        .get(header::AUTHORIZATION)
        .filter(|v| v.len() <= MAX_TOKEN_LEN + 16)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        })
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            not_operator(
                "authenticate as an operator: Authorization: Bearer OPERATOR_KEY or ID_TOKEN",
            )
        })?;
    let policy = state.policy.load();
    if credential.bytes().filter(|b| *b == b'.').count() == 2 {
        let (issuer, claims) = verify_id_token(state, &policy, credential, entry)
            .await
            .map_err(|error| {
                if error.code == ErrorCode::TemporarilyUnavailable {
                    error
                } else {
                    not_operator(&format!("the ID token is refused: {}", error.description))
                }
            })?;
        let subject = claims.get("sub").and_then(Value::as_str).unwrap_or("");
        let found = policy
            .operator_for_identity(issuer.name(), subject)
            .ok_or_else(|| not_operator("no operator signs in with this identity"))?;
        let extra = claim_groups(found, &claims);
        Ok(found.as_approver(extra))
    } else {
        policy
            .operator_by_key(credential)
            .map(|o| o.as_approver([]))
            .ok_or_else(|| not_operator("the operator key is not recognised"))
    }
}

/// The groups an operator's ID token names in their `groups_claim`, if
/// they have one: at most [`MAX_CLAIM_GROUPS`], each a valid name.
pub(crate) fn claim_groups(
    found: &stint_core::policy::PolicyOperator,
    claims: &Value,
) -> Vec<String> {
    found
        .oidc()
        .and_then(|oidc| oidc.groups_claim.as_deref())
        .and_then(|claim| claims.get(claim))
        .and_then(Value::as_array)
        .map(|groups| {
            groups
                .iter()
                .filter_map(Value::as_str)
                .filter(|g| stint_core::ids::validate_name(g).is_ok())
                .take(MAX_CLAIM_GROUPS)
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
}

pub(crate) fn check_id(id: &str) -> Result<(), OAuthError> {
    let ok = id.len() <= MAX_ID_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok { Ok(()) } else { Err(not_found()) }
}

fn not_found() -> OAuthError {
    OAuthError::invalid_request(DenyReason::MalformedRequest, "no such approval request")
        .with_status(StatusCode::NOT_FOUND)
}

fn no_store(mut response: Response) -> Response {
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    response
}

/// `GET /v1/approvals[?state=pending]`.
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let now = state.clock.now();
    let mut scratch = AuditEntry::new(timestamp(now), EventKind::ApprovalRefused, Decision::Deny);
    if let Err(error) = operator(&state, &headers, &mut scratch).await {
        return error.into_response();
    }
    let query = match FormParams::parse(query.unwrap_or_default().as_bytes()) {
        Ok(query) => query,
        Err(e) => {
            return OAuthError::invalid_request(DenyReason::MalformedRequest, e.to_string())
                .into_response();
        }
    };
    let pending_only = match query.get("state") {
        None => false,
        Some("pending") => true,
        Some(_) => {
            return OAuthError::invalid_request(
                DenyReason::MalformedRequest,
                "the only state filter is state=pending",
            )
            .into_response();
        }
    };
    let approvals = state.approvals.list(pending_only, now).await;
    no_store(Json(ApprovalList { approvals }).into_response())
}

/// `GET /v1/approvals/{id}`.
pub(crate) async fn show(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let now = state.clock.now();
    let mut scratch = AuditEntry::new(timestamp(now), EventKind::ApprovalRefused, Decision::Deny);
    if let Err(error) = operator(&state, &headers, &mut scratch).await {
        return error.into_response();
    }
    if let Err(error) = check_id(&id) {
        return error.into_response();
    }
    match state.approvals.show(&id, now).await {
        Some(view) => no_store(Json(view).into_response()),
        None => not_found().into_response(),
    }
}

/// `POST /v1/approvals/{id}/{approve,deny,revoke}`.
pub(crate) async fn decide_route(
    State(state): State<Arc<AppState>>,
    Extension(context): Extension<RequestContext>,
    headers: HeaderMap,
    Path((id, verb)): Path<(String, String)>,
    body: Body,
) -> Response {
    let Some(verb) = Verb::from_path(&verb) else {
        return not_found().into_response();
    };
    decide(&state, &context, &headers, &id, body, verb).await
}

impl Verb {
    /// The verb a path ends with: `approve`, `deny` or `revoke`.
    pub fn from_path(verb: &str) -> Option<Self> {
        match verb {
            "approve" => Some(Self::Approve),
            "deny" => Some(Self::Deny),
            "revoke" => Some(Self::Revoke),
            _ => None,
        }
    }
}

/// What an operator asks of a request: the decision, and for an
/// approval a duration such as `15m`, and a comment (required to deny).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asked {
    /// Approve, deny or revoke.
    pub verb: Verb,
    /// The duration to approve for (at most the elevation's maximum).
    pub duration: Option<String>,
    /// The operator's comment.
    pub comment: Option<String>,
}

/// An operator's decision on a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    /// Approve (with an optional shorter duration).
    Approve,
    /// Deny, for good (a comment is required).
    Deny,
    /// Revoke an approval (or withdraw a pending request).
    Revoke,
}

async fn decide(
    state: &AppState,
    context: &RequestContext,
    headers: &HeaderMap,
    id: &str,
    body: Body,
    verb: Verb,
) -> Response {
    let now = state.clock.now();
    let mut entry = state.audit_entry(
        now,
        EventKind::ApprovalRefused,
        Decision::Deny,
        Some(context),
    );
    if check_id(id).is_ok() {
        entry.approval_id = Some(id.to_owned());
    }
    let called = async {
        let operator = operator(state, headers, &mut entry).await?;
        entry.operator = Some(operator.name.clone());
        check_id(id)?;
        let (duration, comment) = match verb {
            Verb::Approve => {
                let body: ApproveBody = read_json(headers, body, state.body_timeout).await?;
                (body.duration, body.comment)
            }
            Verb::Deny | Verb::Revoke => {
                let body: DecisionBody = read_json(headers, body, state.body_timeout).await?;
                (None, body.comment)
            }
        };
        Ok::<_, OAuthError>((operator, duration, comment))
    }
    .await;
    let outcome = match called {
        Ok((operator, duration, comment)) => {
            let asked = Asked {
                verb,
                duration,
                comment,
            };
            decide_as(
                state,
                &context.with_identity_of(&entry),
                &operator,
                id,
                asked,
            )
            .await
        }
        Err(error) => Err(refused(state, entry, error).await),
    };
    match outcome {
        Ok(view) => no_store(Json(view).into_response()),
        Err(error) => error.into_response(),
    }
}

/// Audit a refused decision; the refusal, or 503 if it cannot be recorded.
async fn refused(state: &AppState, mut entry: AuditEntry, error: OAuthError) -> OAuthError {
    entry.reason = Some(error.reason.as_str().to_owned());
    entry.detail = Some(error.description.clone());
    match state.record(entry).await {
        Ok(()) => error,
        Err(unavailable) => unavailable,
    }
}

/// Operator `operator` decides request `id`: the broker's rules applied,
/// the decision (or its refusal) audited. `duration` (approve only) is a
/// duration such as `15m`. The API and the console both call this.
pub(crate) async fn decide_as(
    state: &AppState,
    context: &RequestContext,
    operator: &Operator,
    id: &str,
    Asked {
        verb,
        duration,
        comment,
    }: Asked,
) -> Result<stint_proto::ApprovalView, OAuthError> {
    let now = state.clock.now();
    let mut entry = state.audit_entry(
        now,
        EventKind::ApprovalRefused,
        Decision::Deny,
        Some(context),
    );
    entry.operator = Some(operator.name.clone());
    entry.comment.clone_from(&comment);
    if check_id(id).is_ok() {
        entry.approval_id = Some(id.to_owned());
    }
    match act(state, context, operator, id, verb, duration, comment).await {
        Ok(view) => Ok(view),
        Err(error) => Err(refused(state, entry, error).await),
    }
}

async fn act(
    state: &AppState,
    context: &RequestContext,
    operator: &Operator,
    id: &str,
    verb: Verb,
    duration: Option<String>,
    comment: Option<String>,
) -> Result<stint_proto::ApprovalView, OAuthError> {
    check_id(id)?;
    let action = match verb {
        Verb::Approve => Action::Approve {
            duration: duration.as_deref().map(duration_param).transpose()?,
            comment,
        },
        Verb::Deny => Action::Deny {
            comment: comment.unwrap_or_default(),
        },
        Verb::Revoke => Action::Revoke { comment },
    };
    let now = state.clock.now();
    match state
        .approvals
        .act(state, id, operator, action, context, now)
        .await
    {
        Ok(view) => Ok(view),
        Err(ActionError::NotFound) => Err(not_found()),
        Err(ActionError::Unavailable(what)) => Err(OAuthError::unavailable(what)),
        Err(ActionError::Changed) => Err(OAuthError::new(
            ErrorCode::InvalidRequest,
            DenyReason::ApprovalRule,
            "the request changed while this decision was made (through another broker); look at it again",
        )
        .with_status(StatusCode::CONFLICT)),
        Err(ActionError::Rules(rule)) => {
            let status = match rule {
                ApprovalError::NotPending
                | ApprovalError::Expired
                | ApprovalError::NotApproved
                | ApprovalError::AlreadyApproved => StatusCode::CONFLICT,
                ApprovalError::CommentRequired | ApprovalError::BadRequest(_) => {
                    StatusCode::BAD_REQUEST
                }
                ApprovalError::NotAnApprover | ApprovalError::OwnWorkload => StatusCode::FORBIDDEN,
            };
            let code = if status == StatusCode::FORBIDDEN {
                ErrorCode::AccessDenied
            } else {
                ErrorCode::InvalidRequest
            };
            Err(
                OAuthError::new(code, DenyReason::ApprovalRule, rule.to_string())
                    .with_status(status),
            )
        }
    }
}
