//! The native `/v1/workloads` API: the emergency stop.

use serde::{Deserialize, Serialize};

/// The body of the success response of `POST /v1/workloads/{name}/stop`
/// and `POST /v1/workloads/{name}/enable`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadState {
    /// The workload.
    pub workload: String,
    /// Whether it is stopped (refused new tokens) now.
    pub stopped: bool,
    /// After a stop: every token issued up to this time (seconds since the
    /// epoch) is revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_revoked_before: Option<i64>,
}
