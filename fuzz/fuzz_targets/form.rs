//! Form bodies: parsing never panics, and what parses has no repeated names.
#![no_main]
use libfuzzer_sys::fuzz_target;
use stint_core::form::FormParams;

fuzz_target!(|data: &[u8]| {
    if let Ok(form) = FormParams::parse(data) {
        for name in ["grant_type", "scope", "step", "job", "ttl", "token"] {
            if let Some(value) = form.get(name) {
                assert!(!value.is_empty(), "empty values count as absent");
            }
        }
    }
});
