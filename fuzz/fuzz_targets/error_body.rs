//! The SDK's reading of a broker's error answers: any status and body
//! become an error without a panic; an error is never both a denial and
//! "try again"; a 5xx or a 429 is always "try again"; an OAuth error keeps
//! the status and code the broker sent; a pending approval polls at a sane
//! interval.
#![no_main]
use libfuzzer_sys::fuzz_target;
use stint_client::Error;
use stint_client::fuzzing::error_body;

fuzz_target!(|data: &[u8]| {
    let Some((status, body)) = data.split_first_chunk::<2>() else {
        return;
    };
    let status = 400 + u16::from_le_bytes(*status) % 200;
    let Some(error) = error_body(status, body) else {
        return;
    };
    let _ = error.to_string();
    assert!(!(error.is_denial() && error.is_unavailable()), "{error:?}");
    match &error {
        Error::OAuth {
            status: got, code, ..
        } => {
            assert_eq!(*got, status);
            // serde_json skips an unknown member without checking its
            // UTF-8: compare only bodies that are text.
            if std::str::from_utf8(body).is_ok() {
                let sent: Option<String> = serde_json::from_slice::<serde_json::Value>(body)
                    .ok()
                    .and_then(|v| v.get("error")?.as_str().map(str::to_owned));
                // The broker's code, or for a 5xx the SDK could not read
                // (a repeated member, say) server_error.
                let unread = status >= 500 && code == "server_error";
                assert!(
                    sent.as_ref() == Some(code) || unread,
                    "{code:?} for {sent:?}"
                );
            }
        }
        Error::ApprovalPending(pending) => {
            assert!((1..=300).contains(&pending.interval));
        }
        Error::Protocol { .. } => assert!(status < 500),
        other => panic!("an error body became {other:?}"),
    }
    if status >= 500 || status == 429 || status == 408 {
        assert!(
            error.is_unavailable()
                || matches!(error, Error::ApprovalPending(_) | Error::Protocol { .. }),
            "{status} is not \"try again\": {error:?}"
        );
    }
});
