//! Stint's durable store.
//!
//! The broker answers every revocation question from memory
//! ([`stint_core::revocation::RevocationSet`]); the store is for durability
//! (an acknowledged revocation survives `kill -9`) and, with a shared
//! backend, for sharing between replicas. It also keeps the signing keys.
//!
//! Backends implement [`Store`] and must pass the suite in
//! [`conformance`] (feature `conformance`). The embedded default is
//! [`SqliteStore`]: one file, no server.

mod sqlite;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

pub use sqlite::SqliteStore;

use async_trait::async_trait;
use std::fmt;
use stint_core::approval::ApprovalRequest;
use stint_core::revocation::{JobRevocation, StepRevocation, TokenRevocation, WorkloadStop};
use stint_core::target_credential::TargetCredential;
use thiserror::Error;

/// A store failure. Messages name the operation, never a key or token.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The database refused or failed an operation.
    #[error("store {operation} failed: {message}")]
    Backend {
        /// What was being done.
        operation: &'static str,
        /// The backend's message.
        message: String,
    },
    /// The store file could not be opened or prepared.
    #[error("cannot open the store at {path}: {message}")]
    Open {
        /// The path.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// Stored data that does not make sense (a corrupt row).
    #[error("store holds invalid data: {0}")]
    Corrupt(String),
}

/// A signing key as stored: the private key in PKCS#8, with its lifecycle.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredKey {
    /// The key id (RFC 7638 thumbprint).
    pub kid: String,
    /// The JWS algorithm, e.g. `ES256`.
    pub alg: String,
    /// The private key, PKCS#8 DER.
    pub pkcs8: Vec<u8>,
    /// When the key was created, seconds since the epoch.
    pub created_at: i64,
    /// When the key stopped signing, if it has.
    pub retired_at: Option<i64>,
}

impl fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("pkcs8", &"<redacted>")
            .field("created_at", &self.created_at)
            .field("retired_at", &self.retired_at)
            .finish()
    }
}

/// Everything revoked and not yet expired, as loaded at start-up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveRevocations {
    /// Revoked tokens whose `exp` is still ahead.
    pub tokens: Vec<TokenRevocation>,
    /// Revoked jobs whose entry is still in force.
    pub jobs: Vec<JobRevocation>,
    /// Revoked steps whose entry is still in force.
    pub steps: Vec<StepRevocation>,
}

/// A status list as stored.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredStatusList {
    /// The list id (the last segment of its URI).
    pub id: String,
    /// When the list started, seconds since the epoch.
    pub created_at: i64,
    /// The key of its entries' hashes; `None` for a list stored before
    /// entries were (schema 5), whose entries are unknown.
    pub key: Option<Vec<u8>>,
    /// Its entries, as written: (first index, bytes), by index.
    pub chunks: Vec<(u64, Vec<u8>)>,
}

impl fmt::Debug for StoredStatusList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredStatusList")
            .field("id", &self.id)
            .field("created_at", &self.created_at)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("chunks", &self.chunks.len())
            .finish()
    }
}

/// A durable store. Every write returns only once it is durable: after
/// `Ok`, the write survives a crash of the process and of the machine.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Record a revoked token. Revoking the same `jti` again is a no-op.
    async fn revoke_token(&self, revocation: &TokenRevocation) -> Result<(), StoreError>;

    /// Record a revoked job. Revoking it again keeps the first `revoked_at`
    /// and the later `until`.
    async fn revoke_job(&self, revocation: &JobRevocation) -> Result<(), StoreError>;

    /// Record a revoked step of a job. Revoking it again keeps the later
    /// `until`.
    async fn revoke_step(&self, revocation: &StepRevocation) -> Result<(), StoreError>;

    /// Every revocation still in force at `now` (seconds since the epoch).
    async fn live_revocations(&self, now: i64) -> Result<LiveRevocations, StoreError>;

    /// Delete revocations (and approval requests) that no longer matter at
    /// `now`. Returns how many.
    async fn purge_expired(&self, now: i64) -> Result<u64, StoreError>;

    /// All signing keys, oldest first.
    async fn signing_keys(&self) -> Result<Vec<StoredKey>, StoreError>;

    /// Add a signing key.
    async fn insert_signing_key(&self, key: &StoredKey) -> Result<(), StoreError>;

    /// Mark a key as retired at `at`; it stops signing but stays published
    /// until its last token has expired.
    async fn retire_signing_key(&self, kid: &str, at: i64) -> Result<(), StoreError>;

    /// Forget a retired key whose tokens have all expired.
    async fn delete_signing_key(&self, kid: &str) -> Result<(), StoreError>;

    /// Record an approval request as it now stands (inserted, or replacing
    /// the previous state of the same id). Kept until its
    /// [`ApprovalRequest::keep_until`].
    async fn save_approval(&self, approval: &ApprovalRequest) -> Result<(), StoreError>;

    /// Every approval request still kept at `now`, oldest first.
    async fn approvals(&self, now: i64) -> Result<Vec<ApprovalRequest>, StoreError>;

    /// Record a status list the broker started (its tokens point at it),
    /// with the key of its entries' hashes, kept until `expires_at`, when
    /// every token that can point at it has expired. Inserting a list id
    /// again changes nothing.
    async fn insert_status_list(
        &self,
        id: &str,
        created_at: i64,
        expires_at: i64,
        key: &[u8],
    ) -> Result<(), StoreError>;

    /// Record the entries of list `id` from index `first` on (opaque to the
    /// store). Writing the same `first` again keeps the longer of the two
    /// (a write that was cancelled may have landed, and is then written
    /// again with what followed it).
    async fn append_status_entries(
        &self,
        id: &str,
        first: u64,
        entries: &[u8],
    ) -> Result<(), StoreError>;

    /// The status lists still kept at `now`, oldest first, with their
    /// entries.
    async fn status_lists(&self, now: i64) -> Result<Vec<StoredStatusList>, StoreError>;

    /// Record a workload's emergency stop (replacing an earlier one).
    async fn stop_workload(&self, stop: &WorkloadStop) -> Result<(), StoreError>;

    /// Record that a stopped workload may mint again (its earlier tokens
    /// stay revoked).
    async fn enable_workload(&self, workload: &str, at: i64) -> Result<(), StoreError>;

    /// The stops that still matter at `now`: not enabled again, or whose
    /// revoked tokens could still be alive.
    async fn workload_stops(&self, now: i64) -> Result<Vec<WorkloadStop>, StoreError>;

    /// Record a new target credential (state `minting`, before the upstream
    /// call). Returns `false`, writing nothing, if its step token already
    /// has a credential for that target: one exchange per token and target.
    async fn insert_target_credential(
        &self,
        credential: &TargetCredential,
    ) -> Result<bool, StoreError>;

    /// Replace the stored state of a target credential (by `id`).
    async fn update_target_credential(
        &self,
        credential: &TargetCredential,
    ) -> Result<(), StoreError>;

    /// The target credentials that may still exist upstream (`minting`,
    /// `live`, `revoking`) and those given up on (`irrevocable`), oldest
    /// first: what the revocation queue and the reconciler work from.
    async fn unfinished_target_credentials(&self) -> Result<Vec<TargetCredential>, StoreError>;

    /// Forget target credentials destroyed before `before` (their story is
    /// in the audit log). Returns how many.
    async fn purge_target_credentials(&self, before: i64) -> Result<u64, StoreError>;

    /// Whether the store is reachable and writable.
    async fn check(&self) -> Result<(), StoreError>;
}
