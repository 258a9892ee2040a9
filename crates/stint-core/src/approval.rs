//! Operator-approved temporary elevation: the rules, without I/O.
//!
//! A step may declare an elevation: scopes beyond its standing grant that
//! operators (people) can approve for one job's step, for a bounded time.
//! A request for such scopes becomes an [`ApprovalRequest`]; operators
//! approve or deny it; once enough distinct operators approved, the job's
//! step may mint tokens carrying the approved scopes, within the approval's
//! window. This module enforces every rule the broker promises:
//!
//! - only an operator in one of the elevation's approver groups may decide;
//! - nobody approves a request made by a workload they own;
//! - the same operator never counts twice;
//! - a deny is final;
//! - a request expires after its waiting time, an approval after its
//!   duration (the shortest any approver granted, never more than the
//!   elevation's maximum);
//! - only the requesting job's step mints under an approval, and only the
//!   approved scopes;
//! - a revoked approval is over.
//!
//! Times are seconds since the epoch; the caller supplies `now`.

use crate::scope::Scope;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use thiserror::Error;

/// How long a request stays on record (in memory, in the store, listed by
/// `/v1/approvals`) after it is over: a day, so that operators can still
/// see what was decided.
pub const RETENTION_SECS: i64 = 24 * 3600;
/// The longest reason or comment kept, in bytes.
pub const MAX_TEXT_LEN: usize = 1024;

/// What a step's elevation allows operators to grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Elevation {
    /// The groups whose members may approve.
    pub approver_groups: BTreeSet<String>,
    /// How many distinct operators must approve.
    pub quorum: usize,
    /// The longest an approval may last, in seconds.
    pub max_duration: i64,
    /// How long a request waits for its quorum before it expires, seconds.
    pub max_wait: i64,
    /// Whether a request must give a reason.
    pub reason_required: bool,
}

/// A person who may approve, as the policy declares them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    /// Their name (the identity they authenticate as).
    pub name: String,
    /// Their groups.
    pub groups: BTreeSet<String>,
    /// The workloads they own: they never approve those workloads' requests.
    pub owns: BTreeSet<String>,
}

/// Where a request stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    /// Waiting for approvals until `expires_at`.
    Pending,
    /// Approved: the step may mint until `until`.
    Approved {
        /// The end of the window.
        until: i64,
    },
    /// Denied, for good.
    Denied {
        /// Who denied.
        by: String,
        /// Why.
        comment: String,
    },
    /// Revoked after approval: every token minted under it is revoked.
    Revoked {
        /// Who revoked.
        by: String,
        /// Why, if they said.
        comment: Option<String>,
    },
    /// Nobody decided before the waiting time ran out.
    Expired,
    /// Over before its time: the job completed (its tokens are revoked
    /// with the job).
    Ended {
        /// Why. (Stored as `ended_because`: the state is flattened into the
        /// request, whose own `reason` is the requester's.)
        #[serde(rename = "ended_because")]
        reason: String,
    },
}

impl State {
    /// The state's name, as the API and the audit log show it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Approved { .. } => "approved",
            Self::Denied { .. } => "denied",
            Self::Revoked { .. } => "revoked",
            Self::Expired => "expired",
            Self::Ended { .. } => "ended",
        }
    }
}

/// One operator's approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// Who.
    pub operator: String,
    /// When.
    pub at: i64,
    /// The duration they granted, seconds (at most what was asked).
    pub duration: i64,
    /// What they said.
    pub comment: Option<String>,
}

/// A request for elevated scopes, with everything an operator needs to
/// decide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRequest {
    /// Its id.
    pub id: String,
    /// The workload that asked.
    pub workload: String,
    /// The connector (client id) it asked through.
    pub client_id: String,
    /// The job.
    pub job: String,
    /// The step (`workflow/step`).
    pub step: String,
    /// The audience the tokens are for.
    pub audience: String,
    /// The elevated scopes asked for: the only ones an approval covers.
    pub scopes: Vec<Scope>,
    /// Why, in the requester's words.
    pub reason: Option<String>,
    /// The duration asked, seconds.
    pub duration_asked: i64,
    /// When it was made.
    pub requested_at: i64,
    /// When it expires unless approved.
    pub expires_at: i64,
    /// The elevation's rules, as they were when the request was made.
    pub elevation: Elevation,
    /// Approvals so far, one per operator.
    pub approvals: Vec<Approval>,
    /// The page of the CI run that asked, when its platform's ID token
    /// says which ([`crate::federation::TrustedIssuer::run_url`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_url: Option<String>,
    /// Where it stands.
    #[serde(flatten)]
    pub state: State,
}

/// Who asked, for what: the context of a new request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requester {
    /// The workload.
    pub workload: String,
    /// The connector (client id).
    pub client_id: String,
    /// The job.
    pub job: String,
    /// The step (`workflow/step`).
    pub step: String,
    /// The audience.
    pub audience: String,
}

/// Why a decision was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ApprovalError {
    /// The request is not pending (decided, revoked or expired).
    #[error("the request is no longer pending")]
    NotPending,
    /// The request waited too long.
    #[error("the request has expired")]
    Expired,
    /// The operator is in none of the approver groups.
    #[error("this operator is not in an approver group for this elevation")]
    NotAnApprover,
    /// The operator owns the requesting workload.
    #[error("an operator does not approve a request of a workload they own")]
    OwnWorkload,
    /// The operator already approved.
    #[error("this operator has already approved this request")]
    AlreadyApproved,
    /// A deny needs a comment.
    #[error("a denial needs a comment")]
    CommentRequired,
    /// Nothing to revoke.
    #[error("only a pending or approved request can be revoked")]
    NotApproved,
    /// The request itself is not acceptable.
    #[error("{0}")]
    BadRequest(&'static str),
}

impl ApprovalRequest {
    /// A new pending request. `duration_asked` (`None`: the maximum) is
    /// capped at the elevation's maximum; a missing reason is refused if the
    /// elevation requires one.
    pub fn new(
        id: String,
        requester: Requester,
        scopes: Vec<Scope>,
        reason: Option<String>,
        duration_asked: Option<i64>,
        elevation: Elevation,
        now: i64,
    ) -> Result<Self, ApprovalError> {
        let reason = reason.filter(|r| !r.trim().is_empty());
        if reason.as_ref().is_some_and(|r| r.len() > MAX_TEXT_LEN) {
            return Err(ApprovalError::BadRequest(
                "the reason is longer than 1024 bytes",
            ));
        }
        if reason.as_deref().is_some_and(has_hidden_characters) {
            return Err(ApprovalError::BadRequest(
                "the reason must be one line of text, without control characters",
            ));
        }
        let duration_asked = duration_asked.unwrap_or(elevation.max_duration);
        if scopes.is_empty() {
            return Err(ApprovalError::BadRequest(
                "an elevation request names scopes",
            ));
        }
        if elevation.reason_required && reason.is_none() {
            return Err(ApprovalError::BadRequest(
                "this elevation requires a reason",
            ));
        }
        if duration_asked <= 0 {
            return Err(ApprovalError::BadRequest("the duration must be positive"));
        }
        let Requester {
            workload,
            client_id,
            job,
            step,
            audience,
        } = requester;
        Ok(Self {
            id,
            workload,
            client_id,
            job,
            step,
            audience,
            scopes,
            reason,
            duration_asked: duration_asked.min(elevation.max_duration),
            requested_at: now,
            expires_at: now.saturating_add(elevation.max_wait),
            elevation,
            approvals: Vec::new(),
            run_url: None,
            state: State::Pending,
        })
    }

    fn check_pending(&self, now: i64) -> Result<(), ApprovalError> {
        if self.state != State::Pending {
            return Err(ApprovalError::NotPending);
        }
        if now >= self.expires_at {
            return Err(ApprovalError::Expired);
        }
        Ok(())
    }

    fn check_operator(&self, operator: &Operator) -> Result<(), ApprovalError> {
        if operator.groups.is_disjoint(&self.elevation.approver_groups) {
            return Err(ApprovalError::NotAnApprover);
        }
        // Nobody approves their own request: the requesting workload's
        // owners, and an operator whose identity is the requester.
        if operator.owns.contains(&self.workload) || operator.name == self.workload {
            return Err(ApprovalError::OwnWorkload);
        }
        Ok(())
    }

    /// `operator` approves, granting at most `duration` seconds (`None`:
    /// what was asked). Returns the new state: still pending until the
    /// quorum of distinct operators is reached, then approved until now
    /// plus the shortest duration any approver granted.
    pub fn approve(
        &mut self,
        operator: &Operator,
        duration: Option<i64>,
        comment: Option<String>,
        now: i64,
    ) -> Result<&State, ApprovalError> {
        self.check_pending(now)?;
        self.check_operator(operator)?;
        check_text(comment.as_deref())?;
        if self.approvals.iter().any(|a| a.operator == operator.name) {
            return Err(ApprovalError::AlreadyApproved);
        }
        let duration = duration
            .unwrap_or(self.duration_asked)
            .clamp(1, self.duration_asked);
        self.approvals.push(Approval {
            operator: operator.name.clone(),
            at: now,
            duration,
            comment,
        });
        if self.approvals.len() >= self.elevation.quorum.max(1) {
            let shortest = self
                .approvals
                .iter()
                .map(|a| a.duration)
                .min()
                .unwrap_or(duration);
            self.state = State::Approved {
                until: now.saturating_add(shortest),
            };
        }
        Ok(&self.state)
    }

    /// `operator` denies: final, whatever approvals came before.
    pub fn deny(
        &mut self,
        operator: &Operator,
        comment: &str,
        now: i64,
    ) -> Result<(), ApprovalError> {
        self.check_pending(now)?;
        self.check_operator(operator)?;
        if comment.trim().is_empty() {
            return Err(ApprovalError::CommentRequired);
        }
        check_text(Some(comment))?;
        self.state = State::Denied {
            by: operator.name.clone(),
            comment: comment.to_owned(),
        };
        Ok(())
    }

    /// Revoke an approved request: tokens minted under it stop being
    /// valid (the broker revokes them), and no more are minted. A request
    /// still pending can be revoked too (withdrawn before its quorum).
    pub fn revoke(&mut self, by: &str, comment: Option<String>) -> Result<(), ApprovalError> {
        check_text(comment.as_deref())?;
        match self.state {
            State::Approved { .. } | State::Pending => {
                self.state = State::Revoked {
                    by: by.to_owned(),
                    comment,
                };
                Ok(())
            }
            _ => Err(ApprovalError::NotApproved),
        }
    }

    /// Move a request whose time is up to its final state: a pending one
    /// past its waiting time becomes [`State::Expired`], an approved one
    /// past its window [`State::Ended`]. Returns whether it changed.
    pub fn expire(&mut self, now: i64) -> bool {
        if !self.is_due(now) {
            return false;
        }
        self.state = match self.state {
            State::Pending => State::Expired,
            _ => State::Ended {
                reason: "the approval's window closed".into(),
            },
        };
        true
    }

    /// Whether [`Self::expire`] would change the request at `now`: pending
    /// past its waiting time, or approved past its window.
    pub fn is_due(&self, now: i64) -> bool {
        match self.state {
            State::Pending => now >= self.expires_at,
            State::Approved { until } => now >= until,
            _ => false,
        }
    }

    /// End a pending or approved request early (its job completed).
    /// Returns whether it changed.
    pub fn end(&mut self, reason: &str) -> bool {
        match self.state {
            State::Pending | State::Approved { .. } => {
                self.state = State::Ended {
                    reason: reason.to_owned(),
                };
                true
            }
            _ => false,
        }
    }

    /// Whether the request is over for good (nothing can change it).
    pub fn is_final(&self) -> bool {
        !matches!(self.state, State::Pending | State::Approved { .. })
    }

    /// Until when the request must be kept: a day past its waiting time
    /// or its window, whichever is later. A revoked approval's entry must
    /// outlive every token minted under it, which the window bounds.
    pub fn keep_until(&self) -> i64 {
        let window = self
            .requested_at
            .saturating_add(self.elevation.max_wait)
            .saturating_add(self.elevation.max_duration);
        self.expires_at.max(window).saturating_add(RETENTION_SECS)
    }

    /// The latest any token minted under this request can expire: the end
    /// of the longest window it could have had.
    pub fn latest_token_expiry(&self) -> i64 {
        self.expires_at.saturating_add(self.elevation.max_duration)
    }

    /// Whether the request is waiting and still may be decided.
    pub fn is_pending(&self, now: i64) -> bool {
        self.check_pending(now).is_ok()
    }

    /// The end of the approved window, if the request is approved and the
    /// window is open at `now`.
    pub fn open_until(&self, now: i64) -> Option<i64> {
        match self.state {
            State::Approved { until } if now < until => Some(until),
            _ => None,
        }
    }

    /// Whether a token for `who` (workload, client, job, step, audience)
    /// with elevated `scopes` may be minted under this approval at `now`:
    /// exactly the requester's workload, client, job, step and audience,
    /// every scope one that was approved, inside the window. Returns the
    /// window's end, which the token's `exp` must not pass.
    pub fn covers(&self, who: &Requester, scopes: &[Scope], now: i64) -> Option<i64> {
        let until = self.open_until(now)?;
        let approved = scopes.iter().all(|s| self.scopes.contains(s));
        (self.is_for(who) && approved).then_some(until)
    }

    /// Whether `who` is the one this request was made for (same workload,
    /// client, job, step and audience), whatever its state.
    pub fn is_for(&self, who: &Requester) -> bool {
        self.workload == who.workload
            && self.client_id == who.client_id
            && self.job == who.job
            && self.step == who.step
            && self.audience == who.audience
    }
}

/// Control characters (a forged second line) and the invisible formatting
/// ones (bidirectional overrides, zero-width characters) that make text
/// read differently from what it is.
fn has_hidden_characters(text: &str) -> bool {
    text.chars().any(|c| {
        c.is_control()
            || matches!(c,
                '\u{061C}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
    })
}

fn check_text(text: Option<&str>) -> Result<(), ApprovalError> {
    if text.is_some_and(|t| t.len() > MAX_TEXT_LEN) {
        return Err(ApprovalError::BadRequest("a comment is at most 1024 bytes"));
    }
    if text.is_some_and(has_hidden_characters) {
        return Err(ApprovalError::BadRequest(
            "a comment must be one line of text, without control characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn elevation(quorum: usize) -> Elevation {
        Elevation {
            approver_groups: ["sre".to_owned()].into(),
            quorum,
            max_duration: 1800,
            max_wait: 600,
            reason_required: true,
        }
    }

    fn operator(name: &str, owns: &[&str]) -> Operator {
        Operator {
            name: name.into(),
            groups: ["sre".to_owned()].into(),
            owns: owns.iter().map(|w| (*w).to_owned()).collect(),
        }
    }

    fn requester() -> Requester {
        Requester {
            workload: "deployer".into(),
            client_id: "deployer".into(),
            job: "job-7".into(),
            step: "deploy/prod".into(),
            audience: "https://k8s.example".into(),
        }
    }

    fn request(quorum: usize) -> ApprovalRequest {
        ApprovalRequest::new(
            "apr-1".into(),
            requester(),
            vec![Scope::parse("deploy:k8s/prod/web").unwrap()],
            Some("hotfix for INC-42".into()),
            Some(3600),
            elevation(quorum),
            1_000,
        )
        .unwrap()
    }

    #[test]
    fn every_state_survives_its_stored_form() {
        // The state is flattened into the request: none of its fields may
        // share a name with the request's (an ended request once wrote
        // `reason` twice, and could not be read back).
        let states = [
            State::Pending,
            State::Approved { until: 2_000 },
            State::Denied {
                by: "alice".into(),
                comment: "no".into(),
            },
            State::Revoked {
                by: "bob".into(),
                comment: None,
            },
            State::Expired,
            State::Ended {
                reason: "the approval's window closed".into(),
            },
        ];
        for state in states {
            let mut r = request(1);
            r.state = state;
            let stored = serde_json::to_string(&r).unwrap();
            let back: ApprovalRequest =
                serde_json::from_str(&stored).unwrap_or_else(|e| panic!("{stored}: {e}"));
            assert_eq!(back, r, "{stored}");
        }
    }

    #[test]
    fn a_quorum_of_two_distinct_operators_approves() {
        let mut r = request(2);
        assert_eq!(r.duration_asked, 1800, "capped at the maximum");
        let alice = operator("alice", &[]);
        assert_eq!(r.approve(&alice, None, None, 1_010), Ok(&State::Pending));
        assert_eq!(
            r.approve(&alice, None, None, 1_020),
            Err(ApprovalError::AlreadyApproved),
            "the same operator never counts twice"
        );
        let bob = operator("bob", &[]);
        // Bob shortens it: the shortest grant wins.
        assert_eq!(
            r.approve(&bob, Some(900), Some("ok".into()), 1_030),
            Ok(&State::Approved { until: 1_930 })
        );
        let scope = [Scope::parse("deploy:k8s/prod/web").unwrap()];
        let me = requester();
        assert_eq!(r.covers(&me, &scope, 1_100), Some(1_930));
        let other = |change: fn(&mut Requester)| {
            let mut who = requester();
            change(&mut who);
            who
        };
        for (who, what) in [
            (other(|w| w.job = "job-8".into()), "another job"),
            (other(|w| w.step = "deploy/stage".into()), "another step"),
            (
                other(|w| w.audience = "https://argo.example".into()),
                "another audience",
            ),
            (
                other(|w| w.workload = "intruder".into()),
                "another workload",
            ),
            (
                other(|w| w.client_id = "other-client".into()),
                "another client",
            ),
        ] {
            assert_eq!(r.covers(&who, &scope, 1_100), None, "{what}");
        }
        let more = [Scope::parse("deploy:k8s/prod/db").unwrap()];
        assert_eq!(r.covers(&me, &more, 1_100), None, "unapproved scope");
        assert_eq!(r.covers(&me, &scope, 1_930), None, "window over");
    }

    #[test]
    fn owners_and_outsiders_cannot_approve() {
        let mut r = request(1);
        assert_eq!(
            r.approve(&operator("carol", &["deployer"]), None, None, 1_010),
            Err(ApprovalError::OwnWorkload)
        );
        assert_eq!(
            r.approve(&operator("deployer", &[]), None, None, 1_010),
            Err(ApprovalError::OwnWorkload),
            "the requester approving itself"
        );
        let outsider = Operator {
            groups: ["finance".to_owned()].into(),
            ..operator("dave", &[])
        };
        assert_eq!(
            r.approve(&outsider, None, None, 1_010),
            Err(ApprovalError::NotAnApprover)
        );
        assert!(r.is_pending(1_010));
    }

    #[test]
    fn a_deny_is_final_and_requests_expire() {
        let mut r = request(2);
        r.approve(&operator("alice", &[]), None, None, 1_010)
            .unwrap();
        assert_eq!(
            r.deny(&operator("bob", &[]), "  ", 1_020),
            Err(ApprovalError::CommentRequired)
        );
        r.deny(&operator("bob", &[]), "not during the freeze", 1_020)
            .unwrap();
        assert_eq!(
            r.approve(&operator("erin", &[]), None, None, 1_030),
            Err(ApprovalError::NotPending)
        );
        let mut late = request(1);
        assert_eq!(
            late.approve(&operator("alice", &[]), None, None, 1_600),
            Err(ApprovalError::Expired)
        );
    }

    #[test]
    fn a_revoked_approval_covers_nothing() {
        let mut r = request(1);
        r.approve(&operator("alice", &[]), None, None, 1_010)
            .unwrap();
        let scope = [Scope::parse("deploy:k8s/prod/web").unwrap()];
        assert!(r.covers(&requester(), &scope, 1_020).is_some());
        r.revoke("alice", Some("done".into())).unwrap();
        assert_eq!(r.covers(&requester(), &scope, 1_020), None);
        assert_eq!(r.revoke("alice", None), Err(ApprovalError::NotApproved));
        assert!(r.is_final());
    }

    #[test]
    fn time_moves_requests_to_their_final_state() {
        let mut waiting = request(1);
        assert!(!waiting.expire(1_599), "still within max_wait");
        assert!(waiting.expire(1_600));
        assert_eq!(waiting.state, State::Expired);
        assert!(!waiting.expire(1_700), "only once");

        let mut approved = request(1);
        approved
            .approve(&operator("alice", &[]), Some(60), None, 1_010)
            .unwrap();
        assert!(!approved.expire(1_069));
        assert!(approved.expire(1_070));
        assert_eq!(approved.state.name(), "ended");
        assert!(approved.keep_until() >= approved.latest_token_expiry());

        let mut job_done = request(1);
        assert!(job_done.end("the job completed"));
        assert!(!job_done.end("again"));
        assert!(job_done.is_final());
    }

    #[test]
    fn requests_round_trip_through_json() {
        let mut r = request(2);
        r.approve(&operator("alice", &[]), Some(600), Some("ok".into()), 1_010)
            .unwrap();
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(r#""state":"pending""#), "{json}");
        let back: ApprovalRequest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        r.deny(&operator("bob", &[]), "no", 1_020).unwrap();
        let back: ApprovalRequest =
            serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(back.state, r.state);
    }

    #[test]
    fn reasons_and_comments_are_bounded_single_lines() {
        let ask = |reason: &str| {
            ApprovalRequest::new(
                "apr-3".into(),
                requester(),
                vec![Scope::parse("deploy:k8s/prod/web").unwrap()],
                Some(reason.into()),
                None,
                elevation(1),
                1_000,
            )
        };
        assert!(ask("hotfix").is_ok());
        assert!(ask("line one\n<!channel> line two").is_err());
        assert!(
            ask("deploy \u{202E}dorp\u{202C} only").is_err(),
            "a bidi override"
        );
        assert!(ask(&"x".repeat(MAX_TEXT_LEN + 1)).is_err());
        let mut r = request(1);
        assert!(matches!(
            r.deny(&operator("alice", &[]), "no\r\nforged: yes", 1_010),
            Err(ApprovalError::BadRequest(_))
        ));
        assert!(
            r.approve(&operator("alice", &[]), None, Some("x".repeat(2000)), 1_010)
                .is_err()
        );
        assert!(r.is_pending(1_010), "refused input changes nothing");
    }

    #[test]
    fn a_reason_is_required_when_the_elevation_says_so() {
        let made = ApprovalRequest::new(
            "apr-2".into(),
            requester(),
            vec![Scope::parse("deploy:k8s/prod/web").unwrap()],
            Some("   ".into()),
            Some(600),
            elevation(1),
            1_000,
        );
        assert_eq!(
            made,
            Err(ApprovalError::BadRequest(
                "this elevation requires a reason"
            ))
        );
    }
}
