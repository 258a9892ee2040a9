//! Proposals in the corners a review found: a narrowed scope that is also
//! listed (and removed) on its own, an expired keep, a step that runs by
//! elevation alone.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use stint_core::audit::{AuditEntry, Decision, EventKind};
use stint_core::chrono::{DateTime, Duration, SecondsFormat, Utc};
use stint_core::policy::Policy;
use stint_core::scope::{Scope, covered};
use stint_evidence::{Observations, Settings, Status, analyse, propose};

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2027-01-31T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn at(days_ago: i64) -> String {
    (now() - Duration::days(days_ago)).to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn policy(step: &str) -> String {
    format!(
        "[workloads.w]\nsecret_sha256 = \"{}\"\nworkflows = [\"wf\"]\n\n[workflows.wf]\nreview_by = 2030-01-01\n\n[workflows.wf.steps.s]\n{step}\n\n[workflows.wf.steps.t]\nscopes = [\"read:t\"]\n",
        "0".repeat(64)
    )
}

/// The policy loaded 60 days ago, then ten runs of step `s` over the last
/// 30 days, each granted `scopes` (under an approval if `approved`).
fn propose_for(text: &str, scopes: &[&str], approved: bool) -> (stint_evidence::Report, String) {
    let policy = Policy::parse("p.toml", text).unwrap();
    let step = policy.workflow("wf").and_then(|w| w.step("s")).unwrap();
    let mut observations = Observations::new(now(), 90);
    let mut load = AuditEntry::new(at(60), EventKind::PolicyLoaded, Decision::Allow);
    load.allows = policy.allowances();
    load.shadows = Some(policy.shadow_map());
    observations
        .line(&serde_json::to_vec(&load).unwrap())
        .unwrap();
    for run in 0..10 {
        let mut mint = AuditEntry::new(at(30 - 3 * run), EventKind::TokenMinted, Decision::Allow);
        mint.workflow = Some("wf".into());
        mint.step = Some("s".into());
        mint.job = Some(format!("job-{run}"));
        let parsed: Vec<Scope> = scopes.iter().map(|s| Scope::parse(s).unwrap()).collect();
        mint.would_deny = step.review().would_deny(step.scopes(), &parsed);
        mint.scopes = scopes.iter().map(|s| (*s).to_owned()).collect();
        if approved {
            mint.approval_id = Some(format!("apr-{run}"));
        }
        observations
            .line(&serde_json::to_vec(&mint).unwrap())
            .unwrap();
    }
    let report = analyse(&policy, &observations, &Settings::new(now()));
    let proposed = propose("p.toml", text, &report).unwrap();
    (report, proposed)
}

fn grants(text: &str, scope: &str) -> bool {
    let policy = Policy::parse("p.toml", text).unwrap();
    let step = policy.workflow("wf").and_then(|w| w.step("s")).unwrap();
    covered(step.scopes(), &Scope::parse(scope).unwrap())
}

#[test]
fn a_narrowed_scope_survives_the_removal_of_the_same_scope_listed_alone() {
    // read:a/x is marked for removal and covered by read:a/*: no mint
    // needed the mark, so it is unused; read:a/* is narrowed to it.
    let text = policy("scopes = [\"read:a/*\", \"read:a/x\"]\nshadow = [\"read:a/x\"]");
    let (report, proposed) = propose_for(&text, &["read:a/x"], false);
    let statuses: Vec<Status> = report
        .steps
        .iter()
        .find(|s| s.step == "s")
        .unwrap()
        .patterns
        .iter()
        .map(|p| p.status)
        .collect();
    assert_eq!(statuses, [Status::Narrow, Status::Unused]);
    assert!(grants(&proposed, "read:a/x"), "{proposed}");
    assert!(!grants(&proposed, "read:a/y"), "{proposed}");
    assert!(!proposed.contains("shadow"), "{proposed}");
}

#[test]
fn an_expired_keep_goes_with_its_pattern() {
    let text = policy(
        "scopes = [\"read:a/x\", \"read:b\"]\nkeep = [{ scope = \"read:b\", reason = \"once a year\", until = 2026-12-31 }]",
    );
    let (report, proposed) = propose_for(&text, &["read:a/x"], false);
    let b = &report
        .steps
        .iter()
        .find(|s| s.step == "s")
        .unwrap()
        .patterns[1];
    assert_eq!(b.status, Status::Unused, "{}", b.note);
    assert!(
        b.note.contains("its keep expired on 2026-12-31"),
        "{}",
        b.note
    );
    assert!(!proposed.contains("keep"), "{proposed}");
    assert!(grants(&proposed, "read:a/x"));
    assert!(!grants(&proposed, "read:b"));
}

#[test]
fn a_step_that_runs_by_elevation_alone_is_not_removed() {
    let text = policy(
        "scopes = [\"read:a/x\"]\n[workflows.wf.steps.s.elevation]\nscopes = [\"write:a/*\"]\napprover_groups = [\"sre\"]\nmax_duration = \"10m\"\nmax_wait = \"5m\"\n[operators.o]\ngroups = [\"sre\"]\nkey_sha256 = \"0000000000000000000000000000000000000000000000000000000000000000\"",
    );
    let (report, proposed) = propose_for(&text, &["write:a/y"], true);
    let x = &report
        .steps
        .iter()
        .find(|s| s.step == "s")
        .unwrap()
        .patterns[0];
    assert_eq!(x.status, Status::Unused);
    assert_eq!(x.proposal, None, "{}", x.note);
    assert!(x.note.contains("remove the step by hand"), "{}", x.note);
    assert_eq!(proposed, text, "nothing changed");
}
