//! The PostgreSQL backend: the SQLite backend's schema (same tables, same
//! semantics, same [`SCHEMA_VERSION`]) in a PostgreSQL database, for
//! brokers that keep their state off the machine they run on.
//!
//! Durability: every write is one transaction, committed (with
//! `synchronous_commit` on, as by default) before the call returns.
//! Every operation is bounded by the settings' timeout: a server that is
//! down or hangs gives [`StoreError::Backend`], never a wait without end.
//!
//! The schema is applied by the first broker to open an empty database,
//! under a transaction-level advisory lock, so that brokers starting at
//! once apply it exactly once; that first open needs `CREATE` on the schema
//! the tables go in (the first one on the role's `search_path`), later
//! ones only `SELECT`, `INSERT`, `UPDATE` and `DELETE` on the tables.
//! Nothing from a caller reaches SQL except as a bind parameter.

mod pool;
mod settings;

pub use pool::error_chain;
pub use settings::{
    DEFAULT_POOL_SIZE, DEFAULT_PORT, DEFAULT_TIMEOUT, PostgresStoreSettings, PostgresTls,
    StorePassword, StoreUrlError, is_postgres_url,
};

use crate::sqlite::{approval_json, revision_param, stored_approval};
use crate::{
    ApprovalSaved, AuditCommit, AuditedWrite, CHANGE_CHANNEL, CHANGE_RETENTION_SECS, Change,
    ChangePosition, ChangeRecord, CredentialRow, LiveRevocations, MINT_ABANDONED_AFTER_SECS,
    ReadColumns, SCHEMA_VERSION, Store, StoreError, StoredApproval, StoredKey, StoredStatusList,
    change_from_json, change_json, credential_columns, grant_json, read_credential,
};
use async_trait::async_trait;
use pool::{BoxFuture, Pool};
use stint_core::approval::ApprovalRequest;
use stint_core::revocation::{JobRevocation, StepRevocation, TokenRevocation, WorkloadStop};
use stint_core::status_list::StatusReference;
use stint_core::target_credential::TargetCredential;
use tokio_postgres::{Client, IsolationLevel, Row, Transaction};

/// The key of the transaction-level advisory lock the schema is applied
/// under (arbitrary, and the same in every Stint; not the one stint-targets
/// takes on target databases).
const SCHEMA_LOCK: i64 = 6_012_741_437_265_293_314;
/// The key of the transaction-level advisory lock signing-key activations
/// take, one at a time.
const SIGNING_KEYS_LOCK: i64 = 6_012_741_437_265_293_315;

/// The tables of schema 8, as sqlite.rs has them; [`MIGRATE_TO_9`] follows.
const SCHEMA: &str = "
CREATE TABLE stint_schema (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    version    bigint  NOT NULL
);
CREATE TABLE revoked_tokens (
    jti        text    PRIMARY KEY,
    sub        text    NOT NULL,
    job        text    NOT NULL,
    expires_at bigint  NOT NULL,
    revoked_at bigint  NOT NULL
);
CREATE INDEX revoked_tokens_expires_at ON revoked_tokens (expires_at);
CREATE TABLE revoked_jobs (
    sub        text    NOT NULL,
    job        text    NOT NULL,
    revoked_at bigint  NOT NULL,
    until      bigint  NOT NULL,
    PRIMARY KEY (sub, job)
);
CREATE INDEX revoked_jobs_until ON revoked_jobs (until);
CREATE TABLE signing_keys (
    kid        text    PRIMARY KEY,
    alg        text    NOT NULL,
    pkcs8      bytea   NOT NULL,
    created_at bigint  NOT NULL,
    retired_at bigint
);
CREATE TABLE approvals (
    id           text    PRIMARY KEY,
    requested_at bigint  NOT NULL,
    keep_until   bigint  NOT NULL,
    body         text    NOT NULL
);
CREATE INDEX approvals_keep_until ON approvals (keep_until);
CREATE TABLE revoked_steps (
    sub        text    NOT NULL,
    job        text    NOT NULL,
    step       text    NOT NULL,
    revoked_at bigint  NOT NULL,
    until      bigint  NOT NULL,
    PRIMARY KEY (sub, job, step)
);
CREATE TABLE workload_stops (
    workload   text    PRIMARY KEY,
    stopped_at bigint  NOT NULL,
    stopped_by text    NOT NULL,
    until      bigint  NOT NULL,
    enabled_at bigint
);
CREATE TABLE status_lists (
    id         text    PRIMARY KEY,
    created_at bigint  NOT NULL,
    expires_at bigint  NOT NULL,
    key        bytea
);
CREATE TABLE target_credentials (
    id              text    PRIMARY KEY,
    jti             text    NOT NULL,
    sub             text    NOT NULL,
    client_id       text    NOT NULL,
    job             text    NOT NULL,
    step            text    NOT NULL,
    approval        text,
    issued_at       bigint  NOT NULL,
    expires_at      bigint  NOT NULL,
    target          text    NOT NULL,
    kind            text    NOT NULL,
    upstream_id     text    NOT NULL,
    server          text    NOT NULL,
    database        text,
    effective       text    NOT NULL,
    state           text    NOT NULL,
    trigger         text,
    attempts        bigint  NOT NULL,
    next_attempt_at bigint  NOT NULL,
    last_error      text,
    created_at      bigint  NOT NULL,
    finished_at     bigint,
    revoke_requested_at bigint,
    sealed          bytea,
    grant_detail    text,
    UNIQUE (jti, target)
);
CREATE INDEX target_credentials_state ON target_credentials (state);
CREATE TABLE status_entries (
    list    text    NOT NULL,
    first   bigint  NOT NULL,
    entries bytea   NOT NULL,
    PRIMARY KEY (list, first)
);
";

/// Schema 10: each unfinished target credential has an owner, the broker
/// process that destroys it, alive while its lease in `stint_brokers` is.
const MIGRATE_TO_10: &str = "
ALTER TABLE target_credentials ADD COLUMN owner text;
CREATE INDEX target_credentials_owner ON target_credentials (owner) WHERE state <> 'revoked';
CREATE TABLE stint_brokers (
    id          text   PRIMARY KEY,
    alive_until bigint NOT NULL
);
";

/// Schema 9: the change feed (a counter row and the changes, each written
/// in the transaction of the change it records), approval revisions and
/// one vote row per operator and request.
const MIGRATE_TO_9: &str = "
ALTER TABLE approvals ADD COLUMN revision bigint NOT NULL DEFAULT 1;
ALTER TABLE signing_keys ADD COLUMN activated_at bigint;
UPDATE signing_keys SET activated_at = created_at;
CREATE TABLE approval_votes (
    approval_id text    NOT NULL,
    operator    text    NOT NULL,
    at          bigint  NOT NULL,
    PRIMARY KEY (approval_id, operator)
);
CREATE TABLE stint_change_head (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    epoch      text    NOT NULL,
    seq        bigint  NOT NULL
);
INSERT INTO stint_change_head (epoch, seq) VALUES (replace(gen_random_uuid()::text, '-', ''), 0);
CREATE TABLE stint_changes (
    seq  bigint PRIMARY KEY,
    at   bigint NOT NULL,
    body text   NOT NULL
);
CREATE INDEX stint_changes_at ON stint_changes (at);
CREATE TABLE audit_records (
    chain text   NOT NULL,
    n     bigint NOT NULL,
    line  text   NOT NULL,
    PRIMARY KEY (chain, n)
);
";

/// Record `body` (a change's stored form) as the next change, in the
/// transaction of the write it describes. The counter row's update holds
/// its row lock until commit, so changes commit in sequence order and a
/// rolled-back one leaves no gap; the notification (a wake-up only) is
/// delivered at commit. Returns the sequence number.
async fn append_change(tx: &Transaction<'_>, body: &str) -> Result<u64, tokio_postgres::Error> {
    let seq: i64 = tx
        .query_one(
            "WITH head AS (UPDATE stint_change_head SET seq = seq + 1 RETURNING seq),
                  change AS (INSERT INTO stint_changes (seq, at, body)
                             SELECT seq, extract(epoch FROM clock_timestamp())::bigint, $1 FROM head
                             RETURNING seq)
             SELECT seq, pg_notify($2, seq::text)::text FROM change",
            &[&body, &CHANGE_CHANNEL],
        )
        .await?
        .try_get(0)?;
    Ok(u64::try_from(seq).unwrap_or_default())
}

/// Store `write` and record its change (`body`, its stored form) in the
/// feed, in `tx`. Returns the change's sequence number.
async fn write_change(
    tx: &Transaction<'_>,
    write: &AuditedWrite,
    body: &str,
) -> Result<u64, tokio_postgres::Error> {
    write_row(tx, write).await?;
    append_change(tx, body).await
}

/// The row `write` locks: writes of one transaction are made in this
/// order, so that two transactions writing the same rows cannot deadlock.
fn row_key(write: &AuditedWrite) -> (u8, String) {
    match write {
        AuditedWrite::Token(r, _) => (0, r.jti.clone()),
        AuditedWrite::Job(r) => (1, format!("{}\n{}", r.sub, r.job)),
        AuditedWrite::Step(r) => (2, format!("{}\n{}\n{}", r.sub, r.job, r.step)),
        AuditedWrite::WorkloadStopped(stop) => (3, stop.workload.clone()),
        AuditedWrite::WorkloadEnabled { workload, .. } => (3, workload.clone()),
    }
}

/// Store `write` (without its change), in `tx`.
async fn write_row(
    tx: &Transaction<'_>,
    write: &AuditedWrite,
) -> Result<(), tokio_postgres::Error> {
    match write {
        AuditedWrite::Token(r, _) => {
            tx.execute(
                "INSERT INTO revoked_tokens (jti, sub, job, expires_at, revoked_at)
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (jti) DO NOTHING",
                &[&r.jti, &r.sub, &r.job, &r.expires_at, &r.revoked_at],
            )
            .await?;
        }
        AuditedWrite::Job(r) => {
            tx.execute(
                "INSERT INTO revoked_jobs (sub, job, revoked_at, until) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (sub, job)
                   DO UPDATE SET until = GREATEST(revoked_jobs.until, EXCLUDED.until)",
                &[&r.sub, &r.job, &r.revoked_at, &r.until],
            )
            .await?;
        }
        AuditedWrite::Step(r) => {
            tx.execute(
                "INSERT INTO revoked_steps (sub, job, step, revoked_at, until)
                 VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (sub, job, step)
                   DO UPDATE SET until = GREATEST(revoked_steps.until, EXCLUDED.until)",
                &[&r.sub, &r.job, &r.step, &r.revoked_at, &r.until],
            )
            .await?;
        }
        AuditedWrite::WorkloadStopped(stop) => {
            tx.execute(
                "INSERT INTO workload_stops (workload, stopped_at, stopped_by, until, enabled_at)
                 VALUES ($1, $2, $3, $4, NULL)
                 ON CONFLICT (workload) DO UPDATE SET stopped_at = EXCLUDED.stopped_at,
                   stopped_by = EXCLUDED.stopped_by, until = EXCLUDED.until, enabled_at = NULL",
                &[
                    &stop.workload,
                    &stop.stopped_at,
                    &stop.stopped_by,
                    &stop.until(),
                ],
            )
            .await?;
        }
        AuditedWrite::WorkloadEnabled { workload, at } => {
            tx.execute(
                "UPDATE workload_stops SET enabled_at = $2
                 WHERE workload = $1 AND enabled_at IS NULL",
                &[workload, at],
            )
            .await?;
        }
    }
    Ok(())
}

impl ReadColumns for Row {
    type Error = tokio_postgres::Error;
    fn text(&self, index: usize) -> Result<String, Self::Error> {
        self.try_get(index)
    }
    fn text_opt(&self, index: usize) -> Result<Option<String>, Self::Error> {
        self.try_get(index)
    }
    fn int(&self, index: usize) -> Result<i64, Self::Error> {
        self.try_get(index)
    }
    fn int_opt(&self, index: usize) -> Result<Option<i64>, Self::Error> {
        self.try_get(index)
    }
    fn bytes_opt(&self, index: usize) -> Result<Option<Vec<u8>>, Self::Error> {
        self.try_get(index)
    }
}

/// A batch of one chain's records at consecutive positions: all of them,
/// or (a position already taken) none.
const INSERT_AUDIT_RECORDS: &str = "INSERT INTO audit_records (chain, n, line)
     SELECT $1, $2 + ord - 1, line
     FROM unnest($3::text[]) WITH ORDINALITY AS batch(line, ord)";

/// The parameters of [`INSERT_AUDIT_RECORDS`].
struct AuditBatch {
    chain: String,
    first: i64,
    records: Vec<String>,
}

impl AuditBatch {
    /// With their types, so that nothing is prepared first.
    fn params(
        &self,
    ) -> [(
        &(dyn tokio_postgres::types::ToSql + Sync),
        tokio_postgres::types::Type,
    ); 3] {
        use tokio_postgres::types::Type;
        [
            (&self.chain, Type::TEXT),
            (&self.first, Type::INT8),
            (&self.records, Type::TEXT_ARRAY),
        ]
    }
}

/// The statement failed on a primary key: a position was taken.
fn taken(error: &tokio_postgres::Error) -> bool {
    error.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
}

/// What opening found.
enum Schema {
    Applied,
    /// Migrated from this version to [`SCHEMA_VERSION`].
    Migrated(i64),
    Found(Option<i64>),
}

/// The PostgreSQL store. Cheap to share behind an `Arc`; `Send` and
/// `Sync`.
pub struct PostgresStore {
    pool: Pool,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("endpoint", &self.pool.endpoint())
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Another handle on a store that [`open`](Self::open) has prepared,
    /// with at most `connections` connections of its own. Nothing is
    /// checked or opened here: connections open on first use and are
    /// driven by the runtime that uses them. For a thread with a runtime
    /// of its own (the audit writer), whose round trips then never wait
    /// behind the main runtime's tasks; use it from that runtime only.
    pub fn dedicated(
        settings: &PostgresStoreSettings,
        connections: usize,
    ) -> Result<Self, StoreError> {
        let mut settings = settings.clone();
        settings.pool_size = connections;
        Ok(Self {
            pool: Pool::new(&settings)?,
        })
    }

    /// Connect, and apply the schema to an empty database (once, however
    /// many brokers open it at the same moment). A database whose schema
    /// is newer than this broker's is refused.
    pub async fn open(settings: &PostgresStoreSettings) -> Result<Self, StoreError> {
        let pool = Pool::new(settings)?;
        let open_error = |message: String| StoreError::Open {
            path: settings.endpoint(),
            message,
        };
        let found = pool
            .run("prepare the schema", |c| {
                Box::pin(async move {
                    let tx = c.transaction().await?;
                    // Held until commit: a second broker waits here, then
                    // finds the schema in place.
                    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
                        .await?;
                    let exists: bool = tx
                        .query_one("SELECT to_regclass('stint_schema') IS NOT NULL", &[])
                        .await?
                        .try_get(0)?;
                    if exists {
                        let version = tx
                            .query_opt("SELECT version FROM stint_schema", &[])
                            .await?
                            .map(|row| row.try_get::<_, i64>(0))
                            .transpose()?;
                        let from = match version {
                            Some(8) => {
                                tx.batch_execute(MIGRATE_TO_9).await?;
                                tx.batch_execute(MIGRATE_TO_10).await?;
                                8
                            }
                            Some(9) => {
                                tx.batch_execute(MIGRATE_TO_10).await?;
                                9
                            }
                            _ => return Ok(Schema::Found(version)),
                        };
                        tx.execute("UPDATE stint_schema SET version = $1", &[&SCHEMA_VERSION])
                            .await?;
                        tx.commit().await?;
                        return Ok(Schema::Migrated(from));
                    }
                    tx.batch_execute(SCHEMA).await?;
                    tx.batch_execute(MIGRATE_TO_9).await?;
                    tx.batch_execute(MIGRATE_TO_10).await?;
                    tx.execute(
                        "INSERT INTO stint_schema (version) VALUES ($1)",
                        &[&SCHEMA_VERSION],
                    )
                    .await?;
                    tx.commit().await?;
                    Ok(Schema::Applied)
                })
            })
            .await
            .map_err(|e| match e {
                StoreError::Backend { message, .. } => open_error(message),
                other => other,
            })?;
        match found {
            Schema::Applied => {
                tracing::info!(store = %settings.endpoint(), version = SCHEMA_VERSION, "applied the store's schema");
            }
            Schema::Migrated(from) => {
                tracing::info!(store = %settings.endpoint(), from, version = SCHEMA_VERSION, "migrated the store's schema");
            }
            Schema::Found(Some(SCHEMA_VERSION)) => {}
            Schema::Found(Some(version)) if version > SCHEMA_VERSION => {
                return Err(open_error(format!(
                    "the database has schema version {version}, newer than this stintd understands ({SCHEMA_VERSION}); upgrade stintd"
                )));
            }
            Schema::Found(Some(version)) => {
                return Err(open_error(format!(
                    "the database has schema version {version}, which no stintd's PostgreSQL store wrote (they start at 8)"
                )));
            }
            Schema::Found(None) => {
                return Err(open_error(
                    "the table stint_schema holds no version: this is not a database a stintd prepared".into(),
                ));
            }
        }
        Ok(Self { pool })
    }

    /// `host:port/database as user`.
    pub fn endpoint(&self) -> &str {
        self.pool.endpoint()
    }

    /// Store `write` with its change, in a transaction of its own.
    async fn write_one(
        &self,
        operation: &'static str,
        write: AuditedWrite,
    ) -> Result<u64, StoreError> {
        let body = change_json(&write.change())?;
        self.write(operation, move |tx| {
            Box::pin(async move { write_change(tx, &write, &body).await })
        })
        .await
    }

    /// `work` in one transaction, committed before this returns.
    async fn write<T, F>(&self, operation: &'static str, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'t> FnOnce(&'t Transaction<'t>) -> BoxFuture<'t, Result<T, tokio_postgres::Error>>
            + Send
            + 'static,
    {
        self.pool
            .run(operation, move |client: &mut Client| {
                Box::pin(async move {
                    let tx = client.transaction().await?;
                    let value = work(&tx).await?;
                    tx.commit().await?;
                    Ok(value)
                })
            })
            .await
    }

    /// `work` in one read-only transaction: one snapshot for all its
    /// statements.
    async fn read<T, F>(&self, operation: &'static str, work: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: for<'t> FnOnce(&'t Transaction<'t>) -> BoxFuture<'t, Result<T, tokio_postgres::Error>>
            + Send
            + 'static,
    {
        self.pool
            .run(operation, move |client: &mut Client| {
                Box::pin(async move {
                    let tx = client
                        .build_transaction()
                        .isolation_level(IsolationLevel::RepeatableRead)
                        .read_only(true)
                        .start()
                        .await?;
                    let value = work(&tx).await?;
                    tx.commit().await?;
                    Ok(value)
                })
            })
            .await
    }
}

#[async_trait]
impl Store for PostgresStore {
    async fn revoke_token(
        &self,
        revocation: &TokenRevocation,
        status: Option<&StatusReference>,
    ) -> Result<u64, StoreError> {
        self.write_one(
            "revoke token",
            AuditedWrite::Token(revocation.clone(), status.cloned()),
        )
        .await
    }

    async fn revoke_job(&self, revocation: &JobRevocation) -> Result<u64, StoreError> {
        self.write_one("revoke job", AuditedWrite::Job(revocation.clone()))
            .await
    }

    async fn revoke_step(&self, revocation: &StepRevocation) -> Result<u64, StoreError> {
        self.write_one("revoke step", AuditedWrite::Step(revocation.clone()))
            .await
    }

    async fn live_revocations(&self, now: i64) -> Result<LiveRevocations, StoreError> {
        self.read("load revocations", move |tx| {
            Box::pin(async move {
                let mut live = LiveRevocations::default();
                for row in tx
                    .query(
                        "SELECT jti, sub, job, expires_at, revoked_at FROM revoked_tokens
                         WHERE expires_at > $1",
                        &[&now],
                    )
                    .await?
                {
                    live.tokens.push(TokenRevocation {
                        jti: row.try_get(0)?,
                        sub: row.try_get(1)?,
                        job: row.try_get(2)?,
                        expires_at: row.try_get(3)?,
                        revoked_at: row.try_get(4)?,
                    });
                }
                for row in tx
                    .query(
                        "SELECT sub, job, revoked_at, until FROM revoked_jobs WHERE until > $1",
                        &[&now],
                    )
                    .await?
                {
                    live.jobs.push(JobRevocation {
                        sub: row.try_get(0)?,
                        job: row.try_get(1)?,
                        revoked_at: row.try_get(2)?,
                        until: row.try_get(3)?,
                    });
                }
                for row in tx
                    .query(
                        "SELECT sub, job, step, revoked_at, until FROM revoked_steps
                         WHERE until > $1",
                        &[&now],
                    )
                    .await?
                {
                    live.steps.push(StepRevocation {
                        sub: row.try_get(0)?,
                        job: row.try_get(1)?,
                        step: row.try_get(2)?,
                        revoked_at: row.try_get(3)?,
                        until: row.try_get(4)?,
                    });
                }
                Ok(live)
            })
        })
        .await
    }

    async fn purge_expired(&self, now: i64) -> Result<u64, StoreError> {
        self.write("purge revocations", move |tx| {
            Box::pin(async move {
                let tokens = tx
                    .execute("DELETE FROM revoked_tokens WHERE expires_at <= $1", &[&now])
                    .await?;
                let jobs = tx
                    .execute("DELETE FROM revoked_jobs WHERE until <= $1", &[&now])
                    .await?
                    + tx.execute("DELETE FROM revoked_steps WHERE until <= $1", &[&now])
                        .await?;
                let approvals = tx
                    .execute("DELETE FROM approvals WHERE keep_until <= $1", &[&now])
                    .await?;
                tx.execute(
                    "DELETE FROM status_entries WHERE list IN
                       (SELECT id FROM status_lists WHERE expires_at <= $1)",
                    &[&now],
                )
                .await?;
                let lists = tx
                    .execute("DELETE FROM status_lists WHERE expires_at <= $1", &[&now])
                    .await?;
                let stops = tx
                    .execute(
                        "DELETE FROM workload_stops WHERE enabled_at IS NOT NULL AND until <= $1",
                        &[&now],
                    )
                    .await?;
                tx.execute(
                    "DELETE FROM approval_votes v WHERE NOT EXISTS
                       (SELECT 1 FROM approvals a WHERE a.id = v.approval_id)",
                    &[],
                )
                .await?;
                tx.execute(
                    "DELETE FROM stint_changes WHERE at < extract(epoch FROM now())::bigint - $1
                     AND seq < (SELECT seq FROM stint_change_head)",
                    &[&CHANGE_RETENTION_SECS],
                )
                .await?;
                Ok(tokens + jobs + approvals + lists + stops)
            })
        })
        .await
    }

    async fn signing_keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        self.read("load signing keys", |tx| {
            Box::pin(async move {
                tx.query(
                    "SELECT kid, alg, pkcs8, created_at, retired_at, activated_at FROM signing_keys
                     ORDER BY created_at, kid",
                    &[],
                )
                .await?
                .iter()
                .map(|row| {
                    Ok(StoredKey {
                        kid: row.try_get(0)?,
                        alg: row.try_get(1)?,
                        pkcs8: row.try_get(2)?,
                        created_at: row.try_get(3)?,
                        retired_at: row.try_get(4)?,
                        activated_at: row.try_get(5)?,
                    })
                })
                .collect()
            })
        })
        .await
    }

    async fn insert_signing_key(&self, key: &StoredKey) -> Result<u64, StoreError> {
        let key = key.clone();
        let body = change_json(&Change::SigningKeys)?;
        self.write("insert signing key", move |tx| {
            Box::pin(async move {
                tx.execute(
                    "INSERT INTO signing_keys (kid, alg, pkcs8, created_at, retired_at, activated_at)
                     VALUES ($1, $2, $3, $4, $5, $6)",
                    &[
                        &key.kid,
                        &key.alg,
                        &key.pkcs8,
                        &key.created_at,
                        &key.retired_at,
                        &key.activated_at,
                    ],
                )
                .await?;
                append_change(tx, &body).await
            })
        })
        .await
    }

    async fn retire_signing_key(&self, kid: &str, at: i64) -> Result<u64, StoreError> {
        let kid = kid.to_owned();
        let body = change_json(&Change::SigningKeys)?;
        self.write("retire signing key", move |tx| {
            Box::pin(async move {
                tx.execute(
                    "UPDATE signing_keys SET retired_at = $2 WHERE kid = $1 AND retired_at IS NULL",
                    &[&kid, &at],
                )
                .await?;
                append_change(tx, &body).await
            })
        })
        .await
    }

    async fn activate_signing_key(&self, kid: &str, at: i64) -> Result<Option<u64>, StoreError> {
        let kid = kid.to_owned();
        let body = change_json(&Change::SigningKeys)?;
        self.write("activate signing key", move |tx| {
            Box::pin(async move {
                // Brokers activating at once (two starting together on an
                // empty store, each with its own key) take this lock in
                // turn: each would otherwise hold its key's row and wait
                // for the other's. The second then finds its key retired,
                // or the first's key retired by its own activation: the
                // last activation stands.
                tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SIGNING_KEYS_LOCK])
                    .await?;
                let activated = tx
                    .execute(
                        "UPDATE signing_keys SET activated_at = $2
                         WHERE kid = $1 AND activated_at IS NULL AND retired_at IS NULL",
                        &[&kid, &at],
                    )
                    .await?;
                if activated == 0 {
                    return Ok(None);
                }
                tx.execute(
                    "UPDATE signing_keys SET retired_at = $2 WHERE kid <> $1 AND retired_at IS NULL",
                    &[&kid, &at],
                )
                .await?;
                append_change(tx, &body).await.map(Some)
            })
        })
        .await
    }

    async fn delete_signing_key(&self, kid: &str) -> Result<u64, StoreError> {
        let kid = kid.to_owned();
        let body = change_json(&Change::SigningKeys)?;
        self.write("delete signing key", move |tx| {
            Box::pin(async move {
                tx.execute(
                    "DELETE FROM signing_keys WHERE kid = $1 AND retired_at IS NOT NULL",
                    &[&kid],
                )
                .await?;
                append_change(tx, &body).await
            })
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
        self.write("save approval", move |tx| {
            Box::pin(async move {
                // The row lock serializes brokers saving one request: the
                // second sees the first's revision, and conflicts.
                let stored: Option<i64> = tx
                    .query_opt(
                        "SELECT revision FROM approvals WHERE id = $1 FOR UPDATE",
                        &[&request.id],
                    )
                    .await?
                    .map(|row| row.try_get(0))
                    .transpose()?;
                match stored {
                    None if expected == 0 => {}
                    Some(at) if at == expected => {}
                    // Nothing written yet: the commit that follows is empty.
                    _ => return Ok(ApprovalSaved::Conflict),
                }
                // One row per operator's vote (the primary key is the
                // uniqueness constraint): a vote already recorded at another
                // time is a second vote by that operator.
                let mut fresh = Vec::new();
                for vote in &request.approvals {
                    let at: Option<i64> = tx
                        .query_opt(
                            "SELECT at FROM approval_votes WHERE approval_id = $1 AND operator = $2",
                            &[&request.id, &vote.operator],
                        )
                        .await?
                        .map(|row| row.try_get(0))
                        .transpose()?;
                    match at {
                        None => fresh.push(vote),
                        Some(at) if at == vote.at => {}
                        Some(_) => return Ok(ApprovalSaved::AlreadyVoted),
                    }
                }
                let next = expected + 1;
                if expected == 0 {
                    // Two brokers creating one request: the row lock above
                    // has nothing to lock, so the insert decides, and the
                    // second one (waiting for the first's commit) writes
                    // nothing and conflicts.
                    let inserted = tx.execute(
                        "INSERT INTO approvals (id, requested_at, keep_until, body, revision)
                         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
                        &[
                            &request.id,
                            &request.requested_at,
                            &request.keep_until(),
                            &body,
                            &next,
                        ],
                    )
                    .await?;
                    if inserted == 0 {
                        return Ok(ApprovalSaved::Conflict);
                    }
                } else {
                    tx.execute(
                        "UPDATE approvals SET keep_until = $2, body = $3, revision = $4
                         WHERE id = $1",
                        &[&request.id, &request.keep_until(), &body, &next],
                    )
                    .await?;
                }
                for vote in fresh {
                    tx.execute(
                        "INSERT INTO approval_votes (approval_id, operator, at) VALUES ($1, $2, $3)",
                        &[&request.id, &vote.operator, &vote.at],
                    )
                    .await?;
                }
                let seq = append_change(tx, &change).await?;
                Ok(ApprovalSaved::Saved {
                    revision: revision + 1,
                    seq,
                })
            })
        })
        .await
    }

    async fn approval(&self, id: &str) -> Result<Option<StoredApproval>, StoreError> {
        let id = id.to_owned();
        let row: Option<(String, i64)> = self
            .read("load approval", move |tx| {
                Box::pin(async move {
                    tx.query_opt("SELECT body, revision FROM approvals WHERE id = $1", &[&id])
                        .await?
                        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                        .transpose()
                })
            })
            .await?;
        row.map(|(body, revision)| stored_approval(&body, revision))
            .transpose()
    }

    async fn approvals(&self, now: i64) -> Result<Vec<StoredApproval>, StoreError> {
        let rows: Vec<(String, i64)> = self
            .read("load approvals", move |tx| {
                Box::pin(async move {
                    tx.query(
                        "SELECT body, revision FROM approvals WHERE keep_until > $1
                         ORDER BY requested_at, id",
                        &[&now],
                    )
                    .await?
                    .iter()
                    .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                    .collect()
                })
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
        self.write("insert status list", move |tx| {
            Box::pin(async move {
                tx.execute(
                    "INSERT INTO status_lists (id, created_at, expires_at, key) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (id) DO NOTHING",
                    &[&id, &created_at, &expires_at, &key],
                )
                .await
                .map(drop)
            })
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
        self.write("append status entries", move |tx| {
            Box::pin(async move {
                tx.execute(
                    "INSERT INTO status_entries (list, first, entries) VALUES ($1, $2, $3)
                     ON CONFLICT (list, first) DO UPDATE SET entries = EXCLUDED.entries
                       WHERE octet_length(EXCLUDED.entries) > octet_length(status_entries.entries)",
                    &[&id, &first, &entries],
                )
                .await
                .map(drop)
            })
        })
        .await
    }

    async fn status_lists(&self, now: i64) -> Result<Vec<StoredStatusList>, StoreError> {
        self.read("load status lists", move |tx| {
            Box::pin(async move {
                let mut lists = Vec::new();
                for row in tx
                    .query(
                        "SELECT id, created_at, key FROM status_lists WHERE expires_at > $1
                         ORDER BY created_at, id",
                        &[&now],
                    )
                    .await?
                {
                    lists.push(StoredStatusList {
                        id: row.try_get(0)?,
                        created_at: row.try_get(1)?,
                        key: row.try_get(2)?,
                        chunks: Vec::new(),
                    });
                }
                let statement = tx
                    .prepare(
                        "SELECT first, entries FROM status_entries WHERE list = $1 ORDER BY first",
                    )
                    .await?;
                for list in &mut lists {
                    for row in tx.query(&statement, &[&list.id]).await? {
                        let first: i64 = row.try_get(0)?;
                        // A negative index is not something this broker
                        // wrote: skip it (the list then reads INVALID from
                        // there on).
                        if let Ok(first) = u64::try_from(first) {
                            list.chunks.push((first, row.try_get(1)?));
                        }
                    }
                }
                Ok(lists)
            })
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
        self.read("load status list", move |tx| {
            Box::pin(async move {
                let Some(row) = tx
                    .query_opt(
                        "SELECT id, created_at, key FROM status_lists WHERE id = $1 AND expires_at > $2",
                        &[&id, &now],
                    )
                    .await?
                else {
                    return Ok(None);
                };
                let mut list = StoredStatusList {
                    id: row.try_get(0)?,
                    created_at: row.try_get(1)?,
                    key: row.try_get(2)?,
                    chunks: Vec::new(),
                };
                for row in tx
                    .query(
                        "SELECT first, entries FROM status_entries WHERE list = $1 AND first >= $2
                         ORDER BY first",
                        &[&list.id, &from],
                    )
                    .await?
                {
                    let first: i64 = row.try_get(0)?;
                    if let Ok(first) = u64::try_from(first) {
                        list.chunks.push((first, row.try_get(1)?));
                    }
                }
                Ok(Some(list))
            })
        })
        .await
    }

    async fn stop_workload(&self, stop: &WorkloadStop) -> Result<u64, StoreError> {
        self.write_one("stop workload", AuditedWrite::WorkloadStopped(stop.clone()))
            .await
    }

    async fn enable_workload(&self, workload: &str, at: i64) -> Result<u64, StoreError> {
        let write = AuditedWrite::WorkloadEnabled {
            workload: workload.to_owned(),
            at,
        };
        self.write_one("enable workload", write).await
    }

    async fn workload_stops(&self, now: i64) -> Result<Vec<WorkloadStop>, StoreError> {
        self.read("load workload stops", move |tx| {
            Box::pin(async move {
                tx.query(
                    "SELECT workload, stopped_at, stopped_by, enabled_at FROM workload_stops
                     WHERE enabled_at IS NULL OR until > $1 ORDER BY workload",
                    &[&now],
                )
                .await?
                .iter()
                .map(|row| {
                    Ok(WorkloadStop {
                        workload: row.try_get(0)?,
                        stopped_at: row.try_get(1)?,
                        stopped_by: row.try_get(2)?,
                        enabled_at: row.try_get(3)?,
                    })
                })
                .collect()
            })
        })
        .await
    }

    async fn insert_target_credential(
        &self,
        credential: &TargetCredential,
        owner: &str,
    ) -> Result<bool, StoreError> {
        let c = credential.clone();
        let owner = owner.to_owned();
        let grant = grant_json(&c)?;
        self.write("record target credential", move |tx| {
            Box::pin(async move {
                let inserted = tx
                    .execute(
                        concat!(
                            "INSERT INTO target_credentials (",
                            credential_columns!(),
                            ", owner) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
                               $14, $15, $16, $17, $18, $19, $20, $21, $22, $23, $24, $25, $26)
                             ON CONFLICT (jti, target) DO NOTHING"
                        ),
                        &[
                            &c.id,
                            &c.jti,
                            &c.sub,
                            &c.client_id,
                            &c.job,
                            &c.step,
                            &c.approval,
                            &c.issued_at,
                            &c.expires_at,
                            &c.target,
                            &c.kind,
                            &c.upstream_id,
                            &c.server,
                            &c.database,
                            &c.effective.join(" "),
                            &c.state.as_str(),
                            &c.trigger.map(|t| t.as_str()),
                            &i64::from(c.attempts),
                            &c.next_attempt_at,
                            &c.last_error,
                            &c.created_at,
                            &c.finished_at,
                            &c.revoke_requested_at,
                            &c.sealed,
                            &grant,
                            &owner,
                        ],
                    )
                    .await?;
                Ok(inserted == 1)
            })
        })
        .await
    }

    async fn update_target_credential(
        &self,
        credential: &TargetCredential,
        owner: &str,
    ) -> Result<bool, StoreError> {
        let c = credential.clone();
        let owner = owner.to_owned();
        let grant = grant_json(&c)?;
        let (updated, exists) = self
            .write("update target credential", move |tx| {
                Box::pin(async move {
                    let updated = tx
                        .execute(
                            "UPDATE target_credentials SET upstream_id = $2, effective = $3,
                           state = $4, trigger = $5, attempts = $6, next_attempt_at = $7,
                           last_error = $8, finished_at = $9, revoke_requested_at = $10,
                           sealed = $11, grant_detail = $12
                         WHERE id = $1 AND owner = $13",
                            &[
                                &c.id,
                                &c.upstream_id,
                                &c.effective.join(" "),
                                &c.state.as_str(),
                                &c.trigger.map(|t| t.as_str()),
                                &i64::from(c.attempts),
                                &c.next_attempt_at,
                                &c.last_error,
                                &c.finished_at,
                                &c.revoke_requested_at,
                                &c.sealed,
                                &grant,
                                &owner,
                            ],
                        )
                        .await?;
                    if updated == 1 {
                        return Ok((true, true));
                    }
                    let exists = tx
                        .query_opt("SELECT 1 FROM target_credentials WHERE id = $1", &[&c.id])
                        .await?
                        .is_some();
                    Ok((false, exists))
                })
            })
            .await?;
        if updated {
            Ok(true)
        } else if exists {
            // Another broker's now.
            Ok(false)
        } else {
            Err(StoreError::Corrupt(format!(
                "target credential {} is not in the store",
                credential.id
            )))
        }
    }

    async fn unfinished_target_credentials(&self) -> Result<Vec<TargetCredential>, StoreError> {
        let rows: Vec<CredentialRow> = self
            .read("load target credentials", |tx| {
                Box::pin(async move {
                    tx.query(
                        concat!(
                            "SELECT ",
                            credential_columns!(),
                            " FROM target_credentials WHERE state <> 'revoked' ORDER BY created_at, id"
                        ),
                        &[],
                    )
                    .await?
                    .iter()
                    .map(read_credential)
                    .collect()
                })
            })
            .await?;
        rows.into_iter().map(CredentialRow::finish).collect()
    }

    async fn claim_target_credentials(
        &self,
        owner: &str,
        alive_until: i64,
        now: i64,
        include_own: bool,
    ) -> Result<Vec<TargetCredential>, StoreError> {
        let owner = owner.to_owned();
        // The lease first, in a transaction of its own: a claim that fails
        // must not cost this broker its lease.
        {
            let owner = owner.clone();
            self.write("renew a broker's lease", move |tx| {
                Box::pin(async move {
                    tx.execute(
                        "INSERT INTO stint_brokers (id, alive_until) VALUES ($1, $2)
                         ON CONFLICT (id) DO UPDATE SET alive_until = EXCLUDED.alive_until",
                        &[&owner, &alive_until],
                    )
                    .await?;
                    // Leases long past are of brokers long gone.
                    tx.execute(
                        "DELETE FROM stint_brokers WHERE alive_until < $1::bigint - 86400",
                        &[&now],
                    )
                    .await
                })
            })
            .await?;
        }
        let rows: Vec<CredentialRow> = self
            .write("claim target credentials", move |tx| {
                Box::pin(async move {
                    // What this broker owns already, if it asked (a claim
                    // whose answer it lost may have given it some).
                    let mut rows = if include_own {
                        tx.query(
                            concat!(
                                "SELECT ",
                                credential_columns!(),
                                " FROM target_credentials WHERE owner = $1 AND state <> 'revoked'
                                  AND (state <> 'minting' OR created_at < $2::bigint - $3::bigint)"
                            ),
                            &[&owner, &now, &MINT_ABANDONED_AFTER_SECS],
                        )
                        .await?
                        .iter()
                        .map(read_credential)
                        .collect::<Result<Vec<_>, _>>()?
                    } else {
                        Vec::new()
                    };
                    let candidates: Vec<(String, Option<String>)> = tx
                        .query(
                            "SELECT c.id, c.owner FROM target_credentials c
                             WHERE c.state <> 'revoked'
                               AND c.owner IS DISTINCT FROM $1
                               AND (c.state <> 'minting' OR c.created_at < $2::bigint - $3::bigint)
                               AND NOT EXISTS (SELECT 1 FROM stint_brokers b
                                               WHERE b.id = c.owner AND b.alive_until >= $2)",
                            &[&owner, &now, &MINT_ABANDONED_AFTER_SECS],
                        )
                        .await?
                        .iter()
                        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                        .collect::<Result<_, tokio_postgres::Error>>()?;
                    if !candidates.is_empty() {
                        let ids: Vec<&str> = candidates.iter().map(|(id, _)| id.as_str()).collect();
                        let locked: std::collections::HashSet<String> = tx
                            .query(
                                "SELECT id FROM target_credentials WHERE id = ANY($1)
                                 ORDER BY id FOR UPDATE SKIP LOCKED",
                                &[&ids],
                            )
                            .await?
                            .iter()
                            .map(|row| row.try_get(0))
                            .collect::<Result<_, _>>()?;
                        let (ids, was): (Vec<&str>, Vec<Option<&str>>) = candidates
                            .iter()
                            .filter(|(id, _)| locked.contains(id))
                            .map(|(id, was)| (id.as_str(), was.as_deref()))
                            .unzip();
                        let taken = tx
                            .query(
                                concat!(
                                    "UPDATE target_credentials SET owner = $1
                                     FROM unnest($2::text[], $3::text[]) AS claimed(cid, was)
                                     WHERE id = claimed.cid AND owner IS NOT DISTINCT FROM claimed.was
                                       AND state <> 'revoked'
                                     RETURNING ",
                                    credential_columns!()
                                ),
                                &[&owner, &ids, &was],
                            )
                            .await?
                            .iter()
                            .map(read_credential)
                            .collect::<Result<Vec<_>, _>>()?;
                        rows.extend(taken);
                    }
                    Ok(rows)
                })
            })
            .await?;
        let mut claimed = rows
            .into_iter()
            .map(CredentialRow::finish)
            .collect::<Result<Vec<_>, _>>()?;
        claimed.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(claimed)
    }

    async fn take_target_credential(
        &self,
        owner: &str,
        id: &str,
        jti: &str,
    ) -> Result<Option<TargetCredential>, StoreError> {
        let (owner, id, jti) = (owner.to_owned(), id.to_owned(), jti.to_owned());
        let row: Option<CredentialRow> = self
            .write("take a target credential", move |tx| {
                Box::pin(async move {
                    tx.query_opt(
                        concat!(
                            "UPDATE target_credentials SET owner = $1
                             WHERE id = $2 AND jti = $3 AND state IN ('live', 'revoking')
                             RETURNING ",
                            credential_columns!()
                        ),
                        &[&owner, &id, &jti],
                    )
                    .await?
                    .as_ref()
                    .map(read_credential)
                    .transpose()
                })
            })
            .await?;
        row.map(CredentialRow::finish).transpose()
    }

    async fn release_target_credentials(&self, owner: &str) -> Result<(), StoreError> {
        let owner = owner.to_owned();
        self.write("release a broker's lease", move |tx| {
            Box::pin(async move {
                tx.execute(
                    "UPDATE stint_brokers SET alive_until = 0 WHERE id = $1",
                    &[&owner],
                )
                .await
                .map(|_| ())
            })
        })
        .await
    }

    async fn store_write(&self, write: &AuditedWrite) -> Result<u64, StoreError> {
        let operation = match write {
            AuditedWrite::Token(..) => "revoke token",
            AuditedWrite::Job(_) => "revoke job",
            AuditedWrite::Step(_) => "revoke step",
            AuditedWrite::WorkloadStopped(_) => "stop workload",
            AuditedWrite::WorkloadEnabled { .. } => "enable workload",
        };
        self.write_one(operation, write.clone()).await
    }

    async fn owns_target_credential(&self, owner: &str, id: &str) -> Result<bool, StoreError> {
        let (owner, id) = (owner.to_owned(), id.to_owned());
        self.read("check a target credential's owner", move |tx| {
            Box::pin(async move {
                Ok(tx
                    .query_opt(
                        "SELECT 1 FROM target_credentials WHERE id = $1 AND owner = $2",
                        &[&id, &owner],
                    )
                    .await?
                    .is_some())
            })
        })
        .await
    }

    async fn purge_target_credentials(&self, before: i64) -> Result<u64, StoreError> {
        self.write("purge target credentials", move |tx| {
            Box::pin(async move {
                tx.execute(
                    "DELETE FROM target_credentials WHERE state = 'revoked' AND finished_at < $1",
                    &[&before],
                )
                .await
            })
        })
        .await
    }

    fn shared(&self) -> bool {
        true
    }

    async fn check(&self) -> Result<(), StoreError> {
        let writable: bool = self
            .pool
            .run("health check", |c| {
                Box::pin(async move {
                    c.query_one(
                        "SELECT current_setting('transaction_read_only') = 'off'",
                        &[],
                    )
                    .await?
                    .try_get(0)
                })
            })
            .await?;
        if writable {
            Ok(())
        } else {
            Err(StoreError::Backend {
                operation: "health check",
                message: format!(
                    "{} is read-only (a standby, or default_transaction_read_only)",
                    self.endpoint()
                ),
            })
        }
    }

    async fn change_position(&self) -> Result<ChangePosition, StoreError> {
        let (epoch, seq): (String, i64) = self
            .read("read the change feed's position", |tx| {
                Box::pin(async move {
                    let row = tx
                        .query_one("SELECT epoch, seq FROM stint_change_head", &[])
                        .await?;
                    Ok((row.try_get(0)?, row.try_get(1)?))
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
        let rows: Vec<(i64, String)> = self
            .read("read changes", move |tx| {
                Box::pin(async move {
                    tx.query(
                        "SELECT seq, body FROM stint_changes WHERE seq > $1 ORDER BY seq LIMIT $2",
                        &[&after, &limit],
                    )
                    .await?
                    .iter()
                    .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                    .collect()
                })
            })
            .await?;
        rows.iter()
            .map(|(seq, body)| change_from_json(*seq, body))
            .collect()
    }

    async fn append_audit_with(
        &self,
        chain: &str,
        first: u64,
        records: &[String],
        writes: &[AuditedWrite],
    ) -> Result<AuditCommit, StoreError> {
        let batch = AuditBatch {
            chain: chain.to_owned(),
            first: i64::try_from(first).map_err(|_| {
                StoreError::Corrupt(format!("audit position {first} is out of range"))
            })?,
            records: records.to_vec(),
        };
        let written = records.len() as u64;
        let writes: Vec<(AuditedWrite, String)> = writes
            .iter()
            .map(|write| Ok((write.clone(), change_json(&write.change())?)))
            .collect::<Result<_, StoreError>>()?;
        self.pool
            .run("append audit records", move |client: &mut Client| {
                Box::pin(async move {
                    if writes.is_empty() {
                        // Records alone (every mint): one statement is one
                        // transaction, and one round trip (the parameters'
                        // types are given, so nothing is prepared first).
                        return match client
                            .query_typed(INSERT_AUDIT_RECORDS, &batch.params())
                            .await
                        {
                            Ok(_) => Ok(AuditCommit {
                                written,
                                seqs: Vec::new(),
                            }),
                            Err(error) if taken(&error) => Ok(AuditCommit::NOTHING),
                            Err(error) => Err(error),
                        };
                    }
                    let tx = client.transaction().await?;
                    // The records first: a batch sent again after its
                    // commit's answer was lost waits here for that commit,
                    // and if it is there, fails (dropping `tx` rolls back)
                    // and writes nothing twice.
                    match tx.query_typed(INSERT_AUDIT_RECORDS, &batch.params()).await {
                        Ok(_) => {}
                        Err(error) if taken(&error) => return Ok(AuditCommit::NOTHING),
                        Err(error) => return Err(error),
                    }
                    // The rows in one order for every transaction, then the
                    // changes in the batch's order (the feed counter's lock
                    // is taken last, and held to the commit).
                    let mut order: Vec<usize> = (0..writes.len()).collect();
                    order.sort_by_key(|&i| row_key(&writes[i].0));
                    for &i in &order {
                        write_row(&tx, &writes[i].0).await?;
                    }
                    let mut seqs = Vec::with_capacity(writes.len());
                    for (_, body) in &writes {
                        seqs.push(append_change(&tx, body).await?);
                    }
                    tx.commit().await?;
                    Ok(AuditCommit { written, seqs })
                })
            })
            .await
    }

    async fn audit_chains(&self) -> Result<Vec<(String, u64)>, StoreError> {
        let rows: Vec<(String, i64)> = self
            .read("list audit chains", |tx| {
                Box::pin(async move {
                    tx.query(
                        // Chain ids begin with their broker's start time.
                        "SELECT chain, count(*) FROM audit_records GROUP BY chain ORDER BY chain",
                        &[],
                    )
                    .await?
                    .iter()
                    .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
                    .collect()
                })
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|(chain, count)| (chain, u64::try_from(count).unwrap_or_default()))
            .collect())
    }

    async fn audit_heads(&self) -> Result<Vec<(String, u64, String)>, StoreError> {
        let rows: Vec<(String, i64, String)> = self
            .read("read audit heads", |tx| {
                Box::pin(async move {
                    tx.query(
                        "SELECT DISTINCT ON (chain) chain, n, line FROM audit_records
                         ORDER BY chain, n DESC",
                        &[],
                    )
                    .await?
                    .iter()
                    .map(|row| Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?)))
                    .collect()
                })
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|(chain, n, line)| (chain, u64::try_from(n).unwrap_or_default() + 1, line))
            .collect())
    }

    async fn audit_records(
        &self,
        chain: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        let chain = chain.to_owned();
        let from = i64::try_from(from).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read("read audit records", move |tx| {
            Box::pin(async move {
                tx.query(
                    "SELECT line FROM audit_records WHERE chain = $1 AND n >= $2 ORDER BY n LIMIT $3",
                    &[&chain, &from, &limit],
                )
                .await?
                .iter()
                .map(|row| row.try_get(0))
                .collect()
            })
        })
        .await
    }

    async fn watch_changes(&self, wake: &tokio::sync::Notify) -> Result<(), StoreError> {
        self.pool.listen(CHANGE_CHANNEL, wake).await
    }
}
