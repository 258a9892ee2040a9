//! The broker's shared state and the operations handlers build on.

use crate::audit::{AuditLog, timestamp};
use crate::config::PolicySource;
use crate::error::OAuthError;
use crate::http::RequestContext;
use crate::keys::KeyRing;
use crate::metrics::Metrics;
use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use ring::rand::SystemRandom;
use std::sync::Arc;
use stint_core::Clock;
use stint_core::access_token::{Expectations, TokenError};
use stint_core::audit::{AuditEntry, Decision, EventKind};
use stint_core::claims::AccessTokenClaims;
use stint_core::decision::DenyReason;
use stint_core::jose::MAX_TOKEN_LEN;
use stint_core::policy::{MAX_POLICY_LEN, Policy, PolicyError, PolicyErrors};
use stint_core::revocation::{
    JobRevocation, RevocationSet, StepRevocation, TokenRevocation, WorkloadStop,
};
use stint_core::status_list::StatusReference;
use stint_core::target_credential::Cause;
use stint_proto::RevocationEvent;
use stint_store::{AuditedWrite, Change, Store};

/// The audit reason of a revocation that was recorded but could not be
/// stored, and so never took effect.
const NOT_DURABLE: &str = "not_durable";

/// How long a revocation's caller waits for the change feed to apply it
/// here (and so announce it on the feed) before being answered anyway.
pub(crate) const APPLY_BOUND: std::time::Duration = std::time::Duration::from_secs(2);

pub(crate) struct AppState {
    pub(crate) issuer: String,
    /// This broker process's id (its audit chain's, with a shared store):
    /// the owner of the target credentials it makes.
    pub(crate) instance: String,
    pub(crate) policy: ArcSwap<Policy>,
    pub(crate) policy_source: PolicySource,
    pub(crate) keys: KeyRing,
    pub(crate) revocations: RevocationSet,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) audit: AuditLog,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) rng: SystemRandom,
    pub(crate) metadata: crate::Discovery,
    /// Permits for requests in flight (`Limits::max_in_flight`).
    pub(crate) in_flight: Arc<tokio::sync::Semaphore>,
    /// Keys of the trusted OIDC issuers.
    pub(crate) issuer_keys: crate::federation::IssuerKeys,
    /// `Limits::body_timeout`.
    pub(crate) body_timeout: std::time::Duration,
    /// Elevation requests and approvals.
    pub(crate) approvals: crate::approvals::Approvals,
    /// The revocation feed.
    pub(crate) feed: crate::feed::Feed,
    /// Token Status Lists.
    pub(crate) status_lists: crate::status::StatusLists,
    /// Workloads an operator stopped: they mint nothing until enabled.
    pub(crate) stopped: std::sync::RwLock<std::collections::HashSet<String>>,
    /// Open feed streams, at most `--feed-max-streams`: the rest of the
    /// connection cap stays for minting.
    pub(crate) feed_slots: Arc<tokio::sync::Semaphore>,
    /// The last revocation snapshot built, reused while nothing new is
    /// published.
    pub(crate) snapshot_cache: tokio::sync::Mutex<Option<crate::http::feed::CachedSnapshot>>,
    /// Open feed streams by client, each at most `per_client`.
    pub(crate) feed_clients: Arc<crate::feed::ClientStreams>,
    /// How often a quiet feed stream sends a keep-alive.
    pub(crate) feed_keepalive: std::time::Duration,
    /// Becomes `true` when the broker shuts down: feed streams end.
    pub(crate) closing: tokio::sync::watch::Receiver<bool>,
    /// Counts policy installs: open feed streams check their reader again.
    pub(crate) policy_installed: tokio::sync::watch::Sender<u64>,
    /// Revocations by job, step and workload being carried out (audited,
    /// stored): the token endpoint signs nothing they will cover.
    pub(crate) pending: std::sync::Mutex<Vec<Pending>>,
    /// Per-client and per-source limits, and the refusal aggregator.
    pub(crate) limits: crate::limits::RequestLimits,
    /// Native credentials made on targets, and their revocation queue.
    pub(crate) targets: Arc<stint_targets::queue::TargetCredentials>,
    /// The keys that sign federation tokens (none: OIDC targets refuse).
    pub(crate) federation_keys: crate::federation_token::FederationKeys,
    /// Whether the store answered its checks within the fail-closed bound
    /// ([`crate::store_health`]): while not, nothing is minted, no token is
    /// active at introspection and the feed's streams end.
    pub(crate) store_reachable: tokio::sync::watch::Sender<bool>,
    /// Where this broker stands in the store's change feed.
    pub(crate) changes: crate::changes::Changes,
    /// The live tokens minted here, if kept ([`crate::Config::live_tokens`]).
    pub(crate) live: Option<crate::live::LiveTokens>,
}

/// What a presented token turned out to be.
#[derive(Debug)]
pub(crate) enum TokenState {
    /// Ours, valid, not revoked.
    Active(AccessTokenClaims),
    /// Ours, but past its `exp`.
    Expired,
    /// Ours, but revoked.
    Revoked(AccessTokenClaims),
    /// Not ours, not yet valid, or not an access token.
    Unknown,
}

/// A revocation by job, step or workload that has begun: from then on no
/// token it will cover is signed, so that none minted while it is being
/// audited and stored escapes it (its time is taken after the hold).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Pending {
    Job {
        sub: String,
        job: String,
    },
    Step {
        sub: String,
        job: String,
        step: String,
    },
    Workload {
        sub: String,
    },
}

impl Pending {
    fn covers(&self, claims: &AccessTokenClaims) -> bool {
        match self {
            Self::Job { sub, job } => *sub == claims.sub && *job == claims.job,
            Self::Step { sub, job, step } => {
                *sub == claims.sub && *job == claims.job && *step == claims.step
            }
            Self::Workload { sub } => *sub == claims.sub,
        }
    }
}

/// Holds a [`Pending`] revocation until dropped.
pub(crate) struct PendingHold<'a> {
    state: &'a AppState,
    pending: Pending,
}

impl Drop for PendingHold<'_> {
    fn drop(&mut self) {
        let mut pending = self.state.pending.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(at) = pending.iter().position(|p| *p == self.pending) {
            pending.swap_remove(at);
        }
    }
}

/// A revocation taking effect (made durable by [`AppState::revoke`], each
/// kind in its own store call, and applied from the change feed).
pub(crate) enum Revocation<'a> {
    /// One token, by `jti`, with its status list entry if it has one.
    Token(&'a TokenRevocation, Option<&'a StatusReference>),
    Job(&'a JobRevocation),
    Step(&'a StepRevocation),
    /// Every token minted under an approval, until the latest can expire.
    Approval {
        id: &'a str,
        until: i64,
    },
    /// A workload's emergency stop.
    Workload(&'a WorkloadStop),
}

impl AppState {
    /// Whether the store answered within the fail-closed bound.
    pub(crate) fn store_reachable(&self) -> bool {
        *self.store_reachable.borrow()
    }

    /// Hold `pending` until the guard drops: the token endpoint refuses to
    /// sign a token it covers. Take the revocation's time after this.
    pub(crate) fn hold(&self, pending: Pending) -> PendingHold<'_> {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(pending.clone());
        PendingHold {
            state: self,
            pending,
        }
    }

    /// Whether a revocation that has begun will cover a token with
    /// `claims` (see [`Self::hold`]).
    pub(crate) fn is_pending(&self, claims: &AccessTokenClaims) -> bool {
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        !pending.is_empty() && pending.iter().any(|p| p.covers(claims))
    }

    /// Carry out a revocation the caller has authorized, so that it is
    /// durable, audited and announced, or none of those:
    ///
    /// 1. With the audit log in the store (PostgreSQL), `entry` (the
    ///    allowed event) and the revocation commit in one transaction. If
    ///    they cannot, neither happened: 503, nothing in force.
    /// 2. With the audit log in a file, `entry` is written first. If it
    ///    cannot be, nothing happened (503). Then the revocation is stored;
    ///    if it cannot be, a second record (`denied`, reason `not_durable`,
    ///    the same request id) says the revocation recorded just before did
    ///    not take effect, and the caller gets 503: nothing is in force or
    ///    announced, and a retry starts again.
    /// 3. It is put in this broker's revocation set, then handed to the
    ///    change feed, which puts it in force on every broker sharing the
    ///    store and announces it on their feeds ([`Self::enforce`]); the
    ///    caller's answer waits for this broker's (within a bound: the
    ///    revocation is durable and in the set here either way).
    ///
    /// So a verifier never learns of a revocation that the broker forgets
    /// at its next start, and the audit log never lacks one that is in
    /// force.
    pub(crate) async fn revoke(
        &self,
        entry: AuditEntry,
        denied: EventKind,
        revocation: Revocation<'_>,
    ) -> Result<(), OAuthError> {
        let write = match &revocation {
            Revocation::Token(revoked, status) => {
                AuditedWrite::Token((*revoked).clone(), status.cloned())
            }
            Revocation::Job(job) => AuditedWrite::Job((*job).clone()),
            Revocation::Step(step) => AuditedWrite::Step((*step).clone()),
            Revocation::Workload(stop) => AuditedWrite::WorkloadStopped((*stop).clone()),
            // Stored with its request's state by the approvals module, in
            // the same order (see `Approvals::act`).
            Revocation::Approval { .. } => return self.record(entry).await,
        };
        let seq = if self.audit.writes_changes() {
            self.record_with(entry, write.clone()).await?
        } else {
            self.record(entry.clone()).await?;
            match self.store.store_write(&write).await {
                Ok(seq) => Some(seq),
                Err(error) => {
                    tracing::error!(%error, "revocation not durable; it is not in force");
                    self.record_not_durable(entry, denied).await;
                    return Err(OAuthError::unavailable(
                        "the revocation could not be made durable, so it is not in force",
                    ));
                }
            }
        };
        // In force here at once, whatever the change feed does next.
        match &revocation {
            Revocation::Token(revoked, _) => self.revocations.insert_token(revoked),
            Revocation::Job(job) => self.revocations.insert_job(job),
            Revocation::Step(step) => self.revocations.insert_step(step),
            Revocation::Workload(stop) => {
                self.revocations.insert_workload(stop);
                self.stopped
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(stop.workload.clone());
            }
            Revocation::Approval { .. } => {}
        }
        self.announce(seq, write.change()).await;
        Ok(())
    }

    /// Record `entry` and commit `write` with it (see
    /// [`AuditLog::record_with`]); an audit failure is a 503 and nothing
    /// was written.
    pub(crate) async fn record_with(
        &self,
        entry: AuditEntry,
        write: AuditedWrite,
    ) -> Result<Option<u64>, OAuthError> {
        self.audit.record_with(entry, write).await.map_err(|error| {
            tracing::error!(%error, "audit record and change not written; refusing the request");
            OAuthError::unavailable("the change and its audit record could not be made durable")
        })
    }

    /// Have the committed change `seq` applied here and wait for it (within
    /// [`APPLY_BOUND`]). `None`: an earlier attempt committed it at a
    /// position not known here; the applier finds it in the store.
    pub(crate) async fn announce(&self, seq: Option<u64>, change: Change) -> bool {
        let Some(seq) = seq else {
            tracing::info!(
                "a change committed by an attempt whose answer was lost: the change feed applies it"
            );
            self.changes.wake_up();
            return false;
        };
        let applied = self.changes.committed(seq, change, APPLY_BOUND).await;
        if !applied {
            tracing::warn!(
                seq,
                "a durable change is in force here but not yet announced: the change feed is behind (the store is slow or unreachable)"
            );
        }
        applied
    }

    /// Record that the revocation `entry` recorded could not be stored, and
    /// so is not in force (best effort: the log may be failing too).
    pub(crate) async fn record_not_durable(&self, mut entry: AuditEntry, denied: EventKind) {
        entry.event = denied;
        entry.decision = Decision::Deny;
        entry.reason = Some(NOT_DURABLE.to_owned());
        entry.detail = Some(
            "the revocation recorded just before with this request id could not be stored: it is not in force"
                .to_owned(),
        );
        if let Err(error) = self.audit.record(entry).await {
            tracing::error!(%error, "could not record that a revocation did not take effect");
        }
    }

    /// Put revocation `seq` of the change feed in force here, in this
    /// order: the revocation set (introspection, minting), the status
    /// lists, the feed. The set comes first so that a mint racing a
    /// revocation sees one side or the other (see the token handler); the
    /// feed comes with it, so that whatever the broker enforces its
    /// subscribers learn. Called by the change feed's applier
    /// ([`crate::changes`]), once per change, in sequence order.
    pub(crate) fn enforce(&self, seq: u64, revocation: Revocation<'_>) {
        // Target credentials are queued after the set has the revocation:
        // a credential being made either is seen here, or its mint sees the
        // revocation in the set once it is made (and destroys it).
        let cause = match &revocation {
            Revocation::Token(revoked, _) => Cause::Token(revoked),
            Revocation::Job(job) => Cause::Job(job),
            Revocation::Step(step) => Cause::Step(step),
            Revocation::Approval { id, .. } => Cause::Approval(id),
            Revocation::Workload(stop) => Cause::Workload(stop),
        };
        let published = match revocation {
            Revocation::Token(revoked, status) => {
                self.revocations.insert_token(revoked);
                if let Some(status) = status {
                    self.status_lists.revoke_reference(status);
                }
                RevocationEvent {
                    jti: Some(revoked.jti.clone()),
                    ..RevocationEvent::new("token", revoked.expires_at)
                }
            }
            Revocation::Job(job) => {
                self.revocations.insert_job(job);
                self.status_lists.revoke_job(&job.sub, &job.job);
                RevocationEvent {
                    sub: Some(job.sub.clone()),
                    job: Some(job.job.clone()),
                    ..RevocationEvent::new("job", job.until)
                }
            }
            Revocation::Step(step) => {
                self.revocations.insert_step(step);
                self.status_lists
                    .revoke_step(&step.sub, &step.job, &step.step);
                RevocationEvent {
                    sub: Some(step.sub.clone()),
                    job: Some(step.job.clone()),
                    step: Some(step.step.clone()),
                    ..RevocationEvent::new("step", step.until)
                }
            }
            Revocation::Approval { id, until } => {
                self.revocations.insert_approval(id, until);
                self.status_lists.revoke_approval(id);
                RevocationEvent {
                    approval: Some(id.to_owned()),
                    ..RevocationEvent::new("approval", until)
                }
            }
            Revocation::Workload(stop) => {
                self.revocations.insert_workload(stop);
                self.status_lists
                    .revoke_workload(&stop.workload, stop.stopped_at);
                RevocationEvent {
                    sub: Some(stop.workload.clone()),
                    issued_before: Some(stop.stopped_at),
                    ..RevocationEvent::new("workload", stop.until())
                }
            }
        };
        self.feed.publish(seq, published);
        self.targets
            .on_revocation(cause, self.clock.now().timestamp());
    }

    /// A fresh audit entry for a request.
    pub(crate) fn audit_entry(
        &self,
        now: DateTime<Utc>,
        event: EventKind,
        decision: Decision,
        context: Option<&RequestContext>,
    ) -> AuditEntry {
        let mut entry = AuditEntry::new(timestamp(now), event, decision);
        if let Some(context) = context {
            context.stamp(&mut entry);
        }
        entry
    }

    /// Whether an operator stopped `workload`.
    pub(crate) fn is_stopped(&self, workload: &str) -> bool {
        self.stopped
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(workload)
    }

    /// Record `entry`; on failure the caller must refuse (fail closed).
    /// Repeated refusals of unauthenticated requests from one source are
    /// counted instead, and written as one record per interval.
    pub(crate) async fn record(&self, entry: AuditEntry) -> Result<(), OAuthError> {
        let Some(entry) = self.limits.refusals.admit(entry) else {
            self.metrics.refusal_counted();
            return Ok(());
        };
        self.audit.record(entry).await.map_err(|error| {
            tracing::error!(%error, "audit record not written; refusing the request");
            OAuthError::unavailable("the decision could not be recorded in the audit log")
        })
    }

    /// Audit a refusal; the answer is the refusal, or 503 if it could not
    /// be recorded.
    pub(crate) async fn refuse(&self, mut entry: AuditEntry, error: OAuthError) -> OAuthError {
        entry.reason = Some(error.reason.as_str().to_owned());
        entry.detail = Some(error.description.clone());
        match self.record(entry).await {
            Ok(()) => error,
            Err(unavailable) => unavailable,
        }
    }

    /// Audit a decision's outcome: `allowed` if it happened, else the
    /// refusal's reason and description. An audit failure is the answer
    /// (503); otherwise the outcome is handed back.
    pub(crate) async fn record_outcome<T>(
        &self,
        mut entry: AuditEntry,
        outcome: Result<T, OAuthError>,
        allowed: EventKind,
    ) -> Result<Result<T, OAuthError>, OAuthError> {
        match &outcome {
            Ok(_) => {
                entry.event = allowed;
                entry.decision = Decision::Allow;
            }
            Err(error) => {
                entry.reason = Some(error.reason.as_str().to_owned());
                entry.detail = Some(error.description.clone());
            }
        }
        self.record(entry).await?;
        Ok(outcome)
    }

    /// Classify a presented token. Errors only for input that is not a
    /// token at all (too long, not a compact JWS): everything else that is
    /// wrong with it makes it [`TokenState::Unknown`].
    pub(crate) fn check_token(
        &self,
        token: &str,
        now: DateTime<Utc>,
    ) -> Result<TokenState, OAuthError> {
        self.check_token_within(token, now, 0)
    }

    /// [`Self::check_token`], with `leeway_secs` of clock leeway on `exp`
    /// and `nbf`: revocation takes tokens that verifiers still accept
    /// (they may allow up to [`MAX_LEEWAY_SECS`]).
    ///
    /// [`MAX_LEEWAY_SECS`]: stint_core::access_token::MAX_LEEWAY_SECS
    pub(crate) fn check_token_within(
        &self,
        token: &str,
        now: DateTime<Utc>,
        leeway_secs: i64,
    ) -> Result<TokenState, OAuthError> {
        let malformed =
            |why: String| OAuthError::invalid_request(DenyReason::MalformedRequest, why);
        if token.len() > MAX_TOKEN_LEN {
            return Err(malformed(format!(
                "the token is longer than {MAX_TOKEN_LEN} bytes"
            )));
        }
        let expect = Expectations {
            issuer: &self.issuer,
            audience: None,
            leeway_secs,
        };
        let claims = match self
            .keys
            .verify_access_token(token, &expect, now.timestamp())
        {
            Ok(claims) => claims,
            Err(TokenError::Malformed(why)) => return Err(malformed(why)),
            Err(TokenError::Expired) => return Ok(TokenState::Expired),
            Err(_) => return Ok(TokenState::Unknown),
        };
        if self.revocations.is_revoked(&claims, now) {
            return Ok(TokenState::Revoked(claims));
        }
        Ok(TokenState::Active(claims))
    }

    /// Re-read the policy file. An invalid file, or one whose loading cannot
    /// be audited, is refused and the policy in force stays.
    pub(crate) async fn reload_policy(&self) -> Result<(), PolicyErrors> {
        let PolicySource::File(path) = &self.policy_source else {
            tracing::info!(
                "the built-in demo policy has nothing to reload; start with --policy FILE to use a file"
            );
            return Ok(());
        };
        let name = path.display().to_string();
        let result = read_policy_file(path)
            .await
            .and_then(|text| Policy::parse(&name, &text))
            .and_then(|policy| check_target_files(policy, &name));
        self.install_policy(result).await
    }

    /// Audit and install a freshly loaded policy (or audit its refusal).
    pub(crate) async fn install_policy(
        &self,
        result: Result<Policy, PolicyErrors>,
    ) -> Result<(), PolicyErrors> {
        let now = self.clock.now();
        match result {
            Ok(policy) => {
                let mut entry =
                    self.audit_entry(now, EventKind::PolicyLoaded, Decision::Allow, None);
                entry.policy_sha256 = Some(policy.digest().to_owned());
                entry.allows = policy.allowances();
                entry.reviews = Some(policy.review_dates());
                // Listed only beside the allowances (bounded in size with them).
                entry.shadows = entry.allows.as_ref().map(|_| policy.shadow_map());
                if let Err(error) = self.audit.record(entry).await {
                    self.metrics.policy_load(false);
                    tracing::error!(%error, "policy not installed: its loading could not be audited");
                    return Err(single_error(format!(
                        "the policy was valid but its loading could not be audited ({error}); the previous policy stays in force"
                    )));
                }
                report_overdue(&policy, now);
                crate::federation_token::warn_if_unsigned(&policy, &self.federation_keys);
                self.targets.install(&policy);
                tracing::info!(sha256 = policy.digest(), "policy loaded");
                self.report_widenings(&policy);
                self.policy.store(Arc::new(policy));
                self.policy_installed.send_modify(|n| *n += 1);
                self.metrics.policy_load(true);
                Ok(())
            }
            Err(errors) => {
                let mut entry =
                    self.audit_entry(now, EventKind::PolicyRefused, Decision::Deny, None);
                entry.detail = Some(errors.to_string());
                if let Err(error) = self.audit.record(entry).await {
                    tracing::error!(%error, "could not audit a refused policy");
                }
                self.metrics.policy_load(false);
                tracing::error!("policy refused; the previous policy stays in force:\n{errors}");
                Err(errors)
            }
        }
    }
}

impl AppState {
    /// Log and count each step `policy` lets allow more than the policy in
    /// force, and say whether its workflow's review date moved with it.
    fn report_widenings(&self, policy: &Policy) {
        let old = self.policy.load();
        for widening in stint_core::policy::widenings(&old.allowance_map(), &policy.allowance_map())
        {
            let workflow = widening.step.split('/').next().unwrap_or_default();
            let review_by_moved = old
                .workflow(workflow)
                .zip(policy.workflow(workflow))
                .is_none_or(|(before, after)| before.review_by() != after.review_by());
            tracing::warn!(
                step = %widening.step,
                added = %widening.added.join(" "),
                review_by_moved,
                "policy reload widened a step: it allows scopes it did not"
            );
            self.metrics.policy_widened(workflow);
        }
    }
}

/// Log each workflow past its review date.
pub(crate) fn report_overdue(policy: &Policy, now: DateTime<Utc>) {
    for workflow in policy.overdue_workflows(now.date_naive()) {
        tracing::warn!(
            workflow = workflow.name(),
            review_by = %workflow.review_by(),
            enforced = policy.enforce_review(),
            "workflow is past its review date: recertify its grants and move review_by forward"
        );
    }
}

/// Read a policy file of at most [`MAX_POLICY_LEN`] bytes.
pub(crate) async fn read_policy_file(path: &std::path::Path) -> Result<String, PolicyErrors> {
    let name = path.display().to_string();
    let fail = |message: String| {
        PolicyErrors(vec![PolicyError {
            file: name.clone(),
            line: 0,
            column: 0,
            key: String::new(),
            message,
        }])
    };
    let metadata = tokio::fs::metadata(path)
        .await
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    if metadata.len() > MAX_POLICY_LEN as u64 {
        return Err(fail(format!(
            "the policy is larger than {MAX_POLICY_LEN} bytes"
        )));
    }
    let bytes = tokio::fs::read(path)
        .await
        .map_err(|e| fail(format!("cannot read: {e}")))?;
    String::from_utf8(bytes).map_err(|_| fail("the policy is not valid UTF-8".into()))
}

/// Refuse a policy whose targets' files cannot be used (a GitHub App key
/// that does not parse), naming the target, the file and the reason.
pub(crate) fn check_target_files(policy: Policy, file: &str) -> Result<Policy, PolicyErrors> {
    let errors: Vec<PolicyError> = policy
        .targets()
        .filter_map(|target| {
            stint_targets::clients::check(target)
                .err()
                .map(|message| PolicyError {
                    file: file.to_owned(),
                    line: 0,
                    column: 0,
                    key: format!("targets.{}", target.name()),
                    message,
                })
        })
        .collect();
    if errors.is_empty() {
        Ok(policy)
    } else {
        Err(PolicyErrors(errors))
    }
}

fn single_error(message: String) -> PolicyErrors {
    PolicyErrors(vec![PolicyError {
        file: String::new(),
        line: 0,
        column: 0,
        key: String::new(),
        message,
    }])
}
