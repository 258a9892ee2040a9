//! Scopes and scope patterns.
//!
//! A scope is `action:resource`, e.g. `deploy:k8s/staging/web`. The resource
//! is a `/`-separated path. Tokens carry only concrete scopes. Policy steps
//! allow *patterns*: a segment `*` matches exactly one segment, and a final
//! `/**` matches one or more further segments (so `read:demo/**` covers
//! `read:demo/docs` and `read:demo/docs/a`, but not `read:demo` itself).
//!
//! Matching is a single left-to-right pass over the segments: linear time,
//! no backtracking, no regular expressions.
//!
//! Grammar (ASCII only):
//!
//! ```text
//! scope    = action ":" resource
//! action   = lower-or-digit *( lower-or-digit / "-" / "_" / "." )
//! resource = segment *( "/" segment )
//! segment  = 1*( ALPHA / DIGIT / "-" / "_" / "." / "~" / "@" / ":" )
//!            ; but never "." or ".."
//! pattern  = action ":" literal *( "/" ( segment / "*" ) ) [ "/**" ]
//! ```
//!
//! The first resource segment of a pattern is always literal: a pattern
//! names the system it is about.
//!
//! The segment alphabet is RFC 3986's unreserved characters plus `@` and
//! `:`: nothing that a common consumer of scopes splits on or decodes. No
//! space (RFC 6749 scope lists), no `,` (comma-separated scope claims), no
//! `+` (form decoding turns it into a space), no `%` (percent-decoding), no
//! `=`, `;` or `&` (parameter lists). So `read:demo/x,write:prod/db` is one
//! malformed scope here, never a grant that a resource server reads as two.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;
use thiserror::Error;

/// The longest scope or pattern, in bytes.
pub const MAX_SCOPE_LEN: usize = 256;
/// The most resource segments in a scope or pattern.
pub const MAX_SEGMENTS: usize = 32;
/// The most scopes one token request may ask for.
pub const MAX_SCOPES_PER_REQUEST: usize = 32;

/// Why a scope or pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ScopeError {
    /// Empty input.
    #[error("a scope must not be empty")]
    Empty,
    /// Over [`MAX_SCOPE_LEN`].
    #[error("a scope must be at most {MAX_SCOPE_LEN} bytes long")]
    TooLong,
    /// No `:` between action and resource.
    #[error("a scope must have the form action:resource")]
    MissingColon,
    /// Bad action.
    #[error(
        "the action must be lowercase letters, digits, '-', '_' or '.', starting with a letter or digit"
    )]
    BadAction,
    /// Empty resource.
    #[error("the resource must not be empty")]
    EmptyResource,
    /// Over [`MAX_SEGMENTS`].
    #[error("the resource must have at most {MAX_SEGMENTS} segments")]
    TooManySegments,
    /// An empty segment (`a//b`, a leading or trailing `/`).
    #[error("the resource must not contain empty segments")]
    EmptySegment,
    /// A `.` or `..` segment.
    #[error("the resource must not contain '.' or '..' segments")]
    DotSegment,
    /// A character outside the segment alphabet.
    #[error("the resource contains a character that is not allowed: {0:?}")]
    BadCharacter(char),
    /// A wildcard in a concrete scope.
    #[error("a requested scope must be concrete: no '*' or '**'")]
    WildcardInScope,
    /// `**` somewhere other than the last segment.
    #[error("'**' may only be the last segment of a pattern")]
    DoubleStarNotLast,
    /// A `*` mixed with other characters in one segment.
    #[error("'*' must be a whole segment; partial wildcards like 'web-*' are not supported")]
    PartialWildcard,
    /// A wildcard in the first resource segment.
    #[error("the first resource segment of a pattern must be literal (it names the target system)")]
    WildcardFirstSegment,
}

/// A concrete, validated scope such as `read:github/acme/web`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Scope {
    text: String,
    colon: usize,
}

impl Scope {
    /// Parse a concrete scope.
    pub fn parse(text: &str) -> Result<Self, ScopeError> {
        let (action, resource) = split_scope(text)?;
        for segment in resource.split('/') {
            if segment.contains('*') {
                return Err(ScopeError::WildcardInScope);
            }
            validate_segment(segment)?;
        }
        Ok(Self {
            text: text.to_owned(),
            colon: action.len(),
        })
    }

    /// The action, e.g. `read`.
    pub fn action(&self) -> &str {
        &self.text[..self.colon]
    }

    /// The resource path, e.g. `github/acme/web`.
    pub fn resource(&self) -> &str {
        &self.text[self.colon + 1..]
    }

    /// The scope as text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The resource's segments.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.resource().split('/')
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Scope({})", self.text)
    }
}

impl FromStr for Scope {
    type Err = ScopeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for Scope {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Segment {
    Literal(String),
    /// `*`: exactly one segment.
    AnyOne,
}

/// A policy pattern such as `read:github/acme/*` or `read:demo/**`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ScopePattern {
    text: String,
    action: String,
    segments: Vec<Segment>,
    /// Whether the pattern ends in `/**` (one or more further segments).
    any_depth: bool,
}

impl ScopePattern {
    /// Parse a pattern.
    pub fn parse(text: &str) -> Result<Self, ScopeError> {
        let (action, resource) = split_scope(text)?;
        let raw: Vec<&str> = resource.split('/').collect();
        let mut segments = Vec::with_capacity(raw.len());
        let mut any_depth = false;
        for (index, segment) in raw.iter().enumerate() {
            let last = index + 1 == raw.len();
            match *segment {
                "**" if last => {
                    if index == 0 {
                        return Err(ScopeError::WildcardFirstSegment);
                    }
                    any_depth = true;
                }
                "**" => return Err(ScopeError::DoubleStarNotLast),
                "*" => {
                    if index == 0 {
                        return Err(ScopeError::WildcardFirstSegment);
                    }
                    segments.push(Segment::AnyOne);
                }
                s if s.contains('*') => return Err(ScopeError::PartialWildcard),
                s => {
                    validate_segment(s)?;
                    segments.push(Segment::Literal(s.to_owned()));
                }
            }
        }
        Ok(Self {
            text: text.to_owned(),
            action: action.to_owned(),
            segments,
            any_depth,
        })
    }

    /// Whether this pattern covers `scope`. Linear in the number of segments.
    pub fn matches(&self, scope: &Scope) -> bool {
        if scope.action() != self.action {
            return false;
        }
        let mut candidate = scope.segments();
        for pattern_segment in &self.segments {
            let Some(segment) = candidate.next() else {
                return false;
            };
            match pattern_segment {
                Segment::AnyOne => {}
                Segment::Literal(literal) => {
                    if literal != segment {
                        return false;
                    }
                }
            }
        }
        let remaining = candidate.count();
        if self.any_depth {
            remaining >= 1
        } else {
            remaining == 0
        }
    }

    /// Whether every scope `other` covers, this pattern covers too.
    pub fn includes(&self, other: &ScopePattern) -> bool {
        if self.action != other.action {
            return false;
        }
        let (m, n) = (self.segments.len(), other.segments.len());
        // The lengths of `other`'s scopes: exactly n, or every n + k with
        // k >= 1; this pattern's: exactly m, or every m + k with k >= 1.
        let lengths = match (self.any_depth, other.any_depth) {
            (false, false) => n == m,
            (true, false) => n > m,
            (false, true) => false,
            (true, true) => n >= m,
        };
        lengths
            && self
                .segments
                .iter()
                .zip(&other.segments)
                .all(|(mine, theirs)| match mine {
                    Segment::AnyOne => true,
                    Segment::Literal(literal) => {
                        matches!(theirs, Segment::Literal(t) if t == literal)
                    }
                })
    }

    /// Whether the pattern has no wildcard, i.e. covers exactly one scope.
    pub fn is_concrete(&self) -> bool {
        !self.any_depth
            && self
                .segments
                .iter()
                .all(|s| matches!(s, Segment::Literal(_)))
    }

    /// The pattern as text.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl fmt::Display for ScopePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for ScopePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ScopePattern({})", self.text)
    }
}

/// Whether any of `allowance` covers `scope`.
pub fn covered(allowance: &[ScopePattern], scope: &Scope) -> bool {
    allowance.iter().any(|pattern| pattern.matches(scope))
}

/// Parse a space-separated scope list as a token request carries it
/// (RFC 6749 section 3.3): at least one scope, at most
/// [`MAX_SCOPES_PER_REQUEST`], each concrete. Duplicates are folded; the
/// result is sorted so that equal requests give equal tokens.
pub fn parse_scope_list(text: &str) -> Result<Vec<Scope>, ScopeListError> {
    let mut scopes = Vec::new();
    for (count, item) in text.split(' ').filter(|s| !s.is_empty()).enumerate() {
        if count >= MAX_SCOPES_PER_REQUEST {
            return Err(ScopeListError::TooMany);
        }
        let scope = Scope::parse(item).map_err(|error| ScopeListError::Invalid {
            scope: printable_prefix(item),
            error,
        })?;
        scopes.push(scope);
    }
    if scopes.is_empty() {
        return Err(ScopeListError::Empty);
    }
    scopes.sort();
    scopes.dedup();
    Ok(scopes)
}

/// Why a scope list was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ScopeListError {
    /// No scope at all.
    #[error("at least one scope is required")]
    Empty,
    /// More than [`MAX_SCOPES_PER_REQUEST`].
    #[error("at most {MAX_SCOPES_PER_REQUEST} scopes may be requested at once")]
    TooMany,
    /// One scope is malformed.
    #[error("scope {scope:?} is malformed: {error}")]
    Invalid {
        /// The scope (at most its first 64 characters).
        scope: String,
        /// What is wrong with it.
        error: ScopeError,
    },
}

/// At most the first 64 characters of untrusted text, for an error message.
fn printable_prefix(text: &str) -> String {
    text.chars().take(64).collect()
}

fn split_scope(text: &str) -> Result<(&str, &str), ScopeError> {
    if text.is_empty() {
        return Err(ScopeError::Empty);
    }
    if text.len() > MAX_SCOPE_LEN {
        return Err(ScopeError::TooLong);
    }
    let (action, resource) = text.split_once(':').ok_or(ScopeError::MissingColon)?;
    let mut chars = action.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !first_ok
        || !chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
    {
        return Err(ScopeError::BadAction);
    }
    if resource.is_empty() {
        return Err(ScopeError::EmptyResource);
    }
    if resource.split('/').count() > MAX_SEGMENTS {
        return Err(ScopeError::TooManySegments);
    }
    Ok((action, resource))
}

fn validate_segment(segment: &str) -> Result<(), ScopeError> {
    if segment.is_empty() {
        return Err(ScopeError::EmptySegment);
    }
    if segment == "." || segment == ".." {
        return Err(ScopeError::DotSegment);
    }
    match segment.chars().find(|c| !is_segment_char(*c)) {
        Some(bad) => Err(ScopeError::BadCharacter(bad)),
        None => Ok(()),
    }
}

fn is_segment_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~' | '@' | ':')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pattern_includes_what_covers_no_more_than_it() {
        let p = |t: &str| ScopePattern::parse(t).unwrap();
        for (wide, narrow) in [
            ("read:a/**", "read:a/b"),
            ("read:a/**", "read:a/*"),
            ("read:a/**", "read:a/b/**"),
            ("read:a/**", "read:a/*/c/**"),
            ("read:a/*", "read:a/b"),
            ("read:a/*", "read:a/*"),
            ("read:a/*/c", "read:a/b/c"),
            ("read:a/b", "read:a/b"),
            ("read:a/*/**", "read:a/b/c"),
        ] {
            assert!(p(wide).includes(&p(narrow)), "{wide} includes {narrow}");
        }
        for (not_wide, other) in [
            ("read:a/b", "read:a/*"),
            ("read:a/*", "read:a/**"),
            ("read:a/*", "read:a/b/c"),
            ("read:a/b/**", "read:a/**"),
            ("read:a/**", "read:a"),
            ("write:a/**", "read:a/b"),
            ("read:a/*/c", "read:a/b/d"),
            ("read:a/*/**", "read:a/b"),
            ("read:a/b", "read:a/c"),
        ] {
            assert!(
                !p(not_wide).includes(&p(other)),
                "{not_wide} does not include {other}"
            );
        }
    }
    use proptest::prelude::*;

    fn pattern(text: &str) -> ScopePattern {
        ScopePattern::parse(text).unwrap()
    }
    fn scope(text: &str) -> Scope {
        Scope::parse(text).unwrap()
    }

    #[test]
    fn parses_concrete_scopes() {
        let s = scope("deploy:k8s/staging/web");
        assert_eq!(s.action(), "deploy");
        assert_eq!(s.resource(), "k8s/staging/web");
        assert_eq!(s.segments().collect::<Vec<_>>(), ["k8s", "staging", "web"]);
        assert!(Scope::parse("read:registry.example.com:5000/app").is_ok());
    }

    #[test]
    fn refuses_malformed_scopes() {
        let cases = [
            ("", ScopeError::Empty),
            ("read", ScopeError::MissingColon),
            (":x", ScopeError::BadAction),
            ("Read:x", ScopeError::BadAction),
            ("re ad:x", ScopeError::BadAction),
            ("read:", ScopeError::EmptyResource),
            ("read:a//b", ScopeError::EmptySegment),
            ("read:a/", ScopeError::EmptySegment),
            ("read:/a", ScopeError::EmptySegment),
            ("read:a/../b", ScopeError::DotSegment),
            ("read:a/./b", ScopeError::DotSegment),
            ("read:a b", ScopeError::BadCharacter(' ')),
            ("read:a\"b", ScopeError::BadCharacter('"')),
            ("read:é", ScopeError::BadCharacter('é')),
            ("read:demo/%2e%2e/prod", ScopeError::BadCharacter('%')),
            // Characters a resource server splits on or decodes.
            ("read:demo/x,write:prod/db", ScopeError::BadCharacter(',')),
            ("read:demo/x+write:prod/db", ScopeError::BadCharacter('+')),
            ("read:demo/a=b", ScopeError::BadCharacter('=')),
            ("read:demo/a;b", ScopeError::BadCharacter(';')),
            ("read:demo/a&b", ScopeError::BadCharacter('&')),
            ("read:a/*", ScopeError::WildcardInScope),
            ("read:a/**", ScopeError::WildcardInScope),
        ];
        for (text, expected) in cases {
            assert_eq!(Scope::parse(text), Err(expected), "{text:?}");
        }
        assert_eq!(
            Scope::parse(&format!("read:{}", "a".repeat(MAX_SCOPE_LEN))),
            Err(ScopeError::TooLong)
        );
        assert_eq!(
            Scope::parse(&format!("read:{}", vec!["a"; MAX_SEGMENTS + 1].join("/"))),
            Err(ScopeError::TooManySegments)
        );
    }

    #[test]
    fn refuses_malformed_patterns() {
        let cases = [
            ("read:**", ScopeError::WildcardFirstSegment),
            ("read:*/x", ScopeError::WildcardFirstSegment),
            ("read:a/**/b", ScopeError::DoubleStarNotLast),
            ("read:a/web-*", ScopeError::PartialWildcard),
            ("read:a/***", ScopeError::PartialWildcard),
            ("*:a/b", ScopeError::BadAction),
            ("read:demo/x,write:prod/**", ScopeError::BadCharacter(',')),
            ("read:demo/x+y/*", ScopeError::BadCharacter('+')),
        ];
        for (text, expected) in cases {
            assert_eq!(ScopePattern::parse(text), Err(expected), "{text:?}");
        }
    }

    #[test]
    fn single_star_matches_exactly_one_segment() {
        let p = pattern("read:github/acme/*");
        assert!(p.matches(&scope("read:github/acme/web")));
        assert!(!p.matches(&scope("read:github/acme")));
        assert!(!p.matches(&scope("read:github/acme/web/issues")));
        assert!(!p.matches(&scope("read:github/other/web")));
        assert!(!p.matches(&scope("write:github/acme/web")));
    }

    #[test]
    fn double_star_matches_one_or_more_segments() {
        let p = pattern("read:demo/**");
        assert!(p.matches(&scope("read:demo/docs")));
        assert!(p.matches(&scope("read:demo/docs/a/b/c")));
        assert!(!p.matches(&scope("read:demo")));
        assert!(!p.matches(&scope("read:demos/x")));
        assert!(!p.matches(&scope("write:demo/docs")));
    }

    #[test]
    fn literal_patterns_match_only_themselves() {
        let p = pattern("deploy:k8s/staging/web");
        assert!(p.is_concrete());
        assert!(p.matches(&scope("deploy:k8s/staging/web")));
        assert!(!p.matches(&scope("deploy:k8s/staging/web2")));
        assert!(!p.matches(&scope("deploy:k8s/staging")));
        assert!(!pattern("read:a/*").is_concrete());
    }

    #[test]
    fn star_then_double_star() {
        let p = pattern("read:github/*/**");
        assert!(p.matches(&scope("read:github/acme/web")));
        assert!(!p.matches(&scope("read:github/acme")));
    }

    #[test]
    fn scope_lists() {
        let list = parse_scope_list("write:a/b read:a/b  read:a/b").unwrap();
        assert_eq!(
            list.iter().map(Scope::as_str).collect::<Vec<_>>(),
            ["read:a/b", "write:a/b"]
        );
        assert_eq!(parse_scope_list(""), Err(ScopeListError::Empty));
        assert_eq!(parse_scope_list("   "), Err(ScopeListError::Empty));
        let many = (0..=MAX_SCOPES_PER_REQUEST)
            .map(|i| format!("read:a/{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        assert_eq!(parse_scope_list(&many), Err(ScopeListError::TooMany));
        assert!(matches!(
            parse_scope_list("read:a/b read:a/*"),
            Err(ScopeListError::Invalid { ref scope, .. }) if scope == "read:a/*"
        ));
    }

    // --- Property tests -------------------------------------------------

    /// An independent, deliberately naive oracle: expand the pattern into
    /// "segment i must equal this or be anything", with the any-depth tail
    /// handled by length arithmetic. Written without looking at `matches`.
    fn oracle(pattern: &str, scope: &str) -> bool {
        let (p_action, p_resource) = pattern.split_once(':').unwrap();
        let (s_action, s_resource) = scope.split_once(':').unwrap();
        if p_action != s_action {
            return false;
        }
        let p: Vec<&str> = p_resource.split('/').collect();
        let s: Vec<&str> = s_resource.split('/').collect();
        let (fixed, tail) = match p.last() {
            Some(&"**") => (&p[..p.len() - 1], true),
            _ => (&p[..], false),
        };
        let length_ok = if tail {
            s.len() > fixed.len()
        } else {
            s.len() == fixed.len()
        };
        length_ok
            && fixed
                .iter()
                .zip(s.iter())
                .all(|(want, got)| *want == "*" || want == got)
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof!["a", "b", "c", "ab", "x-1"].prop_map(String::from)
    }

    fn concrete_scope() -> impl Strategy<Value = String> {
        (
            prop_oneof!["read", "write"],
            prop::collection::vec(segment(), 1..5),
        )
            .prop_map(|(action, segs)| format!("{action}:{}", segs.join("/")))
    }

    fn pattern_text() -> impl Strategy<Value = String> {
        (
            prop_oneof!["read", "write"],
            segment(),
            prop::collection::vec(prop_oneof![segment(), Just("*".to_string())], 0..4),
            any::<bool>(),
        )
            .prop_map(|(action, first, rest, tail)| {
                let mut segs = vec![first];
                segs.extend(rest);
                if tail {
                    segs.push("**".into());
                }
                format!("{action}:{}", segs.join("/"))
            })
    }

    proptest! {
        #[test]
        fn matcher_agrees_with_oracle(p in pattern_text(), s in concrete_scope()) {
            let parsed = ScopePattern::parse(&p).unwrap();
            let concrete = Scope::parse(&s).unwrap();
            prop_assert_eq!(parsed.matches(&concrete), oracle(&p, &s), "{} vs {}", p, s);
        }

        /// `includes` never claims more than it can show: every scope the
        /// narrower pattern covers, the wider covers; a pattern includes
        /// itself, and includes a concrete pattern exactly when it covers
        /// its scope.
        #[test]
        fn includes_is_sound(
            p in pattern_text(),
            q in pattern_text(),
            scopes in prop::collection::vec(concrete_scope(), 1..40),
        ) {
            let (wide, narrow) = (ScopePattern::parse(&p).unwrap(), ScopePattern::parse(&q).unwrap());
            prop_assert!(wide.includes(&wide));
            // Scopes `narrow` covers, made from it: each `*` and `**`
            // filled in.
            let instances: Vec<String> = ["a", "zz"]
                .iter()
                .flat_map(|fill| {
                    [fill.to_string(), format!("{fill}/zz")].map(|deep| {
                        q.split_once(':').map_or(String::new(), |(action, path)| {
                            let path: Vec<&str> = path
                                .split('/')
                                .map(|seg| match seg {
                                    "*" => fill,
                                    "**" => deep.as_str(),
                                    other => other,
                                })
                                .collect();
                            format!("{action}:{}", path.join("/"))
                        })
                    })
                })
                .collect();
            for s in &instances {
                prop_assert!(narrow.matches(&Scope::parse(s).unwrap()), "{} does not cover {}", q, s);
            }
            if wide.includes(&narrow) {
                for s in scopes.iter().chain(&instances) {
                    let scope = Scope::parse(s).unwrap();
                    prop_assert!(!narrow.matches(&scope) || wide.matches(&scope), "{} includes {} but not {}", p, q, s);
                }
            }
            for s in &scopes {
                let concrete = ScopePattern::parse(s).unwrap();
                prop_assert_eq!(
                    wide.includes(&concrete),
                    wide.matches(&Scope::parse(s).unwrap()),
                    "{} and {}", p, s
                );
            }
        }

        #[test]
        fn a_concrete_pattern_covers_exactly_its_own_scope(a in concrete_scope(), b in concrete_scope()) {
            let p = ScopePattern::parse(&a).unwrap();
            prop_assert!(p.matches(&Scope::parse(&a).unwrap()));
            prop_assert_eq!(p.matches(&Scope::parse(&b).unwrap()), a == b);
        }

        /// Whatever a consumer splits scopes on or decodes never gets
        /// into a scope or a pattern, however the text is built.
        #[test]
        fn nothing_a_consumer_splits_or_decodes_is_accepted(
            text in "[a-z]{1,4}:[a-zA-Z0-9 ,+%=;&/*._~@:-]{1,24}"
        ) {
            let accepted = Scope::parse(&text).is_ok() || ScopePattern::parse(&text).is_ok();
            if accepted {
                prop_assert!(!text.contains([' ', ',', '+', '%', '=', ';', '&']), "{}", text);
            }
        }

        #[test]
        fn parsers_never_panic(text in "\\PC{0,80}") {
            let _ = Scope::parse(&text);
            let _ = ScopePattern::parse(&text);
            let _ = parse_scope_list(&text);
        }
    }
}
