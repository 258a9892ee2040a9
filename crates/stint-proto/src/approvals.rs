//! The native approvals API (`/v1/approvals`) and the approval members of
//! a token error response.

use serde::{Deserialize, Serialize};

/// The path prefix of the approvals API.
pub const APPROVALS_PATH: &str = "/v1/approvals";

/// An approval request as operators (and the requesting job) see it.
/// Times are seconds since the epoch; durations are seconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalView {
    /// The request id (`apr-...`).
    pub id: String,
    /// `pending`, `approved`, `denied`, `revoked`, `expired` or `ended`.
    pub state: String,
    /// The workload that asked.
    pub workload: String,
    /// The connector (client id) it asked through.
    pub client_id: String,
    /// The job.
    pub job: String,
    /// The step, `workflow/step`.
    pub step: String,
    /// The audience the tokens are for.
    pub audience: String,
    /// The elevated scopes asked for: what an approval grants.
    pub scopes: Vec<String>,
    /// Why, in the requester's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The page of the CI run that asked, when its platform's ID token
    /// names it (GitHub Actions, GitLab CI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_url: Option<String>,
    /// The duration asked (already capped at the elevation's maximum).
    pub duration_asked: i64,
    /// The longest an approver may grant.
    pub max_duration: i64,
    /// When it was made.
    pub requested_at: i64,
    /// When it expires unless approved.
    pub expires_at: i64,
    /// The groups whose members may approve.
    pub approver_groups: Vec<String>,
    /// How many distinct operators must approve.
    pub approvals_required: usize,
    /// The approvals so far.
    pub approvals: Vec<ApprovalVote>,
    /// For an approved request: the end of its window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved_until: Option<i64>,
    /// Who denied or revoked it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    /// The denial's or revocation's comment, or why it ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// One operator's approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalVote {
    /// The operator.
    pub operator: String,
    /// When.
    pub at: i64,
    /// The duration they granted, seconds.
    pub duration: i64,
    /// What they said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// `GET /v1/approvals`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalList {
    /// Newest first.
    pub approvals: Vec<ApprovalView>,
}

/// The body of `POST /v1/approvals/{id}/approve`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApproveBody {
    /// Grant less than was asked: a duration like `15m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<String>,
    /// What the operator says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

/// The body of `POST /v1/approvals/{id}/deny` and `.../revoke` (a deny
/// needs its comment).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecisionBody {
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}
