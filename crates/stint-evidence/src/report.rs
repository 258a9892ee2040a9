//! From observations and the policy to a finding per step pattern.

use crate::observe::{Load, Observations, StepUse};
use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use stint_core::policy::{Policy, Step, widenings};
use stint_core::scope::{Scope, ScopePattern, covered};

/// The knobs of an analysis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// The time the report is as of.
    pub now: DateTime<Utc>,
    /// Days of the log looked at, back from `now`.
    pub window_days: u32,
    /// Fewer jobs of a step than this since a pattern's observation began:
    /// no proposal for it.
    pub min_runs: u64,
    /// A pattern observed for fewer days than this: no proposal.
    pub min_days: u32,
    /// A wildcard pattern that matched at most this many concrete scopes
    /// is proposed as those scopes.
    pub narrow_at_most: usize,
    /// An elevated scope approved in at least this many approvals is a
    /// promotion candidate.
    pub promote_after: usize,
    /// A pattern marked for removal (`shadow`) that no mint needed for
    /// this many days, over at least `min_runs` runs, is proposed removed.
    pub quiet_days: u32,
}

impl Settings {
    /// The defaults, as of `now`.
    pub fn new(now: DateTime<Utc>) -> Self {
        Self {
            now,
            window_days: 90,
            min_runs: 5,
            min_days: 30,
            narrow_at_most: 3,
            promote_after: 3,
            quiet_days: 14,
        }
    }
}

/// What a pattern's evidence says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Granted in the window, and not a wildcard matching only a few
    /// scopes.
    Used,
    /// A wildcard that matched only a few concrete scopes: narrowed to
    /// them.
    Narrow,
    /// Granted to no job in the window: removed.
    Unused,
    /// Too few runs, too short an observation, or a window shorter than
    /// two of the step's cycles: no proposal.
    Insufficient,
    /// Kept on purpose (`keep` in the policy, not expired).
    Kept,
    /// Marked for removal (`shadow`), still granting: mints needed it, or
    /// its quiet period has not passed.
    Shadow,
}

impl Status {
    /// The name used in output and `--fail-on`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Used => "used",
            Self::Narrow => "narrow",
            Self::Unused => "unused",
            Self::Insufficient => "insufficient",
            Self::Kept => "kept",
            Self::Shadow => "shadow",
        }
    }
}

/// One pattern of one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PatternFinding {
    /// The pattern as the policy lists it.
    pub pattern: String,
    pub status: Status,
    /// Mints in the window that carried a scope it matches.
    pub mints: u64,
    /// The concrete scopes it matched, in order.
    pub scopes: Vec<String>,
    /// First and last mint of one of them, RFC 3339.
    pub first_use: Option<String>,
    pub last_use: Option<String>,
    /// When its observation began: the later of the window's start and the
    /// first policy load (of an unbroken run up to now) that had it.
    pub observed_since: String,
    /// Jobs of the step since then.
    pub runs: u64,
    /// What to do instead, for `narrow` (the concrete scopes) and
    /// `unused` (nothing: `[]`); `None` for the others.
    pub proposal: Option<Vec<String>>,
    /// Why the status is what it is, for people.
    pub note: String,
}

/// One step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StepFinding {
    pub workflow: String,
    pub step: String,
    /// Jobs in the window.
    pub jobs: u64,
    pub patterns: Vec<PatternFinding>,
    /// Scopes granted under approvals beyond the step's own, each with
    /// how many approvals: candidates for a standing grant, at or above
    /// `promote_after`. Information only.
    pub promotion_candidates: Vec<Candidate>,
}

/// An elevated scope granted repeatedly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Candidate {
    pub scope: String,
    pub approvals: usize,
}

/// A scope refused as outside its step: an observed need. Information only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Need {
    /// The step as asked (`workflow/step`, or the step's name).
    pub step: String,
    pub scope: String,
    pub denials: u64,
}

/// A policy load that let a step allow more than the load before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Drift {
    /// When the widening policy was loaded, RFC 3339.
    pub time: String,
    /// `workflow/step`.
    pub step: String,
    /// The patterns no earlier pattern of the step includes.
    pub added: Vec<String>,
    /// Whether the workflow's `review_by` moved in the same change (`None`
    /// when a load does not say).
    pub review_by_moved: Option<bool>,
    /// Concrete scopes the added patterns matched that the step was first
    /// granted after the change.
    pub new_scopes: Vec<String>,
}

/// A workflow past its `review_by`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Overdue {
    pub workflow: String,
    pub review_by: String,
}

/// How far the log the report rests on was verified (the reader fills it
/// in: `analyse` sees records, not files).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verification {
    /// Records whose hash chain was checked, every link.
    pub records: u64,
    /// Whether trusted keys were given for checkpoints (`--jwks`).
    pub keys_given: bool,
    /// Checkpoints signed by a given key, and by keys not given.
    pub trusted_checkpoints: u64,
    pub untrusted_checkpoints: u64,
    /// Records after the last checkpoint signed by a given key (all of
    /// them without keys): whoever can write the file could have
    /// rewritten these.
    pub unsigned_records: u64,
}

impl Verification {
    /// One line for people.
    pub fn describe(&self) -> String {
        if self.keys_given {
            format!(
                "hash chain of {} records verified; {} checkpoints signed by a given key ({} by other keys); {} records after the last of them, vouched for by the chain alone",
                self.records,
                self.trusted_checkpoints,
                self.untrusted_checkpoints,
                self.unsigned_records
            )
        } else {
            format!(
                "hash chain of {} records verified, checkpoint signatures not checked (no --jwks): someone who can rewrite the whole file could have",
                self.records
            )
        }
    }
}

/// The whole analysis.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The time it is as of.
    pub now: String,
    pub window_days: u32,
    pub window_start: String,
    /// Records read (the chain verified), and those after `now` (ignored).
    pub records: u64,
    pub records_after_now: u64,
    /// Whether the policy analysed is the one the broker loaded last in
    /// the log (by SHA-256).
    pub policy_loaded: bool,
    pub steps: Vec<StepFinding>,
    pub needs: Vec<Need>,
    /// Widenings between successive loads in the window, oldest first.
    pub drift: Vec<Drift>,
    pub overdue: Vec<Overdue>,
    /// What the evidence is: printed with every report.
    pub evidence: &'static str,
    /// How far the log was verified, when the reader says.
    pub verification: Option<Verification>,
    /// The last record's time (at or before `now`): a copy of the log that
    /// ends early misses what was granted since.
    pub log_ends: Option<String>,
}

/// What every report says of its evidence.
pub const EVIDENCE: &str = "the evidence is the grant (each token minted, from the audit log), not its use at the target: a scope granted and never exercised counts as used";

fn rfc3339(seconds: i64) -> String {
    DateTime::from_timestamp(seconds, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// When each current pattern's unbroken presence began, from the loads:
/// `workflow/step` and pattern to the time. A pattern absent from the last
/// load that lists allowances (the policy changed since, or no broker
/// listed it) has none.
fn pattern_ages(observations: &Observations) -> BTreeMap<(String, String), i64> {
    presence(observations, |load| load.allows.as_deref())
}

/// The same for the patterns marked for removal (`shadows`).
fn shadow_ages(observations: &Observations) -> BTreeMap<(String, String), i64> {
    presence(observations, |load| load.shadows.as_deref())
}

/// When each (step, pattern) of the lists `of` gives began to be listed,
/// without a gap, up to the last load; a load whose list is unknown starts
/// every presence again from the next one that has it.
fn presence(
    observations: &Observations,
    of: impl Fn(&Load) -> Option<&BTreeMap<String, Vec<String>>>,
) -> BTreeMap<(String, String), i64> {
    let mut since: BTreeMap<(String, String), i64> = BTreeMap::new();
    let mut previous: Option<BTreeSet<(String, String)>> = None;
    let mut loads: Vec<&Load> = observations.loads.iter().collect();
    loads.sort_by_key(|load| load.time);
    for load in loads {
        let Some(lists) = of(load) else {
            previous = None;
            since.clear();
            continue;
        };
        let current: BTreeSet<(String, String)> = lists
            .iter()
            .flat_map(|(step, patterns)| patterns.iter().map(move |p| (step.clone(), p.clone())))
            .collect();
        since.retain(|key, _| current.contains(key));
        for key in &current {
            if !previous.as_ref().is_some_and(|p| p.contains(key)) {
                since.insert(key.clone(), load.time);
            }
        }
        previous = Some(current);
    }
    since
}

/// Widenings between successive loads that list their allowances, in the
/// window.
fn drift(observations: &Observations) -> Vec<Drift> {
    let mut loads: Vec<&Load> = observations.loads.iter().collect();
    loads.sort_by_key(|load| load.time);
    let mut found = Vec::new();
    // Each load that lists its allowances against the last one before it
    // that did (a load in between that did not is passed over: whatever
    // it allowed, the change shows up against the next known one).
    let known: Vec<&Load> = loads.into_iter().filter(|l| l.allows.is_some()).collect();
    for pair in known.windows(2) {
        let (before, after) = (pair[0], pair[1]);
        let (Some(was), Some(is)) = (&before.allows, &after.allows) else {
            continue;
        };
        if after.time < observations.window_start {
            continue;
        }
        for widening in widenings(was, is) {
            let (workflow, step) = widening
                .step
                .split_once('/')
                .unwrap_or((&widening.step, ""));
            let review_by_moved = before
                .reviews
                .as_ref()
                .zip(after.reviews.as_ref())
                .map(|(was, is)| was.get(workflow) != is.get(workflow));
            let added: Vec<ScopePattern> = widening
                .added
                .iter()
                .filter_map(|p| ScopePattern::parse(p).ok())
                .collect();
            let new_scopes = observations
                .steps
                .get(&(workflow.to_owned(), step.to_owned()))
                .map(|use_| {
                    use_.scopes
                        .iter()
                        .filter(|(scope, u)| {
                            u.first >= after.time
                                && Scope::parse(scope).is_ok_and(|s| covered(&added, &s))
                        })
                        .map(|(scope, _)| scope.clone())
                        .collect()
                })
                .unwrap_or_default();
            found.push(Drift {
                time: rfc3339(after.time),
                step: widening.step,
                added: widening.added,
                review_by_moved,
                new_scopes,
            });
        }
    }
    found
}

/// Analyse `observations` against `policy` (the file whose change is
/// proposed).
pub fn analyse(policy: &Policy, observations: &Observations, settings: &Settings) -> Report {
    let now = observations.now;
    let today = settings.now.date_naive();
    let ages = pattern_ages(observations);
    let shadows = shadow_ages(observations);
    let last_loaded = observations
        .loads
        .iter()
        .max_by_key(|load| load.time)
        .and_then(|load| load.sha256.as_deref());
    let empty = StepUse::default();
    let mut steps = Vec::new();
    for workflow in policy.workflows() {
        for step in workflow.steps() {
            let key = (workflow.name().to_owned(), step.name().to_owned());
            let use_ = observations.steps.get(&key).unwrap_or(&empty);
            let known = Known {
                ages: &ages,
                shadows: &shadows,
            };
            steps.push(step_finding(
                step,
                use_,
                known,
                observations,
                settings,
                today,
                now,
            ));
        }
    }
    let needs = observations
        .needs
        .iter()
        .map(|((step, scope), denials)| Need {
            step: step.clone(),
            scope: scope.clone(),
            denials: *denials,
        })
        .collect();
    let overdue = policy
        .overdue_workflows(today)
        .into_iter()
        .map(|w| Overdue {
            workflow: w.name().to_owned(),
            review_by: w.review_by().to_string(),
        })
        .collect();
    Report {
        now: rfc3339(now),
        window_days: settings.window_days,
        window_start: rfc3339(observations.window_start),
        records: observations.records,
        records_after_now: observations.after_now,
        policy_loaded: last_loaded == Some(policy.digest()),
        steps,
        needs,
        drift: drift(observations),
        overdue,
        evidence: EVIDENCE,
        verification: None,
        log_ends: observations.last.map(rfc3339),
    }
}

/// When each pattern, and each mark for removal, began.
#[derive(Clone, Copy)]
struct Known<'a> {
    ages: &'a BTreeMap<(String, String), i64>,
    shadows: &'a BTreeMap<(String, String), i64>,
}

fn step_finding(
    step: &Step,
    use_: &StepUse,
    known: Known<'_>,
    observations: &Observations,
    settings: &Settings,
    today: NaiveDate,
    now: i64,
) -> StepFinding {
    let step_ref = format!("{}/{}", step.workflow(), step.name());
    let review = step.review();
    let mut patterns = Vec::new();
    for pattern in step.scopes() {
        let key = (step_ref.clone(), pattern.as_str().to_owned());
        let since = known
            .ages
            .get(&key)
            .copied()
            // Never loaded as it stands: observed from now on.
            .unwrap_or(now);
        let observed_since = since.max(observations.window_start);
        let runs = use_.jobs.values().filter(|&&t| t >= observed_since).count() as u64;
        let matched: Vec<(&String, _)> = use_
            .scopes
            .iter()
            .filter(|(scope, _)| Scope::parse(scope).is_ok_and(|s| pattern.matches(&s)))
            .collect();
        let mints = matched.iter().map(|(_, u)| u.mints).sum();
        let used_since = matched
            .iter()
            .filter(|(_, u)| u.last >= observed_since)
            .count();
        let first = matched.iter().map(|(_, u)| u.first).min();
        let last = matched.iter().map(|(_, u)| u.last).max();
        let observed_days = (now - observed_since) / 86_400;
        let cycles_short = review
            .cadence()
            .filter(|c| observed_days < 2 * i64::from(c.days()));
        let kept = review.kept(pattern);
        let (status, note, proposal) = if review.is_shadow(pattern) {
            shadow_finding(
                pattern,
                use_,
                // Never loaded marked: from now on.
                known
                    .shadows
                    .get(&key)
                    .copied()
                    .unwrap_or(now)
                    .max(observations.window_start),
                review.cadence().map(|c| c.days()),
                settings,
                now,
            )
        } else if let Some(keep) = kept.filter(|k| k.holds_on(today)) {
            (
                Status::Kept,
                format!("kept until {}: {}", keep.until(), keep.reason()),
                None,
            )
        } else if observed_days < i64::from(settings.min_days) {
            (
                Status::Insufficient,
                format!(
                    "observed for {observed_days} days, fewer than --min-days {}",
                    settings.min_days
                ),
                None,
            )
        } else if runs < settings.min_runs {
            (
                Status::Insufficient,
                format!(
                    "{runs} runs since {}, fewer than --min-runs {}",
                    rfc3339(observed_since),
                    settings.min_runs
                ),
                None,
            )
        } else if let Some(cadence) = cycles_short {
            (
                Status::Insufficient,
                format!(
                    "observed for {observed_days} days, less than two of the step's {}-day cycles",
                    cadence.days()
                ),
                None,
            )
        } else if used_since == 0 {
            (
                Status::Unused,
                format!(
                    "granted to none of {runs} runs since {}",
                    rfc3339(observed_since)
                ),
                Some(Vec::new()),
            )
        } else if !pattern.is_concrete() && matched.len() <= settings.narrow_at_most {
            (
                Status::Narrow,
                format!(
                    "a wildcard that matched only {} concrete scope{}",
                    matched.len(),
                    if matched.len() == 1 { "" } else { "s" }
                ),
                Some(matched.iter().map(|(s, _)| (*s).clone()).collect()),
            )
        } else {
            (Status::Used, String::new(), None)
        };
        let note = match kept {
            Some(keep) if !keep.holds_on(today) => {
                let expired = format!("its keep expired on {}", keep.until());
                if note.is_empty() {
                    expired
                } else {
                    format!("{note}; {expired}")
                }
            }
            _ => note,
        };
        patterns.push(PatternFinding {
            pattern: pattern.as_str().to_owned(),
            status,
            mints,
            scopes: matched.iter().map(|(s, _)| (*s).clone()).collect(),
            first_use: first.map(rfc3339),
            last_use: last.map(rfc3339),
            observed_since: rfc3339(observed_since),
            runs,
            proposal,
            note,
        });
    }
    let promotion_candidates = use_
        .elevated
        .iter()
        .filter(|(scope, _)| Scope::parse(scope).is_ok_and(|s| !covered(step.scopes(), &s)))
        .filter(|(_, approvals)| approvals.len() >= settings.promote_after)
        .map(|(scope, approvals)| Candidate {
            scope: scope.clone(),
            approvals: approvals.len(),
        })
        .collect();
    // A step is never proposed empty: its elevation and targets would go
    // with it, and it may run by elevation alone. Every standing scope
    // unused is said, and left to a person.
    if patterns.iter().all(|p| p.status == Status::Unused) {
        for p in &mut patterns {
            p.proposal = None;
            p.note = format!(
                "{}; every standing scope of the step is unused ({} jobs in the window): remove the step by hand if it no longer runs",
                p.note,
                use_.jobs.len()
            );
        }
    }
    StepFinding {
        workflow: step.workflow().to_owned(),
        step: step.name().to_owned(),
        jobs: use_.jobs.len() as u64,
        patterns,
        promotion_candidates,
    }
}

/// A pattern marked for removal since `since`: removed once no mint has
/// needed it for the quiet period, over enough runs.
fn shadow_finding(
    pattern: &ScopePattern,
    use_: &StepUse,
    since: i64,
    cadence_days: Option<u32>,
    settings: &Settings,
    now: i64,
) -> (Status, String, Option<Vec<String>>) {
    let needed: Vec<_> = use_
        .would_deny
        .iter()
        .filter(|(scope, u)| {
            u.last >= since && Scope::parse(scope).is_ok_and(|s| pattern.matches(&s))
        })
        .collect();
    let mints: u64 = needed.iter().map(|(_, u)| u.mints).sum();
    let runs = use_.jobs.values().filter(|&&t| t >= since).count() as u64;
    let quiet_days = (now - since) / 86_400;
    if let Some(last) = needed.iter().map(|(_, u)| u.last).max() {
        (
            Status::Shadow,
            format!(
                "marked for removal since {}, and {mints} mints needed it since, the last {}: keep it, or find what still needs it",
                rfc3339(since),
                rfc3339(last)
            ),
            None,
        )
    } else if quiet_days < i64::from(settings.quiet_days) || runs < settings.min_runs {
        (
            Status::Shadow,
            format!(
                "marked for removal since {}: no mint needed it in {quiet_days} days and {runs} runs; removed after {} days and --min-runs {}",
                rfc3339(since),
                settings.quiet_days,
                settings.min_runs
            ),
            None,
        )
    } else if let Some(days) = cadence_days.filter(|d| quiet_days < 2 * i64::from(*d)) {
        (
            Status::Shadow,
            format!(
                "marked for removal since {}: no mint needed it in {quiet_days} days, less than two of the step's {days}-day cycles",
                rfc3339(since)
            ),
            None,
        )
    } else {
        (
            Status::Unused,
            format!(
                "marked for removal since {}, and no mint needed it in {quiet_days} days and {runs} runs",
                rfc3339(since)
            ),
            Some(Vec::new()),
        )
    }
}

/// Whether `pattern`'s proposal grants only what it did (for tests and a
/// last check before a diff is written).
pub fn proposal_is_narrower(pattern: &str, proposal: &[String]) -> bool {
    let Ok(pattern) = ScopePattern::parse(pattern) else {
        return false;
    };
    proposal.iter().all(|p| {
        ScopePattern::parse(p)
            .ok()
            .filter(ScopePattern::is_concrete)
            .and_then(|p| Scope::parse(p.as_str()).ok())
            .is_some_and(|s| pattern.matches(&s))
    })
}
