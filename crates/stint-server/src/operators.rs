//! What an operator may do at this broker, for front ends other than the
//! HTTP API: the console (`stint-console`) is built on this.
//!
//! Every operation here is the one the API's handlers call: the same
//! rules (the approval quorum, no owner, no requester, no double count,
//! expiry), the same order of effects, the same audit records. A front end
//! turns its own requests into plain values (who, what, from where) and
//! gets a domain answer back; a decision made here is audited with
//! `via` set to the front end's name.

use crate::http::RequestContext;
use crate::state::AppState;
use chrono::{DateTime, Utc};
use serde_json::Value;
use std::net::SocketAddr;
use std::sync::Arc;
use stint_core::audit::{AuditEntry, Decision, EventKind};
use stint_core::claims::AccessTokenClaims;
use stint_core::policy::Policy;
use stint_core::target_credential::TargetCredential;

pub use crate::http::approvals::{Asked, Verb};
pub use crate::http::workloads::WorkloadState;
pub use stint_core::approval::Operator;
pub use stint_proto::{ApprovalView, ApprovalVote};

/// Where an operator's call comes from, for the audit record.
#[derive(Debug, Clone)]
pub struct Origin {
    /// The front end (`console`): the records' `via`.
    pub via: &'static str,
    /// The request's id (the records' `request_id`).
    pub request_id: String,
    /// The caller's address.
    pub client_addr: Option<SocketAddr>,
}

impl Origin {
    fn context(&self, signed: Option<&SignedIn>) -> RequestContext {
        RequestContext {
            request_id: self.request_id.clone(),
            client_addr: self.client_addr,
            via: Some(self.via),
            identity: signed.map(|s| (s.issuer_url.clone(), s.subject.clone())),
        }
    }
}

/// An operator an identity provider vouched for: who they are in the
/// policy, and the identity they signed in with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedIn {
    /// Their name in the policy.
    pub operator: String,
    /// The policy's name of the issuer they signed in through.
    pub issuer: String,
    /// The ID token's `sub`.
    pub subject: String,
    /// The groups their ID token's `groups_claim` named, if any.
    pub claim_groups: Vec<String>,
    /// Until when those groups count (seconds since the epoch): the ID
    /// token's `exp`, at most the issuer's `max_token_age` after sign-in.
    /// After it the operator has the policy's groups only, until they sign
    /// in again: the identity provider may have taken a group away.
    pub claim_groups_until: i64,
    /// The issuer's URL, for the audit records' `federated_iss`.
    pub issuer_url: String,
}

/// Why a call was refused: an HTTP status for the front end to answer
/// with, the OAuth error code and a description that names no secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The status the API answers with for the same refusal.
    pub status: u16,
    /// The error code (`access_denied`, `invalid_request`, ...).
    pub code: &'static str,
    /// What went wrong, for the operator.
    pub description: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.description)
    }
}

impl From<crate::error::OAuthError> for Refused {
    fn from(error: crate::error::OAuthError) -> Self {
        Self {
            status: error.status.as_u16(),
            code: error.code.as_str(),
            description: error.description,
        }
    }
}

/// A token this broker minted that is still live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveToken {
    /// Its `jti`.
    pub jti: String,
    /// The workload (`sub`).
    pub workload: String,
    /// The connector (`client_id`).
    pub client_id: String,
    /// The job.
    pub job: String,
    /// The workflow and the step.
    pub workflow: String,
    /// The step.
    pub step: String,
    /// Its scopes.
    pub scopes: Vec<String>,
    /// The target (`aud`).
    pub audience: String,
    /// Issued, seconds since the epoch.
    pub issued_at: i64,
    /// Expires, seconds since the epoch.
    pub expires_at: i64,
    /// The approval it was minted under, if elevated.
    pub approval: Option<String>,
}

impl From<&AccessTokenClaims> for LiveToken {
    fn from(claims: &AccessTokenClaims) -> Self {
        Self {
            jti: claims.jti.clone(),
            workload: claims.sub.clone(),
            client_id: claims.client_id.clone(),
            job: claims.job.clone(),
            workflow: claims.workflow.clone(),
            step: claims.step.clone(),
            scopes: claims.scopes().map(str::to_owned).collect(),
            audience: claims.aud.clone(),
            issued_at: claims.iat,
            expires_at: claims.exp,
            approval: claims.elev.clone(),
        }
    }
}

/// The live tokens, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveTokens {
    /// The tokens.
    pub tokens: Vec<LiveToken>,
    /// Mints not listed because the list was full.
    pub untracked: u64,
}

/// A target credential not yet destroyed, without anything secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveCredential {
    /// Its id at Stint.
    pub id: String,
    /// The target's name and kind.
    pub target: String,
    /// Its kind (`postgres`, `github`).
    pub kind: String,
    /// The upstream identifier (a PostgreSQL role).
    pub upstream_id: String,
    /// The step token it is bound to.
    pub jti: String,
    /// The workload.
    pub workload: String,
    /// The job.
    pub job: String,
    /// The step.
    pub step: String,
    /// Its privileges, as scopes.
    pub effective: Vec<String>,
    /// Where it is in its life (`live`, `revoking`, ...).
    pub state: String,
    /// It never outlives this, seconds since the epoch.
    pub expires_at: i64,
    /// The last revocation attempt's error, if one failed.
    pub last_error: Option<String>,
}

impl From<&TargetCredential> for LiveCredential {
    fn from(c: &TargetCredential) -> Self {
        Self {
            id: c.id.clone(),
            target: c.target.clone(),
            kind: c.kind.clone(),
            upstream_id: c.upstream_id.clone(),
            jti: c.jti.clone(),
            workload: c.sub.clone(),
            job: c.job.clone(),
            step: c.step.clone(),
            effective: c.effective.clone(),
            state: c.state.as_str().to_owned(),
            expires_at: c.expires_at,
            last_error: c.last_error.clone(),
        }
    }
}

/// Where the audit log is.
#[derive(Debug, Clone)]
pub enum AuditLocation {
    /// A file (`audit.jsonl` in the data directory; rotated files beside
    /// it).
    File {
        /// The file being written.
        path: std::path::PathBuf,
        /// How much of it is durable (read no further).
        durable: Option<Arc<crate::audit::DurableMark>>,
    },
    /// This broker's chain in the shared store.
    Store {
        /// The chain's id.
        chain: String,
    },
}

/// The operator-facing operations of one running broker.
#[derive(Clone)]
pub struct OperatorApi {
    state: Arc<AppState>,
    audit: AuditLocation,
}

impl std::fmt::Debug for OperatorApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorApi")
            .field("issuer", &self.state.issuer)
            .finish_non_exhaustive()
    }
}

impl OperatorApi {
    pub(crate) fn new(state: Arc<AppState>, audit: AuditLocation) -> Self {
        Self { state, audit }
    }

    /// The broker's clock.
    pub fn now(&self) -> DateTime<Utc> {
        self.state.clock.now()
    }

    /// The broker's issuer URL.
    pub fn issuer(&self) -> &str {
        &self.state.issuer
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.state.policy.load_full()
    }

    /// Check an ID token as the broker checks an operator's (signature
    /// with the issuer's published keys, `alg` from its list, times,
    /// `aud` among its `audiences`) and find the operator bound to it.
    /// `check` is the front end's own check of the claims (its `nonce`, its
    /// client in `aud`): its refusal is the sign-in's. The outcome is
    /// audited as `operator_signed_in`.
    pub async fn verify_id_token(
        &self,
        id_token: &str,
        origin: &Origin,
        check: impl FnOnce(&Value) -> Result<(), String>,
    ) -> Result<SignedIn, Refused> {
        let state = &self.state;
        let now = state.clock.now();
        let context = origin.context(None);
        let mut entry = state.audit_entry(
            now,
            EventKind::OperatorSignedIn,
            Decision::Deny,
            Some(&context),
        );
        let policy = state.policy.load();
        let verified =
            crate::http::exchange::verify_id_token(state, &policy, id_token, &mut entry).await;
        let found = verified.and_then(|(issuer, claims)| {
            let subject = claims
                .get("sub")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            let found = policy
                .operator_for_identity(issuer.name(), &subject)
                .ok_or_else(|| {
                    crate::error::OAuthError::new(
                        stint_proto::ErrorCode::AccessDenied,
                        stint_core::decision::DenyReason::NotOperator,
                        "no operator signs in with this identity",
                    )
                    .with_status(http::StatusCode::FORBIDDEN)
                })?;
            check(&claims).map_err(|why| {
                crate::error::OAuthError::new(
                    stint_proto::ErrorCode::AccessDenied,
                    stint_core::decision::DenyReason::NotOperator,
                    why,
                )
                .with_status(http::StatusCode::FORBIDDEN)
            })?;
            let age = i64::try_from(issuer.max_token_age().as_secs()).unwrap_or(i64::MAX);
            let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(0);
            Ok(SignedIn {
                operator: found.name().to_owned(),
                issuer: issuer.name().to_owned(),
                subject,
                claim_groups: crate::http::approvals::claim_groups(found, &claims),
                claim_groups_until: exp.min(now.timestamp().saturating_add(age)),
                issuer_url: issuer.url().to_owned(),
            })
        });
        verified_outcome(state, entry, found)
            .await
            .map_err(Refused::from)
    }

    /// The operator `signed` is under the policy in force: `None` once the
    /// policy no longer binds their identity to them. The groups their ID
    /// token named count until [`SignedIn::claim_groups_until`].
    pub fn operator(&self, signed: &SignedIn) -> Option<Operator> {
        let policy = self.state.policy.load();
        let claimed = self.now().timestamp() < signed.claim_groups_until;
        policy
            .operator_for_identity(&signed.issuer, &signed.subject)
            .filter(|o| o.name() == signed.operator)
            .map(|o| {
                // Only while the policy still reads groups from the token.
                let reads_claim = o.oidc().is_some_and(|oidc| oidc.groups_claim.is_some());
                let extra = if claimed && reads_claim {
                    signed.claim_groups.clone()
                } else {
                    Vec::new()
                };
                o.as_approver(extra)
            })
    }

    fn resolve(&self, signed: &SignedIn) -> Result<Operator, Refused> {
        self.operator(signed).ok_or_else(|| Refused {
            status: 401,
            code: "invalid_token",
            description: "this identity is no longer an operator's in the policy in force".into(),
        })
    }

    /// Every request kept, newest first (only the pending ones if asked).
    pub async fn approvals(&self, pending_only: bool) -> Vec<ApprovalView> {
        self.state.approvals.list(pending_only, self.now()).await
    }

    /// One request.
    pub async fn approval(&self, id: &str) -> Option<ApprovalView> {
        if crate::http::approvals::check_id(id).is_err() {
            return None;
        }
        self.state.approvals.show(id, self.now()).await
    }

    /// `operator` approves, denies or revokes request `id` (the API's
    /// `POST /v1/approvals/{id}/{approve,deny,revoke}`).
    pub async fn decide(
        &self,
        signed: &SignedIn,
        id: &str,
        asked: Asked,
        origin: &Origin,
    ) -> Result<ApprovalView, Refused> {
        let operator = self.resolve(signed)?;
        crate::http::approvals::decide_as(
            &self.state,
            &origin.context(Some(signed)),
            &operator,
            id,
            asked,
        )
        .await
        .map_err(Refused::from)
    }

    /// `operator` stops (`stop`) or enables workload `name` (the API's
    /// `POST /v1/workloads/{name}/{stop,enable}`).
    pub async fn set_workload(
        &self,
        signed: &SignedIn,
        name: &str,
        stop: bool,
        comment: Option<String>,
        origin: &Origin,
    ) -> Result<WorkloadState, Refused> {
        let operator = self.resolve(signed)?;
        crate::http::workloads::set_workload(
            &self.state,
            &origin.context(Some(signed)),
            &operator.name,
            name,
            comment,
            stop,
        )
        .await
        .map_err(Refused::from)
    }

    /// Whether an operator has stopped `workload`.
    pub fn is_stopped(&self, workload: &str) -> bool {
        self.state.is_stopped(workload)
    }

    /// `operator` revokes job `job` of `workload`: every token of it, and
    /// its approvals. Returns when it took effect (RFC 3339).
    pub async fn revoke_job(
        &self,
        signed: &SignedIn,
        workload: &str,
        job: &str,
        origin: &Origin,
    ) -> Result<String, Refused> {
        let operator = self.resolve(signed)?;
        crate::http::revoke::revoke_job_as_operator(
            &self.state,
            &origin.context(Some(signed)),
            &operator.name,
            workload,
            job,
        )
        .await
        .map(|r| r.revoked_at)
        .map_err(Refused::from)
    }

    /// `operator` revokes the live token `jti`.
    pub async fn revoke_token(
        &self,
        signed: &SignedIn,
        jti: &str,
        origin: &Origin,
    ) -> Result<(), Refused> {
        let operator = self.resolve(signed)?;
        crate::http::revoke::revoke_live_token(
            &self.state,
            &origin.context(Some(signed)),
            &operator.name,
            jti,
        )
        .await
        .map_err(Refused::from)
    }

    /// The live tokens minted here (not expired, not revoked), newest
    /// first; `None` if this broker does not keep them
    /// ([`crate::Config::live_tokens`]).
    pub fn live_tokens(&self) -> Option<LiveTokens> {
        let live = self.state.live.as_ref()?;
        let now = self.now();
        let mut tokens: Vec<LiveToken> = live
            .list(now.timestamp(), |c| {
                !self.state.revocations.is_revoked(c, now)
            })
            .iter()
            .map(|c| LiveToken::from(c.as_ref()))
            .collect();
        tokens.sort_by(|a, b| b.issued_at.cmp(&a.issued_at).then(a.jti.cmp(&b.jti)));
        Some(LiveTokens {
            tokens,
            untracked: live.untracked(),
        })
    }

    /// Target credentials not yet destroyed, soonest to expire first.
    pub async fn target_credentials(&self) -> Result<Vec<LiveCredential>, Refused> {
        let mut credentials: Vec<LiveCredential> = self
            .state
            .store
            .unfinished_target_credentials()
            .await
            .map_err(|error| {
                tracing::error!(%error, "target credentials not readable from the store");
                Refused::from(crate::error::OAuthError::unavailable(
                    "the target credentials could not be read",
                ))
            })?
            .iter()
            .map(LiveCredential::from)
            .collect();
        credentials.sort_by(|a, b| a.expires_at.cmp(&b.expires_at).then(a.id.cmp(&b.id)));
        Ok(credentials)
    }

    /// Where the audit log is.
    pub fn audit_location(&self) -> &AuditLocation {
        &self.audit
    }

    /// Up to `limit` records of this broker's chain in the shared store
    /// from position `from` (with [`AuditLocation::Store`]).
    pub async fn audit_records(&self, from: u64, limit: usize) -> Result<Vec<String>, Refused> {
        let AuditLocation::Store { chain } = &self.audit else {
            return Ok(Vec::new());
        };
        self.state
            .store
            .audit_records(chain, from, limit)
            .await
            .map_err(|error| {
                tracing::error!(%error, "audit records not readable from the store");
                Refused::from(crate::error::OAuthError::unavailable(
                    "the audit records could not be read",
                ))
            })
    }

    /// The broker's published keys (those that sign now and those
    /// retired lately), which sign the audit checkpoints.
    pub fn audit_keys(&self) -> stint_core::jose::KeySet {
        let mut keys = stint_core::jose::KeySet::new();
        match crate::keys::public_keys_from_jwks(&self.state.keys.jwks_json()) {
            Ok(published) => published.into_iter().for_each(|k| keys.insert(k)),
            Err(error) => tracing::error!(%error, "the published keys do not parse"),
        }
        keys
    }
}

/// Audit a sign-in's outcome; a refusal, or 503 if it cannot be recorded.
async fn verified_outcome(
    state: &AppState,
    mut entry: AuditEntry,
    outcome: Result<SignedIn, crate::error::OAuthError>,
) -> Result<SignedIn, crate::error::OAuthError> {
    match &outcome {
        Ok(signed) => {
            entry.decision = Decision::Allow;
            entry.operator = Some(signed.operator.clone());
        }
        Err(error) => {
            entry.reason = Some(error.reason.as_str().to_owned());
            entry.detail = Some(error.description.clone());
        }
    }
    state.record(entry).await?;
    outcome
}
