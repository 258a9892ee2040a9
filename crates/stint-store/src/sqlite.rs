//! The embedded SQLite backend: one file in the data directory.
//!
//! Durability: WAL journal with `synchronous = FULL`, so a commit is on disk
//! (the WAL is fsynced) before the call returns. The file is created with
//! mode 0600 (it holds the private signing keys); SQLite gives its `-wal` and
//! `-shm` files the same mode.
//!
//! rusqlite is synchronous; every call runs on tokio's blocking pool behind
//! one mutex. Writes are revocations and key changes, which are rare next to
//! mints, and reads happen only at start-up: the hot path never comes here.

use crate::{
    ApprovalSaved, CHANGE_RETENTION_SECS, Change, ChangePosition, ChangeRecord, LiveRevocations,
    ReadColumns, SCHEMA_VERSION, Store, StoreError, StoredApproval, StoredKey, StoredStatusList,
    change_from_json, change_json, credential_columns, grant_json, read_credential,
};
use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};
use std::fs::{OpenOptions, Permissions};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use stint_core::approval::ApprovalRequest;
use stint_core::revocation::{JobRevocation, StepRevocation, TokenRevocation, WorkloadStop};
use stint_core::status_list::StatusReference;
use stint_core::target_credential::TargetCredential;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS revoked_tokens (
    jti        TEXT    PRIMARY KEY NOT NULL,
    sub        TEXT    NOT NULL,
    job        TEXT    NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked_at INTEGER NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS revoked_tokens_expires_at ON revoked_tokens (expires_at);
CREATE TABLE IF NOT EXISTS revoked_jobs (
    sub        TEXT    NOT NULL,
    job        TEXT    NOT NULL,
    revoked_at INTEGER NOT NULL,
    until      INTEGER NOT NULL,
    PRIMARY KEY (sub, job)
) STRICT;
CREATE INDEX IF NOT EXISTS revoked_jobs_until ON revoked_jobs (until);
CREATE TABLE IF NOT EXISTS signing_keys (
    kid        TEXT    PRIMARY KEY NOT NULL,
    alg        TEXT    NOT NULL,
    pkcs8      BLOB    NOT NULL,
    created_at INTEGER NOT NULL,
    retired_at INTEGER,
    activated_at INTEGER
) STRICT;
CREATE TABLE IF NOT EXISTS approvals (
    id           TEXT    PRIMARY KEY NOT NULL,
    requested_at INTEGER NOT NULL,
    keep_until   INTEGER NOT NULL,
    body         TEXT    NOT NULL,
    revision     INTEGER NOT NULL DEFAULT 1
) STRICT;
CREATE INDEX IF NOT EXISTS approvals_keep_until ON approvals (keep_until);
CREATE TABLE IF NOT EXISTS revoked_steps (
    sub        TEXT    NOT NULL,
    job        TEXT    NOT NULL,
    step       TEXT    NOT NULL,
    revoked_at INTEGER NOT NULL,
    until      INTEGER NOT NULL,
    PRIMARY KEY (sub, job, step)
) STRICT;
CREATE TABLE IF NOT EXISTS workload_stops (
    workload   TEXT    PRIMARY KEY NOT NULL,
    stopped_at INTEGER NOT NULL,
    stopped_by TEXT    NOT NULL,
    until      INTEGER NOT NULL,
    enabled_at INTEGER
) STRICT;
CREATE TABLE IF NOT EXISTS status_lists (
    id         TEXT    PRIMARY KEY NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    key        BLOB
) STRICT;
CREATE TABLE IF NOT EXISTS target_credentials (
    id              TEXT    PRIMARY KEY NOT NULL,
    jti             TEXT    NOT NULL,
    sub             TEXT    NOT NULL,
    client_id       TEXT    NOT NULL,
    job             TEXT    NOT NULL,
    step            TEXT    NOT NULL,
    approval        TEXT,
    issued_at       INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    target          TEXT    NOT NULL,
    kind            TEXT    NOT NULL,
    upstream_id     TEXT    NOT NULL,
    server          TEXT    NOT NULL,
    database        TEXT,
    effective       TEXT    NOT NULL,
    state           TEXT    NOT NULL,
    trigger         TEXT,
    attempts        INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    finished_at     INTEGER,
    revoke_requested_at INTEGER,
    sealed          BLOB,
    grant_detail    TEXT,
    UNIQUE (jti, target)
) STRICT;
CREATE INDEX IF NOT EXISTS target_credentials_state ON target_credentials (state);
CREATE TABLE IF NOT EXISTS status_entries (
    list    TEXT    NOT NULL,
    first   INTEGER NOT NULL,
    entries BLOB    NOT NULL,
    PRIMARY KEY (list, first)
) STRICT;
CREATE TABLE IF NOT EXISTS approval_votes (
    approval_id TEXT    NOT NULL,
    operator    TEXT    NOT NULL,
    at          INTEGER NOT NULL,
    PRIMARY KEY (approval_id, operator)
) STRICT;
CREATE TABLE IF NOT EXISTS stint_change_head (
    singleton INTEGER PRIMARY KEY NOT NULL CHECK (singleton = 1),
    epoch     TEXT    NOT NULL,
    seq       INTEGER NOT NULL
) STRICT;
INSERT OR IGNORE INTO stint_change_head (singleton, epoch, seq)
    VALUES (1, lower(hex(randomblob(12))), 0);
CREATE TABLE IF NOT EXISTS stint_changes (
    seq  INTEGER PRIMARY KEY NOT NULL,
    at   INTEGER NOT NULL,
    body TEXT    NOT NULL
) STRICT;
CREATE INDEX IF NOT EXISTS stint_changes_at ON stint_changes (at);
";

/// Record `body` (a change's stored form) as the next change, in the
/// transaction of the write it describes: the counter row and the change
/// commit, or roll back, with it. Returns its sequence number.
fn append_change(tx: &rusqlite::Transaction<'_>, body: &str) -> rusqlite::Result<u64> {
    let seq: i64 = tx.query_row(
        "UPDATE stint_change_head SET seq = seq + 1 RETURNING seq",
        [],
        |row| row.get(0),
    )?;
    tx.execute(
        "INSERT INTO stint_changes (seq, at, body) VALUES (?1, unixepoch(), ?2)",
        params![seq, body],
    )?;
    u64::try_from(seq).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(0, seq))
}

/// Whether `table` has `column`.
fn has_column(c: &Connection, table: &str, column: &str) -> rusqlite::Result<bool> {
    let mut statement = c.prepare("SELECT 1 FROM pragma_table_info(?1) WHERE name = ?2")?;
    statement.exists(params![table, column])
}

impl ReadColumns for rusqlite::Row<'_> {
    type Error = rusqlite::Error;
    fn text(&self, index: usize) -> rusqlite::Result<String> {
        self.get(index)
    }
    fn text_opt(&self, index: usize) -> rusqlite::Result<Option<String>> {
        self.get(index)
    }
    fn int(&self, index: usize) -> rusqlite::Result<i64> {
        self.get(index)
    }
    fn int_opt(&self, index: usize) -> rusqlite::Result<Option<i64>> {
        self.get(index)
    }
    fn bytes_opt(&self, index: usize) -> rusqlite::Result<Option<Vec<u8>>> {
        self.get(index)
    }
}

/// The SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    path: PathBuf,
    connection: Arc<Mutex<Connection>>,
}

impl SqliteStore {
    /// The signing keys in the database at `path`, read without changing
    /// anything (a running broker may hold it open): for `stintd
    /// verify-audit`, which checks the audit log's checkpoints with their
    /// public halves. A missing database is an error, not a new one.
    pub fn read_signing_keys(path: &Path) -> Result<Vec<StoredKey>, StoreError> {
        let open_error = |message: String| StoreError::Open {
            path: path.display().to_string(),
            message,
        };
        let connection = Connection::open_with_flags(
            path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| open_error(e.to_string()))?;
        connection
            .execute_batch("PRAGMA busy_timeout = 5000;")
            .map_err(|e| open_error(e.to_string()))?;
        let backend = |e: rusqlite::Error| StoreError::Backend {
            operation: "read signing keys",
            message: e.to_string(),
        };
        let mut statement = connection
            .prepare("SELECT kid, alg, pkcs8, created_at, retired_at FROM signing_keys ORDER BY created_at, kid")
            .map_err(backend)?;
        let rows = statement
            .query_map([], |row| {
                Ok(StoredKey {
                    kid: row.get(0)?,
                    alg: row.get(1)?,
                    pkcs8: row.get(2)?,
                    created_at: row.get(3)?,
                    retired_at: row.get(4)?,
                    // Not read: a database from before schema 9 has no such
                    // column, and only the public halves are used.
                    activated_at: None,
                })
            })
            .map_err(backend)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(backend)
    }

    /// Open (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let open_error = |message: String| StoreError::Open {
            path: path.display().to_string(),
            message,
        };
        // Create the file ourselves so that it is never, even briefly,
        // readable by anyone but the owner.
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .and_then(|_| std::fs::set_permissions(path, Permissions::from_mode(0o600)))
            .map_err(|e| open_error(e.to_string()))?;
        let connection = Connection::open(path).map_err(|e| open_error(e.to_string()))?;
        let mode: String = connection
            .query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))
            .map_err(|e| open_error(e.to_string()))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(open_error(format!(
                "could not enable WAL (journal mode is {mode})"
            )));
        }
        connection
            .execute_batch("PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;")
            .map_err(|e| open_error(e.to_string()))?;
        let version: i64 = connection
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(|e| open_error(e.to_string()))?;
        if version > SCHEMA_VERSION {
            return Err(open_error(format!(
                "the database has schema version {version}, newer than this stintd understands ({SCHEMA_VERSION}); upgrade stintd"
            )));
        }
        // Schema 6 gave status lists a key: an older table gains the
        // column (its lists keep NULL: their entries were never stored).
        let mut migrate = String::new();
        if (3..6).contains(&version) {
            migrate.push_str("ALTER TABLE status_lists ADD COLUMN key BLOB;");
        }
        // Schema 8 keeps, with a target credential, when its revocation
        // began, what destroying it needs (sealed) and what was granted.
        if version == 7 {
            migrate.push_str(
                "ALTER TABLE target_credentials ADD COLUMN revoke_requested_at INTEGER;
                 ALTER TABLE target_credentials ADD COLUMN sealed BLOB;
                 ALTER TABLE target_credentials ADD COLUMN grant_detail TEXT;",
            );
        }
        // Schema 9 gives approval requests a revision (the change feed and
        // its tables are new, and created above).
        let approvals_without_revision = has_column(&connection, "approvals", "body")
            .and_then(|exists| Ok(exists && !has_column(&connection, "approvals", "revision")?))
            .map_err(|e| open_error(e.to_string()))?;
        // ... and signing keys a time they began to sign (until now every
        // key signed from its creation).
        let keys_without_activation = has_column(&connection, "signing_keys", "kid")
            .and_then(|exists| {
                Ok(exists && !has_column(&connection, "signing_keys", "activated_at")?)
            })
            .map_err(|e| open_error(e.to_string()))?;
        if keys_without_activation {
            migrate.push_str(
                "ALTER TABLE signing_keys ADD COLUMN activated_at INTEGER;
                 UPDATE signing_keys SET activated_at = created_at;",
            );
        }
        if approvals_without_revision {
            migrate
                .push_str("ALTER TABLE approvals ADD COLUMN revision INTEGER NOT NULL DEFAULT 1;");
        }
        connection
            .execute_batch(&format!(
                "BEGIN; {SCHEMA} {migrate} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;"
            ))
            .map_err(|e| open_error(e.to_string()))?;
        Ok(Self {
            path: path.to_owned(),
            connection: Arc::new(Mutex::new(connection)),
        })
    }

    /// Where the database lives.
    pub fn path(&self) -> &Path {
        &self.path
    }

    async fn run<T, F>(&self, operation: &'static str, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let connection = Arc::clone(&self.connection);
        let backend = |message: String| StoreError::Backend { operation, message };
        tokio::task::spawn_blocking(move || {
            let mut guard = connection
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            work(&mut guard)
        })
        .await
        .map_err(|e| backend(e.to_string()))?
        .map_err(|e| backend(e.to_string()))
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn revoke_token(
        &self,
        revocation: &TokenRevocation,
        status: Option<&StatusReference>,
    ) -> Result<u64, StoreError> {
        let r = revocation.clone();
        let body = change_json(&Change::Token {
            revocation: r.clone(),
            status: status.cloned(),
        })?;
        self.run("revoke token", move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO revoked_tokens (jti, sub, job, expires_at, revoked_at) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (jti) DO NOTHING",
                params![r.jti, r.sub, r.job, r.expires_at, r.revoked_at],
            )?;
            let seq = append_change(&tx, &body)?;
            tx.commit()?;
            Ok(seq)
        })
        .await
    }

    async fn revoke_job(&self, revocation: &JobRevocation) -> Result<u64, StoreError> {
        let r = revocation.clone();
        let body = change_json(&Change::Job {
            revocation: r.clone(),
        })?;
        self.run("revoke job", move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO revoked_jobs (sub, job, revoked_at, until) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (sub, job) DO UPDATE SET until = max(until, excluded.until)",
                params![r.sub, r.job, r.revoked_at, r.until],
            )?;
            let seq = append_change(&tx, &body)?;
            tx.commit()?;
            Ok(seq)
        })
        .await
    }

    async fn revoke_step(&self, revocation: &StepRevocation) -> Result<u64, StoreError> {
        let r = revocation.clone();
        let body = change_json(&Change::Step {
            revocation: r.clone(),
        })?;
        self.run("revoke step", move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO revoked_steps (sub, job, step, revoked_at, until) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (sub, job, step) DO UPDATE SET until = max(until, excluded.until)",
                params![r.sub, r.job, r.step, r.revoked_at, r.until],
            )?;
            let seq = append_change(&tx, &body)?;
            tx.commit()?;
            Ok(seq)
        })
        .await
    }

    async fn live_revocations(&self, now: i64) -> Result<LiveRevocations, StoreError> {
        self.run("load revocations", move |c| {
            let mut live = LiveRevocations::default();
            let mut tokens = c.prepare(
                "SELECT jti, sub, job, expires_at, revoked_at FROM revoked_tokens WHERE expires_at > ?1",
            )?;
            for row in tokens.query_map([now], |row| {
                Ok(TokenRevocation {
                    jti: row.get(0)?,
                    sub: row.get(1)?,
                    job: row.get(2)?,
                    expires_at: row.get(3)?,
                    revoked_at: row.get(4)?,
                })
            })? {
                live.tokens.push(row?);
            }
            let mut jobs = c.prepare("SELECT sub, job, revoked_at, until FROM revoked_jobs WHERE until > ?1")?;
            for row in jobs.query_map([now], |row| {
                Ok(JobRevocation {
                    sub: row.get(0)?,
                    job: row.get(1)?,
                    revoked_at: row.get(2)?,
                    until: row.get(3)?,
                })
            })? {
                live.jobs.push(row?);
            }
            let mut steps = c.prepare(
                "SELECT sub, job, step, revoked_at, until FROM revoked_steps WHERE until > ?1",
            )?;
            for row in steps.query_map([now], |row| {
                Ok(StepRevocation {
                    sub: row.get(0)?,
                    job: row.get(1)?,
                    step: row.get(2)?,
                    revoked_at: row.get(3)?,
                    until: row.get(4)?,
                })
            })? {
                live.steps.push(row?);
            }
            Ok(live)
        })
        .await
    }

    async fn purge_expired(&self, now: i64) -> Result<u64, StoreError> {
        self.run("purge revocations", move |c| {
            let tx = c.transaction()?;
            let tokens = tx.execute("DELETE FROM revoked_tokens WHERE expires_at <= ?1", [now])?;
            let jobs = tx.execute("DELETE FROM revoked_jobs WHERE until <= ?1", [now])?
                + tx.execute("DELETE FROM revoked_steps WHERE until <= ?1", [now])?;
            let approvals = tx.execute("DELETE FROM approvals WHERE keep_until <= ?1", [now])?;
            tx.execute(
                "DELETE FROM status_entries WHERE list IN
                   (SELECT id FROM status_lists WHERE expires_at <= ?1)",
                [now],
            )?;
            let lists = tx.execute("DELETE FROM status_lists WHERE expires_at <= ?1", [now])?;
            let stops = tx.execute(
                "DELETE FROM workload_stops WHERE enabled_at IS NOT NULL AND until <= ?1",
                [now],
            )?;
            tx.execute(
                "DELETE FROM approval_votes WHERE approval_id NOT IN (SELECT id FROM approvals)",
                [],
            )?;
            tx.execute(
                "DELETE FROM stint_changes WHERE at < unixepoch() - ?1
                 AND seq < (SELECT seq FROM stint_change_head)",
                [CHANGE_RETENTION_SECS],
            )?;
            tx.commit()?;
            Ok((tokens + jobs + approvals + lists + stops) as u64)
        })
        .await
    }

    async fn signing_keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        self.run("load signing keys", |c| {
            let mut statement = c.prepare(
                "SELECT kid, alg, pkcs8, created_at, retired_at, activated_at FROM signing_keys ORDER BY created_at, kid",
            )?;
            let rows = statement.query_map([], |row| {
                Ok(StoredKey {
                    kid: row.get(0)?,
                    alg: row.get(1)?,
                    pkcs8: row.get(2)?,
                    created_at: row.get(3)?,
                    retired_at: row.get(4)?,
                    activated_at: row.get(5)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn insert_signing_key(&self, key: &StoredKey) -> Result<u64, StoreError> {
        let key = key.clone();
        let body = change_json(&Change::SigningKeys)?;
        self.run("insert signing key", move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO signing_keys (kid, alg, pkcs8, created_at, retired_at, activated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    key.kid,
                    key.alg,
                    key.pkcs8,
                    key.created_at,
                    key.retired_at,
                    key.activated_at
                ],
            )?;
            let seq = append_change(&tx, &body)?;
            tx.commit()?;
            Ok(seq)
        })
        .await
    }

    async fn retire_signing_key(&self, kid: &str, at: i64) -> Result<u64, StoreError> {
        let kid = kid.to_owned();
        let body = change_json(&Change::SigningKeys)?;
        self.run("retire signing key", move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "UPDATE signing_keys SET retired_at = ?2 WHERE kid = ?1 AND retired_at IS NULL",
                params![kid, at],
            )?;
            let seq = append_change(&tx, &body)?;
            tx.commit()?;
            Ok(seq)
        })
        .await
    }

    async fn activate_signing_key(&self, kid: &str, at: i64) -> Result<Option<u64>, StoreError> {
        let kid = kid.to_owned();
        let body = change_json(&Change::SigningKeys)?;
        self.run("activate signing key", move |c| {
            let tx = c.transaction()?;
            let activated = tx.execute(
                "UPDATE signing_keys SET activated_at = ?2
                 WHERE kid = ?1 AND activated_at IS NULL AND retired_at IS NULL",
                params![kid, at],
            )?;
            if activated == 0 {
                return Ok(None);
            }
            tx.execute(
                "UPDATE signing_keys SET retired_at = ?2 WHERE kid <> ?1 AND retired_at IS NULL",
                params![kid, at],
            )?;
            let seq = append_change(&tx, &body)?;
            tx.commit()?;
            Ok(Some(seq))
        })
        .await
    }

    async fn delete_signing_key(&self, kid: &str) -> Result<u64, StoreError> {
        let kid = kid.to_owned();
        let body = change_json(&Change::SigningKeys)?;
        self.run("delete signing key", move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "DELETE FROM signing_keys WHERE kid = ?1 AND retired_at IS NOT NULL",
                params![kid],
            )?;
            let seq = append_change(&tx, &body)?;
            tx.commit()?;
            Ok(seq)
        })
        .await
    }

    async fn save_approval(
        &self,
        approval: &ApprovalRequest,
        revision: u64,
    ) -> Result<ApprovalSaved, StoreError> {
        let request = approval.clone();
        let body = approval_json(&request)?;
        let expected = revision_param(revision)?;
        let change = change_json(&Change::Approval {
            request: Box::new(request.clone()),
            revision: revision + 1,
        })?;
        self.run("save approval", move |c| {
            let tx = c.transaction()?;
            let stored: Option<i64> = tx
                .query_row(
                    "SELECT revision FROM approvals WHERE id = ?1",
                    [&request.id],
                    |row| row.get(0),
                )
                .optional()?;
            match stored {
                None if expected == 0 => {}
                Some(at) if at == expected => {}
                _ => return Ok(ApprovalSaved::Conflict),
            }
            // One row per operator's vote: a vote already recorded at
            // another time is a second vote by that operator.
            let mut fresh = Vec::new();
            for vote in &request.approvals {
                let at: Option<i64> = tx
                    .query_row(
                        "SELECT at FROM approval_votes WHERE approval_id = ?1 AND operator = ?2",
                        params![request.id, vote.operator],
                        |row| row.get(0),
                    )
                    .optional()?;
                match at {
                    None => fresh.push(vote),
                    Some(at) if at == vote.at => {}
                    Some(_) => return Ok(ApprovalSaved::AlreadyVoted),
                }
            }
            for vote in fresh {
                tx.execute(
                    "INSERT INTO approval_votes (approval_id, operator, at) VALUES (?1, ?2, ?3)",
                    params![request.id, vote.operator, vote.at],
                )?;
            }
            let next = expected + 1;
            tx.execute(
                "INSERT INTO approvals (id, requested_at, keep_until, body, revision)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (id) DO UPDATE SET keep_until = excluded.keep_until,
                   body = excluded.body, revision = excluded.revision",
                params![
                    request.id,
                    request.requested_at,
                    request.keep_until(),
                    body,
                    next
                ],
            )?;
            let seq = append_change(&tx, &change)?;
            tx.commit()?;
            Ok(ApprovalSaved::Saved {
                revision: revision + 1,
                seq,
            })
        })
        .await
    }

    async fn approval(&self, id: &str) -> Result<Option<StoredApproval>, StoreError> {
        let id = id.to_owned();
        let row = self
            .run("load approval", move |c| {
                c.query_row(
                    "SELECT body, revision FROM approvals WHERE id = ?1",
                    [id],
                    |row| Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?)),
                )
                .optional()
            })
            .await?;
        row.map(|(body, revision)| stored_approval(&body, revision))
            .transpose()
    }

    async fn approvals(&self, now: i64) -> Result<Vec<StoredApproval>, StoreError> {
        let rows = self
            .run("load approvals", move |c| {
                let mut statement = c.prepare(
                    "SELECT body, revision FROM approvals WHERE keep_until > ?1
                     ORDER BY requested_at, id",
                )?;
                let rows = statement.query_map([now], |row| Ok((row.get(0)?, row.get(1)?)))?;
                rows.collect::<rusqlite::Result<Vec<(String, i64)>>>()
            })
            .await?;
        rows.iter()
            .map(|(body, revision)| stored_approval(body, *revision))
            .collect()
    }

    async fn insert_status_list(
        &self,
        id: &str,
        created_at: i64,
        expires_at: i64,
        key: &[u8],
    ) -> Result<(), StoreError> {
        let id = id.to_owned();
        let key = key.to_vec();
        self.run("insert status list", move |c| {
            c.execute(
                "INSERT INTO status_lists (id, created_at, expires_at, key) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (id) DO NOTHING",
                params![id, created_at, expires_at, key],
            )
            .map(drop)
        })
        .await
    }

    async fn append_status_entries(
        &self,
        id: &str,
        first: u64,
        entries: &[u8],
    ) -> Result<(), StoreError> {
        let id = id.to_owned();
        let entries = entries.to_vec();
        let first = i64::try_from(first).map_err(|_| StoreError::Backend {
            operation: "append status entries",
            message: "index out of range".into(),
        })?;
        self.run("append status entries", move |c| {
            c.execute(
                "INSERT INTO status_entries (list, first, entries) VALUES (?1, ?2, ?3)
                 ON CONFLICT (list, first) DO UPDATE SET entries = excluded.entries
                   WHERE length(excluded.entries) > length(status_entries.entries)",
                params![id, first, entries],
            )
            .map(drop)
        })
        .await
    }

    async fn status_lists(&self, now: i64) -> Result<Vec<StoredStatusList>, StoreError> {
        self.run("load status lists", move |c| {
            let mut lists: Vec<StoredStatusList> = {
                let mut statement = c.prepare(
                    "SELECT id, created_at, key FROM status_lists WHERE expires_at > ?1
                     ORDER BY created_at, id",
                )?;
                let rows = statement.query_map([now], |row| {
                    Ok(StoredStatusList {
                        id: row.get(0)?,
                        created_at: row.get(1)?,
                        key: row.get(2)?,
                        chunks: Vec::new(),
                    })
                })?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            let mut statement = c.prepare(
                "SELECT first, entries FROM status_entries WHERE list = ?1 ORDER BY first",
            )?;
            for list in &mut lists {
                let rows = statement.query_map([&list.id], |row| {
                    Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?))
                })?;
                for row in rows {
                    let (first, entries) = row?;
                    // A negative index is not something this broker wrote:
                    // skip it (the list then reads INVALID from there on).
                    if let Ok(first) = u64::try_from(first) {
                        list.chunks.push((first, entries));
                    }
                }
            }
            Ok(lists)
        })
        .await
    }

    async fn status_list(
        &self,
        id: &str,
        from: u64,
        now: i64,
    ) -> Result<Option<StoredStatusList>, StoreError> {
        let id = id.to_owned();
        let from = i64::try_from(from).unwrap_or(i64::MAX);
        self.run("load status list", move |c| {
            let list = c
                .query_row(
                    "SELECT id, created_at, key FROM status_lists WHERE id = ?1 AND expires_at > ?2",
                    params![id, now],
                    |row| {
                        Ok(StoredStatusList {
                            id: row.get(0)?,
                            created_at: row.get(1)?,
                            key: row.get(2)?,
                            chunks: Vec::new(),
                        })
                    },
                )
                .optional()?;
            let Some(mut list) = list else {
                return Ok(None);
            };
            let mut statement = c.prepare(
                "SELECT first, entries FROM status_entries WHERE list = ?1 AND first >= ?2
                 ORDER BY first",
            )?;
            let rows = statement.query_map(params![list.id, from], |row| {
                Ok((row.get::<_, i64>(0)?, row.get::<_, Vec<u8>>(1)?))
            })?;
            for row in rows {
                let (first, entries) = row?;
                if let Ok(first) = u64::try_from(first) {
                    list.chunks.push((first, entries));
                }
            }
            Ok(Some(list))
        })
        .await
    }

    async fn stop_workload(&self, stop: &WorkloadStop) -> Result<u64, StoreError> {
        let stop = stop.clone();
        let until = stop.until();
        let body = change_json(&Change::WorkloadStopped { stop: stop.clone() })?;
        self.run("stop workload", move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "INSERT INTO workload_stops (workload, stopped_at, stopped_by, until, enabled_at)
                 VALUES (?1, ?2, ?3, ?4, NULL)
                 ON CONFLICT (workload) DO UPDATE SET stopped_at = excluded.stopped_at,
                   stopped_by = excluded.stopped_by, until = excluded.until, enabled_at = NULL",
                params![stop.workload, stop.stopped_at, stop.stopped_by, until],
            )?;
            let seq = append_change(&tx, &body)?;
            tx.commit()?;
            Ok(seq)
        })
        .await
    }

    async fn enable_workload(&self, workload: &str, at: i64) -> Result<u64, StoreError> {
        let workload = workload.to_owned();
        let body = change_json(&Change::WorkloadEnabled {
            workload: workload.clone(),
            at,
        })?;
        self.run("enable workload", move |c| {
            let tx = c.transaction()?;
            tx.execute(
                "UPDATE workload_stops SET enabled_at = ?2 WHERE workload = ?1 AND enabled_at IS NULL",
                params![workload, at],
            )?;
            let seq = append_change(&tx, &body)?;
            tx.commit()?;
            Ok(seq)
        })
        .await
    }

    async fn workload_stops(&self, now: i64) -> Result<Vec<WorkloadStop>, StoreError> {
        self.run("load workload stops", move |c| {
            let mut statement = c.prepare(
                "SELECT workload, stopped_at, stopped_by, enabled_at FROM workload_stops
                 WHERE enabled_at IS NULL OR until > ?1 ORDER BY workload",
            )?;
            let rows = statement.query_map([now], |row| {
                Ok(WorkloadStop {
                    workload: row.get(0)?,
                    stopped_at: row.get(1)?,
                    stopped_by: row.get(2)?,
                    enabled_at: row.get(3)?,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn insert_target_credential(
        &self,
        credential: &TargetCredential,
        // One broker owns everything here.
        _owner: &str,
    ) -> Result<bool, StoreError> {
        let c = credential.clone();
        let grant = grant_json(&c)?;
        self.run("record target credential", move |db| {
            db.execute(
                concat!(
                    "INSERT INTO target_credentials (",
                    credential_columns!(),
                    ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
                       ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25)
                     ON CONFLICT (jti, target) DO NOTHING"
                ),
                params![
                    c.id,
                    c.jti,
                    c.sub,
                    c.client_id,
                    c.job,
                    c.step,
                    c.approval,
                    c.issued_at,
                    c.expires_at,
                    c.target,
                    c.kind,
                    c.upstream_id,
                    c.server,
                    c.database,
                    c.effective.join(" "),
                    c.state.as_str(),
                    c.trigger.map(|t| t.as_str()),
                    c.attempts,
                    c.next_attempt_at,
                    c.last_error,
                    c.created_at,
                    c.finished_at,
                    c.revoke_requested_at,
                    c.sealed,
                    grant,
                ],
            )
            .map(|inserted| inserted == 1)
        })
        .await
    }

    async fn update_target_credential(
        &self,
        credential: &TargetCredential,
        // One broker owns everything here.
        _owner: &str,
    ) -> Result<bool, StoreError> {
        let c = credential.clone();
        let grant = grant_json(&c)?;
        let updated = self
            .run("update target credential", move |db| {
                db.execute(
                    "UPDATE target_credentials SET upstream_id = ?2, effective = ?3, state = ?4,
                       trigger = ?5, attempts = ?6, next_attempt_at = ?7, last_error = ?8,
                       finished_at = ?9, revoke_requested_at = ?10, sealed = ?11,
                       grant_detail = ?12
                     WHERE id = ?1",
                    params![
                        c.id,
                        c.upstream_id,
                        c.effective.join(" "),
                        c.state.as_str(),
                        c.trigger.map(|t| t.as_str()),
                        c.attempts,
                        c.next_attempt_at,
                        c.last_error,
                        c.finished_at,
                        c.revoke_requested_at,
                        c.sealed,
                        grant,
                    ],
                )
            })
            .await?;
        if updated == 1 {
            Ok(true)
        } else {
            Err(StoreError::Corrupt(format!(
                "target credential {} is not in the store",
                credential.id
            )))
        }
    }

    async fn unfinished_target_credentials(&self) -> Result<Vec<TargetCredential>, StoreError> {
        let rows = self
            .run("load target credentials", |db| {
                let mut statement = db.prepare(concat!(
                    "SELECT ",
                    credential_columns!(),
                    " FROM target_credentials WHERE state <> 'revoked' ORDER BY created_at, id"
                ))?;
                let rows = statement.query_map([], |row| read_credential(row))?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        rows.into_iter().map(crate::CredentialRow::finish).collect()
    }

    async fn purge_target_credentials(&self, before: i64) -> Result<u64, StoreError> {
        self.run("purge target credentials", move |db| {
            db.execute(
                "DELETE FROM target_credentials WHERE state = 'revoked' AND finished_at < ?1",
                [before],
            )
            .map(|n| n as u64)
        })
        .await
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.run("health check", |c| {
            c.query_row("SELECT 1", [], |row| row.get::<_, i64>(0))
                .optional()
                .map(drop)
        })
        .await
    }

    async fn change_position(&self) -> Result<ChangePosition, StoreError> {
        let (epoch, seq) = self
            .run("read the change feed's position", |c| {
                c.query_row("SELECT epoch, seq FROM stint_change_head", [], |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
                })
            })
            .await?;
        let seq = u64::try_from(seq)
            .map_err(|_| StoreError::Corrupt(format!("the change feed is at {seq}")))?;
        Ok(ChangePosition { epoch, seq })
    }

    async fn changes_since(
        &self,
        after: u64,
        limit: usize,
    ) -> Result<Vec<ChangeRecord>, StoreError> {
        let after = i64::try_from(after)
            .map_err(|_| StoreError::Corrupt(format!("change {after} is out of range")))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .run("read changes", move |c| {
                let mut statement = c.prepare(
                    "SELECT seq, body FROM stint_changes WHERE seq > ?1 ORDER BY seq LIMIT ?2",
                )?;
                let rows = statement
                    .query_map(params![after, limit], |row| Ok((row.get(0)?, row.get(1)?)))?;
                rows.collect::<rusqlite::Result<Vec<(i64, String)>>>()
            })
            .await?;
        rows.iter()
            .map(|(seq, body)| change_from_json(*seq, body))
            .collect()
    }
}

/// An approval request's stored form.
pub(crate) fn approval_json(request: &ApprovalRequest) -> Result<String, StoreError> {
    serde_json::to_string(request).map_err(|e| StoreError::Backend {
        operation: "save approval",
        message: e.to_string(),
    })
}

/// A revision as a column value (0 to `i64::MAX - 1`).
pub(crate) fn revision_param(revision: u64) -> Result<i64, StoreError> {
    i64::try_from(revision)
        .ok()
        .filter(|r| *r < i64::MAX)
        .ok_or_else(|| StoreError::Corrupt(format!("approval revision {revision}")))
}

/// An approval request from its stored form.
pub(crate) fn stored_approval(body: &str, revision: i64) -> Result<StoredApproval, StoreError> {
    let request = crate::legacy::read(body)
        .map_err(|e| StoreError::Corrupt(format!("an approval row: {e}")))?;
    let revision = u64::try_from(revision)
        .map_err(|_| StoreError::Corrupt(format!("approval revision {revision}")))?;
    Ok(StoredApproval { request, revision })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("stint.db")).unwrap();
        crate::conformance::run(&store).await;
    }

    #[tokio::test]
    async fn writes_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stint.db");
        let revocation = TokenRevocation {
            jti: "AAAAAAAAAAAAAAAAAAAAAA".into(),
            sub: "w".into(),
            job: "j".into(),
            expires_at: 2_000,
            revoked_at: 1_000,
        };
        {
            let store = SqliteStore::open(&path).unwrap();
            store.revoke_token(&revocation, None).await.unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(
            store.live_revocations(1_500).await.unwrap().tokens,
            [revocation]
        );
    }

    #[tokio::test]
    async fn the_file_is_private_to_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stint.db");
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, Permissions::from_mode(0o644)).unwrap();
        let _store = SqliteStore::open(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[tokio::test]
    async fn a_schema_5_database_gains_status_list_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stint.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE status_lists (
                    id TEXT PRIMARY KEY NOT NULL,
                    created_at INTEGER NOT NULL,
                    expires_at INTEGER NOT NULL
                 ) STRICT;
                 INSERT INTO status_lists VALUES ('old', 100, 10000);
                 PRAGMA user_version = 5;",
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let lists = store.status_lists(200).await.unwrap();
        assert_eq!(lists.len(), 1);
        assert_eq!(lists[0].id, "old");
        assert_eq!(lists[0].key, None, "its entries were never stored");
        store
            .insert_status_list("new", 300, 10000, &[1; 32])
            .await
            .unwrap();
        assert_eq!(
            store.status_lists(200).await.unwrap()[1].key,
            Some(vec![1; 32])
        );
        drop(store);
        // Opening again (now at 6) does not migrate twice.
        SqliteStore::open(&path).unwrap();
    }

    #[tokio::test]
    async fn a_schema_7_database_gains_the_target_credential_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stint.db");
        drop(SqliteStore::open(&path).unwrap());
        {
            // A schema 7 database: the table without the three columns.
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "ALTER TABLE target_credentials DROP COLUMN grant_detail;
                 ALTER TABLE target_credentials DROP COLUMN sealed;
                 ALTER TABLE target_credentials DROP COLUMN revoke_requested_at;
                 PRAGMA user_version = 7;",
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        crate::conformance::run(&store).await;
        drop(store);
        // Opening again (now at 8) does not migrate twice.
        SqliteStore::open(&path).unwrap();
    }

    #[tokio::test]
    async fn a_schema_8_database_gains_the_change_feed_revisions_and_activations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stint.db");
        drop(SqliteStore::open(&path).unwrap());
        {
            // A schema 8 database: no change feed, no votes, no revisions,
            // keys that signed from their creation.
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "DROP TABLE stint_changes; DROP TABLE stint_change_head; DROP TABLE approval_votes;
                 ALTER TABLE approvals DROP COLUMN revision;
                 ALTER TABLE signing_keys DROP COLUMN activated_at;
                 INSERT INTO signing_keys (kid, alg, pkcs8, created_at) VALUES ('k8', 'ES256', x'01', 800);
                 PRAGMA user_version = 8;",
            )
            .unwrap();
        }
        let store = SqliteStore::open(&path).unwrap();
        let keys = store.signing_keys().await.unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].activated_at, Some(800));
        assert_eq!(store.change_position().await.unwrap().seq, 0);
        store.delete_signing_key("k8").await.unwrap();
        store.retire_signing_key("k8", 900).await.unwrap();
        store.delete_signing_key("k8").await.unwrap();
        crate::conformance::run(&store).await;
        drop(store);
        SqliteStore::open(&path).unwrap();
    }

    #[tokio::test]
    async fn refuses_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stint.db");
        drop(SqliteStore::open(&path).unwrap());
        Connection::open(&path)
            .unwrap()
            .execute_batch("PRAGMA user_version = 99")
            .unwrap();
        let error = SqliteStore::open(&path).unwrap_err().to_string();
        assert!(error.contains("schema version 99"), "{error}");
    }
}
