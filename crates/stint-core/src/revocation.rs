//! The in-memory revocation set: the hot path of every introspection and
//! every mint.
//!
//! Two kinds of entries: a revoked token (by `jti`, kept until the token's
//! own `exp`) and a revoked job (by workload and job id, kept until every
//! token the job could still hold has expired). An entry is dropped by
//! [`RevocationSet::purge`] once the token it names would have expired
//! anyway (plus [`PURGE_GRACE_SECS`], so that the clock stepping back a
//! little cannot bring a revoked token back to life), so the set only ever
//! holds what is revoked and (nearly) unexpired.
//! The store keeps the same entries durably; this set is rebuilt from it at
//! start-up.

use crate::claims::AccessTokenClaims;
use crate::ttl::MAX_TOKEN_TTL;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use dashmap::DashMap;

/// How long past its expiry an entry is kept. A token whose entry is gone
/// is still refused as expired, unless the broker's clock steps back by
/// more than this.
pub const PURGE_GRACE_SECS: i64 = 300;

/// A revoked token, as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TokenRevocation {
    /// The token's `jti`.
    pub jti: String,
    /// The workload the token was minted for.
    pub sub: String,
    /// The token's job.
    pub job: String,
    /// The token's `exp`: the entry is dropped after it.
    pub expires_at: i64,
    /// When the revocation was acknowledged, seconds since the epoch.
    pub revoked_at: i64,
}

/// A revoked (completed) job, as stored.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobRevocation {
    /// The workload that owns the job.
    pub sub: String,
    /// The job id.
    pub job: String,
    /// When the revocation was acknowledged, seconds since the epoch.
    pub revoked_at: i64,
    /// When the entry may be dropped: no token minted for the job before the
    /// revocation can outlive it.
    pub until: i64,
}

impl JobRevocation {
    /// A revocation of `job` of workload `sub`, effective at `now`.
    pub fn new(sub: &str, job: &str, now: DateTime<Utc>) -> Self {
        let revoked_at = now.timestamp();
        Self {
            sub: sub.to_owned(),
            job: job.to_owned(),
            revoked_at,
            // No token lives longer than MAX_TOKEN_TTL, and while this entry
            // exists no new token is minted for the job.
            until: revoked_at + i64::from(MAX_TOKEN_TTL.as_secs()) + 1,
        }
    }
}

/// What [`RevocationSet::entries`] returns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevocationEntries {
    /// Revoked tokens: `jti` and `exp`.
    pub tokens: Vec<(String, i64)>,
    /// Revoked jobs: workload, job, and until when the entry matters.
    pub jobs: Vec<(String, String, i64)>,
    /// Revoked approvals: id, and until when the entry matters.
    pub approvals: Vec<(String, i64)>,
    /// Stopped workloads: name, tokens issued up to this time are revoked,
    /// and until when the entry matters.
    pub workloads: Vec<(String, i64, i64)>,
    /// Revoked steps: workload, job, step, and until when the entry matters.
    pub steps: Vec<(String, String, String, i64)>,
}

/// Revoked-but-unexpired tokens and jobs, answered from memory.
#[derive(Debug, Default)]
pub struct RevocationSet {
    /// `jti` (as its 128-bit value) to the token's `exp`.
    tokens: DashMap<u128, i64>,
    /// `"{sub}/{job}"` to the entry's `until`. `/` is in neither alphabet.
    jobs: DashMap<String, i64>,
    /// Revoked approvals (`elev`) to the latest expiry of a token minted
    /// under them.
    approvals: DashMap<String, i64>,
    /// Stopped workloads: every token issued at or before the first value
    /// is revoked; the entry matters until the second.
    workloads: DashMap<String, (i64, i64)>,
    /// `"{sub}/{job}/{step}"` to the entry's `until`.
    steps: DashMap<String, i64>,
}

/// A revoked step of a job, as stored: every token of that step of the job
/// is revoked, and no new one is minted for it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StepRevocation {
    /// The workload.
    pub sub: String,
    /// The job.
    pub job: String,
    /// The step's name (a token's `step` claim).
    pub step: String,
    /// When, seconds since the epoch.
    pub revoked_at: i64,
    /// When the entry may be dropped.
    pub until: i64,
}

impl StepRevocation {
    /// A revocation of `step` of `job` of workload `sub`, effective at `now`.
    pub fn new(sub: &str, job: &str, step: &str, now: DateTime<Utc>) -> Self {
        let revoked_at = now.timestamp();
        Self {
            sub: sub.to_owned(),
            job: job.to_owned(),
            step: step.to_owned(),
            revoked_at,
            until: revoked_at + i64::from(MAX_TOKEN_TTL.as_secs()) + 1,
        }
    }
}

/// A workload's emergency stop, as stored: every token it was issued up to
/// `stopped_at` is revoked, and it mints nothing until an operator enables
/// it again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorkloadStop {
    /// The workload.
    pub workload: String,
    /// When it was stopped, seconds since the epoch.
    pub stopped_at: i64,
    /// Who stopped it (an operator).
    pub stopped_by: String,
    /// When it was enabled again, if it was.
    pub enabled_at: Option<i64>,
}

impl WorkloadStop {
    /// Until when the revocation of its tokens matters: no token issued
    /// before the stop lives longer.
    pub fn until(&self) -> i64 {
        self.stopped_at + i64::from(MAX_TOKEN_TTL.as_secs()) + 1
    }
}

impl RevocationSet {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Record a revoked token. A `jti` that is not a Stint token id cannot
    /// name a token this broker minted, so there is nothing to record.
    pub fn insert_token(&self, revocation: &TokenRevocation) {
        if let Some(key) = crate::claims::jti_key(&revocation.jti) {
            self.tokens.insert(key, revocation.expires_at);
        }
    }

    /// Record a revoked job.
    pub fn insert_job(&self, revocation: &JobRevocation) {
        self.jobs
            .insert(job_key(&revocation.sub, &revocation.job), revocation.until);
    }

    /// Record a revoked approval: every token minted under it (`elev`) is
    /// revoked. `until` is the latest such a token can expire.
    pub fn insert_approval(&self, approval: &str, until: i64) {
        self.approvals.insert(approval.to_owned(), until);
    }

    /// Record a revoked step of a job.
    pub fn insert_step(&self, revocation: &StepRevocation) {
        self.steps.insert(
            step_key(&revocation.sub, &revocation.job, &revocation.step),
            revocation.until,
        );
    }

    /// Whether `step` of `job` of workload `sub` has been revoked and the
    /// entry is still in force.
    pub fn is_step_revoked(&self, sub: &str, job: &str, step: &str, now: DateTime<Utc>) -> bool {
        self.steps
            .get(&step_key(sub, job, step))
            .is_some_and(|until| *until > now.timestamp())
    }

    /// Record a workload's emergency stop: every token issued to it up to
    /// `stopped_at` is revoked.
    pub fn insert_workload(&self, stop: &WorkloadStop) {
        self.workloads
            .insert(stop.workload.clone(), (stop.stopped_at, stop.until()));
    }

    /// Whether the token these claims describe has been revoked, by `jti`,
    /// through its job, through the approval it was minted under, or by
    /// its workload's emergency stop. Fails closed: a `jti` that cannot be
    /// read counts as revoked.
    pub fn is_revoked(&self, claims: &AccessTokenClaims, now: DateTime<Utc>) -> bool {
        let Some(key) = claims.jti_key() else {
            return true;
        };
        self.tokens.contains_key(&key)
            || self.is_job_revoked(&claims.sub, &claims.job, now)
            || claims
                .elev
                .as_ref()
                .is_some_and(|approval| self.approvals.contains_key(approval))
            || self
                .workloads
                .get(&claims.sub)
                .is_some_and(|entry| claims.iat <= entry.0)
            || self.is_step_revoked(&claims.sub, &claims.job, &claims.step, now)
    }

    /// Whether `job` of workload `sub` has been revoked and the entry is
    /// still in force.
    pub fn is_job_revoked(&self, sub: &str, job: &str, now: DateTime<Utc>) -> bool {
        self.jobs
            .get(&job_key(sub, job))
            .is_some_and(|until| *until > now.timestamp())
    }

    /// Drop every entry whose token had expired [`PURGE_GRACE_SECS`] before
    /// `now`. Returns how many were dropped.
    pub fn purge(&self, now: DateTime<Utc>) -> usize {
        let now = purge_cutoff(now);
        let before = self.len();
        self.tokens.retain(|_, exp| *exp > now);
        self.jobs.retain(|_, until| *until > now);
        self.approvals.retain(|_, until| *until > now);
        self.workloads.retain(|_, (_, until)| *until > now);
        self.steps.retain(|_, until| *until > now);
        before.saturating_sub(self.len())
    }

    /// Every entry still in force at `now`, for a snapshot: revoked tokens
    /// (`jti`, `exp`), jobs (workload, job, until) and approvals (id,
    /// until).
    pub fn entries(&self, now: DateTime<Utc>) -> RevocationEntries {
        let now = now.timestamp();
        let tokens = self
            .tokens
            .iter()
            .filter(|e| *e.value() > now)
            .map(|e| (URL_SAFE_NO_PAD.encode(e.key().to_be_bytes()), *e.value()))
            .collect();
        let jobs = self
            .jobs
            .iter()
            .filter(|e| *e.value() > now)
            .filter_map(|e| {
                let (sub, job) = e.key().split_once('/')?;
                Some((sub.to_owned(), job.to_owned(), *e.value()))
            })
            .collect();
        let approvals = self
            .approvals
            .iter()
            .filter(|e| *e.value() > now)
            .map(|e| (e.key().clone(), *e.value()))
            .collect();
        let workloads = self
            .workloads
            .iter()
            .filter(|e| e.value().1 > now)
            .map(|e| (e.key().clone(), e.value().0, e.value().1))
            .collect();
        let steps = self
            .steps
            .iter()
            .filter(|e| *e.value() > now)
            .filter_map(|e| {
                let mut parts = e.key().splitn(3, '/');
                let (sub, job, step) = (parts.next()?, parts.next()?, parts.next()?);
                Some((sub.to_owned(), job.to_owned(), step.to_owned(), *e.value()))
            })
            .collect();
        RevocationEntries {
            tokens,
            jobs,
            approvals,
            workloads,
            steps,
        }
    }

    /// How many entries the set holds.
    pub fn len(&self) -> usize {
        self.tokens.len()
            + self.jobs.len()
            + self.approvals.len()
            + self.workloads.len()
            + self.steps.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Entries that expired at or before this instant (seconds since the
/// epoch) may be dropped, from memory and from the store.
pub fn purge_cutoff(now: DateTime<Utc>) -> i64 {
    now.timestamp().saturating_sub(PURGE_GRACE_SECS)
}

fn step_key(sub: &str, job: &str, step: &str) -> String {
    format!("{sub}/{job}/{step}")
}

fn job_key(sub: &str, job: &str) -> String {
    let mut key = String::with_capacity(sub.len() + job.len() + 1);
    key.push_str(sub);
    key.push('/');
    key.push_str(job);
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claims::new_jti;
    use ring::rand::SystemRandom;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    fn claims(sub: &str, job: &str, jti: String, exp: i64) -> AccessTokenClaims {
        AccessTokenClaims {
            iss: "https://broker".into(),
            sub: sub.into(),
            aud: "aud".into(),
            client_id: sub.into(),
            exp,
            iat: exp - 300,
            nbf: exp - 300,
            jti,
            scope: "read:a/b".into(),
            job: job.into(),
            step: "s".into(),
            workflow: "w".into(),
            cnf: None,
            elev: None,
            status: None,
        }
    }

    #[test]
    fn a_revoked_approval_revokes_the_tokens_minted_under_it() {
        let set = RevocationSet::new();
        let rng = SystemRandom::new();
        let elevated = AccessTokenClaims {
            elev: Some("apr-1".into()),
            ..claims("w", "j", new_jti(&rng).unwrap(), 1_200)
        };
        let other = AccessTokenClaims {
            elev: Some("apr-2".into()),
            ..claims("w", "j", new_jti(&rng).unwrap(), 1_200)
        };
        let plain = claims("w", "j", new_jti(&rng).unwrap(), 1_200);
        let stopped = RevocationSet::new();
        stopped.insert_workload(&WorkloadStop {
            workload: "w".into(),
            stopped_at: 950,
            stopped_by: "alice".into(),
            enabled_at: None,
        });
        assert!(
            stopped.is_revoked(&plain, at(1_001)),
            "issued at 900, before the stop"
        );
        let after = AccessTokenClaims {
            iat: 960,
            ..claims("w", "j", new_jti(&rng).unwrap(), 1_260)
        };
        assert!(
            !stopped.is_revoked(&after, at(1_001)),
            "issued after the stop"
        );
        assert!(!stopped.is_revoked(&claims("v", "j", new_jti(&rng).unwrap(), 1_200), at(1_001)));
        let steps = RevocationSet::new();
        steps.insert_step(&StepRevocation::new("w", "j", "s", at(1_000)));
        assert!(steps.is_revoked(&plain, at(1_001)), "the token's step");
        let other_step = AccessTokenClaims {
            step: "t".into(),
            ..claims("w", "j", new_jti(&rng).unwrap(), 1_200)
        };
        assert!(!steps.is_revoked(&other_step, at(1_001)));
        assert_eq!(steps.entries(at(1_001)).steps.len(), 1);
        set.insert_approval("apr-1", 1_200);
        let entries = set.entries(at(1_001));
        assert_eq!(entries.approvals, [("apr-1".to_owned(), 1_200)]);
        assert!(set.is_revoked(&elevated, at(1_001)));
        assert!(!set.is_revoked(&other, at(1_001)));
        assert!(
            !set.is_revoked(&plain, at(1_001)),
            "the job's other tokens stay"
        );
        assert_eq!(set.purge(at(1_200 + PURGE_GRACE_SECS)), 1);
    }

    #[test]
    fn revoked_tokens_are_remembered_until_they_expire() {
        let set = RevocationSet::new();
        let rng = SystemRandom::new();
        let revoked = claims("w", "j", new_jti(&rng).unwrap(), 1_000);
        let other = claims("w", "j", new_jti(&rng).unwrap(), 1_000);
        set.insert_token(&TokenRevocation {
            jti: revoked.jti.clone(),
            sub: "w".into(),
            job: "j".into(),
            expires_at: 1_000,
            revoked_at: 800,
        });
        assert!(set.is_revoked(&revoked, at(900)));
        assert!(!set.is_revoked(&other, at(900)));
        assert_eq!(set.purge(at(999)), 0);
        assert_eq!(set.purge(at(1_000)), 0, "kept for the grace period");
        assert!(set.is_revoked(&revoked, at(1_000)));
        assert_eq!(set.purge(at(1_000 + PURGE_GRACE_SECS - 1)), 0);
        assert_eq!(set.purge(at(1_000 + PURGE_GRACE_SECS)), 1);
        assert!(set.is_empty());
    }

    #[test]
    fn a_revoked_job_covers_its_workloads_tokens_only() {
        let set = RevocationSet::new();
        let rng = SystemRandom::new();
        set.insert_job(&JobRevocation::new("w", "j", at(1_000)));
        assert!(set.is_revoked(&claims("w", "j", new_jti(&rng).unwrap(), 1_200), at(1_001)));
        assert!(!set.is_revoked(
            &claims("other", "j", new_jti(&rng).unwrap(), 1_200),
            at(1_001)
        ));
        assert!(!set.is_revoked(&claims("w", "j2", new_jti(&rng).unwrap(), 1_200), at(1_001)));
        let until = 1_000 + i64::from(MAX_TOKEN_TTL.as_secs()) + 1;
        assert_eq!(
            set.entries(at(1_001)).jobs,
            [("w".to_owned(), "j".to_owned(), until)]
        );
        let tokens = RevocationSet::new();
        let jti = new_jti(&rng).unwrap();
        tokens.insert_token(&TokenRevocation {
            jti: jti.clone(),
            sub: "w".into(),
            job: "j".into(),
            expires_at: 1_500,
            revoked_at: 1_000,
        });
        assert_eq!(
            tokens.entries(at(1_001)).tokens,
            [(jti, 1_500)],
            "the jti reads back"
        );
        assert!(
            tokens.entries(at(1_500)).tokens.is_empty(),
            "expired entries are left out"
        );
        assert!(set.is_job_revoked("w", "j", at(until - 1)));
        assert!(!set.is_job_revoked("w", "j", at(until)));
        assert_eq!(set.purge(at(until)), 0, "kept for the grace period");
        assert_eq!(set.purge(at(until + PURGE_GRACE_SECS)), 1);
    }

    #[test]
    fn an_unreadable_jti_counts_as_revoked() {
        let set = RevocationSet::new();
        assert!(set.is_revoked(&claims("w", "j", "not-a-jti".into(), 1_000), at(900)));
    }
}
