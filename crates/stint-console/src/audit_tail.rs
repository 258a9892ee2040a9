//! The audit log as the console reads it: followed from where it starts,
//! every link checked as it is read (and every checkpoint against the
//! broker's published keys), the last [`KEPT`] records kept for the Audit
//! page.
//!
//! The file is read from the offset reached last time, on each page that
//! shows it; a rotation (the path names a new file) is followed: the rest
//! of the old file is read through the handle still open, then the new
//! file, which must continue the chain. A log in the shared store (a
//! PostgreSQL broker's own chain) is read by position the same way.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::MetadataExt as _;
use std::path::PathBuf;
use std::sync::Mutex;
use stint_core::audit::{AuditEntry, ChainError, Verifier};
use stint_server::operators::{AuditLocation, OperatorApi};

/// Records kept for the Audit page.
pub(crate) const KEPT: usize = 5_000;
/// The most bytes read in one refresh (the rest on the next).
const MAX_READ: usize = 64 * 1024 * 1024;
/// The most bytes read with the lock held.
const CHUNK: usize = 4 * 1024 * 1024;
/// The most store records read in one refresh.
const MAX_STORE_READ: usize = 100_000;

/// One record, as the Audit page shows it.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub(crate) seq: u64,
    pub(crate) entry: AuditEntry,
}

/// How far the chain was checked.
#[derive(Debug, Clone, Default)]
pub(crate) struct Status {
    /// Records read and checked.
    pub(crate) records: u64,
    /// The hash of the last record read.
    pub(crate) head: String,
    /// The chain is broken here: nothing after it is trusted.
    pub(crate) error: Option<String>,
    /// The last read failed; tried again on the next page.
    pub(crate) transient: Option<String>,
    /// Something the reader noticed and recovered from.
    pub(crate) notice: Option<String>,
    /// The first file continues a rotated one not read here.
    pub(crate) continues: Option<String>,
    /// Checkpoints whose signature verified with a published key.
    pub(crate) verified_checkpoints: u64,
    /// Checkpoints signed by a key not published now (older keys).
    pub(crate) unverified_checkpoints: u64,
    /// Records after the last verified checkpoint.
    pub(crate) unsigned: u64,
    /// Where it is read from.
    pub(crate) source: String,
}

struct Tail {
    verifier: Option<Verifier>,
    file: Option<(File, (u64, u64))>,
    /// Bytes of `file` consumed, up to the last full line.
    offset: u64,
    /// Line number in the current file of the last line read.
    line: u64,
    /// The store position next read.
    position: u64,
    recent: VecDeque<Record>,
    /// The chain does not verify: nothing after is read or trusted.
    broken: Option<String>,
    /// The last read failed (tried again on the next).
    transient: Option<String>,
    /// What the reader noticed (a file cut back and read again).
    notice: Option<String>,
    /// The path names a new file: the old one is read to its end first.
    draining: bool,
    /// Where the record read last starts in the file, and its hash.
    last_start: u64,
    last_head: String,
}

/// The followed log.
pub(crate) struct AuditTail {
    location: AuditLocation,
    tail: Mutex<Tail>,
}

impl std::fmt::Debug for AuditTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditTail")
            .field("location", &self.location)
            .finish_non_exhaustive()
    }
}

fn parse(line: &[u8]) -> Option<Record> {
    #[derive(serde::Deserialize)]
    struct Seq {
        seq: u64,
    }
    let seq: Seq = serde_json::from_slice(line).ok()?;
    let entry: AuditEntry = serde_json::from_slice(line).ok()?;
    Some(Record {
        seq: seq.seq,
        entry,
    })
}

fn keep(recent: &mut VecDeque<Record>, line: &[u8]) {
    if let Some(record) = parse(line) {
        if recent.len() >= KEPT {
            recent.pop_front();
        }
        recent.push_back(record);
    }
}

/// The hash of a record line, as the chain links it (hex SHA-256).
fn line_hash(line: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, line))
}

/// The head a file's first record says it continues, if it is an
/// `audit_continued` record.
fn continues(line: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct First {
        event: String,
        previous_head: Option<String>,
    }
    let first: First = serde_json::from_slice(line).ok()?;
    (first.event == "audit_continued").then_some(first.previous_head?)
}

/// What one step of a file refresh found.
enum Step {
    /// More to read now.
    More,
    /// Caught up (or stopped): until the next refresh.
    Done,
}

impl AuditTail {
    pub(crate) fn new(location: AuditLocation) -> Self {
        Self {
            location,
            tail: Mutex::new(Tail {
                verifier: None,
                file: None,
                offset: 0,
                line: 0,
                position: 0,
                recent: VecDeque::new(),
                broken: None,
                transient: None,
                notice: None,
                draining: false,
                last_start: 0,
                last_head: String::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Read what was appended since the last refresh.
    pub(crate) async fn refresh(self: &std::sync::Arc<Self>, api: &OperatorApi) {
        match &self.location {
            AuditLocation::File { path, durable } => {
                let path = path.clone();
                let durable = durable.clone();
                let keys = api.audit_keys();
                let this = std::sync::Arc::clone(self);
                let _ = tokio::task::spawn_blocking(move || {
                    // A chunk at a time, the lock given up between chunks:
                    // pages reading the tail wait for one chunk at most.
                    let mut budget = MAX_READ;
                    while budget > 0 {
                        match this.refresh_chunk(&path, durable.as_deref(), &keys, &mut budget) {
                            Step::More => {}
                            Step::Done => break,
                        }
                    }
                })
                .await;
            }
            AuditLocation::Store { .. } => self.refresh_store(api).await,
        }
    }

    fn refresh_chunk(
        &self,
        path: &PathBuf,
        durable: Option<&stint_server::audit::DurableMark>,
        keys: &stint_core::jose::KeySet,
        budget: &mut usize,
    ) -> Step {
        let mut tail = self.lock();
        let tail = &mut *tail;
        if tail.broken.is_some() {
            return Step::Done;
        }
        if tail.file.is_none() {
            let opened = File::open(path).and_then(|f| {
                let m = f.metadata()?;
                Ok((f, (m.dev(), m.ino())))
            });
            match opened {
                Ok(opened) => {
                    tail.file = Some(opened);
                    tail.offset = 0;
                    tail.line = 0;
                    tail.last_start = 0;
                    tail.verifier
                        .get_or_insert_with(|| Verifier::new(keys.clone()))
                        .begin_file();
                }
                Err(e) => {
                    tail.transient = Some(format!("cannot open {}: {e}", path.display()));
                    return Step::Done;
                }
            }
        }
        let Some((file, identity)) = tail.file.as_mut() else {
            return Step::Done;
        };
        let identity = *identity;
        let len = match file.metadata() {
            Ok(m) => m.len(),
            Err(e) => {
                tail.transient = Some(format!("cannot read {}: {e}", path.display()));
                return Step::Done;
            }
        };
        // No further than the broker has made durable, in the file it
        // writes (a failed write is cut back: its records never were).
        let readable = match durable.and_then(|d| d.get()) {
            Some((file, durable_len)) if file == identity => len.min(durable_len),
            _ => len,
        };
        // Is the record read last still where it was? A file cut back (the
        // broker cuts a failed write back to its last durable record, and
        // may write on past it before this reads again) no longer has it.
        let still_there = tail.offset == 0
            || (len >= tail.offset && {
                let mut last = vec![0u8; (tail.offset - tail.last_start) as usize];
                file.seek(SeekFrom::Start(tail.last_start))
                    .and_then(|_| file.read_exact(&mut last))
                    .is_ok()
                    && last.last() == Some(&b'\n')
                    && line_hash(&last[..last.len() - 1]) == tail.last_head
            });
        if !still_there {
            // Only durable records are read, so the file was cut or
            // rewritten below them by someone other than the broker.
            tail.broken = Some(format!(
                "{} changed below the {} bytes already read and verified: records were cut or rewritten",
                path.display(),
                tail.offset
            ));
            return Step::Done;
        }
        let want = CHUNK
            .min(*budget)
            .min(usize::try_from(readable.saturating_sub(tail.offset)).unwrap_or(usize::MAX));
        let mut bytes = Vec::new();
        let read = file
            .seek(SeekFrom::Start(tail.offset))
            .and_then(|_| file.take(want as u64).read_to_end(&mut bytes));
        if let Err(e) = read {
            tail.transient = Some(format!("cannot read {}: {e}", path.display()));
            return Step::Done;
        }
        tail.transient = None;
        *budget = budget.saturating_sub(bytes.len().max(1));
        let complete = bytes
            .iter()
            .rposition(|b| *b == b'\n')
            .map_or(0, |at| at + 1);
        let mut at = tail.offset;
        for line in bytes[..complete].split(|b| *b == b'\n') {
            let start = at;
            at += line.len() as u64 + 1;
            if line.is_empty() {
                continue;
            }
            tail.line += 1;
            if tail.line == 1
                && !tail.last_head.is_empty()
                && let Some(previous) = continues(line)
                && previous != tail.last_head
            {
                // This file continues one this console has not read (more
                // than one rotation since it last looked, or files moved
                // away): check the chain from here, and say so.
                tail.notice = Some(format!(
                    "{} continues a file not read here: the chain is checked from its first record (stintd verify-audit checks every file)",
                    path.display()
                ));
                let mut verifier = Verifier::new(keys.clone());
                verifier.begin_file();
                tail.verifier = Some(verifier);
            }
            let verifier = tail
                .verifier
                .get_or_insert_with(|| Verifier::new(keys.clone()));
            if let Err(error) = verifier.line(line, tail.line) {
                tail.broken = Some(describe(&error));
                return Step::Done;
            }
            let head = line_hash(line);
            tail.last_start = start;
            tail.last_head = head;
            keep(&mut tail.recent, line);
        }
        tail.offset += complete as u64;
        if want > 0 && bytes.len() == want && complete > 0 {
            // A full chunk: there may be more.
            return Step::More;
        }
        if tail.draining {
            // The old file is read to its end (it is not written after a
            // rotation renames it): on to the new one.
            tail.draining = false;
            tail.file = None;
            return Step::More;
        }
        // Rotated? The path names another file once the old one is
        // renamed. The broker may have appended to the old file before the
        // rename, after this read: read it to its end once more, then go
        // on in the new one.
        let rotated = std::fs::metadata(path)
            .map(|m| (m.dev(), m.ino()) != identity)
            .unwrap_or(false);
        if rotated {
            tail.draining = true;
            return Step::More;
        }
        Step::Done
    }

    async fn refresh_store(&self, api: &OperatorApi) {
        let mut read = 0;
        while read < MAX_STORE_READ {
            let from = {
                let tail = self.lock();
                if tail.broken.is_some() {
                    return;
                }
                tail.position
            };
            let lines = match api.audit_records(from, 1000).await {
                Ok(lines) => lines,
                Err(refused) => {
                    // Not the chain's fault: tried again next time.
                    tracing::warn!(%refused, "audit records not read");
                    self.lock().transient = Some(refused.description);
                    return;
                }
            };
            if lines.is_empty() {
                self.lock().transient = None;
                return;
            }
            read += lines.len();
            let mut tail = self.lock();
            let tail = &mut *tail;
            if tail.position != from {
                return;
            }
            let verifier = tail.verifier.get_or_insert_with(|| {
                let mut v = Verifier::new(api.audit_keys());
                v.begin_file();
                v
            });
            for line in &lines {
                tail.line += 1;
                tail.position += 1;
                if let Err(error) = verifier.line(line.as_bytes(), tail.line) {
                    tail.broken = Some(describe(&error));
                    return;
                }
                keep(&mut tail.recent, line.as_bytes());
            }
        }
    }

    /// The chain's state as last read.
    pub(crate) fn status(&self) -> Status {
        let tail = self.lock();
        let source = match &self.location {
            AuditLocation::File { path, .. } => path.display().to_string(),
            AuditLocation::Store { chain } => format!("chain {chain} in the store"),
        };
        let Some(verifier) = &tail.verifier else {
            return Status {
                error: tail.broken.clone(),
                transient: tail.transient.clone(),
                source,
                ..Status::default()
            };
        };
        let report = verifier.report();
        Status {
            records: report.records,
            head: report.head,
            error: tail.broken.clone(),
            transient: tail.transient.clone(),
            notice: tail.notice.clone(),
            continues: report.continues_from.map(|c| c.file),
            verified_checkpoints: report.verified_checkpoints,
            unverified_checkpoints: report.unverified_checkpoints,
            unsigned: report.unsigned,
            source,
        }
    }

    /// The kept records for which `keep` holds, newest first, at most
    /// `limit`.
    pub(crate) fn recent(
        &self,
        limit: usize,
        mut keep: impl FnMut(&Record) -> bool,
    ) -> Vec<Record> {
        let tail = self.lock();
        tail.recent
            .iter()
            .rev()
            .filter(|r| keep(r))
            .take(limit)
            .cloned()
            .collect()
    }
}

fn describe(error: &ChainError) -> String {
    format!("the chain does not verify: {error}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;
    use stint_core::audit::{Chain, Decision, EventKind};

    fn record(chain: &mut Chain, entry: AuditEntry) -> Vec<u8> {
        let mut out = Vec::new();
        chain.append(&entry.encode().unwrap(), &mut out);
        out
    }

    fn minted(chain: &mut Chain, job: &str) -> Vec<u8> {
        let mut entry = AuditEntry::new(
            "2026-12-01T00:00:00.000Z".into(),
            EventKind::TokenMinted,
            Decision::Allow,
        );
        entry.job = Some(job.into());
        record(chain, entry)
    }

    fn refresh(tail: &AuditTail, path: &PathBuf) {
        refresh_with(tail, path, None);
    }

    fn refresh_with(
        tail: &AuditTail,
        path: &PathBuf,
        durable: Option<&stint_server::audit::DurableMark>,
    ) {
        let keys = stint_core::jose::KeySet::new();
        let mut budget = MAX_READ;
        while let Step::More = tail.refresh_chunk(path, durable, &keys, &mut budget) {}
    }

    fn location(path: &std::path::Path) -> AuditLocation {
        AuditLocation::File {
            path: path.to_owned(),
            durable: None,
        }
    }

    fn jobs(tail: &AuditTail) -> Vec<String> {
        let mut jobs: Vec<String> = tail
            .recent(100, |_| true)
            .into_iter()
            .filter_map(|r| r.entry.job)
            .collect();
        jobs.reverse();
        jobs
    }

    #[test]
    fn a_rotation_is_followed_with_the_records_written_just_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut chain = Chain::genesis();
        let mut file = std::fs::File::create(&path).unwrap();
        file.write_all(&minted(&mut chain, "a")).unwrap();
        let tail = AuditTail::new(location(&path));
        refresh(&tail, &path);
        assert_eq!(jobs(&tail), ["a"]);

        // The broker appends, then rotates, between two refreshes.
        file.write_all(&minted(&mut chain, "b")).unwrap();
        let rotated = dir.path().join("audit-1.jsonl");
        std::fs::rename(&path, &rotated).unwrap();
        let first = AuditEntry::continuation(
            "2026-12-01T00:00:01.000Z".into(),
            "audit-1.jsonl".into(),
            chain.head(),
        );
        let mut next = std::fs::File::create(&path).unwrap();
        next.write_all(&record(&mut chain, first)).unwrap();
        next.write_all(&minted(&mut chain, "c")).unwrap();
        refresh(&tail, &path);
        let status = tail.status();
        assert_eq!(status.error, None, "{status:?}");
        assert_eq!(jobs(&tail), ["a", "b", "c"]);
        assert_eq!(status.records, 4);
        assert_eq!(status.head, chain.head());
    }

    #[test]
    fn only_durable_records_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut chain = Chain::genesis();
        let a = minted(&mut chain, "a");
        let b = minted(&mut chain, "b");
        std::fs::write(&path, [a.clone(), b.clone()].concat()).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        let file = (meta.dev(), meta.ino());
        let mark = stint_server::audit::DurableMark::default();
        // "b" is being written (or failed and will be cut back).
        mark.set(file, a.len() as u64);
        let tail = AuditTail::new(location(&path));
        refresh_with(&tail, &path, Some(&mark));
        assert_eq!(jobs(&tail), ["a"]);
        mark.set(file, (a.len() + b.len()) as u64);
        refresh_with(&tail, &path, Some(&mark));
        assert_eq!(jobs(&tail), ["a", "b"]);
        assert_eq!(tail.status().error, None);
    }

    #[test]
    fn a_file_cut_or_rewritten_below_what_was_read_breaks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut chain = Chain::genesis();
        let a = minted(&mut chain, "a");
        let after_a = chain;
        let b = minted(&mut chain, "b");
        std::fs::write(&path, [a.clone(), b].concat()).unwrap();
        let tail = AuditTail::new(location(&path));
        refresh(&tail, &path);
        assert_eq!(jobs(&tail), ["a", "b"]);
        // Cut back and written on past where "b" ended, a valid chain
        // after "a": still a changed history.
        let mut chain = after_a;
        let forged = minted(&mut chain, "forged-and-longer-than-b");
        std::fs::write(&path, [a, forged].concat()).unwrap();
        refresh(&tail, &path);
        let error = tail.status().error.unwrap();
        assert!(error.contains("cut or rewritten"), "{error}");
        assert_eq!(jobs(&tail), ["a", "b"], "nothing after is read");

        // A record that does not follow: broken too.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut chain = Chain::genesis();
        std::fs::write(&path, minted(&mut chain, "a")).unwrap();
        let tail = AuditTail::new(location(&path));
        refresh(&tail, &path);
        let mut other = Chain::genesis();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&minted(&mut other, "x"))
            .unwrap();
        refresh(&tail, &path);
        assert!(tail.status().error.unwrap().contains("does not verify"));
    }

    #[test]
    fn a_file_continuing_one_not_read_is_checked_from_its_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let mut chain = Chain::genesis();
        std::fs::write(&path, minted(&mut chain, "a")).unwrap();
        let tail = AuditTail::new(location(&path));
        refresh(&tail, &path);
        // Two rotations before the next look: B was never read here.
        std::fs::rename(&path, dir.path().join("audit-1.jsonl")).unwrap();
        let head = chain.head();
        let mut b = record(
            &mut chain,
            AuditEntry::continuation(
                "2026-12-01T00:00:01.000Z".into(),
                "audit-1.jsonl".into(),
                head,
            ),
        );
        b.extend(minted(&mut chain, "b"));
        std::fs::write(dir.path().join("audit-2.jsonl"), b).unwrap();
        let head = chain.head();
        let mut c = record(
            &mut chain,
            AuditEntry::continuation(
                "2026-12-01T00:00:02.000Z".into(),
                "audit-2.jsonl".into(),
                head,
            ),
        );
        c.extend(minted(&mut chain, "c"));
        std::fs::write(&path, c).unwrap();
        refresh(&tail, &path);
        let status = tail.status();
        assert_eq!(status.error, None, "{status:?}");
        assert!(
            status
                .notice
                .unwrap()
                .contains("continues a file not read here")
        );
        assert_eq!(jobs(&tail), ["a", "c"]);
        assert_eq!(status.head, chain.head());
    }

    #[test]
    fn an_unreadable_file_is_tried_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let tail = AuditTail::new(location(&path));
        refresh(&tail, &path);
        assert!(tail.status().transient.unwrap().contains("cannot open"));
        let mut chain = Chain::genesis();
        std::fs::write(&path, minted(&mut chain, "a")).unwrap();
        refresh(&tail, &path);
        let status = tail.status();
        assert_eq!(status.transient, None);
        assert_eq!(status.error, None);
        assert_eq!(jobs(&tail), ["a"]);
    }
}
