//! Target credentials over HTTP: the RFC 8693 exchange of a step token for
//! a native credential of a target (`subject_token_type` access token,
//! the target as `audience` or `resource=urn:stint:target:NAME`), and
//! `DELETE /v1/target-credentials/{id}` to destroy one alone.
//!
//! In order, stopping at the first failure, each refusal audited
//! (`target_credential_denied`) and nothing made upstream: the parameters;
//! the target's name; the subject token (an active step token of this
//! broker, from its certificate if it is bound to one); the client's rate
//! limit; a stopped workload; the target in the policy and in the step's
//! `targets`, and as the token's audience; the scopes (the token's for this target, or fewer if `scope`
//! names them); the planner; one credential per token and target.

use super::RequestContext;
use crate::error::OAuthError;
use crate::federation_token::NO_FEDERATION_KEY;
use crate::serve::PeerCertificate;
use crate::state::{AppState, TokenState};
use axum::Extension;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use http::{HeaderMap, StatusCode, header};
use std::sync::Arc;
use stint_core::audit::{AuditEntry, EventKind, TargetAudit};
use stint_core::claims::AccessTokenClaims;
use stint_core::decision::DenyReason;
use stint_core::form::FormParams;
use stint_core::policy::Policy;
use stint_core::scope::{Scope, parse_scope_list};
use stint_core::target::TargetKind;
use stint_core::target::oidc::{
    self, FEDERATION_TOKEN_ID_PREFIX, FederationRequest, OidcTarget, is_federation_token_id,
};
use stint_proto::{
    ErrorCode, FederationToken, TARGET_RESOURCE_PREFIX, TOKEN_TYPE_ACCESS_TOKEN,
    TOKEN_TYPE_GITHUB_INSTALLATION_TOKEN, TOKEN_TYPE_NOT_APPLICABLE, TOKEN_TYPE_POSTGRES_LOGIN,
    TargetCredentialResponse,
};
use stint_targets::queue::{MintError, credential_entry};

/// The longest target name.
const MAX_TARGET_LEN: usize = 32;

fn invalid_target(reason: DenyReason, description: impl Into<String>) -> OAuthError {
    OAuthError::new(ErrorCode::InvalidTarget, reason, description)
}

/// Whether a token exchange asks for a target credential: its subject
/// token is an access token (a step token), not a platform ID token.
pub(crate) fn is_target_exchange(form: &FormParams) -> bool {
    form.get("subject_token_type") == Some(TOKEN_TYPE_ACCESS_TOKEN)
}

/// The target a request names, by `audience=NAME` or
/// `resource=urn:stint:target:NAME` (repeats allowed if they agree).
fn target_name(form: &FormParams) -> Result<String, OAuthError> {
    let mut names = form
        .all("audience")
        .map(Ok)
        .chain(form.all("resource").map(|r| {
            r.strip_prefix(TARGET_RESOURCE_PREFIX).ok_or_else(|| {
                invalid_target(
                    DenyReason::MalformedAudience,
                    format!(
                        "resource must be {TARGET_RESOURCE_PREFIX}NAME for a target credential"
                    ),
                )
            })
        }));
    let first = names.next().ok_or_else(|| {
        invalid_target(
            DenyReason::MissingAudience,
            "name the target: audience=NAME or resource=urn:stint:target:NAME",
        )
    })??;
    for other in names {
        if other? != first {
            return Err(invalid_target(
                DenyReason::MalformedAudience,
                "the audience and resource parameters name more than one target; exchange once per target",
            ));
        }
    }
    let well_formed = !first.is_empty()
        && first.len() <= MAX_TARGET_LEN
        && first.starts_with(|c: char| c.is_ascii_lowercase())
        && first
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !well_formed {
        return Err(invalid_target(
            DenyReason::MalformedAudience,
            format!(
                "a target name is a lowercase letter, then lowercase letters, digits or '-', at most {MAX_TARGET_LEN} bytes"
            ),
        ));
    }
    Ok(first.to_owned())
}

/// A certificate-bound step token is exchanged only over a connection with
/// its certificate.
fn check_holder(
    claims: &AccessTokenClaims,
    certificate: Option<&PeerCertificate>,
) -> Result<(), OAuthError> {
    if super::revoke::presents_its_certificate(claims, certificate) {
        Ok(())
    } else {
        Err(OAuthError::new(
            ErrorCode::InvalidGrant,
            DenyReason::InactiveSubjectToken,
            "the step token is bound to a client certificate: exchange it over a connection with that certificate",
        ))
    }
}

/// The scopes of the credential: the token's that name `target`, or those
/// of them that `scope` lists.
fn credential_scopes(
    claims: &AccessTokenClaims,
    target: &str,
    form: &FormParams,
) -> Result<Vec<Scope>, OAuthError> {
    let names_target = |s: &Scope| s.segments().next() == Some(target);
    let carried: Vec<Scope> = claims
        .scopes()
        .filter_map(|s| Scope::parse(s).ok())
        .filter(names_target)
        .collect();
    let scopes = match form.get("scope") {
        None => carried,
        Some(asked) => {
            let asked = parse_scope_list(asked).map_err(|e| {
                OAuthError::new(
                    ErrorCode::InvalidScope,
                    DenyReason::MalformedScope,
                    format!("the scope parameter is malformed: {e}"),
                )
            })?;
            if let Some(extra) = asked.iter().find(|s| !carried.contains(s)) {
                return Err(OAuthError::new(
                    ErrorCode::InvalidScope,
                    DenyReason::ScopeNotAllowed,
                    format!(
                        "scope {} is not among the step token's scopes for target {target}: a credential can only narrow its token",
                        extra.as_str()
                    ),
                ));
            }
            asked
        }
    };
    if scopes.is_empty() {
        return Err(OAuthError::new(
            ErrorCode::InvalidScope,
            DenyReason::TargetPlanRefused,
            format!("the step token carries no scope for target {target}"),
        ));
    }
    Ok(scopes)
}

/// Exchange a step token for a credential on a target. Fills `entry` (a
/// `target_credential_denied` until it succeeds).
pub(crate) async fn exchange(
    state: &AppState,
    policy: &Policy,
    form: &FormParams,
    certificate: Option<&PeerCertificate>,
    now: DateTime<Utc>,
    entry: &mut AuditEntry,
) -> Result<TargetCredentialResponse, OAuthError> {
    entry.event = EventKind::TargetCredentialDenied;
    if form.get("actor_token").is_some() {
        return Err(OAuthError::invalid_request(
            DenyReason::MalformedRequest,
            "delegation (actor_token) is not supported",
        ));
    }
    let requested_type = form.get("requested_token_type");
    let known = [
        TOKEN_TYPE_POSTGRES_LOGIN,
        TOKEN_TYPE_GITHUB_INSTALLATION_TOKEN,
        stint_proto::TOKEN_TYPE_JWT,
        stint_proto::TOKEN_TYPE_ID_TOKEN,
    ];
    if let Some(asked) = requested_type
        && !known.contains(&asked)
    {
        return Err(OAuthError::invalid_request(
            DenyReason::MalformedRequest,
            format!(
                "a step token is exchanged for a target credential: requested_token_type may only be {TOKEN_TYPE_POSTGRES_LOGIN} (postgres targets), {TOKEN_TYPE_GITHUB_INSTALLATION_TOKEN} (github targets), or {} or {} (oidc targets)",
                stint_proto::TOKEN_TYPE_JWT,
                stint_proto::TOKEN_TYPE_ID_TOKEN
            ),
        ));
    }
    let subject_token = form.get("subject_token").ok_or_else(|| {
        OAuthError::invalid_request(
            DenyReason::MalformedRequest,
            "the subject_token parameter is required",
        )
    })?;
    let target = target_name(form)?;
    entry.aud = Some(target.clone());

    let claims = match state.check_token(subject_token, now)? {
        TokenState::Active(claims) => claims,
        TokenState::Revoked(claims) => {
            describe(entry, &claims);
            return Err(inactive("the step token has been revoked"));
        }
        TokenState::Expired => return Err(inactive("the step token has expired")),
        TokenState::Unknown => {
            return Err(inactive(
                "the subject token is not a step token of this broker",
            ));
        }
    };
    describe(entry, &claims);
    check_holder(&claims, certificate)?;
    super::token::check_client_rate_of(state, &claims.client_id)?;
    if state.is_stopped(&claims.sub) {
        return Err(OAuthError::new(
            ErrorCode::UnauthorizedClient,
            DenyReason::WorkloadStopped,
            "this workload was stopped by an operator: it gets no credentials until an operator enables it again",
        ));
    }
    let Some(declared) = policy.target(&target) else {
        return Err(invalid_target(
            DenyReason::UnknownTarget,
            format!("the policy declares no target named {target}"),
        ));
    };
    let lists_target = policy
        .workflow(&claims.workflow)
        .and_then(|workflow| workflow.step(&claims.step))
        .is_some_and(|step| step.targets().contains(&target));
    if !lists_target {
        return Err(invalid_target(
            DenyReason::TargetNotAllowed,
            format!(
                "step {:?} of workflow {:?} does not list target {target}",
                claims.step, claims.workflow
            ),
        ));
    }
    // A step token is exchanged only at the target it was minted for: one
    // sent to an API (another audience) cannot be turned into a login by
    // that API, or by whoever copies it from its logs.
    if claims.aud != target {
        return Err(invalid_target(
            DenyReason::TargetNotAllowed,
            format!(
                "the step token is for audience {:?}, not target {target}: mint the step token with audience={target}",
                claims.aud
            ),
        ));
    }
    entry.target = Some(TargetAudit {
        name: target.clone(),
        kind: declared.kind().as_str().to_owned(),
        ..TargetAudit::default()
    });
    let issued_token_type = issued_token_type(declared.kind(), requested_type)?;
    let scopes = credential_scopes(&claims, &target, form)?;
    entry.scopes = scopes.iter().map(|s| s.as_str().to_owned()).collect();
    if let TargetKind::Oidc(oidc) = declared.kind() {
        return federation_token(
            state,
            &claims,
            &target,
            oidc,
            &scopes,
            requested_type,
            now,
            entry,
        );
    }

    let minted = match state
        .targets
        .mint(state, &claims, &target, &scopes, now)
        .await
    {
        Ok(minted) => minted,
        Err(error) => {
            if let (MintError::Upstream { request_id, .. }, Some(audit)) =
                (&error, entry.target.as_mut())
            {
                audit.request_id.clone_from(request_id);
            }
            return Err(crate::targets::oauth_error(error));
        }
    };
    let mut record = credential_entry(now, EventKind::TargetCredentialMinted, &minted.credential);
    if let Some(audit) = record.target.as_mut() {
        audit.planned = minted.privileges.clone();
        audit.outcome = Some("created".to_owned());
    }
    entry.target = record.target;
    entry.event = EventKind::TargetCredentialMinted;

    let credential = &minted.credential;
    Ok(TargetCredentialResponse {
        access_token: minted.secret,
        token_type: TOKEN_TYPE_NOT_APPLICABLE.to_owned(),
        issued_token_type: issued_token_type.to_owned(),
        // Stint revokes it when the step token expires, whatever the
        // upstream's own lifetime.
        expires_in: u64::try_from(credential.expires_at - now.timestamp()).unwrap_or(0),
        credential_id: credential.id.clone(),
        target: credential.target.clone(),
        kind: credential.kind.clone(),
        scope: scopes
            .iter()
            .map(Scope::as_str)
            .collect::<Vec<_>>()
            .join(" "),
        postgres: minted.postgres,
        github: minted.github,
        federation: None,
    })
}

/// Sign a federation token for OIDC target `target` from a step token
/// that passed every check of [`exchange`]. Fills `entry` (a
/// `federation_token_issued` once signed). Nothing is made upstream, so
/// nothing is queued: the token is good until its `exp`.
#[allow(clippy::too_many_arguments)]
fn federation_token(
    state: &AppState,
    claims: &AccessTokenClaims,
    target: &str,
    oidc: &OidcTarget,
    scopes: &[Scope],
    requested_type: Option<&str>,
    now: DateTime<Utc>,
    entry: &mut AuditEntry,
) -> Result<TargetCredentialResponse, OAuthError> {
    let Some(key) = state.federation_keys.signing_key() else {
        return Err(OAuthError::new(
            ErrorCode::TemporarilyUnavailable,
            DenyReason::TargetUnavailable,
            NO_FEDERATION_KEY,
        ));
    };
    let jti = stint_core::claims::new_jti(&state.rng)
        .map(|random| format!("{FEDERATION_TOKEN_ID_PREFIX}{random}"))
        .map_err(|_| OAuthError::unavailable("the random number generator failed; retry"))?;
    let federation = oidc::federation_claims(
        oidc,
        &FederationRequest {
            issuer: &state.issuer,
            workload: &claims.sub,
            workflow: &claims.workflow,
            step: &claims.step,
            job: &claims.job,
            step_token_exp: claims.exp,
            now: now.timestamp(),
            jti: &jti,
        },
    )
    .map_err(|e| {
        OAuthError::new(
            ErrorCode::InvalidGrant,
            DenyReason::TargetPlanRefused,
            e.to_string(),
        )
    })?;
    let token = crate::federation_token::sign(key, &federation, &state.rng).map_err(|error| {
        tracing::error!(%error, "a federation token could not be signed");
        OAuthError::unavailable("the federation token could not be signed; retry")
    })?;
    entry.event = EventKind::FederationTokenIssued;
    entry.target = Some(TargetAudit {
        name: target.to_owned(),
        kind: "oidc".to_owned(),
        credential_id: Some(federation.jti.clone()),
        expires_at: Some(federation.exp),
        subject: Some(federation.sub.clone()),
        audience: Some(federation.aud.clone()),
        kid: Some(key.kid().to_owned()),
        outcome: Some("issued".to_owned()),
        ..TargetAudit::default()
    });
    Ok(TargetCredentialResponse {
        access_token: token,
        token_type: TOKEN_TYPE_NOT_APPLICABLE.to_owned(),
        issued_token_type: match requested_type {
            Some(stint_proto::TOKEN_TYPE_ID_TOKEN) => stint_proto::TOKEN_TYPE_ID_TOKEN,
            _ => stint_proto::TOKEN_TYPE_JWT,
        }
        .to_owned(),
        expires_in: u64::try_from(federation.exp - now.timestamp()).unwrap_or(0),
        credential_id: federation.jti.clone(),
        target: target.to_owned(),
        kind: "oidc".to_owned(),
        scope: scopes
            .iter()
            .map(Scope::as_str)
            .collect::<Vec<_>>()
            .join(" "),
        postgres: None,
        github: None,
        federation: Some(FederationToken {
            audience: federation.aud,
            subject: federation.sub,
            expires_at: federation.exp,
            kid: key.kid().to_owned(),
        }),
    })
}

/// The `issued_token_type` of a target's credentials, checked against the
/// `requested_token_type` if the request names one.
fn issued_token_type(
    kind: &TargetKind,
    requested: Option<&str>,
) -> Result<&'static str, OAuthError> {
    let issued = match kind {
        TargetKind::Postgres(_) => TOKEN_TYPE_POSTGRES_LOGIN,
        TargetKind::Github(_) => TOKEN_TYPE_GITHUB_INSTALLATION_TOKEN,
        TargetKind::Oidc(_) => match requested {
            Some(stint_proto::TOKEN_TYPE_ID_TOKEN) => stint_proto::TOKEN_TYPE_ID_TOKEN,
            _ => stint_proto::TOKEN_TYPE_JWT,
        },
    };
    match requested {
        Some(asked) if asked != issued => Err(OAuthError::invalid_request(
            DenyReason::MalformedRequest,
            format!(
                "a {} target issues {issued}: requested_token_type may only be that",
                kind.as_str()
            ),
        )),
        _ => Ok(issued),
    }
}

fn inactive(description: &str) -> OAuthError {
    OAuthError::new(
        ErrorCode::InvalidGrant,
        DenyReason::InactiveSubjectToken,
        description,
    )
}

fn describe(entry: &mut AuditEntry, claims: &AccessTokenClaims) {
    entry.sub = Some(claims.sub.clone());
    entry.client_id = Some(claims.client_id.clone());
    entry.job = Some(claims.job.clone());
    entry.step = Some(claims.step.clone());
    entry.workflow = Some(claims.workflow.clone());
    entry.jti = Some(claims.jti.clone());
    entry.exp = Some(claims.exp);
    entry.approval_id.clone_from(&claims.elev);
}

/// `DELETE /v1/target-credentials/{id}`, by the step token the credential
/// was made from (`Authorization: Bearer`): it is queued for destruction,
/// durably, and audited. 204 also when the token is revoked or expired
/// (everything made from it is being destroyed already).
pub(crate) async fn revoke_one(
    State(state): State<Arc<AppState>>,
    Extension(context): Extension<RequestContext>,
    certificate: Option<Extension<PeerCertificate>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let now = state.clock.now();
    let mut entry = state.audit_entry(
        now,
        EventKind::TargetCredentialDenied,
        stint_core::audit::Decision::Deny,
        Some(&context),
    );
    let certificate = certificate.map(|Extension(c)| c);
    match revoke_one_inner(&state, &id, &headers, certificate.as_ref(), now, &mut entry).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => state.refuse(entry, error).await.into_response(),
    }
}

async fn revoke_one_inner(
    state: &AppState,
    id: &str,
    headers: &HeaderMap,
    certificate: Option<&PeerCertificate>,
    now: DateTime<Utc>,
    entry: &mut AuditEntry,
) -> Result<(), OAuthError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            OAuthError::new(
                ErrorCode::InvalidToken,
                DenyReason::InvalidClient,
                "authenticate with the step token the credential was made from (Authorization: Bearer)",
            )
        })?;
    if is_federation_token_id(id) && id.len() <= 64 {
        return Err(OAuthError::invalid_request(
            DenyReason::MalformedRequest,
            "this is a federation token: it cannot be revoked, at Stint or upstream (a cloud session or Vault token made from it lasts its own lifetime); revoke the step token to stop further exchanges",
        ));
    }
    if id.len() > 64 || !id.starts_with("tc-") {
        return Err(OAuthError::invalid_request(
            DenyReason::MalformedRequest,
            "not a target credential id",
        ));
    }
    let claims =
        match state.check_token_within(token, now, stint_core::access_token::MAX_LEEWAY_SECS)? {
            TokenState::Active(claims) => claims,
            // Revoked or expired: its credentials are already on their way out.
            TokenState::Revoked(_) | TokenState::Expired => return Ok(()),
            TokenState::Unknown => {
                return Err(OAuthError::new(
                    ErrorCode::InvalidToken,
                    DenyReason::InactiveSubjectToken,
                    "the bearer token is not a step token of this broker",
                ));
            }
        };
    describe(entry, &claims);
    check_holder(&claims, certificate)?;
    // On a shared store, this broker's from now on (whichever made it).
    if id.len() <= 64 {
        state
            .targets
            .adopt(state, id, &claims.jti)
            .await
            .map_err(|error| {
                tracing::error!(%error, "could not take a target credential over to revoke it");
                OAuthError::unavailable(
                    "the credential's record could not be written; nothing was revoked",
                )
            })?;
    }
    let Some(queued) = state.targets.revoke_one(id, &claims.jti, now.timestamp()) else {
        return Err(OAuthError::new(
            ErrorCode::InvalidRequest,
            DenyReason::MalformedRequest,
            "no credential with this id was made from this step token",
        )
        .with_status(StatusCode::NOT_FOUND));
    };
    // Audited first, so that the record of the request comes before the
    // record of what the queue did about it; if it cannot then be stored
    // (or another broker took the credential over in between), the
    // refusal that follows says so, and the caller retries.
    let mut record = credential_entry(now, EventKind::TargetCredentialRevoked, &queued);
    record.request_id.clone_from(&entry.request_id);
    record.client_addr.clone_from(&entry.client_addr);
    if let Some(audit) = record.target.as_mut() {
        audit.outcome = Some("queued".to_owned());
    }
    state.record(record).await?;
    let stored = state
        .store
        .update_target_credential(&queued, &state.instance)
        .await
        .map_err(|error| {
            tracing::error!(%error, "target credential's revocation not stored");
            OAuthError::unavailable(
                "the revocation could not be made durable; it is queued here, retry to be sure",
            )
        })?;
    if !stored {
        // Taken over by another broker in between (revoked through it).
        return Err(OAuthError::unavailable(
            "the credential was taken over by another broker meanwhile; retry",
        ));
    }
    Ok(())
}
