//! What a step's policy says for its reviewers, not for the broker: how
//! often the step runs (`cadence`) and which of its scopes are kept on
//! purpose however rarely they are used (`keep`). `stint policy suggest`
//! reads them; no decision does.

use super::Errors;
use crate::scope::ScopePattern;
use chrono::NaiveDate;
use serde::Deserialize;
use toml::Spanned;

/// The most `keep` entries one step may have.
const MAX_KEEPS: usize = 64;
/// The longest `reason` of a `keep` entry.
const MAX_REASON: usize = 500;

/// How often a step is expected to run: a window shorter than two of these
/// cannot show that its scopes are unused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cadence {
    days: u32,
}

impl Cadence {
    /// `daily`, `weekly`, `monthly`, `quarterly`, `yearly`, or `Nd` (1 to
    /// 3660 days).
    pub fn parse(text: &str) -> Result<Self, String> {
        let days = match text {
            "daily" => 1,
            "weekly" => 7,
            "monthly" => 31,
            "quarterly" => 92,
            "yearly" => 366,
            other => other
                .strip_suffix('d')
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse::<u32>().ok())
                .filter(|n| (1..=3660).contains(n))
                .ok_or_else(|| {
                    format!(
                        "cadence {other:?} is not daily, weekly, monthly, quarterly, yearly, or a number of days such as \"45d\" (1 to 3660)"
                    )
                })?,
        };
        Ok(Self { days })
    }

    /// One cycle, in days.
    pub fn days(self) -> u32 {
        self.days
    }
}

/// A scope pattern of the step kept on purpose until a date, with the
/// reason a reviewer gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keep {
    scope: ScopePattern,
    reason: String,
    until: NaiveDate,
}

impl Keep {
    /// The kept pattern: one of the step's own.
    pub fn scope(&self) -> &ScopePattern {
        &self.scope
    }
    /// Why it is kept.
    pub fn reason(&self) -> &str {
        &self.reason
    }
    /// The last day it is kept without being looked at again.
    pub fn until(&self) -> NaiveDate {
        self.until
    }
    /// Whether it still holds on `today`.
    pub fn holds_on(&self, today: NaiveDate) -> bool {
        today <= self.until
    }
}

/// A step's review annotations.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StepReview {
    cadence: Option<Cadence>,
    keep: Vec<Keep>,
    shadow: Vec<ScopePattern>,
}

impl StepReview {
    /// How often the step runs, if the policy says.
    pub fn cadence(&self) -> Option<Cadence> {
        self.cadence
    }
    /// The patterns kept on purpose.
    pub fn keep(&self) -> &[Keep] {
        &self.keep
    }
    /// The patterns marked for removal (`shadow`): they still grant, and
    /// each mint that needed one is audited as `would_deny`.
    pub fn shadow(&self) -> &[ScopePattern] {
        &self.shadow
    }

    /// Whether `pattern` is marked for removal.
    pub fn is_shadow(&self, pattern: &ScopePattern) -> bool {
        self.shadow.contains(pattern)
    }

    /// The `keep` entry for `pattern`, if there is one.
    pub fn kept(&self, pattern: &ScopePattern) -> Option<&Keep> {
        self.keep.iter().find(|keep| keep.scope == *pattern)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKeep {
    scope: Spanned<String>,
    reason: Spanned<String>,
    until: Spanned<toml::Value>,
}

/// Check and build a step's `cadence` and `keep` (`key` is the step's
/// key, `scopes` its patterns).
pub(super) fn build(
    cadence: Option<Spanned<String>>,
    keep: Option<Spanned<Vec<Spanned<RawKeep>>>>,
    shadow: Option<Spanned<Vec<Spanned<String>>>>,
    scopes: &[ScopePattern],
    key: &str,
    errors: &mut Errors<'_>,
) -> StepReview {
    let cadence = cadence.and_then(|text| match Cadence::parse(text.get_ref()) {
        Ok(cadence) => Some(cadence),
        Err(message) => {
            errors.push(text.span(), &format!("{key}.cadence"), message);
            None
        }
    });
    let mut kept: Vec<Keep> = Vec::new();
    if let Some(keep) = keep {
        if keep.get_ref().len() > MAX_KEEPS {
            errors.push(
                keep.span(),
                &format!("{key}.keep"),
                format!("a step may keep at most {MAX_KEEPS} scopes"),
            );
        }
        for (i, entry) in keep.into_inner().into_iter().enumerate() {
            let entry_key = format!("{key}.keep[{i}]");
            let span = entry.span();
            let raw = entry.into_inner();
            let scope = match ScopePattern::parse(raw.scope.get_ref()) {
                Ok(pattern) if scopes.contains(&pattern) => Some(pattern),
                Ok(_) => {
                    errors.push(
                        raw.scope.span(),
                        &format!("{entry_key}.scope"),
                        format!(
                            "{:?} is not one of the step's scopes (keep names a pattern exactly as the step lists it)",
                            raw.scope.get_ref()
                        ),
                    );
                    None
                }
                Err(e) => {
                    errors.push(
                        raw.scope.span(),
                        &format!("{entry_key}.scope"),
                        format!("invalid scope pattern {:?}: {e}", raw.scope.get_ref()),
                    );
                    None
                }
            };
            let reason = raw.reason.get_ref().trim();
            let reason_ok = !reason.is_empty()
                && reason.len() <= MAX_REASON
                && !reason.chars().any(char::is_control);
            if !reason_ok {
                errors.push(
                    raw.reason.span(),
                    &format!("{entry_key}.reason"),
                    format!("give a reason of 1 to {MAX_REASON} characters, on one line"),
                );
            }
            let until = match raw.until.get_ref() {
                toml::Value::Datetime(dt) => dt.date.and_then(|d| {
                    NaiveDate::from_ymd_opt(i32::from(d.year), d.month.into(), d.day.into())
                }),
                _ => None,
            };
            if until.is_none() {
                errors.push(
                    raw.until.span(),
                    &format!("{entry_key}.until"),
                    "until must be a date such as 2027-03-31".into(),
                );
            }
            match (scope, until) {
                (Some(scope), Some(until)) if reason_ok => {
                    if kept.iter().any(|k| k.scope == scope) {
                        errors.push(
                            span,
                            &entry_key,
                            format!("{:?} is kept twice", scope.as_str()),
                        );
                    } else {
                        kept.push(Keep {
                            scope,
                            reason: reason.to_owned(),
                            until,
                        });
                    }
                }
                _ => {}
            }
        }
    }
    let mut shadowed: Vec<ScopePattern> = Vec::new();
    for (i, text) in shadow
        .map(Spanned::into_inner)
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let entry_key = format!("{key}.shadow[{i}]");
        match ScopePattern::parse(text.get_ref()) {
            Ok(pattern) if !scopes.contains(&pattern) => errors.push(
                text.span(),
                &entry_key,
                format!(
                    "{:?} is not one of the step's scopes (shadow names a pattern exactly as the step lists it)",
                    text.get_ref()
                ),
            ),
            Ok(pattern) if kept.iter().any(|k| k.scope == pattern) => errors.push(
                text.span(),
                &entry_key,
                format!("{:?} is both kept and marked for removal", text.get_ref()),
            ),
            Ok(pattern) if shadowed.contains(&pattern) => errors.push(
                text.span(),
                &entry_key,
                format!("{:?} is listed twice", text.get_ref()),
            ),
            Ok(pattern) => shadowed.push(pattern),
            Err(e) => errors.push(
                text.span(),
                &entry_key,
                format!("invalid scope pattern {:?}: {e}", text.get_ref()),
            ),
        }
    }
    StepReview {
        cadence,
        keep: kept,
        shadow: shadowed,
    }
}

impl StepReview {
    /// Of `scopes` (a mint's), those only a shadow pattern of the step
    /// grants: none of `standing` that is not marked for removal covers
    /// them.
    pub fn would_deny<'a>(
        &self,
        standing: &[ScopePattern],
        scopes: impl IntoIterator<Item = &'a crate::scope::Scope>,
    ) -> Vec<String> {
        if self.shadow.is_empty() {
            return Vec::new();
        }
        scopes
            .into_iter()
            .filter(|scope| {
                self.shadow.iter().any(|p| p.matches(scope))
                    && !standing
                        .iter()
                        .any(|p| !self.shadow.contains(p) && p.matches(scope))
            })
            .map(|scope| scope.as_str().to_owned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;

    fn policy(step: &str) -> Result<Policy, String> {
        let text = format!(
            r#"
[workloads.w]
secret_sha256 = "{}"
workflows = ["wf"]

[workflows.wf]
review_by = 2030-01-01

[workflows.wf.steps.s]
scopes = ["read:a/*", "read:b"]
{step}
"#,
            "0".repeat(64)
        );
        Policy::parse("p.toml", &text).map_err(|e| e.to_string())
    }

    #[test]
    fn keep_names_a_pattern_of_the_step_with_a_reason_and_a_date() {
        let loaded = policy(
            r#"cadence = "quarterly"
keep = [{ scope = "read:b", reason = "year-end", until = 2027-03-31 }]"#,
        )
        .unwrap();
        let step = loaded.workflow("wf").and_then(|w| w.step("s")).unwrap();
        let review = step.review();
        assert_eq!(review.cadence().map(Cadence::days), Some(92));
        let kept = review
            .kept(&ScopePattern::parse("read:b").unwrap())
            .unwrap();
        assert_eq!(kept.reason(), "year-end");
        assert!(kept.holds_on(NaiveDate::from_ymd_opt(2027, 3, 31).unwrap()));
        assert!(!kept.holds_on(NaiveDate::from_ymd_opt(2027, 4, 1).unwrap()));
        assert!(
            review
                .kept(&ScopePattern::parse("read:a/*").unwrap())
                .is_none()
        );

        for (bad, says) in [
            (
                r#"keep = [{ scope = "read:c", reason = "x", until = 2027-03-31 }]"#,
                "not one of the step's scopes",
            ),
            (
                r#"keep = [{ scope = "read:a/x", reason = "x", until = 2027-03-31 }]"#,
                "not one of the step's scopes",
            ),
            (
                r#"keep = [{ scope = "read:b", reason = " ", until = 2027-03-31 }]"#,
                "give a reason",
            ),
            (
                r#"keep = [{ scope = "read:b", reason = "x", until = "soon" }]"#,
                "until must be a date",
            ),
            (
                r#"keep = [{ scope = "read:b", reason = "x", until = 2027-03-31 }, { scope = "read:b", reason = "y", until = 2027-03-31 }]"#,
                "kept twice",
            ),
            (r#"keep = [{ scope = "read:b", reason = "x" }]"#, "until"),
            (r#"shadow = ["read:c"]"#, "not one of the step's scopes"),
            (r#"shadow = ["read:b", "read:b"]"#, "listed twice"),
            (
                r#"shadow = ["read:b"]
keep = [{ scope = "read:b", reason = "x", until = 2027-03-31 }]"#,
                "both kept and marked for removal",
            ),
            (r#"cadence = "sometimes""#, "cadence \"sometimes\""),
        ] {
            let error = policy(bad).unwrap_err();
            assert!(error.contains(says), "{bad}: {error}");
        }
    }

    #[test]
    fn only_a_pattern_marked_for_removal_makes_a_scope_one_removal_would_deny() {
        let loaded = policy(r#"shadow = ["read:a/*"]"#).unwrap();
        let step = loaded.workflow("wf").and_then(|w| w.step("s")).unwrap();
        assert!(
            step.review()
                .is_shadow(&ScopePattern::parse("read:a/*").unwrap())
        );
        let scopes: Vec<crate::scope::Scope> = ["read:a/x", "read:b"]
            .iter()
            .map(|s| crate::scope::Scope::parse(s).unwrap())
            .collect();
        assert_eq!(
            step.review().would_deny(step.scopes(), &scopes),
            ["read:a/x"]
        );
        assert_eq!(loaded.shadow_map()["wf/s"], ["read:a/*"]);
        // Without a mark, nothing would be refused.
        let plain = policy("").unwrap();
        let step = plain.workflow("wf").and_then(|w| w.step("s")).unwrap();
        assert!(step.review().would_deny(step.scopes(), &scopes).is_empty());
        assert!(plain.shadow_map().is_empty());
    }

    #[test]
    fn cadences_are_named_or_counted_in_days() {
        for (text, days) in [
            ("daily", 1),
            ("weekly", 7),
            ("monthly", 31),
            ("quarterly", 92),
            ("yearly", 366),
            ("45d", 45),
            ("3660d", 3660),
        ] {
            assert_eq!(Cadence::parse(text).map(Cadence::days), Ok(days), "{text}");
        }
        for bad in [
            "",
            "d",
            "0d",
            "3661d",
            "-5d",
            "5",
            "45 d",
            "Quarterly",
            "1e3d",
        ] {
            assert!(Cadence::parse(bad).is_err(), "{bad:?}");
        }
    }
}
