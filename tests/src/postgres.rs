//! A real, throwaway PostgreSQL 15 cluster for tests: `initdb` in a
//! temporary directory, `pg_ctl` on a free loopback port, SCRAM
//! authentication over TCP, optionally TLS with a test CA. Stopped and
//! removed on drop, also when the test panics.
//!
//! The server refuses to run as root, so when the tests run as root (CI
//! does) every server command runs as the `postgres` OS user through
//! `runuser`, and the directory is handed to that user.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use stint_targets::{Password, PostgresSettings, TlsMode};

/// What a missing server says.
pub const MISSING_SERVER: &str = "PostgreSQL server binaries not found: install them with `apt-get install -y postgresql-15` (or set PG_BIN)";

/// The comment Stint puts on the roles it makes (as the planner does).
pub const MARKER: &str = "stint target credential";

/// The policy's step `load` of workflow `demo`: `select:warehouse/crm/*`
/// on the target `warehouse`.
pub const LOAD_STEP: &str = r#"
[workflows.demo.steps.load]
scopes = ["select:warehouse/crm/*"]
targets = ["warehouse"]
default_ttl = "5m"
max_ttl = "15m"
"#;

/// A `[targets.NAME]` table: `database` on the test cluster at `port`,
/// administered by `admin` with the password in `password_file`, over
/// plain loopback, with short timeouts.
pub fn target_toml(
    name: &str,
    port: u16,
    database: &str,
    admin: &str,
    password_file: &std::path::Path,
) -> String {
    format!(
        r#"
[targets.{name}]
kind = "postgres"
host = "127.0.0.1"
port = {port}
database = "{database}"
admin_user = "{admin}"
admin_password_file = "{}"
tls = "disable"
connect_timeout_secs = 1
statement_timeout_secs = 2
"#,
        password_file.display()
    )
}

/// A target credential as the ledger holds one, for store tests: `id`,
/// made from step token `jti` at `created_at`, for five minutes, `live`,
/// on `warehouse` (a PostgreSQL target); change what a test needs.
pub fn ledger_credential(
    id: &str,
    jti: &str,
    created_at: i64,
) -> stint_core::target_credential::TargetCredential {
    stint_core::target_credential::TargetCredential {
        id: id.into(),
        jti: jti.into(),
        sub: "etl".into(),
        client_id: "etl".into(),
        job: "job".into(),
        step: "load".into(),
        approval: None,
        issued_at: created_at,
        expires_at: created_at + 300,
        target: "warehouse".into(),
        kind: "postgres".into(),
        upstream_id: format!("stint_{id}"),
        server: "127.0.0.1:5432".into(),
        database: None,
        effective: vec![],
        state: stint_core::target_credential::CredentialState::Live,
        trigger: None,
        attempts: 0,
        next_attempt_at: 0,
        last_error: None,
        created_at,
        finished_at: None,
        revoke_requested_at: None,
        sealed: None,
        grant: None,
    }
}

/// A running (or stopped) test cluster.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
    password: String,
    ca_pem: Option<String>,
    as_postgres: bool,
    running: bool,
}

/// The PostgreSQL 15 server binaries: `$PG_BIN`, the Debian location, or
/// `pg_config --bindir`. Panics, naming the package, when none has them.
pub fn server_bin() -> PathBuf {
    let has_server = |dir: &Path| dir.join("initdb").is_file() && dir.join("pg_ctl").is_file();
    if let Some(dir) = std::env::var_os("PG_BIN") {
        let dir = PathBuf::from(dir);
        assert!(
            has_server(&dir),
            "{MISSING_SERVER} (PG_BIN={})",
            dir.display()
        );
        return dir;
    }
    let debian = PathBuf::from("/usr/lib/postgresql/15/bin");
    if has_server(&debian) {
        return debian;
    }
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output()
        && output.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if has_server(&dir) {
            return dir;
        }
    }
    panic!("{MISSING_SERVER}");
}

fn running_as_root() -> bool {
    // /proc/self belongs to the process's effective user.
    std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
}

fn random_password() -> String {
    use base64::Engine as _;
    let mut bytes = [0u8; 18];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).unwrap();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl PgCluster {
    /// A cluster without TLS.
    pub fn start() -> Self {
        Self::start_inner(None)
    }

    /// A cluster with TLS on, its server certificate for `localhost` and
    /// 127.0.0.1 from a fresh test CA ([`Self::ca_pem`]).
    pub fn start_with_tls() -> Self {
        Self::start_with_tls_for(&["localhost", "127.0.0.1"])
    }

    /// A cluster with TLS on, its certificate for `names` only.
    pub fn start_with_tls_for(names: &[&str]) -> Self {
        Self::start_inner(Some(names))
    }

    fn start_inner(tls_names: Option<&[&str]>) -> Self {
        let bin = server_bin();
        let as_postgres = running_as_root();
        let dir = tempfile::Builder::new()
            .prefix("stint-pg-")
            .tempdir()
            .unwrap();
        let password = random_password();
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, &password).unwrap();
        // Only the server's user reads the directory; /tmp above it is
        // world-traversable.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        let mut cluster = Self {
            dir,
            bin,
            port: 0,
            password,
            ca_pem: None,
            as_postgres,
            running: false,
        };
        if as_postgres {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(cluster.dir.path())
                .status()
                .unwrap();
            assert!(status.success(), "chown of the cluster directory failed");
        }
        let data = cluster.data_dir();
        cluster.run(
            "initdb",
            &[
                "-D".as_ref(),
                data.as_os_str(),
                "-U".as_ref(),
                "postgres".as_ref(),
                "--encoding=UTF8".as_ref(),
                "--locale=C".as_ref(),
                "--auth-local=trust".as_ref(),
                "--auth-host=scram-sha-256".as_ref(),
                "--pwfile".as_ref(),
                pwfile.as_os_str(),
            ],
        );
        std::fs::remove_file(&pwfile).unwrap();
        if let Some(names) = tls_names {
            cluster.enable_tls(names);
        }
        // A port picked now may be taken by the time the server binds it
        // (tests run in parallel): try a few.
        for attempt in 0..5 {
            cluster.port = crate::unused_loopback_addr().port();
            if cluster.try_start() {
                return cluster;
            }
            assert!(
                attempt < 4,
                "the test cluster did not start:\n{}",
                cluster.log()
            );
        }
        unreachable!()
    }

    fn enable_tls(&mut self, names: &[&str]) {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Stint PostgreSQL Test CA");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("postgres"),
        );
        let cert = params.signed_by(&key, &issuer).unwrap();
        let data = self.data_dir();
        std::fs::write(data.join("server.crt"), cert.pem()).unwrap();
        std::fs::write(data.join("server.key"), key.serialize_pem()).unwrap();
        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let mut conf = std::fs::read_to_string(data.join("postgresql.conf")).unwrap();
        conf.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        std::fs::write(data.join("postgresql.conf"), conf).unwrap();
        if self.as_postgres {
            for file in ["server.crt", "server.key", "postgresql.conf"] {
                let status = Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(data.join(file))
                    .status()
                    .unwrap();
                assert!(status.success());
            }
        }
        self.ca_pem = Some(ca_cert.pem());
    }

    /// Authenticate TCP clients with `method` (`scram-sha-256`, `md5`,
    /// `password`: pg_hba.conf's methods) from now on.
    pub async fn use_host_auth(&self, method: &str) {
        let path = self.data_dir().join("pg_hba.conf");
        let hba = std::fs::read_to_string(&path).unwrap();
        let changed: Vec<String> = hba
            .lines()
            .map(|line| {
                if line.starts_with("host") {
                    let mut fields: Vec<&str> = line.split_whitespace().collect();
                    if let Some(last) = fields.last_mut() {
                        *last = method;
                    }
                    fields.join(" ")
                } else {
                    line.to_owned()
                }
            })
            .collect();
        std::fs::write(&path, changed.join("\n") + "\n").unwrap();
        self.superuser_client()
            .await
            .batch_execute("SELECT pg_reload_conf()")
            .await
            .unwrap();
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// A server binary, as the `postgres` user when we are root.
    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    fn run(&self, program: &str, args: &[&std::ffi::OsStr]) {
        let (status, stdout, stderr) = crate::run_to_end(
            self.command(program)
                .args(args)
                .current_dir(self.dir.path()),
            Duration::from_secs(120),
        );
        assert!(
            status.success(),
            "{program} failed ({status}):\n{stdout}\n{stderr}\n{}",
            self.log()
        );
    }

    fn try_start(&mut self) -> bool {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -c unix_socket_directories={} -c fsync=on -c max_connections=200 -c shared_buffers=16MB",
            self.port,
            self.dir.path().display()
        );
        let (status, _, _) = crate::run_to_end(
            self.command("pg_ctl")
                .args(["-w", "-t", "60", "-D"])
                .arg(self.data_dir())
                .arg("-l")
                .arg(self.log_path())
                .arg("-o")
                .arg(options)
                .arg("start")
                .current_dir(self.dir.path()),
            Duration::from_secs(90),
        );
        self.running = status.success();
        self.running
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn superuser_password(&self) -> &str {
        &self.password
    }

    /// The test CA's certificate (PEM), for a TLS cluster.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// Stop the server (`pg_ctl stop -m fast`), keeping its data.
    pub fn stop(&mut self) {
        if self.running {
            self.pg_ctl_stop("fast");
        }
    }

    fn pg_ctl_stop(&mut self, mode: &str) {
        let (status, stdout, stderr) = crate::run_to_end(
            self.command("pg_ctl")
                .args(["-w", "-t", "60", "-D"])
                .arg(self.data_dir())
                .args(["-m", mode, "stop"])
                .current_dir(self.dir.path()),
            Duration::from_secs(90),
        );
        self.running = false;
        assert!(status.success(), "pg_ctl stop failed:\n{stdout}\n{stderr}");
    }

    /// Start the stopped server again, on the same port and data.
    pub fn start_again(&mut self) {
        assert!(!self.running, "the cluster is running");
        assert!(
            self.try_start(),
            "the cluster did not start again:\n{}",
            self.log()
        );
    }

    /// A connection as `user` to `database` over TCP (SCRAM), and its
    /// connection task, whose result tells how the session ended.
    pub async fn connect_as(
        &self,
        user: &str,
        password: &str,
        database: &str,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
        ),
        tokio_postgres::Error,
    > {
        let mut config = tokio_postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(self.port)
            .user(user)
            .password(password)
            .dbname(database)
            .connect_timeout(Duration::from_secs(10));
        let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
        Ok((client, tokio::spawn(connection)))
    }

    /// The superuser `postgres`, in `database`.
    pub async fn superuser_client_in(&self, database: &str) -> tokio_postgres::Client {
        let password = self.password.clone();
        self.connect_as("postgres", &password, database)
            .await
            .unwrap_or_else(|error| panic!("superuser login failed: {error}\n{}", self.log()))
            .0
    }

    /// The superuser `postgres`, in the database `postgres`.
    pub async fn superuser_client(&self) -> tokio_postgres::Client {
        self.superuser_client_in("postgres").await
    }

    /// Create `database` with schema `crm` and two tables: `crm.accounts`
    /// (one row: 1, 'acme') for a login to read, `crm.secrets` (1, 'hush')
    /// for it not to. Returns the superuser's connection to it.
    pub async fn create_crm_database(&self, database: &str) -> tokio_postgres::Client {
        self.superuser_client()
            .await
            .batch_execute(&format!("CREATE DATABASE {database}"))
            .await
            .unwrap();
        let owner = self.superuser_client_in(database).await;
        owner
            .batch_execute(
                "CREATE SCHEMA crm;
                 CREATE TABLE crm.accounts (id int PRIMARY KEY, name text);
                 INSERT INTO crm.accounts VALUES (1, 'acme');
                 CREATE TABLE crm.secrets (id int PRIMARY KEY, value text);
                 INSERT INTO crm.secrets VALUES (1, 'hush');",
            )
            .await
            .unwrap();
        owner
    }

    /// The roles named `stint_...` on the server, sorted.
    /// Every audit record of every chain in the store database `stint`,
    /// chain by chain, in order.
    pub async fn audit_lines(&self) -> Vec<serde_json::Value> {
        self.superuser_client_in("stint")
            .await
            .query("SELECT line FROM audit_records ORDER BY chain, n", &[])
            .await
            .unwrap()
            .iter()
            .map(|row| serde_json::from_str(row.get::<_, &str>(0)).unwrap())
            .collect()
    }

    pub async fn stint_roles(&self) -> Vec<String> {
        self.superuser_client()
            .await
            .query(
                "SELECT rolname::text FROM pg_roles WHERE rolname LIKE 'stint\\_%' ORDER BY 1",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|row| row.get(0))
            .collect()
    }

    /// Settings for a [`stint_targets::PostgresUpstream`] on this cluster,
    /// without TLS, pool 4, 2 s timeouts.
    pub fn settings(&self, user: &str, password: &str, database: &str) -> PostgresSettings {
        PostgresSettings {
            host: "127.0.0.1".to_owned(),
            port: self.port,
            database: database.to_owned(),
            user: user.to_owned(),
            password: Password::new(password.to_owned()),
            tls: TlsMode::Disable,
            ca_pem: None,
            pool_size: 4,
            connect_timeout: Duration::from_secs(2),
            statement_timeout: Duration::from_secs(2),
        }
    }

    /// A database `database` for a broker's store and its role `role`,
    /// with only the privileges docs/operations.md ("PostgreSQL store")
    /// lists: CONNECT, and USAGE and CREATE on the schema `public` (CREATE
    /// only for the first migration). Settings for it, plain TCP to
    /// 127.0.0.1, pool 4, 2 s timeout.
    pub async fn create_store_database(
        &self,
        database: &str,
        role: &str,
        password: &str,
    ) -> stint_store::PostgresStoreSettings {
        let client = self.superuser_client().await;
        for statement in [
            format!("CREATE ROLE \"{role}\" WITH LOGIN PASSWORD '{password}'"),
            format!("CREATE DATABASE \"{database}\""),
            format!("REVOKE ALL ON DATABASE \"{database}\" FROM PUBLIC"),
            format!("GRANT CONNECT ON DATABASE \"{database}\" TO \"{role}\""),
        ] {
            client
                .batch_execute(&statement)
                .await
                .unwrap_or_else(|error| panic!("{statement}: {error}"));
        }
        self.superuser_client_in(database)
            .await
            .batch_execute(&format!(
                "GRANT USAGE, CREATE ON SCHEMA public TO \"{role}\""
            ))
            .await
            .unwrap();
        stint_store::PostgresStoreSettings {
            host: "127.0.0.1".to_owned(),
            port: self.port,
            user: role.to_owned(),
            password: stint_store::StorePassword::new(password.to_owned()),
            database: database.to_owned(),
            tls: stint_store::PostgresTls::Disable,
            pool_size: 4,
            timeout: Duration::from_secs(2),
        }
    }

    /// Create the admin role `name`. A superuser, or, with `superuser`
    /// false, the least a managed server's admin has, as
    /// `docs/targets.md` ("The admin role") documents: CREATEROLE and
    /// pg_signal_backend (grant options on databases, schemas and tables
    /// are given per test with [`admin_grants`]).
    pub async fn create_admin(&self, name: &str, password: &str, superuser: bool) {
        let client = self.superuser_client().await;
        let statements = if superuser {
            vec![format!(
                "CREATE ROLE \"{name}\" WITH LOGIN SUPERUSER PASSWORD '{password}'"
            )]
        } else {
            admin_role_sql(name, password)
        };
        for statement in statements {
            client
                .batch_execute(&statement)
                .await
                .unwrap_or_else(|error| panic!("{statement}: {error}"));
        }
    }
}

/// docs/targets.md's server-wide part: the admin role itself.
pub fn admin_role_sql(name: &str, password: &str) -> Vec<String> {
    vec![
        format!(
            "CREATE ROLE \"{name}\" WITH LOGIN NOSUPERUSER CREATEROLE NOCREATEDB NOREPLICATION NOBYPASSRLS INHERIT CONNECTION LIMIT 10 PASSWORD '{password}'"
        ),
        format!("GRANT pg_signal_backend TO \"{name}\""),
    ]
}

/// docs/targets.md's per-database part: what the admin may hand on in `database`,
/// schema `schema`, `privileges` on `tables` (run as the owner, in that
/// database).
pub fn admin_grants(
    admin: &str,
    database: &str,
    schema: &str,
    tables: &[&str],
    privileges: &str,
) -> Vec<String> {
    let mut statements = vec![
        format!("GRANT CONNECT ON DATABASE \"{database}\" TO \"{admin}\" WITH GRANT OPTION"),
        format!("GRANT USAGE ON SCHEMA \"{schema}\" TO \"{admin}\" WITH GRANT OPTION"),
    ];
    for table in tables {
        statements.push(format!(
            "GRANT {privileges} ON TABLE \"{schema}\".\"{table}\" TO \"{admin}\" WITH GRANT OPTION"
        ));
    }
    statements
}

/// A SCRAM-SHA-256 verifier for `password` (RFC 5802, as PostgreSQL stores
/// it): what the planner puts in `CREATE ROLE ... PASSWORD`, so the server
/// never sees the password.
pub fn scram_verifier(password: &str) -> String {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use ring::{digest, hmac, pbkdf2};
    let iterations = 4096u32;
    let mut salt = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut salt).unwrap();
    let mut salted = [0u8; 32];
    pbkdf2::derive(
        pbkdf2::PBKDF2_HMAC_SHA256,
        std::num::NonZeroU32::new(iterations).unwrap(),
        &salt,
        password.as_bytes(),
        &mut salted,
    );
    let key = hmac::Key::new(hmac::HMAC_SHA256, &salted);
    let client_key = hmac::sign(&key, b"Client Key");
    let stored_key = digest::digest(&digest::SHA256, client_key.as_ref());
    let server_key = hmac::sign(&key, b"Server Key");
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        STANDARD.encode(salt),
        STANDARD.encode(stored_key.as_ref()),
        STANDARD.encode(server_key.as_ref())
    )
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.running {
            self.running = false;
            let _ = run_quiet(
                self.command("pg_ctl")
                    .args(["-w", "-t", "30", "-D"])
                    .arg(self.data_dir())
                    .args(["-m", "immediate", "stop"])
                    .current_dir(self.dir.path()),
                Duration::from_secs(60),
            );
        }
        // The TempDir removes the directory (root may remove postgres's
        // files; a non-root user owns them).
    }
}

/// Run a command to its end within `timeout` without ever panicking (for
/// `Drop`, which may run while a test panics): killed when late.
fn run_quiet(command: &mut Command, timeout: Duration) -> Option<std::process::ExitStatus> {
    let mut child = command
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    }
}

/// The SQLSTATE of a client error, or a description of why it has none.
pub fn sqlstate(error: &tokio_postgres::Error) -> String {
    error
        .code()
        .map(|code| code.code().to_owned())
        .unwrap_or_else(|| format!("no sqlstate: {error}"))
}
