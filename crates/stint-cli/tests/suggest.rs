//! `stint policy suggest` on a synthetic audit log, chained as the broker
//! chains it: the table, the JSON, the diff and the exit codes, exactly.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::{Command, Output};
use stint_core::audit::{AuditEntry, Chain, Decision, EventKind};
use stint_core::chrono::{DateTime, Duration, SecondsFormat, Utc};
use stint_core::policy::Policy;

const NOW: &str = "2027-01-31T00:00:00Z";

const POLICY: &str = r#"# The CRM sync.
[workloads.etl]
secret_sha256 = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"
workflows = ["crm-sync"]

[workflows.crm-sync]
review_by = 2027-06-30

# Extract reads the CRM.
[workflows.crm-sync.steps.extract]
scopes = [
    "read:crm/accounts/**", # every account
    "read:crm/contacts/**",
    "read:crm/leads",
    "read:crm/notes",
]

[workflows.crm-sync.steps.archive]
cadence = "quarterly"
scopes = ["write:archive/crm/*"]

[workflows.crm-sync.steps.legacy]
scopes = ["read:legacy/export"]
keep = [{ scope = "read:legacy/export", reason = "the year-end export", until = 2027-12-31 }]

[workflows.crm-sync.steps.unrun]
scopes = ["read:crm/reports"]
"#;

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(NOW)
        .unwrap()
        .with_timezone(&Utc)
}

fn at(days_ago: i64, seconds: i64) -> String {
    (now() - Duration::days(days_ago) + Duration::seconds(seconds))
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// What the policy allows, as a `policy_loaded` record lists it: with
/// `read:crm/notes` (the file as it is) or from before it was added.
fn allows(with_notes: bool) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut extract = vec![
        "read:crm/accounts/**",
        "read:crm/contacts/**",
        "read:crm/leads",
    ];
    if with_notes {
        extract.push("read:crm/notes");
    }
    [
        ("crm-sync/extract", extract),
        ("crm-sync/archive", vec!["write:archive/crm/*"]),
        ("crm-sync/legacy", vec!["read:legacy/export"]),
        ("crm-sync/unrun", vec!["read:crm/reports"]),
    ]
    .into_iter()
    .map(|(step, patterns)| {
        (
            step.to_owned(),
            patterns.into_iter().map(str::to_owned).collect(),
        )
    })
    .collect()
}

fn reviews() -> std::collections::BTreeMap<String, String> {
    [("crm-sync".to_owned(), "2027-06-30".to_owned())].into()
}

fn mint(time: String, step: &str, job: &str, scopes: &[&str]) -> AuditEntry {
    let mut entry = AuditEntry::new(time, EventKind::TokenMinted, Decision::Allow);
    entry.workflow = Some("crm-sync".into());
    entry.step = Some(step.into());
    entry.job = Some(job.into());
    entry.sub = Some("etl".into());
    entry.scopes = scopes.iter().map(|s| (*s).to_owned()).collect();
    entry
}

/// The log: a policy load 100 days ago without `read:crm/notes`, one 5
/// days ago with it (the file as it is), and 10 runs of extract, 6 of
/// archive, none of legacy and unrun.
fn records() -> Vec<AuditEntry> {
    let digest = Policy::parse("p", POLICY).unwrap().digest().to_owned();
    let mut records = Vec::new();
    let mut old = AuditEntry::new(at(100, 0), EventKind::PolicyLoaded, Decision::Allow);
    old.policy_sha256 = Some("0".repeat(64));
    old.allows = Some(allows(false));
    old.reviews = Some(reviews());
    records.push(old);
    for run in 0..10 {
        let contact = format!("read:crm/contacts/{}", run % 5);
        let account = if run % 2 == 0 {
            "read:crm/accounts/acme"
        } else {
            "read:crm/accounts/globex"
        };
        records.push(mint(
            at(80 - run * 7, 0),
            "extract",
            &format!("job-{run}"),
            &[account, &contact],
        ));
    }
    for run in 0..6 {
        records.push(mint(
            at(85 - run * 14, 60),
            "archive",
            &format!("archive-{run}"),
            &["write:archive/crm/2026"],
        ));
    }
    // Elevated three times for the same scope, under three approvals.
    for n in 0..3 {
        let mut elevated = mint(
            at(30 - n, 0),
            "extract",
            &format!("job-e{n}"),
            &["read:crm/accounts/acme", "delete:crm/accounts/acme"],
        );
        elevated.approval_id = Some(format!("appr-{n}"));
        records.push(elevated);
    }
    let mut approved = AuditEntry::new(at(30, 0), EventKind::ApprovalGranted, Decision::Allow);
    approved.step = Some("crm-sync/extract".into());
    approved.scopes = vec!["delete:crm/accounts/acme".into()];
    approved.operator = Some("alice".into());
    approved.approval_id = Some("appr-0".into());
    records.push(approved);
    let mut denied = AuditEntry::new(at(20, 0), EventKind::TokenDenied, Decision::Deny);
    denied.reason = Some("scope_not_allowed".into());
    denied.step = Some("crm-sync/extract".into());
    denied.scopes = vec!["write:crm/accounts/acme".into()];
    records.push(denied);
    let mut new = AuditEntry::new(at(5, 0), EventKind::PolicyLoaded, Decision::Allow);
    new.policy_sha256 = Some(digest);
    new.allows = Some(allows(true));
    // The step widened, and review_by stayed where it was.
    new.reviews = Some(reviews());
    records.push(new);
    records.push(mint(at(3, 0), "extract", "job-n", &["read:crm/notes"]));
    // After --now: not counted.
    records.push(mint(at(-1, 0), "extract", "job-late", &["read:crm/leads"]));
    records
}

fn chained(records: &[AuditEntry]) -> Vec<u8> {
    let mut chain = Chain::genesis();
    let mut bytes = Vec::new();
    for record in records {
        chain.append(&record.encode().unwrap(), &mut bytes);
    }
    bytes
}

struct Files {
    _dir: tempfile::TempDir,
    policy: PathBuf,
    audit: PathBuf,
}

fn files(audit: &[u8]) -> Files {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(&policy, POLICY).unwrap();
    let path = dir.path().join("audit.jsonl");
    std::fs::write(&path, audit).unwrap();
    Files {
        _dir: dir,
        policy,
        audit: path,
    }
}

fn suggest(files: &Files, extra: &[&str]) -> Output {
    policy_command(files, "suggest", extra)
}

fn review(files: &Files, workflow: &str) -> Output {
    policy_command(files, "review", &["--workflow", workflow])
}

fn policy_command(files: &Files, command: &str, extra: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_stint"))
        .args(["policy", command, "--now", NOW, "--policy"])
        .arg(&files.policy)
        .arg("--audit")
        .arg(&files.audit)
        .args(extra)
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[test]
fn the_table_says_what_each_pattern_was_granted_for() {
    let files = files(&chained(&records()));
    let output = suggest(&files, &[]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let expected = "\
policy suggest as of 2027-01-31T00:00:00Z over 90 days (from 2026-11-02T00:00:00Z): 25 records, 1 after that time ignored
note: the evidence is the grant (each token minted, from the audit log), not its use at the target: a scope granted and never exercised counts as used
log: hash chain of 25 records verified, checkpoint signatures not checked (no --jwks): someone who can rewrite the whole file could have

crm-sync/archive: 6 jobs
  write:archive/crm/*  insufficient      6 mints    1 scopes  last 2027-01-16T00:01:00Z  (observed for 90 days, less than two of the step's 92-day cycles)

crm-sync/extract: 14 jobs
  read:crm/accounts/**  narrow           13 mints    2 scopes  last 2027-01-14T00:00:00Z  -> read:crm/accounts/acme, read:crm/accounts/globex  (a wildcard that matched only 2 concrete scopes)
  read:crm/contacts/**  used             10 mints    5 scopes  last 2027-01-14T00:00:00Z
  read:crm/leads        unused            0 mints    0 scopes  last never  -> remove  (granted to none of 14 runs since 2026-11-02T00:00:00Z)
  read:crm/notes        insufficient      1 mints    1 scopes  last 2027-01-28T00:00:00Z  (observed for 5 days, fewer than --min-days 30)
  elevated delete:crm/accounts/acme in 3 approvals: a candidate for the step's own scopes (information only)

crm-sync/legacy: 0 jobs
  read:legacy/export  kept              0 mints    0 scopes  last never  (kept until 2027-12-31: the year-end export)

crm-sync/unrun: 0 jobs
  read:crm/reports  insufficient      0 mints    0 scopes  last never  (0 runs since 2026-11-02T00:00:00Z, fewer than --min-runs 5)

refused as outside their step (information only):
  crm-sync/extract write:crm/accounts/acme: 1 denials

policy changes that widened a step:
  2027-01-26T00:00:00Z crm-sync/extract: added read:crm/notes (review_by NOT moved); first granted since: read:crm/notes
";
    assert_eq!(stdout(&output), expected);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("audit chain verified: 25 records, 0 checkpoints"),
        "{stderr}"
    );
}

#[test]
fn the_diff_removes_the_unused_and_narrows_the_wildcard_keeping_the_layout() {
    let files = files(&chained(&records()));
    let output = suggest(&files, &["--format", "diff"]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let expected = r#"--- a/policy.toml
+++ b/policy.toml
@@ -9,9 +9,9 @@
 # Extract reads the CRM.
 [workflows.crm-sync.steps.extract]
 scopes = [
-    "read:crm/accounts/**", # every account
+    "read:crm/accounts/acme",
+    "read:crm/accounts/globex", # every account
     "read:crm/contacts/**",
-    "read:crm/leads",
     "read:crm/notes",
 ]
 
"#;
    assert_eq!(stdout(&output), expected);

    // The diff is of the proposal, which loads and grants nothing the
    // policy did not.
    let proposed = proposal(&chained(&records()));
    assert_eq!(
        stint_evidence::unified_diff("policy.toml", POLICY, &proposed),
        expected
    );
    let before = Policy::parse("before", POLICY).unwrap();
    let after = Policy::parse("after", &proposed).unwrap();
    for step in after.workflows().flat_map(|w| w.steps()) {
        let old = before
            .workflow(step.workflow())
            .and_then(|w| w.step(step.name()))
            .unwrap();
        for pattern in step.scopes() {
            // Kept as it was, or a concrete scope the policy granted.
            let granted = old.scopes().contains(pattern)
                || stint_core::scope::Scope::parse(pattern.as_str())
                    .is_ok_and(|scope| stint_core::scope::covered(old.scopes(), &scope));
            assert!(granted, "{pattern:?} is new");
        }
    }
}

/// What the library proposes for `log`, with the defaults.
fn proposal(log: &[u8]) -> String {
    let settings = stint_evidence::Settings::new(now());
    let mut observations = stint_evidence::Observations::new(now(), settings.window_days);
    for line in log.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        observations.line(line).unwrap();
    }
    let policy = Policy::parse("policy.toml", POLICY).unwrap();
    let report = stint_evidence::analyse(&policy, &observations, &settings);
    stint_evidence::propose("policy.toml", POLICY, &report).unwrap()
}

#[test]
fn json_and_the_ci_gate() {
    let files = files(&chained(&records()));
    let output = suggest(&files, &["--format", "json"]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let report: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(report["policy_loaded"], true);
    let extract = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"] == "extract")
        .unwrap();
    let statuses: Vec<&str> = extract["patterns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["narrow", "used", "unused", "insufficient"]);
    assert_eq!(
        extract["patterns"][0]["proposal"],
        serde_json::json!(["read:crm/accounts/acme", "read:crm/accounts/globex"])
    );
    assert_eq!(extract["patterns"][2]["proposal"], serde_json::json!([]));
    assert_eq!(
        report["needs"],
        serde_json::json!([{"step": "crm-sync/extract", "scope": "write:crm/accounts/acme", "denials": 1}])
    );

    assert_eq!(
        report["drift"],
        serde_json::json!([{
            "time": "2027-01-26T00:00:00Z",
            "step": "crm-sync/extract",
            "added": ["read:crm/notes"],
            "review_by_moved": false,
            "new_scopes": ["read:crm/notes"],
        }])
    );
    for (fail_on, code) in [("unused", 6), ("narrow", 6), ("drift", 6), ("overdue", 0)] {
        let output = suggest(&files, &["--fail-on", fail_on]);
        assert_eq!(output.status.code(), Some(code), "--fail-on {fail_on}");
    }
    // With a longer observation required of every pattern, nothing is
    // proposed, and the gate passes.
    let output = suggest(&files, &["--min-days", "200", "--fail-on", "unused"]);
    assert_eq!(output.status.code(), Some(0));
    let output = suggest(&files, &["--min-days", "200", "--format", "diff"]);
    assert_eq!(stdout(&output), "");
}

#[test]
fn a_broken_chain_is_refused_before_anything_is_said() {
    let bytes = chained(&records());
    let text = String::from_utf8(bytes).unwrap();
    // A mint's job rewritten in place: the chain no longer verifies.
    let tampered = text.replacen("\"job-3\"", "\"job-X\"", 1);
    assert_ne!(tampered, text);
    let files = files(tampered.as_bytes());
    let output = suggest(&files, &[]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert_eq!(stdout(&output), "");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("chain broken"), "{stderr}");
    assert!(stderr.contains("nothing is suggested"), "{stderr}");

    // A record removed: the same.
    let mut lines: Vec<&str> = text.lines().collect();
    lines.remove(4);
    let files = files_from_lines(&lines);
    let output = suggest(&files, &[]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert_eq!(stdout(&output), "");
}

fn files_from_lines(lines: &[&str]) -> Files {
    files((lines.join("\n") + "\n").as_bytes())
}

#[test]
fn review_writes_the_workflows_evidence_as_markdown() {
    let files = files(&chained(&records()));
    let output = review(&files, "crm-sync");
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let expected = r#"### Recertification evidence: workflow `crm-sync`

- `review_by`: 2027-06-30 (150 days left)
- evidence: the audit log from 2026-11-02T00:00:00Z to 2027-01-31T00:00:00Z (25 records); the evidence is the grant (each token minted, from the audit log), not its use at the target: a scope granted and never exercised counts as used
- log: hash chain of 25 records verified, checkpoint signatures not checked (no --jwks): someone who can rewrite the whole file could have

| step | pattern | status | mints | scopes | last use | proposal |
| --- | --- | --- | ---: | ---: | --- | --- |
| `archive` | `write:archive/crm/*` | insufficient (observed for 90 days, less than two of the step's 92-day cycles) | 6 | 1 | 2027-01-16T00:01:00Z |  |
| `extract` | `read:crm/accounts/**` | narrow (a wildcard that matched only 2 concrete scopes) | 13 | 2 | 2027-01-14T00:00:00Z | `read:crm/accounts/acme`, `read:crm/accounts/globex` |
| `extract` | `read:crm/contacts/**` | used | 10 | 5 | 2027-01-14T00:00:00Z |  |
| `extract` | `read:crm/leads` | unused (granted to none of 14 runs since 2026-11-02T00:00:00Z) | 0 | 0 | never | remove |
| `extract` | `read:crm/notes` | insufficient (observed for 5 days, fewer than --min-days 30) | 1 | 1 | 2027-01-28T00:00:00Z |  |
| `legacy` | `read:legacy/export` | kept (kept until 2027-12-31: the year-end export) | 0 | 0 | never |  |
| `unrun` | `read:crm/reports` | insufficient (0 runs since 2026-11-02T00:00:00Z, fewer than --min-runs 5) | 0 | 0 | never |  |

Elevations approved in the window:

| time | step | scopes | approved by | approval |
| --- | --- | --- | --- | --- |
| 2027-01-01T00:00:00Z | `crm-sync/extract` | `delete:crm/accounts/acme` | `alice` | `appr-0` |

Policy changes that widened a step:

- 2027-01-26T00:00:00Z `crm-sync/extract`: added `read:crm/notes` (**review_by not moved**)
"#;
    assert_eq!(stdout(&output), expected);
    // A workflow the policy does not have.
    let output = review(&files, "nope");
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("no workflow named \"nope\""));
}

/// Two brokers' chains (a PostgreSQL store's, exported): each verified
/// whole on its own, the evidence taken from both.
#[test]
fn chains_of_several_brokers_are_read_together() {
    let all = records();
    let (first, second) = all.split_at(all.len() / 2);
    let one = files(&chained(&all));
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    std::fs::write(&a, chained(first)).unwrap();
    std::fs::write(&b, chained(second)).unwrap();
    let run = |chains: &[&std::path::Path]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_stint"));
        command
            .args(["policy", "suggest", "--now", NOW, "--policy"])
            .arg(&one.policy);
        for chain in chains {
            command.arg("--chain").arg(chain);
        }
        command.output().unwrap()
    };
    let output = run(&[&a, &b]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    // The same findings as from one chain of the same records.
    assert_eq!(stdout(&output), stdout(&suggest(&one, &[])));

    // A chain without its first record is refused: its evidence would be
    // partial.
    let text = String::from_utf8(chained(second)).unwrap();
    let cut: Vec<&str> = text.lines().skip(1).collect();
    std::fs::write(&b, cut.join("\n") + "\n").unwrap();
    let output = run(&[&a, &b]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert_eq!(stdout(&output), "");
}

/// What the log holds is printed as text, never as terminal control; a
/// log that ends long before the report's time is said to.
#[test]
fn log_text_cannot_drive_the_terminal_and_a_stale_log_is_named() {
    let mut all = records();
    let mut denied = AuditEntry::new(at(2, 0), EventKind::TokenDenied, Decision::Deny);
    denied.reason = Some("scope_not_allowed".into());
    denied.step = Some("crm-sync/\u{1b}]0;owned\u{7}extract\u{202e}".into());
    denied.scopes = vec!["write:x".into()];
    all.push(denied);
    let files = files(&chained(&all));
    let output = suggest(&files, &[]);
    assert_eq!(output.status.code(), Some(0), "{output:?}");
    let table = stdout(&output);
    assert!(
        table.contains("crm-sync/?]0;owned?extract? write:x: 1 denials"),
        "{table}"
    );
    assert!(!table.contains(['\u{1b}', '\u{7}', '\u{202e}']));
    assert!(!table.contains("warning:"), "{table}");

    let later = Command::new(env!("CARGO_BIN_EXE_stint"))
        .args([
            "policy",
            "suggest",
            "--now",
            "2027-03-15T00:00:00Z",
            "--policy",
        ])
        .arg(&files.policy)
        .arg("--audit")
        .arg(&files.audit)
        .output()
        .unwrap();
    assert!(
        stdout(&later).contains(
            "warning: the log ends at 2027-02-01T00:00:00Z, 42 days before the report's time"
        ),
        "{}",
        stdout(&later)
    );
}
