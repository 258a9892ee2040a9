//! `stint policy suggest`: the audit log's evidence against the policy
//! file, and the narrowed policy it supports. Offline: files in, report
//! out. The chain is verified as it is read, and a broken one is refused
//! before anything is reported.

use crate::output::{self, Stdout};
use crate::{EXIT_FAILURE, Failure};
use clap::{Args, ValueEnum};
use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use stint_core::audit::{MAX_RECORD_LEN, Verifier};
use stint_core::chrono::{DateTime, Utc};
use stint_core::jose::{KeySet, VerifyingKey};
use stint_core::policy::{MAX_POLICY_LEN, Policy};
use stint_evidence::{Observations, Report, Settings, Status};

/// Exit code: a `--fail-on` finding was made.
pub(crate) const EXIT_FINDING: u8 = 6;
/// The largest JWKS file read.
const MAX_JWKS_LEN: u64 = 1024 * 1024;

/// What to print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// A table for people.
    Table,
    /// The report as JSON, for CI.
    Json,
    /// A unified diff of the policy file with the proposal applied.
    Diff,
}

/// A finding that fails the command (`--fail-on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum FailOn {
    /// A pattern no run was granted in the window.
    Unused,
    /// A wildcard that matched only a few scopes.
    Narrow,
    /// A policy change in the window that widened a step.
    Drift,
    /// A workflow past its review_by.
    Overdue,
}

#[derive(Debug, Args)]
pub(crate) struct SuggestArgs {
    #[command(flatten)]
    evidence: EvidenceArgs,
    /// What to print.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
    /// Exit 6 if the report finds this (repeatable): a gate for CI.
    #[arg(long = "fail-on", value_enum, value_name = "FINDING")]
    fail_on: Vec<FailOn>,
}

#[derive(Debug, Args)]
pub(crate) struct ReviewArgs {
    #[command(flatten)]
    evidence: EvidenceArgs,
    /// The workflow to recertify.
    #[arg(long, value_name = "NAME")]
    workflow: String,
}

/// The evidence both commands read, and how it is judged.
#[derive(Debug, Args)]
pub(crate) struct EvidenceArgs {
    /// The policy file to propose a change to.
    #[arg(long, value_name = "FILE")]
    policy: PathBuf,
    /// The audit log (`audit.jsonl`); repeat for rotated files, oldest
    /// first, as the chain runs.
    #[arg(
        long = "audit",
        value_name = "FILE",
        required_unless_present = "chains"
    )]
    audits: Vec<PathBuf>,
    /// A chain of its own, whole from its first record (one broker's chain
    /// of a PostgreSQL store, from `stintd --store URL export-audit DIR`);
    /// repeat for each broker's.
    #[arg(long = "chain", value_name = "FILE")]
    chains: Vec<PathBuf>,
    /// The broker's JWKS (saved from /.well-known/jwks.json) to verify
    /// checkpoint signatures with; without it the chain's links are still
    /// verified, not who signed it.
    #[arg(long, value_name = "FILE")]
    jwks: Option<PathBuf>,
    /// The time the report is as of, RFC 3339 [default: now].
    #[arg(long, value_name = "TIME", value_parser = parse_time)]
    now: Option<DateTime<Utc>>,
    /// Days of the log looked at, back from --now.
    #[arg(long, value_name = "DAYS", default_value_t = 90, value_parser = clap::value_parser!(u32).range(1..=3660))]
    window: u32,
    /// Fewer runs (jobs) of a step than this since a pattern's observation
    /// began: no proposal for it.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    min_runs: u64,
    /// A pattern observed for fewer days than this (it is new, or the
    /// window is short): no proposal.
    #[arg(long, value_name = "DAYS", default_value_t = 30)]
    min_days: u32,
    /// A wildcard that matched at most this many concrete scopes is
    /// proposed as those scopes.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=64))]
    narrow_at_most: u64,
    /// An elevated scope approved at least this often is shown as a
    /// candidate for the step's own scopes (never proposed).
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u64).range(1..=1000))]
    promote_after: u64,
    /// A pattern marked for removal (shadow) that no mint needed for this
    /// many days (over at least --min-runs runs) is proposed removed.
    #[arg(long, value_name = "DAYS", default_value_t = 14, value_parser = clap::value_parser!(u32).range(1..=3660))]
    quiet_days: u32,
}

fn parse_time(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("not an RFC 3339 time such as 2027-01-31T00:00:00Z: {e}"))
}

fn failure(message: String) -> Failure {
    Failure::new(EXIT_FAILURE, message)
}

fn read_limited(path: &Path, limit: u64) -> Result<String, Failure> {
    use std::io::Read as _;
    let file = std::fs::File::open(path)
        .map_err(|e| failure(format!("cannot read {}: {e}", path.display())))?;
    let mut text = String::new();
    file.take(limit + 1)
        .read_to_string(&mut text)
        .map_err(|e| failure(format!("cannot read {}: {e}", path.display())))?;
    if text.len() as u64 > limit {
        return Err(failure(format!(
            "{} is larger than {limit} bytes",
            path.display()
        )));
    }
    Ok(text)
}

fn trusted_keys(path: Option<&Path>) -> Result<KeySet, Failure> {
    let mut keys = KeySet::new();
    let Some(path) = path else {
        return Ok(keys);
    };
    let text = read_limited(path, MAX_JWKS_LEN)?;
    let set: stint_proto::jwk::JwkSet = serde_json::from_str(&text)
        .map_err(|e| failure(format!("{} is not a JWKS: {e}", path.display())))?;
    for jwk in &set.keys {
        let key = VerifyingKey::from_jwk(jwk)
            .map_err(|e| failure(format!("{}: a key cannot be used: {e}", path.display())))?;
        keys.insert(key);
    }
    Ok(keys)
}

/// What verifying the chains found, for the summary line.
#[derive(Default)]
struct Verified {
    records: u64,
    verified_checkpoints: u64,
    unverified_checkpoints: u64,
    unsigned: u64,
    continues: bool,
}

/// Verify each chain (`--audit`'s files, then each `--chain`) and observe
/// every record, in one pass over each file.
fn observe(
    args: &EvidenceArgs,
    keys: KeySet,
    settings: &Settings,
) -> Result<(Observations, Verified), Failure> {
    let mut observations = Observations::new(settings.now, settings.window_days);
    let mut verified = Verified::default();
    let mut chains: Vec<(&[PathBuf], bool)> = Vec::new();
    if !args.audits.is_empty() {
        chains.push((&args.audits, false));
    }
    chains.extend(args.chains.iter().map(|c| (std::slice::from_ref(c), true)));
    for (paths, whole) in chains {
        let mut verifier = Verifier::new(keys.clone());
        for path in paths {
            observe_file(path, &mut verifier, &mut observations)?;
        }
        let report = verifier.report();
        if whole && (report.first_seq != 0 || report.continues_from.is_some()) {
            return Err(failure(format!(
                "{}: the chain begins at record {}, not at its first: nothing is suggested from part of a chain",
                paths[0].display(),
                report.first_seq
            )));
        }
        verified.records += report.records;
        verified.verified_checkpoints += report.verified_checkpoints;
        verified.unverified_checkpoints += report.unverified_checkpoints;
        verified.unsigned += report.unsigned;
        verified.continues |= report.continues_from.is_some();
    }
    Ok((observations, verified))
}

fn observe_file(
    path: &Path,
    verifier: &mut Verifier,
    observations: &mut Observations,
) -> Result<(), Failure> {
    let file = std::fs::File::open(path)
        .map_err(|e| failure(format!("cannot read {}: {e}", path.display())))?;
    let mut reader = std::io::BufReader::with_capacity(256 * 1024, file);
    verifier.begin_file();
    let mut line = Vec::new();
    let mut number = 0u64;
    loop {
        line.clear();
        let read = std::io::Read::take(&mut reader, MAX_RECORD_LEN as u64 + 1)
            .read_until(b'\n', &mut line)
            .map_err(|e| failure(format!("cannot read {}: {e}", path.display())))?;
        if read == 0 {
            return Ok(());
        }
        number += 1;
        if line.last() != Some(&b'\n') {
            return Err(failure(format!(
                "{}: line {number} is incomplete or longer than {MAX_RECORD_LEN} bytes: the chain cannot be verified, so nothing is suggested",
                path.display()
            )));
        }
        line.pop();
        verifier.line(&line, number).map_err(|error| {
            failure(format!(
                "{}: chain broken: {error}; nothing is suggested from a log that does not verify",
                path.display()
            ))
        })?;
        observations
            .line(&line)
            .map_err(|e| failure(format!("{}: {e}", path.display())))?;
    }
}

/// The policy, its text, and the analysed evidence.
struct Evidence {
    source: String,
    text: String,
    policy: Policy,
    settings: Settings,
    observations: Observations,
    report: Report,
}

fn evidence(args: &EvidenceArgs, now: DateTime<Utc>) -> Result<Evidence, Failure> {
    let source = args.policy.display().to_string();
    let text = read_limited(&args.policy, MAX_POLICY_LEN as u64)?;
    let policy = Policy::parse(&source, &text).map_err(|errors| failure(errors.to_string()))?;
    let mut settings = Settings::new(args.now.unwrap_or(now));
    settings.window_days = args.window;
    settings.min_runs = args.min_runs;
    settings.min_days = args.min_days;
    settings.narrow_at_most = usize::try_from(args.narrow_at_most).unwrap_or(usize::MAX);
    settings.promote_after = usize::try_from(args.promote_after).unwrap_or(usize::MAX);
    settings.quiet_days = args.quiet_days;
    let keys = trusted_keys(args.jwks.as_deref())?;
    let (observations, chain) = observe(args, keys, &settings)?;
    let mut report = stint_evidence::analyse(&policy, &observations, &settings);
    report.verification = Some(stint_evidence::Verification {
        records: chain.records,
        keys_given: args.jwks.is_some(),
        trusted_checkpoints: chain.verified_checkpoints,
        untrusted_checkpoints: chain.unverified_checkpoints,
        unsigned_records: chain.unsigned,
    });
    output::stderr_line(format_args!(
        "stint: audit chain verified: {} records, {} checkpoints signed by a trusted key, {} by keys not given (--jwks){}",
        chain.records,
        chain.verified_checkpoints,
        chain.unverified_checkpoints,
        if chain.continues {
            "; the first file continues one not given"
        } else {
            ""
        }
    ));
    Ok(Evidence {
        source,
        text,
        policy,
        settings,
        observations,
        report,
    })
}

/// `stint policy review`: the Markdown evidence block of one workflow.
pub(crate) fn review(
    out: &mut Stdout,
    args: &ReviewArgs,
    now: DateTime<Utc>,
) -> Result<u8, Failure> {
    let evidence = evidence(&args.evidence, now)?;
    let workflow = evidence.policy.workflow(&args.workflow).ok_or_else(|| {
        failure(format!(
            "{} has no workflow named {:?}",
            evidence.source, args.workflow
        ))
    })?;
    out.line(
        stint_evidence::review_markdown(
            workflow,
            &evidence.report,
            &evidence.observations,
            evidence.settings.now.date_naive(),
        )
        .trim_end(),
    );
    Ok(0)
}

pub(crate) fn run(out: &mut Stdout, args: &SuggestArgs, now: DateTime<Utc>) -> Result<u8, Failure> {
    let Evidence {
        source,
        text,
        report,
        ..
    } = evidence(&args.evidence, now)?;
    match args.format {
        Format::Table => out.line(stint_evidence::table(&report).trim_end()),
        Format::Json => out.json(&report)?,
        Format::Diff => {
            let proposed = stint_evidence::propose(&source, &text, &report)
                .map_err(|e| failure(e.to_string()))?;
            let name = args
                .evidence
                .policy
                .file_name()
                .map_or_else(|| source.clone(), |n| n.to_string_lossy().into_owned());
            let diff = stint_evidence::unified_diff(&name, &text, &proposed);
            // As it is (a context line may be a lone space), less the
            // newline `line` adds back.
            if let Some(diff) = diff.strip_suffix('\n') {
                out.line(diff);
            }
        }
    }
    Ok(if fails(&report, &args.fail_on) {
        EXIT_FINDING
    } else {
        0
    })
}

fn fails(report: &Report, fail_on: &[FailOn]) -> bool {
    fail_on.iter().any(|kind| match kind {
        FailOn::Unused => has(report, Status::Unused),
        FailOn::Narrow => has(report, Status::Narrow),
        FailOn::Drift => !report.drift.is_empty(),
        FailOn::Overdue => !report.overdue.is_empty(),
    })
}

fn has(report: &Report, status: Status) -> bool {
    report
        .steps
        .iter()
        .flat_map(|s| &s.patterns)
        .any(|p| p.status == status)
}
