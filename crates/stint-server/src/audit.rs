//! The audit log writer: JSON Lines, hash-chained, fsynced before any
//! response that depends on it, group-committed across concurrent requests.
//!
//! Requests hand their record to one writer thread through a bounded
//! channel and wait. The writer takes everything queued, chains and writes
//! it in one `write`, calls `fsync` once, and then answers every waiter. So
//! under load one fsync covers many decisions, and a decision never gets a
//! response before its record is on disk.
//!
//! If the write or the fsync fails, every waiter of that batch gets an error
//! (the handlers answer 503 `temporarily_unavailable`: fail closed), the file
//! is cut back to the last good record, the chain state is restored, and the
//! next batch tries again, so the broker recovers by itself once the disk
//! does.

use chrono::SecondsFormat;
use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Write as _};
use std::os::unix::fs::{FileExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use stint_core::audit::{AuditEntry, Chain, EncodedEntry, MAX_RECORD_LEN};
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

/// The most records one group commit writes.
const MAX_BATCH: usize = 1024;
/// How long the writer waits for company before an fsync, under load.
const LINGER: std::time::Duration = std::time::Duration::from_micros(200);
/// A batch this large goes to disk without waiting.
const LINGER_UNTIL: usize = 32;
/// How many records may wait for the writer before callers wait to enqueue.
const QUEUE_DEPTH: usize = 8192;

/// Where chained records go. `write_durably` returns only once the bytes are
/// on stable storage; on error, the sink must not keep a partial write.
pub trait AuditSink: Send + 'static {
    /// Append `bytes` and make them durable.
    fn write_durably(&mut self, bytes: &[u8]) -> io::Result<()>;
}

/// The audit log file.
#[derive(Debug)]
pub struct FileSink {
    file: File,
    /// Length of the file up to the last durable record.
    good_len: u64,
    /// A failed write may have left bytes past `good_len` that could not be
    /// cut off yet: nothing is appended until they are.
    dirty: bool,
}

impl FileSink {
    fn at(file: File, good_len: u64) -> Self {
        Self {
            file,
            good_len,
            dirty: false,
        }
    }

    /// Open (or create, mode 0600) the log at `path` and find where the
    /// chain stands. An incomplete final line, left by a crash in the middle
    /// of a write that was never acknowledged, is cut off.
    pub fn open(path: &Path) -> io::Result<(Self, Chain)> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)?;
        let metadata = file.metadata()?;
        if metadata.is_file() {
            std::fs::set_permissions(path, Permissions::from_mode(0o600))?;
        }
        let len = metadata.len();
        if len == 0 {
            return Ok((Self::at(file, 0), Chain::genesis()));
        }
        // Read the tail: enough for the last complete record and its newline.
        let window = len.min(2 * MAX_RECORD_LEN as u64 + 2);
        let start = len - window;
        let mut tail = vec![0u8; usize::try_from(window).unwrap_or(0)];
        file.read_exact_at(&mut tail, start)?;

        let Some(last_newline) = tail.iter().rposition(|b| *b == b'\n') else {
            if start == 0 {
                tracing::warn!(
                    bytes = len,
                    "discarding an incomplete first audit record (never acknowledged)"
                );
                file.set_len(0)?;
                file.sync_all()?;
                return Ok((Self::at(file, 0), Chain::genesis()));
            }
            return Err(io::Error::other(
                "the last audit record is longer than the maximum record size",
            ));
        };
        let good_len = start + last_newline as u64 + 1;
        if good_len < len {
            tracing::warn!(
                bytes = len - good_len,
                "discarding an incomplete final audit record (never acknowledged)"
            );
            file.set_len(good_len)?;
            file.sync_all()?;
        }
        let before = tail.get(..last_newline).unwrap_or_default();
        let line_start = match before.iter().rposition(|b| *b == b'\n') {
            Some(at) => at + 1,
            None if start == 0 => 0,
            None => {
                return Err(io::Error::other(
                    "the last audit record is longer than the maximum record size",
                ));
            }
        };
        let last_line = before.get(line_start..).unwrap_or_default();
        let chain = Chain::after(last_line).map_err(|_| {
            io::Error::other("the last audit record is not valid JSON: the log is corrupt; verify it and move it aside")
        })?;
        Ok((Self::at(file, good_len), chain))
    }
}

impl AuditSink for FileSink {
    fn write_durably(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.dirty {
            // A record appended after the remains of a failed write would
            // break the chain: cut them first, or write nothing.
            self.file.set_len(self.good_len)?;
            self.dirty = false;
        }
        let result = self
            .file
            .write_all(bytes)
            .and_then(|()| self.file.sync_data());
        match result {
            Ok(()) => {
                self.good_len += bytes.len() as u64;
                Ok(())
            }
            Err(error) => {
                // Never leave half a batch behind: cut back to the last good
                // record. If that fails too, the next write tries again
                // before appending anything (and a restart cuts an
                // incomplete final line).
                if let Err(truncate) = self.file.set_len(self.good_len) {
                    tracing::error!(%truncate, "could not cut a failed audit write back");
                    self.dirty = true;
                }
                Err(error)
            }
        }
    }
}

/// The audit log could not record a decision.
#[derive(Debug, Clone, Error)]
pub enum AuditError {
    /// The write or the fsync failed.
    #[error("the audit log could not be written: {0}")]
    Write(String),
    /// The writer has stopped.
    #[error("the audit log writer has stopped")]
    Stopped,
}

struct Pending {
    entry: EncodedEntry,
    done: oneshot::Sender<Result<(), AuditError>>,
}

/// A handle to the audit writer. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    queue: mpsc::Sender<Pending>,
    healthy: Arc<AtomicBool>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("healthy", &self.is_healthy())
            .finish()
    }
}

/// Observations of the writer, for metrics.
pub trait AuditObserver: Send + Sync + 'static {
    /// A batch of `records` was committed with one fsync.
    fn committed(&self, records: usize);
    /// A batch of `records` failed.
    fn failed(&self, records: usize);
}

impl AuditLog {
    /// Start the writer thread on `sink`, continuing `chain`.
    pub fn start(
        sink: impl AuditSink,
        chain: Chain,
        observer: Arc<dyn AuditObserver>,
    ) -> io::Result<Self> {
        let (queue, receiver) = mpsc::channel(QUEUE_DEPTH);
        let healthy = Arc::new(AtomicBool::new(true));
        let writer_healthy = Arc::clone(&healthy);
        std::thread::Builder::new()
            .name("stint-audit".into())
            .spawn(move || write_loop(sink, chain, receiver, &writer_healthy, observer.as_ref()))?;
        Ok(Self { queue, healthy })
    }

    /// Record `entry` and wait until it is durable.
    pub async fn record(&self, entry: AuditEntry) -> Result<(), AuditError> {
        let entry = entry
            .encode()
            .map_err(|error| AuditError::Write(error.to_string()))?;
        let (done, wait) = oneshot::channel();
        self.queue
            .send(Pending { entry, done })
            .await
            .map_err(|_| AuditError::Stopped)?;
        wait.await.map_err(|_| AuditError::Stopped)?
    }

    /// Whether the last batch was written.
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Whether the log can be written: true at once if the last batch was;
    /// otherwise try to write `probe` and answer whether that worked. Without
    /// this, a broker taken out of rotation for a failed write would get no
    /// traffic, so no write, so it could never become ready again.
    pub async fn check(&self, probe: impl FnOnce() -> AuditEntry) -> bool {
        self.is_healthy() || self.record(probe()).await.is_ok()
    }
}

fn write_loop(
    mut sink: impl AuditSink,
    mut chain: Chain,
    mut receiver: mpsc::Receiver<Pending>,
    healthy: &AtomicBool,
    observer: &dyn AuditObserver,
) {
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    let mut buffer: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut previous_batch = 0;
    while let Some(first) = receiver.blocking_recv() {
        batch.push(first);
        drain(&mut receiver, &mut batch);
        // Commit delay: when decisions are arriving concurrently (the last
        // batch had company), wait a moment for more before paying for an
        // fsync, as PostgreSQL's commit_delay does. Alone, never wait.
        if previous_batch > 1 && batch.len() < LINGER_UNTIL {
            std::thread::sleep(LINGER);
            drain(&mut receiver, &mut batch);
        }
        previous_batch = batch.len();
        let before = chain;
        buffer.clear();
        for pending in &batch {
            chain.append(&pending.entry, &mut buffer);
        }
        let result = sink
            .write_durably(&buffer)
            .map_err(|error| AuditError::Write(error.to_string()));
        match &result {
            Ok(()) => {
                healthy.store(true, Ordering::Relaxed);
                observer.committed(batch.len());
            }
            Err(error) => {
                chain = before;
                if healthy.swap(false, Ordering::Relaxed) {
                    tracing::error!(%error, "audit log write failed: refusing decisions until it recovers");
                }
                observer.failed(batch.len());
            }
        }
        for pending in batch.drain(..) {
            // A waiter that gave up (its connection closed) is no error.
            let _ = pending.done.send(result.clone());
        }
    }
}

/// Take whatever else is queued, up to [`MAX_BATCH`].
fn drain(receiver: &mut mpsc::Receiver<Pending>, batch: &mut Vec<Pending>) {
    while batch.len() < MAX_BATCH {
        match receiver.try_recv() {
            Ok(next) => batch.push(next),
            Err(_) => break,
        }
    }
}

/// The audit record time format: RFC 3339, milliseconds, `Z`.
pub fn timestamp(now: chrono::DateTime<chrono::Utc>) -> String {
    now.to_rfc3339_opts(SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use stint_core::audit::{Decision, EventKind, verify};

    struct NoMetrics;
    impl AuditObserver for NoMetrics {
        fn committed(&self, _: usize) {}
        fn failed(&self, _: usize) {}
    }

    fn entry(n: u32) -> AuditEntry {
        let mut e = AuditEntry::new(format!("t{n}"), EventKind::TokenMinted, Decision::Allow);
        e.job = Some(format!("job-{n}"));
        e
    }

    #[tokio::test]
    async fn records_are_chained_and_durable_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        {
            let (sink, chain) = FileSink::open(&path).unwrap();
            let log = AuditLog::start(sink, chain, Arc::new(NoMetrics)).unwrap();
            let writes: Vec<_> = (0..50)
                .map(|n| {
                    let log = log.clone();
                    tokio::spawn(async move { log.record(entry(n)).await })
                })
                .collect();
            for write in writes {
                write.await.unwrap().unwrap();
            }
        }
        let (sink, chain) = FileSink::open(&path).unwrap();
        assert_eq!(chain.next_seq(), 50);
        let log = AuditLog::start(sink, chain, Arc::new(NoMetrics)).unwrap();
        log.record(entry(50)).await.unwrap();
        let summary = verify(std::io::BufReader::new(File::open(&path).unwrap())).unwrap();
        assert_eq!(summary.records, 51);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[tokio::test]
    async fn an_incomplete_final_line_is_cut_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        {
            let (sink, chain) = FileSink::open(&path).unwrap();
            let log = AuditLog::start(sink, chain, Arc::new(NoMetrics)).unwrap();
            log.record(entry(0)).await.unwrap();
            log.record(entry(1)).await.unwrap();
        }
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"seq\":2,\"prev\":\"ab").unwrap();
        let (sink, chain) = FileSink::open(&path).unwrap();
        assert_eq!(chain.next_seq(), 2);
        let log = AuditLog::start(sink, chain, Arc::new(NoMetrics)).unwrap();
        log.record(entry(2)).await.unwrap();
        assert_eq!(
            verify(std::io::BufReader::new(File::open(&path).unwrap()))
                .unwrap()
                .records,
            3
        );
    }

    /// A sink that fails while `broken` is set, keeping what succeeded.
    #[derive(Clone, Default)]
    struct FlakySink {
        broken: Arc<AtomicBool>,
        written: Arc<Mutex<Vec<u8>>>,
    }
    impl AuditSink for FlakySink {
        fn write_durably(&mut self, bytes: &[u8]) -> io::Result<()> {
            if self.broken.load(Ordering::SeqCst) {
                return Err(io::Error::from_raw_os_error(28)); // ENOSPC
            }
            self.written.lock().unwrap().extend_from_slice(bytes);
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_failed_write_fails_its_callers_and_the_chain_recovers() {
        let sink = FlakySink::default();
        let log = AuditLog::start(sink.clone(), Chain::genesis(), Arc::new(NoMetrics)).unwrap();
        log.record(entry(0)).await.unwrap();
        assert!(log.is_healthy());
        sink.broken.store(true, Ordering::SeqCst);
        assert!(matches!(
            log.record(entry(1)).await,
            Err(AuditError::Write(_))
        ));
        assert!(!log.is_healthy());
        assert!(
            !log.check(|| entry(99)).await,
            "still failing: the probe fails too"
        );
        sink.broken.store(false, Ordering::SeqCst);
        assert!(
            log.check(|| entry(2)).await,
            "the probe is written once the sink recovers"
        );
        assert!(log.is_healthy());
        assert!(log.check(|| panic!("no probe while healthy")).await);
        let written = sink.written.lock().unwrap().clone();
        // The failed records left no gap: the chain verifies with two records.
        assert_eq!(verify(&written[..]).unwrap().records, 2);
    }
}
