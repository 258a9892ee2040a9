//! Target credentials: a step token's scope list planned into a GitHub
//! installation token request, and policy patterns checked against the
//! GitHub grammar. Never panics; an accepted plan grants exactly what the
//! scopes ask for (each permission at its level and the levels below, for
//! each repository, plus the `metadata: read` GitHub always adds: never
//! more, never less), names one owner, at least one repository and one
//! permission and at most 500 repositories; its request body says the
//! same; and GitHub's answer as planned passes the answer check while a
//! wider one does not. A pattern the grammar accepts is about the target,
//! and every concrete scope it covers is read by the grammar.
//!
//! Input: the control byte (unused but for the seeds' variety) and fields:
//! the scope list (space-separated, as a token's `scope` claim), then
//! policy patterns, one a field.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::collections::{BTreeMap, BTreeSet};
use stint_core::scope::{Scope, ScopePattern, parse_scope_list};
use stint_core::target::github::{
    GithubScope, Level, MAX_REPOSITORIES, METADATA, check_pattern, plan,
};

const TARGET: &str = "gh";

fn below(level: Level) -> impl Iterator<Item = Level> {
    [Level::Read, Level::Write, Level::Admin]
        .into_iter()
        .filter(move |l| *l <= level)
}

fuzz_target!(|data: &[u8]| {
    let (_control, fields) = stint_fuzz::fields(data);
    for n in 1..fields.len() {
        let text = stint_fuzz::text(&fields, n);
        let Ok(pattern) = ScopePattern::parse(text) else {
            continue;
        };
        if check_pattern(TARGET, &pattern).is_ok() {
            assert!(text.contains(&format!(":{TARGET}/")), "{text}");
            assert!(!text.ends_with("/**"), "{text}");
            if let Ok(concrete) = Scope::parse(&text.replace('*', "x")) {
                if pattern.matches(&concrete) {
                    GithubScope::from_scope(TARGET, &concrete)
                        .expect("a scope an accepted pattern covers is read by the grammar");
                }
            }
        }
    }

    let Ok(granted) = parse_scope_list(stint_fuzz::text(&fields, 0)) else {
        return;
    };
    let mine: Vec<Scope> = granted
        .into_iter()
        .filter(|s| s.segments().next() == Some(TARGET))
        .collect();
    let Ok(plan) = plan(TARGET, &mine) else {
        return;
    };
    assert!(!plan.repositories.is_empty() && !plan.permissions.is_empty());
    assert!(plan.repositories.len() <= MAX_REPOSITORIES);

    let key =
        |repo: &str, name: &str, level: Level| (repo.to_ascii_lowercase(), name.to_owned(), level);
    let mut asked = BTreeSet::new();
    for scope in &mine {
        let s = GithubScope::from_scope(TARGET, scope).expect("a planned scope parses");
        assert_eq!(s.owner, plan.owner);
        for l in below(s.level) {
            asked.insert(key(&s.repository, s.permission, l));
        }
        asked.insert(key(&s.repository, METADATA, Level::Read));
    }
    let mut granted = BTreeSet::new();
    for repo in &plan.repositories {
        for (name, level) in &plan.permissions {
            for l in below(*level) {
                granted.insert(key(repo, name, l));
            }
        }
        granted.insert(key(repo, METADATA, Level::Read));
    }
    assert_eq!(granted, asked, "the plan grants other than asked");

    let effective = plan.effective_scopes(TARGET);
    for scope in &effective {
        let s = GithubScope::from_scope(
            TARGET,
            &Scope::parse(scope).expect("an effective scope parses"),
        )
        .expect("an effective scope is read by the grammar");
        assert!(
            asked.contains(&key(&s.repository, s.permission, s.level)),
            "{scope}"
        );
    }

    let body = plan.request_body();
    let repositories: Vec<String> = body["repositories"]
        .as_array()
        .expect("repositories")
        .iter()
        .map(|r| r.as_str().expect("a name").to_owned())
        .collect();
    assert_eq!(
        repositories.iter().cloned().collect::<BTreeSet<_>>(),
        plan.repositories
    );
    let permissions: BTreeMap<String, String> = body["permissions"]
        .as_object()
        .expect("permissions")
        .iter()
        .map(|(k, v)| (k.clone(), v.as_str().expect("a level").to_owned()))
        .collect();
    assert_eq!(permissions.len(), plan.permissions.len());
    let mut answer = permissions.clone();
    answer
        .entry(METADATA.to_owned())
        .or_insert_with(|| "read".to_owned());
    plan.check_answer(&answer, "selected", &repositories)
        .expect("the planned answer passes");
    assert!(plan.check_answer(&answer, "all", &repositories).is_err());
    let mut more = repositories.clone();
    more.push("unplanned-repository".into());
    assert!(plan.check_answer(&answer, "selected", &more).is_err());
    let mut wider = answer.clone();
    wider.insert("administration".into(), "write".into());
    if plan.permissions.get("administration") != Some(&Level::Write) {
        assert!(
            plan.check_answer(&wider, "selected", &repositories)
                .is_err()
        );
    }
});
