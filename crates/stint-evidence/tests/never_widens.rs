//! Property: whatever the log and the settings, the proposed policy grants
//! no scope the policy did not, and loads.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use proptest::prelude::*;
use stint_core::audit::{AuditEntry, Decision, EventKind};
use stint_core::chrono::{DateTime, Duration, SecondsFormat, Utc};
use stint_core::policy::Policy;
use stint_core::scope::{Scope, covered};
use stint_evidence::{Observations, Settings, analyse, propose};

const ACTIONS: [&str; 2] = ["read", "write"];
const SEGMENTS: [&str; 3] = ["a", "b", "c"];

fn now() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2027-01-31T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// Every concrete scope of the alphabet, one to three segments deep.
fn universe() -> Vec<String> {
    let mut paths: Vec<String> = SEGMENTS.iter().map(|s| (*s).to_owned()).collect();
    let mut last = paths.clone();
    for _ in 0..2 {
        last = last
            .iter()
            .flat_map(|p| SEGMENTS.iter().map(move |s| format!("{p}/{s}")))
            .collect();
        paths.extend(last.clone());
    }
    ACTIONS
        .iter()
        .flat_map(|a| paths.iter().map(move |p| format!("{a}:{p}")))
        .collect()
}

fn pattern() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        Just("a".to_owned()),
        Just("b".to_owned()),
        Just("c".to_owned()),
        Just("*".to_owned()),
    ];
    // The first segment names the system: always literal.
    (
        prop::sample::select(ACTIONS.to_vec()),
        prop::sample::select(SEGMENTS.to_vec()),
        prop::collection::vec(segment, 0..=1),
        any::<bool>(),
    )
        .prop_map(|(action, first, rest, deep)| {
            let mut path = std::iter::once(first.to_owned())
                .chain(rest)
                .collect::<Vec<_>>()
                .join("/");
            if deep {
                path.push_str("/**");
            }
            format!("{action}:{path}")
        })
}

/// The policy: step `s` with `patterns`, those at the indexes in `shadow`
/// marked for removal.
fn policy_text(patterns: &[String], shadow: &[usize]) -> String {
    let list: Vec<String> = patterns
        .iter()
        .map(|p| format!("    {p:?}, # kept\n"))
        .collect();
    let marked: Vec<String> = shadow
        .iter()
        .filter_map(|i| patterns.get(*i))
        .map(|p| format!("{p:?}"))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    format!(
        "# generated\n[workloads.w]\nsecret_sha256 = \"{}\"\nworkflows = [\"wf\"]\n\n[workflows.wf]\nreview_by = 2030-01-01\n\n[workflows.wf.steps.s]\nscopes = [\n{}]\nshadow = [{}]\n\n[workflows.wf.steps.other]\nscopes = [\"read:other\"]\n",
        "0".repeat(64),
        list.concat(),
        marked.join(", ")
    )
}

fn load_at(days_ago: i64, policy: &Policy, allows_only: Option<&[String]>) -> AuditEntry {
    let mut load = AuditEntry::new(
        (now() - Duration::days(days_ago)).to_rfc3339_opts(SecondsFormat::Millis, true),
        EventKind::PolicyLoaded,
        Decision::Allow,
    );
    load.policy_sha256 = Some(policy.digest().to_owned());
    load.allows = policy.allowances();
    if let (Some(allows), Some(only)) = (&mut load.allows, allows_only) {
        allows.insert("wf/s".into(), only.to_vec());
    }
    load.shadows = Some(policy.shadow_map());
    load
}

fn line(entry: &AuditEntry) -> Vec<u8> {
    serde_json::to_vec(entry).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_proposal_never_grants_what_the_policy_did_not(
        patterns in prop::collection::btree_set(pattern(), 1..=5),
        shadow in prop::collection::vec(0usize..5, 0..3),
        // The patterns the policy had before the last load (a prefix), and
        // when that load was.
        earlier in 0usize..=5,
        loaded_days_ago in 0i64..100,
        picks in prop::collection::vec((0usize..1000, 0i64..80), 0..40),
        min_runs in 0u64..4,
        narrow_at_most in 1usize..5,
        quiet_days in 1u32..20,
    ) {
        let patterns: Vec<String> = patterns.into_iter().collect();
        let text = policy_text(&patterns, &shadow);
        let policy = Policy::parse("p.toml", &text).unwrap();
        let step = policy.workflow("wf").and_then(|w| w.step("s")).unwrap();
        let allowed: Vec<String> = universe()
            .into_iter()
            .filter(|s| covered(step.scopes(), &Scope::parse(s).unwrap()))
            .collect();

        let mut settings = Settings::new(now());
        settings.min_runs = min_runs;
        settings.min_days = 0;
        settings.narrow_at_most = narrow_at_most;
        settings.quiet_days = quiet_days;
        let mut observations = Observations::new(now(), settings.window_days);
        let before = &patterns[..earlier.min(patterns.len())];
        observations.line(&line(&load_at(200, &policy, Some(before)))).unwrap();
        observations.line(&line(&load_at(loaded_days_ago, &policy, None))).unwrap();
        if !allowed.is_empty() {
            for (n, (pick, days_ago)) in picks.iter().enumerate() {
                let mut mint = AuditEntry::new(
                    (now() - Duration::days(*days_ago)).to_rfc3339_opts(SecondsFormat::Millis, true),
                    EventKind::TokenMinted,
                    Decision::Allow,
                );
                mint.workflow = Some("wf".into());
                mint.step = Some("s".into());
                mint.job = Some(format!("job-{n}"));
                let scope = Scope::parse(&allowed[pick % allowed.len()]).unwrap();
                mint.would_deny = step.review().would_deny(step.scopes(), [&scope]);
                mint.scopes = vec![scope.as_str().to_owned()];
                observations.line(&line(&mint)).unwrap();
            }
        }
        let report = analyse(&policy, &observations, &settings);
        let proposed = propose("p.toml", &text, &report)
            .unwrap_or_else(|e| panic!("{e}\n{text}"));
        let after = Policy::parse("p.toml", &proposed).unwrap();
        let after_step = after.workflow("wf").and_then(|w| w.step("s"));
        for scope in universe() {
            let parsed = Scope::parse(&scope).unwrap();
            let granted_after = after_step.is_some_and(|s| covered(s.scopes(), &parsed));
            prop_assert!(
                !granted_after || covered(step.scopes(), &parsed),
                "{scope} granted by the proposal, not by the policy:\n{proposed}"
            );
        }
        // Every scope a job was granted since the last load (after every
        // pattern's observation began) is still granted.
        for (pick, days_ago) in &picks {
            if allowed.is_empty() {
                break;
            }
            if *days_ago > loaded_days_ago {
                continue;
            }
            let used = Scope::parse(&allowed[pick % allowed.len()]).unwrap();
            prop_assert!(
                after_step.is_some_and(|s| covered(s.scopes(), &used)),
                "{used} was granted and the proposal takes it away:\n{proposed}"
            );
        }
        // The comments stay.
        prop_assert!(proposed.starts_with("# generated\n"));
    }
}
