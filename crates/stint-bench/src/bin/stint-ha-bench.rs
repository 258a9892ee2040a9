//! `stint-ha-bench`: Stint with three `stintd` replicas on one PostgreSQL
//! store, as it runs behind a load balancer.
//!
//! It starts a throwaway PostgreSQL 15 cluster (the test harness's
//! [`PgCluster`]: `initdb` and `pg_ctl` on a free loopback port, fsync on),
//! a store database and role for it, and three real `stintd` processes
//! (replicas A, B and C) on fixed loopback ports, each with its own data
//! directory (its audit log), all with the same `--store`, key-encryption
//! key, policy and `--issuer` (the address of a load balancer that is not
//! there: the benchmark talks to each replica directly). The token rate
//! limits are lifted, as `stint-bench` lifts them; everything else is
//! stintd's default. In every run, one after the other:
//!
//! - **propagation across replicas**: `--revocations` (1000) tokens minted
//!   on A; an SSE client subscribed to C's revocation feed
//!   (`REVOCATION_STREAM_PATH`, as the resource server `demo-api`); each
//!   token revoked on B (`POST /oauth2/revoke`), one every
//!   `--revocation-interval-ms` (5). The latency is from the moment B's 200
//!   has arrived here to the moment C's event for that `jti` has (one
//!   monotonic clock, one process); an event that arrives first counts as
//!   0 and is counted. p50 and p99 are nearest-rank percentiles over the
//!   run; target p99 < 100 ms.
//! - **mint on PostgreSQL**: `client_credentials` mint throughput and p99
//!   against replica A (a separate process) with `--connections` (64)
//!   keep-alive connections in a closed loop, `--warmup` then `--duration`
//!   seconds, against the bare signing floor of `stint-bench` (in this
//!   process) measured just before it under the same load (the same load
//!   generator, `load.rs`, and floor, `floor.rs`). Targets: mint/floor at
//!   least 0.4, p99 under 10 ms. A mint does not wait for PostgreSQL: the
//!   token's status-list entry is written to the store in the background,
//!   and only the start of a new status list (a few per hour) is a store
//!   write on the request's path.
//! - **failover**: a verifier's feed client on A has seen one revocation;
//!   A gets `kill -9`, and right after, a token is revoked on C. Measured:
//!   from the kill until the client, having seen its stream end and
//!   reconnected to B with `Last-Event-ID`, receives that revocation (it
//!   must be the next sequence number: no gap, no repeat, no resync). No
//!   target. A is restarted after.
//! - **PostgreSQL restart**: PostgreSQL stopped (`pg_ctl stop -m fast`);
//!   once every replica's `/readyz` says 503 (it checks the store itself,
//!   so from the first probe after the stop, well before the 10 s
//!   fail-closed bound of minting), started again; measured: from `pg_ctl
//!   start` returning (the server accepts connections) until every
//!   replica's `/readyz` is 200 again. No target. The next run begins 2 s
//!   later, once the replicas' notification sessions are back (until then
//!   changes reach a replica by its 250 ms poll).
//!
//! Then, once, the **set test** (`--set-test` seconds, 30; 0 skips it):
//! four workers mint on random replicas and revoke through random replicas
//! (the token, or now and then its whole job, after a second token of the
//! job is minted on another replica), while a chaos task `kill -9`s a
//! random replica every 0.3 to 1.5 s and restarts it later, never more
//! than two down at once. Every revocation answered 200 is recorded. At
//! the end, with all three replicas up and ready (and at least 1 s after
//! the last acknowledgement), every token of every acknowledged revocation
//! must be inactive at introspection on every replica, and a tenth of the
//! minted tokens, never revoked (the controls), active on every replica.
//! Any violation exits non-zero.
//!
//! After `--runs` runs (3) it prints the median of each figure over the
//! runs next to its target and whether it is met; `--check` exits 1 on a
//! missed target.
//!
//! ```text
//! cargo build --release -p stintd -p stint-bench
//! cargo run --release -p stint-bench --bin stint-ha-bench -- --runs 3
//! cargo run --release -p stint-bench --bin stint-ha-bench -- --runs 1 --set-test 10 --duration 2
//! ```
//!
//! `stintd` is `$STINTD_BIN`, or `--stintd`, or beside this executable.
//! It runs as root too (the cluster then runs as the `postgres` user); it
//! needs the PostgreSQL 15 server binaries (`apt-get install -y
//! postgresql-15`, or `PG_BIN`). Everything is on 127.0.0.1.

// Shared with `stint-bench` (src/main.rs); not every item is used here.
#[allow(dead_code)]
#[path = "../floor.rs"]
mod floor;
#[allow(dead_code)]
#[path = "../load.rs"]
mod load;
#[allow(dead_code)]
#[path = "../machine.rs"]
mod machine;
#[allow(dead_code)]
#[path = "../stats.rs"]
mod stats;

use crate::floor::FloorServer;
use crate::load::{Load, LoadReport, RequestTemplate};
use crate::stats::{median, percentile};
use anyhow::{Context as _, Result, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use clap::Parser;
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use ring::rand::{SecureRandom as _, SystemRandom};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use stint_proto::{
    INTROSPECTION_PATH, REVOCATION_PATH, REVOCATION_STREAM_PATH, RevocationEvent, TOKEN_PATH,
};
use stint_tests::Daemon;
use stint_tests::postgres::PgCluster;
use stint_tests::sse::{SseEvent, SseStream};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Target: p99 propagation from one replica's 200 to another's feed.
const TARGET_PROPAGATION_P99: Duration = Duration::from_millis(100);
/// How long the replicas are left after PostgreSQL's restart before the
/// next run.
const SETTLE_AFTER_RESTART: Duration = Duration::from_secs(2);
/// Target: mint throughput over the floor's.
const TARGET_MINT_RATIO: f64 = 0.4;
/// Target: mint p99.
const TARGET_MINT_P99: Duration = Duration::from_millis(10);
/// The replicas behind the (imagined) load balancer.
const REPLICAS: usize = 3;
const NAMES: [&str; REPLICAS] = ["A", "B", "C"];
/// The store's database and role.
const STORE_DATABASE: &str = "stint";
const STORE_ROLE: &str = "stint_ha";
/// The workload that mints and revokes, and the resource server that
/// follows the feed and introspects (both in `stint_tests::policy_with`).
const WORKLOAD: &str = "demo-job";
const RESOURCE_SERVER: &str = "demo-api";
const AUDIENCE: &str = "demo-api";
/// How long one event, request or state change may take before the
/// benchmark gives up on it.
const WAIT: Duration = Duration::from_secs(10);
/// How long a replica (or all of them) may take to be ready.
const READY_BOUND: Duration = Duration::from_secs(60);
/// How often readiness is polled.
const READY_POLL: Duration = Duration::from_millis(10);
/// The set test checks no earlier than this after the last acknowledgement
/// (ten times the propagation target; four times the 250 ms poll fallback).
const SETTLE: Duration = Duration::from_secs(1);
/// Violators of the set test are looked at again this much later, to tell
/// a late revocation from a lost one.
const RECHECK_AFTER: Duration = Duration::from_secs(5);
/// Workers of the set test.
const SET_WORKERS: usize = 4;

/// Three stintd replicas on one PostgreSQL: propagation, mint, failover,
/// and a set test under kill -9.
#[derive(Debug, Parser)]
#[command(name = "stint-ha-bench", about, long_about = None)]
struct Cli {
    /// Runs; the report gives the medians.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    runs: u32,

    /// Revocations timed per run for the propagation figure.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    revocations: u32,

    /// Milliseconds between two revocations of the propagation figure.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=1000))]
    revocation_interval_ms: u64,

    /// Concurrent keep-alive connections for the mint figure.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=512))]
    connections: u16,

    /// Seconds of unrecorded warm-up before each mint measurement.
    #[arg(long, default_value = "2", value_parser = load::parse_seconds)]
    warmup: Duration,

    /// Seconds each mint measurement records.
    #[arg(long, default_value = "5", value_parser = load::parse_positive_seconds)]
    duration: Duration,

    /// Seconds of the set test (random mints, revocations and kill -9s);
    /// 0 skips it.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(0..=600))]
    set_test: u64,

    /// Exit 1 if a median misses its target or a measurement failed.
    #[arg(long)]
    check: bool,

    /// The stintd binary [default: $STINTD_BIN, else beside this executable].
    #[arg(long, value_name = "PATH")]
    stintd: Option<PathBuf>,
}

/// The allocator `stintd` ships with, under the floor too, as in
/// `stint-bench`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<ExitCode> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let outcome = runtime.block_on(benchmark(&cli));
    runtime.shutdown_timeout(Duration::from_secs(5));
    outcome
}

async fn benchmark(cli: &Cli) -> Result<ExitCode> {
    let stintd = stintd_binary(cli)?;
    print_header(cli, &stintd);
    let cluster = Arc::new(Cluster::start(stintd).await?);
    let api = Api::new()?;
    for index in 0..REPLICAS {
        cluster.launch(index).await?;
    }
    api.wait_all_ready(&cluster).await?;
    println!(
        "PostgreSQL on 127.0.0.1:{}; replicas A {}, B {}, C {}; issuer {}\n",
        cluster.pg_port, cluster.listens[0], cluster.listens[1], cluster.listens[2], cluster.issuer
    );
    let floor = FloorServer::start().await?;

    let mut runs = Vec::new();
    for run in 1..=cli.runs {
        println!("run {run}/{}:", cli.runs);
        let result = one_run(cli, &cluster, &api, &floor, run).await?;
        for line in result.lines() {
            println!("  {line}");
        }
        runs.push(result);
    }
    floor.shutdown();
    let summary = Summary::of(&runs);
    println!();
    for line in summary.lines(cli) {
        println!("{line}");
    }

    let set_outcome = if cli.set_test > 0 {
        println!();
        let outcome = set_test(&cluster, Duration::from_secs(cli.set_test)).await?;
        for line in outcome.lines() {
            println!("{line}");
        }
        Some(outcome)
    } else {
        None
    };
    cluster.stop_all();
    if set_outcome.as_ref().is_some_and(|o| !o.passes()) {
        println!("set test: FAILED (an acknowledged revocation was not in force everywhere)");
        return Ok(ExitCode::FAILURE);
    }
    if cli.check && !summary.passes() {
        println!("--check: FAILED (a target was missed or a measurement failed)");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn stintd_binary(cli: &Cli) -> Result<PathBuf> {
    let path = match (&cli.stintd, std::env::var_os("STINTD_BIN")) {
        (Some(path), _) => path.clone(),
        (None, Some(path)) => PathBuf::from(path),
        (None, None) => std::env::current_exe()?
            .parent()
            .context("this executable has no directory")?
            .join("stintd"),
    };
    if !path.is_file() {
        bail!(
            "{} not found: build it (cargo build --release -p stintd) or give --stintd",
            path.display()
        );
    }
    Ok(path)
}

fn print_header(cli: &Cli, stintd: &Path) {
    println!("stint-ha-bench: three stintd replicas on one PostgreSQL, HTTP/1.1 on 127.0.0.1");
    let cpus = machine::cpu_count().map_or_else(|| "unknown".to_owned(), |n| n.to_string());
    let model = machine::cpu_model().unwrap_or_else(|| "unknown model".to_owned());
    println!(
        "machine: {cpus} CPUs ({model}); PostgreSQL, the replicas and this process share them"
    );
    if cfg!(debug_assertions) {
        println!("WARNING: this is a debug build of the benchmark; use --release.");
    }
    println!("stintd: {}", stintd.display());
    println!(
        "per run: {} revocations B -> C, one every {} ms; mint: {} connections, {:.1} s warm-up + {:.1} s; failover; PostgreSQL restart. {} run{}; set test {} s",
        cli.revocations,
        cli.revocation_interval_ms,
        cli.connections,
        cli.warmup.as_secs_f64(),
        cli.duration.as_secs_f64(),
        cli.runs,
        if cli.runs == 1 { "" } else { "s" },
        cli.set_test
    );
}

// --- the cluster ------------------------------------------------------------

/// PostgreSQL and the three replicas.
struct Cluster {
    pg: Mutex<PgCluster>,
    pg_port: u16,
    /// Policy, password, key-encryption key, the replicas' data dirs.
    dir: tempfile::TempDir,
    stintd: PathBuf,
    store_url: String,
    issuer: String,
    listens: [SocketAddr; REPLICAS],
    replicas: Mutex<[Option<Daemon>; REPLICAS]>,
}

impl Cluster {
    async fn start(stintd: PathBuf) -> Result<Self> {
        let pg = blocking("starting PostgreSQL", PgCluster::start)?;
        let password = random_hex(16)?;
        pg.create_store_database(STORE_DATABASE, STORE_ROLE, &password)
            .await;
        let dir = tempfile::Builder::new().prefix("stint-ha-").tempdir()?;
        std::fs::write(dir.path().join("policy.toml"), stint_tests::policy_with(""))?;
        std::fs::write(dir.path().join("store.password"), format!("{password}\n"))?;
        let mut kek = [0u8; 32];
        SystemRandom::new()
            .fill(&mut kek)
            .map_err(|_| anyhow!("no randomness"))?;
        std::fs::write(dir.path().join("kek"), kek)?;
        for path in ["store.password", "kek"] {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(
                dir.path().join(path),
                std::fs::Permissions::from_mode(0o600),
            )?;
        }
        let pg_port = pg.port();
        let store_url =
            format!("postgres://{STORE_ROLE}@127.0.0.1:{pg_port}/{STORE_DATABASE}?sslmode=disable");
        // Nothing listens there: the issuer is the load balancer's name.
        let issuer = format!("http://{}", stint_tests::unused_loopback_addr());
        let listens = [(); REPLICAS].map(|()| stint_tests::unused_loopback_addr());
        Ok(Self {
            pg: Mutex::new(pg),
            pg_port,
            dir,
            stintd,
            store_url,
            issuer,
            listens,
            replicas: Mutex::new([None, None, None]),
        })
    }

    /// Start replica `index` (on its own port and data directory) and wait
    /// for its banner.
    async fn launch(&self, index: usize) -> Result<()> {
        let data = self.dir.path().join(format!("replica-{}", NAMES[index]));
        let mut command = Command::new(&self.stintd);
        command
            .arg("--dev")
            .arg("--listen")
            .arg(self.listens[index].to_string())
            .args(["--issuer", &self.issuer, "--store", &self.store_url])
            .arg("--data-dir")
            .arg(&data)
            .arg("--policy")
            .arg(self.dir.path().join("policy.toml"))
            .args(["--token-rate-per-client", "1000000"])
            .args(["--token-burst-per-client", "1000000"])
            .args(["--token-rate-per-source", "1000000"])
            .args(["--token-burst-per-source", "1000000"])
            .args(["--max-in-flight-per-client", "1024"])
            .args(["--log", "warn"])
            .env(
                "STINTD_STORE_PASSWORD_FILE",
                self.dir.path().join("store.password"),
            )
            .env(
                "STINTD_KEY_ENCRYPTION_KEY_FILE",
                self.dir.path().join("kek"),
            )
            .env_remove("STINTD_STORE_PASSWORD")
            .env_remove("STINTD_DEV")
            .env_remove("STINTD_STORE");
        let daemon = blocking(&format!("starting replica {}", NAMES[index]), move || {
            Daemon::start_command(&mut command)
        })?;
        let mut replicas = self.replicas.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(old) = replicas[index].replace(daemon) {
            // Not expected: the caller launches a replica that is down.
            old.kill9();
        }
        Ok(())
    }

    /// `kill -9` replica `index` and wait for it to be gone; false if it
    /// was not running.
    fn kill9(&self, index: usize) -> bool {
        let daemon = self.replicas.lock().unwrap_or_else(PoisonError::into_inner)[index].take();
        daemon.map(Daemon::kill9).is_some()
    }

    fn is_up(&self, index: usize) -> bool {
        self.replicas.lock().unwrap_or_else(PoisonError::into_inner)[index].is_some()
    }

    fn up_count(&self) -> usize {
        (0..REPLICAS).filter(|&i| self.is_up(i)).count()
    }

    fn stop_postgres(&self) -> Result<()> {
        let mut pg = self.pg.lock().unwrap_or_else(PoisonError::into_inner);
        blocking("stopping PostgreSQL", || pg.stop())
    }

    fn start_postgres(&self) -> Result<()> {
        let mut pg = self.pg.lock().unwrap_or_else(PoisonError::into_inner);
        blocking("starting PostgreSQL again", || pg.start_again())
    }

    fn stop_all(&self) {
        for index in 0..REPLICAS {
            self.kill9(index);
        }
    }
}

/// Run blocking (and possibly panicking: the harness asserts) code off the
/// runtime's reactor, a panic turned into an error.
fn blocking<T>(what: &str, f: impl FnOnce() -> T) -> Result<T> {
    tokio::task::block_in_place(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)))
        .map_err(|panic| {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            anyhow!("{what} failed: {message}")
        })
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buffer = vec![0u8; bytes];
    SystemRandom::new()
        .fill(&mut buffer)
        .map_err(|_| anyhow!("no randomness"))?;
    Ok(buffer.iter().map(|b| format!("{b:02x}")).collect())
}

/// A random number below `n` (n > 0).
fn random_below(n: usize) -> usize {
    let mut bytes = [0u8; 8];
    // Without randomness the pick is 0: still a valid choice.
    let _ = SystemRandom::new().fill(&mut bytes);
    (u64::from_le_bytes(bytes) % n.max(1) as u64) as usize
}

// --- the HTTP side ----------------------------------------------------------

/// The clients of the replicas: the workload, the resource server, and the
/// feed.
struct Api {
    /// Ordinary requests, each bounded by [`WAIT`].
    http: reqwest::Client,
    /// Feed streams: no overall timeout (a stream lasts).
    feed: reqwest::Client,
    workload_secret: String,
    resource_secret: String,
}

impl Api {
    fn new() -> Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(WAIT)
                .connect_timeout(Duration::from_secs(2))
                .build()?,
            feed: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(2))
                .build()?,
            workload_secret: stint_tests::test_secret(WORKLOAD),
            resource_secret: stint_tests::test_secret(RESOURCE_SERVER),
        })
    }

    /// Mint a token for `job` on `addr`.
    async fn mint(&self, addr: SocketAddr, job: &str) -> Result<String> {
        let response = self
            .http
            .post(format!("http://{addr}{TOKEN_PATH}"))
            .basic_auth(WORKLOAD, Some(&self.workload_secret))
            .form(&[
                ("grant_type", "client_credentials"),
                ("step", "read"),
                ("scope", "read:demo/ha"),
                ("audience", AUDIENCE),
                ("job", job),
            ])
            .send()
            .await?;
        let status = response.status();
        let body: serde_json::Value = serde_json::from_slice(&response.bytes().await?)
            .with_context(|| format!("mint on {addr} answered {status} without JSON"))?;
        match body["access_token"].as_str() {
            Some(token) if status == StatusCode::OK => Ok(token.to_owned()),
            _ => bail!("mint on {addr} answered {status}: {body}"),
        }
    }

    /// `POST /oauth2/revoke` for `token` on `addr`: its status.
    async fn revoke_token(&self, addr: SocketAddr, token: &str) -> Result<StatusCode> {
        let response = self
            .http
            .post(format!("http://{addr}{REVOCATION_PATH}"))
            .basic_auth(WORKLOAD, Some(&self.workload_secret))
            .form(&[("token", token)])
            .send()
            .await?;
        let status = response.status();
        response.bytes().await?;
        Ok(status)
    }

    /// `POST /v1/jobs/{job}/revoke` on `addr`: its status.
    async fn revoke_job(&self, addr: SocketAddr, job: &str) -> Result<StatusCode> {
        let response = self
            .http
            .post(format!("http://{addr}/v1/jobs/{job}/revoke"))
            .basic_auth(WORKLOAD, Some(&self.workload_secret))
            .send()
            .await?;
        let status = response.status();
        response.bytes().await?;
        Ok(status)
    }

    /// Whether `addr` says `token` is active.
    async fn active(&self, addr: SocketAddr, token: &str) -> Result<bool> {
        let response = self
            .http
            .post(format!("http://{addr}{INTROSPECTION_PATH}"))
            .basic_auth(RESOURCE_SERVER, Some(&self.resource_secret))
            .form(&[("token", token)])
            .send()
            .await?;
        let status = response.status();
        let body: serde_json::Value = serde_json::from_slice(&response.bytes().await?)?;
        if status != StatusCode::OK {
            bail!("introspection on {addr} answered {status}: {body}");
        }
        body["active"]
            .as_bool()
            .with_context(|| format!("introspection on {addr} without `active`: {body}"))
    }

    /// `GET /readyz` on `addr`: its status, `None` if it did not answer.
    async fn readyz(&self, addr: SocketAddr) -> Option<StatusCode> {
        let response = self
            .http
            .get(format!("http://{addr}/readyz"))
            .timeout(Duration::from_secs(1))
            .send()
            .await
            .ok()?;
        Some(response.status())
    }

    /// Poll until `addr`'s `/readyz` is `want`, at most `bound`.
    async fn wait_readyz(&self, addr: SocketAddr, want: StatusCode, bound: Duration) -> Result<()> {
        let deadline = Instant::now() + bound;
        while self.readyz(addr).await != Some(want) {
            if Instant::now() > deadline {
                bail!("{addr}/readyz did not answer {want} within {bound:?}");
            }
            tokio::time::sleep(READY_POLL).await;
        }
        Ok(())
    }

    async fn wait_all_ready(&self, cluster: &Cluster) -> Result<()> {
        for addr in cluster.listens {
            self.wait_readyz(addr, StatusCode::OK, READY_BOUND).await?;
        }
        Ok(())
    }

    /// Subscribe to `addr`'s revocation feed (resuming after
    /// `last_event_id`) and read up to its `ready` event.
    async fn open_feed(&self, addr: SocketAddr, last_event_id: Option<&str>) -> Result<Feed> {
        let mut request = self
            .feed
            .get(format!("http://{addr}{REVOCATION_STREAM_PATH}"))
            .basic_auth(RESOURCE_SERVER, Some(&self.resource_secret))
            .header(header::ACCEPT, "text/event-stream");
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await?;
        if response.status() != StatusCode::OK {
            bail!("the feed on {addr} answered {}", response.status());
        }
        let mut feed = Feed(SseStream::new(response));
        match feed.next_event(Instant::now() + WAIT).await? {
            Some(event) if event.event == "ready" => Ok(feed),
            other => bail!("the feed on {addr} began with {other:?}, not ready"),
        }
    }

    /// The mint request for the load generator, addressed to `addr`.
    fn mint_template(&self, addr: SocketAddr) -> Result<RequestTemplate> {
        let credentials = format!("{WORKLOAD}:{}", self.workload_secret);
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_str(&format!("Basic {}", STANDARD.encode(credentials)))?,
        );
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-www-form-urlencoded"),
        );
        let body = format!(
            "grant_type=client_credentials&step=read&scope=read:demo/bench&audience={AUDIENCE}"
        );
        RequestTemplate::new(Method::POST, addr, TOKEN_PATH, headers, Bytes::from(body))
    }
}

/// A revocation feed stream.
struct Feed(SseStream);

impl Feed {
    /// The next event that is not a comment, `None` when the stream ended
    /// (closed or broken), an error past `deadline`.
    async fn next_event(&mut self, deadline: Instant) -> Result<Option<SseEvent>> {
        loop {
            // The harness's reader panics after its own timeout; this one
            // is never reached, the deadline here comes first.
            let next = tokio::time::timeout_at(deadline, self.0.next(Duration::from_secs(86_400)))
                .await
                .context("no feed event before the deadline")?;
            match next {
                Some(event) if event.event == ":" => {}
                other => return Ok(other),
            }
        }
    }
}

/// The revocation in a feed event, if it is one.
fn revocation_of(event: &SseEvent) -> Result<Option<RevocationEvent>> {
    match event.event.as_str() {
        "revocation" => Ok(Some(serde_json::from_str(&event.data)?)),
        "resync" => bail!("the feed asked for a resync: {}", event.data),
        _ => Ok(None),
    }
}

/// A token's `jti`, from its payload.
fn jti_of(token: &str) -> Result<String> {
    let payload = token.split('.').nth(1).context("not a JWT")?;
    let claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload)?)?;
    claims["jti"]
        .as_str()
        .map(str::to_owned)
        .context("a token without jti")
}

// --- one run ----------------------------------------------------------------

struct RunResult {
    propagation: Propagation,
    floor: LoadReport,
    mint: LoadReport,
    failover: Failover,
    pg_restart: PgRestart,
}

impl RunResult {
    fn lines(&self) -> Vec<String> {
        let p = &self.propagation;
        let (floor, mint) = (&self.floor.measurement, &self.mint.measurement);
        let mut lines = vec![
            format!(
                "propagation B -> C: {} revocations, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} seen at C before B's 200 arrived)",
                p.count,
                ms(p.p50),
                ms(p.p99),
                ms(p.max),
                p.before_ack
            ),
            format!(
                "floor {:.0}/s (p99 {:.2} ms, {} errors); mint on A {:.0}/s (p50 {:.2} ms, p99 {:.2} ms, {} errors); ratio {:.3}",
                floor.per_second,
                ms(floor.p99),
                floor.errors,
                mint.per_second,
                ms(mint.p50),
                ms(mint.p99),
                mint.errors,
                self.ratio()
            ),
        ];
        if let Some(error) = self
            .mint
            .first_error
            .as_ref()
            .or(self.floor.first_error.as_ref())
        {
            lines.push(format!("first load error: {error}"));
        }
        let f = &self.failover;
        lines.push(format!(
            "failover: kill -9 A -> stream end seen {:.2} ms, resumed on B (ready) {:.2} ms, next revocation (revoked on C, 200 at {:.2} ms) received {:.2} ms; seq {} after {}",
            ms(f.stream_end),
            ms(f.resumed),
            ms(f.revoke_acked),
            ms(f.received),
            f.seq,
            f.last_seq
        ));
        let r = &self.pg_restart;
        lines.push(format!(
            "PostgreSQL restart: all replicas 503 {:.2} s after the stop; pg_ctl start took {:.2} s; all /readyz 200 {:.1} ms after it returned (A {:.1}, B {:.1}, C {:.1} ms)",
            r.fail_closed.as_secs_f64(),
            r.pg_start.as_secs_f64(),
            ms(r.all_ready),
            ms(r.each_ready[0]),
            ms(r.each_ready[1]),
            ms(r.each_ready[2])
        ));
        lines
    }

    fn ratio(&self) -> f64 {
        let floor = self.floor.measurement.per_second;
        if floor > 0.0 {
            self.mint.measurement.per_second / floor
        } else {
            0.0
        }
    }

    fn errors(&self) -> u64 {
        self.floor.measurement.errors + self.mint.measurement.errors
    }
}

async fn one_run(
    cli: &Cli,
    cluster: &Cluster,
    api: &Api,
    floor: &FloorServer,
    run: u32,
) -> Result<RunResult> {
    let propagation = propagation(cli, cluster, api, run)
        .await
        .context("propagation")?;
    let load = Load {
        connections: usize::from(cli.connections),
        warmup: cli.warmup,
        duration: cli.duration,
    };
    let floor_report = load::measure(
        floor.local_addr(),
        Arc::new(api.mint_template(floor.local_addr())?),
        load,
    )
    .await?;
    let a = cluster.listens[0];
    let mint_report = load::measure(a, Arc::new(api.mint_template(a)?), load).await?;
    let failover = failover(cluster, api, run).await.context("failover")?;
    let pg_restart = pg_restart(cluster, api)
        .await
        .context("PostgreSQL restart")?;
    // The replicas' notification sessions open again within a second or so
    // of the server's return (a backoff from 50 ms); until then changes
    // reach them by the 250 ms poll. The next run's propagation is measured
    // once they are back, not during that window.
    tokio::time::sleep(SETTLE_AFTER_RESTART).await;
    Ok(RunResult {
        propagation,
        floor: floor_report,
        mint: mint_report,
        failover,
        pg_restart,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// --- propagation ------------------------------------------------------------

struct Propagation {
    count: usize,
    p50: Duration,
    p99: Duration,
    max: Duration,
    before_ack: usize,
}

async fn propagation(cli: &Cli, cluster: &Cluster, api: &Api, run: u32) -> Result<Propagation> {
    let [a, b, c] = cluster.listens;
    let job = format!("ha-propagation-{run}");
    let mut tokens = Vec::with_capacity(cli.revocations as usize);
    for _ in 0..cli.revocations {
        let token = api.mint(a, &job).await?;
        let jti = jti_of(&token)?;
        tokens.push((token, jti));
    }
    let mut feed = api.open_feed(c, None).await?;
    let (seen_tx, mut seen) = mpsc::unbounded_channel::<Result<(String, Instant)>>();
    let reader = tokio::spawn(async move {
        loop {
            let far = Instant::now() + Duration::from_secs(3600);
            let event = match feed.next_event(far).await {
                Ok(Some(event)) => event,
                Ok(None) => {
                    let _ = seen_tx.send(Err(anyhow!("C's feed stream ended")));
                    return;
                }
                Err(error) => {
                    let _ = seen_tx.send(Err(error));
                    return;
                }
            };
            let at = Instant::now();
            match revocation_of(&event) {
                Ok(Some(revocation)) => {
                    if let Some(jti) = revocation.jti
                        && seen_tx.send(Ok((jti, at))).is_err()
                    {
                        return;
                    }
                }
                Ok(None) => {}
                Err(error) => {
                    let _ = seen_tx.send(Err(error));
                    return;
                }
            }
        }
    });

    let mut acked: HashMap<String, Instant> = HashMap::with_capacity(tokens.len());
    let mut arrived: HashMap<String, Instant> = HashMap::with_capacity(tokens.len());
    let mut pace = tokio::time::interval(Duration::from_millis(cli.revocation_interval_ms.max(1)));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for (token, jti) in &tokens {
        if cli.revocation_interval_ms > 0 {
            pace.tick().await;
        }
        let status = api.revoke_token(b, token).await?;
        let at = Instant::now();
        if status != StatusCode::OK {
            bail!("revocation on B answered {status}");
        }
        acked.insert(jti.clone(), at);
        while let Ok(item) = seen.try_recv() {
            let (jti, at) = item?;
            arrived.insert(jti, at);
        }
    }
    let deadline = Instant::now() + WAIT;
    while acked.keys().any(|jti| !arrived.contains_key(jti)) {
        let item = tokio::time::timeout_at(deadline, seen.recv())
            .await
            .map_err(|_| {
                anyhow!(
                    "{} of {} revocations never reached C's feed within {WAIT:?}",
                    acked.keys().filter(|j| !arrived.contains_key(*j)).count(),
                    acked.len()
                )
            })?
            .context("C's feed reader stopped")?;
        let (jti, at) = item?;
        arrived.insert(jti, at);
    }
    reader.abort();
    let mut before_ack = 0;
    let mut latencies: Vec<Duration> = acked
        .iter()
        .map(|(jti, acked_at)| {
            let seen_at = arrived.get(jti).copied().unwrap_or(*acked_at);
            if seen_at < *acked_at {
                before_ack += 1;
            }
            seen_at.saturating_duration_since(*acked_at)
        })
        .collect();
    latencies.sort_unstable();
    Ok(Propagation {
        count: latencies.len(),
        p50: percentile(&latencies, 50).unwrap_or_default(),
        p99: percentile(&latencies, 99).unwrap_or_default(),
        max: latencies.last().copied().unwrap_or_default(),
        before_ack,
    })
}

// --- failover ---------------------------------------------------------------

struct Failover {
    /// Kill to the client seeing its stream end.
    stream_end: Duration,
    /// Kill to the `ready` of the stream resumed on B.
    resumed: Duration,
    /// Kill to the 200 of the revocation on C.
    revoke_acked: Duration,
    /// Kill to that revocation's event on B's stream.
    received: Duration,
    last_seq: u64,
    seq: u64,
}

async fn failover(cluster: &Cluster, api: &Api, run: u32) -> Result<Failover> {
    let [a, b, c] = cluster.listens;
    let job = format!("ha-failover-{run}");
    let first = api.mint(c, &job).await?;
    let next = api.mint(c, &job).await?;
    let next_jti = jti_of(&next)?;
    let mut feed = api.open_feed(a, None).await?;
    if api.revoke_token(b, &first).await? != StatusCode::OK {
        bail!("revocation on B refused");
    }
    let first_jti = jti_of(&first)?;
    let deadline = Instant::now() + WAIT;
    let (last_id, last_seq) = loop {
        let event = feed
            .next_event(deadline)
            .await?
            .context("A's stream ended before the first revocation")?;
        if let Some(revocation) = revocation_of(&event)?
            && revocation.jti.as_deref() == Some(first_jti.as_str())
        {
            break (event.id.context("an event without id")?, revocation.seq);
        }
    };

    let killed = Instant::now();
    cluster.kill9(0);
    let revoker = {
        let http = api.http.clone();
        let secret = api.workload_secret.clone();
        tokio::spawn(async move {
            let response = http
                .post(format!("http://{c}{REVOCATION_PATH}"))
                .basic_auth(WORKLOAD, Some(secret))
                .form(&[("token", next)])
                .send()
                .await?;
            let status = response.status();
            let at = Instant::now();
            if status != StatusCode::OK {
                bail!("revocation on C answered {status}");
            }
            anyhow::Ok(at)
        })
    };
    // The verifier's side: read to the end of A's stream, then resume on B.
    let deadline = killed + WAIT;
    while feed.next_event(deadline).await?.is_some() {}
    let stream_end = killed.elapsed();
    let mut feed = api.open_feed(b, Some(&last_id)).await?;
    let resumed = killed.elapsed();
    let (seq, received) = loop {
        let event = feed
            .next_event(deadline)
            .await?
            .context("B's stream ended")?;
        if let Some(revocation) = revocation_of(&event)? {
            let received = killed.elapsed();
            if revocation.jti.as_deref() != Some(next_jti.as_str()) {
                bail!(
                    "after {last_id} B sent seq {} ({:?}), not the revocation made on C",
                    revocation.seq,
                    revocation.jti
                );
            }
            break (revocation.seq, received);
        }
    };
    if seq != last_seq + 1 {
        bail!("resumed after seq {last_seq}, B sent seq {seq}: a gap or a repeat");
    }
    let revoke_acked = revoker.await??.saturating_duration_since(killed);
    drop(feed);
    cluster.launch(0).await?;
    api.wait_readyz(a, StatusCode::OK, READY_BOUND).await?;
    Ok(Failover {
        stream_end,
        resumed,
        revoke_acked,
        received,
        last_seq,
        seq,
    })
}

// --- PostgreSQL restart -----------------------------------------------------

struct PgRestart {
    /// Stop to every replica's /readyz 503.
    fail_closed: Duration,
    /// How long `pg_ctl start -w` took.
    pg_start: Duration,
    /// From `pg_ctl start` returning to every replica's /readyz 200.
    all_ready: Duration,
    each_ready: [Duration; REPLICAS],
}

async fn pg_restart(cluster: &Cluster, api: &Api) -> Result<PgRestart> {
    let stopped = Instant::now();
    cluster.stop_postgres()?;
    for addr in cluster.listens {
        api.wait_readyz(
            addr,
            StatusCode::SERVICE_UNAVAILABLE,
            Duration::from_secs(30),
        )
        .await?;
    }
    let fail_closed = stopped.elapsed();
    let starting = Instant::now();
    cluster.start_postgres()?;
    let started = Instant::now();
    let waits = cluster.listens.map(|addr| async move {
        api.wait_readyz(addr, StatusCode::OK, READY_BOUND).await?;
        anyhow::Ok(started.elapsed())
    });
    let [wa, wb, wc] = waits;
    let (ra, rb, rc) = tokio::join!(wa, wb, wc);
    let each_ready = [ra?, rb?, rc?];
    let all_ready = each_ready.iter().copied().max().unwrap_or_default();
    Ok(PgRestart {
        fail_closed,
        pg_start: started - starting,
        all_ready,
        each_ready,
    })
}

// --- the summary ------------------------------------------------------------

struct Summary {
    runs: usize,
    propagation_p50: f64,
    propagation_p99: f64,
    floor_per_second: f64,
    mint_per_second: f64,
    ratio: f64,
    mint_p99: f64,
    failover_received: f64,
    failover_stream_end: f64,
    pg_all_ready: f64,
    errors: u64,
}

impl Summary {
    fn of(runs: &[RunResult]) -> Self {
        let m = |f: &dyn Fn(&RunResult) -> f64| {
            median(&runs.iter().map(f).collect::<Vec<_>>()).unwrap_or(f64::NAN)
        };
        Self {
            runs: runs.len(),
            propagation_p50: m(&|r| ms(r.propagation.p50)),
            propagation_p99: m(&|r| ms(r.propagation.p99)),
            floor_per_second: m(&|r| r.floor.measurement.per_second),
            mint_per_second: m(&|r| r.mint.measurement.per_second),
            ratio: m(&RunResult::ratio),
            mint_p99: m(&|r| ms(r.mint.measurement.p99)),
            failover_received: m(&|r| ms(r.failover.received)),
            failover_stream_end: m(&|r| ms(r.failover.stream_end)),
            pg_all_ready: m(&|r| ms(r.pg_restart.all_ready)),
            errors: runs.iter().map(RunResult::errors).sum(),
        }
    }

    fn propagation_met(&self) -> bool {
        self.propagation_p99 < ms(TARGET_PROPAGATION_P99)
    }

    fn ratio_met(&self) -> bool {
        self.ratio >= TARGET_MINT_RATIO
    }

    fn mint_p99_met(&self) -> bool {
        self.mint_p99 < ms(TARGET_MINT_P99)
    }

    fn passes(&self) -> bool {
        self.propagation_met() && self.ratio_met() && self.mint_p99_met() && self.errors == 0
    }

    fn lines(&self, cli: &Cli) -> Vec<String> {
        let verdict = |met: bool| if met { "met" } else { "MISSED" };
        vec![
            format!(
                "medians of {} run{}:",
                self.runs,
                if self.runs == 1 { "" } else { "s" }
            ),
            format!(
                "  propagation across replicas (revoked on B, event on C's feed, {} per run): p50 {:.2} ms, p99 {:.2} ms   target p99 < {} ms: {}",
                cli.revocations,
                self.propagation_p50,
                self.propagation_p99,
                ms(TARGET_PROPAGATION_P99),
                verdict(self.propagation_met())
            ),
            format!(
                "  mint on PostgreSQL (replica A): {:.0}/s vs floor {:.0}/s, ratio {:.3}   target >= {TARGET_MINT_RATIO}: {}",
                self.mint_per_second,
                self.floor_per_second,
                self.ratio,
                verdict(self.ratio_met())
            ),
            format!(
                "  mint p99: {:.2} ms   target < {} ms: {}",
                self.mint_p99,
                ms(TARGET_MINT_P99),
                verdict(self.mint_p99_met())
            ),
            format!(
                "  failover: kill -9 A -> feed resumed on B with Last-Event-ID and the next revocation received: {:.2} ms (stream end seen after {:.2} ms)   no target",
                self.failover_received, self.failover_stream_end
            ),
            format!(
                "  PostgreSQL restart -> every replica's /readyz 200: {:.1} ms after pg_ctl start returned   no target",
                self.pg_all_ready
            ),
            format!(
                "  load errors over all runs: {}{}",
                self.errors,
                if self.errors == 0 {
                    ""
                } else {
                    " (the runs are not valid)"
                }
            ),
        ]
    }
}

// --- the set test -----------------------------------------------------------

/// What the set test's workers did.
#[derive(Default)]
struct SetLog {
    /// Tokens whose revocation (of the token, or of its job) was answered
    /// 200.
    revoked: Vec<String>,
    token_revocations: usize,
    job_revocations: usize,
    /// Tokens minted and never revoked.
    controls: Vec<String>,
    mints: usize,
    mint_failures: usize,
    /// Revocations answered otherwise, or not at all: their outcome is
    /// unknown, they are not checked.
    unacknowledged: usize,
    last_ack: Option<Instant>,
}

struct SetOutcome {
    seconds: u64,
    log: SetLog,
    kills: usize,
    restarts: usize,
    /// (acknowledged revocation, replica) pairs still active at the check.
    violations: usize,
    /// Of those, still active after [`RECHECK_AFTER`].
    lost: usize,
    /// (control, replica) pairs inactive.
    controls_inactive: usize,
    first_violation: Option<String>,
}

impl SetOutcome {
    fn passes(&self) -> bool {
        self.violations == 0 && self.controls_inactive == 0
    }

    fn lines(&self) -> Vec<String> {
        let log = &self.log;
        let mut lines = vec![
            format!(
                "set test, {} s: {} mints ({} failed), {} kill -9s and {} restarts of replicas (at most two down at once)",
                self.seconds, log.mints, log.mint_failures, self.kills, self.restarts
            ),
            format!(
                "  acknowledged revocations: {} tokens ({} by token, {} by job), {} unacknowledged (not checked); {} control tokens never revoked",
                log.revoked.len(),
                log.token_revocations,
                log.job_revocations,
                log.unacknowledged,
                log.controls.len()
            ),
            format!(
                "  checked on all {REPLICAS} replicas: {} revoked tokens x {REPLICAS} = {} introspections; still active (violations): {}, of those still active {} s later: {}; controls wrongly inactive: {}",
                log.revoked.len(),
                log.revoked.len() * REPLICAS,
                self.violations,
                RECHECK_AFTER.as_secs(),
                self.lost,
                self.controls_inactive
            ),
        ];
        if let Some(first) = &self.first_violation {
            lines.push(format!("  first violation: {first}"));
        }
        lines.push(format!(
            "  set test: {}",
            if self.passes() { "passed" } else { "FAILED" }
        ));
        lines
    }
}

async fn set_test(cluster: &Arc<Cluster>, length: Duration) -> Result<SetOutcome> {
    // Fresh clients: no pooled connection from the runs.
    let api = Arc::new(Api::new()?);
    let deadline = Instant::now() + length;
    let log = Arc::new(Mutex::new(SetLog::default()));
    let mut workers = Vec::new();
    for worker in 0..SET_WORKERS {
        let (cluster, api, log) = (Arc::clone(cluster), Arc::clone(&api), Arc::clone(&log));
        workers.push(tokio::spawn(async move {
            set_worker(worker, &cluster, &api, &log, deadline).await;
        }));
    }
    let chaos = {
        let cluster = Arc::clone(cluster);
        tokio::spawn(async move { chaos(&cluster, deadline).await })
    };
    for worker in workers {
        worker.await?;
    }
    let (kills, mut restarts) = chaos.await??;
    for index in 0..REPLICAS {
        if !cluster.is_up(index) {
            cluster.launch(index).await?;
            restarts += 1;
        }
    }
    api.wait_all_ready(cluster).await?;
    let log = std::mem::take(&mut *log.lock().unwrap_or_else(PoisonError::into_inner));
    if let Some(last) = log.last_ack {
        tokio::time::sleep_until(last + SETTLE).await;
    }

    let mut violators = Vec::new();
    let mut controls_inactive = 0;
    let checks = cluster.listens.map(|addr| {
        let api = Arc::clone(&api);
        let revoked = log.revoked.clone();
        let controls = log.controls.clone();
        tokio::spawn(async move {
            let mut active = Vec::new();
            for token in revoked {
                if api.active(addr, &token).await? {
                    active.push(token);
                }
            }
            let mut inactive = 0;
            for token in controls {
                if !api.active(addr, &token).await? {
                    inactive += 1;
                }
            }
            anyhow::Ok((addr, active, inactive))
        })
    });
    for check in checks {
        let (addr, active, inactive) = check.await??;
        violators.extend(active.into_iter().map(|token| (addr, token)));
        controls_inactive += inactive;
    }
    let first_violation = violators.first().map(|(addr, token)| {
        format!(
            "jti {} still active on {addr}",
            jti_of(token).unwrap_or_default()
        )
    });
    let mut lost = 0;
    if !violators.is_empty() {
        tokio::time::sleep(RECHECK_AFTER).await;
        for (addr, token) in &violators {
            if api.active(*addr, token).await? {
                lost += 1;
            }
        }
    }
    Ok(SetOutcome {
        seconds: length.as_secs(),
        log,
        kills,
        restarts,
        violations: violators.len(),
        lost,
        controls_inactive,
        first_violation,
    })
}

/// One worker: mint on a random replica; keep a tenth as controls; revoke
/// the rest through a random replica, now and then the whole job after a
/// second token of it is minted elsewhere.
async fn set_worker(
    worker: usize,
    cluster: &Cluster,
    api: &Api,
    log: &Mutex<SetLog>,
    deadline: Instant,
) {
    let record =
        |f: &dyn Fn(&mut SetLog)| f(&mut log.lock().unwrap_or_else(PoisonError::into_inner));
    let mut round = 0u64;
    while Instant::now() < deadline {
        round += 1;
        let job = format!("set-{worker}-{round}");
        let pick = || cluster.listens[random_below(REPLICAS)];
        let token = match api.mint(pick(), &job).await {
            Ok(token) => token,
            Err(_) => {
                record(&|l| {
                    l.mints += 1;
                    l.mint_failures += 1;
                });
                // Likely a replica that is down: try another soon.
                tokio::time::sleep(Duration::from_millis(5)).await;
                continue;
            }
        };
        record(&|l| l.mints += 1);
        let dice = random_below(100);
        if dice < 10 {
            record(&|l| l.controls.push(token.clone()));
            continue;
        }
        if dice < 25 {
            let mut tokens = vec![token];
            match api.mint(pick(), &job).await {
                Ok(second) => {
                    record(&|l| l.mints += 1);
                    tokens.push(second);
                }
                Err(_) => record(&|l| {
                    l.mints += 1;
                    l.mint_failures += 1;
                }),
            }
            let answer = api.revoke_job(pick(), &job).await;
            let at = Instant::now();
            record(&|l| match &answer {
                Ok(StatusCode::OK) => {
                    l.job_revocations += 1;
                    l.revoked.extend(tokens.iter().cloned());
                    l.last_ack = Some(at);
                }
                _ => l.unacknowledged += 1,
            });
        } else {
            let answer = api.revoke_token(pick(), &token).await;
            let at = Instant::now();
            record(&|l| match &answer {
                Ok(StatusCode::OK) => {
                    l.token_revocations += 1;
                    l.revoked.push(token.clone());
                    l.last_ack = Some(at);
                }
                _ => l.unacknowledged += 1,
            });
        }
    }
}

/// Kill a random replica every 0.3 to 1.5 s, or restart one that is down;
/// never more than two down. Returns (kills, restarts).
async fn chaos(cluster: &Cluster, deadline: Instant) -> Result<(usize, usize)> {
    let (mut kills, mut restarts) = (0, 0);
    loop {
        let pause = Duration::from_millis(300 + random_below(1200) as u64);
        if Instant::now() + pause >= deadline {
            break;
        }
        tokio::time::sleep(pause).await;
        let up: Vec<usize> = (0..REPLICAS).filter(|&i| cluster.is_up(i)).collect();
        let down: Vec<usize> = (0..REPLICAS).filter(|&i| !cluster.is_up(i)).collect();
        let kill = match down.len() {
            0 => true,
            1 => random_below(2) == 0,
            _ => false,
        };
        if kill && cluster.up_count() > 1 {
            if cluster.kill9(up[random_below(up.len())]) {
                kills += 1;
            }
        } else if let Some(&index) = down.get(random_below(down.len().max(1))) {
            cluster.launch(index).await?;
            restarts += 1;
        }
    }
    Ok((kills, restarts))
}
