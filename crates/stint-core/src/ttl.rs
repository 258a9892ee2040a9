//! Token lifetimes: parsing policy durations and capping requested TTLs.

use std::fmt;
use thiserror::Error;

/// No token, whatever the policy says, lives longer than this. A policy
/// whose `max_ttl` exceeds it is refused at load.
pub const MAX_TOKEN_TTL: Ttl = Ttl(60 * 60);
/// The default lifetime when a step does not set `default_ttl`.
pub const DEFAULT_TTL: Ttl = Ttl(5 * 60);
/// The default ceiling when a step does not set `max_ttl`.
pub const DEFAULT_MAX_TTL: Ttl = Ttl(15 * 60);

/// A token lifetime in whole seconds, at least one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ttl(u32);

/// Parse a policy duration: a whole number followed by `s`, `m` or `h`
/// (`90s`, `5m`, `1h`), or a bare number of seconds; at least one second.
/// Callers apply their own upper bound.
pub fn parse_duration_secs(text: &str) -> Result<u64, TtlError> {
    let text = text.trim();
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => text.split_at(at),
        None => (text, ""),
    };
    let multiplier: u64 = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => return Err(TtlError::Syntax),
    };
    if digits.is_empty() || digits.len() > 9 {
        return Err(TtlError::Syntax);
    }
    let value: u64 = digits.parse().map_err(|_| TtlError::Syntax)?;
    let seconds = value.saturating_mul(multiplier);
    if seconds == 0 {
        return Err(TtlError::Zero);
    }
    Ok(seconds)
}

impl Ttl {
    /// A lifetime of `seconds`; `None` for zero or more than
    /// [`MAX_TOKEN_TTL`].
    pub fn from_secs(seconds: u64) -> Option<Self> {
        match u32::try_from(seconds) {
            Ok(s) if (1..=MAX_TOKEN_TTL.0).contains(&s) => Some(Self(s)),
            _ => None,
        }
    }

    /// The lifetime in seconds.
    pub fn as_secs(self) -> u32 {
        self.0
    }

    /// Parse a policy duration (see [`parse_duration_secs`]) of at most
    /// [`MAX_TOKEN_TTL`].
    pub fn parse_policy(text: &str) -> Result<Self, TtlError> {
        Self::from_secs(parse_duration_secs(text)?).ok_or(TtlError::TooLong)
    }

    /// The lifetime a token gets: the request's `ttl` if given, else the
    /// step's default, never more than the step's maximum.
    pub fn effective(requested_secs: Option<u64>, default: Ttl, max: Ttl) -> Ttl {
        let wanted = match requested_secs {
            Some(secs) => u32::try_from(secs).unwrap_or(u32::MAX),
            None => default.0,
        };
        Ttl(wanted.clamp(1, max.0))
    }
}

impl fmt::Display for Ttl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(3600) {
            write!(f, "{}h", self.0 / 3600)
        } else if self.0.is_multiple_of(60) {
            write!(f, "{}m", self.0 / 60)
        } else {
            write!(f, "{}s", self.0)
        }
    }
}

/// Why a duration was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TtlError {
    /// Not `<number><s|m|h>`.
    #[error("expected a duration like \"90s\", \"5m\" or \"1h\"")]
    Syntax,
    /// Zero.
    #[error("a duration must be at least one second")]
    Zero,
    /// Over [`MAX_TOKEN_TTL`].
    #[error("a token lifetime may be at most {MAX_TOKEN_TTL}")]
    TooLong,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_policy_durations() {
        assert_eq!(Ttl::parse_policy("90s"), Ok(Ttl(90)));
        assert_eq!(Ttl::parse_policy("5m"), Ok(Ttl(300)));
        assert_eq!(Ttl::parse_policy("1h"), Ok(Ttl(3600)));
        assert_eq!(Ttl::parse_policy("120"), Ok(Ttl(120)));
        assert_eq!(Ttl::parse_policy("0m"), Err(TtlError::Zero));
        assert_eq!(Ttl::parse_policy("2h"), Err(TtlError::TooLong));
        assert_eq!(Ttl::parse_policy("99999999999m"), Err(TtlError::Syntax));
        for bad in ["", "m", "5 m", "5d", "-5m", "5.5m", "5mm"] {
            assert_eq!(Ttl::parse_policy(bad), Err(TtlError::Syntax), "{bad:?}");
        }
    }

    #[test]
    fn displays_in_the_largest_whole_unit() {
        assert_eq!(Ttl(300).to_string(), "5m");
        assert_eq!(Ttl(3600).to_string(), "1h");
        assert_eq!(Ttl(61).to_string(), "61s");
    }

    proptest! {
        #[test]
        fn effective_ttl_never_exceeds_the_maximum(
            requested in proptest::option::of(any::<u64>()),
            default in 1u32..=3600,
            max in 1u32..=3600,
        ) {
            let default = Ttl(default.min(max));
            let max = Ttl(max);
            let got = Ttl::effective(requested, default, max);
            prop_assert!(got <= max);
            prop_assert!(got.as_secs() >= 1);
            match requested {
                Some(r) if r >= 1 && r <= u64::from(max.as_secs()) => prop_assert_eq!(u64::from(got.as_secs()), r),
                None => prop_assert_eq!(got, default),
                _ => {}
            }
        }
    }
}
