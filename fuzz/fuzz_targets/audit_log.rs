//! Audit logs: verification never panics, whatever the file holds.
#![no_main]
use libfuzzer_sys::fuzz_target;
use stint_core::audit::verify;

fuzz_target!(|data: &[u8]| {
    let _ = verify(data);
});
