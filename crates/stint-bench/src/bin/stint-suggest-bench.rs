//! `stint-suggest-bench`: `stint policy suggest` over a generated audit log
//! of `--records` (1,000,000) records, chained as the broker chains them:
//! wall time and peak memory, next to the targets (under 10 s, under
//! 500 MB).
//!
//! The log: one policy load (100 workflows of 5 steps, 3 patterns each)
//! 120 days before `--now`, then mints over the 90-day window, about ten
//! per job, each with one or two concrete scopes, and one denial in
//! twenty. The `stint` binary runs as a child; its peak resident set is
//! read from `/proc/PID/status` (`VmHWM`, the kernel's own high-water mark)
//! every 2 ms while it runs, the last reading before it exits being the
//! figure. Medians of `--runs` (3).
//!
//! `cargo build --release -p stint-cli -p stint-bench && target/release/stint-suggest-bench`

use anyhow::{Context as _, Result, bail};
use clap::Parser;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};
use stint_core::audit::{AuditEntry, Chain, Decision, EventKind};
use stint_core::chrono::{DateTime, SecondsFormat, Utc};
use stint_core::policy::Policy;

const TARGET_SECONDS: f64 = 10.0;
const TARGET_MB: f64 = 500.0;
const NOW: &str = "2027-01-31T00:00:00Z";
const WORKFLOWS: usize = 100;
const STEPS: usize = 5;

#[derive(Debug, Parser)]
#[command(name = "stint-suggest-bench", about)]
struct Cli {
    /// Records in the generated log.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=20_000_000))]
    records: u64,
    /// Runs of `stint policy suggest`; the report gives the medians.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=20))]
    runs: u32,
    /// The stint binary [default: beside this executable].
    #[arg(long, value_name = "PATH")]
    stint: Option<PathBuf>,
    /// Where the log is written [default: the directory of this
    /// executable].
    #[arg(long, value_name = "DIR")]
    data_in: Option<PathBuf>,
    /// Exit 1 if a median misses its target.
    #[arg(long)]
    check: bool,
}

fn policy_text() -> String {
    let mut text = String::from("# generated for stint-suggest-bench\n");
    text.push_str(&format!(
        "[workloads.bench]\nsecret_sha256 = \"{}\"\nworkflows = [{}]\n\n",
        "0".repeat(64),
        (0..WORKFLOWS)
            .map(|w| format!("\"wf{w}\""))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    for w in 0..WORKFLOWS {
        text.push_str(&format!("[workflows.wf{w}]\nreview_by = 2030-01-01\n\n"));
        for s in 0..STEPS {
            text.push_str(&format!(
                "[workflows.wf{w}.steps.s{s}]\nscopes = [\"read:sys{w}/data/**\", \"write:sys{w}/out/*\", \"read:sys{w}/unused\"]\n\n"
            ));
        }
    }
    text
}

/// A small, fixed pseudo-random sequence (the log is the same every run).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

fn generate(path: &Path, records: u64, policy: &Policy) -> Result<u64> {
    let now = DateTime::parse_from_rfc3339(NOW)?.with_timezone(&Utc);
    let file = std::fs::File::create(path)?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut chain = Chain::genesis();
    let mut bytes = Vec::with_capacity(4096);
    let mut write =
        |entry: &AuditEntry, out: &mut std::io::BufWriter<std::fs::File>| -> Result<()> {
            bytes.clear();
            chain.append(&entry.encode()?, &mut bytes);
            out.write_all(&bytes)?;
            Ok(())
        };
    let time = |seconds_before: i64| {
        (now - stint_core::chrono::Duration::seconds(seconds_before))
            .to_rfc3339_opts(SecondsFormat::Millis, true)
    };
    let mut load = AuditEntry::new(time(120 * 86_400), EventKind::PolicyLoaded, Decision::Allow);
    load.policy_sha256 = Some(policy.digest().to_owned());
    load.allows = policy.allowances();
    write(&load, &mut out)?;
    let mut rng = Lcg(0x5eed);
    let window = 90 * 86_400u64;
    for n in 1..records {
        let before = i64::try_from(window - window * n / records).unwrap_or(0);
        let (w, s) = (rng.next(WORKFLOWS as u64), rng.next(STEPS as u64));
        let job = format!("job-{}", n / 10);
        let mut entry = if rng.next(20) == 0 {
            let mut denied = AuditEntry::new(time(before), EventKind::TokenDenied, Decision::Deny);
            denied.reason = Some("scope_not_allowed".into());
            denied.step = Some(format!("wf{w}/s{s}"));
            denied.scopes = vec![format!("delete:sys{w}/data/{}", rng.next(50))];
            denied
        } else {
            let mut mint = AuditEntry::new(time(before), EventKind::TokenMinted, Decision::Allow);
            mint.workflow = Some(format!("wf{w}"));
            mint.step = Some(format!("s{s}"));
            mint.scopes = vec![format!("read:sys{w}/data/t{}", rng.next(40))];
            if rng.next(2) == 0 {
                mint.scopes
                    .push(format!("write:sys{w}/out/o{}", rng.next(3)));
            }
            mint.jti = Some(format!("{n:022x}"));
            mint.exp = Some(1_800_000_000);
            mint
        };
        entry.job = Some(job);
        entry.sub = Some("bench".into());
        entry.client_id = Some("bench".into());
        entry.client_addr = Some("127.0.0.1:40000".into());
        entry.request_id = Some(format!("{n:016x}"));
        write(&entry, &mut out)?;
    }
    out.flush()?;
    Ok(std::fs::metadata(path)?.len())
}

/// The `VmHWM` of `pid` in kB, if it is still there.
fn high_water_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
}

fn run_once(stint: &Path, policy: &Path, audit: &Path) -> Result<(Duration, f64)> {
    let started = Instant::now();
    let mut child = Command::new(stint)
        .args([
            "policy", "suggest", "--now", NOW, "--format", "json", "--policy",
        ])
        .arg(policy)
        .arg("--audit")
        .arg(audit)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", stint.display()))?;
    let pid = child.id();
    let mut peak_kb = 0;
    let deadline = started + Duration::from_secs(600);
    let status = loop {
        if let Some(kb) = high_water_kb(pid) {
            peak_kb = peak_kb.max(kb);
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            bail!("stint policy suggest ran for over 600 s");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let elapsed = started.elapsed();
    if !status.success() {
        let mut stderr = String::new();
        if let Some(mut pipe) = child.stderr.take() {
            use std::io::Read as _;
            let _ = pipe.read_to_string(&mut stderr);
        }
        bail!("stint policy suggest failed ({status}): {stderr}");
    }
    Ok((elapsed, peak_kb as f64 / 1024.0))
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() -> Result<ExitCode> {
    let cli = Cli::parse();
    let here = std::env::current_exe()?
        .parent()
        .context("this executable has no directory")?
        .to_path_buf();
    let stint = cli.stint.clone().unwrap_or_else(|| here.join("stint"));
    if !stint.is_file() {
        bail!(
            "{} not found: build it (cargo build --release -p stint-cli) or give --stint",
            stint.display()
        );
    }
    let dir = tempfile::Builder::new()
        .prefix("stint-suggest-bench-")
        .tempdir_in(cli.data_in.clone().unwrap_or(here))?;
    let policy_path = dir.path().join("policy.toml");
    let text = policy_text();
    std::fs::write(&policy_path, &text)?;
    let policy = Policy::parse("policy.toml", &text).map_err(|e| anyhow::anyhow!("{e}"))?;
    let audit = dir.path().join("audit.jsonl");
    let generating = Instant::now();
    let size = generate(&audit, cli.records, &policy)?;
    println!(
        "stint-suggest-bench: {} records ({:.0} MB) generated in {:.1} s; {} workflows x {} steps x 3 patterns",
        cli.records,
        size as f64 / 1e6,
        generating.elapsed().as_secs_f64(),
        WORKFLOWS,
        STEPS
    );
    let (mut times, mut peaks) = (Vec::new(), Vec::new());
    for run in 1..=cli.runs {
        let (elapsed, peak) = run_once(&stint, &policy_path, &audit)?;
        println!(
            "run {run}/{}: {:.2} s, peak RSS {:.0} MB",
            cli.runs,
            elapsed.as_secs_f64(),
            peak
        );
        times.push(elapsed.as_secs_f64());
        peaks.push(peak);
    }
    let (time, peak) = (median(times), median(peaks));
    let met = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "\nmedian of {} runs: {:.2} s ({:.0} records/s)   target < {TARGET_SECONDS} s: {}",
        cli.runs,
        time,
        cli.records as f64 / time,
        met(time < TARGET_SECONDS)
    );
    println!(
        "peak RSS: {peak:.0} MB   target < {TARGET_MB} MB: {}",
        met(peak < TARGET_MB)
    );
    if cli.check && !(time < TARGET_SECONDS && peak < TARGET_MB) {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
