//! Policy files: loading never panics, and every error has a position
//! inside the text (or names the whole file).
#![no_main]
use libfuzzer_sys::fuzz_target;
use stint_core::policy::Policy;

fuzz_target!(|text: &str| {
    if let Err(errors) = Policy::parse("fuzz.toml", text) {
        assert!(!errors.0.is_empty());
        let lines = text.lines().count().max(1) + 1;
        for error in &errors.0 {
            assert!(error.line <= lines, "{error}");
        }
    }
});
