//! The native `/v1/jobs` API.

pub use crate::oauth::JobRevocationResponse;

/// The path of the job revocation endpoint for `job`.
pub fn revoke_path(job: &str) -> String {
    format!("/v1/jobs/{job}/revoke")
}

/// The body of `POST /v1/jobs/{job}/steps/{step}/revoke`'s success
/// response.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StepRevocationResponse {
    /// The job.
    pub job: String,
    /// The step whose tokens were revoked.
    pub step: String,
    /// When the revocation took effect, RFC 3339.
    pub revoked_at: String,
}
