//! A small bounded pool of connections to the store's database.
//!
//! At most `pool_size` connections; idle ones are reused, a closed one is
//! dropped and replaced by a new one on demand, so the pool recovers by
//! itself when the server comes back. Every operation, from waiting for a
//! slot through connecting to its last statement, runs under one timeout;
//! a connection whose operation timed out or lost its server is dropped,
//! never reused. The server bounds each statement too
//! (`statement_timeout`), so a query the client gave up on does not run on.

use super::settings::{PostgresStoreSettings, PostgresTls, StorePassword};
use crate::StoreError;
use crate::pg_tls::{MakeRustlsConnect, client_config, require_tls, root_store};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;
use tokio::sync::{Notify, Semaphore};
use tokio_postgres::{AsyncMessage, Client, NoTls};

/// How often a listening session shows it is alive: one that stops
/// answering is given up and opened again.
const LISTEN_HEARTBEAT: Duration = Duration::from_secs(5);

/// A boxed, `Send` future borrowing for `'a`.
pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

pub(crate) struct Pool {
    config: tokio_postgres::Config,
    tls: Option<MakeRustlsConnect>,
    permits: Semaphore,
    idle: Mutex<Vec<Client>>,
    timeout: Duration,
    /// `host:port/database as user`, for messages.
    endpoint: String,
    /// Only to strike it from any message that might hold it.
    password: StorePassword,
}

impl Pool {
    /// No I/O: connections open on demand.
    pub(crate) fn new(settings: &PostgresStoreSettings) -> Result<Self, StoreError> {
        let endpoint = settings.endpoint();
        let open_error = |message: String| StoreError::Open {
            path: endpoint.clone(),
            message,
        };
        settings.validate().map_err(|e| open_error(e.to_string()))?;
        let tls = match &settings.tls {
            PostgresTls::Disable => None,
            PostgresTls::Require { ca_file } => {
                let pem = ca_file
                    .as_ref()
                    .map(|path| {
                        std::fs::read(path).map_err(|e| {
                            open_error(format!("cannot read the CA file {}: {e}", path.display()))
                        })
                    })
                    .transpose()?;
                let roots = root_store(pem.as_deref()).map_err(open_error)?;
                Some(MakeRustlsConnect::new(
                    client_config(roots, true).map_err(open_error)?,
                ))
            }
        };
        let statement_timeout = settings.timeout.as_millis();
        let mut config = tokio_postgres::Config::new();
        config
            .host(&settings.host)
            .port(settings.port)
            .user(&settings.user)
            .password(settings.password.expose().as_bytes())
            .dbname(&settings.database)
            .application_name("stintd")
            .connect_timeout(settings.timeout)
            // The server gives up on a statement when the client would.
            .options(format!(
                "-c statement_timeout={statement_timeout} -c idle_in_transaction_session_timeout={statement_timeout}"
            ));
        require_tls(&mut config, tls.is_some());
        Ok(Self {
            config,
            tls,
            permits: Semaphore::new(settings.pool_size),
            idle: Mutex::new(Vec::new()),
            timeout: settings.timeout,
            endpoint,
            password: settings.password.clone(),
        })
    }

    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Run `work` on one connection, within the timeout.
    pub(crate) async fn run<T, F>(&self, operation: &'static str, work: F) -> Result<T, StoreError>
    where
        T: Send,
        F: for<'c> FnOnce(&'c mut Client) -> BoxFuture<'c, Result<T, tokio_postgres::Error>> + Send,
    {
        let attempt = async {
            let permit = self
                .permits
                .acquire()
                .await
                .map_err(|_| self.backend(operation, "the connection pool is closed".into()))?;
            let mut client = match self.take_idle() {
                Some(client) => client,
                None => self.connect().await.map_err(|e| {
                    self.backend(
                        operation,
                        format!("cannot connect to {}: {e}", self.endpoint),
                    )
                })?,
            };
            let result = work(&mut client).await;
            Ok::<_, StoreError>((client, result, permit))
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            // The connection, if any, was dropped with the attempt.
            Err(_) => Err(self.backend(
                operation,
                format!(
                    "{} did not answer within {:?} (the server is down, unreachable, or every connection is busy)",
                    self.endpoint, self.timeout
                ),
            )),
            Ok(Err(error)) => Err(error),
            Ok(Ok((client, result, permit))) => {
                // A server's refusal leaves the session usable (a failed
                // transaction was rolled back when dropped); anything else
                // (I/O, a lost or terminated session) does not.
                let reusable = match &result {
                    Ok(_) => true,
                    Err(error) => error.as_db_error().is_some(),
                };
                if reusable && !client.is_closed() {
                    self.idle
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(client);
                }
                drop(permit);
                result.map_err(|e| self.backend(operation, describe(&e)))
            }
        }
    }

    /// `LISTEN channel` on a session of its own (not one of the pool's),
    /// waking `wake` at each notification, and once when listening begins
    /// (what was committed before is read by sequence). Returns, with the
    /// reason, when the session ends or stops answering its heartbeat.
    pub(crate) async fn listen(
        &self,
        channel: &'static str,
        wake: &Notify,
    ) -> Result<(), StoreError> {
        let operation = "listen for changes";
        let connect_error = |e: tokio_postgres::Error| {
            self.backend(
                operation,
                format!("cannot connect to {}: {}", self.endpoint, describe(&e)),
            )
        };
        let ended = match &self.tls {
            None => {
                let (client, connection) =
                    self.config.connect(NoTls).await.map_err(connect_error)?;
                drive_listener(&client, connection, channel, wake, self.timeout).await
            }
            Some(tls) => {
                let (client, connection) = self
                    .config
                    .connect(tls.clone())
                    .await
                    .map_err(connect_error)?;
                drive_listener(&client, connection, channel, wake, self.timeout).await
            }
        };
        Err(self.backend(operation, ended))
    }

    fn take_idle(&self) -> Option<Client> {
        let mut idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(client) = idle.pop() {
            if !client.is_closed() {
                return Some(client);
            }
        }
        None
    }

    /// Open a session: TCP, TLS, authentication, and a commit that is
    /// durable (a role or database set to `synchronous_commit = off` is
    /// set back to `on` for this session).
    async fn connect(&self) -> Result<Client, String> {
        let client = match &self.tls {
            None => {
                let (client, connection) =
                    self.config.connect(NoTls).await.map_err(|e| describe(&e))?;
                spawn_connection(connection, &self.endpoint);
                client
            }
            Some(tls) => {
                let (client, connection) = self
                    .config
                    .connect(tls.clone())
                    .await
                    .map_err(|e| describe(&e))?;
                spawn_connection(connection, &self.endpoint);
                client
            }
        };
        let row = client
            .query_one("SELECT current_setting('synchronous_commit')", &[])
            .await
            .map_err(|e| describe(&e))?;
        let mode: String = row.try_get(0).map_err(|e| describe(&e))?;
        if mode == "off" {
            client
                .batch_execute("SET synchronous_commit = on")
                .await
                .map_err(|e| describe(&e))?;
        }
        Ok(client)
    }

    /// A [`StoreError::Backend`], the password struck out should any
    /// message ever repeat it.
    fn backend(&self, operation: &'static str, message: String) -> StoreError {
        let password = self.password.expose();
        let message = if password.is_empty() {
            message
        } else {
            message.replace(password, "<redacted>")
        };
        StoreError::Backend { operation, message }
    }
}

/// A client error in one line: the server's SQLSTATE and message, or the
/// chain of causes (tokio-postgres keeps the detail, such as the TLS
/// failure, in the source).
fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} (sqlstate {})", db.message(), db.code().code()),
        None => error_chain(error),
    }
}

/// An error and its sources, `: `-separated.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Listen on `client`'s session, driving `connection` for notifications,
/// until either fails. Returns why.
async fn drive_listener<S, T>(
    client: &Client,
    mut connection: tokio_postgres::Connection<S, T>,
    channel: &'static str,
    wake: &Notify,
    timeout: Duration,
) -> String
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let driver = async {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(_))) => wake.notify_one(),
                Some(Ok(_)) => {}
                Some(Err(error)) => return describe(&error),
                None => return "the server ended the session".to_owned(),
            }
        }
    };
    tokio::select! {
        ended = driver => ended,
        ended = heartbeat(client, channel, wake, timeout) => ended,
    }
}

/// `LISTEN`, wake once, then check every [`LISTEN_HEARTBEAT`] that the
/// session answers. Returns why it stopped.
async fn heartbeat(
    client: &Client,
    channel: &'static str,
    wake: &Notify,
    timeout: Duration,
) -> String {
    // The channel is one of this crate's constants, never a caller's text.
    let listen = format!("LISTEN {channel}");
    match tokio::time::timeout(timeout, client.batch_execute(&listen)).await {
        Ok(Ok(())) => wake.notify_one(),
        Ok(Err(error)) => return describe(&error),
        Err(_) => return format!("LISTEN was not answered within {timeout:?}"),
    }
    loop {
        tokio::time::sleep(LISTEN_HEARTBEAT).await;
        match tokio::time::timeout(timeout, client.batch_execute("SELECT 1")).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => return describe(&error),
            Err(_) => return format!("the listening session did not answer within {timeout:?}"),
        }
    }
}

/// Drive `connection` on its own task until its client is dropped or the
/// server goes.
fn spawn_connection<S, T>(connection: tokio_postgres::Connection<S, T>, endpoint: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let endpoint = endpoint.to_owned();
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(store = %endpoint, error = %error_chain(&error), "store connection ended");
        }
    });
}
