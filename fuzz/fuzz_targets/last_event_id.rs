//! `Last-Event-ID` on the revocation feed: any value is read without a
//! panic; what a reconnecting client is sent is either a resync or the
//! events after its position, in order and without a gap, up to the
//! feed's head; the id the stream gave for event `k` resumes exactly after
//! `k`; an id of another epoch resyncs, and one from the future (a client
//! that read a replica further on than this one) waits for what follows.
//! (An input starting with `EPOCH` stands for this feed's epoch.)
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use stint_server::fuzzing::Feed;

const EVENTS: usize = 100;

fn feed() -> &'static Feed {
    static FEED: OnceLock<Feed> = OnceLock::new();
    FEED.get_or_init(|| Feed::new(EVENTS))
}

fuzz_target!(|data: &[u8]| {
    let feed = feed();
    let head = feed.seq();
    assert_eq!(head, EVENTS as u64);
    let epoch = feed.event_id(0);
    let epoch = epoch.strip_suffix(".0").expect("EPOCH.SEQ");
    // The epoch is random per process: an input that starts with "EPOCH"
    // stands for it, so the fuzzer explores what follows.
    if let Ok(id) = std::str::from_utf8(data) {
        let id = match id.strip_prefix("EPOCH") {
            Some(rest) => format!("{epoch}{rest}"),
            None => id.to_owned(),
        };
        let id = id.as_str();
        match feed.subscribe(Some(id)) {
            None => {}
            Some(events) => {
                assert!(
                    id.starts_with(epoch) && id[epoch.len()..].starts_with('.'),
                    "{id:?} resumed"
                );
                if let Some(first) = events.first() {
                    assert!(
                        events.iter().zip(*first..).all(|(seq, want)| *seq == want),
                        "a gap"
                    );
                    assert_eq!(events.last(), Some(&head));
                }
            }
        }
    }
    // The id of event k, and ids around it.
    let k = data
        .iter()
        .fold(0u64, |n, b| n.wrapping_mul(31).wrapping_add(u64::from(*b)))
        % (head + 3);
    let resumed = feed.subscribe(Some(&feed.event_id(k)));
    if k <= head {
        assert_eq!(
            resumed,
            Some((k + 1..=head).collect()),
            "resuming after {k}"
        );
    } else {
        assert_eq!(
            resumed,
            Some(Vec::new()),
            "a position from the future waits"
        );
    }
    let other_epoch = format!("x{}", feed.event_id(k));
    assert_eq!(feed.subscribe(Some(&other_epoch)), None);
    assert_eq!(feed.subscribe(None), Some(Vec::new()));
});
