//! Glob patterns for claim values, in linear time.
//!
//! A pattern is literal text in which `*` matches any run of characters,
//! including none, and including `/` and `:` (as AWS's `StringLike` and
//! most OIDC trust policies do). There is no other metacharacter and no
//! escape: a claim value with a literal `*` can only be matched by `*`.
//!
//! Matching never backtracks: the pattern is cut at its `*`s into literal
//! pieces; the first must start the value, the last must end it, and the
//! ones between are found left to right, each at its leftmost place after
//! the previous one (`str::find`, a two-way search). Taking the leftmost
//! place is always right for `*`-only patterns, so the whole match costs
//! time linear in the value and the pattern.
//!
//! Because `*` crosses `/` and `:`, globbing a structured claim such as
//! GitHub's `sub` (`repo:ORG/REPO:ref:refs/heads/main`) can match more than
//! it seems (`repo:acme/*` matches every repository of `acme` and every ref
//! of each). Prefer exact values for the claims that decide, and globs only
//! where a family is really meant.

use std::fmt;

/// The longest pattern accepted, in bytes.
pub const MAX_GLOB_LEN: usize = 512;

/// A parsed glob pattern.
#[derive(Clone, PartialEq, Eq)]
pub struct Glob {
    text: String,
}

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    /// Empty.
    #[error("is empty")]
    Empty,
    /// Over [`MAX_GLOB_LEN`].
    #[error("is longer than {MAX_GLOB_LEN} bytes")]
    TooLong,
    /// `**` or more: the same as `*`, so refused as a likely mistake.
    #[error("has \"**\", which matches exactly what \"*\" does")]
    DoubleStar,
    /// A control character.
    #[error("contains a control character")]
    Control,
}

impl Glob {
    /// Parse a pattern.
    pub fn parse(text: &str) -> Result<Self, GlobError> {
        if text.is_empty() {
            return Err(GlobError::Empty);
        }
        if text.len() > MAX_GLOB_LEN {
            return Err(GlobError::TooLong);
        }
        if text.contains("**") {
            return Err(GlobError::DoubleStar);
        }
        if text.chars().any(char::is_control) {
            return Err(GlobError::Control);
        }
        Ok(Self {
            text: text.to_owned(),
        })
    }

    /// Whether the pattern has no `*`: then it matches only itself.
    pub fn is_exact(&self) -> bool {
        !self.text.contains('*')
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `value` matches.
    pub fn matches(&self, value: &str) -> bool {
        let mut pieces = self.text.split('*');
        // `split` always yields at least one piece.
        let first = pieces.next().unwrap_or_default();
        let Some(mut rest) = value.strip_prefix(first) else {
            return false;
        };
        let Some(last) = pieces.next_back() else {
            // No `*` at all: the whole value must be the pattern.
            return rest.is_empty();
        };
        for middle in pieces {
            match rest.find(middle) {
                Some(at) => rest = rest.get(at + middle.len()..).unwrap_or_default(),
                None => return false,
            }
        }
        rest.ends_with(last)
    }
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Glob({:?})", self.text)
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn glob(text: &str) -> Glob {
        Glob::parse(text).unwrap()
    }

    #[test]
    fn literal_and_star_cases() {
        let sub = "repo:acme/web:ref:refs/heads/main";
        assert!(glob(sub).matches(sub));
        assert!(!glob(sub).matches("repo:acme/web:ref:refs/heads/mainx"));
        assert!(glob("repo:acme/web:*").matches(sub));
        assert!(glob("repo:acme/*:ref:refs/heads/main").matches(sub));
        assert!(glob("*:ref:refs/heads/main").matches(sub));
        assert!(glob("*").matches(""));
        assert!(glob("*").matches(sub));
        assert!(glob("a*b*c").matches("abc"));
        assert!(glob("a*b*c").matches("a-b-b-c"));
        assert!(!glob("a*b*c").matches("a-c-b"));
        assert!(!glob("ab*ba").matches("aba"), "pieces may not overlap");
        assert!(glob("ab*ba").matches("abba"));
        assert!(!glob("repo:acme/web:*").matches("repo:acme/webx:ref:x"));
        assert!(glob("system:serviceaccount:ci:*").matches("system:serviceaccount:ci:deployer"));
    }

    #[test]
    fn refused_patterns() {
        assert_eq!(Glob::parse(""), Err(GlobError::Empty));
        assert_eq!(Glob::parse("a**b"), Err(GlobError::DoubleStar));
        assert_eq!(Glob::parse("a\nb"), Err(GlobError::Control));
        assert_eq!(
            Glob::parse(&"a".repeat(MAX_GLOB_LEN + 1)),
            Err(GlobError::TooLong)
        );
    }

    /// The obvious quadratic matcher, as a reference.
    fn reference(pattern: &[u8], value: &[u8]) -> bool {
        let mut table = vec![vec![false; value.len() + 1]; pattern.len() + 1];
        table[0][0] = true;
        for i in 1..=pattern.len() {
            if pattern[i - 1] == b'*' {
                table[i][0] = table[i - 1][0];
            }
            for j in 1..=value.len() {
                table[i][j] = if pattern[i - 1] == b'*' {
                    table[i - 1][j] || table[i][j - 1]
                } else {
                    table[i - 1][j - 1] && pattern[i - 1] == value[j - 1]
                };
            }
        }
        table[pattern.len()][value.len()]
    }

    proptest! {
        #[test]
        fn agrees_with_the_reference(pattern in "[ab*]{1,12}", value in "[ab]{0,16}") {
            prop_assume!(!pattern.contains("**"));
            let glob = Glob::parse(&pattern).unwrap();
            prop_assert_eq!(glob.matches(&value), reference(pattern.as_bytes(), value.as_bytes()));
        }
    }
}
