//! Stint's durable store.
//!
//! The broker answers every revocation question from memory
//! ([`stint_core::revocation::RevocationSet`]); the store is for durability
//! (an acknowledged revocation survives `kill -9`) and, with a shared
//! backend, for sharing between replicas. It also keeps the signing keys.
//!
//! Backends implement [`Store`] and must pass the suite in
//! [`conformance`] (feature `conformance`). The embedded default is
//! [`SqliteStore`]: one file, no server. [`PostgresStore`] keeps the same
//! schema in a PostgreSQL database (13 or later).

mod legacy;
pub mod pg_tls;
pub mod postgres;
mod sqlite;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

pub use postgres::{
    PostgresStore, PostgresStoreSettings, PostgresTls, StorePassword, StoreUrlError,
};
pub use sqlite::SqliteStore;

/// A target credential still `minting` this long after it was recorded is
/// an abandoned mint (far longer than any upstream call's timeouts let a
/// mint take): only then may another broker take it over.
pub const MINT_ABANDONED_AFTER_SECS: i64 = 120;

/// The schema version every backend writes (SQLite's `PRAGMA
/// user_version`, PostgreSQL's `stint_schema` row), so that the two can
/// never describe different schemas under one number.
pub const SCHEMA_VERSION: i64 = 10;

/// How long the change feed keeps a change, seconds: a replica that was
/// cut off from the store for longer loads everything again.
pub const CHANGE_RETENTION_SECS: i64 = 3600;

/// The change feed's notification channel (PostgreSQL `NOTIFY`).
pub const CHANGE_CHANNEL: &str = "stint_changes";

use async_trait::async_trait;
use std::fmt;
use stint_core::approval::ApprovalRequest;
use stint_core::revocation::{JobRevocation, StepRevocation, TokenRevocation, WorkloadStop};
use stint_core::status_list::StatusReference;
use stint_core::target_credential::{CredentialState, TargetCredential};
use thiserror::Error;

/// A change to what every broker sharing the store keeps in memory, as
/// the change feed carries it: each one is recorded in the same
/// transaction as the write it describes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Change {
    /// A token was revoked; `status` is its status list entry, if it has
    /// one (the broker that serves that list sets its status).
    Token {
        /// The revocation.
        revocation: TokenRevocation,
        /// The token's status list entry.
        status: Option<StatusReference>,
    },
    /// A job was revoked.
    Job {
        /// The revocation.
        revocation: JobRevocation,
    },
    /// A step of a job was revoked.
    Step {
        /// The revocation.
        revocation: StepRevocation,
    },
    /// A workload was stopped.
    WorkloadStopped {
        /// The stop.
        stop: WorkloadStop,
    },
    /// A stopped workload may mint again.
    WorkloadEnabled {
        /// The workload.
        workload: String,
        /// When.
        at: i64,
    },
    /// An approval request was made or changed state.
    Approval {
        /// The request as it now stands (boxed: it is much the largest
        /// change).
        request: Box<ApprovalRequest>,
        /// Its revision after this change.
        revision: u64,
    },
    /// The signing keys changed (a key was added, retired or deleted):
    /// read them again.
    SigningKeys,
}

/// A change, with its place in the change feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeRecord {
    /// Its sequence number: gap-free, in commit order, from 1.
    pub seq: u64,
    /// What changed.
    pub change: Change,
}

/// A change the audit log can carry in the transaction of its records
/// ([`Store::append_audit_with`]): a revocation, a workload stop or enable.
/// (Approval saves compare revisions and may be refused, and key changes
/// are several statements: they are stored on their own.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditedWrite {
    /// A token revoked, with its status list entry if it has one.
    Token(TokenRevocation, Option<StatusReference>),
    /// A job revoked.
    Job(JobRevocation),
    /// A step of a job revoked.
    Step(StepRevocation),
    /// A workload stopped.
    WorkloadStopped(WorkloadStop),
    /// A stopped workload enabled at `at`.
    WorkloadEnabled {
        /// The workload.
        workload: String,
        /// When.
        at: i64,
    },
}

impl AuditedWrite {
    /// The change the feed carries for this write.
    pub fn change(&self) -> Change {
        match self {
            Self::Token(revocation, status) => Change::Token {
                revocation: revocation.clone(),
                status: status.clone(),
            },
            Self::Job(revocation) => Change::Job {
                revocation: revocation.clone(),
            },
            Self::Step(revocation) => Change::Step {
                revocation: revocation.clone(),
            },
            Self::WorkloadStopped(stop) => Change::WorkloadStopped { stop: stop.clone() },
            Self::WorkloadEnabled { workload, at } => Change::WorkloadEnabled {
                workload: workload.clone(),
                at: *at,
            },
        }
    }
}

/// What [`Store::append_audit_with`] committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCommit {
    /// How many records were written: all of them, or none (their
    /// positions were taken: compare what the chain holds).
    pub written: u64,
    /// Each write's change feed sequence number, in order; empty when no
    /// record was written (then neither was any write: if the chain holds
    /// these very records, an earlier attempt committed both).
    pub seqs: Vec<u64>,
}

impl AuditCommit {
    /// Nothing written: the positions were taken.
    pub const NOTHING: Self = Self {
        written: 0,
        seqs: Vec::new(),
    };
}

/// Where the change feed stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangePosition {
    /// Random, chosen when the store was created: sequence numbers of
    /// another store (or of this one restored from an older backup, once
    /// an operator starts a new epoch) are not comparable.
    pub epoch: String,
    /// The last change's sequence number (0: none yet).
    pub seq: u64,
}

/// An approval request as stored, with its revision: every save names
/// the revision it replaces, so that two brokers deciding on one request
/// at once cannot both succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredApproval {
    /// The request.
    pub request: ApprovalRequest,
    /// 1 when made, one more at each save.
    pub revision: u64,
}

/// What [`Store::save_approval`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApprovalSaved {
    /// Saved: the request's new revision, and the change's sequence number.
    Saved {
        /// The new revision.
        revision: u64,
        /// The change feed's sequence number of this save.
        seq: u64,
    },
    /// The stored request is not at the revision the save replaces (another
    /// broker changed it first): nothing was written. Read it again and
    /// decide again.
    Conflict,
    /// An operator's vote is already recorded for this request (one vote
    /// per operator per request, however many brokers): nothing was
    /// written.
    AlreadyVoted,
}

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
    /// When the key began to sign; `None` while it is staged: published,
    /// so that verifiers have it before they meet it, and not yet signing
    /// ([`Store::activate_signing_key`]).
    pub activated_at: Option<i64>,
    /// When the key stopped signing (or, staged, was withdrawn), if it has.
    pub retired_at: Option<i64>,
}

impl fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("pkcs8", &"<redacted>")
            .field("created_at", &self.created_at)
            .field("activated_at", &self.activated_at)
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
    /// Record a revoked token (and its status list entry, for the change
    /// feed). Revoking the same `jti` again stores nothing new. Returns the
    /// change's sequence number, as every write the change feed carries
    /// does.
    async fn revoke_token(
        &self,
        revocation: &TokenRevocation,
        status: Option<&StatusReference>,
    ) -> Result<u64, StoreError>;

    /// Store `write` with its change, in a transaction of its own (the
    /// audit log is elsewhere): the method of its kind.
    async fn store_write(&self, write: &AuditedWrite) -> Result<u64, StoreError> {
        match write {
            AuditedWrite::Token(revoked, status) => {
                self.revoke_token(revoked, status.as_ref()).await
            }
            AuditedWrite::Job(job) => self.revoke_job(job).await,
            AuditedWrite::Step(step) => self.revoke_step(step).await,
            AuditedWrite::WorkloadStopped(stop) => self.stop_workload(stop).await,
            AuditedWrite::WorkloadEnabled { workload, at } => {
                self.enable_workload(workload, *at).await
            }
        }
    }

    /// Record a revoked job. Revoking it again keeps the first `revoked_at`
    /// and the later `until`.
    async fn revoke_job(&self, revocation: &JobRevocation) -> Result<u64, StoreError>;

    /// Record a revoked step of a job. Revoking it again keeps the later
    /// `until`.
    async fn revoke_step(&self, revocation: &StepRevocation) -> Result<u64, StoreError>;

    /// Every revocation still in force at `now` (seconds since the epoch).
    async fn live_revocations(&self, now: i64) -> Result<LiveRevocations, StoreError>;

    /// Delete revocations (and approval requests) that no longer matter at
    /// `now`, and changes older than [`CHANGE_RETENTION_SECS`]. Returns how
    /// many revocations and requests.
    async fn purge_expired(&self, now: i64) -> Result<u64, StoreError>;

    /// All signing keys, oldest first.
    async fn signing_keys(&self) -> Result<Vec<StoredKey>, StoreError>;

    /// Add a signing key.
    async fn insert_signing_key(&self, key: &StoredKey) -> Result<u64, StoreError>;

    /// Mark a key as retired at `at`; it stops signing but stays published
    /// until its last token has expired.
    async fn retire_signing_key(&self, kid: &str, at: i64) -> Result<u64, StoreError>;

    /// Make the staged key `kid` the one that signs from `at`: every other
    /// key not yet retired (the one signing until now, and any other
    /// staged key) is retired at `at`, in the same transaction, and one
    /// change records it all, so that every broker switches on the same
    /// change. `None` if `kid` is no longer staged (another broker
    /// activated it first, or it was retired): nothing is written.
    async fn activate_signing_key(&self, kid: &str, at: i64) -> Result<Option<u64>, StoreError>;

    /// Forget a retired key whose tokens have all expired.
    async fn delete_signing_key(&self, kid: &str) -> Result<u64, StoreError>;

    /// Record an approval request as it now stands, replacing `revision`
    /// of it (0: a new request), in one transaction with a row per new
    /// operator vote (unique per request and operator). Kept until its
    /// [`ApprovalRequest::keep_until`].
    async fn save_approval(
        &self,
        approval: &ApprovalRequest,
        revision: u64,
    ) -> Result<ApprovalSaved, StoreError>;

    /// One approval request, if it is kept.
    async fn approval(&self, id: &str) -> Result<Option<StoredApproval>, StoreError>;

    /// Every approval request still kept at `now`, oldest first.
    async fn approvals(&self, now: i64) -> Result<Vec<StoredApproval>, StoreError>;

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

    /// The status list `id` if it is still kept at `now`, with the chunks
    /// of entries that start at index `from` or later (a broker serving
    /// another broker's list reads what was written since it last looked,
    /// from the start of the last chunk it has, which may have grown).
    async fn status_list(
        &self,
        id: &str,
        from: u64,
        now: i64,
    ) -> Result<Option<StoredStatusList>, StoreError>;

    /// Record a workload's emergency stop (replacing an earlier one).
    async fn stop_workload(&self, stop: &WorkloadStop) -> Result<u64, StoreError>;

    /// Record that a stopped workload may mint again (its earlier tokens
    /// stay revoked).
    async fn enable_workload(&self, workload: &str, at: i64) -> Result<u64, StoreError>;

    /// The stops that still matter at `now`: not enabled again, or whose
    /// revoked tokens could still be alive.
    async fn workload_stops(&self, now: i64) -> Result<Vec<WorkloadStop>, StoreError>;

    /// Record a new target credential (state `minting`, before the upstream
    /// call), owned by the broker process `owner` (see
    /// [`Self::claim_target_credentials`]). Returns `false`, writing
    /// nothing, if its step token already has a credential for that target:
    /// one exchange per token and target.
    async fn insert_target_credential(
        &self,
        credential: &TargetCredential,
        owner: &str,
    ) -> Result<bool, StoreError>;

    /// With a shared store, each unfinished target credential has one
    /// owner, the broker process that destroys it: this says that `owner`
    /// is alive until `alive_until` (committed on its own, whatever the
    /// claim does), and makes it the owner of every unfinished credential
    /// whose owner is not alive at `now` (stopped, killed, cut off), which
    /// it returns; with `include_own`, also those it already owns (after a
    /// claim whose outcome it did not learn). A credential still `minting`
    /// is taken only once older than [`MINT_ABANDONED_AFTER_SECS`] (its
    /// mint may be under way). Concurrent claims never take one credential
    /// twice, nor wait on each other. The embedded store has one broker,
    /// which loads them all at start: it returns none.
    async fn claim_target_credentials(
        &self,
        owner: &str,
        alive_until: i64,
        now: i64,
        include_own: bool,
    ) -> Result<Vec<TargetCredential>, StoreError> {
        let _ = (owner, alive_until, now, include_own);
        Ok(Vec::new())
    }

    /// Say that `owner` owns nothing any more (a clean stop): the next
    /// claim of another broker takes what it leaves.
    async fn release_target_credentials(&self, owner: &str) -> Result<(), StoreError> {
        let _ = owner;
        Ok(())
    }

    /// Make `owner` the owner of target credential `id`, made from the step
    /// token `jti`, if it is `live` or `revoking`, whoever owned it (its
    /// token's holder revokes it through this broker), and return it;
    /// `None` if there is no such credential.
    async fn take_target_credential(
        &self,
        owner: &str,
        id: &str,
        jti: &str,
    ) -> Result<Option<TargetCredential>, StoreError> {
        let _ = owner;
        Ok(self
            .unfinished_target_credentials()
            .await?
            .into_iter()
            .find(|c| {
                c.id == id
                    && c.jti == jti
                    && matches!(c.state, CredentialState::Live | CredentialState::Revoking)
            }))
    }

    /// Whether `owner` still owns target credential `id` (another broker
    /// may have taken it): checked before each attempt to destroy it. On
    /// the embedded store, always.
    async fn owns_target_credential(&self, owner: &str, id: &str) -> Result<bool, StoreError> {
        let _ = (owner, id);
        Ok(true)
    }

    /// Replace the stored state of a target credential (by `id`), if the
    /// broker process `owner` still owns it: `Ok(false)` writes nothing
    /// (another broker took it over; with the embedded store, never). A
    /// credential not in the store is an error.
    async fn update_target_credential(
        &self,
        credential: &TargetCredential,
        owner: &str,
    ) -> Result<bool, StoreError>;

    /// The target credentials that may still exist upstream (`minting`,
    /// `live`, `revoking`) and those given up on (`irrevocable`), oldest
    /// first: what the revocation queue and the reconciler work from.
    async fn unfinished_target_credentials(&self) -> Result<Vec<TargetCredential>, StoreError>;

    /// Forget target credentials destroyed before `before` (their story is
    /// in the audit log). Returns how many.
    async fn purge_target_credentials(&self, before: i64) -> Result<u64, StoreError>;

    /// Whether the store is reachable and writable.
    async fn check(&self) -> Result<(), StoreError>;

    /// Whether other brokers may use this store at the same time (so that
    /// what this broker did not write may still be in progress elsewhere).
    fn shared(&self) -> bool {
        false
    }

    /// Where the change feed stands.
    async fn change_position(&self) -> Result<ChangePosition, StoreError>;

    /// Append `records` (audit log lines, each one hash-chained record) to
    /// the audit chain `chain` from its position `first` (0 for its first
    /// record), with `writes` (the changes they record), in one
    /// transaction: all durable when this returns, or none written. If a
    /// position is already written nothing is (see [`AuditCommit`]: compare
    /// what the chain holds). A store shared by several brokers keeps their
    /// audit logs, one chain per broker process, since a broker's own disk
    /// may be lost with it; the embedded store does not (its broker writes
    /// a file).
    async fn append_audit_with(
        &self,
        chain: &str,
        first: u64,
        records: &[String],
        writes: &[AuditedWrite],
    ) -> Result<AuditCommit, StoreError> {
        let _ = (chain, first, records, writes);
        Err(StoreError::Backend {
            operation: "append audit records",
            message: "this store does not keep the audit log".into(),
        })
    }

    /// The audit chains kept here, with how many records each holds,
    /// oldest first.
    async fn audit_chains(&self) -> Result<Vec<(String, u64)>, StoreError> {
        Ok(Vec::new())
    }

    /// Each audit chain's id, record count and last record.
    async fn audit_heads(&self) -> Result<Vec<(String, u64, String)>, StoreError> {
        Ok(Vec::new())
    }

    /// Up to `limit` records of audit chain `chain` from position `from`,
    /// in order.
    async fn audit_records(
        &self,
        chain: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let _ = (chain, from, limit);
        Ok(Vec::new())
    }

    /// The changes after `after`, oldest first, at most `limit`. A first
    /// change other than `after + 1` means the ones between were purged
    /// ([`CHANGE_RETENTION_SECS`]).
    async fn changes_since(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<ChangeRecord>, StoreError>;

    /// Wake `wake` whenever another process may have committed changes,
    /// until the store's notifications fail (then return the error; the
    /// caller reads by sequence anyway, and calls again). A store whose
    /// only writer is this process never returns.
    async fn watch_changes(&self, wake: &tokio::sync::Notify) -> Result<(), StoreError> {
        let _ = wake;
        std::future::pending().await
    }
}

/// A change's stored form.
pub(crate) fn change_json(change: &Change) -> Result<String, StoreError> {
    serde_json::to_string(change).map_err(|e| StoreError::Backend {
        operation: "record a change",
        message: e.to_string(),
    })
}

/// A change from its stored form.
pub(crate) fn change_from_json(seq: i64, body: &str) -> Result<ChangeRecord, StoreError> {
    let seq = u64::try_from(seq)
        .map_err(|_| StoreError::Corrupt(format!("a change with sequence number {seq}")))?;
    let change =
        legacy::read(body).map_err(|e| StoreError::Corrupt(format!("change {seq}: {e}")))?;
    Ok(ChangeRecord { seq, change })
}

/// The columns of `target_credentials`, in the order both backends read
/// and write them (a macro, so that `concat!` can build statements).
macro_rules! credential_columns {
    () => {
        "id, jti, sub, client_id, job, step, approval, issued_at, expires_at, target, kind,
         upstream_id, server, database, effective, state, trigger, attempts, next_attempt_at,
         last_error, created_at, finished_at, revoke_requested_at, sealed, grant_detail"
    };
}
pub(crate) use credential_columns;

/// A credential's grant as stored: JSON, or NULL.
pub(crate) fn grant_json(c: &TargetCredential) -> Result<Option<String>, StoreError> {
    c.grant
        .as_ref()
        .map(serde_json::to_string)
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("target credential grant: {e}")))
}

/// A backend's row, read by column index: what
/// [`read_credential`] needs of it.
pub(crate) trait ReadColumns {
    type Error;
    fn text(&self, index: usize) -> Result<String, Self::Error>;
    fn text_opt(&self, index: usize) -> Result<Option<String>, Self::Error>;
    fn int(&self, index: usize) -> Result<i64, Self::Error>;
    fn int_opt(&self, index: usize) -> Result<Option<i64>, Self::Error>;
    fn bytes_opt(&self, index: usize) -> Result<Option<Vec<u8>>, Self::Error>;
}

/// A `target_credentials` row ([`credential_columns`]) as read, before
/// its text columns are parsed (outside the backend's own error type).
pub(crate) struct CredentialRow {
    credential: TargetCredential,
    state: String,
    trigger: Option<String>,
    attempts: i64,
    grant: Option<String>,
}

pub(crate) fn read_credential<R: ReadColumns>(row: &R) -> Result<CredentialRow, R::Error> {
    Ok(CredentialRow {
        credential: TargetCredential {
            id: row.text(0)?,
            jti: row.text(1)?,
            sub: row.text(2)?,
            client_id: row.text(3)?,
            job: row.text(4)?,
            step: row.text(5)?,
            approval: row.text_opt(6)?,
            issued_at: row.int(7)?,
            expires_at: row.int(8)?,
            target: row.text(9)?,
            kind: row.text(10)?,
            upstream_id: row.text(11)?,
            server: row.text(12)?,
            database: row.text_opt(13)?,
            effective: row
                .text(14)?
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            // Parsed in `CredentialRow::finish`.
            state: CredentialState::Minting,
            trigger: None,
            attempts: 0,
            next_attempt_at: row.int(18)?,
            last_error: row.text_opt(19)?,
            created_at: row.int(20)?,
            finished_at: row.int_opt(21)?,
            revoke_requested_at: row.int_opt(22)?,
            sealed: row.bytes_opt(23)?,
            grant: None,
        },
        state: row.text(15)?,
        trigger: row.text_opt(16)?,
        attempts: row.int(17)?,
        grant: row.text_opt(24)?,
    })
}

impl CredentialRow {
    /// The credential, its state, trigger, attempts and grant parsed.
    pub(crate) fn finish(self) -> Result<TargetCredential, StoreError> {
        let mut credential = self.credential;
        credential.state = self.state.parse().map_err(StoreError::Corrupt)?;
        credential.trigger = self
            .trigger
            .map(|t| t.parse())
            .transpose()
            .map_err(StoreError::Corrupt)?;
        credential.attempts = u32::try_from(self.attempts).map_err(|_| {
            StoreError::Corrupt(format!(
                "target credential {} has {} attempts",
                credential.id, self.attempts
            ))
        })?;
        credential.grant = self
            .grant
            .map(|g| serde_json::from_str(&g))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("target credential grant: {e}")))?;
        Ok(credential)
    }
}
