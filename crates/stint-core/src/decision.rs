//! The policy decision: a token request becomes a [`Grant`] or a [`Denial`].
//!
//! [`decide`] is the only constructor of a `Grant`, so a token can only be
//! signed for something the policy allowed. Every check fails closed: when in
//! doubt, the answer is a denial with a reason.

use crate::approval::{ApprovalRequest, Elevation, Requester};
use crate::form::FormParams;
use crate::ids::{validate_audience, validate_job_id};
use crate::policy::{Policy, StepLookup, Workload, validate_step_ref};
use crate::revocation::RevocationSet;
use crate::scope::{Scope, ScopeListError, covered, parse_scope_list};
use crate::ttl::Ttl;
use chrono::{DateTime, TimeDelta, Utc};
use std::fmt;
use stint_proto::ErrorCode;

/// Why a request was denied: a short, stable label for metrics and audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// The body could not be read as a form.
    MalformedRequest,
    /// The body was over the size limit.
    BodyTooLarge,
    /// The `grant_type` is missing or not supported.
    UnsupportedGrantType,
    /// Client authentication failed or was missing.
    InvalidClient,
    /// No `step`.
    MissingStep,
    /// A `step` that is not a well-formed step reference.
    MalformedStep,
    /// A `step` that is not in the workload's workflows.
    UnknownStep,
    /// A bare step name that several of the workload's workflows share.
    AmbiguousStep,
    /// A malformed `job`.
    MalformedJob,
    /// A malformed `ttl`.
    MalformedTtl,
    /// A malformed `audience` or `resource`, or both given and different.
    MalformedAudience,
    /// No audience and the step does not imply one.
    MissingAudience,
    /// An audience the step does not allow.
    AudienceNotAllowed,
    /// No scope, a malformed scope, or too many.
    MalformedScope,
    /// A scope not covered by the step's allowance.
    ScopeNotAllowed,
    /// The workflow is past its review date and review is enforced.
    ReviewOverdue,
    /// The job has been revoked (completed).
    JobRevoked,
    /// The token does not belong to the client asking to revoke it.
    NotTokensOwner,
    /// A credential that may not revoke this: a step token revokes only
    /// itself, while active, and from the certificate it is bound to;
    /// jobs and steps are revoked with the workload's own credential.
    NotRevocationAuthority,
    /// A verify-only workload (it serves audiences, runs no workflow)
    /// asked for a token.
    VerifyOnly,
    /// An administrative call by a workload without the admin capability.
    NotAdmin,
    /// A subject token from an issuer the policy does not trust.
    UntrustedIssuer,
    /// A subject token that is malformed, badly signed, expired, too old or
    /// for another audience.
    InvalidSubjectToken,
    /// A valid subject token that no workload is bound to (or several are).
    UnboundIdentity,
    /// A `job` parameter that contradicts the job the identity names.
    JobContradictsIdentity,
    /// Elevated scopes asked for, and no approval covers them yet: an
    /// approval request is pending.
    ApprovalPending,
    /// Polled faster than the approval request's interval.
    SlowDown,
    /// The approval request was denied or revoked, does not cover the
    /// request (another job, step, audience or scope), or the named
    /// `approval_id` was not made for this job's step.
    ApprovalDenied,
    /// The approval request expired or ended.
    ApprovalExpired,
    /// An approval call by someone who is not an operator.
    NotOperator,
    /// An operator's call the approval rules refuse (not an approver, an
    /// owner, already approved, no longer pending).
    ApprovalRule,
    /// A workload with too many approval requests open or kept.
    TooManyApprovalRequests,
    /// The workload was stopped by an operator (emergency stop).
    WorkloadStopped,
    /// The decision could not be recorded or made durable: refused.
    Unavailable,
    /// An internal failure (signing, randomness): refused.
    Internal,
    /// The client or its source sent more requests than its rate limit.
    RateLimited,
    /// A target-credential exchange whose subject token is not an active
    /// step token of this broker (unknown, expired, revoked, or bound to a
    /// certificate the connection does not present).
    InactiveSubjectToken,
    /// A target-credential exchange for a target the policy does not
    /// declare.
    UnknownTarget,
    /// A target-credential exchange for a target the step does not list.
    TargetNotAllowed,
    /// The target's planner refused the grant (it would widen it, or a
    /// scope does not fit the target's grammar).
    TargetPlanRefused,
    /// The step token was already exchanged for a credential on this
    /// target.
    AlreadyExchanged,
    /// The target could not be reached, or its admin credential read.
    TargetUnavailable,
    /// The target refused to make the credential (its own error).
    TargetRefused,
    /// The target's rate limit is in force (GitHub's 403 or 429): retry
    /// after the time it gave.
    TargetRateLimited,
}

impl DenyReason {
    /// The label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MalformedRequest => "malformed_request",
            Self::BodyTooLarge => "body_too_large",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidClient => "invalid_client",
            Self::MissingStep => "missing_step",
            Self::MalformedStep => "malformed_step",
            Self::UnknownStep => "unknown_step",
            Self::AmbiguousStep => "ambiguous_step",
            Self::MalformedJob => "malformed_job",
            Self::MalformedTtl => "malformed_ttl",
            Self::MalformedAudience => "malformed_audience",
            Self::MissingAudience => "missing_audience",
            Self::AudienceNotAllowed => "audience_not_allowed",
            Self::MalformedScope => "malformed_scope",
            Self::ScopeNotAllowed => "scope_not_allowed",
            Self::ReviewOverdue => "review_overdue",
            Self::JobRevoked => "job_revoked",
            Self::NotTokensOwner => "not_tokens_owner",
            Self::NotRevocationAuthority => "not_revocation_authority",
            Self::VerifyOnly => "verify_only",
            Self::NotAdmin => "not_admin",
            Self::UntrustedIssuer => "untrusted_issuer",
            Self::InvalidSubjectToken => "invalid_subject_token",
            Self::UnboundIdentity => "unbound_identity",
            Self::JobContradictsIdentity => "job_contradicts_identity",
            Self::ApprovalPending => "approval_pending",
            Self::SlowDown => "slow_down",
            Self::ApprovalDenied => "approval_denied",
            Self::ApprovalExpired => "approval_expired",
            Self::NotOperator => "not_operator",
            Self::ApprovalRule => "approval_rule",
            Self::TooManyApprovalRequests => "too_many_approval_requests",
            Self::WorkloadStopped => "workload_stopped",
            Self::Unavailable => "unavailable",
            Self::Internal => "internal_error",
            Self::RateLimited => "rate_limited",
            Self::InactiveSubjectToken => "inactive_subject_token",
            Self::UnknownTarget => "unknown_target",
            Self::TargetNotAllowed => "target_not_allowed",
            Self::TargetPlanRefused => "target_plan_refused",
            Self::AlreadyExchanged => "already_exchanged",
            Self::TargetUnavailable => "target_unavailable",
            Self::TargetRefused => "target_refused",
            Self::TargetRateLimited => "target_rate_limited",
        }
    }
}

impl fmt::Display for DenyReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused request: the OAuth error to answer with, the reason to record,
/// and a description safe to show the client (it names what the client
/// sent, never the policy's patterns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The OAuth error code.
    pub code: ErrorCode,
    /// The stable reason label.
    pub reason: DenyReason,
    /// The `error_description`.
    pub description: String,
}

impl Denial {
    /// A denial.
    pub fn new(code: ErrorCode, reason: DenyReason, description: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            description: description.into(),
        }
    }
}

/// The step-specific parameters of a token request, parsed but not yet
/// judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepRequest {
    /// `step` or `workflow/step`.
    pub step: String,
    /// The requested scopes, sorted, without duplicates.
    pub scopes: Vec<Scope>,
    /// The requested audience (`audience` or `resource`).
    pub audience: Option<String>,
    /// The job id, if the client gave one.
    pub job: Option<String>,
    /// The requested lifetime in seconds.
    pub ttl: Option<u64>,
}

impl StepRequest {
    /// Read `step`, `scope`, `audience`/`resource`, `job` and `ttl` from a
    /// token request.
    pub fn from_params(params: &FormParams) -> Result<Self, Denial> {
        use DenyReason as R;
        use ErrorCode as E;
        let step = params.get("step").ok_or_else(|| {
            Denial::new(
                E::InvalidRequest,
                R::MissingStep,
                "the step parameter is required",
            )
        })?;
        validate_step_ref(step).map_err(|e| {
            Denial::new(
                E::InvalidRequest,
                R::MalformedStep,
                format!("the step parameter is malformed: it {e}"),
            )
        })?;

        let scopes = parse_scope_list(params.get("scope").unwrap_or("")).map_err(|e| {
            let description = match e {
                ScopeListError::Empty => {
                    "the scope parameter is required: name each scope the step needs".to_owned()
                }
                other => other.to_string(),
            };
            Denial::new(E::InvalidScope, R::MalformedScope, description)
        })?;

        // RFC 8693 section 2.1 allows several `audience` and `resource`
        // values; a Stint token has exactly one audience, so they must all
        // name the same target, else the request is `invalid_target`
        // (section 2.2.2).
        let mut targets = params.all("audience").chain(params.all("resource"));
        let audience = match targets.next() {
            Some(first) => {
                if targets.any(|other| other != first) {
                    return Err(Denial::new(
                        E::InvalidTarget,
                        R::MalformedAudience,
                        "the audience and resource parameters name more than one target; a token has one audience",
                    ));
                }
                validate_audience(first).map_err(|e| {
                    Denial::new(
                        E::InvalidTarget,
                        R::MalformedAudience,
                        format!("the audience is malformed: it {e}"),
                    )
                })?;
                Some(first.to_owned())
            }
            None => None,
        };

        let job = match params.get("job") {
            Some(job) => {
                validate_job_id(job).map_err(|e| {
                    Denial::new(
                        E::InvalidRequest,
                        R::MalformedJob,
                        format!("the job parameter is malformed: it {e}"),
                    )
                })?;
                Some(job.to_owned())
            }
            None => None,
        };

        let ttl = match params.get("ttl") {
            Some(text) => Some(parse_ttl_param(text).ok_or_else(|| {
                Denial::new(
                    E::InvalidRequest,
                    R::MalformedTtl,
                    "the ttl parameter must be a whole number of seconds, at least 1",
                )
            })?),
            None => None,
        };

        Ok(Self {
            step: step.to_owned(),
            scopes,
            audience,
            job,
            ttl,
        })
    }
}

fn parse_ttl_param(text: &str) -> Option<u64> {
    if text.is_empty() || text.len() > 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|n| *n >= 1)
}

/// What the policy allowed: everything a token is made of except its
/// issuer and id. Only [`decide`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    workload: String,
    client_id: String,
    workflow: String,
    step: String,
    scopes: Vec<Scope>,
    audience: String,
    job: String,
    ttl: Ttl,
    issued_at: DateTime<Utc>,
    approval: Option<String>,
}

impl Grant {
    /// The approval the grant's elevated scopes were minted under (`elev`).
    pub fn approval(&self) -> Option<&str> {
        self.approval.as_deref()
    }
    /// The workload (`sub`).
    pub fn workload(&self) -> &str {
        &self.workload
    }
    /// The client (`client_id`).
    pub fn client_id(&self) -> &str {
        &self.client_id
    }
    /// The workflow.
    pub fn workflow(&self) -> &str {
        &self.workflow
    }
    /// The step.
    pub fn step(&self) -> &str {
        &self.step
    }
    /// The granted scopes.
    pub fn scopes(&self) -> &[Scope] {
        &self.scopes
    }
    /// The audience (`aud`).
    pub fn audience(&self) -> &str {
        &self.audience
    }
    /// The job.
    pub fn job(&self) -> &str {
        &self.job
    }
    /// The lifetime.
    pub fn ttl(&self) -> Ttl {
        self.ttl
    }
    /// When it was granted.
    pub fn issued_at(&self) -> DateTime<Utc> {
        self.issued_at
    }
    /// When a token for it expires.
    pub fn expires_at(&self) -> DateTime<Utc> {
        self.issued_at + TimeDelta::seconds(i64::from(self.ttl.as_secs()))
    }
}

/// What the policy says about a request it does not refuse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Within the step's standing grant: mint.
    Granted(Grant),
    /// Some scopes are covered only by the step's elevation: mint only
    /// under an approval that covers them ([`ElevationNeeded::grant_under`]).
    NeedsApproval(ElevationNeeded),
}

/// A request that needs an operator-approved elevation. It holds the grant
/// it would be, which only [`ElevationNeeded::grant_under`] releases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElevationNeeded {
    grant: Grant,
    elevated: Vec<Scope>,
    rules: Elevation,
}

impl ElevationNeeded {
    /// The scopes beyond the step's standing grant.
    pub fn elevated_scopes(&self) -> &[Scope] {
        &self.elevated
    }
    /// Who approves, how many, for how long.
    pub fn rules(&self) -> &Elevation {
        &self.rules
    }
    /// Who is asking, for what: the context an approval request records.
    pub fn requester(&self) -> Requester {
        Requester {
            workload: self.grant.workload.clone(),
            client_id: self.grant.client_id.clone(),
            job: self.grant.job.clone(),
            step: self.step_ref(),
            audience: self.grant.audience.clone(),
        }
    }
    /// `workflow/step`.
    pub fn step_ref(&self) -> String {
        format!("{}/{}", self.grant.workflow, self.grant.step)
    }
    /// The job.
    pub fn job(&self) -> &str {
        &self.grant.job
    }
    /// The grant, if `approval` covers it at the time of the decision: the
    /// same workload, client, job, step and audience, every elevated scope
    /// approved, inside the window. The lifetime is cut so that the token expires with the
    /// window.
    pub fn grant_under(self, approval: &ApprovalRequest) -> Result<Grant, Denial> {
        let now = self.grant.issued_at.timestamp();
        let refused = |why: &str| {
            Denial::new(
                ErrorCode::AccessDenied,
                DenyReason::ApprovalDenied,
                format!(
                    "approval {} does not cover this request: {why}",
                    approval.id
                ),
            )
        };
        let until = approval
            .covers(&self.requester(), &self.elevated, now)
            .ok_or_else(|| {
                refused(
                    "it is for another workload, job, step, audience or scopes, or its window is closed",
                )
            })?;
        let left = u64::try_from(until - now).unwrap_or(0);
        let ttl = Ttl::from_secs(left.min(u64::from(self.grant.ttl.as_secs())))
            .ok_or_else(|| refused("its window is closed"))?;
        Ok(Grant {
            ttl,
            approval: Some(approval.id.clone()),
            ..self.grant
        })
    }
}

/// Everything a decision depends on besides the request.
#[derive(Debug, Clone, Copy)]
pub struct DecisionContext<'a> {
    /// The policy in force.
    pub policy: &'a Policy,
    /// The revocations in force.
    pub revocations: &'a RevocationSet,
    /// The current time.
    pub now: DateTime<Utc>,
}

/// Decide a token request by an authenticated `workload`. `new_job` makes a
/// job id when the request has none.
pub fn decide(
    context: DecisionContext<'_>,
    workload: &Workload,
    request: &StepRequest,
    new_job: impl FnOnce() -> String,
) -> Result<Verdict, Denial> {
    use DenyReason as R;
    use ErrorCode as E;
    if workload.workflows().is_empty() {
        return Err(Denial::new(
            E::UnauthorizedClient,
            R::VerifyOnly,
            "this client runs no workflow (a verify-only or admin workload): it cannot get tokens",
        ));
    }
    let (workflow, step) = context
        .policy
        .resolve_step(workload, &request.step)
        .map_err(|lookup| match lookup {
            StepLookup::NotFound => Denial::new(
                E::InvalidRequest,
                R::UnknownStep,
                format!(
                    "step {:?} is not part of any workflow this client may run",
                    request.step
                ),
            ),
            StepLookup::Ambiguous => Denial::new(
                E::InvalidRequest,
                R::AmbiguousStep,
                format!(
                    "step {:?} is in several of this client's workflows; name it as workflow/step",
                    request.step
                ),
            ),
        })?;

    let overdue = workflow.is_overdue(context.now.date_naive());
    if overdue && context.policy.overdue_action() == crate::policy::OverdueAction::Deny {
        return Err(Denial::new(
            E::UnauthorizedClient,
            R::ReviewOverdue,
            format!(
                "workflow {:?} is past its review date and must be recertified before it can be used",
                workflow.name()
            ),
        ));
    }

    // Scopes beyond the standing grant must each be covered by the step's
    // elevation; they then need an approval.
    let elevated: Vec<Scope> = request
        .scopes
        .iter()
        .filter(|s| !covered(step.scopes(), s))
        .cloned()
        .collect();
    if overdue
        && !elevated.is_empty()
        && context.policy.overdue_action() == crate::policy::OverdueAction::DenyElevation
    {
        return Err(Denial::new(
            E::UnauthorizedClient,
            R::ReviewOverdue,
            format!(
                "workflow {:?} is past its review date: its standing scopes are still granted, elevation is refused until it is recertified",
                workflow.name()
            ),
        ));
    }
    let elevation = step.elevation();
    if let Some(refused) = elevated
        .iter()
        .find(|s| elevation.is_none_or(|e| !covered(e.scopes(), s)))
    {
        return Err(Denial::new(
            E::InvalidScope,
            R::ScopeNotAllowed,
            format!(
                "scope {:?} is not allowed for step {:?}",
                refused.as_str(),
                step.name()
            ),
        ));
    }

    // A step token never carries the audience of an OIDC target: systems
    // that trust Stint as an issuer would take it for a federation token,
    // past the step's `targets` and the federation token's own checks.
    if let Some(asked) = &request.audience
        && let Some(target) = context.policy.targets().find(|t| {
            matches!(t.kind(), crate::target::TargetKind::Oidc(oidc) if &oidc.audience == asked)
        })
    {
        return Err(Denial::new(
            E::InvalidTarget,
            R::AudienceNotAllowed,
            format!(
                "audience {asked:?} is the audience of oidc target {:?}: ask for a step token with audience={} and exchange it for a federation token",
                target.name(),
                target.name()
            ),
        ));
    }
    let audience = match (&request.audience, step.audiences()) {
        (Some(asked), allowed) if allowed.is_empty() || allowed.contains(asked) => asked.clone(),
        (Some(asked), _) => {
            return Err(Denial::new(
                E::InvalidTarget,
                R::AudienceNotAllowed,
                format!(
                    "audience {asked:?} is not allowed for step {:?}",
                    step.name()
                ),
            ));
        }
        (None, [only]) => only.clone(),
        (None, _) => {
            return Err(Denial::new(
                E::InvalidTarget,
                R::MissingAudience,
                "name the target system with the audience (or resource) parameter",
            ));
        }
    };

    let job = match &request.job {
        Some(job) => job.clone(),
        None => new_job(),
    };
    if context
        .revocations
        .is_job_revoked(workload.name(), &job, context.now)
    {
        return Err(Denial::new(
            E::InvalidGrant,
            R::JobRevoked,
            format!("job {job:?} has been revoked; a completed job cannot mint new tokens"),
        ));
    }

    let grant = Grant {
        workload: workload.name().to_owned(),
        client_id: workload.client_id().to_owned(),
        workflow: workflow.name().to_owned(),
        step: step.name().to_owned(),
        scopes: request.scopes.clone(),
        audience,
        job,
        ttl: Ttl::effective(request.ttl, step.default_ttl(), step.max_ttl()),
        issued_at: context.now,
        approval: None,
    };
    Ok(match elevation {
        Some(elevation) if !elevated.is_empty() => Verdict::NeedsApproval(ElevationNeeded {
            grant,
            elevated,
            rules: elevation.rules().clone(),
        }),
        _ => Verdict::Granted(grant),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::OverdueAction;
    use crate::revocation::JobRevocation;
    use crate::scope::ScopePattern;
    use proptest::prelude::*;

    const HASH: &str = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    fn policy(enforce_review: bool, review_by: &str) -> Policy {
        Policy::parse(
            "p.toml",
            &format!(
                r#"
enforce_review = {enforce_review}
[workloads.w]
secret_sha256 = "{HASH}"
workflows = ["demo"]
[workflows.demo]
review_by = {review_by}
[workflows.demo.steps.read]
scopes = ["read:demo/**", "read:github/acme/*"]
default_ttl = "5m"
max_ttl = "15m"
[workflows.demo.steps.deploy]
scopes = ["deploy:k8s/staging/web"]
audiences = ["https://k8s.example"]
"#
            ),
        )
        .unwrap()
    }

    /// A deploy step with a standing scope and an elevation, `top` at the
    /// top of the file.
    fn elevation_policy(top: &str, review_by: &str) -> String {
        format!(
            r#"
{top}
[workloads.w]
secret_sha256 = "{HASH}"
workflows = ["demo"]
[workflows.demo]
review_by = {review_by}
[workflows.demo.steps.deploy]
scopes = ["deploy:k8s/staging/web"]
audiences = ["https://k8s.example"]
[workflows.demo.steps.deploy.elevation]
scopes = ["deploy:k8s/prod/*"]
approver_groups = ["sre"]
max_duration = "10m"
max_wait = "5m"
[operators.alice]
groups = ["sre"]
key_sha256 = "{HASH}"
"#
        )
    }

    fn now() -> DateTime<Utc> {
        DateTime::from_timestamp(1_795_000_000, 0).unwrap() // 2026-11-18
    }

    fn request(body: &str) -> Result<StepRequest, Denial> {
        StepRequest::from_params(&FormParams::parse(body.as_bytes()).unwrap())
    }

    fn granted(verdict: Verdict) -> Grant {
        match verdict {
            Verdict::Granted(grant) => grant,
            Verdict::NeedsApproval(needed) => panic!("unexpected elevation: {needed:?}"),
        }
    }

    fn run(policy: &Policy, body: &str) -> Result<Grant, Denial> {
        let revocations = RevocationSet::new();
        let workload = policy.workload("w").unwrap();
        let request = request(body)?;
        decide(
            DecisionContext {
                policy,
                revocations: &revocations,
                now: now(),
            },
            workload,
            &request,
            || "job-new".into(),
        )
        .map(granted)
    }

    #[test]
    fn grants_exactly_what_was_asked_within_the_allowance() {
        let p = policy(false, "2027-01-01");
        let grant = run(
            &p,
            "step=read&scope=read:github/acme/web+read:demo/a/b&audience=api&job=j1&ttl=60",
        )
        .unwrap();
        assert_eq!(grant.workload(), "w");
        assert_eq!(grant.client_id(), "w");
        assert_eq!(grant.workflow(), "demo");
        assert_eq!(grant.step(), "read");
        assert_eq!(
            grant.scopes().iter().map(Scope::as_str).collect::<Vec<_>>(),
            ["read:demo/a/b", "read:github/acme/web"]
        );
        assert_eq!(grant.audience(), "api");
        assert_eq!(grant.job(), "j1");
        assert_eq!(grant.ttl().as_secs(), 60);
        assert_eq!((grant.expires_at() - grant.issued_at()).num_seconds(), 60);
    }

    #[test]
    fn defaults_and_caps() {
        let p = policy(false, "2027-01-01");
        let grant = run(&p, "step=read&scope=read:demo/x&audience=api").unwrap();
        assert_eq!(grant.ttl().as_secs(), 300);
        assert_eq!(grant.job(), "job-new");
        let grant = run(&p, "step=read&scope=read:demo/x&audience=api&ttl=999999").unwrap();
        assert_eq!(grant.ttl().as_secs(), 900);
        let grant = run(&p, "step=deploy&scope=deploy:k8s/staging/web").unwrap();
        assert_eq!(grant.audience(), "https://k8s.example");
        let grant = run(
            &p,
            "step=demo/deploy&scope=deploy:k8s/staging/web&resource=https://k8s.example",
        )
        .unwrap();
        assert_eq!(grant.audience(), "https://k8s.example");
        // Repeated, all naming the one target (RFC 8693 section 2.1).
        let grant = run(
            &p,
            "step=read&scope=read:demo/x&audience=api&resource=api&audience=api",
        )
        .unwrap();
        assert_eq!(grant.audience(), "api");
    }

    fn denied(p: &Policy, body: &str) -> (ErrorCode, DenyReason, String) {
        let d = run(p, body).unwrap_err();
        (d.code, d.reason, d.description)
    }

    #[test]
    fn denials_carry_the_right_code_and_reason() {
        use DenyReason as R;
        use ErrorCode as E;
        let p = policy(false, "2027-01-01");
        let cases = [
            ("scope=read:demo/x", E::InvalidRequest, R::MissingStep),
            (
                "step=nope&scope=read:demo/x",
                E::InvalidRequest,
                R::UnknownStep,
            ),
            (
                "step=a/b/c&scope=read:demo/x",
                E::InvalidRequest,
                R::MalformedStep,
            ),
            (
                "step=other/read&scope=read:demo/x",
                E::InvalidRequest,
                R::UnknownStep,
            ),
            ("step=read", E::InvalidScope, R::MalformedScope),
            (
                "step=read&scope=read:demo/*",
                E::InvalidScope,
                R::MalformedScope,
            ),
            (
                "step=read&scope=read:demo",
                E::InvalidScope,
                R::ScopeNotAllowed,
            ),
            (
                "step=read&scope=write:demo/x&audience=a",
                E::InvalidScope,
                R::ScopeNotAllowed,
            ),
            (
                "step=read&scope=read:demo/x",
                E::InvalidTarget,
                R::MissingAudience,
            ),
            (
                "step=read&scope=read:demo/x&audience=a&resource=b",
                E::InvalidTarget,
                R::MalformedAudience,
            ),
            (
                "step=read&scope=read:demo/x&audience=a&audience=b",
                E::InvalidTarget,
                R::MalformedAudience,
            ),
            (
                "step=read&scope=read:demo/x&resource=a&audience=a&resource=b",
                E::InvalidTarget,
                R::MalformedAudience,
            ),
            (
                "step=deploy&scope=deploy:k8s/staging/web&audience=other",
                E::InvalidTarget,
                R::AudienceNotAllowed,
            ),
            (
                "step=read&scope=read:demo/x&audience=a&ttl=0",
                E::InvalidRequest,
                R::MalformedTtl,
            ),
            (
                "step=read&scope=read:demo/x&audience=a&ttl=5m",
                E::InvalidRequest,
                R::MalformedTtl,
            ),
            (
                "step=read&scope=read:demo/x&audience=a&ttl=-5",
                E::InvalidRequest,
                R::MalformedTtl,
            ),
            (
                "step=read&scope=read:demo/x&audience=a&job=a/b",
                E::InvalidRequest,
                R::MalformedJob,
            ),
        ];
        for (body, code, reason) in cases {
            let (got_code, got_reason, _) = denied(&p, body);
            assert_eq!((got_code, got_reason), (code, reason), "{body}");
        }
    }

    #[test]
    fn invalid_scope_names_the_refused_scope_and_no_policy_internals() {
        let p = policy(false, "2027-01-01");
        let (_, _, description) =
            denied(&p, "step=read&scope=read:demo/ok+write:prod/db&audience=a");
        assert!(description.contains("write:prod/db"), "{description}");
        assert!(!description.contains("read:demo/**"), "{description}");
        assert!(!description.contains("github"), "{description}");
    }

    #[test]
    fn review_is_reported_or_enforced() {
        let lax = policy(false, "2020-01-01");
        assert!(run(&lax, "step=read&scope=read:demo/x&audience=a").is_ok());
        let strict = policy(true, "2020-01-01");
        let (code, reason, _) = denied(&strict, "step=read&scope=read:demo/x&audience=a");
        assert_eq!(
            (code, reason),
            (ErrorCode::UnauthorizedClient, DenyReason::ReviewOverdue)
        );
        // The review date itself is still fine; the day after is not.
        let today = now().date_naive().format("%Y-%m-%d").to_string();
        assert!(
            run(
                &policy(true, &today),
                "step=read&scope=read:demo/x&audience=a"
            )
            .is_ok()
        );
    }

    #[test]
    fn an_overdue_workflow_is_refused_or_only_its_elevation_or_warned_as_the_policy_says() {
        let with =
            |overdue: &str| Policy::parse("p.toml", &elevation_policy(overdue, "2020-01-01"));
        let ask = |p: &Policy, body: &str| {
            let revocations = RevocationSet::new();
            let ctx = DecisionContext {
                policy: p,
                revocations: &revocations,
                now: now(),
            };
            decide(
                ctx,
                p.workload("w").unwrap(),
                &request(body).unwrap(),
                || "j".into(),
            )
            .map(|verdict| matches!(verdict, Verdict::Granted(_)))
            .map_err(|denial| denial.reason)
        };
        let standing = "step=deploy&scope=deploy:k8s/staging/web";
        let elevated = "step=deploy&scope=deploy:k8s/staging/web deploy:k8s/prod/web&job=j1";
        for (setting, action, standing_is, elevated_is) in [
            ("", OverdueAction::Warn, Ok(true), Ok(false)),
            (
                r#"overdue = "warn""#,
                OverdueAction::Warn,
                Ok(true),
                Ok(false),
            ),
            (
                r#"overdue = "deny""#,
                OverdueAction::Deny,
                Err(DenyReason::ReviewOverdue),
                Err(DenyReason::ReviewOverdue),
            ),
            (
                "enforce_review = true",
                OverdueAction::Deny,
                Err(DenyReason::ReviewOverdue),
                Err(DenyReason::ReviewOverdue),
            ),
            (
                r#"overdue = "deny_elevation""#,
                OverdueAction::DenyElevation,
                Ok(true),
                Err(DenyReason::ReviewOverdue),
            ),
        ] {
            let p = with(setting).unwrap();
            assert_eq!(p.overdue_action(), action, "{setting}");
            assert_eq!(ask(&p, standing), standing_is, "{setting}: standing");
            // Ok(false): sent for approval.
            assert_eq!(ask(&p, elevated), elevated_is, "{setting}: elevated");
        }
        for bad in [
            r#"overdue = "sometimes""#,
            "enforce_review = true\noverdue = \"warn\"",
        ] {
            assert!(with(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_revoked_job_cannot_mint() {
        let p = policy(false, "2027-01-01");
        let revocations = RevocationSet::new();
        revocations.insert_job(&JobRevocation::new("w", "done", now()));
        let workload = p.workload("w").unwrap();
        let ctx = DecisionContext {
            policy: &p,
            revocations: &revocations,
            now: now(),
        };
        let req = request("step=read&scope=read:demo/x&audience=a&job=done").unwrap();
        assert_eq!(
            decide(ctx, workload, &req, String::new).unwrap_err().reason,
            DenyReason::JobRevoked
        );
        let req = request("step=read&scope=read:demo/x&audience=a&job=fresh").unwrap();
        assert!(decide(ctx, workload, &req, String::new).is_ok());
    }

    #[test]
    fn scopes_beyond_the_standing_grant_need_an_approval_that_covers_them() {
        use crate::approval::{ApprovalRequest, Operator};
        let p = Policy::parse("p.toml", &elevation_policy("", "2027-01-01")).unwrap();
        let revocations = RevocationSet::new();
        let workload = p.workload("w").unwrap();
        let ask_at = |at: DateTime<Utc>, body: &str| {
            let ctx = DecisionContext {
                policy: &p,
                revocations: &revocations,
                now: at,
            };
            decide(ctx, workload, &request(body).unwrap(), || "j".into())
        };
        let ask = |body: &str| ask_at(now(), body);

        // Standing scopes alone: granted as before.
        assert!(matches!(
            ask("step=deploy&scope=deploy:k8s/staging/web"),
            Ok(Verdict::Granted(_))
        ));
        // Neither standing nor elevation: refused outright.
        assert_eq!(
            ask("step=deploy&scope=deploy:k8s/dev/web")
                .unwrap_err()
                .reason,
            DenyReason::ScopeNotAllowed
        );
        // Elevated: only the extra scope needs approving.
        let Ok(Verdict::NeedsApproval(needed)) =
            ask("step=deploy&scope=deploy:k8s/staging/web deploy:k8s/prod/web&job=j1&ttl=900")
        else {
            panic!("expected an elevation");
        };
        assert_eq!(needed.elevated_scopes().len(), 1);
        assert_eq!(needed.step_ref(), "demo/deploy");
        let mut approval = ApprovalRequest::new(
            "apr-x".into(),
            needed.requester(),
            needed.elevated_scopes().to_vec(),
            None,
            Some(120),
            needed.rules().clone(),
            now().timestamp(),
        )
        .unwrap();
        assert_eq!(
            needed.clone().grant_under(&approval).unwrap_err().reason,
            DenyReason::ApprovalDenied,
            "pending covers nothing"
        );
        let alice = Operator {
            name: "alice".into(),
            groups: ["sre".to_owned()].into(),
            owns: Default::default(),
        };
        approval
            .approve(&alice, None, None, now().timestamp())
            .unwrap();
        let elevated =
            "step=deploy&scope=deploy:k8s/staging/web deploy:k8s/prod/web&job=j1&ttl=900";
        let at = |secs: i64| match ask_at(now() + TimeDelta::seconds(secs), elevated) {
            Ok(Verdict::NeedsApproval(needed)) => needed,
            other => panic!("expected an elevation, got {other:?}"),
        };
        let grant = at(30).grant_under(&approval).unwrap();
        assert_eq!(grant.approval(), Some("apr-x"));
        assert_eq!(
            grant.scopes().len(),
            2,
            "standing and elevated scopes together"
        );
        assert_eq!(
            grant.expires_at(),
            now() + TimeDelta::seconds(120),
            "the token expires with the approval's window, not after its 900 s ttl"
        );
        assert!(
            at(120).grant_under(&approval).is_err(),
            "the window is closed"
        );
        let other_job = match ask("step=deploy&scope=deploy:k8s/prod/web&job=j2") {
            Ok(Verdict::NeedsApproval(needed)) => needed,
            other => panic!("expected an elevation, got {other:?}"),
        };
        assert!(other_job.grant_under(&approval).is_err(), "another job");
    }

    // --- Property: a grant never exceeds its step's allowance or TTL. ----

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof!["a", "b", "web", "api"].prop_map(String::from)
    }

    fn pattern_strategy() -> impl Strategy<Value = String> {
        (
            prop_oneof!["read", "write"],
            segment(),
            prop::collection::vec(prop_oneof![segment(), Just("*".to_string())], 0..3),
            any::<bool>(),
        )
            .prop_map(|(action, first, rest, tail)| {
                let mut segs = vec![first];
                segs.extend(rest);
                if tail {
                    segs.push("**".into());
                }
                format!("{action}:{}", segs.join("/"))
            })
    }

    fn scope_strategy() -> impl Strategy<Value = String> {
        (
            prop_oneof!["read", "write"],
            prop::collection::vec(segment(), 1..5),
        )
            .prop_map(|(action, segs)| format!("{action}:{}", segs.join("/")))
    }

    proptest! {
        #[test]
        fn a_grant_never_exceeds_the_allowance(
            patterns in prop::collection::btree_set(pattern_strategy(), 1..6),
            asked in prop::collection::vec(scope_strategy(), 1..8),
            ttl in proptest::option::of(1u64..100_000),
            max_minutes in 1u32..=60,
        ) {
            let patterns: Vec<String> = patterns.into_iter().collect();
            let text = format!(
                "[workloads.w]\nsecret_sha256 = \"{HASH}\"\nworkflows = [\"f\"]\n[workflows.f]\nreview_by = 2030-01-01\n[workflows.f.steps.s]\nscopes = {patterns:?}\ndefault_ttl = \"1m\"\nmax_ttl = \"{max_minutes}m\"\n"
            );
            let policy = Policy::parse("p.toml", &text).unwrap();
            let allowance: Vec<ScopePattern> =
                patterns.iter().map(|p| ScopePattern::parse(p).unwrap()).collect();
            let mut body = format!("step=s&audience=a&scope={}", asked.join("+"));
            if let Some(ttl) = ttl {
                body.push_str(&format!("&ttl={ttl}"));
            }
            let every_scope_allowed = asked
                .iter()
                .all(|s| allowance.iter().any(|p| p.matches(&Scope::parse(s).unwrap())));
            match run_with(&policy, &body) {
                Ok(grant) => {
                    prop_assert!(every_scope_allowed);
                    for scope in grant.scopes() {
                        prop_assert!(asked.contains(&scope.as_str().to_owned()), "grant added {}", scope);
                        prop_assert!(allowance.iter().any(|p| p.matches(scope)), "{} exceeds the allowance", scope);
                    }
                    prop_assert!(grant.ttl().as_secs() <= max_minutes * 60);
                    prop_assert!(grant.expires_at() > grant.issued_at());
                }
                Err(denial) => {
                    prop_assert!(!every_scope_allowed, "denied an allowed request: {:?}", denial);
                    prop_assert_eq!(denial.reason, DenyReason::ScopeNotAllowed);
                }
            }
        }
    }

    fn run_with(policy: &Policy, body: &str) -> Result<Grant, Denial> {
        let revocations = RevocationSet::new();
        let request = request(body)?;
        decide(
            DecisionContext {
                policy,
                revocations: &revocations,
                now: now(),
            },
            policy.workload("w").unwrap(),
            &request,
            || "j".into(),
        )
        .map(granted)
    }
}
