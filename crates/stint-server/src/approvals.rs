//! Operator-approved elevation at the broker: the approval requests in
//! force, their persistence, audit and notifications.
//!
//! The rules are [`stint_core::approval`]'s; this module keeps the
//! requests (in memory, written through to the store before any answer),
//! answers the token endpoint's polls, applies operators' decisions, and
//! moves requests whose time is up to their final state.
//!
//! Order of effects, chosen so that every failure fails closed:
//! - a new request and an approval are audited, then stored, then take
//!   effect: if either write fails, nothing was granted;
//! - a denial, a revocation, an expiry and a job's end are stored (and a
//!   revocation put in the revocation set) before they are audited: if the
//!   audit fails, the privilege is already gone.
//!
//! One mutex guards every request; it is held across the writes of one
//! request's change (so two decisions on a request cannot interleave), and
//! the sweep takes it per request. Approvals are rare, human-paced events,
//! and requests are capped per workload.
//!
//! Between brokers sharing a store, every save names the revision it
//! replaces ([`stint_store::Store::save_approval`]): an operator's decision
//! starts from the request as stored, and of two brokers deciding at once
//! (or sweeping the same expired request) only one succeeds; the other
//! answers that the request changed, or leaves it to the winner. One vote
//! per operator per request is also a uniqueness constraint in the store.
//! Other brokers' changes arrive through the change feed ([`Self::adopt`]).

use crate::audit::timestamp;
use crate::error::{OAuthError, Pending};
use crate::http::RequestContext;
use crate::state::AppState;
use crate::webhook::Webhook;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use ring::rand::SecureRandom as _;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use stint_core::approval::{ApprovalError, ApprovalRequest, Operator, State};
use stint_core::audit::{AuditEntry, Decision, EventKind};
use stint_core::decision::{DenyReason, ElevationNeeded, Grant};
use stint_core::form::FormParams;
use stint_proto::{ApprovalView, ApprovalVote, ErrorCode};
use stint_store::{ApprovalSaved, Change, StoredApproval};
use tokio::sync::Mutex;

/// Requests not yet final, per workload.
pub(crate) const MAX_OPEN_PER_WORKLOAD: usize = 16;
/// Requests kept in memory in all, final ones included.
pub(crate) const MAX_REQUESTS: usize = 10_000;
/// Requests kept per workload, final ones included (they are kept a day):
/// with [`MAX_OPEN_PER_WORKLOAD`], what one workload can make operators
/// read and the webhook carry, and its share of [`MAX_REQUESTS`].
pub(crate) const MAX_KEPT_PER_WORKLOAD: usize = 64;
/// Why a request ended with its job.
const JOB_COMPLETED: &str = "the job completed";
/// The longest `approval_id` looked up in the store (ids are 22
/// characters; anything much longer is not one).
const MAX_APPROVAL_ID_LEN: usize = 64;
/// The slowest polling interval `slow_down` raises a request's to.
const MAX_INTERVAL_SECS: u64 = 60;
/// Slack for clients whose timers fire a little early.
const POLL_TOLERANCE: Duration = Duration::from_millis(250);

struct Tracked {
    request: ApprovalRequest,
    /// Its revision in the store.
    revision: u64,
    /// The polling interval this request's job must keep, seconds.
    interval: u64,
    last_poll: Option<Instant>,
}

/// The approval requests in force.
pub(crate) struct Approvals {
    requests: Mutex<HashMap<String, Tracked>>,
    interval: u64,
    webhook: Option<Webhook>,
    /// The console's origin, for the webhook's links to a request's page.
    console_url: Option<String>,
}

/// Why an operator's call was refused.
#[derive(Debug)]
pub(crate) enum ActionError {
    /// No request with that id (or it is no longer kept).
    NotFound,
    /// The rules refused it.
    Rules(ApprovalError),
    /// The decision could not be recorded: nothing changed.
    Unavailable(&'static str),
    /// Another broker changed the request meanwhile: nothing changed here;
    /// look at it again.
    Changed,
}

impl Approvals {
    /// Requests loaded from the store at start-up. Revoked approvals go
    /// back into the revocation set before the broker serves.
    pub(crate) fn new(
        loaded: Vec<StoredApproval>,
        interval: Duration,
        webhook: Option<Webhook>,
        revocations: &stint_core::revocation::RevocationSet,
        console_url: Option<String>,
    ) -> Self {
        let interval = interval.as_secs().max(1);
        let requests = loaded
            .into_iter()
            .map(|StoredApproval { request, revision }| {
                if matches!(request.state, State::Revoked { .. }) {
                    revocations.insert_approval(&request.id, request.latest_token_expiry());
                }
                (
                    request.id.clone(),
                    Tracked {
                        request,
                        revision,
                        interval,
                        last_poll: None,
                    },
                )
            })
            .collect();
        Self {
            requests: Mutex::new(requests),
            interval,
            webhook,
            console_url,
        }
    }

    /// A request as another broker (or this one) stored it, from the change
    /// feed: kept unless what is here is as new.
    pub(crate) async fn adopt(&self, request: ApprovalRequest, revision: u64) {
        let mut requests = self.requests.lock().await;
        Self::adopt_locked(&mut requests, request, revision, self.interval);
    }

    fn adopt_locked(
        requests: &mut HashMap<String, Tracked>,
        request: ApprovalRequest,
        revision: u64,
        interval: u64,
    ) {
        match requests.get_mut(&request.id) {
            Some(tracked) if tracked.revision >= revision => {}
            Some(tracked) => {
                tracked.request = request;
                tracked.revision = revision;
            }
            None => {
                requests.insert(
                    request.id.clone(),
                    Tracked {
                        request,
                        revision,
                        interval,
                        last_poll: None,
                    },
                );
            }
        }
    }

    /// Read request `id` from the store and keep it (it may be newer there
    /// than here). `None` if the store no longer has it.
    async fn refresh(
        &self,
        state: &AppState,
        requests: &mut HashMap<String, Tracked>,
        id: &str,
    ) -> Result<bool, stint_store::StoreError> {
        match state.store.approval(id).await? {
            Some(stored) => {
                Self::adopt_locked(requests, stored.request, stored.revision, self.interval);
                Ok(true)
            }
            None => {
                requests.remove(id);
                Ok(false)
            }
        }
    }

    /// A token request whose scopes need an approval: mint under the
    /// approval that covers it, or answer where its request stands (making
    /// the request on the first call).
    pub(crate) async fn elevate(
        &self,
        state: &AppState,
        needed: ElevationNeeded,
        form: &FormParams,
        context: &RequestContext,
        run_url: Option<String>,
        now: DateTime<Utc>,
    ) -> Result<Grant, OAuthError> {
        let requester = needed.requester();
        let mut requests = self.requests.lock().await;
        if let Some(id) = form.get("approval_id") {
            // Made or decided through another broker moments ago: the
            // change feed may not have brought it here yet.
            if !requests.contains_key(id) && id.len() <= MAX_APPROVAL_ID_LEN {
                self.refresh(state, &mut requests, id)
                    .await
                    .map_err(|error| {
                        tracing::error!(%error, "approval request not readable from the store");
                        OAuthError::unavailable("the approval request could not be read")
                    })?;
            }
        }
        let found = match form.get("approval_id") {
            Some(id) => match requests.get(id) {
                Some(tracked) if tracked.request.is_for(&requester) => Some(id.to_owned()),
                _ => {
                    return Err(OAuthError::new(
                        ErrorCode::InvalidGrant,
                        DenyReason::ApprovalDenied,
                        "no approval request with this approval_id was made for this job's step and audience",
                    ));
                }
            },
            // The same job asking again without the id: its open request,
            // if one covers these scopes, rather than a new one.
            None => requests
                .values()
                .filter(|t| {
                    !t.request.is_final()
                        && t.request.is_for(&requester)
                        && needed
                            .elevated_scopes()
                            .iter()
                            .all(|s| t.request.scopes.contains(s))
                })
                .max_by_key(|t| t.request.requested_at)
                .map(|t| t.request.id.clone()),
        };
        let Some(id) = found else {
            let tracked = self
                .create(state, &mut requests, &needed, form, (context, run_url), now)
                .await?;
            return Err(pending(tracked, now, "approval requested"));
        };
        let Some(tracked) = requests.get_mut(&id) else {
            return Err(OAuthError::unavailable("the approval request vanished"));
        };
        let at = now.timestamp();
        match tracked.request.state {
            State::Pending if at < tracked.request.expires_at => {
                let early = tracked.last_poll.is_some_and(|last| {
                    last.elapsed() + POLL_TOLERANCE < Duration::from_secs(tracked.interval)
                });
                tracked.last_poll = Some(Instant::now());
                if early {
                    tracked.interval = (tracked.interval + 5).min(MAX_INTERVAL_SECS);
                    let mut error = pending(tracked, now, "polling too fast");
                    error.code = ErrorCode::SlowDown;
                    error.reason = DenyReason::SlowDown;
                    return Err(error);
                }
                Err(pending(tracked, now, "waiting for operators"))
            }
            State::Approved { until } if at < until => {
                needed.grant_under(&tracked.request).map_err(|denial| {
                    OAuthError::new(ErrorCode::AccessDenied, denial.reason, denial.description)
                })
            }
            State::Denied {
                ref by,
                ref comment,
            } => Err(OAuthError::new(
                ErrorCode::AccessDenied,
                DenyReason::ApprovalDenied,
                format!("approval request {id} was denied by {by}: {comment}"),
            )
            .with_pending(view_pending(tracked, now))),
            State::Revoked {
                ref by,
                ref comment,
            } => Err(OAuthError::new(
                ErrorCode::AccessDenied,
                DenyReason::ApprovalDenied,
                format!(
                    "approval request {id} was revoked by {by}{}",
                    comment
                        .as_deref()
                        .map(|c| format!(": {c}"))
                        .unwrap_or_default()
                ),
            )
            .with_pending(view_pending(tracked, now))),
            _ => Err(OAuthError::new(
                ErrorCode::ExpiredToken,
                DenyReason::ApprovalExpired,
                format!("approval request {id} has expired or ended; ask again to make a new one"),
            )
            .with_pending(view_pending(tracked, now))),
        }
    }

    async fn create<'m>(
        &self,
        state: &AppState,
        requests: &'m mut HashMap<String, Tracked>,
        needed: &ElevationNeeded,
        form: &FormParams,
        (context, run_url): (&RequestContext, Option<String>),
        now: DateTime<Utc>,
    ) -> Result<&'m mut Tracked, OAuthError> {
        let requester = needed.requester();
        let (mut open, mut kept) = (0, 0);
        for t in requests
            .values()
            .filter(|t| t.request.workload == requester.workload)
        {
            kept += 1;
            if !t.request.is_final() {
                open += 1;
            }
        }
        let refuse = |why: String| {
            Err(OAuthError::new(
                ErrorCode::InvalidRequest,
                DenyReason::TooManyApprovalRequests,
                why,
            ))
        };
        if open >= MAX_OPEN_PER_WORKLOAD {
            return refuse(format!(
                "this workload already has {open} approval requests open; let operators decide them, or complete their jobs"
            ));
        }
        if kept >= MAX_KEPT_PER_WORKLOAD || requests.len() >= MAX_REQUESTS {
            return refuse(format!(
                "this workload made {kept} approval requests in the last day, the most the broker keeps; ask an operator"
            ));
        }
        let duration = form.get("duration").map(duration_param).transpose()?;
        let id = new_id(state)?;
        let mut request = ApprovalRequest::new(
            id.clone(),
            requester,
            needed.elevated_scopes().to_vec(),
            form.get("reason").map(str::to_owned),
            duration,
            needed.rules().clone(),
            now.timestamp(),
        )
        .map_err(|e| OAuthError::invalid_request(DenyReason::MalformedRequest, e.to_string()))?;
        request.run_url = run_url;

        // Audited, then stored, then in force.
        let mut entry = self.entry(
            state,
            now,
            EventKind::ApprovalRequested,
            Decision::Allow,
            &request,
        );
        context.stamp(&mut entry);
        entry.duration = Some(request.duration_asked);
        state.record(entry).await?;
        let saved = state
            .store
            .save_approval(&request, 0)
            .await
            .map_err(|error| {
                tracing::error!(%error, "approval request not stored");
                OAuthError::unavailable("the approval request could not be stored")
            })?;
        let ApprovalSaved::Saved { revision, seq } = saved else {
            tracing::error!(outcome = ?saved, "a new approval request's id is taken");
            return Err(OAuthError::unavailable(
                "the approval request could not be stored",
            ));
        };
        state.changes.offer(
            seq,
            Change::Approval {
                request: Box::new(request.clone()),
                revision,
            },
        );
        tracing::info!(
            approval = %request.id,
            workload = %request.workload,
            job = %request.job,
            step = %request.step,
            "approval requested"
        );
        self.notify("approval.requested", &request, None, now);
        state.metrics.approval_event("approval.requested");
        let tracked = requests.entry(id).or_insert(Tracked {
            request,
            revision,
            interval: self.interval,
            last_poll: Some(Instant::now()),
        });
        Ok(tracked)
    }

    /// Every request kept, newest first; only pending ones if asked.
    pub(crate) async fn list(&self, pending_only: bool, now: DateTime<Utc>) -> Vec<ApprovalView> {
        let requests = self.requests.lock().await;
        let mut views: Vec<ApprovalView> = requests
            .values()
            .filter(|t| !pending_only || t.request.is_pending(now.timestamp()))
            .map(|t| view(&t.request, now))
            .collect();
        views.sort_by(|a, b| b.requested_at.cmp(&a.requested_at).then(a.id.cmp(&b.id)));
        views
    }

    /// One request.
    pub(crate) async fn show(&self, id: &str, now: DateTime<Utc>) -> Option<ApprovalView> {
        let requests = self.requests.lock().await;
        requests.get(id).map(|t| view(&t.request, now))
    }

    /// An operator's decision on request `id`.
    pub(crate) async fn act(
        &self,
        state: &AppState,
        id: &str,
        operator: &Operator,
        action: Action,
        context: &RequestContext,
        now: DateTime<Utc>,
    ) -> Result<ApprovalView, ActionError> {
        let mut requests = self.requests.lock().await;
        // Decided from the request as stored: another broker may have
        // changed it since the change feed last brought it here.
        let kept = self
            .refresh(state, &mut requests, id)
            .await
            .map_err(|error| {
                tracing::error!(%error, approval = %id, "approval request not readable from the store");
                ActionError::Unavailable("the request could not be read")
            })?;
        if !kept {
            return Err(ActionError::NotFound);
        }
        let tracked = requests.get_mut(id).ok_or(ActionError::NotFound)?;
        let at = now.timestamp();
        let mut next = tracked.request.clone();
        let (event, detail, duration, comment) = match &action {
            Action::Approve { duration, comment } => {
                // Earlier votes count only if their operator is still one,
                // and still does not own the workload (the policy may have
                // changed since they voted).
                let policy = state.policy.load();
                let votes = next.approvals.len();
                next.approvals.retain(|a| {
                    policy
                        .operator(&a.operator)
                        .is_some_and(|o| !o.owns().contains(&next.workload))
                });
                let dropped = votes - next.approvals.len();
                let before = next.approvals.len();
                next.approve(operator, *duration, comment.clone(), at)
                    .map_err(ActionError::Rules)?;
                let granted = next.approvals.get(before).map(|a| a.duration);
                let mut detail = match next.state {
                    State::Approved { until } => format!(
                        "quorum reached ({} of {}): approved until {}",
                        next.approvals.len(),
                        next.elevation.quorum,
                        rfc3339(until)
                    ),
                    _ => format!(
                        "{} of {} approvals",
                        next.approvals.len(),
                        next.elevation.quorum
                    ),
                };
                if dropped > 0 {
                    detail.push_str(&format!(
                        "; {dropped} earlier vote(s) no longer count (the operator left the policy or now owns the workload)"
                    ));
                }
                (EventKind::ApprovalGranted, detail, granted, comment.clone())
            }
            Action::Deny { comment } => {
                next.deny(operator, comment, at)
                    .map_err(ActionError::Rules)?;
                (
                    EventKind::ApprovalDenied,
                    "denied".to_owned(),
                    None,
                    Some(comment.clone()),
                )
            }
            Action::Revoke { comment } => {
                if operator.groups.is_disjoint(&next.elevation.approver_groups) {
                    return Err(ActionError::Rules(ApprovalError::NotAnApprover));
                }
                next.revoke(&operator.name, comment.clone())
                    .map_err(ActionError::Rules)?;
                (
                    EventKind::ApprovalRevoked,
                    "revoked: every token minted under it is revoked".to_owned(),
                    None,
                    comment.clone(),
                )
            }
        };
        let mut entry = self.entry(state, now, event, Decision::Allow, &next);
        entry.operator = Some(operator.name.clone());
        entry.comment = comment;
        entry.duration = duration;
        entry.detail = Some(detail);
        context.stamp(&mut entry);
        let store = |error: stint_store::StoreError| {
            tracing::error!(%error, approval = %id, "approval decision not stored");
            ActionError::Unavailable("the decision could not be stored")
        };
        let audit = |_| ActionError::Unavailable("the decision could not be recorded");
        let revision = tracked.revision;
        let saved = match action {
            // Granting: audited, then stored, then in force.
            Action::Approve { .. } => {
                state.record(entry.clone()).await.map_err(audit)?;
                state.store.save_approval(&next, revision).await
            }
            // A revocation: audited, stored, then in force and announced,
            // or none of those (as AppState::revoke does for the others).
            Action::Revoke { .. } => {
                state.record(entry.clone()).await.map_err(audit)?;
                state.store.save_approval(&next, revision).await
            }
            // Taking away a pending request: stored first, then audited.
            Action::Deny { .. } => state.store.save_approval(&next, revision).await,
        };
        let refused = match saved {
            Ok(ApprovalSaved::Saved { revision, seq }) => {
                tracked.revision = revision;
                tracked.request = next.clone();
                if let Action::Revoke { .. } = action {
                    // In this broker's set now; announced (here and on every
                    // broker) when the change feed applies it, moments later.
                    state
                        .revocations
                        .insert_approval(&next.id, next.latest_token_expiry());
                }
                state.changes.offer(
                    seq,
                    Change::Approval {
                        request: Box::new(next.clone()),
                        revision,
                    },
                );
                None
            }
            Ok(ApprovalSaved::Conflict) => Some(ActionError::Changed),
            Ok(ApprovalSaved::AlreadyVoted) => {
                Some(ActionError::Rules(ApprovalError::AlreadyApproved))
            }
            Err(error) => Some(store(error)),
        };
        if let Some(refused) = refused {
            // A revocation recorded just before: say it is not in force.
            if let Action::Revoke { .. } = action {
                state
                    .record_not_durable(entry, EventKind::ApprovalRefused)
                    .await;
            }
            return Err(refused);
        }
        if let Action::Deny { .. } = action {
            state.record(entry).await.map_err(audit)?;
        }
        let request = &tracked.request;
        tracing::info!(
            approval = %request.id,
            operator = %operator.name,
            state = request.state.name(),
            "approval decision"
        );
        let kind = match (&action, &request.state) {
            (Action::Approve { .. }, State::Approved { .. }) => Some("approval.approved"),
            (Action::Approve { .. }, _) => None,
            (Action::Deny { .. }, _) => Some("approval.denied"),
            (Action::Revoke { .. }, _) => Some("approval.revoked"),
        };
        if let Some(kind) = kind {
            state.metrics.approval_event(kind);
            self.notify(kind, request, Some(&operator.name), now);
        }
        Ok(view(request, now))
    }

    /// Move requests whose time is up to their final state, end those
    /// whose job was revoked (in case ending them with the job failed),
    /// and forget those kept long enough. Returns how many changed state.
    ///
    /// The lock is taken once to find the candidates, then once per
    /// candidate around its own writes, so polls and operators interleave
    /// with a long sweep.
    pub(crate) async fn sweep(&self, state: &AppState, now: DateTime<Utc>) -> usize {
        let at = now.timestamp();
        let candidates: Vec<String> = {
            let mut requests = self.requests.lock().await;
            requests.retain(|_, t| t.request.keep_until() > at);
            requests
                .values()
                .filter(|t| {
                    t.request.is_due(at)
                        || (!t.request.is_final() && job_revoked(state, &t.request, now))
                })
                .map(|t| t.request.id.clone())
                .collect()
        };
        let mut changed = 0;
        for id in candidates {
            let mut requests = self.requests.lock().await;
            let Some(tracked) = requests.get_mut(&id) else {
                continue;
            };
            let mut next = tracked.request.clone();
            let (event, detail) = if next.expire(at) {
                match next.state {
                    State::Expired => (
                        EventKind::ApprovalExpired,
                        "nobody decided before the request's waiting time ran out",
                    ),
                    _ => (EventKind::ApprovalExpired, "the approval's window closed"),
                }
            } else if job_revoked(state, &next, now) && next.end(JOB_COMPLETED) {
                (EventKind::ApprovalEnded, JOB_COMPLETED)
            } else {
                continue;
            };
            if self.finish(state, tracked, next, now, event, detail).await {
                changed += 1;
            }
        }
        changed
    }

    /// The job completed: its requests and approvals end with it. Returns
    /// whether every change was stored (if not, the caller answers 503 and
    /// the sweep ends them anyway while the job's revocation is in force).
    pub(crate) async fn end_job(&self, state: &AppState, workload: &str, job: &str) -> bool {
        let now = state.clock.now();
        let ids: Vec<String> = {
            let requests = self.requests.lock().await;
            requests
                .values()
                .filter(|t| {
                    !t.request.is_final() && t.request.workload == workload && t.request.job == job
                })
                .map(|t| t.request.id.clone())
                .collect()
        };
        let mut all_stored = true;
        for id in ids {
            let mut requests = self.requests.lock().await;
            let Some(tracked) = requests.get_mut(&id) else {
                continue;
            };
            let mut next = tracked.request.clone();
            if next.end(JOB_COMPLETED) {
                all_stored &= self
                    .finish(
                        state,
                        tracked,
                        next,
                        now,
                        EventKind::ApprovalEnded,
                        JOB_COMPLETED,
                    )
                    .await;
            }
        }
        all_stored
    }

    /// Store, adopt and audit a final state reached without an operator.
    /// Returns whether it was stored; if not, the old state stays and the
    /// next sweep tries again (a request past its time is refused anyway).
    async fn finish(
        &self,
        state: &AppState,
        tracked: &mut Tracked,
        next: ApprovalRequest,
        now: DateTime<Utc>,
        event: EventKind,
        detail: &str,
    ) -> bool {
        match state.store.save_approval(&next, tracked.revision).await {
            Ok(ApprovalSaved::Saved { revision, seq }) => {
                tracked.revision = revision;
                state.changes.offer(
                    seq,
                    Change::Approval {
                        request: Box::new(next.clone()),
                        revision,
                    },
                );
            }
            // Another broker got there first (its sweep, or an operator):
            // what it stored stands, and it audits and notifies.
            Ok(_) => {
                return match state.store.approval(&next.id).await {
                    Ok(Some(stored)) => {
                        let done = stored.request.is_final();
                        tracked.request = stored.request;
                        tracked.revision = stored.revision;
                        done
                    }
                    Ok(None) => true,
                    Err(error) => {
                        tracing::error!(%error, approval = %next.id, "approval request not readable; will retry");
                        false
                    }
                };
            }
            Err(error) => {
                tracing::error!(%error, approval = %next.id, "approval state not stored; will retry");
                return false;
            }
        }
        tracked.request = next;
        let request = &tracked.request;
        let mut entry = self.entry(state, now, event, Decision::Allow, request);
        entry.detail = Some(detail.to_owned());
        if let Err(error) = state.audit.record(entry).await {
            tracing::error!(%error, approval = %request.id, "approval state change not audited");
        }
        tracing::info!(approval = %request.id, state = request.state.name(), "{detail}");
        let kind = match request.state {
            State::Expired => "approval.expired",
            _ => "approval.ended",
        };
        self.notify(kind, request, None, now);
        state.metrics.approval_event(kind);
        true
    }

    fn entry(
        &self,
        state: &AppState,
        now: DateTime<Utc>,
        event: EventKind,
        decision: Decision,
        request: &ApprovalRequest,
    ) -> AuditEntry {
        let mut entry = AuditEntry::new(timestamp(now), event, decision);
        entry.approval_id = Some(request.id.clone());
        entry.sub = Some(request.workload.clone());
        entry.client_id = Some(request.client_id.clone());
        entry.job = Some(request.job.clone());
        entry.step = Some(request.step.clone());
        entry.aud = Some(request.audience.clone());
        entry.scopes = request
            .scopes
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect();
        entry.justification.clone_from(&request.reason);
        entry.policy_sha256 = Some(state.policy.load().digest().to_owned());
        entry
    }

    /// The webhook's delivery counts, if there is a webhook (for metrics).
    pub(crate) fn webhook_counts(&self) -> Option<crate::webhook::DeliveryCounts> {
        self.webhook.as_ref().map(Webhook::counts)
    }

    fn notify(
        &self,
        kind: &str,
        request: &ApprovalRequest,
        operator: Option<&str>,
        now: DateTime<Utc>,
    ) {
        let Some(webhook) = &self.webhook else {
            return;
        };
        let scopes = request
            .scopes
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        let by = operator.map(|o| format!(" by {o}")).unwrap_or_default();
        let text = match kind {
            "approval.requested" => format!(
                "Stint: {} (job {}, step {}) asks for `{scopes}`{}. {} approval(s) from {} needed: `stint approve {}`",
                request.workload,
                request.job,
                request.step,
                request
                    .reason
                    .as_deref()
                    .map(|r| format!(" because \"{}\"", slack_escape(r)))
                    .unwrap_or_default(),
                request.elevation.quorum,
                groups(request),
                request.id
            ),
            _ => format!(
                "Stint: approval request {} ({} job {}, `{scopes}`) is {}{by}",
                request.id,
                request.workload,
                request.job,
                request.state.name()
            ),
        };
        let mut data = serde_json::to_value(view(request, now)).unwrap_or_default();
        let mut text = text;
        if let Some(console) = &self.console_url {
            // The request's page in the console: everything needed to
            // decide, and the buttons (the id is [A-Za-z0-9_-]).
            let link = format!("{console}/approvals/{}", request.id);
            text.push_str(&format!(" or open {link}"));
            if let Some(object) = data.as_object_mut() {
                object.insert("console_url".into(), serde_json::Value::String(link));
            }
        }
        webhook.send(kind, text, data);
    }
}

/// What an operator does.
pub(crate) enum Action {
    Approve {
        duration: Option<i64>,
        comment: Option<String>,
    },
    Deny {
        comment: String,
    },
    Revoke {
        comment: Option<String>,
    },
}

fn job_revoked(state: &AppState, request: &ApprovalRequest, now: DateTime<Utc>) -> bool {
    state
        .revocations
        .is_job_revoked(&request.workload, &request.job, now)
}

fn new_id(state: &AppState) -> Result<String, OAuthError> {
    let mut bytes = [0u8; 12];
    state.rng.fill(&mut bytes).map_err(|_| {
        OAuthError::new(
            ErrorCode::ServerError,
            DenyReason::Internal,
            "could not generate an approval id",
        )
    })?;
    Ok(format!("apr-{}", URL_SAFE_NO_PAD.encode(bytes)))
}

fn view_pending(tracked: &Tracked, now: DateTime<Utc>) -> Pending {
    Pending {
        interval: tracked.interval,
        expires_in: u64::try_from(tracked.request.expires_at - now.timestamp()).unwrap_or(0),
        view: view(&tracked.request, now),
    }
}

fn pending(tracked: &Tracked, now: DateTime<Utc>, what: &str) -> OAuthError {
    let request = &tracked.request;
    OAuthError::new(
        ErrorCode::AuthorizationPending,
        DenyReason::ApprovalPending,
        format!(
            "{what}: approval request {} needs {} more approval(s) from an operator in {}; poll again in {} s",
            request.id,
            request
                .elevation
                .quorum
                .saturating_sub(request.approvals.len()),
            groups(request),
            tracked.interval
        ),
    )
    .with_pending(view_pending(tracked, now))
}

/// The API's view of a request.
pub(crate) fn view(request: &ApprovalRequest, now: DateTime<Utc>) -> ApprovalView {
    let mut state = request.state.name().to_owned();
    // A request past its time reads as what the next sweep will make it.
    let mut shown = request.clone();
    if shown.expire(now.timestamp()) {
        state = shown.state.name().to_owned();
    }
    let (decided_by, comment) = match &request.state {
        State::Denied { by, comment } => (Some(by.clone()), Some(comment.clone())),
        State::Revoked { by, comment } => (Some(by.clone()), comment.clone()),
        State::Ended { reason } => (None, Some(reason.clone())),
        _ => (None, None),
    };
    ApprovalView {
        id: request.id.clone(),
        state,
        workload: request.workload.clone(),
        client_id: request.client_id.clone(),
        job: request.job.clone(),
        step: request.step.clone(),
        audience: request.audience.clone(),
        scopes: request
            .scopes
            .iter()
            .map(|s| s.as_str().to_owned())
            .collect(),
        reason: request.reason.clone(),
        run_url: request.run_url.clone(),
        duration_asked: request.duration_asked,
        max_duration: request.elevation.max_duration,
        requested_at: request.requested_at,
        expires_at: request.expires_at,
        approver_groups: request.elevation.approver_groups.iter().cloned().collect(),
        approvals_required: request.elevation.quorum,
        approvals: request
            .approvals
            .iter()
            .map(|a| ApprovalVote {
                operator: a.operator.clone(),
                at: a.at,
                duration: a.duration,
                comment: a.comment.clone(),
            })
            .collect(),
        approved_until: match request.state {
            State::Approved { until } => Some(until),
            _ => None,
        },
        decided_by,
        comment,
    }
}

/// The approver groups, for people: `sre, dba`.
fn groups(request: &ApprovalRequest) -> String {
    let names: Vec<&str> = request
        .elevation
        .approver_groups
        .iter()
        .map(String::as_str)
        .collect();
    names.join(", ")
}

/// A duration parameter (`"15m"`, `"900"`) in seconds.
pub(crate) fn duration_param(text: &str) -> Result<i64, OAuthError> {
    stint_core::ttl::parse_duration_secs(text)
        .ok()
        .and_then(|secs| i64::try_from(secs).ok())
        .ok_or_else(|| {
            OAuthError::invalid_request(
                DenyReason::MalformedRequest,
                "a duration must look like \"15m\", \"1h\" or \"900\" (seconds)",
            )
        })
}

/// The requester's words in a Slack-style `text`: `<`, `>` and `&` are
/// markup there (`<!channel>` pings everyone, `<url|label>` disguises a
/// link), so they are escaped as Slack documents.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn rfc3339(secs: i64) -> String {
    DateTime::from_timestamp(secs, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}
