//! Claim globs and claim paths: parsing never panics; a glob matches
//! exactly what a plain dynamic-programming matcher (written here) says it
//! does; a pattern without `*` matches only itself; and a claim path finds
//! a value put at that path in nested objects.
#![no_main]
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};
use stint_core::federation::{ClaimPath, MAX_CLAIM_VALUE_LEN};
use stint_core::glob::Glob;

/// Whether `pattern` (`*` = any run of characters) matches `value`.
fn reference(pattern: &[char], value: &[char]) -> bool {
    // matched[j]: whether pattern[..i] matches value[..j].
    let mut matched = vec![false; value.len() + 1];
    matched[0] = true;
    for p in pattern {
        let mut next = vec![false; value.len() + 1];
        if *p == '*' {
            let mut any = false;
            for j in 0..=value.len() {
                any |= matched[j];
                next[j] = any;
            }
        } else {
            for j in 1..=value.len() {
                next[j] = matched[j - 1] && value[j - 1] == *p;
            }
        }
        matched = next;
    }
    matched[value.len()]
}

fuzz_target!(|data: &[u8]| {
    let (_, fields) = stint_fuzz::fields(data);
    let pattern = stint_fuzz::text(&fields, 0);
    let value = stint_fuzz::text(&fields, 1);
    if let Ok(glob) = Glob::parse(pattern) {
        assert_eq!(glob.as_str(), pattern);
        if value.len() <= 1024 {
            let p: Vec<char> = pattern.chars().collect();
            let v: Vec<char> = value.chars().collect();
            assert_eq!(
                glob.matches(value),
                reference(&p, &v),
                "{pattern:?} on {value:?}"
            );
        }
        if glob.is_exact() {
            assert_eq!(glob.matches(value), pattern == value);
        }
    }
    if let Ok(path) = ClaimPath::parse(pattern) {
        assert_eq!(path.as_str(), pattern);
        // The value at the end of the path, in nested objects.
        let mut claims = json!(value);
        for name in pattern.rsplit('/') {
            claims = json!({ name: claims });
        }
        let found = path.lookup(&claims);
        if value.len() <= MAX_CLAIM_VALUE_LEN {
            assert_eq!(found.as_deref(), Some(value));
        } else {
            assert_eq!(found, None);
        }
        // Whatever JSON the second field is: no panic, and only scalars.
        if let Ok(other) = serde_json::from_str::<Value>(value) {
            if let Some(text) = path.lookup(&other) {
                assert!(text.len() <= MAX_CLAIM_VALUE_LEN);
            }
        }
    }
});
