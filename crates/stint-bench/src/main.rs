//! `stint-bench`: Stint's load benchmark.
//!
//! Over HTTP/1.1 on loopback (127.0.0.1 only), with `--connections`
//! (default 64) concurrent keep-alive connections each sending one request
//! after another (a closed loop), it measures two servers one after the
//! other, under the same load, in every run:
//!
//! - **the floor**: a bare hyper server that reads each request and answers
//!   with a JWT of fixed claims signed with ES256 by the same signing code as
//!   the broker. No authentication, no policy, no audit: the most any token
//!   server could do here.
//! - **mint**: `POST /oauth2/token` (client credentials with HTTP Basic, the
//!   demo policy's `read` step) against the real broker library, started in
//!   this process exactly as `stintd --dev` starts it: ES256 signing, and the
//!   durable audit log on (each decision fsynced, group-committed, before its
//!   response), in a temporary data directory on the real disk (not a tmpfs;
//!   the output names it and its file system).
//!
//! Each measurement warms up for `--warmup` seconds (not recorded), then
//! records for `--duration` seconds. Throughput is the successful requests
//! completed inside that window over its length. Latency runs from just
//! before a request is sent to the end of its response body; p50 and p99 are
//! nearest-rank percentiles (p99 of 1..=100 is 99) over all connections'
//! requests together. Any response that is not a 200 with an `access_token`
//! is an error, and a run with errors is reported as not valid.
//!
//! After `--runs` runs (default 5; each is printed) it prints the median of
//! each figure over the runs: mint/s, the floor's requests/s, the ratio
//! mint/floor (the median of the runs' ratios; target at least 0.7) and mint's
//! p99 (target under 10 ms). Whether each target is met is computed.
//!
//! Run it from the workspace root:
//!
//! ```text
//! cargo run --release -p stint-bench
//! cargo run --release -p stint-bench -- --runs 1 --duration 2   # quick look
//! cargo run --release -p stint-bench -- --check                 # exit 1 on a miss
//! ```
//!
//! Everything runs in one process on one multi-threaded tokio runtime (one
//! worker thread per CPU), so the load generator competes with the server
//! under test for the CPUs, the same way for both servers.

mod broker;
mod floor;
mod instructions;
mod load;
mod machine;
mod peer;
mod report;
mod stats;

use crate::broker::Broker;
use crate::floor::FloorServer;
use crate::load::{Load, RequestTemplate};
use crate::report::{RunResult, Summary};
use anyhow::{Context as _, Result};
use clap::Parser;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// The allocator `stintd` ships with, so that the broker measured here
/// allocates as it does in production (the floor runs on it too).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Stint's load benchmark: mint throughput and latency against a bare
/// signing floor, over HTTP on loopback.
#[derive(Debug, Parser)]
#[command(name = "stint-bench", about, long_about = None)]
struct Cli {
    /// Concurrent keep-alive connections, each with one request in flight.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    connections: u16,

    /// Seconds of unrecorded warm-up before each measurement.
    #[arg(long, default_value = "2", value_parser = load::parse_seconds)]
    warmup: Duration,

    /// Seconds each measurement records.
    #[arg(long, default_value = "5", value_parser = load::parse_positive_seconds)]
    duration: Duration,

    /// Runs (floor then mint in each: A B A B ...); the report gives the
    /// medians. Single runs on a shared 2-CPU machine swing by a third, so
    /// at least five.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    runs: u32,

    /// Exit non-zero if the median ratio is under 0.7, the median mint p99
    /// is 10 ms or more, a mint's audit record is over 220 bytes, or any
    /// request failed.
    #[arg(long)]
    check: bool,

    /// Where to create the broker's temporary data directory; it must be on
    /// a real disk for the audit's fsync to be real [default: the directory
    /// of this executable, i.e. inside Cargo's target directory].
    #[arg(long, value_name = "DIR")]
    data_in: Option<PathBuf>,

    /// Instead of the load: count the instructions a mint costs the real
    /// `stintd` (beside this executable) under `valgrind --tool=callgrind`,
    /// from runs of N and 2N mints, and where they go.
    #[arg(long, value_name = "N", conflicts_with_all = ["runs", "check"])]
    instructions: Option<u32>,

    /// Measure oidc-provider (Node.js, client credentials, ES256 JWT access
    /// tokens, in memory) too, after mint in every run: target mint at least
    /// 10x it. Installs it with npm the first time.
    #[arg(long)]
    oidc_provider: bool,

    /// With --instructions: keep the callgrind profile of the 2N mints in
    /// FILE.
    #[arg(long, value_name = "FILE", requires = "instructions")]
    profile_out: Option<PathBuf>,
}

impl Cli {
    fn load(&self) -> Load {
        Load {
            connections: usize::from(self.connections),
            warmup: self.warmup,
            duration: self.duration,
        }
    }

    fn data_parent(&self) -> PathBuf {
        self.data_in.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|exe| exe.parent().map(Path::to_path_buf))
                .unwrap_or_else(|| PathBuf::from("."))
        })
    }
}

fn main() -> Result<ExitCode> {
    let cli = Cli::parse();
    let load = cli.load();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    if let Some(mints) = cli.instructions {
        runtime.block_on(instructions::run(mints, cli.profile_out.as_deref()))?;
        return Ok(ExitCode::SUCCESS);
    }
    let summary = runtime.block_on(benchmark(&cli, load));
    // Whatever is left (idle connection tasks) is not waited for.
    runtime.shutdown_timeout(Duration::from_secs(5));
    let summary = summary?;
    print_lines(&summary.lines());
    Ok(exit_code(cli.check, &summary))
}

/// Start both servers, run the runs, stop the servers, and summarize.
async fn benchmark(cli: &Cli, load: Load) -> Result<Summary> {
    let parent = cli.data_parent();
    let data_dir = tempfile::Builder::new()
        .prefix("stint-bench-data-")
        .tempdir_in(&parent)
        .with_context(|| format!("creating a data directory in {}", parent.display()))?;
    print_header(cli, load, data_dir.path());

    let floor = FloorServer::start().await?;
    let broker = Broker::start(data_dir.path()).await?;
    println!(
        "floor at http://{}, broker at {}\n",
        floor.local_addr(),
        broker.issuer()
    );
    let peer = if cli.oidc_provider {
        let peer = peer::Peer::start()?;
        println!(
            "oidc-provider {} (Node.js {}) at http://{}\n",
            peer.version(),
            node_version(),
            peer.local_addr()
        );
        Some(peer)
    } else {
        None
    };
    let targets = Targets {
        floor: Arc::new(broker.mint_request(floor.local_addr())?),
        mint: Arc::new(broker.mint_request(broker.local_addr())?),
        peer: peer
            .as_ref()
            .map(|peer| {
                peer.request()
                    .map(|request| (peer.local_addr(), Arc::new(request)))
            })
            .transpose()?,
    };

    let mut runs = Vec::new();
    for index in 1..=cli.runs {
        let run = one_run(&floor, &broker, &targets, load).await?;
        println!("run {index}/{}:", cli.runs);
        print_lines(&run.lines());
        runs.push(run);
    }
    print_audit_log_size(data_dir.path());

    broker.shutdown().await;
    floor.shutdown();
    Ok(Summary::of(&runs))
}

/// The request each server is sent.
struct Targets {
    floor: Arc<RequestTemplate>,
    mint: Arc<RequestTemplate>,
    peer: Option<(std::net::SocketAddr, Arc<RequestTemplate>)>,
}

fn node_version() -> String {
    std::process::Command::new("node")
        .arg("--version")
        .output()
        .ok()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// The floor first, then mint (then the peer, if any), under the same load.
async fn one_run(
    floor: &FloorServer,
    broker: &Broker,
    targets: &Targets,
    load: Load,
) -> Result<RunResult> {
    let floor_report = load::measure(floor.local_addr(), Arc::clone(&targets.floor), load).await?;
    let audit_before = broker.audit_counters().await;
    let mint_report = load::measure(broker.local_addr(), Arc::clone(&targets.mint), load).await?;
    let audit_after = broker.audit_counters().await;
    let peer = match &targets.peer {
        Some((addr, request)) => Some(load::measure(*addr, Arc::clone(request), load).await?),
        None => None,
    };
    let audit = match (audit_before, audit_after) {
        (Ok(before), Ok(after)) => Some(after.since(before)),
        (Err(error), _) | (_, Err(error)) => {
            println!("  (audit counters unavailable: {error:#})");
            None
        }
    };
    Ok(RunResult {
        floor: floor_report,
        mint: mint_report,
        peer,
        audit,
        window: load.duration,
    })
}

fn print_header(cli: &Cli, load: Load, data_dir: &Path) {
    println!("stint-bench: mint vs the bare signing floor, HTTP/1.1 on 127.0.0.1");
    let cpus = machine::cpu_count().map_or_else(|| "unknown".to_owned(), |n| n.to_string());
    let model = machine::cpu_model().unwrap_or_else(|| "unknown model".to_owned());
    println!(
        "machine: {cpus} CPUs ({model}); one tokio runtime, one worker per CPU, shared by the load generator and the servers"
    );
    if cfg!(debug_assertions) {
        println!("WARNING: this is a debug build; the figures mean little. Use --release.");
    }
    let filesystem = machine::filesystem_type(data_dir);
    println!(
        "broker data dir: {} ({})",
        data_dir.display(),
        filesystem.as_deref().unwrap_or("file system unknown")
    );
    if filesystem
        .as_deref()
        .is_some_and(|kind| !machine::fsync_is_real(kind))
    {
        println!(
            "WARNING: the data dir is in memory, so the audit's fsync costs nothing; use --data-in DIR on a disk."
        );
    }
    println!(
        "load: {} connections, closed loop, {:.1} s warm-up + {:.1} s measured, {} run{}",
        load.connections,
        load.warmup.as_secs_f64(),
        load.duration.as_secs_f64(),
        cli.runs,
        if cli.runs == 1 { "" } else { "s" }
    );
}

fn print_audit_log_size(data_dir: &Path) {
    let path = data_dir.join(stint_server::AUDIT_FILE);
    match std::fs::metadata(&path) {
        Ok(metadata) => println!(
            "audit log at the end: {:.1} MB ({})\n",
            metadata.len() as f64 / 1e6,
            path.display()
        ),
        Err(error) => println!("audit log {}: {error}\n", path.display()),
    }
}

fn print_lines(lines: &[String]) {
    for line in lines {
        println!("{line}");
    }
}

/// Without `--check`, success whatever the figures; with it, success only
/// if [`Summary::passes`].
fn exit_code(check: bool, summary: &Summary) -> ExitCode {
    if !check || summary.passes() {
        return ExitCode::SUCCESS;
    }
    println!("--check: FAILED (a target was missed or requests failed)");
    ExitCode::FAILURE
}
