//! Scopes and patterns: parsing never panics; a parsed concrete scope
//! round-trips; a concrete pattern matches exactly its own scope; a scope
//! list parses to scopes that each parse alone.
#![no_main]
use libfuzzer_sys::fuzz_target;
use stint_core::scope::{Scope, ScopePattern, parse_scope_list};

fuzz_target!(|data: &[u8]| {
    let (_, fields) = stint_fuzz::fields(data);
    let (a, b) = (stint_fuzz::text(&fields, 0), stint_fuzz::text(&fields, 1));
    if let Ok(list) = parse_scope_list(a) {
        for scope in &list {
            assert_eq!(Scope::parse(scope.as_str()).as_ref(), Ok(scope));
        }
    }
    if let Ok(scope) = Scope::parse(a) {
        assert_eq!(scope.as_str(), a);
        let pattern = ScopePattern::parse(a).expect("a concrete scope is a valid pattern");
        assert!(pattern.matches(&scope));
        if let Ok(other) = Scope::parse(b) {
            assert_eq!(pattern.matches(&other), a == b);
        }
    }
    if let (Ok(pattern), Ok(scope)) = (ScopePattern::parse(a), Scope::parse(b)) {
        let _ = pattern.matches(&scope);
    }
});
