//! Client credentials: any `Authorization` header and form body is read
//! without a panic; HTTP Basic credentials encoded as RFC 6749 says
//! (form-encoded, then base64) decode to what was encoded, and
//! authenticate exactly when they are the workload's; the same through
//! `client_secret_post`; both methods at once are refused; a Bearer token
//! is the header's token, trimmed and never empty.
#![no_main]
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::fuzz_target;
use stint_core::form::FormParams;
use stint_fuzz::{CLIENT_ID, CLIENT_SECRET, form_encode};
use stint_server::fuzzing::{Presented, bearer, client_credentials};

fn basic(id: &str, secret: &str, plus: bool) -> Vec<u8> {
    let pair = format!(
        "{}:{}",
        form_encode(id, plus, plus),
        form_encode(secret, plus, !plus)
    );
    format!("Basic {}", STANDARD.encode(pair)).into_bytes()
}

fn expect_authenticated(id: &str, secret: &str) -> Option<String> {
    (id == CLIENT_ID && secret == CLIENT_SECRET).then(|| CLIENT_ID.to_owned())
}

fuzz_target!(|data: &[u8]| {
    let policy = stint_fuzz::policy();
    let (control, fields) = stint_fuzz::fields(data);
    match control % 3 {
        // Raw headers and a raw form body, as a client could send them.
        0 => {
            let headers: Vec<&[u8]> = fields.iter().skip(1).copied().take(2).collect();
            let form = fields.first().and_then(|body| FormParams::parse(body).ok());
            let answer = client_credentials(policy, &headers, form.as_ref());
            if let Some(Ok(Presented {
                workload: Some(w),
                client_id,
            })) = &answer
            {
                assert_eq!((w.as_str(), client_id.as_str()), (CLIENT_ID, CLIENT_ID));
            }
            if headers.len() > 1 {
                assert!(
                    !matches!(answer, Some(Ok(_))),
                    "two Authorization headers accepted"
                );
            }
            if let Some(header) = headers.first() {
                if let Some(token) = bearer(header) {
                    assert!(!token.is_empty() && token.trim() == token);
                    let value = std::str::from_utf8(header).expect("a header that was read");
                    assert!(
                        value
                            .get(..7)
                            .is_some_and(|s| s.eq_ignore_ascii_case("bearer "))
                    );
                    assert!(
                        value.ends_with(token.as_str())
                            || value.trim_end().ends_with(token.as_str())
                    );
                }
            }
        }
        // Basic credentials encoded from chosen text.
        1 => {
            let id = stint_fuzz::text(&fields, 0);
            let secret = stint_fuzz::text(&fields, 1);
            let plus = control & 0x10 != 0;
            for (id, secret) in [
                (id, secret),
                (CLIENT_ID, secret),
                (CLIENT_ID, CLIENT_SECRET),
            ] {
                let header = basic(id, secret, plus);
                match client_credentials(policy, &[&header], None) {
                    // Longer than the broker reads.
                    Some(Err(refusal)) if header.len() > 1024 => assert_eq!(refusal.status, 401),
                    Some(Ok(presented)) => {
                        assert_eq!(
                            presented.client_id, id,
                            "Basic did not decode to what was encoded"
                        );
                        assert_eq!(presented.workload, expect_authenticated(id, secret));
                    }
                    other => panic!("{id:?}/{secret:?}: {other:?}"),
                }
            }
        }
        // client_secret_post, alone and with Basic too.
        _ => {
            let id = stint_fuzz::text(&fields, 0);
            let secret = stint_fuzz::text(&fields, 1);
            let body = format!(
                "client_id={}&client_secret={}",
                form_encode(id, true, false),
                form_encode(secret, false, true)
            );
            let Ok(form) = FormParams::parse(body.as_bytes()) else {
                panic!("an encoded form is refused: {body:?}");
            };
            match client_credentials(policy, &[], Some(&form)) {
                Some(Ok(presented)) => {
                    assert!(!id.is_empty() && !secret.is_empty());
                    assert_eq!(presented.client_id, id);
                    assert_eq!(presented.workload, expect_authenticated(id, secret));
                }
                Some(Err(refusal)) => {
                    assert!(id.is_empty() || secret.is_empty(), "{refusal:?}");
                    assert_eq!(refusal.status, 401);
                }
                None => panic!("no header, yet not read"),
            }
            if !secret.is_empty() {
                let header = basic(CLIENT_ID, CLIENT_SECRET, true);
                let both = client_credentials(policy, &[&header], Some(&form));
                assert!(
                    matches!(both, Some(Err(ref r)) if r.status == 400),
                    "{both:?}"
                );
            }
        }
    }
});
