//! Target credentials: a step token's scope list, planned into a
//! PostgreSQL login against a fixed target. Never panics; an accepted plan
//! confers exactly the token's scopes for the target plus the schema USAGE
//! its object grants imply (never more, never less), uses only group roles
//! the token carries in full, and its SQL names every identifier quoted.
//!
//! Input: the control byte (bit 0: object_grants off) and one field, the
//! scope list (space-separated, as a token's `scope` claim).
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeSet;
use stint_core::scope::{Scope, parse_scope_list};
use stint_core::target::SecretSource;
use stint_core::target::postgres::{
    GroupRole, PgGrant, PgIdent, PgTlsMode, PostgresTarget, plan, role_name,
    scram_sha256_verifier,
};

fn ident(text: &str) -> PgIdent {
    PgIdent::parse(text).expect("a fixed identifier")
}

fn target(object_grants: bool) -> PostgresTarget {
    let role = |name: &str, scopes: &[&str]| GroupRole {
        role: ident(name),
        scopes: scopes
            .iter()
            .map(|s| Scope::parse(s).expect("a fixed scope"))
            .collect(),
    };
    PostgresTarget {
        host: "127.0.0.1".into(),
        port: 5432,
        database: ident("analytics"),
        admin_user: ident("stint_admin"),
        admin_password: SecretSource::Env("PW".into()),
        tls: PgTlsMode::VerifyFull,
        ca_file: None,
        connection_limit: 2,
        pool_size: 4,
        connect_timeout_secs: 5,
        statement_timeout_secs: 5,
        object_grants,
        roles: vec![
            role(
                "crm_reader",
                &["select:wh/crm/accounts", "select:wh/crm/contacts"],
            ),
            role("ids.user@x:y", &["usage:wh/crm/ids"]),
            role("Mixed-Case", &["insert:wh/Stage.1/rows", "usage:wh/Stage.1"]),
        ],
    }
}

fuzz_target!(|data: &[u8]| {
    let (control, fields) = stint_fuzz::fields(data);
    let Ok(granted) = parse_scope_list(stint_fuzz::text(&fields, 0)) else {
        return;
    };
    let target = target(control & 1 == 0);
    let Ok(plan) = plan("wh", &target, &granted, role_name(&[control; 15]), 1_900_000_000) else {
        return;
    };
    let mine: BTreeSet<Scope> = granted
        .iter()
        .filter(|s| s.segments().next() == Some("wh"))
        .cloned()
        .collect();
    let mut bound = mine.clone();
    for scope in &mine {
        let grant = PgGrant::from_scope("wh", scope).expect("an accepted plan's scopes parse");
        if !matches!(grant, PgGrant::SchemaUsage { .. }) {
            bound.extend(PgGrant::SchemaUsage { schema: grant.schema().clone() }.to_scope("wh"));
        }
    }
    let effective: BTreeSet<Scope> = plan.effective_scopes("wh", &target).into_iter().collect();
    assert!(effective.is_subset(&bound), "{effective:?} exceeds {bound:?}");
    assert!(mine.is_subset(&effective), "{mine:?} not all conferred: {effective:?}");
    for group in &plan.memberships {
        let role = target.roles.iter().find(|r| &r.role == group).expect("a declared role");
        assert!(role.scopes.iter().all(|s| mine.contains(s)));
    }
    let verifier = scram_sha256_verifier("pw", &[0; 16], 1);
    let statements = plan.create_statements(&verifier, "stint target credential https://stint.example").expect("a planned login's SQL");
    for statement in &statements {
        // Outside literals and quoted identifiers: only keywords and numbers.
        let mut bare = String::new();
        let (mut in_literal, mut in_ident) = (false, false);
        for c in statement.chars() {
            match c {
                '\'' if !in_ident => in_literal = !in_literal,
                '"' if !in_literal => {
                    in_ident = !in_ident;
                    bare.push(' ');
                }
                _ if !in_literal && !in_ident => bare.push(c),
                _ => {}
            }
        }
        assert!(!in_literal && !in_ident, "{statement}");
        for word in bare.split([' ', '.']) {
            assert!(
                word.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit()),
                "bare {word:?} in {statement}"
            );
        }
    }
});
