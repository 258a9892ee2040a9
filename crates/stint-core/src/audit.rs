//! Audit records, their hash chain, and the chain's signed checkpoints.
//!
//! The log is JSON Lines. Each record carries `seq` (0, 1, 2, ...) and
//! `prev`, the SHA-256 (hex) of the previous line's exact bytes; the first
//! record's `prev` is [`GENESIS`]. Editing a record changes its hash, which
//! breaks the next record's `prev`; removing or reordering records breaks
//! both `seq` and `prev`. [`verify`] walks a log and names the first broken
//! record.
//!
//! **One record, one line.** Records carry text from unauthenticated input
//! (an unverified `iss` as `federated_iss`, a client id, a justification).
//! [`AuditEntry::encode`] escapes, as `\uXXXX`, every character a
//! line-splitting reader could take for the end of a line, and every other
//! control character ([`must_escape`]): all of Unicode's `Cc` (C0, DEL, C1
//! with U+0085 NEL), U+2028 and U+2029, and the bidirectional formatting
//! characters that make a terminal show text out of order. A record is
//! therefore printable text with no separator but its final `\n`, whatever
//! its fields hold, and it decodes to the same strings.
//!
//! **Checkpoints.** What a chain alone cannot show is that its *tail* was
//! cut, rewritten or extended, since nothing follows the last record. So
//! the broker signs the chain's head with its signing key
//! ([`Chain::checkpoint`]): an `audit_checkpoint` record states the number of
//! records before it and the hash of the last one, in a compact JWS (`typ`
//! [`CHECKPOINT_TYP`], so that it can never pass for an access token, nor an
//! access token for it) made with the key named by `kid` (its RFC 7638
//! thumbprint), whose algorithm is the one pinned to that key. A
//! [`Verifier`] given the broker's public keys checks every checkpoint and
//! reports how many records follow the last one it could verify: those are
//! what someone able to write the file could have forged, edited or cut
//! undetected.
//!
//! Keys change. A `keys_rotated` record names the new key (`kid`) and the
//! broker follows it with a checkpoint signed by the outgoing key; once a
//! verified checkpoint covers it, the new key's own checkpoints verify with
//! the public key they embed (whose thumbprint must be that `kid`), even
//! after the key has left the broker's store.
//!
//! **Files.** The chain may span files: a rotated file ends with a
//! checkpoint, and the next file starts with an `audit_continued` record
//! that names the previous file and its head, and carries on its `seq` and
//! `prev`. A [`Verifier`] fed the files in order checks them as one chain.

use crate::jose::{JoseError, KeySet, SigningKey, UnverifiedJws, VerifyingKey, thumbprint};
use ring::rand::SecureRandom;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeSet, HashSet};
use std::io::{BufRead, Read as _};
use stint_proto::Jwk;
use thiserror::Error;

/// The `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// The longest record line [`verify`] reads.
pub const MAX_RECORD_LEN: usize = 1024 * 1024;
/// The JWS `typ` of a checkpoint signature.
pub const CHECKPOINT_TYP: &str = "stint-audit-checkpoint+jwt";

/// The audit record time format: RFC 3339, milliseconds, `Z`.
pub fn timestamp(now: chrono::DateTime<chrono::Utc>) -> String {
    now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A token was minted.
    TokenMinted,
    /// A token request was refused.
    TokenDenied,
    /// A token was revoked.
    TokenRevoked,
    /// A revocation request was refused.
    TokenRevocationDenied,
    /// Every token of a job was revoked.
    JobRevoked,
    /// A job revocation request was refused.
    JobRevocationDenied,
    /// Every token of one step of a job was revoked.
    StepRevoked,
    /// A policy was loaded (at start or on reload).
    PolicyLoaded,
    /// A policy reload was refused; the previous policy stays in force.
    PolicyRefused,
    /// The audit log was written again after a failed write (recorded by
    /// the readiness check, which probes the log only while it is failing).
    AuditResumed,
    /// A new signing key replaces the old one (`POST /v1/admin/keys/rotate`):
    /// `kid` names it. Written before the new key signs anything.
    KeysRotated,
    /// A key rotation request was refused (or could not be completed).
    KeyRotationDenied,
    /// A job asked for elevated scopes: an approval request was made.
    ApprovalRequested,
    /// An operator approved (`detail` says whether the quorum is reached).
    ApprovalGranted,
    /// An operator denied a request, for good.
    ApprovalDenied,
    /// A request expired unapproved, or an approval's window closed.
    ApprovalExpired,
    /// An operator revoked an approval (and every token minted under it).
    ApprovalRevoked,
    /// A request or approval ended with its job.
    ApprovalEnded,
    /// An approvals call was refused (not an operator, or the rules).
    ApprovalRefused,
    /// An operator stopped a workload: its tokens are revoked, it mints
    /// nothing until enabled.
    WorkloadStopped,
    /// An operator enabled a stopped workload again.
    WorkloadEnabled,
    /// A stop or enable call was refused.
    WorkloadStopRefused,
    /// The chain's head, signed with the broker's signing key
    /// (`checkpoint`).
    AuditCheckpoint,
    /// The first record of a file that continues the chain of a rotated
    /// file (`previous_file`, `previous_head`).
    AuditContinued,
    /// The other brokers' audit chains in a shared store as this broker
    /// read them (`detail`: `CHAIN@RECORDS:SHA256 ...`, the SHA-256 of each
    /// chain's last record then): a chain deleted or cut short after
    /// another vouched for it is found by `stintd verify-audit`.
    AuditPeers,
    /// A native credential was made on a target for a step token
    /// (`target` says which, and with what privileges).
    TargetCredentialMinted,
    /// A target-credential exchange was refused; nothing was made upstream
    /// (or what was begun was destroyed).
    TargetCredentialDenied,
    /// A target credential was destroyed upstream (`target.trigger` says
    /// why: the step token's revocation, its expiry, the job's end...).
    TargetCredentialRevoked,
    /// An attempt to destroy a target credential failed; it stays queued
    /// and is retried (`target.attempts`).
    TargetRevocationFailed,
    /// A target credential could not be destroyed after the last attempt:
    /// an operator must remove it by hand (`target.upstream_id`).
    TargetCredentialIrrevocable,
    /// The reconciler removed a credential it found upstream that no live
    /// step token accounts for.
    TargetCredentialReconciled,
    /// A federation token was signed for an OIDC target (`target` has its
    /// `credential_id` (the token's `jti`), `subject`, `audience`,
    /// `expires_at` and `kid`; `jti` is the step token's). Nothing is
    /// made upstream and nothing can be revoked there: the token is good
    /// until its `exp`.
    FederationTokenIssued,
    /// An operator signed in to the console (`operator`; the identity
    /// provider's `federated_iss` and `federated_sub`), or was refused
    /// (decision `deny`, `detail` says why) after the identity provider
    /// vouched for them.
    OperatorSignedIn,
}

/// Allowed or denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// The action happened.
    Allow,
    /// The action was refused.
    Deny,
}

/// One audit record before it is chained. The listed fields are always
/// written (as `null` when they do not apply), so that every line has the
/// same shape for whatever ingests the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When, RFC 3339 with milliseconds, UTC.
    pub time: String,
    /// What happened.
    pub event: EventKind,
    /// Allowed or denied.
    pub decision: Decision,
    /// A stable reason label (for denials, the metric label).
    pub reason: Option<String>,
    /// The workload.
    pub sub: Option<String>,
    /// The connector (client id).
    pub client_id: Option<String>,
    /// The job.
    pub job: Option<String>,
    /// The step.
    pub step: Option<String>,
    /// The target system (`aud`).
    pub aud: Option<String>,
    /// The scopes requested (denials) or granted (mints).
    pub scopes: Vec<String>,
    /// The token id.
    pub jti: Option<String>,
    /// The client's address.
    pub client_addr: Option<String>,
    /// The request id, also sent back as `x-request-id`.
    pub request_id: Option<String>,
    /// The workflow, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<String>,
    /// The token's expiry, when a token is involved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    /// The policy's SHA-256, for policy events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_sha256: Option<String>,
    /// Human-readable detail: the denial's description, a policy error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// For a federated identity: the trusted issuer's URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federated_iss: Option<String>,
    /// For a federated identity: the token's `sub`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federated_sub: Option<String>,
    /// For TLS client certificate authentication: the presented
    /// certificate's URI and DNS SANs (`URI:...`, `DNS:...`, space
    /// separated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_certificate: Option<String>,
    /// The approval request an event is about, or a token was minted under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval_id: Option<String>,
    /// The operator who acted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    /// The operator's comment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
    /// The front end an operator acted through, when not the HTTP API:
    /// `console`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// The requester's reason for an elevation.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub justification: Option<String>,
    /// A duration asked or granted, seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<i64>,
    /// For a counted record: how many refusals of this kind from this
    /// source (`client_addr`) it stands for, after the last one recorded
    /// in full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// For key events: the signing key's id (for `keys_rotated`, the new
    /// key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// For `audit_checkpoint`: the signed head.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Checkpoint>,
    /// For `audit_continued`: the name of the file this one continues.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_file: Option<String>,
    /// For `audit_continued`: that file's head, the hash of its last record
    /// (also this record's `prev`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_head: Option<String>,
    /// For target-credential events: the target, the upstream credential,
    /// its privileges and what became of it. Never its secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetAudit>,
    /// For `policy_loaded`: what each step of the policy allows,
    /// `workflow/step` to its scope patterns, so that the log alone says
    /// when a pattern was added (`stint policy suggest`) and when a step
    /// widened. Left out of a policy too large to list in one record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allows: Option<std::collections::BTreeMap<String, Vec<String>>>,
    /// For `policy_loaded`: each workflow's `review_by`, so that a step
    /// widened without the date moving is found from the log alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reviews: Option<std::collections::BTreeMap<String, String>>,
    /// For `policy_loaded`: the patterns marked for removal (`shadow`),
    /// `workflow/step` to them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadows: Option<std::collections::BTreeMap<String, Vec<String>>>,
    /// For `token_minted`: the scopes only a pattern marked for removal
    /// granted: the mint that removal would have refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub would_deny: Vec<String>,
}

/// What a target-credential record says about the upstream credential.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetAudit {
    /// The target's name in the policy.
    pub name: String,
    /// Its kind, e.g. `postgres`.
    pub kind: String,
    /// The upstream server, e.g. `db.internal:5432`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// The database (PostgreSQL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// The credential's id at Stint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_id: Option<String>,
    /// The upstream identifier (for PostgreSQL, the login role's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_id: Option<String>,
    /// The privileges the planner asked for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub planned: Vec<String>,
    /// The privileges the credential carries, as scopes (memberships
    /// expanded, implied schema usage included).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub effective: Vec<String>,
    /// When the credential stops working upstream, seconds since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// What set off its revocation: `token`, `job`, `step`, `workload`,
    /// `approval`, `expired`, `credential`, `interrupted_mint`,
    /// `reconciler`, `failed_mint`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    /// Revocation attempts made so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// `created`, `revoked`, `already_gone`, `failed`, `irrevocable`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    /// Sessions cut when it was revoked (PostgreSQL backends terminated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terminated: Option<u32>,
    /// What the upstream granted, as it answered (a GitHub installation,
    /// repositories, permissions and the token's hashes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grant: Option<crate::target_credential::UpstreamGrant>,
    /// Seconds between the step's end (the start of the revocation) and
    /// the credential's destruction upstream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exposure_secs: Option<i64>,
    /// The upstream's id of a failed request (GitHub's
    /// `x-github-request-id`), to quote to its support.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// A federation token's `sub`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// A federation token's `aud`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// The key id a federation token was signed with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
}

impl AuditEntry {
    /// An entry with only the time, event and decision set.
    pub fn new(time: String, event: EventKind, decision: Decision) -> Self {
        Self {
            time,
            event,
            decision,
            reason: None,
            sub: None,
            client_id: None,
            job: None,
            step: None,
            aud: None,
            scopes: Vec::new(),
            jti: None,
            client_addr: None,
            request_id: None,
            workflow: None,
            exp: None,
            policy_sha256: None,
            detail: None,
            federated_iss: None,
            federated_sub: None,
            client_certificate: None,
            approval_id: None,
            operator: None,
            comment: None,
            via: None,
            justification: None,
            duration: None,
            count: None,
            kid: None,
            checkpoint: None,
            previous_file: None,
            previous_head: None,
            target: None,
            allows: None,
            reviews: None,
            shadows: None,
            would_deny: Vec::new(),
        }
    }

    /// The first record of a file that continues the chain of the file
    /// now named `previous_file`, whose head is `previous_head`.
    pub fn continuation(time: String, previous_file: String, previous_head: String) -> Self {
        let mut entry = Self::new(time, EventKind::AuditContinued, Decision::Allow);
        entry.previous_file = Some(previous_file);
        entry.previous_head = Some(previous_head);
        entry
    }
}

/// A signed statement of the chain's state: `records` records came before
/// this one, and the last of them hashes to `head`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// The signing key's id: the RFC 7638 thumbprint of `jwk`.
    pub kid: String,
    /// The algorithm pinned to that key.
    pub alg: String,
    /// The public key, for a verifier that trusts `kid` through a
    /// `keys_rotated` record rather than through its own key set.
    pub jwk: Jwk,
    /// How many records precede the checkpoint (its own `seq`).
    pub records: u64,
    /// The hash of the record before it (its own `prev`).
    pub head: String,
    /// On a broker run's first checkpoint: the `seq` the run's first record
    /// got. Records between the previous checkpoint and this one were
    /// written by a run that stopped without signing them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opened_at: Option<u64>,
    /// The compact JWS over `{records, head, time, opened_at}`.
    pub jws: String,
}

/// What a checkpoint's JWS signs.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct CheckpointClaims {
    records: u64,
    head: String,
    time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    opened_at: Option<u64>,
}

/// Whether [`AuditEntry::encode`] writes `c` as a `\uXXXX` escape: every
/// control character (`Cc`: C0, DEL and C1, with U+0085), the line and
/// paragraph separators U+2028 and U+2029, and the bidirectional
/// formatting characters (U+061C, U+200E, U+200F, U+202A to U+202E, U+2066
/// to U+2069). serde_json already escapes C0; the rest it would write raw.
pub fn must_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{2028}'
                | '\u{2029}'
                | '\u{061C}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// serde_json's compact output, with [`must_escape`] characters escaped.
struct EscapingFormatter;

impl serde_json::ser::Formatter for EscapingFormatter {
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let mut rest = fragment;
        while let Some((at, c)) = rest.char_indices().find(|(_, c)| must_escape(*c)) {
            let (before, after) = rest.split_at(at);
            writer.write_all(before.as_bytes())?;
            // Every character escaped is in the Basic Multilingual Plane,
            // so one \uXXXX is its whole escape.
            write!(writer, "\\u{:04x}", u32::from(c))?;
            rest = after.get(c.len_utf8()..).unwrap_or_default();
        }
        writer.write_all(rest.as_bytes())
    }
}

/// Serialize `value` as one line of JSON: compact, with every character
/// [`must_escape`] names escaped.
pub fn to_json_line<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(512);
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, EscapingFormatter);
    value.serialize(&mut serializer)?;
    Ok(out)
}

/// An audit entry serialized as a JSON object, ready to be chained.
///
/// Encoding is the expensive part of a record; it happens wherever the
/// entry is made (in parallel, on the request's own task), so that the one
/// writer that must chain records in order only adds `seq` and `prev`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedEntry(Vec<u8>);

/// The longest `detail` a record keeps; longer text (a policy file with
/// thousands of errors, say) is cut at a character boundary and marked.
pub const MAX_DETAIL_LEN: usize = 16 * 1024;

/// Room a chained line needs beyond its entry: `seq`, `prev` and newline.
const CHAIN_OVERHEAD: usize = 128;

/// An entry too large to be a record.
#[derive(Debug, Error)]
pub enum EncodeError {
    /// Serialization failed.
    #[error("the audit entry could not be serialized: {0}")]
    Json(#[from] serde_json::Error),
    /// Even with `detail` cut, the record would exceed [`MAX_RECORD_LEN`].
    #[error("the audit entry is {0} bytes, over the record limit")]
    TooLarge(usize),
}

impl AuditEntry {
    /// Serialize the entry for [`Chain::append`], as one line whatever its
    /// fields hold (see [`must_escape`]). A `detail` over
    /// [`MAX_DETAIL_LEN`] is cut; an entry that would still make a record
    /// over [`MAX_RECORD_LEN`] (which [`verify`] and a restart would
    /// refuse) is an error, so the caller refuses its request.
    pub fn encode(&self) -> Result<EncodedEntry, EncodeError> {
        // An AuditEntry always serializes as an object with at least `time`,
        // so the bytes are `{"time":...}`: what `append` relies on.
        let bytes = match &self.detail {
            Some(detail) if detail.len() > MAX_DETAIL_LEN => {
                let mut cut = MAX_DETAIL_LEN;
                while !detail.is_char_boundary(cut) {
                    cut -= 1;
                }
                let mut bounded = self.clone();
                bounded.detail = Some(format!(
                    "{} [... {} more bytes cut]",
                    detail.get(..cut).unwrap_or_default(),
                    detail.len() - cut
                ));
                to_json_line(&bounded)?
            }
            _ => to_json_line(self)?,
        };
        if bytes.len() + CHAIN_OVERHEAD > MAX_RECORD_LEN {
            return Err(EncodeError::TooLarge(bytes.len()));
        }
        Ok(EncodedEntry(bytes))
    }
}

/// The chain's state: the next sequence number and the previous line's hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chain {
    next_seq: u64,
    prev: [u8; 32],
}

impl Chain {
    /// The state of an empty log.
    pub fn genesis() -> Self {
        Self {
            next_seq: 0,
            prev: [0; 32],
        }
    }

    /// The state after `last_line`, the final complete record of an
    /// existing log (without its newline).
    pub fn after(last_line: &[u8]) -> Result<Self, ChainError> {
        let link: Link =
            serde_json::from_slice(last_line).map_err(|_| ChainError::Malformed { line: 0 })?;
        Ok(Self {
            next_seq: link
                .seq
                .checked_add(1)
                .ok_or(ChainError::Malformed { line: 0 })?,
            prev: sha256(last_line),
        })
    }

    /// The sequence number the next record gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The hash of the last record (hex), or [`GENESIS`].
    pub fn head(&self) -> String {
        hex::encode(self.prev)
    }

    /// Chain `entry`: append its line, `{"seq":N,"prev":"HEX",` followed
    /// by the entry's own members and a newline, to `out`, and advance the
    /// state.
    pub fn append(&mut self, entry: &EncodedEntry, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(b"{\"seq\":");
        out.extend_from_slice(self.next_seq.to_string().as_bytes());
        out.extend_from_slice(b",\"prev\":\"");
        out.extend_from_slice(hex::encode(self.prev).as_bytes());
        out.extend_from_slice(b"\",");
        // The encoded entry is `{` + members + `}`: keep all but the `{`.
        out.extend_from_slice(entry.0.get(1..).unwrap_or_default());
        self.prev = sha256(out.get(start..).unwrap_or_default());
        self.next_seq += 1;
        out.push(b'\n');
    }

    /// A checkpoint record for the chain as it stands (to be appended
    /// next): the head and record count signed with `key` at `time`.
    /// `opened_at` is for a broker run's first checkpoint (see
    /// [`Checkpoint::opened_at`]).
    pub fn checkpoint(
        &self,
        time: String,
        opened_at: Option<u64>,
        key: &SigningKey,
        rng: &dyn SecureRandom,
    ) -> Result<AuditEntry, JoseError> {
        let claims = CheckpointClaims {
            records: self.next_seq,
            head: self.head(),
            time: time.clone(),
            opened_at,
        };
        let jws = key.sign_jwt(CHECKPOINT_TYP, &claims, rng)?;
        let mut entry = AuditEntry::new(time, EventKind::AuditCheckpoint, Decision::Allow);
        entry.kid = Some(key.kid().to_owned());
        entry.checkpoint = Some(Checkpoint {
            kid: key.kid().to_owned(),
            alg: key.alg().as_str().to_owned(),
            jwk: key.public_jwk().clone(),
            records: claims.records,
            head: claims.head,
            opened_at,
            jws,
        });
        Ok(entry)
    }
}

/// What verification reads of each record.
#[derive(Deserialize)]
struct Link {
    seq: u64,
    prev: String,
    #[serde(default)]
    time: Option<String>,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    decision: Option<String>,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    checkpoint: Option<Checkpoint>,
    #[serde(default)]
    previous_file: Option<String>,
    #[serde(default)]
    previous_head: Option<String>,
}

/// A verified log's summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSummary {
    /// How many records.
    pub records: u64,
    /// The last record's hash (hex), or [`GENESIS`] for an empty log.
    pub head: String,
}

/// The first problem found in a log. Lines are 1-based, within a file.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ChainError {
    /// The log could not be read.
    #[error("could not read the audit log: {0}")]
    Io(String),
    /// A line that is not a JSON record with `seq` and `prev`.
    #[error("line {line}: not an audit record")]
    Malformed {
        /// The line.
        line: u64,
    },
    /// A line over [`MAX_RECORD_LEN`].
    #[error("line {line}: record longer than {MAX_RECORD_LEN} bytes")]
    TooLong {
        /// The line.
        line: u64,
    },
    /// The last line has no newline: a write that never completed.
    #[error("line {line}: incomplete final record (no newline)")]
    Incomplete {
        /// The line.
        line: u64,
    },
    /// `seq` is not the previous one plus one: a record was removed,
    /// inserted or moved.
    #[error(
        "line {line}: expected record {expected}, found record {found}: records were removed, inserted or reordered"
    )]
    Sequence {
        /// The line.
        line: u64,
        /// The `seq` expected there.
        expected: u64,
        /// The `seq` found.
        found: u64,
    },
    /// `prev` is not the hash of the previous line: the previous record was
    /// edited (or this one was moved).
    #[error(
        "line {line} (record {seq}): prev does not match the hash of the record before it: that record was altered"
    )]
    BrokenLink {
        /// The line.
        line: u64,
        /// The record's `seq`.
        seq: u64,
    },
    /// A file after the first does not start with an `audit_continued`
    /// record, or such a record is not where a file starts, or does not
    /// name the head it continues.
    #[error(
        "line {line}: {why}: give the files of one chain, oldest first, each starting where the one before ends"
    )]
    BadContinuation {
        /// The line.
        line: u64,
        /// What is wrong.
        why: &'static str,
    },
    /// An `audit_checkpoint` record that does not state the chain before
    /// it, or cannot be checked at all.
    #[error("line {line}: bad checkpoint: {why}")]
    BadCheckpoint {
        /// The line.
        line: u64,
        /// What is wrong.
        why: &'static str,
    },
    /// A checkpoint whose key is trusted but whose signature does not
    /// verify, or signs something other than the chain before it.
    #[error(
        "line {line} (record {seq}): the checkpoint's signature does not verify with its key: the checkpoint, or the chain it signs, was forged"
    )]
    ForgedCheckpoint {
        /// The line.
        line: u64,
        /// The record's `seq`.
        seq: u64,
    },
}

/// Where a log that does not start at the genesis picks up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Continuation {
    /// The file its first record names as the previous one.
    pub file: String,
    /// That file's head.
    pub head: String,
}

/// What a [`Verifier`] found, once every file is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Files read.
    pub files: u64,
    /// Records read.
    pub records: u64,
    /// The first record's `seq` (0 unless the first file continues one
    /// not given).
    pub first_seq: u64,
    /// The last record's hash, or the start's `prev` if there were none.
    pub head: String,
    /// Set when the first file continues a file that was not given: the
    /// records before it are not checked.
    pub continues_from: Option<Continuation>,
    /// Checkpoints found.
    pub checkpoints: u64,
    /// Checkpoints whose signature was verified with a trusted key.
    pub verified_checkpoints: u64,
    /// Checkpoints signed by a key the verifier does not know (their
    /// statement of the chain is consistent, their signature unchecked).
    pub unverified_checkpoints: u64,
    /// A few of those unknown keys' ids.
    pub unknown_kids: Vec<String>,
    /// The `seq` of the last verified checkpoint.
    pub last_verified_checkpoint: Option<u64>,
    /// Records after the last verified checkpoint (all of them, if none
    /// verified): nothing vouches for them but the chain, which whoever can
    /// write the file can extend or rewrite.
    pub unsigned: u64,
    /// Records a broker run wrote and never signed (it stopped without a
    /// checkpoint: a crash, `kill -9`, or records added while no broker
    /// ran); a later run's checkpoint covers them without vouching for
    /// who wrote them.
    pub adopted: u64,
}

/// The most unknown key ids a report lists.
const MAX_UNKNOWN_KIDS: usize = 8;

/// Checks a chain, file by file, with its checkpoints.
#[derive(Debug)]
pub struct Verifier {
    trusted: KeySet,
    /// Keys named by `keys_rotated` records that a verified checkpoint
    /// covers.
    vouched: HashSet<String>,
    /// Keys named by `keys_rotated` records after the last verified
    /// checkpoint.
    pending: Vec<String>,
    chain: Chain,
    started: bool,
    report: VerifyReport,
    unknown: BTreeSet<String>,
    last_checkpoint: Option<u64>,
}

impl Verifier {
    /// A verifier that trusts checkpoints signed by `trusted` (the broker's
    /// public keys). With no keys, every chain link is still checked, and
    /// every checkpoint's statement of the chain, but no signature.
    pub fn new(trusted: KeySet) -> Self {
        Self {
            trusted,
            vouched: HashSet::new(),
            pending: Vec::new(),
            chain: Chain::genesis(),
            started: false,
            report: VerifyReport {
                files: 0,
                records: 0,
                first_seq: 0,
                head: GENESIS.to_owned(),
                continues_from: None,
                checkpoints: 0,
                verified_checkpoints: 0,
                unverified_checkpoints: 0,
                unknown_kids: Vec::new(),
                last_verified_checkpoint: None,
                unsigned: 0,
                adopted: 0,
            },
            unknown: BTreeSet::new(),
            last_checkpoint: None,
        }
    }

    /// Read the next file of the chain. The first file starts at the
    /// genesis or with an `audit_continued` record; every later one must
    /// start with an `audit_continued` record that carries on where the file
    /// before ended. Lines in an error count from this file's start.
    pub fn file(&mut self, reader: impl BufRead) -> Result<(), ChainError> {
        self.file_each(reader, |_| {})
    }

    /// [`Self::file`], handing each record to `each` once its link is
    /// checked (a reader that needs the records, verified, in one pass).
    pub fn file_each(
        &mut self,
        mut reader: impl BufRead,
        mut each: impl FnMut(&[u8]),
    ) -> Result<(), ChainError> {
        self.begin_file();
        let mut line = Vec::new();
        let mut number: u64 = 0;
        loop {
            line.clear();
            let read = reader
                .by_ref()
                .take(MAX_RECORD_LEN as u64 + 1)
                .read_until(b'\n', &mut line)
                .map_err(|e| ChainError::Io(e.to_string()))?;
            if read == 0 {
                break;
            }
            number += 1;
            if line.last() != Some(&b'\n') {
                return Err(if line.len() > MAX_RECORD_LEN {
                    ChainError::TooLong { line: number }
                } else {
                    ChainError::Incomplete { line: number }
                });
            }
            line.pop();
            self.record(&line, number)?;
            each(&line);
        }
        Ok(())
    }

    /// Begin the next file of the chain, to be given line by line with
    /// [`Self::line`] (a chain read from a database, a batch at a time):
    /// the rules of [`Self::file`] hold.
    pub fn begin_file(&mut self) {
        self.report.files += 1;
    }

    /// Line `number` (from 1 in its file) of the file begun last: one
    /// record, without its newline.
    pub fn line(&mut self, bytes: &[u8], number: u64) -> Result<(), ChainError> {
        if bytes.len() > MAX_RECORD_LEN {
            return Err(ChainError::TooLong { line: number });
        }
        self.record(bytes, number)
    }

    fn record(&mut self, bytes: &[u8], number: u64) -> Result<(), ChainError> {
        let link: Link =
            serde_json::from_slice(bytes).map_err(|_| ChainError::Malformed { line: number })?;
        let event = link.event.as_deref();
        let continued = event == Some("audit_continued");
        let bad_continuation = |why| ChainError::BadContinuation { line: number, why };
        if continued {
            if number != 1 {
                return Err(bad_continuation(
                    "an audit_continued record in the middle of a file",
                ));
            }
            if link.previous_file.is_none() || link.previous_head.as_ref() != Some(&link.prev) {
                return Err(bad_continuation(
                    "the audit_continued record does not name the head it continues",
                ));
            }
        } else if number == 1 && self.started {
            return Err(bad_continuation(
                "this file does not continue the chain of the file before",
            ));
        }
        if !self.started {
            self.started = true;
            if continued {
                // The first file picks up a chain whose earlier files were
                // not given: start from what it says.
                let mut prev = [0u8; 32];
                hex::decode_to_slice(&link.prev, &mut prev)
                    .map_err(|_| ChainError::Malformed { line: number })?;
                self.chain = Chain {
                    next_seq: link.seq,
                    prev,
                };
                self.report.first_seq = link.seq;
                self.report.continues_from = Some(Continuation {
                    file: link.previous_file.clone().unwrap_or_default(),
                    head: link.prev.clone(),
                });
            }
        }
        if link.seq != self.chain.next_seq {
            return Err(ChainError::Sequence {
                line: number,
                expected: self.chain.next_seq,
                found: link.seq,
            });
        }
        if link.prev != self.chain.head() {
            return Err(ChainError::BrokenLink {
                line: number,
                seq: link.seq,
            });
        }
        match (event, &link.checkpoint) {
            (Some("audit_checkpoint"), Some(checkpoint)) => {
                self.checkpoint(&link, checkpoint, number)?;
            }
            (Some("audit_checkpoint"), None) => {
                return Err(ChainError::BadCheckpoint {
                    line: number,
                    why: "an audit_checkpoint record without its checkpoint",
                });
            }
            (_, Some(_)) => {
                return Err(ChainError::BadCheckpoint {
                    line: number,
                    why: "a checkpoint on a record that is not an audit_checkpoint",
                });
            }
            (Some("keys_rotated"), None) if link.decision.as_deref() == Some("allow") => {
                if let Some(kid) = &link.kid {
                    self.pending.push(kid.clone());
                }
            }
            _ => {}
        }
        self.chain = Chain {
            next_seq: self.chain.next_seq + 1,
            prev: sha256(bytes),
        };
        self.report.records += 1;
        Ok(())
    }

    fn checkpoint(
        &mut self,
        link: &Link,
        checkpoint: &Checkpoint,
        number: u64,
    ) -> Result<(), ChainError> {
        let bad = |why| ChainError::BadCheckpoint { line: number, why };
        if checkpoint.records != link.seq || checkpoint.head != link.prev {
            return Err(bad("it does not state the chain before it"));
        }
        if thumbprint(&checkpoint.jwk.key) != checkpoint.kid
            || checkpoint
                .jwk
                .kid
                .as_ref()
                .is_some_and(|kid| *kid != checkpoint.kid)
        {
            return Err(bad("its kid is not its key's thumbprint"));
        }
        let mut jwk = checkpoint.jwk.clone();
        jwk.kid = Some(checkpoint.kid.clone());
        let embedded = VerifyingKey::from_jwk(&jwk).map_err(|_| bad("its key is unusable"))?;
        if embedded.alg().as_str() != checkpoint.alg {
            return Err(bad("its alg is not its key's algorithm"));
        }
        let jws = UnverifiedJws::parse(&checkpoint.jws)
            .map_err(|_| bad("its signature is not a compact JWS"))?;
        if jws.header().typ.as_deref() != Some(CHECKPOINT_TYP)
            || jws.header().kid.as_deref() != Some(checkpoint.kid.as_str())
        {
            return Err(bad("its JWS is not a checkpoint signature by its key"));
        }
        if let Some(opened_at) = checkpoint.opened_at {
            let from = self
                .last_checkpoint
                .map_or(self.report.first_seq, |seq| seq + 1);
            if opened_at > link.seq || (self.last_checkpoint.is_some() && opened_at < from) {
                return Err(bad(
                    "it says its broker run started where it could not have",
                ));
            }
            self.report.adopted += opened_at.saturating_sub(from);
        }
        self.last_checkpoint = Some(link.seq);
        self.report.checkpoints += 1;

        let key = match self.trusted.get(&checkpoint.kid) {
            Some(key) => Some(key),
            None if self.vouched.contains(&checkpoint.kid) => Some(&embedded),
            None => None,
        };
        let Some(key) = key else {
            self.report.unverified_checkpoints += 1;
            if self.unknown.len() < MAX_UNKNOWN_KIDS {
                self.unknown.insert(checkpoint.kid.clone());
            }
            return Ok(());
        };
        let forged = ChainError::ForgedCheckpoint {
            line: number,
            seq: link.seq,
        };
        let payload = jws.verified_payload_with(key).map_err(|_| forged.clone())?;
        let claims: CheckpointClaims =
            serde_json::from_slice(&payload).map_err(|_| forged.clone())?;
        let stated = CheckpointClaims {
            records: link.seq,
            head: link.prev.clone(),
            time: link.time.clone().unwrap_or_default(),
            opened_at: checkpoint.opened_at,
        };
        if claims != stated {
            return Err(forged);
        }
        self.report.verified_checkpoints += 1;
        self.report.last_verified_checkpoint = Some(link.seq);
        self.vouched.extend(self.pending.drain(..));
        Ok(())
    }

    /// What was found so far.
    pub fn report(&self) -> VerifyReport {
        let mut report = self.report.clone();
        report.head = self.chain.head();
        report.unknown_kids = self.unknown.iter().cloned().collect();
        report.unsigned = match report.last_verified_checkpoint {
            Some(seq) => self.chain.next_seq.saturating_sub(seq + 1),
            None => report.records,
        };
        report
    }
}

/// Walk a log from its first record and check every link, and every
/// checkpoint's statement of the chain (not its signature: see
/// [`Verifier`]). A log that starts with an `audit_continued` record is
/// checked from there.
pub fn verify(reader: impl BufRead) -> Result<ChainSummary, ChainError> {
    let mut verifier = Verifier::new(KeySet::new());
    verifier.file(reader)?;
    let report = verifier.report();
    Ok(ChainSummary {
        records: report.records,
        head: report.head,
    })
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u32) -> AuditEntry {
        let mut e = AuditEntry::new(
            format!("2026-11-23T10:00:{i:02}.000Z"),
            EventKind::TokenMinted,
            Decision::Allow,
        );
        e.sub = Some("demo-job".into());
        e.scopes = vec![format!("read:demo/{i}")];
        e
    }

    fn log_of(n: u32) -> Vec<u8> {
        let mut chain = Chain::genesis();
        let mut out = Vec::new();
        for i in 0..n {
            chain.append(&entry(i).encode().unwrap(), &mut out);
        }
        out
    }

    fn lines(log: &[u8]) -> Vec<Vec<u8>> {
        log.split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(<[u8]>::to_vec)
            .collect()
    }

    fn join(lines: &[Vec<u8>]) -> Vec<u8> {
        let mut out = Vec::new();
        for l in lines {
            out.extend_from_slice(l);
            out.push(b'\n');
        }
        out
    }

    #[test]
    fn a_long_detail_is_cut_and_an_oversized_entry_refused() {
        let mut e = entry(0);
        // Three-byte characters: 16384 is not a character boundary, so the
        // cut must step back to one.
        e.detail = Some("€".repeat(MAX_DETAIL_LEN));
        let encoded = e.encode().unwrap();
        let mut chain = Chain::genesis();
        let mut out = Vec::new();
        chain.append(&encoded, &mut out);
        let record: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let detail = record["detail"].as_str().unwrap();
        assert!(detail.len() < MAX_DETAIL_LEN + 64, "{}", detail.len());
        let kept = MAX_DETAIL_LEN - MAX_DETAIL_LEN % 3;
        let cut = 3 * MAX_DETAIL_LEN - kept;
        assert!(detail.starts_with(&"€".repeat(kept / 3)));
        assert!(detail.ends_with(&format!("€ [... {cut} more bytes cut]")));
        assert_eq!(verify(&out[..]).unwrap().records, 1);

        let mut huge = entry(1);
        huge.scopes = vec!["x".repeat(MAX_RECORD_LEN)];
        assert!(matches!(huge.encode(), Err(EncodeError::TooLarge(_))));
    }

    #[test]
    fn an_untouched_log_verifies() {
        let log = log_of(5);
        let summary = verify(&log[..]).unwrap();
        assert_eq!(summary.records, 5);
        let last = lines(&log).pop().unwrap();
        assert_eq!(summary.head, hex::encode(sha256(&last)));
        assert_eq!(
            verify(&b""[..]).unwrap(),
            ChainSummary {
                records: 0,
                head: GENESIS.into()
            }
        );
    }

    #[test]
    fn records_have_the_documented_fields() {
        let log = log_of(1);
        let value: serde_json::Value = serde_json::from_slice(&lines(&log)[0]).unwrap();
        for field in [
            "seq",
            "prev",
            "time",
            "event",
            "decision",
            "reason",
            "sub",
            "client_id",
            "job",
            "step",
            "aud",
            "scopes",
            "jti",
            "client_addr",
            "request_id",
        ] {
            assert!(value.get(field).is_some(), "missing {field}");
        }
        assert_eq!(value["prev"], GENESIS);
        assert_eq!(value["event"], "token_minted");
        // seq and prev come first, then the entry's members in order.
        let line = String::from_utf8(lines(&log)[0].clone()).unwrap();
        assert!(
            line.starts_with(&format!(r#"{{"seq":0,"prev":"{GENESIS}","time":"#)),
            "{line}"
        );
        // And the line is exactly what serializing the chained record gives.
        let mut expected = serde_json::Map::new();
        expected.insert("seq".into(), serde_json::json!(0));
        expected.insert("prev".into(), serde_json::json!(GENESIS));
        if let serde_json::Value::Object(members) = serde_json::to_value(entry(0)).unwrap() {
            expected.extend(members);
        }
        assert_eq!(value, serde_json::Value::Object(expected));
    }

    #[test]
    fn an_edited_record_is_caught() {
        let mut l = lines(&log_of(5));
        l[2] = String::from_utf8(l[2].clone())
            .unwrap()
            .replace("read:demo/2", "admin:prod/all")
            .into_bytes();
        assert_eq!(
            verify(&join(&l)[..]),
            Err(ChainError::BrokenLink { line: 4, seq: 3 })
        );
    }

    #[test]
    fn a_removed_record_is_caught() {
        let mut l = lines(&log_of(5));
        l.remove(1);
        assert_eq!(
            verify(&join(&l)[..]),
            Err(ChainError::Sequence {
                line: 2,
                expected: 1,
                found: 2
            })
        );
    }

    #[test]
    fn reordered_records_are_caught() {
        let mut l = lines(&log_of(5));
        l.swap(1, 3);
        assert_eq!(
            verify(&join(&l)[..]),
            Err(ChainError::Sequence {
                line: 2,
                expected: 1,
                found: 3
            })
        );
    }

    #[test]
    fn a_renumbered_forgery_is_caught_by_the_hash() {
        // Remove record 1 and renumber the rest: seq is consistent again,
        // but record 2's prev is the hash of record 1, not of record 0.
        let mut l = lines(&log_of(4));
        l.remove(1);
        for (i, line) in l.iter_mut().enumerate() {
            let mut v: serde_json::Value = serde_json::from_slice(line).unwrap();
            v["seq"] = serde_json::json!(i);
            *line = serde_json::to_vec(&v).unwrap();
        }
        assert!(matches!(
            verify(&join(&l)[..]),
            Err(ChainError::BrokenLink { line: 2, .. })
        ));
    }

    #[test]
    fn a_cut_tail_or_edited_last_record_changes_the_head() {
        let log = log_of(5);
        let full = verify(&log[..]).unwrap();
        let mut l = lines(&log);
        l.pop();
        let cut = verify(&join(&l)[..]).unwrap();
        assert_ne!(cut.head, full.head, "compare heads to detect truncation");
        let mut l = lines(&log);
        l[4] = String::from_utf8(l[4].clone())
            .unwrap()
            .replace("demo-job", "someone")
            .into_bytes();
        assert_ne!(verify(&join(&l)[..]).unwrap().head, full.head);
    }

    #[test]
    fn incomplete_and_garbage_lines_are_caught() {
        let mut log = log_of(2);
        log.extend_from_slice(b"{\"seq\":2");
        assert_eq!(verify(&log[..]), Err(ChainError::Incomplete { line: 3 }));
        assert_eq!(
            verify(&b"not json\n"[..]),
            Err(ChainError::Malformed { line: 1 })
        );
    }

    #[test]
    fn resuming_continues_the_chain() {
        let log = log_of(3);
        let last = lines(&log).pop().unwrap();
        let mut chain = Chain::after(&last).unwrap();
        assert_eq!(chain.next_seq(), 3);
        let mut more = log.clone();
        chain.append(&entry(3).encode().unwrap(), &mut more);
        assert_eq!(verify(&more[..]).unwrap().records, 4);
    }

    /// Every byte sequence a line-splitting reader might take for the end
    /// of a line: `\n`, `\r`, VT, FF, FS, GS, RS, NEL, LS, PS.
    fn separators(line: &[u8]) -> Vec<String> {
        let text = std::str::from_utf8(line).unwrap();
        text.chars()
            .filter(|c| {
                matches!(
                    c,
                    '\n' | '\r' | '\u{0b}' | '\u{0c}' | '\u{1c}'
                        ..='\u{1e}' | '\u{85}' | '\u{2028}' | '\u{2029}'
                )
            })
            .map(|c| format!("U+{:04X}", u32::from(c)))
            .collect()
    }

    #[test]
    fn unauthenticated_text_cannot_split_a_record() {
        // What an unverified `iss` could carry: every kind of line break, C1
        // controls and a right-to-left override.
        let hostile = "https://idp.example\u{2028}{\"seq\":9}\u{2029}x\u{85}y\r\nz\u{0b}\u{0c}\u{1c}\u{1d}\u{1e}\u{7f}\u{9b}\u{202e}gpj.exe";
        let mut e = entry(0);
        e.federated_iss = Some(hostile.to_owned());
        e.client_id = Some(hostile.to_owned());
        e.scopes = vec![hostile.to_owned()];
        let mut out = Vec::new();
        Chain::genesis().append(&e.encode().unwrap(), &mut out);
        let line = &out[..out.len() - 1];
        assert_eq!(separators(line), Vec::<String>::new());
        let text = std::str::from_utf8(line).unwrap();
        assert!(text.chars().all(|c| !must_escape(c)), "{text}");
        assert!(text.contains(r"\u2028") && text.contains(r"\u0085") && text.contains(r"\u202e"));
        // Python's str.splitlines() and JavaScript both see one line.
        assert_eq!(text.lines().count(), 1);
        // It decodes to the same strings, and the chain holds.
        let back: AuditEntry = serde_json::from_slice(line).unwrap();
        assert_eq!(back.federated_iss.as_deref(), Some(hostile));
        assert_eq!(verify(&out[..]).unwrap().records, 1);
    }

    fn any_text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::prelude::*;
        // Any character at all, weighted toward the troublesome ones.
        let special = prop::sample::select(vec![
            '\n', '\r', '\u{0}', '\u{0b}', '\u{0c}', '\u{1c}', '\u{1e}', '\u{7f}', '\u{85}',
            '\u{9f}', '\u{2028}', '\u{2029}', '\u{202e}', '\u{2066}', '"', '\\', '\u{feff}',
        ]);
        prop::collection::vec(prop_oneof![any::<char>(), special], 0..40)
            .prop_map(|chars| chars.into_iter().collect())
    }

    proptest::proptest! {
        #[test]
        fn no_encoded_record_contains_a_line_separator(
            texts in proptest::collection::vec(any_text(), 12),
        ) {
            let mut e = entry(0);
            let mut texts = texts.into_iter();
            let mut next = || texts.next();
            e.reason = next();
            e.sub = next();
            e.client_id = next();
            e.job = next();
            e.aud = next();
            e.detail = next();
            e.federated_iss = next();
            e.federated_sub = next();
            e.client_certificate = next();
            e.justification = next();
            e.comment = next();
            e.scopes = next().into_iter().collect();
            let mut out = Vec::new();
            let mut chain = Chain::genesis();
            chain.append(&e.encode().unwrap(), &mut out);
            chain.append(&e.encode().unwrap(), &mut out);
            // Exactly two newlines: each record's own.
            proptest::prop_assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 2);
            for line in lines(&out) {
                proptest::prop_assert_eq!(separators(&line), Vec::<String>::new());
                let text = std::str::from_utf8(&line).unwrap();
                proptest::prop_assert!(text.chars().all(|c| !must_escape(c)));
                let back: AuditEntry = serde_json::from_slice(&line).unwrap();
                proptest::prop_assert_eq!(&back, &e);
            }
            proptest::prop_assert_eq!(verify(&out[..]).unwrap().records, 2);
        }
    }

    mod checkpoints {
        use super::*;
        use crate::jose::Algorithm;
        use ring::rand::SystemRandom;

        fn new_key(alg: Algorithm) -> SigningKey {
            SigningKey::generate(alg, &SystemRandom::new()).unwrap().0
        }

        fn trusting(keys: &[&SigningKey]) -> KeySet {
            let mut set = KeySet::new();
            for key in keys {
                set.insert(key.verifying_key());
            }
            set
        }

        /// A log of `n` records, then a checkpoint by `key`, then `after`
        /// more records.
        fn signed_log(n: u32, key: &SigningKey, after: u32) -> (Vec<u8>, Chain) {
            let mut chain = Chain::genesis();
            let mut out = Vec::new();
            for i in 0..n {
                chain.append(&entry(i).encode().unwrap(), &mut out);
            }
            let checkpoint = chain
                .checkpoint(
                    "2026-11-23T10:01:00.000Z".into(),
                    Some(0),
                    key,
                    &SystemRandom::new(),
                )
                .unwrap();
            chain.append(&checkpoint.encode().unwrap(), &mut out);
            for i in 0..after {
                chain.append(&entry(n + i).encode().unwrap(), &mut out);
            }
            (out, chain)
        }

        fn report(log: &[u8], keys: KeySet) -> Result<VerifyReport, ChainError> {
            let mut verifier = Verifier::new(keys);
            verifier.file(log)?;
            Ok(verifier.report())
        }

        #[test]
        fn a_checkpoint_verifies_and_counts_what_follows_it() {
            for alg in [Algorithm::ES256, Algorithm::EdDSA] {
                let key = new_key(alg);
                let (log, _) = signed_log(3, &key, 2);
                let r = report(&log, trusting(&[&key])).unwrap();
                assert_eq!(r.records, 6);
                assert_eq!(r.verified_checkpoints, 1, "{alg}");
                assert_eq!(r.last_verified_checkpoint, Some(3));
                assert_eq!(r.unsigned, 2, "the two records after it");
                assert_eq!(r.adopted, 0);
                // The record names its key, the key's algorithm and the head.
                let record: serde_json::Value = serde_json::from_slice(&lines(&log)[3]).unwrap();
                assert_eq!(record["event"], "audit_checkpoint");
                assert_eq!(record["checkpoint"]["kid"], key.kid());
                assert_eq!(record["checkpoint"]["alg"], alg.as_str());
                assert_eq!(record["checkpoint"]["records"], 3);
                assert_eq!(record["checkpoint"]["head"], record["prev"]);
            }
        }

        #[test]
        fn without_the_key_a_checkpoint_is_consistent_but_unverified() {
            let key = new_key(Algorithm::ES256);
            let (log, _) = signed_log(3, &key, 2);
            let r = report(&log, KeySet::new()).unwrap();
            assert_eq!(r.checkpoints, 1);
            assert_eq!(r.verified_checkpoints, 0);
            assert_eq!(r.unknown_kids, vec![key.kid().to_owned()]);
            assert_eq!(r.unsigned, 6, "nothing vouches for any record");
            assert_eq!(verify(&log[..]).unwrap().records, 6);
        }

        #[test]
        fn a_checkpoint_swapped_for_one_claiming_the_trusted_key_is_forged() {
            let key = new_key(Algorithm::ES256);
            let attacker = new_key(Algorithm::ES256);
            let (log, _) = signed_log(3, &attacker, 0);
            // Relabel the attacker's checkpoint as the trusted key's.
            let mut l = lines(&log);
            let mut record: serde_json::Value = serde_json::from_slice(&l[3]).unwrap();
            let jws = record["checkpoint"]["jws"].as_str().unwrap().to_owned();
            let mut parts: Vec<&str> = jws.split('.').collect();
            let header = format!(
                r#"{{"alg":"ES256","typ":"{CHECKPOINT_TYP}","kid":"{}"}}"#,
                key.kid()
            );
            let header =
                base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header);
            parts[0] = &header;
            record["checkpoint"]["jws"] = serde_json::json!(parts.join("."));
            record["checkpoint"]["kid"] = serde_json::json!(key.kid());
            record["checkpoint"]["jwk"] = serde_json::to_value(key.public_jwk()).unwrap();
            record["kid"] = serde_json::json!(key.kid());
            l[3] = serde_json::to_vec(&record).unwrap();
            assert_eq!(
                report(&join(&l), trusting(&[&key])),
                Err(ChainError::ForgedCheckpoint { line: 4, seq: 3 })
            );
        }

        #[test]
        fn records_appended_after_a_checkpoint_are_counted_and_an_edited_checkpoint_caught() {
            let key = new_key(Algorithm::EdDSA);
            let (log, chain) = signed_log(2, &key, 0);
            // Someone who can write the file appends forged records: the
            // chain is fine, but nothing signed them.
            let mut forged = log.clone();
            let mut chain = chain;
            for i in 0..3 {
                chain.append(&entry(100 + i).encode().unwrap(), &mut forged);
            }
            let r = report(&forged, trusting(&[&key])).unwrap();
            assert_eq!((r.unsigned, r.last_verified_checkpoint), (3, Some(2)));

            // Rewrite the record the checkpoint covers and recompute every
            // hash after it: the chain verifies, the checkpoint does not.
            let mut l = lines(&log);
            let mut first: serde_json::Value = serde_json::from_slice(&l[1]).unwrap();
            first["sub"] = serde_json::json!("someone-else");
            l[1] = serde_json::to_vec(&first).unwrap();
            let mut checkpoint: serde_json::Value = serde_json::from_slice(&l[2]).unwrap();
            let head = hex::encode(sha256(&l[1]));
            checkpoint["prev"] = serde_json::json!(head);
            checkpoint["checkpoint"]["head"] = serde_json::json!(head);
            l[2] = serde_json::to_vec(&checkpoint).unwrap();
            assert_eq!(
                report(&join(&l), trusting(&[&key])),
                Err(ChainError::ForgedCheckpoint { line: 3, seq: 2 })
            );
            // And one that does not state the chain before it is refused
            // even without keys.
            let mut l = lines(&log);
            let mut checkpoint: serde_json::Value = serde_json::from_slice(&l[2]).unwrap();
            checkpoint["checkpoint"]["records"] = serde_json::json!(1);
            l[2] = serde_json::to_vec(&checkpoint).unwrap();
            assert!(matches!(
                report(&join(&l), KeySet::new()),
                Err(ChainError::BadCheckpoint { line: 3, .. })
            ));
        }

        #[test]
        fn trust_follows_a_rotation_covered_by_a_verified_checkpoint() {
            let rng = SystemRandom::new();
            let old = new_key(Algorithm::ES256);
            let new = new_key(Algorithm::ES256);
            let mut chain = Chain::genesis();
            let mut out = Vec::new();
            chain.append(&entry(0).encode().unwrap(), &mut out);
            let mut rotated = AuditEntry::new("t".into(), EventKind::KeysRotated, Decision::Allow);
            rotated.kid = Some(new.kid().to_owned());
            chain.append(&rotated.encode().unwrap(), &mut out);
            let seal = chain.checkpoint("t1".into(), Some(0), &old, &rng).unwrap();
            chain.append(&seal.encode().unwrap(), &mut out);
            chain.append(&entry(1).encode().unwrap(), &mut out);
            let later = chain.checkpoint("t2".into(), None, &new, &rng).unwrap();
            chain.append(&later.encode().unwrap(), &mut out);
            chain.append(&entry(2).encode().unwrap(), &mut out);

            // Only the old key is known (the new one's store entry is gone,
            // say): the rotation record vouches for the new key.
            let r = report(&out, trusting(&[&old])).unwrap();
            assert_eq!(r.verified_checkpoints, 2);
            assert_eq!((r.last_verified_checkpoint, r.unsigned), (Some(4), 1));

            // A rotation record nothing signed vouches for nothing.
            let mut chain = Chain::genesis();
            let mut out = Vec::new();
            chain.append(&rotated.encode().unwrap(), &mut out);
            let later = chain.checkpoint("t2".into(), None, &new, &rng).unwrap();
            chain.append(&later.encode().unwrap(), &mut out);
            let r = report(&out, trusting(&[&old])).unwrap();
            assert_eq!((r.verified_checkpoints, r.unverified_checkpoints), (0, 1));
        }

        #[test]
        fn records_a_run_never_signed_are_reported_as_adopted() {
            let rng = SystemRandom::new();
            let key = new_key(Algorithm::ES256);
            let mut chain = Chain::genesis();
            let mut out = Vec::new();
            chain.append(&entry(0).encode().unwrap(), &mut out);
            let first = chain.checkpoint("t".into(), Some(0), &key, &rng).unwrap();
            chain.append(&first.encode().unwrap(), &mut out);
            // Two records, then the broker is killed; the next run opens
            // at record 4 and checkpoints.
            chain.append(&entry(1).encode().unwrap(), &mut out);
            chain.append(&entry(2).encode().unwrap(), &mut out);
            let opened_at = chain.next_seq();
            chain.append(&entry(3).encode().unwrap(), &mut out);
            let next_run = chain
                .checkpoint("t".into(), Some(opened_at), &key, &rng)
                .unwrap();
            chain.append(&next_run.encode().unwrap(), &mut out);
            let r = report(&out, trusting(&[&key])).unwrap();
            assert_eq!((r.adopted, r.unsigned), (2, 0));
        }

        #[test]
        fn rotated_files_verify_as_one_chain() {
            let rng = SystemRandom::new();
            let key = new_key(Algorithm::ES256);
            let mut chain = Chain::genesis();
            let mut files = vec![Vec::new()];
            for i in 0..9u32 {
                if i % 3 == 0 && i > 0 {
                    let seal = chain.checkpoint("t".into(), None, &key, &rng).unwrap();
                    chain.append(&seal.encode().unwrap(), files.last_mut().unwrap());
                    let first = AuditEntry::continuation(
                        "t".into(),
                        format!("audit-{}.jsonl", files.len()),
                        chain.head(),
                    );
                    let mut file = Vec::new();
                    chain.append(&first.encode().unwrap(), &mut file);
                    files.push(file);
                }
                chain.append(&entry(i).encode().unwrap(), files.last_mut().unwrap());
            }
            let mut verifier = Verifier::new(trusting(&[&key]));
            for file in &files {
                verifier.file(&file[..]).unwrap();
            }
            let r = verifier.report();
            assert_eq!((r.files, r.records, r.first_seq), (3, 13, 0));
            assert_eq!(r.head, chain.head());
            assert_eq!(
                (r.verified_checkpoints, r.unsigned),
                (2, 4),
                "the last file: its first record and three more"
            );

            // The live file alone verifies from where it picks up.
            let mut alone = Verifier::new(KeySet::new());
            alone.file(&files[2][..]).unwrap();
            let r = alone.report();
            assert_eq!(r.first_seq, 9);
            assert_eq!(r.continues_from.unwrap().file, "audit-2.jsonl");
            assert_eq!(verify(&files[2][..]).unwrap().records, 4);

            // Out of order, or with a file missing, they do not.
            let mut wrong = Verifier::new(KeySet::new());
            wrong.file(&files[0][..]).unwrap();
            assert_eq!(
                wrong.file(&files[2][..]),
                Err(ChainError::Sequence {
                    line: 1,
                    expected: 4,
                    found: 9
                })
            );
            let mut wrong = Verifier::new(KeySet::new());
            wrong.file(&files[1][..]).unwrap();
            assert!(matches!(
                wrong.file(&files[0][..]),
                Err(ChainError::BadContinuation { line: 1, .. })
            ));
            // A continuation record is only ever a file's first.
            let mut glued = files[0].clone();
            glued.extend_from_slice(&files[1]);
            assert!(matches!(
                verify(&glued[..]),
                Err(ChainError::BadContinuation { line: 5, .. })
            ));
        }
    }
}
