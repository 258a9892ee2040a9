//! Audit logs: verification never panics, whatever the file holds; a log
//! that verifies has one record per line; and changing any byte of a
//! record that another follows breaks the hash chain. (An edited last
//! record is not detectable by the chain alone.)
#![no_main]
use libfuzzer_sys::fuzz_target;
use stint_core::audit::verify;

fuzz_target!(|data: &[u8]| {
    let Ok(summary) = verify(data) else {
        return;
    };
    let lines = data.iter().filter(|b| **b == b'\n').count();
    assert_eq!(summary.records, lines as u64);
    if lines < 2 {
        return;
    }
    // A byte of some record but the last, chosen by the input itself.
    let last_start = data[..data.len() - 1]
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |at| at + 1);
    let at = data.iter().map(|b| usize::from(*b)).sum::<usize>() % last_start;
    if data[at] == b'\n' {
        return;
    }
    for flip in [0x01u8, 0x20, 0x80] {
        let mut tampered = data.to_vec();
        tampered[at] ^= flip;
        if tampered[at] != b'\n' {
            assert!(
                verify(tampered.as_slice()).is_err(),
                "a changed record went unnoticed at byte {at}"
            );
        }
    }
});
