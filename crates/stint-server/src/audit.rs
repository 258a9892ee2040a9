//! The audit log writer: JSON Lines, hash-chained, fsynced before any
//! response that depends on it, group-committed across concurrent requests,
//! its head signed at checkpoints, rotated by size and age.
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
//!
//! **The file must stay where it is.** Before and after every batch the
//! writer checks (one `stat`) that the log's path still names the file it
//! has open. If the file was moved, deleted or replaced, the batch fails
//! like a failed write, and so does every batch after it, until the same
//! file is back at its path or the broker restarts (which starts a new
//! file): a record that no one reading the path will ever see is not a
//! record, and an `Ok` from [`AuditLog::record`] always means "fsynced, in
//! the file at the log's path".
//!
//! **Checkpoints.** Once a signer is attached ([`AuditLog::attach_signer`],
//! the broker's key ring), the writer appends an `audit_checkpoint` record,
//! the chain head signed with the current signing key, every
//! [`AuditSettings::checkpoint_interval`] if anything was recorded since the
//! last one, right after every `keys_rotated` record (signed by the outgoing
//! key, which still signs then), before it rotates a file, and when asked
//! ([`AuditLog::checkpoint`], at a clean shutdown).
//!
//! **Rotation.** Once the file holds [`AuditSettings::rotate_size`] bytes,
//! or its first record is [`AuditSettings::rotate_interval`] old, the writer
//! (between batches) ends it with a checkpoint, gives it its final name
//! (`audit-YYYYMMDDTHHMMSSZ-SEQ.jsonl`, SEQ its last record's), and
//! swaps in a new file at the log's path whose first record,
//! `audit_continued`, names the old file and its head. The swap is a
//! `rename` over the path, so the path always names a complete log. A
//! rotation that fails changes nothing and is tried again after the next
//! checkpoint interval. The broker never deletes a rotated file.

use chrono::{DateTime, Utc};
use ring::rand::SystemRandom;
use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Write as _};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use stint_core::audit::{
    AuditEntry, Chain, ChainError, EncodedEntry, EventKind, MAX_RECORD_LEN, Verifier, VerifyReport,
};
use stint_core::jose::KeySet;
use stint_core::jose::SigningKey;
use stint_core::{Clock, SystemClock};
use stint_store::AuditedWrite;
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

/// When the audit log is signed and rotated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditSettings {
    /// Start a new file once the current one holds this many bytes (0:
    /// never; otherwise at least [`MIN_ROTATE_SIZE`]).
    pub rotate_size: u64,
    /// Start a new file once the current one's first record is this old
    /// (zero: never).
    pub rotate_interval: Duration,
    /// How often the chain head is signed, if anything was recorded since
    /// the last checkpoint ([`MIN_CHECKPOINT_INTERVAL`] to
    /// [`MAX_CHECKPOINT_INTERVAL`]).
    pub checkpoint_interval: Duration,
}

/// The default [`AuditSettings::rotate_size`]: 64 MiB.
pub const DEFAULT_ROTATE_SIZE: u64 = 64 * 1024 * 1024;
/// The smallest [`AuditSettings::rotate_size`] other than 0.
pub const MIN_ROTATE_SIZE: u64 = 4096;
/// The default [`AuditSettings::rotate_interval`]: a day.
pub const DEFAULT_ROTATE_INTERVAL: Duration = Duration::from_secs(24 * 3600);
/// The default [`AuditSettings::checkpoint_interval`]: a minute.
pub const DEFAULT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(60);
/// The shortest [`AuditSettings::checkpoint_interval`].
pub const MIN_CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);
/// The longest [`AuditSettings::checkpoint_interval`].
pub const MAX_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(3600);

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            rotate_size: DEFAULT_ROTATE_SIZE,
            rotate_interval: DEFAULT_ROTATE_INTERVAL,
            checkpoint_interval: DEFAULT_CHECKPOINT_INTERVAL,
        }
    }
}

impl AuditSettings {
    /// Whether the settings are in range.
    pub fn is_valid(&self) -> bool {
        (self.rotate_size == 0 || self.rotate_size >= MIN_ROTATE_SIZE)
            && (MIN_CHECKPOINT_INTERVAL..=MAX_CHECKPOINT_INTERVAL)
                .contains(&self.checkpoint_interval)
    }
}

/// Where chained records go. `write_durably` returns only once the bytes are
/// on stable storage; on error, the sink must not keep a partial write.
pub trait AuditSink: Send + 'static {
    /// Append `bytes` and make them durable.
    fn write_durably(&mut self, bytes: &[u8]) -> io::Result<()>;

    /// The file being written, for rotation; `None` (the default) for a
    /// sink that does not rotate.
    fn current_file(&self) -> Option<CurrentFile> {
        None
    }

    /// Give the current file the name `rotated_name` (in the same
    /// directory) and go on in a new file whose first record is `first`
    /// (chained, with its newline). On error nothing has changed: the
    /// current file is still written, under its name.
    fn rotate(&mut self, rotated_name: &str, first: &[u8]) -> io::Result<()> {
        let _ = (rotated_name, first);
        Err(io::Error::from(io::ErrorKind::Unsupported))
    }

    /// Whether [`Self::write_durably_with`] commits writes with the bytes
    /// (a sink in a database); `false` (the default) for a file.
    fn writes_changes(&self) -> bool {
        false
    }

    /// [`Self::write_durably`], with `writes` committed in the same
    /// transaction: both or neither. Returns each write's change feed
    /// sequence number, or nothing if an earlier attempt had committed
    /// them (their positions are then unknown). The default refuses
    /// writes.
    fn write_durably_with(
        &mut self,
        bytes: &[u8],
        writes: &[AuditedWrite],
    ) -> io::Result<Vec<u64>> {
        if !writes.is_empty() {
            return Err(io::Error::from(io::ErrorKind::Unsupported));
        }
        self.write_durably(bytes).map(|()| Vec::new())
    }
}

/// What rotation needs to know of the file being written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentFile {
    /// Its file name (`audit.jsonl`).
    pub name: String,
    /// Its length, up to the last durable record.
    pub len: u64,
    /// Its first record's time.
    pub started: Option<DateTime<Utc>>,
}

/// How much of the audit file is durable: the file (device and inode) and
/// its length up to the last record on stable storage, set after every
/// write. A reader in the broker's process (the console) reads no further:
/// a write that fails is cut back, and its records were never recorded.
#[derive(Debug, Default)]
pub struct DurableMark {
    at: std::sync::Mutex<Option<((u64, u64), u64)>>,
}

impl DurableMark {
    /// The file (device, inode) being written and its durable length.
    pub fn get(&self) -> Option<((u64, u64), u64)> {
        *self.at.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The writer's: `len` bytes of `file` are durable.
    pub fn set(&self, file: (u64, u64), len: u64) {
        *self.at.lock().unwrap_or_else(|p| p.into_inner()) = Some((file, len));
    }
}

/// The audit log file.
#[derive(Debug)]
pub struct FileSink {
    file: File,
    path: PathBuf,
    /// Device and inode of `file`: the path must keep naming it.
    identity: (u64, u64),
    /// Length of the file up to the last durable record.
    good_len: u64,
    /// A failed write may have left bytes past `good_len` that could not be
    /// cut off yet: nothing is appended until they are.
    dirty: bool,
    /// A rotation renamed files but the directory's fsync failed: nothing is
    /// acknowledged until it succeeds.
    dir_sync_pending: bool,
    started: Option<DateTime<Utc>>,
    /// What is durable, for readers.
    mark: Arc<DurableMark>,
}

fn identity(metadata: &std::fs::Metadata) -> (u64, u64) {
    (metadata.dev(), metadata.ino())
}

/// The time of the record at the start of `bytes`, if it has one.
fn record_time(bytes: &[u8]) -> Option<DateTime<Utc>> {
    #[derive(serde::Deserialize)]
    struct Time {
        time: String,
    }
    let line = bytes.split(|b| *b == b'\n').next()?;
    let time: Time = serde_json::from_slice(line).ok()?;
    DateTime::parse_from_rfc3339(&time.time)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The first line of `file` (of `len` bytes), read without moving its
/// cursor; empty if there is none within [`MAX_RECORD_LEN`].
fn first_line(file: &File, len: u64) -> io::Result<Vec<u8>> {
    for window in [64 * 1024, MAX_RECORD_LEN as u64 + 1] {
        let mut bytes = vec![0u8; usize::try_from(window.min(len)).unwrap_or(0)];
        file.read_exact_at(&mut bytes, 0)?;
        if let Some(end) = bytes.iter().position(|b| *b == b'\n') {
            bytes.truncate(end);
            return Ok(bytes);
        }
        if window >= len {
            break;
        }
    }
    Ok(Vec::new())
}

fn sync_dir(path: &Path) -> io::Result<()> {
    File::open(parent_dir(path))?.sync_all()
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

impl FileSink {
    fn at(file: File, path: &Path, good_len: u64) -> io::Result<Self> {
        let identity = identity(&file.metadata()?);
        let first = first_line(&file, good_len)?;
        let mark = Arc::new(DurableMark::default());
        mark.set(identity, good_len);
        Ok(Self {
            file,
            path: path.to_owned(),
            identity,
            good_len,
            dirty: false,
            dir_sync_pending: false,
            started: record_time(&first),
            mark,
        })
    }

    /// What of the file is durable, updated as it is written.
    pub fn durable_mark(&self) -> Arc<DurableMark> {
        Arc::clone(&self.mark)
    }

    /// Where a rotation writes the next file before it takes the path.
    fn next_path(&self) -> PathBuf {
        let mut name = self.file_name().to_owned();
        name.push_str(".next");
        parent_dir(&self.path).join(name)
    }

    fn file_name(&self) -> &str {
        self.path
            .file_name()
            .and_then(|name| name.to_str())
            .unwrap_or("audit.jsonl")
    }

    /// Open (or create, mode 0600) the log at `path` and find where the
    /// chain stands. An incomplete final line, left by a crash in the middle
    /// of a write that was never acknowledged, is cut off; so are the
    /// remains of a rotation a crash interrupted (the next file not yet
    /// swapped in, a second name of the current file).
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
            let sink = Self::at(file, path, 0)?;
            sink.clean_up_rotation();
            return Ok((sink, Chain::genesis()));
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
                let sink = Self::at(file, path, 0)?;
                sink.clean_up_rotation();
                return Ok((sink, Chain::genesis()));
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
        let sink = Self::at(file, path, good_len)?;
        sink.clean_up_rotation();
        Ok((sink, chain))
    }

    /// Remove what a rotation interrupted by a crash left: the next file,
    /// never swapped in, and a rotated name that is still the live file's.
    fn clean_up_rotation(&self) {
        let next = self.next_path();
        match std::fs::remove_file(&next) {
            Ok(()) => {
                tracing::warn!(path = %next.display(), "removed the next audit file of an interrupted rotation (it was never in use)")
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(path = %next.display(), %error, "could not remove the next audit file of an interrupted rotation")
            }
        }
        let stem = rotated_stem(self.file_name());
        let Ok(entries) = std::fs::read_dir(parent_dir(&self.path)) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !(name.starts_with(&format!("{stem}-")) && name.ends_with(".jsonl")) {
                continue;
            }
            let same = std::fs::symlink_metadata(entry.path())
                .is_ok_and(|metadata| identity(&metadata) == self.identity);
            if same {
                tracing::warn!(
                    name,
                    "removed a second name of the live audit file, left by an interrupted rotation"
                );
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }

    /// Fail unless the log's path still names the file being written.
    fn check_identity(&self) -> io::Result<()> {
        match std::fs::metadata(&self.path) {
            Ok(metadata) if identity(&metadata) == self.identity => Ok(()),
            Ok(_) => Err(io::Error::other(format!(
                "{} is no longer the file this broker has open (it was moved or replaced): refusing to record into a file no one reading that path sees; put the file back, or restart stintd to start a new log",
                self.path.display()
            ))),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                Err(io::Error::other(format!(
                    "{} was moved or deleted: refusing to record into a file no one reading that path sees; put the file back, or restart stintd to start a new log",
                    self.path.display()
                )))
            }
            Err(error) => Err(error),
        }
    }
}

/// `audit` for `audit.jsonl`: rotated files are named `audit-...jsonl`.
fn rotated_stem(name: &str) -> &str {
    name.strip_suffix(".jsonl").unwrap_or(name)
}

/// The files of the chain whose current file is `current`, oldest first:
/// the rotated ones beside it (`STEM-YYYYMMDDTHHMMSSZ-SEQ.jsonl`, in the
/// order of their last record's `SEQ`), then `current` itself.
pub fn chain_files(current: &Path) -> io::Result<Vec<PathBuf>> {
    let dir = current.parent().unwrap_or_else(|| Path::new("."));
    let name = current
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| io::Error::other("the audit file's name is not UTF-8"))?;
    let prefix = format!("{}-", rotated_stem(name));
    let mut rotated: Vec<(u64, PathBuf)> = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        let seq = file_name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".jsonl"))
            .and_then(|rest| rest.rsplit_once('-'))
            .filter(|(time, _)| time.len() == 16 && time.ends_with('Z'))
            .and_then(|(_, seq)| seq.parse::<u64>().ok());
        if let Some(seq) = seq {
            rotated.push((seq, entry.path()));
        }
    }
    rotated.sort();
    let mut files: Vec<PathBuf> = rotated.into_iter().map(|(_, path)| path).collect();
    files.push(current.to_owned());
    Ok(files)
}

/// The name a rotated file gets: `STEM-YYYYMMDDTHHMMSSZ-SEQ.jsonl`.
fn rotated_name(current: &str, now: DateTime<Utc>, last_seq: u64) -> String {
    format!(
        "{}-{}-{last_seq}.jsonl",
        rotated_stem(current),
        now.format("%Y%m%dT%H%M%SZ")
    )
}

impl AuditSink for FileSink {
    fn write_durably(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.check_identity()?;
        if self.dirty {
            // A record appended after the remains of a failed write would
            // break the chain: cut them first, or write nothing.
            self.file.set_len(self.good_len)?;
            self.dirty = false;
        }
        if self.dir_sync_pending {
            sync_dir(&self.path)?;
            self.dir_sync_pending = false;
        }
        let result = self
            .file
            .write_all(bytes)
            .and_then(|()| self.file.sync_data())
            // Moved or deleted while the batch was written: the records may
            // be in a file no one reads at the path.
            .and_then(|()| self.check_identity());
        match result {
            Ok(()) => {
                self.good_len += bytes.len() as u64;
                self.mark.set(self.identity, self.good_len);
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

    fn current_file(&self) -> Option<CurrentFile> {
        Some(CurrentFile {
            name: self.file_name().to_owned(),
            len: self.good_len,
            started: self.started,
        })
    }

    fn rotate(&mut self, rotated_name: &str, first: &[u8]) -> io::Result<()> {
        if rotated_name.is_empty()
            || rotated_name.contains('/')
            || rotated_name.starts_with('.')
            || rotated_name == self.file_name()
        {
            return Err(io::Error::other("not a name for a rotated audit file"));
        }
        self.check_identity()?;
        if self.dirty {
            return Err(io::Error::other(
                "the audit file has the remains of a failed write",
            ));
        }
        let rotated = parent_dir(&self.path).join(rotated_name);
        let next_path = self.next_path();
        // The current file's final name first: from here on it has two, and
        // the live path still names it.
        std::fs::hard_link(&self.path, &rotated)?;
        let swapped = (|| {
            match std::fs::remove_file(&next_path) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
                _ => {}
            }
            let mut next = OpenOptions::new()
                .read(true)
                .append(true)
                .create_new(true)
                .mode(0o600)
                .open(&next_path)?;
            next.write_all(first)?;
            next.sync_all()?;
            let next_identity = identity(&next.metadata()?);
            // The swap: one rename, so the path names one complete log or
            // the other, never none.
            std::fs::rename(&next_path, &self.path)?;
            Ok((next, next_identity))
        })();
        let (next, next_identity) = match swapped {
            Ok(swapped) => swapped,
            Err(error) => {
                let _ = std::fs::remove_file(&next_path);
                let _ = std::fs::remove_file(&rotated);
                return Err(error);
            }
        };
        if let Err(error) = sync_dir(&self.path) {
            tracing::warn!(%error, "could not sync the audit directory after a rotation; retrying before the next write");
            self.dir_sync_pending = true;
        }
        self.file = next;
        self.identity = next_identity;
        self.good_len = first.len() as u64;
        self.mark.set(self.identity, self.good_len);
        self.started = record_time(first);
        Ok(())
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

/// Signs the audit log's checkpoints: the broker's key ring.
pub trait CheckpointSigner: Send + Sync + 'static {
    /// The key that signs now.
    fn signing_key(&self) -> Arc<SigningKey>;
}

/// What a waiter learns: whether its batch is durable, and the change feed
/// sequence number of the write it carried (if it carried one and the sink
/// knows it).
type Outcome = Result<Option<u64>, AuditError>;

enum Job {
    Record {
        entry: EncodedEntry,
        /// A checkpoint follows the record in the same write.
        seal: bool,
        /// Committed with the record (only with a sink that
        /// [`AuditSink::writes_changes`]).
        write: Option<AuditedWrite>,
        done: oneshot::Sender<Outcome>,
    },
    /// A checkpoint, if anything was recorded since the last one (`done`:
    /// someone waits for it; none for the periodic one).
    Checkpoint {
        done: Option<oneshot::Sender<Outcome>>,
    },
}

/// A handle to the audit writer. Cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    queue: mpsc::Sender<Job>,
    healthy: Arc<AtomicBool>,
    /// The sink commits writes with their records.
    writes_changes: bool,
    signer: Arc<OnceLock<Arc<dyn CheckpointSigner>>>,
    checkpoint_interval: Duration,
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
    /// Start the writer thread on `sink`, continuing `chain`, with the
    /// default [`AuditSettings`] and the system clock.
    pub fn start(
        sink: impl AuditSink,
        chain: Chain,
        observer: Arc<dyn AuditObserver>,
    ) -> io::Result<Self> {
        Self::start_with(
            sink,
            chain,
            observer,
            AuditSettings::default(),
            Arc::new(SystemClock),
        )
    }

    /// Start the writer thread on `sink`, continuing `chain`, rotating and
    /// signing as `settings` say; `clock` dates checkpoints and rotations.
    pub fn start_with(
        sink: impl AuditSink,
        chain: Chain,
        observer: Arc<dyn AuditObserver>,
        settings: AuditSettings,
        clock: Arc<dyn Clock>,
    ) -> io::Result<Self> {
        let (queue, receiver) = mpsc::channel(QUEUE_DEPTH);
        let healthy = Arc::new(AtomicBool::new(true));
        let writes_changes = sink.writes_changes();
        let signer = Arc::new(OnceLock::new());
        let writer = Writer {
            sink,
            opened_at: Some(chain.next_seq()),
            chain,
            healthy: Arc::clone(&healthy),
            observer,
            signer: Arc::clone(&signer),
            clock,
            rng: SystemRandom::new(),
            settings,
            unsigned: false,
            rotation_blocked: false,
        };
        std::thread::Builder::new()
            .name("stint-audit".into())
            .spawn(move || writer.run(receiver))?;
        Ok(Self {
            queue,
            healthy,
            writes_changes,
            signer,
            checkpoint_interval: settings.checkpoint_interval,
        })
    }

    /// Sign checkpoints with `signer` from now on, and every checkpoint
    /// interval (on the current tokio runtime). Only the first signer
    /// attached counts.
    pub fn attach_signer(&self, signer: Arc<dyn CheckpointSigner>) {
        if self.signer.set(signer).is_err() {
            tracing::warn!("the audit log already has a checkpoint signer");
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no runtime: audit checkpoints are made only when asked");
            return;
        };
        // A weak handle: the ticker does not keep the writer alive.
        let queue = self.queue.downgrade();
        let period = self.checkpoint_interval;
        runtime.spawn(async move {
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(queue) = queue.upgrade() else { break };
                if queue.send(Job::Checkpoint { done: None }).await.is_err() {
                    break;
                }
            }
        });
    }

    /// Record `entry` and wait until it is durable: `Ok` means the record
    /// is fsynced in the file at the log's path.
    pub async fn record(&self, entry: AuditEntry) -> Result<(), AuditError> {
        self.send(entry, None).await.map(|_| ())
    }

    /// Whether [`Self::record_with`] can commit a write with its record
    /// (the log is in the store the write goes to).
    pub fn writes_changes(&self) -> bool {
        self.writes_changes
    }

    /// Record `entry` and store `write` in the same transaction, and wait
    /// until both are durable; `Ok` carries the write's change feed
    /// sequence number (`None`: an attempt whose answer was lost committed
    /// it, at a position this broker does not know). On error neither is
    /// written. Only where [`Self::writes_changes`].
    pub async fn record_with(
        &self,
        entry: AuditEntry,
        write: AuditedWrite,
    ) -> Result<Option<u64>, AuditError> {
        if !self.writes_changes {
            return Err(AuditError::Write(
                "this audit log cannot commit a change with its record".into(),
            ));
        }
        self.send(entry, Some(write)).await
    }

    async fn send(&self, entry: AuditEntry, write: Option<AuditedWrite>) -> Outcome {
        // The outgoing key signs the chain up to its own rotation record, so
        // that the new key's checkpoints are vouched for by the old one.
        let seal = entry.event == EventKind::KeysRotated;
        let entry = entry
            .encode()
            .map_err(|error| AuditError::Write(error.to_string()))?;
        let (done, wait) = oneshot::channel();
        self.queue
            .send(Job::Record {
                entry,
                seal,
                write,
                done,
            })
            .await
            .map_err(|_| AuditError::Stopped)?;
        wait.await.map_err(|_| AuditError::Stopped)?
    }

    /// Sign the chain head now (if anything was recorded since the last
    /// checkpoint and a signer is attached) and wait until it is durable.
    pub async fn checkpoint(&self) -> Result<(), AuditError> {
        let (done, wait) = oneshot::channel();
        self.queue
            .send(Job::Checkpoint { done: Some(done) })
            .await
            .map_err(|_| AuditError::Stopped)?;
        wait.await.map_err(|_| AuditError::Stopped)?.map(|_| ())
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

/// The writer thread's state.
struct Writer<S> {
    sink: S,
    chain: Chain,
    healthy: Arc<AtomicBool>,
    observer: Arc<dyn AuditObserver>,
    signer: Arc<OnceLock<Arc<dyn CheckpointSigner>>>,
    clock: Arc<dyn Clock>,
    rng: SystemRandom,
    settings: AuditSettings,
    /// The first `seq` of this run, until its first checkpoint says so.
    opened_at: Option<u64>,
    /// Whether anything was recorded since the last checkpoint.
    unsigned: bool,
    /// A rotation failed: none is tried until the next checkpoint tick.
    rotation_blocked: bool,
}

/// What a failed write restores.
#[derive(Clone, Copy)]
struct Saved {
    chain: Chain,
    opened_at: Option<u64>,
    unsigned: bool,
}

impl<S: AuditSink> Writer<S> {
    fn save(&self) -> Saved {
        Saved {
            chain: self.chain,
            opened_at: self.opened_at,
            unsigned: self.unsigned,
        }
    }

    fn restore(&mut self, saved: Saved) {
        self.chain = saved.chain;
        self.opened_at = saved.opened_at;
        self.unsigned = saved.unsigned;
    }

    fn run(mut self, mut receiver: mpsc::Receiver<Job>) {
        let mut batch: Vec<Job> = Vec::with_capacity(MAX_BATCH);
        let mut buffer: Vec<u8> = Vec::with_capacity(64 * 1024);
        // Each waiter, with the index of its write in `writes`.
        let mut waiters: Vec<(oneshot::Sender<Outcome>, Option<usize>)> =
            Vec::with_capacity(MAX_BATCH);
        let mut writes: Vec<AuditedWrite> = Vec::new();
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
            let saved = self.save();
            buffer.clear();
            let mut lines = 0;
            for job in batch.drain(..) {
                match job {
                    Job::Record {
                        entry,
                        seal,
                        write,
                        done,
                    } => {
                        self.chain.append(&entry, &mut buffer);
                        self.unsigned = true;
                        lines += 1;
                        if seal {
                            lines += self.append_checkpoint(&mut buffer);
                        }
                        let index = write.map(|write| {
                            writes.push(write);
                            writes.len() - 1
                        });
                        waiters.push((done, index));
                    }
                    Job::Checkpoint { done } => {
                        if self.unsigned {
                            lines += self.append_checkpoint(&mut buffer);
                        }
                        if done.is_none() {
                            // The periodic tick: a failed rotation may be
                            // tried again.
                            self.rotation_blocked = false;
                        }
                        waiters.extend(done.map(|done| (done, None)));
                    }
                }
            }
            let result = if buffer.is_empty() {
                Ok(Vec::new())
            } else {
                self.commit(&buffer, &writes, lines, saved)
            };
            writes.clear();
            // Before the answers (the records are durable either way): once
            // a caller has its answer, the writer has finished what its
            // batch started, so a broker stopped after its last answer
            // leaves no rotation half done.
            if result.is_ok() && lines > 0 {
                self.rotate_if_due();
            }
            for (done, index) in waiters.drain(..) {
                let outcome = match &result {
                    Ok(seqs) => Ok(index.and_then(|i| seqs.get(i).copied())),
                    Err(error) => Err(error.clone()),
                };
                // A waiter that gave up (its connection closed) is no error.
                let _ = done.send(outcome);
            }
        }
    }

    /// Write `buffer` (`lines` records) with `writes`, or restore `saved`
    /// on failure. Returns the writes' sequence numbers (see
    /// [`AuditSink::write_durably_with`]).
    fn commit(
        &mut self,
        buffer: &[u8],
        writes: &[AuditedWrite],
        lines: usize,
        saved: Saved,
    ) -> Result<Vec<u64>, AuditError> {
        let result = self
            .sink
            .write_durably_with(buffer, writes)
            .map_err(|error| AuditError::Write(error.to_string()));
        match &result {
            Ok(_) => {
                self.healthy.store(true, Ordering::Relaxed);
                self.observer.committed(lines);
            }
            Err(error) => {
                self.restore(saved);
                if self.healthy.swap(false, Ordering::Relaxed) {
                    tracing::error!(%error, "audit log write failed: refusing decisions until it recovers");
                }
                self.observer.failed(lines);
            }
        }
        result
    }

    /// Append a checkpoint of the chain as it stands; returns the records
    /// appended (0 without a signer, or if signing failed).
    fn append_checkpoint(&mut self, buffer: &mut Vec<u8>) -> usize {
        let Some(signer) = self.signer.get() else {
            return 0;
        };
        let key = signer.signing_key();
        let time = timestamp(self.clock.now());
        let entry = self
            .chain
            .checkpoint(time, self.opened_at, &key, &self.rng)
            .map_err(|e| e.to_string())
            .and_then(|entry| entry.encode().map_err(|e| e.to_string()));
        match entry {
            Ok(entry) => {
                self.chain.append(&entry, buffer);
                self.opened_at = None;
                self.unsigned = false;
                1
            }
            Err(error) => {
                tracing::error!(%error, "could not sign an audit checkpoint");
                0
            }
        }
    }

    /// Start a new file if the current one is big or old enough.
    fn rotate_if_due(&mut self) {
        if self.rotation_blocked {
            return;
        }
        let Some(file) = self.sink.current_file() else {
            return;
        };
        let now = self.clock.now();
        let big = self.settings.rotate_size > 0 && file.len >= self.settings.rotate_size;
        let old = !self.settings.rotate_interval.is_zero()
            && file.started.is_some_and(|started| {
                (now - started)
                    .to_std()
                    .is_ok_and(|age| age >= self.settings.rotate_interval)
            });
        if !(big || old) {
            return;
        }
        // The old file ends signed.
        let saved = self.save();
        let mut seal = Vec::new();
        let lines = self.append_checkpoint(&mut seal);
        if lines > 0 && self.commit(&seal, &[], lines, saved).is_err() {
            self.rotation_blocked = true;
            return;
        }
        let Some(last_seq) = self.chain.next_seq().checked_sub(1) else {
            return;
        };
        let name = rotated_name(&file.name, now, last_seq);
        let first = AuditEntry::continuation(timestamp(now), name.clone(), self.chain.head());
        let mut next = self.chain;
        let mut bytes = Vec::new();
        match first.encode() {
            Ok(first) => next.append(&first, &mut bytes),
            Err(error) => {
                tracing::error!(%error, "could not encode an audit continuation record");
                self.rotation_blocked = true;
                return;
            }
        }
        match self.sink.rotate(&name, &bytes) {
            Ok(()) => {
                self.chain = next;
                self.unsigned = true;
                tracing::info!(rotated = %name, records = last_seq + 1, "audit log rotated");
            }
            Err(error) => {
                tracing::warn!(%error, "audit log rotation failed; writing on in the current file and trying again later");
                self.rotation_blocked = true;
            }
        }
    }
}

/// Take whatever else is queued, up to [`MAX_BATCH`].
fn drain(receiver: &mut mpsc::Receiver<Job>, batch: &mut Vec<Job>) {
    while batch.len() < MAX_BATCH {
        match receiver.try_recv() {
            Ok(next) => batch.push(next),
            Err(_) => break,
        }
    }
}

/// What [`verify_files`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilesReport {
    /// The files with records, in chain order.
    pub files: Vec<PathBuf>,
    /// The chain's findings.
    pub report: VerifyReport,
    /// Things worth knowing that do not break the chain (an empty file, a
    /// file whose predecessor was renamed).
    pub notes: Vec<String>,
}

/// A set of audit files that does not verify.
#[derive(Debug, Error)]
pub enum VerifyFilesError {
    /// A file could not be read.
    #[error("cannot read {path}: {message}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// Two files start at the same record.
    #[error("{first} and {second} both start at record {seq}: give each file of the chain once")]
    Duplicate {
        /// One file.
        first: PathBuf,
        /// The other.
        second: PathBuf,
        /// Where both start.
        seq: u64,
    },
    /// The chain is broken in a file.
    #[error("{path}: chain broken: {error}")]
    Broken {
        /// The file.
        path: PathBuf,
        /// The first problem in it.
        error: ChainError,
    },
}

/// Verify audit files as one chain, with checkpoints checked against
/// `trusted`: the live `audit.jsonl` and any rotated files, in any order
/// (they are put in order by their first record's `seq`).
pub fn verify_files(paths: &[PathBuf], trusted: KeySet) -> Result<FilesReport, VerifyFilesError> {
    #[derive(serde::Deserialize)]
    struct First {
        seq: u64,
        #[serde(default)]
        previous_file: Option<String>,
    }
    let read_error = |path: &Path, error: io::Error| VerifyFilesError::Read {
        path: path.to_owned(),
        message: error.to_string(),
    };
    let mut notes = Vec::new();
    let mut ordered: Vec<(u64, Option<String>, PathBuf)> = Vec::with_capacity(paths.len());
    for path in paths {
        let file = File::open(path).map_err(|e| read_error(path, e))?;
        let len = file.metadata().map_err(|e| read_error(path, e))?.len();
        let line = first_line(&file, len).map_err(|e| read_error(path, e))?;
        if line.is_empty() && len == 0 {
            notes.push(format!("{} is empty", path.display()));
            continue;
        }
        // A first line that is not a record: the verifier names the problem.
        let (seq, previous) = match serde_json::from_slice::<First>(&line) {
            Ok(first) => (first.seq, first.previous_file),
            Err(_) => (0, None),
        };
        ordered.push((seq, previous, path.clone()));
    }
    ordered.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.2.cmp(&b.2)));
    for pair in ordered.windows(2) {
        if let [(seq, _, first), (next, _, second)] = pair
            && seq == next
        {
            return Err(VerifyFilesError::Duplicate {
                first: first.clone(),
                second: second.clone(),
                seq: *seq,
            });
        }
    }
    let mut verifier = Verifier::new(trusted);
    let mut before: Option<&Path> = None;
    for (_, previous, path) in &ordered {
        if let (Some(named), Some(before)) = (previous, before) {
            let given = before.file_name().and_then(|n| n.to_str());
            if given != Some(named.as_str()) {
                notes.push(format!(
                    "{} continues {named}, given as {} (the hashes link them)",
                    path.display(),
                    before.display()
                ));
            }
        }
        let file = File::open(path).map_err(|e| read_error(path, e))?;
        verifier
            .file(io::BufReader::new(file))
            .map_err(|error| VerifyFilesError::Broken {
                path: path.clone(),
                error,
            })?;
        before = Some(path);
    }
    Ok(FilesReport {
        files: ordered.into_iter().map(|(_, _, path)| path).collect(),
        report: verifier.report(),
        notes,
    })
}

pub use stint_core::audit::timestamp;

#[cfg(test)]
mod tests {

    #[test]
    fn chain_files_are_the_rotated_ones_by_seq_then_the_current() {
        let dir = tempfile::tempdir().unwrap();
        for name in [
            "audit.jsonl",
            "audit-20261202T000000Z-100.jsonl",
            "audit-20261201T000000Z-9.jsonl",
            "audit-20261203T000000Z-19.jsonl",
            "audit-notatime-5.jsonl",
            "other.jsonl",
            "audit-20261201T000000Z-x.jsonl",
        ] {
            std::fs::write(dir.path().join(name), b"").unwrap();
        }
        let files = chain_files(&dir.path().join("audit.jsonl")).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            names,
            [
                "audit-20261201T000000Z-9.jsonl",
                "audit-20261203T000000Z-19.jsonl",
                "audit-20261202T000000Z-100.jsonl",
                "audit.jsonl"
            ]
        );
    }
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

    mod file {
        use super::*;
        use stint_core::ManualClock;
        use stint_core::audit::{Verifier, VerifyReport};
        use stint_core::jose::{Algorithm, KeySet};

        struct Fixed(Arc<SigningKey>);
        impl CheckpointSigner for Fixed {
            fn signing_key(&self) -> Arc<SigningKey> {
                Arc::clone(&self.0)
            }
        }

        fn key() -> Arc<SigningKey> {
            Arc::new(
                SigningKey::generate(Algorithm::ES256, &SystemRandom::new())
                    .unwrap()
                    .0,
            )
        }

        fn settings(rotate_size: u64) -> AuditSettings {
            AuditSettings {
                rotate_size,
                rotate_interval: Duration::ZERO,
                checkpoint_interval: MAX_CHECKPOINT_INTERVAL,
            }
        }

        fn start(path: &Path, settings: AuditSettings, clock: Arc<ManualClock>) -> AuditLog {
            let (sink, chain) = FileSink::open(path).unwrap();
            AuditLog::start_with(sink, chain, Arc::new(NoMetrics), settings, clock).unwrap()
        }

        /// Every audit file in `dir`, rotated ones first (by their first
        /// record), then the live one, verified as one chain.
        fn verify_dir(dir: &Path, keys: &[&SigningKey]) -> VerifyReport {
            let mut trusted = KeySet::new();
            for key in keys {
                trusted.insert(key.verifying_key());
            }
            let mut files: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
                .map(|p| {
                    let text = std::fs::read_to_string(&p).unwrap();
                    let first: serde_json::Value =
                        serde_json::from_str(text.lines().next().unwrap()).unwrap();
                    (first["seq"].as_u64().unwrap(), p)
                })
                .collect();
            files.sort();
            let mut verifier = Verifier::new(trusted);
            for (_, path) in &files {
                verifier
                    .file(std::io::BufReader::new(File::open(path).unwrap()))
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
            verifier.report()
        }

        fn events(path: &Path) -> Vec<String> {
            std::fs::read_to_string(path)
                .unwrap()
                .lines()
                .map(|l| {
                    let v: serde_json::Value = serde_json::from_str(l).unwrap();
                    v["event"].as_str().unwrap().to_owned()
                })
                .collect()
        }

        #[tokio::test]
        async fn a_deleted_or_moved_log_fails_closed_until_it_is_back() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("audit.jsonl");
            let log = start(
                &path,
                settings(0),
                Arc::new(ManualClock::new(chrono::Utc::now())),
            );
            log.record(entry(0)).await.unwrap();

            let moved = dir.path().join("moved.jsonl");
            std::fs::rename(&path, &moved).unwrap();
            let refused = log.record(entry(1)).await;
            assert!(
                matches!(&refused, Err(AuditError::Write(m)) if m.contains("was moved or deleted")),
                "{refused:?}"
            );
            assert!(!log.is_healthy());
            // Nothing was written into the moved file either.
            assert_eq!(
                verify(&std::fs::read(&moved).unwrap()[..]).unwrap().records,
                1
            );

            // Another file at the path is not ours to write.
            std::fs::write(&path, b"").unwrap();
            assert!(log.record(entry(2)).await.is_err());
            assert_eq!(std::fs::read(&path).unwrap(), b"");

            // The same file back where it was: the log recovers.
            std::fs::rename(&moved, &path).unwrap();
            log.record(entry(3)).await.unwrap();
            assert!(log.is_healthy());
            assert_eq!(
                verify(&std::fs::read(&path).unwrap()[..]).unwrap().records,
                2
            );

            std::fs::remove_file(&path).unwrap();
            assert!(log.record(entry(4)).await.is_err());
            assert!(
                !log.check(|| entry(5)).await,
                "the readiness probe fails too"
            );
            assert!(!path.exists(), "a deleted log is not silently recreated");
        }

        #[tokio::test]
        async fn checkpoints_sign_the_head_after_a_rotation_record_and_when_asked() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("audit.jsonl");
            let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
            let old = key();
            let log = start(&path, settings(0), clock);
            log.record(entry(0)).await.unwrap();
            log.checkpoint().await.unwrap();
            assert_eq!(events(&path), ["token_minted"], "no signer: no checkpoint");

            let signer = Arc::new(Switch(std::sync::Mutex::new(Arc::clone(&old))));
            log.attach_signer(signer.clone());
            log.checkpoint().await.unwrap();
            log.checkpoint().await.unwrap();
            assert_eq!(
                events(&path),
                ["token_minted", "audit_checkpoint"],
                "one checkpoint: nothing new to sign the second time"
            );
            let new = key();
            let mut rotated = AuditEntry::new("t".into(), EventKind::KeysRotated, Decision::Allow);
            rotated.kid = Some(new.kid().to_owned());
            log.record(rotated).await.unwrap();
            *signer.0.lock().unwrap() = Arc::clone(&new);
            log.record(entry(1)).await.unwrap();
            log.checkpoint().await.unwrap();
            assert_eq!(
                events(&path),
                [
                    "token_minted",
                    "audit_checkpoint",
                    "keys_rotated",
                    "audit_checkpoint",
                    "token_minted",
                    "audit_checkpoint"
                ]
            );
            // Knowing only the old key, every checkpoint verifies: the
            // rotation record, sealed by the old key, vouches for the new.
            let report = verify_dir(dir.path(), &[&old]);
            assert_eq!(report.verified_checkpoints, 3);
            assert_eq!(report.unsigned, 0);
            let lines = std::fs::read_to_string(&path).unwrap();
            let first: serde_json::Value =
                serde_json::from_str(lines.lines().nth(1).unwrap()).unwrap();
            assert_eq!(
                first["checkpoint"]["opened_at"], 0,
                "the run's first checkpoint"
            );
            assert_eq!(first["checkpoint"]["kid"], old.kid());
        }

        #[tokio::test]
        async fn the_head_is_signed_every_interval_when_something_was_recorded() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("audit.jsonl");
            let log = start(
                &path,
                AuditSettings {
                    checkpoint_interval: MIN_CHECKPOINT_INTERVAL,
                    ..settings(0)
                },
                Arc::new(ManualClock::new(chrono::Utc::now())),
            );
            log.attach_signer(Arc::new(Fixed(key())));
            log.record(entry(0)).await.unwrap();
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while events(&path).len() < 2 {
                assert!(
                    std::time::Instant::now() < deadline,
                    "no periodic checkpoint"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            assert_eq!(events(&path), ["token_minted", "audit_checkpoint"]);
            // Nothing new since: a checkpoint asked for signs nothing.
            log.checkpoint().await.unwrap();
            assert_eq!(events(&path).len(), 2);
        }

        struct Switch(std::sync::Mutex<Arc<SigningKey>>);
        impl CheckpointSigner for Switch {
            fn signing_key(&self) -> Arc<SigningKey> {
                Arc::clone(&self.0.lock().unwrap())
            }
        }

        #[tokio::test]
        async fn rotation_by_size_and_age_keeps_one_chain() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("audit.jsonl");
            let clock = Arc::new(ManualClock::new(chrono::Utc::now()));
            let key = key();
            {
                let log = start(&path, settings(MIN_ROTATE_SIZE), clock.clone());
                log.attach_signer(Arc::new(Fixed(Arc::clone(&key))));
                for n in 0..100 {
                    log.record(entry(n)).await.unwrap();
                }
            }
            let rotated: Vec<PathBuf> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().path())
                .filter(|p| p != &path)
                .collect();
            assert!(rotated.len() >= 2, "{rotated:?}");
            for file in &rotated {
                let name = file.file_name().unwrap().to_str().unwrap();
                assert!(
                    name.starts_with("audit-") && name.ends_with(".jsonl"),
                    "{name}"
                );
                assert_eq!(
                    events(file).last().map(String::as_str),
                    Some("audit_checkpoint"),
                    "a rotated file ends signed"
                );
                let mode = std::fs::metadata(file).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600);
            }
            let live = std::fs::read_to_string(&path).unwrap();
            let first: serde_json::Value =
                serde_json::from_str(live.lines().next().unwrap()).unwrap();
            assert_eq!(first["event"], "audit_continued");
            assert!(
                rotated
                    .iter()
                    .any(|p| p.file_name().unwrap().to_str() == first["previous_file"].as_str()),
                "names the file before: {first}"
            );
            assert_eq!(first["previous_head"], first["prev"]);
            let report = verify_dir(dir.path(), &[&key]);
            assert_eq!(report.first_seq, 0);
            let minted = std::fs::read_dir(dir.path())
                .unwrap()
                .flat_map(|e| events(&e.unwrap().path()))
                .filter(|e| e == "token_minted")
                .count();
            assert_eq!(minted, 100, "every record is in one of the files");
            assert_eq!(report.verified_checkpoints as usize, rotated.len());

            // Reopened, the log carries on from the live file; a day later
            // (rotation by age only), its next batch starts a new file.
            let log = start(
                &path,
                AuditSettings {
                    rotate_size: 0,
                    rotate_interval: Duration::from_secs(24 * 3600),
                    checkpoint_interval: MAX_CHECKPOINT_INTERVAL,
                },
                clock.clone(),
            );
            log.attach_signer(Arc::new(Fixed(Arc::clone(&key))));
            let mut first_record = entry(100);
            first_record.time = timestamp(clock.now());
            log.record(first_record).await.unwrap();
            let files_before = std::fs::read_dir(dir.path()).unwrap().count();
            log.record(entry(101)).await.unwrap();
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), files_before);
            clock.advance(chrono::TimeDelta::hours(25));
            log.record(entry(102)).await.unwrap();
            assert_eq!(
                std::fs::read_dir(dir.path()).unwrap().count(),
                files_before + 1
            );
            log.record(entry(103)).await.unwrap();
            let report = verify_dir(dir.path(), &[&key]);
            assert_eq!(report.first_seq, 0);
            assert_eq!(events(&path), ["audit_continued", "token_minted"]);
        }

        #[tokio::test]
        async fn a_failed_rotation_changes_nothing() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("audit.jsonl");
            let (mut sink, mut chain) = FileSink::open(&path).unwrap();
            let mut out = Vec::new();
            chain.append(&entry(0).encode().unwrap(), &mut out);
            sink.write_durably(&out).unwrap();
            // The rotated name is taken: the link fails, nothing moves.
            std::fs::write(dir.path().join("audit-taken.jsonl"), b"other\n").unwrap();
            let mut first = Vec::new();
            chain
                .clone()
                .append(&entry(1).encode().unwrap(), &mut first);
            assert!(sink.rotate("audit-taken.jsonl", &first).is_err());
            assert!(sink.rotate("../escape.jsonl", &first).is_err());
            assert_eq!(
                std::fs::read(dir.path().join("audit-taken.jsonl")).unwrap(),
                b"other\n"
            );
            assert!(!dir.path().join("audit.jsonl.next").exists());
            out.clear();
            chain.append(&entry(1).encode().unwrap(), &mut out);
            sink.write_durably(&out).unwrap();
            assert_eq!(
                verify(&std::fs::read(&path).unwrap()[..]).unwrap().records,
                2
            );
        }

        #[tokio::test]
        async fn an_interrupted_rotation_is_cleaned_up_on_open() {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("audit.jsonl");
            {
                let log = start(
                    &path,
                    settings(0),
                    Arc::new(ManualClock::new(chrono::Utc::now())),
                );
                log.record(entry(0)).await.unwrap();
            }
            // A crash after the old file got its second name and the next
            // file was written, before the swap.
            let second_name = dir.path().join("audit-20261123T100000Z-0.jsonl");
            std::fs::hard_link(&path, &second_name).unwrap();
            std::fs::write(dir.path().join("audit.jsonl.next"), b"{\"seq\":1}\n").unwrap();
            let other = dir.path().join("audit-20261122T100000Z-0.jsonl");
            std::fs::write(&other, b"an older rotated file\n").unwrap();
            let (_sink, chain) = FileSink::open(&path).unwrap();
            assert_eq!(chain.next_seq(), 1);
            assert!(!second_name.exists());
            assert!(!dir.path().join("audit.jsonl.next").exists());
            assert!(other.exists(), "a real rotated file is never touched");
        }
    }
}
