//! The native `/v1/jobs` API.

pub use crate::oauth::JobRevocationResponse;

/// The path of the job revocation endpoint for `job`.
pub fn revoke_path(job: &str) -> String {
    format!("/v1/jobs/{job}/revoke")
}
