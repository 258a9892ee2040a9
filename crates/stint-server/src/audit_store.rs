//! The audit log in a shared store: with PostgreSQL a broker's records go
//! into the database, not onto a disk that may be lost with the broker.
//!
//! Each broker process writes its own hash chain (the same records, the
//! same chaining and checkpoints as the file), under a chain id of its start
//! time and a random part. The writer's group commit is kept: one batch is
//! one multi-row insert in one transaction, and a decision is answered only
//! once that transaction has committed (synchronous commit is on: see
//! [`stint_store::PostgresStore`]). A batch that fails writes nothing, and
//! the writer tries the next batch from the same place, as with a file.
//!
//! Every checkpoint interval each broker also records the other chains'
//! heads as it reads them ([`EventKind::AuditPeers`]): a chain deleted, or
//! cut short, after another broker vouched for it is then found by
//! `stintd --store URL verify-audit`, which walks every chain in the
//! database and checks every such reference.

use crate::audit::{AuditSink, CurrentFile, FileSink};
use chrono::{DateTime, Utc};
use ring::rand::SecureRandom;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use stint_core::audit::{AuditEntry, Decision, EventKind, Verifier, VerifyReport};
use stint_core::jose::KeySet;
use stint_store::{AuditCommit, AuditedWrite, Store};

/// Records read from the store in one go when verifying.
const READ_BATCH: usize = 10_000;

/// A new chain's id: its broker's start time to the microsecond (so ids
/// sort by it) and 48
/// random bits.
pub(crate) fn new_chain_id(now: DateTime<Utc>, rng: &dyn SecureRandom) -> io::Result<String> {
    let mut random = [0u8; 6];
    rng.fill(&mut random)
        .map_err(|_| io::Error::other("no randomness for the audit chain id"))?;
    Ok(format!(
        "{}-{}",
        now.format("%Y%m%dT%H%M%S%.6fZ"),
        hex::encode(random)
    ))
}

/// Audit records into the store, one chain per broker process.
pub struct StoreSink {
    store: Arc<dyn Store>,
    runtime: OwnRuntime,
    chain: String,
    /// The position of the next record in the chain.
    next: u64,
    /// The longest one batch may take (the store's own timeout bounds it
    /// too).
    timeout: Duration,
}

impl std::fmt::Debug for StoreSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSink")
            .field("chain", &self.chain)
            .field("next", &self.next)
            .finish()
    }
}

impl StoreSink {
    /// A new chain `chain` in `store`, written from the audit writer's
    /// thread on a runtime of its own: a batch's round trips then do not
    /// queue behind the broker's requests (with PostgreSQL, give it a
    /// [`stint_store::PostgresStore::dedicated`] handle, whose connections
    /// this runtime drives).
    pub fn new(store: Arc<dyn Store>, chain: String, timeout: Duration) -> io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("stintd-audit")
            .build()?;
        Ok(Self {
            store,
            runtime: OwnRuntime(Some(runtime)),
            chain,
            next: 0,
            timeout,
        })
    }

    /// The chain this sink writes.
    pub fn chain(&self) -> &str {
        &self.chain
    }
}

impl StoreSink {
    /// Run `work` on the store from the writer's thread (outside the
    /// runtime: it may block), bounded by the sink's timeout.
    fn block_on<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, stint_store::StoreError>>,
    ) -> io::Result<T> {
        let timeout = self.timeout;
        let Some(runtime) = &self.runtime.0 else {
            return Err(io::Error::other("the audit writer's runtime is gone"));
        };
        match runtime.block_on(async move { tokio::time::timeout(timeout, work).await }) {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(io::Error::other(error.to_string())),
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the store did not answer in time",
            )),
        }
    }

    /// The records of this chain from `from` on, at most `limit`.
    fn read_back(&self, from: u64, limit: usize) -> io::Result<Vec<String>> {
        let store = Arc::clone(&self.store);
        let chain = self.chain.clone();
        self.block_on(async move { store.audit_records(&chain, from, limit).await })
    }
}

/// The writer's runtime, which may be dropped anywhere (a broker that
/// fails to start drops its sink on the main runtime, where a runtime's
/// blocking shutdown is not allowed).
struct OwnRuntime(Option<tokio::runtime::Runtime>);

impl Drop for OwnRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

impl AuditSink for StoreSink {
    fn write_durably(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_durably_with(bytes, &[]).map(|_| ())
    }

    fn writes_changes(&self) -> bool {
        true
    }

    fn write_durably_with(
        &mut self,
        bytes: &[u8],
        writes: &[AuditedWrite],
    ) -> io::Result<Vec<u64>> {
        let text = std::str::from_utf8(bytes).map_err(|_| {
            io::Error::new(io::ErrorKind::InvalidData, "an audit record is not UTF-8")
        })?;
        let records: Vec<String> = text
            .split('\n')
            .filter(|line| !line.is_empty())
            .map(str::to_owned)
            .collect();
        if records.is_empty() {
            if writes.is_empty() {
                return Ok(Vec::new());
            }
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a change is committed only with the record of it",
            ));
        }
        let first = self.next;
        // Sent again once if it fails: the positions are the same, so a
        // first attempt whose commit answer was lost is either there (and
        // the second writes nothing, not the changes either) or not (and
        // the second writes it all); waiting on the primary key makes the
        // second see the first's outcome.
        let committed = match self.append(first, &records, writes) {
            Ok(committed) => committed,
            Err(_) => self.append(first, &records, writes)?,
        };
        self.next_if_written(first, &records, committed)
    }
}

impl StoreSink {
    fn append(
        &self,
        first: u64,
        records: &[String],
        writes: &[AuditedWrite],
    ) -> io::Result<AuditCommit> {
        let store = Arc::clone(&self.store);
        let chain = self.chain.clone();
        let (batch, writes) = (records.to_vec(), writes.to_vec());
        self.block_on(async move {
            store
                .append_audit_with(&chain, first, &batch, &writes)
                .await
        })
    }

    /// After a batch at `first`: its writes' sequence numbers, once the
    /// chain is known to hold `records` there.
    fn next_if_written(
        &mut self,
        first: u64,
        records: &[String],
        committed: AuditCommit,
    ) -> io::Result<Vec<u64>> {
        if committed.written != records.len() as u64 {
            // Positions taken: by this very batch (an earlier attempt, with
            // its writes), or by records this broker was told were not
            // written.
            let stored = self.read_back(first, records.len())?;
            if stored != records {
                return Err(io::Error::other(format!(
                    "audit chain {} in the store holds other records at positions {first} on: restart the broker (it starts a new chain)",
                    self.chain
                )));
            }
        }
        self.next += records.len() as u64;
        Ok(committed.seqs)
    }
}

/// Where a broker's audit records go: a file, or a chain in the store.
#[derive(Debug)]
pub enum Sink {
    /// `audit.jsonl` in the data directory.
    File(FileSink),
    /// A chain in a shared store.
    Store(StoreSink),
}

impl AuditSink for Sink {
    fn write_durably(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Self::File(sink) => sink.write_durably(bytes),
            Self::Store(sink) => sink.write_durably(bytes),
        }
    }

    fn current_file(&self) -> Option<CurrentFile> {
        match self {
            Self::File(sink) => sink.current_file(),
            // A chain in the store is not rotated.
            Self::Store(_) => None,
        }
    }

    fn rotate(&mut self, rotated_name: &str, first: &[u8]) -> io::Result<()> {
        match self {
            Self::File(sink) => sink.rotate(rotated_name, first),
            Self::Store(_) => Err(io::Error::from(io::ErrorKind::Unsupported)),
        }
    }

    fn writes_changes(&self) -> bool {
        match self {
            Self::File(sink) => sink.writes_changes(),
            Self::Store(sink) => sink.writes_changes(),
        }
    }

    fn write_durably_with(
        &mut self,
        bytes: &[u8],
        writes: &[AuditedWrite],
    ) -> io::Result<Vec<u64>> {
        match self {
            Self::File(sink) => sink.write_durably_with(bytes, writes),
            Self::Store(sink) => sink.write_durably_with(bytes, writes),
        }
    }
}

/// The SHA-256 of a stored record, in hex.
fn record_digest(line: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, line.as_bytes()))
}

/// The most chains one `audit_peers` record vouches for (the latest
/// started, which are the ones still growing): it stays well inside a
/// record's `detail`.
const MAX_PEERS: usize = 96;

/// Whether `id` is a chain id as [`new_chain_id`] makes them (so that a
/// row written into the store by someone else cannot fill a record, nor
/// smuggle in references).
fn is_chain_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    bytes.len() == 36
        && bytes.iter().enumerate().all(|(i, b)| match i {
            8 => *b == b'T',
            15 => *b == b'.',
            22 => *b == b'Z',
            23 => *b == b'-',
            24.. => b.is_ascii_digit() || (b'a'..=b'f').contains(b),
            _ => b.is_ascii_digit(),
        })
}

/// The `audit_peers` record for the chains other than `own` in `heads`
/// (id, records, last record), or `None` if there are none.
pub(crate) fn peers_entry(
    time: String,
    own: &str,
    heads: &[(String, u64, String)],
) -> Option<AuditEntry> {
    let mut peers: Vec<&(String, u64, String)> = heads
        .iter()
        .filter(|(chain, _, _)| chain != own && is_chain_id(chain))
        .collect();
    peers.sort_by(|a, b| b.0.cmp(&a.0));
    peers.truncate(MAX_PEERS);
    let peers: Vec<String> = peers
        .into_iter()
        .map(|(chain, records, last)| format!("{chain}@{records}:{}", record_digest(last)))
        .collect();
    if peers.is_empty() {
        return None;
    }
    let mut entry = AuditEntry::new(time, EventKind::AuditPeers, Decision::Allow);
    entry.detail = Some(peers.join(" "));
    Some(entry)
}

/// One reference of an `audit_peers` record: chain, records, digest.
fn parse_peers(detail: &str) -> Vec<(String, u64, String)> {
    detail
        .split_whitespace()
        .filter_map(|peer| {
            let (chain, rest) = peer.rsplit_once('@')?;
            let (records, digest) = rest.split_once(':')?;
            let digest_ok = digest.len() == 64
                && digest
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            (is_chain_id(chain) && digest_ok).then_some(())?;
            Some((chain.to_owned(), records.parse().ok()?, digest.to_owned()))
        })
        .collect()
}

/// One chain's verification.
#[derive(Debug)]
pub struct ChainReport {
    /// The chain's id.
    pub chain: String,
    /// What the verifier found, or where the chain breaks.
    pub result: Result<VerifyReport, String>,
    /// How many of the other chains' heads this chain vouched for were
    /// found as it recorded them.
    pub peers_confirmed: usize,
    /// The heads it vouched for that the store no longer holds: a chain
    /// deleted, or cut short, since.
    pub peers_missing: Vec<String>,
}

/// The other chains' heads an `audit_peers` record vouches for.
fn peer_references(record: &str) -> Vec<(String, u64, String)> {
    #[derive(serde::Deserialize)]
    struct Peers {
        event: EventKind,
        #[serde(default)]
        detail: Option<String>,
    }
    match serde_json::from_str::<Peers>(record) {
        Ok(Peers {
            event: EventKind::AuditPeers,
            detail: Some(detail),
        }) => parse_peers(&detail),
        _ => Vec::new(),
    }
}

/// Verify every audit chain in `store`, each on its own, checkpoints
/// against `trusted`.
pub async fn verify_store(
    store: &dyn Store,
    trusted: &KeySet,
) -> Result<Vec<ChainReport>, stint_store::StoreError> {
    let mut reports = Vec::new();
    for (chain, count) in store.audit_chains().await? {
        // One chain is one file, given a batch at a time: memory holds one
        // batch, however long the chain.
        let mut verifier = Verifier::new(trusted.clone());
        verifier.begin_file();
        let mut references: Vec<(String, u64, String)> = Vec::new();
        let mut from = 0u64;
        let mut broken = None;
        while from < count && broken.is_none() {
            // Only the records counted: a live chain grows meanwhile.
            let want = usize::try_from(count - from)
                .unwrap_or(usize::MAX)
                .min(READ_BATCH);
            let records = store.audit_records(&chain, from, want).await?;
            if records.is_empty() {
                break;
            }
            for record in records {
                from += 1;
                if let Err(error) = verifier.line(record.as_bytes(), from) {
                    broken = Some(error.to_string());
                    break;
                }
                references.extend(peer_references(&record));
            }
        }
        let result = if let Some(error) = broken {
            Err(error)
        } else if from != count {
            Err(format!(
                "{count} records were counted, {from} could be read in order: positions are missing"
            ))
        } else {
            // A chain in the store is never rotated: it begins at the
            // genesis, not by continuing something else.
            let report = verifier.report();
            if report.first_seq == 0 && report.continues_from.is_none() {
                Ok(())
            } else {
                Err(format!(
                    "it begins at record {}, not at the genesis",
                    report.first_seq
                ))
            }
        };
        let (mut peers_confirmed, mut peers_missing) = (0, Vec::new());
        for (peer, records, digest) in references {
            let found = match records.checked_sub(1) {
                Some(last) => store.audit_records(&peer, last, 1).await?,
                None => Vec::new(),
            };
            if found
                .first()
                .is_some_and(|line| record_digest(line) == digest)
            {
                peers_confirmed += 1;
            } else {
                peers_missing.push(format!("{peer}@{records}"));
            }
        }
        reports.push(ChainReport {
            chain,
            result: result.map(|()| verifier.report()),
            peers_confirmed,
            peers_missing,
        });
    }
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_are_recognised_and_peers_parse_only_well_formed() {
        let rng = ring::rand::SystemRandom::new();
        let id = new_chain_id(chrono::Utc::now(), &rng).unwrap();
        assert!(is_chain_id(&id), "{id}");
        for bad in [
            "",
            "x",
            &format!("{id} "),
            &id.replace('T', "t"),
            &format!("{id}0"),
        ] {
            assert!(!is_chain_id(bad), "{bad:?}");
        }
        let digest = "a".repeat(64);
        let heads = vec![
            (id.clone(), 3, "last".to_owned()),
            ("junk id".to_owned(), 1, "x".to_owned()),
            ("own".to_owned(), 9, "y".to_owned()),
        ];
        let entry = peers_entry("t".into(), "own", &heads).unwrap();
        let detail = entry.detail.unwrap();
        assert_eq!(
            parse_peers(&detail),
            [(id.clone(), 3, record_digest("last"))]
        );
        assert!(parse_peers(&format!("{id}@3:{}", &digest[..63])).is_empty());
        assert!(parse_peers(&format!("junk@3:{digest}")).is_empty());
        assert_eq!(
            peers_entry("t".into(), &id, &heads[..1]).map(|e| e.detail),
            None
        );
    }
}
