//! The PostgreSQL upstream: creates and destroys the login roles that
//! stint-core's planner describes, over a small bounded pool of admin
//! connections.
//!
//! Every wait is bounded: a connection slot by `connect_timeout`, opening a
//! connection (TCP, TLS, authentication, session setup) by
//! `connect_timeout`, and every statement by `statement_timeout`, both on
//! the server (`SET statement_timeout` on the session) and on the client
//! (a tokio timeout, for a server that stops answering). A dead or slow
//! server therefore costs a caller at most `2 * connect_timeout` plus
//! `statement_timeout` per statement, never more.
//!
//! The privileges the admin role needs, and the script that creates it on a
//! server where Stint is not superuser, are in the repository's
//! `docs/targets.md` ("The admin role").

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use stint_store::pg_tls as tls;
use stint_store::postgres::error_chain;
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio_postgres::error::{DbError, SqlState};
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// How admin connections are protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP (only for a server on the same host or a trusted network).
    Disable,
    /// TLS, with the certificate chain verified against `ca_pem` (or
    /// Mozilla's roots), but not the host name: libpq's `verify-ca`.
    Require,
    /// TLS, with the chain and the host name verified: libpq's
    /// `verify-full`.
    VerifyFull,
}

/// The admin password. Its `Debug` prints `<redacted>`; no message of this
/// crate ever contains it.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub fn new(password: String) -> Self {
        Self(password)
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where the admin connects, as whom, and how long it may wait.
#[derive(Debug, Clone)]
pub struct PostgresSettings {
    pub host: String,
    pub port: u16,
    /// The target database: where roles get their grants, and where
    /// `DROP OWNED` cleans up when they are destroyed.
    pub database: String,
    pub user: String,
    pub password: Password,
    pub tls: TlsMode,
    /// PEM roots for `Require` and `VerifyFull`; `None` means Mozilla's
    /// (webpki-roots).
    pub ca_pem: Option<Vec<u8>>,
    /// At most this many admin connections are open at once.
    pub pool_size: usize,
    pub connect_timeout: Duration,
    pub statement_timeout: Duration,
}

/// What [`PostgresUpstream::revoke`] found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevokeReport {
    /// Whether the role existed when the revocation began (a role already
    /// gone is a success with `false`).
    pub existed: bool,
    /// How many of the role's sessions were terminated.
    pub terminated: u32,
}

/// Why an upstream call failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Could not reach the server, TLS failed, timed out, every admin
    /// connection busy, connection lost, or the server said it cannot
    /// serve now (too many connections, shutting down, deadlock): retry
    /// later.
    #[error("postgresql is unavailable: {0}")]
    Unavailable(String),
    /// The server refused: its SQLSTATE and message (insufficient
    /// privilege, undefined table, a grant it did not make, ...), or a role
    /// name Stint would never have made. Retrying will not help.
    #[error("postgresql refused (sqlstate {sqlstate}): {message}")]
    Refused { sqlstate: String, message: String },
    /// The settings cannot work (no pool, a zero timeout, bad CA PEM).
    #[error("invalid postgresql target settings: {0}")]
    Settings(String),
}

/// The role prefix every Stint login role has.
pub const ROLE_PREFIX: &str = "stint_";

/// Whether `role` is a name Stint makes: `^stint_[a-z2-7]{24}$` (24
/// lowercase base32 characters). Only such names reach SQL, always
/// double-quoted.
pub fn is_stint_role_name(role: &str) -> bool {
    role.strip_prefix(ROLE_PREFIX).is_some_and(|rest| {
        rest.len() == 24
            && rest
                .bytes()
                .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(&b))
    })
}

/// The PostgreSQL admin client. Cheap to clone (one shared pool); `Send`
/// and `Sync`.
#[derive(Clone)]
pub struct PostgresUpstream {
    inner: Arc<Inner>,
}

struct Inner {
    config: tokio_postgres::Config,
    tls: Option<tls::MakeRustlsConnect>,
    /// `host:port (database name)`, for messages.
    endpoint: String,
    host_port: String,
    pool_size: usize,
    connect_timeout: Duration,
    statement_timeout: Duration,
    permits: Semaphore,
    idle: Mutex<Vec<AdminConnection>>,
}

/// An open admin session and the privilege warnings it has received.
struct AdminConnection {
    client: Client,
    /// `01007 privilege_not_granted` notices: PostgreSQL only warns when a
    /// GRANT grants nothing (the admin holds the privilege but not its grant
    /// option); `create` turns them into a refusal.
    ungranted: Arc<Mutex<Vec<DbError>>>,
}

/// A pool slot and its connection; the connection goes back to the idle
/// list only through [`Lease::keep`], after a call that succeeded.
struct Lease<'a> {
    inner: &'a Inner,
    connection: Option<AdminConnection>,
    _permit: SemaphorePermit<'a>,
}

impl Lease<'_> {
    fn client(&self) -> Result<&Client, UpstreamError> {
        self.connection
            .as_ref()
            .map(|connection| &connection.client)
            .ok_or_else(|| {
                self.inner
                    .unavailable("the admin connection was already released")
            })
    }

    fn client_mut(&mut self) -> Result<&mut Client, UpstreamError> {
        match self.connection.as_mut() {
            Some(connection) => Ok(&mut connection.client),
            None => Err(self
                .inner
                .unavailable("the admin connection was already released")),
        }
    }

    fn ungranted(&self) -> Result<Arc<Mutex<Vec<DbError>>>, UpstreamError> {
        self.connection
            .as_ref()
            .map(|connection| Arc::clone(&connection.ungranted))
            .ok_or_else(|| {
                self.inner
                    .unavailable("the admin connection was already released")
            })
    }

    /// Return the connection to the idle list (before the slot is freed).
    fn keep(mut self) {
        if let Some(connection) = self.connection.take()
            && !connection.client.is_closed()
        {
            self.inner
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(connection);
        }
    }
}

impl PostgresUpstream {
    /// No I/O: connections are opened on demand, at most `pool_size`, idle
    /// ones reused.
    pub fn new(settings: PostgresSettings) -> Result<Self, UpstreamError> {
        let settings_error = |what: &str| Err(UpstreamError::Settings(what.to_owned()));
        if settings.pool_size == 0 {
            return settings_error("pool_size must be at least 1");
        }
        if settings.connect_timeout.is_zero() {
            return settings_error("connect_timeout must be more than zero");
        }
        // PostgreSQL reads statement_timeout = 0 as "no limit".
        if settings.statement_timeout < Duration::from_millis(1) {
            return settings_error("statement_timeout must be at least 1ms");
        }
        if settings.host.is_empty() || settings.database.is_empty() || settings.user.is_empty() {
            return settings_error("host, database and user must not be empty");
        }
        let host_port = if settings.host.contains(':') {
            format!("[{}]:{}", settings.host, settings.port)
        } else {
            format!("{}:{}", settings.host, settings.port)
        };
        let endpoint = format!("{host_port} (database {})", settings.database);
        let tls = match settings.tls {
            TlsMode::Disable => None,
            TlsMode::Require | TlsMode::VerifyFull => {
                let roots =
                    tls::root_store(settings.ca_pem.as_deref()).map_err(UpstreamError::Settings)?;
                let config = tls::client_config(roots, settings.tls == TlsMode::VerifyFull)
                    .map_err(UpstreamError::Settings)?;
                Some(tls::MakeRustlsConnect::new(config))
            }
        };
        let mut config = tokio_postgres::Config::new();
        config
            .host(&settings.host)
            .port(settings.port)
            .dbname(&settings.database)
            .user(&settings.user)
            .password(settings.password.0.as_bytes())
            .application_name("stint")
            .connect_timeout(settings.connect_timeout);
        tls::require_tls(&mut config, tls.is_some());
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                tls,
                endpoint,
                host_port,
                pool_size: settings.pool_size,
                connect_timeout: settings.connect_timeout,
                statement_timeout: settings.statement_timeout,
                permits: Semaphore::new(settings.pool_size),
                idle: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Run `statements` in one transaction (`BEGIN` ... `COMMIT`) on one
    /// admin connection: all or nothing. Each statement is bounded by
    /// `statement_timeout`. A GRANT that grants nothing (PostgreSQL only
    /// warns, 01007) is refused, and the transaction rolled back.
    ///
    /// Each statement is sent alone with the extended protocol, so a string
    /// can never carry a second statement.
    pub async fn create(&self, statements: &[String]) -> Result<(), UpstreamError> {
        let inner = &*self.inner;
        let mut lease = inner.lease().await?;
        let ungranted = lease.ungranted()?;
        drain(&ungranted);
        let result = async {
            let client = lease.client_mut()?;
            let transaction = inner.bounded("begin", client.transaction()).await?;
            inner
                .bounded("the catalog lock", transaction.batch_execute(CATALOG_LOCK))
                .await?;
            for statement in statements {
                inner
                    .bounded("a statement", transaction.execute(statement.as_str(), &[]))
                    .await?;
                // A statement's notices arrive before its answer, so they
                // are here now; dropping the transaction rolls it back.
                if let Some(first) = drain(&ungranted).first() {
                    return Err(UpstreamError::Refused {
                        sqlstate: first.code().code().to_owned(),
                        message: format!(
                            "{}: {} (the admin lacks the grant option; nothing was created)",
                            inner.endpoint,
                            first.message()
                        ),
                    });
                }
            }
            inner.bounded("commit", transaction.commit()).await
        }
        .await;
        if result.is_ok() {
            lease.keep();
        }
        result
    }

    /// Destroy a login role: `ALTER ROLE .. NOLOGIN` (committed at once);
    /// revoke it from every other role that is a member of it; terminate
    /// its sessions; `DROP OWNED BY` it in the target database, dropping
    /// what it made rather than handing it to the admin (first
    /// granting the admin the role, when it lacks its privileges, as
    /// PostgreSQL requires); `DROP ROLE IF EXISTS`. A role that does not
    /// exist is a success with `existed: false`. `role` must be a name
    /// Stint makes ([`is_stint_role_name`]); anything else is refused
    /// (sqlstate 42602, invalid_name) before any I/O.
    pub async fn revoke(&self, role: &str) -> Result<RevokeReport, UpstreamError> {
        if !is_stint_role_name(role) {
            return Err(UpstreamError::Refused {
                sqlstate: "42602".to_owned(),
                message: format!(
                    "{:?} is not a stint role name (stint_ and 24 characters of a-z, 2-7); nothing was done",
                    role.chars().take(64).collect::<String>()
                ),
            });
        }
        let inner = &*self.inner;
        let mut lease = inner.lease().await?;
        let result = inner.revoke_on(&mut lease, role).await;
        if result.is_ok() {
            lease.keep();
        }
        result
    }

    /// The roles named `stint_...` whose comment is `marker`: the ones
    /// Stint made, for the reconciler. Names not of Stint's shape are left
    /// out (and logged), since [`Self::revoke`] would refuse them.
    pub async fn list_roles(&self, marker: &str) -> Result<Vec<String>, UpstreamError> {
        let inner = &*self.inner;
        let lease = inner.lease().await?;
        let rows = inner
            .bounded(
                "listing roles",
                lease.client()?.query(
                    "SELECT rolname::text FROM pg_catalog.pg_roles \
                     WHERE starts_with(rolname::text, $1) \
                     AND pg_catalog.shobj_description(oid, 'pg_authid') = $2 \
                     ORDER BY 1",
                    &[&ROLE_PREFIX, &marker],
                ),
            )
            .await?;
        let mut roles = Vec::with_capacity(rows.len());
        for row in rows {
            let name: String = row.try_get(0).map_err(|error| inner.error(&error))?;
            if is_stint_role_name(&name) {
                roles.push(name);
            } else {
                tracing::warn!(
                    role = %name,
                    upstream = %inner.endpoint,
                    "a role carries stint's marker but not a stint role name; left alone"
                );
            }
        }
        lease.keep();
        Ok(roles)
    }

    /// One round trip (`SELECT 1`, after a connection is open): for
    /// readiness.
    pub async fn ping(&self) -> Result<(), UpstreamError> {
        let inner = &*self.inner;
        let lease = inner.lease().await?;
        inner
            .bounded("ping", lease.client()?.simple_query("SELECT 1"))
            .await?;
        lease.keep();
        Ok(())
    }
}

impl fmt::Debug for PostgresUpstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresUpstream")
            .field("endpoint", &self.inner.endpoint)
            .field("pool_size", &self.inner.pool_size)
            .finish_non_exhaustive()
    }
}

impl Inner {
    fn unavailable(&self, what: impl fmt::Display) -> UpstreamError {
        UpstreamError::Unavailable(format!("{}: {what}", self.endpoint))
    }

    /// A client error as an [`UpstreamError`]: the server's errors are
    /// refusals, except those that say "not now" (see [`is_transient`]).
    fn error(&self, error: &tokio_postgres::Error) -> UpstreamError {
        match error.as_db_error() {
            Some(db) if is_transient(db.code()) || is_concurrent_update(db) => {
                self.unavailable(format_args!(
                    "the server cannot serve now (sqlstate {}): {}",
                    db.code().code(),
                    db.message()
                ))
            }
            Some(db) => UpstreamError::Refused {
                sqlstate: db.code().code().to_owned(),
                message: format!("{}: {}", self.endpoint, db.message()),
            },
            None => self.unavailable(error_chain(error)),
        }
    }

    /// `future` within `statement_timeout`, its error mapped.
    async fn bounded<T>(
        &self,
        what: &str,
        future: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, UpstreamError> {
        match tokio::time::timeout(self.statement_timeout, future).await {
            Ok(result) => result.map_err(|error| self.error(&error)),
            Err(_) => Err(self.unavailable(format_args!(
                "{what} timed out after {:?}",
                self.statement_timeout
            ))),
        }
    }

    /// A pool slot (waiting at most `connect_timeout`) and a connection in
    /// it: an idle one that is still open, or a new one.
    async fn lease(&self) -> Result<Lease<'_>, UpstreamError> {
        let permit = match tokio::time::timeout(self.connect_timeout, self.permits.acquire()).await
        {
            Ok(Ok(permit)) => permit,
            // The semaphore is never closed.
            Ok(Err(_)) => return Err(self.unavailable("the admin connection pool is closed")),
            Err(_) => {
                return Err(UpstreamError::Unavailable(format!(
                    "all {} admin connections to {} (database {}) are busy; waited {:?}",
                    self.pool_size,
                    self.host_port,
                    self.config.get_dbname().unwrap_or_default(),
                    self.connect_timeout
                )));
            }
        };
        let idle = loop {
            let next = self
                .idle
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop();
            match next {
                Some(connection) if connection.client.is_closed() => continue,
                other => break other,
            }
        };
        let connection = match idle {
            Some(connection) => connection,
            None => self.connect().await?,
        };
        Ok(Lease {
            inner: self,
            connection: Some(connection),
            _permit: permit,
        })
    }

    /// Open an admin session within `connect_timeout`: TCP, TLS,
    /// authentication and `SET statement_timeout`.
    async fn connect(&self) -> Result<AdminConnection, UpstreamError> {
        let attempt = async {
            let connection = match &self.tls {
                None => {
                    let (client, connection) = self.config.connect(NoTls).await?;
                    spawn_connection(client, connection, &self.endpoint)
                }
                Some(tls) => {
                    let (client, connection) = self.config.connect(tls.clone()).await?;
                    spawn_connection(client, connection, &self.endpoint)
                }
            };
            connection
                .client
                .batch_execute(&format!(
                    "SET statement_timeout = {}",
                    self.statement_timeout.as_millis()
                ))
                .await?;
            Ok::<_, tokio_postgres::Error>(connection)
        };
        match tokio::time::timeout(self.connect_timeout, attempt).await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(error)) => Err(self.error(&error)),
            Err(_) => Err(self.unavailable(format_args!(
                "connecting timed out after {:?}",
                self.connect_timeout
            ))),
        }
    }

    async fn revoke_on(
        &self,
        lease: &mut Lease<'_>,
        role: &str,
    ) -> Result<RevokeReport, UpstreamError> {
        // Safe to splice: `role` matched ^stint_[a-z2-7]{24}$.
        let quoted = format!("\"{role}\"");
        let client = lease.client_mut()?;
        let found = self
            .bounded(
                "looking up the role",
                client.query_opt(
                    "SELECT pg_catalog.pg_has_role(current_user, oid, 'USAGE') \
                     FROM pg_catalog.pg_roles WHERE rolname = $1",
                    &[&role],
                ),
            )
            .await?;
        let Some(found) = found else {
            return Ok(RevokeReport {
                existed: false,
                terminated: 0,
            });
        };
        let has_its_privileges: bool = found.try_get(0).map_err(|error| self.error(&error))?;
        let gone = RevokeReport {
            existed: true,
            terminated: 0,
        };

        // 1. No new logins, committed before anything else.
        match self
            .bounded(
                "alter role nologin",
                client.batch_execute(&format!("ALTER ROLE {quoted} NOLOGIN")),
            )
            .await
        {
            Err(error) if is_undefined_object(&error) => return Ok(gone),
            other => other?,
        }

        // 2. No one else may act as it: on PostgreSQL 15 a role may grant
        // membership in itself, and a member could SET ROLE to it from a
        // session of its own, which NOLOGIN does not stop.
        let members = self
            .bounded(
                "listing the role's members",
                client.query(
                    "SELECT m.rolname::text FROM pg_catalog.pg_auth_members a \
                     JOIN pg_catalog.pg_roles r ON r.oid = a.roleid \
                     JOIN pg_catalog.pg_roles m ON m.oid = a.member \
                     WHERE r.rolname = $1 AND m.rolname <> current_user",
                    &[&role],
                ),
            )
            .await?;
        for member in members {
            let member: String = member.try_get(0).map_err(|error| self.error(&error))?;
            self.bounded(
                "revoking a membership in the role",
                client.batch_execute(&format!(
                    "REVOKE {quoted} FROM {}",
                    quote_identifier(&member)
                )),
            )
            .await?;
        }

        // 3. End its sessions.
        let mut terminated = self.terminate_sessions(client, role).await?;

        // 4. DROP OWNED needs the role's privileges.
        if !has_its_privileges {
            match self
                .bounded(
                    "granting the admin the role",
                    client.batch_execute(&format!("GRANT {quoted} TO CURRENT_USER")),
                )
                .await
            {
                Err(error) if is_undefined_object(&error) => {
                    return Ok(RevokeReport { terminated, ..gone });
                }
                other => other?,
            }
        }

        // 5. Its objects and grants here, a last sweep of sessions that
        // slipped in before NOLOGIN, and the role itself, all at once. What
        // it owns is dropped, never handed to the admin: a view or a
        // SECURITY DEFINER function it made would then run with the
        // admin's rights, for anyone.
        let transaction = self.bounded("begin", client.transaction()).await?;
        self.bounded("the catalog lock", transaction.batch_execute(CATALOG_LOCK))
            .await?;
        for statement in [format!("DROP OWNED BY {quoted}")] {
            match self
                .bounded("cleaning up", transaction.batch_execute(&statement))
                .await
            {
                Err(error) if is_undefined_object(&error) => {
                    return Ok(RevokeReport { terminated, ..gone });
                }
                other => other?,
            }
        }
        terminated += self.terminate_sessions(&transaction, role).await?;
        self.bounded(
            "drop role",
            transaction.batch_execute(&format!("DROP ROLE IF EXISTS {quoted}")),
        )
        .await?;
        self.bounded("commit", transaction.commit()).await?;
        Ok(RevokeReport {
            existed: true,
            terminated,
        })
    }

    /// Terminate every session of `role`, waiting (a quarter of the
    /// statement timeout, each) for them to end; how many ended.
    async fn terminate_sessions(
        &self,
        client: &impl tokio_postgres::GenericClient,
        role: &str,
    ) -> Result<u32, UpstreamError> {
        let wait_ms = i64::try_from(self.statement_timeout.as_millis() / 4).unwrap_or(i64::MAX);
        let row = self
            .bounded(
                "terminating sessions",
                client.query_one(
                    "SELECT count(*) FILTER (WHERE pg_catalog.pg_terminate_backend(pid, $2)) \
                     FROM pg_catalog.pg_stat_activity \
                     WHERE usename = $1 AND pid <> pg_catalog.pg_backend_pid()",
                    &[&role, &wait_ms],
                ),
            )
            .await?;
        let count: i64 = row.try_get(0).map_err(|error| self.error(&error))?;
        Ok(u32::try_from(count).unwrap_or(u32::MAX))
    }
}

/// Take the privilege warnings received so far.
fn drain(ungranted: &Mutex<Vec<DbError>>) -> Vec<DbError> {
    std::mem::take(&mut *ungranted.lock().unwrap_or_else(PoisonError::into_inner))
}

/// A double-quoted identifier, any `"` doubled: for role names read from the
/// server's own catalog.
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A role (or other object) that does not exist: the revocation's work is
/// done by someone else.
fn is_undefined_object(error: &UpstreamError) -> bool {
    matches!(error, UpstreamError::Refused { sqlstate, .. } if sqlstate == SqlState::UNDEFINED_OBJECT.code())
}

/// SQLSTATEs that mean "not now" rather than "no": connection exceptions
/// (08), transaction rollbacks such as deadlocks and serialization failures
/// (40), insufficient resources such as too many connections (53), operator
/// intervention such as a cancelled statement or a shutdown (57), system
/// errors (58), and a lock not available (55P03).
fn is_transient(code: &SqlState) -> bool {
    let code = code.code();
    ["08", "40", "53", "57", "58"]
        .iter()
        .any(|class| code.starts_with(class))
        || code == SqlState::LOCK_NOT_AVAILABLE.code()
}

/// PostgreSQL's internal error when two transactions update one catalog
/// row at once (two GRANTs on one table): the transaction is rolled back
/// and may simply run again. Stint's own transactions on one database take
/// [`CATALOG_LOCK`] first, so this comes only from someone else's.
fn is_concurrent_update(db: &tokio_postgres::error::DbError) -> bool {
    db.code() == &SqlState::INTERNAL_ERROR && db.message().contains("concurrently updated")
}

/// The transaction-level advisory lock every Stint transaction that grants
/// or revokes privileges takes first, on the target's database: GRANT and
/// DROP OWNED rewrite the ACL in the catalog row of each object they touch,
/// and PostgreSQL refuses the second of two concurrent updates of one row
/// ("tuple concurrently updated", XX000) instead of waiting. Held for a
/// few milliseconds; a waiter is bounded by `statement_timeout`.
/// (The key is arbitrary, and the same in every Stint.)
const CATALOG_LOCK: &str = "SELECT pg_advisory_xact_lock(6012741437265293313)";

/// Drive `connection` on its own task until the client drops (or the
/// server goes), keeping privilege warnings for `create`.
fn spawn_connection<S, T>(
    client: Client,
    mut connection: tokio_postgres::Connection<S, T>,
    endpoint: &str,
) -> AdminConnection
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let ungranted = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&ungranted);
    let endpoint = endpoint.to_owned();
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notice(notice))) => {
                    if notice.code() == &SqlState::WARNING_PRIVILEGE_NOT_GRANTED {
                        sink.lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(notice);
                    } else {
                        tracing::debug!(upstream = %endpoint, notice = %notice.message(), "postgresql notice");
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => {
                    tracing::debug!(upstream = %endpoint, error = %error_chain(&error), "admin connection ended");
                    break;
                }
                None => break,
            }
        }
    });
    AdminConnection { client, ungranted }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> PostgresSettings {
        PostgresSettings {
            host: "db.example".to_owned(),
            port: 5432,
            database: "app".to_owned(),
            user: "stint_admin".to_owned(),
            password: Password::new("hunter2-secret".to_owned()),
            tls: TlsMode::VerifyFull,
            ca_pem: None,
            pool_size: 2,
            connect_timeout: Duration::from_secs(1),
            statement_timeout: Duration::from_secs(1),
        }
    }

    #[test]
    fn role_names_are_only_stints_shape() {
        assert!(is_stint_role_name("stint_aaaaaaaaaaaaaaaaaaaaaaaa"));
        assert!(is_stint_role_name("stint_abcdefghijklmnopqrstuv27"));
        for bad in [
            "",
            "stint_",
            "stint_admin",
            "stint_aaaaaaaaaaaaaaaaaaaaaaa",
            "stint_aaaaaaaaaaaaaaaaaaaaaaaaa",
            "stint_AAAAAAAAAAAAAAAAAAAAAAAA",
            "stint_aaaaaaaaaaaaaaaaaaaaaaa1",
            "stint_aaaaaaaaaaaaaaaaaaaaaaa8",
            "stint_aaaaaaaaaaaaaaaaaaaaaa\"x",
            "postgres",
            "Stint_aaaaaaaaaaaaaaaaaaaaaaaa",
            "stint_aaaaaaaaaaaaaaaaaaaaaaaé",
        ] {
            assert!(!is_stint_role_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_password_never_shows() {
        let text = format!("{:?}", settings());
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("<redacted>"));
        let upstream = PostgresUpstream::new(settings()).unwrap();
        assert!(!format!("{upstream:?}").contains("hunter2"));
    }

    #[test]
    fn settings_that_cannot_work_are_refused() {
        for broken in [
            PostgresSettings {
                pool_size: 0,
                ..settings()
            },
            PostgresSettings {
                connect_timeout: Duration::ZERO,
                ..settings()
            },
            PostgresSettings {
                statement_timeout: Duration::from_micros(10),
                ..settings()
            },
            PostgresSettings {
                ca_pem: Some(b"garbage".to_vec()),
                ..settings()
            },
            PostgresSettings {
                host: String::new(),
                ..settings()
            },
        ] {
            assert!(matches!(
                PostgresUpstream::new(broken),
                Err(UpstreamError::Settings(_))
            ));
        }
    }

    #[tokio::test]
    async fn a_bad_role_name_is_refused_without_io() {
        // db.example is never contacted: the name is checked first.
        let upstream = PostgresUpstream::new(settings()).unwrap();
        match upstream.revoke("postgres").await {
            Err(UpstreamError::Refused { sqlstate, .. }) => assert_eq!(sqlstate, "42602"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn transient_states_are_unavailable() {
        assert!(is_transient(&SqlState::TOO_MANY_CONNECTIONS));
        assert!(is_transient(&SqlState::ADMIN_SHUTDOWN));
        assert!(is_transient(&SqlState::QUERY_CANCELED));
        assert!(is_transient(&SqlState::T_R_DEADLOCK_DETECTED));
        assert!(!is_transient(&SqlState::INSUFFICIENT_PRIVILEGE));
        assert!(!is_transient(&SqlState::UNDEFINED_TABLE));
        assert!(!is_transient(&SqlState::INVALID_PASSWORD));
    }

    #[test]
    fn upstream_is_send_sync_clone() {
        fn check<T: Send + Sync + Clone + 'static>() {}
        check::<PostgresUpstream>();
    }
}
