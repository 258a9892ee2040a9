//! Form bodies: parsing never panics; what the strict parser accepts, the
//! WHATWG decoder (the url crate's `form_urlencoded`, an independent
//! implementation) reads the same way; and encoding what was parsed, by an
//! independent encoder and by the SDK's, parses back to the same pairs.
#![no_main]
use libfuzzer_sys::fuzz_target;
use stint_core::form::{FormError, FormParams, MAX_PARAMS, REPEATABLE};

fn has_bad_escape(data: &[u8]) -> bool {
    data.iter().enumerate().any(|(i, b)| {
        *b == b'%'
            && !(data.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && data.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
    })
}

fuzz_target!(|data: &[u8]| {
    let parsed = FormParams::parse(data);
    let reference: Vec<(String, String)> = form_urlencoded::parse(data)
        .map(|(n, v)| (n.into_owned(), v.into_owned()))
        .collect();
    let form = match parsed {
        Ok(form) => form,
        Err(FormError::BadPercentEscape) => {
            assert!(
                has_bad_escape(data),
                "refused an escape that is well formed"
            );
            return;
        }
        Err(FormError::TooManyParameters) => {
            assert!(reference.len() > MAX_PARAMS);
            return;
        }
        Err(FormError::Duplicate(_) | FormError::InvalidUtf8) => return,
    };
    assert!(!has_bad_escape(data), "accepted a malformed escape");
    assert!(reference.len() <= MAX_PARAMS);
    for (i, (name, value)) in reference.iter().enumerate() {
        let repeated = reference[..i].iter().any(|(n, _)| n == name);
        assert!(
            !repeated || REPEATABLE.contains(&name.as_str()),
            "accepted a repeated name {name:?}"
        );
        assert!(form.contains(name), "{name:?} is missing");
        if REPEATABLE.contains(&name.as_str()) {
            // Every non-empty value, in order (RFC 8693's audience and
            // resource may repeat).
            let expected: Vec<&str> = reference
                .iter()
                .filter(|(n, v)| n == name && !v.is_empty())
                .map(|(_, v)| v.as_str())
                .collect();
            assert_eq!(form.all(name).collect::<Vec<_>>(), expected, "{name:?}");
        } else {
            assert_eq!(
                form.get(name),
                Some(value.as_str()).filter(|v| !v.is_empty()),
                "{name:?} decodes differently"
            );
        }
    }
    let variant = data.len() % 4;
    let encode = |text: &str| stint_fuzz::form_encode(text, variant & 1 == 0, variant & 2 == 0);
    for encoded in [
        reference
            .iter()
            .map(|(n, v)| format!("{}={}", encode(n), encode(v)))
            .collect::<Vec<_>>()
            .join("&"),
        reference
            .iter()
            .map(|(n, v)| {
                format!(
                    "{}={}",
                    stint_client::fuzzing::form_encode(n),
                    stint_client::fuzzing::form_encode(v)
                )
            })
            .collect::<Vec<_>>()
            .join("&"),
    ] {
        assert_eq!(
            FormParams::parse(encoded.as_bytes()).as_ref(),
            Ok(&form),
            "{encoded:?} does not parse back to the same pairs"
        );
    }
});
