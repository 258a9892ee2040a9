//! Scopes and patterns: parsing never panics; a parsed concrete scope
//! round-trips; a concrete pattern matches exactly its own scope.
#![no_main]
use libfuzzer_sys::fuzz_target;
use stint_core::scope::{Scope, ScopePattern, parse_scope_list};

fuzz_target!(|data: (&str, &str)| {
    let (a, b) = data;
    let _ = parse_scope_list(a);
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
