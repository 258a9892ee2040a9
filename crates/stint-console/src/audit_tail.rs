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
const MAX_READ: usize = 256 * 1024 * 1024;
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
    /// The chain is broken (or unreadable) here: nothing after it is
    /// trusted.
    pub(crate) error: Option<String>,
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
    error: Option<String>,
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
                error: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tail> {
        self.tail.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Read what was appended since the last refresh.
    pub(crate) async fn refresh(self: &std::sync::Arc<Self>, api: &OperatorApi) {
        match &self.location {
            AuditLocation::File(path) => {
                let path = path.clone();
                let keys = api.audit_keys();
                let this = std::sync::Arc::clone(self);
                let _ = tokio::task::spawn_blocking(move || this.refresh_file(&path, keys)).await;
            }
            AuditLocation::Store { .. } => self.refresh_store(api).await,
        }
    }

    fn refresh_file(&self, path: &PathBuf, keys: stint_core::jose::KeySet) {
        let mut tail = self.lock();
        if tail.error.is_some() {
            return;
        }
        let tail = &mut *tail;
        let verifier = tail.verifier.get_or_insert_with(|| Verifier::new(keys));
        let mut budget = MAX_READ;
        loop {
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
                        verifier.begin_file();
                    }
                    Err(e) => {
                        tail.error = Some(format!("cannot open {}: {e}", path.display()));
                        return;
                    }
                }
            }
            let Some((file, identity)) = tail.file.as_mut() else {
                return;
            };
            // A file shorter than what was read of it was cut or replaced.
            match file.metadata() {
                Ok(m) if m.len() < tail.offset => {
                    tail.error = Some(format!(
                        "{} is shorter than the {} bytes already read: it was cut or replaced",
                        path.display(),
                        tail.offset
                    ));
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    tail.error = Some(format!("cannot read {}: {e}", path.display()));
                    return;
                }
            }
            // What is there now, from where the last read stopped.
            let mut bytes = Vec::new();
            let read = file
                .seek(SeekFrom::Start(tail.offset))
                .and_then(|_| file.take(budget as u64).read_to_end(&mut bytes));
            if let Err(e) = read {
                tail.error = Some(format!("cannot read {}: {e}", path.display()));
                return;
            }
            budget = budget.saturating_sub(bytes.len());
            let complete = bytes
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |at| at + 1);
            for line in bytes[..complete].split(|b| *b == b'\n') {
                if line.is_empty() {
                    continue;
                }
                tail.line += 1;
                if let Err(error) = verifier.line(line, tail.line) {
                    tail.error = Some(describe(&error));
                    return;
                }
                if let Some(record) = parse(line) {
                    if tail.recent.len() >= KEPT {
                        tail.recent.pop_front();
                    }
                    tail.recent.push_back(record);
                }
            }
            tail.offset += complete as u64;
            // Rotated? The path names another file once the old one is
            // renamed: read on there (its rest was just read).
            let rotated = std::fs::metadata(path)
                .map(|m| (m.dev(), m.ino()) != *identity)
                .unwrap_or(false);
            if rotated && budget > 0 {
                tail.file = None;
                continue;
            }
            return;
        }
    }

    async fn refresh_store(&self, api: &OperatorApi) {
        let mut read = 0;
        while read < MAX_STORE_READ {
            let from = {
                let tail = self.lock();
                if tail.error.is_some() {
                    return;
                }
                tail.position
            };
            let lines = match api.audit_records(from, 1000).await {
                Ok(lines) => lines,
                Err(refused) => {
                    // Not the chain's fault: tried again next time.
                    tracing::warn!(%refused, "audit records not read");
                    return;
                }
            };
            if lines.is_empty() {
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
                    tail.error = Some(describe(&error));
                    return;
                }
                if let Some(record) = parse(line.as_bytes()) {
                    if tail.recent.len() >= KEPT {
                        tail.recent.pop_front();
                    }
                    tail.recent.push_back(record);
                }
            }
        }
    }

    /// The chain's state as last read.
    pub(crate) fn status(&self) -> Status {
        let tail = self.lock();
        let source = match &self.location {
            AuditLocation::File(path) => path.display().to_string(),
            AuditLocation::Store { chain } => format!("chain {chain} in the store"),
        };
        let Some(verifier) = &tail.verifier else {
            return Status {
                error: tail.error.clone(),
                source,
                ..Status::default()
            };
        };
        let report = verifier.report();
        Status {
            records: report.records,
            head: report.head,
            error: tail.error.clone(),
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
