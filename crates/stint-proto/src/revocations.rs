//! The revocation feed (`GET /v1/revocations/stream`, server-sent events)
//! and its snapshot (`GET /v1/revocations/snapshot`).

use serde::{Deserialize, Serialize};

/// The feed's path.
pub const REVOCATION_STREAM_PATH: &str = "/v1/revocations/stream";
/// The snapshot's path.
pub const REVOCATION_SNAPSHOT_PATH: &str = "/v1/revocations/snapshot";

/// The SSE `event` of a revocation.
pub const EVENT_REVOCATION: &str = "revocation";
/// The SSE `event` sent first on every connection: the feed's epoch and
/// sequence number (data: [`FeedPosition`]).
pub const EVENT_READY: &str = "ready";
/// The SSE `event` that tells a client it missed events the broker no longer
/// has (too far behind, or the broker restarted): fetch the snapshot, then
/// reconnect without `Last-Event-ID`. The broker closes the stream after it.
pub const EVENT_RESYNC: &str = "resync";

/// One revocation, as the feed and the snapshot carry it. Exactly one of
/// the kinds' fields is set: `jti` (a token), `sub` and `job` (a job),
/// `approval` (every token minted under an approval), or `sub` and
/// `issued_before` (a workload's emergency stop).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationEvent {
    /// Its position in the feed (the SSE `id` is `EPOCH.SEQ`).
    pub seq: u64,
    /// `token`, `job`, `step`, `approval` or `workload`.
    pub kind: String,
    /// The revoked token's `jti`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// The workload whose job was revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    /// The revoked job (with `step`: only that step of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// The revoked step of `job` (a token's `step` claim).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// The revoked approval (tokens with this `elev`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<String>,
    /// For a stopped workload (`sub`): every token it was issued at or
    /// before this time (`iat`) is revoked, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_before: Option<i64>,
    /// Until when the entry matters (no token it covers lives longer),
    /// seconds since the epoch.
    pub until: i64,
}

impl RevocationEvent {
    /// An event of `kind` in force until `until`, its subject to fill in
    /// (`seq` 0: the broker assigns it when it publishes).
    pub fn new(kind: &str, until: i64) -> Self {
        Self {
            seq: 0,
            kind: kind.to_owned(),
            jti: None,
            sub: None,
            job: None,
            step: None,
            approval: None,
            issued_before: None,
            until,
        }
    }
}

/// Where the feed stands: its epoch (a new one at each broker start) and
/// the last sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeedPosition {
    /// The broker run the sequence numbers belong to.
    pub epoch: String,
    /// The last sequence number published (0: none yet).
    pub seq: u64,
}

/// Every revocation still in force, and the feed position it is current to:
/// reconnect with `Last-Event-ID: EPOCH.SEQ` to continue from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevocationSnapshot {
    /// The feed position.
    #[serde(flatten)]
    pub position: FeedPosition,
    /// The revocations (their `seq` is the snapshot's).
    pub revocations: Vec<RevocationEvent>,
}
