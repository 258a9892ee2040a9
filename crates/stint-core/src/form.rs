//! A strict `application/x-www-form-urlencoded` parser for OAuth requests.
//!
//! Stricter than the WHATWG algorithm on purpose: invalid UTF-8 and broken
//! percent escapes are errors rather than replacement characters, and a
//! repeated parameter is an error (RFC 6749 section 3.2: "Request and
//! response parameters MUST NOT be included more than once"), except the
//! two that RFC 8693 section 2.1 lets a token exchange repeat, `audience`
//! and `resource` ([`REPEATABLE`]; read them with [`FormParams::all`]). A
//! parameter with an empty value counts as absent (RFC 6749 section 3.1).

use thiserror::Error;

/// The most parameters one request may carry.
pub const MAX_PARAMS: usize = 64;

/// The parameters that may appear more than once: RFC 8693 section 2.1
/// allows several `audience` and `resource` values. Every other repeated
/// parameter is refused.
pub const REPEATABLE: [&str; 2] = ["audience", "resource"];

/// Why a form body was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FormError {
    /// A `%` not followed by two hex digits.
    #[error("the form body has a malformed percent escape")]
    BadPercentEscape,
    /// Decoded bytes that are not UTF-8.
    #[error("the form body is not valid UTF-8")]
    InvalidUtf8,
    /// A parameter given twice that may not be (any but [`REPEATABLE`]).
    #[error("parameter {0:?} is repeated")]
    Duplicate(String),
    /// More than [`MAX_PARAMS`] parameters.
    #[error("the form body has more than {MAX_PARAMS} parameters")]
    TooManyParameters,
}

/// Decoded form parameters, each name at most once except [`REPEATABLE`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FormParams {
    pairs: Vec<(String, String)>,
}

impl FormParams {
    /// Parse a form body.
    pub fn parse(body: &[u8]) -> Result<Self, FormError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        for part in body.split(|b| *b == b'&').filter(|p| !p.is_empty()) {
            if pairs.len() >= MAX_PARAMS {
                return Err(FormError::TooManyParameters);
            }
            let (name, value) = match part.iter().position(|b| *b == b'=') {
                Some(at) => (&part[..at], &part[at + 1..]),
                None => (part, &b""[..]),
            };
            let name = decode(name)?;
            let value = decode(value)?;
            if !REPEATABLE.contains(&name.as_str()) && pairs.iter().any(|(n, _)| *n == name) {
                return Err(FormError::Duplicate(name.chars().take(32).collect()));
            }
            pairs.push((name, value));
        }
        Ok(Self { pairs })
    }

    /// The value of `name`, or `None` if absent or empty. For a
    /// [`REPEATABLE`] parameter this is only its first occurrence: read
    /// those with [`FormParams::all`].
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// Every non-empty value of `name`, in the order sent (at most
    /// [`MAX_PARAMS`]).
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs
            .iter()
            .filter(move |(n, v)| n == name && !v.is_empty())
            .map(|(_, v)| v.as_str())
    }

    /// Whether `name` was sent at all, even empty.
    pub fn contains(&self, name: &str) -> bool {
        self.pairs.iter().any(|(n, _)| n == name)
    }

    /// The name of every parameter sent, in order (a repeated one as often
    /// as it was sent).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.pairs.iter().map(|(n, _)| n.as_str())
    }
}

/// Decode one `application/x-www-form-urlencoded` component (`+` is a
/// space), strictly: a broken escape or invalid UTF-8 is an error.
pub fn decode(input: &[u8]) -> Result<String, FormError> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while let Some(&byte) = input.get(i) {
        match byte {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = input.get(i + 1).and_then(|b| hex_value(*b));
                let lo = input.get(i + 2).and_then(|b| hex_value(*b));
                match (hi, lo) {
                    (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                    _ => return Err(FormError::BadPercentEscape),
                }
                i += 2;
            }
            other => out.push(other),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| FormError::InvalidUtf8)
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn decodes_plus_and_percent() {
        let form = FormParams::parse(
            b"grant_type=client_credentials&scope=read%3Aa%2Fb+write%3Aa&x=%C3%A9",
        )
        .unwrap();
        assert_eq!(form.get("grant_type"), Some("client_credentials"));
        assert_eq!(form.get("scope"), Some("read:a/b write:a"));
        assert_eq!(form.get("x"), Some("é"));
        assert_eq!(form.get("missing"), None);
    }

    #[test]
    fn empty_values_count_as_absent() {
        let form = FormParams::parse(b"scope=&step&&job=j").unwrap();
        assert_eq!(form.get("scope"), None);
        assert!(form.contains("scope"));
        assert_eq!(form.get("step"), None);
        assert_eq!(form.get("job"), Some("j"));
    }

    #[test]
    fn refuses_duplicates_bad_escapes_and_bad_utf8() {
        assert_eq!(
            FormParams::parse(b"scope=a&scope=b"),
            Err(FormError::Duplicate("scope".into()))
        );
        // Duplicates are found after decoding the name.
        assert_eq!(
            FormParams::parse(b"scope=a&sc%6Fpe=b"),
            Err(FormError::Duplicate("scope".into()))
        );
        assert_eq!(
            FormParams::parse(b"a=%zz"),
            Err(FormError::BadPercentEscape)
        );
        assert_eq!(FormParams::parse(b"a=%4"), Err(FormError::BadPercentEscape));
        assert_eq!(FormParams::parse(b"a=%ff"), Err(FormError::InvalidUtf8));
        assert_eq!(FormParams::parse(b"a=\xc3"), Err(FormError::InvalidUtf8));
        // Repeating a repeatable name does not make others repeatable.
        assert_eq!(
            FormParams::parse(b"audience=a&audience=b&step=x&step=y"),
            Err(FormError::Duplicate("step".into()))
        );
        let many: Vec<String> = (0..=MAX_PARAMS).map(|i| format!("p{i}=v")).collect();
        assert_eq!(
            FormParams::parse(many.join("&").as_bytes()),
            Err(FormError::TooManyParameters)
        );
    }

    #[test]
    fn audience_and_resource_may_repeat() {
        let form =
            FormParams::parse(b"audience=a&resource=r&audience=&aud%69ence=b&resource=r").unwrap();
        assert_eq!(form.all("audience").collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(form.all("resource").collect::<Vec<_>>(), ["r", "r"]);
        assert_eq!(form.all("step").count(), 0);
        assert_eq!(form.get("audience"), Some("a"));
    }

    proptest! {
        #[test]
        fn never_panics(body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = FormParams::parse(&body);
        }

        #[test]
        fn round_trips_encoded_values(value in "\\PC{0,40}") {
            let mut encoded = String::new();
            for byte in value.as_bytes() {
                encoded.push_str(&format!("%{byte:02X}"));
            }
            let form = FormParams::parse(format!("v={encoded}").as_bytes()).unwrap();
            prop_assert_eq!(form.get("v").unwrap_or(""), value.as_str());
        }
    }
}
