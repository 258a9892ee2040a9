//! `stint-feed-bench`: how fast a revocation reaches a verifier in another
//! process, what 1 000 subscribers cost the broker, and what a million
//! revocations and a million-token status list weigh.
//!
//! - **propagation**: the broker runs in this process (as `stintd --dev`);
//!   a child process (this binary, `--verifier`) builds the SDK's
//!   `Verifier` with the revocation feed and watches `--revocations`
//!   tokens. Each token is revoked in turn (`POST /oauth2/revoke`); the
//!   latency is from the moment the 200 arrives here to the moment the
//!   child's verifier first refuses the token as revoked (wall clock, same
//!   machine). p50 and p99 are printed next to the target (p99 < 100 ms).
//! - **fan-out**: a second child (`--subscribers`) holds `--subscribers`
//!   streams open; `--fanout-revocations` revocations flow; reported: the
//!   time until every subscriber has each event, and this process's CPU
//!   time and resident memory meanwhile (the broker's: the revoking client
//!   here is idle between requests).
//! - **memory**: resident memory added by 1 000 000 revoked, unexpired
//!   token entries in the broker's revocation set (target < 200 MB), and
//!   the size of a status list token for 1 000 000 tokens, 1 % revoked.
//!
//! ```text
//! cargo run --release -p stint-bench --bin stint-feed-bench
//! ```

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use stint_client::{Client, Credentials, Error, Verifier};

/// The target: p99 propagation on loopback.
const TARGET_P99_MS: f64 = 100.0;
/// The target: resident memory for a million revoked tokens.
const TARGET_MEMORY_MB: f64 = 200.0;

/// Revocation propagation, fan-out and memory.
#[derive(Debug, Parser)]
struct Args {
    /// Revocations timed one by one for the propagation figure.
    #[arg(long, default_value_t = 1_000)]
    revocations: usize,
    /// Concurrent stream subscribers for the fan-out figure (0: skip).
    #[arg(long, default_value_t = 1_000)]
    subscribers: usize,
    /// Revocations sent while the subscribers listen.
    #[arg(long, default_value_t = 200)]
    fanout_revocations: usize,
    /// Internal: run as the verifier child for ISSUER with CREDENTIALS.
    #[arg(long, hide = true, num_args = 2, value_names = ["ISSUER", "CREDENTIALS"])]
    verifier: Option<Vec<String>>,
    /// Internal: run as the subscribers child for ISSUER with CREDENTIALS.
    #[arg(long, hide = true, num_args = 2, value_names = ["ISSUER", "CREDENTIALS"])]
    subscriber_child: Option<Vec<String>>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let child_runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    if let Some(target) = &args.verifier {
        let runtime = child_runtime()?;
        return runtime.block_on(verifier_child(&target[0], Path::new(&target[1])));
    }
    if let Some(target) = &args.subscriber_child {
        let runtime = child_runtime()?;
        return runtime.block_on(subscribers_child(
            &target[0],
            Path::new(&target[1]),
            args.subscribers,
        ));
    }
    if args.revocations == 0 {
        bail!("--revocations must be above zero");
    }
    let memory = memory_figures()?;
    // The broker serves from this runtime, as stintd does.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(run(&args, memory))
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

async fn run(args: &Args, memory: Memory) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = stint_server::Config::dev(dir.path().join("data"), "127.0.0.1:0".parse()?);
    // The fan-out's subscribers all use the dev client; a fleet of real
    // verifiers would spread over clients (256 streams each by default).
    config.feed_max_streams_per_client = config.feed_max_streams;
    let server = stint_server::start(config).await?;
    let credentials = server
        .dev_client_path()
        .context("the dev broker wrote no credentials")?
        .to_owned();
    let client = Client::from_dev_client_file(&credentials).await?;
    let issuer = server.issuer().to_owned();

    // --- propagation -----------------------------------------------------
    let mut tokens = Vec::with_capacity(args.revocations);
    for i in 0..args.revocations {
        let step = client
            .step("read")
            .scope("read:demo/feed")
            .job(format!("feed-bench-{i}"))
            .audience("demo-api")
            .request()
            .await?;
        tokens.push(step.detach());
    }
    let exe = std::env::current_exe()?;
    let mut child = Command::new(&exe)
        .arg("--verifier")
        .arg(&issuer)
        .arg(&credentials)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start the verifier child")?;
    {
        // From a thread: the pipe fills long before the child reads it,
        // and the child first needs the broker, which this runtime serves.
        let mut stdin = child.stdin.take().context("no stdin")?;
        let tokens = tokens.clone();
        std::thread::spawn(move || -> std::io::Result<()> {
            writeln!(stdin, "{}", tokens.len())?;
            for token in &tokens {
                writeln!(stdin, "{token}")?;
            }
            Ok(())
        });
    }
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = child_lines(stdout);
    let ready = tokio::time::timeout(Duration::from_secs(60), lines.recv())
        .await
        .context("the verifier child did not get ready")?;
    if ready.as_deref() != Some("ready") {
        bail!("the verifier child said {ready:?}");
    }
    let mut latencies = Vec::with_capacity(tokens.len());
    let mut before_ack = 0usize;
    for (i, token) in tokens.iter().enumerate() {
        client.revoke(token).await?;
        let acked = now_ns();
        let line = tokio::time::timeout(Duration::from_secs(10), lines.recv())
            .await
            .with_context(|| format!("revocation {i} never reached the verifier"))?
            .context("the verifier child exited")?;
        let (index, seen) = line.split_once(' ').context("a malformed child line")?;
        if index.parse::<usize>()? != i {
            bail!("the child saw revocation {index}, expected {i}");
        }
        let seen: i128 = seen.parse()?;
        let latency = seen - acked;
        if latency < 0 {
            // The verifier refused the token before the caller had its 200:
            // the event is published before the answer is sent.
            before_ack += 1;
        }
        latencies.push(Duration::from_nanos(latency.max(0) as u64));
    }
    let _ = child.wait();
    latencies.sort();
    let p50 = percentile(&latencies, 0.50);
    let p99 = percentile(&latencies, 0.99);
    let max = latencies.last().copied().unwrap_or_default();

    // --- fan-out -----------------------------------------------------------
    let fanout = if args.subscribers > 0 {
        Some(fanout(args, &client, &issuer, &credentials, &exe).await?)
    } else {
        None
    };
    server.shutdown().await;

    println!("revocation propagation, broker -> SDK verifier in another process (loopback):");
    println!(
        "  {} revocations: p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms   (target p99 < {TARGET_P99_MS} ms: {})",
        latencies.len(),
        ms(p50),
        ms(p99),
        ms(max),
        if ms(p99) < TARGET_P99_MS {
            "met"
        } else {
            "NOT met"
        }
    );
    println!("  ({before_ack} refused by the verifier before the caller had its 200)");
    if let Some(fanout) = fanout {
        println!(
            "fan-out to {} concurrent stream subscribers:",
            args.subscribers
        );
        println!(
            "  {} revocations reached every subscriber: p50 {:.2} ms  p99 {:.2} ms after the 200",
            fanout.events,
            ms(fanout.p50),
            ms(fanout.p99)
        );
        println!(
            "  broker process while they flowed: {:.2} CPUs, resident {:.1} MB (idle with the subscribers connected: {:.1} MB)",
            fanout.cpus, fanout.rss_mb, fanout.idle_rss_mb
        );
    }
    println!("memory:");
    println!(
        "  1 000 000 revoked, unexpired tokens in the revocation set: +{:.1} MB resident   (target < {TARGET_MEMORY_MB} MB: {})",
        memory.revoked_mb,
        if memory.revoked_mb < TARGET_MEMORY_MB {
            "met"
        } else {
            "NOT met"
        }
    );
    println!(
        "  status list for 1 000 000 tokens (1 bit each), 1 % revoked at random: lst {} bytes ({:.1} KiB; the list itself is 122 KiB)",
        memory.status_list_len,
        memory.status_list_len as f64 / 1024.0
    );
    Ok(())
}

/// A child's stdout, a line at a time, read on a thread of its own.
fn child_lines(stdout: std::process::ChildStdout) -> tokio::sync::mpsc::UnboundedReceiver<String> {
    let (lines_tx, lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// The verifier child: read the tokens, follow the feed, report each
/// token's rejection in order.
async fn verifier_child(issuer: &str, credentials: &Path) -> Result<()> {
    let dev: stint_proto::DevClient = serde_json::from_slice(&std::fs::read(credentials)?)?;
    let verifier = Verifier::builder(issuer)
        .audience("demo-api")
        .revocation_feed(
            Credentials::new(dev.client_id, dev.client_secret),
            Duration::from_secs(45),
        )
        .build()
        .await?;
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    let count: usize = lines.next().context("no count")??.trim().parse()?;
    let mut tokens = Vec::with_capacity(count);
    for _ in 0..count {
        tokens.push(lines.next().context("a token is missing")??);
    }
    for token in &tokens {
        verifier.verify(token).await?;
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    for (i, token) in tokens.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match verifier.verify_with_cached_keys(token) {
                Err(Error::Revoked) => break,
                Ok(_) if Instant::now() < deadline => {
                    // Let the feed task run; check again very soon.
                    tokio::time::sleep(Duration::from_micros(100)).await;
                }
                other => bail!("token {i}: {other:?}"),
            }
        }
        writeln!(out, "{i} {}", now_ns())?;
        out.flush()?;
    }
    Ok(())
}

struct Fanout {
    events: usize,
    p50: Duration,
    p99: Duration,
    cpus: f64,
    rss_mb: f64,
    idle_rss_mb: f64,
}

async fn fanout(
    args: &Args,
    client: &Client,
    issuer: &str,
    credentials: &Path,
    exe: &PathBuf,
) -> Result<Fanout> {
    let mut tokens = Vec::with_capacity(args.fanout_revocations);
    for i in 0..args.fanout_revocations {
        let step = client
            .step("read")
            .scope("read:demo/fanout")
            .job(format!("fanout-{i}"))
            .audience("demo-api")
            .request()
            .await?;
        tokens.push(step.detach());
    }
    let mut child = Command::new(exe)
        .arg("--subscriber-child")
        .arg(issuer)
        .arg(credentials)
        .arg("--subscribers")
        .arg(args.subscribers.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start the subscribers child")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let mut lines = child_lines(stdout);
    let ready = tokio::time::timeout(Duration::from_secs(120), lines.recv())
        .await
        .context("the subscribers never connected")?;
    if ready.as_deref() != Some("ready") {
        bail!("the subscribers child said {ready:?}");
    }
    let idle_rss_mb = resident_mb();
    let cpu_before = cpu_seconds();
    let started = Instant::now();
    let mut latencies = Vec::with_capacity(tokens.len());
    for (i, token) in tokens.iter().enumerate() {
        client.revoke(token).await?;
        let acked = now_ns();
        let line = tokio::time::timeout(Duration::from_secs(30), lines.recv())
            .await
            .with_context(|| format!("fan-out event {i} never reached every subscriber"))?
            .context("the subscribers child exited")?;
        let seen: i128 = line.trim().parse()?;
        latencies.push(Duration::from_nanos((seen - acked).max(0) as u64));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpus = (cpu_seconds() - cpu_before) / elapsed;
    let rss_mb = resident_mb();
    let _ = child.kill();
    let _ = child.wait();
    latencies.sort();
    Ok(Fanout {
        events: latencies.len(),
        p50: percentile(&latencies, 0.5),
        p99: percentile(&latencies, 0.99),
        cpus,
        rss_mb,
        idle_rss_mb,
    })
}

/// The subscribers child: hold `n` streams open; for each revocation, print
/// the wall clock once every stream has it.
async fn subscribers_child(issuer: &str, credentials: &Path, n: usize) -> Result<()> {
    let dev: stint_proto::DevClient = serde_json::from_slice(&std::fs::read(credentials)?)?;
    let http = reqwest::Client::builder().build()?;
    let url = format!("{issuer}{}", stint_proto::REVOCATION_STREAM_PATH);
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<u64>();
    let (ready_tx, mut ready) = tokio::sync::mpsc::unbounded_channel::<()>();
    for _ in 0..n {
        let response = http
            .get(&url)
            .basic_auth(&dev.client_id, Some(&dev.client_secret))
            .send()
            .await?;
        if !response.status().is_success() {
            bail!("a subscriber was refused: {}", response.status());
        }
        let seen_tx = seen_tx.clone();
        let ready_tx = ready_tx.clone();
        tokio::spawn(async move {
            let mut response = response;
            let mut buffer = String::new();
            while let Ok(Some(chunk)) = response.chunk().await {
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find("\n\n") {
                    let block: String = buffer.drain(..end + 2).collect();
                    if block.contains("event: ready") {
                        let _ = ready_tx.send(());
                    } else if block.contains("event: revocation") {
                        let seq = block
                            .lines()
                            .find_map(|l| l.strip_prefix("id: "))
                            .and_then(|id| id.rsplit('.').next())
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(0);
                        let _ = seen_tx.send(seq);
                    }
                }
            }
        });
    }
    for _ in 0..n {
        ready.recv().await.context("a subscriber closed")?;
    }
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    let mut counts: std::collections::HashMap<u64, usize> = std::collections::HashMap::new();
    while let Some(seq) = seen.recv().await {
        let count = counts.entry(seq).or_insert(0);
        *count += 1;
        if *count == n {
            writeln!(out, "{}", now_ns())?;
            out.flush()?;
            counts.remove(&seq);
        }
    }
    Ok(())
}

struct Memory {
    revoked_mb: f64,
    status_list_len: usize,
}

/// The memory figures, measured before the broker starts so that nothing
/// else moves the resident size.
fn memory_figures() -> Result<Memory> {
    use stint_core::revocation::{RevocationSet, TokenRevocation};
    let set = RevocationSet::new();
    let rng = ring::rand::SystemRandom::new();
    let before = resident_mb();
    for _ in 0..1_000_000 {
        let jti =
            stint_core::claims::new_jti(&rng).map_err(|_| anyhow::anyhow!("no randomness"))?;
        set.insert_token(&TokenRevocation {
            jti,
            sub: String::new(),
            job: String::new(),
            expires_at: i64::MAX,
            revoked_at: 0,
        });
    }
    let revoked_mb = resident_mb() - before;
    if set.len() != 1_000_000 {
        bail!("the set holds {} entries, not a million", set.len());
    }
    drop(set);

    let mut list = stint_core::status_list::StatusList::new(1, 1_000_000)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut random = [0u8; 4];
    for _ in 0..10_000 {
        ring::rand::SecureRandom::fill(&rng, &mut random)
            .map_err(|_| anyhow::anyhow!("no randomness"))?;
        let idx = u64::from(u32::from_le_bytes(random)) % 1_000_000;
        list.set(idx, stint_core::status_list::INVALID)
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    Ok(Memory {
        revoked_mb,
        status_list_len: list.encode().len(),
    })
}

/// This process's resident memory, from /proc (Linux).
fn resident_mb() -> f64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0.0, |pages| pages * 4096.0 / (1024.0 * 1024.0))
}

/// This process's CPU time (user + system), seconds, from /proc (Linux).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses).
    let rest = stat.rsplit(')').next().unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 (1-based) of the whole line:
    // 12 and 13 after the name and state.
    (ticks(11) + ticks(12)) / 100.0
}
