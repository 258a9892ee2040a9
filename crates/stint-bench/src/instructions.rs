//! `stint-bench --instructions N`: the instructions one mint costs the
//! broker, counted by `valgrind --tool=callgrind`.
//!
//! Instructions, not seconds: on this shared machine a timing swings by a
//! third from one run to the next, an instruction count of the same binary
//! and inputs hardly moves. The real `stintd --dev` binary (beside this
//! one in Cargo's target directory) runs under callgrind twice, once
//! serving N mints and once 2N, each time from an empty data directory,
//! stopped with SIGTERM; the load comes from this process, so none of its
//! cost is counted. The difference of the two totals over N is the cost of
//! a mint with start-up and shutdown cancelled out: HTTP parsing,
//! authentication, the decision, the status-list entry, signing, the audit
//! record and its writer, and the response. What callgrind cannot see is
//! the kernel's side (the socket, `write` and `fsync`).
//!
//! The same difference per function (inclusive: the function and all it
//! calls) says where a mint's instructions go; the functions of interest
//! are printed, then the costliest of all.
//!
//! Under valgrind the broker's threads take turns on one CPU, so the group
//! commit sees about the concurrency of the load's connections.

use crate::load::{self, RequestTemplate};
use anyhow::{Context as _, Result, bail, ensure};
use http::StatusCode;
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use stint_proto::DevClient;
use tokio::time::Instant;

/// Connections the load spreads over (each one request at a time).
const CONNECTIONS: usize = 8;
/// How long the broker may take to start under valgrind.
const START_TIMEOUT: Duration = Duration::from_secs(180);
/// How long the mints may take under valgrind, at least.
const MINT_TIMEOUT: Duration = Duration::from_secs(600);
/// How long the broker may take to stop and write its profile.
const STOP_TIMEOUT: Duration = Duration::from_secs(120);

/// The request: the demo workflow's `read` step, as the load benchmark
/// sends it.
const MINT_FORM: &str = crate::broker::MINT_FORM;

/// Where the instructions of a mint go: a label, and the function names
/// (substrings of callgrind's symbol names) whose inclusive cost it is.
/// Inclusive costs nest (the handler includes signing), so the lines do
/// not add up; each says what that part costs on its own.
const PARTS: &[(&str, &[&str])] = &[
    (
        "hyper's own work (parse, dispatch, encode)",
        &["hyper::proto::h1::dispatch::Dispatcher<D,Bs,I,T>::poll_catch"],
    ),
    (
        "the token endpoint (a mint's own work)",
        &["stint_server::http::token::mint::{{closure}}"],
    ),
    (
        "  HTTP Basic credentials parsed",
        &["stint_server::http::client_auth::parse_basic"],
    ),
    (
        "  the client's secret checked (SHA-256)",
        &["stint_core::policy::Policy::authenticate"],
    ),
    (
        "  the form read and decoded",
        &["stint_server::http::client_auth::read_form::{{closure}}"],
    ),
    ("  the decision", &["stint_core::decision::decide"]),
    (
        "  the status-list entry (three HMACs)",
        &["stint_server::status::ListKey::entry"],
    ),
    (
        "  signing (claims JSON + ES256)",
        &["stint_core::jose::SigningKey::sign_jwt"],
    ),
    (
        "    ECDSA P-256",
        &["ring::ec::suite_b::ecdsa::signing::EcdsaKeyPair::sign"],
    ),
    (
        "the audit record: encoded, queued, awaited",
        &["stint_server::state::AppState::record::{{closure}}"],
    ),
    ("  its encoding", &["stint_core::audit::AuditEntry::encode"]),
    (
        "the audit writer's chaining (SHA-256 of the line)",
        &["stint_core::audit::Chain::append"],
    ),
    (
        "the response (JSON)",
        &["stint_server::http::token::respond"],
    ),
    (
        "the request log line (tracing)",
        &[
            "<tracing_subscriber::fmt::Subscriber<N,E,F,W> as tracing_core::subscriber::Subscriber>::event",
        ],
    ),
    (
        "memory allocation",
        &[
            "mi_malloc_aligned",
            "mi_free",
            "mi_realloc_aligned",
            "malloc",
            "free",
            "realloc",
        ],
    ),
];

/// How many of the costliest functions are listed after the parts.
const TOP: usize = 25;

/// Count, print what was found, and return.
pub(crate) async fn run(mints: u32, keep: Option<&Path>) -> Result<()> {
    ensure!(mints >= 100, "--instructions needs at least 100 mints");
    let stintd = stintd_path()?;
    which("valgrind").context(
        "valgrind is not installed (Debian: apt-get install valgrind); it counts the instructions",
    )?;
    which("callgrind_annotate").context("callgrind_annotate (part of valgrind) is missing")?;
    println!("stint-bench --instructions: instructions per mint, counted by callgrind");
    println!(
        "broker: {} --dev under valgrind --tool=callgrind; {mints} then {} mints over {CONNECTIONS} connections",
        stintd.display(),
        2 * mints
    );
    if cfg!(debug_assertions) {
        println!("WARNING: this is a debug build of the load side; the broker is what is counted.");
    }
    let once = profile(&stintd, mints, None).await?;
    let twice = profile(&stintd, 2 * mints, keep).await?;
    let per_mint = (twice.total.saturating_sub(once.total)) as f64 / f64::from(mints);
    println!(
        "totals: {} instructions ({mints} mints), {} ({} mints)",
        group(once.total),
        group(twice.total),
        2 * mints
    );
    println!("instructions per mint: {per_mint:.0}\n");
    println!("where they go (inclusive, per mint):");
    for (label, symbols) in PARTS {
        let cost = symbols
            .iter()
            .map(|symbol| {
                let matching = |profile: &Profile| -> u64 {
                    profile
                        .inclusive
                        .iter()
                        .filter(|(name, _)| is(name, symbol))
                        .map(|(_, cost)| *cost)
                        .sum()
                };
                matching(&twice).saturating_sub(matching(&once))
            })
            .sum::<u64>() as f64
            / f64::from(mints);
        println!(
            "  {label:<56} {cost:>9.0}  ({:>4.1}%)",
            100.0 * cost / per_mint
        );
    }
    println!("\nthe {TOP} costliest functions (inclusive, per mint):");
    let mut growth: Vec<(&str, u64)> = twice
        .inclusive
        .iter()
        .map(|(name, cost)| {
            let before = once.inclusive.get(name).copied().unwrap_or(0);
            (name.as_str(), cost.saturating_sub(before))
        })
        .collect();
    growth.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    for (name, cost) in growth.into_iter().take(TOP) {
        let cost = cost as f64 / f64::from(mints);
        println!("  {cost:>9.0}  {}", shorten(name));
    }
    Ok(())
}

/// Whether callgrind's symbol `name` is `symbol`: equal, or `symbol`
/// followed by a generic argument list or a hash suffix.
fn is(name: &str, symbol: &str) -> bool {
    // callgrind_annotate names `file:function [object]`; keep the function.
    let function = name
        .split_once(':')
        .map_or(name, |(_, function)| function)
        .split(" [")
        .next()
        .unwrap_or_default()
        .trim();
    function == symbol
        || function
            .strip_prefix(symbol)
            .is_some_and(|rest| rest.starts_with('<') || rest.starts_with("::h"))
        || (symbol.contains('<') && function.contains(symbol))
        || (symbol.ends_with(">::parse") && function.contains(symbol))
}

fn shorten(name: &str) -> &str {
    let function = name.split_once(':').map_or(name, |(_, f)| f);
    function.get(..function.len().min(140)).unwrap_or(function)
}

/// What one profiled run counted.
struct Profile {
    total: u64,
    /// Inclusive instructions by `file:function [object]`.
    inclusive: HashMap<String, u64>,
}

/// Run the broker under callgrind for `mints` mints and read its profile.
async fn profile(stintd: &Path, mints: u32, keep: Option<&Path>) -> Result<Profile> {
    let data_dir = tempfile::Builder::new()
        .prefix("stint-instructions-")
        .tempdir()
        .context("creating a data directory")?;
    let out = data_dir.path().join("callgrind.out");
    let addr = free_loopback_addr()?;
    // A file, not a pipe: the broker logs every request, and a pipe no
    // one reads until the end would fill and stop it.
    let log_path = data_dir.path().join("stintd.log");
    let log = std::fs::File::create(&log_path).context("creating the broker's log")?;
    let unlimited = "1000000";
    let mut child = Command::new("valgrind")
        .arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(stintd)
        .arg("--dev")
        .arg("--no-console")
        .arg("--data-dir")
        .arg(data_dir.path().join("data"))
        .arg("--listen")
        .arg(addr.to_string())
        .args(["--token-rate-per-client", unlimited])
        .args(["--token-burst-per-client", unlimited])
        .args(["--token-rate-per-source", unlimited])
        .args(["--token-burst-per-source", unlimited])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting valgrind")?;
    let outcome = drive(&mut child, data_dir.path(), addr, mints).await;
    stop(&mut child, &log_path)?;
    outcome?;
    let total = read_total(&out)?;
    let inclusive = annotate(&out)?;
    if let Some(keep) = keep {
        std::fs::copy(&out, keep)
            .with_context(|| format!("copying the profile to {}", keep.display()))?;
        println!(
            "the profile of {mints} mints is in {} (callgrind_annotate reads it)",
            keep.display()
        );
    }
    Ok(Profile { total, inclusive })
}

/// Wait for the broker, then send `mints` mints; every one must succeed.
async fn drive(child: &mut Child, dir: &Path, addr: SocketAddr, mints: u32) -> Result<()> {
    let client_file = dir.join("data").join("dev-client.json");
    let started = Instant::now() + START_TIMEOUT;
    let client: DevClient = loop {
        if let Some(status) = child.try_wait()? {
            bail!("the broker exited at start under valgrind: {status}");
        }
        if let Ok(text) = std::fs::read_to_string(&client_file)
            && let Ok(client) = serde_json::from_str(&text)
            && tokio::net::TcpStream::connect(addr).await.is_ok()
        {
            break client;
        }
        ensure!(
            Instant::now() < started,
            "the broker did not start within {START_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let request = mint_request(&client, addr)?;
    let deadline = Instant::now() + MINT_TIMEOUT.max(Duration::from_millis(u64::from(mints) * 50));
    let per_connection = mints.div_ceil(CONNECTIONS as u32);
    let mut left = mints;
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        let share = per_connection.min(left);
        left -= share;
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let mut sender = load::connect(addr, deadline).await?;
            for _ in 0..share {
                let (status, body) = load::exchange(&mut sender, request.build(), deadline).await?;
                ensure!(
                    status == StatusCode::OK,
                    "a mint answered {status}: {}",
                    String::from_utf8_lossy(&body)
                );
            }
            anyhow::Ok(())
        }));
    }
    for task in tasks {
        task.await.context("a load task panicked")??;
    }
    Ok(())
}

fn mint_request(client: &DevClient, addr: SocketAddr) -> Result<RequestTemplate> {
    RequestTemplate::basic_form_post(
        addr,
        stint_proto::TOKEN_PATH,
        &client.client_id,
        &client.client_secret,
        MINT_FORM,
    )
}

/// SIGTERM (the broker's graceful stop), then wait for valgrind to write
/// the profile; SIGKILL if it will not stop.
fn stop(child: &mut Child, log: &Path) -> Result<()> {
    if child.try_wait()?.is_none() {
        let status = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .context("running kill")?;
        ensure!(status.success(), "kill -TERM failed");
    }
    let deadline = std::time::Instant::now() + STOP_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait()? {
            if status.success() {
                return Ok(());
            }
            let stderr = std::fs::read_to_string(log).unwrap_or_default();
            let tail: Vec<&str> = stderr.lines().rev().take(15).collect();
            bail!(
                "the broker exited with {status} under valgrind:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the broker did not stop within {STOP_TIMEOUT:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The `totals:` (or `summary:`) line of a callgrind profile.
fn read_total(out: &Path) -> Result<u64> {
    let text =
        std::fs::read_to_string(out).with_context(|| format!("reading {}", out.display()))?;
    text.lines()
        .find_map(|line| {
            line.strip_prefix("totals:")
                .or_else(|| line.strip_prefix("summary:"))
        })
        .and_then(|value| value.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no totals in {}", out.display()))
}

/// Every function's inclusive cost, from `callgrind_annotate --inclusive=yes`.
fn annotate(out: &Path) -> Result<HashMap<String, u64>> {
    let output = Command::new("callgrind_annotate")
        .args(["--inclusive=yes", "--threshold=100"])
        .arg(out)
        .output()
        .context("running callgrind_annotate")?;
    ensure!(
        output.status.success(),
        "callgrind_annotate failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(parse_annotation(&String::from_utf8_lossy(&output.stdout)))
}

/// Lines like `12,345,678 (12.34%)  src/x.rs:crate::f [/path/bin]` into
/// name and cost; a function named twice (one per object) is summed.
fn parse_annotation(text: &str) -> HashMap<String, u64> {
    let mut costs = HashMap::new();
    for line in text.lines() {
        let line = line.trim_start();
        let Some((count, rest)) = line.split_once(' ') else {
            continue;
        };
        let Ok(count) = count.replace(',', "").parse::<u64>() else {
            continue;
        };
        let rest = rest.trim_start();
        let rest = match rest.strip_prefix('(') {
            Some(after) => after.split_once(')').map_or(after, |(_, name)| name),
            None => rest,
        };
        let name = rest.trim();
        if name.is_empty() || name.starts_with("PROGRAM TOTALS") {
            continue;
        }
        *costs.entry(name.to_owned()).or_insert(0) += count;
    }
    costs
}

fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn stintd_path() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let path = exe
        .parent()
        .map(|dir| dir.join("stintd"))
        .context("this executable has no directory")?;
    ensure!(
        path.is_file(),
        "{} is missing: build it first (cargo build --release -p stintd)",
        path.display()
    );
    Ok(path)
}

/// Whether `program` is an executable file on `PATH`.
fn which(program: &str) -> Result<()> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).any(|dir| dir.join(program).is_file());
    ensure!(found, "{program} not found on PATH");
    Ok(())
}

fn free_loopback_addr() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(listener.local_addr()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotation_lines_are_read_with_their_costs() {
        let text = "\
--------------------------------------------------------------------------------
Ir                      file:function
--------------------------------------------------------------------------------
45,678,901 (100.0%)  PROGRAM TOTALS
1,234,567 (12.34%)  src/token.rs:stint_server::http::token::token::{{closure}} [/t/stintd]
    9,876 ( 0.01%)  ???:malloc [/usr/lib/libc.so.6]
      100  ???:free [/usr/lib/libc.so.6]
";
        let costs = parse_annotation(text);
        assert_eq!(
            costs.get("src/token.rs:stint_server::http::token::token::{{closure}} [/t/stintd]"),
            Some(&1_234_567)
        );
        assert_eq!(costs.get("???:malloc [/usr/lib/libc.so.6]"), Some(&9_876));
        assert_eq!(costs.get("???:free [/usr/lib/libc.so.6]"), Some(&100));
        assert_eq!(costs.len(), 3);
    }

    #[test]
    fn symbols_match_with_generics_or_hash_but_not_prefixes() {
        let name = "src/x.rs:stint_core::decision::decide [/t/stintd]";
        assert!(is(name, "stint_core::decision::decide"));
        assert!(is(
            "src/x.rs:stint_core::decision::decide<F> [/t/stintd]",
            "stint_core::decision::decide"
        ));
        assert!(!is(
            "src/x.rs:stint_core::decision::decide_more [/t/stintd]",
            "stint_core::decision::decide"
        ));
        assert!(is("???:malloc [/usr/lib/libc.so.6]", "malloc"));
        assert!(!is("???:malloc_usable_size [/usr/lib/libc.so.6]", "malloc"));
    }

    #[test]
    fn numbers_are_grouped_by_thousands() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1_234_567), "1,234,567");
    }
}
