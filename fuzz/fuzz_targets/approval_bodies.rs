//! Approval and workload bodies and parameters: any body, content type
//! and length is read without a panic; what is accepted is the JSON the
//! types describe (it serializes back to the same value) with only known
//! members; a refusal is a 4xx; a duration parameter is a positive number
//! of seconds that reads back the same (up to nine digits), and "N", "Ns",
//! "Nm", "Nh" mean what they say.
#![no_main]
use libfuzzer_sys::fuzz_target;
use stint_server::fuzzing::{approve_body, decision_body, duration_param};

const CONTENT_TYPES: [Option<&[u8]>; 5] = [
    Some(b"application/json"),
    Some(b"application/json; charset=utf-8"),
    Some(b"APPLICATION/JSON"),
    Some(b"text/plain"),
    None,
];

fuzz_target!(|data: &[u8]| {
    let (control, fields) = stint_fuzz::fields(data);
    let body = fields.first().copied().unwrap_or_default();
    let content_type = CONTENT_TYPES[usize::from(control & 7) % CONTENT_TYPES.len()];
    let length = body.len().to_string();
    let content_length: Option<&[u8]> = match control >> 3 & 3 {
        0 => None,
        1 => Some(length.as_bytes()),
        2 => Some(b"0"),
        _ => fields.get(2).copied(),
    };
    if let Some(answer) = approve_body(content_type, content_length, body) {
        match answer {
            Ok((parsed, duration)) => {
                let json = serde_json::to_string(&parsed).expect("serializes");
                assert_eq!(
                    serde_json::from_str::<stint_proto::ApproveBody>(&json).ok(),
                    Some(parsed.clone())
                );
                assert_eq!(parsed.duration.is_some(), duration.is_some());
                assert!(duration.is_none_or(|d| d > 0));
            }
            Err(refusal) => assert!((400..500).contains(&refusal.status), "{refusal:?}"),
        }
    }
    if let Some(Err(refusal)) = decision_body(content_type, content_length, body) {
        assert!((400..500).contains(&refusal.status), "{refusal:?}");
    }
    let text = stint_fuzz::text(&fields, 1);
    if let Ok(secs) = duration_param(text) {
        assert!(secs > 0);
        // In seconds it reads back, within the nine digits a number may have.
        if secs < 1_000_000_000 {
            assert_eq!(duration_param(&secs.to_string()), Ok(secs));
        }
        let digits = text.trim().trim_end_matches(['s', 'm', 'h']);
        let n: i64 = digits.parse().expect("digits");
        let unit = match text.trim().chars().last() {
            Some('m') => 60,
            Some('h') => 3600,
            _ => 1,
        };
        assert_eq!(Some(secs), n.checked_mul(unit).filter(|_| n > 0));
    }
});
