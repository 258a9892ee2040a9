//! Staged removal: a pattern marked `shadow` is proposed removed only
//! after a quiet period with no mint that needed it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use stint_core::audit::{AuditEntry, Decision, EventKind};
use stint_core::chrono::{DateTime, Duration, SecondsFormat, Utc};
use stint_core::policy::Policy;
use stint_evidence::{Observations, Settings, Status, analyse, propose};

const POLICY: &str = r#"[workloads.w]
secret_sha256 = "0000000000000000000000000000000000000000000000000000000000000000"
workflows = ["wf"]

[workflows.wf]
review_by = 2030-01-01

[workflows.wf.steps.s]
scopes = ["read:a/*", "read:a/x"]
shadow = ["read:a/*"]
"#;

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2027-01-31T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

fn at(days_ago: i64) -> String {
    (now() - Duration::days(days_ago)).to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// A load `loaded` days ago (marked, or not yet), and ten runs over the
/// last 20 days granting `read:a/x`; `needed` days ago, if given, one run
/// needed the marked pattern.
fn finding(marked_days_ago: i64, needed: Option<i64>) -> (Status, String, bool) {
    let policy = Policy::parse("p.toml", POLICY).unwrap();
    let mut observations = Observations::new(now(), 90);
    let line =
        |o: &mut Observations, e: &AuditEntry| o.line(&serde_json::to_vec(e).unwrap()).unwrap();
    let mut before = AuditEntry::new(at(60), EventKind::PolicyLoaded, Decision::Allow);
    before.allows = policy.allowances();
    before.shadows = Some(Default::default());
    line(&mut observations, &before);
    let mut marked = AuditEntry::new(
        at(marked_days_ago),
        EventKind::PolicyLoaded,
        Decision::Allow,
    );
    marked.policy_sha256 = Some(policy.digest().to_owned());
    marked.allows = policy.allowances();
    marked.shadows = Some(policy.shadow_map());
    line(&mut observations, &marked);
    for run in 0..10 {
        let mut mint = AuditEntry::new(at(20 - 2 * run), EventKind::TokenMinted, Decision::Allow);
        mint.workflow = Some("wf".into());
        mint.step = Some("s".into());
        mint.job = Some(format!("job-{run}"));
        mint.scopes = vec!["read:a/x".into()];
        line(&mut observations, &mint);
    }
    if let Some(days_ago) = needed {
        let mut mint = AuditEntry::new(at(days_ago), EventKind::TokenMinted, Decision::Allow);
        mint.workflow = Some("wf".into());
        mint.step = Some("s".into());
        mint.job = Some("job-needed".into());
        mint.scopes = vec!["read:a/y".into()];
        mint.would_deny = vec!["read:a/y".into()];
        line(&mut observations, &mint);
    }
    let mut settings = Settings::new(now());
    settings.min_days = 0;
    let report = analyse(&policy, &observations, &settings);
    let p = report.steps[0]
        .patterns
        .iter()
        .find(|p| p.pattern == "read:a/*")
        .unwrap()
        .clone();
    let proposed = propose("p.toml", POLICY, &report).unwrap();
    (p.status, p.note, proposed.contains("\"read:a/*\""))
}

#[test]
fn a_marked_pattern_is_removed_only_after_a_quiet_period_with_no_mint_that_needed_it() {
    // Marked 30 days ago, nothing needed it since: removed.
    let (status, note, still_there) = finding(30, None);
    assert_eq!(status, Status::Unused, "{note}");
    assert!(!still_there);
    assert!(
        note.contains("no mint needed it in 30 days and 10 runs"),
        "{note}"
    );

    // A mint needed it 5 days ago: kept marked, no proposal.
    let (status, note, still_there) = finding(30, Some(5));
    assert_eq!(status, Status::Shadow, "{note}");
    assert!(still_there);
    assert!(note.contains("1 mints needed it since"), "{note}");

    // Needed before it was marked: that does not count against the quiet
    // period.
    let (status, note, _) = finding(30, Some(40));
    assert_eq!(status, Status::Unused, "{note}");

    // Marked 10 days ago: the 14-day quiet period has not passed.
    let (status, note, still_there) = finding(10, None);
    assert_eq!(status, Status::Shadow, "{note}");
    assert!(still_there);
    assert!(note.contains("removed after 14 days"), "{note}");
}
