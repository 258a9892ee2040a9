//! Audit records and their hash chain.
//!
//! The log is JSON Lines. Each record carries `seq` (0, 1, 2, ...) and
//! `prev`, the SHA-256 (hex) of the previous line's exact bytes; the first
//! record's `prev` is [`GENESIS`]. Editing a record changes its hash, which
//! breaks the next record's `prev`; removing or reordering records breaks
//! both `seq` and `prev`. [`verify`] walks a log and names the first broken
//! record.
//!
//! What a chain alone cannot show: that the *tail* was cut off, or the last
//! record rewritten, since nothing follows it. [`verify`] returns the head
//! hash so that it can be compared with a copy kept elsewhere (a log
//! shipper, a ticket, the next day's verification).

use serde::{Deserialize, Serialize};
use std::io::{BufRead, Read as _};
use thiserror::Error;

/// The `prev` of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// The longest record line [`verify`] reads.
pub const MAX_RECORD_LEN: usize = 1024 * 1024;

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
    /// A new signing key replaced the old one (`POST /v1/admin/keys/rotate`).
    KeysRotated,
    /// A key rotation request was refused.
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
            justification: None,
            duration: None,
            count: None,
        }
    }
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
    /// Serialize the entry for [`Chain::append`]. A `detail` over
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
                serde_json::to_vec(&bounded)?
            }
            _ => serde_json::to_vec(self)?,
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
}

#[derive(Deserialize)]
struct Link {
    seq: u64,
    prev: String,
}

/// A verified log's summary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainSummary {
    /// How many records.
    pub records: u64,
    /// The last record's hash (hex), or [`GENESIS`] for an empty log.
    pub head: String,
}

/// The first problem found in a log. Lines are 1-based.
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
}

/// Walk a log from its first record and check every link.
pub fn verify(mut reader: impl BufRead) -> Result<ChainSummary, ChainError> {
    let mut chain = Chain::genesis();
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
        let link: Link =
            serde_json::from_slice(&line).map_err(|_| ChainError::Malformed { line: number })?;
        if link.seq != chain.next_seq {
            return Err(ChainError::Sequence {
                line: number,
                expected: chain.next_seq,
                found: link.seq,
            });
        }
        if link.prev != chain.head() {
            return Err(ChainError::BrokenLink {
                line: number,
                seq: link.seq,
            });
        }
        chain = Chain {
            next_seq: chain.next_seq + 1,
            prev: sha256(&line),
        };
    }
    Ok(ChainSummary {
        records: chain.next_seq,
        head: chain.head(),
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
}
