//! `stint-target-bench`: what Stint adds to making and destroying a
//! PostgreSQL login, and whether a declared target slows ordinary minting.
//!
//! It starts a throwaway PostgreSQL 15 cluster (the test harness's
//! [`PgCluster`]: `initdb` and `pg_ctl` on a free loopback port, fsync on)
//! with a database `bench` and a table `crm.accounts`, and brokers in this
//! process (the `stint-server` library, plain HTTP on 127.0.0.1, the
//! durable audit log and store in a data directory on the real disk). With
//! `--jobs` (16) concurrent jobs, each a tokio task in a closed loop, it
//! measures in every round, one phase after the other:
//!
//! - **bare**: the same PostgreSQL doing the statements Stint sends, as the
//!   superuser over `--jobs` connections of its own, with tokio-postgres
//!   called as Stint's upstream calls it. Mint: a fresh role name, password
//!   and SCRAM-SHA-256 verifier (4096 PBKDF2 rounds, as Stint makes them:
//!   a server given the plain password would spend the same), then one
//!   transaction of exactly what Stint's planner emits (`CREATE ROLE ..
//!   LOGIN .. VALID UNTIL .. PASSWORD '<verifier>'`, `COMMENT ON ROLE`,
//!   `GRANT CONNECT`, `GRANT USAGE ON SCHEMA`, `GRANT SELECT ON
//!   crm.accounts`), statement by statement. Revoke: Stint's sequence (the
//!   lookup, `ALTER ROLE .. NOLOGIN`, the role's members listed, terminating
//!   sessions, then one transaction of `DROP OWNED`, terminating again,
//!   `DROP ROLE`). Without Stint's catalog lock: PostgreSQL's own conflicts
//!   between concurrent GRANTs are retried and counted instead.
//! - **stint**: per cycle, a step token (`client_credentials`), its
//!   exchange for a login (RFC 8693; timed: "mint"), `DELETE
//!   /v1/target-credentials/{id}` and then the wait until the role is gone
//!   from `pg_roles` (timed from the DELETE: "revoke"). One watcher polls
//!   `pg_roles` for every job's role each millisecond, so the revoke figure
//!   includes up to a millisecond of polling and one poll's round trip.
//! - **mint**: `client_credentials` minting as `stint-bench` measures it
//!   (`--mint-connections` keep-alive connections), against a broker whose
//!   policy declares no target and against one whose policy is the same
//!   plus an idle declared target (its PostgreSQL up, unused).
//!
//! A cycle or request counts if it completed inside the measured window
//! (`--duration` seconds after `--warmup`); p50 and p99 are nearest-rank
//! percentiles. After `--rounds` rounds (the phases interleaved, so drift
//! hits them alike) it prints the medians, and the median of the rounds'
//! ratios next to each target: Stint adds under 2x over the bare
//! statements (mint and revoke p50, cycles/s), and a declared target leaves
//! minting unchanged (within 10 %; a noisy figure on a shared machine).
//! At the end it checks that no `stint_` role is left.
//!
//! ```text
//! cargo run --release -p stint-bench --bin stint-target-bench
//! cargo run --release -p stint-bench --bin stint-target-bench -- --rounds 1 --duration 2
//! ```
//!
//! It runs as root too (the cluster then runs as the `postgres` user); it
//! needs the PostgreSQL 15 server binaries (`apt-get install -y
//! postgresql-15`, or `PG_BIN`).

// Shared with `stint-bench` (src/main.rs); not every item is used here.
#[allow(dead_code)]
#[path = "../load.rs"]
mod load;
#[allow(dead_code)]
#[path = "../machine.rs"]
mod machine;
#[allow(dead_code)]
#[path = "../stats.rs"]
mod stats;

use crate::load::{Load, LoadReport, RequestTemplate};
use crate::machine::{CpuSample, CpuUse, average_cpus};
use crate::stats::{Measurement, median, median_duration};
use anyhow::{Context as _, Result, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use clap::Parser;
use http::header;
use ring::rand::{SecureRandom as _, SystemRandom};
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use stint_core::scope::Scope;
use stint_core::target::postgres::{self as planner, PgIdent, PgTlsMode, PostgresTarget};
use stint_core::target::{ROLE_MARKER, SecretSource};
use stint_proto::TargetCredentialResponse;
use stint_server::{Config, PolicySource, Rate, RunningServer};
use stint_tests::postgres::PgCluster;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Stint's latency and throughput may be at most this many times the bare
/// statements'.
const TARGET_FACTOR: f64 = 2.0;
/// Minting with an idle declared target may differ from minting without
/// by at most this fraction.
const TARGET_MINT_DRIFT: f64 = 0.10;
/// The target's name in the policy, and the first segment of its scopes.
const TARGET: &str = "bench";
/// The database, schema and table the logins are granted.
const DATABASE: &str = "bench";
const SCOPE: &str = "select:bench/crm/accounts";
/// The benchmark's workload and its secret.
const WORKLOAD: &str = "bench-job";
const WORKLOAD_SECRET: &str = "stint_bench_target_secret";
/// The comment on the bare phase's roles: not [`ROLE_MARKER`], so that no
/// broker's reconciler takes them for its own, and as long.
const BARE_MARKER: &str = "stint-bench bare login";
/// How long a role may take to disappear after its DELETE was answered.
const REVOKE_BOUND: Duration = Duration::from_secs(10);
/// How often the watcher looks for the roles being revoked.
const POLL_INTERVAL: Duration = Duration::from_millis(1);
/// A cycle still running this long after the window closed is abandoned.
const GRACE: Duration = Duration::from_secs(15);
/// What Stint's upstream waits for terminated sessions (a quarter of its
/// default 5 s statement timeout), mirrored by the bare revoke.
const TERMINATE_WAIT_MS: i64 = 1250;
/// What PostgreSQL says when two transactions update one catalog row at
/// once (concurrent GRANTs on one table, schema or database): SQLSTATE
/// XX000, no lock taken, so the second fails instead of waiting.
const CONFLICT: &str = "tuple concurrently updated";
/// How often the bare phase retries a statement sequence that hit it.
const CONFLICT_RETRIES: u32 = 1000;
/// A login's lifetime (the step's default TTL).
const LOGIN_TTL_SECS: i64 = 300;

/// Target credentials (PostgreSQL logins) through Stint vs the bare
/// statements, and minting with and without a declared target.
#[derive(Debug, Parser)]
#[command(
    name = "stint-target-bench",
    about = "PostgreSQL logins through Stint (exchange, destruction) against the bare statements on the same server, and minting with an idle target",
    long_about = None
)]
struct Cli {
    /// Concurrent jobs for the bare and stint phases (also the bare pool's
    /// connections and the target's pool_size).
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=32))]
    jobs: u16,

    /// Concurrent keep-alive connections for the mint phases.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    mint_connections: u16,

    /// Seconds of unrecorded warm-up before each measurement.
    #[arg(long, default_value = "1", value_parser = load::parse_seconds)]
    warmup: Duration,

    /// Seconds each measurement records.
    #[arg(long, default_value = "3", value_parser = load::parse_positive_seconds)]
    duration: Duration,

    /// Rounds (bare, stint, mint without target, mint with target in
    /// each); the report gives the medians.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..))]
    rounds: u32,

    /// Exit non-zero if a target is missed or anything failed.
    #[arg(long)]
    check: bool,

    /// Where to create the brokers' temporary data directories; on a real
    /// disk for fsync to be real [default: the directory of this
    /// executable, inside Cargo's target directory].
    #[arg(long, value_name = "DIR")]
    data_in: Option<PathBuf>,
}

impl Cli {
    fn data_parent(&self) -> PathBuf {
        self.data_in.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(Path::to_path_buf))
                .unwrap_or_else(|| PathBuf::from("."))
        })
    }

    fn jobs(&self) -> usize {
        usize::from(self.jobs)
    }
}

fn main() -> Result<ExitCode> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    // The harness panics with the server's log when the cluster cannot
    // start; it stops the cluster when dropped, after the brokers.
    println!("starting PostgreSQL 15 ...");
    let cluster = PgCluster::start();
    let outcome = runtime.block_on(benchmark(&cli, &cluster));
    runtime.shutdown_timeout(Duration::from_secs(5));
    drop(cluster);
    let summary = outcome?;
    print_lines(&summary.lines());
    if cli.check && !summary.passes() {
        println!("--check: FAILED (a target was missed or something failed)");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

// --- the whole run ----------------------------------------------------------

async fn benchmark(cli: &Cli, cluster: &PgCluster) -> Result<Summary> {
    let parent = cli.data_parent();
    let work = tempfile::Builder::new()
        .prefix("stint-target-bench-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a directory in {}", parent.display()))?;
    let setup = prepare_database(cluster).await?;
    let password_file = work.path().join("admin.password");
    std::fs::write(&password_file, cluster.superuser_password())
        .context("writing the admin password file")?;
    std::fs::set_permissions(&password_file, std::fs::Permissions::from_mode(0o600))
        .context("restricting the admin password file")?;
    print_header(cli, work.path(), &setup.server_version);

    let target_section = target_policy(cluster.port(), &password_file, cli.jobs);
    let stint = start_broker(&work.path().join("stint"), &policy(Some(&target_section))).await?;
    let plain = start_broker(&work.path().join("plain"), &policy(None)).await?;
    let idle = start_broker(&work.path().join("idle"), &policy(Some(&target_section))).await?;
    println!(
        "PostgreSQL on 127.0.0.1:{}; brokers: target credentials at {}, minting without a target at {}, with an idle target at {}\n",
        cluster.port(),
        stint.issuer(),
        plain.issuer(),
        idle.issuer()
    );

    let mut bare_pool = connect_pool(cluster, cli.jobs()).await?;
    let setup = Arc::new(setup);
    let (watcher, watcher_task) = RoleWatcher::start(cluster).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(cli.jobs())
        .timeout(Duration::from_secs(30))
        .build()
        .context("building the HTTP client")?;
    let stint_target = StintTarget {
        http,
        issuer: stint.issuer().to_owned(),
        watcher,
    };
    let mint_load = Load {
        connections: usize::from(cli.mint_connections),
        warmup: cli.warmup,
        duration: cli.duration,
    };
    let plain_mint = Arc::new(mint_request(plain.local_addr())?);
    let idle_mint = Arc::new(mint_request(idle.local_addr())?);
    let window = WindowSpec {
        warmup: cli.warmup,
        duration: cli.duration,
    };

    let mut rounds = Vec::new();
    for index in 1..=cli.rounds {
        let bare_setup = Arc::clone(&setup);
        let (bare, pool) = run_cycles(window, bare_pool, move |client| {
            bare_cycle(client, Arc::clone(&bare_setup))
        })
        .await?;
        bare_pool = pool;
        if bare_pool.len() != cli.jobs() {
            bail!("a bare job lost its connection");
        }
        let (through_stint, _) = run_cycles(
            window,
            vec![stint_target.clone(); cli.jobs()],
            StintTarget::cycle,
        )
        .await?;
        let without = load::measure(plain.local_addr(), Arc::clone(&plain_mint), mint_load).await?;
        let with_target =
            load::measure(idle.local_addr(), Arc::clone(&idle_mint), mint_load).await?;
        let round = Round {
            bare,
            stint: through_stint,
            mint_without_target: without,
            mint_with_idle_target: with_target,
            window: cli.duration,
        };
        println!("round {index}/{}:", cli.rounds);
        print_lines(&round.lines());
        rounds.push(round);
    }

    watcher_task.abort();
    let (checker, _) = cluster
        .connect_as("postgres", cluster.superuser_password(), DATABASE)
        .await
        .context("signing in for the final check")?;
    let leftover = wait_for_no_stint_roles(&checker).await?;
    println!(
        "roles named stint_... left at the end: {}\n",
        describe_leftovers(&leftover)
    );
    drop(bare_pool);
    stint.shutdown().await;
    plain.shutdown().await;
    idle.shutdown().await;
    let mut summary = Summary::of(&rounds);
    summary.leftover_roles = leftover.len();
    Ok(summary)
}

fn print_header(cli: &Cli, work: &Path, server_version: &str) {
    println!(
        "stint-target-bench: PostgreSQL logins through Stint vs the bare statements, on 127.0.0.1"
    );
    let cpus = machine::cpu_count().map_or_else(|| "unknown".to_owned(), |n| n.to_string());
    let model = machine::cpu_model().unwrap_or_else(|| "unknown model".to_owned());
    println!(
        "machine: {cpus} CPUs ({model}); one tokio runtime shared by the jobs and the brokers; PostgreSQL {server_version} in its own processes"
    );
    if cfg!(debug_assertions) {
        println!("WARNING: this is a debug build; the figures mean little. Use --release.");
    }
    let filesystem = machine::filesystem_type(work);
    println!(
        "broker data dirs in: {} ({})",
        work.display(),
        filesystem.as_deref().unwrap_or("file system unknown")
    );
    if filesystem
        .as_deref()
        .is_some_and(|kind| !machine::fsync_is_real(kind))
    {
        println!(
            "WARNING: the data dirs are in memory, so fsync costs nothing; use --data-in DIR on a disk."
        );
    }
    println!(
        "load: bare and stint: {} jobs, closed loop; mint: {} connections; {:.1} s warm-up + {:.1} s measured each; {} round{}",
        cli.jobs,
        cli.mint_connections,
        cli.warmup.as_secs_f64(),
        cli.duration.as_secs_f64(),
        cli.rounds,
        if cli.rounds == 1 { "" } else { "s" }
    );
}

fn print_lines(lines: &[String]) {
    for line in lines {
        println!("{line}");
    }
}

// --- PostgreSQL ---------------------------------------------------------------

/// What the bare phase needs to plan a login as Stint does.
struct BareSetup {
    target: PostgresTarget,
    granted: Vec<Scope>,
    server_version: String,
}

/// Create the database, schema and table the logins are granted.
async fn prepare_database(cluster: &PgCluster) -> Result<BareSetup> {
    let (admin, _) = cluster
        .connect_as("postgres", cluster.superuser_password(), "postgres")
        .await
        .context("signing in to the cluster as postgres")?;
    admin
        .batch_execute(&format!("CREATE DATABASE \"{DATABASE}\""))
        .await
        .context("creating the database")?;
    let server_version = admin
        .query_one("SHOW server_version", &[])
        .await
        .and_then(|row| row.try_get::<_, String>(0))
        .context("reading the server version")?;
    let (bench, _) = cluster
        .connect_as("postgres", cluster.superuser_password(), DATABASE)
        .await
        .context("signing in to the bench database")?;
    bench
        .batch_execute(
            "CREATE SCHEMA crm; CREATE TABLE crm.accounts (id bigint PRIMARY KEY, name text NOT NULL)",
        )
        .await
        .context("creating crm.accounts")?;
    let ident = |name: &str| PgIdent::parse(name).map_err(|error| anyhow::anyhow!("{}", error.0));
    let target = PostgresTarget {
        host: "127.0.0.1".to_owned(),
        port: cluster.port(),
        database: ident(DATABASE)?,
        admin_user: ident("postgres")?,
        admin_password: SecretSource::Env("UNUSED".to_owned()),
        tls: PgTlsMode::Disable,
        ca_file: None,
        connection_limit: 2,
        pool_size: 16,
        connect_timeout_secs: 5,
        statement_timeout_secs: 5,
        object_grants: true,
        roles: Vec::new(),
    };
    let granted = vec![Scope::parse(SCOPE).context("the benchmark's scope")?];
    Ok(BareSetup {
        target,
        granted,
        server_version,
    })
}

/// `count` connections to the bench database as the superuser.
async fn connect_pool(cluster: &PgCluster, count: usize) -> Result<Vec<tokio_postgres::Client>> {
    let mut pool = Vec::with_capacity(count);
    for _ in 0..count {
        let (client, _) = cluster
            .connect_as("postgres", cluster.superuser_password(), DATABASE)
            .await
            .context("opening the bare pool")?;
        pool.push(client);
    }
    Ok(pool)
}

fn random<const N: usize>() -> Result<[u8; N]> {
    let mut bytes = [0u8; N];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("the system random source failed"))?;
    Ok(bytes)
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// One bare cycle: plan and create a login as Stint does, then destroy it
/// as Stint's upstream does.
async fn bare_cycle(
    mut client: tokio_postgres::Client,
    setup: Arc<BareSetup>,
) -> (tokio_postgres::Client, Result<CycleTimes>) {
    let result = bare_cycle_on(&mut client, &setup).await;
    (client, result)
}

async fn bare_cycle_on(
    client: &mut tokio_postgres::Client,
    setup: &BareSetup,
) -> Result<CycleTimes> {
    let started = Instant::now();
    let role = planner::role_name(&random::<15>()?);
    let password = planner::password(&random::<24>()?);
    let verifier =
        planner::scram_sha256_verifier(&password, &random::<16>()?, planner::SCRAM_ITERATIONS);
    let plan = planner::plan(
        TARGET,
        &setup.target,
        &setup.granted,
        role.clone(),
        unix_now() + LOGIN_TTL_SECS,
    )
    .map_err(|error| anyhow::anyhow!("planning: {}", error.0))?;
    let statements: Vec<String> = plan
        .create_statements(&verifier, BARE_MARKER)
        .map_err(|error| anyhow::anyhow!("planning: {}", error.0))?;
    let mut conflicts = 0;
    while let Err(error) = bare_create(client, &statements).await {
        if !is_conflict(&error) || conflicts >= CONFLICT_RETRIES {
            return Err(anyhow::Error::new(error).context("creating the login"));
        }
        conflicts += 1;
    }
    let minted = Instant::now();

    while let Err(error) = bare_revoke(client, role.as_str()).await {
        if !is_conflict(&error) || conflicts >= CONFLICT_RETRIES {
            return Err(anyhow::Error::new(error).context(format!("dropping {}", role.as_str())));
        }
        conflicts += 1;
    }
    let revoked = Instant::now();
    Ok(CycleTimes {
        mint: minted - started,
        revoke: revoked - minted,
        acknowledged: None,
        conflicts,
        finished: revoked,
    })
}

/// PostgreSQL's concurrent-update failure ([`CONFLICT`]).
fn is_conflict(error: &tokio_postgres::Error) -> bool {
    error
        .as_db_error()
        .is_some_and(|db| db.message() == CONFLICT)
}

/// As stint-targets' `create`: one transaction, statement by statement
/// (rolled back when a statement fails).
async fn bare_create(
    client: &mut tokio_postgres::Client,
    statements: &[String],
) -> Result<(), tokio_postgres::Error> {
    let transaction = client.transaction().await?;
    for statement in statements {
        transaction.execute(statement.as_str(), &[]).await?;
    }
    transaction.commit().await
}

/// Stint's revocation sequence (stint-targets' `revoke_on`) for an admin
/// that has the role's privileges (a superuser), so without its `GRANT ..
/// TO CURRENT_USER` step.
async fn bare_revoke(
    client: &mut tokio_postgres::Client,
    role: &str,
) -> Result<(), tokio_postgres::Error> {
    let quoted = format!("\"{role}\"");
    let found = client
        .query_opt(
            "SELECT pg_catalog.pg_has_role(current_user, oid, 'USAGE') \
             FROM pg_catalog.pg_roles WHERE rolname = $1",
            &[&role],
        )
        .await?;
    if found.is_none() {
        // Gone already: what Stint's upstream counts as done.
        return Ok(());
    }
    client
        .batch_execute(&format!("ALTER ROLE {quoted} NOLOGIN"))
        .await?;
    // Stint lists the role's members to revoke them (there are none here).
    client
        .query(
            "SELECT m.rolname::text FROM pg_catalog.pg_auth_members a \
             JOIN pg_catalog.pg_roles r ON r.oid = a.roleid \
             JOIN pg_catalog.pg_roles m ON m.oid = a.member \
             WHERE r.rolname = $1 AND m.rolname <> current_user",
            &[&role],
        )
        .await?;
    terminate_sessions(&*client, role).await?;
    let transaction = client.transaction().await?;
    transaction
        .batch_execute(&format!("DROP OWNED BY {quoted}"))
        .await?;
    terminate_sessions(&transaction, role).await?;
    transaction
        .batch_execute(&format!("DROP ROLE IF EXISTS {quoted}"))
        .await?;
    transaction.commit().await
}

async fn terminate_sessions(
    client: &impl tokio_postgres::GenericClient,
    role: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .query_one(
            "SELECT count(*) FILTER (WHERE pg_catalog.pg_terminate_backend(pid, $2)) \
             FROM pg_catalog.pg_stat_activity \
             WHERE usename = $1 AND pid <> pg_catalog.pg_backend_pid()",
            &[&role, &TERMINATE_WAIT_MS],
        )
        .await?;
    Ok(())
}

/// The roles named `stint_...` that exist, with their comments, once none
/// is left or after [`REVOKE_BOUND`] (destructions may still be queued).
async fn wait_for_no_stint_roles(
    client: &tokio_postgres::Client,
) -> Result<Vec<(String, Option<String>)>> {
    let deadline = Instant::now() + REVOKE_BOUND;
    loop {
        let rows = client
            .query(
                "SELECT rolname::text, pg_catalog.shobj_description(oid, 'pg_authid') \
                 FROM pg_catalog.pg_roles \
                 WHERE starts_with(rolname::text, 'stint_') ORDER BY 1",
                &[],
            )
            .await
            .context("listing stint_ roles")?;
        let roles = rows
            .iter()
            .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
        if roles.is_empty() || Instant::now() >= deadline {
            return Ok(roles);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What is left, by who made it, naming a few.
fn describe_leftovers(roles: &[(String, Option<String>)]) -> String {
    if roles.is_empty() {
        return "none".to_owned();
    }
    let made_by = |marker: &str| {
        roles
            .iter()
            .filter(|(_, comment)| comment.as_deref() == Some(marker))
            .count()
    };
    let stint = made_by(ROLE_MARKER);
    let bare = made_by(BARE_MARKER);
    let names: Vec<&str> = roles
        .iter()
        .take(5)
        .map(|(name, _)| name.as_str())
        .collect();
    format!(
        "{} ({stint} made by Stint, {bare} by the bare phase, {} other), e.g. {}",
        roles.len(),
        roles.len() - stint - bare,
        names.join(", ")
    )
}

/// Watches `pg_roles` for the roles being revoked through Stint: one
/// query a millisecond for all of them, so that sixteen waiting jobs do
/// not become sixteen thousand queries a second.
struct RoleWatcher {
    waiting: Mutex<HashMap<String, oneshot::Sender<Instant>>>,
}

impl RoleWatcher {
    async fn start(cluster: &PgCluster) -> Result<(Arc<Self>, tokio::task::JoinHandle<()>)> {
        let (client, _) = cluster
            .connect_as("postgres", cluster.superuser_password(), DATABASE)
            .await
            .context("opening the role watcher's connection")?;
        let statement = client
            .prepare("SELECT rolname::text FROM pg_catalog.pg_roles WHERE rolname::text = ANY($1)")
            .await
            .context("preparing the role watcher's query")?;
        let watcher = Arc::new(Self {
            waiting: Mutex::new(HashMap::new()),
        });
        let task = tokio::spawn(Arc::clone(&watcher).run(client, statement));
        Ok((watcher, task))
    }

    /// Tell, by the instant it was seen gone, when `role` is gone.
    fn watch(&self, role: &str) -> oneshot::Receiver<Instant> {
        let (sender, receiver) = oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(role.to_owned(), sender);
        receiver
    }

    fn forget(&self, role: &str) {
        self.waiting
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(role);
    }

    async fn run(
        self: Arc<Self>,
        client: tokio_postgres::Client,
        statement: tokio_postgres::Statement,
    ) {
        let mut ticks = tokio::time::interval(POLL_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let names: Vec<String> = self
                .waiting
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .keys()
                .cloned()
                .collect();
            if names.is_empty() {
                continue;
            }
            // A failed poll is retried on the next tick; a role never seen
            // gone times its job out.
            let Ok(rows) = client.query(&statement, &[&names]).await else {
                continue;
            };
            // The answer's arrival: the role was gone by then (an
            // overestimate by up to one poll's round trip).
            let seen = Instant::now();
            let present: HashSet<String> = rows
                .iter()
                .filter_map(|row| row.try_get::<_, String>(0).ok())
                .collect();
            let mut waiting = self.waiting.lock().unwrap_or_else(PoisonError::into_inner);
            for name in names.iter().filter(|name| !present.contains(*name)) {
                if let Some(sender) = waiting.remove(name) {
                    let _ = sender.send(seen);
                }
            }
        }
    }
}

// --- brokers ------------------------------------------------------------------

/// The `[targets.bench]` section and the step that reaches it.
fn target_policy(port: u16, password_file: &Path, pool_size: u16) -> String {
    format!(
        r#"
[workflows.bench.steps.login]
scopes = ["{SCOPE}"]
targets = ["{TARGET}"]
audiences = ["{TARGET}"]
default_ttl = "5m"
max_ttl = "15m"

[targets.{TARGET}]
kind = "postgres"
host = "127.0.0.1"
port = {port}
database = "{DATABASE}"
admin_user = "postgres"
admin_password_file = "{}"
tls = "disable"
pool_size = {pool_size}
"#,
        password_file.display()
    )
}

/// The benchmark's policy: one workload, a `read` step without a target,
/// and `target` (a target and the step that reaches it) if given.
fn policy(target: Option<&str>) -> String {
    let hash = stint_core::secret::hash_hex(WORKLOAD_SECRET);
    format!(
        r#"
[workloads.{WORKLOAD}]
secret_sha256 = "{hash}"
workflows = ["bench"]

[workflows.bench]
review_by = 2099-01-01

[workflows.bench.steps.read]
scopes = ["read:demo/**"]
default_ttl = "5m"
max_ttl = "15m"
{}"#,
        target.unwrap_or_default()
    )
}

/// Start a broker with `policy`, its data in `dir`, the per-client and
/// per-source limits lifted (the benchmark is one client on one address).
async fn start_broker(dir: &Path, policy: &str) -> Result<RunningServer> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let policy_path = dir.join("policy.toml");
    std::fs::write(&policy_path, policy).context("writing the policy")?;
    let mut config = Config::dev(dir.join("data"), "127.0.0.1:0".parse()?);
    config.policy = PolicySource::File(policy_path);
    let unlimited = Rate {
        per_second: 1_000_000,
        burst: 1_000_000,
    };
    config.limits.token_rate_per_client = unlimited;
    config.limits.token_rate_per_source = unlimited;
    config.limits.max_in_flight_per_client = config.limits.max_in_flight;
    config.limits.max_unauthenticated_in_flight_per_source = config.limits.max_in_flight;
    stint_server::start(config)
        .await
        .context("starting a broker")
}

fn basic_authorization() -> String {
    format!(
        "Basic {}",
        STANDARD.encode(format!("{WORKLOAD}:{WORKLOAD_SECRET}"))
    )
}

/// The mint phases' request: the `read` step, no target involved.
fn mint_request(addr: std::net::SocketAddr) -> Result<RequestTemplate> {
    RequestTemplate::basic_form_post(
        addr,
        stint_proto::TOKEN_PATH,
        WORKLOAD,
        WORKLOAD_SECRET,
        "grant_type=client_credentials&step=read&scope=read:demo/bench&audience=bench-api",
    )
}

/// The stint phase's client side.
#[derive(Clone)]
struct StintTarget {
    http: reqwest::Client,
    issuer: String,
    watcher: Arc<RoleWatcher>,
}

impl StintTarget {
    /// One cycle: a step token, its exchange (timed), the credential's
    /// DELETE and the wait until the role is gone upstream (timed).
    async fn cycle(self) -> (Self, Result<CycleTimes>) {
        let result = self.cycle_inner().await;
        (self, result)
    }

    async fn cycle_inner(&self) -> Result<CycleTimes> {
        let token_url = format!("{}{}", self.issuer, stint_proto::TOKEN_PATH);
        let response = self
            .http
            .post(&token_url)
            .header(header::AUTHORIZATION, basic_authorization())
            .form(&[
                ("grant_type", stint_proto::GRANT_CLIENT_CREDENTIALS),
                ("step", "login"),
                ("scope", SCOPE),
                ("audience", TARGET),
            ])
            .send()
            .await
            .context("minting the step token")?;
        let step_token = ok_json(response, "minting the step token")
            .await?
            .get("access_token")
            .and_then(serde_json::Value::as_str)
            .context("the step token answer has no access_token")?
            .to_owned();

        let exchange_started = Instant::now();
        let response = self
            .http
            .post(&token_url)
            .form(&[
                ("grant_type", stint_proto::GRANT_TOKEN_EXCHANGE),
                ("subject_token", step_token.as_str()),
                ("subject_token_type", stint_proto::TOKEN_TYPE_ACCESS_TOKEN),
                ("audience", TARGET),
            ])
            .send()
            .await
            .context("the exchange")?;
        let credential: TargetCredentialResponse =
            serde_json::from_value(ok_json(response, "the exchange").await?)
                .context("the exchange's answer")?;
        let exchanged = Instant::now();
        let role = credential
            .postgres
            .as_ref()
            .map(|login| login.user.clone())
            .context("the exchange's answer has no postgres login")?;

        let gone = self.watcher.watch(&role);
        let delete_started = Instant::now();
        let deleted = self
            .http
            .delete(format!(
                "{}{}/{}",
                self.issuer,
                stint_proto::TARGET_CREDENTIALS_PATH,
                credential.credential_id
            ))
            .bearer_auth(&step_token)
            .send()
            .await;
        let acknowledged = Instant::now();
        match deleted {
            Ok(response) if response.status() == reqwest::StatusCode::NO_CONTENT => {}
            other => {
                self.watcher.forget(&role);
                // Best effort: revoking the step token destroys the login.
                let _ = self.revoke_step_token(&step_token).await;
                match other {
                    Ok(response) => bail!(
                        "DELETE of the credential answered {}: {}",
                        response.status(),
                        quoted_body(response).await
                    ),
                    Err(error) => {
                        return Err(anyhow::Error::new(error).context("DELETE of the credential"));
                    }
                }
            }
        }
        let seen_gone = match tokio::time::timeout(REVOKE_BOUND, gone).await {
            Ok(Ok(seen)) => seen,
            _ => {
                self.watcher.forget(&role);
                bail!(
                    "the role {role} was still there {} s after its DELETE",
                    REVOKE_BOUND.as_secs()
                );
            }
        };
        Ok(CycleTimes {
            mint: exchanged - exchange_started,
            revoke: seen_gone.saturating_duration_since(delete_started),
            acknowledged: Some(acknowledged - delete_started),
            conflicts: 0,
            finished: seen_gone,
        })
    }

    async fn revoke_step_token(&self, token: &str) -> Result<()> {
        self.http
            .post(format!("{}{}", self.issuer, stint_proto::REVOCATION_PATH))
            .header(header::AUTHORIZATION, basic_authorization())
            .form(&[("token", token)])
            .send()
            .await?;
        Ok(())
    }
}

/// The JSON body of a 200, or an error quoting what came instead.
async fn ok_json(response: reqwest::Response, what: &str) -> Result<serde_json::Value> {
    if response.status() != reqwest::StatusCode::OK {
        bail!(
            "{what} answered {}: {}",
            response.status(),
            quoted_body(response).await
        );
    }
    response
        .json()
        .await
        .with_context(|| format!("{what}: a body that is not JSON"))
}

async fn quoted_body(response: reqwest::Response) -> String {
    let text = response.text().await.unwrap_or_default();
    text.chars().take(200).collect()
}

// --- the closed loops -----------------------------------------------------------

/// Warm-up and measured window of one phase.
#[derive(Debug, Clone, Copy)]
struct WindowSpec {
    warmup: Duration,
    duration: Duration,
}

/// What one cycle took.
#[derive(Debug, Clone, Copy)]
struct CycleTimes {
    /// Making the login.
    mint: Duration,
    /// Until the login was gone upstream.
    revoke: Duration,
    /// Until the broker answered the DELETE (stint only).
    acknowledged: Option<Duration>,
    /// [`CONFLICT`]s retried (bare only).
    conflicts: u32,
    /// When the cycle ended.
    finished: Instant,
}

/// One phase: the cycles that completed inside its window.
#[derive(Debug, Clone)]
struct CycleReport {
    mint: Measurement,
    revoke: Measurement,
    acknowledged: Option<Measurement>,
    /// [`CONFLICT`]s retried by the cycles counted (bare).
    conflicts_retried: u64,
    /// Cycles that failed on a [`CONFLICT`] (stint: the exchange's 500),
    /// counted over warm-up and window, apart from `errors`.
    conflicts_failed: u64,
    first_error: Option<String>,
    first_conflict: Option<String>,
    cpu: Option<CpuUse>,
}

/// What one job did in one phase.
struct JobReport<S> {
    state: Option<S>,
    times: Vec<CycleTimes>,
    errors: u64,
    conflicts: u64,
    first_error: Option<String>,
    first_conflict: Option<String>,
}

/// Run one job per state, each a closed loop of `cycle` until the window
/// closes; the states come back for the next round.
async fn run_cycles<S, F, Fut>(
    window: WindowSpec,
    states: Vec<S>,
    cycle: F,
) -> Result<(CycleReport, Vec<S>)>
where
    S: Send + 'static,
    F: Fn(S) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = (S, Result<CycleTimes>)> + Send + 'static,
{
    let opens = Instant::now() + window.warmup;
    let closes = opens + window.duration;
    let give_up = closes + GRACE;
    let tasks: Vec<_> = states
        .into_iter()
        .map(|state| {
            let cycle = cycle.clone();
            tokio::spawn(async move {
                let mut state = Some(state);
                let mut times = Vec::new();
                let mut errors = 0u64;
                let mut conflicts = 0u64;
                let mut first_error = None;
                let mut first_conflict = None;
                while Instant::now() < closes {
                    let Some(current) = state.take() else { break };
                    match tokio::time::timeout_at(give_up, cycle(current)).await {
                        Ok((back, result)) => {
                            state = Some(back);
                            match result {
                                Ok(cycle_times) => {
                                    if cycle_times.finished >= opens
                                        && cycle_times.finished < closes
                                    {
                                        times.push(cycle_times);
                                    }
                                }
                                Err(error) => {
                                    let text = format!("{error:#}");
                                    if text.contains(CONFLICT) {
                                        conflicts += 1;
                                        first_conflict.get_or_insert(text);
                                    } else {
                                        errors += 1;
                                        first_error.get_or_insert(text);
                                    }
                                }
                            }
                        }
                        Err(_) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| {
                                "a cycle was still running long after the window closed".to_owned()
                            });
                        }
                    }
                }
                JobReport {
                    state,
                    times,
                    errors,
                    conflicts,
                    first_error,
                    first_conflict,
                }
            })
        })
        .collect();
    tokio::time::sleep_until(opens).await;
    let cpu_opening = CpuSample::now();
    tokio::time::sleep_until(closes).await;
    let cpu = CpuSample::now()
        .zip(cpu_opening)
        .map(|(now, then)| now.since(then));

    let mut states = Vec::new();
    let mut times = Vec::new();
    let mut errors = 0;
    let mut conflicts_failed = 0;
    let mut first_error = None;
    let mut first_conflict = None;
    for task in tasks {
        let job = task.await.context("a job's task failed")?;
        states.extend(job.state);
        times.extend(job.times);
        errors += job.errors;
        conflicts_failed += job.conflicts;
        first_error = first_error.or(job.first_error);
        first_conflict = first_conflict.or(job.first_conflict);
    }
    let conflicts_retried = times.iter().map(|t| u64::from(t.conflicts)).sum();
    let mut mint: Vec<Duration> = times.iter().map(|t| t.mint).collect();
    let mut revoke: Vec<Duration> = times.iter().map(|t| t.revoke).collect();
    let mut acknowledged: Vec<Duration> = times.iter().filter_map(|t| t.acknowledged).collect();
    Ok((
        CycleReport {
            mint: Measurement::from_latencies(&mut mint, errors, window.duration),
            revoke: Measurement::from_latencies(&mut revoke, errors, window.duration),
            acknowledged: (!acknowledged.is_empty())
                .then(|| Measurement::from_latencies(&mut acknowledged, errors, window.duration)),
            conflicts_retried,
            conflicts_failed,
            first_error,
            first_conflict,
            cpu,
        },
        states,
    ))
}

// --- the report -------------------------------------------------------------------

/// One round: every phase once.
#[derive(Debug, Clone)]
struct Round {
    bare: CycleReport,
    stint: CycleReport,
    mint_without_target: LoadReport,
    mint_with_idle_target: LoadReport,
    window: Duration,
}

/// `numerator / denominator`, or 0 when the denominator is.
fn ratio(numerator: f64, denominator: f64) -> f64 {
    if denominator > 0.0 {
        numerator / denominator
    } else {
        0.0
    }
}

impl Round {
    fn mint_ratio(&self) -> f64 {
        ratio(
            self.stint.mint.p50.as_secs_f64(),
            self.bare.mint.p50.as_secs_f64(),
        )
    }

    fn revoke_ratio(&self) -> f64 {
        ratio(
            self.stint.revoke.p50.as_secs_f64(),
            self.bare.revoke.p50.as_secs_f64(),
        )
    }

    fn throughput_ratio(&self) -> f64 {
        ratio(self.stint.mint.per_second, self.bare.mint.per_second)
    }

    fn target_mint_ratio(&self) -> f64 {
        ratio(
            self.mint_with_idle_target.measurement.per_second,
            self.mint_without_target.measurement.per_second,
        )
    }

    fn errors(&self) -> u64 {
        self.bare.mint.errors
            + self.stint.mint.errors
            + self.mint_without_target.measurement.errors
            + self.mint_with_idle_target.measurement.errors
    }

    /// The most CPUs other processes used during a mint phase (PostgreSQL
    /// is idle then; during the bare and stint phases it is the point).
    fn neighbours_cpus(&self) -> Option<f64> {
        [self.mint_without_target.cpu, self.mint_with_idle_target.cpu]
            .into_iter()
            .flatten()
            .map(|cpu| average_cpus(cpu.others_seconds, self.window))
            .reduce(f64::max)
    }

    fn lines(&self) -> Vec<String> {
        let mut lines = vec![
            format!("  bare:  {}", cycle_figures(&self.bare)),
            format!("  stint: {}", cycle_figures(&self.stint)),
        ];
        if let Some(acknowledged) = &self.stint.acknowledged {
            lines.push(format!(
                "         (DELETE answered: p50 {}  p99 {})",
                millis(acknowledged.p50),
                millis(acknowledged.p99)
            ));
        }
        lines.push(format!(
            "  bare retried {} statement sequences that hit PostgreSQL's \"{CONFLICT}\" ({:.2} a cycle)",
            self.bare.conflicts_retried,
            ratio(
                self.bare.conflicts_retried as f64,
                self.bare.mint.completed as f64
            )
        ));
        lines.push(format!(
            "  stint: {} exchange{} failed on \"{CONFLICT}\" ({:.1} % of cycles tried; Stint does not retry it)",
            self.stint.conflicts_failed,
            if self.stint.conflicts_failed == 1 { "" } else { "s" },
            self.stint.conflict_percent()
        ));
        for (name, report) in [("bare", &self.bare), ("stint", &self.stint)] {
            if let Some(cpu) = report.cpu {
                lines.push(format!(
                    "  cpu during {name}: this process {:.2} CPUs, other processes (PostgreSQL's among them) {:.2} CPUs",
                    average_cpus(cpu.process_seconds, self.window),
                    average_cpus(cpu.others_seconds, self.window)
                ));
            }
        }
        lines.push(format!(
            "  mint, no target:        {}",
            load_figures(&self.mint_without_target)
        ));
        lines.push(format!(
            "  mint, idle target too:  {}",
            load_figures(&self.mint_with_idle_target)
        ));
        for (name, error) in [
            ("bare", &self.bare.first_error),
            ("stint", &self.stint.first_error),
            ("stint conflict", &self.stint.first_conflict),
            ("mint, no target", &self.mint_without_target.first_error),
            ("mint, idle target", &self.mint_with_idle_target.first_error),
        ] {
            if let Some(error) = error {
                lines.push(format!("  first {name} error: {error}"));
            }
        }
        lines.push(format!(
            "  stint/bare: mint p50 {:.2}, revoke p50 {:.2}, cycles/s {:.2}; mint with/without target {:.3}",
            self.mint_ratio(),
            self.revoke_ratio(),
            self.throughput_ratio(),
            self.target_mint_ratio()
        ));
        lines
    }
}

impl CycleReport {
    /// Cycles that failed on a conflict, in percent of all cycles tried.
    fn conflict_percent(&self) -> f64 {
        let tried = self.mint.completed + self.mint.errors + self.conflicts_failed;
        100.0 * ratio(self.conflicts_failed as f64, tried as f64)
    }
}

fn cycle_figures(report: &CycleReport) -> String {
    format!(
        "mint p50 {}  p99 {} | revoke p50 {}  p99 {} | {:>5.0} cycles/s  ({} cycles, {} errors)",
        millis(report.mint.p50),
        millis(report.mint.p99),
        millis(report.revoke.p50),
        millis(report.revoke.p99),
        report.mint.per_second,
        report.mint.completed,
        report.mint.errors
    )
}

fn load_figures(report: &LoadReport) -> String {
    let m = &report.measurement;
    format!(
        "{:>6.0} req/s  p50 {}  p99 {}  ({} requests, {} errors)",
        m.per_second,
        millis(m.p50),
        millis(m.p99),
        m.completed,
        m.errors
    )
}

/// A latency in milliseconds, two decimals.
fn millis(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1000.0)
}

fn verdict(met: bool) -> &'static str {
    if met { "PASS" } else { "FAIL" }
}

/// Medians of one phase's figures over the rounds.
#[derive(Debug, Clone, Copy, Default)]
struct CycleMedians {
    mint_p50: Duration,
    mint_p99: Duration,
    revoke_p50: Duration,
    revoke_p99: Duration,
    per_second: f64,
}

impl CycleMedians {
    fn of<'a>(reports: impl Iterator<Item = &'a CycleReport> + Clone) -> Self {
        let durations = |pick: fn(&CycleReport) -> Duration| {
            let values: Vec<Duration> = reports.clone().map(pick).collect();
            median_duration(&values).unwrap_or_default()
        };
        let per_second: Vec<f64> = reports.clone().map(|r| r.mint.per_second).collect();
        Self {
            mint_p50: durations(|r| r.mint.p50),
            mint_p99: durations(|r| r.mint.p99),
            revoke_p50: durations(|r| r.revoke.p50),
            revoke_p99: durations(|r| r.revoke.p99),
            per_second: median(&per_second).unwrap_or_default(),
        }
    }
}

/// Medians over the rounds and the verdicts.
#[derive(Debug, Clone)]
struct Summary {
    rounds: usize,
    bare: CycleMedians,
    stint: CycleMedians,
    mint_without_target: f64,
    mint_with_idle_target: f64,
    mint_ratio: f64,
    revoke_ratio: f64,
    throughput_ratio: f64,
    target_mint_ratio: f64,
    errors: u64,
    /// Exchanges that failed on a conflict, over all rounds, and the
    /// median of the rounds' percentages.
    stint_conflicts: u64,
    stint_conflict_percent: f64,
    neighbours_cpus: Option<f64>,
    leftover_roles: usize,
}

impl Summary {
    fn of(rounds: &[Round]) -> Self {
        let ratios = |pick: fn(&Round) -> f64| {
            let values: Vec<f64> = rounds.iter().map(pick).collect();
            median(&values).unwrap_or_default()
        };
        Self {
            rounds: rounds.len(),
            bare: CycleMedians::of(rounds.iter().map(|r| &r.bare)),
            stint: CycleMedians::of(rounds.iter().map(|r| &r.stint)),
            mint_without_target: ratios(|r| r.mint_without_target.measurement.per_second),
            mint_with_idle_target: ratios(|r| r.mint_with_idle_target.measurement.per_second),
            mint_ratio: ratios(Round::mint_ratio),
            revoke_ratio: ratios(Round::revoke_ratio),
            throughput_ratio: ratios(Round::throughput_ratio),
            target_mint_ratio: ratios(Round::target_mint_ratio),
            errors: rounds.iter().map(Round::errors).sum(),
            stint_conflicts: rounds.iter().map(|r| r.stint.conflicts_failed).sum(),
            stint_conflict_percent: ratios(|r| r.stint.conflict_percent()),
            neighbours_cpus: rounds
                .iter()
                .filter_map(Round::neighbours_cpus)
                .reduce(f64::max),
            leftover_roles: 0,
        }
    }

    fn mint_met(&self) -> bool {
        self.mint_ratio > 0.0 && self.mint_ratio < TARGET_FACTOR
    }

    fn revoke_met(&self) -> bool {
        self.revoke_ratio > 0.0 && self.revoke_ratio < TARGET_FACTOR
    }

    fn throughput_met(&self) -> bool {
        self.throughput_ratio > 1.0 / TARGET_FACTOR
    }

    fn idle_target_met(&self) -> bool {
        (self.target_mint_ratio - 1.0).abs() <= TARGET_MINT_DRIFT
    }

    fn passes(&self) -> bool {
        self.mint_met()
            && self.revoke_met()
            && self.throughput_met()
            && self.idle_target_met()
            && self.errors == 0
            && self.stint_conflicts == 0
            && self.leftover_roles == 0
    }

    fn lines(&self) -> Vec<String> {
        let phase = |m: &CycleMedians| {
            format!(
                "mint p50 {}  p99 {} | revoke p50 {}  p99 {} | {:>5.0} cycles/s",
                millis(m.mint_p50),
                millis(m.mint_p99),
                millis(m.revoke_p50),
                millis(m.revoke_p99),
                m.per_second
            )
        };
        let mut lines = vec![
            format!(
                "median of {} round{}:",
                self.rounds,
                if self.rounds == 1 { "" } else { "s" }
            ),
            format!(
                "bare statements (tokio-postgres, superuser): {}",
                phase(&self.bare)
            ),
            format!(
                "through Stint (exchange; DELETE to gone):    {}",
                phase(&self.stint)
            ),
            format!(
                "TARGET: Stint adds under {TARGET_FACTOR}x over the bare statements (median of the rounds' ratios):"
            ),
            format!(
                "  mint p50   stint/bare {:.2}   (target < {TARGET_FACTOR:.1}: {})",
                self.mint_ratio,
                verdict(self.mint_met())
            ),
            format!(
                "  revoke p50 stint/bare {:.2}   (target < {TARGET_FACTOR:.1}: {})",
                self.revoke_ratio,
                verdict(self.revoke_met())
            ),
            format!(
                "  cycles/s   stint/bare {:.2}   (target > {:.2}: {})",
                self.throughput_ratio,
                1.0 / TARGET_FACTOR,
                verdict(self.throughput_met())
            ),
            format!(
                "mint (client_credentials): no target {:.0} req/s, idle declared target {:.0} req/s",
                self.mint_without_target, self.mint_with_idle_target
            ),
            format!(
                "TARGET: unchanged by an idle target: with/without {:.3}   (target within ±{:.0} %: {}; noisy on a shared 2-core machine)",
                self.target_mint_ratio,
                TARGET_MINT_DRIFT * 100.0,
                verdict(self.idle_target_met())
            ),
        ];
        lines.push(if self.errors == 0 {
            "errors: 0".to_owned()
        } else {
            format!(
                "errors: {} over all rounds: these figures are NOT a valid measurement",
                self.errors
            )
        });
        lines.push(format!(
            "stint exchanges failed on PostgreSQL's \"{CONFLICT}\": {} over all rounds (median {:.1} % of cycles tried; {})",
            self.stint_conflicts,
            self.stint_conflict_percent,
            verdict(self.stint_conflicts == 0)
        ));
        lines.push(format!(
            "stint_ roles left upstream: {} ({})",
            self.leftover_roles,
            verdict(self.leftover_roles == 0)
        ));
        if let Some(cpus) = self.neighbours_cpus {
            lines.push(format!(
                "other processes used at most {cpus:.2} CPUs during a mint measurement{}",
                if cpus > 0.2 {
                    ": the figures are noisy"
                } else {
                    ""
                }
            ));
        }
        lines
    }
}
